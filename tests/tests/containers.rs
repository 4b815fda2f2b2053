//! containerd pods end to end: images pulled from a real registry on
//! 127.0.0.1 (Debian's `docker-registry`, the busybox image of `cargo xtask
//! image` pushed with `skopeo`), OCI containers under the machine's
//! containerd, one network namespace and IP per pod.
//!
//! Shown here: a two-container pod (plus a bare process in the same
//! network namespace) pulled and RUNNING, its HTTP server reached from the
//! host at the pod IP, the containers talking over localhost, `kill -9` of
//! the riklet not restarting them (and a container of an unknown instance
//! removed, an exit while the riklet was away recorded), a container that
//! exits restarted with restartCount 1, an OOM kill reported `OOMKilled`,
//! delete leaving nothing behind (containers, tasks, snapshots, netns,
//! veth, address lease, cgroups); bad input: unparsable references refused
//! by `rik apply`, a registry that answers 404 or garbage, an image for
//! another architecture, an exhausted pod CIDR, containerd down when the
//! riklet starts and restarted under it (a private containerd, so that the
//! other tests' one is never stopped); 100 create/delete cycles leaving
//! nothing behind.
//!
//! Needs root, containerd answering on its default socket (`cargo xtask
//! setup` starts it), `ctr`, `docker-registry`, `skopeo`, `ip`, `nft` and
//! `/bin/busybox`; a missing one fails the test with a message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use riklet_e2e::containerd::{self, PrivateContainerd};
use riklet_e2e::registry::{JunkServer, Registry, busybox_archive, host_arch, require};
use riklet_e2e::{
    Cluster, Mode, Options, alive, free_port, http_app, http_get_at, links_on, netns_named, pod_ip,
    wait_for,
};
use serde_json::Value;

const PULL_WAIT: Duration = Duration::from_secs(60);

fn prerequisites() {
    containerd::require_machine_containerd();
    require("docker-registry", "docker-registry");
    require("skopeo", "skopeo");
    require("nft", "nftables");
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox missing: apt install busybox-static"
    );
}

/// A registry holding `busybox:1` for this host.
fn registry() -> Registry {
    let reg = Registry::start();
    reg.push(&busybox_archive(&host_arch()), "busybox:1");
    reg
}

fn cluster(reg: &Registry) -> Cluster {
    Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries: vec![reg.host()],
            ..Options::default()
        },
    )
}

/// A pod of image containers `(name, command)`.
fn image_pod(name: &str, image: &str, containers: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!("apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n{extra}  containers:\n");
    for (c, command) in containers {
        s.push_str(&format!(
            "    - name: {c}\n      image: \"{image}\"\n      command: [sh, -c, {command:?}]\n"
        ));
    }
    s
}

const PAGE: &str = "hello from a riklet pod";

/// httpd serving [`PAGE`] on 8080, and a client fetching it over
/// localhost every 200 ms.
fn web_and_client(name: &str, image: &str) -> String {
    image_pod(
        name,
        image,
        &[
            (
                "web",
                &format!(
                    "mkdir -p /tmp/www && echo '{PAGE}' > /tmp/www/index.html && exec httpd -f -v -p 8080 -h /tmp/www"
                ),
            ),
            (
                "client",
                "while true; do wget -qO- http://127.0.0.1:8080/ || echo fetch failed; sleep 0.2; done",
            ),
        ],
        "",
    )
}

fn apply_ok(cluster: &Cluster, manifest: &str) {
    let out = cluster.apply_timeout(manifest, Some(PULL_WAIT));
    assert!(
        out.status.success(),
        "apply --wait: {}\n{manifest}\nriklet log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&cluster.riklet_log(), 30)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn container<'a>(app: &'a Value, name: &str) -> &'a Value {
    app["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {app:#}"))
}

fn pid(app: &Value, name: &str) -> i64 {
    container(app, name)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid for {name} in {app:#}"))
}

fn netns_inode(pid: i64) -> u64 {
    std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("netns of a process"),
    )
}

