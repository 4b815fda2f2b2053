//! Runtime memory: what the riklet knows of every pod, on disk.
//!
//! One JSON file per pod under `<state-dir>/pods/`, replaced atomically on
//! every change, so that a riklet killed at any instant comes back with a
//! consistent view: the pod's spec, state, process identities (pid + start
//! time, never the pid alone), restart count and timestamps. The agent
//! saves the records its events changed together ([`Store::apply`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use proto::common::ResourceStatus;
use proto::manifest::AppManifest;
use serde::{Deserialize, Serialize};

use crate::fsutil::{sync_dir, write_synced};

/// A runtime-memory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, StateError>;

/// Lifecycle of a pod as the riklet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Being set up, or waiting for a restart back-off.
    Creating,
    /// Every container runs.
    Running,
    /// A container ended in error and will not be restarted.
    Failed,
    /// Every container ended successfully and will not be restarted.
    Completed,
    /// Being stopped and cleaned up.
    Destroying,
}

impl Phase {
    /// The RIK status reported for this phase.
    pub fn status(self) -> ResourceStatus {
        match self {
            Phase::Creating => ResourceStatus::Creating,
            Phase::Running => ResourceStatus::Running,
            Phase::Failed => ResourceStatus::Failed,
            Phase::Completed => ResourceStatus::Terminated,
            Phase::Destroying => ResourceStatus::Destroying,
        }
    }
}

/// Process identities and exit records: shared with the shim, which
/// writes them in `started.json` and `exit.json`.
pub use riklet_shim::record::{ExitRecord, ProcId};

/// The current run of a container: a bare process behind its shim
/// (`shim` set), or a containerd task (`container_id` set; containerd's
/// runc shim is its parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The riklet shim of a bare process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim: Option<ProcId>,
    /// The container's (init) process.
    pub process: ProcId,
    /// Unix milliseconds.
    pub started_at: i64,
    /// The containerd container (`<instance>_<container>`) of an image
    /// container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Digest of the image the container runs (index or manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl RunRecord {
    /// A run of a bare process.
    pub fn process(shim: ProcId, process: ProcId, started_at: i64) -> Self {
        RunRecord {
            shim: Some(shim),
            process,
            started_at,
            container_id: None,
            image_digest: None,
        }
    }

    /// Whether containerd runs it.
    pub fn is_containerd(&self) -> bool {
        self.container_id.is_some()
    }
}

/// What the riklet remembers of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub restart_count: u32,
    /// The process running now, if any.
    pub run: Option<RunRecord>,
    pub last_exit: Option<ExitRecord>,
    /// Unix milliseconds at which the next restart is due (crash loop).
    pub restart_at: Option<i64>,
    /// Current crash-loop back-off, seconds.
    pub backoff_secs: u64,
    /// The cgroup's OOM kill count when the current run started: a higher
    /// count at exit means the OOM killer ended it.
    #[serde(default)]
    pub oom_kills_at_start: Option<u64>,
    /// A start is under way (network, image pull, shim or task): a riklet
    /// that dies meanwhile starts it again unless it finds it running.
    #[serde(default)]
    pub starting: bool,
    /// Its back-off was noticed (a second after the exit or failed start
    /// that began it, as kubelet's next sync would): it shows
    /// `CrashLoopBackOff` or `ImagePullBackOff` rather than how it ended.
    #[serde(default)]
    pub backing_off: bool,
}

/// What the riklet remembers of one pod (one app instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub instance_id: String,
    pub manifest: AppManifest,
    pub phase: Phase,
    /// Why the pod is in this phase, for users (`CrashLoopBackOff`, …).
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub containers: Vec<ContainerRecord>,
}

impl PodRecord {
    /// Restarts summed over containers (seed 004's `restartCount`).
    pub fn restart_count(&self) -> u32 {
        self.containers.iter().map(|c| c.restart_count).sum()
    }
}

