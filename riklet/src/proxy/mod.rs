//! The Node Proxy: traffic to an app's `ports` on the node reaches the
//! app's RUNNING pods on this node.
//!
//! # Layout
//! - [`model`]: services and backends, built from the agent's RUNNING pods.
//! - [`ebpf`]: the eBPF socket load-balancer (`cgroup/connect4` & co.) for
//!   local clients, with pinned maps and links that outlive the riklet.

pub mod ebpf;
pub mod model;
