//! The boundary between the agent and a container runtime. The agent drives one [`Controller`] per task through
//! prepare → start → wait, and shutdown/terminate/remove when the task's desired state says so. The engine
//! implements this with containerd (`engine::executor::ContainerdExecutor`); unit tests and the scale simulator use
//! `crate::testing::TestExecutor`.
//!
//! Every method is idempotent, so an agent that restarts can run a controller again over a container that
//! already exists (re-adoption): `prepare` on an existing container succeeds, `start` on a running task succeeds,
//! `wait` attaches to a task that is already running or reports the exit of one that already stopped.

use crate::api::logs::{LogsOptions, TaskLogLine};
use crate::api::{Health, NetworkState, NodeDescription, Task, TaskFiles};
use std::future::Future;
use tokio::sync::{mpsc, watch};

/// Errors a runtime reports. The message is what `service ps` shows in its ERROR column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The task's image is not in the node's image store.
    #[error("No such image: {0}")]
    ImageNotFound(String),
    /// The task spec cannot be turned into a container (bad mount, bad user…).
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    /// The task has no container (e.g. `wait` before `prepare`).
    #[error("container for task {0} does not exist")]
    NotFound(String),
    /// Anything the runtime itself failed at.
    #[error("{0}")]
    Runtime(String),
}

/// The state of a task's container as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// The container exists but its process was never started.
    Created,
    Running {
        pid: u32,
    },
    Exited {
        exit_code: i32,
    },
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub exit_code: i32,
}

/// A health-checked container's health, as its checks last decided it (Docker's `State.Health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStatus {
    pub health: Health,
    /// Consecutive failed checks (failures within the start period do not count).
    pub failing_streak: u64,
    /// The last check's outcome in one line ("exit 1: …", "timed out after 1s"); the unhealthy error shows it.
    pub last_output: String,
}

impl HealthStatus {
    /// A container whose checks have not passed yet.
    pub fn starting() -> Self {
        HealthStatus { health: Health::Starting, failing_streak: 0, last_output: String::new() }
    }
}

/// A container runtime on one node.
pub trait Executor: Send + Sync + 'static {
    type Controller: Controller;

    /// What the node reports of itself when its dispatcher session opens.
    fn describe(&self) -> impl Future<Output = Result<NodeDescription, ExecError>> + Send;

    /// A controller for `task`. Does no I/O; the controller does its work when driven.
    fn controller(&self, task: &Task) -> Result<Self::Controller, ExecError>;

    /// Ids of the tasks that have containers on this node, running or not.
    fn list_tasks(&self) -> impl Future<Output = Result<Vec<String>, ExecError>> + Send;

    /// Kills and deletes whatever the runtime holds for a task the agent no longer knows (an orphan).
    fn remove_task(&self, task_id: &str) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Applies the node's network state (as the dispatcher last sent it): overlays, remote endpoints, DNS
    /// records, VIP backends, published ports. Called before the tasks of the same message are handed to their
    /// runners, so a task's controller finds its networks in place. Runtimes without networking accept and
    /// ignore it.
    fn apply_network_state(&self, state: &NetworkState) -> impl Future<Output = Result<(), ExecError>> + Send {
        let _ = state;
        std::future::ready(Ok(()))
    }

    /// Holds the secrets and configs the node's tasks use (the whole set, each time it changes), in memory: a
    /// task's controller mounts those its spec references when it prepares. Runtimes that mount nothing accept
    /// and ignore it.
    fn apply_task_files(&self, files: &TaskFiles) -> impl Future<Output = Result<(), ExecError>> + Send {
        let _ = files;
        std::future::ready(Ok(()))
    }

    /// Reads the logs of `task_ids` (containers on this node, running or not): their existing lines (the last
    /// `tail` of each, none before `since`) merged by time, then, when `follow`, new lines as they are written
    /// until the receiver is dropped. A task without logs yields nothing (and, when following, its lines once it
    /// writes some). Runtimes that keep no logs refuse.
    fn logs(
        &self,
        task_ids: &[String],
        opts: &LogsOptions,
    ) -> impl Future<Output = Result<mpsc::Receiver<TaskLogLine>, ExecError>> + Send {
        let _ = (task_ids, opts);
        std::future::ready(Err(ExecError::Runtime("this runtime keeps no logs".into())))
    }
}

/// Drives one task's container.
pub trait Controller: Send + Sync + 'static {
    /// Checks the image and creates the container (a no-op if it exists).
    fn prepare(&self) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Starts the container's process (a no-op if it runs); returns its pid. A container's process runs once:
    /// if it already exited this returns 0 (`wait` reports the exit); if it was lost, an error.
    fn start(&self) -> impl Future<Output = Result<u32, ExecError>> + Send;

    /// Waits until the process exits, and releases what only a running process needs (the runtime's task, its
    /// shim and log copier); what `inspect` and the logs need stays until `remove`.
    fn wait(&self) -> impl Future<Output = Result<ExitStatus, ExecError>> + Send;

    /// Stops the process: the stop signal, then SIGKILL after the grace period. A no-op if it is not running.
    fn shutdown(&self) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Kills the process at once.
    fn terminate(&self) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Deletes the container, its filesystem, its logs and its anonymous volumes.
    fn remove(&self) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// The container's state, or `None` if there is no container. `Created` for a container whose process was
    /// started once means the process is gone without an exit status (the host restarted).
    fn inspect(&self) -> impl Future<Output = Result<Option<ContainerState>, ExecError>> + Send;

    /// Starts the health checks of the started container, if its task has one (the spec's merged over the
    /// image's), and returns their verdicts: [`Health::Starting`] until a check passes, then a new value each
    /// time the health changes. The checks stop when the receiver is dropped or the process ends. `None`: the
    /// task has no health check (the default, for runtimes without checks). The runner calls it once, after
    /// `start` or when it re-adopts a running task.
    fn health(&self) -> impl Future<Output = Result<Option<watch::Receiver<HealthStatus>>, ExecError>> + Send {
        std::future::ready(Ok(None))
    }
}
