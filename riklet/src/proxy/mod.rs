//! The Node Proxy: a connection or datagram to an app's `port` on any
//! address of the node reaches one of the app's RUNNING pods on this node
//! at its `target_port`.
//!
//! ```text
//!  agent ── endpoints (RUNNING pods with ports) ──▶ proxy task
//!                                                    │ ServiceTable
//!            ┌───────────────────────────────────────┴──────────────┐
//!   eBPF socket LB (cgroup v2 root)                      nftables table
//!   connect4/sendmsg4/recvmsg4/getpeername4              prerouting DNAT (entering)
//!   the node's own clients: TCP, UDP                     output DNAT (local: SCTP, or
//!   no per-packet NAT, no conntrack                        everything without eBPF)
//!                                                        postrouting masquerade (hairpin)
//! ```
//!
//! One task owns both datapaths and brings them in line with the agent's
//! endpoints as soon as these change, and with the node's addresses, which
//! it re-reads every [`ADDRESS_POLL`]; it compacts the nftables table once
//! the services have been quiet for [`COMPACT_AFTER`] (at the latest
//! [`COMPACT_WITHIN`] after a change). Both keep serving when the riklet
//! is killed (the socket LB's programs and maps are pinned, the nft table
//! stays); the next riklet adopts them and reconciles them once the agent
//! has recovered its pods, so a restart leaves no gap longer than the
//! recovery. A clean stop removes everything.
//!
//! # Layout
//! - [`model`]: services and backends, built from the endpoints;
//! - [`ebpf`]: the socket load-balancer and its pinned programs and maps;
//! - [`nft`]: the nftables table;
//! - [`flows`]: UDP flows to a backend that left, moved or dropped;
//! - `addresses`: the node's IPv4 addresses;
//! - `metrics`: the proxy's series of `/metrics`;
//! - this file: the mode, the task and its status.

mod addresses;
pub mod ebpf;
pub mod flows;
mod metrics;
pub mod model;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use proto::manifest::Protocol;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::network::ipam::Ipv4Cidr;
pub use metrics::ProxyMetrics;
use model::{Backend, Endpoint, PodAddress, ServiceCounters, ServiceKey, ServiceTable};

/// How often the node's addresses are re-read (an address added to the
/// node serves the apps' ports within this time).
pub const ADDRESS_POLL: Duration = Duration::from_secs(2);

/// How long the services stay unchanged before the nftables table is
/// compacted (see [`nft::NftProxy::compact`]): a change arriving during a
/// compaction waits for it, 10-20 ms.
pub const COMPACT_AFTER: Duration = Duration::from_secs(1);

/// The longest the nftables table goes uncompacted after a change, quiet
/// or not, so that services that keep changing do not pile up rules.
pub const COMPACT_WITHIN: Duration = Duration::from_secs(10);

/// Which datapath serves apps' ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// eBPF socket load-balancing for the node's own clients (TCP, UDP),
    /// nftables for traffic entering the node and for SCTP.
    #[default]
    Ebpf,
    /// nftables for everything.
    Nftables,
    /// Nothing is proxied.
    Off,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Ebpf => "ebpf",
            ProxyMode::Nftables => "nftables",
            ProxyMode::Off => "off",
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ebpf" => Ok(ProxyMode::Ebpf),
            "nftables" => Ok(ProxyMode::Nftables),
            "off" => Ok(ProxyMode::Off),
            _ => Err(format!("{s:?} is not a proxy mode (ebpf, nftables or off)")),
        }
    }
}

