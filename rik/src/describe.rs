//! What `rik describe app` and `rik get events` print, built from `rik.v1`
//! messages without any I/O: the app, each instance with its node, IP and
//! containers (state, reason, last exit, restarts, image digest, limits),
//! and the app's events, oldest first, with their ages — like `kubectl
//! describe pod` and `kubectl get events`.

use std::fmt::Write as _;

use proto::manifest::AppManifest;
use proto::rik::v1::{App, Event, Instance};
use proto::status::{self, AppStatus, ContainerState, ContainerStatus, LastExit};

use crate::output::{Table, age, format_age};
use crate::views;

/// The STATUS `rik` shows for an instance (kubectl's pod STATUS).
pub fn instance_status(app: &App, inst: &Instance) -> String {
    let report = AppStatus::from_json(&inst.metrics);
    status::display_status(status::from_name(&inst.status), &report, app.deleting)
}

/// The STATUS `rik` shows for an app: the most telling of its instances'.
pub fn app_status(app: &App) -> String {
    let shown: Vec<String> = app
        .instances
        .iter()
        .map(|i| instance_status(app, i))
        .collect();
    match status::most_telling(shown.iter().map(String::as_str)) {
        Some(s) => s.to_string(),
        None if app.deleting => status::lifecycle::TERMINATING.to_string(),
        None if app.status.is_empty() => "UNKNOWN".to_string(),
        None => app.status.clone(),
    }
}

/// `rik describe app NAME`, `now` in Unix milliseconds.
pub fn describe_app(app: &App, now_ms: i64) -> String {
    let now = now_ms / 1000;
    let manifest = views::manifest_of(app);
    let mut out = String::new();
    field(&mut out, 0, "Name", &app.name);
    field(&mut out, 0, "Status", &app_status(app));
    field(&mut out, 0, "Replicas", &app.replicas.to_string());
    field(&mut out, 0, "Age", &age(app.created_at, now));
    if let Some(m) = &manifest {
        let policy = format!("{:?}", m.spec.restart_policy);
        field(&mut out, 0, "Restart Policy", &policy);
        let ports = views::ports_column(m);
        if !ports.is_empty() {
            field(&mut out, 0, "Ports", &ports);
        }
    }
    out.push_str("Instances:\n");
    if app.instances.is_empty() {
        out.push_str("  <none>\n");
    }
    for inst in &app.instances {
        let report = AppStatus::from_json(&inst.metrics);
        let _ = writeln!(out, "  {}:", inst.instance_id);
        field(&mut out, 4, "Node", or_none(&inst.node));
        let ip = report.realtime.internal_ip.clone().unwrap_or_default();
        field(&mut out, 4, "IP", or_none(&ip));
        let shown = instance_status(app, inst);
        field(&mut out, 4, "Status", &format!("{shown} ({})", inst.status));
        if let Some(reason) = report.reason.as_deref().filter(|r| !r.is_empty()) {
            field(&mut out, 4, "Reason", reason);
        }
        out.push_str("    Containers:\n");
        for c in &report.containers {
            let limits = manifest
                .as_ref()
                .map(|m| limits_of(m, &c.name))
                .unwrap_or_default();
            describe_container(&mut out, c, &limits, now);
        }
    }
    out.push_str("Events:\n");
    if app.events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        for line in events_table(&app.events, now_ms, false).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One `Name:   value` line of `describe`, indented.
fn field(out: &mut String, indent: usize, name: &str, value: &str) {
    let label = format!("{name}:");
    let _ = writeln!(out, "{:indent$}{label:<16}{value}", "");
}

/// A container's limits from the manifest: `cpu 250m, memory 32Mi`.
fn limits_of(manifest: &AppManifest, container: &str) -> String {
    let Some(r) = manifest
        .spec
        .containers
        .iter()
        .find(|s| s.name == container)
        .and_then(|s| s.resources.as_ref())
    else {
        return String::new();
    };
    let cpu = r.cpu.as_ref().map(|c| format!("cpu {c}"));
    let memory = r.memory.as_ref().map(|m| format!("memory {m}"));
    [cpu, memory]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

/// One container of `describe`, at an indent of 6.
fn describe_container(out: &mut String, c: &ContainerStatus, limits: &str, now: i64) {
    let _ = writeln!(out, "      {}:", c.name);
    if let Some(image) = &c.image {
        field(out, 8, "Image", image);
    }
    if let Some(digest) = &c.image_digest {
        field(out, 8, "Image Digest", digest);
    }
    let state = match c.state {
        ContainerState::Running => "Running",
        ContainerState::Creating | ContainerState::Waiting => "Waiting",
        ContainerState::Terminated => "Terminated",
    };
    let since = c
        .started_at
        .filter(|_| c.state == ContainerState::Running)
        .map(|t| format!(" (started {} ago)", age(t, now)))
        .unwrap_or_default();
    field(out, 8, "State", &format!("{state}{since}"));
    if let Some(reason) = &c.reason {
        field(out, 10, "Reason", reason);
    }
    if let Some(message) = &c.message {
        field(out, 10, "Message", message);
    }
    if let Some(exit) = &c.last_exit {
        field(out, 8, "Last Exit", &last_exit(exit, now));
    }
    field(out, 8, "Restarts", &c.restart_count.to_string());
    field(
        out,
        8,
        "Limits",
        if limits.is_empty() { "<none>" } else { limits },
    );
}

/// `Error (code 3), 12s ago: message`.
fn last_exit(exit: &LastExit, now: i64) -> String {
    let how = match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!(" (code {code})"),
        (None, Some(signal)) => format!(" (signal {signal})"),
        (None, None) => String::new(),
    };
    let message = exit
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!(
        "{}{how}, {} ago{message}",
        exit.reason,
        age(exit.finished_at, now)
    )
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "<none>" } else { s }
}

