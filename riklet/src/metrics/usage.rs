//! The last measured usage of each pod, which the agent puts in the pod's
//! status (every heartbeat, `rik get app`).
//!
//! The collector updates it in place at every cycle: a container whose
//! sample did not change (an idle one, most of them at 500 pods) keeps its
//! entry as it is, instead of the whole table being cloned and dropped
//! each cycle.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use proto::status::{self, PodEvent};

use super::sample::{PodNetSample, PodSample, pod_usage};
use super::targets::TargetSet;

/// The last measured usage of each pod (by instance id). Kept as samples:
/// the usage is built when asked, not at every cycle. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PodUsage(Arc<RwLock<UsageTable>>);

#[derive(Debug, Default)]
pub(super) struct UsageTable {
    /// Each pod's containers, with their CPU use over the last cycle (cores).
    pub(super) pods: HashMap<String, Vec<(PodSample, Option<f64>)>>,
    /// Pod events (OOM kills).
    pub(super) events: HashMap<String, Vec<PodEvent>>,
    /// TCP retransmissions of each pod with an address of its own.
    pub(super) retransmits: HashMap<String, u64>,
}

/// One cycle's figures, as the collector hands them over.
pub(super) struct CycleUsage<'a> {
    /// The targets measured, in the order of `samples`.
    pub(super) set: &'a TargetSet,
    pub(super) samples: &'a [PodSample],
    /// Each sample's CPU use over the last cycle (cores).
    pub(super) cores: &'a [Option<f64>],
    /// The events of the live pods.
    pub(super) events: &'a HashMap<String, Vec<PodEvent>>,
    pub(super) pod_nets: &'a [PodNetSample],
}

impl PodUsage {
    /// The last usage of a pod, if measured.
    pub fn get(&self, instance: &str) -> Option<status::PodUsage> {
        let table = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut usage = pod_usage(table.pods.get(instance)?);
        usage.network.tcp_retransmits = table.retransmits.get(instance).copied();
        if let Some(events) = table.events.get(instance) {
            usage.events = events.clone();
        }
        Some(usage)
    }

    #[cfg(test)]
    pub(super) fn replace(&self, table: UsageTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// Brings the table in line with a cycle: pods that are gone leave it,
    /// and only what changed is copied.
    pub(super) fn update(&self, cycle: &CycleUsage<'_>) {
        let mut table = self.0.write().unwrap_or_else(|p| p.into_inner());
        let set = cycle.set;
        for (instance, indexes) in set.pods() {
            let fresh = indexes.iter().map(|&i| (&cycle.samples[i], cycle.cores[i]));
            match table.pods.get_mut(instance) {
                Some(kept) if kept.len() == indexes.len() => {
                    for ((sample, cores), (now, now_cores)) in kept.iter_mut().zip(fresh) {
                        if sample != now {
                            sample.clone_from(now);
                        }
                        *cores = now_cores;
                    }
                }
                _ => {
                    let measured = fresh.map(|(s, c)| (s.clone(), c)).collect();
                    table.pods.insert(instance.clone(), measured);
                }
            }
        }
        // Every pod of the cycle is in: more means some are gone.
        if table.pods.len() != set.pods().len() {
            table.pods.retain(|instance, _| set.has_instance(instance));
        }
        if table.events != *cycle.events {
            table.events.clone_from(cycle.events);
        }
        for net in cycle.pod_nets {
            match table.retransmits.get_mut(&net.instance) {
                Some(count) => *count = net.tcp_retransmits,
                None => {
                    table
                        .retransmits
                        .insert(net.instance.clone(), net.tcp_retransmits);
                }
            }
        }
        // Pods gone, or without a count this cycle (no eBPF read).
        if table.retransmits.len() != cycle.pod_nets.len() {
            let counted: std::collections::HashSet<&str> =
                cycle.pod_nets.iter().map(|n| n.instance.as_str()).collect();
            table
                .retransmits
                .retain(|instance, _| counted.contains(instance.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{ContainerCgroup, Layout};
    use crate::metrics::targets::Target;

    fn target(instance: &str, container: &str) -> Target {
        let layout = Layout::Unified {
            v2: "/sys/fs/cgroup".into(),
        };
        Target {
            app: "web".into(),
            instance: instance.into(),
            container: container.into(),
            cgroup: ContainerCgroup::at(layout, &format!("riklet/{instance}_{container}")),
            pod_ip: None,
        }
    }

    fn sample(t: &Target, cpu: f64) -> PodSample {
        PodSample {
            cpu_seconds: Some(cpu),
            ..PodSample::new(&t.app, &t.instance, &t.container, "n")
        }
    }

    fn net(instance: &str, tcp_retransmits: u64) -> PodNetSample {
        PodNetSample {
            app: "web".into(),
            instance: instance.into(),
            node: "n".into(),
            tcp_retransmits,
        }
    }

    #[test]
    fn updates_follow_the_cycles_pods_and_figures() {
        let usage = PodUsage::default();
        let events = HashMap::new();
        let targets = vec![
            target("web-1", "a"),
            target("web-1", "b"),
            target("web-2", "a"),
        ];
        let set = TargetSet::new(targets.clone(), 1);
        let samples: Vec<PodSample> = targets.iter().map(|t| sample(t, 1.0)).collect();
        usage.update(&CycleUsage {
            set: &set,
            samples: &samples,
            cores: &[None, None, None],
            events: &events,
            pod_nets: &[net("web-1", 2)],
        });
        let web1 = usage.get("web-1").expect("measured");
        assert_eq!(web1.cpu.times.usage_seconds, Some(2.0));
        assert_eq!(web1.network.tcp_retransmits, Some(2));
        assert_eq!(usage.get("web-2").unwrap().network.tcp_retransmits, None);

        // Next cycle: web-2 gone, web-1's b moved, a pod added, an event.
        let targets = vec![
            target("web-1", "a"),
            target("web-1", "b"),
            target("web-3", "a"),
        ];
        let set = TargetSet::new(targets.clone(), 1);
        let mut samples: Vec<PodSample> = targets.iter().map(|t| sample(t, 1.0)).collect();
        samples[1].cpu_seconds = Some(3.0);
        let oom = PodEvent {
            kind: status::PodEventKind::OomKill,
            container: "a".into(),
            pid: 7,
            at: 1,
        };
        let events = HashMap::from([("web-3".to_string(), vec![oom.clone()])]);
        usage.update(&CycleUsage {
            set: &set,
            samples: &samples,
            cores: &[Some(0.0), Some(2.0), None],
            events: &events,
            pod_nets: &[net("web-1", 5), net("web-3", 0)],
        });
        let web1 = usage.get("web-1").unwrap();
        assert_eq!(web1.cpu.times.usage_seconds, Some(4.0));
        assert_eq!(web1.cpu.usage_cores, Some(2.0));
        assert_eq!(web1.network.tcp_retransmits, Some(5));
        assert!(usage.get("web-2").is_none(), "a pod gone leaves the table");
        let web3 = usage.get("web-3").unwrap();
        assert_eq!(web3.events, [oom]);
        assert_eq!(web3.network.tcp_retransmits, Some(0));
        assert!(usage.get("web-1").unwrap().events.is_empty());

        // No eBPF reading: no retransmission counts.
        usage.update(&CycleUsage {
            set: &set,
            samples: &samples,
            cores: &[None, None, None],
            events: &events,
            pod_nets: &[],
        });
        assert_eq!(usage.get("web-1").unwrap().network.tcp_retransmits, None);
    }
}
