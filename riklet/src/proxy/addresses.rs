//! The node's IPv4 addresses, which the proxy serves apps' ports on.
//!
//! They are re-read every [`super::ADDRESS_POLL`], so the read must stay
//! cheap however many pods run: one netlink dump of the IPv4 addresses
//! only. `getifaddrs(3)` would also dump every link with its statistics and
//! every IPv6 address, that is each pod's host-side veth twice; at 500 pods
//! that was an eighth of the riklet's CPU.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

/// Why the addresses could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("opening a netlink route socket")]
    Socket(#[source] std::io::Error),
    #[error("dumping the node's IPv4 addresses over netlink")]
    Netlink(#[source] rtnetlink::Error),
    #[error("the netlink connection closed during the address dump")]
    Closed,
}

/// Every IPv4 address of the node but loopback ones, sorted, without
/// duplicates.
pub async fn node_ipv4_addresses() -> Result<Vec<Ipv4Addr>, AddressError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(AddressError::Socket)?;
    let mut request = handle.address().get();
    // The kernel then dumps the IPv4 addresses only.
    request.message_mut().header.family = AddressFamily::Inet;
    let dump = async {
        let mut found = BTreeSet::new();
        let mut replies = request.execute();
        while let Some(message) = replies.try_next().await.map_err(AddressError::Netlink)? {
            found.extend(address_of(&message).filter(|ip| !ip.is_loopback()));
        }
        Ok(found.into_iter().collect())
    };
    // The connection is driven here, not spawned: it ends with the dump.
    tokio::select! {
        found = dump => found,
        () = connection => Err(AddressError::Closed),
    }
}

/// The address of an interface address message as `getifaddrs` reports
/// it: the local address, else the (peer) address.
fn address_of(message: &AddressMessage) -> Option<Ipv4Addr> {
    let v4 = |attribute: &AddressAttribute| match attribute {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some((true, *ip)),
        AddressAttribute::Address(IpAddr::V4(ip)) => Some((false, *ip)),
        _ => None,
    };
    let mut candidates: Vec<(bool, Ipv4Addr)> = message.attributes.iter().filter_map(v4).collect();
    // The local address first.
    candidates.sort_by_key(|(local, _)| !local);
    candidates.first().map(|(_, ip)| *ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.attributes = attributes;
        m
    }

    #[test]
    fn the_local_address_wins_over_the_peer() {
        let local = Ipv4Addr::new(10, 0, 0, 1);
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let m = message(vec![
            AddressAttribute::Address(IpAddr::V4(peer)),
            AddressAttribute::Local(IpAddr::V4(local)),
        ]);
        assert_eq!(address_of(&m), Some(local));
        let m = message(vec![AddressAttribute::Address(IpAddr::V4(peer))]);
        assert_eq!(address_of(&m), Some(peer));
        assert_eq!(address_of(&message(vec![])), None);
    }

    fn from_getifaddrs() -> Vec<Ipv4Addr> {
        let mut found: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter_map(|a| a.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
            .filter(|ip| !ip.is_loopback())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Reads the addresses of the machine the test runs on (no root
    /// needed): the same as `getifaddrs` lists. Other tests may add or
    /// remove an address meanwhile, so a difference is looked at again a
    /// few times before it counts.
    #[tokio::test]
    async fn the_dump_lists_what_getifaddrs_lists() {
        let mut last = None;
        for _ in 0..5 {
            let dumped = node_ipv4_addresses().await.expect("address dump");
            let expected = from_getifaddrs();
            if dumped == expected {
                return;
            }
            last = Some((dumped, expected));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("netlink dump and getifaddrs differ: {last:?}");
    }
}
