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

/// What [`StatsReader::read`] learns of a container's cgroup.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub stats: CgroupStats,
    /// The cgroup v2 id (the key of the eBPF maps), `None` if the v2
    /// directory is gone.
    pub cgroup_id: Option<u64>,
}

/// Reads the statistics of `cgroup` from whichever hierarchy carries its
/// controllers on this host, every file now (one-shot; the collector keeps
/// a [`StatsReader`]).
pub fn read(cgroup: &ContainerCgroup) -> CgroupStats {
    StatsReader::new(1).read(cgroup, None).stats
}

/// Reads cgroup statistics cycle after cycle, as cheaply as the kernel
/// allows, because at hundreds of pods these reads are most of what the
/// riklet does:
/// - each container's directories are found once, and its files are kept
///   open and re-read with `pread` at offset 0: one system call per file
///   instead of a path walk, open, read and close;
/// - containers are expected in the same order as at the previous
///   readings (the collector's targets only change with the pods): each
///   is found by one comparison with the next expected, not by a hash
///   lookup;
/// - files that change rarely or only under pressure (limits, failcnt, OOM
///   counters, and CPU throttling of a container without a CPU quota) are
///   re-read every `slow_every`-th reading of the container only; the
///   figures in between repeat the last values (the eBPF probe reports OOM
///   kills as they happen);
/// - a container whose tasks did not run (see [`StatsReader::read`]) is
///   not read between its slow readings, and at those reads its memory
///   figures only, which reclaim may have changed; every
///   [`IDLE_FULL_EVERY`]-th slow reading of an idle container reads
///   everything.
///
/// A read of an open file that fails means the cgroup was removed (perhaps
/// to be created again under the same name): the container's files and its
/// cgroup id are then looked up afresh at its next reading. A cgroup not
/// created yet (a container being set up) is looked up at every reading
/// until it exists.
#[derive(Debug)]
pub struct StatsReader {
    /// The containers in the order of the last readings.
    slots: Vec<OpenCgroup>,
    /// Slot of each container by cgroup path (relative).
    index: HashMap<String, usize>,
    /// The slot expected to be read next.
    cursor: usize,
    slow_every: u64,
    buf: Vec<u8>,
}

/// Of an idle container's slow readings, every this many reads every file;
/// the others its memory figures only.
pub const IDLE_FULL_EVERY: u64 = 3;

impl Default for StatsReader {
    fn default() -> Self {
        StatsReader::new(1)
    }
}

impl StatsReader {
    /// A reader that reads the slow-changing files every `slow_every`-th
    /// time (at least every time).
    pub fn new(slow_every: u64) -> Self {
        StatsReader {
            slots: Vec::new(),
            index: HashMap::new(),
            cursor: 0,
            slow_every: slow_every.max(1),
            buf: Vec::new(),
        }
    }

    /// The slot of `cgroup`: the expected next one, else looked up, else a
    /// new one.
    fn slot(&mut self, cgroup: &ContainerCgroup) -> usize {
        let rel = cgroup.rel();
        let slot = match self.slots.get(self.cursor) {
            Some(open) if open.rel == rel => self.cursor,
            _ => match self.index.get(rel) {
                Some(&slot) => slot,
                None => {
                    self.slots.push(OpenCgroup::new(cgroup));
                    self.index.insert(rel.to_string(), self.slots.len() - 1);
                    self.slots.len() - 1
                }
            },
        };
        self.cursor = slot + 1;
        slot
    }

