//! Node figures for the scheduler: seed 004's node resources and realtime
//! node objects, and RIK's heartbeat metrics, from procfs and the kernel;
//! and the node part of a metrics [`Snapshot`](super::sample::Snapshot)
//! ([`NodeSampler`]).
//!
//! Network figures are the link statistics the kernel reports over netlink
//! (`RTM_GETLINK`, `IFLA_STATS64`), summed over the node's uplinks (its
//! NICs, see [`LinkCounters`]). Links come and go, so a plain sum could go
//! backwards; [`LinkCounters`] instead accumulates each link's increase
//! between two readings, which stays monotonic and is what a Prometheus
//! counter needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use proto::common::ResourceStatus;
use proto::status::{
    Disk, NodeCpu, NodeMemory, NodeMetrics, NodeNetwork, NodeNetworking, NodeResources,
    RealtimeNode, RikCpu, RikMemory,
};
use tracing::debug;

use super::sample::NodeSample;

/// Reading the link statistics failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No netlink route socket (or the runtime could not register it).
    #[error("opening a netlink route socket")]
    Socket(#[source] std::io::Error),
    /// The kernel answered the link dump with an error.
    #[error("dumping links over netlink")]
    Netlink(#[source] rtnetlink::Error),
    /// The netlink connection ended before the dump did.
    #[error("the netlink connection closed during the link dump")]
    Closed,
}

/// Samples the node between heartbeats (CPU usage and network rates need
/// two samples).
pub struct NodeMonitor {
    node: String,
    last_cpu: Option<(u64, u64)>,
    links: LinkCounters,
    /// When the previous network reading was taken, and its totals.
    last_net: Option<(Instant, LinkTotals)>,
}

impl NodeMonitor {
    pub fn new(node: &str) -> Self {
        NodeMonitor {
            node: node.to_string(),
            last_cpu: None,
            links: LinkCounters::default(),
            last_net: None,
        }
    }

    /// `WorkerMetric.metrics`: RIK's keys (`cpu`, `memory`, `disks`) so that
    /// RIK's scheduler understands it, plus seed 004's `resources` and
    /// `realtime` objects. Async because the network figures come over
    /// netlink.
    pub async fn heartbeat(&mut self) -> NodeMetrics {
        let reading = Reading {
            network: self.network().await,
            cpus: cpu_count(),
            memory: memory(),
            disk: disk("/"),
            cpu_usage: self.cpu_usage_percent(),
            load: load(),
        };
        let now = crate::clock::now_ms() / 1000;
        node_metrics(&self.node, reading, self.resources(), now)
    }

    /// Traffic over the node's uplinks; the rates are over the time since
    /// the previous call (`null` on the first one), `null` everywhere if
    /// netlink failed.
    async fn network(&mut self) -> NodeNetwork {
        let totals = match self.links.update().await {
            Ok(totals) => totals,
            Err(e) => {
                debug!(error = %e, "no link statistics");
                return NodeNetwork::default();
            }
        };
        let now = Instant::now();
        let rate = |current: u64, previous: u64, since: Instant| {
            let secs = now.duration_since(since).as_secs_f64();
            (secs > 0.0).then(|| round1(current.saturating_sub(previous) as f64 / secs))
        };
        let (rx_rate, tx_rate) = match self.last_net {
            Some((since, prev)) => (
                rate(totals.rx_bytes, prev.rx_bytes, since),
                rate(totals.tx_bytes, prev.tx_bytes, since),
            ),
            None => (None, None),
        };
        self.last_net = Some((now, totals));
        NodeNetwork {
            rx_bytes_per_sec: rx_rate,
            tx_bytes_per_sec: tx_rate,
            rx_bytes: Some(totals.rx_bytes),
            tx_bytes: Some(totals.tx_bytes),
        }
    }

    /// Seed 004's node resources object.
    pub fn resources(&self) -> NodeResources {
        let (distrib, version) = os_release();
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        NodeResources {
            id: self.node.clone(),
            cpu: cpu_count(),
            memory: memory().0,
            disksize: disk("/").0,
            distrib,
            version: version.into(),
            os: std::env::consts::OS.to_string(),
            arch: go_arch(std::env::consts::ARCH).to_string(),
            kernel_version: kernel,
            networking: NodeNetworking {
                hostname,
                internalip: internal_ip().map(|ip| ip.to_string()),
                externalip: None,
            },
        }
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

/// What one heartbeat measured of the node.
#[derive(Debug, Clone, Copy)]
struct Reading {
    cpus: u64,
    /// Percent busy since the previous heartbeat.
    cpu_usage: f64,
    /// (total, available) bytes.
    memory: (u64, u64),
    /// (total, available) bytes of the root filesystem.
    disk: (u64, u64),
    load: Option<[f64; 3]>,
    network: NodeNetwork,
}

/// The heartbeat of `node` from what it measured, at `timestamp` (Unix
/// seconds).
fn node_metrics(
    node: &str,
    reading: Reading,
    resources: NodeResources,
    timestamp: i64,
) -> NodeMetrics {
    let Reading {
        cpus,
        cpu_usage,
        memory: (mem_total, mem_free),
        disk: (disk_total, disk_free),
        load,
        network,
    } = reading;
    let memory_usage = if mem_total > 0 {
        round1(100.0 * (mem_total - mem_free) as f64 / mem_total as f64)
    } else {
        0.0
    };
    NodeMetrics {
        cpu: Some(RikCpu {
            total: cpus,
            free: ((100.0 - cpu_usage) / 100.0 * cpus as f64).max(0.0),
        }),
        memory: Some(RikMemory {
            total: mem_total,
            free: mem_free,
        }),
        disks: vec![Disk {
            disk_name: "/".to_string(),
            total: disk_total,
            free: disk_free,
        }],
        resources: Some(resources),
        realtime: Some(RealtimeNode {
            id: node.to_string(),
            state: ResourceStatus::Running,
            timestamp,
            cpu: Some(NodeCpu {
                total_cpu: cpus,
                current_usage: round1(cpu_usage),
            }),
            memory: Some(NodeMemory {
                total_memory: mem_total,
                current_usage: memory_usage,
            }),
            load,
            network,
        }),
    }
}

/// Builds the node part of each metrics snapshot. Keeps its own
/// [`LinkCounters`], so that the network counters it reports only ever
/// grow.
#[derive(Debug)]
pub struct NodeSampler {
    node: String,
    links: LinkCounters,
}

impl NodeSampler {
    pub fn new(node: &str) -> Self {
        NodeSampler {
            node: node.to_string(),
            links: LinkCounters::default(),
        }
    }

    /// Reads the node now. Figures that cannot be read are `None`.
    pub async fn sample(&mut self) -> NodeSample {
        use procfs::Current;
        let links = match self.links.update().await {
            Ok(totals) => Some(totals),
            Err(e) => {
                debug!(error = %e, "no link statistics");
                None
            }
        };
        let meminfo = procfs::Meminfo::current().ok();
        NodeSample {
            node: self.node.clone(),
            cpu_seconds_total: cpu_ticks()
                .map(|(busy, _)| busy as f64 / procfs::ticks_per_second() as f64),
            cpus: cpu_count(),
            memory_total_bytes: meminfo.as_ref().map(|m| m.mem_total),
            memory_available_bytes: meminfo
                .as_ref()
                .map(|m| m.mem_available.unwrap_or(m.mem_free)),
            load1: procfs::LoadAverage::current()
                .ok()
                .map(|l| f64::from(l.one)),
            rx_bytes: links.map(|l| l.rx_bytes),
            tx_bytes: links.map(|l| l.tx_bytes),
        }
    }
}

/// Byte and packet counts of one link, or of several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTotals {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl LinkTotals {
    /// The increase from `previous`, field by field; a field that went
    /// backwards was reset (or wrapped), so all of its value is new.
    fn since(self, previous: LinkTotals) -> LinkTotals {
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        LinkTotals {
            rx_bytes: delta(self.rx_bytes, previous.rx_bytes),
            tx_bytes: delta(self.tx_bytes, previous.tx_bytes),
            rx_packets: delta(self.rx_packets, previous.rx_packets),
            tx_packets: delta(self.tx_packets, previous.tx_packets),
        }
    }

    fn plus(self, other: LinkTotals) -> LinkTotals {
        LinkTotals {
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
        }
    }
}

/// Monotonic traffic totals over the node's uplinks.
///
/// The uplinks are the links the node's traffic enters and leaves by: the
/// non-loopback links that are not virtual devices (no `IFLA_INFO_KIND`:
/// not a veth, bridge, tunnel, …), that is its NICs. Virtual links are left
/// out because they would count a pod's packet on its veth, on the bridge
/// and again on the NIC, and because reading 500 pod veths every cycle was
/// a third of the collection's CPU. A node with no such link (a node that
/// is itself a container, behind a veth) counts every non-loopback link.
///
/// The uplinks are found with a link dump at the first reading and every
/// [`UPLINK_DISCOVERY`] after (or as soon as one disappears); readings in
/// between ask the kernel for those links only, by index.
///
/// The first reading counts every link's traffic since it was created; each
/// later one adds what every link gained since the previous reading, and
/// all the traffic of a link seen for the first time. Traffic of a link
/// deleted between two readings after the first of them is lost, nothing is
/// ever subtracted.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Last reading of each link, by interface index (the kernel does not
    /// reuse an index soon; a reused one looks like a reset).
    last: HashMap<u32, LinkTotals>,
    total: LinkTotals,
    /// The NICs' indexes and when they were found; `None` before the first
    /// dump, after a failed reading, and on a node without NICs.
    nics: Option<(Vec<u32>, Instant)>,
}

/// How often the node's uplinks are looked for again (a NIC added).
const UPLINK_DISCOVERY: Duration = Duration::from_secs(300);

impl LinkCounters {
    /// Reads the uplinks over netlink and returns the updated totals.
    pub async fn update(&mut self) -> Result<LinkTotals, NodeError> {
        let known = self
            .nics
            .as_ref()
            .filter(|(_, found)| found.elapsed() < UPLINK_DISCOVERY)
            .map(|(nics, _)| nics.clone());
        let links = match known {
            Some(nics) => match links_by_index(&nics).await {
                Ok(links) => links,
                Err(e) => {
                    debug!(error = %e, "an uplink is gone: looking for uplinks again");
                    self.discover().await?
                }
            },
            None => self.discover().await?,
        };
        Ok(self.apply(links))
    }

    /// Dumps every link, remembers the NICs, returns the uplinks' counters.
    async fn discover(&mut self) -> Result<Vec<(u32, LinkTotals)>, NodeError> {
        self.nics = None;
        let links = dump_links().await?;
        let nics: Vec<(u32, LinkTotals)> = links
            .iter()
            .filter(|l| l.nic)
            .map(|l| (l.index, l.totals))
            .collect();
        if nics.is_empty() {
            return Ok(links.into_iter().map(|l| (l.index, l.totals)).collect());
        }
        self.nics = Some((nics.iter().map(|(i, _)| *i).collect(), Instant::now()));
        Ok(nics)
    }

    fn apply(&mut self, links: Vec<(u32, LinkTotals)>) -> LinkTotals {
        let mut last = HashMap::with_capacity(links.len());
        for (index, now) in links {
            let gained = match self.last.get(&index) {
                Some(previous) => now.since(*previous),
                None => now,
            };
            self.total = self.total.plus(gained);
            last.insert(index, now);
        }
        self.last = last;
        self.total
    }
}

/// One non-loopback link of a dump.
#[derive(Debug, Clone, Copy)]
struct Link {
    index: u32,
    /// Not a virtual device: no `IFLA_INFO_KIND`.
    nic: bool,
    totals: LinkTotals,
}

/// Every non-loopback link, from one netlink link dump.
async fn dump_links() -> Result<Vec<Link>, NodeError> {
    with_netlink(|handle| async move {
        let mut links = handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links.try_next().await.map_err(NodeError::Netlink)? {
            if let Some(totals) = link_totals(&link) {
                out.push(Link {
                    index: link.header.index,
                    nic: !has_kind(&link),
                    totals,
                });
            }
        }
        Ok(out)
    })
    .await
}

/// The counters of the links `indexes`, one request each; fails if one of
/// them is gone.
async fn links_by_index(indexes: &[u32]) -> Result<Vec<(u32, LinkTotals)>, NodeError> {
    with_netlink(|handle| async move {
        let mut out = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let mut reply = handle.link().get().match_index(index).execute();
            while let Some(link) = reply.try_next().await.map_err(NodeError::Netlink)? {
                if let Some(totals) = link_totals(&link) {
                    out.push((index, totals));
                }
            }
        }
        Ok(out)
    })
    .await
}

