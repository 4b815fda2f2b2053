//! Deleting a pod: stop its containers, remove what it had on the node,
//! forget it; an incomplete clean-up keeps the record and is tried again.

use std::time::Duration;

use proto::common::ResourceStatus;
use proto::status::{EventType, ShortStatus};
use tracing::{info, warn};

use super::host::{PodHost, StopOutcome, StopTarget};
use super::{Agent, Event, InstanceReport};
use crate::state::Phase;

/// Delay before a delete whose clean-up failed is tried again.
pub(super) const STOP_RETRY: Duration = Duration::from_secs(5);

impl<H: PodHost> Agent<H> {
    pub(super) fn destroy(&mut self, instance_id: &str) {
        let Some(pod) = self.pods.get_mut(instance_id) else {
            // RIK's scheduler may destroy what we do not run: that is done.
            self.report(InstanceReport {
                instance_id: instance_id.to_string(),
                status: ResourceStatus::Terminated,
                metrics: ShortStatus::not_running(instance_id).to_json(),
            });
            return;
        };
        if pod.phase == Phase::Destroying {
            return;
        }
        info!(pod = instance_id, "destroying pod");
        pod.phase = Phase::Destroying;
        pod.reason = None;
        let running: Vec<String> = pod
            .containers
            .iter()
            .filter(|c| c.run.is_some())
            .map(|c| c.name.clone())
            .collect();
        let grace = self.settings.stop_grace_period.as_secs();
        for name in running {
            self.record(
                instance_id,
                Some(&name),
                EventType::Normal,
                "Killing",
                format!("Stopping container {name} (grace period {grace}s)"),
            );
        }
        self.commit(instance_id);
        // A start in flight reports back first (`started` then stops); one
        // still waiting for its slot does not start at all.
        self.cancel_jobs(instance_id);
        if !self.has_jobs(instance_id) {
            self.spawn_stop(instance_id);
        }
    }

    /// Stops every container in the background (bare processes through
    /// their cgroup, image containers through containerd, waiting for it
    /// if it is down), removes the containerd containers and the pod's
    /// network, then sends `Stopped`.
    pub(super) fn spawn_stop(&self, instance_id: &str) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let containers = pod
            .containers
            .iter()
            .map(|c| StopTarget {
                name: c.name.clone(),
                image: pod
                    .manifest
                    .spec
                    .containers
                    .iter()
                    .any(|s| s.name == c.name && s.image.is_some()),
                run: c.run.clone(),
            })
            .collect();
        let (host, tx) = (self.host.clone(), self.tx.clone());
        let instance_id = instance_id.to_string();
        tokio::spawn(async move {
            let stop = host.stop(&instance_id, containers).await;
            let _ = tx.send(Event::Stopped { instance_id, stop });
        });
    }

    /// Final clean-up of a destroyed pod: cgroups, run and log directories,
    /// runtime memory.
    pub(super) fn stopped(&mut self, instance_id: &str, stop: StopOutcome) {
        let grace = self.settings.stop_grace_period.as_secs();
        for name in &stop.killed {
            self.record(
                instance_id,
                Some(name),
                EventType::Warning,
                "Killed",
                format!(
                    "Container {name} did not stop within the grace period of {grace}s: killed"
                ),
            );
        }
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let clean = stop.clean && self.host.release(pod);
        if !clean {
            // Keep the record (a riklet restart resumes the delete too).
            warn!(pod = instance_id, retry_in = ?STOP_RETRY, "delete incomplete; retrying");
            let tx = self.tx.clone();
            let instance_id = instance_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(STOP_RETRY).await;
                let _ = tx.send(Event::RetryStop { instance_id });
            });
            return;
        }
        info!(pod = instance_id, "pod destroyed");
        let node = self.settings.node.clone();
        self.record(
            instance_id,
            None,
            EventType::Normal,
            "Deleted",
            format!("Pod deleted from node {node}"),
        );
        let history = self.history(instance_id);
        let report = InstanceReport {
            instance_id: instance_id.to_string(),
            status: ResourceStatus::Terminated,
            metrics: ShortStatus::destroyed(instance_id, &node, history).to_json(),
        };
        // The record is removed before TERMINATED is reported.
        self.forget(instance_id, report);
    }
}
