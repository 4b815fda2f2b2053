//! Tasks (a container's running init process): start (with everything a
//! start creates, undone when it fails), wait, stop, remove.

use std::time::Duration;

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status as ProcessStatus;
use tonic::Code;

use super::containers::{ContainerSpec, cgroups_path, container_id};
use super::{ContainerdError, ContainerdRuntime, Result};
use crate::cgroups::{ContainerCgroup, Layout};
use crate::logs::{CriWriter, LogSpec};
use crate::state::ExitRecord;

/// How long a task may take to die after SIGKILL.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    pub container_id: String,
    /// Host pid of the container's init process.
    pub pid: u32,
    /// Unix milliseconds.
    pub started_at: i64,
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit status; 128 + n for a process killed by signal n (containerd's
    /// convention).
    pub exit_code: u32,
    /// Unix milliseconds.
    pub finished_at: i64,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl ContainerExit {
    /// The runtime-memory form of this exit (reason `Completed`,
    /// `OOMKilled` or `Error`, as kubelet says).
    pub fn to_exit_record(&self) -> ExitRecord {
        let reason = if self.oom_killed {
            "OOMKilled"
        } else if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        ExitRecord {
            exit_code: Some(self.exit_code as i32),
            signal: (self.exit_code > 128 && self.exit_code < 128 + 65)
                .then(|| (self.exit_code - 128) as i32),
            finished_at: self.finished_at,
            reason: reason.into(),
            message: None,
        }
    }
}

/// What a start created so far (undone on failure).
#[derive(Debug, Default)]
struct Created {
    snapshot: bool,
    container: bool,
    task: bool,
}

impl ContainerdRuntime {
    /// Creates, starts and returns a container; on failure, removes what
    /// it created. A container with the same id must not exist
    /// ([`ContainerdError::AlreadyExists`]: [`remove`](Self::remove) it
    /// first); a snapshot left behind by a start that was interrupted
    /// before its container existed is replaced.
    pub async fn start(&self, spec: ContainerSpec) -> Result<TaskRun> {
        let id = container_id(&spec.instance_id, &spec.container)?;
        // The logger (run by the shim) appends to the file; creating it
        // here turns a bad path into an error of this call.
        CriWriter::open(&spec.log).map_err(|source| ContainerdError::Log {
            path: spec.log.current_file(),
            source,
        })?;
        let mut created = Created::default();
        let result = self.create_and_start(&id, &spec, &mut created).await;
        if result.is_err() {
            self.undo(&id, &created).await;
        }
        result
    }

    async fn create_and_start(
        &self,
        id: &str,
        spec: &ContainerSpec,
        created: &mut Created,
    ) -> Result<TaskRun> {
        let lease = self.create_lease(id).await?;
        let mounts = self
            .prepare_snapshot(id, &spec.snapshot_parent, &lease)
            .await;
        let container = match mounts {
            Ok(mounts) => {
                created.snapshot = true;
                self.create_container(id, spec, &mounts)
                    .await
                    .map(|()| mounts)
            }
            Err(e) => Err(e),
        };
        self.delete_lease(&lease).await;
        let mounts = container?;
        created.container = true;
        crate::crash::point("create.after_container_create");
        self.create_task(id, mounts, &spec.log).await?;
        created.task = true;
        crate::crash::point("create.after_task_create");
        let started = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("start task", id, s))?
            .into_inner();
        Ok(TaskRun {
            container_id: id.to_string(),
            pid: started.pid,
            started_at: crate::clock::now_ms(),
        })
    }

    /// Creates the task of container `id` on the snapshot's `mounts`, its
    /// output going to `riklet logger` run by the shim.
    async fn create_task(&self, id: &str, rootfs: Vec<Mount>, log: &LogSpec) -> Result<()> {
        let uri = crate::runtime::logger::uri(&self.logger_exe, log);
        let req = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdin: String::new(),
            stdout: uri.clone(),
            stderr: uri,
            terminal: false,
            ..Default::default()
        };
        self.tasks()
            .create(self.request(req))
            .await
            .map_err(|s| ContainerdError::rpc("create task", id, s))?;
        Ok(())
    }

    /// Removes what a failed start created, newest first.
    async fn undo(&self, id: &str, created: &Created) {
        if created.task
            && let Err(e) = self.delete_task(id).await
        {
            tracing::warn!(container = id, error = %crate::error_chain(&e), "cannot undo task");
        }
        if created.container
            && let Err(e) = self.delete_container(id).await
        {
            tracing::warn!(container = id, error = %crate::error_chain(&e), "cannot undo container");
        }
        if created.snapshot
            && let Err(e) = self.remove_snapshot(id).await
        {
            tracing::warn!(container = id, error = %crate::error_chain(&e), "cannot undo snapshot");
        }
    }

    /// Waits until the container's task has exited and says how. Returns
    /// at once for a task that exited earlier (e.g. while no riklet was
    /// running); [`ContainerdError::NotFound`] when there is no task.
    pub async fn wait(&self, container_id: &str) -> Result<ContainerExit> {
        let exit = self
            .tasks()
            .wait(self.request_without_timeout(WaitRequest {
                container_id: container_id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::lookup("wait for task", container_id, s))?
            .into_inner();
        Ok(ContainerExit {
            exit_code: exit.exit_status,
            finished_at: timestamp_ms(exit.exited_at),
            oom_killed: self.oom_killed(container_id).await,
        })
    }

    /// Whether the OOM killer killed a process in the container's cgroup
    /// (read before the task is deleted, which removes the cgroup).
    async fn oom_killed(&self, container_id: &str) -> bool {
        let Ok(container) = self.container(container_id).await else {
            return false;
        };
        let (Some(path), Ok(layout)) = (cgroups_path(&container), Layout::detect()) else {
            return false;
        };
        let cgroup = ContainerCgroup::at(layout, &path.to_string_lossy());
        crate::metrics::cgroup_stats::read(&cgroup)
            .oom_kills
            .is_some_and(|n| n > 0)
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        };
        match self.tasks().kill(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) => Err(ContainerdError::lookup("kill task", id, s)),
        }
    }

    /// Whether the task ended within `limit`.
    async fn wait_for(&self, id: &str, limit: Duration) -> Result<bool> {
        match tokio::time::timeout(limit, self.wait(id)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if e.is_not_found() => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Sends `signal` (to every process of the container when `all`);
    /// false when there is no task or its process already ended.
    async fn signal(&self, id: &str, signal: i32, all: bool) -> Result<bool> {
        match self.kill(id, signal, all).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// SIGKILL to every process of the container, and up to
    /// [`KILL_TIMEOUT`] for the task to end.
    async fn kill_all(&self, id: &str) -> Result<()> {
        self.signal(id, libc::SIGKILL, true).await?;
        if self.wait_for(id, KILL_TIMEOUT).await? {
            Ok(())
        } else {
            Err(ContainerdError::StopTimeout(id.to_string()))
        }
    }

    /// Stops a container: SIGTERM to its init process (as Docker and
    /// kubelet do: the application decides how to stop its children), up
    /// to `grace` for it to exit, then SIGKILL to every process of the
    /// container. A container without a running task is already stopped.
    /// `true` when it outlived the grace period (it was killed).
    pub async fn stop(&self, container_id: &str, grace: Duration) -> Result<bool> {
        if !self.signal(container_id, libc::SIGTERM, false).await?
            || self.wait_for(container_id, grace).await?
        {
            return Ok(false);
        }
        self.kill_all(container_id).await?;
        Ok(true)
    }

    pub(super) async fn delete_task(&self, id: &str) -> Result<()> {
        let state = match self
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => return Ok(()),
            Err(s) => return Err(ContainerdError::rpc("get task", id, s)),
        };
        // containerd refuses to delete a task whose process runs (or was
        // created and never started): kill it first.
        if state.is_none_or(|p| p.status != ProcessStatus::Stopped as i32) {
            self.kill_all(id).await?;
        }
        match self
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("delete task", id, s)),
        }
    }

    /// Removes a container and all it holds: its task (killed first if it
    /// still runs; the shim then stops the logger, which has written every
    /// line by the time this returns), the container, its snapshot. What
    /// does not exist is skipped, so it can be called again after a crash.
    pub async fn remove(&self, container_id: &str) -> Result<()> {
        self.delete_task(container_id).await?;
        self.delete_container(container_id).await?;
        self.remove_snapshot(container_id).await
    }
}

fn timestamp_ms(ts: Option<prost_types::Timestamp>) -> i64 {
    match ts {
        Some(t) => t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
        None => crate::clock::now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_kubelet_reasons() {
        let exit = |code, oom| ContainerExit {
            exit_code: code,
            finished_at: 5,
            oom_killed: oom,
        };
        assert_eq!(exit(0, false).to_exit_record().reason, "Completed");
        let r = exit(137, true).to_exit_record();
        assert_eq!(
            (r.reason.as_str(), r.signal, r.exit_code),
            ("OOMKilled", Some(9), Some(137))
        );
        let r = exit(3, false).to_exit_record();
        assert_eq!((r.reason.as_str(), r.signal), ("Error", None));
    }
}
