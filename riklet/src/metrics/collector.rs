//! The Node Monitor's collection cycle.
//!
//! Every `metrics_interval` it takes the containers of the agent's live
//! pods (asked again only when they changed, see [`super::targets`]),
//! reads each one's cgroup statistics, reads the eBPF maps once in bulk, samples
//! the node, and publishes the result twice: as a [`Snapshot`] for the
//! Prometheus endpoint, and as per-pod usage ([`PodUsage`]) that the agent
//! puts in the realtime app object reported to the scheduler. eBPF entries
//! of cgroups that no longer hold a pod are removed, so a deleted pod's
//! figures leave the maps and `/metrics` within one cycle. OOM kills seen
//! by the `oom/mark_victim` probe are logged as pod events. TCP
//! retransmissions, counted by eBPF per source address, are the pod's whose
//! address it is; counts of other addresses are dropped every cycle.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::status::{PodEvent, PodEventKind};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::cgroup_stats;
use super::ebpf::{OnCpu, Probes, SchedStats};
use super::exporter::SnapshotHandle;
use super::net::CgroupTraffic;
use super::node::NodeSampler;
use super::sample::{CollectionTimings, Log2Histogram, PodNetSample, PodSample, Snapshot};
pub use super::targets::Target;
use super::targets::{PodsGeneration, TargetCache, TargetSet};
use super::usage::CycleUsage;
pub use super::usage::PodUsage;
#[cfg(test)]
use super::usage::UsageTable;

/// How long the parts of one cycle took (for `cargo xtask bench metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CycleTimings {
    pub ebpf: Duration,
    pub cgroups: Duration,
    pub total: Duration,
}

/// The collector's state between cycles.
pub struct Collector {
    node: String,
    probes: Option<Probes>,
    node_sampler: NodeSampler,
    exporter: SnapshotHandle,
    usage: PodUsage,
    /// What the previous cycle saw of each container.
    previous: PreviousCycle,
    /// On-CPU ns of each cgroup in the previous cycle's eBPF read: a cgroup
    /// whose figure did not move did not run (see [`Collector::ran`]).
    last_oncpu: HashMap<u64, u64>,
    /// Open cgroup files, re-read every cycle; one reader per thread.
    readers: Vec<cgroup_stats::StatsReader>,
    /// OOM kill events seen by eBPF, per pod (the last [`MAX_EVENTS`]).
    events: HashMap<String, Vec<PodEvent>>,
}

/// What the previous cycle saw: of each target of `set`, by index.
#[derive(Default)]
struct PreviousCycle {
    set: Option<Arc<TargetSet>>,
    seen: Vec<Previous>,
}

impl PreviousCycle {
    /// What was seen of each target of `set`, by index: as is while the
    /// targets stay the same, else carried over by container.
    fn of(&self, set: &Arc<TargetSet>) -> Vec<Previous> {
        match &self.set {
            Some(before) if Arc::ptr_eq(before, set) => self.seen.clone(),
            Some(before) => {
                let by_container: HashMap<(&str, &str), Previous> = before
                    .targets()
                    .iter()
                    .zip(&self.seen)
                    .map(|(t, p)| ((t.instance.as_str(), t.container.as_str()), *p))
                    .collect();
                set.targets()
                    .iter()
                    .map(|t| {
                        let key = (t.instance.as_str(), t.container.as_str());
                        by_container.get(&key).copied().unwrap_or_default()
                    })
                    .collect()
            }
            None => vec![Previous::default(); set.len()],
        }
    }
}

/// What a cycle keeps of one container for the next one.
#[derive(Debug, Default, Clone, Copy)]
struct Previous {
    /// CPU seconds and when read, for the usage rate.
    cpu: Option<(f64, Instant)>,
    /// On-CPU seconds reported, which never go backwards.
    oncpu: Option<f64>,
}

/// Pod events kept per pod.
const MAX_EVENTS: usize = 10;

/// How stale the slow-changing cgroup figures (limits, failcnt, OOM
/// counters) may get: they are re-read at least this often.
const SLOW_FIGURES_EVERY: Duration = Duration::from_secs(10);

