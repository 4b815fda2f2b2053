//! The proxy table as data: what [`super::NftProxy::sync`] hands to `nft`,
//! built without touching the kernel so that it can be unit-tested.
//!
//! ```text
//! table ip <table> {
//!   counter conn_tcp_80 {…}   packets = connections (the NAT rule sees only
//!   counter bytes_tcp_80 {…}  first packets); bytes = both directions
//!
//!   chain nat_prerouting { type nat hook prerouting priority dstnat
//!     fib daddr type local jump services        (or ip daddr { configured })
//!   chain nat_output { type nat hook output priority -100
//!     fib daddr type local [meta l4proto sctp] jump services
//!   chain services
//!     meta l4proto . th dport vmap { tcp . 80 : goto svc_tcp_80, … }
//!   chain svc_tcp_80
//!     meta l4proto tcp counter name "conn_tcp_80"
//!       dnat ip to numgen random mod 2 map { 0 : 10.88.0.2 . 8080, 1 : … }
//!   chain nat_postrouting { type nat hook postrouting priority srcnat
//!     ct status dnat ip saddr 127.0.0.0/8 masquerade
//!     ct status dnat ip saddr <pods> ip daddr <pods> masquerade
//!   chain bytes_postrouting { type filter hook postrouting priority 0
//!     ct status dnat jump bytes
//!   chain bytes_input { type filter hook input priority 0
//!     meta iif != "lo" ct status dnat jump bytes
//!   chain bytes
//!     meta l4proto tcp ct original proto-dst vmap { 80 : goto count_tcp_80 }
//!   chain count_tcp_80
//!     counter name "bytes_tcp_80"
//! }
//! ```
//!
//! Why this shape:
//! - One hash lookup per new connection whatever the number of services:
//!   the `services` verdict map. It is an anonymous map inside the rule
//!   (the `nftables` crate has no `verdict` map type for a named map); the
//!   rule is rewritten on every sync anyway.
//! - A service whose backends are all pod addresses (or all node ports)
//!   picks one in its own rule (`numgen random` per new connection, so per
//!   flow for UDP: conntrack keeps a flow on its backend). A service mixing
//!   both kinds jumps to one chain per backend, since a node port (keep the
//!   address, change the port: `redirect`) is not a constant address.
//! - Masquerade: replies to a loopback source cannot leave the node, and a
//!   pod reaching a pod through the node would get the reply straight over
//!   the bridge, bypassing the de-NAT. Any DNATed connection of these two
//!   kinds needs it, whoever translated it, so the rules do not look at the
//!   port. They compose with the pod masquerade (`riklet` table, also
//!   srcnat): the first NAT chain that masquerades a connection wins, and
//!   both translate to the outgoing interface's address. A pod reaching
//!   itself also needs its bridge port in hairpin mode where `br_netfilter`
//!   is loaded (the pod network sets it).
//! - Bytes: every packet of a DNATed connection is counted once: on its
//!   way out (postrouting sees forwarded and locally sent packets) or, if
//!   it is delivered to this node from another interface, on input (what
//!   came in over `lo` was counted on its way out). The service is told by
//!   the connection's original destination port, so a DNAT of the same
//!   port by someone else on this node would be counted too.
//! - Counters are named objects: a sync flushes every rule and rewrites
//!   them, counters stay (see [`transaction`]).
//! - Names are derived from the service key, so that an operator reading
//!   `nft list table ip <table>` finds `svc_tcp_80`, `conn_tcp_80`, ….

use std::collections::BTreeSet;

