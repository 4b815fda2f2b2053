//! riklet, the RIK node agent.
//!
//! It registers with a scheduler, runs each app instance as a pod — image
//! containers under containerd and bare processes under cgroups (each
//! behind a small shim), sharing the pod's network namespace and IP — so
//! that pods outlive the riklet, remembers its pods on disk across
//! crashes, counts their network traffic with eBPF, captures their logs
//! and reports node and pod status.
//!
//! # Layout
//! - [`config`]: TOML settings, defaults, host paths.
//! - [`agent`]: the Node Manager; owns every pod, restart policy, recovery.
//! - [`scheduler_client`]: RIK worker protocol, heartbeats, reconnection.
//! - [`runtime`]: container runtimes (bare processes and their shim;
//!   containerd containers, image pulls, the containerd connection).
//! - [`network`]: the pod network (bridge, netns, veth, IPAM, masquerade).
//! - [`state`]: the runtime memory (atomic JSON records).
//! - [`fsutil`]: crash-safe file writes; [`clock`]: Unix milliseconds.
//! - [`cgroups`]: pod cgroups on hybrid and pure v2 hosts.
//! - [`metrics`]: eBPF network counters and node figures.
//! - [`logs`]: CRI log files, writing and tailing.
//! - [`api`]: control socket (`riklet status|pods`) and node logs service.
//! - [`observability`]: tracing setup.

pub mod agent;
pub mod api;
pub mod cgroups;
pub mod clock;
pub mod config;
pub mod fsutil;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod observability;
pub mod runtime;
pub mod scheduler_client;
pub mod state;

use std::future::Future;
use std::os::fd::AsRawFd;

use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

pub use config::Config;

/// Why the riklet could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("user {0:?} (run_as_user) does not exist")]
    NoSuchUser(String),
    #[error("cannot determine the node name: {0}")]
    NodeName(String),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {0} is used by another riklet (lock held)")]
    Locked(std::path::PathBuf),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded scheduler: {0}")]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error("pod network: {0}")]
    Network(#[from] network::NetworkError),
}

