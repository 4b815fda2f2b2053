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
//! A pod is a set of containers sharing one network namespace
//! ([`PodNetwork`], unless `hostNetwork`): image containers run under
//! containerd, `exec` containers as bare processes that join the same
//! namespace. A container that cannot be set up — its image cannot be
//! pulled, the pod gets no address, containerd is down — is retried with
//! back-off whatever the restart policy (it never ran), without counting a
//! restart; the pod is FAILED meanwhile with the reason (CREATING while
//! only containerd is missing).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proto::common::ResourceStatus;
use proto::manifest::{self, Container, ImagePullPolicy, RestartPolicy};
use proto::status::ShortStatus;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

mod view;

use crate::cgroups::{CgroupManager, ContainerCgroup, Limits};
use crate::metrics::collector::{PodUsage, Target};
use crate::network::PodNetwork;
use crate::runtime::containerd::{self, ContainerSpec, ContainerdError, TaskStatus};
use crate::runtime::image::{ImageError, PullPolicy};
use crate::runtime::link::{Connected, ContainerdLink};
use crate::runtime::oci_spec::ImageConfig;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::shim::ShimSpec;
use crate::state::{
    ContainerRecord, ExitRecord, Phase, PodRecord, ProcId, RunRecord, Store, now_ms,
};

/// A run that lasted this long resets the crash-loop back-off (kubelet).
const BACKOFF_RESET_MS: i64 = 10 * 60 * 1000;
/// Delay before a delete whose clean-up failed is tried again.
const STOP_RETRY: Duration = Duration::from_secs(5);
/// Delay before a failed reconciliation with containerd is tried again.
const CONTAINERD_RETRY: Duration = Duration::from_secs(2);
/// Longest pause between two `Wait` calls on a task while containerd is
/// unreachable.
const WAIT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Exit reason: the image could not be pulled or unpacked.
pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
/// Exit reason: the pod could not be attached to the pod network.
pub const NETWORK_ERROR: &str = "NetworkError";
/// Exit reason: containerd could not be reached.
pub const CONTAINERD_UNAVAILABLE: &str = "ContainerdUnavailable";

/// Whether an exit reason says the container could not be set up (it never
/// ran): such a container is retried whatever the restart policy.
pub fn is_setup_failure(reason: &str) -> bool {
    matches!(
        reason,
        ERR_IMAGE_PULL | NETWORK_ERROR | CONTAINERD_UNAVAILABLE
    )
}

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

/// What the Node Manager drives on the host.
pub struct Backends {
    pub store: Store,
    pub cgroups: CgroupManager,
    /// Bare processes (shims).
    pub process: ProcessRuntime,
    /// Image containers, once containerd answers.
    pub containerd: ContainerdLink,
    pub network: Arc<PodNetwork>,
}

/// A pod's status as reported to the scheduler.
#[derive(Debug, Clone)]
pub struct InstanceReport {
    pub instance_id: String,
    pub status: ResourceStatus,
    /// Seed 004's realtime app object (JSON).
    pub metrics: String,
}

