//! Following a container's logs (`rik logs -f`): what is appended to the
//! current file of its run, across a rotation (the current file renamed
//! away, a new one created) and across a restart (the next run's
//! `<n+1>.log`), without losing or repeating a line.
//!
//! The current file is read through an open handle, so a rotation is seen
//! by its inode: the path names another file. The old file is complete by
//! then (the writer rotates between two records), so it is read to its end
//! through the handle, then the files rotated after it (several rotations
//! may happen between two polls), then the new current file from its start.

use std::path::{Path, PathBuf};

use super::Result;
use super::layout;
use super::read::{Current, Run, inode_of, load_rotated};

/// Whether a followed container's logs can still grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Going,
    /// The container's log directory was removed (the pod's logs are gone).
    Gone,
}

/// Where a follower of one container's logs is.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    restart_count: u32,
    current: Option<Current>,
    /// How far `current` was read (whole records).
    offset: u64,
    /// Stamp of the newest rotated file of the run already read: the files
    /// rotated later are still to read.
    after: Option<String>,
}

impl Follower {
    /// Follows on from a [`super::read_run`] of `run` that read its current
    /// file up to `offset`.
    pub fn after(container_dir: &Path, run: Run, offset: u64) -> Follower {
        Follower {
            dir: container_dir.to_path_buf(),
            restart_count: run.restart_count,
            after: run.last_stamp(),
            current: run.current,
            offset,
        }
    }

    /// Sends to `out` every complete record written since the last call.
    pub fn poll(&mut self, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<Progress> {
        self.drain(out)?;
        let path = layout::current_file(&self.dir, self.restart_count);
        let on_disk = inode_of(&path);
        let reading = self.current.as_ref().map(|c| c.inode);
        match (reading, on_disk) {
            (Some(mine), Some(inode)) if inode != mine => self.switch(true, out)?,
            (None, Some(_)) => self.switch(false, out)?,
            _ => {
                let next = layout::current_file(&self.dir, self.restart_count + 1);
                if next.exists() {
                    self.restart_count += 1;
                    self.after = None;
                    self.switch(false, out)?;
                } else if on_disk.is_none() && !self.dir.exists() {
                    return Ok(Progress::Gone);
                }
            }
        }
        Ok(Progress::Going)
    }

    /// Reads what was appended to the current file.
    fn drain(&mut self, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<()> {
        if let Some(current) = &self.current {
            let (data, next) = current.read_new(self.offset)?;
            self.offset = next;
            if !data.is_empty() {
                out(&data);
            }
        }
        Ok(())
    }

    /// Moves to the file now current in `self.restart_count`'s run, once
    /// the old one (if any) is read to its end: first the files rotated in
    /// between. `rotated`: the old file was the run's current file and is
    /// now the oldest rotated file not yet passed, so it is skipped.
    fn switch(&mut self, rotated: bool, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<()> {
        self.drain(out)?;
        let old_inode = self.current.take().map(|c| c.inode);
        let run = Run::open(&self.dir, self.restart_count, self.after.as_deref())?;
        let mut files = run.rotated.iter().peekable();
        if rotated && let Some(first) = files.peek() {
            // Unless it is a plain file that is not ours (ours was removed
            // by the count limit), the first one is the old file.
            let other = !first.compressed && inode_of(&first.path) != old_inode;
            if !other {
                self.after = first.rotated.clone();
                files.next();
            }
        }
        for f in files {
            let data = load_rotated(f)?;
            if !data.is_empty() {
                out(&data);
            }
            self.after = f.rotated.clone();
        }
        self.current = run.current;
        self.offset = 0;
        self.drain(out)
    }
}
