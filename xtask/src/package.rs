//! `cargo xtask package`: the Debian package `riklet_<version>_<arch>.deb`
//! in `target/package/`, written by `dpkg-deb --build` from a staged tree.
//!
//! `dpkg-deb` comes with every Debian system, where `cargo-deb` would be one
//! more tool to build and keep working on our rustc; the tree below is all
//! a `.deb` needs. It holds the four binaries, stripped (`riklet` embeds
//! its eBPF objects, `riklet-shim` must sit next to it), their debug info
//! as separate files under `/usr/lib/debug` (each binary names its file
//! with a `.gnu_debuglink`), both systemd units, the default config as a
//! conffile and the docs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::setup::sh;

/// The binaries, all installed in `/usr/bin`.
const BINARIES: &[&str] = &["riklet", "riklet-shim", "rik-scheduler", "rik"];
/// The systemd units of `assets/systemd/`.
const UNITS: &[&str] = &["riklet.service", "rik-scheduler.service"];
/// The package's name.
const NAME: &str = "riklet";

/// Builds the binaries with cargo profile `profile` (`release`, or `dev`
/// to package what the tests built) and writes the package; returns its
/// path.
pub fn run(root: &Path, profile: &str) -> anyhow::Result<PathBuf> {
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["build", "--profile", profile])
            .args(["-p", "riklet", "-p", "scheduler", "-p", "rik"]),
    )?;
    let bins = root.join("target").join(match profile {
        "dev" => "debug",
        other => other,
    });
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = root.join("target/package");
    let tree = out_dir.join(format!("{NAME}_{version}_{arch}"));
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for name in BINARIES {
        install_binary(&bins.join(name), &tree, name)?;
    }
    stage_files(root, &tree)?;
    write_control(&tree, version, &arch)?;
    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    // gzip: fast enough for the ~200 MB of a debug build, read by every dpkg.
    sh(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&tree)
        .arg(&deb))?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Copies a binary to `/usr/bin`, its debug info to
/// `/usr/lib/debug/usr/bin/<name>.debug`, strips it and links it to that
/// file (where gdb and perf look for it).
fn install_binary(built: &Path, tree: &Path, name: &str) -> anyhow::Result<()> {
    if !built.exists() {
        bail!("{} is missing after the build", built.display());
    }
    let bin = tree.join("usr/bin").join(name);
    let debug_dir = tree.join("usr/lib/debug/usr/bin");
    let debug = debug_dir.join(format!("{name}.debug"));
    create_dir(bin.parent().expect("usr/bin"))?;
    create_dir(&debug_dir)?;
    sh(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(built)
        .arg(&debug))?;
    set_mode(&debug, 0o644)?;
    sh(Command::new("objcopy")
        .args(["--strip-debug", "--strip-unneeded"])
        .arg(built)
        .arg(&bin))?;
    // Records the debug file's name and checksum.
    sh(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&bin))?;
    set_mode(&bin, 0o755)
}

/// The units, the default config (a conffile) and the docs.
fn stage_files(root: &Path, tree: &Path) -> anyhow::Result<()> {
    for unit in UNITS {
        copy(
            &root.join("assets/systemd").join(unit),
            &tree.join("lib/systemd/system").join(unit),
        )?;
    }
    copy(
        &root.join("assets/config.toml"),
        &tree.join("etc/riklet/config.toml"),
    )?;
    let doc = tree.join("usr/share/doc").join(NAME);
    copy(&root.join("README.md"), &doc.join("README.md"))?;
    for entry in std::fs::read_dir(root.join("docs")).context("reading docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let file = path.file_name().expect("a file name");
            copy(&path, &doc.join(file))?;
        }
    }
    write(
        &doc.join("copyright"),
        "riklet\nLicense: Apache-2.0\n \
         On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )
}

/// `DEBIAN/`: control, conffiles and the scripts that reload systemd.
fn write_control(tree: &Path, version: &str, arch: &str) -> anyhow::Result<()> {
    let size_kib = output(Command::new("du").args(["-sk", "--"]).arg(tree))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    let control = format!(
        "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: riklet developers <riklet@localhost>\nSection: admin\nPriority: optional\n\
         Installed-Size: {size_kib}\nDepends: libc6, nftables\nRecommends: containerd, runc\n\
         Description: RIK node agent, scheduler and CLI\n \
         riklet runs a RIK scheduler's app instances as pods (containerd\n \
         containers or bare processes), rik-scheduler places them, rik drives both.\n"
    );
    let debian = tree.join("DEBIAN");
    create_dir(&debian)?;
    write(&debian.join("control"), &control, 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/riklet/config.toml\n",
        0o644,
    )?;
    // Units are not enabled on install: `systemctl enable --now riklet`.
    let reload = "#!/bin/sh\nset -e\n\
                  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(&debian.join("postinst"), reload, 0o755)?;
    write(&debian.join("postrm"), reload, 0o755)?;
    let stop = "#!/bin/sh\nset -e\n\
                if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n  \
                systemctl stop riklet.service rik-scheduler.service || true\nfi\n";
    write(&debian.join("prerm"), stop, 0o755)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    create_dir(to.parent().expect("a parent"))?;
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
