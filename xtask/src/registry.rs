//! A throw-away OCI registry (`docker-registry serve`) for the demo and the
//! container benchmark: storage in a directory of its own, removed with the
//! process on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::setup::sh;

/// A running registry on `host`.
pub(crate) struct Registry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:<port>`, what image references start with.
    pub(crate) host: String,
}

impl Registry {
    /// Starts a registry listening on `host`, storing under `dir` (created,
    /// and removed on drop); returns once it accepts connections.
    pub(crate) fn start(dir: PathBuf, host: String) -> anyhow::Result<Registry> {
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                dir.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let registry = Registry { child, dir, host };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&registry.host).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} within 10 s (log: {})",
                    registry.host,
                    registry.dir.join("registry.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Pushes an OCI archive as `repo_tag` (`busybox:1`).
    pub(crate) fn push(&self, archive: &Path, repo_tag: &str) -> anyhow::Result<()> {
        sh(Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
