//! The routes of `cargo xtask bench proxy`, their samples, and the results
//! as `proxy.json` and a table.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::load::{Connections, WRK_CONNECTIONS, WRK_THREADS, Wrk, WrkRun, iperf3};
use super::{FILE_BYTES, HTTP_TARGET, IPERF_TARGET, LOOPBACK, Report};
use crate::bench::stats::{median, series};

/// The riklet's proxy modes (`--proxy MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mode {
    Ebpf,
    Nftables,
}

impl Mode {
    /// In the order the first round runs them.
    pub const ALL: [Mode; 2] = [Mode::Ebpf, Mode::Nftables];

    /// The value of `--proxy` and of `riklet proxy`'s `mode`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Nftables => "nftables",
        }
    }
}

/// Which node address a proxied route's client connects to: the paths
/// differ (from 127.0.0.1 nftables must also masquerade the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Via {
    Loopback,
    /// The address of the interface of the default route, or `--node-address`.
    NodeAddress,
}

/// How a client reaches the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Route {
    Direct,
    Proxy(Mode, Via),
    Socat,
    Haproxy,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::Direct,
        Route::Proxy(Mode::Ebpf, Via::Loopback),
        Route::Proxy(Mode::Ebpf, Via::NodeAddress),
        Route::Proxy(Mode::Nftables, Via::Loopback),
        Route::Proxy(Mode::Nftables, Via::NodeAddress),
        Route::Socat,
        Route::Haproxy,
    ];

    /// Why the proxy's figures are missing.
    pub const NOT_MEASURED: &str =
        "not yet measured: this riklet has no --proxy flag (the Node Proxy is not merged)";
    /// Why a node-address route is missing when the proxy is there.
    pub const NO_NODE_ADDRESS: &str =
        "not measured: no IPv4 address on the default route's interface (give --node-address)";

    pub fn key(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Proxy(Mode::Ebpf, Via::Loopback) => "ebpf_loopback",
            Route::Proxy(Mode::Ebpf, Via::NodeAddress) => "ebpf_node_address",
            Route::Proxy(Mode::Nftables, Via::Loopback) => "nftables_loopback",
            Route::Proxy(Mode::Nftables, Via::NodeAddress) => "nftables_node_address",
            Route::Socat => "socat",
            Route::Haproxy => "haproxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct (pod IP)",
            Route::Proxy(Mode::Ebpf, Via::Loopback) => "eBPF, 127.0.0.1",
            Route::Proxy(Mode::Ebpf, Via::NodeAddress) => "eBPF, node addr",
            Route::Proxy(Mode::Nftables, Via::Loopback) => "nftables, 127.0.0.1",
            Route::Proxy(Mode::Nftables, Via::NodeAddress) => "nftables, node addr",
            Route::Socat => "socat (fork/conn)",
            Route::Haproxy => "haproxy (TCP)",
        }
    }
}

/// One route's samples, one per round.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    keepalive: Vec<WrkRun>,
    per_request: Vec<WrkRun>,
    gbps: Vec<f64>,
}

impl Samples {
    /// One round: wrk with keep-alive, wrk with `Connection: close`, iperf3.
    pub fn run(
        &mut self,
        wrk: &Wrk,
        http: SocketAddr,
        iperf: SocketAddr,
        run: Duration,
    ) -> anyhow::Result<()> {
        let keepalive = wrk.run(http, Connections::KeepAlive, run)?;
        let per_request = wrk.run(http, Connections::PerRequest, run)?;
        let gbps = iperf3(iperf, run)?;
        self.keepalive.push(keepalive);
        self.per_request.push(per_request);
        self.gbps.push(gbps);
        Ok(())
    }

    /// The last round, for the progress output.
    pub fn last_line(&self) -> String {
        let (Some(k), Some(c), Some(g)) = (
            self.keepalive.last(),
            self.per_request.last(),
            self.gbps.last(),
        ) else {
            return String::new();
        };
        format!(
            "keep-alive {:>8.0} req/s (p50 {:.2} ms, p99 {:.2} ms) | Connection: close {:>7.0} req/s \
             (p99 {:.2} ms) | iperf3 {:>6.2} Gbit/s | errors {}",
            k.rps,
            k.p50_ms,
            k.p99_ms,
            c.rps,
            c.p99_ms,
            g,
            k.errors + c.errors
        )
    }

    fn medians(&self) -> [f64; 3] {
        [
            median(&rps(&self.keepalive)),
            median(&rps(&self.per_request)),
            median(&self.gbps),
        ]
    }
}

fn rps(runs: &[WrkRun]) -> Vec<f64> {
    runs.iter().map(|r| r.rps).collect()
}

