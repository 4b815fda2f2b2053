//! Node figures for the scheduler: seed 004's node resources and realtime
//! node objects, and RIK's heartbeat metrics, from procfs and the kernel.

use std::net::IpAddr;

use serde_json::{Value, json};

/// Samples the node between heartbeats (CPU usage needs two samples).
pub struct NodeMonitor {
    node: String,
    last_cpu: Option<(u64, u64)>,
}

impl NodeMonitor {
    pub fn new(node: &str) -> Self {
        NodeMonitor {
            node: node.to_string(),
            last_cpu: None,
        }
    }

    /// `WorkerMetric.metrics`: RIK's keys (`cpu`, `memory`, `disks`) so that
    /// RIK's scheduler understands it, plus seed 004's `resources` and
    /// `realtime` objects.
    pub fn heartbeat(&mut self) -> Value {
        let cpus = cpu_count();
        let (mem_total, mem_free) = memory();
        let (disk_total, disk_free) = disk("/");
        let usage = self.cpu_usage_percent();
        json!({
            "cpu": {"total": cpus, "free": ((100.0 - usage) / 100.0 * cpus as f64).max(0.0)},
            "memory": {"total": mem_total, "free": mem_free},
            "disks": [{"disk_name": "/", "total": disk_total, "free": disk_free}],
            "resources": self.resources(),
            "realtime": {
                "id": self.node,
                "state": "RUNNING",
                "timestamp": crate::state::now_ms() / 1000,
                "cpu": {"totalCpu": cpus, "currentUsage": round1(usage)},
                "memory": {
                    "totalMemory": mem_total,
                    "currentUsage": if mem_total > 0 { round1(100.0 * (mem_total - mem_free) as f64 / mem_total as f64) } else { 0.0 },
                },
                "load": load(),
            },
        })
    }

    /// Seed 004's node resources object.
    pub fn resources(&self) -> Value {
        let (distrib, version) = os_release();
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        json!({
            "id": self.node,
            "cpu": cpu_count(),
            "memory": memory().0,
            "disksize": disk("/").0,
            "distrib": distrib,
            // A number where os-release has one (seed 004: `"version": 10`).
            "version": version.parse::<u64>().map(Value::from).unwrap_or(Value::String(version)),
            "type": std::env::consts::OS,
            "arch": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "kernelVersion": kernel,
            "networking": {
                "hostname": hostname,
                "internalip": internal_ip().map(|ip| ip.to_string()),
                "externalip": Value::Null,
            },
        })
    }

    fn cpu_usage_percent(&mut self) -> f64 {
        let Some((busy, total)) = cpu_ticks() else {
            return 0.0;
        };
        let usage = match self.last_cpu {
            Some((b0, t0)) if total > t0 => {
                100.0 * (busy - b0.min(busy)) as f64 / (total - t0) as f64
            }
            _ => 0.0,
        };
        self.last_cpu = Some((busy, total));
        usage
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// (busy, total) jiffies over all CPUs.
fn cpu_ticks() -> Option<(u64, u64)> {
    use procfs::CurrentSI;
    let stat = procfs::KernelStats::current().ok()?;
    let t = stat.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + idle
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    Some((total - idle, total))
}

/// (total, available) bytes.
fn memory() -> (u64, u64) {
    use procfs::Current;
    match procfs::Meminfo::current() {
        Ok(m) => (m.mem_total, m.mem_available.unwrap_or(m.mem_free)),
        Err(_) => (0, 0),
    }
}

fn disk(path: &str) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

fn load() -> Value {
    use procfs::Current;
    match procfs::LoadAverage::current() {
        Ok(l) => json!([l.one, l.five, l.fifteen]),
        Err(_) => Value::Null,
    }
}

fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (
        field("NAME")
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string(),
        field("VERSION_ID"),
    )
}

/// First IPv4 address of an interface that is up and not loopback.
pub fn internal_ip() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let flags = ifa.flags;
        if !flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Some(IpAddr::V4(sin.ip()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_has_rik_and_seed_fields() {
        let mut m = NodeMonitor::new("node-a");
        let _ = m.heartbeat();
        let hb = m.heartbeat();
        assert!(hb["cpu"]["total"].as_u64().unwrap() >= 1);
        assert!(hb["memory"]["total"].as_u64().unwrap() > 0);
        assert!(hb["disks"][0]["total"].as_u64().unwrap() > 0);
        let r = &hb["resources"];
        assert_eq!(r["id"], "node-a");
        assert!(!r["kernelVersion"].as_str().unwrap().is_empty());
        assert!(!r["distrib"].as_str().unwrap().is_empty());
        let usage = hb["realtime"]["cpu"]["currentUsage"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&usage));
    }
}
