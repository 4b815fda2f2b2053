//! What one riklet owns on the node, listed by name: processes, cgroups
//! (every v1 hierarchy and v2), network namespaces, veths, nftables
//! rules and set elements, BPF pins and proxy map entries, containerd
//! containers, tasks, container snapshots and leases, pod records, IPAM
//! leases, pod log directories and retention markers.
//!
//! Two uses: after a crash and a recovery, everything must belong to a
//! live pod ([`Inventory::orphans`]); after every pod is deleted, the node
//! must be back to where it was ([`Inventory::diff`] against a first
//! inventory). The crash-point test and `cargo xtask soak` share it; it is
//! a crate of its own, with no gRPC code, so that `cargo xtask` builds on
//! a fresh machine before `setup` has installed protoc.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod ctr;
mod host;

pub use ctr::Ctr;
pub use host::{alive, links_on, netns_named};

/// The machine's containerd.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Where one riklet's objects are: what its config names.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `cgroup_root`.
    pub cgroup_root: String,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `log_dir`.
    pub log_dir: PathBuf,
    /// `bpf_pin_dir`.
    pub pin_dir: PathBuf,
    /// `[network] bridge`.
    pub bridge: String,
    /// `[network] nft_table` (the proxy's is `<table>_proxy`).
    pub nft_table: String,
    /// `[containerd] socket` and `namespace`.
    pub containerd: Option<(PathBuf, String)>,
    /// Pod network namespaces are `rik-<instance>`: the instances of this
    /// riklet's apps start with this prefix.
    pub app_prefix: String,
    /// Processes that are not leftovers (the riklet, its scheduler).
    pub exclude_pids: Vec<u32>,
}

/// The objects of a [`Scope`], each kind a set of names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub kinds: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Every kind an inventory lists, in report order.
pub const KINDS: &[&str] = &[
    "process",
    "cgroup",
    "netns",
    "veth",
    "nft",
    "bpf pin",
    "bpf entry",
    "containerd",
    "pod record",
    "ipam lease",
    "log dir",
    "retention marker",
];

impl Inventory {
    /// Lists what `scope` has on the node now.
    pub fn take(scope: &Scope) -> Inventory {
        let mut kinds: BTreeMap<&'static str, BTreeSet<String>> =
            KINDS.iter().map(|k| (*k, BTreeSet::new())).collect();
        let mut put = |kind: &'static str, items: Vec<String>| {
            kinds.get_mut(kind).expect("a known kind").extend(items);
        };
        put("process", processes(scope));
        put("cgroup", cgroups(&scope.cgroup_root));
        put("netns", netns_named(&format!("rik-{}", scope.app_prefix)));
        put("veth", links_on(&scope.bridge));
        put("nft", nft_items(&scope.nft_table));
        put("nft", nft_items(&format!("{}_proxy", scope.nft_table)));
        put("bpf pin", files_under(&scope.pin_dir));
        put("bpf entry", map_entries(&scope.pin_dir));
        if let Some((socket, namespace)) = &scope.containerd {
            put(
                "containerd",
                containerd_objects(&Ctr::new(socket, namespace)),
            );
        }
        put("pod record", names_in(&scope.state_dir.join("pods")));
        put("ipam lease", ipam_leases(&scope.state_dir));
        put("log dir", names_in(&scope.log_dir));
        put(
            "retention marker",
            names_in(&scope.state_dir.join("deleted-logs")),
        );
        Inventory { kinds }
    }

    /// How many objects of each kind (the soak's samples).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.kinds.iter().map(|(k, v)| (*k, v.len())).collect()
    }

    /// What this inventory has that `before` had not, and what it lacks,
    /// one line per object (`+ kind name`, `- kind name`).
    pub fn diff(&self, before: &Inventory) -> Vec<String> {
        let mut lines = Vec::new();
        for kind in KINDS {
            let (now, then) = (&self.kinds[kind], &before.kinds[kind]);
            lines.extend(now.difference(then).map(|n| format!("+ {kind} {n}")));
            lines.extend(then.difference(now).map(|n| format!("- {kind} {n}")));
        }
        lines
    }

    /// Objects that belong to no instance of `live` (instance ids): every
    /// process, cgroup, netns, containerd object, pod record and IPAM
    /// lease names its instance; veths are counted against the leases.
    pub fn orphans(&self, live: &[String]) -> Vec<String> {
        let owned = |name: &str| live.iter().any(|id| name.contains(id.as_str()));
        let mut lines = Vec::new();
        for kind in [
            "process",
            "cgroup",
            "netns",
            "containerd",
            "pod record",
            "ipam lease",
        ] {
            lines.extend(
                self.kinds[kind]
                    .iter()
                    .filter(|n| !owned(n))
                    .map(|n| format!("{kind} {n}")),
            );
        }
        let (veths, leases) = (&self.kinds["veth"], &self.kinds["ipam lease"]);
        if veths.len() != leases.len() {
            lines.push(format!(
                "veth: {} on the bridge ({veths:?}) for {} IPAM leases",
                veths.len(),
                leases.len()
            ));
        }
        lines
    }
}

