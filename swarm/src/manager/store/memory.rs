//! The in-memory indexed view of every object, and the one function that changes it: [`MemoryStore::apply`].
//!
//! `apply` is deterministic (it reads no clock and no randomness), so every manager that applies the same Raft
//! entry reaches the same state. A proposal is all-or-nothing: if one operation fails its check (stale version,
//! duplicate name, missing object) the store is left as it was and the whole proposal fails.
//!
//! Every map is a persistent one (`imbl`): cloning a store is a few reference counts, and the clone and the
//! original share every node until one of them changes it. Readers and snapshots work on such a clone while the
//! state machine goes on applying, so a long read (a listing of a million tasks, a snapshot being written) never
//! holds back a write.

use super::task_key::TaskKey;
use super::{ApplyError, Event, EventAction, Op, Proposal};
use crate::api::{Cluster, Config, Network, Node, Object, ObjectKind, Secret, Service, Task, TaskSpec, TaskState};
use imbl::{HashMap, OrdMap, OrdSet};
use std::sync::Arc;

/// Objects of one kind by id. Values sit behind an `Arc` so that copying a shared node of the tree (the first
/// write to it while a reader holds a clone) copies pointers, not objects.
type ById<T> = OrdMap<String, Arc<T>>;

/// Every object, by kind and id, with secondary indexes.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    clusters: ById<Cluster>,
    nodes: ById<Node>,
    services: ById<Service>,
    tasks: OrdMap<TaskKey, Arc<Task>>,
    networks: ById<Network>,
    secrets: ById<Secret>,
    configs: ById<Config>,
    service_by_name: HashMap<String, String>,
    network_by_name: HashMap<String, String>,
    secret_by_name: HashMap<String, String>,
    config_by_name: HashMap<String, String>,
    tasks_by_service: HashMap<String, OrdSet<TaskKey>>,
    tasks_by_node: HashMap<String, OrdSet<TaskKey>>,
    /// Tasks by desired state and by observed state, RUNNING left out of both ([`indexed`]).
    tasks_by_desired: OrdMap<TaskState, OrdSet<TaskKey>>,
    tasks_by_state: OrdMap<TaskState, OrdSet<TaskKey>>,
    /// How many tasks have each (desired, observed) pair of states, RUNNING included.
    task_counts: OrdMap<(TaskState, TaskState), usize>,
    /// Per service: tasks desired RUNNING, and those of them observed RUNNING (`service ls` counts without
    /// visiting the tasks).
    live_by_service: HashMap<String, LiveCounts>,
    /// Per service, the task specs its tasks share (newest first, at most [`SHARED_SPECS`]): a task's spec is most
    /// of its size, and a service's thousands of tasks were made from one or two specs.
    specs: HashMap<String, Vec<Arc<TaskSpec>>>,
}

/// How many specs per service [`MemoryStore`] shares: the current one and the one an update is replacing.
const SHARED_SPECS: usize = 2;

