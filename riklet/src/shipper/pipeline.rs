//! One sink's loop: read the next batch of some container (round robin
//! over the containers, so that a chatty one does not starve the others),
//! send it until the sink acknowledges it (retrying with back-off, the
//! batch kept in memory and the CRI files as the buffer behind it), then
//! record the place reached.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::checkpoint::{self, Checkpoint};
use super::config::LogSink;
use super::metrics::{Outcome, ShipperMetrics};
use super::sink::SinkWriter;
use super::tail::{self, Batch, Tail};
use crate::error_chain;

/// Most records in a batch: what a restart may repeat.
pub const MAX_BATCH: usize = 1000;
/// Pause once every container's files were read to their end.
const POLL: Duration = Duration::from_millis(200);
/// First and longest pause between two attempts to deliver a batch.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What every sink's loop shares.
#[derive(Debug, Clone)]
pub struct ShipperSettings {
    /// Root of the pod logs.
    pub log_dir: PathBuf,
    /// Where the checkpoints are (`shipper/` under it).
    pub state_dir: PathBuf,
    /// This node's name, a label of every record.
    pub node: String,
}

/// Ships every pod's logs to `sink` until `stop`.
pub async fn run_sink(
    sink: LogSink,
    settings: Arc<ShipperSettings>,
    metrics: ShipperMetrics,
    mut stop: broadcast::Receiver<()>,
) {
    let name = sink.name();
    let mut tails = Tails::new(&settings, &name);
    let mut writer = SinkWriter::new(sink);
    info!(sink = %name, "log shipper started");
    loop {
        let (back, next) = tokio::task::spawn_blocking(move || {
            let next = tails.next_batch();
            (tails, next)
        })
        .await
        .expect("the shipper's reader does not panic");
        tails = back;
        let Some(batch) = next else {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.recv() => return,
            }
            continue;
        };
        if !deliver(&mut writer, &batch, &metrics, &name, &mut stop).await {
            tails.stopped_with(&batch, &metrics, &name);
            return;
        }
        metrics.add(&name, Outcome::Shipped, batch.records.len() as u64);
        metrics.add(&name, Outcome::Cut, batch.cut);
        tails.shipped(batch);
    }
}

/// Sends `batch` until the sink acknowledges it (`true`) or the riklet
/// stops (`false`).
async fn deliver(
    writer: &mut SinkWriter,
    batch: &Batch,
    metrics: &ShipperMetrics,
    name: &str,
    stop: &mut broadcast::Receiver<()>,
) -> bool {
    let mut delay = BACKOFF_MIN;
    loop {
        let sent = tokio::select! {
            r = writer.send(&batch.labels, &batch.records) => r,
            _ = stop.recv() => return false,
        };
        let Err(e) = sent else {
            return true;
        };
        metrics.add(name, Outcome::Retried, batch.records.len() as u64);
        warn!(
            sink = %name,
            app = %batch.labels.app,
            instance = %batch.labels.instance,
            container = %batch.labels.container,
            records = batch.records.len(),
            retry_in = ?delay,
            error = %error_chain(&e),
            "log records not delivered; retrying (the pod's log files keep them meanwhile)"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.recv() => return false,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// The readers of every container, and the sink's checkpoint.
struct Tails {
    log_dir: PathBuf,
    node: String,
    tails: Vec<Tail>,
    /// Index of the next reader to ask in this round.
    next: usize,
    /// Some reader gave a batch in this round: another round follows at
    /// once.
    produced: bool,
    checkpoint: Checkpoint,
    path: PathBuf,
}

impl Tails {
    fn new(settings: &ShipperSettings, sink: &str) -> Tails {
        let path = checkpoint::path(&settings.state_dir, sink);
        let checkpoint = Checkpoint::load(&path, sink).unwrap_or_else(|e| {
            warn!(sink, error = %error_chain(&e), "log shipper checkpoint unusable: shipping every pod's logs from their oldest file");
            Checkpoint {
                sink: sink.into(),
                positions: Default::default(),
            }
        });
        Tails {
            log_dir: settings.log_dir.clone(),
            node: settings.node.clone(),
            tails: Vec::new(),
            next: 0,
            produced: false,
            checkpoint,
            path,
        }
    }

    /// The next batch of any container, `None` once a whole round found
    /// nothing new.
    fn next_batch(&mut self) -> Option<Batch> {
        loop {
            if self.next == 0 {
                self.scan();
            }
            while let Some(tail) = self.tails.get_mut(self.next) {
                self.next += 1;
                match tail.next_batch(MAX_BATCH) {
                    Ok(Some(batch)) => {
                        self.produced = true;
                        return Some(batch);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(dir = %tail.dir.display(), error = %e, "cannot read pod logs"),
                }
            }
            self.next = 0;
            if !std::mem::take(&mut self.produced) {
                return None;
            }
        }
    }

    /// Starts reading new container directories; forgets those removed
    /// once read to their end.
    fn scan(&mut self) {
        let found = match tail::containers(&self.log_dir, &self.node) {
            Ok(f) => f,
            Err(e) => {
                warn!(dir = %self.log_dir.display(), error = %e, "cannot list pod log directories");
                return;
            }
        };
        let keys: HashSet<&str> = found.iter().map(|(k, _, _)| k.as_str()).collect();
        self.tails.retain(|t| {
            let gone = !keys.contains(t.key.as_str()) && t.idle();
            if gone {
                info!(dir = %t.dir.display(), "pod log directory removed; everything read from it was shipped");
            }
            !gone
        });
        for (key, dir, labels) in &found {
            if !self.tails.iter().any(|t| &t.key == key) {
                let pos = self.checkpoint.positions.get(key).cloned();
                self.tails.push(Tail::new(
                    key.clone(),
                    dir.clone(),
                    Arc::new(labels.clone()),
                    pos,
                ));
            }
        }
        let before = self.checkpoint.positions.len();
        let tails = &self.tails;
        self.checkpoint
            .positions
            .retain(|k, _| tails.iter().any(|t| &t.key == k));
        if self.checkpoint.positions.len() != before {
            self.save();
        }
    }

    /// Records that `batch` was delivered.
    fn shipped(&mut self, batch: Batch) {
        self.checkpoint.positions.insert(batch.key, batch.end);
        self.save();
    }

    /// Counts `batch` as dropped if it cannot be read again after a
    /// restart (its directory is gone).
    fn stopped_with(&self, batch: &Batch, metrics: &ShipperMetrics, sink: &str) {
        if !self.log_dir.join(&batch.key).exists() {
            let n = batch.records.len() as u64;
            metrics.add(sink, Outcome::Dropped, n);
            warn!(sink, dir = %batch.key, records = n, "stopping with log records not delivered whose directory is gone: dropped");
        }
    }

    fn save(&self) {
        if let Err(e) = self.checkpoint.save(&self.path) {
            warn!(error = %error_chain(&e), "cannot save the log shipper checkpoint (a restart repeats more)");
        }
    }
}
