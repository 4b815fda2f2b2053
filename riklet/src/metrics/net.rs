//! Per-cgroup network counters.
//!
//! Two `cgroup_skb` programs (ingress and egress, from `riklet-ebpf`) are
//! attached to one cgroup v2 directory, the riklet's cgroup root, by
//! [`Probes::load`](super::ebpf::Probes::load). The kernel runs them for
//! every packet of every socket created in that cgroup or below it, and they
//! add the packet to a per-CPU hash map keyed by the socket's cgroup v2 id. A
//! pod's cgroup id is the inode number of its cgroup v2 directory
//! ([`cgroup_id`]); [`Probes::traffic`](super::ebpf::Probes::traffic) sums
//! the per-CPU values.
//!
//! The programs only count, they never drop a packet.

use std::{fs, io, os::unix::fs::MetadataExt as _, path::Path};

pub use riklet_common::net::CgroupTraffic;

/// The inode number of a cgroup v2 directory, which is the cgroup id the
/// kernel (`bpf_skb_cgroup_id`, `bpf_get_current_cgroup_id`) reports for it.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}