/// Runs the riklet until `shutdown` resolves. Pods keep running after it
/// returns (a later riklet adopts them); eBPF programs are detached.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.validate()?;
    let node = match &config.node_name {
        Some(n) => n.clone(),
        None => {
            let host = nix::unistd::gethostname()
                .map_err(|e| Error::NodeName(e.to_string()))?
                .to_string_lossy()
                .to_ascii_lowercase();
            proto::manifest::validate_node_name("hostname", &host)
                .map_err(|e| Error::NodeName(e.to_string()))?;
            host
        }
    };
    let user = nix::unistd::User::from_name(&config.run_as_user)
        .ok()
        .flatten()
        .ok_or_else(|| Error::NoSuchUser(config.run_as_user.clone()))?;

    let state_err = |source| Error::StateDir {
        path: config.state_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(state_err)?;
    let lock = std::fs::File::create(config.state_dir.join("riklet.lock")).map_err(state_err)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Locked(config.state_dir.clone()));
    }

    let store = state::Store::open(&config.state_dir)?;
    let cgroups = cgroups::CgroupManager::new(&config.cgroup_root)?;
    let network = std::sync::Arc::new(
        network::PodNetwork::new(config.network.clone(), &config.state_dir).await?,
    );
    info!(node = %node, layout = ?cgroups.layout(), "riklet starting");
    let probes = match metrics::ebpf::Probes::load(&cgroups.v2_root(), &config.bpf_pin_dir) {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(
                error = %error_chain(&e),
                "eBPF probes unavailable: pods get cgroup figures only (no network, \
                 run-queue or OOM-event figures)"
            );
            None
        }
    };
    let ebpf = probes.is_some();

    let (stop_tx, _) = broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();

    if config.standalone {
        let listener = tokio::net::TcpListener::bind(config.standalone_listen)
            .await
            .map_err(|source| Error::Bind {
                what: "embedded scheduler",
                addr: config.standalone_listen,
                source,
            })?;
        let sched_config = scheduler::SchedulerConfig {
            state_dir: config.state_dir.join("scheduler"),
            ..scheduler::SchedulerConfig::default()
        };
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            if let Err(e) = scheduler::run(sched_config, listener, async move {
                let _ = stop.recv().await;
            })
            .await
            {
                error!(error = %e, "embedded scheduler stopped");
            }
        });
    }

    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| Error::Bind {
            what: "node API",
            addr: config.api_listen,
            source,
        })?;
    let host_address = api_listener
        .local_addr()
        .map_err(|source| Error::Bind {
            what: "node API",
            addr: config.api_listen,
            source,
        })?
        .to_string();
    let socket = api::bind_socket(&config.socket_path())?;

    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let settings = agent::AgentSettings {
        node: node.clone(),
        log_dir: config.log_dir.clone(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        stop_grace_period: config.stop_grace_period,
        backoff_initial: config.restart_backoff_initial,
        backoff_max: config.restart_backoff_max,
        keep_logs_on_delete: config.keep_logs_on_delete,
    };
    let shim_exe = std::env::current_exe().map_err(state_err)?;
    let containerd = runtime::link::ContainerdLink::spawn(
        &config.containerd.socket,
        &config.containerd.namespace,
        config.registries.registry_config(),
        stop_tx.subscribe(),
    );
    let backends = agent::Backends {
        store,
        cgroups,
        process: runtime::process::ProcessRuntime::new(shim_exe, &config.state_dir),
        containerd: containerd.clone(),
        network,
    };
    let usage = metrics::collector::PodUsage::default();
    let agent = agent::Agent::new(settings, backends, usage.clone(), reports_tx);
    let handle = agent.handle();
    let agent_task = tokio::spawn(agent.run(stop_tx.subscribe()));

    let snapshots = metrics::exporter::SnapshotHandle::new();
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| Error::Bind {
            what: "metrics endpoint",
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_address = metrics_listener
        .local_addr()
        .map_err(|source| Error::Bind {
            what: "metrics endpoint",
            addr: config.metrics_addr,
            source,
        })?
        .to_string();

    let mut stop = stop_tx.subscribe();
    let exporter = metrics::exporter::serve(metrics_listener, snapshots.clone(), async move {
        let _ = stop.recv().await;
    });
    tasks.spawn(async move {
        if let Err(e) = exporter.await {
            error!(error = %e, "metrics endpoint stopped");
        }
    });
    let collector = metrics::collector::Collector::new(
        &node,
        probes,
        snapshots,
        usage,
        config.metrics_interval,
    );
    let targets_handle = handle.clone();
    let collector_task = tokio::spawn(metrics::collector::run(
        collector,
        config.metrics_interval,
        move || {
            let h = targets_handle.clone();
            async move { h.targets().await }
        },
        stop_tx.subscribe(),
    ));

    let facts = api::NodeFacts {
        node: node.clone(),
        scheduler: config.scheduler.clone(),
        api_address: host_address.clone(),
        metrics_address,
        ebpf,
        containerd,
    };
    let socket_task = tokio::spawn(api::serve_socket(socket, handle.clone(), facts));
    let mut stop = stop_tx.subscribe();
    let log_dir = config.log_dir.clone();
    tasks.spawn(async move {
        if let Err(e) = api::serve_logs(api_listener, log_dir, async move {
            let _ = stop.recv().await;
        })
        .await
        {
            error!(error = %e, "node API stopped");
        }
    });
    let client_settings = scheduler_client::ClientSettings {
        scheduler: config.scheduler.clone(),
        node: node.clone(),
        host_address,
        heartbeat_interval: config.heartbeat_interval,
    };
    tasks.spawn(scheduler_client::run(
        client_settings,
        handle,
        reports_rx,
        stop_tx.subscribe(),
    ));

    shutdown.await;
    info!(node = %node, "riklet stopping; pods keep running");
    let _ = stop_tx.send(());
    socket_task.abort();
    while tasks.join_next().await.is_some() {}
    let _ = agent_task.await;
    // The collector detaches the eBPF programs and removes their pins.
    let _ = collector_task.await;
    let _ = std::fs::remove_file(config.socket_path());
    Ok(())
}

/// An error and its sources on one line (`a: b: c`), for logs and test
/// messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
