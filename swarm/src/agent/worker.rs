//! The worker: keeps one task runner per assigned task, applies assignment sets and deltas, and cleans up what
//! is no longer assigned (the runner is stopped, the container killed and deleted). It outlives dispatcher
//! sessions, so tasks keep running while the agent reconnects.
//!
//! Removal and the orphan sweep run on tasks of their own and retry failures with backoff until they succeed,
//! so a slow or failing runtime never holds up the session (heartbeats, assignments). A removed task is never
//! run again, and its container is deleted only once its runner has finished the step it was in, so a
//! `prepare` in flight cannot create a container after the removal ran.

use super::exec::{Controller, ExecError, Executor};
use super::task::{run_task, Reporter};
use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage, FilesDelta, HeldTask};
use crate::api::{Task, TaskFiles};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// First wait before retrying a failed removal; doubled on each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How many removed task ids are remembered (tombstones); ids are never reused, this only bounds memory.
const TOMBSTONES: usize = 10_000;

struct Managed {
    updates: watch::Sender<Task>,
    cancel: CancellationToken,
    runner: JoinHandle<()>,
}

pub struct Worker<E: Executor> {
    executor: Arc<E>,
    report: Reporter,
    tasks: HashMap<String, Managed>,
    /// Ids of tasks with a runner or a removal in flight: the orphan sweep leaves their containers alone.
    live: Arc<Mutex<HashSet<String>>>,
    /// Tasks whose removal began: an assignment naming one again does not start it.
    removed: HashSet<String>,
    removed_order: VecDeque<String>,
    /// Orphans are swept once, after the first complete set of a run.
    swept: bool,
    /// Ends removal retries and the sweep when the agent stops.
    stopping: CancellationToken,
    /// The secrets and configs the node's tasks use, in memory only (the executor gets the whole set).
    files: TaskFiles,
}

impl<E: Executor> Worker<E> {
    pub fn new(executor: Arc<E>, report: Reporter) -> Self {
        Worker {
            executor,
            report,
            tasks: HashMap::new(),
            live: Arc::default(),
            removed: HashSet::new(),
            removed_order: VecDeque::new(),
            swept: false,
            stopping: CancellationToken::new(),
            files: TaskFiles::default(),
        }
    }

