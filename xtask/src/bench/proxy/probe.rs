//! The two timings around the datapaths of `cargo xtask bench proxy`: from
//! a new pod's RUNNING to its first connection through the node port, and
//! the riklet's sync of 1,000 services.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::HTTP_TARGET;
use super::load::{POLL_PAUSE, first_connect, unix_ms};
use crate::bench::cluster::Cluster;
use crate::bench::metrics::{gauge_values, get, metrics_port};
use crate::bench::stats::series;

/// Services of the sync measurement: one pod with this many `ports`.
pub(crate) const SYNC_SERVICES: u16 = 1000;
/// Where the sync app's ports are looked for: below Linux's ephemeral
/// range (32768–60999), so that no connection's source port is one of them.
const SYNC_PORT_BASE: u16 = 30000;
/// The riklet's figures read from `/metrics` (the lead's contract): how
/// many services the proxy holds, and how long its last sync took.
const SERVICES_METRIC: &str = "riklet_proxy_services";
const SYNC_METRIC: &str = "riklet_proxy_last_sync_seconds";

/// One new pod's start, in ms after `rik apply` was spawned.
#[derive(Debug, Clone)]
pub(crate) struct FirstConnect {
    /// The riklet committed the pod's RUNNING phase (its record's
    /// `updated_at`, 1 ms resolution).
    running: f64,
    /// The shim saw nginx start (`started.json`, 1 ms resolution).
    process_started: Option<f64>,
    /// First connection accepted at the pod IP: the server listens.
    direct: f64,
    /// First connection accepted through the node port.
    proxied: Option<f64>,
}

impl FirstConnect {
    pub fn line(&self) -> String {
        let mut s = format!(
            "RUNNING at {:.0} ms, process started {:.0} ms; first connection: direct {:+.1} ms after RUNNING",
            self.running,
            self.process_started.unwrap_or(f64::NAN),
            self.direct - self.running
        );
        if let Some(p) = self.proxied {
            let _ = write!(s, ", proxied {:+.1} ms", p - self.running);
        }
        s
    }
}

/// Applies `file` (one nginx container listening on [`HTTP_TARGET`]) and
/// times, side by side, its first direct connection (a thread that reads
/// the pod's address from the riklet's `ipam.json`) and, when `proxied` is given, its first connection through it; both poll
/// every 0.2 ms.
pub(crate) fn first_connect_sample(
    cluster: &Cluster,
    name: &str,
    file: &str,
    proxied: Option<SocketAddr>,
) -> anyhow::Result<FirstConnect> {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = cluster.state_dir();
    let applied = unix_ms();
    let (apply, direct, via_proxy) = std::thread::scope(|s| {
        let direct = s.spawn(|| first_direct_connect(&state, name, deadline, &stop));
        let apply = cluster.rik_ok(&["apply", "-f", file]);
        let via_proxy = match (&apply, proxied) {
            (Ok(_), Some(addr)) => first_connect(addr, deadline, &stop),
            _ => None,
        };
        if apply.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        (apply, direct.join(), via_proxy)
    });
    apply?;
    let direct = direct
        .map_err(|_| anyhow!("the direct connect poller panicked"))?
        .with_context(|| format!("{name}'s pod accepted no connection at its IP within 60s"))?;
    if let (Some(addr), None) = (proxied, via_proxy) {
        bail!("{name} accepted no connection through {addr} within 60s");
    }
    let (running, started) = pod_times(cluster, name, "nginx")?;
    Ok(FirstConnect {
        running: running - applied,
        process_started: started.map(|s| s - applied),
        direct: direct - applied,
        proxied: via_proxy.map(|p| p - applied),
    })
}

/// Waits for the app's lease in `ipam.json` and its nginx's `started.json`
/// (its network is up by then: a connection to an address not yet on a link
/// would wait for ARP, up to a second), then polls the pod's HTTP port.
fn first_direct_connect(
    state: &Path,
    app: &str,
    deadline: Instant,
    stop: &AtomicBool,
) -> Option<f64> {
    let prefix = format!("{app}-");
    let ipam = state.join("ipam.json");
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let lease = std::fs::read_to_string(&ipam)
            .ok()
            .and_then(|text| lease_of(&text, &prefix));
        if let Some((id, ip)) = lease {
            let started = state
                .join("run")
                .join(&id)
                .join("nginx")
                .join("started.json");
            if started.exists() {
                return first_connect(SocketAddr::new(ip.into(), HTTP_TARGET), deadline, stop);
            }
        }
        std::thread::sleep(POLL_PAUSE);
    }
    None
}

/// The instance whose id starts with `prefix` and its address, from the
/// riklet's `ipam.json` (`{"leases": {"<instance>": "<address>"}}`).
fn lease_of(ipam: &str, prefix: &str) -> Option<(String, Ipv4Addr)> {
    let v: Value = serde_json::from_str(ipam).ok()?;
    v["leases"]
        .as_object()?
        .iter()
        .find(|(id, _)| id.starts_with(prefix))
        .and_then(|(id, ip)| Some((id.clone(), ip.as_str()?.parse().ok()?)))
}

