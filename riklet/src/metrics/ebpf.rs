//! The riklet's eBPF object (`riklet-ebpf`): loaded once, it owns every
//! program and map, and [`Probes`] is its only handle.
//!
//! Loading the object twice would create every map twice, and each copy
//! would only see half of the events, so all readers go through one
//! [`Probes`].
//!
//! # What is attached
//! - `cgroup_skb` ingress/egress at the riklet's cgroup v2 root: per-cgroup
//!   network bytes and packets ([`Probes::traffic`], see [`super::net`]).
//! - `sched/sched_switch`, `sched/sched_wakeup`, `sched/sched_wakeup_new`
//!   tracepoints, node-wide: per-cgroup on-CPU time and run-queue latency
//!   ([`Probes::sched`], see `riklet_common::sched` for the method).
//! - `oom/mark_victim`, node-wide: OOM kills, drained with
//!   [`Probes::oom_events`].
//! - `tcp/tcp_retransmit_skb`, node-wide: TCP retransmissions per source
//!   address ([`Probes::retransmits_all`]), which the collector maps to pod
//!   addresses.
//!
//! Every cgroup of the node is counted by the tracepoints, not only those
//! below the cgroup root; the per-cgroup maps are bounded (LRU for the
//! scheduler map), and [`Probes::forget`] removes a deleted pod's entries
//! ([`Probes::forget_address`] those of an address that is no pod's).
//!
//! # Layout
//! - this file: [`Probes`], its errors, bpffs and cgroup checks, the log
//!   pump;
//! - `tracefs`: tracepoint field offsets, read from tracefs at load time and
//!   handed to the programs as globals;
//! - [`batch`]: `BPF_MAP_LOOKUP_BATCH`, which aya lacks, for the `*_all`
//!   readers (they fall back to aya's iteration where the kernel lacks it).
//!
//! # Pins and crashes
//! The per-cgroup maps are pinned under the pin directory (default
//! [`crate::config::paths::BPF_PIN_DIR`]) so that operators can look at them
//! with `bpftool map dump pinned …`. The links are deliberately not pinned:
//! if the riklet dies, the kernel detaches the programs with the last file
//! descriptor instead of leaving them counting for nobody. Only the map pins
//! outlive a crash, and the next [`Probes::load`] removes them.

pub mod batch;
mod tracefs;

use std::{
    collections::HashMap,
    fs::{self, File},
    hash::Hash,
    io,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    pin::PinError,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, TracePoint,
        cgroup_skb::CgroupSkbLinkId, trace_point::TracePointLinkId,
    },
    sys::SyscallError,
};
use aya_log::EbpfLogger;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, FsType, statfs},
};
pub use riklet_common::{
    net::CgroupTraffic,
    oom::OomEvent,
    sched::{OnCpu, RUNQ_BUCKETS, SchedStats},
};
use riklet_common::{
    net::{CGROUP_TRAFFIC_MAP, EGRESS_PROGRAM, INGRESS_PROGRAM, TRAFFIC_LOST_MAP},
    oom::{MARK_VICTIM_PID_OFFSET, MARK_VICTIM_PROGRAM, OOM_EVENTS_MAP, OOM_LOST_MAP},
    sched::{
        ON_CPU_MAP, SCHED_LOST_MAP, SCHED_LOST_UNSEEN, SCHED_STATS_MAP, SWITCH_NEXT_PID_OFFSET,
        SWITCH_PREV_PID_OFFSET, SWITCH_PREV_STATE_OFFSET, SWITCH_PROGRAM, WAKEUP_NEW_PID_OFFSET,
        WAKEUP_NEW_PROGRAM, WAKEUP_PID_OFFSET, WAKEUP_PROGRAM,
    },
    tcp::{
        Address, RETRANSMIT_ERR_OFFSET, RETRANSMIT_PROGRAM, RETRANSMIT_SADDR_V6_OFFSET,
        TCP_RETRANS_LOST_MAP, TCP_RETRANS_MAP,
    },
};
use tracing::{debug, warn};