    /// Reads the statistics of `cgroup`. `ran` names the cgroups (by id)
    /// whose tasks ran since the previous reading, `None` if unknown: a
    /// cgroup that did not run used no CPU, started and ended no process
    /// and charged no memory, so between slow readings it is not read
    /// again and its last figures are repeated, and at most slow readings
    /// only its memory is (only memory taken back by reclaim can be missed,
    /// until its next slow reading).
    pub fn read(&mut self, cgroup: &ContainerCgroup, ran: Option<&HashSet<u64>>) -> Reading {
        let slot = self.slot(cgroup);
        let open = &mut self.slots[slot];
        // No id: the cgroup did not exist yet (a container being created)
        // and its files may be missing too: look again.
        if open.files.stale || open.cgroup_id.is_none() {
            *open = OpenCgroup::new(cgroup);
        }
        open.used = true;
        // The first reading reads everything; later slow readings are
        // spread over the cycles by `phase`, not all on the same one.
        let slow = open.reads == 0 || (open.reads + open.phase).is_multiple_of(self.slow_every);
        open.reads += 1;
        let idle = match (ran, open.cgroup_id) {
            (Some(ran), Some(id)) => !ran.contains(&id),
            _ => false,
        };
        if idle && let Some(last) = &mut open.last {
            let full = slow && {
                open.idle_slow += 1;
                open.idle_slow.is_multiple_of(IDLE_FULL_EVERY)
            };
            if !full {
                if slow {
                    let io = &mut FileReader {
                        files: &mut open.files,
                        buf: &mut self.buf,
                    };
                    match &open.dirs {
                        Dirs::V1(dirs) => memory_v1(dirs, io).apply(last),
                        Dirs::V2(dir) => memory_v2(dir, io).apply(last),
                    }
                }
                return Reading {
                    stats: last.clone(),
                    cgroup_id: open.cgroup_id,
                };
            }
        }
        let io = &mut FileReader {
            files: &mut open.files,
            buf: &mut self.buf,
        };
        let stats = match &open.dirs {
            Dirs::V1(dirs) => read_v1(dirs, io, &mut open.slow, slow),
            Dirs::V2(dir) => read_v2(dir, io, &mut open.slow, slow),
        };
        open.last = Some(stats.clone());
        Reading {
            stats,
            cgroup_id: open.cgroup_id,
        }
    }

    /// Forgets (and closes the files of) the cgroups not read since the
    /// last sweep: removed containers. The next readings are expected in
    /// the order of the last ones.
    pub fn sweep(&mut self) {
        let before = self.slots.len();
        self.slots.retain_mut(|open| std::mem::take(&mut open.used));
        if self.slots.len() != before {
            self.index = self
                .slots
                .iter()
                .enumerate()
                .map(|(slot, open)| (open.rel.clone(), slot))
                .collect();
        }
        self.cursor = 0;
    }
}

/// One container's cgroup as the reader knows it.
#[derive(Debug)]
struct OpenCgroup {
    /// The cgroup's path, relative.
    rel: String,
    dirs: Dirs,
    files: Files,
    cgroup_id: Option<u64>,
    /// The figures of the slow files, from their last reading.
    slow: SlowStats,
    /// The last figures read, repeated while the cgroup is idle.
    last: Option<CgroupStats>,
    reads: u64,
    /// Offsets this cgroup's slow readings (a hash of its path).
    phase: u64,
    /// Slow readings while idle, for [`IDLE_FULL_EVERY`].
    idle_slow: u64,
    used: bool,
}

impl OpenCgroup {
    fn new(cgroup: &ContainerCgroup) -> Self {
        let v1 = V1Dirs {
            cpu: cgroup.v1_dir("cpu"),
            cpuacct: cgroup.v1_dir("cpuacct"),
            memory: cgroup.v1_dir("memory"),
            pids: cgroup.v1_dir("pids"),
        };
        let v2 = cgroup.v2_dir();
        OpenCgroup {
            rel: cgroup.rel().to_string(),
            cgroup_id: super::net::cgroup_id(&v2).ok(),
            dirs: if v1.is_empty() {
                Dirs::V2(v2)
            } else {
                Dirs::V1(v1)
            },
            files: Files::default(),
            slow: SlowStats::default(),
            last: None,
            reads: 0,
            phase: {
                use std::hash::{Hash as _, Hasher as _};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                cgroup.rel().hash(&mut h);
                h.finish() % 1024
            },
            idle_slow: 0,
            used: false,
        }
    }
}

