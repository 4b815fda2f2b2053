//! `CLOCK_MONOTONIC`, the clock of the programs' `bpf_ktime_get_ns`
//! timestamps, and its conversion to wall-clock time.

use std::time::{Duration, SystemTime};

/// The wall-clock time of a `bpf_ktime_get_ns` timestamp (`CLOCK_MONOTONIC`,
/// as in [`OomEvent::timestamp_ns`](super::OomEvent::timestamp_ns)),
/// computed from the current offset between the two clocks (exact unless
/// the wall clock was stepped since).
pub fn monotonic_to_system_time(timestamp_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Some(monotonic_now) = monotonic_now() else {
        return now;
    };
    let event = Duration::from_nanos(timestamp_ns);
    match monotonic_now.checked_sub(event) {
        Some(ago) => now.checked_sub(ago).unwrap_or(now),
        None => now + (event - monotonic_now),
    }
}

/// `CLOCK_MONOTONIC` now: the clock of `bpf_ktime_get_ns` timestamps.
pub fn monotonic_now() -> Option<Duration> {
    let mut monotonic = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` to a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut monotonic) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(monotonic.tv_sec).ok()?,
        u32::try_from(monotonic.tv_nsec).ok()?,
    ))
}
