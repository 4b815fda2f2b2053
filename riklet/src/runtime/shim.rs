//! The per-container shim: a small process (`riklet shim --run-dir DIR`) that
//! starts one bare-process container, captures its output and records how it
//! ended.
//!
//! Why a shim: the container must not die with the riklet, and its output
//! must not be lost while the riklet is away (crash, upgrade). The shim
//! detaches from the riklet (double fork + `setsid`), so it and its child
//! outlive it; it is the child's parent, so it alone can `wait` for the exit
//! status, which it writes to `exit.json` for whichever riklet is alive
//! then. Files in the run directory:
//! - `spec.json`: written by the riklet, read here;
//! - `started.json`: [`Started`], written once the child runs;
//! - `exit.json`: [`ExitRecord`], written when it has ended;
//! - `shim.log`: the shim's own diagnostics.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spec::DEFAULT_PATH;
use crate::clock::{monotonic_us, now_ms};
use crate::fsutil::write_atomic;
use crate::logs::{CriWriter, Stream};
use crate::state::{ExitRecord, ProcId};

/// Everything the shim needs to start the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub exec: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` files the child joins before `exec`.
    pub procs_files: Vec<PathBuf>,
    pub log_path: PathBuf,
    /// The pod's network namespace (`/run/netns/rik-<instance>`), joined
    /// before `exec`; `None` stays in the host's (hostNetwork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// What the shim reports once the child runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub shim: ProcId,
    pub process: ProcId,
    /// Unix milliseconds.
    pub started_at: i64,
    /// When the shim reached each step of the start (absent in the reports
    /// of older shims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<ShimSteps>,
}

/// Instants of a shim's start, in microseconds on `CLOCK_MONOTONIC`
/// ([`crate::clock::monotonic_us`]), which the riklet shares: it subtracts
/// them from its own to split a start into steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSteps {
    /// The shim's `main` runs (its executable is loaded).
    pub main: u64,
    /// The detached shim (after the second fork) runs.
    pub detached: u64,
    /// `spec.json` is read and the log file open.
    pub prepared: u64,
    /// The child has called `exec` (cgroups and netns joined).
    pub spawned: u64,
    /// `started.json` is written; the report goes out next.
    pub recorded: u64,
}

/// Line printed on the shim's stdout to the riklet that started it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ready {
    Started(Started),
    /// The child could not be started; `exit.json` holds the details.
    Failed(String),
}

/// Names of the files in a container's run directory.
pub const SPEC_FILE: &str = "spec.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
const SHIM_LOG: &str = "shim.log";
/// How long the shim waits for output pipes to drain after the child
/// exited (a grandchild may keep them open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Entry point of `riklet shim`; never returns.
pub fn main(run_dir: &Path) -> ! {
    let mut steps = ShimSteps {
        main: monotonic_us(),
        ..ShimSteps::default()
    };
    // Detach: the intermediate process exits at once (the riklet reaps it),
    // the shim is re-parented to init/subreaper and leads its own session.
    // SAFETY: the process is single-threaded at this point.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("riklet shim: fork: {e}");
            std::process::exit(1)
        }
    }
    steps.detached = monotonic_us();
    let _ = nix::unistd::setsid();
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    if let Ok(log) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(SHIM_LOG))
    {
        let _ = nix::unistd::dup2_stderr(&log);
    }
    let code = match supervise(run_dir, steps) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("riklet shim: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn announce(ready: &Ready) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{}", serde_json::to_string(ready).expect("serializes"));
    let _ = out.flush();
    // The riklet may be gone later: nothing more is written to its pipe.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Starts the child, reports it, copies its output to the CRI log and
/// records how it ended.
fn supervise(run_dir: &Path, mut steps: ShimSteps) -> io::Result<()> {
    let spec: ShimSpec =
        serde_json::from_slice(&fs::read(run_dir.join(SPEC_FILE))?).map_err(io::Error::other)?;
    let writer = CriWriter::open(&spec.log_path)?;
    steps.prepared = monotonic_us();
    let mut child = match spawn(&spec) {
        Ok(child) => child,
        Err((code, message)) => return record_start_failure(run_dir, &writer, code, message),
    };
    steps.spawned = monotonic_us();
    announce_started(run_dir, child.id() as i32, steps)?;
    let copiers = copy_output(&mut child, &writer);
    let status = child.wait()?;
    copiers.drain(DRAIN_TIMEOUT);
    let exit = ExitRecord {
        exit_code: status.code(),
        signal: status.signal(),
        finished_at: now_ms(),
        reason: match (status.code(), status.signal()) {
            (Some(0), _) => "Completed",
            (_, Some(9)) => "Killed",
            _ => "Error",
        }
        .into(),
        message: None,
    };
    write_atomic(&run_dir.join(EXIT_FILE), &serde_json::to_vec(&exit)?)
}

