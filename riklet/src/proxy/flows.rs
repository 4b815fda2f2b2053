//! Moving UDP flows off backends that left.
//!
//! UDP has no end of connection, so a flow would stay on a backend that
//! is gone for as long as its client keeps talking, in two places:
//! - conntrack (the nftables datapath): the entry keeps the DNAT to the
//!   old backend and every datagram renews it. Deleting it makes the next
//!   datagram a new flow, which the proxy table sends to a live backend.
//! - connected sockets (the eBPF datapath): `connect` was pointed straight
//!   at the backend. Destroying the socket (sock_diag `SOCK_DESTROY`, which
//!   needs `CONFIG_INET_DIAG_DESTROY`) makes the application's next call
//!   fail with `ECONNABORTED`; one that reconnects gets a live backend.
//!
//! Both go through netlink (ctnetlink and sock_diag) with the
//! `netlink-packet-netfilter` and `netlink-packet-sock-diag` message types.
//! Conntrack lives in the host's namespace, where the proxy translates;
//! sockets live wherever their process does, so each pod namespace is
//! searched too, from a helper thread that enters it.

use std::io;
use std::net::{IpAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{AF_INET, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage};
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_SOCK_DIAG};
use netlink_sys::{Socket, SocketAddr};
use nix::sched::CloneFlags;
use tracing::{debug, info, warn};

use crate::network::{NetworkError, netns};

/// `CTA_ZONE`: an entry in a conntrack zone is only found with its zone.
const CTA_ZONE: u16 = 18;

/// What [`forget_udp_flows`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForgottenFlows {
    /// Conntrack entries (host namespace).
    pub conntrack_entries: usize,
    /// Connected UDP sockets destroyed (host and pod namespaces).
    pub sockets: usize,
}

/// A flow clean-up that failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: undecodable netlink answer")]
    Decode {
        what: String,
        #[source]
        source: DecodeError,
    },
    #[error("{what}: {}", .path.display())]
    Netns {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("{what}: the helper thread died")]
    ThreadPanicked { what: &'static str },
}

pub type Result<T> = std::result::Result<T, FlowError>;

/// Deletes the UDP conntrack entries whose replies come from a `gone`
/// backend, and destroys the UDP sockets connected to one, in the host's
/// namespace and in each of `netns` (pods' `/run/netns/rik-<id>`; one that
/// no longer exists is skipped). A failure in the host's namespace stops
/// there; a failing pod namespace does not stop the others, and the first
/// such error is returned after all were tried.
pub async fn forget_udp_flows(gone: &[SocketAddrV4], netns: &[PathBuf]) -> Result<ForgottenFlows> {
    let mut forgotten = ForgottenFlows::default();
    if gone.is_empty() {
        return Ok(forgotten);
    }
    let targets = gone.to_vec();
    let host = tokio::task::spawn_blocking(move || -> Result<ForgottenFlows> {
        Ok(ForgottenFlows {
            conntrack_entries: forget_conntrack(&targets)?,
            sockets: destroy_sockets(&targets)?,
        })
    })
    .await
    .map_err(|_| FlowError::ThreadPanicked {
        what: "forgetting UDP flows",
    })??;
    forgotten.conntrack_entries = host.conntrack_entries;
    forgotten.sockets = host.sockets;
    let mut first_error = None;
    for path in netns {
        match destroy_sockets_in(path, gone.to_vec()).await {
            Ok(n) => forgotten.sockets += n,
            Err(e) => {
                warn!(netns = %path.display(), error = %crate::error_chain(&e), "cannot destroy sockets connected to gone backends");
                first_error.get_or_insert(e);
            }
        }
    }
    if forgotten != ForgottenFlows::default() {
        info!(
            backends = ?gone,
            conntrack_entries = forgotten.conntrack_entries,
            sockets = forgotten.sockets,
            "UDP flows moved off gone backends"
        );
    }
    first_error.map_or(Ok(forgotten), Err)
}

/// [`destroy_sockets`] inside the namespace `path`, on a thread of its own.
async fn destroy_sockets_in(path: &Path, gone: Vec<SocketAddrV4>) -> Result<usize> {
    let ns = match netns::open(path) {
        Ok(ns) => ns,
        Err(NetworkError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            debug!(netns = %path.display(), "namespace gone, no sockets to destroy");
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let path = path.to_path_buf();
    netns::in_thread("destroying sockets in a pod namespace", move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| FlowError::Netns {
            what: "entering a pod namespace",
            path,
            source,
        })?;
        destroy_sockets(&gone)
    })
    .await?
}

