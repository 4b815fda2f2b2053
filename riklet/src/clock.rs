//! Wall-clock time as the riklet records it: Unix milliseconds, the unit of
//! every timestamp in the runtime memory, the shims' reports and the status
//! JSON; and the monotonic clock the start steps are timed with. Shared
//! with the shim (`riklet-shim`), which writes the same timestamps.

pub use riklet_shim::clock::{monotonic_us, now_ms};