    pub fn task_ids(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    /// Ids of the tasks of `service_id` this worker runs (for logs followed across new tasks).
    pub fn task_ids_of_service(&self, service_id: &str) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(_, m)| m.updates.borrow().service_id == service_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub async fn apply(&mut self, msg: AssignmentsMessage) {
        // The dataplane first: a task's controller expects its networks in place. A failure is logged and the
        // tasks still go on (the executor reconciles its network state on its own and a task whose network is
        // missing fails in prepare with the reason).
        if let Some(state) = &msg.network_state {
            if let Err(e) = self.executor.apply_network_state(state).await {
                tracing::warn!(error = %e, "applying the network state failed");
            }
        }
        // Then the secrets and configs, which a task's controller mounts when it prepares.
        let files = files_after(&self.files, msg.kind, msg.files);
        if files != self.files {
            self.files = files;
            if let Err(e) = self.executor.apply_task_files(&self.files).await {
                tracing::warn!(error = %e, "handing the secrets and configs to the runtime failed");
            }
        }
        match msg.kind {
            AssignmentsKind::Complete => {
                let keep: HashSet<String> =
                    msg.updated.iter().map(|t| t.id.clone()).chain(msg.kept.iter().cloned()).collect();
                if let Some(id) = msg.kept.iter().find(|id| !self.tasks.contains_key(*id)) {
                    // The manager keeps only tasks this node named, and no message came between: a bug if seen.
                    tracing::warn!(task.id = %id, "the manager kept a task this node does not hold");
                }
                let gone: Vec<String> = self.tasks.keys().filter(|id| !keep.contains(*id)).cloned().collect();
                for id in gone {
                    self.remove(&id);
                }
                for t in msg.updated {
                    self.update(t);
                }
                if !self.swept {
                    self.swept = true;
                    self.spawn_sweep();
                }
            }
            AssignmentsKind::Incremental => {
                for id in msg.removed {
                    self.remove(&id);
                }
                for t in msg.updated {
                    self.update(t);
                }
            }
        }
    }

    /// The tasks this node holds, each with the digest of what it acts on, for a new session's assignments
    /// request.
    pub fn held(&self) -> Vec<HeldTask> {
        let named =
            |(id, m): (&String, &Managed)| HeldTask { id: id.clone(), digest: m.updates.borrow().assignment_digest() };
        self.tasks.iter().map(named).collect()
    }

    fn update(&mut self, task: Task) {
        if let Some(m) = self.tasks.get(&task.id) {
            // A resync repeats every task, mostly with only the status the agent itself reported changed: the
            // runner is woken only by what it acts on (the desired state), so a resync costs no runtime calls.
            m.updates.send_if_modified(|cur| {
                let wake = cur.desired_state != task.desired_state;
                *cur = task;
                wake
            });
            return;
        }
        if self.removed.contains(&task.id) {
            tracing::debug!(task.id = %task.id, "ignoring an assignment of a removed task");
            return;
        }
        let ctl = match self.executor.controller(&task) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(task.id = %task.id, error = %e, "cannot build a controller");
                return;
            }
        };
        let (tx, rx) = watch::channel(task.clone());
        let cancel = CancellationToken::new();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(task.id.clone());
        let runner = tokio::spawn(run_task(ctl, task.clone(), rx, self.report.clone(), cancel.clone()));
        self.tasks.insert(task.id.clone(), Managed { updates: tx, cancel, runner });
    }

    fn tombstone(&mut self, id: &str) {
        if self.removed.insert(id.to_string()) {
            self.removed_order.push_back(id.to_string());
            if self.removed_order.len() > TOMBSTONES {
                if let Some(old) = self.removed_order.pop_front() {
                    self.removed.remove(&old);
                }
            }
        }
    }

    /// Stops a task's runner and deletes its container in the background, retrying until it is gone.
    fn remove(&mut self, id: &str) {
        let Some(m) = self.tasks.remove(id) else { return };
        m.cancel.cancel();
        self.tombstone(id);
        let task = m.updates.borrow().clone();
        let executor = self.executor.clone();
        let live = self.live.clone();
        let stopping = self.stopping.clone();
        let span = tracing::info_span!("remove", task.id = %task.id, service.id = %task.service_id);
        tokio::spawn(
            async move {
                // The runner ends after the step it is in; a prepare in flight may still create the container,
                // which is why the removal waits for it.
                let _ = m.runner.await;
                match executor.controller(&task) {
                    Ok(ctl) => {
                        if let Err(e) = ctl.shutdown().await {
                            tracing::warn!(error = %e, "stopping removed task");
                        }
                        retry("removing task container", &stopping, || ctl.remove()).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build a controller; removing by id");
                        retry("removing task container", &stopping, || executor.remove_task(&task.id)).await;
                    }
                }
                live.lock().unwrap_or_else(|e| e.into_inner()).remove(&task.id);
            }
            .instrument(span),
        );
    }

    /// Deletes, in the background, containers the runtime holds for tasks this node no longer has.
    fn spawn_sweep(&self) {
        let executor = self.executor.clone();
        let live = self.live.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut backoff = RETRY_FIRST;
            let ids = loop {
                match executor.list_tasks().await {
                    Ok(ids) => break ids,
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "listing containers"),
                }
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            };
            // A task assigned since is live; its container was not in the list unless it was live already.
            let mut left: Vec<String> = {
                let live = live.lock().unwrap_or_else(|e| e.into_inner());
                ids.into_iter().filter(|id| !live.contains(id)).collect()
            };
            for id in &left {
                tracing::info!(task.id = %id, "removing orphaned container");
            }
            backoff = RETRY_FIRST;
            while !left.is_empty() {
                let mut failed = Vec::new();
                for id in std::mem::take(&mut left) {
                    if let Err(e) = executor.remove_task(&id).await {
                        tracing::warn!(task.id = %id, error = %e, retry_in = ?backoff, "removing orphaned container");
                        failed.push(id);
                    }
                }
                left = failed;
                if left.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        });
    }

    /// Stops every runner (the containers keep running; the next agent re-adopts them), and any removal still
    /// retrying (the next agent's orphan sweep finishes it).
    pub fn stop(&mut self) {
        self.stopping.cancel();
        for (_, m) in self.tasks.drain() {
            m.cancel.cancel();
        }
    }

    /// Stops and deletes every task's container (leaving the swarm).
    pub async fn remove_all(&mut self) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            if let Some(m) = self.tasks.remove(&id) {
                m.cancel.cancel();
                self.tombstone(&id);
                let task = m.updates.borrow().clone();
                let _ = m.runner.await;
                if let Ok(ctl) = self.executor.controller(&task) {
                    let _ = ctl.terminate().await;
                    let _ = ctl.remove().await;
                }
            }
        }
        if let Ok(ids) = self.executor.list_tasks().await {
            for id in ids {
                let _ = self.executor.remove_task(&id).await;
            }
        }
    }
}

/// The node's secrets and configs after a message's changes: a `Complete` message's set replaces them.
fn files_after(cur: &TaskFiles, kind: AssignmentsKind, delta: FilesDelta) -> TaskFiles {
    let mut next = if kind == AssignmentsKind::Complete { TaskFiles::default() } else { cur.clone() };
    for id in &delta.removed_secrets {
        next.secrets.remove(id);
    }
    for id in &delta.removed_configs {
        next.configs.remove(id);
    }
    next.secrets.extend(delta.secrets.into_iter().map(|p| (p.id.clone(), p)));
    next.configs.extend(delta.configs.into_iter().map(|p| (p.id.clone(), p)));
    next
}

/// Runs `f` until it succeeds, waiting longer after each failure (from 200 ms, doubling up to 30 s); false if
/// `stop` came first.
pub(super) async fn retry<F, Fut>(what: &str, stop: &CancellationToken, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ExecError>>,
{
    let mut backoff = RETRY_FIRST;
    loop {
        match f().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}
