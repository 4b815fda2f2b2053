//! What `rik` shows of the scheduler's answers: table rows and seed 004's
//! JSON objects, built from `rik.v1` messages without any I/O.
//!
//! Fields read from the riklet's JSON (`Instance.metrics`, `Node.metrics`):
//! - instance (seed 004's realtime app object): `appId`, `state`,
//!   `createdAt`, `restartCount`, `internalIp`, `runsOn`, `deployment`, and
//!   `reason` / `message` to explain a failure; other fields pass through.
//! - node: `resources` (seed 004's node resources object) and `realtime`
//!   (seed 004's realtime node object, `cpu.currentUsage` and
//!   `memory.currentUsage` in percent); RIK's own heartbeat shape
//!   (`cpu.{total,free}`, `memory.{total,free}`) as a fallback.

use std::collections::BTreeSet;

use proto::manifest::{self, AppManifest, Deployment, Protocol};
use proto::rik::v1::{App, Instance, Node};
use serde_json::{Map, Value, json};

use crate::output::{Json, age};

/// Key order of seed 004's realtime app object.
const REALTIME_APP_KEYS: &[&str] = &[
    "appId",
    "state",
    "createdAt",
    "restartCount",
    "internalIp",
    "runsOn",
    "deployment",
];

/// Key order of seed 004's node resources object, then our additions.
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
pub fn metrics_object(metrics: &str) -> Map<String, Value> {
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
/// completed from what the scheduler knows, `state` always the scheduler's.
pub fn realtime_app(
    app: &App,
    manifest: Option<&AppManifest>,
    inst: &Instance,
) -> Map<String, Value> {
    let mut obj = metrics_object(&inst.metrics);
    let deployment = manifest.map_or_else(
        || Deployment {
            app: app.name.clone(),
            ..Deployment::default()
        },
        AppManifest::deployment,
    );
    let defaults = [
        ("appId", json!(inst.instance_id)),
        ("createdAt", json!(app.created_at)),
        ("restartCount", json!(0)),
        ("internalIp", Value::Null),
        (
            "runsOn",
            if inst.node.is_empty() {
                Value::Null
            } else {
                json!(inst.node)
            },
        ),
        (
            "deployment",
            serde_json::to_value(deployment).expect("deployment serializes"),
        ),
    ];
    for (key, default) in defaults {
        let slot = obj.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = default;
        }
    }
    obj.insert("state".into(), json!(inst.status));
    obj
}

/// [`realtime_app`] with seed 004's key order.
pub fn realtime_app_json(app: &App, manifest: Option<&AppManifest>, inst: &Instance) -> Json {
    Json::ordered(realtime_app(app, manifest, inst), REALTIME_APP_KEYS)
}