/// Directories of a container's cgroup, in every hierarchy.
fn cgroup_dirs(cluster: &Cluster, instance: &str, c: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    e.path()
                        .join(&cluster.cgroup_root)
                        .join(format!("{instance}_{c}"))
                })
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// What a pod may leave behind, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    containers: Vec<String>,
    tasks: Vec<String>,
    active_snapshots: Vec<String>,
    netns: Vec<String>,
    veths: Vec<String>,
    leases: Value,
    pod_records: usize,
    cgroups: usize,
}

/// Every instance id the cluster's riklet ever created (from its log).
fn instances_ever(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for line in cluster.riklet_log().lines() {
        // Strip the ANSI colours of the text log.
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        if plain.contains("creating pod")
            && let Some(rest) = plain.split(" pod=").nth(1)
            && let Some(id) = rest.trim_start_matches('"').split(['"', ' ']).next()
            && !ids.iter().any(|i| i == id)
        {
            ids.push(id.to_string());
        }
    }
    ids
}

fn leftovers(cluster: &Cluster) -> Leftovers {
    let ctr = cluster.ctr();
    let leases = std::fs::read_to_string(cluster.state_dir().join("ipam.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v["leases"].clone())
        .unwrap_or(Value::Null);
    let pod_records = std::fs::read_dir(cluster.state_dir().join("pods"))
        .map(|rd| rd.flatten().count())
        .unwrap_or(0);
    let ever = instances_ever(cluster);
    assert!(!ever.is_empty(), "no pod in the riklet log");
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join(&cluster.cgroup_root))
                .filter_map(|root| std::fs::read_dir(root).ok())
                .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
                .sum()
        })
        .unwrap_or(0);
    Leftovers {
        containers: ctr.ids("containers"),
        tasks: ctr.ids("tasks"),
        active_snapshots: ctr.active_snapshots(),
        netns: netns_named("rik-")
            .into_iter()
            .filter(|n| ever.iter().any(|id| n == &format!("rik-{id}")))
            .collect(),
        veths: links_on(&cluster.net.bridge),
        leases,
        pod_records,
        cgroups,
    }
}

fn nothing_left() -> Leftovers {
    Leftovers {
        containers: vec![],
        tasks: vec![],
        active_snapshots: vec![],
        netns: vec![],
        veths: vec![],
        leases: serde_json::json!({}),
        pod_records: 0,
        cgroups: 0,
    }
}

fn wait_deleted(cluster: &Cluster, name: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("{name} to be deleted"),
        || {
            let apps = cluster.rik_ok(&["get", "apps"]);
            let gone = !apps
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name));
            (gone
                && cluster
                    .local_pods()
                    .as_array()
                    .is_some_and(|p| p.iter().all(|p| p["app"] != name)))
            .then_some(())
        },
    );
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

