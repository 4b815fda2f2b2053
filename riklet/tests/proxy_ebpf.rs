//! Root tests of the Node Proxy's eBPF socket load-balancer
//! (`riklet::proxy::ebpf::SocketLb`): the real `riklet-proxy` object, its
//! four socket address programs attached at the root of the cgroup v2
//! hierarchy, and a "pod" network namespace of the test's own, wired to the
//! host by a veth pair, whose servers answer with their name.
//!
//! Needs root, the cgroup v2 hierarchy, bpffs, `ip` (iproute2), `nft`
//! (nftables), `bpftool` and `conntrack` (Debian packages of those names)
//! and the objects from `cargo xtask build-ebpf`. A missing prerequisite
//! fails the test with a message saying what is missing.
//!
//! Services use ports derived from the test's pid, on the test's veth
//! address and the host's loopback only, so the programs at the root
//! redirect nothing else of the host.

mod support;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use proto::manifest::{Port, Protocol};
use riklet::proxy::{
    ebpf::{SocketLb, remove_pinned},
    model::{Endpoint, PodAddress, ServiceCounters, ServiceKey, ServiceTable},
};
use riklet_common::proxy::{
    BACKENDS_MAP, BYTES_IN_PROGRAM, BYTES_OUT_PROGRAM, CONNECT4_PROGRAM, GETPEERNAME4_PROGRAM,
    RECVMSG4_PROGRAM, SENDMSG4_PROGRAM, SERVICES_MAP,
};
use support::{CgroupGuard, PinDirGuard, unique};