impl Collector {
    /// A collector whose cycles run every `interval`.
    pub fn new(
        node: &str,
        probes: Option<Probes>,
        exporter: SnapshotHandle,
        usage: PodUsage,
        interval: Duration,
    ) -> Self {
        let slow_every = SLOW_FIGURES_EVERY.as_millis() / interval.as_millis().max(1);
        Collector {
            node: node.to_string(),
            probes,
            node_sampler: NodeSampler::new(node),
            exporter,
            usage,
            previous: PreviousCycle::default(),
            last_oncpu: HashMap::new(),
            readers: (0..READ_THREADS)
                .map(|_| cgroup_stats::StatsReader::new(slow_every as u64))
                .collect(),
            events: HashMap::new(),
        }
    }

    /// Whether the eBPF probes are loaded.
    pub fn has_probes(&self) -> bool {
        self.probes.is_some()
    }

    /// Detaches the eBPF programs and removes their pins.
    pub fn close(self) {
        if let Some(p) = self.probes
            && let Err(e) = p.close()
        {
            warn!(error = %e, "cannot detach eBPF programs");
        }
    }

    /// Measures every target once and publishes the results.
    pub async fn cycle(&mut self, set: Arc<TargetSet>) -> CycleTimings {
        let started = Instant::now();
        let maps = self.read_maps();
        let ebpf = started.elapsed();
        let targets = set.targets();
        // The targets on a CPU now, with the time their slice began.
        let on_cpu = maps.running.as_ref().map(|r| on_cpu_targets(&set, r));
        let ran = match (&maps.sched, &on_cpu) {
            (Some(sched), Some(on_cpu)) => Some(self.ran(sched, on_cpu, targets)),
            _ => None,
        };
        let ran_count = ran.as_ref().map(HashSet::len);

        let t1 = Instant::now();
        let readings = self.read_cgroups(Arc::clone(&set), ran).await;
        let cgroups = t1.elapsed();
        let ids: Vec<Option<u64>> = readings.iter().map(|r| r.cgroup_id).collect();

        let (samples, cores) = self.sample(&set, &ids, &readings, &maps, on_cpu.as_deref());
        let pod_nets = maps
            .retransmits
            .as_ref()
            .map(|r| pod_nets(targets, r, &self.node))
            .unwrap_or_default();
        self.forget_stale(&ids, maps.traffic.as_ref(), maps.sched.as_ref());
        if let Some(r) = &maps.retransmits {
            self.forget_stale_addresses(&set, r);
        }
        self.oom_events(targets, &ids);
        self.events.retain(|instance, _| set.has_instance(instance));
        self.usage.update(&CycleUsage {
            set: &set,
            samples: &samples,
            cores: &cores,
            events: &self.events,
            pod_nets: &pod_nets,
        });

        let node = self.node_sampler.sample().await;
        let timings = CycleTimings {
            ebpf,
            cgroups,
            total: started.elapsed(),
        };
        self.exporter.publish(Snapshot {
            node,
            pods: samples,
            pod_nets,
            collected_at: crate::clock::now_ms(),
            timings: CollectionTimings {
                ebpf_seconds: ebpf.as_secs_f64(),
                cgroups_seconds: cgroups.as_secs_f64(),
                total_seconds: timings.total.as_secs_f64(),
            },
        });
        debug!(pods = targets.len(), ran = ?ran_count, ?timings, "metrics cycle");
        timings
    }

    /// Reads the eBPF maps once in bulk.
    fn read_maps(&self) -> MapsReading {
        let Some(p) = &self.probes else {
            return MapsReading::default();
        };
        MapsReading {
            traffic: p.traffic_all().ok(),
            sched: p.sched_all().ok(),
            running: p.running().ok(),
            retransmits: p.retransmits_all().ok(),
        }
    }

    /// Reads every target's cgroup, off the async runtime; `ran` as for
    /// [`cgroup_stats::StatsReader::read`].
    async fn read_cgroups(
        &mut self,
        set: Arc<TargetSet>,
        ran: Option<HashSet<u64>>,
    ) -> Vec<cgroup_stats::Reading> {
        let readers = std::mem::take(&mut self.readers);
        let (readers, readings) =
            tokio::task::spawn_blocking(move || read_all(readers, &set, ran.as_ref()))
                .await
                .unwrap_or_default();
        self.readers = readers;
        readings
    }

