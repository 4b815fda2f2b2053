//! The real [`PodHost`]: cgroups, shims, containerd and the pod network of
//! this node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tracing::{error, warn};

use super::host::{PodHost, ProcessTrace, StartRequest, StartResult, StopOutcome, StopTarget};
use crate::cgroups::CgroupManager;
use crate::metrics::collector::Target;
use crate::network::PodNetwork;
use crate::runtime::containerd::{self, ContainerInfo, ContainerdError};
use crate::runtime::link::ContainerdLink;
use crate::runtime::process::ProcessRuntime;
use crate::state::{ExitRecord, PodRecord, ProcId, RunRecord};

/// Pauses between two `Wait` calls on a task while containerd is
/// unreachable: from 200 ms, doubling, at most 5 s, until it answers.
const WAIT_RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_max_delay(Duration::from_secs(5))
    .without_max_times();

/// What the Node Manager drives on the host.
pub struct Backends {
    pub store: crate::state::Store,
    pub cgroups: CgroupManager,
    /// Bare processes (shims).
    pub process: ProcessRuntime,
    /// Image containers, once containerd answers.
    pub containerd: ContainerdLink,
    pub network: Arc<PodNetwork>,
}

/// This node's cgroups, shims, containerd and pod network.
pub struct NodeHost {
    pub(super) cgroups: CgroupManager,
    pub(super) process: ProcessRuntime,
    pub(super) containerd: ContainerdLink,
    pub(super) network: Arc<PodNetwork>,
    /// Where pod logs are written (`/var/log/pods`).
    pub(super) log_dir: PathBuf,
    /// Who bare processes run as.
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The node's log rotation limits.
    pub(super) log_rotation: crate::logs::Rotation,
    /// How long a container has between SIGTERM and SIGKILL.
    stop_grace_period: Duration,
    /// How long a deleted pod's logs stay.
    log_retention: crate::logs::retention::Retention,
}

impl NodeHost {
    pub fn new(backends: Backends, settings: &super::AgentSettings) -> Self {
        NodeHost {
            cgroups: backends.cgroups,
            process: backends.process,
            containerd: backends.containerd,
            network: backends.network,
            log_dir: settings.log_dir.clone(),
            uid: settings.uid,
            gid: settings.gid,
            log_rotation: settings.log_rotation,
            stop_grace_period: settings.stop_grace_period,
            log_retention: settings.log_retention.clone(),
        }
    }

    /// Stops and removes image containers through containerd, waiting for
    /// it if it is down: whether all were removed, and the names of those
    /// killed after the grace period.
    async fn stop_images(&self, instance_id: &str, ids: Vec<(String, String)>) -> StopOutcome {
        if ids.is_empty() {
            return StopOutcome {
                clean: true,
                killed: Vec::new(),
            };
        }
        let cd = match self.containerd.get() {
            Some(cd) => cd,
            None => {
                warn!(pod = %instance_id, "delete waits for containerd");
                self.containerd.connected().await
            }
        };
        let grace = self.stop_grace_period;
        let stopped = futures::future::join_all(ids.iter().map(|(name, id)| {
            let cd = cd.clone();
            async move {
                let killed = match cd.runtime.stop(id, grace).await {
                    Ok(killed) => killed,
                    Err(e) => {
                        warn!(container = %id, error = %crate::error_chain(&e), "cannot stop container");
                        false
                    }
                };
                let removed = match cd.runtime.remove(id).await {
                    Ok(()) => true,
                    Err(e) => {
                        error!(container = %id, error = %crate::error_chain(&e), "cannot remove container");
                        false
                    }
                };
                (name.clone(), killed, removed)
            }
        }))
        .await;
        StopOutcome {
            clean: stopped.iter().all(|(_, _, removed)| *removed),
            killed: stopped
                .into_iter()
                .filter(|(_, killed, _)| *killed)
                .map(|(name, _, _)| name)
                .collect(),
        }
    }

