//! Test support shared by the root tests of the eBPF probes: throw-away
//! cgroups and bpffs pin directories that are removed even when a test
//! panics, and names no other test run uses.

use std::{
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A name no other test run uses: prefix, pid, time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The cgroup v2 mount point (/sys/fs/cgroup on pure v2 hosts,
/// /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(mount.split_whitespace().nth(4)?))
    })
}

/// A cgroup v2 directory removed on drop, even when the test panics: its
/// processes are moved back to the hierarchy's root first, its child
/// cgroups removed before it.
pub struct CgroupGuard {
    path: PathBuf,
    v2_root: PathBuf,
}

impl CgroupGuard {
    /// Guards a path that someone else (the code under test) creates.
    pub fn new(path: PathBuf, v2_root: &Path) -> Self {
        assert!(!path.exists(), "{} already exists", path.display());
        Self {
            path,
            v2_root: v2_root.to_owned(),
        }
    }

    /// Creates the directory and guards it.
    pub fn create(path: PathBuf, v2_root: &Path) -> Self {
        let guard = Self::new(path, v2_root);
        fs::create_dir(&guard.path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", guard.path.display()));
        guard
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if let Err(e) = remove_cgroup(&self.path, &self.v2_root) {
            eprintln!("cleanup: removing cgroup {}: {e}", self.path.display());
        }
    }
}

/// Removes a cgroup directory, its children first, after moving its
/// processes to the hierarchy's root.
pub fn remove_cgroup(path: &Path, v2_root: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path(), v2_root)?;
        }
    }
    let procs = fs::read_to_string(path.join("cgroup.procs"))?;
    let mut root_procs = File::options()
        .write(true)
        .open(v2_root.join("cgroup.procs"))?;
    for pid in procs.lines() {
        // One pid per write(2); a process that exited meanwhile is fine.
        let _ = root_procs.write_all(pid.as_bytes());
    }
    // A process that just exited may keep the cgroup busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A bpffs directory whose entries (pins) and itself are removed on drop.
pub struct PinDirGuard(PathBuf);

impl PinDirGuard {
    pub fn new(path: PathBuf) -> Self {
        assert!(!path.exists(), "{} already exists", path.display());
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = fs::remove_file(entry.path()) {
                eprintln!("cleanup: removing pin {}: {e}", entry.path().display());
            }
        }
        if let Err(e) = fs::remove_dir(&self.0) {
            eprintln!("cleanup: removing {}: {e}", self.0.display());
        }
    }
}
