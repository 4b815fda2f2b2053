//! Which pods serve which ports: the endpoints the Node Proxy forwards to,
//! and the check that keeps one port to one app on this node.

use std::collections::HashMap;
use std::net::IpAddr;

use proto::manifest::{AppManifest, Protocol};

use super::host::PodHost;
use crate::proxy::model::{Endpoint, PodAddress};
use crate::state::{Phase, PodRecord};

/// A port of the node that no app may take: the riklet's own listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedPort {
    pub port: u16,
    pub protocol: Protocol,
    /// What listens there, for the refusal message.
    pub owner: String,
}

/// The RUNNING pods that expose ports, in instance order. A pod whose
/// address is unknown (its network is gone) is left out: it cannot be a
/// backend.
pub(super) fn endpoints<H: PodHost>(host: &H, pods: &HashMap<String, PodRecord>) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = pods
        .values()
        .filter(|p| p.phase == Phase::Running)
        .filter_map(|p| {
            let ports: Vec<_> = p
                .manifest
                .spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().cloned())
                .collect();
            if ports.is_empty() {
                return None;
            }
            let address = if p.manifest.spec.host_network {
                PodAddress::HostNetwork
            } else {
                match host.pod_ip(p)? {
                    IpAddr::V4(ip) => PodAddress::Ip(ip),
                    IpAddr::V6(_) => return None,
                }
            };
            Some(Endpoint {
                app: p.manifest.name.clone(),
                instance: p.instance_id.clone(),
                address,
                ports,
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a.instance.cmp(&b.instance));
    endpoints
}

/// Why `manifest` cannot take its ports on this node: a port of the riklet
/// itself, or one another app's pod here holds (replicas of one app share
/// their ports). The message names the field and the holder.
pub(super) fn clash(
    manifest: &AppManifest,
    pods: &HashMap<String, PodRecord>,
    reserved: &[ReservedPort],
) -> Option<String> {
    for (i, c) in manifest.spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().enumerate() {
            let field = format!("spec.containers[{i}].ports[{j}].port");
            let held = |m: &AppManifest| {
                m.spec
                    .containers
                    .iter()
                    .flat_map(|c| &c.ports)
                    .any(|q| q.port == p.port && q.protocol == p.protocol)
            };
            if let Some(r) = reserved
                .iter()
                .find(|r| r.port == p.port && r.protocol == p.protocol)
            {
                return Some(format!(
                    "{field}: port {}/{} is the {} of this node",
                    p.port, p.protocol, r.owner
                ));
            }
            let mut holders: Vec<&str> = pods
                .values()
                .filter(|o| o.phase != Phase::Destroying && o.manifest.name != manifest.name)
                .filter(|o| held(&o.manifest))
                .map(|o| o.manifest.name.as_str())
                .collect();
            holders.sort_unstable();
            if let Some(other) = holders.first() {
                return Some(format!(
                    "{field}: port {}/{} is already held by app {other:?} on this node",
                    p.port, p.protocol
                ));
            }
        }
    }
    None
}
