//! What containerd already has: an image record whose documents are in
//! the content store, unpacked again if its snapshots went away. Images
//! pulled by the riklet and images imported with `ctr images import` read
//! the same way.

use containerd_client::services::v1::GetImageRequest;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::types::Descriptor;
use tonic::Code;
use tracing::info;

use super::documents::{
    PlatformImage, chain_ids, check_layers, descriptor, image_info, is_index, parse_config,
    parse_index, parse_manifest,
};
use super::error::{ImageError, Result, containerd};
use super::platform::{check_platform, pick};
use super::{ImageInfo, ImageStore};

impl ImageStore {
    /// The image if containerd has its record, documents and (after a
    /// re-unpack if needed) its snapshot chain; `None` if anything is missing.
    pub(super) async fn local(&self, name: &str) -> Result<Option<ImageInfo>> {
        let Some(target) = self.image_target(name).await? else {
            return Ok(None);
        };
        let Some(image) = self.local_image(name, &target).await? else {
            return Ok(None);
        };
        check_layers(name, None, &image.manifest, &image.config)?;
        let chain = chain_ids(&image.config.rootfs.diff_ids);
        let top = chain.last().cloned().unwrap_or_default();
        if !self.snapshot_exists(&top).await? && !self.unpack_again(name, &image).await? {
            return Ok(None);
        }
        Ok(Some(image_info(name, &target.digest, top, image.config)))
    }

    /// What the image record `name` points to, `None` without a record.
    async fn image_target(&self, name: &str) -> Result<Option<Descriptor>> {
        let request = GetImageRequest {
            name: name.to_string(),
        };
        match ImagesClient::new(self.channel.clone())
            .get(self.req(request, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(containerd("get image", name, s)),
        }
    }

    /// This host's image under a record's target, through its index if it
    /// is one.
    async fn local_image(&self, name: &str, target: &Descriptor) -> Result<Option<PlatformImage>> {
        if !is_index(&target.media_type) {
            let image = self.stored_image(name, target).await?;
            if let Some(image) = &image {
                check_platform(name, &image.config)?;
            }
            return Ok(image);
        }
        let Some(bytes) = self.read_content(name, &target.digest).await? else {
            return Ok(None);
        };
        let index = parse_index(&bytes).map_err(|source| ImageError::CorruptDocument {
            reference: name.to_string(),
            document: format!("index {}", target.digest),
            source,
        })?;
        pick(name, &index.manifests, |entry| async move {
            let manifest = descriptor(&entry.media_type, &entry.digest, entry.size);
            self.stored_image(name, &manifest).await
        })
        .await
    }

    /// A manifest and its config from the content store; `None` if either
    /// is missing.
    async fn stored_image(
        &self,
        name: &str,
        manifest: &Descriptor,
    ) -> Result<Option<PlatformImage>> {
        let corrupt = |document: String, source| ImageError::CorruptDocument {
            reference: name.to_string(),
            document,
            source,
        };
        let Some(manifest_bytes) = self.read_content(name, &manifest.digest).await? else {
            return Ok(None);
        };
        let parsed = parse_manifest(&manifest_bytes)
            .map_err(|e| corrupt(format!("manifest {}", manifest.digest), e))?;
        let config_digest = &parsed.config.digest;
        let Some(config_bytes) = self.read_content(name, config_digest).await? else {
            return Ok(None);
        };
        let config = parse_config(&config_bytes)
            .map_err(|e| corrupt(format!("config {config_digest}"), e))?;
        Ok(Some(PlatformImage {
            manifest_desc: manifest.clone(),
            manifest_bytes,
            manifest: parsed,
            config_bytes,
            config,
        }))
    }

    /// Unpacks an image whose snapshots were removed, if the content store
    /// still has all its layers (`false` if not).
    async fn unpack_again(&self, name: &str, image: &PlatformImage) -> Result<bool> {
        for layer in &image.manifest.layers {
            if !self.content_exists(&layer.digest).await? {
                return Ok(false);
            }
        }
        info!(image = %name, "re-unpacking image from the content store");
        let lease = self.create_lease().await?;
        let unpacked = self
            .unpack(name, &lease, &image.manifest, &image.config)
            .await;
        self.delete_lease(&lease).await;
        unpacked.map(|_| true)
    }
}
