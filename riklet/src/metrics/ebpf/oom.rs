//! The OOM kill events that the `oom/mark_victim` program sends through
//! the `OOM_EVENTS` ring buffer.

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use riklet_common::oom::{OOM_EVENTS_MAP, OomEvent};
use tracing::warn;

use super::{ProbeError, Probes, Result, error::map_error};

/// Takes the ring buffer out of `ebpf`, so that [`Probes`] owns it mutably.
pub(super) fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>> {
    let map = ebpf
        .take_map(OOM_EVENTS_MAP)
        .ok_or(ProbeError::MapMissing {
            map: OOM_EVENTS_MAP,
        })?;
    RingBuf::try_from(map).map_err(map_error(OOM_EVENTS_MAP))
}

impl Probes {
    /// The OOM kills recorded since the last call, oldest first. Never
    /// blocks; empty if there are none. To wait for events, poll
    /// [`oom_events_fd`](Self::oom_events_fd) for readability.
    pub fn oom_events(&mut self) -> Vec<OomEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.oom_events.next() {
            if item.len() < size_of::<OomEvent>() {
                warn!(len = item.len(), "short OOM event record ignored");
                continue;
            }
            // SAFETY: the record holds at least one `OomEvent`, which is
            // `Pod`; ring buffer records are only 8-byte aligned.
            events.push(unsafe { item.as_ptr().cast::<OomEvent>().read_unaligned() });
        }
        events
    }

    /// The OOM ring buffer's file descriptor, readable when events wait
    /// (for epoll or `tokio::io::unix::AsyncFd`).
    pub fn oom_events_fd(&self) -> BorrowedFd<'_> {
        self.oom_events.as_fd()
    }
}