/// A datapath that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("eBPF socket load-balancer")]
    SocketLb(#[from] ebpf::SocketLbError),
    #[error("nftables proxy")]
    Nft(#[from] nft::NftProxyError),
}

/// What the proxy needs to know about the node.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub mode: ProxyMode,
    /// Served node addresses; empty: all of them.
    pub addresses: Vec<Ipv4Addr>,
    /// Root of the cgroup v2 hierarchy (the socket LB attaches there).
    pub cgroup_v2_root: PathBuf,
    /// The riklet's bpffs directory.
    pub pin_dir: PathBuf,
    /// The proxy's nftables table (family `ip`).
    pub nft_table: String,
    pub pod_cidr: Ipv4Cidr,
    pub bridge: String,
    /// Prefix of the pods' network namespace names (`[network]
    /// netns_prefix`).
    pub netns_prefix: String,
    /// How often counters are read for `/metrics`.
    pub counter_interval: Duration,
}

/// One service as `riklet proxy` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServiceStatus {
    pub app: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `ebpf+nftables` (the node's clients by eBPF, entering traffic by
    /// nftables) or `nftables`.
    pub datapath: &'static str,
    pub backends: Vec<String>,
    pub connections: u64,
    /// Bytes both ways: the socket LB's sockets (counted per packet by its
    /// `cgroup_skb` pair) plus the connections nftables translated.
    pub bytes: u64,
}

/// What the proxy is doing (`riklet proxy`, `/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// The datapath in use.
    pub mode: ProxyMode,
    /// The configured one (differs when eBPF could not load).
    pub requested: ProxyMode,
    /// Node addresses served.
    pub addresses: Vec<Ipv4Addr>,
    pub services: Vec<ServiceStatus>,
    /// How long the last sync took.
    pub last_sync_seconds: f64,
    pub syncs: u64,
    pub sync_errors: u64,
}

/// Asks the proxy task for fresh counters.
type Refresh = oneshot::Sender<()>;

/// Cheap handle to read the proxy's status.
#[derive(Clone, Debug)]
pub struct ProxyHandle {
    status: Arc<RwLock<ProxyStatus>>,
    refresh: mpsc::Sender<Refresh>,
}

impl ProxyHandle {
    /// The status with counters read now.
    pub async fn status(&self) -> ProxyStatus {
        let (tx, rx) = oneshot::channel();
        if self.refresh.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        self.latest()
    }

    /// The status as of the last sync or counter read.
    pub fn latest(&self) -> ProxyStatus {
        self.status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The proxy's series for the metrics endpoint.
    pub fn metrics(&self, node: &str) -> ProxyMetrics {
        ProxyMetrics::new(self.status.clone(), node)
    }
}

/// The proxy: its datapaths and what they serve.
pub struct Proxy {
    settings: ProxySettings,
    mode: ProxyMode,
    socket_lb: Option<ebpf::SocketLb>,
    nft: Option<nft::NftProxy>,
    /// What the datapaths hold; `None` before the first sync.
    synced: Option<(ServiceTable, Vec<Ipv4Addr>)>,
    status: Arc<RwLock<ProxyStatus>>,
    refresh: mpsc::Receiver<Refresh>,
}

impl Proxy {
    /// Sets up the datapaths of `settings.mode`, adopting what a killed
    /// predecessor left, and removes those of other modes. eBPF that cannot
    /// load is logged once and nftables serves everything.
    pub async fn start(settings: ProxySettings) -> Result<(Proxy, ProxyHandle), ProxyError> {
        let mut mode = settings.mode;
        let mut socket_lb = None;
        if mode == ProxyMode::Ebpf {
            match ebpf::SocketLb::load(&settings.cgroup_v2_root, &settings.pin_dir) {
                Ok(lb) => socket_lb = Some(lb),
                Err(e) => {
                    warn!(error = %crate::error_chain(&e), "eBPF socket load-balancing unavailable: nftables proxies all traffic");
                    mode = ProxyMode::Nftables;
                }
            }
        }
        if socket_lb.is_none() {
            ebpf::remove_pinned(&settings.pin_dir)?;
        }
        let nft = nft::NftProxy::new(nft::NftSettings {
            table: settings.nft_table.clone(),
            pod_cidr: settings.pod_cidr,
            bridge: settings.bridge.clone(),
            addresses: settings.addresses.clone(),
            local: if mode == ProxyMode::Ebpf {
                nft::LocalTraffic::SctpOnly
            } else {
                nft::LocalTraffic::All
            },
        })?;
        let nft = if mode == ProxyMode::Off {
            nft.remove().await?;
            None
        } else {
            Some(nft)
        };
        info!(mode = %mode, requested = %settings.mode, "node proxy ready");
        let status = Arc::new(RwLock::new(ProxyStatus {
            mode,
            requested: settings.mode,
            ..ProxyStatus::default()
        }));
        let (refresh_tx, refresh) = mpsc::channel(8);
        let handle = ProxyHandle {
            status: status.clone(),
            refresh: refresh_tx,
        };
        let proxy = Proxy {
            settings,
            mode,
            socket_lb,
            nft,
            synced: None,
            status,
            refresh,
        };
        Ok((proxy, handle))
    }

