//! mTLS end to end: a riklet joined with a token runs pods through
//! `https://`, restarts without a token and renews its certificate while
//! its pods run; the scheduler and the node API refuse the identities they
//! must refuse, each with an error that says why.

use std::path::Path;
use std::time::Duration;

use proto::common::worker_status::Status as StatusKind;
use proto::common::{InstanceMetric, WorkerRegistration, WorkerStatus};
use proto::rik::v1::node_logs_client::NodeLogsClient;
use proto::rik::v1::rik_client::RikClient;
use proto::rik::v1::{ListAppsRequest, NodeLogsRequest};
use proto::worker::worker_client::WorkerClient;
use rik_tls::ClientTls;
use rik_tls::pem::KeyedChain;
use riklet_e2e::{Cluster, Mode, Options, alive, bin_dir, free_port, wait_for};
use scheduler::pki::Pki;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

fn mtls(scheduler_args: &[&str]) -> Cluster {
    Cluster::start_with(
        Mode::Separate,
        Options {
            mtls: true,
            scheduler_args: scheduler_args.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        },
    )
}

fn talker(name: &str) -> String {
    format!(
        "kind: Pod\nname: {name}\nspec:\n  containers:\n    - name: main\n      exec: /bin/sh\n      \
         args: [-c, \"echo hello-{name}; exec sleep 3600\"]\n"
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// The cluster's CA (the scheduler's state directory).
fn pki(cluster: &Cluster) -> Pki {
    Pki::open(&cluster.dir.path().join("scheduler")).expect("the cluster CA")
}

/// The node's stored key and certificate.
fn node_identity(cluster: &Cluster) -> KeyedChain {
    let dir = cluster.state_dir().join("tls");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("stored node TLS file");
    KeyedChain::from_pem(&read("node.crt"), &read("node.key"), "node").expect("node identity")
}

fn admin_identity(pki: &Pki) -> KeyedChain {
    let admin = pki.admin(Duration::from_secs(3600)).expect("admin cert");
    KeyedChain::from_pem(&admin.cert_pem, &admin.key_pem, "admin").expect("admin identity")
}

/// A channel to `url` over TLS trusting `pki`'s CA, as `identity`; the
/// server must prove `server_name`.
async fn channel(
    url: &str,
    pki: &Pki,
    identity: KeyedChain,
    server_name: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let tls =
        ClientTls::trusting(&pki.ca_certs().expect("CA"), Some(identity)).expect("client TLS");
    Endpoint::from_shared(url.to_string())?
        .connect_with_connector(tls.connector(server_name.map(str::to_string)))
        .await
}

fn scheduler_url(cluster: &Cluster) -> String {
    format!("https://127.0.0.1:{}", cluster.scheduler_port)
}

#[test]
fn a_joined_node_runs_pods_over_https_and_restarts_without_a_token() {
    let mut cluster = mtls(&[]);
    assert!(
        cluster.riklet_args.iter().any(|a| a == "--join"),
        "{:?}",
        cluster.riklet_args
    );
    let out = cluster.apply(&talker("web"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.app("web");
    let pid = app["containers"][0]["pid"].as_i64().expect("pid");
    wait_for(
        Duration::from_secs(20),
        "the app's logs through https",
        || {
            cluster
                .rik_ok(&["logs", "web"])
                .contains("hello-web")
                .then_some(())
        },
    );

    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(cluster.state_dir().join("tls/node.key")).expect("node.key");
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // A restarted riklet uses its stored certificate: no token.
    cluster.stop_riklet();
    cluster.riklet_args = vec!["--scheduler".into(), scheduler_url(&cluster)];
    cluster.start_riklet();
    cluster.wait_node_ready();
    let app = cluster.wait_app("web", "the pod adopted", |a| a["state"] == "RUNNING");
    assert_eq!(app["containers"][0]["pid"].as_i64(), Some(pid), "{app:#}");
    assert!(cluster.rik_ok(&["logs", "web"]).contains("hello-web"));
}

#[test]
fn the_node_api_serves_the_scheduler_only() {
    let cluster = mtls(&[]);
    let out = cluster.apply(&talker("api"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = cluster.local_status()["apiAddress"]
        .as_str()
        .expect("apiAddress")
        .to_string();
    let url = format!("https://{api}");
    let pki = pki(&cluster);
    let rt = runtime();
    for (who, identity) in [
        ("admin", admin_identity(&pki)),
        ("node", node_identity(&cluster)),
    ] {
        let err = rt.block_on(async {
            let channel = channel(&url, &pki, identity, Some(&cluster.node))
                .await
                .expect("TLS to the node API");
            let request = NodeLogsRequest {
                instance_id: cluster.app("api")["appId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            };
            NodeLogsClient::new(channel)
                .logs(request)
                .await
                .expect_err("refused")
        });
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}: {err:?}");
        assert!(
            err.message().contains("serves the scheduler only"),
            "{who}: {err:?}"
        );
    }
    // The scheduler's own certificate still reads them.
    assert!(cluster.rik_ok(&["logs", "api"]).contains("hello-api"));
}

#[test]
fn the_scheduler_refuses_foreign_and_impersonating_clients() {
    let cluster = mtls(&[]);
    let out = cluster.apply(&talker("own"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let instance = cluster.app("own")["appId"]
        .as_str()
        .expect("appId")
        .to_string();
    let pki = pki(&cluster);
    let url = scheduler_url(&cluster);
    let rt = runtime();

    // A certificate of another CA: the handshake fails.
    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign = Pki::open(foreign_dir.path()).expect("another CA");
    let err = rt.block_on(async {
        let channel = channel(&url, &pki, admin_identity(&foreign), None).await?;
        let answer = RikClient::new(channel)
            .list_apps(ListAppsRequest::default())
            .await;
        Ok::<_, tonic::transport::Error>(answer.expect_err("a foreign certificate is refused"))
    });
    let message = match err {
        Ok(status) => format!("{status:?}"),
        Err(e) => format!("{e:?}"),
    };
    // In TLS 1.3 the client's side of the handshake ends before the server
    // has checked the client's certificate: the server's alert can reach the
    // client as the alert itself or as the stream it closed (a reset, a
    // broken pipe, or hyper's "connection closed" for the pending call).
    let refused_in_tls = [
        "UnknownCA",
        "BadCertificate",
        "certificate",
        "BrokenPipe",
        "ConnectionReset",
        "connection closed",
    ];
    assert!(
        refused_in_tls.iter().any(|m| message.contains(m)),
        "{message}"
    );

    // The node's certificate, registering as another node.
    let status = rt.block_on(async {
        let channel = channel(&url, &pki, node_identity(&cluster), None)
            .await
            .expect("mTLS");
        let registration = WorkerRegistration {
            hostname: "someone-else".into(),
        };
        WorkerClient::new(channel)
            .register(registration)
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("certificate is node \"{}\"'s", cluster.node)),
        "{status:?}"
    );

    // Another node's certificate, reporting this node's instance.
    let intruder = sign_node(&pki, "intruder");
    let status = rt.block_on(async {
        let channel = channel(&url, &pki, intruder, None).await.expect("mTLS");
        let report = WorkerStatus {
            identifier: cluster.node.clone(),
            host_address: String::new(),
            status: Some(StatusKind::Instance(InstanceMetric {
                instance_id: instance.clone(),
                status: proto::common::ResourceStatus::Terminated as i32,
                metrics: String::new(),
            })),
        };
        // The stream stays open after the report: the refusal ends it.
        let updates = tokio_stream::iter([report]).chain(tokio_stream::pending());
        WorkerClient::new(channel)
            .send_status_updates(updates)
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let log = std::fs::read_to_string(cluster.dir.path().join("scheduler.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("status for another node refused")
                && l.contains(&instance)
                && l.contains("intruder")),
        "no refusal with node and instance in the scheduler's log:\n{log}"
    );
    assert_eq!(cluster.app("own")["state"], "RUNNING");
}

/// A certificate of `pki` for node `name`, as a join would give.
fn sign_node(pki: &Pki, name: &str) -> KeyedChain {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM");
    let (_, cert) = pki
        .sign_node(&csr, None, Duration::from_secs(3600))
        .expect("signed");
    KeyedChain::from_pem(&cert, &key.serialize_pem(), name).expect("identity")
}

#[test]
fn plaintext_off_loopback_is_refused_with_a_reason() {
    // A bridge address of the cluster's pod network: local, not loopback.
    let cluster = mtls(&[]);
    let port = free_port();
    let state = cluster.dir.path().join("open-scheduler");
    let mut open = std::process::Command::new(bin_dir().join("rik-scheduler"))
        .args(["--listen", &format!("0.0.0.0:{port}"), "--state-dir"])
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rik-scheduler");
    let gateway = cluster.net.gateway();
    let rt = runtime();
    let list = |host: String| {
        rt.block_on(async {
            let channel = wait_connect(&format!("http://{host}:{port}")).await;
            RikClient::new(channel)
                .list_apps(ListAppsRequest::default())
                .await
        })
    };
    let refused = list(gateway.clone()).expect_err("plaintext from a bridge address");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("loopback clients only"),
        "{refused:?}"
    );
    list("127.0.0.1".into()).expect("plaintext from loopback is served");
    let _ = open.kill();
    let _ = open.wait();
    assert!(Path::new(&state.join("pki/ca.key")).exists());
}

async fn wait_connect(url: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(c) = Endpoint::from_shared(url.to_string())
            .expect("URL")
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rik-scheduler did not listen at {url}");
}

#[test]
fn a_certificate_near_expiry_is_renewed_while_pods_keep_running() {
    let cluster = mtls(&["--cert-lifetime", "30s"]);
    let out = cluster.apply(&talker("long"), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = cluster.app("long")["containers"][0]["pid"]
        .as_i64()
        .expect("pid");
    let cert = cluster.state_dir().join("tls/node.crt");
    let first = std::fs::read_to_string(&cert).expect("node.crt");
    let started = std::time::Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the node certificate renewed",
        || {
            let renewed = std::fs::read_to_string(&cert).ok()? != first;
            (renewed && cluster.riklet_log().contains("node certificate renewed")).then_some(())
        },
    );
    // Past the first certificate's end: new connections (the scheduler's
    // to the node API, a reconnect) must use the renewed one.
    std::thread::sleep(Duration::from_secs(35).saturating_sub(started.elapsed()));
    cluster.wait_node_ready();
    assert!(cluster.rik_ok(&["logs", "long"]).contains("hello-long"));
    let app = cluster.app("long");
    assert_eq!(app["containers"][0]["pid"].as_i64(), Some(pid), "{app:#}");
    assert!(alive(pid));
}
