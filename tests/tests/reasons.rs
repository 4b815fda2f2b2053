//! Status reasons and events, end to end: what `rik get apps` shows in its
//! STATUS column while a pod fails to start, crash-loops, cannot pull its
//! image, completes, is OOM killed or is being deleted (kubectl's words),
//! and what `rik describe app` and `rik get events` list.

use std::time::Duration;

use riklet_e2e::registry::Registry;
use riklet_e2e::{Cluster, Mode, Options, wait_for};

/// A functional deadline: the state must show, however long the machine
/// takes (no speed is asserted).
const SOON: Duration = Duration::from_secs(60);

/// A bare-process app of one container `main`.
fn app(name: &str, policy: &str, exec: &str, args: &str, extra: &str) -> String {
    format!(
        "kind: Pod\nname: {name}\nspec:\n  restartPolicy: {policy}\n  containers:\n    - name: main\n      \
         exec: {exec}\n      args: {args}\n{extra}"
    )
}

/// The STATUS cell of `name` in a `rik get apps` table line, if the line
/// is its row.
fn status_of<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut cells = line.split_whitespace();
    (cells.next() == Some(name)).then(|| cells.next()).flatten()
}

/// Follows `rik get apps -w` until `name` shows each of `statuses`, in
/// that order.
fn watch_statuses(cluster: &Cluster, name: &str, statuses: &[&str], apply: impl FnOnce()) {
    let watch = cluster.rik_follow(&["get", "apps", "-w"]);
    apply();
    for want in statuses {
        let lines = watch.lines_until(SOON, &format!("{name} {want}"), |l| {
            status_of(l, name) == Some(want)
        });
        println!("{lines:#?}");
    }
}

/// The `rik describe app` event lines (`AGE TYPE REASON OBJECT MESSAGE`).
fn event_lines(describe: &str) -> Vec<String> {
    describe
        .lines()
        .skip_while(|l| *l != "Events:")
        .skip(2)
        .map(str::trim)
        .map(String::from)
        .collect()
}

#[test]
fn a_missing_executable_shows_run_container_error_then_crash_loop_back_off() {
    let cluster = Cluster::start(Mode::Standalone);
    let manifest = app("ghost", "Always", "/nonexistent/bin", "[]", "");
    watch_statuses(
        &cluster,
        "ghost",
        &["RunContainerError", "CrashLoopBackOff"],
        || {
            let out = cluster.apply(&manifest, false);
            assert!(out.status.success(), "{out:?}");
        },
    );
    // The wide table and the one-app table say the same.
    let wide = cluster.rik_ok(&["get", "apps", "-o", "wide"]);
    let row = wide.lines().find(|l| l.starts_with("ghost")).expect("row");
    assert!(
        ["RunContainerError", "CrashLoopBackOff", "ContainerCreating"]
            .contains(&status_of(row, "ghost").unwrap_or_default()),
        "{wide}"
    );
    let describe = cluster.rik_ok(&["describe", "app", "ghost"]);
    assert!(
        describe.contains("No such file or directory"),
        "the start error is described: {describe}"
    );
    cluster.rik_ok(&["delete", "ghost"]);
}

#[test]
fn an_image_that_cannot_be_pulled_shows_err_image_pull_then_image_pull_back_off() {
    let reg = Registry::start();
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries: vec![reg.host()],
            ..Options::default()
        },
    );
    let manifest = format!(
        "kind: Pod\nname: nopull\nspec:\n  containers:\n    - name: main\n      image: \"{}/busybox:no-such-tag\"\n",
        reg.host()
    );
    watch_statuses(
        &cluster,
        "nopull",
        &["ErrImagePull", "ImagePullBackOff"],
        || {
            let out = cluster.apply(&manifest, false);
            assert!(out.status.success(), "{out:?}");
        },
    );
    let events = cluster.rik_ok(&["get", "events", "--app", "nopull"]);
    assert!(
        events.contains("Pulling") && events.contains("BackOff"),
        "{events}"
    );
    cluster.rik_ok(&["delete", "nopull"]);
}

#[test]
fn a_process_that_exits_0_under_on_failure_shows_completed() {
    let cluster = Cluster::start(Mode::Standalone);
    let manifest = app("oneshot", "OnFailure", "/bin/busybox", "[\"true\"]", "");
    watch_statuses(&cluster, "oneshot", &["Completed"], || {
        let out = cluster.apply(&manifest, false);
        assert!(out.status.success(), "{out:?}");
    });
    let table = cluster.rik_ok(&["get", "app", "oneshot"]);
    assert!(table.contains("Completed"), "{table}");
    cluster.rik_ok(&["delete", "oneshot"]);
}

