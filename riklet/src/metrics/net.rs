//! Per-cgroup network counters.
//!
//! Two `cgroup_skb` programs (ingress and egress, from `riklet-ebpf`) are
//! attached to one cgroup v2 directory, the riklet's cgroup root. The kernel
//! runs them for every packet of every socket created in that cgroup or below
//! it, and they add the packet to a per-CPU hash map keyed by the socket's
//! cgroup v2 id. A pod's cgroup id is the inode number of its cgroup v2
//! directory ([`cgroup_id`]); [`NetCounters::read`] sums the per-CPU values.
//!
//! The map is pinned under the pin directory (default [`crate::config::paths::BPF_PIN_DIR`]) so
//! that operators can look at it with `bpftool map dump pinned …`. The links
//! are deliberately not pinned: if the riklet dies, the kernel detaches the
//! programs with the last file descriptor instead of leaving them counting
//! for nobody. Only the map pin outlives a crash, and the next
//! [`NetCounters::load`] removes it.
//!
//! The programs only count, they never drop a packet.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    Ebpf, EbpfError,
    maps::{Map, MapData, MapError, PerCpuHashMap},
    pin::PinError,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, cgroup_skb::CgroupSkbLinkId,
    },
};
use aya_log::EbpfLogger;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, FsType, statfs},
};
pub use riklet_common::net::CgroupTraffic;
use riklet_common::net::{CGROUP_TRAFFIC_MAP, EGRESS_PROGRAM, INGRESS_PROGRAM};
use tracing::{debug, warn};

/// The conventional bpffs mount point; mounted by [`NetCounters::load`] if a
/// pin directory below it is not on a bpffs yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// The object built by `cargo xtask build-ebpf` and copied by `build.rs`.
/// Aligned because the ELF parser reads it in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/riklet-ebpf.o"));

/// The two programs and where they hook in.
const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// How often the log thread drains eBPF log records. They are rare (see
/// `riklet-ebpf`), so a slow poll is plenty and costs nothing.
const LOG_POLL: Duration = Duration::from_millis(500);

