//! The status view of a pod: seed 004's realtime app object, extended with
//! its containers and the last measured usage. It is what the scheduler
//! receives in an instance status and what `riklet pods` prints.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::state::PodRecord;

/// What the view needs besides the pod record.
pub struct ViewInputs<'a> {
    /// The node the pod runs on.
    pub node: &'a str,
    /// The pod's address: its own, or the node's with `hostNetwork`.
    pub ip: Option<IpAddr>,
    /// The last usage measured by the collector, if any.
    pub usage: Option<Value>,
    /// Each container's cgroup path, relative to the cgroup root.
    pub cgroup: &'a dyn Fn(&str) -> String,
}

/// Seed 004's realtime app object, extended with containers and the
/// last measured usage (`cpu`, `memory`, `network`, `runqueue`).
pub fn app_status(pod: &PodRecord, inputs: &ViewInputs<'_>) -> Value {
    let deployment = pod.manifest.deployment();
    let usage = inputs.usage.clone().unwrap_or_else(|| json!({}));
    let containers: Vec<Value> = pod
        .containers
        .iter()
        .map(|c| {
            let spec = pod
                .manifest
                .spec
                .containers
                .iter()
                .find(|s| s.name == c.name);
            let state = if c.run.is_some() {
                "running"
            } else if c.starting {
                "creating"
            } else if c.restart_at.is_some() {
                "waiting"
            } else {
                "terminated"
            };
            json!({
                "name": c.name,
                "state": state,
                "image": spec.and_then(|s| s.image.clone()),
                "containerId": c.run.as_ref().and_then(|r| r.container_id.clone()),
                "imageDigest": c.run.as_ref().and_then(|r| r.image_digest.clone()),
                "pid": c.run.as_ref().map(|r| r.process.pid),
                "startedAt": c.run.as_ref().map(|r| r.started_at / 1000),
                "restartCount": c.restart_count,
                "lastExit": c.last_exit.as_ref().map(|e| json!({
                    "exitCode": e.exit_code,
                    "signal": e.signal,
                    "reason": e.reason,
                    "message": e.message,
                    "finishedAt": e.finished_at / 1000,
                })),
                "cgroup": (inputs.cgroup)(&c.name),
                "usage": usage["containers"][&c.name],
            })
        })
        .collect();
    json!({
        "appId": pod.instance_id,
        "app": pod.manifest.name,
        "state": proto::status::name(pod.phase.status()),
        "reason": pod.reason,
        "createdAt": pod.created_at / 1000,
        "restartCount": pod.restart_count(),
        "internalIp": inputs.ip.map(|ip| ip.to_string()),
        "hostNetwork": pod.manifest.spec.host_network,
        "runsOn": inputs.node,
        "deployment": {"app": deployment.app, "repository": deployment.repository, "version": deployment.version},
        "containers": containers,
        "cpu": usage["cpu"],
        "memory": usage["memory"],
        "network": usage["network"],
        "runqueue": usage["runqueue"],
        "events": usage.get("events").cloned().unwrap_or_else(|| json!([])),
    })
}
