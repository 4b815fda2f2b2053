//! An instance's status, `InstanceMetric.metrics`.

use serde::{Deserialize, Serialize};

use super::lifecycle::LifecycleEvent;
use super::usage::{
    ContainerUsage, MemoryUsage, NetworkUsage, PodCpu, PodEvent, PodUsage, RunQueue,
};
use super::{deserialize_state, lenient, serialize_state};
use crate::common::ResourceStatus;
use crate::manifest::Deployment;

/// Seed 004's realtime app object: what `rik` shows of every instance,
/// whoever reported it. The optional keys are those a report may lack (a
/// short form, RIK's riklet); a reader then falls back on what it knows
/// otherwise. The riklet's full status has every one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RealtimeApp {
    /// The instance id.
    #[serde(deserialize_with = "lenient")]
    pub app_id: String,
    #[serde(
        serialize_with = "serialize_state",
        deserialize_with = "deserialize_state"
    )]
    pub state: ResourceStatus,
    /// Unix seconds.
    #[serde(deserialize_with = "lenient")]
    pub created_at: Option<i64>,
    /// Restarts summed over the containers.
    #[serde(deserialize_with = "lenient")]
    pub restart_count: u32,
    /// The pod's address: its own, or the node's on the host network.
    #[serde(deserialize_with = "lenient")]
    pub internal_ip: Option<String>,
    /// The node.
    #[serde(deserialize_with = "lenient")]
    pub runs_on: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub deployment: Option<Deployment>,
}

/// The riklet's status of a pod: seed 004's realtime app object extended
/// with the app, why the pod is in its state, its containers and the last
/// measured usage. `riklet pods` prints it too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AppStatus {
    #[serde(flatten)]
    pub realtime: RealtimeApp,
    /// The app (manifest) name.
    #[serde(deserialize_with = "lenient")]
    pub app: String,
    /// Why the pod is in its state (`CrashLoopBackOff`, `Completed`, a
    /// start error, …).
    #[serde(deserialize_with = "lenient")]
    pub reason: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub host_network: bool,
    #[serde(deserialize_with = "lenient")]
    pub containers: Vec<ContainerStatus>,
    /// Sums over the containers; `null` until the collector measured the
    /// pod, like `memory`, `network` and `runqueue`.
    #[serde(deserialize_with = "lenient")]
    pub cpu: Option<PodCpu>,
    #[serde(deserialize_with = "lenient")]
    pub memory: Option<MemoryUsage>,
    #[serde(deserialize_with = "lenient")]
    pub network: Option<NetworkUsage>,
    #[serde(deserialize_with = "lenient")]
    pub runqueue: Option<RunQueue>,
    /// The last pod events (OOM kills).
    #[serde(deserialize_with = "lenient")]
    pub events: Vec<PodEvent>,
    /// The pod's last events (created, pulled, started, exited, back-off,
    /// …), oldest first; bounded by the riklet.
    #[serde(deserialize_with = "lenient")]
    pub history: Vec<LifecycleEvent>,
}

impl AppStatus {
    /// Adds the last measured usage: the pod's sums and events, and each
    /// container's own figures (`null` for a container not measured).
    pub fn with_usage(mut self, mut usage: PodUsage) -> Self {
        for container in &mut self.containers {
            container.usage = usage.containers.remove(&container.name);
        }
        self.cpu = Some(usage.cpu);
        self.memory = Some(usage.memory);
        self.network = Some(usage.network);
        self.runqueue = Some(usage.runqueue);
        self.events = usage.events;
        self
    }
}

