//! riklet, the RIK node agent.
//!
//! It registers with a scheduler, runs each app instance as a pod — image
//! containers under containerd and bare processes under cgroups (each
//! behind a small shim), sharing the pod's network namespace and IP — so
//! that pods outlive the riklet, remembers its pods on disk across
//! crashes, counts their network traffic with eBPF, captures their logs
//! and reports node and pod status.
//!
//! # Layout
//! - [`config`]: TOML settings, defaults, host paths.
//! - [`agent`]: the Node Manager; owns every pod, restart policy, recovery.
//! - [`scheduler_client`]: RIK worker protocol, heartbeats, reconnection.
//! - [`runtime`]: container runtimes (bare processes and their shim;
//!   containerd containers, image pulls, the containerd connection).
//! - [`network`]: the pod network (bridge, netns, veth, IPAM, masquerade).
//! - [`state`]: the runtime memory (atomic JSON records).
//! - [`fsutil`]: crash-safe file writes; [`clock`]: Unix milliseconds.
//! - [`cgroups`]: pod cgroups on hybrid and pure v2 hosts.
//! - [`metrics`]: eBPF network counters and node figures.
//! - [`logs`]: CRI log files, writing and tailing.
//! - [`shipper`]: the log shipper (syslog, JSON lines), when sinks are
//!   configured.
//! - [`api`]: control socket (`riklet status|pods`) and node logs service;
//!   [`admin`]: the status document and the tables those commands print.
//! - [`crash`]: crash points of test builds (feature `crash-points`).
//! - [`observability`]: tracing setup; [`steps`]: the timed steps of a
//!   container start.
//! - [`service_manager`]: what systemd is told (readiness, status,
//!   watchdog).

pub mod admin;
pub mod agent;
pub mod api;
pub mod cgroups;
pub mod clock;
pub mod config;
pub mod crash;
pub mod fsutil;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod observability;
pub mod proxy;
pub mod runtime;
pub mod scheduler_client;
pub mod service_manager;
pub mod shipper;
pub mod state;
pub mod steps;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

pub use config::Config;
/// Errors print their context and their sources on one line.
pub use proto::error_chain;

/// Why the riklet could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("user {0:?} (run_as_user) does not exist")]
    NoSuchUser(String),
    #[error("cannot determine the node name: cannot read the hostname")]
    Hostname(#[source] nix::Error),
    #[error("cannot determine the node name")]
    NodeName(#[source] proto::manifest::ManifestError),
    #[error("{what} {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state dir {0} is used by another riklet (its lock was still held after {1:?})")]
    Locked(PathBuf, std::time::Duration),
    #[error("state dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot find the riklet executable (the shim of bare processes, riklet-shim, is next to it)"
    )]
    Executable(#[source] std::io::Error),
    #[error("embedded scheduler")]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("pod network")]
    Network(#[from] network::NetworkError),
}

/// Runs the riklet until `shutdown` resolves. Pods keep running after it
/// returns (a later riklet adopts them); eBPF programs are detached.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    run_under(config, service_manager::ServiceManager::default(), shutdown).await
}

