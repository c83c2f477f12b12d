//! The replicated orchestrator: keeps `replicas` slots filled with one live task each, adds slots when scaled
//! up, removes the highest (non-running first) when scaled down, removes every task of a deleted service, and
//! hands ended tasks to the restart supervisor. A slot whose task must leave its node (DOWN, removed, drained, or
//! no longer matching the task's constraints) is refilled at once in the same slot, to be scheduled anywhere that
//! fits (the old task goes to desired SHUTDOWN); this is not a restart attempt: the task did not fail, so neither
//! the restart condition, delay nor `--restart-max-attempts` apply to it.

use super::{
    is_live, move_reason, new_task_sharing, service_task_or_node, slot_held_dead, Orchestrator, Plan, ServiceModePolicy,
};
use crate::api::{Service, ServiceMode, Task, TaskState};
use crate::manager::store::{Event, MemoryStore};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Replicated services: slots that go are removed (desired REMOVE).
pub struct Replicated;

pub type ReplicatedOrchestrator = Orchestrator<Replicated>;

impl ServiceModePolicy for Replicated {
    const NAME: &'static str = "replicated-orchestrator";
    const END_STATE: TaskState = TaskState::Remove;

    fn handles(mode: &ServiceMode) -> bool {
        matches!(mode, ServiceMode::Replicated { .. })
    }

    fn interested(ev: &Event) -> bool {
        service_task_or_node(ev)
    }

