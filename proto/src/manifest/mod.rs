//! App manifests: parsing, validation and the normalized form.
//!
//! Two input forms are accepted (docs/protocol.md): RIK workload v1 (JSON or YAML,
//! `null` wherever RIK leaves a field out) and seed 004's compact deployment
//! file (`name`, `repo`, `version`, `action: deploy`, `metadata.name`). Both
//! become one [`AppManifest`], validated once in [`parse`] by every party.
//! Every error names the offending field so that a user can fix the file.
//!
//! # Layout
//! - this module: the normalized form ([`AppManifest`]) and [`parse`];
//! - `workload`: the RIK workload form as written (nulls, one-or-many);
//! - `compact`: seed 004's deployment file;
//! - `nesting`: a bound on flow nesting, checked before the YAML parser;
//! - `de`: serde's errors as field errors (path and what was expected),
//!   and the deserializers of one-or-many fields and numbers;
//! - `validate`: the checks on the normalized form, names and ids;
//! - `reference`: the image-reference grammar, shared with the riklet's
//!   image store;
//! - `quantity`: CPU and memory quantities.

mod compact;
mod de;
mod nesting;
mod quantity;
mod reference;
mod validate;
mod workload;

use serde::{Deserialize, Serialize};

pub use quantity::{QuantityError, parse_cpu, parse_memory, parse_size};
pub use reference::{ImageReferenceError, MAX_IMAGE_NAME, check_image_reference};
pub use validate::{validate_instance_id, validate_name, validate_node_name};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest `replicas` accepted: a typo like 1000000 must not flood nodes.
pub const MAX_REPLICAS: u32 = 1000;
/// Most containers in a pod: each is a process, a cgroup and a log
/// directory on the node.
pub const MAX_CONTAINERS: usize = 64;
/// Smallest log file size limit (`spec.logs.maxSize`, the node's
/// `logs.max_size`): a 16 KiB record and a few more must fit in one file.
pub const MIN_LOG_FILE_SIZE: u64 = 64 * 1024;

/// A manifest that failed to parse or validate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The document is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} bytes allowed")]
    TooLarge(usize),
    /// More nested `[`/`{` than the parser is given (it slows down with
    /// the square of the depth).
    #[error(
        "manifest nests brackets {0} deep, at most {max} allowed",
        max = nesting::MAX_FLOW_NESTING
    )]
    TooDeep(usize),
    /// Neither valid YAML nor valid JSON.
    #[error("manifest is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// A field is missing, of the wrong type or has a forbidden value.
    #[error("{field}: {reason}")]
    Field {
        /// Dotted path of the field, e.g. `spec.containers[0].exec`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Restart policy of a pod's containers (kubelet semantics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// When a riklet contacts the registry for a container's image
/// (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    /// Resolve the reference at the registry at every start; download only
    /// what the node lacks.
    Always,
    /// Use the node's copy; pull only when the image is missing.
    #[default]
    IfNotPresent,
    /// Never contact a registry: the image must already be on the node.
    Never,
}

/// Transport protocol of an exposed port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The name manifests and listings use (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (`IPPROTO_TCP` 6, `IPPROTO_UDP` 17,
    /// `IPPROTO_SCTP` 132).
    pub fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One exposed port: `port` on the node, `target_port` in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
    /// RIK's port type (e.g. `nodePort`), kept as given.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a variable ({name: A, value: b})")]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Resource limits, as written and as parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "resource limits ({cpu: 500m, memory: 64Mi})"
)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl Resources {
    /// CPU limit in millicores (`"500m"` → 500, `"2"` → 2000).
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu.as_deref().and_then(|c| parse_cpu(c).ok())
    }

    /// Memory limit in bytes (`"64Mi"` → 67108864).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory.as_deref().and_then(|m| parse_memory(m).ok())
    }
}

/// Log rotation limits of an app's containers (`spec.logs`), overriding
/// the node's `[logs]` ones; as written, checked by [`parse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "log limits ({maxSize: 1Mi, maxFiles: 3})"
)]
pub struct LogLimits {
    /// Largest log file (`"1Mi"`), at least [`MIN_LOG_FILE_SIZE`].
    #[serde(rename = "maxSize", default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<String>,
    /// Files kept per container run, the current one included; at least 1.
    #[serde(rename = "maxFiles", default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

impl LogLimits {
    /// The size limit in bytes (`"1Mi"` → 1048576).
    pub fn max_size_bytes(&self) -> Option<u64> {
        self.max_size.as_deref().and_then(|s| parse_size(s).ok())
    }
}

/// One container of a pod: an OCI image or a bare process (`exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Absolute path of an executable run as a bare process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Only for image containers; `None` means [`ImagePullPolicy::IfNotPresent`].
    #[serde(
        rename = "imagePullPolicy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub image_pull_policy: Option<ImagePullPolicy>,
}