metrics_object!(AppStatus);

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    /// kubelet's reason for the state: `ContainerCreating`,
    /// `CrashLoopBackOff`, `RunContainerError`, `ErrImagePull`,
    /// `ImagePullBackOff` while waiting; `Completed`, `Error`, `OOMKilled`
    /// once ended (and until its back-off is noticed); `null` while
    /// running. See [`super::lifecycle`].
    #[serde(default)]
    pub reason: Option<String>,
    /// More on the reason (`back-off 20s restarting failed container`).
    #[serde(default)]
    pub message: Option<String>,
    /// The image of an image container (`null` for a bare process).
    pub image: Option<String>,
    /// The containerd container of the current run.
    pub container_id: Option<String>,
    pub image_digest: Option<String>,
    /// The current run's process.
    pub pid: Option<i32>,
    /// When the current run started, Unix seconds.
    pub started_at: Option<i64>,
    pub restart_count: u32,
    pub last_exit: Option<LastExit>,
    /// The container's cgroup, relative to the cgroup root.
    pub cgroup: String,
    /// Its own figures, with the pod's usage.
    pub usage: Option<ContainerUsage>,
}

/// Where a container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Running,
    /// Its start is under way.
    Creating,
    /// In a restart back-off.
    Waiting,
    Terminated,
}

/// How a container's last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastExit {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, …
    pub reason: String,
    pub message: Option<String>,
    /// Unix seconds.
    pub finished_at: i64,
}

/// The short status sent for an instance without a pod record: only the
/// keys that say what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShortStatus {
    pub app_id: String,
    #[serde(
        serialize_with = "serialize_state",
        deserialize_with = "deserialize_state"
    )]
    pub state: ResourceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// The pod's last events, with its end (a pod deleted from its node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<LifecycleEvent>,
}

impl ShortStatus {
    /// An instance refused before it had a record (invalid id or
    /// definition): FAILED, with why.
    pub fn refused(instance_id: &str, reason: String) -> Self {
        ShortStatus {
            app_id: instance_id.to_string(),
            state: ResourceStatus::Failed,
            reason: Some(reason),
            runs_on: None,
            history: Vec::new(),
        }
    }

    /// The answer to a DESTROY of an instance this node does not run: it is
    /// TERMINATED, as far as this node is concerned.
    pub fn not_running(instance_id: &str) -> Self {
        ShortStatus {
            app_id: instance_id.to_string(),
            state: ResourceStatus::Terminated,
            reason: None,
            runs_on: None,
            history: Vec::new(),
        }
    }

