//! The riklet's local admin commands, `riklet status` and `riklet pods`:
//! the status document the control socket answers (`-o json` prints it as
//! is, for scripts) and the aligned tables printed for people.

use std::collections::BTreeMap;
use std::io::Write;

use proto::status::{AppStatus, ContainerState};
use serde::{Deserialize, Serialize};
use tabwriter::TabWriter;

/// The answer to `status`: who this riklet is, where it listens, what it
/// runs. Keys in alphabetical order, as JSON maps print.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub api_address: String,
    pub containerd: ContainerdStatus,
    /// Whether the eBPF probes are loaded.
    pub ebpf: bool,
    /// The probes' attached programs (empty without eBPF).
    #[serde(default)]
    pub ebpf_programs: Vec<String>,
    pub metrics_address: String,
    pub node: String,
    pub pods: usize,
    /// Pods by state name (`RUNNING`, `CREATING`, …).
    #[serde(default)]
    pub phases: BTreeMap<String, usize>,
    /// The proxy datapath in use (`off` when it could not start).
    pub proxy: String,
    pub running: usize,
    pub scheduler: String,
    /// Whether a session with the scheduler is open (registered).
    #[serde(default)]
    pub scheduler_connected: bool,
}

/// Whether containerd answers, and where; or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerdStatus {
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `riklet status` for people: one row per fact.
pub fn status_table(s: &AgentStatus) -> String {
    let scheduler = match s.scheduler_connected {
        true => format!("{} (connected)", s.scheduler),
        false => format!("{} (not connected)", s.scheduler),
    };
    let c = &s.containerd;
    let containerd = match (c.connected, &c.socket, &c.namespace) {
        (true, Some(socket), Some(ns)) => format!("connected ({socket}, namespace {ns})"),
        (true, _, _) => "connected".to_string(),
        (false, _, _) => format!("not connected: {}", c.error.as_deref().unwrap_or("unknown")),
    };
    let ebpf = match s.ebpf_programs.len() {
        0 if s.ebpf => "loaded".to_string(),
        0 => "not loaded (see the riklet's log)".to_string(),
        n => format!("{n} programs loaded: {}", s.ebpf_programs.join(", ")),
    };
    let phases: Vec<String> = s.phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    let pods = match phases.is_empty() {
        true => s.pods.to_string(),
        false => format!("{} ({})", s.pods, phases.join(", ")),
    };
    let rows = [
        ["NODE", &s.node],
        ["SCHEDULER", &scheduler],
        ["CONTAINERD", &containerd],
        ["EBPF", &ebpf],
        ["PROXY", &s.proxy],
        ["NODE API", &s.api_address],
        ["METRICS", &s.metrics_address],
        ["PODS", &pods],
    ];
    aligned(rows.iter().map(|r| r.map(str::to_string).to_vec()))
}

/// `riklet pods` for people: one row per pod; `now` in seconds since the
/// epoch, for the ages.
pub fn pods_table(pods: &[AppStatus], now: i64) -> String {
    let header = [
        "NAME", "APP", "STATE", "READY", "RESTARTS", "IP", "AGE", "REASON",
    ];
    let rows = pods.iter().map(|p| {
        let running = p
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .count();
        let r = &p.realtime;
        vec![
            r.app_id.clone(),
            p.app.clone(),
            proto::status::name(r.state).to_string(),
            format!("{running}/{}", p.containers.len()),
            r.restart_count.to_string(),
            r.internal_ip.clone().unwrap_or_else(|| "-".into()),
            r.created_at.map_or("-".into(), |at| age(now - at)),
            p.reason.clone().unwrap_or_default(),
        ]
    });
    aligned(std::iter::once(header.map(str::to_string).to_vec()).chain(rows))
}

/// `seconds` the way kubectl prints an age: `42s`, `5m`, `3h`, `2d`.
fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Rows as lines of left-aligned columns, 3 spaces apart; a tab or a line
/// break inside a cell would break the alignment, so it becomes a space.
fn aligned(rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut table = TabWriter::new(Vec::new()).padding(3);
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace(['\t', '\n'], " ")).collect();
        // Writing to a Vec cannot fail.
        let _ = writeln!(table, "{}", cells.join("\t"));
    }
    let bytes = table.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests;
