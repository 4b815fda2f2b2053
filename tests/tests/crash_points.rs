//! Crash points: for every point of the riklet (`riklet/src/crash.rs`),
//! a riklet armed with `RIKLET_CRASH_AT=<point>` is driven to it (a
//! create, a delete, a restart, an image pull, an app with ports, a log
//! retention) and must die there by SIGKILL; the riklet restarted unarmed
//! must converge within 10 s: every pod that was RUNNING still RUNNING
//! with the same pid and restart count, the pod being created RUNNING,
//! the pod being deleted gone, and nothing on the node that belongs to no
//! pod ([`Inventory::orphans`]). Once every app is deleted, the node must
//! be back to where it was before the first one ([`Inventory::diff`]).
//!
//! Three groups run in parallel, each on a cluster of its own (a separate
//! scheduler, so that a crash loses no order): bare-process creates and
//! starts; deletes, restarts, ports and retention; image containers.
//! The riklet under test is built with `--features crash-points`
//! ([`riklet_e2e::crash::bin_dir`]).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use riklet_e2e::containerd;
use riklet_e2e::leftovers::Inventory;
use riklet_e2e::registry::{Registry, busybox_archive, host_arch, require};
use riklet_e2e::{Cluster, Mode, Options, free_port, wait_for};
use serde_json::Value;

/// How long the restarted riklet has to converge.
const CONVERGE: Duration = Duration::from_secs(10);
/// How long an armed riklet has to reach its point.
const REACH: Duration = Duration::from_secs(40);
/// How long a deleted app's logs stay in these clusters.
const RETENTION: Duration = Duration::from_secs(2);

/// What drives the riklet to a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// A new bare-process app.
    Create,
    /// A new bare-process app with a port (Node Proxy sync).
    Ports,
    /// A new app whose process exits every second (exit, restart).
    Restart,
    /// Deleting a RUNNING app.
    Delete,
    /// Deleting a RUNNING app whose logs are then removed (retention).
    Retention,
    /// A new image container, pulled at every start (`Always`).
    Image,
}

fn workload(point: &str) -> Workload {
    match point {
        "create.after_container_create" | "create.after_task_create" => Workload::Image,
        p if p.starts_with("pull.") => Workload::Image,
        p if p.starts_with("create.") || p.starts_with("start.") => Workload::Create,
        p if p.starts_with("network.attach.") || p.starts_with("state.") => Workload::Create,
        p if p.starts_with("restart.") => Workload::Restart,
        p if p.starts_with("delete.") || p.starts_with("network.detach.") => Workload::Delete,
        p if p.starts_with("proxy.") => Workload::Ports,
        p if p.starts_with("logs.retention.") => Workload::Retention,
        p => panic!("crash point {p:?} has no workload in this test: add one"),
    }
}