    /// Brings the datapaths in line with `endpoints` and the node's
    /// addresses; nothing is written when neither changed. Returns whether
    /// something was.
    async fn sync(&mut self, endpoints: &[Endpoint]) -> Result<bool, ProxyError> {
        let live: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| network_present(&self.settings.netns_prefix, e))
            .cloned()
            .collect();
        let table = ServiceTable::from_endpoints(&live);
        let addresses = self.node_addresses().await;
        if self.synced.as_ref() == Some(&(table.clone(), addresses.clone())) {
            return Ok(false);
        }
        let started = Instant::now();
        if let Some(lb) = &mut self.socket_lb {
            lb.sync(&table, &addresses)?;
        }
        if let Some(nft) = &self.nft {
            nft.sync(&table).await?;
        }
        let took = started.elapsed();
        let gone = match &self.synced {
            Some((before, _)) => udp_backends_gone(before, &table),
            None => Vec::new(),
        };
        if !gone.is_empty() {
            let namespaces: Vec<PathBuf> = live
                .iter()
                .filter(|e| matches!(e.address, PodAddress::Ip(_)))
                .map(|e| crate::network::netns::path_of(&self.settings.netns_prefix, &e.instance))
                .collect();
            if let Err(e) = flows::forget_udp_flows(&gone, &namespaces).await {
                warn!(error = %crate::error_chain(&e), "cannot move the UDP flows of backends that left");
            }
        }
        debug!(
            services = table.len(),
            took_us = took.as_micros(),
            "proxy synced"
        );
        if self.synced.as_ref().map(|(t, _)| t) != Some(&table) {
            info!(
                services = table.len(),
                took_ms = took.as_secs_f64() * 1e3,
                "proxy services synced"
            );
        }
        self.synced = Some((table, addresses));
        self.publish(Some(took), None);
        Ok(true)
    }

    /// Deletes what the nftables syncs left behind (a failure is logged:
    /// the table serves all the same).
    async fn compact(&self) {
        if let Some(nft) = &self.nft
            && let Err(e) = nft.compact().await
        {
            warn!(error = %crate::error_chain(&e), "cannot compact the proxy's nftables table");
        }
    }

    /// The addresses to serve: the configured ones, else every IPv4
    /// address of the node but loopback (which the datapaths handle
    /// themselves); none when they cannot be read.
    async fn node_addresses(&self) -> Vec<Ipv4Addr> {
        if !self.settings.addresses.is_empty() {
            return self.settings.addresses.clone();
        }
        addresses::node_ipv4_addresses().await.unwrap_or_else(|e| {
            warn!(error = %crate::error_chain(&e), "cannot list the node's addresses");
            Vec::new()
        })
    }

