//! The network object: a swarm-scoped overlay network, as SwarmKit's `Network`. The spec is what the user asked
//! for; `vni`, `subnet` and `gateway` are what the manager's allocator decided (see `manager/ipam.rs`), which is
//! what every node's dataplane applies.

use super::{Annotations, Meta};
use serde::{Deserialize, Serialize};

/// The only driver Shoal implements (Docker's swarm-scoped multi-host driver).
pub const OVERLAY_DRIVER: &str = "overlay";

/// The name of the routing-mesh network created at `swarm init`.
pub const INGRESS_NETWORK_NAME: &str = "ingress";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub spec: NetworkSpec,
    /// The VXLAN network identifier, unique in the cluster (from 4096 up).
    pub vni: u32,
    /// The network's subnet (CIDR): the one the spec asked for, or the next free one of the default pools.
    pub subnet: String,
    /// The gateway address (the subnet's first host address unless the spec gave one).
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetworkSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    /// `-d`: only "overlay".
    #[serde(default = "overlay")]
    pub driver: String,
    /// `--subnet` / `--gateway`; absent: allocated from the default address pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConfig>,
    /// `--attachable`: standalone containers may join it (kept for Docker parity).
    #[serde(default)]
    pub attachable: bool,
    /// `--internal`: no egress to the outside world.
    #[serde(default)]
    pub internal: bool,
    /// The routing-mesh network (only the one made at `swarm init`).
    #[serde(default)]
    pub ingress: bool,
}

fn overlay() -> String {
    OVERLAY_DRIVER.to_string()
}

/// Addresses the user chose for a network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpamConfig {
    /// CIDR, e.g. "10.20.0.0/16".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// An address inside `subnet`; empty: its first host address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}
