//! The node registry: which riklets are connected, which are ready, and the
//! channel that feeds each one's `Register` stream.
//!
//! A node is *connected* while its `Register` stream is open and *ready* once
//! it has sent a `RUNNING` worker status on that connection (and keeps
//! sending them within the heartbeat timeout). Only ready nodes get work.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use proto::worker::InstanceScheduling;
use tokio::sync::mpsc;

/// Longest hostname accepted (DNS name limit).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The hostname is not a DNS-1123 subdomain.
    #[error(
        "hostname {0:?} is invalid: expected 1-{MAX_HOSTNAME_LEN} characters of [a-z0-9.-], \
         dot-separated labels of at most 63 characters that start and end with a letter or digit"
    )]
    InvalidHostname(String),
    /// A riklet with this hostname is connected and alive.
    #[error("a node named {0:?} is already connected")]
    AlreadyConnected(String),
    /// The scheduler is shutting down.
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

/// Checks that `hostname` is a DNS-1123 subdomain (`[a-z0-9.-]`, ≤ 253).
pub fn validate_hostname(hostname: &str) -> Result<(), RegisterError> {
    proto::manifest::validate_node_name("hostname", hostname)
        .map_err(|_| RegisterError::InvalidHostname(hostname.to_string()))
}

/// Sending half of a node's `Register` stream.
pub type Sender = mpsc::UnboundedSender<InstanceScheduling>;
/// Receiving half, wrapped by the `Register` response stream.
pub type Receiver = mpsc::UnboundedReceiver<InstanceScheduling>;

/// One node (riklet) as the scheduler knows it.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// Changes at every registration: a stale disconnect notice from an
    /// older connection must not disconnect the new one.
    pub session: u64,
    /// Its `Register` stream is open.
    pub connected: bool,
    /// Connected, reported `RUNNING` and not timed out: gets work.
    pub ready: bool,
    /// Wall clock of the last message (for display).
    pub last_seen: SystemTime,
    /// Monotonic clock of the last message (for the heartbeat timeout).
    pub last_seen_at: Instant,
    /// Last `WorkerMetric.metrics` JSON.
    pub metrics: String,
    /// `host:port` of the riklet's node API (logs); empty if unknown.
    pub host_address: String,
    /// Instances not assigned to this node that it was told to destroy on
    /// this connection, until it reports them TERMINATED (see
    /// `State::instance_status`).
    pub destroys_sent: BTreeSet<String>,
    /// It registered with its certificate: its node API speaks TLS.
    pub api_tls: bool,
    sender: Option<Sender>,
}

/// All nodes seen since the scheduler started.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: BTreeMap<String, Node>,
    next_session: u64,
}

impl Nodes {
    /// Registers `hostname` and returns its session id and the receiver that
    /// feeds its `Register` stream. A node still connected is refused unless
    /// it has been silent for longer than `stale_after` (a half-dead
    /// connection must not lock the hostname out).
    pub fn register(
        &mut self,
        hostname: &str,
        stale_after: Duration,
    ) -> Result<(u64, Receiver), RegisterError> {
        validate_hostname(hostname)?;
        let now = Instant::now();
        if let Some(node) = self.nodes.get(hostname)
            && node.connected
            && now.duration_since(node.last_seen_at) <= stale_after
        {
            return Err(RegisterError::AlreadyConnected(hostname.to_string()));
        }
        self.next_session += 1;
        let session = self.next_session;
        let (tx, rx) = mpsc::unbounded_channel();
        let node = self
            .nodes
            .entry(hostname.to_string())
            .or_insert_with(|| Node {
                name: hostname.to_string(),
                session,
                connected: false,
                ready: false,
                last_seen: SystemTime::now(),
                last_seen_at: now,
                metrics: String::new(),
                host_address: String::new(),
                destroys_sent: BTreeSet::new(),
                api_tls: false,
                sender: None,
            });
        node.session = session;
        // A new connection reports its pods anew.
        node.destroys_sent.clear();
        node.connected = true;
        node.ready = false;
        node.last_seen = SystemTime::now();
        node.last_seen_at = now;
        // Replacing the sender of a stale connection ends its stream.
        node.sender = Some(tx);
        Ok((session, rx))
    }