/// Errors of the network counters.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The riklet was built with an empty object instead of the real one.
    #[error(
        "the embedded eBPF object is empty: build it with `cargo xtask build-ebpf` and rebuild the riklet"
    )]
    EmptyObject,

    /// The kernel or aya refused the object (maps, relocations, BTF).
    #[error("parsing the eBPF object or creating its maps")]
    Load(#[source] Box<EbpfError>),

    /// The object lacks a program the riklet expects: built from another
    /// version of `riklet-ebpf`.
    #[error("the eBPF object has no program `{program}`")]
    ProgramMissing {
        /// Program (function) name.
        program: &'static str,
    },

    /// Loading (verifying) or typing a program failed.
    #[error("loading eBPF program `{program}`")]
    LoadProgram {
        /// Program (function) name.
        program: &'static str,
        /// What aya or the verifier said.
        #[source]
        source: Box<ProgramError>,
    },

    /// Attaching a program to the cgroup failed, e.g. because another
    /// program is already attached there in single mode.
    #[error("attaching eBPF program `{program}` to cgroup {}", path.display())]
    Attach {
        /// Program (function) name.
        program: &'static str,
        /// The cgroup directory.
        path: PathBuf,
        /// What aya or the kernel said.
        #[source]
        source: Box<ProgramError>,
    },

    /// Detaching a program failed.
    #[error("detaching eBPF program `{program}`")]
    Detach {
        /// Program (function) name.
        program: &'static str,
        /// What aya or the kernel said.
        #[source]
        source: Box<ProgramError>,
    },

    /// The object lacks a map the riklet expects.
    #[error("the eBPF object has no map `{map}`")]
    MapMissing {
        /// Map name.
        map: &'static str,
    },

    /// A map operation (type check, lookup, iteration, delete) failed.
    #[error("eBPF map `{map}`")]
    Map {
        /// Map name.
        map: &'static str,
        /// What aya or the kernel said.
        #[source]
        source: Box<MapError>,
    },

    /// Pinning the map failed.
    #[error("pinning eBPF map `{map}` at {}", path.display())]
    Pin {
        /// Map name.
        map: &'static str,
        /// The pin path.
        path: PathBuf,
        /// What aya or the kernel said.
        #[source]
        source: Box<PinError>,
    },

    /// Removing a pin (a stale one, or ours on close) failed.
    #[error("removing pin {}", path.display())]
    Unpin {
        /// The pin path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The pin directory is not on a bpffs, and is not below
    /// [`BPFFS_MOUNT`] where we could mount one.
    #[error("{} is not on a bpffs (mount one, or use a pin directory below {BPFFS_MOUNT})", path.display())]
    NotBpffs {
        /// The pin directory.
        path: PathBuf,
    },

    /// Mounting the bpffs failed.
    #[error("mounting bpffs at {}", path.display())]
    MountBpffs {
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// The cgroup root is not in a cgroup v2 hierarchy; `cgroup_skb`
    /// programs only attach there.
    #[error("{} is not in a cgroup v2 hierarchy (on hybrid hosts it lives at /sys/fs/cgroup/unified)", path.display())]
    NotCgroup2 {
        /// The cgroup directory.
        path: PathBuf,
    },

    /// `statfs` on a path failed.
    #[error("statfs {}", path.display())]
    Statfs {
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// Creating or opening a directory (cgroup root, pin directory) failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What we were doing, e.g. "creating cgroup".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// The loaded and attached network counters.
///
/// Dropping it detaches the programs and removes its pins, as
/// [`close`](Self::close) does; `close` reports errors, `Drop` only logs them.
pub struct NetCounters {
    /// Drains eBPF log records into `log`; `None` if the object has no log
    /// map or the thread could not start. Stopped on close.
    log_pump: Option<LogPump>,
    /// The attached programs, detached explicitly on close.
    links: Vec<(&'static str, CgroupSkbLinkId)>,
    /// Our map pin.
    map_pin: PathBuf,
    /// The pin directory, removed on close if nothing else is left in it.
    pin_dir: PathBuf,
    /// Set by the first close, so that `close` followed by `Drop` is a no-op.
    closed: bool,
    /// Owns the programs and maps. Dropped last: it unloads the programs and
    /// detaches any link still attached.
    ebpf: Ebpf,
}

impl NetCounters {
    /// Loads the embedded object, attaches both programs to `cgroup_root`
    /// and pins the map under `pin_dir`.
    ///
    /// `cgroup_root` must be (or be created) in the cgroup v2 hierarchy; it
    /// is created if missing, so that attaching can happen before the first
    /// pod. Only sockets created in it or below it are counted. `pin_dir` is
    /// created if missing; a bpffs is mounted at [`BPFFS_MOUNT`] first if
    /// needed. A map pin left by a crashed predecessor is removed: counters
    /// start from zero with each riklet process.
    ///
    /// Programs are attached in [`CgroupAttachMode::Single`]: a second riklet
    /// on the same cgroup root fails here instead of counting twice.
    pub fn load(cgroup_root: &Path, pin_dir: &Path) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(NetError::EmptyObject);
        }

        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir).map_err(|source| NetError::Io {
            action: "creating pin directory",
            path: pin_dir.to_owned(),
            source,
        })?;
        let map_pin = pin_dir.join(CGROUP_TRAFFIC_MAP);
        remove_pin(&map_pin)?;

        let cgroup = open_cgroup_root(cgroup_root)?;

        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| NetError::Load(Box::new(e)))?;

        // Must happen before the programs load: the logger takes the log map
        // out of `ebpf`, and the programs refer to its file descriptor.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                warn!(%error, "eBPF logging unavailable; network counters work without it");
                None
            }
        };

        // Check the map's shape before anything is attached.
        traffic_map(&ebpf)?;

        // From here on, an early return drops `ebpf`, which detaches
        // whatever was attached.
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for (program, attach_type) in PROGRAMS {
            let link = attach(&mut ebpf, program, attach_type, &cgroup, cgroup_root)?;
            links.push((program, link));
        }

        ebpf.map(CGROUP_TRAFFIC_MAP)
            .ok_or(NetError::MapMissing {
                map: CGROUP_TRAFFIC_MAP,
            })?
            .pin(&map_pin)
            .map_err(|source| NetError::Pin {
                map: CGROUP_TRAFFIC_MAP,
                path: map_pin.clone(),
                source: Box::new(source),
            })?;

        let log_pump = logger.and_then(|logger| match LogPump::start(logger) {
            Ok(pump) => Some(pump),
            Err(error) => {
                warn!(%error, "cannot start the eBPF log thread; eBPF log records will be lost");
                None
            }
        });
        debug!(
            cgroup_root = %cgroup_root.display(),
            pin_dir = %pin_dir.display(),
            "network counters attached"
        );
        Ok(Self {
            log_pump,
            links,
            map_pin,
            pin_dir: pin_dir.to_owned(),
            closed: false,
            ebpf,
        })
    }

    /// Sums the per-CPU values for one cgroup id (the inode number of its
    /// cgroup v2 directory, see [`cgroup_id`]); `None` if that cgroup has no
    /// traffic yet (or was forgotten).
    pub fn read(&self, cgroup_id: u64) -> Result<Option<CgroupTraffic>> {
        match traffic_map(&self.ebpf)?.get(&cgroup_id, 0) {
            Ok(values) => Ok(Some(sum(&values))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(source)),
        }
    }

    /// All entries, summed over CPUs.
    ///
    /// Walks the keys one by one (aya has no batch lookup): entries added or
    /// removed meanwhile may or may not show up.
    pub fn read_all(&self) -> Result<Vec<(u64, CgroupTraffic)>> {
        traffic_map(&self.ebpf)?
            .iter()
            .map(|entry| {
                let (cgroup_id, values) = entry.map_err(map_error)?;
                Ok((cgroup_id, sum(&values)))
            })
            .collect()
    }

    /// Drops the entry of a deleted pod cgroup, so that the bounded map does
    /// not fill up with dead ids. Forgetting an id without entry is fine.
    pub fn forget(&mut self, cgroup_id: u64) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(CGROUP_TRAFFIC_MAP)
            .ok_or(NetError::MapMissing {
                map: CGROUP_TRAFFIC_MAP,
            })?;
        let mut map =
            PerCpuHashMap::<&mut MapData, u64, CgroupTraffic>::try_from(map).map_err(map_error)?;
        match map.remove(&cgroup_id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(ref error))
                if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(map_error(source)),
        }
    }

    /// Detaches the programs and removes every pin it created (the map pin,
    /// and the pin directory if it is left empty). Also done on drop.
    pub fn close(mut self) -> Result<()> {
        self.shut_down()
    }

    /// Tears everything down once, trying every step and returning the
    /// first error.
    fn shut_down(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut first_error = None;
        for (program, link) in std::mem::take(&mut self.links) {
            if let Err(error) = detach(&mut self.ebpf, program, link) {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = remove_pin(&self.map_pin) {
            first_error.get_or_insert(error);
        }
        // Other riklet subsystems may pin here too: leave a non-empty dir.
        match fs::remove_dir(&self.pin_dir) {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(source) => {
                first_error.get_or_insert(NetError::Unpin {
                    path: self.pin_dir.clone(),
                    source,
                });
            }
        }
        if let Some(pump) = self.log_pump.take() {
            pump.stop();
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NetCounters {
    fn drop(&mut self) {
        if let Err(error) = self.shut_down() {
            warn!(error = %error_chain(&error), "closing network counters");
        }
    }
}

impl std::fmt::Debug for NetCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetCounters")
            .field("map_pin", &self.map_pin)
            .field(
                "programs",
                &self.links.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The inode number of a cgroup v2 directory, which is the cgroup id the
/// kernel (`bpf_skb_cgroup_id`, `bpf_get_current_cgroup_id`) reports for it.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// Loads one program (the verifier runs here) and attaches it.
fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    attach_type: CgroupSkbAttachType,
    cgroup: &File,
    cgroup_path: &Path,
) -> Result<CgroupSkbLinkId> {
    let load_error = |source| NetError::LoadProgram {
        program,
        source: Box::new(source),
    };
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or(NetError::ProgramMissing { program })?
        .try_into()
        .map_err(load_error)?;
    prog.load().map_err(load_error)?;
    prog.attach(cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|source| NetError::Attach {
            program,
            path: cgroup_path.to_owned(),
            source: Box::new(source),
        })
}

fn detach(ebpf: &mut Ebpf, program: &'static str, link: CgroupSkbLinkId) -> Result<()> {
    let detach_error = |source| NetError::Detach {
        program,
        source: Box::new(source),
    };
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or(NetError::ProgramMissing { program })?
        .try_into()
        .map_err(detach_error)?;
    prog.detach(link).map_err(detach_error)
}

/// Creates `path` if missing and opens it, after checking that it is (or
/// would be) in the cgroup v2 hierarchy, so that a missing v2 mount does not
/// end in directories on the tmpfs at /sys/fs/cgroup.
fn open_cgroup_root(path: &Path) -> Result<File> {
    let existing = nearest_existing(path);
    if !is_fs(existing, CGROUP2_SUPER_MAGIC)? {
        return Err(NetError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    fs::create_dir_all(path).map_err(|source| NetError::Io {
        action: "creating cgroup",
        path: path.to_owned(),
        source,
    })?;
    File::open(path).map_err(|source| NetError::Io {
        action: "opening cgroup",
        path: path.to_owned(),
        source,
    })
}

/// Makes sure `pin_dir` is (or will be) on a bpffs, mounting one at
/// [`BPFFS_MOUNT`] if the pin directory is below it and nothing is mounted.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    // Two loads racing here (tests do) would mount twice, and the second
    // mount would hide the pins made on the first.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _serialised = MOUNTING.lock().unwrap_or_else(PoisonError::into_inner);

    if is_fs(nearest_existing(pin_dir), BPF_FS_MAGIC)? {
        return Ok(());
    }
    let mount_point = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(mount_point) {
        return Err(NetError::NotBpffs {
            path: pin_dir.to_owned(),
        });
    }
    fs::create_dir_all(mount_point).map_err(|source| NetError::Io {
        action: "creating bpffs mount point",
        path: mount_point.to_owned(),
        source,
    })?;
    // The flags and mode systemd uses: pins are for root only.
    mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|source| NetError::MountBpffs {
        path: mount_point.to_owned(),
        source,
    })?;
    debug!(path = BPFFS_MOUNT, "mounted bpffs");
    if is_fs(nearest_existing(pin_dir), BPF_FS_MAGIC)? {
        Ok(())
    } else {
        Err(NetError::NotBpffs {
            path: pin_dir.to_owned(),
        })
    }
}

/// `path` itself or its closest ancestor that exists.
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn is_fs(path: &Path, fs_type: FsType) -> Result<bool> {
    let stat = statfs(path).map_err(|source| NetError::Statfs {
        path: path.to_owned(),
        source,
    })?;
    Ok(stat.filesystem_type() == fs_type)
}

/// Removes a pin; a pin that is not there is fine.
fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            debug!(path = %path.display(), "removed pin");
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The counters map, typed; fails if the object's map has another shape.
fn traffic_map(ebpf: &Ebpf) -> Result<PerCpuHashMap<&MapData, u64, CgroupTraffic>> {
    let map: &Map = ebpf.map(CGROUP_TRAFFIC_MAP).ok_or(NetError::MapMissing {
        map: CGROUP_TRAFFIC_MAP,
    })?;
    PerCpuHashMap::try_from(map).map_err(map_error)
}

fn sum(values: &[CgroupTraffic]) -> CgroupTraffic {
    values.iter().fold(CgroupTraffic::default(), |total, cpu| {
        total.wrapping_add(*cpu)
    })
}

fn map_error(source: MapError) -> NetError {
    NetError::Map {
        map: CGROUP_TRAFFIC_MAP,
        source: Box::new(source),
    }
}

/// "outer: inner: innermost", for the one place (Drop) that can only log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// A thread that moves aya-log records from the eBPF ring buffer into the
/// `log` facade (which the riklet bridges into `tracing`).
///
/// Someone has to drain the ring buffer or the records never appear; the
/// counters are synchronous and the records rare, so a thread that wakes a
/// couple of times a second needs no async runtime and costs nothing. It
/// also owns the [`EbpfLogger`], which keeps the log map alive.
struct LogPump {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LogPump {
    fn start(mut logger: EbpfLogger<&'static dyn log::Log>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ebpf-log".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        logger.flush();
                        std::thread::park_timeout(LOG_POLL);
                    }
                    logger.flush();
                })?
        };
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            warn!("the eBPF log thread panicked");
        }
    }
}
