//! The Node Proxy's socket load-balancer: the maps shared by the
//! `cgroup/{connect4,sendmsg4,recvmsg4,getpeername4}` programs (and the
//! `cgroup_skb` pair counting service bytes) of `riklet-ebpf`'s
//! `riklet-proxy` object and `riklet::proxy::ebpf`.
//!
//! # Byte order
//! Every address and port in these types is in **network byte order**,
//! exactly as the socket hooks see them in `bpf_sock_addr` (`user_ip4`,
//! the low 16 bits of `user_port`): the programs compare and copy them
//! without converting. User space converts with `to_be`/`from_be`; the
//! constructors below do it.
//!
//! # How a service's backends are stored
//! A service entry ([`ServiceValue`]) holds the number of backends and a
//! generation; the backends sit in [`BACKENDS_MAP`] under
//! `(service, generation, slot)` for `slot` in `0..count`. To change a set,
//! user space writes the slots of a new generation, then switches the
//! service entry to it in one map update, then deletes the old
//! generation's slots: a program reads either the old or the new set,
//! never a mix. A program that finds a slot missing (it read the service
//! entry just before a switch and the slots just after the clean-up) reads
//! the service entry again.

/// Name of the pinned `BPF_MAP_TYPE_HASH` ([`ServiceKey`] → [`ServiceValue`]);
/// also its pin file name. Kernel object names are cut at 15 bytes, so
/// every name here is at most 15.
pub const SERVICES_MAP: &str = "LB_SERVICES";

/// Name of the pinned `BPF_MAP_TYPE_HASH` ([`BackendKey`] → [`BackendValue`]).
pub const BACKENDS_MAP: &str = "LB_BACKENDS";

/// Name of the pinned `BPF_MAP_TYPE_HASH` from a node address (`u32`,
/// network order) to `u8` (1): the addresses on which services answer,
/// besides 127.0.0.0/8 in the host's network namespace.
pub const NODE_ADDRS_MAP: &str = "LB_NODE_ADDRS";

/// Name of the pinned `BPF_MAP_TYPE_LRU_HASH` ([`RevNatKey`] →
/// [`RevNatValue`]): which service address a socket meant when it talks to
/// a backend, for `getpeername` and `recvmsg`.
pub const REVNAT_MAP: &str = "LB_REVNAT";

/// Name of the pinned `BPF_MAP_TYPE_LRU_HASH` ([`AffinityKey`] →
/// [`AffinityValue`]): the backend an unconnected UDP socket's flow to a
/// service sticks to.
pub const AFFINITY_MAP: &str = "LB_UDP_AFFINITY";

/// Name of the pinned `BPF_MAP_TYPE_PERCPU_HASH` ([`ServiceKey`] →
/// [`ServiceStats`]). User space creates an entry (zeroed) per service; the
/// programs only add to existing entries, so the map never outgrows the
/// services.
pub const COUNTERS_MAP: &str = "LB_COUNTERS";

/// Name of the pinned `BPF_MAP_TYPE_LRU_HASH` from a socket cookie (`u64`)
/// to the [`ServiceKey`] the socket last reached through the hooks: the
/// `cgroup_skb` programs add the socket's packets to that service's bytes.
pub const SOCKETS_MAP: &str = "LB_SOCKETS";

/// Every pinned map of the proxy object, in the order user space checks and
/// removes them.
pub const PINNED_MAPS: [&str; 7] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    NODE_ADDRS_MAP,
    REVNAT_MAP,
    AFFINITY_MAP,
    COUNTERS_MAP,
    SOCKETS_MAP,
];

/// Global (`u64`): the cookie of the host's network namespace
/// (`SO_NETNS_COOKIE` of a socket of the riklet), set by the loader. Only
/// sockets in that namespace have services on 127.0.0.0/8: a pod's
/// loopback is its own.
pub const HOST_NETNS_COOKIE: &str = "HOST_NETNS_COOKIE";

/// Name of the `cgroup/connect4` program (TCP, connected UDP).
pub const CONNECT4_PROGRAM: &str = "lb_connect4";
/// Name of the `cgroup/sendmsg4` program (unconnected UDP).
pub const SENDMSG4_PROGRAM: &str = "lb_sendmsg4";
/// Name of the `cgroup/recvmsg4` program (UDP replies).
pub const RECVMSG4_PROGRAM: &str = "lb_recvmsg4";
/// Name of the `cgroup/getpeername4` program.
pub const GETPEERNAME4_PROGRAM: &str = "lb_getpeername4";
/// Name of the `cgroup_skb/ingress` program counting service bytes.
pub const BYTES_IN_PROGRAM: &str = "lb_bytes_in";
/// Name of the `cgroup_skb/egress` program counting service bytes.
pub const BYTES_OUT_PROGRAM: &str = "lb_bytes_out";

