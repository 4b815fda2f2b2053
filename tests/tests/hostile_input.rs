//! Hostile gRPC messages, sent straight to the scheduler (`rik.v1` and the
//! worker protocol), to a riklet's node API (`NodeLogs`) and, from a fake
//! scheduler, to a riklet's worker-protocol entry. Each is refused with an
//! error naming the field (or the size limit), and nothing running is
//! touched: a pod started before keeps its pid, the node keeps reporting.

use std::pin::Pin;
use std::time::Duration;

use proto::common::{
    ResourceStatus, WorkerRegistration, WorkerStatus, WorkloadRequestKind, worker_status,
};
use proto::rik::v1::node_logs_client::NodeLogsClient;
use proto::rik::v1::rik_client::RikClient;
use proto::rik::v1::{
    ApplyRequest, DeleteAppRequest, GetAppRequest, ListNodesRequest, LogsRequest, NodeLogsRequest,
    WatchRequest,
};
use proto::worker::InstanceScheduling;
use proto::worker::worker_client::WorkerClient;
use proto::worker::worker_server::{Worker, WorkerServer};
use riklet_e2e::{Cluster, Mode, Options, free_port, http_app, wait_for};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

/// Over every server's 4 MiB message limit.
fn over_size() -> String {
    "a".repeat(5 << 20)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Checks that `result` was refused with `code` and a message that
/// contains `phrase`; returns a line for the failures list otherwise.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    phrase: &str,
) -> Option<String> {
    match result {
        Err(s) if s.code() == code && s.message().contains(phrase) => None,
        Err(s) => Some(format!(
            "{what}: expected {code:?} with {phrase:?}, got {:?}: {}",
            s.code(),
            s.message().chars().take(300).collect::<String>()
        )),
        Ok(v) => Some(format!("{what}: accepted: {v:?}")),
    }
}

