use std::collections::BTreeSet;

use proto::manifest::{Port, Protocol};
use serde_json::{Value, json};

use super::super::plan::ruleset;
use super::*;
use crate::network::ipam::Ipv4Cidr;
use crate::proxy::model::{Endpoint, PodAddress, ServiceTable};

pub(in crate::proxy::nft) fn settings(local: LocalTraffic, addresses: &[&str]) -> NftSettings {
    NftSettings {
        table: "proxy".into(),
        pod_cidr: Ipv4Cidr::parse("10.88.0.0/24").unwrap(),
        bridge: "rik0".into(),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        local,
    }
}

pub(in crate::proxy::nft) fn port(port: u16, target_port: u16, protocol: Protocol) -> Port {
    Port {
        port,
        target_port,
        protocol,
        kind: None,
    }
}

pub(in crate::proxy::nft) fn endpoint(
    instance: &str,
    address: PodAddress,
    ports: Vec<Port>,
) -> Endpoint {
    Endpoint {
        app: "web".into(),
        instance: instance.into(),
        address,
        ports,
    }
}

pub(in crate::proxy::nft) fn ip(n: u8) -> PodAddress {
    PodAddress::Ip(std::net::Ipv4Addr::new(10, 88, 0, n))
}

/// 80/TCP on two pods, 81/TCP on a pod and a node port, 82/TCP on three
/// pods, 53/UDP on a node port, 54/UDP on two node ports, 132/SCTP on a
/// pod.
pub(in crate::proxy::nft) fn services() -> ServiceTable {
    ServiceTable::from_endpoints(&[
        endpoint(
            "a",
            ip(2),
            vec![
                port(80, 8080, Protocol::Tcp),
                port(81, 8080, Protocol::Tcp),
                port(82, 8082, Protocol::Tcp),
                port(132, 9132, Protocol::Sctp),
            ],
        ),
        endpoint(
            "b",
            ip(3),
            vec![port(80, 8080, Protocol::Tcp), port(82, 8082, Protocol::Tcp)],
        ),
        endpoint("c", ip(4), vec![port(82, 8082, Protocol::Tcp)]),
        endpoint(
            "d",
            PodAddress::HostNetwork,
            vec![
                port(81, 8181, Protocol::Tcp),
                port(53, 5353, Protocol::Udp),
                port(54, 5454, Protocol::Udp),
            ],
        ),
        endpoint(
            "e",
            PodAddress::HostNetwork,
            vec![port(54, 5455, Protocol::Udp)],
        ),
    ])
}

