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
    /// `swarm unlock-key --rotate`: a new unlock key (Docker's `Rotation.ManagerUnlockKey`).
    #[serde(default)]
    pub rotate_unlock_key: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListServicesRequest {
    /// Only services whose name or id starts with one of these (empty: all).
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub page: PageRequest,
}

/// Which page of a listing to answer: at most `size` items (0: all of them) after `token`, a cursor from the
/// previous page's `next_page_token` (empty: from the start). Items come in id order, so a page never repeats or
/// skips an item that stayed put between two calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    #[serde(default)]
    pub size: u32,
    #[serde(default)]
    pub token: String,
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
    /// The token of the next page; empty on the last one.
    #[serde(default)]
    pub next_page_token: String,
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
    #[serde(default)]
    pub page: PageRequest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListTasksResponse {
    pub tasks: Vec<Task>,
    /// The token of the next page; empty on the last one.
    #[serde(default)]
    pub next_page_token: String,
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

/// `secret create`: the spec with its data in clear (sealed before it is stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSecretRequest {
    pub spec: super::SecretSpec,
}

/// `secret ls` / `config ls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListSecretsRequest {
    /// Only objects whose name or id starts with one of these (empty: all).
    #[serde(default)]
    pub names: Vec<String>,
}

/// Secrets as the API shows them: never their data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListSecretsResponse {
    pub secrets: Vec<super::Secret>,
}

/// Changes a secret's labels (the only thing that may change, as in Docker).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateSecretRequest {
    pub id: String,
    /// The version the caller read; a stale one fails with "update out of sequence".
    pub version: u64,
    /// The secret's spec with new labels: its name must be the same and its data empty.
    pub spec: super::SecretSpec,
}

/// `secret rotate NAME FILE`: a new version of the secret with this data, and every service using the current
/// version moved to it (rolled out with its update policy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateSecretRequest {
    /// Name (of any version, or of the family), id or unique id prefix.
    pub id_or_name: String,
    #[serde(with = "super::base64_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateSecretResponse {
    /// The new version.
    pub secret: super::Secret,
    /// Names of the services now using it.
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateConfigRequest {
    pub spec: super::ConfigSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListConfigsResponse {
    pub configs: Vec<super::Config>,
}

/// Changes a config's labels (the only thing that may change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateConfigRequest {
    pub id: String,
    pub version: u64,
    /// The config's spec with new labels: same name, same data.
    pub spec: super::ConfigSpec,
}
