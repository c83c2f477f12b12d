//! The cluster store: every object, replicated through Raft, with an in-memory indexed view and a watch stream.
//!
//! ```text
//!   component ── Store::update(|tx| …) ──▶ Proposal ──▶ raft::client_write ──▶ log (redb) ──▶ commit
//!                                                                                            │
//!   component ◀── watch / watch_objects (broadcast of Arc<Event>) ◀── MemoryStore::apply ◀── state machine ◀┘
//!   component ── Store::view(|v| …) reads a clone of the MemoryStore (persistent maps: a few reference counts)
//!   dispatcher session ◀── NodeWatch (one node's task events, Arc-shared) ◀── routed while applying
//! ```
//! The store is the bus: components never call each other, they write here and watch here. An update carries the
//! version it read; a stale one fails with "update out of sequence" and the caller reads again.
//!
//! A store can also be [`Store::in_memory`]: same view, same watch, writes applied at once with a local counter for
//! versions. Component tests use it; the product always runs on Raft.

mod memory;
mod task_key;
mod watch;

pub use memory::{LiveCounts, MemoryStore};
pub use watch::{NodeWatch, NodeWatchError};

use crate::api::{Object, ObjectKind, Task, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast;

/// One atomic change to the store: what a Raft entry carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub ops: Vec<Op>,
    /// When the proposal was made; becomes the objects' created/updated time (the proposer's clock, so that every
    /// replica applies the same value).
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Create an object; its id must be new.
    Create(Box<Object>),
    /// Replace an object; `meta.version` must be the version in the store.
    Update(Box<Object>),
    /// Delete an object at `version`.
    Delete { kind: ObjectKind, id: String, version: u64 },
    /// A node's report of a task's observed status, applied when the task still takes it
    /// ([`Task::takes_report`](crate::api::Task::takes_report)) and dropped otherwise. It carries no version: a
    /// status is the agent's alone, so it never conflicts with the orchestrator's or the scheduler's writes to the
    /// same task, and a batch of thousands is not retried because one of them moved. The entry holds the status,
    /// not the whole task (most of a million tasks' writes are their progress).
    TaskStatus { id: String, node_id: String, status: crate::api::TaskStatus },
    /// An update of a task that changes only what its lifecycle steps change (the allocator's addresses and
    /// PENDING, the scheduler's node and ASSIGNED, an orchestrator's shutdown), not its spec or identity: checked
    /// and applied as [`Op::Update`] of the stored task with those fields replaced. [`WriteTx::update`] writes it
    /// in place of a whole task when it can: most of a million tasks' writes are such steps, and the entry then
    /// holds a few dozen bytes instead of the task's spec again.
    TaskProgress(Box<TaskProgress>),
}

// The large variants are boxed (the encoding is the same): an entry holds up to a thousand ops, and an op was the
// size of the largest object, a service (2.3 KiB), whatever it carried; a restart decodes 64 entries at once.
const _: () = assert!(std::mem::size_of::<Op>() <= 160);

impl Op {
    pub fn create(obj: impl Into<Object>) -> Self {
        Op::Create(Box::new(obj.into()))
    }

    pub fn update(obj: impl Into<Object>) -> Self {
        Op::Update(Box::new(obj.into()))
    }
}

/// What [`Op::TaskProgress`] sets on a task read at `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub id: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    pub desired_state: crate::api::TaskState,
    pub status: crate::api::TaskStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::api::NetworkAttachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<crate::api::Endpoint>,
}

