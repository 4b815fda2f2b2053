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
//! Addresses are handed out round-robin from the one after the last
//! allocation (as CNI's `host-local` does), so that a freed address is not
//! reused at once while neighbours may still cache its old MAC address.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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

/// The leases of one pod CIDR.
#[derive(Debug)]
pub(crate) struct Ipam {
    path: PathBuf,
    cidr: Ipv4Cidr,
    file: IpamFile,
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

    /// The lease of `id`: the existing one, or a new one written to disk
    /// before it is returned. The boolean tells whether it is new.
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
        let before = self.file.clone();
        self.file.leases.insert(id.to_string(), ip);
        self.file.last = Some(ip);
        if let Err(e) = self.save() {
            self.file = before;
            return Err(e);
        }
        Ok((ip, true))
    }

    /// Frees the lease of `id`; `false` if it had none.
    pub(crate) fn release(&mut self, id: &str) -> Result<bool> {
        let Some(ip) = self.file.leases.remove(id) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.file.leases.insert(id.to_string(), ip);
            return Err(e);
        }
        Ok(true)
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

    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.file).expect("IPAM state serializes");
        crate::fsutil::write_atomic(&self.path, &json).map_err(|source| NetworkError::Io {
            what: "writing the IPAM state".into(),
            path: self.path.clone(),
            source,
        })
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

    #[test]
    fn leases_persist_rotate_and_exhaust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let c = cidr("10.9.0.0/29"); // .2 ..= .6: five pods
        let mut ipam = Ipam::load(&path, c).unwrap();
        let (a, new) = ipam.allocate("a").unwrap();
        assert!(new);
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(ipam.allocate("a").unwrap(), (a, false));
        let (b, _) = ipam.allocate("b").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        assert!(ipam.release("a").unwrap());
        assert!(!ipam.release("a").unwrap());
        // The freed .2 is not reused at once.
        let (c3, _) = ipam.allocate("c").unwrap();
        assert_eq!(c3, Ipv4Addr::new(10, 9, 0, 4));

        // A new instance on the same file sees the same leases.
        let mut again = Ipam::load(&path, c).unwrap();
        assert_eq!(again.get("b"), Some(b));
        assert_eq!(again.get("c"), Some(c3));
        for id in ["d", "e", "f"] {
            again.allocate(id).unwrap();
        }
        let all: HashSet<_> = again.ids().iter().map(|i| again.get(i).unwrap()).collect();
        assert_eq!(all.len(), 5, "addresses are unique");
        let err = again.allocate("g").unwrap_err();
        assert!(
            matches!(err, NetworkError::CidrExhausted { leases: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.9.0.0/29"), "{err}");
        assert_eq!(again.get("g"), None);
    }

    #[test]
    fn a_changed_cidr_with_leases_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.json");
        let mut ipam = Ipam::load(&path, cidr("10.9.0.0/24")).unwrap();
        ipam.allocate("a").unwrap();
        let err = Ipam::load(&path, cidr("10.10.0.0/24")).unwrap_err();
        assert!(matches!(err, NetworkError::CidrChanged { .. }), "{err}");
        ipam.release("a").unwrap();
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