impl Container {
    /// The pull policy in force (IfNotPresent unless the manifest says).
    pub fn pull_policy(&self) -> ImagePullPolicy {
        self.image_pull_policy.unwrap_or_default()
    }
}

/// Where an app came from, for seed 004's `deployment` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "a deployment ({app, repository, version})")]
pub struct Deployment {
    pub app: String,
    pub repository: String,
    pub version: String,
}

/// The pod template of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub containers: Vec<Container>,
    #[serde(rename = "restartPolicy", default)]
    pub restart_policy: RestartPolicy,
    /// Run in the node's network namespace instead of one of the pod's own
    /// (the pod's IP is then the node's).
    #[serde(rename = "hostNetwork", default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// Log rotation limits; `None` keeps the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogLimits>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A validated app manifest, serialized as RIK workload v1 JSON (the
/// `definition` of `InstanceScheduling`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppManifest {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub replicas: u32,
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
}

impl AppManifest {
    /// The `definition` JSON sent to riklets.
    pub fn to_definition(&self) -> String {
        serde_json::to_string(self).expect("manifest serializes")
    }

    /// The deployment triple of seed 004, derived from the first container
    /// when the manifest did not carry one.
    pub fn deployment(&self) -> Deployment {
        if let Some(d) = &self.deployment {
            return d.clone();
        }
        let first = &self.spec.containers[0];
        let (repository, version) = match (&first.image, &first.exec) {
            (Some(image), _) => split_image(image),
            (None, Some(exec)) => (exec.clone(), String::new()),
            (None, None) => (String::new(), String::new()),
        };
        Deployment {
            app: self.name.clone(),
            repository,
            version,
        }
    }
}

/// `repository:tag` → (repository, tag); no tag is `latest`.
fn split_image(image: &str) -> (String, String) {
    let (repository, tag) = reference::split_tag(image);
    (repository.to_string(), tag.unwrap_or("latest").to_string())
}

/// Parses and validates a manifest in either form, JSON or YAML.
pub fn parse(text: &str) -> Result<AppManifest, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(text.len()));
    }
    let value = parse_value(text)?;
    let map = value
        .as_mapping()
        .ok_or_else(|| field_err("(document)", "must be a mapping/object"))?;
    let has = |k: &str| map.contains_key(serde_yaml::Value::String(k.to_string()));
    let manifest = if has("kind") || has("spec") || has("apiVersion") {
        let raw: workload::Workload = de::from_value(value)?;
        raw.into_manifest()?
    } else if has("repo") {
        let raw: compact::Compact = de::from_value(value)?;
        raw.into_manifest()?
    } else {
        return Err(field_err(
            "kind",
            "missing: expected a RIK workload (`kind: Pod`) or a deployment file (`repo`)",
        ));
    };
    validate::validate(&manifest)?;
    Ok(manifest)
}

/// The document as a tree. JSON (every `definition`, many manifests) is
/// read by serde_json, whose time is linear in any nesting; the rest by
/// the YAML parser (YAML 1.2 is a superset of JSON: the same tree), after
/// the bound on flow nesting that keeps its time in check.
fn parse_value(text: &str) -> Result<serde_yaml::Value, ManifestError> {
    if text.trim_start().starts_with('{')
        && let Ok(value) = serde_json::from_str(text)
    {
        return Ok(value);
    }
    let nesting = nesting::flow_nesting_bound(text);
    if nesting > nesting::MAX_FLOW_NESTING {
        return Err(ManifestError::TooDeep(nesting));
    }
    serde_yaml::from_str(text).map_err(|e| {
        let message = e.to_string();
        out_of_range_integer(&message).unwrap_or(ManifestError::Syntax(message))
    })
}

/// The YAML parser refuses a whole number beyond 64 bits while it builds
/// the tree (`PATH: invalid type: integer `N` as u128, …`), naming the path
/// as the document spells it: as a field error, with the path the other
/// errors name (one `ports` object is `ports[0]`).
fn out_of_range_integer(message: &str) -> Option<ManifestError> {
    let (path, rest) = message.split_once(": invalid type: integer `")?;
    let (number, _) = rest.split_once('`')?;
    let path = path.replace(".ports.", ".ports[0].");
    Some(field_err(
        path,
        format!("{number} is out of range: no field takes a whole number beyond 64 bits"),
    ))
}

/// Parses a `definition` received on the wire (JSON, either form).
pub fn parse_definition(json: &str) -> Result<AppManifest, ManifestError> {
    parse(json)
}

#[cfg(test)]
mod tests;
