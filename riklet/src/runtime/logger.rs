//! The logging binary of containerd containers: `riklet logger LOG_PATH`.
//!
//! containerd's runc shim starts it when a task's stdout is a
//! `binary:///<riklet>?logger=<LOG_PATH>` URI (containerd
//! `pkg/process/io.go`, `NewBinaryIO`): every query pair becomes two
//! arguments, the container's stdout arrives on fd 3 and its stderr on fd
//! 4, and the shim waits until fd 5 is closed before it starts the
//! container, so that no output is written before a reader exists. The
//! environment holds only `CONTAINER_ID` and `CONTAINER_NAMESPACE`; stdin,
//! stdout and stderr are `/dev/null`.
//!
//! The shim owns the process: it lives as long as the container's task,
//! whatever happens to the riklet, and writes CRI records with
//! [`CriWriter`] to the log file. When the task is deleted the shim closes
//! the pipes and sends SIGTERM (then SIGKILL 12 s later): the logger drains
//! what is still buffered in the pipes, at most [`DRAIN_AFTER_TERM`], and
//! exits.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::logs::{CriWriter, Stream};

/// Container stdout (read end of a pipe).
const STDOUT_FD: i32 = 3;
/// Container stderr (read end of a pipe).
const STDERR_FD: i32 = 4;
/// Closed to tell the shim the logger is ready.
const READY_FD: i32 = 5;
/// How long the logger keeps draining after the shim's SIGTERM.
pub const DRAIN_AFTER_TERM: Duration = Duration::from_secs(2);

/// Entry point of `riklet logger`; never returns.
pub fn main(log_path: &Path) -> ! {
    // SIGTERM is taken synchronously below (blocked here, before any
    // thread exists, so every thread inherits the mask); SIGPIPE and
    // SIGHUP cannot concern a process that only reads pipes and writes a
    // file, but must not kill it either.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let _ = term.thread_block();
    for sig in [Signal::SIGPIPE, Signal::SIGHUP, Signal::SIGINT] {
        // SAFETY: ignoring a signal installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    // SAFETY: fcntl(F_GETFD) only inspects descriptor numbers.
    let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if ![STDOUT_FD, STDERR_FD, READY_FD].into_iter().all(open) {
        eprintln!(
            "riklet logger: fds 3, 4 and 5 must be open (it is started by containerd's shim)"
        );
        std::process::exit(2);
    }
    // SAFETY: the shim passes these pipe ends to this process and nothing
    // else in it uses them; each is owned once.
    let (stdout, stderr) = unsafe { (File::from_raw_fd(STDOUT_FD), File::from_raw_fd(STDERR_FD)) };
    let writer = CriWriter::open(log_path);
    // Ready either way: the shim must not hang. Without a log file the
    // output is read and dropped, so that the container never blocks on a
    // full pipe.
    // SAFETY: READY_FD is open (checked above) and owned by nothing else.
    unsafe { libc::close(READY_FD) };
    let code = run(writer.ok(), stdout, stderr, &term);
    std::process::exit(code)
}

fn run(writer: Option<CriWriter>, stdout: File, stderr: File, term: &SigSet) -> i32 {
    let (done_tx, done_rx) = mpsc::channel::<bool>();
    for (stream, input) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
        let writer = writer.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let ok = match writer {
                Some(w) => w.copy_from(stream, input).is_ok(),
                None => std::io::copy(&mut { input }, &mut std::io::sink()).is_ok(),
            };
            let _ = done.send(ok);
        });
    }
    drop(done_tx);
    let mut running = 2;
    let mut all_ok = writer.is_some();
    let mut deadline: Option<Instant> = None;
    while running > 0 {
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            // Give up on a writer that keeps the pipe open.
            return 1;
        }
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ok) => {
                all_ok &= ok;
                running -= 1;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if deadline.is_none() && term_pending(term) {
            deadline = Some(Instant::now() + DRAIN_AFTER_TERM);
        }
    }
    if all_ok { 0 } else { 1 }
}

/// Whether SIGTERM arrived (consuming it), without waiting.
fn term_pending(term: &SigSet) -> bool {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: sigtimedwait reads the set and the timeout, both valid for
    // the call, and accepts a null siginfo pointer.
    let sig = unsafe { libc::sigtimedwait(term.as_ref(), std::ptr::null_mut(), &zero) };
    sig == libc::SIGTERM
}
