//! What the Node Manager does to the node, as one trait.
//!
//! The agent decides (start, restart, back off, delete, adopt after a
//! crash); the [`PodHost`] carries the decisions out: cgroups, shims,
//! containerd, the pod network, files. Keeping every host effect behind
//! this trait lets the decisions be tested with a fake host that needs no
//! root; the real one is [`super::node::NodeHost`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;

use proto::manifest::Container;

use super::handle::Notes;
use crate::metrics::collector::Target;
use crate::runtime::containerd::{ContainerInfo, ContainerdError};
use crate::runtime::shim;
use crate::state::{ExitRecord, PodRecord, ProcId, RunRecord};

/// How a start ended: the run (and the cgroup's OOM kill count at its
/// start, for bare processes), or why there is none.
pub type StartResult = Result<(RunRecord, Option<u64>), ExitRecord>;

/// One container to start.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub instance_id: String,
    pub app: String,
    pub host_network: bool,
    pub container: Container,
    /// The container's restart count: the run's log file is
    /// `<restart_count>.log`.
    pub restart_count: u32,
    /// The app's log rotation limits (`spec.logs`), over the node's.
    pub logs: Option<proto::manifest::LogLimits>,
    /// Where the start tells of its steps (pulling, pulled).
    pub notes: Notes,
}

/// How a pod's stop went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Everything was removed; otherwise the stop is tried again.
    pub clean: bool,
    /// The containers that outlived the grace period and were killed.
    pub killed: Vec<String>,
}

/// One container of a pod being deleted.
#[derive(Debug, Clone)]
pub struct StopTarget {
    pub name: String,
    /// An image container (under containerd) rather than a bare process.
    pub image: bool,
    /// Its current run, if any.
    pub run: Option<RunRecord>,
}

/// What a bare process left on the node, read after a riklet restart.
#[derive(Debug, Clone, Default)]
pub struct ProcessTrace {
    /// What its shim recorded when it started it.
    pub started: Option<shim::Started>,
    /// The exit its shim recorded, if it ended.
    pub exit: Option<ExitRecord>,
}

/// Host effects of the Node Manager. Futures are `Send` so that the agent
/// can run them in tasks of their own.
pub trait PodHost: Send + Sync + 'static {
    /// Attaches the pod to its network (unless `hostNetwork`) and starts
    /// one container: a bare process behind its shim, or an image under
    /// containerd.
    fn start(&self, request: StartRequest) -> impl Future<Output = StartResult> + Send;

    /// Waits for a run to end and says how it ended.
    fn wait(
        &self,
        instance_id: &str,
        container: &str,
        run: &RunRecord,
    ) -> impl Future<Output = ExitRecord> + Send;

    /// OOM kills counted so far in a bare process's cgroup.
    fn oom_kills(&self, instance_id: &str, container: &str) -> Option<u64>;

    /// Stops every container of a pod and removes its containerd
    /// containers and its network.
    fn stop(
        &self,
        instance_id: &str,
        containers: Vec<StopTarget>,
    ) -> impl Future<Output = StopOutcome> + Send;

    /// Removes what a stopped pod keeps on the node (cgroups, run
    /// directory, logs unless they are kept); `true` when it is all gone,
    /// otherwise the delete is tried again.
    fn release(&self, pod: &PodRecord) -> bool;

    /// Whether a process recorded earlier is still the same live process.
    fn is_alive(&self, process: &ProcId) -> bool;

    /// What a bare process's shim left on disk.
    fn process_trace(&self, instance_id: &str, container: &str) -> ProcessTrace;

    /// Whether a pid is in a container's cgroup.
    fn in_cgroup(&self, instance_id: &str, container: &str, pid: i32) -> bool;

    /// Kills whatever is left in a container's cgroup.
    fn kill_container(&self, instance_id: &str, container: &str)
    -> impl Future<Output = ()> + Send;

    /// Removes cgroups, run directories and pod networks that belong to no
    /// pod of `pods` (instance → container names).
    fn remove_orphans(
        &self,
        pods: &HashMap<String, Vec<String>>,
    ) -> impl Future<Output = ()> + Send;

    /// Resolves once containerd answers (never, if it never does).
    fn containerd_connected(&self) -> impl Future<Output = ()> + Send;

    /// Containerd's containers in the riklet's namespace, and the keys of
    /// its container snapshots (empty if they cannot be listed).
    fn containerd_inventory(
        &self,
    ) -> impl Future<Output = Result<(Vec<ContainerInfo>, Vec<String>), ContainerdError>> + Send;

    /// Removes containerd containers, tasks and snapshots of unknown
    /// instances.
    fn remove_containers(&self, ids: Vec<String>) -> impl Future<Output = ()> + Send;

    /// The pod's address: its own, or the node's with `hostNetwork`.
    fn pod_ip(&self, pod: &PodRecord) -> Option<IpAddr>;

    /// A container's cgroup path, relative to the hierarchies' roots.
    fn cgroup_path(&self, instance_id: &str, container: &str) -> String;

    /// What the metrics collector measures: every container of these
    /// pods.
    fn targets(&self, pods: Vec<&PodRecord>) -> Vec<Target>;
}
