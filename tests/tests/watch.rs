//! The scheduler's watch, end to end: `rik apply --wait` woken by it (the
//! scheduler's own call counters say so), a watch that resumes across a
//! scheduler restart without missing a change, and `rik get apps -w`.

use std::collections::BTreeMap;
use std::time::Duration;

use riklet_e2e::{Cluster, Mode, wait_for};
use serde_json::Value;

/// Generous bound for a pod to start or a change to arrive.
const SOON: Duration = Duration::from_secs(40);

fn sleeper(name: &str) -> String {
    format!(
        "kind: Pod\nname: {name}\nspec:\n  containers:\n    - name: main\n      exec: /bin/busybox\n      \
         args: [sleep, \"3600\"]\n"
    )
}

fn assert_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "rik failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn apply_wait_is_woken_by_the_watch_not_by_polling() {
    for mode in [Mode::Standalone, Mode::Separate] {
        let cluster = Cluster::start(mode);
        let before = cluster.api_calls();
        let out = assert_ok(&cluster.apply(&sleeper("waited"), true));
        assert_eq!(out, "app/waited created\napp/waited running\n");
        let after = cluster.api_calls();
        let served: BTreeMap<&str, u64> = after
            .iter()
            .map(|(m, n)| (m.as_str(), n - before.get(m).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            served,
            BTreeMap::from([("Apply", 1), ("Watch", 1)]),
            "{mode:?}: calls served for `rik apply --wait` (no GetApp)"
        );
        assert_eq!(cluster.app("waited")["state"], "RUNNING", "{mode:?}");
        cluster.rik_ok(&["delete", "waited"]);
    }
}

/// One line of `rik get apps -w -o json`: (type, revision, app name, app
/// status).
fn event(line: &str) -> (String, u64, String, String) {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&v["type"]),
        v["revision"].as_u64().expect("revision"),
        text(&v["app"]["name"]),
        text(&v["app"]["status"]),
    )
}

#[test]
fn a_watch_resumes_after_a_scheduler_restart_without_missing_a_change() {
    let mut cluster = Cluster::start(Mode::Separate);
    let watch = cluster.rik_follow(&["get", "apps", "-w", "-o", "json"]);
    let synced = event(&watch.line(SOON, "the listing"));
    assert_eq!(synced.0, "SYNCED", "no apps yet");

    // What the watch says, applied in order: the client's view.
    let mut view: BTreeMap<String, String> = BTreeMap::new();
    let mut last = synced.1;
    let mut follow_until = |what: &str, done: &dyn Fn(&BTreeMap<String, String>) -> bool| {
        let mut reached = false;
        while !reached {
            let (kind, revision, name, status) = event(&watch.line(SOON, what));
            assert!(revision > last, "revision {revision} after {last}");
            last = revision;
            match kind.as_str() {
                "ADDED" | "MODIFIED" => view.insert(name, status),
                "DELETED" => view.remove(&name),
                other => panic!("unexpected {other} while following"),
            };
            reached = done(&view);
        }
    };

    assert_ok(&cluster.apply(&sleeper("keep"), true));
    let brief = "kind: Pod\nname: brief\nspec:\n  restartPolicy: Never\n  containers:\n    - name: main\n      \
                 exec: /bin/busybox\n      args: [sleep, \"3\"]\n";
    assert_ok(&cluster.apply(brief, true));
    follow_until("keep and brief RUNNING", &|v| {
        v.get("keep").is_some_and(|s| s == "RUNNING")
            && v.get("brief").is_some_and(|s| s == "RUNNING")
    });

    // The scheduler stops; brief completes meanwhile (its node tells the
    // scheduler when it is back).
    cluster.stop_scheduler();
    wait_for(SOON, "brief to complete on the node", || {
        let pods = cluster.local_pods();
        pods.as_array()?
            .iter()
            .any(|p| p["app"] == "brief" && p["state"] == "TERMINATED")
            .then_some(())
    });
    cluster.start_scheduler();
    cluster.wait_node_ready();
    // Changes right after the restart.
    cluster.rik_ok(&["delete", "keep"]);
    assert_ok(&cluster.apply(&sleeper("late"), true));

    follow_until("brief COMPLETED, keep gone, late RUNNING", &|v| {
        v.get("brief").is_some_and(|s| s == "COMPLETED")
            && !v.contains_key("keep")
            && v.get("late").is_some_and(|s| s == "RUNNING")
    });
    let listed: Value =
        serde_json::from_str(&cluster.rik_ok(&["get", "apps", "-o", "json"])).expect("apps JSON");
    let listed: BTreeMap<String, String> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("status"))
        })
        .collect();
    assert_eq!(view, listed, "the watch ends in the scheduler's state");
    assert!(
        !watch.stderr_text().contains("could not resume"),
        "resumed, not listed again: {}",
        watch.stderr_text()
    );
    for name in ["brief", "late"] {
        cluster.rik_ok(&["delete", name]);
    }
}

/// The cells of a table line.
fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn get_apps_watch_prints_an_added_a_running_and_a_deleted_app() {
    let cluster = Cluster::start(Mode::Standalone);
    let mut watch = cluster.rik_follow(&["get", "apps", "-w"]);
    // The listing is done (and empty) before the app exists.
    wait_for(SOON, "the empty listing", || {
        watch
            .stderr_text()
            .contains("No resources found.")
            .then_some(())
    });
    let out = cluster.apply(&sleeper("shown"), false);
    assert_ok(&out);
    let lines = watch.lines_until(SOON, "shown Running", |l| {
        cells(l)[..2] == ["shown", "Running"]
    });
    assert_eq!(cells(&lines[0]), ["NAME", "STATUS", "AGE"], "{lines:#?}");
    let added = cells(&lines[1]);
    assert!(
        added[0] == "shown" && ["Pending", "ContainerCreating"].contains(&added[1]),
        "added before running: {lines:#?}"
    );
    cluster.rik_ok(&["delete", "shown"]);
    let lines = watch.lines_until(SOON, "shown DELETED", |l| {
        cells(l)[..2] == ["shown", "DELETED"]
    });
    // Terminating while its pod stops, then gone.
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| cells(l)[..2] == ["shown", "Terminating"]),
        "{lines:#?}"
    );
    assert!(watch.running(), "rik get apps -w runs until stopped");
}
