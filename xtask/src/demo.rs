//! `cargo xtask demo`: the README's main job. Sets the machine up, builds
//! everything and the busybox image (`cargo xtask image`), runs a local
//! registry on 127.0.0.1 and pushes the image to it (`skopeo`), starts a
//! one-node cluster (`riklet --standalone`, the machine's containerd),
//! deploys the example bare-process app and the example container app,
//! lists them, reaches each at its pod IP and port, reads their logs and
//! deletes them; then removes what it created (registry, images, the
//! demo's pod network).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::registry::Registry;

const SCHEDULER: &str = "http://127.0.0.1:4995";
/// The bare-process app and the container app, with their manifests.
const APPS: [(&str, &str); 2] = [
    ("hello-http", "assets/examples/hello-http.yaml"),
    ("hello-container", "assets/examples/hello-container.yaml"),
];
/// Where the container app's manifest expects the registry.
const REGISTRY: &str = "127.0.0.1:5000";
/// The demo's own pod network and containerd namespace, removed at the end.
const BRIDGE: &str = "rikdemo0";
const NFT_TABLE: &str = "riklet_demo";
const NAMESPACE: &str = "rik-demo";

/// Stops the riklet when the demo ends, however it ends.
struct Riklet(Child);

impl Drop for Riklet {
    fn drop(&mut self) {
        let _ = nix_kill(self.0.id(), "TERM");
        let _ = self.0.wait();
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
}

/// The demo's containerd namespace and pod network, removed on drop.
struct Leftovers;

impl Drop for Leftovers {
    fn drop(&mut self) {
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .args(["-n", NAMESPACE])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let out = Command::new("ctr")
            .args(["-n", NAMESPACE, "images", "ls", "-q"])
            .output();
        for image in out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = ctr(&["images", "rm", "--sync", image]);
        }
        let _ = Command::new("ctr")
            .args(["namespaces", "rm", NAMESPACE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", NFT_TABLE])
            .stderr(Stdio::null())
            .status();
    }
}

fn start_registry(archive: &Path) -> anyhow::Result<Registry> {
    if TcpStream::connect(REGISTRY).is_ok() {
        bail!("{REGISTRY} is in use: the demo runs its registry there");
    }
    let registry = Registry::start(tempdir("riklet-demo-registry")?, REGISTRY.to_string())?;
    registry.push(archive, "busybox:1")?;
    Ok(registry)
}

pub fn run(root: &Path) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::ebpf::build()?;
    let target =
        crate::bench::cluster::build_binaries(root, crate::bench::cluster::Build::Release)?;
    let bin = target.join("release");

    step("build the busybox image (cargo xtask image) and push it to a local registry");
    let archive = target.join("images/busybox.tar");
    crate::image::run(&archive, &crate::image::ImageSpec::host("busybox:1"))?;
    let registry = start_registry(&archive)?;
    println!("registry: http://{}/v2/busybox/tags/list", registry.host);
    let _leftovers = Leftovers;

