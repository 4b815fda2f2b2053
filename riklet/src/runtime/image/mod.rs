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
//!    pick the manifest for this host's platform from an index;
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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, ApplyRequest, CreateImageRequest,
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest,
    Image, InfoRequest, ReadContentRequest, Resource as LeaseResource, UpdateImageRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::{Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::{debug, info, warn};

/// containerd namespace riklet's images and containers live in.
pub const DEFAULT_NAMESPACE: &str = "rik";
/// Snapshotter images are unpacked into (containerd's default on Linux).
pub const SNAPSHOTTER: &str = "overlayfs";

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Layer media types containerd 1.6's diff service applies.
const LAYER_MEDIA: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// Largest manifest, index or config accepted (they are JSON documents of a
/// few KB; anything this big is not one).
const MAX_DOCUMENT: i64 = 8 << 20;
/// Bytes per content-store write message (containerd accepts 16 MiB).
const WRITE_CHUNK: usize = 1 << 20;
/// A pull's lease expires by itself after this, should the riklet die mid-pull.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// Why an image could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse as `[registry/]repository[:tag][@digest]`.
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    /// A containerd namespace must be letters and digits separated by `.`, `_`, `-`.
    #[error("invalid containerd namespace {0:?}")]
    InvalidNamespace(String),
    /// [`PullPolicy::Never`] and containerd does not have the image.
    #[error("image {reference} is not present in containerd and the pull policy is Never")]
    NotPresent { reference: String },
    /// Connection refused, no route, TLS handshake failed.
    #[error("registry {registry} unreachable (pulling {reference})")]
    Unreachable {
        reference: String,
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The registry accepted the connection but did not answer in time.
    #[error("registry {registry} did not answer within {after:?} (pulling {reference})")]
    Timeout {
        reference: String,
        registry: String,
        after: Duration,
    },
    /// 404, `MANIFEST_UNKNOWN`, `NAME_UNKNOWN`, `BLOB_UNKNOWN`.
    #[error("image {reference} not found in registry {registry}")]
    NotFound {
        reference: String,
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// Any other refusal: authentication, rate limit, server error.
    #[error("registry {registry} refused to serve {reference}")]
    Registry {
        reference: String,
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    /// The answer is not a registry's: not HTTP, not JSON, wrong digest,
    /// not a manifest.
    #[error("registry {registry} gave an invalid answer for {reference}: {detail}")]
    BadAnswer {
        reference: String,
        registry: String,
        detail: String,
    },
    /// No manifest for this host's OS and architecture.
    #[error("no {wanted} image in {reference} (it has: {})", available.join(", "))]
    WrongPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },
    /// A layer containerd cannot apply.
    #[error("image {reference}: unsupported layer media type {media_type:?}")]
    UnsupportedLayer {
        reference: String,
        media_type: String,
    },
    /// A layer or config download failed midway.
    #[error("downloading {digest} of {reference}")]
    Download {
        reference: String,
        digest: String,
        #[source]
        source: std::io::Error,
    },
    /// What containerd holds for the image does not add up (unpacked layer
    /// digest differs from the config's diff ID, unreadable manifest…).
    #[error("image {reference}: {detail}")]
    Corrupt { reference: String, detail: String },
    /// The registry HTTP client cannot be built (TLS roots, proxy settings).
    #[error("cannot set up the registry HTTP client")]
    HttpClient(#[source] Box<OciDistributionError>),
    /// The containerd socket does not answer.
    #[error("cannot connect to containerd at {path}")]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call failed.
    #[error("containerd {op} {object}")]
    Containerd {
        op: &'static str,
        object: String,
        #[source]
        source: Box<Status>,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ImageError>;

/// When to contact the registry (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Resolve the reference at the registry every time; download only what
    /// containerd lacks.
    Always,
    /// Use the image containerd has; pull only when it is missing.
    #[default]
    IfNotPresent,
    /// Never contact a registry: the image must already be in containerd.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    /// `Always`, `IfNotPresent`, `Never` (case-insensitive).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(Self::Always),
            "ifnotpresent" => Ok(Self::IfNotPresent),
            "never" => Ok(Self::Never),
            _ => Err(format!(
                "pull policy {s:?}: expected Always, IfNotPresent or Never"
            )),
        }
    }
}

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
    /// ([`DEFAULT_NAMESPACE`] normally).
    pub fn new(channel: Channel, namespace: &str, registry: RegistryConfig) -> Result<Self> {
        if !valid_namespace(namespace) {
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
    /// With [`PullPolicy::IfNotPresent`] and [`PullPolicy::Never`], an image
    /// containerd already has is used without contacting any registry (and
    /// re-unpacked from the content store if its snapshots were removed).
    /// Concurrent calls for the same image wait for one pull.
    pub async fn ensure(&self, reference: &str, policy: PullPolicy) -> Result<ImageInfo> {
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

        if policy != PullPolicy::Always {
            if let Some(info) = self.local(&name).await? {
                debug!(image = %name, "image present");
                return Ok(info);
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NotPresent { reference: name });
            }
        }
        self.pull(&parsed, &name).await
    }

    // ----- what containerd already has -----

    /// The image if containerd has its record, documents and (after a
    /// re-unpack if needed) its snapshot chain; `None` if anything is missing.
    async fn local(&self, name: &str) -> Result<Option<ImageInfo>> {
        let mut images = ImagesClient::new(self.channel.clone());
        let image = match images
            .get(self.req(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => None,
            Err(s) => return Err(containerd("get image", name, s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        let Some(manifest_desc) = self.local_manifest(name, &target).await? else {
            return Ok(None);
        };
        let Some(manifest_bytes) = self.read_content(name, &manifest_desc.digest).await? else {
            return Ok(None);
        };
        let manifest = parse_manifest(&manifest_bytes).map_err(|detail| ImageError::Corrupt {
            reference: name.to_string(),
            detail: format!("manifest {}: {detail}", manifest_desc.digest),
        })?;
        let Some(config_bytes) = self.read_content(name, &manifest.config.digest).await? else {
            return Ok(None);
        };
        let config = parse_config(&config_bytes).map_err(|detail| ImageError::Corrupt {
            reference: name.to_string(),
            detail: format!("config {}: {detail}", manifest.config.digest),
        })?;
        check_platform(name, &config)?;
        check_layers(name, None, &manifest, &config)?;
        let chain = chain_ids(&config.rootfs.diff_ids);
        let top = chain.last().cloned().unwrap_or_default();
        if !self.snapshot_exists(&top).await? {
            for layer in &manifest.layers {
                if !self.content_exists(&layer.digest).await? {
                    return Ok(None);
                }
            }
            info!(image = %name, "re-unpacking image from the content store");
            let lease = self.create_lease().await?;
            let unpacked = self
                .unpack(name, &lease, &manifest, &config, &manifest.config.digest)
                .await;
            self.delete_lease(&lease).await;
            unpacked?;
        }
        Ok(Some(image_info(name, &target.digest, top, config)))
    }

    /// The manifest a local image record points to, through its index.
    async fn local_manifest(&self, name: &str, target: &Descriptor) -> Result<Option<Desc>> {
        if !is_index(&target.media_type) {
            return Ok(Some(Desc::from(target)));
        }
        let Some(bytes) = self.read_content(name, &target.digest).await? else {
            return Ok(None);
        };
        let index: Document = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
            reference: name.to_string(),
            detail: format!("index {}: {e}", target.digest),
        })?;
        match select_platform(index.manifests.as_deref().unwrap_or_default()) {
            Ok(d) => Ok(Some(d.clone())),
            Err(available) => Err(wrong_platform(name, available)),
        }
    }

    // ----- pulling -----

    async fn pull(&self, parsed: &Reference, name: &str) -> Result<ImageInfo> {
        let started = std::time::Instant::now();
        let (source, root_bytes, root_digest) = self.resolve(parsed, name).await?;
        let registry = source.resolve_registry().to_string();
        let bad = |detail: String| ImageError::BadAnswer {
            reference: name.to_string(),
            registry: registry.clone(),
            detail,
        };
        let root: Document = serde_json::from_slice(&root_bytes)
            .map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
        if root.schema_version != Some(2) {
            return Err(bad(format!(
                "unsupported manifest schemaVersion {:?}",
                root.schema_version
            )));
        }

        // An index: pick this host's manifest and fetch it.
        let (index, manifest_desc, manifest_bytes) = if let Some(entries) = &root.manifests {
            let chosen = select_platform(entries)
                .map_err(|available| wrong_platform(name, available))?
                .clone();
            let (bytes, digest) = self
                .registry_call(name, &source, async {
                    self.client
                        .pull_manifest_raw(
                            &source.clone_with_digest(chosen.digest.clone()),
                            &RegistryAuth::Anonymous,
                            &[MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST],
                        )
                        .await
                })
                .await?;
            if digest != chosen.digest {
                return Err(bad(format!(
                    "manifest {} has digest {digest}",
                    chosen.digest
                )));
            }
            let media_type = root
                .media_type
                .clone()
                .unwrap_or_else(|| MEDIA_OCI_INDEX.to_string());
            let index = Desc {
                media_type,
                digest: root_digest.clone(),
                size: root_bytes.len() as i64,
                ..Desc::default()
            };
            (
                Some((index, root_bytes, chosen.clone())),
                chosen,
                bytes.to_vec(),
            )
        } else {
            let media_type = root
                .media_type
                .clone()
                .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string());
            let desc = Desc {
                media_type,
                digest: root_digest.clone(),
                size: root_bytes.len() as i64,
                ..Desc::default()
            };
            (None, desc, root_bytes)
        };
        let manifest = parse_manifest(&manifest_bytes).map_err(&bad)?;
        if manifest.config.size > MAX_DOCUMENT {
            return Err(bad(format!("config of {} bytes", manifest.config.size)));
        }

        let config_bytes = match self.read_content(name, &manifest.config.digest).await? {
            Some(b) => b,
            None => {
                let mut buf = Vec::new();
                self.registry_call(name, &source, async {
                    self.client
                        .pull_blob(&source, manifest.config.digest.as_str(), &mut buf)
                        .await
                })
                .await?;
                buf
            }
        };
        let config = parse_config(&config_bytes).map_err(|e| bad(format!("config: {e}")))?;
        check_platform(name, &config)?;
        check_layers(name, Some(&registry), &manifest, &config)?;

        let lease = self.create_lease().await?;
        let stored = self
            .store(
                name,
                &source,
                &lease,
                index.as_ref(),
                (&manifest_desc, &manifest_bytes, &manifest),
                &config_bytes,
                &config,
            )
            .await;
        self.delete_lease(&lease).await;
        let top = stored?;
        info!(
            image = %name,
            digest = %root_digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(image_info(name, &root_digest, top, config))
    }

    /// Fetches the reference's root document (index or manifest), from the
    /// mirror first if one is configured. Returns the reference to fetch
    /// the rest from, the bytes and their digest.
    async fn resolve(
        &self,
        parsed: &Reference,
        name: &str,
    ) -> Result<(Reference, Vec<u8>, String)> {
        let mut sources = Vec::new();
        if let Some(mirror) = self.registry.mirrors.get(parsed.registry()) {
            let mut r = parsed.clone();
            r.set_mirror_registry(mirror.clone());
            sources.push(r);
        }
        sources.push(parsed.clone());
        let last = sources.len() - 1;
        for (i, source) in sources.into_iter().enumerate() {
            let fetched = self
                .registry_call(name, &source, async {
                    self.client
                        .pull_manifest_raw(
                            &source,
                            &RegistryAuth::Anonymous,
                            &[
                                MEDIA_OCI_INDEX,
                                MEDIA_DOCKER_LIST,
                                MEDIA_OCI_MANIFEST,
                                MEDIA_DOCKER_MANIFEST,
                            ],
                        )
                        .await
                })
                .await;
            match fetched {
                Ok((bytes, digest)) => return Ok((source, bytes.to_vec(), digest)),
                Err(e) if i < last => {
                    warn!(
                        image = %name,
                        mirror = source.resolve_registry(),
                        error = %crate::error_chain(&e),
                        "mirror failed, trying the registry"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the registry itself is always the last source")
    }

    /// Writes blobs, unpacks, records the image. Returns the top chain ID.
    #[expect(clippy::too_many_arguments, reason = "one pull's pieces, private")]
    async fn store(
        &self,
        name: &str,
        source: &Reference,
        lease: &str,
        index: Option<&(Desc, Vec<u8>, Desc)>,
        (manifest_desc, manifest_bytes, manifest): (&Desc, &[u8], &Manifest),
        config_bytes: &[u8],
        config: &ImageConfig,
    ) -> Result<String> {
        // As ctr writes it: the registry's host name without the port.
        let host = source.registry();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let source_label = (
            format!("containerd.io/distribution.source.{host}"),
            source.repository().to_string(),
        );
        let source_labels = HashMap::from([source_label.clone()]);

        for layer in &manifest.layers {
            if self.content_exists(&layer.digest).await? {
                continue;
            }
            debug!(image = %name, layer = %layer.digest, size = layer.size, "downloading layer");
            let stream = self
                .registry_call(name, source, async {
                    self.client
                        .pull_blob_stream(source, layer.digest.as_str())
                        .await
                })
                .await?;
            self.write_content(name, lease, layer, source_labels.clone(), stream)
                .await?;
        }
        self.write_bytes(
            name,
            lease,
            &manifest.config,
            source_labels.clone(),
            config_bytes,
        )
        .await?;

        let mut labels = HashMap::from([
            source_label.clone(),
            (
                "containerd.io/gc.ref.content.config".to_string(),
                manifest.config.digest.clone(),
            ),
        ]);
        for (i, layer) in manifest.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        self.write_bytes(name, lease, manifest_desc, labels, manifest_bytes)
            .await?;

        let target = match index {
            Some((index_desc, index_bytes, chosen)) => {
                let labels = HashMap::from([
                    source_label,
                    (
                        "containerd.io/gc.ref.content.m.0".to_string(),
                        chosen.digest.clone(),
                    ),
                ]);
                self.write_bytes(name, lease, index_desc, labels, index_bytes)
                    .await?;
                index_desc
            }
            None => manifest_desc,
        };

        let top = self
            .unpack(name, lease, manifest, config, &manifest.config.digest)
            .await?;
        self.put_image(name, target).await?;
        Ok(top)
    }

    /// Creates the image record, or points an existing one at `target`.
    async fn put_image(&self, name: &str, target: &Desc) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target.to_descriptor()),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => images
                .update(self.req(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    None,
                ))
                .await
                .map(|_| ())
                .map_err(|s| containerd("update image", name, s)),
            Err(s) => Err(containerd("create image", name, s)),
        }
    }

    // ----- unpacking -----

    /// Applies the layers missing from the snapshotter, bottom up; labels
    /// the config with the top snapshot. Returns the top chain ID.
    async fn unpack(
        &self,
        name: &str,
        lease: &str,
        manifest: &Manifest,
        config: &ImageConfig,
        config_digest: &str,
    ) -> Result<String> {
        let chain = chain_ids(&config.rootfs.diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let mut content = ContentClient::new(self.channel.clone());
        let mut parent = String::new();
        for ((layer, chain_id), diff_id) in manifest
            .layers
            .iter()
            .zip(&chain)
            .zip(&config.rootfs.diff_ids)
        {
            // An unpacked layer is kept from garbage collection only by the
            // layers above it: when they were removed, it can be collected
            // at any moment, e.g. between this check and the prepare that
            // names it as parent. Under the lease it stays until we are done.
            self.lease_snapshot(lease, chain_id).await?;
            if self.snapshot_exists(chain_id).await? {
                parent = chain_id.clone();
                continue;
            }
            let key = format!("extract-{} {chain_id}", unique());
            let mounts = snapshots
                .prepare(self.req(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::from([(
                            "containerd.io/snapshot.ref".to_string(),
                            chain_id.clone(),
                        )]),
                    },
                    Some(lease),
                ))
                .await
                .map_err(|s| containerd("prepare snapshot", &key, s))?
                .into_inner()
                .mounts;
            let applied = diff
                .apply(self.req(
                    ApplyRequest {
                        diff: Some(layer.to_descriptor()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    None,
                ))
                .await
                .map_err(|s| containerd("apply layer", &layer.digest, s))
                .and_then(|r| {
                    let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                    if &got == diff_id {
                        Ok(())
                    } else {
                        Err(ImageError::Corrupt {
                            reference: name.to_string(),
                            detail: format!(
                                "layer {} unpacks to {got}, config says {diff_id}",
                                layer.digest
                            ),
                        })
                    }
                });
            if let Err(e) = applied {
                self.remove_snapshot(&key).await;
                return Err(e);
            }
            match snapshots
                .commit(self.req(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.to_string(),
                        name: chain_id.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await
            {
                Ok(_) => {}
                // Someone unpacked the same layer meanwhile: theirs will do.
                Err(s) if s.code() == Code::AlreadyExists => self.remove_snapshot(&key).await,
                Err(s) => {
                    self.remove_snapshot(&key).await;
                    return Err(containerd("commit snapshot", chain_id, s));
                }
            }
            // What ctr records once apply has verified the uncompressed digest.
            self.set_label(
                &mut content,
                &layer.digest,
                "containerd.io/uncompressed",
                diff_id,
            )
            .await?;
            debug!(image = %name, layer = %layer.digest, chain_id = %chain_id, "layer unpacked");
            parent = chain_id.clone();
        }
        let top = chain.last().cloned().unwrap_or_default();
        self.set_label(
            &mut content,
            config_digest,
            &format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            &top,
        )
        .await?;
        Ok(top)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_string(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(containerd("stat snapshot", key, s)),
        }
    }

    /// Best effort: an active snapshot left behind is collected with the lease.
    async fn remove_snapshot(&self, key: &str) {
        if let Err(s) = SnapshotsClient::new(self.channel.clone())
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_string(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
        {
            warn!(key, error = %s.message(), "cannot remove snapshot");
        }
    }

    // ----- content store -----

    async fn content_exists(&self, digest: &str) -> Result<bool> {
        match ContentClient::new(self.channel.clone())
            .info(self.req(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(containerd("content info", digest, s)),
        }
    }

    /// A small blob (manifest, config), `None` if absent.
    async fn read_content(&self, name: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let mut stream = match ContentClient::new(self.channel.clone())
            .read(self.req(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(containerd("read content", digest, s)),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    out.extend_from_slice(&m.data);
                    if out.len() as i64 > MAX_DOCUMENT {
                        return Err(ImageError::Corrupt {
                            reference: name.to_string(),
                            detail: format!("{digest} is larger than {MAX_DOCUMENT} bytes"),
                        });
                    }
                }
                Ok(None) => return Ok(Some(out)),
                Err(s) if s.code() == Code::NotFound => return Ok(None),
                Err(s) => return Err(containerd("read content", digest, s)),
            }
        }
    }

    /// Stores `data` as `desc`; if it is already stored, sets `labels` on it.
    async fn write_bytes(
        &self,
        name: &str,
        lease: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
        data: &[u8],
    ) -> Result<()> {
        if self.content_exists(&desc.digest).await? {
            let mut content = ContentClient::new(self.channel.clone());
            for (k, v) in &labels {
                self.set_label(&mut content, &desc.digest, k, v).await?;
            }
            return Ok(());
        }
        let bytes = Bytes::copy_from_slice(data);
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes)]);
        self.write_content(name, lease, desc, labels, stream).await
    }

    /// Streams a blob into the content store (Write: stat, writes, commit
    /// with the expected digest and size, which containerd verifies).
    async fn write_content<S>(
        &self,
        name: &str,
        lease: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
        data: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let ingest = format!("riklet-{}-{}", desc.digest, unique());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let mut client = ContentClient::new(self.channel.clone());
        let err = |s: Status| containerd("write content", &desc.digest, s);
        let closed = || {
            containerd(
                "write content",
                &desc.digest,
                Status::unavailable("stream closed"),
            )
        };
        let _ = tx
            .send(WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: ingest.clone(),
                total: desc.size,
                expected: desc.digest.clone(),
                ..WriteContentRequest::default()
            })
            .await;
        let mut responses = match client
            .write(self.req(tokio_stream::wrappers::ReceiverStream::new(rx), Some(lease)))
            .await
        {
            Ok(r) => r.into_inner(),
            // Written by someone else since we looked.
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(err(s)),
        };
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(closed()),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(err(s)),
        }

        let result = async {
            let mut data = std::pin::pin!(data);
            let mut offset = 0i64;
            let mut buf = Vec::with_capacity(WRITE_CHUNK);
            loop {
                let next = tokio::time::timeout(self.registry.timeout, data.next())
                    .await
                    .map_err(|_| ImageError::Download {
                        reference: name.to_string(),
                        digest: desc.digest.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no data for {:?}", self.registry.timeout),
                        ),
                    })?;
                let last = match next {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        false
                    }
                    Some(Err(source)) => {
                        return Err(ImageError::Download {
                            reference: name.to_string(),
                            digest: desc.digest.clone(),
                            source,
                        });
                    }
                    None => true,
                };
                if !last && buf.len() < WRITE_CHUNK {
                    continue;
                }
                let len = buf.len() as i64;
                let msg = WriteContentRequest {
                    action: if last {
                        WriteAction::Commit
                    } else {
                        WriteAction::Write
                    } as i32,
                    offset,
                    data: std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK)),
                    total: desc.size,
                    expected: desc.digest.clone(),
                    labels: if last { labels.clone() } else { HashMap::new() },
                    ..WriteContentRequest::default()
                };
                tx.send(msg).await.map_err(|_| closed())?;
                offset += len;
                match responses.message().await {
                    Ok(Some(r)) if last => {
                        if r.digest != desc.digest {
                            return Err(ImageError::Corrupt {
                                reference: name.to_string(),
                                detail: format!("{} stored as {}", desc.digest, r.digest),
                            });
                        }
                        return Ok(());
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(closed()),
                    Err(s) if last && s.code() == Code::AlreadyExists => return Ok(()),
                    Err(s) => return Err(err(s)),
                }
            }
        }
        .await;
        drop(tx);
        if result.is_err() {
            let _ = client
                .abort(self.req(AbortRequest { r#ref: ingest }, Some(lease)))
                .await;
        }
        result
    }

    async fn set_label(
        &self,
        content: &mut ContentClient<Channel>,
        digest: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        content
            .update(self.req(
                UpdateContentRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: digest.to_string(),
                        labels: HashMap::from([(key.to_string(), value.to_string())]),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{key}")],
                    }),
                },
                None,
            ))
            .await
            .map(|_| ())
            .map_err(|s| containerd("label content", digest, s))
    }

    // ----- leases and requests -----

    /// A lease that expires by itself: everything written or prepared under
    /// it is safe from garbage collection until [`Self::delete_lease`].
    async fn create_lease(&self) -> Result<String> {
        let id = format!("riklet-pull-{}", unique());
        let expire = chrono::Utc::now()
            + chrono::Duration::from_std(LEASE_EXPIRY).unwrap_or(chrono::Duration::hours(1));
        LeasesClient::new(self.channel.clone())
            .create(self.req(
                CreateLeaseRequest {
                    id: id.clone(),
                    labels: HashMap::from([(
                        "containerd.io/gc.expire".to_string(),
                        expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    )]),
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

    /// Runs one registry request with the configured time limit and turns
    /// its error into an [`ImageError`].
    async fn registry_call<T>(
        &self,
        name: &str,
        source: &Reference,
        call: impl Future<Output = oci_client::errors::Result<T>>,
    ) -> Result<T> {
        let registry = source.resolve_registry().to_string();
        // Two requests may run back to back (the /v2/ probe, then the call).
        let limit = self.registry.timeout * 2;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(registry_error(name, registry, e, self.registry.timeout)),
            Err(_) => Err(ImageError::Timeout {
                reference: name.to_string(),
                registry,
                after: limit,
            }),
        }
    }
}

// ----- documents -----

/// A descriptor as found in manifests and indexes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

impl Desc {
    fn to_descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().unwrap_or_default(),
        }
    }
}

impl From<&Descriptor> for Desc {
    fn from(d: &Descriptor) -> Self {
        Desc {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            ..Desc::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An index or a manifest, told apart by which fields are present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    config: Desc,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn parse_manifest(bytes: &[u8]) -> std::result::Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !valid_digest(&d.digest) {
            return Err(format!("invalid digest {:?}", d.digest));
        }
        if d.size < 0 {
            return Err(format!("negative size for {}", d.digest));
        }
    }
    Ok(m)
}

fn parse_config(bytes: &[u8]) -> std::result::Result<ImageConfig, String> {
    let c: ImageConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if let Some(bad) = c.rootfs.diff_ids.iter().find(|d| !valid_digest(d)) {
        return Err(format!("invalid diff ID {bad:?}"));
    }
    Ok(c)
}

/// Layers containerd can apply, one diff ID each. `registry`: where the
/// documents come from, `None` for containerd's content store.
fn check_layers(
    name: &str,
    registry: Option<&str>,
    manifest: &Manifest,
    config: &ImageConfig,
) -> Result<()> {
    if let Some(layer) = manifest
        .layers
        .iter()
        .find(|l| !LAYER_MEDIA.contains(&l.media_type.as_str()))
    {
        return Err(ImageError::UnsupportedLayer {
            reference: name.to_string(),
            media_type: layer.media_type.clone(),
        });
    }
    if manifest.layers.is_empty() || manifest.layers.len() != config.rootfs.diff_ids.len() {
        let reference = name.to_string();
        let detail = format!(
            "{} layers but {} diff IDs in the config",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        );
        return Err(match registry {
            Some(registry) => ImageError::BadAnswer {
                reference,
                registry: registry.to_string(),
                detail,
            },
            None => ImageError::Corrupt { reference, detail },
        });
    }
    Ok(())
}

fn image_info(name: &str, digest: &str, chain_id: String, config: ImageConfig) -> ImageInfo {
    let run = config.config.unwrap_or_default();
    ImageInfo {
        reference: name.to_string(),
        digest: digest.to_string(),
        chain_id,
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
    }
}

/// Parses with `oci-client`, then holds the repository to the distribution
/// grammar, which the parser does not fully enforce (it takes `UPPER/x`).
fn parse_reference(reference: &str) -> Result<Reference> {
    let invalid = |source| ImageError::InvalidReference {
        reference: reference.to_string(),
        source,
    };
    let parsed: Reference = reference.parse().map_err(invalid)?;
    let repository = parsed.repository();
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(oci_client::ParseError::NameContainsUppercase));
    }
    if !repository.split('/').all(valid_path_component) {
        return Err(invalid(oci_client::ParseError::ReferenceInvalidFormat));
    }
    Ok(parsed)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let mut separator = String::new();
    let mut started = false;
    for c in component.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if started && !separator.is_empty() {
                let ok = matches!(separator.as_str(), "." | "_" | "__")
                    || separator.bytes().all(|b| b == b'-');
                if !ok {
                    return false;
                }
            } else if !separator.is_empty() {
                return false;
            }
            separator.clear();
            started = true;
        } else if matches!(c, '.' | '_' | '-') {
            if !started {
                return false;
            }
            separator.push(c);
        } else {
            return false;
        }
    }
    started && separator.is_empty()
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// The host's architecture as OCI names it (GOARCH).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn host_platform() -> String {
    format!("linux/{}", host_arch())
}

