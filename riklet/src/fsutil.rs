//! File writes that survive a crash at any instant: [`write_atomic`] for
//! the runtime memory, the IPAM leases and the shims' exit records, which
//! are read back by whichever riklet runs after a crash, power loss
//! included; [`write_volatile`] for files that describe live processes
//! only. Shared with the shim (`riklet-shim`), which writes such files too.

pub use riklet_shim::fsutil::{sync_dir, write_atomic, write_synced, write_volatile};