    /// Marks the node of `session` disconnected and not ready. Returns
    /// whether anything changed (false for an older session's notice).
    pub fn disconnect(&mut self, name: &str, session: u64) -> bool {
        match self.nodes.get_mut(name) {
            Some(node) if node.session == session && node.connected => {
                node.connected = false;
                node.ready = false;
                node.sender = None;
                true
            }
            _ => false,
        }
    }

    /// Drops every sender, which ends every `Register` stream (shutdown).
    pub fn disconnect_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.connected = false;
            node.ready = false;
            node.sender = None;
        }
    }

    /// A connected node, for a status update.
    pub fn connected_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.get_mut(name).filter(|n| n.connected)
    }

    /// Whether `name` has an open `Register` stream.
    pub fn is_connected(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.connected)
    }

    /// Queues `msg` on the node's `Register` stream. Returns false when the
    /// node is not connected (the message is dropped: the reconciliation on
    /// reconnect covers it).
    pub fn send(&self, name: &str, msg: InstanceScheduling) -> bool {
        self.nodes
            .get(name)
            .and_then(|n| n.sender.as_ref())
            .is_some_and(|tx| tx.send(msg).is_ok())
    }

    /// Names of the ready nodes, in name order.
    pub fn ready_names(&self) -> Vec<&str> {
        self.nodes
            .values()
            .filter(|n| n.ready)
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Marks not ready every ready node silent for longer than `timeout`,
    /// returning their names.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        self.nodes
            .values_mut()
            .filter(|n| n.ready && now.saturating_duration_since(n.last_seen_at) > timeout)
            .map(|n| {
                n.ready = false;
                n.name.clone()
            })
            .collect()
    }

    /// Every node, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// One node by name.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.get_mut(name)
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(20);

    #[test]
    fn hostnames() {
        for ok in [
            "node-1",
            "a",
            "n1.example.com",
            &"a".repeat(63),
            &["a"; 127].join("."),
        ] {
            validate_hostname(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "Node",
            "node_1",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a b",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn register_refuses_connected_and_accepts_after_disconnect() {
        let mut nodes = Nodes::default();
        let (s1, _rx1) = nodes.register("n1", STALE).unwrap();
        assert_eq!(
            nodes.register("n1", STALE).unwrap_err(),
            RegisterError::AlreadyConnected("n1".into())
        );
        assert!(nodes.disconnect("n1", s1));
        let (s2, _rx2) = nodes.register("n1", STALE).unwrap();
        // The first connection's late notice changes nothing.
        assert!(!nodes.disconnect("n1", s1));
        assert!(nodes.is_connected("n1"));
        assert!(nodes.disconnect("n1", s2));
    }

    #[test]
    fn stale_connection_can_be_taken_over() {
        let mut nodes = Nodes::default();
        let (_, mut rx1) = nodes.register("n1", STALE).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (_, _rx2) = nodes.register("n1", Duration::ZERO).unwrap();
        // The old stream ends.
        assert!(rx1.try_recv().is_err());
        assert!(rx1.is_closed());
    }

    #[test]
    fn expire_marks_silent_ready_nodes() {
        let mut nodes = Nodes::default();
        let _r1 = nodes.register("n1", STALE).unwrap();
        let _r2 = nodes.register("n2", STALE).unwrap();
        nodes.connected_mut("n1").unwrap().ready = true;
        let later = Instant::now() + Duration::from_secs(30);
        assert!(nodes.expire(Instant::now(), STALE).is_empty());
        assert_eq!(nodes.expire(later, STALE), ["n1"]);
        assert!(nodes.ready_names().is_empty());
    }
}
