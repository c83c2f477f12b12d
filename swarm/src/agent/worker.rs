//! The worker: keeps one task runner per assigned task, applies assignment sets and deltas, and cleans up what
//! is no longer assigned (the runner is stopped, the container killed and deleted). It outlives dispatcher
//! sessions, so tasks keep running while the agent reconnects.

use super::exec::{Controller, Executor};
use super::task::{run_task, Reporter};
use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};
use crate::api::Task;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Managed {
    updates: watch::Sender<Task>,
    cancel: CancellationToken,
}

pub struct Worker<E: Executor> {
    executor: Arc<E>,
    report: Reporter,
    tasks: HashMap<String, Managed>,
    /// Orphans are swept once, after the first complete set of a run.
    swept: bool,
}

impl<E: Executor> Worker<E> {
    pub fn new(executor: Arc<E>, report: Reporter) -> Self {
        Worker { executor, report, tasks: HashMap::new(), swept: false }
    }

    pub fn task_ids(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    pub async fn apply(&mut self, msg: AssignmentsMessage) {
        match msg.kind {
            AssignmentsKind::Complete => {
                let keep: HashSet<String> = msg.updated.iter().map(|t| t.id.clone()).collect();
                let gone: Vec<String> = self.tasks.keys().filter(|id| !keep.contains(*id)).cloned().collect();
                for id in gone {
                    self.remove(&id);
                }
                for t in msg.updated {
                    self.update(t);
                }
                if !self.swept {
                    self.swept = true;
                    self.sweep_orphans(&keep).await;
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

    fn update(&mut self, task: Task) {
        if let Some(m) = self.tasks.get(&task.id) {
            m.updates.send_replace(task);
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
        tokio::spawn(run_task(ctl, task.clone(), rx, self.report.clone(), cancel.clone()));
        self.tasks.insert(task.id.clone(), Managed { updates: tx, cancel });
    }

    /// Stops a task's runner and deletes its container in the background.
    fn remove(&mut self, id: &str) {
        let Some(m) = self.tasks.remove(id) else { return };
        m.cancel.cancel();
        let task = m.updates.borrow().clone();
        let executor = self.executor.clone();
        tokio::spawn(async move {
            match executor.controller(&task) {
                Ok(ctl) => {
                    if let Err(e) = ctl.shutdown().await {
                        tracing::warn!(task.id = %task.id, error = %e, "stopping removed task");
                    }
                    if let Err(e) = ctl.remove().await {
                        tracing::warn!(task.id = %task.id, error = %e, "removing task container");
                    }
                }
                Err(e) => tracing::warn!(task.id = %task.id, error = %e, "cannot build a controller"),
            }
        });
    }

    /// Deletes containers the runtime holds for tasks this node no longer has.
    async fn sweep_orphans(&self, keep: &HashSet<String>) {
        match self.executor.list_tasks().await {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !keep.contains(id)) {
                    tracing::info!(task.id = %id, "removing orphaned container");
                    if let Err(e) = self.executor.remove_task(&id).await {
                        tracing::warn!(task.id = %id, error = %e, "removing orphaned container");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing containers"),
        }
    }

    /// Stops every runner (the containers keep running; the next agent re-adopts them).
    pub fn stop(&mut self) {
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
                let task = m.updates.borrow().clone();
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