impl TaskProgress {
    /// `next` as a step of `current`, when it differs in nothing else (and was read at `current`'s version).
    fn between(current: &crate::api::Task, next: &crate::api::Task) -> Option<TaskProgress> {
        // Named field by field, so a field added to `Task` must be placed here (in the comparison, or in the
        // progress when components step it too).
        let crate::api::Task {
            id,
            meta,
            service_id,
            service_annotations,
            slot,
            node_id,
            spec,
            spec_version,
            status,
            desired_state,
            job_iteration,
            networks,
            endpoint,
        } = next;
        // The rest of `meta` is the store's to stamp, as for any update.
        let same = *id == current.id
            && meta.version == current.meta.version
            && *service_id == current.service_id
            && *service_annotations == current.service_annotations
            && *slot == current.slot
            && (Arc::ptr_eq(spec, &current.spec) || **spec == *current.spec)
            && *spec_version == current.spec_version
            && *job_iteration == current.job_iteration;
        same.then(|| TaskProgress {
            id: id.clone(),
            version: meta.version,
            node_id: node_id.clone(),
            desired_state: *desired_state,
            status: status.clone(),
            networks: networks.clone(),
            endpoint: endpoint.clone(),
        })
    }
}

/// Why a proposal was refused when it was applied. Deterministic: every replica refuses the same proposals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// update out of sequence
    #[error("update out of sequence: {kind} {id} was changed since it was read")]
    OutOfSequence { kind: ObjectKind, id: String },
    /// The object to update or delete does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: ObjectKind, id: String },
    /// An object with that id exists.
    #[error("{kind} {id} already exists")]
    Exists { kind: ObjectKind, id: String },
    /// Another object already has that name.
    #[error("name conflicts with an existing object: {kind} {name} already exists")]
    NameConflict { kind: ObjectKind, name: String },
}

/// The answer to a proposal, as the state machine returns it through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalResult {
    pub error: Option<ApplyError>,
}

/// A change that was committed, as watchers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub action: EventAction,
    /// The object after the change (for a delete: the object as it was).
    pub object: Object,
    /// The object before the change (updates and deletes).
    pub old: Option<Object>,
    /// The Raft index of the change.
    pub index: u64,
}

impl Event {
    /// Whether this is a task's mere progress (ASSIGNED → PREPARING → RUNNING, the bulk of all writes): an update
    /// of a task already placed that changes neither its desired state, whether it ended, nor its node. Neither
    /// orchestration nor placement decides anything on it: the task holds the same resources on the same node
    /// before and after. A task's steps before it is placed (NEW → PENDING, a global task, created with its node,
    /// becoming ASSIGNED on it) are decisions: the scheduler acts on them.
    pub fn is_progress(&self) -> bool {
        self.task_update_keeping_its_fate()
            .is_some_and(|(t, old)| t.node_id == old.node_id && old.status.state >= TaskState::Assigned)
    }

    /// Whether this is the scheduler placing a task: its node set where it had none, nothing else that
    /// orchestration decides on changed (desired state, whether it ended).
    pub fn is_assignment(&self) -> bool {
        self.task_update_keeping_its_fate().is_some_and(|(t, old)| old.node_id.is_empty() && !t.node_id.is_empty())
    }

