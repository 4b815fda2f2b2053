//! What a long-running service owes its service manager (systemd): the
//! `sd_notify` messages (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`),
//! the watchdog period, a process that dies on any panic, and the faults
//! a test can inject into a debug build.
//!
//! Shared by `rik-scheduler` and the riklet (which links this crate for
//! `--standalone` anyway). The notification is one datagram to the socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); without that variable every call does nothing. The
//! `sd-notify` crate does the same but cannot reach abstract sockets,
//! which systemd may hand out; the protocol is a single `send`.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The service manager's notification socket, or nothing (every message
/// is then dropped). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// Why `NOTIFY_SOCKET` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET {socket:?}")]
pub struct NotifyError {
    socket: OsString,
    #[source]
    source: io::Error,
}

impl Notifier {
    /// The socket named by `NOTIFY_SOCKET`, if set. Call it before any
    /// thread starts: it removes the variable (and the watchdog's) so that
    /// the processes this one starts do not talk to the service manager
    /// in its name.
    ///
    /// # Safety
    /// No other thread may run (it changes the environment).
    pub unsafe fn from_env() -> (Result<Notifier, NotifyError>, Option<Duration>) {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        // SAFETY: the caller guarantees a single thread.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        let notifier = match socket {
            None => Ok(Notifier::default()),
            Some(s) => Notifier::connect(&s).map_err(|source| NotifyError { socket: s, source }),
        };
        (notifier, watchdog)
    }

    /// A notifier that sends to `socket` (a path, or `@name`).
    pub fn connect(socket: &std::ffi::OsStr) -> io::Result<Notifier> {
        let bytes = socket.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(socket)?,
        };
        let target = Target {
            socket: UnixDatagram::unbound()?,
            addr,
        };
        Ok(Notifier {
            target: Some(Arc::new(target)),
        })
    }

    /// Whether messages go anywhere.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The service is up: started units ordered after it may start.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// The one-line status `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}\n"));
    }

    /// The watchdog ping: the service is still making progress.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    /// The service is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping\n");
    }

    /// Sends one message; a failure is logged, never fatal: the service
    /// runs on whatever its manager hears.
    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = target.socket.send_to_addr(message.as_bytes(), &target.addr) {
            tracing::warn!(error = %e, message = message.trim_end(), "cannot notify the service manager");
        }
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, as systemd
/// advises, when it is set for this process (`WATCHDOG_PID` absent or
/// ours) and not zero.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

/// A panic on any thread or task ends the process, the panic in the log
/// and on stderr: a service whose main loop died must not stay up looking
/// healthy (tokio would only end that task); the service manager restarts
/// it and its recovery takes over.
pub fn abort_on_panic(program: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "a {program} task panicked; aborting");
        default(info);
        std::process::abort();
    }));
}

/// A fault that a test injects into a debug build, named by an
/// environment variable; release builds never read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestFault {
    /// `wedge-agent=FILE`: the riklet's agent loop stops for good at its
    /// first watchdog ping after FILE exists, as a deadlocked loop would.
    WedgeAgent(PathBuf),
    /// `panic-task`: a spawned tokio task panics once the service runs.
    PanicTask,
    /// `panic-thread`: a std thread panics once the service runs.
    PanicThread,
}

impl TestFault {
    /// The fault `var` names, in a debug build.
    pub fn from_env(var: &str) -> Option<TestFault> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let value = std::env::var(var).ok()?;
        let fault = match value.split_once('=') {
            Some(("wedge-agent", file)) => TestFault::WedgeAgent(file.into()),
            _ if value == "panic-task" => TestFault::PanicTask,
            _ if value == "panic-thread" => TestFault::PanicThread,
            _ => {
                tracing::warn!(var, value, "unknown test fault ignored");
                return None;
            }
        };
        tracing::warn!(var, fault = ?fault, "test fault injected");
        Some(fault)
    }

    /// Injects a panic fault (on the current tokio runtime for a task).
    pub fn inject_panic(&self) {
        match self {
            TestFault::PanicTask => {
                tokio::spawn(async { panic!("test fault: a spawned task panics") });
            }
            TestFault::PanicThread => {
                std::thread::spawn(|| panic!("test fault: a std thread panics"));
            }
            TestFault::WedgeAgent(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_period_for_this_process() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifies_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::connect(path.as_os_str()).expect("connect");
        notifier.ready("running 2 pods");
        assert_eq!(receive(&server), "READY=1\nSTATUS=running 2 pods\n");
        notifier.watchdog();
        assert_eq!(receive(&server), "WATCHDOG=1\n");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        let name = format!("rik-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let server = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier::connect(format!("@{name}").as_ref()).expect("connect");
        notifier.status("registering");
        assert_eq!(receive(&server), "STATUS=registering\n");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let notifier = Notifier::default();
        assert!(!notifier.is_active());
        notifier.ready("ready");
    }
}
