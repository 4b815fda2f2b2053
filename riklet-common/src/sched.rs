//! Per-cgroup scheduler statistics: time on CPU and run-queue latency, filled
//! by the `sched/sched_switch`, `sched/sched_wakeup` and
//! `sched/sched_wakeup_new` tracepoint programs of `riklet-ebpf` and read by
//! `riklet::metrics::ebpf`.
//!
//! Both figures belong to the task they measure and are charged to that
//! task's cgroup v2 id (`bpf_get_current_cgroup_id`) when the task leaves the
//! CPU, the first moment the task is current again after it was measured:
//! - on-CPU time: from the task's switch-in to its switch-out;
//! - run-queue latency: from the moment the task became runnable (woken, new,
//!   or preempted while runnable) to its switch-in.
//!
//! A task that stays on the CPU is charged at its next switch-out, so the
//! figures lag by at most one time slice of the task.

/// Name of the `BPF_MAP_TYPE_LRU_PERCPU_HASH` map from cgroup v2 id (`u64`)
/// to [`SchedStats`]; also its pin file name.
///
/// LRU because every cgroup on the node is counted (system ones too) and
/// nothing tells the kernel side when a cgroup goes away: when the map is
/// full, the cgroup that was charged least recently loses its entry (and its
/// counters restart from zero if it runs again).
pub const SCHED_STATS_MAP: &str = "SCHED_STATS";

/// Capacity of [`SCHED_STATS_MAP`]. An entry holds one [`SchedStats`]
/// (280 bytes) per possible CPU: 4096 entries cost 1.1 MiB per CPU. A node
/// runs at most a few hundred pods; the rest is room for system cgroups.
pub const SCHED_STATS_MAX_ENTRIES: u32 = 4096;

/// Name of the `BPF_MAP_TYPE_LRU_HASH` map from pid (kernel task id, `u32`)
/// to the `bpf_ktime_get_ns` time at which the task became runnable. Entries
/// are removed when the task gets the CPU.
pub const RUNNABLE_SINCE_MAP: &str = "RUNNABLE_SINCE";

/// Capacity of [`RUNNABLE_SINCE_MAP`]: tasks waiting in a run queue at the
/// same moment, with a wide margin. LRU, so a stale entry (a task woken while
/// it was still on its CPU, then exiting) cannot fill it up.
pub const RUNNABLE_SINCE_MAX_ENTRIES: u32 = 16384;

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` map (one [`OnCpu`] slot) that
/// holds, on each CPU, the task running there since its last switch-in. User
/// space reads it to add the slice in progress, which `SCHED_STATS` only
/// charges at the switch-out, and to know which cgroups are running now.
pub const ON_CPU_MAP: &str = "ON_CPU";

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` map ([`SCHED_LOST_SLOTS`] `u64`
/// slots) counting scheduler events that could not be accounted: slot 0 a
/// map update failed, slot [`SCHED_LOST_UNSEEN`] a switch was not seen.
pub const SCHED_LOST_MAP: &str = "SCHED_LOST";

/// Number of slots of [`SCHED_LOST_MAP`].
pub const SCHED_LOST_SLOTS: u32 = 2;

/// Slot of [`SCHED_LOST_MAP`] counting slices not charged because the
/// program did not run for the `sched_switch` that began them (the kernel
/// drops tracepoint events now and then): their on-CPU time and run-queue
/// wait are missing from [`SCHED_STATS_MAP`].
pub const SCHED_LOST_UNSEEN: u32 = 1;

/// Number of run-queue latency buckets: bucket `i` counts latencies in
/// `[2^i, 2^(i+1))` ns, bucket 0 also 0 ns, the last bucket also everything
/// longer (`>= 2^31` ns, about 2.1 s).
pub const RUNQ_BUCKETS: usize = 32;

/// Name of the `tracepoint/sched/sched_switch` program.
pub const SWITCH_PROGRAM: &str = "sched_switch";

/// Name of the `tracepoint/sched/sched_wakeup` program.
pub const WAKEUP_PROGRAM: &str = "sched_wakeup";

/// Name of the `tracepoint/sched/sched_wakeup_new` program.
pub const WAKEUP_NEW_PROGRAM: &str = "sched_wakeup_new";

/// Global (`u32`, byte offset in the tracepoint record) of `prev_pid` in
/// `sched/sched_switch`. The loader reads the offsets of all tracepoint
/// fields from tracefs (`events/<category>/<event>/format`) and sets these
/// globals, so the programs do not depend on one kernel's record layout.
pub const SWITCH_PREV_PID_OFFSET: &str = "SWITCH_PREV_PID_OFFSET";

/// Global: offset of `prev_state` in `sched/sched_switch`.
pub const SWITCH_PREV_STATE_OFFSET: &str = "SWITCH_PREV_STATE_OFFSET";

/// Global: offset of `next_pid` in `sched/sched_switch`.
pub const SWITCH_NEXT_PID_OFFSET: &str = "SWITCH_NEXT_PID_OFFSET";

/// Global: offset of `pid` in `sched/sched_wakeup`.
pub const WAKEUP_PID_OFFSET: &str = "WAKEUP_PID_OFFSET";

/// Global: offset of `pid` in `sched/sched_wakeup_new`.
pub const WAKEUP_NEW_PID_OFFSET: &str = "WAKEUP_NEW_PID_OFFSET";

/// The sleeping-state bits of `sched_switch`'s `prev_state`
/// (`TASK_REPORT_MAX - 1`: S, D, T, t, X, Z, P, I). None set means the task
/// left the CPU still runnable (preempted, or yielding), so it is back in a
/// run queue. The "preempted" bit itself (`TASK_REPORT_MAX`, 0x100) is above
/// this mask. Stable since Linux 4.14; the programs read only the low byte of
/// the field.
pub const PREV_STATE_SLEEPING_MASK: u8 = 0xff;

/// One cgroup's scheduler figures. In the map each CPU holds its own copy;
/// user space sums them with [`SchedStats::wrapping_add`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Nanoseconds the cgroup's tasks spent on a CPU.
    pub oncpu_ns: u64,
    /// Number of run-queue waits measured (a task got the CPU after it
    /// became runnable).
    pub runq_count: u64,
    /// Sum of those waits, in nanoseconds.
    pub runq_sum_ns: u64,
    /// Histogram of the waits: see [`RUNQ_BUCKETS`] and [`runq_bucket`].
    pub runq_buckets: [u64; RUNQ_BUCKETS],
}

