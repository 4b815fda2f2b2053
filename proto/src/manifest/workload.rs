//! RIK workload v1 as users and RIK's controller write it: `null` allowed
//! wherever RIK leaves a field out, `ports` one object or a list.

use serde::Deserialize;

use super::de::{PortNumber, Replicas, from_value_at};
use super::{
    AppManifest, Container, Deployment, EnvVar, ImagePullPolicy, LogLimits, ManifestError, PodSpec,
    Port, Protocol, Resources, RestartPolicy, field_err,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Workload {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    replicas: Option<Replicas>,
    spec: Option<Spec>,
    deployment: Option<Deployment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a pod spec ({containers: [...]})")]
struct Spec {
    containers: Option<Vec<RawContainer>>,
    #[serde(rename = "restartPolicy")]
    restart_policy: Option<RestartPolicy>,
    /// Checked by hand, to name the field in errors.
    #[serde(rename = "hostNetwork")]
    host_network: Option<serde_yaml::Value>,
    /// RIK's function workloads; not run by riklet.
    function: Option<serde_yaml::Value>,
    logs: Option<LogLimits>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a container ({name: web, image: nginx} or {name: web, exec: /bin/app})"
)]
struct RawContainer {
    name: Option<String>,
    image: Option<String>,
    exec: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Option<Vec<EnvVar>>,
    /// One port or a list of them; deserialized in [`ports`], where the
    /// one port is named as the first of a list.
    ports: Option<serde_yaml::Value>,
    resources: Option<Resources>,
    #[serde(rename = "imagePullPolicy")]
    image_pull_policy: Option<ImagePullPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a port ({port: 80})")]
struct RawPort {
    port: PortNumber,
    target_port: Option<PortNumber>,
    protocol: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Workload {
    pub(super) fn into_manifest(self) -> Result<AppManifest, ManifestError> {
        let spec = self.spec.ok_or_else(|| field_err("spec", "missing"))?;
        if spec.function.as_ref().is_some_and(|f| !f.is_null()) {
            return Err(field_err(
                "spec.function",
                "function workloads are not supported",
            ));
        }
        let containers = spec
            .containers
            .ok_or_else(|| field_err("spec.containers", "missing"))?
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.into_container(i))
            .collect::<Result<Vec<_>, _>>()?;
        let replicas = self.replicas.map_or(1, |r| r.0);
        Ok(AppManifest {
            api_version: self.api_version.unwrap_or_else(|| "v1".into()),
            kind: self.kind.ok_or_else(|| field_err("kind", "missing"))?,
            name: self.name.ok_or_else(|| field_err("name", "missing"))?,
            replicas,
            spec: PodSpec {
                containers,
                restart_policy: spec.restart_policy.unwrap_or_default(),
                host_network: host_network(spec.host_network)?,
                logs: spec.logs,
            },
            deployment: self.deployment,
        })
    }
}

/// `true`, `false` or left out (`null`).
fn host_network(value: Option<serde_yaml::Value>) -> Result<bool, ManifestError> {
    match value {
        None | Some(serde_yaml::Value::Null) => Ok(false),
        Some(serde_yaml::Value::Bool(b)) => Ok(b),
        Some(_) => Err(field_err("spec.hostNetwork", "must be true or false")),
    }
}

impl RawContainer {
    /// The container at `spec.containers[i]`.
    fn into_container(self, i: usize) -> Result<Container, ManifestError> {
        let at = |f: &str| format!("spec.containers[{i}].{f}");
        let ports = ports(self.ports, &at)?
            .into_iter()
            .enumerate()
            .map(|(j, p)| p.into_port(&|f| at(&format!("ports[{j}].{f}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Container {
            name: self.name.ok_or_else(|| field_err(at("name"), "missing"))?,
            image: self.image,
            exec: self.exec,
            command: self.command,
            args: self.args.unwrap_or_default(),
            env: self.env.unwrap_or_default(),
            ports,
            resources: self.resources,
            image_pull_policy: self.image_pull_policy,
        })
    }
}

/// `ports` as RIK writes it: one port, a list of them, or `null`. The one
/// port is the first of a list, so that its errors name `ports[0]` as the
/// scheduler's and the riklet's port checks do (they see the list).
fn ports(
    value: Option<serde_yaml::Value>,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<RawPort>, ManifestError> {
    use serde_yaml::Value;
    match value {
        None | Some(Value::Null) => Ok(vec![]),
        Some(one @ Value::Mapping(_)) => from_value_at(&at("ports"), Value::Sequence(vec![one])),
        Some(list @ Value::Sequence(_)) => from_value_at(&at("ports"), list),
        Some(_) => Err(field_err(
            at("ports"),
            "expected a port ({port: 80}) or a list of them",
        )),
    }
}

impl RawPort {
    /// The port whose fields are named `at(field)`; the target port
    /// defaults to the port, the protocol to TCP.
    fn into_port(self, at: &dyn Fn(&str) -> String) -> Result<Port, ManifestError> {
        let port = self.port.0;
        let target_port = self.target_port.map_or(port, |t| t.0);
        let protocol = match self
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
                    at("protocol"),
                    format!("{other:?} is not TCP, UDP or SCTP"),
                ));
            }
        };
        Ok(Port {
            port,
            target_port,
            protocol,
            kind: self.kind,
        })
    }
}
