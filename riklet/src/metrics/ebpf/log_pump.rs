//! The thread that moves the programs' aya-log records into `tracing`.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tracing::warn;

/// How often the log thread drains eBPF log records. They are rare (see
/// `riklet-ebpf`), so a slow poll is plenty and costs nothing.
const LOG_POLL: Duration = Duration::from_millis(500);

/// The logger of a freshly loaded `ebpf`, which takes the log map out of
/// it; `None` (with a warning) if the object has none. Must run before the
/// programs load: they refer to the log map's file descriptor.
pub(super) fn init_logger(ebpf: &mut Ebpf) -> Option<EbpfLogger<&'static dyn log::Log>> {
    match EbpfLogger::init(ebpf) {
        Ok(logger) => Some(logger),
        Err(error) => {
            warn!(%error, "eBPF logging unavailable; the probes work without it");
            None
        }
    }
}

/// A thread that moves aya-log records from the eBPF ring buffer into the
/// `log` facade (which the riklet bridges into `tracing`).
///
/// Someone has to drain the ring buffer or the records never appear; the
/// probes are synchronous and the records rare, so a thread that wakes a
/// couple of times a second needs no async runtime and costs nothing. It
/// also owns the [`EbpfLogger`], which keeps the log map alive.
pub(super) struct LogPump {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl LogPump {
    /// Starts the thread; `None` (with a warning) if it cannot start.
    pub(super) fn start_or_warn(logger: EbpfLogger<&'static dyn log::Log>) -> Option<Self> {
        match Self::start(logger) {
            Ok(pump) => Some(pump),
            Err(error) => {
                warn!(%error, "cannot start the eBPF log thread; eBPF log records will be lost");
                None
            }
        }
    }

    fn start(mut logger: EbpfLogger<&'static dyn log::Log>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ebpf-log".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        logger.flush();
                        std::thread::park_timeout(LOG_POLL);
                    }
                    logger.flush();
                })?
        };
        Ok(Self { stop, thread })
    }

    /// Drains what is left and stops the thread.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            warn!("the eBPF log thread panicked");
        }
    }
}
