//! Retention of a deleted app's logs: the pod's log directory stays
//! `[logs] retention` after the pod is deleted (for `rik logs` of a pod
//! that just went away, and for a shipper to finish it), then the riklet
//! removes it.
//!
//! The deletion time is an empty marker file per pod directory, in the
//! state dir (`<state_dir>/deleted-logs/<namespace>_<app>_<instance>`,
//! its mtime), so that a riklet restarted meanwhile still removes it on
//! time and the log directory holds nothing but logs. A periodic sweep
//! ([`run`]) removes what is due.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tracing::{info, warn};

/// The markers' directory, relative to the state dir.
pub const MARKERS_DIR: &str = "deleted-logs";

/// How long a deleted pod's logs stay, and where the deletions are noted.
#[derive(Debug, Clone)]
pub struct Retention {
    /// 0: removed with the pod.
    pub period: Duration,
    /// `<state_dir>/deleted-logs`.
    pub markers: PathBuf,
    /// Root of the pod log directories.
    pub log_dir: PathBuf,
}

impl Retention {
    pub fn new(state_dir: &Path, log_dir: &Path, period: Duration) -> Self {
        Retention {
            period,
            markers: state_dir.join(MARKERS_DIR),
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// A pod whose log directory is `pod_dir` was deleted: removes the
    /// directory now if the period is 0, or notes when for the sweep.
    pub fn pod_deleted(&self, pod_dir: &Path) {
        let Some(name) = pod_dir.file_name() else {
            return;
        };
        if self.period.is_zero() || !pod_dir.exists() {
            remove_dir(pod_dir);
            return;
        }
        let marked = fs::create_dir_all(&self.markers)
            .and_then(|()| fs::File::create(self.markers.join(name)).map(drop));
        if marked.is_ok() {
            crate::crash::point("logs.retention.after_marker");
        }
        if let Err(e) = marked {
            // Better gone early than kept forever.
            warn!(dir = %pod_dir.display(), error = %e, "cannot note the deletion of the pod's logs; removing them now");
            remove_dir(pod_dir);
        }
    }

    /// Removes the pod log directories whose time is up, and their
    /// markers.
    pub fn sweep(&self, now: SystemTime) {
        let Ok(markers) = fs::read_dir(&self.markers) else {
            return;
        };
        for marker in markers.flatten() {
            let due = match marker.metadata().and_then(|m| m.modified()) {
                Ok(deleted_at) => now.duration_since(deleted_at).unwrap_or_default() >= self.period,
                Err(_) => true,
            };
            if due {
                let dir = self.log_dir.join(marker.file_name());
                remove_dir(&dir);
                crate::crash::point("logs.retention.after_dir_removed");
                info!(dir = %dir.display(), "deleted pod's logs removed (retention)");
                let _ = fs::remove_file(marker.path());
            }
        }
    }

    /// Time between two sweeps: half the period, from 1 s to 1 min.
    fn sweep_interval(&self) -> Duration {
        (self.period / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

fn remove_dir(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove a deleted pod's logs"),
    }
}

/// Sweeps at once (what was due while no riklet ran), then periodically,
/// until `stop`.
pub async fn run(retention: Retention, mut stop: broadcast::Receiver<()>) {
    let mut ticks = tokio::time::interval(retention.sweep_interval());
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let r = retention.clone();
                let _ = tokio::task::spawn_blocking(move || r.sweep(SystemTime::now())).await;
            }
            _ = stop.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(period: Duration) -> (tempfile::TempDir, Retention, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let r = Retention::new(
            &root.path().join("state"),
            &root.path().join("logs"),
            period,
        );
        let pod = r.log_dir.join("default_web_web-x1");
        fs::create_dir_all(pod.join("c")).unwrap();
        fs::write(pod.join("c/0.log"), "x\n").unwrap();
        (root, r, pod)
    }

    #[test]
    fn kept_for_the_period_then_removed() {
        let (_root, r, pod) = setup(Duration::from_secs(3600));
        r.pod_deleted(&pod);
        let now = SystemTime::now();
        r.sweep(now + Duration::from_secs(3599));
        assert!(pod.join("c/0.log").exists());
        r.sweep(now + Duration::from_secs(3601));
        assert!(!pod.exists());
        assert_eq!(fs::read_dir(&r.markers).unwrap().count(), 0);
        // A sweep with nothing to do.
        r.sweep(now + Duration::from_secs(7200));
    }

    #[test]
    fn a_zero_period_removes_at_once() {
        let (_root, r, pod) = setup(Duration::ZERO);
        r.pod_deleted(&pod);
        assert!(!pod.exists());
        assert!(!r.markers.exists());
    }

    #[test]
    fn the_sweep_interval_follows_the_period() {
        let (_root, r, _) = setup(Duration::from_secs(2));
        assert_eq!(r.sweep_interval(), Duration::from_secs(1));
        let (_root, r, _) = setup(Duration::from_secs(3600));
        assert_eq!(r.sweep_interval(), Duration::from_secs(60));
    }
}
