//! The Node Proxy end to end: apps' ports reached from an "external host"
//! (a network namespace wired to the node by a veth pair) and from the node
//! itself, with the eBPF datapath and with nftables alone, against a real
//! riklet, kernel, nftables, eBPF and containerd.
//!
//! Needs root, `socat`, `conntrack`, `bpftool`, `nft`, containerd,
//! `docker-registry` and `skopeo` (Debian packages of the same names;
//! `cargo xtask setup` installs them).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use riklet_e2e::external::ExternalHost;
use riklet_e2e::registry::{Registry, busybox_archive, host_arch, require};
use riklet_e2e::{Cluster, Mode, Options, containerd, free_port, http_get_at, wait_for};
use serde_json::Value;

const PAGE: &str = "hello through the node proxy";

fn prerequisites() {
    containerd::require_machine_containerd();
    for (tool, package) in [
        ("socat", "socat"),
        ("conntrack", "conntrack"),
        ("bpftool", "bpftool"),
        ("nft", "nftables"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
    ] {
        require(tool, package);
    }
}

/// Node ports of one run (free TCP ports; UDP and SCTP use the same
/// numbers, which are free for them too in practice).
struct Ports {
    who: u16,
    echo: u16,
    web: u16,
    sctp: u16,
    host: u16,
    host_target: u16,
}

/// A bare-process TCP app answering each connection with the pod's own
/// address (so a client can tell replicas apart).
fn who_app(port: u16, replicas: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: who\nreplicas: {replicas}\nspec:\n  containers:\n    - name: who\n      \
         exec: /bin/sh\n      args: [-c, \"exec socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo $SOCAT_SOCKADDR'\"]\n      \
         ports: {{port: {port}, target_port: 8080}}\n"
    )
}

/// A bare-process UDP echo.
fn echo_app(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: echo\nspec:\n  containers:\n    - name: echo\n      \
         exec: /usr/bin/socat\n      args: [-T, \"2\", \"UDP-RECVFROM:9053,fork\", \"EXEC:cat\"]\n      \
         ports: {{port: {port}, target_port: 9053, protocol: UDP}}\n"
    )
}

/// An image container (busybox httpd) under containerd.
fn web_app(port: u16, image: &str) -> String {
    let command = format!(
        "mkdir -p /tmp/www && echo '{PAGE}' > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    );
    format!(
        "apiVersion: v1\nkind: Pod\nname: web\nspec:\n  containers:\n    - name: web\n      image: \"{image}\"\n      \
         command: [sh, -c, {command:?}]\n      ports: {{port: {port}, target_port: 8080}}\n"
    )
}

/// An SCTP port (this kernel has no SCTP sockets: only the rules are
/// checked) on a process that just sleeps.
fn sctp_app(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: signal\nspec:\n  containers:\n    - name: main\n      \
         exec: /bin/busybox\n      args: [sleep, \"3600\"]\n      \
         ports: {{port: {port}, target_port: 9999, protocol: SCTP}}\n"
    )
}

/// busybox httpd in the node's network namespace on `target`, exposed on
/// `port`: the proxy's backend is the node itself at another port.
fn host_network_app(port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: hostweb\nspec:\n  hostNetwork: true\n  containers:\n    - name: httpd\n      \
         exec: /bin/busybox\n      args: [httpd, -f, -p, \"{target}\", -h, /usr/share/doc/busybox-static]\n      \
         ports: {{port: {port}, target_port: {target}}}\n"
    )
}

/// Entries of one of the socket LB's pinned maps (`bpftool map dump`).
fn pinned_entries(cluster: &Cluster, map: &str) -> usize {
    let pin = cluster.pin_dir.join("proxy").join(map);
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        pin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array().map_or(0, Vec::len)
}

/// Connects to `addr` and returns what the `who` app answered (a pod
/// address).
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// Sends a datagram from an unconnected socket; returns the answer and
/// where it came from.
fn udp_echo(to: SocketAddrV4, payload: &str) -> std::io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.send_to(payload.as_bytes(), to)?;
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// The same over a connected socket: `peer_addr` must show the service.
fn udp_echo_connected(to: SocketAddrV4, payload: &str) -> std::io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.connect(to)?;
    s.send(payload.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        s.peer_addr()?,
    ))
}

fn service<'a>(status: &'a Value, port: u16, protocol: &str) -> Option<&'a Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["port"] == port && s["protocol"] == protocol)
}

