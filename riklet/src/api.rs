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
use tracing::{debug, warn};

use crate::admin::{AgentStatus, ContainerdStatus};
use crate::agent::AgentHandle;
use crate::logs::{self, LogError};

/// How often a followed log is checked for new records: well under the
/// 100 ms within which `rik logs -f` shows a new line.
const FOLLOW_POLL: Duration = Duration::from_millis(25);
/// Largest `data` of a `LogChunk` (whole records): far under the 4 MiB
/// message limit of gRPC clients.
const CHUNK_BYTES: usize = 256 * 1024;

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

/// One container's logs a request reads: its directory and run.
struct ContainerLogs {
    name: String,
    dir: PathBuf,
    run: u32,
}

/// The containers a request asks for, sorted by name, each with the run
/// to read. A container without logs (or without a previous run) is left
/// out; NOT_FOUND when none is left.
fn requested_containers(
    pod_dir: &Path,
    req: &NodeLogsRequest,
) -> Result<Vec<ContainerLogs>, Status> {
    let mut names: Vec<String> = std::fs::read_dir(pod_dir)
        .map_err(|e| Status::internal(format!("{}: {e}", pod_dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| req.container.is_empty() || *name == req.container)
        .collect();
    names.sort();
    let mut containers = Vec::new();
    for name in names {
        let dir = pod_dir.join(&name);
        match logs::pick_run(&dir, req.previous) {
            Ok(run) => containers.push(ContainerLogs { name, dir, run }),
            Err(LogError::NoLogs { .. } | LogError::NoPrevious { .. }) => {}
            Err(e) => return Err(Status::internal(crate::error_chain(&e))),
        }
    }
    if containers.is_empty() {
        let what = if req.previous {
            "no previous run (no restart yet)"
        } else {
            "no logs"
        };
        let which = if req.container.is_empty() {
            "any container".to_string()
        } else {
            format!("container {:?}", req.container)
        };
        return Err(Status::not_found(format!(
            "{what} for {which} of instance {}",
            req.instance_id
        )));
    }
    Ok(containers)
}

/// What a request selects in each container's logs.
fn selection(req: &NodeLogsRequest) -> logs::Selection {
    let since = (req.since_ms > 0).then(|| {
        let ms = i64::try_from(req.since_ms).unwrap_or(i64::MAX);
        let ago = chrono::TimeDelta::try_milliseconds(ms).unwrap_or(chrono::TimeDelta::MAX);
        chrono::Utc::now()
            .checked_sub_signed(ago)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    });
    logs::Selection {
        tail: req.tail.map(|t| t as usize),
        since,
        previous: req.previous,
    }
}

/// Sends `data` as chunks of whole records of at most [`CHUNK_BYTES`]
/// (unless one record is longer). False when the client is gone.
fn send_records(tx: &ChunkSender, instance_id: &str, container: &str, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let cut = if data.len() <= CHUNK_BYTES {
            data.len()
        } else {
            match data[..CHUNK_BYTES].iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                // One record longer than a chunk goes whole.
                None => data
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(data.len(), |i| i + 1),
            }
        };
        let chunk = LogChunk {
            instance_id: instance_id.to_string(),
            container: container.to_string(),
            data: data[..cut].to_vec(),
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return false;
        }
        data = &data[cut..];
    }
    true
}

type ChunkSender = tokio::sync::mpsc::Sender<Result<LogChunk, Status>>;

/// Sends what `selection` asks of each container's logs, then, if
/// `follow`, the records written next, until every container's log
/// directory is removed (the pod's logs are gone) or the client goes away.
/// Runs on a blocking thread: files are read with `std::fs`.
fn stream_logs(
    containers: Vec<ContainerLogs>,
    instance_id: &str,
    selection: &logs::Selection,
    follow: bool,
    tx: &ChunkSender,
) -> logs::Result<()> {
    let mut followers = Vec::new();
    for c in containers {
        let run = logs::Run::open(&c.dir, c.run, None)?;
        let offset = logs::read_run(&run, selection, &mut |d| {
            send_records(tx, instance_id, &c.name, d)
        })?;
        if tx.is_closed() {
            return Ok(());
        }
        if follow {
            followers.push((c.name, logs::Follower::after(&c.dir, run, offset)));
        }
    }
    while !followers.is_empty() && !tx.is_closed() {
        std::thread::sleep(FOLLOW_POLL);
        let mut i = 0;
        while i < followers.len() {
            let (name, follower) = &mut followers[i];
            let progress = follower.poll(&mut |d| send_records(tx, instance_id, name, d))?;
            if progress == logs::Progress::Gone {
                debug!(instance = %instance_id, container = %name, "log directory removed, follow ends");
                followers.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    Ok(())
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
        let containers = requested_containers(&dir, &req)?;
        let selection = selection(&req);
        // `--previous` reads a run that no longer grows.
        let follow = req.follow && !req.previous;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let id = req.instance_id;
            if let Err(e) = stream_logs(containers, &id, &selection, follow, &tx) {
                warn!(instance = %id, error = %crate::error_chain(&e), "cannot read logs");
                let _ = tx.blocking_send(Err(Status::internal(crate::error_chain(&e))));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// How the node API is served.
#[derive(Debug, Clone)]
pub struct NodeApiTls {
    /// The node certificate (a joined node): TLS for the scheduler's
    /// certificate only, next to plaintext.
    pub server: Option<rik_tls::ServerTls>,
    /// Plaintext for remote peers too, not only loopback ones.
    pub insecure: bool,
}

/// Serves NodeLogs on `listener` until `shutdown`.
pub async fn serve_logs(
    listener: TcpListener,
    log_dir: PathBuf,
    tls: NodeApiTls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let plaintext = if tls.insecure {
        rik_tls::server::Plaintext::Anyone
    } else {
        rik_tls::server::Plaintext::Loopback
    };
    let service = NodeLogsServer::new(LogService::new(log_dir))
        .max_decoding_message_size(proto::limits::MAX_MESSAGE)
        .max_encoding_message_size(proto::limits::MAX_MESSAGE);
    // Keep-alive, per-connection limits, message sizes: `proto::limits`.
    proto::limits::server()
        .add_service(tonic::service::interceptor::InterceptedService::new(
            service,
            crate::tls::require_scheduler,
        ))
        .serve_with_incoming_shutdown(
            // Sets TCP_NODELAY: see the scheduler's server for why.
            rik_tls::server::incoming(listener, tls.server, plaintext),
            shutdown,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_sent_whole_in_bounded_chunks() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut data = Vec::new();
        for (byte, len) in [
            (b'a', 100 << 10),
            (b'b', 200 << 10),
            (b'c', 300 << 10),
            (b'd', 10),
        ] {
            data.extend(std::iter::repeat_n(byte, len));
            data.push(b'\n');
        }
        assert!(send_records(&tx, "web-1", "c", &data));
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while let Ok(Ok(chunk)) = rx.try_recv() {
            assert_eq!(
                (chunk.instance_id.as_str(), chunk.container.as_str()),
                ("web-1", "c")
            );
            assert!(chunk.data.ends_with(b"\n"), "a record was cut");
            sizes.push(chunk.data.len());
            got.extend(chunk.data);
        }
        assert_eq!(got, data);
        // a; b (a and b pass the limit); c alone, longer than a chunk; d.
        assert_eq!(
            sizes,
            [(100 << 10) + 1, (200 << 10) + 1, (300 << 10) + 1, 11]
        );
    }
}
