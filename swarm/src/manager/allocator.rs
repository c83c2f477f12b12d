//! The allocator: the stage between NEW and PENDING. It will hand out network resources (IPs, VIPs, published
//! ports) when networking lands; today a task needs none, so it moves live NEW tasks to PENDING.

use crate::api::{Object, TaskState};
use crate::manager::orchestrator::reconcile_loop;
use crate::manager::store::{Store, StoreError};
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
        self.store
            .update(|tx| {
                let now = crate::api::Timestamp::now();
                let new: Vec<_> = tx
                    .view()
                    .tasks()
                    .filter(|t| t.status.state == TaskState::New && t.desired_state <= TaskState::Running)
                    .cloned()
                    .collect();
                for mut t in new {
                    t.status.state = TaskState::Pending;
                    t.status.message = "pending task scheduling".into();
                    t.status.timestamp = now;
                    tx.update(t);
                }
                Ok::<_, StoreError>(())
            })
            .await
    }
}
