//! In-process test: [`run`](crate::run) on `127.0.0.1:0`, a fake riklet
//! driven through the generated tonic clients, and the `rik` API. `watch`:
//! the `Watch` RPC the same way.

mod tls;
mod watch;

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::common::worker_status::Status as StatusKind;
use proto::common::{
    InstanceMetric, ResourceStatus, WorkerMetric, WorkerRegistration, WorkerStatus,
    WorkloadRequestKind,
};
use proto::rik::v1::node_logs_server::{NodeLogs, NodeLogsServer};
use proto::rik::v1::rik_client::RikClient;
use proto::rik::v1::{
    App, ApplyRequest, DeleteAppRequest, GetAppRequest, ListAppsRequest, ListNodesRequest,
    LogChunk, LogsRequest, Node, NodeLogsRequest,
};
use proto::worker::InstanceScheduling;
use proto::worker::worker_client::WorkerClient;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::metrics::ApiCalls;
use crate::{SchedulerConfig, SchedulerError, run};

/// Generous bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(10);
const NODE: &str = "node-1";
const WEB: &str = "kind: Pod\nname: web\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";

struct Scheduler {
    url: String,
    /// The calls it served.
    calls: ApiCalls,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), SchedulerError>>,
}

impl Scheduler {
    async fn start(state_dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let config = SchedulerConfig {
            state_dir: state_dir.to_path_buf(),
            heartbeat_timeout: Duration::from_secs(60),
            ..SchedulerConfig::default()
        };
        let calls = ApiCalls::new();
        let task = tokio::spawn(run(config, listener, calls.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            url,
            calls,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("scheduler stops in time")
            .unwrap()
            .expect("scheduler ran without error");
    }

    async fn rik(&self) -> RikClient<Channel> {
        RikClient::connect(self.url.clone()).await.unwrap()
    }

    async fn worker(&self) -> WorkerClient<Channel> {
        WorkerClient::connect(self.url.clone()).await.unwrap()
    }
}

/// Opens a `SendStatusUpdates` stream; statuses are sent on the returned
/// channel.
fn status_stream(mut worker: WorkerClient<Channel>) -> mpsc::Sender<WorkerStatus> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let _ = worker.send_status_updates(ReceiverStream::new(rx)).await;
    });
    tx
}

fn worker_running(host_address: &str) -> WorkerStatus {
    WorkerStatus {
        identifier: NODE.into(),
        host_address: host_address.into(),
        status: Some(StatusKind::Worker(WorkerMetric {
            status: ResourceStatus::Running as i32,
            metrics: r#"{"cpu":{"total":4,"free":3}}"#.into(),
        })),
    }
}

fn instance_status(id: &str, status: ResourceStatus) -> WorkerStatus {
    WorkerStatus {
        identifier: NODE.into(),
        host_address: String::new(),
        status: Some(StatusKind::Instance(InstanceMetric {
            status: status as i32,
            metrics: format!(r#"{{"appId":"{id}"}}"#),
            instance_id: id.into(),
        })),
    }
}

async fn register(worker: &mut WorkerClient<Channel>) -> Streaming<InstanceScheduling> {
    worker
        .register(WorkerRegistration {
            hostname: NODE.into(),
        })
        .await
        .expect("register accepted")
        .into_inner()
}

async fn next(stream: &mut Streaming<InstanceScheduling>) -> (String, WorkloadRequestKind, String) {
    let m = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an instruction in time")
        .expect("register stream healthy")
        .expect("register stream open");
    let action = WorkloadRequestKind::try_from(m.action).unwrap();
    (m.instance_id, action, m.definition)
}

/// Polls `check` until it returns `Some`, panicking after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node(rik: &mut RikClient<Channel>) -> Node {
    let nodes = rik
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    nodes
        .into_iter()
        .find(|n| n.name == NODE)
        .expect("node listed")
}

