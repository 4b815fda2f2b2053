//! Work on a container's log directory that the writer must not wait for:
//! gzip of the older rotated files, in a thread of the writer's process;
//! and, when a run starts, the removal of the runs before the previous
//! one (the previous one stays for `rik logs --previous`).
//!
//! A file is compressed to `<name>.gz.tmp`, which is then renamed to
//! `<name>.gz` and the plain file removed, under the directory lock the
//! writer holds while it rotates and prunes: a reader listing the
//! directory sees the plain file or the compressed one (the layout lists
//! only the latter when both exist), and a file the writer pruned in the
//! meantime is not brought back.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::LogSpec;

/// Suffix of a compression in progress.
const TMP: &str = ".gz.tmp";

/// The compression thread of one writer.
pub(super) struct Housekeeper {
    /// Holds one pending wake-up: rotations while a pass runs are taken
    /// in by the next pass, which lists the directory again.
    wake: SyncSender<()>,
    done: Receiver<()>,
}

impl Housekeeper {
    /// Starts the thread; `None` if the system refuses a thread (older
    /// rotated files then stay uncompressed).
    pub(super) fn spawn(spec: LogSpec, dir_lock: Arc<Mutex<()>>) -> Option<Self> {
        let (wake, woken) = mpsc::sync_channel(1);
        let (done_tx, done) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("log-gzip".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    compress_older(&spec, &dir_lock);
                }
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => Some(Housekeeper { wake, done }),
            Err(e) => {
                eprintln!("riklet-shim: no compression of rotated logs: {e}");
                None
            }
        }
    }

    /// Asks for a pass over the directory (never blocks).
    pub(super) fn compress_soon(&self) {
        let _ = self.wake.try_send(());
    }

    /// Lets the thread end its work, waiting at most `timeout`.
    pub(super) fn finish(self, timeout: Duration) {
        drop(self.wake);
        let _ = self.done.recv_timeout(timeout);
    }
}

/// Compresses the run's rotated files but the newest one, oldest first.
fn compress_older(spec: &LogSpec, dir_lock: &Mutex<()>) {
    let rotated = spec.rotated_files();
    let Some((_newest, older)) = rotated.split_last() else {
        return;
    };
    for f in older.iter().filter(|f| !f.compressed) {
        if let Err(e) = compress(&f.path, dir_lock) {
            eprintln!("riklet-shim: cannot compress {}: {e}", f.path.display());
        }
    }
}

/// `<path>` → `<path>.gz`, unless the writer removed `<path>` meanwhile.
fn compress(path: &Path, dir_lock: &Mutex<()>) -> io::Result<()> {
    let tmp = with_suffix(path, TMP);
    let written = gzip(path, &tmp);
    let _dir = dir_lock.lock().unwrap_or_else(|p| p.into_inner());
    match written {
        Ok(()) if path.exists() => {
            fs::rename(&tmp, with_suffix(path, ".gz"))?;
            fs::remove_file(path)
        }
        Ok(()) => fs::remove_file(&tmp),
        // Pruned before it could be read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn gzip(from: &Path, to: &Path) -> io::Result<()> {
    let mut input = File::open(from)?;
    let out = BufWriter::with_capacity(64 * 1024, File::create(to)?);
    // Level 1: the thread must keep up with a writer that rotates often;
    // logs compress well at any level.
    let mut gz = GzEncoder::new(out, Compression::fast());
    io::copy(&mut input, &mut gz)?;
    gz.finish()?.flush()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Removes the files of runs before `restart_count - 1`, and the
/// compressions the current run's earlier writer left unfinished.
/// Failures are ignored: a later run tries again.
pub(super) fn remove_old_runs(dir: &Path, restart_count: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(run) = name
            .split_once(".log")
            .and_then(|(count, _)| count.parse::<u32>().ok())
        else {
            continue;
        };
        let stale_tmp = run == restart_count && name.ends_with(TMP);
        if run < restart_count.saturating_sub(1) || stale_tmp {
            let _ = fs::remove_file(entry.path());
        }
    }
}
