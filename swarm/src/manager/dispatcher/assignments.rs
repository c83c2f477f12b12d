//! Computing what a node must run: the full set, then deltas as the store changes.

use super::netstate::Networks;
use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};
use crate::api::{Object, Task, TaskState};
use crate::manager::store::{Event, EventAction, MemoryStore};
use std::collections::HashMap;
use std::sync::Arc;

/// A task is sent to its node once the scheduler assigned it.
pub fn assigned_to(t: &Task, node_id: &str) -> bool {
    t.node_id == node_id && t.status.state >= TaskState::Assigned
}

/// What the agent acts on: the desired state (a task's spec never changes once made; the agent's runner acts on
/// the desired state alone) and the secrets and configs the task uses. Status changes the agent itself reported
/// are not resent.
fn same_assignment(a: &Task, b: &Task) -> bool {
    let (x, y) = (&a.spec.container, &b.spec.container);
    a.desired_state == b.desired_state
        && (Arc::ptr_eq(&a.spec, &b.spec)
            || (x.secrets.iter().map(|r| &r.secret_id).eq(y.secrets.iter().map(|r| &r.secret_id))
                && x.configs.iter().map(|r| &r.config_id).eq(y.configs.iter().map(|r| &r.config_id))))
}

/// The ids of the secrets and configs one task sent to the node uses.
struct Files {
    secrets: Box<[String]>,
    configs: Box<[String]>,
}

impl Files {
    /// What a task sent keeps on its node: nothing once it is not meant to run, or when it uses no file.
    fn of(t: &Task) -> Option<Self> {
        let c = &t.spec.container;
        if t.desired_state > TaskState::Running || (c.secrets.is_empty() && c.configs.is_empty()) {
            return None;
        }
        Some(Files {
            secrets: c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
            configs: c.configs.iter().map(|r| r.config_id.clone()).collect(),
        })
    }
}

/// Turns one session's store events into deltas. What was sent is not recorded per task: the node watch delivers
/// every change of the node's tasks after the read the set was made from, in order, each with the version before
/// it, so a task was sent exactly when its previous version is assigned to the node. A record cost about 100 bytes
/// per task, 100 MB at a million tasks. Only the tasks that use secrets or configs are kept, for [`Self::live_files`].
pub struct AssignmentSet {
    node_id: String,
    files: HashMap<String, Files>,
}

impl AssignmentSet {
    pub fn new(node_id: &str) -> Self {
        AssignmentSet { node_id: node_id.into(), files: HashMap::new() }
    }

    /// The node this set is for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The secret and config ids of the tasks sent to the node that are meant to run (what is kept for them).
    pub fn live_files(&self) -> impl Iterator<Item = (&[String], &[String])> {
        self.files.values().map(|f| (&*f.secrets, &*f.configs))
    }

    /// The full set from the store, resetting what was sent. A task the node holds as it is (`held`: its id and
    /// [`Task::assignment_digest`], from the node's request) is named in `kept`, not sent again: after a leader
    /// change every node reconnects at once, and the copies of every task in the cluster, queued for nodes that
    /// read them as they can, were most of the new leader's memory. Also returns the networks of the set's tasks
    /// that are meant to run, which the message's network state must hold ([`super::netstate`]).
    pub fn complete(&mut self, view: &MemoryStore, held: &HashMap<String, u64>) -> (AssignmentsMessage, Networks) {
        self.files.clear();
        let mut msg = AssignmentsMessage { kind: AssignmentsKind::Complete, ..AssignmentsMessage::incremental() };
        let mut networks = Networks::new();
        let node_id = self.node_id.clone();
        for t in view.tasks_by_node(&node_id).filter(|t| assigned_to(t, &node_id)) {
            self.keep_files(t);
            super::netstate::add_networks(&mut networks, t);
            if held.get(&t.id).is_some_and(|d| *d == t.assignment_digest()) {
                msg.kept.push(t.id.clone());
            } else {
                msg.updated.push(Task::clone(t));
            }
        }
        (msg, networks)
    }

    fn keep_files(&mut self, t: &Task) {
        match Files::of(t) {
            Some(f) => {
                self.files.insert(t.id.clone(), f);
            }
            None => {
                self.files.remove(&t.id);
            }
        }
    }

