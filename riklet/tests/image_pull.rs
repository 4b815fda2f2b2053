//! Image pulls into containerd through [`ImageStore`], against a real local
//! registry (`docker-registry`) and the machine's containerd.
//!
//! Needs root, containerd on its default socket, `docker-registry`,
//! `skopeo`, `ctr` and `/bin/busybox`; a missing one fails the test. Each
//! test works in its own containerd namespace, removed (images, content,
//! snapshots, leases) by a guard even when the test panics.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::manifest::ImagePullPolicy;
use riklet::runtime::image::{ImageError, ImageStore, RegistryConfig};
use riklet_e2e::registry::{Registry, build_image, build_unlabelled_image, http, require};

const SOCKET: &str = "/run/containerd/containerd.sock";

fn prerequisites() {
    assert!(
        std::os::unix::net::UnixStream::connect(SOCKET).is_ok(),
        "containerd is not answering on {SOCKET}: run `cargo xtask setup`"
    );
    require("ctr", "containerd");
    require("skopeo", "skopeo");
    require("docker-registry", "docker-registry");
    assert!(
        std::path::Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing: apt install busybox-static"
    );
}

/// The two archives, built once per test run: busybox for this host, and
/// the same labelled arm64.
fn archives() -> &'static (PathBuf, PathBuf) {
    static ARCHIVES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image_pull");
        std::fs::create_dir_all(&dir).expect("creating the archive dir");
        let host = dir.join("busybox.tar");
        let arm = dir.join("busybox-arm64.tar");
        build_image(&host, "busybox:1", &riklet::runtime::image::host_arch());
        build_image(&arm, "busybox-arm:1", "arm64");
        (host, arm)
    })
}

/// The same two images as archives whose index lists an image index with
/// one manifest that names no platform, built once per test run.
fn unlabelled_archives() -> &'static (PathBuf, PathBuf) {
    static ARCHIVES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image_pull");
        std::fs::create_dir_all(&dir).expect("creating the archive dir");
        let host = dir.join("busybox-unlabelled.tar");
        let arm = dir.join("busybox-unlabelled-arm64.tar");
        let host_arch = riklet::runtime::image::host_arch();
        build_unlabelled_image(&host, "busybox-unlabelled:1", &host_arch);
        build_unlabelled_image(&arm, "busybox-unlabelled-arm:1", "arm64");
        (host, arm)
    })
}

/// Pushes an index listing the manifest of `repo:tag` as `repo:index_tag`;
/// its one entry carries `platform`, or no platform at all.
fn push_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    index_tag: &str,
    platform: Option<serde_json::Value>,
) {
    let (status, manifest) = http(
        reg.addr(),
        "GET",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )
    .expect("fetching the manifest");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&manifest));
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest))
    );
    let mut entry = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": manifest.len(),
    });
    if let Some(platform) = platform {
        entry["platform"] = platform;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    })
    .to_string();
    let (status, body) = http(
        reg.addr(),
        "PUT",
        &format!("/v2/{repo}/manifests/{index_tag}"),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        index.as_bytes(),
    )
    .expect("pushing the index");
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
}

/// A containerd namespace of our own, emptied and removed on drop.
struct Namespace(String);

