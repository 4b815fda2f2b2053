//! riklet configuration: a TOML file with documented defaults, overridden
//! by command-line flags. Every host path of the riklet's own has its
//! default in [`paths`]; containerd's socket and namespace have theirs in
//! [`crate::runtime::containerd`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::runtime::containerd;

/// Default host paths.
pub mod paths {
    pub const STATE_DIR: &str = "/var/lib/riklet";
    pub const LOG_DIR: &str = "/var/log/pods";
    pub const BPF_PIN_DIR: &str = "/sys/fs/bpf/riklet";
    pub const CONFIG_FILE: &str = "/etc/riklet/config.toml";
    /// Node-local control socket, relative to the state dir.
    pub const SOCKET: &str = "riklet.sock";
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config: node_name")]
    NodeName(#[source] proto::manifest::ManifestError),
    #[error("config: network")]
    Network(#[source] crate::network::NetworkError),
    #[error(transparent)]
    Sink(#[from] crate::shipper::SinkConfigError),
}

/// Every setting of the riklet (TOML keys are the field names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name this node registers as; defaults to the hostname.
    pub node_name: Option<String>,
    /// Scheduler URL (`http://host:port`).
    pub scheduler: String,
    /// Also run the scheduler in-process (one-node cluster).
    pub standalone: bool,
    /// Listen address of the embedded scheduler.
    pub standalone_listen: SocketAddr,
    /// Runtime memory (pods, shims' run directories, control socket).
    pub state_dir: PathBuf,
    /// Root of the CRI pod logs.
    pub log_dir: PathBuf,
    /// Name of the riklet's cgroup in every hierarchy.
    pub cgroup_root: String,
    /// Where eBPF maps and links are pinned.
    pub bpf_pin_dir: PathBuf,
    /// User that bare processes run as.
    pub run_as_user: String,
    /// Node API (logs) listen address; port 0 picks a free one.
    pub api_listen: SocketAddr,
    /// Interval between heartbeats to the scheduler.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Time between SIGTERM and SIGKILL when a pod is deleted.
    #[serde(deserialize_with = "duration")]
    pub stop_grace_period: Duration,
    /// First crash-loop back-off (doubles up to `restart_backoff_max`).
    #[serde(deserialize_with = "duration")]
    pub restart_backoff_initial: Duration,
    #[serde(deserialize_with = "duration")]
    pub restart_backoff_max: Duration,
    /// How many container starts (pod network, image pull, shim or
    /// containerd task) run at once; the others wait their turn, in order.
    /// Defaults to the CPU count × 4; at least 1.
    pub start_parallelism: usize,
    /// Prometheus endpoint (`GET /metrics`); loopback by default; port 0
    /// picks a free one (shown by `riklet status`).
    pub metrics_addr: SocketAddr,
    /// Interval between two collections of node and pod figures.
    #[serde(deserialize_with = "duration")]
    pub metrics_interval: Duration,
    /// Pod network: bridge, pod CIDR, masquerade (`[network]` table).
    pub network: crate::network::NetworkConfig,
    /// Pod log rotation and retention (`[logs]` table).
    pub logs: LogsConfig,
    /// Where containerd is (`[containerd]` table).
    pub containerd: ContainerdConfig,
    /// How to reach image registries (`[registries]` table).
    pub registries: RegistriesConfig,
    /// Node Proxy datapath for apps' `ports`: `ebpf` (socket
    /// load-balancing for the node's own clients, nftables for traffic
    /// entering the node and for SCTP), `nftables` (nftables for all) or
    /// `off`. Where eBPF cannot load, `ebpf` runs as `nftables`.
    pub proxy: crate::proxy::ProxyMode,
    /// Node addresses on which apps' ports are served; empty: every IPv4
    /// address of the node (and 127.0.0.1 for the node's own clients).
    pub proxy_addresses: Vec<std::net::Ipv4Addr>,
    /// Plaintext off loopback: an `http://` scheduler on another host
    /// (RIK's own scheduler), and a plaintext node API for remote peers.
    pub insecure: bool,
    /// `--join` and `--ca-hash` (flags only: a token is not kept in a file).
    #[serde(skip)]
    pub join: Option<crate::tls::JoinFlags>,
}

/// Pod logs: the writers' rotation limits (an app's `spec.logs` overrides
/// them) and how long a deleted app's logs stay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Largest log file: the current file rotates before a write would
    /// make it larger. At least 64Ki.
    #[serde(deserialize_with = "size")]
    pub max_size: u64,
    /// Files kept per container run, the current one and the rotated ones
    /// (kubelet's `containerLogMaxFiles`); at least 1.
    pub max_files: u32,
    /// How long the log directory of a deleted app's pod stays; 0 removes
    /// it at once.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Where the log shipper sends every pod's lines (`[[logs.sinks]]`
    /// tables); none: the shipper does not run.
    pub sinks: Vec<crate::shipper::LogSink>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let rotation = crate::logs::Rotation::default();
        LogsConfig {
            max_size: rotation.max_size,
            max_files: rotation.max_files,
            retention: Duration::from_secs(3600),
            sinks: Vec::new(),
        }
    }
}