    /// A pod deleted from `node`: TERMINATED, its record gone; its last
    /// events.
    pub fn destroyed(instance_id: &str, node: &str, history: Vec<LifecycleEvent>) -> Self {
        ShortStatus {
            runs_on: Some(node.to_string()),
            history,
            ..ShortStatus::not_running(instance_id)
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> String {
        super::to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    /// A full status as the riklet sends it: a measured pod with two
    /// containers, one running, one in a restart back-off.
    const APP_STATUS: &str = r#"{"app":"web","appId":"web-1","containers":[{"cgroup":"riklet/web-1_main","containerId":"web-1_main","image":"docker.io/library/nginx:1.25","imageDigest":"sha256:ab","lastExit":null,"message":null,"name":"main","pid":11,"reason":null,"restartCount":1,"startedAt":1700000000,"state":"running","usage":{"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageSeconds":2.5},"memory":{"failcnt":3,"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"txBytes":200,"txPackets":2},"pids":4}},{"cgroup":"riklet/web-1_side","containerId":null,"image":null,"imageDigest":null,"lastExit":{"exitCode":1,"finishedAt":1700000001,"message":"boom","reason":"Error","signal":null},"message":"back-off 10s restarting failed container","name":"side","pid":null,"reason":"CrashLoopBackOff","restartCount":2,"startedAt":null,"state":"waiting","usage":null}],"cpu":{"oncpuSeconds":2.0,"throttledSeconds":0.25,"usageCores":0.5,"usageSeconds":2.5},"createdAt":1699999999,"deployment":{"app":"web","repository":"docker.io/library/nginx","version":"1.25"},"events":[{"at":1700000000,"container":"main","pid":42,"type":"OOMKill"}],"history":[{"at":1700000000123,"container":"main","message":"Started container main","reason":"Started","seq":1,"type":"Normal"}],"hostNetwork":true,"internalIp":"10.1.0.2","memory":{"limitBytes":1048576,"oomKills":1,"usageBytes":4096,"workingSetBytes":2048},"network":{"rxBytes":100,"rxPackets":1,"tcpRetransmits":7,"txBytes":200,"txPackets":2},"reason":null,"restartCount":3,"runqueue":{"count":3,"meanSeconds":1e-6},"runsOn":"node-a","state":"RUNNING"}"#;

    /// A pod not measured yet.
    const UNMEASURED: &str = r#"{"app":"web","appId":"web-2","containers":[{"cgroup":"riklet/web-2_main","containerId":null,"image":null,"imageDigest":null,"lastExit":null,"message":null,"name":"main","pid":null,"reason":"ContainerCreating","restartCount":0,"startedAt":null,"state":"creating","usage":null}],"cpu":null,"createdAt":1699999999,"deployment":{"app":"web","repository":"/bin/sleep","version":""},"events":[],"history":[],"hostNetwork":false,"internalIp":null,"memory":null,"network":null,"reason":"CrashLoopBackOff","restartCount":0,"runqueue":null,"runsOn":"node-a","state":"CREATING"}"#;

    #[test]
    fn app_status_round_trips() {
        for fixture in [APP_STATUS, UNMEASURED] {
            let (got, want) = round_trip::<AppStatus>(fixture);
            assert_eq!(got, want);
        }
        // Keys in alphabetical order, as riklets have always sent them.
        assert_eq!(AppStatus::from_json(APP_STATUS).to_json(), APP_STATUS);
    }

    #[test]
    fn short_forms() {
        let refused = ShortStatus::refused("x-1", "bad".into());
        assert_eq!(
            refused.to_json(),
            r#"{"appId":"x-1","reason":"bad","state":"FAILED"}"#
        );
        assert_eq!(
            ShortStatus::not_running("x-1").to_json(),
            r#"{"appId":"x-1","state":"TERMINATED"}"#
        );
        let destroyed = r#"{"appId":"x-1","runsOn":"node-1","state":"TERMINATED"}"#;
        assert_eq!(
            ShortStatus::destroyed("x-1", "node-1", Vec::new()).to_json(),
            destroyed
        );
        for fixture in [destroyed, &refused.to_json()] {
            let (got, want) = round_trip::<ShortStatus>(fixture);
            assert_eq!(got, want);
        }
        // A reader takes them as statuses with the rest unknown.
        let read = AppStatus::from_json(&refused.to_json());
        assert_eq!(read.realtime.state, ResourceStatus::Failed);
        assert_eq!(read.reason.as_deref(), Some("bad"));
        assert_eq!(read.realtime.created_at, None);
    }

    #[test]
    fn reading_is_lenient() {
        // Unknown keys are ignored; odd ones read as unknown without hiding
        // the others.
        let read = AppStatus::from_json(
            r#"{"appId":"a-1","state":"RUNNING","restartCount":null,"internalIp":"10.0.0.5",
                "cpu":{"usage":1.5,"usageCores":"fast"},"containers":3,"extra":{"x":1},
                "deployment":{"app":"a"}}"#,
        );
        assert_eq!(read.realtime.app_id, "a-1");
        assert_eq!(read.realtime.restart_count, 0);
        assert_eq!(read.realtime.internal_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(read.cpu, None);
        assert!(read.containers.is_empty());
        assert_eq!(read.realtime.deployment, None);
        assert_eq!(AppStatus::from_json("not json"), AppStatus::default());
        assert_eq!(
            AppStatus::from_json(r#"{"state":"SLEEPING"}"#)
                .realtime
                .state,
            ResourceStatus::Unknown
        );
    }
}
