//! The writer side of the CRI log format, at the path every log shipper
//! already tails: one line per record, `<RFC3339Nano> stdout|stderr F|P
//! <text>`; a line longer than [`MAX_RECORD`] is cut into `P` (partial)
//! records ending with one `F`. It runs in the shim (bare processes) and in
//! `riklet logger` (image containers), so output keeps being captured
//! while the riklet itself is down.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Longest record written in one piece (kubelet/containerd use 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_cri_records_and_splits_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default_app_app-x1/c/0.log");
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
}
