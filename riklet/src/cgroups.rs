//! Pod cgroups on hybrid (v1 controllers + controller-less v2) and pure v2 hosts.
//!
//! Every container gets one cgroup, `<root>/<instance>_<container>`, in each
//! hierarchy the host has. `cgroups-rs` creates it and applies limits in the
//! hierarchy that owns the controllers (v1 on hybrid hosts, v2 on pure v2
//! hosts); on hybrid hosts the riklet also creates the v2 twin itself,
//! because eBPF cgroup programs and `bpf_get_current_cgroup_id` only see the
//! v2 hierarchy and `cgroups-rs` does not place tasks there.
//!
//! A bare process is created in its v2 cgroup ([`ContainerCgroup::v2_dir`],
//! `clone3` with `CLONE_INTO_CGROUP`) and joins its v1 cgroups
//! ([`ContainerCgroup::v1_tasks_files`]) before `exec` (see the
//! `riklet-shim` crate), so no instruction of the workload ever runs outside
//! its limits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cgroups_rs::fs::cgroup_builder::CgroupBuilder;
use cgroups_rs::fs::hierarchies::{self, V1};
use cgroups_rs::fs::{Cgroup, Hierarchy};

/// v1 controllers a pod cgroup is created in (others are left alone).
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
/// CFS period used for CPU limits (kubelet's default).
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup v2 hierarchy is mounted (needed for eBPF accounting).
    #[error("no cgroup v2 hierarchy found (looked for /sys/fs/cgroup and /sys/fs/cgroup/unified)")]
    NoV2,
    /// cgroups-rs refused an operation.
    #[error("cgroup {path}")]
    Controller {
        path: String,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    /// A file operation under the cgroup filesystem failed.
    #[error("cgroup {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Processes were still in the cgroup after being killed.
    #[error("cgroup {0} still has processes after SIGKILL")]
    Busy(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// CPU and memory limits of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// Which cgroup hierarchies this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1 controllers under `/sys/fs/cgroup/<ctrl>`, v2 (no controllers) at `v2`.
    Hybrid { v2: PathBuf },
    /// One v2 hierarchy with the controllers.
    Unified { v2: PathBuf },
}

impl Layout {
    /// Detects the layout from the mounted filesystems.
    pub fn detect() -> Result<Self> {
        let unified_root = Path::new("/sys/fs/cgroup");
        if unified_root.join("cgroup.controllers").exists() {
            return Ok(Layout::Unified {
                v2: unified_root.to_path_buf(),
            });
        }
        let hybrid = unified_root.join("unified");
        if hybrid.join("cgroup.procs").exists() {
            return Ok(Layout::Hybrid { v2: hybrid });
        }
        Err(CgroupError::NoV2)
    }

    /// Mount point of the v2 hierarchy.
    pub fn v2_mount(&self) -> &Path {
        match self {
            Layout::Hybrid { v2 } | Layout::Unified { v2 } => v2,
        }
    }
}

/// Creates, inspects and removes the cgroups of the riklet's containers.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: Layout,
    /// Name of the riklet's root cgroup in every hierarchy (e.g. `riklet`).
    root: String,
}

impl CgroupManager {
    /// Detects the host layout and makes sure the root cgroup exists.
    pub fn new(root: &str) -> Result<Self> {
        let manager = CgroupManager {
            layout: Layout::detect()?,
            root: root.to_string(),
        };
        let v2_root = manager.v2_root();
        fs::create_dir_all(&v2_root).map_err(io_err(&v2_root))?;
        Ok(manager)
    }

    /// The host layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The riklet's root cgroup in the v2 hierarchy (where eBPF attaches).
    pub fn v2_root(&self) -> PathBuf {
        self.layout.v2_mount().join(&self.root)
    }

    /// Handle on the cgroup of one container (it may not exist yet).
    pub fn container(&self, instance: &str, container: &str) -> ContainerCgroup {
        ContainerCgroup {
            layout: self.layout.clone(),
            rel: format!("{}/{instance}_{container}", self.root),
        }
    }

