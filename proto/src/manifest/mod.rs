//! App manifests: parsing, validation and the normalized form.
//!
//! Two input forms are accepted (DESIGN.md): RIK workload v1 (JSON or YAML,
//! `null` wherever RIK leaves a field out) and seed 004's compact deployment
//! file (`name`, `repo`, `version`, `action: deploy`, `metadata.name`). Both
//! become one [`AppManifest`], validated once in [`parse`] by every party.
//! Every error names the offending field so that a user can fix the file.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Largest `replicas` accepted: a typo like 1000000 must not flood nodes.
pub const MAX_REPLICAS: u32 = 1000;

/// A manifest that failed to parse or validate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The document is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} bytes allowed")]
    TooLarge(usize),
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
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
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Resource limits, as written and as parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

fn split_image(image: &str) -> (String, String) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            image[last_slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// Parses and validates a manifest in either form, JSON or YAML.
pub fn parse(text: &str) -> Result<AppManifest, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(text.len()));
    }
    // YAML 1.2 is a superset of JSON: one parser serves both forms.
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
    let map = value
        .as_mapping()
        .ok_or_else(|| field_err("(document)", "must be a mapping/object"))?;
    let has = |k: &str| map.contains_key(serde_yaml::Value::String(k.to_string()));
    let manifest = if has("kind") || has("spec") || has("apiVersion") {
        let raw: raw::Workload = from_value(value)?;
        raw.into_manifest()?
    } else if has("repo") {
        let raw: raw::Compact = from_value(value)?;
        raw.into_manifest()?
    } else {
        return Err(field_err(
            "kind",
            "missing: expected a RIK workload (`kind: Pod`) or a deployment file (`repo`)",
        ));
    };
    validate(&manifest)?;
    Ok(manifest)
}

/// Parses a `definition` received on the wire (JSON, either form).
pub fn parse_definition(json: &str) -> Result<AppManifest, ManifestError> {
    parse(json)
}

fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
) -> Result<T, ManifestError> {
    serde_yaml::from_value(value).map_err(|e| {
        // serde_yaml puts the field path first ("spec.containers[0]: ...").
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, reason)) if !path.contains(' ') => field_err(path, reason),
            // A top-level unknown field comes without a path.
            _ => match msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split_once('`'))
            {
                Some((field, _)) => field_err(field, msg.clone()),
                None => ManifestError::Syntax(msg),
            },
        }
    })
}

