//! The commands against an in-process fake scheduler on `127.0.0.1:0`.
//! `watch`: `apply --wait` and `get -w` against scripted watches.

mod watch;

use std::collections::VecDeque;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use clap::Parser;
use proto::rik::v1::rik_server::{Rik, RikServer};
use proto::rik::v1::*;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::*;
use crate::output;

#[derive(Default)]
struct State {
    apps: Vec<App>,
    nodes: Vec<Node>,
    applied: Vec<String>,
    /// `GetApp` answers in turn; the last one repeats.
    script: VecDeque<App>,
    logs: Vec<LogChunk>,
    /// `Watch` answers in turn; without one, a stream that stays open.
    watches: VecDeque<WatchScript>,
    /// Every `Watch` request: (name, since_revision).
    watch_requests: Vec<(String, u64)>,
    /// The methods called, in order.
    calls: Vec<&'static str>,
}

/// One scripted answer to `Watch`.
enum WatchScript {
    /// The call fails.
    Refused(Status),
    /// These events, then the stream ends (`true`) or stays open.
    Events(Vec<Result<WatchEvent, Status>>, bool),
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

#[tonic::async_trait]
impl Rik for Fake {
    async fn apply(&self, r: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        self.0.lock().unwrap().calls.push("Apply");
        let text = r.into_inner().manifest;
        let m =
            proto::manifest::parse(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.0.lock().unwrap().applied.push(text);
        Ok(Response::new(ApplyResponse {
            name: m.name,
            result: "created".into(),
            instance_ids: vec![],
            revision: 1,
        }))
    }

    async fn list_apps(
        &self,
        _: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        self.0.lock().unwrap().calls.push("ListApps");
        let apps = self.0.lock().unwrap().apps.clone();
        Ok(Response::new(ListAppsResponse { apps }))
    }

    async fn get_app(&self, r: Request<GetAppRequest>) -> Result<Response<App>, Status> {
        let name = r.into_inner().name;
        let mut state = self.0.lock().unwrap();
        state.calls.push("GetApp");
        if state.script.len() > 1 {
            return Ok(Response::new(state.script.pop_front().unwrap()));
        }
        if let Some(app) = state.script.front() {
            return Ok(Response::new(app.clone()));
        }
        state
            .apps
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("app {name:?} not found")))
    }

