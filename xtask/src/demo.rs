//! `cargo xtask demo`: the README's main job. Sets the machine up, builds
//! everything, starts a one-node cluster (`riklet --standalone`), deploys
//! the example bare-process app, lists it, reaches it on its port, reads
//! its logs and deletes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::setup::sh;

const SCHEDULER: &str = "http://127.0.0.1:4995";
const APP: &str = "hello-http";
const MANIFEST: &str = "assets/examples/hello-http.yaml";

/// Stops the riklet when the demo ends, however it ends.
struct Riklet(Child);

impl Drop for Riklet {
    fn drop(&mut self) {
        let _ = nix_kill(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::ebpf::build()?;
    sh(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "riklet",
        "-p",
        "scheduler",
        "-p",
        "rik",
    ]))?;
    let bin = root.join("target/release");
    let state = tempdir("riklet-demo")?;
    let config = state.join("config.toml");
    std::fs::write(
        &config,
        "restart_backoff_initial = \"1s\"\nstop_grace_period = \"3s\"\n",
    )?;

    step("start a one-node cluster: riklet --standalone");
    let log_path = root.join("target/demo-riklet.log");
    let log = std::fs::File::create(&log_path).context("creating the riklet log")?;
    println!("riklet log: {}", log_path.display());
    let riklet = Riklet(
        Command::new(bin.join("riklet"))
            .arg("--standalone")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(state.join("state"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting riklet")?,
    );
    let rik = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin.join("rik"))
            .arg("--scheduler")
            .arg(SCHEDULER)
            .args(args)
            .current_dir(root)
            .output()
            .context("running rik")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "rik {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(text)
    };
    wait_for(Duration::from_secs(30), "the node to be ready", || {
        rik(&["get", "nodes"])
            .map(|t| t.contains("Ready") && !t.contains("NotReady"))
            .unwrap_or(false)
    })?;
    print!("{}", rik(&["get", "nodes"])?);

    step(&format!("deploy {MANIFEST}"));
    print!(
        "{}",
        rik(&["apply", "-f", MANIFEST, "--wait", "--timeout", "30s"])?
    );

    step("list apps");
    print!("{}", rik(&["get", "apps"])?);
    print!("{}", rik(&["get", "apps", "-o", "wide"])?);
    print!("{}", rik(&["get", "app", APP, "-o", "json"])?);

    step("reach the app on its port (127.0.0.1:8080)");
    let body = http_get("127.0.0.1:8080", "/copyright")?;
    println!("{}", body.lines().next().unwrap_or(""));

    step("read its logs");
    wait_for(Duration::from_secs(10), "the request in the logs", || {
        rik(&["logs", APP])
            .map(|t| t.contains("/copyright"))
            .unwrap_or(false)
    })?;
    print!("{}", rik(&["logs", APP, "--tail", "5"])?);

    step("delete it");
    print!("{}", rik(&["delete", APP])?);
    wait_for(Duration::from_secs(20), "the app to be gone", || {
        TcpStream::connect("127.0.0.1:8080").is_err()
            && rik(&["get", "apps"])
                .map(|t| !t.contains(APP))
                .unwrap_or(false)
    })?;
    drop(riklet);
    let _ = std::fs::remove_dir_all(&state);
    step("demo complete");
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// A minimal HTTP/1.0 GET (to loopback only).
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}
