//! Revisions and watches.
//!
//! Each operation of [`State`] marks the apps it changes (created, changed,
//! deleted, an instance's status or node changed). At its end every marked
//! app gets a revision of its own ([`crate::store::Store::next_revision`]),
//! recorded in the app (or in a tombstone), and the change is queued for
//! the app's watchers ([`crate::watchers`]). An apply or a delete stages its
//! changes before its save and publishes them only once saved, so that a
//! watcher never sees a change that was rolled back.
//!
//! A watch starts under the same lock as the changes: the current state
//! (or the replay since a revision) is taken and the watcher registered at
//! once, so nothing is missed or sent twice.

use std::sync::Arc;

use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{App, WatchEvent};
use tokio::sync::Notify;

use super::{ClusterError, State};
use crate::api::app_to_wire;
use crate::store::Data;
use crate::watchers::{Next, Pending};

/// A change made in the store, published once it is saved.
#[derive(Debug)]
pub(super) struct Staged {
    app: String,
    revision: u64,
    pending: Pending,
}

/// A watch that starts: its watcher id, what wakes it, and the events to
/// send before the queued changes.
#[derive(Debug)]
pub struct WatchStart {
    pub id: u64,
    pub notify: Arc<Notify>,
    /// The current state then SYNCED (from revision 0), or the changes
    /// since the requested revision; in revision order.
    pub initial: Vec<WatchEvent>,
}

/// What a watch sends next (see [`State::watch_next`]).
#[derive(Debug)]
pub enum WatchNext {
    Event(WatchEvent),
    /// Nothing waiting: wait for the watcher's notify.
    Idle,
    /// The watcher fell behind and was dropped.
    Overflowed,
    /// The watcher is gone (scheduler shutting down).
    Gone,
}

fn event(kind: Type, revision: u64, app: Option<App>) -> WatchEvent {
    WatchEvent {
        r#type: kind as i32,
        revision,
        app,
    }
}

/// What a client that had the state at `since` must be sent to have the
/// current one: every app changed since (ADDED if created since), every
/// app deleted since (none for a listing, `since` 0), in revision order.
fn replay(data: &Data, app: Option<&str>, since: u64) -> Vec<WatchEvent> {
    let wanted = |name: &str| app.is_none_or(|a| a == name);
    let mut events: Vec<WatchEvent> = data
        .apps
        .iter()
        .filter(|(name, r)| r.revision > since && wanted(name))
        .map(|(name, r)| {
            let kind = if r.created_revision > since {
                Type::Added
            } else {
                Type::Modified
            };
            event(kind, r.revision, Some(app_to_wire(name, r, data)))
        })
        .collect();
    events.extend(
        data.tombstones
            .iter()
            .filter(|t| since > 0 && t.revision > since && wanted(&t.name))
            .map(|t| {
                let last = App {
                    name: t.name.clone(),
                    ..App::default()
                };
                event(Type::Deleted, t.revision, Some(last))
            }),
    );
    events.sort_by_key(|e| e.revision);
    events
}

impl State {
    /// Records that `app` changed in the current operation.
    pub(super) fn mark_changed(&mut self, app: &str) {
        if !self.changed.contains(app) {
            self.changed.insert(app.to_string());
        }
    }

    /// Gives every app marked changed its revision (a tombstone for those
    /// that are gone); returns the changes to publish once saved.
    pub(super) fn stage_changes(&mut self) -> Vec<Staged> {
        let mut staged = Vec::with_capacity(self.changed.len());
        for app in std::mem::take(&mut self.changed) {
            let revision = self.store.next_revision();
            let data = self.store.data_mut();
            let pending = match data.apps.get_mut(&app) {
                Some(record) => {
                    record.revision = revision;
                    if record.created_revision == 0 {
                        record.created_revision = revision;
                        Pending::Added
                    } else {
                        Pending::Modified
                    }
                }
                None => {
                    data.bury(&app, revision);
                    let last = self.last_states.remove(&app).unwrap_or_else(|| {
                        Arc::new(App {
                            name: app.clone(),
                            ..App::default()
                        })
                    });
                    Pending::Deleted(last)
                }
            };
            staged.push(Staged {
                app,
                revision,
                pending,
            });
        }
        self.last_states.clear();
        staged
    }

