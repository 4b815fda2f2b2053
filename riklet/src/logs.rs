//! Pod logs in the CRI format, at the path every log shipper already tails.
//!
//! `<log-dir>/<namespace>_<app>_<instance>/<container>/<restartCount>.log`
//! and its rotated files ([`layout`]), one line per record:
//! `<RFC3339Nano> stdout|stderr F|P <text>`. A line longer than
//! [`MAX_RECORD`] is cut into `P` (partial) records ending with one `F`.
//! The writer side ([`CriWriter`], in the `riklet-shim` crate) runs in the
//! per-container shim or `riklet logger`, so output keeps being captured
//! while the riklet itself is down, and rotates its files. The reader side
//! here serves `rik logs`: [`read_run`] reads a run's files, a
//! [`Follower`] goes on with what is written next. [`retention`] removes a
//! deleted app's logs once their time is up; [`metrics`] sums the bytes
//! the writers had to drop.

mod follow;
mod read;
#[cfg(test)]
mod reader_tests;

use std::io;
use std::path::{Path, PathBuf};

pub use follow::{Follower, Progress};
pub use read::{Run, Selection, pick_run, read_run};

pub use riklet_shim::cri::{CriWriter, LogSpec, MAX_RECORD, Rotation, Stream};
pub use riklet_shim::layout;

pub mod metrics;
pub mod retention;

/// Namespace part of the pod log directory name (kubelet layout).
pub const NAMESPACE: &str = "default";

/// A log operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no logs for container {container:?} of instance {instance}")]
    NotFound { instance: String, container: String },
    #[error("no log file in {}", dir.display())]
    NoLogs { dir: PathBuf },
    /// `--previous` of a container that has not restarted.
    #[error("no previous run in {} (the container has not restarted)", dir.display())]
    NoPrevious { dir: PathBuf },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, LogError>;

/// Directory of one pod's logs.
pub fn pod_dir(log_dir: &Path, app: &str, instance: &str) -> PathBuf {
    log_dir.join(format!("{NAMESPACE}_{app}_{instance}"))
}

/// Log directory of one container.
pub fn container_dir(log_dir: &Path, app: &str, instance: &str, container: &str) -> PathBuf {
    pod_dir(log_dir, app, instance).join(container)
}

/// The node's rotation limits, with those an app's `spec.logs` sets.
pub fn app_rotation(node: Rotation, app: Option<&proto::manifest::LogLimits>) -> Rotation {
    let Some(app) = app else {
        return node;
    };
    Rotation {
        max_size: app.max_size_bytes().unwrap_or(node.max_size),
        max_files: app.max_files.unwrap_or(node.max_files),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_s_limits_override_the_node_s() {
        let node = Rotation {
            max_size: 10 << 20,
            max_files: 5,
        };
        assert_eq!(app_rotation(node, None), node);
        let app = proto::manifest::LogLimits {
            max_size: Some("1Mi".into()),
            max_files: None,
        };
        assert_eq!(
            app_rotation(node, Some(&app)),
            Rotation {
                max_size: 1 << 20,
                max_files: 5
            }
        );
        let app = proto::manifest::LogLimits {
            max_size: None,
            max_files: Some(2),
        };
        assert_eq!(app_rotation(node, Some(&app)).max_files, 2);
    }
}
