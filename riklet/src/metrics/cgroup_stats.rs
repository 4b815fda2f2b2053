//! CPU, memory and pids statistics of one container, read from its cgroup.
//!
//! On hybrid hosts the figures come from the v1 controllers
//! (`/sys/fs/cgroup/{cpu,cpuacct,memory,pids}/<rel>`), because the v2 twin
//! there has no controllers; on pure v2 hosts from the container's v2
//! directory. Which one applies follows the host layout detected by
//! [`crate::cgroups`]; nothing here assumes a mount point.
//!
//! Every figure is optional: a file the kernel does not have (an older
//! kernel, a controller that is not enabled for the subtree, a cgroup that
//! was just removed) leaves its fields `None`. Reading never fails and never
//! panics; a pod that disappears between two collections simply yields an
//! empty [`CgroupStats`].
//!
//! The memory working set follows cAdvisor (what kubelet and
//! `kubectl top` report): usage minus inactive file pages, floored at 0.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cgroups::ContainerCgroup;

/// v1 `memory.limit_in_bytes` at or above this is "no limit": the kernel
/// reports `PAGE_COUNTER_MAX` pages (9223372036854771712 with 4 KiB pages),
/// and no real limit comes anywhere near 4 EiB.
const V1_UNLIMITED: u64 = 1 << 62;

/// One reading of a container's cgroup. Counters are cumulative since the
/// cgroup was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupStats {
    /// CPU time used, in nanoseconds (v1 `cpuacct.usage`, v2 `usage_usec`).
    pub cpu_usage_ns: Option<u64>,
    /// CFS enforcement periods that elapsed (only with a CPU limit set, and
    /// on v2 only when the `cpu` controller is enabled).
    pub cpu_periods: Option<u64>,
    /// Periods in which the container was throttled.
    pub cpu_throttled_periods: Option<u64>,
    /// Time spent throttled, in nanoseconds.
    pub cpu_throttled_ns: Option<u64>,
    /// Memory charged to the cgroup, page cache included.
    pub memory_usage_bytes: Option<u64>,
    /// Inactive file pages (reclaimable first), from `memory.stat`.
    pub memory_inactive_file_bytes: Option<u64>,
    /// `usage - inactive_file` (cAdvisor's working set), floored at 0.
    pub memory_working_set_bytes: Option<u64>,
    /// The hard limit; `None` when unlimited or unknown.
    pub memory_limit_bytes: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events`
    /// `max`, as runc and cAdvisor map it).
    pub memory_failcnt: Option<u64>,
    /// Times the cgroup was OOM (v2 `memory.events` `oom`; v1 has no
    /// counter for it).
    pub oom_events: Option<u64>,
    /// Processes killed by the OOM killer (v1 `memory.oom_control`
    /// `oom_kill`, v2 `memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Processes and threads in the cgroup.
    pub pids: Option<u64>,
}

/// Reads the statistics of `cgroup` from whichever hierarchy carries its
/// controllers on this host (one-shot; the collector uses a [`StatsReader`]).
pub fn read(cgroup: &ContainerCgroup) -> CgroupStats {
    StatsReader::default().read(cgroup)
}

/// Reads cgroup statistics keeping the files open between cycles: a
/// cgroup file re-read with `pread` at offset 0 costs one system call
/// instead of three (open, read, close) and no path walk, which is most of
/// the cost of a cycle at hundreds of pods.
#[derive(Debug, Default)]
pub struct StatsReader {
    files: HashMap<PathBuf, File>,
    used: HashSet<PathBuf>,
}

impl StatsReader {
    /// Reads the statistics of `cgroup` (see [`read`]).
    pub fn read(&mut self, cgroup: &ContainerCgroup) -> CgroupStats {
        let v1 = V1Dirs {
            cpu: cgroup.v1_dir("cpu"),
            cpuacct: cgroup.v1_dir("cpuacct"),
            memory: cgroup.v1_dir("memory"),
            pids: cgroup.v1_dir("pids"),
        };
        if v1.is_empty() {
            read_v2(&cgroup.v2_dir(), self)
        } else {
            read_v1(&v1, self)
        }
    }

    /// Closes the files not read since the last sweep (removed cgroups).
    pub fn sweep(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.files.retain(|path, _| used.contains(path));
    }

    /// The content of `path`, through the cached descriptor if any.
    fn text(&mut self, path: &Path) -> Option<String> {
        self.used.insert(path.to_path_buf());
        if let Some(f) = self.files.get(path)
            && let Some(text) = pread_all(f)
        {
            return Some(text);
        }
        let f = File::open(path).ok()?;
        let text = pread_all(&f)?;
        self.files.insert(path.to_path_buf(), f);
        Some(text)
    }
}

