//! Orchestrators: turn services into tasks and keep them there.
//!
//! - [`replicated`]: slots 1..=replicas, each with one live task;
//! - [`global`]: one live task per eligible node;
//! - [`jobs`]: replicated and global jobs, run to completion;
//! - [`restart`]: when a task ends, decides whether and when its slot gets a replacement;
//! - [`task_reaper`]: deletes tasks beyond the history limit and tasks marked REMOVE once they stopped;
//! - [`update`]: rolls a changed spec out to the tasks (rolling update, rollback, update status).
//!
//! Each runs on the leader as `new(store, …)` + `run(shutdown)`, computes a plan from the store (pure functions,
//! unit-tested) and writes it back in bounded proposals; the store's watch wakes it up again.

pub mod global;
pub mod jobs;
pub mod replicated;
pub mod restart;
pub mod task_reaper;
pub mod update;

use crate::api::{
    new_id, NodeAvailability, NodeState, Object, Service, ServiceMode, Task, TaskSpec, TaskState, TaskStatus, Timestamp,
};
use crate::manager::store::{Event, MemoryStore, Store, StoreError, WriteTx, MAX_TASKS_PER_PROPOSAL};
use restart::RestartSupervisor;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

/// A task is live when it is meant to run (desired state ≤ RUNNING).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// Why a live task must leave its node, its slot being refilled elsewhere at once (not a restart attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// The node is DOWN (lost its session or missed its heartbeats).
    NodeDown,
    /// The node was removed from the swarm (`node rm`).
    NodeRemoved,
    /// The node's availability is DRAIN.
    NodeDrained,
    /// The node no longer satisfies the task's placement constraints (e.g. a label was removed).
    ConstraintsNotMet,
}

impl MoveReason {
    pub fn message(self) -> &'static str {
        match self {
            MoveReason::NodeDown => "node is down",
            MoveReason::NodeRemoved => "node was removed",
            MoveReason::NodeDrained => "node is drained",
            MoveReason::ConstraintsNotMet => "node no longer satisfies the placement constraints",
        }
    }
}

/// Whether `t` is a live task that has not ended, on a node it must leave: DOWN, removed, drained, or no longer
/// matching the task's constraints. Its status stays what the node last reported (as in Swarm); only its desired
/// state changes. PAUSE is not a reason: paused nodes keep their tasks and only take no new ones.
pub fn move_reason(view: &MemoryStore, t: &Task) -> Option<MoveReason> {
    if !is_live(t) || t.status.state.is_terminal() || t.node_id.is_empty() {
        return None;
    }
    let Some(node) = view.node(&t.node_id) else { return Some(MoveReason::NodeRemoved) };
    if node.status.state == NodeState::Down {
        Some(MoveReason::NodeDown)
    } else if node.spec.availability == NodeAvailability::Drain {
        Some(MoveReason::NodeDrained)
    } else if !t.spec.placement.constraints.iter().all(|c| c.matches(node)) {
        Some(MoveReason::ConstraintsNotMet)
    } else {
        None
    }
}

/// Writes what `P` plans for `service` into `tx`, at most `room` tasks of it: first the tasks leaving their
/// node, then those ending, then the new ones, so a cut plan never creates a slot's new task before its old one
/// was let go. Returns whether the whole plan was written.
fn write_plan<P: ServiceModePolicy>(tx: &mut WriteTx, service: &Service, room: usize) -> bool {
    let view = tx.view();
    let plan = P::plan(view, service);
    let whole = plan.orphaned.len() + plan.end.len() + plan.create.len() <= room;
    // Each update with the reason it moves (an orphan) or none (a task the plan ends).
    let orphaned = plan.orphaned.into_iter().map(|t| (Some(move_reason(view, &t).map_or("", MoveReason::message)), t));
    let ended = plan.end.into_iter().map(|t| (None, t));
    let updates: Vec<(Option<&str>, Task)> = orphaned.chain(ended).take(room).collect();
    let creates: Vec<Task> = plan.create.into_iter().take(room - updates.len()).collect();
    for (moving, mut t) in updates {
        match moving {
            Some(why) => {
                tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot, node.id = %t.node_id,
                    reason = why, "moving the task off its node");
                t.desired_state = TaskState::Shutdown;
            }
            None => t.desired_state = P::END_STATE,
        }
        tx.update(t);
    }
    for t in creates {
        tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot, node.id = %t.node_id, "task created");
        tx.create(t);
    }
    whole
}

