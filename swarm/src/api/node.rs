//! A node: one member host of the swarm.

use super::{Annotations, Meta, Resources, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub spec: NodeSpec,
    /// What the node reported of itself when its session opened.
    #[serde(default)]
    pub description: NodeDescription,
    #[serde(default)]
    pub status: NodeStatus,
    /// Present on managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
    /// The role the node's certificate carries (the spec's role is the desired one).
    pub role: NodeRole,
    /// The node's own network addresses, decided by the allocator: its endpoint on `ingress` (SwarmKit's
    /// `Node.Attachments`), through which the routing mesh reaches tasks on other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<super::NetworkAttachment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    pub desired_role: NodeRole,
    pub availability: NodeAvailability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Worker,
    Manager,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAvailability {
    Active,
    Pause,
    Drain,
}

impl std::fmt::Display for NodeAvailability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeAvailability::Active => "Active",
            NodeAvailability::Pause => "Pause",
            NodeAvailability::Drain => "Drain",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDescription {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub platform: Platform,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub engine: EngineDescription,
    /// Discrete resources the node advertises (`shoald --node-generic-resource KIND=N`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub generic_resources: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Go-style names, as Docker reports them: `linux`, `amd64`/`arm64`.
    pub os: String,
    pub architecture: String,
}

impl Platform {
    /// The platform this process runs on.
    pub fn current() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Platform { os: std::env::consts::OS.into(), architecture: arch.into() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineDescription {
    #[serde(default)]
    pub engine_version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The address the node's session came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(default)]
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Unknown => "Unknown",
            NodeState::Down => "Down",
            NodeState::Ready => "Ready",
            NodeState::Disconnected => "Disconnected",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    /// The Raft member id of this manager.
    pub raft_id: u64,
    /// The cluster address other managers and agents reach it at (`host:2377`).
    pub addr: String,
    #[serde(default)]
    pub leader: bool,
    pub reachability: Reachability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    Unknown,
    Unreachable,
    Reachable,
}