impl Namespace {
    fn new(test: &str) -> Namespace {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "riklet-test-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Namespace(name)
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .expect("running ctr");
        assert!(
            out.status.success(),
            "ctr -n {} {}: {}",
            self.0,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr` without the success check, for cleanup.
    fn ctr_quiet(&self, args: &[&str]) -> String {
        Command::new("ctr")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Snapshot keys (first column of `ctr snapshots ls`).
    fn snapshots(&self) -> Vec<String> {
        self.ctr_quiet(&["snapshots", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for image in self.ctr_quiet(&["images", "ls", "-q"]).lines() {
            self.ctr_quiet(&["images", "rm", "--sync", image]);
        }
        for lease in self.ctr_quiet(&["leases", "ls", "-q"]).lines() {
            self.ctr_quiet(&["leases", "rm", "--sync", lease]);
        }
        // Children before parents: a few rounds remove any chain.
        for _ in 0..10 {
            let keys = self.snapshots();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                self.ctr_quiet(&["snapshots", "rm", &key]);
            }
        }
        for digest in self.ctr_quiet(&["content", "ls", "-q"]).lines() {
            self.ctr_quiet(&["content", "rm", digest]);
        }
        let out = Command::new("ctr")
            .args(["namespaces", "rm", &self.0])
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            eprintln!(
                "cannot remove containerd namespace {}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs a future on a fresh current-thread runtime.
fn futures_block<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn insecure(host: &str) -> RegistryConfig {
    RegistryConfig {
        insecure: vec![host.to_string()],
        ..RegistryConfig::default()
    }
}

/// Full chain: cold pull, what containerd shows, a container runs from it,
/// IfNotPresent and Never without the registry, re-unpack after the
/// snapshots went away, Always fails without the registry.
#[test]
fn pull_unpack_and_reuse_without_registry() {
    prerequisites();
    let (archive, _) = archives();
    let mut reg = Registry::start();
    reg.push(archive, "busybox:1");
    let ns = Namespace::new("pull");
    let reference = format!("{}/busybox:1", reg.host());

    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&reg.host()))
            .await
            .expect("connecting to containerd");

        let t = Instant::now();
        let info = store
            .ensure(&reference, ImagePullPolicy::IfNotPresent)
            .await
            .unwrap_or_else(|e| panic!("pull failed: {}", riklet::error_chain(&e)));
        let cold = t.elapsed();
        assert_eq!(info.reference, reference);
        assert_eq!(info.cmd, vec!["/bin/sh".to_string()]);
        assert!(info.entrypoint.is_empty());
        assert!(info.env.iter().any(|e| e.starts_with("PATH=")), "{info:?}");
        assert_eq!(info.working_dir.as_deref(), Some("/"));
        assert_eq!(info.user, None);
        assert!(info.digest.starts_with("sha256:"), "{info:?}");

        // What ctr sees.
        let images = ns.ctr(&["images", "ls"]);
        assert!(
            images.contains(&reference) && images.contains(&info.digest),
            "ctr images ls: {images}"
        );
        // Two layers: the top snapshot sits on the bottom one.
        let snapshots = ns.ctr(&["snapshots", "ls"]);
        let rows: Vec<Vec<&str>> = snapshots
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        let top = rows
            .iter()
            .find(|r| r[0] == info.chain_id)
            .unwrap_or_else(|| panic!("no snapshot {}: {snapshots}", info.chain_id));
        assert_eq!(top.len(), 3, "top snapshot has a parent: {snapshots}");
        assert_eq!(top[2], "Committed", "{snapshots}");
        assert!(
            rows.iter()
                .any(|r| r[0] == top[1] && r.len() == 2 && r[1] == "Committed"),
            "bottom snapshot {} missing: {snapshots}",
            top[1]
        );
        assert_eq!(rows.len(), 2, "{snapshots}");
        let content = ns.ctr(&["content", "ls"]);
        assert!(
            content.contains(&format!(
                "containerd.io/gc.ref.snapshot.overlayfs={}",
                info.chain_id
            )),
            "config not labelled with its snapshot: {content}"
        );
        assert!(
            ns.ctr_quiet(&["leases", "ls", "-q"]).trim().is_empty(),
            "pull lease left behind"
        );
        // A synchronous garbage collection keeps all of it: the image
        // record roots content and snapshots through their labels.
        let lease = ns.ctr(&["leases", "create"]);
        ns.ctr(&["leases", "rm", "--sync", lease.trim()]);
        assert_eq!(ns.ctr(&["content", "ls", "-q"]).lines().count(), 4);
        assert_eq!(ns.snapshots().len(), 2);
        // ctr considers it unpacked and runs a container on it.
        let run = ns.ctr(&[
            "run",
            "--rm",
            &reference,
            &format!("{}-run", ns.0),
            "/bin/sh",
            "-c",
            "echo hello from uid $(id -u)",
        ]);
        assert!(run.contains("hello from uid 0"), "ctr run: {run}");

        // Without the registry.
        reg.stop();
        let t = Instant::now();
        let again = store
            .ensure(&reference, ImagePullPolicy::IfNotPresent)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "IfNotPresent contacted the registry? {}",
                    riklet::error_chain(&e)
                )
            });
        let warm = t.elapsed();
        assert_eq!(again, info);
        let never = store
            .ensure(&reference, ImagePullPolicy::Never)
            .await
            .unwrap_or_else(|e| panic!("Never: {}", riklet::error_chain(&e)));
        assert_eq!(never, info);
        println!("busybox pull: cold {cold:?}, IfNotPresent {warm:?}");

        let always = store.ensure(&reference, ImagePullPolicy::Always).await;
        if let Err(e) = &always {
            println!("Always, registry down: {}", riklet::error_chain(e));
        }
        assert!(
            matches!(always, Err(ImageError::Unreachable { .. })),
            "Always with the registry down: {always:?}"
        );

        // Snapshots gone, content still there: unpacked again, offline.
        ns.ctr(&["snapshots", "rm", &info.chain_id]);
        let t = Instant::now();
        let unpacked = store
            .ensure(&reference, ImagePullPolicy::IfNotPresent)
            .await
            .unwrap_or_else(|e| panic!("re-unpack: {}", riklet::error_chain(&e)));
        println!(
            "busybox re-unpack from the content store: {:?}",
            t.elapsed()
        );
        assert_eq!(unpacked, info);
        assert!(ns.snapshots().contains(&info.chain_id));
    });
}

/// Always resolves at the registry but downloads nothing it already has;
/// a second store (like a restarted riklet) sees the image.
/// Pulls `reference` expecting a failure, which must come at once or
/// after the registry timeout, not hang (a hanging pull would hold a pod
/// start).
async fn failed_pull(store: &ImageStore, reference: &str, what: &str) -> ImageError {
    let t = Instant::now();
    let err = store
        .ensure(reference, ImagePullPolicy::Always)
        .await
        .expect_err(what);
    let took = t.elapsed();
    println!("{what}? {} ({took:?})", riklet::error_chain(&err));
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
    err
}

#[test]
fn always_repulls_and_concurrent_ensures_share_one_pull() {
    prerequisites();
    let (archive, _) = archives();
    let reg = Registry::start();
    reg.push(archive, "busybox:1");
    let ns = Namespace::new("always");
    let reference = format!("{}/busybox:1", reg.host());
    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&reg.host()))
            .await
            .expect("connecting to containerd");
        let (a, b) = tokio::join!(
            store.ensure(&reference, ImagePullPolicy::IfNotPresent),
            store.ensure(&reference, ImagePullPolicy::IfNotPresent)
        );
        let a = a.unwrap_or_else(|e| panic!("{}", riklet::error_chain(&e)));
        assert_eq!(
            a,
            b.unwrap_or_else(|e| panic!("{}", riklet::error_chain(&e)))
        );
        let t = Instant::now();
        let again = store
            .ensure(&reference, ImagePullPolicy::Always)
            .await
            .unwrap_or_else(|e| panic!("{}", riklet::error_chain(&e)));
        println!("busybox Always with everything present: {:?}", t.elapsed());
        assert_eq!(again, a);
        let other = ImageStore::connect(SOCKET, &ns.0, RegistryConfig::default())
            .await
            .expect("connecting to containerd");
        let seen = other
            .ensure(&reference, ImagePullPolicy::Never)
            .await
            .unwrap_or_else(|e| panic!("{}", riklet::error_chain(&e)));
        assert_eq!(seen, a);
    });
    assert_eq!(ns.ctr(&["images", "ls", "-q"]).trim(), reference);
}

/// A mirror is asked first: the origin here is a closed local port, so
/// the pull can only have come from the mirror (and a broken mirror falls
/// back to that closed port, never off the machine).
#[test]
fn mirror_serves_the_origin_registry() {
    prerequisites();
    let (archive, _) = archives();
    let mirror = Registry::start();
    mirror.push(archive, "team/busybox:1");
    let ns = Namespace::new("mirror");
    let origin = "127.0.0.1:9";
    let reference = format!("{origin}/team/busybox:1");
    futures_block(async {
        let config = RegistryConfig {
            insecure: vec![mirror.host(), origin.to_string()],
            mirrors: [(origin.to_string(), mirror.host())].into(),
            ..RegistryConfig::default()
        };
        let store = ImageStore::connect(SOCKET, &ns.0, config)
            .await
            .expect("connecting to containerd");
        let info = store
            .ensure(&reference, ImagePullPolicy::Always)
            .await
            .unwrap_or_else(|e| panic!("pull through the mirror: {}", riklet::error_chain(&e)));
        assert_eq!(info.reference, reference);

        // Mirror without the image: the origin is tried, and fails.
        let err = store
            .ensure(&format!("{origin}/team/other:1"), ImagePullPolicy::Always)
            .await
            .expect_err("pulled an image nobody has");
        assert!(
            matches!(err, ImageError::Unreachable { ref registry, .. } if registry == origin),
            "{}",
            riklet::error_chain(&err)
        );
    });
    assert_eq!(ns.ctr(&["images", "ls", "-q"]).trim(), reference);
}

#[test]
fn unknown_repository_or_tag_is_not_found() {
    prerequisites();
    let (archive, _) = archives();
    let reg = Registry::start();
    reg.push(archive, "busybox:1");
    let ns = Namespace::new("notfound");
    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&reg.host()))
            .await
            .expect("connecting to containerd");
        for missing in ["busybox:2", "nothing-here:1"] {
            let reference = format!("{}/{missing}", reg.host());
            let err = store
                .ensure(&reference, ImagePullPolicy::IfNotPresent)
                .await
                .expect_err("a missing image pulled");
            assert!(
                matches!(err, ImageError::NotFound { .. }),
                "{reference}: {}",
                riklet::error_chain(&err)
            );
            assert!(err.to_string().contains(&reference), "{err}");
            println!("{reference}: {}", riklet::error_chain(&err));
        }
        let never = store
            .ensure(&format!("{}/busybox:1", reg.host()), ImagePullPolicy::Never)
            .await
            .expect_err("Never pulled");
        assert!(matches!(never, ImageError::NotPresent { .. }), "{never}");
    });
    assert!(ns.ctr(&["images", "ls", "-q"]).trim().is_empty());
}

/// A TCP server answering junk (plain HTTP and TLS), and one that never
/// answers: errors, quickly, never a hang.
#[test]
fn garbage_and_silent_registries_fail_fast() {
    prerequisites();
    let junk = TcpListener::bind("127.0.0.1:0").expect("binding");
    let junk_addr = junk.local_addr().expect("address");
    std::thread::spawn(move || {
        for conn in junk.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = conn.read(&mut buf);
                let _ =
                    conn.write_all(b"SSH-2.0-not-a-registry\r\n\x00\xff garbage garbage\r\n\r\n");
            });
        }
    });
    let silent = TcpListener::bind("127.0.0.1:0").expect("binding");
    let silent_addr = silent.local_addr().expect("address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });

    let ns = Namespace::new("garbage");
    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&junk_addr.to_string()))
            .await
            .expect("connecting to containerd");
        let err = failed_pull(&store, &format!("{junk_addr}/busybox:1"), "junk pulled").await;
        assert!(
            matches!(err, ImageError::BadAnswer { .. }),
            "junk over HTTP: {}",
            riklet::error_chain(&err)
        );

        // Same junk where TLS is expected.
        let tls = ImageStore::connect(SOCKET, &ns.0, RegistryConfig::default())
            .await
            .expect("connecting to containerd");
        let err = failed_pull(
            &tls,
            &format!("{junk_addr}/busybox:1"),
            "junk pulled over TLS",
        )
        .await;
        assert!(
            matches!(
                err,
                ImageError::Unreachable { .. } | ImageError::BadAnswer { .. }
            ),
            "junk over TLS: {}",
            riklet::error_chain(&err)
        );

        // Accepts, never answers.
        let quiet = ImageStore::connect(
            SOCKET,
            &ns.0,
            RegistryConfig {
                insecure: vec![silent_addr.to_string()],
                timeout: Duration::from_secs(1),
                ..RegistryConfig::default()
            },
        )
        .await
        .expect("connecting to containerd");
        let err = failed_pull(
            &quiet,
            &format!("{silent_addr}/busybox:1"),
            "silence pulled",
        )
        .await;
        assert!(
            matches!(err, ImageError::Timeout { .. }),
            "silent registry: {}",
            riklet::error_chain(&err)
        );
    });
}

#[test]
fn unparsable_reference_is_named() {
    prerequisites();
    let ns = Namespace::new("badref");
    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, RegistryConfig::default())
            .await
            .expect("connecting to containerd");
        for bad in [
            // Registry parts on a closed local port: should one of these
            // parse, the pull fails locally instead of leaving the machine.
            "Not A Reference",
            "127.0.0.1:9/busybox:",
            "127.0.0.1:9/UPPER/case:1",
            "127.0.0.1:9/a@sha256:zz",
            "127.0.0.1:9/busybox::1",
            "127.0.0.1:9/a/-b:1",
        ] {
            let err = store
                .ensure(bad, ImagePullPolicy::IfNotPresent)
                .await
                .expect_err("a bad reference pulled");
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad}: {}",
                riklet::error_chain(&err)
            );
            assert!(err.to_string().contains(bad), "{err}");
            println!("{}", riklet::error_chain(&err));
        }
    });
}

/// An arm64-only image, as a plain manifest and inside an index.
#[test]
fn other_architecture_only_is_refused() {
    prerequisites();
    let (_, arm) = archives();
    let reg = Registry::start();
    reg.push(arm, "busybox-arm:1");

    // An index listing only that manifest, pushed by hand.
    let arm64 = serde_json::json!({ "architecture": "arm64", "os": "linux", "variant": "v8" });
    push_index(&reg, "busybox-arm", "1", "multi", Some(arm64));

    let ns = Namespace::new("arch");
    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&reg.host()))
            .await
            .expect("connecting to containerd");
        let host = riklet::runtime::image::host_arch();
        for tag in ["1", "multi"] {
            let reference = format!("{}/busybox-arm:{tag}", reg.host());
            let err = store
                .ensure(&reference, ImagePullPolicy::IfNotPresent)
                .await
                .expect_err("an arm64 image pulled");
            assert!(
                matches!(err, ImageError::WrongPlatform { .. }),
                "{reference}: {}",
                riklet::error_chain(&err)
            );
            let msg = err.to_string();
            println!("{msg}");
            assert!(
                msg.contains(&format!("no linux/{host} image in {reference}"))
                    && msg.contains("linux/arm64"),
                "{msg}"
            );
        }
    });
    assert!(ns.ctr(&["images", "ls", "-q"]).trim().is_empty());
    assert!(ns.snapshots().is_empty(), "nothing unpacked");
}

/// An index entry without a platform is taken when the image's config says
/// this host's OS and architecture, as containerd, `ctr run` and Docker
/// take it; one whose config says another architecture is still refused.
/// Both ways such an index arrives: `ctr images import` of an OCI archive
/// (the image record's target is then the archive's inner index), and a
/// pull from a registry.
#[test]
fn index_entry_without_platform_is_judged_by_its_config() {
    prerequisites();
    let (unlabelled, unlabelled_arm) = unlabelled_archives();
    let ns = Namespace::new("noplatform");
    let path = |p: &PathBuf| p.to_str().expect("UTF-8 path").to_string();
    ns.ctr(&["images", "import", &path(unlabelled)]);
    // ctr will not unpack an arm64 image here either.
    ns.ctr(&["images", "import", "--no-unpack", &path(unlabelled_arm)]);
    let imported = "docker.io/library/busybox-unlabelled:1";
    let imported_arm = "docker.io/library/busybox-unlabelled-arm:1";
    let images = ns.ctr(&["images", "ls"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with(imported)
                && l.contains("application/vnd.oci.image.index.v1+json")),
        "the import is not recorded as an index: {images}"
    );
    let run = ns.ctr(&[
        "run",
        "--rm",
        imported,
        &format!("{}-run", ns.0),
        "/bin/sh",
        "-c",
        "echo imported runs",
    ]);
    assert!(run.contains("imported runs"), "ctr run: {run}");

    let (archive, arm) = archives();
    let reg = Registry::start();
    reg.push(archive, "busybox:1");
    reg.push(arm, "busybox-arm:1");
    push_index(&reg, "busybox", "1", "unlabelled", None);
    push_index(&reg, "busybox-arm", "1", "unlabelled", None);
    let pulled = format!("{}/busybox:unlabelled", reg.host());
    let pulled_arm = format!("{}/busybox-arm:unlabelled", reg.host());

    futures_block(async {
        let store = ImageStore::connect(SOCKET, &ns.0, insecure(&reg.host()))
            .await
            .expect("connecting to containerd");
        let info = store
            .ensure(imported, ImagePullPolicy::Never)
            .await
            .unwrap_or_else(|e| panic!("imported image: {}", riklet::error_chain(&e)));
        assert_eq!(info.reference, imported);
        assert_eq!(info.cmd, vec!["/bin/sh".to_string()]);
        assert!(ns.snapshots().contains(&info.chain_id));
        let from_registry = store
            .ensure(&pulled, ImagePullPolicy::Always)
            .await
            .unwrap_or_else(|e| panic!("{pulled}: {}", riklet::error_chain(&e)));
        // The same layers: the same snapshot chain.
        assert_eq!(from_registry.chain_id, info.chain_id);

        let host = riklet::runtime::image::host_arch();
        for (reference, policy) in [
            (imported_arm.to_string(), ImagePullPolicy::Never),
            (pulled_arm.clone(), ImagePullPolicy::Always),
        ] {
            let err = store
                .ensure(&reference, policy)
                .await
                .expect_err("an arm64 image taken");
            let msg = err.to_string();
            println!("{msg}");
            assert!(
                matches!(err, ImageError::WrongPlatform { .. })
                    && msg.contains(&format!("no linux/{host} image in {reference}"))
                    && msg.contains("linux/arm64"),
                "{reference}: {}",
                riklet::error_chain(&err)
            );
        }
    });
    let images = ns.ctr(&["images", "ls", "-q"]);
    assert!(!images.contains(&pulled_arm), "{images}");
}
