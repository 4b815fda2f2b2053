//! Root tests of the nftables datapath of the Node Proxy
//! (`riklet::proxy::nft`) and of the UDP flow clean-up
//! (`riklet::proxy::flows`), against the real kernel and nftables.
//!
//! ```text
//!  "external host" netns            node (this netns)              pod netns a, b
//!  eth0 10.217.N.2/30 ── veth ── rknxN 10.217.N.1/30
//!                                bridge rknbrN 10.217.1NN.1/24 ── veth ── eth0 .2 / .3
//! ```
//!
//! Servers are std sockets on threads that entered a pod's namespace;
//! clients likewise in the external namespace, or on the node. Traffic
//! only goes to addresses of namespaces the test made (and the node's
//! loopback). Every test has its own names and addresses (N), its own
//! table `riklet_proxy_test_N`, and a guard that removes them, with `ip`
//! and `nft` rather than the code under test, before (leftovers of a
//! killed run) and after, even on panic. The tests run one at a time:
//! they switch `net.ipv4.ip_forward` on and back.
//!
//! Needs root, `ip` and `nft`; a missing one fails the test saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use proto::manifest::{Port, Protocol};
use riklet::network::ipam::Ipv4Cidr;
use riklet::proxy::flows::forget_udp_flows;
use riklet::proxy::model::{Endpoint, PodAddress, ServiceCounters, ServiceKey, ServiceTable};
use riklet::proxy::nft::{LocalTraffic, NftProxy, NftSettings};
use serde_json::Value;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const TCP_TARGET: u16 = 8080;
const UDP_TARGET: u16 = 5353;
const WEB: u16 = 18080;
const DNS: u16 = 18053;

