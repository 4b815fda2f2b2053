//! The figures of one collection cycle: the node and every container.
//!
//! A [`Snapshot`] is built by the agent once per cycle and published to the
//! Prometheus exporter ([`super::exporter::SnapshotHandle::publish`]); the
//! same samples feed the pod status sent to the scheduler
//! ([`pod_usage`]). Counters are cumulative (since the cgroup,
//! the eBPF map or the boot); a `None` is a figure that could not be read
//! this cycle and is left out of every output rather than reported as 0.

use proto::status::{
    ContainerMemory, ContainerUsage, CpuTimes, MemoryUsage, NetworkUsage, PodCpu, PodUsage,
    RunQueue,
};
use serde::Serialize;

use super::cgroup_stats::CgroupStats;
use super::net::CgroupTraffic;

const NS_PER_SEC: f64 = 1e9;

/// One container of one pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSample {
    /// App (manifest) name.
    pub app: String,
    /// Instance id (the pod).
    pub instance: String,
    /// Container name within the pod.
    pub container: String,
    /// Node name.
    pub node: String,
    /// CPU time used, seconds.
    pub cpu_seconds: Option<f64>,
    /// Time throttled by the CFS quota, seconds.
    pub cpu_throttled_seconds: Option<f64>,
    /// CFS periods elapsed (only with a CPU limit).
    pub cpu_periods: Option<u64>,
    /// CFS periods in which the container was throttled.
    pub cpu_throttled_periods: Option<u64>,
    /// Memory charged, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// Usage minus inactive file pages (cAdvisor's working set, what
    /// eviction and `kubectl top` look at).
    pub memory_working_set_bytes: Option<u64>,
    /// Hard memory limit; `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Times usage hit the limit.
    pub memory_failcnt: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kills: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Bytes received (eBPF `cgroup_skb`).
    pub rx_bytes: Option<u64>,
    /// Bytes sent.
    pub tx_bytes: Option<u64>,
    /// Packets received.
    pub rx_packets: Option<u64>,
    /// Packets sent.
    pub tx_packets: Option<u64>,
    /// Time on a CPU measured by eBPF (sched_switch), seconds.
    pub oncpu_seconds: Option<f64>,
    /// Time runnable but waiting for a CPU (eBPF), per scheduling.
    pub runq_latency: Option<Log2Histogram>,
}

impl PodSample {
    /// A sample with its labels and no figures yet.
    pub fn new(app: &str, instance: &str, container: &str, node: &str) -> Self {
        PodSample {
            app: app.to_string(),
            instance: instance.to_string(),
            container: container.to_string(),
            node: node.to_string(),
            ..PodSample::default()
        }
    }

    /// Fills the CPU, memory and pids figures from a cgroup reading.
    pub fn with_cgroup(mut self, stats: &CgroupStats) -> Self {
        let seconds = |ns: Option<u64>| ns.map(|ns| ns as f64 / NS_PER_SEC);
        self.cpu_seconds = seconds(stats.cpu_usage_ns);
        self.cpu_throttled_seconds = seconds(stats.cpu_throttled_ns);
        self.cpu_periods = stats.cpu_periods;
        self.cpu_throttled_periods = stats.cpu_throttled_periods;
        self.memory_usage_bytes = stats.memory_usage_bytes;
        self.memory_working_set_bytes = stats.memory_working_set_bytes;
        self.memory_limit_bytes = stats.memory_limit_bytes;
        self.memory_failcnt = stats.memory_failcnt;
        self.oom_kills = stats.oom_kills;
        self.pids = stats.pids;
        self
    }

    /// Fills the network figures from the eBPF counters of the container's
    /// cgroup. A cgroup that has not sent or received anything yet has no
    /// entry in the map: pass `CgroupTraffic::default()` for it, so that
    /// its series start at 0 instead of being absent.
    pub fn with_traffic(mut self, traffic: &CgroupTraffic) -> Self {
        self.rx_bytes = Some(traffic.rx_bytes);
        self.tx_bytes = Some(traffic.tx_bytes);
        self.rx_packets = Some(traffic.rx_packets);
        self.tx_packets = Some(traffic.tx_packets);
        self
    }