/// [`run`], telling `service` (systemd) how the start goes and pinging
/// its watchdog from the agent loop.
pub async fn run_under(
    config: Config,
    service: service_manager::ServiceManager,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let node = node_name(&config)?;
    let user = nix::unistd::User::from_name(&config.run_as_user)
        .ok()
        .flatten()
        .ok_or_else(|| Error::NoSuchUser(config.run_as_user.clone()))?;
    // Held until the riklet stops.
    let _lock = lock_state_dir(&config.state_dir)?;

    let store = state::Store::open(&config.state_dir)?;
    let cgroups = cgroups::CgroupManager::new(&config.cgroup_root)?;
    let network =
        Arc::new(network::PodNetwork::new(config.network.clone(), &config.state_dir).await?);
    info!(node = %node, layout = ?cgroups.layout(), "riklet starting");
    let probes = load_probes(&cgroups, &config);
    let cgroup_v2_root = cgroups.layout().v2_mount().to_path_buf();
    let ebpf = probes.is_some();
    let ebpf_programs = probes.as_ref().map_or_else(Vec::new, |p| p.programs());

    let mut tasks = Tasks::new();
    // The embedded scheduler's counters are served on the riklet's /metrics.
    let scheduler_calls = config.standalone.then(scheduler::metrics::ApiCalls::new);
    if let Some(calls) = &scheduler_calls {
        start_embedded_scheduler(&config, calls.clone(), &mut tasks).await?;
    }
    let node_tls = tls::setup(
        &config.scheduler,
        &node,
        &config.state_dir,
        config.join.as_ref(),
        config.insecure,
    )
    .await?;
    let (api_listener, api_address) = bind("node API", config.api_listen).await?;
    let socket = api::bind_socket(&config.socket_path())?;

    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let settings = agent_settings(&config, &node, &user);
    tokio::spawn(logs::retention::run(
        settings.log_retention.clone(),
        tasks.stop.subscribe(),
    ));
    let backends = backends(&config, store, cgroups, network, &tasks)?;
    let containerd = backends.containerd.clone();
    let usage = metrics::collector::PodUsage::default();
    service.notifier.status("recovering pods");
    let agent = agent::Agent::new(settings, backends, usage.clone(), reports_tx)
        .with_watchdog(service.agent_watchdog());
    let handle = agent.handle();
    let agent_task = tokio::spawn(agent.run(tasks.stop.subscribe()));
    let (proxy, proxy_task) = start_proxy(&config, &cgroup_v2_root, &handle, &tasks).await;

    let shipper = start_shipper(&config, &node, &mut tasks);
    let extra = ExtraMetrics {
        proxy: proxy.as_ref(),
        scheduler: scheduler_calls.as_ref(),
        shipper: shipper.as_ref(),
    };
    let (metrics_address, collector_task) =
        start_metrics(&config, &node, probes, usage, &handle, extra, &mut tasks).await?;

    let scheduler_connected = Arc::new(AtomicBool::new(false));
    let facts = api::NodeFacts {
        node: node.clone(),
        scheduler: config.scheduler.clone(),
        scheduler_connected: scheduler_connected.clone(),
        api_address: api_address.clone(),
        metrics_address,
        ebpf,
        ebpf_programs,
        containerd,
        proxy,
    };
    let socket_task = tokio::spawn(api::serve_socket(socket, handle.clone(), facts));
    let stopped = tasks.stopped();
    tasks.spawn_server(
        "node API",
        api::serve_logs(
            api_listener,
            config.log_dir.clone(),
            api::NodeApiTls {
                server: node_tls.as_ref().map(|t| t.server.clone()),
                insecure: config.insecure,
            },
            stopped,
        ),
    );
    tasks.services.spawn(service_manager::report(
        service.notifier.clone(),
        handle.clone(),
        scheduler_connected.clone(),
        config.scheduler.clone(),
        tasks.stop.subscribe(),
    ));
    if let Some(node_tls) = &node_tls {
        let renewal = tls::renew(
            node_tls.clone(),
            config.scheduler.clone(),
            tasks.stop.subscribe(),
        );
        tasks.services.spawn(renewal);
    }
    let link = SchedulerLink {
        host_address: api_address,
        connected: scheduler_connected,
    };
    let client_tls = node_tls.map(|t| t.client);
    start_scheduler_client(
        &config, &node, link, client_tls, handle, reports_rx, &mut tasks,
    );
    if let Some(fault) = &service.fault {
        fault.inject_panic();
    }

    shutdown.await;
    info!(node = %node, "riklet stopping; pods keep running");
    let _ = tasks.stop.send(());
    socket_task.abort();
    while tasks.services.join_next().await.is_some() {}
    let _ = agent_task.await;
    // The proxy removes its datapaths.
    if let Some(task) = proxy_task {
        let _ = task.await;
    }
    // The collector detaches the eBPF programs and removes their pins.
    let _ = collector_task.await;
    let _ = std::fs::remove_file(config.socket_path());
    Ok(())
}