/// One at a time: `ip_forward` is saved and restored by each test.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_and_node_clients_reach_pods_through_the_node() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(1);
    let servers = Servers::default();
    for (pod, name) in [(0, "a"), (1, "b")] {
        servers.tcp(Some(&fx.pods[pod]), fx.pod_addr(pod, TCP_TARGET), name);
    }
    servers.udp(Some(&fx.pods[0]), fx.pod_addr(0, UDP_TARGET), "a");
    // A hostNetwork backend on another port (redirect): from outside the
    // node it is reached on the node address, from the node on loopback.
    let node_port = 18991;
    servers.tcp(None, SocketAddrV4::new(fx.node, node_port), "node");
    servers.tcp(
        None,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, node_port),
        "node",
    );

    let table = ServiceTable::from_endpoints(&[
        fx.pod(
            0,
            vec![tcp(WEB), udp(DNS), port(18082, TCP_TARGET, Protocol::Tcp)],
        ),
        fx.pod(1, vec![tcp(WEB)]),
        host_network(vec![
            port(18081, node_port, Protocol::Tcp),
            port(18082, node_port, Protocol::Tcp),
        ]),
    ]);
    // The pod network's masquerade table (network::nat) works beside ours.
    fx.add_pod_masquerade();
    let proxy = fx.proxy(LocalTraffic::All);
    sync(&proxy, &table).await;
    assert_eq!(
        fx.route_localnet(),
        "1",
        "LocalTraffic::All turns route_localnet on"
    );

    // From the external host.
    let web = SocketAddrV4::new(fx.node, WEB);
    let got = tcp_get(Some(&fx.external), web).expect("TCP from outside");
    assert!(got == "a" || got == "b", "{got:?}");
    let dns = SocketAddrV4::new(fx.node, DNS);
    let (reply, from) = udp_ask(Some(&fx.external), dns, "ping");
    assert_eq!(reply, "a:ping");
    assert_eq!(
        from,
        SocketAddr::V4(dns),
        "the UDP reply comes from the address and port asked"
    );
    let node_web = SocketAddrV4::new(fx.node, 18081);
    assert_eq!(tcp_get(Some(&fx.external), node_web).unwrap(), "node");
    let mixed = SocketAddrV4::new(fx.node, 18082);
    let seen: BTreeSet<String> = (0..40)
        .map(|_| tcp_get(Some(&fx.external), mixed).expect("TCP to a mixed service"))
        .collect();
    assert_eq!(
        seen,
        ["a", "node"].map(String::from).into(),
        "mixed backends"
    );

    // From the node: loopback and the node address.
    for ip in [Ipv4Addr::LOCALHOST, fx.node] {
        let got = tcp_get(None, SocketAddrV4::new(ip, WEB))
            .unwrap_or_else(|e| panic!("TCP from the node to {ip}:{WEB}: {e}"));
        assert!(got == "a" || got == "b", "{got:?}");
        let asked = SocketAddrV4::new(ip, DNS);
        let (reply, from) = udp_ask(None, asked, "local");
        assert_eq!(reply, "a:local");
        assert_eq!(from, SocketAddr::V4(asked));
    }
    let loopback_node = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18081);
    assert_eq!(tcp_get(None, loopback_node).unwrap(), "node");

    // Both backends share the load.
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..200 {
        let got = tcp_get(Some(&fx.external), web).expect("TCP from outside");
        *hits.entry(got).or_default() += 1;
    }
    println!("200 connections: {hits:?}");
    for name in ["a", "b"] {
        let n = hits.get(name).copied().unwrap_or(0);
        assert!(n >= 40, "backend {name} got {n} of 200 (< 20 %): {hits:?}");
    }

    // Hairpin: a pod reaches its own service (itself included) through
    // the node.
    let gateway = SocketAddrV4::new(fx.gateway(), WEB);
    for _ in 0..20 {
        let got = tcp_get(Some(&fx.pods[0]), gateway).expect("hairpin from pod a");
        assert!(got == "a" || got == "b", "{got:?}");
    }

    // 1 + 200 from outside, 2 from the node, 20 hairpin.
    let counters = proxy.counters().await.expect("counters");
    let web_counters = counters[&ServiceKey {
        port: WEB,
        protocol: Protocol::Tcp,
    }];
    println!("{WEB}/TCP: {web_counters:?}");
    assert!(web_counters.connections >= 223, "{web_counters:?}");
    assert!(web_counters.bytes >= 223 * 100, "{web_counters:?}");
    let dns_counters = counters[&ServiceKey {
        port: DNS,
        protocol: Protocol::Udp,
    }];
    assert!(dns_counters.connections >= 3, "{dns_counters:?}");
    assert!(dns_counters.bytes > 0, "{dns_counters:?}");

    remove(&proxy).await;
    assert!(!fx.table_exists(), "table {} left", fx.table);
    assert_eq!(fx.route_localnet(), "0", "route_localnet restored");
    assert!(
        tcp_get(Some(&fx.external), web).is_err(),
        "still proxied after remove"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_socket_balancer_only_sctp_of_the_node_is_translated() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(2);
    let servers = Servers::default();
    servers.tcp(Some(&fx.pods[0]), fx.pod_addr(0, TCP_TARGET), "a");
    let sctp = 18132;
    let table =
        ServiceTable::from_endpoints(
            &[fx.pod(0, vec![tcp(WEB), port(sctp, 9132, Protocol::Sctp)])],
        );
    // Only the node's address on the external link exposes services.
    let proxy = NftProxy::new(NftSettings {
        addresses: vec![fx.node],
        ..fx.settings(LocalTraffic::SctpOnly)
    })
    .expect("NftProxy::new");
    sync(&proxy, &table).await;

    let web = SocketAddrV4::new(fx.node, WEB);
    assert_eq!(
        tcp_get(Some(&fx.external), web).expect("TCP from outside"),
        "a"
    );
    for ip in [Ipv4Addr::LOCALHOST, fx.node] {
        let err = tcp_get(None, SocketAddrV4::new(ip, WEB))
            .expect_err("local TCP is the socket balancer's, not translated");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{ip}: {err}");
    }
    assert_eq!(
        fx.route_localnet(),
        "0",
        "SctpOnly leaves route_localnet alone"
    );

    // The SCTP service, read back from the kernel.
    let listing = fx.listing();
    let chain = format!("svc_sctp_{sctp}");
    let rules = rules_of(&listing, &chain);
    assert_eq!(rules.len(), 1, "{chain}: {rules:?}");
    let expr = rules[0]["expr"].as_array().unwrap();
    assert!(
        expr.iter()
            .any(|s| s["dnat"]["addr"] == fx.pod_ip(0).to_string() && s["dnat"]["port"] == 9132),
        "{chain} does not DNAT to {}:9132: {expr:?}",
        fx.pod_ip(0)
    );
    let dispatch = rules_of(&listing, "dispatch");
    assert_eq!(
        dispatch[0]["expr"][0]["vmap"]["data"], "@services",
        "{dispatch:?}"
    );
    // The service's entry in @services, with the counter of its
    // connections.
    let entry = service_entry(&listing, "sctp", sctp)
        .unwrap_or_else(|| panic!("no sctp . {sctp} in @services: {listing}"));
    assert_eq!(entry[1], serde_json::json!({"goto": {"target": chain}}));
    assert!(entry[0]["elem"]["counter"].is_object(), "{entry}");
    let output = rules_of(&listing, "nat_output");
    assert!(
        output[0]["expr"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["match"]["right"] == "sctp"),
        "nat_output does not keep to SCTP: {output:?}"
    );

    remove(&proxy).await;
    assert!(!fx.table_exists(), "table {} left", fx.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_replace_leftovers_without_duplicates_and_counters_only_grow() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(3);
    let servers = Servers::default();
    for (pod, name) in [(0, "a"), (1, "b")] {
        servers.tcp(Some(&fx.pods[pod]), fx.pod_addr(pod, TCP_TARGET), name);
    }
    let web_key = ServiceKey {
        port: WEB,
        protocol: Protocol::Tcp,
    };
    let web = SocketAddrV4::new(fx.node, WEB);
    let connect = |n: usize| {
        for _ in 0..n {
            tcp_get(Some(&fx.external), web).expect("TCP from outside");
        }
    };
    let one = ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(WEB)])]);
    let two =
        ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(WEB)]), fx.pod(1, vec![tcp(18090)])]);

    let first = fx.proxy(LocalTraffic::All);
    sync(&first, &one).await;
    connect(10);
    let c1 = counters_of(&first, web_key).await;
    assert!(c1.connections >= 10, "{c1:?}");
    let shape = normalized(&fx.listing());
    sync(&first, &one).await;
    assert_eq!(
        normalized(&fx.listing()),
        shape,
        "a second sync changed the table"
    );
    let c2 = counters_of(&first, web_key).await;
    assert_grew(c1, c2);
    sync(&first, &two).await;
    let c3 = counters_of(&first, web_key).await;
    assert_grew(c2, c3);
    connect(5);
    let c4 = counters_of(&first, web_key).await;
    assert!(c4.connections >= c3.connections + 5, "{c3:?} then {c4:?}");
    let reference = normalized(&fx.listing());

    // A crash: the table stays, with whatever was added to it since.
    drop(first);
    for junk in [
        "add chain ip {t} junk",
        "add rule ip {t} nat_prerouting counter",
        "add rule ip {t} svc_tcp_18080 counter",
        "add set ip {t} junk_set { type ipv4_addr; }",
        "add counter ip {t} conn_udp_9",
    ] {
        let cmd = junk.replace("{t}", &fx.table);
        run("nft", &[&cmd]);
    }
    let second = fx.proxy(LocalTraffic::All);
    sync(&second, &two).await;
    assert_eq!(
        normalized(&fx.listing()),
        reference,
        "the new proxy did not replace the leftovers"
    );
    let c5 = counters_of(&second, web_key).await;
    assert_grew(c4, c5);
    connect(1);
    assert_grew(c5, counters_of(&second, web_key).await);

    remove(&second).await;
    assert!(!fx.table_exists(), "table {} left", fx.table);
    remove(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_in_place_at_once_and_the_compaction_keeps_them() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(5);
    let servers = Servers::default();
    for (pod, name) in [(0, "a"), (1, "b")] {
        servers.tcp(Some(&fx.pods[pod]), fx.pod_addr(pod, TCP_TARGET), name);
    }
    let web_key = ServiceKey {
        port: WEB,
        protocol: Protocol::Tcp,
    };
    let web = SocketAddrV4::new(fx.node, WEB);
    let two =
        ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(WEB)]), fx.pod(1, vec![tcp(18090)])]);
    let proxy = fx.proxy(LocalTraffic::All);
    sync(&proxy, &two).await;
    assert_eq!(tcp_get(Some(&fx.external), web).unwrap(), "a");

    // A backend change is in place at once (the new rules shadow the old
    // ones until the compaction writes the chain anew), and the counters
    // go on.
    let moved =
        ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(18090)]), fx.pod(1, vec![tcp(WEB)])]);
    let before = counters_of(&proxy, web_key).await;
    sync(&proxy, &moved).await;
    let only_b = |what: &str| {
        for _ in 0..5 {
            let got = tcp_get(Some(&fx.external), web).expect("TCP from outside");
            assert_eq!(got, "b", "{what}");
        }
    };
    only_b("after the backend change");
    compact(&proxy).await;
    only_b("after the compaction");
    let listing = fx.listing();
    assert_eq!(rules_of(&listing, "svc_tcp_18080").len(), 1, "compacted");
    let after = counters_of(&proxy, web_key).await;
    assert!(
        after.connections >= before.connections + 10,
        "{before:?} then {after:?}"
    );

    // A service that is gone is refused at once, and its chain and set
    // elements are deleted by the compaction.
    let gone = ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(18090)])]);
    sync(&proxy, &gone).await;
    assert!(
        tcp_get(Some(&fx.external), web).is_err(),
        "still proxied once the service is gone"
    );
    compact(&proxy).await;
    let listing = fx.listing();
    assert!(rules_of(&listing, "svc_tcp_18080").is_empty());
    assert!(service_entry(&listing, "tcp", WEB).is_none(), "{listing}");
    sync(&proxy, &two).await;
    assert_eq!(tcp_get(Some(&fx.external), web).unwrap(), "a");

    remove(&proxy).await;
    assert!(!fx.table_exists(), "table {} left", fx.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_services_sync_one_transaction_at_a_time() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(6);
    let first = fx.proxy(LocalTraffic::All);
    let two =
        ServiceTable::from_endpoints(&[fx.pod(0, vec![tcp(WEB)]), fx.pod(1, vec![tcp(18090)])]);
    sync(&first, &two).await;

    // 1,000 services of two backends each.
    let ports: Vec<Port> = (20000..21000).map(tcp).collect();
    let big = ServiceTable::from_endpoints(&[fx.pod(0, ports.clone()), fx.pod(1, ports.clone())]);
    let mut timings = Vec::new();
    timings.push((
        "adding 1,000 services to 2",
        timed(sync(&first, &big)).await,
    ));
    timings.push(("re-syncing the same 1,000", timed(sync(&first, &big)).await));
    // One service loses a backend, then gets it back.
    let mut fewer = ports.clone();
    fewer.retain(|p| p.port != 20500);
    let one_less = ServiceTable::from_endpoints(&[fx.pod(0, ports), fx.pod(1, fewer)]);
    timings.push((
        "a backend leaves one of 1,000",
        timed(sync(&first, &one_less)).await,
    ));
    timings.push(("the backend comes back", timed(sync(&first, &big)).await));
    timings.push(("compacting", timed(compact(&first)).await));
    // A restarted riklet replaces the 1,000, and a fresh one writes them
    // into an empty table.
    let third = fx.proxy(LocalTraffic::All);
    timings.push((
        "replacing a predecessor's 1,000",
        timed(sync(&third, &big)).await,
    ));
    remove(&third).await;
    let fourth = fx.proxy(LocalTraffic::All);
    timings.push((
        "writing 1,000 into no table",
        timed(sync(&fourth, &big)).await,
    ));
    let said: Vec<String> = timings
        .iter()
        .map(|(what, ms)| format!("{what}: {ms:.1} ms"))
        .collect();
    println!(
        "nft sync, 1,000 services of 2 backends: {}",
        said.join("; ")
    );
    let listing = fx.listing();
    let chains = objects(&listing)
        .filter(|(k, o)| *k == "chain" && o["name"].as_str().is_some_and(|n| n.starts_with("svc_")))
        .count();
    assert_eq!(chains, 1000);
    assert_eq!(rules_of(&listing, "svc_tcp_20500").len(), 2);
    assert_eq!(
        counters_of(
            &fourth,
            ServiceKey {
                port: 20999,
                protocol: Protocol::Tcp
            }
        )
        .await,
        ServiceCounters::default()
    );
    remove(&fourth).await;
    assert!(!fx.table_exists(), "table {} left", fx.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_gone_backend_moves_its_udp_flows() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new(4);
    let servers = Servers::default();
    for (pod, name) in [(0, "a"), (1, "b")] {
        servers.udp(Some(&fx.pods[pod]), fx.pod_addr(pod, UDP_TARGET), name);
    }
    let proxy = fx.proxy(LocalTraffic::All);
    sync(
        &proxy,
        &ServiceTable::from_endpoints(&[fx.pod(0, vec![udp(DNS)])]),
    )
    .await;

    // One flow from outside through the proxy; two sockets connected
    // straight to backend a, as the eBPF balancer does, on the node and
    // in pod b.
    let dns = SocketAddrV4::new(fx.node, DNS);
    let outside =
        in_netns(Some(&fx.external), || UdpSocket::bind("0.0.0.0:0")).expect("UDP socket");
    let a = fx.pod_addr(0, UDP_TARGET);
    let on_node = connected_udp(None, a);
    let in_pod = connected_udp(Some(&fx.pods[1]), a);
    assert_eq!(
        exchange(&outside, dns, "1"),
        ("a:1".to_string(), SocketAddr::V4(dns))
    );
    for s in [&on_node, &in_pod] {
        assert_eq!(talk(s, "x").expect("connected socket"), "a:x");
    }

    // Backend a leaves: the flow stays on it as long as conntrack says so.
    sync(
        &proxy,
        &ServiceTable::from_endpoints(&[fx.pod(1, vec![udp(DNS)])]),
    )
    .await;
    assert_eq!(
        exchange(&outside, dns, "2").0,
        "a:2",
        "the flow moved without help"
    );

    let missing = PathBuf::from("/run/netns/rknft-none-4");
    let forgotten = forget_udp_flows(&[a], &[fx.netns_path(&fx.pods[1]), missing])
        .await
        .unwrap_or_else(|e| panic!("forget_udp_flows: {}", riklet::error_chain(&e)));
    println!("{forgotten:?}");
    assert!(forgotten.conntrack_entries >= 1, "{forgotten:?}");
    assert_eq!(forgotten.sockets, 2, "{forgotten:?}");

    assert_eq!(
        exchange(&outside, dns, "3"),
        ("b:3".to_string(), SocketAddr::V4(dns))
    );
    for s in [&on_node, &in_pod] {
        let err = s.recv(&mut [0; 64]).expect_err("a destroyed socket");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        assert!(
            s.send(b"y").is_err(),
            "a destroyed socket is not connected any more"
        );
    }
    // Nothing left to forget.
    let again = forget_udp_flows(&[a], &[fx.netns_path(&fx.pods[1])])
        .await
        .unwrap();
    assert_eq!(again.sockets, 0, "{again:?}");
    remove(&proxy).await;
}

// --- fixture -------------------------------------------------------------

/// The namespaces, links, addresses and table of test `n`; removed with
/// `ip`/`nft` on creation and on drop.
struct Fixture {
    n: u8,
    table: String,
    external: String,
    pods: [String; 2],
    bridge: String,
    /// The node's address on the external link.
    node: Ipv4Addr,
    ip_forward: String,
}

impl Fixture {
    fn new(n: u8) -> Self {
        prerequisites();
        let ip_forward = std::fs::read_to_string(IP_FORWARD).expect("reading ip_forward");
        let fx = Fixture {
            n,
            table: format!("riklet_proxy_test_{n}"),
            external: format!("rknft-ext-{n}"),
            pods: [format!("rknft-a-{n}"), format!("rknft-b-{n}")],
            bridge: format!("rknbr{n}"),
            node: Ipv4Addr::new(10, 217, n, 1),
            ip_forward,
        };
        fx.clean();
        fx.wire();
        fx
    }

    fn ext_veth(&self) -> String {
        format!("rknx{}", self.n)
    }

    fn pod_veth(&self, pod: usize) -> String {
        format!("rkn{}{}", ["a", "b"][pod], self.n)
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 217, 100 + self.n, 1)
    }

    fn pod_ip(&self, pod: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 217, 100 + self.n, 2 + pod as u8)
    }

    fn pod_addr(&self, pod: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.pod_ip(pod), port)
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    fn wire(&self) {
        let n = self.n;
        run("ip", &["netns", "add", &self.external]);
        let ext = self.ext_veth();
        run(
            "ip",
            &[
                "link",
                "add",
                &ext,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.external,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{}/30", self.node), "dev", &ext],
        );
        run("ip", &["link", "set", &ext, "up"]);
        let x = &self.external;
        run(
            "ip",
            &[
                "-n",
                x,
                "addr",
                "add",
                &format!("10.217.{n}.2/30"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", x, "link", "set", "eth0", "up"]);
        run("ip", &["-n", x, "link", "set", "lo", "up"]);

        run("ip", &["link", "add", &self.bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.gateway()),
                "dev",
                &self.bridge,
            ],
        );
        run("ip", &["link", "set", &self.bridge, "up"]);
        for (i, ns) in self.pods.iter().enumerate() {
            let veth = self.pod_veth(i);
            run("ip", &["netns", "add", ns]);
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            );
            run("ip", &["link", "set", &veth, "master", &self.bridge, "up"]);
            // As the pod network does (see network::link::set_hairpin).
            run(
                "ip",
                &[
                    "link",
                    "set",
                    "dev",
                    &veth,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", self.pod_ip(i)),
                    "dev",
                    "eth0",
                ],
            );
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &self.gateway().to_string(),
                ],
            );
        }
        std::fs::write(IP_FORWARD, "1\n").expect("enabling ip_forward");
    }

    fn clean(&self) {
        quiet("nft", &["delete", "table", "ip", &self.table]);
        quiet("nft", &["delete", "table", "ip", &self.masquerade_table()]);
        for ns in self.pods.iter().chain([&self.external]) {
            quiet("ip", &["netns", "del", ns]);
        }
        for link in [
            self.ext_veth(),
            self.pod_veth(0),
            self.pod_veth(1),
            self.bridge.clone(),
        ] {
            quiet("ip", &["link", "del", &link]);
        }
    }

    /// The rule `network::nat` installs, in a table of this test.
    fn add_pod_masquerade(&self) {
        let t = self.masquerade_table();
        let cidr = format!("10.217.{}.0/24", 100 + self.n);
        run("nft", &["add", "table", "ip", &t]);
        let chain = format!(
            "add chain ip {t} pod_masquerade {{ type nat hook postrouting priority srcnat; policy accept; }}"
        );
        run("nft", &[&chain]);
        let rule =
            format!("add rule ip {t} pod_masquerade ip saddr {cidr} ip daddr != {cidr} masquerade");
        run("nft", &[&rule]);
    }

    fn masquerade_table(&self) -> String {
        format!("riklet_pods_test_{}", self.n)
    }

    fn settings(&self, local: LocalTraffic) -> NftSettings {
        NftSettings {
            table: self.table.clone(),
            pod_cidr: Ipv4Cidr::parse(&format!("10.217.{}.0/24", 100 + self.n)).unwrap(),
            bridge: self.bridge.clone(),
            addresses: Vec::new(),
            local,
        }
    }

    fn proxy(&self, local: LocalTraffic) -> NftProxy {
        NftProxy::new(self.settings(local)).expect("NftProxy::new")
    }

    fn pod(&self, pod: usize, ports: Vec<Port>) -> Endpoint {
        Endpoint {
            app: "web".into(),
            instance: format!("web-{pod}"),
            address: PodAddress::Ip(self.pod_ip(pod)),
            ports,
        }
    }

    fn route_localnet(&self) -> String {
        let path = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.bridge);
        std::fs::read_to_string(&path)
            .expect(&path)
            .trim()
            .to_string()
    }

    /// `nft -j list table ip <table>`.
    fn listing(&self) -> Value {
        let out = Command::new("nft")
            .args(["-j", "list", "table", "ip", &self.table])
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft list table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("nft -j prints JSON")
    }

    fn table_exists(&self) -> bool {
        let out = Command::new("nft")
            .args(["-j", "list", "tables", "ip"])
            .output()
            .expect("running nft");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
        objects(&doc).any(|(k, o)| k == "table" && o["name"] == self.table.as_str())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.clean();
        let _ = std::fs::write(IP_FORWARD, &self.ip_forward);
    }
}

