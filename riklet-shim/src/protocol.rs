//! The contract between the riklet and a shim: the files of a container's
//! run directory, `<state_dir>/run/<instance>/<container>/`, and the one
//! line the shim prints to the riklet that started it.
//!
//! - `spec.json` ([`ShimSpec`]): written by the riklet, read by the shim;
//! - `started.json` ([`Started`]): written by the shim once the child runs;
//! - `exit.json` ([`ExitRecord`]): written by the shim when it has ended;
//! - `shim.log`: the shim's own diagnostics.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cri::LogSpec;
use crate::record::{ExitRecord, ProcId};

/// File name of the shim's executable, installed next to `riklet`.
pub const BINARY: &str = "riklet-shim";
/// Names of the files in a container's run directory.
pub const SPEC_FILE: &str = "spec.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_LOG: &str = "shim.log";
/// `PATH` of a process whose environment sets none (the OCI/Docker one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the shim needs to start the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub exec: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// The container's cgroup directory in the v2 hierarchy: the child is
    /// created in it.
    pub cgroup_v2: PathBuf,
    /// `tasks` files of the container's v1 cgroups (hybrid hosts), which
    /// the child joins before `exec`.
    pub v1_tasks_files: Vec<PathBuf>,
    /// Where the container's output goes, and how its files rotate.
    pub log: LogSpec,
    /// The pod's network namespace (`/run/netns/rik-<instance>`), joined
    /// before `exec`; `None` stays in the host's (hostNetwork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// What the shim reports once the child runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub shim: ProcId,
    pub process: ProcId,
    /// Unix milliseconds.
    pub started_at: i64,
    /// When the shim reached each step of the start (absent in the reports
    /// of older shims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<ShimSteps>,
}

/// Instants of a shim's start, in microseconds on `CLOCK_MONOTONIC`
/// ([`crate::clock::monotonic_us`]), which the riklet shares: it subtracts
/// them from its own to split a start into steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSteps {
    /// The shim's `main` runs (its executable is loaded).
    pub main: u64,
    /// The detached shim (after the second fork) runs.
    pub detached: u64,
    /// `spec.json` is read and the log file open.
    pub prepared: u64,
    /// The child has called `exec` (cgroups and netns joined).
    pub spawned: u64,
    /// `started.json` is written; the report goes out next.
    pub recorded: u64,
}

/// Line printed on the shim's stdout to the riklet that started it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ready {
    Started(Started),
    /// The child could not be started; `exit.json` holds the details.
    Failed(String),
}

/// Reads `started.json` of a run directory, if the shim wrote it.
pub fn read_started(run_dir: &Path) -> Option<Started> {
    serde_json::from_slice(&fs::read(run_dir.join(STARTED_FILE)).ok()?).ok()
}

/// Reads `exit.json` of a run directory, if the shim wrote it.
pub fn read_exit(run_dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&fs::read(run_dir.join(EXIT_FILE)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_records_of_older_shims_load() {
        let old = r#"{"shim":{"pid":10,"start_time":5},"process":{"pid":11,"start_time":6},"started_at":7}"#;
        let started: Started = serde_json::from_str(old).unwrap();
        assert_eq!(started.process.pid, 11);
        assert_eq!(started.steps, None);
    }
}
