//! Two riklets on one machine joined to one `rik-scheduler`, each with its
//! own state dir, node name, cgroup root, bpffs pins, bridge, pod CIDR,
//! nftables tables, ports, log dir and netns prefix: an app's replicas
//! spread over both; a node that hangs is not ready after the scheduler's
//! heartbeat timeout, and killed and kept down, its instances run again on
//! the other; when it comes back its stale pods are
//! destroyed (completed ones too) without touching the other node's pods of
//! the same instances (same ids), so that each instance runs once; nothing
//! of either node is left at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, Options, http_get_at, links_on, netns_named, wait_for};
use serde_json::Value;

const APP: &str = "spread";
const REPLICAS: usize = 4;
const PORT: u16 = 8080;

/// Busybox's web server in each pod's own network namespace (no `ports`:
/// each pod is reached at its own IP).
fn manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {APP}\nreplicas: {REPLICAS}\nspec:\n  containers:\n    - name: httpd\n      \
         exec: /bin/busybox\n      args: [httpd, -f, -p, \"{PORT}\", -h, /usr/share/doc/busybox-static]\n      \
         resources: {{cpu: 100m, memory: 16Mi}}\n"
    )
}

/// An app whose two replicas (one per node) run to completion and stay,
/// completed, on their nodes.
const ONCE: &str = "apiVersion: v1\nkind: Pod\nname: once\nreplicas: 2\nspec:\n  restartPolicy: Never\n  \
                    containers:\n    - name: done\n      exec: /bin/true\n";

/// The app's instances as `rik get app NAME -o json` lists them.
fn instances(cluster: &Cluster) -> Vec<Value> {
    instances_of(cluster, APP)
}

fn instances_of(cluster: &Cluster, name: &str) -> Vec<Value> {
    let app = cluster.app(name);
    app.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{REPLICAS} replicas give an array: {app:#}"))
}

/// Waits until every replica is RUNNING with an address, and returns
/// instance id → node it runs on.
fn wait_running(
    cluster: &Cluster,
    what: &str,
    on: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    wait_for(Duration::from_secs(60), what, || {
        let all = instances(cluster);
        let placed: BTreeMap<String, String> = all
            .iter()
            .filter(|i| i["state"] == "RUNNING" && i["internalIp"].is_string())
            .filter_map(|i| Some((i["appId"].as_str()?.into(), i["runsOn"].as_str()?.into())))
            .filter(|(_, node): &(String, String)| on(node))
            .collect();
        (all.len() == REPLICAS && placed.len() == REPLICAS).then_some(placed)
    })
}

/// The cgroup v2 directory of a cluster's pods.
fn v2_root(cluster: &Cluster) -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let mount = if unified.join("cgroup.procs").exists() {
        unified
    } else {
        Path::new("/sys/fs/cgroup")
    };
    mount.join(&cluster.cgroup_root)
}