/// The index entry for linux/<host arch>, or the platforms it offers.
fn select_platform(entries: &[Desc]) -> std::result::Result<&Desc, Vec<String>> {
    let arch = host_arch();
    entries
        .iter()
        .find(|e| {
            e.platform.as_ref().is_some_and(|p| {
                p.os == "linux"
                    && p.architecture == arch
                    // arm64 images say v8 or nothing; other variants are not ours.
                    && (arch != "arm64" || p.variant.as_deref().is_none_or(|v| v == "v8"))
            })
        })
        .ok_or_else(|| {
            entries
                .iter()
                .map(|e| match &e.platform {
                    Some(p) => match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    },
                    None => "unknown platform".to_string(),
                })
                .collect()
        })
}

/// An image config for another OS or architecture is refused, whatever
/// the index said.
fn check_platform(name: &str, config: &ImageConfig) -> Result<()> {
    if config.os == "linux" && config.architecture == host_arch() {
        return Ok(());
    }
    Err(wrong_platform(
        name,
        vec![format!("{}/{}", config.os, config.architecture)],
    ))
}

fn wrong_platform(name: &str, available: Vec<String>) -> ImageError {
    ImageError::WrongPlatform {
        reference: name.to_string(),
        wanted: host_platform(),
        available,
    }
}

/// Chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {diff}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// containerd's rule: `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 bytes.
fn valid_namespace(ns: &str) -> bool {
    ns.len() <= 76
        && ns
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{:08x}", rand::random::<u32>())
}

fn containerd(op: &'static str, object: &str, source: Status) -> ImageError {
    ImageError::Containerd {
        op,
        object: object.to_string(),
        source: Box::new(source),
    }
}

fn registry_error(
    name: &str,
    registry: String,
    e: OciDistributionError,
    timeout: Duration,
) -> ImageError {
    let reference = name.to_string();
    let bad = |detail: String| ImageError::BadAnswer {
        reference: reference.clone(),
        registry: registry.clone(),
        detail,
    };
    match &e {
        OciDistributionError::RequestError(re) if re.is_timeout() => ImageError::Timeout {
            reference,
            registry,
            after: timeout,
        },
        OciDistributionError::RequestError(re) if re.is_connect() => ImageError::Unreachable {
            reference,
            registry,
            source: Box::new(e),
        },
        // The connection worked but what came back is not HTTP.
        OciDistributionError::RequestError(re) => bad(crate::error_chain(re)),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            ImageError::NotFound {
                reference,
                registry,
                source: Box::new(e),
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound {
            reference,
            registry,
            source: Box::new(e),
        },
        OciDistributionError::DigestError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_)
        | OciDistributionError::SpecViolationError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::JsonError(_)
        | OciDistributionError::HeaderValueError(_) => bad(e.to_string()),
        _ => ImageError::Registry {
            reference,
            registry,
            source: Box::new(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chain[1], expected);
    }

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

    #[test]
    fn namespaces() {
        assert!(valid_namespace("rik"));
        assert!(valid_namespace("rik-test.1_a"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("a..b"));
        assert!(!valid_namespace("-a"));
        assert!(!valid_namespace("a b"));
    }

    #[test]
    fn pull_policy_parses() {
        assert_eq!("Always".parse::<PullPolicy>(), Ok(PullPolicy::Always));
        assert_eq!(
            "ifnotpresent".parse::<PullPolicy>(),
            Ok(PullPolicy::IfNotPresent)
        );
        assert!("sometimes".parse::<PullPolicy>().is_err());
    }

    #[test]
    fn platform_selection() {
        let entry = |arch: &str| Desc {
            digest: format!("sha256:{}", "c".repeat(64)),
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            ..Desc::default()
        };
        let other = if host_arch() == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        };
        assert!(select_platform(&[entry(other), entry(host_arch())]).is_ok());
        assert_eq!(
            select_platform(&[entry(other)]).unwrap_err(),
            vec![format!("linux/{other}")]
        );
    }
}
