//! The scheduler: gives every PENDING task a node (→ ASSIGNED), or says why none fits.
//!
//! ```text
//!  watch ─▶ node picture (kept up to date from the task and node events, not rebuilt per pass)
//!        ─▶ pending tasks only ─▶ groups of identical tasks of a service ─▶ per group: filters once per node
//!      (ready, active, constraints, max per node, reservations, generic resources) ─▶ spread tree
//!      (placement preferences; in a leaf: a heap by fewest tasks of this service, then fewest tasks overall)
//!      ─▶ bounded batches of store writes per pass
//! ```
//! A task that fits nowhere stays PENDING with `no suitable node (<reasons>)` in its status; it is retried when
//! nodes or tasks change. Global tasks arrive with their node chosen; the scheduler only checks that node.

pub mod filters;
pub mod spread;

use crate::api::{Node, Object, Resources, Task, TaskState};
use crate::manager::store::{ChangeToTask, Event, EventAction, MemoryStore, Planned, Store, StoreError};

use filters::Refusal;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A node as the scheduler sees it: what is left of it and what runs there.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node: Node,
    pub available: Resources,
    /// The node's advertised generic resources minus what its live tasks reserve.
    pub available_generic: BTreeMap<String, i64>,
    /// Tasks meant to run (desired state up to RUNNING), by service: what spread and max-per-node count.
    pub tasks_by_service: HashMap<String, u64>,
    pub total_tasks: u64,
}

fn generic_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl NodeInfo {
    fn new(node: &Node) -> Self {
        NodeInfo {
            node: node.clone(),
            available: node.description.resources,
            available_generic: node
                .description
                .generic_resources
                .iter()
                .map(|(k, v)| (k.clone(), generic_count(*v)))
                .collect(),
            tasks_by_service: HashMap::new(),
            total_tasks: 0,
        }
    }

    pub fn tasks_of_service(&self, service_id: &str) -> u64 {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Records a task on the node: its reservations always, its count only if it is meant to run (a task being
    /// shut down still holds its resources until it stops, but no longer counts as one of the service's).
    fn add(&mut self, task: &Task) {
        if task.desired_state <= TaskState::Running {
            // The id is copied only for a service new on the node: this runs for every task a rebuild counts.
            match self.tasks_by_service.get_mut(&task.service_id) {
                Some(n) => *n += 1,
                None => {
                    self.tasks_by_service.insert(task.service_id.clone(), 1);
                }
            }
            self.total_tasks += 1;
        }
        let r = &task.spec.resources;
        self.available.memory_bytes -= r.reservations.memory_bytes;
        self.available.nano_cpus -= r.reservations.nano_cpus;
        for (kind, n) in &r.generic_reservations {
            *self.available_generic.entry(kind.clone()).or_default() -= generic_count(*n);
        }
    }

    /// Undoes [`NodeInfo::add`] of the same task.
    fn remove(&mut self, task: &Task) {
        if task.desired_state <= TaskState::Running {
            if let Some(n) = self.tasks_by_service.get_mut(&task.service_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.tasks_by_service.remove(&task.service_id);
                }
            }
            self.total_tasks = self.total_tasks.saturating_sub(1);
        }
        let r = &task.spec.resources;
        self.available.memory_bytes += r.reservations.memory_bytes;
        self.available.nano_cpus += r.reservations.nano_cpus;
        for (kind, n) in &r.generic_reservations {
            *self.available_generic.entry(kind.clone()).or_default() += generic_count(*n);
        }
    }

    /// Takes a newer version of the node, keeping what its tasks hold (its capacity may have changed).
    fn set_node(&mut self, node: &Node) {
        let (old, new) = (&self.node.description, &node.description);
        self.available.memory_bytes += new.resources.memory_bytes - old.resources.memory_bytes;
        self.available.nano_cpus += new.resources.nano_cpus - old.resources.nano_cpus;
        for (kind, n) in &old.generic_resources {
            *self.available_generic.entry(kind.clone()).or_default() -= generic_count(*n);
        }
        for (kind, n) in &new.generic_resources {
            *self.available_generic.entry(kind.clone()).or_default() += generic_count(*n);
        }
        self.node = node.clone();
    }
}

/// Whether a task holds resources on its node: placed there and not ended, whatever its desired state (as
/// Swarm: resources are free once the task stopped, not once it was told to).
fn occupies(task: &Task) -> bool {
    !task.node_id.is_empty() && task.status.state >= TaskState::Assigned && task.status.state <= TaskState::Running
}

/// Builds the per-node picture from the store: every live task of every service counts on its node.
pub fn node_infos(view: &MemoryStore) -> BTreeMap<String, NodeInfo> {
    let mut out: BTreeMap<String, NodeInfo> = view.nodes().map(|n| (n.id.clone(), NodeInfo::new(n))).collect();
    for t in view.tasks().filter(|t| occupies(t)) {
        if let Some(info) = out.get_mut(&t.node_id) {
            info.add(t);
        }
    }
    out
}

/// The scheduler's picture of every node, kept equal to [`node_infos`] of the store by applying each committed
/// change, so a pass costs what is pending rather than every task in the cluster.
#[derive(Debug, Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, NodeInfo>,
    /// Set when the picture cannot be brought forward event by event (a node joined or left, events were
    /// missed): the next pass rebuilds it from the store.
    stale: bool,
}

