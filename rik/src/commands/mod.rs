//! One module per verb. Each takes its parsed arguments, a connected
//! [`Scheduler`] and the writer that stands for stdout.

pub mod app_watch;
pub mod apply;
pub mod completion;
pub mod delete;
pub mod describe;
pub mod get;
pub mod logs;
pub mod top;

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use proto::rik::v1::rik_client::RikClient;
use proto::rik::v1::{
    App, ApplyRequest, ApplyResponse, DeleteAppRequest, DeleteAppResponse, GetAppRequest,
    ListAppsRequest, ListNodesRequest, LogChunk, LogsRequest, Node, WatchEvent, WatchRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::client_config::Target;

/// How long to wait for the TCP connection to the scheduler.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a unary call (not of a log stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings on an idle connection notice a scheduler that vanished
/// under a long watch or log stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer accepted: an app of 1,000 replicas, each with its
/// riklet's full status JSON, passes tonic's default of 4 MiB.
const MAX_MESSAGE: usize = 64 << 20;

/// A connection to the scheduler's `rik.v1.Rik` API whose calls fail with
/// a one-line, user-facing error.
pub struct Scheduler {
    client: RikClient<Channel>,
    url: String,
}

impl Scheduler {
    /// Connects to `url` in plaintext (tests).
    #[cfg(test)]
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_to(&Target::plain(url)).await
    }

    /// Connects to `target` (`http://` is assumed when its URL has no
    /// scheme), over TLS with its certificates if it has any.
    pub async fn connect_to(target: &Target) -> anyhow::Result<Self> {
        let url = &target.url;
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow!("invalid scheduler URL {url:?}: {}", root_cause(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = match &target.tls {
            Some(tls) => tls.connect(endpoint).await,
            None if url.starts_with("https://") => bail!(
                "{url} needs TLS certificates: save the output of `rik-scheduler admin-cert` \
                 as ~/.config/rik/config or point $RIK_CONFIG at it"
            ),
            None => endpoint.connect().await,
        }
        .map_err(|e| anyhow!("cannot reach scheduler at {url}: {}", root_cause(&e)))?;
        Ok(Self {
            client: RikClient::new(channel).max_decoding_message_size(MAX_MESSAGE),
            url,
        })
    }

    /// `Apply`: create or update an app from manifest text.
    pub async fn apply(&mut self, manifest: String) -> anyhow::Result<ApplyResponse> {
        call(&self.url, self.client.apply(ApplyRequest { manifest })).await
    }

    /// `ListApps`.
    pub async fn list_apps(&mut self) -> anyhow::Result<Vec<App>> {
        let r = call(&self.url, self.client.list_apps(ListAppsRequest {})).await?;
        Ok(r.apps)
    }

    /// `GetApp`.
    pub async fn get_app(&mut self, name: &str) -> anyhow::Result<App> {
        let request = GetAppRequest { name: name.into() };
        call(&self.url, self.client.get_app(request)).await
    }

    /// `DeleteApp`.
    pub async fn delete_app(&mut self, name: &str) -> anyhow::Result<DeleteAppResponse> {
        let request = DeleteAppRequest { name: name.into() };
        call(&self.url, self.client.delete_app(request)).await
    }

    /// `ListNodes`.
    pub async fn list_nodes(&mut self) -> anyhow::Result<Vec<Node>> {
        let r = call(&self.url, self.client.list_nodes(ListNodesRequest {})).await?;
        Ok(r.nodes)
    }

    /// `Watch`: the stream of changes of app `name` (every app if `None`)
    /// after revision `since` (no deadline: it runs until stopped). The
    /// status is returned as is: [`app_watch`] decides what to do with it.
    pub async fn watch(
        &mut self,
        name: Option<&str>,
        since: u64,
    ) -> Result<Streaming<WatchEvent>, Status> {
        let request = WatchRequest {
            name: name.unwrap_or_default().to_string(),
            since_revision: since,
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.client.watch(request)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "scheduler at {} did not answer within {}s",
                self.url,
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The scheduler's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `Logs`: the stream of log chunks (no deadline: `-f` runs forever).
    pub async fn logs(&mut self, request: LogsRequest) -> anyhow::Result<LogStream<'_>> {
        let stream = call(&self.url, self.client.logs(request)).await?;
        Ok(LogStream {
            stream,
            url: &self.url,
        })
    }
}

/// Awaits a call with a client-side deadline of [`CALL_TIMEOUT`].
async fn call<T>(
    url: &str,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_error(url, &status)),
        Err(_) => Err(anyhow!(
            "scheduler at {url} did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// The user-facing error of a failed call: the status message, which the
/// scheduler writes for humans, unless the call never reached it.
fn status_error(url: &str, status: &Status) -> anyhow::Error {
    use std::error::Error as _;

    let message = status.message().trim();
    // A status that tonic made from a transport error carries it as its
    // source; one sent by the scheduler (even UNAVAILABLE, e.g. "node …
    // is unreachable") does not.
    if let Some(source) = status.source() {
        return anyhow!("cannot reach scheduler at {url}: {}", root_cause(source));
    }
    if message.is_empty() {
        return anyhow!("scheduler: {}", status.code().description());
    }
    anyhow!("{message}")
}

/// A `Logs` stream whose errors read like the other calls'.
pub struct LogStream<'a> {
    stream: Streaming<LogChunk>,
    url: &'a str,
}

impl LogStream<'_> {
    /// The next chunk, `None` at the end of the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<LogChunk>> {
        self.stream
            .message()
            .await
            .map_err(|s| status_error(self.url, &s))
    }
}

/// The innermost error of a chain, the one that says what happened
/// ("Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// Reads the manifest file `path` (`-` = stdin), at most
/// [`proto::manifest::MAX_MANIFEST_BYTES`]: a bigger file is refused before
/// it is read.
pub fn read_manifest(path: &str) -> anyhow::Result<String> {
    use std::io::Read;

    let limit = proto::manifest::MAX_MANIFEST_BYTES;
    let too_big = || anyhow!("{path}: manifest is larger than the {limit} bytes allowed");
    let mut bytes = Vec::new();
    let reader: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {path}"))?;
        if meta.is_dir() {
            return Err(anyhow!("{path} is a directory, not a manifest file"));
        }
        if meta.len() > limit as u64 {
            return Err(too_big());
        }
        Box::new(file)
    };
    // The size in the metadata may lie (pipes, /proc, a growing file).
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {path}"))?;
    if bytes.len() > limit {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{path}: manifest is not valid UTF-8"))
}

#[cfg(test)]
mod tests;
