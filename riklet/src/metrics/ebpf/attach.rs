//! Loading and attaching the programs: the `cgroup_skb` pair at the cgroup
//! root, the tracepoints node-wide, and detaching them all on close.

use std::{
    fs::{self, File},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, TracePoint,
        cgroup_skb::CgroupSkbLinkId, trace_point::TracePointLinkId,
    },
};
use nix::sys::statfs::CGROUP2_SUPER_MAGIC;
use riklet_common::{
    net::{EGRESS_PROGRAM, INGRESS_PROGRAM},
    oom::MARK_VICTIM_PROGRAM,
    sched::{SWITCH_PROGRAM, WAKEUP_NEW_PROGRAM, WAKEUP_PROGRAM},
    tcp::RETRANSMIT_PROGRAM,
};

use super::{
    ProbeError, Result,
    error::{detach_error, io_error, load_error},
    first_error,
    pins::{is_fs, nearest_existing},
};

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

/// The attached programs, detached explicitly on close.
pub(super) struct Links {
    cgroup: Vec<(&'static str, CgroupSkbLinkId)>,
    tracepoint: Vec<(&'static str, TracePointLinkId)>,
}

impl Links {
    /// Loads every program (the verifier runs here) and attaches it: the
    /// `cgroup_skb` ones to `cgroup` (the directory `cgroup_path`), the
    /// tracepoints node-wide. On an error, what was attached stays attached
    /// until `ebpf` is dropped.
    pub(super) fn attach(ebpf: &mut Ebpf, cgroup: &File, cgroup_path: &Path) -> Result<Self> {
        let mut links = Self {
            cgroup: Vec::with_capacity(CGROUP_PROGRAMS.len()),
            tracepoint: Vec::with_capacity(TRACEPOINTS.len()),
        };
        for (program, attach_type) in CGROUP_PROGRAMS {
            let link = attach_cgroup(ebpf, program, attach_type, cgroup, cgroup_path)?;
            links.cgroup.push((program, link));
        }
        for (program, category, event) in TRACEPOINTS {
            let link = attach_tracepoint(ebpf, program, category, event)?;
            links.tracepoint.push((program, link));
        }
        Ok(links)
    }

    /// Detaches every program still attached, trying them all and
    /// returning the first error.
    pub(super) fn detach_all(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let cgroup = first_error(
            std::mem::take(&mut self.cgroup)
                .into_iter()
                .map(|(program, link)| detach_cgroup(ebpf, program, link)),
        );
        let tracepoint = first_error(
            std::mem::take(&mut self.tracepoint)
                .into_iter()
                .map(|(program, link)| detach_tracepoint(ebpf, program, link)),
        );
        cgroup.and(tracepoint)
    }

    /// The names of the attached programs.
    pub(super) fn programs(&self) -> Vec<&'static str> {
        self.cgroup
            .iter()
            .map(|(program, _)| *program)
            .chain(self.tracepoint.iter().map(|(program, _)| *program))
            .collect()
    }
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

/// Makes every CPU this process may use switch tasks (out and back in), so
/// that the `sched_switch` program has seen what each one runs. A task on
/// a CPU since before the attach would otherwise have no `ON_CPU` slot
/// until it leaves the CPU, which a lone spinner may never do: its time in
/// progress would be missed and it would look idle. A thread pinned to the
/// CPU wakes there (the task on the CPU is switched out, then back in when
/// the thread ends). Best effort: a CPU that refuses the thread is skipped.
pub(super) fn switch_every_cpu() {
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

/// Creates `path` if missing and opens it, after checking that it is (or
/// would be) in the cgroup v2 hierarchy, so that a missing v2 mount does not
/// end in directories on the tmpfs at /sys/fs/cgroup.
pub(crate) fn open_cgroup_root(path: &Path) -> Result<File> {
    let existing = nearest_existing(path);
    if !is_fs(existing, CGROUP2_SUPER_MAGIC)? {
        return Err(ProbeError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    fs::create_dir_all(path).map_err(io_error("creating cgroup", path))?;
    File::open(path).map_err(io_error("opening cgroup", path))
}
