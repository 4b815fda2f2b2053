//! The agent's decisions (restart, back-off, delete, recovery) against a
//! fake host: no root, no containerd, no cgroups. Each test drives the
//! event loop one event at a time ([`Harness::step`]) with tokio's clock
//! paused, so back-offs pass at once and in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::delete::STOP_RETRY;
use super::host::{ProcessTrace, StopOutcome, StopTarget};
use super::restart::BACKOFF_RESET_MS;
use super::*;
use crate::metrics::collector::Target;
use crate::runtime::containerd::{ContainerInfo, ContainerdError, TaskStatus};
use crate::state::ProcId;
use crate::state::{ExitRecord, RunRecord};

/// What the fake host was asked to do, and what it answers.
#[derive(Default)]
struct FakeState {
    /// Scripted failures of the next starts, by container name.
    start_failures: HashMap<String, VecDeque<ExitRecord>>,
    /// Starts asked for, in order (instance, container).
    starts: Vec<(String, String)>,
    /// How each run ends, by process id: every waiter sees it (those of
    /// an agent "before the crash" too).
    exits: HashMap<i32, tokio::sync::watch::Sender<Option<ExitRecord>>>,
    oom_kills: HashMap<String, u64>,
    /// Pods stopped, and whether their release succeeds.
    stops: Vec<String>,
    release_fails: u32,
    released: Vec<String>,
    /// Live pids (shims and processes).
    alive: HashSet<i32>,
    traces: HashMap<(String, String), ProcessTrace>,
    killed: Vec<(String, String)>,
    orphans_kept: Option<HashMap<String, Vec<String>>>,
    /// containerd: what it lists, failures of the listing.
    inventory: Vec<ContainerInfo>,
    inventory_failures: u32,
    removed_containers: Vec<String>,
    next_pid: i32,
    /// Pod addresses, by instance.
    ips: HashMap<String, std::net::Ipv4Addr>,
    /// How long each start takes, and how many ran at once.
    start_delay: Option<Duration>,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Clone)]
