//! `cargo xtask bench metrics`: the cost of one Node Monitor collection
//! cycle at 10, 100 and 500 idle bare-process pods and 500 that wake every
//! second — the eBPF map reads and the
//! cgroup reads separately, the whole cycle — and the riklet's CPU use
//! with a 1 s collection interval. The riklet measures its own cycles and
//! exports them (`riklet_collection_*_seconds`); this reads them from
//! `/metrics` once a second over a 10 s window. Its CPU use is measured
//! over that window (so with a scrape every second, 15–60 times what a
//! Prometheus usually does) and over a second window without scrapes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::burst::{BenchNetwork, burst};
use super::cluster::{Cluster, SchedulerProcess, release_binaries};
use super::process::{clock_ticks, cpu_ticks, machine, status_kib, step};
use super::stats::{median, p99, series};

/// The runs: how many pods, and what they run. Idle pods (`sleep`) are
/// what the collector can skip between its slow readings; pods that wake
/// every second (`tail -f` polls its file once a second) are read in full
/// at every cycle, the collector's worst case.
const RUNS: [(usize, Workload); 4] = [
    (10, Workload::Idle),
    (100, Workload::Idle),
    (500, Workload::Idle),
    (500, Workload::WakesEverySecond),
];

#[derive(Debug, Clone, Copy)]
enum Workload {
    Idle,
    WakesEverySecond,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Idle => "idle",
            Workload::WakesEverySecond => "wakes every 1 s",
        }
    }

    /// The container's `exec` and `args` lines of the manifest.
    fn container(self) -> &'static str {
        match self {
            Workload::Idle => "exec: /bin/busybox\n      args: [sleep, \"3600\"]\n",
            Workload::WakesEverySecond => {
                "exec: /bin/busybox\n      args: [tail, -f, /etc/hostname]\n"
            }
        }
    }
}
const WINDOW: Duration = Duration::from_secs(10);
/// The window without scrapes: CPU time comes in 10 ms clock ticks, so 20 s
/// give a 0.05 % resolution.
const CPU_WINDOW: Duration = Duration::from_secs(20);

