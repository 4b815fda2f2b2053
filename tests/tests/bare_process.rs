//! Bare-process pods end to end: deploy in the pod's own network namespace
//! (reached at its `internalIp`), serve, survive a riklet crash, restart
//! after a crash of the app, count traffic with eBPF, delete without
//! leftovers (process, cgroups, netns, veth, address lease), survive a
//! scheduler restart (a `hostNetwork` pod on 127.0.0.1), refuse bad input.

use std::path::Path;
use std::time::Duration;

use riklet_e2e::{
    Cluster, Mode, alive, free_port, http_app, http_app_host_network, http_get, http_get_at,
    links_on, pod_ip, wait_for,
};
use serde_json::Value;

fn pid_of(app: &Value) -> i64 {
    app["containers"][0]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {app:#}"))
}

fn network(cluster: &Cluster, instance: &str) -> (u64, u64) {
    let pods = cluster.local_pods();
    let pod = pods
        .as_array()
        .expect("pods array")
        .iter()
        .find(|p| p["appId"] == instance)
        .unwrap_or_else(|| panic!("pod {instance} not in riklet pods: {pods:#}"));
    let n = &pod["network"];
    (
        n["rxBytes"].as_u64().unwrap_or(0),
        n["txBytes"].as_u64().unwrap_or(0),
    )
}

#[test]
fn standalone_pod_lifecycle_survives_crashes_and_leaves_nothing() {
    // A descriptor the riklet inherits, as from a lock held by a script:
    // it must not reach the pod.
    let inherited = tempfile::NamedTempFile::new().expect("marker file");
    nix::fcntl::fcntl(
        &inherited,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clearing close-on-exec");
    let mut cluster = Cluster::start(Mode::Standalone);
    let port = free_port();
    let out = cluster.apply(&http_app("web", port), true);
    assert!(
        out.status.success(),
        "apply --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deployed, RUNNING, answering on its port at its pod IP (in its own
    // network namespace), as the unprivileged user.
    let app = cluster.app("web");
    assert_eq!(app["state"], "RUNNING", "{app:#}");
    assert_eq!(app["runsOn"], cluster.node.as_str());
    let instance = app["appId"].as_str().expect("appId").to_string();
    let pid = pid_of(&app);
    let ip = pod_ip(&app);
    assert!(
        ip.to_string()
            .starts_with(&format!("10.214.{}.", cluster.net.n)),
        "pod IP {ip} outside {}",
        cluster.net.cidr
    );
    let netns = Path::new("/run/netns").join(format!("rik-{instance}"));
    let pod_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("pod netns");
    assert_ne!(
        pod_ns,
        std::fs::read_link("/proc/self/ns/net").expect("host netns"),
        "the app runs in the host's network namespace"
    );
    assert_eq!(
        std::fs::metadata(&netns)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok(),
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok(),
        "the app is not in {}",
        netns.display()
    );
    assert_eq!(
        links_on(&cluster.net.bridge).len(),
        1,
        "one veth on the bridge"
    );
    // The app's port on the node's loopback: the Node Proxy's.
    let (status, _) = http_get(port, "/copyright").expect("GET the app through the Node Proxy");
    assert!(status.contains("200"), "{status}");
    let (status, body) = http_get_at(ip, port, "/copyright").expect("GET the app");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("debianized"), "unexpected body");
    let open: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the app's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !open.iter().any(|target| target == inherited.path()),
        "the riklet's inherited descriptor reached the pod: {open:?}"
    );
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    assert!(
        proc_status.contains("NoNewPrivs:\t1"),
        "no_new_privs not set"
    );
    let uid_line = proc_status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        !uid_line.split_whitespace().skip(1).any(|u| u == "0"),
        "app runs as root: {uid_line}"
    );
    let cgroups = cluster.cgroup_dirs(&instance, "httpd");
    for dir in &cgroups {
        assert!(dir.exists(), "cgroup {} missing", dir.display());
    }
    let v2_procs =
        std::fs::read_to_string(cgroups.last().unwrap().join("cgroup.procs")).expect("v2 procs");
    assert!(
        v2_procs.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} not in the v2 cgroup"
    );

    // eBPF counters of the pod's cgroup grow when it serves traffic.
    let (rx0, tx0) = network(&cluster, &instance);
    for _ in 0..20 {
        http_get_at(ip, port, "/copyright").expect("GET");
    }
    let (rx1, tx1) = wait_for(Duration::from_secs(5), "eBPF counters to grow", || {
        let (rx, tx) = network(&cluster, &instance);
        (rx > rx0 && tx > tx0 + 20 * 1000).then_some((rx, tx))
    });
    println!("eBPF counters: rx {rx0} -> {rx1}, tx {tx0} -> {tx1}");

    // Logs captured in the CRI format and served by `rik logs`.
    let logs = wait_for(Duration::from_secs(5), "request lines in the logs", || {
        let l = cluster.rik_ok(&["logs", "web", "--tail", "3"]);
        l.contains("/copyright").then_some(l)
    });
    assert!(logs.lines().count() <= 3, "tail 3 gave: {logs}");
    let file = cluster
        .log_dir()
        .join(format!("default_web_{instance}"))
        .join("httpd/0.log");
    let text = std::fs::read_to_string(&file).expect("CRI log file");
    assert!(text.lines().all(|l| {
        l.split(' ')
            .nth(1)
            .is_some_and(|s| s == "stdout" || s == "stderr")
    }));

    // The control socket is for root only.
    let socket =
        std::fs::metadata(cluster.state_dir().join("riklet.sock")).expect("control socket");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&socket.permissions()) & 0o777,
        0o600
    );

    // kill -9 of the riklet: the pod survives, is adopted, not restarted.
    cluster.kill_riklet();
    assert!(alive(pid), "the app died with the riklet");
    // Meanwhile, leftovers nobody owns: a cgroup with a process in it and a
    // run directory. The next riklet must remove both.
    let ghost_cgroups = cluster.cgroup_dirs("ghost-x1", "c");
    let mut ghost = std::process::Command::new("/bin/busybox")
        .args(["sleep", "300"])
        .spawn()
        .expect("ghost");
    for dir in &ghost_cgroups {
        std::fs::create_dir_all(dir).expect("ghost cgroup");
        std::fs::write(dir.join("cgroup.procs"), ghost.id().to_string())
            .expect("ghost into cgroup");
    }
    let ghost_run = cluster.state_dir().join("run/ghost-x1/c");
    std::fs::create_dir_all(&ghost_run).expect("ghost run dir");
    cluster.start_riklet();
    cluster.wait_node_ready();
    let app = cluster.wait_app("web", "RUNNING after the riklet restart", |a| {
        a["state"] == "RUNNING"
    });
    assert_eq!(pid_of(&app), pid, "the app was restarted: {app:#}");
    assert_eq!(app["restartCount"], 0, "{app:#}");
    assert_eq!(pod_ip(&app), ip, "the pod changed address");
    assert!(http_get_at(ip, port, "/copyright").is_ok());
    let ghost_status = wait_for(
        Duration::from_secs(10),
        "the orphan process to be killed",
        || ghost.try_wait().ok().flatten(),
    );
    assert!(!ghost_status.success(), "orphan exited by itself?");
    for dir in &ghost_cgroups {
        assert!(!dir.exists(), "orphan cgroup {} not removed", dir.display());
    }
    assert!(
        !cluster.state_dir().join("run/ghost-x1").exists(),
        "orphan run dir not removed"
    );

    // The app crashes: restarted per policy (Always), restartCount 1.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill app");
    let app = cluster.wait_app("web", "a restart of the killed app", |a| {
        a["state"] == "RUNNING"
            && a["restartCount"] == 1
            && a["containers"][0]["pid"].as_i64() != Some(pid)
    });
    let new_pid = pid_of(&app);
    assert_eq!(app["containers"][0]["lastExit"]["signal"], 9, "{app:#}");
    assert_eq!(pod_ip(&app), ip, "a restart changed the pod's address");
    wait_for(
        Duration::from_secs(5),
        "the restarted app to answer",
        || http_get_at(ip, port, "/").ok(),
    );

    // Delete: process, cgroups (v1 and v2), netns, veth, address lease,
    // state gone.
    let out = cluster.rik_ok(&["delete", "web"]);
    assert_eq!(out.trim(), format!("web deleted on {}", cluster.node));
    wait_for(Duration::from_secs(20), "the pod to be cleaned up", || {
        (!alive(new_pid) && cgroups.iter().all(|d| !d.exists())).then_some(())
    });
    wait_for(Duration::from_secs(5), "the pod record to go", || {
        let record = cluster
            .state_dir()
            .join("pods")
            .join(format!("{instance}.json"));
        (!record.exists() && !Path::new(&cluster.state_dir().join("run").join(&instance)).exists())
            .then_some(())
    });
    // Logs stay for `[logs] retention` (1 h by default) after a delete.
    assert!(file.exists(), "log file removed before the retention");
    assert!(!netns.exists(), "{} left", netns.display());
    assert_eq!(
        links_on(&cluster.net.bridge),
        Vec::<String>::new(),
        "veth left"
    );
    let ipam: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.state_dir().join("ipam.json")).expect("ipam.json"),
    )
    .expect("ipam JSON");
    assert_eq!(ipam["leases"], serde_json::json!({}), "address lease left");
    // The app goes once its node reported the pod gone.
    wait_for(Duration::from_secs(5), "the app to go", || {
        (!cluster.rik_ok(&["get", "apps"]).contains("web")).then_some(())
    });
    assert_eq!(cluster.local_pods(), Value::Array(vec![]));
}