use nftables::batch::Batch;
use nftables::expr::{
    CT, CTDir, Expression, Fib, FibFlag, FibResult, MetaKey, NamedExpression, Prefix, SetItem,
};
use nftables::schema::{Chain, FlushObject, Map, NfCmd, NfListObject, Nftables, Set};
use nftables::stmt::{Counter, JumpTarget, NAT, NATFamily, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use proto::manifest::Protocol;

use super::names::*;
use super::syntax::*;
use super::{LocalTraffic, NftSettings};
use crate::proxy::model::{Backend, Service, ServiceTable};

const DSTNAT: i32 = -100;
const SRCNAT: i32 = 100;
const FILTER: i32 = 0;

/// What a table holds before a sync, as far as a sync cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub counters: BTreeSet<String>,
    /// Named sets and maps (this module makes none: a predecessor's).
    pub sets: BTreeSet<String>,
    pub maps: BTreeSet<String>,
    /// Found in the kernel rather than remembered from our last sync: a
    /// predecessor may have hooked its base chains differently, so every
    /// chain is deleted and created anew.
    pub recreate_chains: bool,
    /// Objects of other kinds (quotas, flowtables…): the table is deleted
    /// and created anew, counters included.
    pub foreign: bool,
}

impl Existing {
    /// What a successful sync of `table` leaves: exactly its own objects.
    pub fn after_sync(table: &ServiceTable) -> Self {
        let (chains, counters) = names(table);
        Existing {
            chains,
            counters,
            ..Existing::default()
        }
    }
}

/// The chains and counters a table built from `table` holds.
fn names(table: &ServiceTable) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut chains: BTreeSet<String> = [
        NAT_PREROUTING,
        NAT_OUTPUT,
        NAT_POSTROUTING,
        BYTES_POSTROUTING,
        BYTES_INPUT,
        SERVICES,
        BYTES,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut counters = BTreeSet::new();
    for s in table.services() {
        chains.insert(service_chain(&s.key));
        chains.insert(bytes_chain(&s.key));
        if is_mixed(s) {
            chains.extend(s.backends.iter().map(|b| backend_chain(&s.key, b)));
        }
        counters.insert(connections_counter(&s.key));
        counters.insert(bytes_counter(&s.key));
    }
    (chains, counters)
}

/// The whole table for `table`, as `add` commands: what a sync writes
/// after clearing what was there.
pub fn ruleset(settings: &NftSettings, table: &ServiceTable) -> Nftables<'static> {
    let mut batch = Batch::new();
    add_content(&mut batch, settings, table);
    batch.to_nftables()
}

/// One transaction turning a table holding `existing` into the table for
/// `services`: every rule is flushed and written again; chains and
/// counters of services that are gone are deleted; counters of services
/// that stay are kept (an `add` of an existing counter leaves its values
/// alone), so they only grow.
pub fn transaction(
    settings: &NftSettings,
    services: &ServiceTable,
    existing: &Existing,
) -> Nftables<'static> {
    let t = Tables::new(&settings.table);
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(t.table()));
    if existing.foreign {
        batch.delete(NfListObject::Table(t.table()));
    } else {
        let (chains, counters) = names(services);
        // Rules go first: they hold the references to chains, counters,
        // sets and maps, which can then be deleted.
        batch.add_cmd(NfCmd::Flush(FlushObject::Table(t.table())));
        for c in &existing.chains {
            if existing.recreate_chains || !chains.contains(c) {
                batch.delete(NfListObject::Chain(t.chain(c)));
            }
        }
        for s in &existing.sets {
            batch.delete(NfListObject::Set(Box::new(Set {
                family: NfFamily::IP,
                table: t.name.clone(),
                name: s.clone().into(),
                ..Set::default()
            })));
        }
        for m in &existing.maps {
            batch.delete(NfListObject::Map(Box::new(Map {
                family: NfFamily::IP,
                table: t.name.clone(),
                name: m.clone().into(),
                ..Map::default()
            })));
        }
        for c in existing.counters.iter().filter(|c| !counters.contains(*c)) {
            batch.delete(NfListObject::Counter(t.counter(c)));
        }
    }
    add_content(&mut batch, settings, services);
    batch.to_nftables()
}

