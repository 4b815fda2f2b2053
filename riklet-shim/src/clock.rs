//! Time as the riklet and its shims record it: Unix milliseconds, the unit
//! of every timestamp in the runtime memory, the shims' reports and the
//! status JSON; and the monotonic clock the start steps are timed with.

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Microseconds on `CLOCK_MONOTONIC`: one clock for every process of the
/// machine, so that the riklet can subtract a shim's timestamps from its
/// own (0 if the clock cannot be read).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}
