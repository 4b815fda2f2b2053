//! Joining against a scheduler in-process: the failures name their cause,
//! a good join stores a private key and a node certificate.

use std::time::Duration;

use scheduler::pki::Pki;
use scheduler::{SchedulerConfig, TlsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;

/// A TLS scheduler on loopback; its URL, its CA and its stopper.
async fn scheduler(dir: &Path) -> (String, Pki, oneshot::Sender<()>) {
    scheduler_signing_for(dir, Duration::from_secs(3600)).await
}

/// The same, signing node certificates valid for `lifetime`.
async fn scheduler_signing_for(
    dir: &Path,
    lifetime: Duration,
) -> (String, Pki, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let config = SchedulerConfig {
        state_dir: dir.to_path_buf(),
        tls: Some(TlsConfig {
            cert_lifetime: lifetime,
            server_names: Vec::new(),
        }),
        ..SchedulerConfig::default()
    };
    // The CA is made before the scheduler starts, as `token create` does.
    let pki = Pki::open(dir).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let calls = scheduler::metrics::ApiCalls::new();
    tokio::spawn(scheduler::run(config, listener, calls, async {
        let _ = stopped.await;
    }));
    (url, pki, stop)
}

async fn join(
    url: &str,
    state: &Path,
    token: String,
    ca_hash: CaHash,
) -> Result<Option<NodeTls>, TlsError> {
    let flags = JoinFlags { token, ca_hash };
    setup(url, "node-a", state, Some(&flags), false).await
}

#[tokio::test]
async fn a_join_stores_the_node_certificate_and_is_not_needed_again() {
    let (sched, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (url, pki, _stop) = scheduler(sched.path()).await;
    let token = pki.tokens().create(Duration::from_secs(60)).unwrap();
    let tls = join(&url, state.path(), token, pki.ca_hash().unwrap())
        .await
        .unwrap();
    assert!(tls.is_some());
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(state.path().join("tls/node.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let stored = store::load(&state.path().join("tls")).unwrap().unwrap();
    assert_eq!(stored.node().unwrap(), "node-a");
    // The stored certificate is enough; another node name is not.
    assert!(
        setup(&url, "node-a", state.path(), None, false)
            .await
            .unwrap()
            .is_some()
    );
    let err = setup(&url, "node-b", state.path(), None, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node \"node-a\"'s"), "{err}");
}

#[tokio::test]
async fn a_wrong_ca_hash_is_named() {
    let (sched, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (url, pki, _stop) = scheduler(sched.path()).await;
    let token = pki.tokens().create(Duration::from_secs(60)).unwrap();
    let wrong: CaHash = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
    let err = join(&url, state.path(), token, wrong).await.unwrap_err();
    let chain = crate::error_chain(&err);
    assert!(chain.contains("does not match --ca-hash"), "{chain}");
    assert!(store::load(&state.path().join("tls")).unwrap().is_none());
}

#[tokio::test]
async fn unknown_and_expired_tokens_are_named() {
    let (sched, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (url, pki, _stop) = scheduler(sched.path()).await;
    let hash = pki.ca_hash().unwrap();
    let err = join(
        &url,
        state.path(),
        "abcdef.0123456789abcdef".into(),
        hash.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown join token \"abcdef\""),
        "{err}"
    );
    let expired = pki.tokens().create(Duration::ZERO).unwrap();
    let err = join(&url, state.path(), expired, hash).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn a_certificate_is_renewed_before_it_expires_and_used_for_new_connections() {
    let (sched, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (url, pki, _stop) = scheduler_signing_for(sched.path(), Duration::from_secs(3)).await;
    let token = pki.tokens().create(Duration::from_secs(60)).unwrap();
    let tls = join(&url, state.path(), token, pki.ca_hash().unwrap())
        .await
        .unwrap()
        .unwrap();
    let dir = state.path().join("tls");
    let first = store::load(&dir).unwrap().unwrap();
    let (_, first_end) = first.validity().unwrap();
    let (_stop_renewal, stop) = tokio::sync::broadcast::channel(1);
    tokio::spawn(renew(tls.clone(), url.clone(), stop));

    // Past the first certificate's end, a new connection still works.
    let wait = first_end
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    // Validity is in whole seconds: a second more is surely past it.
    tokio::time::sleep(wait + Duration::from_millis(1500)).await;
    let renewed = store::load(&dir).unwrap().unwrap();
    assert_ne!(renewed.cert_pem, first.cert_pem, "not renewed");
    assert!(renewed.validity().unwrap().1 > first_end);
    let channel = tls
        .client
        .connect(Endpoint::from_shared(url).unwrap())
        .await
        .unwrap();
    let registration = proto::common::WorkerRegistration {
        hostname: "node-a".into(),
    };
    proto::worker::worker_client::WorkerClient::new(channel)
        .register(registration)
        .await
        .expect("a new connection with the renewed certificate");
}

#[tokio::test]
async fn a_join_waits_for_a_scheduler_that_is_starting() {
    let (sched, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::open(sched.path()).unwrap();
    let token = pki.tokens().create(Duration::from_secs(60)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let dir = sched.path().to_path_buf();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let tls = TlsConfig {
            cert_lifetime: Duration::from_secs(60),
            server_names: Vec::new(),
        };
        let config = SchedulerConfig {
            state_dir: dir,
            tls: Some(tls),
            ..SchedulerConfig::default()
        };
        let calls = scheduler::metrics::ApiCalls::new();
        scheduler::run(config, listener, calls, std::future::pending()).await
    });
    let tls = join(&url, state.path(), token, pki.ca_hash().unwrap())
        .await
        .unwrap();
    assert!(tls.is_some());
}
