//! The load-balancer's maps, backend selection and UDP flow affinity.
//!
//! Every map is pinned by name (the loader gives the directory), so a
//! riklet started after a crash reuses them: services keep answering and
//! established flows keep their backend and their reverse translation.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuHashMap},
};
use riklet_common::proxy::{
    AffinityKey, AffinityValue, BACKENDS_MAX_ENTRIES, BackendKey, BackendValue, MAX_BACKENDS,
    NODE_ADDRS_MAX_ENTRIES, RevNatKey, RevNatValue, SERVICES_MAX_ENTRIES, SOCKETS_MAX_ENTRIES,
    ServiceKey, ServiceStats, ServiceValue,
};

/// Service → its current set (`riklet_common::proxy::SERVICES_MAP`).
/// Not preallocated: an element replaced by user space is freed only after
/// the programs reading it are done, so a reader never sees it reused.
#[map]
pub(crate) static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// (service, generation, slot) → backend (`BACKENDS_MAP`).
#[map]
static LB_BACKENDS: HashMap<BackendKey, BackendValue> =
    HashMap::pinned(BACKENDS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Node addresses (network order) → 1 (`NODE_ADDRS_MAP`).
#[map]
pub(crate) static LB_NODE_ADDRS: HashMap<u32, u8> =
    HashMap::pinned(NODE_ADDRS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// (socket, backend) → service address (`REVNAT_MAP`).
#[map]
pub(crate) static LB_REVNAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::pinned(SOCKETS_MAX_ENTRIES, 0);

/// (socket, service) → the UDP flow's backend (`AFFINITY_MAP`).
#[map]
static LB_UDP_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(SOCKETS_MAX_ENTRIES, 0);

/// Service → counters, per CPU (`COUNTERS_MAP`); entries made by user space.
#[map]
static LB_COUNTERS: PerCpuHashMap<ServiceKey, ServiceStats> =
    PerCpuHashMap::pinned(SERVICES_MAX_ENTRIES, 0);

/// Socket cookie → the service it reached last (`SOCKETS_MAP`), for the
/// byte counters.
#[map]
static LB_SOCKETS: LruHashMap<u64, ServiceKey> = LruHashMap::pinned(SOCKETS_MAX_ENTRIES, 0);

/// A service's current set, copied out.
#[inline(always)]
fn current_set(service: &ServiceKey) -> Option<ServiceValue> {
    // SAFETY: copied at once; the map is not preallocated, so the element
    // stays intact while this program runs even if it is replaced.
    unsafe { LB_SERVICES.get(service) }.copied()
}

/// Slot `slot` of generation `generation`, copied out.
#[inline(always)]
fn slot(service: &ServiceKey, generation: u32, slot: u32) -> Option<BackendValue> {
    let key = BackendKey {
        service: *service,
        generation,
        slot,
    };
    // SAFETY: as in `current_set`.
    unsafe { LB_BACKENDS.get(key) }.copied()
}

/// A random backend of the service's current set, and that set's
/// generation. Reads the set twice at most: a slot can vanish between
/// reading the service entry and the slot when user space switches the set
/// and deletes the old slots in between; the second read sees the new set.
#[inline(always)]
pub(crate) fn pick(service: &ServiceKey) -> Option<BackendValue> {
    pick_with_generation(service).map(|(backend, _)| backend)
}

#[inline(always)]
fn pick_with_generation(service: &ServiceKey) -> Option<(BackendValue, u32)> {
    for _ in 0..2 {
        let set = current_set(service)?;
        // SAFETY: the helper takes no arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        let index = random.checked_rem(set.count)?;
        if let Some(backend) = slot(service, set.generation, index) {
            return Some((backend, set.generation));
        }
    }
    None
}

/// The backend of an unconnected UDP socket's flow to `service`: the one
/// it had while that is still in the set, else a new pick (a new flow,
/// counted). A backend that left the set is never used again: the flow
/// moves.
#[inline(always)]
pub(crate) fn flow_backend(cookie: u64, service: &ServiceKey) -> Option<BackendValue> {
    let key = AffinityKey {
        cookie,
        service: *service,
        pad: 0,
    };
    // SAFETY: copied out at once; a concurrent update of the same LRU
    // entry (same socket, two threads) is at worst overwritten below.
    let known = unsafe { LB_UDP_AFFINITY.get(key) }.copied();
    let set = current_set(service)?;
    if let Some(known) = known {
        if known.generation == set.generation {
            return Some(known.backend);
        }
        if in_set(service, set, known.backend) {
            remember(&key, known.backend, set.generation);
            return Some(known.backend);
        }
    }
    let (backend, generation) = pick_with_generation(service)?;
    remember(&key, backend, generation);
    count_connection(service);
    Some(backend)
}

/// Whether `backend` is one of the slots of `set`.
#[inline(always)]
fn in_set(service: &ServiceKey, set: ServiceValue, backend: BackendValue) -> bool {
    let mut index = 0;
    // Bounded for the verifier; user space never writes more slots.
    while index < MAX_BACKENDS && index < set.count {
        if slot(service, set.generation, index) == Some(backend) {
            return true;
        }
        index += 1;
    }
    false
}

#[inline(always)]
fn remember(key: &AffinityKey, backend: BackendValue, generation: u32) {
    let value = AffinityValue {
        backend,
        generation,
        pad: 0,
    };
    // A failed insert only makes the next datagram pick again.
    let _ = LB_UDP_AFFINITY.insert(key, value, 0);
}

/// Adds a connection to the service's counters, if user space made the
/// entry.
#[inline(always)]
pub(crate) fn count_connection(service: &ServiceKey) {
    add(
        service,
        ServiceStats {
            connections: 1,
            bytes: 0,
        },
    );
}

/// Adds a packet of `len` bytes of socket `cookie` to the service the
/// socket reached, if any.
#[inline(always)]
pub(crate) fn count_bytes(cookie: u64, len: u32) {
    // SAFETY: copied out at once.
    if let Some(service) = unsafe { LB_SOCKETS.get(cookie) }.copied() {
        add(
            &service,
            ServiceStats {
                connections: 0,
                bytes: u64::from(len),
            },
        );
    }
}

/// Remembers that socket `cookie` talks to `service`; writes only when that
/// changes, since unconnected UDP sockets come here with every datagram.
#[inline(always)]
pub(crate) fn remember_socket(cookie: u64, service: &ServiceKey) {
    // SAFETY: copied out at once.
    if unsafe { LB_SOCKETS.get(cookie) }.copied() != Some(*service) {
        // A failed insert only leaves this socket's bytes uncounted.
        let _ = LB_SOCKETS.insert(cookie, service, 0);
    }
}

#[inline(always)]
fn add(service: &ServiceKey, delta: ServiceStats) {
    if let Some(stats) = LB_COUNTERS.get_ptr_mut(service) {
        // SAFETY: this CPU's copy of a per-CPU value; programs run with
        // migration disabled, so no other writer touches it meanwhile.
        let stats = unsafe { &mut *stats };
        *stats = stats.wrapping_add(delta);
    }
}