/// How a start ended: the run (and the cgroup's OOM kill count at its
/// start, for bare processes), or why there is none.
type StartResult = Result<(RunRecord, Option<u64>), ExitRecord>;

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
pub struct Agent {
    settings: AgentSettings,
    store: Store,
    cgroups: CgroupManager,
    process: Arc<ProcessRuntime>,
    containerd: ContainerdLink,
    /// Reconciled with containerd's containers (done once, when it first
    /// answers; the connection survives containerd restarts).
    containerd_reconciled: bool,
    network: Arc<PodNetwork>,
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

impl Agent {
    /// Builds the agent; `reports` receives every status change.
    pub fn new(
        settings: AgentSettings,
        backends: Backends,
        usage: PodUsage,
        reports: mpsc::UnboundedSender<InstanceReport>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Agent {
            settings,
            store: backends.store,
            cgroups: backends.cgroups,
            process: Arc::new(backends.process),
            containerd: backends.containerd,
            containerd_reconciled: false,
            network: backends.network,
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

    /// Reconciles the runtime memory with the host (and with containerd
    /// once it answers), then serves events until `shutdown` fires. Pods
    /// keep running after it returns.
    pub async fn run(mut self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        if let Err(e) = self.reconcile().await {
            error!(error = %e, "cannot read the runtime memory");
        }
        let mut connected = self.containerd.changed();
        loop {
            let ready = if self.containerd_reconciled {
                None
            } else {
                connected.borrow_and_update().clone()
            };
            if let Some(c) = ready {
                self.reconcile_containerd(c).await;
            }
            tokio::select! {
                _ = shutdown.recv() => break,
                Some(ev) = self.rx.recv() => self.on_event(ev).await,
                Ok(()) = connected.changed(), if !self.containerd_reconciled => {}
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
                if !self.containerd_reconciled
                    && let Some(c) = self.containerd.get()
                {
                    self.reconcile_containerd(c).await;
                }
            }
            Event::Reports(tx) => {
                let mut ids: Vec<&String> = self.pods.keys().collect();
                ids.sort();
                let reports = ids
                    .into_iter()
                    .map(|id| self.report_of(&self.pods[id]))
                    .collect();
                let _ = tx.send(reports);
            }
            Event::Targets(tx) => {
                let agent = &*self;
                let targets = agent
                    .pods
                    .values()
                    .filter(|p| p.phase != Phase::Destroying)
                    .flat_map(|p| {
                        // A host-network pod's traffic is the node's.
                        let pod_ip = (!p.manifest.spec.host_network)
                            .then(|| agent.network.ip(&p.instance_id))
                            .flatten()
                            .map(IpAddr::V4);
                        // Waiting containers too: their cgroup lives on, and
                        // an OOM kill is seen after the process is gone.
                        p.containers.iter().map(move |c| Target {
                            app: p.manifest.name.clone(),
                            instance: p.instance_id.clone(),
                            container: c.name.clone(),
                            cgroup: agent.cgroups.container(&p.instance_id, &c.name),
                            pod_ip,
                        })
                    })
                    .collect();
                let _ = tx.send(targets);
            }
            Event::Pods(tx) => {
                let mut ids: Vec<&String> = self.pods.keys().collect();
                ids.sort();
                let _ = tx.send(
                    ids.into_iter()
                        .map(|id| self.view(&self.pods[id]))
                        .collect(),
                );
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
            metrics: ShortStatus::refused(&instance_id, reason).to_json(),
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
        if !self
            .jobs
            .insert((instance_id.to_string(), name.to_string()))
        {
            return; // already being started
        }
        let pod = &self.pods[instance_id];
        let spec = pod
            .manifest
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .expect("record matches manifest")
            .clone();
        let job = StartJob {
            instance_id: instance_id.to_string(),
            app: pod.manifest.name.clone(),
            host_network: pod.manifest.spec.host_network,
            cgroup: self.cgroups.container(instance_id, name),
            log_path: crate::logs::container_file(
                &self.settings.log_dir,
                &pod.manifest.name,
                instance_id,
                name,
            ),
            container: spec,
            uid: self.settings.uid,
            gid: self.settings.gid,
            process: self.process.clone(),
            network: self.network.clone(),
            containerd: self.containerd.clone(),
        };
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        tokio::spawn(async move {
            let result = job.run().await;
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
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), container.to_string());
        match run.container_id.clone() {
            Some(id) => {
                let link = self.containerd.clone();
                tokio::spawn(async move {
                    let exit = wait_task(&link, &id).await;
                    let _ = tx.send(Event::Exited {
                        instance_id,
                        container,
                        run,
                        exit,
                    });
                });
            }
            None => {
                let runtime = self.process.clone();
                tokio::spawn(async move {
                    let exit = runtime.wait(&instance_id, &container, &run).await;
                    let _ = tx.send(Event::Exited {
                        instance_id,
                        container,
                        run,
                        exit,
                    });
                });
            }
        }
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
            let oom_now =
                crate::metrics::cgroup_stats::read(&self.cgroups.container(instance_id, name))
                    .oom_kills;
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
        let policy = self.pods[instance_id].manifest.spec.restart_policy;
        let (initial, max) = (
            self.settings.backoff_initial.as_secs().max(1),
            self.settings.backoff_max.as_secs(),
        );
        let c = self.container_mut(instance_id, name).expect("exists");
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
        let c = self.container_mut(instance_id, name).expect("exists");
        if ran {
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
                metrics: ShortStatus::not_running(instance_id).to_json(),
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
        let pod = &self.pods[instance_id];
        let mut processes = Vec::new();
        let mut images = Vec::new();
        for c in &pod.containers {
            let spec = pod
                .manifest
                .spec
                .containers
                .iter()
                .find(|s| s.name == c.name);
            if spec.is_some_and(|s| s.image.is_some()) {
                if let Ok(id) = containerd::container_id(instance_id, &c.name) {
                    images.push(id);
                }
            } else {
                processes.push((self.cgroups.container(instance_id, &c.name), c.run.clone()));
            }
        }
        let (process, link, network, tx, grace) = (
            self.process.clone(),
            self.containerd.clone(),
            self.network.clone(),
            self.tx.clone(),
            self.settings.stop_grace_period,
        );
        let instance_id = instance_id.to_string();
        tokio::spawn(async move {
            let bare = futures::future::join_all(
                processes
                    .iter()
                    .map(|(cg, run)| process.stop(run.as_ref(), cg, grace)),
            );
            let tasks = async {
                if images.is_empty() {
                    return true;
                }
                let cd = match link.get() {
                    Some(cd) => cd,
                    None => {
                        warn!(pod = %instance_id, "delete waits for containerd");
                        link.connected().await
                    }
                };
                let removed = futures::future::join_all(images.iter().map(|id| {
                    let cd = cd.clone();
                    async move {
                        if let Err(e) = cd.runtime.stop(id, grace).await {
                            warn!(container = %id, error = %crate::error_chain(&e), "cannot stop container");
                        }
                        match cd.runtime.remove(id).await {
                            Ok(()) => true,
                            Err(e) => {
                                error!(container = %id, error = %crate::error_chain(&e), "cannot remove container");
                                false
                            }
                        }
                    }
                }))
                .await;
                removed.into_iter().all(|ok| ok)
            };
            let (_, mut clean) = futures::future::join(bare, tasks).await;
            if let Err(e) = network.detach(&instance_id).await {
                error!(pod = %instance_id, error = %crate::error_chain(&e), "cannot remove the pod network");
                clean = false;
            }
            let _ = tx.send(Event::Stopped { instance_id, clean });
        });
    }

    /// Final clean-up of a destroyed pod: cgroups, run and log directories,
    /// runtime memory.
    fn stopped(&mut self, instance_id: &str, clean: bool) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let mut clean = clean;
        if clean {
            for c in &pod.containers {
                let cg = self.cgroups.container(instance_id, &c.name);
                if let Err(e) = cg.remove() {
                    error!(pod = instance_id, container = %c.name, error = %e, "cannot remove cgroup");
                    clean = false;
                }
            }
        }
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
        self.process.remove_instance(instance_id);
        if !self.settings.keep_logs_on_delete {
            let dir = crate::logs::pod_dir(&self.settings.log_dir, &pod.manifest.name, instance_id);
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Err(e) = self.store.remove(instance_id) {
            error!(pod = instance_id, error = %e, "cannot forget pod");
        }
        self.pods.remove(instance_id);
        info!(pod = instance_id, "pod destroyed");
        let _ = self.reports.send(InstanceReport {
            instance_id: instance_id.to_string(),
            status: ResourceStatus::Terminated,
            metrics: ShortStatus::destroyed(instance_id, &self.settings.node).to_json(),
        });
    }

    // ---- crash recovery -------------------------------------------------

    /// Brings the runtime memory and the host back in line after a start:
    /// adopts live bare processes (checked by pid, start time and cgroup),
    /// records exits that happened while the riklet was away, resumes
    /// deletes and back-offs, removes cgroups, run directories and pod
    /// networks nobody owns. Image containers are reconciled once
    /// containerd answers ([`Self::reconcile_containerd`]).
    async fn reconcile(&mut self) -> crate::state::Result<()> {
        let records = self.store.load_all()?;
        for pod in records {
            self.pods.insert(pod.instance_id.clone(), pod);
        }
        let mut ids: Vec<String> = self.pods.keys().cloned().collect();
        ids.sort();
        for id in &ids {
            if self.pods[id].phase == Phase::Destroying {
                info!(pod = %id, "resuming delete");
                self.spawn_stop(id);
                continue;
            }
            let containers: Vec<(String, bool)> = self.pods[id]
                .manifest
                .spec
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.image.is_some()))
                .collect();
            for (name, image) in containers {
                if image {
                    // Only the back-off can be resumed without containerd.
                    let c = self.container_mut(id, &name).expect("exists");
                    if let (None, Some(at), false) = (&c.run, c.restart_at, c.starting) {
                        let delay = Duration::from_millis((at - now_ms()).max(0) as u64);
                        self.schedule_restart(id, &name, delay);
                    }
                } else {
                    self.recover_process(id, &name).await;
                }
            }
            self.settle_phase(id);
        }
        self.remove_orphans();
        if let Err(e) = self.network.reconcile(&ids).await {
            error!(error = %crate::error_chain(&e), "cannot remove stale pod networks");
        }
        Ok(())
    }

    async fn recover_process(&mut self, id: &str, name: &str) {
        let cgroup = self.cgroups.container(id, name);
        let started = self.process.read_started(id, name);
        let exit = self.process.read_exit(id, name);
        let c = self.container_mut(id, name).expect("exists");
        let was_starting = std::mem::take(&mut c.starting);
        let c = c.clone();
        // The run dir is the truth for the current run: the riklet may have
        // died between starting a shim and saving its record.
        let run = c
            .run
            .clone()
            .or_else(|| started.map(|s| RunRecord::process(s.shim, s.process, s.started_at)));
        let already_recorded = |e: &ExitRecord| {
            c.last_exit
                .as_ref()
                .is_some_and(|l| l.finished_at == e.finished_at)
        };
        match (run, exit) {
            (Some(run), Some(exit)) if !already_recorded(&exit) => {
                info!(pod = id, container = name, reason = %exit.reason, "exited while riklet was away");
                self.container_mut(id, name).expect("exists").run = Some(run);
                self.after_exit(id, name, exit);
            }
            (Some(run), None) if run.shim.is_some_and(|s| s.is_alive()) => {
                let process_ok = run.process.is_alive() && cgroup.contains(run.process.pid);
                info!(
                    pod = id,
                    container = name,
                    pid = run.process.pid,
                    process_ok,
                    "adopting running container"
                );
                let c = self.container_mut(id, name).expect("exists");
                c.run = Some(run.clone());
                c.restart_at = None;
                self.commit(id);
                // If the process is gone the shim is about to record it.
                self.watch(id, name, run);
            }
            (Some(run), None) => {
                warn!(
                    pod = id,
                    container = name,
                    "shim vanished without an exit record"
                );
                let cg = cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.kill_all()).await;
                self.container_mut(id, name).expect("exists").run = Some(run);
                let exit =
                    ExitRecord::without_status("Lost", "the shim died while the riklet was away");
                self.after_exit(id, name, exit);
            }
            _ => {
                let c = self.container_mut(id, name).expect("exists");
                c.run = None;
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
    /// once the containers that were waiting for containerd.
    async fn reconcile_containerd(&mut self, cd: Connected) {
        let listed = match cd.runtime.list().await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %crate::error_chain(&e), retry_in = ?CONTAINERD_RETRY, "cannot list containerd's containers");
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CONTAINERD_RETRY).await;
                    let _ = tx.send(Event::RetryContainerd);
                });
                return;
            }
        };
        self.containerd_reconciled = true;
        let owned = |pods: &HashMap<String, PodRecord>, instance: &str, container: &str| {
            pods.get(instance).is_some_and(|p| {
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
                (Some(i), Some(c)) if owned(&self.pods, i, c) => {
                    by_id.insert(info.id.clone(), info);
                }
                (Some(_), Some(_)) => orphans.push(info.id.clone()),
                _ => warn!(
                    container = %info.id,
                    namespace = cd.runtime.namespace(),
                    "container without riklet labels left alone"
                ),
            }
        }
        match cd.runtime.container_snapshots().await {
            Ok(keys) => {
                for key in keys {
                    let unknown = containerd::split_container_id(&key)
                        .is_none_or(|(i, c)| !owned(&self.pods, i, c));
                    if unknown && !orphans.contains(&key) {
                        orphans.push(key);
                    }
                }
            }
            Err(e) => warn!(error = %crate::error_chain(&e), "cannot list snapshots"),
        }
        if !orphans.is_empty() {
            let runtime = cd.runtime.clone();
            tokio::spawn(async move {
                for id in orphans {
                    warn!(container = %id, "removing a container of an unknown instance");
                    let removed = match runtime.remove(&id).await {
                        Ok(()) => runtime.remove_leftover_snapshot(&id).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = removed {
                        error!(container = %id, error = %crate::error_chain(&e), "cannot remove orphaned container");
                    }
                }
            });
        }

        let mut ids: Vec<String> = self.pods.keys().cloned().collect();
        ids.sort();
        for id in ids {
            if self.pods[&id].phase == Phase::Destroying {
                continue;
            }
            let names: Vec<String> = self.pods[&id]
                .manifest
                .spec
                .containers
                .iter()
                .filter(|c| c.image.is_some())
                .map(|c| c.name.clone())
                .collect();
            for name in names {
                let Ok(cid) = containerd::container_id(&id, &name) else {
                    continue;
                };
                self.recover_image(&id, &name, &cid, by_id.get(&cid));
            }
            self.settle_phase(&id);
        }
    }

    fn recover_image(
        &mut self,
        id: &str,
        name: &str,
        cid: &str,
        info: Option<&containerd::ContainerInfo>,
    ) {
        if self.jobs.contains(&(id.to_string(), name.to_string())) {
            return; // being started now: it reports back
        }
        let c = self.container_mut(id, name).expect("exists");
        // A start that a riklet which died left unfinished.
        let was_starting = std::mem::take(&mut c.starting);
        let unrecorded = was_starting || (c.last_exit.is_none() && c.restart_at.is_none());
        let status = info.map(|i| i.status);
        let ours = |r: &RunRecord| r.container_id.as_deref() == Some(cid);
        match (c.run.clone(), status) {
            (run, Some(TaskStatus::Running | TaskStatus::Paused)) => {
                let pid = info.and_then(|i| i.pid).unwrap_or(0) as i32;
                let run = match run {
                    Some(r) if ours(&r) => r,
                    // Started, but the riklet died before saving it.
                    _ => RunRecord {
                        shim: None,
                        process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
                        started_at: now_ms(),
                        container_id: Some(cid.to_string()),
                        image_digest: None,
                    },
                };
                info!(
                    pod = id,
                    container = name,
                    pid = run.process.pid,
                    "adopting running container"
                );
                c.run = Some(run.clone());
                c.restart_at = None;
                self.commit(id);
                self.watch(id, name, run);
            }
            (Some(run), Some(TaskStatus::Stopped { .. })) if ours(&run) => {
                // `Wait` returns the exit status of an ended task at once.
                self.commit(id);
                self.watch(id, name, run);
            }
            (None, Some(TaskStatus::Stopped { .. })) if unrecorded => {
                let run = RunRecord {
                    shim: None,
                    process: ProcId {
                        pid: 0,
                        start_time: 0,
                    },
                    started_at: now_ms(),
                    container_id: Some(cid.to_string()),
                    image_digest: None,
                };
                c.run = Some(run.clone());
                self.commit(id);
                self.watch(id, name, run);
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
            (None, _) => {
                let waiting_for_containerd = c.restart_at.is_some()
                    && c.last_exit
                        .as_ref()
                        .is_some_and(|e| e.reason == CONTAINERD_UNAVAILABLE);
                if waiting_for_containerd {
                    let _ = self.tx.send(Event::RestartDue {
                        instance_id: id.to_string(),
                        container: name.to_string(),
                    });
                }
            }
        }
    }

    fn remove_orphans(&self) {
        let owned = |name: &str| {
            self.pods.values().any(|p| {
                p.containers
                    .iter()
                    .any(|c| name == format!("{}_{}", p.instance_id, c.name))
            })
        };
        match self.cgroups.list() {
            Ok(names) => {
                for name in names.iter().filter(|n| !owned(n)) {
                    warn!(cgroup = %name, "removing orphaned cgroup");
                    if let Err(e) = self.cgroups.by_name(name).remove() {
                        error!(cgroup = %name, error = %e, "cannot remove orphaned cgroup");
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot list cgroups"),
        }
        for id in self.process.instances_on_disk() {
            if !self.pods.contains_key(&id) {
                warn!(pod = %id, "removing orphaned run directory");
                self.process.remove_instance(&id);
            }
        }
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
        let ip = if pod.manifest.spec.host_network {
            crate::metrics::node::internal_ip()
        } else {
            self.network.ip(&pod.instance_id).map(IpAddr::V4)
        };
        let cgroup = |name: &str| {
            self.cgroups
                .container(&pod.instance_id, name)
                .rel()
                .to_string()
        };
        view::app_status(
            pod,
            &view::ViewInputs {
                node: &self.settings.node,
                ip,
                usage: self.usage.get(&pod.instance_id),
                cgroup: &cgroup,
            },
        )
        .to_value()
    }

    fn report_of(&self, pod: &PodRecord) -> InstanceReport {
        InstanceReport {
            instance_id: pod.instance_id.clone(),
            status: pod.phase.status(),
            metrics: self.view(pod).to_string(),
        }
    }
}

/// Everything needed to start one container, off the agent task.
struct StartJob {
    instance_id: String,
    app: String,
    host_network: bool,
    container: Container,
    cgroup: ContainerCgroup,
    log_path: PathBuf,
    uid: u32,
    gid: u32,
    process: Arc<ProcessRuntime>,
    network: Arc<PodNetwork>,
    containerd: ContainerdLink,
}

impl StartJob {
    #[tracing::instrument(name = "start", skip_all, fields(pod = %self.instance_id, container = %self.container.name))]
    async fn run(self) -> StartResult {
        let netns = if self.host_network {
            None
        } else {
            match self.network.attach(&self.instance_id).await {
                Ok(address) => Some(address.netns),
                Err(e) => {
                    return Err(ExitRecord::without_status(
                        NETWORK_ERROR,
                        format!("pod network: {}", crate::error_chain(&e)),
                    ));
                }
            }
        };
        match self.container.image.clone() {
            Some(image) => self.start_image(&image, netns).await,
            None => self.start_process(netns).await,
        }
    }

    /// A bare process: creates its cgroup, starts its shim, which joins
    /// the cgroup and the pod's network namespace before `exec`.
    async fn start_process(self, netns: Option<PathBuf>) -> StartResult {
        let c = &self.container;
        let limits = Limits {
            cpu_millis: c.resources.as_ref().and_then(|r| r.cpu_millis()),
            memory_bytes: c.resources.as_ref().and_then(|r| r.memory_bytes()),
        };
        let cgroup = self.cgroup.clone();
        let started = match tokio::task::spawn_blocking(move || cgroup.create(limits))
            .await
            .expect("cgroup task")
        {
            Err(e) => Err(format!("cgroup: {e}")),
            Ok(()) => {
                // Before the process runs: one killed at once (a 64 MiB
                // buffer under a 16 MiB limit) must count as a new OOM kill.
                let oom_kills = crate::metrics::cgroup_stats::read(&self.cgroup).oom_kills;
                let spec = ShimSpec {
                    exec: c.exec.clone().expect("bare process").into(),
                    args: c.args.clone(),
                    env: c
                        .env
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone()))
                        .collect(),
                    uid: self.uid,
                    gid: self.gid,
                    procs_files: self.cgroup.procs_files(),
                    log_path: self.log_path.clone(),
                    netns,
                };
                self.process
                    .start(&self.instance_id, &c.name, &spec)
                    .await
                    .map(|run| (run, oom_kills))
                    .map_err(|e| e.to_string())
            }
        };
        // The shim records why exec failed (exit code 126/127).
        started.map_err(|reason| {
            self.process
                .read_exit(&self.instance_id, &c.name)
                .unwrap_or(ExitRecord::without_status("StartError", reason))
        })
    }

    /// An image container: pull (per the pull policy), remove what an
    /// earlier run left, create and start it under containerd in the pod's
    /// network namespace and the riklet's cgroup tree (runc creates the
    /// cgroup and applies the limits).
    async fn start_image(self, image: &str, netns: Option<PathBuf>) -> StartResult {
        let Some(cd) = self.containerd.get() else {
            return Err(ExitRecord::without_status(
                CONTAINERD_UNAVAILABLE,
                self.containerd.why_unavailable(),
            ));
        };
        let c = &self.container;
        let policy = match c.pull_policy() {
            ImagePullPolicy::Always => PullPolicy::Always,
            ImagePullPolicy::IfNotPresent => PullPolicy::IfNotPresent,
            ImagePullPolicy::Never => PullPolicy::Never,
        };
        let info = cd.images.ensure(image, policy).await.map_err(|e| {
            let reason = if image_error_unavailable(&e) {
                CONTAINERD_UNAVAILABLE
            } else {
                ERR_IMAGE_PULL
            };
            ExitRecord::without_status(reason, crate::error_chain(&e))
        })?;
        let id = containerd::container_id(&self.instance_id, &c.name).map_err(start_error)?;
        // An earlier run's task, container and snapshot.
        cd.runtime.remove(&id).await.map_err(start_error)?;
        let spec = ContainerSpec {
            instance_id: self.instance_id.clone(),
            container: c.name.clone(),
            app: self.app.clone(),
            image: info.reference.clone(),
            snapshot_parent: info.chain_id.clone(),
            image_config: ImageConfig {
                entrypoint: info.entrypoint.clone(),
                cmd: info.cmd.clone(),
                env: info.env.clone(),
                working_dir: info.working_dir.clone(),
                user: info.user.clone(),
            },
            command: c.command.clone(),
            args: c.args.clone(),
            env: c
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            limits: Limits {
                cpu_millis: c.resources.as_ref().and_then(|r| r.cpu_millis()),
                memory_bytes: c.resources.as_ref().and_then(|r| r.memory_bytes()),
            },
            netns,
            cgroups_path: format!("/{}", self.cgroup.rel()),
            log_path: self.log_path.clone(),
            hostname: None,
            resolv_conf: Path::new("/etc/resolv.conf")
                .is_file()
                .then(|| PathBuf::from("/etc/resolv.conf")),
            hosts: None,
            labels: HashMap::new(),
        };
        let run = cd.runtime.start(spec).await.map_err(start_error)?;
        let pid = run.pid as i32;
        Ok((
            RunRecord {
                shim: None,
                process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
                started_at: run.started_at,
                container_id: Some(run.container_id),
                image_digest: Some(info.digest),
            },
            None,
        ))
    }
}

/// Waits for a containerd task to end, across containerd restarts (the
/// task keeps running in its shim; `Wait` is simply asked again).
async fn wait_task(link: &ContainerdLink, id: &str) -> ExitRecord {
    let mut pause = Duration::from_millis(200);
    let mut warned = false;
    loop {
        let cd = link.connected().await;
        match cd.runtime.wait(id).await {
            Ok(exit) => return exit.to_exit_record(),
            Err(e) if e.is_not_found() => {
                return ExitRecord::without_status(
                    "Lost",
                    "containerd has no task for this container any more",
                );
            }
            Err(e) => {
                if !warned {
                    warn!(container = id, error = %crate::error_chain(&e), "lost track of a container task; asking containerd again");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WAIT_RETRY_MAX);
            }
        }
    }
}

/// A containerd failure while starting: containerd down, or a refusal.
fn start_error(e: ContainerdError) -> ExitRecord {
    let reason = if e.is_unavailable() {
        CONTAINERD_UNAVAILABLE
    } else {
        "StartError"
    };
    ExitRecord::without_status(reason, crate::error_chain(&e))
}

/// Whether a pull failed because containerd (not the registry) is away.
fn image_error_unavailable(e: &ImageError) -> bool {
    match e {
        ImageError::Connect { .. } => true,
        ImageError::Containerd { source, .. } => source.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// The phase of a pod from its containers (kubelet's rules, plus setup
/// failures): a container that cannot be set up (image pull, pod network)
/// → `Failed` with that reason, retried; waiting for a restart →
/// `Creating` (CrashLoopBackOff, or waiting for containerd); being started
/// or never started → `Creating`; some running and none failed for good →
/// `Running` (a sidecar that completed does not fail the pod); all ended
/// successfully → `Completed`; one ended in error with no restart coming
/// → `Failed`, with that container's reason.
fn pod_phase(containers: &[ContainerRecord]) -> (Phase, Option<String>) {
    let waiting = |c: &&ContainerRecord| c.run.is_none() && c.restart_at.is_some() && !c.starting;
    let ended = |c: &&ContainerRecord| c.run.is_none() && c.restart_at.is_none() && !c.starting;
    let last_reason = |c: &ContainerRecord| {
        c.last_exit
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default()
    };
    let why = |c: &ContainerRecord| {
        c.last_exit
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_default()
    };
    if let Some(c) = containers
        .iter()
        .filter(waiting)
        .find(|c| matches!(last_reason(c).as_str(), ERR_IMAGE_PULL | NETWORK_ERROR))
    {
        return (
            Phase::Failed,
            Some(format!(
                "container {}: {}: {}; retrying with back-off",
                c.name,
                last_reason(c),
                why(c)
            )),
        );
    }
    if let Some(c) = containers.iter().find(waiting) {
        let reason = if last_reason(c) == CONTAINERD_UNAVAILABLE {
            format!("container {}: waiting for containerd: {}", c.name, why(c))
        } else {
            format!("CrashLoopBackOff: container {}: {}", c.name, why(c))
        };
        return (Phase::Creating, Some(reason));
    }
    let failed = containers
        .iter()
        .filter(ended)
        .find(|c| c.last_exit.as_ref().is_some_and(|e| !e.success()));
    if let Some(c) = failed {
        return (
            Phase::Failed,
            Some(format!("container {}: {}", c.name, why(c))),
        );
    }
    let running = containers.iter().filter(|c| c.run.is_some()).count();
    let not_yet = containers
        .iter()
        .any(|c| c.starting || (c.run.is_none() && c.last_exit.is_none()));
    if not_yet {
        (Phase::Creating, None)
    } else if running > 0 {
        (Phase::Running, None)
    } else {
        (Phase::Completed, Some("Completed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            restart_count: 0,
            run: Some(RunRecord::process(
                ProcId {
                    pid: 1,
                    start_time: 1,
                },
                ProcId {
                    pid: 2,
                    start_time: 2,
                },
                0,
            )),
            last_exit: None,
            restart_at: None,
            backoff_secs: 0,
            oom_kills_at_start: None,
            starting: false,
        }
    }

    fn ended(name: &str, code: i32, restart: bool) -> ContainerRecord {
        ContainerRecord {
            run: None,
            last_exit: Some(ExitRecord {
                exit_code: Some(code),
                signal: None,
                finished_at: 1,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
            }),
            restart_at: restart.then_some(5),
            ..running(name)
        }
    }

    fn not_set_up(name: &str, reason: &str) -> ContainerRecord {
        ContainerRecord {
            run: None,
            last_exit: Some(ExitRecord::without_status(reason, "why")),
            restart_at: Some(5),
            ..running(name)
        }
    }

    #[test]
    fn phases_follow_kubelet_rules() {
        assert_eq!(pod_phase(&[running("a"), running("b")]).0, Phase::Running);
        // A sidecar that completed does not fail a running pod.
        assert_eq!(
            pod_phase(&[running("a"), ended("b", 0, false)]).0,
            Phase::Running
        );
        assert_eq!(
            pod_phase(&[ended("a", 0, false), ended("b", 0, false)]).0,
            Phase::Completed
        );
        let (phase, reason) = pod_phase(&[running("a"), ended("b", 2, false)]);
        assert_eq!(phase, Phase::Failed);
        assert_eq!(reason.as_deref(), Some("container b: Error: exit code 2"));
        let (phase, reason) = pod_phase(&[running("a"), ended("b", 1, true)]);
        assert_eq!(phase, Phase::Creating);
        assert!(reason.unwrap().starts_with("CrashLoopBackOff: container b"));
        let mut fresh = running("a");
        fresh.run = None;
        assert_eq!(pod_phase(&[fresh, running("b")]).0, Phase::Creating);
    }

    #[test]
    fn setup_failures_fail_the_pod_while_retried() {
        let (phase, reason) = pod_phase(&[running("a"), not_set_up("b", ERR_IMAGE_PULL)]);
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            reason.as_deref(),
            Some("container b: ErrImagePull: why; retrying with back-off")
        );
        let (phase, reason) = pod_phase(&[not_set_up("a", NETWORK_ERROR)]);
        assert_eq!(phase, Phase::Failed);
        assert!(reason.unwrap().contains("NetworkError"));
        let (phase, reason) = pod_phase(&[not_set_up("a", CONTAINERD_UNAVAILABLE)]);
        assert_eq!(phase, Phase::Creating);
        assert_eq!(
            reason.as_deref(),
            Some("container a: waiting for containerd: why")
        );
        // Being started again after an exit: CREATING, not FAILED.
        let mut again = ended("a", 1, false);
        again.starting = true;
        assert_eq!(pod_phase(&[again, running("b")]), (Phase::Creating, None));
        assert!(is_setup_failure(ERR_IMAGE_PULL));
        assert!(!is_setup_failure("OOMKilled"));
    }
}