    /// Removes cgroups and run directories that belong to no pod.
    fn remove_orphaned_cgroups(&self, pods: &HashMap<String, Vec<String>>) {
        let owned = |name: &str| {
            pods.iter()
                .any(|(id, names)| names.iter().any(|c| name == format!("{id}_{c}")))
        };
        match self.cgroups.list() {
            Ok(names) => {
                for name in names.iter().filter(|n| !owned(n)) {
                    warn!(cgroup = %name, "removing orphaned cgroup");
                    if let Err(e) = self.cgroups.by_name(name).remove() {
                        error!(cgroup = %name, error = %crate::error_chain(&e), "cannot remove orphaned cgroup");
                    }
                }
            }
            Err(e) => error!(error = %crate::error_chain(&e), "cannot list cgroups"),
        }
        for id in self.process.instances_on_disk() {
            if !pods.contains_key(&id) {
                warn!(pod = %id, "removing orphaned run directory");
                self.process.remove_instance(&id);
            }
        }
    }
}

impl PodHost for NodeHost {
    async fn start(&self, request: StartRequest) -> StartResult {
        self.start_container(request).await
    }

    async fn wait(&self, instance_id: &str, container: &str, run: &RunRecord) -> ExitRecord {
        match &run.container_id {
            Some(id) => wait_task(&self.containerd, id).await,
            None => match self.process.wait(instance_id, container, run).await {
                Some(exit) => exit,
                None => {
                    // As after a crash (recovery): what the dead shim
                    // supervised must not run beside the next run.
                    warn!(
                        pod = instance_id,
                        container, "shim ended without an exit record; emptying its cgroup"
                    );
                    self.kill_container(instance_id, container).await;
                    ExitRecord::without_status(
                        "Lost",
                        "the shim ended without recording an exit status",
                    )
                }
            },
        }
    }

    fn oom_kills(&self, instance_id: &str, container: &str) -> Option<u64> {
        crate::metrics::cgroup_stats::read(&self.cgroups.container(instance_id, container))
            .oom_kills
    }

    async fn stop(&self, instance_id: &str, containers: Vec<StopTarget>) -> StopOutcome {
        let mut processes = Vec::new();
        let mut images = Vec::new();
        for c in containers {
            if c.image {
                if let Ok(id) = containerd::container_id(instance_id, &c.name) {
                    images.push((c.name, id));
                }
            } else {
                processes.push((
                    c.name.clone(),
                    self.cgroups.container(instance_id, &c.name),
                    c.run,
                ));
            }
        }
        let grace = self.stop_grace_period;
        let bare = futures::future::join_all(
            processes
                .iter()
                .map(|(_, cg, run)| self.process.stop(run.as_ref(), cg, grace)),
        );
        let (killed, mut outcome) =
            futures::future::join(bare, self.stop_images(instance_id, images)).await;
        let killed = processes.iter().zip(killed).filter(|(_, k)| *k);
        outcome
            .killed
            .extend(killed.map(|((name, _, _), _)| name.clone()));
        crate::crash::point("delete.after_kill");
        if let Err(e) = self.network.detach(instance_id).await {
            error!(pod = %instance_id, error = %crate::error_chain(&e), "cannot remove the pod network");
            outcome.clean = false;
        }
        crate::crash::point("delete.after_network_detach");
        outcome
    }

    fn release(&self, pod: &PodRecord) -> bool {
        let instance_id = &pod.instance_id;
        let mut clean = true;
        for c in &pod.containers {
            if let Err(e) = self.cgroups.container(instance_id, &c.name).remove() {
                error!(pod = %instance_id, container = %c.name, error = %crate::error_chain(&e), "cannot remove cgroup");
                clean = false;
            }
        }
        if !clean {
            return false;
        }
        crate::crash::point("delete.after_cgroup_removed");
        self.process.remove_instance(instance_id);
        let dir = crate::logs::pod_dir(&self.log_dir, &pod.manifest.name, instance_id);
        self.log_retention.pod_deleted(&dir);
        true
    }

    fn is_alive(&self, process: &ProcId) -> bool {
        process.is_alive()
    }

