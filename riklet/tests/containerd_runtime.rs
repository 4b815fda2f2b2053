//! Root tests of `riklet::runtime::containerd` against this machine's
//! containerd and runc: real containers from a busybox image built here,
//! their CRI logs written by `riklet logger` under the containerd shim,
//! their cgroups, stops, exits, OOM kills and clean-up.
//!
//! Needs root, containerd at `/run/containerd/containerd.sock`
//! (`cargo xtask setup` starts it), `ctr`, `ip` and Debian's static
//! `/bin/busybox`. A missing prerequisite fails the test with a message.
//! Every test works in a containerd namespace of its own, removed with
//! everything in it (tasks, containers, snapshots, images, content,
//! leases) and the test's cgroups, network namespace and files by a guard,
//! even when the test panics.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use riklet::cgroups::{Layout, Limits};
use riklet::runtime::containerd::{
    ContainerSpec, ContainerdError, ContainerdRuntime, LABEL_APP, LABEL_CONTAINER, LABEL_INSTANCE,
    TaskStatus,
};
use riklet::runtime::spec::ImageConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

const SOCKET: &str = "/run/containerd/containerd.sock";
const RIKLET: &str = env!("CARGO_BIN_EXE_riklet");
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "docker.io/riklet/busybox-test:latest";
const APPLETS: &[&str] = &[
    "cat", "dd", "echo", "httpd", "id", "ls", "sh", "sleep", "true",
];
const INDEX_HTML: &str = "hello from a riklet container\n";
const WAIT: Duration = Duration::from_secs(20);

/// The tests run one at a time: the leak checks count this process's file
/// descriptors, and the latency figures should not include other tests'
/// load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- prerequisites and the guard ------------------------------------------

fn ctr(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ctr (Debian package containerd): {e}"))
}

