//! containerd containers: their ids and labels, what a start is given
//! ([`ContainerSpec`]), their creation with the OCI spec, their removal,
//! and the list a restarted riklet reconciles with.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
    ListContainersRequest, ListTasksRequest,
};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status as ProcessStatus;
use tonic::Code;

use super::facts::{RUNC_RUNTIME, SNAPSHOTTER, SPEC_TYPE_URL, check_identifier};
use super::rootfs::read_image_file;
use super::{ContainerdError, ContainerdRuntime, Result};
use crate::cgroups::{Layout, Limits};
use crate::runtime::spec::{
    ImageConfig, SpecError, SpecInput, User, hostname_of, nofile_limit, resolve_user,
};

/// Label: the app instance (pod) a container belongs to.
pub const LABEL_INSTANCE: &str = "riklet.instance";
/// Label: the container's name in the manifest.
pub const LABEL_CONTAINER: &str = "riklet.container";
/// Label: the app's name.
pub const LABEL_APP: &str = "riklet.app";

/// Everything needed to start one image container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub instance_id: String,
    /// The container's name in the manifest.
    pub container: String,
    /// The app's name (label `riklet.app`).
    pub app: String,
    /// Image reference, recorded on the containerd container.
    pub image: String,
    /// Chain id of the image's top layer: the committed snapshot the
    /// container's writable snapshot is prepared on.
    pub snapshot_parent: String,
    /// The image config values (entrypoint, cmd, env, working dir, user).
    pub image_config: ImageConfig,
    /// Manifest `command` (replaces the entrypoint).
    pub command: Option<Vec<String>>,
    /// Manifest `args` (replace the cmd).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// The pod's network namespace (e.g. `/run/netns/<instance>`); `None`
    /// shares the host's (hostNetwork).
    pub netns: Option<PathBuf>,
    /// cgroup path in every hierarchy, e.g. `/riklet/<instance>_<container>`.
    pub cgroups_path: String,
    /// Where `riklet logger` writes the container's output.
    pub log: crate::logs::LogSpec,
    /// Default: the instance id, cut to 63 characters.
    pub hostname: Option<String>,
    /// Bind-mounted read-only at `/etc/resolv.conf` when given.
    pub resolv_conf: Option<PathBuf>,
    /// Bind-mounted read-only at `/etc/hosts` when given.
    pub hosts: Option<PathBuf>,
    /// Extra labels (the `riklet.*` ones are always set).
    pub labels: HashMap<String, String>,
}

/// State of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// The container exists without a task (never started, or deleted).
    NoTask,
    Created,
    Running,
    Stopped {
        exit_code: u32,
    },
    Paused,
    Unknown,
}

/// One container of the namespace, for crash reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Host pid of the init process while there is one.
    pub pid: Option<u32>,
    pub status: TaskStatus,
}

impl ContainerInfo {
    /// The `riklet.instance` label.
    pub fn instance(&self) -> Option<&str> {
        self.labels.get(LABEL_INSTANCE).map(String::as_str)
    }

    /// The `riklet.container` label.
    pub fn container(&self) -> Option<&str> {
        self.labels.get(LABEL_CONTAINER).map(String::as_str)
    }
}

/// The containerd id of a pod container: `<instance>_<container>`, both
/// parts validated as the manifest rules say and the whole as containerd
/// requires.
pub fn container_id(instance_id: &str, container: &str) -> Result<String> {
    proto::manifest::validate_instance_id(instance_id).map_err(ContainerdError::Id)?;
    proto::manifest::validate_name("container", container).map_err(ContainerdError::Id)?;
    let id = format!("{instance_id}_{container}");
    check_identifier(&id).map_err(|reason| ContainerdError::IdRejected {
        id: id.clone(),
        reason,
    })?;
    Ok(id)
}

/// Splits a container id made by [`container_id`] into instance id and
/// container name.
pub fn split_container_id(id: &str) -> Option<(&str, &str)> {
    id.split_once('_')
}