    fn process_trace(&self, instance_id: &str, container: &str) -> ProcessTrace {
        ProcessTrace {
            started: self.process.read_started(instance_id, container),
            exit: self.process.read_exit(instance_id, container),
        }
    }

    fn in_cgroup(&self, instance_id: &str, container: &str, pid: i32) -> bool {
        self.cgroups.container(instance_id, container).contains(pid)
    }

    async fn kill_container(&self, instance_id: &str, container: &str) {
        let cg = self.cgroups.container(instance_id, container);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || cg.kill_all()).await {
            error!(pod = %instance_id, container, error = %crate::error_chain(&e), "cannot empty cgroup");
        }
    }

    async fn remove_orphans(&self, pods: &HashMap<String, Vec<String>>) {
        self.remove_orphaned_cgroups(pods);
        let mut live: Vec<String> = pods.keys().cloned().collect();
        live.sort();
        if let Err(e) = self.network.reconcile(&live).await {
            error!(error = %crate::error_chain(&e), "cannot remove stale pod networks");
        }
    }

    async fn containerd_connected(&self) {
        self.containerd.connected().await;
    }

    async fn containerd_inventory(
        &self,
    ) -> Result<(Vec<ContainerInfo>, Vec<String>), ContainerdError> {
        let cd = self.containerd.connected().await;
        let containers = cd.runtime.list().await?;
        let snapshots = cd.runtime.container_snapshots().await.unwrap_or_else(|e| {
            warn!(error = %crate::error_chain(&e), "cannot list snapshots");
            Vec::new()
        });
        Ok((containers, snapshots))
    }

    async fn remove_containers(&self, ids: Vec<String>) {
        let runtime = self.containerd.connected().await.runtime;
        for id in ids {
            warn!(container = %id, "removing a container of an unknown instance");
            let removed = match runtime.remove(&id).await {
                Ok(()) => runtime.remove_leftover_snapshot(&id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                error!(container = %id, error = %crate::error_chain(&e), "cannot remove orphaned container");
            }
        }
    }

    fn pod_ip(&self, pod: &PodRecord) -> Option<IpAddr> {
        if pod.manifest.spec.host_network {
            crate::metrics::node::internal_ip()
        } else {
            self.network.ip(&pod.instance_id).map(IpAddr::V4)
        }
    }

    fn cgroup_path(&self, instance_id: &str, container: &str) -> String {
        self.cgroups
            .container(instance_id, container)
            .rel()
            .to_string()
    }

    fn targets(&self, pods: Vec<&PodRecord>) -> Vec<Target> {
        pods.into_iter()
            .flat_map(|p| {
                // A host-network pod's traffic is the node's.
                let pod_ip = (!p.manifest.spec.host_network)
                    .then(|| self.network.ip(&p.instance_id))
                    .flatten()
                    .map(IpAddr::V4);
                // Waiting containers too: their cgroup lives on, and an OOM
                // kill is seen after the process is gone.
                p.containers.iter().map(move |c| Target {
                    app: p.manifest.name.clone(),
                    instance: p.instance_id.clone(),
                    container: c.name.clone(),
                    cgroup: self.cgroups.container(&p.instance_id, &c.name),
                    pod_ip,
                })
            })
            .collect()
    }
}

/// Waits for a containerd task to end, across containerd restarts (the
/// task keeps running in its shim; `Wait` is simply asked again).
async fn wait_task(link: &ContainerdLink, id: &str) -> ExitRecord {
    let mut warned = false;
    let wait = || async { link.connected().await.runtime.wait(id).await };
    let ended = wait
        .retry(WAIT_RETRY)
        .when(|e: &ContainerdError| !e.is_not_found())
        .notify(|e, _| {
            if !std::mem::replace(&mut warned, true) {
                warn!(container = id, error = %crate::error_chain(e), "lost track of a container task; asking containerd again");
            }
        })
        .await;
    match ended {
        Ok(exit) => exit.to_exit_record(),
        Err(_) => {
            ExitRecord::without_status("Lost", "containerd has no task for this container any more")
        }
    }
}
