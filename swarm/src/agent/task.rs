//! One task's life on a node: drives its controller through
//! ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED | SHUTDOWN, reporting every transition,
//! and obeys the desired state (waits at READY while desired is READY; shuts down on SHUTDOWN/REMOVE).
//!
//! The same loop re-adopts a task after an agent restart: it starts from the state the manager last recorded,
//! and the controller's idempotent calls find the container where it is.
//!
//! A task with a health check is gated as SwarmKit gates it: it stays STARTING (health "starting") until a check
//! passes, and only then is reported RUNNING; once unhealthy (before or after RUNNING) it FAILs and its container
//! is stopped, so that the manager replaces it under its restart policy.

use super::exec::{ContainerState, Controller, ExecError, HealthStatus};
use crate::api::dispatch::TaskStatusUpdate;
use crate::api::{ContainerStatus, Health, Task, TaskState, TaskStatus, Timestamp};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

/// The error of a task whose process vanished without an exit status.
pub const PROCESS_GONE: &str = "task process is gone (host restarted?)";

/// The error of a task failed by its health check (followed by the last check's outcome).
pub const UNHEALTHY: &str = "task: container is unhealthy";

/// Sends status reports to whichever session is current.
pub type Reporter = mpsc::UnboundedSender<TaskStatusUpdate>;

struct Runner<C: Controller> {
    ctl: C,
    /// The task's id and the desired state the manager last gave: all the runner reads of the task (a copy of the
    /// whole task in each of a node's thousands of idle runners would cost more than the runner itself).
    task_id: String,
    desired: TaskState,
    status: TaskStatus,
    report: Reporter,
    /// Whether the controller was asked for the health checks yet (once per runner).
    health_asked: bool,
    /// The health checks' verdicts, when the task has a health check.
    health: Option<watch::Receiver<HealthStatus>>,
    /// Whether this runner started the process or already checked the container of a RUNNING task it adopted:
    /// only an adopted task's container is inspected, once.
    seen: bool,
    /// Whether the task's process was stopped since the manager shut the task down.
    stopped: bool,
}

