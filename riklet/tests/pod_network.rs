//! Root tests of `riklet::network`: real network namespaces, veths, a
//! bridge and nftables rules, with real TCP traffic between the host and
//! pods. Traffic only goes to addresses inside namespaces the test created.
//!
//! Needs root, `ip` and `nft` (to inspect), `/usr/bin/socat`. A missing
//! prerequisite fails the test with a message saying what is missing.
//!
//! Every test uses its own bridge (`rktest<n>`), CIDR (`10.213.<n>.0/24`),
//! nftables table (`riklet_test_<n>`), instance ids (`nettest<n>-…`) and a
//! temporary state dir; a guard removes all of them, through `ip`/`nft`
//! rather than the code under test, before the test (leftovers of a killed
//! run) and after it, even on panic. The tests run one at a time: they
//! share `/run/netns`, and the leak test counts the process's descriptors.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use riklet::network::{
    IPAM_FILE, NetworkConfig, NetworkError, PodAddress, PodNetwork, host_veth_name, netns,
};
use serde_json::{Value, json};

const SOCAT: &str = "/usr/bin/socat";
const PORT: u16 = 8080;
const REPLY: &str = "pong-from-a";

/// The tests share `/run/netns` and the fd table: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The host veth of a pod of the fixture's network (the default prefix).
fn veth(id: &str) -> String {
    host_veth_name(netns::NETNS_PREFIX, id)
}

