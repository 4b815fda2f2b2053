//! Registry side of a pull: resolving a reference (mirror first), fetching
//! a platform's manifest and config, each request under a time limit so
//! that a dead or babbling registry is an error, never a hang.

use containerd_client::types::Descriptor;
use oci_client::Reference;
use oci_client::manifest::{ImageIndexEntry, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use tracing::warn;

use super::ImageStore;
use super::documents::{
    DocumentError, INDEX_MEDIA, MANIFEST_MEDIA, MAX_DOCUMENT, PlatformImage, descriptor,
    parse_config, parse_manifest,
};
use super::error::{ImageError, Result, bad_answer, registry_error};

/// A reference's root document (index or manifest) as a registry served it.
pub(super) struct Resolved {
    /// The reference to fetch the rest from: the mirror's if it answered.
    pub source: Reference,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl ImageStore {
    /// Fetches the reference's root document, from the mirror first if one
    /// is configured.
    pub(super) async fn resolve(&self, parsed: &Reference, name: &str) -> Result<Resolved> {
        let mut sources = Vec::new();
        if let Some(mirror) = self.registry.mirrors.get(parsed.registry()) {
            let mut r = parsed.clone();
            r.set_mirror_registry(mirror.clone());
            sources.push(r);
        }
        let origin = parsed.clone();
        let accepted: Vec<&str> = INDEX_MEDIA.iter().chain(MANIFEST_MEDIA).copied().collect();
        for source in sources {
            match self.fetch_root(name, &source, &accepted).await {
                Ok(resolved) => return Ok(resolved),
                Err(e) => warn!(
                    image = %name,
                    mirror = source.resolve_registry(),
                    error = %crate::error_chain(&e),
                    "mirror failed, trying the registry"
                ),
            }
        }
        self.fetch_root(name, &origin, &accepted).await
    }

    async fn fetch_root(
        &self,
        name: &str,
        source: &Reference,
        accepted: &[&str],
    ) -> Result<Resolved> {
        let (bytes, digest) = self
            .registry_call(name, source, async {
                self.client
                    .pull_manifest_raw(source, &RegistryAuth::Anonymous, accepted)
                    .await
            })
            .await?;
        Ok(Resolved {
            source: source.clone(),
            bytes: bytes.to_vec(),
            digest,
        })
    }

    /// The image an index entry names: its manifest (which must have the
    /// entry's digest) and its config.
    pub(super) async fn fetch_image(
        &self,
        name: &str,
        source: &Reference,
        entry: &ImageIndexEntry,
    ) -> Result<PlatformImage> {
        let registry = source.resolve_registry();
        let (bytes, digest) = self
            .registry_call(name, source, async {
                self.client
                    .pull_manifest_raw(
                        &source.clone_with_digest(entry.digest.clone()),
                        &RegistryAuth::Anonymous,
                        MANIFEST_MEDIA,
                    )
                    .await
            })
            .await?;
        if digest != entry.digest {
            let source = DocumentError::WrongDigest {
                expected: entry.digest.clone(),
                got: digest,
            };
            return Err(bad_answer(name, registry, source));
        }
        let manifest = parse_manifest(&bytes).map_err(|e| bad_answer(name, registry, e))?;
        let desc = descriptor(&entry.media_type, &entry.digest, entry.size);
        self.with_config(name, source, desc, bytes.to_vec(), manifest)
            .await
    }

    /// Completes a manifest with its config, from containerd's content
    /// store if it is there, else from the registry.
    pub(super) async fn with_config(
        &self,
        name: &str,
        source: &Reference,
        manifest_desc: Descriptor,
        manifest_bytes: Vec<u8>,
        manifest: OciImageManifest,
    ) -> Result<PlatformImage> {
        let registry = source.resolve_registry();
        let config_desc = &manifest.config;
        if config_desc.size > MAX_DOCUMENT {
            let source = DocumentError::ConfigTooLarge(config_desc.size);
            return Err(bad_answer(name, registry, source));
        }
        let config_bytes = match self.read_content(name, &config_desc.digest).await? {
            Some(b) => b,
            None => {
                let mut buf = Vec::new();
                self.registry_call(name, source, async {
                    self.client
                        .pull_blob(source, config_desc.digest.as_str(), &mut buf)
                        .await
                })
                .await?;
                buf
            }
        };
        let config = parse_config(&config_bytes).map_err(|e| bad_answer(name, registry, e))?;
        Ok(PlatformImage {
            manifest_desc,
            manifest_bytes,
            manifest,
            config_bytes,
            config,
        })
    }

    /// Runs one registry request with the configured time limit and turns
    /// its error into an [`ImageError`].
    pub(super) async fn registry_call<T>(
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
