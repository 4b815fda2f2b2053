//! How other tasks talk to the agent: the events it handles one at a
//! time, a cheap handle to send them, and the status reports it sends.

use proto::common::ResourceStatus;
use proto::status::AppStatus;
use tokio::sync::{mpsc, oneshot, watch};

use super::host::{StartResult, StopOutcome};
use crate::metrics::collector::Target;
use crate::metrics::targets::PodsGeneration;
use crate::proxy::model::Endpoint;
use crate::state::{ExitRecord, RunRecord};

/// A pod's status as reported to the scheduler.
#[derive(Debug, Clone)]
pub struct InstanceReport {
    pub instance_id: String,
    pub status: ResourceStatus,
    /// Seed 004's realtime app object (JSON).
    pub metrics: String,
}

/// What the agent task reacts to.
#[derive(Debug)]
pub(super) enum Event {
    Create {
        instance_id: String,
        definition: String,
    },
    Destroy {
        instance_id: String,
    },
    Started {
        instance_id: String,
        container: String,
        result: StartResult,
    },
    Exited {
        instance_id: String,
        container: String,
        run: RunRecord,
        exit: ExitRecord,
    },
    RestartDue {
        instance_id: String,
        container: String,
    },
    /// A back-off that began a moment ago becomes visible.
    BackOffNoticed {
        instance_id: String,
        container: String,
        /// The restart the back-off leads to, Unix ms.
        restart_at: i64,
    },
    /// A start task tells of a step (pulling an image, pulled).
    Note {
        instance_id: String,
        container: String,
        reason: &'static str,
        message: String,
    },
    Stopped {
        instance_id: String,
        stop: StopOutcome,
    },
    RetryStop {
        instance_id: String,
    },
    RetryContainerd,
    Reports(oneshot::Sender<Vec<InstanceReport>>),
    Pods(oneshot::Sender<Vec<AppStatus>>),
    Targets(oneshot::Sender<Vec<Target>>),
}

impl Event {
    /// Whether handling the event may change the pods (and so the
    /// collector's targets): all but the queries.
    pub(super) fn may_change_pods(&self) -> bool {
        !matches!(self, Event::Reports(_) | Event::Pods(_) | Event::Targets(_))
    }
}

/// How a start task tells the agent of its steps ([`Event::Note`]).
#[derive(Debug, Clone)]
pub struct Notes {
    pub(super) tx: mpsc::UnboundedSender<Event>,
    pub(super) instance_id: String,
    pub(super) container: String,
}

impl Notes {
    /// Records an event of the container being started.
    pub fn note(&self, reason: &'static str, message: String) {
        let _ = self.tx.send(Event::Note {
            instance_id: self.instance_id.clone(),
            container: self.container.clone(),
            reason,
            message,
        });
    }
}

/// Cheap handle to talk to the agent task.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    pub(super) tx: mpsc::UnboundedSender<Event>,
    pub(super) endpoints: watch::Receiver<Option<Vec<Endpoint>>>,
    pub(super) generation: PodsGeneration,
}

impl AgentHandle {
    /// Asks for an instance to be created (idempotent).
    pub fn create(&self, instance_id: String, definition: String) {
        let _ = self.tx.send(Event::Create {
            instance_id,
            definition,
        });
    }

    /// Asks for an instance to be destroyed (idempotent).
    pub fn destroy(&self, instance_id: String) {
        let _ = self.tx.send(Event::Destroy { instance_id });
    }

    /// Current status of every pod.
    pub async fn reports(&self) -> Vec<InstanceReport> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Reports(tx));
        rx.await.unwrap_or_default()
    }

    /// Bumped after every event that may change the pods: the collector
    /// asks for [`targets`](Self::targets) again only when it moved.
    pub fn pods_generation(&self) -> PodsGeneration {
        self.generation.clone()
    }

    /// The containers of live pods, for the metrics collector.
    pub async fn targets(&self) -> Vec<Target> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Targets(tx));
        rx.await.unwrap_or_default()
    }

    /// The RUNNING pods with ports, updated as soon as that changes (for
    /// the Node Proxy); `None` until the agent has recovered its pods.
    pub fn endpoints(&self) -> watch::Receiver<Option<Vec<Endpoint>>> {
        self.endpoints.clone()
    }

    /// Detailed view of every pod (for `riklet pods`).
    pub async fn pods(&self) -> Vec<AppStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Event::Pods(tx));
        rx.await.unwrap_or_default()
    }
}
