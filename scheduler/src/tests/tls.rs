//! The scheduler over TLS, in-process: who may call what.

use std::path::Path;
use std::time::Duration;

use proto::common::worker_status::Status as StatusKind;
use proto::common::{InstanceMetric, ResourceStatus, WorkerRegistration, WorkerStatus};
use proto::rik::v1::ListAppsRequest;
use proto::rik::v1::rik_client::RikClient;
use proto::worker::worker_client::WorkerClient;
use rik_tls::ClientTls;
use rik_tls::pem::KeyedChain;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::ApiCalls;
use crate::pki::Pki;
use crate::{SchedulerConfig, SchedulerError, TlsConfig, run};

/// Starts a TLS scheduler on loopback; its URL and CA. It runs until the
/// test's runtime ends.
async fn start(dir: &Path) -> (String, Pki) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let pki = Pki::open(dir).unwrap();
    let config = SchedulerConfig {
        state_dir: dir.to_path_buf(),
        tls: Some(TlsConfig {
            cert_lifetime: Duration::from_secs(3600),
            server_names: Vec::new(),
        }),
        ..SchedulerConfig::default()
    };
    tokio::spawn(run(
        config,
        listener,
        ApiCalls::new(),
        std::future::pending(),
    ));
    (url, pki)
}

async fn channel(
    url: &str,
    ca: &Pki,
    identity: Option<KeyedChain>,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTls::trusting(&ca.ca_certs().unwrap(), identity).unwrap();
    tls.connect(Endpoint::from_shared(url.to_string()).unwrap())
        .await
}

fn admin(pki: &Pki) -> KeyedChain {
    let issued = pki.admin(Duration::from_secs(60)).unwrap();
    KeyedChain::from_pem(&issued.cert_pem, &issued.key_pem, "admin").unwrap()
}

fn node(pki: &Pki, name: &str) -> KeyedChain {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (_, cert) = pki.sign_node(&csr, None, Duration::from_secs(60)).unwrap();
    KeyedChain::from_pem(&cert, &key.serialize_pem(), name).unwrap()
}

async fn list_apps(channel: Channel) -> Result<(), tonic::Status> {
    RikClient::new(channel)
        .list_apps(ListAppsRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_rik_api_serves_the_admin_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pki) = start(dir.path()).await;
    list_apps(channel(&url, &pki, Some(admin(&pki))).await.unwrap())
        .await
        .unwrap();

    let anonymous = list_apps(channel(&url, &pki, None).await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert!(anonymous.message().contains("admin-cert"), "{anonymous:?}");
    let as_node = list_apps(channel(&url, &pki, Some(node(&pki, "n1"))).await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(as_node.code(), Code::PermissionDenied, "{as_node:?}");

    // A certificate of another CA does not get through the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::open(other_dir.path()).unwrap();
    let refused = match channel(&url, &pki, Some(admin(&other))).await {
        Ok(channel) => format!("{:?}", list_apps(channel).await.unwrap_err()),
        Err(e) => format!("{e:?}"),
    };
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_node_certificate_acts_for_its_own_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pki) = start(dir.path()).await;
    let mut worker = WorkerClient::new(channel(&url, &pki, Some(node(&pki, "n1"))).await.unwrap());
    let other = WorkerRegistration {
        hostname: "n2".into(),
    };
    let err = worker.register(other).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("certificate is node \"n1\"'s"),
        "{err:?}"
    );
    let own = WorkerRegistration {
        hostname: "n1".into(),
    };
    let _stream = worker.register(own).await.unwrap();

    let report = WorkerStatus {
        identifier: "n2".into(),
        host_address: String::new(),
        status: Some(StatusKind::Instance(InstanceMetric {
            instance_id: "web-abcde".into(),
            status: ResourceStatus::Running as i32,
            metrics: String::new(),
        })),
    };
    let updates = tokio_stream::iter([report]).chain(tokio_stream::pending());
    let err = worker.send_status_updates(updates).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("status as node \"n2\""), "{err:?}");
}

#[tokio::test]
async fn plaintext_off_loopback_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = SchedulerConfig {
        state_dir: dir.path().to_path_buf(),
        ..SchedulerConfig::default()
    };
    let err = run(config, listener, ApiCalls::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::PlaintextOffLoopback(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("--insecure"), "{err}");
}
