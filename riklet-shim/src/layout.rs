//! Names of a container's log files, kubelet's layout, so that Fluent Bit,
//! promtail or Vector configs written for Kubernetes read them unchanged:
//!
//! ```text
//! <container_dir>/<restartCount>.log                  the current file of a run
//! <container_dir>/<restartCount>.log.<STAMP>          rotated, the newest one
//! <container_dir>/<restartCount>.log.<STAMP>.gz       rotated, older ones, gzip
//! ```
//!
//! `<STAMP>` is the UTC time of the rotation, `YYYYMMDD-HHMMSS.ffffff`:
//! microseconds, so that sorting the names sorts the rotations even when
//! several happen in one second. The writers ([`crate::cri`]) name files
//! with [`current_file`] and [`rotated_name`]; every reader (`rik logs`, the
//! shipper, retention) finds them with [`list`].

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Suffix of a compressed rotated file.
const GZ: &str = ".gz";
/// Form of a rotation's stamp (`-` and `.` literal, the rest digits).
const STAMP_SHAPE: &str = "YYYYMMDD-HHMMSS.ffffff";

/// `<dir>/<restart_count>.log`
pub fn current_file(container_dir: &Path, restart_count: u32) -> PathBuf {
    container_dir.join(format!("{restart_count}.log"))
}

/// `<restart_count>.log.<YYYYMMDD-HHMMSS.ffffff>` for a rotation at `at` (UTC).
pub fn rotated_name(restart_count: u32, at: SystemTime) -> String {
    let at: chrono::DateTime<chrono::Utc> = at.into();
    format!("{restart_count}.log.{}", at.format("%Y%m%d-%H%M%S%.6f"))
}

/// One file of a container's log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub restart_count: u32,
    /// The rotation's STAMP; `None` for a run's current file.
    pub rotated: Option<String>,
    pub compressed: bool,
}

/// Every log file of a container directory, oldest first: by restart count,
/// then the rotated files by stamp, then the current file. Unknown names
/// are ignored. A missing directory is an empty list.
///
/// A rotated file is compressed by writing `<name>.gz` and then removing
/// `<name>`; while both exist, only the compressed one (complete once it
/// has its name) is listed, so that no reader sees a rotation twice.
pub fn list(container_dir: &Path) -> io::Result<Vec<LogFile>> {
    let entries = match std::fs::read_dir(container_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some((restart_count, rotated, compressed)) = parse_name(&name) {
            files.push(LogFile {
                path: entry.path(),
                restart_count,
                rotated,
                compressed,
            });
        }
    }
    // A plain rotated file whose compressed copy is complete is on its way
    // out: list the copy only.
    let compressed: HashSet<(u32, String)> = files
        .iter()
        .filter(|f| f.compressed)
        .filter_map(|f| Some((f.restart_count, f.rotated.clone()?)))
        .collect();
    files.retain(|f| {
        f.compressed
            || f.rotated
                .as_ref()
                .is_none_or(|s| !compressed.contains(&(f.restart_count, s.clone())))
    });
    files.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    Ok(files)
}

/// Oldest first: restart count, rotated before current, stamp.
fn order_key(f: &LogFile) -> (u32, bool, Option<&str>) {
    (f.restart_count, f.rotated.is_none(), f.rotated.as_deref())
}

/// `(restart_count, stamp, compressed)` of a log file name, `None` for any
/// other name (temporary files, a collector's own files).
fn parse_name(name: &str) -> Option<(u32, Option<String>, bool)> {
    let (count, rest) = name.split_once(".log")?;
    let restart_count = parse_count(count)?;
    if rest.is_empty() {
        return Some((restart_count, None, false));
    }
    let rest = rest.strip_prefix('.')?;
    let (stamp, compressed) = match rest.strip_suffix(GZ) {
        Some(s) => (s, true),
        None => (rest, false),
    };
    is_stamp(stamp).then(|| (restart_count, Some(stamp.to_owned()), compressed))
}

/// A restart count as [`current_file`] writes it: decimal, no sign, no
/// leading zero.
fn parse_count(s: &str) -> Option<u32> {
    let n: u32 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// `YYYYMMDD-HHMMSS.ffffff`, a valid date and time.
fn is_stamp(s: &str) -> bool {
    let shape = s.len() == STAMP_SHAPE.len()
        && s.bytes().zip(STAMP_SHAPE.bytes()).all(|(c, f)| match f {
            b'-' | b'.' => c == f,
            _ => c.is_ascii_digit(),
        });
    shape && chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M%S%.f").is_ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn names() {
        let dir = Path::new("/var/log/pods/default_web_web-1/c");
        assert_eq!(current_file(dir, 0), dir.join("0.log"));
        assert_eq!(current_file(dir, 12), dir.join("12.log"));
        // 2026-12-02T19:20:03.000042Z
        let at = UNIX_EPOCH + Duration::from_micros(1_796_239_203_000_042);
        assert_eq!(rotated_name(3, at), "3.log.20261202-192003.000042");
        assert_eq!(
            parse_name(&rotated_name(3, at)),
            Some((3, Some("20261202-192003.000042".into()), false))
        );
    }

    #[test]
    fn parses_only_the_layout_names() {
        assert_eq!(parse_name("0.log"), Some((0, None, false)));
        assert_eq!(
            parse_name("7.log.20260101-000000.123456.gz"),
            Some((7, Some("20260101-000000.123456".into()), true))
        );
        for other in [
            "log",
            ".log",
            "01.log",
            "+1.log",
            "-1.log",
            "0.logx",
            "0.log.",
            "0.log.gz",
            "0.log.20260101-000000.gz",
            "0.log.20260101-000000.123456.gz.tmp",
            "0.log.20261301-000000.123456",
            "0.log.20260101-000000.1234567",
            "x.log",
            "0.log.tmp",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn lists_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [
            "1.log",
            "1.log.20260101-000002.000000",
            "1.log.20260101-000001.000000.gz",
            "10.log",
            "0.log",
            "0.log.20260101-000000.500000.gz",
            "0.log.20260101-000000.000001.gz",
            "notes.txt",
            "1.log.20260101-000003.000000.gz.tmp",
        ] {
            fs::write(d.join(name), name).unwrap();
        }
        let names: Vec<String> = list(d)
            .unwrap()
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20260101-000000.000001.gz",
                "0.log.20260101-000000.500000.gz",
                "0.log",
                "1.log.20260101-000001.000000.gz",
                "1.log.20260101-000002.000000",
                "1.log",
                "10.log",
            ]
        );
        let first = &list(d).unwrap()[0];
        assert_eq!(first.restart_count, 0);
        assert!(first.compressed);
        assert_eq!(first.rotated.as_deref(), Some("20260101-000000.000001"));
    }

    #[test]
    fn a_file_being_compressed_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [
            "0.log.20260101-000000.000001",
            "0.log.20260101-000000.000001.gz",
            "0.log.20260101-000000.000002",
            "0.log",
        ] {
            fs::write(d.join(name), name).unwrap();
        }
        let files = list(d).unwrap();
        let names: Vec<&str> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20260101-000000.000001.gz",
                "0.log.20260101-000000.000002",
                "0.log"
            ]
        );
    }

    #[test]
    fn a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("gone")).unwrap().is_empty());
    }
}