#[test]
fn two_container_pod_serves_talks_over_localhost_survives_riklet_crash_and_leaves_nothing() {
    prerequisites();
    let reg = registry();
    let mut cluster = cluster(&reg);
    let image = format!("{}/busybox:1", reg.host());

    // Plus a bare process in the same pod, fetching the page over localhost
    // too.
    let manifest = web_and_client("duo", &image)
        + "    - name: sidecar\n      exec: /bin/busybox\n      args: [sh, -c, \
           \"while true; do wget -qO- http://127.0.0.1:8080/ || echo fetch failed; sleep 0.3; done\"]\n";
    let started = Instant::now();
    apply_ok(&cluster, &manifest);
    println!("pulled and RUNNING in {:?}", started.elapsed());
    let app = cluster.app("duo");
    assert_eq!(app["state"], "RUNNING", "{app:#}");
    let instance = app["appId"].as_str().expect("appId").to_string();
    let ip = pod_ip(&app);
    assert!(
        ip.to_string()
            .starts_with(&format!("10.214.{}.", cluster.net.n)),
        "{ip} not in {}",
        cluster.net.cidr
    );
    for c in ["web", "client"] {
        let cv = container(&app, c);
        assert_eq!(cv["containerId"], format!("{instance}_{c}"), "{app:#}");
        assert!(
            cv["imageDigest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{app:#}"
        );
    }
    let (web, client, sidecar) = (pid(&app, "web"), pid(&app, "client"), pid(&app, "sidecar"));

    // Pulled into containerd: `ctr images ls` shows it; both tasks run.
    let ctr = cluster.ctr();
    let images = ctr.ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l == image),
        "ctr images ls: {images}"
    );
    let tasks = ctr.tasks();
    for (c, p) in [("web", web), ("client", client)] {
        let id = format!("{instance}_{c}");
        assert!(
            tasks
                .iter()
                .any(|(t, tp, s)| *t == id && *tp as i64 == p && s == "RUNNING"),
            "task {id} (pid {p}) not running: {tasks:?}"
        );
    }

    // One network namespace for the pod, not the host's; runc put the
    // containers in the riklet's cgroup tree.
    assert_eq!(
        netns_inode(web),
        netns_inode(client),
        "containers in two netns"
    );
    assert_eq!(
        netns_inode(web),
        netns_inode(sidecar),
        "the bare process is not in the pod's netns"
    );
    assert_ne!(netns_inode(web), netns_inode(std::process::id() as i64));
    let netns = Path::new("/run/netns").join(format!("rik-{instance}"));
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns).expect("pod netns")),
        netns_inode(web)
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{web}/cgroup")).expect("cgroup");
    assert!(
        cgroup
            .lines()
            .any(|l| l == format!("0::/{}/{instance}_web", cluster.cgroup_root)),
        "{cgroup}"
    );

    // The HTTP server, from the host, at the pod IP.
    let (status, body) = http_get_at(ip, 8080, "/").expect("GET the pod");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body.trim(), PAGE);
    // The client reaches it over localhost; its output is in its CRI log.
    // (It may start before the server listens: the last lines count.)
    wait_for(
        Duration::from_secs(10),
        "the page in the client's log",
        || {
            let l = cluster.rik_ok(&["logs", "duo", "-c", "client", "--tail", "3"]);
            (l.lines().count() == 3 && l.lines().all(|l| l == PAGE)).then_some(l)
        },
    );
    let log_file = cluster
        .log_dir()
        .join(format!("default_duo_{instance}/client/0.log"));
    assert!(log_file.exists(), "{} missing", log_file.display());
    let web_log = wait_for(Duration::from_secs(5), "httpd's request log", || {
        let l = cluster.rik_ok(&["logs", "duo", "-c", "web", "--raw", "--tail", "3"]);
        l.contains(" stderr F ").then_some(l)
    });
    assert!(web_log.contains("127.0.0.1"), "{web_log}");
    // The bare process of the pod reaches it over localhost too.
    wait_for(
        Duration::from_secs(10),
        "the page in the sidecar's log",
        || {
            let l = cluster.rik_ok(&["logs", "duo", "-c", "sidecar", "--tail", "3"]);
            (l.lines().count() == 3 && l.lines().all(|l| l == PAGE)).then_some(l)
        },
    );

    // kill -9 of the riklet: containers keep running, are adopted, not
    // restarted. Meanwhile a container of an instance nobody knows appears
    // in the riklet's namespace: the next riklet removes it.
    let riklet_pid = cluster.riklet_pid().expect("riklet runs");
    cluster.kill_riklet();
    assert!(!alive(riklet_pid as i64));
    assert!(
        alive(web) && alive(client) && alive(sidecar),
        "containers died with the riklet"
    );
    let (_, body) = http_get_at(ip, 8080, "/").expect("GET while the riklet is down");
    assert_eq!(body.trim(), PAGE);
    let ghost = "ghost-x1_c";
    ctr.ok(&[
        "run",
        "-d",
        "--label",
        "riklet.instance=ghost-x1",
        "--label",
        "riklet.container=c",
        "--label",
        "riklet.app=ghost",
        &image,
        ghost,
        "sleep",
        "300",
    ]);
    assert!(ctr.ids("tasks").iter().any(|t| t == ghost));
    cluster.start_riklet();
    cluster.wait_node_ready();
    // Adopted once the new riklet has listed containerd's tasks.
    wait_for(
        Duration::from_secs(10),
        "the containers to be adopted",
        || {
            let log = cluster.riklet_log();
            (log.matches("adopting running container").count() >= 3).then_some(())
        },
    );
    let app = cluster.wait_app("duo", "RUNNING after the riklet restart", |a| {
        a["state"] == "RUNNING"
    });
    assert_eq!(
        (pid(&app, "web"), pid(&app, "client"), pid(&app, "sidecar")),
        (web, client, sidecar),
        "{app:#}"
    );
    assert_eq!(app["restartCount"], 0, "{app:#}");
    assert_eq!(pod_ip(&app), ip);
    wait_for(
        Duration::from_secs(10),
        "the orphaned container to be removed",
        || {
            let gone = !ctr.ids("containers").iter().any(|c| c == ghost)
                && !ctr.ids("tasks").iter().any(|t| t == ghost)
                && !ctr.active_snapshots().iter().any(|k| k == ghost);
            gone.then_some(())
        },
    );

    // A container that exits is restarted (restartCount 1), in the same
    // network namespace: the client talks to the server again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the client");
    let app = cluster.wait_app("duo", "the client to be restarted", |a| {
        a["state"] == "RUNNING"
            && container(a, "client")["restartCount"] == 1
            && container(a, "client")["pid"]
                .as_i64()
                .is_some_and(|p| p != client)
    });
    assert_eq!(app["restartCount"], 1, "{app:#}");
    let exit = &container(&app, "client")["lastExit"];
    assert_eq!(exit["exitCode"], 137, "{app:#}");
    assert_eq!(exit["signal"], 9, "{app:#}");
    assert_eq!(pid(&app, "web"), web, "the server was restarted too");
    let new_client = pid(&app, "client");
    assert_eq!(netns_inode(new_client), netns_inode(web));
    // The second run writes a file of its own, `1.log`.
    let second_run = log_file.with_file_name("1.log");
    wait_for(
        Duration::from_secs(10),
        "the restarted client to fetch",
        || {
            let text = std::fs::read_to_string(&second_run).ok()?;
            text.contains(PAGE).then_some(())
        },
    );

    // An exit while the riklet is away is recorded when it comes back,
    // and the restart policy applies.
    cluster.kill_riklet();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new_client as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the client");
    cluster.start_riklet();
    let app = cluster.wait_app(
        "duo",
        "the client restarted after the riklet came back",
        |a| a["state"] == "RUNNING" && container(a, "client")["restartCount"] == 2,
    );
    assert_eq!(container(&app, "client")["lastExit"]["exitCode"], 137);
    assert_eq!((pid(&app, "web"), pid(&app, "sidecar")), (web, sidecar));
    let last_client = pid(&app, "client");

    // Delete: nothing left.
    let web_cgroups = cgroup_dirs(&cluster, &instance, "web");
    assert!(!web_cgroups.is_empty());
    cluster.rik_ok(&["delete", "duo"]);
    wait_deleted(&cluster, "duo");
    wait_for(Duration::from_secs(10), "the containers to stop", || {
        (!alive(web) && !alive(last_client) && !alive(sidecar)).then_some(())
    });
    assert_eq!(leftovers(&cluster), nothing_left());
    assert!(!netns.exists(), "{} left", netns.display());
    assert!(
        ["web", "client", "sidecar"]
            .iter()
            .all(|c| cgroup_dirs(&cluster, &instance, c).is_empty()),
        "cgroups left"
    );
    // Logs stay for `[logs] retention` (1 h by default) after a delete
    // (the client's first run's file went with its third run).
    let client_logs = log_file.parent().expect("the client's log directory");
    assert!(
        client_logs.join("2.log").exists(),
        "log removed before the retention"
    );
    // The image stays for the next pod.
    assert!(ctr.ok(&["images", "ls", "-q"]).lines().any(|l| l == image));
}

