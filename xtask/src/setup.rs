//! `cargo xtask setup`: everything a fresh Debian machine (as root) needs to
//! build, run and test riklet. Idempotent: each step checks first.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages: eBPF linker's LLVM, protoc, test peers.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "protobuf-compiler",
    "libprotobuf-dev",
    "busybox-static",
    "socat",
    "hyperfine",
];

pub fn run() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    mount_if_missing("bpf", "/sys/fs/bpf", "bpf")?;
    mount_if_missing("tracefs", "/sys/kernel/tracing", "tracefs")?;
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