    /// A task update that keeps its desired state and whether it ended: the new and old task.
    fn task_update_keeping_its_fate(&self) -> Option<(&Task, &Task)> {
        match (&self.object, &self.old) {
            (Object::Task(t), Some(Object::Task(old)))
                if self.action == EventAction::Update
                    && t.desired_state == old.desired_state
                    && t.status.state.is_terminal() == old.status.state.is_terminal() =>
            {
                Some((t, old))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Create,
    Update,
    Delete,
}

/// Errors of store reads and writes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The proposal was applied and refused.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// This manager is not the Raft leader; writes go to the leader.
    #[error("this node is not the swarm leader{}", .leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    /// No leader can commit the proposal: too few managers are reachable for a majority.
    #[error("no leader: quorum lost (reachable managers: {})", if .reachable.is_empty() { "none".to_string() } else { .reachable.join(", ") })]
    QuorumLost { reachable: Vec<String> },
    /// Raft failed to commit the proposal.
    #[error("raft: {0}")]
    Raft(String),
}

impl StoreError {
    pub fn is_out_of_sequence(&self) -> bool {
        matches!(self, StoreError::Apply(ApplyError::OutOfSequence { .. }))
    }
}

/// The part of the store every replica shares: the view and the watch channel. The Raft state machine writes
/// through [`SharedView::apply`].
pub struct SharedView {
    view: RwLock<MemoryStore>,
    /// Every change.
    events: broadcast::Sender<Arc<Event>>,
    /// Every change but a task's: tasks make nearly all the traffic, and a component that only follows nodes,
    /// services or the cluster neither wakes on it nor falls behind because of it.
    objects: broadcast::Sender<Arc<Event>>,
    /// Every change but a task's mere progress towards running ([`Event::is_progress`]): what orchestrators,
    /// the updater and the reaper decide on. Progress is most of the traffic, and a component that had to read
    /// past it fell behind at scale, which forced it to rescan everything.
    decisions: broadcast::Sender<Arc<Event>>,
    nodes: watch::NodeRouter,
}

/// What a plan does to a task, written as part of a [`Planned`] change.
pub trait ChangeToTask {
    fn apply(&self, task: &mut Task);
}

/// A change planned on one task read from a view, written by [`Store::update_tasks_bounded`]: the task's id, the
/// version read and the change alone, so a plan over hundreds of thousands of tasks holds no copy of them.
#[derive(Debug)]
pub struct Planned<C> {
    id: String,
    version: u64,
    pub change: C,
}

impl<C: ChangeToTask> Planned<C> {
    pub fn on(task: &Task, change: C) -> Self {
        Planned { id: task.id.clone(), version: task.meta.version, change }
    }

    pub fn task_id(&self) -> &str {
        &self.id
    }

    /// `current` with the change made.
    pub fn changed(&self, current: &Task) -> Task {
        let mut t = current.clone();
        self.change.apply(&mut t);
        t
    }
}

/// The most task writes a component puts in one Raft entry (about 1 MiB of JSON): big changes are split.
pub const MAX_TASKS_PER_PROPOSAL: usize = 1000;

/// How many events a slow watcher may fall behind before it must re-read the store (it gets `Lagged`). The ring
/// keeps every event no watcher has read yet, and a task event (the task before and after) takes about 4 KiB: at
/// 65,536 the ring alone held a quarter of a 100,000-task manager's memory while any component was busy.
pub(crate) const WATCH_CAPACITY: usize = 1 << 14;

impl SharedView {
    pub fn new(initial: MemoryStore) -> Arc<Self> {
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        let (objects, _) = broadcast::channel(WATCH_CAPACITY);
        let (decisions, _) = broadcast::channel(WATCH_CAPACITY);
        Arc::new(SharedView { view: RwLock::new(initial), events, objects, decisions, nodes: Default::default() })
    }

    /// Applies a committed proposal and publishes its events.
    pub fn apply(&self, index: u64, proposal: &Proposal) -> Result<Vec<Arc<Event>>, ApplyError> {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        // One shared copy of each event, whoever watches it.
        let events: Vec<Arc<Event>> = view.apply(index, proposal)?;
        // Sent under the write lock so a watcher that subscribed under the read lock sees exactly the changes
        // made after what it read.
        for e in &events {
            if !matches!(e.object, Object::Task(_)) {
                let _ = self.objects.send(e.clone());
            }
            if !e.is_progress() {
                let _ = self.decisions.send(e.clone());
            }
            let _ = self.events.send(e.clone());
        }
        self.nodes.route(&events);
        Ok(events)
    }

    /// Replaces the whole view (snapshot install). Watchers are not told object by object; they get a synthetic
    /// lag so they re-read.
    pub fn replace(&self, store: MemoryStore) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        *view = store;
        self.nodes.all_behind();
    }

    pub fn read<R>(&self, f: impl FnOnce(&MemoryStore) -> R) -> R {
        f(&self.current())
    }

    /// The store as the last applied entry left it: a clone that shares all its structure with the live view, so
    /// it is cheap to take and the writer never waits for whoever reads it, however long they take.
    pub fn current(&self) -> MemoryStore {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// [`SharedView::current`] and `subscribe` in one step, under the lock the state machine applies under: the
    /// subscription gets exactly the changes made after that view.
    fn current_and<W>(&self, subscribe: impl FnOnce(&Self) -> W) -> (MemoryStore, W) {
        let live = self.view.read().unwrap_or_else(|e| e.into_inner());
        (live.clone(), subscribe(self))
    }
}

/// Collects the operations of one [`Store::update`].
pub struct WriteTx<'a> {
    view: &'a MemoryStore,
    ops: Vec<Op>,
}

impl<'a> WriteTx<'a> {
    /// The committed state the transaction reads from (its own pending writes are not visible).
    pub fn view(&self) -> &'a MemoryStore {
        self.view
    }

