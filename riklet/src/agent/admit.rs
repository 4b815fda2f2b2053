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

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","name":"web","replicas":1,"spec":{"containers":[{"name":"main","image":"busybox"}]}}"#;

    /// (what, instance id, definition, phrase of the refusal).
    #[rustfmt::skip]
    fn refusals() -> Vec<(&'static str, String, String, &'static str)> {
        let id = |s: &str| s.to_string();
        vec![
            ("empty id", id(""), POD.into(), "instance_id"),
            ("id traversal", id("../web-1"), POD.into(), "instance_id"),
            ("id with a slash", id("web/1"), POD.into(), "instance_id"),
            ("id with NUL", id("web-1\0"), POD.into(), "instance_id"),
            ("id upper-case", id("Web-1"), POD.into(), "instance_id"),
            ("id too long", "a".repeat(129), POD.into(), "instance_id"),
            ("id Cyrillic", id("w\u{435}b-1"), POD.into(), "instance_id"),
            ("definition empty", id("web-1"), String::new(), "invalid definition"),
            ("definition not JSON", id("web-1"), "{\"kind\": ".into(), "invalid definition"),
            ("definition a list", id("web-1"), "[1, 2]".into(), "(document)"),
            ("container with a slash", id("web-1"), POD.replace("\"main\"", "\"a/b\""), "spec.containers[0].name"),
            ("image traversal", id("web-1"), POD.replace("busybox", "../../x"), "spec.containers[0].image"),
            ("two separators for containerd", id("web--1"), POD.into(), "spec.containers[0].name: container \"main\""),
            ("containerd id too long", "a".repeat(72), POD.into(), "spec.containers[0].name"),
        ]
    }

    #[test]
    fn every_refusal_names_its_field() {
        let mut wrong = Vec::new();
        for (what, id, definition, phrase) in refusals() {
            match admit(&id, &definition) {
                Err(e) if crate::error_chain(&e).contains(phrase) => {}
                other => wrong.push(format!("{what}: expected …{phrase}…, got {other:?}")),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_bare_process_may_have_a_long_id() {
        let process = POD.replace(r#""image":"busybox""#, r#""exec":"/bin/true""#);
        assert!(admit(&"a".repeat(100), &process).is_ok());
        assert!(admit("web-1", POD).is_ok());
    }
}
