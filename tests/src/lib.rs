//! Harness of the end-to-end tests: real `rik-scheduler`, `riklet` and
//! `rik` processes on this machine, against the real kernel, cgroups,
//! eBPF, containerd and a local registry. Everything a test starts is
//! isolated (own ports, state dir, cgroup root, bpffs pin dir, log dir,
//! node name, pod network — bridge `rkt<n>`, CIDR `10.214.<n>.0/24`,
//! nftables table —, containerd namespace) and removed by [`Cluster`]'s
//! `Drop`, also when the test panics.
//!
//! Tests need root; a missing prerequisite fails them with a message.
//!
//! # Layout
//! - [`Cluster`]: a one-node cluster and its clean-up; a second one can
//!   join the first one's scheduler (`Options::join_scheduler`) as one
//!   more node.
//! - [`registry`]: a throwaway `docker-registry` and the busybox image.
//! - [`containerd`]: the machine's containerd, or a private one.
//! - [`leftovers`]: what a riklet owns on the node, to find leftovers.
//! - [`crash`]: the riklet built with its crash points.

pub mod containerd;
pub mod crash;
pub mod external;
pub mod registry;

/// The inventory of a riklet's node objects (shared with `cargo xtask soak`).
pub use riklet_inventory as leftovers;
pub use riklet_inventory::{alive, links_on, netns_named};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Builds the binaries once per test process and returns their directory.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args(["build", "-p", "riklet", "-p", "scheduler", "-p", "rik"])
            .status()
            .expect("running cargo build for the binaries under test");
        assert!(
            status.success(),
            "cargo build of riklet, rik-scheduler and rik failed"
        );
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug")
    })
}

/// Fails the test unless it runs as root with a cgroup v2 hierarchy.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (real cgroups, eBPF, shims running as nobody)"
    );
    assert!(
        Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
            || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "no cgroup v2 hierarchy mounted"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox missing: run `cargo xtask setup` (busybox-static)"
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns `Some`, or panics naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `riklet --standalone`.
    Standalone,
    /// A separate `rik-scheduler` process.
    Separate,
}

/// What a test changes in a cluster's configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Prefix length of the pod CIDR (default 24: 253 pods).
    pub pod_prefix: Option<u8>,
    /// containerd socket (default: the machine's, see [`containerd`]).
    pub containerd_socket: Option<PathBuf>,
    /// Registries reached over plain HTTP (`127.0.0.1:<port>`).
    pub insecure_registries: Vec<String>,
    /// Registry request timeout (default the riklet's, 30 s).
    pub registry_timeout: Option<Duration>,
    /// Do not wait for the node to be ready.
    pub no_wait: bool,
    /// Pin the eBPF maps outside any bpffs, so that the probes cannot load
    /// (a kernel without eBPF, as far as the riklet can tell).
    pub no_ebpf: bool,
    /// The Node Proxy's datapath (`proxy =`; default the riklet's, ebpf).
    pub proxy: Option<&'static str>,
    /// The riklet's `RUST_LOG` (default: unset, i.e. `info`).
    pub log_filter: Option<&'static str>,
    /// Run the riklet from a directory of its own that has no
    /// `riklet-shim` next to it (a hard link of the binary under test).
    pub without_shim: bool,
    /// How long a deleted app's logs stay (`[logs] retention`; default the
    /// riklet's, 1 h).
    pub log_retention: Option<Duration>,
    /// TOML appended to the riklet's config file, after every table the
    /// harness writes (e.g. `[[logs.sinks]]` tables).
    pub extra_config: Option<String>,
    /// Join the `rik-scheduler` listening on this port (another cluster's)
    /// instead of starting one: a second node of that cluster.
    pub join_scheduler: Option<u16>,
    /// `[network] netns_prefix` (default the riklet's, `rik-`).
    pub netns_prefix: Option<String>,
    /// The separate scheduler's `--heartbeat-timeout` (default its own).
    pub heartbeat_timeout: Option<Duration>,
    /// Environment variables of the riklet process (e.g. systemd's
    /// `NOTIFY_SOCKET`, a debug build's `RIKLET_TEST_FAULT`).
    pub riklet_env: Vec<(String, String)>,
    /// The riklet binary to run (default the one [`bin_dir`] builds; e.g.
    /// [`crash::bin_dir`]'s, with `riklet-shim` next to it).
    pub riklet_exe: Option<PathBuf>,
    /// In [`Mode::Separate`], start no scheduler: the test serves the
    /// worker protocol on `scheduler_port` itself (a fake or hostile one).
    pub own_scheduler: bool,
    /// mTLS (separate scheduler only): the riklet joins with a token from
    /// `rik-scheduler token create` and talks https; `rik` uses the
    /// config of `rik-scheduler admin-cert`.
    pub mtls: bool,
    /// More `rik-scheduler` flags (e.g. `--cert-lifetime`).
    pub scheduler_args: Vec<String>,
}

