//! The errors of the containerd runtime: each says what was being done
//! (and to which container); the cause, when there is one, is its source.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;

use super::facts::SNAPSHOTTER;
use super::tasks::KILL_TIMEOUT;
use crate::runtime::spec::SpecError;

/// A containerd operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// containerd's socket cannot be reached; the caller retries.
    #[error(
        "cannot reach containerd at {socket} (is containerd running? \
         `systemctl start containerd`, or `cargo xtask setup` on a development machine)"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: ConnectFailure,
    },
    /// The namespace is not a containerd identifier.
    #[error("containerd namespace {0:?}: {1}")]
    Namespace(String, &'static str),
    /// The instance id or the container name breaks the manifest's rules.
    #[error("invalid container id")]
    Id(#[source] proto::manifest::ManifestError),
    /// `<instance>_<container>` is not a containerd identifier (DNS labels
    /// allow `--`, containerd does not; it is also shorter).
    #[error("container id {id:?}: {reason}")]
    IdRejected { id: String, reason: &'static str },
    /// containerd refused a call.
    #[error("containerd {op} {id}")]
    Rpc {
        op: &'static str,
        id: String,
        #[source]
        status: Box<tonic::Status>,
    },
    /// A container with this id exists already: remove it first.
    #[error("container {0} already exists in containerd")]
    AlreadyExists(String),
    /// No such container or task.
    #[error("container {0} not found in containerd")]
    NotFound(String),
    /// The image's snapshot (the parent) does not exist.
    #[error(
        "container {id}: image snapshot {parent} not found in containerd's {SNAPSHOTTER} snapshotter (is the image pulled and unpacked?)"
    )]
    ParentNotFound { id: String, parent: String },
    /// The OCI spec cannot be built.
    #[error("container {id}: cannot build its OCI runtime spec")]
    Spec {
        id: String,
        #[source]
        source: SpecError,
    },
    /// The container's CRI log file cannot be created.
    #[error("cannot create the log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The task did not end after SIGKILL.
    #[error("container {0} did not stop within {KILL_TIMEOUT:?} of SIGKILL")]
    StopTimeout(String),
}

/// Why containerd's socket does not answer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// Nothing at the socket's path (or it cannot be looked at).
    #[error("no socket")]
    NoSocket(#[source] io::Error),
    /// The connection was not made in time.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The connection was refused or broke.
    #[error("cannot connect")]
    Transport(#[source] tonic::transport::Error),
    /// The connection was made, the version call failed.
    #[error("containerd did not answer its version call")]
    Version(#[source] Box<tonic::Status>),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ContainerdError>;

impl ContainerdError {
    /// A refused call; `AlreadyExists` means the container's id is taken.
    pub(super) fn rpc(op: &'static str, id: &str, status: tonic::Status) -> Self {
        match status.code() {
            Code::AlreadyExists => ContainerdError::AlreadyExists(id.to_string()),
            _ => ContainerdError::Rpc {
                op,
                id: id.to_string(),
                status: Box::new(status),
            },
        }
    }

    /// A refused call about an existing container or task, where
    /// `NotFound` means that it does not exist (or its process ended).
    pub(super) fn lookup(op: &'static str, id: &str, status: tonic::Status) -> Self {
        match status.code() {
            Code::NotFound => ContainerdError::NotFound(id.to_string()),
            _ => Self::rpc(op, id, status),
        }
    }

    /// Whether the error says that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::NotFound(_))
    }

    /// Whether the error says that containerd cannot be reached (down or
    /// restarting), as opposed to refusing the call.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ContainerdError::Connect { .. } => true,
            ContainerdError::Rpc { status, .. } => status.code() == Code::Unavailable,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_do_not_repeat_their_source() {
        let e = ContainerdError::rpc(
            "create task",
            "web-x1_nginx",
            tonic::Status::unknown("exec: \"/bin/nope\": no such file"),
        );
        assert_eq!(e.to_string(), "containerd create task web-x1_nginx");
        let chain = crate::error_chain(&e);
        assert!(chain.contains("/bin/nope"), "{chain}");
        assert!(!e.is_unavailable());
        assert!(
            ContainerdError::rpc("x", "y", tonic::Status::unavailable("down")).is_unavailable()
        );
        assert!(ContainerdError::lookup("x", "y", tonic::Status::not_found("")).is_not_found());
        assert!(matches!(
            ContainerdError::rpc("x", "y", tonic::Status::already_exists("")),
            ContainerdError::AlreadyExists(_)
        ));
    }
}
