//! `cargo xtask bench start`: how fast a pod starts and what the riklet
//! costs, measured in one run on this machine (docs/benchmarks.md).
//!
//! One run, side by side, so that the figures share the machine's noise:
//!
//! 1. builds the release binaries and starts a one-node cluster
//!    (`riklet --standalone`) isolated like the end-to-end harness: its own
//!    temp dir (state, logs), cgroup root, bpffs pin dir and ports;
//! 2. start latency, [`ITERATIONS`] times each, interleaved: `rik apply -f
//!    FILE --wait` of a bare-process app (`busybox sleep 3600`) from spawn
//!    to exit, i.e. apply → RUNNING as the user sees it; the same apply
//!    without `--wait` followed by a tight `rik get app` loop (what the
//!    CLI's poll interval costs); one `rik get apps` (the CLI's own round
//!    trip); and, as the floor, a plain fork+exec of the same program
//!    (`busybox true`: spawn + wait) and a spawn of `busybox sleep 3600`;
//! 3. the riklet's footprint: RSS (VmRSS) and CPU (utime+stime over a
//!    [`WINDOW`]) idle, with [`PODS`] pods (one app, `replicas: 50`), and
//!    idle again once they are deleted; the RSS/PSS of the pods' shims;
//! 4. cleans everything up (apps, riklet, temp dir, cgroups, pins), also
//!    when it fails;
//! 5. writes the raw results to `target/bench/start.json` and prints a table.
//!
//! Nothing here asserts on time: the figures are reported, not judged.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::setup::sh;

/// Samples per latency series.
const ITERATIONS: usize = 20;
/// Pods of the footprint measurement.
const PODS: usize = 50;
/// Window of each footprint measurement.
const WINDOW: Duration = Duration::from_secs(10);
/// The program every pod and every baseline runs.
const BUSYBOX: &str = "/bin/busybox";
/// The container's name in the bench manifests.
const CONTAINER: &str = "sleep";

/// `cargo xtask bench start`.
pub fn start(root: &Path) -> anyhow::Result<()> {
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} missing: run `cargo xtask setup` (busybox-static)");
    }
    step("build the release binaries");
    let (target, out_dir) = release_binaries(root)?;

    step("start a one-node cluster: riklet --standalone");
    let mut cluster = Cluster::start(
        &target.join("release"),
        "metrics_addr = \"127.0.0.1:0\"\n",
        SchedulerProcess::Embedded,
    )?;
    let result = measure(&mut cluster);
    // Keep the riklet's log next to the results: the temp dir goes away.
    let _ = std::fs::copy(
        cluster.dir.join("riklet.log"),
        out_dir.join("start-riklet.log"),
    );
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "bench failed; riklet log: {}",
                out_dir.join("start-riklet.log").display()
            );
            return Err(e);
        }
    };

    step("clean up");
    cluster.shutdown()?;
    drop(cluster);

    let path = out_dir.join("start.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!();
    print!("{}", table(&results));
    println!("\nraw results: {}", path.display());
    Ok(())
}

