//! A run's current log file: appends in whole records, rotation by rename
//! before a write would pass the size limit, the count limit, and what a
//! failed write does (the bytes are dropped and counted, the writer goes
//! on: a full disk or a removed directory never stops a container).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LogSpec;
use super::dropped::DroppedCounter;
use super::housekeeping::{self, Housekeeper};
use crate::layout;

/// The current file of one run and what it takes to rotate it.
pub(super) struct RotatingFile {
    spec: LogSpec,
    /// `<restart_count>.log`
    path: PathBuf,
    /// `None` while the file cannot be (re)opened: appends are dropped,
    /// and the next one tries again.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// Time of the last rotation: the next one is stamped later, even if
    /// the clock steps back, so that names keep sorting as rotations.
    last_rotation: SystemTime,
    /// Held while files of the directory are renamed or removed, by the
    /// writer (rotation, count limit) and the housekeeper (compression).
    dir_lock: Arc<Mutex<()>>,
    /// Started at the first rotation (the shim forks its child after
    /// opening the log, and must have a single thread then).
    housekeeper: Option<Housekeeper>,
    dropped: DroppedCounter,
    /// A failure was reported and no write has worked since: report the
    /// next success, not every failure.
    failing: bool,
}

impl RotatingFile {
    /// Opens (creating directory and file) the run's current file, and
    /// removes what earlier runs but the previous one left.
    pub(super) fn open(spec: &LogSpec) -> io::Result<Self> {
        let path = spec.current_file();
        let (file, size) = open_current(&spec.dir, &path)?;
        housekeeping::remove_old_runs(&spec.dir, spec.restart_count);
        let last_rotation = layout::list(&spec.dir)
            .unwrap_or_default()
            .iter()
            .filter(|f| f.restart_count == spec.restart_count)
            .filter_map(|f| stamp_time(f.rotated.as_deref()?))
            .max()
            .unwrap_or(UNIX_EPOCH);
        Ok(RotatingFile {
            dropped: DroppedCounter::open(&spec.dir),
            spec: spec.clone(),
            path,
            file: Some(file),
            size,
            last_rotation,
            dir_lock: Arc::new(Mutex::new(())),
            housekeeper: None,
            failing: false,
        })
    }

    /// Appends whole records (each ends with a newline), rotating before
    /// the size limit would be passed; never splits a record between two
    /// files.
    pub(super) fn append(&mut self, mut batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        self.reopen_if_gone();
        while !batch.is_empty() {
            if self.file.is_none() {
                self.drop_bytes(batch.len(), None);
                return;
            }
            let mut take = self.fitting(batch);
            if take == 0 {
                if self.rotate() {
                    continue;
                }
                // Past the limit rather than lost.
                take = batch.len();
            }
            self.write(&batch[..take]);
            batch = &batch[take..];
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.total()
    }

    pub(super) fn take_housekeeper(&mut self) -> Option<Housekeeper> {
        self.housekeeper.take()
    }

    /// How many bytes of `batch`, in whole records, fit under the size
    /// limit; in an empty file, at least its first record (in case one
    /// record were larger than the limit).
    fn fitting(&self, batch: &[u8]) -> usize {
        let room = self.spec.rotation.max_size.saturating_sub(self.size);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if batch.len() <= room {
            return batch.len();
        }
        let fit = batch[..room]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if fit == 0 && self.size == 0 {
            return batch
                .iter()
                .position(|&b| b == b'\n')
                .map_or(batch.len(), |i| i + 1);
        }
        fit
    }

    /// Renames the current file to its rotated name, applies the count
    /// limit and starts a new current file; `true` when the new file is
    /// open and empty.
    fn rotate(&mut self) -> bool {
        let at = SystemTime::now().max(self.last_rotation + Duration::from_micros(1));
        let rotated = self
            .spec
            .dir
            .join(layout::rotated_name(self.spec.restart_count, at));
        let renamed = {
            let _dir = self.dir_lock.lock().unwrap_or_else(|p| p.into_inner());
            let renamed = fs::rename(&self.path, &rotated);
            if renamed.is_ok() {
                self.last_rotation = at;
                prune(&self.spec);
            }
            renamed
        };
        match renamed {
            Ok(()) => self.wake_housekeeper(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed: start anew
            Err(e) => self.report(&format!("cannot rotate {}", self.path.display()), &e),
        }
        self.reopen();
        self.file.is_some() && self.size == 0
    }

    fn wake_housekeeper(&mut self) {
        if self.housekeeper.is_none() {
            self.housekeeper = Housekeeper::spawn(self.spec.clone(), self.dir_lock.clone());
        }
        if let Some(h) = &self.housekeeper {
            h.compress_soon();
        }
    }

    /// Writes `data` at the end of the file, or drops and counts it; a
    /// failed write leaves no part of it behind.
    fn write(&mut self, data: &[u8]) {
        let Some(file) = &mut self.file else {
            return self.drop_bytes(data.len(), None);
        };
        match file.write_all(data) {
            Ok(()) => {
                self.size += data.len() as u64;
                if self.failing {
                    self.failing = false;
                    eprintln!(
                        "riklet-shim: writing {} works again; {} bytes dropped in all",
                        self.path.display(),
                        self.dropped.total()
                    );
                }
            }
            Err(e) => {
                let _ = file.set_len(self.size);
                self.drop_bytes(data.len(), Some(e));
            }
        }
    }

    fn drop_bytes(&mut self, n: usize, cause: Option<io::Error>) {
        self.dropped.add(n as u64);
        if let Some(e) = cause {
            self.report(&format!("cannot write {}", self.path.display()), &e);
        }
    }

    /// Says once, until writes work again, why output is being dropped.
    fn report(&mut self, what: &str, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            eprintln!(
                "riklet-shim: {what}: {e}; output is dropped (and counted in {}) until it works again",
                super::DROPPED_FILE
            );
        }
    }

    /// Reopens the current file if it was removed (or never opened): the
    /// log directory may be removed under a running writer.
    fn reopen_if_gone(&mut self) {
        let gone = self
            .file
            .as_ref()
            .is_none_or(|f| f.metadata().is_ok_and(|m| m.nlink() == 0));
        if gone {
            self.reopen();
        }
    }

    /// Opens the current file anew, creating the directory if needed.
    fn reopen(&mut self) {
        self.file = None;
        self.size = 0;
        match open_current(&self.spec.dir, &self.path) {
            Ok((file, size)) => {
                self.file = Some(file);
                self.size = size;
                self.dropped.reopen_if_gone(&self.spec.dir);
            }
            Err(e) => self.report(&format!("cannot open {}", self.path.display()), &e),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The current file `path` in `dir` (both made if missing), and its size.
fn open_current(dir: &Path, path: &Path) -> io::Result<(File, u64)> {
    fs::create_dir_all(dir)?;
    let file = open_append(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Removes the oldest rotated files of the run beyond the count limit
/// (the current file counts as one). Called with the directory lock held.
fn prune(spec: &LogSpec) {
    let rotated = spec.rotated_files();
    let keep = (spec.rotation.max_files as usize).saturating_sub(1);
    for f in &rotated[..rotated.len().saturating_sub(keep)] {
        let _ = fs::remove_file(&f.path);
        if f.compressed {
            // Its plain copy, if the housekeeper had not removed it yet.
            let _ = fs::remove_file(f.path.with_extension(""));
        }
    }
}

/// The time a rotation's stamp names.
fn stamp_time(stamp: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S%.f").ok()?;
    Some(t.and_utc().into())
}
