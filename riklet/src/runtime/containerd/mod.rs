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
//!    [`crate::runtime::spec`], the labels;
//! 3. `tasks.Create`: rootfs = the snapshot's mounts, stdout and stderr =
//!    `binary:///<riklet>?logger=<log path>`, so that containerd's runc shim
//!    runs `riklet logger` ([`crate::runtime::logger`]) as the container's
//!    logging process: the shim owns it, the CRI log keeps being written
//!    while the riklet is down;
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
//! The parts: `facts` (what containerd and the riklet agree on: socket,
//! namespace, snapshotter, lease expiry, identifiers), the connection
//! (here), `containers` (ids, labels, creation with the OCI spec, list),
//! `tasks` (start, wait, stop, remove), `snapshots` (and the lease of a
//! start), `rootfs` (files read from an image's layers), `error`.
//!
//! [`wait`]: ContainerdRuntime::wait

mod containers;
mod error;
mod facts;
mod rootfs;
mod snapshots;
mod tasks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use tonic::Request;
use tonic::transport::Channel;

pub use containers::{
    ContainerInfo, ContainerSpec, LABEL_APP, LABEL_CONTAINER, LABEL_INSTANCE, TaskStatus,
    container_id, split_container_id,
};
pub use error::{ConnectFailure, ContainerdError, Result};
pub use facts::{
    DEFAULT_NAMESPACE, DEFAULT_SOCKET, LEASE_EXPIRY, MAX_ID_LEN, SNAPSHOTTER, check_identifier,
    expiring_lease_labels,
};
pub use tasks::{ContainerExit, TaskRun};

/// Deadline of every call but `Wait` (creating a task starts a shim and
/// runs `runc create`: seconds on a loaded node).
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the connection and of its first call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        let failed = |source| ContainerdError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        std::fs::metadata(socket).map_err(|e| failed(ConnectFailure::NoSocket(e)))?;
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| failed(ConnectFailure::Timeout(CONNECT_TIMEOUT)))?
            .map_err(|e| failed(ConnectFailure::Transport(e)))?;
        let mut version = Request::new(());
        version.set_timeout(CONNECT_TIMEOUT);
        VersionClient::new(channel.clone())
            .version(version)
            .await
            .map_err(|s| failed(ConnectFailure::Version(Box::new(s))))?;
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

    /// A call in this client's namespace, with [`RPC_TIMEOUT`].
    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = self.request_without_timeout(msg);
        req.set_timeout(RPC_TIMEOUT);
        req
    }

    /// A call in this client's namespace that may take as long as it takes
    /// (`Wait`).
    fn request_without_timeout<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
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

    fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
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
