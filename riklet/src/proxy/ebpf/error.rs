//! [`SocketLbError`], the errors of the eBPF socket load-balancer.

use std::{io, path::PathBuf};

use aya::{
    EbpfError,
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, links::LinkError},
};

use crate::metrics::ebpf::ProbeError;
use crate::proxy::model::ServiceKey;

/// Errors of the eBPF socket load-balancer.
#[derive(Debug, thiserror::Error)]
pub enum SocketLbError {
    /// The riklet was built with an empty object instead of the real one.
    #[error(
        "the embedded eBPF proxy object is empty: build it with `cargo xtask build-ebpf` and rebuild the riklet"
    )]
    EmptyObject,

    /// The bpffs or the cgroup v2 root is not usable (the checks are the
    /// node monitor's).
    #[error("preparing the eBPF proxy's bpffs or cgroup")]
    Host(#[source] ProbeError),

    /// Reading the host network namespace's cookie failed (Linux < 5.14
    /// has no `SO_NETNS_COOKIE`).
    #[error("reading the host network namespace cookie (SO_NETNS_COOKIE)")]
    NetnsCookie(#[source] nix::Error),

    /// The kernel or aya refused the object (maps, BTF, globals, pins).
    #[error("parsing the eBPF proxy object or creating its maps under {}", dir.display())]
    Load {
        /// The proxy's pin directory.
        dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },

    /// The object lacks a program or map the riklet expects: built from
    /// another version of `riklet-ebpf`.
    #[error("the eBPF proxy object has no {kind} `{name}`")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        name: &'static str,
    },

    /// Loading (verifying) or attaching a program failed.
    #[error("{action} eBPF program `{program}`")]
    Program {
        /// What was done, e.g. "loading".
        action: &'static str,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },

    /// A link could not be turned into a pinnable one (the kernel attached
    /// without bpf links: Linux < 5.7).
    #[error("eBPF program `{program}` was not attached with a bpf link")]
    NotALink {
        program: &'static str,
        #[source]
        source: LinkError,
    },

    /// Pinning a link failed.
    #[error("pinning the link of `{program}` at {}", path.display())]
    Pin {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },

    /// A map operation failed.
    #[error("eBPF map `{map}`: {action}")]
    Map {
        map: &'static str,
        /// What was done, e.g. "writing service 80/TCP".
        action: String,
        #[source]
        source: Box<MapError>,
    },

    /// A service has more backends than the programs scan.
    #[error("service {service} has {count} backends, at most {max} are supported")]
    TooManyBackends {
        service: ServiceKey,
        count: usize,
        max: u32,
    },

    /// A file system operation on the pin directory failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was done, e.g. "removing pin".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Wraps a map error with the map and what was done.
pub(super) fn map_error(
    map: &'static str,
    action: impl Fn() -> String,
) -> impl FnOnce(MapError) -> SocketLbError {
    move |source| SocketLbError::Map {
        map,
        action: action(),
        source: Box::new(source),
    }
}

/// Wraps a program error with the program and what was done.
pub(super) fn program_error(
    action: &'static str,
    program: &'static str,
) -> impl FnOnce(ProgramError) -> SocketLbError {
    move |source| SocketLbError::Program {
        action,
        program,
        source: Box::new(source),
    }
}

/// Wraps a file system error with what was done and where.
pub(super) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> SocketLbError {
    let path = path.into();
    move |source| SocketLbError::Io {
        action,
        path,
        source,
    }
}
