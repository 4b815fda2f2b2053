//! `Logs`: an app's logs, read on its nodes. The scheduler opens one
//! `NodeLogs` stream per instance and container of the app, at the
//! `host_address` each riklet reported, and forwards the chunks: merged by
//! record time for a one-off read ([`merge`]), in arrival order for a
//! follow, which ends when the app is deleted.

mod merge;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::rik::v1::node_logs_client::NodeLogsClient;
use proto::rik::v1::{LogChunk, LogsRequest, NodeLogsRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, warn};

use crate::cluster::{Cluster, ClusterError, State};

/// How long to wait for a node's API to accept a connection / answer.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a follow checks that its app still exists.
const DELETED_POLL: Duration = Duration::from_millis(500);

/// A log stream forwarded to the CLI.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

/// Where to fetch one instance's logs.
struct LogSource {
    instance_id: String,
    node: String,
    address: String,
    /// The node API speaks TLS (the node registered with its certificate).
    tls: bool,
}

/// What a `Logs` request reads, as the scheduler knows the app.
struct Plan {
    sources: Vec<LogSource>,
    containers: Vec<String>,
    /// The app's creation revision: an app deleted and created again under
    /// the same name is another app.
    created_revision: u64,
}

/// Opens the logs `request` asks for. Instances or containers without the
/// logs asked for (not started yet, no previous run) are left out; when
/// none has any, the node's NOT_FOUND is returned.
pub async fn open(cluster: &Arc<Cluster>, request: LogsRequest) -> Result<LogStream, Status> {
    let plan = plan(&*cluster.lock().await, &request)?;
    let app = request.app.clone();
    let mut channels: HashMap<&str, Channel> = HashMap::new();
    let mut opening = Vec::new();
    for source in &plan.sources {
        if !channels.contains_key(source.address.as_str()) {
            let tls = cluster.node_api_tls.as_ref().filter(|_| source.tls);
            channels.insert(&source.address, connect(source, tls).await?);
        }
        let channel = channels[source.address.as_str()].clone();
        for container in &plan.containers {
            opening.push(open_one(source, channel.clone(), container, &request));
        }
    }
    let mut streams = Vec::new();
    let mut not_found = None;
    for opened in futures::future::join_all(opening).await {
        match opened {
            Ok(s) => streams.push(s),
            Err(status) if status.code() == Code::NotFound => {
                debug!(app = %app, error = %status.message(), "no logs there");
                if not_found.is_none() {
                    not_found = Some(status);
                }
            }
            Err(status) => {
                warn!(app = %app, error = %status.message(), "cannot fetch logs");
                return Err(status);
            }
        }
    }
    if let Some(status) = not_found.filter(|_| streams.is_empty()) {
        return Err(status);
    }
    let follow = request.follow && !request.previous;
    if !follow {
        return Ok(merge::by_time(streams));
    }
    let gone = app_gone(Arc::clone(cluster), app, plan.created_revision);
    Ok(futures::stream::select_all(streams)
        .take_until(gone)
        .boxed())
}

/// The instances and containers of the request's app.
fn plan(state: &State, request: &LogsRequest) -> Result<Plan, Status> {
    let app = &request.app;
    let data = state.store().data();
    let record = data
        .apps
        .get(app)
        .ok_or_else(|| ClusterError::AppNotFound(app.clone()))?;
    let names = record.manifest.spec.containers.iter().map(|c| &c.name);
    let containers: Vec<String> = if request.container.is_empty() {
        names.cloned().collect()
    } else if names.clone().any(|n| *n == request.container) {
        vec![request.container.clone()]
    } else {
        return Err(Status::not_found(format!(
            "container {} not found in app {app}",
            request.container
        )));
    };
    let wanted = |id: &str| request.instance_id.is_empty() || request.instance_id == id;
    let sources: Vec<LogSource> = data
        .instances_of(app)
        .filter(|(id, _)| wanted(id))
        .filter_map(|(id, i)| {
            let node = i.node.as_ref()?;
            let known = state.nodes().get(node);
            Some(LogSource {
                instance_id: id.clone(),
                node: node.clone(),
                address: known.map(|n| n.host_address.clone()).unwrap_or_default(),
                tls: known.is_some_and(|n| n.api_tls),
            })
        })
        .collect();
    if sources.is_empty() {
        let known = data.instances_of(app).any(|(id, _)| wanted(id));
        return Err(if known {
            Status::unavailable(format!("app {app} has no instance placed on a node yet"))
        } else {
            Status::not_found(format!(
                "instance {} not found in app {app}",
                request.instance_id
            ))
        });
    }
    Ok(Plan {
        sources,
        containers,
        created_revision: record.created_revision,
    })
}

/// Connects to the node API of `source`, over TLS with `tls` (the server
/// must prove the node's name).
async fn connect(source: &LogSource, tls: Option<&rik_tls::ClientTls>) -> Result<Channel, Status> {
    let LogSource {
        instance_id,
        node,
        address,
        tls: _,
    } = source;
    if address.is_empty() {
        return Err(Status::unavailable(format!(
            "node {node} (instance {instance_id}) has not reported its node API address, \
             its logs cannot be fetched"
        )));
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::unavailable(format!(
            "node {node} (instance {instance_id}) is unreachable at {address}: {e}"
        ))
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(NODE_CONNECT_TIMEOUT)
        .http2_keep_alive_interval(proto::limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(proto::limits::KEEPALIVE_TIMEOUT);
    match tls {
        Some(tls) => {
            endpoint
                .connect_with_connector(tls.connector(Some(node.clone())))
                .await
        }
        None => endpoint.connect().await,
    }
    .map_err(|e| unreachable(&e))
}

/// Opens one container's logs of `source`'s instance on its node.
async fn open_one(
    source: &LogSource,
    channel: Channel,
    container: &str,
    request: &LogsRequest,
) -> Result<LogStream, Status> {
    let node_request = NodeLogsRequest {
        instance_id: source.instance_id.clone(),
        tail: request.tail,
        follow: request.follow,
        container: container.to_string(),
        since_ms: request.since_ms,
        previous: request.previous,
    };
    let node = &source.node;
    let response = tokio::time::timeout(
        NODE_CALL_TIMEOUT,
        NodeLogsClient::new(channel)
            .max_decoding_message_size(proto::limits::MAX_MESSAGE)
            .logs(node_request),
    )
    .await
    .map_err(|_| {
        Status::unavailable(format!(
            "node {node} (instance {}) did not answer at {}",
            source.instance_id, source.address
        ))
    })?
    .map_err(|s| Status::new(s.code(), format!("node {node}: {}", s.message())))?;
    let id = source.instance_id.clone();
    Ok(response
        .into_inner()
        .map(move |chunk| {
            chunk.map(|mut c| {
                if c.instance_id.is_empty() {
                    c.instance_id = id.clone();
                }
                c
            })
        })
        .boxed())
}

/// Resolves once the app created at `created_revision` is gone (deleted,
/// its pods stopped): a follow of its logs ends then.
async fn app_gone(cluster: Arc<Cluster>, app: String, created_revision: u64) {
    loop {
        tokio::time::sleep(DELETED_POLL).await;
        let state = cluster.lock().await;
        let apps = &state.store().data().apps;
        if apps
            .get(&app)
            .is_none_or(|r| r.created_revision != created_revision)
        {
            debug!(app = %app, "app deleted, its log follow ends");
            return;
        }
    }
}