impl LogsConfig {
    /// The writers' limits.
    pub fn rotation(&self) -> crate::logs::Rotation {
        crate::logs::Rotation {
            max_size: self.max_size,
            max_files: self.max_files,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let min = proto::manifest::MIN_LOG_FILE_SIZE;
        if self.max_size < min {
            return Err(ConfigError::Invalid {
                field: "logs.max_size",
                reason: format!(
                    "{} bytes is less than the {min} bytes minimum",
                    self.max_size
                ),
            });
        }
        if self.max_files == 0 {
            return Err(ConfigError::Invalid {
                field: "logs.max_files",
                reason: "must be at least 1".into(),
            });
        }
        crate::shipper::config::validate_sinks(&self.sinks)?;
        Ok(())
    }
}

/// The containerd that runs image containers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket. Nothing answering there is not fatal: the
    /// riklet retries with back-off, bare-process pods run meanwhile.
    pub socket: PathBuf,
    /// containerd namespace of the riklet's images and containers (what
    /// `ctr -n <namespace>` shows).
    pub namespace: String,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: containerd::DEFAULT_SOCKET.into(),
            namespace: containerd::DEFAULT_NAMESPACE.into(),
        }
    }
}

/// Registry settings of image pulls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistriesConfig {
    /// Registries (`host:port` as written in image references) reached
    /// over plain HTTP; a mirror used over HTTP must be listed too.
    pub insecure: Vec<String>,
    /// Registry → mirror (`"docker.io" = "10.0.0.5:5000"`): the mirror is
    /// asked first, the registry itself when the mirror fails.
    pub mirrors: HashMap<String, String>,
    /// Connect timeout, and how long a registry may stay silent.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for RegistriesConfig {
    fn default() -> Self {
        let d = crate::runtime::image::RegistryConfig::default();
        RegistriesConfig {
            insecure: d.insecure,
            mirrors: d.mirrors,
            timeout: d.timeout,
        }
    }
}

impl RegistriesConfig {
    /// The image store's form of these settings.
    pub fn registry_config(&self) -> crate::runtime::image::RegistryConfig {
        crate::runtime::image::RegistryConfig {
            insecure: self.insecure.clone(),
            mirrors: self.mirrors.clone(),
            timeout: self.timeout,
        }
    }
}

/// A name that stays one directory: not empty, not `.` or `..`, only
/// `[A-Za-z0-9._-]`.
fn single_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s != "."
        && s != ".."
}

