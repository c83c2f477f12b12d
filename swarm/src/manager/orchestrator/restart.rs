//! The restart supervisor: when a live task ends, it shuts the old task down (desired SHUTDOWN) and, if the
//! service's restart policy allows, creates its replacement in the same slot (or on the same node, for global
//! services). The replacement waits at desired READY for `--restart-delay`, then is set to RUNNING.
//!
//! Attempts are counted per slot in memory over `--restart-window`, as SwarmKit does; a new leader starts
//! counting afresh.
//!
//! Beyond Swarm, `--restart-max-delay` makes the delay back off: it doubles for each consecutive failure of the
//! slot (counted from the slot's task history in the store, so a new leader agrees), up to that cap.

use super::new_task;
use super::update::{has_stopped, SlotKey as UpdateSlot};
use crate::api::{RestartCondition, RestartPolicy, Service, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError, WriteTx};
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

/// The delay before the replacement of a slot's task starts, `failures` being how many of the slot's tasks failed
/// in a row up to now (pure): `delay`, doubled for each failure after the first when `max_delay` is set, and
/// never more than `max_delay` (nor less than `delay`).
pub fn restart_delay(policy: &RestartPolicy, failures: u32) -> Duration {
    if policy.max_delay.is_zero() || failures <= 1 {
        return policy.delay;
    }
    let factor = 2u32.checked_pow(failures - 1).unwrap_or(u32::MAX);
    policy.delay.saturating_mul(factor).min(policy.max_delay.max(policy.delay))
}

/// How many tasks of `t`'s slot created before it failed (or were rejected) in a row, the newest first (pure).
pub fn failures_before(view: &MemoryStore, t: &Task) -> u32 {
    let key = UpdateSlot::of(t);
    let mut history: Vec<&Task> = view
        .tasks_by_service(&t.service_id)
        .filter(|o| o.id != t.id && UpdateSlot::of(o) == key && o.meta.creation_order() < t.meta.creation_order())
        .collect();
    history.sort_by_key(|o| std::cmp::Reverse(o.meta.creation_order()));
    history.iter().take_while(|o| matches!(o.status.state, TaskState::Failed | TaskState::Rejected)).count() as u32
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
        let failed = matches!(task.status.state, TaskState::Failed | TaskState::Rejected);
        // A task that completed ends the streak.
        let failures = if failed { failures_before(tx.view(), task) + 1 } else { 0 };
        let delay = restart_delay(policy, failures);
        let delayed = !delay.is_zero();
        let desired = if delayed { TaskState::Ready } else { TaskState::Running };
        let node = if task.slot == 0 { task.node_id.as_str() } else { "" };
        let mut replacement = new_task(service, task.slot, node, desired);
        // A job's replacement belongs to the same run of the job.
        replacement.job_iteration = task.job_iteration;
        tracing::info!(service.id = %service.id, task.id = %task.id, replacement = %replacement.id,
            delay = ?delay, failures, "task ended; replacing it");
        let id = replacement.id.clone();
        tx.create(replacement);
        delayed.then_some((id, delay))
    }

    /// Handles every live task that ended, of the services `mode` selects. Returns the replacements to start
    /// later and the services touched (their slots are reconciled on the next pass, which sees the replacements).
    pub fn restart_ended(
        &self,
        tx: &mut WriteTx,
        mode: impl Fn(&crate::api::ServiceMode) -> bool,
    ) -> (Vec<(String, Duration)>, std::collections::BTreeSet<String>) {
        self.restart_ended_in(tx, mode, &super::Scope::everything())
    }

    /// [`RestartSupervisor::restart_ended`] for the services in `scope` only.
    pub fn restart_ended_in(
        &self,
        tx: &mut WriteTx,
        mode: impl Fn(&crate::api::ServiceMode) -> bool,
        scope: &super::Scope,
    ) -> (Vec<(String, Duration)>, std::collections::BTreeSet<String>) {
        let view = tx.view();
        let mut delayed = Vec::new();
        let mut touched = std::collections::BTreeSet::new();
        for t in scope.tasks(view) {
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
            set_running(&store, &task_id).await;
        });
    }

    /// On becoming leader: replacements left waiting by a previous leader are started after what is left of
    /// their delay. A task waiting at READY while an older task of its slot is still stopping is a stop-first
    /// update's replacement: it starts once that task stopped (the updater, resuming, may start it first).
    pub fn resume_delayed(&self, store: &Store, shutdown: &CancellationToken) {
        let (delayed, updates): (Vec<(String, Duration)>, Vec<String>) = store.view(|v| {
            let mut delayed = Vec::new();
            let mut updates = Vec::new();
            for t in v.tasks_by_desired_state(TaskState::Ready) {
                if slot_is_stopping(v, t) {
                    updates.push(t.id.clone());
                } else {
                    let full = restart_delay(&t.spec.restart_policy, failures_before(v, t));
                    delayed.push((t.id.clone(), full.saturating_sub(t.meta.created_at.elapsed())));
                }
            }
            (delayed, updates)
        });
        for (id, delay) in delayed {
            self.start_after(store.clone(), id, delay, shutdown.clone());
        }
        for id in updates {
            let (store, shutdown) = (store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut events = store.watch();
                loop {
                    let stopped = store.view(|v| v.task(&id).is_none_or(|t| !slot_is_stopping(v, t)));
                    if stopped {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = events.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                set_running(&store, &id).await;
            });
        }
    }
}

