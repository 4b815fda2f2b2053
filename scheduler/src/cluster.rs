//! The scheduler's state (store + node registry) and every operation on it.
//!
//! All state sits behind one `tokio::sync::Mutex` in [`Cluster`]. Operations
//! are plain synchronous methods of [`State`]: they change the store and the
//! registry, run placement, and then queue `InstanceScheduling` messages on
//! the nodes' `Register` streams (unbounded channels, so nothing awaits while
//! the lock is held). The gRPC services only translate wire types.
//! The `apply` submodule holds `Apply`, which creates and changes apps;
//! `delete` deletes them (Terminating until their pods are gone);
//! `revisions` gives each change its revision and serves watches.
//!
//! Persistence: an apply or a delete is saved before it is acknowledged (and
//! rolled back if the save fails); status reports and placements made on
//! node events mark the store dirty and are flushed by a background task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::common::{ResourceStatus, WorkloadRequestKind};
use proto::manifest::ManifestError;
use proto::rik::v1::App;
use proto::worker::InstanceScheduling;
use rand::Rng;
use tokio::sync::{Mutex, MutexGuard};
use tracing::{debug, error, info, warn};

pub use apply::{ApplyOutcome, ApplyResult};
pub use revisions::{WatchNext, WatchStart};

use crate::nodes::{self, Nodes, RegisterError};
use crate::placement::{self, Slot};
use crate::store::{Data, InstanceRecord, Store, StoreError};
use crate::watchers::Watchers;

mod apply;
mod delete;
mod reports;
mod revisions;

/// Length of the random suffix of instance ids (`<app>-xxxxx`).
const ID_SUFFIX_LEN: usize = 5;
const ID_CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A failed API operation.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `Apply` got a manifest that does not parse or validate.
    #[error("invalid manifest")]
    InvalidManifest(#[from] ManifestError),
    /// The manifest exposes a port that is taken.
    #[error("invalid manifest: {field}: port {port} is already held by {holder}")]
    PortTaken {
        /// Where in the manifest (`spec.containers[0].ports[1].port`).
        field: String,
        /// `18580/TCP`.
        port: String,
        /// `app "web"`, or the riklet listener of a node.
        holder: String,
    },
    /// No app has this name.
    #[error("app {0} not found")]
    AppNotFound(String),
    /// `Apply` of an app that is being deleted.
    #[error("app {0} is being deleted (Terminating); apply it again once it is gone")]
    AppDeleting(String),
    /// The change could not be saved, so it was not made.
    #[error("cannot save the scheduler state, nothing was changed")]
    Store(#[from] StoreError),
    /// A watch asked to resume from a revision whose changes can no longer
    /// be replayed exactly.
    #[error(
        "cannot resume the watch from revision {since}: changes up to revision {compacted} \
         can no longer be replayed; list again (since_revision 0)"
    )]
    RevisionCompacted { since: u64, compacted: u64 },
    /// A watch asked to resume from a revision this scheduler never had
    /// (its state was reset or lost).
    #[error(
        "cannot resume the watch from revision {since}: the scheduler is at revision {current} \
         (its state was reset); list again (since_revision 0)"
    )]
    RevisionAhead { since: u64, current: u64 },
    /// The scheduler is stopping.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

/// Messages to queue on nodes' `Register` streams: `(node, message)`.
type Outbox = Vec<(String, InstanceScheduling)>;

/// Current time in Unix seconds.
pub fn unix_now() -> i64 {
    unix_secs(SystemTime::now())
}

/// `t` in Unix seconds (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn destroy_msg(instance_id: &str, definition: String) -> InstanceScheduling {
    InstanceScheduling {
        instance_id: instance_id.to_string(),
        // RIK's riklet reads the definition on DESTROY too: send it when known.
        definition,
        action: WorkloadRequestKind::Destroy as i32,
    }
}

/// A new instance id `<app>-<5 × [a-z0-9]>` not yet in use.
fn new_instance_id(app: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    loop {
        let suffix: String = (0..ID_SUFFIX_LEN)
            .map(|_| char::from(ID_CHARSET[rng.random_range(0..ID_CHARSET.len())]))
            .collect();
        let id = format!("{app}-{suffix}");
        if !taken(&id) {
            return id;
        }
    }
}

