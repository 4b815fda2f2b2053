//! Scheduler tracepoints: per-cgroup on-CPU time and run-queue latency.
//!
//! - [`sched_wakeup`] / [`sched_wakeup_new`]: a task became runnable; note
//!   when, in [`RUNNABLE_SINCE`].
//! - [`sched_switch`]: `prev` leaves the CPU, `next` gets it. At this point
//!   the current task is still `prev`, so `bpf_get_current_cgroup_id` is
//!   `prev`'s cgroup. `prev` is charged what this CPU measured for it since
//!   its switch-in (kept in [`ON_CPU`]): its time on the CPU and the
//!   run-queue wait that preceded the switch-in. `next`'s wait ends now; it
//!   is kept in [`ON_CPU`] until `next` leaves the CPU in turn, because only
//!   then is `next`'s cgroup the current one. A task that leaves the CPU
//!   still runnable (preempted, yielding) is waiting again from now on.
//!
//! A running task never changes CPU (migration needs a switch-out first), so
//! the next `sched_switch` on a CPU has the task that [`ON_CPU`] names as
//! `prev` — unless the kernel did not run the program for a switch, which
//! happens (observed on 6.18: a few switches per second, with no
//! `recursion_misses` reported; the perf tracepoint path can drop events
//! silently). Such a slice is counted in [`SCHED_LOST`], not charged.
//! The idle task (pid 0) is neither timed nor charged.
//! Tracepoint field offsets are globals set by the loader from tracefs.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::TracePointContext,
};
use riklet_common::sched::{
    OnCpu, PREV_STATE_SLEEPING_MASK, RUNNABLE_SINCE_MAX_ENTRIES, SCHED_LOST_SLOTS,
    SCHED_LOST_UNSEEN, SCHED_STATS_MAX_ENTRIES, SchedStats, runq_bucket,
};

use crate::{EEXIST, note_lost};

/// `-ENOENT`: an entry vanished right after it was created (LRU eviction by
/// another CPU in between).
const ENOENT: i32 = 2;

/// Byte offset of `prev_pid` in the `sched_switch` record
/// (`riklet_common::sched::SWITCH_PREV_PID_OFFSET`).
#[unsafe(no_mangle)]
static SWITCH_PREV_PID_OFFSET: Global<u32> = Global::new(0);

/// Byte offset of `prev_state` in the `sched_switch` record.
#[unsafe(no_mangle)]
static SWITCH_PREV_STATE_OFFSET: Global<u32> = Global::new(0);

/// Byte offset of `next_pid` in the `sched_switch` record.
#[unsafe(no_mangle)]
static SWITCH_NEXT_PID_OFFSET: Global<u32> = Global::new(0);

/// Byte offset of `pid` in the `sched_wakeup` record.
#[unsafe(no_mangle)]
static WAKEUP_PID_OFFSET: Global<u32> = Global::new(0);

/// Byte offset of `pid` in the `sched_wakeup_new` record.
#[unsafe(no_mangle)]
static WAKEUP_NEW_PID_OFFSET: Global<u32> = Global::new(0);

/// Cgroup v2 id to scheduler figures (`riklet_common::sched::SCHED_STATS_MAP`).
/// Per-CPU: charged at every context switch, so CPUs must not share a cache
/// line per cgroup. LRU: every cgroup is counted and the map stays bounded.
#[map]
static SCHED_STATS: LruPerCpuHashMap<u64, SchedStats> =
    LruPerCpuHashMap::with_max_entries(SCHED_STATS_MAX_ENTRIES, 0);

/// Pid to the `bpf_ktime_get_ns` time it became runnable. Global (not
/// per-CPU): the waker may run on another CPU than the one the task then
/// runs on.
#[map]
static RUNNABLE_SINCE: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(RUNNABLE_SINCE_MAX_ENTRIES, 0);

/// Room to build a new [`SCHED_STATS`] value (slot 0): at 280 bytes it
/// would take more than half of the 512-byte BPF stack.
#[map]
static SCHED_SCRATCH: PerCpuArray<SchedStats> = PerCpuArray::with_max_entries(1, 0);

