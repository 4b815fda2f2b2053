//! `cargo xtask`: the project's tasks.
//!
//! # Layout
//! - `setup`: installs what builds and tests need on a Debian machine and
//!   starts containerd if it is not running (idempotent).
//! - `build-ebpf`: builds `riklet-ebpf` for `bpfel-unknown-none` (see [`ebpf`]).
//! - `demo`: the README's main job, end to end.
//! - `bench`: benchmarks, results in `target/bench/` and docs/benchmarks.md.
//! - `ci`: what `.ci/run` runs.
//! - `soak`: pods created and deleted in a loop, failing on growth.
//! - `image`: a tiny OCI image archive of Debian's static busybox (see [`image`]).
//! - `package`: the Debian package (see [`package`]).

mod bench;
mod ci;
mod demo;
mod ebpf;
mod fuzz;
mod image;
mod package;
mod registry;
mod setup;
mod soak;

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
    /// Build the Debian package target/package/riklet_<version>_<arch>.deb.
    Package {
        /// Cargo profile of the binaries: `release`, or `dev` to package
        /// what the tests already built.
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Create and delete pods in a loop against a standalone riklet and
    /// fail on growth (RSS, fds, threads, node objects):
    /// target/bench/soak.json.
    Soak {
        /// How many create/delete cycles.
        #[arg(long, default_value_t = 300)]
        cycles: usize,
        /// An image container every K cycles (0: bare processes only).
        #[arg(long, default_value_t = 0)]
        container_every: usize,
        /// The riklet's build (dev: the one the tests use, as in CI).
        #[arg(long, value_enum, default_value_t = bench::cluster::Build::Release)]
        build: bench::cluster::Build,
    },
    /// Run the cargo fuzz targets of fuzz/ (nightly), each for --time.
    Fuzz {
        /// How long each target runs (e.g. 60s, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        time: std::time::Duration,
        /// Only this target (manifest, definition, cri_reader, cri_writer,
        /// state_record).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build a tiny OCI image archive (busybox + applet links), reproducibly.
    Image {
        /// Where to write the archive [default: target/images/busybox.tar].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Image name recorded in index.json.
        #[arg(long, default_value = "busybox:latest")]
        name: String,
        /// Architecture written in the config (metadata only) [default: the host's].
        #[arg(long)]
        arch: Option<String>,
        /// The static busybox to copy in.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: std::path::PathBuf,
        /// List an image index whose manifest names no platform, instead
        /// of the manifest itself (the layout many image tools write).
        #[arg(long)]
        unlabelled: bool,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// Pod start latency (rik apply --wait vs fork+exec), a burst of 100
    /// replicas, and the riklet's RSS/CPU idle and with the 100 pods, in
    /// one run: target/bench/start.json.
    Start,
    /// One burst: `rik apply` of an app with N replicas until all are
    /// RUNNING, then its delete (own bridge, /22 pod CIDR):
    /// target/bench/burst.json.
    Burst {
        /// How many replicas.
        #[arg(long, default_value_t = 100)]
        replicas: usize,
        /// The riklet's `start_parallelism` [default: the riklet's].
        #[arg(long)]
        start_parallelism: Option<usize>,
    },
    /// One metrics collection cycle (eBPF and cgroup reads, whole cycle)
    /// at 10, 100 and 500 pods, and the riklet's CPU at a 1 s interval:
    /// target/bench/metrics.json.
    Metrics,
    /// containerd pods: rik apply --wait → RUNNING with the image present
    /// against `ctr run`, and the pull path (cold, present, Always):
    /// target/bench/containers.json.
    Containers,
    /// Pod logs: capture throughput against a plain file, riklet + shim
    /// CPU at 10,000 lines/s, `rik logs -f` latency, shipping to rsyslog
    /// in lines/s: target/bench/logs.json.
    Logs,
    /// The Node Proxy against the pod IP and userspace relays, one pod:
    /// wrk (keep-alive, Connection: close) and iperf3 through each route,
    /// first connection after RUNNING, sync of 1,000 services:
    /// target/bench/proxy.json.
    Proxy {
        /// One round of 2-second runs and one sample of the rest (CI).
        #[arg(long)]
        quick: bool,
        /// The node address proxied routes are also measured at, besides
        /// 127.0.0.1 [default: the address of the default route's interface].
        #[arg(long)]
        node_address: Option<std::net::Ipv4Addr>,
        /// The binaries measured (dev: the ones the tests use, as in CI;
        /// figures only from release).
        #[arg(long, value_enum, default_value_t = bench::cluster::Build::Release)]
        build: bench::cluster::Build,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => ebpf::build(),
        Command::Demo => demo::run(&ebpf::workspace_root()),
        Command::Ci => ci::run(&ebpf::workspace_root()),
        Command::Package { profile } => package::run(&ebpf::workspace_root(), &profile).map(|_| ()),
        Command::Bench { which } => match which {
            BenchKind::Start => bench::start::start(&ebpf::workspace_root()),
            BenchKind::Burst {
                replicas,
                start_parallelism,
            } => bench::burst::run(&ebpf::workspace_root(), replicas, start_parallelism),
            BenchKind::Metrics => bench::metrics::metrics(&ebpf::workspace_root()),
            BenchKind::Containers => bench::containers::containers(&ebpf::workspace_root()),
            BenchKind::Logs => bench::logs::logs(&ebpf::workspace_root()),
            BenchKind::Proxy {
                quick,
                node_address,
                build,
            } => bench::proxy::proxy(
                &ebpf::workspace_root(),
                &bench::proxy::Options {
                    quick,
                    node_address,
                    build,
                },
            ),
        },
        Command::Soak {
            cycles,
            container_every,
            build,
        } => soak::run(
            &ebpf::workspace_root(),
            &soak::Options {
                cycles,
                container_every,
                build,
            },
        ),
        Command::Fuzz { time, target } => {
            fuzz::run(&ebpf::workspace_root(), time, target.as_deref())
        }
        Command::Image {
            out,
            name,
            arch,
            busybox,
            unlabelled,
        } => image::run(
            &out.unwrap_or_else(|| ebpf::workspace_root().join("target/images/busybox.tar")),
            &image::ImageSpec {
                arch: arch.unwrap_or_else(image::host_arch),
                busybox,
                unlabelled,
                ..image::ImageSpec::host(&name)
            },
        ),
    }
}
