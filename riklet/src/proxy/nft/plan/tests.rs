use std::collections::BTreeMap;

use proto::manifest::Protocol;
use serde_json::{Value, json};

use super::*;
use crate::proxy::model::PodAddress;
use crate::proxy::nft::LocalTraffic;
use crate::proxy::nft::ruleset::tests::{
    commands, elements, endpoint, ip, named, port, services, settings,
};

/// What the kernel would hold after the transactions, as far as these
/// tests care. It refuses what nft would refuse in this table (a rule in a
/// missing chain, deleting a chain with rules or one an element names, an
/// element whose chain is missing, an element added again with other
/// data) by panicking.
#[derive(Clone, Debug, Default)]
struct Kernel {
    chains: BTreeMap<String, Vec<Value>>,
    /// Set → element key (as JSON text) → data (`null` for a set).
    sets: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Kernel {
    fn apply(&mut self, tx: &Tx) {
        for (verb, kind, o) in commands(tx) {
            let name = o["name"].as_str().unwrap_or_default().to_string();
            match (verb.as_str(), kind.as_str()) {
                ("add", "table") | ("delete", "counter") => {}
                ("delete", "table") => *self = Kernel::default(),
                ("flush", "table") => self.chains.values_mut().for_each(Vec::clear),
                ("add", "chain") => {
                    self.chains.entry(name).or_default();
                }
                ("flush", "chain") => self.chains.get_mut(&name).expect("flush: no chain").clear(),
                ("delete", "chain") => {
                    let rules = self.chains.remove(&name).expect("delete: no chain");
                    assert!(rules.is_empty(), "deleting chain {name} with rules");
                    let target = json!({"goto": {"target": name}});
                    let named = self
                        .sets
                        .values()
                        .flat_map(|s| s.values())
                        .any(|d| *d == target);
                    assert!(!named, "deleting chain {name}, which an element names");
                }
                ("add", "rule") | ("insert", "rule") => {
                    let chain = o["chain"].as_str().unwrap();
                    let rules = self.chains.get_mut(chain).expect("rule in a missing chain");
                    let rule = json!({"expr": o["expr"], "comment": o["comment"]});
                    if verb == "add" {
                        rules.push(rule);
                    } else {
                        rules.insert(0, rule);
                    }
                }
                ("add", "set" | "map") => {
                    self.sets.entry(name).or_default();
                }
                ("delete", "set" | "map") => {
                    self.sets.remove(&name).expect("delete: no set");
                }
                ("add", "element") => {
                    for e in o["elem"].as_array().unwrap() {
                        let (key, data) = match e.as_array() {
                            Some(pair) => (pair[0].to_string(), pair[1].clone()),
                            None => (e.to_string(), Value::Null),
                        };
                        if let Some(chain) = data["goto"]["target"].as_str() {
                            assert!(self.chains.contains_key(chain), "element before {chain}");
                        }
                        let set = self.sets.get_mut(&name).expect("element of a missing set");
                        let old = set.insert(key.clone(), data.clone());
                        assert!(old.is_none_or(|o| o == data), "{key} added with other data");
                    }
                }
                ("delete", "element") => {
                    for e in o["elem"].as_array().unwrap() {
                        let set = self.sets.get_mut(&name).expect("element of a missing set");
                        set.remove(&e.to_string())
                            .expect("deleting a missing element");
                    }
                }
                other => panic!("unexpected command {other:?}"),
            }
        }
    }

    /// The rules a new connection to `key` goes through: from the head of
    /// its chain down to the first one that always ends it (no `numgen`).
    fn reached(&self, key: &ServiceKey) -> Vec<Value> {
        let entry = services_key(key);
        let entry = serde_json::to_value(entry).unwrap().to_string();
        let Some(verdict) = self.sets[SERVICES].get(&entry) else {
            return Vec::new();
        };
        let chain = verdict["goto"]["target"].as_str().unwrap();
        let mut reached = Vec::new();
        for rule in &self.chains[chain] {
            reached.push(rule.clone());
            if !rule.to_string().contains("numgen") {
                break;
            }
        }
        reached
    }

    /// Checks that the kernel serves `table` exactly; with `compact`, that
    /// nothing else is left either.
    fn assert_serves(&self, table: &ServiceTable, compact: bool) {
        let t = Tables::new("proxy");
        for s in table.services() {
            let expected: Vec<Value> = ruleset::service_rules(&t, s)
                .into_iter()
                .map(rule_of)
                .collect();
            assert_eq!(self.reached(&s.key), expected, "{}", s.key);
            let port = s.key.port.to_string();
            assert!(self.sets[&bytes_set(s.key.protocol)].contains_key(&port));
            if compact {
                assert_eq!(self.chains[&service_chain(&s.key)], expected, "{}", s.key);
            }
        }
        let services = &self.sets[SERVICES];
        let chains = self.chains.keys().filter(|c| c.starts_with("svc_"));
        if compact {
            assert_eq!(services.len(), table.len(), "{services:?}");
            assert_eq!(chains.count(), table.len());
            let bytes: usize = PROTOCOLS
                .iter()
                .map(|p| self.sets[&bytes_set(*p)].len())
                .sum();
            assert_eq!(bytes, table.len());
        } else {
            for (key, chain) in self.chains.iter().filter(|(c, _)| c.starts_with("svc_")) {
                let served = table.services().any(|s| service_chain(&s.key) == *key);
                if !served {
                    assert_eq!(chain[0]["expr"], json!([{"return": null}]), "{key}");
                }
            }
        }
    }
}

fn rule_of(o: NfListObject<'static>) -> Value {
    let o = serde_json::to_value(o).unwrap();
    json!({"expr": o["rule"]["expr"], "comment": o["rule"]["comment"]})
}

fn verbs(tx: &Tx) -> BTreeSet<String> {
    commands(tx).into_iter().map(|c| c.0).collect()
}

/// `services()` changed step by step: a backend leaves, one comes, a
/// service goes, comes back, a new one comes, everything goes.
fn steps() -> Vec<ServiceTable> {
    let base = || {
        vec![
            endpoint(
                "a",
                ip(2),
                vec![
                    port(80, 8080, Protocol::Tcp),
                    port(132, 9132, Protocol::Sctp),
                ],
            ),
            endpoint("b", ip(3), vec![port(80, 8080, Protocol::Tcp)]),
            endpoint(
                "d",
                PodAddress::HostNetwork,
                vec![port(53, 5353, Protocol::Udp)],
            ),
        ]
    };
    let mut one_backend = base();
    one_backend.remove(1);
    let mut more = one_backend.clone();
    more.push(endpoint("f", ip(5), vec![port(53, 5353, Protocol::Udp)]));
    let mut no_sctp = more.clone();
    no_sctp[0].ports.pop();
    let mut new_port = more.clone();
    new_port.push(endpoint("g", ip(6), vec![port(443, 8443, Protocol::Tcp)]));
    vec![
        ServiceTable::from_endpoints(&base()),
        ServiceTable::from_endpoints(&one_backend),
        ServiceTable::from_endpoints(&more),
        ServiceTable::from_endpoints(&no_sctp),
        ServiceTable::from_endpoints(&more),
        ServiceTable::from_endpoints(&new_port),
        ServiceTable::default(),
        ServiceTable::from_endpoints(&base()),
    ]
}

#[test]
fn syncs_only_add_and_each_change_is_in_place_at_once() {
    let s = settings(LocalTraffic::All, &[]);
    let steps = steps();
    let (tx, mut written) = replace(&s, &Found::default(), &steps[0]);
    let mut kernel = Kernel::default();
    kernel.apply(&tx);
    kernel.assert_serves(&steps[0], true);
    assert!(!written.needs_compaction());

    for (i, target) in steps.iter().enumerate().skip(1) {
        let (tx, next) = update(&s, &written, target);
        assert!(!tx.is_empty(), "step {i}");
        assert_eq!(
            verbs(&tx)
                .into_iter()
                .filter(|v| v != "add" && v != "insert")
                .count(),
            0,
            "step {i}: {:?}",
            verbs(&tx)
        );
        kernel.apply(&tx);
        kernel.assert_serves(target, false);
        written = next;
        // The same table again: nothing to send.
        let (again, same) = update(&s, &written, target);
        assert!(again.is_empty(), "step {i}");
        assert_eq!(same, written);
        // Compaction every other step, so that changes pile up between.
        if i % 2 == 0 {
            assert!(written.needs_compaction(), "step {i}");
            let (tx, next) = compaction(&s, &written);
            kernel.apply(&tx);
            kernel.assert_serves(target, true);
            written = next;
            assert!(!written.needs_compaction());
            assert!(compaction(&s, &written).0.is_empty());
        }
    }
}

#[test]
fn a_new_service_is_added_and_a_new_backend_inserted_at_the_head() {
    let s = settings(LocalTraffic::All, &[]);
    let steps = steps();
    let written = replace(&s, &Found::default(), &steps[1]).1;
    // 53/UDP gets a second backend, 443/TCP is new (step 5 from step 1).
    let (tx, next) = update(&s, &written, &steps[5]);
    let cmds = commands(&tx);
    let inserted: Vec<&Value> = cmds
        .iter()
        .filter(|c| c.0 == "insert")
        .map(|c| &c.2)
        .collect();
    assert_eq!(inserted.len(), 2);
    assert!(inserted.iter().all(|r| r["chain"] == "svc_udp_53"));
    // Inserted last rule first, so they read in order: the pod, then
    // the node port.
    assert_eq!(inserted[0]["expr"][1], json!({"redirect": {"port": 5353}}));
    assert_eq!(
        inserted[1]["expr"][2],
        json!({"dnat": {"family": "ip", "addr": "10.88.0.5", "port": 5353}})
    );
    assert_eq!(inserted[1]["comment"], "app web");
    assert_eq!(
        named(&tx, "add", "chain"),
        ["svc_tcp_443".to_string()].into()
    );
    assert_eq!(elements(&tx, "bytes_tcp"), vec![json!(443)]);
    assert_eq!(
        elements(&tx, SERVICES),
        vec![json!([{"concat": ["tcp", 443]}, {"goto": {"target": "svc_tcp_443"}}])]
    );
    assert!(next.needs_compaction());
}

#[test]
fn a_gone_service_returns_until_compaction_deletes_it() {
    let s = settings(LocalTraffic::All, &[]);
    let steps = steps();
    let written = replace(&s, &Found::default(), &steps[2]).1;
    let (tx, written) = update(&s, &written, &steps[3]);
    let cmds = commands(&tx);
    assert_eq!(cmds.len(), 1);
    assert_eq!(
        (cmds[0].0.as_str(), cmds[0].2["chain"].as_str()),
        ("insert", Some("svc_sctp_132"))
    );
    assert_eq!(cmds[0].2["expr"], json!([{"return": null}]));

    let (tx, written) = compaction(&s, &written);
    let cmds = commands(&tx);
    let sctp = json!({"concat": ["sctp", 132]});
    assert!(
        cmds.iter()
            .any(|c| c.0 == "delete" && c.1 == "element" && c.2["elem"] == json!([sctp]))
    );
    assert!(
        cmds.iter()
            .any(|c| c.0 == "delete" && c.1 == "element" && c.2["name"] == "bytes_sctp")
    );
    let flush = cmds
        .iter()
        .position(|c| c.0 == "flush" && c.2["name"] == "svc_sctp_132")
        .unwrap();
    let delete = cmds
        .iter()
        .position(|c| c.0 == "delete" && c.1 == "chain")
        .unwrap();
    assert!(flush < delete);
    // Back: a new chain.
    let (tx, _) = update(&s, &written, &steps[4]);
    assert_eq!(
        named(&tx, "add", "chain"),
        ["svc_sctp_132".to_string()].into()
    );
}

/// A predecessor's table: services 80/TCP (staying) and 9999/TCP (gone),
/// a junk chain, set and counter.
fn predecessor() -> Found {
    let k = |port, protocol| ServiceKey { port, protocol };
    Found {
        chains: ["nat_prerouting", "svc_tcp_80", "svc_tcp_9999", "junk"]
            .map(String::from)
            .into(),
        our_sets: [
            (
                SERVICES.to_string(),
                [k(80, Protocol::Tcp), k(9999, Protocol::Tcp)].into(),
            ),
            (
                "bytes_tcp".to_string(),
                [k(80, Protocol::Tcp), k(9999, Protocol::Tcp)].into(),
            ),
        ]
        .into(),
        others: vec![
            ("counter".into(), "conn_tcp_80".into()),
            ("set".into(), "junk_set".into()),
        ],
        foreign: false,
    }
}

#[test]
fn a_predecessors_table_is_replaced_keeping_the_elements_that_stay() {
    let s = settings(LocalTraffic::All, &[]);
    let found = predecessor();
    let (tx, written) = replace(&s, &found, &services());
    assert!(!written.needs_compaction());
    let cmds = commands(&tx);
    assert_eq!((cmds[1].0.as_str(), cmds[1].1.as_str()), ("flush", "table"));
    // Gone: svc_tcp_9999 and its elements, the junk, the base chains
    // (hooked anew). Kept: svc_tcp_80 and its elements, with their counters.
    assert_eq!(
        named(&tx, "delete", "chain"),
        ["nat_prerouting", "svc_tcp_9999", "junk"]
            .map(String::from)
            .into()
    );
    let deleted: Vec<(String, Value)> = cmds
        .iter()
        .filter(|c| c.0 == "delete" && c.1 == "element")
        .map(|c| {
            (
                c.2["name"].as_str().unwrap().to_string(),
                c.2["elem"].clone(),
            )
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            ("bytes_tcp".to_string(), json!([9999])),
            (SERVICES.to_string(), json!([{"concat": ["tcp", 9999]}])),
        ]
    );
    let added = named(&tx, "add", "chain");
    assert!(!added.contains("svc_tcp_80"), "a kept chain is only filled");
    assert!(added.contains("svc_tcp_81") && added.contains(NAT_PREROUTING));
    assert_eq!(
        named(&tx, "delete", "counter"),
        ["conn_tcp_80".to_string()].into()
    );
    assert_eq!(named(&tx, "delete", "set"), ["junk_set".to_string()].into());
    // The deletions come before what is written anew.
    let last_delete = cmds.iter().rposition(|c| c.0 == "delete").unwrap();
    let first_rule = cmds.iter().position(|c| c.1 == "rule").unwrap();
    assert!(last_delete < first_rule);

    let foreign = Found {
        foreign: true,
        ..found
    };
    let cmds = commands(&replace(&s, &foreign, &services()).0);
    assert_eq!(
        (cmds[1].0.as_str(), cmds[1].1.as_str()),
        ("delete", "table")
    );
    assert_eq!(cmds.iter().filter(|c| c.0 == "delete").count(), 1);
}

#[test]
fn a_replace_played_on_a_predecessors_table_serves_keeping_its_elements() {
    let s = settings(LocalTraffic::All, &[]);
    let k = |port, protocol| ServiceKey { port, protocol };
    let tx = replace(&s, &predecessor(), &services()).0;
    // The kernel holds the predecessor's table.
    let mut kernel = Kernel::default();
    kernel.apply(&replace(&s, &Found::default(), &ServiceTable::default()).0);
    for chain in ["svc_tcp_80", "svc_tcp_9999", "junk"] {
        kernel.chains.insert(chain.into(), vec![json!("leftover")]);
    }
    for key in [80, 9999] {
        let k = k(key, Protocol::Tcp);
        let entry = serde_json::to_value(services_key(&k)).unwrap().to_string();
        kernel
            .sets
            .get_mut(SERVICES)
            .unwrap()
            .insert(entry, services_verdict(&k));
        kernel
            .sets
            .get_mut("bytes_tcp")
            .unwrap()
            .insert(key.to_string(), Value::Null);
    }
    kernel.sets.insert("junk_set".into(), BTreeMap::new());
    kernel.apply(&tx);
    kernel.assert_serves(&services(), true);
}

#[test]
fn a_listing_is_read_into_what_a_replace_needs() {
    let counter = json!({"packets": 3, "bytes": 180});
    let listing = json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "ip", "name": "proxy"}},
        {"map": {"family": "ip", "table": "proxy", "name": "services",
            "type": ["inet_proto", "inet_service"], "map": "verdict", "stmt": [{"counter": null}],
            "elem": [
                [{"elem": {"val": {"concat": ["tcp", 80]}, "counter": counter}}, {"goto": {"target": "svc_tcp_80"}}],
                [{"concat": ["udp", 53]}, {"goto": {"target": "svc_udp_53"}}]
            ]}},
        {"set": {"family": "ip", "table": "proxy", "name": "bytes_tcp", "type": "inet_service",
            "stmt": [{"counter": null}], "elem": [{"elem": {"val": 80, "counter": {"packets": 9, "bytes": 4096}}}]}},
        {"set": {"family": "ip", "table": "proxy", "name": "bytes_udp", "type": "inet_service",
            "stmt": [{"counter": null}], "elem": [{"elem": {"val": 53, "counter": counter}}, 54]}},
        {"set": {"family": "ip", "table": "proxy", "name": "bytes_sctp", "type": "ipv4_addr"}},
        {"counter": {"family": "ip", "table": "proxy", "name": "conn_tcp_80", "packets": 1}},
        {"chain": {"family": "ip", "table": "proxy", "name": "svc_tcp_80"}},
        {"rule": {"family": "ip", "table": "proxy", "chain": "svc_tcp_80", "expr": []}}
    ]});
    let found = Found::from_listing(&listing).unwrap();
    let k = |port, protocol| ServiceKey { port, protocol };
    assert_eq!(found.chains, ["svc_tcp_80".to_string()].into());
    assert_eq!(
        found.our_sets,
        [
            (
                SERVICES.to_string(),
                [k(80, Protocol::Tcp), k(53, Protocol::Udp)].into()
            ),
            ("bytes_tcp".to_string(), [k(80, Protocol::Tcp)].into()),
            (
                "bytes_udp".to_string(),
                [k(53, Protocol::Udp), k(54, Protocol::Udp)].into()
            ),
        ]
        .into()
    );
    assert_eq!(
        found.others,
        vec![
            ("set".into(), "bytes_sctp".into()),
            ("counter".into(), "conn_tcp_80".into())
        ]
    );
    assert!(!found.foreign);

    // An element pointing elsewhere: the map is declared anew.
    let mut odd = listing.clone();
    odd["nftables"][2]["map"]["elem"][1][1] = json!({"goto": {"target": "elsewhere"}});
    let found = Found::from_listing(&odd).unwrap();
    assert!(!found.our_sets.contains_key(SERVICES));
    assert!(found.others.contains(&("map".into(), SERVICES.into())));

    let mut quota = listing.clone();
    quota["nftables"]
        .as_array_mut()
        .unwrap()
        .push(json!({"quota": {"name": "q"}}));
    assert!(Found::from_listing(&quota).unwrap().foreign);

    let mut nameless = listing;
    nameless["nftables"]
        .as_array_mut()
        .unwrap()
        .push(json!({"chain": {}}));
    assert!(Found::from_listing(&nameless).is_err());
}

