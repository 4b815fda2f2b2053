//! TCP retransmissions: [`tcp_retransmit_skb`] counts each retransmission
//! (one `skb`: one segment, or several with segmentation offload) in
//! [`TCP_RETRANS`] under the socket's source address, which user space maps
//! to a pod (see `riklet_common::tcp`).

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    macros::{map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use riklet_common::tcp::{Address, TCP_RETRANS_MAX_ENTRIES};

use crate::{EEXIST, note_lost};

/// Byte offset of `saddr_v6` in the `tcp_retransmit_skb` record
/// (`riklet_common::tcp::RETRANSMIT_SADDR_V6_OFFSET`).
#[unsafe(no_mangle)]
static RETRANSMIT_SADDR_V6_OFFSET: Global<u32> = Global::new(0);

/// Byte offset of `err` in the `tcp_retransmit_skb` record; 0 if the kernel's
/// record has no `err` (it then traces sent retransmissions only).
#[unsafe(no_mangle)]
static RETRANSMIT_ERR_OFFSET: Global<u32> = Global::new(0);

/// Source address to retransmissions (`riklet_common::tcp::TCP_RETRANS_MAP`).
#[map]
static TCP_RETRANS: PerCpuHashMap<Address, u64> =
    PerCpuHashMap::with_max_entries(TCP_RETRANS_MAX_ENTRIES, 0);

/// Retransmissions not counted (slot 0) because [`TCP_RETRANS`] was full.
#[map]
static RETRANS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    if let Err(errno) = try_tcp_retransmit_skb(&ctx) {
        note_lost(&ctx, &RETRANS_LOST, "TCP_RETRANS", errno);
    }
    0
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let err_offset = RETRANSMIT_ERR_OFFSET.load();
    if err_offset != 0 {
        // SAFETY: `ctx` is the tracepoint record; the offsets are those
        // tracefs gives for this event's fields and `read_at` goes through
        // `bpf_probe_read_kernel`, which fails cleanly on a bad address.
        let err = unsafe { ctx.read_at::<i32>(err_offset as usize)? };
        if err != 0 {
            // Not sent (e.g. the device queue was busy): the kernel tries
            // again later, and that attempt is traced too.
            return Ok(());
        }
    }
    // SAFETY: as above.
    let saddr =
        unsafe { ctx.read_at::<Address>(RETRANSMIT_SADDR_V6_OFFSET.load() as usize)? };
    if add_existing(&saddr) {
        return Ok(());
    }
    match TCP_RETRANS.insert(&saddr, &1, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created the entry meanwhile (zero for this CPU).
        Err(errno) if errno == -EEXIST => {
            add_existing(&saddr);
            Ok(())
        }
        Err(errno) => Err(errno),
    }
}

/// Adds one to this CPU's count of an existing entry; `false` if none.
#[inline(always)]
fn add_existing(saddr: &Address) -> bool {
    match TCP_RETRANS.get_ptr_mut(saddr) {
        Some(count) => {
            // SAFETY: this CPU's value of a per-CPU map, written only by this
            // program, which does not nest on a CPU.
            let count = unsafe { &mut *count };
            *count = count.wrapping_add(1);
            true
        }
        None => false,
    }
}
