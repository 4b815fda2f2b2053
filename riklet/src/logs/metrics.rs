//! `riklet_log_dropped_bytes_total{node}`: the bytes of pod output that
//! the log writers could not write (full disk, I/O errors). The writers
//! are processes of their own (shims, `riklet logger`), which keep their
//! count in each container's log directory
//! ([`riklet_shim::cri::DROPPED_FILE`]); the riklet sums them at scrape
//! time. A deleted pod's count leaves the sum with its directory, which a
//! Prometheus `rate` reads as a counter reset.

use std::fmt;
use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use riklet_shim::cri::read_dropped;

/// Encodes the sum of the writers' counts; register it next to the
/// snapshot collector.
#[derive(Debug)]
pub struct DroppedBytes {
    log_dir: PathBuf,
    node: String,
}

impl DroppedBytes {
    pub fn new(log_dir: &Path, node: &str) -> Self {
        DroppedBytes {
            log_dir: log_dir.to_path_buf(),
            node: node.to_string(),
        }
    }
}

impl Collector for DroppedBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "riklet_log_dropped",
            "Bytes of pod output the log writers could not write (full disk, I/O errors); the pods kept running.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        family
            .encode_family(&[("node", self.node.as_str())])?
            .encode_counter::<NoLabelSet, _, u64>(&dropped_total(&self.log_dir), None)
    }
}

/// The counts of every container directory under `log_dir`.
fn dropped_total(log_dir: &Path) -> u64 {
    let Ok(pods) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    pods.flatten()
        .filter_map(|pod| std::fs::read_dir(pod.path()).ok())
        .flat_map(|containers| containers.flatten())
        .map(|c| read_dropped(&c.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn sums_the_containers_counts() {
        let dir = tempfile::tempdir().unwrap();
        for (pod, container, count) in [("default_a_a-1", "c", 10u64), ("default_b_b-1", "d", 5)] {
            let c = dir.path().join(pod).join(container);
            fs::create_dir_all(&c).unwrap();
            fs::write(
                c.join(riklet_shim::cri::DROPPED_FILE),
                format!("{count:020}\n"),
            )
            .unwrap();
            fs::write(c.join("0.log"), "x\n").unwrap();
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(DroppedBytes::new(dir.path(), "node-1")));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = r#"riklet_log_dropped_bytes_total{node="node-1"} 15"#;
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
}