#[derive(Debug)]
enum Dirs {
    V1(V1Dirs),
    V2(PathBuf),
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

/// The figures of the slow files, kept between their readings.
#[derive(Debug, Default, Clone, Copy)]
struct SlowStats {
    memory_limit_bytes: Option<u64>,
    memory_failcnt: Option<u64>,
    oom_events: Option<u64>,
    oom_kills: Option<u64>,
    /// v1 `cpu.stat` of a container without a CPU quota (nothing to
    /// throttle): periods, throttled periods, throttled ns.
    cpu_throttling: Option<[Option<u64>; 3]>,
}

/// The open files of one cgroup, by name (names are unique across the v1
/// controllers). A file that could not be opened is remembered as `None`
/// and tried again at the next slow reading.
#[derive(Debug, Default)]
struct Files {
    open: HashMap<&'static str, Option<File>>,
    /// A read of an open file failed: the cgroup is gone.
    stale: bool,
}

impl Files {
    /// Forgets the files that could not be opened, to try them again.
    fn retry_missing(&mut self) {
        self.open.retain(|_, f| f.is_some());
    }
}

/// Reads one cgroup's files into a buffer shared by all of them (a cycle
/// allocates nothing per file).
struct FileReader<'a> {
    files: &'a mut Files,
    buf: &'a mut Vec<u8>,
}

impl FileReader<'_> {
    /// The content of `dir/name`, `None` if it cannot be read.
    fn text(&mut self, dir: Option<&Path>, name: &'static str) -> Option<&str> {
        let file = self
            .files
            .open
            .entry(name)
            .or_insert_with(|| File::open(dir?.join(name)).ok())
            .as_ref()?;
        if !pread_all(file, self.buf) {
            self.files.stale = true;
            return None;
        }
        std::str::from_utf8(self.buf).ok()
    }

    /// A single-number file (`memory.current`, `pids.current`, …); `None`
    /// if missing or not a number (`max`).
    fn u64(&mut self, dir: Option<&Path>, name: &'static str) -> Option<u64> {
        dir?;
        self.text(dir, name)?.trim().parse().ok()
    }

    /// The values of `keys` in a flat keyed file (`key value` lines:
    /// `cpu.stat`, `memory.stat`, `memory.events`, `memory.oom_control`);
    /// `None` if the file is missing.
    fn keyed<const N: usize>(
        &mut self,
        dir: Option<&Path>,
        name: &'static str,
        keys: [&str; N],
    ) -> Option<[Option<u64>; N]> {
        dir?;
        Some(parse_keyed(self.text(dir, name)?, keys))
    }
}

/// The values of `keys` in `key value` lines (one pass over the text).
fn parse_keyed<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut values = [None; N];
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|key| *key == k) {
            values[i] = v.trim().parse().ok();
        }
    }
    values
}

/// Reads the whole file from offset 0 into `buf` (cgroup files regenerate
/// on each read); false if the read failed. A read that does not fill the
/// buffer has reached the end (cgroup files are seq files, which fill a
/// read as far as they can), which saves the second system call that
/// would only return 0.
fn pread_all(f: &File, buf: &mut Vec<u8>) -> bool {
    buf.resize(buf.len().max(4096), 0);
    let mut len = 0;
    loop {
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return false,
        }
        if len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    true
}

fn read_v1(dirs: &V1Dirs, io: &mut FileReader, last: &mut SlowStats, slow: bool) -> CgroupStats {
    let (cpu, memory) = (dirs.cpu.as_deref(), dirs.memory.as_deref());
    let throttling_keys = ["nr_periods", "nr_throttled", "throttled_time"];
    if slow {
        io.files.retry_missing();
        let [oom_kills] = io
            .keyed(memory, "memory.oom_control", ["oom_kill"])
            .unwrap_or_default();
        // No quota (-1): cpu.stat only changes once one is set.
        let no_quota = io.text(cpu, "cpu.cfs_quota_us").map(|q| q.trim() == "-1");
        *last = SlowStats {
            memory_limit_bytes: io
                .u64(memory, "memory.limit_in_bytes")
                .filter(|&limit| limit < V1_UNLIMITED),
            memory_failcnt: io.u64(memory, "memory.failcnt"),
            oom_events: None,
            oom_kills,
            cpu_throttling: match no_quota {
                Some(true) => Some(
                    io.keyed(cpu, "cpu.stat", throttling_keys)
                        .unwrap_or_default(),
                ),
                _ => None,
            },
        };
    }
    let [cpu_periods, cpu_throttled_periods, cpu_throttled_ns] = match last.cpu_throttling {
        Some(t) => t,
        None => io
            .keyed(cpu, "cpu.stat", throttling_keys)
            .unwrap_or_default(),
    };
    let Memory {
        usage,
        inactive_file,
    } = memory_v1(dirs, io);
    CgroupStats {
        cpu_usage_ns: io.u64(dirs.cpuacct.as_deref(), "cpuacct.usage"),
        cpu_periods,
        cpu_throttled_periods,
        cpu_throttled_ns,
        memory_usage_bytes: usage,
        memory_inactive_file_bytes: inactive_file,
        memory_working_set_bytes: working_set(usage, inactive_file),
        memory_limit_bytes: last.memory_limit_bytes,
        memory_failcnt: last.memory_failcnt,
        oom_events: last.oom_events,
        oom_kills: last.oom_kills,
        pids: io.u64(dirs.pids.as_deref(), "pids.current"),
    }
}

