//! Node-local APIs.
//!
//! - A unix socket (mode 0600, root only) answering one request per
//!   connection, `status`, `pods` or `proxy`, with a JSON document: what
//!   `riklet status -o json` and `riklet pods -o json` print (the tables
//!   for people are drawn from it, see [`crate::admin`]).
//! - The `rik.v1.NodeLogs` gRPC service on TCP, through which the scheduler
//!   serves `rik logs` (tail and follow of the CRI log files).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::common::ResourceStatus;
use proto::rik::v1::node_logs_server::{NodeLogs, NodeLogsServer};
use proto::rik::v1::{LogChunk, NodeLogsRequest};
use proto::status::AppStatus;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::admin::{AgentStatus, ContainerdStatus};
use crate::agent::AgentHandle;
use crate::logs;

/// How often a followed log file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A node API that could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("control socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node API")]
    Serve(#[from] tonic::transport::Error),
    #[error("unexpected answer from riklet")]
    Answer(#[from] serde_json::Error),
}

/// Facts `riklet status` shows besides the pods.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node: String,
    pub scheduler: String,
    /// Set while a session with the scheduler is open.
    pub scheduler_connected: Arc<AtomicBool>,
    pub api_address: String,
    pub metrics_address: String,
    pub ebpf: bool,
    /// The eBPF probes' attached programs.
    pub ebpf_programs: Vec<&'static str>,
    pub containerd: crate::runtime::link::ContainerdLink,
    /// The Node Proxy, unless it could not start.
    pub proxy: Option<crate::proxy::ProxyHandle>,
}

/// Binds the control socket, removing a stale one, mode 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves the control socket until the task is dropped.
pub async fn serve_socket(listener: UnixListener, agent: AgentHandle, facts: NodeFacts) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (agent, facts) = (agent.clone(), facts.clone());
        tokio::spawn(async move {
            let _ = answer(stream, agent, facts).await;
        });
    }
}

/// The answer to `status` (`riklet status`).
fn agent_status(facts: &NodeFacts, pods: &[AppStatus]) -> AgentStatus {
    let containerd = match facts.containerd.get() {
        Some(c) => ContainerdStatus {
            connected: true,
            error: None,
            namespace: Some(c.runtime.namespace().to_string()),
            socket: Some(c.runtime.socket().display().to_string()),
        },
        None => ContainerdStatus {
            connected: false,
            error: Some(facts.containerd.why_unavailable()),
            namespace: None,
            socket: None,
        },
    };
    let mut phases = BTreeMap::new();
    for p in pods {
        *phases
            .entry(proto::status::name(p.realtime.state).to_string())
            .or_default() += 1;
    }
    AgentStatus {
        api_address: facts.api_address.clone(),
        containerd,
        ebpf: facts.ebpf,
        ebpf_programs: facts.ebpf_programs.iter().map(|p| p.to_string()).collect(),
        metrics_address: facts.metrics_address.clone(),
        node: facts.node.clone(),
        pods: pods.len(),
        phases,
        proxy: facts
            .proxy
            .as_ref()
            .map_or("off", |p| p.latest().mode.as_str())
            .to_string(),
        running: pods
            .iter()
            .filter(|p| p.realtime.state == ResourceStatus::Running)
            .count(),
        scheduler: facts.scheduler.clone(),
        scheduler_connected: facts.scheduler_connected.load(Ordering::Relaxed),
    }
}

/// The answer to a request the socket does not know.
#[derive(Serialize)]
struct Refusal {
    error: String,
}

async fn answer(stream: UnixStream, agent: AgentHandle, facts: NodeFacts) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let pods = agent.pods().await;
    let body = match line.trim() {
        "pods" => serde_json::Value::Array(pods.iter().map(AppStatus::to_value).collect()),
        "status" => serde_json::to_value(agent_status(&facts, &pods))?,
        "proxy" => match &facts.proxy {
            Some(proxy) => serde_json::to_value(proxy.status().await)?,
            None => serde_json::to_value(Refusal {
                error: "the node proxy is not running (see the riklet's log)".into(),
            })?,
        },
        other => serde_json::to_value(Refusal {
            error: format!("unknown request {other:?}: expected status, pods or proxy"),
        })?,
    };
    write.write_all(format!("{body:#}\n").as_bytes()).await?;
    write.shutdown().await
}

