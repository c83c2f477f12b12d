//! The replicated orchestrator: keeps `replicas` slots filled with one live task each, adds slots when scaled
//! up, removes the highest (non-running first) when scaled down, removes every task of a deleted service, and
//! hands ended tasks to the restart supervisor.

use super::restart::RestartSupervisor;
use super::{is_live, new_task, reconcile_loop, slot_held_dead};
use crate::api::{Object, Service, ServiceMode, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError, WriteTx};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What reconciling one service changes.
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Task>,
    /// Tasks to set to desired REMOVE.
    pub remove: Vec<Task>,
}

/// Plans the slots of a replicated service (pure).
pub fn plan_service(view: &MemoryStore, service: &Service) -> Plan {
    let ServiceMode::Replicated { replicas } = service.spec.mode else { return Plan::default() };
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in view.tasks_by_service(&service.id) {
        if t.desired_state != TaskState::Remove {
            slots.entry(t.slot).or_default().push(t);
        }
    }
    let mut occupied: Vec<(u64, bool)> = Vec::new(); // (slot, running)
    let mut free: BTreeSet<u64> = BTreeSet::new();
    for (slot, tasks) in &slots {
        let live: Vec<&&Task> = tasks.iter().filter(|t| is_live(t)).collect();
        if !live.is_empty() {
            occupied.push((*slot, live.iter().any(|t| t.status.state == TaskState::Running)));
        } else if slot_held_dead(service, tasks) {
            occupied.push((*slot, false));
        } else {
            free.insert(*slot);
        }
    }
    let mut plan = Plan::default();
    let n = occupied.len() as u64;
    if n < replicas {
        let used: BTreeSet<u64> = occupied.iter().map(|(s, _)| *s).collect();
        let mut reuse = free.into_iter();
        let mut next = 1u64;
        for _ in 0..(replicas - n) {
            let slot = match reuse.next() {
                Some(s) => s,
                None => {
                    while used.contains(&next) || slots.contains_key(&next) {
                        next += 1;
                    }
                    let s = next;
                    next += 1;
                    s
                }
            };
            plan.create.push(new_task(service, slot, "", TaskState::Running));
        }
    } else if n > replicas {
        // Remove slots that are not running first, then the highest numbers.
        occupied.sort_by_key(|(slot, running)| (*running, std::cmp::Reverse(*slot)));
        for (slot, _) in occupied.into_iter().take((n - replicas) as usize) {
            for t in &slots[&slot] {
                if t.desired_state != TaskState::Remove {
                    plan.remove.push((*t).clone());
                }
            }
        }
    }
    plan
}

pub struct ReplicatedOrchestrator {
    store: Store,
    restarts: Arc<RestartSupervisor>,
}

impl ReplicatedOrchestrator {
    pub fn new(store: Store, restarts: Arc<RestartSupervisor>) -> Self {
        ReplicatedOrchestrator { store, restarts }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interested = |ev: &crate::manager::store::Event| matches!(ev.object, Object::Service(_) | Object::Task(_));
        reconcile_loop(
            "replicated-orchestrator",
            &self.store.clone(),
            &shutdown.clone(),
            Duration::from_millis(20),
            Duration::from_secs(5),
            interested,
            || self.pass(&shutdown),
        )
        .await
    }

    async fn pass(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let delayed = self
            .store
            .update(|tx| {
                let mut delayed = Vec::new();
                reconcile_all(tx, &self.restarts, &mut delayed);
                Ok::<_, StoreError>(delayed)
            })
            .await?;
        for (task_id, delay) in delayed {
            self.restarts.start_after(self.store.clone(), task_id, delay, shutdown.clone());
        }
        Ok(())
    }
}

/// One pass over every replicated service and its tasks, written into `tx`.
fn reconcile_all(tx: &mut WriteTx, restarts: &RestartSupervisor, delayed: &mut Vec<(String, Duration)>) {
    // Ended tasks first: the restart supervisor may replace them in their slot.
    let (d, touched) = restarts.restart_ended(tx, |m| matches!(m, ServiceMode::Replicated { .. }));
    delayed.extend(d);
    let view = tx.view();
    for service in view.services().filter(|s| !touched.contains(&s.id)) {
        let plan = plan_service(view, service);
        for t in plan.create {
            tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot, "task created");
            tx.create(t);
        }
        for mut t in plan.remove {
            t.desired_state = TaskState::Remove;
            tx.update(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{service, task};

    fn view_of(s: &Service, tasks: Vec<Task>) -> MemoryStore {
        let mut objs: Vec<Object> = vec![s.clone().into()];
        objs.extend(tasks.into_iter().map(Object::from));
        MemoryStore::from_objects(objs)
    }

    #[test]
    fn fills_missing_slots_from_one() {
        let s = service("s", "web", 3);
        let p = plan_service(&view_of(&s, vec![]), &s);
        let slots: Vec<u64> = p.create.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![1, 2, 3]);
        assert!(p.create.iter().all(|t| t.status.state == TaskState::New && t.desired_state == TaskState::Running));
    }

    #[test]
    fn scales_down_highest_non_running_first() {
        let s = service("s", "web", 1);
        let mut tasks = vec![task("a", "s", 1), task("b", "s", 2), task("c", "s", 3)];
        for t in &mut tasks {
            t.status.state = TaskState::Running;
        }
        tasks[0].status.state = TaskState::Preparing; // slot 1 not running yet
        let p = plan_service(&view_of(&s, tasks), &s);
        let mut removed: Vec<u64> = p.remove.iter().map(|t| t.slot).collect();
        removed.sort();
        assert_eq!(removed, vec![1, 3]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn declined_restart_holds_the_slot_until_the_service_changes() {
        let mut s = service("s", "web", 2);
        s.meta.version = 10;
        let mut dead = task("a", "s", 1);
        dead.status.state = TaskState::Failed;
        dead.desired_state = TaskState::Shutdown;
        dead.spec_version = 10;
        let mut ok = task("b", "s", 2);
        ok.status.state = TaskState::Running;
        let p = plan_service(&view_of(&s, vec![dead.clone(), ok.clone()]), &s);
        assert!(p.create.is_empty(), "slot 1 stays dead");

        s.meta.version = 11; // e.g. scaled
        let p = plan_service(&view_of(&s, vec![dead, ok]), &s);
        assert_eq!(p.create.iter().map(|t| t.slot).collect::<Vec<_>>(), vec![1]);
    }
}
