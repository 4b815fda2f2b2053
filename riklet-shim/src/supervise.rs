//! The shim's life: detach from the riklet, start the child, report it,
//! copy its output to the CRI log, record how it ended.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::child::{self, Child};
use crate::clock::{monotonic_us, now_ms};
use crate::cri::{CriWriter, Stream};
use crate::fsutil::{write_atomic, write_volatile};
use crate::protocol::{
    EXIT_FILE, Ready, SHIM_LOG, SPEC_FILE, STARTED_FILE, ShimSpec, ShimSteps, Started,
};
use crate::record::{ExitRecord, ProcId};

/// How long the shim waits for output pipes to drain after the child
/// exited (a grandchild may keep them open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A failure of the shim itself (not of the container), written to
/// `shim.log`.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read {path}")]
    Spec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a shim spec")]
    BadSpec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot open the log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no /proc entry for the shim itself")]
    NoProc,
    #[error("cannot wait for the container's process {pid}")]
    Wait {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// The shim's entry point (`riklet-shim --run-dir DIR`); never returns.
///
/// Detaches first: the intermediate process exits at once (the riklet
/// reaps it), the shim is re-parented to init (or a subreaper), leads its
/// own session and ignores SIGHUP, SIGINT and SIGPIPE, so that it and its
/// child outlive the riklet. Its stderr goes to `shim.log`. Must be called
/// while the process has a single thread.
pub fn main(run_dir: &Path) -> ! {
    let mut steps = ShimSteps {
        main: monotonic_us(),
        ..ShimSteps::default()
    };
    // SAFETY: the process is single-threaded at this point.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("riklet-shim: fork: {e}");
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
    abort_on_panic();
    let code = match supervise(run_dir, steps) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("riklet-shim: {}", chain(&e));
            1
        }
    };
    std::process::exit(code)
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Prints the one line for the riklet, then points stdout at /dev/null:
/// the riklet may be gone later, nothing more goes to its pipe.
fn announce(ready: &Ready) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{}", serde_json::to_string(ready).expect("serializes"));
    let _ = out.flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Starts the child, reports it, copies its output to the CRI log and
/// records how it ended.
fn supervise(run_dir: &Path, mut steps: ShimSteps) -> Result<(), ShimError> {
    let path = run_dir.join(SPEC_FILE);
    let text = fs::read(&path).map_err(|source| ShimError::Spec {
        path: path.clone(),
        source,
    })?;
    let spec: ShimSpec =
        serde_json::from_slice(&text).map_err(|source| ShimError::BadSpec { path, source })?;
    let writer = CriWriter::open(&spec.log).map_err(|source| ShimError::Log {
        path: spec.log.current_file(),
        source,
    })?;
    steps.prepared = monotonic_us();
    // SAFETY: the shim has a single thread until the copiers start, after
    // the child has exec'ed.
    let child = match unsafe { child::spawn(&spec) } {
        Ok(child) => child,
        Err(e) => return record_start_failure(run_dir, &writer, e),
    };
    steps.spawned = monotonic_us();
    let pid = child.pid;
    announce_started(run_dir, pid.as_raw(), steps)?;
    let copiers = copy_output(child, &writer);
    let ended = child::wait(pid).map_err(|source| ShimError::Wait {
        pid: pid.as_raw(),
        source,
    })?;
    copiers.drain(DRAIN_TIMEOUT);
    let exit = ExitRecord {
        exit_code: ended.exit_code,
        signal: ended.signal,
        finished_at: now_ms(),
        reason: match (ended.exit_code, ended.signal) {
            (Some(0), _) => "Completed",
            (_, Some(9)) => "Killed",
            _ => "Error",
        }
        .into(),
        message: None,
    };
    // Durable: a riklet that is away reads it later, perhaps after a
    // power loss.
    record(run_dir, EXIT_FILE, &exit, true)?;
    // After the exit is known: the riklet need not wait for gzip.
    writer.finish(DRAIN_TIMEOUT);
    Ok(())
}

/// Writes one JSON file of the run directory, durably or not (see
/// [`crate::fsutil`]).
fn record(
    run_dir: &Path,
    name: &str,
    value: &impl serde::Serialize,
    durable: bool,
) -> Result<(), ShimError> {
    let path = run_dir.join(name);
    let json = serde_json::to_vec(value).expect("records serialize");
    let written = if durable {
        write_atomic(&path, &json)
    } else {
        write_volatile(&path, &json)
    };
    written.map_err(|source| ShimError::Record { path, source })
}

/// A child that could not start: its CRI log and `exit.json` say why
/// (reason `StartError`), and so does the line to the riklet.
fn record_start_failure(
    run_dir: &Path,
    writer: &CriWriter,
    e: child::SpawnError,
) -> Result<(), ShimError> {
    let _ = writer.copy_from(Stream::Stderr, format!("{}\n", e.message).as_bytes());
    let exit = ExitRecord {
        exit_code: Some(e.code),
        signal: None,
        finished_at: now_ms(),
        reason: "StartError".into(),
        message: Some(e.message.clone()),
    };
    record(run_dir, EXIT_FILE, &exit, true)?;
    announce(&Ready::Failed(e.message));
    Ok(())
}

/// Records (`started.json`) and reports the running child `pid`.
///
/// `started.json` is not made durable: it describes a live shim and
/// process, which a reboot ends; recovery after a reboot finds the shim
/// gone whether or not the file survived (see [`crate::fsutil`]).
fn announce_started(run_dir: &Path, pid: i32, mut steps: ShimSteps) -> Result<(), ShimError> {
    let mut started = Started {
        shim: ProcId::of(std::process::id() as i32).ok_or(ShimError::NoProc)?,
        // The child may already be gone: its start time is then unknown.
        process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
        started_at: now_ms(),
        steps: Some(steps),
    };
    record(run_dir, STARTED_FILE, &started, false)?;
    steps.recorded = monotonic_us();
    started.steps = Some(steps);
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

/// A panic on any of the shim's threads ends the shim, the panic in
/// `shim.log`: a shim whose copier died would keep the container running
/// with its output going nowhere. The riklet then sees the shim gone
/// without an exit record (`Lost`), stops what is left in the cgroup and
/// applies the restart policy.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("riklet-shim: aborting after a panic");
        std::process::abort();
    }));
}

/// `RIKLET_SHIM_TEST_FAULT=panic-copier`, read by debug builds only: the
/// stdout copier panics before copying, as a bug in it would.
fn copier_test_fault() -> bool {
    cfg!(debug_assertions)
        && std::env::var_os("RIKLET_SHIM_TEST_FAULT").is_some_and(|v| v == "panic-copier")
}

/// Starts one thread per output pipe of `child`, each writing CRI records.
fn copy_output(child: Child, writer: &CriWriter) -> Copiers {
    let (done_tx, done) = mpsc::channel();
    let mut running = 0;
    for (stream, pipe) in [
        (Stream::Stdout, child.stdout),
        (Stream::Stderr, child.stderr),
    ] {
        let writer = writer.clone();
        let done = done_tx.clone();
        running += 1;
        std::thread::spawn(move || {
            if stream == Stream::Stdout && copier_test_fault() {
                panic!("test fault: the stdout copier panics");
            }
            if let Err(e) = writer.copy_from(stream, pipe) {
                eprintln!("riklet-shim: copying {stream:?}: {e}");
            }
            let _ = done.send(());
        });
    }
    Copiers { running, done }
}