/// The `add` commands, in an order nft accepts in one transaction:
/// counters and chains before the rules that name them.
fn add_content(batch: &mut Batch<'static>, settings: &NftSettings, table: &ServiceTable) {
    let t = Tables::new(&settings.table);
    batch.add(NfListObject::Table(t.table()));
    for s in table.services() {
        batch.add(NfListObject::Counter(
            t.counter(&connections_counter(&s.key)),
        ));
        batch.add(NfListObject::Counter(t.counter(&bytes_counter(&s.key))));
    }
    let base = [
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
    for (name, kind, hook, prio) in base {
        batch.add(NfListObject::Chain(Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..t.chain(name)
        }));
    }
    let (chains, _) = names(table);
    for name in chains
        .iter()
        .filter(|c| !base.iter().any(|b| b.0 == c.as_str()))
    {
        batch.add(NfListObject::Chain(t.chain(name)));
    }
    for s in table.services() {
        service_rules(batch, &t, s);
    }
    dispatch_rules(batch, &t, table);
    base_rules(batch, &t, settings);
}

/// The service chain (and backend chains) and the bytes chain.
fn service_rules(batch: &mut Batch<'static>, t: &Tables, s: &Service) {
    let key = &s.key;
    let l4 = match_eq(meta(MetaKey::L4proto), string(protocol_name(key.protocol)));
    let count = Statement::Counter(Counter::Named(connections_counter(key).into()));
    let pick = if is_mixed(s) {
        let targets = s.backends.iter().map(|b| {
            let chain = backend_chain(key, b);
            let nat = match b {
                Backend::Address(a) => dnat_to(a.ip().to_string(), a.port()),
                Backend::NodePort(p) => redirect_to(Expression::Number(u32::from(*p))),
            };
            batch.add(t.rule(&chain, vec![l4.clone(), nat], None));
            goto(chain)
        });
        let targets: Vec<Expression<'static>> = targets.collect();
        Statement::VerdictMap(VerdictMap {
            key: numgen(targets.len()),
            data: indexed(targets),
        })
    } else {
        pick_backend(&s.backends)
    };
    let comment = Some(format!("app {}", s.app));
    batch.add(t.rule(&service_chain(key), vec![l4, count, pick], comment));
    let bytes = Statement::Counter(Counter::Named(bytes_counter(key).into()));
    batch.add(t.rule(&bytes_chain(key), vec![bytes], None));
}

/// One NAT statement choosing among backends of a single kind.
fn pick_backend(backends: &[Backend]) -> Statement<'static> {
    match backends {
        [Backend::Address(a)] => dnat_to(a.ip().to_string(), a.port()),
        [Backend::NodePort(p)] => redirect_to(Expression::Number(u32::from(*p))),
        [Backend::NodePort(_), ..] => {
            let ports = backends.iter().filter_map(|b| match b {
                Backend::NodePort(p) => Some(Expression::Number(u32::from(*p))),
                Backend::Address(_) => None,
            });
            redirect_to(map(numgen(backends.len()), indexed(ports.collect())))
        }
        _ => {
            let addresses = backends.iter().filter_map(|b| match b {
                Backend::Address(a) => Some(Expression::Named(NamedExpression::Concat(vec![
                    string(a.ip().to_string()),
                    Expression::Number(u32::from(a.port())),
                ]))),
                Backend::NodePort(_) => None,
            });
            Statement::DNAT(Some(NAT {
                addr: Some(map(numgen(backends.len()), indexed(addresses.collect()))),
                family: Some(NATFamily::IP),
                port: None,
                flags: None,
            }))
        }
    }
}

fn is_mixed(s: &Service) -> bool {
    let nodes = s
        .backends
        .iter()
        .filter(|b| matches!(b, Backend::NodePort(_)))
        .count();
    nodes != 0 && nodes != s.backends.len()
}