    /// One sample per target of `set`, from its cgroup reading
    /// (`readings[i]`, of cgroup `ids[i]`) and the eBPF maps; remembers
    /// what the next cycle needs. Also returns the CPU use of each
    /// container over the last cycle (cores).
    fn sample(
        &mut self,
        set: &Arc<TargetSet>,
        ids: &[Option<u64>],
        readings: &[cgroup_stats::Reading],
        maps: &MapsReading,
        on_cpu: Option<&[(usize, u64)]>,
    ) -> (Vec<PodSample>, Vec<Option<f64>>) {
        let now = Instant::now();
        let now_ns = super::ebpf::monotonic_now().map_or(0, |d| d.as_nanos() as u64);
        let mut seen = self.previous.of(set);
        let mut samples = Vec::with_capacity(set.len());
        let mut cores = Vec::with_capacity(set.len());
        let targets = set.targets().iter().zip(ids).zip(readings);
        for (i, ((t, id), reading)) in targets.enumerate() {
            let mut s = PodSample::new(&t.app, &t.instance, &t.container, &self.node)
                .with_cgroup(&reading.stats);
            if let (Some(traffic), Some(id)) = (&maps.traffic, id) {
                s = s.with_traffic(&traffic.get(id).copied().unwrap_or_default());
            }
            let before = seen[i];
            let now_seen = &mut seen[i];
            now_seen.oncpu = None;
            if let (Some(sched), Some(id)) = (&maps.sched, id) {
                // The slices running now are charged at their switch-out
                // only; a long one would otherwise be missing for seconds.
                let running_ns: u64 = on_cpu
                    .into_iter()
                    .flatten()
                    .filter(|(target, _)| *target == i)
                    .map(|(_, since)| now_ns.saturating_sub(*since))
                    .sum();
                now_seen.oncpu = add_sched(&mut s, sched.get(id), running_ns, before.oncpu);
            }
            cores.push(
                s.cpu_seconds
                    .and_then(|cpu| cores_since(cpu, before.cpu, now)),
            );
            now_seen.cpu = s.cpu_seconds.map(|cpu| (cpu, now));
            samples.push(s);
        }
        self.previous = PreviousCycle {
            set: Some(Arc::clone(set)),
            seen,
        };
        (samples, cores)
    }

    /// The cgroups (by id) whose tasks ran since the previous cycle: those
    /// whose on-CPU time moved, and those on a CPU now (a task running
    /// since before the previous cycle has not been charged yet).
    fn ran(
        &mut self,
        sched: &HashMap<u64, SchedStats>,
        on_cpu: &[(usize, u64)],
        targets: &[Target],
    ) -> HashSet<u64> {
        let mut ran: HashSet<u64> = sched
            .iter()
            .filter(|(id, x)| self.last_oncpu.get(id) != Some(&x.oncpu_ns))
            .map(|(id, _)| *id)
            .collect();
        // An entry that vanished (LRU eviction): nothing is known of it.
        ran.extend(self.last_oncpu.keys().filter(|id| !sched.contains_key(id)));
        ran.extend(
            on_cpu
                .iter()
                .filter_map(|(i, _)| super::net::cgroup_id(&targets[*i].cgroup.v2_dir()).ok()),
        );
        self.last_oncpu = sched.iter().map(|(id, x)| (*id, x.oncpu_ns)).collect();
        ran
    }

    /// Removes eBPF entries of cgroups that hold no pod any more.
    /// `traffic` and `sched` are this cycle's reads of the maps.
    fn forget_stale<T, S>(
        &mut self,
        ids: &[Option<u64>],
        traffic: Option<&HashMap<u64, T>>,
        sched: Option<&HashMap<u64, S>>,
    ) {
        let Some(p) = self.probes.as_mut() else {
            return;
        };
        let live: HashSet<u64> = ids.iter().flatten().copied().collect();
        let mut seen: HashSet<u64> = HashSet::new();
        seen.extend(traffic.into_iter().flat_map(|t| t.keys()));
        seen.extend(sched.into_iter().flat_map(|s| s.keys()));
        for id in seen.difference(&live) {
            let _ = p.forget(*id);
        }
    }

    /// Removes the retransmission counts of addresses that are no pod's:
    /// the node's own, other containers', pods deleted since the last
    /// cycle (the address allocator hands out every other address of the
    /// pod network before one comes back, so none is reused meanwhile).
    fn forget_stale_addresses(&mut self, set: &TargetSet, retransmits: &HashMap<IpAddr, u64>) {
        let Some(p) = self.probes.as_mut() else {
            return;
        };
        for address in retransmits.keys().filter(|a| !set.is_pod_ip(a)) {
            let _ = p.forget_address(*address);
        }
    }

