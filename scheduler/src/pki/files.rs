//! Private files of the PKI: written whole (temporary file, fsync, rename),
//! readable by their owner only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::PkiError;

/// Writes `data` to `path` atomically with mode `mode`.
pub(crate) fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |what: &'static str| {
        move |source| PkiError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create"))?;
    // An older file may have been made with a wider mode.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod"))?;
    file.write_all(data).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    fs::rename(&tmp, path).map_err(io("rename onto"))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory of"))?;
    }
    Ok(())
}

/// The text of `path`, or `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}
