//! `cargo xtask bench containers`: how fast a containerd pod starts, against
//! containerd's own client, and what the pull path costs, measured in one
//! run on this machine (docs/benchmarks.md).
//!
//! 1. builds the release binaries and the busybox image (`cargo xtask
//!    image`), starts `docker-registry` on 127.0.0.1 and pushes the image
//!    with `skopeo`;
//! 2. starts a one-node cluster (`riklet --standalone`, the machine's
//!    containerd, a containerd namespace, bridge, CIDR and nft table of its
//!    own);
//! 3. the pull path, [`COLD`] times: `rik apply --wait` of a one-container
//!    pod whose image containerd does not have (cold: resolve, download,
//!    write the content store, unpack), then the same with the image
//!    present (`IfNotPresent`: no registry contact) and with
//!    `imagePullPolicy: Always` (resolved at the registry, nothing
//!    downloaded); the image is removed from containerd (`ctr images rm
//!    --sync`, garbage collection) before each cold sample;
//! 4. start latency with the image present, [`ITERATIONS`] times each,
//!    interleaved: `rik apply -f FILE --wait` from spawn to exit (apply →
//!    RUNNING as the user sees it) of a pod with its own network namespace,
//!    the same with `hostNetwork: true`, the time from the apply to the
//!    task's start as the riklet recorded it, and `ctr -n NS run -d` of the
//!    same image and command (create + start, what containerd's own client
//!    costs);
//! 5. deletes everything (apps, the namespace's images and content, the
//!    bridge and table, the registry), also when it fails, and writes
//!    `target/bench/containers.json`.
//!
//! Nothing here asserts on time: the figures are reported, not judged.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::cluster::{Cluster, SchedulerProcess, free_port, release_binaries};
use super::process::{machine, step};
use super::stats::{median, series};
use crate::registry::Registry;
use crate::setup::sh;

/// Samples per start-latency series.
const ITERATIONS: usize = 20;
/// Cold pulls (each one removes the image first).
const COLD: usize = 5;
/// What every container runs: exits at once on SIGTERM (pid 1 has no
/// default signal action), so that deletes do not wait for the grace
/// period.
const COMMAND: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// `cargo xtask bench containers`.
pub fn containers(root: &Path) -> anyhow::Result<()> {
    for (tool, package) in [
        ("ctr", "containerd"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
    ] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} missing: apt install {package} (or `cargo xtask setup`)");
        }
    }
    if std::os::unix::net::UnixStream::connect("/run/containerd/containerd.sock").is_err() {
        bail!("containerd does not answer on /run/containerd/containerd.sock: `cargo xtask setup`");
    }
    step("build the release binaries and the busybox image");
    let (target, out_dir) = release_binaries(root)?;
    let archive = target.join("images/bench-busybox.tar");
    crate::image::run(&archive, &crate::image::ImageSpec::host("busybox:1"))?;

    step("start a registry on 127.0.0.1 and push the image");
    let registry = Registry::start(
        std::env::temp_dir().join(format!("riklet-bench-registry-{}", std::process::id())),
        format!("127.0.0.1:{}", free_port()?),
    )?;
    registry.push(&archive, "busybox:1")?;
    let image = format!("{}/busybox:1", registry.host);

    let n = std::process::id() % 10_000;
    let env = Env {
        namespace: format!("rik-bench-{n}"),
        bridge: format!("rkc{n}"),
        table: format!("riklet_benchc_{n}"),
        cgroup_root: format!("riklet-bench-{}", std::process::id()),
    };
    let extra = format!(
        "metrics_addr = \"127.0.0.1:0\"\n\n[network]\nbridge = \"{bridge}\"\npod_cidr = \"10.219.0.0/24\"\n\
         nft_table = \"{table}\"\n\n[containerd]\nnamespace = \"{ns}\"\n\n[registries]\ninsecure = [\"{host}\"]\n",
        bridge = env.bridge,
        table = env.table,
        ns = env.namespace,
        host = registry.host,
    );
    step("start a one-node cluster: riklet --standalone");
    let mut cluster = Cluster::start(&target.join("release"), &extra, SchedulerProcess::Embedded)?;
    let result = measure(&cluster, &env, &image);
    let _ = std::fs::copy(
        cluster.dir_path().join("riklet.log"),
        out_dir.join("containers-riklet.log"),
    );
    step("clean up");
    let shutdown = cluster.shutdown();
    drop(cluster);
    drop(env);
    drop(registry);
    let results = result?;
    shutdown?;

    let path = out_dir.join("containers.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!();
    print!("{}", table(&results));
    println!("\nraw results: {}", path.display());
    Ok(())
}