/// Every crash point, as the riklet lists them when it refuses an
/// unknown one (which is checked on the way).
fn points() -> Vec<String> {
    let out = Command::new(riklet_e2e::crash::bin_dir().join("riklet"))
        .env("RIKLET_CRASH_AT", "no.such_point")
        .env("RUST_BACKTRACE", "0")
        .args(["--state-dir", "/nonexistent-riklet-crash-test"])
        .output()
        .expect("riklet");
    assert!(!out.status.success(), "an unknown crash point was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    let list = err
        .split_once("the crash points are: ")
        .unwrap_or_else(|| panic!("the refusal lists no crash points: {err}"))
        .1;
    let list = list.lines().next().unwrap_or_default();
    let points: Vec<String> = list.split(", ").map(|p| p.trim().to_string()).collect();
    assert!(
        points.len() >= 20,
        "only {} crash points: {list}",
        points.len()
    );
    points
}

fn group(workloads: &[Workload]) -> Vec<String> {
    points()
        .into_iter()
        .filter(|p| workloads.contains(&workload(p)))
        .collect()
}

#[test]
fn crash_points_of_bare_creates() {
    Run::new("cpa", None).crash_at_each(&group(&[Workload::Create]));
}

#[test]
fn crash_points_of_deletes_restarts_ports_and_retention() {
    let points = group(&[
        Workload::Delete,
        Workload::Restart,
        Workload::Ports,
        Workload::Retention,
    ]);
    Run::new("cpb", None).crash_at_each(&points);
}

#[test]
fn crash_points_of_image_containers() {
    containerd::require_machine_containerd();
    require("docker-registry", "docker-registry");
    require("skopeo", "skopeo");
    let reg = Registry::start();
    reg.push(&busybox_archive(&host_arch()), "busybox:1");
    let image = format!("{}/busybox:1", reg.host());
    Run::new("cpc", Some((&reg, image))).crash_at_each(&group(&[Workload::Image]));
}

/// One cluster going through its crash points.
struct Run {
    cluster: Cluster,
    /// Prefix of every app name of this run.
    prefix: &'static str,
    /// The registry image of image workloads.
    image: Option<String>,
    apps: u32,
}

impl Run {
    fn new(prefix: &'static str, registry: Option<(&Registry, String)>) -> Run {
        riklet_e2e::require_root();
        let cluster = Cluster::start_with(
            Mode::Separate,
            Options {
                riklet_exe: Some(riklet_e2e::crash::bin_dir().join("riklet")),
                insecure_registries: registry.iter().map(|(r, _)| r.host()).collect(),
                log_retention: Some(RETENTION),
                ..Options::default()
            },
        );
        Run {
            cluster,
            prefix,
            image: registry.map(|(_, image)| image),
            apps: 0,
        }
    }

    fn crash_at_each(mut self, points: &[String]) {
        assert!(!points.is_empty(), "no crash points in this group");
        let baseline = Inventory::take(&self.cluster.scope(self.prefix));
        for point in points {
            self.crash_at(point);
        }
        self.delete_all();
        // Retention, then the proxy's clean-up of gone services (at most
        // 10 s after the last change).
        let scope = self.cluster.scope(self.prefix);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let diff = Inventory::take(&scope).diff(&baseline);
            if diff.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "every app deleted, but the node is not back to its start:\n{}",
                diff.join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Arms `point`, drives the riklet to it, sees it die by SIGKILL,
    /// restarts it and checks that the node converges.
    fn crash_at(&mut self, point: &str) {
        let work = workload(point);
        eprintln!("crash point {point} ({work:?})");
        let victim = matches!(work, Workload::Delete | Workload::Retention)
            .then(|| self.apply_running(Workload::Create));
        let before = self.running_pods(victim.as_deref());
        assert!(
            before.values().all(|s| s["containers"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c[1].is_i64()))),
            "a RUNNING pod without a pid: {before:#?}"
        );
        self.cluster.kill_riklet();
        self.cluster.start_riklet_env(&[("RIKLET_CRASH_AT", point)]);
        let subject = match (&victim, work) {
            (Some(app), _) => {
                self.cluster.rik_ok(&["delete", app]);
                app.clone()
            }
            (None, work) => self.apply(work),
        };
        let status = self.cluster.wait_riklet_exit(REACH).unwrap_or_else(|| {
            panic!(
                "the riklet did not reach crash point {point} within {REACH:?} ({work:?}):\n{}",
                tail(&self.cluster.riklet_log())
            )
        });
        assert_eq!(
            status.signal(),
            Some(libc_sigkill()),
            "the riklet armed at {point} ended with {status}, not SIGKILL:\n{}",
            tail(&self.cluster.riklet_log())
        );
        self.cluster.start_riklet();
        self.converge(point, work, &subject, &before);
        if work == Workload::Restart {
            // A crash loop is no steady pod for the next points.
            self.delete_and_wait(&subject);
        }
    }

    /// Waits until the node converged after the crash at `point`.
    fn converge(
        &self,
        point: &str,
        work: Workload,
        subject: &str,
        before: &BTreeMap<String, Value>,
    ) {
        let started = Instant::now();
        let mut why = String::new();
        let converged = (|| loop {
            match self.check(work, subject, before) {
                Ok(()) => return true,
                Err(e) => why = e,
            }
            if started.elapsed() > CONVERGE {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        })();
        assert!(
            converged,
            "not converged {CONVERGE:?} after a crash at {point} ({work:?}, {subject}): {why}\nriklet log:\n{}",
            tail(&self.cluster.riklet_log())
        );
    }

    /// Whether the node is where it must be; what is not, otherwise.
    fn check(
        &self,
        work: Workload,
        subject: &str,
        before: &BTreeMap<String, Value>,
    ) -> Result<(), String> {
        let pods = self.pods().ok_or("riklet pods does not answer yet")?;
        for (id, was) in before {
            let now = pods.iter().find(|p| p["appId"] == id.as_str());
            match now {
                Some(p) if p["state"] == "RUNNING" && signature(p) == *was => {}
                Some(p) => {
                    return Err(format!(
                        "pod {id} was RUNNING as {was}, is {} as {}",
                        p["state"],
                        signature(p)
                    ));
                }
                None => return Err(format!("pod {id} was RUNNING and is gone")),
            }
        }
        let of_subject: Vec<&Value> = pods.iter().filter(|p| p["app"] == subject).collect();
        match work {
            Workload::Delete | Workload::Retention if !of_subject.is_empty() => {
                return Err(format!("deleted app {subject} still has {of_subject:?}"));
            }
            Workload::Delete | Workload::Retention => {}
            Workload::Restart if of_subject.len() != 1 => {
                return Err(format!("app {subject} has pods {of_subject:?}"));
            }
            Workload::Restart => {}
            _ if of_subject.len() != 1 || of_subject[0]["state"] != "RUNNING" => {
                return Err(format!(
                    "app {subject} is not one RUNNING pod: {of_subject:?}"
                ));
            }
            _ => {}
        }
        let live: Vec<String> = pods
            .iter()
            .filter_map(|p| p["appId"].as_str().map(String::from))
            .collect();
        let orphans = Inventory::take(&self.cluster.scope(self.prefix)).orphans(&live);
        if !orphans.is_empty() {
            return Err(format!("left over: {orphans:#?}"));
        }
        Ok(())
    }

    /// A new app of `work`, applied without waiting; its name.
    fn apply(&mut self, work: Workload) -> String {
        self.apps += 1;
        let name = format!("{}{}", self.prefix, self.apps);
        let manifest = match work {
            Workload::Image => {
                let image = self.image.as_deref().expect("a registry image");
                format!(
                    "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  containers:\n    - name: c\n      \
                     image: \"{image}\"\n      imagePullPolicy: Always\n      command: [sleep, \"3600\"]\n"
                )
            }
            Workload::Restart => bare(&name, "[sh, -c, \"sleep 1; exit 3\"]", ""),
            Workload::Ports => {
                let port = free_port();
                bare(
                    &name,
                    &format!("[httpd, -f, -p, \"{port}\", -h, /usr/share/doc/busybox-static]"),
                    &format!("      ports: {{port: {port}, target_port: {port}}}\n"),
                )
            }
            _ => bare(&name, "[sleep, \"3600\"]", ""),
        };
        let out = self.cluster.apply(&manifest, false);
        assert!(
            out.status.success(),
            "rik apply {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        name
    }

    /// A new app of `work`, once RUNNING; its name.
    fn apply_running(&mut self, work: Workload) -> String {
        let name = self.apply(work);
        wait_for(Duration::from_secs(40), &format!("{name} RUNNING"), || {
            let pods = self.pods()?;
            pods.iter()
                .any(|p| p["app"] == name.as_str() && p["state"] == "RUNNING")
                .then_some(())
        });
        name
    }

    fn delete_and_wait(&self, app: &str) {
        self.cluster.rik_ok(&["delete", app]);
        wait_for(Duration::from_secs(30), &format!("{app} gone"), || {
            let pods = self.pods()?;
            pods.iter().all(|p| p["app"] != app).then_some(())
        });
    }

    fn delete_all(&self) {
        let mut apps: Vec<String> = self
            .pods()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["app"].as_str().map(String::from))
            .collect();
        apps.dedup();
        for app in apps {
            self.delete_and_wait(&app);
        }
    }

    /// `riklet pods`, or `None` while the riklet does not answer.
    fn pods(&self) -> Option<Vec<Value>> {
        let out = Command::new(riklet_e2e::bin_dir().join("riklet"))
            .arg("--state-dir")
            .arg(self.cluster.state_dir())
            .args(["pods", "-o", "json"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()
            .cloned()
    }

    /// The RUNNING pods but `except`'s, and their signature (pids,
    /// restart counts).
    fn running_pods(&self, except: Option<&str>) -> BTreeMap<String, Value> {
        self.pods()
            .expect("riklet pods")
            .iter()
            .filter(|p| p["state"] == "RUNNING" && except.is_none_or(|app| p["app"] != app))
            .filter_map(|p| Some((p["appId"].as_str()?.to_string(), signature(p))))
            .collect()
    }
}

/// What must not change across a crash: each container's pid and
/// restart count.
fn signature(pod: &Value) -> Value {
    let containers: Vec<Value> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_json::json!([c["name"], c["pid"], c["restartCount"]]))
        .collect();
    serde_json::json!({"restartCount": pod["restartCount"], "containers": containers})
}

/// A bare-process app running busybox `args`.
fn bare(name: &str, args: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nname: {name}\nspec:\n  containers:\n    - name: c\n      \
         exec: /bin/busybox\n      args: {args}\n{extra}"
    )
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
