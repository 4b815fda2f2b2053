//! containerd for the end-to-end tests: the machine's (started by
//! `cargo xtask setup`), or a private instance with its own root, state
//! and socket for a test that stops and restarts it, so that tests running
//! in parallel on the shared one are not disturbed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use riklet_inventory::Ctr;

/// The machine's containerd.
pub use riklet_inventory::CONTAINERD_SOCKET as SOCKET;

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
