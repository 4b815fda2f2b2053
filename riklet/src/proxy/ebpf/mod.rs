//! The eBPF datapath of the Node Proxy: socket load-balancing.
//!
//! The `riklet-proxy` object's `cgroup/{connect4,sendmsg4,recvmsg4,
//! getpeername4}` programs, attached at the root of the cgroup v2
//! hierarchy, point every local client's socket straight at a backend
//! (see `riklet-ebpf/src/proxy`): no per-packet NAT, no conntrack entry.
//! A `cgroup_skb` pair there counts the bytes of those sockets.
//! Traffic entering from outside the node is the nftables datapath's.
//!
//! # Surviving the riklet
//! Maps and links are pinned under `<pin_dir>/proxy`, so a riklet killed
//! with `kill -9` leaves the datapath serving; the next [`SocketLb::load`]
//! reuses the maps (flows keep their backends and reverse translations)
//! and replaces the links without a gap. Dropping a [`SocketLb`] is such
//! a crash, on purpose: only [`SocketLb::close`] (or [`remove_pinned`] in
//! a riklet that runs without the eBPF proxy) tears the datapath down.
//!
//! # Layout
//! - this file: [`SocketLb`], its load, sync, counters and close;
//! - [`SocketLbError`] (`error`);
//! - `pins`: the pin directory, map shape checks, the links and their
//!   gap-free replacement, removal;
//! - `tables`: the maps as user space writes them (adopt, sync, counters).

mod error;
mod pins;
mod tables;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use riklet_common::proxy::HOST_NETNS_COOKIE;
use tracing::{debug, info};

pub use error::SocketLbError;

use crate::metrics::ebpf::attach::open_cgroup_root;
use crate::proxy::model::{ServiceCounters, ServiceKey, ServiceTable};
use pins::Links;
use tables::Tables;

/// The object built by `cargo xtask build-ebpf` and copied by `build.rs`.
/// Aligned because the ELF parser reads it in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/riklet-proxy.o"));

/// Result of this module.
pub type Result<T, E = SocketLbError> = std::result::Result<T, E>;

/// The attached socket load-balancer and the handle on its maps.
///
/// Dropping it leaves the datapath attached and serving, as a crash would;
/// [`close`](Self::close) detaches it.
pub struct SocketLb {
    /// The riklet's pin directory (ours is `<pin_dir>/proxy`).
    pin_dir: PathBuf,
    tables: Tables,
    links: Links,
    /// The loaded programs; the links keep them attached without it.
    _ebpf: Ebpf,
}

impl SocketLb {
    /// Loads the proxy object, reusing the maps a predecessor pinned under
    /// `<pin_dir>/proxy`, and attaches its programs to `cgroup_v2_root`
    /// (the root of the v2 hierarchy: every socket of the node is below
    /// it) through links pinned there too, each replacing a predecessor's
    /// link without a gap.
    ///
    /// A bpffs is mounted at `/sys/fs/bpf` first if `pin_dir` is below it
    /// and none is there. The maps keep what a predecessor wrote until the
    /// first [`sync`](Self::sync).
    pub fn load(cgroup_v2_root: &Path, pin_dir: &Path) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(SocketLbError::EmptyObject);
        }
        let dir = pins::prepare(pin_dir)?;
        let cgroup = open_cgroup_root(cgroup_v2_root).map_err(SocketLbError::Host)?;
        let cookie = host_netns_cookie()?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .override_global(HOST_NETNS_COOKIE, &cookie, true)
            .load(OBJECT)
            .map_err(|source| SocketLbError::Load {
                dir: dir.clone(),
                source: Box::new(source),
            })?;
        let tables = Tables::adopt(&mut ebpf)?;
        let links = Links::attach(&mut ebpf, &cgroup, &dir)?;
        info!(
            cgroup = %cgroup_v2_root.display(),
            pins = %dir.display(),
            services = tables.service_count(),
            "eBPF socket load-balancer attached"
        );
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            tables,
            links,
            _ebpf: ebpf,
        })
    }

    /// Makes the maps hold exactly the TCP and UDP services of `table`
    /// (SCTP is nftables' alone) and, as the addresses services answer on
    /// besides the host's loopback, `node_addresses`. Entries a predecessor
    /// left that are not wanted are removed. Only what changed is written;
    /// a changed backend set is switched in one map update.
    pub fn sync(&mut self, table: &ServiceTable, node_addresses: &[Ipv4Addr]) -> Result<()> {
        self.tables.sync(table, node_addresses)?;
        debug!(
            services = self.tables.service_count(),
            node_addresses = node_addresses.len(),
            "eBPF proxy maps synced"
        );
        Ok(())
    }

    /// Connections each service received through the socket hooks (TCP
    /// connects, connected UDP sockets, new unconnected UDP flows) and the
    /// bytes of those sockets (IP packets, both ways, counted by the
    /// `cgroup_skb` pair), since its entry was first made, surviving
    /// riklet restarts.
    pub fn counters(&self) -> Result<BTreeMap<ServiceKey, ServiceCounters>> {
        self.tables.counters()
    }

    /// Detaches the programs and removes every proxy pin (and the proxy pin
    /// directory, and `pin_dir` itself, when left empty). Tries every step
    /// and returns the first error.
    pub fn close(self) -> Result<()> {
        let result = pins::remove_all(&self.pin_dir);
        // Our descriptors were the links' last references: dropping them
        // detaches the programs now.
        drop(self);
        info!("eBPF socket load-balancer detached");
        result
    }
}

/// What [`SocketLb::close`] does, for a riklet started without the eBPF
/// proxy: removes a predecessor's pinned links (the kernel detaches their
/// programs once the pins are gone) and maps under `<pin_dir>/proxy`.
/// Nothing pinned is fine.
pub fn remove_pinned(pin_dir: &Path) -> Result<()> {
    if !pins::proxy_dir(pin_dir).exists() {
        return Ok(());
    }
    pins::remove_all(pin_dir)?;
    info!(pin_dir = %pin_dir.display(), "removed a predecessor's eBPF proxy pins");
    Ok(())
}

/// The cookie of this process's network namespace, the host's: sockets in
/// it see services on 127.0.0.0/8. (`SO_NETNS_COOKIE`, Linux ≥ 5.14; nix
/// has no wrapper for it.)
fn host_netns_cookie() -> Result<u64> {
    let probe = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(SocketLbError::NetnsCookie)?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `probe` is an open socket; the kernel writes at most `len`
    // bytes into `cookie`, which has that size, and the new size into `len`.
    let ret = unsafe {
        libc::getsockopt(
            probe.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    nix::errno::Errno::result(ret).map_err(SocketLbError::NetnsCookie)?;
    Ok(cookie)
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("pin_dir", &self.pin_dir)
            .field("programs", &self.links.programs())
            .field("services", &self.tables.service_count())
            .finish_non_exhaustive()
    }
}
