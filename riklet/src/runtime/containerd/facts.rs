//! What the riklet and containerd agree on, each in one place: where
//! containerd listens, the namespace and snapshotter of the riklet's images
//! and containers, the runtime and spec type of its containers, how long a
//! lease outlives a riklet that died holding it, and which names containerd
//! accepts. The image store, the container runtime and the configuration
//! all read them here.

use std::collections::HashMap;

/// containerd's socket on a standard install.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd namespace of the riklet's images and containers.
pub const DEFAULT_NAMESPACE: &str = "rik";
/// Snapshotter that images are unpacked into and container root
/// filesystems prepared in (containerd's default on Linux).
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime (shim) containers run under.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// `type_url` containerd expects for an OCI runtime spec.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Longest containerd identifier (containerd `identifiers.Validate`).
pub const MAX_ID_LEN: usize = 76;
/// How long a lease of the riklet's (a pull's, a container start's) keeps
/// what it protects from containerd's garbage collector after a riklet
/// died holding it: longer than the slowest pull, short enough that what a
/// crash left behind goes away by itself.
pub const LEASE_EXPIRY: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The label that marks a lease as the riklet's: a riklet that connects
/// to containerd removes the ones a dead riklet left (see
/// [`crate::runtime::containerd::ContainerdRuntime::remove_stale_leases`]).
pub const LEASE_OWNER_LABEL: &str = "riklet.lease";

/// The labels of a new lease of the riklet's that expires [`LEASE_EXPIRY`]
/// from now (containerd's `containerd.io/gc.expire`).
pub fn expiring_lease_labels() -> HashMap<String, String> {
    let expire =
        (chrono::Utc::now() + LEASE_EXPIRY).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    HashMap::from([
        ("containerd.io/gc.expire".to_string(), expire),
        (LEASE_OWNER_LABEL.to_string(), "true".to_string()),
    ])
}

/// Checks a containerd identifier (a namespace, a container id):
/// `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most [`MAX_ID_LEN`] characters;
/// says why it is refused.
pub fn check_identifier(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("longer than 76 characters");
    }
    let sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = id.as_bytes();
    if !bytes.iter().all(|&b| b.is_ascii_alphanumeric() || sep(b)) {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    if sep(bytes[0])
        || sep(bytes[bytes.len() - 1])
        || bytes.windows(2).any(|w| sep(w[0]) && sep(w[1]))
    {
        return Err("must start and end with a letter or digit, without two separators in a row");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_containerd_rules() {
        assert!(check_identifier("rik").is_ok());
        assert!(check_identifier("rik-test.1_a").is_ok());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("a..b").is_err());
        assert!(check_identifier("-a").is_err());
        assert!(check_identifier("a b").is_err());
        assert!(check_identifier(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_identifier(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn leases_expire_in_an_hour() {
        let labels = expiring_lease_labels();
        let expire = chrono::DateTime::parse_from_rfc3339(&labels["containerd.io/gc.expire"])
            .unwrap()
            .with_timezone(&chrono::Utc);
        let left = expire - chrono::Utc::now();
        assert!(
            left > LEASE_EXPIRY - chrono::TimeDelta::seconds(5),
            "{left}"
        );
        assert!(left <= LEASE_EXPIRY, "{left}");
    }
}
