//! Getting a node certificate: the join (token) and the renewals
//! (current certificate).

use std::time::{Duration, SystemTime};

use proto::rik::v1::join_client::JoinClient;
use proto::rik::v1::{JoinRequest, NodeCertificate, RenewRequest};
use rcgen::{CertificateParams, DnType, KeyPair};
use rik_tls::{CaHash, ClientTls};
use tokio::sync::broadcast;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use super::store::{self, Stored};
use super::{JoinFlags, NodeTls, TlsError, renewal_time};

/// A new key and a CSR for `node`, in PEM.
fn request(node: &str) -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

fn stored(key: &KeyPair, answer: NodeCertificate) -> Stored {
    Stored {
        key_pem: key.serialize_pem(),
        cert_pem: answer.certificate_pem,
        ca_pem: answer.ca_pem,
    }
}

/// How long a join waits for a scheduler that does not answer yet (it may
/// be starting too).
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// Joins through `endpoint` with `flags`: a certificate for `node`.
pub(crate) async fn join(
    endpoint: Endpoint,
    node: &str,
    flags: &JoinFlags,
) -> Result<Stored, TlsError> {
    let url = endpoint.uri().to_string();
    let tls = ClientTls::pinned(flags.ca_hash.clone())?;
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut pause = Duration::from_millis(100);
    let channel = loop {
        match tls.connect(endpoint.clone()).await {
            Ok(channel) => break channel,
            Err(e) if unreachable(&e) && tokio::time::Instant::now() + pause < deadline => {
                warn!(scheduler = %url, error = %crate::error_chain(&e), "scheduler not reachable yet, retrying the join");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(TlsError::Connect { url, source }),
        }
    };
    let (key, csr_pem) = request(node)?;
    let answer = JoinClient::new(channel)
        .join(JoinRequest {
            token: flags.token.clone(),
            csr_pem,
        })
        .await
        .map_err(TlsError::Refused)?
        .into_inner();
    let joined = stored(&key, answer);
    let (ca, _) = joined.material()?;
    let got = CaHash::of(&ca[0])?;
    if got != flags.ca_hash {
        return Err(TlsError::WrongCa {
            expected: flags.ca_hash.clone(),
            got,
        });
    }
    Ok(joined)
}

/// Whether `error` is a scheduler not listening (yet), not a refusal.
fn unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{
        ConnectionRefused, ConnectionReset, HostUnreachable, NetworkUnreachable, TimedOut,
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | HostUnreachable
                    | NetworkUnreachable
                    | TimedOut
            );
        }
        next = e.source();
    }
    false
}

/// Renews the node certificate at 2/3 of its lifetime, again and again,
/// until `stop`. A failed renewal is retried (every 1/30 of the lifetime,
/// 1 s to 5 min) while the certificate still works.
pub async fn renew(tls: NodeTls, scheduler_url: String, mut stop: broadcast::Receiver<()>) {
    loop {
        let (due, retry) =
            match store::load(&tls.dir).and_then(|s| s.map(|s| s.validity()).transpose()) {
                Ok(Some((from, until))) => {
                    let lifetime = until.duration_since(from).unwrap_or_default();
                    (
                        renewal_time(from, until),
                        (lifetime / 30).clamp(Duration::from_secs(1), Duration::from_secs(300)),
                    )
                }
                Ok(None) | Err(_) => (SystemTime::now(), Duration::from_secs(60)),
            };
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            _ = stop.recv() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match renew_once(&tls, &scheduler_url).await {
            Ok(until) => {
                info!(node = %tls.node, valid_until = %humantime::format_rfc3339_seconds(until), "node certificate renewed")
            }
            Err(e) => {
                warn!(node = %tls.node, error = %crate::error_chain(&e), retry = ?retry, "node certificate renewal failed");
                tokio::select! {
                    _ = stop.recv() => return,
                    () = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

/// One renewal; returns the new certificate's end of validity.
async fn renew_once(tls: &NodeTls, scheduler_url: &str) -> Result<SystemTime, TlsError> {
    let connect = |source| TlsError::Connect {
        url: scheduler_url.to_string(),
        source,
    };
    let endpoint = Endpoint::from_shared(scheduler_url.to_string()).map_err(connect)?;
    let channel = tls.client.connect(endpoint).await.map_err(connect)?;
    let (key, csr_pem) = request(&tls.node)?;
    let answer = JoinClient::new(channel)
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(TlsError::Refused)?
        .into_inner();
    let renewed = stored(&key, answer);
    if renewed.node()? != tls.node {
        return Err(TlsError::OtherNode {
            stored: renewed.node()?,
            node: tls.node.clone(),
        });
    }
    store::save(&tls.dir, &renewed)?;
    tls.replace(&renewed)?;
    Ok(renewed.validity()?.1)
}