pub use super::net::cgroup_id;
use tracefs::Field;

/// The conventional bpffs mount point; mounted by [`Probes::load`] if a pin
/// directory below it is not on a bpffs yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// The object built by `cargo xtask build-ebpf` and copied by `build.rs`.
/// Aligned because the ELF parser reads it in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/riklet-ebpf.o"));

/// The `cgroup_skb` programs and where they hook in.
const CGROUP_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// The tracepoint programs: (program, category, event).
const TRACEPOINTS: [(&str, &str, &str); 5] = [
    (SWITCH_PROGRAM, "sched", "sched_switch"),
    (WAKEUP_PROGRAM, "sched", "sched_wakeup"),
    (WAKEUP_NEW_PROGRAM, "sched", "sched_wakeup_new"),
    (MARK_VICTIM_PROGRAM, "oom", "mark_victim"),
    (RETRANSMIT_PROGRAM, "tcp", "tcp_retransmit_skb"),
];

/// The tracepoint fields the programs read, with the globals that receive
/// their offsets. `prev_state` is a `long`; the program reads its low byte.
const FIELDS: [Field; 8] = [
    Field {
        category: "sched",
        event: "sched_switch",
        field: "prev_pid",
        sizes: &[4],
        global: SWITCH_PREV_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_switch",
        field: "prev_state",
        sizes: &[4, 8],
        global: SWITCH_PREV_STATE_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_switch",
        field: "next_pid",
        sizes: &[4],
        global: SWITCH_NEXT_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_wakeup",
        field: "pid",
        sizes: &[4],
        global: WAKEUP_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "sched",
        event: "sched_wakeup_new",
        field: "pid",
        sizes: &[4],
        global: WAKEUP_NEW_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "oom",
        event: "mark_victim",
        field: "pid",
        sizes: &[4],
        global: MARK_VICTIM_PID_OFFSET,
        optional: false,
    },
    Field {
        category: "tcp",
        event: "tcp_retransmit_skb",
        field: "saddr_v6",
        sizes: &[16],
        global: RETRANSMIT_SADDR_V6_OFFSET,
        optional: false,
    },
    Field {
        category: "tcp",
        event: "tcp_retransmit_skb",
        field: "err",
        sizes: &[4],
        global: RETRANSMIT_ERR_OFFSET,
        optional: true,
    },
];

/// The maps pinned under the pin directory (file name = map name).
const PINNED_MAPS: [&str; 3] = [CGROUP_TRAFFIC_MAP, SCHED_STATS_MAP, TCP_RETRANS_MAP];

/// How often the log thread drains eBPF log records. They are rare (see
/// `riklet-ebpf`), so a slow poll is plenty and costs nothing.
const LOG_POLL: Duration = Duration::from_millis(500);

