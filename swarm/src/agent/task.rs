//! One task's life on a node: drives its controller through
//! ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED | SHUTDOWN, reporting every transition,
//! and obeys the desired state (waits at READY while desired is READY; shuts down on SHUTDOWN/REMOVE).
//!
//! The same loop re-adopts a task after an agent restart: it starts from the state the manager last recorded,
//! and the controller's idempotent calls find the container where it is.

use super::exec::{ContainerState, Controller, ExecError};
use crate::api::dispatch::TaskStatusUpdate;
use crate::api::{ContainerStatus, Task, TaskState, TaskStatus, Timestamp};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

/// The error of a task whose process vanished without an exit status.
pub const PROCESS_GONE: &str = "task process is gone (host restarted?)";

/// Sends status reports to whichever session is current.
pub type Reporter = mpsc::UnboundedSender<TaskStatusUpdate>;

struct Runner<C: Controller> {
    ctl: C,
    task: Task,
    status: TaskStatus,
    report: Reporter,
}

impl<C: Controller> Runner<C> {
    fn set(&mut self, state: TaskState, message: &str, err: Option<String>) {
        if state != self.status.state {
            info!(from = %self.status.state, to = %state, "task state");
        }
        self.status.state = state;
        self.status.message = message.to_string();
        self.status.err = err.unwrap_or_default();
        self.status.timestamp = Timestamp::now();
        let _ = self.report.send(TaskStatusUpdate { task_id: self.task.id.clone(), status: self.status.clone() });
    }

    fn container(&mut self, pid: u32, exit_code: Option<i32>) {
        self.status.container =
            Some(ContainerStatus { container_id: self.task.id.clone(), pid, exit_code, health: None });
    }

    fn exited(&mut self, code: i32) {
        let pid = self.status.container.as_ref().map(|c| c.pid).unwrap_or(0);
        self.container(pid, Some(code));
        if self.task.desired_state > TaskState::Running {
            self.set(TaskState::Shutdown, "shutdown", None);
        } else if code == 0 {
            self.set(TaskState::Complete, "finished", None);
        } else {
            self.set(TaskState::Failed, "task: non-zero exit", Some(format!("task: non-zero exit ({code})")));
        }
    }

    fn failed(&mut self, e: ExecError) {
        // Failure before STARTING rejects the task; from STARTING on it has failed.
        let state = if self.status.state < TaskState::Starting { TaskState::Rejected } else { TaskState::Failed };
        self.set(state, state.name(), Some(e.to_string()));
    }

    /// Drives the task until it is terminal, then waits for the cancel (task removed from the node).
    async fn run(mut self, mut updates: watch::Receiver<Task>, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            // `changed()` below marks values seen, so always take the latest.
            self.task = updates.borrow_and_update().clone();
            let desired = self.task.desired_state;
            let state = self.status.state;
            if state.is_terminal() {
                // Nothing more to do: the manager replaces ended tasks. Wait for removal.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = updates.changed() => if r.is_err() { return } else { continue },
                }
            }
            if desired > TaskState::Running {
                if state >= TaskState::Starting {
                    if let Err(e) = self.ctl.shutdown().await {
                        tracing::warn!(error = %e, "shutdown failed");
                    }
                }
                let code = match self.ctl.inspect().await {
                    Ok(Some(ContainerState::Exited { exit_code })) => Some(exit_code),
                    _ => None,
                };
                if let Some(c) = code {
                    let pid = self.status.container.as_ref().map(|c| c.pid).unwrap_or(0);
                    self.container(pid, Some(c));
                }
                self.set(TaskState::Shutdown, "shutdown", None);
                continue;
            }
            match state {
                s if s < TaskState::Accepted => self.set(TaskState::Accepted, "accepted", None),
                TaskState::Accepted | TaskState::Preparing => {
                    self.set(TaskState::Preparing, "preparing", None);
                    match self.ctl.prepare().await {
                        Ok(()) => self.set(TaskState::Ready, "prepared", None),
                        Err(e) => self.failed(e),
                    }
                }
                TaskState::Ready => {
                    if desired < TaskState::Running {
                        // Restart delay: wait here until the manager says run.
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            r = updates.changed() => if r.is_err() { return },
                        }
                        continue;
                    }
                    self.set(TaskState::Starting, "starting", None);
                    match self.ctl.start().await {
                        Ok(pid) => {
                            self.container(pid, None);
                            self.set(TaskState::Running, "started", None);
                        }
                        Err(e) => self.failed(e),
                    }
                }
                TaskState::Starting => match self.ctl.start().await {
                    Ok(pid) => {
                        self.container(pid, None);
                        self.set(TaskState::Running, "started", None);
                    }
                    Err(e) => self.failed(e),
                },
                TaskState::Running => {
                    // Re-adoption: is the container still there?
                    match self.ctl.inspect().await {
                        Ok(None) => {
                            self.set(
                                TaskState::Failed,
                                "failed",
                                Some("task container is gone (removed while the agent was down)".into()),
                            );
                            continue;
                        }
                        Ok(Some(ContainerState::Created)) => {
                            // It ran (we reported RUNNING) but has no process and no exit status: the host
                            // restarted under it. Report it; the manager replaces it under its restart policy.
                            // Starting it again in its old container would hide the failure.
                            self.set(TaskState::Failed, "failed", Some(PROCESS_GONE.into()));
                            continue;
                        }
                        _ => {}
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = self.ctl.wait() => match r {
                            Ok(exit) => self.exited(exit.exit_code),
                            Err(e) => self.failed(e),
                        },
                        r = updates.changed() => if r.is_err() { return },
                    }
                }
                _ => return,
            }
        }
    }
}

/// Runs one task until `cancel`; every transition goes to `report`.
pub async fn run_task<C: Controller>(
    ctl: C,
    task: Task,
    updates: watch::Receiver<Task>,
    report: Reporter,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("task", task.id = %task.id, service.id = %task.service_id);
    let status = task.status.clone();
    Runner { ctl, task, status, report }.run(updates, cancel).instrument(span).await
}
