//! Every network's addresses as the store holds them: each task's (whatever its state: an address is free again
//! only once its task is deleted), each service's VIPs and each node's own. Rebuilt from the view for each
//! allocation, so nothing is lost across leader changes; only the order of hand-outs (released addresses come
//! back last) is carried from one build to the next.

use crate::api::Network;
use crate::manager::ipam::{self, AddressAllocator};
use crate::manager::store::MemoryStore;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Why an address could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("network {0} not found")]
    UnknownNetwork(String),
    #[error("no available IP address on network {network} (subnet {subnet})")]
    Exhausted { network: String, subnet: String },
}

struct Pool {
    name: String,
    subnet: ipnet::Ipv4Net,
    alloc: AddressAllocator,
}

/// The address allocators of every network, loaded with the addresses held.
pub struct Addresses {
    pools: HashMap<String, Pool>,
}

/// The address part of a CIDR (`10.0.1.7/24` → 10.0.1.7).
pub fn addr_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

impl Addresses {
    /// Loads every address `view` holds. A network's next hand-out starts at its entry in `cursors` (kept by
    /// the running allocator), or after its highest held address.
    pub fn from_view(view: &MemoryStore, cursors: &HashMap<String, u32>) -> Self {
        let mut pools: HashMap<String, Pool> =
            view.networks().filter_map(|n| pool(n).map(|p| (n.id.clone(), p))).collect();
        let mut hold = |network_id: &str, cidr: &str| {
            if let (Some(p), Some(a)) = (pools.get_mut(network_id), addr_of(cidr)) {
                p.alloc.reserve(a);
            }
        };
        for t in view.tasks() {
            for a in &t.networks {
                a.addresses.iter().for_each(|c| hold(&a.network_id, c));
            }
        }
        for s in view.services() {
            for v in s.endpoint.iter().flat_map(|e| e.virtual_ips.iter()) {
                hold(&v.network_id, &v.addr);
            }
        }
        for n in view.nodes() {
            for a in &n.attachments {
                a.addresses.iter().for_each(|c| hold(&a.network_id, c));
            }
        }
        for (id, p) in pools.iter_mut() {
            match cursors.get(id) {
                Some(c) => p.alloc.resume_at(*c),
                None => p.alloc.resume_after_highest(),
            }
        }
        Addresses { pools }
    }

    /// A free address of `network_id`, in CIDR form.
    pub fn allocate(&mut self, network_id: &str) -> Result<String, AddressError> {
        let p = self.pools.get_mut(network_id).ok_or_else(|| AddressError::UnknownNetwork(network_id.into()))?;
        let a = p
            .alloc
            .allocate()
            .map_err(|_| AddressError::Exhausted { network: p.name.clone(), subnet: p.subnet.to_string() })?;
        Ok(format!("{a}/{}", p.subnet.prefix_len()))
    }

    /// Gives back an address allocated in this build that will not be written after all.
    pub fn release(&mut self, network_id: &str, cidr: &str) {
        if let (Some(p), Some(a)) = (self.pools.get_mut(network_id), addr_of(cidr)) {
            p.alloc.release(a);
        }
    }

    /// Where each network's next hand-out starts.
    pub fn cursors(&self) -> HashMap<String, u32> {
        self.pools.iter().map(|(id, p)| (id.clone(), p.alloc.cursor())).collect()
    }
}

fn pool(n: &Network) -> Option<Pool> {
    // Subnets and gateways were checked when the network was created.
    let subnet = ipam::parse_subnet(&n.subnet).ok()?;
    let gateway = n.gateway.parse().ok()?;
    Some(Pool { name: n.spec.annotations.name.clone(), subnet, alloc: AddressAllocator::new(subnet, gateway) })
}
