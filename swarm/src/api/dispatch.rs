//! Messages between an agent and the dispatcher (`shoal.Dispatcher`).
//!
//! ```text
//!  agent                                   dispatcher (leader)
//!    ── Session(description) ───────────────▶ registers the node, marks it READY
//!    ◀─ SessionMessage{session id, period} ── (stream stays open; closing it ends the session)
//!    ── Assignments(session id) ────────────▶
//!    ◀─ COMPLETE{every task for this node} ──
//!    ◀─ INCREMENTAL{changed, removed} …  ────  as the store changes
//!    ── Heartbeat(session id) every period ─▶ node DOWN after 3 missed periods
//!    ── UpdateTaskStatus([task, status]…) ──▶ batched into store writes; answered once committed
//!    ◀─ SessionMessage{managers} … ──────────  again whenever the set of managers changes
//! ```
//! A manager that does not lead refuses every call with `UNAVAILABLE`, naming the leader in [`LEADER_METADATA`]
//! when it knows it.

use super::{NodeDescription, Task, TaskStatus};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The response metadata entry holding the leader's cluster address (`host:port`) when a manager refuses a call
/// because it does not lead.
pub const LEADER_METADATA: &str = "x-shoal-leader";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    pub description: NodeDescription,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionMessage {
    pub session_id: String,
    pub node_id: String,
    #[serde(with = "super::meta::duration_text")]
    pub heartbeat_period: Duration,
    /// Managers the agent may fail over to (`host:port`), the leader first. Sent again, with the same session
    /// id, whenever the set changes.
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub session_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    #[serde(with = "super::meta::duration_text")]
    pub period: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentsRequest {
    pub session_id: String,
    /// The tasks the node holds, each with its [`Task::assignment_digest`](super::Task::assignment_digest): the
    /// full set that opens the stream names those unchanged (`AssignmentsMessage::kept`) instead of sending them
    /// again. Empty from a node that holds none, or from an older agent (which then gets every task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldTask>,
}

/// A task a node holds, as it names it when it opens an assignments stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTask {
    pub id: String,
    pub digest: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentsKind {
    /// The full set: anything the agent runs that is not in it must go.
    Complete,
    /// Changes since the previous message.
    Incremental,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentsMessage {
    pub kind: AssignmentsKind,
    #[serde(default)]
    pub updated: Vec<Task>,
    /// In a `Complete` message, the tasks of the set that the node said it holds and that did not change, by id:
    /// part of the set, not sent again. A reconnecting node gets a few bytes per task instead of each task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
    /// Ids of tasks no longer assigned to the node.
    #[serde(default)]
    pub removed: Vec<String>,
    /// The node's whole network state, when it changed since the last message (always in a `Complete` one once
    /// networks exist). The agent applies it before the tasks in the same message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_state: Option<super::NetworkState>,
    /// Secrets and configs the node's tasks use: new ones and the ids of those no task uses any more (in a
    /// `Complete` message, the whole set). Applied before the tasks in the same message.
    #[serde(default, skip_serializing_if = "FilesDelta::is_empty")]
    pub files: FilesDelta,
}

impl AssignmentsMessage {
    /// An `Incremental` message with nothing in it yet.
    pub fn incremental() -> Self {
        AssignmentsMessage {
            kind: AssignmentsKind::Incremental,
            updated: vec![],
            kept: vec![],
            removed: vec![],
            network_state: None,
            files: Default::default(),
        }
    }
}

/// Changes to the secrets and configs a node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesDelta {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<super::FilePayload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<super::FilePayload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_configs: Vec<String>,
}

impl FilesDelta {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
            && self.removed_secrets.is_empty()
            && self.configs.is_empty()
            && self.removed_configs.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub task_id: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateTaskStatusRequest {
    pub session_id: String,
    pub updates: Vec<TaskStatusUpdate>,
}
