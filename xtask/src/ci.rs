//! `cargo xtask ci`: what CI runs (and the README's test command): set up,
//! build the eBPF object, check formatting and lints, run every test as
//! root against the real kernel.

use std::path::Path;
use std::process::Command;

use crate::setup::sh;

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::ebpf::build()?;
    let cargo = |args: &[&str]| sh(Command::new("cargo").current_dir(root).args(args));
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The end-to-end tests start these binaries as separate processes.
    cargo(&["build", "--workspace", "--bins"])?;
    cargo(&["test", "--workspace", "--no-fail-fast"])
}
