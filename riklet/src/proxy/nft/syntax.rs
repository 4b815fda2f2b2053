//! Small builders of typed nftables objects and expressions, so that the
//! rules in [`super::ruleset`] read close to their `nft` text.

use std::borrow::Cow;

use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload, PayloadField, SetItem,
    Verdict,
};
use nftables::schema::{Chain, Counter as CounterObject, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::NfFamily;

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

    pub(super) fn counter(&self, name: &str) -> CounterObject<'static> {
        CounterObject {
            family: NfFamily::IP,
            table: self.name.clone(),
            name: name.to_string().into(),
            handle: None,
            packets: None,
            bytes: None,
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

/// `ct status dnat`: a connection some DNAT rule translated.
pub(super) fn ct_dnat() -> Statement<'static> {
    let status = Expression::Named(NamedExpression::CT(CT {
        key: "status".into(),
        family: None,
        dir: None,
    }));
    match_op(status, string("dnat"), Operator::IN)
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

pub(super) fn goto(chain: String) -> Expression<'static> {
    Expression::Verdict(Verdict::Goto(JumpTarget {
        target: chain.into(),
    }))
}

/// `numgen random mod n`: a uniform pick per new connection.
pub(super) fn numgen(n: usize) -> Expression<'static> {
    Expression::Named(NamedExpression::Numgen(Numgen {
        mode: NgMode::Random,
        ng_mod: u32::try_from(n).unwrap_or(u32::MAX),
        offset: None,
    }))
}

/// `{ 0 : a, 1 : b, … }`.
pub(super) fn indexed(values: Vec<Expression<'static>>) -> Expression<'static> {
    let items = (0u32..)
        .zip(values)
        .map(|(i, v)| SetItem::Mapping(Expression::Number(i), v));
    Expression::Named(NamedExpression::Set(items.collect()))
}

pub(super) fn map(key: Expression<'static>, data: Expression<'static>) -> Expression<'static> {
    Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
        key,
        data,
    })))
}

pub(super) fn dnat_to(addr: String, port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(string(addr)),
        family: Some(NATFamily::IP),
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

pub(super) fn redirect_to(port: Expression<'static>) -> Statement<'static> {
    Statement::Redirect(Some(NAT {
        addr: None,
        family: None,
        port: Some(port),
        flags: None,
    }))
}
