//! A node's heartbeat, `WorkerMetric.metrics`: RIK's keys (`cpu`, `memory`,
//! `disks`), so that RIK's scheduler understands it, then seed 004's node
//! resources and realtime node objects.

use serde::{Deserialize, Serialize};

use super::{deserialize_state, lenient, serialize_state};
use crate::common::ResourceStatus;

/// `WorkerMetric.metrics`. A heartbeat of RIK's own riklet has the RIK keys
/// only: `resources` and `realtime` then read as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeMetrics {
    #[serde(deserialize_with = "lenient")]
    pub cpu: Option<RikCpu>,
    #[serde(deserialize_with = "lenient")]
    pub memory: Option<RikMemory>,
    /// The root filesystem.
    #[serde(deserialize_with = "lenient")]
    pub disks: Vec<Disk>,
    #[serde(deserialize_with = "lenient")]
    pub resources: Option<NodeResources>,
    #[serde(deserialize_with = "lenient")]
    pub realtime: Option<RealtimeNode>,
}

metrics_object!(NodeMetrics);

/// RIK's CPU figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RikCpu {
    /// Logical CPUs.
    pub total: u64,
    /// Idle capacity: in CPUs from this riklet, in percent from RIK's.
    pub free: f64,
}

/// RIK's memory figures, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RikMemory {
    pub total: u64,
    /// `MemAvailable`.
    pub free: u64,
}

/// RIK's figures of one filesystem, bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub disk_name: String,
    pub total: u64,
    /// Available to unprivileged users.
    pub free: u64,
}

/// Seed 004's node resources object: what the node is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeResources {
    /// The node name.
    pub id: String,
    /// Logical CPUs.
    pub cpu: u64,
    /// Bytes.
    pub memory: u64,
    /// Bytes of the root filesystem.
    pub disksize: u64,
    /// The distribution (`Debian`).
    pub distrib: String,
    /// Its version.
    pub version: OsVersion,
    /// The OS (`linux`).
    #[serde(rename = "type")]
    pub os: String,
    /// `amd64`, `arm64`, …
    pub arch: String,
    pub kernel_version: String,
    pub networking: NodeNetworking,
}

/// A distribution's version (`VERSION_ID`): a number where it is one (seed
/// 004: `"version": 10`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OsVersion {
    Number(u64),
    Text(String),
}

impl Default for OsVersion {
    fn default() -> Self {
        OsVersion::Text(String::new())
    }
}

impl From<String> for OsVersion {
    fn from(version: String) -> Self {
        version
            .parse()
            .map_or(OsVersion::Text(version), OsVersion::Number)
    }
}

/// The node's names and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeNetworking {
    pub hostname: String,
    /// The first IPv4 address of an interface that is up and not loopback.
    pub internalip: Option<String>,
    /// Not known to the node: always `null`.
    pub externalip: Option<String>,
}

/// Seed 004's realtime node object: how the node is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RealtimeNode {
    #[serde(deserialize_with = "lenient")]
    pub id: String,
    #[serde(
        serialize_with = "serialize_state",
        deserialize_with = "deserialize_state"
    )]
    pub state: ResourceStatus,
    /// Unix seconds.
    #[serde(deserialize_with = "lenient")]
    pub timestamp: i64,
    #[serde(deserialize_with = "lenient")]
    pub cpu: Option<NodeCpu>,
    #[serde(deserialize_with = "lenient")]
    pub memory: Option<NodeMemory>,
    /// The 1, 5 and 15 minute load averages (`null` if unreadable).
    #[serde(deserialize_with = "lenient")]
    pub load: Option<[f64; 3]>,
    #[serde(deserialize_with = "lenient")]
    pub network: NodeNetwork,
}

/// The node's CPU use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCpu {
    #[serde(default)]
    pub total_cpu: u64,
    /// Percent, over the time since the previous heartbeat.
    pub current_usage: f64,
}

/// The node's memory use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMemory {
    /// Bytes.
    #[serde(default)]
    pub total_memory: u64,
    /// Percent in use (not available).
    pub current_usage: f64,
}