struct FakeHost {
    state: Arc<Mutex<FakeState>>,
    /// Whether containerd answers.
    containerd_up: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            state: Arc::default(),
            containerd_up: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl FakeHost {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// The channel on which the run of process `pid` learns its exit.
    fn channel(&self, pid: i32) -> tokio::sync::watch::Sender<Option<ExitRecord>> {
        self.state()
            .exits
            .entry(pid)
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .clone()
    }

    fn fail_next_start(&self, container: &str, exit: ExitRecord) {
        self.state()
            .start_failures
            .entry(container.to_string())
            .or_default()
            .push_back(exit);
    }

    fn starts(&self) -> usize {
        self.state().starts.len()
    }
}

impl PodHost for FakeHost {
    async fn start(&self, request: StartRequest) -> StartResult {
        let delay = {
            let mut s = self.state();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.start_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.state();
        s.in_flight -= 1;
        let name = request.container.name.clone();
        s.starts.push((request.instance_id.clone(), name.clone()));
        if let Some(exit) = s.start_failures.get_mut(&name).and_then(|q| q.pop_front()) {
            return Err(exit);
        }
        s.next_pid += 2;
        let (shim, pid) = (s.next_pid, s.next_pid + 1);
        s.alive.extend([shim, pid]);
        let proc_id = |pid| ProcId { pid, start_time: 7 };
        let mut run = RunRecord::process(proc_id(shim), proc_id(pid), now_ms());
        if request.container.image.is_some() {
            run.shim = None;
            run.container_id = Some(format!("{}_{}", request.instance_id, name));
        }
        let oom = s.oom_kills.get(&name).copied();
        Ok((run, oom))
    }

    async fn wait(&self, _instance_id: &str, _container: &str, run: &RunRecord) -> ExitRecord {
        let mut rx = self.channel(run.process.pid).subscribe();
        let exit = rx.wait_for(Option::is_some).await.expect("sender kept");
        exit.clone().expect("some")
    }

    fn oom_kills(&self, _instance_id: &str, container: &str) -> Option<u64> {
        self.state().oom_kills.get(container).copied()
    }

    async fn stop(&self, instance_id: &str, _containers: Vec<StopTarget>) -> StopOutcome {
        self.state().stops.push(instance_id.to_string());
        StopOutcome {
            clean: true,
            killed: Vec::new(),
        }
    }

    fn release(&self, pod: &PodRecord) -> bool {
        let mut s = self.state();
        if s.release_fails > 0 {
            s.release_fails -= 1;
            return false;
        }
        s.released.push(pod.instance_id.clone());
        true
    }

    fn is_alive(&self, process: &ProcId) -> bool {
        self.state().alive.contains(&process.pid)
    }

    fn process_trace(&self, instance_id: &str, container: &str) -> ProcessTrace {
        let key = (instance_id.to_string(), container.to_string());
        self.state().traces.get(&key).cloned().unwrap_or_default()
    }

    fn in_cgroup(&self, _instance_id: &str, _container: &str, pid: i32) -> bool {
        self.state().alive.contains(&pid)
    }

    async fn kill_container(&self, instance_id: &str, container: &str) {
        self.state()
            .killed
            .push((instance_id.to_string(), container.to_string()));
    }

    async fn remove_orphans(&self, pods: &HashMap<String, Vec<String>>) {
        self.state().orphans_kept = Some(pods.clone());
    }

    async fn containerd_connected(&self) {
        let mut up = self.containerd_up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    async fn containerd_inventory(
        &self,
    ) -> Result<(Vec<ContainerInfo>, Vec<String>), ContainerdError> {
        let mut s = self.state();
        if s.inventory_failures > 0 {
            s.inventory_failures -= 1;
            return Err(crate::runtime::containerd::container_id("bad", "--").unwrap_err());
        }
        Ok((s.inventory.clone(), Vec::new()))
    }

    async fn remove_containers(&self, ids: Vec<String>) {
        self.state().removed_containers.extend(ids);
    }

    fn pod_ip(&self, pod: &PodRecord) -> Option<IpAddr> {
        self.state()
            .ips
            .get(&pod.instance_id)
            .copied()
            .map(IpAddr::V4)
    }

    fn cgroup_path(&self, instance_id: &str, container: &str) -> String {
        format!("riklet/{instance_id}_{container}")
    }

    fn targets(&self, _pods: Vec<&PodRecord>) -> Vec<Target> {
        Vec::new()
    }
}

/// An agent on a fake host, stepped one event at a time.
struct Harness {
    agent: Agent<FakeHost>,
    host: FakeHost,
    reports: mpsc::UnboundedReceiver<InstanceReport>,
    dir: tempfile::TempDir,
}

const BACKOFF_INITIAL: u64 = 10;
const BACKOFF_MAX: u64 = 300;

fn settings() -> AgentSettings {
    AgentSettings {
        node: "node-1".into(),
        log_dir: "/nonexistent/logs".into(),
        uid: 65534,
        gid: 65534,
        stop_grace_period: Duration::from_secs(1),
        backoff_initial: Duration::from_secs(BACKOFF_INITIAL),
        backoff_max: Duration::from_secs(BACKOFF_MAX),
        log_rotation: crate::logs::Rotation::default(),
        log_retention: crate::logs::retention::Retention::new(
            "/nonexistent/state".as_ref(),
            "/nonexistent/logs".as_ref(),
            Duration::ZERO,
        ),
        reserved_ports: vec![],
        start_parallelism: 16,
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(FakeHost::default(), tempfile::tempdir().unwrap())
    }

    /// An agent over an existing state dir (as after a riklet restart).
    fn with(host: FakeHost, dir: tempfile::TempDir) -> Self {
        Self::with_settings(host, dir, settings())
    }

    fn with_settings(host: FakeHost, dir: tempfile::TempDir, settings: AgentSettings) -> Self {
        let store = Store::open(dir.path()).unwrap();
        let (tx, reports) = mpsc::unbounded_channel();
        let agent = Agent::with_host(settings, store, host.clone(), PodUsage::default(), tx);
        Harness {
            agent,
            host,
            reports,
            dir,
        }
    }

    /// Handles the next event (waiting for it, time advancing as needed),
    /// saves and reports what it changed, and says which it was.
    async fn step(&mut self) -> &'static str {
        let ev = tokio::time::timeout(Duration::from_secs(3600), self.agent.rx.recv())
            .await
            .expect("no event within an hour of (paused) time")
            .expect("agent channel open");
        let kind = match &ev {
            Event::Create { .. } => "create",
            Event::Destroy { .. } => "destroy",
            Event::Started { .. } => "started",
            Event::Exited { .. } => "exited",
            Event::RestartDue { .. } => "restart-due",
            Event::BackOffNoticed { .. } => "backoff-noticed",
            Event::Note { .. } => "note",
            Event::Stopped { .. } => "stopped",
            Event::RetryStop { .. } => "retry-stop",
            Event::RetryContainerd => "retry-containerd",
            Event::Reports(_) | Event::Pods(_) | Event::Targets(_) => "query",
        };
        self.agent.on_event(ev).await;
        self.agent.flush().await;
        kind
    }

    /// Steps until an event of `kind` was handled.
    async fn step_until(&mut self, kind: &str) {
        for _ in 0..100 {
            if self.step().await == kind {
                return;
            }
        }
        panic!("no {kind} event in 100 steps");
    }

    /// A CREATE, saved and reported.
    async fn create(&mut self, id: &str, containers: &str, policy: &str) {
        let definition = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","name":"app","replicas":1,
                "spec":{{"restartPolicy":"{policy}","containers":{containers}}}}}"#
        );
        self.agent.create(id.to_string(), &definition);
        self.agent.flush().await;
    }

    /// Makes the current run of a container end.
    fn exit(&self, id: &str, name: &str, exit: ExitRecord) {
        let run = self.container(id, name).run.as_ref().expect("a run");
        self.host.channel(run.process.pid).send_replace(Some(exit));
    }

    fn pod(&self, id: &str) -> &PodRecord {
        &self.agent.pods[id]
    }

    fn container(&self, id: &str, name: &str) -> &ContainerRecord {
        self.pod(id)
            .containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    /// The statuses reported so far, in order.
    fn statuses(&mut self) -> Vec<ResourceStatus> {
        let mut out = Vec::new();
        while let Ok(r) = self.reports.try_recv() {
            out.push(r.status);
        }
        out.dedup();
        out
    }

    /// The record saved on disk.
    fn saved(&self, id: &str) -> Option<PodRecord> {
        Store::open(self.dir.path())
            .unwrap()
            .load_all()
            .unwrap()
            .into_iter()
            .find(|p| p.instance_id == id)
    }
}

