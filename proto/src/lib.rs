//! The wire contract of riklet.
//!
//! # Layout
//! - [`common`], [`worker`]: the RIK project's packages, wire-compatible, so a
//!   riklet works against RIK's own scheduler and the other way round.
//! - [`rik`]: riklet's own `rik.v1` services (CLI ⇄ scheduler, scheduler ⇄
//!   node logs).
//! - [`manifest`]: the app manifest (RIK workload v1 and seed 004's compact
//!   deployment file), parsed and validated the same way by `rik`, the
//!   scheduler and the riklet: never trust the wire.
//! - [`limits`]: message sizes, time-outs and per-connection limits of
//!   every gRPC server and client.
//! - [`status`]: the status contract: the JSON objects the riklet reports in
//!   `metrics` strings (instance status, pod usage, node heartbeat), typed for
//!   the riklet, the scheduler and `rik`; `ResourceStatus` names.

pub mod limits;
pub mod manifest;
pub mod status;

/// RIK's `common` package.
pub mod common {
    tonic::include_proto!("common");
}

/// RIK's `worker` package.
pub mod worker {
    tonic::include_proto!("worker");
}

/// riklet's `rik.v1` package.
pub mod rik {
    pub mod v1 {
        tonic::include_proto!("rik.v1");
    }
}

/// An error and its sources on one line (`a: b: c`), for logs and test
/// messages. Every error of the workspace keeps its cause in `source()`
/// rather than in its message, so this prints each part once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
