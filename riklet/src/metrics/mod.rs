//! What the riklet measures about its pods.
//!
//! # Layout
//! - [`net`]: per-cgroup network bytes and packets, counted in the kernel by
//!   the `cgroup_skb` programs of `riklet-ebpf`.

pub mod net;
pub mod node;

pub use net::{NetCounters, NetError};