/// Everything measured with the cluster up; the JSON written to start.json.
fn measure(cluster: &mut Cluster) -> anyhow::Result<Value> {
    let clk_tck = clock_ticks();
    let machine = machine();

    step(&format!("riklet idle: {}s window", WINDOW.as_secs()));
    // Let the start-up work (eBPF load, first heartbeat) settle.
    std::thread::sleep(Duration::from_secs(2));
    let idle = footprint(cluster.pid(), clk_tck)?;
    println!("{}", footprint_line(&idle));

    step(&format!(
        "start latency: {ITERATIONS} iterations, interleaved series"
    ));
    let mut wait = Vec::new();
    let mut wait_to_started = Vec::new();
    let mut nowait_apply = Vec::new();
    let mut poll_running = Vec::new();
    let mut polls = Vec::new();
    let mut get_rtt = Vec::new();
    let mut fork_exec = Vec::new();
    let mut spawn_only = Vec::new();
    for i in 0..ITERATIONS {
        fork_exec.push(time_fork_exec()?);
        spawn_only.push(time_spawn_only()?);

        let t = Instant::now();
        cluster.rik_ok(&["get", "apps"])?;
        get_rtt.push(ms(t.elapsed()));

        // rik apply --wait: spawn → exit.
        let name = format!("bench-wait-{i}");
        let file = cluster.manifest(&name, 1)?;
        let wall = unix_ms();
        let t = Instant::now();
        cluster.rik_ok(&["apply", "-f", &file, "--wait", "--timeout", "60s"])?;
        wait.push(ms(t.elapsed()));
        // When the shim saw the container's process start, on the wall clock.
        wait_to_started.push(cluster.started_at(&name)?.map(|s| (s - wall) as f64));
        cluster.delete_and_wait(&name)?;

        // rik apply, then `rik get app` as fast as it goes until RUNNING.
        let name = format!("bench-poll-{i}");
        let file = cluster.manifest(&name, 1)?;
        let t = Instant::now();
        cluster.rik_ok(&["apply", "-f", &file])?;
        nowait_apply.push(ms(t.elapsed()));
        let mut n = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            n += 1;
            if cluster.running(&name)? == 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} not RUNNING after 60s");
            }
        }
        poll_running.push(ms(t.elapsed()));
        polls.push(n);
        cluster.delete_and_wait(&name)?;
        println!(
            "  {:>2}: apply --wait {:7.1} ms | apply+poll {:7.1} ms | get {:6.1} ms | fork+exec {:5.2} ms",
            i + 1,
            wait[i],
            poll_running[i],
            get_rtt[i],
            fork_exec[i]
        );
    }
    let started: Vec<f64> = wait_to_started.iter().flatten().copied().collect();

    step(&format!("{PODS} pods: one app with replicas: {PODS}"));
    let name = "bench-pods";
    let file = cluster.manifest(name, PODS)?;
    let t = Instant::now();
    cluster.rik_ok(&["apply", "-f", &file, "--wait", "--timeout", "180s"])?;
    let pods_ready_ms = ms(t.elapsed());
    let running = cluster.running(name)?;
    if running != PODS {
        bail!("{running} of {PODS} pods RUNNING after `rik apply --wait`");
    }
    println!("  all {PODS} RUNNING after {pods_ready_ms:.0} ms");
    let loaded = footprint(cluster.pid(), clk_tck)?;
    println!("{}", footprint_line(&loaded));
    let shims = shims(&cluster.state_dir());
    let shim_rss: Vec<f64> = shims
        .iter()
        .filter_map(|&p| status_kib(p, "VmRSS:"))
        .collect();
    let shim_pss: Vec<f64> = shims.iter().filter_map(|&p| pss_kib(p)).collect();
    println!(
        "  {} shims: RSS median {:.0} KiB, PSS median {:.0} KiB",
        shims.len(),
        median(&shim_rss),
        median(&shim_pss)
    );
    if shims.len() != PODS {
        eprintln!("  note: {} shims found for {PODS} pods", shims.len());
    }
    cluster.delete_and_wait(name)?;

    step(&format!(
        "riklet idle again, pods deleted: {}s window",
        WINDOW.as_secs()
    ));
    let after = footprint(cluster.pid(), clk_tck)?;
    println!("{}", footprint_line(&after));

    Ok(json!({
        "benchmark": "start",
        "machine": machine,
        "iterations": ITERATIONS,
        "note": "times in ms; p99 of 20 samples is the maximum (nearest rank)",
        "latency": {
            "apply_wait": series(&wait),
            "apply_wait_to_process_started": series(&started),
            "apply_then_tight_poll": series(&poll_running),
            "apply_then_tight_poll_polls": polls,
            "apply_no_wait": series(&nowait_apply),
            "cli_get_apps_round_trip": series(&get_rtt),
            "fork_exec_busybox_true": series(&fork_exec),
            "spawn_busybox_sleep": series(&spawn_only),
            "ratio_of_medians_apply_wait_to_fork_exec": median(&wait) / median(&fork_exec),
            "ratio_of_medians_apply_wait_to_spawn": median(&wait) / median(&spawn_only),
        },
        "footprint": {
            "window_s": WINDOW.as_secs(),
            "clk_tck": clk_tck,
            "idle": idle,
            "pods": PODS,
            "pods_apply_wait_ms": pods_ready_ms,
            "with_pods": loaded,
            "idle_after_delete": after,
            "shims": {
                "count": shims.len(),
                "rss_kib": series(&shim_rss),
                "pss_kib": series(&shim_pss),
                "rss_kib_total": shim_rss.iter().sum::<f64>(),
                "pss_kib_total": shim_pss.iter().sum::<f64>(),
            },
        },
    }))
}

