//! A pod's recent events (created, pulling, pulled, started, exited,
//! back-off, OOM killed, killing, killed, deleted), as `kubectl describe`
//! lists them, and the moment a back-off becomes visible.
//!
//! The events live in the agent's memory only, at most [`MAX_POD_EVENTS`]
//! per pod: they are reported with the pod's status (`history`), lost on
//! a riklet crash, and gone with the pod (its last report carries them).

use std::collections::VecDeque;
use std::time::Duration;

use proto::status::{EventType, LifecycleEvent};
use tracing::debug;

use super::host::PodHost;
use super::phase::ERR_IMAGE_PULL;
use super::{Agent, Event};
use crate::clock::now_ms;
use crate::state::ExitRecord;

/// Most events kept per pod: a crash loop of a thousand restarts keeps
/// the last ones.
pub(super) const MAX_POD_EVENTS: usize = 50;

/// How long a container that ended (or failed to start) shows how it ended
/// before it shows its back-off: kubelet's next sync, about a second later.
const BACKOFF_NOTICE: Duration = Duration::from_secs(1);

/// The last events of one pod, numbered from 1.
#[derive(Debug, Default)]
pub(super) struct EventLog {
    last_seq: u64,
    events: VecDeque<LifecycleEvent>,
}

impl EventLog {
    fn push(&mut self, event: LifecycleEvent) {
        self.last_seq += 1;
        self.events.push_back(LifecycleEvent {
            seq: self.last_seq,
            ..event
        });
        while self.events.len() > MAX_POD_EVENTS {
            self.events.pop_front();
        }
    }

    /// The events, oldest first.
    pub(super) fn to_vec(&self) -> Vec<LifecycleEvent> {
        self.events.iter().cloned().collect()
    }
}

impl<H: PodHost> Agent<H> {
    /// Records an event of a pod the agent has (reported with its next
    /// report).
    pub(super) fn record(
        &mut self,
        instance_id: &str,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        if !self.pods.contains_key(instance_id) {
            return;
        }
        debug!(pod = instance_id, container, reason, message = %message, "pod event");
        self.events
            .entry(instance_id.to_string())
            .or_default()
            .push(LifecycleEvent {
                seq: 0,
                at: now_ms(),
                kind,
                reason: reason.to_string(),
                container: container.map(String::from),
                message,
            });
    }

    /// `Created`: the pod was accepted on this node.
    pub(super) fn record_created(&mut self, instance_id: &str) {
        let message = format!("Pod created on node {}", self.settings.node);
        self.record(instance_id, None, EventType::Normal, "Created", message);
    }

    /// `Started`: a run of a container began.
    pub(super) fn record_started(&mut self, instance_id: &str, name: &str, pid: i32) {
        let message = format!("Started container {name} (pid {pid})");
        self.record(
            instance_id,
            Some(name),
            EventType::Normal,
            "Started",
            message,
        );
    }

    /// `Failed`: a container could not be started (or its image pulled).
    pub(super) fn record_failed_start(&mut self, instance_id: &str, name: &str, exit: &ExitRecord) {
        let message = format!("Error: {}", exit.describe());
        self.record(
            instance_id,
            Some(name),
            EventType::Warning,
            "Failed",
            message,
        );
    }

    /// An event a start task told of (pulling, pulled): recorded and
    /// reported, the record unchanged.
    pub(super) fn noted(
        &mut self,
        instance_id: &str,
        container: &str,
        reason: &str,
        message: String,
    ) {
        self.record(
            instance_id,
            Some(container),
            EventType::Normal,
            reason,
            message,
        );
        if self.pods.contains_key(instance_id) {
            self.report_pod(instance_id);
        }
    }

    /// The pod's events, oldest first.
    pub(super) fn history(&self, instance_id: &str) -> Vec<LifecycleEvent> {
        self.events
            .get(instance_id)
            .map(EventLog::to_vec)
            .unwrap_or_default()
    }

    /// Makes a back-off visible shortly after it began (before the
    /// restart, which is at `restart_at`, Unix ms).
    pub(super) fn schedule_backoff_notice(&self, instance_id: &str, name: &str, delay: Duration) {
        let Some(restart_at) = self
            .pods
            .get(instance_id)
            .and_then(|p| p.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.restart_at)
        else {
            return;
        };
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        let notice = BACKOFF_NOTICE.min(delay / 2);
        tokio::spawn(async move {
            tokio::time::sleep(notice).await;
            let _ = tx.send(Event::BackOffNoticed {
                instance_id,
                container,
                restart_at,
            });
        });
    }

    /// The container now shows `CrashLoopBackOff` (`ImagePullBackOff`),
    /// unless it was restarted or deleted meanwhile.
    pub(super) fn backoff_noticed(&mut self, instance_id: &str, name: &str, restart_at: i64) {
        let Some(pod) = self.pods.get(instance_id) else {
            return;
        };
        let image = pod
            .manifest
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone());
        if pod.phase == super::Phase::Destroying {
            return;
        }
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        if c.run.is_some() || c.starting || c.backing_off || c.restart_at != Some(restart_at) {
            return;
        }
        c.backing_off = true;
        let pull = c
            .last_exit
            .as_ref()
            .is_some_and(|e| e.reason == ERR_IMAGE_PULL);
        let until = chrono::DateTime::from_timestamp_millis(restart_at)
            .map(|t| t.format("%H:%M:%S UTC").to_string())
            .unwrap_or_default();
        let message = match (pull, image) {
            (true, Some(image)) => format!("Back-off pulling image \"{image}\" until {until}"),
            _ => format!("Back-off restarting failed container {name} until {until}"),
        };
        self.record(
            instance_id,
            Some(name),
            EventType::Warning,
            "BackOff",
            message,
        );
        self.commit(instance_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_events_numbered() {
        let mut log = EventLog::default();
        for i in 0..(MAX_POD_EVENTS + 7) {
            log.push(LifecycleEvent {
                reason: format!("e{i}"),
                ..LifecycleEvent::default()
            });
        }
        let events = log.to_vec();
        assert_eq!(events.len(), MAX_POD_EVENTS);
        assert_eq!(events[0].seq, 8);
        assert_eq!(events[0].reason, "e7");
        assert_eq!(events.last().unwrap().seq, (MAX_POD_EVENTS + 7) as u64);
    }
}