/// The on-disk store of pod records.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("pods");
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Store { dir })
    }

    fn path(&self, instance_id: &str) -> PathBuf {
        self.dir.join(format!("{instance_id}.json"))
    }

    /// Every pod record, sorted by instance id. Leftover temporary files of
    /// an interrupted write are removed; a record that cannot be read is
    /// renamed `*.corrupt` (kept for inspection) and logged, so that one bad
    /// file does not make the riklet forget every other pod.
    pub fn load_all(&self) -> Result<Vec<PodRecord>> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut pods = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    let bytes = fs::read(&path).map_err(io(&path))?;
                    match Store::decode(&bytes) {
                        Ok(pod) => pods.push(pod),
                        Err(source) => {
                            let err = StateError::Corrupt {
                                path: path.clone(),
                                source,
                            };
                            tracing::error!(error = %crate::error_chain(&err), "pod record set aside as .corrupt");
                            let aside = path.with_extension("json.corrupt");
                            fs::rename(&path, &aside).map_err(io(&path))?;
                        }
                    }
                }
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        pods.sort_by(|a: &PodRecord, b| a.instance_id.cmp(&b.instance_id));
        Ok(pods)
    }

    /// A record as read from disk; the fuzz target `state_record` feeds it
    /// arbitrary bytes, since a crash or a full disk can leave any.
    pub fn decode(bytes: &[u8]) -> std::result::Result<PodRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A record as it is written to disk.
    pub fn encode(pod: &PodRecord) -> Vec<u8> {
        serde_json::to_vec_pretty(pod).expect("pod record serializes")
    }

    /// Saves and removes many records with one round of fsyncs (group
    /// commit): each new content goes to a temporary file that is fsynced
    /// (by up to [`WRITERS`] threads, so that the filesystem's journal
    /// commits them together), then renamed over its record; removed
    /// records are unlinked; then the directory is fsynced once. As with
    /// [`crate::fsutil::write_atomic`], a crash leaves each record with its
    /// old or its new content. Returns what failed.
    pub fn apply(&self, changes: Vec<Change>) -> Vec<StateError> {
        let (writes, removals): (Vec<Change>, Vec<Change>) =
            changes.into_iter().partition(|c| c.record.is_some());
        let mut errors = Vec::new();
        let mut renamed = false;
        let written = self.write_all(&writes);
        if !writes.is_empty() {
            crate::crash::point("state.after_temp_write");
        }
        for (change, written) in writes.iter().zip(written) {
            let path = self.path(&change.instance_id);
            match written.and_then(|tmp| {
                fs::rename(&tmp, &path).map_err(|source| StateError::Io {
                    path: path.clone(),
                    source,
                })
            }) {
                Ok(()) => renamed = true,
                Err(e) => errors.push(e),
            }
        }
        for change in &removals {
            let path = self.path(&change.instance_id);
            match fs::remove_file(&path) {
                Ok(()) => renamed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => errors.push(StateError::Io { path, source }),
            }
        }
        if renamed {
            crate::crash::point("state.after_rename");
        }
        if renamed && let Err(source) = sync_dir(&self.dir) {
            errors.push(StateError::Io {
                path: self.dir.clone(),
                source,
            });
        }
        errors
    }

    /// Writes and fsyncs the temporary file of each change, in parallel;
    /// the temporary paths, in order.
    fn write_all(&self, writes: &[Change]) -> Vec<Result<PathBuf>> {
        let write = |c: &Change| {
            let tmp = self.path(&c.instance_id).with_extension("tmp");
            let data = c.record.as_deref().unwrap_or_default();
            write_synced(&tmp, data)
                .map(|()| tmp.clone())
                .map_err(|source| StateError::Io { path: tmp, source })
        };
        let write_part = |part: &[Change]| part.iter().map(write).collect::<Vec<_>>();
        if writes.len() <= 1 {
            return write_part(writes);
        }
        let part_len = writes.len().div_ceil(WRITERS);
        std::thread::scope(|scope| {
            let parts: Vec<_> = writes
                .chunks(part_len)
                .map(|part| {
                    let thread = std::thread::Builder::new()
                        .name("riklet-store".into())
                        .spawn_scoped(scope, move || write_part(part));
                    (part, thread)
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|(part, thread)| match thread {
                    // No thread to be had: write this part here.
                    Err(_) => write_part(part),
                    Ok(t) => t.join().unwrap_or_else(|_| {
                        let panicked = || io::Error::other("store writer thread panicked");
                        part.iter()
                            .map(|c| {
                                Err(StateError::Io {
                                    path: self.path(&c.instance_id),
                                    source: panicked(),
                                })
                            })
                            .collect()
                    }),
                })
                .collect()
        })
    }
}

/// How many threads write the records of one [`Store::apply`].
pub const WRITERS: usize = 8;

