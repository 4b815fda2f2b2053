//! IP address management: leases of the pod CIDR, kept on disk.
//!
//! `<state-dir>/ipam.json` holds the CIDR, the lease of every attached
//! instance and the last address handed out. It is replaced atomically
//! ([`crate::fsutil::write_atomic`]) before the caller touches the kernel, so
//! a riklet killed at any instant comes back knowing every address in use:
//! no address is ever given to two instances, and every network namespace
//! or veth the riklet created is covered by a lease that
//! [`super::PodNetwork::reconcile`] can find.
//!
//! Pods are attached in parallel: a lease is taken in memory under a short
//! lock ([`Ipam`]), then [`SharedIpam`] writes the file. One write covers
//! every lease taken before it began, so a burst of attaches waits for a
//! few writes (each two fsyncs) instead of one each (group commit).
//!
//! Addresses are handed out round-robin from the one after the last
//! allocation (as CNI's `host-local` does), so that a freed address is not
//! reused at once while neighbours may still cache its old MAC address.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::{IpamFault, NetworkError, Result};

/// An IPv4 network: address and prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// Shortest prefix accepted for a pod network.
    pub const MIN_PREFIX: u8 = 8;
    /// Longest prefix accepted: a /30 holds the gateway and one pod.
    pub const MAX_PREFIX: u8 = 30;

    /// Parses `a.b.c.d/n`; the reason of a refusal is returned as text.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix_len) {
            return Err(format!(
                "prefix length /{prefix_len} out of range /{}../{}",
                Self::MIN_PREFIX,
                Self::MAX_PREFIX
            ));
        }
        let cidr = Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)),
            prefix_len,
        };
        if cidr.network != addr {
            return Err(format!("{s} has host bits set (did you mean {cidr}?)"));
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The first host address, given to the bridge and used as the pods'
    /// default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// First and last address a pod may get (gateway, network and
    /// broadcast excluded).
    fn pod_range(&self) -> (u32, u32) {
        let net = u32::from(self.network);
        (net + 2, (net | !mask(self.prefix_len)) - 1)
    }

    /// How many pods fit.
    pub fn capacity(&self) -> u32 {
        let (first, last) = self.pod_range();
        last - first + 1
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// What `ipam.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IpamFile {
    /// The CIDR the leases belong to.
    cidr: String,
    /// The last address handed out; the next search starts after it.
    last: Option<Ipv4Addr>,
    /// Instance id → address.
    leases: BTreeMap<String, Ipv4Addr>,
}

/// The leases of one pod CIDR, in memory.
#[derive(Debug)]
pub(crate) struct Ipam {
    path: PathBuf,
    cidr: Ipv4Cidr,
    file: IpamFile,
    /// Bumped by every change, to tell which changes a write covered.
    version: u64,
}

impl Ipam {
    /// Loads `path`, or starts empty if it does not exist. Leases of
    /// another CIDR are refused rather than dropped: dropping them would
    /// hand out addresses that running pods still use.
    pub(crate) fn load(path: &Path, cidr: Ipv4Cidr) -> Result<Self> {
        let mut file = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<IpamFile>(&bytes).map_err(|source| {
                NetworkError::IpamCorrupt {
                    path: path.to_path_buf(),
                    source: source.into(),
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IpamFile::default(),
            Err(source) => {
                return Err(NetworkError::Io {
                    what: "reading the IPAM state".into(),
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut seen = HashSet::new();
        for (id, ip) in &file.leases {
            if proto::manifest::validate_instance_id(id).is_err() || !seen.insert(*ip) {
                return Err(NetworkError::IpamCorrupt {
                    path: path.to_path_buf(),
                    source: IpamFault::BadLease {
                        id: id.clone(),
                        ip: *ip,
                    },
                });
            }
        }
        if file.cidr != cidr.to_string() {
            if !file.leases.is_empty() {
                return Err(NetworkError::CidrChanged {
                    path: path.to_path_buf(),
                    leased: file.cidr,
                    configured: cidr.to_string(),
                    leases: file.leases.len(),
                });
            }
            file = IpamFile {
                cidr: cidr.to_string(),
                ..IpamFile::default()
            };
        }
        Ok(Ipam {
            path: path.to_path_buf(),
            cidr,
            file,
            version: 0,
        })
    }

    /// The lease of `id`, if any.
    pub(crate) fn get(&self, id: &str) -> Option<Ipv4Addr> {
        self.file.leases.get(id).copied()
    }

    /// Every instance holding a lease.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.file.leases.keys().cloned().collect()
    }

    /// The lease of `id`: the existing one, or a new one (in memory only:
    /// see [`SharedIpam::allocate`]). The boolean tells whether it is new.
    pub(crate) fn allocate(&mut self, id: &str) -> Result<(Ipv4Addr, bool)> {
        if let Some(ip) = self.get(id) {
            return Ok((ip, false));
        }
        let used: HashSet<u32> = self.file.leases.values().map(|ip| u32::from(*ip)).collect();
        let (first, last) = self.cidr.pod_range();
        let start = match self.file.last.map(u32::from) {
            Some(l) if (first..last).contains(&l) => l + 1,
            _ => first,
        };
        let ip = (start..=last)
            .chain(first..start)
            .find(|candidate| !used.contains(candidate))
            .map(Ipv4Addr::from)
            .ok_or_else(|| NetworkError::CidrExhausted {
                cidr: self.cidr.to_string(),
                leases: self.file.leases.len(),
            })?;
        self.file.leases.insert(id.to_string(), ip);
        self.file.last = Some(ip);
        self.version += 1;
        Ok((ip, true))
    }

    /// Frees the lease of `id` (in memory only); its address, if it had one.
    pub(crate) fn release(&mut self, id: &str) -> Option<Ipv4Addr> {
        let ip = self.file.leases.remove(id)?;
        self.version += 1;
        Some(ip)
    }

    /// Puts back a lease whose release could not be written.
    fn restore(&mut self, id: &str, ip: Ipv4Addr) {
        self.file.leases.insert(id.to_string(), ip);
        self.version += 1;
    }

    /// Drops a new lease that could not be written (the round-robin
    /// position stays where it is: harmless).
    fn forget(&mut self, id: &str, ip: Ipv4Addr) {
        if self.file.leases.get(id) == Some(&ip) {
            self.file.leases.remove(id);
            self.version += 1;
        }
    }

    /// Deletes the state file (uninstall).
    pub(crate) fn remove_file(&mut self) -> Result<()> {
        self.file.leases.clear();
        self.file.last = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetworkError::Io {
                what: "removing the IPAM state".into(),
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The file's content now.
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.file).expect("IPAM state serializes")
    }
}

/// The leases shared by the pod network's concurrent operations: changed
/// in memory under a short lock, written to disk in groups.
#[derive(Debug)]
pub(crate) struct SharedIpam {
    leases: Mutex<Ipam>,
    /// Held while `ipam.json` is written; the version the last write made
    /// durable.
    saved: tokio::sync::Mutex<u64>,
}

impl SharedIpam {
    pub(crate) fn new(ipam: Ipam) -> Self {
        let saved = ipam.version;
        SharedIpam {
            leases: Mutex::new(ipam),
            saved: tokio::sync::Mutex::new(saved),
        }
    }

    /// The leases in memory (for reading, or for the uninstall).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ipam> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease of `id`, on disk when this returns; `true` if it is new.
    /// The caller holds `id`'s instance lock.
    pub(crate) async fn allocate(&self, id: &str) -> Result<(Ipv4Addr, bool)> {
        let (ip, new) = self.lock().allocate(id)?;
        if let Err(e) = self.persist().await {
            if new {
                self.lock().forget(id, ip);
            }
            return Err(e);
        }
        Ok((ip, new))
    }

    /// Frees the lease of `id`, on disk when this returns; `false` if it
    /// had none. The caller holds `id`'s instance lock.
    pub(crate) async fn release(&self, id: &str) -> Result<bool> {
        let Some(ip) = self.lock().release(id) else {
            return Ok(false);
        };
        if let Err(e) = self.persist().await {
            self.lock().restore(id, ip);
            return Err(e);
        }
        Ok(true)
    }

    /// Makes every change made so far durable. Writers queue on `saved`;
    /// one write takes whatever the memory holds when it begins, so those
    /// queued behind it usually find their change written already.
    async fn persist(&self) -> Result<()> {
        let wanted = self.lock().version;
        let mut saved = self.saved.lock().await;
        if *saved >= wanted {
            return Ok(());
        }
        let (version, json, path) = {
            let ipam = self.lock();
            (ipam.version, ipam.encode(), ipam.path.clone())
        };
        let at = path.clone();
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&at, &json))
            .await
            .map_err(|_| NetworkError::ThreadPanicked {
                what: "writing the IPAM state",
            })?
            .map_err(|source| NetworkError::Io {
                what: "writing the IPAM state".into(),
                path,
                source,
            })?;
        *saved = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        Ipv4Cidr::parse(s).unwrap()
    }

    #[test]
    fn cidr_parsing_and_ranges() {
        let c = cidr("10.88.0.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.capacity(), 253);
        assert!(c.contains(Ipv4Addr::new(10, 88, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(c.to_string(), "10.88.0.0/24");
        assert_eq!(cidr("10.0.0.0/8").capacity(), (1 << 24) - 3);
        assert_eq!(cidr("10.1.2.4/30").capacity(), 1);
        let err = Ipv4Cidr::parse("10.88.0.5/24").unwrap_err();
        assert!(err.contains("10.88.0.0/24"), "{err}");
        for bad in [
            "10.88.0.0",
            "10.88.0.0/31",
            "10.88.0.0/7",
            "x/24",
            "10.88.0.0/x",
        ] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn leases_persist_rotate_and_exhaust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let c = cidr("10.9.0.0/29"); // .2 ..= .6: five pods
        let ipam = SharedIpam::new(Ipam::load(&path, c).unwrap());
        let (a, new) = ipam.allocate("a").await.unwrap();
        assert!(new);
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(ipam.allocate("a").await.unwrap(), (a, false));
        let (b, _) = ipam.allocate("b").await.unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert!(ipam.release("a").await.unwrap());
        assert!(!ipam.release("a").await.unwrap());
        // The freed .2 is not reused at once.
        let (c3, _) = ipam.allocate("c").await.unwrap();
        assert_eq!(c3, Ipv4Addr::new(10, 9, 0, 4));

        // A new instance on the same file sees the same leases.
        let again = SharedIpam::new(Ipam::load(&path, c).unwrap());
        assert_eq!(again.lock().get("b"), Some(b));
        assert_eq!(again.lock().get("c"), Some(c3));
        assert_eq!(again.lock().get("a"), None);
        for id in ["d", "e", "f"] {
            again.allocate(id).await.unwrap();
        }
        let all: HashSet<_> = {
            let leases = again.lock();
            leases
                .ids()
                .iter()
                .map(|i| leases.get(i).unwrap())
                .collect()
        };
        assert_eq!(all.len(), 5, "addresses are unique");
        let err = again.allocate("g").await.unwrap_err();
        assert!(
            matches!(err, NetworkError::CidrExhausted { leases: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.9.0.0/29"), "{err}");
        assert_eq!(again.lock().get("g"), None);
    }

    #[tokio::test]
    async fn concurrent_leases_are_all_written_and_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let c = cidr("10.9.0.0/24");
        let ipam = std::sync::Arc::new(SharedIpam::new(Ipam::load(&path, c).unwrap()));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let ipam = ipam.clone();
                tokio::spawn(async move { ipam.allocate(&format!("pod-{i}")).await.unwrap() })
            })
            .collect();
        let mut ips = HashSet::new();
        for t in tasks {
            let (ip, new) = t.await.unwrap();
            assert!(new);
            ips.insert(ip);
        }
        assert_eq!(ips.len(), 50, "no address given twice");
        // Every lease reached the disk before its allocate returned.
        let loaded = Ipam::load(&path, c).unwrap();
        assert_eq!(loaded.ids().len(), 50);
        for i in 0..50 {
            let id = format!("pod-{i}");
            assert_eq!(loaded.get(&id), ipam.lock().get(&id), "{id}");
        }
    }

    #[tokio::test]
    async fn a_lease_that_cannot_be_written_is_not_given() {
        let dir = tempfile::tempdir().unwrap();
        // The state file's directory is gone: the write fails.
        let path = dir.path().join("gone").join("ipam.json");
        let ipam = SharedIpam::new(Ipam::load(&path, cidr("10.9.0.0/24")).unwrap());
        let err = ipam.allocate("a").await.unwrap_err();
        assert!(matches!(err, NetworkError::Io { .. }), "{err}");
        assert_eq!(ipam.lock().get("a"), None);
    }

    #[tokio::test]
    async fn a_changed_cidr_with_leases_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let ipam = SharedIpam::new(Ipam::load(&path, cidr("10.9.0.0/24")).unwrap());
        ipam.allocate("a").await.unwrap();
        let err = Ipam::load(&path, cidr("10.10.0.0/24")).unwrap_err();
        assert!(matches!(err, NetworkError::CidrChanged { .. }), "{err}");
        ipam.release("a").await.unwrap();
        let moved = Ipam::load(&path, cidr("10.10.0.0/24")).unwrap();
        assert_eq!(moved.ids().len(), 0);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        std::fs::write(&path, b"{").unwrap();
        let err = Ipam::load(&path, cidr("10.9.0.0/24")).unwrap_err();
        assert!(matches!(err, NetworkError::IpamCorrupt { .. }), "{err}");
        std::fs::write(
            &path,
            br#"{"cidr":"10.9.0.0/24","last":null,"leases":{"../x":"10.9.0.2"}}"#,
        )
        .unwrap();
        let err = Ipam::load(&path, cidr("10.9.0.0/24")).unwrap_err();
        assert!(matches!(err, NetworkError::IpamCorrupt { .. }), "{err}");
    }
}