/// The whole file from offset 0 (cgroup files regenerate on each read).
fn pread_all(f: &File) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64).ok()?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// A container's directory in each v1 hierarchy (`None`: not mounted).
#[derive(Debug, Default)]
struct V1Dirs {
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl V1Dirs {
    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.cpuacct.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

fn read_v1(dirs: &V1Dirs, r: &mut StatsReader) -> CgroupStats {
    let file = |dir: &Option<PathBuf>, name: &str| dir.as_ref().map(|d| d.join(name));
    let cpu_stat = file(&dirs.cpu, "cpu.stat").and_then(|f| read_keyed(r, &f));
    let memory_stat = file(&dirs.memory, "memory.stat").and_then(|f| read_keyed(r, &f));
    let oom_control = file(&dirs.memory, "memory.oom_control").and_then(|f| read_keyed(r, &f));
    let usage = file(&dirs.memory, "memory.usage_in_bytes").and_then(|f| read_u64(r, &f));
    // `total_*` is hierarchical (the container's children included), which
    // is what usage_in_bytes counts too.
    let inactive_file = memory_stat.as_ref().and_then(|s| {
        s.get("total_inactive_file")
            .or_else(|| s.get("inactive_file"))
    });
    CgroupStats {
        cpu_usage_ns: file(&dirs.cpuacct, "cpuacct.usage").and_then(|f| read_u64(r, &f)),
        cpu_periods: cpu_stat.as_ref().and_then(|s| s.get("nr_periods")),
        cpu_throttled_periods: cpu_stat.as_ref().and_then(|s| s.get("nr_throttled")),
        cpu_throttled_ns: cpu_stat.as_ref().and_then(|s| s.get("throttled_time")),
        memory_usage_bytes: usage,
        memory_inactive_file_bytes: inactive_file,
        memory_working_set_bytes: working_set(usage, inactive_file),
        memory_limit_bytes: file(&dirs.memory, "memory.limit_in_bytes")
            .and_then(|f| read_u64(r, &f))
            .filter(|&limit| limit < V1_UNLIMITED),
        memory_failcnt: file(&dirs.memory, "memory.failcnt").and_then(|f| read_u64(r, &f)),
        oom_events: None,
        oom_kills: oom_control.as_ref().and_then(|s| s.get("oom_kill")),
        pids: file(&dirs.pids, "pids.current").and_then(|f| read_u64(r, &f)),
    }
}

fn read_v2(dir: &Path, r: &mut StatsReader) -> CgroupStats {
    let cpu_stat = read_keyed(r, &dir.join("cpu.stat"));
    let memory_stat = read_keyed(r, &dir.join("memory.stat"));
    let events = read_keyed(r, &dir.join("memory.events"));
    let usage = read_u64(r, &dir.join("memory.current"));
    let inactive_file = memory_stat.as_ref().and_then(|s| s.get("inactive_file"));
    let usec = |key| {
        cpu_stat
            .as_ref()
            .and_then(|s| s.get(key))
            .map(|us| us.saturating_mul(1000))
    };
    CgroupStats {
        cpu_usage_ns: usec("usage_usec"),
        cpu_periods: cpu_stat.as_ref().and_then(|s| s.get("nr_periods")),
        cpu_throttled_periods: cpu_stat.as_ref().and_then(|s| s.get("nr_throttled")),
        cpu_throttled_ns: usec("throttled_usec"),
        memory_usage_bytes: usage,
        memory_inactive_file_bytes: inactive_file,
        memory_working_set_bytes: working_set(usage, inactive_file),
        // "max" (no limit) does not parse as a number: None.
        memory_limit_bytes: read_u64(r, &dir.join("memory.max")),
        memory_failcnt: events.as_ref().and_then(|e| e.get("max")),
        oom_events: events.as_ref().and_then(|e| e.get("oom")),
        oom_kills: events.as_ref().and_then(|e| e.get("oom_kill")),
        pids: read_u64(r, &dir.join("pids.current")),
    }
}

fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|usage| usage.saturating_sub(inactive_file.unwrap_or(0)))
}

/// A single-number file (`memory.current`, `pids.current`, …); `None` if
/// missing or not a number (`max`).
fn read_u64(r: &mut StatsReader, path: &Path) -> Option<u64> {
    r.text(path)?.trim().parse().ok()
}

/// A flat keyed file (`key value` lines: `cpu.stat`, `memory.stat`,
/// `memory.events`, `memory.oom_control`); `None` if missing.
fn read_keyed(r: &mut StatsReader, path: &Path) -> Option<Keyed> {
    r.text(path).map(Keyed)
}

/// The text of a flat keyed file.
struct Keyed(String);

