//! Embeds the eBPF objects that `cargo xtask build-ebpf` builds: the node
//! monitor (`riklet-ebpf`) and the Node Proxy's socket load-balancer
//! (`riklet-proxy`).
//!
//! The objects are built by the xtask rather than here because they need
//! nightly, `-Z build-std=core` and bpf-linker, which a stable `cargo build`
//! cannot provide by itself; this script only copies them into `OUT_DIR`,
//! where `metrics::ebpf` and `proxy::ebpf` include them with
//! `aya::include_bytes_aligned!`.

use std::{env, fs, path::PathBuf, process::ExitCode};

/// Where `cargo xtask build-ebpf` writes the objects, relative to the
/// workspace root (`xtask/src/ebpf.rs`, `object_path`).
const OBJECT_DIR: &str = "target/ebpf/bpfel-unknown-none/release";

/// The objects (binary names of `riklet-ebpf`), embedded as `<name>.o`.
const OBJECTS: [&str; 2] = ["riklet-ebpf", "riklet-proxy"];

fn main() -> ExitCode {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir.parent().unwrap_or(&manifest_dir);

    for name in OBJECTS {
        let object = workspace_root.join(OBJECT_DIR).join(name);
        println!("cargo::rerun-if-changed={}", object.display());
        if !object.is_file() {
            println!(
                "cargo::error=eBPF object missing: run `cargo xtask build-ebpf` first (expected {})",
                object.display()
            );
            return ExitCode::FAILURE;
        }
        let embedded = out_dir.join(format!("{name}.o"));
        if let Err(error) = fs::copy(&object, &embedded) {
            println!(
                "cargo::error=copying {} to {}: {error}",
                object.display(),
                embedded.display()
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
