//! The service, backend, node address and counter maps as user space
//! writes them: adopted as a predecessor left them, then kept equal to the
//! [`ServiceTable`] with as few map writes as the changes need.
//!
//! A set is replaced in three steps (see `riklet_common::proxy`): the new
//! generation's slots, then the service entry, then the old slots. A
//! removed service loses its entry first, so a program never follows an
//! entry to slots that are gone for good.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::AsFd as _,
};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, MapError, PerCpuHashMap, PerCpuValues},
    sys::SyscallError,
};
use proto::manifest::Protocol;
use riklet_common::proxy::{
    self as lb, BACKENDS_MAP, BackendKey, BackendValue, COUNTERS_MAP, MAX_BACKENDS, NODE_ADDRS_MAP,
    PROTO_TCP, PROTO_UDP, SERVICES_MAP, ServiceStats, ServiceValue,
};
use tracing::debug;

use super::{
    Result, SocketLbError,
    error::{io_error, map_error},
};
use crate::metrics::ebpf::batch;
use crate::proxy::model::{Backend, ServiceCounters, ServiceKey, ServiceTable};

/// `BPF_NOEXIST`: insert only if absent.
const NOEXIST: u64 = 1;

/// A service's set as the maps hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    value: ServiceValue,
    /// Slot order. Empty when the slots were found incomplete, so that the
    /// next sync writes them again.
    backends: Vec<BackendValue>,
}

/// Typed handles on the maps user space writes, and what they hold.
pub(super) struct Tables {
    services: HashMap<MapData, lb::ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, BackendValue>,
    node_addrs: HashMap<MapData, u32, u8>,
    counters: PerCpuHashMap<MapData, lb::ServiceKey, ServiceStats>,
    /// Slots of a [`COUNTERS_MAP`] value.
    possible_cpus: usize,
    applied: BTreeMap<lb::ServiceKey, Applied>,
    node_applied: BTreeSet<u32>,
}

impl Tables {
    /// Takes the maps out of `ebpf` and reads what a predecessor left in
    /// them; drops backend slots and counters no service entry owns (a
    /// riklet killed in the middle of a sync leaves such entries).
    pub(super) fn adopt(ebpf: &mut Ebpf) -> Result<Self> {
        let mut tables = Self {
            services: take(ebpf, SERVICES_MAP)?,
            backends: take(ebpf, BACKENDS_MAP)?,
            node_addrs: take(ebpf, NODE_ADDRS_MAP)?,
            counters: take(ebpf, COUNTERS_MAP)?,
            possible_cpus: possible_cpus()?,
            applied: BTreeMap::new(),
            node_applied: BTreeSet::new(),
        };
        tables.read_services()?;
        tables.drop_orphan_slots()?;
        tables.drop_stray_counters()?;
        tables.node_applied = collect(tables.node_addrs.keys(), NODE_ADDRS_MAP)?;
        debug!(
            services = tables.applied.len(),
            node_addresses = tables.node_applied.len(),
            "adopted proxy maps"
        );
        Ok(tables)
    }

