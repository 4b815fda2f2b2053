//! The shim of bare processes: the dedicated `riklet-shim` binary is what
//! runs as the process's parent, the process is created in its cgroups,
//! the start's steps reach the riklet's log, and a riklet whose shim binary
//! is missing fails the pod naming the path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, Options, wait_for};

const SLEEPER: &str = "kind: Pod\nname: sleeper\nspec:\n  restartPolicy: Never\n  \
     containers: [{name: c, exec: /bin/busybox, args: [sleep, \"3600\"], resources: {memory: 32Mi}}]\n";

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`).
fn ppid(pid: i64) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat of the process");
    let after = stat.rsplit_once(") ").expect("stat format").1;
    after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid field")
}

fn cmdline(pid: i64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn the_dedicated_shim_starts_the_process_in_its_cgroups_and_logs_the_steps() {
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            log_filter: Some("info,riklet::steps=debug"),
            ..Options::default()
        },
    );
    let out = cluster.apply(SLEEPER, true);
    assert!(
        out.status.success(),
        "apply --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.app("sleeper");
    assert_eq!(app["state"], "RUNNING", "{app:#}");
    let instance = app["appId"].as_str().expect("appId").to_string();
    let pid = app["containers"][0]["pid"].as_i64().expect("pid");

    // Its parent is riklet-shim, the binary next to the riklet's, run with
    // the container's run directory.
    let shim = ppid(pid);
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).expect("shim exe");
    let riklet_dir = std::fs::canonicalize(riklet_e2e::bin_dir()).expect("bin dir");
    assert_eq!(exe, riklet_dir.join("riklet-shim"), "the shim's executable");
    let run_dir: PathBuf = cluster.state_dir().join("run").join(&instance).join("c");
    assert_eq!(
        cmdline(shim)[1..],
        ["--run-dir".to_string(), run_dir.display().to_string()],
        "the shim's command line"
    );

    // In its cgroup in every hierarchy (v2: created there by clone3).
    for dir in cluster.cgroup_dirs(&instance, "c") {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "pid {pid} not in {}",
            dir.display()
        );
    }

    // started.json holds the shim's own step instants, in order.
    let started: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("started.json")).expect("started.json"))
            .expect("started.json is JSON");
    let steps = &started["steps"];
    let at = |k: &str| {
        steps[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {started}"))
    };
    assert!(
        at("main") <= at("detached")
            && at("detached") <= at("prepared")
            && at("prepared") <= at("spawned"),
        "{started}"
    );

    // Every step of the start reached the riklet's log, for this pod.
    let log = wait_for(Duration::from_secs(5), "the commit step in the log", || {
        let log = cluster.riklet_log();
        log.lines()
            .any(|l| l.contains("start step") && l.contains(&instance) && l.contains("commit"))
            .then_some(log)
    });
    for step in [
        "network",
        "cgroup",
        "run dir",
        "shim spawn",
        "shim exec",
        "child spawn",
        "shim report",
        "total",
        "commit",
    ] {
        assert!(
            log.lines().any(|l| l.contains("start step")
                && l.contains(&instance)
                && l.contains(&format!("\"{step}\""))),
            "no step {step:?} for {instance} in the riklet's log"
        );
    }
    cluster.rik_ok(&["delete", "sleeper"]);
}

#[test]
fn a_missing_shim_binary_fails_the_pod_naming_its_path() {
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            without_shim: true,
            ..Options::default()
        },
    );
    let missing = cluster.dir.path().join("bin").join("riklet-shim");
    assert!(!Path::new(&missing).exists());
    // Said at start-up already.
    let log = cluster.riklet_log();
    assert!(
        log.contains("the shim binary is missing") && log.contains(&missing.display().to_string()),
        "no start-up error naming {}:\n{log}",
        missing.display()
    );

    let out = cluster.apply(SLEEPER, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.wait_app("sleeper", "sleeper to fail", |a| a["state"] == "FAILED");
    let text = app.to_string();
    assert!(
        text.contains(&format!("the shim binary {} is missing", missing.display())),
        "the reason does not name the missing shim: {app:#}"
    );
    cluster.rik_ok(&["delete", "sleeper"]);
}