/// This riklet's side of the link with the scheduler.
struct SchedulerLink {
    /// `host:port` of the node API, sent with every status.
    host_address: String,
    /// Set while a session is open, for `riklet status`.
    connected: Arc<AtomicBool>,
}

/// Registers with the scheduler and keeps it informed, until the stop.
fn start_scheduler_client(
    config: &Config,
    node: &str,
    link: SchedulerLink,
    tls: Option<rik_tls::ClientTls>,
    agent: agent::AgentHandle,
    reports: mpsc::UnboundedReceiver<agent::InstanceReport>,
    tasks: &mut Tasks,
) {
    let settings = scheduler_client::ClientSettings {
        scheduler: config.scheduler.clone(),
        node: node.to_string(),
        host_address: link.host_address,
        heartbeat_interval: config.heartbeat_interval,
        connected: link.connected,
        tls,
    };
    let stop = tasks.stop.subscribe();
    tasks
        .services
        .spawn(scheduler_client::run(settings, agent, reports, stop));
}

/// The configured node name, else the hostname in lower case (which must
/// be a valid node name).
fn node_name(config: &Config) -> Result<String, Error> {
    if let Some(n) = &config.node_name {
        return Ok(n.clone());
    }
    let host = nix::unistd::gethostname()
        .map_err(Error::Hostname)?
        .to_string_lossy()
        .to_ascii_lowercase();
    proto::manifest::validate_node_name("hostname", &host).map_err(Error::NodeName)?;
    Ok(host)
}

/// How long a starting riklet waits for the state dir's lock. Right after
/// a riklet was killed and reaped, the lock can still be held for a moment
/// although no process has the file open any more (seen in the crash-point
/// tests, about one restart in ten); a second riklet on a live one's state
/// dir fails after this wait.
const STATE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates the state dir and takes its lock: two riklets on one state dir
/// would fight over the same pods.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, Error> {
    let state_err = |source| Error::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(state_err)?;
    let lock = std::fs::File::create(dir.join("riklet.lock")).map_err(state_err)?;
    let started = std::time::Instant::now();
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let errno = std::io::Error::last_os_error();
        if errno.kind() != std::io::ErrorKind::WouldBlock {
            return Err(state_err(errno));
        }
        if started.elapsed() >= STATE_LOCK_WAIT {
            return Err(Error::Locked(dir.to_path_buf(), STATE_LOCK_WAIT));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if started.elapsed() >= std::time::Duration::from_millis(20) {
        warn!(waited = ?started.elapsed(), "the state dir's lock was held by another process for a moment");
    }
    Ok(lock)
}

/// The eBPF probes, or `None` (logged) when this kernel or host cannot
/// load them: the riklet runs on without the figures they give.
fn load_probes(cgroups: &cgroups::CgroupManager, config: &Config) -> Option<metrics::ebpf::Probes> {
    match metrics::ebpf::Probes::load(&cgroups.v2_root(), &config.bpf_pin_dir) {
        Ok(probes) => Some(probes),
        Err(e) => {
            warn!(
                error = %error_chain(&e),
                "eBPF probes unavailable: pods get cgroup figures only (no network, \
                 run-queue or OOM-event figures)"
            );
            None
        }
    }
}

/// Starts the log shipper, one task per sink, when `[[logs.sinks]]` has
/// any; returns its counters.
fn start_shipper(
    config: &Config,
    node: &str,
    tasks: &mut Tasks,
) -> Option<shipper::ShipperMetrics> {
    if config.logs.sinks.is_empty() {
        return None;
    }
    let metrics = shipper::ShipperMetrics::new(&config.logs.sinks);
    let settings = Arc::new(shipper::ShipperSettings {
        log_dir: config.log_dir.clone(),
        state_dir: config.state_dir.clone(),
        node: node.to_string(),
    });
    for sink in &config.logs.sinks {
        tasks.services.spawn(shipper::run_sink(
            sink.clone(),
            settings.clone(),
            metrics.clone(),
            tasks.stop.subscribe(),
        ));
    }
    Some(metrics)
}

