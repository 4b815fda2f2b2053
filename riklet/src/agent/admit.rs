//! The checks on a CREATE received from the wire, before anything is
//! touched: the instance id and every name of the definition end up in
//! paths, cgroup names, netns names, containerd ids and log names. RIK's
//! own scheduler checks none of them, so the riklet never trusts them.

use proto::manifest::{self, AppManifest, ManifestError};

use crate::runtime::containerd::{self, ContainerdError};

/// Why a CREATE was refused; each names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The instance id is not safe as a path, cgroup or netns name.
    #[error(transparent)]
    InstanceId(ManifestError),
    /// The definition JSON does not parse or validate.
    #[error("invalid definition: {0}")]
    Definition(ManifestError),
    /// An image container's containerd id (`<instance>_<container>`) would
    /// be refused by containerd (stricter than instance ids).
    #[error("spec.containers[{index}].name: container {name:?}")]
    ContainerId {
        index: usize,
        name: String,
        #[source]
        source: ContainerdError,
    },
}

/// The manifest of a CREATE of `instance_id` with `definition`, or why it
/// is refused. Pure: the fuzz target `definition` calls it with arbitrary
/// input.
pub fn admit(instance_id: &str, definition: &str) -> Result<AppManifest, Refusal> {
    manifest::validate_instance_id(instance_id).map_err(Refusal::InstanceId)?;
    let manifest = manifest::parse_definition(definition).map_err(Refusal::Definition)?;
    for (index, c) in manifest.spec.containers.iter().enumerate() {
        if c.image.is_some() {
            containerd::container_id(instance_id, &c.name).map_err(|source| {
                Refusal::ContainerId {
                    index,
                    name: c.name.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(manifest)
}
