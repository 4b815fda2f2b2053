//! The Prometheus endpoint: `GET /metrics` and `GET /healthz`.
//!
//! The collector publishes a [`Snapshot`] per collection cycle into a
//! [`SnapshotHandle`]; each scrape writes the latest one out (`text`, in
//! the bytes `prometheus-client` would encode, at a fraction of the cost),
//! followed by the `prometheus-client` collectors registered next to it
//! (the Node Proxy's). Nothing is registered per pod, so the series of a
//! deleted pod vanish from the very next scrape after the first snapshot
//! without it (and Prometheus marks them stale at once).
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
//! families (name, help, type, how each reads the snapshot) that each
//! scrape walks, and `text` writes their lines.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::registry::Registry;

use super::sample::Snapshot;
use text::Format;

mod encode;
mod text;

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

/// What `/metrics` serves: the latest snapshot's families, then those of
/// the collectors registered next to them.
#[derive(Debug)]
pub struct MetricsRegistry {
    snapshots: SnapshotHandle,
    others: Registry,
    /// The length of the last body, to size the next one at once.
    last_len: AtomicUsize,
}

impl MetricsRegistry {
    /// Adds a collector whose families follow the snapshot's.
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.others.register_collector(collector);
    }

    /// The registry of the families that follow the snapshot's, for
    /// metrics kept by other components (the embedded scheduler's).
    pub fn others_mut(&mut self) -> &mut Registry {
        &mut self.others
    }

    /// The body in `format`.
    fn encode(&self, format: Format) -> Result<String, fmt::Error> {
        let mut body = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
        encode::encode_snapshot(&self.snapshots.latest(), format, &mut body);
        match format {
            Format::OpenMetrics => {
                encode_registry(&mut body, &self.others)?;
                encode_eof(&mut body)?;
            }
            Format::Text => {
                let mut others = String::new();
                encode_registry(&mut others, &self.others)?;
                body.push_str(&openmetrics_to_text(&others));
            }
        }
        self.last_len.store(body.len(), Ordering::Relaxed);
        Ok(body)
    }
}

/// A registry that exports `snapshot`, for callers that want to encode it
/// themselves or add their own collectors next to it.
pub fn registry(snapshot: SnapshotHandle) -> MetricsRegistry {
    MetricsRegistry {
        snapshots: snapshot,
        others: Registry::default(),
        last_len: AtomicUsize::new(0),
    }
}

/// The registry in OpenMetrics text (ends with `# EOF`).
pub fn encode_openmetrics(registry: &MetricsRegistry) -> Result<String, fmt::Error> {
    registry.encode(Format::OpenMetrics)
}

/// The registry in the Prometheus text format 0.0.4.
pub fn encode_text(registry: &MetricsRegistry) -> Result<String, fmt::Error> {
    registry.encode(Format::Text)
}

/// The endpoint's routes, for embedding in another server.
pub fn router(registry: MetricsRegistry) -> Router {
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
    registry: MetricsRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(registry): State<Arc<MetricsRegistry>>, headers: HeaderMap) -> Response {
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
/// Only handles what its collectors produce: HELP/TYPE/UNIT lines,
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

    /// A collector of one counter family with a unit, like the proxy's.
    #[derive(Debug)]
    struct Other;

    impl Collector for Other {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> fmt::Result {
            use prometheus_client::encoding::EncodeMetric as _;
            let counter = prometheus_client::metrics::counter::ConstCounter::new(3u64);
            let metric = encoder.encode_descriptor(
                "other_bytes",
                "Other bytes.",
                Some(&prometheus_client::registry::Unit::Bytes),
                counter.metric_type(),
            )?;
            counter.encode(metric)
        }
    }

    #[test]
    fn other_collectors_follow_the_snapshot_in_both_formats() {
        let snapshots = SnapshotHandle::new();
        let mut registry = registry(snapshots.clone());
        registry.register_collector(Box::new(Other));
        let other_om = "# HELP other_bytes_bytes Other bytes.\n# TYPE other_bytes_bytes counter\n# UNIT other_bytes_bytes bytes\nother_bytes_bytes_total 3\n";
        let other_text = "# HELP other_bytes_bytes_total Other bytes.\n# TYPE other_bytes_bytes_total counter\nother_bytes_bytes_total 3\n";
        // Nothing published yet: the other collector alone.
        assert_eq!(
            encode_openmetrics(&registry).unwrap(),
            format!("{other_om}# EOF\n")
        );
        assert_eq!(encode_text(&registry).unwrap(), other_text);

        snapshots.publish(Snapshot {
            collected_at: 1_700_000_000_000,
            ..Snapshot::default()
        });
        let mut snapshot_om = String::new();
        encode::encode_snapshot(&snapshots.latest(), Format::OpenMetrics, &mut snapshot_om);
        let mut snapshot_text = String::new();
        encode::encode_snapshot(&snapshots.latest(), Format::Text, &mut snapshot_text);
        assert!(
            snapshot_om.contains("riklet_snapshot_timestamp_seconds{node=\"\"} 1700000000.0\n")
        );
        assert_eq!(
            encode_openmetrics(&registry).unwrap(),
            format!("{snapshot_om}{other_om}# EOF\n")
        );
        assert_eq!(
            encode_text(&registry).unwrap(),
            format!("{snapshot_text}{other_text}")
        );
        assert_eq!(openmetrics_to_text(&snapshot_om), snapshot_text);
    }
}