/// `host[:port]`, as the registry part of an image reference.
fn registry_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: None,
            scheduler: "http://127.0.0.1:4995".into(),
            standalone: false,
            standalone_listen: "127.0.0.1:4995".parse().expect("valid"),
            state_dir: paths::STATE_DIR.into(),
            log_dir: paths::LOG_DIR.into(),
            cgroup_root: "riklet".into(),
            bpf_pin_dir: paths::BPF_PIN_DIR.into(),
            run_as_user: "nobody".into(),
            api_listen: "127.0.0.1:4996".parse().expect("valid"),
            heartbeat_interval: Duration::from_secs(5),
            stop_grace_period: Duration::from_secs(10),
            restart_backoff_initial: Duration::from_secs(10),
            restart_backoff_max: Duration::from_secs(300),
            start_parallelism: default_start_parallelism(),
            metrics_addr: "127.0.0.1:9102".parse().expect("valid"),
            metrics_interval: Duration::from_secs(5),
            network: crate::network::NetworkConfig::default(),
            logs: LogsConfig::default(),
            containerd: ContainerdConfig::default(),
            registries: RegistriesConfig::default(),
            proxy: crate::proxy::ProxyMode::default(),
            proxy_addresses: Vec::new(),
            insecure: false,
            join: None,
        }
    }
}

