//! The proxy table's shape: the objects a [`ServiceTable`] becomes, built
//! without touching the kernel so that it can be unit-tested. Which of them
//! a sync writes, and when, is [`super::plan`]'s business.
//!
//! ```text
//! table ip <table> {
//!   map services { type inet_proto . inet_service : verdict; counter
//!     elements = { tcp . 80 counter packets 12 bytes 720 : goto svc_tcp_80, … } }
//!   set bytes_tcp { type inet_service; counter       (bytes_udp, bytes_sctp alike)
//!     elements = { 80 counter packets 96 bytes 7051, … } }
//!
//!   chain nat_prerouting { type nat hook prerouting priority dstnat
//!     fib daddr type local jump dispatch        (or ip daddr { configured })
//!   chain nat_output { type nat hook output priority -100
//!     fib daddr type local [meta l4proto sctp] jump dispatch
//!   chain dispatch
//!     meta l4proto . th dport vmap @services
//!   chain svc_tcp_80
//!     meta l4proto tcp numgen random mod 2 0 dnat to 10.88.0.2:8080 comment "app web"
//!     meta l4proto tcp dnat to 10.88.0.3:8080
//!   chain nat_postrouting { type nat hook postrouting priority srcnat
//!     ct status dnat ip saddr 127.0.0.0/8 masquerade
//!     ct status dnat ip saddr <pods> ip daddr <pods> masquerade
//!   chain bytes_postrouting { type filter hook postrouting priority 0
//!     ct status dnat jump bytes
//!   chain bytes_input { type filter hook input priority 0
//!     meta iif != "lo" ct status dnat jump bytes
//!   chain bytes
//!     meta l4proto tcp ct original proto-dst @bytes_tcp   (udp, sctp alike)
//! }
//! ```
//!
//! Why this shape:
//! - Everything but the services is fixed: the sets, the base chains and
//!   their rules are written once. A service is one chain, its rules and
//!   two set elements, so a sync touches only the services that changed
//!   (see [`super::plan`]), and 1,000 services are about 3,000 objects.
//! - One hash lookup per new connection whatever the number of services:
//!   the named verdict map `@services`, whose elements are added and
//!   deleted one by one.
//! - The backend is picked by one rule per backend: rule `i` of `n` takes
//!   the connection with probability `1 / (n - i)` (`numgen random mod
//!   n-i 0`), the last one takes what is left, so each backend gets `1/n`
//!   (per new connection, so per flow for UDP: conntrack keeps a flow on
//!   its backend). A pod address is a `dnat`, a node port (keep the
//!   address, change the port) a `redirect`, so a service may mix both.
//!   Not one rule with an anonymous `numgen` map: that is a kernel set per
//!   service, and 1,000 of them cost the kernel more than twice what 2,000
//!   rules do; nor a named map shared by the services, keyed by `protocol
//!   . port . numgen`: `nft -j` (1.0.6) cannot declare its integer part.
//! - Counters are the elements' own (`counter` in the set declaration):
//!   no object per service, nothing `nft` has to load on every run, and an
//!   element lives as long as its service, so its counters only grow. The
//!   `@services` element counts the first packets that reach the service
//!   (the NAT hooks see only those), i.e. connections; the `@bytes_<proto>`
//!   element counts every packet of the connections DNATed to the port.
//! - Bytes: every packet of a DNATed connection is counted once: on its
//!   way out (postrouting sees forwarded and locally sent packets) or, if
//!   it is delivered to this node from another interface, on input (what
//!   came in over `lo` was counted on its way out). The service is told by
//!   the connection's original destination port, so a DNAT of the same
//!   port by someone else on this node would be counted too. One set per
//!   protocol: `ct original proto-dst` has no type until the protocol is
//!   known, so it cannot be part of a concatenated key.
//! - Masquerade: replies to a loopback source cannot leave the node, and a
//!   pod reaching a pod through the node would get the reply straight over
//!   the bridge, bypassing the de-NAT. Any DNATed connection of these two
//!   kinds needs it, whoever translated it, so the rules do not look at the
//!   port. They compose with the pod masquerade (`riklet` table, also
//!   srcnat): the first NAT chain that masquerades a connection wins, and
//!   both translate to the outgoing interface's address. A pod reaching
//!   itself also needs its bridge port in hairpin mode where `br_netfilter`
//!   is loaded (the pod network sets it).
//! - Names are derived from the service key, so that an operator reading
//!   `nft list table ip <table>` finds `svc_tcp_80` and `tcp . 80`.

