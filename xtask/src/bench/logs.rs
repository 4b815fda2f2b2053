//! `cargo xtask bench logs`: what capturing, following and shipping pod
//! logs costs, in one run on this machine (docs/benchmarks.md).
//!
//! 1. capture: a bare-process pod writes [`CAPTURE_BYTES`] of 100-byte
//!    lines (`yes | head -c`) as fast as it can through its shim into
//!    rotated CRI files (the node's default 10 MiB × 5), timed by the pod
//!    itself; beside it, interleaved, the same writer redirected to a plain
//!    file on the same disk: the limit;
//! 2. CPU: the riklet's and the shim's CPU while a pod prints about 10,000
//!    lines a second, scaled to exactly 10,000;
//! 3. `rik logs -f` latency: a pod prints its clock every 100 ms; each
//!    line's delay until `rik logs -f` prints it;
//! 4. shipping: a second cluster with a syslog sink to an rsyslogd of the
//!    bench's own (RFC 5424 over TCP); a pod prints [`SHIP_LINES`] lines
//!    at once; lines a second from the first shipped record to the last,
//!    read from the shipper's counter, and the count rsyslog wrote.
//!
//! Results in `target/bench/logs.json`. Nothing is judged here.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::cluster::{Cluster, SchedulerProcess, free_port, release_binaries};
use super::metrics::{get, metrics_port};
use super::process::{clock_ticks, cpu_ticks, step};
use super::stats::{median, p99, series};

/// Bytes each capture run writes: 2,560,000 whole lines of 100 bytes, so
/// that the last line is not cut.
const CAPTURE_BYTES: u64 = 256_000_000;
/// Capture runs of each series.
const CAPTURE_RUNS: usize = 5;
/// Window of the CPU measurement.
const CPU_WINDOW: Duration = Duration::from_secs(10);
/// `rik logs -f` samples.
const FOLLOW_SAMPLES: usize = 100;
/// Lines the shipping pod prints.
const SHIP_LINES: u64 = 500_000;
/// The shell the bench pods run (bare processes see the host's files).
const SH: &str = "/bin/sh";