fn wrk_json(runs: &[WrkRun]) -> Value {
    let col = |f: fn(&WrkRun) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    json!({
        "requests_per_second": series(&col(|r| r.rps)),
        "latency_p50_ms": series(&col(|r| r.p50_ms)),
        "latency_p99_ms": series(&col(|r| r.p99_ms)),
        "requests": runs.iter().map(|r| r.requests).collect::<Vec<u64>>(),
        "errors": runs.iter().map(|r| r.errors).collect::<Vec<u64>>(),
    })
}

/// `proxy.json`.
pub(crate) fn results(r: &Report) -> Value {
    let direct = r.samples.get(&Route::Direct).map(Samples::medians);
    let relays =
        [Route::Socat, Route::Haproxy].map(|k| (k, r.samples.get(&k).map(Samples::medians)));
    let mut routes = serde_json::Map::new();
    for route in Route::ALL {
        let value = match (r.samples.get(&route), r.endpoints.get(&route)) {
            (Some(s), Some((http, iperf))) => {
                let m = s.medians();
                let ratio = |i: usize, base: Option<[f64; 3]>| base.map(|b| m[i] / b[i]);
                let mut v = json!({
                    "measured": true,
                    "http_endpoint": http.to_string(),
                    "iperf3_endpoint": iperf.to_string(),
                    "keepalive": wrk_json(&s.keepalive),
                    "connection_close": wrk_json(&s.per_request),
                    "iperf3_gbit_per_second": series(&s.gbps),
                    "ratio_of_medians_to_direct": {
                        "keepalive_requests_per_second": ratio(0, direct),
                        "connection_close_requests_per_second": ratio(1, direct),
                        "iperf3": ratio(2, direct),
                    },
                });
                if matches!(route, Route::Proxy(..)) {
                    for (relay, base) in relays {
                        v["connection_close_ratio_of_medians_to"][relay.key()] =
                            json!(ratio(1, base));
                    }
                }
                v
            }
            _ => {
                let reason = match route {
                    Route::Proxy(mode, Via::NodeAddress) if r.modes.contains(&mode) => {
                        Route::NO_NODE_ADDRESS
                    }
                    _ => Route::NOT_MEASURED,
                };
                json!({"measured": false, "reason": reason})
            }
        };
        routes.insert(route.key().to_string(), value);
    }
    json!({
        "benchmark": "proxy",
        "machine": r.machine,
        "note": "medians over rounds; one round runs every route once; p99 of 5 samples is the maximum (nearest rank)",
        "settings": {
            "quick": r.plan.rounds == 1,
            "rounds": r.plan.rounds,
            "run_seconds": r.plan.run.as_secs(),
            "wrk": format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s, GET / ({FILE_BYTES} bytes)", r.plan.run.as_secs()),
            "server": "nginx-light, 1 worker, access log off, bare process in the pod's own netns",
            "iperf3": "iperf3 -s, a second container of the same pod; client: iperf3 -4 -c, 1 stream",
            "loopback": LOOPBACK.to_string(),
            "node_address": r.node_address.map(|a| a.to_string()),
            "relays_listen_on": LOOPBACK.to_string(),
            "proxy_modes": r.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        },
        "pod": {
            "ip": r.pod_ip.to_string(),
            "http": format!("{}:{HTTP_TARGET}", r.pod_ip),
            "iperf3": format!("{}:{IPERF_TARGET}", r.pod_ip),
            "node_ports": {"http": r.node_ports.0, "iperf3": r.node_ports.1},
        },
        "routes": routes,
        "riklet_proxy_views": r.proxy_views,
        "first_connection_after_running": r.first_connect,
        "sync_1000_services": r.sync,
    })
}

