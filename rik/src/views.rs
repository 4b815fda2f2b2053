//! What `rik` shows of the scheduler's answers: table rows and seed 004's
//! JSON objects, built from `rik.v1` messages without any I/O.
//!
//! The riklet's JSON (`Instance.metrics`, `Node.metrics`) is read with the
//! types of [`proto::status`], leniently (a report of another riklet may
//! lack keys or have others):
//! - instance: an [`AppStatus`], seed 004's realtime app object extended by
//!   the riklet; `reason` (or RIK's `message`) explains a failure. `-o
//!   json` shows seed 004's object completed from what the scheduler knows,
//!   then every other key of the report as it came.
//! - node: a [`NodeMetrics`]: `realtime` (seed 004's realtime node object,
//!   `cpu.currentUsage` and `memory.currentUsage` in percent), RIK's own
//!   heartbeat shape (`cpu.{total,free}`, `memory.{total,free}`) as a
//!   fallback, and `resources` (seed 004's node resources object), shown by
//!   `-o json` as it came.

use std::collections::BTreeSet;

use proto::manifest::{self, AppManifest, Deployment};
use proto::rik::v1::{App, Instance, Node};
use proto::status::{self, AppStatus, NodeMetrics, RealtimeApp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::output::{Json, age};

/// Key order of seed 004's realtime app object ([`RealtimeApp`]).
const REALTIME_APP_KEYS: &[&str] = &[
    "appId",
    "state",
    "createdAt",
    "restartCount",
    "internalIp",
    "runsOn",
    "deployment",
];

/// Key order of seed 004's node resources object, then our additions
/// ([`NodeView`]).
const NODE_KEYS: &[&str] = &[
    "id",
    "cpu",
    "memory",
    "disksize",
    "distrib",
    "version",
    "type",
    "arch",
    "kernelVersion",
    "networking",
    "ready",
    "lastSeen",
    "pods",
    "realtime",
];

/// Shown in a wide column that has nothing to show.
const NONE: &str = "<none>";

/// A metrics JSON string as an object; anything else (empty, invalid, not
/// an object) as an empty one.
fn metrics_object(metrics: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(metrics) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The app's manifest, if its definition parses.
pub fn manifest_of(app: &App) -> Option<AppManifest> {
    manifest::parse_definition(&app.definition).ok()
}

/// Seed 004's realtime app object of one instance: the riklet's report,
/// completed from what the scheduler knows, `state` always the scheduler's;
/// then the report's other keys as they came.
pub fn realtime_app(
    app: &App,
    manifest: Option<&AppManifest>,
    inst: &Instance,
) -> Map<String, Value> {
    let reported = AppStatus::from_json(&inst.metrics).realtime;
    let deployment = manifest.map_or_else(
        || Deployment {
            app: app.name.clone(),
            ..Deployment::default()
        },
        AppManifest::deployment,
    );
    let known = RealtimeApp {
        app_id: if reported.app_id.is_empty() {
            inst.instance_id.clone()
        } else {
            reported.app_id
        },
        state: status::from_name(&inst.status),
        created_at: reported.created_at.or(Some(app.created_at)),
        restart_count: reported.restart_count,
        internal_ip: reported.internal_ip,
        runs_on: reported
            .runs_on
            .or_else(|| (!inst.node.is_empty()).then(|| inst.node.clone())),
        deployment: reported.deployment.or(Some(deployment)),
    };
    let mut obj = object(&known);
    for (key, value) in metrics_object(&inst.metrics) {
        obj.entry(key).or_insert(value);
    }
    obj
}

/// A struct as a JSON object.
fn object<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// [`realtime_app`] with seed 004's key order.
pub fn realtime_app_json(app: &App, manifest: Option<&AppManifest>, inst: &Instance) -> Json {
    Json::ordered(realtime_app(app, manifest, inst), REALTIME_APP_KEYS)
}

/// One app of `rik get apps -o json`.
pub fn app_json(app: &App) -> Json {
    let manifest = manifest_of(app);
    Json::Object(vec![
        ("name".into(), Json::Plain(Value::from(app.name.as_str()))),
        ("status".into(), Json::Plain(Value::from(app_status(app)))),
        ("replicas".into(), Json::Plain(Value::from(app.replicas))),
        ("createdAt".into(), Json::Plain(Value::from(app.created_at))),
        (
            "instances".into(),
            Json::Array(
                app.instances
                    .iter()
                    .map(|i| realtime_app_json(app, manifest.as_ref(), i))
                    .collect(),
            ),
        ),
    ])
}

/// `rik get app NAME -o json`: the object of the only instance, or an array.
pub fn app_instances_json(app: &App) -> Json {
    let manifest = manifest_of(app);
    let mut items: Vec<Json> = app
        .instances
        .iter()
        .map(|i| realtime_app_json(app, manifest.as_ref(), i))
        .collect();
    if items.len() == 1 {
        items.remove(0)
    } else {
        Json::Array(items)
    }
}

fn app_status(app: &App) -> &str {
    if app.status.is_empty() {
        "UNKNOWN"
    } else {
        &app.status
    }
}

/// Headers of the apps table.
pub fn app_headers(wide: bool) -> &'static [&'static str] {
    if wide {
        &[
            "NAME", "STATUS", "AGE", "NODE", "IP", "RESTARTS", "CPU", "MEMORY", "PORTS",
        ]
    } else {
        &["NAME", "STATUS", "AGE"]
    }
}

/// A row of the apps table, `now` in Unix seconds.
pub fn app_row(app: &App, wide: bool, now: i64) -> Vec<String> {
    let mut row = vec![
        app.name.clone(),
        crate::describe::app_status(app),
        age(app.created_at, now),
    ];
    if wide {
        let statuses: Vec<AppStatus> = app
            .instances
            .iter()
            .map(|i| AppStatus::from_json(&i.metrics))
            .collect();
        let nodes = unique(app.instances.iter().map(|i| i.node.clone()));
        let ips = unique(
            statuses
                .iter()
                .filter_map(|s| s.realtime.internal_ip.clone()),
        );
        let restarts: u64 = statuses
            .iter()
            .map(|s| u64::from(s.realtime.restart_count))
            .sum();
        row.push(or_none(nodes.join(",")));
        row.push(or_none(ips.join(",")));
        row.push(restarts.to_string());
        // Sums over the instances, as last reported by their riklets.
        let sum = |figure: fn(&AppStatus) -> Option<f64>| -> Option<f64> {
            let values: Vec<f64> = statuses.iter().filter_map(figure).collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        let cores = sum(|s| s.cpu?.usage_cores);
        let working_set = sum(|s| Some(s.memory?.working_set_bytes? as f64));
        row.push(cores.map_or_else(|| NONE.to_string(), |c| format!("{c:.3}")));
        row.push(working_set.map_or_else(
            || NONE.to_string(),
            |b| format!("{:.1}Mi", b / (1u64 << 20) as f64),
        ));
        row.push(or_none(
            manifest_of(app)
                .map(|m| ports_column(&m))
                .unwrap_or_default(),
        ));
    }
    row
}

/// The non-empty values, first occurrence order, without repeats.
fn unique(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    values
        .filter(|v| !v.is_empty() && seen.insert(v.clone()))
        .collect()
}

fn or_none(s: String) -> String {
    if s.is_empty() { NONE.to_string() } else { s }
}

/// The PORTS column: every container port as `port→target_port/PROTOCOL`
/// (the node's port, then the pod's), joined by `,`; empty when nothing is
/// exposed.
pub fn ports_column(manifest: &AppManifest) -> String {
    manifest
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .map(|p| format!("{}→{}/{}", p.port, p.target_port, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why an instance failed: the `reason` of its status, or the `message`
/// RIK's riklet gives.
pub fn failure_reason(inst: &Instance) -> Option<String> {
    /// Where RIK's riklet explains a failure.
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct RikMessage {
        message: Option<String>,
    }
    let rik: RikMessage = serde_json::from_str(&inst.metrics).unwrap_or_default();
    [AppStatus::from_json(&inst.metrics).reason, rik.message]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
}

/// `instance-id on node` (or just the id when not placed).
pub fn instance_label(inst: &Instance) -> String {
    if inst.node.is_empty() {
        inst.instance_id.clone()
    } else {
        format!("{} on {}", inst.instance_id, inst.node)
    }
}

/// CPU usage of a node in percent: `realtime.cpu.currentUsage`, else from
/// RIK's heartbeat shape (`cpu.free`: idle percent).
pub fn node_cpu_usage(metrics: &NodeMetrics) -> Option<f64> {
    let realtime = metrics.realtime.as_ref().and_then(|r| r.cpu);
    match realtime {
        Some(cpu) => Some(cpu.current_usage),
        None => Some((100.0 - metrics.cpu?.free).clamp(0.0, 100.0)),
    }
}

/// Memory usage of a node in percent: `realtime.memory.currentUsage`, else
/// from RIK's heartbeat shape (`memory.{total,free}` in bytes).
pub fn node_memory_usage(metrics: &NodeMetrics) -> Option<f64> {
    let realtime = metrics.realtime.as_ref().and_then(|r| r.memory);
    if let Some(memory) = realtime {
        return Some(memory.current_usage);
    }
    let memory = metrics.memory?;
    let (total, free) = (memory.total as f64, memory.free as f64);
    (total > 0.0).then(|| ((total - free) / total * 100.0).clamp(0.0, 100.0))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |p| format!("{}%", p.round()))
}

/// Headers of the nodes table.
pub fn node_headers(wide: bool) -> &'static [&'static str] {
    if wide {
        &[
            "NAME",
            "STATUS",
            "CPU",
            "MEMORY",
            "PODS",
            "LAST-SEEN",
            "ADDRESS",
            "KERNEL",
        ]
    } else {
        &["NAME", "STATUS", "CPU", "MEMORY", "PODS", "LAST-SEEN"]
    }
}

/// A row of the nodes table, `now` in Unix seconds.
pub fn node_row(node: &Node, wide: bool, now: i64) -> Vec<String> {
    let metrics = NodeMetrics::from_json(&node.metrics);
    let mut row = vec![
        node.name.clone(),
        if node.ready { "Ready" } else { "NotReady" }.to_string(),
        percent(node_cpu_usage(&metrics)),
        percent(node_memory_usage(&metrics)),
        node.instances.to_string(),
        age(node.last_seen, now),
    ];
    if wide {
        let kernel = metrics
            .resources
            .map(|r| r.kernel_version)
            .unwrap_or_default();
        row.push(or_none(node.host_address.clone()));
        row.push(or_none(kernel));
    }
    row
}

/// One node of `rik get nodes -o json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    /// Seed 004's node resources object as the riklet sent it, with `id`
    /// the node name when it sent none.
    #[serde(flatten)]
    resources: Map<String, Value>,
    ready: bool,
    /// Unix seconds.
    last_seen: i64,
    pods: u32,
    /// Seed 004's realtime node object as the riklet sent it, or null.
    realtime: Value,
}

/// One node of `rik get nodes -o json`: seed 004's node resources object
/// (`{"id": name}` when the riklet sent none) plus `ready`, `lastSeen`,
/// `pods` and `realtime` (seed 004's realtime node object, or null).
pub fn node_json(node: &Node) -> Json {
    let mut metrics = metrics_object(&node.metrics);
    let mut resources = match metrics.remove("resources") {
        Some(Value::Object(r)) => r,
        _ => Map::new(),
    };
    let id = resources.entry("id").or_insert(Value::Null);
    if id.is_null() {
        *id = Value::from(node.name.as_str());
    }
    let view = NodeView {
        resources,
        ready: node.ready,
        last_seen: node.last_seen,
        pods: node.instances,
        realtime: metrics.remove("realtime").unwrap_or(Value::Null),
    };
    Json::ordered(object(&view), NODE_KEYS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DEF: &str = r#"{"apiVersion":"v1","kind":"Pod","name":"web","replicas":2,"spec":{"containers":[{"name":"nginx","image":"docker.io/library/nginx:1.19.1","ports":[{"port":80,"target_port":8080,"protocol":"TCP"},{"port":53,"protocol":"udp"}]}]}}"#;

    fn app(instances: Vec<Instance>) -> App {
        App {
            name: "web".into(),
            replicas: 2,
            definition: DEF.into(),
            created_at: 1_000,
            instances,
            status: "RUNNING".into(),
            events: Vec::new(),
            deleting: false,
        }
    }

    fn inst(id: &str, node: &str, status: &str, metrics: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            node: node.into(),
            status: status.into(),
            metrics: metrics.into(),
            updated_at: 0,
        }
    }

    fn value(j: &Json) -> Value {
        serde_json::to_value(j).unwrap()
    }

    #[test]
    fn synthesizes_realtime_app_without_metrics() {
        let a = app(vec![inst("web-1", "node-a", "CREATING", "")]);
        let m = manifest_of(&a);
        let got = value(&realtime_app_json(&a, m.as_ref(), &a.instances[0]));
        assert_eq!(
            got,
            json!({
                "appId": "web-1",
                "state": "CREATING",
                "createdAt": 1000,
                "restartCount": 0,
                "internalIp": null,
                "runsOn": "node-a",
                "deployment": {
                    "app": "web",
                    "repository": "docker.io/library/nginx",
                    "version": "1.19.1"
                }
            })
        );
        // Seed 004's key order.
        let text =
            serde_json::to_string(&realtime_app_json(&a, m.as_ref(), &a.instances[0])).unwrap();
        assert!(text.starts_with(r#"{"appId":"web-1","state":"CREATING","createdAt":1000"#));
    }

    #[test]
    fn riklet_report_wins_except_for_state() {
        let metrics = r#"{"appId":"web-1","state":"RUNNING","createdAt":1234,"restartCount":3,
            "internalIp":"10.0.0.5","runsOn":"node-a","cpu":{"usage":1.5},
            "deployment":{"app":"web","repository":"r","version":"v"}}"#;
        let a = app(vec![inst("web-1", "node-a", "FAILED", metrics)]);
        let got = realtime_app(&a, None, &a.instances[0]);
        assert_eq!(got["state"], "FAILED");
        assert_eq!(got["createdAt"], 1234);
        assert_eq!(got["restartCount"], 3);
        assert_eq!(got["internalIp"], "10.0.0.5");
        assert_eq!(got["cpu"]["usage"], 1.5);
        assert_eq!(got["deployment"]["repository"], "r");
        // Partial or null fields are completed; unplaced instances run nowhere.
        let a = app(vec![inst("web-2", "", "PENDING", r#"{"internalIp":null}"#)]);
        let got = realtime_app(&a, None, &a.instances[0]);
        assert_eq!(got["appId"], "web-2");
        assert_eq!(got["runsOn"], Value::Null);
        assert_eq!(
            got["deployment"],
            json!({"app":"web","repository":"","version":""})
        );
        // Garbage metrics count as none.
        let a = app(vec![inst("web-3", "n", "RUNNING", "not json")]);
        assert_eq!(realtime_app(&a, None, &a.instances[0])["appId"], "web-3");
    }

    #[test]
    fn get_app_json_is_an_object_for_one_instance() {
        let one = app(vec![inst("web-1", "n", "RUNNING", "")]);
        assert!(value(&app_instances_json(&one)).is_object());
        let two = app(vec![
            inst("web-1", "n", "RUNNING", ""),
            inst("web-2", "n", "RUNNING", ""),
        ]);
        assert_eq!(
            value(&app_instances_json(&two)).as_array().unwrap().len(),
            2
        );
        assert_eq!(value(&app_instances_json(&app(vec![]))), json!([]));
        let listed = value(&app_json(&two));
        assert_eq!(listed["name"], "web");
        assert_eq!(listed["replicas"], 2);
        assert_eq!(listed["createdAt"], 1000);
        assert_eq!(listed["instances"][1]["appId"], "web-2");
    }

    #[test]
    fn ports_column_lists_every_port() {
        let m = manifest_of(&app(vec![])).unwrap();
        assert_eq!(ports_column(&m), "80→8080/TCP,53→53/UDP");
        let bare =
            manifest::parse("kind: Pod\nname: a\nspec: {containers: [{name: c, exec: /bin/true}]}")
                .unwrap();
        assert_eq!(ports_column(&bare), "");
    }

    #[test]
    fn app_rows() {
        let a = app(vec![
            inst(
                "web-1",
                "node-a",
                "RUNNING",
                r#"{"internalIp":"10.0.0.2","restartCount":2}"#,
            ),
            inst(
                "web-2",
                "node-b",
                "RUNNING",
                r#"{"internalIp":"10.0.0.3","restartCount":1,"cpu":{"usageCores":0.25},"memory":{"workingSetBytes":3145728}}"#,
            ),
            inst("web-3", "node-a", "PENDING", ""),
        ]);
        // The most telling instance STATUS (kubectl's): one runs.
        assert_eq!(app_row(&a, false, 1_045), ["web", "Running", "45s"]);
        assert_eq!(
            app_row(&a, true, 1_045),
            [
                "web",
                "Running",
                "45s",
                "node-a,node-b",
                "10.0.0.2,10.0.0.3",
                "3",
                "0.250",
                "3.0Mi",
                "80→8080/TCP,53→53/UDP"
            ]
        );
        let mut empty = app(vec![]);
        empty.definition = String::new();
        empty.status = String::new();
        assert_eq!(
            app_row(&empty, true, 1_045),
            ["web", "UNKNOWN", "45s", NONE, NONE, "0", NONE, NONE, NONE]
        );
    }

    #[test]
    fn failure_reasons() {
        let i = inst("a", "n", "FAILED", r#"{"reason":"exec format error"}"#);
        assert_eq!(failure_reason(&i).as_deref(), Some("exec format error"));
        let i = inst(
            "a",
            "n",
            "FAILED",
            r#"{"reason":"","message":"image not found"}"#,
        );
        assert_eq!(failure_reason(&i).as_deref(), Some("image not found"));
        assert_eq!(failure_reason(&inst("a", "n", "FAILED", "")), None);
        assert_eq!(instance_label(&i), "a on n");
        assert_eq!(instance_label(&inst("a", "", "PENDING", "")), "a");
    }

    fn node(metrics: &str) -> Node {
        Node {
            name: "node-a".into(),
            ready: true,
            metrics: metrics.into(),
            last_seen: 990,
            host_address: "127.0.0.1:5000".into(),
            instances: 3,
        }
    }

    #[test]
    fn node_rows() {
        let n = node(
            r#"{"resources":{"id":"node-a","kernelVersion":"6.1.0"},
                "realtime":{"cpu":{"totalCpu":4,"currentUsage":20.4},"memory":{"currentUsage":50}}}"#,
        );
        assert_eq!(
            node_row(&n, false, 1_000),
            ["node-a", "Ready", "20%", "50%", "3", "10s"]
        );
        assert_eq!(node_row(&n, true, 1_000)[6..], ["127.0.0.1:5000", "6.1.0"]);
        let mut bare = node("");
        bare.ready = false;
        assert_eq!(
            node_row(&bare, false, 1_000),
            ["node-a", "NotReady", "-", "-", "3", "10s"]
        );
        // RIK's own heartbeat shape.
        let rik = node(
            r#"{"cpu":{"total":8,"free":75.0},"memory":{"total":1000,"free":250},"disks":[]}"#,
        );
        assert_eq!(node_row(&rik, false, 1_000)[2..4], ["25%", "75%"]);
    }

    #[test]
    fn node_json_objects() {
        let n = node(
            r#"{"resources":{"id":"node-a","cpu":4,"arch":"amd64"},"realtime":{"id":"node-a","state":"RUNNING"}}"#,
        );
        let j = node_json(&n);
        assert_eq!(
            value(&j),
            json!({"id":"node-a","cpu":4,"arch":"amd64","ready":true,"lastSeen":990,"pods":3,
                   "realtime":{"id":"node-a","state":"RUNNING"}})
        );
        assert!(
            serde_json::to_string(&j)
                .unwrap()
                .starts_with(r#"{"id":"node-a","cpu":4,"arch""#)
        );
        assert_eq!(
            value(&node_json(&node(""))),
            json!({"id":"node-a","ready":true,"lastSeen":990,"pods":3,"realtime":null})
        );
    }

    #[test]
    fn key_orders_name_the_contract_keys() {
        let mut seed = REALTIME_APP_KEYS.to_vec();
        seed.sort_unstable();
        let typed = object(&RealtimeApp::default());
        assert_eq!(seed, typed.keys().map(String::as_str).collect::<Vec<_>>());
        let resources = object(&proto::status::NodeResources::default());
        for key in resources.keys() {
            assert!(NODE_KEYS.contains(&key.as_str()), "{key} has no place");
        }
    }

    #[test]
    fn a_full_riklet_status_shows_as_sent() {
        let sent = r#"{"app":"web","appId":"web-1","containers":[],"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageCores":0.5,"usageSeconds":2.5},"createdAt":1699999999,"deployment":{"app":"web","repository":"/bin/sleep","version":""},"events":[],"hostNetwork":false,"internalIp":"10.1.0.2","memory":null,"network":null,"reason":null,"restartCount":3,"runqueue":null,"runsOn":"node-a","state":"RUNNING"}"#;
        let a = app(vec![inst("web-1", "node-a", "RUNNING", sent)]);
        let got = realtime_app(&a, None, &a.instances[0]);
        assert_eq!(
            Value::Object(got),
            serde_json::from_str::<Value>(sent).unwrap()
        );
    }
}
