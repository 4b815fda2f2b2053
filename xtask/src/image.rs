//! `cargo xtask image`: a tiny OCI image archive built from Debian's static
//! busybox, for machines without an image registry.
//!
//! The archive is an OCI image layout in a tar (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), the format `skopeo copy oci-archive:…` and
//! `ctr images import` read. Two gzip layers, so that unpacking exercises a
//! snapshot chain: `/bin/busybox` with a symlink per applet in [`APPLETS`];
//! then `/etc/passwd`, `/etc/group` and the usual mount-point directories. The output is byte-for-byte reproducible: fixed
//! mtimes, owners and entry order, and a gzip header without a timestamp.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Applets linked to `/bin/busybox` (a subset of `busybox --install`).
pub const APPLETS: &[&str] = &[
    "cat", "date", "dd", "echo", "env", "false", "grep", "head", "hostname", "httpd", "id", "kill",
    "ls", "mkdir", "nc", "ps", "rm", "sh", "sleep", "tail", "touch", "true", "uname", "wget",
];

/// Every mtime in the archive, and the config's `created`: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What to put in the archive.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Image name, normalised like docker does (`busybox` →
    /// `docker.io/library/busybox:latest`); recorded in `index.json`.
    pub name: String,
    /// GOARCH-style architecture written in the config (`amd64`, `arm64`).
    /// Only the metadata: the binary is always the host's busybox.
    pub arch: String,
    /// The static busybox to copy in.
    pub busybox: PathBuf,
    /// `index.json` lists an image index whose one manifest names no
    /// platform (the config alone says it), instead of the manifest with
    /// its platform: a layout image tools write, which `ctr images import`
    /// records as an index.
    pub unlabelled: bool,
}

impl ImageSpec {
    /// `name` for the host's architecture, with Debian's `/bin/busybox`.
    pub fn host(name: &str) -> Self {
        Self {
            name: name.to_string(),
            arch: host_arch(),
            busybox: PathBuf::from("/bin/busybox"),
            unlabelled: false,
        }
    }
}

/// The host's architecture as OCI names it (GOARCH: `amd64`, `arm64`…).
pub fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

/// `cargo xtask image`: writes the archive to `out` (atomically) and prints
/// its path and manifest digest.
pub fn run(out: &Path, spec: &ImageSpec) -> anyhow::Result<()> {
    let archive = build_archive(spec)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("tar.tmp");
    std::fs::write(&tmp, &archive.bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    println!(
        "image: {} ({} {}/linux, manifest {}, {} bytes)",
        out.display(),
        archive.name,
        spec.arch,
        archive.manifest_digest,
        archive.bytes.len()
    );
    Ok(())
}

/// A built archive.
pub struct Archive {
    /// The tar itself.
    pub bytes: Vec<u8>,
    /// The normalised image name recorded in `index.json`.
    pub name: String,
    /// `sha256:…` of the image manifest.
    pub manifest_digest: String,
}

/// Builds the OCI archive in memory (a few MB).
pub fn build_archive(spec: &ImageSpec) -> anyhow::Result<Archive> {
    let name = normalize_name(&spec.name)?;
    let busybox = std::fs::read(&spec.busybox).with_context(|| {
        format!(
            "reading {} (apt install busybox-static)",
            spec.busybox.display()
        )
    })?;

    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in [bin_layer(&busybox)?, base_layer()?] {
        diff_ids.push(sha256(&tar));
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&tar)?;
        layers.push(gz.finish()?);
    }

    let config = serde_json::to_vec(&json!({
        "created": CREATED,
        "architecture": spec.arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [
            { "created": CREATED, "created_by": "cargo xtask image: busybox and applets" },
            { "created": CREATED, "created_by": "cargo xtask image: /etc and mount points" },
        ],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": sha256(&config), "size": config.len() },
        "layers": layers
            .iter()
            .map(|l| json!({ "mediaType": MEDIA_LAYER, "digest": sha256(l), "size": l.len() }))
            .collect::<Vec<_>>(),
    }))?;
    let manifest_digest = sha256(&manifest);
    let (index, inner) = index_json(spec, &name, &manifest_digest, manifest.len())?;
    let documents = [Some(config), Some(manifest), inner];

    let mut blobs: Vec<(String, &[u8])> = layers
        .iter()
        .chain(documents.iter().flatten())
        .map(|b| (sha256(b), b.as_slice()))
        .collect();
    blobs.sort();

    let mut tar = tar::Builder::new(Vec::new());
    dir(&mut tar, "blobs/", 0o755)?;
    dir(&mut tar, "blobs/sha256/", 0o755)?;
    for (digest, bytes) in &blobs {
        let hex = digest.trim_start_matches("sha256:");
        file(&mut tar, &format!("blobs/sha256/{hex}"), 0o644, bytes)?;
    }
    file(&mut tar, "index.json", 0o644, &index)?;
    file(
        &mut tar,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(Archive {
        bytes: tar.into_inner()?,
        name,
        manifest_digest,
    })
}

/// `index.json`, naming the image; with [`ImageSpec::unlabelled`], also
/// the inner index it lists (a blob of the archive).
fn index_json(
    spec: &ImageSpec,
    name: &str,
    manifest_digest: &str,
    manifest_size: usize,
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut entry = json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
        "platform": { "architecture": spec.arch, "os": "linux" },
    });
    let mut inner = None;
    if spec.unlabelled {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
            }],
        }))?;
        entry = json!({ "mediaType": MEDIA_INDEX, "digest": sha256(&index), "size": index.len() });
        inner = Some(index);
    }
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    // What containerd's own export writes: the full name for `ctr images
    // import`, the tag for OCI tools.
    entry["annotations"] = json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [entry],
    }))?;
    Ok((index, inner))
}

