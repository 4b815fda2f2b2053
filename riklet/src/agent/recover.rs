//! Crash recovery: after a start, the runtime memory and the node are
//! brought back in line. Bare processes are recovered at once (their shims
//! kept running); image containers once containerd answers. Whatever
//! belongs to no remembered pod is removed.

use std::collections::HashMap;
use std::time::Duration;

use tracing::{error, info, warn};

use super::host::PodHost;
use super::phase::CONTAINERD_UNAVAILABLE;
use super::{Agent, Event};
use crate::clock::now_ms;
use crate::runtime::containerd::{self, ContainerInfo, TaskStatus};
use crate::state::{ExitRecord, Phase, ProcId, RunRecord};

/// Delay before a failed reconciliation with containerd is tried again.
const CONTAINERD_RETRY: Duration = Duration::from_secs(2);

impl<H: PodHost> Agent<H> {
    /// Brings the runtime memory and the host back in line after a start:
    /// adopts live bare processes (checked by pid, start time and cgroup),
    /// records exits that happened while the riklet was away, resumes
    /// deletes and back-offs, removes cgroups, run directories and pod
    /// networks nobody owns. Image containers are reconciled once
    /// containerd answers ([`Self::recover_containerd`]).
    pub(super) async fn recover(&mut self) -> crate::state::Result<()> {
        for pod in self.store.load_all()? {
            self.pods.insert(pod.instance_id.clone(), pod);
        }
        for id in self.sorted_ids() {
            let Some(pod) = self.pods.get(&id) else {
                warn!(pod = %id, "record gone during recovery; skipped");
                continue;
            };
            if pod.phase == Phase::Destroying {
                info!(pod = %id, "resuming delete");
                self.spawn_stop(&id);
                continue;
            }
            for (name, image) in self.container_kinds(&id) {
                if image {
                    self.resume_backoff(&id, &name);
                } else {
                    self.recover_process(&id, &name).await;
                }
            }
            self.settle_phase(&id);
        }
        let owned: HashMap<String, Vec<String>> = self
            .pods
            .values()
            .map(|p| {
                let names = p.containers.iter().map(|c| c.name.clone()).collect();
                (p.instance_id.clone(), names)
            })
            .collect();
        self.host.remove_orphans(&owned).await;
        Ok(())
    }

