//! `cargo xtask bench proxy`: what the Node Proxy costs a connection, against
//! reaching the pod directly and against a userspace relay, measured in one
//! run against one pod on this machine (docs/benchmarks.md, "Node Proxy").
//!
//! 1. builds the release binaries and starts a one-node cluster (a
//!    `rik-scheduler` of its own, so that the riklet can be restarted in
//!    another proxy mode while the scheduler keeps the apps; bridge, pod
//!    CIDR and nft tables of its own);
//! 2. applies the pod every route reaches: a bare-process `nginx` (Debian's
//!    `nginx-light`, one worker, a config written here serving a 1 KiB
//!    file) and an `iperf3 -s` in a second container, in the pod's own
//!    network namespace, each with a `ports` entry; starts `socat` and
//!    `haproxy` relays to the pod on 127.0.0.1;
//! 3. [`Plan::rounds`] interleaved rounds: in each, every route gets a
//!    `wrk` run with keep-alive, one with a new connection per request
//!    (`Connection: close`) and an `iperf3` run. Routes: the pod IP
//!    (direct); the eBPF and nftables datapaths (the riklet restarted with
//!    `--proxy MODE`; pods survive a restart, so it is the same pod), each
//!    through 127.0.0.1 and through the node's address; socat and haproxy.
//!    A riklet without `--proxy` gets direct, socat and haproxy only, the
//!    proxy rows marked as not measured;
//! 4. per proxy mode: the time from a new pod's RUNNING (the riklet's pod
//!    record) to its first connection through the node port on 127.0.0.1,
//!    next to its first direct connection (the server's own start);
//! 5. per proxy mode: the riklet's sync of 1,000 services (one pod with
//!    1,000 `ports` entries), read from its `/metrics`
//!    (`riklet_proxy_last_sync_seconds` once `riklet_proxy_services` counts
//!    them), and the sync that removes them;
//! 6. removes everything, also when it fails, and writes
//!    `target/bench/proxy.json` and a table.
//!
//! Nothing here asserts on time: the figures are reported, not judged.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

mod load;
mod node;
mod probe;
mod report;
mod site;

use crate::bench::cluster::{Build, Cluster, SchedulerProcess, binaries};
use crate::bench::process::step;
use load::{Relay, Wrk, require_tools, wait_connectable};
use node::{BenchNetwork, default_route_address, free_port, pod_ip, proxy_view, serves};
use probe::{
    SYNC_SERVICES, first_connect_json, first_connect_sample, sync_json, sync_line, sync_sample,
};
use report::{Mode, Route, Samples, Via, results, table};
use site::{nginx_container, write_site};
/// Where nginx and iperf3 listen in the pod.
pub(crate) const HTTP_TARGET: u16 = 8080;
pub(crate) const IPERF_TARGET: u16 = 5201;
/// The static file nginx serves at `/`.
pub(crate) const FILE_BYTES: usize = 1024;
/// Where the relays listen and the first-connection probe connects.
pub(crate) const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Command-line options of `cargo xtask bench proxy`.
pub struct Options {
    /// One round of 2-second runs, one sample of the rest: a check that the
    /// harness works (CI), not figures to quote.
    pub quick: bool,
    /// The node address proxied routes are also measured at (127.0.0.1 is
    /// always); default: the address of the default route's interface.
    pub node_address: Option<Ipv4Addr>,
    /// The binaries measured: release, or CI's dev build with `quick`.
    pub build: Build,
}

/// How much of everything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub rounds: usize,
    pub run: Duration,
    pub first_connects: usize,
    pub syncs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                run: Duration::from_secs(2),
                first_connects: 1,
                syncs: 1,
            }
        } else {
            Plan {
                rounds: 5,
                run: Duration::from_secs(5),
                first_connects: 10,
                syncs: 3,
            }
        }
    }
}

