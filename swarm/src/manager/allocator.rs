//! The allocator: the stage between NEW and PENDING. It will hand out network resources (IPs, VIPs, published
//! ports) when networking lands; today a task needs none, so it moves live NEW tasks of existing services to PENDING.

use crate::api::{Object, Task, TaskState, Timestamp};
use crate::manager::orchestrator::reconcile_loop;
use crate::manager::store::{MemoryStore, Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Allocator {
    store: Store,
}

impl Allocator {
    pub fn new(store: Store) -> Self {
        Allocator { store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interested = |ev: &crate::manager::store::Event| matches!(&ev.object, Object::Task(t) if t.status.state == TaskState::New);
        reconcile_loop(
            "allocator",
            &self.store.clone(),
            &shutdown,
            Duration::from_millis(5),
            Duration::from_secs(5),
            interested,
            || self.pass(),
        )
        .await
    }

    async fn pass(&self) -> Result<(), StoreError> {
        let moved = self.store.view(|v| allocate(v, Timestamp::now()));
        // A task changed meanwhile is NEW in the view the next pass reads (or no longer to be allocated).
        self.store.update_tasks_bounded(&moved).await.map(|_| ())
    }
}

/// The tasks a pass moves, as they become: live NEW tasks of services that exist go to PENDING at `now`. A task
/// whose service is gone is left for the reaper, and one no longer desired running is never scheduled.
pub(crate) fn allocate(view: &MemoryStore, now: Timestamp) -> Vec<Task> {
    view.tasks_by_state(TaskState::New)
        .filter(|t| t.desired_state <= TaskState::Running && view.service(&t.service_id).is_some())
        .map(|t| {
            let mut t = t.clone();
            t.status.state = TaskState::Pending;
            t.status.message = "pending task scheduling".into();
            t.status.timestamp = now;
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{service, task};
    use std::time::{Instant, SystemTime};

    fn new_task(id: &str, service_id: &str, slot: u64) -> Task {
        let mut t = task(id, service_id, slot);
        t.status.state = TaskState::New;
        t.status.message = "created".into();
        t
    }

    /// Service `s1`; NEW tasks `t1` (of s1), `gone` (of a deleted service), `stopping` (desired SHUTDOWN); and
    /// `waiting` and `later` (of s1, already PENDING and ASSIGNED).
    fn objects() -> Vec<Object> {
        let mut stopping = new_task("stopping", "s1", 3);
        stopping.desired_state = TaskState::Shutdown;
        let mut later = task("later", "s1", 2);
        later.node_id = "n1".into();
        later.status.state = TaskState::Assigned;
        vec![
            service("s1", "web", 3).into(),
            new_task("t1", "s1", 1).into(),
            new_task("gone", "deleted", 1).into(),
            stopping.into(),
            task("waiting", "s1", 4).into(),
            later.into(),
        ]
    }

    #[test]
    fn new_tasks_of_existing_services_become_pending_and_nothing_else_changes() {
        let view = MemoryStore::from_objects(objects());
        let now = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let moved = allocate(&view, now);

        let mut want = view.task("t1").unwrap().clone();
        want.status.state = TaskState::Pending;
        want.status.message = "pending task scheduling".into();
        want.status.timestamp = now;
        assert_eq!(moved, vec![want], "only t1 moves, and only its status");
    }

    #[tokio::test]
    async fn a_pass_of_the_running_allocator_writes_the_same() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                for o in objects() {
                    tx.create(o);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let before = store.view(|v| v.tasks().cloned().collect::<Vec<_>>());
        let shutdown = CancellationToken::new();
        tokio::spawn(Allocator::new(store.clone()).run(shutdown.clone()));

        let deadline = Instant::now() + Duration::from_secs(5);
        while store.view(|v| v.task("t1").unwrap().status.state) != TaskState::Pending {
            assert!(Instant::now() < deadline, "t1 not PENDING within 5s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        // One pass moves every task it will: the others are as they were.
        for t in before.iter().filter(|t| t.id != "t1") {
            let now = store.view(|v| v.task(&t.id).cloned()).unwrap();
            assert_eq!(now, *t, "{} changed", t.id);
        }
    }
}