    /// Queues saved changes for the watchers.
    pub(super) fn publish(&mut self, staged: Vec<Staged>) {
        for s in staged {
            self.watchers.push(&s.app, s.revision, &s.pending);
        }
    }

    /// Stages and publishes at once: for changes that are flushed later
    /// (status reports, placement on node events).
    pub(super) fn commit_changes(&mut self) {
        if !self.changed.is_empty() {
            let staged = self.stage_changes();
            self.publish(staged);
        }
    }

    /// Keeps the last state of `app`, about to be deleted, for its
    /// watchers' DELETED event.
    pub(super) fn keep_last_state(&mut self, app: &str) {
        if !self.watchers.wants(app) {
            return;
        }
        let data = self.store.data();
        if let Some(record) = data.apps.get(app) {
            let last = Arc::new(app_to_wire(app, record, data));
            self.last_states.insert(app.to_string(), last);
        }
    }

    /// Starts a watch of `app` (every app if `None`): from the current
    /// state (`since` 0) or from the changes after `since`.
    pub fn watch(&mut self, app: Option<String>, since: u64) -> Result<WatchStart, ClusterError> {
        if self.shutting_down {
            return Err(ClusterError::ShuttingDown);
        }
        let data = self.store.data();
        let initial = if since == 0 {
            let mut events = replay(data, app.as_deref(), 0);
            events.push(event(Type::Synced, data.revision, None));
            events
        } else if since > data.revision {
            return Err(ClusterError::RevisionAhead {
                since,
                current: data.revision,
            });
        } else if !data.can_replay_from(since) {
            return Err(ClusterError::RevisionCompacted {
                since,
                compacted: data.compacted,
            });
        } else {
            replay(data, app.as_deref(), since)
        };
        let (id, notify) = self.watchers.subscribe(app);
        Ok(WatchStart {
            id,
            notify,
            initial,
        })
    }

    /// The next queued change of watcher `id`, built from the current
    /// state.
    pub fn watch_next(&mut self, id: u64) -> WatchNext {
        loop {
            let (app, revision, pending) = match self.watchers.next(id) {
                Next::Change {
                    app,
                    revision,
                    pending,
                } => (app, revision, pending),
                Next::Idle => return WatchNext::Idle,
                Next::Overflowed => return WatchNext::Overflowed,
                Next::Gone => return WatchNext::Gone,
            };
            let data = self.store.data();
            let (kind, wire) = match pending {
                Pending::Deleted(last) => (Type::Deleted, App::clone(&last)),
                change => {
                    // A waiting change is replaced by the app's delete, so
                    // the app exists; skip it should that ever not hold.
                    let Some(record) = data.apps.get(&app) else {
                        continue;
                    };
                    let kind = if change == Pending::Added {
                        Type::Added
                    } else {
                        Type::Modified
                    };
                    (kind, app_to_wire(&app, record, data))
                }
            };
            return WatchNext::Event(event(kind, revision, Some(wire)));
        }
    }

    /// Forgets watcher `id` (its stream ended).
    pub fn unwatch(&mut self, id: u64) {
        self.watchers.unsubscribe(id);
    }