/// Sets a replacement waiting at READY to desired RUNNING (unless something else moved it meanwhile).
async fn set_running(store: &Store, task_id: &str) {
    for _ in 0..10 {
        let r = store
            .update(|tx| {
                if let Some(t) = tx.view().task(task_id) {
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
}

/// Whether another task of `t`'s slot was asked to stop and has not stopped yet.
fn slot_is_stopping(v: &MemoryStore, t: &Task) -> bool {
    let key = UpdateSlot::of(t);
    v.tasks_by_service(&t.service_id)
        .any(|o| o.id != t.id && UpdateSlot::of(o) == key && o.desired_state > TaskState::Running && !has_stopped(v, o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::service;

    #[test]
    fn backoff_doubles_per_consecutive_failure_and_caps() {
        let mut p = RestartPolicy { delay: Duration::from_secs(1), ..Default::default() };
        assert_eq!(restart_delay(&p, 4), Duration::from_secs(1), "no max delay: no back-off");
        p.max_delay = Duration::from_secs(10);
        let delays: Vec<u64> = (0..=6).map(|n| restart_delay(&p, n).as_secs()).collect();
        assert_eq!(delays, vec![1, 1, 2, 4, 8, 10, 10]);
        assert_eq!(restart_delay(&p, 200), Duration::from_secs(10), "no overflow");
        p.max_delay = Duration::from_millis(500);
        assert_eq!(restart_delay(&p, 3), Duration::from_secs(1), "a cap below the delay keeps the delay");
    }

    #[tokio::test]
    async fn backoff_counts_the_slots_failures_from_the_store() {
        let store = Store::in_memory();
        let mut s = service("s", "web", 1);
        s.spec.task_template.restart_policy.delay = Duration::from_millis(100);
        s.spec.task_template.restart_policy.max_delay = Duration::from_millis(500);
        store
            .update(|tx| {
                tx.create(s.clone());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let sup = RestartSupervisor::new();
        let first = new_task(&s, 1, "", TaskState::Running);
        let mut current = first.id.clone();
        store
            .update(|tx| {
                tx.create(first);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let mut delays = Vec::new();
        for i in 0..6 {
            // The current task ends: failed, except the 4th time, which completes and resets the streak.
            let state = if i == 3 { TaskState::Complete } else { TaskState::Failed };
            let mut t = store.view(|v| v.task(&current).cloned().unwrap());
            t.status.state = state;
            t.desired_state = TaskState::Running;
            store
                .update(|tx| {
                    tx.update(t);
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
            let (delayed, _) = store.update(|tx| Ok::<_, StoreError>(sup.restart_ended(tx, |_| true))).await.unwrap();
            let (id, delay) = delayed.into_iter().next().expect("a delayed replacement");
            delays.push(delay.as_millis() as u64);
            current = id;
        }
        assert_eq!(delays, vec![100, 200, 400, 100, 100, 200]);
        // A new leader resumes the waiting replacement with the backed-off delay (minus its age).
        let waiting = store.view(|v| v.task(&current).cloned().unwrap());
        assert_eq!(waiting.desired_state, TaskState::Ready);
        assert_eq!(store.view(|v| failures_before(v, &waiting)), 2);
    }

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
