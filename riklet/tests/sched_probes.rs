//! Root tests of the scheduler and OOM probes of
//! `riklet::metrics::ebpf::Probes`: the real eBPF object, its tracepoints
//! attached node-wide, measuring child processes placed in throw-away
//! cgroups.
//!
//! Needs root, a cgroup v2 hierarchy, tracefs with the `sched` and `oom`
//! events, a memory controller (cgroup v2, or v1 next to v2 on hybrid
//! hosts), bpffs (mounted by the code under test if missing) and the object
//! from `cargo xtask build-ebpf`. A missing prerequisite fails the test with
//! a message saying what is missing.
//!
//! The children are forked from the test process and only make
//! async-signal-safe calls (write, clock_gettime, nanosleep,
//! sched_setaffinity, mmap) before `_exit`, as a fork of a multi-threaded
//! process must.

mod support;

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{IterableMap as _, MapData, PerCpuHashMap, PerCpuValues};
use riklet::metrics::{
    ebpf::{Probes, SchedStats, batch, monotonic_to_system_time},
    net::{CgroupTraffic, cgroup_id},
};
use riklet_common::sched::{RUNQ_BUCKETS, bucket_upper_ns};
use support::{CgroupGuard, PinDirGuard, remove_cgroup, unique};

const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const EVENTS: [&str; 4] = [
    "sched/sched_switch",
    "sched/sched_wakeup",
    "sched/sched_wakeup_new",
    "oom/mark_victim",
];
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);
const MEMORY_LIMIT: u64 = 16 << 20;

