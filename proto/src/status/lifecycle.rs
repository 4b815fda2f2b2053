//! A pod's life as kubelet tells it: each container's state reason
//! (waiting, running, terminated) and the pod's recent events, and the
//! STATUS kubectl would print for a pod, derived from them.
//!
//! The RIK wire states (`ResourceStatus`) stay what RIK's scheduler
//! understands; the reasons and the events travel in the metrics JSON
//! (`containers[].reason`, `history`), and readers derive the display
//! status with [`display_status`].

use serde::{Deserialize, Serialize};

use super::AppStatus;
use crate::common::ResourceStatus;

/// Waiting: a start is under way (network, image pull, process).
pub const CONTAINER_CREATING: &str = "ContainerCreating";
/// Waiting: the last start failed (missing executable, refused task).
pub const RUN_CONTAINER_ERROR: &str = "RunContainerError";
/// Waiting: the image could not be pulled.
pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
/// Waiting: the image pull is retried after a back-off.
pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
/// Waiting: the container is restarted after a back-off.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
/// Terminated: exit status 0.
pub const COMPLETED: &str = "Completed";
/// Terminated: a non-zero exit status or a signal.
pub const ERROR: &str = "Error";
/// Terminated: the OOM killer ended it.
pub const OOM_KILLED: &str = "OOMKilled";
/// The pod is being deleted.
pub const TERMINATING: &str = "Terminating";
/// The pod runs.
pub const RUNNING: &str = "Running";

/// Pod STATUS values from the most telling to the least: the first one
/// found among a pod's containers (or the pod itself) is shown.
const RANKED: &[&str] = &[
    CRASH_LOOP_BACK_OFF,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACK_OFF,
    RUN_CONTAINER_ERROR,
    OOM_KILLED,
    ERROR,
    COMPLETED,
    TERMINATING,
    CONTAINER_CREATING,
    RUNNING,
];

/// The STATUS of a pod as kubectl prints it: the most telling of its
/// containers' reasons ([`RANKED`]), `Terminating` while it is deleted,
/// `Running` while one runs; without container reasons (a report of RIK's
/// riklet, an instance not placed yet) a name derived from `state`.
/// `deleting` is the scheduler's word that the app is being deleted.
pub fn display_status(state: ResourceStatus, status: &AppStatus, deleting: bool) -> String {
    let mut found: Vec<&str> = status
        .containers
        .iter()
        .filter_map(|c| c.reason.as_deref())
        .collect();
    if status
        .containers
        .iter()
        .any(|c| c.state == super::ContainerState::Running)
    {
        found.push(RUNNING);
    }
    if deleting || state == ResourceStatus::Destroying {
        found.push(TERMINATING);
    }
    if let Some(best) = RANKED.iter().find(|r| found.contains(r)) {
        return (*best).to_string();
    }
    // An unknown reason of a newer riklet is still worth showing.
    if let Some(other) = found.first() {
        return (*other).to_string();
    }
    match state {
        ResourceStatus::Pending => "Pending",
        ResourceStatus::Creating => CONTAINER_CREATING,
        ResourceStatus::Running => RUNNING,
        ResourceStatus::Failed => ERROR,
        ResourceStatus::Terminated => COMPLETED,
        ResourceStatus::Destroying => TERMINATING,
        ResourceStatus::Unknown => "Unknown",
    }
    .to_string()
}

/// The most telling of several pods' STATUS values (an app's row).
pub fn most_telling<'a>(statuses: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let statuses: Vec<&str> = statuses.into_iter().collect();
    RANKED
        .iter()
        .find_map(|r| statuses.iter().find(|s| *s == r).copied())
        .or_else(|| statuses.first().copied())
}

/// Whether an event tells of something normal or of a problem (kubectl's
/// TYPE column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[default]
    Normal,
    Warning,
}

/// One event of a pod: what happened, when, to which container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LifecycleEvent {
    /// Numbers the pod's events from 1, in order: a reader that saw event
    /// `seq` of a pod skips it when a later report repeats it.
    pub seq: u64,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// `Created`, `Pulling`, `Pulled`, `Started`, `Failed`, `Exited`,
    /// `OOMKilled`, `BackOff`, `Killing`, `Killed`, `Deleted`.
    pub reason: String,
    /// The container it happened to (`null` for the pod).
    pub container: Option<String>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::super::{ContainerState, ContainerStatus};
    use super::*;

    fn container(state: ContainerState, reason: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            state,
            reason: reason.map(String::from),
            message: None,
            image: None,
            container_id: None,
            image_digest: None,
            pid: None,
            started_at: None,
            restart_count: 0,
            last_exit: None,
            cgroup: String::new(),
            usage: None,
        }
    }

    fn pod(containers: Vec<ContainerStatus>) -> AppStatus {
        AppStatus {
            containers,
            ..AppStatus::default()
        }
    }

    #[test]
    fn the_most_telling_reason_wins() {
        let running = container(ContainerState::Running, None);
        let looping = container(ContainerState::Waiting, Some(CRASH_LOOP_BACK_OFF));
        let state = ResourceStatus::Creating;
        assert_eq!(
            display_status(state, &pod(vec![running.clone(), looping]), false),
            CRASH_LOOP_BACK_OFF
        );
        assert_eq!(
            display_status(ResourceStatus::Running, &pod(vec![running.clone()]), false),
            RUNNING
        );
        // Deleting a running pod: Terminating; a crash loop still shows.
        assert_eq!(
            display_status(ResourceStatus::Running, &pod(vec![running]), true),
            TERMINATING
        );
        let done = container(ContainerState::Terminated, Some(COMPLETED));
        assert_eq!(
            display_status(ResourceStatus::Terminated, &pod(vec![done]), false),
            COMPLETED
        );
        let oom = container(ContainerState::Terminated, Some(OOM_KILLED));
        let error = container(ContainerState::Terminated, Some(ERROR));
        assert_eq!(
            display_status(ResourceStatus::Failed, &pod(vec![error, oom]), false),
            OOM_KILLED
        );
    }

    #[test]
    fn without_reasons_the_state_speaks() {
        let empty = AppStatus::default();
        assert_eq!(
            display_status(ResourceStatus::Pending, &empty, false),
            "Pending"
        );
        assert_eq!(
            display_status(ResourceStatus::Creating, &empty, false),
            CONTAINER_CREATING
        );
        assert_eq!(
            display_status(ResourceStatus::Destroying, &empty, false),
            TERMINATING
        );
        let newer = pod(vec![container(ContainerState::Waiting, Some("Frobbing"))]);
        assert_eq!(
            display_status(ResourceStatus::Creating, &newer, false),
            "Frobbing"
        );
        assert_eq!(
            most_telling(["Running", "ErrImagePull", "Completed"]),
            Some("ErrImagePull")
        );
        assert_eq!(most_telling([]), None);
    }

    #[test]
    fn events_read_leniently() {
        let event: LifecycleEvent = serde_json::from_str(
            r#"{"seq":3,"at":1700000000123,"type":"Warning","reason":"BackOff","container":"c","message":"m","x":1}"#,
        )
        .unwrap();
        assert_eq!(event.kind, EventType::Warning);
        assert_eq!(event.container.as_deref(), Some("c"));
        assert_eq!(
            super::super::to_json(&event),
            r#"{"at":1700000000123,"container":"c","message":"m","reason":"BackOff","seq":3,"type":"Warning"}"#
        );
    }
}
