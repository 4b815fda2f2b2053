//! The riklet and `rik-scheduler` under systemd: the units pass
//! `systemd-analyze verify`; the `sd_notify` messages (READY=1 only once
//! the node is registered, STATUS= at each phase, WATCHDOG=1 from the
//! agent loop, which stop when that loop wedges) reach an abstract
//! notification socket as systemd hands out; a panic in a task or a
//! thread aborts the process with the panic on stderr, and a panic in a
//! bare process's shim ends that shim (the pod is restarted, nothing of
//! the aborted run left).
//!
//! The faults are injected through `RIKLET_TEST_FAULT`,
//! `RIKLET_SHIM_TEST_FAULT` and `RIK_SCHEDULER_TEST_FAULT`, which only
//! debug builds read.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, Options, bin_dir, free_port, wait_for};

/// How long the tests wait for a message or an exit that must come.
const PATIENCE: Duration = Duration::from_secs(30);
/// systemd's `WATCHDOG_USEC` for the riklet: pings every 500 ms.
const WATCHDOG_USEC: &str = "1000000";

/// A notification socket in the abstract namespace (`@name`), its
/// datagrams forwarded to a channel, one message each.
struct NotifySocket {
    name: String,
    messages: mpsc::Receiver<String>,
}

impl NotifySocket {
    fn bind(tag: &str) -> NotifySocket {
        let name = format!("riklet-e2e-{tag}-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the notification socket");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket {
            name: format!("@{name}"),
            messages,
        }
    }

    /// The next message that is not a watchdog ping.
    fn next_state(&self, what: &str) -> String {
        loop {
            let m = self
                .messages
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("no notification ({what}): {e}"));
            if m != "WATCHDOG=1\n" {
                return m;
            }
        }
    }

    /// Counts the watchdog pings that arrive within `period`.
    fn pings_within(&self, period: Duration) -> usize {
        let deadline = std::time::Instant::now() + period;
        let mut pings = 0;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.messages.recv_timeout(left) {
                Ok(m) if m == "WATCHDOG=1\n" => pings += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        pings
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tool = "systemd-analyze";
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "{tool} is missing: install Debian's systemd package (cargo xtask setup does)"
    );
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    // The units run /usr/bin/...; verify checks the commands exist, so they
    // point at the binaries under test here (the package test verifies
    // the installed units as they are).
    let bins = format!("{}/", bin_dir().display());
    let mut paths = Vec::new();
    for unit in ["riklet.service", "rik-scheduler.service"] {
        let text = std::fs::read_to_string(units.join(unit)).expect("read the unit");
        assert!(text.contains("ExecStart=/usr/bin/"), "{unit} runs /usr/bin");
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace("/usr/bin/", &bins)).expect("write the unit");
        paths.push(path);
    }
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the separate scheduler has logged the node's registration
/// (before it answered the riklet's register call).
fn registered(cluster: &Cluster) -> bool {
    let log = std::fs::read_to_string(cluster.dir.path().join("scheduler.log")).unwrap_or_default();
    log.lines()
        .any(|l| l.contains("node registered") && l.contains(cluster.node.as_str()))
}

#[test]
fn riklet_notifies_ready_once_registered_and_its_agent_loop_feeds_the_watchdog() {
    let socket = NotifySocket::bind("riklet");
    let wedge = tempfile::tempdir().expect("tempdir");
    let wedge_file = wedge.path().join("wedge");
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), socket.name.clone()),
        ("WATCHDOG_USEC".to_string(), WATCHDOG_USEC.to_string()),
        (
            "RIKLET_TEST_FAULT".to_string(),
            format!("wedge-agent={}", wedge_file.display()),
        ),
    ];
    let options = Options {
        no_wait: true,
        riklet_env: env,
        ..Options::default()
    };
    let cluster = Cluster::start_with(Mode::Separate, options);

    assert_eq!(socket.next_state("recovering"), "STATUS=recovering pods\n");
    assert_eq!(
        socket.next_state("registering"),
        format!(
            "STATUS=registering with the scheduler at http://127.0.0.1:{}\n",
            cluster.scheduler_port
        )
    );
    assert_eq!(
        socket.next_state("ready"),
        "READY=1\nSTATUS=running 0 pods\n"
    );
    assert!(
        registered(&cluster),
        "READY=1 came before the scheduler registered the node"
    );
    for n in 0..3 {
        let m = socket
            .messages
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("watchdog ping {n} missing: {e}"));
        assert_eq!(
            m, "WATCHDOG=1\n",
            "only pings follow READY=1 on an idle node"
        );
    }

    std::fs::write(&wedge_file, "").expect("create the wedge file");
    wait_for(PATIENCE, "the agent loop to wedge", || {
        cluster
            .riklet_log()
            .contains("test fault: the agent loop wedges")
            .then_some(())
    });
    // A ping sent just before the wedge may still be queued.
    let _ = socket.pings_within(Duration::from_millis(100));
    assert_eq!(
        socket.pings_within(Duration::from_secs(3)),
        0,
        "the watchdog is still pinged while the agent loop is wedged"
    );
}