/// `cargo xtask bench proxy`.
pub fn proxy(root: &Path, opts: &Options) -> anyhow::Result<()> {
    require_tools()?;
    step(&format!("build the {} binaries", opts.build.dir()));
    let (target, out_dir) = binaries(root, opts.build)?;
    let bin = target.join(opts.build.dir());
    let modes = proxy_modes(&bin)?;
    if modes.is_empty() {
        println!("  this riklet has no --proxy flag: direct, socat and haproxy only");
    }
    let n = std::process::id() % 10_000;
    let net = BenchNetwork {
        bridge: format!("rkp{n}"),
        table: format!("riklet_benchp_{n}"),
    };
    let extra = format!(
        "metrics_addr = \"127.0.0.1:0\"\n\n[network]\nbridge = \"{}\"\npod_cidr = \"10.217.0.0/24\"\n\
         nft_table = \"{}\"\n",
        net.bridge, net.table
    );
    step("start a one-node cluster: rik-scheduler + riklet");
    let first = modes.first().map(|m| mode_args(*m)).unwrap_or_default();
    let mut cluster = Cluster::start_with(&bin, &extra, SchedulerProcess::Separate, &first)?;
    let node_address = match opts.node_address {
        Some(a) => Some(a),
        None => default_route_address()?,
    };
    let result = measure(&mut cluster, opts.quick, node_address, modes);
    let _ = std::fs::copy(
        cluster.dir_path().join("riklet.log"),
        out_dir.join("proxy-riklet.log"),
    );
    step("clean up");
    let shutdown = cluster.shutdown();
    drop(cluster);
    drop(net);
    let results = result?;
    shutdown?;

    let path = out_dir.join("proxy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!();
    print!("{}", table(&results));
    println!("\nraw results: {}", path.display());
    Ok(())
}

/// The proxy modes this riklet takes: both if its `--help` lists
/// `--proxy`, none otherwise.
fn proxy_modes(bin: &Path) -> anyhow::Result<Vec<Mode>> {
    let out = Command::new(bin.join("riklet"))
        .arg("--help")
        .output()
        .context("riklet --help")?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(if help.contains("--proxy") {
        Mode::ALL.to_vec()
    } else {
        Vec::new()
    })
}

fn mode_args(mode: Mode) -> Vec<String> {
    vec!["--proxy".to_string(), mode.name().to_string()]
}

fn measure(
    cluster: &mut Cluster,
    quick: bool,
    node_address: Option<Ipv4Addr>,
    modes: Vec<Mode>,
) -> anyhow::Result<Value> {
    let machine = crate::bench::process::machine();
    let dir = cluster.dir_path().to_path_buf();
    write_site(&dir)?;
    let (http_port, iperf_port) = (free_port()?, free_port()?);

    let (pod_ip, direct) = start_pod(cluster, &dir, http_port, iperf_port)?;

    step("userspace relays on 127.0.0.1: socat, haproxy");
    let on = |port| SocketAddr::new(LOOPBACK.into(), port);
    let socat = (on(free_port()?), on(free_port()?));
    let haproxy = (on(free_port()?), on(free_port()?));
    let _relays = [
        Relay::socat(&dir, socat.0, direct.0)?,
        Relay::socat(&dir, socat.1, direct.1)?,
        Relay::haproxy(&dir, &[(haproxy.0, direct.0), (haproxy.1, direct.1)])?,
    ];
    let mut endpoints = BTreeMap::from([
        (Route::Direct, direct),
        (Route::Socat, socat),
        (Route::Haproxy, haproxy),
    ]);
    let mut vias = vec![(Via::Loopback, LOOPBACK)];
    vias.extend(node_address.map(|a| (Via::NodeAddress, a)));
    for mode in &modes {
        for (via, address) in &vias {
            let at = |port| SocketAddr::new((*address).into(), port);
            endpoints.insert(Route::Proxy(*mode, *via), (at(http_port), at(iperf_port)));
        }
    }

    let mut bench = Bench {
        cluster,
        plan: Plan::new(quick),
        vias,
        wrk: Wrk::new(&dir)?,
        mode: modes.first().copied(),
        modes,
        pod_ip,
        node_ports: (http_port, iperf_port),
        endpoints,
        samples: BTreeMap::new(),
        proxy_views: BTreeMap::new(),
    };
    bench.rounds()?;
    let first_connect = bench.first_connects()?;
    let sync = bench.syncs()?;
    Ok(results(&bench.report(machine, first_connect, sync)))
}

/// Applies `web`: nginx and `iperf3 -s` behind the node ports; returns
/// the pod IP and their direct endpoints once both answer.
fn start_pod(
    cluster: &Cluster,
    dir: &Path,
    http_port: u16,
    iperf_port: u16,
) -> anyhow::Result<(Ipv4Addr, (SocketAddr, SocketAddr))> {
    step("the pod: nginx and iperf3 -s, bare processes in their own netns");
    let web = json!({
        "apiVersion": "v1", "kind": "Pod", "name": "web",
        "spec": {"containers": [
            nginx_container(dir, "web", http_port),
            {"name": "iperf3", "exec": "/usr/bin/iperf3",
             "args": ["-s", "-p", IPERF_TARGET.to_string()],
             "ports": {"port": iperf_port, "target_port": IPERF_TARGET, "protocol": "TCP"}},
        ]},
    });
    apply(cluster, "web", &web, true).map_err(|e| with_output(cluster, "web", e))?;
    let pod_ip = pod_ip(cluster, "web")?;
    let direct = (
        SocketAddr::new(pod_ip.into(), HTTP_TARGET),
        SocketAddr::new(pod_ip.into(), IPERF_TARGET),
    );
    for addr in [direct.0, direct.1] {
        wait_connectable(addr, Duration::from_secs(30))
            .map_err(|e| with_output(cluster, "web", e))?;
    }
    println!("  pod {pod_ip}: nginx :{HTTP_TARGET}, iperf3 :{IPERF_TARGET}");
    Ok((pod_ip, direct))
}

/// What the results are built from.
pub(crate) struct Report {
    pub machine: Value,
    pub plan: Plan,
    pub node_address: Option<Ipv4Addr>,
    pub modes: Vec<Mode>,
    pub pod_ip: Ipv4Addr,
    pub node_ports: (u16, u16),
    pub endpoints: BTreeMap<Route, (SocketAddr, SocketAddr)>,
    pub samples: BTreeMap<Route, Samples>,
    pub proxy_views: BTreeMap<&'static str, Value>,
    pub first_connect: Value,
    pub sync: Value,
}

/// The cluster with the pod and relays up, and what was measured so far.
struct Bench<'a> {
    cluster: &'a mut Cluster,
    plan: Plan,
    /// The node addresses proxied routes are measured at.
    vias: Vec<(Via, Ipv4Addr)>,
    wrk: Wrk,
    /// The proxy modes this riklet takes.
    modes: Vec<Mode>,
    /// The mode the riklet runs in now.
    mode: Option<Mode>,
    pod_ip: Ipv4Addr,
    /// The `web` app's node ports: HTTP, iperf3.
    node_ports: (u16, u16),
    /// Each measured route's HTTP and iperf3 endpoints.
    endpoints: BTreeMap<Route, (SocketAddr, SocketAddr)>,
    samples: BTreeMap<Route, Samples>,
    /// `riklet proxy` after each mode's last measurement.
    proxy_views: BTreeMap<&'static str, Value>,
}

