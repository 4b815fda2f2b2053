//! `cargo xtask build-ebpf`: builds `riklet-ebpf`'s two objects into
//! `target/ebpf/bpfel-unknown-none/release/`: `riklet-ebpf` (the node
//! monitor) and `riklet-proxy` (the Node Proxy's socket load-balancer),
//! which `riklet/build.rs` embeds.
//!
//! The crate needs nightly (`-Z build-std=core`, since there is no prebuilt
//! `core` for `bpfel-unknown-none`), the `rust-src` component and
//! `bpf-linker`; `cargo xtask setup` installs them.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The eBPF crate's directory, relative to the workspace root.
const CRATE_DIR: &str = "riklet-ebpf";
/// Its binary targets, each an object file: the node monitor and the Node
/// Proxy's socket load-balancer (separate, so that the proxy's pinned maps
/// and links live independently of the monitor's).
pub const BINARIES: [&str; 2] = ["riklet-ebpf", "riklet-proxy"];
/// The BPF target; little-endian, like every host riklet runs on.
const TARGET: &str = "bpfel-unknown-none";
/// The toolchain; `riklet-ebpf` has no rust-toolchain.toml, we pick it here.
const TOOLCHAIN: &str = "+nightly";

/// Environment that `cargo xtask` inherits from the outer (stable) cargo and
/// that would make the nested `cargo +nightly` run stable's rustc or tools.
const INHERITED_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// Where [`build`] writes the object of `binary` (one of [`BINARIES`]),
/// for a given workspace root.
pub fn object_path(workspace_root: &Path, binary: &str) -> PathBuf {
    workspace_root
        .join("target/ebpf")
        .join(TARGET)
        .join("release")
        .join(binary)
}

/// Whether every object of [`BINARIES`] exists.
pub fn objects_built(workspace_root: &Path) -> bool {
    BINARIES
        .iter()
        .all(|binary| object_path(workspace_root, binary).is_file())
}

/// Builds the eBPF objects (release: the verifier needs the optimised code).
pub fn build() -> anyhow::Result<()> {
    let root = workspace_root();
    check_prerequisites()?;

    let target_dir = root.join("target/ebpf");
    let mut cargo = nightly_cargo();
    cargo
        .current_dir(root.join(CRATE_DIR))
        .args(["build", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        // The ebpf crate is its own workspace: without an explicit target
        // directory it would build into riklet-ebpf/target.
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags());

    let status = cargo
        .status()
        .with_context(|| format!("running {cargo:?}"))?;
    if !status.success() {
        bail!("building {CRATE_DIR} failed ({status}); command: {cargo:?}");
    }
    for binary in BINARIES {
        let object = object_path(&root, binary);
        if !object.is_file() {
            bail!("{CRATE_DIR} built but {} does not exist", object.display());
        }
        println!("eBPF object: {}", object.display());
    }
    Ok(())
}

/// Flags aya's own build (aya-build) passes: the BPF target arch for
/// aya-ebpf's arch-specific code (`CARGO_CFG_TARGET_ARCH` is just "bpf"),
/// full debug info, and `--btf` so that bpf-linker emits BTF, which the
/// loader and `bpftool` use.
fn rustflags() -> OsString {
    const SEPARATOR: &str = "\x1f";
    let flags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    flags.join(SEPARATOR).into()
}

/// `cargo +nightly` with the outer cargo's environment removed.
fn nightly_cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo.arg(TOOLCHAIN);
    for key in INHERITED_ENV {
        cargo.env_remove(key);
    }
    cargo
}

/// Fails with what is missing and how to get it, rather than with whatever a
/// nested cargo prints when nightly, rust-src or bpf-linker are absent.
fn check_prerequisites() -> anyhow::Result<()> {
    const FIX: &str = "run `cargo xtask setup`";

    let sysroot = probe_output(Command::new("rustc").args([TOOLCHAIN, "--print", "sysroot"]))
        .with_context(|| format!("the nightly toolchain is not usable; {FIX}"))?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "the nightly toolchain has no rust-src component ({} missing); {FIX}",
            core_src.display()
        );
    }
    probe_output(Command::new("bpf-linker").arg("--version"))
        .with_context(|| format!("bpf-linker is not installed or not on PATH; {FIX}"))?;
    Ok(())
}

/// Runs a probe command without the inherited toolchain environment and
/// returns its stdout.
fn probe_output(command: &mut Command) -> anyhow::Result<String> {
    for key in INHERITED_ENV {
        command.env_remove(key);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{command:?} printed non-UTF-8"))
}
