//! Which secrets and configs a node holds: exactly those its live tasks (sent, desired at most RUNNING) use.
//! Secrets are opened with the managers' data key only here, to go to that node over its mTLS session; a node
//! with no task using a secret never receives it, and is told to drop it when its last such task stops.

use super::assignments::AssignmentSet;
use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};
use crate::api::FilePayload;
use crate::manager::datakey::DataKey;
use crate::manager::store::MemoryStore;
use std::collections::BTreeSet;

/// What one session was sent.
#[derive(Default)]
pub struct FileSet {
    secrets: BTreeSet<String>,
    configs: BTreeSet<String>,
}

impl FileSet {
    /// Adds to `msg` what changed in the set the node's tasks need: the whole set for a `Complete` message.
    pub fn fill(
        &mut self,
        view: &MemoryStore,
        key: Option<&DataKey>,
        tasks: &AssignmentSet,
        msg: &mut AssignmentsMessage,
    ) {
        if msg.kind == AssignmentsKind::Complete {
            self.secrets.clear();
            self.configs.clear();
        }
        let mut want_secrets = BTreeSet::new();
        let mut want_configs = BTreeSet::new();
        for (secrets, configs) in tasks.live_files() {
            want_secrets.extend(secrets.iter().cloned());
            want_configs.extend(configs.iter().cloned());
        }
        let delta = &mut msg.files;
        for id in want_secrets.difference(&self.secrets) {
            let Some(s) = view.secret(id) else { continue };
            let Some(key) = key else {
                tracing::error!(node.id = %tasks.node_id(), secret.id = %id, "no data key: cannot send the secret");
                continue;
            };
            match key.open(&s.sealed) {
                Ok(data) => delta.secrets.push(FilePayload {
                    id: id.clone(),
                    name: s.spec.annotations.name.clone(),
                    data,
                    templating: s.spec.templating.clone(),
                }),
                Err(e) => {
                    tracing::error!(node.id = %tasks.node_id(), secret.id = %id, error = %e, "cannot open the secret")
                }
            }
        }
        for id in want_configs.difference(&self.configs) {
            if let Some(c) = view.config(id) {
                delta.configs.push(FilePayload {
                    id: id.clone(),
                    name: c.spec.annotations.name.clone(),
                    data: c.spec.data.clone(),
                    templating: c.spec.templating.clone(),
                });
            }
        }
        if msg.kind == AssignmentsKind::Incremental {
            delta.removed_secrets.extend(self.secrets.difference(&want_secrets).cloned());
            delta.removed_configs.extend(self.configs.difference(&want_configs).cloned());
        }
        // What was sent, not what was wanted: a secret that could not be sent is tried again with the next change.
        self.secrets = want_secrets
            .into_iter()
            .filter(|id| self.secrets.contains(id) || delta.secrets.iter().any(|p| &p.id == id))
            .collect();
        self.configs = want_configs
            .into_iter()
            .filter(|id| self.configs.contains(id) || delta.configs.iter().any(|p| &p.id == id))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(kind: AssignmentsKind) -> AssignmentsMessage {
        AssignmentsMessage { kind, ..AssignmentsMessage::incremental() }
    }
    use crate::api::{FileTarget, Secret, SecretReference, SecretSpec, TaskState};
    use crate::manager::store::{Event, EventAction};
    use crate::testing::task;

    fn secret(id: &str, key: &DataKey, data: &[u8]) -> Secret {
        let mut s = crate::manager::controlapi::secrets::sealed_secret(
            SecretSpec {
                annotations: crate::api::Annotations { name: format!("n{id}"), labels: Default::default() },
                data: data.to_vec(),
                templating: None,
            },
            key,
            None,
        );
        s.id = id.into();
        s
    }

    fn using(id: &str, secret_id: &str) -> crate::api::Task {
        let mut t = task(id, "svc", 1);
        t.node_id = "n1".into();
        t.status.state = TaskState::Assigned;
        t.spec_mut().container.secrets.push(SecretReference {
            secret_id: secret_id.into(),
            secret_name: String::new(),
            target: FileTarget { name: "x".into(), uid: "0".into(), gid: "0".into(), mode: 0o400 },
        });
        t
    }

    #[test]
    fn a_node_gets_a_secret_with_its_first_task_using_it_and_drops_it_with_the_last() {
        let key = DataKey::generate();
        let mut view =
            MemoryStore::from_objects([secret("s1", &key, b"one").into(), secret("s2", &key, b"two").into()]);
        let (a, b) = (using("a", "s1"), using("b", "s1"));
        view = MemoryStore::from_objects(view.objects().chain([a.clone().into(), b.clone().into()]));
        let mut tasks = AssignmentSet::new("n1");
        let mut files = FileSet::default();
        let mut msg = tasks.complete(&view, &Default::default()).0;
        files.fill(&view, Some(&key), &tasks, &mut msg);
        assert_eq!(msg.files.secrets.len(), 1, "only s1, once");
        assert_eq!((msg.files.secrets[0].id.as_str(), msg.files.secrets[0].data.as_slice()), ("s1", &b"one"[..]));

        // Events as the node watch gives them: with the version before the change.
        let ev = |old: Option<&crate::api::Task>, t: &crate::api::Task, action| Event {
            action,
            object: t.clone().into(),
            old: old.map(|o| o.clone().into()),
            index: 9,
        };
        let mut a_down = a.clone();
        a_down.desired_state = TaskState::Shutdown;
        let mut msg = empty(AssignmentsKind::Incremental);
        tasks.apply(&ev(Some(&a), &a_down, EventAction::Update), &mut msg);
        files.fill(&view, Some(&key), &tasks, &mut msg);
        assert!(msg.files.is_empty(), "b still uses s1: {:?}", msg.files);

        let mut msg = empty(AssignmentsKind::Incremental);
        tasks.apply(&ev(Some(&b), &b, EventAction::Delete), &mut msg);
        files.fill(&view, Some(&key), &tasks, &mut msg);
        assert_eq!(msg.files.removed_secrets, vec!["s1".to_string()]);

        // Without the key nothing is sent, and it is tried again later.
        let mut msg = empty(AssignmentsKind::Incremental);
        tasks.apply(&ev(None, &using("c", "s2"), EventAction::Create), &mut msg);
        files.fill(&view, None, &tasks, &mut msg);
        assert!(msg.files.secrets.is_empty());
        let mut msg = empty(AssignmentsKind::Incremental);
        files.fill(&view, Some(&key), &tasks, &mut msg);
        assert_eq!(msg.files.secrets.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["s2"]);
    }
}
