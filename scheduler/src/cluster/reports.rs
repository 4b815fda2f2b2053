//! An instance's status report, stored: its status and metrics, the new
//! events it carries (kept per app, [`crate::events`]), and whether it is
//! a change for the app's watchers.

use proto::common::ResourceStatus;
use proto::status::{AppStatus, display_status};
use tracing::{debug, info};

use super::{State, destroy_msg};

impl State {
    /// A report from `hostname` of an instance that is not assigned to it:
    /// moved to another node while this one was away, or of an app deleted
    /// meanwhile. The node is told to destroy it, also when it reports it
    /// TERMINATED: a pod that completed (or failed) stays on its node, with
    /// its address and cgroups, until it is destroyed. The TERMINATED that
    /// answers such a DESTROY ends the exchange (a DESTROY for a pod the
    /// node no longer has is answered TERMINATED: without this, the two
    /// would ping-pong).
    pub(super) fn report_elsewhere(
        &mut self,
        hostname: &str,
        instance_id: &str,
        status: ResourceStatus,
    ) {
        let known = self.store.data().instances.get(instance_id);
        let assigned_to = known.and_then(|i| i.node.clone());
        let definition = known
            .and_then(|i| self.store.data().apps.get(&i.app))
            .map(|a| a.manifest.to_definition())
            .unwrap_or_default();
        let Some(node) = self.nodes.connected_mut(hostname) else {
            return;
        };
        let answered = node.destroys_sent.remove(instance_id);
        if status == ResourceStatus::Terminated && answered {
            debug!(node = %hostname, instance = %instance_id, "stale instance destroyed");
            return;
        }
        // A DESTROYING report gets the DESTROY again: the riklet ignores
        // it for a pod already being destroyed.
        node.destroys_sent.insert(instance_id.to_string());
        info!(node = %hostname, instance = %instance_id, status = proto::status::name(status),
            assigned_to = ?assigned_to,
            "node reports an instance that is not assigned to it, destroying it");
        self.deliver(vec![(
            hostname.to_string(),
            destroy_msg(instance_id, definition),
        )]);
    }

    /// Stores a report of an instance assigned to `hostname`. A change of
    /// its status, of the STATUS `rik` shows for it (`RunContainerError`
    /// then `CrashLoopBackOff`) or a new event is a change of the app; a
    /// TERMINATED instance of an app being deleted is gone.
    pub(super) fn store_report(
        &mut self,
        hostname: &str,
        app: &str,
        instance_id: &str,
        status: ResourceStatus,
        metrics: String,
        now: i64,
    ) {
        let report = AppStatus::from_json(&metrics);
        let deleting = self.deleting_definition(app).is_some();
        let shown = display_status(status, &report, deleting);
        let new_events = self
            .store
            .data_mut_volatile()
            .events
            .entry(app.to_string())
            .or_default()
            .add(instance_id, hostname, report.history);
        let Some(previous) = self.store.data().instances.get(instance_id) else {
            return;
        };
        let status_changed = previous.status != status;
        let changed = status_changed || previous.shown != shown || new_events;
        let from = previous.status;
        if deleting && status == ResourceStatus::Terminated {
            info!(node = %hostname, app = %app, instance = %instance_id, "instance of a deleted app gone");
            let data = self.store.data_mut();
            data.instances.remove(instance_id);
            if let Some(events) = data.events.get_mut(app) {
                events.forget_instance(instance_id);
            }
            self.mark_changed(app);
            self.finish_delete_if_done(app);
            self.commit_changes();
            return;
        }
        let data = if status_changed {
            self.store.data_mut()
        } else {
            self.store.data_mut_volatile()
        };
        let inst = data
            .instances
            .get_mut(instance_id)
            .expect("instance exists");
        inst.status = status;
        inst.metrics = metrics;
        inst.updated_at = now;
        inst.shown = shown;
        if status_changed {
            info!(node = %hostname, app = %app, instance = %instance_id,
                from = proto::status::name(from), to = proto::status::name(status),
                "instance status");
        }
        if changed {
            self.mark_changed(app);
            self.commit_changes();
        }
    }
}
