//! Computing what a node must run: the full set, then deltas as the store changes.

use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};
use crate::api::{Object, Task, TaskState};
use crate::manager::store::{Event, EventAction, MemoryStore};
use std::collections::HashMap;

/// A task is sent to its node once the scheduler assigned it.
pub fn assigned_to(t: &Task, node_id: &str) -> bool {
    t.node_id == node_id && t.status.state >= TaskState::Assigned
}

/// What the agent acts on: the desired state (a task's spec never changes once made; the agent's runner acts on
/// the desired state alone). Status changes the agent itself reported are not resent. Only the ids of the
/// secrets and configs are kept, not the spec: a copy of every spec per session cost about 1 KiB per task.
#[derive(PartialEq)]
struct Sent {
    desired: TaskState,
    secrets: Box<[String]>,
    configs: Box<[String]>,
}

impl Sent {
    fn of(t: &Task) -> Self {
        let c = &t.spec.container;
        Sent {
            desired: t.desired_state,
            secrets: c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
            configs: c.configs.iter().map(|r| r.config_id.clone()).collect(),
        }
    }
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

    /// The secret and config ids of the tasks sent to the node that are meant to run (what is kept for them).
    pub fn live_files(&self) -> impl Iterator<Item = (&[String], &[String])> {
        self.sent.values().filter(|s| s.desired <= TaskState::Running).map(|s| (&*s.secrets, &*s.configs))
    }

    /// The full set from the store, resetting what was sent.
    pub fn complete(&mut self, view: &MemoryStore) -> AssignmentsMessage {
        self.sent.clear();
        let updated: Vec<Task> =
            view.tasks_by_node(&self.node_id).filter(|t| assigned_to(t, &self.node_id)).cloned().collect();
        for t in &updated {
            self.sent.insert(t.id.clone(), Sent::of(t));
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
            let now = Sent::of(t);
            if self.sent.get(&t.id) != Some(&now) {
                self.sent.insert(t.id.clone(), now);
                msg.removed.retain(|id| id != &t.id);
                msg.updated.retain(|u| u.id != t.id);
                msg.updated.push(crate::api::Task::clone(t));
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
        let mut msg = AssignmentsMessage::incremental();
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        assert_eq!(msg.updated.len(), 1);

        // The agent's own status report is not echoed back.
        let mut msg = AssignmentsMessage::incremental();
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

    /// The set keeps only what decides the node's files: the secrets of tasks meant to run.
    #[test]
    fn live_files_are_those_of_tasks_meant_to_run() {
        let mut set = AssignmentSet::new("n1");
        let mut t = task("t1", "s", 1);
        t.node_id = "n1".into();
        t.status.state = TaskState::Assigned;
        t.spec_mut().container.secrets.push(crate::api::SecretReference {
            secret_id: "sec1".into(),
            secret_name: "db".into(),
            target: crate::api::FileTarget { name: "db".into(), uid: "0".into(), gid: "0".into(), mode: 0o444 },
        });
        let mut msg = AssignmentsMessage::incremental();
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        let files: Vec<_> = set.live_files().map(|(s, c)| (s.to_vec(), c.len())).collect();
        assert_eq!(files, vec![(vec!["sec1".to_string()], 0)]);
        t.desired_state = TaskState::Shutdown;
        set.apply(&ev(EventAction::Update, &t), &mut msg);
        assert_eq!(set.live_files().count(), 0, "a task shut down keeps no file on the node");
    }
}