#[test]
fn an_oom_killed_container_shows_oom_killed_and_the_event() {
    let cluster = Cluster::start(Mode::Standalone);
    // 16 MiB limit, a 64 MiB buffer.
    let manifest = app(
        "oomer",
        "Never",
        "/bin/busybox",
        "[dd, if=/dev/zero, of=/dev/null, bs=64M]",
        "      resources: {memory: 16Mi}\n",
    );
    watch_statuses(&cluster, "oomer", &["OOMKilled"], || {
        let out = cluster.apply(&manifest, false);
        assert!(out.status.success(), "{out:?}");
    });
    let describe = wait_for(SOON, "the OOM event in describe", || {
        let text = cluster.rik_ok(&["describe", "app", "oomer"]);
        event_lines(&text)
            .iter()
            .any(|l| l.contains("Warning") && l.contains("OOMKilled"))
            .then_some(text)
    });
    assert!(describe.contains("Reason:         OOMKilled"), "{describe}");
    assert!(
        describe.contains("Limits:         memory 16Mi"),
        "{describe}"
    );
    cluster.rik_ok(&["delete", "oomer"]);
}

#[test]
fn a_deleted_app_is_terminating_during_its_grace_period_and_its_events_go_with_it() {
    let cluster = Cluster::start(Mode::Standalone);
    // Ignores SIGTERM: outlives the grace period (3 s in the tests).
    let manifest = app(
        "stubborn",
        "Always",
        "/bin/busybox",
        "[sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]",
        "",
    );
    let out = cluster.apply(&manifest, true);
    assert!(out.status.success(), "{out:?}");
    let instance = cluster.app("stubborn")["appId"]
        .as_str()
        .expect("appId")
        .to_string();
    watch_statuses(&cluster, "stubborn", &["Terminating"], || {
        cluster.rik_ok(&["delete", "stubborn"]);
    });
    // The scheduler shows Terminating at once; the riklet's Killing event
    // comes with its next report.
    wait_for(SOON, "the Killing event in describe", || {
        let describe = cluster.rik_ok(&["describe", "app", "stubborn"]);
        event_lines(&describe)
            .iter()
            .any(|l| l.contains("Killing"))
            .then_some(())
    });
    let events = cluster.rik_ok(&["get", "events"]);
    assert!(
        events.contains(&instance),
        "listed while it terminates: {events}"
    );
    wait_for(SOON, "the app to be gone", || {
        let out = cluster.rik(&["get", "app", "stubborn"]);
        (!out.status.success()).then_some(())
    });
    let events = cluster.rik(&["get", "events"]);
    let listed = String::from_utf8_lossy(&events.stdout);
    assert!(
        !listed.contains(&instance),
        "events outlived the app: {listed}"
    );
    let one = cluster.rik(&["get", "events", "--app", "stubborn"]);
    assert!(!one.status.success(), "{one:?}");
}

#[test]
fn describe_lists_started_exited_and_back_off_in_order_with_their_ages() {
    let cluster = Cluster::start(Mode::Standalone);
    let manifest = app(
        "exiter",
        "Always",
        "/bin/busybox",
        "[sh, -c, \"exit 3\"]",
        "",
    );
    let follow = cluster.rik_follow(&["get", "events", "--app", "exiter", "-w"]);
    // The app does not exist yet: the watch lists nothing, then follows.
    std::thread::sleep(Duration::from_millis(500));
    let out = cluster.apply(&manifest, false);
    assert!(out.status.success(), "{out:?}");
    let lines = wait_for(SOON, "Started, Exited (code 3), BackOff", || {
        let text = cluster.rik_ok(&["describe", "app", "exiter"]);
        let lines = event_lines(&text);
        let at = |reason: &str, from: usize| {
            lines
                .iter()
                .skip(from)
                .position(|l| l.split_whitespace().nth(2) == Some(reason))
                .map(|i| i + from)
        };
        let started = at("Started", 0)?;
        let exited = at("Exited", started)?;
        let backoff = at("BackOff", exited)?;
        assert!(lines[exited].contains("(code 3)"), "{text}");
        Some(vec![
            lines[started].clone(),
            lines[exited].clone(),
            lines[backoff].clone(),
        ])
    });
    for l in &lines {
        // AGE first: `0s`, `12s`, `2m`...
        let age = l.split_whitespace().next().unwrap_or_default();
        assert!(age.ends_with('s') || age.ends_with('m'), "an age in {l:?}");
    }
    let streamed = follow.lines_until(SOON, "the BackOff event streamed", |l| {
        l.contains("BackOff")
    });
    assert!(streamed[0].starts_with("AGE"), "{streamed:#?}");
    assert!(
        streamed.iter().any(|l| l.contains("Started")),
        "{streamed:#?}"
    );
    cluster.rik_ok(&["delete", "exiter"]);
}
