//! Placement: which ready node runs which instance. A pure function, so that
//! every rule is unit tested without a network.
//!
//! Rules:
//! - an instance on a ready node stays there;
//! - an instance without a node, or on a node that is not ready, goes to a
//!   ready node when one exists: the one with the fewest instances of the same
//!   app, then the fewest instances overall, then the first by name;
//! - with no ready node, nothing moves: an instance stays assigned to its
//!   (lost) node, so that a one-node cluster whose riklet restarts gets the
//!   same instance ids back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One instance as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<'a> {
    pub instance: &'a str,
    pub app: &'a str,
    /// Current node, ready or not.
    pub node: Option<&'a str>,
}

/// A decision: put `instance` on `to` (it was on `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub instance: String,
    pub from: Option<String>,
    pub to: String,
}

#[derive(Default)]
struct Load<'a> {
    total: usize,
    per_app: HashMap<&'a str, usize>,
}

/// Computes the moves that give every instance a ready node. Deterministic:
/// the same input always gives the same output, whatever its order.
pub fn place<'a>(ready: &[&'a str], slots: &[Slot<'a>]) -> Vec<Move> {
    let ready: BTreeSet<&str> = ready.iter().copied().collect();
    if ready.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&str, Load> = ready.iter().map(|n| (*n, Load::default())).collect();
    let mut homeless = Vec::new();
    for slot in slots {
        match slot.node.and_then(|n| load.get_mut(n)) {
            Some(l) => {
                l.total += 1;
                *l.per_app.entry(slot.app).or_default() += 1;
            }
            None => homeless.push(*slot),
        }
    }
    homeless.sort_by_key(|s| (s.app, s.instance));

    let mut moves = Vec::with_capacity(homeless.len());
    for slot in homeless {
        // `load` iterates in name order and `min_by_key` keeps the first of
        // equal keys: the name is the last tie-breaker.
        let (name, l) = load
            .iter_mut()
            .min_by_key(|(_, l)| (l.per_app.get(slot.app).copied().unwrap_or(0), l.total))
            .expect("at least one ready node");
        l.total += 1;
        *l.per_app.entry(slot.app).or_default() += 1;
        moves.push(Move {
            instance: slot.instance.to_string(),
            from: slot.node.map(str::to_string),
            to: (*name).to_string(),
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot<'a>(instance: &'a str, app: &'a str, node: Option<&'a str>) -> Slot<'a> {
        Slot {
            instance,
            app,
            node,
        }
    }

    fn targets(moves: &[Move]) -> Vec<(&str, &str)> {
        moves
            .iter()
            .map(|m| (m.instance.as_str(), m.to.as_str()))
            .collect()
    }

    #[test]
    fn nothing_moves_without_ready_nodes() {
        let slots = [slot("a-1", "a", None), slot("a-2", "a", Some("lost"))];
        assert!(place(&[], &slots).is_empty());
    }

    #[test]
    fn instances_on_ready_nodes_stay() {
        let slots = [slot("a-1", "a", Some("n1")), slot("a-2", "a", Some("n2"))];
        assert!(place(&["n1", "n2"], &slots).is_empty());
    }

    #[test]
    fn spreads_replicas_of_an_app_then_balances_totals() {
        // n1 already runs b twice, n2 runs one a.
        let slots = [
            slot("b-1", "b", Some("n1")),
            slot("b-2", "b", Some("n1")),
            slot("a-0", "a", Some("n2")),
            slot("a-1", "a", None),
            slot("a-2", "a", None),
            slot("a-3", "a", None),
        ];
        let moves = place(&["n2", "n1", "n3"], &slots);
        // a-1: n1 and n3 have no `a`; n3 has fewer instances overall.
        // a-2: n1 is the only one without `a`.
        // a-3: every node has one `a`; totals n1=3 n2=1 n3=1 → n2 by name.
        assert_eq!(
            targets(&moves),
            [("a-1", "n3"), ("a-2", "n1"), ("a-3", "n2")]
        );
        assert!(moves.iter().all(|m| m.from.is_none()));
    }

    #[test]
    fn name_breaks_ties_and_order_of_input_does_not_matter() {
        let slots = [slot("x-2", "x", None), slot("x-1", "x", None)];
        let moves = place(&["b", "a"], &slots);
        assert_eq!(targets(&moves), [("x-1", "a"), ("x-2", "b")]);
        let reversed = [slots[1], slots[0]];
        assert_eq!(place(&["a", "b"], &reversed), moves);
    }

    #[test]
    fn moves_instances_off_nodes_that_are_not_ready() {
        let slots = [slot("a-1", "a", Some("lost")), slot("a-2", "a", Some("n1"))];
        let moves = place(&["n1"], &slots);
        assert_eq!(
            moves,
            [Move {
                instance: "a-1".into(),
                from: Some("lost".into()),
                to: "n1".into(),
            }]
        );
    }
}
