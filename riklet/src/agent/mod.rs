//! The Node Manager: turns scheduler instructions into running pods and
//! keeps them so.
//!
//! One task owns every pod record and handles one [`Event`] at a time
//! (create, destroy, a container started or exited, a restart is due, a
//! query), so there is no lock and no race between a restart and a delete.
//! Anything slow runs in a task of its own that reports back with an
//! event: attaching the pod to its network, pulling an image, starting a
//! container (a shim for a bare process, a containerd task for an image),
//! waiting for it to end, stopping it, a back-off. Every change is written
//! to the runtime memory before it is reported.
//!
//! A pod is a set of containers sharing one network namespace (unless
//! `hostNetwork`): image containers run under containerd, `exec`
//! containers as bare processes that join the same namespace. A container
//! that cannot be set up — its image cannot be pulled, the pod gets no
//! address, containerd is down — is retried with back-off whatever the
//! restart policy (it never ran), without counting a restart; the pod is
//! FAILED meanwhile with the reason (CREATING while only containerd is
//! missing).
//!
//! # Layout
//! - this file: the event loop and its decisions (create, restart,
//!   back-off, delete);
//! - [`phase`]: the pod phase derived from its containers;
//! - `recover`: crash recovery of bare processes and image containers;
//! - [`host`]: the trait through which every decision acts on the node;
//!   `node` is the real node, `start` how one container is started;
//! - `view`: the status object reported for a pod.

mod host;
mod node;
mod phase;
mod recover;
mod start;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::common::ResourceStatus;
use proto::manifest::{self, RestartPolicy};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

pub use host::{PodHost, ProcessTrace, StartRequest, StartResult, StopTarget};
pub use node::{Backends, NodeHost};

use crate::metrics::collector::{PodUsage, Target};
use crate::runtime::containerd;
use crate::state::{ContainerRecord, ExitRecord, Phase, PodRecord, RunRecord, Store, now_ms};
use phase::{CONTAINERD_UNAVAILABLE, is_setup_failure, pod_phase};
use recover::ContainerdSync;

/// A run that lasted this long resets the crash-loop back-off (kubelet).
const BACKOFF_RESET_MS: i64 = 10 * 60 * 1000;
/// Delay before a delete whose clean-up failed is tried again.
const STOP_RETRY: Duration = Duration::from_secs(5);

/// Settings of the Node Manager.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node: String,
    pub log_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub stop_grace_period: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub keep_logs_on_delete: bool,
}

/// A pod's status as reported to the scheduler.
#[derive(Debug, Clone)]
pub struct InstanceReport {
    pub instance_id: String,
    pub status: ResourceStatus,
    /// Seed 004's realtime app object (JSON).
    pub metrics: String,
}

/// What the agent task reacts to.
#[derive(Debug)]
enum Event {
    Create {
        instance_id: String,
        definition: String,
    },
    Destroy {
        instance_id: String,
    },
    Started {
        instance_id: String,
        container: String,
        result: StartResult,
    },
    Exited {
        instance_id: String,
        container: String,
        run: RunRecord,
        exit: ExitRecord,
    },
    RestartDue {
        instance_id: String,
        container: String,
    },
    Stopped {
        instance_id: String,
        /// Everything was removed; otherwise the stop is tried again.
        clean: bool,
    },
    RetryStop {
        instance_id: String,
    },
    RetryContainerd,
    Reports(oneshot::Sender<Vec<InstanceReport>>),
    Pods(oneshot::Sender<Vec<Value>>),
    Targets(oneshot::Sender<Vec<Target>>),
}
/// Cheap handle to talk to the agent task.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::UnboundedSender<Event>,
}

impl AgentHandle {
    /// Asks for an instance to be created (idempotent).
    pub fn create(&self, instance_id: String, definition: String) {
        let _ = self.tx.send(Event::Create {
            instance_id,
            definition,
        });
    }

    /// Asks for an instance to be destroyed (idempotent).
    pub fn destroy(&self, instance_id: String) {
        let _ = self.tx.send(Event::Destroy { instance_id });
    }

    /// Current status of every pod.
    pub async fn reports(&self) -> Vec<InstanceReport> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Reports(tx));
        rx.await.unwrap_or_default()
    }

    /// The containers of live pods, for the metrics collector.
    pub async fn targets(&self) -> Vec<Target> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Targets(tx));
        rx.await.unwrap_or_default()
    }

    /// Detailed view of every pod (for `riklet pods`).
    pub async fn pods(&self) -> Vec<Value> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Pods(tx));
        rx.await.unwrap_or_default()
    }
}

