//! Embeds the eBPF object that `cargo xtask build-ebpf` builds.
//!
//! The object is built by the xtask rather than here because it needs
//! nightly, `-Z build-std=core` and bpf-linker, which a stable `cargo build`
//! cannot provide by itself; this script only copies the result into
//! `OUT_DIR`, where `metrics::ebpf` includes it with
//! `aya::include_bytes_aligned!`.

use std::{env, fs, path::PathBuf, process::ExitCode};

/// Where `cargo xtask build-ebpf` writes the object, relative to the
/// workspace root (`xtask/src/ebpf.rs`, `object_path`).
const OBJECT: &str = "target/ebpf/bpfel-unknown-none/release/riklet-ebpf";

fn main() -> ExitCode {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir.parent().unwrap_or(&manifest_dir);
    let object = workspace_root.join(OBJECT);

    println!("cargo::rerun-if-changed={}", object.display());
    if !object.is_file() {
        println!(
            "cargo::error=eBPF object missing: run `cargo xtask build-ebpf` first (expected {})",
            object.display()
        );
        return ExitCode::FAILURE;
    }
    let embedded = out_dir.join("riklet-ebpf.o");
    if let Err(error) = fs::copy(&object, &embedded) {
        println!(
            "cargo::error=copying {} to {}: {error}",
            object.display(),
            embedded.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
