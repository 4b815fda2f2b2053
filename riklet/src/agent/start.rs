//! Starting one container on the node: attach the pod to its network
//! (and, for a bare process, create its cgroup meanwhile), then run a bare
//! process behind its shim, or pull and run an image under containerd.
//! Runs off the agent task; the outcome goes back to it as a
//! [`StartResult`]. Each step is timed in the log ([`crate::steps`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proto::manifest::Container;

use super::host::{StartRequest, StartResult};
use super::node::NodeHost;
use super::phase::{CONTAINERD_UNAVAILABLE, ERR_IMAGE_PULL, NETWORK_ERROR};
use crate::cgroups::{CgroupError, ContainerCgroup, Limits};
use crate::logs::LogSpec;
use crate::runtime::containerd::{self, ContainerSpec, ContainerdError};
use crate::runtime::image::ImageError;
use crate::runtime::process::ProcessError;
use crate::runtime::shim::ShimSpec;
use crate::runtime::spec::ImageConfig;
use crate::state::{ExitRecord, ProcId, RunRecord};

impl NodeHost {
    #[tracing::instrument(name = "start", skip_all, fields(pod = %request.instance_id, container = %request.container.name))]
    pub(super) async fn start_container(&self, request: StartRequest) -> StartResult {
        crate::steps::timed("total", self.start_steps(request)).await
    }

    async fn start_steps(&self, request: StartRequest) -> StartResult {
        let c = &request.container;
        let cgroup = self.cgroups.container(&request.instance_id, &c.name);
        // A bare process's cgroup does not depend on the pod network: both
        // are made at the same time.
        let bare = c.image.is_none() && c.exec.is_some();
        let prepare = async {
            if bare {
                self.prepare_cgroup(&cgroup, limits(c)).await
            } else {
                Ok(None)
            }
        };
        let (netns, cgroup_ready) = tokio::join!(self.attach(&request), prepare);
        let log = LogSpec {
            dir: crate::logs::container_dir(
                &self.log_dir,
                &request.app,
                &request.instance_id,
                &c.name,
            ),
            restart_count: request.restart_count,
            rotation: crate::logs::app_rotation(self.log_rotation, request.logs.as_ref()),
        };
        let job = Job {
            request: &request,
            cgroup,
            log,
            netns: netns?,
        };
        match (&c.image, &c.exec) {
            (Some(image), _) => self.start_image(job, image).await,
            (None, Some(exec)) => self.start_process(job, exec, cgroup_ready).await,
            (None, None) => Err(ExitRecord::without_status(
                "StartError",
                "the container has neither an image nor an exec",
            )),
        }
    }

    /// Attaches the pod to its network (unless `hostNetwork`); its network
    /// namespace.
    async fn attach(&self, request: &StartRequest) -> Result<Option<PathBuf>, ExitRecord> {
        if request.host_network {
            return Ok(None);
        }
        crate::steps::timed("network", self.network.attach(&request.instance_id))
            .await
            .map(|address| Some(address.netns))
            .map_err(|e| {
                ExitRecord::without_status(
                    NETWORK_ERROR,
                    format!("pod network: {}", crate::error_chain(&e)),
                )
            })
    }