/// A new task for `service` in `slot` (replicated) or on `node_id` (global, slot 0): NEW, or PENDING when the
/// allocator has nothing to give it.
pub fn new_task(service: &Service, slot: u64, node_id: &str, desired: TaskState) -> Task {
    new_task_sharing(service, Arc::new(service.spec.task_template.clone()), slot, node_id, desired)
}

/// [`new_task`] with `spec` (the service's task template) shared with the other tasks a plan makes.
pub fn new_task_sharing(service: &Service, spec: Arc<TaskSpec>, slot: u64, node_id: &str, desired: TaskState) -> Task {
    let mut t = Task {
        id: new_id(),
        meta: Default::default(),
        service_id: service.id.clone(),
        service_annotations: service.spec.annotations.clone(),
        slot,
        node_id: node_id.to_string(),
        spec,
        spec_version: service.spec_version,
        status: TaskStatus {
            timestamp: Timestamp::now(),
            state: TaskState::New,
            message: "created".into(),
            ..Default::default()
        },
        desired_state: desired,
        job_iteration: None,
        networks: vec![],
        endpoint: None,
    };
    crate::manager::allocator::pending_at_creation(service, &mut t);
    t
}

/// Whether a slot whose tasks all ended should stay empty: the restart policy declined to replace its last task
/// and the service has not changed since. Scaling or updating the service frees such slots again, as in Swarm.
/// A last task that ended SHUTDOWN did not end on its own: it was stopped (its node drained or relabelled out of the
/// constraints), so the slot is free when its node is eligible again.
pub fn slot_held_dead(service: &Service, tasks: &[&Task]) -> bool {
    match tasks.iter().max_by_key(|t| t.meta.creation_order()) {
        Some(last) => {
            last.desired_state == TaskState::Shutdown
                && last.status.state.is_terminal()
                && last.status.state != TaskState::Shutdown
                && last.spec_version >= service.spec_version
        }
        None => false,
    }
}

/// What reconciling one service changes (computed by a pure planner).
#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<Task>,
    /// Live tasks to end (the orchestrator says with which desired state).
    pub end: Vec<Task>,
    /// Live tasks that must leave their node ([`move_reason`]) and whose slots `create` refills elsewhere: set to
    /// desired SHUTDOWN, so the node stops them (now, or when it comes back).
    pub orphaned: Vec<Task>,
}

/// What distinguishes the replicated and the global orchestrator; the rest of their work is [`Orchestrator`].
pub trait ServiceModePolicy: Send + Sync + 'static {
    /// Names the component in logs.
    const NAME: &'static str;
    /// The desired state given to the tasks a plan ends: REMOVE for a slot that goes (replicated), SHUTDOWN for
    /// a node that stops being eligible (global; the node may become eligible again).
    const END_STATE: TaskState;
    /// Whether a service is this orchestrator's.
    fn handles(mode: &ServiceMode) -> bool;
    /// Whether a change may need a pass.
    fn interested(ev: &Event) -> bool;
    /// Plans one service of this mode (pure).
    fn plan(view: &MemoryStore, service: &Service) -> Plan;
}

/// An orchestrator: on every relevant change, ended tasks go to the restart supervisor first (it may replace them
/// in place), then every other service of its mode is planned and the plans are written as one proposal.
pub struct Orchestrator<P> {
    store: Store,
    restarts: Arc<RestartSupervisor>,
    policy: std::marker::PhantomData<P>,
}

impl<P: ServiceModePolicy> Orchestrator<P> {
    pub fn new(store: Store, restarts: Arc<RestartSupervisor>) -> Self {
        Orchestrator { store, restarts, policy: std::marker::PhantomData }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let pass = |scope| self.pass(&shutdown, scope);
        let retry = Duration::from_secs(5);
        let interested = P::interested;
        reconcile_services(P::NAME, &self.store, &shutdown, Duration::from_millis(20), retry, interested, pass).await
    }