    fn read_services(&mut self) -> Result<()> {
        let entries: Vec<(lb::ServiceKey, ServiceValue)> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(SERVICES_MAP, || "reading services".into()))?;
        for (key, value) in entries {
            let mut backends = Vec::with_capacity(value.count as usize);
            for slot in 0..value.count {
                match self.backends.get(&slot_key(key, value.generation, slot), 0) {
                    Ok(backend) => backends.push(backend),
                    Err(MapError::KeyNotFound) => {
                        backends.clear();
                        break;
                    }
                    Err(source) => {
                        return Err(map_error(BACKENDS_MAP, || {
                            format!("reading backends of {}", display(key))
                        })(source));
                    }
                }
            }
            self.applied.insert(key, Applied { value, backends });
        }
        Ok(())
    }

    fn drop_orphan_slots(&mut self) -> Result<()> {
        let keys: Vec<BackendKey> = collect(self.backends.keys(), BACKENDS_MAP)?;
        for key in keys {
            let live = self.applied.get(&key.service).is_some_and(|applied| {
                applied.value.generation == key.generation && key.slot < applied.value.count
            });
            if !live {
                absent_ok(self.backends.remove(&key))
                    .map_err(map_error(BACKENDS_MAP, || "removing an orphan slot".into()))?;
            }
        }
        Ok(())
    }

    /// Makes the maps hold exactly the TCP and UDP services of `table` and
    /// `node_addresses`. What the maps hold is tracked step by step, so
    /// that a sync that fails half-way is completed by the next one.
    pub(super) fn sync(&mut self, table: &ServiceTable, node_addresses: &[Ipv4Addr]) -> Result<()> {
        let wanted = wanted_services(table)?;
        self.sync_node_addresses(node_addresses)?;
        for (key, backends) in &wanted {
            self.sync_service(*key, backends)?;
        }
        let gone: Vec<lb::ServiceKey> = self
            .applied
            .keys()
            .filter(|key| !wanted.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            self.remove_service(key)?;
        }
        Ok(())
    }

    fn sync_node_addresses(&mut self, node_addresses: &[Ipv4Addr]) -> Result<()> {
        let wanted: BTreeSet<u32> = node_addresses
            .iter()
            .map(|ip| u32::from(*ip).to_be())
            .collect();
        for ip in wanted.difference(&self.node_applied) {
            self.node_addrs
                .insert(ip, 1, 0)
                .map_err(map_error(NODE_ADDRS_MAP, || {
                    format!("adding {}", Ipv4Addr::from(u32::from_be(*ip)))
                }))?;
        }
        for ip in self.node_applied.difference(&wanted) {
            absent_ok(self.node_addrs.remove(ip)).map_err(map_error(NODE_ADDRS_MAP, || {
                format!("removing {}", Ipv4Addr::from(u32::from_be(*ip)))
            }))?;
        }
        self.node_applied = wanted;
        Ok(())
    }

    /// Writes one service's set if it changed: new slots, switch, old slots
    /// removed.
    fn sync_service(&mut self, key: lb::ServiceKey, backends: &[BackendValue]) -> Result<()> {
        let previous = self.applied.get(&key).cloned();
        if previous
            .as_ref()
            .is_some_and(|applied| applied.backends == backends)
        {
            return Ok(());
        }
        let generation = previous
            .as_ref()
            .map_or(0, |applied| applied.value.generation.wrapping_add(1));
        for (slot, backend) in (0..).zip(backends) {
            self.backends
                .insert(slot_key(key, generation, slot), backend, 0)
                .map_err(map_error(BACKENDS_MAP, || {
                    format!("writing a backend of {}", display(key))
                }))?;
        }
        crate::crash::point("proxy.ebpf.after_backends_write");
        if previous.is_none() {
            self.ensure_counters(key)?;
        }
        let value = ServiceValue {
            // At most MAX_BACKENDS, checked in `wanted_services`.
            count: u32::try_from(backends.len()).unwrap_or(MAX_BACKENDS),
            generation,
        };
        self.services
            .insert(key, value, 0)
            .map_err(map_error(SERVICES_MAP, || {
                format!("switching {}", display(key))
            }))?;
        self.applied.insert(
            key,
            Applied {
                value,
                backends: backends.to_vec(),
            },
        );
        crate::crash::point("proxy.ebpf.after_switch");
        if let Some(previous) = previous {
            self.remove_slots(key, previous.value)?;
        }
        Ok(())
    }

    fn remove_service(&mut self, key: lb::ServiceKey) -> Result<()> {
        let Some(applied) = self.applied.get(&key).cloned() else {
            return Ok(());
        };
        absent_ok(self.services.remove(&key)).map_err(map_error(SERVICES_MAP, || {
            format!("removing {}", display(key))
        }))?;
        self.applied.remove(&key);
        self.remove_slots(key, applied.value)?;
        absent_ok(self.counters.remove(&key)).map_err(map_error(COUNTERS_MAP, || {
            format!("removing the counters of {}", display(key))
        }))
    }

    fn remove_slots(&mut self, key: lb::ServiceKey, value: ServiceValue) -> Result<()> {
        for slot in 0..value.count {
            absent_ok(self.backends.remove(&slot_key(key, value.generation, slot))).map_err(
                map_error(BACKENDS_MAP, || {
                    format!("removing an old backend of {}", display(key))
                }),
            )?;
        }
        Ok(())
    }

    /// Creates the service's zeroed counters, keeping a predecessor's.
    fn ensure_counters(&mut self, key: lb::ServiceKey) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![ServiceStats::default(); self.possible_cpus])
            .map_err(io_error("sizing per-CPU counters after", POSSIBLE_CPUS))?;
        match self.counters.insert(key, zero, NOEXIST) {
            Err(error) if errno(&error) == Some(libc::EEXIST) => Ok(()),
            other => other.map_err(map_error(COUNTERS_MAP, || {
                format!("creating the counters of {}", display(key))
            })),
        }
    }

    /// Removes counters without a service entry: left by a predecessor
    /// killed between removing a service and its counters, or between
    /// creating a service's counters and its entry.
    fn drop_stray_counters(&mut self) -> Result<()> {
        let keys: Vec<lb::ServiceKey> = collect(self.counters.keys(), COUNTERS_MAP)?;
        for key in keys {
            if !self.applied.contains_key(&key) {
                absent_ok(self.counters.remove(&key))
                    .map_err(map_error(COUNTERS_MAP, || "removing stray counters".into()))?;
            }
        }
        Ok(())
    }

    /// Connections and bytes per service, summed over the CPUs: one batch lookup
    /// per thousand or so services where the kernel has them, aya's
    /// iteration (two syscalls per service) otherwise.
    pub(super) fn counters(&self) -> Result<BTreeMap<ServiceKey, ServiceCounters>> {
        let fold = |total: ServiceStats, cpu: &ServiceStats| total.wrapping_add(*cpu);
        let fd = self.counters.map().fd().as_fd();
        let entries: Vec<(lb::ServiceKey, ServiceStats)> =
            match batch::lookup_percpu(fd, self.possible_cpus, fold) {
                Ok(entries) => entries.into_iter().collect(),
                Err(error) if batch::unsupported(&error) => self
                    .counters
                    .iter()
                    .map(|entry| {
                        entry.map(|(key, per_cpu)| {
                            (key, per_cpu.iter().fold(ServiceStats::default(), fold))
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(map_error(COUNTERS_MAP, || "reading counters".into()))?,
                Err(io_error) => {
                    return Err(map_error(COUNTERS_MAP, || "reading counters".into())(
                        MapError::SyscallError(SyscallError {
                            call: "BPF_MAP_LOOKUP_BATCH",
                            io_error,
                        }),
                    ));
                }
            };
        Ok(entries
            .into_iter()
            .filter_map(|(key, stats)| {
                let counters = ServiceCounters {
                    connections: stats.connections,
                    bytes: stats.bytes,
                };
                model_key(key).map(|service| (service, counters))
            })
            .collect())
    }

    /// Services in the maps (for tests and `Debug`).
    pub(super) fn service_count(&self) -> usize {
        self.applied.len()
    }
}

/// Where the kernel lists the possible CPUs, the slots of a per-CPU value.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, source)| io_error("reading", POSSIBLE_CPUS)(source))
}

/// The TCP and UDP services of `table` as map keys and slot values.
/// SCTP is left to nftables: socket hooks do not see it usefully.
fn wanted_services(table: &ServiceTable) -> Result<BTreeMap<lb::ServiceKey, Vec<BackendValue>>> {
    let mut wanted = BTreeMap::new();
    for service in table.services() {
        let Some(key) = map_key(service.key) else {
            continue;
        };
        if service.backends.len() > MAX_BACKENDS as usize {
            return Err(SocketLbError::TooManyBackends {
                service: service.key,
                count: service.backends.len(),
                max: MAX_BACKENDS,
            });
        }
        let backends = service.backends.iter().map(|b| backend_value(*b)).collect();
        wanted.insert(key, backends);
    }
    Ok(wanted)
}

fn map_key(key: ServiceKey) -> Option<lb::ServiceKey> {
    let protocol = match key.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => return None,
    };
    Some(lb::ServiceKey::new(key.port, protocol))
}

fn model_key(key: lb::ServiceKey) -> Option<ServiceKey> {
    let protocol = match key.protocol {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(ServiceKey {
        port: key.host_port(),
        protocol,
    })
}

fn backend_value(backend: Backend) -> BackendValue {
    match backend {
        Backend::Address(address) => BackendValue::new(u32::from(*address.ip()), address.port()),
        // Address 0: the programs keep the one the client used.
        Backend::NodePort(port) => BackendValue::new(0, port),
    }
}

fn slot_key(service: lb::ServiceKey, generation: u32, slot: u32) -> BackendKey {
    BackendKey {
        service,
        generation,
        slot,
    }
}

/// A map key as `port/PROTOCOL`, for messages.
fn display(key: lb::ServiceKey) -> String {
    model_key(key).map_or_else(
        || format!("{}/{}", key.host_port(), key.protocol),
        |key| key.to_string(),
    )
}

/// The map `name` out of `ebpf`, typed.
fn take<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(SocketLbError::Missing { kind: "map", name })?;
    M::try_from(map).map_err(map_error(name, || "checking its type".into()))
}

/// Every key of an iteration, or the first error.
fn collect<K, C: FromIterator<K>>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
) -> Result<C> {
    keys.collect::<Result<C, _>>()
        .map_err(map_error(map, || "listing keys".into()))
}