/// The shared scheduler state.
#[derive(Debug)]
pub struct Cluster {
    state: Mutex<State>,
    /// A ready node silent for longer than this is marked not ready.
    pub heartbeat_timeout: Duration,
    /// The scheduler's client TLS for the node APIs of nodes that
    /// registered with a certificate; `None` without TLS.
    pub node_api_tls: Option<rik_tls::ClientTls>,
}

impl Cluster {
    pub fn new(store: Store, heartbeat_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State::new(store)),
            heartbeat_timeout,
            node_api_tls: None,
        }
    }

    /// Locks the state.
    pub async fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().await
    }
}

/// Store, node registry, and the operations that keep them consistent.
#[derive(Debug)]
pub struct State {
    store: Store,
    nodes: Nodes,
    /// Set at shutdown: streams ending then are not node losses.
    shutting_down: bool,
    /// The open watches.
    watchers: Watchers,
    /// Apps changed by the operation under way (see `revisions`).
    changed: BTreeSet<String>,
    /// Last states of the apps the operation under way deletes.
    last_states: BTreeMap<String, Arc<App>>,
}

impl State {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            nodes: Nodes::default(),
            shutting_down: false,
            watchers: Watchers::default(),
            changed: BTreeSet::new(),
            last_states: BTreeMap::new(),
        }
    }

    /// The app store (read only).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node registry (read only).
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    // ---- API operations (`Apply` is in the `apply` module) -------------

    /// Saves the store, or puts `before` back if that fails: then the
    /// `operation` on `app` changed nothing.
    fn save_or_roll_back(
        &mut self,
        before: Data,
        app: &str,
        operation: &str,
    ) -> Result<(), ClusterError> {
        if let Err(e) = self.store.save() {
            self.store.restore(before);
            error!(app = %app, error = %proto::error_chain(&e), "{operation} not saved, rolled back");
            return Err(e.into());
        }
        Ok(())
    }

    // ---- node events -----------------------------------------------------

    /// A riklet calls `Register`. Returns the session id and the receiver
    /// feeding its stream. The node is not ready until it reports RUNNING.
    pub fn register(
        &mut self,
        hostname: &str,
        stale_after: Duration,
    ) -> Result<(u64, nodes::Receiver), RegisterError> {
        if self.shutting_down {
            return Err(RegisterError::ShuttingDown);
        }
        let was_ready = self.nodes.get(hostname).is_some_and(|n| n.ready);
        let registered = self.nodes.register(hostname, stale_after)?;
        info!(node = %hostname, session = registered.0, "node registered, waiting for its RUNNING status");
        if was_ready {
            // Took over a silent connection: its instances wait for the node
            // to be ready again, or move.
            let out = self.nodes_lost(&[hostname.to_string()]);
            self.commit_changes();
            self.deliver(out);
        }
        Ok(registered)
    }

    /// Whether `hostname`'s node API speaks TLS (it registered with its
    /// certificate).
    pub fn set_api_tls(&mut self, hostname: &str, tls: bool) {
        if let Some(node) = self.nodes.get_mut(hostname) {
            node.api_tls = tls;
        }
    }

    /// The `Register` stream of `session` ended: the node is disconnected and
    /// not ready at once, and its instances are re-placed.
    pub fn disconnected(&mut self, hostname: &str, session: u64) {
        if self.shutting_down || !self.nodes.disconnect(hostname, session) {
            return;
        }
        warn!(node = %hostname, session, "node disconnected");
        let out = self.nodes_lost(&[hostname.to_string()]);
        self.commit_changes();
        self.deliver(out);
    }

    /// Marks not ready every node silent for longer than `timeout`.
    pub fn expire_stale(&mut self, timeout: Duration) {
        let lost = self.nodes.expire(Instant::now(), timeout);
        if lost.is_empty() {
            return;
        }
        for node in &lost {
            warn!(node = %node, timeout = ?timeout, "no heartbeat within the timeout, node not ready");
        }
        let out = self.nodes_lost(&lost);
        self.commit_changes();
        self.deliver(out);
    }

    /// A `WorkerMetric` from `hostname`. RUNNING makes the node ready: every
    /// instance assigned to it is (re)sent as CREATE, then placement runs.
    /// Any other status makes it not ready.
    pub fn worker_status(
        &mut self,
        hostname: &str,
        host_address: &str,
        status: ResourceStatus,
        metrics: String,
    ) {
        let Some(node) = self.touch(hostname, host_address) else {
            return;
        };
        node.metrics = metrics;
        let running = status == ResourceStatus::Running;
        let out = if running && !node.ready {
            node.ready = true;
            info!(node = %hostname, "node ready");
            // Instances of an app being deleted are destroyed again: the
            // node may have missed the DESTROY.
            let mut out: Outbox = self
                .store
                .data()
                .instances
                .iter()
                .filter(|(_, i)| i.node.as_deref() == Some(hostname))
                .filter_map(|(id, i)| match self.deleting_definition(&i.app) {
                    Some(definition) => Some(destroy_msg(id, definition)),
                    None => self.create_msg(id),
                })
                .map(|msg| (hostname.to_string(), msg))
                .collect();
            out.extend(self.place());
            out
        } else if !running && node.ready {
            node.ready = false;
            warn!(node = %hostname, status = proto::status::name(status), "node reports it is not running, node not ready");
            self.nodes_lost(&[hostname.to_string()])
        } else {
            Vec::new()
        };
        self.commit_changes();
        self.deliver(out);
    }

    /// An `InstanceMetric` from `hostname`. Stored when the instance is
    /// assigned to that node; otherwise the node is told to destroy it (see
    /// `report_elsewhere`).
    pub fn instance_status(
        &mut self,
        hostname: &str,
        host_address: &str,
        instance_id: &str,
        status: ResourceStatus,
        metrics: String,
    ) {
        if self.touch(hostname, host_address).is_none() {
            return;
        }
        let now = unix_now();
        let known = self.store.data().instances.get(instance_id);
        match known {
            Some(i) if i.node.as_deref() == Some(hostname) => {
                let app = i.app.clone();
                self.store_report(hostname, &app, instance_id, status, metrics, now);
            }
            _ => self.report_elsewhere(hostname, instance_id, status),
        }
    }

    // ---- persistence and shutdown --------------------------------------

    /// Saves the store if it changed; a failure is logged and retried at
    /// the next flush.
    pub fn flush(&mut self) {
        if self.store.is_dirty()
            && let Err(e) = self.store.save()
        {
            error!(error = %proto::error_chain(&e), "cannot save the scheduler state, will retry");
        }
    }

    /// Ends every `Register` stream (the nodes see the scheduler go away)
    /// and every watch without treating it as node losses, and saves the
    /// store.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.nodes.disconnect_all();
        self.watchers.close_all();
        self.flush();
    }

    /// The last save, once nothing changes any more: tells the next start
    /// that no revision was lost (see [`Store::close`]).
    pub fn close(&mut self) {
        if let Err(e) = self.store.close() {
            error!(error = %proto::error_chain(&e), "cannot save the scheduler state at stop");
        }
    }

    // ---- internals -------------------------------------------------------

    /// Records a message from a connected node; `None` (message ignored) if
    /// the node is not connected.
    fn touch(&mut self, hostname: &str, host_address: &str) -> Option<&mut nodes::Node> {
        let Some(node) = self.nodes.connected_mut(hostname) else {
            debug!(node = %hostname, "status from a node that is not registered, ignored");
            return None;
        };
        node.last_seen = SystemTime::now();
        node.last_seen_at = Instant::now();
        if !host_address.is_empty() && node.host_address != host_address {
            info!(node = %hostname, host_address, "node API address");
            node.host_address = host_address.to_string();
        }
        Some(node)
    }

    fn create_msg(&self, instance_id: &str) -> Option<InstanceScheduling> {
        let data = self.store.data();
        let inst = data.instances.get(instance_id)?;
        let app = data.apps.get(&inst.app)?;
        Some(InstanceScheduling {
            instance_id: instance_id.to_string(),
            definition: app.manifest.to_definition(),
            action: WorkloadRequestKind::Create as i32,
        })
    }

    fn add_instances(&mut self, app: &str, count: usize, now: i64) {
        let data = self.store.data_mut();
        for _ in 0..count {
            let id = new_instance_id(app, |id| data.instances.contains_key(id));
            data.instances.insert(
                id,
                InstanceRecord {
                    app: app.to_string(),
                    node: None,
                    status: ResourceStatus::Pending,
                    metrics: String::new(),
                    updated_at: now,
                    shown: String::new(),
                },
            );
        }
    }

    /// The `count` instances of `app` to remove on a scale-down: unplaced or
    /// on a node that is not ready first, then those not running, then the
    /// highest ids.
    fn scale_down_victims(&self, app: &str, count: usize) -> Vec<String> {
        let mut candidates: Vec<(bool, bool, std::cmp::Reverse<&String>)> = self
            .store
            .data()
            .instances_of(app)
            .map(|(id, i)| {
                let on_ready = i
                    .node
                    .as_deref()
                    .and_then(|n| self.nodes.get(n))
                    .is_some_and(|n| n.ready);
                (
                    on_ready,
                    i.status == ResourceStatus::Running,
                    std::cmp::Reverse(id),
                )
            })
            .collect();
        candidates.sort();
        candidates
            .into_iter()
            .take(count)
            .map(|(_, _, id)| id.0.clone())
            .collect()
    }

    /// Removes every instance of `app` (a DESTROY with `definition` to the
    /// nodes that run them); returns how many there were.
    fn remove_instances_of(&mut self, app: &str, definition: &str, out: &mut Outbox) -> usize {
        let ids: Vec<String> = self
            .store
            .data()
            .instances_of(app)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.remove_instance(id, definition, out);
        }
        ids.len()
    }

    fn remove_instance(&mut self, id: &str, definition: &str, out: &mut Outbox) {
        let data = self.store.data_mut();
        let Some(inst) = data.instances.remove(id) else {
            return;
        };
        if let Some(events) = data.events.get_mut(&inst.app) {
            events.forget_instance(id);
        }
        if let Some(node) = inst.node {
            out.push((node, destroy_msg(id, definition.to_string())));
        }
    }

    /// `names` are no longer ready: their instances are PENDING until their
    /// node is back or placement moves them.
    fn nodes_lost(&mut self, names: &[String]) -> Outbox {
        self.drop_deleting_on(names);
        let now = unix_now();
        let mut changed = BTreeSet::new();
        for inst in self.store.data_mut().instances.values_mut() {
            if inst.node.as_ref().is_some_and(|n| names.contains(n)) {
                if inst.status != ResourceStatus::Pending {
                    changed.insert(inst.app.clone());
                }
                inst.status = ResourceStatus::Pending;
                inst.updated_at = now;
            }
        }
        self.changed.append(&mut changed);
        self.place()
    }

    /// Runs placement and applies its moves: CREATE on the new node, DESTROY
    /// on the old one if it is still connected.
    fn place(&mut self) -> Outbox {
        let moves = {
            let ready = self.nodes.ready_names();
            let slots: Vec<Slot> = self
                .store
                .data()
                .instances
                .iter()
                // An app being deleted waits for its pods where they are.
                .filter(|(_, i)| self.deleting_definition(&i.app).is_none())
                .map(|(id, i)| Slot {
                    instance: id,
                    app: &i.app,
                    node: i.node.as_deref(),
                })
                .collect();
            placement::place(&ready, &slots)
        };
        let now = unix_now();
        let mut out = Outbox::new();
        for m in moves {
            let inst = self
                .store
                .data_mut()
                .instances
                .get_mut(&m.instance)
                .expect("placement returns known instances");
            inst.node = Some(m.to.clone());
            inst.status = ResourceStatus::Pending;
            inst.metrics.clear();
            inst.updated_at = now;
            info!(app = %inst.app, instance = %m.instance, node = %m.to, from = ?m.from, "instance placed");
            let app = inst.app.clone();
            self.mark_changed(&app);
            let Some(create) = self.create_msg(&m.instance) else {
                continue;
            };
            if let Some(from) = m.from
                && self.nodes.is_connected(&from)
            {
                out.push((from, destroy_msg(&m.instance, create.definition.clone())));
            }
            out.push((m.to, create));
        }
        out
    }

    fn deliver(&self, out: Outbox) {
        for (node, msg) in out {
            let action = WorkloadRequestKind::try_from(msg.action).map_or("?", |a| a.as_str_name());
            let instance = msg.instance_id.clone();
            if self.nodes.send(&node, msg) {
                info!(node = %node, instance = %instance, action, "sent to node");
            } else {
                debug!(node = %node, instance = %instance, action, "node not connected, message dropped (resent when it is ready)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(20);

    fn manifest(name: &str, replicas: u32, exec: &str) -> String {
        format!(
            "kind: Pod\nname: {name}\nreplicas: {replicas}\nspec:\n  containers:\n    - {{name: c, exec: {exec}}}\n"
        )
    }

    fn drain(rx: &mut nodes::Receiver) -> Vec<(String, WorkloadRequestKind)> {
        let mut v = Vec::new();
        while let Ok(m) = rx.try_recv() {
            v.push((
                m.instance_id,
                WorkloadRequestKind::try_from(m.action).unwrap(),
            ));
        }
        v
    }

    fn ready_node(state: &mut State, name: &str) -> nodes::Receiver {
        let (_, rx) = state.register(name, STALE).unwrap();
        state.worker_status(name, "", ResourceStatus::Running, "{}".into());
        rx
    }

    #[test]
    fn instance_ids_have_the_documented_shape() {
        let id = new_instance_id("web", |_| false);
        let suffix = id.strip_prefix("web-").unwrap();
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn apply_scale_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let mut rx1 = ready_node(&mut state, "n1");
        let mut rx2 = ready_node(&mut state, "n2");

        let created = state.apply(&manifest("web", 2, "/bin/true")).unwrap();
        assert_eq!(created.result, ApplyResult::Created);
        assert_eq!(created.instance_ids.len(), 2);
        // One replica per node.
        let (c1, c2) = (drain(&mut rx1), drain(&mut rx2));
        assert_eq!((c1.len(), c2.len()), (1, 1));
        assert!(
            c1.iter()
                .chain(&c2)
                .all(|(_, a)| *a == WorkloadRequestKind::Create)
        );

        let same = state.apply(&manifest("web", 2, "/bin/true")).unwrap();
        assert_eq!(same.result, ApplyResult::Unchanged);
        assert_eq!(same.instance_ids, created.instance_ids);

        let scaled = state.apply(&manifest("web", 3, "/bin/true")).unwrap();
        assert_eq!(scaled.result, ApplyResult::Updated);
        assert_eq!(scaled.instance_ids.len(), 3);
        assert!(
            created
                .instance_ids
                .iter()
                .all(|id| scaled.instance_ids.contains(id))
        );
        assert_eq!(drain(&mut rx1).len() + drain(&mut rx2).len(), 1);

        let down = state.apply(&manifest("web", 1, "/bin/true")).unwrap();
        assert_eq!(down.instance_ids.len(), 1);
        let destroyed: Vec<_> = drain(&mut rx1).into_iter().chain(drain(&mut rx2)).collect();
        assert_eq!(destroyed.len(), 2);
        assert!(
            destroyed
                .iter()
                .all(|(_, a)| *a == WorkloadRequestKind::Destroy)
        );

        let replaced = state.apply(&manifest("web", 1, "/bin/false")).unwrap();
        assert_eq!(replaced.result, ApplyResult::Updated);
        assert_ne!(replaced.instance_ids, down.instance_ids);
        let msgs: Vec<_> = drain(&mut rx1).into_iter().chain(drain(&mut rx2)).collect();
        assert!(msgs.contains(&(down.instance_ids[0].clone(), WorkloadRequestKind::Destroy)));
        assert!(msgs.contains(&(
            replaced.instance_ids[0].clone(),
            WorkloadRequestKind::Create
        )));

        assert!(matches!(
            state.apply("kind: Pod\nname: Bad\n"),
            Err(ClusterError::InvalidManifest(_))
        ));
        assert!(matches!(
            state.delete("nope"),
            Err(ClusterError::AppNotFound(_))
        ));
    }

    #[test]
    fn a_port_held_by_another_app_or_a_riklet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let (_s1, _rx1) = state.register("n1", STALE).unwrap();
        state.worker_status("n1", "10.0.0.5:4996", ResourceStatus::Running, "{}".into());
        let app = |name: &str, ports: &str| {
            format!(
                "kind: Pod\nname: {name}\nspec:\n  containers:\n  - name: c\n    exec: /bin/true\n    ports: {ports}\n"
            )
        };
        state
            .apply(&app("web", "{port: 18580, target_port: 8080}"))
            .unwrap();
        // The owner may change its own app.
        state
            .apply(&app("web", "{port: 18580, target_port: 8081}"))
            .unwrap();
        let err = state
            .apply(&app("api", "[{port: 1, protocol: UDP}, {port: 18580}]"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid manifest: spec.containers[0].ports[1].port: port 18580/TCP is already held by app \"web\""
        );
        assert!(
            !state.store().data().apps.contains_key("api"),
            "nothing created"
        );
        state
            .apply(&app("api", "{port: 18580, protocol: UDP}"))
            .unwrap();
        let err = state.apply(&app("thief", "{port: 4996}")).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("port 4996/TCP is already held by the riklet node API of node \"n1\""),
            "{err}"
        );
        // Deleting the owner frees the port.
        state.delete("web").unwrap();
        state.apply(&app("other", "{port: 18580}")).unwrap();
    }

    #[test]
    fn lost_node_moves_instances_when_another_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let (s1, _rx1) = state.register("n1", STALE).unwrap();
        state.worker_status("n1", "", ResourceStatus::Running, "{}".into());
        let id = state
            .apply(&manifest("web", 1, "/bin/true"))
            .unwrap()
            .instance_ids[0]
            .clone();

        // Alone: the instance stays on n1, PENDING.
        state.disconnected("n1", s1);
        let inst = &state.store().data().instances[&id];
        assert_eq!(inst.node.as_deref(), Some("n1"));
        assert_eq!(inst.status, ResourceStatus::Pending);

        // Another node becomes ready: the instance moves there.
        let mut rx2 = ready_node(&mut state, "n2");
        assert_eq!(drain(&mut rx2), [(id.clone(), WorkloadRequestKind::Create)]);
        assert_eq!(
            state.store().data().instances[&id].node.as_deref(),
            Some("n2")
        );

        // n1 comes back and reports the instance: it is told to destroy it.
        let mut rx1 = ready_node(&mut state, "n1");
        assert!(drain(&mut rx1).is_empty());
        state.instance_status("n1", "", &id, ResourceStatus::Running, String::new());
        assert_eq!(
            drain(&mut rx1),
            [(id.clone(), WorkloadRequestKind::Destroy)]
        );
        // The TERMINATED that answers the DESTROY ends the exchange.
        state.instance_status("n1", "", &id, ResourceStatus::Terminated, String::new());
        assert!(drain(&mut rx1).is_empty());

        // n1 comes back again with the pod completed (reported TERMINATED,
        // still on the node): it is destroyed too; DESTROYING gets the
        // DESTROY again, as always; the TERMINATED after it ends the
        // exchange.
        let session = state.nodes().get("n1").unwrap().session;
        state.disconnected("n1", session);
        let mut rx1 = ready_node(&mut state, "n1");
        let destroy = [(id.clone(), WorkloadRequestKind::Destroy)];
        state.instance_status("n1", "", &id, ResourceStatus::Terminated, String::new());
        assert_eq!(drain(&mut rx1), destroy);
        state.instance_status("n1", "", &id, ResourceStatus::Destroying, String::new());
        assert_eq!(drain(&mut rx1), destroy);
        state.instance_status("n1", "", &id, ResourceStatus::Terminated, String::new());
        assert!(drain(&mut rx1).is_empty());
    }

    #[test]
    fn heartbeat_timeout_marks_nodes_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let _rx = ready_node(&mut state, "n1");
        state.expire_stale(STALE);
        assert!(state.nodes().get("n1").unwrap().ready);
        state.expire_stale(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        state.expire_stale(Duration::ZERO);
        assert!(!state.nodes().get("n1").unwrap().ready);
    }
}
