//! The proxy's pins, all under `<pin_dir>/proxy` (apart from the node
//! monitor's, which sit in `<pin_dir>` itself): the maps, pinned by name by
//! the loader and reused by the next riklet, and one link per program.
//!
//! A link is replaced without a gap: the new one is attached next to the
//! old one (multi-attach), pinned under a staging name, then renamed over
//! the old pin, which drops the old link in the same step. At every moment
//! one of the two is pinned, so a riklet killed half-way leaves the
//! datapath attached.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapInfo, MapType},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Program, ProgramError,
        links::FdLink,
    },
};
use riklet_common::proxy::{
    self as lb, AFFINITY_MAP, BACKENDS_MAP, BYTES_IN_PROGRAM, BYTES_OUT_PROGRAM, CONNECT4_PROGRAM,
    COUNTERS_MAP, GETPEERNAME4_PROGRAM, NODE_ADDRS_MAP, PINNED_MAPS, RECVMSG4_PROGRAM, REVNAT_MAP,
    SENDMSG4_PROGRAM, SERVICES_MAP, SOCKETS_MAP,
};
use tracing::{debug, warn};

use super::{
    Result, SocketLbError,
    error::{io_error, program_error},
};
use crate::metrics::ebpf::pins::{ensure_bpffs, remove_dir_if_empty, remove_pin};

/// The proxy's directory below the riklet's pin directory.
const SUBDIR: &str = "proxy";

/// How a program hooks into the cgroup.
#[derive(Clone, Copy)]
enum Hook {
    /// A socket address program; the attach type comes from its section.
    SockAddr,
    /// A `cgroup_skb` program.
    Skb(CgroupSkbAttachType),
}

/// The programs, each attached to the cgroup root through a pinned link.
const PROGRAMS: [(&str, Hook); 6] = [
    (CONNECT4_PROGRAM, Hook::SockAddr),
    (SENDMSG4_PROGRAM, Hook::SockAddr),
    (RECVMSG4_PROGRAM, Hook::SockAddr),
    (GETPEERNAME4_PROGRAM, Hook::SockAddr),
    (BYTES_IN_PROGRAM, Hook::Skb(CgroupSkbAttachType::Ingress)),
    (BYTES_OUT_PROGRAM, Hook::Skb(CgroupSkbAttachType::Egress)),
];

/// `BPF_F_NO_PREALLOC`, with which the hash maps the user space rewrites
/// are created.
const NO_PREALLOC: u32 = 1;

/// What a pinned map must look like for the programs of this riklet.
struct Shape {
    map: &'static str,
    map_type: MapType,
    key: usize,
    value: usize,
    max_entries: u32,
    flags: u32,
}

/// The shapes of [`PINNED_MAPS`], as `riklet-proxy` declares them.
const SHAPES: [Shape; 7] = [
    Shape {
        map: SERVICES_MAP,
        map_type: MapType::Hash,
        key: size_of::<lb::ServiceKey>(),
        value: size_of::<lb::ServiceValue>(),
        max_entries: lb::SERVICES_MAX_ENTRIES,
        flags: NO_PREALLOC,
    },
    Shape {
        map: BACKENDS_MAP,
        map_type: MapType::Hash,
        key: size_of::<lb::BackendKey>(),
        value: size_of::<lb::BackendValue>(),
        max_entries: lb::BACKENDS_MAX_ENTRIES,
        flags: NO_PREALLOC,
    },
    Shape {
        map: NODE_ADDRS_MAP,
        map_type: MapType::Hash,
        key: size_of::<u32>(),
        value: size_of::<u8>(),
        max_entries: lb::NODE_ADDRS_MAX_ENTRIES,
        flags: NO_PREALLOC,
    },
    Shape {
        map: REVNAT_MAP,
        map_type: MapType::LruHash,
        key: size_of::<lb::RevNatKey>(),
        value: size_of::<lb::RevNatValue>(),
        max_entries: lb::SOCKETS_MAX_ENTRIES,
        flags: 0,
    },
    Shape {
        map: AFFINITY_MAP,
        map_type: MapType::LruHash,
        key: size_of::<lb::AffinityKey>(),
        value: size_of::<lb::AffinityValue>(),
        max_entries: lb::SOCKETS_MAX_ENTRIES,
        flags: 0,
    },
    Shape {
        map: COUNTERS_MAP,
        map_type: MapType::PerCpuHash,
        key: size_of::<lb::ServiceKey>(),
        value: size_of::<lb::ServiceStats>(),
        max_entries: lb::SERVICES_MAX_ENTRIES,
        flags: 0,
    },
    Shape {
        map: SOCKETS_MAP,
        map_type: MapType::LruHash,
        key: size_of::<u64>(),
        value: size_of::<lb::ServiceKey>(),
        max_entries: lb::SOCKETS_MAX_ENTRIES,
        flags: 0,
    },
];

/// `<pin_dir>/proxy`.
pub(super) fn proxy_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(SUBDIR)
}

/// Makes `<pin_dir>/proxy` ready for the loader: on a bpffs (mounted if
/// need be), created, and without pinned maps that the programs of this
/// riklet cannot use (left by a riklet of another version; the loader would
/// otherwise reuse them blindly). Returns the directory.
pub(super) fn prepare(pin_dir: &Path) -> Result<PathBuf> {
    ensure_bpffs(pin_dir).map_err(SocketLbError::Host)?;
    let dir = proxy_dir(pin_dir);
    fs::create_dir_all(&dir).map_err(io_error("creating pin directory", &dir))?;
    for shape in &SHAPES {
        let path = dir.join(shape.map);
        if !path.exists() {
            continue;
        }
        if let Some(mismatch) = mismatch(&path, shape) {
            warn!(map = shape.map, path = %path.display(), %mismatch, "pinned proxy map does not fit these programs; starting it afresh");
            remove_pin(&path).map_err(SocketLbError::Host)?;
        }
    }
    Ok(dir)
}

