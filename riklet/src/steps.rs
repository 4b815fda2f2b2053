//! The steps of a container start, timed for the log.
//!
//! A start crosses the agent, the pod network, the cgroup filesystem, a new
//! shim process and `exec`; where its milliseconds go shows only if each
//! step says how long it took. Every step is one `debug` event with target
//! [`TARGET`], message `start step` and the fields `step` (its name) and
//! `us` (microseconds), inside the `start{pod,container}` span (or with a
//! `pod` field of its own when the agent records it). An operator turns them
//! on with `RUST_LOG=info,riklet::steps=debug`; `cargo xtask bench start`
//! does, and prints the median of each step. Turned off, an event costs a
//! cached interest check.

use std::future::Future;
use std::time::{Duration, Instant};

/// The tracing target of the step events.
pub const TARGET: &str = "riklet::steps";

/// Logs that `step` took `elapsed`.
pub fn record(step: &'static str, elapsed: Duration) {
    tracing::debug!(target: TARGET, step, us = elapsed.as_micros() as u64, "start step");
}

/// Logs that `step` of pod `pod` took `elapsed`, outside its `start` span
/// (the agent saving the record of a start).
pub fn record_for(pod: &str, step: &'static str, elapsed: Duration) {
    tracing::debug!(target: TARGET, pod, step, us = elapsed.as_micros() as u64, "start step");
}

/// Logs that `step` took `us` microseconds (a duration measured elsewhere,
/// e.g. by the shim on the monotonic clock).
pub fn record_us(step: &'static str, us: u64) {
    tracing::debug!(target: TARGET, step, us, "start step");
}

/// Runs `f`, logs how long it took as `step`.
pub async fn timed<F: Future>(step: &'static str, f: F) -> F::Output {
    let t = Instant::now();
    let out = f.await;
    record(step, t.elapsed());
    out
}

/// Runs the blocking `f`, logs how long it took as `step`.
pub fn timed_sync<T>(step: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    record(step, t.elapsed());
    out
}
