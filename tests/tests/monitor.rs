//! The Node Monitor against the real kernel: CPU, memory and network
//! figures checked against independent measurements, run-queue latency
//! under contention, OOM kills as pod events, TCP retransmissions checked
//! against the pod's own namespace counters, the Prometheus endpoint
//! (promtool), and a deleted pod's figures leaving the eBPF maps and
//! `/metrics`.
//!
//! The tests of this file run one at a time: they load the CPUs on
//! purpose, and each must not disturb the others' figures.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use riklet_e2e::{Cluster, Mode, Options, bin_dir, wait_for};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn app(name: &str, containers: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!("apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n{extra}  containers:\n");
    for (c, args) in containers {
        let (exec, args) = args.split_once(' ').expect("exec and args");
        s.push_str(&format!(
            "    - name: {c}\n      exec: {exec}\n      args: {args}\n"
        ));
    }
    s
}

fn apply(cluster: &Cluster, manifest: &str) {
    let out = cluster.apply(manifest, true);
    assert!(
        out.status.success(),
        "apply: {}\n{manifest}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The riklet's own view of a pod of `app` (fresh, not via the scheduler).
fn local(cluster: &Cluster, app: &str) -> Value {
    let pods = cluster.local_pods();
    pods.as_array()
        .expect("pods")
        .iter()
        .find(|p| p["app"] == app)
        .unwrap_or_else(|| panic!("no pod of {app}: {pods:#}"))
        .clone()
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
}

fn scrape(port: u16) -> String {
    let (status, body) = riklet_e2e::http_get(port, "/metrics").expect("GET /metrics");
    assert!(status.contains("200"), "{status}");
    body
}

/// Rate of a counter of the pod over `window`, from two readings.
/// The rate of the riklet's figure at `path` for `app` and, over the same
/// window, of the kernel's CPU time of `cgroup` (its `cpu.stat`), in cores.
/// Each end is read just after the riklet's figure moved (a collection
/// cycle has just run), so that both rates cover the same time however
/// loaded the machine is.
fn rate_beside_kernel(
    cluster: &Cluster,
    app: &str,
    path: &[&str],
    cgroup: &std::path::Path,
    window: Duration,
) -> (f64, f64) {
    let kernel_seconds = || {
        let stat = std::fs::read_to_string(cgroup.join("cpu.stat"))
            .unwrap_or_else(|e| panic!("{}/cpu.stat: {e}", cgroup.display()));
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("usage_usec in cpu.stat")
            / 1e6
    };
    let fresh = || {
        let before = wait_for(Duration::from_secs(10), "a figure", || {
            f64_at(&local(cluster, app), path)
        });
        wait_for(Duration::from_secs(10), "the next collection", || {
            f64_at(&local(cluster, app), path)
                .filter(|v| *v != before)
                .map(|v| (v, kernel_seconds(), Instant::now()))
        })
    };
    let (v0, k0, t0) = fresh();
    std::thread::sleep(window);
    let (v1, k1, t1) = fresh();
    let seconds = (t1 - t0).as_secs_f64();
    ((v1 - v0) / seconds, (k1 - k0) / seconds)
}

#[test]
fn cpu_and_memory_match_the_kernel_and_endpoint_passes_promtool() {
    let _serial = serial();
    let cluster = Cluster::start(Mode::Standalone);
    let py = "/usr/bin/python3";
    assert!(
        std::path::Path::new(py).exists(),
        "{py} missing (Debian python3)"
    );
    apply(
        &cluster,
        &app(
            "burner",
            &[("spin", "/bin/busybox [sh, -c, \"while :; do :; done\"]")],
            "",
        ),
    );
    let hold = |mib: u32| {
        format!(
            "{py} [-c, \"import time; b=bytearray({mib}<<20); b[::4096]=b'x'*(len(b)//4096); time.sleep(3600)\"]"
        )
    };
    apply(&cluster, &app("holder", &[("py", &hold(64))], ""));
    apply(&cluster, &app("baseline", &[("py", &hold(0))], ""));

    // A spinner's CPU time as the riklet reports it (the cgroup's CPU
    // time, the eBPF on-CPU time, the usage rate) against the kernel's
    // figure for its cgroup over the same window: how much of a core the
    // spinner gets depends on the machine's other load, the agreement
    // does not.
    let burner_id = local(&cluster, "burner")["appId"]
        .as_str()
        .expect("id")
        .to_string();
    let cgroup = cluster
        .cgroup_dirs(&burner_id, "spin")
        .pop()
        .expect("the v2 cgroup");
    let window = Duration::from_secs(3);
    let (cgroup_cores, kernel) = rate_beside_kernel(
        &cluster,
        "burner",
        &["cpu", "usageSeconds"],
        &cgroup,
        window,
    );
    let (ebpf_cores, kernel_ebpf) = rate_beside_kernel(
        &cluster,
        "burner",
        &["cpu", "oncpuSeconds"],
        &cgroup,
        window,
    );
    // The usage rate is the last cycle's: the CPU seconds between two
    // consecutive collections over the time between them.
    let (reported, last_cycle) = {
        let next = |after: Option<f64>| {
            wait_for(Duration::from_secs(10), "the next collection", || {
                let pod = local(&cluster, "burner");
                let seconds = f64_at(&pod, &["cpu", "usageSeconds"])?;
                (after != Some(seconds)).then(|| {
                    let cores = f64_at(&pod, &["cpu", "usageCores"]);
                    (seconds, cores, Instant::now())
                })
            })
        };
        let (s0, _, _) = next(None);
        let (s1, _, t1) = next(Some(s0));
        let (s2, cores, t2) = next(Some(s1));
        (
            cores.expect("usageCores"),
            (s2 - s1) / (t2 - t1).as_secs_f64(),
        )
    };
    println!(
        "burner: cgroup {cgroup_cores:.3} cores (kernel {kernel:.3}), eBPF {ebpf_cores:.3} \
         (kernel {kernel_ebpf:.3}), reported {reported:.3} (last cycle {last_cycle:.3})"
    );
    assert!(
        kernel > 0.2 && kernel_ebpf > 0.2,
        "the spinner got {kernel:.3} and {kernel_ebpf:.3} of a core: too little to compare"
    );
    // eBPF charges a slice when the task leaves the CPU; the riklet adds
    // the slice in progress (a spinner alone on a CPU may not leave it for
    // seconds), so the eBPF figure is as close as the cgroup's.
    for (what, v, truth) in [
        ("cgroup", cgroup_cores, kernel),
        ("eBPF on-CPU", ebpf_cores, kernel_ebpf),
        ("usageCores", reported, last_cycle),
    ] {
        assert!(
            (0.8..=1.2).contains(&(v / truth)),
            "{what}: {v:.3} cores where the kernel counted {truth:.3}"
        );
    }

    // 64 MiB held: the difference with the same program holding nothing.
    let ws = |a: &str| {
        wait_for(Duration::from_secs(10), "working set", || {
            f64_at(&local(&cluster, a), &["memory", "workingSetBytes"]).filter(|v| *v > 0.0)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let held = ws("holder") - ws("baseline");
    let want = (64u64 << 20) as f64;
    println!(
        "holder - baseline working set: {:.1} MiB",
        held / (1u64 << 20) as f64
    );
    assert!(
        (held - want).abs() <= want * 0.10,
        "64 MiB held, {held} bytes reported"
    );

    // The scheduler gets the same figures with the pod's status.
    let via_scheduler = cluster.wait_app("burner", "usage in the scheduler's view", |a| {
        f64_at(a, &["cpu", "usageCores"]).is_some()
            && f64_at(a, &["memory", "workingSetBytes"]).is_some()
    });
    assert_eq!(via_scheduler["state"], "RUNNING");

    // Prometheus endpoint: valid exposition, pod series with their labels.
    let port = cluster.metrics_port();
    let body = scrape(port);
    assert!(
        body.lines()
            .any(|l| l.starts_with("riklet_pod_cpu_seconds_total{")
                && l.contains(&format!("instance=\"{burner_id}\""))
                && l.contains("app=\"burner\"")
                && l.contains(&format!("node=\"{}\"", cluster.node))),
        "no CPU series for {burner_id}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus package; cargo xtask setup installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), body.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes the riklet and can query a pod series.
    let prom = Prometheus::start(&cluster, port);
    let series = wait_for(
        Duration::from_secs(40),
        "Prometheus to have the holder's series",
        || {
            let (_, body) = riklet_e2e::http_get(
                prom.port,
                "/api/v1/query?query=riklet_pod_memory_working_set_bytes%7Bapp%3D%22holder%22%7D",
            )
            .ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let result = v["data"]["result"].as_array()?.clone();
            (!result.is_empty()).then_some(result)
        },
    );
    assert_eq!(series[0]["metric"]["container"], "py", "{series:?}");
    drop(prom);

    // Delete: the pod's series leave /metrics and its cgroup's entries
    // leave the eBPF maps.
    let cgroup_dir = cluster
        .cgroup_dirs(&burner_id, "spin")
        .pop()
        .expect("v2 cgroup dir");
    let cgroup_id =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup_dir).expect("cgroup dir"));
    let in_map = |map: &str| {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(cluster.pin_dir.join(map))
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        dump.as_array().expect("entries").iter().any(|e| {
            e["formatted"]["key"].as_u64() == Some(cgroup_id) || e["key"] == key_bytes(cgroup_id)
        })
    };
    assert!(
        in_map("SCHED_STATS"),
        "the burner's cgroup {cgroup_id} is not in SCHED_STATS"
    );
    cluster.rik_ok(&["delete", "burner"]);
    wait_for(
        Duration::from_secs(20),
        "the deleted pod's series to leave /metrics",
        || (!scrape(port).contains(&burner_id)).then_some(()),
    );
    wait_for(
        Duration::from_secs(10),
        "the deleted pod's eBPF entries to go",
        || (!in_map("SCHED_STATS") && !in_map("CGROUP_TRAFFIC")).then_some(()),
    );
}

/// bpftool's raw key form: little-endian bytes as "0x.." strings.
fn key_bytes(id: u64) -> Value {
    Value::Array(
        id.to_le_bytes()
            .iter()
            .map(|b| Value::String(format!("0x{b:02x}")))
            .collect(),
    )
}

/// A peer host in its own network namespace, removed on drop.
struct Peer {
    ns: String,
    host_if: String,
}

impl Peer {
    fn new(n: u32) -> Peer {
        let ns = format!("rkmon{}", std::process::id() % 100_000);
        let host_if = format!("rkmh{}", std::process::id() % 100_000);
        let peer_if = format!("rkmp{}", std::process::id() % 100_000);
        let ip = |args: &str| {
            let ok = Command::new("ip")
                .args(args.split(' '))
                .status()
                .expect("ip")
                .success();
            assert!(ok, "ip {args}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).status();
        let peer = Peer {
            ns: ns.clone(),
            host_if: host_if.clone(),
        };
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {host_if} type veth peer name {peer_if} netns {ns}"
        ));
        ip(&format!("addr add 10.216.{n}.1/30 dev {host_if}"));
        ip(&format!("link set {host_if} up"));
        ip(&format!("-n {ns} addr add 10.216.{n}.2/30 dev {peer_if}"));
        ip(&format!("-n {ns} link set {peer_if} up"));
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} route add default via 10.216.{n}.1"));
        peer
    }

    /// A server in the peer that reads one connection on `port` to its end,
    /// then exits. socat -u: receive only (busybox nc -l closes at its
    /// stdin's EOF).
    fn sink(&self, port: u16) -> std::process::Child {
        let server = Command::new("ip")
            .args(["netns", "exec", &self.ns, "socat", "-u"])
            .arg(format!("TCP-LISTEN:{port}"))
            .arg("OPEN:/dev/null")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("socat server in the peer netns (cargo xtask setup installs socat)");
        std::thread::sleep(Duration::from_millis(300));
        server
    }

    fn rx_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "cat"])
            .arg(format!(
                "/sys/class/net/{}/statistics/rx_bytes",
                self.host_if.replace("rkmh", "rkmp")
            ))
            .output()
            .expect("read rx_bytes");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("rx_bytes")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn ebpf_egress_bytes_match_the_bytes_on_the_wire() {
    let _serial = serial();
    let cluster = Cluster::start(Mode::Standalone);
    let peer = Peer::new(7);
    let mut server = peer.sink(9000);
    let wire0 = peer.rx_bytes();
    let send =
        "/bin/busybox [sh, -c, \"head -c 20000000 /dev/zero | nc 10.216.7.2 9000; sleep 3600\"]";
    apply(&cluster, &app("sender", &[("send", send)], ""));
    wait_for(Duration::from_secs(30), "the peer to receive 20 MB", || {
        server.try_wait().ok().flatten()
    });
    let wire = peer.rx_bytes() - wire0;
    assert!(wire >= 20_000_000, "only {wire} bytes reached the peer");
    std::thread::sleep(Duration::from_millis(1500));
    let tx = f64_at(&local(&cluster, "sender"), &["network", "txBytes"]).expect("txBytes") as u64;
    let diff = (tx as f64 - wire as f64).abs() / wire as f64;
    println!(
        "eBPF egress {tx} bytes, wire {wire} bytes, difference {:.2} %",
        diff * 100.0
    );
    assert!(diff <= 0.05, "eBPF egress {tx} vs {wire} bytes on the wire");
}

#[test]
fn tcp_retransmissions_of_a_pod_are_reported() {
    let _serial = serial();
    let cluster = Cluster::start(Mode::Standalone);
    let peer = Peer::new(8);
    // The peer drops one packet in twenty on the way in: the pod resends.
    for rule in [
        "add table inet loss",
        "add chain inet loss input { type filter hook input priority 0; }",
        "add rule inet loss input tcp dport 9000 numgen random mod 20 0 drop",
    ] {
        let ok = Command::new("ip")
            .args(["netns", "exec", &peer.ns, "nft", rule])
            .status()
            .expect("nft (cargo xtask setup installs nftables)")
            .success();
        assert!(ok, "nft {rule}");
    }
    let mut server = peer.sink(9000);
    // After the transfer, the pod prints its network namespace's own TCP
    // counters, once the last retransmissions are over.
    let send = "/bin/busybox [sh, -c, \"head -c 5000000 /dev/zero | nc 10.216.8.2 9000; sleep 3; cat /proc/net/snmp; sleep 3600\"]";
    apply(&cluster, &app("resender", &[("send", send)], ""));
    wait_for(Duration::from_secs(60), "the peer to receive 5 MB", || {
        server.try_wait().ok().flatten()
    });
    let snmp = wait_for(Duration::from_secs(20), "the pod's TCP counters", || {
        let logs = cluster.rik_ok(&["logs", "resender"]);
        let tcp: Vec<&str> = logs.lines().filter(|l| l.starts_with("Tcp:")).collect();
        (tcp.len() == 2).then(|| {
            tcp[0]
                .split_whitespace()
                .zip(tcp[1].split_whitespace())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<String, String>>()
        })
    });
    let retrans_segs: u64 = snmp["RetransSegs"].parse().expect("RetransSegs");
    std::thread::sleep(Duration::from_millis(1500));
    let counted = f64_at(&local(&cluster, "resender"), &["network", "tcpRetransmits"])
        .expect("network.tcpRetransmits") as u64;
    println!(
        "pod with 5 % loss: eBPF {counted} retransmitted skbs, its namespace's RetransSegs {retrans_segs}"
    );
    assert!(retrans_segs > 0, "the lossy path caused no retransmission");
    // One per retransmitted skb, which can carry several segments.
    assert!(
        counted >= 1 && counted <= retrans_segs,
        "eBPF counted {counted} retransmissions, the pod's namespace {retrans_segs} segments"
    );
    let instance = local(&cluster, "resender")["appId"]
        .as_str()
        .expect("appId")
        .to_string();
    let body = scrape(cluster.metrics_port());
    let series = body
        .lines()
        .find(|l| {
            l.starts_with("riklet_pod_tcp_retransmits_total{")
                && l.contains(&format!("instance=\"{instance}\""))
        })
        .unwrap_or_else(|| panic!("no retransmission series of {instance}:\n{body}"));
    let exported: u64 = series
        .rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .expect("series value");
    assert!(
        exported >= counted && exported <= retrans_segs,
        "/metrics says {exported}, the pod JSON {counted}, the kernel {retrans_segs}"
    );
    drop(peer);
}

#[test]
fn runqueue_latency_shows_under_contention_and_oom_kills_become_events() {
    let _serial = serial();
    let cluster = Cluster::start(Mode::Standalone);
    let spin = "/bin/busybox [sh, -c, \"while :; do :; done\"]";
    apply(
        &cluster,
        &app("hogs", &[("a", spin), ("b", spin), ("c", spin)], ""),
    );
    apply(
        &cluster,
        &app(
            "waker",
            &[(
                "w",
                "/bin/busybox [sh, -c, \"while :; do usleep 1000; done\"]",
            )],
            "",
        ),
    );
    let waker = wait_for(
        Duration::from_secs(15),
        "run-queue latency of the waker",
        || {
            let p = local(&cluster, "waker");
            let count = f64_at(&p, &["runqueue", "count"])?;
            let mean = f64_at(&p, &["runqueue", "meanSeconds"])?;
            (count > 100.0 && mean > 0.0).then_some(p)
        },
    );
    println!("waker run queue: {}", waker["runqueue"]);
    let body = scrape(cluster.metrics_port());
    let waker_id = waker["appId"].as_str().expect("id");
    assert!(
        body.lines().any(
            |l| l.starts_with("riklet_pod_runqueue_latency_seconds_bucket{")
                && l.contains(waker_id)
        ),
        "no run-queue histogram for the waker"
    );
    cluster.rik_ok(&["delete", "hogs"]);

    // OOM: 16 MiB limit, a 64 MiB buffer.
    let oom = "apiVersion: v1\nkind: Pod\nname: oomer\nspec:\n  restartPolicy: Never\n  containers:\n    - name: dd\n      \
               exec: /bin/busybox\n      args: [dd, if=/dev/zero, of=/dev/null, bs=64M]\n      resources: {memory: 16Mi}\n";
    let out = cluster.apply(oom, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = wait_for(
        Duration::from_secs(20),
        "the OOM kill as a pod event",
        || {
            let p = local(&cluster, "oomer");
            println!("{p}");
            let has_event = p["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["type"] == "OOMKill" && e["container"] == "dd")
            });
            (has_event && p["state"] == "FAILED").then_some(p)
        },
    );
    assert_eq!(
        p["containers"][0]["lastExit"]["reason"], "OOMKilled",
        "{p:#}"
    );
    assert!(
        f64_at(&p, &["memory", "oomKills"]).unwrap_or(0.0) >= 1.0,
        "{p:#}"
    );
}

/// A real Prometheus (Debian's) scraping the riklet every second.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Prometheus {
    fn start(cluster: &Cluster, target: u16) -> Prometheus {
        let dir = cluster.dir.path().join("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: riklet\n    honor_labels: true\n    \
                 static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n"
            ),
        )
        .expect("prometheus config");
        let port = riklet_e2e::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian prometheus package; cargo xtask setup installs it)");
        Prometheus { child, port }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn without_ebpf_the_riklet_says_so_once_and_keeps_cgroup_figures() {
    let _serial = serial();
    let cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            no_ebpf: true,
            ..Options::default()
        },
    );
    apply(
        &cluster,
        &app(
            "plain",
            &[("spin", "/bin/busybox [sh, -c, \"while :; do :; done\"]")],
            "",
        ),
    );
    let p = wait_for(
        Duration::from_secs(15),
        "cgroup figures without eBPF",
        || {
            let p = local(&cluster, "plain");
            (f64_at(&p, &["cpu", "usageSeconds"]).is_some_and(|s| s > 0.0)
                && f64_at(&p, &["memory", "usageBytes"]).is_some())
            .then_some(p)
        },
    );
    assert!(
        p["network"]["txBytes"].is_null(),
        "eBPF figure without eBPF: {p:#}"
    );
    assert!(
        p["cpu"]["oncpuSeconds"].is_null(),
        "eBPF figure without eBPF: {p:#}"
    );
    let out = Command::new(bin_dir().join("riklet"))
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .args(["status", "-o", "json"])
        .output()
        .expect("riklet status");
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["ebpf"], false);
    let log = std::fs::read_to_string(cluster.dir.path().join("riklet.log")).expect("riklet log");
    assert_eq!(
        log.matches("eBPF probes unavailable").count(),
        1,
        "the missing eBPF must be said once"
    );
}
