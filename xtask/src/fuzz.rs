//! `cargo xtask fuzz --time DUR [--target NAME]`: runs the `cargo fuzz`
//! targets of `fuzz/` (nightly, libFuzzer), each for DUR, all at once (the
//! machine's cores shared between them; the wall time is DUR). Each target's
//! corpus grows in `fuzz/corpus/<target>/` (not committed); a crash leaves
//! its input in `fuzz/artifacts/<target>/` and fails the command. Inputs
//! that crashed once are kept in `fuzz/regressions/<target>/` and replayed
//! by the unit tests of the crate they concern.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::setup::sh;

/// Every target, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "manifest",
    "definition",
    "cri_reader",
    "cri_writer",
    "state_record",
];

pub fn run(root: &Path, time: Duration, target: Option<&str>) -> anyhow::Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "unknown fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    crate::setup::cargo_fuzz()?;
    let dir = root.join("fuzz");
    // `-s none`: the targets are safe Rust; AddressSanitizer would slow
    // them several times for nothing it could find.
    let fuzz = |args: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .args(["+nightly", "fuzz"])
            .args(args);
        cmd
    };
    sh(&mut fuzz(&["build", "-s", "none"]))?;
    let seconds = time.as_secs().max(1).to_string();
    let mut running = Vec::new();
    for t in targets {
        println!("fuzz: {t} for {seconds}s");
        let child = fuzz(&["run", "-s", "none", t, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .spawn()
            .with_context(|| format!("cannot start cargo fuzz run {t}"))?;
        running.push((t, child));
    }
    let mut failed = Vec::new();
    for (t, mut child) in running {
        if !child.wait().is_ok_and(|s| s.success()) {
            failed.push(t);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}
