//! A throwaway image registry for the end-to-end tests, and the images to
//! put in it (also used by riklet's own image tests).
//!
//! [`Registry::start`] runs Debian's `docker-registry` (the CNCF
//! distribution registry) on `127.0.0.1:<free port>` over plain HTTP, with
//! its storage in a temporary directory; dropping the guard kills it and
//! removes the storage. [`busybox_archive`] makes an OCI archive with
//! `cargo xtask image` (once per test process) and [`Registry::push`]
//! uploads it with `skopeo`. [`JunkServer`] answers garbage.
//!
//! A missing tool makes the test panic with what to install: these tests
//! never skip.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Panics unless `tool` runs (`tool --version`, `tool version` or
/// `tool -V`).
pub fn require(tool: &str, package: &str) {
    let runs = |arg: &str| {
        Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        runs("--version") || runs("version") || runs("-V"),
        "`{tool}` is required by this test: apt install {package} (or `cargo xtask setup`)"
    );
}

/// A running `docker-registry serve`; killed on drop.
pub struct Registry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `/v2/`
    /// answers (at most 10 s).
    pub fn start() -> Registry {
        require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("writing the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut registry = Registry {
            child: Some(child),
            addr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/v2/", &[], b"") {
                return registry;
            }
            if let Some(Ok(Some(status))) = registry.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({status}): {}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {addr} within 10 s: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, the registry part of references to it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Uploads an OCI archive as `<host>/<repo_tag>` with skopeo.
    pub fn push(&self, archive: &Path, repo_tag: &str) {
        require("skopeo", "skopeo");
        let dest = format!("docker://{}/{repo_tag}", self.host());
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(&dest)
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {} {dest} failed: {}{}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Kills the registry now (the storage stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds an OCI archive of busybox with `cargo xtask image` into `out`.
/// `arch` is the architecture written in the config (`amd64`, `arm64`).
pub fn build_image(out: &Path, name: &str, arch: &str) {
    xtask_image(out, name, arch, &[]);
}

/// [`build_image`], but the archive's `index.json` lists an image index
/// whose one manifest names no platform: only the config says the
/// architecture (`cargo xtask image --unlabelled`).
pub fn build_unlabelled_image(out: &Path, name: &str, arch: &str) {
    xtask_image(out, name, arch, &["--unlabelled"]);
}

fn xtask_image(out: &Path, name: &str, arch: &str, extra: &[&str]) {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out_arg = out.to_str().expect("UTF-8 path");
    let output = Command::new(cargo)
        .current_dir(&root)
        .args(["run", "-q", "-p", "xtask", "--", "image"])
        .args(["--out", out_arg, "--name", name, "--arch", arch])
        .args(extra)
        .output()
        .expect("running cargo xtask image");
    assert!(
        output.status.success(),
        "cargo xtask image failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The workspace root (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests is inside the workspace")
        .to_path_buf()
}

/// The busybox archive for `arch` (`amd64`, `arm64`…), built once per
/// test process under `target/e2e-images/<pid>/`.
pub fn busybox_archive(arch: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    built
        .entry(arch.to_string())
        .or_insert_with(|| {
            let root = workspace_root().join("target/e2e-images");
            // Archives of test processes that are gone.
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let pid = e.file_name().to_string_lossy().parse::<i64>().ok();
                if pid.is_some_and(|p| !crate::alive(p)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let dir = root.join(std::process::id().to_string());
            std::fs::create_dir_all(&dir).expect("creating target/e2e-images");
            let out = dir.join(format!("busybox-{arch}.tar"));
            build_image(&out, "busybox:1", arch);
            out
        })
        .clone()
}

/// The host's architecture as OCI names it (GOARCH: `amd64`, `arm64`…).
pub fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

/// A TCP server on 127.0.0.1 that answers every connection with bytes that
/// are not HTTP, then closes it.
pub struct JunkServer {
    pub addr: SocketAddr,
}

impl JunkServer {
    pub fn start() -> JunkServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = conn.read(&mut buf);
                    let _ = conn
                        .write_all(b"SSH-2.0-not-a-registry\r\n\x00\xff garbage garbage\r\n\r\n");
                });
            }
        });
        JunkServer { addr }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// One HTTP/1.0 request to `addr`; returns the status and body. Enough
/// for a registry's API in tests (no chunked encoding with 1.0).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, answer[split + 4..].to_vec()))
}
