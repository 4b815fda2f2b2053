//! Image containers through containerd's gRPC API (`containerd-client`).
//!
//! One containerd container per pod container, id `<instance>_<container>`,
//! in the riklet's own containerd namespace (`rik` by default), labelled
//! `riklet.instance`, `riklet.container` and `riklet.app` so that a riklet
//! that restarts finds its containers again ([`ContainerdRuntime::list`]).
//! [`ContainerdRuntime::start`] does what `ctr run` does, step by step:
//!
//! 1. `snapshots.Prepare`: a writable overlayfs snapshot, key = container
//!    id, on top of the image's committed snapshot (its chain id), held by
//!    a short lease until a container references it (containerd's garbage
//!    collector removes unreferenced snapshots);
//! 2. `containers.Create`: runtime `io.containerd.runc.v2`, the OCI spec of
//!    [`super::oci_spec`], the labels;
//! 3. `tasks.Create`: rootfs = the snapshot's mounts, stdout and stderr =
//!    `binary:///<riklet>?logger=<log path>`, so that containerd's runc shim
//!    runs `riklet logger` ([`super::logger`]) as the container's logging
//!    process: the shim owns it, the CRI log keeps being written while the
//!    riklet is down;
//! 4. `tasks.Start`.
//!
//! A failed start undoes what it created. The shim, not the riklet, is the
//! container's parent: containers outlive the riklet, and [`wait`] can be
//! called again by the next riklet ([`ContainerdRuntime::wait`] returns at
//! once for a task that already exited). runc puts the container in its
//! cgroup (`cgroupsPath` of the spec) in every hierarchy, v1 controllers and
//! v2 alike; OOM kills are read there after the exit, before the task is
//! deleted (containerd only removes the cgroup on `tasks.Delete`).
//!
//! [`wait`]: ContainerdRuntime::wait

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    Kind as SnapshotKind, ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest,
    StartRequest, WaitRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status as ProcessStatus;
use tonic::transport::Channel;
use tonic::{Code, Request};

use super::oci_spec::{self, ImageConfig, SpecError, SpecInput};
use crate::cgroups::{Layout, Limits};
use crate::logs::CriWriter;
use crate::state::ExitRecord;

/// containerd's socket on a standard install.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd namespace of the riklet's containers.
pub const DEFAULT_NAMESPACE: &str = "rik";
/// The runtime (shim) containers run under.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// `type_url` containerd expects for an OCI runtime spec.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Snapshotter of container root filesystems (containerd's default; the
/// image store unpacks into it).
pub const SNAPSHOTTER: &str = "overlayfs";
/// Label: the app instance (pod) a container belongs to.
pub const LABEL_INSTANCE: &str = "riklet.instance";
/// Label: the container's name in the manifest.
pub const LABEL_CONTAINER: &str = "riklet.container";
/// Label: the app's name.
pub const LABEL_APP: &str = "riklet.app";
/// Longest containerd identifier (containerd `identifiers.Validate`).
pub const MAX_ID_LEN: usize = 76;

/// Deadline of every call but `Wait` (creating a task starts a shim and
/// runs `runc create`: seconds on a loaded node).
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a task may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the lease that protects a new snapshot may outlive a crash.
const LEASE_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::minutes(10);
/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_IMAGE_FILE: u64 = 1 << 20;

