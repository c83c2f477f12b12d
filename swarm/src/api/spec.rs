//! Specs: what a user asks for. A service spec is validated by the control API (`controlapi::validate`) before
//! anything is stored; a task carries a copy of its service's task spec, so a running task never changes under it.

use super::meta::duration_text;
use super::Constraint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Name and labels of an object, as SwarmKit's `Annotations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotations {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The desired state of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    pub task_template: TaskSpec,
    pub mode: ServiceMode,
}

/// How many tasks a service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// A fixed number of tasks, in slots 1..=replicas.
    Replicated { replicas: u64 },
    /// One task on every node that satisfies the placement constraints.
    Global,
}

impl ServiceMode {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
        }
    }
}

/// What each task of a service runs, and how it is placed and supervised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub container: ContainerSpec,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub placement: Placement,
    /// Bumped to force tasks to be replaced even when nothing else changed (`service update --force`).
    #[serde(default)]
    pub force_update: u64,
    /// Where the task's output goes (`--log-driver`, `--log-opt`); the node's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
}

/// A log driver and its options, as Swarm's `TaskSpec.LogDriver` (e.g. json-file with `max-size=10m`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDriver {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The container a task runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Normalized image reference, e.g. `docker.io/library/busybox:latest`.
    pub image: String,
    /// Overrides the image's entrypoint when set (`--entrypoint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Overrides the image's cmd when set (the words after IMAGE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, appended to the image's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Labels put on the container (`--container-label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Signal sent first on stop (`--stop-signal`); SIGTERM when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL (`--stop-grace-period`, default 10s).
    #[serde(default = "default_stop_grace", with = "duration_text")]
    pub stop_grace_period: Duration,
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

/// A mount into the container, as `--mount type=bind,source=/a,target=/b,readonly`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Host path (bind) or volume name (volume); empty for tmpfs and anonymous volumes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
    /// tmpfs size in bytes (`tmpfs-size`); 0 means unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tmpfs_size: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Volume,
    Tmpfs,
}

impl std::fmt::Display for MountType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        })
    }
}

/// CPU and memory: limits are enforced by cgroups, reservations are what the scheduler sets aside on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub limits: Resources,
    #[serde(default)]
    pub reservations: Resources,
}

/// An amount of CPU (in billionths of a CPU, as Docker's NanoCPUs) and memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub memory_bytes: i64,
}

/// When a task that ended is replaced (`--restart-condition`, `--restart-delay`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    #[serde(default)]
    pub condition: RestartCondition,
    #[serde(default = "default_restart_delay", with = "duration_text")]
    pub delay: Duration,
    /// 0 means unlimited.
    #[serde(default)]
    pub max_attempts: u64,
    /// The window in which attempts are counted; zero means forever.
    #[serde(default, with = "duration_text")]
    pub window: Duration,
}

fn default_restart_delay() -> Duration {
    Duration::from_secs(5)
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: default_restart_delay(),
            max_attempts: 0,
            window: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl std::str::FromStr for RestartCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            other => Err(format!("invalid restart condition {other:?} (expected none, on-failure or any)")),
        }
    }
}

/// Where tasks may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Expressions like `node.role==manager`, `node.labels.zone!=east`, parsed when the spec is decoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// At most this many tasks of the service on one node (`--replicas-max-per-node`); 0 means no limit.
    #[serde(default)]
    pub max_replicas: u64,
}