/// `(verb, kind, object)` of every command.
pub(in crate::proxy::nft) fn commands(tx: &Tx) -> Vec<(String, String, Value)> {
    let doc: Value = serde_json::from_str(&tx.to_json().unwrap()).unwrap();
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

/// The statements of the rules added to `chain`, in order.
pub(in crate::proxy::nft) fn rules(tx: &Tx, chain: &str) -> Vec<Value> {
    commands(tx)
        .into_iter()
        .filter(|(verb, kind, o)| verb == "add" && kind == "rule" && o["chain"] == chain)
        .map(|(_, _, o)| o["expr"].clone())
        .collect()
}

/// The elements added to the set or map `set`.
pub(in crate::proxy::nft) fn elements(tx: &Tx, set: &str) -> Vec<Value> {
    commands(tx)
        .into_iter()
        .filter(|(verb, kind, o)| verb == "add" && kind == "element" && o["name"] == set)
        .flat_map(|(_, _, o)| o["elem"].as_array().unwrap().clone())
        .collect()
}

pub(in crate::proxy::nft) fn named(tx: &Tx, verb: &str, kind: &str) -> BTreeSet<String> {
    commands(tx)
        .into_iter()
        .filter(|(v, k, _)| v == verb && k == kind)
        .map(|(_, _, o)| o["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn one_lookup_per_connection_then_one_rule_per_backend() {
    let tx = ruleset(&settings(LocalTraffic::All, &[]), &services());
    assert_eq!(
        rules(&tx, DISPATCH),
        vec![json!([{"vmap": {
            "key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]},
            "data": "@services"
        }}])]
    );
    let entries = elements(&tx, SERVICES);
    assert_eq!(entries.len(), 6);
    assert!(
        entries.contains(&json!([{"concat": ["tcp", 80]}, {"goto": {"target": "svc_tcp_80"}}]))
    );
    assert!(
        entries.contains(&json!([{"concat": ["sctp", 132]}, {"goto": {"target": "svc_sctp_132"}}]))
    );

    let tcp = json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}});
    let one_in = |n: u32| json!({"match": {"op": "==", "left": {"numgen": {"mode": "random", "mod": n}}, "right": 0}});
    let dnat = |a: &str, p: u16| json!({"dnat": {"family": "ip", "addr": a, "port": p}});
    // Two pods: half the connections to the first, the rest to the second.
    assert_eq!(
        rules(&tx, "svc_tcp_80"),
        vec![
            json!([tcp, one_in(2), dnat("10.88.0.2", 8080)]),
            json!([tcp, dnat("10.88.0.3", 8080)]),
        ]
    );
    // Three: a third, half of the rest, the rest.
    assert_eq!(
        rules(&tx, "svc_tcp_82"),
        vec![
            json!([tcp, one_in(3), dnat("10.88.0.2", 8082)]),
            json!([tcp, one_in(2), dnat("10.88.0.3", 8082)]),
            json!([tcp, dnat("10.88.0.4", 8082)]),
        ]
    );
    // One pod: a plain DNAT.
    assert_eq!(
        rules(&tx, "svc_sctp_132"),
        vec![json!([
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "sctp"}},
            dnat("10.88.0.2", 9132)
        ])]
    );
    // Node ports: redirects, mixed with pods too.
    assert_eq!(
        rules(&tx, "svc_udp_53")[0][1],
        json!({"redirect": {"port": 5353}})
    );
    assert_eq!(
        rules(&tx, "svc_udp_54")[0][2],
        json!({"redirect": {"port": 5454}})
    );
    assert_eq!(
        rules(&tx, "svc_udp_54")[1][1],
        json!({"redirect": {"port": 5455}})
    );
    assert_eq!(
        rules(&tx, "svc_tcp_81"),
        vec![
            json!([tcp, one_in(2), dnat("10.88.0.2", 8080)]),
            json!([tcp, {"redirect": {"port": 8181}}]),
        ]
    );
    // Each service is one chain; the first rule says whose it is.
    let comments: Vec<Value> = commands(&tx)
        .into_iter()
        .filter(|(_, k, o)| k == "rule" && o["chain"] == "svc_tcp_82")
        .map(|(_, _, o)| o["comment"].clone())
        .collect();
    assert_eq!(comments, vec![json!("app web"), Value::Null, Value::Null]);
}

#[test]
fn counters_belong_to_set_elements() {
    let tx = ruleset(&settings(LocalTraffic::All, &[]), &services());
    let declared: Vec<Value> = commands(&tx)
        .into_iter()
        .filter(|(v, k, _)| v == "add" && (k == "set" || k == "map"))
        .map(|(_, k, o)| json!({k: o}))
        .collect();
    assert_eq!(
        declared[0],
        json!({"map": {"family": "ip", "table": "proxy", "name": "services",
            "type": ["inet_proto", "inet_service"], "map": "verdict", "stmt": [{"counter": null}]}})
    );
    for (i, p) in ["tcp", "udp", "sctp"].iter().enumerate() {
        assert_eq!(
            declared[i + 1],
            json!({"set": {"family": "ip", "table": "proxy", "name": format!("bytes_{p}"),
                "type": "inet_service", "stmt": [{"counter": null}]}})
        );
    }
    assert!(
        named(&tx, "add", "counter").is_empty(),
        "no counter objects"
    );
    assert_eq!(
        elements(&tx, "bytes_tcp"),
        vec![json!(80), json!(81), json!(82)]
    );
    assert_eq!(elements(&tx, "bytes_udp"), vec![json!(53), json!(54)]);
    assert_eq!(elements(&tx, "bytes_sctp"), vec![json!(132)]);
}

