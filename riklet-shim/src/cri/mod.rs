//! The writer side of the CRI log format, in kubelet's layout
//! ([`crate::layout`]), at the path every log shipper already tails: one
//! line per record, `<RFC3339Nano> stdout|stderr F|P <bytes>`; a line
//! longer than [`MAX_RECORD`] is cut into `P` (partial) records ending
//! with one `F`; bytes are written as they came (no UTF-8 check). It runs
//! in the shim (bare processes) and in `riklet logger` (image containers),
//! so output keeps being captured while the riklet itself is down.
//!
//! The writer rotates its file itself, at write time, before a write would
//! make it larger than the limit: a rename, never a copy and truncate, and
//! never on a timer, so that it keeps up with a container writing as fast
//! as it can. Older rotated files are compressed by a thread of their own
//! ([`housekeeping`]), so that the writer never waits for gzip.
//!
//! - [`file`]: the current file, rotation, the count limit, write failures;
//! - [`housekeeping`]: compression, and the removal of older runs' files;
//! - [`dropped`]: the count of bytes dropped when writes fail.

mod dropped;
mod file;
mod housekeeping;

use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use dropped::{DROPPED_FILE, read_dropped};

use crate::layout;

/// Longest record written in one piece (kubelet/containerd use 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

/// How much of a pipe is read at once: the records of one read are
/// written with one `write`.
const READ_CHUNK: usize = 64 * 1024;

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

/// Size and count limits of a container's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// Largest file in bytes: the current file is rotated before a write
    /// would make it larger.
    pub max_size: u64,
    /// Files kept per run, the current one and the rotated ones (kubelet's
    /// `containerLogMaxFiles`); the oldest rotated one goes beyond it.
    pub max_files: u32,
}

impl Default for Rotation {
    /// Kubelet's defaults: 10 MiB × 5.
    fn default() -> Self {
        Rotation {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// Where one run of a container logs, and how its files rotate: the shim
/// spec's `log`, `riklet logger`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    /// The container's log directory,
    /// `<log_dir>/<namespace>_<app>_<instance>/<container>`.
    pub dir: PathBuf,
    /// The run's restart count: its file is `<restart_count>.log`.
    pub restart_count: u32,
    pub rotation: Rotation,
}

impl LogSpec {
    /// The run's current file.
    pub fn current_file(&self) -> PathBuf {
        layout::current_file(&self.dir, self.restart_count)
    }

    /// The run's rotated files, oldest first; none if the directory cannot
    /// be listed.
    fn rotated_files(&self) -> Vec<layout::LogFile> {
        let files = layout::list(&self.dir).unwrap_or_default();
        files
            .into_iter()
            .filter(|f| f.restart_count == self.restart_count && f.rotated.is_some())
            .collect()
    }
}

/// Appends CRI records to a container run's log; shared by the stdout and
/// stderr copiers so that records never interleave mid-line.
#[derive(Clone)]
pub struct CriWriter {
    file: Arc<Mutex<file::RotatingFile>>,
}

impl CriWriter {
    /// Opens the run's current file for appending (creating directories
    /// and file), and starts the housekeeping thread, which removes the
    /// files of runs before the previous one.
    pub fn open(spec: &LogSpec) -> io::Result<Self> {
        Ok(CriWriter {
            file: Arc::new(Mutex::new(file::RotatingFile::open(spec)?)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, file::RotatingFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `input` to the log until end of file. Every byte read is
    /// written (or counted as dropped if the file cannot take it): a last
    /// line without newline becomes a `F` record at EOF. Only a read error
    /// ends it early.
    pub fn copy_from(&self, stream: Stream, input: impl Read) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(READ_CHUNK, input);
        let mut framer = Framer::default();
        let mut batch = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 8);
        loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let prefix = record_prefix(stream);
            batch.clear();
            if buf.is_empty() {
                framer.finish(&prefix, &mut batch);
                self.lock().append(&batch);
                return Ok(());
            }
            let consumed = buf.len();
            framer.push(&prefix, buf, &mut batch);
            reader.consume(consumed);
            if !batch.is_empty() {
                self.lock().append(&batch);
            }
        }
    }

    /// Waits, at most `timeout`, for the compression of rotated files to
    /// end, once nothing more is written: a writer that exits leaves no
    /// half-done work behind when it can help it.
    pub fn finish(&self, timeout: Duration) {
        let housekeeper = self.lock().take_housekeeper();
        if let Some(h) = housekeeper {
            h.finish(timeout);
        }
    }

    /// Bytes dropped so far because the file could not take them.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped()
    }
}

/// `<RFC3339Nano> <stream> `: the records of one read share the time it
/// returned.
fn record_prefix(stream: Stream) -> Vec<u8> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    format!("{ts} {} ", stream.as_str()).into_bytes()
}

/// Cuts one stream's bytes into records: lines, and pieces of
/// [`MAX_RECORD`] bytes of longer ones.
#[derive(Default)]
struct Framer {
    /// The start of a line whose end has not been read yet.
    pending: Vec<u8>,
}

impl Framer {
    /// Appends to `out` the records that `data` completes.
    fn push(&mut self, prefix: &[u8], mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let room = MAX_RECORD - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(i) = memchr::memchr(b'\n', window) {
                self.emit(prefix, true, &data[..i], out);
                data = &data[i + 1..];
            } else if data.len() >= room {
                self.emit(prefix, false, window, out);
                data = &data[room..];
            } else {
                self.pending.extend_from_slice(data);
                data = &[];
            }
        }
    }

    /// The last line, if it had no newline, as a full record.
    fn finish(&mut self, prefix: &[u8], out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(prefix, true, &[], out);
        }
    }

    /// One record: the pending bytes, then `tail`.
    fn emit(&mut self, prefix: &[u8], full: bool, tail: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(prefix);
        out.extend_from_slice(if full { b"F " } else { b"P " });
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(tail);
        out.push(b'\n');
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests;