#[test]
fn counters_are_read_from_the_elements() {
    let map = json!({"nftables": [{"map": {"name": "services",
    "type": ["inet_proto", "inet_service"], "map": "verdict", "stmt": [{"counter": null}],
    "elem": [
        [{"elem": {"val": {"concat": ["tcp", 80]}, "counter": {"packets": 3, "bytes": 180}}}, {"goto": {"target": "svc_tcp_80"}}],
        [{"elem": {"val": {"concat": ["udp", 53]}, "counter": {"packets": 1, "bytes": 60}}}, {"goto": {"target": "svc_udp_53"}}]
    ]}}]});
    let sets = json!({"nftables": [
        {"set": {"name": "bytes_tcp", "type": "inet_service", "stmt": [{"counter": null}],
            "elem": [{"elem": {"val": 80, "counter": {"packets": 9, "bytes": 4096}}}]}},
        {"set": {"name": "other", "type": "inet_service", "stmt": [{"counter": null}],
            "elem": [{"elem": {"val": 80, "counter": {"packets": 9, "bytes": 1}}}]}}
    ]});
    let c = counters(&[map, sets]);
    let k = |port, protocol| ServiceKey { port, protocol };
    assert_eq!(
        c,
        [
            (
                k(53, Protocol::Udp),
                ServiceCounters {
                    connections: 1,
                    bytes: 0
                }
            ),
            (
                k(80, Protocol::Tcp),
                ServiceCounters {
                    connections: 3,
                    bytes: 4096
                }
            ),
        ]
        .into()
    );
}