fn measure(cluster: &Cluster, env: &Env, image: &str) -> anyhow::Result<Value> {
    let machine = machine();
    let dir = cluster.dir_path().to_path_buf();
    let manifest = |name: &str, extra: &str| -> anyhow::Result<String> {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n{extra}  containers:\n    \
                 - name: main\n      image: \"{image}\"\n      command: [sh, -c, {COMMAND:?}]\n"
            ),
        )?;
        Ok(path.to_string_lossy().into_owned())
    };
    // apply --wait: spawn → exit, and when the riklet saw the task start.
    let apply = |name: &str, extra: &str| -> anyhow::Result<(f64, Option<f64>)> {
        let file = manifest(name, extra)?;
        let wall = unix_ms();
        let t = Instant::now();
        cluster.rik_ok(&["apply", "-f", &file, "--wait", "--timeout", "120s"])?;
        let elapsed = ms(t.elapsed());
        let started = task_started_at(cluster, name)?.map(|s| (s - wall) as f64);
        delete(cluster, env, name)?;
        Ok((elapsed, started))
    };

    step(&format!("the pull path: {COLD} cold pulls, then present"));
    let mut cold = Vec::new();
    let mut present = Vec::new();
    let mut always = Vec::new();
    for i in 0..COLD {
        env.forget_image(image)?;
        cold.push(apply(&format!("pull-cold-{i}"), "")?.0);
        present.push(apply(&format!("pull-present-{i}"), "")?.0);
        let file = manifest(&format!("pull-always-{i}"), "")?;
        let text = std::fs::read_to_string(&file)?.replace(
            "      command:",
            "      imagePullPolicy: Always\n      command:",
        );
        std::fs::write(&file, text)?;
        let t = Instant::now();
        cluster.rik_ok(&["apply", "-f", &file, "--wait", "--timeout", "120s"])?;
        always.push(ms(t.elapsed()));
        delete(cluster, env, &format!("pull-always-{i}"))?;
        println!(
            "  {:>2}: cold {:7.1} ms | present {:7.1} ms | Always, present {:7.1} ms",
            i + 1,
            cold[i],
            present[i],
            always[i]
        );
    }

    step(&format!(
        "start latency, image present: {ITERATIONS} iterations, interleaved"
    ));
    let mut pod_net = Vec::new();
    let mut pod_net_started = Vec::new();
    let mut host_net = Vec::new();
    let mut host_net_started = Vec::new();
    let mut ctr_run = Vec::new();
    for i in 0..ITERATIONS {
        let (t, s) = apply(&format!("start-pod-{i}"), "")?;
        pod_net.push(t);
        pod_net_started.extend(s);
        let (t, s) = apply(&format!("start-host-{i}"), "  hostNetwork: true\n")?;
        host_net.push(t);
        host_net_started.extend(s);
        ctr_run.push(env.ctr_run(image, &format!("ctr-run-{i}"))?);
        println!(
            "  {:>2}: apply --wait {:7.1} ms | hostNetwork {:7.1} ms | ctr run -d {:7.1} ms",
            i + 1,
            pod_net[i],
            host_net[i],
            ctr_run[i]
        );
    }

    Ok(json!({
        "benchmark": "containers",
        "machine": machine,
        "image": image,
        "command": COMMAND,
        "note": "times in ms; p99 of 20 samples is the maximum (nearest rank); \
                 apply series are rik apply --wait from spawn to exit",
        "pull": {
            "samples": COLD,
            "cold_apply_wait": series(&cold),
            "present_apply_wait": series(&present),
            "always_present_apply_wait": series(&always),
            "cold_minus_present_median": median(&cold) - median(&present),
            "always_minus_present_median": median(&always) - median(&present),
        },
        "start": {
            "iterations": ITERATIONS,
            "apply_wait_pod_network": series(&pod_net),
            "apply_to_task_started_pod_network": series(&pod_net_started),
            "apply_wait_host_network": series(&host_net),
            "apply_to_task_started_host_network": series(&host_net_started),
            "ctr_run_detached": series(&ctr_run),
            "ratio_of_medians_apply_wait_to_ctr_run": median(&pod_net) / median(&ctr_run),
            "ratio_of_medians_apply_wait_host_network_to_ctr_run":
                median(&host_net) / median(&ctr_run),
        },
    }))
}

/// When the riklet saw the app's (only) task start (unix ms), from its
/// runtime memory.
fn task_started_at(cluster: &Cluster, name: &str) -> anyhow::Result<Option<i64>> {
    let text = cluster.rik_ok(&["get", "app", name, "-o", "json"])?;
    let app: Value = serde_json::from_str(&text)?;
    let Some(id) = app["appId"].as_str() else {
        return Ok(None);
    };
    let record = cluster.state_dir().join("pods").join(format!("{id}.json"));
    Ok(std::fs::read(record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["containers"][0]["run"]["started_at"].as_i64()))
}

