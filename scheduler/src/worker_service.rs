//! `worker.Worker`: the riklets' side of the protocol (RIK-compatible).
//!
//! `Register` returns a [`RegisterStream`] fed by the node registry; when
//! tonic drops it (the riklet went away, or its connection broke) its guard
//! marks the node disconnected at once. `SendStatusUpdates` feeds heartbeats
//! and instance statuses into the cluster state.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::common::worker_status::Status as StatusKind;
use proto::common::{ResourceStatus, WorkerRegistration, WorkerStatus};
use proto::worker::InstanceScheduling;
use proto::worker::worker_server::Worker;
use rik_tls::server::Caller;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::nodes::{self, RegisterError};
use crate::tls::NodeIdentity;

/// The `worker.Worker` service.
#[derive(Debug, Clone)]
pub struct WorkerService {
    cluster: Arc<Cluster>,
    /// Becomes true at shutdown: status streams end.
    stop: watch::Receiver<bool>,
}

impl WorkerService {
    pub fn new(cluster: Arc<Cluster>, stop: watch::Receiver<bool>) -> Self {
        Self { cluster, stop }
    }

    async fn handle(
        &self,
        status: WorkerStatus,
        peer: Option<IpAddr>,
        identity: &NodeIdentity,
    ) -> Result<(), Status> {
        let WorkerStatus {
            identifier,
            host_address,
            status,
        } = status;
        if let Err(refused) = identity.check(&identifier, "status") {
            let instance = match &status {
                Some(StatusKind::Instance(i)) => i.instance_id.as_str(),
                _ => "",
            };
            warn!(node = ?identity.0, claimed = %identifier, instance, "status for another node refused");
            return Err(refused);
        }
        let host_address = node_api_address(&host_address, peer);
        let mut state = self.cluster.lock().await;
        match status {
            Some(StatusKind::Worker(w)) => {
                state.worker_status(&identifier, &host_address, wire_status(w.status), w.metrics);
            }
            Some(StatusKind::Instance(i))
                if !i.instance_id.is_empty()
                    && proto::manifest::validate_instance_id(&i.instance_id).is_err() =>
            {
                warn!(node = %identifier, instance_id = ?i.instance_id, "instance_id: invalid, status ignored");
            }
            Some(StatusKind::Instance(i)) if !i.instance_id.is_empty() => {
                state.instance_status(
                    &identifier,
                    &host_address,
                    &i.instance_id,
                    wire_status(i.status),
                    i.metrics,
                );
            }
            other => debug!(node = %identifier, status = ?other, "empty status ignored"),
        }
        Ok(())
    }
}

/// A wire status; values from a newer peer map to UNKNOWN.
fn wire_status(value: i32) -> ResourceStatus {
    ResourceStatus::try_from(value).unwrap_or(ResourceStatus::Unknown)
}

/// The address to reach a node's API at. A riklet listening on every
/// interface reports `0.0.0.0:port`: use the address it connected from.
fn node_api_address(reported: &str, peer: Option<IpAddr>) -> String {
    match (reported.parse::<SocketAddr>(), peer) {
        (Ok(addr), Some(ip)) if addr.ip().is_unspecified() => {
            SocketAddr::new(ip, addr.port()).to_string()
        }
        _ => reported.to_string(),
    }
}

impl From<RegisterError> for Status {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::InvalidHostname(_) => Status::invalid_argument(e.to_string()),
            RegisterError::AlreadyConnected(_) => Status::already_exists(e.to_string()),
            RegisterError::ShuttingDown => Status::unavailable(e.to_string()),
        }
    }
}

/// The `Register` response stream of one node connection.
#[derive(Debug)]
pub struct RegisterStream {
    rx: nodes::Receiver,
    _guard: SessionGuard,
}

impl Stream for RegisterStream {
    type Item = Result<InstanceScheduling, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// Marks the node disconnected when its `Register` stream is dropped.
#[derive(Debug)]
struct SessionGuard {
    cluster: Arc<Cluster>,
    node: String,
    session: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let node = std::mem::take(&mut self.node);
        let session = self.session;
        // Dropped by tonic inside the runtime; outside one (runtime gone)
        // there is nobody left to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { cluster.lock().await.disconnected(&node, session) });
        }
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    type RegisterStream = RegisterStream;

    async fn register(
        &self,
        request: Request<WorkerRegistration>,
    ) -> Result<Response<RegisterStream>, Status> {
        let identity = NodeIdentity::of(&request);
        let hostname = request.into_inner().hostname;
        if let Err(refused) = identity.check(&hostname, "registration") {
            warn!(node = ?identity.0, claimed = %hostname, "registration as another node refused");
            return Err(refused);
        }
        let (session, rx) = {
            let mut state = self.cluster.lock().await;
            let registered = state.register(&hostname, self.cluster.heartbeat_timeout)?;
            state.set_api_tls(&hostname, identity.0.is_some());
            registered
        };
        Ok(Response::new(RegisterStream {
            rx,
            _guard: SessionGuard {
                cluster: Arc::clone(&self.cluster),
                node: hostname,
                session,
            },
        }))
    }

    async fn send_status_updates(
        &self,
        request: Request<Streaming<WorkerStatus>>,
    ) -> Result<Response<()>, Status> {
        let peer = Caller::remote(&request).map(|a| a.ip());
        let identity = NodeIdentity::of(&request);
        let mut updates = request.into_inner();
        let stop = crate::stopped(self.stop.clone());
        tokio::pin!(stop);
        loop {
            let next = tokio::select! {
                next = updates.message() => next,
                () = &mut stop => break,
            };
            match next {
                Ok(Some(status)) => self.handle(status, peer, &identity).await?,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, peer = ?peer, "status stream broken");
                    break;
                }
            }
        }
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_node_address_uses_the_peer() {
        let peer = Some("10.0.0.7".parse().unwrap());
        assert_eq!(node_api_address("0.0.0.0:4996", peer), "10.0.0.7:4996");
        assert_eq!(node_api_address("[::]:4996", peer), "10.0.0.7:4996");
        assert_eq!(node_api_address("10.0.0.8:1", peer), "10.0.0.8:1");
        assert_eq!(node_api_address("node1:4996", peer), "node1:4996");
        assert_eq!(node_api_address("", peer), "");
        assert_eq!(node_api_address("0.0.0.0:4996", None), "0.0.0.0:4996");
    }
}
