//! Container runtimes. Bare processes ([`process`], through the per-container
//! [`shim`]) for now; containerd comes next and plugs in beside them.

pub mod containerd;
pub mod image;
pub mod logger;
pub mod oci_spec;
pub mod process;
pub mod shim;
