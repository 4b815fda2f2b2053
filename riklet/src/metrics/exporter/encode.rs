//! What the exporter publishes: [`FAMILIES`], one row per metric family
//! (name, help, unit, type, how to read its figures from a [`Snapshot`]),
//! written in table order by [`encode_snapshot`] (through [`super::text`]).
//!
//! A family with no figure in the snapshot (no container has it, the node
//! could not read it) is left out whole, descriptor included: a figure that
//! could not be read is never reported as 0.

use super::text::{self, Format, Kind, LabelSets, Value};
use crate::metrics::sample::{Log2Histogram, PodNetSample, PodSample, Snapshot};

/// Run-queue latency `le` bounds are `2^k` ns for `k` in this range:
/// 1.024 µs to 2.15 s. Below, buckets are merged into the first bound (the
/// scheduler does not switch faster); from `2^31` ns up only `+Inf` counts,
/// which matches the overflow bucket of the eBPF side
/// (`riklet_common::sched::RUNQ_BUCKETS` = 32). Fixed bounds keep the
/// series of a histogram the same from one scrape to the next.
const RUNQ_LE_LOG2: std::ops::RangeInclusive<u32> = 10..=31;

const SECONDS: &str = "seconds";
const BYTES: &str = "bytes";

/// One metric family: `name` without the unit and `_total` suffixes, which
/// the encoder appends.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
    read: Read,
}

/// The family's type and how its series read the snapshot.
enum Read {
    Counter(Scalar),
    Gauge(Scalar),
    /// A run-queue latency histogram per container that has one.
    Histogram(fn(&PodSample) -> Option<&Log2Histogram>),
}

/// Where a counter or gauge has its series, and how each reads its value.
#[derive(Clone, Copy)]
enum Scalar {
    /// One per container that has the figure (labels `app`, `instance`,
    /// `container`, `node`).
    Container(fn(&PodSample) -> Option<Value>),
    /// One per pod with an address of its own (labels `app`, `instance`,
    /// `node`).
    Pod(fn(&PodNetSample) -> Option<Value>),
    /// One for the node, if it has the figure (label `node`).
    Node(fn(&Snapshot) -> Option<Value>),
}

use Read::{Counter, Gauge, Histogram};
use Scalar::{Container, Node, Pod};