    /// Each container of a pod's manifest, and whether it is an image.
    /// None (logged) when the pod has no record.
    fn container_kinds(&self, id: &str) -> Vec<(String, bool)> {
        let Some(pod) = self.pods.get(id) else {
            warn!(pod = %id, "no record of the pod; its containers are skipped");
            return Vec::new();
        };
        pod.manifest
            .spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.image.is_some()))
            .collect()
    }

    /// An image container waiting for a restart: only the back-off can be
    /// resumed without containerd.
    fn resume_backoff(&mut self, id: &str, name: &str) {
        let Some(c) = self.container_mut(id, name) else {
            return;
        };
        if let (None, Some(at), false) = (&c.run, c.restart_at, c.starting) {
            let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
            self.schedule_restart(id, name, delay);
        }
    }

    async fn recover_process(&mut self, id: &str, name: &str) {
        let trace = self.host.process_trace(id, name);
        let Some(c) = self.container_mut(id, name) else {
            return;
        };
        let was_starting = std::mem::take(&mut c.starting);
        let c = c.clone();
        // The run dir is the truth for the current run: the riklet may have
        // died between starting a shim and saving its record.
        let run = c.run.clone().or_else(|| {
            trace
                .started
                .map(|s| RunRecord::process(s.shim, s.process, s.started_at))
        });
        let already_recorded = |e: &ExitRecord| {
            c.last_exit
                .as_ref()
                .is_some_and(|l| l.finished_at == e.finished_at)
        };
        match (run, trace.exit) {
            (Some(run), Some(exit)) if !already_recorded(&exit) => {
                info!(pod = id, container = name, reason = %exit.reason, "exited while riklet was away");
                self.set_run(id, name, Some(run));
                self.after_exit(id, name, exit);
            }
            (Some(run), None) if run.shim.is_some_and(|s| self.host.is_alive(&s)) => {
                let process_ok = self.host.is_alive(&run.process)
                    && self.host.in_cgroup(id, name, run.process.pid);
                info!(
                    pod = id,
                    container = name,
                    pid = run.process.pid,
                    process_ok,
                    "adopting running container"
                );
                // If the process is gone the shim is about to record it.
                self.adopt(id, name, run);
            }
            (Some(run), None) => {
                warn!(
                    pod = id,
                    container = name,
                    "shim vanished without an exit record"
                );
                self.host.kill_container(id, name).await;
                self.set_run(id, name, Some(run));
                let exit =
                    ExitRecord::without_status("Lost", "the shim died while the riklet was away");
                self.after_exit(id, name, exit);
            }
            _ => {
                self.set_run(id, name, None);
                match c.restart_at {
                    Some(at) => {
                        let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
                        self.schedule_restart(id, name, delay);
                    }
                    None if c.last_exit.is_none() || was_starting => self.start_container(id, name),
                    None => {}
                }
            }
        }
    }

    /// Once containerd answers: adopts the running tasks of known
    /// containers (found by their `riklet.*` labels), records the exits of
    /// tasks that ended meanwhile, starts what was never started, removes
    /// containers, tasks and snapshots of unknown instances, and retries at
    /// once the containers that were waiting for containerd. If containerd
    /// cannot list its containers, this is tried again a little later.
    pub(super) async fn recover_containerd(&mut self) {
        let (listed, snapshots) = match self.host.containerd_inventory().await {
            Ok(inventory) => inventory,
            Err(e) => {
                error!(error = %crate::error_chain(&e), retry_in = ?CONTAINERD_RETRY, "cannot list containerd's containers");
                self.containerd = ContainerdSync::RetryScheduled;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CONTAINERD_RETRY).await;
                    let _ = tx.send(Event::RetryContainerd);
                });
                return;
            }
        };
        self.containerd = ContainerdSync::Done;
        let (by_id, orphans) = self.sort_containers(listed, snapshots);
        if !orphans.is_empty() {
            let host = self.host.clone();
            tokio::spawn(async move { host.remove_containers(orphans).await });
        }
        for id in self.sorted_ids() {
            if self
                .pods
                .get(&id)
                .is_none_or(|p| p.phase == Phase::Destroying)
            {
                continue;
            }
            let images = self.container_kinds(&id).into_iter().filter(|(_, i)| *i);
            for (name, _) in images {
                let Ok(cid) = containerd::container_id(&id, &name) else {
                    continue;
                };
                self.recover_image(&id, &name, &cid, by_id.get(&cid));
            }
            self.settle_phase(&id);
        }
    }

    /// Splits containerd's containers into those of known pods (by id)
    /// and the ids of containers and snapshots of unknown instances.
    fn sort_containers(
        &self,
        listed: Vec<ContainerInfo>,
        snapshots: Vec<String>,
    ) -> (HashMap<String, ContainerInfo>, Vec<String>) {
        let owned = |instance: &str, container: &str| {
            self.pods.get(instance).is_some_and(|p| {
                p.manifest
                    .spec
                    .containers
                    .iter()
                    .any(|c| c.name == container && c.image.is_some())
            })
        };
        let mut orphans = Vec::new();
        let mut by_id = HashMap::new();
        for info in listed {
            match (info.instance(), info.container()) {
                (Some(i), Some(c)) if owned(i, c) => {
                    by_id.insert(info.id.clone(), info);
                }
                (Some(_), Some(_)) => orphans.push(info.id.clone()),
                _ => warn!(container = %info.id, "container without riklet labels left alone"),
            }
        }
        for key in snapshots {
            let unknown = containerd::split_container_id(&key).is_none_or(|(i, c)| !owned(i, c));
            if unknown && !orphans.contains(&key) {
                orphans.push(key);
            }
        }
        (by_id, orphans)
    }

    fn recover_image(&mut self, id: &str, name: &str, cid: &str, info: Option<&ContainerInfo>) {
        if self.jobs.contains_key(&(id.to_string(), name.to_string())) {
            return; // being started now: it reports back
        }
        let Some(c) = self.container_mut(id, name) else {
            return;
        };
        // A start that a riklet which died left unfinished.
        let was_starting = std::mem::take(&mut c.starting);
        let unrecorded = was_starting || (c.last_exit.is_none() && c.restart_at.is_none());
        let waiting_for_containerd = c.restart_at.is_some()
            && c.last_exit
                .as_ref()
                .is_some_and(|e| e.reason == CONTAINERD_UNAVAILABLE);
        let ours = |r: &RunRecord| r.container_id.as_deref() == Some(cid);
        let recorded = c.run.clone();
        match (recorded, info.map(|i| i.status)) {
            (run, Some(TaskStatus::Running | TaskStatus::Paused)) => {
                let run = match run {
                    Some(r) if ours(&r) => r,
                    // Started, but the riklet died before saving it.
                    _ => unsaved_run(cid, info.and_then(|i| i.pid).unwrap_or(0) as i32),
                };
                info!(
                    pod = id,
                    container = name,
                    pid = run.process.pid,
                    "adopting running container"
                );
                self.adopt(id, name, run);
            }
            // `Wait` returns the exit status of an ended task at once.
            (Some(run), Some(TaskStatus::Stopped { .. })) if ours(&run) => {
                self.adopt(id, name, run)
            }
            (None, Some(TaskStatus::Stopped { .. })) if unrecorded => {
                self.adopt(id, name, unsaved_run(cid, 0))
            }
            (Some(_), _) => {
                warn!(
                    pod = id,
                    container = name,
                    "container task vanished while the riklet was away"
                );
                let exit = ExitRecord::without_status(
                    "Lost",
                    "containerd has no running task for this container",
                );
                self.after_exit(id, name, exit);
            }
            (None, _) if unrecorded => self.start_container(id, name),
            (None, _) if waiting_for_containerd => {
                let _ = self.tx.send(Event::RestartDue {
                    instance_id: id.to_string(),
                    container: name.to_string(),
                });
            }
            (None, _) => {}
        }
    }

    /// Takes a run found on the node as the container's current one,
    /// saves it and watches it.
    fn adopt(&mut self, id: &str, name: &str, run: RunRecord) {
        let Some(c) = self.container_mut(id, name) else {
            return;
        };
        c.run = Some(run.clone());
        c.restart_at = None;
        self.commit(id);
        self.watch(id, name, run);
    }

    fn set_run(&mut self, id: &str, name: &str, run: Option<RunRecord>) {
        if let Some(c) = self.container_mut(id, name) {
            c.run = run;
        }
    }
}

/// Whether the agent has reconciled its image containers with containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ContainerdSync {
    /// Waiting for containerd to answer.
    Waiting,
    /// The last attempt failed; [`Event::RetryContainerd`] comes later.
    RetryScheduled,
    /// Done (once: the connection survives containerd restarts).
    Done,
}

/// The record of a containerd task that a riklet which died started but
/// never saved.
fn unsaved_run(cid: &str, pid: i32) -> RunRecord {
    RunRecord {
        shim: None,
        process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
        started_at: now_ms(),
        container_id: Some(cid.to_string()),
        image_digest: None,
    }
}
