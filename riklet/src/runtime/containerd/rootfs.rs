//! Small files of an image (`/etc/passwd`, `/etc/group`) read straight
//! from a snapshot's layer directories, before the container exists: its
//! user is resolved in the image's own files. Nothing is mounted, and no
//! symbolic link is followed out of the layers.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use containerd_client::types::Mount;

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_IMAGE_FILE: u64 = 1 << 20;

/// The layer directories of a snapshot's mounts, topmost first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                if let Some(upper) = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
                    dirs.push(PathBuf::from(upper));
                }
                if let Some(lower) = m.options.iter().find_map(|o| o.strip_prefix("lowerdir=")) {
                    dirs.extend(lower.split(':').map(PathBuf::from));
                }
            }
            _ => {}
        }
    }
    dirs
}

/// What a layer says about a path.
enum InLayer {
    Absent,
    File(String),
    /// Deleted (whiteout), or not a plain file reachable without following
    /// a symbolic link: the image's view of it cannot be read safely here.
    Hidden,
}

fn look_in_layer(dir: &Path, rel: &str) -> InLayer {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return InLayer::Absent,
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_char_device() {
            return InLayer::Hidden; // overlayfs whiteout
        }
        if !last && meta.is_dir() {
            continue;
        }
        if last && meta.is_file() {
            let read = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|f| {
                    let mut s = String::new();
                    f.take(MAX_IMAGE_FILE).read_to_string(&mut s).map(|_| s)
                });
            return match read {
                Ok(s) => InLayer::File(s),
                Err(_) => InLayer::Hidden,
            };
        }
        return InLayer::Hidden;
    }
    InLayer::Absent
}

/// Reads a small file of the image (e.g. `etc/passwd`) straight from the
/// snapshot's layer directories, never following a symbolic link out of
/// them.
pub(super) fn read_image_file(mounts: &[Mount], rel: &str) -> Option<String> {
    for dir in layer_dirs(mounts) {
        match look_in_layer(&dir, rel) {
            InLayer::Absent => continue,
            InLayer::File(s) => return Some(s),
            InLayer::Hidden => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_read_from_layers_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, l1, l2) = (
            dir.path().join("upper"),
            dir.path().join("l1"),
            dir.path().join("l2"),
        );
        for d in [&upper, &l1, &l2] {
            fs::create_dir_all(d.join("etc")).unwrap();
        }
        fs::write(l2.join("etc/passwd"), "old").unwrap();
        fs::write(l1.join("etc/passwd"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", l1.join("etc/group")).unwrap();
        fs::write(l2.join("etc/group"), "lower group").unwrap();
        let mounts = vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", dir.path().join("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", l1.display(), l2.display()),
            ],
        }];
        assert_eq!(
            read_image_file(&mounts, "etc/passwd").as_deref(),
            Some("new")
        );
        assert_eq!(
            read_image_file(&mounts, "etc/group"),
            None,
            "a link is not followed"
        );
        assert_eq!(read_image_file(&mounts, "etc/hosts"), None);
        let bind = vec![Mount {
            r#type: "bind".into(),
            source: l2.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        }];
        assert_eq!(read_image_file(&bind, "etc/passwd").as_deref(), Some("old"));
    }
}
