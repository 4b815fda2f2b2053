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
//! - this file: [`Probes`], its load (in order) and its close;
//! - [`ProbeError`] (`error`): the errors of every step;
//! - `attach`: loading the programs and attaching them (cgroup root,
//!   tracepoints), detaching them on close;
//! - `tracefs`: tracepoint field offsets, read from tracefs at load time and
//!   handed to the programs as globals;
//! - `pins`: the map pins, the bpffs they need, their clean-up;
//! - readers, one file per family of maps: `traffic`, `sched`, `oom` (the
//!   ring buffer), `tcp` (retransmits), over the typed access of `maps`
//!   (which also has [`LostEvents`] and [`Probes::forget`]);
//! - [`batch`]: `BPF_MAP_LOOKUP_BATCH`, which aya lacks, for the `*_all`
//!   readers (they fall back to aya's iteration where the kernel lacks it);
//! - `clock`: the programs' monotonic timestamps as wall-clock time;
//! - `log_pump`: the thread that drains the programs' log records.
//!
//! # Pins and crashes
//! The per-cgroup maps are pinned under the pin directory (default
//! [`crate::config::paths::BPF_PIN_DIR`]) so that operators can look at them
//! with `bpftool map dump pinned …`. The links are deliberately not pinned:
//! if the riklet dies, the kernel detaches the programs with the last file
//! descriptor instead of leaving them counting for nobody. Only the map pins
//! outlive a crash, and the next [`Probes::load`] removes them.

pub(crate) mod attach;
pub mod batch;
mod clock;
mod error;
mod log_pump;
mod maps;
mod oom;
pub(crate) mod pins;
mod sched;
mod tcp;
mod tracefs;
mod traffic;

use std::{
    path::Path,
    sync::{Mutex, atomic::AtomicBool},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
};
pub use riklet_common::{
    net::CgroupTraffic,
    oom::OomEvent,
    sched::{OnCpu, RUNQ_BUCKETS, SchedStats},
};
use tracing::{debug, warn};

use attach::Links;
pub use clock::{monotonic_now, monotonic_to_system_time};
pub use error::ProbeError;
use log_pump::LogPump;
pub use maps::LostEvents;
pub use pins::BPFFS_MOUNT;
use pins::Pins;

pub use super::net::cgroup_id;

/// The object built by `cargo xtask build-ebpf` and copied by `build.rs`.
/// Aligned because the ELF parser reads it in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/riklet-ebpf.o"));

/// Result of this module.
pub type Result<T, E = ProbeError> = std::result::Result<T, E>;

/// The loaded and attached eBPF programs, and the only handle to their maps.
///
/// Dropping it detaches the programs and removes its pins, as
/// [`close`](Self::close) does; `close` reports errors, `Drop` only logs them.
pub struct Probes {
    /// Drains eBPF log records into `log`; `None` if the object has no log
    /// map or the thread could not start. Stopped on close.
    log_pump: Option<LogPump>,
    /// The attached programs, detached explicitly on close.
    links: Links,
    /// Our map pins and their directory.
    pins: Pins,
    /// Number of possible CPUs: the slots of a per-CPU map value.
    possible_cpus: usize,
    /// Whether `BPF_MAP_LOOKUP_BATCH` works here; cleared on the first
    /// "unsupported" answer, after which the `*_all` readers iterate.
    batch: AtomicBool,
    /// The batch lookups' buffers, kept between collection cycles.
    scratch: Mutex<batch::Scratch>,
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
    /// [`CgroupAttachMode::Single`](aya::programs::CgroupAttachMode::Single):
    /// a second riklet on the same cgroup root fails here instead of
    /// counting twice.
    pub fn load(cgroup_root: &Path, pin_dir: &Path) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(ProbeError::EmptyObject);
        }

        // The record layouts first: a kernel without these tracepoints
        // fails before anything is created or attached.
        let tracefs = tracefs::tracefs()?;
        let globals = tracefs::globals(&tracefs)?;
        let possible_cpus =
            aya::util::nr_cpus().map_err(|(path, source)| ProbeError::Cpus { path, source })?;

        let pins = Pins::prepare(pin_dir)?;
        let cgroup = attach::open_cgroup_root(cgroup_root)?;

        let mut loader = EbpfLoader::new();
        for (global, offset) in &globals {
            loader.override_global(global, offset, true);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        // Must happen before the programs load: the logger takes the log map
        // out of `ebpf`, and the programs refer to its file descriptor.
        let logger = log_pump::init_logger(&mut ebpf);

        // Check the maps' shapes before anything is attached.
        maps::check_shapes(&ebpf)?;
        let oom_events = oom::take_events(&mut ebpf)?;

        // From here on, an early return drops `ebpf`, which detaches
        // whatever was attached.
        let links = Links::attach(&mut ebpf, &cgroup, cgroup_root)?;
        attach::switch_every_cpu();
        pins.pin(&ebpf)?;

        let log_pump = logger.and_then(LogPump::start_or_warn);
        debug!(
            cgroup_root = %cgroup_root.display(),
            pin_dir = %pin_dir.display(),
            tracefs = %tracefs.display(),
            "eBPF probes attached"
        );
        Ok(Self {
            log_pump,
            links,
            pins,
            possible_cpus,
            batch: AtomicBool::new(true),
            scratch: Mutex::default(),
            oom_events,
            closed: false,
            ebpf,
        })
    }

    /// The names of the attached programs, for `riklet status`.
    pub fn programs(&self) -> Vec<&'static str> {
        self.links.programs()
    }

    /// Detaches the programs and removes every pin it created (the map pins,
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
        let detached = self.links.detach_all(&mut self.ebpf);
        let unpinned = self.pins.remove_all();
        if let Some(pump) = self.log_pump.take() {
            pump.stop();
        }
        detached.and(unpinned)
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
            .field("pins", &self.pins.paths())
            .field("programs", &self.links.programs())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// The first error of `results`, every one of which is run: a clean-up
/// step that fails does not stop the next.
fn first_error(results: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    results.into_iter().fold(Ok(()), Result::and)
}
