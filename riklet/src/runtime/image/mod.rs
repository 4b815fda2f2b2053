//! Container images in containerd: resolve, pull, store, unpack.
//!
//! [`ImageStore::ensure`] turns an image reference into a committed
//! snapshot chain that a container's root filesystem can be prepared on
//! ([`ImageInfo::chain_id`]), plus the defaults from the image config
//! (entrypoint, cmd, env, working dir, user).
//!
//! A pull does client-side what `ctr images pull` does, through containerd's
//! gRPC services only (no `ctr`, no transfer service, which containerd 1.6
//! lacks):
//! 1. resolve the reference at the registry with `oci-client` (plain HTTP for
//!    hosts listed in [`RegistryConfig::insecure`], mirrors tried first),
//!    pick the manifest for this host's platform from an index (an entry
//!    that names no platform by what its config says, as containerd does);
//! 2. under a containerd lease (so garbage collection cannot take anything
//!    mid-pull), stream layers, config, manifest and index into the content
//!    store with their expected digests, skipping blobs already there, with
//!    the `containerd.io/gc.ref.content.*` labels that keep them alive;
//! 3. unpack each layer into the `overlayfs` snapshotter: `Prepare` on the
//!    previous chain ID, `diff.Apply`, `Commit` as its own chain ID (layers
//!    already committed are skipped), then label the config with
//!    `containerd.io/gc.ref.snapshot.overlayfs` so the chain lives as long as
//!    the image;
//! 4. create or update the image record (`ctr -n rik images ls` shows it),
//!    then drop the lease.
//!
//! Every call carries the `containerd-namespace` header (`rik` by default);
//! registry calls have timeouts, so a dead or babbling registry is an error,
//! never a hang.
//!
//! # Layout
//! - this module: the store, its configuration, the pull policy, leases
//!   and containerd's shared constants;
//! - `registry`: resolving a reference and fetching documents from a
//!   registry (mirrors, time limits);
//! - `pull`: one pull, from the registry's answer to the image record;
//! - `local`: what containerd already has;
//! - `content`: containerd's content store (reads, streamed writes, labels);
//! - `unpack`: layers into snapshots;
//! - `documents`: index, manifest and config as `oci-client` types;
//! - `platform`: which of an index's images runs on this host;
//! - `error`: [`ImageError`].

mod content;
mod documents;
mod error;
mod local;
mod platform;
mod pull;
mod registry;
mod unpack;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    Resource as LeaseResource,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use tonic::Request;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tracing::{debug, warn};

pub use documents::DocumentError;
pub use error::{ImageError, InvalidAnswer, ReferenceError, Result};
pub use platform::host_arch;

use error::containerd;

use proto::manifest::ImagePullPolicy;

