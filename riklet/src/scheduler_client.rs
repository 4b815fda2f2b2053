//! The riklet's side of the RIK worker protocol.
//!
//! `Register` opens the instruction stream; `SendStatusUpdates` carries,
//! first, the RUNNING worker status RIK's scheduler waits for before it
//! sends any work, then the full state of every pod, then each change as it
//! happens and a heartbeat (node metrics and every pod) at a fixed interval.
//! When the scheduler goes away the client reconnects with exponential
//! back-off and jitter, and resends the full state once back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use proto::common::WorkloadRequestKind;
use proto::common::{
    InstanceMetric, ResourceStatus, WorkerMetric, WorkerRegistration, WorkerStatus, worker_status,
};
use proto::limits;
use proto::worker::InstanceScheduling;
use proto::worker::worker_client::WorkerClient;
use rand::Rng;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::agent::{AgentHandle, InstanceReport};
use crate::metrics::node::NodeMonitor;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Delays between sessions: doubling from [`BACKOFF_MIN`] to
/// [`BACKOFF_MAX`], each jittered by ±50 % so that nodes cut off together
/// do not come back together.
const RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(BACKOFF_MIN)
    .with_max_delay(BACKOFF_MAX)
    .without_max_times();
/// A session that lasted this long was a working one: the delays start
/// again from [`BACKOFF_MIN`].
const LONG_SESSION: Duration = Duration::from_secs(30);

/// A session with the scheduler that ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect")]
    Connect(#[from] tonic::transport::Error),
    #[error("scheduler refused")]
    Rpc(#[from] tonic::Status),
    #[error("scheduler closed the instruction stream")]
    Closed,
    #[error("scheduler did not answer the registration within {}s", limits::REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub scheduler: String,
    pub node: String,
    /// `host:port` of this riklet's node API, sent with every status.
    pub host_address: String,
    pub heartbeat_interval: Duration,
    /// Set while a session is open (registered), for `riklet status`.
    pub connected: Arc<AtomicBool>,
    /// The node certificate's TLS for an `https://` scheduler.
    pub tls: Option<rik_tls::ClientTls>,
}

/// Runs sessions with the scheduler until `shutdown`.
pub async fn run(
    settings: ClientSettings,
    agent: AgentHandle,
    mut reports: mpsc::UnboundedReceiver<InstanceReport>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut monitor = NodeMonitor::new(&settings.node);
    let mut delays = RECONNECT.build();
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.recv() => return,
            r = session(&settings, &agent, &mut reports, &mut monitor) => r,
        };
        settings.connected.store(false, Ordering::Relaxed);
        if let Err(e) = result {
            warn!(node = %settings.node, scheduler = %settings.scheduler, error = %crate::error_chain(&e), "scheduler session ended");
        }
        if started.elapsed() > LONG_SESSION {
            delays = RECONNECT.build();
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = delays.next().unwrap_or(BACKOFF_MAX).mul_f64(jitter);
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn instance_status(node: &str, host_address: &str, r: InstanceReport) -> WorkerStatus {
    WorkerStatus {
        identifier: node.to_string(),
        host_address: host_address.to_string(),
        status: Some(worker_status::Status::Instance(InstanceMetric {
            status: r.status as i32,
            metrics: r.metrics,
            instance_id: r.instance_id,
        })),
    }
}

/// A client of `scheduler` with the limits of `proto::limits`: connect
/// time-out, keep-alive (a scheduler that vanished under the streams),
/// message sizes. No call time-out: both calls are streams.
async fn connect(settings: &ClientSettings) -> Result<WorkerClient<Channel>, SessionError> {
    let endpoint = Endpoint::from_shared(settings.scheduler.clone())?
        .connect_timeout(limits::CONNECT_TIMEOUT)
        .http2_keep_alive_interval(limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(limits::KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = match &settings.tls {
        Some(tls) => tls.connect(endpoint).await?,
        None => endpoint.connect().await?,
    };
    Ok(WorkerClient::new(channel)
        .max_decoding_message_size(limits::MAX_MESSAGE)
        .max_encoding_message_size(limits::MAX_MESSAGE))
}

async fn session(
    settings: &ClientSettings,
    agent: &AgentHandle,
    reports: &mut mpsc::UnboundedReceiver<InstanceReport>,
    monitor: &mut NodeMonitor,
) -> Result<(), SessionError> {
    let mut client = connect(settings).await?;
    let register = client.register(WorkerRegistration {
        hostname: settings.node.clone(),
    });
    let mut instructions = tokio::time::timeout(limits::REQUEST_TIMEOUT, register)
        .await
        .map_err(|_| SessionError::Timeout)??
        .into_inner();
    let (tx, rx) = mpsc::channel::<WorkerStatus>(1024);
    let mut status_client = client.clone();
    let mut upload = tokio::spawn(async move {
        status_client
            .send_status_updates(ReceiverStream::new(rx))
            .await
    });
    let node = settings.node.as_str();
    let addr = settings.host_address.as_str();
    let worker_status = |metrics: proto::status::NodeMetrics| WorkerStatus {
        identifier: node.to_string(),
        host_address: addr.to_string(),
        status: Some(worker_status::Status::Worker(WorkerMetric {
            status: ResourceStatus::Running as i32,
            metrics: metrics.to_json(),
        })),
    };
    let send = |s: WorkerStatus| {
        let tx = tx.clone();
        async move { tx.send(s).await.map_err(|_| SessionError::Closed) }
    };
    send(worker_status(monitor.heartbeat().await)).await?;
    // Changes queued while away are superseded by the full state.
    while reports.try_recv().is_ok() {}
    for r in agent.reports().await {
        send(instance_status(node, addr, r)).await?;
    }
    info!(node, scheduler = %settings.scheduler, "registered with scheduler");
    settings.connected.store(true, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = instructions.next() => match msg {
                None => return Err(SessionError::Closed),
                Some(Err(status)) => return Err(status.into()),
                Some(Ok(i)) => dispatch(node, agent, i),
            },
            Some(r) = reports.recv() => send(instance_status(node, addr, r)).await?,
            _ = heartbeat.tick() => {
                send(worker_status(monitor.heartbeat().await)).await?;
                for r in agent.reports().await {
                    send(instance_status(node, addr, r)).await?;
                }
            }
            done = &mut upload => {
                return match done {
                    Ok(Err(status)) => Err(status.into()),
                    _ => Err(SessionError::Closed),
                };
            }
        }
    }
}

/// Hands one instruction to the agent. A CREATE is checked there (and
/// refused with a FAILED status naming the field); a DESTROY whose
/// instance id could not be ours, or an unknown action, is only logged,
/// with the field, since no status can answer it.
fn dispatch(node: &str, agent: &AgentHandle, i: InstanceScheduling) {
    match WorkloadRequestKind::try_from(i.action) {
        Ok(WorkloadRequestKind::Create) => {
            info!(node, pod = %i.instance_id, "CREATE received");
            agent.create(i.instance_id, i.definition);
        }
        Ok(WorkloadRequestKind::Destroy) => {
            if let Err(e) = proto::manifest::validate_instance_id(&i.instance_id) {
                warn!(node, error = %e, "DESTROY refused");
                return;
            }
            info!(node, pod = %i.instance_id, "DESTROY received");
            agent.destroy(i.instance_id);
        }
        Err(_) => warn!(
            node,
            pod = ?i.instance_id,
            action = i.action,
            "action: unknown value, instruction ignored"
        ),
    }
}
