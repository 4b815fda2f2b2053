//! The status view of a pod: seed 004's realtime app object, extended with
//! its containers and the last measured usage ([`AppStatus`]). It is what
//! the scheduler receives in an instance status and what `riklet pods`
//! prints.

use std::net::IpAddr;

use proto::status::lifecycle::{
    COMPLETED, CONTAINER_CREATING, CRASH_LOOP_BACK_OFF, ERR_IMAGE_PULL, ERROR, IMAGE_PULL_BACK_OFF,
    OOM_KILLED, RUN_CONTAINER_ERROR,
};
use proto::status::{
    AppStatus, ContainerState, ContainerStatus, LastExit, LifecycleEvent, PodUsage, RealtimeApp,
};

use crate::state::{ContainerRecord, PodRecord};

/// What the view needs besides the pod record.
pub struct ViewInputs<'a> {
    /// The node the pod runs on.
    pub node: &'a str,
    /// The pod's address: its own, or the node's with `hostNetwork`.
    pub ip: Option<IpAddr>,
    /// The last usage measured by the collector, if any.
    pub usage: Option<PodUsage>,
    /// The pod's recent events, oldest first.
    pub history: Vec<LifecycleEvent>,
    /// Each container's cgroup path, relative to the cgroup root.
    pub cgroup: &'a dyn Fn(&str) -> String,
}

/// The pod's status, with the last measured usage if there is one.
pub fn app_status(pod: &PodRecord, inputs: &ViewInputs<'_>) -> AppStatus {
    let status = AppStatus {
        realtime: RealtimeApp {
            app_id: pod.instance_id.clone(),
            state: pod.phase.status(),
            created_at: Some(pod.created_at / 1000),
            restart_count: pod.restart_count(),
            internal_ip: inputs.ip.map(|ip| ip.to_string()),
            runs_on: Some(inputs.node.to_string()),
            deployment: Some(pod.manifest.deployment()),
        },
        app: pod.manifest.name.clone(),
        reason: pod.reason.clone(),
        host_network: pod.manifest.spec.host_network,
        containers: pod
            .containers
            .iter()
            .map(|c| container_status(pod, c, inputs))
            .collect(),
        history: inputs.history.clone(),
        ..AppStatus::default()
    };
    match &inputs.usage {
        Some(usage) => status.with_usage(usage.clone()),
        None => status,
    }
}

/// One container's status, without its usage.
fn container_status(
    pod: &PodRecord,
    c: &ContainerRecord,
    inputs: &ViewInputs<'_>,
) -> ContainerStatus {
    let spec = pod
        .manifest
        .spec
        .containers
        .iter()
        .find(|s| s.name == c.name);
    let (state, reason, message) = container_state(c);
    ContainerStatus {
        name: c.name.clone(),
        state,
        reason: reason.map(String::from),
        message,
        image: spec.and_then(|s| s.image.clone()),
        container_id: c.run.as_ref().and_then(|r| r.container_id.clone()),
        image_digest: c.run.as_ref().and_then(|r| r.image_digest.clone()),
        pid: c.run.as_ref().map(|r| r.process.pid),
        started_at: c.run.as_ref().map(|r| r.started_at / 1000),
        restart_count: c.restart_count,
        last_exit: c.last_exit.as_ref().map(|e| LastExit {
            exit_code: e.exit_code,
            signal: e.signal,
            reason: e.reason.clone(),
            message: e.message.clone(),
            finished_at: e.finished_at / 1000,
        }),
        cgroup: (inputs.cgroup)(&c.name),
        usage: None,
    }
}

