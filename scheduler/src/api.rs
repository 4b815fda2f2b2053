//! `rik.v1.Rik`: the API the `rik` CLI talks to.
//!
//! Wire ⇄ domain conversions live here; the operations are in
//! [`crate::cluster`], `Logs` in [`crate::logs`]. `Watch` sends the events
//! the cluster builds for its watcher
//! ([`crate::cluster::State::watch_next`]) as the client reads them. Every
//! call is counted ([`ApiCalls`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use proto::common::ResourceStatus;
use proto::rik::v1::rik_server::Rik;
use proto::rik::v1::{
    App, ApplyRequest, ApplyResponse, DeleteAppRequest, DeleteAppResponse, GetAppRequest, Instance,
    ListAppsRequest, ListAppsResponse, ListNodesRequest, ListNodesResponse, LogsRequest, Node,
    WatchEvent, WatchRequest,
};
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterError, WatchNext, unix_secs};
use crate::logs::LogStream;
use crate::metrics::ApiCalls;
use crate::store::{AppRecord, Data};

/// The `rik.v1.Rik` service.
#[derive(Debug, Clone)]
pub struct RikService {
    cluster: Arc<Cluster>,
    /// Becomes true at shutdown: followed log streams and watches end.
    stop: watch::Receiver<bool>,
    calls: ApiCalls,
}

impl RikService {
    pub fn new(cluster: Arc<Cluster>, stop: watch::Receiver<bool>, calls: ApiCalls) -> Self {
        Self {
            cluster,
            stop,
            calls,
        }
    }
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::InvalidManifest(_) | ClusterError::PortTaken { .. } => {
                Status::invalid_argument(proto::error_chain(&e))
            }
            ClusterError::AppNotFound(_) => Status::not_found(proto::error_chain(&e)),
            ClusterError::AppDeleting(_) => Status::failed_precondition(e.to_string()),
            ClusterError::Store(_) => Status::internal(proto::error_chain(&e)),
            ClusterError::RevisionCompacted { .. } | ClusterError::RevisionAhead { .. } => {
                Status::out_of_range(e.to_string())
            }
            ClusterError::ShuttingDown => Status::unavailable(e.to_string()),
        }
    }
}

/// Refuses a name from the wire that is not an app or container name
/// (DNS-1123 label), naming the request field, before it is looked up,
/// logged or forwarded to a node.
fn check_name(field: &str, name: &str) -> Result<(), Status> {
    proto::manifest::validate_name(field, name).map_err(invalid)
}

fn invalid(e: proto::manifest::ManifestError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The aggregated status of an app: FAILED if any instance failed, RUNNING
/// if all run, COMPLETED if all ran to completion, CREATING if any is being
/// created, else PENDING.
pub fn app_status(statuses: &[ResourceStatus]) -> &'static str {
    use ResourceStatus::*;
    if statuses.contains(&Failed) {
        "FAILED"
    } else if !statuses.is_empty() && statuses.iter().all(|s| *s == Running) {
        "RUNNING"
    } else if !statuses.is_empty() && statuses.iter().all(|s| *s == Terminated) {
        // Every instance ran to completion (seed 004 shows `Completed`).
        "COMPLETED"
    } else if statuses.contains(&Creating) {
        "CREATING"
    } else {
        "PENDING"
    }
}

/// An app as `rik.v1` sends it.
pub(crate) fn app_to_wire(name: &str, record: &AppRecord, data: &Data) -> App {
    let instances: Vec<Instance> = data
        .instances_of(name)
        .map(|(id, i)| Instance {
            instance_id: id.clone(),
            node: i.node.clone().unwrap_or_default(),
            status: proto::status::name(i.status).to_string(),
            metrics: i.metrics.clone(),
            updated_at: i.updated_at,
        })
        .collect();
    let statuses: Vec<ResourceStatus> = data.instances_of(name).map(|(_, i)| i.status).collect();
    let deleting = record.deleting_since.is_some();
    App {
        name: name.to_string(),
        replicas: record.manifest.replicas,
        definition: record.manifest.to_definition(),
        created_at: record.created_at,
        instances,
        status: if deleting {
            "TERMINATING"
        } else {
            app_status(&statuses)
        }
        .to_string(),
        events: data
            .events
            .get(name)
            .map(|e| e.to_wire())
            .unwrap_or_default(),
        deleting,
    }
}

/// A watch's events.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// Feeds one watch: its initial events, then the changes queued for its
/// watcher, built when the client is ready for them.
struct WatchFeed {
    initial: VecDeque<WatchEvent>,
    notify: Arc<Notify>,
    /// Revision of the last event sent, for the client to resume from.
    last: u64,
    ended: bool,
    watcher: Watcher,
}

/// Removes its watcher from the cluster when the stream is dropped.
struct Watcher {
    cluster: Arc<Cluster>,
    id: u64,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let id = self.id;
        // Dropped by tonic inside the runtime; outside one (runtime gone)
        // there is nobody left to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { cluster.lock().await.unwatch(id) });
        }
    }
}

