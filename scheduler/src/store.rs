//! The app store: apps and their instances, persisted as one JSON file.
//!
//! The whole store is small (manifests and a few strings per instance), so it
//! is kept in memory and written out in full. A write goes to a temporary
//! file that is fsynced and then renamed over `state.json` (and the directory
//! fsynced), so a crash leaves either the old or the new state, never a torn
//! one. Loading at start means a scheduler restart loses no app, and every
//! instance keeps its node assignment, last status and last metrics.
//!
//! # Revisions
//!
//! The store counts its changes: [`Data::revision`] is bumped for every
//! change of an app or of an instance's status or node (see
//! `cluster::revisions`), each app remembers the revision of its last
//! change, and the last [`MAX_TOMBSTONES`] deletes are kept as tombstones,
//! so that a watch can be resumed from any revision since
//! [`Data::compacted`].
//!
//! The counter never goes backwards, even across a crash: every save also
//! writes a *reservation* ([`RESERVE_BLOCK`] revisions ahead), and no
//! revision beyond the reservation on disk is handed out before a save
//! moved it. A clean stop ([`Store::close`]) writes the reservation equal to
//! the revision; a state whose reservation is ahead was left by a crash,
//! and the revisions in between may have been seen by watchers but lost:
//! the store then starts after the reservation and resuming from before it
//! is refused ([`Data::compacted`]).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use proto::common::ResourceStatus;
use proto::manifest::AppManifest;
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::events::AppEvents;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Version of the file format, checked at load. Version 1 files without
/// revisions load as well (every app gets one at load).
const FORMAT_VERSION: u32 = 1;
/// How many deleted apps are remembered for watches that resume.
pub const MAX_TOMBSTONES: usize = 1000;
/// How far ahead of the current revision each save reserves.
pub const RESERVE_BLOCK: u64 = 10_000;

/// A failure to load or persist the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory or a file in it could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("create directory", "write", …).
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The state file exists but is not a store this version understands.
    #[error("state file {path} is corrupt or from an unknown version")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The state file has a format version this scheduler does not know.
    #[error("state file {path} has format version {found}, expected {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// `Result` of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One app as applied by a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The validated manifest; its JSON is the `definition` sent to riklets.
    pub manifest: AppManifest,
    /// Unix seconds of the first apply.
    pub created_at: i64,
    /// Unix seconds of the last apply that changed something.
    pub updated_at: i64,
    /// Revision of the last change of the app or of one of its instances.
    #[serde(default)]
    pub revision: u64,
    /// Revision of its creation.
    #[serde(default)]
    pub created_revision: u64,
    /// Unix seconds of its delete, while its pods stop (Terminating); the
    /// app goes when they are all gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since: Option<i64>,
}

/// A deleted app, remembered so that a watch resuming from before the
/// delete hears of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub name: String,
    /// Revision of the delete.
    pub revision: u64,
}

/// One instance (replica) of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Name of the app this instance belongs to.
    pub app: String,
    /// The node it is assigned to; `None` until a ready node exists.
    pub node: Option<String>,
    /// Last status reported by its node (or PENDING while waiting).
    #[serde(with = "status_name")]
    pub status: ResourceStatus,
    /// Last metrics JSON reported by its node (seed 004's realtime app).
    #[serde(default)]
    pub metrics: String,
    /// Unix seconds of the last status change or report.
    pub updated_at: i64,
    /// The STATUS `rik` shows for it, as of the last report that counted
    /// as a change (memory only: a reason that changes, `RunContainerError`
    /// then `CrashLoopBackOff`, is a change though the RIK status is not).
    #[serde(skip)]
    pub shown: String,
}

/// Everything the store holds, as written to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// Apps by name.
    pub apps: BTreeMap<String, AppRecord>,
    /// Instances by id.
    pub instances: BTreeMap<String, InstanceRecord>,
    /// The last revision handed out.
    #[serde(default)]
    pub revision: u64,
    /// A watch can resume from a revision `R >= compacted` only: the
    /// changes up to this one may no longer be replayable (a tombstone
    /// dropped, or revisions lost in a crash).
    #[serde(default)]
    pub compacted: u64,
    /// The last deletes, oldest first, at most [`MAX_TOMBSTONES`].
    #[serde(default)]
    pub tombstones: VecDeque<Tombstone>,
    /// Each app's recent events (memory only, see [`crate::events`]).
    #[serde(skip)]
    pub events: BTreeMap<String, AppEvents>,
}

