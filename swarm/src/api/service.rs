//! A service: the desired state the orchestrators reconcile tasks towards.

use super::{Meta, ServiceSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub spec: ServiceSpec,
    /// The spec before the last update, for `service rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped only when the spec changes (not on status writes); tasks record the one they were made from.
    #[serde(default)]
    pub spec_version: u64,
    /// The last update or rollback, as `service inspect` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// What the allocator gave the service: its published ports (dynamic ones filled in) and a VIP per network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
}

impl Service {
    /// The service as the control API returns it: without registry credentials (current or previous spec).
    pub fn redacted(mut self) -> Self {
        self.spec.task_template.container.redact();
        if let Some(p) = &mut self.previous_spec {
            p.task_template.container.redact();
        }
        self
    }
}

/// Swarm's `Endpoint`: the endpoint spec the allocation was made for, the ports as allocated, and the VIPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub spec: super::EndpointSpec,
    /// The spec's ports with every published port decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<super::PortConfig>,
    /// One per attached network (and `ingress` when a port is published in ingress mode); none with dnsrr.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub network_id: String,
    /// CIDR form, e.g. `10.0.1.2/24`.
    pub addr: String,
}

/// Swarm's `UpdateStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    #[serde(default)]
    pub started_at: super::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<super::Timestamp>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// As docker prints it (`service inspect --pretty`, `service ls`).
    pub fn name(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}
