//! The watchers of `rik.v1.Rik/Watch` and what each still has to be sent.
//!
//! Events are not built when a change is made but when the watcher's stream
//! is ready for the next one: each watcher keeps, per app, only the latest
//! pending change (its revision and whether it is an addition, a change or
//! a delete), ordered by revision. A burst of status reports for one app
//! (500 replicas starting) then costs one event per read, not one copy of
//! the whole app per report, and a slow client cannot make the scheduler
//! queue more than one entry per app. The stream still sees revisions in
//! increasing order and ends in the current state, as a level-based watch
//! must.
//!
//! A watcher that has more than [`MAX_PENDING`] apps waiting is dropped
//! (its stream ends with `RESOURCE_EXHAUSTED` and the client resumes from
//! the last revision it read).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proto::rik::v1::App;
use tokio::sync::Notify;

/// Apps with a change waiting, per watcher, before it is dropped.
pub const MAX_PENDING: usize = 10_000;

/// A change waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// An app the watcher has not been sent yet.
    Added,
    /// An app it has been sent, changed.
    Modified,
    /// The app is gone; its last state.
    Deleted(Arc<App>),
}

/// What a watcher gets next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// The change of `app` at `revision`, the lowest waiting.
    Change {
        app: String,
        revision: u64,
        pending: Pending,
    },
    /// Nothing yet: wait for the watcher's [`Notify`].
    Idle,
    /// It fell behind and was dropped.
    Overflowed,
    /// No such watcher (already removed).
    Gone,
}

#[derive(Debug)]
struct Watcher {
    /// Only this app; `None` for every app.
    app: Option<String>,
    /// Waiting changes by revision.
    pending: BTreeMap<u64, (String, Pending)>,
    /// The revision of each app's waiting change.
    revision_of: HashMap<String, u64>,
    notify: Arc<Notify>,
    overflowed: bool,
}

impl Watcher {
    fn wants(&self, app: &str) -> bool {
        self.app.as_deref().is_none_or(|a| a == app)
    }

    fn push(&mut self, app: &str, revision: u64, change: Pending) {
        if self.overflowed {
            return;
        }
        let change = match self.revision_of.remove(app) {
            Some(old) => match (self.pending.remove(&old), change) {
                // Not sent yet: still new to the client.
                (Some((_, Pending::Added)), Pending::Modified) => Pending::Added,
                (_, change) => change,
            },
            None => change,
        };
        if self.pending.len() >= MAX_PENDING {
            self.overflowed = true;
            self.pending.clear();
            self.revision_of.clear();
        } else {
            self.pending.insert(revision, (app.to_string(), change));
            self.revision_of.insert(app.to_string(), revision);
        }
        self.notify.notify_one();
    }
}

/// Every open watch.
#[derive(Debug, Default)]
pub struct Watchers {
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
}

impl Watchers {
    /// A new watcher of `app` (every app if `None`); returns its id and the
    /// [`Notify`] woken when it has something to read.
    pub fn subscribe(&mut self, app: Option<String>) -> (u64, Arc<Notify>) {
        self.next_id += 1;
        let notify = Arc::new(Notify::new());
        self.watchers.insert(
            self.next_id,
            Watcher {
                app,
                pending: BTreeMap::new(),
                revision_of: HashMap::new(),
                notify: Arc::clone(&notify),
                overflowed: false,
            },
        );
        (self.next_id, notify)
    }

    /// Forgets a watcher (its stream is gone).
    pub fn unsubscribe(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// How many watchers are open.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// Whether no watcher is open.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Whether a watcher would be sent a change of `app`.
    pub fn wants(&self, app: &str) -> bool {
        self.watchers.values().any(|w| w.wants(app))
    }

    /// Queues the change of `app` at `revision` for every watcher of it.
    pub fn push(&mut self, app: &str, revision: u64, change: &Pending) {
        for w in self.watchers.values_mut().filter(|w| w.wants(app)) {
            w.push(app, revision, change.clone());
        }
    }

    /// Takes the lowest waiting change of watcher `id`.
    pub fn next(&mut self, id: u64) -> Next {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Next::Gone;
        };
        if w.overflowed {
            return Next::Overflowed;
        }
        match w.pending.pop_first() {
            Some((revision, (app, pending))) => {
                w.revision_of.remove(&app);
                Next::Change {
                    app,
                    revision,
                    pending,
                }
            }
            None => Next::Idle,
        }
    }

    /// Ends every watch at shutdown: the streams find their watcher gone.
    pub fn close_all(&mut self) {
        for (_, w) in self.watchers.drain() {
            w.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(app: &str, revision: u64, pending: Pending) -> Next {
        Next::Change {
            app: app.into(),
            revision,
            pending,
        }
    }

    #[test]
    fn changes_coalesce_per_app_in_revision_order() {
        let mut w = Watchers::default();
        let (all, _) = w.subscribe(None);
        let (web, _) = w.subscribe(Some("web".into()));
        w.push("web", 3, &Pending::Added);
        w.push("db", 4, &Pending::Modified);
        w.push("web", 5, &Pending::Modified);
        assert!(w.wants("db") && w.wants("web"));
        // "web" moved behind "db" and is still new to the watchers.
        assert_eq!(w.next(all), change("db", 4, Pending::Modified));
        assert_eq!(w.next(all), change("web", 5, Pending::Added));
        assert_eq!(w.next(all), Next::Idle);
        assert_eq!(w.next(web), change("web", 5, Pending::Added));
        assert_eq!(w.next(web), Next::Idle);

        let last = Arc::new(App {
            name: "web".into(),
            ..App::default()
        });
        w.push("web", 6, &Pending::Modified);
        w.push("web", 7, &Pending::Deleted(Arc::clone(&last)));
        assert_eq!(w.next(web), change("web", 7, Pending::Deleted(last)));
        // Re-created before the watcher read the delete: one addition.
        w.push("web", 8, &Pending::Added);
        assert_eq!(w.next(all), change("web", 8, Pending::Added));

        w.unsubscribe(web);
        assert_eq!(w.next(web), Next::Gone);
        assert_eq!(w.len(), 1);
        w.close_all();
        assert!(w.is_empty());
        assert_eq!(w.next(all), Next::Gone);
    }

    #[test]
    fn a_watcher_that_falls_behind_is_dropped() {
        let mut w = Watchers::default();
        let (slow, notify) = w.subscribe(None);
        for i in 0..MAX_PENDING as u64 {
            w.push(&format!("app-{i}"), i + 1, &Pending::Modified);
        }
        // The same apps again: coalesced, still within the bound.
        w.push("app-0", 1_000_000, &Pending::Modified);
        assert!(matches!(w.next(slow), Next::Change { revision: 2, .. }));
        w.push("one-more", 1_000_001, &Pending::Modified);
        w.push("and-another", 1_000_002, &Pending::Modified);
        assert_eq!(w.next(slow), Next::Overflowed);
        assert_eq!(w.next(slow), Next::Overflowed);
        // A permit is waiting for the stream.
        assert!(
            futures::FutureExt::now_or_never(notify.notified()).is_some(),
            "the stream is woken"
        );
    }
}
