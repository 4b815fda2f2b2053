//! What the proxy serves, independent of how: the services of this node
//! and their backends, built from the agent's RUNNING pods.
//!
//! Both datapaths (eBPF socket load-balancing, nftables) are driven from
//! one [`ServiceTable`], so they can never disagree about where a port
//! goes. A backend is an address, not a pod: a later cluster-wide proxy
//! adds remote pods' addresses to the same sets.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use proto::manifest::{Port, Protocol};
use tracing::warn;

/// A service: a port and protocol on every proxied node address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Where a service's traffic may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// An address and port, e.g. a pod's address on the pod network.
    Address(SocketAddrV4),
    /// The node itself, on another port (a `hostNetwork` pod whose
    /// `target_port` differs from its `port`): the destination address the
    /// client used is kept, only the port changes, so it works from the
    /// node's own loopback and from a pod's network namespace alike.
    NodePort(u16),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Address(a) => write!(f, "{a}"),
            Backend::NodePort(p) => write!(f, "node:{p}"),
        }
    }
}

/// One service and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// The app that owns the port.
    pub app: String,
    /// Sorted, without duplicates; never empty in a [`ServiceTable`].
    pub backends: Vec<Backend>,
}

/// Where a RUNNING pod can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAddress {
    /// Its own network namespace, at this address.
    Ip(Ipv4Addr),
    /// The node's network namespace (`hostNetwork`).
    HostNetwork,
}

/// A RUNNING pod with exposed ports: what the agent hands the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub app: String,
    pub instance: String,
    pub address: PodAddress,
    /// Every container's ports.
    pub ports: Vec<Port>,
}

/// Every service of the node, ordered by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceTable {
    services: BTreeMap<ServiceKey, Service>,
}

impl ServiceTable {
    /// Groups the endpoints' ports into services. A `hostNetwork` pod whose
    /// `target_port` equals its `port` already listens on the node's port
    /// and needs no proxying, so it adds nothing. Should two apps hold one
    /// port (the agent refuses that, but a runtime memory written by an
    /// older riklet might), the app first in name order keeps it.
    pub fn from_endpoints(endpoints: &[Endpoint]) -> Self {
        let mut services: BTreeMap<ServiceKey, Service> = BTreeMap::new();
        for e in endpoints {
            for p in &e.ports {
                let backend = match e.address {
                    PodAddress::Ip(ip) => Backend::Address(SocketAddrV4::new(ip, p.target_port)),
                    PodAddress::HostNetwork if p.port == p.target_port => continue,
                    PodAddress::HostNetwork => Backend::NodePort(p.target_port),
                };
                let key = ServiceKey {
                    port: p.port,
                    protocol: p.protocol,
                };
                let service = services.entry(key).or_insert_with(|| Service {
                    key,
                    app: e.app.clone(),
                    backends: Vec::new(),
                });
                if service.app != e.app {
                    if e.app < service.app {
                        warn!(service = %key, app = %service.app, other = %e.app, "two apps hold one port; the first by name keeps it");
                        service.app = e.app.clone();
                        service.backends.clear();
                    } else {
                        warn!(service = %key, app = %service.app, other = %e.app, instance = %e.instance, "two apps hold one port; ignoring the second");
                        continue;
                    }
                }
                service.backends.push(backend);
            }
        }
        for s in services.values_mut() {
            s.backends.sort();
            s.backends.dedup();
        }
        ServiceTable { services }
    }

    /// The services, ordered by key.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The service on `key`, if any.
    pub fn get(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// Traffic one service carried since the datapath was set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connections (TCP connects, UDP flows, first packets of a NATed
    /// connection) sent to a backend.
    pub connections: u64,
    /// Bytes, where the datapath sees them (nftables counters).
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16, target_port: u16, protocol: Protocol) -> Port {
        Port {
            port,
            target_port,
            protocol,
            kind: None,
        }
    }

    fn endpoint(app: &str, instance: &str, address: PodAddress, ports: Vec<Port>) -> Endpoint {
        Endpoint {
            app: app.into(),
            instance: instance.into(),
            address,
            ports,
        }
    }

    #[test]
    fn replicas_share_a_service_and_host_network_maps_to_node_ports() {
        let ip = |n| PodAddress::Ip(Ipv4Addr::new(10, 88, 0, n));
        let table = ServiceTable::from_endpoints(&[
            endpoint("web", "web-2", ip(3), vec![port(80, 8080, Protocol::Tcp)]),
            endpoint("web", "web-1", ip(2), vec![port(80, 8080, Protocol::Tcp)]),
            endpoint(
                "dns",
                "dns-1",
                PodAddress::HostNetwork,
                vec![port(53, 5353, Protocol::Udp), port(54, 54, Protocol::Udp)],
            ),
        ]);
        let web = table
            .get(&ServiceKey {
                port: 80,
                protocol: Protocol::Tcp,
            })
            .unwrap();
        assert_eq!(web.app, "web");
        assert_eq!(
            web.backends,
            vec![
                Backend::Address("10.88.0.2:8080".parse().unwrap()),
                Backend::Address("10.88.0.3:8080".parse().unwrap()),
            ]
        );
        let dns = table
            .get(&ServiceKey {
                port: 53,
                protocol: Protocol::Udp,
            })
            .unwrap();
        assert_eq!(dns.backends, vec![Backend::NodePort(5353)]);
        // Same port on the host network: nothing to proxy.
        assert_eq!(table.len(), 2);
        assert_eq!(web.key.to_string(), "80/TCP");
    }

    #[test]
    fn a_port_held_by_two_apps_goes_to_the_first_by_name() {
        let ip = |n| PodAddress::Ip(Ipv4Addr::new(10, 88, 0, n));
        let table = ServiceTable::from_endpoints(&[
            endpoint("zeta", "zeta-1", ip(2), vec![port(80, 80, Protocol::Tcp)]),
            endpoint("alpha", "alpha-1", ip(3), vec![port(80, 80, Protocol::Tcp)]),
            endpoint("zeta", "zeta-2", ip(4), vec![port(80, 80, Protocol::Tcp)]),
        ]);
        let s = table.services().next().unwrap();
        assert_eq!(s.app, "alpha");
        assert_eq!(
            s.backends,
            vec![Backend::Address("10.88.0.3:80".parse().unwrap())]
        );
    }
}
