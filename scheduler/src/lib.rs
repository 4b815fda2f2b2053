//! The RIK-compatible scheduler: node registry, placement, app store and the
//! `rik.v1` API. Runs as `rik-scheduler`, or inside a riklet started with
//! `--standalone`.
//!
//! Riklets speak RIK's `worker.Worker` protocol to it (register, then stream
//! heartbeats and instance statuses; receive CREATE/DESTROY on the register
//! stream). The `rik` CLI speaks `rik.v1.Rik` (apply, list, delete, nodes,
//! logs). Both services share one port.
//!
//! # Layout
//! - [`store`]: apps and instances, persisted atomically as JSON.
//! - [`nodes`]: the node registry (connected, ready, register streams).
//! - [`placement`]: which ready node gets an instance (pure function).
//! - [`cluster`]: the shared state and every operation on it.
//! - [`events`]: each app's recent events, from its pods' reports.
//! - [`watchers`]: the open watches and what each still has to be sent.
//! - [`worker_service`]: `worker.Worker` for riklets.
//! - [`api`]: `rik.v1.Rik` for the CLI.
//! - [`logs`]: `Logs`, read on the nodes, merged, followed.
//! - [`metrics`]: the calls served, per method (Prometheus).
//! - [`service`]: what a service tells systemd (readiness, status,
//!   watchdog), abort on panic; shared with the riklet.
//! - [`pki`]: the cluster CA, join tokens, the certificates it signs.
//! - [`tls`]: who may call what; `rik.v1.Join` (node certificates).
//!
//! [`run`] serves both until its shutdown future resolves; background tasks
//! expire silent nodes (heartbeat timeout) and flush the store.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::limits;
use proto::rik::v1::join_server::JoinServer;
use proto::rik::v1::rik_server::RikServer;
use proto::worker::worker_server::WorkerServer;
use rik_tls::server::Plaintext;
use rik_tls::{ClientTls, ServerTls};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

pub mod api;
pub mod cluster;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod pki;
pub mod placement;
pub mod service;
pub mod store;
pub mod tls;
pub mod watchers;
pub mod worker_service;

#[cfg(test)]
mod tests;

use crate::cluster::Cluster;
use crate::metrics::ApiCalls;
use crate::pki::Pki;
use crate::store::{Store, StoreError};

/// Default state directory of `rik-scheduler`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rik-scheduler";
/// Default address of the scheduler API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4995";
/// Default heartbeat timeout (RIK's riklets send a heartbeat every 15 s).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the store is flushed when status reports changed it.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long open streams get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Where the app store (`state.json`) lives; created if missing.
    pub state_dir: PathBuf,
    /// A ready node that sends nothing for this long is marked not ready
    /// and its instances are re-placed.
    pub heartbeat_timeout: Duration,
    /// Told `READY=1` once the store is loaded and the server built (the
    /// listener already accepts); `rik-scheduler`'s systemd socket, or
    /// nothing (embedded in a riklet, which reports for itself).
    pub notifier: service::Notifier,
    /// TLS next to plaintext, with the cluster CA of `<state_dir>/pki`;
    /// `None` (the standalone riklet): plaintext only.
    pub tls: Option<TlsConfig>,
    /// Serve plaintext to every client, not only to loopback ones.
    pub insecure: bool,
}

/// The scheduler's TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Lifetime of the node certificates it signs (renewed at 2/3 of it).
    pub cert_lifetime: Duration,
    /// Names and addresses of its server certificate besides `localhost`,
    /// the loopback addresses, the host name and the listen address.
    pub server_names: Vec<String>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            notifier: service::Notifier::default(),
            tls: None,
            insecure: false,
        }
    }
}

/// Why the scheduler could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The state directory could not be opened or the state file is bad.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The CA or a certificate could not be made or used.
    #[error("TLS setup failed")]
    Pki(#[from] pki::PkiError),
    /// Plaintext would be served off loopback without `--insecure`.
    #[error(
        "refusing to serve plaintext on {0}: it is not a loopback address and there is no TLS \
         (listen on 127.0.0.1, run rik-scheduler with its CA, or pass --insecure)"
    )]
    PlaintextOffLoopback(std::net::SocketAddr),
}

