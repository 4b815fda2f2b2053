//! The Prometheus endpoint: `GET /metrics` and `GET /healthz`.
//!
//! The agent publishes a [`Snapshot`] per collection cycle into a
//! [`SnapshotHandle`]; a `prometheus-client` [`Collector`] encodes the
//! latest one at scrape time. Nothing is registered per pod, so the series
//! of a deleted pod vanish from the very next scrape after the first
//! snapshot without it (and Prometheus marks them stale at once).
//!
//! Formats, chosen from the `Accept` header like the Go client does:
//! - OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`), what
//!   Prometheus asks for and what `prometheus-client` encodes;
//! - the Prometheus text format 0.0.4 otherwise (curl, `promtool check
//!   metrics`, older scrapers). It is the same text with the counter
//!   families named after their `_total` samples and without the `# UNIT`
//!   and `# EOF` lines: a text-format parser would otherwise see
//!   `x_total` samples under no `# TYPE`.
//!
//! Series (labels `app`, `instance`, `container`, `node` on pods' containers,
//! `app`, `instance`, `node` on pods as a whole, `node` on the node; a
//! figure that could not be read is left out, never reported as 0):
//!
//! | name | type |
//! |---|---|
//! | `riklet_pod_cpu_seconds_total` | counter |
//! | `riklet_pod_cpu_throttled_seconds_total` | counter |
//! | `riklet_pod_cpu_cfs_periods_total` | counter |
//! | `riklet_pod_cpu_cfs_throttled_periods_total` | counter |
//! | `riklet_pod_memory_usage_bytes` | gauge |
//! | `riklet_pod_memory_working_set_bytes` | gauge |
//! | `riklet_pod_memory_limit_bytes` | gauge (absent: unlimited) |
//! | `riklet_pod_memory_failcnt_total` | counter |
//! | `riklet_pod_oom_kills_total` | counter |
//! | `riklet_pod_pids` | gauge |
//! | `riklet_pod_network_{receive,transmit}_{bytes,packets}_total` | counter |
//! | `riklet_pod_oncpu_seconds_total` | counter |
//! | `riklet_pod_runqueue_latency_seconds` | histogram |
//! | `riklet_pod_tcp_retransmits_total` | counter (pod, no `container`) |
//! | `riklet_node_cpu_seconds_total` | counter |
//! | `riklet_node_cpus` | gauge |
//! | `riklet_node_memory_{total,available}_bytes` | gauge |
//! | `riklet_node_load1` | gauge |
//! | `riklet_node_network_{receive,transmit}_bytes_total` | counter |
//! | `riklet_snapshot_timestamp_seconds` | gauge |
//! | `riklet_collection_{ebpf,cgroups,duration}_seconds` | gauge |
//!
//! This file serves and negotiates the format; `encode` holds the table of
//! families (name, help, type, how each reads the snapshot) that the
//! [`Collector`] walks at each scrape.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::sample::Snapshot;

mod encode;

/// Content type of the OpenMetrics answer (Prometheus asks for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format answer (everyone else).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the agent publishes each cycle's [`Snapshot`] and the exporter
/// reads the latest one. Cheap to clone; publishing swaps a pointer.
#[derive(Debug, Clone, Default)]
pub struct SnapshotHandle(Arc<RwLock<Arc<Snapshot>>>);

impl SnapshotHandle {
    /// An empty handle: nothing is exported until the first publish.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the snapshot scrapes see from now on.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }

    /// The latest published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Encodes the latest snapshot at each scrape.
#[derive(Debug)]
struct SnapshotCollector(SnapshotHandle);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode::encode_snapshot(&self.0.latest(), &mut encoder)
    }
}

/// A registry that exports `snapshot`, for callers that want to encode it
/// themselves or add their own metrics next to it.
pub fn registry(snapshot: SnapshotHandle) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    registry
}

/// The registry in OpenMetrics text (ends with `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> Result<String, fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// The registry in the Prometheus text format 0.0.4.
pub fn encode_text(registry: &Registry) -> Result<String, fmt::Error> {
    Ok(openmetrics_to_text(&encode_openmetrics(registry)?))
}

/// The endpoint's routes, for embedding in another server.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(registry))
}

/// Serves `registry` (see [`registry`]) as `/metrics`, and `/healthz`, on
/// `listener` until `shutdown` resolves (open connections are then closed
/// gracefully).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_openmetrics);
    let (body, content_type) = if openmetrics {
        (encode_openmetrics(&registry), OPENMETRICS_CONTENT_TYPE)
    } else {
        (encode_text(&registry), TEXT_CONTENT_TYPE)
    };
    match body {
        Ok(body) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
        Err(fmt::Error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

/// Whether an `Accept` header value lists OpenMetrics with a non-zero
/// quality.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut params = range.split(';').map(str::trim);
        params
            .next()
            .is_some_and(|media| media.eq_ignore_ascii_case("application/openmetrics-text"))
            && !params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// Rewrites `prometheus-client`'s OpenMetrics text as text format 0.0.4.
/// Only handles what [`encode::encode_snapshot`] produces: HELP/TYPE/UNIT lines,
/// samples, `# EOF`; HELP always directly precedes its TYPE.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let suffix = if kind == "counter" { "_total" } else { "" };
            let kind = if kind == "unknown" { "untyped" } else { kind };
            if let Some(text) = help.take().and_then(|h| h.strip_prefix(name)) {
                let _ = writeln!(out, "# HELP {name}{suffix}{text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(accepts_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(accepts_openmetrics("application/openmetrics-text"));
        assert!(!accepts_openmetrics("application/openmetrics-text; q=0"));
        assert!(!accepts_openmetrics("text/plain"));
        assert!(!accepts_openmetrics("*/*"));
    }
}