    fn oom_events(&mut self, targets: &[Target], ids: &[Option<u64>]) {
        let Some(p) = self.probes.as_mut() else {
            return;
        };
        for ev in p.oom_events() {
            let target = ids
                .iter()
                .position(|id| *id == Some(ev.cgroup_id))
                .map(|i| &targets[i]);
            match target {
                Some(t) => {
                    warn!(
                        pod = %t.instance,
                        container = %t.container,
                        app = %t.app,
                        pid = ev.pid,
                        "OOM kill in pod"
                    );
                    let at = super::ebpf::monotonic_to_system_time(ev.timestamp_ns)
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let events = self.events.entry(t.instance.clone()).or_default();
                    events.push(PodEvent {
                        kind: PodEventKind::OomKill,
                        container: t.container.clone(),
                        pid: ev.pid,
                        at,
                    });
                    if events.len() > MAX_EVENTS {
                        events.remove(0);
                    }
                }
                None => debug!(
                    pid = ev.pid,
                    cgroup = ev.cgroup_id,
                    "OOM kill outside riklet pods"
                ),
            }
        }
    }
}

/// One bulk read of the eBPF maps: `None` for a map that could not be read,
/// or without probes.
#[derive(Default)]
struct MapsReading {
    traffic: Option<HashMap<u64, CgroupTraffic>>,
    sched: Option<HashMap<u64, SchedStats>>,
    /// The tasks on a CPU now.
    running: Option<Vec<OnCpu>>,
    retransmits: Option<HashMap<IpAddr, u64>>,
}

/// Fills a sample's scheduler figures: the on-CPU time (what eBPF charged,
/// plus `running_ns` of the slices running now) and the run-queue latency.
/// Returns the on-CPU seconds reported, which never go below `before`.
fn add_sched(
    s: &mut PodSample,
    charged: Option<&SchedStats>,
    running_ns: u64,
    before: Option<f64>,
) -> Option<f64> {
    let mut reported = None;
    if charged.is_some() || running_ns > 0 {
        let oncpu = (charged.map_or(0, |x| x.oncpu_ns) + running_ns) as f64 / 1e9;
        // A slice counted running but not charged later (its switch-out
        // missed) must not make the counter go back.
        let oncpu = before.map_or(oncpu, |b| b.max(oncpu));
        s.oncpu_seconds = Some(oncpu);
        reported = Some(oncpu);
    }
    if let Some(x) = charged {
        s.runq_latency = Some(Log2Histogram {
            buckets_ns: x.runq_buckets.to_vec(),
            count: x.runq_count,
            sum_ns: x.runq_sum_ns,
        });
    }
    reported
}

/// CPU use, in cores, between the `before` reading (CPU seconds, when) and
/// `cpu` seconds `now`; `None` without one or if the counter went back.
fn cores_since(cpu: f64, before: Option<(f64, Instant)>, now: Instant) -> Option<f64> {
    let (prev, at) = before?;
    let dt = now.duration_since(at).as_secs_f64();
    (dt > 0.0 && cpu >= prev).then(|| (cpu - prev) / dt)
}

/// Threads reading cgroup files: the reads are system calls that do not
/// wait, so a cycle's latency drops with the CPUs used.
const READ_THREADS: usize = 2;

/// Reads every target's cgroup, spread over the readers' threads (the
/// first on this one); a container always goes to the same reader, which
/// keeps its files open.
fn read_all(
    mut readers: Vec<cgroup_stats::StatsReader>,
    set: &TargetSet,
    ran: Option<&HashSet<u64>>,
) -> (Vec<cgroup_stats::StatsReader>, Vec<cgroup_stats::Reading>) {
    readers.resize_with(set.readers(), cgroup_stats::StatsReader::default);
    let read_shard = |shard: usize, reader: &mut cgroup_stats::StatsReader| {
        let out: Vec<_> = (0..set.len())
            .filter(|&j| set.shard(j) == shard)
            .map(|j| (j, reader.read(&set.targets()[j].cgroup, ran)))
            .collect();
        reader.sweep();
        out
    };
    let mut parts: Vec<Vec<(usize, cgroup_stats::Reading)>> = std::thread::scope(|s| {
        let (first, others) = readers.split_first_mut().expect("at least one reader");
        let handles: Vec<_> = others
            .iter_mut()
            .enumerate()
            .map(|(i, reader)| s.spawn(move || read_shard(i + 1, reader)))
            .collect();
        let mut parts = vec![read_shard(0, first)];
        parts.extend(handles.into_iter().map(|h| h.join().unwrap_or_default()));
        parts
    });
    let mut readings = vec![cgroup_stats::Reading::default(); set.len()];
    for (j, reading) in parts.iter_mut().flat_map(|p| p.drain(..)) {
        readings[j] = reading;
    }
    (readers, readings)
}

