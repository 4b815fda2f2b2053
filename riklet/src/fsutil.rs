//! File writes that survive a crash at any instant.
//!
//! The runtime memory, the IPAM leases and the shims' reports are read back
//! by whichever riklet (or shim) runs after a crash: each file must hold
//! its old or its new content, never a mix, and a rename must not be lost
//! with the page cache.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `data` so that a crash leaves the old or the new
/// content, never a mix: write a temporary file, fsync it, rename it over
/// the old one, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, data)?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates (or truncates) `path`, writes `data` and fsyncs it: the first
/// half of [`write_atomic`], for callers that rename many files and then
/// sync their directory once.
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
    fn write_atomic_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join("a.tmp").exists());
    }
}