impl NodeSet {
    pub fn from_view(view: &MemoryStore) -> Self {
        NodeSet { nodes: node_infos(view), stale: false }
    }

    /// Brings the picture forward by one committed change.
    pub fn apply(&mut self, e: &Event) {
        match &e.object {
            Object::Node(n) => match (e.action, self.nodes.get_mut(&n.id)) {
                (EventAction::Update, Some(info)) => info.set_node(n),
                // Joins and removals are rare; the tasks a node already holds are counted by a rebuild.
                _ => self.stale = true,
            },
            Object::Task(t) => {
                if let Some(Object::Task(old)) = &e.old {
                    if occupies(old) {
                        if let Some(info) = self.nodes.get_mut(&old.node_id) {
                            info.remove(old);
                        }
                    }
                }
                if e.action != EventAction::Delete && occupies(t) {
                    if let Some(info) = self.nodes.get_mut(&t.node_id) {
                        info.add(t);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }
}

/// The decision for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Assign(String),
    NoSuitableNode(String),
}

/// A task whose node is chosen already (global): only that node is checked.
fn decide_on_node(nodes: &BTreeMap<String, NodeInfo>, task: &Task) -> Decision {
    match nodes.get(&task.node_id) {
        None => Decision::NoSuitableNode("no suitable node (no nodes in the swarm)".into()),
        Some(info) => match filters::check(info, task, &task.spec.placement.constraints) {
            Ok(()) => Decision::Assign(info.node.id.clone()),
            Err(r) => Decision::NoSuitableNode(format!("no suitable node ({})", r.explain(1))),
        },
    }
}

/// Why no node in `nodes` can take `task`, counting the nodes each filter refused.
fn no_suitable_node(nodes: &BTreeMap<String, NodeInfo>, task: &Task) -> Decision {
    if nodes.is_empty() {
        return Decision::NoSuitableNode("no suitable node (no nodes in the swarm)".into());
    }
    let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
    for info in nodes.values() {
        if let Err(r) = filters::check(info, task, &task.spec.placement.constraints) {
            *refusals.entry(r).or_default() += 1;
        }
    }
    Decision::NoSuitableNode(format!("no suitable node ({})", filters::explain(&refusals)))
}

/// Plans one pass over every pending task, accounting for earlier placements in the same pass.
///
/// Pending tasks are taken oldest first and grouped with the identical tasks of their service (same spec, as
/// Swarm's task groups): each group is filtered once per node and spread through one [`spread::Tree`], so a
/// group costs time linear in the nodes plus a logarithmic step per task.
#[cfg(test)]
pub fn plan(view: &MemoryStore) -> Vec<(Task, Decision)> {
    plan_on(view, &mut NodeSet::from_view(view), usize::MAX).0.into_iter().map(|(t, d)| (t.clone(), d)).collect()
}

/// The most pending tasks one pass takes that no pass has tried to place yet. A pass holds the scheduler's watch
/// unread while it plans: one over half a million tasks planned for seconds, fell behind the watch and rebuilt
/// the node picture from every task in the store. The rest are planned by the passes that follow at once.
const FRESH_PER_PASS: usize = 50_000;

/// [`plan`] on a node picture kept by the caller (that of `view`), of every pending task that a pass already
/// found no node for and the `fresh` oldest of the others; the picture is left as it was found: the placements
/// reach it through their committed events. Returns whether pending tasks were left out.
pub fn plan_on<'v>(view: &'v MemoryStore, set: &mut NodeSet, fresh: usize) -> (Vec<(&'v Task, Decision)>, bool) {
    // Tasks that found no node before are always retried, so however many there are, they never keep the
    // others from their turn.
    let (mut pending, mut new): (Vec<&'v Task>, Vec<&'v Task>) = view
        .tasks_by_state(TaskState::Pending)
        .filter(|t| t.desired_state <= TaskState::Running)
        .partition(|t| !t.status.err.is_empty());
    // Older tasks first, then by slot, so placement is stable.
    let age = |a: &&Task, b: &&Task| (a.meta.created_index, a.slot, &a.id).cmp(&(b.meta.created_index, b.slot, &b.id));
    let more = new.len() > fresh;
    if more {
        new.select_nth_unstable_by(fresh, age);
        new.truncate(fresh);
    }
    pending.append(&mut new);
    if pending.is_empty() {
        return (Vec::new(), more);
    }
    pending.sort_by(age);
    let nodes = &mut set.nodes;
    let mut placed: Vec<(String, &Task)> = Vec::new();
    let mut out = Vec::with_capacity(pending.len());
    for group in groups(pending) {
        if !group[0].node_id.is_empty() {
            // Global tasks: each has its node already.
            for t in group {
                let d = decide_on_node(nodes, t);
                if let Decision::Assign(node_id) = &d {
                    if let Some(info) = nodes.get_mut(node_id) {
                        info.add(t);
                        placed.push((node_id.clone(), t));
                    }
                }
                out.push((t, d));
            }
            continue;
        }
        let first = group[0];
        let constraints = &first.spec.placement.constraints;
        let mut tree = spread::Tree::build(nodes, &first.service_id, &first.spec.placement.preferences, |n| {
            filters::check(n, first, constraints).is_ok()
        });
        // Once the tree is full, every later task of the group gets the same explanation.
        let mut refused: Option<Decision> = None;
        for t in group {
            let placed_on = tree.place(nodes, |info| {
                info.add(t);
                filters::check(info, first, constraints).is_ok()
            });
            let d = match placed_on {
                Some(node_id) => {
                    placed.push((node_id.clone(), t));
                    Decision::Assign(node_id)
                }
                None => refused.get_or_insert_with(|| no_suitable_node(nodes, t)).clone(),
            };
            out.push((t, d));
        }
    }
    for (node_id, t) in placed {
        if let Some(info) = nodes.get_mut(&node_id) {
            info.remove(t);
        }
    }
    (out, more)
}

/// Splits the (ordered) pending tasks into groups of the same service, spec and kind (global tasks, which come
/// with their node, apart from the others); groups are ordered by their oldest task, tasks keep their order.
fn groups(pending: Vec<&Task>) -> Vec<Vec<&Task>> {
    let mut groups: Vec<Vec<&Task>> = Vec::new();
    let mut by_service: HashMap<(&str, bool), Vec<usize>> = HashMap::new();
    for t in pending {
        let key = (t.service_id.as_str(), t.node_id.is_empty());
        let candidates = by_service.entry(key).or_default();
        match candidates.iter().find(|&&g| groups[g][0].spec == t.spec) {
            Some(&g) => groups[g].push(t),
            None => {
                candidates.push(groups.len());
                groups.push(vec![t]);
            }
        }
    }
    groups
}

pub struct Scheduler {
    store: Store,
}

/// What the scheduler carries from pass to pass: the node picture and the watch that keeps it current.
struct Tracking {
    nodes: NodeSet,
    events: broadcast::Receiver<std::sync::Arc<Event>>,
    /// A change that can matter to placement was read while a pass committed: the next pass runs at once.
    woken: bool,
    /// The watch is closed (the store is gone).
    closed: bool,
}

impl Tracking {
    /// Applies every change committed up to `view` (which the caller holds read-locked: changes are sent under
    /// the write lock, so the queue holds exactly the changes the view has and the picture has not), rebuilding
    /// the picture when changes were missed.
    fn catch_up(&mut self, view: &MemoryStore) {
        loop {
            match self.events.try_recv() {
                Ok(e) => self.nodes.apply(&e),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.nodes.stale = true,
                Err(_) => break,
            }
        }
        if self.nodes.stale {
            debug!("rebuilding the node picture from the store");
            self.nodes = NodeSet::from_view(view);
        }
    }

    /// Takes one change from the watch into the picture; returns whether it can matter to placement.
    fn take(&mut self, r: Result<std::sync::Arc<Event>, broadcast::error::RecvError>) -> bool {
        match r {
            Ok(e) => {
                self.nodes.apply(&e);
                wakes(&e)
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.closed = true;
                true
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.nodes.stale = true;
                true
            }
        }
    }

    /// Runs `commit` while reading the watch: a pass commits thousands of tasks at scale, and a picture left
    /// unread meanwhile fell behind the watch and had to be rebuilt from every task in the store.
    async fn following<T>(&mut self, commit: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(commit);
        loop {
            if self.closed {
                return commit.await;
            }
            tokio::select! {
                out = &mut commit => return out,
                r = self.events.recv() => self.woken |= self.take(r),
            }
        }
    }
}

impl Scheduler {
    pub fn new(store: Store) -> Self {
        Scheduler { store }
    }

    /// Schedules until `shutdown`. Each pass is triggered by a change that can matter to placement (a pending
    /// task, a node change, a task that ended and freed resources), coalesced over 50 ms; its own assignments
    /// do not wake it (their events only bring the node picture forward).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tracking = Tracking {
            nodes: NodeSet { nodes: BTreeMap::new(), stale: true },
            // Progress (ASSIGNED → RUNNING on one node) changes nothing the picture counts, and is a third of all
            // writes: a pass that planned for seconds at scale fell behind the full watch and rebuilt the picture.
            events: self.store.watch_decisions(),
            woken: false,
            closed: false,
        };
        loop {
            // A pass may fail over and over (a leader that lost its quorum refuses every write): shutdown must
            // still end the loop, and may drop a pass mid-commit (each proposal commits whole or not at all).
            let passed = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.pass(&mut tracking) => r,
            };
            match passed {
                // Some tasks changed under the plan, or were left for the next pass: plan again at once.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "scheduling pass failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            }
            while !tracking.woken {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tracking.events.recv() => tracking.woken = tracking.take(r),
                }
            }
            if tracking.closed {
                return;
            }
            // Coalesce a burst of changes into one pass (the pass catches up with them).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One pass: plans the pending tasks on one view (at most [`FRESH_PER_PASS`] not tried before), then commits
    /// the decisions in bounded proposals. A task that changed since the view (the orchestrator shut it down, say)
    /// is left for the next pass instead of failing its whole batch. Returns whether any task was left over.
    async fn pass(&self, tracking: &mut Tracking) -> Result<bool, StoreError> {
        // What the watch held up to now is in the view this pass plans on.
        tracking.woken = false;
        let (changes, more) = crate::manager::long_step(|| {
            self.store.view(|view| {
                tracking.catch_up(view);
                changes(view, &mut tracking.nodes, FRESH_PER_PASS)
            })
        });
        if changes.is_empty() {
            return Ok(more);
        }
        let assigned = changes.iter().filter(|p| matches!(p.change.decision, Decision::Assign(_))).count();
        debug!(assigned, unschedulable = changes.len() - assigned, more, "scheduling pass");
        Ok(tracking.following(self.commit(changes)).await? || more)
    }

    /// Commits the scheduler's task updates in bounded proposals; returns whether a task had changed since it
    /// was planned (it is planned again at once).
    async fn commit(&self, changes: Vec<Planned<Placement>>) -> Result<bool, StoreError> {
        self.store.update_tasks_bounded(&changes).await
    }
}

/// What a pass decided for one pending task, kept until it is written: a pass at scale plans hundreds of thousands
/// of tasks and commits them over many proposals, and a copy of each task (about 600 bytes) held them all.
struct Placement {
    decision: Decision,
    at: crate::api::Timestamp,
}

impl ChangeToTask for Placement {
    fn apply(&self, t: &mut Task) {
        match &self.decision {
            Decision::Assign(node_id) => {
                t.node_id = node_id.clone();
                t.status.state = TaskState::Assigned;
                t.status.message = "scheduler assigned task to node".into();
                t.status.err.clear();
                t.status.timestamp = self.at;
            }
            Decision::NoSuitableNode(reason) => {
                t.status.err = reason.clone();
                t.status.message = "pending task scheduling".into();
            }
        }
    }
}

/// The task updates one pass makes on `view` (see [`plan_on`] for `fresh`): assignments, and the reason for
/// those that cannot be placed; and whether pending tasks were left for the next pass.
fn changes(view: &MemoryStore, nodes: &mut NodeSet, fresh: usize) -> (Vec<Planned<Placement>>, bool) {
    let (decisions, more) = plan_on(view, nodes, fresh);
    let at = crate::api::Timestamp::now();
    let mut changes = Vec::with_capacity(decisions.len());
    for (t, decision) in decisions {
        match &decision {
            Decision::Assign(node_id) => debug!(task.id = %t.id, node.id = %node_id, "task assigned"),
            Decision::NoSuitableNode(reason) => {
                if t.status.err == *reason {
                    continue;
                }
                debug!(task.id = %t.id, %reason, "task not schedulable");
            }
        }
        changes.push(Planned::on(t, Placement { decision, at }));
    }
    (by_node_rounds(changes), more)
}

/// The most tasks of one node a round of [`by_node_rounds`] takes. A pass of [`FRESH_PER_PASS`] tasks gives each
/// of 5,000 nodes about 10, which a round of 16 sends as one message; rounds of 8 split them into two (220,000
/// assignment messages for a million tasks, against 140,000).
const TASKS_PER_NODE_ROUND: usize = 16;

/// Orders a pass's changes so that each node's assignments come together, a few at a time: a proposal then
/// reaches a node's session as one message of several tasks rather than one per task, which is most of what a
/// task costs the dispatcher and the agent at scale. Rounds of [`TASKS_PER_NODE_ROUND`] per node keep every node
/// moving rather than filling one node after another. Changes that assign nothing keep their order, first.
fn by_node_rounds(changes: Vec<Planned<Placement>>) -> Vec<Planned<Placement>> {
    let mut out = Vec::with_capacity(changes.len());
    let mut by_node: BTreeMap<String, Vec<Planned<Placement>>> = BTreeMap::new();
    for c in changes {
        match &c.change.decision {
            Decision::Assign(node_id) => by_node.entry(node_id.clone()).or_default().push(c),
            Decision::NoSuitableNode(_) => out.push(c),
        }
    }
    let mut queues: Vec<std::vec::IntoIter<Planned<Placement>>> = by_node.into_values().map(Vec::into_iter).collect();
    while !queues.is_empty() {
        for q in &mut queues {
            out.extend(q.by_ref().take(TASKS_PER_NODE_ROUND));
        }
        queues.retain(|q| q.len() > 0);
    }
    out
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
        let planned = store.view(|v| changes(v, &mut NodeSet::from_view(v), usize::MAX).0);
        assert_eq!(planned.len(), 3);
        // The orchestrator shuts t1 down meanwhile.
        let mut t1 = store.view(|v| v.task("t1").cloned()).unwrap();
        t1.desired_state = TaskState::Shutdown;
        store.update(|tx| Ok::<_, StoreError>(tx.update(t1))).await.unwrap();
        let s = Scheduler::new(store.clone());
        assert!(s.commit(planned).await.unwrap(), "the stale task is reported");
        let states: Vec<TaskState> =
            store.view(|v| ["t0", "t1", "t2"].iter().map(|id| v.task(id).unwrap().status.state).collect());
        assert_eq!(states, vec![TaskState::Assigned, TaskState::Pending, TaskState::Assigned]);
    }

    /// A task created NEW and made PENDING later (the allocator's step for a task on a network) wakes the
    /// running scheduler, which follows only the decisions watch.
    #[tokio::test]
    async fn a_task_made_pending_after_it_was_created_is_scheduled() {
        let store = Store::in_memory();
        let mut t = task("t1", "svc", 1);
        t.status.state = TaskState::New;
        store
            .update(|tx| {
                tx.create(node("a", "ha"));
                tx.create(t);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(Scheduler::new(store.clone()).run(shutdown.clone()));
        // Its first pass finds nothing pending; then it waits for a change that matters.
        tokio::time::sleep(Duration::from_millis(300)).await;
        crate::testing::change_task(&store, "t1", |t| t.status.state = TaskState::Pending).await;
        crate::testing::until_view(&store, "the scheduler to assign the PENDING task", |v| {
            match v.task("t1").map(|t| t.status.state) {
                Some(TaskState::Assigned) => Ok(()),
                state => Err(format!("t1 is {state:?}")),
            }
        })
        .await;
        shutdown.cancel();
        running.await.unwrap();
    }

    /// The picture brought forward by the events of the decisions watch (the one the scheduler follows) equals the
    /// one rebuilt from the store, through placements (a global task's too), progress, shutdowns, ends, deletions
    /// and a node whose capacity changed.
    #[tokio::test]
    async fn the_node_picture_follows_the_decisions_watch_exactly() {
        let store = Store::in_memory();
        let mut n = node("a", "ha");
        n.description.generic_resources.insert("gpu".into(), 2);
        store.update(|tx| Ok::<_, StoreError>(tx.create(n))).await.unwrap();
        // Nothing else writes meanwhile, so the watch holds exactly the changes after the view.
        let mut events = store.watch_decisions();
        let mut set = store.view(NodeSet::from_view);
        let on_node = |id: &str, service: &str, state: TaskState| {
            let mut t = task(id, service, 1);
            t.node_id = "a".into();
            t.status.state = state;
            t.spec_mut().resources.reservations.memory_bytes = 100;
            t.spec_mut().resources.reservations.nano_cpus = 10;
            t.spec_mut().resources.generic_reservations.insert("gpu".into(), 1);
            t
        };
        store
            .update(|tx| {
                tx.create(on_node("t1", "s1", TaskState::Running));
                tx.create(on_node("t2", "s1", TaskState::Assigned));
                tx.create(on_node("t3", "s2", TaskState::Running));
                // A global task: created with its node, still to be checked by the scheduler.
                tx.create(on_node("t5", "s3", TaskState::Pending));
                let mut p = task("t4", "s2", 2);
                p.status.state = TaskState::Pending;
                p.spec_mut().resources.generic_reservations.insert("gpu".into(), 1);
                tx.create(p);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let step = |f: fn(&MemoryStore) -> Vec<Object>| {
            let store = store.clone();
            async move {
                let objs = store.view(f);
                store
                    .update(|tx| {
                        for o in objs {
                            tx.update(o);
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap();
            }
        };
        // t1 told to stop (still holds its resources), t2 runs, t3 ends, t4 is placed.
        step(|v| {
            let mut t1 = v.task("t1").cloned().unwrap();
            t1.desired_state = TaskState::Shutdown;
            let mut t2 = v.task("t2").cloned().unwrap();
            t2.status.state = TaskState::Running;
            let mut t3 = v.task("t3").cloned().unwrap();
            t3.status.state = TaskState::Failed;
            let mut t4 = v.task("t4").cloned().unwrap();
            t4.node_id = "a".into();
            t4.status.state = TaskState::Assigned;
            let mut t5 = v.task("t5").cloned().unwrap();
            t5.status.state = TaskState::Assigned;
            vec![t1.into(), t2.into(), t3.into(), t4.into(), t5.into()]
        })
        .await;
        // The node grows; t1 stops.
        step(|v| {
            let mut n = v.node("a").cloned().unwrap();
            n.description.resources.memory_bytes += 1000;
            n.description.generic_resources.insert("gpu".into(), 4);
            let mut t1 = v.task("t1").cloned().unwrap();
            t1.status.state = TaskState::Shutdown;
            vec![n.into(), t1.into()]
        })
        .await;
        let t2 = store.view(|v| v.task("t2").cloned().unwrap());
        store
            .update(|tx| Ok::<_, StoreError>(tx.delete(crate::api::ObjectKind::Task, "t2", t2.meta.version)))
            .await
            .unwrap();
        while let Ok(e) = events.try_recv() {
            set.apply(&e);
        }
        assert!(!set.stale);
        let rebuilt = store.view(NodeSet::from_view);
        assert_eq!(set.nodes(), rebuilt.nodes());
        let a = &rebuilt.nodes()["a"];
        assert_eq!(
            (a.total_tasks, a.tasks_of_service("s2"), a.tasks_of_service("s3")),
            (2, 1, 1),
            "t4 and t5 are left"
        );
        assert_eq!(a.available_generic["gpu"], 2);
    }

    /// A pass's assignments reach each node a round of several at a time, so a proposal gives a node's session
    /// one message of several tasks; the tasks the pass cannot place come first, in their order.
    #[test]
    fn a_pass_writes_each_nodes_assignments_together_a_round_at_a_time() {
        let nodes = vec![node("a", "ha"), node("b", "hb"), node("c", "hc")];
        let mut tasks: Vec<Task> = (1..=60).map(|i| task(&format!("t{i:02}"), "svc", i)).collect();
        let mut big = task("big", "other", 1);
        big.spec_mut().resources.reservations.memory_bytes = i64::MAX;
        tasks.push(big);
        let view = store_with(nodes, tasks);
        let planned = changes(&view, &mut NodeSet::from_view(&view), usize::MAX).0;
        assert!(matches!(planned[0].change.decision, Decision::NoSuitableNode(_)), "unplaced first");
        let mut runs: Vec<(String, usize)> = Vec::new();
        for p in &planned[1..] {
            let Decision::Assign(n) = &p.change.decision else { panic!("{:?}", p.change.decision) };
            match runs.last_mut() {
                Some((last, k)) if last == n => *k += 1,
                _ => runs.push((n.clone(), 1)),
            }
        }
        let expect: Vec<(String, usize)> =
            [("a", 16), ("b", 16), ("c", 16), ("a", 4), ("b", 4), ("c", 4)].map(|(n, k)| (n.to_string(), k)).into();
        assert_eq!(runs, expect);
    }

    /// A pass takes the oldest tasks not tried yet, up to its bound, and every task that found no node before, so
    /// a pile of unplaceable tasks never keeps newer ones from their turn.
    #[test]
    fn a_pass_takes_every_retried_task_and_the_oldest_fresh_ones() {
        let mut tasks: Vec<Task> = (1..=4u64)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "svc", i);
                t.meta.created_index = 10 - i;
                t
            })
            .collect();
        let mut retried = task("r", "other", 1);
        retried.meta.created_index = 20;
        retried.status.err = "no suitable node (1 node not available for new tasks)".into();
        tasks.push(retried);
        let view = store_with(vec![node("a", "ha")], tasks);
        let (planned, more) = plan_on(&view, &mut NodeSet::from_view(&view), 2);
        let ids: Vec<&str> = planned.iter().map(|(t, _)| t.id.as_str()).collect();
        assert_eq!(ids, ["t4", "t3", "r"]);
        assert!(more, "t1 and t2 are left for the next pass");
        let (all, more) = plan_on(&view, &mut NodeSet::from_view(&view), 4);
        assert_eq!((all.len(), more), (5, false));
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
        t.spec_mut().resources.reservations.memory_bytes = 1 << 50;
        let p = plan(&store_with(vec![node("a", "ha")], vec![t.clone()]));
        assert_eq!(p[0].1, Decision::NoSuitableNode("no suitable node (insufficient memory on 1 node)".into()));

        t.spec_mut().resources.reservations.memory_bytes = 0;
        t.spec_mut().placement.constraints = vec!["node.labels.zone==mars".parse().unwrap()];
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
                t.spec_mut().resources.reservations.memory_bytes = 100;
                t
            })
            .chain(std::iter::once({
                let mut t = task("t4", "svc", 4);
                t.spec_mut().resources.reservations.memory_bytes = 100;
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
                t.spec_mut().placement.max_replicas = 1;
                t
            })
            .collect();
        let p = plan(&store_with(vec![node("a", "ha"), down], tasks));
        assert_eq!(p[0].1, Decision::Assign("a".into()));
        assert_eq!(
            p[1].1,
            Decision::NoSuitableNode("no suitable node (1 node not ready; max replicas per node limit exceed)".into())
        );
    }

    /// A node labelled `key=value` for each pair.
    fn labelled(id: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = node(id, &format!("h{id}"));
        for (k, v) in labels {
            n.spec.annotations.labels.insert((*k).into(), (*v).into());
        }
        n
    }

    fn spread_task(id: &str, slot: u64, prefs: &[&str]) -> Task {
        let mut t = task(id, "svc", slot);
        t.spec_mut().placement.preferences =
            prefs.iter().map(|d| crate::api::PlacementPreference::Spread((*d).into())).collect();
        t
    }

    /// Tasks per node of a plan, panicking on a refusal.
    fn assigned(plan: Vec<(Task, Decision)>) -> BTreeMap<String, usize> {
        let mut per_node = BTreeMap::new();
        for (t, d) in plan {
            match d {
                Decision::Assign(n) => *per_node.entry(n).or_default() += 1,
                other => panic!("{} not placed: {other:?}", t.id),
            }
        }
        per_node
    }

    fn zone_of(nodes: &[Node], per_node: &BTreeMap<String, usize>, key: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for n in nodes {
            let v = n.spec.annotations.labels.get(key).cloned().unwrap_or_default();
            *out.entry(v).or_default() += per_node.get(&n.id).copied().unwrap_or(0);
        }
        out
    }

    #[test]
    fn spread_preference_splits_evenly_between_label_values_not_nodes() {
        // Zone a has one node, zone b three: plain spread would put 1–2 tasks in a; the preference puts half.
        let nodes = vec![
            labelled("a1", &[("zone", "a")]),
            labelled("b1", &[("zone", "b")]),
            labelled("b2", &[("zone", "b")]),
            labelled("b3", &[("zone", "b")]),
        ];
        let tasks: Vec<Task> = (1..=6).map(|i| spread_task(&format!("t{i}"), i, &["node.labels.zone"])).collect();
        let per_node = assigned(plan(&store_with(nodes.clone(), tasks)));
        assert_eq!(zone_of(&nodes, &per_node, "zone"), BTreeMap::from([("a".into(), 3), ("b".into(), 3)]));
        assert_eq!(per_node.get("a1"), Some(&3));
        assert!(["b1", "b2", "b3"].iter().all(|n| per_node.get(*n) == Some(&1)), "spread inside b: {per_node:?}");
    }

    #[test]
    fn two_preferences_form_a_tree() {
        // zone a: racks r1 (1 node) and r2 (1 node); zone b: rack r3 (2 nodes). 8 tasks: 4 per zone, 2 per rack
        // of zone a, the 4 of zone b over its two nodes.
        let nodes = vec![
            labelled("a1", &[("zone", "a"), ("rack", "r1")]),
            labelled("a2", &[("zone", "a"), ("rack", "r2")]),
            labelled("b1", &[("zone", "b"), ("rack", "r3")]),
            labelled("b2", &[("zone", "b"), ("rack", "r3")]),
        ];
        let tasks: Vec<Task> =
            (1..=8).map(|i| spread_task(&format!("t{i}"), i, &["node.labels.zone", "node.labels.rack"])).collect();
        let per_node = assigned(plan(&store_with(nodes.clone(), tasks)));
        assert_eq!(zone_of(&nodes, &per_node, "zone"), BTreeMap::from([("a".into(), 4), ("b".into(), 4)]));
        assert_eq!(
            zone_of(&nodes, &per_node, "rack"),
            BTreeMap::from([("r1".into(), 2), ("r2".into(), 2), ("r3".into(), 4)])
        );
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2, 2]);
    }

    #[test]
    fn spread_counts_running_tasks_skips_full_branches_and_groups_nodes_lacking_the_label() {
        // Zone a already runs 2 tasks of the service: the next 2 go to b.
        let nodes = vec![labelled("a1", &[("zone", "a")]), labelled("b1", &[("zone", "b")])];
        let mut tasks: Vec<Task> = (1..=2)
            .map(|i| {
                let mut t = spread_task(&format!("r{i}"), i, &["node.labels.zone"]);
                t.node_id = "a1".into();
                t.status.state = TaskState::Running;
                t
            })
            .collect();
        tasks.extend((3..=4).map(|i| spread_task(&format!("t{i}"), i, &["node.labels.zone"])));
        let p = plan(&store_with(nodes, tasks));
        assert_eq!(assigned(p), BTreeMap::from([("b1".into(), 2)]));

        // A zone whose only node is drained takes nothing; the node without the label is a group of its own.
        let mut drained = labelled("c1", &[("zone", "c")]);
        drained.spec.availability = crate::api::NodeAvailability::Drain;
        let nodes = vec![labelled("a1", &[("zone", "a")]), drained, labelled("x1", &[])];
        let tasks: Vec<Task> = (1..=4).map(|i| spread_task(&format!("t{i}"), i, &["node.labels.zone"])).collect();
        let per_node = assigned(plan(&store_with(nodes, tasks)));
        assert_eq!(per_node, BTreeMap::from([("a1".into(), 2), ("x1".into(), 2)]));
    }

    #[test]
    fn generic_resources_are_reserved_and_explained_as_docker_does() {
        let mut gpu = node("g", "hg");
        gpu.description.generic_resources.insert("gpu".into(), 2);
        let want_gpu = |id: &str, slot: u64| {
            let mut t = task(id, "svc", slot);
            t.spec_mut().resources.generic_reservations.insert("gpu".into(), 1);
            t
        };
        // One gpu already held by a running task of another service.
        let mut holder = want_gpu("held", 1);
        holder.service_id = "other".into();
        holder.node_id = "g".into();
        holder.status.state = TaskState::Running;
        let p = plan(&store_with(vec![gpu, node("plain", "hp")], vec![holder, want_gpu("t1", 1), want_gpu("t2", 2)]));
        assert_eq!(p[0].1, Decision::Assign("g".into()));
        assert_eq!(p[1].1, Decision::NoSuitableNode("no suitable node (insufficient resources on 2 nodes)".into()));
    }

    #[test]
    fn reservations_count_every_live_task_on_the_node() {
        let mut n = node("a", "ha");
        n.description.resources.memory_bytes = 300;
        let on_node = |id: &str, service: &str, state: TaskState, desired: TaskState| {
            let mut t = task(id, service, 1);
            t.node_id = "a".into();
            t.status.state = state;
            t.desired_state = desired;
            t.spec_mut().resources.reservations.memory_bytes = 100;
            t
        };
        let mut new = task("new", "svc", 2);
        new.spec_mut().resources.reservations.memory_bytes = 100;
        let refused = Decision::NoSuitableNode("no suitable node (insufficient memory on 1 node)".into());
        // Another service's running task, an assigned one, and one told to stop but still running: all hold memory.
        let holders = vec![
            on_node("o1", "other", TaskState::Running, TaskState::Running),
            on_node("o2", "third", TaskState::Assigned, TaskState::Running),
            on_node("o3", "other", TaskState::Running, TaskState::Shutdown),
        ];
        let p = plan(&store_with(vec![n.clone()], holders.into_iter().chain([new.clone()]).collect()));
        assert_eq!(p[0].1, refused);
        // Once the stopping task has stopped, its memory is free again.
        let holders = vec![
            on_node("o1", "other", TaskState::Running, TaskState::Running),
            on_node("o2", "third", TaskState::Assigned, TaskState::Running),
            on_node("o3", "other", TaskState::Shutdown, TaskState::Shutdown),
        ];
        let p = plan(&store_with(vec![n], holders.into_iter().chain([new]).collect()));
        assert_eq!(p[0].1, Decision::Assign("a".into()));
    }

    #[test]
    fn max_replicas_per_node_leaves_the_extra_task_pending_with_dockers_reason() {
        let tasks: Vec<Task> = (1..=3)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "svc", i);
                t.spec_mut().placement.max_replicas = 1;
                t
            })
            .collect();
        let p = plan(&store_with(vec![node("a", "ha"), node("b", "hb")], tasks));
        assert_eq!(p[0].1, Decision::Assign("a".into()));
        assert_eq!(p[1].1, Decision::Assign("b".into()));
        assert_eq!(p[2].1, Decision::NoSuitableNode("no suitable node (max replicas per node limit exceed)".into()));
    }

    #[test]
    fn groups_keep_age_order_and_split_on_spec() {
        let mut a = task("a", "s1", 1);
        a.meta.created_index = 1;
        let mut b = task("b", "s2", 1);
        b.meta.created_index = 2;
        let mut c = task("c", "s1", 2);
        c.meta.created_index = 3;
        let mut d = task("d", "s1", 3);
        d.meta.created_index = 4;
        d.spec_mut().force_update = 1;
        let mut g = task("g", "s1", 0);
        g.node_id = "n".into();
        g.meta.created_index = 5;
        let ids: Vec<Vec<&str>> =
            groups(vec![&a, &b, &c, &d, &g]).iter().map(|g| g.iter().map(|t| t.id.as_str()).collect()).collect();
        assert_eq!(ids, vec![vec!["a", "c"], vec!["b"], vec!["d"], vec!["g"]]);
    }
}
