//! A one-node bench cluster and the binaries it runs: the release build,
//! `riklet` (standalone or with a separate `rik-scheduler`), the `rik` CLI
//! against it, and a clean-up that leaves nothing behind, also after a
//! failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::breakdown::LOG_FILTER;

use crate::setup::sh;

/// The program every bench pod runs.
pub(crate) const BUSYBOX: &str = "/bin/busybox";
/// The container's name in the bench manifests.
pub(crate) const CONTAINER: &str = "sleep";

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
                // The start steps, for `bench start`'s breakdown (a few
                // lines per start), unless the caller chose a filter.
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| LOG_FILTER.into()),
                )
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

    /// The log the scheduler writes: the riklet's with `--standalone`.
    pub(crate) fn scheduler_log(&self) -> PathBuf {
        let name = if self.scheduler_embedded {
            "riklet.log"
        } else {
            "scheduler.log"
        };
        self.dir.join(name)
    }

    /// The scheduler's URL, as `rik --scheduler` takes it.
    pub(crate) fn scheduler_url(&self) -> &str {
        &self.scheduler
    }

    pub(crate) fn dir_path(&self) -> &Path {
        &self.dir
    }

    /// `cgroup_root` of the riklet's config.
    pub(crate) fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// `bpf_pin_dir` of the riklet's config.
    pub(crate) fn pin_dir(&self) -> &Path {
        &self.pin_dir
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
    pub(crate) fn manifest(&self, name: &str, replicas: usize) -> anyhow::Result<String> {
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
    pub(crate) fn running(&self, name: &str) -> anyhow::Result<usize> {
        Ok(self
            .instances(name)?
            .iter()
            .filter(|i| i["state"] == "RUNNING")
            .count())
    }

    /// Unix ms at which the shim of the app's (only) instance started it.
    pub(crate) fn started_at(&self, name: &str) -> anyhow::Result<Option<i64>> {
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
            .args(["pods", "-o", "json"])
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

pub(crate) fn kill9(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Pids of the shims with `--run-dir DIR`, DIR under `state`: `riklet-shim
/// --run-dir DIR`, or `riklet shim --run-dir DIR` as riklets before the
/// dedicated shim binary started them.
pub(crate) fn shims(state: &Path) -> Vec<u32> {
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
            let shim = args.first().is_some_and(|a| a.ends_with(b"riklet-shim"))
                || args.iter().any(|a| *a == b"shim");
            shim && args.windows(2).any(|w| {
                w[0] == b"--run-dir"
                    && Path::new(&*String::from_utf8_lossy(w[1])).starts_with(state)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Which build of riklet, rik-scheduler and rik a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Build {
    /// `cargo build --release`: the build figures are quoted from.
    Release,
    /// The dev build, which `cargo xtask ci` has already made for the
    /// end-to-end tests: for CI's short runs, which check and do not
    /// measure (a cold release build would add 12 minutes to CI).
    Dev,
}

impl Build {
    /// The directory under the target dir that holds the binaries.
    pub fn dir(self) -> &'static str {
        match self {
            Build::Release => "release",
            Build::Dev => "debug",
        }
    }
}

/// Builds riklet, rik-scheduler and rik (with the eBPF object as it is);
/// returns the target dir (`build.dir()` holds them).
pub(crate) fn build_binaries(root: &Path, build: Build) -> anyhow::Result<PathBuf> {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(root).arg("build");
    if build == Build::Release {
        cargo.arg("--release");
    }
    sh(cargo.args(["-p", "riklet", "-p", "scheduler", "-p", "rik"]))?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target")))
}

/// Builds the eBPF objects if missing and the binaries of `build`; returns
/// the target dir and `target/bench`, where results go.
pub(crate) fn binaries(root: &Path, build: Build) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !crate::ebpf::objects_built(root) {
        crate::ebpf::build()?;
    }
    let target = build_binaries(root, build)?;
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    Ok((target, out_dir))
}

/// [`binaries`] of the release build: what every benchmark measures.
pub(crate) fn release_binaries(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    binaries(root, Build::Release)
}