/// A one-node cluster and everything it created.
pub struct Cluster {
    pub mode: Mode,
    pub dir: tempfile::TempDir,
    pub node: String,
    pub cgroup_root: String,
    pub pin_dir: PathBuf,
    pub scheduler_port: u16,
    /// The separate scheduler's metrics endpoint (`--metrics-listen`).
    pub scheduler_metrics_port: u16,
    /// The pod network of this cluster's riklet.
    pub net: NetSlot,
    /// containerd namespace of this cluster's images and containers.
    pub containerd_namespace: String,
    /// The containerd socket the riklet uses.
    pub containerd_socket: PathBuf,
    /// Prefix of this riklet's pod network namespaces under `/run/netns`.
    pub netns_prefix: String,
    heartbeat_timeout: Option<Duration>,
    riklet: Option<Child>,
    scheduler: Option<Child>,
    /// The riklet binary this cluster runs.
    riklet_exe: PathBuf,
    log_filter: Option<&'static str>,
    riklet_env: Vec<(String, String)>,
    /// More riklet flags (with mTLS: `--scheduler https://…`, `--join`,
    /// `--ca-hash`).
    pub riklet_args: Vec<String>,
    scheduler_args: Vec<String>,
    /// The `rik` config (`RIK_CONFIG`) of an mTLS cluster.
    pub rik_config: Option<PathBuf>,
}

impl Cluster {
    /// Starts a cluster and waits until its node is ready.
    pub fn start(mode: Mode) -> Cluster {
        Cluster::start_with(mode, Options::default())
    }

