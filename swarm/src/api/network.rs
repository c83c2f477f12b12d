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

/// An object's addresses on one network: a task's (or a node's, for its ingress load-balancer endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    /// CIDR form, e.g. `10.0.1.7/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// DNS names besides the service's own (`--network name=N,alias=A`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// What a node's dataplane needs to know, computed by the dispatcher for each node and sent whole whenever it
/// changes (`AssignmentsMessage::network_state`): the networks it has tasks on (and `ingress`), every endpoint on
/// those networks wherever it runs, and the services reachable on them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkState {
    /// Networks this node needs, `ingress` always among them once it exists.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Every task endpoint on those networks, on any node; and on the ingress, the nodes' own addresses (empty
    /// task id, never serving): this node's, and every node's when it runs tasks on the ingress.
    #[serde(default)]
    pub endpoints: Vec<NetworkEndpoint>,
    /// Services with a task endpoint on those networks, or publishing a port.
    #[serde(default)]
    pub services: Vec<ServiceEndpoint>,
    /// This node's own addresses (its ingress endpoint, the host side of the routing mesh).
    #[serde(default)]
    pub node_attachments: Vec<NetworkAttachment>,
}

/// One task's address on one network, as every node with that network sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEndpoint {
    pub network_id: String,
    pub task_id: String,
    pub service_id: String,
    /// The node running the task and its data-path (underlay) address, the VXLAN destination.
    pub node_id: String,
    pub node_addr: String,
    /// The task's address (no prefix length).
    pub ip: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The task runs and is meant to: a backend of VIPs, published ports and DNS answers.
    #[serde(default)]
    pub serving: bool,
}

/// A service as the dataplane sees it: its name (DNS), endpoint mode, VIPs and allocated ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    pub service_id: String,
    pub name: String,
    #[serde(default)]
    pub mode: super::EndpointMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<super::VirtualIp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<super::PortConfig>,
}