/// Starts the Node Proxy and its task; `None` (logged) when it cannot
/// start: pods run, their ports are not proxied.
async fn start_proxy(
    config: &Config,
    cgroup_v2_root: &Path,
    agent: &agent::AgentHandle,
    tasks: &Tasks,
) -> (Option<proxy::ProxyHandle>, Option<JoinHandle<()>>) {
    let pod_cidr = match config.network.validate() {
        Ok(cidr) => cidr,
        Err(e) => {
            error!(error = %error_chain(&e), "the node proxy cannot start: apps' ports are not proxied");
            return (None, None);
        }
    };
    let settings = proxy::ProxySettings {
        mode: config.proxy,
        addresses: config.proxy_addresses.clone(),
        cgroup_v2_root: cgroup_v2_root.to_path_buf(),
        pin_dir: config.bpf_pin_dir.clone(),
        nft_table: config.proxy_nft_table(),
        pod_cidr,
        bridge: config.network.bridge.clone(),
        netns_prefix: config.network.netns_prefix.clone(),
        counter_interval: config.metrics_interval,
    };
    match proxy::Proxy::start(settings).await {
        Ok((proxy, handle)) => {
            let task = tokio::spawn(proxy::run(proxy, agent.endpoints(), tasks.stop.subscribe()));
            (Some(handle), Some(task))
        }
        Err(e) => {
            error!(error = %error_chain(&e), "the node proxy cannot start: apps' ports are not proxied");
            (None, None)
        }
    }
}

/// The scheduler in-process (a one-node cluster), listening like a remote
/// one would.
async fn start_embedded_scheduler(
    config: &Config,
    calls: scheduler::metrics::ApiCalls,
    tasks: &mut Tasks,
) -> Result<(), Error> {
    let (listener, _) = bind("embedded scheduler", config.standalone_listen).await?;
    let sched_config = scheduler::SchedulerConfig {
        state_dir: config.state_dir.join("scheduler"),
        ..scheduler::SchedulerConfig::default()
    };
    let stopped = tasks.stopped();
    tasks.spawn_server(
        "embedded scheduler",
        scheduler::run(sched_config, listener, calls, stopped),
    );
    Ok(())
}

/// What the Node Manager drives; starts connecting to containerd.
fn backends(
    config: &Config,
    store: state::Store,
    cgroups: cgroups::CgroupManager,
    network: Arc<network::PodNetwork>,
    tasks: &Tasks,
) -> Result<agent::Backends, Error> {
    let shim_exe = runtime::process::shim_next_to_riklet().map_err(Error::Executable)?;
    let containerd = runtime::link::ContainerdLink::spawn(
        &config.containerd.socket,
        &config.containerd.namespace,
        config.registries.registry_config(),
        tasks.stop.subscribe(),
    );
    Ok(agent::Backends {
        store,
        cgroups,
        process: runtime::process::ProcessRuntime::new(shim_exe, &config.state_dir),
        containerd,
        network,
    })
}