#[test]
fn exits_restart_and_oom_kills_are_reported() {
    prerequisites();
    let reg = registry();
    let cluster = cluster(&reg);
    let image = format!("{}/busybox:1", reg.host());

    // Exits with 3 after a second: restarted (OnFailure), restartCount 1.
    let out = cluster.apply(
        &image_pod(
            "exiter",
            &image,
            &[("main", "echo run; sleep 1; exit 3")],
            "  restartPolicy: OnFailure\n",
        ),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 16 MiB of memory, a 64 MiB buffer: the OOM killer ends it.
    let out = cluster.apply(
        &format!(
            "apiVersion: v1\nkind: Pod\nname: hog\nspec:\n  restartPolicy: Never\n  containers:\n    \
             - name: dd\n      image: \"{image}\"\n      command: [dd, if=/dev/zero, of=/dev/null, bs=64M]\n      \
             resources: {{memory: 16Mi}}\n"
        ),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = cluster.wait_app("exiter", "a restart after exit 3", |a| {
        a["restartCount"].as_u64() >= Some(1)
    });
    let exit = &container(&app, "main")["lastExit"];
    assert_eq!(exit["exitCode"], 3, "{app:#}");
    assert_eq!(exit["reason"], "Error", "{app:#}");
    // Each run has its file: the first run's stays beside the second's
    // (until a third run starts, 2 s after the second one's exit).
    let instance = app["appId"].as_str().expect("appId");
    let dir = cluster
        .log_dir()
        .join(format!("default_exiter_{instance}/main"));
    let first = std::fs::read_to_string(dir.join("0.log")).expect("the first run's log file");
    assert!(first.ends_with(" stdout F run\n"), "{first}");
    wait_for(Duration::from_secs(10), "the second run's output", || {
        let second = std::fs::read_to_string(dir.join("1.log")).ok()?;
        second.ends_with(" stdout F run\n").then_some(())
    });

    let hog = cluster.wait_app("hog", "the OOM kill", |a| a["state"] == "FAILED");
    let exit = &container(&hog, "dd")["lastExit"];
    assert_eq!(exit["reason"], "OOMKilled", "{hog:#}");
    assert_eq!(exit["signal"], 9, "{hog:#}");
    assert!(
        hog["reason"].as_str().is_some_and(|r| r.contains("OOM")),
        "{hog:#}"
    );
    assert_eq!(hog["restartCount"], 0, "a Never pod was restarted: {hog:#}");
    for name in ["exiter", "hog"] {
        cluster.rik_ok(&["delete", name]);
        wait_deleted(&cluster, name);
    }
    assert_eq!(leftovers(&cluster), nothing_left());
}

#[test]
fn bad_images_fail_with_their_reason_and_touch_nothing() {
    prerequisites();
    let reg = registry();
    reg.push(&busybox_archive("arm64"), "busybox-arm:1");
    let junk = JunkServer::start();
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries: vec![reg.host(), junk.host()],
            ..Options::default()
        },
    );
    let image = format!("{}/busybox:1", reg.host());
    apply_ok(
        &cluster,
        &image_pod("steady", &image, &[("main", "sleep 3600")], ""),
    );
    let steady = cluster.app("steady");
    let steady_pid = pid(&steady, "main");

    // References that do not parse: refused by `rik apply`, naming the field.
    for bad in [
        "Not A Reference",
        "busybox:",
        "127.0.0.1:9/UPPER/case:1",
        "127.0.0.1:9/busybox::1",
        "127.0.0.1:9/a@sha256:zz",
        "127.0.0.1:9/a/-b:1",
    ] {
        let out = cluster.apply(&image_pod("steady", bad, &[("main", "true")], ""), false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            err.contains("spec.containers[0].image") && err.contains("image reference"),
            "{bad:?}: {err}"
        );
    }
    let out = cluster.apply(
        "kind: Pod\nname: steady\nspec:\n  containers:\n    - {name: c, image: busybox, imagePullPolicy: Sometimes}\n",
        false,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("imagePullPolicy"));

    // What a registry cannot serve: FAILED with the reason, quickly, and
    // retried with back-off.
    let cases = [
        (
            "missing",
            format!("{}/nothing-here:1", reg.host()),
            vec!["ErrImagePull".to_string(), "not found".into()],
        ),
        (
            "garbage",
            format!("{}/busybox:1", junk.host()),
            vec!["ErrImagePull".to_string(), "invalid answer".into()],
        ),
        (
            "arm",
            format!("{}/busybox-arm:1", reg.host()),
            vec![
                "ErrImagePull".to_string(),
                format!("no linux/{} image", host_arch()),
                "linux/arm64".into(),
            ],
        ),
    ];
    for (name, reference, expected) in &cases {
        let t = Instant::now();
        let out = cluster.apply_timeout(
            &image_pod(name, reference, &[("main", "true")], ""),
            Some(Duration::from_secs(20)),
        );
        let elapsed = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{name} became RUNNING");
        println!("{name}: failed after {elapsed:?}: {}", err.trim());
        assert!(elapsed < Duration::from_secs(10), "{name}: {elapsed:?}");
        let app = cluster.app(name);
        assert_eq!(app["state"], "FAILED", "{app:#}");
        let reason = app["reason"].as_str().unwrap_or_default();
        for e in expected {
            assert!(
                reason.contains(e.as_str()),
                "{name}: {e:?} not in {reason:?}"
            );
            assert!(
                err.contains(e.as_str()),
                "{name}: {e:?} not in rik's error {err:?}"
            );
        }
        assert_eq!(
            container(&app, "main")["lastExit"]["reason"],
            "ErrImagePull"
        );
        assert_eq!(app["restartCount"], 0, "a pull retry counted as a restart");
    }
    // Retried: a second attempt is recorded later.
    let first = cluster.app("missing");
    let at = container(&first, "main")["lastExit"]["finishedAt"].clone();
    wait_for(Duration::from_secs(10), "a second pull attempt", || {
        let a = cluster.app("missing");
        (container(&a, "main")["lastExit"]["finishedAt"] != at).then_some(())
    });
    // Nothing of them in containerd; the running pod untouched.
    let ctr = cluster.ctr();
    let containers = ctr.ids("containers");
    assert_eq!(
        containers,
        vec![format!("{}_main", steady["appId"].as_str().expect("id"))]
    );
    let steady = cluster.app("steady");
    assert_eq!(steady["state"], "RUNNING");
    assert_eq!(pid(&steady, "main"), steady_pid);
    assert_eq!(steady["restartCount"], 0);
    for name in ["steady", "missing", "garbage", "arm"] {
        cluster.rik_ok(&["delete", name]);
        wait_deleted(&cluster, name);
    }
    assert_eq!(leftovers(&cluster), nothing_left());
}

