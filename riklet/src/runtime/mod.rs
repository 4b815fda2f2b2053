//! Container runtimes: bare processes ([`process`], through the
//! per-container shim, `riklet-shim`, whose contract is [`shim`]) and image
//! containers under containerd
//! ([`containerd`], images pulled by [`image`], the connection kept by
//! [`link`], output written by [`logger`], the OCI spec built by
//! [`spec`]).

pub mod containerd;
pub mod image;
pub mod link;
pub mod logger;
pub mod process;
pub mod spec;

/// The run directory's files and the report line a shim and the riklet
/// share; the shim itself is the `riklet-shim` crate and binary.
pub use riklet_shim::protocol as shim;