/// The namespace of a pod of the fixture's network (the default prefix).
fn ns_path(id: &str) -> std::path::PathBuf {
    netns::path_of(netns::NETNS_PREFIX, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_talk_to_the_host_and_each_other_then_detach_cleanly() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(1);
    let net = fx.network().await;
    let (id_a, id_b) = (fx.id("a"), fx.id("b"));

    let a = attach(&net, &id_a).await;
    let b = attach(&net, &id_b).await;
    let gateway = Ipv4Addr::new(10, 213, 1, 1);
    for pod in [&a, &b] {
        assert_eq!(pod.gateway, gateway);
        assert_eq!(pod.prefix_len, 24);
        assert_eq!(pod.ip.octets()[..3], [10, 213, 1], "{pod:?}");
        assert!(pod.ip != gateway, "{pod:?}");
        assert!(pod.netns.exists(), "{} missing", pod.netns.display());
    }
    assert_ne!(a.ip, b.ip);
    assert_eq!(a.netns, Path::new("/run/netns").join(format!("rik-{id_a}")));
    assert_eq!(net.address(&id_a), Some(a.clone()));
    assert_eq!(net.address(&fx.id("nobody")), None);
    // Idempotent: the same answer, nothing recreated.
    let veth_a = link_index(&veth(&id_a)).expect("host veth of a");
    assert_eq!(attach(&net, &id_a).await, a);
    assert_eq!(link_index(&veth(&id_a)), Some(veth_a));

    // The host side is on the bridge, up.
    let ports = bridge_ports(&fx.bridge);
    for id in [&id_a, &id_b] {
        assert!(
            ports.contains(&veth(id)),
            "{} not on {}: {ports:?}",
            veth(id),
            fx.bridge
        );
    }
    // Hairpin ports: a pod reaches its own service through the node.
    for id in [&id_a, &id_b] {
        let link = ip_json(&["-d", "link", "show", "dev", &veth(id)]);
        assert_eq!(
            link[0]["linkinfo"]["info_slave_data"]["hairpin"],
            true,
            "{} is not a hairpin port: {link}",
            veth(id)
        );
    }
    // Inside: lo and eth0 up, the address, the default route.
    for (id, pod) in [(&id_a, &a), (&id_b, &b)] {
        let ns = format!("rik-{id}");
        let links = ip_json(&["-n", &ns, "link", "show"]);
        for name in ["lo", "eth0"] {
            let link = links
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["ifname"] == name)
                .unwrap_or_else(|| panic!("no {name} in {ns}: {links}"));
            let flags = link["flags"].to_string();
            assert!(flags.contains("\"UP\""), "{name} in {ns} is down: {link}");
        }
        let addrs = ip_json(&["-n", &ns, "-4", "addr", "show", "dev", "eth0"]);
        let expected = pod.ip.to_string();
        assert!(
            addrs[0]["addr_info"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["local"] == expected.as_str() && a["prefixlen"] == 24),
            "{expected}/24 not on eth0 in {ns}: {addrs}"
        );
        let routes = ip_json(&["-n", &ns, "-4", "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], gateway.to_string(), "{ns}: {routes}");
        assert_eq!(routes[0]["dev"], "eth0", "{ns}: {routes}");
        // IPv4 only: no IPv6 on either end of the veth (nothing flooded to
        // the bridge's other ports), `::1` kept on lo.
        let v6 = |dev: &str| ip_json(&["-n", &ns, "-6", "addr", "show", "dev", dev]);
        assert_eq!(v6("eth0"), json!([]), "IPv6 on eth0 in {ns}");
        assert!(
            v6("lo").to_string().contains("\"::1\""),
            "no ::1 on lo in {ns}: {}",
            v6("lo")
        );
        let host_end = veth(id);
        let v6_host = ip_json(&["-6", "addr", "show", "dev", &host_end]);
        assert_eq!(v6_host, json!([]), "IPv6 on {host_end}");
    }

    // A TCP server inside A…
    let _server = ChildGuard::spawn(
        Command::new(SOCAT)
            .args([
                "-T5",
                &format!("TCP-LISTEN:{PORT},reuseaddr,fork"),
                &format!("SYSTEM:echo {REPLY}"),
            ])
            .stdin(Stdio::null())
            .in_netns(&a.netns),
    );
    // …is reached from the host at A's address,
    let got = fetch_from_host(SocketAddr::from((a.ip, PORT)));
    assert_eq!(got.trim(), REPLY);
    // from B over the bridge,
    let from_b = fetch_in_netns(&b.netns, &a.ip.to_string());
    assert_eq!(from_b.trim(), REPLY, "B could not reach A");
    // and from A itself over its loopback.
    let from_lo = fetch_in_netns(&a.netns, "127.0.0.1");
    assert_eq!(from_lo.trim(), REPLY, "A's loopback does not work");
    drop(_server);

    // Detach: no namespace, no veth, no lease; twice is fine.
    for id in [&id_a, &id_b] {
        net.detach(id)
            .await
            .unwrap_or_else(|e| panic!("detach {id}: {}", riklet::error_chain(&e)));
        net.detach(id)
            .await
            .unwrap_or_else(|e| panic!("second detach {id}: {}", riklet::error_chain(&e)));
        assert!(!ns_path(id).exists(), "netns of {id} left");
        assert!(!mounted(&ns_path(id)), "netns of {id} still mounted");
        assert_eq!(link_index(&veth(id)), None, "veth of {id} left");
        assert_eq!(net.address(id), None);
    }
    assert_eq!(bridge_ports(&fx.bridge), HashSet::new());
    let ipam = std::fs::read_to_string(fx.state.path().join(IPAM_FILE)).unwrap();
    assert!(!ipam.contains(&id_a) && !ipam.contains(&id_b), "{ipam}");
    // The addresses are free again: a new pod gets one.
    attach(&net, &fx.id("c")).await;
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_removes_leftovers_of_unknown_instances_after_a_crash() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(3);
    let (gone, kept) = (fx.id("gone"), fx.id("kept"));
    let kept_address = {
        let net = fx.network().await;
        attach(&net, &gone).await;
        attach(&net, &kept).await
        // Dropped without detaching: what a crashed riklet leaves.
    };
    // A stray pod veth on the bridge that no lease accounts for.
    run(
        "ip",
        &[
            "link",
            "add",
            "rikv00deadbeef",
            "type",
            "veth",
            "peer",
            "name",
            "rikt3peer",
        ],
    );
    run(
        "ip",
        &["link", "set", "rikv00deadbeef", "master", &fx.bridge],
    );

    let net = fx.network().await;
    net.reconcile(std::slice::from_ref(&kept))
        .await
        .unwrap_or_else(|e| panic!("reconcile: {}", riklet::error_chain(&e)));
    assert!(
        !ns_path(&gone).exists(),
        "netns of the unknown instance left"
    );
    assert_eq!(link_index(&veth(&gone)), None);
    assert_eq!(link_index("rikv00deadbeef"), None, "stray veth left");
    assert_eq!(net.address(&gone), None);
    assert_eq!(net.instances(), vec![kept.clone()]);
    // The live one is untouched.
    assert_eq!(net.address(&kept), Some(kept_address.clone()));
    assert!(ns_path(&kept).exists());
    assert_eq!(bridge_ports(&fx.bridge), HashSet::from([veth(&kept)]));

    // A half-broken attachment (host veth deleted by hand) is repaired by
    // attaching again, with the same address.
    run("ip", &["link", "del", &veth(&kept)]);
    assert_eq!(attach(&net, &kept).await, kept_address);
    assert_eq!(bridge_ports(&fx.bridge), HashSet::from([veth(&kept)]));
    let routes = ip_json(&[
        "-n",
        &format!("rik-{kept}"),
        "-4",
        "route",
        "show",
        "default",
    ]);
    assert_eq!(routes[0]["gateway"], "10.213.3.1", "{routes}");

    net.reconcile(&[])
        .await
        .expect("reconcile with nothing live");
    assert!(!ns_path(&kept).exists());
    assert_eq!(bridge_ports(&fx.bridge), HashSet::new());
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_new_pod_network_on_the_same_state_dir() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(4);
    let (id_a, id_b, id_c) = (fx.id("a"), fx.id("b"), fx.id("c"));
    let (a, b) = {
        let net = fx.network().await;
        (attach(&net, &id_a).await, attach(&net, &id_b).await)
    };
    let net = fx.network().await;
    assert_eq!(net.address(&id_a), Some(a.clone()));
    assert_eq!(net.address(&id_b), Some(b.clone()));
    let c = attach(&net, &id_c).await;
    assert!(
        c.ip != a.ip && c.ip != b.ip,
        "duplicate address: {a:?} {b:?} {c:?}"
    );
    assert_eq!(attach(&net, &id_a).await, a);
    // Freed addresses are not handed out again at once.
    net.detach(&id_b).await.expect("detach b");
    let d = attach(&net, &fx.id("d")).await;
    assert!(
        ![a.ip, b.ip, c.ip].contains(&d.ip),
        "{d:?} reuses an address"
    );
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cidr_gets_exhausted_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new(5);
    fx.cidr = "10.213.5.0/30".into();
    let net = fx.network().await;
    let (first, second) = (fx.id("first"), fx.id("second"));
    let only = attach(&net, &first).await;
    assert_eq!(only.ip, Ipv4Addr::new(10, 213, 5, 2));
    assert_eq!(only.prefix_len, 30);

    let err = net.attach(&second).await.expect_err("a /30 holds one pod");
    let text = riklet::error_chain(&err);
    assert!(matches!(err, NetworkError::CidrExhausted { .. }), "{text}");
    assert!(
        text.contains("10.213.5.0/30") && text.contains("exhausted"),
        "{text}"
    );
    assert!(!ns_path(&second).exists(), "a failed attach left a netns");
    assert_eq!(link_index(&veth(&second)), None);
    assert_eq!(net.address(&second), None);

    net.detach(&first).await.expect("detach");
    assert_eq!(attach(&net, &second).await.ip, only.ip);
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masquerade_rule_is_installed_once_and_removed_by_remove_all() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(6);
    let net = fx.network().await;
    // A second PodNetwork (riklet restart) does not duplicate the rule.
    drop(net);
    let net = fx.network().await;
    attach(&net, &fx.id("a")).await;

    let table = nft_table(&fx.table).expect("the masquerade table is missing");
    let masq = objects(&table, "chain")
        .into_iter()
        .find(|c| c["name"] == "pod_masquerade")
        .unwrap_or_else(|| panic!("no pod_masquerade chain: {table}"));
    assert_eq!(masq["type"], "nat", "{masq}");
    assert_eq!(masq["hook"], "postrouting", "{masq}");
    let rules = objects(&table, "rule");
    assert_eq!(rules.len(), 1, "{table}");
    let expr = rules[0]["expr"].to_string();
    for needle in [
        r#""field":"saddr""#,
        r#""field":"daddr""#,
        r#""op":"!=""#,
        r#""addr":"10.213.6.0","len":24"#,
        r#""masquerade""#,
    ] {
        assert!(expr.contains(needle), "{needle} not in {expr}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    remove_all(&net).await;
    assert!(nft_table(&fx.table).is_none(), "table ip {} left", fx.table);
    assert_eq!(link_index(&fx.bridge), None, "bridge left");
    assert!(!ns_path(&fx.id("a")).exists());
    assert!(!fx.state.path().join(IPAM_FILE).exists());
    net.remove_all().await.expect("remove_all twice");

    // masquerade = false removes a rule installed earlier.
    drop(fx.network().await);
    assert!(nft_table(&fx.table).is_some());
    let off = NetworkConfig {
        masquerade: false,
        ..fx.config()
    };
    let net = PodNetwork::new(off, fx.state.path())
        .await
        .unwrap_or_else(|e| panic!("PodNetwork::new: {}", riklet::error_chain(&e)));
    assert!(
        nft_table(&fx.table).is_none(),
        "masquerade = false left the rule"
    );
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_attach_detach_cycles_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(7);
    let net = fx.network().await;
    // One warm-up cycle: lazily created runtime resources are not leaks.
    let warm = fx.id("warm");
    attach(&net, &warm).await;
    net.detach(&warm).await.expect("detach");
    let fds = open_fds();

    let started = Instant::now();
    let mut seen = HashSet::new();
    for i in 0..100 {
        let id = fx.id(&format!("p{}", i % 3));
        let pod = attach(&net, &id).await;
        seen.insert(pod.ip);
        net.detach(&id)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: detach: {}", riklet::error_chain(&e)));
    }
    println!("100 cycles in {:?}", started.elapsed());
    assert!(seen.len() > 3, "addresses rotate: {seen:?}");

    let after = open_fds();
    assert_eq!(
        fds.len(),
        after.len(),
        "descriptors leaked: before {fds:?}, after {after:?}"
    );
    assert_eq!(bridge_ports(&fx.bridge), HashSet::new(), "veths leaked");
    for i in 0..3 {
        let id = fx.id(&format!("p{i}"));
        assert!(!ns_path(&id).exists(), "netns of {id} leaked");
        assert_eq!(link_index(&veth(&id)), None);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&fx.id("")),
        "netns mounts leaked: {mounts}"
    );
    assert!(net.instances().is_empty());
    remove_all(&net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pods_attach_at_once_and_detach_at_once_leaving_nothing() {
    // A burst: more at once than the kernel work runs in parallel.
    const PODS: usize = 200;
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(8);
    let net = std::sync::Arc::new(fx.network().await);
    let ids: Vec<String> = (0..PODS).map(|i| fx.id(&format!("p{i}"))).collect();
    // Each pod twice at once, as its two containers would: one attachment.
    let attaches: Vec<_> = ids
        .iter()
        .flat_map(|id| [id.clone(), id.clone()])
        .map(|id| {
            let net = net.clone();
            tokio::spawn(async move {
                let pod = net.attach(&id).await;
                (id, pod)
            })
        })
        .collect();
    let mut addresses = std::collections::HashMap::new();
    for task in attaches {
        let (id, pod) = task.await.expect("attach task");
        let pod = pod.unwrap_or_else(|e| panic!("attach {id}: {}", riklet::error_chain(&e)));
        if let Some(other) = addresses.insert(id.clone(), pod.clone()) {
            assert_eq!(other, pod, "the two attaches of {id} disagree");
        }
    }
    let ips: HashSet<Ipv4Addr> = addresses.values().map(|p| p.ip).collect();
    assert_eq!(ips.len(), PODS, "an address given twice");
    assert_eq!(bridge_ports(&fx.bridge).len(), PODS, "one veth per pod");
    // Every lease is on disk.
    let leases: Value =
        serde_json::from_slice(&std::fs::read(fx.state.path().join(IPAM_FILE)).expect("ipam.json"))
            .expect("ipam.json is JSON");
    for (id, pod) in &addresses {
        assert!(pod.netns.exists(), "{} missing", pod.netns.display());
        assert_eq!(
            leases["leases"][id],
            pod.ip.to_string(),
            "lease of {id} on disk: {leases}"
        );
        let addrs = ip_json(&[
            "-n",
            &format!("rik-{id}"),
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
        assert_eq!(
            addrs[0]["addr_info"][0]["local"],
            pod.ip.to_string(),
            "{id}: {addrs}"
        );
    }

    let detaches: Vec<_> = ids
        .iter()
        .map(|id| {
            let (net, id) = (net.clone(), id.clone());
            tokio::spawn(async move { (net.detach(&id).await, id) })
        })
        .collect();
    for task in detaches {
        let (done, id) = task.await.expect("detach task");
        done.unwrap_or_else(|e| panic!("detach {id}: {}", riklet::error_chain(&e)));
    }
    assert_eq!(bridge_ports(&fx.bridge), HashSet::new(), "veths leaked");
    for id in &ids {
        assert!(!ns_path(id).exists(), "netns of {id} leaked");
        assert_eq!(link_index(&veth(id)), None, "veth of {id} leaked");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&fx.id("")),
        "netns mounts leaked: {mounts}"
    );
    assert!(net.instances().is_empty());
    let leases: Value =
        serde_json::from_slice(&std::fs::read(fx.state.path().join(IPAM_FILE)).expect("ipam.json"))
            .expect("ipam.json is JSON");
    assert_eq!(
        leases["leases"],
        serde_json::json!({}),
        "leases left on disk"
    );
    remove_all(&net).await;
}

// --- fixture -------------------------------------------------------------

/// One test's bridge, CIDR, table, ids and state dir; cleaned up (with
/// `ip`/`nft`, not with the code under test) on creation and on drop.
struct Fixture {
    n: u8,
    bridge: String,
    table: String,
    cidr: String,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(n: u8) -> Self {
        prerequisites();
        let fx = Fixture {
            n,
            bridge: format!("rktest{n}"),
            table: format!("riklet_test_{n}"),
            cidr: format!("10.213.{n}.0/24"),
            state: tempfile::tempdir().expect("temporary state dir"),
        };
        fx.clean();
        fx
    }

    fn id(&self, name: &str) -> String {
        format!("nettest{}-{name}", self.n)
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            bridge: self.bridge.clone(),
            pod_cidr: self.cidr.clone(),
            masquerade: true,
            nft_table: self.table.clone(),
            netns_prefix: netns::NETNS_PREFIX.into(),
        }
    }

    async fn network(&self) -> PodNetwork {
        PodNetwork::new(self.config(), self.state.path())
            .await
            .unwrap_or_else(|e| panic!("PodNetwork::new: {}", riklet::error_chain(&e)))
    }

    fn clean(&self) {
        let prefix = format!("rik-{}", self.id(""));
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("rik-")
                    && name.starts_with(&prefix)
                {
                    quiet("ip", &["link", "del", &veth(id)]);
                    let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for port in bridge_ports(&self.bridge) {
            quiet("ip", &["link", "del", &port]);
        }
        quiet("ip", &["link", "del", "rikv00deadbeef"]);
        quiet("ip", &["link", "del", &self.bridge]);
        quiet("nft", &["delete", "table", "ip", &self.table]);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Panics naming the first missing prerequisite.
fn prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, bridges, nftables); run it as root"
    );
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "this test needs `{tool}` in PATH to inspect the results"
        );
    }
    assert!(
        Path::new(SOCAT).exists(),
        "this test needs {SOCAT} (apt install socat)"
    );
}

// --- helpers -------------------------------------------------------------

async fn attach(net: &PodNetwork, id: &str) -> PodAddress {
    net.attach(id)
        .await
        .unwrap_or_else(|e| panic!("attach {id}: {}", riklet::error_chain(&e)))
}

async fn remove_all(net: &PodNetwork) {
    net.remove_all()
        .await
        .unwrap_or_else(|e| panic!("remove_all: {}", riklet::error_chain(&e)));
}

trait InNetns {
    /// Runs the child inside the network namespace `path`.
    fn in_netns(&mut self, path: &Path) -> &mut Self;
}

impl InNetns for Command {
    fn in_netns(&mut self, path: &Path) -> &mut Self {
        let ns = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: setns is a plain system call, safe between fork and exec.
        unsafe {
            self.pre_exec(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            })
        }
    }
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl ChildGuard {
    fn spawn(cmd: &mut Command) -> Self {
        ChildGuard(cmd.spawn().expect("spawning the server"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects until the server answers (it may still be starting).
fn fetch_from_host(addr: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).expect("reading the reply");
                return text;
            }
            Err(_) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to {addr} from the host: {e}"),
        }
    }
}

/// The server's reply, fetched by a client inside `netns`.
fn fetch_in_netns(netns: &Path, host: &str) -> String {
    let out = output(
        Command::new(SOCAT)
            .args(["-T5", "-u", &format!("TCP:{host}:{PORT}"), "STDOUT"])
            .stdin(Stdio::null())
            .in_netns(netns),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(tool: &str, args: &[&str]) {
    output(Command::new(tool).args(args));
}

fn quiet(tool: &str, args: &[&str]) {
    let _ = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `ip -j <args>`.
fn ip_json(args: &[&str]) -> Value {
    let out = output(Command::new("ip").arg("-j").args(args));
    serde_json::from_slice(&out.stdout).expect("ip -j prints JSON")
}

/// Index of link `name` in the host namespace.
fn link_index(name: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "dev", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let links: Value = serde_json::from_slice(&out.stdout).ok()?;
    links[0]["ifindex"].as_u64()
}

/// Names of the links attached to `bridge` (empty if it does not exist).
fn bridge_ports(bridge: &str) -> HashSet<String> {
    let Ok(out) = Command::new("ip")
        .args(["-j", "link", "show", "master", bridge])
        .stderr(Stdio::null())
        .output()
    else {
        return HashSet::new();
    };
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// `nft -j list table ip <name>`, or `None` if there is no such table.
fn nft_table(name: &str) -> Option<Value> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", name])
        .stderr(Stdio::null())
        .output()
        .expect("running nft");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("nft -j prints JSON"))
}

/// The objects of one kind in an `nft -j` answer.
fn objects(doc: &Value, kind: &str) -> Vec<Value> {
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get(kind).cloned())
        .collect()
}

fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.as_ref()))
}

fn open_fds() -> Vec<PathBuf> {
    let mut fds: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    fds.sort();
    fds
}
