//! The Node Proxy: traffic to an app's `ports` on the node reaches the
//! app's RUNNING pods on this node.
//!
//! # Layout
//! - [`model`]: services and backends, built from the agent's RUNNING pods.

pub mod model;
