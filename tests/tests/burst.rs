//! A burst end to end: 100 replicas of one bare-process app applied at
//! once, the riklet killed (`kill -9`) while they start, then all deleted
//! at once. Every replica ends RUNNING with one process (none started
//! twice, the half-started ones started again), and the delete leaves
//! nothing: processes, shims, cgroups, network namespaces, veths, address
//! leases, pod records, run directories.

use std::path::Path;
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, links_on, wait_for};
use serde_json::Value;

const REPLICAS: usize = 100;

fn manifest() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: burst\nreplicas: {REPLICAS}\nspec:\n  containers:\n    \
         - name: main\n      exec: /bin/busybox\n      args: [sleep, \"3600\"]\n"
    )
}

/// The app's instances once all of them are RUNNING.
fn running_instances(cluster: &Cluster) -> Option<Vec<Value>> {
    let out = cluster.rik(&["get", "app", "burst", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let all = v.as_array()?.clone();
    (all.len() == REPLICAS && all.iter().all(|i| i["state"] == "RUNNING")).then_some(all)
}

/// Whether the pod network namespace of `id` exists.
fn has_netns(id: &str) -> bool {
    Path::new("/run/netns").join(format!("rik-{id}")).exists()
}

/// Pids of the processes in a cgroup.
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Pids of the shims (`riklet-shim --run-dir DIR`) with DIR under `state`.
fn shims(state: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            // `riklet-shim --run-dir DIR`, or `riklet shim --run-dir DIR` of
            // a riklet before the dedicated binary.
            let is_shim = args.first().is_some_and(|a| a.ends_with(b"riklet-shim"))
                || args.iter().any(|a| *a == b"shim");
            is_shim
                && args.windows(2).any(|w| {
                    w[0] == b"--run-dir"
                        && Path::new(&*String::from_utf8_lossy(w[1])).starts_with(state)
                })
        })
        .collect()
}

#[test]
fn a_hundred_pods_start_across_a_riklet_crash_and_go_at_once_leaving_nothing() {
    // A separate scheduler: it outlives the riklet's crash.
    let mut cluster = Cluster::start(Mode::Separate);
    let out = cluster.apply(&manifest(), false);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kill -9 while the burst is under way: some containers started, some
    // being started, records saved or not.
    wait_for(Duration::from_secs(120), "20 containers started", || {
        let started = cluster.riklet_log().matches("container started").count();
        (started >= 20).then_some(())
    });
    cluster.kill_riklet();
    let log_before = cluster.riklet_log();
    let started_before = log_before.matches("container started").count();
    assert!(
        started_before < REPLICAS,
        "the crash came after the whole burst ({started_before} started): \
         it tests nothing"
    );
    cluster.start_riklet();
    let instances = wait_for(
        Duration::from_secs(180),
        "every replica RUNNING after the riklet's restart",
        || running_instances(&cluster),
    );

    // One process per replica, in its own cgroup: nothing started twice.
    let mut ids = Vec::new();
    for inst in &instances {
        let id = inst["appId"].as_str().expect("appId").to_string();
        let v2 = cluster.cgroup_dirs(&id, "main").pop().expect("v2 cgroup");
        let pids = procs(&v2);
        assert_eq!(
            pids.len(),
            1,
            "{id}: processes {pids:?} in {}",
            v2.display()
        );
        ids.push(id);
    }
    assert_eq!(
        shims(&cluster.state_dir()).len(),
        REPLICAS,
        "one shim per replica"
    );
    assert!(ids.iter().all(|id| has_netns(id)), "a replica has no netns");
    assert_eq!(links_on(&cluster.net.bridge).len(), REPLICAS);

    // All deleted at once.
    cluster.rik_ok(&["delete", "burst"]);
    wait_for(
        Duration::from_secs(180),
        "the riklet to forget every pod",
        || {
            cluster
                .local_pods()
                .as_array()
                .is_some_and(|p| p.is_empty())
                .then_some(())
        },
    );
    assert_eq!(shims(&cluster.state_dir()), Vec::<i32>::new(), "shims left");
    assert_eq!(
        links_on(&cluster.net.bridge),
        Vec::<String>::new(),
        "veths left"
    );
    let state = cluster.state_dir();
    for id in &ids {
        assert!(!has_netns(id), "netns of {id} left");
        for dir in cluster.cgroup_dirs(id, "main") {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        assert!(!state.join("run").join(id).exists(), "run dir of {id} left");
        assert!(
            !state.join("pods").join(format!("{id}.json")).exists(),
            "record of {id} left"
        );
    }
    let ipam: Value =
        serde_json::from_slice(&std::fs::read(state.join("ipam.json")).expect("ipam.json"))
            .expect("ipam.json is JSON");
    assert_eq!(ipam["leases"], serde_json::json!({}), "leases left: {ipam}");
}