    /// How many watches are open.
    pub fn watch_count(&self) -> usize {
        self.watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::common::ResourceStatus;

    use super::*;
    use crate::store::Store;

    const WEB: &str =
        "kind: Pod\nname: web\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";
    const DB: &str =
        "kind: Pod\nname: db\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";

    fn summary(events: &[WatchEvent]) -> Vec<(Type, u64, String)> {
        events
            .iter()
            .map(|e| {
                let name = e.app.as_ref().map(|a| a.name.clone()).unwrap_or_default();
                (e.r#type(), e.revision, name)
            })
            .collect()
    }

    fn drain(state: &mut State, id: u64) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        while let WatchNext::Event(e) = state.watch_next(id) {
            events.push(e);
        }
        events
    }

    #[test]
    fn every_change_gets_a_revision_and_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let (_s, _rx) = state.register("n1", Duration::from_secs(20)).unwrap();
        state.worker_status("n1", "", ResourceStatus::Running, "{}".into());
        let r0 = state.store().data().revision;

        let web = state.apply(WEB).unwrap();
        // Created and placed in one operation: one revision.
        assert_eq!(web.revision, r0 + 1);
        let id = web.instance_ids[0].clone();
        assert_eq!(state.apply(WEB).unwrap().revision, r0 + 1, "unchanged");
        let start = state.watch(None, 0).unwrap();
        assert_eq!(
            summary(&start.initial),
            [
                (Type::Added, r0 + 1, "web".into()),
                (Type::Synced, r0 + 1, String::new())
            ]
        );

        let report = |state: &mut State, status, metrics: &str| {
            state.instance_status("n1", "", &id, status, metrics.into());
        };
        report(&mut state, ResourceStatus::Creating, "{}");
        // The same status with new figures is no change.
        report(&mut state, ResourceStatus::Creating, r#"{"cpu":1}"#);
        assert_eq!(state.store().data().revision, r0 + 2);
        report(&mut state, ResourceStatus::Running, "{}");
        state.apply(DB).unwrap();
        state.delete("web").unwrap();
        // Terminating until its node reports the pod gone.
        assert_eq!(state.store().data().revision, r0 + 5);
        report(&mut state, ResourceStatus::Terminated, "{}");
        let events = drain(&mut state, start.id);
        // Nothing was read in between: web's status changes, its delete
        // and its end coalesced into the delete, after db's creation.
        assert_eq!(
            summary(&events),
            [
                (Type::Added, r0 + 4, "db".into()),
                (Type::Deleted, r0 + 6, "web".into())
            ]
        );
        let last = events[1].app.as_ref().unwrap();
        assert_eq!(last.status, "TERMINATING", "last state of web");

        // Replay from each point a client may have stopped at.
        let replay_from = |state: &mut State, since| {
            let start = state.watch(None, since).unwrap();
            state.unwatch(start.id);
            summary(&start.initial)
        };
        assert_eq!(
            replay_from(&mut state, r0 + 2),
            [
                (Type::Added, r0 + 4, "db".into()),
                (Type::Deleted, r0 + 6, "web".into())
            ]
        );
        assert_eq!(replay_from(&mut state, r0 + 6), []);
        let listing = state.watch(None, 0).unwrap();
        state.unwatch(listing.id);
        assert_eq!(
            summary(&listing.initial),
            [
                (Type::Added, r0 + 4, "db".into()),
                (Type::Synced, r0 + 6, String::new())
            ],
            "a listing has no tombstones"
        );
        state.apply(WEB).unwrap();
        assert_eq!(
            replay_from(&mut state, r0 + 4),
            [
                (Type::Deleted, r0 + 6, "web".into()),
                (Type::Added, r0 + 7, "web".into())
            ]
        );
        assert!(matches!(
            state.watch(None, r0 + 8),
            Err(ClusterError::RevisionAhead { .. })
        ));
        assert_eq!(state.watch_count(), 1);
        state.unwatch(start.id);
        assert_eq!(state.watch_count(), 0);
    }

    #[test]
    fn a_lost_node_and_placement_are_changes_and_one_app_can_be_watched() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let (s1, _rx1) = state.register("n1", Duration::from_secs(20)).unwrap();
        state.worker_status("n1", "", ResourceStatus::Running, "{}".into());
        let id = state.apply(WEB).unwrap().instance_ids[0].clone();
        state.apply(DB).unwrap();
        let web = state.watch(Some("web".into()), 0).unwrap();
        assert_eq!(web.initial.len(), 2, "web, then SYNCED");
        state.instance_status("n1", "", &id, ResourceStatus::Running, String::new());
        let running = drain(&mut state, web.id);
        assert_eq!(running.len(), 1);

        // The node goes away: both apps' instances are PENDING; the
        // watcher of web hears of web only.
        state.disconnected("n1", s1);
        let events = drain(&mut state, web.id);
        assert_eq!(summary(&events).len(), 1);
        let app = events[0].app.as_ref().unwrap();
        assert_eq!((app.name.as_str(), app.status.as_str()), ("web", "PENDING"));
        assert_eq!(events[0].r#type(), Type::Modified);

        // Another node: web's instance moves there.
        let (_s2, _rx2) = state.register("n2", Duration::from_secs(20)).unwrap();
        state.worker_status("n2", "", ResourceStatus::Running, "{}".into());
        let events = drain(&mut state, web.id);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].app.as_ref().unwrap().instances[0].node, "n2");

        state.shutdown();
        assert!(matches!(state.watch_next(web.id), WatchNext::Gone));
        assert!(matches!(
            state.watch(None, 0),
            Err(ClusterError::ShuttingDown)
        ));
    }
}