const IP: &str = "/usr/sbin/ip";
const NFT: &str = "/usr/sbin/nft";
const BPFTOOL: &str = "/usr/sbin/bpftool";
const CONNTRACK: &str = "/usr/sbin/conntrack";
const PROGRAMS: [&str; 6] = [
    CONNECT4_PROGRAM,
    SENDMSG4_PROGRAM,
    RECVMSG4_PROGRAM,
    GETPEERNAME4_PROGRAM,
    BYTES_IN_PROGRAM,
    BYTES_OUT_PROGRAM,
];
/// The pod's TCP and UDP server ports (inside its namespace).
const TCP_TARGET: u16 = 18080;
const UDP_TARGET: u16 = 18090;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The tests attach at the same cgroup root and count what is attached
/// there: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn local_clients_reach_pods_through_the_socket_hooks_and_survive_a_crash() {
    let _serial = serial();
    let v2_root = prerequisites();
    let _conntrack = ConntrackOn::new();
    let pod = Pod::start();
    let pins = ProxyPins::new();
    let baseline = attached(&v2_root);
    let host_listener = TcpListener::bind("127.0.0.1:0").expect("bind a host-network backend");
    let node_port = host_listener.local_addr().expect("local_addr").port();
    let services = Services::new(node_port);

    let mut lb = load(&v2_root, pins.path());
    assert_attached(&v2_root, &plus_one(&baseline), "after load");
    lb.sync(&services.table(&[pod.a, pod.b]), &[pod.host])
        .unwrap_or_else(|e| panic!("sync: {}", riklet::error_chain(&e)));

    // TCP through loopback and through the node address; it was the
    // socket hooks: the flow left with the backend as its destination, so
    // conntrack (on for the test) has no NAT for it.
    for via in [Ipv4Addr::LOCALHOST, pod.host] {
        let service = SocketAddrV4::new(via, services.port);
        let (name, stream) = tcp_connect(service);
        assert!(name == "A" || name == "B", "{service} answered {name:?}");
        assert_eq!(
            stream.peer_addr().ok(),
            Some(SocketAddr::V4(service)),
            "getpeername shows the backend"
        );
        let backend = SocketAddrV4::new(pod.address(&name), TCP_TARGET);
        let local = stream.local_addr().expect("local_addr");
        let tracked = conntrack(&[
            "-p",
            "tcp",
            "--orig-src",
            &local.ip().to_string(),
            "--orig-port-src",
            &local.port().to_string(),
        ]);
        assert_eq!(
            tracked.len(),
            1,
            "conntrack entries of {local}: {tracked:?}"
        );
        // Original and reply tuples: without NAT, each is the other turned
        // round, and the original destination is the backend.
        let [_, orig_dst, _, orig_dport, reply_src, _, reply_sport, _] = tuples(&tracked[0]);
        let backend_tuple = [backend.ip().to_string(), TCP_TARGET.to_string()];
        assert!(
            [orig_dst, orig_dport] == backend_tuple && [reply_src, reply_sport] == backend_tuple,
            "{service} went through NAT, not the socket hooks: {}",
            tracked[0]
        );
    }
    // A hostNetwork backend on another port: same address, other port.
    let node_port_service = SocketAddrV4::new(Ipv4Addr::LOCALHOST, services.node_port_service);
    let client = TcpStream::connect_timeout(&node_port_service.into(), IO_TIMEOUT)
        .expect("connect to the node-port service");
    let (accepted, from) = host_listener.accept().expect("the host backend accepts");
    assert_eq!(
        accepted.local_addr().expect("local_addr").port(),
        node_port,
        "the node-port service reached another port"
    );
    assert_eq!(client.peer_addr().ok(), Some(node_port_service.into()));
    assert_eq!(from.ip(), Ipv4Addr::LOCALHOST, "the address was kept");

    let counted = connections(&lb, services.tcp());
    assert!(counted >= 2, "2 connections made, counter says {counted}");
    // Each connection: SYN, ACK, FIN out; SYN-ACK, the name, FIN in; each
    // packet 40 bytes or more.
    let bytes = counters(&lb, services.tcp()).bytes;
    assert!(
        bytes >= counted * 6 * 40,
        "{counted} connections, {bytes} bytes"
    );

    check_udp(&pod, &services);
    // 4 datagrams and 4 echoes, each 28 bytes of headers and more.
    let udp = counters(&lb, services.udp());
    assert!(udp.connections >= 4 && udp.bytes >= 8 * 28, "UDP: {udp:?}");

    // From the pod's own namespace: the node address is a service, the
    // pod's loopback is its own (nothing listens there).
    let (name, own_loopback) = pod.inside(|| {
        let name = tcp_name(SocketAddrV4::new(pod.host, services.port));
        let own = TcpStream::connect_timeout(
            &SocketAddrV4::new(Ipv4Addr::LOCALHOST, services.port).into(),
            IO_TIMEOUT,
        );
        (name, own.map_err(|e| e.kind()))
    });
    assert!(name == "A" || name == "B", "from the pod: {name:?}");
    assert_eq!(
        own_loopback.err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the pod's own 127.0.0.1 was redirected"
    );

    // Two backends share the connections.
    let shares = tcp_shares(services.port, 200);
    for name in ["A", "B"] {
        let share = shares.get(name).copied().unwrap_or(0);
        assert!(
            share >= 40,
            "{name} got {share} of 200 connections: {shares:?}"
        );
    }
    assert!(connections(&lb, services.tcp()) >= counted + 200);

    // A backend leaves: new connections and the UDP flow on it move.
    let flow = UdpFlow::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, services.port));
    let first = flow.ask("x");
    for _ in 0..20 {
        assert_eq!(
            flow.ask("x"),
            first,
            "an unconnected UDP flow changed backend"
        );
    }
    let (leaving, staying) = if first == "A" {
        (pod.a, pod.b)
    } else {
        (pod.b, pod.a)
    };
    lb.sync(&services.table(&[staying]), &[pod.host])
        .expect("sync without one backend");
    let remaining = pod.name(staying);
    let shares = tcp_shares(services.port, 50);
    assert_eq!(
        shares.get(remaining).copied(),
        Some(50),
        "after {leaving} left: {shares:?}"
    );
    assert_eq!(flow.ask("x"), remaining, "the UDP flow kept a dead backend");

    // "Crash": the handle goes without close; the datapath stays.
    let before_crash = counters(&lb, services.tcp());
    drop(lb);
    assert_eq!(
        tcp_name(SocketAddrV4::new(pod.host, services.port)),
        remaining
    );
    assert_eq!(flow.ask("x"), remaining);
    let mut lb = load(&v2_root, pins.path());
    assert_attached(&v2_root, &plus_one(&baseline), "after adopting");
    lb.sync(&services.table(&[staying]), &[pod.host])
        .expect("sync after adopting");
    assert_eq!(
        map_entries(pins.path(), SERVICES_MAP),
        3,
        "one entry per service"
    );
    assert_eq!(
        map_entries(pins.path(), BACKENDS_MAP),
        3,
        "one slot per backend"
    );
    assert_eq!(
        tcp_name(SocketAddrV4::new(pod.host, services.port)),
        remaining
    );
    let after_crash = counters(&lb, services.tcp());
    assert!(
        after_crash.connections > before_crash.connections
            && after_crash.bytes > before_crash.bytes,
        "the counters did not survive the crash: {before_crash:?}, then {after_crash:?}"
    );

    lb.close().expect("close");
    assert!(
        !pins.path().exists(),
        "pins left after close: {:?}",
        fs::read_dir(pins.path()).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert_attached(&v2_root, &baseline, "after close");
    refused(SocketAddrV4::new(Ipv4Addr::LOCALHOST, services.port));

    // A riklet started without the eBPF proxy removes a predecessor's.
    let mut lb = load(&v2_root, pins.path());
    lb.sync(&services.table(&[pod.a]), &[pod.host])
        .expect("sync");
    drop(lb);
    remove_pinned(pins.path()).expect("remove_pinned");
    assert!(!pins.path().exists(), "pins left after remove_pinned");
    assert_attached(&v2_root, &baseline, "after remove_pinned");
    refused(SocketAddrV4::new(Ipv4Addr::LOCALHOST, services.port));
}

