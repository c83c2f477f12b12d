//! The global orchestrator: one live task per eligible node (ready or unknown, availability active — pause keeps
//! existing tasks — and placement constraints satisfied); tasks on nodes that stop being eligible are shut down.

use super::restart::RestartSupervisor;
use super::{is_live, new_task, reconcile_loop, slot_held_dead};
use crate::api::{Node, NodeAvailability, NodeState, Object, Service, ServiceMode, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether `node` should run a task of `service`, and whether it may keep one it has.
fn eligibility(service: &Service, node: &Node) -> (bool, bool) {
    let constraints_ok = service.spec.task_template.placement.constraints.iter().all(|c| c.matches(node));
    let up = node.status.state != NodeState::Down;
    let new_ok = constraints_ok && up && node.spec.availability == NodeAvailability::Active;
    let keep_ok = constraints_ok && node.spec.availability != NodeAvailability::Drain;
    (new_ok, keep_ok)
}

/// Plans one global service (pure): tasks to create, and live tasks to shut down.
pub fn plan_service(view: &MemoryStore, service: &Service) -> (Vec<Task>, Vec<Task>) {
    let mut create = Vec::new();
    let mut stop = Vec::new();
    if service.spec.mode != ServiceMode::Global {
        return (create, stop);
    }
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in view.tasks_by_service(&service.id) {
        if t.desired_state != TaskState::Remove {
            by_node.entry(t.node_id.as_str()).or_default().push(t);
        }
    }
    for node in view.nodes() {
        let (new_ok, keep_ok) = eligibility(service, node);
        let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
        let live: Vec<&&Task> = tasks.iter().filter(|t| is_live(t)).collect();
        if !keep_ok {
            stop.extend(live.iter().map(|t| (**t).clone()));
        } else if live.is_empty() && new_ok && !slot_held_dead(service, &tasks) {
            create.push(new_task(service, 0, &node.id, TaskState::Running));
        }
    }
    // Tasks on nodes that left the swarm.
    for (_, tasks) in by_node {
        stop.extend(tasks.into_iter().filter(|t| is_live(t)).cloned());
    }
    (create, stop)
}

pub struct GlobalOrchestrator {
    store: Store,
    restarts: Arc<RestartSupervisor>,
}

impl GlobalOrchestrator {
    pub fn new(store: Store, restarts: Arc<RestartSupervisor>) -> Self {
        GlobalOrchestrator { store, restarts }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let interested = |ev: &crate::manager::store::Event| {
            matches!(ev.object, Object::Service(_) | Object::Task(_) | Object::Node(_))
        };
        reconcile_loop(
            "global-orchestrator",
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
                let (delayed, touched) = self.restarts.restart_ended(tx, |m| *m == ServiceMode::Global);
                let view = tx.view();
                for service in view.services().filter(|s| !touched.contains(&s.id)) {
                    let (create, stop) = plan_service(view, service);
                    for t in create {
                        tracing::info!(service.id = %service.id, task.id = %t.id, node.id = %t.node_id, "task created");
                        tx.create(t);
                    }
                    for mut t in stop {
                        t.desired_state = TaskState::Shutdown;
                        tx.update(t);
                    }
                }
                Ok::<_, StoreError>(delayed)
            })
            .await?;
        for (task_id, delay) in delayed {
            self.restarts.start_after(self.store.clone(), task_id, delay, shutdown.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, service};

    #[test]
    fn one_task_per_eligible_node() {
        let mut s = service("s", "agent", 0);
        s.spec.mode = ServiceMode::Global;
        let mut drained = node("c", "hc");
        drained.spec.availability = NodeAvailability::Drain;
        let view = MemoryStore::from_objects(vec![
            Object::from(s.clone()),
            node("a", "ha").into(),
            node("b", "hb").into(),
            drained.into(),
        ]);
        let (create, stop) = plan_service(&view, &s);
        let mut nodes: Vec<&str> = create.iter().map(|t| t.node_id.as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, vec!["a", "b"]);
        assert!(stop.is_empty());
        assert!(create.iter().all(|t| t.slot == 0));
    }
}