/// Client side of the control socket: sends `request`, returns the JSON.
pub async fn query_socket(path: &Path, request: &str) -> Result<serde_json::Value, ApiError> {
    let err = |source| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(err)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(err)?;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut out)
        .await
        .map_err(err)?;
    Ok(serde_json::from_str(&out)?)
}

/// The NodeLogs service over the log directory.
pub struct LogService {
    log_dir: PathBuf,
}

impl LogService {
    pub fn new(log_dir: PathBuf) -> Self {
        LogService { log_dir }
    }

    /// The pod directory of an instance (`<ns>_<app>_<instance>`).
    fn pod_dir(&self, instance_id: &str) -> Option<PathBuf> {
        let suffix = format!("_{instance_id}");
        std::fs::read_dir(&self.log_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(logs::NAMESPACE) && n.ends_with(&suffix))
            })
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// The log files a request asks for: `(container, path)` of each
/// container's latest run, sorted.
fn requested_files(dir: &Path, req: &NodeLogsRequest) -> Result<Vec<(String, PathBuf)>, Status> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Status::internal(e.to_string()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let current = logs::layout::list(&e.path())
                .ok()?
                .into_iter()
                .rfind(|f| f.rotated.is_none())?;
            Some((e.file_name().to_string_lossy().into_owned(), current.path))
        })
        .filter(|(name, _)| req.container.is_empty() || *name == req.container)
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Status::not_found(format!(
            "no logs for container {:?} of instance {}",
            req.container, req.instance_id
        )));
    }
    Ok(files)
}

/// Sends the last `tail` lines of every file, then, if `follow`, what is
/// appended to them until a file disappears (the pod was deleted) or the
/// client goes away.
async fn stream_logs(
    files: Vec<(String, PathBuf)>,
    instance_id: String,
    tail: usize,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Result<LogChunk, Status>>,
) {
    let chunk = |container: &str, data| LogChunk {
        instance_id: instance_id.clone(),
        container: container.to_string(),
        data,
    };
    let mut offsets = Vec::new();
    for (container, path) in &files {
        let (data, off) = match logs::read_tail(path, tail) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(Status::internal(crate::error_chain(&e)))).await;
                return;
            }
        };
        offsets.push(off);
        if tx.send(Ok(chunk(container, data))).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        for ((container, path), off) in files.iter().zip(offsets.iter_mut()) {
            // The file disappears when the pod is deleted: stop then.
            let Ok((data, next)) = logs::read_from(path, *off) else {
                return;
            };
            *off = next;
            if data.is_empty() {
                continue;
            }
            if tx.send(Ok(chunk(container, data))).await.is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[tonic::async_trait]
impl NodeLogs for LogService {
    type LogsStream = ChunkStream;

    async fn logs(
        &self,
        request: Request<NodeLogsRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        proto::manifest::validate_instance_id(&req.instance_id)
            .map_err(|e| Status::invalid_argument(crate::error_chain(&e)))?;
        if !req.container.is_empty() {
            proto::manifest::validate_name("container", &req.container)
                .map_err(|e| Status::invalid_argument(crate::error_chain(&e)))?;
        }
        let dir = self.pod_dir(&req.instance_id).ok_or_else(|| {
            Status::not_found(format!("no logs for instance {}", req.instance_id))
        })?;
        let files = requested_files(&dir, &req)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(stream_logs(
            files,
            req.instance_id,
            req.tail as usize,
            req.follow,
            tx,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves NodeLogs on `listener` until `shutdown`.
pub async fn serve_logs(
    listener: TcpListener,
    log_dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    tonic::transport::Server::builder()
        .add_service(NodeLogsServer::new(LogService::new(log_dir)))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: see the scheduler's server for why.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
