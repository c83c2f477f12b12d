//! Orchestrators: turn services into tasks and keep them there.
//!
//! - [`replicated`]: slots 1..=replicas, each with one live task;
//! - [`global`]: one live task per eligible node;
//! - [`restart`]: when a task ends, decides whether and when its slot gets a replacement;
//! - [`task_reaper`]: deletes tasks beyond the history limit and tasks marked REMOVE once they stopped.
//!
//! Each runs on the leader as `new(store, …)` + `run(shutdown)`, computes a plan from the store (pure functions,
//! unit-tested) and writes it back as one proposal; the store's watch wakes it up again.

pub mod global;
pub mod replicated;
pub mod restart;
pub mod task_reaper;

use crate::api::{new_id, Service, Task, TaskState, TaskStatus, Timestamp};
use crate::manager::store::{Event, Store, StoreError};
use std::future::Future;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

/// A task is live when it is meant to run (desired state ≤ RUNNING).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// A new task for `service` in `slot` (replicated) or on `node_id` (global, slot 0).
pub fn new_task(service: &Service, slot: u64, node_id: &str, desired: TaskState) -> Task {
    Task {
        id: new_id(),
        meta: Default::default(),
        service_id: service.id.clone(),
        service_annotations: service.spec.annotations.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: service.spec.task_template.clone(),
        spec_version: service.meta.version,
        status: TaskStatus {
            timestamp: Timestamp::now(),
            state: TaskState::New,
            message: "created".into(),
            ..Default::default()
        },
        desired_state: desired,
    }
}

/// Whether a slot whose tasks all ended should stay empty: the restart policy declined to replace its last task
/// and the service has not changed since. Scaling or updating the service frees such slots again, as in Swarm.
pub fn slot_held_dead(service: &Service, tasks: &[&Task]) -> bool {
    match tasks.iter().max_by_key(|t| (t.meta.created_at, t.meta.version)) {
        Some(last) => {
            last.desired_state == TaskState::Shutdown
                && last.status.state.is_terminal()
                && last.spec_version >= service.meta.version
        }
        None => false,
    }
}

/// The reconcile loop every leader component shares: run a pass, then wait for a relevant store change (or the
/// retry tick), coalescing bursts over `debounce`. A failed pass is retried; "out of sequence" is routine.
pub(crate) async fn reconcile_loop<F, Fut>(
    name: &'static str,
    store: &Store,
    shutdown: &CancellationToken,
    debounce: Duration,
    retry: Duration,
    interested: impl Fn(&Event) -> bool,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut events = store.watch();
    loop {
        if let Err(e) = pass().await {
            if !e.is_out_of_sequence() {
                tracing::warn!(component = name, error = %e, "reconcile pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        // Wait for something this component cares about.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => break,
                r = events.recv() => match r {
                    Ok(ev) if interested(&ev) => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
            }
        }
        tokio::time::sleep(debounce).await;
        loop {
            match events.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    }
}
