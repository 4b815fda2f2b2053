//! The riklet built with its crash points (`--features crash-points`),
//! copied to `target/crash-points/` with its `riklet-shim`, so that the
//! other tests keep running the plain build at `target/debug/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the crash-point riklet once per test process; its directory.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let plain = crate::bin_dir();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let build = |features: &[&str]| {
            let status = Command::new(&cargo)
                .current_dir(root)
                .args(["build", "-p", "riklet"])
                .args(features)
                .status()
                .expect("running cargo build for the riklet");
            assert!(
                status.success(),
                "cargo build -p riklet {features:?} failed"
            );
        };
        // Only the riklet package is rebuilt: its dependencies' features
        // do not change.
        build(&["--features", "crash-points"]);
        let dir = plain.parent().expect("target dir").join("crash-points");
        std::fs::create_dir_all(&dir).expect("target/crash-points");
        for exe in ["riklet", "riklet-shim"] {
            let to = dir.join(exe);
            let _ = std::fs::remove_file(&to);
            std::fs::copy(plain.join(exe), &to)
                .unwrap_or_else(|e| panic!("copying {exe} to {}: {e}", to.display()));
        }
        // Back to the plain binaries for everything else.
        build(&[]);
        dir
    })
}
