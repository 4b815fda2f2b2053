//! Wall-clock time as the riklet records it: Unix milliseconds, the unit of
//! every timestamp in the runtime memory, the shims' reports and the status
//! JSON.

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
