//! TLS for gRPC clients: the scheduler's (riklets, `rik`) and the node
//! API's (the scheduler).
//!
//! tonic's own client TLS takes a fixed configuration and no custom
//! verifier (and the workspace builds tonic without it), so channels
//! connect through our [`Connector`]: it reads the
//! current configuration at each connection (a renewed certificate is
//! used from the next one on) and may verify the server with a pinned CA
//! hash instead of a CA certificate (a node that has not joined yet).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pem::KeyedChain;
use crate::{CaHash, TlsError, provider};

/// A client TLS configuration that can be replaced while channels use it.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

impl ClientTls {
    /// Trusts servers with a certificate of `ca`; presents `identity` if given.
    pub fn trusting(
        ca: &[CertificateDer<'static>],
        identity: Option<KeyedChain>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            config: Arc::new(RwLock::new(Arc::new(config(ca, identity)?))),
        })
    }

    /// Trusts a server whose chain holds a CA with this key hash, and
    /// presents no certificate: a node's join.
    pub fn pinned(hash: CaHash) -> Result<Self, TlsError> {
        let verifier = Arc::new(PinnedCa {
            hash,
            provider: provider(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// From now on, connections trust `ca` and present `identity`.
    pub fn replace(
        &self,
        ca: &[CertificateDer<'static>],
        identity: Option<KeyedChain>,
    ) -> Result<(), TlsError> {
        let config = Arc::new(config(ca, identity)?);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// A connector for `Endpoint::connect_with_connector`. The server must
    /// prove `server_name`, or the host of the URI when `None`.
    pub fn connector(&self, server_name: Option<String>) -> Connector {
        Connector {
            tls: self.clone(),
            server_name,
        }
    }

    /// Connects `endpoint` over TLS (the URI's host is the server name).
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector(None)).await
    }

    fn current(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn config(
    ca: &[CertificateDer<'static>],
    identity: Option<KeyedChain>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Dials TCP, then TLS, for tonic's channels.
#[derive(Debug, Clone)]
pub struct Connector {
    tls: ClientTls,
    server_name: Option<String>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current();
        let name = self.server_name.clone();
        Box::pin(async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("no host in {uri}")))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = name.unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| invalid(format!("{name:?} is not a valid server name")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Accepts a server chain that verifies up to a CA certificate sent in the
/// same chain, if that CA's key has the pinned hash.
#[derive(Debug)]
struct PinnedCa {
    hash: CaHash,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = Vec::new();
        let ca = intermediates.iter().find(|cert| match CaHash::of(cert) {
            Ok(hash) => {
                let found = hash == self.hash;
                seen.push(hash.to_string());
                found
            }
            Err(_) => false,
        });
        let Some(ca) = ca else {
            return Err(rustls::Error::General(format!(
                "the server's CA does not match --ca-hash {} (the server sent {})",
                self.hash,
                if seen.is_empty() {
                    "no CA certificate".to_string()
                } else {
                    seen.join(", ")
                }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