/// Runs `requests` on a fresh netlink route connection, driven here rather
/// than spawned: it ends with the requests, and this works on any runtime
/// flavour.
async fn with_netlink<T, F, Fut>(requests: F) -> Result<T, NodeError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>>,
{
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NodeError::Socket)?;
    tokio::select! {
        out = requests(handle) => out,
        () = connection => Err(NodeError::Closed),
    }
}

/// Whether the link is a virtual device (veth, bridge, tunnel, …).
fn has_kind(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(_))),
        _ => false,
    })
}

/// The counters of one link, `None` for loopback.
fn link_totals(link: &LinkMessage) -> Option<LinkTotals> {
    if link.header.flags.contains(LinkFlags::Loopback)
        || link.header.link_layer_type == LinkLayerType::Loopback
    {
        return None;
    }
    let mut stats32 = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Stats64(s) => {
                return Some(LinkTotals {
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                });
            }
            LinkAttribute::Stats(s) => {
                stats32 = Some(LinkTotals {
                    rx_bytes: s.rx_bytes.into(),
                    tx_bytes: s.tx_bytes.into(),
                    rx_packets: s.rx_packets.into(),
                    tx_packets: s.tx_packets.into(),
                });
            }
            _ => {}
        }
    }
    stats32
}

/// An architecture by its Go name, as Kubernetes and seed 004 give it.
fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn cpu_count() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
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

