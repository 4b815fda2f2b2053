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
//!
//! The buffers are big (half a MiB for the scheduler map on two CPUs): a
//! reader that looks up every collection cycle keeps them in a
//! [`Scratch`] rather than allocating and zeroing them at each call.

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
/// How far a bucket bigger than a call may grow the entries per call.
const MAX_GROWN_CHUNK: usize = MAX_CHUNK * 64;

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
    lookup_percpu_with(&mut Scratch::default(), map_fd, possible_cpus, fold)
}

/// Room for the keys and values of batch lookups, kept between calls.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Keys back to back (`K` bytes each), in 8-byte words.
    keys: Vec<u64>,
    values: Vec<u64>,
}

/// [`lookup_percpu`] with the buffers of `scratch`.
pub fn lookup_percpu_with<K: Pod + Default + Eq + Hash, V: Pod + Default>(
    scratch: &mut Scratch,
    map_fd: BorrowedFd<'_>,
    possible_cpus: usize,
    fold: impl Fn(V, &V) -> V,
) -> io::Result<HashMap<K, V>> {
    let map_fd =
        u32::try_from(map_fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut buffers = Buffers::<K>::new(scratch, mem::size_of::<V>(), possible_cpus);
    let mut entries = HashMap::new();
    let mut position: Option<u64> = None;
    loop {
        let (copied, next) = match buffers.call(map_fd, position.as_ref())? {
            Call::Copied { count, next } => (count, next),
            Call::BucketTooBig => {
                buffers.grow();
                continue;
            }
        };
        entries.reserve(copied);
        for index in 0..copied {
            entries.insert(buffers.key(index), buffers.fold_entry(index, &fold));
        }
        match next {
            // A call that copied nothing without reaching the end would not
            // advance either: stop rather than spin.
            Some(next) if copied > 0 => position = Some(next),
            _ => return Ok(entries),
        }
    }
}

/// What one `BPF_MAP_LOOKUP_BATCH` call did.
enum Call {
    /// `count` entries were copied to the buffers; `next` is the position
    /// after them, `None` once the last bucket was copied.
    Copied { count: usize, next: Option<u64> },
    /// One bucket holds more entries than the buffers: retry the same
    /// position with bigger ones.
    BucketTooBig,
}

/// The key and value buffers one call fills, in a [`Scratch`].
struct Buffers<'a, K> {
    /// Room for `chunk` keys: the kernel writes `key_size` bytes per key,
    /// back to back, and `K` has that size and, being `Pod`, no padding to
    /// leave undefined.
    keys: &'a mut Vec<u64>,
    /// Room for `chunk` per-CPU values; u64 elements: 8-byte aligned, like
    /// the kernel's per-CPU slots.
    values: &'a mut Vec<u64>,
    /// Entries per call.
    chunk: usize,
    /// Bytes of one CPU's slot: the value size rounded up to 8.
    stride: usize,
    /// Bytes of one entry's values: a slot per possible CPU.
    entry_bytes: usize,
    possible_cpus: usize,
    key: std::marker::PhantomData<K>,
}

impl<'a, K: Pod + Default> Buffers<'a, K> {
    fn new(scratch: &'a mut Scratch, value_size: usize, possible_cpus: usize) -> Self {
        let stride = value_size.next_multiple_of(8);
        let entry_bytes = stride * possible_cpus.max(1);
        let chunk = (BUFFER_BYTES / entry_bytes).clamp(MIN_CHUNK, MAX_CHUNK);
        let mut buffers = Self {
            keys: &mut scratch.keys,
            values: &mut scratch.values,
            chunk,
            stride,
            entry_bytes,
            possible_cpus,
            key: std::marker::PhantomData,
        };
        buffers.fit();
        buffers
    }

    /// Grows the storage to `chunk` entries (it is never shrunk: the
    /// next call needs as much). Fresh zeroed allocations, whose pages the
    /// kernel maps only once written: a map with few entries costs little
    /// memory. What the storage holds is never cleared between calls:
    /// only entries the kernel copied are read.
    fn fit(&mut self) {
        let key_words = (self.chunk * mem::size_of::<K>()).div_ceil(8);
        if self.keys.len() < key_words {
            *self.keys = vec![0; key_words];
        }
        let value_words = self.chunk * self.entry_bytes / 8;
        if self.values.len() < value_words {
            *self.values = vec![0; value_words];
        }
    }

    /// Entries per call.
    fn chunk(&self) -> usize {
        self.chunk
    }

    /// Doubles the room, for a bucket bigger than it.
    fn grow(&mut self) {
        self.chunk *= 2;
        self.fit();
    }

    /// Copied key `index`.
    fn key(&self, index: usize) -> K {
        debug_assert!(index < self.chunk);
        // SAFETY: `index < chunk` and the key storage holds `chunk` keys
        // of `size_of::<K>()` bytes; `K: Pod` accepts any bytes; unaligned
        // read because keys are packed.
        unsafe {
            self.keys
                .as_ptr()
                .cast::<u8>()
                .add(index * mem::size_of::<K>())
                .cast::<K>()
                .read_unaligned()
        }
    }

    /// One call from `position` (`None`: the start) on `map_fd`.
    fn call(&mut self, map_fd: u32, position: Option<&u64>) -> io::Result<Call> {
        let mut next_position = 0u64;
        let mut attr = BatchAttr {
            in_batch: position.map_or(0, |p| std::ptr::from_ref(p) as u64),
            out_batch: std::ptr::from_mut(&mut next_position) as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.values.as_mut_ptr() as u64,
            count: u32::try_from(self.chunk()).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for this command; the
        // kernel writes at most `count` keys into `keys` (a `K` each, room
        // for `chunk` of them), `count` per-CPU values into `values` (sized
        // for them), and the position
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
        let count = (attr.count as usize).min(self.chunk());
        if ret >= 0 {
            return Ok(Call::Copied {
                count,
                next: Some(next_position),
            });
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // The last bucket was copied; the entries of this call are valid.
            Some(libc::ENOENT) => Ok(Call::Copied { count, next: None }),
            Some(libc::ENOSPC) if attr.count == 0 && self.chunk() < MAX_GROWN_CHUNK => {
                Ok(Call::BucketTooBig)
            }
            _ => Err(error),
        }
    }

    /// The per-CPU values of copied entry `index`, folded with `fold`.
    fn fold_entry<V: Pod + Default>(&self, index: usize, fold: impl Fn(V, &V) -> V) -> V {
        let words = self.entry_bytes / 8;
        let entry = &self.values[index * words..(index + 1) * words];
        (0..self.possible_cpus).fold(V::default(), |total, cpu| {
            // SAFETY: `cpu * stride + size_of::<V>()` is within the
            // entry; `V: Pod` accepts any bytes; unaligned read because
            // only 8-byte alignment is guaranteed.
            let value = unsafe {
                entry
                    .as_ptr()
                    .cast::<u8>()
                    .add(cpu * self.stride)
                    .cast::<V>()
                    .read_unaligned()
            };
            fold(total, &value)
        })
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