/// Validates a DNS-1123 label (the form of app and container names).
pub fn validate_name(field: &str, name: &str) -> Result<(), ManifestError> {
    if name.is_empty() {
        return Err(field_err(field, "must not be empty"));
    }
    if name.len() > 63 {
        return Err(field_err(
            field,
            format!("{} characters, at most 63 allowed", name.len()),
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !name.starts_with('-') && !name.ends_with('-');
    if !ok_chars || !ok_ends {
        return Err(field_err(
            field,
            format!(
                "{name:?} is not a DNS-1123 label (lower-case letters, digits and '-', \
                 starting and ending with a letter or digit)"
            ),
        ));
    }
    Ok(())
}

/// Validates an instance id (`<app>-<suffix>`, or RIK's `word-word-1234`):
/// lower-case letters, digits and '-', at most 128 characters, so that it
/// is safe in paths and cgroup names.
pub fn validate_instance_id(id: &str) -> Result<(), ManifestError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(field_err(
            "instance_id",
            format!("{id:?} is not a valid instance id ([a-z0-9-], at most 128 characters)"),
        ))
    }
}

/// Validates a node name: a DNS-1123 subdomain (labels joined by dots, at
/// most 253 characters), the form hostnames take.
pub fn validate_node_name(field: &str, name: &str) -> Result<(), ManifestError> {
    if name.len() > 253 {
        return Err(field_err(
            field,
            format!("{} characters, at most 253 allowed", name.len()),
        ));
    }
    name.split('.')
        .try_for_each(|label| validate_name(field, label))
        .map_err(|_| {
            field_err(
                field,
                format!("{name:?} is not a DNS-1123 subdomain (e.g. node-1.example.com)"),
            )
        })
}

fn validate(m: &AppManifest) -> Result<(), ManifestError> {
    if m.api_version != "v1" {
        return Err(field_err(
            "apiVersion",
            format!("{:?} is not supported, expected \"v1\"", m.api_version),
        ));
    }
    if m.kind != "Pod" {
        return Err(field_err(
            "kind",
            format!("{:?} is not supported, expected \"Pod\"", m.kind),
        ));
    }
    validate_name("name", &m.name)?;
    if m.replicas == 0 {
        return Err(field_err("replicas", "must be at least 1"));
    }
    if m.replicas > MAX_REPLICAS {
        return Err(field_err(
            "replicas",
            format!("{} is more than the {MAX_REPLICAS} allowed", m.replicas),
        ));
    }
    if m.spec.containers.is_empty() {
        return Err(field_err(
            "spec.containers",
            "at least one container is required",
        ));
    }
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for (i, c) in m.spec.containers.iter().enumerate() {
        let at = |f: &str| format!("spec.containers[{i}].{f}");
        validate_name(&at("name"), &c.name)?;
        if !names.insert(c.name.as_str()) {
            return Err(field_err(
                at("name"),
                format!("duplicate container name {:?}", c.name),
            ));
        }
        match (&c.image, &c.exec) {
            (Some(_), Some(_)) => {
                return Err(field_err(
                    at("exec"),
                    "give either `image` or `exec`, not both",
                ));
            }
            (None, None) => {
                return Err(field_err(
                    at("image"),
                    "one of `image` or `exec` is required",
                ));
            }
            (Some(image), None) => validate_image(&at("image"), image)?,
            (None, Some(exec)) => validate_exec(&at("exec"), exec)?,
        }
        if c.exec.is_some() && c.image_pull_policy.is_some() {
            return Err(field_err(
                at("imagePullPolicy"),
                "only an `image` container has a pull policy",
            ));
        }
        if c.exec.is_some() && c.command.is_some() {
            return Err(field_err(
                at("command"),
                "a bare process takes `exec` and `args`, not `command`",
            ));
        }
        for (j, a) in c.args.iter().chain(c.command.iter().flatten()).enumerate() {
            if a.contains('\0') {
                return Err(field_err(at(&format!("args[{j}]")), "contains a NUL byte"));
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            let valid = !e.name.is_empty()
                && !e.name.contains('=')
                && !e.name.contains('\0')
                && !e.value.contains('\0');
            if !valid {
                return Err(field_err(
                    at(&format!("env[{j}].name")),
                    format!("{:?} is not a valid variable name", e.name),
                ));
            }
        }
        for (j, p) in c.ports.iter().enumerate() {
            if p.port == 0 {
                return Err(field_err(
                    at(&format!("ports[{j}].port")),
                    "must be 1-65535",
                ));
            }
            if p.target_port == 0 {
                return Err(field_err(
                    at(&format!("ports[{j}].target_port")),
                    "must be 1-65535",
                ));
            }
            if !host_ports.insert((p.port, p.protocol as u8)) {
                return Err(field_err(
                    at(&format!("ports[{j}].port")),
                    format!("port {} is exposed twice", p.port),
                ));
            }
        }
        if let Some(r) = &c.resources {
            if let Some(cpu) = &r.cpu {
                parse_cpu(cpu).map_err(|e| field_err(at("resources.cpu"), e))?;
            }
            if let Some(mem) = &r.memory {
                parse_memory(mem).map_err(|e| field_err(at("resources.memory"), e))?;
            }
        }
    }
    Ok(())
}

fn validate_exec(field: &str, exec: &str) -> Result<(), ManifestError> {
    if !exec.starts_with('/') {
        return Err(field_err(
            field,
            format!("{exec:?} must be an absolute path"),
        ));
    }
    if exec.contains('\0') || exec.split('/').any(|c| c == "..") {
        return Err(field_err(
            field,
            format!("{exec:?} must not contain '..' or NUL"),
        ));
    }
    Ok(())
}

fn validate_image(field: &str, image: &str) -> Result<(), ManifestError> {
    check_image_reference(image).map_err(|why| {
        field_err(
            field,
            format!("{image:?} is not a valid image reference: {why}"),
        )
    })
}

/// Longest image name (registry and repository) the distribution spec
/// allows.
pub const MAX_IMAGE_NAME: usize = 255;

/// Checks an image reference against the grammar of the distribution
/// project (`[registry[:port]/]path[:tag][@digest]`, docker's
/// `reference.Parse`), so that a reference no registry could serve is
/// refused at `rik apply` rather than failing on a node. Returns why not.
pub fn check_image_reference(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("empty".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag is what follows the last ':' after the last '/' (a ':' before
    // it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
            });
        if !ok {
            return Err(format!(
                "tag {t:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
            ));
        }
    }
    if name.is_empty() {
        return Err("no repository".into());
    }
    if name.len() > MAX_IMAGE_NAME {
        return Err(format!(
            "the name is {} characters, at most {MAX_IMAGE_NAME} allowed",
            name.len()
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            check_domain(first)?;
            components.remove(0);
        }
    }
    for c in components {
        if !path_component(c) {
            return Err(format!(
                "repository part {c:?} must be lower-case letters and digits, separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// `host[:port]`: DNS labels of letters, digits and inner '-', or an
/// IPv6 address in brackets.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = || format!("registry {domain:?} is not a host name or host:port");
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut sep = String::new();
    for &b in bytes {
        if alnum(b) {
            let ok = sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.bytes().all(|s| s == b'-');
            if !ok {
                return false;
            }
            sep.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            sep.push(b as char);
        } else {
            return false;
        }
    }
    true
}

/// `algorithm:hex`; the registered algorithms are checked for their length.
fn check_digest(d: &str) -> Result<(), String> {
    let bad = |why: &str| format!("digest {d:?}: {why}");
    let (algo, hex) = d
        .split_once(':')
        .ok_or_else(|| bad("expected algorithm:hex"))?;
    let algo_ok = !algo.is_empty()
        && algo.split(['+', '.', '_', '-']).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if !algo_ok {
        return Err(bad("bad algorithm"));
    }
    let want = match algo {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match want {
        Some(n) if hex.len() == n && hex_ok => Ok(()),
        Some(n) => Err(bad(&format!("{algo} needs {n} lower-case hex digits"))),
        None if hex.len() >= 32 && hex_ok => Ok(()),
        None => Err(bad("at least 32 lower-case hex digits")),
    }
}

/// Parses a CPU quantity: `"500m"` or a number of cores (`"1"`, `"0.5"`).
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a CPU quantity (e.g. \"500m\" or \"1.5\")");
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let cores: f64 = s.parse().map_err(|_| bad())?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(bad());
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 || millis > 1_000_000 {
        return Err(format!("{s:?} is out of range (1m to 1000 cores)"));
    }
    Ok(millis)
}

/// Parses a memory quantity: bytes, or with a `Ki Mi Gi Ti` / `k M G T` suffix.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a memory quantity (e.g. \"64Mi\")");
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    if bytes < 4096 {
        return Err(format!("{s:?} is below the 4096 bytes minimum"));
    }
    Ok(bytes)
}

/// Input shapes as users and RIK write them (`null` allowed everywhere).
mod raw {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Workload {
        #[serde(rename = "apiVersion")]
        api_version: Option<String>,
        kind: Option<String>,
        name: Option<String>,
        replicas: Option<i64>,
        spec: Option<Spec>,
        deployment: Option<Deployment>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        containers: Option<Vec<RawContainer>>,
        #[serde(rename = "restartPolicy")]
        restart_policy: Option<RestartPolicy>,
        /// Checked by hand, to name the field in errors.
        #[serde(rename = "hostNetwork")]
        host_network: Option<serde_yaml::Value>,
        /// RIK's function workloads; not run by riklet.
        function: Option<serde_yaml::Value>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawContainer {
        name: Option<String>,
        image: Option<String>,
        exec: Option<String>,
        command: Option<Vec<String>>,
        args: Option<Vec<String>>,
        env: Option<Vec<EnvVar>>,
        ports: Option<OneOrMany<RawPort>>,
        resources: Option<Resources>,
        /// Parsed by hand: serde's error for an unknown variant names no field.
        #[serde(rename = "imagePullPolicy")]
        image_pull_policy: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawPort {
        port: i64,
        target_port: Option<i64>,
        protocol: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }

    fn port_number(field: String, n: i64) -> Result<u16, ManifestError> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(field_err(
                field,
                format!("{n} is not a port number (1-65535)"),
            )),
        }
    }

    impl Workload {
        pub fn into_manifest(self) -> Result<AppManifest, ManifestError> {
            let spec = self.spec.ok_or_else(|| field_err("spec", "missing"))?;
            if spec.function.as_ref().is_some_and(|f| !f.is_null()) {
                return Err(field_err(
                    "spec.function",
                    "function workloads are not supported",
                ));
            }
            let raw_containers = spec
                .containers
                .ok_or_else(|| field_err("spec.containers", "missing"))?;
            let mut containers = Vec::with_capacity(raw_containers.len());
            for (i, c) in raw_containers.into_iter().enumerate() {
                let at = |f: &str| format!("spec.containers[{i}].{f}");
                let ports = match c.ports {
                    None => vec![],
                    Some(OneOrMany::One(p)) => vec![p],
                    Some(OneOrMany::Many(v)) => v,
                };
                let mut out_ports = Vec::with_capacity(ports.len());
                for (j, p) in ports.into_iter().enumerate() {
                    let port = port_number(at(&format!("ports[{j}].port")), p.port)?;
                    let target_port = match p.target_port {
                        Some(t) => port_number(at(&format!("ports[{j}].target_port")), t)?,
                        None => port,
                    };
                    let protocol = match p
                        .protocol
                        .as_deref()
                        .map(str::to_ascii_uppercase)
                        .as_deref()
                    {
                        None | Some("TCP") => Protocol::Tcp,
                        Some("UDP") => Protocol::Udp,
                        Some("SCTP") => Protocol::Sctp,
                        Some(other) => {
                            return Err(field_err(
                                at(&format!("ports[{j}].protocol")),
                                format!("{other:?} is not TCP, UDP or SCTP"),
                            ));
                        }
                    };
                    out_ports.push(Port {
                        port,
                        target_port,
                        protocol,
                        kind: p.kind,
                    });
                }
                containers.push(Container {
                    name: c.name.ok_or_else(|| field_err(at("name"), "missing"))?,
                    image: c.image,
                    exec: c.exec,
                    command: c.command,
                    args: c.args.unwrap_or_default(),
                    env: c.env.unwrap_or_default(),
                    ports: out_ports,
                    resources: c.resources,
                    image_pull_policy: match c.image_pull_policy.as_deref() {
                        None => None,
                        Some("Always") => Some(ImagePullPolicy::Always),
                        Some("IfNotPresent") => Some(ImagePullPolicy::IfNotPresent),
                        Some("Never") => Some(ImagePullPolicy::Never),
                        Some(other) => {
                            return Err(field_err(
                                at("imagePullPolicy"),
                                format!("{other:?} is not Always, IfNotPresent or Never"),
                            ));
                        }
                    },
                });
            }
            let replicas = self.replicas.unwrap_or(1);
            let replicas = u32::try_from(replicas)
                .map_err(|_| field_err("replicas", format!("{replicas} is not a valid count")))?;
            Ok(AppManifest {
                api_version: self.api_version.unwrap_or_else(|| "v1".into()),
                kind: self.kind.ok_or_else(|| field_err("kind", "missing"))?,
                name: self.name.ok_or_else(|| field_err("name", "missing"))?,
                replicas,
                spec: PodSpec {
                    containers,
                    restart_policy: spec.restart_policy.unwrap_or_default(),
                    host_network: match spec.host_network {
                        None | Some(serde_yaml::Value::Null) => false,
                        Some(serde_yaml::Value::Bool(b)) => b,
                        Some(_) => {
                            return Err(field_err("spec.hostNetwork", "must be true or false"));
                        }
                    },
                },
                deployment: self.deployment,
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Compact {
        name: String,
        repo: String,
        version: Option<serde_yaml::Value>,
        action: Option<String>,
        metadata: Option<Metadata>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Metadata {
        name: Option<String>,
    }

    impl Compact {
        pub fn into_manifest(self) -> Result<AppManifest, ManifestError> {
            if let Some(a) = &self.action
                && a != "deploy"
            {
                return Err(field_err(
                    "action",
                    format!("{a:?} is not supported, expected \"deploy\""),
                ));
            }
            let version = match self.version {
                None | Some(serde_yaml::Value::Null) => String::new(),
                Some(serde_yaml::Value::String(s)) => s,
                Some(serde_yaml::Value::Number(n)) => n.to_string(),
                Some(_) => return Err(field_err("version", "must be a string or number")),
            };
            let (image, exec) = if self.repo.starts_with('/') {
                (None, Some(self.repo.clone()))
            } else {
                let repo = self
                    .repo
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                let tag = if version.is_empty() {
                    "latest"
                } else {
                    &version
                };
                (Some(format!("{repo}:{tag}")), None)
            };
            let app_name = self
                .metadata
                .and_then(|m| m.name)
                .unwrap_or_else(|| self.name.clone());
            Ok(AppManifest {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: app_name,
                replicas: 1,
                spec: PodSpec {
                    containers: vec![Container {
                        name: self.name.clone(),
                        image,
                        exec,
                        command: None,
                        args: vec![],
                        env: vec![],
                        ports: vec![],
                        resources: None,
                        image_pull_policy: None,
                    }],
                    restart_policy: RestartPolicy::Always,
                    host_network: false,
                },
                deployment: Some(Deployment {
                    app: self.name,
                    repository: self.repo,
                    version,
                }),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<AppManifest, ManifestError>) -> String {
        match r {
            Err(ManifestError::Field { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    const PROCESS: &str = r#"
apiVersion: v1
kind: Pod
name: web
replicas: 2
spec:
  restartPolicy: OnFailure
  containers:
    - name: httpd
      exec: /bin/busybox
      args: ["httpd", "-f", "-p", "8080"]
      env: [{name: A, value: b}]
      ports: {port: 80, target_port: 8080, protocol: TCP}
      resources: {cpu: "500m", memory: "64Mi"}
"#;

    #[test]
    fn parses_process_workload() {
        let m = parse(PROCESS).unwrap();
        assert_eq!(m.name, "web");
        assert_eq!(m.replicas, 2);
        assert_eq!(m.spec.restart_policy, RestartPolicy::OnFailure);
        let c = &m.spec.containers[0];
        assert_eq!(c.exec.as_deref(), Some("/bin/busybox"));
        assert_eq!(c.ports[0].target_port, 8080);
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.cpu_millis(), Some(500));
        assert_eq!(r.memory_bytes(), Some(64 << 20));
        // The definition round-trips through the wire form.
        assert_eq!(parse_definition(&m.to_definition()).unwrap(), m);
    }

    #[test]
    fn parses_rik_controller_definition_with_nulls() {
        let def = r#"{"apiVersion":"v1","kind":"Pod","name":"alpine","spec":{"containers":[{"name":"alpine","image":"alpine:latest","env":null,"ports":null}],"function":null},"replicas":1}"#;
        let m = parse_definition(def).unwrap();
        assert_eq!(m.spec.containers[0].image.as_deref(), Some("alpine:latest"));
        assert!(m.spec.containers[0].env.is_empty());
        let d = m.deployment();
        assert_eq!(
            (d.repository.as_str(), d.version.as_str()),
            ("alpine", "latest")
        );
    }

    #[test]
    fn parses_compact_deployment_file() {
        let m = parse("name: nginx\nrepo: https://example.com/nginx\nversion: 1.19.1\naction: deploy\nmetadata:\n  name: app1\n").unwrap();
        assert_eq!(m.name, "app1");
        assert_eq!(
            m.spec.containers[0].image.as_deref(),
            Some("example.com/nginx:1.19.1")
        );
        let m = parse("name: hello\nrepo: /bin/true\nversion: 1\naction: deploy\n").unwrap();
        assert_eq!(m.spec.containers[0].exec.as_deref(), Some("/bin/true"));
        assert_eq!(m.deployment().version, "1");
    }

    fn with_container(extra: &str) -> String {
        format!("kind: Pod\nname: app\nspec:\n  containers:\n    - name: c\n{extra}")
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        for bad in ["a/b", "..", "Upper", &"a".repeat(64), "-x", ""] {
            let doc = format!(
                "kind: Pod\nname: {bad:?}\nspec:\n  containers:\n    - {{name: c, exec: /bin/true}}\n"
            );
            assert_eq!(field_of(parse(&doc)), "name", "name {bad:?}");
        }
        assert_eq!(
            field_of(parse(&with_container("      exec: bin/true\n"))),
            "spec.containers[0].exec"
        );
        assert_eq!(
            field_of(parse(&with_container("      exec: /bin/../bin/true\n"))),
            "spec.containers[0].exec"
        );
        assert_eq!(
            field_of(parse(&with_container(
                "      exec: /bin/true\n      image: busybox\n"
            ))),
            "spec.containers[0].exec"
        );
        assert_eq!(
            field_of(parse(&with_container(""))),
            "spec.containers[0].image"
        );
        assert_eq!(
            field_of(parse(
                "kind: Pod\nname: a\nreplicas: 0\nspec: {containers: [{name: c, exec: /bin/true}]}"
            )),
            "replicas"
        );
        assert_eq!(
            field_of(parse(
                "kind: Deployment\nname: a\nspec: {containers: [{name: c, exec: /bin/true}]}"
            )),
            "kind"
        );
        assert_eq!(
            field_of(parse(&with_container(
                "      exec: /bin/true\n      ports: {port: 0}\n"
            ))),
            "spec.containers[0].ports[0].port"
        );
        assert_eq!(
            field_of(parse(&with_container(
                "      exec: /bin/true\n      ports: [{port: 70000}]\n"
            ))),
            "spec.containers[0].ports[0].port"
        );
        assert_eq!(
            field_of(parse(&with_container(
                "      exec: /bin/true\n      resources: {memory: lots}\n"
            ))),
            "spec.containers[0].resources.memory"
        );
        let huge = format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        assert!(matches!(parse(&huge), Err(ManifestError::TooLarge(_))));
        assert!(matches!(
            parse("kind: [unclosed"),
            Err(ManifestError::Syntax(_))
        ));
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(
            field_of(parse(
                "kind: Pod\nname: a\nreplica: 2\nspec: {containers: [{name: c, exec: /bin/true}]}"
            )),
            "replica"
        );
        let doc = with_container("      exec: /bin/true\n      resources: {cpus: 1}\n");
        assert!(
            matches!(parse(&doc), Err(ManifestError::Field { .. })),
            "{:?}",
            parse(&doc)
        );
    }

    #[test]
    fn instance_ids_and_node_names() {
        assert!(validate_instance_id("opposite-join-5857").is_ok());
        assert!(validate_instance_id(&format!("{}-abcde", "a".repeat(63))).is_ok());
        for bad in ["../../etc", "a/b", "A", "", "-a"] {
            assert!(validate_instance_id(bad).is_err(), "{bad}");
        }
        assert!(validate_node_name("node", "node-1.example.com").is_ok());
        for bad in ["node..x", "Node", ".x", "a_b"] {
            assert!(validate_node_name("node", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_network_and_pull_policy_round_trip() {
        let m = parse(
            "kind: Pod\nname: web\nspec:\n  hostNetwork: true\n  containers:\n    \
             - {name: a, image: \"127.0.0.1:5000/busybox:1\", imagePullPolicy: Always}\n    \
             - {name: b, image: busybox}\n",
        )
        .unwrap();
        assert!(m.spec.host_network);
        assert_eq!(m.spec.containers[0].pull_policy(), ImagePullPolicy::Always);
        assert_eq!(m.spec.containers[1].image_pull_policy, None);
        assert_eq!(
            m.spec.containers[1].pull_policy(),
            ImagePullPolicy::IfNotPresent
        );
        let def = m.to_definition();
        assert!(def.contains(r#""hostNetwork":true"#), "{def}");
        assert!(def.contains(r#""imagePullPolicy":"Always""#), "{def}");
        assert_eq!(parse_definition(&def).unwrap(), m);
        // Defaults: a pod network of its own, nothing extra on the wire.
        let m =
            parse("kind: Pod\nname: web\nspec: {containers: [{name: a, image: busybox}]}").unwrap();
        assert!(!m.spec.host_network);
        let def = m.to_definition();
        assert!(
            !def.contains("hostNetwork") && !def.contains("imagePullPolicy"),
            "{def}"
        );
        assert_eq!(parse_definition(&def).unwrap(), m);
        // RIK's own definitions (null everywhere) still parse.
        let m = parse_definition(
            r#"{"apiVersion":"v1","kind":"Pod","name":"a","spec":{"containers":[{"name":"a","image":"alpine:latest","imagePullPolicy":null}],"hostNetwork":null,"function":null},"replicas":1}"#,
        )
        .unwrap();
        assert!(!m.spec.host_network);
    }

    #[test]
    fn bad_pull_policy_and_host_network_name_the_field() {
        let doc = with_container("      image: busybox\n      imagePullPolicy: Sometimes\n");
        assert_eq!(field_of(parse(&doc)), "spec.containers[0].imagePullPolicy");
        let doc = with_container("      exec: /bin/true\n      imagePullPolicy: Always\n");
        assert_eq!(field_of(parse(&doc)), "spec.containers[0].imagePullPolicy");
        let doc = "kind: Pod\nname: a\nspec: {hostNetwork: maybe, containers: [{name: c, exec: /bin/true}]}";
        assert_eq!(field_of(parse(doc)), "spec.hostNetwork");
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for good in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "docker.io/library/busybox:1",
            "127.0.0.1:5000/busybox:1",
            "localhost/a/b-c__d.e:1",
            "registry.example.com:443/team/app:v1.2.3-rc_1",
            "[::1]:5000/busybox:1",
            &format!("busybox@sha256:{}", "a".repeat(64)),
            &format!("127.0.0.1:5000/busybox:1@sha256:{}", "0".repeat(64)),
        ] {
            assert_eq!(check_image_reference(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Not A Reference",
            "busybox:",
            "UPPER/x:1",
            "127.0.0.1:9/UPPER/case:1",
            "127.0.0.1:9/a@sha256:zz",
            "127.0.0.1:9/busybox::1",
            "127.0.0.1:9/a/-b:1",
            "a/b._c",
            "a/b___c",
            "a/b_",
            "busybox:-x",
            "bad_host:5000/x:1",
            "127.0.0.1:99999999/x",
            "/busybox",
            "busybox@md5",
            &format!("busybox:{}", "t".repeat(129)),
            &format!("a/{}", "b".repeat(255)),
        ] {
            let err = check_image_reference(bad);
            assert!(err.is_err(), "{bad:?} accepted");
            let doc = with_container(&format!("      image: {bad:?}\n"));
            assert_eq!(field_of(parse(&doc)), "spec.containers[0].image", "{bad:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("-1").is_err());
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("100M"), Ok(100_000_000));
        assert!(parse_memory("12").is_err());
    }
}
