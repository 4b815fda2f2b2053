//! What the riklet measured of a pod and its containers: cgroup figures,
//! eBPF network counters, run-queue latency and OOM kills. Counters are
//! cumulative; a figure that could not be read is `null`, never 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The last measured usage of a pod, as the collector publishes it for the
/// pod's [`AppStatus`](super::AppStatus) (see
/// [`AppStatus::with_usage`](super::AppStatus::with_usage)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// Sums over the containers.
    pub cpu: PodCpu,
    pub memory: MemoryUsage,
    pub network: NetworkUsage,
    pub runqueue: RunQueue,
    /// Each container's own figures, by container name.
    pub containers: BTreeMap<String, ContainerUsage>,
    /// The last events of the pod, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<PodEvent>,
}

/// CPU time, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuTimes {
    /// CPU time used (cgroup).
    pub usage_seconds: Option<f64>,
    /// Time throttled by the CFS quota.
    pub throttled_seconds: Option<f64>,
    /// Time on a CPU measured by eBPF (`sched_switch`).
    pub oncpu_seconds: Option<f64>,
}

/// A pod's CPU figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCpu {
    /// CPUs used over the last collection cycle.
    pub usage_cores: Option<f64>,
    #[serde(flatten)]
    pub times: CpuTimes,
}

/// Memory figures, bytes, of a pod or a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryUsage {
    /// Memory charged, page cache included.
    pub usage_bytes: Option<u64>,
    /// Usage minus inactive file pages (what `rik top` shows).
    pub working_set_bytes: Option<u64>,
    /// Hard limit; `null` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kills: Option<u64>,
}

/// A container's memory figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMemory {
    #[serde(flatten)]
    pub usage: MemoryUsage,
    /// Times usage hit the limit.
    pub failcnt: Option<u64>,
}

/// Network counters (eBPF `cgroup_skb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUsage {
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub rx_packets: Option<u64>,
    pub tx_packets: Option<u64>,
    /// TCP retransmissions from the pod's own address; absent for a
    /// container, and for a pod on the host network or without eBPF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retransmits: Option<u64>,
}

/// Time runnable tasks of a pod waited for a CPU (eBPF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunQueue {
    /// Waits measured.
    pub count: Option<u64>,
    /// Their mean, seconds (`null` without any).
    pub mean_seconds: Option<f64>,
}

/// One container's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    pub cpu: CpuTimes,
    pub memory: ContainerMemory,
    /// Processes and threads.
    pub pids: Option<u64>,
    pub network: NetworkUsage,
}

/// Something that happened to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    #[serde(rename = "type")]
    pub kind: PodEventKind,
    pub container: String,
    /// The process it happened to.
    pub pid: u32,
    /// Unix seconds.
    pub at: u64,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodEventKind {
    /// The OOM killer killed the process (eBPF `oom/mark_victim`).
    #[serde(rename = "OOMKill")]
    OomKill,
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    /// The usage of a pod with a measured container and one without
    /// figures yet, an OOM kill, and retransmissions.
    const POD_USAGE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4},"side":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"runqueue":{"count":3,"meanSeconds":1e-6}}"#;

    /// A pod whose only container has no figures yet: no events, no
    /// retransmission count.
    const BARE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageCores":null,"usageSeconds":null},"memory":{"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"runqueue":{"count":null,"meanSeconds":null}}"#;

    #[test]
    fn pod_usage_round_trips() {
        for fixture in [POD_USAGE, BARE] {
            let (got, want) = round_trip::<PodUsage>(fixture);
            assert_eq!(got, want);
        }
        let usage: PodUsage = serde_json::from_str(POD_USAGE).unwrap();
        assert_eq!(usage.network.tcp_retransmits, Some(7));
        assert_eq!(usage.containers["main"].memory.failcnt, Some(3));
        assert_eq!(usage.events[0].kind, PodEventKind::OomKill);
    }
}
