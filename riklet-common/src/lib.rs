//! Types shared by riklet's eBPF programs (`riklet-ebpf`) and user space
//! (`riklet`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, built from fixed-width integers
//! and free of implicit padding: both sides read the same bytes out of a BPF
//! map, so the layout must not depend on the compiler or the target.
//!
//! # Layout
//! - [`net`]: per-cgroup network counters (the `cgroup_skb` programs).
//! - [`sched`]: per-cgroup on-CPU time and run-queue latency (the
//!   `sched/*` tracepoint programs).
//! - [`oom`]: OOM kill events (the `oom/mark_victim` tracepoint program).
//! - [`tcp`]: TCP retransmissions per source address (the
//!   `tcp/tcp_retransmit_skb` tracepoint program).
//! - [`proxy`]: the Node Proxy's socket load-balancer maps (the
//!   `cgroup/*4` socket address programs of the separate `riklet-proxy`
//!   object).
//!
//! # Features
//! - `user`: implements `aya::Pod` for the map value types, which user-space
//!   `aya` requires to read maps. The eBPF side has no `aya`, so it is off by
//!   default.

#![no_std]

pub mod net;
pub mod oom;
pub mod proxy;
pub mod sched;
pub mod tcp;