/// Headers of the events table.
pub const EVENT_HEADERS: &[&str] = &["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"];

/// One row of the events table, `now` in Unix milliseconds.
pub fn event_row(event: &Event, now_ms: i64) -> Vec<String> {
    let object = if event.container.is_empty() {
        event.instance_id.clone()
    } else {
        format!("{}/{}", event.instance_id, event.container)
    };
    vec![
        format_age((now_ms - event.time) / 1000),
        event.r#type.clone(),
        event.reason.clone(),
        object,
        event.message.clone(),
    ]
}

/// Events as a table, oldest first (`sort`: by time, for events of
/// several apps).
pub fn events_table(events: &[Event], now_ms: i64, sort: bool) -> String {
    let mut events: Vec<&Event> = events.iter().collect();
    if sort {
        events.sort_by_key(|e| (e.time, e.seq));
    }
    let mut table = Table::new(EVENT_HEADERS);
    for e in events {
        table.push(event_row(e, now_ms));
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, time: i64, kind: &str, reason: &str, message: &str) -> Event {
        Event {
            instance_id: "web-abcde".into(),
            node: "n1".into(),
            container: "main".into(),
            time,
            r#type: kind.into(),
            reason: reason.into(),
            message: message.into(),
            seq,
        }
    }

    const LOOPING: &str = r#"{"appId":"web-abcde","state":"CREATING","internalIp":"10.88.0.3",
        "reason":"CrashLoopBackOff: container main: Error: exit code 3",
        "containers":[{"name":"main","state":"waiting","reason":"CrashLoopBackOff",
        "message":"back-off 10s restarting failed container main","image":null,"containerId":null,
        "imageDigest":null,"pid":null,"startedAt":null,"restartCount":2,
        "lastExit":{"exitCode":3,"signal":null,"reason":"Error","message":null,"finishedAt":1700000090},
        "cgroup":"riklet/web-abcde_main","usage":null}]}"#;

    fn app() -> App {
        App {
            name: "web".into(),
            replicas: 1,
            definition: r#"{"kind":"Pod","name":"web","spec":{"containers":[{"name":"main","exec":"/bin/sh","resources":{"memory":"32Mi"}}]}}"#.into(),
            created_at: 1_700_000_000,
            instances: vec![Instance {
                instance_id: "web-abcde".into(),
                node: "n1".into(),
                status: "CREATING".into(),
                metrics: LOOPING.into(),
                updated_at: 0,
            }],
            status: "CREATING".into(),
            events: vec![
                event(1, 1_700_000_080_000, "Normal", "Started", "Started container main (pid 4)"),
                event(2, 1_700_000_090_000, "Warning", "Exited", "Container main exited (code 3)"),
                event(3, 1_700_000_091_000, "Warning", "BackOff", "Back-off restarting failed container main until 10:00:00 UTC"),
            ],
            deleting: false,
        }
    }

    #[test]
    fn describe_shows_containers_and_events_in_order() {
        let text = describe_app(&app(), 1_700_000_100_000);
        for want in [
            "Status:         CrashLoopBackOff",
            "  web-abcde:",
            "    Node:           n1",
            "    IP:             10.88.0.3",
            "          Reason:         CrashLoopBackOff",
            "        Last Exit:      Error (code 3), 10s ago",
            "        Restarts:       2",
            "        Limits:         memory 32Mi",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        let events: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Events:")
            .skip(2)
            .collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].starts_with("  20s   Normal    Started"), "{text}");
        assert!(events[1].contains("Exited") && events[1].contains("(code 3)"));
        assert!(events[2].starts_with("  9s") && events[2].contains("BackOff"));
    }

    #[test]
    fn an_app_status_is_its_most_telling_instance() {
        let mut app = app();
        assert_eq!(app_status(&app), "CrashLoopBackOff");
        app.instances[0].metrics = r#"{"containers":[]}"#.into();
        app.instances[0].status = "RUNNING".into();
        assert_eq!(app_status(&app), "Running");
        app.deleting = true;
        assert_eq!(app_status(&app), "Terminating");
        app.instances.clear();
        assert_eq!(app_status(&app), "Terminating");
    }
}
