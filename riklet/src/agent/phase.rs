//! The phase of a pod, derived from its containers the way kubelet does,
//! and the reasons for which a container never ran (it is then retried
//! whatever its restart policy).

use crate::state::{ContainerRecord, Phase};

/// Exit reason: the image could not be pulled or unpacked (kubelet's
/// waiting reason too).
pub use proto::status::lifecycle::ERR_IMAGE_PULL;
/// Exit reason: the pod could not be attached to the pod network.
pub const NETWORK_ERROR: &str = "NetworkError";
/// Exit reason: containerd could not be reached.
pub const CONTAINERD_UNAVAILABLE: &str = "ContainerdUnavailable";

/// Whether an exit reason says the container could not be set up (it never
/// ran): such a container is retried whatever the restart policy.
pub fn is_setup_failure(reason: &str) -> bool {
    matches!(
        reason,
        ERR_IMAGE_PULL | NETWORK_ERROR | CONTAINERD_UNAVAILABLE
    )
}

/// The phase of a pod from its containers (kubelet's rules, plus setup
/// failures): a container that cannot be set up (image pull, pod network)
/// → `Failed` with that reason, retried; waiting for a restart →
/// `Creating` (CrashLoopBackOff, or waiting for containerd); being started
/// or never started → `Creating`; some running and none failed for good →
/// `Running` (a sidecar that completed does not fail the pod); all ended
/// successfully → `Completed`; one ended in error with no restart coming
/// → `Failed`, with that container's reason.
pub fn pod_phase(containers: &[ContainerRecord]) -> (Phase, Option<String>) {
    let waiting = |c: &&ContainerRecord| c.run.is_none() && c.restart_at.is_some() && !c.starting;
    let ended = |c: &&ContainerRecord| c.run.is_none() && c.restart_at.is_none() && !c.starting;
    let last_reason = |c: &ContainerRecord| {
        c.last_exit
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default()
    };
    let why = |c: &ContainerRecord| {
        c.last_exit
            .as_ref()
            .map(|e| e.describe())
            .unwrap_or_default()
    };
    if let Some(c) = containers
        .iter()
        .filter(waiting)
        .find(|c| matches!(last_reason(c).as_str(), ERR_IMAGE_PULL | NETWORK_ERROR))
    {
        return (
            Phase::Failed,
            Some(format!(
                "container {}: {}: {}; retrying with back-off",
                c.name,
                last_reason(c),
                why(c)
            )),
        );
    }
    if let Some(c) = containers.iter().find(waiting) {
        let reason = if last_reason(c) == CONTAINERD_UNAVAILABLE {
            format!("container {}: waiting for containerd: {}", c.name, why(c))
        } else {
            format!("CrashLoopBackOff: container {}: {}", c.name, why(c))
        };
        return (Phase::Creating, Some(reason));
    }
    let failed = containers
        .iter()
        .filter(ended)
        .find(|c| c.last_exit.as_ref().is_some_and(|e| !e.success()));
    if let Some(c) = failed {
        return (
            Phase::Failed,
            Some(format!("container {}: {}", c.name, why(c))),
        );
    }
    let running = containers.iter().filter(|c| c.run.is_some()).count();
    let not_yet = containers
        .iter()
        .any(|c| c.starting || (c.run.is_none() && c.last_exit.is_none()));
    if not_yet {
        (Phase::Creating, None)
    } else if running > 0 {
        (Phase::Running, None)
    } else {
        (Phase::Completed, Some("Completed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ExitRecord, ProcId, RunRecord};

    fn running(name: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            restart_count: 0,
            run: Some(RunRecord::process(
                ProcId {
                    pid: 1,
                    start_time: 1,
                },
                ProcId {
                    pid: 2,
                    start_time: 2,
                },
                0,
            )),
            last_exit: None,
            restart_at: None,
            backoff_secs: 0,
            oom_kills_at_start: None,
            backing_off: false,
            starting: false,
        }
    }

    fn ended(name: &str, code: i32, restart: bool) -> ContainerRecord {
        ContainerRecord {
            run: None,
            last_exit: Some(ExitRecord {
                exit_code: Some(code),
                signal: None,
                finished_at: 1,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
            }),
            restart_at: restart.then_some(5),
            ..running(name)
        }
    }

    fn not_set_up(name: &str, reason: &str) -> ContainerRecord {
        ContainerRecord {
            run: None,
            last_exit: Some(ExitRecord::without_status(reason, "why")),
            restart_at: Some(5),
            ..running(name)
        }
    }

    #[test]
    fn phases_follow_kubelet_rules() {
        assert_eq!(pod_phase(&[running("a"), running("b")]).0, Phase::Running);
        // A sidecar that completed does not fail a running pod.
        assert_eq!(
            pod_phase(&[running("a"), ended("b", 0, false)]).0,
            Phase::Running
        );
        assert_eq!(
            pod_phase(&[ended("a", 0, false), ended("b", 0, false)]).0,
            Phase::Completed
        );
        let (phase, reason) = pod_phase(&[running("a"), ended("b", 2, false)]);
        assert_eq!(phase, Phase::Failed);
        assert_eq!(reason.as_deref(), Some("container b: Error: exit code 2"));
        let (phase, reason) = pod_phase(&[running("a"), ended("b", 1, true)]);
        assert_eq!(phase, Phase::Creating);
        assert!(reason.unwrap().starts_with("CrashLoopBackOff: container b"));
        let mut fresh = running("a");
        fresh.run = None;
        assert_eq!(pod_phase(&[fresh, running("b")]).0, Phase::Creating);
    }

    #[test]
    fn setup_failures_fail_the_pod_while_retried() {
        let (phase, reason) = pod_phase(&[running("a"), not_set_up("b", ERR_IMAGE_PULL)]);
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            reason.as_deref(),
            Some("container b: ErrImagePull: why; retrying with back-off")
        );
        let (phase, reason) = pod_phase(&[not_set_up("a", NETWORK_ERROR)]);
        assert_eq!(phase, Phase::Failed);
        assert!(reason.unwrap().contains("NetworkError"));
        let (phase, reason) = pod_phase(&[not_set_up("a", CONTAINERD_UNAVAILABLE)]);
        assert_eq!(phase, Phase::Creating);
        assert_eq!(
            reason.as_deref(),
            Some("container a: waiting for containerd: why")
        );
        // Being started again after an exit: CREATING, not FAILED.
        let mut again = ended("a", 1, false);
        again.starting = true;
        assert_eq!(pod_phase(&[again, running("b")]), (Phase::Creating, None));
        assert!(is_setup_failure(ERR_IMAGE_PULL));
        assert!(!is_setup_failure("OOMKilled"));
    }
}