/// One record to save ([`Store::encode`]) or, with `None`, to remove.
#[derive(Debug, Clone)]
pub struct Change {
    pub instance_id: String,
    pub record: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str) -> PodRecord {
        let manifest = proto::manifest::parse(
            "kind: Pod\nname: app\nspec: {containers: [{name: c, exec: /bin/true}]}",
        )
        .unwrap();
        PodRecord {
            instance_id: id.into(),
            manifest,
            phase: Phase::Running,
            reason: None,
            created_at: 1,
            updated_at: 2,
            containers: vec![ContainerRecord {
                name: "c".into(),
                restart_count: 3,
                run: Some(RunRecord::process(
                    ProcId {
                        pid: 10,
                        start_time: 5,
                    },
                    ProcId {
                        pid: 11,
                        start_time: 6,
                    },
                    7,
                )),
                last_exit: None,
                restart_at: None,
                backoff_secs: 0,
                oom_kills_at_start: None,
                backing_off: false,
                starting: false,
            }],
        }
    }

    fn save(id: &str) -> Change {
        Change {
            instance_id: id.into(),
            record: Some(Store::encode(&pod(id))),
        }
    }

    fn remove(id: &str) -> Change {
        Change {
            instance_id: id.into(),
            record: None,
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.apply(vec![save("b-1"), save("a-1")]).is_empty());
        fs::write(dir.path().join("pods/x.tmp"), b"half").unwrap();
        let pods = store.load_all().unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0], pod("a-1"));
        assert_eq!(pods[0].restart_count(), 3);
        assert!(!dir.path().join("pods/x.tmp").exists());
        assert!(store.apply(vec![remove("a-1")]).is_empty());
        assert!(store.apply(vec![remove("a-1")]).is_empty());
        assert_eq!(store.load_all().unwrap().len(), 1);
    }

    #[test]
    fn a_group_of_changes_saves_each_and_names_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..3 * WRITERS).map(|i| format!("p-{i}")).collect();
        let changes = ids.iter().map(|id| save(id)).collect();
        assert!(store.apply(changes).is_empty());
        assert_eq!(store.load_all().unwrap().len(), ids.len());
        // A record whose temporary file cannot be written: a directory is
        // in its way. The others of the group are saved or removed.
        fs::create_dir(dir.path().join("pods/p-1.tmp")).unwrap();
        let mut changed = pod("p-1");
        changed.containers[0].restart_count = 9;
        let errors = store.apply(vec![
            remove("p-0"),
            Change {
                instance_id: "p-1".into(),
                record: Some(Store::encode(&changed)),
            },
            save("q-1"),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("p-1.tmp"), "{}", errors[0]);
        let pods = store.load_all().unwrap();
        assert!(!pods.iter().any(|p| p.instance_id == "p-0"));
        assert!(pods.iter().any(|p| p.instance_id == "q-1"));
        let kept = pods.iter().find(|p| p.instance_id == "p-1").unwrap();
        assert_eq!(kept, &pod("p-1"), "the old content stays");
    }

    #[test]
    fn records_of_earlier_versions_load() {
        // A record written before containerd support: no container_id,
        // shim not optional, no hostNetwork or imagePullPolicy.
        let old = r#"{"instance_id":"web-1","manifest":{"apiVersion":"v1","kind":"Pod","name":"web","replicas":1,
            "spec":{"containers":[{"name":"c","exec":"/bin/true"}],"restartPolicy":"Always"}},
            "phase":"Running","reason":null,"created_at":1,"updated_at":2,
            "containers":[{"name":"c","restart_count":0,"run":{"shim":{"pid":10,"start_time":5},
            "process":{"pid":11,"start_time":6},"started_at":7},"last_exit":null,"restart_at":null,"backoff_secs":0}]}"#;
        let pod: PodRecord = serde_json::from_str(old).unwrap();
        let run = pod.containers[0].run.clone().unwrap();
        assert_eq!(run.shim.map(|s| s.pid), Some(10));
        assert!(!run.is_containerd());
        assert!(!pod.manifest.spec.host_network);
        // And a containerd run round-trips.
        let mut pod = pod;
        pod.containers[0].run = Some(RunRecord {
            shim: None,
            container_id: Some("web-1_c".into()),
            image_digest: Some("sha256:ab".into()),
            ..run
        });
        let json = serde_json::to_string(&pod).unwrap();
        assert!(!json.contains("\"shim\""), "{json}");
        assert_eq!(serde_json::from_str::<PodRecord>(&json).unwrap(), pod);
    }

    #[test]
    fn corrupt_record_is_set_aside_and_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.apply(vec![save("good-1")]).is_empty());
        fs::write(dir.path().join("pods/bad.json"), b"{").unwrap();
        // Not UTF-8 (a torn write, a bad disk): set aside too, not an
        // error that would stop the riklet.
        fs::write(
            dir.path().join("pods/binary.json"),
            b"{\"instance_id\": \"\xff\"}",
        )
        .unwrap();
        let pods = store.load_all().unwrap();
        assert_eq!(pods.len(), 1);
        for bad in ["bad", "binary"] {
            assert!(dir.path().join(format!("pods/{bad}.json.corrupt")).exists());
            assert!(!dir.path().join(format!("pods/{bad}.json")).exists());
        }
    }
}