/// What this CPU is running and has measured for it, see [`OnCpu`].
#[map]
static ON_CPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// Scheduler events not accounted: slot 0 because a map update failed (also
/// the "already logged" flag of `note_lost`), slot
/// [`SCHED_LOST_UNSEEN`] because a switch was not seen.
#[map]
static SCHED_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(SCHED_LOST_SLOTS, 0);

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    if let Err(errno) = try_sched_switch(&ctx) {
        note_lost(&ctx, &SCHED_LOST, "SCHED_STATS/RUNNABLE_SINCE", errno);
    }
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: `ctx` is the tracepoint record; the offsets are those tracefs
    // gives for this event's fields and `read_at` goes through
    // `bpf_probe_read_kernel`, which fails cleanly on a bad address.
    let (prev_pid, prev_state, next_pid) = unsafe {
        (
            ctx.read_at::<u32>(SWITCH_PREV_PID_OFFSET.load() as usize)?,
            // The low byte of a `long` (little-endian): all the sleeping
            // bits are there.
            ctx.read_at::<u8>(SWITCH_PREV_STATE_OFFSET.load() as usize)?,
            ctx.read_at::<u32>(SWITCH_NEXT_PID_OFFSET.load() as usize)?,
        )
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(on_cpu) = ON_CPU.get_ptr_mut(0) else {
        // Index 0 of a one-slot array always exists.
        return Ok(());
    };
    // SAFETY: this CPU's slot of a per-CPU array, which only programs on
    // this CPU touch; tracepoint programs do not nest.
    let on_cpu = unsafe { &mut *on_cpu };

    let mut result = Ok(());
    if prev_pid != 0 {
        if on_cpu.pid == prev_pid && on_cpu.since_ns != 0 {
            let runq_ns = (on_cpu.runq_pending != 0).then_some(on_cpu.runq_ns);
            result = charge(now.saturating_sub(on_cpu.since_ns), runq_ns);
        } else if on_cpu.since_ns != 0 {
            // The kernel did not run this program for the switch that put
            // `prev` on this CPU: when its slice began is unknown, so it is
            // not charged, only counted.
            count_unseen();
        }
        if prev_state & PREV_STATE_SLEEPING_MASK == 0 {
            // Still runnable: it waits in a run queue from now on.
            if let Err(errno) = RUNNABLE_SINCE.insert(prev_pid, now, 0) {
                result = Err(errno);
            }
        }
    }

    *on_cpu = OnCpu {
        pid: next_pid,
        runq_pending: 0,
        since_ns: now,
        runq_ns: 0,
    };
    if next_pid != 0
        && let Some(since) = RUNNABLE_SINCE.get_ptr(next_pid)
    {
        // SAFETY: a value of an LRU hash map; it may be overwritten by a
        // concurrent wakeup, which at worst yields a shorter wait.
        let since = unsafe { *since };
        on_cpu.runq_ns = now.saturating_sub(since);
        on_cpu.runq_pending = 1;
        // A miss means another CPU removed or evicted it: nothing to undo.
        let _ = RUNNABLE_SINCE.remove(next_pid);
    }
    result
}

/// Counts a slice not charged because its switch-in was not seen.
#[inline(always)]
fn count_unseen() {
    if let Some(unseen) = SCHED_LOST.get_ptr_mut(SCHED_LOST_UNSEEN) {
        // SAFETY: this CPU's slot of a per-CPU array; programs do not nest.
        let unseen = unsafe { &mut *unseen };
        *unseen = unseen.wrapping_add(1);
    }
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    if let Err(errno) = try_sched_wakeup(&ctx) {
        note_lost(&ctx, &SCHED_LOST, "RUNNABLE_SINCE", errno);
    }
    0
}

fn try_sched_wakeup(ctx: &TracePointContext) -> Result<(), i32> {
    runnable_now(ctx, WAKEUP_PID_OFFSET.load())
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    if let Err(errno) = try_sched_wakeup_new(&ctx) {
        note_lost(&ctx, &SCHED_LOST, "RUNNABLE_SINCE", errno);
    }
    0
}

fn try_sched_wakeup_new(ctx: &TracePointContext) -> Result<(), i32> {
    runnable_now(ctx, WAKEUP_NEW_PID_OFFSET.load())
}

/// Notes that the task whose pid is at `pid_offset` became runnable now.
#[inline(always)]
fn runnable_now(ctx: &TracePointContext, pid_offset: u32) -> Result<(), i32> {
    // SAFETY: as in `try_sched_switch`.
    let pid = unsafe { ctx.read_at::<u32>(pid_offset as usize)? };
    if pid == 0 {
        return Ok(());
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    RUNNABLE_SINCE.insert(pid, now, 0)
}

/// Adds to the current cgroup's figures on this CPU.
#[inline(always)]
fn charge(oncpu_ns: u64, runq_ns: Option<u64>) -> Result<(), i32> {
    // SAFETY: the helper has no preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if add_existing(cgroup_id, oncpu_ns, runq_ns) {
        return Ok(());
    }
    let Some(fresh) = SCHED_SCRATCH.get_ptr_mut(0) else {
        // Index 0 of a one-slot array always exists.
        return Err(-ENOENT);
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only here, by
    // programs that do not nest.
    let fresh = unsafe { &mut *fresh };
    *fresh = SchedStats::default();
    add(fresh, oncpu_ns, runq_ns);
    match SCHED_STATS.insert(cgroup_id, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created the entry meanwhile (zero for this CPU).
        Err(errno) if errno == -EEXIST => {
            if add_existing(cgroup_id, oncpu_ns, runq_ns) {
                Ok(())
            } else {
                Err(-ENOENT)
            }
        }
        Err(errno) => Err(errno),
    }
}

/// Adds to this CPU's value of an existing entry; `false` if there is none.
#[inline(always)]
fn add_existing(cgroup_id: u64, oncpu_ns: u64, runq_ns: Option<u64>) -> bool {
    match SCHED_STATS.get_ptr_mut(cgroup_id) {
        Some(stats) => {
            // SAFETY: this CPU's value of a per-CPU map, written only by
            // programs on this CPU, which do not nest.
            add(unsafe { &mut *stats }, oncpu_ns, runq_ns);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn add(stats: &mut SchedStats, oncpu_ns: u64, runq_ns: Option<u64>) {
    stats.oncpu_ns = stats.oncpu_ns.wrapping_add(oncpu_ns);
    if let Some(runq_ns) = runq_ns {
        stats.runq_count = stats.runq_count.wrapping_add(1);
        stats.runq_sum_ns = stats.runq_sum_ns.wrapping_add(runq_ns);
        if let Some(bucket) = stats.runq_buckets.get_mut(runq_bucket(runq_ns)) {
            *bucket = bucket.wrapping_add(1);
        }
    }
}
