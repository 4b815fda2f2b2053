//! Which of an index's images runs on this host.
//!
//! An entry whose `platform` says linux and this host's architecture is
//! taken. An entry without a `platform` is taken when its config says so:
//! containerd, `ctr run` and Docker read such an index the same way, and
//! image tools commonly write one (an OCI archive whose single manifest
//! names no platform). Whatever the index says, an image whose config
//! names another OS or architecture is refused.

use oci_client::config::ConfigFile;
use oci_client::manifest::ImageIndexEntry;

use super::documents::PlatformImage;
use super::error::{ImageError, Result};

/// The host's architecture as OCI names it (GOARCH: `amd64`, `arm64`…).
pub fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

fn host_platform() -> String {
    format!("linux/{}", host_arch())
}

/// What an index offers this host.
enum Selection<'a> {
    /// The entry labelled linux/<host arch>.
    Labelled(&'a ImageIndexEntry),
    /// No entry is labelled for this host: the unlabelled ones, to be
    /// judged by their configs.
    Unlabelled(Vec<&'a ImageIndexEntry>),
    /// Nothing to try: the platforms the index offers.
    Nothing(Vec<String>),
}

fn select(entries: &[ImageIndexEntry]) -> Selection<'_> {
    let arch = host_arch();
    let labelled = entries.iter().find(|e| {
        e.platform.as_ref().is_some_and(|p| {
            p.os.to_string() == "linux"
                && p.architecture.to_string() == arch
                // arm64 images say v8 or nothing; other variants are not ours.
                && (arch != "arm64" || p.variant.as_deref().is_none_or(|v| v == "v8"))
        })
    });
    if let Some(entry) = labelled {
        return Selection::Labelled(entry);
    }
    let unlabelled: Vec<_> = entries.iter().filter(|e| e.platform.is_none()).collect();
    if unlabelled.is_empty() {
        Selection::Nothing(labelled_platforms(entries))
    } else {
        Selection::Unlabelled(unlabelled)
    }
}

/// `os/arch[/variant]` of each entry that names its platform.
fn labelled_platforms(entries: &[ImageIndexEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect()
}

/// What [`pick`] loads for an index entry: an image, or (from the content
/// store) maybe nothing.
pub(super) trait Loaded {
    /// The image's config; `None` when the image is not there.
    fn config(&self) -> Option<&ConfigFile>;
}

impl Loaded for PlatformImage {
    fn config(&self) -> Option<&ConfigFile> {
        Some(&self.config)
    }
}

impl Loaded for Option<PlatformImage> {
    fn config(&self) -> Option<&ConfigFile> {
        self.as_ref().map(|i| &i.config)
    }
}

/// This host's image among an index's `entries`. `load` brings an entry's
/// manifest and config (from the registry or the content store); an image
/// that is not there is passed on as loaded.
pub(super) async fn pick<T, F, Fut>(
    name: &str,
    entries: &[ImageIndexEntry],
    mut load: F,
) -> Result<T>
where
    T: Loaded,
    // Owned entries: a future borrowing its argument is not provably
    // `Send` for every lifetime, and the pull runs in a spawned task.
    F: FnMut(ImageIndexEntry) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    match select(entries) {
        Selection::Labelled(entry) => {
            let loaded = load(entry.clone()).await?;
            if let Some(config) = loaded.config() {
                check_platform(name, config)?;
            }
            Ok(loaded)
        }
        Selection::Unlabelled(candidates) => {
            let mut seen = labelled_platforms(entries);
            for entry in candidates {
                let loaded = load(entry.clone()).await?;
                match loaded.config() {
                    Some(config) if !runs_here(config) => seen.push(config_platform(config)),
                    _ => return Ok(loaded),
                }
            }
            Err(wrong_platform(name, seen))
        }
        Selection::Nothing(available) => Err(wrong_platform(name, available)),
    }
}

/// An image config for another OS or architecture is refused, whatever
/// the index said.
pub(super) fn check_platform(name: &str, config: &ConfigFile) -> Result<()> {
    if runs_here(config) {
        Ok(())
    } else {
        Err(wrong_platform(name, vec![config_platform(config)]))
    }
}

fn runs_here(config: &ConfigFile) -> bool {
    config.os.to_string() == "linux" && config.architecture.to_string() == host_arch()
}

fn config_platform(config: &ConfigFile) -> String {
    format!("{}/{}", config.os, config.architecture)
}

fn wrong_platform(name: &str, available: Vec<String>) -> ImageError {
    ImageError::WrongPlatform {
        reference: name.to_string(),
        wanted: host_platform(),
        available,
    }
}

#[cfg(test)]
mod tests {
    use oci_client::manifest::Platform;

    use super::*;

    fn entry(platform: Option<(&str, &str)>) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string(),
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 1,
            platform: platform.map(|(os, arch)| Platform {
                architecture: arch.into(),
                os: os.into(),
                os_version: None,
                os_features: None,
                variant: None,
                features: None,
            }),
            annotations: None,
            artifact_type: None,
        }
    }

    fn other_arch() -> &'static str {
        if host_arch() == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        }
    }

    #[test]
    fn platform_selection() {
        let other = other_arch();
        let host = entry(Some(("linux", &host_arch())));
        assert!(matches!(
            select(&[entry(Some(("linux", other))), host]),
            Selection::Labelled(_)
        ));
        match select(&[entry(Some(("linux", other)))]) {
            Selection::Nothing(available) => assert_eq!(available, vec![format!("linux/{other}")]),
            _ => panic!("an {other} entry chosen on {}", host_arch()),
        }
    }

    #[test]
    fn unlabelled_entries_are_judged_by_their_config() {
        let other = other_arch();
        let entries = [entry(Some(("linux", other))), entry(None)];
        assert!(matches!(select(&entries), Selection::Unlabelled(c) if c.len() == 1));
        // A labelled entry for this host wins over an unlabelled one.
        let entries = [entry(None), entry(Some(("linux", &host_arch())))];
        assert!(matches!(select(&entries), Selection::Labelled(e) if e.platform.is_some()));
    }
}
