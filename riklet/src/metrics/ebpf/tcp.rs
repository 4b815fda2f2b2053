//! Reading the TCP retransmissions that the `tcp/tcp_retransmit_skb`
//! program counts per source address in `TCP_RETRANS`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use riklet_common::tcp::{Address, TCP_RETRANS_MAP};

use super::{Probes, Result, maps::remove_entry};

impl Probes {
    /// TCP retransmissions per source address (IPv4 addresses as such, not
    /// mapped), summed over CPUs, in one pass over the map as for
    /// [`traffic_all`](Self::traffic_all). Counts start when the address
    /// first retransmits after the load or after
    /// [`forget_address`](Self::forget_address).
    pub fn retransmits_all(&self) -> Result<HashMap<IpAddr, u64>> {
        let by_address: HashMap<Address, u64> = self
            .read_all(TCP_RETRANS_MAP, |total: u64, cpu: &u64| {
                total.wrapping_add(*cpu)
            })?;
        Ok(by_address
            .into_iter()
            .map(|(address, count)| (Ipv6Addr::from(address).to_canonical(), count))
            .collect())
    }

    /// Drops an address's retransmission count: one that is no pod's (any
    /// more), so that the map keeps room for pods, and a reused pod address
    /// starts from zero. Forgetting an address without an entry is fine.
    pub fn forget_address(&mut self, address: IpAddr) -> Result<()> {
        let key = match address {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }
        .octets();
        remove_entry::<Address, u64>(&mut self.ebpf, TCP_RETRANS_MAP, &key)
    }
}