    /// Names (`<instance>_<container>`) of the cgroups under the root: what
    /// exists on the host, to compare with the runtime memory.
    pub fn list(&self) -> Result<Vec<String>> {
        let root = self.v2_root();
        let mut names = Vec::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            if entry.file_type().map_err(io_err(&root))?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Handle on an existing cgroup found by [`CgroupManager::list`].
    pub fn by_name(&self, name: &str) -> ContainerCgroup {
        ContainerCgroup {
            layout: self.layout.clone(),
            rel: format!("{}/{name}", self.root),
        }
    }
}

/// The cgroup(s) of one container, across hierarchies.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    layout: Layout,
    /// Path relative to every hierarchy's mount point.
    rel: String,
}

impl ContainerCgroup {
    /// Handle on the cgroup at `path` (relative to every hierarchy's mount
    /// point, a leading `/` allowed) in `layout`: one placed by another
    /// runtime, e.g. the `cgroupsPath` of a containerd container.
    pub fn at(layout: Layout, path: &str) -> Self {
        ContainerCgroup {
            layout,
            rel: path.trim_start_matches('/').to_string(),
        }
    }

    /// Path relative to the hierarchies' mount points.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The v2 directory (eBPF accounting, `cgroup.kill`, identity checks).
    pub fn v2_dir(&self) -> PathBuf {
        self.layout.v2_mount().join(&self.rel)
    }

    fn v1_dirs(&self) -> Vec<PathBuf> {
        match self.layout {
            Layout::Unified { .. } => vec![],
            Layout::Hybrid { .. } => V1_CONTROLLERS
                .iter()
                .map(|c| Path::new("/sys/fs/cgroup").join(c))
                .filter(|mount| mount.exists())
                .map(|mount| mount.join(&self.rel))
                .collect(),
        }
    }

