//! Container runtimes: bare processes ([`process`], through the
//! per-container [`shim`]) and image containers under containerd
//! ([`containerd`], images pulled by [`image`], the connection kept by
//! [`link`], output written by [`logger`], the OCI spec built by
//! [`spec`]).

pub mod containerd;
pub mod image;
pub mod link;
pub mod logger;
pub mod process;
pub mod shim;
pub mod spec;