#[test]
fn a_child_burning_one_second_of_cpu_is_charged_one_second() {
    let v2_root = prerequisites();
    let root = CgroupGuard::new(v2_root.join(unique("riklet-test-sched")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-sched")));
    let mut probes = Probes::load(root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load: {}", riklet::error_chain(&e)));

    let pod = CgroupGuard::create(root.path().join("burn"), &v2_root);
    let pod_id = cgroup_id(pod.path()).expect("cgroup id of the pod cgroup");
    assert_eq!(probes.sched(pod_id).expect("sched"), None);

    // The child burns 1 s of CPU time, then sleeps: asleep, all its slices
    // are charged, and the kernel's own figures for it can still be read.
    let procs = open_procs(pod.path());
    let started = Instant::now();
    let child = ForkedChild::spawn(&[procs.as_raw_fd()], None, || {
        burn_cpu_time(Duration::from_secs(1));
        sleep_until(monotonic_now() + CHILD_TIMEOUT);
    });
    // The thread that reads is on a CPU while it reads: `running` shows it
    // with a slice begun before now, once the programs saw it switched in
    // (a thread running since before they were attached was not): it
    // sleeps first. (A read can still miss it if the thread moves to a CPU
    // already copied in the middle of the lookup: tried again.)
    let me = nix::unistd::gettid().as_raw() as u32;
    let slot = (0..100)
        .find_map(|_| {
            thread::sleep(Duration::from_millis(1));
            let running = probes.running().expect("running");
            running.iter().find(|s| s.pid == me).copied()
        })
        .expect("the reading thread never showed in ON_CPU");
    let now_ns = monotonic_now().as_nanos() as u64;
    assert!(
        slot.since_ns > 0 && slot.since_ns <= now_ns,
        "slice start {} ns is not before now ({now_ns} ns)",
        slot.since_ns
    );
    let kernel = child.wait_asleep_after(Duration::from_secs(1), CHILD_TIMEOUT);
    let wall = started.elapsed();

    let stats = probes
        .sched(pod_id)
        .expect("sched")
        .expect("no scheduler figures for the pod cgroup");
    let lost = probes.lost().expect("lost");
    println!(
        "child {} burnt 1 s of CPU time in {wall:?} of wall time: oncpu {:.3} s, {}",
        child.pid,
        stats.oncpu_ns as f64 / 1e9,
        describe_runq(&stats)
    );
    println!(
        "the kernel's /proc/{}/schedstat: ran {} ns, waited {} ns, {} slices; unseen switches (node-wide) {}",
        child.pid, kernel.ran_ns, kernel.waited_ns, kernel.slices, lost.sched_unseen
    );
    assert!(
        (800_000_000..=1_200_000_000).contains(&stats.oncpu_ns),
        "oncpu_ns {} is not within 0.8-1.2 s",
        stats.oncpu_ns
    );
    // Never more than the kernel says (switch-to-switch times include a
    // little interrupt and steal time that the task's clock leaves out).
    assert!(
        stats.oncpu_ns <= kernel.ran_ns + kernel.ran_ns / 20,
        "oncpu {} ns exceeds the kernel's {} ns",
        stats.oncpu_ns,
        kernel.ran_ns
    );
    assert!(
        stats.runq_count <= kernel.slices,
        "{} waits measured for {} slices",
        stats.runq_count,
        kernel.slices
    );
    assert!(
        stats.runq_sum_ns <= kernel.waited_ns + kernel.waited_ns / 20 + 1_000_000,
        "runq_sum {} ns exceeds the kernel's run_delay {} ns",
        stats.runq_sum_ns,
        kernel.waited_ns
    );
    drop(child);

    let timer = Instant::now();
    let all = probes.sched_all().expect("sched_all");
    let sched_all_took = timer.elapsed();
    let timer = Instant::now();
    let traffic = probes.traffic_all().expect("traffic_all");
    println!(
        "sched_all: {} cgroups in {sched_all_took:?}; traffic_all: {} cgroups in {:?}",
        all.len(),
        traffic.len(),
        timer.elapsed()
    );
    let listed = all
        .get(&pod_id)
        .unwrap_or_else(|| panic!("sched_all lacks {pod_id}"));
    // The killed child's last moments may have been charged meanwhile.
    assert!(
        listed.oncpu_ns >= stats.oncpu_ns && listed.oncpu_ns - stats.oncpu_ns < 100_000_000,
        "sched_all and sched disagree: {listed:?} vs {stats:?}"
    );
    let other = all.get(&cgroup_id(&v2_root).expect("root cgroup id"));
    assert!(
        other.is_some_and(|root_stats| root_stats.oncpu_ns > 0),
        "the root cgroup (kernel threads) has no on-CPU time: every cgroup should be counted"
    );

    probes.forget(pod_id).expect("forget");
    assert_eq!(probes.sched(pod_id).expect("sched after forget"), None);
    assert!(
        !probes
            .sched_all()
            .expect("sched_all after forget")
            .contains_key(&pod_id),
        "sched_all still has the forgotten {pod_id}"
    );
    probes.forget(pod_id).expect("forgetting twice is fine");

    assert_eq!(lost.sched, 0, "scheduler map updates failed: {lost:?}");
    probes.close().expect("close");
}

#[test]
fn a_task_running_since_before_the_load_shows_on_its_cpu() {
    let v2_root = prerequisites();
    let cpu = last_allowed_cpu();
    let other = first_allowed_cpu();
    assert_ne!(
        cpu, other,
        "this test needs two CPUs: one for a spinner, one for the test"
    );
    // The test keeps off the spinner's CPU, so that it does not make that
    // CPU switch tasks itself.
    let mut only = nix::sched::CpuSet::new();
    only.set(other).expect("CPU number in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).expect("pinning the test");
    let spinner = ForkedChild::spawn(&[], Some(cpu), || {
        spin_until(monotonic_now() + CHILD_TIMEOUT);
    });
    thread::sleep(Duration::from_millis(200));

    let root = CgroupGuard::new(v2_root.join(unique("riklet-test-sched")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-sched")));
    let probes = Probes::load(root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load: {}", riklet::error_chain(&e)));
    // Right after the load, without waiting for the spinner to be
    // switched out by chance (a few reads: the last switch back to it may
    // land just after `load` returns).
    let found = (0..20).find_map(|_| {
        let running = probes.running().expect("running");
        let slot = running
            .iter()
            .find(|s| s.pid == spinner.pid as u32)
            .copied();
        if slot.is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        slot
    });
    assert!(
        found.is_some(),
        "the task spinning on CPU {cpu} since before the load is not in ON_CPU: {:?}",
        probes.running()
    );
}

#[test]
fn processes_sharing_one_cpu_wait_in_the_run_queue() {
    const RUN_FOR: Duration = Duration::from_millis(1500);
    let v2_root = prerequisites();
    let root = CgroupGuard::new(v2_root.join(unique("riklet-test-runq")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-runq")));
    let probes = Probes::load(root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load: {}", riklet::error_chain(&e)));

    let pod = CgroupGuard::create(root.path().join("crowded"), &v2_root);
    let pod_id = cgroup_id(pod.path()).expect("cgroup id of the pod cgroup");
    let procs = open_procs(pod.path());
    let cpu = last_allowed_cpu();

    let started = Instant::now();
    let deadline = monotonic_now() + RUN_FOR;
    let children = [
        ForkedChild::spawn(&[procs.as_raw_fd()], Some(cpu), move || {
            spin_until(deadline)
        }),
        ForkedChild::spawn(&[procs.as_raw_fd()], Some(cpu), move || {
            spin_until(deadline)
        }),
        ForkedChild::spawn(&[procs.as_raw_fd()], Some(cpu), move || {
            sleep_often_until(deadline, Duration::from_millis(1));
        }),
    ];
    for child in children {
        child.wait_success(CHILD_TIMEOUT);
    }
    let wall = started.elapsed();
    let_the_last_slice_be_charged();

    let stats = probes
        .sched(pod_id)
        .expect("sched")
        .expect("no scheduler figures for the pod cgroup");
    println!(
        "2 spinners + 1 sleeper on CPU {cpu} for {wall:?}: oncpu {:.3} s, {}",
        stats.oncpu_ns as f64 / 1e9,
        describe_runq(&stats)
    );
    println!("{}", histogram(&stats));

    assert!(
        stats.runq_count >= 100,
        "only {} run-queue waits measured",
        stats.runq_count
    );
    assert_eq!(
        stats.runq_buckets.iter().sum::<u64>(),
        stats.runq_count,
        "the histogram does not add up to the count"
    );
    let used: Vec<usize> = (0..RUNQ_BUCKETS)
        .filter(|&b| stats.runq_buckets[b] > 0)
        .collect();
    assert!(
        used.len() >= 3,
        "a trivial histogram (buckets {used:?}): {stats:?}"
    );
    // A spinner waits while the other one runs its slice: hundreds of
    // microseconds at least.
    assert!(
        used.iter().any(|&b| b >= 17),
        "no wait of 131 µs or more although two spinners share a CPU: {stats:?}"
    );
    let mean = stats.runq_mean_ns().expect("a mean");
    assert!(
        (1_000..=500_000_000).contains(&mean),
        "implausible mean wait {mean} ns"
    );
    // One CPU shared by the three: at most the wall time, and well above
    // nothing even on a busy machine.
    let wall_ns = u64::try_from(wall.as_nanos()).expect("wall time fits u64");
    assert!(
        stats.oncpu_ns <= wall_ns + wall_ns / 20,
        "oncpu {} ns exceeds the {wall_ns} ns of one CPU",
        stats.oncpu_ns
    );
    assert!(
        stats.oncpu_ns >= wall_ns / 4,
        "oncpu {} ns is far below the {wall_ns} ns the spinners had",
        stats.oncpu_ns
    );
}

#[test]
fn an_oom_killed_process_is_reported_with_its_pid_and_cgroup() {
    let v2_root = prerequisites();
    let root = CgroupGuard::new(v2_root.join(unique("riklet-test-oom")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-oom")));
    let mut probes = Probes::load(root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load: {}", riklet::error_chain(&e)));
    // Events of earlier OOM kills elsewhere on the node do not matter.
    let _ = probes.oom_events();

    let pod = CgroupGuard::create(root.path().join("hungry"), &v2_root);
    let pod_id = cgroup_id(pod.path()).expect("cgroup id of the pod cgroup");
    let (memory_cgroup, _v1_guard) = limit_memory(&v2_root, root.path(), pod.path());
    let mut fds = vec![open_procs(pod.path())];
    if memory_cgroup != pod.path() {
        fds.push(open_procs(&memory_cgroup));
    }
    let fds: Vec<RawFd> = fds.iter().map(File::as_raw_fd).collect();

    let child = ForkedChild::spawn(&fds, None, || {
        touch_anonymous_memory(4 * MEMORY_LIMIT as usize);
    });
    let pid = child.pid;
    let status = child.wait(CHILD_TIMEOUT);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the child was not OOM-killed (wait status {status:#x}, memory cgroup {})",
        memory_cgroup.display()
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let event = loop {
        seen.extend(probes.oom_events());
        if let Some(event) = seen.iter().find(|e| e.pid == u32::try_from(pid).unwrap()) {
            break *event;
        }
        assert!(
            Instant::now() < deadline,
            "no OOM event for pid {pid} within 5 s; events seen: {seen:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let when = monotonic_to_system_time(event.timestamp_ns);
    println!(
        "OOM event: {event:?} ({:?} ago); pod cgroup id {pod_id}",
        SystemTime::now().duration_since(when).unwrap_or_default()
    );
    assert_eq!(
        event.trigger_pid, event.pid,
        "the child triggered its own OOM"
    );
    assert_eq!(event.cgroup_id, pod_id, "event cgroup is not the pod's");
    assert!(
        SystemTime::now()
            .duration_since(when)
            .is_ok_and(|ago| ago < CHILD_TIMEOUT + Duration::from_secs(5)),
        "event timestamp {} ns is not recent",
        event.timestamp_ns
    );
    assert_eq!(probes.lost().expect("lost").oom, 0, "OOM events lost");
}

#[test]
fn batch_lookup_reads_every_entry_of_a_large_per_cpu_map() {
    const ENTRIES: u64 = 5000;
    prerequisites();
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let mut map = PerCpuHashMap::<MapData, u64, CgroupTraffic>::create(8192, 0)
        .expect("creating a per-CPU hash map");
    for key in 0..ENTRIES {
        let values: Vec<CgroupTraffic> = (0..cpus as u64)
            .map(|cpu| CgroupTraffic {
                rx_bytes: key,
                rx_packets: cpu + 1,
                tx_bytes: key * 3,
                tx_packets: 1,
            })
            .collect();
        map.insert(
            key,
            PerCpuValues::try_from(values).expect("per-CPU values"),
            0,
        )
        .expect("insert");
    }

    let timer = Instant::now();
    // The key type is named: with x509-parser's num-bigint in the
    // dependency graph, `key * cpus` alone no longer infers it.
    let entries = batch::lookup_percpu::<u64, CgroupTraffic>(
        map.map().fd().as_fd(),
        cpus,
        |total: CgroupTraffic, cpu: &CgroupTraffic| total.wrapping_add(*cpu),
    )
    .unwrap_or_else(|e| panic!("BPF_MAP_LOOKUP_BATCH: {e}"));
    let batch_took = timer.elapsed();
    let timer = Instant::now();
    let iterated = map.iter().count();
    println!(
        "{ENTRIES} entries x {cpus} CPUs: batch {batch_took:?}, aya iteration {:?}",
        timer.elapsed()
    );
    assert_eq!(iterated as u64, ENTRIES);
    assert_eq!(entries.len() as u64, ENTRIES, "batch lookup missed entries");
    let cpus = cpus as u64;
    for (key, total) in &entries {
        assert_eq!(
            total,
            &CgroupTraffic {
                rx_bytes: key * cpus,
                rx_packets: cpus * (cpus + 1) / 2,
                tx_bytes: key * 3 * cpus,
                tx_packets: cpus,
            },
            "entry {key}"
        );
    }
}

/// `waitpid` returns once the child is a zombie, a moment before the dying
/// task leaves its CPU for the last time, which is when its last slice is
/// charged. That moment is microseconds later; wait well beyond it.
fn let_the_last_slice_be_charged() {
    thread::sleep(Duration::from_millis(100));
}

/// Panics naming the first missing prerequisite; returns the cgroup v2 root.
fn prerequisites() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups, bpf, tracefs); run it as root"
    );
    let v2_root = support::cgroup2_mount().unwrap_or_else(|| {
        panic!("no cgroup2 mount in /proc/self/mountinfo: this test needs the cgroup v2 hierarchy")
    });
    let tracefs = TRACEFS_MOUNTS
        .iter()
        .map(Path::new)
        .find(|mount| mount.join("events").is_dir())
        .unwrap_or_else(|| {
            panic!(
                "tracefs is not mounted at {} or {}: mount -t tracefs tracefs /sys/kernel/tracing",
                TRACEFS_MOUNTS[0], TRACEFS_MOUNTS[1]
            )
        });
    for event in EVENTS {
        let format = tracefs.join("events").join(event).join("format");
        if let Err(e) = fs::read_to_string(&format) {
            panic!(
                "cannot read {} ({e}): this kernel lacks the {event} tracepoint",
                format.display()
            );
        }
    }
    v2_root
}

/// The cgroup v1 hierarchy with the memory controller, if mounted.
fn memory_v1_mount() -> Option<PathBuf> {
    mounts().into_iter().find_map(|(point, fs_type, options)| {
        (fs_type == "cgroup" && options.split(',').any(|o| o == "memory")).then_some(point)
    })
}

/// (mount point, fs type, super options) of every mount.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let mut fs = fs.split_whitespace();
            let fs_type = fs.next()?.to_owned();
            let options = fs.nth(1).unwrap_or_default().to_owned();
            Some((
                PathBuf::from(mount.split_whitespace().nth(4)?),
                fs_type,
                options,
            ))
        })
        .collect()
}

/// Puts a 16 MiB memory limit (no swap) on the pod: in cgroup v2 if it has
/// the memory controller, else in a v1 memory cgroup (the hybrid layout),
/// which is returned with its guard. Returns the cgroup that holds the limit.
fn limit_memory(v2_root: &Path, test_root: &Path, pod: &Path) -> (PathBuf, Option<V1CgroupGuard>) {
    let v2_has_memory = fs::read_to_string(v2_root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    if v2_has_memory {
        for dir in [v2_root, test_root] {
            write_file(&dir.join("cgroup.subtree_control"), "+memory");
        }
        write_file(&pod.join("memory.max"), &MEMORY_LIMIT.to_string());
        if pod.join("memory.swap.max").exists() {
            write_file(&pod.join("memory.swap.max"), "0");
        }
        return (pod.to_owned(), None);
    }
    let v1_root = memory_v1_mount().unwrap_or_else(|| {
        panic!(
            "no memory controller: neither in cgroup v2 ({}) nor a cgroup v1 memory hierarchy",
            v2_root.display()
        )
    });
    let guard = V1CgroupGuard::create(v1_root.join(unique("riklet-test-oom")), &v1_root);
    write_file(
        &guard.0.join("memory.limit_in_bytes"),
        &MEMORY_LIMIT.to_string(),
    );
    if guard.0.join("memory.memsw.limit_in_bytes").exists() {
        write_file(
            &guard.0.join("memory.memsw.limit_in_bytes"),
            &MEMORY_LIMIT.to_string(),
        );
    }
    (guard.0.clone(), Some(guard))
}

fn write_file(path: &Path, value: &str) {
    fs::write(path, value).unwrap_or_else(|e| panic!("writing {value} to {}: {e}", path.display()));
}

fn open_procs(cgroup: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", cgroup.display()))
}

/// The lowest CPU this thread may run on.
fn first_allowed_cpu() -> usize {
    *allowed_cpus().first().expect("no allowed CPU")
}

/// The highest CPU this thread may run on.
fn last_allowed_cpu() -> usize {
    *allowed_cpus().last().expect("no allowed CPU")
}

fn allowed_cpus() -> Vec<usize> {
    let set =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect()
}

fn monotonic_now() -> Duration {
    clock(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime`, async-signal-safe.
fn clock(id: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(id, &raw mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Spins until this thread has used `cpu_time` of CPU.
fn burn_cpu_time(cpu_time: Duration) {
    while clock(libc::CLOCK_THREAD_CPUTIME_ID) < cpu_time {
        spin_a_little();
    }
}

/// Spins until the monotonic clock reaches `deadline`.
fn spin_until(deadline: Duration) {
    while monotonic_now() < deadline {
        spin_a_little();
    }
}

fn spin_a_little() {
    for i in 0..10_000u64 {
        std::hint::black_box(i);
    }
}

/// Sleeps `period` again and again until `deadline`: a wakeup per period.
fn sleep_often_until(deadline: Duration, period: Duration) {
    let request = libc::timespec {
        tv_sec: 0,
        tv_nsec: period.subsec_nanos() as libc::c_long,
    };
    while monotonic_now() < deadline {
        // SAFETY: nanosleep reads a valid timespec; no remainder wanted.
        unsafe { libc::nanosleep(&raw const request, std::ptr::null_mut()) };
    }
}

/// Sleeps until the monotonic clock reaches `deadline`.
fn sleep_until(deadline: Duration) {
    let request = libc::timespec {
        tv_sec: deadline.as_secs() as libc::time_t,
        tv_nsec: deadline.subsec_nanos() as libc::c_long,
    };
    // SAFETY: clock_nanosleep reads a valid timespec; no remainder wanted.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &raw const request,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
}

/// Maps `bytes` of anonymous memory and writes to every page.
fn touch_anonymous_memory(bytes: usize) {
    // SAFETY: a fresh private anonymous mapping; only its pages are written.
    unsafe {
        let memory = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if memory == libc::MAP_FAILED {
            libc::_exit(3);
        }
        let memory = memory.cast::<u8>();
        for offset in (0..bytes).step_by(4096) {
            memory.add(offset).write_volatile(1);
        }
    }
}

fn describe_runq(stats: &SchedStats) -> String {
    format!(
        "runq: {} waits, mean {} ns, p50 < {} ns, p99 < {} ns",
        stats.runq_count,
        stats.runq_mean_ns().unwrap_or(0),
        stats.runq_quantile_upper_ns(500).unwrap_or(0),
        stats.runq_quantile_upper_ns(990).unwrap_or(0),
    )
}

fn histogram(stats: &SchedStats) -> String {
    let mut text = String::from("run-queue latency histogram:");
    for (bucket, count) in stats.runq_buckets.iter().enumerate() {
        if *count > 0 {
            let low = if bucket == 0 { 0 } else { 1u64 << bucket };
            text.push_str(&format!(
                "\n  [{low:>10}, {:>10}) ns: {count}",
                bucket_upper_ns(bucket)
            ));
        }
    }
    text
}

/// A forked child, killed and reaped on drop.
struct ForkedChild {
    pid: libc::pid_t,
    reaped: bool,
}

impl ForkedChild {
    /// Forks; the child writes "0" to each `cgroup.procs` descriptor (joins
    /// those cgroups), pins itself to `cpu` if given, runs `body`, and exits
    /// with 0. `body` may only make async-signal-safe calls and must not
    /// allocate: the child of a multi-threaded process may find the
    /// allocator locked.
    fn spawn(procs: &[RawFd], cpu: Option<usize>, body: impl FnOnce()) -> Self {
        let affinity = cpu.map(|cpu| {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).expect("CPU number in range");
            set
        });
        // SAFETY: the child only calls async-signal-safe functions (write,
        // sched_setaffinity, what `body` promises) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            for &fd in procs {
                // SAFETY: write(2) of one byte from a static buffer.
                if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                    // SAFETY: _exit is always safe.
                    unsafe { libc::_exit(126) };
                }
            }
            if let Some(set) = affinity
                && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err()
            {
                // SAFETY: as above.
                unsafe { libc::_exit(125) };
            }
            body();
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        Self { pid, reaped: false }
    }

    /// Waits up to `timeout`; returns the raw wait status.
    fn wait(mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let ret = unsafe { libc::waitpid(self.pid, &raw mut status, libc::WNOHANG) };
            assert!(ret >= 0, "waitpid: {}", io::Error::last_os_error());
            if ret == self.pid {
                self.reaped = true;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not finish within {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the child has run at least `ran` of CPU time and sleeps;
    /// returns the kernel's figures for it (`/proc/<pid>/schedstat`).
    fn wait_asleep_after(&self, ran: Duration, timeout: Duration) -> KernelSchedStat {
        let deadline = Instant::now() + timeout;
        loop {
            let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .unwrap_or_else(|e| panic!("reading /proc/{}/stat: {e}", self.pid));
            // "pid (comm) S ...": the state follows the last ')'.
            let asleep = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'));
            let schedstat = KernelSchedStat::of(self.pid);
            if asleep && schedstat.ran_ns >= ran.as_nanos() as u64 {
                return schedstat;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not run {ran:?} and sleep within {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits and asserts a clean exit.
    fn wait_success(self, timeout: Duration) {
        let pid = self.pid;
        let status = self.wait(timeout);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child {pid} failed: wait status {status:#x} (126: joining the cgroup, 125: pinning to the CPU)"
        );
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// The kernel's scheduler figures for one task (`/proc/<pid>/schedstat`).
struct KernelSchedStat {
    /// Time on a CPU (`sum_exec_runtime`).
    ran_ns: u64,
    /// Time waiting in a run queue (`run_delay`).
    waited_ns: u64,
    /// Number of times it got a CPU (`pcount`).
    slices: u64,
}

impl KernelSchedStat {
    fn of(pid: libc::pid_t) -> Self {
        let path = format!("/proc/{pid}/schedstat");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse().unwrap_or_else(|e| panic!("{path}: {f:?}: {e}")))
            .collect();
        assert_eq!(fields.len(), 3, "{path}: {text:?}");
        Self {
            ran_ns: fields[0],
            waited_ns: fields[1],
            slices: fields[2],
        }
    }
}

/// A cgroup v1 directory (memory controller), removed on drop like
/// [`CgroupGuard`].
struct V1CgroupGuard(PathBuf, PathBuf);

impl V1CgroupGuard {
    fn create(path: PathBuf, v1_root: &Path) -> Self {
        assert!(!path.exists(), "{} already exists", path.display());
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self(path, v1_root.to_owned())
    }
}

impl Drop for V1CgroupGuard {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = remove_cgroup(&self.0, &self.1)
        {
            eprintln!("cleanup: removing cgroup {}: {e}", self.0.display());
        }
    }
}
