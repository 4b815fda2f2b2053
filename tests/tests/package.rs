//! The Debian package (`cargo xtask package --profile dev`, the binaries
//! the tests built) installed into this machine: the binaries answer
//! `--version` from `/usr/bin`, stripped, their debug info beside in
//! `/usr/lib/debug`; the installed units pass `systemd-analyze verify`;
//! the config is a conffile; `dpkg --purge` leaves nothing behind.
//!
//! Nothing else runs the installed files: the other tests start the
//! binaries of `target/` by their full path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use riklet_e2e::require_root;

const PACKAGE: &str = "riklet";
const BINARIES: &[&str] = &["riklet", "riklet-shim", "rik-scheduler", "rik"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Whether dpkg knows the package as installed.
fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    }
}

/// Builds the package with the dev profile and returns its path.
fn build_package() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = stdout(Command::new(cargo).current_dir(root).args([
        "xtask",
        "package",
        "--profile",
        "dev",
    ]));
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .unwrap_or_else(|| panic!("no package path in the xtask's output:\n{out}"));
    PathBuf::from(path)
}

/// The section names of an ELF file.
fn sections(path: &Path) -> String {
    stdout(Command::new("readelf").arg("-SW").arg(path))
}

#[test]
fn the_package_installs_runs_and_purges_cleanly() {
    require_root();
    assert!(
        !installed(),
        "the {PACKAGE} package is already installed on this machine: \
         this test would remove it (dpkg --purge {PACKAGE} first)"
    );
    for name in BINARIES {
        let path = Path::new("/usr/bin").join(name);
        assert!(
            !path.exists(),
            "{} exists outside the package: the test would overwrite it",
            path.display()
        );
    }
    let deb = build_package();
    let _purge = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));

    for (name, version) in [
        ("riklet", "riklet 0.1.0"),
        ("rik-scheduler", "rik-scheduler 0.1.0"),
        ("rik", "rik 0.1.0"),
    ] {
        let out = stdout(Command::new(Path::new("/usr/bin").join(name)).arg("--version"));
        assert_eq!(out.trim(), version, "/usr/bin/{name} --version");
    }
    for name in BINARIES {
        let bin = Path::new("/usr/bin").join(name);
        let debug = Path::new("/usr/lib/debug/usr/bin").join(format!("{name}.debug"));
        let bin_sections = sections(&bin);
        assert!(
            bin_sections.contains(".gnu_debuglink") && !bin_sections.contains(".debug_line"),
            "{} is not stripped with a debug link:\n{bin_sections}",
            bin.display()
        );
        assert!(
            sections(&debug).contains(".debug_line"),
            "{} holds no debug info",
            debug.display()
        );
    }
    let conffiles = stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        conffiles.contains("/etc/riklet/config.toml"),
        "the config is not a conffile: {conffiles:?}"
    );
    assert!(Path::new("/usr/share/doc/riklet/operations.md").exists());
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg("/lib/systemd/system/riklet.service")
        .arg("/lib/systemd/system/rik-scheduler.service"));

    let files = stdout(Command::new("dpkg").args(["-L", PACKAGE]));
    run(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(!installed(), "{PACKAGE} still installed after the purge");
    let own_dirs = [
        "/etc/riklet",
        "/usr/share/doc/riklet",
        "/usr/lib/debug/usr/bin",
    ];
    let left: Vec<&str> = files
        .lines()
        .filter(|f| {
            let path = Path::new(f);
            (path.is_file() || own_dirs.contains(f)) && path.exists()
        })
        .collect();
    assert!(left.is_empty(), "left after dpkg --purge: {left:?}");
}