/// A containerd operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// containerd's socket cannot be reached; the caller retries.
    #[error(
        "cannot reach containerd at {socket}: {reason} (is containerd running? \
         `systemctl start containerd`, or `cargo xtask setup` on a development machine)"
    )]
    Connect { socket: PathBuf, reason: String },
    /// The namespace is not a containerd identifier.
    #[error("containerd namespace {0:?}: {1}")]
    Namespace(String, &'static str),
    /// The instance id or container name cannot make a container id.
    #[error("container id: {0}")]
    Id(String),
    /// containerd refused a call.
    #[error("containerd {op} {id}: {code:?}: {message}")]
    Rpc {
        op: &'static str,
        id: String,
        code: Code,
        message: String,
    },
    /// A container with this id exists already: remove it first.
    #[error("container {0} already exists in containerd")]
    AlreadyExists(String),
    /// No such container or task.
    #[error("container {0} not found in containerd")]
    NotFound(String),
    /// The image's snapshot (the parent) does not exist.
    #[error(
        "container {id}: image snapshot {parent} not found in containerd's {SNAPSHOTTER} snapshotter (is the image pulled and unpacked?)"
    )]
    ParentNotFound { id: String, parent: String },
    /// The OCI spec cannot be built.
    #[error("container {id}: {source}")]
    Spec {
        id: String,
        #[source]
        source: SpecError,
    },
    /// The container's CRI log file cannot be created.
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The task did not end after SIGKILL.
    #[error("container {0} did not stop within {KILL_TIMEOUT:?} of SIGKILL")]
    StopTimeout(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ContainerdError>;

impl ContainerdError {
    /// A refused call; `AlreadyExists` means the container's id is taken.
    fn rpc(op: &'static str, id: &str, status: tonic::Status) -> Self {
        match status.code() {
            Code::AlreadyExists => ContainerdError::AlreadyExists(id.to_string()),
            code => ContainerdError::Rpc {
                op,
                id: id.to_string(),
                code,
                message: status.message().to_string(),
            },
        }
    }

    /// A refused call about an existing container or task, where
    /// `NotFound` means that it does not exist (or its process ended).
    fn lookup(op: &'static str, id: &str, status: tonic::Status) -> Self {
        match status.code() {
            Code::NotFound => ContainerdError::NotFound(id.to_string()),
            _ => Self::rpc(op, id, status),
        }
    }

    /// Whether the error says that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::NotFound(_))
    }

    /// Whether the error says that containerd cannot be reached (down or
    /// restarting), as opposed to refusing the call.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ContainerdError::Connect { .. }
                | ContainerdError::Rpc {
                    code: Code::Unavailable,
                    ..
                }
        )
    }
}

/// Everything needed to start one image container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub instance_id: String,
    /// The container's name in the manifest.
    pub container: String,
    /// The app's name (label `riklet.app`).
    pub app: String,
    /// Image reference, recorded on the containerd container.
    pub image: String,
    /// Chain id of the image's top layer: the committed snapshot the
    /// container's writable snapshot is prepared on.
    pub snapshot_parent: String,
    /// The image config values (entrypoint, cmd, env, working dir, user).
    pub image_config: ImageConfig,
    /// Manifest `command` (replaces the entrypoint).
    pub command: Option<Vec<String>>,
    /// Manifest `args` (replace the cmd).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// The pod's network namespace (e.g. `/run/netns/<instance>`); `None`
    /// shares the host's (hostNetwork).
    pub netns: Option<PathBuf>,
    /// cgroup path in every hierarchy, e.g. `/riklet/<instance>_<container>`.
    pub cgroups_path: String,
    /// CRI log file (`crate::logs::container_file`).
    pub log_path: PathBuf,
    /// Default: the instance id, cut to 63 characters.
    pub hostname: Option<String>,
    /// Bind-mounted read-only at `/etc/resolv.conf` when given.
    pub resolv_conf: Option<PathBuf>,
    /// Bind-mounted read-only at `/etc/hosts` when given.
    pub hosts: Option<PathBuf>,
    /// Extra labels (the `riklet.*` ones are always set).
    pub labels: HashMap<String, String>,
}

/// A started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    pub container_id: String,
    /// Host pid of the container's init process.
    pub pid: u32,
    /// Unix milliseconds.
    pub started_at: i64,
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    /// Exit status; 128 + n for a process killed by signal n (containerd's
    /// convention).
    pub exit_code: u32,
    /// Unix milliseconds.
    pub finished_at: i64,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl ContainerExit {
    /// The runtime-memory form of this exit (reason `Completed`,
    /// `OOMKilled` or `Error`, as kubelet says).
    pub fn to_exit_record(&self) -> ExitRecord {
        let reason = if self.oom_killed {
            "OOMKilled"
        } else if self.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        ExitRecord {
            exit_code: Some(self.exit_code as i32),
            signal: (self.exit_code > 128 && self.exit_code < 128 + 65)
                .then(|| (self.exit_code - 128) as i32),
            finished_at: self.finished_at,
            reason: reason.into(),
            message: None,
        }
    }
}

