//! Pod logs in kubelet's layout, rotated by their writers: a bare process
//! (the shim writes) and an image container (`riklet logger` writes) that
//! print 1,000,000 numbered lines as fast as they can under `spec.logs:
//! {maxSize: 1Mi, maxFiles: 3}`, the riklet killed with SIGKILL and
//! restarted meanwhile, keep at most 3 files, older rotated ones gzip'd,
//! and no line lost or doubled from the oldest kept to the last; a restart
//! keeps the previous run's file and removes older runs; a deleted app's
//! logs stay for the retention, then go; a manifest with too small a size
//! is refused naming the field; a full disk drops output, counted in
//! `riklet_log_dropped_bytes_total`, and the pod keeps running.
//!
//! Needs root, busybox, and for the image container the machine's
//! containerd, `docker-registry` and `skopeo` (`cargo xtask setup`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use riklet_e2e::registry::{Registry, busybox_archive, host_arch, require};
use riklet_e2e::{Cluster, Mode, Options, containerd, http_get, wait_for};
use riklet_shim::layout::{self, LogFile};

const RETENTION: Duration = Duration::from_secs(10);
const LINES: u32 = 1_000_000;
/// `spec.logs.maxSize` of the printing apps.
const MAX_SIZE: usize = 1 << 20;

fn cluster(insecure_registries: Vec<String>) -> Cluster {
    Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries,
            log_retention: Some(RETENTION),
            ..Options::default()
        },
    )
}

