//! The scheduler: gives every PENDING task a node (→ ASSIGNED), or says why none fits.
//!
//! ```text
//!  watch tasks/nodes ─▶ pending set ─▶ for each task: filters (ready, active, constraints, max per node,
//!                                        reservations) ─▶ spread: fewest tasks of this service, then fewest
//!                                        tasks overall ─▶ one batch of store writes per pass
//! ```
//! A task that fits nowhere stays PENDING with `no suitable node (<reasons>)` in its status; it is retried when
//! nodes or tasks change. Global tasks arrive with their node chosen; the scheduler only checks that node.

pub mod filters;

use crate::api::{Node, Resources, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError};

use filters::Refusal;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A node as the scheduler sees it during one pass: what is left of it and what runs there.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub available: Resources,
    pub tasks_by_service: HashMap<String, u64>,
    pub total_tasks: u64,
}

impl NodeInfo {
    pub fn tasks_of_service(&self, service_id: &str) -> u64 {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    fn add(&mut self, task: &Task) {
        *self.tasks_by_service.entry(task.service_id.clone()).or_default() += 1;
        self.total_tasks += 1;
        let r = task.spec.resources.reservations;
        self.available.memory_bytes -= r.memory_bytes;
        self.available.nano_cpus -= r.nano_cpus;
    }
}

/// Whether a task holds resources on its node: it is meant to run and has not ended.
fn occupies(task: &Task) -> bool {
    !task.node_id.is_empty() && task.desired_state <= TaskState::Running && task.status.state <= TaskState::Running
}

/// Builds the per-node picture from the store.
pub fn node_infos(view: &MemoryStore) -> BTreeMap<String, NodeInfo> {
    let mut out: BTreeMap<String, NodeInfo> = view
        .nodes()
        .map(|n| {
            let info = NodeInfo {
                node: n.clone(),
                available: n.description.resources,
                tasks_by_service: HashMap::new(),
                total_tasks: 0,
            };
            (n.id.clone(), info)
        })
        .collect();
    for t in view.tasks().filter(|t| occupies(t) && t.status.state >= TaskState::Assigned) {
        if let Some(info) = out.get_mut(&t.node_id) {
            info.add(t);
        }
    }
    out
}

/// The decision for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Assign(String),
    NoSuitableNode(String),
}

/// Picks a node for `task` among `nodes` (pure): filters, then spread.
pub fn decide(nodes: &BTreeMap<String, NodeInfo>, task: &Task) -> Decision {
    let constraints = &task.spec.placement.constraints;
    let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
    let mut best: Option<(&NodeInfo, (u64, u64))> = None;
    let candidates: Box<dyn Iterator<Item = &NodeInfo>> =
        if task.node_id.is_empty() { Box::new(nodes.values()) } else { Box::new(nodes.get(&task.node_id).into_iter()) };
    let mut seen = 0;
    for info in candidates {
        seen += 1;
        match filters::check(info, task, constraints) {
            Ok(()) => {
                let score = (info.tasks_of_service(&task.service_id), info.total_tasks);
                if best.map(|(_, s)| score < s).unwrap_or(true) {
                    best = Some((info, score));
                }
            }
            Err(r) => *refusals.entry(r).or_default() += 1,
        }
    }
    match best {
        Some((info, _)) => Decision::Assign(info.node.id.clone()),
        None if seen == 0 => Decision::NoSuitableNode("no suitable node (no nodes in the swarm)".into()),
        None => {
            let reasons: Vec<String> = refusals.iter().map(|(r, n)| r.explain(*n)).collect();
            Decision::NoSuitableNode(format!("no suitable node ({})", reasons.join("; ")))
        }
    }
}