/// State of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// The container exists without a task (never started, or deleted).
    NoTask,
    Created,
    Running,
    Stopped {
        exit_code: u32,
    },
    Paused,
    Unknown,
}

/// One container of the namespace, for crash reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Host pid of the init process while there is one.
    pub pid: Option<u32>,
    pub status: TaskStatus,
}

impl ContainerInfo {
    /// The `riklet.instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.labels.get(LABEL_INSTANCE).map(String::as_str)
    }

    /// The `riklet.container` label.
    pub fn container(&self) -> Option<&str> {
        self.labels.get(LABEL_CONTAINER).map(String::as_str)
    }
}

/// Checks a containerd namespace name (the rules of any containerd
/// identifier); says why it is refused.
pub fn check_namespace(namespace: &str) -> std::result::Result<(), &'static str> {
    check_identifier(namespace)
}

/// Checks a containerd identifier: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at
/// most [`MAX_ID_LEN`] characters.
fn check_identifier(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("longer than 76 characters");
    }
    let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = id.as_bytes();
    if !bytes.iter().all(|&b| b.is_ascii_alphanumeric() || sep(b)) {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    if sep(bytes[0])
        || sep(bytes[bytes.len() - 1])
        || bytes.windows(2).any(|w| sep(w[0]) && sep(w[1]))
    {
        return Err("must start and end with a letter or digit, without two separators in a row");
    }
    Ok(())
}

/// The containerd id of a pod container: `<instance>_<container>`, both
/// parts validated as the manifest rules say and the whole as containerd
/// requires.
pub fn container_id(instance_id: &str, container: &str) -> Result<String> {
    proto::manifest::validate_instance_id(instance_id)
        .map_err(|e| ContainerdError::Id(e.to_string()))?;
    proto::manifest::validate_name("container", container)
        .map_err(|e| ContainerdError::Id(e.to_string()))?;
    let id = format!("{instance_id}_{container}");
    check_identifier(&id).map_err(|why| ContainerdError::Id(format!("{id:?}: {why}")))?;
    Ok(id)
}

/// Splits a container id made by [`container_id`] into instance id and
/// container name.
pub fn split_container_id(id: &str) -> Option<(&str, &str)> {
    id.split_once('_')
}

/// Percent-encodes everything but unreserved characters and `/`, for the
/// logging binary URI (containerd parses it with Go's `net/url`).
fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stdout/stderr URI that makes the shim run `<exe> logger <log_path>`.
pub fn logger_uri(exe: &Path, log_path: &Path) -> String {
    format!(
        "binary://{}?logger={}",
        uri_escape(&exe.to_string_lossy()),
        uri_escape(&log_path.to_string_lossy())
    )
}

/// The running executable, without the ` (deleted)` the kernel appends
/// once it was replaced on disk (an upgrade): the new file at the same
/// path is a riklet too.
fn riklet_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/riklet"));
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    }
}

fn timestamp_ms(ts: Option<prost_types::Timestamp>) -> i64 {
    match ts {
        Some(t) => t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
        None => crate::clock::now_ms(),
    }
}

/// Client of containerd for the riklet's containers. Cheap to clone (one
/// HTTP/2 connection, re-established when containerd restarts).
#[derive(Debug, Clone)]
pub struct ContainerdRuntime {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    namespace_header: tonic::metadata::AsciiMetadataValue,
    logger_exe: PathBuf,
}