/// The 1, 5 and 15 minute load averages.
fn load() -> Option<[f64; 3]> {
    use procfs::Current;
    let l = procfs::LoadAverage::current().ok()?;
    Some([l.one, l.five, l.fifteen].map(f64::from))
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

/// The node's address: the IPv4 source address of its default route (as
/// kubelet picks a node IP), else the first IPv4 address of an interface
/// that is up and not loopback. Looked up at most every
/// [`INTERNAL_IP_TTL`]: every heartbeat asks for it, once per host-network
/// pod, and the fallback dumps every link and address of the node
/// (hundreds with pod veths).
pub fn internal_ip() -> Option<IpAddr> {
    static LAST: std::sync::Mutex<Option<(Instant, Option<IpAddr>)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, ip)) = *last
        && at.elapsed() < INTERNAL_IP_TTL
    {
        return ip;
    }
    let ip = lookup_internal_ip();
    *last = Some((Instant::now(), ip));
    ip
}

/// How long [`internal_ip`] keeps an answer.
const INTERNAL_IP_TTL: Duration = Duration::from_secs(30);

fn lookup_internal_ip() -> Option<IpAddr> {
    default_route_source().or_else(first_interface_ipv4)
}

/// The source address the kernel picks for a packet to the outside world
/// (TEST-NET-1, which only a default route leads to). Connecting a UDP
/// socket sends nothing; it costs one route lookup.
fn default_route_source() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket
        .connect((std::net::Ipv4Addr::new(192, 0, 2, 1), 9))
        .ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn first_interface_ipv4() -> Option<IpAddr> {
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
    fn internal_ip_is_where_the_default_route_leaves_from() {
        // What the kernel answers for the same destination (no output, so
        // `None`, on a node without a route there).
        let out = std::process::Command::new("ip")
            .args(["-j", "-4", "route", "get", "192.0.2.1"])
            .output()
            .expect("running ip (iproute2)");
        let routes: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let expected = routes[0]["prefsrc"]
            .as_str()
            .map(|s| s.parse::<IpAddr>().unwrap());
        assert_eq!(default_route_source(), expected, "{routes}");
        if expected.is_some() {
            assert_eq!(internal_ip(), expected);
        }
    }

    #[tokio::test]
    async fn heartbeat_has_rik_and_seed_fields() {
        let mut m = NodeMonitor::new("node-a");
        let _ = m.heartbeat().await;
        let hb = m.heartbeat().await.to_value();
        assert!(hb["cpu"]["total"].as_u64().unwrap() >= 1);
        assert!(hb["memory"]["total"].as_u64().unwrap() > 0);
        assert!(hb["disks"][0]["total"].as_u64().unwrap() > 0);
        let r = &hb["resources"];
        assert_eq!(r["id"], "node-a");
        assert!(!r["kernelVersion"].as_str().unwrap().is_empty());
        assert!(!r["distrib"].as_str().unwrap().is_empty());
        let usage = hb["realtime"]["cpu"]["currentUsage"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&usage));
        let net = &hb["realtime"]["network"];
        assert!(net["rxBytes"].is_u64(), "{net}");
        assert!(net["txBytes"].is_u64(), "{net}");
        assert!(net["rxBytesPerSec"].as_f64().unwrap() >= 0.0, "{net}");
        assert!(net["txBytesPerSec"].as_f64().unwrap() >= 0.0, "{net}");
        assert!(hb["realtime"]["load"].is_array());
    }

    /// The heartbeat as the riklet built it by hand before it was typed:
    /// the same keys, numbers and nulls for the same figures.
    #[test]
    fn heartbeat_keeps_its_wire_form() {
        use serde_json::json;
        let resources = NodeResources {
            id: "node-a".into(),
            cpu: 4,
            version: "rolling".to_string().into(),
            ..NodeResources::default()
        };
        let reading = Reading {
            cpus: 4,
            cpu_usage: 12.345,
            memory: (8 << 30, 6 << 30),
            disk: (100 << 30, 40 << 30),
            load: Some([0.2f32, 1.5, 3.25].map(f64::from)),
            network: NodeNetwork {
                rx_bytes_per_sec: Some(10.5),
                tx_bytes_per_sec: None,
                rx_bytes: Some(1000),
                tx_bytes: Some(0),
            },
        };
        let got = node_metrics("node-a", reading, resources.clone(), 1_700_000_000);
        let (cpus, usage, mem_total, mem_free) = (4usize, 12.345f64, 8u64 << 30, 6u64 << 30);
        let want = json!({
            "cpu": {"total": cpus, "free": ((100.0 - usage) / 100.0 * cpus as f64).max(0.0)},
            "memory": {"total": mem_total, "free": mem_free},
            "disks": [{"disk_name": "/", "total": 100u64 << 30, "free": 40u64 << 30}],
            "resources": serde_json::to_value(&resources).unwrap(),
            "realtime": {
                "id": "node-a",
                "state": "RUNNING",
                "timestamp": 1_700_000_000,
                "cpu": {"totalCpu": cpus, "currentUsage": round1(usage)},
                "memory": {
                    "totalMemory": mem_total,
                    "currentUsage": round1(100.0 * (mem_total - mem_free) as f64 / mem_total as f64),
                },
                "load": [0.2f32, 1.5f32, 3.25f32],
                "network": {"rxBytesPerSec": 10.5, "txBytesPerSec": null, "rxBytes": 1000, "txBytes": 0},
            },
        });
        assert_eq!(got.to_value(), want);

        let unreadable = Reading {
            memory: (0, 0),
            load: None,
            network: NodeNetwork::default(),
            ..reading
        };
        let got = node_metrics("node-a", unreadable, resources, 1).to_value();
        assert_eq!(got["realtime"]["memory"]["currentUsage"], json!(0.0));
        assert_eq!(got["realtime"]["load"], json!(null));
        assert_eq!(
            got["realtime"]["network"],
            json!({"rxBytesPerSec": null, "txBytesPerSec": null, "rxBytes": null, "txBytes": null})
        );
    }

    #[test]
    fn resources_keep_their_wire_form() {
        use serde_json::{Value, json};
        let (distrib, version) = os_release();
        let want = json!({
            "id": "node-a",
            "cpu": cpu_count(),
            "memory": memory().0,
            "disksize": disk("/").0,
            "distrib": distrib,
            "version": version.parse::<u64>().map(Value::from).unwrap_or(Value::String(version)),
            "type": std::env::consts::OS,
            "arch": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "kernelVersion": nix::sys::utsname::uname().unwrap().release().to_string_lossy(),
            "networking": {
                "hostname": nix::unistd::gethostname().unwrap().to_string_lossy(),
                "internalip": internal_ip().map(|ip| ip.to_string()),
                "externalip": null,
            },
        });
        let got = NodeMonitor::new("node-a").resources();
        assert_eq!(serde_json::to_value(got).unwrap(), want);
    }

    #[tokio::test]
    async fn uplinks_are_the_nics_read_by_index() {
        let links = dump_links().await.expect("netlink link dump");
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo exists");
        assert!(
            links.iter().all(|l| l.index != lo),
            "loopback (index {lo}) counted: {links:?}"
        );
        let nics: Vec<u32> = links.iter().filter(|l| l.nic).map(|l| l.index).collect();
        assert!(
            !nics.is_empty(),
            "this test needs a node with a NIC (a link without a kind): {links:?}"
        );

        let mut counters = LinkCounters::default();
        let first = counters.update().await.expect("first reading (dump)");
        let found = counters.nics.clone().expect("NICs remembered").0;
        assert_eq!(found, nics, "uplinks: the links without a kind");
        let second = counters.update().await.expect("second reading (by index)");
        assert!(second.rx_bytes >= first.rx_bytes && second.tx_bytes >= first.tx_bytes);
        let mut read: Vec<u32> = counters.last.keys().copied().collect();
        read.sort_unstable();
        let mut want = nics.clone();
        want.sort_unstable();
        assert_eq!(read, want, "the second reading reads the NICs only");

        // A NIC that disappeared (an index nobody has) sends the next
        // reading back to a dump.
        counters.nics = Some((vec![u32::MAX - 1], Instant::now()));
        counters
            .update()
            .await
            .expect("reading after a link went away");
        assert_eq!(counters.nics.expect("rediscovered").0, nics);
    }

    #[tokio::test]
    async fn node_sample_reads_everything() {
        let mut sampler = NodeSampler::new("node-a");
        let first = sampler.sample().await;
        let second = sampler.sample().await;
        assert_eq!(second.node, "node-a");
        assert!(second.cpus >= 1);
        assert!(second.cpu_seconds_total.unwrap() > 0.0);
        assert!(second.cpu_seconds_total >= first.cpu_seconds_total);
        assert!(second.memory_total_bytes.unwrap() >= second.memory_available_bytes.unwrap());
        assert!(second.load1.unwrap() >= 0.0);
        assert!(second.rx_bytes >= first.rx_bytes);
        assert!(second.tx_bytes >= first.tx_bytes);
    }

    fn link(rx_bytes: u64, tx_bytes: u64) -> LinkTotals {
        LinkTotals {
            rx_bytes,
            tx_bytes,
            rx_packets: rx_bytes / 100,
            tx_packets: tx_bytes / 100,
        }
    }

    #[test]
    fn link_counters_stay_monotonic_when_links_come_and_go() {
        let mut c = LinkCounters::default();
        // eth0 and a pod veth.
        assert_eq!(
            c.apply(vec![(2, link(1000, 500)), (7, link(300, 100))]),
            link(1300, 600)
        );
        // eth0 grows, the veth is deleted: nothing is subtracted.
        assert_eq!(c.apply(vec![(2, link(1500, 700))]), link(1800, 800));
        // A new veth appears with its own traffic since creation.
        assert_eq!(
            c.apply(vec![(2, link(1500, 700)), (9, link(200, 0))]),
            link(2000, 800)
        );
        // eth0 reset (driver reload): its whole new value is new traffic.
        assert_eq!(
            c.apply(vec![(2, link(50, 10)), (9, link(200, 0))]),
            link(2050, 810)
        );
    }
}
