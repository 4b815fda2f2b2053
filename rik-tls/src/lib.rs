//! The mTLS that `rik`, `rik-scheduler` and the riklets share.
//!
//! Every certificate of a cluster is signed by the scheduler's CA and says
//! what its holder is in its subject: the organisation is a role marker
//! ([`Role`]), the common name a node's name. Servers read the peer's role
//! from the certificate the handshake verified ([`Peer`]); clients connect
//! through [`ClientTls`], whose configuration can be swapped (a renewed
//! certificate is used by the next connection) or pinned to a CA hash (a
//! node joining, kubeadm's `--discovery-token-ca-cert-hash`).
//!
//! Plaintext is served next to TLS on the same port ([`server`]): only to
//! loopback peers, unless the operator said `--insecure`.

pub mod client;
pub mod identity;
pub mod pem;
pub mod server;

pub use client::ClientTls;
pub use identity::{CaHash, Role};
pub use server::{Peer, ServerTls};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM {what} in {source_name}")]
    MissingPem {
        what: &'static str,
        source_name: String,
    },
    #[error("bad PEM in {source_name}")]
    BadPem {
        source_name: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("bad CA hash {0:?}: expected sha256:<64 hex digits>")]
    BadCaHash(String),
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
    #[error("TLS verifier could not be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("bad address {0:?}")]
    BadAddress(String),
}

/// The crypto provider of every TLS configuration (aws-lc-rs, as the
/// image pulls and the log shipper use).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
