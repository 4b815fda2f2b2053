//! What a certificate says about its holder, and the CA hash a joining node
//! pins.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

/// The organisation (O) of a node's certificate; its CN is the node name.
pub const NODES_ORG: &str = "rik:nodes";
/// The organisation of the `rik` admin certificate.
pub const ADMINS_ORG: &str = "rik:admins";
/// The organisation of the scheduler's own certificates (the node API
/// accepts only this one).
pub const SCHEDULER_ORG: &str = "rik:scheduler";
/// The common name of the scheduler's certificates.
pub const SCHEDULER_CN: &str = "rik-scheduler";

/// Who holds a certificate of the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A riklet: it may register as, and report for, this node only.
    Node(String),
    /// `rik`: the whole `rik.v1.Rik` API.
    Admin,
    /// The scheduler, a client of the node API.
    Scheduler,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Node(name) => write!(f, "node {name:?}"),
            Role::Admin => f.write_str("admin"),
            Role::Scheduler => f.write_str("scheduler"),
        }
    }
}

impl Role {
    /// The role a certificate's subject names (`O` marker, `CN`).
    pub fn of(cert: &CertificateDer<'_>) -> Result<Role, TlsError> {
        let (_, cert) =
            X509Certificate::from_der(cert).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let org = first(&mut subject.iter_organization());
        let cn = first(&mut subject.iter_common_name());
        match (org.as_deref(), cn) {
            (Some(NODES_ORG), Some(name)) if !name.is_empty() => Ok(Role::Node(name)),
            (Some(ADMINS_ORG), _) => Ok(Role::Admin),
            (Some(SCHEDULER_ORG), Some(cn)) if cn == SCHEDULER_CN => Ok(Role::Scheduler),
            (org, _) => Err(TlsError::BadCertificate(format!(
                "no rik role in its subject (organisation {org:?})"
            ))),
        }
    }
}

/// `sha256:<hex>` of a CA certificate's SubjectPublicKeyInfo, as kubeadm's
/// `--discovery-token-ca-cert-hash`: it names the CA's key, not one
/// certificate of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaHash([u8; 32]);

impl CaHash {
    /// The hash of `cert`'s public key.
    pub fn of(cert: &CertificateDer<'_>) -> Result<CaHash, TlsError> {
        let (_, cert) =
            X509Certificate::from_der(cert).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        Ok(CaHash(Sha256::digest(cert.public_key().raw).into()))
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl FromStr for CaHash {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TlsError::BadCaHash(s.to_string());
        let digits = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| bad())?;
        Ok(CaHash(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_hash_parses_its_own_form_only() {
        let text = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(text.parse::<CaHash>().unwrap().to_string(), text);
        for bad in [
            "",
            "sha256:",
            "ab".repeat(32).as_str(),
            "sha1:abcd",
            "sha256:zz",
        ] {
            let err = bad.parse::<CaHash>().unwrap_err().to_string();
            assert!(err.contains("expected sha256:"), "{bad}: {err}");
        }
    }
}