    let state = tempdir("riklet-demo")?;
    let config = state.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "restart_backoff_initial = \"1s\"\nstop_grace_period = \"3s\"\n\
             [network]\nbridge = \"{BRIDGE}\"\npod_cidr = \"10.89.0.0/24\"\nnft_table = \"{NFT_TABLE}\"\n\
             [containerd]\nnamespace = \"{NAMESPACE}\"\n\
             [registries]\ninsecure = [\"{}\"]\n",
            registry.host
        ),
    )?;
    println!("riklet config:\n{}", std::fs::read_to_string(&config)?);

    step("start a one-node cluster: riklet --standalone");
    let log_path = target.join("demo-riklet.log");
    let log = std::fs::File::create(&log_path).context("creating the riklet log")?;
    println!("riklet log: {}", log_path.display());
    let riklet = Riklet(
        Command::new(bin.join("riklet"))
            .arg("--standalone")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(state.join("state"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting riklet")?,
    );
    let rik = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin.join("rik"))
            .arg("--scheduler")
            .arg(SCHEDULER)
            .args(args)
            .current_dir(root)
            .output()
            .context("running rik")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "rik {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(text)
    };
    wait_for(Duration::from_secs(30), "the node to be ready", || {
        rik(&["get", "nodes"])
            .map(|t| t.contains("Ready") && !t.contains("NotReady"))
            .unwrap_or(false)
    })?;
    print!("{}", rik(&["get", "nodes"])?);

    for (_, manifest) in APPS {
        step(&format!("deploy {manifest}"));
        print!(
            "{}",
            rik(&["apply", "-f", manifest, "--wait", "--timeout", "60s"])?
        );
    }

    step("list apps");
    print!("{}", rik(&["get", "apps"])?);
    print!("{}", rik(&["get", "apps", "-o", "wide"])?);
    print!("{}", rik(&["get", "app", APPS[1].0, "-o", "json"])?);
    println!(
        "containerd (ctr -n {NAMESPACE} containers ls):\n{}",
        String::from_utf8_lossy(
            &Command::new("ctr")
                .args(["-n", NAMESPACE, "containers", "ls"])
                .output()?
                .stdout
        )
    );

    let mut node_ports = Vec::new();
    for (app, path) in [(APPS[0].0, "/copyright"), (APPS[1].0, "/")] {
        let json: Value = serde_json::from_str(&rik(&["get", "app", app, "-o", "json"])?)?;
        let ip = json["internalIp"]
            .as_str()
            .with_context(|| format!("{app} has no pod IP: {json}"))?
            .to_string();
        let port = node_port(app, root)?;
        for addr in [
            format!("127.0.0.1:{port}"),
            format!("{}:{port}", node_address()?),
        ] {
            step(&format!(
                "reach {app} through the Node Proxy at {addr} (pod {ip}:8080)"
            ));
            let body = http_get(&addr, path)?;
            println!("{}", body.lines().next().unwrap_or(""));
        }
        node_ports.push(format!("127.0.0.1:{port}"));
    }
    println!(
        "riklet proxy:\n{}",
        String::from_utf8_lossy(
            &Command::new(bin.join("riklet"))
                .args(["--state-dir"])
                .arg(state.join("state"))
                .arg("proxy")
                .output()?
                .stdout
        )
    );

    for (app, _) in APPS {
        step(&format!("read the logs of {app}"));
        wait_for(Duration::from_secs(10), "the request in the logs", || {
            // httpd -vv logs each request's URL.
            rik(&["logs", app])
                .map(|t| t.contains("url:/"))
                .unwrap_or(false)
        })?;
        print!("{}", rik(&["logs", app, "--tail", "5"])?);
    }

    for (app, _) in APPS {
        step(&format!("delete {app}"));
        print!("{}", rik(&["delete", app])?);
    }
    wait_for(Duration::from_secs(30), "the apps to be gone", || {
        node_ports.iter().all(|a| {
            a.parse::<std::net::SocketAddr>().is_ok_and(|sa| {
                TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_err()
            })
        }) && rik(&["get", "apps"])
            .map(|t| APPS.iter().all(|(app, _)| !t.contains(app)))
            .unwrap_or(false)
    })?;
    drop(riklet);
    let _ = std::fs::remove_dir_all(&state);
    step("demo complete");
    Ok(())
}

/// The node port of the example app `app`: the first `port` of its
/// manifest's containers. Read as plain YAML, so that xtask builds before
/// `setup` has installed protoc (the `proto` crate needs it).
fn node_port(app: &str, root: &Path) -> anyhow::Result<u16> {
    let path = root.join(format!("assets/examples/{app}.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    manifest["spec"]["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|c| c["ports"].as_sequence())
        .flatten()
        .filter_map(|p| p["port"].as_u64())
        .find_map(|p| u16::try_from(p).ok())
        .with_context(|| format!("{} exposes no port", path.display()))
}

/// The first global IPv4 address of this node that is not on the demo's
/// pod bridge (`ip -j -4 address show scope global`).
fn node_address() -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-j", "-4", "address", "show", "scope", "global"])
        .output()
        .context("running ip (iproute2)")?;
    let links: Value = serde_json::from_slice(&out.stdout).context("parsing `ip -j address`")?;
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != BRIDGE)
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
        .find_map(|a| a["local"].as_str().map(str::to_string))
        .context("this node has no global IPv4 address to show the proxy on")
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// A minimal HTTP/1.0 GET (to loopback or a pod of this machine only).
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let sa: std::net::SocketAddr = addr.parse().context("a socket address")?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}