/// Unconnected and connected UDP through both service addresses: the echo
/// comes back from the service address and port.
fn check_udp(pod: &Pod, services: &Services) {
    for via in [Ipv4Addr::LOCALHOST, pod.host] {
        let service = SocketAddrV4::new(via, services.port);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        socket.send_to(b"ping", service).expect("send_to");
        let mut buffer = [0u8; 64];
        let (n, from) = socket
            .recv_from(&mut buffer)
            .unwrap_or_else(|e| panic!("no UDP echo through {service}: {e}"));
        assert!(buffer[..n].ends_with(b":ping"), "{:?}", &buffer[..n]);
        assert_eq!(from, SocketAddr::V4(service), "the reply's source");

        let connected = UdpSocket::bind("0.0.0.0:0").expect("bind");
        connected
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("timeout");
        connected.connect(service).expect("connect UDP");
        assert_eq!(connected.peer_addr().ok(), Some(SocketAddr::V4(service)));
        connected.send(b"pong").expect("send");
        let n = connected
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no connected UDP echo through {service}: {e}"));
        assert!(buffer[..n].ends_with(b":pong"), "{:?}", &buffer[..n]);
    }
}

#[test]
fn a_thousand_services_sync_and_resync() {
    let _serial = serial();
    let v2_root = prerequisites();
    // An empty cgroup of its own: these services redirect nobody.
    let cgroup = CgroupGuard::create(v2_root.join(unique("riklet-test-proxy")), &v2_root);
    let pins = ProxyPins::new();
    let mut lb = load(cgroup.path(), pins.path());
    let backends =
        |first: u8| [first, first + 1].map(|n| PodAddress::Ip(Ipv4Addr::new(198, 19, 255, n)));
    let table = |first: u8| {
        let endpoints: Vec<Endpoint> = backends(first)
            .into_iter()
            .enumerate()
            .map(|(i, address)| Endpoint {
                app: "many".into(),
                instance: format!("many-{i}"),
                address,
                ports: (0..1000).map(|n| tcp_port(21000 + n, 8080)).collect(),
            })
            .collect();
        ServiceTable::from_endpoints(&endpoints)
    };
    let (initial, changed) = (table(2), table(4));
    assert_eq!(initial.len(), 1000);

    let timed = |lb: &mut SocketLb, what: &str, table: &ServiceTable| {
        let start = Instant::now();
        lb.sync(table, &[Ipv4Addr::new(198, 19, 255, 1)])
            .unwrap_or_else(|e| panic!("sync ({what}): {}", riklet::error_chain(&e)));
        println!(
            "sync of 1000 services, 2 backends each, {what}: {:?}",
            start.elapsed()
        );
    };
    timed(&mut lb, "from empty maps", &initial);
    timed(&mut lb, "unchanged", &initial);
    timed(&mut lb, "every backend replaced", &changed);
    let start = Instant::now();
    let counters = lb.counters().expect("counters");
    println!("counters of 1000 services: {:?}", start.elapsed());
    assert_eq!(counters.len(), 1000);
    assert!(
        counters.values().all(|c| c.connections == 0),
        "nobody connected"
    );
    assert_eq!(map_entries(pins.path(), SERVICES_MAP), 1000);
    assert_eq!(
        map_entries(pins.path(), BACKENDS_MAP),
        2000,
        "old slots left"
    );
    timed(&mut lb, "to no service", &ServiceTable::default());
    assert!(lb.counters().expect("counters").is_empty());
    assert_eq!(map_entries(pins.path(), SERVICES_MAP), 0);
    assert_eq!(map_entries(pins.path(), BACKENDS_MAP), 0);
    lb.close().expect("close");
}