#[test]
fn separate_scheduler_restart_loses_no_app() {
    let mut cluster = Cluster::start(Mode::Separate);
    let port = free_port();
    // In the node's network namespace: the pod answers on 127.0.0.1.
    let out = cluster.apply(&http_app_host_network("kept", port), true);
    assert!(
        out.status.success(),
        "apply --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.app("kept");
    let pid = pid_of(&app);
    assert_eq!(app["hostNetwork"], true, "{app:#}");
    assert!(http_get(port, "/copyright").is_ok());

    cluster.kill_scheduler();
    cluster.start_scheduler();
    // Listed at once from the scheduler's disk state, then RUNNING again
    // once the riklet has reconnected and resent its state.
    wait_for(
        Duration::from_secs(10),
        "the app listed after the restart",
        || {
            let out = cluster.rik(&["get", "apps"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("kept")
                .then_some(())
        },
    );
    cluster.wait_node_ready();
    let app = cluster.wait_app("kept", "RUNNING after the scheduler restart", |a| {
        a["state"] == "RUNNING"
    });
    assert_eq!(pid_of(&app), pid, "the scheduler restart restarted the app");
    assert!(http_get(port, "/copyright").is_ok());
    cluster.rik_ok(&["delete", "kept"]);
    wait_for(Duration::from_secs(20), "the app process to stop", || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn bad_manifests_are_refused_naming_the_field_and_touch_nothing() {
    let cluster = Cluster::start(Mode::Standalone);
    let port = free_port();
    let out = cluster.apply(&http_app("steady", port), true);
    assert!(
        out.status.success(),
        "apply --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = cluster.app("steady");
    let pid = pid_of(&app);
    let ip = pod_ip(&app);

    let container = |extra: &str| {
        format!("kind: Pod\nname: steady\nspec:\n  containers:\n    - name: c\n{extra}")
    };
    let named = |name: &str| {
        format!("kind: Pod\nname: {name:?}\nspec: {{containers: [{{name: c, exec: /bin/true}}]}}\n")
    };
    let cases: Vec<(String, &str)> = vec![
        (named("a/b"), "name"),
        (named(".."), "name"),
        (named("Upper"), "name"),
        (named(&"a".repeat(64)), "name"),
        (container("      exec: bin/true\n"), "spec.containers[0].exec"),
        (container("      exec: /bin/true\n      image: busybox\n"), "spec.containers[0].exec"),
        (container("      env: []\n"), "spec.containers[0].image"),
        ("kind: Pod\nname: steady\nreplicas: 0\nspec: {containers: [{name: c, exec: /bin/true}]}\n".into(), "replicas"),
        ("kind: Deployment\nname: steady\nspec: {containers: [{name: c, exec: /bin/true}]}\n".into(), "kind"),
        (container("      exec: /bin/true\n      ports: {port: 0}\n"), "ports[0].port"),
        (container("      exec: /bin/true\n      ports: {port: 70000}\n"), "ports[0].port"),
        // Issue 13: a type mismatch, an unknown variant, a NUL in a value.
        (container("      exec: /bin/true\n      ports: {port: \"80\"}\n"), "spec.containers[0].ports[0].port: invalid type: string \"80\", expected a port number (1-65535)"),
        ("kind: Pod\nname: steady\nspec: {restartPolicy: Sometimes, containers: [{name: c, exec: /bin/true}]}\n".into(), "spec.restartPolicy: unknown variant `Sometimes`"),
        (container("      exec: /bin/true\n      env: [{name: A, value: \"b\\0\"}]\n"), "spec.containers[0].env[0].value: contains a NUL byte"),
        (format!("# {}\n", "x".repeat(1024 * 1024 + 1)), "1048576"),
        ("kind: Pod\nname: [unclosed\n".into(), "YAML"),
    ];
    for (manifest, field) in cases {
        let out = cluster.apply(&manifest, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted a bad manifest expecting {field}: {manifest:.200}"
        );
        assert!(err.contains(field), "error does not name {field}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not a one-line error: {err}");
    }
    // Nothing already running was touched.
    let app = cluster.app("steady");
    assert_eq!(app["state"], "RUNNING");
    assert_eq!(pid_of(&app), pid);
    assert_eq!(app["restartCount"], 0);
    assert!(http_get_at(ip, port, "/copyright").is_ok());
    local_tables_name_their_rows(&cluster);
}

/// `riklet status` and `riklet pods` print tables for people, which say
/// what `-o json` says.
fn local_tables_name_their_rows(cluster: &Cluster) {
    let json = cluster.local_status();
    let table = cluster.local_table("status");
    let row = |name: &str| {
        table
            .lines()
            .find_map(|l| l.strip_prefix(name).filter(|v| v.starts_with("  ")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} row in riklet status:\n{table}"))
            .to_string()
    };
    assert_eq!(row("NODE"), cluster.node);
    assert_eq!(
        row("SCHEDULER"),
        format!("{} (connected)", json["scheduler"].as_str().unwrap())
    );
    assert!(
        row("CONTAINERD").starts_with("connected")
            || row("CONTAINERD").starts_with("not connected: "),
        "{table}"
    );
    let programs = json["ebpfPrograms"].as_array().expect("ebpfPrograms").len();
    match json["ebpf"].as_bool() {
        Some(true) => assert!(
            row("EBPF").starts_with(&format!("{programs} programs loaded: ")),
            "{table}"
        ),
        _ => assert!(row("EBPF").starts_with("not loaded"), "{table}"),
    }
    assert_eq!(row("PODS"), "1 (1 RUNNING)");
    let pods = cluster.local_table("pods");
    let lines: Vec<&str> = pods.lines().collect();
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("STATE"),
        "{pods}"
    );
    assert_eq!(lines.len(), 2, "{pods}");
    assert!(
        lines[1].starts_with("steady-") && lines[1].contains(" RUNNING "),
        "{pods}"
    );
}
