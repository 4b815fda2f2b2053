//! Starting the container's process: created directly in its v2 cgroup
//! (`clone3` with `CLONE_INTO_CGROUP`), then, before `exec`, moved into its
//! v1 cgroups (hybrid hosts) and the pod's network namespace, with
//! privileges dropped. No instruction of the workload runs outside its
//! limits or its network.
//!
//! Why `clone3`: moving a process into a cgroup (a write to
//! `cgroup.procs`) takes the kernel's global `cgroup_threadgroup_rwsem` for
//! writing, which first waits for an RCU grace period unless another move
//! just happened: 10-15 ms on a busy 2-CPU machine, once the largest step
//! of a start. A process created in its cgroup takes that lock for reading
//! only. v1 hierarchies have no such creation: on a hybrid host the child
//! moves itself into them through their `tasks` files. It has one thread
//! until `exec`, so moving the thread moves the process, and a thread move
//! does not wait for the grace period. A kernel without
//! `clone3` or `CLONE_INTO_CGROUP` (before 5.7) gets a plain `fork` and a
//! move into the v2 cgroup too.
//!
//! The child runs Rust code between the fork and `exec` (building the
//! command's environment, [`CommandExt::exec`]): the shim forks while it
//! has a single thread, so no lock of the allocator can be held by a thread
//! that does not exist in the child.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::protocol::{DEFAULT_PATH, ShimSpec};

/// `CLONE_INTO_CGROUP` of `linux/sched.h` (libc's constant has the wrong
/// width).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The running container process.
#[derive(Debug)]
pub struct Child {
    pub pid: Pid,
    /// Read ends of its stdout and stderr.
    pub stdout: PipeReader,
    pub stderr: PipeReader,
}

/// Why the process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    /// The exit code a shell would give: 127 when the executable does not
    /// exist, 126 for any other failure.
    pub code: i32,
    pub message: String,
}

impl SpawnError {
    fn setup(message: String) -> Self {
        SpawnError { code: 126, message }
    }
}

/// How the container's process ended (`waitpid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Starts the container's process; returns once it has called `exec`.
///
/// # Safety
///
/// The calling process must have a single thread: the child runs Rust
/// code (allocations included) between the fork and `exec`, which would
/// deadlock on a lock another thread held at the fork.
pub unsafe fn spawn(spec: &ShimSpec) -> Result<Child, SpawnError> {
    let netns = match &spec.netns {
        None => None,
        Some(path) => Some(File::open(path).map_err(|e| {
            SpawnError::setup(format!(
                "cannot open network namespace {}: {e}",
                path.display()
            ))
        })?),
    };
    let cgroup = File::options()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&spec.cgroup_v2)
        .map_err(|e| {
            SpawnError::setup(format!(
                "cannot open cgroup {}: {e}",
                spec.cgroup_v2.display()
            ))
        })?;
    let pipes = (|| Ok::<_, io::Error>((io::pipe()?, io::pipe()?, io::pipe()?)))()
        .map_err(|e| SpawnError::setup(format!("cannot create pipes: {e}")))?;
    let ((stdout, out_w), (stderr, err_w), (report_r, report_w)) = pipes;
    let cmd = command(spec, netns.as_ref(), out_w, err_w);
    let pid = match clone_into(&cgroup) {
        Ok(Some(pid)) => pid,
        Ok(None) => exec_child(cmd, &report_w, None),
        Err(e) if clone_into_unsupported(&e) => {
            // SAFETY: the caller has a single thread (this function's
            // contract).
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Parent { child }) => child,
                Ok(nix::unistd::ForkResult::Child) => {
                    exec_child(cmd, &report_w, Some(&spec.cgroup_v2))
                }
                Err(e) => return Err(SpawnError::setup(format!("cannot fork: {e}"))),
            }
        }
        Err(e) => return Err(SpawnError::setup(format!("cannot clone: {e}"))),
    };
    // The parent's copies of the child's ends: the report pipe reads EOF
    // once `exec` closed the child's (close-on-exec) copy.
    drop(cmd);
    drop(report_w);
    match read_report(report_r) {
        None => Ok(Child {
            pid,
            stdout,
            stderr,
        }),
        Some(errno) => {
            let _ = wait(pid);
            let err = io::Error::from_raw_os_error(errno);
            let code = if err.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            Err(SpawnError {
                code,
                message: format!("cannot start {}: {err}", spec.exec.display()),
            })
        }
    }
}

/// Waits for the child to end (not for its stops).
pub fn wait(pid: Pid) -> io::Result<Ended> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(Ended {
                    exit_code: Some(code),
                    signal: None,
                });
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(Ended {
                    exit_code: None,
                    signal: Some(signal as i32),
                });
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `clone3(CLONE_INTO_CGROUP)`: `Some(pid)` in the parent, `None` in the
/// child, which starts in `cgroup` (an `O_PATH` descriptor of its
/// directory).
fn clone_into(cgroup: &File) -> io::Result<Option<Pid>> {
    // SAFETY: clone_args is plain integers; all-zero is its documented
    // default (no stack, no pidfd, no tid pointers).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    // SAFETY: without CLONE_VM and a stack, clone3 is fork: the child gets
    // a copy of the address space and continues here. The pointer and size
    // describe `args`, which outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// Errors of a kernel that has no `clone3` (before 5.3) or no
/// `CLONE_INTO_CGROUP` (before 5.7).
fn clone_into_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
    )
}

/// In the child: joins the v2 cgroup if it was not created in it, then
/// `exec`s; on failure, sends the error number through `report` and exits.
fn exec_child(mut cmd: Command, report: &PipeWriter, join_v2: Option<&Path>) -> ! {
    let err = match join_v2.map(|dir| join(&dir.join("cgroup.procs"))) {
        Some(Err(e)) => e,
        _ => cmd.exec(),
    };
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let mut report = report;
    let _ = report.write_all(&errno.to_ne_bytes());
    // SAFETY: ends the forked child without running the parent's exit
    // handlers or flushing its copied buffers.
    unsafe { libc::_exit(127) }
}

/// Moves the calling process into the cgroup of `procs` (a `cgroup.procs`
/// file).
fn join(procs: &Path) -> io::Result<()> {
    File::options().write(true).open(procs)?.write_all(b"0")
}

/// The error number a failed child sent, or `None` once `exec` closed the
/// pipe.
fn read_report(mut report: PipeReader) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match report.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}

/// The child's command: cleared environment, stdin from /dev/null, output
/// to the pipes, working directory `/`, and a `pre_exec` that joins the v1
/// cgroups and the pod's network namespace (`netns`, opened with
/// `O_CLOEXEC`, kept open by the caller until the child has `exec`ed),
/// restores the signals the shim ignores, drops privileges and sets
/// `no_new_privs` — in that order, since joining needs root — and leaves
/// no descriptor but 0, 1 and 2 open across `exec`.
fn command(
    spec: &ShimSpec,
    netns: Option<&File>,
    stdout: PipeWriter,
    stderr: PipeWriter,
) -> Command {
    let mut cmd = Command::new(&spec.exec);
    cmd.args(&spec.args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let procs: Vec<CString> = spec
        .v1_tasks_files
        .iter()
        .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    let (uid, gid) = (spec.uid, spec.gid);
    let netns_fd = netns.map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs in the child just before exec; it only makes
    // raw system calls on data prepared before the fork. `netns_fd` stays
    // open until the child has exec'ed (the caller holds it).
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
            // The workload gets stdin, stdout and stderr, nothing else.
            crate::fds::cloexec_above_stdio()
        });
    }
    cmd
}
