//! Descriptors a process inherited and must not hand on.
//!
//! Rust opens everything close-on-exec, but a process also inherits the
//! open descriptors of whoever started it: a lock held by a script, a
//! terminal, a socket of a service manager. Without care they would travel
//! from the riklet to every shim and from each shim into the workload,
//! where they keep the lock held or the socket open for as long as the pod
//! runs.

use std::io;

/// Marks every descriptor above stderr close-on-exec, so that the next
/// `exec` keeps only stdin, stdout and stderr. Async-signal-safe (raw
/// system calls only): it may run between `fork` and `exec`.
pub fn cloexec_above_stdio() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor
    // flags; it closes nothing.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one fcntl per possible descriptor.
    // SAFETY: sysconf and fcntl on descriptor numbers touch no memory.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(3, 1 << 16) as i32;
    for fd in 3..max {
        // SAFETY: as above; a descriptor that is not open fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    #[test]
    fn inherited_descriptors_become_close_on_exec() {
        // A descriptor without the flag, as a parent process would leave.
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: flag changes on a descriptor this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        super::cloexec_above_stdio().unwrap();
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // stdin, stdout and stderr are left as they are.
        let stderr = unsafe { libc::fcntl(2, libc::F_GETFD) };
        assert_eq!(stderr & libc::FD_CLOEXEC, 0);
    }
}
