//! OOM kill events, sent by the `oom/mark_victim` tracepoint program of
//! `riklet-ebpf` through a ring buffer and drained by
//! `riklet::metrics::ebpf`.

/// Name of the `BPF_MAP_TYPE_RINGBUF` map carrying [`OomEvent`]s.
pub const OOM_EVENTS_MAP: &str = "OOM_EVENTS";

/// Size of [`OOM_EVENTS_MAP`] in bytes (a power-of-two number of pages, as
/// the kernel requires; the loader rounds it up on larger pages). An event
/// takes 40 bytes with its header: 64 KiB hold about 1600 events, far more
/// than OOM kills happen between two drains.
pub const OOM_EVENTS_BYTES: u32 = 64 * 1024;

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` map (one `u64` slot) counting OOM
/// events dropped because the ring buffer was full.
pub const OOM_LOST_MAP: &str = "OOM_LOST";

/// Name of the `tracepoint/oom/mark_victim` program.
pub const MARK_VICTIM_PROGRAM: &str = "oom_mark_victim";

/// Global (`u32`): byte offset of `pid` in the `oom/mark_victim` record, set
/// by the loader from tracefs.
pub const MARK_VICTIM_PID_OFFSET: &str = "MARK_VICTIM_PID_OFFSET";

/// The kernel chose a process to kill because memory ran out (in a memory
/// cgroup or on the whole node).
///
/// The tracepoint names the victim only by pid. The cgroup is that of the
/// task that ran the OOM killer: for a memory-cgroup OOM, a task charging
/// memory to the cgroup whose limit was hit, hence a task of the same pod;
/// it is the victim itself when `trigger_pid == pid`. For a node-wide OOM it
/// can be any task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomEvent {
    /// `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`) when the victim was marked.
    pub timestamp_ns: u64,
    /// Cgroup v2 id of the task that triggered the kill.
    pub cgroup_id: u64,
    /// Kernel task id of the victim (the process's pid for a
    /// single-threaded process).
    pub pid: u32,
    /// Kernel task id of the task that triggered the kill.
    pub trigger_pid: u32,
}

// Two u64 and two u32: no padding, identical on every target.
const _: () = assert!(core::mem::size_of::<OomEvent>() == 24);
const _: () = assert!(core::mem::align_of::<OomEvent>() == 8);

// SAFETY: `OomEvent` is `#[repr(C)]`, `Copy`, made only of integers, with no
// padding (asserted above): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for OomEvent {}