/// The results as a table.
pub(crate) fn table(r: &Value) -> String {
    let mut out = String::new();
    let m = &r["machine"];
    let s = &r["settings"];
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), kernel {}, {}\n{} round(s) of {} s runs; {}; node address {}",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["date"].as_str().unwrap_or("?"),
        s["rounds"],
        s["run_seconds"],
        s["wrk"].as_str().unwrap_or("?"),
        s["node_address"].as_str().unwrap_or("none"),
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:>10} {:>8} {:>8} {:>10} {:>8} {:>9}   ÷ direct (ka / close / iperf3)",
        "medians", "keep-alive", "p50 ms", "p99 ms", "conn:close", "p99 ms", "iperf3",
    );
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>8} {:>8} {:>10} {:>8} {:>9}",
        "", "req/s", "", "", "req/s", "", "Gbit/s"
    );
    for route in Route::ALL {
        let v = &r["routes"][route.key()];
        if v["measured"] != true {
            let _ = writeln!(
                out,
                "{:<20} {}",
                route.label(),
                v["reason"].as_str().unwrap_or("not measured")
            );
            continue;
        }
        let f = |p: &[&str]| p.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "{:<20} {:>10.0} {:>8.2} {:>8.2} {:>10.0} {:>8.2} {:>9.2}   {:.2} / {:.2} / {:.2}",
            route.label(),
            f(&["keepalive", "requests_per_second", "median"]),
            f(&["keepalive", "latency_p50_ms", "median"]),
            f(&["keepalive", "latency_p99_ms", "median"]),
            f(&["connection_close", "requests_per_second", "median"]),
            f(&["connection_close", "latency_p99_ms", "median"]),
            f(&["iperf3_gbit_per_second", "median"]),
            f(&[
                "ratio_of_medians_to_direct",
                "keepalive_requests_per_second"
            ]),
            f(&[
                "ratio_of_medians_to_direct",
                "connection_close_requests_per_second"
            ]),
            f(&["ratio_of_medians_to_direct", "iperf3"]),
        );
    }
    out.push_str(&super::probe::table(
        &r["first_connection_after_running"],
        &r["sync_1000_services"],
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::proxy::Plan;

    fn samples(rps: f64, gbps: f64) -> Samples {
        let run = WrkRun {
            rps,
            p50_ms: 0.1,
            p99_ms: 0.5,
            requests: rps as u64,
            errors: 0,
        };
        Samples {
            keepalive: vec![run.clone()],
            per_request: vec![WrkRun {
                rps: rps / 4.0,
                ..run
            }],
            gbps: vec![gbps],
        }
    }

    /// Direct and socat measured; `modes` and `node_address` as given, the
    /// proxy routes measured where both allow it.
    fn report(modes: Vec<Mode>, node_address: Option<Ipv4Addr>) -> Report {
        let ep = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut endpoints = BTreeMap::from([
            (Route::Direct, (ep(1), ep(2))),
            (Route::Socat, (ep(3), ep(4))),
        ]);
        let mut measured = BTreeMap::from([
            (Route::Direct, samples(1000.0, 10.0)),
            (Route::Socat, samples(250.0, 2.0)),
        ]);
        for mode in &modes {
            let mut vias = vec![Via::Loopback];
            vias.extend(node_address.map(|_| Via::NodeAddress));
            for via in vias {
                endpoints.insert(Route::Proxy(*mode, via), (ep(5), ep(6)));
                measured.insert(Route::Proxy(*mode, via), samples(900.0, 9.0));
            }
        }
        Report {
            machine: json!({}),
            plan: Plan::new(true),
            node_address,
            modes,
            pod_ip: Ipv4Addr::new(10, 217, 0, 2),
            node_ports: (30080, 30081),
            endpoints,
            samples: measured,
            proxy_views: BTreeMap::new(),
            first_connect: json!({}),
            sync: json!({"measured": false, "reason": Route::NOT_MEASURED}),
        }
    }

    #[test]
    fn without_the_proxy_its_routes_say_why() {
        let r = results(&report(Vec::new(), Some(Ipv4Addr::new(192, 0, 2, 2))));
        for key in ["ebpf_loopback", "ebpf_node_address", "nftables_loopback"] {
            assert_eq!(r["routes"][key]["measured"], false, "{key}");
            assert_eq!(r["routes"][key]["reason"], Route::NOT_MEASURED, "{key}");
        }
        assert_eq!(r["routes"]["direct"]["measured"], true);
        assert_eq!(r["routes"]["haproxy"]["measured"], false);
        let text = table(&r);
        assert!(text.contains("not yet measured"), "{text}");
    }

    #[test]
    fn proxy_routes_get_ratios_to_direct_and_to_the_relays() {
        let r = results(&report(vec![Mode::Ebpf], None));
        let ebpf = &r["routes"]["ebpf_loopback"];
        assert_eq!(ebpf["measured"], true);
        assert_eq!(
            ebpf["ratio_of_medians_to_direct"]["keepalive_requests_per_second"],
            0.9
        );
        assert_eq!(ebpf["ratio_of_medians_to_direct"]["iperf3"], 0.9);
        assert_eq!(ebpf["connection_close_ratio_of_medians_to"]["socat"], 3.6);
        assert_eq!(
            ebpf["connection_close_ratio_of_medians_to"]["haproxy"],
            Value::Null
        );
        let missing = &r["routes"]["ebpf_node_address"];
        assert_eq!(missing["reason"], Route::NO_NODE_ADDRESS);
        assert_eq!(
            r["routes"]["nftables_loopback"]["reason"],
            Route::NOT_MEASURED
        );
    }
}
