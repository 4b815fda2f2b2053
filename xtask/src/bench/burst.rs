//! A burst start: `rik apply` (no `--wait`) of one app with many replicas,
//! timed until every replica is RUNNING. Used by `bench start` (100
//! replicas), `bench metrics` (its 500) and `bench burst` on its own.
//!
//! The bench does not poll `rik get` meanwhile: at 500 replicas each
//! answer is a megabyte of status objects, and producing and parsing it
//! takes CPU from the burst being measured. It follows the scheduler's log
//! instead (one `instance status … to="RUNNING"` line per replica), then
//! checks once with `rik get app NAME -o json`. Times in ms from the spawn
//! of `rik apply`:
//! - *RUNNING (scheduler)*: the scheduler's log line of the last replica
//!   to turn RUNNING, i.e. when every replica was RUNNING for the cluster
//!   (no polling slack);
//! - *seen RUNNING*: the end of the `rik get app` that confirmed it;
//! - *last "container started"*: the riklet's log line of the last
//!   replica (when the riklet knew; its RUNNING report follows once the
//!   record is saved);
//! - *last process started*: the latest `run.started_at` of the pod
//!   records (when the shim or containerd saw the process start).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::breakdown::strip_ansi;
use super::cluster::{Cluster, SchedulerProcess, release_binaries};
use super::process::{machine, step};
use super::stats::{ms, unix_ms};

/// Pause between two reads of the scheduler's log.
const LOG_PAUSE: Duration = Duration::from_millis(20);

/// `rik apply -f file` of app `name` with `replicas` pods, then waits
/// until all are RUNNING (at most `timeout`); the `burst` object of the
/// results, times in ms from the spawn of `rik apply`. The app is left
/// running.
pub(crate) fn burst(
    cluster: &Cluster,
    name: &str,
    file: &str,
    replicas: usize,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let running_line = format!("app={name} ");
    let mut running = LogWatch::from_end(cluster.scheduler_log(), move |l| {
        l.contains("instance status") && l.contains(&running_line) && l.contains("to=\"RUNNING\"")
    })?;
    let wall = unix_ms();
    let t = Instant::now();
    cluster.rik_ok(&["apply", "-f", file])?;
    let apply_ms = ms(t.elapsed());
    while running.read()?.len() < replicas {
        if t.elapsed() > timeout {
            bail!(
                "{} of {replicas} replicas of {name} RUNNING after {timeout:?}",
                running.times.len()
            );
        }
        std::thread::sleep(LOG_PAUSE);
    }
    let instances = cluster.instances(name)?;
    let running_seen_ms = ms(t.elapsed());
    let not_running = instances.iter().filter(|i| i["state"] != "RUNNING").count();
    if instances.len() != replicas || not_running > 0 {
        bail!(
            "rik get app {name}: {} instances, {not_running} not RUNNING, after the scheduler \
             logged {replicas} RUNNING",
            instances.len()
        );
    }
    let ids: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["appId"].as_str())
        .collect();
    let started = process_starts(&cluster.state_dir(), &ids)?;
    let pod = format!("pod=\"{name}-");
    let mut logged = LogWatch::from_start(cluster.dir_path().join("riklet.log"), move |l| {
        l.contains("container started") && l.contains(&pod)
    });
    logged.read()?;
    let after = |t: Option<&i64>| t.map(|t| (t - wall) as f64);
    let result = json!({
        "replicas": replicas,
        "apply_ms": apply_ms,
        "running_logged_ms": after(running.times.get(replicas - 1)),
        "running_seen_ms": running_seen_ms,
        "first_process_started_ms": after(started.first()),
        "last_process_started_ms": after(started.last()),
        "container_started_logged": logged.times.len(),
        "last_container_started_logged_ms": after(logged.times.get(replicas.saturating_sub(1))),
    });
    println!("{}", line(&result));
    Ok(result)
}

/// The lines of a log that match, with their time, read as the log grows.
struct LogWatch<F> {
    path: PathBuf,
    offset: u64,
    /// The end of the log read so far that is not a whole line yet.
    partial: Vec<u8>,
    matches: F,
    /// Unix ms of each matching line, in order.
    times: Vec<i64>,
}

impl<F: Fn(&str) -> bool> LogWatch<F> {
    /// Lines written from now on.
    fn from_end(path: PathBuf, matches: F) -> anyhow::Result<Self> {
        let offset = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        Ok(LogWatch {
            path,
            offset,
            partial: Vec::new(),
            matches,
            times: Vec::new(),
        })
    }

    /// Every line.
    fn from_start(path: PathBuf, matches: F) -> Self {
        LogWatch {
            path,
            offset: 0,
            partial: Vec::new(),
            matches,
            times: Vec::new(),
        }
    }

    /// Reads what was added since the last call; the times so far.
    fn read(&mut self) -> anyhow::Result<&[i64]> {
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.offset))?;
        let before = self.partial.len();
        f.read_to_end(&mut self.partial)?;
        self.offset += (self.partial.len() - before) as u64;
        let whole = self
            .partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let lines: Vec<u8> = self.partial.drain(..whole).collect();
        for l in String::from_utf8_lossy(&lines).lines() {
            let l = strip_ansi(l);
            if (self.matches)(&l)
                && let Some(t) = l.split_whitespace().next().and_then(rfc3339_ms)
            {
                self.times.push(t);
            }
        }
        Ok(&self.times)
    }
}

