//! The OCI runtime spec (`config.json`) of an image container.
//!
//! [`build`] turns the image's config values, the manifest's overrides and
//! the pod's placement (network namespace, cgroup, limits) into the runtime
//! spec that containerd hands to runc, typed with the `oci-spec` crate so
//! that a misspelt field cannot reach runc. The defaults are containerd's
//! and Docker's (`ctr oci spec`, moby `oci/defaults.go`): Docker's
//! capability set, `noNewPrivileges`, masked and read-only `/proc` paths, a
//! device cgroup that denies everything but the usual character devices,
//! and `root.path = "rootfs"`, where the runc shim mounts the container's
//! snapshot. Building the spec is pure, so every rule is unit-tested
//! without containerd.

use std::path::Path;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, Process, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::cgroups::Limits;

/// OCI runtime spec version written in `ociVersion` (runc 1.1 speaks it).
pub const OCI_VERSION: &str = "1.0.2";
/// `PATH` of a process whose image, manifest or spec sets none (Docker's):
/// containers and bare processes alike.
pub use riklet_shim::protocol::DEFAULT_PATH;
/// CFS period of CPU limits, µs (kubelet's).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Highest `RLIMIT_NOFILE` given to container processes: what containerd's
/// systemd unit gives containerd (`LimitNOFILE=infinity` = the kernel's
/// default `nr_open`), which Docker and CRI containers inherit.
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// Docker's default capability set (moby `oci/caps/defaults.go`), also
/// containerd's: the process gets these in its bounding, effective and
/// permitted sets, nothing more.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (containerd's and Docker's defaults).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths the container sees read-only (containerd's and Docker's defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Character devices a container may use (`major`, `minor`; `None` = any
/// minor): null, zero, full, random, urandom, tty, ptmx and the pty slaves
/// — the list runc and CRI allow. Everything else is denied.
const ALLOWED_DEVICES: [(i64, Option<i64>); 8] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// Options of the kernel filesystems every container gets: destination,
/// type, source, options.
const SYSTEM_MOUNTS: [(&str, &str, &str, &[&str]); 7] = [
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    (
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ),
    (
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    ),
    (
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    ),
];

/// Options of the host files bind-mounted into a container (`resolv.conf`,
/// `hosts`).
const FILE_BIND_OPTIONS: [&str; 5] = ["rbind", "ro", "nosuid", "nodev", "noexec"];

/// A spec that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the image nor the manifest says what to run.
    #[error("no command: the image has no entrypoint or cmd and the manifest sets no command")]
    NoCommand,
    /// The image's `user` names a user that its `/etc/passwd` lacks.
    #[error("user {0:?} of the image is not in its /etc/passwd")]
    UnknownUser(String),
    /// The image's `user` names a group that its `/etc/group` lacks.
    #[error("group {0:?} of the image is not in its /etc/group")]
    UnknownGroup(String),
    /// `oci-spec` refused a part of the spec (its builders check what
    /// they are given).
    #[error("the OCI runtime spec does not build")]
    Build(#[from] OciSpecError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, SpecError>;

/// The values of an image's config that shape its containers (OCI image
/// config `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries, as in the image config.
    pub env: Vec<String>,
    /// `None` (or empty) means `/`.
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; `None` (or empty) is root.
    pub user: Option<String>,
}

/// Who the container's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from the image's `/etc/group`).
    pub additional_gids: Vec<u32>,
}

/// Everything [`build`] needs.
#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub image: &'a ImageConfig,
    /// Manifest `command`: replaces the image entrypoint (and its cmd).
    pub command: Option<&'a [String]>,
    /// Manifest `args`: replace the image cmd.
    pub args: &'a [String],
    /// Manifest environment; wins over the image's.
    pub env: &'a [(String, String)],
    pub user: User,
    pub hostname: &'a str,
    /// Network namespace to join (the pod's); `None` = the host's.
    pub netns: Option<&'a Path>,
    /// cgroup path relative to every hierarchy root, e.g.
    /// `/riklet/<instance>_<container>`.
    pub cgroups_path: &'a str,
    pub limits: Limits,
    /// Also cap memory+swap at the memory limit (no swapping past it):
    /// set it only when the host accounts swap, runc refuses it otherwise.
    pub limit_swap: bool,
    /// `RLIMIT_NOFILE` (soft = hard) of the process. runc cannot raise it
    /// above its own hard limit without `CAP_SYS_RESOURCE`: see
    /// [`nofile_limit`].
    pub nofile: u64,
    /// Host file bind-mounted read-only at `/etc/resolv.conf`.
    pub resolv_conf: Option<&'a Path>,
    /// Host file bind-mounted read-only at `/etc/hosts`.
    pub hosts: Option<&'a Path>,
}

