//! The image documents (index, manifest, config) as `oci-client` types,
//! read from a registry's answer or containerd's content store and held to
//! what an unpack needs: sha256 digests, layers containerd can apply, one
//! diff ID per layer.
//!
//! OCI and Docker schema 2 documents share one shape, so one set of types
//! reads both (a Docker manifest list is an index).

use std::collections::HashMap;

use containerd_client::types::Descriptor;
use oci_client::config::ConfigFile;
use oci_client::manifest::{
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE,
    IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE, IMAGE_LAYER_NONDISTRIBUTABLE_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest, Versioned,
};
use sha2::{Digest as _, Sha256};

use super::ImageInfo;
use super::error::{ImageError, Result, bad_answer};

/// Media types of an index: what a registry is asked for first.
pub(super) const INDEX_MEDIA: &[&str] =
    &[OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];
/// Media types of an image manifest.
pub(super) const MANIFEST_MEDIA: &[&str] = &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE];
/// Layer media types containerd 1.6's diff service applies.
const LAYER_MEDIA: &[&str] = &[
    IMAGE_LAYER_MEDIA_TYPE,
    IMAGE_LAYER_GZIP_MEDIA_TYPE,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    IMAGE_LAYER_NONDISTRIBUTABLE_MEDIA_TYPE,
    IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE,
    IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// Largest manifest, index or config accepted (they are JSON documents of a
/// few KB; anything this big is not one).
pub(super) const MAX_DOCUMENT: i64 = 8 << 20;

/// What is wrong with an image document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("manifest is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("unsupported manifest schemaVersion {0}")]
    SchemaVersion(i32),
    #[error("not an image index")]
    NotIndex(#[source] serde_json::Error),
    #[error("not a manifest")]
    NotManifest(#[source] serde_json::Error),
    #[error("not an image config")]
    NotConfig(#[source] serde_json::Error),
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("negative size for {0}")]
    NegativeSize(String),
    #[error("invalid diff ID {0:?}")]
    InvalidDiffId(String),
    /// Each layer unpacks to the diff ID at its position: counts must agree.
    #[error("{layers} layers but {diff_ids} diff IDs in the config")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("config of {0} bytes")]
    ConfigTooLarge(i64),
    /// The registry served another manifest than the index entry names.
    #[error("manifest {expected} has digest {got}")]
    WrongDigest { expected: String, got: String },
}

/// One platform's image: a manifest and its config, with their bytes as
/// stored.
pub(super) struct PlatformImage {
    /// The manifest's descriptor, as an index or the image record names it.
    pub manifest_desc: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub manifest: OciImageManifest,
    pub config_bytes: Vec<u8>,
    pub config: ConfigFile,
}

/// The document a reference resolves to: an index or a manifest, told
/// apart by its media type (by its fields when it names none).
pub(super) fn parse_root(bytes: &[u8]) -> std::result::Result<OciManifest, DocumentError> {
    let versioned: Versioned = serde_json::from_slice(bytes).map_err(DocumentError::NotJson)?;
    if versioned.schema_version != 2 {
        return Err(DocumentError::SchemaVersion(versioned.schema_version));
    }
    match versioned.media_type.as_deref() {
        Some(t) if is_index(t) => Ok(OciManifest::ImageIndex(parse_index(bytes)?)),
        Some(_) => Ok(OciManifest::Image(parse_manifest(bytes)?)),
        None => match serde_json::from_slice(bytes).map_err(DocumentError::NotManifest)? {
            OciManifest::Image(m) => Ok(OciManifest::Image(check_manifest(m)?)),
            index => Ok(index),
        },
    }
}

pub(super) fn parse_index(bytes: &[u8]) -> std::result::Result<OciImageIndex, DocumentError> {
    serde_json::from_slice(bytes).map_err(DocumentError::NotIndex)
}

pub(super) fn parse_manifest(bytes: &[u8]) -> std::result::Result<OciImageManifest, DocumentError> {
    check_manifest(serde_json::from_slice(bytes).map_err(DocumentError::NotManifest)?)
}

/// Digests we can address blobs by, sizes we can write.
fn check_manifest(m: OciImageManifest) -> std::result::Result<OciImageManifest, DocumentError> {
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !valid_digest(&d.digest) {
            return Err(DocumentError::InvalidDigest(d.digest.clone()));
        }
        if d.size < 0 {
            return Err(DocumentError::NegativeSize(d.digest.clone()));
        }
    }
    Ok(m)
}

pub(super) fn parse_config(bytes: &[u8]) -> std::result::Result<ConfigFile, DocumentError> {
    let c: ConfigFile = serde_json::from_slice(bytes).map_err(DocumentError::NotConfig)?;
    if let Some(bad) = c.rootfs.diff_ids.iter().find(|d| !valid_digest(d)) {
        return Err(DocumentError::InvalidDiffId(bad.clone()));
    }
    Ok(c)
}

/// Where the documents of a check come from: the registry (`Some`), or
/// containerd's content store (`None`), which decides the error.
pub(super) fn check_layers(
    name: &str,
    registry: Option<&str>,
    manifest: &OciImageManifest,
    config: &ConfigFile,
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
    let (layers, diff_ids) = (manifest.layers.len(), config.rootfs.diff_ids.len());
    if layers != 0 && layers == diff_ids {
        return Ok(());
    }
    let source = DocumentError::LayerCount { layers, diff_ids };
    Err(match registry {
        Some(registry) => bad_answer(name, registry, source),
        None => ImageError::CorruptDocument {
            reference: name.to_string(),
            document: format!("config {}", manifest.config.digest),
            source,
        },
    })
}

/// The description of a ready image, from its config.
pub(super) fn image_info(
    name: &str,
    digest: &str,
    chain_id: String,
    config: ConfigFile,
) -> ImageInfo {
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

pub(super) fn is_index(media_type: &str) -> bool {
    INDEX_MEDIA.contains(&media_type)
}

/// A descriptor as containerd's API takes it.
pub(super) fn descriptor(media_type: &str, digest: &str, size: i64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size,
        annotations: HashMap::new(),
    }
}

/// A manifest's config or layer descriptor as containerd's API takes it.
pub(super) fn to_containerd(d: &OciDescriptor) -> Descriptor {
    Descriptor {
        annotations: d
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..descriptor(&d.media_type, &d.digest, d.size)
    }
}

/// Chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
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
    fn docker_schema2_documents_read() {
        let digest = |c: &str| format!("sha256:{}", c.repeat(64));
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST_LIST_MEDIA_TYPE,
            "manifests": [{
                "mediaType": IMAGE_MANIFEST_MEDIA_TYPE,
                "digest": digest("a"),
                "size": 10,
                "platform": { "architecture": "amd64", "os": "linux" },
            }],
        });
        assert!(matches!(
            parse_root(list.to_string().as_bytes()),
            Ok(OciManifest::ImageIndex(i)) if i.manifests.len() == 1
        ));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": digest("b"),
                "size": 5,
            },
            "layers": [{
                "mediaType": IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE,
                "digest": digest("c"),
                "size": 7,
            }],
        });
        assert!(matches!(
            parse_root(manifest.to_string().as_bytes()),
            Ok(OciManifest::Image(m)) if m.layers.len() == 1
        ));
        // No media type: an index by its fields.
        let bare = serde_json::json!({ "schemaVersion": 2, "manifests": [] });
        assert!(matches!(
            parse_root(bare.to_string().as_bytes()),
            Ok(OciManifest::ImageIndex(_))
        ));
        let v1 = serde_json::json!({ "schemaVersion": 1, "name": "x" });
        assert!(matches!(
            parse_root(v1.to_string().as_bytes()),
            Err(DocumentError::SchemaVersion(1))
        ));
    }
}
