//! Pod logs in the CRI format, at the path every log shipper already tails.
//!
//! `<log-dir>/<namespace>_<app>_<instance>/<container>/0.log`, one line per
//! record: `<RFC3339Nano> stdout|stderr F|P <text>`. A line longer than
//! [`MAX_RECORD`] is cut into `P` (partial) records ending with one `F`.
//! The writer side runs in the per-container shim, so output keeps being
//! captured while the riklet itself is down; the reader side serves
//! `rik logs` (tail and follow).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Namespace part of the pod log directory name (kubelet layout).
pub const NAMESPACE: &str = "default";
/// Longest record written in one piece (kubelet/containerd use 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

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

/// Log file of one container.
pub fn container_file(log_dir: &Path, app: &str, instance: &str, container: &str) -> PathBuf {
    pod_dir(log_dir, app, instance)
        .join(container)
        .join("0.log")
}

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends CRI records to a container's log file; shared by the stdout and
/// stderr copiers so that records never interleave mid-line.
#[derive(Clone)]
pub struct CriWriter {
    file: Arc<Mutex<File>>,
}

impl CriWriter {
    /// Opens (creating directories and file) for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CriWriter {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Writes one record (`text` without its newline) as-is, in one write.
    fn record(&self, stream: Stream, full: bool, text: &[u8]) -> io::Result<()> {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let tag = if full { "F" } else { "P" };
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(format!("{ts} {} {tag} ", stream.as_str()).as_bytes());
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)
    }

    /// Copies `input` to the log until end of file, record by record. Every
    /// byte read is written: a last line without newline becomes a `F`
    /// record at EOF.
    pub fn copy_from(&self, stream: Stream, input: impl Read) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                if !pending.is_empty() {
                    self.record(stream, true, &pending)?;
                }
                return Ok(());
            }
            let consumed = buf.len();
            for &b in buf {
                if b == b'\n' {
                    self.record(stream, true, &pending)?;
                    pending.clear();
                } else {
                    pending.push(b);
                    if pending.len() == MAX_RECORD {
                        self.record(stream, false, &pending)?;
                        pending.clear();
                    }
                }
            }
            reader.consume(consumed);
        }
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
    use super::*;

    #[test]
    fn writes_cri_records_and_splits_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = container_file(dir.path(), "app", "app-x1", "c");
        let w = CriWriter::open(&path).unwrap();
        let long = vec![b'a'; MAX_RECORD + 10];
        let mut input = b"hello\nworld\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nno newline");
        w.copy_from(Stream::Stdout, &input[..]).unwrap();
        w.copy_from(Stream::Stderr, &b"oops\n"[..]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.splitn(4, ' ').collect()).collect();
        assert!(chrono::DateTime::parse_from_rfc3339(fields[0][0]).is_ok());
        assert_eq!(&fields[0][1..], ["stdout", "F", "hello"]);
        assert_eq!(fields[2][2], "P");
        assert_eq!(fields[2][3].len(), MAX_RECORD);
        assert_eq!(&fields[3][2..], ["F", "aaaaaaaaaa"]);
        assert_eq!(&fields[4][1..], ["stdout", "F", "no newline"]);
        assert_eq!(&fields[5][1..], ["stderr", "F", "oops"]);
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
