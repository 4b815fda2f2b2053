//! Pod network: one network namespace per pod, wired to a host bridge.
//!
//! ```text
//!  host                                      pod (netns /run/netns/rik-<id>)
//!  ┌──────────────── bridge rik0 10.88.0.1/24 ┐
//!  │  rikv<hash> ◀──────── veth ────────▶ eth0 10.88.0.N/24, lo up
//!  └──────────────────────────────────────────┘    default via 10.88.0.1
//!  (IPv4 only: IPv6 is off on both ends of the veth; lo keeps ::1)
//!  nft: table ip riklet, chain pod_masquerade (postrouting):
//!       ip saddr 10.88.0.0/24 ip daddr != 10.88.0.0/24 masquerade
//! ```
//!
//! Every operation is idempotent and converges: [`PodNetwork::attach`]
//! re-run on a half-attached pod (the riklet died in the middle) finishes
//! the job; [`PodNetwork::reconcile`] removes what belongs to instances the
//! riklet no longer runs. Kernel objects are only touched through netlink
//! (`rtnetlink`) and the `nftables` crate.
//!
//! # Layout
//! - [`ipam`]: the pod CIDR and its leases (`<state-dir>/ipam.json`).
//! - `locks`: one lock per instance, so that pods attach in parallel.
//! - [`netns`]: named network namespaces and sockets inside them.
//! - `link`: netlink operations (bridge, veth, addresses, routes).
//! - [`nat`]: the nftables masquerade rule.

pub mod ipam;
mod link;
mod locks;
pub mod nat;
pub mod netns;

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use ipam::{Ipam, Ipv4Cidr, SharedIpam};
use link::Netlink;
use locks::InstanceLocks;

/// Name of the pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";

/// Prefix of the host side of every pod veth.
pub const VETH_PREFIX: &str = "rikv";

/// IPAM state file, relative to the state dir.
pub const IPAM_FILE: &str = "ipam.json";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Pod attachments and detachments doing kernel work at once. Each keeps
/// one request in flight on the host's netlink socket, whose receive
/// buffer must hold every reply (a full buffer drops replies, and their
/// requests never end); the kernel serialises the work under its RTNL
/// lock anyway. Bursts of deletes are not bounded otherwise.
const KERNEL_OPS: usize = 16;

/// Longest kernel work of one attachment or detachment.
const KERNEL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an attach trusts the last full check of the bridge (see
/// `PodNetwork::bridge`).
const BRIDGE_RECHECK: Duration = Duration::from_secs(10);

/// A pod network operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A setting that cannot be used.
    #[error("network config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// An instance id that must not reach a path or a link name.
    #[error(transparent)]
    InvalidInstance(#[from] proto::manifest::ManifestError),
    /// Every address of the pod CIDR is leased.
    #[error(
        "pod CIDR {cidr} is exhausted: all {leases} pod addresses are leased \
         (use a larger pod_cidr or remove pods)"
    )]
    CidrExhausted { cidr: String, leases: usize },
    /// `pod_cidr` changed while pods still hold leases of the old one.
    #[error(
        "IPAM state {path} holds {leases} leases in {leased} but pod_cidr is {configured}: \
         remove those pods or restore pod_cidr"
    )]
    CidrChanged {
        path: PathBuf,
        leased: String,
        configured: String,
        leases: usize,
    },
    /// The lease file cannot be trusted; refusing it avoids handing out
    /// addresses that are in use.
    #[error("IPAM state {path} is corrupt")]
    IpamCorrupt {
        path: PathBuf,
        #[source]
        source: IpamFault,
    },
    /// The bridge name is taken by something else.
    #[error("link {name} cannot be the pod bridge: {reason}")]
    NotABridge { name: String, reason: String },
    #[error("{what}: {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("{what}{}", nft_said(.detail))]
    Nft {
        what: String,
        /// What `nft` printed on stderr.
        detail: String,
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    #[error("cannot spawn a thread for {what}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: the helper thread died")]
    ThreadPanicked { what: &'static str },
    /// Kernel work that did not finish in time (a netlink reply lost to a
    /// socket overrun must not hang a pod forever).
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
}

/// What is wrong with the IPAM state file.
#[derive(Debug, thiserror::Error)]
pub enum IpamFault {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An instance id that is not one, or an address leased twice.
    #[error("bad lease {id:?} => {ip}")]
    BadLease { id: String, ip: Ipv4Addr },
}

/// What `nft` printed on stderr, as a suffix of a message (its error
/// only says that it failed).
pub(crate) fn nft_said(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (nft: {stderr})")
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, NetworkError>;

/// Pod network settings (the `[network]` table of the riklet config).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Host bridge the pods attach to (a link name: at most 15 characters).
    pub bridge: String,
    /// IPv4 network of the pods, `/8` to `/30`; the bridge takes its first
    /// address, which is the pods' default gateway.
    pub pod_cidr: String,
    /// Masquerade pod traffic to addresses outside `pod_cidr` (pods reach
    /// the outside world with the node's address).
    pub masquerade: bool,
    /// nftables table (family `ip`) holding the masquerade chain.
    pub nft_table: String,
    /// Prefix of the pods' network namespace names under `/run/netns`,
    /// which every riklet of the machine shares.
    pub netns_prefix: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            bridge: "rik0".into(),
            pod_cidr: "10.88.0.0/24".into(),
            masquerade: true,
            nft_table: "riklet".into(),
            netns_prefix: netns::NETNS_PREFIX.into(),
        }
    }
}

