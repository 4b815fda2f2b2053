//! The cluster's PKI: the CA (`<state_dir>/pki/ca.key`, mode 0600, and
//! `ca.crt`), made at the first start, the join tokens ([`tokens`]) and
//! the certificates it signs, each marked with its holder's role
//! ([`rik_tls::Role`]):
//!
//! - a node's, for a CSR that came with a join token or with the node's
//!   current certificate (renewal): CN and DNS SAN = the node name, client
//!   and server use (it also serves the node API);
//! - the scheduler's server certificate (made at each start) and client
//!   certificate for the node API (CN `rik-scheduler`);
//! - the admin certificate of `rik`.
//!
//! Keys are ECDSA P-256.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rik_tls::identity::{ADMINS_ORG, NODES_ORG, SCHEDULER_CN, SCHEDULER_ORG};
use rik_tls::pem::KeyedChain;
use rik_tls::{CaHash, TlsError};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

mod files;
pub mod tokens;

pub use tokens::{TokenError, TokenStore};

use files::{read_optional, write_private};

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of the certificates the CA signs (`--cert-lifetime`).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Signed certificates start a little in the past, as clocks differ: a
/// tenth of their lifetime, at most a minute (renewal at 2/3 of the
/// validity must stay ahead of now for a short lifetime).
const MAX_BACKDATE: Duration = Duration::from_secs(60);

/// Why the PKI failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad token file")]
    Json(#[source] serde_json::Error),
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("bad CA in {dir}")]
    BadCa {
        dir: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("certificate request refused: {0}")]
    BadRequest(String),
}

