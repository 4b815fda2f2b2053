//! `cargo xtask`: the project's tasks.
//!
//! # Layout
//! - `setup`: installs what builds and tests need on a Debian machine and
//!   starts containerd if it is not running (idempotent).
//! - `build-ebpf`: builds `riklet-ebpf` for `bpfel-unknown-none` (see [`ebpf`]).
//! - `demo`: the README's main job, end to end.
//! - `bench`: benchmarks, results in `target/bench/` and docs/benchmarks.md.
//! - `ci`: what `.ci/run` runs.

mod bench;
mod ci;
mod demo;
mod ebpf;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "riklet project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install packages, rust-src, bpf-linker; mount bpffs and tracefs.
    Setup,
    /// Build the eBPF programs (nightly, bpfel-unknown-none, release).
    BuildEbpf,
    /// The main job end to end: one-node cluster, deploy, list, reach, logs, delete.
    Demo,
    /// Everything CI checks: setup, eBPF build, fmt, clippy, all tests (as root).
    Ci,
    /// Benchmarks; results in target/bench/ (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// Pod start latency (rik apply --wait vs fork+exec) and the riklet's
    /// RSS/CPU idle and with 50 pods, in one run: target/bench/start.json.
    Start,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => ebpf::build(),
        Command::Demo => demo::run(&ebpf::workspace_root()),
        Command::Ci => ci::run(&ebpf::workspace_root()),
        Command::Bench { which } => match which {
            BenchKind::Start => bench::start(&ebpf::workspace_root()),
        },
    }
}
