use proto::common::ResourceStatus;
use proto::status::{ContainerStatus, RealtimeApp};

use super::*;

fn status() -> AgentStatus {
    AgentStatus {
        api_address: "10.0.0.5:4996".into(),
        containerd: ContainerdStatus {
            connected: true,
            error: None,
            namespace: Some("riklet".into()),
            socket: Some("/run/containerd/containerd.sock".into()),
        },
        ebpf: true,
        ebpf_programs: vec!["cgroup_skb_egress".into(), "sched_switch".into()],
        metrics_address: "127.0.0.1:9102".into(),
        node: "node-a".into(),
        pods: 3,
        phases: BTreeMap::from([("CREATING".into(), 1), ("RUNNING".into(), 2)]),
        proxy: "ebpf".into(),
        running: 2,
        scheduler: "http://127.0.0.1:4995".into(),
        scheduler_connected: true,
    }
}

#[test]
fn status_table_has_a_row_per_fact() {
    let expected = "\
NODE         node-a
SCHEDULER    http://127.0.0.1:4995 (connected)
CONTAINERD   connected (/run/containerd/containerd.sock, namespace riklet)
EBPF         2 programs loaded: cgroup_skb_egress, sched_switch
PROXY        ebpf
NODE API     10.0.0.5:4996
METRICS      127.0.0.1:9102
PODS         3 (1 CREATING, 2 RUNNING)
";
    assert_eq!(status_table(&status()), expected);
}

#[test]
fn status_table_says_what_is_missing() {
    let s = AgentStatus {
        containerd: ContainerdStatus {
            connected: false,
            error: Some("no socket at /run/containerd/containerd.sock".into()),
            namespace: None,
            socket: None,
        },
        ebpf: false,
        ebpf_programs: vec![],
        pods: 0,
        phases: BTreeMap::new(),
        scheduler_connected: false,
        ..status()
    };
    let table = status_table(&s);
    for row in [
        "SCHEDULER    http://127.0.0.1:4995 (not connected)\n",
        "CONTAINERD   not connected: no socket at /run/containerd/containerd.sock\n",
        "EBPF         not loaded (see the riklet's log)\n",
        "PODS         0\n",
    ] {
        assert!(table.contains(row), "{row:?} not in\n{table}");
    }
}

/// `-o json` prints the socket's document: today's keys stay, and a
/// document of an older riklet (without the new keys) still reads.
#[test]
fn status_document_keeps_its_keys() {
    let value = serde_json::to_value(status()).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "apiAddress",
            "containerd",
            "ebpf",
            "ebpfPrograms",
            "metricsAddress",
            "node",
            "phases",
            "pods",
            "proxy",
            "running",
            "scheduler",
            "schedulerConnected"
        ]
    );
    let older = r#"{"apiAddress":"a","containerd":{"connected":false,"error":"e"},"ebpf":false,
        "metricsAddress":"m","node":"n","pods":0,"proxy":"off","running":0,"scheduler":"s"}"#;
    let s: AgentStatus = serde_json::from_str(older).unwrap();
    assert!(!s.scheduler_connected && s.phases.is_empty());
}

fn pod(id: &str, state: ResourceStatus, containers: &[ContainerState]) -> AppStatus {
    AppStatus {
        realtime: RealtimeApp {
            app_id: id.into(),
            state,
            created_at: Some(1_000),
            restart_count: 4,
            internal_ip: Some("10.1.0.2".into()),
            ..RealtimeApp::default()
        },
        app: "web".into(),
        containers: containers
            .iter()
            .map(|&state| ContainerStatus {
                name: "c".into(),
                state,
                image: None,
                container_id: None,
                image_digest: None,
                pid: None,
                started_at: None,
                restart_count: 0,
                last_exit: None,
                reason: None,
                message: None,
                cgroup: String::new(),
                usage: None,
            })
            .collect(),
        ..AppStatus::default()
    }
}

#[test]
fn pods_table_has_a_row_per_pod() {
    use ContainerState::{Running, Waiting};
    let mut crashing = pod("web-bbbbb", ResourceStatus::Creating, &[Running, Waiting]);
    crashing.reason = Some("CrashLoopBackOff".into());
    crashing.realtime.internal_ip = None;
    crashing.realtime.created_at = Some(1_000 + 3 * 3600);
    let pods = [
        pod("web-aaaaa", ResourceStatus::Running, &[Running]),
        crashing,
    ];
    let expected = "\
NAME        APP   STATE      READY   RESTARTS   IP         AGE   REASON
web-aaaaa   web   RUNNING    1/1     4          10.1.0.2   3h
web-bbbbb   web   CREATING   1/2     4          -          42s   CrashLoopBackOff
";
    assert_eq!(pods_table(&pods, 1_000 + 3 * 3600 + 42), expected);
    assert_eq!(
        pods_table(&[], 0),
        "NAME   APP   STATE   READY   RESTARTS   IP   AGE   REASON\n"
    );
}

#[test]
fn ages_read_like_kubectl() {
    assert_eq!(age(-5), "0s");
    assert_eq!(age(119), "119s");
    assert_eq!(age(120), "2m");
    assert_eq!(age(7199), "119m");
    assert_eq!(age(7200), "2h");
    assert_eq!(age(3 * 86400), "3d");
}
