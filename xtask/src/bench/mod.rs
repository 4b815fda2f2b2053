//! `cargo xtask bench …`: benchmarks run on this machine, each in one run
//! with its series side by side so that they share the machine's noise;
//! results in `target/bench/` and a summary in docs/benchmarks.md. Nothing
//! here asserts on time: the figures are reported, not judged.
//!
//! - `start`: pod start latency, a 100-replica burst and the riklet's
//!   footprint;
//! - `burst`: one burst of N replicas (`rik apply` → all RUNNING);
//! - `containers`: image containers against `ctr run`;
//! - `metrics`: the Node Monitor's cost up to 500 pods;
//! - `logs`: capturing, following and shipping pod logs;
//! - `proxy`: the Node Proxy against direct connections and userspace
//!   proxies;
//! - `cluster`, `process`, `stats`: the one-node cluster the benches run,
//!   what a process costs, and sample summaries; `breakdown`: the steps
//!   of a start, from the riklet's log.

pub(crate) mod breakdown;
pub(crate) mod burst;
pub(crate) mod cluster;
pub(crate) mod containers;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod start;
pub(crate) mod stats;
