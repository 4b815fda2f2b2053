//! The Node Proxy's socket load-balancer: a separate object from the node
//! monitor (`riklet-ebpf`), so that its maps and links live on their own
//! (pinned, they outlive a riklet that is killed) while the monitor's go
//! with the process.
//!
//! Local clients are connected straight to a backend: the destination of
//! `connect` (TCP, connected UDP) and of each unconnected UDP `sendmsg` is
//! rewritten at the socket, before any packet exists, so there is no
//! per-packet NAT and no conntrack entry. `getpeername` and UDP `recvmsg`
//! translate the backend back to the service address the client used.
//!
//! A destination is a service when its port and protocol are in
//! [`LB_SERVICES`] and its address is a node address ([`LB_NODE_ADDRS`]),
//! or in 127.0.0.0/8 for a socket of the host's network namespace.
//!
//! # Layout
//! - this file: the four programs and the socket address they rewrite;
//! - `backends`: the maps, backend selection, UDP affinity, counters;
//! - `bytes`: the `cgroup_skb` pair adding the packets of sockets that
//!   reached a service to its byte counter.
//!
//! Built by `cargo xtask build-ebpf` with the monitor; names and types in
//! `riklet_common::proxy`; loaded by `riklet::proxy::ebpf`.

#![no_std]
#![no_main]

mod backends;
mod bytes;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use riklet_common::proxy::{BackendValue, RevNatKey, RevNatValue, ServiceKey};

use backends::{LB_NODE_ADDRS, LB_REVNAT, LB_SERVICES};

/// Verdict of every program: go on (socket address programs must not
/// refuse here; they only rewrite).
const ALLOW: i32 = 1;

/// The host network namespace's cookie
/// (`riklet_common::proxy::HOST_NETNS_COOKIE`), set by the loader. 0 (not
/// set) matches no socket, so loopback is never proxied by mistake.
#[unsafe(no_mangle)]
static HOST_NETNS_COOKIE: Global<u64> = Global::new(0);

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx);
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    send(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// An IPv4 socket address, both parts in network order.
#[derive(Clone, Copy)]
struct Addr {
    ip: u32,
    port: u16,
}

/// `connect`: one backend for the socket's life.
#[inline(always)]
fn connect(ctx: &SockAddrContext) {
    let Some((service, original)) = service_destination(ctx) else {
        return;
    };
    let Some(backend) = backends::pick(&service) else {
        return;
    };
    let target = rewrite(ctx, original, backend);
    let cookie = socket_cookie(ctx);
    record_reverse(cookie, target, original);
    backends::remember_socket(cookie, &service);
    backends::count_connection(&service);
}

/// Unconnected UDP `sendmsg`: the flow's backend, sticky per socket.
#[inline(always)]
fn send(ctx: &SockAddrContext) {
    let Some((service, original)) = service_destination(ctx) else {
        return;
    };
    let cookie = socket_cookie(ctx);
    let Some(backend) = backends::flow_backend(cookie, &service) else {
        return;
    };
    let target = rewrite(ctx, original, backend);
    // Every datagram passes here: write the entry only when it changes.
    let key = rev_nat_key(cookie, target);
    let value = rev_nat_value(original);
    // SAFETY: the value is copied out at once; an LRU entry removed
    // meanwhile is at worst written again below.
    if unsafe { LB_REVNAT.get(key) }.copied() != Some(value) {
        // A failed insert leaves getpeername/recvmsg showing the backend;
        // traffic still flows, and there is nothing better to do here.
        let _ = LB_REVNAT.insert(key, value, 0);
    }
    backends::remember_socket(cookie, &service);
}

/// `getpeername` and UDP `recvmsg`: a backend the socket reached through a
/// service shows as that service.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let seen = user_addr(ctx);
    let key = rev_nat_key(socket_cookie(ctx), seen);
    // SAFETY: copied out at once (see `send`).
    if let Some(service) = unsafe { LB_REVNAT.get(key) }.copied() {
        set_user_addr(
            ctx,
            Addr {
                ip: service.ip,
                port: service.port,
            },
        );
    }
}

