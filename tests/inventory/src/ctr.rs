//! `ctr`, containerd's own client, for listing and removing what a
//! riklet left in its containerd namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
