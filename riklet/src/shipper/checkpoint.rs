//! Where each sink is in each container's logs, kept in the state dir
//! (`<state_dir>/shipper/<sink key>.json`, replaced after every batch the
//! sink acknowledged), so that a restarted riklet, after a clean stop or a
//! `kill -9`, goes on from there: it repeats at most the batch that was
//! sent but not yet recorded. The file is replaced without fsync (the page
//! cache outlives any crash of the riklet; a fsync per batch would cap the
//! shipping rate): after a power loss the shipper may repeat more, never
//! skip.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;

/// Bytes of a file's beginning that identify it beside its device and
/// inode: an inode number is reused once a file is removed, and the
/// compressed copy of a rotated file has another inode but the same first
/// bytes (a CRI line starts with a time in nanoseconds).
pub const HEAD_LEN: usize = 64;

/// A place in one log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// How many of the file's first bytes `head_sha256` covers (fewer than
    /// [`HEAD_LEN`] while the file is shorter).
    pub head_len: u64,
    /// SHA-256 (hex) of the file's first `head_len` bytes, uncompressed.
    pub head_sha256: String,
    /// The run the file belongs to (`<restartCount>.log…`).
    pub restart_count: u32,
    /// The file's rotation stamp if it was already rotated when opened,
    /// else the stamp of the time it was opened: every file of the run
    /// rotated after this stamp is newer than this one.
    pub floor: String,
    /// Bytes of the (uncompressed) file before the place.
    pub offset: u64,
}

/// SHA-256 (hex) of a file's first bytes.
pub fn head_hash(head: &[u8]) -> String {
    hex::encode(Sha256::digest(head))
}

/// One sink's positions, by `<pod dir>/<container>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The sink's name, for people reading the file.
    pub sink: String,
    pub positions: BTreeMap<String, Position>,
}

/// A checkpoint that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("shipper checkpoint {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shipper checkpoint {path} is not valid JSON")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `<state_dir>/shipper/<first 16 hex digits of SHA-256(sink name)>.json`.
pub fn path(state_dir: &Path, sink: &str) -> PathBuf {
    let key = head_hash(sink.as_bytes());
    state_dir
        .join("shipper")
        .join(format!("{}.json", &key[..16]))
}

impl Checkpoint {
    /// Reads a checkpoint; a missing file is an empty one.
    pub fn load(path: &Path, sink: &str) -> Result<Checkpoint, CheckpointError> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| CheckpointError::Parse {
                path: path.into(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint {
                sink: sink.into(),
                positions: BTreeMap::new(),
            }),
            Err(source) => Err(CheckpointError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Replaces the file with this checkpoint (atomically, no fsync).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io_err = |source| CheckpointError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let data = serde_json::to_vec_pretty(self).expect("serializing to memory cannot fail");
        fsutil::write_volatile(path, &data).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_save_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "syslog://127.0.0.1:514");
        assert!(p.starts_with(dir.path().join("shipper")));
        assert_ne!(p, path(dir.path(), "file:/x.json"));
        let empty = Checkpoint::load(&p, "syslog://127.0.0.1:514").unwrap();
        assert!(empty.positions.is_empty());
        let mut c = empty.clone();
        c.positions.insert(
            "default_web_web-1/main".into(),
            Position {
                dev: 1,
                ino: 2,
                head_len: 3,
                head_sha256: head_hash(b"abc"),
                restart_count: 0,
                floor: "20261202-192003.000042".into(),
                offset: 99,
            },
        );
        c.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p, "ignored").unwrap(), c);
        std::fs::write(&p, b"{").unwrap();
        let err = Checkpoint::load(&p, "x").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