pub fn metrics(root: &Path) -> anyhow::Result<()> {
    step("build the release binaries");
    let (target, out_dir) = release_binaries(root)?;

    // Own bridge, CIDR (/22: 500 pods) and nft table, removed at the end.
    let net = BenchNetwork::new();
    step("start a one-node cluster: rik-scheduler + riklet, 1 s collection interval");
    let mut cluster = Cluster::start(
        &target.join("release"),
        &net.config(),
        SchedulerProcess::Separate,
    )?;
    let result = measure(&mut cluster);
    let _ = std::fs::copy(
        cluster.dir_path().join("riklet.log"),
        out_dir.join("metrics-riklet.log"),
    );
    let shutdown = cluster.shutdown();
    drop(cluster);
    net.remove();
    let results = result?;
    shutdown?;

    let path = out_dir.join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!(
        "\none collection cycle (ms; median and p99 of the window's samples); all RUNNING: \
         the scheduler logged every replica RUNNING, ms after `rik apply` (no --wait)"
    );
    println!(
        "{:>6} {:>16} {:>14} {:>14} {:>14} {:>12} {:>14} {:>14}",
        "pods",
        "workload",
        "eBPF read",
        "cgroup reads",
        "whole cycle",
        "riklet CPU",
        "+1 s scrapes",
        "all RUNNING"
    );
    for r in results["runs"].as_array().into_iter().flatten() {
        let cell = |k: &str| {
            format!(
                "{:.2} / {:.2}",
                r[k]["median"].as_f64().unwrap_or(f64::NAN),
                r[k]["p99"].as_f64().unwrap_or(f64::NAN)
            )
        };
        let pct = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>6} {:>16} {:>14} {:>14} {:>14} {:>11.2}% {:>13.2}% {:>11.0} ms",
            r["pods"],
            r["workload"].as_str().unwrap_or(""),
            cell("ebpf_ms"),
            cell("cgroups_ms"),
            cell("cycle_ms"),
            pct("cpu_percent_of_one_core"),
            pct("cpu_percent_with_1s_scrapes"),
            r["burst"]["running_logged_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("\nraw results: {}", path.display());
    Ok(())
}

fn measure(cluster: &mut Cluster) -> anyhow::Result<Value> {
    let port = metrics_port(cluster)?;
    let clk = clock_ticks();
    let mut runs = Vec::new();
    for (run, (pods, workload)) in RUNS.into_iter().enumerate() {
        step(&format!("{pods} bare-process pods, {}", workload.name()));
        let app = format!("m{run}");
        let manifest = cluster.dir_path().join(format!("{app}.yaml"));
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1\nkind: Pod\nname: {app}\nreplicas: {pods}\nspec:\n  containers:\n    - name: main\n      {}",
                workload.container()
            ),
        )?;
        let burst = burst(
            cluster,
            &app,
            manifest.to_str().context("utf-8 path")?,
            pods,
            Duration::from_secs(600),
        )?;
        std::thread::sleep(Duration::from_secs(3));
        let (mut ebpf, mut cgroups, mut cycle) = (Vec::new(), Vec::new(), Vec::new());
        let cpu0 = cpu_ticks(cluster.pid()).context("riklet /proc stat")?;
        let w0 = Instant::now();
        while w0.elapsed() < WINDOW {
            let body = get(port, "/metrics")?;
            let value = |name: &str| gauge(&body, name).map(|s| s * 1000.0);
            if let (Some(e), Some(c), Some(t)) = (
                value("riklet_collection_ebpf_seconds"),
                value("riklet_collection_cgroups_seconds"),
                value("riklet_collection_duration_seconds"),
            ) {
                ebpf.push(e);
                cgroups.push(c);
                cycle.push(t);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let cpu1 = cpu_ticks(cluster.pid()).context("riklet /proc stat")?;
        let scraped_cpu = 100.0 * (cpu1 - cpu0) as f64 / clk / w0.elapsed().as_secs_f64();
        if cycle.is_empty() {
            bail!("no riklet_collection_* series on /metrics");
        }
        let w1 = Instant::now();
        std::thread::sleep(CPU_WINDOW);
        let cpu2 = cpu_ticks(cluster.pid()).context("riklet /proc stat")?;
        let cpu = 100.0 * (cpu2 - cpu1) as f64 / clk / w1.elapsed().as_secs_f64();
        let pods_seen = count_pod_series(&get(port, "/metrics")?);
        println!(
            "  cycle median {:.2} ms (eBPF {:.3} ms, cgroups {:.2} ms), riklet CPU {cpu:.2}% of a core \
             ({scraped_cpu:.2}% with a scrape every second), {pods_seen} pods in /metrics",
            median(&cycle),
            median(&ebpf),
            median(&cgroups)
        );
        runs.push(json!({
            "pods": pods,
            "workload": workload.name(),
            "pods_in_metrics": pods_seen,
            "ebpf_ms": summary(&ebpf),
            "cgroups_ms": summary(&cgroups),
            "cycle_ms": summary(&cycle),
            "cpu_percent_of_one_core": cpu,
            "cpu_percent_with_1s_scrapes": scraped_cpu,
            "riklet_rss_kib": status_kib(cluster.pid(), "VmRSS:"),
            "burst": burst,
        }));
        cluster.delete_and_wait(&app)?;
    }
    Ok(json!({"machine": machine(), "interval_seconds": 1, "runs": runs}))
}

fn summary(samples: &[f64]) -> Value {
    let mut s = series(samples);
    s["median"] = json!(median(samples));
    s["p99"] = json!(p99(samples));
    s
}

pub(crate) fn metrics_port(cluster: &Cluster) -> anyhow::Result<u16> {
    let out = Command::new(cluster.bin_path().join("riklet"))
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .args(["status", "-o", "json"])
        .output()?;
    let status: Value = serde_json::from_slice(&out.stdout).context("riklet status JSON")?;
    status["metricsAddress"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .context("no metricsAddress in riklet status")
}

/// A GET to the riklet's loopback endpoint.
pub(crate) fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The value of a single-series gauge in the text exposition.
pub(crate) fn gauge(body: &str, name: &str) -> Option<f64> {
    gauge_values(body, name).into_iter().next()
}

/// The values of every series of a metric in the text exposition, in order.
pub(crate) fn gauge_values(body: &str, name: &str) -> Vec<f64> {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

fn count_pod_series(body: &str) -> usize {
    body.lines()
        .filter(|l| l.starts_with("riklet_pod_pids{"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gauges_from_the_exposition() {
        let body = "# HELP x\nriklet_collection_duration_seconds{node=\"n\"} 0.0125\nriklet_collection_duration_seconds_other 3\n";
        assert_eq!(
            gauge(body, "riklet_collection_duration_seconds"),
            Some(0.0125)
        );
        assert_eq!(gauge(body, "riklet_collection_ebpf_seconds"), None);
        let two = "riklet_proxy_services{datapath=\"ebpf\"} 3\nriklet_proxy_services{datapath=\"nftables\"} 1000\n";
        assert_eq!(
            gauge_values(two, "riklet_proxy_services"),
            vec![3.0, 1000.0]
        );
    }
}
