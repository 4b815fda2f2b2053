//! Root test of the network counters of `riklet::metrics::ebpf::Probes`:
//! the real eBPF object, attached to a throw-away cgroup v2 directory,
//! counting real TCP traffic of a child process over 127.0.0.1.
//!
//! Needs root, a cgroup v2 hierarchy, bpffs and tracefs (mounted by the code
//! under test if missing), `/usr/bin/socat`, and the object from
//! `cargo xtask build-ebpf`. A missing prerequisite fails the test with a
//! message saying what is missing.

mod support;

use std::{
    fs::{self, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuHashMap};
use riklet::metrics::{
    ebpf::Probes,
    net::{CgroupTraffic, cgroup_id},
};
use riklet_common::{net::CGROUP_TRAFFIC_MAP, sched::SCHED_STATS_MAP};
use support::{CgroupGuard, PinDirGuard, unique};

const SOCAT: &str = "/usr/bin/socat";
const PAYLOAD: u64 = 1 << 20;
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn counts_tcp_traffic_of_a_child_cgroup_then_forgets_and_closes() {
    let v2_root = prerequisites();
    let cgroup_root = CgroupGuard::new(v2_root.join(unique("riklet-test-net")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-net")));

    let mut counters = Probes::load(cgroup_root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load: {}", riklet::error_chain(&e)));
    for map in [CGROUP_TRAFFIC_MAP, SCHED_STATS_MAP] {
        assert!(
            pins.path().join(map).exists(),
            "map is not pinned at {}",
            pins.path().join(map).display()
        );
    }

    let pod = CgroupGuard::create(cgroup_root.path().join("pod"), &v2_root);
    let pod_id = cgroup_id(pod.path()).expect("cgroup id of the pod cgroup");
    assert_eq!(counters.traffic(pod_id).expect("traffic"), None);

    let received = echo_one_mebibyte_from(pod.path());
    assert_eq!(received, PAYLOAD, "the server received a short payload");

    let traffic = counters
        .traffic(pod_id)
        .expect("traffic")
        .expect("no counters for the pod cgroup");
    println!("pod cgroup {pod_id}: {traffic:?}");
    assert!(traffic.tx_bytes >= PAYLOAD, "tx_bytes: {traffic:?}");
    assert!(traffic.rx_bytes >= PAYLOAD, "rx_bytes: {traffic:?}");
    assert!(traffic.tx_packets > 0, "tx_packets: {traffic:?}");
    assert!(traffic.rx_packets > 0, "rx_packets: {traffic:?}");

    let all = counters.traffic_all().expect("traffic_all");
    assert_eq!(
        all.get(&pod_id),
        Some(&traffic),
        "traffic_all lacks {pod_id} => {traffic:?}: {all:?}"
    );

    counters.forget(pod_id).expect("forget");
    assert_eq!(
        counters.traffic(pod_id).expect("traffic after forget"),
        None
    );
    assert!(
        !counters
            .traffic_all()
            .expect("traffic_all after forget")
            .contains_key(&pod_id),
        "traffic_all still has the forgotten {pod_id}"
    );
    counters.forget(pod_id).expect("forgetting twice is fine");

    counters.close().expect("close");
    assert_no_pins(pins.path());
}

#[test]
fn load_replaces_a_stale_pin_of_a_crashed_predecessor() {
    let v2_root = prerequisites();
    let cgroup_root = CgroupGuard::new(v2_root.join(unique("riklet-test-stale")), &v2_root);
    let pins = PinDirGuard::new(Path::new("/sys/fs/bpf").join(unique("riklet-test-stale")));

    // A first load mounts bpffs if needed; its close leaves nothing behind.
    Probes::load(cgroup_root.path(), pins.path())
        .unwrap_or_else(|e| panic!("first Probes::load: {}", riklet::error_chain(&e)))
        .close()
        .expect("close");
    assert_no_pins(pins.path());

    // What a crashed riklet leaves: a pinned map nobody holds.
    fs::create_dir_all(pins.path()).expect("creating the pin dir");
    let pin = pins.path().join(CGROUP_TRAFFIC_MAP);
    PerCpuHashMap::<MapData, u64, CgroupTraffic>::create(4, 0)
        .expect("creating a standalone map")
        .pin(&pin)
        .expect("pinning the stale map");

    let counters = Probes::load(cgroup_root.path(), pins.path())
        .unwrap_or_else(|e| panic!("Probes::load over a stale pin: {}", riklet::error_chain(&e)));
    let pinned = MapData::from_pin(&pin).expect("opening the pin");
    let info = pinned.info().expect("map info");
    assert_eq!(
        info.name_as_str(),
        Some(CGROUP_TRAFFIC_MAP),
        "the pin still holds the stale map"
    );
    drop(pinned);
    // Drop, not close: it must clean up just the same.
    drop(counters);
    assert_no_pins(pins.path());
}

/// Panics naming the first missing prerequisite; returns the cgroup v2 root.
fn prerequisites() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups, bpf, bpffs); run it as root"
    );
    let v2_root = support::cgroup2_mount().unwrap_or_else(|| {
        panic!("no cgroup2 mount in /proc/self/mountinfo: this test needs the cgroup v2 hierarchy")
    });
    assert!(
        Path::new(SOCAT).is_file(),
        "{SOCAT} is missing: install socat (apt-get install socat)"
    );
    v2_root
}

/// Runs `head -c 1MiB /dev/zero | socat - TCP:127.0.0.1:port` in `cgroup`
/// against a server in this process that reads everything and sends 1 MiB
/// back. Returns how much the server received.
fn echo_one_mebibyte_from(cgroup: &Path) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    let server = thread::spawn(move || -> io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut writer = stream.try_clone()?;
        let sender = thread::spawn(move || -> io::Result<()> {
            writer.write_all(&vec![b'x'; PAYLOAD as usize])?;
            writer.shutdown(Shutdown::Write)
        });
        let received = io::copy(&mut stream, &mut io::sink())?;
        sender.join().expect("sender thread panicked")?;
        Ok(received)
    });

    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", cgroup.display()));
    let script =
        format!("head -c {PAYLOAD} /dev/zero | {SOCAT} -t 30 - TCP:127.0.0.1:{port} > /dev/null");
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let procs_fd = procs.as_raw_fd();
    // SAFETY: the closure only calls write(2), which is async-signal-safe,
    // on a descriptor opened before the fork. "0" moves the writing process
    // (the forked child) into the cgroup before it execs, so every socket it
    // and its children create belongs to that cgroup.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let child = ChildGuard(Some(command.spawn().expect("spawning sh/socat")));
    drop(procs);
    let output = child.wait(CHILD_TIMEOUT);
    assert!(
        output.0.success(),
        "socat failed ({}): {}",
        output.0,
        output.1
    );
    server
        .join()
        .expect("server thread panicked")
        .expect("server I/O")
}

fn assert_no_pins(pin_dir: &Path) {
    match fs::read_dir(pin_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => panic!("reading {}: {e}", pin_dir.display()),
        Ok(entries) => {
            let left: Vec<_> = entries.map(|e| e.map(|e| e.file_name())).collect();
            assert!(
                left.is_empty(),
                "pins left in {}: {left:?}",
                pin_dir.display()
            );
        }
    }
}

/// A child process killed and reaped on drop.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Waits up to `timeout`; returns the exit status and stderr.
    fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let child = self.0.as_mut().expect("child present until dropped");
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the child") {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                self.0 = None;
                return (status, stderr);
            }
            assert!(
                Instant::now() < deadline,
                "the child did not finish within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
