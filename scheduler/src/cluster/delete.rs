//! Deleting an app, the way Kubernetes deletes a pod: the app stays,
//! *Terminating*, while its pods stop on their nodes (their grace
//! period), and goes when the last one reports TERMINATED. An instance
//! that is not placed, or whose node is not connected, goes at once (a
//! node that comes back with it is told to destroy it).

use tracing::info;

use super::{ClusterError, Outbox, State, destroy_msg, unix_now};

impl State {
    /// Deletes an app: `DESTROY` to the nodes of its instances, which it
    /// waits for (Terminating); returns the names of those nodes. Deleting
    /// an app that is already being deleted sends nothing again.
    pub fn delete(&mut self, name: &str) -> Result<Vec<String>, ClusterError> {
        let Some(app) = self.store.data().apps.get(name) else {
            return Err(ClusterError::AppNotFound(name.to_string()));
        };
        let definition = app.manifest.to_definition();
        if app.deleting_since.is_some() {
            return Ok(self.nodes_of(name));
        }
        let before = self.store.data().clone();
        let mut out = Outbox::new();
        let ids: Vec<(String, Option<String>)> = self
            .store
            .data()
            .instances_of(name)
            .map(|(id, i)| (id.clone(), i.node.clone()))
            .collect();
        for (id, node) in ids {
            match node {
                Some(node) if self.nodes.is_connected(&node) => {
                    out.push((node, destroy_msg(&id, definition.clone())));
                }
                _ => self.remove_instance(&id, &definition, &mut out),
            }
        }
        if let Some(app) = self.store.data_mut().apps.get_mut(name) {
            app.deleting_since = Some(unix_now());
        }
        self.mark_changed(name);
        self.finish_delete_if_done(name);
        let staged = self.stage_changes();
        self.save_or_roll_back(before, name, "delete")?;
        self.publish(staged);
        let mut nodes: Vec<String> = out.iter().map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        info!(app = %name, nodes = ?nodes, "app deleted, its pods stopping");
        self.deliver(out);
        Ok(nodes)
    }

    /// The definition of `app` if it is being deleted.
    pub(super) fn deleting_definition(&self, app: &str) -> Option<String> {
        let record = self.store.data().apps.get(app)?;
        record
            .deleting_since
            .map(|_| record.manifest.to_definition())
    }

    /// Forgets the instances of apps being deleted that run on `nodes`
    /// (lost: a node that comes back with one is told to destroy it).
    pub(super) fn drop_deleting_on(&mut self, nodes: &[String]) {
        let lost: Vec<(String, String)> = self
            .store
            .data()
            .instances
            .iter()
            .filter(|(_, i)| i.node.as_ref().is_some_and(|n| nodes.contains(n)))
            .filter(|(_, i)| self.deleting_definition(&i.app).is_some())
            .map(|(id, i)| (id.clone(), i.app.clone()))
            .collect();
        for (id, app) in lost {
            self.store.data_mut().instances.remove(&id);
            self.mark_changed(&app);
            self.finish_delete_if_done(&app);
        }
    }

    /// Removes an app being deleted once it has no instance left.
    pub(super) fn finish_delete_if_done(&mut self, app: &str) {
        let data = self.store.data();
        let deleting = data
            .apps
            .get(app)
            .is_some_and(|a| a.deleting_since.is_some());
        if !deleting || data.instances_of(app).next().is_some() {
            return;
        }
        self.keep_last_state(app);
        let data = self.store.data_mut();
        data.apps.remove(app);
        data.events.remove(app);
        self.mark_changed(app);
        info!(app = %app, "app gone");
    }

    /// The nodes the instances of `app` are on.
    fn nodes_of(&self, app: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .store
            .data()
            .instances_of(app)
            .filter_map(|(_, i)| i.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proto::common::{ResourceStatus, WorkloadRequestKind};

    use super::*;
    use crate::store::Store;

    const APP: &str = "kind: Pod\nname: web\nreplicas: 2\nspec:\n  containers:\n    - {name: c, exec: /bin/true}\n";

    fn actions(rx: &mut crate::nodes::Receiver) -> Vec<WorkloadRequestKind> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| WorkloadRequestKind::try_from(m.action).unwrap())
            .collect()
    }

    #[test]
    fn an_app_terminates_until_its_pods_are_gone_or_their_node_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::new(Store::open(dir.path()).unwrap());
        let stale = Duration::from_secs(20);
        let (_s1, mut rx1) = state.register("n1", stale).unwrap();
        state.worker_status("n1", "", ResourceStatus::Running, "{}".into());
        let (s2, mut rx2) = state.register("n2", stale).unwrap();
        state.worker_status("n2", "", ResourceStatus::Running, "{}".into());
        let ids = state.apply(APP).unwrap().instance_ids;
        actions(&mut rx1);
        actions(&mut rx2);

        let mut nodes = state.delete("web").unwrap();
        nodes.sort();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(actions(&mut rx1), [WorkloadRequestKind::Destroy]);
        assert_eq!(actions(&mut rx2), [WorkloadRequestKind::Destroy]);
        assert!(state.store().data().apps["web"].deleting_since.is_some());
        assert!(matches!(
            state.apply(APP),
            Err(ClusterError::AppDeleting(_))
        ));
        // Deleting again sends nothing more.
        state.delete("web").unwrap();
        assert!(actions(&mut rx1).is_empty());

        // n1's pod is gone; n2 is lost with its pod: the app goes.
        let on = |node: &str| {
            ids.iter()
                .find(|id| state.store().data().instances[*id].node.as_deref() == Some(node))
                .unwrap()
                .clone()
        };
        let (first, second) = (on("n1"), on("n2"));
        state.instance_status("n1", "", &first, ResourceStatus::Terminated, "{}".into());
        assert!(state.store().data().apps.contains_key("web"));
        assert!(!state.store().data().instances.contains_key(&first));
        state.disconnected("n2", s2);
        assert!(!state.store().data().apps.contains_key("web"));
        assert!(!state.store().data().instances.contains_key(&second));
        assert!(state.store().data().events.is_empty());
    }
}
