//! The riklet's side of mTLS: joining the cluster, keeping the node
//! certificate, renewing it.
//!
//! A riklet pointed at an `https://` scheduler needs a node certificate.
//! The first time, `--join TOKEN --ca-hash sha256:HEX` gets one: the
//! connection trusts a scheduler whose chain holds a CA with that key hash
//! (kubeadm's discovery), the token pays for the certificate, and the key
//! never leaves the node (a CSR is sent). The key (0600), the certificate
//! and the CA are kept in `<state_dir>/tls/`; a restarted riklet uses them
//! and needs no token.
//!
//! The same certificate identifies the node to the scheduler (client) and
//! serves the node API (server, which accepts the scheduler's certificate
//! only). [`renew`] replaces it at 2/3 of its lifetime; connections made
//! after that use the new one, the pods are not touched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rik_tls::pem::KeyedChain;
use rik_tls::server::Caller;
use rik_tls::{CaHash, ClientTls, Role, ServerTls, TlsError as Material};
use tonic::transport::Endpoint;
use tracing::info;

mod renew;
mod store;

pub use renew::renew;

/// `--join` and `--ca-hash`: how a node without a certificate gets one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinFlags {
    pub token: String,
    pub ca_hash: CaHash,
}

/// Why the node's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the scheduler {0} is reached in plaintext off loopback: use an https:// URL with --join \
         (or a stored certificate), or pass --insecure"
    )]
    PlaintextOffLoopback(String),
    #[error("--join needs an https:// scheduler URL, not {0}")]
    JoinNeedsHttps(String),
    #[error(
        "no node certificate in {0} and no --join: get the flags from `rik-scheduler token create`"
    )]
    NotJoined(PathBuf),
    #[error("cannot reach the scheduler {url} to join")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the scheduler refused the join: {}", .0.message())]
    Refused(tonic::Status),
    #[error("the scheduler's CA is not the one --ca-hash names ({expected}, got {got})")]
    WrongCa { expected: CaHash, got: CaHash },
    #[error("the stored certificate is node {stored:?}'s, this node is {node:?}")]
    OtherNode { stored: String, node: String },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate request failed")]
    Csr(#[from] rcgen::Error),
    #[error(transparent)]
    Material(#[from] Material),
}

/// The node's TLS, shared by the scheduler client, the node API and the
/// renewal.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub client: ClientTls,
    pub server: ServerTls,
    node: String,
    dir: PathBuf,
}

/// The node's TLS for `scheduler_url`: `None` for a plaintext scheduler
/// (loopback, or anywhere with `insecure`). Joins first if needed.
pub async fn setup(
    scheduler_url: &str,
    node: &str,
    state_dir: &Path,
    join: Option<&JoinFlags>,
    insecure: bool,
) -> Result<Option<NodeTls>, TlsError> {
    let endpoint =
        Endpoint::from_shared(scheduler_url.to_string()).map_err(|source| TlsError::Connect {
            url: scheduler_url.to_string(),
            source,
        })?;
    let uri = endpoint.uri();
    if uri.scheme_str() != Some("https") {
        if join.is_some() {
            return Err(TlsError::JoinNeedsHttps(scheduler_url.to_string()));
        }
        if !insecure && !is_loopback(uri.host().unwrap_or_default()) {
            return Err(TlsError::PlaintextOffLoopback(scheduler_url.to_string()));
        }
        return Ok(None);
    }
    let dir = state_dir.join("tls");
    let stored = match store::load(&dir)? {
        Some(stored) => stored,
        None => {
            let join = join.ok_or_else(|| TlsError::NotJoined(dir.clone()))?;
            let joined = renew::join(endpoint, node, join).await?;
            store::save(&dir, &joined)?;
            info!(node, dir = %dir.display(), "joined the cluster, node certificate stored");
            joined
        }
    };
    let tls = NodeTls::from_stored(node, dir, &stored)?;
    Ok(Some(tls))
}

impl NodeTls {
    fn from_stored(node: &str, dir: PathBuf, stored: &store::Stored) -> Result<NodeTls, TlsError> {
        let (ca, identity) = stored.material()?;
        let holder = stored.node()?;
        if holder != node {
            return Err(TlsError::OtherNode {
                stored: holder,
                node: node.to_string(),
            });
        }
        Ok(NodeTls {
            client: ClientTls::trusting(&ca, Some(identity.clone()))?,
            server: ServerTls::new(&ca, identity, true)?,
            node: node.to_string(),
            dir,
        })
    }

    /// Uses `stored` for new connections from now on.
    fn replace(&self, stored: &store::Stored) -> Result<(), TlsError> {
        let (ca, identity): (_, KeyedChain) = stored.material()?;
        self.client.replace(&ca, Some(identity.clone()))?;
        self.server.replace(&ca, identity, true)?;
        Ok(())
    }
}

/// Interceptor of the node API: over TLS, the scheduler's certificate
/// only (not `rik`'s admin certificate, not a node's).
pub fn require_scheduler(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match Caller::of(&request)? {
        Caller::Plaintext | Caller::Certified(Role::Scheduler) => Ok(request),
        Caller::Anonymous => Err(tonic::Status::unauthenticated(
            "the node API needs the scheduler's client certificate",
        )),
        Caller::Certified(other) => Err(tonic::Status::permission_denied(format!(
            "the node API serves the scheduler only, not a {other} certificate"
        ))),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// When a certificate valid from `from` to `until` should be renewed: at
/// 2/3 of its lifetime.
fn renewal_time(from: SystemTime, until: SystemTime) -> SystemTime {
    let lifetime = until.duration_since(from).unwrap_or(Duration::ZERO);
    from + lifetime * 2 / 3
}

#[cfg(test)]
mod join_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let until = from + Duration::from_secs(300);
        assert_eq!(renewal_time(from, until), from + Duration::from_secs(200));
        assert_eq!(renewal_time(until, from), until);
    }

    #[test]
    fn plaintext_is_for_loopback_unless_insecure() {
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("scheduler.example"));
    }

    #[tokio::test]
    async fn a_remote_plaintext_scheduler_needs_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let err = setup("http://10.0.0.1:4995", "n1", dir.path(), None, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(
            setup("http://10.0.0.1:4995", "n1", dir.path(), None, true)
                .await
                .unwrap()
                .is_none()
        );
        let err = setup("https://10.0.0.1:4995", "n1", dir.path(), None, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("token create"), "{err}");
    }
}
