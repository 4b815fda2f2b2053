//! Small builders of nftables JSON commands, objects and expressions, so
//! that [`super::ruleset`] reads close to the `nft` text. Typed where the
//! `nftables` crate has the type; the proxy's named sets (a verdict map,
//! per-element counters) are written as plain JSON, which the crate cannot
//! express.

use std::borrow::Cow;

use nftables::expr::{
    CT, CTDir, Expression, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload, PayloadField,
    Verdict,
};
use nftables::schema::{Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::NfFamily;
use serde::Serialize;
use serde_json::{Value, json};

/// The commands of one nft transaction, in the order nft runs them.
#[derive(Debug, Default)]
pub(super) struct Tx {
    cmds: Vec<Cmd>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Cmd {
    Typed(NfObject<'static>),
    Raw(Value),
}

#[derive(Serialize)]
struct Document<'a> {
    nftables: &'a [Cmd],
}

impl Tx {
    pub(super) fn add(&mut self, o: NfListObject<'static>) {
        self.typed(NfCmd::Add(o));
    }

    /// `insert rule`: at the head of the chain.
    pub(super) fn insert(&mut self, o: NfListObject<'static>) {
        self.typed(NfCmd::Insert(o));
    }

    pub(super) fn delete(&mut self, o: NfListObject<'static>) {
        self.typed(NfCmd::Delete(o));
    }

    pub(super) fn flush(&mut self, o: FlushObject<'static>) {
        self.typed(NfCmd::Flush(o));
    }

    /// A command the crate has no type for, e.g. `{"add": {"map": …}}`.
    pub(super) fn raw(&mut self, cmd: Value) {
        self.cmds.push(Cmd::Raw(cmd));
    }

    fn typed(&mut self, c: NfCmd<'static>) {
        self.cmds.push(Cmd::Typed(NfObject::CmdObject(c)));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The `nft -j -f` input.
    pub(super) fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(&Document {
            nftables: &self.cmds,
        })
    }
}

/// Builds objects of one table.
pub(super) struct Tables {
    pub(super) name: Cow<'static, str>,
}

impl Tables {
    pub(super) fn new(name: &str) -> Self {
        Tables {
            name: name.to_string().into(),
        }
    }

    pub(super) fn table(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: self.name.clone(),
            handle: None,
        }
    }

    pub(super) fn chain(&self, name: &str) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: self.name.clone(),
            name: name.to_string().into(),
            ..Chain::default()
        }
    }

    pub(super) fn rule(
        &self,
        chain: &str,
        expr: Vec<Statement<'static>>,
        comment: Option<String>,
    ) -> NfListObject<'static> {
        NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: self.name.clone(),
            chain: chain.to_string().into(),
            expr: expr.into(),
            comment: comment.map(Cow::Owned),
            ..Rule::default()
        })
    }

    /// Elements of the named set or map `set`.
    pub(super) fn elements(
        &self,
        set: &str,
        elem: Vec<Expression<'static>>,
    ) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: NfFamily::IP,
            table: self.name.clone(),
            name: set.to_string().into(),
            elem: elem.into(),
        })
    }

    /// `add <kind> <table> <name> { <declaration>; counter; }`: a set or
    /// map each of whose elements has its own counter.
    pub(super) fn counting_set(&self, kind: &str, name: &str, declaration: Value) -> Value {
        let mut body = json!({
            "family": "ip",
            "table": self.name,
            "name": name,
            "stmt": [{"counter": null}],
        });
        if let (Some(body), Some(declaration)) = (body.as_object_mut(), declaration.as_object()) {
            body.extend(declaration.clone());
        }
        json!({ "add": { kind: body } })
    }
}

pub(super) fn string(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

pub(super) fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

/// `ct status dnat`: a connection some DNAT rule translated.
pub(super) fn ct_dnat() -> Statement<'static> {
    let status = Expression::Named(NamedExpression::CT(CT {
        key: "status".into(),
        family: None,
        dir: None,
    }));
    match_op(status, string("dnat"), Operator::IN)
}

/// `ct original proto-dst`: the port the client asked for, before DNAT.
pub(super) fn ct_original_port() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: "proto-dst".into(),
        family: None,
        dir: Some(CTDir::Original),
    }))
}

pub(super) fn match_eq(
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    match_op(left, right, Operator::EQ)
}

pub(super) fn match_op(
    left: Expression<'static>,
    right: Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub(super) fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}

pub(super) fn goto(chain: String) -> Expression<'static> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: chain.into(),
    }))
}

/// `numgen random mod n 0`: true for one new connection in `n`.
pub(super) fn one_in(n: usize) -> Statement<'static> {
    let numgen = Expression::Named(NamedExpression::Numgen(Numgen {
        mode: NgMode::Random,
        ng_mod: u32::try_from(n).unwrap_or(u32::MAX),
        offset: None,
    }));
    match_eq(numgen, Expression::Number(0))
}

pub(super) fn dnat_to(addr: String, port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(string(addr)),
        family: Some(NATFamily::IP),
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

pub(super) fn redirect_to(port: u16) -> Statement<'static> {
    Statement::Redirect(Some(NAT {
        addr: None,
        family: None,
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}
