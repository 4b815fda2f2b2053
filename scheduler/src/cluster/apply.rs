//! `Apply`: creating an app, or changing it to a new manifest.

use proto::manifest::{AppManifest, Protocol};
use tracing::info;

use super::{ClusterError, Outbox, State, unix_now};
use crate::store::AppRecord;

/// What `Apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Created,
    Updated,
    Unchanged,
}

impl ApplyResult {
    /// The word in `ApplyResponse.result`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

/// Result of [`State::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub name: String,
    pub result: ApplyResult,
    /// Every instance of the app after the apply, sorted.
    pub instance_ids: Vec<String>,
    /// The store's revision right after the apply.
    pub revision: u64,
}

impl State {
    /// Creates or updates an app from a manifest. An invalid manifest
    /// changes nothing. Same manifest: unchanged. Only `replicas` changed:
    /// instances are added or removed. Anything else changed: every instance
    /// is replaced by a new one.
    pub fn apply(&mut self, text: &str) -> Result<ApplyOutcome, ClusterError> {
        let manifest = proto::manifest::parse(text)?;
        if self.deleting_definition(&manifest.name).is_some() {
            return Err(ClusterError::AppDeleting(manifest.name));
        }
        self.check_ports(&manifest)?;
        let name = manifest.name.clone();
        let now = unix_now();
        let before = self.store.data().clone();
        let mut out = Outbox::new();
        let result = match self.store.data().apps.get(&name).cloned() {
            None => {
                self.create_app(manifest, now);
                ApplyResult::Created
            }
            Some(app) if app.manifest == manifest => ApplyResult::Unchanged,
            Some(app) => {
                self.update_app(&app.manifest, manifest, now, &mut out);
                ApplyResult::Updated
            }
        };
        if result != ApplyResult::Unchanged {
            self.mark_changed(&name);
            out.extend(self.place());
            let staged = self.stage_changes();
            self.save_or_roll_back(before, &name, "apply")?;
            self.publish(staged);
            self.deliver(out);
        }
        let instance_ids = self
            .store
            .data()
            .instances_of(&name)
            .map(|(id, _)| id.clone())
            .collect();
        Ok(ApplyOutcome {
            name,
            result,
            instance_ids,
            revision: self.store.data().revision,
        })
    }

    /// A new app, with its instances (not placed yet).
    /// Refuses ports another app holds (any node may run both, and each
    /// node proxies a port to one app) and the port of a node's riklet API.
    fn check_ports(&self, manifest: &AppManifest) -> Result<(), ClusterError> {
        for (i, c) in manifest.spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().enumerate() {
                let taken = |holder: String| ClusterError::PortTaken {
                    field: format!("spec.containers[{i}].ports[{j}].port"),
                    port: format!("{}/{}", p.port, p.protocol),
                    holder,
                };
                // An app being deleted no longer holds its ports (its
                // pods are stopping; riklets do the same).
                let other = self.store.data().apps.values().find(|a| {
                    a.manifest.name != manifest.name
                        && a.deleting_since.is_none()
                        && a.manifest
                            .spec
                            .containers
                            .iter()
                            .flat_map(|c| &c.ports)
                            .any(|q| q.port == p.port && q.protocol == p.protocol)
                });
                if let Some(other) = other {
                    return Err(taken(format!("app {:?}", other.manifest.name)));
                }
                let node = self.nodes().iter().find(|n| {
                    p.protocol == Protocol::Tcp
                        && n.host_address
                            .parse::<std::net::SocketAddr>()
                            .is_ok_and(|a| a.port() == p.port)
                });
                if let Some(node) = node {
                    return Err(taken(format!(
                        "the riklet node API of node {:?}",
                        node.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn create_app(&mut self, manifest: AppManifest, now: i64) {
        let name = manifest.name.clone();
        let replicas = manifest.replicas as usize;
        self.store.data_mut().apps.insert(
            name.clone(),
            AppRecord {
                manifest,
                created_at: now,
                updated_at: now,
                // Given at the end of the apply (`revisions`).
                revision: 0,
                created_revision: 0,
                deleting_since: None,
            },
        );
        self.add_instances(&name, replicas, now);
        info!(app = %name, replicas, "app created");
    }

    /// Changes an app from `old` to `manifest`: instances added or removed
    /// if only `replicas` changed, all of them replaced otherwise. DESTROYs
    /// of removed instances go to `out`.
    fn update_app(&mut self, old: &AppManifest, manifest: AppManifest, now: i64, out: &mut Outbox) {
        let name = manifest.name.clone();
        let old_definition = old.to_definition();
        let replicas = manifest.replicas as usize;
        let mut rescaled = old.clone();
        rescaled.replicas = manifest.replicas;
        if rescaled == manifest {
            self.rescale(&name, replicas, &old_definition, now, out);
        } else {
            self.replace_all(&name, replicas, &old_definition, now, out);
        }
        if let Some(record) = self.store.data_mut().apps.get_mut(&name) {
            record.manifest = manifest;
            record.updated_at = now;
        }
    }

    /// Adds or removes instances of `app` until it has `replicas`; removed
    /// ones get a DESTROY with the `old` definition.
    fn rescale(&mut self, app: &str, replicas: usize, old: &str, now: i64, out: &mut Outbox) {
        let current = self.store.data().instances_of(app).count();
        if replicas > current {
            self.add_instances(app, replicas - current, now);
        } else {
            for id in self.scale_down_victims(app, current - replicas) {
                self.remove_instance(&id, old, out);
            }
        }
        info!(app = %app, from = current, to = replicas, "app rescaled");
    }

    /// Removes every instance of `app` (a DESTROY with the `old`
    /// definition) and adds `replicas` new ones.
    fn replace_all(&mut self, app: &str, replicas: usize, old: &str, now: i64, out: &mut Outbox) {
        let replaced = self.remove_instances_of(app, old, out);
        self.add_instances(app, replicas, now);
        info!(app = %app, replaced, replicas, "app definition changed, instances replaced");
    }
}
