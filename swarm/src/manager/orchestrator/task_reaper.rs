//! The task reaper: keeps at most `task_history_retention_limit` tasks per slot (the live one included, as
//! `docker service ps` shows them), marks the live tasks of deleted services REMOVE, and deletes tasks marked
//! REMOVE once they stopped (or never reached a node, or their node was removed).

use super::{is_live, reconcile_services, Scope};
use crate::api::{Object, ObjectKind, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether a task can be deleted without leaving a container behind that could still be stopped: it ended, never
/// reached a node, or its node was removed from the swarm (no agent will report it again).
fn stopped(view: &MemoryStore, t: &Task) -> bool {
    t.status.state.is_terminal()
        || t.status.state < TaskState::Assigned
        || (!t.node_id.is_empty() && view.node(&t.node_id).is_none())
}

/// Tasks to delete (pure).
pub fn plan(view: &MemoryStore, history_limit: u64) -> Vec<Task> {
    plan_in(view, history_limit, &Scope::everything())
}

/// [`plan`] for the tasks of the services in `scope`.
pub fn plan_in(view: &MemoryStore, history_limit: u64, scope: &Scope) -> Vec<Task> {
    let mut out = Vec::new();
    let mut slots: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in scope.tasks(view) {
        let gone = t.desired_state == TaskState::Remove || view.service(&t.service_id).is_none();
        if gone {
            if stopped(view, t) {
                out.push(t.clone());
            }
            continue;
        }
        if view.service(&t.service_id).is_some_and(|s| super::jobs::is_completion_record(s, t)) {
            continue; // a job's record of a completion: kept whatever the history limit
        }
        let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
        slots.entry((t.service_id.as_str(), t.slot, node)).or_default().push(t);
    }
    for (_, mut tasks) in slots {
        if tasks.len() as u64 <= history_limit {
            continue;
        }
        // Newest first; keep `history_limit`, delete older tasks that are done.
        tasks.sort_by_key(|t| std::cmp::Reverse(t.meta.creation_order()));
        for t in tasks.into_iter().skip(history_limit as usize) {
            if !is_live(t) && stopped(view, t) {
                out.push(t.clone());
            }
        }
    }
    out
}

pub struct TaskReaper {
    store: Store,
}

impl TaskReaper {
    pub fn new(store: Store) -> Self {
        TaskReaper { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interested = |ev: &crate::manager::store::Event| matches!(ev.object, Object::Task(_) | Object::Service(_));
        reconcile_services(
            "task-reaper",
            &self.store.clone(),
            &shutdown,
            Duration::from_millis(250),
            Duration::from_secs(10),
            interested,
            |scope| self.pass(scope),
        )
        .await
    }

    async fn pass(&self, scope: Scope) -> Result<(), StoreError> {
        self.store
            .update(|tx| {
                crate::manager::long_step(|| {
                    let limit =
                        tx.view().cluster().map(|c| c.spec.orchestration.task_history_retention_limit).unwrap_or(5);
                    let view = tx.view();
                    for t in scope.tasks(view).filter(|t| t.desired_state != TaskState::Remove && !stopped(view, t)) {
                        if view.service(&t.service_id).is_none() {
                            let mut t = t.clone();
                            t.desired_state = TaskState::Remove;
                            tx.update(t);
                        }
                    }
                    for t in plan_in(view, limit, &scope) {
                        tx.delete(ObjectKind::Task, &t.id, t.meta.version);
                    }
                    Ok::<_, StoreError>(())
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{service, task};

    #[test]
    fn keeps_history_limit_per_slot() {
        let s = service("s", "web", 1);
        let mut objs: Vec<Object> = vec![s.into()];
        for i in 0..8u64 {
            let mut t = task(&format!("t{i}"), "s", 1);
            t.meta.created_index = 10 + i;
            // The proposers' clocks disagree with the order of creation: they must not matter.
            t.meta.created_at = crate::api::Timestamp(std::time::UNIX_EPOCH + Duration::from_secs(100 - i));
            t.status.state = if i == 7 { TaskState::Running } else { TaskState::Failed };
            t.desired_state = if i == 7 { TaskState::Running } else { TaskState::Shutdown };
            objs.push(t.into());
        }
        let mut deleted: Vec<String> = plan(&MemoryStore::from_objects(objs), 5).into_iter().map(|t| t.id).collect();
        deleted.sort();
        assert_eq!(deleted, vec!["t0", "t1", "t2"]);
    }

    #[test]
    fn tasks_of_removed_nodes_count_as_stopped() {
        // Slot 1's history: 5 ended tasks and, oldest, one shut down on a node removed while it still ran.
        let s = service("s", "web", 1);
        let mut objs: Vec<Object> = vec![s.into(), crate::testing::node("n1", "host-1").into()];
        for i in 0..6u64 {
            let mut t = task(&format!("t{i}"), "s", 1);
            t.meta.created_index = 10 + i;
            t.node_id = if i == 0 { "gone".into() } else { "n1".into() };
            t.status.state = if i == 0 { TaskState::Running } else { TaskState::Failed };
            t.desired_state = TaskState::Shutdown;
            objs.push(t.into());
        }
        let deleted: Vec<String> =
            plan(&MemoryStore::from_objects(objs.clone()), 5).into_iter().map(|t| t.id).collect();
        assert_eq!(deleted, vec!["t0"]);
        // On a node that still exists, the same task waits for its agent to stop it.
        if let Object::Task(t) = &mut objs[2] {
            std::sync::Arc::make_mut(t).node_id = "n1".into();
        }
        assert!(plan(&MemoryStore::from_objects(objs), 5).is_empty());
    }

    #[test]
    fn keeps_a_jobs_completions_of_the_current_run_whatever_the_limit() {
        let mut s = service("s", "job", 0);
        s.spec.mode = crate::api::ServiceMode::ReplicatedJob { max_concurrent: 1, total_completions: 1 };
        s.spec_version = 2;
        let ended = |id: &str, index, state, run| {
            let mut t = task(id, "s", 1);
            t.meta.created_index = index;
            t.status.state = state;
            t.desired_state = if state == TaskState::Complete { TaskState::Complete } else { TaskState::Shutdown };
            t.job_iteration = Some(run);
            t
        };
        let objs: Vec<Object> = vec![
            s.into(),
            ended("old-run", 10, TaskState::Complete, 1).into(),
            ended("failed", 11, TaskState::Failed, 2).into(),
            ended("done", 12, TaskState::Complete, 2).into(),
        ];
        let mut deleted: Vec<String> = plan(&MemoryStore::from_objects(objs), 0).into_iter().map(|t| t.id).collect();
        deleted.sort();
        assert_eq!(deleted, vec!["failed", "old-run"], "the current run's completion stays");
    }

    #[test]
    fn removes_stopped_tasks_marked_remove() {
        let s = service("s", "web", 1);
        let mut running = task("a", "s", 1);
        running.status.state = TaskState::Running;
        running.desired_state = TaskState::Remove;
        let mut done = task("b", "s", 2);
        done.status.state = TaskState::Shutdown;
        done.desired_state = TaskState::Remove;
        let view = MemoryStore::from_objects(vec![Object::from(s), running.into(), done.into()]);
        let deleted: Vec<String> = plan(&view, 5).into_iter().map(|t| t.id).collect();
        assert_eq!(deleted, vec!["b"]);
    }
}
