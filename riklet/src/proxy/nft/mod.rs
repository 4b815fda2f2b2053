//! The nftables datapath of the Node Proxy: DNAT of connections to a
//! node address on a service port, in a table of its own (family `ip`).
//!
//! Traffic entering the node (prerouting) always goes through it. Traffic
//! of the node's own processes (output) goes through it for every protocol
//! in the nftables mode ([`LocalTraffic::All`]), and only for SCTP next to
//! the eBPF socket load-balancer, which handles local TCP and UDP without
//! any per-packet NAT ([`LocalTraffic::SctpOnly`]). The table's shape is
//! described in [`ruleset`].
//!
//! Every [`NftProxy::sync`] is one nft transaction. The first one after
//! start reads what the table holds (a crashed predecessor's work) and
//! replaces it, never duplicating it; later ones rely on what the previous
//! ones wrote and send only what changed, adding objects and never
//! deleting any, so that a change is in place within a few milliseconds;
//! [`NftProxy::compact`] deletes what they leave behind once things are
//! quiet (see [`plan`]). A service's counters live as long as it does, so
//! `/metrics` counters only grow (across a restart of the riklet too).
//!
//! A host whose `forward` hook drops by default (Docker's iptables sets a
//! `FORWARD DROP` policy) drops connections from outside to pod backends:
//! such a host needs an accept rule for the pod CIDR, which this module
//! does not add, as it never touches other tables.

mod names;
mod plan;
mod ruleset;
mod syntax;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use nftables::batch::Batch;
use nftables::helper::{self, NftablesError};
use nftables::schema::{NfListObject, Table};
use nftables::types::NfFamily;
use tracing::{debug, info, warn};

pub use names::{
    BYTES, BYTES_INPUT, BYTES_POSTROUTING, DISPATCH, NAT_OUTPUT, NAT_POSTROUTING, NAT_PREROUTING,
    SERVICES, bytes_set, service_chain,
};

use super::model::{ServiceCounters, ServiceKey, ServiceTable};
use crate::network::ipam::Ipv4Cidr;
use crate::network::nat::{list, objects};
use plan::{Found, Written};
use syntax::Tx;

/// Which locally generated traffic the table translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalTraffic {
    /// Every protocol: the nftables mode, nothing else balances local
    /// connections. Connections from `127.0.0.1` need the pod bridge's
    /// `route_localnet`, which [`NftProxy::sync`] turns on.
    All,
    /// SCTP only: the eBPF socket load-balancer handles local TCP and UDP.
    SctpOnly,
}

/// Where and how the proxy table works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftSettings {
    /// The table (family `ip`), e.g. `riklet_proxy`; never shared.
    pub table: String,
    /// The pod network: connections from a pod to a pod through the node
    /// are masqueraded.
    pub pod_cidr: Ipv4Cidr,
    /// The pod bridge (for `route_localnet`).
    pub bridge: String,
    /// The node addresses that expose services; empty: every local
    /// address (`fib daddr type local`), loopback included.
    pub addresses: Vec<Ipv4Addr>,
    pub local: LocalTraffic,
}