    /// Reads the datapaths' counters into the status.
    async fn read_counters(&mut self) {
        // Without services there is nothing to count, and the nftables
        // read alone is two `nft` processes every metrics interval.
        if self
            .synced
            .as_ref()
            .is_none_or(|(table, _)| table.is_empty())
        {
            self.publish(None, Some(BTreeMap::new()));
            return;
        }
        let mut counters: BTreeMap<ServiceKey, ServiceCounters> = BTreeMap::new();
        let mut add = |found: BTreeMap<ServiceKey, ServiceCounters>| {
            for (key, c) in found {
                let total = counters.entry(key).or_default();
                total.connections += c.connections;
                total.bytes += c.bytes;
            }
        };
        if let Some(lb) = &self.socket_lb {
            match lb.counters() {
                Ok(found) => add(found),
                Err(e) => {
                    warn!(error = %crate::error_chain(&e), "cannot read the socket LB's counters")
                }
            }
        }
        if let Some(nft) = &self.nft {
            match nft.counters().await {
                Ok(found) => add(found),
                Err(e) => {
                    warn!(error = %crate::error_chain(&e), "cannot read the nftables counters")
                }
            }
        }
        self.publish(None, Some(counters));
    }

    /// Writes the status others read: services, addresses, timings and,
    /// when given, counters (else the last ones are kept).
    fn publish(
        &self,
        sync_took: Option<Duration>,
        counters: Option<BTreeMap<ServiceKey, ServiceCounters>>,
    ) {
        let mut status = self.status.write().unwrap_or_else(PoisonError::into_inner);
        let previous: BTreeMap<ServiceKey, (u64, u64)> = status
            .services
            .iter()
            .map(|s| {
                let key = ServiceKey {
                    port: s.port,
                    protocol: s.protocol,
                };
                (key, (s.connections, s.bytes))
            })
            .collect();
        let Some((table, addresses)) = &self.synced else {
            return;
        };
        status.addresses = addresses.clone();
        status.services = table
            .services()
            .map(|s| {
                let (connections, bytes) = match &counters {
                    Some(c) => c.get(&s.key).map_or((0, 0), |c| (c.connections, c.bytes)),
                    None => previous.get(&s.key).copied().unwrap_or_default(),
                };
                ServiceStatus {
                    app: s.app.clone(),
                    port: s.key.port,
                    protocol: s.key.protocol,
                    datapath: self.datapath_of(s.key.protocol),
                    backends: s.backends.iter().map(ToString::to_string).collect(),
                    connections,
                    bytes,
                }
            })
            .collect();
        if let Some(took) = sync_took {
            status.last_sync_seconds = took.as_secs_f64();
            status.syncs += 1;
        }
    }

    fn note_sync_error(&self) {
        self.status
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .sync_errors += 1;
    }

    fn datapath_of(&self, protocol: Protocol) -> &'static str {
        match (self.mode, protocol) {
            (ProxyMode::Ebpf, Protocol::Tcp | Protocol::Udp) => "ebpf+nftables",
            (ProxyMode::Off, _) => "off",
            _ => "nftables",
        }
    }

    /// Clean stop: removes the datapaths.
    async fn stop(self) {
        if let Some(lb) = self.socket_lb
            && let Err(e) = lb.close()
        {
            error!(error = %crate::error_chain(&e), "cannot remove the eBPF socket load-balancer");
        }
        if let Some(nft) = &self.nft
            && let Err(e) = nft.remove().await
        {
            error!(error = %crate::error_chain(&e), "cannot remove the proxy's nftables table");
        }
        info!("node proxy removed");
    }
}

/// Whether the pod's network namespace is still there (a pod whose
/// namespace was removed has no address to forward to).
fn network_present(netns_prefix: &str, e: &Endpoint) -> bool {
    match e.address {
        PodAddress::HostNetwork => true,
        PodAddress::Ip(_) => crate::network::netns::path_of(netns_prefix, &e.instance).exists(),
    }
}

/// UDP backends of `before` that `after` no longer has for the same
/// service: their flows must move.
fn udp_backends_gone(before: &ServiceTable, after: &ServiceTable) -> Vec<SocketAddrV4> {
    let mut gone = BTreeSet::new();
    for s in before
        .services()
        .filter(|s| s.key.protocol == Protocol::Udp)
    {
        let kept = after.get(&s.key).map(|a| &a.backends);
        for b in &s.backends {
            if let Backend::Address(addr) = b
                && !kept.is_some_and(|k| k.contains(b))
            {
                gone.insert(*addr);
            }
        }
    }
    gone.into_iter().collect()
}