/// Panics naming the first missing prerequisite.
fn prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, nftables, conntrack); run it as root"
    );
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "this test needs `{tool}` in PATH");
    }
    let out = Command::new("nft")
        .args(["-j", "list", "chains"])
        .output()
        .expect("running nft");
    let chains: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    for (_, c) in objects(&chains).filter(|(k, _)| *k == "chain") {
        assert!(
            !(c["hook"] == "forward" && c["policy"] == "drop"),
            "chain {} of table {} drops forwarded packets by default: pods cannot be reached \
             through the node on this host (accept 10.217.0.0/16 there to run this test)",
            c["name"],
            c["table"]
        );
    }
}

// --- servers and clients ---------------------------------------------------

/// Server threads, stopped and joined on drop.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Servers {
    /// Answers every connection with `name` and closes it.
    fn tcp(&self, netns: Option<&str>, addr: SocketAddrV4, name: &'static str) {
        let stop = self.stop.clone();
        self.spawn(netns, addr, move |ready| {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
    }

    /// Answers every datagram with `name:<datagram>`.
    fn udp(&self, netns: Option<&str>, addr: SocketAddrV4, name: &'static str) {
        let stop = self.stop.clone();
        self.spawn(netns, addr, move |ready| {
            let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready();
            let mut buf = [0; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                    let _ = socket.send_to(reply.as_bytes(), peer);
                }
            }
        });
    }

    /// Runs `serve` on a thread in `netns`; returns once it is listening.
    fn spawn(
        &self,
        netns: Option<&str>,
        addr: SocketAddrV4,
        serve: impl FnOnce(&dyn Fn()) + Send + 'static,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let netns = netns.map(String::from);
        let handle = thread::spawn(move || {
            enter(netns.as_deref());
            serve(&|| {
                let _ = tx.send(());
            });
        });
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("server on {addr} did not start"));
        self.threads.lock().unwrap().push(handle);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread into the named namespace (`None`: stay).
fn enter(netns: Option<&str>) {
    if let Some(name) = netns {
        let path = Path::new("/run/netns").join(name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

/// Runs `f` on a thread in the namespace; sockets it makes stay there.
fn in_netns<T: Send + 'static>(netns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.map(String::from);
    thread::spawn(move || {
        enter(netns.as_deref());
        f()
    })
    .join()
    .expect("client thread")
}

/// Connects from `netns` and reads what the server says.
fn tcp_get(netns: Option<&str>, addr: SocketAddrV4) -> io::Result<String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
}

/// One datagram from a new socket in `netns`; the reply and its source.
fn udp_ask(netns: Option<&str>, addr: SocketAddrV4, text: &'static str) -> (String, SocketAddr) {
    let socket = in_netns(netns, || UdpSocket::bind("0.0.0.0:0")).expect("UDP socket");
    exchange(&socket, addr, text)
}

fn exchange(socket: &UdpSocket, addr: SocketAddrV4, text: &str) -> (String, SocketAddr) {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.send_to(text.as_bytes(), addr).expect("send_to");
    let mut buf = [0; 1500];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer from {addr} to {text:?}: {e}"));
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

fn connected_udp(netns: Option<&str>, peer: SocketAddrV4) -> UdpSocket {
    let socket = in_netns(netns, || UdpSocket::bind("0.0.0.0:0")).expect("UDP socket");
    socket.connect(peer).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

fn talk(socket: &UdpSocket, text: &str) -> io::Result<String> {
    socket.send(text.as_bytes())?;
    let mut buf = [0; 1500];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

// --- helpers -------------------------------------------------------------

fn tcp(port: u16) -> Port {
    self::port(port, TCP_TARGET, Protocol::Tcp)
}

fn udp(port: u16) -> Port {
    self::port(port, UDP_TARGET, Protocol::Udp)
}

fn port(port: u16, target_port: u16, protocol: Protocol) -> Port {
    Port {
        port,
        target_port,
        protocol,
        kind: None,
    }
}

fn host_network(ports: Vec<Port>) -> Endpoint {
    Endpoint {
        app: "web".into(),
        instance: "web-host".into(),
        address: PodAddress::HostNetwork,
        ports,
    }
}

async fn sync(proxy: &NftProxy, table: &ServiceTable) {
    proxy
        .sync(table)
        .await
        .unwrap_or_else(|e| panic!("sync: {}", riklet::error_chain(&e)));
}

async fn compact(proxy: &NftProxy) {
    proxy
        .compact()
        .await
        .unwrap_or_else(|e| panic!("compact: {}", riklet::error_chain(&e)));
}

/// How long `f` took, in milliseconds.
async fn timed(f: impl std::future::Future<Output = ()>) -> f64 {
    let started = Instant::now();
    f.await;
    started.elapsed().as_secs_f64() * 1000.0
}

/// The `[key, verdict]` entry of `protocol . port` in the `services`
/// verdict map.
fn service_entry(doc: &Value, protocol: &str, port: u16) -> Option<Value> {
    let (_, map) = objects(doc).find(|(k, o)| *k == "map" && o["name"] == "services")?;
    let key = serde_json::json!({"concat": [protocol, port]});
    map["elem"]
        .as_array()?
        .iter()
        .find(|e| e[0]["elem"]["val"] == key || e[0] == key)
        .cloned()
}

async fn remove(proxy: &NftProxy) {
    proxy
        .remove()
        .await
        .unwrap_or_else(|e| panic!("remove: {}", riklet::error_chain(&e)));
}

async fn counters_of(proxy: &NftProxy, key: ServiceKey) -> ServiceCounters {
    let all = proxy
        .counters()
        .await
        .unwrap_or_else(|e| panic!("counters: {}", riklet::error_chain(&e)));
    *all.get(&key)
        .unwrap_or_else(|| panic!("no counters for {key}: {all:?}"))
}

fn assert_grew(before: ServiceCounters, after: ServiceCounters) {
    assert!(
        after.connections >= before.connections && after.bytes >= before.bytes,
        "counters went back: {before:?} then {after:?}"
    );
}

/// The `(kind, object)` pairs of an `nft -j` answer.
fn objects(doc: &Value) -> impl Iterator<Item = (&str, &Value)> {
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_object()?.iter().next())
        .map(|(k, v)| (k.as_str(), v))
}

fn rules_of(doc: &Value, chain: &str) -> Vec<Value> {
    objects(doc)
        .filter(|(k, o)| *k == "rule" && o["chain"] == chain)
        .map(|(_, o)| o.clone())
        .collect()
}

/// The table without handles and counter values: chains and sets in name
/// order, each chain's rules in their order.
fn normalized(doc: &Value) -> (BTreeSet<String>, BTreeMap<String, Vec<String>>) {
    /// Drops handles and counter values, however deep.
    fn steady(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for volatile in ["handle", "packets", "bytes"] {
                    map.remove(volatile);
                }
                map.values_mut().for_each(steady);
            }
            Value::Array(items) => items.iter_mut().for_each(steady),
            _ => {}
        }
    }
    let mut others = BTreeSet::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, o) in objects(doc) {
        let mut o = o.clone();
        steady(&mut o);
        match kind {
            "metainfo" => {}
            "rule" => rules
                .entry(o["chain"].to_string())
                .or_default()
                .push(o.to_string()),
            _ => {
                others.insert(format!("{kind} {o}"));
            }
        }
    }
    (others, rules)
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet(tool: &str, args: &[&str]) {
    let _ = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
