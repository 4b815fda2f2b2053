//! One pull: the registry's documents read and checked, the blobs stored
//! under a lease with the labels that keep them alive, the layers
//! unpacked, the image record created or updated.

use std::collections::HashMap;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{CreateImageRequest, Image, UpdateImageRequest};
use containerd_client::types::Descriptor;
use oci_client::Reference;
use oci_client::manifest::{
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageManifest, OciManifest,
};
use tonic::Code;
use tracing::{debug, info};

use super::documents::{
    PlatformImage, check_layers, descriptor, image_info, parse_root, to_containerd,
};
use super::error::{Result, bad_answer, containerd};
use super::platform::{check_platform, pick};
use super::registry::Resolved;
use super::{ImageInfo, ImageStore};

/// The media type a root document is recorded under: its own, else the
/// OCI one of its kind.
fn recorded_media_type(root: &OciManifest) -> &str {
    match root {
        OciManifest::ImageIndex(index) => index
            .media_type
            .as_deref()
            .unwrap_or(OCI_IMAGE_INDEX_MEDIA_TYPE),
        OciManifest::Image(manifest) => manifest
            .media_type
            .as_deref()
            .unwrap_or(OCI_IMAGE_MEDIA_TYPE),
    }
}

/// The index a reference resolved to, stored beside the manifest chosen
/// from it.
struct FetchedIndex {
    desc: Descriptor,
    bytes: Vec<u8>,
}

impl ImageStore {
    /// Pulls `parsed` (normalised as `name`) whatever containerd has.
    pub(super) async fn pull(&self, parsed: &Reference, name: &str) -> Result<ImageInfo> {
        let started = std::time::Instant::now();
        let resolved = self.resolve(parsed, name).await?;
        let (index, image) = self.fetch_platform_image(name, &resolved).await?;
        let registry = resolved.source.resolve_registry();
        check_layers(name, Some(registry), &image.manifest, &image.config)?;

        let lease = self.create_lease().await?;
        crate::crash::point("pull.after_lease");
        let stored = self
            .store(name, &resolved.source, &lease, index.as_ref(), &image)
            .await;
        self.delete_lease(&lease).await;
        let top = stored?;
        info!(
            image = %name,
            digest = %resolved.digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        Ok(image_info(name, &resolved.digest, top, image.config))
    }

    /// This host's image from the registry, and the index it was chosen
    /// from when the reference names one.
    async fn fetch_platform_image(
        &self,
        name: &str,
        resolved: &Resolved,
    ) -> Result<(Option<FetchedIndex>, PlatformImage)> {
        let source = &resolved.source;
        let registry = source.resolve_registry();
        let root = parse_root(&resolved.bytes).map_err(|e| bad_answer(name, registry, e))?;
        let size = resolved.bytes.len() as i64;
        let desc = descriptor(recorded_media_type(&root), &resolved.digest, size);
        let bytes = resolved.bytes.clone();
        match root {
            OciManifest::ImageIndex(index) => {
                let image = pick(name, &index.manifests, |entry| async move {
                    self.fetch_image(name, source, &entry).await
                })
                .await?;
                Ok((Some(FetchedIndex { desc, bytes }), image))
            }
            OciManifest::Image(manifest) => {
                let image = self
                    .with_config(name, source, desc, bytes, manifest)
                    .await?;
                check_platform(name, &image.config)?;
                Ok((None, image))
            }
        }
    }

    /// Writes blobs, unpacks, records the image. Returns the top chain ID.
    async fn store(
        &self,
        name: &str,
        source: &Reference,
        lease: &str,
        index: Option<&FetchedIndex>,
        image: &PlatformImage,
    ) -> Result<String> {
        // As ctr writes it: the registry's host name without the port.
        let host = source.registry();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let source_label = (
            format!("containerd.io/distribution.source.{host}"),
            source.repository().to_string(),
        );
        let manifest = &image.manifest;
        self.write_layers(name, source, lease, manifest, &source_label)
            .await?;
        crate::crash::point("pull.after_download");
        let config = to_containerd(&manifest.config);
        let labels = HashMap::from([source_label.clone()]);
        self.write_bytes(name, lease, &config, labels, &image.config_bytes)
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
        let manifest_desc = &image.manifest_desc;
        self.write_bytes(name, lease, manifest_desc, labels, &image.manifest_bytes)
            .await?;

        let target = match index {
            Some(index) => {
                let labels = HashMap::from([
                    source_label,
                    (
                        "containerd.io/gc.ref.content.m.0".to_string(),
                        manifest_desc.digest.clone(),
                    ),
                ]);
                self.write_bytes(name, lease, &index.desc, labels, &index.bytes)
                    .await?;
                &index.desc
            }
            None => manifest_desc,
        };

        crate::crash::point("pull.before_unpack");
        let top = self.unpack(name, lease, manifest, &image.config).await?;
        crate::crash::point("pull.before_image_record");
        self.put_image(name, target).await?;
        Ok(top)
    }

    /// Downloads the layers the content store lacks, streaming each in.
    async fn write_layers(
        &self,
        name: &str,
        source: &Reference,
        lease: &str,
        manifest: &OciImageManifest,
        source_label: &(String, String),
    ) -> Result<()> {
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
            let labels = HashMap::from([source_label.clone()]);
            self.write_content(name, lease, &to_containerd(layer), labels, stream)
                .await?;
        }
        Ok(())
    }

    /// Creates the image record, or points an existing one at `target`.
    async fn put_image(&self, name: &str, target: &Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target.clone()),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match images.create(self.req(create, None)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                images
                    .update(self.req(update, None))
                    .await
                    .map(|_| ())
                    .map_err(|s| containerd("update image", name, s))
            }
            Err(s) => Err(containerd("create image", name, s)),
        }
    }
}
