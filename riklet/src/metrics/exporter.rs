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

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::sample::{Log2Histogram, PodNetSample, PodSample, Snapshot};

/// Content type of the OpenMetrics answer (Prometheus asks for it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format answer (everyone else).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Run-queue latency `le` bounds are `2^k` ns for `k` in this range:
/// 1.024 µs to 2.15 s. Below, buckets are merged into the first bound (the
/// scheduler does not switch faster); from `2^31` ns up only `+Inf` counts,
/// which matches the overflow bucket of the eBPF side
/// (`riklet_common::sched::RUNQ_BUCKETS` = 32). Fixed bounds keep the
/// series of a histogram the same from one scrape to the next.
const RUNQ_LE_LOG2: std::ops::RangeInclusive<u32> = 10..=31;

static SECONDS: Unit = Unit::Seconds;
static BYTES: Unit = Unit::Bytes;

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
        encode_snapshot(&self.0.latest(), &mut encoder)
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
pub fn router(snapshot: SnapshotHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(registry(snapshot)))
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`
/// resolves (open connections are then closed gracefully).
pub async fn serve(
    listener: tokio::net::TcpListener,
    snapshot: SnapshotHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(snapshot))
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
/// Only handles what [`encode_snapshot`] produces: HELP/TYPE/UNIT lines,
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

/// How a family is typed.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: `name` without the unit and `_total` suffixes, which
/// the encoder appends.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<&'static Unit>,
    kind: Kind,
}

const fn counter(name: &'static str, unit: Option<&'static Unit>, help: &'static str) -> Family {
    Family {
        name,
        help,
        unit,
        kind: Kind::Counter,
    }
}

const fn gauge(name: &'static str, unit: Option<&'static Unit>, help: &'static str) -> Family {
    Family {
        name,
        help,
        unit,
        kind: Kind::Gauge,
    }
}

fn pod_labels(pod: &PodSample) -> [(&'static str, &str); 4] {
    [
        ("app", pod.app.as_str()),
        ("instance", pod.instance.as_str()),
        ("container", pod.container.as_str()),
        ("node", pod.node.as_str()),
    ]
}

fn encode_snapshot(snapshot: &Snapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    if snapshot.collected_at == 0 {
        // Never published: export nothing rather than zeros.
        return Ok(());
    }
    let pods = &snapshot.pods;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_cpu",
            Some(&SECONDS),
            "CPU time used by the container (cgroup cpuacct.usage or cpu.stat usage_usec).",
        ),
        pods,
        |p| p.cpu_seconds,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_cpu_throttled",
            Some(&SECONDS),
            "Time the container was throttled by its CPU limit (CFS quota).",
        ),
        pods,
        |p| p.cpu_throttled_seconds,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_cpu_cfs_periods",
            None,
            "CFS enforcement periods elapsed while the container had a CPU limit.",
        ),
        pods,
        |p| p.cpu_periods,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_cpu_cfs_throttled_periods",
            None,
            "CFS periods in which the container was throttled.",
        ),
        pods,
        |p| p.cpu_throttled_periods,
    )?;
    pod_family(
        encoder,
        &gauge(
            "riklet_pod_memory_usage",
            Some(&BYTES),
            "Memory charged to the container, page cache included.",
        ),
        pods,
        |p| p.memory_usage_bytes,
    )?;
    pod_family(
        encoder,
        &gauge(
            "riklet_pod_memory_working_set",
            Some(&BYTES),
            "Memory usage minus inactive file pages (the working set).",
        ),
        pods,
        |p| p.memory_working_set_bytes,
    )?;
    pod_family(
        encoder,
        &gauge(
            "riklet_pod_memory_limit",
            Some(&BYTES),
            "Hard memory limit of the container; absent when unlimited.",
        ),
        pods,
        |p| p.memory_limit_bytes,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_memory_failcnt",
            None,
            "Times the container's memory usage hit its limit.",
        ),
        pods,
        |p| p.memory_failcnt,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_oom_kills",
            None,
            "Processes of the container killed by the OOM killer.",
        ),
        pods,
        |p| p.oom_kills,
    )?;
    pod_family(
        encoder,
        &gauge(
            "riklet_pod_pids",
            None,
            "Processes and threads in the container.",
        ),
        pods,
        |p| p.pids,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_network_receive",
            Some(&BYTES),
            "Bytes received by the container's sockets (eBPF).",
        ),
        pods,
        |p| p.rx_bytes,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_network_transmit",
            Some(&BYTES),
            "Bytes sent by the container's sockets (eBPF).",
        ),
        pods,
        |p| p.tx_bytes,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_network_receive_packets",
            None,
            "Packets received by the container's sockets (eBPF).",
        ),
        pods,
        |p| p.rx_packets,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_network_transmit_packets",
            None,
            "Packets sent by the container's sockets (eBPF).",
        ),
        pods,
        |p| p.tx_packets,
    )?;
    pod_family(
        encoder,
        &counter(
            "riklet_pod_oncpu",
            Some(&SECONDS),
            "Time the container's tasks spent on a CPU, measured by eBPF at context switches.",
        ),
        pods,
        |p| p.oncpu_seconds,
    )?;
    runq_family(encoder, pods)?;
    pod_net_family(
        encoder,
        &counter(
            "riklet_pod_tcp_retransmits",
            None,
            "TCP retransmissions from the pod's address (eBPF tcp_retransmit_skb; one retransmitted skb may hold several segments).",
        ),
        &snapshot.pod_nets,
        |p| p.tcp_retransmits,
    )?;

    let node = &snapshot.node;
    node_family(
        encoder,
        &counter(
            "riklet_node_cpu",
            Some(&SECONDS),
            "CPU time spent busy (neither idle nor iowait) over all CPUs since boot.",
        ),
        &node.node,
        node.cpu_seconds_total,
    )?;
    node_family(
        encoder,
        &gauge(
            "riklet_node_cpus",
            None,
            "Logical CPUs available to the node.",
        ),
        &node.node,
        Some(node.cpus),
    )?;
    node_family(
        encoder,
        &gauge(
            "riklet_node_memory_total",
            Some(&BYTES),
            "Total usable memory (MemTotal).",
        ),
        &node.node,
        node.memory_total_bytes,
    )?;
    node_family(
        encoder,
        &gauge(
            "riklet_node_memory_available",
            Some(&BYTES),
            "Memory available for new work without swapping (MemAvailable).",
        ),
        &node.node,
        node.memory_available_bytes,
    )?;
    node_family(
        encoder,
        &gauge("riklet_node_load1", None, "One-minute load average."),
        &node.node,
        node.load1,
    )?;
    node_family(
        encoder,
        &counter(
            "riklet_node_network_receive",
            Some(&BYTES),
            "Bytes received over the node's uplinks (its NICs).",
        ),
        &node.node,
        node.rx_bytes,
    )?;
    node_family(
        encoder,
        &counter(
            "riklet_node_network_transmit",
            Some(&BYTES),
            "Bytes sent over the node's uplinks (its NICs).",
        ),
        &node.node,
        node.tx_bytes,
    )?;
    node_family(
        encoder,
        &gauge(
            "riklet_snapshot_timestamp",
            Some(&SECONDS),
            "When the exported figures were collected, Unix time.",
        ),
        &node.node,
        Some(snapshot.collected_at as f64 / 1000.0),
    )?;
    let t = &snapshot.timings;
    for (name, help, value) in [
        (
            "riklet_collection_ebpf",
            "Time the last collection cycle spent reading the eBPF maps.",
            t.ebpf_seconds,
        ),
        (
            "riklet_collection_cgroups",
            "Time the last collection cycle spent reading pod cgroup files.",
            t.cgroups_seconds,
        ),
        (
            "riklet_collection_duration",
            "Duration of the last collection cycle.",
            t.total_seconds,
        ),
    ] {
        node_family(
            encoder,
            &gauge(name, Some(&SECONDS), help),
            &node.node,
            Some(value),
        )?;
    }
    Ok(())
}

/// Encodes one family with a series per pod that has the figure; nothing
/// at all if none has it.
fn pod_family<V>(
    encoder: &mut DescriptorEncoder,
    family: &Family,
    pods: &[PodSample],
    value: impl Fn(&PodSample) -> Option<V>,
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
{
    let points: Vec<(&PodSample, V)> = pods
        .iter()
        .filter_map(|pod| value(pod).map(|v| (pod, v)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let mut metric = descriptor(encoder, family)?;
    for (pod, v) in points {
        let labels = pod_labels(pod);
        point(&mut metric.encode_family(&labels)?, family.kind, &v)?;
    }
    Ok(())
}

/// Encodes one family with a series per pod (labels without `container`).
fn pod_net_family(
    encoder: &mut DescriptorEncoder,
    family: &Family,
    pods: &[PodNetSample],
    value: fn(&PodNetSample) -> u64,
) -> fmt::Result {
    if pods.is_empty() {
        return Ok(());
    }
    let mut metric = descriptor(encoder, family)?;
    for pod in pods {
        let labels = [
            ("app", pod.app.as_str()),
            ("instance", pod.instance.as_str()),
            ("node", pod.node.as_str()),
        ];
        point(
            &mut metric.encode_family(&labels)?,
            family.kind,
            &value(pod),
        )?;
    }
    Ok(())
}

fn node_family<V>(
    encoder: &mut DescriptorEncoder,
    family: &Family,
    node: &str,
    value: Option<V>,
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
{
    let Some(v) = value else {
        return Ok(());
    };
    let mut metric = descriptor(encoder, family)?;
    let labels = [("node", node)];
    point(&mut metric.encode_family(&labels)?, family.kind, &v)
}

fn descriptor<'e>(
    encoder: &'e mut DescriptorEncoder,
    family: &'e Family,
) -> Result<MetricEncoder<'e>, fmt::Error> {
    let metric_type = match family.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    encoder.encode_descriptor(family.name, family.help, family.unit, metric_type)
}

fn point<V>(metric: &mut MetricEncoder, kind: Kind, v: &V) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
{
    match kind {
        Kind::Counter => metric.encode_counter::<NoLabelSet, V, f64>(v, None),
        Kind::Gauge => metric.encode_gauge(v),
    }
}

fn runq_family(encoder: &mut DescriptorEncoder, pods: &[PodSample]) -> fmt::Result {
    let points: Vec<(&PodSample, &Log2Histogram)> = pods
        .iter()
        .filter_map(|pod| pod.runq_latency.as_ref().map(|h| (pod, h)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "riklet_pod_runqueue_latency",
        "Time the container's tasks waited in a run queue before getting a CPU (eBPF).",
        Some(&SECONDS),
        MetricType::Histogram,
    )?;
    for (pod, histogram) in points {
        let labels = pod_labels(pod);
        let (sum, count, buckets) = seconds_buckets(histogram);
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// A log2 ns histogram as `(sum in s, count, [(le in s, count in that
/// bucket alone)])` with the fixed bounds of [`RUNQ_LE_LOG2`] and a final
/// `+Inf`; the encoder makes the counts cumulative.
///
/// `le = 2^k` ns counts the observations below `2^k` ns (buckets `0..k`):
/// one exactly equal to `2^k` ns lands in the next bound, a 1 ns
/// imprecision at the bucket edges.
fn seconds_buckets(histogram: &Log2Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let mut buckets = Vec::with_capacity(RUNQ_LE_LOG2.count() + 1);
    let mut below = 0;
    for k in RUNQ_LE_LOG2 {
        let cumulative = histogram.count_below_pow2(k);
        buckets.push(((1u64 << k) as f64 / 1e9, cumulative - below));
        below = cumulative;
    }
    let total = histogram.total();
    buckets.push((f64::INFINITY, total - below));
    (histogram.sum_ns as f64 / 1e9, total, buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample::{CollectionTimings, NodeSample};

    fn snapshot() -> Snapshot {
        let mut runq = Log2Histogram::default();
        for ns in [100, 5_000, 5_000, 3_000_000, 5_000_000_000] {
            runq.observe(ns);
        }
        let pod = |instance: &str| PodSample {
            cpu_seconds: Some(1.25),
            memory_usage_bytes: Some(4096),
            memory_limit_bytes: None,
            rx_bytes: Some(10),
            runq_latency: Some(runq.clone()),
            ..PodSample::new("web", instance, "main", "node-a")
        };
        Snapshot {
            node: NodeSample {
                node: "node-a".into(),
                cpus: 4,
                cpu_seconds_total: Some(100.5),
                load1: Some(0.5),
                ..NodeSample::default()
            },
            pods: vec![pod("web-1"), pod("web-2")],
            pod_nets: vec![PodNetSample {
                app: "web".into(),
                instance: "web-1".into(),
                node: "node-a".into(),
                tcp_retransmits: 7,
            }],
            collected_at: 1_700_000_000_000,
            timings: Default::default(),
        }
    }

    /// A snapshot with every family present: a container with every
    /// figure, one with none but its labels, a pod address, a node with
    /// every figure and a timed cycle.
    fn full_snapshot() -> Snapshot {
        let mut runq = Log2Histogram::default();
        for ns in [0, 700, 2_048, 40_000, 40_000, 9_000_000, 3_000_000_000] {
            runq.observe(ns);
        }
        let full = PodSample {
            cpu_seconds: Some(12.5),
            cpu_throttled_seconds: Some(0.25),
            cpu_periods: Some(300),
            cpu_throttled_periods: Some(4),
            memory_usage_bytes: Some(52_428_800),
            memory_working_set_bytes: Some(41_943_040),
            memory_limit_bytes: Some(134_217_728),
            memory_failcnt: Some(2),
            oom_kills: Some(1),
            pids: Some(9),
            rx_bytes: Some(1_500),
            tx_bytes: Some(900),
            rx_packets: Some(15),
            tx_packets: Some(11),
            oncpu_seconds: Some(11.75),
            runq_latency: Some(runq),
            ..PodSample::new("web", "web-1", "main", "node-a")
        };
        let bare = PodSample::new("db", "db-1", "postgres", "node-a");
        let pod_net = |app: &str, instance: &str, tcp_retransmits| PodNetSample {
            app: app.into(),
            instance: instance.into(),
            node: "node-a".into(),
            tcp_retransmits,
        };
        Snapshot {
            node: NodeSample {
                node: "node-a".into(),
                cpu_seconds_total: Some(3_600.5),
                cpus: 2,
                memory_total_bytes: Some(25_769_803_776),
                memory_available_bytes: Some(20_000_000_000),
                load1: Some(0.75),
                rx_bytes: Some(123_456),
                tx_bytes: Some(654_321),
            },
            pods: vec![full, bare],
            pod_nets: vec![pod_net("web", "web-1", 3), pod_net("db", "db-1", 0)],
            collected_at: 1_700_000_000_123,
            timings: CollectionTimings {
                ebpf_seconds: 0.001,
                cgroups_seconds: 0.0025,
                total_seconds: 0.125,
            },
        }
    }

    /// Today's output for [`full_snapshot`], in both formats, fixed so
    /// that a change to the encoding shows as a diff of these files.
    #[test]
    fn full_snapshot_encodes_as_recorded() {
        let handle = SnapshotHandle::new();
        handle.publish(full_snapshot());
        let registry = registry(handle);
        assert_eq!(
            encode_openmetrics(&registry).unwrap(),
            include_str!("exporter/testdata/full_snapshot.openmetrics")
        );
        assert_eq!(
            encode_text(&registry).unwrap(),
            include_str!("exporter/testdata/full_snapshot.txt")
        );
    }

    #[test]
    fn openmetrics_encoding() {
        let handle = SnapshotHandle::new();
        let registry = registry(handle.clone());
        assert_eq!(encode_openmetrics(&registry).unwrap(), "# EOF\n");
        handle.publish(snapshot());
        let om = encode_openmetrics(&registry).unwrap();
        assert!(
            om.contains("# TYPE riklet_pod_cpu_seconds counter\n"),
            "{om}"
        );
        assert!(
            om.contains("# UNIT riklet_pod_cpu_seconds seconds\n"),
            "{om}"
        );
        assert!(
            om.contains(
                "riklet_pod_cpu_seconds_total{app=\"web\",instance=\"web-1\",container=\"main\",node=\"node-a\"} 1.25\n"
            ),
            "{om}"
        );
        assert!(om.contains("riklet_pod_memory_usage_bytes{app=\"web\",instance=\"web-2\",container=\"main\",node=\"node-a\"} 4096\n"), "{om}");
        assert!(
            !om.contains("riklet_pod_memory_limit_bytes"),
            "unlimited must be absent: {om}"
        );
        assert!(
            !om.contains("riklet_pod_pids"),
            "unknown must be absent: {om}"
        );
        assert!(
            om.contains(
                "riklet_pod_tcp_retransmits_total{app=\"web\",instance=\"web-1\",node=\"node-a\"} 7\n"
            ),
            "{om}"
        );
        assert!(om.contains("riklet_node_cpus{node=\"node-a\"} 4\n"), "{om}");
        assert!(
            om.contains("riklet_node_load1{node=\"node-a\"} 0.5\n"),
            "{om}"
        );
        assert!(!om.contains("riklet_node_memory_total_bytes"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn runq_histogram_le_buckets_are_cumulative_seconds() {
        let h = snapshot().pods[0].runq_latency.clone().unwrap();
        let (sum, count, buckets) = seconds_buckets(&h);
        assert_eq!(count, 5);
        assert!((sum - 5.0030101).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.len(), 23);
        // 100 ns and both 5 µs under 8.192 µs; 3 ms under 4.19 ms; 5 s only in +Inf.
        assert_eq!(buckets[0], (1.024e-6, 1));
        assert_eq!(buckets[3], (8.192e-6, 2));
        assert_eq!(buckets[12], (4.194304e-3, 1));
        assert_eq!(buckets[21].0, 2.147483648);
        assert_eq!(buckets[22], (f64::INFINITY, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 5);

        let om = encode_openmetrics(&registry({
            let h = SnapshotHandle::new();
            h.publish(snapshot());
            h
        }))
        .unwrap();
        let labels = "app=\"web\",instance=\"web-1\",container=\"main\",node=\"node-a\"";
        assert!(
            om.contains(&format!(
                "riklet_pod_runqueue_latency_seconds_count{{{labels}}} 5\n"
            )),
            "{om}"
        );
        assert!(
            om.contains(&format!(
                "riklet_pod_runqueue_latency_seconds_bucket{{le=\"+Inf\",{labels}}} 5\n"
            )),
            "{om}"
        );
    }

    #[test]
    fn text_format_names_counter_families_after_their_samples() {
        let handle = SnapshotHandle::new();
        handle.publish(snapshot());
        let text = encode_text(&registry(handle)).unwrap();
        assert!(
            text.contains("# HELP riklet_pod_cpu_seconds_total CPU time"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE riklet_pod_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE riklet_pod_memory_usage_bytes gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE riklet_pod_runqueue_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# UNIT"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

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
