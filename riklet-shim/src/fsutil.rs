//! File writes that survive a crash at any instant.
//!
//! The runtime memory, the IPAM leases and the shims' exit records are
//! read back by whichever riklet (or shim) runs after a crash: each file
//! must hold its old or its new content, never a mix, and a rename must not
//! be lost with the page cache ([`write_atomic`]). Files that only describe
//! live processes, which a reboot ends anyway, need the first property
//! only ([`write_volatile`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `data` so that a crash, of the process or of the
/// machine, leaves the old or the new content, never a mix: write a
/// temporary file, fsync it, rename it over the old one, fsync the
/// directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_complete(path, data, true)
}

/// Replaces `path` with `data` so that a reader sees the old or the new
/// content, never a part of it, as long as the machine stays up (a
/// temporary file renamed over the old one, no fsync). Enough for a file
/// whose content is worthless after a reboot, because it describes
/// processes that a reboot ends (a shim's `spec.json` and `started.json`):
/// the page cache that holds it survives any crash of the processes that
/// write or read it. Each fsync costs a journal commit (about a
/// millisecond here) on the start path.
pub fn write_volatile(path: &Path, data: &[u8]) -> io::Result<()> {
    write_complete(path, data, false)
}

fn write_complete(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates (or truncates) `path`, writes `data` and fsyncs it: the first
/// half of [`write_atomic`], for callers that rename many files and then
/// sync their directory once (the agent's group commit).
pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Makes the creations, renames and removals of entries in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        write_volatile(&path, b"newer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"newer");
        assert!(!dir.path().join("a.tmp").exists());
    }
}