/// Deletes the UDP conntrack entries whose reply source is in `gone`.
fn forget_conntrack(gone: &[SocketAddrV4]) -> Result<usize> {
    let what = "listing the conntrack table";
    let socket = open(NETLINK_NETFILTER, what)?;
    let header = || NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
    let mut doomed = Vec::new();
    request(
        &socket,
        NetfilterMessage::new(header(), ConntrackMessage::Get(Vec::new())),
        NLM_F_DUMP,
        what,
        |m: NetfilterMessage| {
            if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = m.inner
                && let Some(key) = doomed_entry(&attrs, gone)
            {
                doomed.push(key);
            }
        },
    )?;
    let mut deleted = 0;
    for key in doomed {
        let message = NetfilterMessage::new(header(), ConntrackMessage::Delete(key));
        match request(
            &socket,
            message,
            NLM_F_ACK,
            "deleting a conntrack entry",
            |_: NetfilterMessage| {},
        ) {
            Ok(()) => deleted += 1,
            // Expired or deleted meanwhile.
            Err(FlowError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The attributes that name an entry for deletion (its original tuple
/// and zone), if it is a UDP flow whose replies come from a `gone` backend.
fn doomed_entry(
    attrs: &[ConntrackAttribute],
    gone: &[SocketAddrV4],
) -> Option<Vec<ConntrackAttribute>> {
    let reply = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleReply(t) => Some(t),
        _ => None,
    })?;
    let mut source = None;
    let mut port = None;
    let mut udp = false;
    for t in reply {
        match t {
            Tuple::Ip(ips) => {
                source = ips.iter().find_map(|ip| match ip {
                    IPTuple::SourceAddress(IpAddr::V4(a)) => Some(*a),
                    _ => None,
                });
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(CtProtocol::Udp) => udp = true,
                        ProtoTuple::SourcePort(p) => port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let from = SocketAddrV4::new(source?, port?);
    if !udp || !gone.contains(&from) {
        return None;
    }
    let key = attrs.iter().filter(|a| match a {
        ConntrackAttribute::CtaTupleOrig(_) => true,
        ConntrackAttribute::Other(nla) => netlink_packet_core::Nla::kind(nla) == CTA_ZONE,
        _ => false,
    });
    Some(key.cloned().collect())
}

/// Destroys the connected UDP sockets of the current namespace whose peer
/// is in `gone`.
fn destroy_sockets(gone: &[SocketAddrV4]) -> Result<usize> {
    let what = "listing UDP sockets";
    let socket = open(NETLINK_SOCK_DIAG, what)?;
    let query = |states: StateFlags, socket_id: SocketId| {
        SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
    };
    let mut doomed = Vec::new();
    // A connected UDP socket is in state "established".
    request(
        &socket,
        query(StateFlags::ESTABLISHED, SocketId::new_v4()),
        NLM_F_DUMP,
        what,
        |m: SockDiagMessage| {
            if let SockDiagMessage::InetResponse(r) = m {
                let id = &r.header.socket_id;
                if let IpAddr::V4(peer) = id.destination_address
                    && gone.contains(&SocketAddrV4::new(peer, id.destination_port))
                {
                    doomed.push(id.clone());
                }
            }
        },
    )?;
    let mut destroyed = 0;
    for id in doomed {
        let message = SockDiagDestroy::new(query(StateFlags::all(), id));
        match request(
            &socket,
            message,
            NLM_F_ACK,
            "destroying a UDP socket",
            |_: SockDiagMessage| {},
        ) {
            Ok(()) => destroyed += 1,
            // Closed meanwhile.
            Err(FlowError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

fn open(protocol: isize, what: &str) -> Result<Socket> {
    let err = |source| FlowError::Netlink {
        what: format!("{what}: opening a netlink socket"),
        source,
    };
    let mut socket = Socket::new(protocol).map_err(err)?;
    socket.bind_auto().map_err(err)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
    Ok(socket)
}

/// Sends one request and reads the answers up to the end of the dump or
/// the acknowledgement, handing each message to `each`.
fn request<Req, Resp>(
    socket: &Socket,
    payload: Req,
    flags: u16,
    what: &str,
    mut each: impl FnMut(Resp),
) -> Result<()>
where
    Req: NetlinkSerializable,
    Resp: NetlinkDeserializable,
{
    let netlink = |source| FlowError::Netlink {
        what: what.to_string(),
        source,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0).map_err(netlink)?;
    loop {
        let (datagram, _) = socket.recv_from_full().map_err(netlink)?;
        let mut offset = 0;
        while offset < datagram.len() {
            let reply =
                NetlinkMessage::<Resp>::deserialize(&datagram[offset..]).map_err(|source| {
                    FlowError::Decode {
                        what: what.to_string(),
                        source,
                    }
                })?;
            let len = reply.header.length as usize;
            if len == 0 {
                break;
            }
            // Messages in a datagram start on 4-byte boundaries.
            offset += (len + 3) & !3;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(()),
                NetlinkPayload::Error(e) => return Err(netlink(e.to_io())),
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
        }
    }
}