/// A service's task counts kept by [`MemoryStore`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LiveCounts {
    /// Tasks whose desired state is RUNNING.
    pub live: u64,
    /// Of those, the ones observed RUNNING.
    pub running: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a store from a list of objects (a snapshot or the persisted state machine).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut s = MemoryStore::new();
        for o in objects {
            s.put(o);
        }
        s
    }

    /// Every object, in a stable order (kind, then id).
    pub fn objects(&self) -> impl Iterator<Item = Object> + '_ {
        self.clusters
            .values()
            .map(|o| Object::Cluster((**o).clone()))
            .chain(self.nodes.values().map(|o| Object::Node((**o).clone())))
            .chain(self.services.values().map(|o| Object::Service((**o).clone())))
            .chain(self.tasks.values().map(|o| Object::Task(o.clone())))
            .chain(self.networks.values().map(|o| Object::Network((**o).clone())))
            .chain(self.secrets.values().map(|o| Object::Secret((**o).clone())))
            .chain(self.configs.values().map(|o| Object::Config((**o).clone())))
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
            + self.nodes.len()
            + self.services.len()
            + self.tasks.len()
            + self.networks.len()
            + self.secrets.len()
            + self.configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // ---- reads ----

    pub fn get(&self, kind: ObjectKind, id: &str) -> Option<Object> {
        match kind {
            ObjectKind::Cluster => self.clusters.get(id).map(|o| Object::Cluster((**o).clone())),
            ObjectKind::Node => self.nodes.get(id).map(|o| Object::Node((**o).clone())),
            ObjectKind::Service => self.services.get(id).map(|o| Object::Service((**o).clone())),
            ObjectKind::Task => self.tasks.get(&TaskKey::of(id)).map(|o| Object::Task(o.clone())),
            ObjectKind::Network => self.networks.get(id).map(|o| Object::Network((**o).clone())),
            ObjectKind::Secret => self.secrets.get(id).map(|o| Object::Secret((**o).clone())),
            ObjectKind::Config => self.configs.get(id).map(|o| Object::Config((**o).clone())),
        }
    }

    fn version_of(&self, kind: ObjectKind, id: &str) -> Option<u64> {
        match kind {
            ObjectKind::Cluster => self.clusters.get(id).map(|o| o.meta.version),
            ObjectKind::Node => self.nodes.get(id).map(|o| o.meta.version),
            ObjectKind::Service => self.services.get(id).map(|o| o.meta.version),
            ObjectKind::Task => self.tasks.get(&TaskKey::of(id)).map(|o| o.meta.version),
            ObjectKind::Network => self.networks.get(id).map(|o| o.meta.version),
            ObjectKind::Secret => self.secrets.get(id).map(|o| o.meta.version),
            ObjectKind::Config => self.configs.get(id).map(|o| o.meta.version),
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters.values().next().map(|o| &**o)
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> + Clone {
        self.clusters.iter().map(|(_, o)| &**o)
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id).map(|o| &**o)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> + Clone {
        self.nodes.iter().map(|(_, o)| &**o)
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id).map(|o| &**o)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.service_by_name.get(name).and_then(|id| self.services.get(id)).map(|o| &**o)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> + Clone {
        self.services.iter().map(|(_, o)| &**o)
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id).map(|o| &**o)
    }

    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.network_by_name.get(name).and_then(|id| self.networks.get(id)).map(|o| &**o)
    }

    pub fn networks(&self) -> impl Iterator<Item = &Network> + Clone {
        self.networks.iter().map(|(_, o)| &**o)
    }

    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id).map(|o| &**o)
    }

    pub fn secret_by_name(&self, name: &str) -> Option<&Secret> {
        self.secret_by_name.get(name).and_then(|id| self.secrets.get(id)).map(|o| &**o)
    }

    pub fn secrets(&self) -> impl Iterator<Item = &Secret> + Clone {
        self.secrets.iter().map(|(_, o)| &**o)
    }

    pub fn config(&self, id: &str) -> Option<&Config> {
        self.configs.get(id).map(|o| &**o)
    }

    pub fn config_by_name(&self, name: &str) -> Option<&Config> {
        self.config_by_name.get(name).and_then(|id| self.configs.get(id)).map(|o| &**o)
    }

    pub fn configs(&self) -> impl Iterator<Item = &Config> + Clone {
        self.configs.iter().map(|(_, o)| &**o)
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(&TaskKey::of(id)).map(|o| &**o)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> + Clone {
        self.tasks.iter().map(|(_, o)| &**o)
    }

    /// Tasks with an id after `after` (all of them when it is empty), in id order: a listing's next page.
    pub fn tasks_after(&self, after: &str) -> impl Iterator<Item = &Task> {
        self.tasks.range((std::ops::Bound::Excluded(TaskKey::of(after)), std::ops::Bound::Unbounded)).map(|(_, t)| &**t)
    }

    /// Services with an id after `after` (all of them when it is empty), in id order.
    pub fn services_after(&self, after: &str) -> impl Iterator<Item = &Service> {
        self.services.range::<_, str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)).map(|(_, s)| &**s)
    }

    pub fn tasks_by_service(&self, service_id: &str) -> impl Iterator<Item = &Task> {
        self.tasks_in(self.tasks_by_service.get(service_id))
    }

    pub fn tasks_by_node(&self, node_id: &str) -> impl Iterator<Item = &Task> {
        self.tasks_in(self.tasks_by_node.get(node_id))
    }

    /// Tasks whose desired state is `state`, which must not be RUNNING (see [`indexed`]).
    pub fn tasks_by_desired_state(&self, state: TaskState) -> impl Iterator<Item = &Task> {
        debug_assert!(indexed(state), "tasks desired {state:?} are not indexed");
        self.tasks_in(self.tasks_by_desired.get(&state))
    }

    /// The tasks an index entry names (none when the entry is absent).
    fn tasks_in<'a>(&'a self, ids: Option<&'a OrdSet<TaskKey>>) -> impl Iterator<Item = &'a Task> {
        ids.into_iter().flat_map(|ids| ids.iter()).filter_map(|id| self.tasks.get(id).map(|t| &**t))
    }

    /// The task counts of `service_id` (`service ls`), kept as tasks are written.
    pub fn live_counts(&self, service_id: &str) -> LiveCounts {
        self.live_by_service.get(service_id).copied().unwrap_or_default()
    }

    /// Tasks whose observed state (`status.state`) is `state`: the allocator's NEW, the scheduler's PENDING.
    /// `state` must not be RUNNING (see [`indexed`]).
    pub fn tasks_by_state(&self, state: TaskState) -> impl Iterator<Item = &Task> {
        debug_assert!(indexed(state), "tasks in {state:?} are not indexed");
        self.tasks_in(self.tasks_by_state.get(&state))
    }

    /// How many tasks have each pair of desired and observed states, as `(desired, observed, count)` (without
    /// visiting a task).
    pub fn task_counts(&self) -> impl Iterator<Item = (TaskState, TaskState, usize)> + '_ {
        self.task_counts.iter().map(|((d, o), n)| (*d, *o, *n))
    }

    // ---- writes ----

    /// Applies a proposal at Raft index `index`: checks every operation, stamps versions and times, and returns
    /// the events to publish. On error nothing is changed.
    ///
    /// Events are made shared (`Arc`) here, once: an event holds a task twice (before and after) and moving a
    /// thousand of them into `Arc`s afterwards was a measurable share of the apply. The events also serve as the
    /// undo log, so nothing is copied for a rollback that rarely happens.
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Result<Vec<Arc<Event>>, ApplyError> {
        let mut events = Vec::with_capacity(proposal.ops.len());
        for op in &proposal.ops {
            match self.apply_op(index, proposal, op) {
                Ok(None) => {}
                Ok(Some(ev)) => events.push(Arc::new(ev)),
                Err(e) => {
                    for ev in events.iter().rev() {
                        self.remove(ev.object.kind(), ev.object.id());
                        if let Some(o) = &ev.old {
                            self.put(o.clone());
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(events)
    }

    /// Applies one operation; `None` when it changes nothing (a status report the task no longer takes).
    fn apply_op(&mut self, index: u64, proposal: &Proposal, op: &Op) -> Result<Option<Event>, ApplyError> {
        match op {
            Op::Create(obj) => {
                let (kind, id) = (obj.kind(), obj.id().to_string());
                if self.version_of(kind, &id).is_some() {
                    return Err(ApplyError::Exists { kind, id });
                }
                self.check_name(obj)?;
                let mut obj = Object::clone(obj);
                let m = obj.meta_mut();
                m.version = index;
                m.created_index = index;
                m.created_at = proposal.timestamp;
                m.updated_at = proposal.timestamp;
                self.share_spec(&mut obj);
                self.put(obj.clone());
                Ok(Some(Event { action: EventAction::Create, object: obj, old: None, index }))
            }
            Op::Update(obj) => {
                let (kind, id) = (obj.kind(), obj.id().to_string());
                let Some(old) = self.get(kind, &id) else {
                    return Err(ApplyError::NotFound { kind, id });
                };
                if old.meta().version != obj.meta().version {
                    return Err(ApplyError::OutOfSequence { kind, id });
                }
                self.check_name(obj)?;
                Ok(Some(self.update_to(index, proposal, old, Object::clone(obj))))
            }
            Op::TaskStatus { id, node_id, status } => {
                let Some(t) = self.tasks.get(&TaskKey::of(id)).filter(|t| t.takes_report(node_id, status)) else {
                    return Ok(None);
                };
                let old = Object::Task(t.clone());
                let mut next = Task::clone(t);
                next.status = status.clone();
                Ok(Some(self.update_to(index, proposal, old, Object::Task(Arc::new(next)))))
            }
            Op::TaskProgress(p) => {
                let Some(t) = self.tasks.get(&TaskKey::of(&p.id)) else {
                    return Err(ApplyError::NotFound { kind: ObjectKind::Task, id: p.id.clone() });
                };
                if t.meta.version != p.version {
                    return Err(ApplyError::OutOfSequence { kind: ObjectKind::Task, id: p.id.clone() });
                }
                let old = Object::Task(t.clone());
                let mut next = Task::clone(t);
                next.node_id.clone_from(&p.node_id);
                next.desired_state = p.desired_state;
                next.status = p.status.clone();
                next.networks.clone_from(&p.networks);
                next.endpoint.clone_from(&p.endpoint);
                Ok(Some(self.update_to(index, proposal, old, Object::Task(Arc::new(next)))))
            }
            Op::Delete { kind, id, version } => {
                let Some(old) = self.get(*kind, id) else {
                    return Err(ApplyError::NotFound { kind: *kind, id: id.clone() });
                };
                if old.meta().version != *version {
                    return Err(ApplyError::OutOfSequence { kind: *kind, id: id.clone() });
                }
                self.remove(*kind, id);
                Ok(Some(Event { action: EventAction::Delete, object: old.clone(), old: Some(old), index }))
            }
        }
    }

    /// Puts `obj` as the next version of `old` (checked by the caller), stamped at `index`.
    fn update_to(&mut self, index: u64, proposal: &Proposal, old: Object, mut obj: Object) -> Event {
        let m = obj.meta_mut();
        m.version = index;
        m.created_index = old.meta().created_index;
        m.created_at = old.meta().created_at;
        m.updated_at = proposal.timestamp;
        self.share_spec(&mut obj);
        self.replace(obj.clone());
        Event { action: EventAction::Update, object: obj, old: Some(old), index }
    }

    /// Services, networks, secrets and configs have unique names (each within its kind).
    fn check_name(&self, obj: &Object) -> Result<(), ApplyError> {
        let (index, name, id) = match obj {
            Object::Service(s) => (&self.service_by_name, &s.spec.annotations.name, &s.id),
            Object::Network(n) => (&self.network_by_name, &n.spec.annotations.name, &n.id),
            Object::Secret(o) => (&self.secret_by_name, &o.spec.annotations.name, &o.id),
            Object::Config(o) => (&self.config_by_name, &o.spec.annotations.name, &o.id),
            _ => return Ok(()),
        };
        match index.get(name) {
            Some(other) if other != id => Err(ApplyError::NameConflict { kind: obj.kind(), name: name.clone() }),
            _ => Ok(()),
        }
    }

    /// Points a task's spec at the copy its service's other tasks share, when they are equal (a task decoded from
    /// the Raft log or a snapshot comes with a copy of its own).
    fn share_spec(&mut self, obj: &mut Object) {
        let Object::Task(t) = obj else { return };
        let shared = self.specs.entry(t.service_id.clone()).or_default();
        // The most recently used spec first; a task only changes (is copied) when it points elsewhere.
        match shared.iter().position(|s| Arc::ptr_eq(s, &t.spec) || **s == *t.spec) {
            Some(i) => {
                let s = shared.remove(i);
                shared.insert(0, s);
            }
            None => {
                shared.insert(0, t.spec.clone());
                shared.truncate(SHARED_SPECS);
            }
        }
        if !Arc::ptr_eq(&shared[0], &t.spec) {
            Arc::make_mut(t).spec = shared[0].clone();
        }
    }

    /// Puts `obj` unless a version at least as new is held: for loading records that may hold one object twice.
    pub(crate) fn put_newest(&mut self, obj: Object) {
        match self.version_of(obj.kind(), obj.id()) {
            None => self.put(obj),
            Some(held) if obj.meta().version > held => self.replace(obj),
            Some(_) => {}
        }
    }

    /// Inserts an object and indexes it; the caller has removed any previous version.
    pub(crate) fn put(&mut self, mut obj: Object) {
        self.share_spec(&mut obj);
        match obj {
            Object::Cluster(c) => {
                self.clusters.insert(c.id.clone(), Arc::new(c));
            }
            Object::Node(n) => {
                self.nodes.insert(n.id.clone(), Arc::new(n));
            }
            Object::Service(s) => {
                self.service_by_name.insert(s.spec.annotations.name.clone(), s.id.clone());
                self.services.insert(s.id.clone(), Arc::new(s));
            }
            Object::Task(t) => {
                let id = TaskKey::of(&t.id);
                self.tasks_by_service.entry(t.service_id.clone()).or_default().insert(id.clone());
                if !t.node_id.is_empty() {
                    self.tasks_by_node.entry(t.node_id.clone()).or_default().insert(id.clone());
                }
                put_in(&mut self.tasks_by_desired, t.desired_state, &id);
                put_in(&mut self.tasks_by_state, t.status.state, &id);
                count_states(&mut self.task_counts, &t, true);
                count_live(&mut self.live_by_service, &t, true);
                self.tasks.insert(id, t);
            }
            Object::Network(n) => {
                self.network_by_name.insert(n.spec.annotations.name.clone(), n.id.clone());
                self.networks.insert(n.id.clone(), Arc::new(n));
            }
            Object::Secret(o) => {
                self.secret_by_name.insert(o.spec.annotations.name.clone(), o.id.clone());
                self.secrets.insert(o.id.clone(), Arc::new(o));
            }
            Object::Config(o) => {
                self.config_by_name.insert(o.spec.annotations.name.clone(), o.id.clone());
                self.configs.insert(o.id.clone(), Arc::new(o));
            }
        }
    }

    fn remove(&mut self, kind: ObjectKind, id: &str) {
        match kind {
            ObjectKind::Cluster => {
                self.clusters.remove(id);
            }
            ObjectKind::Node => {
                self.nodes.remove(id);
            }
            ObjectKind::Service => {
                if let Some(s) = self.services.remove(id) {
                    if self.service_by_name.get(&s.spec.annotations.name).map(String::as_str) == Some(id) {
                        self.service_by_name.remove(&s.spec.annotations.name);
                    }
                }
            }
            ObjectKind::Network => {
                if let Some(n) = self.networks.remove(id) {
                    if self.network_by_name.get(&n.spec.annotations.name).map(String::as_str) == Some(id) {
                        self.network_by_name.remove(&n.spec.annotations.name);
                    }
                }
            }
            ObjectKind::Secret => {
                if let Some(o) = self.secrets.remove(id) {
                    if self.secret_by_name.get(&o.spec.annotations.name).map(String::as_str) == Some(id) {
                        self.secret_by_name.remove(&o.spec.annotations.name);
                    }
                }
            }
            ObjectKind::Config => {
                if let Some(o) = self.configs.remove(id) {
                    if self.config_by_name.get(&o.spec.annotations.name).map(String::as_str) == Some(id) {
                        self.config_by_name.remove(&o.spec.annotations.name);
                    }
                }
            }
            ObjectKind::Task => {
                let key = TaskKey::of(id);
                if let Some(t) = self.tasks.remove(&key) {
                    if remove_from_index(&mut self.tasks_by_service, &t.service_id, &key) {
                        self.specs.remove(&t.service_id);
                    }
                    remove_from_index(&mut self.tasks_by_node, &t.node_id, &key);
                    count_live(&mut self.live_by_service, &t, false);
                    count_states(&mut self.task_counts, &t, false);
                    take_from(&mut self.tasks_by_desired, t.desired_state, &key);
                    take_from(&mut self.tasks_by_state, t.status.state, &key);
                }
            }
        }
    }

    /// Puts the next version of an object that exists. A task stays in place and moves only in the indexes whose
    /// key changed: most updates are a task's progress, and a remove then a put would take its id out of and back
    /// into four indexes, one of them holding nearly every task.
    fn replace(&mut self, obj: Object) {
        let Object::Task(new) = obj else {
            self.remove(obj.kind(), obj.id());
            self.put(obj);
            return;
        };
        let id = TaskKey::of(&new.id);
        let Some(slot) = self.tasks.get_mut(&id) else {
            self.put(Object::Task(new));
            return;
        };
        let old = std::mem::replace(slot, new.clone());
        if old.service_id != new.service_id {
            if remove_from_index(&mut self.tasks_by_service, &old.service_id, &id) {
                self.specs.remove(&old.service_id);
            }
            self.tasks_by_service.entry(new.service_id.clone()).or_default().insert(id.clone());
        }
        if old.node_id != new.node_id {
            remove_from_index(&mut self.tasks_by_node, &old.node_id, &id);
            if !new.node_id.is_empty() {
                self.tasks_by_node.entry(new.node_id.clone()).or_default().insert(id.clone());
            }
        }
        if old.desired_state != new.desired_state {
            take_from(&mut self.tasks_by_desired, old.desired_state, &id);
            put_in(&mut self.tasks_by_desired, new.desired_state, &id);
        }
        if old.status.state != new.status.state {
            take_from(&mut self.tasks_by_state, old.status.state, &id);
            put_in(&mut self.tasks_by_state, new.status.state, &id);
        }
        if (old.desired_state, old.status.state) != (new.desired_state, new.status.state) {
            count_states(&mut self.task_counts, &new, true);
            count_states(&mut self.task_counts, &old, false);
        }
        // The new version counted first, so a service's counts are not dropped and made again in between.
        count_live(&mut self.live_by_service, &new, true);
        count_live(&mut self.live_by_service, &old, false);
    }
}

/// Adds `t` to (or takes it from) its service's counts of tasks desired RUNNING and observed RUNNING.
fn count_live(counts: &mut HashMap<String, LiveCounts>, t: &Task, add: bool) {
    if t.desired_state != TaskState::Running {
        return;
    }
    let running = u64::from(t.status.state == TaskState::Running);
    match counts.get_mut(&t.service_id) {
        Some(c) if add => {
            c.live += 1;
            c.running += running;
        }
        None if add => {
            counts.insert(t.service_id.clone(), LiveCounts { live: 1, running });
        }
        Some(c) => {
            c.live -= 1;
            c.running -= running;
            if c.live == 0 {
                counts.remove(&t.service_id);
            }
        }
        None => {}
    }
}

/// Whether tasks in `state` (desired or observed) are listed in the state indexes. RUNNING is not: in a running
/// cluster nearly every task is there and no component lists them, and a set of a million ids made each task's
/// last step (and each new task's desired state) a write deep into a tree that every reader's clone shares.
/// [`MemoryStore::task_counts`] counts them.
fn indexed(state: TaskState) -> bool {
    state != TaskState::Running
}

/// Puts `id` in `index[state]` when that state is [`indexed`].
fn put_in(index: &mut OrdMap<TaskState, OrdSet<TaskKey>>, state: TaskState, id: &TaskKey) {
    if indexed(state) {
        index.entry(state).or_default().insert(id.clone());
    }
}

/// Adds `t` to (or takes it from) the count of its (desired, observed) pair of states.
fn count_states(counts: &mut OrdMap<(TaskState, TaskState), usize>, t: &Task, add: bool) {
    let key = (t.desired_state, t.status.state);
    match counts.get_mut(&key) {
        Some(n) if add => *n += 1,
        None if add => {
            counts.insert(key, 1);
        }
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            counts.remove(&key);
        }
        None => {}
    }
}

/// Takes `id` out of `index[state]`, dropping the set once empty.
fn take_from(index: &mut OrdMap<TaskState, OrdSet<TaskKey>>, state: TaskState, id: &TaskKey) {
    if let Some(set) = index.get_mut(&state) {
        set.remove(id);
        if set.is_empty() {
            index.remove(&state);
        }
    }
}

/// Removes `id` from `index[key]`; returns whether that left `key` with nothing.
fn remove_from_index(index: &mut HashMap<String, OrdSet<TaskKey>>, key: &str, id: &TaskKey) -> bool {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Timestamp;
    use crate::testing::{service, task};
    use std::collections::BTreeSet;

    fn p(ops: Vec<Op>) -> Proposal {
        Proposal { ops, timestamp: Timestamp::now() }
    }

    #[test]
    fn tasks_made_from_one_spec_share_one_copy_until_their_service_has_none_left() {
        let mut m = MemoryStore::new();
        // Each task as decoded from the log: a copy of its own.
        let made = |id: &str, image: &str| {
            let mut t = task(id, "s1", 1);
            t.spec_mut().container.image = image.into();
            Op::create(t)
        };
        m.apply(1, &p(vec![made("t1", "a"), made("t2", "a"), made("t3", "b")])).unwrap();
        m.apply(2, &p(vec![made("t4", "a")])).unwrap();
        let spec = |m: &MemoryStore, id: &str| m.task(id).unwrap().spec.clone();
        assert!(Arc::ptr_eq(&spec(&m, "t1"), &spec(&m, "t2")), "one copy of a");
        assert!(Arc::ptr_eq(&spec(&m, "t1"), &spec(&m, "t4")), "one copy of a, across entries");
        assert!(!Arc::ptr_eq(&spec(&m, "t1"), &spec(&m, "t3")), "b is another spec");
        assert_eq!(spec(&m, "t3").container.image, "b");
        let mut moved = m.task("t2").unwrap().clone();
        moved.status.state = TaskState::Running;
        m.apply(3, &p(vec![Op::update(moved)])).unwrap();
        assert!(Arc::ptr_eq(&spec(&m, "t1"), &spec(&m, "t2")), "an update keeps sharing");
        let gone: Vec<Op> = ["t1", "t2", "t3", "t4"]
            .iter()
            .map(|id| Op::Delete {
                kind: ObjectKind::Task,
                id: (*id).into(),
                version: m.task(id).unwrap().meta.version,
            })
            .collect();
        m.apply(4, &p(gone)).unwrap();
        assert!(m.specs.is_empty(), "nothing kept for a service without tasks");
    }

    /// An update moves a task only in the indexes whose key changed; whatever it changed, the indexes end as a
    /// store built afresh from the same objects has them.
    #[test]
    fn updated_tasks_are_indexed_as_a_store_built_from_scratch_indexes_them() {
        let mut m = MemoryStore::new();
        let ids = ["t1", "t2", "t3", "t4"];
        let made: Vec<Op> = ids.iter().map(|id| Op::create(task(id, "s1", 1))).collect();
        m.apply(1, &p(made)).unwrap();
        type Change = fn(&mut Task);
        let changes: [(&str, Change); 9] = [
            ("t1", |t| t.node_id = "n1".into()),
            ("t2", |t| t.node_id = "n1".into()),
            ("t1", |t| t.status.state = TaskState::Running),
            ("t2", |t| t.status.state = TaskState::Running),
            ("t1", |t| t.node_id = "n2".into()),
            ("t2", |t| t.desired_state = TaskState::Shutdown),
            ("t3", |t| t.service_id = "s2".into()),
            ("t3", |t| t.status.state = TaskState::Running),
            ("t1", |t| {
                t.desired_state = TaskState::Shutdown;
                t.status.state = TaskState::Complete;
                t.node_id = String::new();
            }),
        ];
        for (i, (id, change)) in changes.iter().enumerate() {
            let mut t = m.task(id).unwrap().clone();
            change(&mut t);
            m.apply(2 + i as u64, &p(vec![Op::update(t)])).unwrap();
            let fresh = MemoryStore::from_objects(m.objects());
            let step = format!("after change {i} to {id}");
            assert_eq!(m.tasks_by_service, fresh.tasks_by_service, "{step}");
            assert_eq!(m.tasks_by_node, fresh.tasks_by_node, "{step}");
            assert_eq!(m.tasks_by_desired, fresh.tasks_by_desired, "{step}");
            assert_eq!(m.tasks_by_state, fresh.tasks_by_state, "{step}");
            assert_eq!(m.task_counts, fresh.task_counts, "{step}");
            assert_eq!(m.live_by_service, fresh.live_by_service, "{step}");
            assert_eq!(m.specs.keys().collect::<BTreeSet<_>>(), fresh.specs.keys().collect(), "{step}");
        }
        assert_eq!(m.live_counts("s1"), LiveCounts { live: 1, running: 0 }, "t4 alone is live in s1");
        assert_eq!(m.live_counts("s2"), LiveCounts { live: 1, running: 1 }, "t3 moved to s2 and runs there");
        assert_eq!(m.tasks_by_node("n1").map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t2"]);
        assert_eq!(m.tasks_by_node("n2").count(), 0, "t1 left n2");
    }

    /// A status report carries no version: it lands on whatever version the task has when it is applied, and a
    /// report the task no longer takes is dropped without failing the reports beside it.
    #[test]
    fn a_status_report_applies_to_the_current_version_and_a_stale_one_is_dropped_alone() {
        let mut m = MemoryStore::new();
        let on_n1 = |id: &str| {
            let mut t = task(id, "s1", 1);
            t.node_id = "n1".into();
            t.status.state = TaskState::Assigned;
            Op::create(t)
        };
        m.apply(1, &p(vec![on_n1("t1"), on_n1("t2"), on_n1("t3")])).unwrap();
        // The orchestrator writes t1 after the agent's report was made.
        let mut t1 = m.task("t1").unwrap().clone();
        t1.desired_state = TaskState::Shutdown;
        m.apply(2, &p(vec![Op::update(t1)])).unwrap();
        let report = |id: &str, node: &str, state| Op::TaskStatus {
            id: id.into(),
            node_id: node.into(),
            status: crate::api::TaskStatus { state, message: "r".into(), ..Default::default() },
        };
        let events = m
            .apply(
                3,
                &p(vec![
                    report("t1", "n1", TaskState::Running),
                    report("t2", "n2", TaskState::Running),
                    report("t3", "n1", TaskState::Running),
                    report("t3", "n1", TaskState::Preparing),
                    report("gone", "n1", TaskState::Running),
                ]),
            )
            .unwrap();
        let changed: Vec<&str> = events.iter().map(|e| e.object.id()).collect();
        assert_eq!(changed, ["t1", "t3"], "t2 is on n1, not n2; t3 does not go back; gone does not exist");
        let t1 = m.task("t1").unwrap();
        assert_eq!((t1.status.state, t1.desired_state), (TaskState::Running, TaskState::Shutdown), "both writes kept");
        assert_eq!(t1.meta.version, 3);
        assert_eq!(m.task("t2").unwrap().status.state, TaskState::Assigned);
        assert_eq!(m.task("t3").unwrap().status.state, TaskState::Running);
        let count = |m: &MemoryStore, d, o| m.task_counts().find(|(dd, oo, _)| (*dd, *oo) == (d, o)).map(|c| c.2);
        assert_eq!(count(&m, TaskState::Running, TaskState::Running), Some(1), "counted by the reported state");
        assert_eq!(count(&m, TaskState::Shutdown, TaskState::Running), Some(1));
        assert_eq!(m.tasks_by_state(TaskState::Assigned).count(), 1, "t2 still indexed where it was");
        assert_eq!(m.live_counts("s1"), LiveCounts { live: 2, running: 1 }, "t1 is no longer desired running");
    }

    #[test]
    fn versions_indexes_and_atomic_failure() {
        let mut m = MemoryStore::new();
        m.apply(1, &p(vec![Op::create(service("s1", "web", 1)), Op::create(task("t1", "s1", 1))])).unwrap();
        assert_eq!(m.service_by_name("web").unwrap().meta.version, 1);
        assert_eq!(m.service_by_name("web").unwrap().meta.created_index, 1);
        assert_eq!(m.tasks_by_service("s1").count(), 1);
        let counts = |m: &MemoryStore| m.task_counts().collect::<Vec<_>>();
        assert_eq!(counts(&m), [(TaskState::Running, TaskState::Pending, 1)]);
        assert_eq!(m.tasks_by_desired.get(&TaskState::Running), None, "desired RUNNING is counted, not indexed");
        assert_eq!(m.tasks_by_state(TaskState::Pending).count(), 1, "observed states are indexed too");
        assert_eq!(m.live_counts("s1"), LiveCounts { live: 1, running: 0 });
        let mut running = m.task("t1").unwrap().clone();
        running.status.state = TaskState::Running;
        m.apply(2, &p(vec![Op::update(running)])).unwrap();
        assert_eq!(m.live_counts("s1"), LiveCounts { live: 1, running: 1 }, "counted as its state moves");
        assert_eq!(counts(&m), [(TaskState::Running, TaskState::Running, 1)]);
        assert_eq!(m.tasks_by_state.get(&TaskState::Running), None, "observed RUNNING is counted, not indexed");
        assert_eq!(m.tasks_by_state(TaskState::Pending).count(), 0, "it left PENDING");

        // Stale update: the whole proposal fails and nothing changes.
        let mut t = m.task("t1").unwrap().clone();
        t.desired_state = TaskState::Shutdown;
        let mut stale = t.clone();
        stale.meta.version = 0;
        let ops = vec![Op::update(t.clone()), Op::create(task("t2", "s1", 2)), Op::update(stale)];
        let err = m.apply(2, &p(ops)).unwrap_err();
        assert!(err.to_string().contains("update out of sequence"), "{err}");
        assert!(m.task("t2").is_none(), "all-or-nothing");
        let t1 = m.task("t1").unwrap();
        assert_eq!((t1.meta.version, t1.desired_state), (2, TaskState::Running), "the update before it is undone");
        assert_eq!(counts(&m), [(TaskState::Running, TaskState::Running, 1)], "and so are the counts");

        m.apply(3, &p(vec![Op::update(t)])).unwrap();
        assert_eq!(m.task("t1").unwrap().meta.version, 3);
        assert_eq!(m.task("t1").unwrap().meta.created_index, 1, "the creating index survives updates");
        assert_eq!(counts(&m), [(TaskState::Shutdown, TaskState::Running, 1)]);
        assert_eq!(m.tasks_by_desired_state(TaskState::Shutdown).count(), 1);
        assert_eq!(m.live_counts("s1"), LiveCounts::default(), "a task no longer desired running leaves the counts");

        let dup = m.apply(4, &p(vec![Op::create(service("s2", "web", 1))])).unwrap_err();
        assert!(matches!(dup, ApplyError::NameConflict { .. }));
        m.apply(5, &p(vec![Op::Delete { kind: ObjectKind::Task, id: "t1".into(), version: 3 }])).unwrap();
        assert_eq!(m.tasks_by_service("s1").count(), 0);
        assert_eq!(m.tasks_by_desired_state(TaskState::Shutdown).count(), 0);
        assert_eq!(m.tasks_by_state(TaskState::Pending).count(), 0, "a deleted task leaves every index");
        assert_eq!(counts(&m), [], "and the counts");
    }
}
