//! A task: one unit of work, placed in a slot of a replicated service or on a node for a global one.
//!
//! Its observed state only moves forward; the numbers are spaced as SwarmKit's so `<` compares progress.

use super::{Annotations, Meta, TaskSpec, Timestamp};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub service_id: String,
    /// The service's name and labels when the task was made.
    pub service_annotations: Annotations,
    /// 1..=replicas for replicated services; 0 for global tasks (which are keyed by node).
    pub slot: u64,
    /// Empty until the scheduler assigns the task (global tasks are created with it set).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Shared: every task made from one service spec holds the same copy (the store interns it), which is most of
    /// a task's size.
    pub spec: Arc<TaskSpec>,
    /// The version of the service spec this task was made from.
    #[serde(default)]
    pub spec_version: u64,
    pub status: TaskStatus,
    pub desired_state: TaskState,
    /// For a job's task, the run of the job it belongs to (SwarmKit's `JobIteration`): the service's
    /// `spec_version` when the task was made. A changed job spec starts a new run; tasks of earlier runs are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_iteration: Option<u64>,
    /// The task's addresses, one attachment per network (its spec's networks, then `ingress` when the service
    /// publishes a port in ingress mode), decided by the allocator before the task becomes PENDING.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<super::NetworkAttachment>,
    /// The service's endpoint when the task was allocated (its published ports, for `mode=host` and `ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<super::Endpoint>,
}

impl Task {
    /// The task as the control API returns it: without registry credentials (agents get them, users do not).
    pub fn redacted(mut self) -> Self {
        // Copied only when there is something to hide: a listing of a million tasks stays shared.
        if self.spec.container.pull_options.is_some() {
            Arc::make_mut(&mut self.spec).container.redact();
        }
        self
    }

    /// What a node acts on in a task it was sent, as one number: the desired state and the ids of the secrets and
    /// configs the task uses (its spec does not change otherwise, and the rest is status the node reports itself).
    /// A reconnecting node names each task it holds with it, and the dispatcher's full set sends again only those
    /// whose number differs. SHA-256, so the two ends agree whatever their build; a mismatch only costs a resend.
    pub fn assignment_digest(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.desired_state.name());
        for r in &self.spec.container.secrets {
            h.update(b"\0secret\0");
            h.update(&r.secret_id);
        }
        for r in &self.spec.container.configs {
            h.update(b"\0config\0");
            h.update(&r.config_id);
        }
        let d = h.finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// Whether `reporter`'s report of `status` changes this task: the task is on that node, the state is not
    /// earlier than the stored one (states only move forward), and something differs.
    pub fn takes_report(&self, reporter: &str, status: &super::TaskStatus) -> bool {
        self.node_id == reporter && status.state >= self.status.state && *status != self.status
    }

    /// The spec to change, copied first if other tasks share it.
    pub fn spec_mut(&mut self) -> &mut super::TaskSpec {
        Arc::make_mut(&mut self.spec)
    }

    /// Docker's task name: `web.3` for a replicated slot, `web.<node id>` for a global task.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_annotations.name, self.slot)
        } else {
            format!("{}.{}", self.service_annotations.name, self.node_id)
        }
    }

    /// The container name Docker would give it: `web.3.<task id>`.
    pub fn container_name(&self) -> String {
        format!("{}.{}", self.name(), self.id)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    #[serde(default)]
    pub timestamp: Timestamp,
    pub state: TaskState,
    /// What the component that set the state says about it ("starting", "scheduled", "no suitable node (…)").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The error that ended the task, when it failed or was rejected.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub container_id: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Set when the task has a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// A health-checked task's health, as `service ps` and `inspect` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// Task states in order. Terminal states are those > RUNNING.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u16)]
pub enum TaskState {
    #[default]
    New = 0,
    Pending = 64,
    Assigned = 192,
    Accepted = 256,
    Preparing = 320,
    Ready = 384,
    Starting = 448,
    Running = 512,
    Complete = 576,
    Shutdown = 640,
    Failed = 704,
    Rejected = 768,
    /// Desired state only: the task is to be shut down and then deleted.
    Remove = 800,
    Orphaned = 832,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Docker's capitalised form, as `service ps` prints it.
    pub fn title(self) -> String {
        let n = self.name();
        let mut c = n.chars();
        match c.next() {
            Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
            None => String::new(),
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_ordered_like_swarmkit() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Failed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert_eq!(TaskState::Rejected as u16, 768);
        assert_eq!(TaskState::Running.title(), "Running");
    }
}