fn read_v2(dir: &Path, io: &mut FileReader, last: &mut SlowStats, slow: bool) -> CgroupStats {
    let d = Some(dir);
    if slow {
        io.files.retry_missing();
        let [max, oom, oom_kill] = io
            .keyed(d, "memory.events", ["max", "oom", "oom_kill"])
            .unwrap_or_default();
        *last = SlowStats {
            // "max" (no limit) does not parse as a number: None.
            memory_limit_bytes: io.u64(d, "memory.max"),
            memory_failcnt: max,
            oom_events: oom,
            oom_kills: oom_kill,
            cpu_throttling: None,
        };
    }
    let [
        usage_usec,
        cpu_periods,
        cpu_throttled_periods,
        throttled_usec,
    ] = io
        .keyed(
            d,
            "cpu.stat",
            ["usage_usec", "nr_periods", "nr_throttled", "throttled_usec"],
        )
        .unwrap_or_default();
    let Memory {
        usage,
        inactive_file,
    } = memory_v2(dir, io);
    let ns = |us: Option<u64>| us.map(|us| us.saturating_mul(1000));
    CgroupStats {
        cpu_usage_ns: ns(usage_usec),
        cpu_periods,
        cpu_throttled_periods,
        cpu_throttled_ns: ns(throttled_usec),
        memory_usage_bytes: usage,
        memory_inactive_file_bytes: inactive_file,
        memory_working_set_bytes: working_set(usage, inactive_file),
        memory_limit_bytes: last.memory_limit_bytes,
        memory_failcnt: last.memory_failcnt,
        oom_events: last.oom_events,
        oom_kills: last.oom_kills,
        pids: io.u64(d, "pids.current"),
    }
}

/// A container's memory usage and inactive file pages.
struct Memory {
    usage: Option<u64>,
    inactive_file: Option<u64>,
}

impl Memory {
    /// Replaces the memory figures of `stats`.
    fn apply(self, stats: &mut CgroupStats) {
        stats.memory_usage_bytes = self.usage;
        stats.memory_inactive_file_bytes = self.inactive_file;
        stats.memory_working_set_bytes = working_set(self.usage, self.inactive_file);
    }
}

fn memory_v1(dirs: &V1Dirs, io: &mut FileReader) -> Memory {
    let memory = dirs.memory.as_deref();
    // `total_*` is hierarchical (the container's children included), which
    // is what usage_in_bytes counts too.
    let inactive_file = io
        .keyed(
            memory,
            "memory.stat",
            ["total_inactive_file", "inactive_file"],
        )
        .and_then(|[total, own]| total.or(own));
    Memory {
        inactive_file,
        usage: io.u64(memory, "memory.usage_in_bytes"),
    }
}

fn memory_v2(dir: &Path, io: &mut FileReader) -> Memory {
    let d = Some(dir);
    let [inactive_file] = io
        .keyed(d, "memory.stat", ["inactive_file"])
        .unwrap_or_default();
    Memory {
        inactive_file,
        usage: io.u64(d, "memory.current"),
    }
}

fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    usage.map(|usage| usage.saturating_sub(inactive_file.unwrap_or(0)))
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

        let stats = read_all_v1(&dirs);
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
        let stats = read_all_v1(&dirs);
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

        let stats = read_all_v2(&dir);
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
        let stats = read_all_v2(&dir);
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
        assert_eq!(
            read_all_v2(&tmp.path().join("gone")),
            CgroupStats::default()
        );
        assert_eq!(read_all_v1(&v1_dirs(tmp.path())), CgroupStats::default());
        assert_eq!(read_all_v1(&V1Dirs::default()), CgroupStats::default());
    }

    #[test]
    fn slow_files_are_reread_only_on_slow_readings() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = v1_dirs(tmp.path());
        let (cpu, memory) = (
            dirs.cpu.as_deref().unwrap(),
            dirs.memory.as_deref().unwrap(),
        );
        write(cpu, "cpu.cfs_quota_us", "-1\n");
        write(
            cpu,
            "cpu.stat",
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        );
        write(memory, "memory.usage_in_bytes", "100\n");
        write(memory, "memory.failcnt", "1\n");
        let (files, buf, last) = (
            &mut Files::default(),
            &mut Vec::new(),
            &mut SlowStats::default(),
        );
        let io = &mut FileReader { files, buf };
        let first = read_v1(&dirs, io, last, true);
        assert_eq!(
            (first.memory_usage_bytes, first.memory_failcnt),
            (Some(100), Some(1))
        );
        assert_eq!(first.cpu_periods, Some(0));

        // Files rewritten on tmpfs keep their inode: the open ones see it.
        write(memory, "memory.usage_in_bytes", "200\n");
        write(memory, "memory.failcnt", "2\n");
        write(
            cpu,
            "cpu.stat",
            "nr_periods 5\nnr_throttled 1\nthrottled_time 9\n",
        );
        let fast = read_v1(&dirs, io, last, false);
        assert_eq!(
            fast.memory_usage_bytes,
            Some(200),
            "usage is read every time"
        );
        assert_eq!(
            fast.memory_failcnt,
            Some(1),
            "failcnt repeats between slow readings"
        );
        assert_eq!(fast.cpu_periods, Some(0), "no quota: cpu.stat is slow");

        let slow = read_v1(&dirs, io, last, true);
        assert_eq!((slow.memory_failcnt, slow.cpu_periods), (Some(2), Some(5)));

        // With a quota, throttling is read every time.
        write(cpu, "cpu.cfs_quota_us", "50000\n");
        read_v1(&dirs, io, last, true);
        write(
            cpu,
            "cpu.stat",
            "nr_periods 7\nnr_throttled 1\nthrottled_time 9\n",
        );
        assert_eq!(read_v1(&dirs, io, last, false).cpu_periods, Some(7));
        assert!(!io.files.stale);
    }

    #[test]
    fn missing_files_are_tried_again_on_slow_readings() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("riklet/pod_c");
        write(&dir, "cpu.stat", "usage_usec 1\n");
        let (files, buf, last) = (
            &mut Files::default(),
            &mut Vec::new(),
            &mut SlowStats::default(),
        );
        let io = &mut FileReader { files, buf };
        assert_eq!(read_v2(&dir, io, last, true).pids, None);
        write(&dir, "pids.current", "4\n");
        assert_eq!(read_v2(&dir, io, last, false).pids, None);
        assert_eq!(read_v2(&dir, io, last, true).pids, Some(4));
    }

    /// A v2 container cgroup in a temporary directory, with its files.
    fn fake_v2(root: &Path, name: &str, pids: u64, memory: u64, failcnt: u64) -> ContainerCgroup {
        let layout = crate::cgroups::Layout::Unified {
            v2: root.to_path_buf(),
        };
        let cgroup = ContainerCgroup::at(layout, &format!("riklet/{name}"));
        let dir = cgroup.v2_dir();
        write(&dir, "cpu.stat", "usage_usec 10\n");
        write(&dir, "memory.stat", "inactive_file 0\n");
        write(&dir, "memory.current", &format!("{memory}\n"));
        write(&dir, "memory.events", &format!("max {failcnt}\n"));
        write(&dir, "pids.current", &format!("{pids}\n"));
        cgroup
    }

    #[test]
    fn idle_slow_readings_read_memory_and_every_third_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake_v2(tmp.path(), "pod_c", 1, 100, 0);
        let id = crate::metrics::net::cgroup_id(&cgroup.v2_dir()).unwrap();
        let (idle, ran) = (HashSet::new(), HashSet::from([id]));
        // Every reading is a slow one.
        let mut reader = StatsReader::new(1);
        let first = reader.read(&cgroup, Some(&idle)).stats;
        assert_eq!((first.pids, first.memory_usage_bytes), (Some(1), Some(100)));

        fake_v2(tmp.path(), "pod_c", 5, 300, 9);
        for n in 1..IDLE_FULL_EVERY {
            let s = reader.read(&cgroup, Some(&idle)).stats;
            assert_eq!(s.memory_usage_bytes, Some(300), "memory, idle reading {n}");
            assert_eq!((s.pids, s.memory_failcnt), (Some(1), Some(0)), "{n}");
        }
        let full = reader.read(&cgroup, Some(&idle)).stats;
        assert_eq!((full.pids, full.memory_failcnt), (Some(5), Some(9)));

        fake_v2(tmp.path(), "pod_c", 7, 300, 9);
        assert_eq!(reader.read(&cgroup, Some(&ran)).stats.pids, Some(7), "ran");
    }

    #[test]
    fn containers_are_found_in_any_order_and_forgotten_once_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroups: Vec<ContainerCgroup> = (0..3)
            .map(|i| fake_v2(tmp.path(), &format!("pod_{i}"), i, 0, 0))
            .collect();
        let mut reader = StatsReader::new(1);
        let pids = |reader: &mut StatsReader, order: &[usize]| -> Vec<Option<u64>> {
            let out = order
                .iter()
                .map(|&i| reader.read(&cgroups[i], None).stats.pids)
                .collect();
            reader.sweep();
            out
        };
        assert_eq!(pids(&mut reader, &[0, 1, 2]), [Some(0), Some(1), Some(2)]);
        assert_eq!(pids(&mut reader, &[0, 1, 2]), [Some(0), Some(1), Some(2)]);
        assert_eq!(pids(&mut reader, &[2, 0, 1]), [Some(2), Some(0), Some(1)]);
        // pod_1 gone: its slot is dropped, the others still found.
        assert_eq!(pids(&mut reader, &[2, 0]), [Some(2), Some(0)]);
        assert_eq!(reader.slots.len(), 2);
        assert_eq!(reader.index.len(), 2);
        assert_eq!(pids(&mut reader, &[0, 2, 1]), [Some(0), Some(2), Some(1)]);
    }

    fn read_all_v1(dirs: &V1Dirs) -> CgroupStats {
        let io = &mut FileReader {
            files: &mut Files::default(),
            buf: &mut Vec::new(),
        };
        read_v1(dirs, io, &mut SlowStats::default(), true)
    }

    fn read_all_v2(dir: &Path) -> CgroupStats {
        let io = &mut FileReader {
            files: &mut Files::default(),
            buf: &mut Vec::new(),
        };
        read_v2(dir, io, &mut SlowStats::default(), true)
    }

    #[test]
    fn keyed_ignores_prefixes_and_garbage() {
        let text = "nr_periods_x 1\nnr_periods 2\nbroken\nnr_throttled x\n";
        assert_eq!(
            parse_keyed(text, ["nr_periods", "nr_throttled", "absent"]),
            [Some(2), None, None]
        );
    }

    #[test]
    fn files_longer_than_the_buffer_are_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let lines: String = (0..1000).map(|i| format!("key{i} {i}\n")).collect();
        assert!(lines.len() > 4096);
        write(tmp.path(), "memory.stat", &lines);
        let io = &mut FileReader {
            files: &mut Files::default(),
            buf: &mut Vec::new(),
        };
        let got = io.keyed(Some(tmp.path()), "memory.stat", ["key0", "key999"]);
        assert_eq!(got, Some([Some(0), Some(999)]));
    }
}