async fn web(rik: &mut RikClient<Channel>) -> App {
    rik.get_app(GetAppRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner()
}

/// A riklet node API that answers every `Logs` call with one chunk.
struct FakeNodeLogs;

#[tonic::async_trait]
impl NodeLogs for FakeNodeLogs {
    type LogsStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

    async fn logs(
        &self,
        request: Request<NodeLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let chunk = LogChunk {
            instance_id: r.instance_id,
            container: r.container,
            data: format!(
                "tail={:?} follow={} since_ms={} previous={}\n",
                r.tail, r.follow, r.since_ms, r.previous
            )
            .into_bytes(),
        };
        Ok(Response::new(futures::stream::iter([Ok(chunk)]).boxed()))
    }
}

async fn start_node_api() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeLogsServer::new(FakeNodeLogs))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn fake_riklet_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(dir.path()).await;
    let mut rik = sched.rik().await;
    let mut worker = sched.worker().await;
    let node_api = start_node_api().await;

    // Invalid hostnames and manifests are refused.
    let err = worker
        .register(WorkerRegistration {
            hostname: "Bad_Host".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = rik
        .apply(ApplyRequest {
            manifest: "kind: Pod\nname: web\nspec: {containers: [{name: c, exec: rel}]}".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("spec.containers[0].exec"),
        "{}",
        err.message()
    );

    // Registered, not ready: an app applied now is not sent yet.
    let mut stream = register(&mut worker).await;
    let statuses = status_stream(worker.clone());
    let applied = rik
        .apply(ApplyRequest {
            manifest: WEB.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.result, "created");
    assert_eq!(applied.instance_ids.len(), 1);
    let id = applied.instance_ids[0].clone();
    assert!(
        id.starts_with("web-") && id.len() == "web-".len() + 5,
        "{id}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err(),
        "no instruction before the node reports RUNNING"
    );
    assert!(!node(&mut rik).await.ready);
    assert_eq!(web(&mut rik).await.status, "PENDING");

    // RUNNING: the node is ready and gets the instance.
    statuses.send(worker_running(&node_api)).await.unwrap();
    let (got, action, definition) = next(&mut stream).await;
    assert_eq!(
        (got.as_str(), action),
        (id.as_str(), WorkloadRequestKind::Create)
    );
    let manifest = proto::manifest::parse_definition(&definition).expect("definition parses");
    assert_eq!(manifest.name, "web");
    let n = node(&mut rik).await;
    assert!(n.ready);
    assert_eq!(
        (n.instances, n.host_address.as_str()),
        (1, node_api.as_str())
    );

    // Same manifest again: unchanged.
    let again = rik
        .apply(ApplyRequest {
            manifest: WEB.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.result.as_str(), again.instance_ids),
        ("unchanged", vec![id.clone()])
    );

    // The instance runs.
    statuses
        .send(instance_status(&id, ResourceStatus::Creating))
        .await
        .unwrap();
    statuses
        .send(instance_status(&id, ResourceStatus::Running))
        .await
        .unwrap();
    let app = eventually("app RUNNING", || {
        let mut rik = rik.clone();
        async move {
            let apps = rik
                .list_apps(ListAppsRequest {})
                .await
                .unwrap()
                .into_inner()
                .apps;
            apps.into_iter()
                .find(|a| a.name == "web" && a.status == "RUNNING")
        }
    })
    .await;
    assert_eq!(app.instances[0].node, NODE);
    assert_eq!(app.instances[0].status, "RUNNING");
    assert!(app.instances[0].metrics.contains(&id));

    // Logs come from the node API.
    let chunks: Vec<LogChunk> = rik
        .logs(LogsRequest {
            app: "web".into(),
            tail: Some(7),
            follow: false,
            container: "c".into(),
            since_ms: 2000,
            previous: true,
            instance_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].instance_id, id);
    assert_eq!(
        chunks[0].data,
        b"tail=Some(7) follow=false since_ms=2000 previous=true\n"
    );
    let err = rik
        .logs(LogsRequest {
            app: "web".into(),
            container: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rik
        .logs(LogsRequest {
            app: "web".into(),
            instance_id: "web-nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("instance web-nope"), "{err:?}");

    // The hostname is taken while connected.
    let err = worker
        .register(WorkerRegistration {
            hostname: NODE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // An instance the scheduler does not know is destroyed, a terminated
    // one too (a completed pod stays on its node until destroyed); the
    // TERMINATED that answers the DESTROY ends the exchange.
    for (id, status) in [
        ("ghost-abcde", ResourceStatus::Terminated),
        ("ghost-fghij", ResourceStatus::Running),
        ("ghost-abcde", ResourceStatus::Terminated),
        ("ghost-klmno", ResourceStatus::Running),
    ] {
        statuses.send(instance_status(id, status)).await.unwrap();
    }
    for id in ["ghost-abcde", "ghost-fghij", "ghost-klmno"] {
        let (got, action, _) = next(&mut stream).await;
        assert_eq!((got.as_str(), action), (id, WorkloadRequestKind::Destroy));
    }

    // The register stream goes away: the node is not ready at once.
    drop(stream);
    eventually("node not ready", || {
        let mut rik = rik.clone();
        async move { (!node(&mut rik).await.ready).then_some(()) }
    })
    .await;
    let app = web(&mut rik).await;
    assert_eq!(
        (app.instances[0].node.as_str(), app.status.as_str()),
        (NODE, "PENDING")
    );

    // Re-registration: the same instance comes back.
    let mut stream = register(&mut worker).await;
    statuses.send(worker_running(&node_api)).await.unwrap();
    let (got, action, _) = next(&mut stream).await;
    assert_eq!(
        (got.as_str(), action),
        (id.as_str(), WorkloadRequestKind::Create)
    );
    statuses
        .send(instance_status(&id, ResourceStatus::Running))
        .await
        .unwrap();
    eventually("app RUNNING again", || {
        let mut rik = rik.clone();
        async move { (web(&mut rik).await.status == "RUNNING").then_some(()) }
    })
    .await;

    // Scheduler restart on the same state: nothing lost, the node ends its
    // streams and gets the same instance after registering again.
    sched.stop().await;
    assert!(
        tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("register stream ends at shutdown")
            .map_or(true, |m| m.is_none()),
    );
    let sched = Scheduler::start(dir.path()).await;
    let mut rik = sched.rik().await;
    let app = web(&mut rik).await;
    assert_eq!(app.instances.len(), 1);
    assert_eq!(app.instances[0].instance_id, id);
    assert_eq!(app.instances[0].node, NODE);
    assert_eq!(app.instances[0].status, "RUNNING");

    let mut worker = sched.worker().await;
    let mut stream = register(&mut worker).await;
    let statuses = status_stream(worker.clone());
    statuses.send(worker_running(&node_api)).await.unwrap();
    let (got, action, _) = next(&mut stream).await;
    assert_eq!(
        (got.as_str(), action),
        (id.as_str(), WorkloadRequestKind::Create)
    );

    // Delete: DESTROY to the node; the app is Terminating until the node
    // reports its pod gone, then it is gone.
    let deleted = rik
        .delete_app(DeleteAppRequest { name: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.nodes, [NODE]);
    let (got, action, _) = next(&mut stream).await;
    assert_eq!(
        (got.as_str(), action),
        (id.as_str(), WorkloadRequestKind::Destroy)
    );
    let app = web(&mut rik).await;
    assert!(app.deleting);
    assert_eq!(app.status, "TERMINATING");
    let err = rik
        .apply(ApplyRequest {
            manifest: "kind: Pod\nname: web\nspec: {containers: [{name: c, exec: /bin/true}]}"
                .into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    statuses
        .send(instance_status(&id, ResourceStatus::Terminated))
        .await
        .unwrap();
    eventually("web gone", || {
        let mut rik = rik.clone();
        async move {
            rik.get_app(GetAppRequest { name: "web".into() })
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    let err = rik
        .get_app(GetAppRequest { name: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "app web not found");
    let err = rik
        .delete_app(DeleteAppRequest { name: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(node(&mut rik).await.instances, 0);

    sched.stop().await;
}