/// The services of the test: `port` (TCP and UDP) on the pod's servers,
/// and `node_port_service` (TCP) on a host-network backend.
struct Services {
    port: u16,
    node_port_service: u16,
    node_port: u16,
}

impl Services {
    /// Ports derived from the pid: no other test run uses them.
    fn new(node_port: u16) -> Self {
        let port = 20000 + (std::process::id() % 10000) as u16;
        Self {
            port,
            node_port_service: port + 10000,
            node_port,
        }
    }

    /// The table with the pod servers at `backends`.
    fn table(&self, backends: &[Ipv4Addr]) -> ServiceTable {
        let mut endpoints: Vec<Endpoint> = backends
            .iter()
            .map(|ip| Endpoint {
                app: "echo".into(),
                instance: format!("echo-{ip}"),
                address: PodAddress::Ip(*ip),
                ports: vec![
                    tcp_port(self.port, TCP_TARGET),
                    Port {
                        port: self.port,
                        target_port: UDP_TARGET,
                        protocol: Protocol::Udp,
                        kind: None,
                    },
                ],
            })
            .collect();
        endpoints.push(Endpoint {
            app: "host".into(),
            instance: "host-1".into(),
            address: PodAddress::HostNetwork,
            ports: vec![tcp_port(self.node_port_service, self.node_port)],
        });
        ServiceTable::from_endpoints(&endpoints)
    }

    fn tcp(&self) -> ServiceKey {
        ServiceKey {
            port: self.port,
            protocol: Protocol::Tcp,
        }
    }

    fn udp(&self) -> ServiceKey {
        ServiceKey {
            port: self.port,
            protocol: Protocol::Udp,
        }
    }
}

fn tcp_port(port: u16, target_port: u16) -> Port {
    Port {
        port,
        target_port,
        protocol: Protocol::Tcp,
        kind: None,
    }
}

fn load(cgroup: &Path, pins: &Path) -> SocketLb {
    SocketLb::load(cgroup, pins)
        .unwrap_or_else(|e| panic!("SocketLb::load: {}", riklet::error_chain(&e)))
}

fn counters(lb: &SocketLb, service: ServiceKey) -> ServiceCounters {
    lb.counters()
        .expect("counters")
        .get(&service)
        .copied()
        .unwrap_or_default()
}

fn connections(lb: &SocketLb, service: ServiceKey) -> u64 {
    counters(lb, service).connections
}

/// Connects, returns what the server said (its name) and the stream (the
/// server closed its side).
fn tcp_connect(to: SocketAddrV4) -> (String, TcpStream) {
    let mut stream = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut name = String::new();
    stream
        .read_to_string(&mut name)
        .unwrap_or_else(|e| panic!("reading from {to}: {e}"));
    (name, stream)
}

/// The name of the server that answered a connection to `to`.
fn tcp_name(to: SocketAddrV4) -> String {
    tcp_connect(to).0
}

/// Which server answered how many of `count` connections to
/// `127.0.0.1:port`.
fn tcp_shares(port: u16, count: usize) -> BTreeMap<String, usize> {
    let mut shares = BTreeMap::new();
    for _ in 0..count {
        let name = tcp_name(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        *shares.entry(name).or_insert(0) += 1;
    }
    shares
}

fn refused(to: SocketAddrV4) {
    let result = TcpStream::connect_timeout(&to.into(), IO_TIMEOUT);
    assert!(
        result
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{to} still redirected after the proxy went: {result:?}"
    );
}

/// An unconnected UDP socket talking to one service address.
struct UdpFlow {
    socket: UdpSocket,
    service: SocketAddrV4,
}

impl UdpFlow {
    fn open(service: SocketAddrV4) -> Self {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Self { socket, service }
    }

    /// Sends `message`, returns the name of the server that echoed it.
    fn ask(&self, message: &str) -> String {
        self.socket
            .send_to(message.as_bytes(), self.service)
            .expect("send_to");
        let mut buffer = [0u8; 64];
        let (n, from) = self
            .socket
            .recv_from(&mut buffer)
            .unwrap_or_else(|e| panic!("no echo through {}: {e}", self.service));
        assert_eq!(from, SocketAddr::V4(self.service));
        let reply = String::from_utf8_lossy(&buffer[..n]).into_owned();
        reply
            .split_once(':')
            .map(|(name, _)| name.to_owned())
            .unwrap_or(reply)
    }
}

/// Per program name, how many are attached at `cgroup` (bpftool).
fn attached(cgroup: &Path) -> BTreeMap<&'static str, usize> {
    let out = run(
        BPFTOOL,
        &["-j", "cgroup", "show", &cgroup.to_string_lossy()],
    );
    let listed: Vec<serde_json::Value> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out}"))
    };
    PROGRAMS
        .into_iter()
        .map(|program| {
            let count = listed
                .iter()
                .filter(|entry| entry["name"] == program)
                .count();
            (program, count)
        })
        .collect()
}

