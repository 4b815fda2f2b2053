//! Logging: one tracing subscriber for the whole process. `log` records
//! (aya, aya-log's forwarded eBPF messages) land in the same stream.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber: human-readable text, or JSON lines for log
/// shippers; level from `RUST_LOG` (default `info`).
pub fn init(json: bool) {
    let _ = tracing_log::LogTracer::init();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