#[test]
fn exhausted_pod_cidr_fails_the_new_pod_only() {
    prerequisites();
    // A /30 holds the gateway and one pod.
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            pod_prefix: Some(30),
            ..Options::default()
        },
    );
    let port = free_port();
    let out = cluster.apply(&http_app("first", port), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = cluster.app("first");
    let (first_pid, first_ip) = (
        first["containers"][0]["pid"].as_i64().expect("pid"),
        pod_ip(&first),
    );
    let out = cluster.apply(&http_app("second", free_port()), true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second pod got an address");
    assert!(err.contains("exhausted"), "{err}");
    let second = cluster.app("second");
    assert_eq!(second["state"], "FAILED", "{second:#}");
    let reason = second["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("NetworkError") && reason.contains(&cluster.net.cidr),
        "{reason}"
    );
    assert_eq!(second["internalIp"], Value::Null);
    // The first pod is untouched.
    let first = cluster.app("first");
    assert_eq!(first["state"], "RUNNING");
    assert_eq!(first["containers"][0]["pid"].as_i64(), Some(first_pid));
    assert!(http_get_at(first_ip, port, "/copyright").is_ok());
    // Once the first pod is gone its address serves the second (retried).
    cluster.rik_ok(&["delete", "first"]);
    let second = cluster.wait_app("second", "the second pod to get the address", |a| {
        a["state"] == "RUNNING"
    });
    println!("second pod RUNNING at {}", second["internalIp"]);
    cluster.rik_ok(&["delete", "second"]);
    wait_deleted(&cluster, "second");
    assert_eq!(leftovers(&cluster), nothing_left());
}

#[test]
fn containerd_down_at_start_then_restarted_under_the_riklet() {
    prerequisites();
    let reg = registry();
    let mut private = PrivateContainerd::new();
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries: vec![reg.host()],
            containerd_socket: Some(private.socket.clone()),
            ..Options::default()
        },
    );
    let image = format!("{}/busybox:1", reg.host());

    // The riklet runs without containerd, says why, runs bare processes.
    let status = cluster.local_status();
    assert_eq!(status["containerd"]["connected"], false, "{status:#}");
    let why = status["containerd"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&private.socket.display().to_string()) && why.contains("containerd running?"),
        "{status:#}"
    );
    assert!(cluster.riklet_log().contains("containerd unavailable"));
    let port = free_port();
    let out = cluster.apply(&http_app("bare", port), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An image pod waits for containerd, saying so.
    let out = cluster.apply(&web_and_client("duo", &image), false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waiting = cluster.wait_app("duo", "the pod to wait for containerd", |a| {
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("waiting for containerd"))
    });
    assert_eq!(waiting["state"], "CREATING", "{waiting:#}");

    // containerd comes: the pod runs without a new apply.
    private.start();
    let t = Instant::now();
    let app = cluster.wait_app("duo", "the pod to run once containerd is up", |a| {
        a["state"] == "RUNNING"
    });
    println!("RUNNING {:?} after containerd started", t.elapsed());
    assert_eq!(app["restartCount"], 0, "{app:#}");
    assert_eq!(cluster.local_status()["containerd"]["connected"], true);
    let ip = pod_ip(&app);
    let (web, client) = (pid(&app, "web"), pid(&app, "client"));
    assert_eq!(http_get_at(ip, 8080, "/").expect("GET").1.trim(), PAGE);

    // containerd restarted under the riklet: no pod lost, nothing restarted,
    // exits still seen.
    private.stop();
    assert!(
        alive(web) && alive(client),
        "containers died with containerd"
    );
    std::thread::sleep(Duration::from_millis(500));
    private.start();
    let app = cluster.wait_app("duo", "RUNNING after the containerd restart", |a| {
        a["state"] == "RUNNING"
    });
    assert_eq!((pid(&app, "web"), pid(&app, "client")), (web, client));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the client");
    let app = cluster.wait_app(
        "duo",
        "the client restarted after the containerd restart",
        |a| a["state"] == "RUNNING" && container(a, "client")["restartCount"] == 1,
    );
    assert_eq!(pid(&app, "web"), web);
    // A new image pod after the restart.
    apply_ok(
        &cluster,
        &image_pod("later", &image, &[("main", "sleep 3600")], ""),
    );
    for name in ["duo", "bare", "later"] {
        cluster.rik_ok(&["delete", name]);
        wait_deleted(&cluster, name);
    }
    assert_eq!(leftovers(&cluster), nothing_left());
    drop(cluster);
    drop(private);
}