/// The Node Manager task's state.
pub struct Agent<H: PodHost = NodeHost> {
    settings: AgentSettings,
    store: Store,
    /// Everything the agent does to the node goes through it.
    host: Arc<H>,
    /// Whether image containers were reconciled with containerd.
    containerd: ContainerdSync,
    usage: PodUsage,
    pods: HashMap<String, PodRecord>,
    /// Starts in flight (instance, container): they report back with
    /// [`Event::Started`]. A record marked `starting` that is not here was
    /// being started by a riklet that died.
    jobs: HashSet<(String, String)>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    reports: mpsc::UnboundedSender<InstanceReport>,
}

impl Agent<NodeHost> {
    /// Builds the agent on this node; `reports` receives every status
    /// change.
    pub fn new(
        settings: AgentSettings,
        backends: Backends,
        usage: PodUsage,
        reports: mpsc::UnboundedSender<InstanceReport>,
    ) -> Self {
        let store = backends.store.clone();
        let host = NodeHost::new(backends, &settings);
        Agent::with_host(settings, store, host, usage, reports)
    }
}

impl<H: PodHost> Agent<H> {
    /// Builds the agent on any host (a fake one in tests).
    fn with_host(
        settings: AgentSettings,
        store: Store,
        host: H,
        usage: PodUsage,
        reports: mpsc::UnboundedSender<InstanceReport>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Agent {
            settings,
            store,
            host: Arc::new(host),
            containerd: ContainerdSync::Waiting,
            usage,
            pods: HashMap::new(),
            jobs: HashSet::new(),
            tx,
            rx,
            reports,
        }
    }

    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            tx: self.tx.clone(),
        }
    }

    /// Recovers the pods of the runtime memory on the node (and with
    /// containerd once it answers), then serves events until `shutdown`
    /// fires. Pods keep running after it returns.
    pub async fn run(mut self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        if let Err(e) = self.recover().await {
            error!(error = %crate::error_chain(&e), "cannot read the runtime memory");
        }
        let host = self.host.clone();
        loop {
            let waiting = self.containerd == ContainerdSync::Waiting;
            tokio::select! {
                _ = shutdown.recv() => break,
                Some(ev) = self.rx.recv() => self.on_event(ev).await,
                () = host.containerd_connected(), if waiting => self.recover_containerd().await,
            }
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Create {
                instance_id,
                definition,
            } => self.create(instance_id, &definition),
            Event::Destroy { instance_id } => self.destroy(&instance_id),
            Event::Started {
                instance_id,
                container,
                result,
            } => self.started(&instance_id, &container, result),
            Event::Exited {
                instance_id,
                container,
                run,
                exit,
            } => self.exited(&instance_id, &container, &run, exit),
            Event::RestartDue {
                instance_id,
                container,
            } => self.restart_due(&instance_id, &container),
            Event::Stopped { instance_id, clean } => self.stopped(&instance_id, clean),
            Event::RetryStop { instance_id } => {
                if self
                    .pods
                    .get(&instance_id)
                    .is_some_and(|p| p.phase == Phase::Destroying)
                {
                    self.spawn_stop(&instance_id);
                }
            }
            Event::RetryContainerd => {
                if self.containerd == ContainerdSync::RetryScheduled {
                    self.containerd = ContainerdSync::Waiting;
                }
            }
            Event::Reports(tx) => {
                let reports = self
                    .sorted_ids()
                    .iter()
                    .map(|id| self.report_of(&self.pods[id]))
                    .collect();
                let _ = tx.send(reports);
            }
            Event::Targets(tx) => {
                let live = self
                    .pods
                    .values()
                    .filter(|p| p.phase != Phase::Destroying)
                    .collect();
                let _ = tx.send(self.host.targets(live));
            }
            Event::Pods(tx) => {
                let views = self
                    .sorted_ids()
                    .iter()
                    .map(|id| self.view(&self.pods[id]))
                    .collect();
                let _ = tx.send(views);
            }
        }
    }

    // ---- create --------------------------------------------------------

    fn create(&mut self, instance_id: String, definition: &str) {
        if let Some(pod) = self.pods.get(&instance_id) {
            // A scheduler that lost track re-sends CREATE: answer with what is.
            let report = self.report_of(pod);
            let _ = self.reports.send(report);
            return;
        }
        let refuse = |reason: String| InstanceReport {
            instance_id: instance_id.clone(),
            status: ResourceStatus::Failed,
            metrics: json!({"appId": instance_id, "state": "FAILED", "reason": reason}).to_string(),
        };
        if let Err(e) = manifest::validate_instance_id(&instance_id) {
            warn!(pod = %instance_id, error = %e, "refused instance");
            let _ = self.reports.send(refuse(e.to_string()));
            return;
        }
        let manifest = match manifest::parse_definition(definition) {
            Ok(m) => m,
            Err(e) => {
                warn!(pod = %instance_id, error = %e, "refused definition");
                let _ = self
                    .reports
                    .send(refuse(format!("invalid definition: {e}")));
                return;
            }
        };
        // containerd ids are stricter than instance ids (no "--", 76 bytes).
        for c in manifest
            .spec
            .containers
            .iter()
            .filter(|c| c.image.is_some())
        {
            if let Err(e) = containerd::container_id(&instance_id, &c.name) {
                warn!(pod = %instance_id, error = %e, "refused instance");
                let _ = self
                    .reports
                    .send(refuse(format!("container {:?}: {e}", c.name)));
                return;
            }
        }
        let now = now_ms();
        let pod = PodRecord {
            instance_id: instance_id.clone(),
            containers: manifest
                .spec
                .containers
                .iter()
                .map(|c| ContainerRecord {
                    name: c.name.clone(),
                    restart_count: 0,
                    run: None,
                    last_exit: None,
                    restart_at: None,
                    backoff_secs: 0,
                    oom_kills_at_start: None,
                    starting: true,
                })
                .collect(),
            manifest,
            phase: Phase::Creating,
            reason: None,
            created_at: now,
            updated_at: now,
        };
        info!(pod = %instance_id, app = %pod.manifest.name, "creating pod");
        let names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
        self.pods.insert(instance_id.clone(), pod);
        self.commit(&instance_id);
        for name in names {
            self.spawn_start(&instance_id, &name);
        }
    }

    /// Marks a container as starting, saves it, and starts it in the
    /// background.
    fn start_container(&mut self, instance_id: &str, name: &str) {
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        c.starting = true;
        c.restart_at = None;
        self.settle_phase(instance_id);
        self.spawn_start(instance_id, name);
    }

    /// Starts a container (marked `starting`) in a task of its own, which
    /// reports back with [`Event::Started`]: attach the pod to its network,
    /// then pull and run the image under containerd, or run the shim of a
    /// bare process.
    fn spawn_start(&mut self, instance_id: &str, name: &str) {
        if self
            .jobs
            .contains(&(instance_id.to_string(), name.to_string()))
        {
            return; // already being started
        }
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let Some(container) = pod.manifest.spec.containers.iter().find(|c| c.name == name) else {
            error!(
                pod = instance_id,
                container = name,
                "no such container in the manifest"
            );
            return;
        };
        let request = StartRequest {
            instance_id: instance_id.to_string(),
            app: pod.manifest.name.clone(),
            host_network: pod.manifest.spec.host_network,
            container: container.clone(),
        };
        self.jobs
            .insert((instance_id.to_string(), name.to_string()));
        let (host, tx) = (self.host.clone(), self.tx.clone());
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        tokio::spawn(async move {
            let result = host.start(request).await;
            let _ = tx.send(Event::Started {
                instance_id,
                container,
                result,
            });
        });
    }

    fn started(&mut self, instance_id: &str, name: &str, result: StartResult) {
        self.jobs
            .remove(&(instance_id.to_string(), name.to_string()));
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let destroying = pod.phase == Phase::Destroying;
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        c.starting = false;
        if destroying {
            // The delete waited for this start: now it can stop everything.
            if let Ok((run, _)) = result {
                c.run = Some(run);
            }
            self.commit(instance_id);
            if !self.has_jobs(instance_id) {
                self.spawn_stop(instance_id);
            }
            return;
        }
        match result {
            Ok((run, oom_kills)) => {
                info!(
                    pod = instance_id,
                    container = name,
                    pid = run.process.pid,
                    containerd = run.container_id.is_some(),
                    "container started"
                );
                c.run = Some(run.clone());
                c.restart_at = None;
                c.oom_kills_at_start = oom_kills;
                self.settle_phase(instance_id);
                self.watch(instance_id, name, run);
            }
            Err(exit) => {
                warn!(
                    pod = instance_id,
                    container = name,
                    reason = %exit.reason,
                    message = exit.message.as_deref().unwrap_or(""),
                    "container failed to start"
                );
                self.after_exit(instance_id, name, exit);
            }
        }
    }

    /// Waits in the background for a run to end.
    fn watch(&self, instance_id: &str, container: &str, run: RunRecord) {
        let (host, tx) = (self.host.clone(), self.tx.clone());
        let (instance_id, container) = (instance_id.to_string(), container.to_string());
        tokio::spawn(async move {
            let exit = host.wait(&instance_id, &container, &run).await;
            let _ = tx.send(Event::Exited {
                instance_id,
                container,
                run,
                exit,
            });
        });
    }

    // ---- exits and restarts -------------------------------------------

    fn exited(&mut self, instance_id: &str, name: &str, run: &RunRecord, exit: ExitRecord) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        let Some(c) = pod.containers.iter().find(|c| c.name == name) else {
            return;
        };
        if c.run.as_ref() != Some(run) {
            return; // a stale watcher of an older run
        }
        let mut exit = exit;
        // containerd's wait already says OOMKilled (read from the task's
        // cgroup before it is deleted); a bare process's cgroup is ours.
        if !run.is_containerd() {
            let oom_now = self.host.oom_kills(instance_id, name);
            if !exit.success() && oom_now > c.oom_kills_at_start.or(Some(0)) {
                exit.reason = "OOMKilled".into();
            }
        }
        if exit.reason == "OOMKilled" && exit.message.is_none() {
            exit.message =
                Some("killed by the OOM killer: the container reached its memory limit".into());
        }
        info!(pod = instance_id, container = name, code = ?exit.exit_code, signal = ?exit.signal, reason = %exit.reason, "container exited");
        self.after_exit(instance_id, name, exit);
    }

    /// Records an exit (or a failed start) and applies the restart policy;
    /// a container that could not be set up is retried whatever the policy.
    fn after_exit(&mut self, instance_id: &str, name: &str, exit: ExitRecord) {
        let Some(policy) = self
            .pods
            .get(instance_id)
            .map(|p| p.manifest.spec.restart_policy)
        else {
            return;
        };
        let (initial, max) = (
            self.settings.backoff_initial.as_secs().max(1),
            self.settings.backoff_max.as_secs(),
        );
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        let ran_ms = c
            .run
            .as_ref()
            .map(|r| exit.finished_at - r.started_at)
            .unwrap_or(0);
        c.run = None;
        c.starting = false;
        let setup = is_setup_failure(&exit.reason);
        let restart = setup
            || match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Never => false,
            };
        // containerd coming back is noticed by a retry: keep it short.
        let doubling = exit.reason != CONTAINERD_UNAVAILABLE;
        c.last_exit = Some(exit);
        if restart {
            c.backoff_secs = if c.backoff_secs == 0 || ran_ms >= BACKOFF_RESET_MS || !doubling {
                initial
            } else {
                (c.backoff_secs * 2).min(max)
            };
            let delay = Duration::from_secs(c.backoff_secs);
            c.restart_at = Some(now_ms() + delay.as_millis() as i64);
            info!(pod = instance_id, container = name, backoff = ?delay, "restart scheduled");
            self.schedule_restart(instance_id, name, delay);
        }
        self.settle_phase(instance_id);
    }

    fn schedule_restart(&self, instance_id: &str, name: &str, delay: Duration) {
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDue {
                instance_id,
                container,
            });
        });
    }

    fn restart_due(&mut self, instance_id: &str, name: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        let Some(c) = pod.containers.iter().find(|c| c.name == name) else {
            return;
        };
        if c.run.is_some() || c.restart_at.is_none() || c.starting {
            return; // already restarted (an earlier timer, or containerd came back)
        }
        // A container that never ran is not restarted, only retried.
        let ran = !c
            .last_exit
            .as_ref()
            .is_some_and(|e| is_setup_failure(&e.reason));
        if ran && let Some(c) = self.container_mut(instance_id, name) {
            c.restart_count += 1;
        }
        self.start_container(instance_id, name);
    }

    /// Derives the pod phase from its containers, saves and reports it.
    fn settle_phase(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get_mut(instance_id) else {
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        let (phase, reason) = pod_phase(&pod.containers);
        if pod.phase != phase {
            info!(pod = instance_id, from = ?pod.phase, to = ?phase, "pod phase");
        }
        pod.phase = phase;
        pod.reason = reason;
        self.commit(instance_id);
    }

    // ---- destroy -------------------------------------------------------

    fn destroy(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get_mut(instance_id) else {
            // RIK's scheduler may destroy what we do not run: that is done.
            let _ = self.reports.send(InstanceReport {
                instance_id: instance_id.to_string(),
                status: ResourceStatus::Terminated,
                metrics: json!({"appId": instance_id, "state": "TERMINATED"}).to_string(),
            });
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        info!(pod = instance_id, "destroying pod");
        pod.phase = Phase::Destroying;
        pod.reason = None;
        self.commit(instance_id);
        // A start in flight reports back first (`started` then stops).
        if !self.has_jobs(instance_id) {
            self.spawn_stop(instance_id);
        }
    }

    /// Stops every container in the background (bare processes through
    /// their cgroup, image containers through containerd, waiting for it
    /// if it is down), removes the containerd containers and the pod's
    /// network, then sends `Stopped`.
    fn spawn_stop(&self, instance_id: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let containers = pod
            .containers
            .iter()
            .map(|c| StopTarget {
                name: c.name.clone(),
                image: pod
                    .manifest
                    .spec
                    .containers
                    .iter()
                    .any(|s| s.name == c.name && s.image.is_some()),
                run: c.run.clone(),
            })
            .collect();
        let (host, tx) = (self.host.clone(), self.tx.clone());
        let instance_id = instance_id.to_string();
        tokio::spawn(async move {
            let clean = host.stop(&instance_id, containers).await;
            let _ = tx.send(Event::Stopped { instance_id, clean });
        });
    }

    /// Final clean-up of a destroyed pod: cgroups, run and log directories,
    /// runtime memory.
    fn stopped(&mut self, instance_id: &str, clean: bool) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let clean = clean && self.host.release(pod);
        if !clean {
            // Keep the record (a riklet restart resumes the delete too).
            warn!(pod = instance_id, retry_in = ?STOP_RETRY, "delete incomplete; retrying");
            let tx = self.tx.clone();
            let instance_id = instance_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(STOP_RETRY).await;
                let _ = tx.send(Event::RetryStop { instance_id });
            });
            return;
        }
        if let Err(e) = self.store.remove(instance_id) {
            error!(pod = instance_id, error = %e, "cannot forget pod");
        }
        self.pods.remove(instance_id);
        info!(pod = instance_id, "pod destroyed");
        let _ = self.reports.send(InstanceReport {
            instance_id: instance_id.to_string(),
            status: ResourceStatus::Terminated,
            metrics:
                json!({"appId": instance_id, "state": "TERMINATED", "runsOn": self.settings.node})
                    .to_string(),
        });
    }

    // ---- helpers -------------------------------------------------------

    /// Whether a start of one of the pod's containers is in flight.
    fn has_jobs(&self, instance_id: &str) -> bool {
        self.jobs.iter().any(|(i, _)| i == instance_id)
    }

    fn container_mut(&mut self, instance_id: &str, name: &str) -> Option<&mut ContainerRecord> {
        self.pods
            .get_mut(instance_id)?
            .containers
            .iter_mut()
            .find(|c| c.name == name)
    }

    /// Saves a pod record and reports its status.
    fn commit(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get_mut(instance_id) else {
            return;
        };
        pod.updated_at = now_ms();
        if let Err(e) = self.store.save(pod) {
            error!(pod = instance_id, error = %e, "cannot save pod record");
        }
        let report = self.report_of(&self.pods[instance_id]);
        let _ = self.reports.send(report);
    }

    /// The pod's status view ([`view::app_status`]).
    fn view(&self, pod: &PodRecord) -> Value {
        let cgroup = |name: &str| self.host.cgroup_path(&pod.instance_id, name);
        view::app_status(
            pod,
            &view::ViewInputs {
                node: &self.settings.node,
                ip: self.host.pod_ip(pod),
                usage: self.usage.get(&pod.instance_id),
                cgroup: &cgroup,
            },
        )
    }

    fn report_of(&self, pod: &PodRecord) -> InstanceReport {
        InstanceReport {
            instance_id: pod.instance_id.clone(),
            status: pod.phase.status(),
            metrics: self.view(pod).to_string(),
        }
    }

    /// Pod ids in order, for stable listings and recovery.
    fn sorted_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.pods.keys().cloned().collect();
        ids.sort();
        ids
    }
}
