//! Per-cgroup network counters, filled by the `cgroup_skb` ingress and egress
//! programs of `riklet-ebpf` and read by `riklet::metrics::net`.

/// Name of the `BPF_MAP_TYPE_PERCPU_HASH` map (the static's symbol in the
/// object) from cgroup v2 id (`u64`) to [`CgroupTraffic`].
///
/// Also the file name under which user space pins the map. Kernel object
/// names are cut at 15 bytes, so this one is kept shorter to look the same in
/// `bpftool map show`.
pub const CGROUP_TRAFFIC_MAP: &str = "CGROUP_TRAFFIC";

/// Capacity of [`CGROUP_TRAFFIC_MAP`]: one entry per cgroup that sent or
/// received a packet. A node runs at most a few hundred pods; the margin
/// covers system cgroups below the attach point and ids whose entry was not
/// yet forgotten. 16384 entries cost about 32 bytes per CPU each.
pub const CGROUP_TRAFFIC_MAX_ENTRIES: u32 = 16384;

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` map (one `u64` slot) counting
/// packets that could not be accounted because [`CGROUP_TRAFFIC_MAP`] was
/// full.
pub const TRAFFIC_LOST_MAP: &str = "TRAFFIC_LOST";

/// Name of the `cgroup_skb/ingress` program (its function name in the object).
pub const INGRESS_PROGRAM: &str = "count_ingress";

/// Name of the `cgroup_skb/egress` program (its function name in the object).
pub const EGRESS_PROGRAM: &str = "count_egress";

/// Bytes and packets one cgroup's sockets received and sent, as seen at the
/// cgroup's `cgroup_skb` hooks.
///
/// Bytes are `skb->len` there: the IP packet with its headers, without the
/// link-layer header. In the map each CPU holds its own copy; user space sums
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupTraffic {
    /// Bytes received (ingress).
    pub rx_bytes: u64,
    /// Packets received (ingress).
    pub rx_packets: u64,
    /// Bytes sent (egress).
    pub tx_bytes: u64,
    /// Packets sent (egress).
    pub tx_packets: u64,
}

impl CgroupTraffic {
    /// Field-wise wrapping sum, used to fold the per-CPU values.
    ///
    /// Wrapping because a `u64` of bytes does not overflow in practice and
    /// the eBPF side, which cannot panic, wraps too.
    #[must_use]
    pub const fn wrapping_add(self, other: Self) -> Self {
        Self {
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
        }
    }
}

// Four u64 and nothing else: no padding, identical on every target.
const _: () = assert!(core::mem::size_of::<CgroupTraffic>() == 32);
const _: () = assert!(core::mem::align_of::<CgroupTraffic>() == 8);

// SAFETY: `CgroupTraffic` is `#[repr(C)]`, `Copy`, made only of `u64` fields
// and has no padding (asserted above), so every bit pattern is a valid value
// and it can be copied to and from map memory byte for byte.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupTraffic {}