fn agent_settings(config: &Config, node: &str, user: &nix::unistd::User) -> agent::AgentSettings {
    agent::AgentSettings {
        node: node.to_string(),
        log_dir: config.log_dir.clone(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        stop_grace_period: config.stop_grace_period,
        backoff_initial: config.restart_backoff_initial,
        backoff_max: config.restart_backoff_max,
        log_rotation: config.logs.rotation(),
        log_retention: logs::retention::Retention::new(
            &config.state_dir,
            &config.log_dir,
            config.logs.retention,
        ),
        reserved_ports: reserved_ports(config),
        start_parallelism: config.start_parallelism,
    }
}

/// The TCP ports the riklet itself listens on (a port 0 is picked at
/// start and cannot be known in advance).
fn reserved_ports(config: &Config) -> Vec<agent::ReservedPort> {
    let mut listeners = vec![
        (config.api_listen, "riklet node API"),
        (config.metrics_addr, "riklet metrics endpoint"),
    ];
    if config.standalone {
        listeners.push((config.standalone_listen, "embedded scheduler"));
    }
    listeners
        .into_iter()
        .filter(|(addr, _)| addr.port() != 0)
        .map(|(addr, owner)| agent::ReservedPort {
            port: addr.port(),
            protocol: proto::manifest::Protocol::Tcp,
            owner: owner.to_string(),
        })
        .collect()
}

/// Binds a TCP listener; returns it with the address it got (port 0 picks
/// a free one).
async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, String), Error> {
    let err = |source| Error::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?.to_string();
    Ok((listener, local))
}

/// Series of other parts served on the riklet's `/metrics`.
struct ExtraMetrics<'a> {
    /// The Node Proxy's, when it runs.
    proxy: Option<&'a proxy::ProxyHandle>,
    /// The embedded scheduler's calls served, with `--standalone`.
    scheduler: Option<&'a scheduler::metrics::ApiCalls>,
    /// The log shipper's counters, when it runs.
    shipper: Option<&'a shipper::ShipperMetrics>,
}

/// Starts the Prometheus endpoint and the collector that feeds it; returns
/// the endpoint's address and the collector's task.
async fn start_metrics(
    config: &Config,
    node: &str,
    probes: Option<metrics::ebpf::Probes>,
    usage: metrics::collector::PodUsage,
    agent: &agent::AgentHandle,
    extra: ExtraMetrics<'_>,
    tasks: &mut Tasks,
) -> Result<(String, JoinHandle<()>), Error> {
    let snapshots = metrics::exporter::SnapshotHandle::new();
    let mut registry = metrics::exporter::registry(snapshots.clone());
    registry.register_collector(Box::new(logs::metrics::DroppedBytes::new(
        &config.log_dir,
        node,
    )));
    if let Some(proxy) = extra.proxy {
        registry.register_collector(Box::new(proxy.metrics(node)));
    }
    if let Some(calls) = extra.scheduler {
        calls.register(registry.others_mut());
    }
    if let Some(shipper) = extra.shipper {
        shipper.register(registry.others_mut());
    }
    let (listener, address) = bind("metrics endpoint", config.metrics_addr).await?;
    let stopped = tasks.stopped();
    tasks.spawn_server(
        "metrics endpoint",
        metrics::exporter::serve(listener, registry, stopped),
    );
    let collector =
        metrics::collector::Collector::new(node, probes, snapshots, usage, config.metrics_interval);
    let agent = agent.clone();
    let collector_task = tokio::spawn(metrics::collector::run(
        collector,
        config.metrics_interval,
        agent.pods_generation(),
        move || {
            let agent = agent.clone();
            async move { agent.targets().await }
        },
        tasks.stop.subscribe(),
    ));
    Ok((address, collector_task))
}

/// The servers and the scheduler client, and the signal that stops every
/// task of the riklet.
struct Tasks {
    stop: broadcast::Sender<()>,
    /// Joined first at shutdown (before the agent and the collector).
    services: JoinSet<()>,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            stop: broadcast::channel(1).0,
            services: JoinSet::new(),
        }
    }

    /// Resolves once the riklet stops (subscribed now, so a stop sent
    /// before the first poll is not missed).
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.recv().await;
        }
    }

    /// Runs a server until it ends, logging why if it failed.
    fn spawn_server<E>(
        &mut self,
        what: &'static str,
        server: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: std::error::Error + Send + 'static,
    {
        self.services.spawn(async move {
            if let Err(e) = server.await {
                error!(error = %error_chain(&e), "{what} stopped");
            }
        });
    }
}
