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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ContainerRecord, ExitRecord, Phase, ProcId, RunRecord};

    /// Today's status of [`pod`] with no usage measured (the wire contract).
    const WITHOUT_USAGE: &str = r#"{"app":"web","appId":"web-1","containers":[{"cgroup":"riklet/web-1_main","containerId":"web-1_main","image":"docker.io/library/nginx:1.25","imageDigest":"sha256:ab","lastExit":null,"name":"main","pid":11,"restartCount":1,"startedAt":1700000000,"state":"running","usage":null},{"cgroup":"riklet/web-1_side","containerId":null,"image":null,"imageDigest":null,"lastExit":{"exitCode":1,"finishedAt":1700000001,"message":"boom","reason":"Error","signal":null},"name":"side","pid":null,"restartCount":2,"startedAt":null,"state":"waiting","usage":null}],"cpu":null,"createdAt":1699999999,"deployment":{"app":"web","repository":"docker.io/library/nginx","version":"1.25"},"events":[],"hostNetwork":false,"internalIp":null,"memory":null,"network":null,"reason":"CrashLoopBackOff","restartCount":3,"runqueue":null,"runsOn":"node-a","state":"CREATING"}"#;

    /// Today's status of [`pod`] running on the host network with [`USAGE`].
    const WITH_USAGE: &str = r#"{"app":"web","appId":"web-1","containers":[{"cgroup":"riklet/web-1_main","containerId":"web-1_main","image":"docker.io/library/nginx:1.25","imageDigest":"sha256:ab","lastExit":null,"name":"main","pid":11,"restartCount":1,"startedAt":1700000000,"state":"running","usage":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4}},{"cgroup":"riklet/web-1_side","containerId":null,"image":null,"imageDigest":null,"lastExit":{"exitCode":1,"finishedAt":1700000001,"message":"boom","reason":"Error","signal":null},"name":"side","pid":null,"restartCount":2,"startedAt":null,"state":"creating","usage":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}}],"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"createdAt":1699999999,"deployment":{"app":"web","repository":"docker.io/library/nginx","version":"1.25"},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"hostNetwork":true,"internalIp":"10.1.0.2","memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"reason":null,"restartCount":3,"runqueue":{"count":3,"meanSeconds":1e-6},"runsOn":"node-a","state":"RUNNING"}"#;

    /// The usage the collector publishes for a pod with two containers.
    const USAGE: &str = r#"{"containers":{"main":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4},"side":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}},"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"runqueue":{"count":3,"meanSeconds":1e-6}}"#;

    fn pod() -> PodRecord {
        let manifest = proto::manifest::parse(
            "kind: Pod\nname: web\nspec: {containers: [{name: main, image: docker.io/library/nginx:1.25}, {name: side, exec: /bin/true}]}",
        )
        .unwrap();
        let run = RunRecord {
            shim: None,
            container_id: Some("web-1_main".into()),
            image_digest: Some("sha256:ab".into()),
            ..RunRecord::process(
                ProcId {
                    pid: 10,
                    start_time: 5,
                },
                ProcId {
                    pid: 11,
                    start_time: 6,
                },
                1_700_000_000_123,
            )
        };
        let container = |name: &str, restart_count| ContainerRecord {
            name: name.into(),
            restart_count,
            run: None,
            last_exit: None,
            restart_at: None,
            backoff_secs: 0,
            oom_kills_at_start: None,
            starting: false,
        };
        PodRecord {
            instance_id: "web-1".into(),
            manifest,
            phase: Phase::Creating,
            reason: Some("CrashLoopBackOff".into()),
            created_at: 1_699_999_999_999,
            updated_at: 2,
            containers: vec![
                ContainerRecord {
                    run: Some(run),
                    ..container("main", 1)
                },
                ContainerRecord {
                    last_exit: Some(ExitRecord {
                        exit_code: Some(1),
                        signal: None,
                        finished_at: 1_700_000_001_999,
                        reason: "Error".into(),
                        message: Some("boom".into()),
                    }),
                    restart_at: Some(1_700_000_002_000),
                    backoff_secs: 10,
                    ..container("side", 2)
                },
            ],
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn status_without_usage() {
        let cgroup = |name: &str| format!("riklet/web-1_{name}");
        let inputs = ViewInputs {
            node: "node-a",
            ip: None,
            usage: None,
            cgroup: &cgroup,
        };
        assert_eq!(app_status(&pod(), &inputs), json(WITHOUT_USAGE));
    }

    #[test]
    fn status_with_usage() {
        let cgroup = |name: &str| format!("riklet/web-1_{name}");
        let inputs = ViewInputs {
            node: "node-a",
            ip: Some("10.1.0.2".parse().unwrap()),
            usage: Some(json(USAGE)),
            cgroup: &cgroup,
        };
        let mut pod = pod();
        pod.phase = Phase::Running;
        pod.reason = None;
        pod.manifest.spec.host_network = true;
        pod.containers[1].starting = true;
        pod.containers[1].restart_at = None;
        assert_eq!(app_status(&pod, &inputs), json(WITH_USAGE));
    }
}
