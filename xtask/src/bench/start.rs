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
//! 3. a burst: `rik apply` (no `--wait`) of one app with [`PODS`]
//!    replicas, timed until every replica is RUNNING ([`super::burst`]);
//! 4. the riklet's footprint: RSS (VmRSS) and CPU (utime+stime over a
//!    [`WINDOW`]) idle, with the [`PODS`] pods of the burst, and idle again
//!    once they are deleted (the delete timed too); the RSS/PSS of the
//!    pods' shims;
//! 5. cleans everything up (apps, riklet, temp dir, cgroups, pins), also
//!    when it fails;
//! 6. reads the steps of each `apply --wait` start from the riklet's log
//!    (run with `riklet::steps=debug`, see [`super::breakdown`]) and gives
//!    each step's median;
//! 7. writes the raw results to `target/bench/start.json` and prints the
//!    tables.
//!
//! Nothing here asserts on time: the figures are reported, not judged.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::breakdown;
use super::burst::burst;
use super::cluster::{BUSYBOX, Cluster, SchedulerProcess, release_binaries, shims};
use super::process::{clock_ticks, footprint, footprint_line, machine, pss_kib, status_kib, step};
use super::stats::{median, ms, series, unix_ms};

/// Samples per latency series.
const ITERATIONS: usize = 20;
/// Pods of the burst and of the footprint measurement.
const PODS: usize = 100;
/// Name prefix of the apps of the `apply --wait` series, whose starts the
/// step breakdown summarises.
const WAIT_PREFIX: &str = "bench-wait-";
/// Window of each footprint measurement.
const WINDOW: Duration = Duration::from_secs(10);

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
        cluster.dir_path().join("riklet.log"),
        out_dir.join("start-riklet.log"),
    );
    let results = match result {
        Ok(mut r) => {
            // The steps of the `apply --wait` series' starts.
            let log = std::fs::read_to_string(out_dir.join("start-riklet.log")).unwrap_or_default();
            r["start_steps"] = breakdown::summary(&log, WAIT_PREFIX);
            r
        }
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
    println!("\nsteps of a bare-process start in the riklet ({WAIT_PREFIX}* pods; ms)");
    print!("{}", breakdown::table(&results["start_steps"]));
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
    let idle = footprint(cluster.pid(), clk_tck, WINDOW)?;
    println!("{}", footprint_line(&idle));

    step(&format!(
        "start latency: {ITERATIONS} iterations, interleaved series"
    ));
    let latency = latency(cluster)?;

    step(&format!(
        "burst: rik apply of one app with replicas: {PODS}, then its footprint"
    ));
    let (mut report, burst) = pods_footprint(cluster, clk_tck)?;

    step(&format!(
        "riklet idle again, pods deleted: {}s window",
        WINDOW.as_secs()
    ));
    let after = footprint(cluster.pid(), clk_tck, WINDOW)?;
    println!("{}", footprint_line(&after));
    report["idle"] = idle;
    report["idle_after_delete"] = after;

    Ok(json!({
        "benchmark": "start",
        "machine": machine,
        "iterations": ITERATIONS,
        "note": "times in ms; p99 of 20 samples is the maximum (nearest rank)",
        "latency": latency,
        "burst": burst,
        "footprint": report,
    }))
}

/// The start latency series, interleaved; the `latency` object of the
/// results.
fn latency(cluster: &Cluster) -> anyhow::Result<Value> {
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
        let name = format!("{WAIT_PREFIX}{i}");
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
        polls.push(poll_until_running(cluster, &name)?);
        poll_running.push(ms(t.elapsed()));
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
    Ok(json!({
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
    }))
}

/// `rik get app NAME` as fast as it goes until its one instance is
/// RUNNING; returns how many calls it took.
fn poll_until_running(cluster: &Cluster, name: &str) -> anyhow::Result<u32> {
    let mut n = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        n += 1;
        if cluster.running(name)? == 1 {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("{name} not RUNNING after 60s");
        }
    }
}

/// A burst of [`PODS`] pods of one app (`rik apply`, then polls until all
/// are RUNNING), then the riklet's and the shims' footprint with them, and
/// how long deleting them takes; the `footprint` object of the results
/// (without the idle windows) and the `burst` object.
fn pods_footprint(cluster: &Cluster, clk_tck: f64) -> anyhow::Result<(Value, Value)> {
    let name = "bench-pods";
    let file = cluster.manifest(name, PODS)?;
    let mut burst = burst(cluster, name, &file, PODS, Duration::from_secs(180))?;
    let loaded = footprint(cluster.pid(), clk_tck, WINDOW)?;
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
    let t = Instant::now();
    cluster.delete_and_wait(name)?;
    let deleted = ms(t.elapsed());
    println!("  {PODS} pods deleted and forgotten by the riklet after {deleted:.0} ms");
    burst["delete_and_forget_ms"] = json!(deleted);
    let footprint = json!({
        "window_s": WINDOW.as_secs(),
        "clk_tck": clk_tck,
        "pods": PODS,
        "with_pods": loaded,
        "shims": {
            "count": shims.len(),
            "rss_kib": series(&shim_rss),
            "pss_kib": series(&shim_pss),
            "rss_kib_total": shim_rss.iter().sum::<f64>(),
            "pss_kib_total": shim_pss.iter().sum::<f64>(),
        },
    });
    Ok((footprint, burst))
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
    let _ = writeln!(out, "\nburst (ms from the spawn of rik apply)");
    let _ = writeln!(out, "{}", super::burst::line(&r["burst"]));
    let _ = writeln!(
        out,
        "  delete, until the riklet forgot every pod: {:.0} ms",
        r["burst"]["delete_and_forget_ms"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    out
}
