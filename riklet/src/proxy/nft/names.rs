//! Names in the proxy table, derived from the service key so that an
//! operator reading `nft list table ip <table>` finds `svc_tcp_80`,
//! `conn_tcp_80`, … and so that a restarted riklet recognises its
//! predecessor's counters.

use proto::manifest::Protocol;

use crate::proxy::model::{Backend, ServiceKey};

/// Base chains.
pub const NAT_PREROUTING: &str = "nat_prerouting";
pub const NAT_OUTPUT: &str = "nat_output";
pub const NAT_POSTROUTING: &str = "nat_postrouting";
pub const BYTES_POSTROUTING: &str = "bytes_postrouting";
pub const BYTES_INPUT: &str = "bytes_input";
/// The dispatch chains: service key → service chain, and → bytes chain.
pub const SERVICES: &str = "services";
pub const BYTES: &str = "bytes";

/// `svc_tcp_80`: the chain that picks a backend of the service.
pub fn service_chain(key: &ServiceKey) -> String {
    format!("svc_{}_{}", protocol_name(key.protocol), key.port)
}

/// `svc_tcp_80_to_10.88.0.2_8080`, `svc_tcp_80_to_node_8080`: the chain of
/// one backend of a service that mixes pod addresses and node ports.
pub fn backend_chain(key: &ServiceKey, backend: &Backend) -> String {
    match backend {
        Backend::Address(a) => format!("{}_to_{}_{}", service_chain(key), a.ip(), a.port()),
        Backend::NodePort(p) => format!("{}_to_node_{p}", service_chain(key)),
    }
}

/// `count_tcp_80`: the chain counting the service's bytes.
pub fn bytes_chain(key: &ServiceKey) -> String {
    format!("count_{}_{}", protocol_name(key.protocol), key.port)
}

/// `conn_tcp_80`: counter object whose packets are the connections.
pub fn connections_counter(key: &ServiceKey) -> String {
    format!(
        "{}_{}_{}",
        CounterKind::Connections.prefix(),
        protocol_name(key.protocol),
        key.port
    )
}

/// `bytes_tcp_80`: counter object of the service's bytes.
pub fn bytes_counter(key: &ServiceKey) -> String {
    format!(
        "{}_{}_{}",
        CounterKind::Bytes.prefix(),
        protocol_name(key.protocol),
        key.port
    )
}

/// What a counter object of the table counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Connections,
    Bytes,
}

impl CounterKind {
    fn prefix(self) -> &'static str {
        match self {
            CounterKind::Connections => "conn",
            CounterKind::Bytes => "bytes",
        }
    }
}

/// The service and kind of a counter name this module made; `None` for
/// any other name.
pub fn parse_counter(name: &str) -> Option<(CounterKind, ServiceKey)> {
    let (kind, rest) = name.split_once('_')?;
    let kind = [CounterKind::Connections, CounterKind::Bytes]
        .into_iter()
        .find(|k| k.prefix() == kind)?;
    let (protocol, port) = rest.split_once('_')?;
    let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| protocol_name(*p) == protocol)?;
    // `port.parse` would accept "+80" or "080": only the canonical form.
    let port: u16 = port.parse().ok().filter(|p: &u16| p.to_string() == port)?;
    Some((kind, ServiceKey { port, protocol }))
}

/// The protocol as nft names it.
pub(super) fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, protocol: Protocol) -> ServiceKey {
        ServiceKey { port, protocol }
    }

    #[test]
    fn names_are_readable_and_parse_back() {
        let k = key(80, Protocol::Tcp);
        assert_eq!(service_chain(&k), "svc_tcp_80");
        assert_eq!(bytes_chain(&k), "count_tcp_80");
        assert_eq!(connections_counter(&k), "conn_tcp_80");
        assert_eq!(bytes_counter(&key(132, Protocol::Sctp)), "bytes_sctp_132");
        let pod = Backend::Address("10.88.0.2:8080".parse().unwrap());
        assert_eq!(backend_chain(&k, &pod), "svc_tcp_80_to_10.88.0.2_8080");
        assert_eq!(
            backend_chain(&k, &Backend::NodePort(81)),
            "svc_tcp_80_to_node_81"
        );

        assert_eq!(
            parse_counter("conn_udp_53"),
            Some((CounterKind::Connections, key(53, Protocol::Udp)))
        );
        assert_eq!(
            parse_counter("bytes_sctp_65535"),
            Some((CounterKind::Bytes, key(65535, Protocol::Sctp)))
        );
        for other in [
            "conn_tcp_080",
            "conn_tcp_+80",
            "conn_tcp_65536",
            "conn_icmp_1",
            "pkts_tcp_80",
            "conn_tcp",
            "conn",
        ] {
            assert_eq!(parse_counter(other), None, "{other}");
        }
    }
}