fn wait_backends(cluster: &Cluster, port: u16, protocol: &str, n: usize) -> Value {
    wait_for(Duration::from_secs(30), "the proxy's backends", || {
        let status = cluster.proxy_status();
        let s = service(&status, port, protocol)?;
        (s["backends"].as_array()?.len() == n).then(|| s.clone())
    })
}

/// `nft -j list table ip <table>` of the proxy, or `None` if absent.
fn proxy_table(cluster: &Cluster) -> Option<Value> {
    let table = format!("{}_proxy", cluster.net.table);
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", &table])
        .output()
        .expect("nft");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("nft JSON"))
}

/// The proxy table's objects as `kind → count` (rules, chains, maps,
/// elements…): equal before and after a riklet restart means nothing was
/// duplicated.
fn table_shape(cluster: &Cluster) -> BTreeMap<String, usize> {
    let mut shape = BTreeMap::new();
    for o in proxy_table(cluster).expect("the proxy table")["nftables"]
        .as_array()
        .expect("nftables array")
    {
        if let Some((kind, v)) = o.as_object().and_then(|m| m.iter().next()) {
            *shape.entry(kind.clone()).or_default() += 1;
            if let Some(elems) = v["elem"].as_array() {
                *shape.entry(format!("{kind} elements")).or_default() += elems.len();
            }
        }
    }
    shape
}

/// [`table_shape`] once every service chain is compact: the riklet
/// compacts its table once the services have been quiet for a second; until
/// then a chain may hold rules shadowed by newer ones (under the first
/// rule that always translates) or a `return` of a service that is gone.
fn compacted_shape(cluster: &Cluster) -> BTreeMap<String, usize> {
    wait_for(
        Duration::from_secs(10),
        "the proxy table to be compacted",
        || {
            let table = proxy_table(cluster)?;
            let mut reached: BTreeMap<String, bool> = BTreeMap::new();
            for o in table["nftables"].as_array()? {
                let rule = &o["rule"];
                let Some(chain) = rule["chain"].as_str().filter(|c| c.starts_with("svc_")) else {
                    continue;
                };
                let text = rule["expr"].to_string();
                // A rule after one that always translates, or a `return`.
                let shadowed = reached.get(chain).copied().unwrap_or(false);
                if shadowed || text.contains("\"return\"") {
                    return None;
                }
                reached.insert(chain.to_string(), !text.contains("numgen"));
            }
            Some(())
        },
    );
    table_shape(cluster)
}