    fn plan(view: &MemoryStore, service: &Service) -> Plan {
        plan_service(view, service)
    }
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
    let mut plan = Plan::default();
    for (slot, tasks) in &slots {
        let (lost, live): (Vec<&&Task>, Vec<&&Task>) =
            tasks.iter().filter(|t| is_live(t)).partition(|t| move_reason(view, t).is_some());
        plan.orphaned.extend(lost.into_iter().map(|t| (*t).clone()));
        if !live.is_empty() {
            occupied.push((*slot, live.iter().any(|t| t.status.state == TaskState::Running)));
        } else if slot_held_dead(service, tasks) {
            occupied.push((*slot, false));
        } else {
            free.insert(*slot);
        }
    }
    let n = occupied.len() as u64;
    if n < replicas {
        let used: BTreeSet<u64> = occupied.iter().map(|(s, _)| *s).collect();
        let mut reuse = free.into_iter();
        let mut next = 1u64;
        let mut spec = None;
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
            // One copy of the spec for all the tasks the plan makes.
            let spec = spec.get_or_insert_with(|| Arc::new(service.spec.task_template.clone())).clone();
            plan.create.push(new_task_sharing(service, spec, slot, "", TaskState::Running));
        }
    } else if n > replicas {
        // Remove slots that are not running first, then the highest numbers.
        occupied.sort_by_key(|(slot, running)| (*running, std::cmp::Reverse(*slot)));
        for (slot, _) in occupied.into_iter().take((n - replicas) as usize) {
            for t in &slots[&slot] {
                if t.desired_state != TaskState::Remove {
                    plan.end.push((*t).clone());
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeAvailability, NodeState, Object};
    use crate::manager::orchestrator::MoveReason;
    use crate::testing::{node, service, task};

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
        // Nothing to allocate (no network, no endpoint): ready for the scheduler as made.
        assert!(p.create.iter().all(|t| t.status.state == TaskState::Pending && t.desired_state == TaskState::Running));
    }

    #[test]
    fn tasks_that_need_addresses_are_created_new_for_the_allocator() {
        let mut s = service("s", "web", 2);
        s.spec.task_template.networks =
            vec![crate::api::NetworkAttachmentConfig { target: "backend".into(), aliases: vec![] }];
        let p = plan_service(&view_of(&s, vec![]), &s);
        assert_eq!(p.create.len(), 2);
        assert!(p.create.iter().all(|t| t.status.state == TaskState::New && t.endpoint.is_none()));
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
        let mut removed: Vec<u64> = p.end.iter().map(|t| t.slot).collect();
        removed.sort();
        assert_eq!(removed, vec![1, 3]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn declined_restart_holds_the_slot_until_the_service_changes() {
        let mut s = service("s", "web", 2);
        s.spec_version = 10;
        let mut dead = task("a", "s", 1);
        dead.status.state = TaskState::Failed;
        dead.desired_state = TaskState::Shutdown;
        dead.spec_version = 10;
        let mut ok = task("b", "s", 2);
        ok.status.state = TaskState::Running;
        let p = plan_service(&view_of(&s, vec![dead.clone(), ok.clone()]), &s);
        assert!(p.create.is_empty(), "slot 1 stays dead");

        s.spec_version = 11; // e.g. scaled
        let p = plan_service(&view_of(&s, vec![dead, ok]), &s);
        assert_eq!(p.create.iter().map(|t| t.slot).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn the_last_task_of_a_slot_is_the_last_created_in_raft_order_whatever_the_clocks() {
        let mut s = service("s", "web", 1);
        s.spec_version = 10;
        let ended = |id: &str, desired, created_index, secs| {
            let mut t = task(id, "s", 1);
            t.status.state = TaskState::Failed;
            t.desired_state = desired;
            t.spec_version = 10;
            t.meta.created_index = created_index;
            t.meta.created_at = crate::api::Timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
            t
        };
        // `a`'s restart was declined; `b`, created after it by a manager whose clock is behind, just failed and
        // awaits the restart supervisor: the slot is not held dead.
        let a = ended("a", TaskState::Shutdown, 5, 200);
        let b = ended("b", TaskState::Running, 9, 100);
        assert!(!slot_held_dead(&s, &[&a, &b]), "b is the slot's last task");
        let b_first = ended("b", TaskState::Running, 4, 300);
        assert!(slot_held_dead(&s, &[&a, &b_first]), "a is the slot's last task");
    }

    #[test]
    fn a_down_nodes_tasks_are_shut_down_and_their_slots_refilled_in_place() {
        let s = service("s", "web", 3);
        let (mut up, mut down) = (node("n1", "host-1"), node("n2", "host-2"));
        up.status.state = NodeState::Ready;
        down.status.state = NodeState::Down;
        let on = |id: &str, slot, node: &str, state| {
            let mut t = task(id, "s", slot);
            t.node_id = node.into();
            t.status.state = state;
            t
        };
        let tasks = vec![
            on("a", 1, "n1", TaskState::Running),
            on("b", 2, "n2", TaskState::Running),
            on("c", 3, "n2", TaskState::Starting),
        ];
        let mut objs: Vec<Object> = vec![s.clone().into(), up.into(), down.into()];
        objs.extend(tasks.into_iter().map(Object::from));
        let p = plan_service(&MemoryStore::from_objects(objs), &s);

        let mut orphaned: Vec<&str> = p.orphaned.iter().map(|t| t.id.as_str()).collect();
        orphaned.sort();
        assert_eq!(orphaned, vec!["b", "c"], "the down node's live tasks");
        let mut slots: Vec<u64> = p.create.iter().map(|t| t.slot).collect();
        slots.sort();
        assert_eq!(slots, vec![2, 3], "their slots get new tasks, to be scheduled anywhere");
        assert!(p.create.iter().all(|t| t.node_id.is_empty() && t.desired_state == TaskState::Running));
        assert!(p.end.is_empty());
    }

    #[test]
    fn drained_relabelled_and_removed_nodes_lose_their_tasks_paused_ones_keep_them() {
        let mut s = service("s", "web", 5);
        s.spec.task_template.placement.constraints = vec!["node.labels.tier!=cold".parse().unwrap()];
        let (mut paused, mut drained, ok, mut relabelled) =
            (node("p", "host-p"), node("d", "host-d"), node("ok", "host-ok"), node("r", "host-r"));
        paused.spec.availability = NodeAvailability::Pause;
        drained.spec.availability = NodeAvailability::Drain;
        relabelled.spec.annotations.labels.insert("tier".into(), "cold".into());
        let on = |id: &str, slot, node: &str| {
            let mut t = task(id, "s", slot);
            t.spec = s.spec.task_template.clone().into();
            t.node_id = node.into();
            t.status.state = TaskState::Running;
            t
        };
        let tasks = vec![on("a", 1, "p"), on("b", 2, "d"), on("c", 3, "ok"), on("e", 4, "r"), on("f", 5, "gone")];
        let mut objs: Vec<Object> = vec![s.clone().into(), paused.into(), drained.into(), ok.into(), relabelled.into()];
        objs.extend(tasks.into_iter().map(Object::from));
        let view = MemoryStore::from_objects(objs);
        let p = plan_service(&view, &s);

        let mut moved: Vec<(&str, Option<MoveReason>)> =
            p.orphaned.iter().map(|t| (t.id.as_str(), move_reason(&view, t))).collect();
        moved.sort_by_key(|(id, _)| *id);
        assert_eq!(
            moved,
            vec![
                ("b", Some(MoveReason::NodeDrained)),
                ("e", Some(MoveReason::ConstraintsNotMet)),
                ("f", Some(MoveReason::NodeRemoved))
            ]
        );
        let mut slots: Vec<u64> = p.create.iter().map(|t| t.slot).collect();
        slots.sort();
        assert_eq!(slots, vec![2, 4, 5], "refilled in place, to be scheduled where they fit");
        assert!(p.create.iter().all(|t| t.node_id.is_empty()));
        assert!(p.end.is_empty());
    }

    #[test]
    fn a_task_that_already_ended_on_a_down_node_is_left_to_the_restart_supervisor() {
        let s = service("s", "web", 1);
        let mut down = node("n2", "host-2");
        down.status.state = NodeState::Down;
        let mut t = task("b", "s", 1);
        t.node_id = "n2".into();
        t.status.state = TaskState::Failed;
        let p = plan_service(&MemoryStore::from_objects(vec![s.clone().into(), down.into(), t.into()]), &s);
        assert!(p.orphaned.is_empty() && p.create.is_empty(), "{p:?}");
    }
}
