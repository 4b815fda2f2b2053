//! The reading side of a container's logs, for `rik logs`: the files of
//! one run in order (rotated ones oldest first, `.gz` ones decompressed,
//! then the current file), the last N lines across them, the lines since a
//! time.
//!
//! A *line* is what `rik logs` shows: the `P` records of a long line and
//! the `F` record that ends it. `--tail` counts lines, and `--since` keeps
//! or drops a line as a whole, by the time of its first record, so that a
//! long line is never shown in part.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;

use super::layout::{self, LogFile};
use super::{LogError, Result};

/// Which lines of a container's logs a request asks for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only the last N lines (across the run's files); `None` = all.
    pub tail: Option<usize>,
    /// Only the lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// The run before the current one (`--previous`) instead of the current.
    pub previous: bool,
}

/// The run a selection reads: the newest restart count that has files, or
/// the one before it for `--previous`.
pub fn pick_run(container_dir: &Path, previous: bool) -> Result<u32> {
    let files = layout::list(container_dir).map_err(|e| io_error(container_dir, e))?;
    let mut runs: Vec<u32> = files.iter().map(|f| f.restart_count).collect();
    runs.dedup();
    let current = runs.last().copied();
    let wanted = if previous {
        runs.iter().rev().nth(1).copied()
    } else {
        current
    };
    let dir = container_dir.to_path_buf();
    match (wanted, current) {
        (Some(run), _) => Ok(run),
        (None, None) => Err(LogError::NoLogs { dir }),
        (None, Some(_)) => Err(LogError::NoPrevious { dir }),
    }
}

/// The current file of a run, open: a follower keeps reading it through
/// this handle after it is renamed away.
#[derive(Debug)]
pub(super) struct Current {
    path: PathBuf,
    file: File,
    pub(super) inode: u64,
}

impl Current {
    /// Opens `path`; `None` when it does not exist (yet).
    fn open(path: &Path) -> Result<Option<Current>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, e)),
        };
        let inode = file.metadata().map_err(|e| io_error(path, e))?.ino();
        Ok(Some(Current {
            path: path.to_path_buf(),
            file,
            inode,
        }))
    }

    /// The complete lines after `offset`, and the offset just past them.
    /// A file shorter than `offset` was truncated: read from its start.
    pub(super) fn read_new(&self, offset: u64) -> Result<(Vec<u8>, u64)> {
        let read = || -> io::Result<(Vec<u8>, u64)> {
            let mut f = &self.file;
            let offset = if f.metadata()?.len() < offset {
                0
            } else {
                offset
            };
            f.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            data.truncate(complete);
            Ok((data, offset + complete as u64))
        };
        read().map_err(|e| io_error(&self.path, e))
    }
}

/// The files of one run to read in order.
#[derive(Debug)]
pub struct Run {
    pub(super) restart_count: u32,
    /// Rotated files, oldest first.
    pub(super) rotated: Vec<LogFile>,
    pub(super) current: Option<Current>,
}

impl Run {
    /// The files of run `restart_count` rotated after stamp `after` (all
    /// when `None`), then its current file. The current file is opened
    /// before the directory is listed: if it is rotated in between, the
    /// listing shows it as a rotated file, which is left out (it is read
    /// once, through its handle).
    pub fn open(container_dir: &Path, restart_count: u32, after: Option<&str>) -> Result<Run> {
        let path = layout::current_file(container_dir, restart_count);
        let current = Current::open(&path)?;
        let mut rotated = Vec::new();
        for f in layout::list(container_dir).map_err(|e| io_error(container_dir, e))? {
            let Some(stamp) = f.rotated.as_deref() else {
                continue;
            };
            if f.restart_count != restart_count || after.is_some_and(|a| stamp <= a) {
                continue;
            }
            let is_current = |c: &Current| inode_of(&f.path) == Some(c.inode);
            if !f.compressed && current.as_ref().is_some_and(is_current) {
                break;
            }
            rotated.push(f);
        }
        Ok(Run {
            restart_count,
            rotated,
            current,
        })
    }

    /// How many files: the rotated ones, then the current one if any.
    fn len(&self) -> usize {
        self.rotated.len() + usize::from(self.current.is_some())
    }

    /// The complete lines of file `i` (the current file is the last).
    fn load(&self, i: usize) -> Result<Vec<u8>> {
        match self.rotated.get(i) {
            Some(f) => load_rotated(f),
            None => match &self.current {
                Some(c) => c.read_new(0).map(|(data, _)| data),
                None => Ok(Vec::new()),
            },
        }
    }

    /// Stamp of the newest rotated file, which a follower reads after.
    pub(super) fn last_stamp(&self) -> Option<String> {
        self.rotated.last().and_then(|f| f.rotated.clone())
    }
}

