//! The Node Monitor's collection cycle.
//!
//! Every `metrics_interval` it asks the agent which containers run, reads
//! each one's cgroup statistics, reads the eBPF maps once in bulk, samples
//! the node, and publishes the result twice: as a [`Snapshot`] for the
//! Prometheus endpoint, and as per-pod usage ([`PodUsage`]) that the agent
//! puts in the realtime app object reported to the scheduler. eBPF entries
//! of cgroups that no longer hold a pod are removed, so a deleted pod's
//! figures leave the maps and `/metrics` within one cycle. OOM kills seen
//! by the `oom/mark_victim` probe are logged as pod events.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::cgroup_stats;
use super::ebpf::Probes;
use super::exporter::SnapshotHandle;
use super::node::NodeSampler;
use super::sample::{CollectionTimings, Log2Histogram, PodSample, Snapshot};
use crate::cgroups::ContainerCgroup;

/// One container to measure.
#[derive(Debug, Clone)]
pub struct Target {
    pub app: String,
    pub instance: String,
    pub container: String,
    pub cgroup: ContainerCgroup,
}

/// Usage of each pod (by instance id), as JSON for the realtime app object.
#[derive(Debug, Clone, Default)]
pub struct PodUsage(Arc<RwLock<HashMap<String, Value>>>);

impl PodUsage {
    /// The last usage of a pod, if measured.
    pub fn get(&self, instance: &str) -> Option<Value> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned()
    }

    fn replace(&self, usage: HashMap<String, Value>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = usage;
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
    /// Previous CPU seconds of each container, for the usage rate.
    last_cpu: HashMap<(String, String), (f64, Instant)>,
    /// Open cgroup files, re-read every cycle; one reader per thread.
    readers: Vec<cgroup_stats::StatsReader>,
    /// OOM kill events seen by eBPF, per pod (the last [`MAX_EVENTS`]).
    events: HashMap<String, Vec<Value>>,
}

/// Pod events kept per pod.
const MAX_EVENTS: usize = 10;