/// Where a bench cluster's scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchedulerProcess {
    /// In the riklet (`riklet --standalone`).
    Embedded,
    /// A `rik-scheduler` process of its own, so that the riklet's CPU use
    /// is the riklet's only.
    Separate,
}

/// A one-node cluster and everything it created.
pub(crate) struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    cgroup_root: String,
    pin_dir: PathBuf,
    scheduler: String,
    /// `riklet --standalone`: the scheduler lives and dies with the riklet.
    scheduler_embedded: bool,
    riklet: Option<Child>,
    scheduler_process: Option<Child>,
}

impl Cluster {
    /// Starts a cluster; `extra` is appended to the riklet's config.
    pub(crate) fn start(
        bin: &Path,
        extra: &str,
        scheduler: SchedulerProcess,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with(bin, extra, scheduler, &[])
    }

    /// [`Cluster::start`] with `riklet_args` added to the riklet's command
    /// line (e.g. `--proxy nftables`).
    pub(crate) fn start_with(
        bin: &Path,
        extra: &str,
        scheduler: SchedulerProcess,
        riklet_args: &[String],
    ) -> anyhow::Result<Cluster> {
        let id = format!("bench-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("riklet-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            cgroup_root: format!("riklet-{id}"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/riklet-{id}")),
            scheduler: format!("http://127.0.0.1:{port}"),
            scheduler_embedded: scheduler == SchedulerProcess::Embedded,
            dir,
            riklet: None,
            scheduler_process: None,
        };
        if scheduler == SchedulerProcess::Separate {
            let log = std::fs::File::create(cluster.dir.join("scheduler.log"))?;
            cluster.scheduler_process = Some(
                Command::new(cluster.bin.join("rik-scheduler"))
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--state-dir")
                    .arg(cluster.dir.join("scheduler"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("starting rik-scheduler")?,
            );
        }
        let config = format!(
            "node_name = \"{id}\"\nstandalone_listen = \"127.0.0.1:{port}\"\nscheduler = \"{sched}\"\n\
             log_dir = \"{logs}\"\ncgroup_root = \"{cg}\"\nbpf_pin_dir = \"{pins}\"\napi_listen = \"127.0.0.1:0\"\n\
             heartbeat_interval = \"5s\"\nstop_grace_period = \"3s\"\nrestart_backoff_initial = \"1s\"\n{extra}",
            sched = cluster.scheduler,
            logs = cluster.dir.join("logs").display(),
            cg = cluster.cgroup_root,
            pins = cluster.pin_dir.display(),
        );
        std::fs::write(cluster.config_path(), config)?;
        cluster.spawn_riklet(riklet_args)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = cluster.rik(&["get", "nodes", "-o", "json"])?;
            let ready = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|nodes| nodes.iter().any(|n| n["ready"] == true && n["id"] == id));
            if ready {
                break;
            }
            cluster.check_riklet_alive()?;
            if Instant::now() > deadline {
                bail!("timed out after 30s waiting for node {id} to be ready");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("  node {id} ready, scheduler {}", cluster.scheduler);
        Ok(cluster)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("riklet.toml")
    }

    /// Starts the riklet process (its log appended to `riklet.log`).
    fn spawn_riklet(&mut self, riklet_args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("riklet.log"))?;
        self.riklet = Some(
            Command::new(self.bin.join("riklet"))
                .args(self.scheduler_embedded.then_some("--standalone"))
                .arg("--config")
                .arg(self.config_path())
                .arg("--state-dir")
                .arg(self.state_dir())
                .args(riklet_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting riklet")?,
        );
        Ok(())
    }

    /// An error carrying the riklet's log if its process has exited.
    fn check_riklet_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .riklet
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "riklet exited ({status}); log:\n{}",
                std::fs::read_to_string(self.dir.join("riklet.log")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Stops the riklet (SIGTERM: its pods keep running) and starts it
    /// again with `riklet_args`; returns once its control socket answers
    /// `riklet status`. Only with a separate scheduler: an embedded one
    /// would restart empty.
    pub(crate) fn restart_riklet(&mut self, riklet_args: &[String]) -> anyhow::Result<()> {
        if self.scheduler_embedded {
            bail!("restart_riklet needs SchedulerProcess::Separate");
        }
        self.stop_riklet();
        self.spawn_riklet(riklet_args)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answered = Command::new(self.bin.join("riklet"))
                .arg("--state-dir")
                .arg(self.state_dir())
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(());
            }
            self.check_riklet_alive()?;
            if Instant::now() > deadline {
                bail!("timed out after 30s waiting for the restarted riklet's control socket");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn dir_path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn bin_path(&self) -> &Path {
        &self.bin
    }

    pub(crate) fn pid(&self) -> u32 {
        self.riklet.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn rik(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(self.bin.join("rik"))
            .arg("--scheduler")
            .arg(&self.scheduler)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running rik")
    }

    pub(crate) fn rik_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.rik(args)?;
        if !out.status.success() {
            bail!(
                "rik {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes the manifest of a `busybox sleep 3600` app; returns its path.
    fn manifest(&self, name: &str, replicas: usize) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Pod\nname: {name}\nreplicas: {replicas}\nspec:\n  containers:\n    \
                 - name: {CONTAINER}\n      exec: {BUSYBOX}\n      args: [sleep, \"3600\"]\n"
            ),
        )?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// `rik get app NAME -o json` as a list of instances (one is an object).
    pub(crate) fn instances(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let text = self.rik_ok(&["get", "app", name, "-o", "json"])?;
        Ok(match serde_json::from_str::<Value>(&text)? {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            one => vec![one],
        })
    }

    /// How many instances of the app are RUNNING.
    fn running(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self
            .instances(name)?
            .iter()
            .filter(|i| i["state"] == "RUNNING")
            .count())
    }

    /// Unix ms at which the shim of the app's (only) instance started it.
    fn started_at(&self, name: &str) -> anyhow::Result<Option<i64>> {
        let instances = self.instances(name)?;
        let Some(id) = instances.first().and_then(|i| i["appId"].as_str()) else {
            return Ok(None);
        };
        let path = self
            .state_dir()
            .join("run")
            .join(id)
            .join(CONTAINER)
            .join("started.json");
        Ok(std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["started_at"].as_i64()))
    }

    /// `rik delete NAME`, then waits until `rik get apps` no longer lists it
    /// and its pods' shims have exited.
    pub(crate) fn delete_and_wait(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        self.delete_and_wait_unlisted(name, deadline)?;
        // The scheduler forgets the app at once; the node tears its pods
        // down after. Wait for that too, so that it does not overlap the
        // next measurement.
        while !shims(&self.state_dir()).is_empty() {
            if Instant::now() > deadline {
                bail!("timed out after 60s waiting for the shims of {name} to exit");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The pod clean-up (network, cgroups, records) ends after the
        // shims: stopping the riklet before it would leave netns and veths.
        while !self.local_pods()?.is_empty() {
            if Instant::now() > deadline {
                bail!("timed out after 60s waiting for the riklet to forget {name}'s pods");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// [`Cluster::delete_and_wait`] for one app among others that keep
    /// running: waits until the riklet has forgotten this app's pods (their
    /// clean-up ends after their shims).
    pub(crate) fn delete_one_and_wait(&self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        self.delete_and_wait_unlisted(name, deadline)?;
        while self.local_pods()?.iter().any(|p| p["app"] == name) {
            if Instant::now() > deadline {
                bail!("timed out after 60s waiting for the riklet to forget {name}'s pods");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `rik delete NAME`, then waits until `rik get apps` no longer lists it.
    fn delete_and_wait_unlisted(&self, name: &str, deadline: Instant) -> anyhow::Result<()> {
        self.rik_ok(&["delete", name])?;
        loop {
            let text = self.rik_ok(&["get", "apps", "-o", "json"])?;
            // Empty stdout: no app at all ("No resources found." on stderr).
            let listed = !text.trim().is_empty()
                && serde_json::from_str::<Value>(&text)?
                    .as_array()
                    .is_some_and(|apps| apps.iter().any(|a| a["name"] == name));
            if !listed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after 60s waiting for {name} to be gone");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The riklet's own list of pods (`riklet pods`).
    pub(crate) fn local_pods(&self) -> anyhow::Result<Vec<Value>> {
        let out = Command::new(self.bin.join("riklet"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("pods")
            .output()
            .context("riklet pods")?;
        if !out.status.success() {
            bail!(
                "riklet pods: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let pods: Value = serde_json::from_slice(&out.stdout).context("riklet pods JSON")?;
        Ok(pods.as_array().cloned().unwrap_or_default())
    }

    /// The orderly end: every app deleted, then SIGTERM to the riklet.
    pub(crate) fn shutdown(&mut self) -> anyhow::Result<()> {
        let text = self.rik_ok(&["get", "apps", "-o", "json"])?;
        if !text.trim().is_empty() {
            let apps: Value = serde_json::from_str(&text)?;
            for app in apps.as_array().into_iter().flatten() {
                if let Some(name) = app["name"].as_str() {
                    self.delete_and_wait(name)?;
                }
            }
        }
        self.stop_riklet();
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop_riklet(&mut self) {
        let Some(mut child) = self.riklet.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("riklet did not stop on SIGTERM within 15s: SIGKILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    /// Removes whatever is left, also after a failure: riklet, shims and pod
    /// processes (SIGKILL), cgroups, pins, the temp dir.
    fn drop(&mut self) {
        self.stop_riklet();
        if let Some(mut scheduler) = self.scheduler_process.take() {
            let _ = scheduler.kill();
            let _ = scheduler.wait();
        }
        let leftover = shims(&self.state_dir());
        kill9(&leftover);
        for mount in ["unified", "cpu", "cpuacct", "memory", "pids", ""] {
            let root = Path::new("/sys/fs/cgroup")
                .join(mount)
                .join(&self.cgroup_root);
            if root.is_dir() {
                remove_cgroup(&root);
            }
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a cgroup directory, depth first, killing what still runs in it.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_cgroup(&p);
            }
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        let pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        kill9(&pids);
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove cgroup {}", dir.display());
}

fn kill9(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Pids of the shims (`riklet shim --run-dir DIR`) with DIR under `state`.
fn shims(state: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.iter().any(|a| *a == b"shim")
                && args.windows(2).any(|w| {
                    w[0] == b"--run-dir"
                        && Path::new(&*String::from_utf8_lossy(w[1])).starts_with(state)
                })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// fork+exec+exit: `busybox true`, spawn + wait.
fn time_fork_exec() -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = Command::new(BUSYBOX)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?
        .wait()?;
    let elapsed = ms(t.elapsed());
    if !status.success() {
        bail!("{BUSYBOX} true: {status}");
    }
    Ok(elapsed)
}

/// fork+exec only: spawn `busybox sleep 3600` (returns once exec succeeded),
/// then kill it (not timed).
fn time_spawn_only() -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut child = Command::new(BUSYBOX)
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let elapsed = ms(t.elapsed());
    child.kill()?;
    child.wait()?;
    Ok(elapsed)
}

/// RSS (sampled every second) and CPU of a process over [`WINDOW`].
fn footprint(pid: u32, clk_tck: f64) -> anyhow::Result<Value> {
    let cpu0 = cpu_ticks(pid).context("reading the riklet's /proc/PID/stat")?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let end = t0 + WINDOW;
    loop {
        rss.extend(status_kib(pid, "VmRSS:"));
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(1)));
    }
    let cpu1 = cpu_ticks(pid).context("reading the riklet's /proc/PID/stat")?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu_s = (cpu1 - cpu0) as f64 / clk_tck;
    Ok(json!({
        "rss_kib": series(&rss),
        "rss_mib_median": median(&rss) / 1024.0,
        "pss_kib": pss_kib(pid),
        "threads": status_kib(pid, "Threads:"),
        "cpu_seconds": cpu_s,
        "wall_seconds": wall,
        "cpu_percent_of_one_core": 100.0 * cpu_s / wall,
    }))
}

fn footprint_line(f: &Value) -> String {
    format!(
        "  riklet RSS median {:.1} MiB (max {:.1} MiB), CPU {:.2}% of one core",
        f["rss_mib_median"].as_f64().unwrap_or(f64::NAN),
        f["rss_kib"]["max"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        f["cpu_percent_of_one_core"].as_f64().unwrap_or(f64::NAN)
    )
}

/// utime + stime (clock ticks) from /proc/PID/stat: the whole process.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3.
    let rest: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let utime: u64 = rest.get(14 - 3)?.parse().ok()?;
    let stime: u64 = rest.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// A numeric line of /proc/PID/status (`VmRSS:` is in KiB).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Proportional set size (KiB): shared pages split among their users.
pub(crate) fn pss_kib(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok());
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_kib": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").trim(),
        "date": cmd("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": cmd("git", &["rev-parse", "--short", "HEAD"]),
    })
}

/// Samples with their median, p99 (nearest rank: of 20 samples, the
/// maximum), min and max.
pub(crate) fn series(samples: &[f64]) -> Value {
    json!({
        "n": samples.len(),
        "median": median(samples),
        "p99": p99(samples),
        "min": sorted(samples).first(),
        "max": sorted(samples).last(),
        "samples": samples,
    })
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

pub(crate) fn median(samples: &[f64]) -> f64 {
    let v = sorted(samples);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Nearest-rank p99: the ⌈0.99·n⌉-th smallest sample.
pub(crate) fn p99(samples: &[f64]) -> f64 {
    let v = sorted(samples);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (0.99 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The results as a table.
fn table(r: &Value) -> String {
    let mut out = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), kernel {}, {}",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "\nstart latency, {} samples each (ms; p99 of 20 = max)",
        r["iterations"]
    );
    let _ = writeln!(out, "{:<44} {:>9} {:>9} {:>9}", "", "median", "p99", "min");
    let l = &r["latency"];
    for (key, label) in [
        ("apply_wait", "rik apply --wait (apply -> RUNNING)"),
        (
            "apply_wait_to_process_started",
            "  of which: apply -> process started",
        ),
        (
            "apply_then_tight_poll",
            "rik apply + tight rik get -> RUNNING",
        ),
        ("apply_no_wait", "rik apply (no --wait)"),
        ("cli_get_apps_round_trip", "rik get apps (CLI round trip)"),
        ("fork_exec_busybox_true", "fork+exec+exit (busybox true)"),
        ("spawn_busybox_sleep", "spawn only (busybox sleep 3600)"),
    ] {
        let s = &l[key];
        let _ = writeln!(
            out,
            "{label:<44} {:>9.2} {:>9.2} {:>9.2}",
            s["median"].as_f64().unwrap_or(f64::NAN),
            s["p99"].as_f64().unwrap_or(f64::NAN),
            s["min"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        out,
        "ratio of medians, apply --wait / fork+exec: {:.0}x; / spawn: {:.0}x",
        l["ratio_of_medians_apply_wait_to_fork_exec"]
            .as_f64()
            .unwrap_or(f64::NAN),
        l["ratio_of_medians_apply_wait_to_spawn"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    let f = &r["footprint"];
    let _ = writeln!(out, "\nriklet footprint, {} s windows", f["window_s"]);
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>12} {:>14}",
        "", "RSS MiB", "PSS MiB", "CPU % 1 core"
    );
    for (key, label) in [
        ("idle", "idle (no pods)".to_string()),
        ("with_pods", format!("{} pods", f["pods"])),
        ("idle_after_delete", "idle again (pods deleted)".to_string()),
    ] {
        let s = &f[key];
        let _ = writeln!(
            out,
            "{label:<34} {:>12.1} {:>12.1} {:>14.2}",
            s["rss_mib_median"].as_f64().unwrap_or(f64::NAN),
            s["pss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            s["cpu_percent_of_one_core"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let sh = &f["shims"];
    let _ = writeln!(
        out,
        "one shim (median of {}): RSS {:.0} KiB, PSS {:.0} KiB; all shims: RSS {:.1} MiB, PSS {:.1} MiB",
        sh["count"],
        sh["rss_kib"]["median"].as_f64().unwrap_or(f64::NAN),
        sh["pss_kib"]["median"].as_f64().unwrap_or(f64::NAN),
        sh["rss_kib_total"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        sh["pss_kib_total"].as_f64().unwrap_or(f64::NAN) / 1024.0
    );
    let _ = writeln!(
        out,
        "{} pods: rik apply --wait took {:.0} ms",
        f["pods"],
        f["pods_apply_wait_ms"].as_f64().unwrap_or(f64::NAN)
    );
    out
}

pub(crate) fn step(what: &str) {
    println!("\n==> {what}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds riklet, rik-scheduler and rik in release mode (with the eBPF
/// object as it is); returns the target dir (`release/` holds them).
pub(crate) fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    sh(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "riklet",
        "-p",
        "scheduler",
        "-p",
        "rik",
    ]))?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target")))
}

/// Builds the eBPF objects if missing and the release binaries; returns the
/// target dir and `target/bench`, where results go.
pub(crate) fn release_binaries(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !crate::ebpf::objects_built(root) {
        crate::ebpf::build()?;
    }
    let target = build_release(root)?;
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    Ok((target, out_dir))
}
