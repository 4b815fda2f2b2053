//! The logging binary of containerd containers: `riklet logger DIR
//! restart_count N max_size BYTES max_files N`.
//!
//! containerd's runc shim starts it when a task's stdout is a
//! `binary:///<riklet>?logger=<DIR>&restart_count=<N>&…` URI ([`uri`];
//! containerd `pkg/process/io.go`, `NewBinaryIO`): every query pair becomes
//! two arguments, in no fixed order (they come out of a Go map), the
//! container's stdout arrives on fd 3 and its stderr on fd 4, and the shim
//! waits until fd 5 is closed before it starts the container, so that no
//! output is written before a reader exists. The environment holds only
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE`; stdin, stdout and stderr are
//! `/dev/null`.
//!
//! The shim owns the process: it lives as long as the container's task,
//! whatever happens to the riklet, and writes CRI records with
//! [`CriWriter`] to the run's log file, which it rotates. When the task is
//! deleted the shim closes the pipes and sends SIGTERM (then SIGKILL 12 s
//! later): the logger drains what is still buffered in the pipes, at most
//! [`DRAIN_AFTER_TERM`], and exits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::logs::{CriWriter, LogSpec, Rotation, Stream};

/// Container stdout (read end of a pipe).
const STDOUT_FD: i32 = 3;
/// Container stderr (read end of a pipe).
const STDERR_FD: i32 = 4;
/// Closed to tell the shim the logger is ready.
const READY_FD: i32 = 5;
/// How long the logger keeps draining after the shim's SIGTERM.
pub const DRAIN_AFTER_TERM: Duration = Duration::from_secs(2);

/// The URI keys, which are `riklet logger`'s argument names.
const LOGGER: &str = "logger";
const RESTART_COUNT: &str = "restart_count";
const MAX_SIZE: &str = "max_size";
const MAX_FILES: &str = "max_files";

/// Arguments that are not a logger's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoggerArgsError {
    #[error("riklet logger: missing {0}")]
    Missing(&'static str),
    #[error("riklet logger: {key} {value:?} is not a number")]
    NotANumber { key: &'static str, value: String },
    #[error("riklet logger: unknown argument {0:?}")]
    Unknown(String),
}

/// The stdout/stderr URI of a container task whose output `exe logger`
/// writes as `log` says.
pub fn uri(exe: &Path, log: &LogSpec) -> String {
    format!(
        "binary://{}?{LOGGER}={}&{RESTART_COUNT}={}&{MAX_SIZE}={}&{MAX_FILES}={}",
        uri_escape(&exe.to_string_lossy()),
        uri_escape(&log.dir.to_string_lossy()),
        log.restart_count,
        log.rotation.max_size,
        log.rotation.max_files,
    )
}

/// Percent-encodes everything but unreserved characters and `/`, for the
/// logging binary URI (containerd parses it with Go's `net/url`).
fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The log spec of a logger's arguments (without the program name), in
/// any order of the pairs; `None` when they are not a logger's (no
/// `logger` key).
pub fn parse_args(args: &[OsString]) -> Option<Result<LogSpec, LoggerArgsError>> {
    let pairs: Vec<(&OsString, &OsString)> = args
        .chunks(2)
        .filter_map(|p| Some((p.first()?, p.get(1)?)))
        .collect();
    if !args.len().is_multiple_of(2) || !pairs.iter().any(|(k, _)| *k == LOGGER) {
        return None;
    }
    let mut by_key: HashMap<&str, &OsString> = HashMap::new();
    for (key, value) in pairs {
        match key.to_str() {
            Some(k @ (LOGGER | RESTART_COUNT | MAX_SIZE | MAX_FILES)) => {
                by_key.insert(k, value);
            }
            _ => {
                return Some(Err(LoggerArgsError::Unknown(
                    key.to_string_lossy().into_owned(),
                )));
            }
        }
    }
    Some(log_spec(&by_key))
}

fn log_spec(args: &HashMap<&str, &OsString>) -> Result<LogSpec, LoggerArgsError> {
    let dir = args.get(LOGGER).ok_or(LoggerArgsError::Missing(LOGGER))?;
    Ok(LogSpec {
        dir: PathBuf::from(dir.as_os_str()),
        restart_count: number(args, RESTART_COUNT)?,
        rotation: Rotation {
            max_size: number(args, MAX_SIZE)?,
            max_files: number(args, MAX_FILES)?,
        },
    })
}

fn number<T: std::str::FromStr>(
    args: &HashMap<&str, &OsString>,
    key: &'static str,
) -> Result<T, LoggerArgsError> {
    let value = args
        .get(key)
        .ok_or(LoggerArgsError::Missing(key))?
        .to_string_lossy();
    value.parse().map_err(|_| LoggerArgsError::NotANumber {
        key,
        value: value.into_owned(),
    })
}

/// Entry point of `riklet logger`; never returns.
pub fn main(log: &LogSpec) -> ! {
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
    let writer = CriWriter::open(log);
    // Ready either way: the shim must not hang. Without a log file the
    // output is read and dropped, so that the container never blocks on a
    // full pipe.
    // SAFETY: READY_FD is open (checked above) and owned by nothing else.
    unsafe { libc::close(READY_FD) };
    let writer = writer.ok();
    let code = run(writer.clone(), stdout, stderr, &term);
    if let Some(w) = writer {
        w.finish(DRAIN_AFTER_TERM);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_uri_pairs_parse_back_in_any_order() {
        let log = LogSpec {
            dir: "/var/log/pods/default_web_web-x1/c".into(),
            restart_count: 2,
            rotation: Rotation {
                max_size: 65536,
                max_files: 3,
            },
        };
        assert_eq!(
            uri(Path::new("/usr/bin/riklet"), &log),
            "binary:///usr/bin/riklet?logger=/var/log/pods/default_web_web-x1/c\
             &restart_count=2&max_size=65536&max_files=3"
        );
        let shuffled = args(&[
            "max_files",
            "3",
            "logger",
            "/var/log/pods/default_web_web-x1/c",
            "max_size",
            "65536",
            "restart_count",
            "2",
        ]);
        assert_eq!(parse_args(&shuffled), Some(Ok(log)));
    }

    #[test]
    fn query_characters_are_escaped() {
        let log = LogSpec {
            dir: "/l/a&b=c+d%".into(),
            restart_count: 0,
            rotation: Rotation::default(),
        };
        assert!(
            uri(Path::new("/opt/my riklet"), &log)
                .starts_with("binary:///opt/my%20riklet?logger=/l/a%26b%3Dc%2Bd%25&"),
        );
    }

    #[test]
    fn other_arguments_are_not_a_logger_s() {
        assert_eq!(parse_args(&args(&["status"])), None);
        assert_eq!(parse_args(&args(&["--node-name", "logger"])), None);
        assert_eq!(
            parse_args(&args(&["logger", "/d", "max_size", "1"])),
            Some(Err(LoggerArgsError::Missing(RESTART_COUNT)))
        );
        let bad = args(&[
            "logger",
            "/d",
            "restart_count",
            "x",
            "max_size",
            "1",
            "max_files",
            "1",
        ]);
        assert!(matches!(
            parse_args(&bad),
            Some(Err(LoggerArgsError::NotANumber {
                key: RESTART_COUNT,
                ..
            }))
        ));
        let unknown = args(&["logger", "/d", "color", "red"]);
        assert_eq!(
            parse_args(&unknown),
            Some(Err(LoggerArgsError::Unknown("color".into())))
        );
    }
}
