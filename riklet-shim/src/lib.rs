//! The shim of riklet's bare-process containers, and its contract with
//! the riklet.
//!
//! A pod must outlive the riklet (crash, upgrade, restart), its output must
//! keep being captured while no riklet runs, and its exit status must not
//! be lost. Only a process's parent can `wait` for it, so each bare-process
//! container gets a small parent of its own: the shim, `riklet-shim
//! --run-dir DIR`, a binary of its own installed next to `riklet`. It is
//! started at every container start, so it links only this crate and its
//! few dependencies (no async runtime, no gRPC, no eBPF objects): it loads
//! in a fraction of the time the riklet's binary would.
//!
//! # Layout
//! - [`protocol`]: the run directory's files and the report line;
//! - [`supervise`]: the shim's life (detach, start, report, copy, record);
//! - [`child`]: starting the process in its cgroups and network namespace;
//! - [`record`]: process identities and exit records, shared with the
//!   riklet's runtime memory;
//! - [`cri`]: the CRI log writer, which rotates its files (also used by
//!   `riklet logger`);
//! - [`layout`]: the names of a container's log files (kubelet's layout);
//! - [`fsutil`]: crash-safe file writes; [`clock`]: the clocks;
//! - [`fds`]: inherited descriptors kept from children.

pub mod child;
pub mod clock;
pub mod cri;
pub mod fds;
pub mod fsutil;
pub mod layout;
pub mod protocol;
pub mod record;
pub mod supervise;

pub use supervise::main;