    /// The container's figures for its pod's status (unknown ones `null`).
    pub fn usage(&self) -> ContainerUsage {
        ContainerUsage {
            cpu: CpuTimes {
                usage_seconds: self.cpu_seconds,
                throttled_seconds: self.cpu_throttled_seconds,
                oncpu_seconds: self.oncpu_seconds,
            },
            memory: ContainerMemory {
                usage: MemoryUsage {
                    usage_bytes: self.memory_usage_bytes,
                    working_set_bytes: self.memory_working_set_bytes,
                    limit_bytes: self.memory_limit_bytes,
                    oom_kills: self.oom_kills,
                },
                failcnt: self.memory_failcnt,
            },
            pids: self.pids,
            network: NetworkUsage {
                rx_bytes: self.rx_bytes,
                tx_bytes: self.tx_bytes,
                rx_packets: self.rx_packets,
                tx_packets: self.tx_packets,
                tcp_retransmits: None,
            },
        }
    }
}

/// A pod's usage from its containers' samples, each with the container's
/// CPU use over the last cycle (cores): sums over the containers, and each
/// container's own figures.
pub fn pod_usage(containers: &[(PodSample, Option<f64>)]) -> PodUsage {
    let sum_f = |f: fn(&PodSample) -> Option<f64>| {
        let v: Vec<f64> = containers.iter().filter_map(|(s, _)| f(s)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>())
    };
    let sum_u = |f: fn(&PodSample) -> Option<u64>| {
        let v: Vec<u64> = containers.iter().filter_map(|(s, _)| f(s)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<u64>())
    };
    let cores: Vec<f64> = containers.iter().filter_map(|(_, c)| *c).collect();
    let runq: Vec<&Log2Histogram> = containers
        .iter()
        .filter_map(|(s, _)| s.runq_latency.as_ref())
        .collect();
    let runq_count: u64 = runq.iter().map(|h| h.count).sum();
    let runq_sum: u64 = runq.iter().map(|h| h.sum_ns).sum();
    PodUsage {
        cpu: PodCpu {
            usage_cores: (!cores.is_empty()).then(|| cores.iter().sum::<f64>()),
            times: CpuTimes {
                usage_seconds: sum_f(|s| s.cpu_seconds),
                throttled_seconds: sum_f(|s| s.cpu_throttled_seconds),
                oncpu_seconds: sum_f(|s| s.oncpu_seconds),
            },
        },
        memory: MemoryUsage {
            usage_bytes: sum_u(|s| s.memory_usage_bytes),
            working_set_bytes: sum_u(|s| s.memory_working_set_bytes),
            limit_bytes: sum_u(|s| s.memory_limit_bytes),
            oom_kills: sum_u(|s| s.oom_kills),
        },
        network: NetworkUsage {
            rx_bytes: sum_u(|s| s.rx_bytes),
            tx_bytes: sum_u(|s| s.tx_bytes),
            rx_packets: sum_u(|s| s.rx_packets),
            tx_packets: sum_u(|s| s.tx_packets),
            tcp_retransmits: None,
        },
        runqueue: RunQueue {
            count: (!runq.is_empty()).then_some(runq_count),
            mean_seconds: (runq_count > 0).then(|| runq_sum as f64 / runq_count as f64 / 1e9),
        },
        containers: containers
            .iter()
            .map(|(s, _)| (s.container.clone(), s.usage()))
            .collect(),
        events: Vec::new(),
    }
}

/// The figures of a pod as a whole, its network namespace, rather than of
/// one of its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetSample {
    /// App (manifest) name.
    pub app: String,
    /// Instance id (the pod).
    pub instance: String,
    /// Node name.
    pub node: String,
    /// TCP retransmissions from the pod's address (eBPF
    /// `tcp/tcp_retransmit_skb`): one per retransmitted `skb`, which holds
    /// one segment or, with segmentation offload, several.
    pub tcp_retransmits: u64,
}

/// A histogram with power-of-two buckets, the shape eBPF programs fill
/// cheaply (`bucket = log2(value)`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Log2Histogram {
    /// Count per bucket: bucket `i` holds values in `[2^i, 2^(i+1))` ns
    /// (bucket 0 also holds 0).
    pub buckets_ns: Vec<u64>,
    /// Number of observations (normally the sum of the buckets).
    pub count: u64,
    /// Sum of the observations, ns.
    pub sum_ns: u64,
}