impl NetworkConfig {
    /// Checks what serde cannot; returns the parsed CIDR.
    pub fn validate(&self) -> Result<Ipv4Cidr> {
        let invalid = |field, reason: String| NetworkError::InvalidConfig { field, reason };
        check_link_name(&self.bridge).map_err(|reason| invalid("bridge", reason))?;
        check_nft_table_name(&self.nft_table).map_err(|reason| invalid("nft_table", reason))?;
        check_netns_prefix(&self.netns_prefix).map_err(|reason| invalid("netns_prefix", reason))?;
        Ipv4Cidr::parse(&self.pod_cidr).map_err(|reason| invalid("pod_cidr", reason))
    }
}

/// A name the kernel takes for a link: 1-15 characters of `[A-Za-z0-9._-]`,
/// not `.` or `..`; otherwise why not.
pub(crate) fn check_link_name(b: &str) -> std::result::Result<(), String> {
    let valid = !b.is_empty()
        && b.len() <= 15
        && b != "."
        && b != ".."
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{b:?} is not a link name (1-15 characters of [A-Za-z0-9._-])"
        ))
    }
}

/// A prefix that keeps `<prefix><instance>` one file name of `/run/netns`:
/// 1-32 characters of `[A-Za-z0-9._-]`, not starting with a dot.
fn check_netns_prefix(p: &str) -> std::result::Result<(), String> {
    let valid = !p.is_empty()
        && p.len() <= 32
        && !p.starts_with('.')
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{p:?} is not a namespace name prefix (1-32 characters of [A-Za-z0-9._-], \
             not starting with a dot)"
        ))
    }
}

/// A name nft takes for a table without quoting: a letter, then
/// `[A-Za-z0-9_-]`, at most 64 characters; otherwise why not.
pub(crate) fn check_nft_table_name(t: &str) -> std::result::Result<(), String> {
    let valid = t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_alphabetic())
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{t:?} is not a table name (a letter, then [A-Za-z0-9_-], at most 64)"
        ))
    }
}

/// Where an attached pod is on the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    /// The pod's address on `eth0`.
    pub ip: Ipv4Addr,
    /// Prefix length of the pod CIDR.
    pub prefix_len: u8,
    /// The bridge address, the pod's default route.
    pub gateway: Ipv4Addr,
    /// The pod's network namespace (give it to runc / `setns`).
    pub netns: PathBuf,
}