/// One line for the console.
pub(crate) fn line(b: &Value) -> String {
    let f = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "  {} replicas: all RUNNING at {:.0} ms (scheduler's log; seen by rik get at {:.0} ms); \
         last \"container started\" at {:.0} ms, last process started at {:.0} ms (first {:.0} ms); \
         rik apply {:.0} ms",
        b["replicas"],
        f("running_logged_ms"),
        f("running_seen_ms"),
        f("last_container_started_logged_ms"),
        f("last_process_started_ms"),
        f("first_process_started_ms"),
        f("apply_ms"),
    )
}

/// `run.started_at` (Unix ms) of the first container of each pod record,
/// sorted.
fn process_starts(state: &Path, ids: &[&str]) -> anyhow::Result<Vec<i64>> {
    let mut starts = Vec::with_capacity(ids.len());
    for id in ids {
        let path = state.join("pods").join(format!("{id}.json"));
        let record: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        if let Some(t) = record["containers"][0]["run"]["started_at"].as_i64() {
            starts.push(t);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

/// `2026-12-02T14:21:42.311706Z` as Unix ms (UTC only, as the riklet logs).
fn rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `cargo xtask bench burst --replicas N`: one burst on a cluster with its
/// own bridge and a /22 pod CIDR (room for 1,000 pods), then the delete;
/// `start_parallelism` overrides the riklet's.
pub fn run(root: &Path, replicas: usize, start_parallelism: Option<usize>) -> anyhow::Result<()> {
    step("build the release binaries");
    let (target, out_dir) = release_binaries(root)?;
    let net = BenchNetwork::new();
    // Top-level keys go before the `[network]` table.
    let config = match start_parallelism {
        Some(n) => format!("start_parallelism = {n}\n{}", net.config()),
        None => net.config(),
    };
    step(&format!(
        "start a one-node cluster: rik-scheduler + riklet, {}",
        net.bridge
    ));
    let mut cluster = Cluster::start(&target.join("release"), &config, SchedulerProcess::Separate)?;
    step(&format!("burst: rik apply of {replicas} replicas"));
    let result = cluster
        .manifest("burst", replicas)
        .and_then(|file| burst(&cluster, "burst", &file, replicas, Duration::from_secs(600)));
    let deleted = result.as_ref().ok().map(|_| {
        step("delete, and wait until the riklet has forgotten every pod");
        let t = Instant::now();
        cluster.delete_and_wait("burst").map(|()| ms(t.elapsed()))
    });
    let shutdown = cluster.shutdown();
    for log in ["riklet.log", "scheduler.log"] {
        let _ = std::fs::copy(
            cluster.dir_path().join(log),
            out_dir.join(format!("burst-{log}")),
        );
    }
    drop(cluster);
    net.remove();
    let mut result = result?;
    let delete_ms = deleted.transpose()?;
    shutdown?;
    println!("  deleted in {:.0} ms", delete_ms.unwrap_or(f64::NAN));
    result["delete_and_forget_ms"] = json!(delete_ms);
    let path = out_dir.join("burst.json");
    let all = json!({
        "benchmark": "burst",
        "machine": machine(),
        "start_parallelism": start_parallelism,
        "burst": result,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&all)? + "\n")?;
    println!("\nraw results: {}", path.display());
    Ok(())
}

/// A bridge, pod CIDR (/22) and nft table of a bench's own, so that 500
/// pods fit and nothing of the node's pod network is touched.
pub(crate) struct BenchNetwork {
    pub(crate) bridge: String,
    table: String,
}

impl BenchNetwork {
    pub(crate) fn new() -> Self {
        let n = std::process::id() % 10_000;
        BenchNetwork {
            bridge: format!("rkb{n}"),
            table: format!("riklet_bench_{n}"),
        }
    }

    /// The riklet config lines (the `[network]` table comes last).
    pub(crate) fn config(&self) -> String {
        format!(
            "metrics_addr = \"127.0.0.1:0\"\nmetrics_interval = \"1s\"\n\n[network]\nbridge = \"{}\"\n\
             pod_cidr = \"10.218.0.0/22\"\nnft_table = \"{}\"\n",
            self.bridge, self.table
        )
    }

    /// Deletes the bridge and the table (after the riklet stopped).
    pub(crate) fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_riklet_log_timestamps() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        // date -u -d 2026-12-02T14:21:42Z +%s → 1796221302
        assert_eq!(
            rfc3339_ms("2026-12-02T14:21:42.311706Z"),
            Some(1_796_221_302_311)
        );
        assert_eq!(rfc3339_ms("2026-12-02 14:21:42"), None);
        let line = "\u{1b}[2m2026-12-02T14:21:42.311706Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m container started";
        assert_eq!(
            strip_ansi(line),
            "2026-12-02T14:21:42.311706Z  INFO container started"
        );
    }
}
