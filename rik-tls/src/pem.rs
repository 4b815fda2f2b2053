//! PEM text to rustls' certificate and key types.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Every certificate in `pem` (at least one); `source_name` names it in errors.
pub fn certificates(
    pem: &str,
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            source_name: source_name.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::MissingPem {
            what: "certificate",
            source_name: source_name.to_string(),
        });
    }
    Ok(certs)
}

/// The private key in `pem`.
pub fn private_key(pem: &str, source_name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::MissingPem {
            what: "private key",
            source_name: source_name.to_string(),
        },
        source => TlsError::BadPem {
            source_name: source_name.to_string(),
            source,
        },
    })
}

/// A certificate, its chain and its key, as a server or a client presents them.
#[derive(Debug)]
pub struct KeyedChain {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl KeyedChain {
    /// From PEM texts; `source_name` names them in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, source_name: &str) -> Result<Self, TlsError> {
        Ok(Self {
            chain: certificates(cert_pem, source_name)?,
            key: private_key(key_pem, source_name)?,
        })
    }
}

impl Clone for KeyedChain {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}