const ONE_PROCESS: &str = r#"[{"name":"main","exec":"/bin/app"}]"#;
const TWO_PROCESSES: &str = r#"[{"name":"a","exec":"/bin/a"},{"name":"b","exec":"/bin/b"}]"#;
const ONE_IMAGE: &str = r#"[{"name":"web","image":"busybox:1"}]"#;

fn exit_code(code: i32) -> ExitRecord {
    ExitRecord {
        exit_code: Some(code),
        signal: None,
        finished_at: now_ms(),
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        message: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_created_pod_runs_once_every_container_started_and_is_saved_first() {
    let mut h = Harness::new();
    h.create("app-1", TWO_PROCESSES, "Always").await;
    assert_eq!(h.pod("app-1").phase, Phase::Creating);
    h.step_until("started").await;
    assert_eq!(h.pod("app-1").phase, Phase::Creating, "one of two started");
    h.step_until("started").await;
    assert_eq!(h.pod("app-1").phase, Phase::Running);
    assert_eq!(
        h.statuses(),
        [ResourceStatus::Creating, ResourceStatus::Running]
    );
    let saved = h.saved("app-1").expect("record saved");
    assert_eq!(saved.phase, Phase::Running);
    assert!(saved.containers.iter().all(|c| c.run.is_some()));
    assert_eq!(h.host.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn starts_beyond_the_parallelism_wait_their_turn_in_order() {
    let settings = AgentSettings {
        start_parallelism: 2,
        ..settings()
    };
    let mut h = Harness::with_settings(FakeHost::default(), tempfile::tempdir().unwrap(), settings);
    h.host.state().start_delay = Some(Duration::from_millis(100));
    let ids: Vec<String> = (0..5).map(|i| format!("app-{i}")).collect();
    for id in &ids {
        h.create(id, ONE_PROCESS, "Always").await;
    }
    for _ in &ids {
        h.step_until("started").await;
    }
    assert_eq!(h.host.state().max_in_flight, 2, "two at once, never more");
    for id in &ids {
        assert_eq!(h.pod(id).phase, Phase::Running, "{id}");
    }
    let order: Vec<String> = h.host.state().starts.iter().map(|s| s.0.clone()).collect();
    assert_eq!(order, ids, "in the order they were asked for");
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_while_its_start_waits_for_a_slot_is_never_started() {
    let settings = AgentSettings {
        start_parallelism: 1,
        ..settings()
    };
    let mut h = Harness::with_settings(FakeHost::default(), tempfile::tempdir().unwrap(), settings);
    h.host.state().start_delay = Some(Duration::from_millis(100));
    h.create("first", ONE_PROCESS, "Always").await;
    h.create("queued", ONE_PROCESS, "Always").await;
    h.agent.destroy("queued");
    h.agent.flush().await;
    assert_eq!(h.pod("queued").phase, Phase::Destroying);
    h.step_until("stopped").await;
    assert!(!h.agent.pods.contains_key("queued"));
    assert!(h.saved("queued").is_none());
    assert_eq!(h.pod("first").phase, Phase::Running);
    let started: Vec<String> = h.host.state().starts.iter().map(|s| s.0.clone()).collect();
    assert_eq!(started, ["first"], "the queued start never ran");
    assert_eq!(h.host.state().stops, ["queued"]);
}

#[tokio::test(start_paused = true)]
async fn events_waiting_together_are_saved_together_then_reported() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    let _ = h.statuses();
    // Two changes before the save: nothing is reported, the record on
    // disk is the old one.
    h.exit("app-1", "main", exit_code(1));
    let ev = h.agent.rx.recv().await.unwrap();
    h.agent.on_event(ev).await;
    h.agent.destroy("app-1");
    assert_eq!(h.statuses(), []);
    assert_eq!(h.saved("app-1").unwrap().phase, Phase::Running);
    h.agent.flush().await;
    assert_eq!(h.saved("app-1").unwrap().phase, Phase::Destroying);
    // One report of the pod as saved.
    assert_eq!(h.statuses(), [ResourceStatus::Destroying]);
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_doubling_up_to_the_maximum() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    let mut expected = BACKOFF_INITIAL;
    for restart in 1..=7u32 {
        h.exit("app-1", "main", exit_code(1));
        h.step_until("exited").await;
        let c = h.container("app-1", "main");
        assert_eq!(
            c.backoff_secs, expected,
            "back-off before restart {restart}"
        );
        assert!(c.restart_at.is_some() && c.run.is_none());
        assert_eq!(h.pod("app-1").phase, Phase::Creating);
        assert!(
            h.pod("app-1")
                .reason
                .as_deref()
                .unwrap()
                .starts_with("CrashLoopBackOff")
        );
        let before = tokio::time::Instant::now();
        h.step_until("restart-due").await;
        assert_eq!(before.elapsed().as_secs(), expected, "waited the back-off");
        h.step_until("started").await;
        assert_eq!(h.container("app-1", "main").restart_count, restart);
        assert_eq!(h.pod("app-1").phase, Phase::Running);
        expected = (expected * 2).min(BACKOFF_MAX);
    }
    assert_eq!(h.container("app-1", "main").backoff_secs, BACKOFF_MAX);
}

#[tokio::test(start_paused = true)]
async fn a_long_run_resets_the_back_off() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    for _ in 0..3 {
        h.exit("app-1", "main", exit_code(1));
        h.step_until("started").await;
    }
    assert_eq!(
        h.container("app-1", "main").backoff_secs,
        4 * BACKOFF_INITIAL
    );
    let mut exit = exit_code(1);
    let started_at = h
        .container("app-1", "main")
        .run
        .as_ref()
        .unwrap()
        .started_at;
    exit.finished_at = started_at + BACKOFF_RESET_MS;
    h.exit("app-1", "main", exit);
    h.step_until("exited").await;
    assert_eq!(h.container("app-1", "main").backoff_secs, BACKOFF_INITIAL);
}

#[tokio::test(start_paused = true)]
async fn restart_policies_decide_which_exits_restart() {
    let mut h = Harness::new();
    h.create("never", ONE_PROCESS, "Never").await;
    h.create("onfail-ok", ONE_PROCESS, "OnFailure").await;
    h.create("onfail-err", ONE_PROCESS, "OnFailure").await;
    for _ in 0..3 {
        h.step_until("started").await;
    }
    h.exit("never", "main", exit_code(3));
    h.exit("onfail-ok", "main", exit_code(0));
    h.exit("onfail-err", "main", exit_code(3));
    for _ in 0..3 {
        h.step_until("exited").await;
    }
    assert_eq!(h.pod("never").phase, Phase::Failed);
    assert_eq!(
        h.pod("never").reason.as_deref(),
        Some("container main: Error: exit code 3")
    );
    assert_eq!(h.container("never", "main").restart_at, None);
    assert_eq!(h.pod("onfail-ok").phase, Phase::Completed);
    assert_eq!(h.container("onfail-ok", "main").restart_at, None);
    assert_eq!(h.pod("onfail-err").phase, Phase::Creating);
    h.step_until("started").await;
    assert_eq!(
        h.host.starts(),
        4,
        "only the failed OnFailure pod restarted"
    );
    assert_eq!(h.container("onfail-err", "main").restart_count, 1);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_cannot_be_set_up_is_retried_without_counting_a_restart() {
    let mut h = Harness::new();
    h.host.fail_next_start(
        "web",
        ExitRecord::without_status(phase::ERR_IMAGE_PULL, "registry says 404"),
    );
    h.host.fail_next_start(
        "web",
        ExitRecord::without_status(phase::ERR_IMAGE_PULL, "registry says 404"),
    );
    h.create("app-1", ONE_IMAGE, "Never").await;
    h.step_until("started").await;
    assert_eq!(h.pod("app-1").phase, Phase::Failed);
    assert_eq!(
        h.pod("app-1").reason.as_deref(),
        Some("container web: ErrImagePull: registry says 404; retrying with back-off")
    );
    h.step_until("started").await;
    assert_eq!(
        h.container("app-1", "web").backoff_secs,
        2 * BACKOFF_INITIAL
    );
    h.step_until("started").await;
    assert_eq!(h.pod("app-1").phase, Phase::Running);
    assert_eq!(h.container("app-1", "web").restart_count, 0);
    assert_eq!(h.host.starts(), 3);
}

#[tokio::test(start_paused = true)]
async fn containerd_being_away_is_retried_at_the_initial_back_off() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.host.fail_next_start(
            "web",
            ExitRecord::without_status(phase::CONTAINERD_UNAVAILABLE, "no socket"),
        );
    }
    h.create("app-1", ONE_IMAGE, "Always").await;
    for _ in 0..3 {
        h.step_until("started").await;
        assert_eq!(h.container("app-1", "web").backoff_secs, BACKOFF_INITIAL);
        assert_eq!(h.pod("app-1").phase, Phase::Creating);
    }
    h.step_until("started").await;
    assert_eq!(h.pod("app-1").phase, Phase::Running);
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_is_told_by_the_cgroup_count() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Never").await;
    h.step_until("started").await;
    assert_eq!(h.container("app-1", "main").oom_kills_at_start, None);
    h.host.state().oom_kills.insert("main".into(), 1);
    let mut killed = exit_code(137);
    killed.reason = "Killed".into();
    h.exit("app-1", "main", killed);
    h.step_until("exited").await;
    let exit = h.container("app-1", "main").last_exit.clone().unwrap();
    assert_eq!(exit.reason, "OOMKilled");
    assert!(exit.message.unwrap().contains("OOM killer"));
}

#[tokio::test(start_paused = true)]
async fn an_exit_of_an_older_run_is_ignored() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    let old = h.container("app-1", "main").run.clone().unwrap();
    h.exit("app-1", "main", exit_code(1));
    h.step_until("started").await;
    let current = h.container("app-1", "main").run.clone().unwrap();
    assert_ne!(old, current);
    h.agent.exited("app-1", "main", &old, exit_code(2));
    assert_eq!(h.container("app-1", "main").run.as_ref(), Some(&current));
    assert_eq!(h.pod("app-1").phase, Phase::Running);
}

#[tokio::test(start_paused = true)]
async fn a_delete_stops_releases_and_forgets_the_pod() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    h.statuses();
    h.agent.destroy("app-1");
    assert_eq!(h.pod("app-1").phase, Phase::Destroying);
    assert_eq!(h.statuses(), [], "nothing reported before it is saved");
    h.agent.flush().await;
    assert_eq!(h.saved("app-1").unwrap().phase, Phase::Destroying);
    h.step_until("stopped").await;
    assert!(!h.agent.pods.contains_key("app-1"));
    assert!(h.saved("app-1").is_none());
    assert_eq!(h.host.state().released, ["app-1"]);
    assert_eq!(
        h.statuses(),
        [ResourceStatus::Destroying, ResourceStatus::Terminated]
    );
}

