//! The restart supervisor: when a live task ends, it shuts the old task down (desired SHUTDOWN) and, if the
//! service's restart policy allows, creates its replacement in the same slot (or on the same node, for global
//! services). The replacement waits at desired READY for `--restart-delay`, then is set to RUNNING.
//!
//! Attempts are counted per slot in memory over `--restart-window`, as SwarmKit does; a new leader starts
//! counting afresh.

use super::new_task;
use crate::api::{RestartCondition, Service, Task, TaskState};
use crate::manager::store::{Store, StoreError, WriteTx};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A slot: (service id, slot) for replicated tasks, (service id, node id) for global ones.
type SlotKey = (String, String);

fn slot_key(t: &Task) -> SlotKey {
    if t.slot > 0 {
        (t.service_id.clone(), t.slot.to_string())
    } else {
        (t.service_id.clone(), t.node_id.clone())
    }
}

#[derive(Default)]
pub struct RestartSupervisor {
    history: Mutex<HashMap<SlotKey, Vec<Instant>>>,
}

/// Whether a task that ended in `state` is to be replaced, given the policy and past attempts (pure).
pub fn should_restart(service: &Service, state: TaskState, attempts_in_window: u64) -> bool {
    let policy = &service.spec.task_template.restart_policy;
    let condition_ok = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => state != TaskState::Complete,
        // A job's task that completed is done: `any` means `on-failure` for jobs (as SwarmKit).
        RestartCondition::Any => !(service.spec.mode.is_job() && state == TaskState::Complete),
    };
    condition_ok && (policy.max_attempts == 0 || attempts_in_window < policy.max_attempts)
}

impl RestartSupervisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn attempts(&self, key: &SlotKey, window: Duration) -> u64 {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        match h.get(key) {
            Some(times) if window.is_zero() => times.len() as u64,
            Some(times) => times.iter().filter(|t| t.elapsed() <= window).count() as u64,
            None => 0,
        }
    }

    fn record(&self, key: SlotKey) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.entry(key).or_default().push(Instant::now());
    }

    /// Handles a live task that ended: writes the shutdown and the replacement into `tx`. Returns the replacement
    /// and its delay when it must be started later.
    pub fn restart(&self, tx: &mut WriteTx, service: &Service, task: &Task) -> Option<(String, Duration)> {
        let mut old = task.clone();
        old.desired_state = TaskState::Shutdown;
        tx.update(old);
        let policy = &service.spec.task_template.restart_policy;
        let key = slot_key(task);
        if !should_restart(service, task.status.state, self.attempts(&key, policy.window)) {
            tracing::info!(service.id = %service.id, task.id = %task.id, state = %task.status.state,
                "task ended; restart policy does not replace it");
            return None;
        }
        self.record(key);
        let delayed = !policy.delay.is_zero();
        let desired = if delayed { TaskState::Ready } else { TaskState::Running };
        let node = if task.slot == 0 { task.node_id.as_str() } else { "" };
        let mut replacement = new_task(service, task.slot, node, desired);
        // A job's replacement belongs to the same run of the job.
        replacement.job_iteration = task.job_iteration;
        tracing::info!(service.id = %service.id, task.id = %task.id, replacement = %replacement.id,
            delay = ?policy.delay, "task ended; replacing it");
        let id = replacement.id.clone();
        tx.create(replacement);
        delayed.then_some((id, policy.delay))
    }

    /// Handles every live task that ended, of the services `mode` selects. Returns the replacements to start
    /// later and the services touched (their slots are reconciled on the next pass, which sees the replacements).
    pub fn restart_ended(
        &self,
        tx: &mut WriteTx,
        mode: impl Fn(&crate::api::ServiceMode) -> bool,
    ) -> (Vec<(String, Duration)>, std::collections::BTreeSet<String>) {
        let view = tx.view();
        let mut delayed = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        for t in view.tasks() {
            let Some(service) = view.service(&t.service_id) else { continue };
            if mode(&service.spec.mode) && t.desired_state <= TaskState::Running && t.status.state.is_terminal() {
                delayed.extend(self.restart(tx, service, t));
                touched.insert(service.id.clone());
            }
        }
        (delayed, touched)
    }

    /// Sets a waiting replacement to RUNNING after `delay` (unless the leader steps down first).
    pub fn start_after(&self, store: Store, task_id: String, delay: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            for _ in 0..10 {
                let r = store
                    .update(|tx| {
                        if let Some(t) = tx.view().task(&task_id) {
                            if t.desired_state == TaskState::Ready {
                                let mut t = t.clone();
                                t.desired_state = TaskState::Running;
                                tx.update(t);
                            }
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await;
                match r {
                    Ok(()) => return,
                    Err(e) if e.is_out_of_sequence() => continue,
                    Err(e) => {
                        tracing::warn!(task.id = %task_id, error = %e, "could not start delayed task");
                        return;
                    }
                }
            }
        });
    }

    /// On becoming leader: replacements left waiting by a previous leader are started after what is left of
    /// their delay.
    pub fn resume_delayed(&self, store: &Store, shutdown: &CancellationToken) {
        let waiting: Vec<(String, Duration)> = store.view(|v| {
            v.tasks_by_desired_state(TaskState::Ready)
                .map(|t| {
                    let delay = t.spec.restart_policy.delay.saturating_sub(t.meta.created_at.elapsed());
                    (t.id.clone(), delay)
                })
                .collect()
        });
        for (id, delay) in waiting {
            self.start_after(store.clone(), id, delay, shutdown.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::service;

    #[test]
    fn conditions_and_attempts() {
        let mut s = service("s", "web", 1);
        assert!(should_restart(&s, TaskState::Complete, 0));
        s.spec.task_template.restart_policy.condition = RestartCondition::OnFailure;
        assert!(!should_restart(&s, TaskState::Complete, 0));
        assert!(should_restart(&s, TaskState::Failed, 0));
        s.spec.task_template.restart_policy.max_attempts = 2;
        assert!(should_restart(&s, TaskState::Failed, 1));
        assert!(!should_restart(&s, TaskState::Failed, 2));
        s.spec.task_template.restart_policy.condition = RestartCondition::None;
        assert!(!should_restart(&s, TaskState::Failed, 0));
    }

    #[test]
    fn a_jobs_completed_task_is_never_restarted() {
        let mut s = service("s", "job", 0);
        s.spec.mode = crate::api::ServiceMode::ReplicatedJob { max_concurrent: 1, total_completions: 1 };
        assert_eq!(s.spec.task_template.restart_policy.condition, RestartCondition::Any);
        assert!(!should_restart(&s, TaskState::Complete, 0));
        assert!(should_restart(&s, TaskState::Failed, 0));
    }
}