/// Waits until `cgroup` has `expected` programs attached, then asserts it.
/// A link that lost its last pin is released by a kernel workqueue: soon
/// after, not at once.
fn assert_attached(cgroup: &Path, expected: &BTreeMap<&'static str, usize>, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while attached(cgroup) != *expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(attached(cgroup), *expected, "programs attached {when}");
}

fn plus_one(baseline: &BTreeMap<&'static str, usize>) -> BTreeMap<&'static str, usize> {
    baseline.iter().map(|(p, n)| (*p, n + 1)).collect()
}

/// Entries of a pinned proxy map (bpftool).
fn map_entries(pins: &Path, map: &str) -> usize {
    let path = pins.join("proxy").join(map);
    let out = run(
        BPFTOOL,
        &["-j", "map", "dump", "pinned", &path.to_string_lossy()],
    );
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out}"));
    entries.len()
}

/// The conntrack entries matching `filter`, one line each.
fn conntrack(filter: &[&str]) -> Vec<String> {
    let mut args = vec!["-L"];
    args.extend_from_slice(filter);
    run(CONNTRACK, &args).lines().map(str::to_owned).collect()
}

/// The `src`, `dst`, `sport`, `dport` of a conntrack entry's original tuple,
/// then of its reply tuple.
fn tuples(entry: &str) -> [String; 8] {
    let values: Vec<String> = entry
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter(|(key, _)| ["src", "dst", "sport", "dport"].contains(key))
        .map(|(_, value)| value.to_owned())
        .collect();
    values
        .try_into()
        .unwrap_or_else(|values| panic!("not a TCP conntrack entry ({values:?}): {entry}"))
}

/// Runs `program` with `args`, which must succeed; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip` with the words of `args`, which must succeed.
fn ip(args: &str) {
    run(IP, &args.split_whitespace().collect::<Vec<_>>());
}

/// A "pod": a network namespace with a veth to the host (a /29 of the
/// benchmarking range: host .1, the pod's two addresses .2 and .3) and, on
/// each pod address, a TCP server that says its name (A on .2, B on .3)
/// and closes, and a UDP server that echoes `name:message`.
struct Pod {
    netns: String,
    host: Ipv4Addr,
    a: Ipv4Addr,
    b: Ipv4Addr,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Pod {
    fn start() -> Self {
        let subnet = (std::process::id() % 250) as u8;
        let [host, a, b] = [1, 2, 3].map(|n| Ipv4Addr::new(198, 19, subnet, n));
        let netns = unique("rk-px");
        // Interface names are at most 15 bytes.
        let veth = format!("rkpx{}", std::process::id() % 1_000_000);
        ip(&format!("netns add {netns}"));
        let mut pod = Self {
            netns,
            host,
            a,
            b,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {}",
            pod.netns
        ));
        ip(&format!("addr add {host}/29 dev {veth}"));
        ip(&format!("link set {veth} up"));
        for address in [a, b] {
            ip(&format!("-n {} addr add {address}/29 dev eth0", pod.netns));
        }
        ip(&format!("-n {} link set eth0 up", pod.netns));
        ip(&format!("-n {} link set lo up", pod.netns));
        for address in [a, b] {
            let name = pod.name(address);
            pod.spawn(move |stop| serve_tcp(SocketAddrV4::new(address, TCP_TARGET), name, stop));
            pod.spawn(move |stop| serve_udp(SocketAddrV4::new(address, UDP_TARGET), name, stop));
        }
        pod
    }

