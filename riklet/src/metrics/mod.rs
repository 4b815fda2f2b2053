//! What the riklet measures about its pods.
//!
//! # Layout
//! - [`ebpf`]: [`Probes`], the one loaded `riklet-ebpf` object: per-cgroup
//!   network counters, on-CPU time and run-queue latency, OOM kill events.
//! - [`collector`]: the collection cycle: cgroup statistics + eBPF maps →
//!   per-pod usage for the scheduler and a snapshot for the exporter.
//! - [`targets`]: the containers to measure, asked of the agent when its
//!   pods changed.
//! - [`cgroup_stats`]: CPU, memory and pids figures of a pod cgroup (v1, v2).
//! - [`usage`]: the last usage of each pod, for its status.
//! - [`exporter`]: the Prometheus endpoint; [`sample`]: what a cycle measures.
//! - [`node`]: node resources, usage and network for heartbeats.
//! - [`net`]: per-cgroup network bytes and packets, counted in the kernel by
//!   the `cgroup_skb` programs of `riklet-ebpf`; [`net::cgroup_id`].

pub mod cgroup_stats;
pub mod collector;
pub mod ebpf;
pub mod exporter;
pub mod net;
pub mod node;
pub mod sample;
pub mod targets;
pub mod usage;

pub use ebpf::{ProbeError, Probes};
