//! Crash points: named places where a test build of the riklet kills
//! itself with SIGKILL, to prove that recovery copes with a crash at that
//! exact moment (a record saved but not reported, a veth made but no
//! address, a blob downloaded but not unpacked, …).
//!
//! Built only with the `crash-points` cargo feature (never in release
//! builds). Then `RIKLET_CRASH_AT=<name>` kills the riklet the first time
//! it reaches `<name>`, `RIKLET_CRASH_AT=<name>:N` the Nth time. An unknown
//! name is refused at start with the list, so a typo cannot make a test
//! pass by never crashing. Without the feature [`point`] is an empty
//! inline function, and a set `RIKLET_CRASH_AT` is refused at start.
//!
//! `kill(getpid(), SIGKILL)`, not `abort` or `exit`: nothing runs after it
//! (no destructor, no flush, no panic hook), as when the kernel's OOM
//! killer or `kill -9` ends the riklet.

/// The environment variable that arms a crash point.
pub const ENV: &str = "RIKLET_CRASH_AT";

/// Every crash point, `<operation>.<moment>`. The end-to-end test
/// `tests/tests/crash_points.rs` crashes the riklet at each one.
pub const POINTS: &[&str] = &[
    // Create and start (agent, cgroups, shim, containerd).
    "create.after_state_commit",
    "create.after_cgroup",
    "create.after_run_dir",
    "create.after_shim_spawn",
    "create.after_container_create",
    "create.after_task_create",
    "start.after_started",
    "start.after_run_commit",
    // A container's exit and its restart.
    "restart.after_exit",
    "restart.before_start",
    // Delete.
    "delete.after_state_commit",
    "delete.after_kill",
    "delete.after_network_detach",
    "delete.after_cgroup_removed",
    "delete.before_state_remove",
    "delete.after_state_remove",
    // Image pull.
    "pull.after_lease",
    "pull.after_download",
    "pull.before_unpack",
    "pull.before_image_record",
    // Pod network.
    "network.attach.after_ipam_lease",
    "network.attach.after_netns",
    "network.attach.after_veth",
    "network.detach.after_veth",
    "network.detach.before_ipam_release",
    // The store writer (state commit).
    "state.after_temp_write",
    "state.after_rename",
    // Node Proxy sync.
    "proxy.ebpf.after_backends_write",
    "proxy.ebpf.after_switch",
    "proxy.nft.before_transaction",
    "proxy.nft.after_transaction",
    // Log retention.
    "logs.retention.after_marker",
    "logs.retention.after_dir_removed",
];

/// A `RIKLET_CRASH_AT` the riklet refuses.
#[derive(Debug, thiserror::Error)]
pub enum CrashPointError {
    #[error("{ENV}={value:?}: unknown crash point {name:?}; the crash points are: {}", POINTS.join(", "))]
    Unknown { value: String, name: String },
    #[error("{ENV}={value:?}: the count after ':' must be a whole number from 1")]
    BadCount { value: String },
    #[error(
        "{ENV} is set but this riklet was built without the crash-points feature (cargo build -p riklet --features crash-points)"
    )]
    NotBuilt,
}

/// `<name>` or `<name>:N`: the point and which hit of it kills (from 1).
pub fn parse(value: &str) -> Result<(&'static str, u32), CrashPointError> {
    let (name, count) = match value.split_once(':') {
        None => (value, 1),
        Some((name, n)) => match n.parse::<u32>() {
            Ok(n) if n >= 1 => (name, n),
            _ => {
                return Err(CrashPointError::BadCount {
                    value: value.to_string(),
                });
            }
        },
    };
    let known = POINTS
        .iter()
        .find(|p| **p == name)
        .ok_or_else(|| CrashPointError::Unknown {
            value: value.to_string(),
            name: name.to_string(),
        })?;
    Ok((known, count))
}

/// Arms the point `RIKLET_CRASH_AT` names, if it is set; refuses an unknown
/// one (or any, without the feature). Called once, before the daemon
/// starts.
pub fn arm_from_env() -> Result<(), CrashPointError> {
    let Some(value) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let value = value.to_string_lossy();
    #[cfg(feature = "crash-points")]
    {
        let (name, count) = parse(&value)?;
        tracing::warn!(point = name, count, "crash point armed");
        armed::arm(name, count);
        Ok(())
    }
    #[cfg(not(feature = "crash-points"))]
    {
        let _ = value;
        Err(CrashPointError::NotBuilt)
    }
}

/// The riklet reached crash point `name`: dies here if it is the armed
/// point's Nth hit. Compiles to nothing without the feature.
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(feature = "crash-points")]
    armed::hit(name);
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}

#[cfg(all(feature = "crash-points", not(debug_assertions)))]
compile_error!("the crash-points feature is for test builds only, not release builds");

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    static ARMED: OnceLock<(&'static str, u32)> = OnceLock::new();
    static HITS: AtomicU32 = AtomicU32::new(0);

    pub(super) fn arm(name: &'static str, count: u32) {
        let _ = ARMED.set((name, count));
    }

    pub(super) fn hit(name: &'static str) {
        // A point missing from the list could never be tested.
        assert!(
            super::POINTS.contains(&name),
            "crash point {name:?} is not in crash::POINTS"
        );
        let Some((armed, count)) = ARMED.get() else {
            return;
        };
        if *armed != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *count {
            return;
        }
        tracing::error!(point = name, hit = count, "crash point reached: SIGKILL");
        // SAFETY: kill(2) on our own pid; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // The signal is delivered before kill returns; never go on.
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_counts_parse() {
        assert_eq!(
            parse("delete.after_kill").unwrap(),
            ("delete.after_kill", 1)
        );
        assert_eq!(
            parse("state.after_temp_write:3").unwrap(),
            ("state.after_temp_write", 3)
        );
    }

    #[test]
    fn a_typo_is_refused_with_the_list() {
        let e = parse("delete.after_kil").unwrap_err().to_string();
        assert!(
            e.contains("unknown crash point \"delete.after_kil\""),
            "{e}"
        );
        assert!(e.contains("delete.after_kill, "), "{e}");
        assert!(matches!(
            parse("delete.after_kill:0"),
            Err(CrashPointError::BadCount { .. })
        ));
        assert!(matches!(
            parse("delete.after_kill:x"),
            Err(CrashPointError::BadCount { .. })
        ));
    }

    #[test]
    fn names_are_unique() {
        let mut names = POINTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
    }
}
