//! The Node Monitor's collection cycle.
//!
//! Every `metrics_interval` it asks the agent which containers run, reads
//! each one's cgroup statistics, reads the eBPF maps once in bulk, samples
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
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::cgroup_stats;
use super::ebpf::{OnCpu, Probes, SchedStats};
use super::exporter::SnapshotHandle;
use super::node::NodeSampler;
use super::sample::{CollectionTimings, Log2Histogram, PodNetSample, PodSample, Snapshot};
use crate::cgroups::ContainerCgroup;

/// One container to measure.
#[derive(Debug, Clone)]
pub struct Target {
    pub app: String,
    pub instance: String,
    pub container: String,
    pub cgroup: ContainerCgroup,
    /// The pod's own address (`None` on the host network), to which its
    /// TCP retransmissions are attributed.
    pub pod_ip: Option<IpAddr>,
}

/// The last measured usage of each pod (by instance id), for the realtime
/// app object. Kept as samples: the JSON is built when asked (every
/// heartbeat, `rik get app`), not at every cycle.
#[derive(Debug, Clone, Default)]
pub struct PodUsage(Arc<RwLock<UsageTable>>);

#[derive(Debug, Default)]
struct UsageTable {
    /// Each pod's containers, with their CPU use over the last cycle (cores).
    pods: HashMap<String, Vec<(PodSample, Option<f64>)>>,
    /// Pod events (OOM kills).
    events: HashMap<String, Vec<Value>>,
    /// TCP retransmissions of each pod with an address of its own.
    retransmits: HashMap<String, u64>,
}

impl PodUsage {
    /// The last usage of a pod as JSON, if measured.
    pub fn get(&self, instance: &str) -> Option<Value> {
        let table = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut usage = pod_usage(table.pods.get(instance)?);
        if let Some(count) = table.retransmits.get(instance) {
            usage["network"]["tcpRetransmits"] = json!(count);
        }
        if let Some(events) = table.events.get(instance) {
            usage["events"] = Value::Array(events.clone());
        }
        Some(usage)
    }

