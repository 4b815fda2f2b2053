//! `cargo xtask soak --cycles N [--container-every K]`: creates and deletes
//! pods in a loop against a standalone riklet (release build) and fails
//! on growth. Each cycle applies one app (`rik apply --wait`), a
//! bare-process one, or every K cycles an image container from a local
//! registry, then deletes it and waits until the riklet forgot it.
//!
//! Samples — the riklet's RSS, open descriptors and threads, and the
//! node objects of its [`Inventory`] (processes, cgroups, netns, veths,
//! nftables rules and elements, BPF pins and proxy map entries,
//! containerd objects, records, leases, log directories) — are taken
//! before the first cycle, after the warm-up (a tenth of the cycles, at
//! least 10, and past the first image container), every twentieth of the
//! run and at the end, once the node is quiet. It fails when the final
//! RSS, descriptors or threads exceed the warm-up sample by more than 5 %
//! (threads: by more than one, or 5 %), or when any node object is not back
//! to its start. Samples and summary: `target/bench/soak.json`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use riklet_inventory::{Inventory, Scope};
use serde_json::{Value, json};

use crate::bench::cluster::{BUSYBOX, Build, Cluster, SchedulerProcess, binaries, free_port};
use crate::registry::Registry;

/// How much the riklet's RSS, descriptors and threads may grow over the
/// warm-up sample.
const GROWTH: f64 = 1.05;
/// Blocking-pool threads idle this long exit: the final sample waits
/// that long after the last cycle.
const QUIET: Duration = Duration::from_secs(12);

/// What a soak run does.
pub struct Options {
    pub cycles: usize,
    /// An image container every K cycles (0: none).
    pub container_every: usize,
    /// The riklet's build: release for figures, CI's dev build for its
    /// short run.
    pub build: Build,
}

/// One sample of the riklet and the node.
#[derive(Debug, Clone)]
struct Sample {
    cycle: usize,
    seconds: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    inventory: Inventory,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "cycle": self.cycle,
            "seconds": self.seconds,
            "rssKiB": self.rss_kib,
            "fds": self.fds,
            "threads": self.threads,
            "objects": self.inventory.counts(),
        })
    }
}