impl Data {
    /// The instances of one app, by id.
    pub fn instances_of<'a>(
        &'a self,
        app: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a InstanceRecord)> + 'a {
        self.instances.iter().filter(move |(_, i)| i.app == app)
    }

    /// How many instances are assigned to `node`.
    pub fn count_on(&self, node: &str) -> usize {
        self.instances
            .values()
            .filter(|i| i.node.as_deref() == Some(node))
            .count()
    }

    /// Remembers the delete of `name` at `revision`; the oldest tombstone
    /// beyond [`MAX_TOMBSTONES`] is dropped, and resuming from before it
    /// becomes impossible.
    pub fn bury(&mut self, name: &str, revision: u64) {
        self.tombstones.push_back(Tombstone {
            name: name.to_string(),
            revision,
        });
        while self.tombstones.len() > MAX_TOMBSTONES {
            if let Some(dropped) = self.tombstones.pop_front() {
                self.compacted = self.compacted.max(dropped.revision);
            }
        }
    }

    /// Whether a watch can replay every change after `since` exactly.
    pub fn can_replay_from(&self, since: u64) -> bool {
        since >= self.compacted && since <= self.revision
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// No revision above this was handed out (see the module doc).
    #[serde(default)]
    revision_reserved: u64,
    #[serde(flatten)]
    data: Data,
}

/// The persisted store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    data: Data,
    /// Changed in memory since the last successful save.
    dirty: bool,
    /// The reservation last written: revisions up to it may be handed out.
    reserved: u64,
}

impl Store {
    /// Opens the store in `dir` (created if missing), loading `state.json`
    /// when it exists. A corrupt file is an error: better to refuse to start
    /// than to overwrite every app an operator applied.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if disk.version != FORMAT_VERSION {
                    return Err(StoreError::Version {
                        path,
                        found: disk.version,
                    });
                }
                let mut data = disk.data;
                // An instance whose app is gone is garbage from a bug or an
                // edit by hand; it must not be scheduled.
                let apps = &data.apps;
                data.instances.retain(|_, i| apps.contains_key(&i.app));
                recover_revisions(&mut data, disk.revision_reserved);
                data
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut data = Data::default();
                recover_revisions(&mut data, 0);
                data
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            reserved: data.revision,
            data,
            dirty: false,
        })
    }

    /// Hands out the next revision. Past the reservation on disk, the
    /// store is saved first (once every [`RESERVE_BLOCK`] revisions at
    /// worst; the periodic flushes usually move it earlier).
    pub fn next_revision(&mut self) -> u64 {
        if self.data.revision >= self.reserved
            && let Err(e) = self.save()
        {
            error!(error = %proto::error_chain(&e),
                "cannot save the revision reservation: a crash now could hand out revisions twice");
        }
        self.dirty = true;
        self.data.revision += 1;
        self.data.revision
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Read access to the data.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Write access to the data; marks the store dirty.
    pub fn data_mut(&mut self) -> &mut Data {
        self.dirty = true;
        &mut self.data
    }

    /// Write access for figures that need not reach the disk at once (an
    /// instance's latest metrics): saved with the next real change, so
    /// that heartbeats of hundreds of pods do not rewrite the file every
    /// second.
    pub fn data_mut_volatile(&mut self) -> &mut Data {
        &mut self.data
    }

    /// Replaces the data (rollback after a failed save); marks it dirty.
    pub fn restore(&mut self, data: Data) {
        self.data = data;
        self.dirty = true;
    }

    /// Whether there are changes not yet on disk.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the data atomically: temporary file, fsync, rename, fsync of
    /// the directory; reserves the next [`RESERVE_BLOCK`] revisions.
    pub fn save(&mut self) -> Result<()> {
        self.write(self.data.revision + RESERVE_BLOCK)
    }

    /// The last save, at a clean stop: no revision is reserved beyond the
    /// current one, so the next start knows none was lost.
    pub fn close(&mut self) -> Result<()> {
        self.write(self.data.revision)
    }

    fn write(&mut self, reserve: u64) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let disk = OnDisk {
            version: FORMAT_VERSION,
            revision_reserved: reserve,
            data: self.data.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&disk).expect("store data serializes");
        bytes.push(b'\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("rename onto", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", &self.dir))?;
        self.dirty = false;
        self.reserved = reserve;
        Ok(())
    }
}

/// Brings the revisions of a loaded state in order. After a crash (the
/// reservation ahead of the revision), the revisions in between may have
/// reached watchers with changes that were never saved: the store starts
/// after the reservation, and resuming from before that is refused. Apps
/// of a file written before revisions existed get one each.
fn recover_revisions(data: &mut Data, reserved: u64) {
    if reserved > data.revision {
        warn!(
            saved = data.revision,
            reserved,
            "the scheduler did not stop cleanly: watches started before now must list again"
        );
        data.revision = reserved + 1;
        data.compacted = data.compacted.max(data.revision);
    }
    for record in data.apps.values_mut().filter(|r| r.revision == 0) {
        data.revision += 1;
        record.revision = data.revision;
        record.created_revision = data.revision;
    }
    // Revision 0 means "no revision" in a watch request.
    data.revision = data.revision.max(1);
}