/// Processes in the scope's cgroups, or whose command line names its
/// state dir, log dir or containerd namespace (shims, loggers, runc
/// shims): `<pid> <comm> <cgroup or command line>`.
fn processes(scope: &Scope) -> Vec<String> {
    let cgroup_mark = format!("/{}/", scope.cgroup_root);
    let mut marks = vec![
        scope.state_dir.display().to_string(),
        scope.log_dir.display().to_string(),
    ];
    if let Some((_, ns)) = &scope.containerd {
        marks.push(format!("-namespace {ns} "));
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        if scope.exclude_pids.contains(&pid) || !alive(pid.into()) {
            continue;
        }
        let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let cgroup = String::from_utf8_lossy(&read("cgroup")).into_owned();
        let comm = String::from_utf8_lossy(&read("comm")).trim().to_string();
        let in_cgroup = cgroup
            .lines()
            .find(|l| l.contains(&cgroup_mark))
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string());
        if let Some(leaf) = in_cgroup {
            found.push(format!("{pid} {comm} cgroup {leaf}"));
        } else if marks.iter().any(|m| cmdline.contains(m.as_str())) {
            found.push(format!("{pid} {comm} {}", cmdline.trim()));
        }
    }
    found
}

/// `<hierarchy>/<cgroup>` of every container cgroup under `root`.
fn cgroups(root: &str) -> Vec<String> {
    let mut mounts: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    mounts.push(PathBuf::from("/sys/fs/cgroup"));
    let mut found = Vec::new();
    for m in mounts {
        let hierarchy = m
            .file_name()
            .map_or("v2".into(), |n| n.to_string_lossy().into_owned());
        let Ok(entries) = std::fs::read_dir(m.join(root)) else {
            continue;
        };
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            found.push(format!("{hierarchy}/{}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// One line per rule (`table chain rule <n>`) and set element (`table set
/// element`) of an nftables table; nothing if it does not exist. A rule
/// is named by its place in its chain, a count that must come back.
fn nft_items(table: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", table])
        .output();
    let Some(doc) = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut per_chain: BTreeMap<String, usize> = BTreeMap::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().unwrap_or("?").to_string();
            let n = per_chain.entry(chain.clone()).or_default();
            *n += 1;
            found.push(format!("{table} {chain} rule {n}"));
        }
        for kind in ["set", "map"] {
            if let Some(set) = item.get(kind) {
                let name = set["name"].as_str().unwrap_or("?");
                for elem in set["elem"].as_array().into_iter().flatten() {
                    found.push(format!("{table} {kind} {name} {elem}"));
                }
            }
        }
    }
    found
}

/// Every file under `dir` (pinned maps and links), relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                found.push(rel.display().to_string());
            }
        }
    }
    found
}

/// The pinned maps whose entries belong to this riklet's services and
/// pods (not the node-address map, which follows the node's interfaces,
/// nor the monitor's node-wide maps, nor per-socket state).
const OWNED_MAPS: &[&str] = &[
    "proxy/LB_SERVICES",
    "proxy/LB_BACKENDS",
    "proxy/LB_REVNAT",
    "proxy/LB_COUNTERS",
    "CGROUP_TRAFFIC",
];

/// `<map> <key>` of every entry of [`OWNED_MAPS`] (`bpftool map dump`).
fn map_entries(pin_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for map in OWNED_MAPS {
        let path = pin_dir.join(map);
        if !path.exists() {
            continue;
        }
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path)
            .output()
            .expect("bpftool missing: apt install bpftool (or `cargo xtask setup`)");
        let entries = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        for entry in entries {
            found.push(format!("{map} {}", entry["key"]));
        }
    }
    found
}

/// `container <id>`, `task <id>`, `snapshot <key>` (active ones: the
/// image's committed layers stay with the image), `lease <id>`.
fn containerd_objects(ctr: &Ctr) -> Vec<String> {
    let mut found: Vec<String> = ctr
        .ids("containers")
        .into_iter()
        .map(|id| format!("container {id}"))
        .collect();
    found.extend(
        ctr.tasks()
            .into_iter()
            .map(|(id, _, _)| format!("task {id}")),
    );
    found.extend(
        ctr.active_snapshots()
            .into_iter()
            .map(|k| format!("snapshot {k}")),
    );
    found.extend(
        ctr.ids("leases")
            .into_iter()
            .map(|id| format!("lease {id}")),
    );
    found
}

/// The file names in `dir` (none if it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The instances holding an address in `<state_dir>/ipam.json`.
fn ipam_leases(state_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("ipam.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["leases"].as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}
