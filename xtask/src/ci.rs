//! `cargo xtask ci`: what CI runs (and the README's test command): set up,
//! build the eBPF objects, check formatting and lints, run every test as
//! root against the real kernel, each fuzz target for a minute, then a
//! short run of the Node Proxy benchmark (`bench proxy --quick`), so that
//! it keeps working, and a short soak (`soak`, [`SOAK_CYCLES`] cycles),
//! which fails on growth. The last two use the dev build the tests ran:
//! they check, they do not measure, and a cold release build would add
//! about 12 minutes to CI.

use std::path::Path;
use std::process::Command;

use crate::bench::cluster::Build;
use crate::setup::sh;

/// The soak's cycles in CI: about two minutes on a 2-core machine.
pub const SOAK_CYCLES: usize = 300;

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::ebpf::build()?;
    // Incremental state only pays off on rebuilds; a CI clone builds once,
    // and the state would take gigabytes of its disk.
    let cargo = |args: &[&str]| {
        sh(Command::new("cargo")
            .current_dir(root)
            .env("CARGO_INCREMENTAL", "0")
            .args(args))
    };
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
    cargo(&["test", "--workspace", "--no-fail-fast"])?;
    // A minute per fuzz target: a regression of the hostile-input checks
    // shows (docs/benchmarks.md, "Fuzzing", for the build time).
    crate::fuzz::run(root, std::time::Duration::from_secs(60), None)?;
    crate::bench::proxy::proxy(
        root,
        &crate::bench::proxy::Options {
            quick: true,
            node_address: None,
            build: Build::Dev,
        },
    )?;
    crate::soak::run(
        root,
        &crate::soak::Options {
            cycles: SOAK_CYCLES,
            container_every: 50,
            build: Build::Dev,
        },
    )
}
