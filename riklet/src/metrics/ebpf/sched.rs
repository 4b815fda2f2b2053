//! Reading what the scheduler tracepoints record: per-cgroup on-CPU time
//! and run-queue latency (`SCHED_STATS`), and what each CPU runs now
//! (`ON_CPU`). See `riklet_common::sched` for the method.

use std::collections::HashMap;

use aya::maps::PerCpuArray;
use riklet_common::sched::{ON_CPU_MAP, OnCpu, SCHED_STATS_MAP, SchedStats};

use super::{Probes, Result, error::map_error, maps::typed_map};

impl Probes {
    /// One cgroup's scheduler figures, summed over CPUs; `None` if none of
    /// its tasks left a CPU since the load (or it was forgotten, or evicted
    /// from the LRU map).
    pub fn sched(&self, cgroup_id: u64) -> Result<Option<SchedStats>> {
        self.read_one(SCHED_STATS_MAP, cgroup_id, add_sched)
    }

    /// Every cgroup's scheduler figures, summed over CPUs, in one pass over
    /// the map as for [`traffic_all`](Self::traffic_all).
    pub fn sched_all(&self) -> Result<HashMap<u64, SchedStats>> {
        self.read_all(SCHED_STATS_MAP, add_sched)
    }

    /// What each CPU runs now: the tasks (pid and switch-in time) on a
    /// CPU, idle CPUs left out. Their current slices are not in
    /// [`sched_all`](Self::sched_all) yet.
    pub fn running(&self) -> Result<Vec<OnCpu>> {
        let slots = typed_map::<PerCpuArray<_, OnCpu>>(&self.ebpf, ON_CPU_MAP)?
            .get(&0, 0)
            .map_err(map_error(ON_CPU_MAP))?;
        Ok(slots
            .iter()
            .filter(|slot| slot.pid != 0 && slot.since_ns != 0)
            .copied()
            .collect())
    }
}

/// Folds one CPU's scheduler figures into a total.
fn add_sched(total: SchedStats, cpu: &SchedStats) -> SchedStats {
    total.wrapping_add(cpu)
}