/// The command line (kubelet rules): the manifest's `command` replaces the
/// image entrypoint, its `args` replace the image cmd; a `command` without
/// `args` drops the image cmd too.
pub fn process_args(
    image: &ImageConfig,
    command: Option<&[String]>,
    args: &[String],
) -> Result<Vec<String>> {
    let mut argv: Vec<String> = match command {
        Some(c) => c.to_vec(),
        None => image.entrypoint.clone(),
    };
    if !args.is_empty() {
        argv.extend_from_slice(args);
    } else if command.is_none() {
        argv.extend_from_slice(&image.cmd);
    }
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The environment: the image's, overridden by the manifest's (same name
/// replaced in place, new names appended), with a default `PATH`.
pub fn merge_env(image_env: &[String], env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image_env.to_vec();
    for (name, value) in env {
        let entry = format!("{name}={value}");
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name)
        {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    out
}

/// Resolves an image `user` field. Numeric parts are used as they are;
/// names are looked up in the image's `/etc/passwd` and `/etc/group`
/// contents, given when the image has them. A bare uid takes its primary
/// group from `/etc/passwd` (0 if absent), as containerd does; a user given
/// by name or uid also gets its supplementary groups from `/etc/group`.
pub fn resolve_user(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<User> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(User::default());
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries
            .iter()
            .find(|f| f[2].parse() == Ok(uid))
            .map(|f| (uid, f[3].parse::<u32>().unwrap_or(0), Some(f[0]))),
        Err(_) => Some(
            passwd_entries
                .iter()
                .find(|f| f[0] == u)
                .map(|f| {
                    (
                        f[2].parse::<u32>().unwrap_or(0),
                        f[3].parse::<u32>().unwrap_or(0),
                        Some(f[0]),
                    )
                })
                .ok_or_else(|| SpecError::UnknownUser(u.to_string()))?,
        ),
    };
    let (uid, primary_gid, name) = match entry {
        Some(e) => e,
        None => (u.parse::<u32>().expect("numeric: parsed above"), 0, None),
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
        },
    };
    let mut additional_gids: Vec<u32> = match (name, g) {
        // An explicit group replaces the user's groups (Docker's rule).
        (Some(name), None) => group_entries
            .iter()
            .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
            .filter_map(|f| f[2].parse::<u32>().ok())
            .filter(|&g| g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// The `RLIMIT_NOFILE` to give containers: [`NOFILE_LIMIT`], or this
/// process's hard limit when lower (a node whose services run with a lower
/// limit, or without `CAP_SYS_RESOURCE`, where runc cannot raise it).
pub fn nofile_limit() -> u64 {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => hard.min(NOFILE_LIMIT),
        Err(_) => 1024,
    }
}

/// A hostname the kernel accepts (≤ 63 bytes, no trailing `-`), from a
/// DNS-1123 name.
pub fn hostname_of(name: &str) -> String {
    let mut h: String = name.chars().take(63).collect();
    while h.ends_with('-') || h.ends_with('.') {
        h.pop();
    }
    if h.is_empty() { "localhost".into() } else { h }
}

/// Builds the runtime spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .process(process(input)?)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .hostname(input.hostname)
        .mounts(mounts(input)?)
        .linux(
            LinuxBuilder::default()
                .cgroups_path(input.cgroups_path)
                .resources(resources(input)?)
                .namespaces(namespaces(input.netns)?)
                .masked_paths(MASKED_PATHS.map(String::from).to_vec())
                .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
                .build()?,
        )
        .build()?;
    // The builder starts from oci-spec's sample spec, which has (empty)
    // annotations: this spec has none.
    spec.set_annotations(None);
    Ok(spec)
}

/// The container's process: command line, environment, user, Docker's
/// capabilities, the open-files limit, no new privileges.
fn process(input: &SpecInput<'_>) -> Result<Process> {
    let cwd = match input.image.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => dir,
        _ => "/",
    };
    let mut user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid);
    if !input.user.additional_gids.is_empty() {
        user = user.additional_gids(input.user.additional_gids.clone());
    }
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    // The builder starts from oci-spec's sample sets: the inheritable and
    // ambient sets stay empty (absent), as Docker leaves them.
    capabilities.set_inheritable(None).set_ambient(None);
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(input.nofile)
        .soft(input.nofile)
        .build()?;
    Ok(ProcessBuilder::default()
        .terminal(false)
        .user(user.build()?)
        .args(process_args(input.image, input.command, input.args)?)
        .env(merge_env(&input.image.env, input.env))
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .build()?)
}