/// `services` (key → service chain) and `bytes` (original port → bytes
/// chain, one rule per protocol in use).
fn dispatch_rules(batch: &mut Batch<'static>, t: &Tables, table: &ServiceTable) {
    if table.is_empty() {
        return;
    }
    let to_services = table.services().map(|s| {
        SetItem::Mapping(
            Expression::Named(NamedExpression::Concat(vec![
                string(protocol_name(s.key.protocol)),
                Expression::Number(u32::from(s.key.port)),
            ])),
            goto(service_chain(&s.key)),
        )
    });
    let key = Expression::Named(NamedExpression::Concat(vec![
        meta(MetaKey::L4proto),
        payload("th", "dport"),
    ]));
    let vmap = Statement::VerdictMap(VerdictMap {
        key,
        data: Expression::Named(NamedExpression::Set(to_services.collect())),
    });
    batch.add(t.rule(SERVICES, vec![vmap], None));
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let to_bytes: Vec<SetItem<'static>> = table
            .services()
            .filter(|s| s.key.protocol == protocol)
            .map(|s| {
                SetItem::Mapping(
                    Expression::Number(u32::from(s.key.port)),
                    goto(bytes_chain(&s.key)),
                )
            })
            .collect();
        if to_bytes.is_empty() {
            continue;
        }
        let original_port = Expression::Named(NamedExpression::CT(CT {
            key: "proto-dst".into(),
            family: None,
            dir: Some(CTDir::Original),
        }));
        let vmap = Statement::VerdictMap(VerdictMap {
            key: original_port,
            data: Expression::Named(NamedExpression::Set(to_bytes)),
        });
        let l4 = match_eq(meta(MetaKey::L4proto), string(protocol_name(protocol)));
        batch.add(t.rule(BYTES, vec![l4, vmap], None));
    }
}

/// The rules of the base chains: which traffic is looked up in `services`,
/// what is masqueraded, what is counted.
fn base_rules(batch: &mut Batch<'static>, t: &Tables, settings: &NftSettings) {
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
    let jump_services = Statement::Jump(JumpTarget {
        target: SERVICES.into(),
    });
    batch.add(t.rule(
        NAT_PREROUTING,
        vec![to_node.clone(), jump_services.clone()],
        None,
    ));
    let output = match settings.local {
        LocalTraffic::All => vec![to_node, jump_services],
        LocalTraffic::SctpOnly => vec![
            to_node,
            match_eq(meta(MetaKey::L4proto), string("sctp")),
            jump_services,
        ],
    };
    batch.add(t.rule(NAT_OUTPUT, output, None));
    masquerade_rules(batch, t, settings);
    bytes_rules(batch, t);
}