/// `ResourceStatus` stored by name (`"RUNNING"`), readable in the file.
mod status_name {
    use proto::common::ResourceStatus;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &ResourceStatus, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(proto::status::name(*s))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<ResourceStatus, D::Error> {
        let name = String::deserialize(de)?;
        Ok(proto::status::from_name(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, replicas: u32) -> AppManifest {
        let mut m = proto::manifest::parse(&format!(
            "kind: Pod\nname: {name}\nspec:\n  containers:\n    - {{name: c, exec: /bin/true}}\n"
        ))
        .unwrap();
        m.replicas = replicas;
        m
    }

    #[test]
    fn persistence_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert!(store.data().apps.is_empty());
        let data = store.data_mut();
        data.apps.insert(
            "web".into(),
            AppRecord {
                manifest: manifest("web", 2),
                created_at: 10,
                updated_at: 11,
                revision: 0,
                created_revision: 0,
                deleting_since: None,
            },
        );
        data.instances.insert(
            "web-abcde".into(),
            InstanceRecord {
                app: "web".into(),
                node: Some("node-1".into()),
                status: ResourceStatus::Running,
                metrics: r#"{"appId":"web-abcde"}"#.into(),
                updated_at: 12,
                shown: String::new(),
            },
        );
        data.instances.insert(
            "web-fghij".into(),
            InstanceRecord {
                app: "web".into(),
                node: None,
                status: ResourceStatus::Pending,
                metrics: String::new(),
                updated_at: 13,
                shown: String::new(),
            },
        );
        assert!(store.is_dirty());
        store.save().unwrap();
        assert!(!store.is_dirty());
        assert!(!dir.path().join("state.json.tmp").exists());

        let text = fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"RUNNING\""), "{text}");

        // An app of a file without revisions gets one at load.
        store.close().unwrap();
        let mut reopened = Store::open(dir.path()).unwrap();
        let web = &reopened.data().apps["web"];
        assert_eq!((web.revision, web.created_revision), (2, 2));
        assert_eq!(reopened.data().instances, store.data().instances);
        reopened.close().unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.data(), reopened.data());
    }

    #[test]
    fn revisions_never_go_backwards_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.data().revision, 1, "revision 0 means none");
        store.save().unwrap();
        let seen = (0..5).map(|_| store.next_revision()).last().unwrap();
        assert_eq!(seen, 6);
        // Crash: revisions 2 to 6 were handed out but never saved.
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        let first = store.data().revision;
        assert_eq!(first, 1 + RESERVE_BLOCK + 1);
        assert_eq!(store.data().compacted, first);
        assert!(!store.data().can_replay_from(seen), "lost revisions");
        assert!(store.data().can_replay_from(first));
        assert!(!store.data().can_replay_from(first + 1), "not yet");

        // Clean stop: nothing lost, everything resumable.
        store.save().unwrap();
        let last = store.next_revision();
        store.close().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.data().revision, last);
        assert!(store.data().can_replay_from(first));

        // Past the reservation, the store saves before handing out more.
        let mut store = store;
        store.data_mut_volatile().revision = store.reserved;
        let beyond = store.next_revision();
        assert!(store.reserved >= beyond + RESERVE_BLOCK - 1);
    }

    #[test]
    fn tombstones_are_bounded_and_compact_the_history() {
        let mut data = Data::default();
        for i in 0..MAX_TOMBSTONES as u64 + 2 {
            data.bury(&format!("app-{i}"), 10 + i);
        }
        data.revision = 10_000;
        assert_eq!(data.tombstones.len(), MAX_TOMBSTONES);
        assert_eq!(data.tombstones[0].name, "app-2");
        assert_eq!(data.compacted, 11);
        assert!(!data.can_replay_from(10));
        assert!(data.can_replay_from(11));
        assert!(!data.can_replay_from(10_001));
    }

    #[test]
    fn drops_orphan_instances_and_refuses_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(STATE_FILE),
            r#"{"version":1,"apps":{},"instances":{"x-aaaaa":{"app":"x","node":null,"status":"PENDING","metrics":"","updated_at":0}}}"#,
        )
        .unwrap();
        assert!(Store::open(dir.path()).unwrap().data().instances.is_empty());

        fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
        fs::write(
            dir.path().join(STATE_FILE),
            r#"{"version":9,"apps":{},"instances":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Version { found: 9, .. })
        ));
    }

    #[test]
    fn creates_missing_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let mut store = Store::open(&nested).unwrap();
        store.save().unwrap();
        assert!(nested.join(STATE_FILE).exists());
    }
}