/// First layer: busybox and its applet links.
fn bin_layer(busybox: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    dir(&mut tar, "bin/", 0o755)?;
    file(&mut tar, "bin/busybox", 0o755, busybox)?;
    let mut applets = APPLETS.to_vec();
    applets.sort_unstable();
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?)
}

/// Second layer: passwd/group and the mount-point directories.
fn base_layer() -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    dir(&mut tar, "dev/", 0o755)?;
    dir(&mut tar, "etc/", 0o755)?;
    file(
        &mut tar,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )?;
    file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    dir(&mut tar, "proc/", 0o755)?;
    dir(&mut tar, "root/", 0o700)?;
    dir(&mut tar, "sys/", 0o755)?;
    dir(&mut tar, "tmp/", 0o1777)?;
    Ok(tar.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h
}

fn dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn file(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode);
    h.set_size(data.len() as u64);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `busybox` → `docker.io/library/busybox:latest`,
/// `127.0.0.1:5000/x/busybox:1` unchanged. Digests are refused: the name
/// names what is being built.
pub fn normalize_name(name: &str) -> anyhow::Result<String> {
    if name.is_empty() || name.contains('@') || name.chars().any(|c| c.is_whitespace()) {
        bail!("image name {name:?}: expected [registry/]repository[:tag]");
    }
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let full = if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        name.to_string()
    } else {
        format!("docker.io/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    Ok(if last.contains(':') {
        full
    } else {
        format!("{full}:latest")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_name("me/bb:1").unwrap(), "docker.io/me/bb:1");
        assert_eq!(
            normalize_name("127.0.0.1:5000/busybox").unwrap(),
            "127.0.0.1:5000/busybox:latest"
        );
        assert!(normalize_name("a b").is_err());
    }

    #[test]
    fn reproducible() {
        let busybox = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        std::fs::write(&busybox, b"\x7fELF not really busybox").unwrap();
        let spec = ImageSpec {
            name: "busybox:1".into(),
            arch: "arm64".into(),
            busybox: busybox.clone(),
            unlabelled: false,
        };
        let a = build_archive(&spec).unwrap();
        let b = build_archive(&spec).unwrap();
        std::fs::remove_file(&busybox).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.name, "docker.io/library/busybox:1");
    }
}