pub fn run(root: &Path, options: &Options) -> anyhow::Result<()> {
    if options.cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let (target, out_dir) = binaries(root, options.build)?;
    let registry = match options.container_every {
        0 => None,
        _ => Some(start_registry(&target)?),
    };
    let env = Env::new();
    let insecure = registry
        .as_ref()
        .map_or(String::new(), |r| format!("\"{}\"", r.host));
    let extra = format!(
        "metrics_addr = \"127.0.0.1:0\"\n\n[network]\nbridge = \"{bridge}\"\npod_cidr = \"10.218.0.0/24\"\n\
         nft_table = \"{table}\"\n\n[containerd]\nnamespace = \"{ns}\"\n\n[registries]\ninsecure = [{insecure}]\n\n\
         [logs]\nretention = \"1s\"\n",
        bridge = env.bridge,
        table = env.table,
        ns = env.namespace,
    );
    let mut cluster = Cluster::start(
        &target.join(options.build.dir()),
        &extra,
        SchedulerProcess::Embedded,
    )?;
    let image = registry.as_ref().map(|r| format!("{}/busybox:1", r.host));
    let result = soak(&cluster, &env, options, image.as_deref());
    let _ = std::fs::copy(
        cluster.dir_path().join("riklet.log"),
        out_dir.join("soak-riklet.log"),
    );
    let shutdown = cluster.shutdown();
    drop(cluster);
    drop(env);
    drop(registry);
    let report = result?;
    shutdown?;
    let path = out_dir.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("samples: {}", path.display());
    match report["failures"].as_array() {
        Some(f) if !f.is_empty() => bail!(
            "the soak found growth:\n{}",
            f.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        _ => Ok(()),
    }
}

/// The cycles and their samples; the report (with its failures).
fn soak(
    cluster: &Cluster,
    env: &Env,
    options: &Options,
    image: Option<&str>,
) -> anyhow::Result<Value> {
    let scope = env.scope(cluster);
    let started = Instant::now();
    let sample = |cycle| take_sample(cluster, &scope, cycle, started);
    // The first image container loads what containerd pods need (the
    // connection's buffers, the registry client): warm up past it.
    let first_container = match options.container_every {
        0 => 0,
        k => k + 1,
    };
    let warm_up = (options.cycles / 10)
        .max(10)
        .max(first_container)
        .min(options.cycles);
    let every = (options.cycles / 20).max(1);
    let mut samples = vec![sample(0)?];
    for cycle in 1..=options.cycles {
        let container = options.container_every > 0 && cycle % options.container_every == 0;
        one_cycle(cluster, cycle, image.filter(|_| container))?;
        if cycle == warm_up || cycle % every == 0 {
            let s = sample(cycle)?;
            println!(
                "cycle {cycle:>6}  {:>7.1}s  rss {:>7} KiB  fds {:>4}  threads {:>3}",
                s.seconds, s.rss_kib, s.fds, s.threads
            );
            samples.push(s);
        }
    }
    let first = samples[0].inventory.clone();
    // Retention (1 s) and the proxy's clean-up (at most 10 s after the
    // last change) end; idle pool threads exit.
    std::thread::sleep(QUIET);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Inventory::take(&scope).diff(&first).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = sample(options.cycles)?;
    let warm = samples
        .iter()
        .find(|s| s.cycle == warm_up)
        .cloned()
        .context("no warm-up sample")?;
    let failures = judge(&warm, &last, &first);
    samples.push(last.clone());
    print!("{}", summary(options, &warm, &last, &failures));
    Ok(json!({
        "cycles": options.cycles,
        "containerEvery": options.container_every,
        "build": options.build.dir(),
        "warmUpCycle": warm_up,
        "seconds": last.seconds,
        "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        "failures": failures,
    }))
}

/// One create and delete: an image container from `image`, or a bare
/// process.
fn one_cycle(cluster: &Cluster, cycle: usize, image: Option<&str>) -> anyhow::Result<()> {
    let name = format!("soak{cycle}");
    let manifest = match image {
        Some(image) => image_manifest(&name, image),
        None => bare_manifest(&name),
    };
    let path = cluster.dir_path().join("soak.yaml");
    std::fs::write(&path, manifest)?;
    let path = path.to_string_lossy();
    cluster
        .rik_ok(&["apply", "-f", &path, "--wait", "--timeout", "60s"])
        .with_context(|| format!("cycle {cycle}: {name} did not run"))?;
    cluster
        .delete_one_and_wait(&name)
        .with_context(|| format!("cycle {cycle}: delete of {name}"))
}

/// What grew: the riklet's figures over the warm-up sample + 5 %, and
/// every node object not back to its start.
fn judge(warm: &Sample, last: &Sample, first: &Inventory) -> Vec<String> {
    let mut failures = Vec::new();
    let allowed = |then: u64| (then as f64 * GROWTH).floor() as u64;
    for (what, then, now, limit) in [
        (
            "RSS (KiB)",
            warm.rss_kib,
            last.rss_kib,
            allowed(warm.rss_kib),
        ),
        ("open descriptors", warm.fds, last.fds, allowed(warm.fds)),
        // Tokio's blocking pool keeps the most threads it needed at once
        // while they are used every 10 s (the retention sweep runs every
        // second): one more than after the warm-up is that, not growth.
        (
            "threads",
            warm.threads,
            last.threads,
            allowed(warm.threads).max(warm.threads + 1),
        ),
    ] {
        if now > limit {
            failures.push(format!(
                "{what}: {now} at the end, {then} after the warm-up (at most {limit})"
            ));
        }
    }
    failures.extend(
        last.inventory
            .diff(first)
            .into_iter()
            .map(|d| format!("node object not back to its start: {d}")),
    );
    failures
}

fn summary(options: &Options, warm: &Sample, last: &Sample, failures: &[String]) -> String {
    let pct = |then: u64, now: u64| (now as f64 / then.max(1) as f64 - 1.0) * 100.0;
    format!(
        "\nsoak: {} cycles (an image container every {}) in {:.0} s, {:.0} ms a cycle\n\
         RSS      {:>7} KiB after warm-up, {:>7} KiB at the end ({:+.1} %)\n\
         fds      {:>7} after warm-up, {:>7} at the end ({:+.1} %)\n\
         threads  {:>7} after warm-up, {:>7} at the end ({:+.1} %)\n\
         node objects back to their start: {}\n",
        options.cycles,
        if options.container_every == 0 {
            "never".to_string()
        } else {
            format!("{} cycles", options.container_every)
        },
        last.seconds,
        last.seconds * 1000.0 / options.cycles as f64,
        warm.rss_kib,
        last.rss_kib,
        pct(warm.rss_kib, last.rss_kib),
        warm.fds,
        last.fds,
        pct(warm.fds, last.fds),
        warm.threads,
        last.threads,
        pct(warm.threads, last.threads),
        if failures.iter().any(|f| f.starts_with("node object")) {
            "no"
        } else {
            "yes"
        },
    )
}

fn take_sample(
    cluster: &Cluster,
    scope: &Scope,
    cycle: usize,
    started: Instant,
) -> anyhow::Result<Sample> {
    let pid = cluster.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status: is the riklet running?"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("listing the riklet's descriptors")?
        .count() as u64;
    Ok(Sample {
        cycle,
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        inventory: Inventory::take(scope),
    })
}

fn bare_manifest(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  containers:\n    - name: c\n      \
         exec: {BUSYBOX}\n      args: [sleep, \"3600\"]\n"
    )
}

fn image_manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  containers:\n    - name: c\n      \
         image: \"{image}\"\n      command: [sleep, \"3600\"]\n"
    )
}

