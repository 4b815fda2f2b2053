//! The Prometheus endpoint of `riklet::metrics::exporter`, checked by the
//! real tools: `promtool check metrics` lints what it serves, and a real
//! `prometheus` scrapes it every second and answers queries about it.
//!
//! Needs no root. Needs Debian's `prometheus` package (`promtool` and
//! `prometheus` on `PATH`); a missing one fails the test saying so. Only
//! 127.0.0.1 is used.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use riklet::metrics::exporter::{
    self, OPENMETRICS_CONTENT_TYPE, SnapshotHandle, TEXT_CONTENT_TYPE,
};
use riklet::metrics::sample::{Log2Histogram, NodeSample, PodNetSample, PodSample, Snapshot};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const MISSING_PROMETHEUS: &str = "install Debian's prometheus package (cargo xtask setup)";
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
/// The `Accept` header Prometheus 2.x sends when scraping.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_is_valid_follows_the_snapshot_and_feeds_prometheus() {
    let promtool = tool("promtool");
    let prometheus = tool("prometheus");

    let handle = SnapshotHandle::new();
    handle.publish(snapshot(&["web-1", "web-2"]));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(exporter::serve(
        listener,
        exporter::registry(handle.clone()),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let health = get(addr, "/healthz", None).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body, "ok");

    // Plain GET (curl, promtool): the Prometheus text format, lint-clean.
    let text = get(addr, "/metrics", None).await;
    assert_eq!(text.status, 200, "{text:?}");
    assert_eq!(text.header("content-type"), Some(TEXT_CONTENT_TYPE));
    promtool_check(&promtool, &text.body);
    for instance in ["web-1", "web-2"] {
        let series = format!(
            "riklet_pod_memory_usage_bytes{{app=\"web\",instance=\"{instance}\",container=\"main\",node=\"node-a\"}} 4096\n"
        );
        assert!(
            text.body.contains(&series),
            "no {series} in:\n{}",
            text.body
        );
    }
    for name in [
        "riklet_pod_cpu_seconds_total",
        "riklet_pod_cpu_throttled_seconds_total",
        "riklet_pod_memory_working_set_bytes",
        "riklet_pod_memory_limit_bytes",
        "riklet_pod_memory_failcnt_total",
        "riklet_pod_oom_kills_total",
        "riklet_pod_pids",
        "riklet_pod_network_receive_bytes_total",
        "riklet_pod_network_transmit_bytes_total",
        "riklet_pod_network_receive_packets_total",
        "riklet_pod_network_transmit_packets_total",
        "riklet_pod_oncpu_seconds_total",
        "riklet_pod_runqueue_latency_seconds_bucket",
        "riklet_node_cpu_seconds_total",
        "riklet_node_memory_total_bytes",
        "riklet_node_memory_available_bytes",
        "riklet_node_load1",
        "riklet_node_network_receive_bytes_total",
        "riklet_node_network_transmit_bytes_total",
    ] {
        assert!(
            text.body.contains(&format!("\n{name}{{")),
            "no {name} in:\n{}",
            text.body
        );
    }

    // What Prometheus asks for: OpenMetrics.
    let om = get(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(om.status, 200, "{om:?}");
    assert_eq!(om.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(
        om.body.contains("# TYPE riklet_pod_cpu_seconds counter\n"),
        "{}",
        om.body
    );

    // A pod gone from the snapshot is gone from the next scrape.
    handle.publish(snapshot(&["web-1"]));
    let after = get(addr, "/metrics", None).await;
    promtool_check(&promtool, &after.body);
    assert!(after.body.contains("instance=\"web-1\""), "{}", after.body);
    assert!(
        !after.body.contains("web-2"),
        "web-2 still exported:\n{}",
        after.body
    );

    // A real Prometheus scraping every second sees both pods, then sees
    // web-2 go stale as soon as it leaves the snapshot.
    handle.publish(snapshot(&["web-1", "web-2"]));
    let prom = PrometheusGuard::start(&prometheus, addr);
    let series = prom
        .wait_for("riklet_pod_memory_usage_bytes", |series| {
            instances(series) == ["web-1", "web-2"]
        })
        .await;
    for s in &series {
        let labels = &s["metric"];
        // `instance` is also Prometheus' target label: the pod's is kept as
        // `exported_instance`.
        assert_eq!(labels["instance"], addr.to_string(), "{s}");
        assert_eq!(labels["app"], "web", "{s}");
        assert_eq!(labels["container"], "main", "{s}");
        assert_eq!(labels["node"], "node-a", "{s}");
        assert_eq!(s["value"][1], "4096", "{s}");
    }
    // The histogram and the counters went through the OpenMetrics parser.
    let p50 = prom
        .wait_for(
            "histogram_quantile(0.5, riklet_pod_runqueue_latency_seconds_bucket)",
            |series| series.len() == 2,
        )
        .await;
    let median: f64 = p50[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("median: {}", p50[0]));
    // Observations 100 ns, 5 µs ×2, 3 ms, 5 s: the median is in (4.096 µs, 8.192 µs].
    assert!((4.096e-6..=8.192e-6).contains(&median), "median {median}");
    prom.wait_for("riklet_node_cpu_seconds_total", |series| series.len() == 1)
        .await;

    handle.publish(snapshot(&["web-1"]));
    prom.wait_for("riklet_pod_memory_usage_bytes", |series| {
        instances(series) == ["web-1"]
    })
    .await;

    drop(prom);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the endpoint stops on shutdown")
        .expect("server task")
        .expect("serve");
}

/// A snapshot of node `node-a` with one container per instance.
fn snapshot(instances: &[&str]) -> Snapshot {
    let mut runq = Log2Histogram::default();
    for ns in [100, 5_000, 5_000, 3_000_000, 5_000_000_000] {
        runq.observe(ns);
    }
    Snapshot {
        node: NodeSample {
            node: "node-a".into(),
            cpu_seconds_total: Some(1234.5),
            cpus: 4,
            memory_total_bytes: Some(8 << 30),
            memory_available_bytes: Some(6 << 30),
            load1: Some(0.25),
            rx_bytes: Some(1_000_000),
            tx_bytes: Some(500_000),
        },
        pods: instances
            .iter()
            .map(|instance| PodSample {
                cpu_seconds: Some(1.5),
                cpu_throttled_seconds: Some(0.25),
                cpu_periods: Some(100),
                cpu_throttled_periods: Some(3),
                memory_usage_bytes: Some(4096),
                memory_working_set_bytes: Some(2048),
                memory_limit_bytes: Some(64 << 20),
                memory_failcnt: Some(0),
                oom_kills: Some(0),
                pids: Some(2),
                rx_bytes: Some(10_000),
                tx_bytes: Some(20_000),
                rx_packets: Some(10),
                tx_packets: Some(20),
                oncpu_seconds: Some(1.4),
                runq_latency: Some(runq.clone()),
                ..PodSample::new("web", instance, "main", "node-a")
            })
            .collect(),
        pod_nets: instances
            .iter()
            .map(|instance| PodNetSample {
                app: "web".into(),
                instance: instance.to_string(),
                node: "node-a".into(),
                tcp_retransmits: 3,
            })
            .collect(),
        collected_at: 1_700_000_000_000,
        timings: Default::default(),
    }
}

/// The pods' instance ids in a query result, sorted.
fn instances(series: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = series
        .iter()
        .filter_map(|s| s["metric"]["exported_instance"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// `name` on `PATH`, or a failed test saying how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found on PATH: {MISSING_PROMETHEUS}"))
}

/// Runs `promtool check metrics` on `body` and requires a clean result.
fn promtool_check(promtool: &Path, body: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}: {MISSING_PROMETHEUS}", promtool.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- body ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.0 GET (the server closes the connection after the answer and
/// sends no chunked body).
async fn try_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {raw:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let response = Response {
        status,
        headers,
        body: body.to_string(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        return Err(std::io::Error::other(
            "unexpected chunked answer to HTTP/1.0",
        ));
    }
    Ok(response)
}

async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    try_get(addr, path, accept)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// A `prometheus` server scraping the endpoint every second, with its
/// storage in a temp dir; killed on drop.
struct PrometheusGuard {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PrometheusGuard {
    fn start(prometheus: &Path, target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: riklet\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e}: {MISSING_PROMETHEUS}",
                    prometheus.display()
                )
            });
        PrometheusGuard { child, addr, dir }
    }

    /// Queries `query` until `done` accepts the result vector; fails after
    /// [`PROMETHEUS_TIMEOUT`] with the last answer and Prometheus' log.
    async fn wait_for(&self, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let last = match try_get(self.addr, &path, None).await {
                Ok(r) if r.status == 200 => {
                    let answer: Value = serde_json::from_str(&r.body)
                        .unwrap_or_else(|e| panic!("query {query}: {e}: {}", r.body));
                    if let Some(series) = answer["data"]["result"].as_array()
                        && done(series)
                    {
                        return series.clone();
                    }
                    r.body
                }
                Ok(r) => format!("{r:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("prometheus.log"))
                    .unwrap_or_default();
                panic!(
                    "prometheus at {}: no expected answer to {query} within {PROMETHEUS_TIMEOUT:?}; last: {last}\n--- prometheus log ---\n{log}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for PrometheusGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// Percent-encodes a query parameter value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
