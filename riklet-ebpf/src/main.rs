//! riklet's eBPF programs.
//!
//! # Layout
//! - [`count_ingress`] / [`count_egress`]: `cgroup_skb` programs that add
//!   every packet's length and one packet to the [`CGROUP_TRAFFIC`] entry of
//!   the cgroup owning the packet's socket. They never drop anything.
//! - [`sched`]: `sched/sched_switch`, `sched/sched_wakeup` and
//!   `sched/sched_wakeup_new` tracepoints measuring per-cgroup on-CPU time
//!   and run-queue latency.
//! - [`oom`]: the `oom/mark_victim` tracepoint, sending OOM kill events
//!   through a ring buffer.
//! - [`tcp`]: the `tcp/tcp_retransmit_skb` tracepoint, counting TCP
//!   retransmissions per source address.
//!
//! Built by `cargo xtask build-ebpf` (nightly, `bpfel-unknown-none`,
//! bpf-linker); `riklet/build.rs` embeds the object and
//! `riklet::metrics::ebpf` loads all programs from it, once. Shared names and
//! types live in `riklet_common::{net, sched, oom, tcp}`.

#![no_std]
#![no_main]

mod oom;
mod sched;
mod tcp;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::bpf_skb_cgroup_id,
    macros::{cgroup_skb, map},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::SkBuffContext,
};
use aya_log_ebpf::warn;
use riklet_common::net::{CGROUP_TRAFFIC_MAX_ENTRIES, CgroupTraffic};

/// `cgroup_skb` verdict: let the packet through. These programs only count.
const ALLOW: i32 = 1;

/// `-EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST`.
pub(crate) const EEXIST: i32 = 17;

/// Cgroup v2 id (inode number of the cgroup directory) to traffic counters.
///
/// Per-CPU so that the hot path needs neither atomics nor locks: each CPU
/// adds to its own copy and user space sums them. The symbol name is
/// `riklet_common::net::CGROUP_TRAFFIC_MAP`.
#[map]
static CGROUP_TRAFFIC: PerCpuHashMap<u64, CgroupTraffic> =
    PerCpuHashMap::with_max_entries(CGROUP_TRAFFIC_MAX_ENTRIES, 0);

/// Packets that could not be accounted (slot 0), because the insert into
/// [`CGROUP_TRAFFIC`] failed, in practice because it is full.
///
/// Also the "already logged" flag: a CPU logs only its first failure, so a
/// full map costs a counter increment per packet, not a log record.
#[map]
static TRAFFIC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Which half of [`CgroupTraffic`] a packet adds to.
#[derive(Clone, Copy)]
enum Direction {
    Rx,
    Tx,
}

#[cgroup_skb(ingress)]
pub fn count_ingress(ctx: SkBuffContext) -> i32 {
    if let Err(errno) = try_count_ingress(&ctx) {
        note_lost(&ctx, &TRAFFIC_LOST, "CGROUP_TRAFFIC", errno);
    }
    ALLOW
}

fn try_count_ingress(ctx: &SkBuffContext) -> Result<(), i32> {
    account(ctx, Direction::Rx)
}

#[cgroup_skb(egress)]
pub fn count_egress(ctx: SkBuffContext) -> i32 {
    if let Err(errno) = try_count_egress(&ctx) {
        note_lost(&ctx, &TRAFFIC_LOST, "CGROUP_TRAFFIC", errno);
    }
    ALLOW
}

fn try_count_egress(ctx: &SkBuffContext) -> Result<(), i32> {
    account(ctx, Direction::Tx)
}

/// Adds the packet to its socket's cgroup. Errors are the negative errno of
/// the map insert.
#[inline(always)]
fn account(ctx: &SkBuffContext, direction: Direction) -> Result<(), i32> {
    // SAFETY: `as_ptr` is the `__sk_buff` the kernel handed to this program,
    // valid for the whole run; `bpf_skb_cgroup_id` only reads it.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast::<__sk_buff>()) };
    if cgroup_id == 0 {
        // No full socket, or a socket from before cgroup v2 tracking: there
        // is no cgroup to charge.
        return Ok(());
    }
    let len = u64::from(ctx.len());

    if add_existing(cgroup_id, direction, len) {
        return Ok(());
    }
    let mut fresh = CgroupTraffic::default();
    add(&mut fresh, direction, len);
    match CGROUP_TRAFFIC.insert(cgroup_id, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created the entry between our lookup and insert: the
        // entry exists now (zeroed for this CPU), add to it.
        Err(errno) if errno == -EEXIST => {
            add_existing(cgroup_id, direction, len);
            Ok(())
        }
        Err(errno) => Err(errno),
    }
}

/// Adds to this CPU's value of an existing entry; `false` if there is none.
#[inline(always)]
fn add_existing(cgroup_id: u64, direction: Direction, len: u64) -> bool {
    match CGROUP_TRAFFIC.get_ptr_mut(cgroup_id) {
        Some(traffic) => {
            // SAFETY: a non-null pointer from the lookup points at this
            // CPU's value, which only this CPU writes; the program runs with
            // migration disabled, so it stays this CPU's until we return.
            add(unsafe { &mut *traffic }, direction, len);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn add(traffic: &mut CgroupTraffic, direction: Direction, len: u64) {
    match direction {
        Direction::Rx => {
            traffic.rx_bytes = traffic.rx_bytes.wrapping_add(len);
            traffic.rx_packets = traffic.rx_packets.wrapping_add(1);
        }
        Direction::Tx => {
            traffic.tx_bytes = traffic.tx_bytes.wrapping_add(len);
            traffic.tx_packets = traffic.tx_packets.wrapping_add(1);
        }
    }
}

/// Counts an event that could not be accounted in slot 0 of `lost` (a
/// `*_LOST` map); logs only the first one per CPU and map, so that a full
/// map does not flood the log ring buffer.
#[inline(always)]
pub(crate) fn note_lost<C: EbpfContext>(
    ctx: &C,
    lost: &PerCpuArray<u64>,
    map: &'static str,
    errno: i32,
) {
    if let Some(lost) = lost.get_ptr_mut(0) {
        // SAFETY: as in `add_existing`, this CPU's slot of a per-CPU array.
        let lost = unsafe { &mut *lost };
        if *lost == 0 {
            warn!(
                ctx,
                "{} update failed (errno {}), map full? Further losses on this CPU are only counted",
                map,
                errno
            );
        }
        *lost = lost.wrapping_add(1);
    }
}

/// Kernel license of the object. GPL-compatible, as in aya-template, so
/// that the verifier allows GPL-only helpers should a program need them.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// eBPF has no unwinding and no way to report a panic: the verifier rejects
/// any program in which this (an endless loop) is reachable, so a panic path
/// shows up at load time rather than at run time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