/// Why the map pinned at `path` does not have `shape`, if it does not.
fn mismatch(path: &Path, shape: &Shape) -> Option<String> {
    let info = match MapInfo::from_pin(path) {
        Ok(info) => info,
        Err(error) => return Some(format!("unreadable: {error}")),
    };
    let found = (
        info.map_type().ok(),
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
        info.map_flags(),
    );
    let wanted = (
        Some(shape.map_type),
        shape.key,
        shape.value,
        shape.max_entries,
        shape.flags,
    );
    (found != wanted)
        .then(|| format!("(type, key, value, max entries, flags) {found:?}, expected {wanted:?}"))
}

/// The link pin of `program`.
fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// Where the link of `program` is pinned before it replaces the old one.
/// (bpffs refuses names with a dot.)
fn staged_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("staged_{program}"))
}

/// Our attached links: the file descriptors (the kernel detaches a link
/// when its last descriptor and pin are gone) and their pins.
#[derive(Debug)]
pub(super) struct Links {
    links: Vec<(&'static str, FdLink)>,
}

impl Links {
    /// Loads (verifies) every program, then attaches each to `cgroup` and
    /// pins its link in `dir` over the one a predecessor pinned. On an
    /// error, links already pinned stay: they serve until the next load or
    /// [`remove_all`].
    pub(super) fn attach(ebpf: &mut Ebpf, cgroup: &File, dir: &Path) -> Result<Self> {
        for (program, hook) in PROGRAMS {
            let loaded = match hook {
                Hook::SockAddr => typed::<CgroupSockAddr>(ebpf, program)?.load(),
                Hook::Skb(_) => typed::<CgroupSkb>(ebpf, program)?.load(),
            };
            loaded.map_err(program_error("loading", program))?;
        }
        let mut links = Vec::with_capacity(PROGRAMS.len());
        for (program, hook) in PROGRAMS {
            let link = attach_one(ebpf, program, hook, cgroup)?;
            links.push((program, pin_over(link, program, dir)?));
        }
        Ok(Self { links })
    }

    /// The names of the attached programs.
    pub(super) fn programs(&self) -> Vec<&'static str> {
        self.links.iter().map(|(program, _)| *program).collect()
    }
}

/// Attaches `program` to `cgroup` with a bpf link. A bpf link always joins
/// the programs already attached (the kernel takes no flags for cgroup
/// links; `Single` asks for none), which is what lets the new link run next
/// to the old one.
fn attach_one(ebpf: &mut Ebpf, program: &'static str, hook: Hook, cgroup: &File) -> Result<FdLink> {
    let mode = CgroupAttachMode::Single;
    let attach_error = program_error("attaching", program);
    let link_error = program_error("taking the link of", program);
    let not_a_link = |source| SocketLbError::NotALink { program, source };
    match hook {
        Hook::SockAddr => {
            let prog = typed::<CgroupSockAddr>(ebpf, program)?;
            let id = prog.attach(cgroup, mode).map_err(attach_error)?;
            FdLink::try_from(prog.take_link(id).map_err(link_error)?).map_err(not_a_link)
        }
        Hook::Skb(attach_type) => {
            let prog = typed::<CgroupSkb>(ebpf, program)?;
            let id = prog
                .attach(cgroup, attach_type, mode)
                .map_err(attach_error)?;
            FdLink::try_from(prog.take_link(id).map_err(link_error)?).map_err(not_a_link)
        }
    }
}

/// Pins `link` over the old pin of `program` in `dir`.
fn pin_over(link: FdLink, program: &'static str, dir: &Path) -> Result<FdLink> {
    let staged = staged_pin(dir, program);
    // A staging pin left by a riklet killed right after making it.
    remove_pin(&staged).map_err(SocketLbError::Host)?;
    let pinned = link.pin(&staged).map_err(|source| SocketLbError::Pin {
        program,
        path: staged.clone(),
        source: Box::new(source),
    })?;
    let pin = link_pin(dir, program);
    // Atomic on bpffs: the old link loses its pin, and with it its last
    // reference, only once the new one is pinned in its place.
    fs::rename(&staged, &pin).map_err(io_error("replacing link pin", &pin))?;
    debug!(program, pin = %pin.display(), "proxy program attached");
    Ok(FdLink::from(pinned))
}

/// The program named `program` as a `P`.
fn typed<'a, P>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or(SocketLbError::Missing {
            kind: "program",
            name: program,
        })?
        .try_into()
        .map_err(program_error("typing", program))
}

/// Removes every proxy pin under `pin_dir` (links first, which detaches
/// their programs once no process holds them, then maps), then
/// `<pin_dir>/proxy` and `pin_dir` if left empty. Tries every step and
/// returns the first error.
pub(super) fn remove_all(pin_dir: &Path) -> Result<()> {
    let dir = proxy_dir(pin_dir);
    let links = PROGRAMS
        .iter()
        .flat_map(|(program, _)| [link_pin(&dir, program), staged_pin(&dir, program)]);
    let maps = PINNED_MAPS.iter().map(|map| dir.join(map));
    let mut result = Ok(());
    for pin in links.chain(maps) {
        result = result.and(remove_pin(&pin).map_err(SocketLbError::Host));
    }
    // The monitor may still pin in `pin_dir`: only empty directories go.
    result
        .and(remove_dir_if_empty(&dir).map_err(SocketLbError::Host))
        .and(remove_dir_if_empty(pin_dir).map_err(SocketLbError::Host))
}
