//! `rik-scheduler`: the RIK-compatible scheduler as a service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use scheduler::metrics::ApiCalls;
use scheduler::pki::Pki;
use scheduler::service;
use scheduler::{DEFAULT_LISTEN, DEFAULT_STATE_DIR, SchedulerConfig, TlsConfig};
use tracing_subscriber::EnvFilter;

/// The RIK scheduler: accepts riklets (worker.Worker), places app instances
/// on them and serves the `rik` CLI (rik.v1.Rik), all on one port.
#[derive(Debug, Parser)]
#[command(name = "rik-scheduler", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to serve riklets and the `rik` CLI on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory of the persisted app store (state.json); created if missing.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// A node silent for this long is marked not ready and its instances are
    /// re-placed (e.g. "20s", "1m").
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Serve Prometheus metrics (`GET /metrics`: the rik.v1 calls served,
    /// per method) on this address; off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve plaintext to every client, not only to loopback ones (RIK's
    /// riklets, a trusted network). TLS is served too.
    #[arg(long)]
    insecure: bool,
    /// Lifetime of the node certificates the CA signs; nodes renew them at
    /// 2/3 of it (e.g. "365d", "1h").
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// Another name or address of this scheduler for its certificate
    /// (the one nodes and `rik` connect to); repeatable.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Join tokens for nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Prints a `rik` config (server, CA, admin certificate and key) as TOML,
    /// to save as ~/.config/rik/config or $RIK_CONFIG.
    AdminCert {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The scheduler's URL as `rik` reaches it.
        #[arg(long, default_value = "https://localhost:4995")]
        server: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Makes a join token and prints the riklet flags that use it:
    /// `--join TOKEN --ca-hash sha256:HEX`.
    Create {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// How long the token can be used (e.g. "24h").
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// The `rik` config `admin-cert` prints.
#[derive(serde::Serialize)]
struct RikConfig {
    server: String,
    ca: String,
    cert: String,
    key: String,
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Token {
            command: TokenCommand::Create { state_dir, ttl },
        } => {
            let pki = Pki::open(&state_dir).context("cannot open the cluster CA")?;
            let token = pki
                .tokens()
                .create(ttl)
                .context("cannot create a join token")?;
            println!("--join {token} --ca-hash {}", pki.ca_hash()?);
        }
        Command::AdminCert { state_dir, server } => {
            let pki = Pki::open(&state_dir).context("cannot open the cluster CA")?;
            let issued = pki.admin(scheduler::pki::DEFAULT_CERT_LIFETIME)?;
            let config = RikConfig {
                server,
                ca: pki.ca_pem().to_string(),
                cert: issued.cert_pem,
                key: issued.key_pem,
            };
            print!("{}", toml::to_string(&config)?);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(command) = args.command.take() {
        return run_command(command);
    }
    service::abort_on_panic("rik-scheduler");
    // SAFETY: no other thread runs yet (the runtime is built below).
    // The scheduler has no watchdog: nothing of it can wedge unseen.
    let (notifier, _watchdog) = unsafe { service::Notifier::from_env() };
    let notifier = notifier.context("cannot reach the service manager")?;
    tokio::runtime::Runtime::new()?.block_on(serve(args, notifier))
}

async fn serve(args: Args, notifier: service::Notifier) -> anyhow::Result<()> {
    if let Some(fault) = service::TestFault::from_env("RIK_SCHEDULER_TEST_FAULT") {
        fault.inject_panic();
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = SchedulerConfig {
        state_dir: args.state_dir,
        heartbeat_timeout: args.heartbeat_timeout,
        notifier,
        tls: Some(TlsConfig {
            cert_lifetime: args.cert_lifetime,
            server_names: args.tls_sans,
        }),
        insecure: args.insecure,
    };
    let calls = ApiCalls::new();
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let mut registry = prometheus_client::registry::Registry::default();
        calls.register(&mut registry);
        // Ends with the process.
        tokio::spawn(async move {
            if let Err(e) =
                scheduler::metrics::serve(listener, registry, std::future::pending()).await
            {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
        tracing::info!(listen = %addr, "metrics endpoint");
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            _ = sigterm.recv() => tracing::info!("terminated"),
        }
    };
    scheduler::run(config, listener, calls, shutdown)
        .await
        .context("scheduler failed")
}