/// Deletes an app and waits until containerd has no container left.
fn delete(cluster: &Cluster, env: &Env, name: &str) -> anyhow::Result<()> {
    cluster.delete_and_wait(name)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.ctr_ids("containers").is_empty() {
        if Instant::now() > deadline {
            bail!("containers of {name} still there after 60s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The cluster's containerd namespace and pod network, removed on drop.
struct Env {
    namespace: String,
    bridge: String,
    table: String,
    /// The bench cluster's cgroup root (`riklet-bench-<pid>`).
    cgroup_root: String,
}

impl Env {
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.args(["-n", &self.namespace]);
        c
    }

    fn ctr_ids(&self, what: &str) -> Vec<String> {
        self.ctr()
            .args([what, "ls", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the image, its content and snapshots (garbage collection).
    fn forget_image(&self, image: &str) -> anyhow::Result<()> {
        let _ = self
            .ctr()
            .args(["images", "rm", "--sync", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !self.ctr_ids("content").is_empty() {
            bail!(
                "content left after removing {image}: {:?}",
                self.ctr_ids("content")
            );
        }
        Ok(())
    }

    /// `ctr run -d` (create + start, detached) of the image: spawn → exit;
    /// then the task is killed and the container removed (not timed).
    fn ctr_run(&self, image: &str, id: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let out = self
            .ctr()
            .args(["run", "-d", image, id, "sh", "-c", COMMAND])
            .output()
            .context("running ctr run")?;
        let elapsed = ms(t.elapsed());
        if !out.status.success() {
            bail!("ctr run: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let _ = self
            .ctr()
            .args(["tasks", "kill", "-s", "SIGKILL", id])
            .output();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rm = self.ctr().args(["tasks", "rm", id]).output()?;
            if rm.status.success() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sh(self.ctr().args(["containers", "rm", id]))?;
        Ok(elapsed)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for task in self.ctr_ids("tasks") {
            let _ = self
                .ctr()
                .args(["tasks", "kill", "-s", "SIGKILL", &task])
                .output();
            let _ = self.ctr().args(["tasks", "rm", "-f", &task]).output();
        }
        for c in self.ctr_ids("containers") {
            let _ = self.ctr().args(["containers", "rm", &c]).output();
        }
        for image in self.ctr_ids("images") {
            let _ = self.ctr().args(["images", "rm", "--sync", &image]).output();
        }
        for lease in self.ctr_ids("leases") {
            let _ = self.ctr().args(["leases", "rm", "--sync", &lease]).output();
        }
        let _ = Command::new("ctr")
            .args(["namespaces", "rm", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .stderr(Stdio::null())
            .status();
        // runc creates the riklet's root cgroup in every hierarchy; the
        // bench cluster removes those it knows.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&self.cgroup_root));
            }
        }
    }
}

fn table(r: &Value) -> String {
    let row = |label: &str, v: &Value| {
        format!(
            "  {label:<44} {:>8.1} {:>8.1} {:>8.1}\n",
            v["median"].as_f64().unwrap_or(f64::NAN),
            v["p99"].as_f64().unwrap_or(f64::NAN),
            v["min"].as_f64().unwrap_or(f64::NAN),
        )
    };
    let m = &r["machine"];
    let mut out = format!(
        "machine: {} CPUs ({}), kernel {}, {}\n",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?")
    );
    out.push_str(&format!(
        "\n{:<46} {:>8} {:>8} {:>8}\n",
        "(ms)", "median", "p99", "min"
    ));
    let p = &r["pull"];
    out.push_str(&format!("pull path ({} samples)\n", p["samples"]));
    out.push_str(&row("apply --wait, cold pull", &p["cold_apply_wait"]));
    out.push_str(&row(
        "apply --wait, image present",
        &p["present_apply_wait"],
    ));
    out.push_str(&row(
        "apply --wait, Always (present)",
        &p["always_present_apply_wait"],
    ));
    let s = &r["start"];
    out.push_str(&format!(
        "start, image present ({} samples)\n",
        s["iterations"]
    ));
    out.push_str(&row(
        "apply --wait (pod network)",
        &s["apply_wait_pod_network"],
    ));
    out.push_str(&row(
        "apply → task started (pod network)",
        &s["apply_to_task_started_pod_network"],
    ));
    out.push_str(&row(
        "apply --wait (hostNetwork)",
        &s["apply_wait_host_network"],
    ));
    out.push_str(&row(
        "apply → task started (hostNetwork)",
        &s["apply_to_task_started_host_network"],
    ));
    out.push_str(&row("ctr run -d", &s["ctr_run_detached"]));
    out.push_str(&format!(
        "ratio of medians, apply --wait / ctr run: {:.2} (hostNetwork: {:.2})\n",
        s["ratio_of_medians_apply_wait_to_ctr_run"]
            .as_f64()
            .unwrap_or(f64::NAN),
        s["ratio_of_medians_apply_wait_host_network_to_ctr_run"]
            .as_f64()
            .unwrap_or(f64::NAN),
    ));
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
