//! Validation of the normalized form, and of the names that travel beside
//! manifests (instance ids, node names). Every error names the field.

use std::collections::BTreeSet;

use super::quantity::{parse_cpu, parse_memory, parse_size};
use super::reference::check_image_reference;
use super::{
    AppManifest, Container, LogLimits, MAX_CONTAINERS, MAX_REPLICAS, MIN_LOG_FILE_SIZE,
    ManifestError, field_err,
};

/// Longest `exec` path, the kernel's `PATH_MAX` less its NUL.
const MAX_PATH: usize = 4095;

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

/// The checks every party runs on a parsed manifest, whichever form it
/// was written in.
pub(super) fn validate(m: &AppManifest) -> Result<(), ManifestError> {
    validate_header(m)?;
    let mut names = BTreeSet::new();
    // (port, protocol) pairs: one pod cannot expose the same one twice.
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
        validate_source(c, &at)?;
        validate_strings(c, &at)?;
        validate_ports(c, &at, &mut host_ports)?;
        validate_resources(c, &at)?;
    }
    if let Some(logs) = &m.spec.logs {
        validate_logs(logs)?;
    }
    Ok(())
}

/// A size of at least [`MIN_LOG_FILE_SIZE`], a count of at least 1.
fn validate_logs(logs: &LogLimits) -> Result<(), ManifestError> {
    if let Some(size) = &logs.max_size {
        let bytes = parse_size(size).map_err(|e| field_err("spec.logs.maxSize", e.to_string()))?;
        if bytes < MIN_LOG_FILE_SIZE {
            return Err(field_err(
                "spec.logs.maxSize",
                format!("{size:?} is less than the 64Ki minimum"),
            ));
        }
    }
    if logs.max_files == Some(0) {
        return Err(field_err("spec.logs.maxFiles", "must be at least 1"));
    }
    Ok(())
}

/// `apiVersion`, `kind`, `name`, `replicas`, at least one container.
fn validate_header(m: &AppManifest) -> Result<(), ManifestError> {
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
    if m.spec.containers.len() > MAX_CONTAINERS {
        return Err(field_err(
            "spec.containers",
            format!(
                "{} containers, at most {MAX_CONTAINERS} allowed",
                m.spec.containers.len()
            ),
        ));
    }
    Ok(())
}

/// Exactly one of `image` and `exec`, and only the fields that kind takes.
fn validate_source(c: &Container, at: &dyn Fn(&str) -> String) -> Result<(), ManifestError> {
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
    Ok(())
}

/// Arguments and environment reach `execve`: no NUL, no `=` in a name.
fn validate_strings(c: &Container, at: &dyn Fn(&str) -> String) -> Result<(), ManifestError> {
    let lists = [
        ("args", &c.args[..]),
        ("command", c.command.as_deref().unwrap_or_default()),
    ];
    for (list, items) in lists {
        if let Some(j) = items.iter().position(|a| a.contains('\0')) {
            return Err(field_err(
                at(&format!("{list}[{j}]")),
                "contains a NUL byte",
            ));
        }
    }
    for (j, e) in c.env.iter().enumerate() {
        // Printable ASCII (Kubernetes' rule) and no blank: a newline or an
        // escape sequence in a name would forge lines of `env` or of a log.
        let printable = e.name.bytes().all(|b| b.is_ascii_graphic() && b != b'=');
        if e.name.is_empty() || !printable {
            return Err(field_err(
                at(&format!("env[{j}].name")),
                format!("{:?} is not a valid variable name", e.name),
            ));
        }
        if e.value.contains('\0') {
            return Err(field_err(
                at(&format!("env[{j}].value")),
                "contains a NUL byte",
            ));
        }
    }
    Ok(())
}

/// Each (port, protocol) exposed once in the pod (each number is 1-65535
/// from the parser on).
fn validate_ports(
    c: &Container,
    at: &dyn Fn(&str) -> String,
    host_ports: &mut BTreeSet<(u16, u8)>,
) -> Result<(), ManifestError> {
    for (j, p) in c.ports.iter().enumerate() {
        // Kept as given and shown by `rik describe`: a word, nothing more.
        if let Some(kind) = &p.kind
            && (kind.is_empty()
                || kind.len() > 63
                || !kind.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(field_err(
                at(&format!("ports[{j}].type")),
                format!("{kind:?} is not a port type (1-63 letters and digits, e.g. nodePort)"),
            ));
        }
        if !host_ports.insert((p.port, p.protocol as u8)) {
            return Err(field_err(
                at(&format!("ports[{j}].port")),
                format!("port {} is exposed twice", p.port),
            ));
        }
    }
    Ok(())
}

fn validate_resources(c: &Container, at: &dyn Fn(&str) -> String) -> Result<(), ManifestError> {
    if let Some(r) = &c.resources {
        if let Some(cpu) = &r.cpu {
            parse_cpu(cpu).map_err(|e| field_err(at("resources.cpu"), e.to_string()))?;
        }
        if let Some(mem) = &r.memory {
            parse_memory(mem).map_err(|e| field_err(at("resources.memory"), e.to_string()))?;
        }
    }
    Ok(())
}

fn validate_exec(field: &str, exec: &str) -> Result<(), ManifestError> {
    if exec.len() > MAX_PATH {
        return Err(field_err(
            field,
            format!("{} bytes, at most {MAX_PATH} allowed", exec.len()),
        ));
    }
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