fn apply_ok(cluster: &Cluster, manifest: &str) {
    let out = cluster.apply(manifest, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<log_dir>/default_<app>_<instance>/<container>`, of the app's only pod.
fn container_dir(cluster: &Cluster, app: &str, container: &str) -> PathBuf {
    let a = cluster.app(app);
    let instance = a["appId"].as_str().expect("appId");
    cluster
        .log_dir()
        .join(format!("default_{app}_{instance}"))
        .join(container)
}

/// A file's records, gunzipped if it is compressed.
fn text(f: &LogFile) -> String {
    let raw = std::fs::read(&f.path).unwrap_or_else(|e| panic!("{}: {e}", f.path.display()));
    if !f.compressed {
        return String::from_utf8(raw).expect("UTF-8 records");
    }
    let mut out = String::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("gunzip {}: {e}", f.path.display()));
    out
}

/// The numbers `seq` printed, across the files oldest first.
fn numbers(files: &[LogFile]) -> Vec<u32> {
    files
        .iter()
        .flat_map(|f| {
            text(f)
                .lines()
                .map(|l| {
                    let fields: Vec<&str> = l.splitn(4, ' ').collect();
                    assert_eq!(&fields[1..3], ["stdout", "F"], "bad record {l:?}");
                    fields[3].parse().expect("a number")
                })
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// At most 3 files of run 0 each at most `MAX_SIZE`, the older rotated ones
/// compressed, the newest plain, holding `first..=LINES` for some first
/// line after the ones rotated away.
fn check_rotated(dir: &Path) {
    // The writer compresses in a thread of its own, which may finish after
    // the container's exit was reported.
    let files = wait_for(
        Duration::from_secs(30),
        "the oldest rotated file to be compressed",
        || {
            let files = layout::list(dir).ok()?;
            files.first()?.compressed.then_some(files)
        },
    );
    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(files.len(), 3, "{names:#?}");
    assert!(files.iter().all(|f| f.restart_count == 0), "{names:#?}");
    assert!(
        files[0].compressed && files[0].rotated.is_some(),
        "{names:#?}"
    );
    assert!(
        !files[1].compressed && files[1].rotated.is_some(),
        "{names:#?}"
    );
    assert_eq!(files[2].path, layout::current_file(dir, 0));
    for f in &files {
        let size = text(f).len();
        assert!(size <= MAX_SIZE, "{} holds {size} bytes", f.path.display());
    }
    let got = numbers(&files);
    let first = got[0];
    assert!(first > 1, "nothing was rotated away");
    assert!(
        got.iter().copied().eq(first..=LINES),
        "lines from {first} to {LINES} lost, doubled or out of order ({} lines)",
        got.len()
    );
}

/// SIGKILL of the riklet once the app's `main` container has rotated its
/// first file, and a new riklet started: the writer does not depend on it.
fn kill_riklet_while_printing(cluster: &mut Cluster, app: &str) {
    wait_for(Duration::from_secs(60), "a first rotation", || {
        cluster.app(app)["appId"].as_str()?;
        let files = layout::list(&container_dir(cluster, app, "main")).ok()?;
        (files.len() > 1).then_some(())
    });
    cluster.kill_riklet();
    cluster.start_riklet();
    cluster.wait_node_ready();
}

fn seq_app(name: &str, container: &str) -> String {
    format!(
        "kind: Pod\nname: {name}\nspec:\n  restartPolicy: OnFailure\n  logs: {{maxSize: 1Mi, maxFiles: 3}}\n  \
         containers:\n{container}"
    )
}

#[test]
fn bare_process_rotates_keeps_the_previous_run_and_retention_removes_a_deleted_app() {
    let mut cluster = cluster(vec![]);

    // As fast as a process can print: ~50 MB of records through 1 MiB
    // files, the riklet killed while it prints (the shim writes alone).
    apply_ok(
        &cluster,
        &seq_app(
            "fast",
            &format!("    - {{name: main, exec: /bin/busybox, args: [seq, \"1\", \"{LINES}\"]}}\n"),
        ),
    );
    kill_riklet_while_printing(&mut cluster, "fast");
    cluster.wait_app("fast", "fast to complete", |a| a["state"] == "TERMINATED");
    let fast = container_dir(&cluster, "fast", "main");
    check_rotated(&fast);

    // A crash loop: the current run's file and the previous one's, only.
    apply_ok(
        &cluster,
        "kind: Pod\nname: crashy\nspec:\n  restartPolicy: OnFailure\n  containers:\n    \
         - {name: main, exec: /bin/busybox, args: [sh, -c, \"echo run; exit 1\"]}\n",
    );
    cluster.wait_app("crashy", "crashy to restart 3 times", |a| {
        a["restartCount"].as_u64() >= Some(3)
    });
    let crashy = container_dir(&cluster, "crashy", "main");
    let runs: Vec<u32> = layout::list(&crashy)
        .expect("list")
        .iter()
        .map(|f| f.restart_count)
        .collect();
    let last = *runs.last().expect("log files");
    assert!(last >= 2, "{runs:?}");
    assert_eq!(
        runs,
        [last - 1, last],
        "files of other runs than the last two"
    );
    let previous = layout::current_file(&crashy, last - 1);
    let previous_text = std::fs::read_to_string(&previous).expect("the previous run's file");
    assert!(
        previous_text.ends_with(" stdout F run\n"),
        "{previous_text}"
    );

    // Deleted: kept for the retention, then removed.
    let pod_dir = fast.parent().expect("pod dir").to_path_buf();
    let deleted = Instant::now();
    cluster.rik_ok(&["delete", "fast"]);
    // The app goes once its node reported the pod gone (and released).
    wait_for(Duration::from_secs(30), "fast to go", || {
        (!cluster.rik_ok(&["get", "apps"]).contains("fast")).then_some(())
    });
    assert!(
        deleted.elapsed() < RETENTION && layout::current_file(&fast, 0).exists(),
        "a deleted app's logs removed before the retention ({:?} after the delete)",
        deleted.elapsed()
    );
    wait_for(
        RETENTION + Duration::from_secs(30),
        "the deleted app's logs to be removed",
        || (!pod_dir.exists()).then_some(()),
    );
    assert!(
        deleted.elapsed() >= RETENTION,
        "removed {:?} after the delete, before the retention",
        deleted.elapsed()
    );

    // Too small a file size is refused, naming the field.
    let out = cluster.apply(
        "kind: Pod\nname: tiny\nspec:\n  logs: {maxSize: 1Ki}\n  containers: [{name: c, exec: /bin/true}]\n",
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 1Ki log size was accepted");
    assert!(stderr.contains("spec.logs.maxSize"), "{stderr}");
    cluster.rik_ok(&["delete", "crashy"]);
}

#[test]
fn image_container_rotates_through_the_logger() {
    containerd::require_machine_containerd();
    require("docker-registry", "docker-registry");
    require("skopeo", "skopeo");
    let reg = Registry::start();
    reg.push(&busybox_archive(&host_arch()), "busybox:1");
    let mut cluster = cluster(vec![reg.host()]);
    let image = format!("{}/busybox:1", reg.host());
    apply_ok(
        &cluster,
        &seq_app(
            "fastimg",
            &format!(
                "    - {{name: main, image: \"{image}\", command: [/bin/busybox, seq, \"1\", \"{LINES}\"]}}\n"
            ),
        ),
    );
    kill_riklet_while_printing(&mut cluster, "fastimg");
    // The test image has no `seq` link: busybox runs the applet.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let app = cluster.app("fastimg");
        if app["state"] == "TERMINATED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fastimg did not complete: {app:#}\n{}",
            cluster.riklet_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_rotated(&container_dir(&cluster, "fastimg", "main"));
    cluster.rik_ok(&["delete", "fastimg"]);
}

/// A small tmpfs mounted over the cluster's log directory, unmounted when
/// dropped (before the cluster removes its directory).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("log dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (util-linux)")
            .success();
        assert!(ok, "mount -t tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

/// `riklet_log_dropped_bytes_total` of the cluster's riklet.
fn dropped_bytes(cluster: &Cluster) -> Option<u64> {
    let (_, body) = http_get(cluster.metrics_port(), "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with("riklet_log_dropped_bytes_total{"))?
        .rsplit_once(' ')?
        .1
        .parse()
        .ok()
}

#[test]
fn a_full_disk_drops_and_counts_output_and_the_pod_keeps_running() {
    let cluster = cluster(vec![]);
    let _disk = SmallDisk::mount(&cluster.log_dir());
    assert_eq!(dropped_bytes(&cluster), Some(0));
    apply_ok(
        &cluster,
        "kind: Pod\nname: chatty\nspec:\n  containers:\n    - {name: main, exec: /bin/busybox, \
         args: [sh, -c, \"i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.01; done\"]}\n",
    );
    let app = cluster.wait_app("chatty", "chatty to run", |a| a["state"] == "RUNNING");
    let pid = app["containers"][0]["pid"].as_i64().expect("pid");
    let current = layout::current_file(&container_dir(&cluster, "chatty", "main"), 0);
    wait_for(Duration::from_secs(10), "chatty's first lines", || {
        std::fs::metadata(&current).ok().filter(|m| m.len() > 0)
    });

    // Fill the disk: the writer's appends fail from now on.
    let filler = cluster.log_dir().join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    while f.write_all(&[0u8; 4096]).is_ok() {}
    drop(f);
    wait_for(Duration::from_secs(20), "dropped bytes on /metrics", || {
        dropped_bytes(&cluster).filter(|&n| n > 0)
    });
    assert!(riklet_e2e::alive(pid), "the pod stopped on a full disk");
    assert_eq!(cluster.app("chatty")["state"], "RUNNING");

    // Space again: writing goes on, in whole records.
    std::fs::remove_file(&filler).expect("remove the filler");
    let before = std::fs::metadata(&current).expect("current file").len();
    wait_for(
        Duration::from_secs(10),
        "new lines after the disk has room",
        || (std::fs::metadata(&current).ok()?.len() > before).then_some(()),
    );
    let text = std::fs::read_to_string(&current).expect("current file");
    for l in text.lines() {
        let fields: Vec<&str> = l.splitn(4, ' ').collect();
        assert!(
            fields.len() == 4 && fields[3].starts_with("line-"),
            "a broken record {l:?}"
        );
    }
    cluster.rik_ok(&["delete", "chatty"]);
}