#[test]
fn bytes_are_counted_by_original_port_per_protocol() {
    let tx = ruleset(&settings(LocalTraffic::All, &[]), &services());
    let bytes = rules(&tx, BYTES);
    assert_eq!(bytes.len(), 3, "one rule per protocol: {bytes:?}");
    assert_eq!(
        bytes[1],
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
            {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": "@bytes_udp"}}
        ])
    );
    let jump = json!({"jump": {"target": "bytes"}});
    assert_eq!(rules(&tx, BYTES_POSTROUTING)[0][1], jump);
    let input = rules(&tx, BYTES_INPUT);
    assert_eq!(
        input[0][0],
        json!({"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}})
    );
    assert_eq!(input[0][2], jump);
}

#[test]
fn local_traffic_and_addresses_shape_the_hooks() {
    let all = ruleset(&settings(LocalTraffic::All, &[]), &services());
    let local = json!({"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
    let jump = json!({"jump": {"target": "dispatch"}});
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
fn an_empty_table_still_has_its_hooks_and_sets() {
    let tx = ruleset(&settings(LocalTraffic::All, &[]), &ServiceTable::default());
    assert_eq!(rules(&tx, DISPATCH).len(), 1);
    assert_eq!(rules(&tx, BYTES).len(), 3);
    assert_eq!(rules(&tx, NAT_PREROUTING).len(), 1);
    assert!(elements(&tx, SERVICES).is_empty());
    assert_eq!(
        named(&tx, "add", "chain"),
        [
            NAT_PREROUTING,
            NAT_OUTPUT,
            NAT_POSTROUTING,
            BYTES_POSTROUTING,
            BYTES_INPUT,
            DISPATCH,
            BYTES
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(named(&tx, "add", "set").len(), 3);
    assert_eq!(named(&tx, "add", "map"), [SERVICES.to_string()].into());
}

#[test]
fn objects_are_declared_before_what_names_them() {
    let tx = ruleset(&settings(LocalTraffic::All, &[]), &services());
    let cmds = commands(&tx);
    let position = |verb: &str, kind: &str, name: &str| {
        cmds.iter()
            .position(|(v, k, o)| v == verb && k == kind && o["name"] == name)
            .unwrap_or_else(|| panic!("no {verb} {kind} {name}"))
    };
    assert_eq!(cmds[0].1, "table");
    for (i, (verb, kind, o)) in cmds.iter().enumerate() {
        match (verb.as_str(), kind.as_str()) {
            ("add", "rule") => {
                let chain = o["chain"].as_str().unwrap();
                assert!(
                    position("add", "chain", chain) < i,
                    "rule before chain {chain}"
                );
            }
            ("add", "element") => {
                let set = o["name"].as_str().unwrap();
                let kind = if set == SERVICES { "map" } else { "set" };
                assert!(position("add", kind, set) < i, "element before {set}");
                for e in o["elem"].as_array().unwrap() {
                    if let Some(chain) = e[1]["goto"]["target"].as_str() {
                        assert!(position("add", "chain", chain) < i, "goto {chain} first");
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn our_sets_are_told_by_their_declaration() {
    let listed = |o: Value| o;
    let services = listed(
        json!({"name": "services", "type": ["inet_proto", "inet_service"],
        "map": "verdict", "stmt": [{"counter": null}], "elem": []}),
    );
    assert!(is_our_set("map", &services));
    assert!(!is_our_set("set", &services));
    let bytes = json!({"name": "bytes_udp", "type": "inet_service", "stmt": [{"counter": null}]});
    assert!(is_our_set("set", &bytes));
    for changed in [
        json!({"name": "bytes_icmp", "type": "inet_service", "stmt": [{"counter": null}]}),
        json!({"name": "bytes_udp", "type": "ipv4_addr", "stmt": [{"counter": null}]}),
        json!({"name": "bytes_udp", "type": "inet_service"}),
        json!({"name": "bytes_udp", "type": "inet_service", "flags": ["interval"], "stmt": [{"counter": null}]}),
        json!({"name": "bytes_udp", "type": "inet_service", "map": "verdict", "stmt": [{"counter": null}]}),
    ] {
        assert!(!is_our_set("set", &changed), "{changed}");
    }
}