/// Runs the proxy until `stop` fires, then removes it. It waits for the
/// agent's first endpoints (published once the agent has recovered its
/// pods) before touching a datapath a predecessor left serving.
pub async fn run(
    mut proxy: Proxy,
    mut endpoints: watch::Receiver<Option<Vec<Endpoint>>>,
    mut stop: broadcast::Receiver<()>,
) {
    let mut addresses = tokio::time::interval(ADDRESS_POLL);
    let mut counters = tokio::time::interval(proxy.settings.counter_interval);
    let mut dirty = true;
    // When to compact the nftables table: once the services have been
    // quiet for COMPACT_AFTER, at the latest COMPACT_WITHIN after the first
    // change since the last compaction.
    let mut compact_at: Option<tokio::time::Instant> = None;
    let mut changed_since: Option<tokio::time::Instant> = None;
    loop {
        let ready = endpoints.borrow().is_some();
        if dirty && ready {
            let now = endpoints.borrow_and_update().clone().unwrap_or_default();
            match proxy.sync(&now).await {
                Ok(wrote) => {
                    dirty = false;
                    if wrote {
                        let now = tokio::time::Instant::now();
                        let first = *changed_since.get_or_insert(now);
                        compact_at = Some((now + COMPACT_AFTER).min(first + COMPACT_WITHIN));
                    }
                }
                Err(e) => {
                    proxy.note_sync_error();
                    error!(error = %crate::error_chain(&e), "cannot sync the node proxy; retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.recv() => break,
            changed = endpoints.changed() => {
                if changed.is_err() {
                    break;
                }
                dirty = true;
            }
            _ = addresses.tick() => dirty = true,
            _ = counters.tick() => proxy.read_counters().await,
            _ = sleep_until_some(compact_at) => {
                compact_at = None;
                changed_since = None;
                proxy.compact().await;
            }
            Some(reply) = proxy.refresh.recv() => {
                proxy.read_counters().await;
                let _ = reply.send(());
            }
        }
    }
    proxy.stop().await;
}

/// Sleeps until `at`; never returns for `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_themselves() {
        for m in [ProxyMode::Ebpf, ProxyMode::Nftables, ProxyMode::Off] {
            assert_eq!(m.as_str().parse::<ProxyMode>().unwrap(), m);
        }
        let err = "iptables".parse::<ProxyMode>().unwrap_err();
        assert!(err.contains("ebpf, nftables or off"), "{err}");
        #[derive(Deserialize)]
        struct C {
            proxy: ProxyMode,
        }
        let c: C = toml::from_str("proxy = \"nftables\"").unwrap();
        assert_eq!(c.proxy, ProxyMode::Nftables);
        assert!(toml::from_str::<C>("proxy = \"ipvs\"").is_err());
    }

    #[test]
    fn only_udp_backends_that_left_have_flows_to_move() {
        use proto::manifest::Port;
        let ep = |instance: &str, ip: [u8; 4], protocol| Endpoint {
            app: "dns".into(),
            instance: instance.into(),
            address: PodAddress::Ip(ip.into()),
            ports: vec![Port {
                port: 53,
                target_port: 5353,
                protocol,
                kind: None,
            }],
        };
        let before = ServiceTable::from_endpoints(&[
            ep("dns-1", [10, 88, 0, 2], Protocol::Udp),
            ep("dns-2", [10, 88, 0, 3], Protocol::Udp),
            ep("dns-1", [10, 88, 0, 2], Protocol::Tcp),
        ]);
        let after = ServiceTable::from_endpoints(&[ep("dns-2", [10, 88, 0, 3], Protocol::Udp)]);
        assert_eq!(
            udp_backends_gone(&before, &after),
            vec!["10.88.0.2:5353".parse::<SocketAddrV4>().unwrap()]
        );
        assert!(udp_backends_gone(&after, &after).is_empty());
    }
}