    fn replace(&self, table: UsageTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = table;
    }
}

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
    previous: HashMap<(String, String), Previous>,
    /// On-CPU ns of each cgroup in the previous cycle's eBPF read: a cgroup
    /// whose figure did not move did not run (see [`Collector::ran`]).
    last_oncpu: HashMap<u64, u64>,
    /// Open cgroup files, re-read every cycle; one reader per thread.
    readers: Vec<cgroup_stats::StatsReader>,
    /// OOM kill events seen by eBPF, per pod (the last [`MAX_EVENTS`]).
    events: HashMap<String, Vec<Value>>,
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
            previous: HashMap::new(),
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
    pub async fn cycle(&mut self, targets: Vec<Target>) -> CycleTimings {
        let started = Instant::now();
        let t0 = Instant::now();
        let (traffic, sched, running, retransmits) = match &self.probes {
            Some(p) => (
                p.traffic_all().ok(),
                p.sched_all().ok(),
                p.running().ok(),
                p.retransmits_all().ok(),
            ),
            None => (None, None, None, None),
        };
        let ebpf = t0.elapsed();
        // The targets on a CPU now, with the time their slice began.
        let on_cpu = running.map(|r| on_cpu_targets(&targets, &r));
        let ran = match (&sched, &on_cpu) {
            (Some(sched), Some(on_cpu)) => Some(self.ran(sched, on_cpu, &targets)),
            _ => None,
        };
        let ran_count = ran.as_ref().map(HashSet::len);

        let t1 = Instant::now();
        let readers = std::mem::take(&mut self.readers);
        let cgroups: Vec<ContainerCgroup> = targets.iter().map(|t| t.cgroup.clone()).collect();
        let (readers, readings) =
            tokio::task::spawn_blocking(move || read_all(readers, &cgroups, ran.as_ref()))
                .await
                .unwrap_or_default();
        self.readers = readers;
        let cgroups = t1.elapsed();
        let ids: Vec<Option<u64>> = readings.iter().map(|r| r.cgroup_id).collect();

        let now = Instant::now();
        let now_ns = super::ebpf::monotonic_now().map_or(0, |d| d.as_nanos() as u64);
        let mut samples = Vec::with_capacity(targets.len());
        let mut previous = HashMap::with_capacity(targets.len());
        let mut pods: HashMap<String, Vec<(PodSample, Option<f64>)>> = HashMap::new();
        for (i, ((t, id), reading)) in targets.iter().zip(&ids).zip(&readings).enumerate() {
            let mut s = PodSample::new(&t.app, &t.instance, &t.container, &self.node)
                .with_cgroup(&reading.stats);
            if let (Some(traffic), Some(id)) = (&traffic, id) {
                s = s.with_traffic(&traffic.get(id).copied().unwrap_or_default());
            }
            let key = (t.instance.clone(), t.container.clone());
            let before = self.previous.get(&key).copied().unwrap_or_default();
            let mut now_seen = Previous::default();
            if let (Some(sched), Some(id)) = (&sched, id) {
                let charged = sched.get(id);
                // The slices running now are charged at their switch-out
                // only; a long one would otherwise be missing for seconds.
                let running_ns: u64 = on_cpu
                    .iter()
                    .flatten()
                    .filter(|(target, _)| *target == i)
                    .map(|(_, since)| now_ns.saturating_sub(*since))
                    .sum();
                if charged.is_some() || running_ns > 0 {
                    let oncpu = (charged.map_or(0, |x| x.oncpu_ns) + running_ns) as f64 / 1e9;
                    // A slice counted running but not charged later (its
                    // switch-out missed) must not make the counter go back.
                    let oncpu = before.oncpu.map_or(oncpu, |b| b.max(oncpu));
                    s.oncpu_seconds = Some(oncpu);
                    now_seen.oncpu = Some(oncpu);
                }
                if let Some(x) = charged {
                    s.runq_latency = Some(Log2Histogram {
                        buckets_ns: x.runq_buckets.to_vec(),
                        count: x.runq_count,
                        sum_ns: x.runq_sum_ns,
                    });
                }
            }
            let mut cores = None;
            if let Some(cpu) = s.cpu_seconds {
                if let Some((prev, at)) = before.cpu {
                    let dt = now.duration_since(at).as_secs_f64();
                    if dt > 0.0 && cpu >= prev {
                        cores = Some((cpu - prev) / dt);
                    }
                }
                now_seen.cpu = Some((cpu, now));
            }
            previous.insert(key, now_seen);
            pods.entry(t.instance.clone())
                .or_default()
                .push((s.clone(), cores));
            samples.push(s);
        }
        self.previous = previous;
        let pod_nets = retransmits
            .as_ref()
            .map(|r| pod_nets(&targets, r, &self.node))
            .unwrap_or_default();
        self.forget_stale(&ids, traffic.as_ref(), sched.as_ref());
        if let Some(r) = &retransmits {
            self.forget_stale_addresses(&targets, r);
        }
        self.oom_events(&targets, &ids);

        let live: HashSet<&str> = targets.iter().map(|t| t.instance.as_str()).collect();
        self.events
            .retain(|instance, _| live.contains(instance.as_str()));
        self.usage.replace(UsageTable {
            pods,
            events: self.events.clone(),
            retransmits: pod_nets
                .iter()
                .map(|n| (n.instance.clone(), n.tcp_retransmits))
                .collect(),
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
            collected_at: crate::state::now_ms(),
            timings: CollectionTimings {
                ebpf_seconds: ebpf.as_secs_f64(),
                cgroups_seconds: cgroups.as_secs_f64(),
                total_seconds: timings.total.as_secs_f64(),
            },
        });
        debug!(pods = targets.len(), ran = ?ran_count, ?timings, "metrics cycle");
        timings
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
    fn forget_stale_addresses(&mut self, targets: &[Target], retransmits: &HashMap<IpAddr, u64>) {
        let Some(p) = self.probes.as_mut() else {
            return;
        };
        if retransmits.is_empty() {
            return;
        }
        let live: HashSet<IpAddr> = targets.iter().filter_map(|t| t.pod_ip).collect();
        for address in retransmits.keys().filter(|a| !live.contains(a)) {
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
                    events.push(json!({"type": "OOMKill", "container": t.container, "pid": ev.pid, "at": at}));
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

/// Threads reading cgroup files: the reads are system calls that do not
/// wait, so a cycle's latency drops with the CPUs used.
const READ_THREADS: usize = 2;

/// Reads every cgroup, spread over the readers' threads; a container always
/// goes to the same reader (by path), which keeps its files open.
fn read_all(
    mut readers: Vec<cgroup_stats::StatsReader>,
    cgroups: &[ContainerCgroup],
    ran: Option<&HashSet<u64>>,
) -> (Vec<cgroup_stats::StatsReader>, Vec<cgroup_stats::Reading>) {
    if readers.is_empty() {
        readers.push(cgroup_stats::StatsReader::default());
    }
    let n = readers.len();
    let shard = |c: &ContainerCgroup| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        c.rel().hash(&mut h);
        (h.finish() as usize) % n
    };
    let shards: Vec<usize> = cgroups.iter().map(shard).collect();
    let mut parts: Vec<Vec<(usize, cgroup_stats::Reading)>> = std::thread::scope(|s| {
        let handles: Vec<_> = readers
            .iter_mut()
            .enumerate()
            .map(|(i, reader)| {
                let shards = &shards;
                s.spawn(move || {
                    let out: Vec<_> = cgroups
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| shards[*j] == i)
                        .map(|(j, c)| (j, reader.read(c, ran)))
                        .collect();
                    reader.sweep();
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut readings = vec![cgroup_stats::Reading::default(); cgroups.len()];
    for (j, reading) in parts.iter_mut().flat_map(|p| p.drain(..)) {
        readings[j] = reading;
    }
    (readers, readings)
}

/// The targets whose tasks are on a CPU now, by index in `targets`, with
/// the start of their slices (from the task's cgroup in
/// `/proc/<pid>/cgroup`; tasks of other cgroups are left out).
fn on_cpu_targets(targets: &[Target], running: &[OnCpu]) -> Vec<(usize, u64)> {
    if running.is_empty() {
        return Vec::new();
    }
    let by_rel: HashMap<&str, usize> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.cgroup.rel(), i))
        .collect();
    running
        .iter()
        .filter_map(|slot| {
            let text = std::fs::read_to_string(format!("/proc/{}/cgroup", slot.pid)).ok()?;
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            let target = by_rel.get(path.trim_start_matches('/'))?;
            Some((*target, slot.since_ns))
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

/// One pod's usage JSON: sums over its containers (each with its CPU use
/// over the last cycle, in cores), and each container's own figures.
fn pod_usage(containers: &[(PodSample, Option<f64>)]) -> Value {
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
    json!({
        "cpu": {
            "usageCores": (!cores.is_empty()).then(|| cores.iter().sum::<f64>()),
            "usageSeconds": sum_f(|s| s.cpu_seconds),
            "throttledSeconds": sum_f(|s| s.cpu_throttled_seconds),
            "oncpuSeconds": sum_f(|s| s.oncpu_seconds),
        },
        "memory": {
            "usageBytes": sum_u(|s| s.memory_usage_bytes),
            "workingSetBytes": sum_u(|s| s.memory_working_set_bytes),
            "limitBytes": sum_u(|s| s.memory_limit_bytes),
            "oomKills": sum_u(|s| s.oom_kills),
        },
        "network": {
            "rxBytes": sum_u(|s| s.rx_bytes),
            "txBytes": sum_u(|s| s.tx_bytes),
            "rxPackets": sum_u(|s| s.rx_packets),
            "txPackets": sum_u(|s| s.tx_packets),
        },
        "runqueue": {
            "count": (!runq.is_empty()).then_some(runq_count),
            "meanSeconds": (runq_count > 0).then(|| runq_sum as f64 / runq_count as f64 / 1e9),
        },
        "containers": containers
            .iter()
            .map(|(s, _)| (s.container.clone(), s.usage_json()))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// Runs cycles every `interval` until `shutdown`; `targets` asks the agent
/// for the current containers.
pub async fn run<F, Fut>(
    mut collector: Collector,
    interval: Duration,
    targets: F,
    mut shutdown: broadcast::Receiver<()>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Target>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = tick.tick() => {
                let t = targets().await;
                collector.cycle(t).await;
            }
        }
    }
    collector.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_usage_sums_containers_and_rates() {
        let mut a = PodSample::new("app", "app-1", "a", "n");
        a.cpu_seconds = Some(2.0);
        a.memory_working_set_bytes = Some(10);
        a.rx_bytes = Some(100);
        let mut b = PodSample::new("app", "app-1", "b", "n");
        b.cpu_seconds = Some(1.0);
        b.memory_working_set_bytes = Some(5);
        let u = &pod_usage(&[(a, Some(0.5)), (b, Some(0.25))]);
        assert_eq!(u["cpu"]["usageSeconds"], 3.0);
        assert_eq!(u["cpu"]["usageCores"], 0.75);
        assert_eq!(u["memory"]["workingSetBytes"], 15);
        assert_eq!(u["network"]["rxBytes"], 100);
        assert_eq!(u["memory"]["limitBytes"], Value::Null);
        assert!(u["containers"]["b"].is_object());
    }

    /// Today's usage of a pod with a measured container and an unmeasured one.
    const USAGE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4},"side":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"runqueue":{"count":3,"meanSeconds":1e-6}}"#;

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
        let event =
            json!({"type": "OOMKill", "container": "main", "pid": 42, "at": 1_700_000_000u64});
        usage.replace(UsageTable {
            pods: HashMap::from([("web-1".to_string(), vec![(a, Some(0.5)), (b, None)])]),
            events: HashMap::from([("web-1".to_string(), vec![event])]),
            retransmits: HashMap::from([("web-1".to_string(), 7)]),
        });
        let got = serde_json::to_value(usage.get("web-1").unwrap()).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(USAGE).unwrap());

        let usage = PodUsage::default();
        let bare = PodSample::new("web", "web-2", "main", "n");
        usage.replace(UsageTable {
            pods: HashMap::from([("web-2".to_string(), vec![(bare, None)])]),
            ..UsageTable::default()
        });
        let got = serde_json::to_value(usage.get("web-2").unwrap()).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(BARE).unwrap());
        assert!(usage.get("web-1").is_none());
    }
}
