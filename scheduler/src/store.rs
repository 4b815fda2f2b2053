//! The app store: apps and their instances, persisted as one JSON file.
//!
//! The whole store is small (manifests and a few strings per instance), so it
//! is kept in memory and written out in full. A write goes to a temporary
//! file that is fsynced and then renamed over `state.json` (and the directory
//! fsynced), so a crash leaves either the old or the new state, never a torn
//! one. Loading at start means a scheduler restart loses no app, and every
//! instance keeps its node assignment, last status and last metrics.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use proto::common::ResourceStatus;
use proto::manifest::AppManifest;
use serde::{Deserialize, Serialize};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Version of the file format, checked at load.
const FORMAT_VERSION: u32 = 1;

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
}

/// Everything the store holds, as written to disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// Apps by name.
    pub apps: BTreeMap<String, AppRecord>,
    /// Instances by id.
    pub instances: BTreeMap<String, InstanceRecord>,
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
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
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
                data
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Data::default(),
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
            data,
            dirty: false,
        })
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
    /// the directory.
    pub fn save(&mut self) -> Result<()> {
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
        Ok(())
    }
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
            },
        );
        assert!(store.is_dirty());
        store.save().unwrap();
        assert!(!store.is_dirty());
        assert!(!dir.path().join("state.json.tmp").exists());

        let text = fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"RUNNING\""), "{text}");

        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.data(), store.data());
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
