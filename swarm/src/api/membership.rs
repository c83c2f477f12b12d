//! A node's membership in a swarm as the engine asks for it and reports it: the options of `swarm init`,
//! `swarm join` and `swarm leave`, and the Swarm section of `info`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmInitRequest {
    /// The address other nodes reach this manager at (`ip` or `ip:port`); default: the listen address's IP, or
    /// the address of the interface with the default route.
    #[serde(default)]
    pub advertise_addr: String,
    /// Where the cluster listener binds (default `0.0.0.0:2377`).
    #[serde(default)]
    pub listen_addr: String,
    pub task_history_limit: Option<u64>,
    #[serde(default, with = "opt_duration")]
    pub dispatcher_heartbeat: Option<Duration>,
    pub snapshot_interval: Option<u64>,
    /// `--cert-expiry`: lifetime of node certificates (default 90 days).
    #[serde(default, with = "opt_duration")]
    pub cert_expiry: Option<Duration>,
    /// `--force-new-cluster`: on a manager of a swarm that lost its quorum, make this manager the only member of
    /// a new Raft group that keeps the swarm's state.
    #[serde(default)]
    pub force_new_cluster: bool,
    /// `--default-addr-pool`: CIDRs overlay networks take their subnets from (default 10.0.0.0/8).
    #[serde(default)]
    pub default_addr_pool: Vec<String>,
    /// `--default-addr-pool-mask-length`: the prefix length of those subnets (default 24).
    #[serde(default)]
    pub default_addr_pool_mask_length: Option<u32>,
    /// `--autolock`: managers need `swarm unlock` with the unlock key after a restart.
    #[serde(default)]
    pub autolock: bool,
}

/// `swarm unlock`: the key `swarm init --autolock` or `swarm unlock-key` printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmUnlockRequest {
    pub key: String,
}

/// `swarm unlock-key`: the current unlock key (empty without autolock).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmUnlockKeyResponse {
    #[serde(default)]
    pub key: String,
}

/// `swarm join`'s options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmJoinRequest {
    /// A manager's cluster address (`ip` or `ip:port`, default port 2377).
    pub remote_addr: String,
    /// `--token`.
    pub join_token: String,
    /// `--advertise-addr` (`ip` or `ip:port`); empty: the listen address's IP, or the default route's.
    #[serde(default)]
    pub advertise_addr: String,
    /// `--listen-addr` (default `0.0.0.0:2377`); a worker does not listen yet but records it for later.
    #[serde(default)]
    pub listen_addr: String,
    /// `--availability` (default active).
    #[serde(default = "active")]
    pub availability: crate::api::NodeAvailability,
}

fn active() -> crate::api::NodeAvailability {
    crate::api::NodeAvailability::Active
}

/// `swarm join-token --rotate`: which token gets a new secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateJoinTokenRequest {
    pub role: crate::api::NodeRole,
}

/// The new token after a rotation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RotateJoinTokenResponse {
    pub token: String,
}

/// The answer to `swarm join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmJoinResponse {
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInitResponse {
    pub node_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmLeaveRequest {
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// `inactive`, `pending`, `active`, `error`, `locked`.
    pub local_node_state: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub node_addr: String,
    #[serde(default)]
    pub is_manager: bool,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub managers: u64,
    #[serde(default)]
    pub nodes: u64,
    #[serde(default)]
    pub error: String,
    /// Manager addresses (`RemoteManagers`).
    #[serde(default)]
    pub remote_managers: Vec<String>,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&crate::api::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => crate::api::parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}
