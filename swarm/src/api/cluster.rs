//! The cluster object: one per swarm, holding the CA, join tokens and cluster-wide settings.

use super::{meta::duration_text, Annotations, Meta};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

/// The id of the one cluster object (as SwarmKit's "default" cluster is found by name).
pub const DEFAULT_CLUSTER_NAME: &str = "default";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub spec: ClusterSpec,
    /// The root CA; the private key never leaves the managers (the control API strips it).
    pub root_ca: RootCa,
    /// Ids of nodes removed with `node rm`: their certificates stay valid until they expire, so whatever
    /// authenticates a peer by its certificate (dispatcher sessions, NodeCA renewals, Raft peers) must refuse
    /// these ids. Only grows (a removed node rejoins with a new id), as SwarmKit's blacklisted certificates.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed_nodes: BTreeSet<String>,
    /// `swarm init --default-addr-pool`: the CIDRs networks without `--subnet` take their subnets from (empty:
    /// 10.0.0.0/8). Fixed at init, as in SwarmKit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_address_pool: Vec<String>,
    /// `--default-addr-pool-mask-length`: the prefix length of those subnets (0: 24).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub subnet_size: u32,
    /// With autolock, the unlock key's text sealed with the managers' data key (SwarmKit's `UnlockKeys`): every
    /// manager learns it here, and wraps its own key files with it. Empty without autolock; never returned by
    /// the API except through `swarm unlock-key`.
    #[serde(default, with = "super::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub unlock_key: Vec<u8>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    #[serde(default)]
    pub orchestration: OrchestrationConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    #[serde(default)]
    pub ca_config: CaConfig,
    /// `--autolock`.
    #[serde(default)]
    pub encryption_config: EncryptionConfig,
}

/// Docker's `EncryptionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// `swarm init --autolock` / `swarm update --autolock`: managers keep their keys wrapped with the unlock key
    /// and need `swarm unlock` after a restart.
    #[serde(default)]
    pub auto_lock_managers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaConfig {
    /// Lifetime of the node certificates the CA issues (`--cert-expiry`, default 90 days); nodes renew theirs at a
    /// random point in 50–80 % of it.
    #[serde(with = "duration_text")]
    pub node_cert_expiry: Duration,
    /// Bumped to start a root CA rotation (`swarm ca --rotate`, Docker's `ForceRotate`): a change of this
    /// counter in `UpdateCluster` generates a new root CA.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub force_rotate: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The shortest `--cert-expiry` accepted. Docker's is 1 hour; Shoal accepts down to 30 s so that renewal can be
/// exercised (and watched) in a test or a short-lived swarm.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(30);

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig { node_cert_expiry: Duration::from_secs(90 * 24 * 3600), force_rotate: 0 }
    }
}

impl ClusterSpec {
    /// Checks the values `swarm init` and `swarm update` may set; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.dispatcher.heartbeat_period.is_zero() {
            return Err("--dispatcher-heartbeat must be greater than 0".into());
        }
        if self.raft.snapshot_interval == 0 {
            return Err("--snapshot-interval must be greater than 0".into());
        }
        if self.ca_config.node_cert_expiry < MIN_CERT_EXPIRY {
            return Err(format!(
                "--cert-expiry must be at least {} (got {})",
                humantime::format_duration(MIN_CERT_EXPIRY),
                humantime::format_duration(self.ca_config.node_cert_expiry)
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestrationConfig {
    /// Terminal tasks kept per slot (`--task-history-limit`, default 5).
    pub task_history_retention_limit: u64,
}

impl Default for OrchestrationConfig {
    fn default() -> Self {
        OrchestrationConfig { task_history_retention_limit: 5 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftConfig {
    /// Log entries between snapshots (`--snapshot-interval`, default 10,000).
    pub snapshot_interval: u64,
    /// Log entries kept behind a snapshot for slow followers (default 500).
    pub log_entries_for_slow_followers: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig { snapshot_interval: 10_000, log_entries_for_slow_followers: 500 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatcherConfig {
    /// Agent heartbeat period (`--dispatcher-heartbeat`, default 5s).
    #[serde(with = "duration_text")]
    pub heartbeat_period: Duration,
    /// How long a node whose session stream broke (daemon killed, connection reset) has to open a new session
    /// before it is DOWN and its tasks are replaced elsewhere (default 1s).
    #[serde(with = "duration_text", default = "default_session_grace")]
    pub session_grace: Duration,
}

fn default_session_grace() -> Duration {
    Duration::from_secs(1)
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig { heartbeat_period: Duration::from_secs(5), session_grace: default_session_grace() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCa {
    pub ca_cert_pem: String,
    /// Empty in anything the control API returns.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_key_pem: String,
    /// `SHA-256` digest of the CA certificate (DER), hex.
    pub ca_cert_digest: String,
    pub join_tokens: JoinTokens,
    /// During a root CA rotation, the root being replaced (PEM): still trusted until every node holds a
    /// certificate from `ca_cert_pem`. Empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous_ca_cert_pem: String,
    /// During a rotation, the nodes that have not yet renewed their certificate under the new root.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub rotation_pending: std::collections::BTreeSet<String>,
}

impl RootCa {
    /// Whether a root CA rotation is in progress.
    pub fn rotating(&self) -> bool {
        !self.previous_ca_cert_pem.is_empty()
    }

    /// The root certificates (PEM) members must trust now: the root, and the previous one during a rotation.
    pub fn trusted_roots(&self) -> Vec<String> {
        std::iter::once(&self.ca_cert_pem)
            .chain(Some(&self.previous_ca_cert_pem).filter(|p| !p.is_empty()))
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}