/// One app of `rik get apps -o json`.
pub fn app_json(app: &App) -> Json {
    let manifest = manifest_of(app);
    Json::Object(vec![
        ("name".into(), Json::Plain(json!(app.name))),
        ("status".into(), Json::Plain(json!(app_status(app)))),
        ("replicas".into(), Json::Plain(json!(app.replicas))),
        ("createdAt".into(), Json::Plain(json!(app.created_at))),
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
        app_status(app).to_string(),
        age(app.created_at, now),
    ];
    if wide {
        let metrics: Vec<Map<String, Value>> = app
            .instances
            .iter()
            .map(|i| metrics_object(&i.metrics))
            .collect();
        let nodes = unique(app.instances.iter().map(|i| i.node.clone()));
        let ips = unique(
            metrics
                .iter()
                .filter_map(|m| m.get("internalIp")?.as_str().map(str::to_string)),
        );
        let restarts: u64 = metrics
            .iter()
            .filter_map(|m| m.get("restartCount")?.as_u64())
            .sum();
        row.push(or_none(nodes.join(",")));
        row.push(or_none(ips.join(",")));
        row.push(restarts.to_string());
        // Sums over the instances, as last reported by their riklets.
        let sum = |a: &str, b: &str| -> Option<f64> {
            let values: Vec<f64> = metrics
                .iter()
                .filter_map(|m| m.get(a)?.get(b)?.as_f64())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum())
        };
        row.push(sum("cpu", "usageCores").map_or_else(|| NONE.to_string(), |c| format!("{c:.3}")));
        row.push(sum("memory", "workingSetBytes").map_or_else(
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

/// The PORTS column: every container port as `port:target_port/PROTOCOL`,
/// joined by `,`; empty when nothing is exposed.
pub fn ports_column(manifest: &AppManifest) -> String {
    manifest
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .map(|p| {
            let proto = match p.protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Sctp => "SCTP",
            };
            format!("{}:{}/{proto}", p.port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why an instance failed, from its metrics `reason` or `message`.
pub fn failure_reason(inst: &Instance) -> Option<String> {
    let m = metrics_object(&inst.metrics);
    ["reason", "message"]
        .iter()
        .filter_map(|k| m.get(*k)?.as_str())
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

/// `instance-id on node` (or just the id when not placed).
pub fn instance_label(inst: &Instance) -> String {
    if inst.node.is_empty() {
        inst.instance_id.clone()
    } else {
        format!("{} on {}", inst.instance_id, inst.node)
    }
}

/// CPU or memory usage of a node in percent: `realtime.<what>.currentUsage`,
/// else derived from RIK's heartbeat shape.
pub fn node_usage(metrics: &Map<String, Value>, what: &str) -> Option<f64> {
    let realtime = metrics
        .get("realtime")
        .and_then(|r| r.get(what))
        .and_then(|r| r.get("currentUsage"))
        .and_then(Value::as_f64);
    if realtime.is_some() {
        return realtime;
    }
    // RIK's riklet: cpu {total: cores, free: idle percent}, memory {total,
    // free} in bytes.
    let section = metrics.get(what)?;
    let free = section.get("free")?.as_f64()?;
    match what {
        "cpu" => Some((100.0 - free).clamp(0.0, 100.0)),
        _ => {
            let total = section.get("total")?.as_f64()?;
            (total > 0.0).then(|| ((total - free) / total * 100.0).clamp(0.0, 100.0))
        }
    }
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
    let metrics = metrics_object(&node.metrics);
    let mut row = vec![
        node.name.clone(),
        if node.ready { "Ready" } else { "NotReady" }.to_string(),
        percent(node_usage(&metrics, "cpu")),
        percent(node_usage(&metrics, "memory")),
        node.instances.to_string(),
        age(node.last_seen, now),
    ];
    if wide {
        let kernel = metrics
            .get("resources")
            .and_then(|r| r.get("kernelVersion"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        row.push(or_none(node.host_address.clone()));
        row.push(or_none(kernel));
    }
    row
}

/// One node of `rik get nodes -o json`: seed 004's node resources object
/// (`{"id": name}` when the riklet sent none) plus `ready`, `lastSeen`,
/// `pods` and `realtime` (seed 004's realtime node object, or null).
pub fn node_json(node: &Node) -> Json {
    let mut metrics = metrics_object(&node.metrics);
    let mut obj = match metrics.remove("resources") {
        Some(Value::Object(r)) => r,
        _ => Map::new(),
    };
    let id = obj.entry("id").or_insert(Value::Null);
    if id.is_null() {
        *id = json!(node.name);
    }
    obj.insert("ready".into(), json!(node.ready));
    obj.insert("lastSeen".into(), json!(node.last_seen));
    obj.insert("pods".into(), json!(node.instances));
    obj.insert(
        "realtime".into(),
        metrics.remove("realtime").unwrap_or(Value::Null),
    );
    Json::ordered(obj, NODE_KEYS)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(ports_column(&m), "80:8080/TCP,53:53/UDP");
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
        assert_eq!(app_row(&a, false, 1_045), ["web", "RUNNING", "45s"]);
        assert_eq!(
            app_row(&a, true, 1_045),
            [
                "web",
                "RUNNING",
                "45s",
                "node-a,node-b",
                "10.0.0.2,10.0.0.3",
                "3",
                "0.250",
                "3.0Mi",
                "80:8080/TCP,53:53/UDP"
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
}
