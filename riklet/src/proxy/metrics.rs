//! The proxy's series of `/metrics`, encoded at scrape time from the
//! status the proxy task keeps (counters are as fresh as the last read,
//! every `counter_interval`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `riklet_proxy_connections_total` | counter | app, port, protocol, node |
//! | `riklet_proxy_bytes_total` | counter | app, port, protocol, node |
//! | `riklet_proxy_backends` | gauge | app, port, protocol, node |
//! | `riklet_proxy_services` | gauge | node |
//! | `riklet_proxy_last_sync_seconds` | gauge | node |
//! | `riklet_proxy_syncs_total`, `riklet_proxy_sync_errors_total` | counter | node |

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{ProxyStatus, ServiceStatus};

/// Encodes the proxy's status; register it next to the snapshot collector.
#[derive(Debug)]
pub struct ProxyMetrics {
    status: Arc<RwLock<ProxyStatus>>,
    node: String,
}

impl ProxyMetrics {
    pub(super) fn new(status: Arc<RwLock<ProxyStatus>>, node: &str) -> Self {
        ProxyMetrics {
            status,
            node: node.to_string(),
        }
    }
}

/// A per-service figure.
type Figure = fn(&ServiceStatus) -> u64;

const PER_SERVICE: [(&str, &str, MetricType, Figure); 3] = [
    (
        "riklet_proxy_connections",
        "Connections (TCP) and flows (UDP, SCTP) the Node Proxy sent to a backend of the service.",
        MetricType::Counter,
        |s| s.connections,
    ),
    (
        "riklet_proxy_bytes",
        "Bytes, both ways, of the service's connections and flows (eBPF socket load-balancer and nftables).",
        MetricType::Counter,
        |s| s.bytes,
    ),
    (
        "riklet_proxy_backends",
        "Backends (RUNNING pods on this node) of the service.",
        MetricType::Gauge,
        |s| s.backends.len() as u64,
    ),
];

impl Collector for ProxyMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self
            .status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let node = [("node", self.node.as_str())];
        for (name, help, metric_type, figure) in PER_SERVICE {
            if status.services.is_empty() {
                break;
            }
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for s in &status.services {
                let port = s.port.to_string();
                let labels = [
                    ("app", s.app.as_str()),
                    ("port", port.as_str()),
                    ("protocol", s.protocol.as_str()),
                    ("node", self.node.as_str()),
                ];
                let mut series = family.encode_family(&labels)?;
                let value = figure(s);
                match metric_type {
                    MetricType::Counter => {
                        series.encode_counter::<NoLabelSet, _, u64>(&value, None)?
                    }
                    _ => series.encode_gauge(&(value as i64))?,
                }
            }
        }
        let mut services = encoder.encode_descriptor(
            "riklet_proxy_services",
            "Services (port and protocol) the Node Proxy serves.",
            None,
            MetricType::Gauge,
        )?;
        services
            .encode_family(&node)?
            .encode_gauge(&(status.services.len() as i64))?;
        let mut sync = encoder.encode_descriptor(
            "riklet_proxy_last_sync",
            "How long the last sync of the Node Proxy's datapaths took.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        sync.encode_family(&node)?
            .encode_gauge(&status.last_sync_seconds)?;
        for (name, help, value) in [
            (
                "riklet_proxy_syncs",
                "Syncs of the Node Proxy's datapaths.",
                status.syncs,
            ),
            (
                "riklet_proxy_sync_errors",
                "Syncs of the Node Proxy's datapaths that failed (and were retried).",
                status.sync_errors,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            family
                .encode_family(&node)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proto::manifest::Protocol;

    use super::*;
    use crate::proxy::ProxyMode;

    #[test]
    fn services_are_labelled_by_app_port_and_protocol() {
        let status = Arc::new(RwLock::new(ProxyStatus {
            mode: ProxyMode::Ebpf,
            requested: ProxyMode::Ebpf,
            addresses: vec![],
            services: vec![ServiceStatus {
                app: "web".into(),
                port: 18580,
                protocol: Protocol::Tcp,
                datapath: "ebpf+nftables",
                backends: vec!["10.88.0.2:8080".into(), "10.88.0.3:8080".into()],
                connections: 7,
                bytes: 1500,
            }],
            last_sync_seconds: 0.002,
            syncs: 3,
            sync_errors: 1,
        }));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProxyMetrics::new(status, "node-1")));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let labels = r#"{app="web",port="18580",protocol="TCP",node="node-1"}"#;
        for line in [
            format!("riklet_proxy_connections_total{labels} 7"),
            format!("riklet_proxy_bytes_total{labels} 1500"),
            format!("riklet_proxy_backends{labels} 2"),
            r#"riklet_proxy_services{node="node-1"} 1"#.to_string(),
            r#"riklet_proxy_last_sync_seconds{node="node-1"} 0.002"#.to_string(),
            r#"riklet_proxy_syncs_total{node="node-1"} 3"#.to_string(),
            r#"riklet_proxy_sync_errors_total{node="node-1"} 1"#.to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
