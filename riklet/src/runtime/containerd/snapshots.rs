//! Container snapshots (the writable layer on top of the image's) and the
//! short lease that protects a new one until its container references it.

use containerd_client::services::v1::snapshots::{
    Kind as SnapshotKind, ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    ListRequest as ListLeasesRequest,
};
use containerd_client::types::Mount;
use tonic::{Code, Request};

use super::containers::{container_id, split_container_id};
use super::facts::{LEASE_OWNER_LABEL, SNAPSHOTTER, expiring_lease_labels};
use super::{ContainerdError, ContainerdRuntime, Result};

impl ContainerdRuntime {
    /// A lease that keeps the new snapshot from the garbage collector until
    /// the container references it; it expires by itself if the riklet
    /// dies in between. Empty when containerd names none.
    pub(super) async fn create_lease(&self, id: &str) -> Result<String> {
        let req = CreateLeaseRequest {
            id: String::new(),
            labels: expiring_lease_labels(),
        };
        let lease = self
            .leases()
            .create(self.request(req))
            .await
            .map_err(|s| ContainerdError::rpc("create lease for", id, s))?
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        Ok(lease)
    }

    /// Deletes the riklet's leases in its namespace. Called when a riklet
    /// first connects, before it pulls or starts anything: every such lease
    /// is then a dead riklet's (killed during a pull or a container start),
    /// which would otherwise keep its content and snapshots for up to
    /// [`super::LEASE_EXPIRY`]. Returns how many were deleted.
    pub async fn remove_stale_leases(&self) -> Result<usize> {
        let leases = self
            .leases()
            .list(self.request(ListLeasesRequest { filters: vec![] }))
            .await
            .map_err(|s| ContainerdError::rpc("list leases of", "the namespace", s))?
            .into_inner()
            .leases;
        let mut removed = 0;
        for lease in leases
            .iter()
            .filter(|l| l.labels.contains_key(LEASE_OWNER_LABEL))
        {
            tracing::info!(lease = %lease.id, "deleting a lease a dead riklet left");
            let req = DeleteLeaseRequest {
                id: lease.id.clone(),
                sync: false,
            };
            self.leases()
                .delete(self.request(req))
                .await
                .map_err(|s| ContainerdError::rpc("delete lease", &lease.id, s))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub(super) async fn delete_lease(&self, lease: &str) {
        if lease.is_empty() {
            return;
        }
        let req = DeleteLeaseRequest {
            id: lease.to_string(),
            sync: false,
        };
        if let Err(s) = self.leases().delete(self.request(req)).await {
            tracing::warn!(lease, code = ?s.code(), message = s.message(), "cannot delete lease; it expires by itself");
        }
    }

    /// Prepares the writable snapshot `id` on `parent` under `lease` and
    /// returns its mounts. A snapshot `id` without a container (left by an
    /// interrupted start) is replaced.
    pub(super) async fn prepare_snapshot(
        &self,
        id: &str,
        parent: &str,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        let prepare = || {
            let mut req = self.request(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
                parent: parent.to_string(),
                labels: Default::default(),
            });
            with_lease(&mut req, lease);
            req
        };
        let parent_missing = || ContainerdError::ParentNotFound {
            id: id.to_string(),
            parent: parent.to_string(),
        };
        match self.snapshots().prepare(prepare()).await {
            Ok(r) => return Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) if s.code() == Code::NotFound => return Err(parent_missing()),
            Err(s) => return Err(ContainerdError::rpc("prepare snapshot", id, s)),
        }
        // A snapshot without its container: the leftover of a start that
        // was interrupted. A snapshot with its container is not ours to
        // take.
        if self.container(id).await.is_ok() {
            return Err(ContainerdError::AlreadyExists(id.to_string()));
        }
        tracing::warn!(container = id, "replacing a leftover snapshot");
        self.remove_snapshot(id).await?;
        match self.snapshots().prepare(prepare()).await {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::NotFound => Err(parent_missing()),
            Err(s) => Err(ContainerdError::rpc("prepare snapshot", id, s)),
        }
    }

    pub(super) async fn remove_snapshot(&self, id: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("remove snapshot", id, s)),
        }
    }

    /// Keys of the active snapshots named like a container id
    /// (`<instance>_<container>`): the writable layers of the riklet's
    /// containers, and leftovers of starts interrupted before their
    /// container existed.
    pub async fn container_snapshots(&self) -> Result<Vec<String>> {
        let mut stream = self
            .snapshots()
            .list(self.request(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                filters: vec![],
            }))
            .await
            .map_err(|s| ContainerdError::rpc("list snapshots", "", s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| ContainerdError::rpc("list snapshots", "", s))?
        {
            keys.extend(
                msg.info
                    .into_iter()
                    .filter(|i| i.kind == SnapshotKind::Active as i32)
                    .map(|i| i.name)
                    .filter(|name| {
                        split_container_id(name).is_some_and(|(i, c)| container_id(i, c).is_ok())
                    }),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes a snapshot left without its container ([`Self::remove`]
    /// removes a container's own); a missing one is not an error.
    pub async fn remove_leftover_snapshot(&self, key: &str) -> Result<()> {
        self.remove_snapshot(key).await
    }
}

/// Makes `req` part of `lease` (none when empty).
fn with_lease<T>(req: &mut Request<T>, lease: &str) {
    if !lease.is_empty()
        && let Ok(v) = lease.parse()
    {
        req.metadata_mut().insert("containerd-lease", v);
    }
}