    /// Plans the services in `scope` and writes the plans in proposals of about [`MAX_TASKS_PER_PROPOSAL`] tasks:
    /// a burst of new services (a stack deploy, a script) would otherwise make one Raft entry of every task of
    /// every service. Each proposal is planned on a fresh view, so a service cut between two proposals is simply
    /// planned again and its plan holds what is left.
    async fn pass(&self, shutdown: &CancellationToken, scope: Scope) -> Result<(), StoreError> {
        let services: Vec<String> =
            self.store.view(|v| scope.services(v).filter(|s| P::handles(&s.spec.mode)).map(|s| s.id.clone()).collect());
        let (mut next, mut touched, mut delayed) = (0, None, Vec::new());
        // A pass of many proposals stops between two of them when the leader steps down or the node shuts down:
        // the next leader starts with a full pass anyway.
        while !shutdown.is_cancelled() {
            let done = self
                .store
                .update(|tx| {
                    crate::manager::long_step(|| {
                        // Ended tasks go to the restart supervisor first, in the first proposal; the services it
                        // touched are left to it for this pass.
                        let touched = touched.get_or_insert_with(|| {
                            let (later, touched) = self.restarts.restart_ended_in(tx, P::handles, &scope);
                            delayed = later;
                            touched
                        });
                        let view = tx.view();
                        while next < services.len() && tx.len() < MAX_TASKS_PER_PROPOSAL {
                            let Some(service) = view.service(&services[next]).filter(|s| !touched.contains(&s.id))
                            else {
                                next += 1;
                                continue;
                            };
                            if write_plan::<P>(tx, service, MAX_TASKS_PER_PROPOSAL - tx.len()) {
                                next += 1;
                            }
                        }
                        Ok::<_, StoreError>(next >= services.len())
                    })
                })
                .await?;
            if done {
                break;
            }
        }
        for (task_id, delay) in delayed {
            self.restarts.start_after(self.store.clone(), task_id, delay, shutdown.clone());
        }
        Ok(())
    }
}

/// Whether an event is about a service or a task.
fn service_or_task(ev: &Event) -> bool {
    matches!(ev.object, Object::Service(_) | Object::Task(_))
}

/// Whether an event is about a service, a task or a node (a node going DOWN, drained, relabelled or removed frees
/// its slots).
fn service_task_or_node(ev: &Event) -> bool {
    matches!(ev.object, Object::Service(_) | Object::Task(_) | Object::Node(_))
}

/// Which services a pass must look at: those whose service or tasks changed, those with tasks on a changed node
/// (plus every global service, which a node joining or coming back concerns), or all of them (changes were missed,
/// another kind of object changed, or the periodic full pass).
///
/// A task the scheduler just placed ([`Event::is_assignment`], a third of all task writes) does not put its
/// service in scope: only the task itself is looked at, in case its node went down, was drained or relabelled
/// between the scheduler's choice and the write. Planning its whole service again, for each batch the
/// scheduler wrote, was several percent of a busy manager's CPU at a thousand tasks per service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    all: bool,
    services: BTreeSet<String>,
    nodes: BTreeSet<String>,
    assigned: BTreeSet<String>,
}

impl Scope {
    pub fn everything() -> Self {
        Scope { all: true, ..Default::default() }
    }

    /// Widens the scope by what `ev` touches.
    pub fn mark(&mut self, ev: &Event) {
        match &ev.object {
            Object::Service(s) => {
                self.services.insert(s.id.clone());
            }
            Object::Task(t) if ev.is_assignment() => {
                self.assigned.insert(t.id.clone());
            }
            Object::Task(t) => {
                self.services.insert(t.service_id.clone());
            }
            Object::Node(n) => {
                self.nodes.insert(n.id.clone());
            }
            _ => self.all = true,
        }
    }

    fn merge(&mut self, other: Scope) {
        self.all |= other.all;
        self.services.extend(other.services);
        self.nodes.extend(other.nodes);
        self.assigned.extend(other.assigned);
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty() && self.nodes.is_empty() && self.assigned.is_empty()
    }

    /// The ids of the services in scope (some may have been deleted), when not all are.
    fn service_ids<'a>(&'a self, view: &'a MemoryStore) -> BTreeSet<&'a str> {
        let mut ids: BTreeSet<&str> = self.services.iter().map(String::as_str).collect();
        if !self.nodes.is_empty() {
            ids.extend(self.nodes.iter().flat_map(|n| view.tasks_by_node(n)).map(|t| t.service_id.as_str()));
            let global = |s: &&Service| matches!(s.spec.mode, ServiceMode::Global | ServiceMode::GlobalJob);
            ids.extend(view.services().filter(global).map(|s| s.id.as_str()));
        }
        ids
    }