/// Sends the lines of `run` that `selection` asks for to `out`, in pieces
/// of whole records (`out` returns false when nobody reads any more).
/// Returns the offset in the current file up to which it was read.
pub fn read_run(
    run: &Run,
    selection: &Selection,
    out: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<u64> {
    let (first, mut skip) = match selection.tail {
        Some(tail) => tail_start(run, tail, selection.since)?,
        None => (0, 0),
    };
    let mut filter = LineFilter::new(selection.since);
    let mut consumed = 0;
    for i in first..run.len() {
        let data = run.load(i)?;
        if i == run.rotated.len() {
            consumed = data.len() as u64;
        }
        if !filter.send(&data, &mut skip, out) {
            break;
        }
    }
    Ok(consumed)
}

/// Where the last `tail` lines begin: the file, and how many selected
/// lines of it come before.
fn tail_start(run: &Run, tail: usize, since: Option<DateTime<Utc>>) -> Result<(usize, usize)> {
    let mut wanted = tail;
    for i in (0..run.len()).rev() {
        let lines = LineFilter::new(since).count(&run.load(i)?);
        if lines >= wanted {
            return Ok((i, lines - wanted));
        }
        wanted -= lines;
    }
    Ok((0, 0))
}

/// Decides, record by record, which lines a `--since` keeps.
struct LineFilter {
    since: Option<DateTime<Utc>>,
    at_line_start: bool,
    keep: bool,
}

impl LineFilter {
    fn new(since: Option<DateTime<Utc>>) -> Self {
        LineFilter {
            since,
            at_line_start: true,
            keep: true,
        }
    }

    /// Whether `record` starts a line, and whether its line is kept.
    fn next(&mut self, record: &[u8]) -> (bool, bool) {
        let starts = self.at_line_start;
        if starts {
            self.keep = match (self.since, record_time(record)) {
                (Some(since), Some(time)) => time >= since,
                _ => true,
            };
        }
        self.at_line_start = ends_line(record);
        (starts, self.keep)
    }

    /// How many kept lines start in `data`.
    fn count(mut self, data: &[u8]) -> usize {
        records(data)
            .filter(|r| self.next(r) == (true, true))
            .count()
    }

    /// Sends the records of the kept lines of `data` to `out`, in runs,
    /// after skipping `skip` kept lines. False when `out` refused.
    fn send(&mut self, data: &[u8], skip: &mut usize, out: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let mut run_start: Option<usize> = None;
        let mut sending = false;
        let mut at = 0;
        for record in records(data) {
            let (starts, kept) = self.next(record);
            if starts {
                sending = kept && *skip == 0;
                if kept && *skip > 0 {
                    *skip -= 1;
                }
            }
            match (sending, run_start) {
                (true, None) => run_start = Some(at),
                (false, Some(s)) => {
                    if !out(&data[s..at]) {
                        return false;
                    }
                    run_start = None;
                }
                _ => {}
            }
            at += record.len();
        }
        run_start.is_none_or(|s| out(&data[s..]))
    }
}

/// The records of `data`, each with its newline.
fn records(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|b| *b == b'\n')
}

/// The time of a CRI record, `None` for a line in another format.
fn record_time(record: &[u8]) -> Option<DateTime<Utc>> {
    let field = record.split(|b| *b == b' ').next()?;
    let text = std::str::from_utf8(field).ok()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a record ends its line: every record but a `P` (partial) one.
fn ends_line(record: &[u8]) -> bool {
    let mut fields = record.splitn(4, |b| *b == b' ').skip(1);
    let (stream, tag) = (fields.next(), fields.next());
    !(matches!(stream, Some(b"stdout" | b"stderr")) && matches!(tag, Some(b"P")))
}

/// The content of a rotated file. A plain one that was compressed and
/// removed since it was listed is read from its `.gz`; one removed by the
/// count limit reads as empty (its lines are gone).
pub(super) fn load_rotated(f: &LogFile) -> Result<Vec<u8>> {
    let mut tries = vec![(f.path.clone(), f.compressed)];
    if !f.compressed {
        let mut gz = f.path.clone().into_os_string();
        gz.push(".gz");
        tries.push((PathBuf::from(gz), true));
    }
    for (path, compressed) in &tries {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(path, e)),
        };
        let mut data = Vec::new();
        let read = if *compressed {
            GzDecoder::new(file).read_to_end(&mut data)
        } else {
            (&file).read_to_end(&mut data)
        };
        read.map_err(|e| io_error(path, e))?;
        // A rotated file is complete: a last record without its newline
        // (a writer killed mid-write) still ends there.
        if data.last().is_some_and(|b| *b != b'\n') {
            data.push(b'\n');
        }
        return Ok(data);
    }
    Ok(Vec::new())
}

/// The inode of `path`, `None` when it is gone.
pub(super) fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}
