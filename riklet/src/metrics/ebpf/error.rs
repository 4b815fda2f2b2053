//! [`ProbeError`], the errors of the eBPF probes, and the closures that
//! wrap aya's and the kernel's errors into it with their context.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{EbpfError, maps::MapError, pin::PinError, programs::ProgramError};

use super::BPFFS_MOUNT;

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

/// Wraps a map operation's error with the map's name.
pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map {
        map,
        source: Box::new(source),
    }
}

/// Wraps a program's load (or type check) error with its name.
pub(super) fn load_error(program: &'static str) -> impl Fn(ProgramError) -> ProbeError {
    move |source| ProbeError::LoadProgram {
        program,
        source: Box::new(source),
    }
}

/// Wraps a program's detach error with its name.
pub(super) fn detach_error(program: &'static str) -> impl Fn(ProgramError) -> ProbeError {
    move |source| ProbeError::Detach {
        program,
        source: Box::new(source),
    }
}

/// Wraps a file system error with what was done and where.
pub(super) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
