//! Computing what a node must run: the full set, then deltas as the store changes.

use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};
use crate::api::{Object, Task, TaskSpec, TaskState};
use crate::manager::store::{Event, EventAction, MemoryStore};
use std::collections::HashMap;

/// A task is sent to its node once the scheduler assigned it.
pub fn assigned_to(t: &Task, node_id: &str) -> bool {
    t.node_id == node_id && t.status.state >= TaskState::Assigned
}

/// What the agent acts on: desired state and spec. Status changes the agent itself reported are not resent.
#[derive(PartialEq)]
struct Sent {
    desired: TaskState,
    spec: TaskSpec,
}

/// Tracks what one session was sent, to turn store events into deltas.
pub struct AssignmentSet {
    node_id: String,
    sent: HashMap<String, Sent>,
}

impl AssignmentSet {
    pub fn new(node_id: &str) -> Self {
        AssignmentSet { node_id: node_id.into(), sent: HashMap::new() }
    }

    /// The node this set is for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Specs of the tasks sent to the node that are meant to run (what their secrets and configs are kept for).
    pub fn live_specs(&self) -> impl Iterator<Item = &TaskSpec> {
        self.sent.values().filter(|s| s.desired <= TaskState::Running).map(|s| &s.spec)
    }

    /// The full set from the store, resetting what was sent.
    pub fn complete(&mut self, view: &MemoryStore) -> AssignmentsMessage {
        self.sent.clear();
        let updated: Vec<Task> =
            view.tasks_by_node(&self.node_id).filter(|t| assigned_to(t, &self.node_id)).cloned().collect();
        for t in &updated {
            self.sent.insert(t.id.clone(), Sent { desired: t.desired_state, spec: t.spec.clone() });
        }
        AssignmentsMessage {
            kind: AssignmentsKind::Complete,
            updated,
            removed: vec![],
            network_state: None,
            files: Default::default(),
        }
    }

    /// Folds one store event into `msg` (an incremental message being built).
    pub fn apply(&mut self, ev: &Event, msg: &mut AssignmentsMessage) {
        let Object::Task(t) = &ev.object else { return };
        let mine = ev.action != EventAction::Delete && assigned_to(t, &self.node_id);
        if mine {
            let now = Sent { desired: t.desired_state, spec: t.spec.clone() };
            if self.sent.get(&t.id) != Some(&now) {
                self.sent.insert(t.id.clone(), now);
                msg.removed.retain(|id| id != &t.id);
                msg.updated.retain(|u| u.id != t.id);
                msg.updated.push(t.clone());
            }
        } else if self.sent.remove(&t.id).is_some() {
            msg.updated.retain(|u| u.id != t.id);
            msg.removed.push(t.id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::task;

    fn ev(action: EventAction, t: &Task) -> Event {
        Event { action, object: t.clone().into(), old: None, index: 1 }
    }

    #[test]
    fn deltas_follow_desired_state_not_status() {
        let mut set = AssignmentSet::new("n1");
        let mut t = task("t1", "s", 1);
        t.node_id = "n1".into();
        t.status.state = TaskState::Assigned;
        let mut msg = AssignmentsMessage {
            kind: AssignmentsKind::Incremental,
            updated: vec![],
            removed: vec![],
            network_state: None,
            files: Default::default(),
        };
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        assert_eq!(msg.updated.len(), 1);

        // The agent's own status report is not echoed back.
        let mut msg = AssignmentsMessage {
            kind: AssignmentsKind::Incremental,
            updated: vec![],
            removed: vec![],
            network_state: None,
            files: Default::default(),
        };
        t.status.state = TaskState::Running;
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        assert!(msg.updated.is_empty());

        t.desired_state = TaskState::Shutdown;
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        assert_eq!(msg.updated.len(), 1);

        set.apply(&ev(EventAction::Delete, &t), &mut msg);
        assert!(msg.updated.is_empty());
        assert_eq!(msg.removed, vec!["t1".to_string()]);
    }
}
