//! The riklet's connection to containerd, made in the background.
//!
//! containerd is not needed to start: bare-process pods run without it. A
//! task tries to connect at start-up and, while nothing answers on the
//! socket, again with back-off (1 s doubling to 30 s), logging why each
//! time. Once containerd answers, [`ContainerdLink::get`] hands out the
//! [`Connected`] clients and [`ContainerdLink::changed`] wakes whoever
//! waits (the agent then reconciles its records with containerd's
//! containers). The gRPC channel re-establishes itself when containerd
//! restarts: calls made while it is down fail with `Unavailable`, later
//! ones succeed again, so the link connects only once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::containerd::ContainerdRuntime;
use super::image::{ImageStore, RegistryConfig};

/// First retry delay after a failed connection.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between two connection attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Connection attempts until one succeeds: containerd may be installed or
/// started at any time after the riklet.
const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(RETRY_FIRST)
    .with_max_delay(RETRY_MAX)
    .without_max_times();

/// The clients of a reachable containerd.
#[derive(Debug, Clone)]
pub struct Connected {
    pub runtime: ContainerdRuntime,
    pub images: ImageStore,
}

/// Shared handle on the (maybe not yet made) containerd connection.
#[derive(Debug, Clone)]
pub struct ContainerdLink {
    socket: PathBuf,
    rx: watch::Receiver<Option<Connected>>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl ContainerdLink {
    /// Starts connecting to `socket` in the background, in `namespace`;
    /// gives up when `stop` fires.
    pub fn spawn(
        socket: &Path,
        namespace: &str,
        registry: RegistryConfig,
        mut stop: broadcast::Receiver<()>,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let link = ContainerdLink {
            socket: socket.to_path_buf(),
            rx,
            last_error: Arc::default(),
        };
        let (socket, namespace, last_error) = (
            socket.to_path_buf(),
            namespace.to_string(),
            link.last_error.clone(),
        );
        tokio::spawn(async move {
            let attempt = AtomicU32::new(0);
            let connecting = (|| async {
                attempt.fetch_add(1, Ordering::Relaxed);
                connect(&socket, &namespace, &registry).await
            })
            .retry(RETRY)
            .notify(|why: &String, pause: Duration| {
                warn!(
                    error = %why,
                    attempt = attempt.load(Ordering::Relaxed),
                    retry_in = ?pause,
                    "containerd unavailable: image containers wait for it, bare processes run"
                );
                *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
            });
            let connected = tokio::select! {
                _ = stop.recv() => return,
                Ok(c) = connecting => c,
            };
            info!(socket = %socket.display(), namespace = %namespace, attempt = attempt.load(Ordering::Relaxed), "connected to containerd");
            *last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let _ = tx.send(Some(connected));
        });
        link
    }

    /// The clients, once containerd has answered.
    pub fn get(&self) -> Option<Connected> {
        self.rx.borrow().clone()
    }

    /// Waits until containerd has answered.
    pub async fn connected(&self) -> Connected {
        let mut rx = self.rx.clone();
        loop {
            if let Some(c) = rx.borrow_and_update().clone() {
                return c;
            }
            if rx.changed().await.is_err() {
                // The connecting task gave up (shutdown): wait forever,
                // the runtime is going away.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A receiver that changes once, when the connection is made.
    pub fn changed(&self) -> watch::Receiver<Option<Connected>> {
        self.rx.clone()
    }

    /// Why containerd cannot be used right now, for pod reasons.
    pub fn why_unavailable(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| {
                format!(
                    "not connected to containerd at {} yet",
                    self.socket.display()
                )
            })
    }
}

/// One connection attempt; the error (its whole chain) is what pods
/// waiting for containerd are told.
async fn connect(
    socket: &Path,
    namespace: &str,
    registry: &RegistryConfig,
) -> Result<Connected, String> {
    let runtime = ContainerdRuntime::connect(socket, namespace)
        .await
        .map_err(|e| crate::error_chain(&e))?;
    // Nothing of this riklet's uses containerd yet: what leases there are,
    // a killed riklet left.
    runtime
        .remove_stale_leases()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let images = ImageStore::new(runtime.channel(), namespace, registry.clone())
        .map_err(|e| crate::error_chain(&e))?;
    Ok(Connected { runtime, images })
}
