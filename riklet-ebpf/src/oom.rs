//! OOM kills: [`oom_mark_victim`] sends an [`OomEvent`] through the
//! [`OOM_EVENTS`] ring buffer each time the kernel marks a process to be
//! killed for lack of memory.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use riklet_common::oom::{OOM_EVENTS_BYTES, OomEvent};

use crate::note_lost;

/// Byte offset of `pid` in the `mark_victim` record
/// (`riklet_common::oom::MARK_VICTIM_PID_OFFSET`), set by the loader.
#[unsafe(no_mangle)]
static MARK_VICTIM_PID_OFFSET: Global<u32> = Global::new(0);

/// The events, drained by user space (`riklet_common::oom::OOM_EVENTS_MAP`).
#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(OOM_EVENTS_BYTES, 0);

/// Events dropped (slot 0) because [`OOM_EVENTS`] was full.
#[map]
static OOM_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    if let Err(errno) = try_oom_mark_victim(&ctx) {
        note_lost(&ctx, &OOM_LOST, "OOM_EVENTS", errno);
    }
    0
}

fn try_oom_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: `ctx` is the tracepoint record and the offset is the one
    // tracefs gives for `pid`; `read_at` uses `bpf_probe_read_kernel`.
    let pid = unsafe { ctx.read_at::<u32>(MARK_VICTIM_PID_OFFSET.load() as usize)? };
    let event = OomEvent {
        // SAFETY: these helpers have no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid,
        // The low half is the task id (the high half the process id).
        trigger_pid: bpf_get_current_pid_tgid() as u32,
    };
    OOM_EVENTS.output::<OomEvent>(&event, 0)
}
