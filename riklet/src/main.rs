//! `riklet`: the RIK node agent binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use riklet::Config;
use riklet::config::paths;
use riklet::service_manager::ServiceManager;
use scheduler::service::{self, Notifier};

/// The RIK node agent: runs the scheduler's app instances as pods on this node.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML config file (default /etc/riklet/config.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Also run the scheduler in-process (a one-node cluster).
    #[arg(long)]
    standalone: bool,
    /// Scheduler URL, e.g. http://10.0.0.1:4995.
    #[arg(long)]
    scheduler: Option<String>,
    /// Runtime memory directory (default /var/lib/riklet).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Node name to register as (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Prometheus endpoint address (default 127.0.0.1:9102).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Node Proxy datapath: ebpf, nftables or off (default ebpf).
    #[arg(long)]
    proxy: Option<riklet::proxy::ProxyMode>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Join token from `rik-scheduler token create` (first start of a node
    /// with an https:// scheduler; a stored certificate makes it unneeded).
    #[arg(long, value_name = "TOKEN", requires = "ca_hash")]
    join: Option<String>,
    /// The cluster CA's key hash (sha256:HEX) the scheduler must prove
    /// when joining.
    #[arg(long, value_name = "HASH", requires = "join")]
    ca_hash: Option<String>,
    /// Plaintext off loopback: an http:// scheduler on another host (RIK's
    /// own scheduler), a plaintext node API for remote peers.
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show the running riklet's state: node, scheduler, containerd, eBPF,
    /// proxy, addresses, pod counts by state.
    Status {
        /// `table` for people, `json` for scripts (the whole document).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// List the running riklet's pods.
    Pods {
        /// `table` for people, `json` for scripts (each pod's full status).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show the Node Proxy: each service, its datapath, backends and
    /// counters (JSON).
    Proxy,
}

/// How `status` and `pods` print.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(paths::CONFIG_FILE).exists() => {
            Config::load(paths::CONFIG_FILE.as_ref())?
        }
        None => Config::default(),
    };
    if cli.standalone {
        config.standalone = true;
    }
    if let Some(s) = &cli.scheduler {
        config.scheduler = s.clone();
    }
    if let Some(d) = &cli.state_dir {
        config.state_dir = d.clone();
    }
    if let Some(n) = &cli.node_name {
        config.node_name = Some(n.clone());
    }
    if let Some(p) = cli.proxy {
        config.proxy = p;
    }
    if let Some(a) = cli.metrics_addr {
        config.metrics_addr = a;
    }
    if cli.insecure {
        config.insecure = true;
    }
    if let (Some(token), Some(hash)) = (&cli.join, &cli.ca_hash) {
        config.join = Some(riklet::tls::JoinFlags {
            token: token.clone(),
            ca_hash: hash.parse().context("--ca-hash")?,
        });
    }
    if config.standalone && cli.scheduler.is_none() {
        config.scheduler = format!("http://{}", config.standalone_listen);
    }
    config.validate()?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    // containerd's logging binary for one container (started by the
    // containerd shim, output on fds 3 and 4): its arguments are key/value
    // pairs in no fixed order, which clap cannot take.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match riklet::runtime::logger::parse_args(&args) {
        // Before any thread exists: the logger blocks SIGTERM for all.
        Some(Ok(log)) => riklet::runtime::logger::main(&log),
        Some(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
        None => {}
    }
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    // SAFETY: no other thread runs yet (the runtime is built below).
    let (notifier, watchdog) = unsafe { Notifier::from_env() };
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Command::Status { output }) => print_answer(&runtime, &config, "status", output),
        Some(Command::Pods { output }) => print_answer(&runtime, &config, "pods", output),
        Some(Command::Proxy) => print_answer(&runtime, &config, "proxy", Output::Json),
        None => {
            riklet::observability::init(cli.log_json);
            service::abort_on_panic("riklet");
            let service = ServiceManager {
                notifier: notifier.context("cannot reach the service manager")?,
                watchdog,
                fault: service::TestFault::from_env("RIKLET_TEST_FAULT"),
            };
            riklet::crash::arm_from_env()?;
            raise_fd_limit();
            // Nothing the riklet inherited reaches its shims and pods.
            if let Err(e) = riklet_shim::fds::cloexec_above_stdio() {
                tracing::warn!(error = %e, "cannot mark inherited descriptors close-on-exec");
            }
            runtime.block_on(riklet::run_under(config, service, shutdown_signal()))?;
            Ok(())
        }
    }
}

/// Prints the running riklet's answer to `what` on its control socket:
/// the JSON document, or the table of `status` and `pods`.
fn print_answer(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    what: &str,
    output: Output,
) -> anyhow::Result<()> {
    let path = config.socket_path();
    let answer = runtime
        .block_on(riklet::api::query_socket(&path, what))
        .with_context(|| format!("is the riklet running? (socket {})", path.display()))?;
    let text = match (output, what) {
        (Output::Table, "status") => riklet::admin::status_table(&serde_json::from_value(answer)?),
        (Output::Table, "pods") => {
            let pods: Vec<proto::status::AppStatus> = serde_json::from_value(answer)?;
            riklet::admin::pods_table(&pods, now_secs())
        }
        _ => format!("{answer:#}\n"),
    };
    print!("{text}");
    Ok(())
}

/// Seconds since the epoch, for the pods' ages.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The metrics collector keeps each pod's cgroup files open (several per
/// container): raise the soft descriptor limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
    }
}
