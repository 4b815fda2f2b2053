//! Layers into the snapshotter: `Prepare` on the previous chain ID,
//! `diff.Apply`, `Commit` as the layer's own chain ID, bottom up; layers
//! already committed are skipped. The config is then labelled with the top
//! snapshot, which keeps the chain alive as long as the image.

use std::collections::HashMap;

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use oci_client::config::ConfigFile;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use tonic::Code;
use tracing::{debug, warn};

use super::documents::{chain_ids, to_containerd};
use super::error::{ImageError, Result, containerd, found};
use super::{ImageStore, SNAPSHOTTER, unique};

/// One layer to unpack: where it sits in the chain.
struct Layer<'a> {
    desc: &'a OciDescriptor,
    /// What the layer must unpack to (the config says).
    diff_id: &'a str,
    chain_id: &'a str,
    /// The chain ID below, empty for the bottom layer.
    parent: &'a str,
}

impl ImageStore {
    /// Applies the layers missing from the snapshotter, bottom up; labels
    /// the config with the top snapshot. Returns the top chain ID.
    pub(super) async fn unpack(
        &self,
        name: &str,
        lease: &str,
        manifest: &OciImageManifest,
        config: &ConfigFile,
    ) -> Result<String> {
        let diff_ids = &config.rootfs.diff_ids;
        let chain = chain_ids(diff_ids);
        let mut content = ContentClient::new(self.channel.clone());
        let mut parent = "";
        for ((desc, chain_id), diff_id) in manifest.layers.iter().zip(&chain).zip(diff_ids) {
            // An unpacked layer is kept from garbage collection only by the
            // layers above it: when they were removed, it can be collected
            // at any moment, e.g. between this check and the prepare that
            // names it as parent. Under the lease it stays until we are done.
            self.lease_snapshot(lease, chain_id).await?;
            if !self.snapshot_exists(chain_id).await? {
                let layer = Layer {
                    desc,
                    diff_id,
                    chain_id,
                    parent,
                };
                self.unpack_layer(name, lease, &layer).await?;
                // What ctr records once apply has verified the uncompressed digest.
                self.set_label(
                    &mut content,
                    &desc.digest,
                    "containerd.io/uncompressed",
                    diff_id,
                )
                .await?;
                debug!(image = %name, layer = %desc.digest, chain_id = %chain_id, "layer unpacked");
            }
            parent = chain_id;
        }
        let top = chain.last().cloned().unwrap_or_default();
        let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        self.set_label(&mut content, &manifest.config.digest, &label, &top)
            .await?;
        Ok(top)
    }

    /// Prepare, apply, commit; the active snapshot is removed on failure.
    async fn unpack_layer(&self, name: &str, lease: &str, layer: &Layer<'_>) -> Result<()> {
        let key = format!("extract-{} {}", unique(), layer.chain_id);
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.clone(),
            parent: layer.parent.to_string(),
            labels: HashMap::from([(
                "containerd.io/snapshot.ref".to_string(),
                layer.chain_id.to_string(),
            )]),
        };
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mounts = snapshots
            .prepare(self.req(prepare, Some(lease)))
            .await
            .map_err(|s| containerd("prepare snapshot", &key, s))?
            .into_inner()
            .mounts;
        if let Err(e) = self.apply(name, layer, mounts).await {
            self.remove_snapshot(&key).await;
            return Err(e);
        }
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            name: layer.chain_id.to_string(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        match snapshots.commit(self.req(commit, Some(lease))).await {
            Ok(_) => Ok(()),
            // Someone unpacked the same layer meanwhile: theirs will do.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(&key).await;
                Ok(())
            }
            Err(s) => {
                self.remove_snapshot(&key).await;
                Err(containerd("commit snapshot", layer.chain_id, s))
            }
        }
    }

    /// Applies the layer on `mounts`; it must unpack to its diff ID.
    async fn apply(
        &self,
        name: &str,
        layer: &Layer<'_>,
        mounts: Vec<containerd_client::types::Mount>,
    ) -> Result<()> {
        let request = ApplyRequest {
            diff: Some(to_containerd(layer.desc)),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.req(request, None))
            .await
            .map_err(|s| containerd("apply layer", &layer.desc.digest, s))?;
        let got = applied
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if got == layer.diff_id {
            return Ok(());
        }
        Err(ImageError::Corrupt {
            reference: name.to_string(),
            detail: format!(
                "layer {} unpacks to {got}, config says {}",
                layer.desc.digest, layer.diff_id
            ),
        })
    }

    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let request = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
        };
        let answer = SnapshotsClient::new(self.channel.clone())
            .stat(self.req(request, None))
            .await;
        found(answer, "stat snapshot", key)
    }

    /// Best effort: an active snapshot left behind is collected with the lease.
    async fn remove_snapshot(&self, key: &str) {
        let request = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: key.to_string(),
        };
        if let Err(s) = SnapshotsClient::new(self.channel.clone())
            .remove(self.req(request, None))
            .await
        {
            warn!(key, error = %s.message(), "cannot remove snapshot");
        }
    }
}