/// Capacity of [`SERVICES_MAP`] and [`COUNTERS_MAP`]: every TCP and UDP
/// port of the node could be a service.
pub const SERVICES_MAX_ENTRIES: u32 = 2 * 65536;

/// Most backends one service may have. Bounds the scan that checks whether
/// a UDP flow's backend is still in its service's set (the verifier needs
/// a bound); a node runs far fewer pods than this.
pub const MAX_BACKENDS: u32 = 256;

/// Capacity of [`BACKENDS_MAP`]: the slots of every service, twice over
/// for the moment a set is replaced. Entries are allocated on use
/// (`BPF_F_NO_PREALLOC`), so room costs nothing until it is used.
pub const BACKENDS_MAX_ENTRIES: u32 = 262_144;

/// Capacity of [`NODE_ADDRS_MAP`].
pub const NODE_ADDRS_MAX_ENTRIES: u32 = 1024;

/// Capacity of [`REVNAT_MAP`], [`AFFINITY_MAP`] and [`SOCKETS_MAP`]: one
/// entry per socket (and backend) that used a service recently; least
/// recently used entries make room.
pub const SOCKETS_MAX_ENTRIES: u32 = 65536;

/// `IPPROTO_TCP`, as in [`ServiceKey::protocol`].
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`, as in [`ServiceKey::protocol`].
pub const PROTO_UDP: u8 = 17;

/// A service: a port (network order) and an IP protocol number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// Zero: keys are compared byte for byte.
    pub pad: u8,
}

impl ServiceKey {
    /// The key of `port` (host order) and `protocol`.
    #[must_use]
    pub const fn new(port: u16, protocol: u8) -> Self {
        Self {
            port: port.to_be(),
            protocol,
            pad: 0,
        }
    }

    /// The port in host order.
    #[must_use]
    pub const fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// A service's current backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Backends, in slots `0..count` of `generation`; at most
    /// [`MAX_BACKENDS`], never 0.
    pub count: u32,
    /// The generation whose slots are the set.
    pub generation: u32,
}

/// One backend slot of one generation of a service's set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub service: ServiceKey,
    pub generation: u32,
    pub slot: u32,
}

/// Where a backend is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendValue {
    /// IPv4 address, network order; 0 keeps the address the client used
    /// and changes only the port (a `hostNetwork` pod on another port).
    pub ip: u32,
    /// Network byte order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

impl BackendValue {
    /// `ip:port` (host order values).
    #[must_use]
    pub const fn new(ip: u32, port: u16) -> Self {
        Self {
            ip: ip.to_be(),
            port: port.to_be(),
            pad: 0,
        }
    }
}

/// A socket's view of a backend: its cookie and the backend address it was
/// connected or sent to (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// The service address the socket used (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    pub ip: u32,
    pub port: u16,
    pub pad: u16,
}

/// An unconnected UDP socket's flow to a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    pub service: ServiceKey,
    pub pad: u32,
}

/// The backend a UDP flow sticks to, and the service generation in which
/// it was last seen in the set: while the generation is unchanged the
/// backend is known to be in the set without looking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend: BackendValue,
    pub generation: u32,
    pub pad: u32,
}

/// Per-service counters (one copy per CPU in [`COUNTERS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// TCP connects, connected UDP sockets and new unconnected UDP flows
    /// sent to a backend.
    pub connections: u64,
    /// Bytes (`skb->len`: IP packets with their headers) sent and received
    /// by sockets that reached the service through the hooks. An
    /// unconnected UDP socket talking to several services counts for the
    /// one it sent to last.
    pub bytes: u64,
}

impl ServiceStats {
    /// Field-wise wrapping sum, to fold the per-CPU values.
    #[must_use]
    pub const fn wrapping_add(self, other: Self) -> Self {
        Self {
            connections: self.connections.wrapping_add(other.connections),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

// Sizes without implicit padding, identical on every target.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 4);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);
const _: () = assert!(core::mem::size_of::<BackendKey>() == 12);
const _: () = assert!(core::mem::size_of::<BackendValue>() == 8);
const _: () = assert!(core::mem::size_of::<RevNatKey>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 16);

// SAFETY (all below): each type is `#[repr(C)]`, `Copy`, made only of
// fixed-width integers (or such structs) and has no padding (sizes asserted
// above), so every bit pattern is a valid value and it can be copied to and
// from map memory byte for byte.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BackendKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for BackendValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceStats {}