impl Bench<'_> {
    /// The interleaved rounds. Each round runs the proxy modes first, in
    /// alternating order so that one riklet restart per round suffices.
    fn rounds(&mut self) -> anyhow::Result<()> {
        for round in 0..self.plan.rounds {
            step(&format!(
                "round {}/{}: wrk keep-alive, wrk Connection: close, iperf3; {} s each",
                round + 1,
                self.plan.rounds,
                self.plan.run.as_secs()
            ));
            let mut modes = self.modes.clone();
            if round % 2 == 1 {
                modes.reverse();
            }
            for mode in modes {
                self.switch_mode(mode)?;
                for (via, _) in self.vias.clone() {
                    self.run_route(Route::Proxy(mode, via))?;
                }
                let view = proxy_view(self.cluster)?;
                self.proxy_views.insert(mode.name(), view);
            }
            for route in [Route::Direct, Route::Socat, Route::Haproxy] {
                self.run_route(route)?;
            }
        }
        Ok(())
    }

    fn run_route(&mut self, route: Route) -> anyhow::Result<()> {
        let (http, iperf) = self.endpoints[&route];
        let s = self.samples.entry(route).or_default();
        s.run(&self.wrk, http, iperf, self.plan.run)?;
        println!("  {:<21} {}", route.key(), s.last_line());
        Ok(())
    }

    /// Restarts the riklet in `mode` unless it runs in it, then waits until
    /// `riklet proxy` shows the pod behind both node ports and the HTTP
    /// port answers at every measured address.
    fn switch_mode(&mut self, mode: Mode) -> anyhow::Result<()> {
        if self.mode != Some(mode) {
            println!("  restart the riklet with --proxy {}", mode.name());
            self.cluster.restart_riklet(&mode_args(mode))?;
            self.mode = Some(mode);
        }
        let wanted = [
            (
                self.node_ports.0,
                SocketAddr::new(self.pod_ip.into(), HTTP_TARGET),
            ),
            (
                self.node_ports.1,
                SocketAddr::new(self.pod_ip.into(), IPERF_TARGET),
            ),
        ];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let view = proxy_view(self.cluster)?;
            if view["mode"] == mode.name() && wanted.iter().all(|(p, b)| serves(&view, *p, *b)) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "after 30s `riklet proxy` does not show mode {} with ports {} -> {} and {} -> {}: {view}",
                    mode.name(),
                    wanted[0].0,
                    wanted[0].1,
                    wanted[1].0,
                    wanted[1].1
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, address) in &self.vias {
            let http = SocketAddr::new((*address).into(), self.node_ports.0);
            wait_connectable(http, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// RUNNING → first proxied connection, per mode; with no proxy mode,
    /// RUNNING → first direct connection alone.
    fn first_connects(&mut self) -> anyhow::Result<Value> {
        let passes: Vec<Option<Mode>> = if self.modes.is_empty() {
            vec![None]
        } else {
            self.modes.iter().copied().map(Some).collect()
        };
        let mut out = serde_json::Map::new();
        for mode in passes {
            let key = mode.map_or("no_proxy", Mode::name);
            step(&format!(
                "first connection after RUNNING: {key}, {} samples",
                self.plan.first_connects
            ));
            if let Some(mode) = mode {
                self.switch_mode(mode)?;
            }
            let mut samples = Vec::new();
            for i in 0..self.plan.first_connects {
                let name = format!("fc-{}-{i}", mode.map_or("none", Mode::name));
                let port = free_port()?;
                let manifest = json!({
                    "apiVersion": "v1", "kind": "Pod", "name": name,
                    "spec": {"containers": [nginx_container(self.cluster.dir_path(), &name, port)]},
                });
                let file = write_manifest(self.cluster, &name, &manifest)?;
                let proxied = mode.map(|_| SocketAddr::new(LOOPBACK.into(), port));
                let sample = first_connect_sample(self.cluster, &name, &file, proxied)
                    .map_err(|e| with_output(self.cluster, &name, e))?;
                println!("  {:>2}: {}", i + 1, sample.line());
                samples.push(sample);
                self.cluster.delete_one_and_wait(&name)?;
            }
            out.insert(key.to_string(), first_connect_json(&samples));
        }
        Ok(Value::Object(out))
    }

    /// The sync of 1,000 services, per mode.
    fn syncs(&mut self) -> anyhow::Result<Value> {
        if self.modes.is_empty() {
            return Ok(json!({"measured": false, "reason": Route::NOT_MEASURED}));
        }
        let mut out = serde_json::Map::new();
        for mode in self.modes.clone() {
            step(&format!(
                "sync of {SYNC_SERVICES} services: {}, {} samples",
                mode.name(),
                self.plan.syncs
            ));
            self.switch_mode(mode)?;
            let mut samples = Vec::new();
            for i in 0..self.plan.syncs {
                let sample = sync_sample(self.cluster, &format!("sync-{}-{i}", mode.name()))?;
                println!("  {:>2}: {}", i + 1, sync_line(&sample));
                samples.push(sample);
            }
            out.insert(mode.name().to_string(), sync_json(&samples));
        }
        Ok(Value::Object(out))
    }

    fn report(self, machine: Value, first_connect: Value, sync: Value) -> Report {
        Report {
            machine,
            plan: self.plan,
            node_address: self
                .vias
                .iter()
                .find(|(v, _)| *v == Via::NodeAddress)
                .map(|(_, a)| *a),
            modes: self.modes,
            pod_ip: self.pod_ip,
            node_ports: self.node_ports,
            endpoints: self.endpoints,
            samples: self.samples,
            proxy_views: self.proxy_views,
            first_connect,
            sync,
        }
    }
}

pub(crate) fn write_manifest(
    cluster: &Cluster,
    name: &str,
    manifest: &Value,
) -> anyhow::Result<String> {
    // YAML parses JSON: no quoting rules of our own.
    let path = cluster.dir_path().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(manifest)?)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Writes the manifest and `rik apply`s it, with `--wait` if asked.
pub(crate) fn apply(
    cluster: &Cluster,
    name: &str,
    manifest: &Value,
    wait: bool,
) -> anyhow::Result<()> {
    let file = write_manifest(cluster, name, manifest)?;
    let mut args = vec!["apply", "-f", &file];
    if wait {
        args.extend(["--wait", "--timeout", "120s"]);
    }
    cluster.rik_ok(&args)?;
    Ok(())
}

/// `error` with the last lines of the app's output (`rik logs`).
pub(crate) fn with_output(cluster: &Cluster, app: &str, error: anyhow::Error) -> anyhow::Error {
    match cluster.rik(&["logs", app, "--prefix", "--tail", "20"]) {
        Ok(logs) => error.context(format!(
            "{app}'s output:\n{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        )),
        Err(e) => error.context(format!("(rik logs {app}: {e:#})")),
    }
}
