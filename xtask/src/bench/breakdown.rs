//! The per-step breakdown of a bare-process start, read from the riklet's
//! own log: with `riklet::steps=debug` the riklet logs one `start step`
//! event per step of each start (`step="…" us=…`, the pod in the `start`
//! span or in a `pod` field), the shim's steps included (timed by the shim
//! on the monotonic clock). This module picks the events of the pods of one
//! series and gives each step's median.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use super::stats::series;

/// The riklet's log filter for a bench: the default `info`, plus the step
/// events.
pub(crate) const LOG_FILTER: &str = "info,riklet::steps=debug";

/// The steps in the order a start goes through them, with a label; `network`
/// and `cgroup` run at the same time, `total` spans the start task and
/// `commit` follows it.
const STEPS: [(&str, &str); 17] = [
    ("total", "start task: network to shim report"),
    ("network", "  pod network (with cgroup)"),
    ("ipam", "    address lease (ipam.json)"),
    ("bridge", "    bridge check"),
    ("netns", "    network namespace"),
    ("veth", "    veth, addresses, route"),
    ("cgroup", "  cgroups, OOM baseline (with network)"),
    ("run dir", "  run directory, spec.json"),
    ("shim spawn", "  spawn riklet-shim"),
    ("shim exec", "  shim loaded, main runs"),
    ("shim detach", "  shim's second fork"),
    ("shim prepare", "  spec read, log file open"),
    ("child spawn", "  child created, cgroups, netns, exec"),
    ("started record", "  started.json"),
    ("shim report", "  report line read"),
    ("shim reap", "  intermediate process reaped"),
    ("commit", "record saved before RUNNING is reported"),
];

/// Per step, the durations (ms) logged for pods whose instance id starts
/// with `prefix`, in the log's order.
pub(crate) fn parse(log: &str, prefix: &str) -> BTreeMap<String, Vec<f64>> {
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("start step")) {
        let line = strip_ansi(line);
        let (Some(pod), Some(step), Some(us)) = (
            field(&line, "pod="),
            field(&line, "step="),
            field(&line, "us=").and_then(|u| u.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if pod.starts_with(prefix) {
            steps.entry(step).or_default().push(us / 1000.0);
        }
    }
    steps
}

/// The breakdown as JSON: one `{step, n, median, p99, min, max, samples}`
/// per step, in [`STEPS`] order (steps a later riklet may add after them);
/// steps that never appeared are left out.
pub(crate) fn summary(log: &str, prefix: &str) -> Value {
    let mut parsed = parse(log, prefix);
    let known = STEPS.iter().filter_map(|(step, _)| {
        parsed
            .remove(*step)
            .map(|samples| (step.to_string(), samples))
    });
    let mut rows: Vec<(String, Vec<f64>)> = known.collect();
    rows.extend(parsed);
    Value::Array(
        rows.into_iter()
            .map(|(step, samples)| {
                let mut row = series(&samples);
                row["step"] = Value::String(step);
                row
            })
            .collect(),
    )
}

/// The breakdown as a table (median, p99, of `n` starts).
pub(crate) fn table(summary: &Value) -> String {
    let mut out = String::new();
    let Some(rows) = summary.as_array().filter(|s| !s.is_empty()) else {
        let _ = writeln!(
            out,
            "no start steps in the riklet's log (was it run with RUST_LOG={LOG_FILTER}?)"
        );
        return out;
    };
    let _ = writeln!(out, "{:<44} {:>9} {:>9} {:>5}", "", "median", "p99", "n");
    for row in rows {
        let step = row["step"].as_str().unwrap_or("?");
        let label = STEPS
            .iter()
            .find(|(name, _)| *name == step)
            .map_or(step, |(_, label)| label);
        let _ = writeln!(
            out,
            "{label:<44} {:>9.2} {:>9.2} {:>5}",
            row["median"].as_f64().unwrap_or(f64::NAN),
            row["p99"].as_f64().unwrap_or(f64::NAN),
            row["n"]
        );
    }
    out
}

/// The value of `key` (e.g. `pod=`) in a log line: a quoted string (step
/// names have spaces), or up to the next space, `}` or `:`.
fn field(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"')?],
        None => rest.split([' ', '}', ':']).next().unwrap_or_default(),
    };
    (!value.is_empty()).then(|| value.to_string())
}

/// `line` without ANSI colour sequences (`ESC [ … letter`).
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_the_series_pods_only() {
        let log = "\
2026-12-02T14:59:50.930233Z DEBUG \u{1b}[1mstart\u{1b}[0m{\u{1b}[3mpod\u{1b}[0m\u{1b}[2m=\u{1b}[0mbench-wait-7-y9o5l \u{1b}[3mcontainer\u{1b}[0m\u{1b}[2m=\u{1b}[0msleep}: riklet::steps: start step \u{1b}[3mstep\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"ipam\" \u{1b}[3mus\u{1b}[0m\u{1b}[2m=\u{1b}[0m780
2026-12-02T14:59:50.936640Z DEBUG start{pod=bench-wait-7-y9o5l container=sleep}: riklet::steps: start step step=\"child spawn\" us=599
2026-12-02T14:59:50.937904Z DEBUG riklet::steps: start step pod=\"bench-wait-7-y9o5l\" step=\"commit\" us=1057
2026-12-02T14:59:50.937904Z DEBUG riklet::steps: start step pod=\"bench-wait-8-abcde\" step=\"commit\" us=2000
2026-12-02T14:59:50.937904Z DEBUG riklet::steps: start step pod=\"bench-poll-8-abcde\" step=\"commit\" us=9000
2026-12-02T14:59:50.938184Z  INFO scheduler::cluster: instance status from=\"CREATING\" to=\"RUNNING\"
";
        let steps = parse(log, "bench-wait-");
        assert_eq!(steps["ipam"], vec![0.78]);
        assert_eq!(steps["child spawn"], vec![0.599]);
        assert_eq!(steps["commit"], vec![1.057, 2.0]);
        let s = summary(log, "bench-wait-");
        let order: Vec<&str> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["step"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["ipam", "child spawn", "commit"], "in start order");
        assert_eq!(s[2]["n"], 2);
        assert!(table(&s).contains("record saved before RUNNING"));
        assert!(table(&summary("", "bench-wait-")).contains("no start steps"));
    }
}