/// The CA and what it signs.
#[derive(Debug)]
pub struct Pki {
    ca_cert_pem: String,
    ca_key: KeyPair,
    dir: PathBuf,
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    /// Opens the CA in `<state_dir>/pki`, making it on first use.
    pub fn open(state_dir: &Path) -> Result<Pki, PkiError> {
        let dir = state_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        // `token create` or `admin-cert` may run while the scheduler
        // starts: one of them makes the CA, the others read it.
        let lock_path = dir.join("lock");
        let _lock = std::fs::File::create(&lock_path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|source| PkiError::Io {
                what: "lock",
                path: lock_path,
                source,
            })?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        match (read_optional(&key_path)?, read_optional(&cert_path)?) {
            (Some(key), Some(cert)) => {
                let bad = |source| PkiError::BadCa {
                    dir: dir.clone(),
                    source,
                };
                let ca_key = KeyPair::from_pem(&key).map_err(bad)?;
                // Checks that the certificate parses.
                Issuer::from_ca_cert_pem(&cert, &ca_key).map_err(bad)?;
                Ok(Pki {
                    ca_cert_pem: cert,
                    ca_key,
                    dir,
                })
            }
            _ => {
                let ca_key = KeyPair::generate()?;
                let mut params = CertificateParams::default();
                // A name of its own: a certificate of another cluster's CA
                // is then refused as of an unknown CA, not as a bad
                // signature of a CA of the same name.
                let id: u32 = rand::random();
                params.distinguished_name = name(&format!("rik-cluster-ca-{id:08x}"), None);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                validity(&mut params, CA_LIFETIME);
                let cert = params.self_signed(&ca_key)?;
                write_private(&key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
                write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
                tracing::info!(dir = %dir.display(), "cluster CA created");
                Ok(Pki {
                    ca_cert_pem: cert.pem(),
                    ca_key,
                    dir,
                })
            }
        }
    }

    /// The join tokens kept next to the CA.
    pub fn tokens(&self) -> TokenStore {
        TokenStore::new(self.dir.join("tokens.json"))
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        Ok(rik_tls::pem::certificates(
            &self.ca_cert_pem,
            "the CA certificate",
        )?)
    }

    /// The hash a joining node pins (`--ca-hash`).
    pub fn ca_hash(&self) -> Result<CaHash, PkiError> {
        let ca = self.ca_certs()?;
        Ok(CaHash::of(&ca[0])?)
    }

    /// A node certificate for the CSR in `csr_pem`, for the node its CN
    /// names; `expected` (renewal) is the name it must be.
    pub fn sign_node(
        &self,
        csr_pem: &str,
        expected: Option<&str>,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(format!("bad CSR: {e}")))?;
        let node = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(|v| match v {
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
                _ => None,
            })
            .ok_or_else(|| {
                PkiError::BadRequest("the CSR has no common name (the node name)".into())
            })?;
        crate::nodes::validate_hostname(&node).map_err(|e| PkiError::BadRequest(e.to_string()))?;
        if let Some(expected) = expected.filter(|e| *e != node) {
            return Err(PkiError::BadRequest(format!(
                "the CSR is for node {node:?}, the certificate presented is node {expected:?}'s"
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&node, Some(NODES_ORG));
        params.subject_alt_names = vec![SanType::DnsName(node.clone().try_into()?)];
        leaf(&mut params, lifetime, true);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok((node, cert.pem()))
    }

    /// The scheduler's server certificate for these names and addresses.
    pub fn server_identity(
        &self,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<KeyedChain, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = name(SCHEDULER_CN, Some(SCHEDULER_ORG));
        leaf(&mut params, lifetime, false);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.keyed_chain(&params, &key)
    }

    /// The scheduler's client certificate, for the node API.
    pub fn scheduler_client_identity(&self, lifetime: Duration) -> Result<KeyedChain, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(SCHEDULER_CN, Some(SCHEDULER_ORG));
        leaf(&mut params, lifetime, false);
        self.keyed_chain(&params, &key)
    }

    /// A certificate and key for `rik` (`admin-cert`).
    pub fn admin(&self, lifetime: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("rik-admin", Some(ADMINS_ORG));
        leaf(&mut params, lifetime, false);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn keyed_chain(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<KeyedChain, PkiError> {
        let cert = params.signed_by(key, &self.issuer()?)?;
        // The CA goes with the chain: a joining node finds the key it pins.
        let chain_pem = format!("{}{}", cert.pem(), self.ca_cert_pem);
        Ok(KeyedChain::from_pem(
            &chain_pem,
            &key.serialize_pem(),
            "a new certificate",
        )?)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, &self.ca_key).map_err(|source| {
            PkiError::BadCa {
                dir: self.dir.clone(),
                source,
            }
        })
    }
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(org) = org {
        name.push(DnType::OrganizationName, org);
    }
    name.push(DnType::CommonName, cn);
    name
}

/// An end-entity certificate valid from a little before now for `lifetime`:
/// client use, and server use too when `server`.
fn leaf(params: &mut CertificateParams, lifetime: Duration, server: bool) {
    validity(params, lifetime);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - (lifetime / 10).min(MAX_BACKDATE);
    params.not_after = now + lifetime;
}

#[cfg(test)]
mod tests {
    use rik_tls::Role;

    use super::*;

    fn csr(node: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(node, None);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn role(pem: &str) -> Role {
        Role::of(&rik_tls::pem::certificates(pem, "test").unwrap()[0]).unwrap()
    }

    #[test]
    fn the_ca_is_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::open(dir.path()).unwrap();
        let again = Pki::open(dir.path()).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        assert_eq!(first.ca_hash().unwrap(), again.ca_hash().unwrap());
        let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn certificates_carry_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(dir.path()).unwrap();
        let (node, cert) = pki
            .sign_node(&csr("node-1"), None, DEFAULT_CERT_LIFETIME)
            .unwrap();
        assert_eq!(node, "node-1");
        assert_eq!(role(&cert), Role::Node("node-1".into()));
        assert_eq!(
            role(&pki.admin(DEFAULT_CERT_LIFETIME).unwrap().cert_pem),
            Role::Admin
        );
        let client = pki
            .scheduler_client_identity(DEFAULT_CERT_LIFETIME)
            .unwrap();
        assert_eq!(Role::of(&client.chain[0]).unwrap(), Role::Scheduler);
        // The chain ends with the CA, whose hash a joining node pins.
        assert_eq!(
            CaHash::of(&client.chain[1]).unwrap(),
            pki.ca_hash().unwrap()
        );
    }

    #[test]
    fn a_renewal_is_for_the_same_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(dir.path()).unwrap();
        let err = pki
            .sign_node(&csr("node-2"), Some("node-1"), DEFAULT_CERT_LIFETIME)
            .unwrap_err();
        assert!(err.to_string().contains("node \"node-1\"'s"), "{err}");
        let err = pki
            .sign_node(&csr("Bad_Name"), None, DEFAULT_CERT_LIFETIME)
            .unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
        assert!(
            pki.sign_node("not a csr", None, DEFAULT_CERT_LIFETIME)
                .is_err()
        );
    }
}
