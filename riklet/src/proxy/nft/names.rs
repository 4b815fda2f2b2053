//! Names in the proxy table, derived from the service key so that an
//! operator reading `nft list table ip <table>` finds `svc_tcp_80` and the
//! `tcp . 80` entry of `@services`, and so that a restarted riklet
//! recognises what its predecessor wrote.

use proto::manifest::Protocol;

use crate::proxy::model::ServiceKey;

/// Base chains.
pub const NAT_PREROUTING: &str = "nat_prerouting";
pub const NAT_OUTPUT: &str = "nat_output";
pub const NAT_POSTROUTING: &str = "nat_postrouting";
pub const BYTES_POSTROUTING: &str = "bytes_postrouting";
pub const BYTES_INPUT: &str = "bytes_input";
/// The chain looking a new connection up in [`SERVICES`].
pub const DISPATCH: &str = "dispatch";
/// The chain looking a DNATed packet up in the `bytes_<protocol>` sets.
pub const BYTES: &str = "bytes";
/// The verdict map `protocol . port → goto svc_<protocol>_<port>`; its
/// element counters count connections.
pub const SERVICES: &str = "services";

/// Every protocol a service may have, in the order the table lists them.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// `svc_tcp_80`: the chain that picks a backend of the service.
pub fn service_chain(key: &ServiceKey) -> String {
    format!("svc_{}_{}", protocol_name(key.protocol), key.port)
}

/// `bytes_tcp`: the set of the protocol's service ports whose element
/// counters count the bytes of the connections DNATed to them.
pub fn bytes_set(protocol: Protocol) -> String {
    format!("bytes_{}", protocol_name(protocol))
}

/// The protocol as nft names it.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The protocol nft names `name`, if it is one a service can have.
pub fn parse_protocol(name: &str) -> Option<Protocol> {
    PROTOCOLS.into_iter().find(|p| protocol_name(*p) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_readable_and_protocols_parse_back() {
        let k = ServiceKey {
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(service_chain(&k), "svc_tcp_80");
        assert_eq!(bytes_set(Protocol::Sctp), "bytes_sctp");
        for p in PROTOCOLS {
            assert_eq!(parse_protocol(protocol_name(p)), Some(p));
        }
        assert_eq!(parse_protocol("icmp"), None);
        assert_eq!(parse_protocol("TCP"), None);
    }
}