use super::containerd::{SNAPSHOTTER, check_identifier, expiring_lease_labels};

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host:port`, as written in references) served over plain
    /// HTTP. A mirror used over HTTP must be listed too.
    pub insecure: Vec<String>,
    /// Registry host → mirror host (`"docker.io" → "10.0.0.5:5000"`). The
    /// mirror is asked first; the registry itself if the mirror fails.
    pub mirrors: HashMap<String, String>,
    /// Connect timeout, idle timeout while downloading, and the limit for
    /// each manifest or config request.
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            mirrors: HashMap::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// An image ready to run, as [`ImageStore::ensure`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalised reference, also the containerd image name
    /// (`busybox` → `docker.io/library/busybox:latest`).
    pub reference: String,
    /// Digest of the image record's target: the index when the registry
    /// served one, else the manifest (the DIGEST column of `ctr images ls`).
    pub digest: String,
    /// Chain ID of the top layer: the committed `overlayfs` snapshot to use
    /// as the parent of a container's root filesystem snapshot.
    pub chain_id: String,
    /// Config `Entrypoint` (empty when unset).
    pub entrypoint: Vec<String>,
    /// Config `Cmd` (empty when unset).
    pub cmd: Vec<String>,
    /// Config `Env`, `NAME=value` strings.
    pub env: Vec<String>,
    /// Config `WorkingDir`, `None` when unset or empty.
    pub working_dir: Option<String>,
    /// Config `User` (`name`, `uid`, `uid:gid`…), `None` when unset or empty.
    pub user: Option<String>,
}

/// Images of one containerd namespace. Cheap to clone; clones share their
/// registry client and their per-image pull locks.
#[derive(Clone)]
pub struct ImageStore {
    channel: Channel,
    namespace: String,
    namespace_header: AsciiMetadataValue,
    registry: RegistryConfig,
    client: Client,
    /// One pull per image name at a time: replicas of an app share it.
    pulls: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("namespace", &self.namespace)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// A store over an open channel to containerd, in `namespace`
    /// ([`DEFAULT_NAMESPACE`](super::containerd::DEFAULT_NAMESPACE) normally).
    pub fn new(channel: Channel, namespace: &str, registry: RegistryConfig) -> Result<Self> {
        if check_identifier(namespace).is_err() {
            return Err(ImageError::InvalidNamespace(namespace.to_string()));
        }
        let namespace_header = namespace
            .parse()
            .map_err(|_| ImageError::InvalidNamespace(namespace.to_string()))?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(registry.insecure.clone()),
            // We choose the platform ourselves, from the raw index.
            platform_resolver: None,
            connect_timeout: Some(registry.timeout),
            read_timeout: Some(registry.timeout),
            ..ClientConfig::default()
        };
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            namespace_header,
            client: Client::try_from(config).map_err(|e| ImageError::HttpClient(Box::new(e)))?,
            registry,
            pulls: Arc::default(),
        })
    }

    /// [`ImageStore::new`] over containerd's socket (normally
    /// `/run/containerd/containerd.sock`).
    pub async fn connect(
        socket: impl AsRef<Path>,
        namespace: &str,
        registry: RegistryConfig,
    ) -> Result<Self> {
        let path = socket.as_ref();
        let channel =
            containerd_client::connect(path)
                .await
                .map_err(|source| ImageError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
        Self::new(channel, namespace, registry)
    }

    /// The containerd namespace this store works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Makes `reference` available as an unpacked image and describes it.
    ///
    /// With [`ImagePullPolicy::IfNotPresent`] and [`ImagePullPolicy::Never`], an image
    /// containerd already has is used without contacting any registry (and
    /// re-unpacked from the content store if its snapshots were removed).
    /// Concurrent calls for the same image wait for one pull.
    pub async fn ensure(&self, reference: &str, policy: ImagePullPolicy) -> Result<ImageInfo> {
        self.ensure_observed(reference, policy, || ()).await
    }

    /// [`Self::ensure`], calling `on_pull` when a registry is contacted
    /// (the agent's `Pulling` event).
    pub async fn ensure_observed(
        &self,
        reference: &str,
        policy: ImagePullPolicy,
        on_pull: impl FnOnce() + Send,
    ) -> Result<ImageInfo> {
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        let lock = self
            .pulls
            .lock()
            .await
            .entry(name.clone())
            .or_default()
            .clone();
        let _pulling = lock.lock().await;

        if policy != ImagePullPolicy::Always {
            if let Some(info) = self.local(&name).await? {
                debug!(image = %name, "image present");
                return Ok(info);
            }
            if policy == ImagePullPolicy::Never {
                return Err(ImageError::NotPresent { reference: name });
            }
        }
        on_pull();
        self.pull(&parsed, &name).await
    }

    // ----- leases and requests -----

    /// A lease that expires by itself: everything written or prepared under
    /// it is safe from garbage collection until [`Self::delete_lease`].
    async fn create_lease(&self) -> Result<String> {
        let id = format!("riklet-pull-{}", unique());
        LeasesClient::new(self.channel.clone())
            .create(self.req(
                CreateLeaseRequest {
                    id: id.clone(),
                    labels: expiring_lease_labels(),
                },
                None,
            ))
            .await
            .map_err(|s| containerd("create lease", &id, s))?;
        Ok(id)
    }

    /// Adds a snapshot (existing or not yet) to `lease`.
    async fn lease_snapshot(&self, lease: &str, snapshot: &str) -> Result<()> {
        LeasesClient::new(self.channel.clone())
            .add_resource(self.req(
                AddResourceRequest {
                    id: lease.to_string(),
                    resource: Some(LeaseResource {
                        id: snapshot.to_string(),
                        r#type: format!("snapshots/{SNAPSHOTTER}"),
                    }),
                },
                None,
            ))
            .await
            .map(|_| ())
            .map_err(|s| containerd("add snapshot to lease", snapshot, s))
    }

    /// Best effort: an undeleted lease expires by itself.
    async fn delete_lease(&self, id: &str) {
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.req(
                DeleteLeaseRequest {
                    id: id.to_string(),
                    sync: false,
                },
                None,
            ))
            .await
        {
            warn!(lease = id, error = %s.message(), "cannot delete lease");
        }
    }

    /// A request in our namespace, under `lease` if given.
    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        md.insert("containerd-namespace", self.namespace_header.clone());
        if let Some(value) = lease.and_then(|l| l.parse::<AsciiMetadataValue>().ok()) {
            md.insert("containerd-lease", value);
        }
        req
    }
}

/// Holds a reference to the distribution grammar (the one the manifest
/// validation uses), then parses it with `oci-client` to normalise it
/// (`busybox` → `docker.io/library/busybox:latest`).
fn parse_reference(reference: &str) -> Result<Reference> {
    let invalid = |source: ReferenceError| ImageError::InvalidReference {
        reference: reference.to_string(),
        source,
    };
    proto::manifest::check_image_reference(reference).map_err(|e| invalid(e.into()))?;
    reference
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(e.into()))
}

/// A suffix that makes lease, ingest and snapshot keys unique.
fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            parse_reference("busybox").unwrap().whole(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse_reference("127.0.0.1:5000/a/b-c__d.e:1")
                .unwrap()
                .whole(),
            "127.0.0.1:5000/a/b-c__d.e:1"
        );
        for bad in [
            "UPPER/x:1",
            "a/-b",
            "a/b_",
            "a/b___c",
            "a b",
            "busybox:",
            "a/b._c",
        ] {
            let err = parse_reference(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
