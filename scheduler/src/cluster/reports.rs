//! An instance's status report, stored: its status and metrics, the new
//! events it carries (kept per app, [`crate::events`]), and whether it is
//! a change for the app's watchers.

use proto::common::ResourceStatus;
use proto::status::{AppStatus, display_status};
use tracing::info;

use super::State;

impl State {
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
