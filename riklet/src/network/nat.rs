//! Masquerading of pod traffic that leaves the pod CIDR, with nftables:
//!
//! ```text
//! table ip <table> {
//!     chain pod_masquerade {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr <cidr> ip daddr != <cidr> masquerade comment "riklet pods"
//!     }
//! }
//! ```
//!
//! The rules go through the `nftables` crate (JSON fed to `nft -j -f -`),
//! one atomic transaction each time. Only the chain `pod_masquerade` is
//! ours: the table may be shared with other riklet subsystems, so it is
//! deleted only when nothing else is left in it.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{self, DEFAULT_NFT, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::ipam::Ipv4Cidr;
use super::{NetworkError, Result};

/// The chain holding the masquerade rule.
pub const CHAIN: &str = "pod_masquerade";

/// `srcnat` priority.
const SRCNAT: i32 = 100;

const COMMENT: &str = "riklet pods";

/// Installs (or replaces) the masquerade rule for `cidr` in `table`.
pub(crate) async fn ensure(table: &str, cidr: Ipv4Cidr) -> Result<()> {
    let table = table.to_string();
    blocking(move || {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(Table {
            family: NfFamily::IP,
            name: table.clone().into(),
            handle: None,
        }));
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: table.clone().into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(SRCNAT),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain_ref(&table))));
        let net = || {
            Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(cidr.network().to_string().into())),
                len: u32::from(cidr.prefix_len()),
            }))
        };
        let ip = |field: &'static str| {
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: "ip".into(),
                    field: field.into(),
                },
            )))
        };
        batch.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: table.clone().into(),
            chain: CHAIN.into(),
            expr: Cow::Owned(vec![
                Statement::Match(Match {
                    left: ip("saddr"),
                    right: net(),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: ip("daddr"),
                    right: net(),
                    op: Operator::NEQ,
                }),
                Statement::Masquerade(None),
            ]),
            comment: Some(COMMENT.into()),
            ..Rule::default()
        }));
        helper::apply_ruleset(&batch.to_nftables()).map_err(nft_err(format!(
            "installing the masquerade rule in table ip {table}"
        )))
    })
    .await
}

/// Removes the masquerade chain, and the table if nothing else is in it.
/// Nothing to do if the table does not exist.
pub(crate) async fn remove(table: &str) -> Result<()> {
    let table = table.to_string();
    blocking(move || {
        let what = format!("removing the masquerade rule from table ip {table}");
        let tables = list(&["list", "tables", "ip"]).map_err(nft_err(what.clone()))?;
        let exists = objects(&tables).any(|(kind, o)| kind == "table" && o["name"] == *table);
        if !exists {
            return Ok(());
        }
        let content = list(&["list", "table", "ip", &table]).map_err(nft_err(what.clone()))?;
        let mut ours = false;
        let mut others = false;
        for (kind, o) in objects(&content) {
            match kind {
                "metainfo" | "table" => {}
                "chain" if o["name"] == CHAIN => ours = true,
                "rule" if o["chain"] == CHAIN => {}
                _ => others = true,
            }
        }
        let mut batch = Batch::new();
        if !others {
            batch.delete(NfListObject::Table(Table {
                family: NfFamily::IP,
                name: table.clone().into(),
                handle: None,
            }));
        } else if ours {
            batch.delete(NfListObject::Chain(chain_ref(&table)));
        } else {
            return Ok(());
        }
        helper::apply_ruleset(&batch.to_nftables()).map_err(nft_err(what))
    })
    .await
}

fn chain_ref(table: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: table.to_string().into(),
        name: CHAIN.into(),
        ..Chain::default()
    }
}

/// `nft -j <args>`, parsed as plain JSON: other users' rules may hold
/// expressions the typed schema does not know.
pub(crate) fn list(args: &[&str]) -> std::result::Result<serde_json::Value, NftablesError> {
    let raw = helper::get_current_ruleset_raw(DEFAULT_NFT, args)?;
    serde_json::from_str(&raw).map_err(NftablesError::NftInvalidJson)
}

/// The `(kind, object)` pairs of an `nft -j` answer.
pub(crate) fn objects(doc: &serde_json::Value) -> impl Iterator<Item = (&str, &serde_json::Value)> {
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_object()?.iter().next())
        .map(|(k, v)| (k.as_str(), v))
}

fn nft_err(what: String) -> impl FnOnce(NftablesError) -> NetworkError {
    move |source| {
        let detail = match &source {
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_string(),
            _ => String::new(),
        };
        NetworkError::Nft {
            what,
            detail,
            source: Box::new(source),
        }
    }
}

/// `nft` is a child process: run it off the async workers.
async fn blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NetworkError::ThreadPanicked {
            what: "running nft",
        })?
}
