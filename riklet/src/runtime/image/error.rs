//! Why an image could not be made available, and how registry and
//! containerd failures become an [`ImageError`].

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use tonic::Status;

use super::documents::DocumentError;

/// Why an image could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse as `[registry/]repository[:tag][@digest]`.
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: ReferenceError,
    },
    /// A containerd namespace must be letters and digits separated by `.`, `_`, `-`.
    #[error("invalid containerd namespace {0:?}")]
    InvalidNamespace(String),
    /// [`Never`](proto::manifest::ImagePullPolicy::Never) and containerd does not have the image.
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
    #[error("registry {registry} gave an invalid answer for {reference}")]
    BadAnswer {
        reference: String,
        registry: String,
        #[source]
        source: InvalidAnswer,
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
    /// A document containerd holds for the image (index, manifest, config)
    /// does not read as one.
    #[error("image {reference}: {document}")]
    CorruptDocument {
        reference: String,
        /// Which document: `manifest sha256:…`.
        document: String,
        #[source]
        source: DocumentError,
    },
    /// What containerd holds for the image does not add up (unpacked layer
    /// digest differs from the config's diff ID, oversized document…).
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

/// Result alias of the image store.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Why a reference was refused: the distribution grammar (shared with the
/// manifest validation), or `oci-client`'s parser.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Grammar(#[from] proto::manifest::ImageReferenceError),
    #[error(transparent)]
    Parse(#[from] oci_client::ParseError),
}

/// What is wrong with a registry's answer.
#[derive(Debug, thiserror::Error)]
pub enum InvalidAnswer {
    /// Not HTTP, a digest that does not match, a document `oci-client`
    /// itself refuses.
    #[error(transparent)]
    Protocol(Box<OciDistributionError>),
    /// A document that is not the index, manifest or config it should be.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// A failed containerd call on `object`.
pub(super) fn containerd(op: &'static str, object: &str, source: Status) -> ImageError {
    ImageError::Containerd {
        op,
        object: object.to_string(),
        source: Box::new(source),
    }
}

/// Whether a containerd lookup of `object` found it: `NotFound` is an
/// answer (`false`), any other failure an error.
pub(super) fn found<T>(
    answer: std::result::Result<T, Status>,
    op: &'static str,
    object: &str,
) -> Result<bool> {
    match answer {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(containerd(op, object, s)),
    }
}

/// A registry's answer that is not what the image needs.
pub(super) fn bad_answer(
    name: &str,
    registry: &str,
    source: impl Into<InvalidAnswer>,
) -> ImageError {
    ImageError::BadAnswer {
        reference: name.to_string(),
        registry: registry.to_string(),
        source: source.into(),
    }
}

/// Sorts an `oci-client` failure into what the caller can act on: the
/// registry is away, slow, lacks the image, refuses, or answered nonsense.
pub(super) fn registry_error(
    name: &str,
    registry: String,
    e: OciDistributionError,
    timeout: Duration,
) -> ImageError {
    let reference = name.to_string();
    let source = Box::new(e);
    match &*source {
        OciDistributionError::RequestError(re) if re.is_timeout() => ImageError::Timeout {
            reference,
            registry,
            after: timeout,
        },
        OciDistributionError::RequestError(re) if re.is_connect() => ImageError::Unreachable {
            reference,
            registry,
            source,
        },
        e if is_not_found(e) => ImageError::NotFound {
            reference,
            registry,
            source,
        },
        // The connection worked but what came back is not HTTP, or not a
        // document.
        OciDistributionError::RequestError(_)
        | OciDistributionError::DigestError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_)
        | OciDistributionError::SpecViolationError(_)
        | OciDistributionError::UnsupportedMediaTypeError(_)
        | OciDistributionError::UnsupportedSchemaVersionError(_)
        | OciDistributionError::JsonError(_)
        | OciDistributionError::HeaderValueError(_) => ImageError::BadAnswer {
            reference,
            registry,
            source: InvalidAnswer::Protocol(source),
        },
        _ => ImageError::Registry {
            reference,
            registry,
            source,
        },
    }
}

/// 404, or a distribution error code saying the name, tag or blob is unknown.
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code: 404, .. } => true,
        _ => false,
    }
}