    /// Creates a bare process's cgroup with its limits; the cgroup's OOM
    /// kill count before the process runs, so that one killed at once (a
    /// 64 MiB buffer under a 16 MiB limit) counts as a new OOM kill.
    async fn prepare_cgroup(
        &self,
        cgroup: &ContainerCgroup,
        limits: Limits,
    ) -> Result<Option<u64>, String> {
        let cgroup = cgroup.clone();
        let span = tracing::Span::current();
        let created = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                crate::steps::timed_sync("cgroup", || {
                    cgroup.create(limits)?;
                    crate::crash::point("create.after_cgroup");
                    Ok::<_, CgroupError>(crate::metrics::cgroup_stats::read(&cgroup).oom_kills)
                })
            })
        })
        .await;
        match created {
            Err(e) => Err(format!("cgroup: {e}")),
            Ok(Err(e)) => Err(format!("cgroup: {}", crate::error_chain(&e))),
            Ok(Ok(oom_kills)) => Ok(oom_kills),
        }
    }

    /// A bare process, its cgroup ready (or not: `cgroup_ready` says why):
    /// starts its shim, which creates the process in the cgroup and joins
    /// the pod's network namespace before `exec`.
    async fn start_process(
        &self,
        job: Job<'_>,
        exec: &str,
        cgroup_ready: Result<Option<u64>, String>,
    ) -> StartResult {
        let c = &job.request.container;
        let instance_id = &job.request.instance_id;
        let oom_kills = cgroup_ready.map_err(|e| ExitRecord::without_status("StartError", e))?;
        let spec = ShimSpec {
            exec: exec.into(),
            args: c.args.clone(),
            env: env(c),
            uid: self.uid,
            gid: self.gid,
            cgroup_v2: job.cgroup.v2_dir(),
            v1_tasks_files: job.cgroup.v1_tasks_files(),
            log: job.log.clone(),
            netns: job.netns.clone(),
        };
        match self.process.start(instance_id, &c.name, &spec).await {
            Ok(run) => Ok((run, oom_kills)),
            // The shim recorded why exec failed (exit code 126/127).
            Err(e @ ProcessError::StartFailed(_)) => Err(self
                .process
                .read_exit(instance_id, &c.name)
                .unwrap_or_else(|| {
                    ExitRecord::without_status("StartError", crate::error_chain(&e))
                })),
            Err(e) => Err(ExitRecord::without_status(
                "StartError",
                crate::error_chain(&e),
            )),
        }
    }

    /// An image container: pull (per the pull policy), remove what an
    /// earlier run left, create and start it under containerd in the pod's
    /// network namespace and the riklet's cgroup tree (runc creates the
    /// cgroup and applies the limits).
    async fn start_image(&self, job: Job<'_>, image: &str) -> StartResult {
        let Some(cd) = self.containerd.get() else {
            return Err(ExitRecord::without_status(
                CONTAINERD_UNAVAILABLE,
                self.containerd.why_unavailable(),
            ));
        };
        let c = &job.request.container;
        let notes = &job.request.notes;
        let pulled = std::sync::atomic::AtomicBool::new(false);
        let asked = std::time::Instant::now();
        let info = cd
            .images
            .ensure_observed(image, c.pull_policy(), || {
                pulled.store(true, std::sync::atomic::Ordering::Relaxed);
                notes.note("Pulling", format!("Pulling image \"{image}\""));
            })
            .await
            .map_err(|e| {
                let reason = if image_error_unavailable(&e) {
                    CONTAINERD_UNAVAILABLE
                } else {
                    ERR_IMAGE_PULL
                };
                ExitRecord::without_status(reason, crate::error_chain(&e))
            })?;
        notes.note(
            "Pulled",
            if pulled.into_inner() {
                format!(
                    "Successfully pulled image \"{image}\" in {:.1}s",
                    asked.elapsed().as_secs_f64()
                )
            } else {
                format!("Container image \"{image}\" already present on the node")
            },
        );
        let id =
            containerd::container_id(&job.request.instance_id, &c.name).map_err(start_error)?;
        // An earlier run's task, container and snapshot.
        cd.runtime.remove(&id).await.map_err(start_error)?;
        let spec = ContainerSpec {
            instance_id: job.request.instance_id.clone(),
            container: c.name.clone(),
            app: job.request.app.clone(),
            image: info.reference.clone(),
            snapshot_parent: info.chain_id.clone(),
            image_config: ImageConfig {
                entrypoint: info.entrypoint.clone(),
                cmd: info.cmd.clone(),
                env: info.env.clone(),
                working_dir: info.working_dir.clone(),
                user: info.user.clone(),
            },
            command: c.command.clone(),
            args: c.args.clone(),
            env: env(c),
            limits: limits(c),
            netns: job.netns,
            cgroups_path: format!("/{}", job.cgroup.rel()),
            log: job.log,
            hostname: None,
            resolv_conf: Path::new("/etc/resolv.conf")
                .is_file()
                .then(|| PathBuf::from("/etc/resolv.conf")),
            hosts: None,
            labels: HashMap::new(),
        };
        let run = cd.runtime.start(spec).await.map_err(start_error)?;
        let pid = run.pid as i32;
        Ok((
            RunRecord {
                shim: None,
                process: ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }),
                started_at: run.started_at,
                container_id: Some(run.container_id),
                image_digest: Some(info.digest),
            },
            None,
        ))
    }
}

/// What one start works with besides the request.
struct Job<'a> {
    request: &'a StartRequest,
    cgroup: ContainerCgroup,
    log: LogSpec,
    /// The pod's network namespace (`None` on the host network).
    netns: Option<PathBuf>,
}

fn limits(c: &Container) -> Limits {
    Limits {
        cpu_millis: c.resources.as_ref().and_then(|r| r.cpu_millis()),
        memory_bytes: c.resources.as_ref().and_then(|r| r.memory_bytes()),
    }
}

fn env(c: &Container) -> Vec<(String, String)> {
    c.env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

/// A containerd failure while starting: containerd down, or a refusal.
fn start_error(e: ContainerdError) -> ExitRecord {
    let reason = if e.is_unavailable() {
        CONTAINERD_UNAVAILABLE
    } else {
        "StartError"
    };
    ExitRecord::without_status(reason, crate::error_chain(&e))
}

/// Whether a pull failed because containerd (not the registry) is away.
fn image_error_unavailable(e: &ImageError) -> bool {
    match e {
        ImageError::Connect { .. } => true,
        ImageError::Containerd { source, .. } => source.code() == tonic::Code::Unavailable,
        _ => false,
    }
}