/// The host side of the pod veth of `instance_id`: `rikv` and 10 hex
/// digits of a SHA-256 (link names are limited to 15 bytes) of the id, or
/// of `netns_prefix` and the id when the prefix is not the default: host
/// links are shared by every riklet of the machine, and a moved instance
/// keeps its id. With the default prefix, the names of pods started before
/// the prefix existed stay the same.
pub fn host_veth_name(netns_prefix: &str, instance_id: &str) -> String {
    let mut hash = Sha256::new();
    if netns_prefix != netns::NETNS_PREFIX {
        hash.update(netns_prefix.as_bytes());
    }
    hash.update(instance_id.as_bytes());
    format!("{VETH_PREFIX}{}", hex::encode(&hash.finalize()[..5]))
}

/// The pod network of this node.
pub struct PodNetwork {
    config: NetworkConfig,
    cidr: Ipv4Cidr,
    host: Netlink,
    ipam: SharedIpam,
    /// Taken shared by attach and detach, which also hold their instance's
    /// lock (pods attach in parallel, one pod's operations one at a time);
    /// taken exclusively by what goes over every pod (reconcile, uninstall).
    ops: tokio::sync::RwLock<()>,
    instances: InstanceLocks,
    /// The index of the bridge when it was last checked in full (address,
    /// up), and when. The full check lists every address of the host, so
    /// a burst of attaches makes it at most once per [`BRIDGE_RECHECK`]. The lock serialises it: the kernel allows one
    /// dump at a time on the host's netlink socket (another fails with
    /// EBUSY).
    bridge: tokio::sync::Mutex<Option<(u32, Instant)>>,
    /// [`KERNEL_OPS`] permits.
    kernel: tokio::sync::Semaphore,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// Ensures the bridge (gateway = first host address of the CIDR),
    /// `net.ipv4.ip_forward = 1` and, if `masquerade`, the nftables
    /// masquerade rule (removed if `masquerade` is off); loads the leases
    /// from `<state_dir>/ipam.json`.
    pub async fn new(config: NetworkConfig, state_dir: &Path) -> Result<Self> {
        let cidr = config.validate()?;
        std::fs::create_dir_all(state_dir).map_err(|source| NetworkError::Io {
            what: "creating the state dir".into(),
            path: state_dir.to_path_buf(),
            source,
        })?;
        let ipam = Ipam::load(&state_dir.join(IPAM_FILE), cidr)?;
        netns::prepare_dir()?;
        let host = Netlink::host()?;
        let bridge = link::ensure_bridge(
            &host.handle,
            &config.bridge,
            cidr.gateway(),
            cidr.prefix_len(),
        )
        .await?;
        enable_ip_forward()?;
        if config.masquerade {
            nat::ensure(&config.nft_table, cidr).await?;
        } else if let Err(e) = nat::remove(&config.nft_table).await {
            // Most likely there is nothing to remove (or no `nft` at all):
            // not a reason to run without a pod network.
            warn!(error = %crate::error_chain(&e), "cannot remove a masquerade rule of an earlier configuration");
        }
        info!(
            bridge = %config.bridge,
            cidr = %cidr,
            masquerade = config.masquerade,
            leases = ipam.ids().len(),
            "pod network ready"
        );
        Ok(PodNetwork {
            config,
            cidr,
            host,
            ipam: SharedIpam::new(ipam),
            ops: tokio::sync::RwLock::new(()),
            instances: InstanceLocks::default(),
            bridge: tokio::sync::Mutex::new(Some((bridge, Instant::now()))),
            kernel: tokio::sync::Semaphore::new(KERNEL_OPS),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Gives `instance_id` a network namespace (`/run/netns/rik-<id>`)
    /// with `lo` up and `eth0` (a veth whose host side is on the bridge)
    /// holding a leased address and a default route via the bridge.
    /// Idempotent: returns the existing address of an attached instance,
    /// and finishes a half-done attachment. A failed first attachment
    /// leaves nothing behind. Attaches of different instances run in
    /// parallel.
    pub async fn attach(&self, instance_id: &str) -> Result<PodAddress> {
        proto::manifest::validate_instance_id(instance_id)?;
        let _all = self.ops.read().await;
        let _pod = self.instances.lock(instance_id).await;
        let (ip, new) = crate::steps::timed("ipam", self.ipam.allocate(instance_id)).await?;
        crate::crash::point("network.attach.after_ipam_lease");
        let attached = self
            .kernel_work(
                "attaching",
                instance_id,
                self.attach_locked(instance_id, ip),
            )
            .await;
        match attached {
            Ok(address) => {
                if new {
                    info!(instance = instance_id, ip = %ip, "pod attached to the network");
                }
                Ok(address)
            }
            Err(e) => {
                if new
                    && let Err(undo) = self
                        .kernel_work("detaching", instance_id, self.detach_locked(instance_id))
                        .await
                {
                    warn!(
                        instance = instance_id,
                        error = %crate::error_chain(&undo),
                        "cannot undo a failed attachment; reconcile will retry"
                    );
                }
                Err(e)
            }
        }
    }

    /// Removes the pod's veth and network namespace and frees its address.
    /// Idempotent.
    pub async fn detach(&self, instance_id: &str) -> Result<()> {
        proto::manifest::validate_instance_id(instance_id)?;
        let _all = self.ops.read().await;
        let _pod = self.instances.lock(instance_id).await;
        self.kernel_work("detaching", instance_id, self.detach_locked(instance_id))
            .await
    }

    /// Runs one pod's kernel work: at most [`KERNEL_OPS`] at once, at most
    /// [`KERNEL_TIMEOUT`] long.
    async fn kernel_work<T>(
        &self,
        what: &str,
        instance_id: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // Never closed: the semaphore lives as long as `self`.
        let _slot = self.kernel.acquire().await;
        tokio::time::timeout(KERNEL_TIMEOUT, work)
            .await
            .map_err(|_| NetworkError::Timeout {
                what: format!("{what} {instance_id}"),
                after: KERNEL_TIMEOUT,
            })?
    }

    /// Detaches every instance that holds a lease but is not in `live`,
    /// and deletes pod veths on the bridge that belong to no lease
    /// (clean-up after a crash). Continues past failures; returns the
    /// first one.
    pub async fn reconcile(&self, live: &[String]) -> Result<()> {
        let _all = self.ops.write().await;
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut first_error = None;
        let leased = self.lock_ipam().ids();
        for id in leased.iter().filter(|id| !live.contains(id.as_str())) {
            info!(instance = %id, "removing the network of an instance that is gone");
            if let Err(e) = self.detach_locked(id).await {
                warn!(instance = %id, error = %crate::error_chain(&e), "cannot remove a stale pod network");
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.remove_stray_veths().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The address of an attached instance, if any.
    pub fn address(&self, instance_id: &str) -> Option<PodAddress> {
        let ip = self.ip(instance_id)?;
        Some(self.pod_address(instance_id, ip))
    }

    /// Only the IP of an attached instance, if any: what the metrics cycle
    /// asks for every pod every cycle, without building the rest.
    pub fn ip(&self, instance_id: &str) -> Option<Ipv4Addr> {
        self.lock_ipam().get(instance_id)
    }

    /// Every instance holding an address.
    pub fn instances(&self) -> Vec<String> {
        self.lock_ipam().ids()
    }

    /// Uninstall: detaches every pod, deletes the bridge, the masquerade
    /// rule (and its table when nothing else is in it) and the IPAM state.
    /// `net.ipv4.ip_forward` is left as it is: other software may rely on
    /// it.
    pub async fn remove_all(&self) -> Result<()> {
        let _all = self.ops.write().await;
        let leased = self.lock_ipam().ids();
        for id in &leased {
            self.detach_locked(id).await?;
        }
        self.remove_stray_veths().await?;
        link::delete(&self.host.handle, &self.config.bridge).await?;
        nat::remove(&self.config.nft_table).await?;
        self.lock_ipam().remove_file()?;
        info!(bridge = %self.config.bridge, "pod network removed");
        Ok(())
    }

    fn lock_ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        self.ipam.lock()
    }

    fn pod_address(&self, instance_id: &str, ip: Ipv4Addr) -> PodAddress {
        PodAddress {
            ip,
            prefix_len: self.cidr.prefix_len(),
            gateway: self.cidr.gateway(),
            netns: netns::path_of(&self.config.netns_prefix, instance_id),
        }
    }

    async fn attach_locked(&self, id: &str, ip: Ipv4Addr) -> Result<PodAddress> {
        let address = self.pod_address(id, ip);
        let bridge = crate::steps::timed("bridge", self.bridge_index()).await?;
        crate::steps::timed("netns", netns::create(&address.netns)).await?;
        crate::crash::point("network.attach.after_netns");
        let pod = Netlink::from_socket(netns::netlink_socket(&address.netns).await?);
        let result =
            crate::steps::timed("veth", self.wire(id, &address, bridge, &pod.handle)).await;
        pod.close().await;
        if result.is_ok() {
            crate::crash::point("network.attach.after_veth");
        }
        result.map(|()| address)
    }

    /// The bridge's index: one lookup when it is the bridge checked in
    /// full less than [`BRIDGE_RECHECK`] ago and up, else the full check
    /// (created, addressed, up), which also repairs a bridge someone
    /// deleted, downed or stripped of its address.
    async fn bridge_index(&self) -> Result<u32> {
        let host = &self.host.handle;
        let asked = Instant::now();
        let checked = *self.bridge.lock().await;
        if let Some((index, at)) = checked
            && at.elapsed() < BRIDGE_RECHECK
            && let Some(link) = link::by_name(host, &self.config.bridge).await?
            && link.header.index == index
            && link::is_up(&link)
        {
            return Ok(index);
        }
        let mut checked = self.bridge.lock().await;
        // Attaches that queued here behind one full check take its answer.
        if let Some((index, at)) = *checked
            && at > asked
        {
            return Ok(index);
        }
        let index = link::ensure_bridge(
            host,
            &self.config.bridge,
            self.cidr.gateway(),
            self.cidr.prefix_len(),
        )
        .await?;
        *checked = Some((index, Instant::now()));
        Ok(index)
    }

    /// Creates (or repairs) the veth pair and configures both ends.
    async fn wire(
        &self,
        id: &str,
        address: &PodAddress,
        bridge: u32,
        pod: &rtnetlink::Handle,
    ) -> Result<()> {
        let host = &self.host.handle;
        let veth = host_veth_name(&self.config.netns_prefix, id);
        let host_end = link::by_name(host, &veth).await?;
        let pod_end = link::by_name(pod, POD_IFNAME).await?;
        // The pair is intact when the pod's eth0 points at our host end.
        let paired = matches!(
            (&host_end, &pod_end),
            (Some(h), Some(p)) if link::peer_of(p) == Some(h.header.index)
        );
        if !paired {
            if let Some(h) = &host_end {
                link::delete_index(host, h.header.index, &veth).await?;
            }
            if let Some(p) = &pod_end {
                link::delete_index(pod, p.header.index, POD_IFNAME).await?;
            }
            let ns = netns::open(&address.netns)?;
            link::create_veth(host, &veth, POD_IFNAME, ns.as_raw_fd()).await?;
        }
        let missing = |name: &str| NetworkError::Netlink {
            what: format!("link {name} vanished while attaching {id}"),
            source: Box::new(rtnetlink::Error::RequestFailed),
        };
        let host_end = link::by_name(host, &veth)
            .await?
            .ok_or_else(|| missing(&veth))?;
        link::disable_ipv6(&veth)?;
        link::set_up(host, host_end.header.index, Some(bridge), &veth).await?;
        link::set_hairpin(host, host_end.header.index, &veth).await?;

        let lo = link::by_name(pod, "lo")
            .await?
            .ok_or_else(|| missing("lo"))?;
        link::set_up(pod, lo.header.index, None, "lo").await?;
        let eth0 = link::by_name(pod, POD_IFNAME)
            .await?
            .ok_or_else(|| missing(POD_IFNAME))?
            .header
            .index;
        link::ensure_address(pod, eth0, address.ip, address.prefix_len, POD_IFNAME).await?;
        link::set_up(pod, eth0, None, POD_IFNAME).await?;
        link::ensure_default_route(pod, eth0, address.gateway).await
    }

    async fn detach_locked(&self, id: &str) -> Result<()> {
        let host = &self.host.handle;
        let ip = self.lock_ipam().get(id);
        // Deleting the host end deletes eth0 with it.
        let prefix = &self.config.netns_prefix;
        link::delete(host, &host_veth_name(prefix, id)).await?;
        crate::crash::point("network.detach.after_veth");
        netns::remove(&netns::path_of(prefix, id))?;
        if let Some(ip) = ip {
            if let Some(bridge) = link::by_name(host, &self.config.bridge).await? {
                link::forget_neighbour(host, bridge.header.index, ip).await?;
            }
            crate::crash::point("network.detach.before_ipam_release");
            self.ipam.release(id).await?;
            info!(instance = id, ip = %ip, "pod detached from the network");
        }
        Ok(())
    }

    /// Deletes pod veths on our bridge that no lease accounts for.
    async fn remove_stray_veths(&self) -> Result<()> {
        let host = &self.host.handle;
        let Some(bridge) = link::by_name(host, &self.config.bridge).await? else {
            return Ok(());
        };
        let expected: HashSet<String> = self
            .lock_ipam()
            .ids()
            .iter()
            .map(|id| host_veth_name(&self.config.netns_prefix, id))
            .collect();
        for l in link::all(host).await? {
            let Some(name) = link::name_of(&l) else {
                continue;
            };
            if link::controller_of(&l) == Some(bridge.header.index)
                && name.starts_with(VETH_PREFIX)
                && !expected.contains(name)
            {
                info!(
                    veth = name,
                    "deleting a pod veth that belongs to no instance"
                );
                link::delete_index(host, l.header.index, name).await?;
            }
        }
        Ok(())
    }
}

fn enable_ip_forward() -> Result<()> {
    if std::fs::read_to_string(IP_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, b"1\n").map_err(|source| NetworkError::Io {
        what: "enabling IPv4 forwarding".into(),
        path: IP_FORWARD.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c: NetworkConfig = toml::from_str("").unwrap();
        assert_eq!(c.bridge, "rik0");
        assert_eq!(c.pod_cidr, "10.88.0.0/24");
        assert!(c.masquerade);
        assert_eq!(c.nft_table, "riklet");
        assert_eq!(c.validate().unwrap().gateway(), Ipv4Addr::new(10, 88, 0, 1));

        let err = toml::from_str::<NetworkConfig>("bridg = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridg"), "{err}");
        for (toml, field) in [
            ("bridge = \"a-very-long-bridge\"", "bridge"),
            ("bridge = \"a/b\"", "bridge"),
            ("nft_table = \"1x\"", "nft_table"),
            ("nft_table = \"a b\"", "nft_table"),
            ("pod_cidr = \"10.88.0.1/24\"", "pod_cidr"),
            ("pod_cidr = \"10.88.0.0/31\"", "pod_cidr"),
            ("netns_prefix = \"\"", "netns_prefix"),
            ("netns_prefix = \"a/b-\"", "netns_prefix"),
            ("netns_prefix = \"..\"", "netns_prefix"),
        ] {
            let c: NetworkConfig = toml::from_str(toml).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn operations_can_run_on_spawned_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        fn check(net: &PodNetwork) {
            send(&net.attach("x"));
            send(&net.detach("x"));
            send(&net.reconcile(&[]));
            send(&net.remove_all());
        }
        send_sync::<PodNetwork>();
        let _ = check;
    }

    #[test]
    fn veth_names_fit_and_differ() {
        let default = netns::NETNS_PREFIX;
        let a = host_veth_name(default, "opposite-join-5857");
        let b = host_veth_name(default, "opposite-join-5858");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with(VETH_PREFIX));
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name(default, "opposite-join-5857"));
        // The default prefix keeps the names pods got before it existed.
        assert_eq!(
            a,
            "rikv".to_owned() + &hex::encode(&Sha256::digest("opposite-join-5857")[..5])
        );
        // Two riklets of one machine running the same instance: two links.
        let other = host_veth_name("node2-", "opposite-join-5857");
        assert_eq!(other.len(), 14);
        assert_ne!(a, other);
    }
}
