//! Service bytes: `cgroup_skb` ingress and egress programs, attached at the
//! cgroup root with the socket hooks, add every packet of a socket that
//! reached a service (see `backends::remember_socket`) to that service's
//! byte counter.
//!
//! The socket hooks keep packets free of NAT; counting bytes is the one
//! per-packet cost of this datapath: a cookie and one hash lookup, which
//! misses for every socket that never used a service.

use aya_ebpf::{
    EbpfContext, bindings::__sk_buff, helpers::bpf_get_socket_cookie, macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::backends;

/// `cgroup_skb` verdict: let the packet through; these programs only count.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn lb_bytes_in(ctx: SkBuffContext) -> i32 {
    count(&ctx);
    PASS
}

#[cgroup_skb(egress)]
pub fn lb_bytes_out(ctx: SkBuffContext) -> i32 {
    count(&ctx);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext) {
    // SAFETY: the `__sk_buff` the kernel passed; the helper reads the
    // packet's socket, and gives 0 for a packet without one.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr().cast::<__sk_buff>().cast()) };
    if cookie != 0 {
        backends::count_bytes(cookie, ctx.len());
    }
}
