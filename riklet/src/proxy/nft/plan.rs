//! Which commands a sync sends: one transaction turning what the table
//! holds into what the [`ServiceTable`] asks for, each kept as small as
//! the change.
//!
//! - The first sync after start ([`replace`]) reads the table from the
//!   kernel ([`Found`]), which may hold a crashed predecessor's work, and
//!   rewrites it whole: every rule and every chain but the services' are
//!   written anew, leftovers deleted, so nothing is duplicated. Set
//!   elements of services that stay are kept, and with them their
//!   counters.
//! - Later syncs ([`update`]) rely on what the previous ones wrote
//!   ([`Written`]) and only **add**: a new service gets its chain, rules
//!   and elements; a service whose backends changed gets its new rules
//!   inserted at the head of its chain, where they shadow the old ones (the
//!   last rule of a service always translates, which ends the chain); a
//!   service that is gone gets a `return` at its head. The reason: once a
//!   transaction that deletes anything has committed, `nft` waits on exit
//!   for the kernel to free what was deleted, after an RCU grace period
//!   (10-20 ms here), while a transaction that only adds exits at once.
//! - [`compaction`], run by the proxy once the services have been quiet
//!   for a while, deletes what syncs left behind: shadowed rules, the
//!   chains and elements of services that are gone.

use std::collections::{BTreeMap, BTreeSet};

use nftables::schema::{FlushObject, NfListObject};
use serde_json::{Value, json};

use super::NftSettings;
use super::names::*;
use super::ruleset::{self, *};
use super::syntax::{Tables, Tx};
use crate::proxy::model::{Service, ServiceCounters, ServiceKey, ServiceTable};

/// What the table holds after our last transaction, as far as syncs care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Every service chain of the table and what its head rules do: serve
    /// this service, or (`None`) return: the service is gone, its chain
    /// and elements wait for the compaction.
    chains: BTreeMap<ServiceKey, Option<Service>>,
    /// Chains that hold rules below their head ones, never reached.
    stale: BTreeSet<ServiceKey>,
}

impl Written {
    /// A table that serves exactly `table`, with nothing to compact.
    fn serving(table: &ServiceTable) -> Self {
        Written {
            chains: table.services().map(|s| (s.key, Some(s.clone()))).collect(),
            stale: BTreeSet::new(),
        }
    }

    /// Whether [`compaction`] has anything to delete.
    pub fn needs_compaction(&self) -> bool {
        !self.stale.is_empty()
    }
}

/// What the table holds before the first sync, read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub chains: BTreeSet<String>,
    /// Our sets, declared and filled as this version does, with the
    /// services their elements stand for.
    pub our_sets: BTreeMap<String, BTreeSet<ServiceKey>>,
    /// Other sets and maps, and named objects (counters): `(kind, name)`.
    pub others: Vec<(String, String)>,
    /// Objects of kinds this module never makes (quotas, flowtables…): the
    /// table is deleted and created anew.
    pub foreign: bool,
}

impl Found {
    /// Reads `nft -j list table` of a table that exists.
    pub fn from_listing(doc: &Value) -> Result<Found, String> {
        let mut found = Found::default();
        let items = doc["nftables"].as_array().into_iter().flatten();
        for (kind, o) in items.filter_map(|o| o.as_object()?.iter().next()) {
            let name = || {
                o["name"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("a {kind} without a name: {o}"))
            };
            match kind.as_str() {
                "metainfo" | "table" | "rule" => {}
                "chain" => {
                    found.chains.insert(name()?);
                }
                "set" | "map" if ruleset::is_our_set(kind, o) => {
                    let elements = o["elem"].as_array().map_or(&[][..], Vec::as_slice);
                    let served = served_by(&name()?, elements);
                    if served.len() == elements.len() {
                        found.our_sets.insert(name()?, served);
                    } else {
                        // An element this version would not write: the
                        // set is declared anew.
                        found.others.push((kind.clone(), name()?));
                    }
                }
                "set" | "map" | "counter" => found.others.push((kind.clone(), name()?)),
                _ => found.foreign = true,
            }
        }
        Ok(found)
    }
}

/// The services whose element of our set `set` is as this version writes
/// it.
fn served_by(set: &str, elements: &[Value]) -> BTreeSet<ServiceKey> {
    // `{"elem": {"val": v, "counter": …}}` or plainly `v`.
    let value = |e: &Value| e.get("elem").map_or(e, |e| &e["val"]).clone();
    let port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    elements
        .iter()
        .filter_map(|e| {
            if set == SERVICES {
                let key = value(&e[0]);
                let parts = key["concat"].as_array()?;
                let [protocol, p] = parts.as_slice() else {
                    return None;
                };
                let key = ServiceKey {
                    port: port(p)?,
                    protocol: parse_protocol(protocol.as_str()?)?,
                };
                (e[1] == services_verdict(&key)).then_some(key)
            } else {
                let protocol = PROTOCOLS.into_iter().find(|p| bytes_set(*p) == set)?;
                Some(ServiceKey {
                    port: port(&value(e))?,
                    protocol,
                })
            }
        })
        .collect()
}

