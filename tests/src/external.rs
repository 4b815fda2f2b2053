//! An "external host": a network namespace wired to the node by a veth
//! pair, so that traffic enters the node from outside as it would from
//! another machine, without leaving this one.
//!
//! ```text
//!  node (host netns)                       external host (netns rkx<n>)
//!  rkxh<n> 10.215.<n>.1/30 ◀──── veth ────▶ eth0 10.215.<n>.2/30
//!                                           default via 10.215.<n>.1
//! ```

use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};

/// The namespace and its veth; removed on drop.
pub struct ExternalHost {
    pub netns: String,
    host_link: String,
    /// The node's address on the veth (what the external host dials).
    pub node_ip: Ipv4Addr,
    /// The external host's own address.
    pub ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ExternalHost {
    /// Creates the external host of slot `n` (a [`crate::NetSlot`]
    /// number, which keeps names and addresses unique), replacing what a
    /// crashed test left.
    pub fn create(n: u8) -> ExternalHost {
        let host = ExternalHost {
            netns: format!("rkx{n}"),
            host_link: format!("rkxh{n}"),
            node_ip: Ipv4Addr::new(10, 215, n, 1),
            ip: Ipv4Addr::new(10, 215, n, 2),
        };
        host.remove();
        let (ns, link) = (host.netns.as_str(), host.host_link.as_str());
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["addr", "add", &format!("{}/30", host.node_ip), "dev", link]);
        ip(&["link", "set", link, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", host.ip),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &host.node_ip.to_string(),
        ]);
        host
    }

    /// Runs `f` on a thread that has entered the external host's network
    /// namespace: every socket `f` opens is the external host's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("opening the external netns");
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("entering the external netns");
                f()
            })
            .join()
            .expect("external host thread")
        })
    }

    fn remove(&self) {
        for args in [
            ["link", "del", self.host_link.as_str()],
            ["netns", "del", self.netns.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for ExternalHost {
    fn drop(&mut self) {
        self.remove();
    }
}