/// Starts the child in the pod's network namespace, if any; on failure,
/// the exit code a shell would give (127: no such file, 126: cannot run)
/// and why.
fn spawn(spec: &ShimSpec) -> Result<Child, (i32, String)> {
    let netns = match &spec.netns {
        None => None,
        Some(path) => Some(File::open(path).map_err(|e| {
            (
                126,
                format!("cannot open network namespace {}: {e}", path.display()),
            )
        })?),
    };
    command(spec, netns.as_ref()).spawn().map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        (code, format!("cannot start {}: {e}", spec.exec.display()))
    })
}

/// A child that could not start: its CRI log and `exit.json` say why
/// (reason `StartError`), and so does the line to the riklet.
fn record_start_failure(
    run_dir: &Path,
    writer: &CriWriter,
    code: i32,
    message: String,
) -> io::Result<()> {
    let _ = writer.copy_from(Stream::Stderr, format!("{message}\n").as_bytes());
    let exit = ExitRecord {
        exit_code: Some(code),
        signal: None,
        finished_at: now_ms(),
        reason: "StartError".into(),
        message: Some(message.clone()),
    };
    write_atomic(&run_dir.join(EXIT_FILE), &serde_json::to_vec(&exit)?)?;
    announce(&Ready::Failed(message));
    Ok(())
}

/// Records (`started.json`) and reports the running child `pid`.
fn announce_started(run_dir: &Path, pid: i32, steps: ShimSteps) -> io::Result<()> {
    let mut started = Started {
        shim: ProcId::of(std::process::id() as i32)
            .ok_or_else(|| io::Error::other("no /proc/self"))?,
        // The child may already be gone: its start time is then unknown.
        process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
        started_at: now_ms(),
        steps: Some(steps),
    };
    write_atomic(&run_dir.join(STARTED_FILE), &serde_json::to_vec(&started)?)?;
    if let Some(steps) = started.steps.as_mut() {
        steps.recorded = monotonic_us();
    }
    announce(&Ready::Started(started));
    Ok(())
}

/// The threads copying the child's stdout and stderr to the CRI log.
struct Copiers {
    running: usize,
    done: mpsc::Receiver<()>,
}

impl Copiers {
    /// Waits until both pipes are drained, at most `timeout` (a grandchild
    /// may keep them open).
    fn drain(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                break;
            }
            self.running -= 1;
        }
    }
}

/// Starts one thread per output pipe of `child`, each writing CRI records.
fn copy_output(child: &mut Child, writer: &CriWriter) -> Copiers {
    let (done_tx, done) = mpsc::channel();
    let pipes = [
        (
            Stream::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
        ),
        (
            Stream::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn io::Read + Send>),
        ),
    ];
    let mut running = 0;
    for (stream, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        let writer = writer.clone();
        let done = done_tx.clone();
        running += 1;
        std::thread::spawn(move || {
            if let Err(e) = writer.copy_from(stream, pipe) {
                eprintln!("riklet shim: copying {stream:?}: {e}");
            }
            let _ = done.send(());
        });
    }
    Copiers { running, done }
}

/// The child's command: cleared environment, stdin from /dev/null, output
/// to pipes, and a `pre_exec` that joins the cgroups and the pod's network
/// namespace (`netns`, opened by the caller with `O_CLOEXEC`, kept open
/// until the spawn), drops privileges and sets `no_new_privs` — in that
/// order, since joining needs root.
fn command(spec: &ShimSpec, netns: Option<&File>) -> Command {
    let mut cmd = Command::new(&spec.exec);
    cmd.args(&spec.args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let procs: Vec<CString> = spec
        .procs_files
        .iter()
        .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    let (uid, gid) = (spec.uid, spec.gid);
    let netns_fd = netns.map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: the closure runs between fork and exec; it only makes raw
    // system calls on data prepared before the fork, and allocates nothing.
    // `netns_fd` stays open until `spawn` returns (the caller holds it).
    unsafe {
        cmd.pre_exec(move || {
            for file in &procs {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(io::Error::last_os_error());
            }
            for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGPIPE] {
                libc::signal(sig, libc::SIG_DFL);
            }
            if libc::setgroups(1, &gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Reads `exit.json` of a run directory, if the shim wrote it.
pub fn read_exit(run_dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&fs::read(run_dir.join(EXIT_FILE)).ok()?).ok()
}
