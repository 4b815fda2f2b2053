//! The shipper's counters on the riklet's `/metrics`, per sink (label
//! `sink`, the sink's name: `syslog://HOST:PORT`, `file:PATH`):
//!
//! | name | counts |
//! |---|---|
//! | `riklet_log_shipper_shipped_records_total` | records the sink acknowledged |
//! | `riklet_log_shipper_retried_records_total` | records of attempts that failed (sent again) |
//! | `riklet_log_shipper_dropped_records_total` | records read but never to be shipped: unsent at a stop while their log directory was already gone |
//! | `riklet_log_shipper_cut_records_total` | records cut at 1 MiB (the rest follows as the next record), or split by a rotation |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::config::LogSink;

type SinkLabel = [(&'static str, String); 1];

/// The counters; clones count into the same series.
#[derive(Debug, Clone, Default)]
pub struct ShipperMetrics {
    shipped: Family<SinkLabel, Counter>,
    retried: Family<SinkLabel, Counter>,
    dropped: Family<SinkLabel, Counter>,
    cut: Family<SinkLabel, Counter>,
}

/// What a counter counts.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Shipped,
    Retried,
    Dropped,
    Cut,
}

impl ShipperMetrics {
    /// Every series of every sink at 0, so that each exists before its
    /// first record.
    pub fn new(sinks: &[LogSink]) -> Self {
        let m = Self::default();
        for sink in sinks {
            for outcome in [
                Outcome::Shipped,
                Outcome::Retried,
                Outcome::Dropped,
                Outcome::Cut,
            ] {
                m.add(&sink.name(), outcome, 0);
            }
        }
        m
    }

    /// Counts `n` records of `sink`.
    pub fn add(&self, sink: &str, outcome: Outcome, n: u64) {
        let family = match outcome {
            Outcome::Shipped => &self.shipped,
            Outcome::Retried => &self.retried,
            Outcome::Dropped => &self.dropped,
            Outcome::Cut => &self.cut,
        };
        family
            .get_or_create(&[("sink", sink.to_string())])
            .inc_by(n);
    }

    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        for (name, help, family) in [
            (
                "riklet_log_shipper_shipped_records",
                "Pod log records the sink acknowledged",
                &self.shipped,
            ),
            (
                "riklet_log_shipper_retried_records",
                "Pod log records of delivery attempts that failed and are sent again",
                &self.retried,
            ),
            (
                "riklet_log_shipper_dropped_records",
                "Pod log records read but never to be shipped",
                &self.dropped,
            ),
            (
                "riklet_log_shipper_cut_records",
                "Pod log records cut at the 1 MiB message limit",
                &self.cut,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_per_sink() {
        let sink = LogSink::File {
            path: "/tmp/x.json".into(),
        };
        let m = ShipperMetrics::new(std::slice::from_ref(&sink));
        m.add(&sink.name(), Outcome::Shipped, 3);
        m.clone().add(&sink.name(), Outcome::Retried, 2);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "riklet_log_shipper_shipped_records_total{sink=\"file:/tmp/x.json\"} 3",
            "riklet_log_shipper_retried_records_total{sink=\"file:/tmp/x.json\"} 2",
            "riklet_log_shipper_dropped_records_total{sink=\"file:/tmp/x.json\"} 0",
            "riklet_log_shipper_cut_records_total{sink=\"file:/tmp/x.json\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
