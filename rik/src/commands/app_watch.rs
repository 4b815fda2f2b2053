//! A watch of the scheduler's apps that outlives connections: when the
//! stream ends or breaks (the scheduler stopped, restarted, the client fell
//! behind), it opens it again from the last revision it read, waiting
//! between attempts while the scheduler is away; when the scheduler cannot
//! replay from there (`OUT_OF_RANGE`), it lists again. Its user sees one
//! listing, then changes, and another listing only after such a resync.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{App, WatchEvent};
use tonic::{Code, Status, Streaming};

use super::{Scheduler, status_error};

/// Pause before reconnecting: 100 ms at first, doubling up to 5 s, with
/// jitter so that many clients do not come back all at once.
const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(5))
    .with_jitter()
    .without_max_times();

/// What the watch has to tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Every app (of the watch) at `revision`, by name: the first time, or
    /// again after a resync, `resync` saying why.
    Listed {
        apps: Vec<App>,
        revision: u64,
        resync: Option<String>,
    },
    /// One change (ADDED, MODIFIED or DELETED) after the listing.
    Changed(WatchEvent),
}

/// A resumable watch of one app or of every app.
pub struct AppWatch<'a> {
    scheduler: &'a mut Scheduler,
    name: Option<String>,
    /// Revision to resume from; 0 while a listing is due or under way.
    since: u64,
    stream: Option<Streaming<WatchEvent>>,
    /// The apps of a listing under way.
    listing: Vec<App>,
    /// Why the next listing is a resync (`None` for the first one).
    resync: Option<String>,
    listed: bool,
    pauses: ExponentialBackoff,
    /// The last reason the scheduler could not be reached, until it is.
    unreachable: Option<String>,
}

/// Whether trying again later may work: the scheduler is away, restarting,
/// or dropped this watch for falling behind.
fn retryable(status: &Status) -> bool {
    use std::error::Error as _;
    // A status made from a transport error carries it as its source.
    status.source().is_some()
        || matches!(
            status.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::DeadlineExceeded
        )
}

impl<'a> AppWatch<'a> {
    /// A watch of app `name` (every app if `None`), from its listing.
    pub fn new(scheduler: &'a mut Scheduler, name: Option<&str>) -> Self {
        Self {
            scheduler,
            name: name.map(str::to_string),
            since: 0,
            stream: None,
            listing: Vec::new(),
            resync: None,
            listed: false,
            pauses: RETRY.build(),
            unreachable: None,
        }
    }

    /// Why the scheduler could not be reached, while it cannot.
    pub fn unreachable(&self) -> Option<&str> {
        self.unreachable.as_deref()
    }

    /// The next listing or change. Waits (retrying) as long as the
    /// scheduler is away; fails only on an answer that retrying cannot
    /// change.
    pub async fn next(&mut self) -> anyhow::Result<Update> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match self.scheduler.watch(self.name.as_deref(), self.since).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(status) => self.failed(&status).await?,
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.unreachable = None;
                    self.pauses = RETRY.build();
                    if let Some(update) = self.take(event) {
                        return Ok(update);
                    }
                }
                // The scheduler ended the watch: it is stopping.
                Ok(None) => {
                    let ended = Status::unavailable("the scheduler ended the watch");
                    self.failed(&ended).await?;
                }
                Err(status) => self.failed(&status).await?,
            }
        }
    }

    /// An event read: part of a listing, the end of one, or a change.
    fn take(&mut self, event: WatchEvent) -> Option<Update> {
        let kind = event.r#type();
        if self.since != 0 {
            self.since = event.revision;
            // A marker, or a type of a newer scheduler: nothing to show.
            let change = matches!(kind, Type::Added | Type::Modified | Type::Deleted);
            return change.then_some(Update::Changed(event));
        }
        match kind {
            Type::Synced => {
                self.since = event.revision.max(1);
                let mut apps = std::mem::take(&mut self.listing);
                apps.sort_by(|a, b| a.name.cmp(&b.name));
                self.listed = true;
                Some(Update::Listed {
                    apps,
                    revision: event.revision,
                    resync: self.resync.take(),
                })
            }
            // A listing is made of additions; anything else is taken for
            // what it says.
            Type::Deleted => {
                let gone = event.app.map(|a| a.name).unwrap_or_default();
                self.listing.retain(|a| a.name != gone);
                None
            }
            _ => {
                self.listing.extend(event.app);
                None
            }
        }
    }

    /// The call or the stream failed: list again at once, wait and
    /// resume, or give up.
    async fn failed(&mut self, status: &Status) -> anyhow::Result<()> {
        self.stream = None;
        if self.since == 0 && !self.listing.is_empty() {
            // A listing cut short starts over.
            self.listing.clear();
        }
        if status.code() == Code::OutOfRange {
            self.since = 0;
            if self.listed {
                self.resync = Some(status.message().to_string());
            }
            return Ok(());
        }
        if !retryable(status) {
            return Err(status_error(self.scheduler.url(), status));
        }
        self.unreachable = Some(status_error(self.scheduler.url(), status).to_string());
        let pause = self.pauses.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(pause).await;
        Ok(())
    }
}