    fn name(&self, address: Ipv4Addr) -> &'static str {
        if address == self.a { "A" } else { "B" }
    }

    /// Runs `body` on a thread inside the pod's namespace.
    fn inside<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.netns);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    body()
                })
                .join()
                .expect("a thread in the pod namespace panicked")
        })
    }

    /// The address of the server named `name`.
    fn address(&self, name: &str) -> Ipv4Addr {
        if name == "A" { self.a } else { self.b }
    }

    /// Runs `server` on a thread in the namespace; returns once it is
    /// bound.
    fn spawn<F>(&mut self, server: F)
    where
        F: FnOnce(Arc<AtomicBool>) -> Box<dyn FnOnce() + Send> + Send + 'static,
    {
        let path = PathBuf::from("/run/netns").join(&self.netns);
        let stop = Arc::clone(&self.stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        self.servers.push(thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let serve = server(stop);
            let _ = ready_tx.send(());
            serve();
        }));
        ready_rx
            .recv_timeout(IO_TIMEOUT)
            .expect("a pod server did not start");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the TCP servers blocked in accept; the pod addresses are no
        // service, so these go straight there.
        for address in [self.a, self.b] {
            let _ = TcpStream::connect_timeout(
                &SocketAddrV4::new(address, TCP_TARGET).into(),
                Duration::from_secs(1),
            );
        }
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
        // Deleting the namespace deletes the veth pair too.
        let _ = Command::new(IP)
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Binds now (in the caller's namespace); the returned closure accepts
/// until `stop`, telling each client `name`.
fn serve_tcp(
    address: SocketAddrV4,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> Box<dyn FnOnce() + Send> {
    let listener = TcpListener::bind(address).unwrap_or_else(|e| panic!("bind {address}: {e}"));
    Box::new(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(mut stream) = stream {
                let _ = stream.write_all(name.as_bytes());
            }
        }
    })
}

/// Binds now; the returned closure echoes `name:message` until `stop`.
fn serve_udp(
    address: SocketAddrV4,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> Box<dyn FnOnce() + Send> {
    let socket = UdpSocket::bind(address).unwrap_or_else(|e| panic!("bind {address}: {e}"));
    Box::new(move || {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut buffer = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buffer[..n]);
                let _ = socket.send_to(&reply, from);
            }
        }
    })
}

/// Turns connection tracking on in the host namespace for the test (an nft
/// table whose output chain matches on `ct state`), so that the absence of
/// a conntrack entry means something; the table goes on drop.
struct ConntrackOn {
    table: String,
}

impl ConntrackOn {
    fn new() -> Self {
        let on = Self {
            table: unique("rkpx_ct").replace('-', "_"),
        };
        run(NFT, &["add", "table", "inet", &on.table]);
        run(
            NFT,
            &[
                "add chain inet",
                &on.table,
                "out { type filter hook output priority 0 ; }",
            ],
        );
        run(
            NFT,
            &["add rule inet", &on.table, "out ct state new counter"],
        );
        on
    }
}

impl Drop for ConntrackOn {
    fn drop(&mut self) {
        let _ = Command::new(NFT)
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// A unique pin directory under /sys/fs/bpf; whatever the proxy left there
/// goes on drop, even when the test panics (`remove_pinned`, then the
/// support guard for anything else).
struct ProxyPins(PinDirGuard);

impl ProxyPins {
    fn new() -> Self {
        Self(PinDirGuard::new(
            Path::new("/sys/fs/bpf").join(unique("riklet-test-proxy")),
        ))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ProxyPins {
    fn drop(&mut self) {
        if let Err(e) = remove_pinned(self.path()) {
            eprintln!("cleanup: {}", riklet::error_chain(&e));
        }
    }
}

/// Panics naming the first missing prerequisite; returns the cgroup v2 root.
fn prerequisites() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, bpf, bpffs); run it as root"
    );
    for (tool, package) in [
        (IP, "iproute2"),
        (NFT, "nftables"),
        (BPFTOOL, "bpftool"),
        (CONNTRACK, "conntrack"),
    ] {
        assert!(
            Path::new(tool).is_file(),
            "{tool} is missing: install {package} (apt-get install {package})"
        );
    }
    support::cgroup2_mount().unwrap_or_else(|| {
        panic!("no cgroup2 mount in /proc/self/mountinfo: this test needs the cgroup v2 hierarchy")
    })
}