    /// Starts a cluster with `options` and (unless told not to) waits
    /// until its node is ready.
    pub fn start_with(mode: Mode, options: Options) -> Cluster {
        require_root();
        bin_dir();
        let name = unique("e2e");
        let dir = tempfile::Builder::new()
            .prefix("riklet-e2e")
            .tempdir()
            .expect("tempdir");
        let scheduler_port = options.join_scheduler.unwrap_or_else(free_port);
        let net = NetSlot::take(options.pod_prefix.unwrap_or(24));
        let containerd_socket = options
            .containerd_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(containerd::SOCKET));
        let cluster = Cluster {
            mode,
            node: name.clone(),
            cgroup_root: format!("riklet-{name}"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/riklet-{name}")),
            scheduler_port,
            scheduler_metrics_port: free_port(),
            containerd_namespace: format!("rik-{name}"),
            containerd_socket,
            netns_prefix: options
                .netns_prefix
                .clone()
                .unwrap_or_else(|| "rik-".into()),
            heartbeat_timeout: options.heartbeat_timeout,
            net,
            riklet_exe: options
                .riklet_exe
                .clone()
                .unwrap_or_else(|| bin_dir().join("riklet")),
            log_filter: options.log_filter,
            riklet_env: options.riklet_env.clone(),
            dir,
            riklet: None,
            scheduler: None,
            riklet_args: Vec::new(),
            scheduler_args: options.scheduler_args.clone(),
            rik_config: None,
        };
        let quoted: Vec<String> = options
            .insecure_registries
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        let mut config = format!(
            "node_name = \"{node}\"\nstandalone_listen = \"127.0.0.1:{port}\"\nscheduler = \"http://127.0.0.1:{port}\"\n\
             log_dir = \"{logs}\"\ncgroup_root = \"{cg}\"\nbpf_pin_dir = \"{pins}\"\napi_listen = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\nmetrics_interval = \"1s\"\n\
             heartbeat_interval = \"1s\"\nstop_grace_period = \"3s\"\nrestart_backoff_initial = \"1s\"\n\
             [network]\nbridge = \"{bridge}\"\npod_cidr = \"{cidr}\"\nnft_table = \"{table}\"\nnetns_prefix = \"{netns}\"\n\
             [containerd]\nsocket = \"{socket}\"\nnamespace = \"{ns}\"\n\
             [registries]\ninsecure = [{insecure}]\n",
            node = cluster.node,
            port = scheduler_port,
            logs = cluster.log_dir().display(),
            cg = cluster.cgroup_root,
            pins = if options.no_ebpf {
                cluster.dir.path().join("not-bpffs").display().to_string()
            } else {
                cluster.pin_dir.display().to_string()
            },
            bridge = cluster.net.bridge,
            cidr = cluster.net.cidr,
            table = cluster.net.table,
            netns = cluster.netns_prefix,
            socket = cluster.containerd_socket.display(),
            ns = cluster.containerd_namespace,
            insecure = quoted.join(", "),
        );
        if let Some(p) = options.proxy {
            // A top-level key: before the first [table].
            config.insert_str(0, &format!("proxy = \"{p}\"\n"));
        }
        if let Some(t) = options.registry_timeout {
            config.push_str(&format!("timeout = \"{}ms\"\n", t.as_millis()));
        }
        if let Some(r) = options.log_retention {
            config.push_str(&format!("[logs]\nretention = \"{}ms\"\n", r.as_millis()));
        }
        if let Some(extra) = &options.extra_config {
            config.push_str(extra);
        }
        std::fs::write(cluster.dir.path().join("riklet.toml"), config).expect("write config");
        let mut cluster = cluster;
        if options.without_shim {
            let dir = cluster.dir.path().join("bin");
            std::fs::create_dir_all(&dir).expect("bin dir");
            let exe = dir.join("riklet");
            std::fs::hard_link(bin_dir().join("riklet"), &exe)
                .unwrap_or_else(|e| panic!("hard link of the riklet at {}: {e}", exe.display()));
            cluster.riklet_exe = exe;
        }
        if options.mtls {
            assert_eq!(mode, Mode::Separate, "mTLS needs a separate scheduler");
            cluster.join_flags();
        }
        if mode == Mode::Separate && options.join_scheduler.is_none() && !options.own_scheduler {
            cluster.start_scheduler();
        }
        cluster.start_riklet();
        if !options.no_wait {
            cluster.wait_node_ready();
        }
        cluster
    }

    /// The riklet's flags to join with a new token, and the `rik` config.
    fn join_flags(&mut self) {
        let state = self.dir.path().join("scheduler");
        let scheduler = |args: &[&str]| {
            let out = Command::new(bin_dir().join("rik-scheduler"))
                .args(args)
                .arg("--state-dir")
                .arg(&state)
                .output()
                .expect("run rik-scheduler");
            assert!(
                out.status.success(),
                "rik-scheduler {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("UTF-8")
        };
        let url = format!("https://127.0.0.1:{}", self.scheduler_port);
        let config = self.dir.path().join("rik-config");
        std::fs::write(&config, scheduler(&["admin-cert", "--server", &url]))
            .expect("write the rik config");
        self.rik_config = Some(config);
        self.riklet_args = vec!["--scheduler".into(), url];
        let flags = scheduler(&["token", "create"]);
        self.riklet_args
            .extend(flags.split_whitespace().map(str::to_string));
    }

    /// The scheduler URL `rik` uses, with the `RIK_CONFIG` of an mTLS cluster.
    fn rik_command(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("rik"));
        let scheme = if self.rik_config.is_some() {
            "https"
        } else {
            "http"
        };
        cmd.arg("--scheduler")
            .arg(format!("{scheme}://127.0.0.1:{}", self.scheduler_port));
        match &self.rik_config {
            Some(config) => cmd.env("RIK_CONFIG", config),
            // A config of the machine's user must not change the tests.
            None => cmd.env("RIK_CONFIG", self.dir.path().join("no-rik-config")),
        };
        cmd
    }