/// The service the socket is about to reach, and the address it used; or
/// `None` when the destination is no service.
#[inline(always)]
fn service_destination(ctx: &SockAddrContext) -> Option<(ServiceKey, Addr)> {
    let original = user_addr(ctx);
    // SAFETY: `protocol` is a readable field of the context.
    let protocol = unsafe { read_field(ctx, |sa| &raw const (*sa).protocol) };
    let service = ServiceKey {
        port: original.port,
        protocol: u8::try_from(protocol).ok()?,
        pad: 0,
    };
    LB_SERVICES.get_ptr(service)?;
    if !is_service_address(ctx, original.ip) {
        return None;
    }
    Some((service, original))
}

/// Whether `ip` (network order) is an address services answer on, for
/// this socket.
#[inline(always)]
fn is_service_address(ctx: &SockAddrContext, ip: u32) -> bool {
    if u32::from_be(ip) >> 24 == 127 {
        // SAFETY: the context pointer the kernel passed; the helper only
        // reads the socket's namespace.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let host = HOST_NETNS_COOKIE.load();
        return host != 0 && netns == host;
    }
    LB_NODE_ADDRS.get_ptr(ip).is_some()
}

/// Points the socket at `backend`; returns the address it now goes to.
#[inline(always)]
fn rewrite(ctx: &SockAddrContext, original: Addr, backend: BackendValue) -> Addr {
    let target = Addr {
        // 0: a node port, on the address the client used.
        ip: if backend.ip == 0 {
            original.ip
        } else {
            backend.ip
        },
        port: backend.port,
    };
    set_user_addr(ctx, target);
    target
}

/// Remembers, for socket `cookie`, that `target` stands for `service`.
#[inline(always)]
fn record_reverse(cookie: u64, target: Addr, service: Addr) {
    let key = rev_nat_key(cookie, target);
    // See `send` for a failed insert.
    let _ = LB_REVNAT.insert(key, rev_nat_value(service), 0);
}

#[inline(always)]
fn rev_nat_key(cookie: u64, backend: Addr) -> RevNatKey {
    RevNatKey {
        cookie,
        ip: backend.ip,
        port: backend.port,
        pad: 0,
    }
}

#[inline(always)]
fn rev_nat_value(service: Addr) -> RevNatValue {
    RevNatValue {
        ip: service.ip,
        port: service.port,
        pad: 0,
    }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the context pointer the kernel passed.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// `user_ip4` and `user_port`. The port is the low 16 bits of `user_port`,
/// already in network order in memory, so the truncation keeps its bytes.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> Addr {
    // SAFETY: both are readable fields of the context for these hooks.
    let (ip, port) = unsafe {
        (
            read_field(ctx, |sa| &raw const (*sa).user_ip4),
            read_field(ctx, |sa| &raw const (*sa).user_port),
        )
    };
    Addr {
        ip,
        port: port as u16,
    }
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, addr: Addr) {
    // SAFETY: `user_ip4` and `user_port` are writable for connect4,
    // sendmsg4, recvmsg4 and getpeername4; 4-byte stores, as the verifier
    // requires.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, addr.ip);
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from(addr.port));
    }
}

/// One 4-byte load of a context field. Volatile so that the compiler
/// neither merges nor narrows it: the verifier only accepts the context's
/// own field accesses.
///
/// # Safety
/// `field` must return a pointer to a readable `u32` field of `*sock_addr`.
#[inline(always)]
unsafe fn read_field(
    ctx: &SockAddrContext,
    field: impl FnOnce(*mut bpf_sock_addr) -> *const u32,
) -> u32 {
    // SAFETY: per the contract, a readable field of the live context.
    unsafe { core::ptr::read_volatile(field(ctx.sock_addr)) }
}

/// Kernel license of the object: GPL-compatible, as the monitor's.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The verifier rejects any program in which this endless loop is
/// reachable, so a panic path shows up at load time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