/// Lines of `ctr -n NS <what> ls -q` (ids only).
fn ctr_ids(ns: &str, what: &str) -> Vec<String> {
    let out = ctr(ns, &[what, "ls", "-q"]);
    assert!(
        out.status.success(),
        "ctr {what} ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Keys of `ctr -n NS snapshots ls`.
fn snapshot_keys(ns: &str) -> Vec<String> {
    let out = ctr(ns, &["snapshots", "ls"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// A test's world: its containerd namespace with the test image, a temp
/// directory for logs, a cgroup root and maybe a network namespace. Its
/// `Drop` removes all of it.
struct TestEnv {
    ns: String,
    dir: tempfile::TempDir,
    chain_id: String,
    netns: Option<String>,
}

impl TestEnv {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests need root (containerd, runc, cgroups)"
        );
        assert!(
            Path::new(SOCKET).exists(),
            "containerd is not running ({SOCKET} missing): run `cargo xtask setup`"
        );
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} missing: apt-get install busybox-static"
        );
        let ns = format!("riklet-test-{tag}-{}", std::process::id());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut env = TestEnv {
            ns,
            dir,
            chain_id: String::new(),
            netns: None,
        };
        let (archive, chain_id) = build_image(env.dir.path());
        let out = ctr(
            &env.ns,
            &[
                "images",
                "import",
                "--all-platforms",
                archive.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            snapshot_keys(&env.ns).contains(&chain_id),
            "the import did not unpack {chain_id}: {:?}",
            snapshot_keys(&env.ns)
        );
        env.chain_id = chain_id;
        env
    }

    async fn runtime(&self) -> ContainerdRuntime {
        ContainerdRuntime::connect(Path::new(SOCKET), &self.ns)
            .await
            .unwrap_or_else(|e| panic!("containerd not reachable: {e}"))
            .with_logger_exe(RIKLET)
    }

    fn instance(&self) -> String {
        format!("i{}", std::process::id())
    }

    fn cgroup_root(&self) -> String {
        format!("/{}", self.ns)
    }

    fn log(&self, container: &str) -> riklet::logs::LogSpec {
        riklet::logs::LogSpec {
            dir: riklet::logs::container_dir(
                &self.dir.path().join("logs"),
                "app",
                &self.instance(),
                container,
            ),
            restart_count: 0,
            rotation: riklet::logs::Rotation::default(),
        }
    }

    /// A container of the test image running `command`.
    fn spec(&self, container: &str, command: &[&str]) -> ContainerSpec {
        let instance = self.instance();
        ContainerSpec {
            instance_id: instance.clone(),
            container: container.to_string(),
            app: "app".into(),
            image: IMAGE.into(),
            snapshot_parent: self.chain_id.clone(),
            image_config: ImageConfig {
                entrypoint: vec![],
                cmd: vec!["/bin/sh".into()],
                env: vec!["PATH=/bin".into(), "IMAGE_VAR=from-image".into()],
                working_dir: Some("/".into()),
                user: None,
            },
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            args: vec![],
            env: vec![],
            limits: Limits::default(),
            netns: None,
            cgroups_path: format!("{}/{instance}_{container}", self.cgroup_root()),
            log: self.log(container),
            hostname: None,
            resolv_conf: None,
            hosts: None,
            labels: HashMap::new(),
        }
    }

    /// Creates a network namespace with a veth pair to the host; returns
    /// its path and the address inside it.
    fn create_netns(&mut self) -> (PathBuf, std::net::Ipv4Addr) {
        let name = self.ns.clone();
        let octet = (std::process::id() % 200 + 20) as u8;
        let host_if = format!("rkt{}h", std::process::id() % 100_000);
        let ns_if = format!("rkt{}n", std::process::id() % 100_000);
        let host_ip = format!("10.213.{octet}.1/30");
        let ns_ip = format!("10.213.{octet}.2/30");
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        self.netns = Some(name.clone());
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &host_ip, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", &ns_ip, "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        (
            PathBuf::from(format!("/run/netns/{name}")),
            std::net::Ipv4Addr::new(10, 213, octet, 2),
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        for task in ctr_ids(&ns, "tasks") {
            let _ = ctr(&ns, &["tasks", "kill", "-a", "-s", "SIGKILL", &task]);
        }
        for task in ctr_ids(&ns, "tasks") {
            let _ = ctr(&ns, &["tasks", "delete", "--force", &task]);
        }
        for c in ctr_ids(&ns, "containers") {
            let _ = ctr(&ns, &["containers", "delete", &c]);
        }
        for key in snapshot_keys(&ns) {
            if key != self.chain_id {
                let _ = ctr(&ns, &["snapshots", "rm", &key]);
            }
        }
        for lease in ctr_ids(&ns, "leases") {
            let _ = ctr(&ns, &["leases", "rm", &lease]);
        }
        let _ = ctr(&ns, &["images", "rm", "--sync", IMAGE]);
        for digest in ctr_ids(&ns, "content") {
            let _ = ctr(&ns, &["content", "rm", &digest]);
        }
        let out = ctr("default", &["namespaces", "rm", &ns]);
        if !out.status.success() {
            eprintln!(
                "cannot remove containerd namespace {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let root = h.path().join(&ns);
                if let Ok(children) = fs::read_dir(&root) {
                    for c in children.flatten() {
                        if c.path().is_dir() {
                            let _ = fs::remove_dir(c.path());
                        }
                    }
                }
                let _ = fs::remove_dir(&root);
            }
        }
        if let Some(netns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", netns]).status();
        }
    }
}

// ---- the test image ---------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An OCI image archive: one uncompressed layer with the static busybox, a
/// few applet links, `/etc/passwd` (root, www = 33) and `/www/index.html`.
/// Returns the archive and the chain id of its layer.
fn build_image(dir: &Path) -> (PathBuf, String) {
    let mut layer = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, path: &str, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        h.set_size(size);
        h
    };
    for (d, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("www", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
    ] {
        let mut h = header(tar::EntryType::Directory, d, mode, 0);
        h.set_cksum();
        layer.append(&h, std::io::empty()).unwrap();
    }
    let busybox = fs::read(BUSYBOX).expect("read busybox");
    let mut h = header(
        tar::EntryType::Regular,
        "bin/busybox",
        0o755,
        busybox.len() as u64,
    );
    h.set_cksum();
    layer.append(&h, &busybox[..]).unwrap();
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, &format!("bin/{applet}"), 0o777, 0);
        h.set_link_name("busybox").unwrap();
        h.set_cksum();
        layer.append(&h, std::io::empty()).unwrap();
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\nwww:x:33:\nlogs:x:4:www\n"),
        ("www/index.html", INDEX_HTML),
    ] {
        let mut h = header(tar::EntryType::Regular, path, 0o644, text.len() as u64);
        h.set_cksum();
        layer.append(&h, text.as_bytes()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let layer_digest = sha256_hex(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    }))
    .unwrap();
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let manifest_digest = sha256_hex(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": IMAGE,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    }))
    .unwrap();
    let path = dir.join("image.tar");
    let mut archive = tar::Builder::new(fs::File::create(&path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_704_067_200);
        h.set_cksum();
        archive.append(&h, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        add(&format!("blobs/sha256/{digest}"), data);
    }
    archive.into_inner().unwrap().flush().unwrap();
    // One layer: its chain id is its diff id.
    (path, format!("sha256:{layer_digest}"))
}

// ---- helpers ----------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / until the server answers (it may still be starting).
fn http_get(addr: SocketAddr) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body)
            });
        match attempt {
            Ok(body) if !body.is_empty() => return body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("no HTTP answer from {addr}: {other:?}"),
        }
    }
}

