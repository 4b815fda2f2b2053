//! Reading the per-cgroup network counters that the `cgroup_skb` programs
//! add to `CGROUP_TRAFFIC` (see [`crate::metrics::net`]).

use std::collections::HashMap;

use riklet_common::net::{CGROUP_TRAFFIC_MAP, CgroupTraffic};

use super::{Probes, Result};

impl Probes {
    /// One cgroup's network counters, summed over CPUs; `None` if that
    /// cgroup (id from [`cgroup_id`](super::cgroup_id)) has no traffic yet
    /// or was forgotten.
    pub fn traffic(&self, cgroup_id: u64) -> Result<Option<CgroupTraffic>> {
        self.read_one(CGROUP_TRAFFIC_MAP, cgroup_id, add_traffic)
    }

    /// Every cgroup's network counters, summed over CPUs.
    ///
    /// One pass over the map (batch lookups where the kernel has them):
    /// entries added or removed meanwhile may or may not show up.
    pub fn traffic_all(&self) -> Result<HashMap<u64, CgroupTraffic>> {
        self.read_all(CGROUP_TRAFFIC_MAP, add_traffic)
    }
}

/// Folds one CPU's traffic into a total.
fn add_traffic(total: CgroupTraffic, cpu: &CgroupTraffic) -> CgroupTraffic {
    total.wrapping_add(*cpu)
}
