//! The log shipper: the node's log agent, off unless `[[logs.sinks]]`
//! names a sink.
//!
//! For each sink, a task tails every pod's CRI files under the log dir
//! (`<namespace>_<app>_<instance>/<container>/…`, see
//! [`crate::logs::layout`]), joins the `P` parts of long lines, labels each
//! record with its app, instance, container, node and stream, and sends it:
//! RFC 5424 syslog over TCP or TLS with octet-counting framing, or JSON
//! lines to a file. Each sink keeps its own place, checkpointed in the
//! state dir after every delivered batch, so that a restart (clean or
//! `kill -9`) repeats at most the last batch; a sink that is down is
//! retried with back-off while the pod's log files keep the lines. The
//! shipper only reads: it never slows a pod's writer.
//!
//! # Layout
//! - [`config`]: the `[[logs.sinks]]` tables.
//! - `tail`: one container's files in order, across rotation and
//!   compression, by inode; `record`: CRI lines to records.
//! - `checkpoint`: the places, in the state dir.
//! - `format`: RFC 5424 and JSON lines; `sink`: connections and delivery.
//! - `pipeline`: each sink's loop; `metrics`: its counters on `/metrics`.

pub mod config;

mod checkpoint;
mod format;
mod metrics;
mod pipeline;
mod record;
mod sink;
mod tail;

pub use config::{LogSink, SinkConfigError};
pub use metrics::ShipperMetrics;
pub use pipeline::{MAX_BATCH, ShipperSettings, run_sink};
pub use record::MAX_MESSAGE;