fn pid_of(app: &Value) -> i64 {
    app["containers"][0]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {app:#}"))
}

const POD: &str = "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  containers:\n    - name: {container}\n      exec: /bin/true\n      env: [{name: A, value: {value}}]\n";

fn manifest(name: &str, container: &str, value: &str) -> String {
    POD.replace("{name}", name)
        .replace("{container}", container)
        .replace("{value}", value)
}

#[test]
fn hostile_requests_to_the_scheduler_and_node_api_are_refused_naming_the_field() {
    let cluster = Cluster::start(Mode::Separate);
    let port = free_port();
    let out = cluster.apply(&http_app("web", port), true);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = cluster.app("web");
    let pid = pid_of(&before);
    let scheduler = format!("127.0.0.1:{}", cluster.scheduler_port);

    let rt = runtime();
    let failures: Vec<String> = rt.block_on(async {
        let mut rik = RikClient::new(channel(&scheduler).await).max_encoding_message_size(64 << 20);
        let nodes = rik
            .list_nodes(ListNodesRequest {})
            .await
            .expect("ListNodes");
        let node_api = nodes.into_inner().nodes[0].host_address.clone();
        let mut node =
            NodeLogsClient::new(channel(&node_api).await).max_encoding_message_size(64 << 20);
        let mut worker =
            WorkerClient::new(channel(&scheduler).await).max_encoding_message_size(64 << 20);
        let bad = Code::InvalidArgument;
        let apply = |m: String| ApplyRequest { manifest: m };
        let logs = |app: &str, container: &str, instance: &str| LogsRequest {
            app: app.into(),
            container: container.into(),
            instance_id: instance.into(),
            ..Default::default()
        };
        let node_logs = |instance: &str, container: &str| NodeLogsRequest {
            instance_id: instance.into(),
            container: container.into(),
            ..Default::default()
        };
        let nested = format!("kind: Pod\nname: x\nspec: {}\n", "[".repeat(100_000));
        let huge_doc = format!("{}# {}\n", manifest("x", "c", "b"), "x".repeat(2 << 20));
        vec![
            // rik.v1 on the scheduler.
            refused(
                "Apply name traversal",
                rik.apply(apply(manifest("../x", "c", "b"))).await,
                bad,
                "name: \"../x\"",
            ),
            refused(
                "Apply container with /",
                rik.apply(apply(manifest("x", "a/b", "b"))).await,
                bad,
                "spec.containers[0].name",
            ),
            refused(
                "Apply env NUL",
                rik.apply(apply(manifest("x", "c", "\"b\\0\""))).await,
                bad,
                "spec.containers[0].env[0].value",
            ),
            refused(
                "Apply deep nesting",
                rik.apply(apply(nested)).await,
                bad,
                "nests brackets",
            ),
            refused(
                "Apply not YAML",
                rik.apply(apply("{{{{ ]".into())).await,
                bad,
                "not valid YAML",
            ),
            refused(
                "Apply over the manifest limit",
                rik.apply(apply(huge_doc)).await,
                bad,
                "bytes allowed",
            ),
            refused(
                "Apply over the message limit",
                rik.apply(apply(over_size())).await,
                Code::OutOfRange,
                "message length too large",
            ),
            refused(
                "GetApp name traversal",
                rik.get_app(GetAppRequest {
                    name: "../x".into(),
                })
                .await,
                bad,
                "name:",
            ),
            refused(
                "DeleteApp name with /",
                rik.delete_app(DeleteAppRequest {
                    name: "web/x".into(),
                })
                .await,
                bad,
                "name:",
            ),
            refused(
                "Logs container with /",
                rik.logs(logs("web", "a/b", "")).await.map(|_| ()),
                bad,
                "container:",
            ),
            refused(
                "Logs instance traversal",
                rik.logs(logs("web", "", "../web")).await.map(|_| ()),
                bad,
                "instance_id:",
            ),
            refused(
                "Logs app NUL",
                rik.logs(logs("web\0", "", "")).await.map(|_| ()),
                bad,
                "app:",
            ),
            refused(
                "Watch name traversal",
                rik.watch(WatchRequest {
                    name: "../../x".into(),
                    since_revision: 0,
                })
                .await
                .map(|_| ()),
                bad,
                "name:",
            ),
            // The worker protocol on the scheduler.
            refused(
                "Register hostname traversal",
                worker
                    .register(WorkerRegistration {
                        hostname: "../x".into(),
                    })
                    .await
                    .map(|_| ()),
                bad,
                "hostname",
            ),
            refused(
                "Register over the message limit",
                worker
                    .register(WorkerRegistration {
                        hostname: over_size(),
                    })
                    .await
                    .map(|_| ()),
                Code::OutOfRange,
                "message length too large",
            ),
            // NodeLogs on the riklet.
            refused(
                "NodeLogs instance traversal",
                node.logs(node_logs("../x", "")).await.map(|_| ()),
                bad,
                "instance_id",
            ),
            refused(
                "NodeLogs instance NUL",
                node.logs(node_logs("web-x\0", "")).await.map(|_| ()),
                bad,
                "instance_id",
            ),
            refused(
                "NodeLogs instance too long",
                node.logs(node_logs(&"a".repeat(129), "")).await.map(|_| ()),
                bad,
                "instance_id",
            ),
            refused(
                "NodeLogs container with /",
                node.logs(node_logs("web-x", "a/b")).await.map(|_| ()),
                bad,
                "container",
            ),
            refused(
                "NodeLogs container traversal",
                node.logs(node_logs("web-x", "../../etc")).await.map(|_| ()),
                bad,
                "container",
            ),
            refused(
                "NodeLogs over the message limit",
                node.logs(node_logs(&over_size(), "")).await.map(|_| ()),
                Code::OutOfRange,
                "message length too large",
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    });
    assert!(
        failures.is_empty(),
        "{} hostile messages not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing running was touched; the scheduler and the node still answer.
    let after = cluster.app("web");
    assert_eq!(after["state"], "RUNNING", "{after:#}");
    assert_eq!(pid_of(&after), pid, "the pod was restarted");
    cluster.wait_node_ready();
}

/// A fake scheduler: every registration gets an instruction stream the
/// test writes to; every status goes to the test.
struct FakeScheduler {
    registrations: mpsc::UnboundedSender<mpsc::Sender<Result<InstanceScheduling, Status>>>,
    statuses: mpsc::UnboundedSender<WorkerStatus>,
}

type Instructions = Pin<Box<dyn Stream<Item = Result<InstanceScheduling, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for FakeScheduler {
    type RegisterStream = Instructions;

    async fn register(
        &self,
        _request: Request<WorkerRegistration>,
    ) -> Result<Response<Instructions>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.registrations.send(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn send_status_updates(
        &self,
        request: Request<Streaming<WorkerStatus>>,
    ) -> Result<Response<()>, Status> {
        let mut stream = request.into_inner();
        while let Some(Ok(status)) = stream.next().await {
            let _ = self.statuses.send(status);
        }
        Ok(Response::new(()))
    }
}

fn instruction(id: &str, action: i32, definition: &str) -> InstanceScheduling {
    InstanceScheduling {
        instance_id: id.into(),
        action,
        definition: definition.into(),
    }
}

/// The next status of instance `id`: its state and metrics JSON.
async fn next_of(statuses: &mut mpsc::UnboundedReceiver<WorkerStatus>, id: &str) -> (i32, Value) {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(30), statuses.recv())
            .await
            .unwrap_or_else(|_| panic!("no status of {id} within 30 s"))
            .expect("status stream");
        if let Some(worker_status::Status::Instance(i)) = s.status
            && i.instance_id == id
        {
            return (
                i.status,
                serde_json::from_str(&i.metrics).expect("metrics JSON"),
            );
        }
    }
}

const SLEEPER: &str = r#"{"apiVersion":"v1","kind":"Pod","name":"sleeper","replicas":1,"spec":{"hostNetwork":true,"containers":[{"name":"main","exec":"/bin/busybox","args":["sleep","3600"]}]}}"#;

#[test]
fn hostile_instructions_to_the_riklet_are_refused_naming_the_field() {
    let cluster = Cluster::start_with(
        Mode::Separate,
        Options {
            own_scheduler: true,
            no_wait: true,
            ..Options::default()
        },
    );
    let rt = runtime();
    let (reg_tx, mut registrations) = mpsc::unbounded_channel();
    let (status_tx, mut statuses) = mpsc::unbounded_channel();
    let port = cluster.scheduler_port;
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the fake scheduler");
        tonic::transport::Server::builder()
            .add_service(WorkerServer::new(FakeScheduler {
                registrations: reg_tx,
                statuses: status_tx,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("fake scheduler");
    });
    let create = WorkloadRequestKind::Create as i32;
    let destroy = WorkloadRequestKind::Destroy as i32;
    let failures: Vec<String> = rt.block_on(async {
        let register = async |r: &mut mpsc::UnboundedReceiver<_>| {
            tokio::time::timeout(Duration::from_secs(40), r.recv())
                .await
                .expect("the riklet registers")
                .expect("registration")
        };
        let instructions: mpsc::Sender<Result<InstanceScheduling, Status>> =
            register(&mut registrations).await;
        instructions
            .send(Ok(instruction("sleeper-1", create, SLEEPER)))
            .await
            .expect("send");
        let pid = loop {
            let (state, metrics) = next_of(&mut statuses, "sleeper-1").await;
            if state == ResourceStatus::Running as i32
                && let Some(pid) = metrics["containers"][0]["pid"].as_i64()
            {
                break pid;
            }
        };
        let mut failures = Vec::new();
        // CREATEs refused with a FAILED status whose reason names the field.
        let image_pod = SLEEPER.replace(
            r#""exec":"/bin/busybox","args":["sleep","3600"]"#,
            r#""image":"busybox""#,
        );
        let cases = [
            (
                "instance traversal",
                "../x",
                SLEEPER.to_string(),
                "instance_id",
            ),
            ("instance NUL", "x\0y", SLEEPER.to_string(), "instance_id"),
            (
                "instance too long",
                &*"a".repeat(129),
                SLEEPER.to_string(),
                "instance_id",
            ),
            (
                "definition not JSON",
                "bad-1",
                "{\"apiVersion\": ".to_string(),
                "invalid definition",
            ),
            (
                "container with /",
                "bad-2",
                SLEEPER.replace("\"main\"", "\"a/b\""),
                "spec.containers[0].name",
            ),
            (
                "exec traversal",
                "bad-3",
                SLEEPER.replace("/bin/busybox", "/bin/../../etc/x"),
                "spec.containers[0].exec",
            ),
            (
                "env injection",
                "bad-4",
                SLEEPER.replace(
                    "\"args\"",
                    "\"env\":[{\"name\":\"A\\nB\",\"value\":\"c\"}],\"args\"",
                ),
                "spec.containers[0].env[0].name",
            ),
            (
                "replicas overflow",
                "bad-5",
                SLEEPER.replace("\"replicas\":1", "\"replicas\":4294967296"),
                "replicas",
            ),
            (
                "containerd id",
                "bad--6",
                image_pod,
                "spec.containers[0].name",
            ),
        ];
        for (what, id, definition, phrase) in cases {
            instructions
                .send(Ok(instruction(id, create, &definition)))
                .await
                .expect("send");
            let (state, metrics) = next_of(&mut statuses, id).await;
            let reason = metrics["reason"].as_str().unwrap_or_default().to_string();
            if state != ResourceStatus::Failed as i32 || !reason.contains(phrase) {
                failures.push(format!(
                    "{what}: expected FAILED naming {phrase:?}, got {state} {reason:?}"
                ));
            }
        }
        // A second CREATE of the running pod, with another definition:
        // answered with what runs.
        instructions
            .send(Ok(instruction(
                "sleeper-1",
                create,
                &SLEEPER.replace("3600", "1"),
            )))
            .await
            .expect("send");
        let (_, metrics) = next_of(&mut statuses, "sleeper-1").await;
        if metrics["containers"][0]["pid"].as_i64() != Some(pid) {
            failures.push(format!("CREATE again changed the pod: {metrics}"));
        }
        // Instructions no status can answer: logged with the field.
        instructions
            .send(Ok(instruction("sleeper-1", 7, SLEEPER)))
            .await
            .expect("send");
        instructions
            .send(Ok(instruction("../sleeper-1", destroy, "")))
            .await
            .expect("send");
        // Over the riklet's message limit: the session ends, the riklet
        // registers again.
        instructions
            .send(Ok(instruction("big-1", create, &over_size())))
            .await
            .expect("send");
        let instructions = register(&mut registrations).await;
        let (state, metrics) = next_of(&mut statuses, "sleeper-1").await;
        if state != ResourceStatus::Running as i32
            || metrics["containers"][0]["pid"].as_i64() != Some(pid)
        {
            failures.push(format!("the pod was touched: {state} {metrics}"));
        }
        drop(instructions);
        failures
    });
    let log = cluster.riklet_log();
    let mut failures = failures;
    for phrase in [
        "action: unknown value",
        "DESTROY refused",
        "instance_id: \\\"../sleeper-1\\\"",
    ] {
        if !log.contains(phrase) && !log.contains(&phrase.replace("\\\"", "\"")) {
            failures.push(format!("riklet log lacks {phrase:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} hostile instructions not refused as expected:\n{}\nriklet log:\n{log}",
        failures.len(),
        failures.join("\n")
    );
    wait_for(
        Duration::from_secs(10),
        "the sleeper in riklet pods",
        || {
            cluster
                .local_pods()
                .as_array()?
                .iter()
                .any(|p| p["appId"] == "sleeper-1")
                .then_some(())
        },
    );
}
