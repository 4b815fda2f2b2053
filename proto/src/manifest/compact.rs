//! Seed 004's compact deployment file: `name`, `repo`, `version`,
//! `action: deploy`, `metadata.name`. A `repo` that is an absolute path is
//! a bare process; anything else an image (`https://` dropped, `version`
//! as the tag).

use serde::Deserialize;

use super::{AppManifest, Container, Deployment, ManifestError, PodSpec, RestartPolicy, field_err};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Compact {
    name: String,
    repo: String,
    version: Option<serde_yaml::Value>,
    action: Option<String>,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "metadata ({name: app})")]
struct Metadata {
    name: Option<String>,
}

impl Compact {
    pub(super) fn into_manifest(self) -> Result<AppManifest, ManifestError> {
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
            (Some(image_of(&self.repo, &version)), None)
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
                logs: None,
            },
            deployment: Some(Deployment {
                app: self.name,
                repository: self.repo,
                version,
            }),
        })
    }
}

/// `https://example.com/nginx/` and `1.19` → `example.com/nginx:1.19`;
/// no version is `latest`.
fn image_of(repo: &str, version: &str) -> String {
    let repo = repo
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let tag = if version.is_empty() {
        "latest"
    } else {
        version
    };
    format!("{repo}:{tag}")
}
