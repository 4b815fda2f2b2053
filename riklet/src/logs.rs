//! Pod logs in the CRI format, at the path every log shipper already tails.
//!
//! `<log-dir>/<namespace>_<app>_<instance>/<container>/<restartCount>.log`
//! and its rotated files ([`layout`]), one line per record:
//! `<RFC3339Nano> stdout|stderr F|P <text>`. A line longer than
//! [`MAX_RECORD`] is cut into `P` (partial) records ending with one `F`.
//! The writer side ([`CriWriter`], in the `riklet-shim` crate) runs in the
//! per-container shim or `riklet logger`, so output keeps being captured
//! while the riklet itself is down, and rotates its files; the reader side
//! here serves `rik logs` (tail and follow); [`retention`] removes a
//! deleted app's logs once their time is up; [`metrics`] sums the bytes
//! the writers had to drop.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// Reads the last `tail` lines (all when 0) of a log file, and the offset
/// just past them from which a follower goes on.
pub fn read_tail(path: &Path, tail: usize) -> Result<(Vec<u8>, u64)> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(io)?;
    let end = data.len() as u64;
    if tail == 0 {
        return Ok((data, end));
    }
    // Walk back over `tail` newlines (the last byte is normally a newline).
    let mut seen = 0;
    let mut start = 0;
    for i in (0..data.len().saturating_sub(1)).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == tail {
                start = i + 1;
                break;
            }
        }
    }
    Ok((data.split_off(start), end))
}

/// Reads whatever was appended after `offset`, up to the last complete line.
pub fn read_from(path: &Path, offset: u64) -> Result<(Vec<u8>, u64)> {
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    // A truncated file (rotation) restarts from its beginning.
    let offset = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(io)?;
    match data.iter().rposition(|&b| b == b'\n') {
        Some(i) => {
            data.truncate(i + 1);
            let next = offset + data.len() as u64;
            Ok((data, next))
        }
        None => Ok((Vec::new(), offset)),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

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

    #[test]
    fn tail_and_follow_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        fs::write(&path, "1\n2\n3\n").unwrap();
        assert_eq!(read_tail(&path, 2).unwrap().0, b"2\n3\n");
        assert_eq!(read_tail(&path, 10).unwrap().0, b"1\n2\n3\n");
        let (all, off) = read_tail(&path, 0).unwrap();
        assert_eq!(all.len() as u64, off);
        fs::write(&path, "1\n2\n3\n4\npart").unwrap();
        let (more, off2) = read_from(&path, off).unwrap();
        assert_eq!(more, b"4\n");
        assert_eq!(off2, off + 2);
    }
}
