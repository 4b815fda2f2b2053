//! The node side of `cargo xtask bench proxy`: what `riklet proxy` shows,
//! the node's address, free ports, and the bench's own network objects.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench::cluster::Cluster;

/// Whether a `riklet proxy` view lists TCP `port` with `backend` behind it.
pub(crate) fn serves(view: &Value, port: u16, backend: SocketAddr) -> bool {
    let backend = backend.to_string();
    view["services"].as_array().is_some_and(|services| {
        services.iter().any(|s| {
            s["port"] == port
                && s["protocol"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
                && s["backends"]
                    .as_array()
                    .is_some_and(|b| b.iter().any(|b| b == backend.as_str()))
        })
    })
}

/// `riklet proxy` (control socket) as JSON.
pub(crate) fn proxy_view(cluster: &Cluster) -> anyhow::Result<Value> {
    let out = Command::new(cluster.bin_path().join("riklet"))
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .arg("proxy")
        .stdin(Stdio::null())
        .output()
        .context("riklet proxy")?;
    if !out.status.success() {
        bail!(
            "riklet proxy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("riklet proxy JSON")
}

/// The pod IP of the app's (only) instance.
pub(crate) fn pod_ip(cluster: &Cluster, name: &str) -> anyhow::Result<Ipv4Addr> {
    let instances = cluster.instances(name)?;
    let ip = instances
        .first()
        .and_then(|i| i["internalIp"].as_str())
        .with_context(|| format!("no internalIp for {name}: {instances:?}"))?;
    ip.parse()
        .with_context(|| format!("internalIp {ip:?} of {name} is not an IPv4 address"))
}

/// A TCP port nothing listens on at any address now: an app's port is
/// served on every node address.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .context("binding a free port")?
        .local_addr()?
        .port())
}

/// The IPv4 address of the default route's interface (`/proc/net/route`,
/// `ip -4 -j addr show dev IF`), if there is one.
pub(crate) fn default_route_address() -> anyhow::Result<Option<Ipv4Addr>> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let Some(iface) = default_route_interface(&routes) else {
        return Ok(None);
    };
    let out = Command::new("ip")
        .args(["-4", "-j", "addr", "show", "dev", &iface])
        .output()
        .context("ip -4 -j addr show")?;
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .find(|a| a["scope"] == "global")
        .and_then(|a| a["local"].as_str()?.parse().ok()))
}

/// The interface of the first default route (destination and mask 0).
fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")).then(|| f[0].to_string())
    })
}

/// The cluster's bridge and NAT table, removed on drop (the riklet removes
/// neither: pods' networks come and go, the bridge stays), and the proxy's
/// table (`<nft_table>_proxy`), which a riklet that did not stop cleanly
/// leaves. Its pinned eBPF programs and maps go with the cluster's pin dir.
pub(crate) struct BenchNetwork {
    pub bridge: String,
    pub table: String,
}

impl Drop for BenchNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        for table in [self.table.clone(), format!("{}_proxy", self.table)] {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &table])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_the_default_route_interface() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     rk0\t00580A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table), Some("eth0".to_string()));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn a_service_serves_when_its_tcp_port_lists_the_backend() {
        let view = json!({"mode": "ebpf", "services": [
            {"app": "web", "port": 30080, "protocol": "TCP", "datapath": "ebpf",
             "backends": ["10.217.0.2:8080"], "connections": 0, "bytes": 0},
            {"app": "web", "port": 30081, "protocol": "UDP", "datapath": "ebpf",
             "backends": ["10.217.0.2:5201"], "connections": 0, "bytes": 0},
        ]});
        let pod = |p| SocketAddr::from(([10, 217, 0, 2], p));
        assert!(serves(&view, 30080, pod(8080)));
        assert!(!serves(&view, 30080, pod(8081)));
        assert!(
            !serves(&view, 30081, pod(5201)),
            "UDP is not the iperf3 TCP port"
        );
        assert!(!serves(&json!({"mode": "off"}), 30080, pod(8080)));
    }
}
