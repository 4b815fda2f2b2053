//! Typed access to the object's maps, shared by the readers of each family
//! (`traffic`, `sched`, `tcp`): per-CPU sums of one entry or of all, the
//! `*_LOST` counters, and entry removal.

use std::{
    collections::HashMap,
    hash::Hash,
    os::fd::AsFd as _,
    sync::{PoisonError, atomic::Ordering},
};

use aya::{
    Ebpf, Pod,
    maps::{IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    sys::SyscallError,
};
use riklet_common::{
    net::{CGROUP_TRAFFIC_MAP, CgroupTraffic, TRAFFIC_LOST_MAP},
    oom::OOM_LOST_MAP,
    sched::{SCHED_LOST_MAP, SCHED_LOST_UNSEEN, SCHED_STATS_MAP, SchedStats},
    tcp::{Address, TCP_RETRANS_LOST_MAP, TCP_RETRANS_MAP},
};
use tracing::warn;

use super::{ProbeError, Probes, Result, batch, error::map_error};

/// Events the eBPF programs could not record since the load, summed over
/// CPUs. Non-zero means a full map (or ring buffer): figures are missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostEvents {
    /// Packets not counted (`CGROUP_TRAFFIC` full).
    pub traffic: u64,
    /// Scheduler events not counted (a scheduler map update failed).
    pub sched: u64,
    /// Slices not charged because the kernel did not run the `sched_switch`
    /// program for the switch that began them (it drops a few tracepoint
    /// events now and then); their on-CPU time and wait are missing.
    pub sched_unseen: u64,
    /// OOM events dropped (ring buffer full: not drained often enough).
    pub oom: u64,
    /// TCP retransmissions not counted (`TCP_RETRANS` full).
    pub retransmits: u64,
}

impl Probes {
    /// Events the programs could not record since the load.
    pub fn lost(&self) -> Result<LostEvents> {
        Ok(LostEvents {
            traffic: self.lost_count(TRAFFIC_LOST_MAP, 0)?,
            sched: self.lost_count(SCHED_LOST_MAP, 0)?,
            sched_unseen: self.lost_count(SCHED_LOST_MAP, SCHED_LOST_UNSEEN)?,
            oom: self.lost_count(OOM_LOST_MAP, 0)?,
            retransmits: self.lost_count(TCP_RETRANS_LOST_MAP, 0)?,
        })
    }

    /// Drops a deleted pod cgroup's entries from every per-cgroup map, so
    /// that the bounded maps do not fill up with dead ids. Forgetting an id
    /// without entries is fine.
    pub fn forget(&mut self, cgroup_id: u64) -> Result<()> {
        remove_entry::<u64, CgroupTraffic>(&mut self.ebpf, CGROUP_TRAFFIC_MAP, &cgroup_id)?;
        remove_entry::<u64, SchedStats>(&mut self.ebpf, SCHED_STATS_MAP, &cgroup_id)
    }

    /// One cgroup's entry of a per-CPU hash map, its per-CPU values folded
    /// with `fold`; `None` if the cgroup has no entry.
    pub(super) fn read_one<V: Pod + Default>(
        &self,
        map: &'static str,
        cgroup_id: u64,
        fold: impl Fn(V, &V) -> V,
    ) -> Result<Option<V>> {
        match percpu_hash::<u64, V>(&self.ebpf, map)?.get(&cgroup_id, 0) {
            Ok(values) => Ok(Some(values.iter().fold(V::default(), fold))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map)(source)),
        }
    }

    /// Every entry of a per-CPU hash map, per-CPU values folded with
    /// `fold`: batch lookups while the kernel has them, aya's iteration
    /// after the first "unsupported" answer.
    pub(super) fn read_all<K: Pod + Default + Eq + Hash, V: Pod + Default>(
        &self,
        map: &'static str,
        fold: impl Fn(V, &V) -> V,
    ) -> Result<HashMap<K, V>> {
        let typed = percpu_hash::<K, V>(&self.ebpf, map)?;
        if self.batch.load(Ordering::Relaxed) {
            let fd = typed.map().fd().as_fd();
            let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
            match batch::lookup_percpu_with(&mut scratch, fd, self.possible_cpus, &fold) {
                Ok(entries) => return Ok(entries),
                Err(error) if batch::unsupported(&error) => {
                    warn!(map, %error, "BPF_MAP_LOOKUP_BATCH unsupported, iterating maps instead");
                    self.batch.store(false, Ordering::Relaxed);
                }
                Err(io_error) => {
                    return Err(map_error(map)(MapError::SyscallError(SyscallError {
                        call: "BPF_MAP_LOOKUP_BATCH",
                        io_error,
                    })));
                }
            }
        }
        typed
            .iter()
            .map(|entry| {
                let (key, values) = entry.map_err(map_error(map))?;
                Ok((key, values.iter().fold(V::default(), &fold)))
            })
            .collect()
    }

    fn lost_count(&self, map: &'static str, slot: u32) -> Result<u64> {
        let values = typed_map::<PerCpuArray<_, u64>>(&self.ebpf, map)?
            .get(&slot, 0)
            .map_err(map_error(map))?;
        Ok(values
            .iter()
            .fold(0u64, |total, cpu| total.wrapping_add(*cpu)))
    }
}

/// Checks that the maps the readers use have the shapes they expect, so
/// that a mismatched object fails at load rather than at the first read.
pub(super) fn check_shapes(ebpf: &Ebpf) -> Result<()> {
    percpu_hash::<u64, CgroupTraffic>(ebpf, CGROUP_TRAFFIC_MAP)?;
    percpu_hash::<u64, SchedStats>(ebpf, SCHED_STATS_MAP)?;
    percpu_hash::<Address, u64>(ebpf, TCP_RETRANS_MAP)?;
    for map in [
        TRAFFIC_LOST_MAP,
        SCHED_LOST_MAP,
        OOM_LOST_MAP,
        TCP_RETRANS_LOST_MAP,
    ] {
        typed_map::<PerCpuArray<_, u64>>(ebpf, map)?;
    }
    Ok(())
}

/// The map named `map` as a `T`; fails if the object lacks it or it has
/// another shape.
pub(super) fn typed_map<'a, T>(ebpf: &'a Ebpf, map: &'static str) -> Result<T>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let found = ebpf.map(map).ok_or(ProbeError::MapMissing { map })?;
    T::try_from(found).map_err(map_error(map))
}

/// A per-CPU hash map, typed.
fn percpu_hash<'a, K: Pod, V: Pod>(
    ebpf: &'a Ebpf,
    map: &'static str,
) -> Result<PerCpuHashMap<&'a MapData, K, V>> {
    typed_map(ebpf, map)
}

/// Removes one key from a per-CPU hash map; a missing key is fine.
pub(super) fn remove_entry<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    map: &'static str,
    key: &K,
) -> Result<()> {
    let found = ebpf.map_mut(map).ok_or(ProbeError::MapMissing { map })?;
    let mut typed = PerCpuHashMap::<&mut MapData, K, V>::try_from(found).map_err(map_error(map))?;
    match typed.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(map_error(map)(source)),
    }
}