#[test]
fn a_panicking_riklet_task_aborts_the_riklet() {
    let options = Options {
        no_wait: true,
        riklet_env: vec![("RIKLET_TEST_FAULT".to_string(), "panic-task".to_string())],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(Mode::Standalone, options);
    let status = cluster
        .wait_riklet_exit(PATIENCE)
        .expect("the riklet to exit by itself");
    let log = cluster.riklet_log();
    assert_eq!(
        status.signal(),
        Some(sigabrt()),
        "the riklet did not abort ({status}):\n{log}"
    );
    assert!(
        log.contains("test fault: a spawned task panics") && log.contains("aborting"),
        "no panic in the riklet's log:\n{log}"
    );
}

#[test]
fn a_panicking_shim_thread_ends_the_shim_and_the_pod_is_restarted_clean() {
    let options = Options {
        riklet_env: vec![(
            "RIKLET_SHIM_TEST_FAULT".to_string(),
            "panic-copier".to_string(),
        )],
        ..Options::default()
    };
    let cluster = Cluster::start_with(Mode::Standalone, options);
    let manifest = "apiVersion: v1\nkind: Pod\nname: sleeper\nreplicas: 1\nspec:\n  containers:\n    \
                    - name: c\n      exec: /bin/busybox\n      args: [sleep, \"3600\"]\n";
    let out = cluster.apply(manifest, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every run's shim aborts as soon as its copier starts: the riklet
    // finds the shim gone without an exit record and restarts the pod.
    let app = cluster.wait_app("sleeper", "a restart after the shim aborted", |a| {
        a["restartCount"].as_u64().is_some_and(|n| n >= 1)
            && a["containers"][0]["lastExit"]["reason"] == "Lost"
    });
    let instance = app["appId"].as_str().expect("appId").to_string();
    let shim_log = cluster
        .state_dir()
        .join(format!("run/{instance}/c/shim.log"));
    let log = std::fs::read_to_string(&shim_log).unwrap_or_default();
    assert!(
        log.contains("test fault: the stdout copier panics")
            && log.contains("riklet-shim: aborting after a panic"),
        "no panic in {}:\n{log}",
        shim_log.display()
    );
    // The sleep of an aborted shim does not outlive it: each new run
    // starts after the cgroup was emptied, so at most one sleep runs.
    let sleeps = || {
        cluster
            .cgroup_dirs(&instance, "c")
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect::<std::collections::BTreeSet<u32>>()
    };
    for _ in 0..20 {
        let pids = sleeps();
        assert!(pids.len() <= 1, "processes of aborted runs left: {pids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cluster.rik_ok(&["delete", "sleeper"]);
    assert!(out.contains("deleted"), "{out}");
}

/// SIGABRT's number.
fn sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

fn rik_scheduler(state: &Path, port: u16) -> Command {
    let mut cmd = Command::new(bin_dir().join("rik-scheduler"));
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn rik_scheduler_notifies_ready_and_stopping() {
    let socket = NotifySocket::bind("scheduler");
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let child = rik_scheduler(state.path(), port)
        .env("NOTIFY_SOCKET", &socket.name)
        .spawn()
        .expect("start rik-scheduler");
    let ready = socket.next_state("ready");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let stopping = socket.next_state("stopping");
    let out = child.wait_with_output().expect("wait for rik-scheduler");
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=serving on 127.0.0.1:{port}\n")
    );
    assert_eq!(stopping, "STOPPING=1\nSTATUS=stopping\n");
    assert!(
        out.status.success(),
        "rik-scheduler: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_panicking_rik_scheduler_thread_aborts_it() {
    let state = tempfile::tempdir().expect("tempdir");
    let child = rik_scheduler(state.path(), free_port())
        .env("RIK_SCHEDULER_TEST_FAULT", "panic-thread")
        .spawn()
        .expect("start rik-scheduler");
    let out = child.wait_with_output().expect("wait for rik-scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(sigabrt()),
        "rik-scheduler did not abort ({}):\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("test fault: a std thread panics"),
        "no panic on rik-scheduler's stderr:\n{stderr}"
    );
}
