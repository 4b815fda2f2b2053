//! The map pins under the pin directory, the bpffs they need, and their
//! removal: stale ones at load, ours on close.
//!
//! Also the file system type checks, which the cgroup root needs too. The
//! Node Proxy's socket load-balancer (`crate::proxy::ebpf`) uses the same
//! helpers for its own pins.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::Ebpf;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, FsType, statfs},
};
use riklet_common::{net::CGROUP_TRAFFIC_MAP, sched::SCHED_STATS_MAP, tcp::TCP_RETRANS_MAP};
use tracing::debug;

use super::{ProbeError, Result, error::io_error, first_error};

/// The conventional bpffs mount point; mounted by
/// [`Probes::load`](super::Probes::load) if a pin directory below it is not
/// on a bpffs yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// The maps pinned under the pin directory (file name = map name).
const PINNED_MAPS: [&str; 3] = [CGROUP_TRAFFIC_MAP, SCHED_STATS_MAP, TCP_RETRANS_MAP];

/// The pin directory and our pins in it.
#[derive(Debug)]
pub(super) struct Pins {
    /// The pin directory, removed on close if nothing else is left in it.
    dir: PathBuf,
    /// Our map pins, one per [`PINNED_MAPS`] entry.
    paths: Vec<PathBuf>,
}

impl Pins {
    /// Makes `dir` ready for the pins: on a bpffs (mounted if need be),
    /// created, and without the pins a crashed predecessor left.
    pub(super) fn prepare(dir: &Path) -> Result<Self> {
        ensure_bpffs(dir)?;
        fs::create_dir_all(dir).map_err(io_error("creating pin directory", dir))?;
        let paths: Vec<PathBuf> = PINNED_MAPS.iter().map(|map| dir.join(map)).collect();
        for pin in &paths {
            remove_pin(pin)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            paths,
        })
    }

    /// Pins the per-cgroup maps of `ebpf`.
    pub(super) fn pin(&self, ebpf: &Ebpf) -> Result<()> {
        for (map, path) in PINNED_MAPS.into_iter().zip(&self.paths) {
            ebpf.map(map)
                .ok_or(ProbeError::MapMissing { map })?
                .pin(path)
                .map_err(|source| ProbeError::Pin {
                    map,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The pin paths.
    pub(super) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes our pins, and the pin directory if it is left empty, trying
    /// every step and returning the first error.
    pub(super) fn remove_all(&self) -> Result<()> {
        let pins = first_error(self.paths.iter().map(|pin| remove_pin(pin)));
        // Other riklet subsystems may pin here too: leave a non-empty dir.
        pins.and(remove_dir_if_empty(&self.dir))
    }
}

/// Removes a pin directory that is empty; one that holds pins of others, or
/// is gone already, is fine.
pub(crate) fn remove_dir_if_empty(dir: &Path) -> Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(ProbeError::Unpin {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Makes sure `pin_dir` is (or will be) on a bpffs, mounting one at
/// [`BPFFS_MOUNT`] if the pin directory is below it and nothing is mounted.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    // Two loads racing here (tests do) would mount twice, and the second
    // mount would hide the pins made on the first.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _serialised = MOUNTING.lock().unwrap_or_else(PoisonError::into_inner);

    if is_fs(nearest_existing(pin_dir), BPF_FS_MAGIC)? {
        return Ok(());
    }
    let mount_point = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(mount_point) {
        return Err(ProbeError::NotBpffs {
            path: pin_dir.to_owned(),
        });
    }
    fs::create_dir_all(mount_point).map_err(io_error("creating bpffs mount point", mount_point))?;
    // The flags and mode systemd uses: pins are for root only.
    mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|source| ProbeError::MountBpffs {
        path: mount_point.to_owned(),
        source,
    })?;
    debug!(path = BPFFS_MOUNT, "mounted bpffs");
    if is_fs(nearest_existing(pin_dir), BPF_FS_MAGIC)? {
        Ok(())
    } else {
        Err(ProbeError::NotBpffs {
            path: pin_dir.to_owned(),
        })
    }
}

/// `path` itself or its closest ancestor that exists.
pub(super) fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

/// Whether `path` is on a file system of type `fs_type`.
pub(super) fn is_fs(path: &Path, fs_type: FsType) -> Result<bool> {
    let stat = statfs(path).map_err(|source| ProbeError::Statfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(stat.filesystem_type() == fs_type)
}

/// Removes a pin; a pin that is not there is fine.
pub(crate) fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            debug!(path = %path.display(), "removed pin");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ProbeError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}
