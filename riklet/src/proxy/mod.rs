//! The Node Proxy: traffic to an app's `ports` on the node reaches the
//! app's RUNNING pods on this node.
//!
//! # Layout
//! - [`model`]: services and backends, built from the agent's RUNNING pods.
//! - [`nft`]: the nftables datapath (DNAT table, counters).
//! - [`flows`]: moving UDP flows and connected sockets off backends that
//!   left.

pub mod flows;
pub mod model;
pub mod nft;