/// Masquerade where a reply would not find its way back through the node.
fn masquerade_rules(batch: &mut Batch<'static>, t: &Tables, settings: &NftSettings) {
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
    batch.add(t.rule(
        NAT_POSTROUTING,
        vec![
            ct_dnat(),
            match_eq(payload("ip", "saddr"), loopback),
            Statement::Masquerade(None),
        ],
        Some("loopback clients leave with the node's address".into()),
    ));
    batch.add(t.rule(
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
fn bytes_rules(batch: &mut Batch<'static>, t: &Tables) {
    let jump_bytes = Statement::Jump(JumpTarget {
        target: BYTES.into(),
    });
    batch.add(t.rule(BYTES_POSTROUTING, vec![ct_dnat(), jump_bytes.clone()], None));
    batch.add(t.rule(
        BYTES_INPUT,
        vec![
            match_op(meta(MetaKey::Iif), string("lo"), Operator::NEQ),
            ct_dnat(),
            jump_bytes,
        ],
        None,
    ));
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::network::ipam::Ipv4Cidr;
    use crate::proxy::model::{Endpoint, PodAddress};
    use proto::manifest::Port;

    fn settings(local: LocalTraffic, addresses: &[&str]) -> NftSettings {
        NftSettings {
            table: "proxy".into(),
            pod_cidr: Ipv4Cidr::parse("10.88.0.0/24").unwrap(),
            bridge: "rik0".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            local,
        }
    }

    fn port(port: u16, target_port: u16, protocol: Protocol) -> Port {
        Port {
            port,
            target_port,
            protocol,
            kind: None,
        }
    }

    fn endpoint(instance: &str, address: PodAddress, ports: Vec<Port>) -> Endpoint {
        Endpoint {
            app: "web".into(),
            instance: instance.into(),
            address,
            ports,
        }
    }

    /// 80/TCP on two pods, 81/TCP on a pod and a node port, 53/UDP on a
    /// node port, 54/UDP on two node ports, 132/SCTP on a pod.
    fn services() -> ServiceTable {
        let ip = |n| PodAddress::Ip(std::net::Ipv4Addr::new(10, 88, 0, n));
        ServiceTable::from_endpoints(&[
            endpoint(
                "a",
                ip(2),
                vec![
                    port(80, 8080, Protocol::Tcp),
                    port(81, 8080, Protocol::Tcp),
                    port(132, 9132, Protocol::Sctp),
                ],
            ),
            endpoint("b", ip(3), vec![port(80, 8080, Protocol::Tcp)]),
            endpoint(
                "c",
                PodAddress::HostNetwork,
                vec![
                    port(81, 8181, Protocol::Tcp),
                    port(53, 5353, Protocol::Udp),
                    port(54, 5454, Protocol::Udp),
                ],
            ),
            endpoint(
                "d",
                PodAddress::HostNetwork,
                vec![port(54, 5455, Protocol::Udp)],
            ),
        ])
    }

    /// `(verb, kind, object)` of every command.
    fn commands(n: &Nftables) -> Vec<(String, String, Value)> {
        let doc = serde_json::to_value(n).unwrap();
        doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                let (kind, o) = body.as_object().unwrap().iter().next().unwrap();
                (verb.clone(), kind.clone(), o.clone())
            })
            .collect()
    }

    /// The statements of the rules added to `chain`.
    fn rules(n: &Nftables, chain: &str) -> Vec<Value> {
        commands(n)
            .into_iter()
            .filter(|(verb, kind, o)| verb == "add" && kind == "rule" && o["chain"] == chain)
            .map(|(_, _, o)| o["expr"].clone())
            .collect()
    }

    fn named(n: &Nftables, verb: &str, kind: &str) -> BTreeSet<String> {
        commands(n)
            .into_iter()
            .filter(|(v, k, _)| v == verb && k == kind)
            .map(|(_, _, o)| o["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn one_lookup_per_connection_then_one_pick_per_service() {
        let n = ruleset(&settings(LocalTraffic::All, &[]), &services());
        let dispatch = rules(&n, SERVICES);
        assert_eq!(dispatch.len(), 1, "{dispatch:?}");
        assert_eq!(
            dispatch[0][0]["vmap"]["key"],
            json!({"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]})
        );
        let elements = dispatch[0][0]["vmap"]["data"]["set"].as_array().unwrap();
        assert_eq!(elements.len(), 5);
        assert!(
            elements
                .contains(&json!([{"concat": ["tcp", 80]}, {"goto": {"target": "svc_tcp_80"}}]))
        );
        assert!(
            elements.contains(
                &json!([{"concat": ["sctp", 132]}, {"goto": {"target": "svc_sctp_132"}}])
            )
        );

        // Two pods: a random pick of address and port, counted.
        let web = rules(&n, "svc_tcp_80");
        assert_eq!(web.len(), 1);
        assert_eq!(web[0][0]["match"]["right"], "tcp");
        assert_eq!(web[0][1], json!({"counter": "conn_tcp_80"}));
        assert_eq!(
            web[0][2],
            json!({"dnat": {"family": "ip", "addr": {"map": {
                "key": {"numgen": {"mode": "random", "mod": 2}},
                "data": {"set": [[0, {"concat": ["10.88.0.2", 8080]}], [1, {"concat": ["10.88.0.3", 8080]}]]}
            }}}})
        );
        // One pod: a plain DNAT.
        assert_eq!(
            rules(&n, "svc_sctp_132")[0][2],
            json!({"dnat": {"family": "ip", "addr": "10.88.0.2", "port": 9132}})
        );
        // Node ports: redirects.
        assert_eq!(
            rules(&n, "svc_udp_53")[0][2],
            json!({"redirect": {"port": 5353}})
        );
        assert_eq!(
            rules(&n, "svc_udp_54")[0][2]["redirect"]["port"]["map"]["data"],
            json!({"set": [[0, 5454], [1, 5455]]})
        );
        // Mixed: one chain per backend.
        assert_eq!(
            rules(&n, "svc_tcp_81")[0][2]["vmap"]["data"],
            json!({"set": [
                [0, {"goto": {"target": "svc_tcp_81_to_10.88.0.2_8080"}}],
                [1, {"goto": {"target": "svc_tcp_81_to_node_8181"}}]
            ]})
        );
        assert_eq!(
            rules(&n, "svc_tcp_81_to_node_8181")[0][1],
            json!({"redirect": {"port": 8181}})
        );
        assert_eq!(
            rules(&n, "svc_tcp_81_to_10.88.0.2_8080")[0][1],
            json!({"dnat": {"family": "ip", "addr": "10.88.0.2", "port": 8080}})
        );
    }

    #[test]
    fn bytes_are_counted_by_original_port_per_protocol() {
        let n = ruleset(&settings(LocalTraffic::All, &[]), &services());
        let bytes = rules(&n, BYTES);
        assert_eq!(bytes.len(), 3, "one rule per protocol in use: {bytes:?}");
        assert_eq!(bytes[0][0]["match"]["right"], "tcp");
        assert_eq!(
            bytes[0][1]["vmap"]["key"],
            json!({"ct": {"key": "proto-dst", "dir": "original"}})
        );
        assert_eq!(
            rules(&n, "count_udp_53")[0],
            json!([{"counter": "bytes_udp_53"}])
        );
        let input = rules(&n, BYTES_INPUT);
        assert_eq!(
            input[0][0],
            json!({"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}})
        );
        let counters = named(&n, "add", "counter");
        assert_eq!(counters.len(), 10);
        assert!(counters.contains("conn_tcp_81") && counters.contains("bytes_tcp_81"));
    }

    #[test]
    fn local_traffic_and_addresses_shape_the_hooks() {
        let all = ruleset(&settings(LocalTraffic::All, &[]), &services());
        let local = json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
        let jump = json!({"jump": {"target": "services"}});
        assert_eq!(rules(&all, NAT_PREROUTING), vec![json!([local, jump])]);
        assert_eq!(rules(&all, NAT_OUTPUT), vec![json!([local, jump])]);

        let sctp = ruleset(
            &settings(LocalTraffic::SctpOnly, &["192.0.2.1", "192.0.2.2"]),
            &services(),
        );
        let to_node = json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": ["192.0.2.1", "192.0.2.2"]}}});
        assert_eq!(rules(&sctp, NAT_PREROUTING), vec![json!([to_node, jump])]);
        let sctp_only =
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "sctp"}});
        assert_eq!(
            rules(&sctp, NAT_OUTPUT),
            vec![json!([to_node, sctp_only, jump])]
        );

        let masquerade = rules(&all, NAT_POSTROUTING);
        assert_eq!(masquerade.len(), 2);
        let pods = json!({"prefix": {"addr": "10.88.0.0", "len": 24}});
        assert_eq!(masquerade[1][1]["match"]["right"], pods);
        assert_eq!(masquerade[1][2]["match"]["right"], pods);
        assert_eq!(
            masquerade[0][1]["match"]["right"]["prefix"]["addr"],
            "127.0.0.0"
        );
        for rule in &masquerade {
            assert_eq!(rule[0]["match"]["right"], "dnat");
        }
    }

    #[test]
    fn an_empty_table_still_has_its_hooks() {
        let n = ruleset(&settings(LocalTraffic::All, &[]), &ServiceTable::default());
        assert!(rules(&n, SERVICES).is_empty());
        assert!(rules(&n, BYTES).is_empty());
        assert_eq!(rules(&n, NAT_PREROUTING).len(), 1);
        assert!(named(&n, "add", "counter").is_empty());
        assert_eq!(named(&n, "add", "chain").len(), 7);
    }

    #[test]
    fn counters_and_chains_are_added_before_the_rules_naming_them() {
        let n = ruleset(&settings(LocalTraffic::All, &[]), &services());
        let cmds = commands(&n);
        let first_rule = cmds.iter().position(|c| c.1 == "rule").unwrap();
        let last_other = cmds.iter().rposition(|c| c.1 != "rule").unwrap();
        assert!(last_other < first_rule);
        assert_eq!(cmds[0].1, "table");
    }

    #[test]
    fn a_sync_flushes_rules_and_deletes_only_what_is_gone() {
        let s = settings(LocalTraffic::All, &[]);
        let before = Existing::after_sync(&services());
        // 80/TCP leaves; the others stay.
        let ip = |n| PodAddress::Ip(std::net::Ipv4Addr::new(10, 88, 0, n));
        let after = ServiceTable::from_endpoints(&[endpoint(
            "a",
            ip(2),
            vec![port(132, 9132, Protocol::Sctp)],
        )]);
        let n = transaction(&s, &after, &before);
        let cmds = commands(&n);
        assert_eq!((cmds[0].0.as_str(), cmds[0].1.as_str()), ("add", "table"));
        assert_eq!((cmds[1].0.as_str(), cmds[1].1.as_str()), ("flush", "table"));
        let deleted_chains = named(&n, "delete", "chain");
        assert!(deleted_chains.contains("svc_tcp_80"));
        assert!(deleted_chains.contains("count_tcp_80"));
        assert!(deleted_chains.contains("svc_tcp_81_to_node_8181"));
        assert!(!deleted_chains.contains("svc_sctp_132"));
        assert!(!deleted_chains.contains(NAT_PREROUTING));
        let deleted_counters = named(&n, "delete", "counter");
        assert!(deleted_counters.contains("conn_tcp_80"));
        assert!(!deleted_counters.contains("conn_sctp_132"));
        // Kept counters are only re-added (a no-op for nft), after deletions.
        let last_delete = cmds.iter().rposition(|c| c.0 == "delete").unwrap();
        let re_added = cmds
            .iter()
            .position(|c| c.1 == "counter" && c.0 == "add" && c.2["name"] == "conn_sctp_132")
            .unwrap();
        assert!(last_delete < re_added);
        assert_eq!(Existing::after_sync(&after).counters.len(), 2);

        // The same table again: nothing deleted.
        let again = transaction(&s, &after, &Existing::after_sync(&after));
        assert!(commands(&again).iter().all(|c| c.0 != "delete"));
    }

    #[test]
    fn a_predecessors_table_is_replaced_keeping_its_counters() {
        let s = settings(LocalTraffic::All, &[]);
        let found = Existing {
            chains: ["nat_prerouting", "svc_tcp_80", "old_chain"]
                .map(String::from)
                .into(),
            counters: ["conn_tcp_80", "conn_tcp_9999"].map(String::from).into(),
            sets: ["old_set"].map(String::from).into(),
            maps: ["old_map"].map(String::from).into(),
            recreate_chains: true,
            foreign: false,
        };
        let n = transaction(&s, &services(), &found);
        assert_eq!(named(&n, "delete", "chain"), found.chains);
        assert_eq!(
            named(&n, "delete", "counter"),
            ["conn_tcp_9999".to_string()].into()
        );
        assert_eq!(named(&n, "delete", "set"), found.sets);
        assert_eq!(named(&n, "delete", "map"), found.maps);
        assert!(named(&n, "add", "chain").contains("svc_tcp_80"));

        let foreign = Existing {
            foreign: true,
            ..found
        };
        let n = transaction(&s, &services(), &foreign);
        let cmds = commands(&n);
        assert_eq!(
            (cmds[1].0.as_str(), cmds[1].1.as_str()),
            ("delete", "table")
        );
        assert_eq!(cmds.iter().filter(|c| c.0 == "delete").count(), 1);
    }
}
