//! Root test of `riklet::metrics::cgroup_stats::StatsReader` on the host's
//! real cgroups (v1 controllers beside v2 on hybrid hosts, or pure v2): the
//! reader keeps a container's files open between cycles, so it must notice
//! when the cgroup is removed and created again under the same name, and
//! then read the new one (new files, new cgroup id for the eBPF maps); and
//! it does not re-read a cgroup that the collector knows did not run.
//!
//! Needs root and a writable cgroup hierarchy; a missing prerequisite fails
//! the test with a message saying what is missing.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

use riklet::cgroups::{CgroupManager, ContainerCgroup, Limits};
use riklet::metrics::cgroup_stats::StatsReader;
use riklet::metrics::net::cgroup_id;

/// Removes the test's container and root cgroups in every hierarchy.
struct Cleanup {
    root: String,
    container: ContainerCgroup,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.container.remove();
        if let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") {
            for mount in mounts.flatten() {
                let _ = std::fs::remove_dir(mount.path().join(&self.root));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.root));
    }
}

/// A container cgroup handle under a root of the test's own (not created
/// yet), removed with its root when the guard drops.
fn test_container(test: &str) -> (ContainerCgroup, Cleanup) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates cgroups: run it as root"
    );
    let root = format!("riklet-test-{test}-{}", std::process::id());
    let manager = CgroupManager::new(&root)
        .unwrap_or_else(|e| panic!("cgroup root: {}", riklet::error_chain(&e)));
    let container = manager.container("pod", "c");
    let cleanup = Cleanup {
        root,
        container: container.clone(),
    };
    (container, cleanup)
}

#[test]
fn a_recreated_cgroup_is_read_afresh() {
    let (container, _cleanup) = test_container("stats");
    let limits = |mib: u64| Limits {
        cpu_millis: None,
        memory_bytes: Some(mib << 20),
    };
    // Slow files every 3rd reading: the limit is one of them.
    let mut reader = StatsReader::new(3);
    // A container being set up: no cgroup yet, nothing to read.
    let before = reader.read(&container, None);
    assert_eq!(before.cgroup_id, None);
    assert_eq!(before.stats, Default::default());

    container
        .create(limits(32))
        .unwrap_or_else(|e| panic!("create: {}", riklet::error_chain(&e)));
    let first = reader.read(&container, None);
    let first_id = cgroup_id(&container.v2_dir()).expect("cgroup id");
    assert_eq!(first.cgroup_id, Some(first_id));
    assert_eq!(first.stats.memory_limit_bytes, Some(32 << 20));
    assert_eq!(first.stats.pids, Some(0), "{:?}", first.stats);
    assert!(first.stats.cpu_usage_ns.is_some(), "{:?}", first.stats);
    assert!(
        first.stats.memory_usage_bytes.is_some(),
        "{:?}",
        first.stats
    );

    container.remove().expect("remove");
    container.create(limits(64)).expect("create again");
    let second_id = cgroup_id(&container.v2_dir()).expect("cgroup id");
    assert_ne!(first_id, second_id, "a new cgroup has a new id");

    // The open files belong to the removed cgroup: this reading finds out.
    let stale = reader.read(&container, None);
    assert_eq!(stale.stats.pids, None, "read a removed cgroup's files");
    // The next one opens the new cgroup's files, slow ones included.
    let fresh = reader.read(&container, None);
    assert_eq!(fresh.cgroup_id, Some(second_id));
    assert_eq!(fresh.stats.memory_limit_bytes, Some(64 << 20));
    assert_eq!(fresh.stats.pids, Some(0), "{:?}", fresh.stats);
}

#[test]
fn an_idle_cgroup_repeats_its_last_figures() {
    let (container, _cleanup) = test_container("idle");
    container
        .create(Limits::default())
        .unwrap_or_else(|e| panic!("create: {}", riklet::error_chain(&e)));
    let id = cgroup_id(&container.v2_dir()).expect("cgroup id");
    let (nobody_ran, it_ran) = (HashSet::new(), HashSet::from([id]));

    // Slow readings never come back (only the first one is slow).
    let mut reader = StatsReader::new(u64::MAX);
    let first = reader.read(&container, Some(&nobody_ran));
    assert_eq!(
        first.stats.pids,
        Some(0),
        "the first reading reads everything"
    );

    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    for procs in container.procs_files() {
        std::fs::write(&procs, child.id().to_string())
            .unwrap_or_else(|e| panic!("move the child into {}: {e}", procs.display()));
    }
    let idle = reader.read(&container, Some(&nobody_ran));
    let ran = reader.read(&container, Some(&it_ran));
    let unknown = reader.read(&container, None);
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(idle.stats.pids, Some(0), "not re-read while idle");
    assert_eq!(idle.cgroup_id, Some(id));
    assert_eq!(ran.stats.pids, Some(1), "re-read once it ran");
    assert_eq!(unknown.stats.pids, Some(1), "read when activity is unknown");
}
