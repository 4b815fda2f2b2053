//! The node's key, certificate and CA in `<state_dir>/tls/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rik_tls::Role;
use rik_tls::pem::{KeyedChain, certificates};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

const KEY: &str = "node.key";
const CERT: &str = "node.crt";
const CA: &str = "ca.crt";

/// A node certificate, its key and the CA, in PEM.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl Stored {
    /// The CA and the identity (certificate then CA as the chain).
    pub fn material(&self) -> Result<(Vec<CertificateDer<'static>>, KeyedChain), TlsError> {
        let ca = certificates(&self.ca_pem, "the stored CA")?;
        let chain = format!("{}{}", self.cert_pem, self.ca_pem);
        Ok((
            ca,
            KeyedChain::from_pem(&chain, &self.key_pem, "the node certificate")?,
        ))
    }

    /// The node the certificate names.
    pub fn node(&self) -> Result<String, TlsError> {
        match Role::of(&self.leaf()?)? {
            Role::Node(name) => Ok(name),
            other => Err(rik_tls::TlsError::BadCertificate(format!(
                "a {other} certificate, not a node's"
            ))
            .into()),
        }
    }

    /// When the certificate starts and stops being valid.
    pub fn validity(&self) -> Result<(SystemTime, SystemTime), TlsError> {
        let leaf = self.leaf()?;
        let (_, cert) = X509Certificate::from_der(&leaf)
            .map_err(|e| rik_tls::TlsError::BadCertificate(e.to_string()))?;
        let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs());
        let v = cert.validity();
        Ok((at(v.not_before.timestamp()), at(v.not_after.timestamp())))
    }

    fn leaf(&self) -> Result<CertificateDer<'static>, TlsError> {
        let mut certs = certificates(&self.cert_pem, "the node certificate")?;
        Ok(certs.swap_remove(0))
    }
}

/// The stored certificate, or `None` if the node has not joined.
pub(crate) fn load(dir: &Path) -> Result<Option<Stored>, TlsError> {
    let read = |name: &str| -> Result<Option<String>, TlsError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Io {
                what: "read",
                path,
                source,
            }),
        }
    };
    match (read(KEY)?, read(CERT)?, read(CA)?) {
        (Some(key_pem), Some(cert_pem), Some(ca_pem)) => Ok(Some(Stored {
            key_pem,
            cert_pem,
            ca_pem,
        })),
        _ => Ok(None),
    }
}

/// Stores `stored`: the key (mode 0600) before the certificate, so a crash
/// never leaves a certificate with another key.
pub(crate) fn save(dir: &Path, stored: &Stored) -> Result<(), TlsError> {
    let io = |what, path: PathBuf| move |source| TlsError::Io { what, path, source };
    std::fs::create_dir_all(dir).map_err(io("create", dir.to_path_buf()))?;
    write_private(&dir.join(KEY), &stored.key_pem).map_err(io("write", dir.join(KEY)))?;
    crate::fsutil::write_atomic(&dir.join(CA), stored.ca_pem.as_bytes())
        .map_err(io("write", dir.join(CA)))?;
    crate::fsutil::write_atomic(&dir.join(CERT), stored.cert_pem.as_bytes())
        .map_err(io("write", dir.join(CERT)))?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))
}