impl SchedStats {
    /// Field-wise wrapping sum, used to fold the per-CPU values.
    #[must_use]
    pub fn wrapping_add(mut self, other: &Self) -> Self {
        self.oncpu_ns = self.oncpu_ns.wrapping_add(other.oncpu_ns);
        self.runq_count = self.runq_count.wrapping_add(other.runq_count);
        self.runq_sum_ns = self.runq_sum_ns.wrapping_add(other.runq_sum_ns);
        for (total, cpu) in self.runq_buckets.iter_mut().zip(other.runq_buckets) {
            *total = total.wrapping_add(cpu);
        }
        self
    }

    /// Mean run-queue latency in nanoseconds; `None` without measurements.
    #[must_use]
    pub const fn runq_mean_ns(&self) -> Option<u64> {
        self.runq_sum_ns.checked_div(self.runq_count)
    }

    /// Upper bound (exclusive, in ns) of the bucket that holds the
    /// `permille`/1000 quantile of the run-queue latencies, e.g. 990 for
    /// p99; `None` without measurements. The true quantile is at most this
    /// and at least half of it (one power of two), except in the last
    /// bucket, whose bound is `u64::MAX`.
    #[must_use]
    pub fn runq_quantile_upper_ns(&self, permille: u64) -> Option<u64> {
        let total = self
            .runq_buckets
            .iter()
            .fold(0u64, |total, count| total.saturating_add(*count));
        if total == 0 {
            return None;
        }
        // The rank of the wanted sample, 1-based, at least 1.
        let rank = (total.saturating_mul(permille.min(1000)))
            .div_ceil(1000)
            .max(1);
        let mut seen = 0;
        for (bucket, count) in self.runq_buckets.iter().enumerate() {
            seen = count.saturating_add(seen);
            if seen >= rank {
                return Some(bucket_upper_ns(bucket));
            }
        }
        Some(u64::MAX)
    }
}

