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
//! to the runtime memory before it is reported: the agent handles the
//! events that are waiting, saves the records they changed together, then
//! reports (`commit`). At most `start_parallelism` container starts run at
//! once; the others wait their turn, in order.
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
//! - this file: the event loop, creating pods and starting containers;
//! - `admit`: the checks on a CREATE from the wire, before anything runs;
//! - `commit`: saving changed records together, then reporting them;
//! - `handle`: the events, the handle other tasks send them with, reports;
//! - `restart`: exits, restart policy, crash-loop back-off;
//! - `delete`: stopping and forgetting a pod;
//! - `events`: each pod's recent events, and when a back-off shows;
//! - `phase`: the pod phase derived from its containers;
//! - `ports`: the endpoints the Node Proxy forwards to, one app per port;
//! - `recover`: crash recovery of bare processes and image containers;
//! - `host`: the trait through which every decision acts on the node;
//!   `node` is the real node, `start` how one container is started;
//! - `view`: the status object reported for a pod.

mod admit;
mod commit;
mod delete;
mod events;
mod handle;
mod host;
mod node;
mod phase;
mod ports;
mod recover;
mod restart;
mod start;
mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::common::ResourceStatus;
use proto::status::{AppStatus, ShortStatus};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{error, info, warn};

pub use admit::{Refusal, admit};
pub use handle::{AgentHandle, InstanceReport};
pub use node::{Backends, NodeHost};
pub use ports::ReservedPort;

use crate::clock::now_ms;
use crate::metrics::collector::PodUsage;
use crate::metrics::targets::PodsGeneration;
use crate::proxy::model::Endpoint;
use crate::service_manager::AgentWatchdog;
use crate::state::{ContainerRecord, ExitRecord, Phase, PodRecord, RunRecord, Store};
use commit::{BATCH, Pending, Query};
use handle::Event;
use host::{PodHost, StartRequest, StartResult};
use phase::pod_phase;
use recover::ContainerdSync;

