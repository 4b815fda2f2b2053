//! `cargo xtask setup`: everything a fresh Debian machine (as root) needs to
//! build, run and test riklet. Idempotent: each step checks first.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages: eBPF linker's LLVM, protoc, test peers, benchmark tools.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "busybox-static",
    "socat",
    "hyperfine",
    "containerd",
    "runc",
    "docker-registry",
    "skopeo",
    "prometheus",
    "nftables",
    "iperf3",
    "bpftool",
    "conntrack",
    // cargo xtask bench proxy: load generators, the pod's server, a relay.
    "wrk",
    "nginx-light",
    "haproxy",
    // The log shipper's test receiver (syslog over TCP, RFC 5424).
    "rsyslog",
    // systemd-analyze verifies the units; objcopy splits the packaged
    // binaries' debug info (dpkg-deb is part of every Debian system).
    "systemd",
    "binutils",
];

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    mount_if_missing("bpf", "/sys/fs/bpf", "bpf")?;
    mount_if_missing("tracefs", "/sys/kernel/tracing", "tracefs")?;
    start_containerd()?;
    println!("setup: done");
    Ok(())
}

pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup not found")?;
    if String::from_utf8_lossy(&out.stdout).contains("rust-src") {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM 22 (a few minutes)");
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
}

/// cargo-fuzz, for `cargo xtask fuzz` (and CI); this version builds with
/// the toolchains here.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (about a minute)");
    sh(Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked", "--version", "0.13.2"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
}

fn mount_if_missing(fstype: &str, target: &str, source: &str) -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target))
    {
        return Ok(());
    }
    if !Path::new(target).exists() {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    }
    sh(Command::new("mount").args(["-t", fstype, source, target]))
}

/// containerd's default socket.
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Starts containerd (Debian's package, default config) when nothing
/// answers on its socket: machines without systemd do not start it.
fn start_containerd() -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(CONTAINERD_SOCKET).is_ok() {
        return Ok(());
    }
    println!("setup: starting containerd (log: /var/log/containerd.log)");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/log/containerd.log")
        .context("opening /var/log/containerd.log")?;
    let mut cmd = Command::new("containerd");
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: it must outlive this command.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().context("starting containerd")?;
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(CONTAINERD_SOCKET).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("containerd did not open {CONTAINERD_SOCKET} within 10 s (see /var/log/containerd.log)")
}
