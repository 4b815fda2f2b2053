//! Where `rik` connects and with what certificate: `$RIK_CONFIG`, else
//! `~/.config/rik/config`, a TOML file that `rik-scheduler admin-cert`
//! prints (`server`, `ca`, `cert`, `key`, PEM texts). Without a file `rik`
//! speaks plaintext to `--scheduler` (default `http://127.0.0.1:4995`), as
//! before TLS, which the scheduler serves to loopback clients only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rik_tls::ClientTls;
use rik_tls::pem::{KeyedChain, certificates};
use serde::Deserialize;

/// The scheduler's URL when neither a flag nor a config file gives one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:4995";

/// The config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: String,
    ca: String,
    cert: String,
    key: String,
}

/// The scheduler to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// The CA and admin certificate of the config file.
    pub tls: Option<ClientTls>,
}

impl Target {
    /// Plaintext to `url`.
    pub fn plain(url: &str) -> Target {
        Target {
            url: url.to_string(),
            tls: None,
        }
    }

    /// `flag_url` (`--scheduler`) or the config file's server, with the
    /// config file's certificates if there is a file.
    pub fn resolve(flag_url: Option<&str>) -> anyhow::Result<Target> {
        let path = std::env::var_os("RIK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/rik/config")));
        let file = match &path {
            Some(path) => read(path)?,
            None => None,
        };
        let Some((file, path)) = file.zip(path) else {
            return Ok(Target::plain(flag_url.unwrap_or(DEFAULT_SERVER)));
        };
        let source = path.display().to_string();
        let ca = certificates(&file.ca, &source)?;
        let identity = KeyedChain::from_pem(&file.cert, &file.key, &source)?;
        Ok(Target {
            url: flag_url.unwrap_or(&file.server).to_string(),
            tls: Some(
                ClientTls::trusting(&ca, Some(identity))
                    .with_context(|| format!("bad TLS material in {source}"))?,
            ),
        })
    }
}

/// The file at `path`, `None` if there is none.
fn read(path: &Path) -> anyhow::Result<Option<File>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text)
        .map(Some)
        .with_context(|| format!("bad rik config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_needs_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        assert!(read(&path).unwrap().is_none());
        std::fs::write(&path, "server = \"https://h:1\"\nca = \"x\"\n").unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("missing field `cert`"), "{err}");
    }
}