/// Traffic over the node's uplinks; `null` everywhere if unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeNetwork {
    /// Over the time since the previous heartbeat (`null` in the first).
    pub rx_bytes_per_sec: Option<f64>,
    pub tx_bytes_per_sec: Option<f64>,
    /// Since the riklet started.
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    /// A heartbeat of this riklet.
    const HEARTBEAT: &str = r#"{"cpu":{"free":2.0,"total":2},"disks":[{"disk_name":"/","free":57435041792,"total":270553174016}],"memory":{"free":23244632064,"total":25275990016},"realtime":{"cpu":{"currentUsage":0.0,"totalCpu":2},"id":"node-a","load":[5.860000133514404,8.75,8.520000457763672],"memory":{"currentUsage":8.0,"totalMemory":25275990016},"network":{"rxBytes":374472815,"rxBytesPerSec":0.0,"txBytes":532246,"txBytesPerSec":0.0},"state":"RUNNING","timestamp":1796193857},"resources":{"arch":"amd64","cpu":2,"disksize":270553174016,"distrib":"Debian","id":"node-a","kernelVersion":"6.18.44-fc-v1045","memory":25275990016,"networking":{"externalip":null,"hostname":"vm","internalip":"192.0.2.2"},"type":"linux","version":12}}"#;

    /// The first heartbeat after netlink failed, on a distribution with a
    /// textual version and no readable load.
    const DEGRADED: &str = r#"{"cpu":{"free":1.5,"total":2},"disks":[{"disk_name":"/","free":0,"total":0}],"memory":{"free":0,"total":0},"realtime":{"cpu":{"currentUsage":25.0,"totalCpu":2},"id":"node-b","load":null,"memory":{"currentUsage":0.0,"totalMemory":0},"network":{"rxBytes":null,"rxBytesPerSec":null,"txBytes":null,"txBytesPerSec":null},"state":"RUNNING","timestamp":1},"resources":{"arch":"arm64","cpu":2,"disksize":0,"distrib":"Arch","id":"node-b","kernelVersion":"","memory":0,"networking":{"externalip":null,"hostname":"","internalip":null},"type":"linux","version":"rolling"}}"#;

    #[test]
    fn heartbeat_round_trips() {
        for fixture in [HEARTBEAT, DEGRADED] {
            let (got, want) = round_trip::<NodeMetrics>(fixture);
            assert_eq!(got, want);
        }
        assert_eq!(NodeMetrics::from_json(HEARTBEAT).to_json(), HEARTBEAT);
    }

    #[test]
    fn reads_rik_heartbeats_and_partial_objects() {
        let rik = NodeMetrics::from_json(
            r#"{"cpu":{"total":8,"free":75.0},"memory":{"total":1000,"free":250},"disks":[]}"#,
        );
        assert_eq!(
            rik.cpu,
            Some(RikCpu {
                total: 8,
                free: 75.0
            })
        );
        assert_eq!(rik.memory.map(|m| m.free), Some(250));
        assert_eq!((rik.resources, rik.realtime), (None, None));
        let partial = NodeMetrics::from_json(
            r#"{"resources":{"id":"n","kernelVersion":"6.1.0"},
                "realtime":{"cpu":{"totalCpu":4},"memory":{"currentUsage":50}}}"#,
        );
        assert_eq!(partial.resources.unwrap().kernel_version, "6.1.0");
        let realtime = partial.realtime.unwrap();
        assert_eq!(realtime.cpu, None, "no currentUsage: no CPU figure");
        assert_eq!(realtime.memory.map(|m| m.current_usage), Some(50.0));
        assert_eq!(NodeMetrics::from_json(""), NodeMetrics::default());
    }

    #[test]
    fn os_versions() {
        assert_eq!(OsVersion::from("12".to_string()), OsVersion::Number(12));
        assert_eq!(
            OsVersion::from("22.04".to_string()),
            OsVersion::Text("22.04".into())
        );
    }
}