    /// The container's directory in the v1 hierarchy of `controller`
    /// (`/sys/fs/cgroup/<controller>/<rel>`); `None` on pure v2 hosts or
    /// when that controller is not mounted.
    pub fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        match self.layout {
            Layout::Unified { .. } => None,
            Layout::Hybrid { .. } => {
                let mount = Path::new("/sys/fs/cgroup").join(controller);
                mount.exists().then(|| mount.join(&self.rel))
            }
        }
    }

    /// Creates the cgroup in every hierarchy and applies the limits.
    pub fn create(&self, limits: Limits) -> Result<()> {
        let mut builder = CgroupBuilder::new(&self.rel).set_specified_controllers(
            V1_CONTROLLERS
                .iter()
                .filter(|c| self.controller_available(c))
                .map(|c| c.to_string())
                .collect(),
        );
        if let Some(millis) = limits.cpu_millis {
            let quota = (millis * CPU_PERIOD_US / 1000).max(1000) as i64;
            builder = builder.cpu().period(CPU_PERIOD_US).quota(quota).done();
        }
        if let Some(bytes) = limits.memory_bytes {
            builder = builder.memory().memory_hard_limit(bytes as i64).done();
        }
        builder
            .build(hierarchy())
            .map_err(|source| CgroupError::Controller {
                path: self.rel.clone(),
                source,
            })?;
        if let Layout::Hybrid { .. } = self.layout {
            let v2 = self.v2_dir();
            fs::create_dir_all(&v2).map_err(io_err(&v2))?;
        }
        Ok(())
    }

    fn controller_available(&self, controller: &str) -> bool {
        match &self.layout {
            Layout::Hybrid { .. } => Path::new("/sys/fs/cgroup").join(controller).exists(),
            Layout::Unified { v2 } => {
                // cpuacct is folded into cpu on v2.
                let wanted = if controller == "cpuacct" {
                    "cpu"
                } else {
                    controller
                };
                fs::read_to_string(v2.join("cgroup.controllers"))
                    .map(|s| s.split_whitespace().any(|c| c == wanted))
                    .unwrap_or(false)
                    && controller != "cpuacct"
            }
        }
    }

    /// `tasks` files of the v1 hierarchies (none on pure v2 hosts), which
    /// a new, single-threaded process writes `0` into to join them. Moving
    /// one thread takes the cgroup lock the cheap way; moving a whole
    /// process through `cgroup.procs` first waits for an RCU grace period
    /// (measured on an idle 2-CPU hybrid host: 5-14 ms against 0.3-0.5 ms),
    /// and the process has one thread until it `exec`s.
    pub fn v1_tasks_files(&self) -> Vec<PathBuf> {
        self.v1_files("tasks")
    }

    fn v1_files(&self, name: &str) -> Vec<PathBuf> {
        self.v1_dirs()
            .into_iter()
            .map(|d| d.join(name))
            .filter(|f| f.exists())
            .collect()
    }

    /// `cgroup.procs` files of every hierarchy (v1 controllers first, then
    /// v2), to move a process that runs already.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        let mut files = self.v1_files("cgroup.procs");
        files.push(self.v2_dir().join("cgroup.procs"));
        files
    }

    /// Pids currently in the cgroup (v2 view).
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.v2_dir().join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Whether `pid` is a member of the v2 cgroup: part of the identity
    /// check that guards against pid reuse.
    pub fn contains(&self, pid: i32) -> bool {
        v2_cgroup_of(pid).is_some_and(|path| path.strip_prefix('/') == Some(self.rel.as_str()))
    }

    /// Sends `signal` to every process of the cgroup.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Kills every process (cgroup.kill where the kernel has it, else
    /// SIGKILL to each pid until the cgroup is empty).
    pub fn kill_all(&self) -> Result<()> {
        let kill_file = self.v2_dir().join("cgroup.kill");
        for _ in 0..50 {
            if self.pids().is_empty() {
                return Ok(());
            }
            if kill_file.exists() {
                let _ = fs::write(&kill_file, "1");
            } else {
                self.signal_all(nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.pids().is_empty() {
            Ok(())
        } else {
            Err(CgroupError::Busy(self.rel.clone()))
        }
    }

    /// Kills what is left and removes the cgroup from every hierarchy.
    pub fn remove(&self) -> Result<()> {
        self.kill_all()?;
        let cg = Cgroup::load(hierarchy(), &self.rel);
        if cg.exists() {
            cg.delete().map_err(|source| CgroupError::Controller {
                path: self.rel.clone(),
                source,
            })?;
        }
        // cgroups-rs only knows the controllers' hierarchy: remove the rest.
        let mut dirs = self.v1_dirs();
        dirs.push(self.v2_dir());
        for dir in dirs {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }
}

/// The hierarchy cgroups-rs works in. On hybrid hosts `hierarchies::auto()`
/// parses the whole of `/proc/self/mountinfo`, which holds a line per pod
/// network namespace: read on every call, it made each pod start and
/// delete cost O(pods). It is read once here: the cgroup mounts it keeps do
/// not change while the riklet runs.
fn hierarchy() -> Box<dyn Hierarchy> {
    static V1_MOUNTS: OnceLock<Option<V1>> = OnceLock::new();
    match V1_MOUNTS.get_or_init(|| (!hierarchies::is_cgroup2_unified_mode()).then(V1::new)) {
        Some(v1) => Box::new(v1.clone()),
        None => hierarchies::auto(),
    }
}

/// The v2 cgroup of a process, as `/proc/<pid>/cgroup` names it (its path
/// under the v2 mount, with a leading `/`); `None` when the process is gone.
pub fn v2_cgroup_of(pid: i32) -> Option<String> {
    procfs::process::Process::new(pid)
        .ok()?
        .cgroups()
        .ok()?
        .into_iter()
        .find(|g| g.hierarchy == 0)
        .map(|g| g.pathname)
}

#[cfg(test)]
mod tests {
    #[test]
    fn v2_cgroup_of_reads_the_unified_line() {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let want = text.lines().find_map(|l| l.strip_prefix("0::"));
        let got = super::v2_cgroup_of(std::process::id() as i32);
        assert_eq!(got.as_deref(), want);
        assert_eq!(super::v2_cgroup_of(i32::MAX), None);
    }
}