/// The CPU count × 4 (4 if it cannot be known): starts wait mostly on the
/// kernel and on disks, so a few per CPU keep the CPUs busy without
/// overrunning the node.
pub fn default_start_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) * 4
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A size in bytes as a manifest writes it (`"10Mi"`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    proto::manifest::parse_size(&s).map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Checks values that serde cannot.
    /// The Node Proxy's nftables table: the network's table name with
    /// `_proxy` (its own table, so that each sync can replace it whole).
    pub fn proxy_nft_table(&self) -> String {
        format!("{}_proxy", self.network.nft_table)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.node_name {
            proto::manifest::validate_node_name("node_name", name)
                .map_err(ConfigError::NodeName)?;
        }
        if !single_component(&self.cgroup_root) {
            return Err(ConfigError::Invalid {
                field: "cgroup_root",
                reason: format!("{:?} must be a single path component", self.cgroup_root),
            });
        }
        self.validate_durations()?;
        if self.start_parallelism == 0 {
            return Err(ConfigError::Invalid {
                field: "start_parallelism",
                reason: "must be at least 1".into(),
            });
        }
        self.network.validate().map_err(ConfigError::Network)?;
        self.logs.validate()?;
        containerd::check_identifier(&self.containerd.namespace).map_err(|why| {
            ConfigError::Invalid {
                field: "containerd.namespace",
                reason: format!("{:?}: {why}", self.containerd.namespace),
            }
        })?;
        self.validate_registries()?;
        for (field, p) in [
            ("state_dir", &self.state_dir),
            ("log_dir", &self.log_dir),
            ("bpf_pin_dir", &self.bpf_pin_dir),
            ("containerd.socket", &self.containerd.socket),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{} must be an absolute path", p.display()),
                });
            }
        }
        Ok(())
    }

    fn validate_durations(&self) -> Result<(), ConfigError> {
        for (field, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("restart_backoff_initial", self.restart_backoff_initial),
            ("metrics_interval", self.metrics_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be more than 0".into(),
                });
            }
        }
        if self.restart_backoff_max < self.restart_backoff_initial {
            return Err(ConfigError::Invalid {
                field: "restart_backoff_max",
                reason: "must not be less than restart_backoff_initial".into(),
            });
        }
        Ok(())
    }

    fn validate_registries(&self) -> Result<(), ConfigError> {
        if self.registries.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "registries.timeout",
                reason: "must be more than 0".into(),
            });
        }
        let hosts = self
            .registries
            .insecure
            .iter()
            .map(|h| ("registries.insecure", h))
            .chain(
                self.registries
                    .mirrors
                    .iter()
                    .flat_map(|(k, v)| [("registries.mirrors", k), ("registries.mirrors", v)]),
            );
        for (field, host) in hosts {
            if !registry_host(host) {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{host:?} is not a registry host (host or host:port)"),
                });
            }
        }
        Ok(())
    }

    /// Path of the node-local control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join(paths::SOCKET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c: Config =
            toml::from_str("stop_grace_period = \"2s\"\ncgroup_root = \"riklet-test\"\n").unwrap();
        assert_eq!(c.stop_grace_period, Duration::from_secs(2));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.start_parallelism, default_start_parallelism());
        assert!(c.start_parallelism >= 4 && c.start_parallelism.is_multiple_of(4));
        c.validate().unwrap();
        let c: Config = toml::from_str("start_parallelism = 1").unwrap();
        assert_eq!(c.start_parallelism, 1);
        c.validate().unwrap();
    }

    #[test]
    fn logs_table() {
        let c = Config::default();
        assert_eq!(c.logs.max_size, 10 << 20);
        assert_eq!(c.logs.max_files, 5);
        assert_eq!(c.logs.retention, Duration::from_secs(3600));
        let c: Config =
            toml::from_str("[logs]\nmax_size = \"64Ki\"\nmax_files = 1\nretention = \"0s\"\n")
                .unwrap();
        c.validate().unwrap();
        assert_eq!(c.logs.max_size, 64 << 10);
        assert_eq!(c.logs.max_files, 1);
        assert!(c.logs.retention.is_zero());
        let err = toml::from_str::<Config>("[logs]\nmax_size = \"ten\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_size") && err.contains("not a size"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = toml::from_str::<Config>("no_such_key = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_key"), "{err}");
        let c: Config = toml::from_str("cgroup_root = \"../x\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("cgroup_root")
        );
        let c: Config = toml::from_str("state_dir = \"rel\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("state_dir"));
        let c: Config = toml::from_str("start_parallelism = 0").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("start_parallelism"), "{err}");
        for (toml, field) in [
            ("[containerd]\nnamespace = \"a b\"", "containerd.namespace"),
            ("[containerd]\nsocket = \"c.sock\"", "containerd.socket"),
            ("[registries]\ntimeout = \"0s\"", "registries.timeout"),
            ("[logs]\nmax_size = \"63Ki\"", "logs.max_size"),
            ("[logs]\nmax_files = 0", "logs.max_files"),
            (
                "[[logs.sinks]]\nkind = \"syslog\"\naddress = \"nope\"",
                "logs.sinks[0].address",
            ),
            (
                "[registries]\ninsecure = [\"http://x\"]",
                "registries.insecure",
            ),
            (
                "[registries]\nmirrors = {\"docker.io\" = \"a/b\"}",
                "registries.mirrors",
            ),
        ] {
            let c: Config = toml::from_str(toml).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn containerd_and_registries() {
        let c = Config::default();
        assert_eq!(
            c.containerd.socket,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(c.containerd.namespace, "rik");
        assert_eq!(c.registries.timeout, Duration::from_secs(30));
        let c: Config = toml::from_str(
            "[containerd]\nsocket = \"/tmp/c.sock\"\nnamespace = \"rik-test\"\n\
             [registries]\ninsecure = [\"127.0.0.1:5000\"]\ntimeout = \"5s\"\n\
             mirrors = {\"docker.io\" = \"10.0.0.5:5000\"}\n",
        )
        .unwrap();
        c.validate().unwrap();
        let r = c.registries.registry_config();
        assert_eq!(r.insecure, vec!["127.0.0.1:5000".to_string()]);
        assert_eq!(r.mirrors["docker.io"], "10.0.0.5:5000");
        assert_eq!(r.timeout, Duration::from_secs(5));
        // The shipped config file is the defaults, and parses.
        let shipped: Config =
            toml::from_str(include_str!("../../assets/config.toml")).expect("assets/config.toml");
        shipped.validate().unwrap();
        assert_eq!(
            shipped.containerd.socket,
            Config::default().containerd.socket
        );
        assert_eq!(shipped.registries.timeout, Duration::from_secs(30));
    }
}
