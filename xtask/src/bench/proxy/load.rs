//! The load generators and userspace relays of `cargo xtask bench proxy`:
//! `wrk` (keep-alive, and a new connection per request), `iperf3`, and the
//! `socat` and `haproxy` relays a user would otherwise put in front of a
//! pod. Each is a Debian package run with an argv (`cargo xtask setup`
//! installs them).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::Value;

/// wrk's threads: one, so that the other CPU of a small machine is left to
/// the server and, on the relayed routes, the relay.
pub(crate) const WRK_THREADS: u32 = 1;
/// wrk's concurrent connections.
pub(crate) const WRK_CONNECTIONS: u32 = 8;
/// Between two attempts of a connect poll: fine enough for a millisecond
/// figure, coarse enough that two pollers do not take both CPUs from the
/// riklet and the server they wait for.
pub(crate) const POLL_PAUSE: Duration = Duration::from_micros(200);

/// The tools the bench runs, with the Debian package of each.
pub(crate) const TOOLS: [(&str, &str); 5] = [
    ("wrk", "wrk"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
];

/// Fails naming the package of the first tool that is not on the PATH.
pub(crate) fn require_tools() -> anyhow::Result<()> {
    for (tool, package) in TOOLS {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} missing: apt install {package} (or `cargo xtask setup`)");
        }
    }
    Ok(())
}

/// wrk's Lua `done` hook: one JSON line with exact figures (latencies in
/// µs), instead of wrk's rounded text with unit suffixes.
const WRK_SCRIPT: &str = r#"-- Written by `cargo xtask bench proxy`.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p99_us":%.0f,"max_us":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"timeout":%.0f,"status":%.0f}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, e.status))
end
"#;

/// How wrk uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connections {
    /// HTTP/1.1 keep-alive: requests per second of an established flow.
    KeepAlive,
    /// `Connection: close`: one TCP connection per request, so the figure is
    /// new connections per second through the route.
    PerRequest,
}

/// One wrk run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrkRun {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors and non-2xx/3xx answers, summed.
    pub errors: u64,
}

/// wrk with the bench's `done` hook.
pub(crate) struct Wrk {
    script: PathBuf,
}

impl Wrk {
    /// Writes the Lua hook into `dir`.
    pub(crate) fn new(dir: &Path) -> anyhow::Result<Wrk> {
        let script = dir.join("wrk-done.lua");
        std::fs::write(&script, WRK_SCRIPT)
            .with_context(|| format!("writing {}", script.display()))?;
        Ok(Wrk { script })
    }

    /// `GET /` on `target` for `duration`.
    pub(crate) fn run(
        &self,
        target: SocketAddr,
        connections: Connections,
        duration: Duration,
    ) -> anyhow::Result<WrkRun> {
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{WRK_THREADS}"))
            .arg(format!("-c{WRK_CONNECTIONS}"))
            .arg(format!("-d{}s", duration.as_secs()))
            .arg("-s")
            .arg(&self.script);
        if connections == Connections::PerRequest {
            cmd.args(["-H", "Connection: close"]);
        }
        let out = cmd
            .arg(format!("http://{target}/"))
            .stdin(Stdio::null())
            .output()
            .context("running wrk")?;
        if !out.status.success() {
            bail!(
                "wrk against {target}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("wrk against {target}"))
    }
}

/// The JSON line of [`WRK_SCRIPT`] in wrk's output.
fn parse_wrk(stdout: &str) -> anyhow::Result<WrkRun> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("{\"requests\""))
        .with_context(|| format!("no summary line in wrk's output:\n{stdout}"))?;
    let v: Value = serde_json::from_str(line).context("wrk summary JSON")?;
    let num = |key: &str| {
        v[key]
            .as_f64()
            .with_context(|| format!("no {key} in {line}"))
    };
    let duration_s = num("duration_us")? / 1e6;
    if duration_s <= 0.0 {
        bail!("wrk ran for no time: {line}");
    }
    let errors = v["errors"]
        .as_object()
        .map_or(0.0, |e| e.values().filter_map(Value::as_f64).sum());
    Ok(WrkRun {
        rps: num("requests")? / duration_s,
        p50_ms: num("p50_us")? / 1000.0,
        p99_ms: num("p99_us")? / 1000.0,
        requests: num("requests")? as u64,
        errors: errors as u64,
    })
}