    /// Folds one store event of this node's watch into `msg` (an incremental message being built).
    pub fn apply(&mut self, ev: &Event, msg: &mut AssignmentsMessage) {
        let Object::Task(t) = &ev.object else { return };
        let before = match &ev.old {
            Some(Object::Task(o)) if assigned_to(o, &self.node_id) => Some(o),
            _ => None,
        };
        let mine = ev.action != EventAction::Delete && assigned_to(t, &self.node_id);
        if mine {
            if before.is_none_or(|o| !same_assignment(o, t)) {
                self.keep_files(t);
                msg.removed.retain(|id| id != &t.id);
                msg.updated.retain(|u| u.id != t.id);
                msg.updated.push(crate::api::Task::clone(t));
            }
        } else if before.is_some() {
            self.files.remove(&t.id);
            msg.updated.retain(|u| u.id != t.id);
            msg.removed.push(t.id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKind;
    use crate::manager::store::{NodeWatch, Store, StoreError};
    use crate::testing::{change_task, task};

    fn on_n1(id: &str, state: TaskState) -> Task {
        let mut t = task(id, "s", 1);
        t.node_id = "n1".into();
        t.status.state = state;
        t
    }

    /// Folds what the node's watch has queued into one incremental message, as a session does.
    async fn next(set: &mut AssignmentSet, w: &mut NodeWatch) -> AssignmentsMessage {
        let mut msg = AssignmentsMessage::incremental();
        while let Ok(ev) = tokio::time::timeout(std::time::Duration::from_millis(20), w.recv()).await {
            set.apply(&ev.unwrap(), &mut msg);
        }
        msg
    }

    fn use_secret(t: &mut Task, id: &str) {
        t.spec_mut().container.secrets.push(crate::api::SecretReference {
            secret_id: id.into(),
            secret_name: "db".into(),
            target: crate::api::FileTarget { name: "db".into(), uid: "0".into(), gid: "0".into(), mode: 0o444 },
        });
    }

    fn ids(tasks: &[Task]) -> Vec<&str> {
        tasks.iter().map(|t| t.id.as_str()).collect()
    }

    /// Driven by a real store's node watch: what was sent is known from each event's previous version alone.
    #[tokio::test]
    async fn deltas_follow_desired_state_not_status() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                tx.create(on_n1("sent", TaskState::Assigned));
                tx.create(task("pending", "s", 2));
                tx.create(on_n1("not-yet", TaskState::Pending));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let mut set = AssignmentSet::new("n1");
        let (complete, mut w) = store.view_and_watch_node("n1", |v| set.complete(v, &HashMap::new()).0);
        assert_eq!(ids(&complete.updated), vec!["sent"], "only assigned tasks are sent");

        change_task(&store, "pending", |t| {
            t.node_id = "n1".into();
            t.status.state = TaskState::Assigned;
        })
        .await;
        change_task(&store, "not-yet", |t| t.status.state = TaskState::Assigned).await;
        let msg = next(&mut set, &mut w).await;
        assert_eq!(ids(&msg.updated), vec!["pending", "not-yet"]);

        // The agent's own status report is not echoed back.
        change_task(&store, "sent", |t| t.status.state = TaskState::Running).await;
        let msg = next(&mut set, &mut w).await;
        assert!(msg.updated.is_empty() && msg.removed.is_empty(), "{:?}", ids(&msg.updated));

        change_task(&store, "sent", |t| t.desired_state = TaskState::Shutdown).await;
        let msg = next(&mut set, &mut w).await;
        assert_eq!(ids(&msg.updated), vec!["sent"]);

        // Shut down, then deleted within one batch: only the removal goes.
        change_task(&store, "pending", |t| t.desired_state = TaskState::Shutdown).await;
        let (v1, v2) = store.view(|v| (v.task("sent").unwrap().meta.version, v.task("pending").unwrap().meta.version));
        store
            .update(|tx| {
                tx.delete(ObjectKind::Task, "sent", v1);
                tx.delete(ObjectKind::Task, "pending", v2);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let msg = next(&mut set, &mut w).await;
        assert!(msg.updated.is_empty(), "{:?}", ids(&msg.updated));
        assert_eq!(msg.removed, vec!["sent".to_string(), "pending".to_string()]);
    }

    /// A reconnecting node named the tasks it holds: those unchanged are only named back, the others sent whole,
    /// and the set's files and networks still count every task.
    #[tokio::test]
    async fn a_full_set_names_back_the_tasks_the_node_holds_unchanged() {
        let store = Store::in_memory();
        let mut with_secret = on_n1("secret", TaskState::Running);
        use_secret(&mut with_secret, "sec1");
        with_secret.networks.push(crate::api::NetworkAttachment { network_id: "net1".into(), ..Default::default() });
        store
            .update(|tx| {
                for id in ["same", "stopping", "unknown-to-node"] {
                    tx.create(on_n1(id, TaskState::Running));
                }
                tx.create(with_secret.clone());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        // What the node last received: the same tasks, one of them since told to shut down.
        let node_copy = |id: &str| store.view(|v| Task::clone(v.task(id).unwrap()));
        let mut held: HashMap<String, u64> = HashMap::new();
        for id in ["same", "stopping", "secret"] {
            held.insert(id.into(), node_copy(id).assignment_digest());
        }
        held.insert("deleted-meanwhile".into(), 7);
        change_task(&store, "stopping", |t| t.desired_state = TaskState::Shutdown).await;
        // The node's own status report changes nothing it acts on.
        change_task(&store, "same", |t| t.status.message = "reported".into()).await;

        let mut set = AssignmentSet::new("n1");
        let (msg, networks) = store.view(|v| set.complete(v, &held));
        let mut kept = msg.kept.clone();
        kept.sort();
        assert_eq!(kept, vec!["same", "secret"]);
        let mut sent = ids(&msg.updated);
        sent.sort();
        assert_eq!(sent, vec!["stopping", "unknown-to-node"], "a changed task and one the node lacks go whole");
        assert_eq!(set.live_files().map(|(s, _)| s.to_vec()).collect::<Vec<_>>(), vec![vec!["sec1".to_string()]]);
        assert_eq!(networks.into_iter().collect::<Vec<_>>(), vec!["net1".to_string()], "kept tasks' networks count");

        // Without what the node holds (an older agent, or a resync), every task goes.
        let (msg, _) = store.view(|v| set.complete(v, &HashMap::new()));
        assert!(msg.kept.is_empty());
        assert_eq!(msg.updated.len(), 4);
    }

    /// The digest changes exactly when a delta would send the task again.
    #[test]
    fn the_assignment_digest_follows_what_a_delta_resends() {
        let a = on_n1("t", TaskState::Running);
        let mut status_only = a.clone();
        status_only.status.state = TaskState::Failed;
        status_only.status.message = "exit 1".into();
        let mut stopped = a.clone();
        stopped.desired_state = TaskState::Shutdown;
        let mut secret = a.clone();
        use_secret(&mut secret, "sec2");
        let mut config = a.clone();
        config.spec_mut().container.configs.push(crate::api::ConfigReference {
            config_id: "sec2".into(),
            config_name: "db".into(),
            target: crate::api::FileTarget { name: "db".into(), uid: "0".into(), gid: "0".into(), mode: 0o444 },
        });
        for b in [&status_only, &stopped, &secret, &config] {
            assert_eq!(same_assignment(&a, b), a.assignment_digest() == b.assignment_digest(), "{b:?}");
        }
        assert_ne!(secret.assignment_digest(), config.assignment_digest(), "a secret is not a config of that id");
        assert!(same_assignment(&a, &status_only));
    }

    /// The set keeps only what decides the node's files: the secrets of tasks meant to run.
    #[tokio::test]
    async fn live_files_are_those_of_tasks_meant_to_run() {
        let store = Store::in_memory();
        let mut t = on_n1("t1", TaskState::Assigned);
        use_secret(&mut t, "sec1");
        let mut set = AssignmentSet::new("n1");
        let (_, mut w) = store.view_and_watch_node("n1", |v| set.complete(v, &HashMap::new()).0);
        store
            .update(|tx| {
                tx.create(t);
                tx.create(on_n1("no-files", TaskState::Assigned));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(next(&mut set, &mut w).await.updated.len(), 2);
        let files: Vec<_> = set.live_files().map(|(s, c)| (s.to_vec(), c.len())).collect();
        assert_eq!(files, vec![(vec!["sec1".to_string()], 0)]);
        change_task(&store, "t1", |t| t.desired_state = TaskState::Shutdown).await;
        assert_eq!(next(&mut set, &mut w).await.updated.len(), 1);
        assert_eq!(set.live_files().count(), 0, "a task shut down keeps no file on the node");
    }
}