    /// The services of the tasks just placed that must move off their node.
    fn misplaced<'a>(&'a self, view: &'a MemoryStore) -> impl Iterator<Item = &'a str> {
        let moving = self.assigned.iter().filter_map(|id| view.task(id)).filter(|t| move_reason(view, t).is_some());
        moving.map(|t| t.service_id.as_str())
    }

    /// The services in scope that still exist.
    pub fn services<'a>(&'a self, view: &'a MemoryStore) -> Box<dyn Iterator<Item = &'a Service> + 'a> {
        if self.all {
            Box::new(view.services())
        } else {
            let mut ids = self.service_ids(view);
            ids.extend(self.misplaced(view));
            Box::new(ids.into_iter().filter_map(|id| view.service(id)))
        }
    }

    /// The tasks of the services in scope (including tasks of services that were deleted). A task just placed
    /// does not bring its service's here even when it must move: moving it is the orchestrators' (through
    /// [`Scope::services`]), and their write brings the service into every scope. Looking each placed task up for
    /// the reaper and the restart supervisor too was several percent of a manager's CPU at a million tasks.
    pub fn tasks<'a>(&'a self, view: &'a MemoryStore) -> Box<dyn Iterator<Item = &'a Task> + 'a> {
        if self.all {
            Box::new(view.tasks())
        } else {
            Box::new(self.service_ids(view).into_iter().flat_map(|id| view.tasks_by_service(id)))
        }
    }
}

/// [`reconcile_loop`] for components whose work splits by service: each pass is handed the [`Scope`] of what
/// changed since the last successful one, so a change to one service costs that service, not the cluster. A
/// full pass runs first, after missed changes, and every `retry`.
pub(crate) async fn reconcile_services<F, Fut>(
    name: &'static str,
    store: &Store,
    shutdown: &CancellationToken,
    debounce: Duration,
    retry: Duration,
    interested: impl Fn(&Event) -> bool,
    mut pass: F,
) where
    F: FnMut(Scope) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut events = store.watch_decisions();
    let mut dirty = Scope::everything();
    let mut open = true;
    loop {
        let scope = std::mem::take(&mut dirty);
        // The watch is read while the pass runs: a pass of many proposals at scale fell behind it otherwise, and
        // a watch that lagged makes the next pass a full one.
        let passed = {
            let run = pass(scope.clone());
            tokio::pin!(run);
            loop {
                if !open {
                    break run.await;
                }
                tokio::select! {
                    r = &mut run => break r,
                    r = events.recv() => open = note(name, &mut dirty, r, &interested),
                }
            }
        };
        if !open {
            return;
        }
        if let Err(e) = passed {
            if !e.is_out_of_sequence() {
                tracing::warn!(component = name, error = %e, "reconcile pass failed");
            }
            dirty.merge(scope);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        // Wait for something this component cares about.
        let tick = tokio::time::sleep(retry);
        tokio::pin!(tick);
        while dirty.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut tick => dirty = Scope::everything(),
                r = events.recv() => if !note(name, &mut dirty, r, &interested) {
                    return;
                },
            }
        }
        // The watch is read while waiting too: at a million tasks a quarter of a second of changes overflowed it,
        // and a watch that lagged made every pass a full one.
        let gathered = tokio::time::Instant::now() + debounce;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(gathered) => break,
                r = events.recv() => if !note(name, &mut dirty, r, &interested) {
                    return;
                },
            }
        }
        loop {
            match events.try_recv() {
                Ok(ev) if interested(&ev) => dirty.mark(&ev),
                Ok(_) => continue,
                Err(TryRecvError::Lagged(n)) => dirty = fell_behind(name, n),
                Err(_) => break,
            }
        }
    }
}

/// The scope after the watch lagged: everything. Logged, as it makes the next pass a full one.
fn fell_behind(name: &str, missed: u64) -> Scope {
    tracing::info!(component = name, missed, "fell behind the store's watch: the next pass covers everything");
    Scope::everything()
}

