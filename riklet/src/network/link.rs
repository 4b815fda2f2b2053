//! Netlink operations on links, addresses, routes and neighbours, each one
//! idempotent: "ensure" creates what is missing and accepts what exists.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::{NetworkError, Result};

/// A route netlink connection; [`Netlink::close`] waits until its socket
/// is closed.
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// A connection in the riklet's own namespace.
    pub(crate) fn host() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Socket {
                what: "opening a netlink socket".into(),
                source,
            })?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// A connection over `socket` (opened in some namespace).
    pub(crate) fn from_socket(socket: rtnetlink::sys::TokioSocket) -> Self {
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        Netlink {
            handle,
            task: tokio::spawn(conn),
        }
    }

    /// Drops the handle and waits for the connection to close its socket.
    pub(crate) async fn close(self) {
        let Netlink { handle, task } = self;
        drop(handle);
        let _ = task.await;
    }
}

/// The errno of a netlink error reply, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink {
        what,
        source: Box::new(source),
    }
}

/// The link called `name`, if any.
pub(crate) async fn by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

/// Every link of the namespace.
pub(crate) async fn all(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))
}

/// The name of a link.
pub(crate) fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Whether the link is administratively up.
pub(crate) fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The bridge (or bond…) a link is attached to.
pub(crate) fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn kind_of(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Ensures the bridge `name` exists, is up and holds `gateway/prefix_len`;
/// returns its index.
pub(crate) async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<u32> {
    let link = match by_name(h, name).await? {
        Some(link) => link,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => {}
                // Created meanwhile by someone else: fine, checked below.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl_err(format!("creating bridge {name}"))(e)),
            }
            by_name(h, name)
                .await?
                .ok_or_else(|| NetworkError::NotABridge {
                    name: name.to_string(),
                    reason: "vanished right after its creation".into(),
                })?
        }
    };
    if kind_of(&link) != Some(&InfoKind::Bridge) {
        return Err(NetworkError::NotABridge {
            name: name.to_string(),
            reason: format!("it is a link of kind {:?}", kind_of(&link)),
        });
    }
    let index = link.header.index;
    ensure_address(h, index, gateway, prefix_len, name).await?;
    set_up(h, index, None, name).await?;
    Ok(index)
}

/// Ensures link `index` holds `ip/prefix_len`.
pub(crate) async fn ensure_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix_len: u8,
    link_name: &str,
) -> Result<()> {
    let what = || format!("adding {ip}/{prefix_len} to {link_name}");
    let present: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(IpAddr::V4(ip))
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(format!("listing the addresses of {link_name}")))?;
    let same_prefix = present.iter().any(|a| {
        a.header.prefix_len == prefix_len
            && a.attributes
                .iter()
                .any(|attr| matches!(attr, AddressAttribute::Local(IpAddr::V4(l)) if *l == ip))
    });
    if same_prefix {
        return Ok(());
    }
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix_len)
        .replace()
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(what())(e)),
    }
}

/// Brings link `index` up, attached to `controller` if given.
pub(crate) async fn set_up(
    h: &Handle,
    index: u32,
    controller: Option<u32>,
    link_name: &str,
) -> Result<()> {
    let mut msg = LinkUnspec::new_with_index(index).up();
    if let Some(c) = controller {
        msg = msg.controller(c);
    }
    h.link()
        .set(msg.build())
        .execute()
        .await
        .map_err(nl_err(format!("bringing {link_name} up")))
}

/// Makes bridge port `index` a hairpin port: a frame may leave through the
/// port it came in by. A pod reaching its own service through the node
/// needs it where `br_netfilter` is loaded: the proxy's DNAT then happens
/// on the bridge, which sends the translated frame back to the pod's port.
pub(crate) async fn set_hairpin(h: &Handle, index: u32, link_name: &str) -> Result<()> {
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(nl_err(format!("making {link_name} a hairpin bridge port")))
}

/// Creates the veth pair `host` (in this namespace) ⇄ `peer` (created
/// directly in the namespace `peer_netns`, so its name cannot clash with a
/// host link).
pub(crate) async fn create_veth(
    h: &Handle,
    host: &str,
    peer: &str,
    peer_netns: RawFd,
) -> Result<()> {
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer)
        .setns_by_fd(peer_netns)
        .build();
    let msg = LinkVeth::new(host, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl_err(format!("creating veth pair {host} ⇄ {peer}")))
}

/// Turns IPv6 off on link `name` of the caller's namespace (or, for
/// `default`, on the links created in it from now on). The pod network is
/// IPv4 only, and an IPv6-enabled veth costs the whole bridge: its
/// link-local address, duplicate address detection and multicast listener
/// reports are flooded to every pod port when it comes up (at 500 pods a
/// burst of starts took 5.7 s with them, 3.2 s without). A kernel without
/// IPv6 has nothing to turn off.
pub(crate) fn disable_ipv6(name: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ipv6_enabled() => Ok(()),
        Err(source) => Err(NetworkError::Io {
            what: "turning IPv6 off on a pod link".into(),
            path: path.into(),
            source,
        }),
    }
}

/// Whether the kernel has IPv6 (module loaded, not `ipv6.disable=1`).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Deletes link `name`; `false` if there was none.
pub(crate) async fn delete(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = by_name(h, name).await? else {
        return Ok(false);
    };
    delete_index(h, link.header.index, name).await
}

/// Deletes link `index`; `false` if there was none.
pub(crate) async fn delete_index(h: &Handle, index: u32, name: &str) -> Result<bool> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting link {name}"))(e)),
    }
}

/// Sets the default route via `gateway` on link `index`.
pub(crate) async fn ensure_default_route(h: &Handle, index: u32, gateway: Ipv4Addr) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("adding the default route via {gateway}")))
}

/// Forgets the neighbour (ARP) entry of `ip` on link `index`, so that an
/// address reused by another pod is resolved afresh.
pub(crate) async fn forget_neighbour(h: &Handle, index: u32, ip: Ipv4Addr) -> Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match h.neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        Err(e) => Err(nl_err(format!("forgetting the neighbour entry of {ip}"))(e)),
    }
}

/// The index of a veth's peer (in the peer's namespace).
pub(crate) fn peer_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}
