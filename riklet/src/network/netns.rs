//! Named network namespaces under `/run/netns`, the layout `ip netns`,
//! CNI plugins and runc all understand.
//!
//! A namespace is created by a dedicated thread that calls
//! `unshare(CLONE_NEWNET)` and bind-mounts its own `ns/net` onto the name,
//! then exits: the mount keeps the namespace alive, and no thread of the
//! riklet (least of all a tokio worker) is left in a foreign namespace.
//! Netlink sockets inside a namespace are opened the same way: a thread
//! enters it with `setns`, opens the socket (a netlink socket belongs to
//! the namespace it was created in) and exits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use super::{NetworkError, Result};

/// Where named network namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// IPv6 settings of the links a namespace creates from now on, as seen by
/// a thread inside it (`/proc/sys/net` shows the opener's namespace).
const IPV6_DEFAULT: &str = "default";

/// Default prefix of the riklet's namespace names (`[network]
/// netns_prefix`).
pub const NETNS_PREFIX: &str = "rik-";

/// `/run/netns/<prefix><instance>`; the id must have been validated.
/// `/run/netns` is shared by every riklet of the machine and a moved
/// instance keeps its id, so riklets on one machine need distinct
/// prefixes.
pub fn path_of(prefix: &str, instance_id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("{prefix}{instance_id}"))
}

/// Whether `path` is a mounted network namespace (and not a leftover file).
pub(crate) fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so that
/// namespaces mounted by a riklet running in its own mount namespace (a
/// systemd unit with `PrivateTmp=` and friends) are seen by every process.
pub(crate) fn prepare_dir() -> Result<()> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| NetworkError::Io {
        what: "creating the netns directory".into(),
        path: dir.to_path_buf(),
        source,
    })?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => nix::mount::mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| shared()),
        Err(e) => Err(e),
    }
    .map_err(|source| NetworkError::Sys {
        what: format!("making {} a shared mount", dir.display()),
        source,
    })
}

/// Creates the named namespace `path` unless it exists.
pub(crate) async fn create(path: &Path) -> Result<()> {
    if exists(path) {
        return Ok(());
    }
    // An empty file is what a crash between creating it and mounting on it
    // leaves: reuse it. mode 0 as iproute2: the file is only a mount point.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o000)
        .open(path)
        .map_err(|source| NetworkError::Io {
            what: "creating the netns mount point".into(),
            path: path.to_path_buf(),
            source,
        })?;
    let target = path.to_path_buf();
    let mounted = in_thread("creating a network namespace", move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Sys {
            what: "unshare(CLONE_NEWNET)".into(),
            source,
        })?;
        // The pod's eth0, created later in this namespace, gets no IPv6
        // (`lo`, already there, keeps `::1`): see `super::link::disable_ipv6`.
        super::link::disable_ipv6(IPV6_DEFAULT)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| NetworkError::Sys {
            what: format!("bind-mounting the new namespace on {}", target.display()),
            source,
        })
    })
    .await
    .and_then(|r| r);
    if mounted.is_err() {
        let _ = std::fs::remove_file(path);
    }
    mounted
}

/// Unmounts and unlinks the named namespace; nothing to do if it is gone.
/// Processes still inside keep the namespace itself until they exit.
pub(crate) fn remove(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a leftover file).
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
        Err(source) => {
            return Err(NetworkError::Sys {
                what: format!("unmounting {}", path.display()),
                source,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::Io {
            what: "removing the netns mount point".into(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Opens a file descriptor of the namespace (for `IFLA_NET_NS_FD`).
pub(crate) fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| NetworkError::Io {
        what: "opening the network namespace".into(),
        path: path.to_path_buf(),
        source,
    })
}

/// A route netlink socket of the namespace `path`, registered with the
/// current tokio runtime.
pub(crate) async fn netlink_socket(path: &Path) -> Result<TokioSocket> {
    let ns = open(path)?;
    let what = format!("opening a netlink socket in {}", path.display());
    let socket = in_thread("entering a network namespace", move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetworkError::Sys {
            what: what.clone(),
            source,
        })?;
        Socket::new(NETLINK_ROUTE).map_err(|source| NetworkError::Socket { what, source })
    })
    .await??;
    // SAFETY: the descriptor comes from `into_raw_fd` of an open socket,
    // whose ownership moves into the TokioSocket. `from_raw_fd` makes it
    // non-blocking and registers it with the current runtime (we are in
    // one: this fn is awaited on it).
    Ok(unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) })
}

/// Runs `f` on a new thread that exits afterwards (so that namespace
/// changes die with it) and awaits its result without blocking the runtime.
pub(crate) async fn in_thread<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("riklet-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|source| NetworkError::Thread { what, source })?;
    rx.await.map_err(|_| NetworkError::ThreadPanicked { what })
}