/// The services' counters in `nft -j` listings of our sets: connections
/// are the packets of the `@services` elements, bytes the bytes of the
/// `@bytes_*` ones.
pub fn counters(docs: &[Value]) -> BTreeMap<ServiceKey, ServiceCounters> {
    let mut counters: BTreeMap<ServiceKey, ServiceCounters> = BTreeMap::new();
    let items = docs
        .iter()
        .flat_map(|d| d["nftables"].as_array().into_iter().flatten());
    for (kind, o) in items.filter_map(|o| o.as_object()?.iter().next()) {
        if !ruleset::is_our_set(kind, o) {
            continue;
        }
        let Some(set) = o["name"].as_str() else {
            continue;
        };
        for e in o["elem"].as_array().into_iter().flatten() {
            let element = if set == SERVICES { &e[0] } else { e };
            let Some(key) = served_by(set, std::slice::from_ref(e)).pop_first() else {
                continue;
            };
            let counter = &element["elem"]["counter"];
            let c = counters.entry(key).or_default();
            if set == SERVICES {
                c.connections = counter["packets"].as_u64().unwrap_or(0);
            } else {
                c.bytes = counter["bytes"].as_u64().unwrap_or(0);
            }
        }
    }
    counters
}

/// The first sync: the table for `target`, whatever `found` holds.
pub(super) fn replace(
    settings: &NftSettings,
    found: &Found,
    target: &ServiceTable,
) -> (Tx, Written) {
    let t = Tables::new(&settings.table);
    let mut tx = Tx::default();
    // Service chains that stay, emptied by the flush.
    let mut kept = BTreeSet::new();
    tx.add(NfListObject::Table(t.table()));
    if found.foreign {
        tx.delete(NfListObject::Table(t.table()));
    } else {
        // Rules first: they hold the references to chains and sets.
        tx.flush(FlushObject::Table(t.table()));
        for (kind, name) in &found.others {
            tx.raw(
                json!({"delete": {kind.as_str(): {"family": "ip", "table": t.name, "name": name}}}),
            );
        }
        for (set, served) in &found.our_sets {
            let gone: Vec<_> = served
                .iter()
                .filter(|k| target.get(k).is_none())
                .map(|k| {
                    if set == SERVICES {
                        services_key(k)
                    } else {
                        bytes_element(k)
                    }
                })
                .collect();
            if !gone.is_empty() {
                tx.delete(t.elements(set, gone));
            }
        }
        // Elements that stay name their service's chain: it stays too, and
        // gets its rules again below. Every other chain goes, base chains
        // included, which a predecessor may have hooked differently.
        let wanted: BTreeSet<String> = target.services().map(|s| service_chain(&s.key)).collect();
        for chain in &found.chains {
            if wanted.contains(chain) {
                kept.insert(chain.clone());
            } else {
                tx.delete(NfListObject::Chain(t.chain(chain)));
            }
        }
    }
    ruleset::add_fixed(&mut tx, settings);
    for s in target.services() {
        let chain_exists = kept.contains(&service_chain(&s.key));
        ruleset::add_service(&mut tx, settings, s, chain_exists);
    }
    let keys: Vec<ServiceKey> = target.services().map(|s| s.key).collect();
    ruleset::add_elements(&mut tx, settings, &keys);
    (tx, Written::serving(target))
}

/// A later sync: the commands that make a table holding `written` serve
/// `target`, adding only (see the module doc); empty when nothing changed.
pub(super) fn update(
    settings: &NftSettings,
    written: &Written,
    target: &ServiceTable,
) -> (Tx, Written) {
    let t = Tables::new(&settings.table);
    let mut tx = Tx::default();
    let mut next = written.clone();
    let mut added = Vec::new();
    for s in target.services() {
        match written.chains.get(&s.key) {
            None => {
                ruleset::add_service(&mut tx, settings, s, false);
                added.push(s.key);
            }
            Some(Some(old)) if old == s => continue,
            Some(_) => {
                // Inserted one by one at the head: last rule first.
                for rule in ruleset::service_rules(&t, s).into_iter().rev() {
                    tx.insert(rule);
                }
                next.stale.insert(s.key);
            }
        }
        next.chains.insert(s.key, Some(s.clone()));
    }
    for (key, serving) in &written.chains {
        if serving.is_some() && target.get(key).is_none() {
            tx.insert(ruleset::gone_rule(&t, key));
            next.chains.insert(*key, None);
            next.stale.insert(*key);
        }
    }
    ruleset::add_elements(&mut tx, settings, &added);
    (tx, next)
}

/// Deletes what syncs left behind: shadowed rules (the chain is written
/// again) and gone services (chain and elements). Empty when there is
/// nothing to delete.
pub(super) fn compaction(settings: &NftSettings, written: &Written) -> (Tx, Written) {
    let t = Tables::new(&settings.table);
    let mut tx = Tx::default();
    let mut next = written.clone();
    for key in &written.stale {
        let chain = service_chain(key);
        tx.flush(FlushObject::Chain(t.chain(&chain)));
        match written.chains.get(key) {
            Some(Some(s)) => {
                for rule in ruleset::service_rules(&t, s) {
                    tx.add(rule);
                }
            }
            _ => {
                tx.delete(t.elements(SERVICES, vec![services_key(key)]));
                tx.delete(t.elements(&bytes_set(key.protocol), vec![bytes_element(key)]));
                tx.delete(NfListObject::Chain(t.chain(&chain)));
                next.chains.remove(key);
            }
        }
    }
    next.stale.clear();
    (tx, next)
}

/// The whole table for `table`, written into an empty one.
#[cfg(test)]
pub(super) fn ruleset(settings: &NftSettings, table: &ServiceTable) -> Tx {
    replace(settings, &Found::default(), table).0
}

#[cfg(test)]
mod tests;