/// Serves `worker.Worker` and `rik.v1.Rik` on `listener` until `shutdown`
/// resolves, counting the `rik.v1` calls in `calls`. At shutdown every
/// register stream, status stream, watch and followed log stream is ended
/// (riklets and clients see the scheduler go away) and the store is saved.
pub async fn run(
    config: SchedulerConfig,
    listener: TcpListener,
    calls: ApiCalls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let local = listener.local_addr().ok();
    if let Some(addr) = local
        && config.tls.is_none()
        && !config.insecure
        && !addr.ip().is_loopback()
    {
        return Err(SchedulerError::PlaintextOffLoopback(addr));
    }
    let mut store = Store::open(&config.state_dir)?;
    // Fail now, not at the first apply, if the state cannot be written.
    store.save()?;
    info!(
        listen = ?listener.local_addr().ok(),
        state = %store.path().display(),
        apps = store.data().apps.len(),
        instances = store.data().instances.len(),
        heartbeat_timeout = ?config.heartbeat_timeout,
        "scheduler starting"
    );
    let listener_addr = listener.local_addr().ok();
    let mut cluster = Cluster::new(store, config.heartbeat_timeout);
    let (server_tls, join) = match &config.tls {
        Some(tls) => {
            let (server_tls, join, node_api) = tls_setup(&config.state_dir, tls, local)?;
            cluster.node_api_tls = Some(node_api);
            (Some(server_tls), Some(join))
        }
        None => (None, None),
    };
    let plaintext = if config.insecure {
        Plaintext::Anyone
    } else {
        Plaintext::Loopback
    };
    let cluster = Arc::new(cluster);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = [
        tokio::spawn(expire_nodes(Arc::clone(&cluster), stop_rx.clone())),
        tokio::spawn(flush_store(Arc::clone(&cluster), stop_rx.clone())),
    ];

    // Keep-alive (a peer that vanished), per-connection limits, unary
    // time-out, message sizes: `proto::limits`, docs/protocol.md.
    let worker = WorkerServer::new(worker_service::WorkerService::new(
        Arc::clone(&cluster),
        stop_rx.clone(),
    ))
    .max_decoding_message_size(limits::MAX_MESSAGE)
    .max_encoding_message_size(limits::MAX_MESSAGE);
    let rik = RikServer::new(api::RikService::new(
        Arc::clone(&cluster),
        stop_rx.clone(),
        calls,
    ))
    .max_decoding_message_size(limits::MAX_MESSAGE)
    .max_encoding_message_size(limits::MAX_API_ANSWER);
    let server = proto::limits::server()
        .add_service(InterceptedService::new(worker, tls::require_node))
        .add_service(InterceptedService::new(rik, tls::require_admin))
        .add_optional_service(join.map(JoinServer::new))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY is set on each connection: without it, Nagle and
            // delayed ACKs add ~40 ms to most answers.
            rik_tls::server::incoming(listener, server_tls, plaintext),
            stopped(stop_rx.clone()),
        );
    tokio::pin!(server);
    let listen = listener_addr.map_or_else(|| "?".to_string(), |a| a.to_string());
    config.notifier.ready(&format!("serving on {listen}"));

    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            info!("scheduler shutting down");
            config.notifier.stopping();
            cluster.lock().await.shutdown();
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    warn!(grace = ?SHUTDOWN_GRACE, "connections still open, closing them");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    stop_tasks(tasks).await;
    cluster.lock().await.close();
    served.map_err(SchedulerError::Serve)?;
    info!("scheduler stopped");
    Ok(())
}

/// The server TLS, the join service and the node API client TLS, from
/// the CA of `state_dir` (made on first use).
fn tls_setup(
    state_dir: &Path,
    tls: &TlsConfig,
    listen: Option<SocketAddr>,
) -> Result<(ServerTls, tls::JoinService, ClientTls), SchedulerError> {
    let pki = Pki::open(state_dir)?;
    let ca = pki.ca_certs()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_string());
    }
    if let Some(addr) = listen.filter(|a| !a.ip().is_unspecified()) {
        names.push(addr.ip().to_string());
    }
    names.extend(tls.server_names.iter().cloned());
    names.sort();
    names.dedup();
    // Made at each start and not renewed: they get the default lifetime
    // (a year), whatever short one the nodes' certificates have.
    let lifetime = pki::DEFAULT_CERT_LIFETIME.max(tls.cert_lifetime);
    let identity = pki.server_identity(&names, lifetime)?;
    let server = ServerTls::new(&ca, identity, false).map_err(pki::PkiError::from)?;
    let client = pki.scheduler_client_identity(lifetime)?;
    let node_api = ClientTls::trusting(&ca, Some(client)).map_err(pki::PkiError::from)?;
    info!(names = ?names, ca_hash = %pki.ca_hash()?, "TLS ready");
    let join = tls::JoinService::new(Arc::new(pki), tls.cert_lifetime);
    Ok((server, join, node_api))
}

/// Resolves when the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

async fn stop_tasks(tasks: [JoinHandle<()>; 2]) {
    for task in tasks {
        if let Err(e) = task.await {
            warn!(error = %e, "background task failed");
        }
    }
}

/// Marks not ready the nodes that missed their heartbeats.
async fn expire_nodes(cluster: Arc<Cluster>, stop: watch::Receiver<bool>) {
    let timeout = cluster.heartbeat_timeout;
    let period = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => cluster.lock().await.expire_stale(timeout),
            () = &mut stop => return,
        }
    }
}

/// Saves the store when status reports or node events changed it.
async fn flush_store(cluster: Arc<Cluster>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => cluster.lock().await.flush(),
            () = &mut stop => return,
        }
    }
}