/// Plans one pass over every pending task, accounting for earlier placements in the same pass.
pub fn plan(view: &MemoryStore) -> Vec<(Task, Decision)> {
    let mut nodes = node_infos(view);
    let mut pending: Vec<&Task> =
        view.tasks_by_state(TaskState::Pending).filter(|t| t.desired_state <= TaskState::Running).collect();
    if pending.is_empty() {
        return Vec::new();
    }
    // Older tasks first, then by slot, so placement is stable.
    pending.sort_by(|a, b| (a.meta.created_index, a.slot, &a.id).cmp(&(b.meta.created_index, b.slot, &b.id)));
    let mut out = Vec::new();
    for t in pending {
        let d = decide(&nodes, t);
        if let Decision::Assign(node_id) = &d {
            let mut placed = t.clone();
            placed.node_id = node_id.clone();
            if let Some(info) = nodes.get_mut(node_id) {
                info.add(&placed);
            }
        }
        out.push((t.clone(), d));
    }
    out
}

pub struct Scheduler {
    store: Store,
}

impl Scheduler {
    pub fn new(store: Store) -> Self {
        Scheduler { store }
    }

    /// Schedules until `shutdown`. Each pass is triggered by a change that can matter to placement (a pending
    /// task, a node change, a task that ended and freed resources), coalesced over 50 ms; its own assignments
    /// do not wake it.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut events = self.store.watch();
        loop {
            match self.pass().await {
                Ok(true) => continue, // some tasks changed under the plan: plan again at once
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "scheduling pass failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = events.recv() => match r {
                        Ok(e) if !wakes(&e) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        _ => break,
                    },
                }
            }
            // Coalesce a burst of changes into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
        }
    }

    /// One pass: plans every pending task on one view, then commits the decisions in bounded proposals. A task
    /// that changed since the view (the orchestrator shut it down, say) is left for the next pass instead of
    /// failing its whole batch. Returns whether any was left so.
    async fn pass(&self) -> Result<bool, StoreError> {
        let changes = self.store.view(changes);
        self.commit(&changes).await
    }

    /// Commits the scheduler's task updates in bounded proposals; returns whether a task had changed since it
    /// was planned (it is planned again at once).
    async fn commit(&self, changes: &[Task]) -> Result<bool, StoreError> {
        self.store.update_tasks_bounded(changes).await
    }
}

/// The task updates one pass makes on `view`: assignments, and the reason for those that cannot be placed.
fn changes(view: &MemoryStore) -> Vec<Task> {
    let decisions = plan(view);
    let now = crate::api::Timestamp::now();
    let mut changes = Vec::new();
    for (task, decision) in decisions {
        let mut t = task;
        match decision {
            Decision::Assign(node_id) => {
                info!(task.id = %t.id, node.id = %node_id, "task assigned");
                t.node_id = node_id;
                t.status.state = TaskState::Assigned;
                t.status.message = "scheduler assigned task to node".into();
                t.status.err.clear();
                t.status.timestamp = now;
            }
            Decision::NoSuitableNode(reason) => {
                if t.status.err == reason {
                    continue;
                }
                debug!(task.id = %t.id, %reason, "task not schedulable");
                t.status.err = reason;
                t.status.message = "pending task scheduling".into();
            }
        }
        changes.push(t);
    }
    changes
}

