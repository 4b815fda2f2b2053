//! The scheduler's side of mTLS: who may call what, and the `rik.v1.Join`
//! service that gives nodes their certificates.
//!
//! | Service | Plaintext (loopback, `--insecure`) | TLS, no certificate | Certificate |
//! |---|---|---|---|
//! | `worker.Worker` | yes | no | a node's, for its own name only |
//! | `rik.v1.Rik` | yes | no | the admin's |
//! | `rik.v1.Join/Join` | no (the token would travel in clear) | with a valid token | yes |
//! | `rik.v1.Join/Renew` | no | no | a node's, for its own name |

use std::sync::Arc;
use std::time::Duration;

use proto::rik::v1::join_server::Join;
use proto::rik::v1::{JoinRequest, NodeCertificate, RenewRequest};
use rik_tls::Role;
use rik_tls::server::Caller;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::pki::{Pki, PkiError};

/// The node a `worker.Worker` caller proved to be; `None` for a trusted
/// plaintext caller (the standalone riklet, a loopback test, `--insecure`).
#[derive(Debug, Clone)]
pub struct NodeIdentity(pub Option<String>);

impl NodeIdentity {
    /// Refuses a call that names another node than the certificate's.
    pub fn check(&self, claimed: &str, what: &str) -> Result<(), Status> {
        match &self.0 {
            Some(node) if node != claimed => Err(Status::permission_denied(format!(
                "{what} as node {claimed:?} refused: the client certificate is node {node:?}'s"
            ))),
            _ => Ok(()),
        }
    }

    pub fn of<T>(request: &Request<T>) -> NodeIdentity {
        request
            .extensions()
            .get::<NodeIdentity>()
            .cloned()
            .unwrap_or(NodeIdentity(None))
    }
}

/// Interceptor of `worker.Worker`: nodes only.
pub fn require_node(mut request: Request<()>) -> Result<Request<()>, Status> {
    let identity = match Caller::of(&request)? {
        Caller::Plaintext => NodeIdentity(None),
        Caller::Certified(Role::Node(name)) => NodeIdentity(Some(name)),
        Caller::Anonymous => {
            return Err(Status::unauthenticated(
                "a node certificate is required: start the riklet with --join TOKEN --ca-hash HASH",
            ));
        }
        Caller::Certified(other) => {
            return Err(Status::permission_denied(format!(
                "a {other} certificate cannot act as a node"
            )));
        }
    };
    request.extensions_mut().insert(identity);
    Ok(request)
}

/// Interceptor of `rik.v1.Rik`: the admin only.
pub fn require_admin(request: Request<()>) -> Result<Request<()>, Status> {
    match Caller::of(&request)? {
        Caller::Plaintext | Caller::Certified(Role::Admin) => Ok(request),
        Caller::Anonymous => Err(Status::unauthenticated(
            "an admin certificate is required: see `rik-scheduler admin-cert`",
        )),
        Caller::Certified(other) => Err(Status::permission_denied(format!(
            "a {other} certificate cannot use the rik API"
        ))),
    }
}

/// `rik.v1.Join`.
#[derive(Debug, Clone)]
pub struct JoinService {
    pki: Arc<Pki>,
    lifetime: Duration,
}

impl JoinService {
    /// Signs node certificates valid for `lifetime`.
    pub fn new(pki: Arc<Pki>, lifetime: Duration) -> Self {
        Self { pki, lifetime }
    }

    fn sign(
        &self,
        csr_pem: &str,
        expected: Option<&str>,
    ) -> Result<(String, NodeCertificate), Status> {
        let (node, certificate_pem) = self
            .pki
            .sign_node(csr_pem, expected, self.lifetime)
            .map_err(|e| match e {
                PkiError::BadRequest(_) => Status::invalid_argument(e.to_string()),
                e => {
                    warn!(error = %e, "cannot sign a node certificate");
                    Status::internal("cannot sign the certificate, see the scheduler's log")
                }
            })?;
        Ok((
            node,
            NodeCertificate {
                certificate_pem,
                ca_pem: self.pki.ca_pem().to_string(),
            },
        ))
    }
}

#[tonic::async_trait]
impl Join for JoinService {
    async fn join(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<NodeCertificate>, Status> {
        if Caller::of(&request)? == Caller::Plaintext {
            return Err(Status::unauthenticated(
                "a join needs TLS (https://): the token would travel in clear",
            ));
        }
        let remote = Caller::remote(&request);
        let JoinRequest { token, csr_pem } = request.into_inner();
        let checked = self.pki.tokens().check(&token).map_err(|e| {
            warn!(error = %e, "cannot read the join tokens");
            Status::internal("cannot read the join tokens, see the scheduler's log")
        })?;
        if let Err(e) = checked {
            warn!(peer = ?remote, error = %e, "join refused");
            return Err(Status::unauthenticated(e.to_string()));
        }
        let (node, cert) = self.sign(&csr_pem, None)?;
        info!(node = %node, peer = ?remote, "node joined");
        Ok(Response::new(cert))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<NodeCertificate>, Status> {
        let Caller::Certified(Role::Node(current)) = Caller::of(&request)? else {
            return Err(Status::unauthenticated(
                "a renewal needs the node's current certificate",
            ));
        };
        let (node, cert) = self.sign(&request.into_inner().csr_pem, Some(&current))?;
        info!(node = %node, "node certificate renewed");
        Ok(Response::new(cert))
    }
}