impl Keyed {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join(name), text).unwrap();
    }

    /// A fake hybrid host: `<root>/<controller>/riklet/pod_c`.
    fn v1_dirs(root: &Path) -> V1Dirs {
        let dir = |c: &str| Some(root.join(c).join("riklet/pod_c"));
        V1Dirs {
            cpu: dir("cpu"),
            cpuacct: dir("cpuacct"),
            memory: dir("memory"),
            pids: dir("pids"),
        }
    }

    #[test]
    fn v1_reads_every_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = v1_dirs(tmp.path());
        let (cpu, cpuacct, memory, pids) = (
            dirs.cpu.as_deref().unwrap(),
            dirs.cpuacct.as_deref().unwrap(),
            dirs.memory.as_deref().unwrap(),
            dirs.pids.as_deref().unwrap(),
        );
        write(cpuacct, "cpuacct.usage", "2500000000\n");
        write(
            cpu,
            "cpu.stat",
            "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\nnr_bursts 0\nburst_time 0\n",
        );
        write(memory, "memory.usage_in_bytes", "10485760\n");
        write(
            memory,
            "memory.stat",
            "cache 4096\ninactive_file 1\ntotal_cache 8192\ntotal_inactive_file 2097152\n",
        );
        write(memory, "memory.limit_in_bytes", "67108864\n");
        write(memory, "memory.failcnt", "3\n");
        write(
            memory,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(pids, "pids.current", "5\n");

        let stats = read_v1(&dirs, &mut StatsReader::default());
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: Some(2_500_000_000),
                cpu_periods: Some(40),
                cpu_throttled_periods: Some(7),
                cpu_throttled_ns: Some(350_000_000),
                memory_usage_bytes: Some(10_485_760),
                memory_inactive_file_bytes: Some(2_097_152),
                memory_working_set_bytes: Some(10_485_760 - 2_097_152),
                memory_limit_bytes: Some(67_108_864),
                memory_failcnt: Some(3),
                oom_events: None,
                oom_kills: Some(2),
                pids: Some(5),
            }
        );
    }

    #[test]
    fn v1_unlimited_memory_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = v1_dirs(tmp.path());
        let memory = dirs.memory.as_deref().unwrap();
        write(memory, "memory.limit_in_bytes", "9223372036854771712\n");
        write(memory, "memory.usage_in_bytes", "100\n");
        // inactive_file above usage (it happens, transiently): floor at 0.
        write(memory, "memory.stat", "total_inactive_file 4096\n");
        let stats = read_v1(&dirs, &mut StatsReader::default());
        assert_eq!(stats.memory_limit_bytes, None);
        assert_eq!(stats.memory_working_set_bytes, Some(0));
    }

    #[test]
    fn v2_reads_the_unified_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("riklet/pod_c");
        write(
            &dir,
            "cpu.stat",
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 20\nnr_throttled 4\nthrottled_usec 120000\n",
        );
        write(&dir, "memory.current", "8388608\n");
        write(
            &dir,
            "memory.stat",
            "anon 4096\nfile 8192\ninactive_file 1048576\nactive_file 0\n",
        );
        write(&dir, "memory.max", "33554432\n");
        write(
            &dir,
            "memory.events",
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        write(&dir, "pids.current", "3\n");

        let stats = read_v2(&dir, &mut StatsReader::default());
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: Some(1_500_000_000),
                cpu_periods: Some(20),
                cpu_throttled_periods: Some(4),
                cpu_throttled_ns: Some(120_000_000),
                memory_usage_bytes: Some(8_388_608),
                memory_inactive_file_bytes: Some(1_048_576),
                memory_working_set_bytes: Some(8_388_608 - 1_048_576),
                memory_limit_bytes: Some(33_554_432),
                memory_failcnt: Some(9),
                oom_events: Some(2),
                oom_kills: Some(1),
                pids: Some(3),
            }
        );
    }

    #[test]
    fn v2_without_controllers_or_limit() {
        // A cgroup whose parent did not enable cpu/memory/pids: only the
        // core cpu.stat keys exist; memory.max says "max".
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("riklet/pod_c");
        write(
            &dir,
            "cpu.stat",
            "usage_usec 42\nuser_usec 40\nsystem_usec 2\n",
        );
        write(&dir, "memory.max", "max\n");
        let stats = read_v2(&dir, &mut StatsReader::default());
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_ns: Some(42_000),
                ..CgroupStats::default()
            }
        );
    }

    #[test]
    fn missing_cgroup_reads_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let r = &mut StatsReader::default();
        assert_eq!(read_v2(&tmp.path().join("gone"), r), CgroupStats::default());
        assert_eq!(read_v1(&v1_dirs(tmp.path()), r), CgroupStats::default());
        assert_eq!(read_v1(&V1Dirs::default(), r), CgroupStats::default());
    }

    #[test]
    fn keyed_ignores_prefixes_and_garbage() {
        let k = Keyed("nr_periods_x 1\nnr_periods 2\nbroken\nnr_throttled x\n".into());
        assert_eq!(k.get("nr_periods"), Some(2));
        assert_eq!(k.get("nr_throttled"), None);
        assert_eq!(k.get("absent"), None);
    }
}