impl ContainerdRuntime {
    /// Creates the container `id` on its prepared snapshot (whose `mounts`
    /// show the image's `/etc/passwd` and `/etc/group`), with its OCI spec
    /// and labels.
    pub(super) async fn create_container(
        &self,
        id: &str,
        spec: &ContainerSpec,
        mounts: &[Mount],
    ) -> Result<()> {
        let oci = runtime_spec(spec, mounts).map_err(|source| ContainerdError::Spec {
            id: id.to_string(),
            source,
        })?;
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_INSTANCE.into(), spec.instance_id.clone());
        labels.insert(LABEL_CONTAINER.into(), spec.container.clone());
        labels.insert(LABEL_APP.into(), spec.app.clone());
        let container = Container {
            id: id.to_string(),
            labels,
            image: spec.image.clone(),
            runtime: Some(Runtime {
                name: RUNC_RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: serde_json::to_vec(&oci).expect("a runtime spec serializes"),
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        self.containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("create container", id, s))?;
        Ok(())
    }

    /// The container `id` as containerd records it.
    pub(super) async fn container(&self, id: &str) -> Result<Container> {
        self.containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(|s| ContainerdError::lookup("get container", id, s))?
            .into_inner()
            .container
            .ok_or_else(|| ContainerdError::NotFound(id.to_string()))
    }

    pub(super) async fn delete_container(&self, id: &str) -> Result<()> {
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("delete container", id, s)),
        }
    }

    /// Every container of the namespace with its labels and task state.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let containers = self
            .containers()
            .list(self.request(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| ContainerdError::rpc("list containers", "", s))?
            .into_inner()
            .containers;
        let tasks = self
            .tasks()
            .list(self.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| ContainerdError::rpc("list tasks", "", s))?
            .into_inner()
            .tasks;
        let mut out: Vec<ContainerInfo> = containers
            .into_iter()
            .map(|c| {
                // containerd 1.6 fills `id` (the init process is named
                // after its container), later versions `container_id`.
                let task = tasks.iter().find(|t| {
                    t.container_id == c.id || (t.container_id.is_empty() && t.id == c.id)
                });
                let status =
                    task.map_or(TaskStatus::NoTask, |t| task_status(t.status, t.exit_status));
                let pid = task
                    .map(|t| t.pid)
                    .filter(|&p| p != 0 && !matches!(status, TaskStatus::Stopped { .. }));
                ContainerInfo {
                    id: c.id,
                    labels: c.labels,
                    pid,
                    status,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// A task's state from containerd's process status.
fn task_status(status: i32, exit_code: u32) -> TaskStatus {
    match ProcessStatus::try_from(status) {
        Ok(ProcessStatus::Created) => TaskStatus::Created,
        Ok(ProcessStatus::Running) => TaskStatus::Running,
        Ok(ProcessStatus::Stopped) => TaskStatus::Stopped { exit_code },
        Ok(ProcessStatus::Paused | ProcessStatus::Pausing) => TaskStatus::Paused,
        _ => TaskStatus::Unknown,
    }
}

/// The cgroup a container's spec places it in (`linux.cgroupsPath`).
pub(super) fn cgroups_path(container: &Container) -> Option<PathBuf> {
    let any = container.spec.as_ref()?;
    let spec: oci_spec::runtime::Spec = serde_json::from_slice(&any.value).ok()?;
    spec.linux().as_ref()?.cgroups_path().clone()
}

/// The OCI runtime spec of a container, its user resolved in the image's
/// own `/etc/passwd` and `/etc/group` (read from the snapshot's `mounts`).
fn runtime_spec(
    spec: &ContainerSpec,
    mounts: &[Mount],
) -> std::result::Result<oci_spec::runtime::Spec, SpecError> {
    let user = match spec.image_config.user.as_deref().map(str::trim) {
        None | Some("") => User::default(),
        Some(user) => {
            let passwd = read_image_file(mounts, "etc/passwd");
            let group = read_image_file(mounts, "etc/group");
            resolve_user(user, passwd.as_deref(), group.as_deref())?
        }
    };
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| hostname_of(&spec.instance_id));
    crate::runtime::spec::build(&SpecInput {
        image: &spec.image_config,
        command: spec.command.as_deref(),
        args: &spec.args,
        env: &spec.env,
        user,
        hostname: &hostname,
        netns: spec.netns.as_deref(),
        cgroups_path: &spec.cgroups_path,
        limits: spec.limits,
        limit_swap: swap_accounting(),
        nofile: nofile_limit(),
        resolv_conf: spec.resolv_conf.as_deref(),
        hosts: spec.hosts.as_deref(),
    })
}

/// Whether the host accounts swap per cgroup, so that the spec may cap
/// memory+swap (runc fails on a swap limit the kernel cannot apply).
fn swap_accounting() -> bool {
    match Layout::detect() {
        Ok(Layout::Hybrid { .. }) => {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        }
        Ok(Layout::Unified { v2 }) => fs::read_dir(&v2)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.path().join("memory.swap.max").exists())
            })
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_validated() {
        assert_eq!(container_id("web-x1", "nginx").unwrap(), "web-x1_nginx");
        assert!(container_id("Web", "nginx").is_err());
        assert!(container_id("web", "ngi_nx").is_err());
        // DNS labels allow "--", containerd does not.
        let e = container_id("web--x1", "nginx").unwrap_err().to_string();
        assert!(e.contains("two separators"), "{e}");
        let e = container_id(&"a".repeat(71), "nginx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("76"), "{e}");
        assert_eq!(
            split_container_id("web-x1_nginx"),
            Some(("web-x1", "nginx"))
        );
    }

    #[test]
    fn specs_record_their_cgroup() {
        let spec = ContainerSpec {
            instance_id: "web-x1".into(),
            container: "nginx".into(),
            image_config: ImageConfig {
                cmd: vec!["/bin/sh".into()],
                ..ImageConfig::default()
            },
            cgroups_path: "/riklet/web-x1_nginx".into(),
            ..ContainerSpec::default()
        };
        let oci = runtime_spec(&spec, &[]).unwrap();
        let container = Container {
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: serde_json::to_vec(&oci).unwrap(),
            }),
            ..Default::default()
        };
        assert_eq!(
            cgroups_path(&container),
            Some(PathBuf::from("/riklet/web-x1_nginx"))
        );
        assert_eq!(cgroups_path(&Container::default()), None);
    }
}