    async fn delete_app(
        &self,
        r: Request<DeleteAppRequest>,
    ) -> Result<Response<DeleteAppResponse>, Status> {
        let name = r.into_inner().name;
        let state = self.0.lock().unwrap();
        let app = state
            .apps
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Status::not_found(format!("app {name:?} not found")))?;
        Ok(Response::new(DeleteAppResponse {
            name,
            nodes: app.instances.iter().map(|i| i.node.clone()).collect(),
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.0.lock().unwrap().nodes.clone();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    type LogsStream = tokio_stream::Iter<std::vec::IntoIter<Result<LogChunk, Status>>>;

    async fn logs(&self, r: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = r.into_inner();
        let chunks: Vec<_> = self
            .0
            .lock()
            .unwrap()
            .logs
            .iter()
            .filter(|c| req.container.is_empty() || c.container == req.container)
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(&self, r: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = r.into_inner();
        let mut state = self.0.lock().unwrap();
        state.calls.push("Watch");
        state.watch_requests.push((req.name, req.since_revision));
        let (events, end) = match state.watches.pop_front() {
            Some(WatchScript::Refused(status)) => return Err(status),
            Some(WatchScript::Events(events, end)) => (events, end),
            None => (Vec::new(), false),
        };
        let events = tokio_stream::iter(events);
        Ok(Response::new(if end {
            Box::pin(events)
        } else {
            Box::pin(events.chain(tokio_stream::pending()))
        }))
    }
}

/// Starts the fake; returns its URL.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RikServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn inst(id: &str, node: &str, status: &str, metrics: &str) -> Instance {
    Instance {
        instance_id: id.into(),
        node: node.into(),
        status: status.into(),
        metrics: metrics.into(),
        updated_at: 0,
    }
}

fn web(instances: Vec<Instance>) -> App {
    App {
        name: "web".into(),
        replicas: 1,
        definition: r#"{"kind":"Pod","name":"web","spec":{"containers":[{"name":"c","exec":"/bin/true","ports":{"port":80,"target_port":8080}}]}}"#.into(),
        // Mid-minute: the age reads the same for 29 s.
        created_at: output::now_unix() - (3 * 3600 + 5 * 60 + 30),
        instances,
        status: "RUNNING".into(),
        events: Vec::new(),
        deleting: false,
    }
}

#[derive(Parser)]
struct ApplyCli {
    #[command(flatten)]
    args: apply::Args,
}

#[derive(Parser)]
struct GetCli {
    #[command(flatten)]
    args: get::Args,
}

const MANIFEST: &str =
    "kind: Pod\nname: web\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";

fn manifest_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

async fn apply(
    url: &str,
    file: &tempfile::NamedTempFile,
    extra: &[&str],
) -> anyhow::Result<String> {
    let path = file.path().to_str().unwrap();
    let base = ["apply", "-f", path];
    let argv = base.iter().chain(extra).copied();
    let args = ApplyCli::try_parse_from(argv).unwrap().args;
    let mut out = Vec::new();
    apply::run(args, &crate::client_config::Target::plain(url), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn get(url: &str, argv: &[&str]) -> anyhow::Result<String> {
    let args = GetCli::try_parse_from(std::iter::once("get").chain(argv.iter().copied()))
        .unwrap()
        .args;
    let mut scheduler = Scheduler::connect(url).await?;
    let mut out = Vec::new();
    get::run(args, &mut scheduler, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn apply_validates_locally_then_sends_the_text() {
    let fake = Fake::default();
    let url = serve(fake.clone()).await;
    let bad = manifest_file("kind: Pod\nname: web\nspec: {containers: [{name: c, exec: bin/x}]}\n");
    let err = apply(&url, &bad, &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.containers[0].exec: \"bin/x\" must be an absolute path"
    );
    assert!(fake.0.lock().unwrap().applied.is_empty(), "nothing sent");

    let good = manifest_file(MANIFEST);
    assert_eq!(apply(&url, &good, &[]).await.unwrap(), "app/web created\n");
    assert_eq!(fake.0.lock().unwrap().applied, [MANIFEST]);
}

#[tokio::test]
async fn get_apps_tables_and_json() {
    let fake = Fake::default();
    fake.0.lock().unwrap().apps = vec![web(vec![inst(
        "web-1",
        "node-a",
        "RUNNING",
        r#"{"internalIp":"10.0.0.2","restartCount":2}"#,
    )])];
    let url = serve(fake).await;
    assert_eq!(
        get(&url, &["apps"]).await.unwrap(),
        "NAME   STATUS    AGE\nweb    Running   3h5m\n"
    );
    let wide = get(&url, &["app", "-o", "wide"]).await.unwrap();
    assert!(
        wide.ends_with("node-a   10.0.0.2   2          <none>   <none>   80→8080/TCP\n"),
        "{wide}"
    );
    let one: serde_json::Value =
        serde_json::from_str(&get(&url, &["app", "web", "-o", "json"]).await.unwrap()).unwrap();
    assert_eq!(one["appId"], "web-1");
    assert_eq!(one["internalIp"], "10.0.0.2");
    let all: serde_json::Value =
        serde_json::from_str(&get(&url, &["apps", "-o", "json"]).await.unwrap()).unwrap();
    assert_eq!(all[0]["instances"][0]["runsOn"], "node-a");
    let err = get(&url, &["app/nope"]).await.unwrap_err();
    assert_eq!(err.to_string(), "app \"nope\" not found");
}

#[tokio::test]
async fn get_nodes() {
    let fake = Fake::default();
    fake.0.lock().unwrap().nodes = vec![Node {
        name: "node-a".into(),
        ready: true,
        metrics: r#"{"resources":{"id":"node-a"},"realtime":{"cpu":{"currentUsage":12}}}"#.into(),
        last_seen: output::now_unix() - (10 * 60 + 30),
        host_address: String::new(),
        instances: 1,
    }];
    let url = serve(fake).await;
    assert_eq!(
        get(&url, &["nodes"]).await.unwrap(),
        "NAME     STATUS   CPU   MEMORY   PODS   LAST-SEEN\nnode-a   Ready    12%   -        1      10m\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&get(&url, &["nodes", "-o", "json"]).await.unwrap()).unwrap();
    assert_eq!(json[0]["ready"], true);
    assert_eq!(json[0]["realtime"]["cpu"]["currentUsage"], 12);
}

#[tokio::test]
async fn delete_and_logs() {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.apps = vec![web(vec![inst("web-1", "node-a", "RUNNING", "")])];
        s.logs = vec![
            LogChunk {
                instance_id: "web-1".into(),
                container: "c".into(),
                data: b"line 1\n".to_vec(),
            },
            LogChunk {
                instance_id: "web-1".into(),
                container: "d".into(),
                data: b"other\n".to_vec(),
            },
        ];
    }
    let url = serve(fake).await;
    let mut scheduler = Scheduler::connect(&url).await.unwrap();

    #[derive(Parser)]
    struct DeleteCli {
        #[command(flatten)]
        args: delete::Args,
    }
    let mut out = Vec::new();
    let args = DeleteCli::try_parse_from(["delete", "web"]).unwrap().args;
    delete::run(args, &mut scheduler, &mut out).await.unwrap();
    assert_eq!(out, b"web deleted on node-a\n");

    #[derive(Parser)]
    struct LogsCli {
        #[command(flatten)]
        args: logs::Args,
    }
    let mut out = Vec::new();
    let args = LogsCli::try_parse_from(["logs", "web", "-c", "c"])
        .unwrap()
        .args;
    logs::run(args, &mut scheduler, &mut out).await.unwrap();
    assert_eq!(out, b"line 1\n");
}

#[tokio::test]
async fn logs_of_several_instances_are_prefixed_and_decoded() {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.apps = vec![web(vec![
            inst("web-1", "node-a", "RUNNING", ""),
            inst("web-2", "node-a", "RUNNING", ""),
        ])];
        let chunk = |id: &str, data: &[u8]| LogChunk {
            instance_id: id.into(),
            container: "c".into(),
            data: data.to_vec(),
        };
        s.logs = vec![
            chunk("web-1", b"2026-01-01T00:00:01.000000000Z stdout F one\n"),
            chunk("web-2", b"2026-01-01T00:00:02.000000000Z stderr F two\n"),
        ];
    }
    let url = serve(fake).await;
    let mut scheduler = Scheduler::connect(&url).await.unwrap();

    assert_eq!(
        rik_logs(&mut scheduler, &["logs", "web"]).await,
        "[web-1/c] one\n[web-2/c] two\n"
    );
    // One instance asked for: no prefix (the fake sends both anyway).
    assert_eq!(
        rik_logs(
            &mut scheduler,
            &["logs", "web", "--timestamps", "--instance", "web-1"]
        )
        .await,
        "2026-01-01T00:00:01.000000000Z one\n2026-01-01T00:00:02.000000000Z two\n"
    );
}

/// What `rik ARGV` (a `logs` command) prints.
async fn rik_logs(scheduler: &mut Scheduler, argv: &[&str]) -> String {
    #[derive(Parser)]
    struct LogsCli {
        #[command(flatten)]
        args: logs::Args,
    }
    let args = LogsCli::try_parse_from(argv).unwrap().args;
    let mut out = Vec::new();
    logs::run(args, scheduler, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn unreachable_scheduler() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = Scheduler::connect(&url).await.err().unwrap().to_string();
    assert!(
        err.starts_with(&format!("cannot reach scheduler at {url}: ")),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

#[test]
fn status_errors_read_like_the_scheduler_wrote_them() {
    let url = "http://127.0.0.1:4995";
    let sent = Status::unavailable("app web has no instance placed on a node yet");
    assert_eq!(
        status_error(url, &sent).to_string(),
        "app web has no instance placed on a node yet"
    );
    let lost = Status::from_error(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset",
    )));
    assert_eq!(
        status_error(url, &lost).to_string(),
        "cannot reach scheduler at http://127.0.0.1:4995: connection reset"
    );
    assert_eq!(
        status_error(url, &Status::internal("")).to_string(),
        "scheduler: Internal error"
    );
}

#[tokio::test]
async fn scheduler_gone_after_connecting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RikServer::new(Fake::default()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );
    let mut scheduler = Scheduler::connect(&url).await.unwrap();
    assert!(scheduler.list_apps().await.unwrap().is_empty());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let err = scheduler.list_apps().await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot reach scheduler at {url}: ")),
        "{err}"
    );
}