impl ContainerdRuntime {
    /// Connects to containerd's socket and checks that it answers.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        check_identifier(namespace)
            .map_err(|why| ContainerdError::Namespace(namespace.to_string(), why))?;
        let namespace_header = namespace
            .parse()
            .map_err(|_| ContainerdError::Namespace(namespace.to_string(), "not ASCII"))?;
        let connect_err = |reason: String| ContainerdError::Connect {
            socket: socket.to_path_buf(),
            reason,
        };
        if let Err(e) = fs::metadata(socket) {
            return Err(connect_err(e.to_string()));
        }
        let channel =
            tokio::time::timeout(Duration::from_secs(10), containerd_client::connect(socket))
                .await
                .map_err(|_| connect_err("timed out".into()))?
                .map_err(|e| connect_err(crate::error_chain(&e)))?;
        let mut version = Request::new(());
        version.set_timeout(Duration::from_secs(10));
        VersionClient::new(channel.clone())
            .version(version)
            .await
            .map_err(|s| connect_err(format!("{:?}: {}", s.code(), s.message())))?;
        Ok(ContainerdRuntime {
            channel,
            socket: socket.to_path_buf(),
            namespace: namespace.to_string(),
            namespace_header,
            logger_exe: riklet_exe(),
        })
    }

    /// Uses `exe` (a riklet binary) as the logging binary instead of the
    /// running executable (tests, whose executable is not the riklet).
    pub fn with_logger_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.logger_exe = exe.into();
        self
    }

    /// The containerd namespace of this client.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The connection, to share with other containerd clients (the image
    /// store).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
        req.set_timeout(RPC_TIMEOUT);
        req
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// Creates, starts and returns a container; on failure, removes what
    /// it created. A container with the same id must not exist
    /// ([`ContainerdError::AlreadyExists`]: [`remove`](Self::remove) it
    /// first); a snapshot left behind by a start that was interrupted
    /// before its container existed is replaced.
    pub async fn start(&self, spec: ContainerSpec) -> Result<TaskRun> {
        let id = container_id(&spec.instance_id, &spec.container)?;
        // The logger (run by the shim) appends to the file; creating it
        // here turns a bad path into an error of this call.
        CriWriter::open(&spec.log_path).map_err(|source| ContainerdError::Log {
            path: spec.log_path.clone(),
            source,
        })?;
        let mut created = Created::default();
        let result = self.create_and_start(&id, &spec, &mut created).await;
        if result.is_err() {
            self.undo(&id, &created).await;
        }
        result
    }

    async fn create_and_start(
        &self,
        id: &str,
        spec: &ContainerSpec,
        created: &mut Created,
    ) -> Result<TaskRun> {
        let lease = self.create_lease(id).await?;
        let mounts = self.prepare_snapshot(id, spec, &lease).await;
        let container = match mounts {
            Ok(mounts) => {
                created.snapshot = true;
                self.create_container(id, spec, &mounts)
                    .await
                    .map(|()| mounts)
            }
            Err(e) => Err(e),
        };
        self.delete_lease(&lease).await;
        let mounts = container?;
        created.container = true;

        let uri = logger_uri(&self.logger_exe, &spec.log_path);
        let req = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs: mounts,
            stdin: String::new(),
            stdout: uri.clone(),
            stderr: uri,
            terminal: false,
            ..Default::default()
        };
        self.tasks()
            .create(self.request(req))
            .await
            .map_err(|s| ContainerdError::rpc("create task", id, s))?;
        created.task = true;
        let started = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("start task", id, s))?
            .into_inner();
        Ok(TaskRun {
            container_id: id.to_string(),
            pid: started.pid,
            started_at: crate::clock::now_ms(),
        })
    }

    /// A lease that keeps the new snapshot from the garbage collector until
    /// the container references it; it expires by itself if the riklet
    /// dies in between.
    async fn create_lease(&self, id: &str) -> Result<String> {
        let expire =
            (chrono::Utc::now() + LEASE_EXPIRY).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let req = CreateLeaseRequest {
            id: String::new(),
            labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
        };
        let lease = LeasesClient::new(self.channel.clone())
            .create(self.request(req))
            .await
            .map_err(|s| ContainerdError::rpc("create lease for", id, s))?
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        Ok(lease)
    }

    async fn delete_lease(&self, lease: &str) {
        if lease.is_empty() {
            return;
        }
        let req = DeleteLeaseRequest {
            id: lease.to_string(),
            sync: false,
        };
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.request(req))
            .await
        {
            tracing::warn!(lease, code = ?s.code(), message = s.message(), "cannot delete lease; it expires by itself");
        }
    }

    async fn prepare_snapshot(
        &self,
        id: &str,
        spec: &ContainerSpec,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        let prepare = || {
            let mut req = self.request(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
                parent: spec.snapshot_parent.clone(),
                labels: HashMap::new(),
            });
            if !lease.is_empty()
                && let Ok(v) = lease.parse()
            {
                req.metadata_mut().insert("containerd-lease", v);
            }
            req
        };
        let parent_missing = || ContainerdError::ParentNotFound {
            id: id.to_string(),
            parent: spec.snapshot_parent.clone(),
        };
        match self.snapshots().prepare(prepare()).await {
            Ok(r) => return Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) if s.code() == Code::NotFound => return Err(parent_missing()),
            Err(s) => return Err(ContainerdError::rpc("prepare snapshot", id, s)),
        }
        // A snapshot without its container: the leftover of a start that
        // was interrupted. A snapshot with its container is not ours to
        // take.
        if self.container_spec(id).await.is_ok() {
            return Err(ContainerdError::AlreadyExists(id.to_string()));
        }
        tracing::warn!(container = id, "replacing a leftover snapshot");
        self.remove_snapshot(id).await?;
        match self.snapshots().prepare(prepare()).await {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::NotFound => Err(parent_missing()),
            Err(s) => Err(ContainerdError::rpc("prepare snapshot", id, s)),
        }
    }

    async fn create_container(
        &self,
        id: &str,
        spec: &ContainerSpec,
        mounts: &[Mount],
    ) -> Result<()> {
        let spec_err = |source| ContainerdError::Spec {
            id: id.to_string(),
            source,
        };
        let user = match spec.image_config.user.as_deref().map(str::trim) {
            None | Some("") => oci_spec::User::default(),
            Some(user) => {
                let passwd = read_image_file(mounts, "etc/passwd");
                let group = read_image_file(mounts, "etc/group");
                oci_spec::resolve_user(user, passwd.as_deref(), group.as_deref())
                    .map_err(spec_err)?
            }
        };
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| oci_spec::hostname_of(&spec.instance_id));
        let input = SpecInput {
            image: &spec.image_config,
            command: spec.command.as_deref(),
            args: &spec.args,
            env: &spec.env,
            user,
            hostname: &hostname,
            netns: spec.netns.as_deref(),
            cgroups_path: &spec.cgroups_path,
            limits: spec.limits,
            limit_swap: swap_accounting(),
            nofile: oci_spec::nofile_limit(),
            resolv_conf: spec.resolv_conf.as_deref(),
            hosts: spec.hosts.as_deref(),
        };
        let oci = oci_spec::build(&input).map_err(spec_err)?;
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_INSTANCE.into(), spec.instance_id.clone());
        labels.insert(LABEL_CONTAINER.into(), spec.container.clone());
        labels.insert(LABEL_APP.into(), spec.app.clone());
        let container = Container {
            id: id.to_string(),
            labels,
            image: spec.image.clone(),
            runtime: Some(Runtime {
                name: RUNC_RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: serde_json::to_vec(&oci).expect("JSON serializes"),
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        self.containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("create container", id, s))?;
        Ok(())
    }

    /// Removes what a failed start created, newest first.
    async fn undo(&self, id: &str, created: &Created) {
        if created.task
            && let Err(e) = self.delete_task(id).await
        {
            tracing::warn!(container = id, error = %e, "cannot undo task");
        }
        if created.container
            && let Err(e) = self.delete_container(id).await
        {
            tracing::warn!(container = id, error = %e, "cannot undo container");
        }
        if created.snapshot
            && let Err(e) = self.remove_snapshot(id).await
        {
            tracing::warn!(container = id, error = %e, "cannot undo snapshot");
        }
    }

    /// The OCI spec recorded on a container.
    async fn container_spec(&self, id: &str) -> Result<serde_json::Value> {
        let c = self
            .containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(|s| ContainerdError::lookup("get container", id, s))?
            .into_inner()
            .container
            .ok_or_else(|| ContainerdError::NotFound(id.to_string()))?;
        Ok(c.spec
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .unwrap_or(serde_json::Value::Null))
    }

    /// Waits until the container's task has exited and says how. Returns
    /// at once for a task that exited earlier (e.g. while no riklet was
    /// running); [`ContainerdError::NotFound`] when there is no task.
    pub async fn wait(&self, container_id: &str) -> Result<ContainerExit> {
        let mut req = Request::new(WaitRequest {
            container_id: container_id.to_string(),
            exec_id: String::new(),
        });
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
        let exit = self
            .tasks()
            .wait(req)
            .await
            .map_err(|s| ContainerdError::lookup("wait for task", container_id, s))?
            .into_inner();
        let oom_killed = match self.container_spec(container_id).await {
            Ok(spec) => spec["linux"]["cgroupsPath"]
                .as_str()
                .is_some_and(|p| oom_kills(p) > 0),
            Err(_) => false,
        };
        Ok(ContainerExit {
            exit_code: exit.exit_status,
            finished_at: timestamp_ms(exit.exited_at),
            oom_killed,
        })
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        };
        match self.tasks().kill(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) => Err(ContainerdError::lookup("kill task", id, s)),
        }
    }

    /// Whether the task ended within `limit`.
    async fn wait_for(&self, id: &str, limit: Duration) -> Result<bool> {
        match tokio::time::timeout(limit, self.wait(id)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if e.is_not_found() => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Stops a container: SIGTERM to its init process (as Docker and
    /// kubelet do: the application decides how to stop its children), up
    /// to `grace` for it to exit, then SIGKILL to every process of the
    /// container. A container without a running task is already stopped.
    pub async fn stop(&self, container_id: &str, grace: Duration) -> Result<()> {
        match self.kill(container_id, libc::SIGTERM, false).await {
            Ok(()) => {}
            // No task, or its process already ended.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.wait_for(container_id, grace).await? {
            return Ok(());
        }
        match self.kill(container_id, libc::SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.wait_for(container_id, KILL_TIMEOUT).await? {
            Ok(())
        } else {
            Err(ContainerdError::StopTimeout(container_id.to_string()))
        }
    }

    async fn delete_task(&self, id: &str) -> Result<()> {
        let state = match self
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => return Ok(()),
            Err(s) => return Err(ContainerdError::rpc("get task", id, s)),
        };
        // containerd refuses to delete a task whose process runs (or was
        // created and never started): kill it first.
        if state.is_none_or(|p| p.status != ProcessStatus::Stopped as i32) {
            match self.kill(id, libc::SIGKILL, true).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
            if !self.wait_for(id, KILL_TIMEOUT).await? {
                return Err(ContainerdError::StopTimeout(id.to_string()));
            }
        }
        match self
            .tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("delete task", id, s)),
        }
    }

    async fn delete_container(&self, id: &str) -> Result<()> {
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("delete container", id, s)),
        }
    }

    async fn remove_snapshot(&self, id: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("remove snapshot", id, s)),
        }
    }

    /// Removes a container and all it holds: its task (killed first if it
    /// still runs; the shim then stops the logger, which has written every
    /// line by the time this returns), the container, its snapshot. What
    /// does not exist is skipped, so it can be called again after a crash.
    pub async fn remove(&self, container_id: &str) -> Result<()> {
        self.delete_task(container_id).await?;
        self.delete_container(container_id).await?;
        self.remove_snapshot(container_id).await
    }

    /// Keys of the active snapshots named like a container id
    /// (`<instance>_<container>`): the writable layers of the riklet's
    /// containers, and leftovers of starts interrupted before their
    /// container existed.
    pub async fn container_snapshots(&self) -> Result<Vec<String>> {
        let mut stream = self
            .snapshots()
            .list(self.request(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                filters: vec![],
            }))
            .await
            .map_err(|s| ContainerdError::rpc("list snapshots", "", s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| ContainerdError::rpc("list snapshots", "", s))?
        {
            keys.extend(
                msg.info
                    .into_iter()
                    .filter(|i| i.kind == SnapshotKind::Active as i32)
                    .map(|i| i.name)
                    .filter(|name| {
                        split_container_id(name).is_some_and(|(i, c)| container_id(i, c).is_ok())
                    }),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes a snapshot left without its container ([`Self::remove`]
    /// removes a container's own); a missing one is not an error.
    pub async fn remove_leftover_snapshot(&self, key: &str) -> Result<()> {
        self.remove_snapshot(key).await
    }

    /// Every container of the namespace with its labels and task state.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let containers = self
            .containers()
            .list(self.request(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| ContainerdError::rpc("list containers", "", s))?
            .into_inner()
            .containers;
        let tasks = self
            .tasks()
            .list(self.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("list tasks", "", s))?
            .into_inner()
            .tasks;
        let mut out: Vec<ContainerInfo> = containers
            .into_iter()
            .map(|c| {
                // containerd 1.6 fills `id` (the init process is named
                // after its container), later versions `container_id`.
                let task = tasks.iter().find(|t| {
                    t.container_id == c.id || (t.container_id.is_empty() && t.id == c.id)
                });
                let status = match task {
                    None => TaskStatus::NoTask,
                    Some(t) => match ProcessStatus::try_from(t.status) {
                        Ok(ProcessStatus::Created) => TaskStatus::Created,
                        Ok(ProcessStatus::Running) => TaskStatus::Running,
                        Ok(ProcessStatus::Stopped) => TaskStatus::Stopped {
                            exit_code: t.exit_status,
                        },
                        Ok(ProcessStatus::Paused | ProcessStatus::Pausing) => TaskStatus::Paused,
                        _ => TaskStatus::Unknown,
                    },
                };
                let pid = task
                    .map(|t| t.pid)
                    .filter(|&p| p != 0 && !matches!(status, TaskStatus::Stopped { .. }));
                ContainerInfo {
                    id: c.id,
                    labels: c.labels,
                    pid,
                    status,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// What a start created so far (undone on failure).
#[derive(Debug, Default)]
struct Created {
    snapshot: bool,
    container: bool,
    task: bool,
}

/// Whether the host accounts swap per cgroup, so that the spec may cap
/// memory+swap (runc fails on a swap limit the kernel cannot apply).
fn swap_accounting() -> bool {
    match Layout::detect() {
        Ok(Layout::Hybrid { .. }) => {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        }
        Ok(Layout::Unified { v2 }) => fs::read_dir(&v2)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.path().join("memory.swap.max").exists())
            })
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// OOM kills recorded in a container's cgroup: `oom_kill` of the v1
/// `memory.oom_control`, or of the v2 `memory.events`, whichever
/// hierarchy holds the memory controller.
pub fn oom_kills(cgroups_path: &str) -> u64 {
    let rel = cgroups_path.trim_start_matches('/');
    let mut files = vec![
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
    ];
    if let Ok(layout) = Layout::detect() {
        files.push(layout.v2_mount().join(rel).join("memory.events"));
    }
    files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// The layer directories of a snapshot's mounts, topmost first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                if let Some(upper) = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
                    dirs.push(PathBuf::from(upper));
                }
                if let Some(lower) = m.options.iter().find_map(|o| o.strip_prefix("lowerdir=")) {
                    dirs.extend(lower.split(':').map(PathBuf::from));
                }
            }
            _ => {}
        }
    }
    dirs
}

/// What a layer says about a path.
enum InLayer {
    Absent,
    File(String),
    /// Deleted (whiteout), or not a plain file reachable without following
    /// a symbolic link: the image's view of it cannot be read safely here.
    Hidden,
}

fn look_in_layer(dir: &Path, rel: &str) -> InLayer {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return InLayer::Absent,
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_char_device() {
            return InLayer::Hidden; // overlayfs whiteout
        }
        if !last && meta.is_dir() {
            continue;
        }
        if last && meta.is_file() {
            let read = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|f| {
                    let mut s = String::new();
                    f.take(MAX_IMAGE_FILE).read_to_string(&mut s).map(|_| s)
                });
            return match read {
                Ok(s) => InLayer::File(s),
                Err(_) => InLayer::Hidden,
            };
        }
        return InLayer::Hidden;
    }
    InLayer::Absent
}

/// Reads a small file of the image (e.g. `etc/passwd`) straight from the
/// snapshot's layer directories, never following a symbolic link out of
/// them.
fn read_image_file(mounts: &[Mount], rel: &str) -> Option<String> {
    for dir in layer_dirs(mounts) {
        match look_in_layer(&dir, rel) {
            InLayer::Absent => continue,
            InLayer::File(s) => return Some(s),
            InLayer::Hidden => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_validated() {
        assert_eq!(container_id("web-x1", "nginx").unwrap(), "web-x1_nginx");
        assert!(container_id("Web", "nginx").is_err());
        assert!(container_id("web", "ngi_nx").is_err());
        // DNS labels allow "--", containerd does not.
        let e = container_id("web--x1", "nginx").unwrap_err().to_string();
        assert!(e.contains("two separators"), "{e}");
        let e = container_id(&"a".repeat(71), "nginx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("76"), "{e}");
        assert_eq!(
            split_container_id("web-x1_nginx"),
            Some(("web-x1", "nginx"))
        );
    }

    #[test]
    fn logger_uri_escapes_query_characters() {
        let uri = logger_uri(
            Path::new("/usr/bin/riklet"),
            Path::new("/var/log/pods/default_web_web-x1/c/0.log"),
        );
        assert_eq!(
            uri,
            "binary:///usr/bin/riklet?logger=/var/log/pods/default_web_web-x1/c/0.log"
        );
        let uri = logger_uri(Path::new("/opt/my riklet"), Path::new("/l/a&b=c+d%.log"));
        assert_eq!(
            uri,
            "binary:///opt/my%20riklet?logger=/l/a%26b%3Dc%2Bd%25.log"
        );
    }

    #[test]
    fn exits_map_to_kubelet_reasons() {
        let exit = |code, oom| ContainerExit {
            exit_code: code,
            finished_at: 5,
            oom_killed: oom,
        };
        assert_eq!(exit(0, false).to_exit_record().reason, "Completed");
        let r = exit(137, true).to_exit_record();
        assert_eq!(
            (r.reason.as_str(), r.signal, r.exit_code),
            ("OOMKilled", Some(9), Some(137))
        );
        let r = exit(3, false).to_exit_record();
        assert_eq!((r.reason.as_str(), r.signal), ("Error", None));
    }

    #[test]
    fn image_files_are_read_from_layers_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, l1, l2) = (
            dir.path().join("upper"),
            dir.path().join("l1"),
            dir.path().join("l2"),
        );
        for d in [&upper, &l1, &l2] {
            fs::create_dir_all(d.join("etc")).unwrap();
        }
        fs::write(l2.join("etc/passwd"), "old").unwrap();
        fs::write(l1.join("etc/passwd"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", l1.join("etc/group")).unwrap();
        fs::write(l2.join("etc/group"), "lower group").unwrap();
        let mounts = vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", dir.path().join("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", l1.display(), l2.display()),
            ],
        }];
        assert_eq!(
            read_image_file(&mounts, "etc/passwd").as_deref(),
            Some("new")
        );
        assert_eq!(
            read_image_file(&mounts, "etc/group"),
            None,
            "a link is not followed"
        );
        assert_eq!(read_image_file(&mounts, "etc/hosts"), None);
        let bind = vec![Mount {
            r#type: "bind".into(),
            source: l2.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        }];
        assert_eq!(read_image_file(&bind, "etc/passwd").as_deref(), Some("old"));
    }
}