/// kubelet's state of a container, its reason and message: running;
/// waiting while being started, or in a back-off (`CrashLoopBackOff`,
/// `ImagePullBackOff`) once it was noticed ([`ContainerRecord::backing_off`]);
/// before that, how it ended: terminated (`Completed`, `Error`,
/// `OOMKilled`), or waiting after a failed start (`RunContainerError`) or
/// pull (`ErrImagePull`). A container still without its pod network or
/// containerd waits as `ContainerCreating`.
fn container_state(c: &ContainerRecord) -> (ContainerState, Option<&'static str>, Option<String>) {
    use ContainerState::{Creating, Running, Terminated, Waiting};
    let exit = match (&c.run, c.starting, &c.last_exit) {
        (Some(_), _, _) => return (Running, None, None),
        // Being started, or not started yet (after a recovery).
        (None, true, _) | (None, false, None) => return (Creating, Some(CONTAINER_CREATING), None),
        (None, false, Some(exit)) => exit,
    };
    let ended = match exit.reason.as_str() {
        "Completed" => Some(COMPLETED),
        "OOMKilled" => Some(OOM_KILLED),
        "Error" | "Killed" | "Lost" => Some(ERROR),
        _ => None,
    };
    let failed = match exit.reason.as_str() {
        ERR_IMAGE_PULL => ERR_IMAGE_PULL,
        "StartError" => RUN_CONTAINER_ERROR,
        _ => CONTAINER_CREATING,
    };
    let waits = c.restart_at.is_some();
    if !c.backing_off || !waits {
        return match ended {
            Some(reason) => (Terminated, Some(reason), None),
            None if waits => (Waiting, Some(failed), Some(exit.describe())),
            None => (Terminated, Some(failed), Some(exit.describe())),
        };
    }
    let seconds = c.backoff_secs;
    match (ended, failed) {
        (_, ERR_IMAGE_PULL) => (
            Waiting,
            Some(IMAGE_PULL_BACK_OFF),
            Some(format!("back-off {seconds}s pulling the image")),
        ),
        (None, CONTAINER_CREATING) => (Waiting, Some(CONTAINER_CREATING), Some(exit.describe())),
        _ => (
            Waiting,
            Some(CRASH_LOOP_BACK_OFF),
            Some(format!(
                "back-off {seconds}s restarting failed container {}",
                c.name
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::collector::tests::USAGE;
    use crate::state::{ContainerRecord, ExitRecord, Phase, ProcId, RunRecord};

    /// Today's status of [`pod`] with no usage measured (the wire contract).
    const WITHOUT_USAGE: &str = r#"{"app":"web","appId":"web-1","containers":[{"cgroup":"riklet/web-1_main","containerId":"web-1_main","image":"docker.io/library/nginx:1.25","imageDigest":"sha256:ab","lastExit":null,"message":null,"name":"main","pid":11,"reason":null,"restartCount":1,"startedAt":1700000000,"state":"running","usage":null},{"cgroup":"riklet/web-1_side","containerId":null,"image":null,"imageDigest":null,"lastExit":{"exitCode":1,"finishedAt":1700000001,"message":"boom","reason":"Error","signal":null},"message":"back-off 10s restarting failed container side","name":"side","pid":null,"reason":"CrashLoopBackOff","restartCount":2,"startedAt":null,"state":"waiting","usage":null}],"cpu":null,"createdAt":1699999999,"deployment":{"app":"web","repository":"docker.io/library/nginx","version":"1.25"},"events":[],"history":[],"hostNetwork":false,"internalIp":null,"memory":null,"network":null,"reason":"CrashLoopBackOff","restartCount":3,"runqueue":null,"runsOn":"node-a","state":"CREATING"}"#;

    /// Today's status of [`pod`] running on the host network with [`USAGE`].
    const WITH_USAGE: &str = r#"{"app":"web","appId":"web-1","containers":[{"cgroup":"riklet/web-1_main","containerId":"web-1_main","image":"docker.io/library/nginx:1.25","imageDigest":"sha256:ab","lastExit":null,"message":null,"name":"main","pid":11,"reason":null,"restartCount":1,"startedAt":1700000000,"state":"running","usage":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4}},{"cgroup":"riklet/web-1_side","containerId":null,"image":null,"imageDigest":null,"lastExit":{"exitCode":1,"finishedAt":1700000001,"message":"boom","reason":"Error","signal":null},"message":null,"name":"side","pid":null,"reason":"ContainerCreating","restartCount":2,"startedAt":null,"state":"creating","usage":{"cpu":{"oncpuSeconds":null,"throttledSeconds":null,"usageSeconds":null},"memory":{"failcnt":null,"limitBytes":null,"oomKills":null,"usageBytes":null,"workingSetBytes":null},"network":{"rxBytes":null,"rxPackets":null,"txBytes":null,"txPackets":null},"pids":null}}],"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"createdAt":1699999999,"deployment":{"app":"web","repository":"docker.io/library/nginx","version":"1.25"},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"history":[],"hostNetwork":true,"internalIp":"10.1.0.2","memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"reason":null,"restartCount":3,"runqueue":{"count":3,"meanSeconds":1e-6},"runsOn":"node-a","state":"RUNNING"}"#;

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
            backing_off: false,
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
                    backing_off: true,
                    ..container("side", 2)
                },
            ],
        }
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn status_without_usage() {
        let cgroup = |name: &str| format!("riklet/web-1_{name}");
        let inputs = ViewInputs {
            node: "node-a",
            ip: None,
            usage: None,
            history: Vec::new(),
            cgroup: &cgroup,
        };
        let status = app_status(&pod(), &inputs);
        assert_eq!(status.to_value(), json(WITHOUT_USAGE));
        assert_eq!(
            status.to_json(),
            WITHOUT_USAGE,
            "the same bytes on the wire"
        );
    }

    #[test]
    fn status_with_usage() {
        let cgroup = |name: &str| format!("riklet/web-1_{name}");
        let inputs = ViewInputs {
            node: "node-a",
            ip: Some("10.1.0.2".parse().unwrap()),
            usage: Some(serde_json::from_str(USAGE).unwrap()),
            history: Vec::new(),
            cgroup: &cgroup,
        };
        let mut pod = pod();
        pod.phase = Phase::Running;
        pod.reason = None;
        pod.manifest.spec.host_network = true;
        pod.containers[1].starting = true;
        pod.containers[1].restart_at = None;
        let status = app_status(&pod, &inputs);
        assert_eq!(status.to_value(), json(WITH_USAGE));
        assert_eq!(status.to_json(), WITH_USAGE, "the same bytes on the wire");
    }
}