/// The histogram bucket of a run-queue latency: `floor(log2(ns))`, 0 for 0,
/// at most `RUNQ_BUCKETS - 1`. Written with shifts and compares only (no
/// loop, no count-leading-zeros), which the eBPF verifier takes as is.
#[must_use]
#[inline(always)]
pub const fn runq_bucket(ns: u64) -> usize {
    let mut value = ns;
    let mut log = 0usize;
    if value >= 1 << 32 {
        value >>= 32;
        log += 32;
    }
    if value >= 1 << 16 {
        value >>= 16;
        log += 16;
    }
    if value >= 1 << 8 {
        value >>= 8;
        log += 8;
    }
    if value >= 1 << 4 {
        value >>= 4;
        log += 4;
    }
    if value >= 1 << 2 {
        value >>= 2;
        log += 2;
    }
    if value >= 1 << 1 {
        log += 1;
    }
    if log >= RUNQ_BUCKETS {
        RUNQ_BUCKETS - 1
    } else {
        log
    }
}

/// Exclusive upper bound in ns of a histogram bucket (`2^(bucket+1)`);
/// `u64::MAX` for the last one, which is open-ended.
#[must_use]
pub const fn bucket_upper_ns(bucket: usize) -> u64 {
    if bucket >= RUNQ_BUCKETS - 1 {
        u64::MAX
    } else {
        1 << (bucket + 1)
    }
}

// 35 u64 and nothing else: no padding, identical on every target.
const _: () = assert!(core::mem::size_of::<SchedStats>() == 8 * (3 + RUNQ_BUCKETS));
const _: () = assert!(core::mem::align_of::<SchedStats>() == 8);

/// The task on one CPU since its switch-in (the one slot of [`ON_CPU_MAP`]
/// on that CPU). The eBPF program rewrites it at every switch; a reader may
/// see a half-written slot, so what it derives must tolerate one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnCpu {
    /// Its pid (a thread id); 0 for the idle task or before the first
    /// switch.
    pub pid: u32,
    /// 1 if `runq_ns` holds a wait not yet charged.
    pub runq_pending: u32,
    /// When it got the CPU (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`); 0
    /// before the first switch on this CPU.
    pub since_ns: u64,
    /// How long it waited in a run queue before that.
    pub runq_ns: u64,
}

const _: () = assert!(core::mem::size_of::<OnCpu>() == 24);

// SAFETY: `OnCpu` is `#[repr(C)]`, `Copy`, made of two `u32` then two `u64`
// (no padding: asserted above); every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for OnCpu {}

// SAFETY: `SchedStats` is `#[repr(C)]`, `Copy`, made only of `u64` fields and
// arrays of them, and has no padding (asserted above): every bit pattern is
// a valid value and it can be copied to and from map memory byte for byte.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SchedStats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floor_log2_clamped() {
        assert_eq!(runq_bucket(0), 0);
        assert_eq!(runq_bucket(1), 0);
        assert_eq!(runq_bucket(2), 1);
        assert_eq!(runq_bucket(3), 1);
        assert_eq!(runq_bucket(4), 2);
        assert_eq!(runq_bucket(1023), 9);
        assert_eq!(runq_bucket(1024), 10);
        assert_eq!(runq_bucket(1_000_000), 19);
        assert_eq!(runq_bucket((1 << 31) - 1), 30);
        assert_eq!(runq_bucket(1 << 31), 31);
        assert_eq!(runq_bucket(1 << 40), 31);
        assert_eq!(runq_bucket(u64::MAX), 31);
        for shift in 0..31 {
            assert_eq!(runq_bucket(1 << shift), shift);
            assert!(1 << shift < bucket_upper_ns(shift));
        }
    }

    #[test]
    fn quantiles_and_sums() {
        let mut stats = SchedStats::default();
        assert_eq!(stats.runq_mean_ns(), None);
        assert_eq!(stats.runq_quantile_upper_ns(500), None);
        stats.runq_count = 4;
        stats.runq_sum_ns = 4000;
        stats.runq_buckets[runq_bucket(500)] = 3;
        stats.runq_buckets[runq_bucket(2500)] = 1;
        assert_eq!(stats.runq_mean_ns(), Some(1000));
        assert_eq!(stats.runq_quantile_upper_ns(500), Some(512));
        assert_eq!(stats.runq_quantile_upper_ns(750), Some(512));
        assert_eq!(stats.runq_quantile_upper_ns(990), Some(4096));
        assert_eq!(stats.runq_quantile_upper_ns(0), Some(512));

        let doubled = stats.wrapping_add(&stats);
        assert_eq!(doubled.runq_count, 8);
        assert_eq!(doubled.runq_buckets[runq_bucket(500)], 6);
    }
}
