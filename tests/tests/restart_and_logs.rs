//! Restart policies, output capture without loss, and delete of a process
//! that ignores SIGTERM.

use std::time::Duration;

use riklet_e2e::{Cluster, Mode, alive, wait_for};

fn app(name: &str, policy: &str, args: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  restartPolicy: {policy}\n  containers:\n    - name: main\n      \
         exec: /bin/busybox\n      args: {args}\n"
    )
}

#[test]
fn restart_policies_and_lossless_output_capture() {
    let cluster = Cluster::start(Mode::Standalone);

    // OnFailure + success: runs once, ends TERMINATED, every line captured.
    let out = cluster.apply(
        &app("counter", "OnFailure", "[seq, \"1\", \"20000\"]"),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = cluster.wait_app("counter", "counter to complete", |a| {
        a["state"] == "TERMINATED"
    });
    assert_eq!(done["restartCount"], 0, "{done:#}");
    let instance = done["appId"].as_str().expect("appId");
    let log = cluster
        .log_dir()
        .join(format!("default_counter_{instance}/main/0.log"));
    let text = std::fs::read_to_string(&log).expect("log file");
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(&f[1..3], ["stdout", "F"], "bad record {l:?}");
            f[3].parse().expect("a number")
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=20000).collect::<Vec<u32>>(),
        "lines lost or reordered"
    );
    let decoded = cluster.rik_ok(&["logs", "counter", "--tail", "2"]);
    assert_eq!(decoded, "19999\n20000\n");

    // OnFailure + failure: restarted with back-off, restartCount grows,
    // stderr captured.
    let out = cluster.apply(&app("failing", "OnFailure", "[ls, /no-such-dir]"), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = cluster.wait_app("failing", "failing to be restarted twice", |a| {
        a["restartCount"].as_u64() >= Some(2)
    });
    assert_eq!(a["containers"][0]["lastExit"]["exitCode"], 1, "{a:#}");
    let logs = cluster.rik_ok(&["logs", "failing", "--raw"]);
    assert!(
        logs.contains(" stderr F ") && logs.contains("no-such-dir"),
        "{logs}"
    );

    // Never + failure: FAILED, not restarted.
    let out = cluster.apply(&app("once", "Never", "[\"false\"]"), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = cluster.wait_app("once", "once to fail", |a| a["state"] == "FAILED");
    assert_eq!(a["restartCount"], 0);
    assert_eq!(a["containers"][0]["lastExit"]["exitCode"], 1, "{a:#}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cluster.app("once")["restartCount"],
        0,
        "a Never pod was restarted"
    );

    // A start error (missing executable) is reported with its reason.
    let out = cluster.apply(
        "kind: Pod\nname: missing\nspec:\n  restartPolicy: Never\n  containers: [{name: c, exec: /no/such/binary}]\n",
        false,
    );
    assert!(out.status.success());
    let a = cluster.wait_app("missing", "missing to fail", |a| a["state"] == "FAILED");
    let logs = cluster.rik_ok(&["logs", "missing"]);
    assert!(logs.contains("/no/such/binary"), "{a:#} {logs}");

    for name in ["counter", "failing", "once", "missing"] {
        cluster.rik_ok(&["delete", name]);
    }
}

#[test]
fn delete_kills_a_process_that_ignores_sigterm_after_the_grace_period() {
    let cluster = Cluster::start(Mode::Standalone);
    let out = cluster.apply(
        &app(
            "stubborn",
            "Always",
            "[sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]",
        ),
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = cluster.app("stubborn");
    let pid = a["containers"][0]["pid"].as_i64().expect("pid");
    let instance = a["appId"].as_str().expect("appId").to_string();
    let cgroups = cluster.cgroup_dirs(&instance, "main");
    let started = std::time::Instant::now();
    cluster.rik_ok(&["delete", "stubborn"]);
    // Still there right after SIGTERM (it ignores it)...
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        alive(pid),
        "SIGTERM-ignoring process gone before the grace period"
    );
    // ...and killed once the grace period (3 s in the test config) is over.
    wait_for(
        Duration::from_secs(15),
        "SIGKILL after the grace period",
        || (!alive(pid) && cgroups.iter().all(|d| !d.exists())).then_some(()),
    );
    println!("deleted in {:?}", started.elapsed());
}
