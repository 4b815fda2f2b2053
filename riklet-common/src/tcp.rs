//! TCP retransmissions per local address, counted by the
//! `tcp/tcp_retransmit_skb` tracepoint program of `riklet-ebpf` and read by
//! `riklet::metrics::ebpf`.
//!
//! The tracepoint runs wherever the kernel retransmits (often a timer, in
//! softirq context), so the current task and its cgroup say nothing about
//! whose socket it is. The record does carry the socket's source address,
//! and every pod has an address of its own in its network namespace: user
//! space maps addresses to pods. Pods on the host network share the node's
//! address and cannot be told apart.

/// Name of the `BPF_MAP_TYPE_PERCPU_HASH` map from source address
/// ([`Address`]) to retransmissions (`u64`); also its pin file name.
pub const TCP_RETRANS_MAP: &str = "TCP_RETRANS";

/// Capacity of [`TCP_RETRANS_MAP`]: one entry per local address that
/// retransmitted since user space last removed the addresses that are not
/// pods (every collection cycle). A node has a few hundred pod addresses at
/// most; 4096 entries cost 8 bytes per CPU each.
pub const TCP_RETRANS_MAX_ENTRIES: u32 = 4096;

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` map (one `u64` slot) counting
/// retransmissions not counted because [`TCP_RETRANS_MAP`] was full.
pub const TCP_RETRANS_LOST_MAP: &str = "RETRANS_LOST";

/// Name of the `tracepoint/tcp/tcp_retransmit_skb` program.
pub const RETRANSMIT_PROGRAM: &str = "tcp_retransmit_skb";

/// Global (`u32`): byte offset of `saddr_v6` in the `tcp/tcp_retransmit_skb`
/// record, set by the loader from tracefs.
pub const RETRANSMIT_SADDR_V6_OFFSET: &str = "RETRANSMIT_SADDR_V6_OFFSET";

/// Global (`u32`): byte offset of `err` in the `tcp/tcp_retransmit_skb`
/// record, or 0 if the record has none. Recent kernels fire the tracepoint
/// for failed attempts too and say so in `err`; older ones fire it for sent
/// retransmissions only. Offset 0 is `common_type`, never a field of the
/// event's own.
pub const RETRANSMIT_ERR_OFFSET: &str = "RETRANSMIT_ERR_OFFSET";

/// A source address as the tracepoint gives it in `saddr_v6`: an IPv6
/// address, IPv4 ones mapped (`::ffff:a.b.c.d`).
pub type Address = [u8; 16];