/// Why a start did not run: its pod was deleted while it waited for a
/// slot (never recorded, the pod is going away).
const CANCELLED: &str = "Cancelled";

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
    /// The node's log rotation limits (an app's `spec.logs` overrides them).
    pub log_rotation: crate::logs::Rotation,
    /// How long a deleted app's logs stay (0: removed with the pod).
    pub log_retention: crate::logs::retention::Retention,
    /// Ports of the riklet's own listeners, which no app may take.
    pub reserved_ports: Vec<ReservedPort>,
    /// How many container starts (network, image pull, shim or task) run
    /// at once; at least 1.
    pub start_parallelism: usize,
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
    /// Each pod's recent events (memory only).
    events: HashMap<String, events::EventLog>,
    /// Starts in flight (instance, container): they report back with
    /// [`Event::Started`]. A record marked `starting` that is not here was
    /// being started by a riklet that died. The flag is raised by a delete:
    /// a start still waiting for its slot then gives up.
    jobs: HashMap<(String, String), Arc<AtomicBool>>,
    /// One permit per start running ([`AgentSettings::start_parallelism`]);
    /// the others wait in order (the semaphore is fair).
    start_slots: Arc<Semaphore>,
    /// Records changed and reports due since the last save.
    pending: Pending,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    reports: mpsc::UnboundedSender<InstanceReport>,
    /// The RUNNING pods with ports, republished after every event; `None`
    /// until the pods of the runtime memory are recovered.
    endpoints: watch::Sender<Option<Vec<Endpoint>>>,
    /// Bumped after each change of the pods (the collector's targets).
    generation: PodsGeneration,
    /// systemd's watchdog, pinged from the loop itself: a wedged loop
    /// stops the pings and gets the riklet restarted.
    watchdog: Option<AgentWatchdog>,
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
        let start_slots = Arc::new(Semaphore::new(settings.start_parallelism.max(1)));
        Agent {
            settings,
            store,
            host: Arc::new(host),
            containerd: ContainerdSync::Waiting,
            usage,
            pods: HashMap::new(),
            events: HashMap::new(),
            jobs: HashMap::new(),
            start_slots,
            pending: Pending::default(),
            tx,
            rx,
            reports,
            endpoints: watch::Sender::new(None),
            generation: PodsGeneration::default(),
            watchdog: None,
        }
    }

    /// Pings `watchdog` from the event loop.
    pub(crate) fn with_watchdog(mut self, watchdog: Option<AgentWatchdog>) -> Self {
        self.watchdog = watchdog;
        self
    }

    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            tx: self.tx.clone(),
            endpoints: self.endpoints.subscribe(),
            generation: self.generation.clone(),
        }
    }

    /// Recovers the pods of the runtime memory on the node (and with
    /// containerd once it answers), then serves events until `shutdown`
    /// fires. Pods keep running after it returns.
    pub async fn run(mut self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        if let Err(e) = self.recover().await {
            error!(error = %crate::error_chain(&e), "cannot read the runtime memory");
        }
        self.flush().await;
        self.publish_endpoints();
        self.generation.bump();
        let host = self.host.clone();
        let mut watchdog = self.watchdog.take();
        loop {
            let waiting = self.containerd == ContainerdSync::Waiting;
            tokio::select! {
                _ = shutdown.recv() => break,
                () = AgentWatchdog::due(&mut watchdog) => {
                    if let Some(w) = &mut watchdog {
                        w.ping().await;
                    }
                    continue;
                }
                Some(ev) = self.rx.recv() => {
                    self.on_event(ev).await;
                    // Whatever else is waiting joins the same save.
                    for _ in 1..BATCH {
                        let Ok(ev) = self.rx.try_recv() else { break };
                        self.on_event(ev).await;
                    }
                }
                () = host.containerd_connected(), if waiting => {
                    self.recover_containerd().await;
                    self.generation.bump();
                }
            }
            self.flush().await;
        }
        self.flush().await;
    }

    /// Tells the Node Proxy which pods serve which ports, if that changed.
    /// Called after each save that changed a pod, so a pod that turns
    /// RUNNING (or stops) reaches the proxy as soon as it is reported.
    fn publish_endpoints(&self) {
        let now = ports::endpoints(self.host.as_ref(), &self.pods);
        self.endpoints.send_if_modified(|published| {
            let changed = published.as_ref() != Some(&now);
            if changed {
                *published = Some(now);
            }
            changed
        });
    }

    async fn on_event(&mut self, ev: Event) {
        let changes = ev.may_change_pods();
        self.handle_event(ev).await;
        if changes {
            self.generation.bump();
        }
    }

    async fn handle_event(&mut self, ev: Event) {
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
            Event::BackOffNoticed {
                instance_id,
                container,
                restart_at,
            } => self.backoff_noticed(&instance_id, &container, restart_at),
            Event::Note {
                instance_id,
                container,
                reason,
                message,
            } => self.noted(&instance_id, &container, reason, message),
            Event::Stopped { instance_id, stop } => self.stopped(&instance_id, stop),
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
            Event::Reports(tx) => self.query(Query::Reports(tx)),
            Event::Targets(tx) => {
                let live = self
                    .pods
                    .values()
                    .filter(|p| p.phase != Phase::Destroying)
                    .collect();
                let _ = tx.send(self.host.targets(live));
            }
            Event::Pods(tx) => self.query(Query::Pods(tx)),
        }
    }

    // ---- create --------------------------------------------------------

    fn create(&mut self, instance_id: String, definition: &str) {
        if self.pods.contains_key(&instance_id) {
            // A scheduler that lost track re-sends CREATE: answer with what is.
            self.report_pod(&instance_id);
            return;
        }
        let refuse = |reason: String| InstanceReport {
            instance_id: instance_id.clone(),
            status: ResourceStatus::Failed,
            metrics: ShortStatus::refused(&instance_id, reason).to_json(),
        };
        let manifest = match admit::admit(&instance_id, definition) {
            Ok(m) => m,
            Err(e) => {
                warn!(pod = %instance_id, error = %crate::error_chain(&e), "refused instance");
                self.report(refuse(crate::error_chain(&e)));
                return;
            }
        };
        if let Some(reason) = ports::clash(&manifest, &self.pods, &self.settings.reserved_ports) {
            warn!(pod = %instance_id, app = %manifest.name, reason = %reason, "refused instance");
            self.report(refuse(reason));
            return;
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
                    backing_off: false,
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
        self.record_created(&instance_id);
        for name in names {
            self.spawn_start(&instance_id, &name);
        }
        // Saved while the containers start (their result is handled after
        // this): a riklet that dies before the record is on disk leaves no
        // record, and recovery removes what the starts made as orphans.
        self.commit(&instance_id);
    }

    /// Marks a container as starting, saves it, and starts it in the
    /// background.
    pub(super) fn start_container(&mut self, instance_id: &str, name: &str) {
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        c.starting = true;
        c.restart_at = None;
        c.backing_off = false;
        self.settle_phase(instance_id);
        self.spawn_start(instance_id, name);
    }

    /// Starts a container (marked `starting`) in a task of its own, which
    /// reports back with [`Event::Started`]: attach the pod to its network,
    /// then pull and run the image under containerd, or run the shim of a
    /// bare process. The task first waits for one of the start slots.
    pub(super) fn spawn_start(&mut self, instance_id: &str, name: &str) {
        if self
            .jobs
            .contains_key(&(instance_id.to_string(), name.to_string()))
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
        let restart_count = pod
            .containers
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.restart_count);
        let request = StartRequest {
            instance_id: instance_id.to_string(),
            app: pod.manifest.name.clone(),
            host_network: pod.manifest.spec.host_network,
            container: container.clone(),
            restart_count,
            logs: pod.manifest.spec.logs.clone(),
            notes: handle::Notes {
                tx: self.tx.clone(),
                instance_id: instance_id.to_string(),
                container: name.to_string(),
            },
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        self.jobs.insert(
            (instance_id.to_string(), name.to_string()),
            cancelled.clone(),
        );
        let (host, tx, slots) = (self.host.clone(), self.tx.clone(), self.start_slots.clone());
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        tokio::spawn(async move {
            // Never closed: the agent owns the semaphore for its lifetime.
            let _slot = slots.acquire_owned().await;
            let result = if cancelled.load(Ordering::Relaxed) {
                Err(ExitRecord::without_status(
                    CANCELLED,
                    "the pod was deleted before its start",
                ))
            } else {
                host.start(request).await
            };
            let _ = tx.send(Event::Started {
                instance_id,
                container,
                result,
            });
        });
    }

    fn started(&mut self, instance_id: &str, name: &str, result: StartResult) {
        crate::crash::point("start.after_started");
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
                let pid = run.process.pid;
                self.record_started(instance_id, name, pid);
                let t = std::time::Instant::now();
                self.settle_phase(instance_id);
                crate::steps::record_for(instance_id, "commit", t.elapsed());
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
                if exit.reason != CANCELLED {
                    self.record_failed_start(instance_id, name, &exit);
                }
                self.after_exit(instance_id, name, exit);
            }
        }
    }

    /// Waits in the background for a run to end.
    pub(super) fn watch(&self, instance_id: &str, container: &str, run: RunRecord) {
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

    // ---- helpers -------------------------------------------------------

    /// Whether a start of one of the pod's containers is in flight.
    pub(super) fn has_jobs(&self, instance_id: &str) -> bool {
        self.jobs.keys().any(|(i, _)| i == instance_id)
    }

    /// Tells the pod's starts that still wait for a slot not to start.
    pub(super) fn cancel_jobs(&self, instance_id: &str) {
        for ((i, _), cancelled) in &self.jobs {
            if i == instance_id {
                cancelled.store(true, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn container_mut(
        &mut self,
        instance_id: &str,
        name: &str,
    ) -> Option<&mut ContainerRecord> {
        self.pods
            .get_mut(instance_id)?
            .containers
            .iter_mut()
            .find(|c| c.name == name)
    }

    /// Derives the pod phase from its containers, saves and reports it.
    pub(super) fn settle_phase(&mut self, instance_id: &str) {
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

    /// The pod's status view ([`view::app_status`]).
    fn view(&self, pod: &PodRecord) -> AppStatus {
        let cgroup = |name: &str| self.host.cgroup_path(&pod.instance_id, name);
        view::app_status(
            pod,
            &view::ViewInputs {
                node: &self.settings.node,
                ip: self.host.pod_ip(pod),
                usage: self.usage.get(&pod.instance_id),
                history: self.history(&pod.instance_id),
                cgroup: &cgroup,
            },
        )
    }

    fn report_of(&self, pod: &PodRecord) -> InstanceReport {
        InstanceReport {
            instance_id: pod.instance_id.clone(),
            status: pod.phase.status(),
            metrics: self.view(pod).to_json(),
        }
    }

    /// Pod ids in order, for stable listings and recovery.
    pub(super) fn sorted_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.pods.keys().cloned().collect();
        ids.sort();
        ids
    }
}
