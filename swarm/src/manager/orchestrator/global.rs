//! The global orchestrator: one live task per eligible node (ready or unknown, availability active — pause keeps
//! existing tasks — and placement constraints satisfied); tasks on nodes that stop being eligible are shut down.

use super::{is_live, new_task, service_or_task, slot_held_dead, Orchestrator, Plan, ServiceModePolicy};
use crate::api::{Node, NodeAvailability, NodeState, Object, Service, ServiceMode, Task, TaskState};
use crate::manager::store::{Event, MemoryStore};
use std::collections::BTreeMap;

/// Global services: tasks on nodes that stop being eligible are shut down (the node may become eligible again).
pub struct Global;

pub type GlobalOrchestrator = Orchestrator<Global>;

impl ServiceModePolicy for Global {
    const NAME: &'static str = "global-orchestrator";
    const END_STATE: TaskState = TaskState::Shutdown;

    fn handles(mode: &ServiceMode) -> bool {
        *mode == ServiceMode::Global
    }

    fn interested(ev: &Event) -> bool {
        service_or_task(ev) || matches!(ev.object, Object::Node(_))
    }

    fn plan(view: &MemoryStore, service: &Service) -> Plan {
        plan_service(view, service)
    }
}

/// Whether `node` should run a task of `service`, and whether it may keep one it has.
fn eligibility(service: &Service, node: &Node) -> (bool, bool) {
    let constraints_ok = service.spec.task_template.placement.constraints.iter().all(|c| c.matches(node));
    let up = node.status.state != NodeState::Down;
    let new_ok = constraints_ok && up && node.spec.availability == NodeAvailability::Active;
    // A DOWN node's task is shut down as SwarmKit does (its node gets a new one when it is back).
    let keep_ok = constraints_ok && up && node.spec.availability != NodeAvailability::Drain;
    (new_ok, keep_ok)
}

/// Plans one global service (pure): tasks to create, and live tasks to shut down.
pub fn plan_service(view: &MemoryStore, service: &Service) -> Plan {
    let mut create = Vec::new();
    let mut stop = Vec::new();
    if service.spec.mode != ServiceMode::Global {
        return Plan::default();
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
    Plan { create, end: stop, orphaned: vec![] }
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
        let Plan { create, end: stop, .. } = plan_service(&view, &s);
        let mut nodes: Vec<&str> = create.iter().map(|t| t.node_id.as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, vec!["a", "b"]);
        assert!(stop.is_empty());
        assert!(create.iter().all(|t| t.slot == 0));
    }

    #[test]
    fn a_node_made_eligible_again_gets_a_new_task_unless_the_restart_policy_declined() {
        let mut s = service("s", "agent", 0);
        s.spec.mode = ServiceMode::Global;
        s.spec_version = 7;
        // The task the orchestrator stopped when the node was drained; the node is active again.
        let mut stopped = new_task(&s, 0, "a", TaskState::Shutdown);
        stopped.status.state = TaskState::Shutdown;
        let view = MemoryStore::from_objects(vec![Object::from(s.clone()), node("a", "ha").into(), stopped.into()]);
        let Plan { create, .. } = plan_service(&view, &s);
        assert_eq!(create.iter().map(|t| t.node_id.as_str()).collect::<Vec<_>>(), vec!["a"]);

        // A task that ended on its own and was not replaced (restart policy) keeps the node's slot dead.
        let mut declined = new_task(&s, 0, "a", TaskState::Shutdown);
        declined.status.state = TaskState::Failed;
        let view = MemoryStore::from_objects(vec![Object::from(s.clone()), node("a", "ha").into(), declined.into()]);
        assert!(plan_service(&view, &s).create.is_empty());
    }

    #[test]
    fn paused_nodes_keep_their_task_drained_and_relabelled_ones_lose_it() {
        let mut s = service("s", "agent", 0);
        s.spec.mode = ServiceMode::Global;
        s.spec.task_template.placement.constraints = vec!["node.labels.agent==yes".parse().unwrap()];
        let labelled = |id: &str, availability, label: &str| {
            let mut n = node(id, &format!("host-{id}"));
            n.spec.availability = availability;
            n.spec.annotations.labels.insert("agent".into(), label.into());
            n
        };
        let running_on = |id: &str, node: &str| {
            let mut t = new_task(&s, 0, node, TaskState::Running);
            t.id = id.into();
            t.status.state = TaskState::Running;
            t
        };
        let view = MemoryStore::from_objects(vec![
            Object::from(s.clone()),
            labelled("paused", NodeAvailability::Pause, "yes").into(),
            labelled("paused-new", NodeAvailability::Pause, "yes").into(),
            labelled("drained", NodeAvailability::Drain, "yes").into(),
            labelled("unlabelled", NodeAvailability::Active, "no").into(),
            running_on("t-paused", "paused").into(),
            running_on("t-drained", "drained").into(),
            running_on("t-unlabelled", "unlabelled").into(),
        ]);
        let Plan { create, end, .. } = plan_service(&view, &s);
        assert!(create.is_empty(), "no new task on a paused, drained or unlabelled node: {create:?}");
        let mut stopped: Vec<&str> = end.iter().map(|t| t.id.as_str()).collect();
        stopped.sort();
        assert_eq!(stopped, vec!["t-drained", "t-unlabelled"], "the paused node keeps its task");
    }

    #[test]
    fn a_down_nodes_task_is_shut_down_and_the_node_gets_a_new_one_when_back() {
        let mut s = service("s", "agent", 0);
        s.spec.mode = ServiceMode::Global;
        let mut down = node("a", "ha");
        down.status.state = NodeState::Down;
        let mut t = new_task(&s, 0, "a", TaskState::Running);
        t.status.state = TaskState::Running;
        let view = MemoryStore::from_objects(vec![Object::from(s.clone()), down.clone().into(), t.clone().into()]);
        let Plan { create, end, .. } = plan_service(&view, &s);
        assert_eq!(end.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![t.id.as_str()]);
        assert!(create.is_empty());

        // Back up: the shut-down task (still reported running) does not hold the node.
        t.desired_state = TaskState::Shutdown;
        down.status.state = NodeState::Ready;
        let view = MemoryStore::from_objects(vec![Object::from(s.clone()), down.into(), t.into()]);
        assert_eq!(plan_service(&view, &s).create.len(), 1);
    }
}
