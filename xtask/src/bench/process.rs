//! What a process costs, read from `/proc`: RSS, PSS, CPU time; and the
//! machine a run was made on.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::stats::{median, series};

/// RSS (sampled every second) and CPU of a process over `window`.
pub(crate) fn footprint(pid: u32, clk_tck: f64, window: Duration) -> anyhow::Result<Value> {
    let cpu0 = cpu_ticks(pid).context("reading the riklet's /proc/PID/stat")?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let end = t0 + window;
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

pub(crate) fn footprint_line(f: &Value) -> String {
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

/// Prints the heading of a bench step.
pub(crate) fn step(what: &str) {
    println!("\n==> {what}");
}
