//! What a shim and the riklet both record about a process: who it is
//! ([`ProcId`]) and how it ended ([`ExitRecord`], the content of
//! `exit.json` and of the runtime memory's `last_exit`).

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;

/// Identity of a process: pid plus its start time in clock ticks since
/// boot (`/proc/<pid>/stat` field 22), which a recycled pid cannot share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    /// Reads the identity of a live process.
    pub fn of(pid: i32) -> Option<ProcId> {
        let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
        Some(ProcId {
            pid,
            start_time: stat.starttime,
        })
    }

    /// Whether this very process (not a reuse of its pid) is still alive
    /// and not a zombie.
    pub fn is_alive(&self) -> bool {
        match procfs::process::Process::new(self.pid).and_then(|p| p.stat()) {
            Ok(stat) => stat.starttime == self.start_time && stat.state != 'Z',
            Err(_) => false,
        }
    }
}

/// How a container process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix milliseconds.
    pub finished_at: i64,
    /// `Completed`, `Error`, `Killed`, `OOMKilled`, `StartError`, `Lost`
    /// (the shim vanished), or a failure before the process could run:
    /// `ErrImagePull`, `NetworkError`, `ContainerdUnavailable`.
    pub reason: String,
    /// Details for a user, e.g. why the process could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExitRecord {
    /// An end without a process status: the process never ran (a setup
    /// failure) or its status was lost with its shim or task.
    pub fn without_status(reason: &str, message: impl Into<String>) -> Self {
        ExitRecord {
            exit_code: None,
            signal: None,
            finished_at: now_ms(),
            reason: reason.into(),
            message: Some(message.into()),
        }
    }

    /// Whether the process ended with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// One line for users: the message, or the exit code or signal.
    pub fn describe(&self) -> String {
        match (&self.message, self.exit_code, self.signal) {
            (Some(m), _, _) => m.clone(),
            (None, Some(code), _) => format!("{}: exit code {code}", self.reason),
            (None, None, Some(sig)) => format!("{}: killed by signal {sig}", self.reason),
            (None, None, None) => self.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_checks_start_time() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }
}
