//! What the collector measures: the containers of the agent's live pods,
//! asked of the agent only when its pods changed.
//!
//! Asking every cycle meant a round trip through the agent's event loop
//! that rebuilt every target (names, cgroup paths, addresses) and the
//! collector's lookups over them, at 500 pods several thousand allocations
//! a second for a list that changes only when a pod is created, started,
//! restarted or deleted. The agent bumps a [`PodsGeneration`] after each
//! event that may change its pods; the [`TargetCache`] asks again only
//! when the generation moved, and keeps the lookups built from the list
//! ([`TargetSet`]) until then.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// How many times the agent's pods may have changed; cheap to clone and
/// to read. The agent bumps it *after* handling an event, so a reader that
/// reads it *before* asking for the targets never keeps a stale list: at
/// worst it asks once more.
#[derive(Debug, Clone, Default)]
pub struct PodsGeneration(Arc<AtomicU64>);

impl PodsGeneration {
    /// Records that the pods may have changed.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// The current generation.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The targets of one generation, and what the collection cycle looks up
/// in them, built once.
#[derive(Debug, Default)]
pub struct TargetSet {
    targets: Vec<Target>,
    /// Target index by cgroup path (relative), to find the targets of the
    /// tasks on a CPU.
    by_rel: HashMap<String, usize>,
    /// The cgroup reader (of `readers`) each target goes to.
    shards: Vec<usize>,
    readers: usize,
    /// Instances of the targets.
    instances: HashSet<String>,
    /// Each pod's targets (indexes), pods in order of their first target.
    pods: Vec<(String, Vec<usize>)>,
    /// The pods' own addresses.
    pod_ips: HashSet<IpAddr>,
}

impl TargetSet {
    /// The lookups over `targets`, whose cgroups are read by `readers`
    /// readers (at least one).
    pub fn new(targets: Vec<Target>, readers: usize) -> Self {
        let readers = readers.max(1);
        TargetSet {
            by_rel: targets
                .iter()
                .enumerate()
                .map(|(i, t)| (t.cgroup.rel().to_string(), i))
                .collect(),
            shards: targets.iter().map(|t| shard(&t.cgroup, readers)).collect(),
            readers,
            instances: targets.iter().map(|t| t.instance.clone()).collect(),
            pods: by_pod(&targets),
            pod_ips: targets.iter().filter_map(|t| t.pod_ip).collect(),
            targets,
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The index of the target whose cgroup is `rel` (relative path, a
    /// leading `/` allowed).
    pub fn by_cgroup(&self, rel: &str) -> Option<usize> {
        self.by_rel.get(rel.trim_start_matches('/')).copied()
    }

    /// The reader that reads target `index`: always the same for a
    /// container (by its cgroup path), so that it keeps its files open.
    pub fn shard(&self, index: usize) -> usize {
        self.shards[index]
    }

    /// The number of readers the shards are for (at least one).
    pub fn readers(&self) -> usize {
        self.readers.max(1)
    }

    /// Whether `instance` has a target.
    pub fn has_instance(&self, instance: &str) -> bool {
        self.instances.contains(instance)
    }

    /// Each pod (instance) with the indexes of its targets, pods in order
    /// of their first target.
    pub fn pods(&self) -> &[(String, Vec<usize>)] {
        &self.pods
    }

    /// Whether `ip` is a pod's own address.
    pub fn is_pod_ip(&self, ip: &IpAddr) -> bool {
        self.pod_ips.contains(ip)
    }
}

/// The targets of each pod, pods in order of their first target.
fn by_pod(targets: &[Target]) -> Vec<(String, Vec<usize>)> {
    let mut pods: Vec<(String, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        let pod = *index.entry(t.instance.as_str()).or_insert_with(|| {
            pods.push((t.instance.clone(), Vec::new()));
            pods.len() - 1
        });
        pods[pod].1.push(i);
    }
    pods
}

/// The reader of a container's cgroup among `readers`.
fn shard(cgroup: &ContainerCgroup, readers: usize) -> usize {
    let mut h = DefaultHasher::new();
    cgroup.rel().hash(&mut h);
    (h.finish() % readers as u64) as usize
}

/// The collector's copy of the targets, refreshed when the generation
/// moved.
#[derive(Debug)]
pub struct TargetCache {
    /// The generation `set` was asked at; `None` before the first ask.
    seen: Option<u64>,
    set: Arc<TargetSet>,
    readers: usize,
}

impl TargetCache {
    /// An empty cache for `readers` cgroup readers.
    pub fn new(readers: usize) -> Self {
        TargetCache {
            seen: None,
            set: Arc::default(),
            readers,
        }
    }

    /// The targets as of `generation` (read before calling): the cached
    /// ones if it did not move, else those `fetch` returns.
    pub async fn get<F, Fut>(&mut self, generation: u64, fetch: F) -> Arc<TargetSet>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<Target>>,
    {
        if self.seen != Some(generation) {
            self.set = Arc::new(TargetSet::new(fetch().await, self.readers));
            self.seen = Some(generation);
        }
        Arc::clone(&self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Layout;

    fn target(instance: &str, container: &str, ip: Option<&str>) -> Target {
        let layout = Layout::Unified {
            v2: "/sys/fs/cgroup".into(),
        };
        Target {
            app: "web".into(),
            instance: instance.into(),
            container: container.into(),
            cgroup: ContainerCgroup::at(layout, &format!("/riklet/{instance}_{container}")),
            pod_ip: ip.map(|ip| ip.parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn the_agent_is_asked_again_only_when_the_generation_moved() {
        let generation = PodsGeneration::default();
        let mut cache = TargetCache::new(2);
        let mut asked = 0;
        let mut pods = vec![target("web-1", "main", Some("10.88.0.2"))];
        let get = async |cache: &mut TargetCache, pods: &Vec<Target>, asked: &mut u32| {
            cache
                .get(generation.current(), || {
                    *asked += 1;
                    std::future::ready(pods.clone())
                })
                .await
        };
        let first = get(&mut cache, &pods, &mut asked).await;
        assert_eq!((asked, first.len()), (1, 1));
        // Nothing changed: the same set, not asked.
        let again = get(&mut cache, &pods, &mut asked).await;
        assert_eq!(asked, 1);
        assert!(Arc::ptr_eq(&first, &again));
        // A pod added.
        pods.push(target("web-2", "main", None));
        generation.bump();
        let added = get(&mut cache, &pods, &mut asked).await;
        assert_eq!((asked, added.len()), (2, 2));
        let names = |set: &TargetSet| -> Vec<String> {
            set.targets().iter().map(|t| t.instance.clone()).collect()
        };
        assert_eq!(names(&added), ["web-1", "web-2"]);
        assert!(added.has_instance("web-2"));
        // Removed.
        pods.remove(0);
        generation.bump();
        let removed = get(&mut cache, &pods, &mut asked).await;
        assert_eq!((asked, removed.len()), (3, 1));
        assert!(!removed.has_instance("web-1"));
        assert!(!removed.is_pod_ip(&"10.88.0.2".parse().unwrap()));
        let _ = get(&mut cache, &pods, &mut asked).await;
        assert_eq!(asked, 3);
    }

    #[test]
    fn lookups_follow_the_targets() {
        let set = TargetSet::new(
            vec![
                target("web-1", "main", Some("10.88.0.2")),
                target("web-1", "side", Some("10.88.0.2")),
                target("db-1", "main", None),
            ],
            2,
        );
        assert_eq!(set.by_cgroup("/riklet/web-1_side"), Some(1));
        assert_eq!(set.by_cgroup("riklet/db-1_main"), Some(2));
        assert_eq!(set.by_cgroup("riklet/gone_main"), None);
        assert!(set.is_pod_ip(&"10.88.0.2".parse().unwrap()));
        assert!(set.has_instance("db-1"));
        assert_eq!(
            set.pods(),
            [
                ("web-1".to_string(), vec![0, 1]),
                ("db-1".to_string(), vec![2])
            ]
        );
        assert!((0..3).all(|i| set.shard(i) < 2));
        // A container keeps its reader whatever the other targets.
        let alone = TargetSet::new(vec![target("db-1", "main", None)], 2);
        assert_eq!(alone.shard(0), set.shard(2));
    }
}
