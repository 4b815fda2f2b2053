//! `BPF_MAP_LOOKUP_BATCH` for per-CPU hash maps.
//!
//! aya has no batch operations (aya issue #1124): its iterator costs two
//! syscalls per entry (`BPF_MAP_GET_NEXT_KEY`, `BPF_MAP_LOOKUP_ELEM`), which
//! for a few hundred pods plus the system cgroups is a few thousand syscalls
//! per collection cycle. A batch lookup copies many entries per syscall.
//!
//! Kernel interface (Linux ≥ 5.6, `kernel/bpf/hashtab.c`): the caller passes
//! buffers for `count` keys and values and an opaque position (`in_batch`,
//! absent on the first call); the kernel fills whole hash buckets, sets
//! `count` to the number copied and `out_batch` to the next position, and
//! fails with `ENOENT` once the last bucket was copied (the entries of that
//! call are still valid). `ENOSPC` with nothing copied means one bucket
//! holds more than `count` entries. Per-CPU values come as one slot per
//! possible CPU, each rounded up to 8 bytes.

use std::{
    collections::HashMap,
    hash::Hash,
    io, mem,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// How much value buffer one call may fill; the entry count per call
/// follows from the value size and the number of CPUs.
const BUFFER_BYTES: usize = 1 << 20;

/// Bounds of the entries per call.
const MIN_CHUNK: usize = 16;
const MAX_CHUNK: usize = 1024;

/// The `batch` member of `union bpf_attr` (`include/uapi/linux/bpf.h`).
/// The kernel accepts a shorter `bpf_attr` and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of a `BPF_MAP_TYPE_(LRU_)PERCPU_HASH` map with `K`
/// keys and `V` values, folding each entry's per-CPU values with `fold`
/// (starting from `V::default()`). Entries added or removed meanwhile may or
/// may not show up; none shows up twice (the kernel copies whole buckets).
///
/// `possible_cpus` is the number of possible CPUs (the per-CPU slot count).
/// Errors are the syscall's; `EINVAL` (or `ENOSYS`/`ENOTSUPP`) means the
/// kernel or the map type has no batch support.
pub fn lookup_percpu<K: Pod + Default + Eq + Hash, V: Pod + Default>(
    map_fd: BorrowedFd<'_>,
    possible_cpus: usize,
    fold: impl Fn(V, &V) -> V,
) -> io::Result<HashMap<K, V>> {
    let stride = mem::size_of::<V>().next_multiple_of(8);
    let entry_bytes = stride * possible_cpus.max(1);
    let mut chunk = (BUFFER_BYTES / entry_bytes).clamp(MIN_CHUNK, MAX_CHUNK);
    // The kernel writes `key_size` bytes per key, back to back: `K` has
    // that size and, being `Pod`, no padding to leave undefined.
    let mut keys = vec![K::default(); chunk];
    // u64 elements: 8-byte aligned, like the kernel's per-CPU slots.
    let mut values = vec![0u64; chunk * entry_bytes / 8];

    let mut entries = HashMap::new();
    let mut position: Option<u64> = None;
    let mut next_position = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: position
                .as_ref()
                .map_or(0, |p| std::ptr::from_ref(p) as u64),
            out_batch: std::ptr::from_mut(&mut next_position) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(map_fd.as_raw_fd())
                .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for this command; the
        // kernel writes at most `count` keys into `keys` (a `K` each), `count`
        // per-CPU values into `values` (sized for them), and the position
        // (at most 8 bytes: a u32 bucket index for hash maps) into
        // `next_position`, all of which outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                mem::size_of::<BatchAttr>(),
            )
        };
        let done = if ret < 0 {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOENT) => true,
                Some(libc::ENOSPC) if attr.count == 0 && chunk < MAX_CHUNK * 64 => {
                    // One bucket holds more than `chunk` entries: retry the
                    // same position with room for more.
                    chunk *= 2;
                    keys.resize(chunk, K::default());
                    values.resize(chunk * entry_bytes / 8, 0);
                    continue;
                }
                _ => return Err(error),
            }
        } else {
            false
        };

        let copied = (attr.count as usize).min(chunk);
        for (index, key) in keys.iter().take(copied).enumerate() {
            let entry = &values[index * entry_bytes / 8..(index + 1) * entry_bytes / 8];
            let total = (0..possible_cpus).fold(V::default(), |total, cpu| {
                // SAFETY: `cpu * stride + size_of::<V>()` is within the
                // entry; `V: Pod` accepts any bytes; unaligned read because
                // only 8-byte alignment is guaranteed.
                let value = unsafe {
                    entry
                        .as_ptr()
                        .cast::<u8>()
                        .add(cpu * stride)
                        .cast::<V>()
                        .read_unaligned()
                };
                fold(total, &value)
            });
            entries.insert(*key, total);
        }
        // A call that copied nothing without reaching the end would not
        // advance either: stop rather than spin.
        if done || copied == 0 {
            return Ok(entries);
        }
        position = Some(next_position);
    }
}

/// Whether a batch error means "not supported here" (fall back to
/// iterating, and stop trying) rather than a transient failure.
pub fn unsupported(error: &io::Error) -> bool {
    /// `ENOTSUPP`, the kernel-internal errno some map types return.
    const ENOTSUPP: i32 = 524;
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | ENOTSUPP)
    )
}