/// The kernel filesystems, then the pod's `resolv.conf` and `hosts`.
fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>> {
    let mount = |destination: &str, kind: &str, source: &Path, options: &[&str]| {
        MountBuilder::default()
            .destination(destination)
            .typ(kind)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    let mut mounts = SYSTEM_MOUNTS
        .iter()
        .map(|(dest, kind, source, options)| mount(dest, kind, Path::new(source), options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (dest, file) in [
        ("/etc/resolv.conf", input.resolv_conf),
        ("/etc/hosts", input.hosts),
    ] {
        if let Some(file) = file {
            mounts.push(mount(dest, "bind", file, &FILE_BIND_OPTIONS)?);
        }
    }
    Ok(mounts)
}

/// The namespaces of the container's own; the network one is the pod's
/// (joined by path), or the host's when there is none.
fn namespaces(netns: Option<&Path>) -> Result<Vec<LinuxNamespace>> {
    let own = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut namespaces = vec![
        own(LinuxNamespaceType::Pid)?,
        own(LinuxNamespaceType::Ipc)?,
        own(LinuxNamespaceType::Uts)?,
        own(LinuxNamespaceType::Mount)?,
    ];
    if let Some(netns) = netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(netns)
                .build()?,
        );
    }
    Ok(namespaces)
}

/// The device cgroup (deny all, allow [`ALLOWED_DEVICES`]) and the CPU and
/// memory limits.
fn resources(input: &SpecInput<'_>) -> Result<LinuxResources> {
    let mut devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ];
    for (major, minor) in ALLOWED_DEVICES {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rwm");
        if let Some(minor) = minor {
            rule = rule.minor(minor);
        }
        devices.push(rule.build()?);
    }
    let mut resources = LinuxResourcesBuilder::default().devices(devices);
    if let Some(millis) = input.limits.cpu_millis {
        let quota = (millis * CPU_PERIOD_US / 1000).max(1000);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(i64::try_from(quota).unwrap_or(i64::MAX))
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if let Some(bytes) = input.limits.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let mut memory = LinuxMemoryBuilder::default().limit(bytes);
        if input.limit_swap {
            memory = memory.swap(bytes);
        }
        resources = resources.memory(memory.build()?);
    }
    Ok(resources.build()?)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The spec as containerd receives it, its capability sets in
    /// [`DEFAULT_CAPABILITIES`] order: `oci-spec` keeps capabilities in a
    /// `HashSet`, so their order in the document is arbitrary (runc reads
    /// them as a set). That order is the only difference `oci-spec` makes
    /// to the recorded documents.
    fn to_json(spec: Spec) -> Value {
        let mut v = serde_json::to_value(spec).unwrap();
        let order = json!(DEFAULT_CAPABILITIES);
        let order = order.as_array().unwrap();
        for set in v["process"]["capabilities"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            set.as_array_mut()
                .unwrap()
                .sort_by_key(|c| order.iter().position(|o| o == c));
        }
        v
    }

    /// A recorded document (`testdata/`).
    fn recorded(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: s(&["/docker-entrypoint.sh"]),
            cmd: s(&["nginx", "-g", "daemon off;"]),
            env: s(&["PATH=/usr/bin:/bin", "NGINX_VERSION=1.25"]),
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    fn input<'a>(image: &'a ImageConfig, env: &'a [(String, String)]) -> SpecInput<'a> {
        SpecInput {
            image,
            command: None,
            args: &[],
            env,
            user: User::default(),
            hostname: "web-x1",
            netns: None,
            cgroups_path: "/riklet/web-x1_nginx",
            limits: Limits::default(),
            limit_swap: false,
            nofile: 4096,
            resolv_conf: None,
            hosts: None,
        }
    }

    #[test]
    fn args_follow_kubelet_rules() {
        let img = image();
        assert_eq!(
            process_args(&img, None, &[]).unwrap(),
            s(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
        let cmd = s(&["/bin/sh", "-c", "exit 3"]);
        assert_eq!(process_args(&img, Some(&cmd), &[]).unwrap(), cmd);
        assert_eq!(
            process_args(&img, None, &s(&["-v"])).unwrap(),
            s(&["/docker-entrypoint.sh", "-v"])
        );
        assert_eq!(
            process_args(&img, Some(&s(&["/bin/echo"])), &s(&["hi"])).unwrap(),
            s(&["/bin/echo", "hi"])
        );
        assert!(matches!(
            process_args(&ImageConfig::default(), None, &[]),
            Err(SpecError::NoCommand)
        ));
        // An image with only a cmd runs it.
        let only_cmd = ImageConfig {
            cmd: s(&["/bin/sh"]),
            ..ImageConfig::default()
        };
        assert_eq!(process_args(&only_cmd, None, &[]).unwrap(), s(&["/bin/sh"]));
    }

    #[test]
    fn env_merges_with_manifest_winning_and_a_default_path() {
        let env = vec![
            ("NGINX_VERSION".to_string(), "2".to_string()),
            ("MODE".to_string(), "prod".to_string()),
        ];
        assert_eq!(
            merge_env(&image().env, &env),
            s(&["PATH=/usr/bin:/bin", "NGINX_VERSION=2", "MODE=prod"])
        );
        let merged = merge_env(&[], &[("A".into(), "b=c".into())]);
        assert_eq!(merged, vec![format!("PATH={DEFAULT_PATH}"), "A=b=c".into()]);
    }

    #[test]
    fn users_resolve_numerically_or_through_the_image_files() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
        let group = "root:x:0:\nwww:x:33:\nlogs:x:4:www,other\nadm:x:5:root\n";
        let r = |u: &str| resolve_user(u, Some(passwd), Some(group));
        assert_eq!(r("").unwrap(), User::default());
        assert_eq!(
            r("www").unwrap(),
            User {
                uid: 33,
                gid: 33,
                additional_gids: vec![4]
            }
        );
        assert_eq!(r("33").unwrap().gid, 33, "a bare uid takes its passwd gid");
        assert_eq!(
            r("1000").unwrap(),
            User {
                uid: 1000,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("1000:2000").unwrap(),
            User {
                uid: 1000,
                gid: 2000,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("www:adm").unwrap(),
            User {
                uid: 33,
                gid: 5,
                additional_gids: vec![]
            }
        );
        assert!(matches!(r("nginx"), Err(SpecError::UnknownUser(u)) if u == "nginx"));
        assert!(matches!(r("www:nope"), Err(SpecError::UnknownGroup(g)) if g == "nope"));
        // Without /etc/passwd only numbers work.
        assert_eq!(resolve_user("7:8", None, None).unwrap().gid, 8);
        assert!(resolve_user("www", None, None).is_err());
    }

    #[test]
    fn spec_has_the_docker_defaults() {
        let img = image();
        let spec = to_json(build(&input(&img, &[])).unwrap());
        assert_eq!(spec["ociVersion"], OCI_VERSION);
        assert_eq!(spec["root"]["path"], "rootfs");
        assert_eq!(spec["hostname"], "web-x1");
        let p = &spec["process"];
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["user"], json!({"uid": 0, "gid": 0}));
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(p["capabilities"][set], json!(DEFAULT_CAPABILITIES), "{set}");
        }
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!((1..=NOFILE_LIMIT).contains(&nofile_limit()));
        assert!(p["capabilities"].get("ambient").is_none());
        assert_eq!(
            p["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}])
        );
        let l = &spec["linux"];
        assert_eq!(l["cgroupsPath"], "/riklet/web-x1_nginx");
        assert_eq!(l["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(l["readonlyPaths"], json!(READONLY_PATHS));
        let ns: Vec<&str> = l["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"], "host network: no netns");
        let devices = l["resources"]["devices"].as_array().unwrap();
        assert_eq!(devices[0], json!({"allow": false, "access": "rwm"}));
        assert!(
            devices[1..]
                .iter()
                .all(|d| d["allow"] == true && d["type"] == "c")
        );
        assert!(devices.contains(
            &json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        ));
        assert!(l["resources"].get("memory").is_none());
        assert!(l["resources"].get("cpu").is_none());
        let dests: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        let ro = |dest: &str| {
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == dest)
                .unwrap()["options"]
                .as_array()
                .unwrap()
                .contains(&json!("ro"))
        };
        assert!(ro("/sys") && ro("/sys/fs/cgroup"));
    }

    #[test]
    fn spec_places_the_container_in_the_pod() {
        let img = image();
        let env = vec![("MODE".to_string(), "x".to_string())];
        let cmd = s(&["/bin/busybox", "httpd", "-f"]);
        let mut i = input(&img, &env);
        i.command = Some(&cmd);
        i.netns = Some(Path::new("/run/netns/web-x1"));
        i.limits = Limits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
        };
        i.limit_swap = true;
        i.resolv_conf = Some(Path::new("/var/lib/riklet/pods/web-x1/resolv.conf"));
        i.hosts = Some(Path::new("/var/lib/riklet/pods/web-x1/hosts"));
        i.user = User {
            uid: 33,
            gid: 33,
            additional_gids: vec![4],
        };
        let spec = to_json(build(&i).unwrap());
        assert_eq!(spec["process"]["args"], json!(cmd));
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/usr/bin:/bin", "NGINX_VERSION=1.25", "MODE=x"])
        );
        assert_eq!(
            spec["process"]["user"],
            json!({"uid": 33, "gid": 33, "additionalGids": [4]})
        );
        let l = &spec["linux"];
        assert!(
            l["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network", "path": "/run/netns/web-x1"}))
        );
        assert_eq!(
            l["resources"]["cpu"],
            json!({"quota": 50_000, "period": 100_000})
        );
        assert_eq!(
            l["resources"]["memory"],
            json!({"limit": 64 << 20, "swap": 64 << 20})
        );
        let mounts = spec["mounts"].as_array().unwrap();
        let resolv = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .unwrap();
        assert_eq!(resolv["type"], "bind");
        assert_eq!(resolv["source"], "/var/lib/riklet/pods/web-x1/resolv.conf");
        assert!(resolv["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
        // A tiny CPU limit still gets the 1 ms floor runc accepts.
        i.limits.cpu_millis = Some(1);
        assert_eq!(
            to_json(build(&i).unwrap())["linux"]["resources"]["cpu"]["quota"],
            1000
        );
    }

    #[test]
    fn hostnames_fit_the_kernel_limit() {
        assert_eq!(hostname_of("web-x1"), "web-x1");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(hostname_of(&long), "a".repeat(62));
        assert_eq!(hostname_of(""), "localhost");
    }

    /// A pod container with every option set: the image user's groups,
    /// the manifest's command, args and env, the pod's netns, limits with
    /// swap, resolv.conf and hosts.
    fn pod_input<'a>(
        img: &'a ImageConfig,
        env: &'a [(String, String)],
        cmd: &'a [String],
        args: &'a [String],
    ) -> SpecInput<'a> {
        SpecInput {
            image: img,
            command: Some(cmd),
            args,
            env,
            user: User {
                uid: 33,
                gid: 33,
                additional_gids: vec![4, 27],
            },
            hostname: "web-x1",
            netns: Some(Path::new("/run/netns/web-x1")),
            cgroups_path: "/riklet/web-x1_nginx",
            limits: Limits {
                cpu_millis: Some(250),
                memory_bytes: Some(128 << 20),
            },
            limit_swap: true,
            nofile: 1_048_576,
            resolv_conf: Some(Path::new("/var/lib/riklet/pods/web-x1/resolv.conf")),
            hosts: Some(Path::new("/var/lib/riklet/pods/web-x1/hosts")),
        }
    }

    /// The documents handed to containerd, recorded in `testdata/` from
    /// the first version of [`build`]: any change to them is a change of
    /// what runc is told.
    #[test]
    fn spec_documents_match_the_recorded_ones() {
        let mut img = image();
        img.user = Some("www".into());
        let env = vec![
            ("NGINX_VERSION".to_string(), "2".to_string()),
            ("MODE".to_string(), "prod".to_string()),
        ];
        let (cmd, args) = (s(&["/bin/busybox", "httpd"]), s(&["-f", "-p", "8080"]));
        let pod = to_json(build(&pod_input(&img, &env, &cmd, &args)).unwrap());
        assert_eq!(
            pod,
            recorded(include_str!("testdata/runtime_spec_pod.json"))
        );

        let only_cmd = ImageConfig {
            cmd: s(&["/bin/sh"]),
            ..ImageConfig::default()
        };
        let host = SpecInput {
            hostname: "batch-job-7",
            netns: None,
            cgroups_path: "/riklet/batch-job-7_main",
            limits: Limits {
                cpu_millis: None,
                memory_bytes: Some(64 << 20),
            },
            limit_swap: false,
            nofile: 4096,
            ..input(&only_cmd, &[])
        };
        assert_eq!(
            to_json(build(&host).unwrap()),
            recorded(include_str!("testdata/runtime_spec_host.json"))
        );
    }
}