#[tokio::test(start_paused = true)]
async fn a_delete_waits_for_a_start_in_flight() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.agent.destroy("app-1");
    assert!(h.host.state().stops.is_empty(), "no stop while starting");
    h.step_until("started").await;
    assert!(
        h.container("app-1", "main").run.is_some(),
        "the run is kept so that it is stopped"
    );
    h.step_until("stopped").await;
    assert_eq!(h.host.state().stops, ["app-1"]);
    assert!(!h.agent.pods.contains_key("app-1"));
}

#[tokio::test(start_paused = true)]
async fn an_incomplete_delete_is_retried_and_the_record_kept() {
    let mut h = Harness::new();
    h.create("app-1", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    h.host.state().release_fails = 2;
    h.agent.destroy("app-1");
    h.step_until("stopped").await;
    assert!(h.saved("app-1").is_some(), "kept while incomplete");
    let before = tokio::time::Instant::now();
    h.step_until("retry-stop").await;
    assert_eq!(before.elapsed(), STOP_RETRY);
    h.step_until("stopped").await;
    h.step_until("stopped").await;
    assert!(h.saved("app-1").is_none());
    assert_eq!(h.host.state().stops.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_delete_of_an_unknown_pod_answers_terminated() {
    let mut h = Harness::new();
    h.agent.destroy("never-seen");
    h.agent.flush().await;
    assert_eq!(h.statuses(), [ResourceStatus::Terminated]);
    assert!(h.host.state().stops.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_bad_definition_is_refused_and_nothing_runs() {
    let mut h = Harness::new();
    h.agent.create("app-1".into(), r#"{"kind":"Pod"}"#);
    h.agent.create("Bad_Id".into(), r#"{"kind":"Pod"}"#);
    h.agent.flush().await;
    assert_eq!(h.statuses(), [ResourceStatus::Failed]);
    assert!(h.agent.pods.is_empty());
    assert_eq!(h.host.starts(), 0);
}

/// A riklet restart: the records of `h` read again by a new agent on the
/// same host.
fn restart(h: Harness) -> Harness {
    let Harness { host, dir, .. } = h;
    Harness::with(host, dir)
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_live_processes_are_adopted_and_ended_ones_recorded() {
    let mut h = Harness::new();
    h.create("live", ONE_PROCESS, "Always").await;
    h.create("ended", ONE_PROCESS, "Always").await;
    h.create("lost", ONE_PROCESS, "Always").await;
    for _ in 0..3 {
        h.step_until("started").await;
    }
    let run_of = |h: &Harness, id| h.container(id, "main").run.clone().unwrap();
    // While the riklet is away: one ends (its shim records it), one's
    // shim dies without a word.
    let lost = run_of(&h, "lost");
    let ended = run_of(&h, "ended");
    {
        let mut s = h.host.state();
        s.alive.remove(&lost.shim.unwrap().pid);
        s.alive.remove(&ended.shim.unwrap().pid);
        s.traces.insert(
            ("ended".into(), "main".into()),
            ProcessTrace {
                started: None,
                exit: Some(exit_code(4)),
            },
        );
    }
    let live = run_of(&h, "live");
    let mut h = restart(h);
    h.agent.recover().await.unwrap();
    assert_eq!(h.container("live", "main").run.as_ref(), Some(&live));
    assert_eq!(h.pod("live").phase, Phase::Running);
    assert_eq!(
        h.container("ended", "main")
            .last_exit
            .as_ref()
            .unwrap()
            .exit_code,
        Some(4)
    );
    assert!(h.container("ended", "main").restart_at.is_some());
    assert_eq!(
        h.container("lost", "main")
            .last_exit
            .as_ref()
            .unwrap()
            .reason,
        "Lost"
    );
    assert_eq!(h.host.state().killed, [("lost".into(), "main".into())]);
    assert_eq!(h.host.starts(), 3, "nothing started yet: back-offs first");
    // The adopted run is watched.
    h.exit("live", "main", exit_code(0));
    h.step_until("exited").await;
    assert_eq!(
        h.container("live", "main")
            .last_exit
            .as_ref()
            .unwrap()
            .exit_code,
        Some(0)
    );
    let kept = h.host.state().orphans_kept.clone().unwrap();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept["live"], ["main"]);
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_unfinished_starts_and_deletes_are_resumed() {
    let mut h = Harness::new();
    h.create("starting", ONE_PROCESS, "Always").await;
    h.create("deleting", ONE_PROCESS, "Always").await;
    h.step_until("started").await;
    h.step_until("started").await;
    h.agent.destroy("deleting");
    h.agent.flush().await;
    // A riklet that died between saving `starting` and starting a shim.
    let mut record = h.pod("starting").clone();
    record.containers[0].run = None;
    record.containers[0].starting = true;
    let change = crate::state::Change {
        instance_id: "starting".into(),
        record: Some(Store::encode(&record)),
    };
    assert!(
        Store::open(h.dir.path())
            .unwrap()
            .apply(vec![change])
            .is_empty()
    );
    let mut h = restart(h);
    h.agent.recover().await.unwrap();
    assert!(h.container("starting", "main").starting);
    assert_eq!(h.pod("deleting").phase, Phase::Destroying);
    let mut events = [h.step().await, h.step().await];
    events.sort();
    assert_eq!(events, ["started", "stopped"]);
    assert_eq!(h.pod("starting").phase, Phase::Running);
    assert!(!h.agent.pods.contains_key("deleting"));
    assert_eq!(h.host.starts(), 3);
}

fn task(instance: &str, container: &str, status: TaskStatus) -> ContainerInfo {
    ContainerInfo {
        id: format!("{instance}_{container}"),
        labels: HashMap::from([
            ("riklet.instance".into(), instance.into()),
            ("riklet.container".into(), container.into()),
        ]),
        pid: Some(4242),
        status,
    }
}

#[tokio::test(start_paused = true)]
async fn once_containerd_answers_tasks_are_adopted_lost_or_removed() {
    let mut h = Harness::new();
    h.create("alive", ONE_IMAGE, "Always").await;
    h.create("gone", ONE_IMAGE, "Always").await;
    h.step_until("started").await;
    h.step_until("started").await;
    let alive = h.container("alive", "web").run.clone().unwrap();
    let mut h = restart(h);
    {
        let mut s = h.host.state();
        s.inventory = vec![
            task("alive", "web", TaskStatus::Running),
            task("stranger", "web", TaskStatus::Running),
        ];
        s.inventory_failures = 1;
    }
    h.agent.recover().await.unwrap();
    assert!(
        h.container("alive", "web").run.is_some(),
        "image containers wait for containerd"
    );
    // The first listing fails; it is tried again 2 s later.
    h.agent.recover_containerd().await;
    assert_eq!(h.agent.containerd, ContainerdSync::RetryScheduled);
    h.step_until("retry-containerd").await;
    assert_eq!(h.agent.containerd, ContainerdSync::Waiting);
    h.agent.recover_containerd().await;
    assert_eq!(h.agent.containerd, ContainerdSync::Done);
    assert_eq!(h.container("alive", "web").run.as_ref(), Some(&alive));
    assert_eq!(
        h.container("gone", "web")
            .last_exit
            .as_ref()
            .unwrap()
            .reason,
        "Lost"
    );
    h.step_until("started").await;
    assert_eq!(h.container("gone", "web").restart_count, 1);
    tokio::task::yield_now().await;
    assert_eq!(h.host.state().removed_containers, ["stranger_web"]);
}

#[tokio::test(start_paused = true)]
async fn the_event_loop_recovers_image_containers_when_containerd_comes() {
    let mut h = Harness::new();
    // A riklet that died while starting an image container.
    h.create("app-1", ONE_IMAGE, "Always").await;
    let h = Harness::with(FakeHost::default(), h.dir);
    assert!(h.saved("app-1").unwrap().containers[0].starting);
    let host = h.host.clone();
    let handle = h.agent.handle();
    let (stop, _) = tokio::sync::broadcast::channel(1);
    let task = tokio::spawn(h.agent.run(stop.subscribe()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(host.starts(), 0, "no image start without containerd");
    assert_eq!(handle.reports().await[0].status, ResourceStatus::Creating);
    host.containerd_up.send_replace(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(host.starts(), 1);
    assert_eq!(handle.reports().await[0].status, ResourceStatus::Running);
    let _ = stop.send(());
    task.await.unwrap();
}

/// A definition of app `name` exposing `ports` (YAML flow list).
fn with_ports(name: &str, ports: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","name":"{name}","replicas":1,
            "spec":{{"containers":[{{"name":"main","exec":"/bin/app","ports":{ports}}}]}}}}"#
    )
}

#[tokio::test(start_paused = true)]
async fn a_port_another_app_holds_is_refused_naming_the_field_and_the_app() {
    let mut h = Harness::new();
    h.agent.settings.reserved_ports = vec![ReservedPort {
        port: 9102,
        protocol: proto::manifest::Protocol::Tcp,
        owner: "riklet metrics endpoint".into(),
    }];
    let web = with_ports("web", r#"[{"port":18580,"target_port":8080}]"#);
    h.agent.create("web-1".into(), &web);
    h.agent.create("web-2".into(), &web);
    assert!(
        h.agent.pods.contains_key("web-2"),
        "replicas share their ports"
    );
    h.agent.flush().await;
    let _ = h.statuses();

    h.agent.create(
        "other-1".into(),
        &with_ports("other", r#"[{"port":1,"protocol":"UDP"},{"port":18580}]"#),
    );
    assert!(!h.agent.pods.contains_key("other-1"));
    h.agent.flush().await;
    let refused = h.reports.try_recv().unwrap();
    assert_eq!(refused.status, ResourceStatus::Failed);
    assert!(
        refused.metrics.contains(
            r#"spec.containers[0].ports[1].port: port 18580/TCP is already held by app \"web\""#
        ),
        "{}",
        refused.metrics
    );
    // The same number over UDP is another port.
    h.agent.create(
        "other-2".into(),
        &with_ports("other", r#"[{"port":18580,"protocol":"UDP"}]"#),
    );
    assert!(h.agent.pods.contains_key("other-2"));
    h.agent.flush().await;
    let _ = h.statuses();

    h.agent.create(
        "metrics-1".into(),
        &with_ports("thief", r#"[{"port":9102}]"#),
    );
    h.agent.flush().await;
    let refused = h.reports.try_recv().unwrap();
    assert!(
        refused
            .metrics
            .contains("port 9102/TCP is the riklet metrics endpoint"),
        "{}",
        refused.metrics
    );
    assert!(!h.agent.pods.contains_key("metrics-1"));
}

#[tokio::test(start_paused = true)]
async fn only_running_pods_with_an_address_are_endpoints() {
    let mut h = Harness::new();
    let endpoints = h.agent.handle().endpoints();
    h.host
        .state()
        .ips
        .insert("web-1".into(), "10.88.0.7".parse().unwrap());
    h.agent.create(
        "web-1".into(),
        &with_ports("web", r#"[{"port":18580,"target_port":8080}]"#),
    );
    // No address: RUNNING, but not a backend.
    h.agent.create(
        "web-2".into(),
        &with_ports("web", r#"[{"port":18580,"target_port":8080}]"#),
    );
    assert!(
        endpoints.borrow().is_none(),
        "nothing published before recovery"
    );
    h.agent.publish_endpoints();
    assert_eq!(
        endpoints.borrow().as_deref(),
        Some(&[][..]),
        "not running yet"
    );
    h.step_until("started").await;
    h.step_until("started").await;
    h.agent.publish_endpoints();
    {
        let now = endpoints.borrow();
        let now = now.as_ref().unwrap();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0].instance, "web-1");
        assert_eq!(
            now[0].address,
            crate::proxy::model::PodAddress::Ip("10.88.0.7".parse().unwrap())
        );
        assert_eq!(now[0].ports[0].target_port, 8080);
    }
    h.exit("web-1", "main", exit_code(1));
    h.step_until("exited").await;
    h.agent.publish_endpoints();
    assert_eq!(
        endpoints.borrow().as_deref(),
        Some(&[][..]),
        "a restarting pod receives nothing new"
    );
}

#[tokio::test(start_paused = true)]
async fn the_pods_generation_moves_with_the_pods_and_not_with_queries() {
    let mut h = Harness::new();
    let handle = h.agent.handle();
    let generation = handle.pods_generation();
    let mut last = generation.current();
    let mut moved = || {
        let now = generation.current();
        std::mem::replace(&mut last, now) != now
    };
    // Added (the create event, then its container's start).
    let definition = r#"{"apiVersion":"v1","kind":"Pod","name":"app","replicas":1,
        "spec":{"restartPolicy":"Always","containers":[{"name":"main","exec":"/bin/app"}]}}"#;
    handle.create("app-1".into(), definition.into());
    assert_eq!(h.step().await, "create");
    assert!(moved(), "a pod added");
    h.step_until("started").await;
    assert!(moved(), "a container started");
    // Queries change nothing.
    let _ = handle
        .tx
        .send(Event::Targets(tokio::sync::oneshot::channel().0));
    assert_eq!(h.step().await, "query");
    assert!(!moved(), "a query");
    // Restarted.
    h.exit("app-1", "main", exit_code(1));
    h.step_until("exited").await;
    assert!(moved(), "a container exited");
    h.step_until("restart-due").await;
    h.step_until("started").await;
    assert!(moved(), "a container restarted");
    // Removed.
    handle.destroy("app-1".into());
    assert_eq!(h.step().await, "destroy");
    assert!(moved(), "a pod deleted");
    h.step_until("stopped").await;
    assert!(moved(), "a pod forgotten");
}

mod events;
