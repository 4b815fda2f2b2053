//! Each app's recent events, gathered from its pods' status reports
//! (`history` in the metrics JSON), for `rik describe app` and `rik get
//! events`.
//!
//! Kept in memory only and bounded ([`MAX_APP_EVENTS`] per app): a
//! scheduler restart forgets them, and the riklets' next reports (each
//! carries its pod's last events) bring the recent ones back. They go
//! with their app.

use std::collections::{BTreeMap, VecDeque};

use proto::rik::v1::Event;
use proto::status::{EventType, LifecycleEvent};

/// Most events kept per app, oldest dropped first.
pub const MAX_APP_EVENTS: usize = 100;

/// One event and the pod it happened to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppEvent {
    instance_id: String,
    node: String,
    event: LifecycleEvent,
}

/// The last events of one app, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppEvents {
    events: VecDeque<AppEvent>,
    /// Per instance, the `(at, seq)` of the last event taken: a report
    /// repeats its pod's last events, and a riklet that restarted numbers
    /// them from 1 again, later.
    seen: BTreeMap<String, (i64, u64)>,
}

impl AppEvents {
    /// Takes the events of an instance's report that are new; whether
    /// there was one.
    pub fn add(&mut self, instance_id: &str, node: &str, history: Vec<LifecycleEvent>) -> bool {
        let mut last = self.seen.get(instance_id).copied().unwrap_or_default();
        let mut added = false;
        for event in history {
            let key = (event.at, event.seq);
            if key <= last {
                continue;
            }
            last = key;
            added = true;
            self.events.push_back(AppEvent {
                instance_id: instance_id.to_string(),
                node: node.to_string(),
                event,
            });
        }
        while self.events.len() > MAX_APP_EVENTS {
            self.events.pop_front();
        }
        if added {
            self.seen.insert(instance_id.to_string(), last);
        }
        added
    }

    /// Forgets what was seen of an instance that is gone (its events stay
    /// until newer ones push them out).
    pub fn forget_instance(&mut self, instance_id: &str) {
        self.seen.remove(instance_id);
    }

    /// The events as `rik.v1` sends them, oldest first.
    pub fn to_wire(&self) -> Vec<Event> {
        self.events
            .iter()
            .map(|e| Event {
                instance_id: e.instance_id.clone(),
                node: e.node.clone(),
                container: e.event.container.clone().unwrap_or_default(),
                time: e.event.at,
                r#type: match e.event.kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
                reason: e.event.reason.clone(),
                message: e.event.message.clone(),
                seq: e.event.seq,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at: i64) -> LifecycleEvent {
        LifecycleEvent {
            seq,
            at,
            reason: format!("r{seq}"),
            ..LifecycleEvent::default()
        }
    }

    #[test]
    fn repeated_events_are_taken_once_and_the_list_is_bounded() {
        let mut app = AppEvents::default();
        assert!(app.add("a-1", "n", vec![event(1, 10), event(2, 11)]));
        assert!(!app.add("a-1", "n", vec![event(1, 10), event(2, 11)]));
        assert!(app.add("a-1", "n", vec![event(2, 11), event(3, 12)]));
        // A restarted riklet numbers from 1 again, later.
        assert!(app.add("a-1", "n", vec![event(1, 20)]));
        let reasons: Vec<String> = app.to_wire().into_iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["r1", "r2", "r3", "r1"]);
        for i in 0..(MAX_APP_EVENTS as u64 * 2) {
            app.add("a-2", "n", vec![event(i + 1, 100 + i as i64)]);
        }
        let wire = app.to_wire();
        assert_eq!(wire.len(), MAX_APP_EVENTS);
        assert_eq!(wire.last().unwrap().seq, MAX_APP_EVENTS as u64 * 2);
    }
}