/// `conntrack -L` lines of TCP flows from the node to 127.0.0.1:`port`
/// (what a DNATed connection to the node port leaves).
fn conntrack_to_loopback_port(port: u16) -> Vec<String> {
    let out = Command::new("conntrack")
        .args([
            "-L",
            "-p",
            "tcp",
            "--orig-dst",
            "127.0.0.1",
            "--orig-port-dst",
            &port.to_string(),
        ])
        .output()
        .expect("conntrack");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Names of the programs attached to the cgroup v2 root
/// (`bpftool cgroup show`).
fn root_programs() -> Vec<String> {
    let root = if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show", root])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

fn registry() -> Registry {
    let reg = Registry::start();
    reg.push(&busybox_archive(&host_arch()), "busybox:1");
    reg
}

fn apply_ok(cluster: &Cluster, manifest: &str) {
    let out = cluster.apply_timeout(manifest, Some(Duration::from_secs(60)));
    assert!(
        out.status.success(),
        "rik apply: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.riklet_log()
    );
}

/// The two tests check what is attached at the cgroup root, which is
/// node-wide: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn end_to_end(mode: &'static str) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    prerequisites();
    // What is attached at the cgroup root before this riklet.
    let programs_at_start = root_programs();
    let reg = registry();
    let mut cluster = Cluster::start_with(
        Mode::Standalone,
        Options {
            insecure_registries: vec![reg.host()],
            proxy: Some(mode),
            ..Options::default()
        },
    );
    assert_eq!(
        cluster.proxy_status()["mode"],
        mode,
        "{}",
        cluster.riklet_log()
    );
    let ext = ExternalHost::create(cluster.net.n);
    let ports = Ports {
        who: free_port(),
        echo: free_port(),
        web: free_port(),
        sctp: free_port(),
        host: free_port(),
        host_target: free_port(),
    };
    apply_ok(&cluster, &who_app(ports.who, 2));
    apply_ok(&cluster, &echo_app(ports.echo));
    apply_ok(
        &cluster,
        &web_app(ports.web, &format!("{}/busybox:1", reg.host())),
    );
    apply_ok(&cluster, &sctp_app(ports.sctp));
    apply_ok(&cluster, &host_network_app(ports.host, ports.host_target));
    let who = wait_backends(&cluster, ports.who, "TCP", 2);
    wait_backends(&cluster, ports.echo, "UDP", 1);
    wait_backends(&cluster, ports.web, "TCP", 1);
    let sctp = wait_backends(&cluster, ports.sctp, "SCTP", 1);
    let host = wait_backends(&cluster, ports.host, "TCP", 1);
    assert_eq!(host["backends"][0], format!("node:{}", ports.host_target));
    let who_pods: Vec<String> = who["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().trim_end_matches(":8080").to_string())
        .collect();
    let expected = if mode == "ebpf" {
        "ebpf+nftables"
    } else {
        "nftables"
    };
    assert_eq!(who["datapath"], expected);
    assert_eq!(sctp["datapath"], "nftables");

    // From the external host, through the node's address on its veth.
    let (answer, echo, page, host_page) = ext.run(|| {
        (
            ask((ext.node_ip, ports.who).into()),
            udp_echo(SocketAddrV4::new(ext.node_ip, ports.echo), "ping"),
            http_get_at(ext.node_ip.into(), ports.web, "/"),
            http_get_at(ext.node_ip.into(), ports.host, "/copyright"),
        )
    });
    let host_page = host_page.expect("HTTP to the host-network app from the external host");
    assert!(host_page.0.contains("200"), "{host_page:?}");
    let answer = answer.expect("TCP from the external host");
    assert!(who_pods.contains(&answer), "{answer} not in {who_pods:?}");
    let (echoed, from) = echo.expect("UDP from the external host");
    assert_eq!(echoed, "ping");
    assert_eq!(
        from,
        SocketAddr::from((ext.node_ip, ports.echo)),
        "reply from the address dialled"
    );
    assert_eq!(page.expect("HTTP from the external host").1.trim(), PAGE);

    // From the node: loopback, the pod bridge's address, the veth address.
    let gateway: Ipv4Addr = cluster.net.gateway().parse().unwrap();
    for node_ip in [Ipv4Addr::LOCALHOST, gateway, ext.node_ip] {
        let answer = ask((node_ip, ports.who).into()).expect("TCP from the node");
        assert!(who_pods.contains(&answer), "{node_ip}: {answer}");
        let (echoed, from) =
            udp_echo(SocketAddrV4::new(node_ip, ports.echo), "pong").expect("UDP from the node");
        assert_eq!(
            (echoed.as_str(), from),
            ("pong", SocketAddr::from((node_ip, ports.echo)))
        );
        let (echoed, peer) = udp_echo_connected(SocketAddrV4::new(node_ip, ports.echo), "hi")
            .expect("connected UDP from the node");
        assert_eq!(
            (echoed.as_str(), peer),
            ("hi", SocketAddr::from((node_ip, ports.echo)))
        );
        let host_page = http_get_at(node_ip.into(), ports.host, "/copyright")
            .expect("HTTP to the host-network app from the node");
        assert!(host_page.0.contains("200"), "{node_ip}: {host_page:?}");
        let page = http_get_at(node_ip.into(), ports.web, "/").expect("HTTP from the node");
        assert_eq!(page.1.trim(), PAGE, "{node_ip}");
    }

    // Two replicas share the connections.
    let before = service(&cluster.proxy_status(), ports.who, "TCP").unwrap()["connections"]
        .as_u64()
        .unwrap();
    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let answer = ask((Ipv4Addr::LOCALHOST, ports.who).into()).expect("TCP from the node");
        *share.entry(answer).or_default() += 1;
    }
    assert_eq!(share.len(), 2, "{share:?}");
    assert!(
        share.values().all(|&n| n >= 40),
        "each replica gets at least 20 %: {share:?}"
    );
    let after = service(&cluster.proxy_status(), ports.who, "TCP").unwrap()["connections"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 200,
        "connections counted: {before} → {after}"
    );

    // Which datapath carried them: the socket LB connects the socket to
    // the pod itself (no NAT, so no conntrack entry towards the node
    // port); nftables DNATs, and conntrack has the translation.
    let held = TcpStream::connect((Ipv4Addr::LOCALHOST, ports.who)).expect("a held connection");
    let tracked = conntrack_to_loopback_port(ports.who);
    if mode == "ebpf" {
        assert!(
            tracked.is_empty(),
            "the eBPF path leaves no DNAT entry: {tracked:?}"
        );
        assert!(
            held.peer_addr().unwrap().port() == ports.who,
            "getpeername shows the service"
        );
    } else {
        assert!(!tracked.is_empty(), "nftables DNATs, conntrack records it");
    }
    drop(held);

    // SCTP: its rule points at the pod.
    let sctp_backend = sctp["backends"][0].as_str().unwrap().to_string();
    let table = proxy_table(&cluster).expect("the proxy table").to_string();
    assert!(table.contains("sctp"), "{table}");
    let backend_ip = sctp_backend.trim_end_matches(":9999");
    assert!(
        table.contains(backend_ip) && table.contains("9999"),
        "SCTP backend {sctp_backend} in {table}"
    );

    // A clashing app is refused, naming the field and the holder.
    let out = cluster.apply_timeout(
        &who_app(ports.who, 1).replace("name: who", "name: thief"),
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.containers[0].ports[0].port") && err.contains("held by app \"who\""),
        "{err}"
    );

    // kill -9: the datapath keeps serving; the next riklet adopts it.
    // (Compacted first: a restarted riklet writes a compact table.)
    let shape = compacted_shape(&cluster);
    let programs = root_programs();
    let maps = (mode == "ebpf").then(|| {
        (
            pinned_entries(&cluster, "LB_SERVICES"),
            pinned_entries(&cluster, "LB_BACKENDS"),
        )
    });
    cluster.kill_riklet();
    assert!(
        ask((Ipv4Addr::LOCALHOST, ports.who).into()).is_ok(),
        "served while the riklet is down"
    );
    let down = ext.run(|| ask((ext.node_ip, ports.who).into()));
    assert!(
        down.is_ok(),
        "served from outside while the riklet is down: {down:?}"
    );
    cluster.start_riklet();
    cluster.wait_node_ready();
    wait_backends(&cluster, ports.who, "TCP", 2);
    assert_eq!(
        table_shape(&cluster),
        shape,
        "no duplicate nftables objects"
    );
    assert_eq!(
        root_programs(),
        programs,
        "no duplicate programs at the cgroup root"
    );
    if let Some(maps) = maps {
        let now = (
            pinned_entries(&cluster, "LB_SERVICES"),
            pinned_entries(&cluster, "LB_BACKENDS"),
        );
        assert_eq!(now, maps, "no duplicate service or backend entries");
    }

    // A backend whose network namespace is gone is no backend.
    let pods = cluster.local_pods();
    let gone = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["app"] == "who" && p["internalIp"] == who_pods[0].as_str())
        .expect("the who replica at the first backend")["appId"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new("ip")
        .args(["netns", "del", &format!("rik-{gone}")])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_backends(&cluster, ports.who, "TCP", 1);
    for _ in 0..20 {
        let answer = ask((Ipv4Addr::LOCALHOST, ports.who).into()).expect("TCP from the node");
        assert_eq!(answer, who_pods[1], "only the replica with a network");
    }
    assert!(ask((Ipv4Addr::LOCALHOST, ports.who).into()).is_ok());

    // Delete: the port closes.
    let deleted = Instant::now();
    cluster.rik_ok(&["delete", "who"]);
    wait_for(Duration::from_secs(10), "the port to close", || {
        ask((Ipv4Addr::LOCALHOST, ports.who).into())
            .is_err()
            .then_some(())
    });
    println!(
        "port {} closed {:?} after the delete",
        ports.who,
        deleted.elapsed()
    );

    for app in ["echo", "web", "signal", "hostweb"] {
        cluster.rik_ok(&["delete", app]);
    }
    wait_for(Duration::from_secs(60), "every pod gone", || {
        (cluster.local_pods().as_array().map(Vec::len) == Some(0)).then_some(())
    });
    cluster.stop_riklet();
    assert!(
        proxy_table(&cluster).is_none(),
        "the proxy table is removed on a clean stop"
    );
    assert!(
        !cluster.pin_dir.join("proxy").exists(),
        "no proxy pins left"
    );
    assert_eq!(
        root_programs(),
        programs_at_start,
        "no program left at the cgroup root"
    );
}

#[test]
fn ebpf_datapath_serves_external_and_local_clients() {
    end_to_end("ebpf");
}

#[test]
fn nftables_datapath_serves_external_and_local_clients() {
    end_to_end("nftables");
}