/// Whether a store change can change a placement decision.
fn wakes(e: &crate::manager::store::Event) -> bool {
    use crate::api::Object;
    match (&e.object, &e.old) {
        (Object::Node(_), _) => true,
        (Object::Task(t), old) => {
            let was = match old {
                Some(Object::Task(o)) => Some(o.status.state),
                _ => None,
            };
            // A new pending task, or one that ended (its resources are free again).
            t.status.state == TaskState::Pending && was != Some(TaskState::Pending)
                || (t.status.state >= TaskState::Complete && was.is_some_and(|w| w < TaskState::Complete))
                || e.action == crate::manager::store::EventAction::Delete
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, task};

    fn store_with(nodes: Vec<Node>, tasks: Vec<Task>) -> MemoryStore {
        MemoryStore::from_objects(
            nodes.into_iter().map(Into::into).chain(tasks.into_iter().map(Into::into)).collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_task_changed_since_the_plan_is_left_for_the_next_pass_and_the_rest_commit() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                tx.create(node("a", "ha"));
                for i in 0..3 {
                    let mut t = task(&format!("t{i}"), "svc", i + 1);
                    t.status.state = TaskState::Pending;
                    tx.create(t);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let planned = store.view(changes);
        assert_eq!(planned.len(), 3);
        // The orchestrator shuts t1 down meanwhile.
        let mut t1 = store.view(|v| v.task("t1").cloned()).unwrap();
        t1.desired_state = TaskState::Shutdown;
        store.update(|tx| Ok::<_, StoreError>(tx.update(t1))).await.unwrap();
        let s = Scheduler::new(store.clone());
        assert!(s.commit(&planned).await.unwrap(), "the stale task is reported");
        let states: Vec<TaskState> =
            store.view(|v| ["t0", "t1", "t2"].iter().map(|id| v.task(id).unwrap().status.state).collect());
        assert_eq!(states, vec![TaskState::Assigned, TaskState::Pending, TaskState::Assigned]);
    }

    #[test]
    fn spreads_tasks_over_nodes() {
        let nodes = vec![node("a", "ha"), node("b", "hb"), node("c", "hc")];
        let tasks: Vec<Task> = (1..=6).map(|i| task(&format!("t{i}"), "svc", i)).collect();
        let plan = plan(&store_with(nodes, tasks));
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for (_, d) in plan {
            match d {
                Decision::Assign(n) => *per_node.entry(n).or_default() += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(per_node.len(), 3);
        assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    }

    #[test]
    fn explains_memory_and_constraints() {
        let mut t = task("t1", "svc", 1);
        t.spec.resources.reservations.memory_bytes = 1 << 50;
        let p = plan(&store_with(vec![node("a", "ha")], vec![t.clone()]));
        assert_eq!(p[0].1, Decision::NoSuitableNode("no suitable node (insufficient memory on 1 node)".into()));

        t.spec.resources.reservations.memory_bytes = 0;
        t.spec.placement.constraints = vec!["node.labels.zone==mars".parse().unwrap()];
        let p = plan(&store_with(vec![node("a", "ha"), node("b", "hb")], vec![t]));
        assert_eq!(
            p[0].1,
            Decision::NoSuitableNode("no suitable node (scheduling constraints not satisfied on 2 nodes)".into())
        );
    }

    #[test]
    fn reservations_add_up_within_a_pass() {
        let mut n = node("a", "ha");
        n.description.resources.memory_bytes = 300;
        let tasks: Vec<Task> = (1..=3)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "svc", i);
                t.spec.resources.reservations.memory_bytes = 100;
                t
            })
            .chain(std::iter::once({
                let mut t = task("t4", "svc", 4);
                t.spec.resources.reservations.memory_bytes = 100;
                t
            }))
            .collect();
        let p = plan(&store_with(vec![n], tasks));
        let assigned = p.iter().filter(|(_, d)| matches!(d, Decision::Assign(_))).count();
        assert_eq!(assigned, 3);
    }

    #[test]
    fn paused_and_drained_nodes_take_no_new_tasks() {
        let (mut paused, mut drained) = (node("p", "hp"), node("d", "hd"));
        paused.spec.availability = crate::api::NodeAvailability::Pause;
        drained.spec.availability = crate::api::NodeAvailability::Drain;
        let p = plan(&store_with(vec![paused.clone(), drained.clone()], vec![task("t1", "svc", 1)]));
        assert_eq!(p[0].1, Decision::NoSuitableNode("no suitable node (2 nodes not available for new tasks)".into()));
        let p = plan(&store_with(vec![paused, drained, node("a", "ha")], vec![task("t1", "svc", 1)]));
        assert_eq!(p[0].1, Decision::Assign("a".into()));
    }

    #[test]
    fn max_replicas_per_node_and_down_nodes() {
        let mut down = node("b", "hb");
        down.status.state = crate::api::NodeState::Down;
        let tasks: Vec<Task> = (1..=2)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "svc", i);
                t.spec.placement.max_replicas = 1;
                t
            })
            .collect();
        let p = plan(&store_with(vec![node("a", "ha"), down], tasks));
        assert_eq!(p[0].1, Decision::Assign("a".into()));
        assert_eq!(
            p[1].1,
            Decision::NoSuitableNode(
                "no suitable node (1 node not ready; max replicas per node limit exceeded on 1 node)".into()
            )
        );
    }
}