/// Widens `dirty` by one read of the watch (everything, when the watch lagged); false once the watch is closed.
fn note(
    name: &str,
    dirty: &mut Scope,
    read: Result<Arc<Event>, RecvError>,
    interested: impl Fn(&Event) -> bool,
) -> bool {
    match read {
        Ok(ev) if interested(&ev) => dirty.mark(&ev),
        Ok(_) => {}
        Err(RecvError::Lagged(n)) => *dirty = fell_behind(name, n),
        Err(RecvError::Closed) => return false,
    }
    true
}

/// The reconcile loop every leader component shares: run a pass, then wait for a relevant store change (or the
/// retry tick), coalescing bursts over `debounce`. A failed pass is retried; "out of sequence" is routine.
pub(crate) async fn reconcile_loop<F, Fut>(
    name: &'static str,
    store: &Store,
    shutdown: &CancellationToken,
    debounce: Duration,
    retry: Duration,
    interested: impl Fn(&Event) -> bool,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut events = store.watch();
    loop {
        if let Err(e) = pass().await {
            if !e.is_out_of_sequence() {
                tracing::warn!(component = name, error = %e, "reconcile pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        // Wait for something this component cares about.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => break,
                r = events.recv() => match r {
                    Ok(ev) if interested(&ev) => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
            }
        }
        tokio::time::sleep(debounce).await;
        loop {
            match events.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::EventAction;
    use crate::testing::{node, service, task};

    /// Services created together are planned in one pass, but written in proposals of at most
    /// MAX_TASKS_PER_PROPOSAL tasks, a service cut between two proposals carrying on where it stopped.
    #[tokio::test]
    async fn a_pass_over_many_services_writes_bounded_proposals_and_fills_every_slot_once() {
        let store = Store::in_memory();
        let replicas = MAX_TASKS_PER_PROPOSAL as u64 * 7 / 10;
        store
            .update(|tx| {
                for id in ["a", "b", "c"] {
                    tx.create(service(id, id, replicas));
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let orchestrator = replicated::ReplicatedOrchestrator::new(store.clone(), Arc::new(RestartSupervisor::new()));
        let stopped = CancellationToken::new();
        stopped.cancel();
        orchestrator.pass(&stopped, Scope::everything()).await.unwrap();
        assert_eq!(store.view(|v| v.tasks().count()), 0, "a pass whose leader stopped writes nothing more");
        orchestrator.pass(&CancellationToken::new(), Scope::everything()).await.unwrap();
        let (per_proposal, slots) = store.view(|v| {
            let mut per_proposal: std::collections::BTreeMap<u64, usize> = Default::default();
            let mut slots: std::collections::BTreeMap<(String, u64), usize> = Default::default();
            for t in v.tasks() {
                *per_proposal.entry(t.meta.version).or_default() += 1;
                *slots.entry((t.service_id.clone(), t.slot)).or_default() += 1;
            }
            (per_proposal, slots)
        });
        assert_eq!(slots.len() as u64, 3 * replicas, "every slot of every service filled");
        assert!(slots.values().all(|n| *n == 1), "no slot filled twice");
        assert_eq!(per_proposal.len(), 3, "2,100 tasks in three proposals: {per_proposal:?}");
        assert!(per_proposal.values().all(|n| *n <= MAX_TASKS_PER_PROPOSAL), "{per_proposal:?}");
    }

    #[tokio::test]
    async fn a_changed_node_scopes_the_services_with_tasks_on_it_and_every_global_service() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                let mut global = service("g", "agent", 0);
                global.spec.mode = ServiceMode::Global;
                tx.create(global);
                for (s, n) in [("s1", "n1"), ("s2", "n2")] {
                    tx.create(service(s, s, 1));
                    let mut t = task(&format!("{s}.1"), s, 1);
                    t.node_id = n.into();
                    tx.create(t);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let mut scope = Scope::default();
        scope.mark(&Event { action: EventAction::Update, object: node("n1", "h1").into(), old: None, index: 9 });
        let (services, tasks) = store.view(|v| {
            let services: Vec<String> = scope.services(v).map(|s| s.id.clone()).collect();
            let tasks: Vec<String> = scope.tasks(v).map(|t| t.id.clone()).collect();
            (services, tasks)
        });
        assert_eq!(services, ["g", "s1"], "s2 has no task on n1 and is not global");
        assert_eq!(tasks, ["s1.1"]);
        assert!(!scope.is_empty());
    }

    /// The scheduler placing a task scopes that task only; its service is planned again only when the task's
    /// node must be left (here: it went down between the scheduler's choice and the write).
    #[tokio::test]
    async fn an_assignment_scopes_its_service_only_when_the_node_must_be_left() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                tx.create(node("n1", "h1"));
                let mut down = node("n2", "h2");
                down.status.state = NodeState::Down;
                tx.create(down);
                for s in ["s1", "s2"] {
                    tx.create(service(s, s, 1));
                    tx.create(task(&format!("{s}.1"), s, 1));
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let assign = |id: &str, node: &str| {
            let old = store.view(|v| v.task(id).unwrap().clone());
            let mut t = old.clone();
            t.node_id = node.into();
            t.status.state = TaskState::Assigned;
            Event { action: EventAction::Update, object: t.into(), old: Some(old.into()), index: 9 }
        };
        let (fine, misplaced) = (assign("s1.1", "n1"), assign("s2.1", "n2"));
        assert!(fine.is_assignment() && misplaced.is_assignment());
        store
            .update(|tx| {
                for ev in [&fine, &misplaced] {
                    let Object::Task(t) = &ev.object else { unreachable!() };
                    tx.update(Task::clone(t));
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let mut scope = Scope::default();
        scope.mark(&fine);
        assert!(!scope.is_empty(), "an assignment is looked at");
        assert_eq!(store.view(|v| scope.services(v).count()), 0, "a task placed on a ready node plans nothing");
        scope.mark(&misplaced);
        let services: Vec<String> = store.view(|v| scope.services(v).map(|s| s.id.clone()).collect());
        assert_eq!(services, ["s2"], "a task placed on a node that went down replans its service");
        // Moving it is the orchestrators' alone: the reaper and the restart supervisor are not handed its tasks.
        assert_eq!(store.view(|v| scope.tasks(v).count()), 0);
        // Anything else a task does still scopes its service.
        let mut ended = misplaced.clone();
        ended.old = ended.object.clone().into();
        if let Object::Task(t) = &mut ended.object {
            Arc::make_mut(t).status.state = TaskState::Failed;
        }
        assert!(!ended.is_assignment());
        let mut scope = Scope::default();
        scope.mark(&ended);
        assert_eq!(store.view(|v| scope.services(v).count()), 1);
    }

    /// More changes than the watch holds, made while a component waits out its debounce, are read as they come:
    /// the next pass covers the service they changed, not everything. (Before, the wait was a sleep, the watch
    /// overflowed, and at a million tasks the task reaper's every pass was a full one.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_during_the_debounce_are_read_as_they_come_and_do_not_widen_the_scope() {
        let store = Store::in_memory();
        let (scopes_tx, mut scopes) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let (watched, stop) = (store.clone(), shutdown.clone());
        let component = tokio::spawn(async move {
            let pass = |scope: Scope| {
                let tx = scopes_tx.clone();
                async move {
                    let _ = tx.send(scope);
                    Ok::<_, StoreError>(())
                }
            };
            reconcile_services(
                "test",
                &watched,
                &stop,
                Duration::from_millis(800),
                Duration::from_secs(60),
                |_| true,
                pass,
            )
            .await
        });
        let first = scopes.recv().await.unwrap();
        assert!(first.all, "the first pass covers everything");

        store.update(|tx| Ok::<_, StoreError>(tx.create(service("s1", "s1", 1)))).await.unwrap();
        let burst = crate::manager::store::WATCH_CAPACITY + 2 * MAX_TASKS_PER_PROPOSAL;
        for chunk in 0..burst / MAX_TASKS_PER_PROPOSAL {
            store
                .update(|tx| {
                    for i in 0..MAX_TASKS_PER_PROPOSAL {
                        tx.create(task(&format!("t-{chunk}-{i}"), "s1", (chunk * MAX_TASKS_PER_PROPOSAL + i) as u64));
                    }
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = tokio::time::timeout(Duration::from_secs(10), scopes.recv()).await.unwrap().unwrap();
        assert!(!second.all, "the watch overflowed during the debounce: the pass covers everything");
        assert_eq!(second.services, BTreeSet::from(["s1".to_string()]));
        assert_eq!(
            store.view(|v| v.tasks_by_service("s1").count()),
            burst / MAX_TASKS_PER_PROPOSAL * MAX_TASKS_PER_PROPOSAL
        );
        shutdown.cancel();
        component.await.unwrap();
    }
}