impl Log2Histogram {
    /// Adds one observation (for tests and user-space producers).
    pub fn observe(&mut self, ns: u64) {
        let bucket = ns.max(1).ilog2() as usize;
        if self.buckets_ns.len() <= bucket {
            self.buckets_ns.resize(bucket + 1, 0);
        }
        self.buckets_ns[bucket] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Observations of value `< 2^k` ns: the sum of buckets `0..k`.
    pub fn count_below_pow2(&self, k: u32) -> u64 {
        self.buckets_ns.iter().take(k as usize).sum()
    }

    /// Total observations: `count`, or the sum of the buckets if that is
    /// more (a producer that updates the buckets and the count separately
    /// can be caught in between).
    pub fn total(&self) -> u64 {
        self.count.max(self.buckets_ns.iter().sum())
    }
}

/// The node as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSample {
    /// Node name.
    pub node: String,
    /// CPU time spent busy (not idle, not iowait) over all CPUs since
    /// boot, seconds.
    pub cpu_seconds_total: Option<f64>,
    /// Logical CPUs available.
    pub cpus: u64,
    /// `MemTotal`.
    pub memory_total_bytes: Option<u64>,
    /// `MemAvailable` (what can be allocated without swapping).
    pub memory_available_bytes: Option<u64>,
    /// One-minute load average.
    pub load1: Option<f64>,
    /// Bytes received over every non-loopback link (netlink link stats).
    pub rx_bytes: Option<u64>,
    /// Bytes sent over every non-loopback link.
    pub tx_bytes: Option<u64>,
}

/// Everything measured in one collection cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The node.
    pub node: NodeSample,
    /// One sample per container of every pod the node runs.
    pub pods: Vec<PodSample>,
    /// One sample per pod with an address of its own, when eBPF measures.
    pub pod_nets: Vec<PodNetSample>,
    /// When the cycle ran, Unix milliseconds (0: never).
    pub collected_at: i64,
    /// How long the cycle took, by part.
    pub timings: CollectionTimings,
}

/// Durations of one collection cycle, seconds (the riklet's own cost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionTimings {
    /// Bulk reads of the eBPF maps.
    pub ebpf_seconds: f64,
    /// Reads of every pod's cgroup files.
    pub cgroups_seconds: f64,
    /// The whole cycle, node figures included.
    pub total_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_figures_convert_to_seconds() {
        let stats = CgroupStats {
            cpu_usage_ns: Some(1_500_000_000),
            cpu_throttled_ns: Some(250_000_000),
            memory_usage_bytes: Some(10),
            memory_working_set_bytes: Some(8),
            pids: Some(2),
            ..CgroupStats::default()
        };
        let s = PodSample::new("web", "web-1", "main", "node-a").with_cgroup(&stats);
        assert_eq!(s.cpu_seconds, Some(1.5));
        assert_eq!(s.cpu_throttled_seconds, Some(0.25));
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!(s.pids, Some(2));
        let j = serde_json::to_value(s.usage()).unwrap();
        assert_eq!(j["cpu"]["usageSeconds"], 1.5);
        assert_eq!(j["memory"]["workingSetBytes"], 8);
        assert!(j["memory"]["limitBytes"].is_null());
        assert!(j["network"]["rxBytes"].is_null());
    }

    #[test]
    fn pod_usage_sums_containers_and_rates() {
        let mut a = PodSample::new("app", "app-1", "a", "n");
        a.cpu_seconds = Some(2.0);
        a.memory_working_set_bytes = Some(10);
        a.rx_bytes = Some(100);
        let mut b = PodSample::new("app", "app-1", "b", "n");
        b.cpu_seconds = Some(1.0);
        b.memory_working_set_bytes = Some(5);
        let u = &serde_json::to_value(pod_usage(&[(a, Some(0.5)), (b, Some(0.25))])).unwrap();
        assert_eq!(u["cpu"]["usageSeconds"], 3.0);
        assert_eq!(u["cpu"]["usageCores"], 0.75);
        assert_eq!(u["memory"]["workingSetBytes"], 15);
        assert_eq!(u["network"]["rxBytes"], 100);
        assert_eq!(u["memory"]["limitBytes"], serde_json::Value::Null);
        assert!(u["containers"]["b"].is_object());
    }

    #[test]
    fn log2_buckets() {
        let mut h = Log2Histogram::default();
        for ns in [0, 1, 3, 1024, 1500, 2048] {
            h.observe(ns);
        }
        // 0 and 1 → bucket 0; 3 → 1; 1024, 1500 → 10; 2048 → 11.
        assert_eq!(h.buckets_ns.len(), 12);
        assert_eq!(h.buckets_ns[0], 2);
        assert_eq!(h.buckets_ns[1], 1);
        assert_eq!(h.buckets_ns[10], 2);
        assert_eq!(h.buckets_ns[11], 1);
        assert_eq!(h.count_below_pow2(10), 3);
        assert_eq!(h.count_below_pow2(11), 5);
        assert_eq!(h.count_below_pow2(64), 6);
        assert_eq!(h.total(), 6);
        assert_eq!(h.sum_ns, 1 + 3 + 1024 + 1500 + 2048);
    }
}