/// How many create/delete cycles [`create_delete_cycles_leave_nothing`]
/// runs (each one pulls nothing: the image is present).
const CYCLES: usize = 100;

#[test]
fn create_delete_cycles_leave_nothing() {
    prerequisites();
    let reg = registry();
    let cluster = cluster(&reg);
    let image = format!("{}/busybox:1", reg.host());
    // Exits at once on SIGTERM (pid 1 has no default signal action).
    let manifest = image_pod(
        "cycle",
        &image,
        &[("main", "trap 'exit 0' TERM; sleep 3600 & wait")],
        "",
    );
    // One cycle first: the image pulled, the riklet's connections made.
    let cycle = || {
        apply_ok(&cluster, &manifest);
        cluster.rik_ok(&["delete", "cycle"]);
        wait_deleted(&cluster, "cycle");
    };
    cycle();
    let riklet = cluster.riklet_pid().expect("riklet");
    let fds0 = fd_count(riklet);
    let snapshots0 = cluster.ctr().snapshots().len();
    let t = Instant::now();
    for _ in 1..CYCLES {
        cycle();
    }
    let per_cycle = t.elapsed() / (CYCLES as u32 - 1);
    std::thread::sleep(Duration::from_secs(1));
    let fds = fd_count(riklet);
    println!("{CYCLES} create/delete cycles: {per_cycle:?} per cycle; riklet fds {fds0} -> {fds}");
    assert_eq!(leftovers(&cluster), nothing_left());
    assert_eq!(
        cluster.ctr().snapshots().len(),
        snapshots0,
        "snapshots grew"
    );
    assert!(cluster.ctr().ids("leases").is_empty(), "leases left");
    assert!(
        fds <= fds0 + 2,
        "riklet fds grew from {fds0} to {fds} over {CYCLES} cycles"
    );
}