/// Instance id → processes in its `httpd` container's cgroup, on one node.
fn processes(cluster: &Cluster) -> BTreeMap<String, usize> {
    let Ok(dirs) = std::fs::read_dir(v2_root(cluster)) else {
        return BTreeMap::new();
    };
    dirs.flatten()
        .filter_map(|d| {
            let name = d.file_name().to_string_lossy().into_owned();
            let instance = name.strip_suffix("_httpd")?.to_string();
            let procs = std::fs::read_to_string(d.path().join("cgroup.procs")).ok()?;
            Some((instance, procs.lines().count()))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn pod_ids(cluster: &Cluster) -> Vec<String> {
    let pods = cluster.local_pods();
    pods.as_array()
        .unwrap_or_else(|| panic!("riklet pods: {pods:#}"))
        .iter()
        .filter_map(|p| p["appId"].as_str().map(String::from))
        .collect()
}

fn node_ready(cluster: &Cluster, node: &str) -> Option<bool> {
    let nodes: Value =
        serde_json::from_str(&cluster.rik_ok(&["get", "nodes", "-o", "json"])).ok()?;
    nodes.as_array()?.iter().find(|n| n["id"] == node)?["ready"].as_bool()
}

/// Every replica answers at its own IP (the node's pods are wired to the
/// node's own bridge, in their own namespaces).
fn assert_answering(cluster: &Cluster) {
    for i in instances(cluster) {
        let ip = i["internalIp"].as_str().and_then(|s| s.parse().ok());
        let ip = ip.unwrap_or_else(|| panic!("no internalIp in {i:#}"));
        let answer = wait_for(Duration::from_secs(10), "a replica to answer", || {
            http_get_at(ip, PORT, "/copyright").ok()
        });
        assert!(
            answer.0.contains("200"),
            "{} at {ip}: {answer:?}",
            i["appId"]
        );
    }
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn two_riklets_share_a_scheduler_move_instances_and_clean_up() {
    let pid = std::process::id();
    let mut a = Cluster::start_with(
        Mode::Separate,
        Options {
            netns_prefix: Some(format!("rik{pid}a-")),
            heartbeat_timeout: Some(Duration::from_secs(3)),
            ..Options::default()
        },
    );
    let b = Cluster::start_with(
        Mode::Separate,
        Options {
            join_scheduler: Some(a.scheduler_port),
            netns_prefix: Some(format!("rik{pid}b-")),
            ..Options::default()
        },
    );
    a.wait_node_ready();
    // Both node monitors and both Node Proxies' eBPF programs loaded side
    // by side (the proxies both at the cgroup v2 root).
    for node in [&a, &b] {
        let status = node.local_status();
        assert_eq!(status["ebpf"], true, "{}: {status:#}", node.node);
        assert_eq!(status["proxy"], "ebpf", "{}: {status:#}", node.node);
    }
    let on_a = spread_over(&a, &b);
    lose(&mut a, &b, &on_a);
    come_back(&mut a, &b);
    delete_and_tear_down(a, b);
}

/// Deploys both apps: the web servers' replicas spread over both nodes,
/// one completed replica of `once` on each. Returns the web servers on a.
fn spread_over(a: &Cluster, b: &Cluster) -> Vec<String> {
    let out = a.apply(&manifest(), true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply --wait: {stderr}");
    let placed = wait_running(a, "every replica RUNNING", |_| true);
    for node in [&a.node, &b.node] {
        let here = placed.values().any(|n| n == node);
        assert!(here, "no replica on {node}: {placed:?}");
    }
    let wide = a.rik_ok(&["get", "app", APP, "-o", "wide"]);
    assert!(wide.contains(&a.node) && wide.contains(&b.node), "{wide}");
    assert_answering(a);

    let out = a.apply(ONCE, false);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(30),
        "a completed replica of once on each node",
        || {
            let done: Vec<Value> = instances_of(a, "once")
                .into_iter()
                .filter(|i| i["state"] == "TERMINATED")
                .map(|i| i["runsOn"].clone())
                .collect();
            [&a.node, &b.node]
                .iter()
                .all(|n| done.contains(&Value::from(n.as_str())))
                .then_some(())
        },
    );
    let on_a: Vec<String> = placed
        .into_iter()
        .filter(|(_, n)| *n == a.node)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        pod_ids(a).len(),
        on_a.len() + 1,
        "a keeps its completed pod"
    );
    on_a
}

/// Node a hangs (SIGSTOP: its connection stays open, its heartbeats stop):
/// not ready after the scheduler's heartbeat timeout. Then killed and kept
/// down: its instances RUNNING on b (same ids: a's own pods still run, in
/// namespaces of a's prefix).
fn lose(a: &mut Cluster, b: &Cluster, on_a: &[String]) {
    let riklet_a = nix::unistd::Pid::from_raw(a.riklet_pid().expect("a's riklet") as i32);
    nix::sys::signal::kill(riklet_a, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP a");
    wait_for(Duration::from_secs(30), "node a not ready", || {
        (node_ready(b, &a.node) == Some(false)).then_some(())
    });
    a.kill_riklet();
    wait_running(b, "every replica RUNNING on node b", |n| n == b.node);
    assert_answering(b);
    let stale = processes(a);
    for id in on_a {
        let msg = format!("a's pod {id} keeps running while a is down: {stale:?}");
        assert_eq!(stale.get(id), Some(&1), "{msg}");
    }
}

/// Node a back: its stale pods are destroyed (the completed one too), b's
/// pods of the same instances keep their network, each instance runs once.
fn come_back(a: &mut Cluster, b: &Cluster) {
    a.start_riklet();
    a.wait_node_ready();
    wait_for(
        Duration::from_secs(30),
        "node a's stale pods destroyed",
        || (pod_ids(a).is_empty() && processes(a).is_empty()).then_some(()),
    );
    let placed = wait_running(b, "every replica still on node b", |n| n == b.node);
    let running = processes(b);
    assert!(
        running.keys().eq(placed.keys()),
        "each instance runs on b: {running:?}"
    );
    assert!(
        running.values().all(|n| *n == 1),
        "one process per instance: {running:?}"
    );
    assert!(
        netns_named(&a.netns_prefix).is_empty(),
        "a's pod namespaces left"
    );
    for id in placed.keys() {
        let ns = format!("{}{id}", b.netns_prefix);
        assert_eq!(
            netns_named(&ns),
            std::slice::from_ref(&ns),
            "b's namespace of {id}"
        );
    }
    assert!(
        links_on(&a.net.bridge).is_empty(),
        "veths left on a's bridge"
    );
    assert_eq!(
        links_on(&b.net.bridge).len(),
        netns_named(&b.netns_prefix).len(),
        "one veth on b's bridge per pod namespace of b"
    );
    assert_answering(b);
}

/// Both apps deleted, both riklets stopped, both clusters torn down:
/// nothing of either node is left.
fn delete_and_tear_down(mut a: Cluster, mut b: Cluster) {
    for app in [APP, "once"] {
        let out = a.rik_ok(&["delete", app]);
        assert!(out.contains("deleted"), "{out}");
    }
    wait_for(Duration::from_secs(30), "b's pods stopped", || {
        (pod_ids(&b).is_empty() && processes(&b).is_empty()).then_some(())
    });
    for node in [&mut b, &mut a] {
        node.stop_riklet();
        let name = &node.node;
        assert!(
            netns_named(&node.netns_prefix).is_empty(),
            "{name} left namespaces"
        );
        assert!(links_on(&node.net.bridge).is_empty(), "{name} left veths");
    }
    let nodes = [&a, &b].map(|c| {
        let net = &c.net;
        (
            net.bridge.clone(),
            net.table.clone(),
            c.pin_dir.clone(),
            v2_root(c),
        )
    });
    drop(b);
    drop(a);
    let tables = nft_tables();
    for (bridge, table, pins, cgroups) in nodes {
        assert!(!link_exists(&bridge), "bridge {bridge} left");
        for t in [table.clone(), format!("{table}_proxy")] {
            assert!(
                !tables.contains(&format!("ip {t}\n")),
                "nft table {t} left: {tables}"
            );
        }
        assert!(!pins.exists(), "pins {} left", pins.display());
        assert!(!cgroups.exists(), "cgroup {} left", cgroups.display());
    }
}