    pub fn create(&mut self, obj: impl Into<Object>) {
        self.ops.push(Op::create(obj));
    }

    /// Updates an object; its `meta.version` must be the one that was read. A task that differs from the stored
    /// one only in what its lifecycle steps change (node, status, desired state, addresses, endpoint) is written
    /// as that step ([`Op::TaskProgress`]).
    pub fn update(&mut self, obj: impl Into<Object>) {
        let obj = obj.into();
        if let Object::Task(next) = &obj {
            if let Some(p) = self.view.task(&next.id).and_then(|current| TaskProgress::between(current, next)) {
                self.ops.push(Op::TaskProgress(Box::new(p)));
                return;
            }
        }
        self.ops.push(Op::update(obj));
    }

    pub fn delete(&mut self, kind: ObjectKind, id: &str, version: u64) {
        self.ops.push(Op::Delete { kind, id: id.to_string(), version });
    }

    /// Records `node_id`'s report of a task's status (see [`Op::TaskStatus`]).
    pub fn report_status(&mut self, task_id: &str, node_id: &str, status: crate::api::TaskStatus) {
        self.ops.push(Op::TaskStatus { id: task_id.to_string(), node_id: node_id.to_string(), status });
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

macro_rules! object_from {
    ($($t:ident),*) => {$(
        impl From<crate::api::$t> for Object {
            fn from(v: crate::api::$t) -> Object { Object::$t(v) }
        }
    )*};
}
object_from!(Cluster, Node, Service, Network, Secret, Config);

impl From<crate::api::Task> for Object {
    fn from(v: crate::api::Task) -> Object {
        Object::Task(std::sync::Arc::new(v))
    }
}

/// Where a store's writes are committed: Raft in the product. The store knows only this trait, so it does not
/// depend on the Raft module (which depends on the store for its entries).
pub trait Proposer: Send + Sync + 'static {
    /// Commits a proposal; returns once it is applied to the view (or refused).
    fn propose(&self, proposal: Proposal) -> futures::future::BoxFuture<'_, Result<(), StoreError>>;
}

/// How writes reach the view.
#[derive(Clone)]
enum Writes {
    Committed(Arc<dyn Proposer>),
    /// Component tests: apply at once, versions from a counter.
    InMemory(Arc<Mutex<u64>>),
}

/// A handle to the cluster store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<SharedView>,
    writes: Writes,
    /// The managers' data key (secrets are sealed with it before they are proposed); set by the node once it
    /// has it, `None` before.
    data_key: Arc<RwLock<Option<crate::manager::datakey::DataKey>>>,
}

impl Store {
    /// A store whose writes go through `proposer` (Raft, in the product) and land in `shared`.
    pub(crate) fn with_proposer(shared: Arc<SharedView>, proposer: Arc<dyn Proposer>) -> Self {
        Store { shared, writes: Writes::Committed(proposer), data_key: Default::default() }
    }