/// When the riklet committed the app's (only) pod as RUNNING and when the
/// shim saw `container` start, both Unix ms, from the riklet's state dir
/// (`pods/<instance>.json`, `run/<instance>/<container>/started.json`).
fn pod_times(cluster: &Cluster, app: &str, container: &str) -> anyhow::Result<(f64, Option<f64>)> {
    let instances = cluster.instances(app)?;
    let id = instances
        .first()
        .and_then(|i| i["appId"].as_str())
        .with_context(|| format!("no instance of {app}: {instances:?}"))?;
    let state = cluster.state_dir();
    let record = state.join("pods").join(format!("{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = loop {
        let pod: Value =
            serde_json::from_slice(&std::fs::read(&record).unwrap_or_default()).unwrap_or_default();
        if pod["phase"] == "Running" {
            break pod["updated_at"]
                .as_f64()
                .with_context(|| format!("no updated_at in {}", record.display()))?;
        }
        if Instant::now() > deadline {
            bail!("{} not Running after 10s: {pod}", record.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let started = std::fs::read(
        state
            .join("run")
            .join(id)
            .join(container)
            .join("started.json"),
    )
    .ok()
    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    .and_then(|v| v["started_at"].as_f64());
    Ok((running, started))
}

pub(crate) fn first_connect_json(samples: &[FirstConnect]) -> Value {
    let col = |f: &dyn Fn(&FirstConnect) -> Option<f64>| -> Vec<f64> {
        samples.iter().filter_map(f).collect()
    };
    let mut v = json!({
        "samples": samples.len(),
        "note": "ms; times after rik apply was spawned, differences to the RUNNING commit",
        "apply_to_running_ms": series(&col(&|s| Some(s.running))),
        "apply_to_process_started_ms": series(&col(&|s| s.process_started)),
        "running_to_first_direct_ms": series(&col(&|s| Some(s.direct - s.running))),
    });
    if samples.iter().any(|s| s.proxied.is_some()) {
        v["running_to_first_proxied_ms"] = series(&col(&|s| s.proxied.map(|p| p - s.running)));
        v["first_direct_to_first_proxied_ms"] = series(&col(&|s| s.proxied.map(|p| p - s.direct)));
    }
    v
}

/// One sync measurement, in ms.
#[derive(Debug, Clone)]
pub(crate) struct SyncSample {
    services_before: f64,
    /// `riklet_proxy_last_sync_seconds` once the 1,000 services are counted.
    sync_ms: f64,
    /// The same once they are gone again after `rik delete`.
    delete_sync_ms: f64,
    /// From the pod's RUNNING commit to `/metrics` counting the services
    /// (polled every 5 ms).
    running_to_counted_ms: f64,
}

/// Applies one pod (`busybox sleep`) with [`SYNC_SERVICES`] TCP ports and
/// reads the riklet's sync figure, then deletes it and reads it again.
pub(crate) fn sync_sample(cluster: &Cluster, name: &str) -> anyhow::Result<SyncSample> {
    let base = sync_ports()?;
    let metrics = metrics_port(cluster)?;
    let before = services(&get(metrics, "/metrics")?)
        .with_context(|| format!("no {SERVICES_METRIC} on the riklet's /metrics"))?;
    let ports: Vec<Value> = (base..base + SYNC_SERVICES)
        .map(|p| json!({"port": p, "target_port": p, "protocol": "TCP"}))
        .collect();
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod", "name": name,
        "spec": {"containers": [{"name": "sleep", "exec": "/bin/busybox",
                                 "args": ["sleep", "3600"], "ports": ports}]},
    });
    super::apply(cluster, name, &manifest, true)?;
    let want = before + f64::from(SYNC_SERVICES);
    let (counted_at, sync_s) = wait_services(metrics, |n| n >= want)?;
    let (running, _) = pod_times(cluster, name, "sleep")?;
    cluster.delete_one_and_wait(name)?;
    let (_, delete_s) = wait_services(metrics, |n| n <= before)?;
    Ok(SyncSample {
        services_before: before,
        sync_ms: sync_s * 1000.0,
        delete_sync_ms: delete_s * 1000.0,
        running_to_counted_ms: counted_at - running,
    })
}

/// The first block of [`SYNC_SERVICES`] ports from [`SYNC_PORT_BASE`] on
/// which nothing listens.
fn sync_ports() -> anyhow::Result<u16> {
    let mut base = SYNC_PORT_BASE;
    while base + SYNC_SERVICES <= 32768 {
        let taken = (base..base + SYNC_SERVICES)
            .find(|&p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).is_err());
        match taken {
            None => return Ok(base),
            Some(p) => base = p + 1,
        }
    }
    bail!("no {SYNC_SERVICES} free TCP ports in a row between {SYNC_PORT_BASE} and 32767")
}

/// The services the proxy holds, summed over the metric's series.
fn services(body: &str) -> Option<f64> {
    let v = gauge_values(body, SERVICES_METRIC);
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Polls `/metrics` every 5 ms until the service count satisfies `done`;
/// returns when (Unix ms) and the last sync then (s, the largest series).
fn wait_services(metrics: u16, done: impl Fn(f64) -> bool) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = get(metrics, "/metrics")?;
        if services(&body).is_some_and(&done) {
            let at = unix_ms();
            let last = gauge_values(&body, SYNC_METRIC)
                .into_iter()
                .reduce(f64::max)
                .with_context(|| format!("no {SYNC_METRIC} on the riklet's /metrics"))?;
            return Ok((at, last));
        }
        if Instant::now() > deadline {
            bail!(
                "{SERVICES_METRIC} did not reach the expected count within 60s (now {:?})",
                services(&body)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn sync_line(s: &SyncSample) -> String {
    format!(
        "sync {:.2} ms (delete {:.2} ms); {} services before; counted on /metrics {:.0} ms after RUNNING",
        s.sync_ms, s.delete_sync_ms, s.services_before, s.running_to_counted_ms
    )
}

pub(crate) fn sync_json(samples: &[SyncSample]) -> Value {
    let col = |f: fn(&SyncSample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    json!({
        "measured": true,
        "services": SYNC_SERVICES,
        "how": format!("one pod with {SYNC_SERVICES} TCP ports; {SYNC_METRIC} read once {SERVICES_METRIC} counts them"),
        "services_before": col(|s| s.services_before),
        "sync_ms": series(&col(|s| s.sync_ms)),
        "delete_sync_ms": series(&col(|s| s.delete_sync_ms)),
        "running_to_counted_on_metrics_ms": series(&col(|s| s.running_to_counted_ms)),
    })
}

/// The table's lines for both timings.
pub(crate) fn table(first: &Value, sync: &Value) -> String {
    let mut out = String::from(
        "\nfirst connection after the pod's RUNNING (ms, median; + after, - before RUNNING)\n",
    );
    let med = |v: &Value| v["median"].as_f64().unwrap_or(f64::NAN);
    for (key, v) in first.as_object().into_iter().flatten() {
        let _ = write!(
            out,
            "  {key:<10} apply -> RUNNING {:.1}; RUNNING -> first direct {:+.1}",
            med(&v["apply_to_running_ms"]),
            med(&v["running_to_first_direct_ms"])
        );
        if v.get("running_to_first_proxied_ms").is_some() {
            let _ = write!(
                out,
                "; -> first proxied {:+.1} (proxied - direct {:+.1})",
                med(&v["running_to_first_proxied_ms"]),
                med(&v["first_direct_to_first_proxied_ms"])
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nsync of {SYNC_SERVICES} services ({SYNC_METRIC}, ms, median)"
    );
    if sync["measured"] == false {
        let _ = writeln!(
            out,
            "  {}",
            sync["reason"].as_str().unwrap_or("not measured")
        );
    }
    for (key, v) in sync.as_object().into_iter().flatten() {
        if v.is_object() {
            let _ = writeln!(
                out,
                "  {key:<10} add {:.2}, remove {:.2}; RUNNING -> counted on /metrics {:.0}",
                med(&v["sync_ms"]),
                med(&v["delete_sync_ms"]),
                med(&v["running_to_counted_on_metrics_ms"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_lease_of_an_app_by_instance_prefix() {
        let ipam = r#"{"cidr":"10.217.0.0/24","last":"10.217.0.4",
            "leases":{"fc-ebpf-10-abcde":"10.217.0.3","fc-ebpf-1-xyz12":"10.217.0.4","web-k2j3h":"10.217.0.2"}}"#;
        let lease = |id: &str, last| Some((id.to_string(), Ipv4Addr::new(10, 217, 0, last)));
        assert_eq!(lease_of(ipam, "fc-ebpf-1-"), lease("fc-ebpf-1-xyz12", 4));
        assert_eq!(lease_of(ipam, "web-"), lease("web-k2j3h", 2));
        assert_eq!(lease_of(ipam, "sync-"), None);
        assert_eq!(lease_of("{half", "web-"), None);
    }

    #[test]
    fn counts_services_over_series() {
        let body = "riklet_proxy_services{datapath=\"ebpf\"} 2\nriklet_proxy_services{datapath=\"nftables\"} 1000\n\
                    riklet_proxy_last_sync_seconds 0.0042\n";
        assert_eq!(services(body), Some(1002.0));
        assert_eq!(services("riklet_up 1\n"), None);
    }
}