/// `iperf3 -c` to `target` for `duration`: the receiver's throughput in
/// Gbit/s. The server runs one test at a time and takes a moment to be
/// ready for the next: a "busy" answer is retried.
pub(crate) fn iperf3(target: SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    let mut attempt = 0;
    loop {
        match iperf3_once(target, duration) {
            Err(e) if attempt < 5 && format!("{e:#}").contains("busy") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn iperf3_once(target: SocketAddr, duration: Duration) -> anyhow::Result<f64> {
    let out = Command::new("iperf3")
        .args(["-4", "-J", "-c"])
        .arg(target.ip().to_string())
        .arg("-p")
        .arg(target.port().to_string())
        .arg("-t")
        .arg(duration.as_secs().to_string())
        .stdin(Stdio::null())
        .output()
        .context("running iperf3")?;
    // iperf3 -J reports its errors in the JSON too, with a failed status.
    parse_iperf3(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("iperf3 against {target} ({})", out.status))
}

fn parse_iperf3(json: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}

/// A userspace relay the bench started, in a process group of its own so
/// that its forked children go with it; stopped on drop.
pub(crate) struct Relay {
    name: &'static str,
    child: Child,
}

impl Relay {
    /// `socat TCP-LISTEN:<port>,bind=<addr>,fork,reuseaddr TCP:<to>`: a
    /// process forked per connection, the usual one-liner. Its stderr goes
    /// to `socat-<port>.log` in `dir`.
    pub(crate) fn socat(dir: &Path, listen: SocketAddr, to: SocketAddr) -> anyhow::Result<Relay> {
        let mut cmd = Command::new("socat");
        cmd.arg(format!(
            "TCP-LISTEN:{},bind={},fork,reuseaddr",
            listen.port(),
            listen.ip()
        ))
        .arg(format!("TCP:{to}"));
        let log = dir.join(format!("socat-{}.log", listen.port()));
        Relay::spawn("socat", cmd, listen, &log)
    }

    /// haproxy in TCP mode (its default threads: one per CPU), one
    /// `listen` section per pair, its config and log in `dir`.
    pub(crate) fn haproxy(dir: &Path, pairs: &[(SocketAddr, SocketAddr)]) -> anyhow::Result<Relay> {
        let mut config = String::from(
            "# Written by `cargo xtask bench proxy`.\nglobal\n  maxconn 4096\n\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        );
        for (i, (listen, to)) in pairs.iter().enumerate() {
            config.push_str(&format!(
                "\nlisten relay{i}\n  bind {listen}\n  server pod {to}\n"
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let first = pairs.first().context("haproxy without a listener")?.0;
        Relay::spawn("haproxy", cmd, first, &dir.join("haproxy.log"))
    }

    fn spawn(
        name: &'static str,
        mut cmd: Command,
        listen: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Relay> {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut relay = Relay { name, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = relay.child.try_wait() {
                bail!(
                    "{name} exited ({status}) before listening on {listen}: {}",
                    std::fs::read_to_string(log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} does not listen on {listen} after 10s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(relay)
    }
}

impl Drop for Relay {
    /// SIGTERM to the relay's process group (socat's forked children too),
    /// SIGKILL after 5 s.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM within 5s: SIGKILL", self.name);
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts a connection.
pub(crate) fn wait_connectable(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let stop = AtomicBool::new(false);
    first_connect(addr, Instant::now() + timeout, &stop)
        .map(|_| ())
        .with_context(|| format!("{addr} accepts no connection after {timeout:?}"))
}

/// Connects to `addr` every [`POLL_PAUSE`] until it succeeds (returns the
/// wall clock then, Unix ms with µs digits), the deadline passes or `stop`
/// is set.
pub(crate) fn first_connect(addr: SocketAddr, deadline: Instant, stop: &AtomicBool) -> Option<f64> {
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Some(unix_ms());
        }
        std::thread::sleep(POLL_PAUSE);
    }
    None
}

/// The wall clock in Unix ms, with sub-millisecond digits.
pub(crate) fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wrk_summary_line() {
        let out = "Running 2s test @ http://10.88.0.2:8080/\n  1 threads and 8 connections\n\
                   {\"requests\":20000,\"duration_us\":2000000,\"p50_us\":350,\"p99_us\":1200,\"max_us\":4000,\
                   \"errors\":{\"connect\":0,\"read\":2,\"write\":0,\"timeout\":1,\"status\":0}}\n";
        let run = parse_wrk(out).unwrap();
        assert_eq!(run.rps, 10_000.0);
        assert_eq!(run.p50_ms, 0.35);
        assert_eq!(run.p99_ms, 1.2);
        assert_eq!(run.requests, 20_000);
        assert_eq!(run.errors, 3);
    }

    #[test]
    fn a_wrk_output_without_summary_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.88.0.2:8080 Connection refused\n").is_err());
    }

    #[test]
    fn reads_iperf3_throughput_and_errors() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2e10},"sum_received":{"bits_per_second":1.5e10}}}"#;
        assert_eq!(parse_iperf3(ok).unwrap(), 15.0);
        let failed =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        let err = parse_iperf3(failed).unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
    }
}
