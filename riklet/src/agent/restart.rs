//! Exits and restarts: how a container's end is recorded and whether,
//! when and how it is started again (restart policy, crash-loop back-off,
//! retries of containers that could not be set up).

use std::time::Duration;

use proto::manifest::RestartPolicy;
use proto::status::EventType;
use tracing::info;

use super::host::PodHost;
use super::phase::{CONTAINERD_UNAVAILABLE, is_setup_failure};
use super::{Agent, Event};
use crate::clock::now_ms;
use crate::state::{ContainerRecord, ExitRecord, Phase, RunRecord};

/// A run that lasted this long resets the crash-loop back-off (kubelet).
pub(super) const BACKOFF_RESET_MS: i64 = 10 * 60 * 1000;

impl<H: PodHost> Agent<H> {
    pub(super) fn exited(
        &mut self,
        instance_id: &str,
        name: &str,
        run: &RunRecord,
        exit: ExitRecord,
    ) {
        let Some(c) = self.live_container(instance_id, name) else {
            return;
        };
        if c.run.as_ref() != Some(run) {
            return; // a stale watcher of an older run
        }
        crate::crash::point("restart.after_exit");
        let mut exit = exit;
        // containerd's wait already says OOMKilled (read from the task's
        // cgroup before it is deleted); a bare process's cgroup is ours.
        if !run.is_containerd() {
            let oom_now = self.host.oom_kills(instance_id, name);
            if !exit.success() && oom_now > c.oom_kills_at_start.or(Some(0)) {
                exit.reason = "OOMKilled".into();
            }
        }
        if exit.reason == "OOMKilled" && exit.message.is_none() {
            exit.message =
                Some("killed by the OOM killer: the container reached its memory limit".into());
        }
        info!(pod = instance_id, container = name, code = ?exit.exit_code, signal = ?exit.signal, reason = %exit.reason, "container exited");
        let (kind, reason, message) = exit_event(name, &exit);
        self.record(instance_id, Some(name), kind, reason, message);
        self.after_exit(instance_id, name, exit);
    }

    /// Records an exit (or a failed start) and applies the restart policy;
    /// a container that could not be set up is retried whatever the policy.
    pub(super) fn after_exit(&mut self, instance_id: &str, name: &str, exit: ExitRecord) {
        let Some(policy) = self
            .pods
            .get(instance_id)
            .map(|p| p.manifest.spec.restart_policy)
        else {
            return;
        };
        let (initial, max) = (
            self.settings.backoff_initial.as_secs().max(1),
            self.settings.backoff_max.as_secs(),
        );
        let Some(c) = self.container_mut(instance_id, name) else {
            return;
        };
        let ran_ms = c
            .run
            .as_ref()
            .map(|r| exit.finished_at - r.started_at)
            .unwrap_or(0);
        c.run = None;
        c.starting = false;
        c.backing_off = false;
        let setup = is_setup_failure(&exit.reason);
        let restart = setup
            || match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Never => false,
            };
        // containerd coming back is noticed by a retry: keep it short.
        let doubling = exit.reason != CONTAINERD_UNAVAILABLE;
        c.last_exit = Some(exit);
        if restart {
            c.backoff_secs = if c.backoff_secs == 0 || ran_ms >= BACKOFF_RESET_MS || !doubling {
                initial
            } else {
                (c.backoff_secs * 2).min(max)
            };
            let delay = Duration::from_secs(c.backoff_secs);
            c.restart_at = Some(now_ms() + delay.as_millis() as i64);
            info!(pod = instance_id, container = name, backoff = ?delay, "restart scheduled");
            self.schedule_restart(instance_id, name, delay);
            self.schedule_backoff_notice(instance_id, name, delay);
        }
        self.settle_phase(instance_id);
    }

    pub(super) fn schedule_restart(&self, instance_id: &str, name: &str, delay: Duration) {
        let tx = self.tx.clone();
        let (instance_id, container) = (instance_id.to_string(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::RestartDue {
                instance_id,
                container,
            });
        });
    }

    pub(super) fn restart_due(&mut self, instance_id: &str, name: &str) {
        let Some(c) = self.live_container(instance_id, name) else {
            return;
        };
        if c.run.is_some() || c.restart_at.is_none() || c.starting {
            return; // already restarted (an earlier timer, or containerd came back)
        }
        // A container that never ran is not restarted, only retried.
        let ran = !c
            .last_exit
            .as_ref()
            .is_some_and(|e| is_setup_failure(&e.reason));
        if ran && let Some(c) = self.container_mut(instance_id, name) {
            c.restart_count += 1;
        }
        crate::crash::point("restart.before_start");
        self.start_container(instance_id, name);
    }

    /// A container of a pod that is not being deleted (whose exits and
    /// restarts still matter).
    fn live_container(&self, instance_id: &str, name: &str) -> Option<&ContainerRecord> {
        let pod = self.pods.get(instance_id)?;
        if pod.phase == Phase::Destroying {
            return None;
        }
        pod.containers.iter().find(|c| c.name == name)
    }
}

/// The event of a run's end: `OOMKilled`, or `Exited` with its code or
/// signal (a warning unless it succeeded).
fn exit_event(name: &str, exit: &ExitRecord) -> (EventType, &'static str, String) {
    if exit.reason == "OOMKilled" {
        let how = exit
            .message
            .as_deref()
            .unwrap_or("killed by the OOM killer");
        return (
            EventType::Warning,
            "OOMKilled",
            format!("Container {name} was OOM killed: {how}"),
        );
    }
    let how = match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => exit.describe(),
    };
    let kind = if exit.success() {
        EventType::Normal
    } else {
        EventType::Warning
    };
    (kind, "Exited", format!("Container {name} exited ({how})"))
}