/// Every family, in the order of the exposition.
static FAMILIES: &[Family] = &[
    Family {
        name: "riklet_pod_cpu",
        help: "CPU time used by the container (cgroup cpuacct.usage or cpu.stat usage_usec).",
        unit: Some(SECONDS),
        read: Counter(Container(|p| p.cpu_seconds.map(Value::from))),
    },
    Family {
        name: "riklet_pod_cpu_throttled",
        help: "Time the container was throttled by its CPU limit (CFS quota).",
        unit: Some(SECONDS),
        read: Counter(Container(|p| p.cpu_throttled_seconds.map(Value::from))),
    },
    Family {
        name: "riklet_pod_cpu_cfs_periods",
        help: "CFS enforcement periods elapsed while the container had a CPU limit.",
        unit: None,
        read: Counter(Container(|p| p.cpu_periods.map(Value::from))),
    },
    Family {
        name: "riklet_pod_cpu_cfs_throttled_periods",
        help: "CFS periods in which the container was throttled.",
        unit: None,
        read: Counter(Container(|p| p.cpu_throttled_periods.map(Value::from))),
    },
    Family {
        name: "riklet_pod_memory_usage",
        help: "Memory charged to the container, page cache included.",
        unit: Some(BYTES),
        read: Gauge(Container(|p| p.memory_usage_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_pod_memory_working_set",
        help: "Memory usage minus inactive file pages (the working set).",
        unit: Some(BYTES),
        read: Gauge(Container(|p| p.memory_working_set_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_pod_memory_limit",
        help: "Hard memory limit of the container; absent when unlimited.",
        unit: Some(BYTES),
        read: Gauge(Container(|p| p.memory_limit_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_pod_memory_failcnt",
        help: "Times the container's memory usage hit its limit.",
        unit: None,
        read: Counter(Container(|p| p.memory_failcnt.map(Value::from))),
    },
    Family {
        name: "riklet_pod_oom_kills",
        help: "Processes of the container killed by the OOM killer.",
        unit: None,
        read: Counter(Container(|p| p.oom_kills.map(Value::from))),
    },
    Family {
        name: "riklet_pod_pids",
        help: "Processes and threads in the container.",
        unit: None,
        read: Gauge(Container(|p| p.pids.map(Value::from))),
    },
    Family {
        name: "riklet_pod_network_receive",
        help: "Bytes received by the container's sockets (eBPF).",
        unit: Some(BYTES),
        read: Counter(Container(|p| p.rx_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_pod_network_transmit",
        help: "Bytes sent by the container's sockets (eBPF).",
        unit: Some(BYTES),
        read: Counter(Container(|p| p.tx_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_pod_network_receive_packets",
        help: "Packets received by the container's sockets (eBPF).",
        unit: None,
        read: Counter(Container(|p| p.rx_packets.map(Value::from))),
    },
    Family {
        name: "riklet_pod_network_transmit_packets",
        help: "Packets sent by the container's sockets (eBPF).",
        unit: None,
        read: Counter(Container(|p| p.tx_packets.map(Value::from))),
    },
    Family {
        name: "riklet_pod_oncpu",
        help: "Time the container's tasks spent on a CPU, measured by eBPF at context switches.",
        unit: Some(SECONDS),
        read: Counter(Container(|p| p.oncpu_seconds.map(Value::from))),
    },
    Family {
        name: "riklet_pod_runqueue_latency",
        help: "Time the container's tasks waited in a run queue before getting a CPU (eBPF).",
        unit: Some(SECONDS),
        read: Histogram(|p| p.runq_latency.as_ref()),
    },
    Family {
        name: "riklet_pod_tcp_retransmits",
        help: "TCP retransmissions from the pod's address (eBPF tcp_retransmit_skb; one retransmitted skb may hold several segments).",
        unit: None,
        read: Counter(Pod(|p| Some(p.tcp_retransmits.into()))),
    },
    Family {
        name: "riklet_node_cpu",
        help: "CPU time spent busy (neither idle nor iowait) over all CPUs since boot.",
        unit: Some(SECONDS),
        read: Counter(Node(|s| s.node.cpu_seconds_total.map(Value::from))),
    },
    Family {
        name: "riklet_node_cpus",
        help: "Logical CPUs available to the node.",
        unit: None,
        read: Gauge(Node(|s| Some(s.node.cpus.into()))),
    },
    Family {
        name: "riklet_node_memory_total",
        help: "Total usable memory (MemTotal).",
        unit: Some(BYTES),
        read: Gauge(Node(|s| s.node.memory_total_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_node_memory_available",
        help: "Memory available for new work without swapping (MemAvailable).",
        unit: Some(BYTES),
        read: Gauge(Node(|s| s.node.memory_available_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_node_load1",
        help: "One-minute load average.",
        unit: None,
        read: Gauge(Node(|s| s.node.load1.map(Value::from))),
    },
    Family {
        name: "riklet_node_network_receive",
        help: "Bytes received over the node's uplinks (its NICs).",
        unit: Some(BYTES),
        read: Counter(Node(|s| s.node.rx_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_node_network_transmit",
        help: "Bytes sent over the node's uplinks (its NICs).",
        unit: Some(BYTES),
        read: Counter(Node(|s| s.node.tx_bytes.map(Value::from))),
    },
    Family {
        name: "riklet_snapshot_timestamp",
        help: "When the exported figures were collected, Unix time.",
        unit: Some(SECONDS),
        read: Gauge(Node(|s| Some((s.collected_at as f64 / 1000.0).into()))),
    },
    Family {
        name: "riklet_collection_ebpf",
        help: "Time the last collection cycle spent reading the eBPF maps.",
        unit: Some(SECONDS),
        read: Gauge(Node(|s| Some(s.timings.ebpf_seconds.into()))),
    },
    Family {
        name: "riklet_collection_cgroups",
        help: "Time the last collection cycle spent reading pod cgroup files.",
        unit: Some(SECONDS),
        read: Gauge(Node(|s| Some(s.timings.cgroups_seconds.into()))),
    },
    Family {
        name: "riklet_collection_duration",
        help: "Duration of the last collection cycle.",
        unit: Some(SECONDS),
        read: Gauge(Node(|s| Some(s.timings.total_seconds.into()))),
    },
];

/// Writes every family of `snapshot` in `format`; nothing at all for a
/// snapshot that was never published (rather than zeros).
pub(super) fn encode_snapshot(snapshot: &Snapshot, format: Format, out: &mut String) {
    if snapshot.collected_at == 0 {
        return;
    }
    let labels = Labels::of(snapshot);
    for family in FAMILIES {
        family.encode(snapshot, &labels, format, out);
    }
}

/// Every holder's labels, in exposition order, escaped and joined once.
struct Labels {
    containers: LabelSets,
    pods: LabelSets,
    node: LabelSets,
}

impl Labels {
    fn of(snapshot: &Snapshot) -> Self {
        Labels {
            containers: LabelSets::new(snapshot.pods.iter(), |p: &PodSample| {
                [
                    ("app", p.app.as_str()),
                    ("instance", p.instance.as_str()),
                    ("container", p.container.as_str()),
                    ("node", p.node.as_str()),
                ]
            }),
            pods: LabelSets::new(snapshot.pod_nets.iter(), |p: &PodNetSample| {
                [
                    ("app", p.app.as_str()),
                    ("instance", p.instance.as_str()),
                    ("node", p.node.as_str()),
                ]
            }),
            node: LabelSets::new(std::iter::once(&snapshot.node), |n| {
                [("node", n.node.as_str())]
            }),
        }
    }
}

impl Family {
    /// Writes the family's descriptor and a series per holder that has the
    /// figure; nothing at all when none has it.
    fn encode(&self, snapshot: &Snapshot, labels: &Labels, format: Format, out: &mut String) {
        let start = |out| text::family(out, format, self.name, self.help, self.unit, self.kind());
        match self.read {
            Counter(scalar) | Gauge(scalar) => {
                let mut points = scalar.points(snapshot, labels).peekable();
                if points.peek().is_none() {
                    return;
                }
                let mut family = start(out);
                for (set, value) in points {
                    match self.read {
                        Counter(_) => family.counter(set, value),
                        _ => family.gauge(set, value),
                    }
                }
            }
            Histogram(read) => {
                let mut points = snapshot
                    .pods
                    .iter()
                    .enumerate()
                    .filter_map(|(i, pod)| Some((labels.containers.get(i), read(pod)?)))
                    .peekable();
                if points.peek().is_none() {
                    return;
                }
                let mut family = start(out);
                let bounds = runq_le_labels();
                for (set, histogram) in points {
                    let (sum, count, buckets) = seconds_buckets(histogram);
                    let counts = buckets.iter().map(|(_, n)| *n);
                    family.histogram(
                        set,
                        sum,
                        count,
                        bounds.iter().map(String::as_str).zip(counts),
                    );
                }
            }
        }
    }

    fn kind(&self) -> Kind {
        match self.read {
            Counter(_) => Kind::Counter,
            Gauge(_) => Kind::Gauge,
            Histogram(_) => Kind::Histogram,
        }
    }
}

impl Scalar {
    /// The labels and value of every series.
    fn points<'a>(
        self,
        snapshot: &'a Snapshot,
        labels: &'a Labels,
    ) -> Box<dyn Iterator<Item = (&'a str, Value)> + 'a> {
        match self {
            Container(read) => Box::new(points(&snapshot.pods, &labels.containers, read)),
            Pod(read) => Box::new(points(&snapshot.pod_nets, &labels.pods, read)),
            Node(read) => Box::new(points(std::slice::from_ref(snapshot), &labels.node, read)),
        }
    }
}

/// The label set and figure of every holder that has the figure, in order.
fn points<'a, H>(
    holders: &'a [H],
    labels: &'a LabelSets,
    read: fn(&H) -> Option<Value>,
) -> impl Iterator<Item = (&'a str, Value)> + 'a {
    holders
        .iter()
        .enumerate()
        .filter_map(move |(i, holder)| read(holder).map(|value| (labels.get(i), value)))
}

/// The `le` label of each bound of [`seconds_buckets`], formatted once
/// (at 500 pods, 11,500 bucket lines a scrape).
fn runq_le_labels() -> &'static [String] {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LABELS.get_or_init(|| {
        let bound = |le: f64| match le {
            f64::INFINITY => "le=\"+Inf\",".to_string(),
            _ => format!("le=\"{}\",", dtoa::Buffer::new().format(le)),
        };
        seconds_buckets(&Log2Histogram::default())
            .2
            .iter()
            .map(|(le, _)| bound(*le))
            .collect()
    })
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
    use crate::metrics::exporter::{SnapshotHandle, encode_openmetrics, encode_text, registry};
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
            include_str!("testdata/full_snapshot.openmetrics")
        );
        assert_eq!(
            encode_text(&registry).unwrap(),
            include_str!("testdata/full_snapshot.txt")
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
}