use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression, Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject};
use nftables::stmt::{Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use serde_json::{Value, json};

use super::names::*;
use super::syntax::*;
use super::{LocalTraffic, NftSettings};
use crate::proxy::model::{Backend, Service, ServiceKey};

const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// The base chains: name, type, hook, priority.
const BASE_CHAINS: [(&str, NfChainType, NfHook, i32); 5] = [
    (NAT_PREROUTING, NfChainType::NAT, NfHook::Prerouting, DSTNAT),
    (NAT_OUTPUT, NfChainType::NAT, NfHook::Output, DSTNAT),
    (
        NAT_POSTROUTING,
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT,
    ),
    (
        BYTES_POSTROUTING,
        NfChainType::Filter,
        NfHook::Postrouting,
        FILTER,
    ),
    (BYTES_INPUT, NfChainType::Filter, NfHook::Input, FILTER),
];

/// The named sets: kind (`set` or `map`), name, and what `nft -j` says of
/// their type.
fn sets() -> Vec<(&'static str, String, Value)> {
    let mut sets = vec![(
        "map",
        SERVICES.to_string(),
        json!({"type": ["inet_proto", "inet_service"], "map": "verdict"}),
    )];
    for p in PROTOCOLS {
        sets.push(("set", bytes_set(p), json!({"type": "inet_service"})));
    }
    sets
}

/// Whether `o`, a set or map of `nft -j list table`, is one of ours as
/// this version declares it (else it is deleted and declared anew).
pub fn is_our_set(kind: &str, o: &Value) -> bool {
    sets().into_iter().any(|(k, name, declared)| {
        k == kind
            && o["name"] == *name
            && o["type"] == declared["type"]
            && o.get("map") == declared.get("map")
            && o.get("flags").is_none()
            && o["stmt"] == json!([{"counter": null}])
    })
}

/// Declares the table, its sets and chains, and writes the rules of the
/// fixed chains: everything but the services.
pub(super) fn add_fixed(tx: &mut Tx, settings: &NftSettings) {
    let t = Tables::new(&settings.table);
    tx.add(NfListObject::Table(t.table()));
    for (kind, name, declaration) in sets() {
        tx.raw(t.counting_set(kind, &name, declaration));
    }
    for (name, kind, hook, prio) in BASE_CHAINS {
        tx.add(NfListObject::Chain(Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..t.chain(name)
        }));
    }
    for name in [DISPATCH, BYTES] {
        tx.add(NfListObject::Chain(t.chain(name)));
    }
    hook_rules(tx, &t, settings);
    masquerade_rules(tx, &t, settings);
    bytes_rules(tx, &t);
}

/// A service's chain, unless `chain_exists`, and its rules (its set
/// elements come with [`add_elements`]).
pub(super) fn add_service(tx: &mut Tx, settings: &NftSettings, s: &Service, chain_exists: bool) {
    let t = Tables::new(&settings.table);
    if !chain_exists {
        tx.add(NfListObject::Chain(t.chain(&service_chain(&s.key))));
    }
    for rule in service_rules(&t, s) {
        tx.add(rule);
    }
}

/// The `@services` and `@bytes_*` elements of new services, one command
/// per set (each command is a message to the kernel): after the chains
/// they name.
pub(super) fn add_elements(tx: &mut Tx, settings: &NftSettings, keys: &[ServiceKey]) {
    if keys.is_empty() {
        return;
    }
    let t = Tables::new(&settings.table);
    tx.add(t.elements(SERVICES, keys.iter().map(services_element).collect()));
    for p in PROTOCOLS {
        let ports: Vec<_> = keys
            .iter()
            .filter(|k| k.protocol == p)
            .map(bytes_element)
            .collect();
        if !ports.is_empty() {
            tx.add(t.elements(&bytes_set(p), ports));
        }
    }
}

/// The rules of a service's chain, in order (see the module doc).
pub(super) fn service_rules(t: &Tables, s: &Service) -> Vec<NfListObject<'static>> {
    let chain = service_chain(&s.key);
    let l4 = match_eq(
        meta(MetaKey::L4proto),
        string(protocol_name(s.key.protocol)),
    );
    let n = s.backends.len();
    s.backends
        .iter()
        .enumerate()
        .map(|(i, backend)| {
            let mut expr = vec![l4.clone()];
            if i + 1 < n {
                expr.push(one_in(n - i));
            }
            expr.push(match backend {
                Backend::Address(a) => dnat_to(a.ip().to_string(), a.port()),
                Backend::NodePort(p) => redirect_to(*p),
            });
            let comment = (i == 0).then(|| format!("app {}", s.app));
            t.rule(&chain, expr, comment)
        })
        .collect()
}