/// Errors of the eBPF probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The riklet was built with an empty object instead of the real one.
    #[error(
        "the embedded eBPF object is empty: build it with `cargo xtask build-ebpf` and rebuild the riklet"
    )]
    EmptyObject,

    /// The kernel or aya refused the object (maps, relocations, BTF, globals).
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

    /// Attaching a program to its tracepoint failed.
    #[error("attaching eBPF program `{program}` to tracepoint {category}/{event}")]
    AttachTracepoint {
        /// Program (function) name.
        program: &'static str,
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        event: &'static str,
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

    /// Pinning a map failed.
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

    /// tracefs (needed for tracepoint formats and ids) is mounted at
    /// neither `/sys/kernel/tracing` nor `/sys/kernel/debug/tracing`, and
    /// mounting it at the first failed.
    #[error(
        "tracefs is not mounted (no events/ under /sys/kernel/tracing or /sys/kernel/debug/tracing) and could not be mounted; mount it: mount -t tracefs tracefs /sys/kernel/tracing"
    )]
    Tracefs {
        /// The mount errno, if the mount itself failed.
        #[source]
        source: Option<nix::Error>,
    },

    /// A tracepoint format file lacks a field the programs read.
    #[error("tracepoint format {} has no field `{field}`", path.display())]
    TracepointField {
        /// The format file.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },

    /// A tracepoint field has a size the programs cannot read.
    #[error("tracepoint format {}: field `{field}` has {size} bytes, expected one of {expected:?}", path.display())]
    TracepointFieldSize {
        /// The format file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Its size in the format.
        size: u32,
        /// The sizes the program can read.
        expected: &'static [u32],
    },

    /// The number of possible CPUs (per-CPU map slots) is unknown.
    #[error("reading {path}")]
    Cpus {
        /// The sysfs file.
        path: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
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

    /// A file system operation (cgroup root, pin directory, tracepoint
    /// format) failed.
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
pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// Events the eBPF programs could not record since the load, summed over
/// CPUs. Non-zero means a full map (or ring buffer): figures are missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostEvents {
    /// Packets not counted (`CGROUP_TRAFFIC` full).
    pub traffic: u64,
    /// Scheduler events not counted (a scheduler map update failed).
    pub sched: u64,
    /// Slices not charged because the kernel did not run the `sched_switch`
    /// program for the switch that began them (it drops a few tracepoint
    /// events now and then); their on-CPU time and wait are missing.
    pub sched_unseen: u64,
    /// OOM events dropped (ring buffer full: not drained often enough).
    pub oom: u64,
    /// TCP retransmissions not counted (`TCP_RETRANS` full).
    pub retransmits: u64,
}

/// The loaded and attached eBPF programs, and the only handle to their maps.
///
/// Dropping it detaches the programs and removes its pins, as
/// [`close`](Self::close) does; `close` reports errors, `Drop` only logs them.
pub struct Probes {
    /// Drains eBPF log records into `log`; `None` if the object has no log
    /// map or the thread could not start. Stopped on close.
    log_pump: Option<LogPump>,
    /// The attached `cgroup_skb` programs, detached explicitly on close.
    cgroup_links: Vec<(&'static str, CgroupSkbLinkId)>,
    /// The attached tracepoint programs, detached explicitly on close.
    tracepoint_links: Vec<(&'static str, TracePointLinkId)>,
    /// Our map pins.
    pins: Vec<PathBuf>,
    /// The pin directory, removed on close if nothing else is left in it.
    pin_dir: PathBuf,
    /// Number of possible CPUs: the slots of a per-CPU map value.
    possible_cpus: usize,
    /// Whether `BPF_MAP_LOOKUP_BATCH` works here; cleared on the first
    /// "unsupported" answer, after which the `*_all` readers iterate.
    batch: AtomicBool,
    /// The OOM event ring buffer, taken out of `ebpf` to be owned mutably.
    oom_events: RingBuf<MapData>,
    /// Set by the first close, so that `close` followed by `Drop` is a no-op.
    closed: bool,
    /// Owns the programs and maps. Dropped last: it unloads the programs and
    /// detaches any link still attached.
    ebpf: Ebpf,
}

impl Probes {
    /// Loads the embedded object, attaches the `cgroup_skb` programs to
    /// `cgroup_root` and the tracepoint programs node-wide, and pins the
    /// per-cgroup maps under `pin_dir`.
    ///
    /// `cgroup_root` must be (or be created) in the cgroup v2 hierarchy; it
    /// is created if missing, so that attaching can happen before the first
    /// pod. Only sockets created in it or below it are counted by the
    /// traffic programs. `pin_dir` is created if missing; a bpffs is mounted
    /// at [`BPFFS_MOUNT`] first if needed, and tracefs at
    /// `/sys/kernel/tracing` if it is mounted nowhere. Map pins left by a
    /// crashed predecessor are removed: counters start from zero with each
    /// riklet process.
    ///
    /// The `cgroup_skb` programs are attached in
    /// [`CgroupAttachMode::Single`]: a second riklet on the same cgroup root
    /// fails here instead of counting twice.
    pub fn load(cgroup_root: &Path, pin_dir: &Path) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(ProbeError::EmptyObject);
        }

        // The record layouts first: a kernel without these tracepoints
        // fails before anything is created or attached.
        let tracefs = tracefs::tracefs()?;
        let mut offsets = [0u32; FIELDS.len()];
        for (offset, field) in offsets.iter_mut().zip(&FIELDS) {
            *offset = tracefs::offset(&tracefs, field)?;
        }
        let possible_cpus =
            aya::util::nr_cpus().map_err(|(path, source)| ProbeError::Cpus { path, source })?;

        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir).map_err(|source| ProbeError::Io {
            action: "creating pin directory",
            path: pin_dir.to_owned(),
            source,
        })?;
        let pins: Vec<PathBuf> = PINNED_MAPS.iter().map(|map| pin_dir.join(map)).collect();
        for pin in &pins {
            remove_pin(pin)?;
        }

        let cgroup = open_cgroup_root(cgroup_root)?;

        let mut loader = EbpfLoader::new();
        for (offset, field) in offsets.iter().zip(&FIELDS) {
            loader.override_global(field.global, offset, true);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        // Must happen before the programs load: the logger takes the log map
        // out of `ebpf`, and the programs refer to its file descriptor.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                warn!(%error, "eBPF logging unavailable; the probes work without it");
                None
            }
        };

        // Check the maps' shapes before anything is attached.
        percpu_hash::<u64, CgroupTraffic>(&ebpf, CGROUP_TRAFFIC_MAP)?;
        percpu_hash::<u64, SchedStats>(&ebpf, SCHED_STATS_MAP)?;
        percpu_hash::<Address, u64>(&ebpf, TCP_RETRANS_MAP)?;
        for map in [
            TRAFFIC_LOST_MAP,
            SCHED_LOST_MAP,
            OOM_LOST_MAP,
            TCP_RETRANS_LOST_MAP,
        ] {
            lost_counter(&ebpf, map)?;
        }
        let oom_events = ebpf
            .take_map(OOM_EVENTS_MAP)
            .ok_or(ProbeError::MapMissing {
                map: OOM_EVENTS_MAP,
            })
            .and_then(|map| RingBuf::try_from(map).map_err(map_error(OOM_EVENTS_MAP)))?;

        // From here on, an early return drops `ebpf`, which detaches
        // whatever was attached.
        let mut cgroup_links = Vec::with_capacity(CGROUP_PROGRAMS.len());
        for (program, attach_type) in CGROUP_PROGRAMS {
            let link = attach_cgroup(&mut ebpf, program, attach_type, &cgroup, cgroup_root)?;
            cgroup_links.push((program, link));
        }
        let mut tracepoint_links = Vec::with_capacity(TRACEPOINTS.len());
        for (program, category, event) in TRACEPOINTS {
            let link = attach_tracepoint(&mut ebpf, program, category, event)?;
            tracepoint_links.push((program, link));
        }
        switch_every_cpu();

        for (map, path) in PINNED_MAPS.into_iter().zip(&pins) {
            ebpf.map(map)
                .ok_or(ProbeError::MapMissing { map })?
                .pin(path)
                .map_err(|source| ProbeError::Pin {
                    map,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
        }

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
            tracefs = %tracefs.display(),
            "eBPF probes attached"
        );
        Ok(Self {
            log_pump,
            cgroup_links,
            tracepoint_links,
            pins,
            pin_dir: pin_dir.to_owned(),
            possible_cpus,
            batch: AtomicBool::new(true),
            oom_events,
            closed: false,
            ebpf,
        })
    }

    /// One cgroup's network counters, summed over CPUs; `None` if that
    /// cgroup (id from [`cgroup_id`]) has no traffic yet or was forgotten.
    pub fn traffic(&self, cgroup_id: u64) -> Result<Option<CgroupTraffic>> {
        self.read_one(CGROUP_TRAFFIC_MAP, cgroup_id, add_traffic)
    }

    /// Every cgroup's network counters, summed over CPUs.
    ///
    /// One pass over the map (batch lookups where the kernel has them):
    /// entries added or removed meanwhile may or may not show up.
    pub fn traffic_all(&self) -> Result<HashMap<u64, CgroupTraffic>> {
        self.read_all(CGROUP_TRAFFIC_MAP, add_traffic)
    }

    /// One cgroup's scheduler figures, summed over CPUs; `None` if none of
    /// its tasks left a CPU since the load (or it was forgotten, or evicted
    /// from the LRU map).
    pub fn sched(&self, cgroup_id: u64) -> Result<Option<SchedStats>> {
        self.read_one(SCHED_STATS_MAP, cgroup_id, add_sched)
    }

    /// Every cgroup's scheduler figures, summed over CPUs, in one pass over
    /// the map as for [`traffic_all`](Self::traffic_all).
    pub fn sched_all(&self) -> Result<HashMap<u64, SchedStats>> {
        self.read_all(SCHED_STATS_MAP, add_sched)
    }

    /// TCP retransmissions per source address (IPv4 addresses as such, not
    /// mapped), summed over CPUs, in one pass over the map as for
    /// [`traffic_all`](Self::traffic_all). Counts start when the address
    /// first retransmits after the load or after
    /// [`forget_address`](Self::forget_address).
    pub fn retransmits_all(&self) -> Result<HashMap<IpAddr, u64>> {
        let by_address: HashMap<Address, u64> = self
            .read_all(TCP_RETRANS_MAP, |total: u64, cpu: &u64| {
                total.wrapping_add(*cpu)
            })?;
        Ok(by_address
            .into_iter()
            .map(|(address, count)| (Ipv6Addr::from(address).to_canonical(), count))
            .collect())
    }

    /// The OOM kills recorded since the last call, oldest first. Never
    /// blocks; empty if there are none. To wait for events, poll
    /// [`oom_events_fd`](Self::oom_events_fd) for readability.
    pub fn oom_events(&mut self) -> Vec<OomEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.oom_events.next() {
            if item.len() < size_of::<OomEvent>() {
                warn!(len = item.len(), "short OOM event record ignored");
                continue;
            }
            // SAFETY: the record holds at least one `OomEvent`, which is
            // `Pod`; ring buffer records are only 8-byte aligned.
            events.push(unsafe { item.as_ptr().cast::<OomEvent>().read_unaligned() });
        }
        events
    }

    /// The OOM ring buffer's file descriptor, readable when events wait
    /// (for epoll or `tokio::io::unix::AsyncFd`).
    pub fn oom_events_fd(&self) -> BorrowedFd<'_> {
        self.oom_events.as_fd()
    }

    /// What each CPU runs now: the tasks (pid and switch-in time) on a
    /// CPU, idle CPUs left out. Their current slices are not in
    /// [`sched_all`](Self::sched_all) yet.
    pub fn running(&self) -> Result<Vec<OnCpu>> {
        let found: &Map = self
            .ebpf
            .map(ON_CPU_MAP)
            .ok_or(ProbeError::MapMissing { map: ON_CPU_MAP })?;
        let slots = PerCpuArray::<&MapData, OnCpu>::try_from(found)
            .map_err(map_error(ON_CPU_MAP))?
            .get(&0, 0)
            .map_err(map_error(ON_CPU_MAP))?;
        Ok(slots
            .iter()
            .filter(|slot| slot.pid != 0 && slot.since_ns != 0)
            .copied()
            .collect())
    }

    /// Events the programs could not record since the load.
    pub fn lost(&self) -> Result<LostEvents> {
        Ok(LostEvents {
            traffic: self.lost_count(TRAFFIC_LOST_MAP, 0)?,
            sched: self.lost_count(SCHED_LOST_MAP, 0)?,
            sched_unseen: self.lost_count(SCHED_LOST_MAP, SCHED_LOST_UNSEEN)?,
            oom: self.lost_count(OOM_LOST_MAP, 0)?,
            retransmits: self.lost_count(TCP_RETRANS_LOST_MAP, 0)?,
        })
    }

    /// Drops a deleted pod cgroup's entries from every per-cgroup map, so
    /// that the bounded maps do not fill up with dead ids. Forgetting an id
    /// without entries is fine.
    pub fn forget(&mut self, cgroup_id: u64) -> Result<()> {
        remove_entry::<u64, CgroupTraffic>(&mut self.ebpf, CGROUP_TRAFFIC_MAP, &cgroup_id)?;
        remove_entry::<u64, SchedStats>(&mut self.ebpf, SCHED_STATS_MAP, &cgroup_id)
    }

    /// Drops an address's retransmission count: one that is no pod's (any
    /// more), so that the map keeps room for pods, and a reused pod address
    /// starts from zero. Forgetting an address without an entry is fine.
    pub fn forget_address(&mut self, address: IpAddr) -> Result<()> {
        let key = match address {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }
        .octets();
        remove_entry::<Address, u64>(&mut self.ebpf, TCP_RETRANS_MAP, &key)
    }

    /// Detaches the programs and removes every pin it created (the map pins,
    /// and the pin directory if it is left empty). Also done on drop.
    pub fn close(mut self) -> Result<()> {
        self.shut_down()
    }

    fn read_one<V: Pod + Default>(
        &self,
        map: &'static str,
        cgroup_id: u64,
        fold: impl Fn(V, &V) -> V,
    ) -> Result<Option<V>> {
        match percpu_hash::<u64, V>(&self.ebpf, map)?.get(&cgroup_id, 0) {
            Ok(values) => Ok(Some(values.iter().fold(V::default(), fold))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error(map)(source)),
        }
    }

    fn read_all<K: Pod + Default + Eq + Hash, V: Pod + Default>(
        &self,
        map: &'static str,
        fold: impl Fn(V, &V) -> V,
    ) -> Result<HashMap<K, V>> {
        let typed = percpu_hash::<K, V>(&self.ebpf, map)?;
        if self.batch.load(Ordering::Relaxed) {
            let fd = typed.map().fd().as_fd();
            match batch::lookup_percpu(fd, self.possible_cpus, &fold) {
                Ok(entries) => return Ok(entries),
                Err(error) if batch::unsupported(&error) => {
                    warn!(map, %error, "BPF_MAP_LOOKUP_BATCH unsupported, iterating maps instead");
                    self.batch.store(false, Ordering::Relaxed);
                }
                Err(io_error) => {
                    return Err(map_error(map)(MapError::SyscallError(SyscallError {
                        call: "BPF_MAP_LOOKUP_BATCH",
                        io_error,
                    })));
                }
            }
        }
        typed
            .iter()
            .map(|entry| {
                let (key, values) = entry.map_err(map_error(map))?;
                Ok((key, values.iter().fold(V::default(), &fold)))
            })
            .collect()
    }

    fn lost_count(&self, map: &'static str, slot: u32) -> Result<u64> {
        let values = lost_counter(&self.ebpf, map)?
            .get(&slot, 0)
            .map_err(map_error(map))?;
        Ok(values
            .iter()
            .fold(0u64, |total, cpu| total.wrapping_add(*cpu)))
    }

    /// Tears everything down once, trying every step and returning the
    /// first error.
    fn shut_down(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut first_error = None;
        for (program, link) in std::mem::take(&mut self.cgroup_links) {
            if let Err(error) = detach_cgroup(&mut self.ebpf, program, link) {
                first_error.get_or_insert(error);
            }
        }
        for (program, link) in std::mem::take(&mut self.tracepoint_links) {
            if let Err(error) = detach_tracepoint(&mut self.ebpf, program, link) {
                first_error.get_or_insert(error);
            }
        }
        for pin in &self.pins {
            if let Err(error) = remove_pin(pin) {
                first_error.get_or_insert(error);
            }
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
                first_error.get_or_insert(ProbeError::Unpin {
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

impl Drop for Probes {
    fn drop(&mut self) {
        if let Err(error) = self.shut_down() {
            warn!(error = %crate::error_chain(&error), "closing eBPF probes");
        }
    }
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("pins", &self.pins)
            .field(
                "programs",
                &self
                    .cgroup_links
                    .iter()
                    .map(|(p, _)| p)
                    .chain(self.tracepoint_links.iter().map(|(p, _)| p))
                    .collect::<Vec<_>>(),
            )
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// Folds one CPU's traffic into a total.
fn add_traffic(total: CgroupTraffic, cpu: &CgroupTraffic) -> CgroupTraffic {
    total.wrapping_add(*cpu)
}

/// Folds one CPU's scheduler figures into a total.
fn add_sched(total: SchedStats, cpu: &SchedStats) -> SchedStats {
    total.wrapping_add(cpu)
}

/// The wall-clock time of a `bpf_ktime_get_ns` timestamp (`CLOCK_MONOTONIC`,
/// as in [`OomEvent::timestamp_ns`]), computed from the current offset
/// between the two clocks (exact unless the wall clock was stepped since).
pub fn monotonic_to_system_time(timestamp_ns: u64) -> SystemTime {
    let now = SystemTime::now();
    let Some(monotonic_now) = monotonic_now() else {
        return now;
    };
    let event = Duration::from_nanos(timestamp_ns);
    match monotonic_now.checked_sub(event) {
        Some(ago) => now.checked_sub(ago).unwrap_or(now),
        None => now + (event - monotonic_now),
    }
}

/// `CLOCK_MONOTONIC` now: the clock of `bpf_ktime_get_ns` timestamps.
pub fn monotonic_now() -> Option<Duration> {
    let mut monotonic = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` to a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut monotonic) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(monotonic.tv_sec).ok()?,
        u32::try_from(monotonic.tv_nsec).ok()?,
    ))
}

/// Makes every CPU this process may use switch tasks (out and back in), so
/// that the `sched_switch` program has seen what each one runs. A task on
/// a CPU since before the attach would otherwise have no `ON_CPU` slot
/// until it leaves the CPU, which a lone spinner may never do: its time in
/// progress would be missed and it would look idle. A thread pinned to the
/// CPU wakes there (the task on the CPU is switched out, then back in when
/// the thread ends). Best effort: a CPU that refuses the thread is skipped.
fn switch_every_cpu() {
    let Ok(allowed) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return;
    };
    std::thread::scope(|scope| {
        for cpu in (0..nix::sched::CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false))
        {
            scope.spawn(move || {
                let mut only = nix::sched::CpuSet::new();
                if only.set(cpu).is_ok()
                    && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).is_ok()
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
    });
}

/// Loads one `cgroup_skb` program (the verifier runs here) and attaches it.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    program: &'static str,
    attach_type: CgroupSkbAttachType,
    cgroup: &File,
    cgroup_path: &Path,
) -> Result<CgroupSkbLinkId> {
    let prog: &mut CgroupSkb = typed_program(ebpf, program, load_error(program))?;
    prog.load().map_err(load_error(program))?;
    prog.attach(cgroup, attach_type, CgroupAttachMode::Single)
        .map_err(|source| ProbeError::Attach {
            program,
            path: cgroup_path.to_owned(),
            source: Box::new(source),
        })
}

/// Loads one tracepoint program and attaches it.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &'static str,
    event: &'static str,
) -> Result<TracePointLinkId> {
    let prog: &mut TracePoint = typed_program(ebpf, program, load_error(program))?;
    prog.load().map_err(load_error(program))?;
    prog.attach(category, event)
        .map_err(|source| ProbeError::AttachTracepoint {
            program,
            category,
            event,
            source: Box::new(source),
        })
}

fn detach_cgroup(ebpf: &mut Ebpf, program: &'static str, link: CgroupSkbLinkId) -> Result<()> {
    let prog: &mut CgroupSkb = typed_program(ebpf, program, detach_error(program))?;
    prog.detach(link).map_err(detach_error(program))
}

fn detach_tracepoint(ebpf: &mut Ebpf, program: &'static str, link: TracePointLinkId) -> Result<()> {
    let prog: &mut TracePoint = typed_program(ebpf, program, detach_error(program))?;
    prog.detach(link).map_err(detach_error(program))
}

/// The program named `program` as a `P`; `error` wraps a type mismatch.
fn typed_program<'a, P>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
    error: impl Fn(ProgramError) -> ProbeError,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or(ProbeError::ProgramMissing { program })?
        .try_into()
        .map_err(error)
}

fn load_error(program: &'static str) -> impl Fn(ProgramError) -> ProbeError {
    move |source| ProbeError::LoadProgram {
        program,
        source: Box::new(source),
    }
}

fn detach_error(program: &'static str) -> impl Fn(ProgramError) -> ProbeError {
    move |source| ProbeError::Detach {
        program,
        source: Box::new(source),
    }
}

/// Creates `path` if missing and opens it, after checking that it is (or
/// would be) in the cgroup v2 hierarchy, so that a missing v2 mount does not
/// end in directories on the tmpfs at /sys/fs/cgroup.
fn open_cgroup_root(path: &Path) -> Result<File> {
    let existing = nearest_existing(path);
    if !is_fs(existing, CGROUP2_SUPER_MAGIC)? {
        return Err(ProbeError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    fs::create_dir_all(path).map_err(|source| ProbeError::Io {
        action: "creating cgroup",
        path: path.to_owned(),
        source,
    })?;
    File::open(path).map_err(|source| ProbeError::Io {
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
        return Err(ProbeError::NotBpffs {
            path: pin_dir.to_owned(),
        });
    }
    fs::create_dir_all(mount_point).map_err(|source| ProbeError::Io {
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
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn is_fs(path: &Path, fs_type: FsType) -> Result<bool> {
    let stat = statfs(path).map_err(|source| ProbeError::Statfs {
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
        Err(source) => Err(ProbeError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A per-CPU hash map, typed; fails if the object's map has another shape.
fn percpu_hash<'a, K: Pod, V: Pod>(
    ebpf: &'a Ebpf,
    map: &'static str,
) -> Result<PerCpuHashMap<&'a MapData, K, V>> {
    let found: &Map = ebpf.map(map).ok_or(ProbeError::MapMissing { map })?;
    PerCpuHashMap::try_from(found).map_err(map_error(map))
}

/// A `*_LOST` counter map, typed.
fn lost_counter<'a>(ebpf: &'a Ebpf, map: &'static str) -> Result<PerCpuArray<&'a MapData, u64>> {
    let found: &Map = ebpf.map(map).ok_or(ProbeError::MapMissing { map })?;
    PerCpuArray::try_from(found).map_err(map_error(map))
}

/// Removes one key from a per-CPU hash map; a missing key is fine.
fn remove_entry<K: Pod, V: Pod>(ebpf: &mut Ebpf, map: &'static str, key: &K) -> Result<()> {
    let found = ebpf.map_mut(map).ok_or(ProbeError::MapMissing { map })?;
    let mut typed = PerCpuHashMap::<&mut MapData, K, V>::try_from(found).map_err(map_error(map))?;
    match typed.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(map_error(map)(source)),
    }
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map {
        map,
        source: Box::new(source),
    }
}

/// A thread that moves aya-log records from the eBPF ring buffer into the
/// `log` facade (which the riklet bridges into `tracing`).
///
/// Someone has to drain the ring buffer or the records never appear; the
/// probes are synchronous and the records rare, so a thread that wakes a
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