impl Collector {
    pub fn new(
        node: &str,
        probes: Option<Probes>,
        exporter: SnapshotHandle,
        usage: PodUsage,
    ) -> Self {
        Collector {
            node: node.to_string(),
            probes,
            node_sampler: NodeSampler::new(node),
            exporter,
            usage,
            last_cpu: HashMap::new(),
            readers: (0..READ_THREADS)
                .map(|_| cgroup_stats::StatsReader::default())
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
        let ids: Vec<Option<u64>> = targets
            .iter()
            .map(|t| super::ebpf::cgroup_id(&t.cgroup.v2_dir()).ok())
            .collect();

        let t0 = Instant::now();
        let (traffic, sched) = match &self.probes {
            Some(p) => (p.traffic_all().ok(), p.sched_all().ok()),
            None => (None, None),
        };
        let ebpf = t0.elapsed();

        let t1 = Instant::now();
        let readers = std::mem::take(&mut self.readers);
        let cgroups: Vec<ContainerCgroup> = targets.iter().map(|t| t.cgroup.clone()).collect();
        let (readers, stats) = tokio::task::spawn_blocking(move || read_all(readers, &cgroups))
            .await
            .unwrap_or_default();
        self.readers = readers;
        let cgroups = t1.elapsed();

        let now = Instant::now();
        let mut samples = Vec::with_capacity(targets.len());
        let mut live_cpu = HashMap::new();
        let mut rates: HashMap<(String, String), f64> = HashMap::new();
        for ((t, id), st) in targets.iter().zip(&ids).zip(&stats) {
            let mut s =
                PodSample::new(&t.app, &t.instance, &t.container, &self.node).with_cgroup(st);
            if let (Some(traffic), Some(id)) = (&traffic, id) {
                s = s.with_traffic(&traffic.get(id).copied().unwrap_or_default());
            }
            if let (Some(sched), Some(id)) = (&sched, id)
                && let Some(x) = sched.get(id)
            {
                s.oncpu_seconds = Some(x.oncpu_ns as f64 / 1e9);
                s.runq_latency = Some(Log2Histogram {
                    buckets_ns: x.runq_buckets.to_vec(),
                    count: x.runq_count,
                    sum_ns: x.runq_sum_ns,
                });
            }
            let key = (t.instance.clone(), t.container.clone());
            if let Some(cpu) = s.cpu_seconds {
                if let Some((prev, at)) = self.last_cpu.get(&key) {
                    let dt = now.duration_since(*at).as_secs_f64();
                    if dt > 0.0 && cpu >= *prev {
                        rates.insert(key.clone(), (cpu - prev) / dt);
                    }
                }
                live_cpu.insert(key, (cpu, now));
            }
            samples.push(s);
        }
        self.last_cpu = live_cpu;
        self.forget_stale(&ids, traffic.as_ref(), sched.as_ref());
        self.oom_events(&targets, &ids);

        let live: HashSet<&str> = targets.iter().map(|t| t.instance.as_str()).collect();
        self.events
            .retain(|instance, _| live.contains(instance.as_str()));
        let mut usage = pod_usage(&samples, &rates);
        for (instance, events) in &self.events {
            if let Some(Value::Object(u)) = usage.get_mut(instance) {
                u.insert("events".into(), Value::Array(events.clone()));
            }
        }
        self.usage.replace(usage);
        let node = self.node_sampler.sample().await;
        let timings = CycleTimings {
            ebpf,
            cgroups,
            total: started.elapsed(),
        };
        self.exporter.publish(Snapshot {
            node,
            pods: samples,
            collected_at: crate::state::now_ms(),
            timings: CollectionTimings {
                ebpf_seconds: ebpf.as_secs_f64(),
                cgroups_seconds: cgroups.as_secs_f64(),
                total_seconds: timings.total.as_secs_f64(),
            },
        });
        debug!(pods = targets.len(), ?timings, "metrics cycle");
        timings
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
) -> (
    Vec<cgroup_stats::StatsReader>,
    Vec<cgroup_stats::CgroupStats>,
) {
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
    let mut parts: Vec<Vec<(usize, cgroup_stats::CgroupStats)>> = std::thread::scope(|s| {
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
                        .map(|(j, c)| (j, reader.read(c)))
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
    let mut stats = vec![cgroup_stats::CgroupStats::default(); cgroups.len()];
    for (j, st) in parts.iter_mut().flat_map(|p| p.drain(..)) {
        stats[j] = st;
    }
    (readers, stats)
}

/// Per-pod usage JSON: sums over the pod's containers, the CPU rate over
/// the last cycle, and each container's own figures.
fn pod_usage(
    samples: &[PodSample],
    rates: &HashMap<(String, String), f64>,
) -> HashMap<String, Value> {
    let mut by_pod: HashMap<&str, Vec<&PodSample>> = HashMap::new();
    for s in samples {
        by_pod.entry(&s.instance).or_default().push(s);
    }
    by_pod
        .into_iter()
        .map(|(instance, cs)| {
            let sum_f = |f: fn(&PodSample) -> Option<f64>| {
                let v: Vec<f64> = cs.iter().filter_map(|s| f(s)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>())
            };
            let sum_u = |f: fn(&PodSample) -> Option<u64>| {
                let v: Vec<u64> = cs.iter().filter_map(|s| f(s)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<u64>())
            };
            let cores: Vec<f64> = cs
                .iter()
                .filter_map(|s| rates.get(&(s.instance.clone(), s.container.clone())).copied())
                .collect();
            let runq: Vec<&Log2Histogram> = cs.iter().filter_map(|s| s.runq_latency.as_ref()).collect();
            let runq_count: u64 = runq.iter().map(|h| h.count).sum();
            let runq_sum: u64 = runq.iter().map(|h| h.sum_ns).sum();
            let value = json!({
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
                "containers": cs.iter().map(|s| (s.container.clone(), s.usage_json())).collect::<serde_json::Map<_, _>>(),
            });
            (instance.to_string(), value)
        })
        .collect()
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
        let mut rates = HashMap::new();
        rates.insert(("app-1".to_string(), "a".to_string()), 0.5);
        rates.insert(("app-1".to_string(), "b".to_string()), 0.25);
        let usage = pod_usage(&[a, b], &rates);
        let u = &usage["app-1"];
        assert_eq!(u["cpu"]["usageSeconds"], 3.0);
        assert_eq!(u["cpu"]["usageCores"], 0.75);
        assert_eq!(u["memory"]["workingSetBytes"], 15);
        assert_eq!(u["network"]["rxBytes"], 100);
        assert_eq!(u["memory"]["limitBytes"], Value::Null);
        assert!(u["containers"]["b"].is_object());
    }
}