/// The busybox image in a registry on 127.0.0.1.
fn start_registry(target: &Path) -> anyhow::Result<Registry> {
    let archive = target.join("images/soak-busybox.tar");
    crate::image::run(&archive, &crate::image::ImageSpec::host("busybox:1"))?;
    let registry = Registry::start(
        std::env::temp_dir().join(format!("riklet-soak-registry-{}", std::process::id())),
        format!("127.0.0.1:{}", free_port()?),
    )?;
    registry.push(&archive, "busybox:1")?;
    Ok(registry)
}

/// The soak's pod network and containerd namespace, removed when
/// dropped (after the cluster).
struct Env {
    bridge: String,
    table: String,
    namespace: String,
}

impl Env {
    fn new() -> Env {
        let n = std::process::id() % 10_000;
        Env {
            bridge: format!("rks{n}"),
            table: format!("riklet_soak_{n}"),
            namespace: format!("rik-soak-{n}"),
        }
    }

    fn scope(&self, cluster: &Cluster) -> Scope {
        Scope {
            cgroup_root: cluster.cgroup_root().to_string(),
            state_dir: cluster.state_dir(),
            log_dir: cluster.dir_path().join("logs"),
            pin_dir: cluster.pin_dir().to_path_buf(),
            bridge: self.bridge.clone(),
            nft_table: self.table.clone(),
            containerd: Some((
                riklet_inventory::CONTAINERD_SOCKET.into(),
                self.namespace.clone(),
            )),
            app_prefix: "soak".into(),
            exclude_pids: vec![cluster.pid()],
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        for link in riklet_inventory::links_on(&self.bridge) {
            quiet(Command::new("ip").args(["link", "del", &link]));
        }
        quiet(Command::new("ip").args(["link", "del", &self.bridge]));
        quiet(Command::new("nft").args(["delete", "table", "ip", &self.table]));
        let proxy = format!("{}_proxy", self.table);
        quiet(Command::new("nft").args(["delete", "table", "ip", &proxy]));
        for ns in riklet_inventory::netns_named("rik-soak") {
            quiet(Command::new("ip").args(["netns", "del", &ns]));
        }
        let ctr = riklet_inventory::Ctr::new(
            riklet_inventory::CONTAINERD_SOCKET.as_ref(),
            &self.namespace,
        );
        ctr.remove_namespace();
    }
}