    /// `ctr` against this cluster's containerd namespace.
    pub fn ctr(&self) -> containerd::Ctr {
        containerd::Ctr::new(&self.containerd_socket, &self.containerd_namespace)
    }

    /// The riklet's log so far.
    pub fn riklet_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("riklet.log")).unwrap_or_default()
    }

    /// `riklet status` of this node.
    pub fn local_status(&self) -> Value {
        let out = Command::new(bin_dir().join("riklet"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["status", "-o", "json"])
            .output()
            .expect("riklet status");
        assert!(
            out.status.success(),
            "riklet status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The port of the riklet's `/metrics` endpoint (`metricsAddress` of
    /// `riklet status`).
    pub fn metrics_port(&self) -> u16 {
        let status = self.local_status();
        let addr = status["metricsAddress"].as_str().expect("metricsAddress");
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("a port in metricsAddress")
    }

    /// `riklet status` or `riklet pods` of this node, as the table printed
    /// for people.
    pub fn local_table(&self, what: &str) -> String {
        let out = Command::new(bin_dir().join("riklet"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg(what)
            .output()
            .expect("riklet");
        assert!(
            out.status.success(),
            "riklet {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("a UTF-8 table")
    }

    /// Pid of the running riklet.
    pub fn riklet_pid(&self) -> Option<u32> {
        self.riklet.as_ref().map(Child::id)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("log file")
    }

    /// Starts (or restarts) the riklet process.
    pub fn start_riklet(&mut self) {
        self.start_riklet_env(&[]);
    }

    /// Starts (or restarts) the riklet process with `env` added to its
    /// environment (e.g. `RIKLET_CRASH_AT`).
    pub fn start_riklet_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(&self.riklet_exe);
        // An error that ends the riklet is logged as its chain of causes
        // only (a panic keeps its backtrace): the tests quote the log's
        // tail.
        cmd.env("RUST_LIB_BACKTRACE", "0");
        cmd.envs(env.iter().copied());
        if let Some(filter) = self.log_filter {
            cmd.env("RUST_LOG", filter);
        }
        cmd.envs(self.riklet_env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--config").arg(self.dir.path().join("riklet.toml"));
        cmd.arg("--state-dir").arg(self.state_dir());
        if self.mode == Mode::Standalone {
            cmd.arg("--standalone");
        }
        cmd.args(&self.riklet_args);
        let log = self.log_file("riklet.log");
        cmd.stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .stdin(Stdio::null());
        self.riklet = Some(cmd.spawn().expect("start riklet"));
    }

    /// `riklet proxy` of this node (the Node Proxy's services).
    pub fn proxy_status(&self) -> Value {
        let out = Command::new(bin_dir().join("riklet"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("proxy")
            .output()
            .expect("riklet proxy");
        assert!(
            out.status.success(),
            "riklet proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("proxy JSON")
    }

    /// Stops the riklet cleanly (SIGTERM) and waits for it to exit.
    pub fn stop_riklet(&mut self) {
        if let Some(mut c) = self.riklet.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = c.wait().expect("wait for the riklet");
            assert!(
                status.success(),
                "riklet exited with {status} after SIGTERM:\n{}",
                self.riklet_log()
            );
        }
    }

    /// Waits up to `timeout` for the riklet to end by itself; how it ended,
    /// or `None` if it still runs.
    pub fn wait_riklet_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.riklet.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.riklet = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where this cluster's riklet keeps its objects, for
    /// [`leftovers::Inventory`]; its apps' names start with `app_prefix`.
    pub fn scope(&self, app_prefix: &str) -> leftovers::Scope {
        let mut exclude_pids: Vec<u32> = self.riklet_pid().into_iter().collect();
        exclude_pids.extend(self.scheduler.as_ref().map(Child::id));
        leftovers::Scope {
            cgroup_root: self.cgroup_root.clone(),
            state_dir: self.state_dir(),
            log_dir: self.log_dir(),
            pin_dir: self.pin_dir.clone(),
            bridge: self.net.bridge.clone(),
            nft_table: self.net.table.clone(),
            containerd: Some((
                self.containerd_socket.clone(),
                self.containerd_namespace.clone(),
            )),
            app_prefix: app_prefix.to_string(),
            exclude_pids,
        }
    }

    /// `kill -9` the riklet (its pods must survive).
    pub fn kill_riklet(&mut self) {
        if let Some(mut c) = self.riklet.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (or restarts) the separate scheduler on the same port and state.
    pub fn start_scheduler(&mut self) {
        let log = self.log_file("scheduler.log");
        let mut cmd = Command::new(bin_dir().join("rik-scheduler"));
        if let Some(t) = self.heartbeat_timeout {
            cmd.arg("--heartbeat-timeout")
                .arg(format!("{}ms", t.as_millis()));
        }
        let child = cmd
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.scheduler_port))
            .arg("--state-dir")
            .arg(self.dir.path().join("scheduler"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.scheduler_metrics_port))
            .args(&self.scheduler_args)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rik-scheduler");
        self.scheduler = Some(child);
    }

    /// Stops the separate scheduler cleanly (SIGTERM) and waits for it.
    pub fn stop_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = c.wait().expect("wait for the scheduler");
            assert!(
                status.success(),
                "rik-scheduler exited with {status} after SIGTERM"
            );
        }
    }

    /// The `rik.v1` calls the scheduler served so far, by method, from
    /// `rik_scheduler_api_calls_total` (the riklet's `/metrics` in
    /// standalone mode, the scheduler's own otherwise).
    pub fn api_calls(&self) -> BTreeMap<String, u64> {
        let port = match self.mode {
            Mode::Separate => self.scheduler_metrics_port,
            Mode::Standalone => {
                let status = self.local_status();
                let addr = status["metricsAddress"].as_str().expect("metricsAddress");
                addr.rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .expect("a metrics port")
            }
        };
        let (status, body) = http_get(port, "/metrics").expect("GET /metrics");
        assert!(status.contains("200"), "GET /metrics: {status}");
        let calls: BTreeMap<String, u64> = body
            .lines()
            .filter_map(|l| l.strip_prefix("rik_scheduler_api_calls_total{method=\""))
            .filter_map(|l| {
                let (method, rest) = l.split_once("\"} ")?;
                Some((method.to_string(), rest.trim().parse().ok()?))
            })
            .collect();
        assert!(
            calls.contains_key("Apply"),
            "no rik_scheduler_api_calls_total in /metrics:\n{body}"
        );
        calls
    }

    /// Starts `rik ARGS` (a command that runs until stopped, e.g. `get
    /// apps -w`) and follows its output line by line.
    pub fn rik_follow(&self, args: &[&str]) -> Follow {
        let stderr = self.dir.path().join(format!("{}.stderr", unique("rik")));
        let mut child = self
            .rik_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("run rik");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follow {
            child,
            lines,
            stderr,
        }
    }

    /// Stops the separate scheduler (SIGKILL).
    pub fn kill_scheduler(&mut self) {
        if let Some(mut c) = self.scheduler.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `rik` against this cluster.
    pub fn rik(&self, args: &[&str]) -> Output {
        self.rik_command().args(args).output().expect("run rik")
    }

    /// Runs `rik` and returns stdout, panicking with stderr on failure.
    pub fn rik_ok(&self, args: &[&str]) -> String {
        let out = self.rik(args);
        assert!(
            out.status.success(),
            "rik {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies a manifest given as text.
    pub fn apply(&self, manifest: &str, wait: bool) -> Output {
        self.apply_timeout(manifest, wait.then_some(Duration::from_secs(30)))
    }

    /// Applies a manifest; with `wait`, `--wait --timeout <wait>`.
    pub fn apply_timeout(&self, manifest: &str, wait: Option<Duration>) -> Output {
        let path = self.dir.path().join(format!("{}.yaml", unique("manifest")));
        std::fs::write(&path, manifest).expect("write manifest");
        let p = path.to_str().expect("utf-8");
        let timeout = wait.map(|d| format!("{}ms", d.as_millis()));
        let mut args = vec!["apply", "-f", p];
        if let Some(t) = &timeout {
            args.extend(["--wait", "--timeout", t]);
        }
        self.rik(&args)
    }

    /// `rik get app NAME -o json` (one replica: the realtime app object).
    pub fn app(&self, name: &str) -> Value {
        serde_json::from_str(&self.rik_ok(&["get", "app", name, "-o", "json"])).expect("app JSON")
    }

    /// `riklet pods` of this node.
    pub fn local_pods(&self) -> Value {
        let out = Command::new(bin_dir().join("riklet"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["pods", "-o", "json"])
            .output()
            .expect("riklet pods");
        assert!(
            out.status.success(),
            "riklet pods: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("pods JSON")
    }

    pub fn wait_node_ready(&self) {
        wait_for(Duration::from_secs(30), "the node to be ready", || {
            let out = self.rik(&["get", "nodes", "-o", "json"]);
            let nodes: Value = serde_json::from_slice(&out.stdout).ok()?;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["ready"] == true && n["id"] == self.node.as_str())
                .then_some(())
        })
    }

    /// The app's state and its first container's pid once `pred` holds.
    pub fn wait_app(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(40), what, || {
            let out = self.rik(&["get", "app", name, "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            pred(&v).then_some(v)
        })
    }

    /// Cgroup directories of a pod container in every hierarchy.
    pub fn cgroup_dirs(&self, instance: &str, container: &str) -> Vec<PathBuf> {
        let rel = format!("{}/{instance}_{container}", self.cgroup_root);
        let mut dirs: Vec<PathBuf> = ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c))
            .filter(|m| m.exists())
            .map(|m| m.join(&rel))
            .collect();
        let v2 = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            Path::new("/sys/fs/cgroup/unified")
        } else {
            Path::new("/sys/fs/cgroup")
        };
        dirs.push(v2.join(&rel));
        dirs
    }

    fn cleanup_cgroups(&self) {
        // Every hierarchy: runc creates a container's cgroup in all of them.
        let mut mounts: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        mounts.push(PathBuf::from("/sys/fs/cgroup"));
        for m in mounts {
            let root = m.join(&self.cgroup_root);
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                if let Ok(procs) = std::fs::read_to_string(p.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                for _ in 0..50 {
                    if std::fs::remove_dir(&p).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = std::fs::remove_dir(&root);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_riklet();
        self.kill_scheduler();
        if containerd::answers(&self.containerd_socket) {
            self.ctr().remove_namespace();
        }
        self.net.cleanup(&self.state_dir(), &self.netns_prefix);
        self.cleanup_cgroups();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A `rik` command that runs until stopped, its stdout read line by line;
/// killed when dropped.
pub struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Follow {
    /// The next line it prints, or a panic naming `what` after `timeout`.
    pub fn line(&self, timeout: Duration, what: &str) -> String {
        self.lines.recv_timeout(timeout).unwrap_or_else(|e| {
            panic!(
                "no line for {what} within {timeout:?} ({e}); stderr: {}",
                self.stderr_text()
            )
        })
    }

    /// Lines until one satisfies `pred`, which is returned (with those
    /// before it).
    pub fn lines_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = pred(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "no line for {what} within {timeout:?} ({e}); got {seen:#?}; stderr: {}",
                    self.stderr_text()
                ),
            }
        }
    }

    /// What it wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pod network of its own for one cluster: bridge `rkt<n>`, CIDR
/// `10.214.<n>.0/<prefix>`, nftables table `rkt<n>`. `n` is reserved
/// across test processes with a lock file under `/run/riklet-e2e-nets`
/// (taken over when its owner is dead).
pub struct NetSlot {
    pub n: u8,
    pub bridge: String,
    pub cidr: String,
    pub table: String,
    lock: PathBuf,
}

impl NetSlot {
    const DIR: &str = "/run/riklet-e2e-nets";

    /// Reserves a free slot.
    pub fn take(prefix: u8) -> NetSlot {
        std::fs::create_dir_all(Self::DIR).expect("creating /run/riklet-e2e-nets");
        for n in 1..=250u8 {
            let lock = Path::new(Self::DIR).join(n.to_string());
            let mine = format!("{}", std::process::id());
            let taken = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
                .and_then(|mut f| f.write_all(mine.as_bytes()));
            let ok = match taken {
                Ok(()) => true,
                Err(_) => {
                    // A dead owner's slot is taken over.
                    let owner = std::fs::read_to_string(&lock).unwrap_or_default();
                    let dead = owner
                        .trim()
                        .parse::<i64>()
                        .is_ok_and(|pid| !alive(pid) && pid != std::process::id() as i64);
                    dead && std::fs::write(&lock, &mine).is_ok()
                }
            };
            if ok {
                let slot = NetSlot {
                    n,
                    bridge: format!("rkt{n}"),
                    cidr: format!("10.214.{n}.0/{prefix}"),
                    table: format!("rkt{n}"),
                    lock,
                };
                // Whatever a crashed test left in this slot.
                slot.remove_kernel_objects(&[]);
                return slot;
            }
        }
        panic!("no free e2e network slot in {} (250 in use?)", Self::DIR);
    }

    /// The gateway (bridge) address.
    pub fn gateway(&self) -> String {
        format!("10.214.{}.1", self.n)
    }

    /// Removes the pod netns (`<netns_prefix><instance>`) of the leases in
    /// `<state_dir>/ipam.json`, the veths on the bridge, the bridge and the
    /// nftables table.
    fn cleanup(&self, state_dir: &Path, netns_prefix: &str) {
        let namespaces: Vec<String> = std::fs::read_to_string(state_dir.join("ipam.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| {
                let leases = v["leases"].as_object()?;
                Some(
                    leases
                        .keys()
                        .map(|id| format!("{netns_prefix}{id}"))
                        .collect(),
                )
            })
            .unwrap_or_default();
        self.remove_kernel_objects(&namespaces);
    }

    fn remove_kernel_objects(&self, namespaces: &[String]) {
        let run = |args: &[&str], tool: &str| {
            Command::new(tool)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        for ns in namespaces {
            let _ = run(&["netns", "del", ns], "ip");
        }
        for link in links_on(&self.bridge) {
            let _ = run(&["link", "del", &link], "ip");
        }
        let _ = run(&["link", "del", &self.bridge], "ip");
        let _ = run(&["delete", "table", "ip", &self.table], "nft");
        let _ = run(
            &["delete", "table", "ip", &format!("{}_proxy", self.table)],
            "nft",
        );
    }
}

impl Drop for NetSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// A minimal HTTP GET to loopback; returns the status line and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    http_get_at("127.0.0.1".parse().expect("an address"), port, path)
}

/// A minimal HTTP GET to `ip` (loopback or a pod of this machine).
pub fn http_get_at(ip: IpAddr, port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// A bare-process web server app listening on `port` in its pod's
/// network namespace (reach it at the pod's `internalIp`).
pub fn http_app(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nreplicas: 1\nspec:\n  containers:\n    - name: httpd\n      \
         exec: /bin/busybox\n      args: [httpd, -f, -vv, -p, \"{port}\", -h, /usr/share/doc/busybox-static]\n      \
         ports: {{port: {port}, target_port: {port}}}\n      resources: {{cpu: 500m, memory: 32Mi}}\n"
    )
}

/// The same web server in the node's network namespace (`hostNetwork`),
/// on 127.0.0.1:`port`.
pub fn http_app_host_network(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nreplicas: 1\nspec:\n  hostNetwork: true\n  containers:\n    - name: httpd\n      \
         exec: /bin/busybox\n      args: [httpd, -f, -vv, -p, \"127.0.0.1:{port}\", -h, /usr/share/doc/busybox-static]\n      \
         ports: {{port: {port}, target_port: {port}}}\n      resources: {{cpu: 500m, memory: 32Mi}}\n"
    )
}

/// The pod IP (`internalIp`) of a realtime app object.
pub fn pod_ip(app: &Value) -> IpAddr {
    app["internalIp"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no internalIp in {app:#}"))
}
