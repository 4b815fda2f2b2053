//! The riklet against a fake RIK scheduler speaking only the `common` and
//! `worker` packages, behaving as RIK's own scheduler does (docs/protocol.md):
//! the RUNNING worker status must come first, definitions carry `null`s,
//! DESTROY may name an instance the riklet never ran, and the wire is not
//! trusted (an invalid definition is refused with the field named).
//!
//! Needs root (cgroups, eBPF); fails with a message otherwise.

use std::pin::Pin;
use std::time::Duration;

use proto::common::{
    ResourceStatus, WorkerRegistration, WorkerStatus, WorkloadRequestKind, worker_status,
};
use proto::worker::InstanceScheduling;
use proto::worker::worker_server::{Worker, WorkerServer};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type InstructionStream = Pin<Box<dyn Stream<Item = Result<InstanceScheduling, Status>> + Send>>;

struct FakeRik {
    registrations:
        mpsc::UnboundedSender<(String, mpsc::Sender<Result<InstanceScheduling, Status>>)>,
    statuses: mpsc::UnboundedSender<WorkerStatus>,
    connected: Mutex<bool>,
}

#[tonic::async_trait]
impl Worker for FakeRik {
    type RegisterStream = InstructionStream;

    async fn register(
        &self,
        request: Request<WorkerRegistration>,
    ) -> Result<Response<InstructionStream>, Status> {
        let mut connected = self.connected.lock().await;
        if *connected {
            return Err(Status::already_exists("hostname already registered"));
        }
        *connected = true;
        let (tx, rx) = mpsc::channel(16);
        let _ = self.registrations.send((request.into_inner().hostname, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn send_status_updates(
        &self,
        request: Request<Streaming<WorkerStatus>>,
    ) -> Result<Response<()>, Status> {
        let mut stream = request.into_inner();
        while let Some(Ok(status)) = stream.next().await {
            let _ = self.statuses.send(status);
        }
        Ok(Response::new(()))
    }
}

/// Removes the test's cgroup root and pin dir even if the test panics.
struct Cleanup {
    cgroup_root: String,
    pin_dir: std::path::PathBuf,
    /// The pod network's bridge and nftables table (also named so).
    bridge: String,
    /// Pod network namespaces the test may leave when it fails.
    netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        for m in ["unified", "cpu", "cpuacct", "memory", "pids", ""] {
            let _ = std::fs::remove_dir(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(m)
                    .join(&self.cgroup_root),
            );
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

async fn next_instance(
    statuses: &mut mpsc::UnboundedReceiver<WorkerStatus>,
    id: &str,
) -> (ResourceStatus, serde_json::Value) {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(10), statuses.recv())
            .await
            .unwrap_or_else(|_| panic!("no status for {id} within 10 s"))
            .expect("status stream open");
        if let Some(worker_status::Status::Instance(i)) = s.status
            && i.instance_id == id
        {
            let metrics = serde_json::from_str(&i.metrics).expect("instance metrics are JSON");
            return (
                ResourceStatus::try_from(i.status).expect("known status"),
                metrics,
            );
        }
    }
}

#[tokio::test]
async fn speaks_rik_worker_protocol_and_distrusts_the_wire() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups, eBPF)"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reg_tx, mut registrations) = mpsc::unbounded_channel();
    let (status_tx, mut statuses) = mpsc::unbounded_channel();
    let fake = FakeRik {
        registrations: reg_tx,
        statuses: status_tx,
        connected: Mutex::new(false),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let unique = format!("riklet-proto-{}", std::process::id());
    // A pod network of the test's own; a containerd socket where nothing
    // answers, so that RIK's `alpine:latest` is never pulled from the
    // internet.
    let bridge = format!("rkp{}", std::process::id() % 100_000);
    let _cleanup = Cleanup {
        cgroup_root: unique.clone(),
        pin_dir: format!("/sys/fs/bpf/{unique}").into(),
        bridge: bridge.clone(),
        netns: vec!["rik-opposite-join-5857".into()],
    };
    let config: riklet::Config = toml::from_str(&format!(
        "node_name = \"proto-node\"\nscheduler = \"http://{addr}\"\nstate_dir = \"{state}\"\nlog_dir = \"{logs}\"\n\
         cgroup_root = \"{unique}\"\nbpf_pin_dir = \"/sys/fs/bpf/{unique}\"\napi_listen = \"127.0.0.1:0\"\nheartbeat_interval = \"1s\"\n\
         metrics_addr = \"127.0.0.1:0\"\n\
         [network]\nbridge = \"{bridge}\"\nnft_table = \"{bridge}\"\npod_cidr = \"10.215.{octet}.0/24\"\n\
         [containerd]\nsocket = \"{nowhere}\"\n",
        state = dir.path().join("state").display(),
        logs = dir.path().join("logs").display(),
        octet = std::process::id() % 250,
        nowhere = dir.path().join("no-containerd.sock").display(),
    ))
    .expect("config");
    let network_config = config.network.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let riklet = tokio::spawn(riklet::run(config, async move {
        let _ = stop_rx.await;
    }));

    let (hostname, instructions) =
        tokio::time::timeout(Duration::from_secs(10), registrations.recv())
            .await
            .expect("riklet registers within 10 s")
            .expect("registration");
    assert_eq!(hostname, "proto-node");

    // The first status is the worker's RUNNING status with its identifier.
    let first = tokio::time::timeout(Duration::from_secs(10), statuses.recv())
        .await
        .expect("a status within 10 s")
        .expect("status");
    assert_eq!(first.identifier, "proto-node");
    assert!(!first.host_address.is_empty(), "no node API address");
    let Some(worker_status::Status::Worker(w)) = first.status else {
        panic!("first status is not the worker's: {first:?}");
    };
    assert_eq!(w.status, ResourceStatus::Running as i32);
    let metrics: serde_json::Value = serde_json::from_str(&w.metrics).expect("worker metrics JSON");
    assert!(
        metrics["cpu"]["total"].as_u64().unwrap_or(0) >= 1,
        "{metrics}"
    );
    assert!(
        metrics["memory"]["total"].as_u64().unwrap_or(0) > 0,
        "{metrics}"
    );
    assert!(
        metrics["disks"][0]["total"].as_u64().unwrap_or(0) > 0,
        "{metrics}"
    );
    assert_eq!(metrics["resources"]["id"], "proto-node");

    let send = |id: &str, definition: &str, action: WorkloadRequestKind| InstanceScheduling {
        instance_id: id.into(),
        definition: definition.into(),
        action: action as i32,
    };

    // RIK's controller definition, nulls included: parsed, then waiting
    // for containerd (not running here), saying so.
    let rik_def = r#"{"apiVersion":"v1","kind":"Pod","name":"alpine","spec":{"containers":[{"name":"alpine","image":"alpine:latest","env":null,"ports":null}],"function":null},"replicas":1}"#;
    instructions
        .send(Ok(send(
            "opposite-join-5857",
            rik_def,
            WorkloadRequestKind::Create,
        )))
        .await
        .expect("send");
    let (status, m) = loop {
        let (status, m) = next_instance(&mut statuses, "opposite-join-5857").await;
        if m["reason"].is_string() {
            break (status, m);
        }
    };
    assert_eq!(status, ResourceStatus::Creating, "{m}");
    assert!(
        m["reason"]
            .as_str()
            .unwrap_or("")
            .contains("waiting for containerd"),
        "{m}"
    );
    assert_eq!(m["containers"][0]["image"], "alpine:latest", "{m}");

    // Never trust the wire: a relative exec is refused naming the field.
    let bad = r#"{"apiVersion":"v1","kind":"Pod","name":"bad","spec":{"containers":[{"name":"c","exec":"bin/sh"}]},"replicas":1}"#;
    instructions
        .send(Ok(send("bad-1", bad, WorkloadRequestKind::Create)))
        .await
        .expect("send");
    let (status, m) = next_instance(&mut statuses, "bad-1").await;
    assert_eq!(status, ResourceStatus::Failed);
    assert!(
        m["reason"]
            .as_str()
            .unwrap_or("")
            .contains("spec.containers[0].exec"),
        "{m}"
    );

    // A hostile instance id never reaches a path.
    instructions
        .send(Ok(send("../../etc", bad, WorkloadRequestKind::Create)))
        .await
        .expect("send");
    let (status, _) = next_instance(&mut statuses, "../../etc").await;
    assert_eq!(status, ResourceStatus::Failed);

    // DESTROY of an instance it never ran: TERMINATED, no failure.
    instructions
        .send(Ok(send("never-ran-1", "", WorkloadRequestKind::Destroy)))
        .await
        .expect("send");
    let (status, _) = next_instance(&mut statuses, "never-ran-1").await;
    assert_eq!(status, ResourceStatus::Terminated);

    // Heartbeats keep coming with the worker status.
    let hb = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = statuses.recv().await.expect("status");
            if matches!(s.status, Some(worker_status::Status::Worker(_))) {
                return s;
            }
        }
    })
    .await
    .expect("a heartbeat within 5 s");
    assert_eq!(hb.identifier, "proto-node");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), riklet)
        .await
        .expect("riklet stops within 10 s")
        .expect("riklet task")
        .expect("riklet ran without error");
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/{unique}/CGROUP_TRAFFIC")).exists(),
        "pin left behind"
    );
    // The pods stay (a later riklet adopts them): remove their network the
    // way an uninstall does.
    riklet::network::PodNetwork::new(network_config, &dir.path().join("state"))
        .await
        .expect("pod network")
        .remove_all()
        .await
        .expect("removing the pod network");
}
