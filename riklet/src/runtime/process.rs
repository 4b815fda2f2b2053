//! Bare-process containers, riklet side: start a shim, wait for it, stop.
//!
//! The riklet never waits on the container process itself (it is the
//! shim's child, and may have been started by a previous riklet): it
//! watches the shim through a pidfd, which works for any process, and reads
//! the exit status the shim recorded.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;

use super::shim::{self, Ready, ShimSpec, ShimSteps};
use crate::cgroups::ContainerCgroup;
use crate::clock::monotonic_us;
use crate::state::{ExitRecord, ProcId, RunRecord};

/// Longest time a shim may take to report that its child runs.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A bare-process operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("run directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The shim's binary is not installed next to the riklet's.
    #[error("the shim binary {exe} is missing: install riklet-shim next to riklet")]
    ShimMissing { exe: PathBuf },
    #[error("cannot start shim {exe}")]
    SpawnShim {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The shim ended or stalled before reporting (`no output`, `timed out`).
    #[error("shim did not report a start: {0}")]
    ShimSilent(&'static str),
    #[error("shim did not report a start: cannot read its output")]
    ShimUnread(#[source] io::Error),
    #[error("shim did not report a start: unreadable report {line:?}")]
    ShimGarbled {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// The shim could not start the process. The cause (e.g. `exec`'s
    /// error) arose in the shim's process: only its words cross the pipe.
    #[error("{0}")]
    StartFailed(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ProcessError>;

/// The shim's executable: `riklet-shim` in the directory of the running
/// riklet's (installed together, so that a riklet always starts the shim
/// of its own version). The directory is right even when the riklet's file
/// was replaced by an upgrade (`/proc/self/exe` then ends in ` (deleted)`).
pub fn shim_next_to_riklet() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", exe.display())))?;
    Ok(dir.join(shim::BINARY))
}

/// Starts and stops bare processes through shims.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    /// The shim's executable, `riklet-shim`.
    shim_exe: PathBuf,
    /// `<state-dir>/run`: one directory per container run.
    run_root: PathBuf,
}

impl ProcessRuntime {
    /// Bare processes started through `shim_exe`, with their run
    /// directories under `state_dir`. A missing shim is logged at once (and
    /// fails each bare-process start, naming it); image containers do not
    /// need it.
    pub fn new(shim_exe: PathBuf, state_dir: &Path) -> Self {
        if !shim_exe.is_file() {
            tracing::error!(
                path = %shim_exe.display(),
                "the shim binary is missing: bare-process pods cannot start (install riklet-shim next to riklet)"
            );
        }
        ProcessRuntime {
            shim_exe,
            run_root: state_dir.join("run"),
        }
    }

    /// Run directory of one container.
    pub fn run_dir(&self, instance: &str, container: &str) -> PathBuf {
        self.run_root.join(instance).join(container)
    }

    /// Instance ids that have run directories (for orphan cleanup).
    pub fn instances_on_disk(&self) -> Vec<String> {
        fs::read_dir(&self.run_root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the run directories of an instance.
    pub fn remove_instance(&self, instance: &str) {
        let _ = fs::remove_dir_all(self.run_root.join(instance));
    }

    /// Starts a container: writes its spec, runs the shim, and returns once
    /// the process runs inside its cgroups (its steps logged, see
    /// [`crate::steps`]).
    pub async fn start(
        &self,
        instance: &str,
        container: &str,
        spec: &ShimSpec,
    ) -> Result<RunRecord> {
        let dir = self.run_dir(instance, container);
        crate::steps::timed_sync("run dir", || prepare_run_dir(&dir, spec)).map_err(|source| {
            ProcessError::Io {
                path: dir.clone(),
                source,
            }
        })?;
        crate::crash::point("create.after_run_dir");
        let spawn_at = monotonic_us();
        let mut child = tokio::process::Command::new(&self.shim_exe)
            .arg("--run-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| {
                let exe = self.shim_exe.clone();
                if source.kind() == io::ErrorKind::NotFound {
                    ProcessError::ShimMissing { exe }
                } else {
                    ProcessError::SpawnShim { exe, source }
                }
            })?;
        let spawned_at = monotonic_us();
        crate::crash::point("create.after_shim_spawn");
        crate::steps::record_us("shim spawn", spawned_at.saturating_sub(spawn_at));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = tokio::time::timeout(
            START_TIMEOUT,
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        let read_at = monotonic_us();
        // The intermediate process exits right after forking: reap it.
        crate::steps::timed("shim reap", child.wait()).await.ok();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => return Err(ProcessError::ShimSilent("no output")),
            Ok(Err(e)) => return Err(ProcessError::ShimUnread(e)),
            Err(_) => return Err(ProcessError::ShimSilent("timed out")),
        }
        match serde_json::from_str::<Ready>(line.trim()) {
            Ok(Ready::Started(s)) => {
                if let Some(steps) = &s.steps {
                    record_shim_steps(spawned_at, steps, read_at);
                }
                Ok(RunRecord::process(s.shim, s.process, s.started_at))
            }
            Ok(Ready::Failed(msg)) => Err(ProcessError::StartFailed(msg)),
            Err(source) => Err(ProcessError::ShimGarbled { line, source }),
        }
    }

    /// The `started.json` of a container's current run, if any.
    pub fn read_started(&self, instance: &str, container: &str) -> Option<shim::Started> {
        shim::read_started(&self.run_dir(instance, container))
    }

    /// The exit record of a container's last run, if the shim wrote one.
    pub fn read_exit(&self, instance: &str, container: &str) -> Option<ExitRecord> {
        shim::read_exit(&self.run_dir(instance, container))
    }

    /// Waits until the run's shim has exited, then returns how the container
    /// ended, or `None` if the shim died without saying (its container's
    /// processes may still run).
    pub async fn wait(
        &self,
        instance: &str,
        container: &str,
        run: &RunRecord,
    ) -> Option<ExitRecord> {
        if let Some(shim) = run.shim
            && let Err(e) = wait_process(shim).await
        {
            tracing::warn!(pod = instance, container, error = %e, "cannot watch shim; polling");
            while shim.is_alive() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        self.read_exit(instance, container)
    }

    /// Stops a run: SIGTERM to every process of the cgroup, up to `grace`
    /// for them to end, then SIGKILL; returns once the shim is gone too.
    /// `true` when processes outlived the grace period (they were killed).
    pub async fn stop(
        &self,
        run: Option<&RunRecord>,
        cgroup: &ContainerCgroup,
        grace: Duration,
    ) -> bool {
        cgroup.signal_all(nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let mut outlived = !cgroup.pids().is_empty();
        while outlived && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            outlived = !cgroup.pids().is_empty();
        }
        let cg = cgroup.clone();
        let killed = tokio::task::spawn_blocking(move || cg.kill_all()).await;
        if let Ok(Err(e)) = killed {
            tracing::error!(cgroup = cgroup.rel(), error = %crate::error_chain(&e), "cannot empty cgroup");
        }
        if let Some(shim) = run.and_then(|r| r.shim) {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait_process(shim)).await;
        }
        outlived
    }
}

/// Makes the run directory ready for a new run: the last run's
/// `started.json` and `exit.json` removed, the new `spec.json` written.
///
/// `spec.json` is complete (renamed into place) but not made durable: the
/// shim reads it at once, and after a reboot nothing reads it (a start
/// begins by writing it again), so an fsync would only cost time.
fn prepare_run_dir(dir: &Path, spec: &ShimSpec) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for stale in [shim::STARTED_FILE, shim::EXIT_FILE] {
        match fs::remove_file(dir.join(stale)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let json = serde_json::to_vec(spec).expect("spec serializes");
    crate::fsutil::write_volatile(&dir.join(shim::SPEC_FILE), &json)
}

/// Logs the shim's steps, from the riklet's spawn returning (`spawned_at`)
/// to its report read (`read_at`), all on the monotonic clock.
fn record_shim_steps(spawned_at: u64, s: &ShimSteps, read_at: u64) {
    let mut last = spawned_at;
    for (step, at) in [
        ("shim exec", s.main),
        ("shim detach", s.detached),
        ("shim prepare", s.prepared),
        ("child spawn", s.spawned),
        ("started record", s.recorded),
        ("shim report", read_at),
    ] {
        crate::steps::record_us(step, at.saturating_sub(last));
        last = at;
    }
}

/// Waits for a process that is not our child to exit, through a pidfd.
async fn wait_process(id: ProcId) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, id.pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        };
    }
    // SAFETY: fd is a freshly opened descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pid may have been reused between the record and the open.
    if !id.is_alive() {
        return Ok(());
    }
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and
    // unchanged until it is dropped.
    let afd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
    let _ready = afd.readable().await?;
    Ok(())
}