/// The rule put at the head of the chain of a service that is gone until
/// the chain is deleted: back to the hook, untranslated.
pub(super) fn gone_rule(t: &Tables, key: &ServiceKey) -> NfListObject<'static> {
    t.rule(
        &service_chain(key),
        vec![Statement::Return(None)],
        Some("gone: removed at the next compaction".into()),
    )
}

/// `tcp . 80 : goto svc_tcp_80`.
pub(super) fn services_element(key: &ServiceKey) -> Expression<'static> {
    Expression::List(vec![services_key(key), goto(service_chain(key))])
}

/// `tcp . 80`.
pub(super) fn services_key(key: &ServiceKey) -> Expression<'static> {
    concat(vec![
        string(protocol_name(key.protocol)),
        Expression::Number(u32::from(key.port)),
    ])
}

/// `80` (of `@bytes_tcp`).
pub(super) fn bytes_element(key: &ServiceKey) -> Expression<'static> {
    Expression::Number(u32::from(key.port))
}

/// The verdict `@services` holds for `key`, as `nft -j` lists it.
pub(super) fn services_verdict(key: &ServiceKey) -> Value {
    json!({"goto": {"target": service_chain(key)}})
}

/// Which traffic is looked up in `@services`, and the lookup itself.
fn hook_rules(tx: &mut Tx, t: &Tables, settings: &NftSettings) {
    let to_node = if settings.addresses.is_empty() {
        match_eq(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: [FibFlag::Daddr].into_iter().collect(),
            })),
            string("local"),
        )
    } else {
        let addresses = settings
            .addresses
            .iter()
            .map(|a| SetItem::Element(string(a.to_string())));
        match_eq(
            payload("ip", "daddr"),
            Expression::Named(NamedExpression::Set(addresses.collect())),
        )
    };
    tx.add(t.rule(NAT_PREROUTING, vec![to_node.clone(), jump(DISPATCH)], None));
    let output = match settings.local {
        LocalTraffic::All => vec![to_node, jump(DISPATCH)],
        LocalTraffic::SctpOnly => vec![
            to_node,
            match_eq(meta(MetaKey::L4proto), string("sctp")),
            jump(DISPATCH),
        ],
    };
    tx.add(t.rule(NAT_OUTPUT, output, None));
    let lookup = Statement::VerdictMap(VerdictMap {
        key: concat(vec![meta(MetaKey::L4proto), payload("th", "dport")]),
        data: string(format!("@{SERVICES}")),
    });
    tx.add(t.rule(DISPATCH, vec![lookup], None));
}

/// Masquerade where a reply would not find its way back through the node.
fn masquerade_rules(tx: &mut Tx, t: &Tables, settings: &NftSettings) {
    let prefix = |addr: String, len: u8| {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(string(addr)),
            len: u32::from(len),
        }))
    };
    let loopback = prefix("127.0.0.0".into(), 8);
    let pods = || {
        prefix(
            settings.pod_cidr.network().to_string(),
            settings.pod_cidr.prefix_len(),
        )
    };
    tx.add(t.rule(
        NAT_POSTROUTING,
        vec![
            ct_dnat(),
            match_eq(payload("ip", "saddr"), loopback),
            Statement::Masquerade(None),
        ],
        Some("loopback clients leave with the node's address".into()),
    ));
    tx.add(t.rule(
        NAT_POSTROUTING,
        vec![
            ct_dnat(),
            match_eq(payload("ip", "saddr"), pods()),
            match_eq(payload("ip", "daddr"), pods()),
            Statement::Masquerade(None),
        ],
        Some("hairpin: replies come back through the node".into()),
    ));
}

/// Every packet of a DNATed connection counted once (see the module doc).
fn bytes_rules(tx: &mut Tx, t: &Tables) {
    tx.add(t.rule(BYTES_POSTROUTING, vec![ct_dnat(), jump(BYTES)], None));
    tx.add(t.rule(
        BYTES_INPUT,
        vec![
            match_op(meta(MetaKey::Iif), string("lo"), Operator::NEQ),
            ct_dnat(),
            jump(BYTES),
        ],
        None,
    ));
    for p in PROTOCOLS {
        let l4 = match_eq(meta(MetaKey::L4proto), string(protocol_name(p)));
        let counted = match_eq(ct_original_port(), string(format!("@{}", bytes_set(p))));
        tx.add(t.rule(BYTES, vec![l4, counted], None));
    }
}

#[cfg(test)]
pub(super) mod tests;
