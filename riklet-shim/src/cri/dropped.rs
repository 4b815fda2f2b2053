//! The count of output bytes a container's writers could not write (full
//! disk, I/O errors), kept in `<container_dir>/.dropped_bytes` across the
//! container's runs. The writers are processes of their own (shims,
//! `riklet logger`); the riklet sums the files for
//! `riklet_log_dropped_bytes_total`.
//!
//! The count is written in place at a fixed width, into a file created
//! when the writer starts: overwriting bytes the file already holds needs
//! no new block, so the count still goes in when the disk is full.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Name of the count's file in a container's log directory (hidden: not a
/// log file, for the layout or for a collector's `*.log` glob).
pub const DROPPED_FILE: &str = ".dropped_bytes";

/// The bytes dropped by a container's writers so far (0 when nothing was).
pub fn read_dropped(container_dir: &Path) -> u64 {
    std::fs::read_to_string(container_dir.join(DROPPED_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One writer's count and its open file.
pub(super) struct DroppedCounter {
    total: u64,
    /// `None` if it could not be created; the count is then in memory
    /// only, until the directory is made anew.
    file: Option<File>,
}

impl DroppedCounter {
    /// Takes up the count of the container's earlier runs.
    pub(super) fn open(dir: &Path) -> Self {
        let total = read_dropped(dir);
        let mut counter = DroppedCounter { total, file: None };
        counter.create(dir);
        counter
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn add(&mut self, n: u64) {
        self.total += n;
        if let Some(f) = &self.file {
            let _ = f.write_all_at(format!("{:020}\n", self.total).as_bytes(), 0);
        }
    }

    /// Makes the file anew if it was removed with the directory.
    pub(super) fn reopen_if_gone(&mut self, dir: &Path) {
        let gone = self
            .file
            .as_ref()
            .is_none_or(|f| f.metadata().is_ok_and(|m| m.nlink() == 0));
        if gone {
            self.create(dir);
        }
    }

    fn create(&mut self, dir: &Path) {
        self.file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(DROPPED_FILE))
            .ok();
        if let Some(f) = &self.file {
            let _ = f.write_all_at(format!("{:020}\n", self.total).as_bytes(), 0);
        }
    }
}