/// `cargo xtask bench logs`.
pub fn logs(root: &Path) -> anyhow::Result<()> {
    let rsyslogd = Path::new("/usr/sbin/rsyslogd");
    if !rsyslogd.exists() {
        bail!(
            "{} missing: run `cargo xtask setup` (rsyslog)",
            rsyslogd.display()
        );
    }
    step("build the release binaries");
    let (target, out_dir) = release_binaries(root)?;
    let bin = target.join("release");

    step("start a one-node cluster: riklet --standalone, no log sinks");
    let mut cluster = Cluster::start(
        &bin,
        "metrics_addr = \"127.0.0.1:0\"\n",
        SchedulerProcess::Embedded,
    )?;
    let node = capture_cpu_follow(&cluster);
    let _ = std::fs::copy(
        cluster.dir_path().join("riklet.log"),
        out_dir.join("logs-riklet.log"),
    );
    cluster.shutdown()?;
    let mut results = node?;

    step("shipping: an rsyslogd and a cluster with a syslog sink");
    results["shipping"] = shipping(&bin)?;

    let path = out_dir.join("logs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!();
    print!("{}", table(&results));
    println!("\nraw results: {}", path.display());
    Ok(())
}

fn capture_cpu_follow(cluster: &Cluster) -> anyhow::Result<Value> {
    step(&format!(
        "capture: {CAPTURE_RUNS} × {} MB through the shim and to a plain file, interleaved",
        CAPTURE_BYTES / 1_000_000
    ));
    let capture = capture(cluster)?;
    step(&format!(
        "CPU at ~10,000 lines/s, {}s window",
        CPU_WINDOW.as_secs()
    ));
    let cpu = cpu_at_10k_lines(cluster)?;
    step(&format!("rik logs -f: {FOLLOW_SAMPLES} lines"));
    let follow = follow_latency(cluster)?;
    Ok(json!({
        "machine": super::process::machine(),
        "capture": capture,
        "cpu_at_10k_lines": cpu,
        "follow_latency_ms": follow,
    }))
}

/// The writer of the capture series: times itself, prints the elapsed
/// nanoseconds on stderr.
fn capture_script() -> String {
    format!(
        "s=$(date +%s%N); yes {line} | head -c {CAPTURE_BYTES}; e=$(date +%s%N); \
         echo elapsed_ns=$((e-s)) >&2",
        line = "x".repeat(99)
    )
}

fn elapsed_ns(text: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("elapsed_ns="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no elapsed_ns= in {text:?}"))
}

fn capture(cluster: &Cluster) -> anyhow::Result<Value> {
    let mbps = |ns: f64| CAPTURE_BYTES as f64 / 1e6 / (ns / 1e9);
    let (mut pod, mut plain) = (Vec::new(), Vec::new());
    for i in 0..CAPTURE_RUNS {
        let name = format!("bench-capture-{i}");
        apply(cluster, &name, &capture_script(), "")?;
        wait_state(cluster, &name, "TERMINATED", Duration::from_secs(120))?;
        let tail = cluster.rik_ok(&["logs", &name, "--tail", "3"])?;
        pod.push(mbps(elapsed_ns(&tail)?));
        cluster.delete_and_wait(&name)?;

        let file = cluster.dir_path().join("plain.out");
        let out = Command::new(SH)
            .args(["-c", &capture_script()])
            .stdout(std::fs::File::create(&file)?)
            .output()
            .context("running the plain-file writer")?;
        plain.push(mbps(elapsed_ns(&String::from_utf8_lossy(&out.stderr))?));
        std::fs::remove_file(&file)?;
        println!(
            "  run {i}: pod {:.0} MB/s, plain file {:.0} MB/s",
            pod[i], plain[i]
        );
    }
    Ok(json!({
        "bytes": CAPTURE_BYTES,
        "pod_mb_per_s": series(&pod),
        "plain_file_mb_per_s": series(&plain),
        "ratio_of_medians": median(&pod) / median(&plain),
    }))
}

fn cpu_at_10k_lines(cluster: &Cluster) -> anyhow::Result<Value> {
    let name = "bench-lines";
    // 100 lines every 10 ms, a little under 10,000 a second with the
    // fork of `sleep`; the measured rate scales the figure.
    apply(
        cluster,
        name,
        "while :; do seq 1 100; sleep 0.01; done",
        "  logs: {maxSize: 512Mi}\n",
    )?;
    let app = wait_state(cluster, name, "RUNNING", Duration::from_secs(30))?;
    let pid = app["containers"][0]["pid"]
        .as_u64()
        .context("no pid in the app's status")? as u32;
    let shim = ppid(pid).context("the pod's shim")?;
    let file = current_log(cluster, name, &app)?;
    std::thread::sleep(Duration::from_secs(2));

    let clk = clock_ticks();
    let ticks = || -> anyhow::Result<u64> {
        Ok(cpu_ticks(cluster.pid()).context("riklet stat")?
            + cpu_ticks(shim).context("shim stat")?)
    };
    let (lines0, cpu0, t0) = (count_lines(&file)?, ticks()?, Instant::now());
    std::thread::sleep(CPU_WINDOW);
    let (lines1, cpu1, wall) = (count_lines(&file)?, ticks()?, t0.elapsed());
    cluster.delete_and_wait(name)?;

    let rate = (lines1 - lines0) as f64 / wall.as_secs_f64();
    let cores = (cpu1 - cpu0) as f64 / clk / wall.as_secs_f64();
    println!("  {rate:.0} lines/s: riklet + shim {cores:.4} cores");
    Ok(json!({
        "lines_per_s": rate,
        "riklet_and_shim_cores": cores,
        "cores_per_10k_lines_per_s": cores * 10_000.0 / rate,
    }))
}

fn follow_latency(cluster: &Cluster) -> anyhow::Result<Value> {
    let name = "bench-follow";
    apply(cluster, name, "while :; do date +%s%N; sleep 0.1; done", "")?;
    wait_state(cluster, name, "RUNNING", Duration::from_secs(30))?;
    let mut rik = Command::new(cluster.bin_path().join("rik"))
        .args([
            "--scheduler",
            cluster.scheduler_url(),
            "logs",
            "-f",
            "--tail",
            "0",
            name,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("rik logs -f")?;
    let stdout = rik.stdout.take().context("rik's stdout")?;
    let mut samples = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let printed: f64 = line?.trim().parse().context("a clock line")?;
        samples.push((unix_ns() - printed) / 1e6);
        if samples.len() == FOLLOW_SAMPLES {
            break;
        }
    }
    let _ = rik.kill();
    let _ = rik.wait();
    cluster.delete_and_wait(name)?;
    if samples.len() < FOLLOW_SAMPLES {
        bail!("rik logs -f ended after {} lines", samples.len());
    }
    println!(
        "  median {:.1} ms, p99 {:.1} ms",
        median(&samples),
        p99(&samples)
    );
    Ok(series(&samples))
}

fn shipping(bin: &Path) -> anyhow::Result<Value> {
    let work = tempdir("riklet-bench-rsyslog")?;
    let mut rsyslog = Rsyslog::start(&work)?;
    let sink = format!("syslog://127.0.0.1:{}", rsyslog.port);
    let mut cluster = Cluster::start(
        bin,
        &format!(
            "metrics_addr = \"127.0.0.1:0\"\n[[logs.sinks]]\nkind = \"syslog\"\naddress = \"127.0.0.1:{}\"\n",
            rsyslog.port
        ),
        SchedulerProcess::Embedded,
    )?;
    let result = ship(&cluster, &sink, &rsyslog);
    cluster.shutdown()?;
    rsyslog.stop();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn ship(cluster: &Cluster, sink: &str, rsyslog: &Rsyslog) -> anyhow::Result<Value> {
    let port = metrics_port(cluster)?;
    let shipped = || -> anyhow::Result<u64> {
        let body = get(port, "/metrics")?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("riklet_log_shipper_shipped_records_total{"))
            .filter(|l| l.contains(&format!("sink=\"{sink}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum())
    };
    apply(
        cluster,
        "bench-ship",
        &format!("seq 1 {SHIP_LINES}; sleep 3600"),
        "",
    )?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, u64)> = None;
    let last = loop {
        let n = shipped()?;
        let now = Instant::now();
        if n > 0 && first.is_none() {
            first = Some((now, n));
        }
        if n >= SHIP_LINES {
            break now;
        }
        if now > deadline {
            bail!("{n} of {SHIP_LINES} lines shipped after 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (t0, n0) = first.context("nothing shipped")?;
    let rate = (SHIP_LINES - n0) as f64 / (last - t0).as_secs_f64();
    let received = std::fs::read_to_string(rsyslog.output())
        .unwrap_or_default()
        .lines()
        .count();
    cluster.delete_and_wait("bench-ship")?;
    println!("  {rate:.0} lines/s shipped; rsyslog wrote {received} lines");
    Ok(json!({
        "lines": SHIP_LINES,
        "lines_per_s": rate,
        "received_by_rsyslog": received,
    }))
}

/// Applies a one-container bare-process app running `script` in `sh -c`;
/// `spec_extra` lines go into its spec (indented by 2).
fn apply(cluster: &Cluster, name: &str, script: &str, spec_extra: &str) -> anyhow::Result<()> {
    let path = cluster.dir_path().join(format!("{name}.yaml"));
    let args = serde_json::to_string(&["-c", script])?;
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  restartPolicy: OnFailure\n{spec_extra}  \
             containers:\n    - name: main\n      exec: {SH}\n      args: {args}\n"
        ),
    )?;
    cluster.rik_ok(&["apply", "-f", &path.to_string_lossy()])?;
    Ok(())
}

/// Waits until the app's only instance is in `state`; returns its status.
fn wait_state(
    cluster: &Cluster,
    name: &str,
    state: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(i) = cluster
            .instances(name)?
            .into_iter()
            .find(|i| i["state"] == state)
        {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("{name} not {state} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The current log file of the instance's `main` container, run 0.
fn current_log(cluster: &Cluster, name: &str, instance: &Value) -> anyhow::Result<PathBuf> {
    let id = instance["appId"].as_str().context("appId")?;
    Ok(cluster
        .dir_path()
        .join("logs")
        .join(format!("default_{name}_{id}"))
        .join("main")
        .join("0.log"))
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(bytes.iter().filter(|b| **b == b'\n').count() as u64)
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn unix_ns() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_nanos() as f64)
}

fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// An rsyslogd of the bench's own: RFC 5424 over TCP on a free loopback
/// port, every message one line of `received.log`.
struct Rsyslog {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(dir: &Path) -> anyhow::Result<Rsyslog> {
        let port = free_port()?;
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(maxMessageSize=\"64k\" workDirectory=\"{d}\")\n\
                 module(load=\"imtcp\")\n\
                 template(name=\"msg\" type=\"string\" string=\"%app-name% %procid% %msg%\\n\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 *.* action(type=\"omfile\" file=\"{d}/received.log\" template=\"msg\")\n",
                d = dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("rsyslogd.log"))?;
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rsyslogd")?;
        let rsyslog = Rsyslog {
            dir: dir.to_path_buf(),
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("rsyslogd does not listen on {port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(rsyslog)
    }

    fn output(&self) -> PathBuf {
        self.dir.join("received.log")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn table(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let c = &r["capture"];
    let cpu = &r["cpu_at_10k_lines"];
    let fl = &r["follow_latency_ms"];
    let s = &r["shipping"];
    format!(
        "| series | figure |\n|---|---:|\n\
         | capture through the shim, median | {:.0} MB/s |\n\
         | same writer to a plain file, median | {:.0} MB/s |\n\
         | ratio of the medians | {:.2} |\n\
         | riklet + shim CPU at 10,000 lines/s | {:.4} cores |\n\
         | `rik logs -f` latency, median / p99 | {:.1} / {:.1} ms |\n\
         | shipped to rsyslog | {:.0} lines/s |\n",
        f(&c["pod_mb_per_s"]["median"]),
        f(&c["plain_file_mb_per_s"]["median"]),
        f(&c["ratio_of_medians"]),
        f(&cpu["cores_per_10k_lines_per_s"]),
        f(&fl["median"]),
        f(&fl["p99"]),
        f(&s["lines_per_s"]),
    )
}