    /// A store that applies writes at once, for component tests.
    pub fn in_memory() -> Self {
        Store {
            shared: SharedView::new(MemoryStore::new()),
            writes: Writes::InMemory(Arc::new(Mutex::new(0))),
            data_key: Arc::new(RwLock::new(Some(crate::manager::datakey::DataKey::generate()))),
        }
    }

    /// Hands the store the managers' data key (the node does, when its manager starts).
    pub fn set_data_key(&self, key: crate::manager::datakey::DataKey) {
        *self.data_key.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// The managers' data key, if this manager has it.
    pub fn data_key(&self) -> Option<crate::manager::datakey::DataKey> {
        self.data_key.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the store as the last applied entry left it (a cheap clone: `f` holds back no write).
    pub fn view<R>(&self, f: impl FnOnce(&MemoryStore) -> R) -> R {
        self.shared.read(f)
    }

    /// Subscribes to every change.
    pub fn watch(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.events.subscribe()
    }

    /// Subscribes to the changes of every object but tasks (nodes, services, networks, the cluster, …).
    pub fn watch_objects(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.objects.subscribe()
    }

    /// Subscribes to every change but a task's progress towards running ([`Event::is_progress`]).
    pub fn watch_decisions(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.decisions.subscribe()
    }

    /// Calls `f` with the cluster object now and after each change to it (or a lagged watch), until `shutdown`.
    pub async fn follow_cluster(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
        mut f: impl FnMut(&crate::api::Cluster, &Store),
    ) {
        // Subscribed before reading, so no change falls between the read and the watch.
        let mut events = self.watch_objects();
        loop {
            if let Some(cluster) = self.view(|v| v.cluster().cloned()) {
                f(&cluster, self);
            }
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(ev) if matches!(ev.object, Object::Cluster(_)) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Reads the store and subscribes in one step: the receiver gets exactly the changes made after the read.
    pub fn view_and_watch<R>(&self, f: impl FnOnce(&MemoryStore) -> R) -> (R, broadcast::Receiver<Arc<Event>>) {
        let (view, rx) = self.shared.current_and(|s| s.events.subscribe());
        (f(&view), rx)
    }

    /// Reads the store and subscribes to the task events of `node_id` in one step: the watch gets exactly the
    /// changes made after the read.
    pub fn view_and_watch_node<R>(&self, node_id: &str, f: impl FnOnce(&MemoryStore) -> R) -> (R, NodeWatch) {
        let (view, w) = self.shared.current_and(|s| s.nodes.subscribe(node_id));
        (f(&view), w)
    }

    /// Writes `changes` (each planned on a read task) in proposals of at most [`MAX_TASKS_PER_PROPOSAL`], skipping
    /// any whose task's version moved since it was read, so one stale task never fails a whole batch. Returns
    /// whether any was skipped (the caller plans it again).
    pub async fn update_tasks_bounded<C: ChangeToTask>(&self, changes: &[Planned<C>]) -> Result<bool, StoreError> {
        let mut stale = false;
        for chunk in changes.chunks(MAX_TASKS_PER_PROPOSAL) {
            let r = self
                .update(|tx| {
                    let mut skipped = false;
                    for c in chunk {
                        match tx.view().task(&c.id) {
                            Some(t) if t.meta.version == c.version => {
                                let next = c.changed(t);
                                tx.update(next);
                            }
                            _ => skipped = true,
                        }
                    }
                    Ok::<_, StoreError>(skipped)
                })
                .await;
            match r {
                Ok(skipped) => stale |= skipped,
                // Changed between the check and the commit.
                Err(e) if e.is_out_of_sequence() => stale = true,
                Err(e) => return Err(e),
            }
        }
        Ok(stale)
    }

    /// [`Store::update`], run again on a fresh view while the commit fails "out of sequence" (another writer changed
    /// an object in between), at most `attempts` times in all.
    pub async fn update_retrying<R>(
        &self,
        attempts: usize,
        mut f: impl FnMut(&mut WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut attempt = 1;
        loop {
            match self.update(&mut f).await {
                Err(e) if e.is_out_of_sequence() && attempt < attempts => attempt += 1,
                r => return r,
            }
        }
    }

    /// Runs `f` to collect writes against the current view, then commits them as one proposal. Returns what `f`
    /// returned. Nothing is proposed when `f` errs or writes nothing.
    pub async fn update<R, E>(&self, f: impl FnOnce(&mut WriteTx) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let (out, ops) = {
            let view = self.shared.current();
            let mut tx = WriteTx { view: &view, ops: Vec::new() };
            let out = f(&mut tx)?;
            (out, tx.ops)
        };
        if !ops.is_empty() {
            self.propose(Proposal { ops, timestamp: Timestamp::now() }).await?;
        }
        Ok(out)
    }

    /// Commits a proposal.
    pub async fn propose(&self, proposal: Proposal) -> Result<(), StoreError> {
        match &self.writes {
            Writes::InMemory(counter) => {
                // Held while applying so versions are handed out in apply order.
                let mut c = counter.lock().unwrap_or_else(|e| e.into_inner());
                *c += 1;
                self.shared.apply(*c, &proposal)?;
                Ok(())
            }
            Writes::Committed(p) => p.propose(proposal).await,
        }
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn big_task_writes_are_split_and_a_stale_task_is_skipped_not_fatal() {
        let store = Store::in_memory();
        let n = MAX_TASKS_PER_PROPOSAL * 2 + 500;
        store
            .update(|tx| {
                for i in 0..n {
                    tx.create(crate::testing::task(&format!("t{i:05}"), "s1", i as u64));
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        struct Message;
        impl ChangeToTask for Message {
            fn apply(&self, t: &mut Task) {
                t.status.message = "planned".into();
            }
        }
        let planned: Vec<Planned<Message>> = store.view(|v| v.tasks().map(|t| Planned::on(t, Message)).collect());
        // One task changes after it was read.
        let mut moved = store.view(|v| v.task("t00007").cloned()).unwrap();
        moved.status.message = "changed by someone else".into();
        store.update(|tx| Ok::<_, StoreError>(tx.update(moved))).await.unwrap();

        assert!(store.update_tasks_bounded(&planned).await.unwrap(), "the stale task is reported");
        let (versions, planned_msgs, kept) = store.view(|v| {
            let versions: std::collections::BTreeSet<u64> =
                v.tasks().filter(|t| t.status.message == "planned").map(|t| t.meta.version).collect();
            let planned = v.tasks().filter(|t| t.status.message == "planned").count();
            (versions, planned, v.task("t00007").unwrap().status.message.clone())
        });
        assert_eq!(versions.len(), 3, "three proposals of at most {MAX_TASKS_PER_PROPOSAL}");
        assert_eq!(planned_msgs, n - 1);
        assert_eq!(kept, "changed by someone else", "the newer write is not overwritten");
    }
    use super::*;
    use crate::testing::service;

    /// A task write that only steps the task (node, status, desired state, allocation) goes into the log as that
    /// step, and applies to exactly the task a whole update gives; anything else about the task, or a stale
    /// version, is a whole update (or refused) as before.
    #[test]
    fn a_task_step_is_written_as_its_progress_and_applies_as_the_whole_update_would() {
        use crate::api::TaskState;
        let mut m = MemoryStore::new();
        let at = Timestamp::now();
        let created = Proposal { ops: vec![Op::create(crate::testing::task("t1", "s1", 1))], timestamp: at };
        m.apply(1, &created).unwrap();
        let current = m.task("t1").unwrap().clone();
        let written = |next: &crate::api::Task| {
            let mut tx = WriteTx { view: &m, ops: Vec::new() };
            tx.update(next.clone());
            tx.ops.pop().unwrap()
        };

        let mut assigned = current.clone();
        assigned.node_id = "n1".into();
        assigned.status.state = TaskState::Assigned;
        assigned.status.message = "scheduler assigned task to node".into();
        let op = written(&assigned);
        assert!(matches!(&op, Op::TaskProgress(p) if p.node_id == "n1" && p.version == 1), "{op:?}");
        let (mut by_step, mut whole) = (m.clone(), m.clone());
        let step_events = by_step.apply(2, &Proposal { ops: vec![op], timestamp: at }).unwrap();
        let whole_events =
            whole.apply(2, &Proposal { ops: vec![Op::update(assigned.clone())], timestamp: at }).unwrap();
        assert_eq!(by_step.task("t1"), whole.task("t1"), "the step applies as the whole update");
        assert_eq!(step_events, whole_events, "and tells watchers the same");
        assert_eq!(by_step.tasks_by_node("n1").count(), 1, "indexed by its new node");

        let mut shut = current.clone();
        shut.desired_state = TaskState::Shutdown;
        assert!(matches!(written(&shut), Op::TaskProgress(_)), "a shutdown is a step too");
        let mut allocated = current.clone();
        allocated.endpoint = Some(Default::default());
        allocated.status.state = TaskState::Pending;
        assert!(matches!(written(&allocated), Op::TaskProgress(p) if p.endpoint.is_some()), "so is an allocation");

        let mut relabelled = assigned.clone();
        relabelled.service_annotations.name = "renamed".into();
        assert!(matches!(written(&relabelled), Op::Update(_)), "another field changed: the whole task");
        let mut respecced = assigned.clone();
        respecced.spec_mut().container.image = "other".into();
        assert!(matches!(written(&respecced), Op::Update(_)), "a changed spec: the whole task");
        let mut stale = assigned.clone();
        stale.meta.version = 0;
        assert!(matches!(written(&stale), Op::Update(_)), "read at another version: the whole task");

        // Applied on a task that moved since it was read, or is gone, the step fails as the update would.
        let step = |version| {
            let p = TaskProgress { version, ..TaskProgress::between(&current, &assigned).unwrap() };
            Proposal { ops: vec![Op::TaskProgress(Box::new(p))], timestamp: at }
        };
        let e = by_step.apply(3, &step(1)).unwrap_err();
        assert_eq!(e, ApplyError::OutOfSequence { kind: ObjectKind::Task, id: "t1".into() });
        assert_eq!(by_step.task("t1").unwrap().meta.version, 2, "nothing changed");
        let e = MemoryStore::new().apply(3, &step(1)).unwrap_err();
        assert_eq!(e, ApplyError::NotFound { kind: ObjectKind::Task, id: "t1".into() });
    }

    /// A write made from a view that another writer has since changed fails "out of sequence"; `update_retrying`
    /// runs it again on a fresh view, up to its limit.
    #[tokio::test]
    async fn update_retrying_rereads_after_a_conflict_up_to_its_limit() {
        let store = Store::in_memory();
        store.update(|tx| Ok::<_, StoreError>(tx.create(service("s1", "web", 1)))).await.unwrap();
        // The first call writes what it read one version ago, as a writer that lost a race would.
        let stale_then_fresh = |calls: &mut u32, tx: &mut WriteTx| {
            *calls += 1;
            let mut s = tx.view().service("s1").cloned().unwrap();
            if *calls == 1 {
                s.meta.version -= 1;
            }
            tx.update(s);
            Ok(())
        };
        let mut calls = 0;
        let r = store.update_retrying(1, |tx| stale_then_fresh(&mut calls, tx)).await;
        assert!(r.as_ref().is_err_and(StoreError::is_out_of_sequence), "{r:?}");
        assert_eq!(calls, 1, "one attempt allowed");
        let mut calls = 0;
        store.update_retrying(3, |tx| stale_then_fresh(&mut calls, tx)).await.expect("second attempt commits");
        assert_eq!(calls, 2, "retried once on a fresh view");
    }

    /// A reader works on the store as of one entry: writes made while it reads complete without waiting for it,
    /// and it does not see them.
    #[tokio::test]
    async fn a_long_read_neither_holds_back_writes_nor_sees_them() {
        let store = Store::in_memory();
        store.update(|tx| Ok::<_, StoreError>(tx.create(service("s1", "web", 1)))).await.unwrap();
        let writer = store.clone();
        let (before, during, after) = store.view(|v| {
            let before = v.tasks().count();
            // Another thread writes while this read is in progress; under a read lock it would wait for the read.
            let (done, wrote) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let p = Proposal {
                    ops: vec![Op::create(crate::testing::task("t1", "s1", 1))],
                    timestamp: Timestamp::now(),
                };
                let _ = done.send(writer.shared.apply(2, &p).map(|_| ()));
            });
            let written = wrote.recv_timeout(std::time::Duration::from_secs(10));
            (before, written, v.tasks().count())
        });
        assert!(matches!(during, Ok(Ok(()))), "the write completed while the read held its view: {during:?}");
        assert_eq!((before, after), (0, 0), "the read kept the store as it was when it began");
        assert_eq!(store.view(|v| v.tasks().count()), 1, "the next read sees the write");
    }

    #[tokio::test]
    async fn watchers_share_one_copy_of_an_event_and_the_objects_watch_never_sees_tasks() {
        let store = Store::in_memory();
        let (mut all, mut objects) = (store.watch(), store.watch_objects());
        store
            .update(|tx| {
                tx.create(crate::testing::task("t1", "s1", 1));
                tx.create(service("s1", "web", 1));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let (task_ev, service_ev) = (all.try_recv().unwrap(), all.try_recv().unwrap());
        assert!(matches!(task_ev.object, Object::Task(_)) && matches!(service_ev.object, Object::Service(_)));
        let only = objects.try_recv().unwrap();
        assert!(matches!(only.object, Object::Service(_)), "{only:?}");
        assert!(objects.try_recv().is_err(), "the task's event is not on the objects watch");
        assert!(Arc::ptr_eq(&only, &service_ev), "one shared event, not a copy per watcher");
    }

    #[tokio::test]
    async fn the_decisions_watch_skips_a_tasks_progress_but_not_its_end_or_its_move() {
        let store = Store::in_memory();
        let mut decisions = store.watch_decisions();
        let mut t = crate::testing::task("t1", "s1", 1);
        t.status.state = crate::api::TaskState::New;
        store.update(|tx| Ok::<_, StoreError>(tx.create(t))).await.unwrap();
        let step = |change: fn(&mut crate::api::Task)| {
            let store = store.clone();
            async move {
                store
                    .update(|tx| {
                        let mut t = tx.view().task("t1").unwrap().clone();
                        change(&mut t);
                        tx.update(t);
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap()
            }
        };
        step(|t| t.status.state = crate::api::TaskState::Pending).await;
        step(|t| t.node_id = "n1".into()).await;
        step(|t| t.status.state = crate::api::TaskState::Assigned).await;
        step(|t| t.status.state = crate::api::TaskState::Running).await;
        step(|t| t.status.state = crate::api::TaskState::Failed).await;
        let seen: Vec<(EventAction, String, crate::api::TaskState)> = std::iter::from_fn(|| decisions.try_recv().ok())
            .map(|ev| match &ev.object {
                Object::Task(t) => (ev.action, t.node_id.clone(), t.status.state),
                o => panic!("not a task: {o:?}"),
            })
            .collect();
        use crate::api::TaskState::{Assigned, Failed, New, Pending};
        assert_eq!(
            seen,
            [
                (EventAction::Create, String::new(), New),
                (EventAction::Update, String::new(), Pending),
                (EventAction::Update, "n1".into(), Pending),
                (EventAction::Update, "n1".into(), Assigned),
                (EventAction::Update, "n1".into(), Failed)
            ],
            "RUNNING is mere progress; becoming PENDING, or ASSIGNED on a node already set (a global task), is not"
        );
    }
}
