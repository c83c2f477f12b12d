//! Messages of the control API (`shoal.Control`): what the CLI and other managers send to change the cluster.

use super::{Cluster, Network, NetworkSpec, Node, NodeSpec, Service, ServiceSpec, Task, TaskState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateServiceRequest {
    pub spec: ServiceSpec,
}

/// Looks an object up by full id, name, or unique id prefix (as Docker does).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub id_or_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateServiceRequest {
    pub id: String,
    /// The version the caller read; a stale one fails with "update out of sequence".
    pub version: u64,
    pub spec: ServiceSpec,
    /// `service rollback` / `service update --rollback`: go back to the previous spec (`spec` is ignored).
    #[serde(default)]
    pub rollback: bool,
}

/// `swarm update`: the cluster's new spec, at the version the caller read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateClusterRequest {
    pub version: u64,
    pub spec: super::ClusterSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListServicesRequest {
    /// Only services whose name or id starts with one of these (empty: all).
    #[serde(default)]
    pub names: Vec<String>,
}

/// A service with the counts `service ls` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceWithStatus {
    pub service: Service,
    pub running_tasks: u64,
    pub desired_tasks: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListServicesResponse {
    pub services: Vec<ServiceWithStatus>,
}

/// Replaces a node's spec (availability, labels, desired role): a read-modify-write, as `UpdateServiceRequest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateNodeRequest {
    /// Full id, hostname, or unique id prefix.
    pub node_id: String,
    /// The version the caller read; a stale one fails with "update out of sequence".
    pub version: u64,
    pub spec: NodeSpec,
}

/// Removes a node from the swarm (`node rm`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveNodeRequest {
    /// Full id, hostname, or unique id prefix.
    pub node_id: String,
    /// Remove it even if it is READY (`--force`); managers must still be demoted first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListNodesResponse {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListTasksRequest {
    #[serde(default)]
    pub service_ids: Vec<String>,
    #[serde(default)]
    pub node_ids: Vec<String>,
    /// Only tasks with these desired states (empty: all).
    #[serde(default)]
    pub desired_states: Vec<TaskState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListTasksResponse {
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetClusterResponse {
    pub cluster: Cluster,
    /// Raft member count and leader, for `info`.
    pub managers: u64,
    pub nodes: u64,
}

/// `network create`: the manager picks the subnet (unless the spec gives one), the gateway and the VNI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    pub spec: NetworkSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListNetworksRequest {
    /// Only networks whose name or id starts with one of these (empty: all).
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListNetworksResponse {
    pub networks: Vec<Network>,
}