impl WatchFeed {
    async fn next(mut self) -> Option<(Result<WatchEvent, Status>, Self)> {
        if self.ended {
            return None;
        }
        if let Some(event) = self.initial.pop_front() {
            self.last = event.revision;
            return Some((Ok(event), self));
        }
        loop {
            let next = self
                .watcher
                .cluster
                .lock()
                .await
                .watch_next(self.watcher.id);
            match next {
                WatchNext::Event(event) => {
                    self.last = event.revision;
                    return Some((Ok(event), self));
                }
                WatchNext::Idle => self.notify.notified().await,
                WatchNext::Overflowed => {
                    warn!(last = self.last, "watch fell behind, closed");
                    self.ended = true;
                    let status = Status::resource_exhausted(format!(
                        "the watch fell behind (more than {} apps changed before it read them); \
                         resume from revision {}",
                        crate::watchers::MAX_PENDING,
                        self.last
                    ));
                    return Some((Err(status), self));
                }
                WatchNext::Gone => return None,
            }
        }
    }
}

#[tonic::async_trait]
impl Rik for RikService {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.calls.count("Apply");
        let manifest = request.into_inner().manifest;
        let outcome = self.cluster.lock().await.apply(&manifest)?;
        info!(app = %outcome.name, result = outcome.result.as_str(), "apply");
        Ok(Response::new(ApplyResponse {
            name: outcome.name,
            result: outcome.result.as_str().to_string(),
            instance_ids: outcome.instance_ids,
            revision: outcome.revision,
        }))
    }

    async fn list_apps(
        &self,
        _request: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        self.calls.count("ListApps");
        let state = self.cluster.lock().await;
        let data = state.store().data();
        let apps = data
            .apps
            .iter()
            .map(|(name, record)| app_to_wire(name, record, data))
            .collect();
        Ok(Response::new(ListAppsResponse { apps }))
    }

    async fn get_app(&self, request: Request<GetAppRequest>) -> Result<Response<App>, Status> {
        self.calls.count("GetApp");
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let state = self.cluster.lock().await;
        let data = state.store().data();
        let record = data
            .apps
            .get(&name)
            .ok_or_else(|| ClusterError::AppNotFound(name.clone()))?;
        Ok(Response::new(app_to_wire(&name, record, data)))
    }

    async fn delete_app(
        &self,
        request: Request<DeleteAppRequest>,
    ) -> Result<Response<DeleteAppResponse>, Status> {
        self.calls.count("DeleteApp");
        let name = request.into_inner().name;
        check_name("name", &name)?;
        let nodes = self.cluster.lock().await.delete(&name)?;
        Ok(Response::new(DeleteAppResponse { name, nodes }))
    }

    async fn list_nodes(
        &self,
        _request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.calls.count("ListNodes");
        let state = self.cluster.lock().await;
        let data = state.store().data();
        let nodes = state
            .nodes()
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                ready: n.ready,
                metrics: n.metrics.clone(),
                last_seen: unix_secs(n.last_seen),
                host_address: n.host_address.clone(),
                instances: u32::try_from(data.count_on(&n.name)).unwrap_or(u32::MAX),
            })
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<LogStream>, Status> {
        self.calls.count("Logs");
        let request = request.into_inner();
        check_name("app", &request.app)?;
        if !request.container.is_empty() {
            check_name("container", &request.container)?;
        }
        if !request.instance_id.is_empty() {
            proto::manifest::validate_instance_id(&request.instance_id).map_err(invalid)?;
        }
        let logs = crate::logs::open(&self.cluster, request).await?;
        let stopped = crate::stopped(self.stop.clone());
        Ok(Response::new(logs.take_until(stopped).boxed()))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        self.calls.count("Watch");
        let WatchRequest {
            name,
            since_revision,
        } = request.into_inner();
        if !name.is_empty() {
            check_name("name", &name)?;
        }
        let app = (!name.is_empty()).then_some(name);
        let start = self
            .cluster
            .lock()
            .await
            .watch(app.clone(), since_revision)?;
        info!(app = ?app, since_revision, watcher = start.id, "watch");
        let feed = WatchFeed {
            initial: start.initial.into(),
            notify: start.notify,
            last: since_revision,
            ended: false,
            watcher: Watcher {
                cluster: Arc::clone(&self.cluster),
                id: start.id,
            },
        };
        let events = futures::stream::unfold(feed, WatchFeed::next);
        let stopped = crate::stopped(self.stop.clone());
        Ok(Response::new(events.take_until(stopped).boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_status_aggregation() {
        use ResourceStatus::*;
        assert_eq!(app_status(&[Running, Failed, Creating]), "FAILED");
        assert_eq!(app_status(&[Running, Running]), "RUNNING");
        assert_eq!(app_status(&[Running, Creating, Pending]), "CREATING");
        assert_eq!(app_status(&[Running, Pending]), "PENDING");
        assert_eq!(app_status(&[Terminated, Terminated]), "COMPLETED");
        assert_eq!(app_status(&[Terminated, Running]), "PENDING");
        assert_eq!(app_status(&[]), "PENDING");
    }
}