/// The errno of a failed map syscall.
fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// A removal of a key that is not there succeeded in effect.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(error) if errno(&error) == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use proto::manifest::Port;

    use super::*;
    use crate::proxy::model::{Endpoint, PodAddress};

    fn endpoint(instance: &str, address: PodAddress, ports: &[(u16, u16, Protocol)]) -> Endpoint {
        Endpoint {
            app: "app".into(),
            instance: instance.into(),
            address,
            ports: ports
                .iter()
                .map(|&(port, target_port, protocol)| Port {
                    port,
                    target_port,
                    protocol,
                    kind: None,
                })
                .collect(),
        }
    }

    #[test]
    fn tcp_and_udp_services_become_network_order_entries_and_sctp_is_left_out() {
        let table = ServiceTable::from_endpoints(&[
            endpoint(
                "a",
                PodAddress::Ip(Ipv4Addr::new(10, 88, 0, 2)),
                &[
                    (80, 8080, Protocol::Tcp),
                    (53, 5353, Protocol::Udp),
                    (9, 9, Protocol::Sctp),
                ],
            ),
            endpoint("b", PodAddress::HostNetwork, &[(81, 8081, Protocol::Tcp)]),
        ]);
        let wanted = wanted_services(&table).expect("within limits");
        assert_eq!(wanted.len(), 3, "{wanted:?}");
        let web = lb::ServiceKey::new(80, PROTO_TCP);
        assert_eq!(web.port, 80u16.to_be());
        assert_eq!(
            wanted[&web],
            vec![BackendValue {
                ip: u32::from(Ipv4Addr::new(10, 88, 0, 2)).to_be(),
                port: 8080u16.to_be(),
                pad: 0,
            }]
        );
        assert_eq!(
            wanted[&lb::ServiceKey::new(81, PROTO_TCP)],
            vec![BackendValue::new(0, 8081)],
            "a node port keeps the client's address"
        );
        assert!(wanted.contains_key(&lb::ServiceKey::new(53, PROTO_UDP)));
        assert_eq!(
            model_key(web),
            Some(ServiceKey {
                port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(display(web), "80/TCP");
    }

    #[test]
    fn a_service_with_more_backends_than_the_programs_scan_is_refused() {
        let endpoints: Vec<Endpoint> = (0..=MAX_BACKENDS)
            .map(|n| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 89, 0, 0)) + n);
                endpoint(
                    &format!("i{n}"),
                    PodAddress::Ip(ip),
                    &[(80, 80, Protocol::Tcp)],
                )
            })
            .collect();
        let table = ServiceTable::from_endpoints(&endpoints);
        match wanted_services(&table) {
            Err(SocketLbError::TooManyBackends { count, max, .. }) => {
                assert_eq!((count, max), (MAX_BACKENDS as usize + 1, MAX_BACKENDS));
            }
            other => panic!("expected TooManyBackends, got {other:?}"),
        }
    }
}
