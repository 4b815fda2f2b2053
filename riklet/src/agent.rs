//! The Node Manager: turns scheduler instructions into running pods and
//! keeps them so.
//!
//! One task owns every pod record and handles one [`Event`] at a time
//! (create, destroy, a container exited, a restart is due, a query), so
//! there is no lock and no race between a restart and a delete. Anything
//! slow (waiting for a process, a stop grace period, a back-off) runs in a
//! task of its own that reports back with an event. Every change is written
//! to the runtime memory before it is reported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::common::ResourceStatus;
use proto::manifest::{self, Container, RestartPolicy};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::cgroups::{CgroupManager, Limits};
use crate::metrics::collector::{PodUsage, Target};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::shim::ShimSpec;
use crate::state::{ContainerRecord, ExitRecord, Phase, PodRecord, RunRecord, Store, now_ms};

/// A run that lasted this long resets the crash-loop back-off (kubelet).
const BACKOFF_RESET_MS: i64 = 10 * 60 * 1000;

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
    },
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
    runtime: Arc<ProcessRuntime>,
    usage: PodUsage,
    pods: HashMap<String, PodRecord>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    reports: mpsc::UnboundedSender<InstanceReport>,
}

impl Agent {
    /// Builds the agent; `reports` receives every status change.
    pub fn new(
        settings: AgentSettings,
        store: Store,
        cgroups: CgroupManager,
        runtime: ProcessRuntime,
        usage: PodUsage,
        reports: mpsc::UnboundedSender<InstanceReport>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Agent {
            settings,
            store,
            cgroups,
            runtime: Arc::new(runtime),
            usage,
            pods: HashMap::new(),
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

    /// Reconciles the runtime memory with the host, then serves events
    /// until `shutdown` fires. Pods keep running after it returns.
    pub async fn run(mut self, mut shutdown: tokio::sync::broadcast::Receiver<()>) {
        if let Err(e) = self.reconcile().await {
            error!(error = %e, "cannot read the runtime memory");
        }
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                Some(ev) = self.rx.recv() => self.on_event(ev).await,
            }
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Create {
                instance_id,
                definition,
            } => self.create(instance_id, &definition).await,
            Event::Destroy { instance_id } => self.destroy(&instance_id),
            Event::Exited {
                instance_id,
                container,
                run,
                exit,
            } => self.exited(&instance_id, &container, &run, exit),
            Event::RestartDue {
                instance_id,
                container,
            } => self.restart_due(&instance_id, &container).await,
            Event::Stopped { instance_id } => self.stopped(&instance_id),
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
                let targets = self
                    .pods
                    .values()
                    .filter(|p| p.phase != Phase::Destroying)
                    .flat_map(|p| {
                        // Waiting containers too: their cgroup lives on, and
                        // an OOM kill is seen after the process is gone.
                        p.containers.iter().map(|c| Target {
                            app: p.manifest.name.clone(),
                            instance: p.instance_id.clone(),
                            container: c.name.clone(),
                            cgroup: self.cgroups.container(&p.instance_id, &c.name),
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

    async fn create(&mut self, instance_id: String, definition: &str) {
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
        if let Some(c) = manifest.spec.containers.iter().find(|c| c.image.is_some()) {
            let reason = format!(
                "container {:?}: image containers need containerd support, which this riklet does not have yet",
                c.name
            );
            let _ = self.reports.send(refuse(reason));
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
                })
                .collect(),
            manifest,
            phase: Phase::Creating,
            reason: None,
            created_at: now,
            updated_at: now,
        };
        info!(pod = %instance_id, app = %pod.manifest.name, "creating pod");
        self.pods.insert(instance_id.clone(), pod);
        self.commit(&instance_id);
        let names: Vec<String> = self.pods[&instance_id]
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for name in names {
            self.start_container(&instance_id, &name).await;
        }
        self.settle_phase(&instance_id);
    }

    /// Creates the cgroup and starts one container; a failure to start is
    /// handled like an exit (restart policy and back-off apply).
    async fn start_container(&mut self, instance_id: &str, name: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let spec = pod
            .manifest
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .expect("record matches manifest")
            .clone();
        let app = pod.manifest.name.clone();
        let cgroup = self.cgroups.container(instance_id, name);
        let limits = Limits {
            cpu_millis: spec.resources.as_ref().and_then(|r| r.cpu_millis()),
            memory_bytes: spec.resources.as_ref().and_then(|r| r.memory_bytes()),
        };
        let started = match tokio::task::spawn_blocking({
            let cgroup = cgroup.clone();
            move || cgroup.create(limits)
        })
        .await
        .expect("cgroup task")
        {
            Err(e) => Err(format!("cgroup: {e}")),
            Ok(()) => {
                let shim_spec = self.shim_spec(&app, instance_id, &spec, cgroup.procs_files());
                self.runtime
                    .start(instance_id, name, &shim_spec)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match started {
            Ok(run) => {
                info!(
                    pod = instance_id,
                    container = name,
                    pid = run.process.pid,
                    "container started"
                );
                let oom_kills = crate::metrics::cgroup_stats::read(&cgroup).oom_kills;
                let c = self.container_mut(instance_id, name).expect("exists");
                c.run = Some(run.clone());
                c.restart_at = None;
                c.oom_kills_at_start = oom_kills;
                self.commit(instance_id);
                self.watch(instance_id, name, run);
            }
            Err(reason) => {
                warn!(pod = instance_id, container = name, %reason, "container failed to start");
                // The shim records why exec failed (exit code 126/127).
                let exit = self
                    .runtime
                    .read_exit(instance_id, name)
                    .unwrap_or(ExitRecord {
                        exit_code: None,
                        signal: None,
                        finished_at: now_ms(),
                        reason: "StartError".into(),
                        message: Some(reason),
                    });
                self.after_exit(instance_id, name, exit);
            }
        }
    }

    fn shim_spec(
        &self,
        app: &str,
        instance_id: &str,
        c: &Container,
        procs_files: Vec<PathBuf>,
    ) -> ShimSpec {
        ShimSpec {
            exec: c.exec.clone().expect("bare process").into(),
            args: c.args.clone(),
            env: c
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            uid: self.settings.uid,
            gid: self.settings.gid,
            procs_files,
            log_path: crate::logs::container_file(
                &self.settings.log_dir,
                app,
                instance_id,
                &c.name,
            ),
            netns: None,
        }
    }

    /// Waits in the background for a run to end.
    fn watch(&self, instance_id: &str, container: &str, run: RunRecord) {
        let runtime = self.runtime.clone();
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), container.to_string());
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
        let oom_now =
            crate::metrics::cgroup_stats::read(&self.cgroups.container(instance_id, name))
                .oom_kills;
        if !exit.success() && oom_now > c.oom_kills_at_start.or(Some(0)) {
            exit.reason = "OOMKilled".into();
            exit.message =
                Some("killed by the OOM killer: the container reached its memory limit".into());
        }
        info!(pod = instance_id, container = name, code = ?exit.exit_code, signal = ?exit.signal, reason = %exit.reason, "container exited");
        self.after_exit(instance_id, name, exit);
    }

    /// Records an exit and applies the restart policy.
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
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        c.last_exit = Some(exit);
        if restart {
            c.backoff_secs = if c.backoff_secs == 0 || ran_ms >= BACKOFF_RESET_MS {
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

    async fn restart_due(&mut self, instance_id: &str, name: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        match pod.containers.iter().find(|c| c.name == name) {
            Some(c) if c.run.is_none() && c.restart_at.is_some() => {}
            _ => return,
        }
        let c = self.container_mut(instance_id, name).expect("exists");
        c.restart_count += 1;
        c.restart_at = None;
        self.start_container(instance_id, name).await;
        self.settle_phase(instance_id);
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
        self.spawn_stop(instance_id);
    }

    /// Stops every container in the background, then sends `Stopped`.
    fn spawn_stop(&self, instance_id: &str) {
        let pod = &self.pods[instance_id];
        let work: Vec<_> = pod
            .containers
            .iter()
            .map(|c| (self.cgroups.container(instance_id, &c.name), c.run.clone()))
            .collect();
        let (runtime, tx, grace) = (
            self.runtime.clone(),
            self.tx.clone(),
            self.settings.stop_grace_period,
        );
        let instance_id = instance_id.to_string();
        tokio::spawn(async move {
            let stops = work
                .iter()
                .map(|(cg, run)| runtime.stop(run.as_ref(), cg, grace));
            futures::future::join_all(stops).await;
            let _ = tx.send(Event::Stopped { instance_id });
        });
    }

    /// Final clean-up of a destroyed pod: cgroups, eBPF entries, run and
    /// log directories, runtime memory.
    fn stopped(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let mut clean = true;
        for c in &pod.containers {
            let cg = self.cgroups.container(instance_id, &c.name);
            if let Err(e) = cg.remove() {
                error!(pod = instance_id, container = %c.name, error = %e, "cannot remove cgroup");
                clean = false;
            }
        }
        if !clean {
            // Keep the record: the next start-up retries the clean-up.
            return;
        }
        self.runtime.remove_instance(instance_id);
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
            metrics:
                json!({"appId": instance_id, "state": "TERMINATED", "runsOn": self.settings.node})
                    .to_string(),
        });
    }

    // ---- crash recovery -------------------------------------------------

    /// Brings the runtime memory and the host back in line after a start:
    /// adopts live runs (checked by pid, start time and cgroup), records
    /// exits that happened while the riklet was away, resumes deletes and
    /// back-offs, and removes cgroups and run directories nobody owns.
    async fn reconcile(&mut self) -> crate::state::Result<()> {
        let records = self.store.load_all()?;
        for pod in records {
            self.pods.insert(pod.instance_id.clone(), pod);
        }
        let ids: Vec<String> = self.pods.keys().cloned().collect();
        for id in &ids {
            if self.pods[id].phase == Phase::Destroying {
                info!(pod = %id, "resuming delete");
                self.spawn_stop(id);
                continue;
            }
            let names: Vec<String> = self.pods[id]
                .containers
                .iter()
                .map(|c| c.name.clone())
                .collect();
            for name in names {
                self.recover_container(id, &name).await;
            }
            self.settle_phase(id);
        }
        self.remove_orphans();
        Ok(())
    }

    async fn recover_container(&mut self, id: &str, name: &str) {
        let cgroup = self.cgroups.container(id, name);
        let started = self.runtime.read_started(id, name);
        let exit = self.runtime.read_exit(id, name);
        let c = self.container_mut(id, name).expect("exists").clone();
        // The run dir is the truth for the current run: the riklet may have
        // died between starting a shim and saving its record.
        let run = c.run.clone().or_else(|| {
            started.map(|s| RunRecord::process(s.shim, s.process, s.started_at))
        });
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
                self.container_mut(id, name).expect("exists").run = Some(run.clone());
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
                let exit = ExitRecord {
                    exit_code: None,
                    signal: None,
                    finished_at: now_ms(),
                    reason: "Lost".into(),
                    message: Some("the shim died while the riklet was away".into()),
                };
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
                    None if c.last_exit.is_none() => self.start_container(id, name).await,
                    None => {}
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
        for id in self.runtime.instances_on_disk() {
            if !self.pods.contains_key(&id) {
                warn!(pod = %id, "removing orphaned run directory");
                self.runtime.remove_instance(&id);
            }
        }
    }

    // ---- helpers -------------------------------------------------------

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

    fn report_of(&self, pod: &PodRecord) -> InstanceReport {
        InstanceReport {
            instance_id: pod.instance_id.clone(),
            status: pod.phase.status(),
            metrics: self.view(pod).to_string(),
        }
    }

    /// Seed 004's realtime app object, extended with containers and the
    /// last measured usage (`cpu`, `memory`, `network`, `runqueue`).
    fn view(&self, pod: &PodRecord) -> Value {
        let deployment = pod.manifest.deployment();
        let usage = self
            .usage
            .get(&pod.instance_id)
            .unwrap_or_else(|| json!({}));
        let containers: Vec<Value> = pod
            .containers
            .iter()
            .map(|c| {
                let cg = self.cgroups.container(&pod.instance_id, &c.name);
                json!({
                    "name": c.name,
                    "state": if c.run.is_some() { "running" } else if c.restart_at.is_some() { "waiting" } else { "terminated" },
                    "pid": c.run.as_ref().map(|r| r.process.pid),
                    "startedAt": c.run.as_ref().map(|r| r.started_at / 1000),
                    "restartCount": c.restart_count,
                    "lastExit": c.last_exit.as_ref().map(|e| json!({
                        "exitCode": e.exit_code,
                        "signal": e.signal,
                        "reason": e.reason,
                        "message": e.message,
                        "finishedAt": e.finished_at / 1000,
                    })),
                    "cgroup": cg.rel(),
                    "usage": usage["containers"][&c.name],
                })
            })
            .collect();
        json!({
            "appId": pod.instance_id,
            "app": pod.manifest.name,
            "state": proto::status::name(pod.phase.status()),
            "reason": pod.reason,
            "createdAt": pod.created_at / 1000,
            "restartCount": pod.restart_count(),
            "internalIp": crate::metrics::node::internal_ip().map(|ip| ip.to_string()),
            "runsOn": self.settings.node,
            "deployment": {"app": deployment.app, "repository": deployment.repository, "version": deployment.version},
            "containers": containers,
            "cpu": usage["cpu"],
            "memory": usage["memory"],
            "network": usage["network"],
            "runqueue": usage["runqueue"],
            "events": usage.get("events").cloned().unwrap_or_else(|| json!([])),
        })
    }
}

/// The phase of a pod from its containers (kubelet's rules): waiting for a
/// restart → `Creating` (CrashLoopBackOff); some running and none failed
/// for good → `Running` (a sidecar that completed does not fail the pod);
/// all ended successfully → `Completed`; one ended in error with no
/// restart coming → `Failed`, with that container's reason.
fn pod_phase(containers: &[ContainerRecord]) -> (Phase, Option<String>) {
    let ended = |c: &&ContainerRecord| c.run.is_none() && c.restart_at.is_none();
    let failed = containers
        .iter()
        .filter(ended)
        .find(|c| c.last_exit.as_ref().is_some_and(|e| !e.success()));
    let running = containers.iter().filter(|c| c.run.is_some()).count();
    if let Some(c) = containers.iter().find(|c| c.restart_at.is_some()) {
        let why = c
            .last_exit
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_default();
        return (
            Phase::Creating,
            Some(format!("CrashLoopBackOff: container {}: {why}", c.name)),
        );
    }
    if let Some(c) = failed {
        let why = c
            .last_exit
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_default();
        return (Phase::Failed, Some(format!("container {}: {why}", c.name)));
    }
    let never_started = containers
        .iter()
        .any(|c| c.run.is_none() && c.last_exit.is_none());
    if never_started {
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
    use crate::state::ProcId;

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            restart_count: 0,
            run: Some(RunRecord {
                shim: ProcId {
                    pid: 1,
                    start_time: 1,
                },
                process: ProcId {
                    pid: 2,
                    start_time: 2,
                },
                started_at: 0,
            }),
            last_exit: None,
            restart_at: None,
            backoff_secs: 0,
            oom_kills_at_start: None,
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
}
