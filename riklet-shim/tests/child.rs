//! The container's process as the shim starts it, against the real kernel
//! (root): created in its v2 cgroup, its output on the pipes, the user it
//! runs as, its exit status; and the exit code of a missing executable.
//!
//! `child::spawn` needs a process with a single thread, so this test has
//! no libtest harness: `main` runs the checks one after the other, and a
//! failed check panics (exit status 101).

use std::io::Read;
use std::path::{Path, PathBuf};

use riklet_shim::child;
use riklet_shim::cri::{LogSpec, Rotation};
use riklet_shim::protocol::ShimSpec;

/// A v2 cgroup of the test's own, removed on drop (also after a failure).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(test: &str) -> TestCgroup {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (it creates a cgroup and starts a process in it)"
        );
        let mount = [
            Path::new("/sys/fs/cgroup/unified"),
            Path::new("/sys/fs/cgroup"),
        ]
        .into_iter()
        .find(|m| m.join("cgroup.procs").exists() && !m.join("cpu").is_dir())
        .expect("no cgroup v2 hierarchy mounted");
        let dir = mount.join(format!("riklet-shim-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup(dir)
    }

    /// Its path as `/proc/<pid>/cgroup` names it (`0::/<name>`).
    fn name(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn spec(cgroup: &TestCgroup, exec: &str, args: &[&str]) -> ShimSpec {
    ShimSpec {
        exec: exec.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("GREETING".into(), "hello".into())],
        uid: 65534,
        gid: 65534,
        cgroup_v2: cgroup.0.clone(),
        v1_tasks_files: vec![],
        // Unused: `child::spawn` only starts the process.
        log: LogSpec {
            dir: "/nonexistent".into(),
            restart_count: 0,
            rotation: Rotation::default(),
        },
        netns: None,
    }
}

fn main() {
    the_child_is_created_in_its_cgroup_and_runs_as_the_user();
    println!("test the_child_is_created_in_its_cgroup_and_runs_as_the_user ... ok");
    a_missing_executable_is_exit_code_127_naming_it();
    println!("test a_missing_executable_is_exit_code_127_naming_it ... ok");
    println!("2 passed, 0 failed");
}

fn the_child_is_created_in_its_cgroup_and_runs_as_the_user() {
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox missing: run `cargo xtask setup` (busybox-static)"
    );
    let cgroup = TestCgroup::new("in-cgroup");
    let script = "echo $GREETING; id -u; cat /proc/self/cgroup; echo oops >&2; exit 3";
    // SAFETY: this test process has a single thread (no harness).
    let mut started =
        unsafe { child::spawn(&spec(&cgroup, "/bin/busybox", &["sh", "-c", script])) }
            .unwrap_or_else(|e| panic!("spawn: {e}"));
    let mut out = String::new();
    started.stdout.read_to_string(&mut out).expect("stdout");
    let mut err = String::new();
    started.stderr.read_to_string(&mut err).expect("stderr");
    let ended = child::wait(started.pid).expect("wait");

    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello"), "{out}");
    assert_eq!(lines.next(), Some("65534"), "{out}");
    assert!(
        out.lines().any(|l| l == format!("0::{}", cgroup.name())),
        "not in {}: {out}",
        cgroup.name()
    );
    assert_eq!(err, "oops\n");
    assert_eq!(ended.exit_code, Some(3));
    assert_eq!(ended.signal, None);
}

fn a_missing_executable_is_exit_code_127_naming_it() {
    let cgroup = TestCgroup::new("missing");
    // SAFETY: this test process has a single thread (no harness).
    let e =
        unsafe { child::spawn(&spec(&cgroup, "/no/such/binary", &[])) }.expect_err("no such file");
    assert_eq!(e.code, 127);
    assert!(e.message.contains("/no/such/binary"), "{}", e.message);
    // Nothing was left in the cgroup (the failed child was reaped).
    let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).expect("cgroup.procs");
    assert_eq!(procs.trim(), "", "left in the cgroup");
}