/// Waits until the log file holds a record of `stream` ending with `text`.
fn wait_for_log(path: &Path, stream: &str, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = fs::read_to_string(path).unwrap_or_default();
        let found = log.lines().any(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            f.len() == 4 && f[1] == stream && f[2] == "F" && f[3].ends_with(text)
        });
        if found {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{stream} F …{text}` record in {}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count_log(path: &Path, text: &str) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .count()
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

async fn start(
    rt: &ContainerdRuntime,
    spec: ContainerSpec,
) -> riklet::runtime::containerd::TaskRun {
    let id = format!("{}_{}", spec.instance_id, spec.container);
    rt.start(spec)
        .await
        .unwrap_or_else(|e| panic!("start {id}: {}", riklet::error_chain(&e)))
}

// ---- tests --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn httpd_on_the_host_network_logs_cgroups_restart_stop_remove() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("httpd");
    let rt = env.runtime().await;
    let port = free_port();
    let script = format!(
        "echo started-out; echo started-err >&2; exec /bin/httpd -f -vv -p 127.0.0.1:{port} -h /www"
    );
    let mut spec = env.spec("web", &["/bin/sh", "-c", &script]);
    spec.limits = Limits {
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
    };
    spec.labels.insert("extra".into(), "yes".into());
    let log = spec.log.current_file();
    // `riklet logger`'s arguments are pairs in any order; `logger DIR` is one.
    let logger_arg = format!("logger {}", spec.log.dir.display());
    let cgroups_path = spec.cgroups_path.clone();
    let t0 = Instant::now();
    let run = start(&rt, spec).await;
    let started = t0.elapsed();
    let id = run.container_id.clone();
    assert_eq!(id, format!("{}_web", env.instance()));
    assert!(run.pid > 0);

    // Served to the host.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = http_get(addr);
    println!(
        "httpd: start() returned after {started:?}, first HTTP answer after {:?}",
        t0.elapsed()
    );
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
        "{answer}"
    );
    assert!(answer.ends_with(INDEX_HTML), "{answer}");

    // Both streams in the CRI log, through `riklet logger` under the shim.
    wait_for_log(&log, "stdout", "started-out");
    wait_for_log(&log, "stderr", "started-err");
    wait_for_log(&log, "stderr", "response:200");
    let loggers = processes_with(&logger_arg);
    assert_eq!(loggers.len(), 1, "one logger process for the container");

    // cgroups: v2 membership (eBPF accounting) and the limits.
    let rel = cgroups_path.trim_start_matches('/');
    let layout = Layout::detect().expect("cgroup layout");
    let procs = fs::read_to_string(layout.v2_mount().join(rel).join("cgroup.procs"))
        .expect("container's v2 cgroup");
    assert!(
        procs.lines().any(|l| l.trim() == run.pid.to_string()),
        "pid {} not in v2 cgroup {rel}: {procs}",
        run.pid
    );
    let own = fs::read_to_string(format!("/proc/{}/cgroup", run.pid)).unwrap();
    assert!(
        own.lines().any(|l| l == format!("0::{cgroups_path}")),
        "{own}"
    );
    match &layout {
        Layout::Hybrid { .. } => {
            let v1 = Path::new("/sys/fs/cgroup");
            let read = |p: &str| fs::read_to_string(v1.join(p)).unwrap().trim().to_string();
            assert_eq!(
                read(&format!("memory/{rel}/memory.limit_in_bytes")),
                (64u64 << 20).to_string()
            );
            assert_eq!(read(&format!("cpu/{rel}/cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&format!("cpu/{rel}/cpu.cfs_period_us")), "100000");
        }
        Layout::Unified { v2 } => {
            let read = |f: &str| fs::read_to_string(v2.join(rel).join(f)).unwrap();
            assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
            assert_eq!(read("cpu.max").trim(), "50000 100000");
        }
    }

    // list() finds it by its labels.
    let all = rt.list().await.expect("list");
    let info = all.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(info.status, TaskStatus::Running);
    assert_eq!(info.pid, Some(run.pid));
    assert_eq!(info.instance(), Some(env.instance().as_str()));
    assert_eq!(info.container(), Some("web"));
    assert_eq!(info.labels.get(LABEL_APP).map(String::as_str), Some("app"));
    assert_eq!(info.labels.get(LABEL_INSTANCE), Some(&env.instance()));
    assert_eq!(
        info.labels.get(LABEL_CONTAINER).map(String::as_str),
        Some("web")
    );
    assert_eq!(info.labels.get("extra").map(String::as_str), Some("yes"));

    // A riklet restart: the client goes away, the container and its logger
    // do not; a new client adopts it.
    drop(rt);
    let before = count_log(&log, "response:200");
    let answer = http_get(addr);
    assert!(answer.ends_with(INDEX_HTML));
    let rt = env.runtime().await;
    http_get(addr);
    let deadline = Instant::now() + WAIT;
    while count_log(&log, "response:200") < before + 2 {
        assert!(Instant::now() < deadline, "no log lines after the restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rt.list()
            .await
            .unwrap()
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .status,
        TaskStatus::Running
    );

    // Stop: httpd, pid 1 of its namespace without a SIGTERM handler,
    // ignores SIGTERM; SIGKILL follows the grace period.
    let waiter = {
        let rt = rt.clone();
        let id = id.clone();
        tokio::spawn(async move { rt.wait(&id).await })
    };
    let t0 = Instant::now();
    rt.stop(&id, Duration::from_secs(1)).await.expect("stop");
    let took = t0.elapsed();
    let exit = waiter.await.unwrap().expect("wait");
    println!("stop took {took:?}, exit {exit:?}");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    assert!(!exit.oom_killed);
    assert!(
        exit.exit_code == 137 || exit.exit_code == 143 || exit.exit_code == 0,
        "{exit:?}"
    );
    if exit.exit_code == 137 {
        assert!(
            took >= Duration::from_secs(1),
            "SIGKILL before the grace period: {took:?}"
        );
    }
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    assert!(matches!(
        rt.list()
            .await
            .unwrap()
            .iter()
            .find(|c| c.id == id)
            .unwrap()
            .status,
        TaskStatus::Stopped { .. }
    ));
    rt.stop(&id, Duration::from_secs(1))
        .await
        .expect("stopping a stopped container is fine");

    // Remove leaves nothing: task, container, snapshot, cgroup, logger.
    rt.remove(&id).await.expect("remove");
    assert!(ctr_ids(&env.ns, "tasks").is_empty());
    assert!(ctr_ids(&env.ns, "containers").is_empty());
    assert_eq!(snapshot_keys(&env.ns), vec![env.chain_id.clone()]);
    assert!(
        !layout.v2_mount().join(rel).exists(),
        "v2 cgroup left behind"
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory").join(rel).exists(),
        "v1 cgroup left behind"
    );
    assert!(processes_with(&logger_arg).is_empty());
    assert!(rt.list().await.unwrap().is_empty());
    rt.remove(&id).await.expect("removing twice is fine");
    assert!(rt.wait(&id).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread")]
async fn httpd_in_a_pod_network_namespace() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("netns");
    let (netns, ip) = env.create_netns();
    let rt = env.runtime().await;
    let mut spec = env.spec("web", &["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]);
    spec.netns = Some(netns);
    spec.hostname = Some("pod-host".into());
    let hosts = env.dir.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n10.0.0.9 db\n").unwrap();
    spec.hosts = Some(hosts);
    let run = start(&rt, spec).await;
    let answer = http_get(SocketAddr::from((ip, 8080)));
    assert!(answer.ends_with(INDEX_HTML), "{answer}");
    // Its own network namespace, not the host's.
    let netns_of = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(netns_of(run.pid), netns_of(std::process::id()));
    // A second container sees the pod's hostname and hosts file.
    let mut probe = env.spec(
        "probe",
        &["/bin/sh", "-c", "cat /proc/sys/kernel/hostname /etc/hosts"],
    );
    probe.netns = env
        .netns
        .as_ref()
        .map(|n| PathBuf::from(format!("/run/netns/{n}")));
    probe.hostname = Some("pod-host".into());
    probe.hosts = Some(env.dir.path().join("hosts"));
    let log = probe.log.current_file();
    let p = start(&rt, probe).await;
    let exit = rt.wait(&p.container_id).await.unwrap();
    assert_eq!(exit.exit_code, 0);
    wait_for_log(&log, "stdout", "pod-host");
    wait_for_log(&log, "stdout", "10.0.0.9 db");
    rt.remove(&p.container_id).await.unwrap();
    rt.remove(&run.container_id).await.unwrap();
    assert!(ctr_ids(&env.ns, "containers").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sigterm_then_sigkill_after_grace() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("stop");
    let rt = env.runtime().await;

    // Handles SIGTERM: stops at once, exit status of its handler.
    let polite = env.spec(
        "polite",
        &[
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let polite_log = polite.log.current_file();
    let run = start(&rt, polite).await;
    wait_for_log(&polite_log, "stdout", "ready");
    let t0 = Instant::now();
    rt.stop(&run.container_id, Duration::from_secs(10))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "graceful stop took {took:?}");
    let exit = rt.wait(&run.container_id).await.unwrap();
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    wait_for_log(&polite_log, "stdout", "got-term");

    // Ignores SIGTERM: SIGKILL after the grace period.
    let stubborn = env.spec(
        "stubborn",
        &[
            "/bin/sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let stubborn_log = stubborn.log.current_file();
    let run2 = start(&rt, stubborn).await;
    wait_for_log(&stubborn_log, "stdout", "ready");
    let t0 = Instant::now();
    rt.stop(&run2.container_id, Duration::from_millis(1500))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "stop took {took:?}"
    );
    let exit = rt.wait(&run2.container_id).await.unwrap();
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert_eq!(exit.to_exit_record().signal, Some(9));

    for id in [&run.container_id, &run2.container_id] {
        rt.remove(id).await.unwrap();
    }
    assert!(ctr_ids(&env.ns, "containers").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_users_env_and_oom_kills() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("exit");
    let rt = env.runtime().await;

    // Exit code, image user resolved through the image's /etc/passwd,
    // environment merged.
    let mut spec = env.spec(
        "three",
        &[
            "/bin/sh",
            "-c",
            "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo $IMAGE_VAR $MODE; echo cwd=$(pwd); exit 3",
        ],
    );
    spec.image_config.user = Some("www".into());
    spec.image_config.working_dir = Some("/www".into());
    spec.env = vec![("MODE".into(), "test-mode".into())];
    let log = spec.log.current_file();
    let run = start(&rt, spec).await;
    let exit = rt.wait(&run.container_id).await.unwrap();
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert!(!exit.oom_killed);
    assert_eq!(exit.to_exit_record().reason, "Error");
    let now = chrono::Utc::now().timestamp_millis();
    assert!((now - exit.finished_at).abs() < 60_000, "{exit:?}");
    wait_for_log(&log, "stdout", "uid=33 gid=33 groups=33 4");
    wait_for_log(&log, "stdout", "from-image test-mode");
    wait_for_log(&log, "stdout", "cwd=/www");

    // OOM kill under a 16 MiB limit.
    let mut oom = env.spec(
        "oom",
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=4",
        ],
    );
    oom.limits.memory_bytes = Some(16 << 20);
    let oom_run = start(&rt, oom).await;
    let exit = rt.wait(&oom_run.container_id).await.unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert_eq!(exit.to_exit_record().reason, "OOMKilled");

    // An exit while no client waited (the riklet was down): a new client
    // reads it, and list() shows the stopped task.
    let quick = env.spec("seven", &["/bin/sh", "-c", "exit 7"]);
    let quick_run = start(&rt, quick).await;
    drop(rt);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rt = env.runtime().await;
    let exit = rt.wait(&quick_run.container_id).await.unwrap();
    assert_eq!(exit.exit_code, 7);
    let listed = rt.list().await.unwrap();
    let seven = listed
        .iter()
        .find(|c| c.id == quick_run.container_id)
        .unwrap();
    assert_eq!(seven.status, TaskStatus::Stopped { exit_code: 7 });
    assert_eq!(seven.pid, None);
    // The OOM verdict is still readable later (the cgroup lives until the
    // task is deleted).
    assert!(rt.wait(&oom_run.container_id).await.unwrap().oom_killed);

    for id in [
        &run.container_id,
        &oom_run.container_id,
        &quick_run.container_id,
    ] {
        rt.remove(id).await.unwrap();
    }
    assert!(ctr_ids(&env.ns, "containers").is_empty());
    assert_eq!(snapshot_keys(&env.ns), vec![env.chain_id.clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_starts_undo_and_duplicates_are_refused() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("fail");
    let rt = env.runtime().await;

    // A missing parent snapshot: an error, nothing left.
    let mut bad = env.spec("bad", &["/bin/true"]);
    bad.snapshot_parent =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let e = rt.start(bad).await.unwrap_err();
    assert!(matches!(e, ContainerdError::ParentNotFound { .. }), "{e}");
    // A command that does not exist: runc fails, the start is undone.
    let missing = env.spec("missing", &["/bin/nope"]);
    // runc's words are the cause (the source), not the error's message.
    let e = riklet::error_chain(&rt.start(missing).await.unwrap_err());
    println!("missing command: {e}");
    assert!(e.contains("nope"), "{e}");
    // An unknown image user.
    let mut nobody = env.spec("nobody", &["/bin/true"]);
    nobody.image_config.user = Some("nobody".into());
    let e = rt.start(nobody).await.unwrap_err();
    assert!(matches!(e, ContainerdError::Spec { .. }), "{e}");
    assert!(e.to_string().contains("nobody"), "{e}");
    assert!(ctr_ids(&env.ns, "containers").is_empty());
    assert!(ctr_ids(&env.ns, "tasks").is_empty());
    assert_eq!(snapshot_keys(&env.ns), vec![env.chain_id.clone()]);

    // The same container twice: refused, the first one untouched.
    let run = start(&rt, env.spec("once", &["/bin/sleep", "3600"])).await;
    let e = rt
        .start(env.spec("once", &["/bin/sleep", "3600"]))
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerdError::AlreadyExists(_)), "{e}");
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, TaskStatus::Running);
    assert_eq!(listed[0].pid, Some(run.pid));

    // Invalid ids never reach containerd.
    let mut weird = env.spec("x", &["/bin/true"]);
    weird.container = "Not_Valid".into();
    assert!(matches!(
        rt.start(weird).await.unwrap_err(),
        ContainerdError::Id(_)
    ));
    rt.remove(&run.container_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_remove_cycles_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("cycles");
    let rt = env.runtime().await;
    // Warm up (the first shim start loads more of the runtime).
    let run = start(&rt, env.spec("cycle", &["/bin/sleep", "3600"])).await;
    rt.remove(&run.container_id).await.unwrap();
    let fds = open_fds();
    let mut latencies = Vec::new();
    for i in 0..20 {
        let spec = env.spec("cycle", &["/bin/sh", "-c", "echo cycle; exec sleep 3600"]);
        let log = spec.log.current_file();
        let t0 = Instant::now();
        let run = start(&rt, spec).await;
        latencies.push(t0.elapsed());
        assert!(
            fs::metadata(format!("/proc/{}", run.pid)).is_ok(),
            "cycle {i}: pid {} not running",
            run.pid
        );
        wait_for_log(&log, "stdout", "cycle");
        rt.remove(&run.container_id).await.unwrap();
    }
    latencies.sort();
    println!(
        "start latency over 20 runs: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[10], latencies[19]
    );
    assert!(ctr_ids(&env.ns, "containers").is_empty());
    assert!(ctr_ids(&env.ns, "tasks").is_empty());
    assert_eq!(snapshot_keys(&env.ns), vec![env.chain_id.clone()]);
    assert!(ctr_ids(&env.ns, "leases").is_empty(), "leases left behind");
    assert_eq!(open_fds(), fds, "file descriptors leaked");
    let deadline = Instant::now() + WAIT;
    loop {
        let shims = processes_with(&format!("-namespace {}", env.ns));
        let loggers = processes_with(&format!("logger {}", env.dir.path().display()));
        if shims.is_empty() && loggers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: shims {shims:?}, loggers {loggers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let layout = Layout::detect().unwrap();
    let root = layout.v2_mount().join(env.ns.as_str());
    let left: Vec<_> = fs::read_dir(&root)
        .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

#[tokio::test]
async fn connecting_without_containerd_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let e = ContainerdRuntime::connect(&socket, "rik")
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ContainerdError::Connect { .. }), "{text}");
    assert!(text.contains(&socket.display().to_string()), "{text}");
    assert!(text.contains("is containerd running"), "{text}");
    // A socket nobody listens on.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener);
    let e = ContainerdRuntime::connect(&socket, "rik")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is containerd running"), "{e}");
    let e = ContainerdRuntime::connect(Path::new(SOCKET), "bad namespace")
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerdError::Namespace(..)), "{e}");
}