/// The next health verdict. Pending forever once the checks ended (the process exited: `wait` reports that) or
/// when there are none.
async fn next_health(rx: &mut Option<watch::Receiver<HealthStatus>>) -> HealthStatus {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return r.borrow_and_update().clone();
        }
    }
    std::future::pending().await
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
        if state.is_terminal() {
            // Ends the health checks, if any: nothing acts on them any more.
            self.health = None;
        }
        let _ = self.report.send(TaskStatusUpdate { task_id: self.task_id.clone(), status: self.status.clone() });
    }

    fn container(&mut self, pid: u32, exit_code: Option<i32>) {
        let health = self.status.container.as_ref().and_then(|c| c.health);
        self.status.container = Some(ContainerStatus { container_id: self.task_id.clone(), pid, exit_code, health });
    }

    fn health_now(&self) -> Option<Health> {
        self.status.container.as_ref().and_then(|c| c.health)
    }

    fn set_health(&mut self, health: Health) {
        if let Some(c) = self.status.container.as_mut() {
            c.health = Some(health);
        }
    }

    /// The process runs (pid): RUNNING at once without a health check, else STARTING until the check passes.
    async fn started(&mut self, pid: u32) {
        self.seen = true;
        self.container(pid, None);
        if !self.health_asked {
            self.health_asked = true;
            match self.ctl.health().await {
                Ok(h) => self.health = h,
                Err(e) => return self.fail_and_stop("failed", e.to_string()).await,
            }
        }
        match self.health.as_mut().map(|rx| rx.borrow_and_update().clone()) {
            None => self.set(TaskState::Running, "started", None),
            Some(h) => self.on_health(h).await,
        }
    }

    /// Acts on a health verdict: RUNNING once healthy; FAILED (and the container stopped) once unhealthy.
    async fn on_health(&mut self, h: HealthStatus) {
        let state = self.status.state;
        match h.health {
            Health::Starting => {
                // Only a task still STARTING shows "starting": a re-adopted RUNNING task keeps its last verdict
                // until the new checks give one (states only move forward).
                if state == TaskState::Starting && self.health_now() != Some(Health::Starting) {
                    self.set_health(Health::Starting);
                    self.set(TaskState::Starting, "starting", None);
                }
            }
            Health::Healthy => {
                if state == TaskState::Starting || self.health_now() != Some(Health::Healthy) {
                    self.set_health(Health::Healthy);
                    self.set(TaskState::Running, "started", None);
                }
            }
            Health::Unhealthy => {
                self.set_health(Health::Unhealthy);
                let err = if h.last_output.is_empty() {
                    UNHEALTHY.to_string()
                } else {
                    format!("{UNHEALTHY} ({})", h.last_output)
                };
                self.fail_and_stop("unhealthy container", err).await;
            }
        }
    }

    /// FAILs a task whose process still runs, then stops the process: a FAILED task is not run any further, and
    /// nothing else would stop it. Reported first, so that the replacement is not held up by the stop grace
    /// period; the exit code follows as a detail of the same state.
    async fn fail_and_stop(&mut self, message: &str, err: String) {
        self.health = None;
        self.set(TaskState::Failed, message, Some(err.clone()));
        if let Err(e) = self.ctl.shutdown().await {
            tracing::warn!(error = %e, "stopping the failed task's container");
        }
        if let Ok(Some(ContainerState::Exited { exit_code })) = self.ctl.inspect().await {
            let pid = self.status.container.as_ref().map(|c| c.pid).unwrap_or(0);
            self.container(pid, Some(exit_code));
            self.set(TaskState::Failed, message, Some(err));
        }
    }

    /// Stops the task's process, if it has one, retrying with backoff until the runtime says it is done. False
    /// when cancelled first (the task was removed: the removal stops it).
    async fn stop_process(&self, cancel: &CancellationToken) -> bool {
        super::worker::retry("stopping the task's process", cancel, || self.ctl.shutdown()).await
    }

    fn exited(&mut self, code: i32) {
        let pid = self.status.container.as_ref().map(|c| c.pid).unwrap_or(0);
        self.container(pid, Some(code));
        if self.desired > TaskState::Running {
            self.set(TaskState::Shutdown, "shutdown", None);
        } else if code == 0 {
            self.set(TaskState::Complete, "finished", None);
        } else {
            self.set(TaskState::Failed, "task: non-zero exit", Some(format!("task: non-zero exit ({code})")));
        }
    }

    async fn failed(&mut self, e: ExecError) {
        // Failure before STARTING rejects the task: there is no process.
        if self.status.state < TaskState::Starting {
            return self.set(TaskState::Rejected, TaskState::Rejected.name(), Some(e.to_string()));
        }
        // From STARTING on, the error may come with the process running (a start that timed out after the
        // runtime started it, a wait that lost the runtime): a FAILED task is replaced, so it must not run on.
        self.fail_and_stop(TaskState::Failed.name(), e.to_string()).await;
    }

    /// Drives the task until it is terminal, then waits for the cancel (task removed from the node).
    /// Waits for what moves a started task on: its exit, a health verdict, or a new desired state. False when
    /// the runner must stop (cancelled, or the task is gone from the worker).
    async fn watch_running(&mut self, updates: &mut watch::Receiver<Task>, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            r = self.ctl.wait() => match r {
                Ok(exit) => self.exited(exit.exit_code),
                Err(e) => self.failed(e).await,
            },
            h = next_health(&mut self.health) => self.on_health(h).await,
            r = updates.changed() => return r.is_ok(),
        }
        true
    }

    async fn run(mut self, mut updates: watch::Receiver<Task>, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            // `changed()` below marks values seen, so always take the latest.
            self.desired = updates.borrow_and_update().desired_state;
            let desired = self.desired;
            let state = self.status.state;
            if state.is_terminal() {
                // Nothing more to do: the manager replaces ended tasks. Wait for removal. Once the manager shuts
                // the task down, make sure that its process is gone: it may have outlived an error that ended the
                // task (the stop then failed too), and its slot now runs elsewhere.
                if desired > TaskState::Running && !self.stopped {
                    if !self.stop_process(&cancel).await {
                        return;
                    }
                    self.stopped = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = updates.changed() => if r.is_err() { return } else { continue },
                }
            }
            if desired > TaskState::Running {
                // Whatever state the runner holds: a re-adopted task's record may predate its start (the daemon
                // died before the report went out), and SHUTDOWN must never be reported for a process that runs
                // on, since the slot runs elsewhere next. Stopping a task that has no process does nothing.
                if !self.stop_process(&cancel).await {
                    return;
                }
                self.stopped = true;
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
                        Err(e) => self.failed(e).await,
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
                        Ok(pid) => self.started(pid).await,
                        Err(e) => self.failed(e).await,
                    }
                }
                TaskState::Starting if !self.health_asked || self.health.is_none() => match self.ctl.start().await {
                    Ok(pid) => self.started(pid).await,
                    Err(e) => self.failed(e).await,
                },
                TaskState::Starting => {
                    // Health-gated: RUNNING only once a check passed.
                    if !self.watch_running(&mut updates, &cancel).await {
                        return;
                    }
                }
                TaskState::Running if self.seen => {
                    if !self.watch_running(&mut updates, &cancel).await {
                        return;
                    }
                }
                TaskState::Running => {
                    // Re-adoption: is the container still there?
                    self.seen = true;
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
                        Ok(Some(ContainerState::Running { .. })) if !self.health_asked => {
                            // Re-adopted while running: its health checks start again.
                            self.health_asked = true;
                            match self.ctl.health().await {
                                Ok(h) => self.health = h,
                                Err(e) => {
                                    self.fail_and_stop("failed", e.to_string()).await;
                                    continue;
                                }
                            }
                            if let Some(h) = self.health.as_mut().map(|rx| rx.borrow_and_update().clone()) {
                                self.on_health(h).await;
                                continue;
                            }
                        }
                        _ => {}
                    }
                    if !self.watch_running(&mut updates, &cancel).await {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

/// Runs one task until `cancel`; every transition goes to `report`.
pub fn run_task<C: Controller>(
    ctl: C,
    task: Task,
    updates: watch::Receiver<Task>,
    report: Reporter,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let span = tracing::info_span!("task", task.id = %task.id, service.id = %task.service_id);
    // Not an `async fn`: its future would keep `task` alongside the runner's fields for the task's whole life.
    let runner = Runner {
        ctl,
        task_id: task.id,
        desired: task.desired_state,
        status: task.status,
        report,
        health_asked: false,
        health: None,
        seen: false,
        stopped: false,
    };
    runner.run(updates, cancel).instrument(span)
}
