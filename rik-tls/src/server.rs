//! TLS for gRPC servers (the scheduler, the node API), with plaintext on
//! the same port.
//!
//! The first byte a client sends tells a TLS handshake (0x16) from a
//! plaintext HTTP/2 preface. A plaintext connection is served, but its
//! calls are refused with a message saying why unless it comes from
//! loopback or the server runs with `--insecure`: a client that got the
//! scheme wrong learns it from the error, not from a reset connection.
//! Handshakes run in tasks of their own, so a slow client holds up no one.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Status};
use tracing::{debug, info};

use crate::pem::KeyedChain;
use crate::{Role, TlsError, provider};

/// How long a client gets to send its first byte and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// A server TLS configuration that can be replaced while the server runs
/// (a renewed certificate is presented from the next connection on).
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Presents `identity`; verifies client certificates against `ca`.
    /// Without `require_client_cert` a client may present none (a node
    /// joining): the services decide what such a caller may do.
    pub fn new(
        ca: &[CertificateDer<'static>],
        identity: KeyedChain,
        require_client_cert: bool,
    ) -> Result<Self, TlsError> {
        let config = Arc::new(config(ca, identity, require_client_cert)?);
        Ok(Self {
            config: Arc::new(RwLock::new(config)),
        })
    }

    /// From now on, handshakes use this configuration.
    pub fn replace(
        &self,
        ca: &[CertificateDer<'static>],
        identity: KeyedChain,
        require_client_cert: bool,
    ) -> Result<(), TlsError> {
        let config = Arc::new(config(ca, identity, require_client_cert)?);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.config.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

fn config(
    ca: &[CertificateDer<'static>],
    identity: KeyedChain,
    require_client_cert: bool,
) -> Result<ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if !require_client_cert {
        verifier = verifier.allow_unauthenticated();
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier.build()?)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Whom plaintext is served to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Loopback peers only.
    Loopback,
    /// Anyone (`--insecure`).
    Anyone,
}

/// The accepted connections of `listener`, TLS or plaintext, for
/// `serve_with_incoming`. Without `tls`, every connection is plaintext.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    plaintext: Plaintext,
) -> impl Stream<Item = io::Result<PeerStream>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, open(tcp, remote, tls, plaintext))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => info!(peer = %remote, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(peer = %remote, "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn open(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<ServerTls>,
    plaintext: Plaintext,
) -> io::Result<PeerStream> {
    tcp.set_nodelay(true)?;
    let mut first = [0u8; 1];
    let tls = match tls {
        Some(tls) if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE => tls,
        _ => {
            let allowed =
                plaintext == Plaintext::Anyone || remote.ip().to_canonical().is_loopback();
            let peer = Peer {
                remote,
                plaintext: Some(allowed),
                certs: Vec::new(),
            };
            return Ok(PeerStream {
                io: Io::Plain(tcp),
                peer,
            });
        }
    };
    let stream = tls.acceptor().accept(tcp).await?;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let peer = Peer {
        remote,
        plaintext: None,
        certs,
    };
    Ok(PeerStream {
        io: Io::Tls(Box::new(stream)),
        peer,
    })
}

/// Who is at the other end of a connection; in each request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// `None` over TLS; over plaintext, whether plaintext is allowed.
    plaintext: Option<bool>,
    /// The client's verified chain (TLS), leaf first; empty if none.
    certs: Vec<CertificateDer<'static>>,
}

/// What a request's caller proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext from loopback, or anyone with `--insecure`: trusted as
    /// before TLS existed.
    Plaintext,
    /// TLS without a client certificate.
    Anonymous,
    /// TLS with a certificate of the cluster CA.
    Certified(Role),
}

impl Caller {
    /// The caller of `request`. Plaintext from a remote peer without
    /// `--insecure`, or a certificate with no rik role, is refused here.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        let Some(peer) = request.extensions().get::<Peer>() else {
            return Ok(Caller::Plaintext);
        };
        match (peer.plaintext, peer.certs.first()) {
            (Some(true), _) => Ok(Caller::Plaintext),
            (Some(false), _) => Err(Status::unauthenticated(format!(
                "plaintext is served to loopback clients only ({} is not): connect with https:// and a certificate, or start the server with --insecure",
                peer.remote.ip()
            ))),
            (None, None) => Ok(Caller::Anonymous),
            (None, Some(leaf)) => Role::of(leaf)
                .map(Caller::Certified)
                .map_err(|e| Status::permission_denied(format!("client certificate refused: {e}"))),
        }
    }

    /// The remote address of `request`'s connection, if it came through
    /// [`incoming`].
    pub fn remote<T>(request: &Request<T>) -> Option<SocketAddr> {
        request.extensions().get::<Peer>().map(|p| p.remote)
    }
}

/// An accepted connection, TLS or plaintext.
#[derive(Debug)]
pub struct PeerStream {
    io: Io,
    peer: Peer,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}
