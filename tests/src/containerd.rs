//! containerd for the end-to-end tests: the machine's (started by
//! `cargo xtask setup`), or a private instance with its own root, state
//! and socket for a test that stops and restarts it, so that tests running
//! in parallel on the shared one are not disturbed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The machine's containerd.
pub const SOCKET: &str = "/run/containerd/containerd.sock";

/// Whether something answers on `socket`.
pub fn answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Fails the test unless the machine's containerd answers and `ctr` runs.
pub fn require_machine_containerd() {
    assert!(
        answers(Path::new(SOCKET)),
        "containerd does not answer on {SOCKET}: start it (`cargo xtask setup` does, \
         or `systemctl start containerd`)"
    );
    crate::registry::require("ctr", "containerd");
    crate::registry::require("runc", "runc");
}

/// `ctr -a <socket> -n <namespace> …`.
pub struct Ctr {
    socket: PathBuf,
    namespace: String,
}

impl Ctr {
    pub fn new(socket: &Path, namespace: &str) -> Ctr {
        Ctr {
            socket: socket.to_path_buf(),
            namespace: namespace.to_string(),
        }
    }

    /// Runs `ctr` (no check).
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr (Debian package containerd): {e}"))
    }

    /// Runs `ctr` and returns its output, panicking on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr -n {} {}: {}",
            self.namespace,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr <what> ls -q` (containers, tasks, images, leases, content).
    pub fn ids(&self, what: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.run(&[what, "ls", "-q"]).stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Tasks as (id, pid, status).
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        String::from_utf8_lossy(&self.run(&["tasks", "ls"]).stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    /// Snapshots as (key, kind).
    pub fn snapshots(&self) -> Vec<(String, String)> {
        String::from_utf8_lossy(&self.run(&["snapshots", "ls"]).stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.last()?.to_string()))
            })
            .collect()
    }

    /// Keys of the active (container) snapshots.
    pub fn active_snapshots(&self) -> Vec<String> {
        self.snapshots()
            .into_iter()
            .filter(|(_, kind)| kind == "Active")
            .map(|(k, _)| k)
            .collect()
    }

    /// Kills and removes everything in the namespace, then the namespace.
    pub fn remove_namespace(&self) {
        for task in self.ids("tasks") {
            let _ = self.run(&["tasks", "kill", "-a", "-s", "SIGKILL", &task]);
        }
        for task in self.ids("tasks") {
            let _ = self.run(&["tasks", "delete", "--force", &task]);
        }
        for c in self.ids("containers") {
            let _ = self.run(&["containers", "delete", &c]);
        }
        for image in self.ids("images") {
            let _ = self.run(&["images", "rm", "--sync", &image]);
        }
        for lease in self.ids("leases") {
            let _ = self.run(&["leases", "rm", "--sync", &lease]);
        }
        // Children before parents.
        for _ in 0..10 {
            let keys = self.snapshots();
            if keys.is_empty() {
                break;
            }
            for (key, _) in keys {
                let _ = self.run(&["snapshots", "rm", &key]);
            }
        }
        for digest in self.ids("content") {
            let _ = self.run(&["content", "rm", &digest]);
        }
        let _ = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["namespaces", "rm", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A containerd of the test's own (root, state, socket in a temporary
/// directory, CRI plugin off), started and stopped at will; dropping it
/// kills its shims and containerd and removes the directory.
pub struct PrivateContainerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
}

impl PrivateContainerd {
    /// Writes the configuration; [`PrivateContainerd::start`] runs it.
    pub fn new() -> PrivateContainerd {
        crate::registry::require("containerd", "containerd");
        let dir = tempfile::Builder::new()
            .prefix("rik-cd")
            .tempdir_in("/tmp")
            .expect("temp dir for containerd");
        let d = dir.path();
        let socket = d.join("c.sock");
        std::fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
                opt = d.join("opt").display(),
            ),
        )
        .expect("containerd config");
        PrivateContainerd {
            dir,
            child: None,
            socket,
        }
    }

    /// Starts containerd and waits until it answers (at most 20 s).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "private containerd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))
            .expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(&self.socket) {
            assert!(
                Instant::now() < deadline,
                "private containerd did not answer within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops containerd (SIGTERM; its shims and containers keep running).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The shims of this containerd (their command line names its socket).
    fn shims(&self) -> Vec<i32> {
        let wanted = self.socket.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                            let c = String::from_utf8_lossy(&c);
                            c.contains("containerd-shim") && c.contains(&wanted)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for PrivateContainerd {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if self.child.is_none() && !self.shims().is_empty() {
            // Shims are left: a running containerd removes their tasks.
            self.start();
        }
        if self.child.is_some() {
            let out = Command::new("ctr")
                .arg("-a")
                .arg(&self.socket)
                .args(["namespaces", "ls", "-q"])
                .output();
            if let Ok(out) = out {
                for ns in String::from_utf8_lossy(&out.stdout).lines() {
                    Ctr::new(&self.socket, ns.trim()).remove_namespace();
                }
            }
        }
        self.stop();
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Overlay mounts of snapshots, if a container was left mounted.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.path().to_string_lossy().into_owned();
            for target in mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&root))
            {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
