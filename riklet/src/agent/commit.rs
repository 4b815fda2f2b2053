//! Group commit: the agent handles every event already waiting (up to
//! [`BATCH`]), then saves each pod record they changed in one round of
//! fsyncs ([`crate::state::Store::apply`]), and only then sends the
//! reports. A report never precedes the record it tells of, and a burst of
//! a hundred pods costs a few rounds of fsyncs instead of two each.
//!
//! Work the events started (a container start, a stop) runs meanwhile: a
//! riklet killed before the save leaves a start without a record, whose
//! cgroup, run directory and network the recovery removes as orphans, and
//! the scheduler's CREATE starts it again.

use std::collections::{HashMap, HashSet};

use tokio::sync::oneshot;
use tracing::{debug, error};

use proto::status::AppStatus;

use super::host::PodHost;
use super::{Agent, InstanceReport};
use crate::clock::now_ms;
use crate::state::{Change, Phase, Store};

/// Most events handled before their records are saved: bounds how long a
/// report waits while events keep coming.
pub(super) const BATCH: usize = 256;

/// What the events since the last save changed.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Pods whose record changed, in the order of their first change: saved
    /// if the pod is known, removed otherwise.
    records: Vec<String>,
    changed: HashSet<String>,
    /// Reports to send once the records are saved, in order.
    reports: Vec<Outgoing>,
    /// Queries answered after the save too, so that what they tell is on
    /// disk.
    queries: Vec<Query>,
}

/// A query about every pod, answered after the save.
#[derive(Debug)]
pub(super) enum Query {
    /// The scheduler client's full state.
    Reports(oneshot::Sender<Vec<InstanceReport>>),
    /// `riklet pods`.
    Pods(oneshot::Sender<Vec<AppStatus>>),
}

/// One report to send after the save.
#[derive(Debug)]
enum Outgoing {
    /// The pod's status when its record was saved (one however many times
    /// it changed).
    Pod(String),
    /// A report with no record behind it (a refusal, a pod that is gone).
    Fixed(InstanceReport),
}

impl<H: PodHost> Agent<H> {
    /// Marks a pod record changed: it is saved, then reported, at the next
    /// [`Self::flush`].
    pub(super) fn commit(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get_mut(instance_id) else {
            return;
        };
        pod.updated_at = now_ms();
        self.touch(instance_id);
        self.pending
            .reports
            .push(Outgoing::Pod(instance_id.to_string()));
    }

    /// Forgets a pod: its record is removed at the next flush, then
    /// `report` is sent.
    pub(super) fn forget(&mut self, instance_id: &str, report: InstanceReport) {
        self.pods.remove(instance_id);
        self.events.remove(instance_id);
        self.touch(instance_id);
        self.report(report);
    }

    /// Reports a pod's current status after the next save (a CREATE of a
    /// pod the agent has: the scheduler lost track).
    pub(super) fn report_pod(&mut self, instance_id: &str) {
        self.pending
            .reports
            .push(Outgoing::Pod(instance_id.to_string()));
    }

    /// A report sent after the next save, in order with the others.
    pub(super) fn report(&mut self, report: InstanceReport) {
        self.pending.reports.push(Outgoing::Fixed(report));
    }

    /// Answers a query after the next save: what it tells is then on
    /// disk (a pod `riklet pods` no longer lists has no record either).
    pub(super) fn query(&mut self, query: Query) {
        self.pending.queries.push(query);
    }

    /// The crash points of a save, by what the saved records are: saved,
    /// not reported yet.
    fn crash_points_after_save(&self, records: &[String]) {
        for id in records {
            crate::crash::point(match self.pods.get(id).map(|p| p.phase) {
                None => "delete.after_state_remove",
                Some(Phase::Creating) => "create.after_state_commit",
                Some(Phase::Destroying) => "delete.after_state_commit",
                Some(Phase::Running) => "start.after_run_commit",
                Some(_) => continue,
            });
        }
    }

    fn touch(&mut self, instance_id: &str) {
        if self.pending.changed.insert(instance_id.to_string()) {
            self.pending.records.push(instance_id.to_string());
        }
    }

    /// Saves the changed records, then sends the reports and answers the
    /// queries; republishes the endpoints if a pod changed.
    pub(super) async fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if !pending.records.is_empty() {
            let changes: Vec<Change> = pending
                .records
                .iter()
                .map(|id| Change {
                    instance_id: id.clone(),
                    record: self.pods.get(id).map(Store::encode),
                })
                .collect();
            let count = changes.len();
            if changes.iter().any(|c| c.record.is_none()) {
                crate::crash::point("delete.before_state_remove");
            }
            let store = self.store.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || store.apply(changes)).await {
                Ok(errors) => {
                    for e in errors {
                        error!(error = %crate::error_chain(&e), "cannot save pod record");
                    }
                }
                Err(e) => error!(error = %e, "the pod record writer died"),
            }
            debug!(
                records = count,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "pod records saved"
            );
            if cfg!(feature = "crash-points") {
                self.crash_points_after_save(&pending.records);
            }
        }
        // A pod is reported once per flush, as it was saved, at the place
        // of its last change (after a `Fixed` report of an earlier life).
        let last: HashMap<&str, usize> = pending
            .reports
            .iter()
            .enumerate()
            .filter_map(|(i, out)| match out {
                Outgoing::Pod(id) => Some((id.as_str(), i)),
                Outgoing::Fixed(_) => None,
            })
            .collect();
        for (i, out) in pending.reports.iter().enumerate() {
            let report = match out {
                Outgoing::Pod(id) if last.get(id.as_str()) != Some(&i) => continue,
                Outgoing::Pod(id) => match self.pods.get(id) {
                    Some(pod) => self.report_of(pod),
                    None => continue, // forgotten since: its own report follows
                },
                Outgoing::Fixed(report) => report.clone(),
            };
            let _ = self.reports.send(report);
        }
        if !pending.queries.is_empty() {
            let ids = self.sorted_ids();
            for query in pending.queries {
                // An asker that is gone is not an error.
                match query {
                    Query::Reports(tx) => {
                        let all = ids.iter().filter_map(|id| self.pods.get(id));
                        let all = all.map(|pod| self.report_of(pod));
                        let _ = tx.send(all.collect());
                    }
                    Query::Pods(tx) => {
                        let all = ids.iter().filter_map(|id| self.pods.get(id));
                        let all = all.map(|pod| self.view(pod));
                        let _ = tx.send(all.collect());
                    }
                }
            }
        }
        if !pending.records.is_empty() {
            self.publish_endpoints();
        }
    }
}