/// The targets whose tasks are on a CPU now, by index in `targets`, with
/// the start of their slices (from the task's cgroup in
/// `/proc/<pid>/cgroup`; tasks of other cgroups are left out).
fn on_cpu_targets(set: &TargetSet, running: &[OnCpu]) -> Vec<(usize, u64)> {
    running
        .iter()
        .filter_map(|slot| {
            let path = crate::cgroups::v2_cgroup_of(slot.pid as i32)?;
            Some((set.by_cgroup(&path)?, slot.since_ns))
        })
        .collect()
}

/// One sample per pod with an address of its own: its retransmissions
/// (0 until the first).
fn pod_nets(
    targets: &[Target],
    retransmits: &HashMap<IpAddr, u64>,
    node: &str,
) -> Vec<PodNetSample> {
    let mut seen = HashSet::new();
    targets
        .iter()
        .filter_map(|t| Some((t, t.pod_ip?)))
        .filter(|(t, _)| seen.insert(t.instance.as_str()))
        .map(|(t, ip)| PodNetSample {
            app: t.app.clone(),
            instance: t.instance.clone(),
            node: node.to_string(),
            tcp_retransmits: retransmits.get(&ip).copied().unwrap_or(0),
        })
        .collect()
}

/// Runs cycles every `interval` until `shutdown`; `targets` asks the agent
/// for the current containers, which happens only when `generation` moved.
pub async fn run<F, Fut>(
    mut collector: Collector,
    interval: Duration,
    generation: PodsGeneration,
    targets: F,
    mut shutdown: broadcast::Receiver<()>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Target>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = TargetCache::new(READ_THREADS);
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tick.tick() => {
                let set = cache.get(generation.current(), &targets).await;
                collector.cycle(set).await;
            }
        }
    }
    collector.close();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Today's usage of a pod with a measured container and an unmeasured
    /// one (the agent's view tests take it as input).
    pub(crate) const USAGE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4},"side":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"runqueue":{"count":3,"meanSeconds":1e-6}}"#;

    /// Today's usage of a pod whose only container has no figures yet.
    const BARE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageCores":null,"usageSeconds":null},"memory":{"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"runqueue":{"count":null,"meanSeconds":null}}"#;

    #[test]
    fn pod_usage_contract() {
        let mut a = PodSample::new("web", "web-1", "main", "n");
        a.cpu_seconds = Some(2.5);
        a.cpu_throttled_seconds = Some(0.25);
        a.oncpu_seconds = Some(2.0);
        a.memory_usage_bytes = Some(4096);
        a.memory_working_set_bytes = Some(2048);
        a.memory_limit_bytes = Some(1 << 20);
        a.memory_failcnt = Some(3);
        a.oom_kills = Some(1);
        a.pids = Some(4);
        a.rx_bytes = Some(100);
        a.tx_bytes = Some(200);
        a.rx_packets = Some(1);
        a.tx_packets = Some(2);
        a.runq_latency = Some(Log2Histogram {
            buckets_ns: vec![1, 2],
            count: 3,
            sum_ns: 3_000,
        });
        let b = PodSample::new("web", "web-1", "side", "n");
        let usage = PodUsage::default();
        let event = PodEvent {
            kind: PodEventKind::OomKill,
            container: "main".into(),
            pid: 42,
            at: 1_700_000_000,
        };
        usage.replace(UsageTable {
            pods: HashMap::from([("web-1".to_string(), vec![(a, Some(0.5)), (b, None)])]),
            events: HashMap::from([("web-1".to_string(), vec![event])]),
            retransmits: HashMap::from([("web-1".to_string(), 7)]),
        });
        let got = serde_json::to_value(usage.get("web-1").unwrap()).unwrap();
        assert_eq!(
            got,
            serde_json::from_str::<serde_json::Value>(USAGE).unwrap()
        );

        let usage = PodUsage::default();
        let bare = PodSample::new("web", "web-2", "main", "n");
        usage.replace(UsageTable {
            pods: HashMap::from([("web-2".to_string(), vec![(bare, None)])]),
            ..UsageTable::default()
        });
        let got = serde_json::to_value(usage.get("web-2").unwrap()).unwrap();
        assert_eq!(
            got,
            serde_json::from_str::<serde_json::Value>(BARE).unwrap()
        );
        assert!(usage.get("web-1").is_none());
    }
}