/// A proxy table operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NftProxyError {
    #[error("proxy settings: {field}: {reason}")]
    InvalidSettings { field: &'static str, reason: String },
    #[error("{what}{}", crate::network::nft_said(.detail))]
    Nft {
        what: String,
        /// What `nft` printed on stderr.
        detail: String,
        #[source]
        source: Box<NftablesError>,
    },
    #[error("{what}: encoding the nft commands")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// `nft -j list` printed JSON this module does not understand.
    #[error("{what}: unexpected nft listing: {reason}")]
    Listing { what: String, reason: String },
    #[error("{what}: {path}")]
    Sysctl {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: the helper thread died")]
    ThreadPanicked { what: &'static str },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, NftProxyError>;

/// The proxy table of this node.
#[derive(Debug)]
pub struct NftProxy {
    settings: NftSettings,
    /// Serialises syncs and removal.
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What the table holds after our last transaction; `None`: unknown
    /// (not synced yet, or the last transaction failed), read it from the
    /// kernel and replace it.
    written: Option<Written>,
    /// We turned `route_localnet` on: turn it off again on removal.
    localnet_changed: bool,
}

impl NftProxy {
    /// Checks the settings; touches nothing.
    pub fn new(settings: NftSettings) -> Result<Self> {
        let invalid = |field, reason: String| NftProxyError::InvalidSettings { field, reason };
        crate::network::check_nft_table_name(&settings.table)
            .map_err(|reason| invalid("table", reason))?;
        crate::network::check_link_name(&settings.bridge)
            .map_err(|reason| invalid("bridge", reason))?;
        Ok(NftProxy {
            settings,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    pub fn settings(&self) -> &NftSettings {
        &self.settings
    }

    /// Makes the table serve exactly `table`, in one transaction (none if
    /// nothing changed). With [`LocalTraffic::All`], turns the bridge's
    /// `route_localnet` on afterwards (the rules are in place even if that
    /// fails).
    pub async fn sync(&self, table: &ServiceTable) -> Result<()> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let settings = self.settings.clone();
        let services = table.clone();
        let known = state.written.take();
        let first = known.is_none();
        let written = blocking("writing the proxy table", move || {
            let (tx, written) = match known {
                Some(w) => plan::update(&settings, &w, &services),
                None => {
                    let found = read_found(&settings.table)?;
                    plan::replace(&settings, &found, &services)
                }
            };
            let what = || {
                format!(
                    "writing {} services to table ip {}",
                    services.len(),
                    settings.table
                )
            };
            crate::crash::point("proxy.nft.before_transaction");
            apply(&tx, what)?;
            crate::crash::point("proxy.nft.after_transaction");
            Ok(written)
        })
        .await?;
        state.written = Some(written);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        if first {
            info!(table = %self.settings.table, services = table.len(), elapsed_ms, "proxy table written");
        } else {
            debug!(table = %self.settings.table, services = table.len(), elapsed_ms, "proxy table synced");
        }
        if self.settings.local == LocalTraffic::All && enable_route_localnet(&self.settings.bridge)?
        {
            state.localnet_changed = true;
        }
        Ok(())
    }

    /// Deletes what the syncs since the last compaction left behind (rules
    /// no longer reached, chains and set elements of services that are
    /// gone), in one transaction; nothing to do if they left nothing. Not
    /// part of a sync because a transaction that deletes makes `nft` wait
    /// for an RCU grace period (see [`plan`]): call it when no change is
    /// expected soon.
    pub async fn compact(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let Some(known) = state.written.take_if(|w| w.needs_compaction()) else {
            return Ok(());
        };
        let started = Instant::now();
        let settings = self.settings.clone();
        let written = blocking("compacting the proxy table", move || {
            let (tx, written) = plan::compaction(&settings, &known);
            apply(&tx, || format!("compacting table ip {}", settings.table))?;
            Ok(written)
        })
        .await?;
        state.written = Some(written);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        debug!(table = %self.settings.table, elapsed_ms, "proxy table compacted");
        Ok(())
    }

    /// Every service's counters, read from the element counters of the
    /// table's sets (after a sync: before, the table may not exist).
    /// `connections` are first packets (the NAT hooks see no others),
    /// `bytes` both directions of the DNATed connections.
    pub async fn counters(&self) -> Result<BTreeMap<ServiceKey, ServiceCounters>> {
        let table = self.settings.table.clone();
        blocking("reading the proxy counters", move || {
            let what = format!("reading the counters of table ip {table}");
            let services =
                list(&["list", "map", "ip", &table, SERVICES]).map_err(nft_err(what.clone()))?;
            let bytes =
                list(&["list", "sets", "table", "ip", &table]).map_err(nft_err(what.clone()))?;
            Ok(plan::counters(&[services, bytes]))
        })
        .await
    }

    /// Clean stop: deletes the table (nothing to do if it is gone) and
    /// turns `route_localnet` off again if this proxy turned it on.
    pub async fn remove(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let name = self.settings.table.clone();
        blocking("removing the proxy table", move || {
            let table = Table {
                family: NfFamily::IP,
                name: name.clone().into(),
                handle: None,
            };
            // `add` first: deleting a table that is not there fails.
            let mut batch = Batch::new();
            batch.add(NfListObject::Table(table.clone()));
            batch.delete(NfListObject::Table(table));
            helper::apply_ruleset(&batch.to_nftables())
                .map_err(nft_err(format!("deleting table ip {name}")))
        })
        .await?;
        state.written = None;
        if std::mem::take(&mut state.localnet_changed) {
            set_route_localnet(&self.settings.bridge, false)?;
        }
        info!(table = %self.settings.table, "proxy table removed");
        Ok(())
    }
}

/// Runs one transaction (nothing if it is empty).
fn apply(tx: &Tx, what: impl Fn() -> String) -> Result<()> {
    if tx.is_empty() {
        return Ok(());
    }
    let payload = tx.to_json().map_err(|source| NftProxyError::Encode {
        what: what(),
        source,
    })?;
    helper::apply_ruleset_raw(&payload, helper::DEFAULT_NFT, helper::DEFAULT_ARGS)
        .map(drop)
        .map_err(nft_err(what()))
}

/// What the table holds now (nothing if it does not exist).
fn read_found(table: &str) -> Result<Found> {
    let what = format!("reading table ip {table}");
    let tables = list(&["list", "tables", "ip"]).map_err(nft_err(what.clone()))?;
    if !objects(&tables).any(|(kind, o)| kind == "table" && o["name"] == *table) {
        return Ok(Found::default());
    }
    let content = list(&["list", "table", "ip", table]).map_err(nft_err(what.clone()))?;
    let found =
        Found::from_listing(&content).map_err(|reason| NftProxyError::Listing { what, reason })?;
    if found.foreign {
        warn!(
            table,
            "the proxy table holds objects it never makes; recreating the table (counters restart)"
        );
    }
    Ok(found)
}

fn route_localnet_path(bridge: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
}

/// Turns `route_localnet` on for the bridge: without it, the kernel refuses
/// to route a packet from 127.0.0.1 (a DNATed loopback connection) out of
/// it. Returns whether it was off.
fn enable_route_localnet(bridge: &str) -> Result<bool> {
    let path = route_localnet_path(bridge);
    let current = std::fs::read_to_string(&path).map_err(|source| NftProxyError::Sysctl {
        what: format!("reading route_localnet of the pod bridge {bridge}"),
        path: path.clone(),
        source,
    })?;
    if current.trim() == "1" {
        return Ok(false);
    }
    set_route_localnet(bridge, true)?;
    info!(
        bridge,
        "route_localnet turned on: loopback clients reach pods through the proxy"
    );
    Ok(true)
}

fn set_route_localnet(bridge: &str, on: bool) -> Result<()> {
    let path = route_localnet_path(bridge);
    match std::fs::write(&path, if on { "1\n" } else { "0\n" }) {
        Ok(()) => Ok(()),
        // The bridge is gone (removed before us): nothing to restore.
        Err(e) if !on && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NftProxyError::Sysctl {
            what: format!("setting route_localnet of the pod bridge {bridge}"),
            path,
            source,
        }),
    }
}

fn nft_err(what: String) -> impl FnOnce(NftablesError) -> NftProxyError {
    move |source| {
        let detail = match &source {
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
            _ => String::new(),
        };
        NftProxyError::Nft {
            what,
            detail,
            source: Box::new(source),
        }
    }
}

/// `nft` is a child process: run it off the async workers.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NftProxyError::ThreadPanicked { what })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(table: &str, bridge: &str) -> NftSettings {
        NftSettings {
            table: table.into(),
            pod_cidr: Ipv4Cidr::parse("10.88.0.0/24").unwrap(),
            bridge: bridge.into(),
            addresses: Vec::new(),
            local: LocalTraffic::All,
        }
    }

    #[test]
    fn settings_are_checked_before_anything_is_touched() {
        assert!(NftProxy::new(settings("riklet_proxy", "rik0")).is_ok());
        for (table, bridge, field) in [
            ("", "rik0", "table"),
            ("1proxy", "rik0", "table"),
            ("a b", "rik0", "table"),
            ("proxy", "", "bridge"),
            ("proxy", "..", "bridge"),
            ("proxy", "a-very-long-bridge", "bridge"),
            ("proxy", "a/b", "bridge"),
        ] {
            let err = NftProxy::new(settings(table, bridge))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{table:?} {bridge:?}: {err}");
        }
    }

    #[test]
    fn route_localnet_is_per_bridge() {
        assert_eq!(
            route_localnet_path("rik0"),
            PathBuf::from("/proc/sys/net/ipv4/conf/rik0/route_localnet")
        );
    }

    #[test]
    fn operations_can_run_on_spawned_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        fn check(p: &NftProxy, t: &ServiceTable) {
            send(&p.sync(t));
            send(&p.counters());
            send(&p.remove());
        }
        send_sync::<NftProxy>();
        let _ = check;
    }
}
