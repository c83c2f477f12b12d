//! The updater: rolls a changed service spec out to the service's tasks, slot by slot (replicated) or node by
//! node (global), with the service's `update_config` (or `rollback_config` while rolling back), and records the
//! progress in `Service.update_status` — Swarm's updater.
//!
//! - [`UpdateSupervisor`] is the leader component: when services or tasks change it looks at those services for
//!   dirty slots (or an update recorded as in progress) and keeps one [`Updater`] run per such service, for its
//!   current `spec_version`; a newer spec cancels the older run.
//! - An [`Updater`] run hands the dirty slots to `parallelism` workers (each waits `delay` after a slot), watches
//!   the tasks it created for failures within `monitor`, takes the failure action when the failed share exceeds
//!   `max_failure_ratio`, keeps watching for one more `monitor` period, and then records completion.
//!
//! Everything a run needs is in the store, so a new leader resumes an update where it stood: finished slots hold
//! clean tasks and are never touched again, and a slot caught half-way (new task created, old one not yet shut
//! down or not yet stopped) is finished from where it is.

use super::{is_live, move_reason, new_task, Scope};
use crate::api::{
    FailureAction, NodeState, Service, ServiceMode, Task, TaskState, Timestamp, UpdateConfig, UpdateOrder, UpdateState,
    UpdateStatus,
};
use crate::manager::store::{MemoryStore, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Docker's words for the update status messages.
pub const MSG_IN_PROGRESS: &str = "update in progress";
pub const MSG_COMPLETED: &str = "update completed";
pub const MSG_ROLLBACK_COMPLETED: &str = "rollback completed";
pub const MSG_MANUAL_ROLLBACK: &str = "manually requested rollback";

/// A slot of a service: its replicated slot number, or (global) the node its tasks run on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub slot: u64,
    pub node_id: String,
}

impl SlotKey {
    pub fn of(t: &Task) -> SlotKey {
        SlotKey { slot: t.slot, node_id: if t.slot == 0 { t.node_id.clone() } else { String::new() } }
    }
}

/// The tasks of one slot the updater works with.
#[derive(Debug, Clone)]
pub struct Slot {
    pub key: SlotKey,
    /// Live tasks (desired ≤ RUNNING, not ended, not being moved off their node), oldest first.
    pub live: Vec<Task>,
    /// Ids of tasks asked to stop that have not stopped yet (a stop-first replacement waits for them).
    pub stopping: Vec<String>,
}

/// Whether `t` has stopped as far as a replacement waiting for it is concerned: it ended, never reached a node,
/// or its node is down or gone (it will be stopped there when, if ever, the node comes back).
pub fn has_stopped(view: &MemoryStore, t: &Task) -> bool {
    t.status.state.is_terminal()
        || t.status.state < TaskState::Assigned
        || view.node(&t.node_id).is_none_or(|n| n.status.state == NodeState::Down)
}

/// Whether `t` must be replaced to match `service`. Swarm compares specs, not versions, so a change of the
/// replica count or of the update settings redeploys nothing. A change of placement alone leaves a task whose
/// node still satisfies the new constraints where it is (as Swarm).
pub fn is_task_dirty(view: &MemoryStore, service: &Service, t: &Task) -> bool {
    let want = &service.spec.task_template;
    // Published ports and the endpoint mode live outside the task spec: an allocated task made for other ones
    // is out of date too (as Swarm).
    let default = crate::api::EndpointSpec::default();
    let made_for = t.endpoint.as_ref().map_or(&default, |e| &e.spec);
    if t.status.state > TaskState::New && *made_for != service.spec.endpoint_spec {
        return true;
    }
    // Made from this very spec (every spec change bumps the version): equal without comparing, which matters
    // as this runs over every task of every service a change touches.
    if t.spec_version == service.spec_version || *t.spec == *want {
        return false;
    }
    let mut same_but_placement = (*t.spec).clone();
    same_but_placement.placement = want.placement.clone();
    if same_but_placement != *want {
        return true;
    }
    match view.node(&t.node_id) {
        Some(n) => !want.placement.constraints.iter().all(|c| c.matches(n)),
        None => true,
    }
}

/// The slots of a service as the updater sees them (pure), in slot (or node id) order.
pub fn slots(view: &MemoryStore, service: &Service) -> Vec<Slot> {
    let mut by_key: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for t in view.tasks_by_service(&service.id) {
        if t.desired_state != TaskState::Remove {
            by_key.entry(SlotKey::of(t)).or_default().push(t);
        }
    }
    by_key.into_iter().map(|(key, tasks)| slot_of(view, key, tasks)).collect()
}

/// One slot of a service, `None` when it has no tasks (pure).
pub fn slot(view: &MemoryStore, service: &Service, key: &SlotKey) -> Option<Slot> {
    let tasks: Vec<&Task> = view
        .tasks_by_service(&service.id)
        .filter(|t| t.desired_state != TaskState::Remove && t.slot == key.slot)
        .filter(|t| key.slot > 0 || t.node_id == key.node_id)
        .collect();
    (!tasks.is_empty()).then(|| slot_of(view, key.clone(), tasks))
}

fn slot_of(view: &MemoryStore, key: SlotKey, mut tasks: Vec<&Task>) -> Slot {
    tasks.sort_by_key(|t| t.meta.creation_order());
    let live = tasks.iter().filter(|t| counts_as_live(view, t)).map(|t| (*t).clone()).collect();
    let stopping = tasks.iter().filter(|t| is_stopping(view, t)).map(|t| t.id.clone()).collect();
    Slot { key, live, stopping }
}

/// Whether the updater counts `t` as its slot's task: meant to run, not ended (the restart supervisor replaces
/// ended ones) and not being moved off its node (the orchestrator refills those).
fn counts_as_live(view: &MemoryStore, t: &Task) -> bool {
    is_live(t) && !t.status.state.is_terminal() && move_reason(view, t).is_none()
}

/// Whether `t` was asked to stop and has not stopped yet.
fn is_stopping(view: &MemoryStore, t: &Task) -> bool {
    t.desired_state > TaskState::Running && !has_stopped(view, t)
}

/// Whether a slot needs the updater: it runs a task with an outdated spec, runs more than one task (a start-first
/// replacement whose old task is still up), or holds a replacement waiting at READY for an old task to stop.
pub fn is_slot_dirty(view: &MemoryStore, service: &Service, slot: &Slot) -> bool {
    slot.live.len() > 1
        || slot.live.iter().any(|t| is_task_dirty(view, service, t))
        || (!slot.stopping.is_empty() && slot.live.iter().any(|t| t.desired_state < TaskState::Running))
}

/// The slots of `service` that need the updater (pure).
pub fn dirty_slots(view: &MemoryStore, service: &Service) -> Vec<Slot> {
    slots(view, service).into_iter().filter(|s| is_slot_dirty(view, service, s)).collect()
}

/// How many slots are replaced at once: `parallelism`, where 0 means all (pure).
pub fn workers(parallelism: u64, dirty: usize) -> usize {
    if parallelism == 0 {
        dirty
    } else {
        (parallelism as usize).min(dirty)
    }
}

/// Whether `failures` among the `dirty` slots of an update exceed the tolerated ratio (pure; as Swarm, the share
/// is of the slots the update set out to replace).
pub fn failure_action_due(failures: usize, dirty: usize, max_failure_ratio: f64) -> bool {
    failures as f64 / dirty.max(1) as f64 > max_failure_ratio
}

/// Whether a task the update created ended in a way that counts against it: it failed, was rejected, or
/// stopped although it was meant to run.
pub fn counts_as_failure(t: &Task) -> bool {
    matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
        || (t.status.state.is_terminal() && t.desired_state <= TaskState::Running)
}

/// Whether the updater has work for `service`: an update recorded as in progress, or dirty slots (unless the last
/// update paused: it stays paused until the next `service update`).
pub fn needs_update(view: &MemoryStore, service: &Service) -> bool {
    if !matches!(service.spec.mode, ServiceMode::Replicated { .. } | ServiceMode::Global) {
        return false;
    }
    match service.update_status.as_ref().map(|s| s.state) {
        Some(UpdateState::Paused | UpdateState::RollbackPaused) => false,
        Some(UpdateState::Updating | UpdateState::RollbackStarted) => true,
        _ => {
            // Runs on every store change: one look at the tasks, without copying them or building slots.
            let mut live: HashMap<SlotKey, (usize, bool)> = HashMap::new();
            let mut stopping: HashSet<SlotKey> = HashSet::new();
            for t in view.tasks_by_service(&service.id).filter(|t| t.desired_state != TaskState::Remove) {
                if counts_as_live(view, t) {
                    if is_task_dirty(view, service, t) {
                        return true;
                    }
                    let (n, waiting) = live.entry(SlotKey::of(t)).or_default();
                    *n += 1;
                    *waiting |= t.desired_state < TaskState::Running;
                } else if is_stopping(view, t) {
                    stopping.insert(SlotKey::of(t));
                }
            }
            // As `is_slot_dirty`: two live tasks, or a replacement waiting for a task of its slot to stop.
            live.iter().any(|(key, (n, waiting))| *n > 1 || (*waiting && stopping.contains(key)))
        }
    }
}

/// The update settings in force: `rollback_config` while rolling back.
pub fn config_of(service: &Service) -> &UpdateConfig {
    match service.update_status.as_ref().map(|s| s.state) {
        Some(UpdateState::RollbackStarted) => &service.spec.rollback_config,
        _ => &service.spec.update_config,
    }
}

/// The service as it is once an update's failure action fires, or `None` when the action changes nothing
/// (continue) (pure). Rolling back restores the previous spec, which is then dropped (as Swarm: a rolled-back
/// update cannot be "rolled back" into again); a rollback is never rolled back, it pauses.
pub fn after_failure(service: &Service, failed_task: &str) -> Option<Service> {
    let rolling_back = service.update_status.as_ref().is_some_and(|s| s.state == UpdateState::RollbackStarted);
    let action = config_of(service).failure_action;
    let mut next = service.clone();
    let status = next.update_status.get_or_insert_with(|| UpdateStatus {
        state: UpdateState::Updating,
        started_at: Timestamp::now(),
        completed_at: None,
        message: String::new(),
    });
    match (action, rolling_back, service.previous_spec.as_ref()) {
        (FailureAction::Continue, _, _) => return None,
        (FailureAction::Pause, false, _) => {
            status.state = UpdateState::Paused;
            status.message = format!("update paused due to failure or early termination of task {failed_task}");
        }
        (_, true, _) => {
            status.state = UpdateState::RollbackPaused;
            status.message = format!("rollback paused due to failure or early termination of task {failed_task}");
        }
        (FailureAction::Rollback, false, None) => {
            status.state = UpdateState::Paused;
            status.message = format!(
                "update paused due to failure or early termination of task {failed_task} (no previous spec to roll \
                 back to)"
            );
        }
        (FailureAction::Rollback, false, Some(prev)) => {
            status.state = UpdateState::RollbackStarted;
            status.message = format!("update rolled back due to failure or early termination of task {failed_task}");
            next.spec = prev.clone();
            next.previous_spec = None;
            next.spec_version += 1;
        }
    }
    Some(next)
}

/// The service with its update recorded as finished (pure).
pub fn completed(service: &Service) -> Service {
    let mut next = service.clone();
    let status = next.update_status.get_or_insert_with(|| UpdateStatus {
        state: UpdateState::Updating,
        started_at: Timestamp::now(),
        completed_at: None,
        message: String::new(),
    });
    if status.state == UpdateState::RollbackStarted {
        status.state = UpdateState::RollbackCompleted;
        status.message = MSG_ROLLBACK_COMPLETED.into();
    } else {
        status.state = UpdateState::Completed;
        status.message = MSG_COMPLETED.into();
    }
    status.completed_at = Some(Timestamp::now());
    next
}

/// A run of the updater for one service at one spec version.
struct Run {
    spec_version: u64,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// The leader component that starts, replaces and cancels [`Updater`] runs.
pub struct UpdateSupervisor {
    store: Store,
    runs: Mutex<HashMap<String, Run>>,
}

impl UpdateSupervisor {
    pub fn new(store: Store) -> Self {
        UpdateSupervisor { store, runs: Mutex::default() }
    }

    /// Looks only at the services the store changes since the last pass touch ([`Scope`]: services, the services
    /// of changed tasks, the services with tasks on a changed node), following [`Store::watch_decisions`]: with
    /// thousands of services a full scan on every change would cost more than all the rest. A full scan runs at
    /// start and when the watch lagged.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut events = self.store.watch_decisions();
        let mut scope = Scope::everything();
        loop {
            self.pass(&shutdown, &std::mem::take(&mut scope));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = events.recv() => match r {
                    Ok(ev) => scope.mark(&ev),
                    Err(RecvError::Lagged(_)) => scope = Scope::everything(),
                    Err(RecvError::Closed) => break,
                },
            }
            // Coalesce a burst of changes into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
            loop {
                match events.try_recv() {
                    Ok(ev) => scope.mark(&ev),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => scope = Scope::everything(),
                    Err(_) => break,
                }
            }
        }
        let runs: Vec<Run> = self.runs.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, r)| r).collect();
        for r in runs {
            r.cancel.cancel();
            let _ = r.handle.await;
        }
    }

    /// Starts runs for the services in `scope` that need one, and stops runs that are stale.
    fn pass(&self, shutdown: &CancellationToken, scope: &Scope) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: Vec<(String, u64)> = crate::manager::long_step(|| {
            self.store.view(|v| {
                // Runs of deleted services or of an older spec stop; finished runs are forgotten.
                runs.retain(|id, r| {
                    let current = v.service(id).is_some_and(|s| s.spec_version == r.spec_version);
                    if !current {
                        r.cancel.cancel();
                    }
                    current && !r.handle.is_finished()
                });
                let wants = |s: &&Service| !runs.contains_key(&s.id) && needs_update(v, s);
                let pick = |s: &Service| (s.id.clone(), s.spec_version);
                scope.services(v).filter(wants).map(pick).collect()
            })
        });
        for (id, spec_version) in wanted {
            let cancel = shutdown.child_token();
            let updater = Arc::new(Updater {
                store: self.store.clone(),
                service_id: id.clone(),
                spec_version,
                cancel: cancel.clone(),
                started: Mutex::default(),
                failures: Mutex::default(),
            });
            let span = tracing::info_span!("update", service.id = %id, spec_version);
            let handle = tokio::spawn(updater.run().instrument(span));
            runs.insert(id, Run { spec_version, cancel, handle });
        }
    }
}

/// What a round of a run ended with.
enum Round {
    /// Look at the service again (more slots may have become dirty meanwhile).
    Again,
    /// Completed, paused, rolled back (a new run takes over), superseded or cancelled.
    Done,
}

/// One service's update towards one spec version.
pub struct Updater {
    store: Store,
    service_id: String,
    spec_version: u64,
    cancel: CancellationToken,
    /// Tasks this round created (or took over), and when each was first seen RUNNING.
    started: Mutex<HashMap<String, Option<Instant>>>,
    /// This round's failed tasks, and the first one that made the failure action due.
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    failed: HashSet<String>,
    due: Option<String>,
}

/// What a round's failure checks need.
#[derive(Clone)]
struct Watch {
    config: UpdateConfig,
    total: usize,
    stop: CancellationToken,
}

impl Updater {
    async fn run(self: Arc<Self>) {
        loop {
            match self.clone().round().await {
                Ok(Round::Again) => continue,
                Ok(Round::Done) => return,
                Err(e) => {
                    if !e.is_out_of_sequence() {
                        tracing::warn!(error = %e, "update step failed; retrying");
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    /// The service, if it still has the spec this run rolls out.
    fn service(&self, v: &MemoryStore) -> Option<Service> {
        v.service(&self.service_id).filter(|s| s.spec_version == self.spec_version).cloned()
    }

    /// Writes `change(service)` if the service still has this run's spec; returns whether it was written.
    async fn write_service(&self, change: impl Fn(&Service) -> Option<Service>) -> Result<bool, StoreError> {
        self.store
            .update_retrying(5, |tx| {
                let Some(next) = self.service(tx.view()).and_then(|s| change(&s)) else { return Ok(false) };
                tx.update(next);
                Ok(true)
            })
            .await
    }

    async fn round(self: Arc<Self>) -> Result<Round, StoreError> {
        // Subscribed before reading, so no failure of a task created from here on is missed.
        let mut events = self.store.watch();
        let Some((service, dirty)) = self.store.view(|v| {
            let s = self.service(v)?;
            let dirty = dirty_slots(v, &s);
            Some((s, dirty))
        }) else {
            return Ok(Round::Done);
        };
        let state = service.update_status.as_ref().map(|s| s.state);
        if matches!(state, Some(UpdateState::Paused | UpdateState::RollbackPaused)) {
            return Ok(Round::Done);
        }
        let in_progress = matches!(state, Some(UpdateState::Updating | UpdateState::RollbackStarted));
        if dirty.is_empty() {
            if in_progress {
                self.write_service(|s| Some(completed(s))).await?;
                tracing::info!("update completed");
            }
            return Ok(Round::Done);
        }
        if !in_progress {
            let started = self
                .write_service(|s| {
                    let mut next = s.clone();
                    next.update_status = Some(UpdateStatus {
                        state: UpdateState::Updating,
                        started_at: Timestamp::now(),
                        completed_at: None,
                        message: MSG_IN_PROGRESS.into(),
                    });
                    Some(next)
                })
                .await?;
            if !started {
                return Ok(Round::Done);
            }
            tracing::info!(slots = dirty.len(), "update started");
            return Ok(Round::Again);
        }
        let config = config_of(&service).clone();
        let total = dirty.len();
        tracing::info!(slots = total, parallelism = config.parallelism, order = ?config.order, "updating slots");
        let queue = Arc::new(Mutex::new(dirty.into_iter().collect::<VecDeque<Slot>>()));
        // Each round counts the failures of the tasks it created against the slots it set out to update.
        *self.failures.lock().unwrap_or_else(|e| e.into_inner()) = Failures::default();
        self.started.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let watch = Watch { config: config.clone(), total, stop: self.cancel.child_token() };
        let mut pool = JoinSet::new();
        for _ in 0..workers(config.parallelism, total) {
            pool.spawn(self.clone().worker(queue.clone(), watch.clone()).in_current_span());
        }
        let mut monitor_until: Option<tokio::time::Instant> = None;
        loop {
            self.check_failures(&watch);
            let due = self.failures.lock().unwrap_or_else(|e| e.into_inner()).due.clone();
            if let Some(task_id) = due {
                while pool.join_next().await.is_some() {}
                self.write_service(|s| after_failure(s, &task_id)).await?;
                let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner()).failed.len();
                tracing::warn!(task.id = %task_id, action = ?config.failure_action, failures, slots = total,
                    "update failure action taken");
                return Ok(Round::Done);
            }
            if pool.is_empty() && monitor_until.is_none() {
                // Keep watching for failures for one more monitor period before declaring the update complete.
                monitor_until = Some(tokio::time::Instant::now() + config.monitor);
            }
            let until = monitor_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
            if monitor_until.is_some_and(|u| u <= tokio::time::Instant::now()) {
                return Ok(Round::Again);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    watch.stop.cancel();
                    while pool.join_next().await.is_some() {}
                    return Ok(Round::Done);
                }
                r = events.recv() => if let Err(RecvError::Closed) = r { return Ok(Round::Done) },
                Some(_) = pool.join_next(), if !pool.is_empty() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Counts the tasks this run created that newly failed; when the failed share exceeds the tolerated ratio
    /// (and the action is not "continue"), records the task that tipped it and stops the workers.
    fn check_failures(&self, w: &Watch) {
        let newly = self.new_failures(w.config.monitor);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for id in newly {
            if f.failed.insert(id.clone())
                && f.due.is_none()
                && w.config.failure_action != FailureAction::Continue
                && failure_action_due(f.failed.len(), w.total, w.config.max_failure_ratio)
            {
                f.due = Some(id);
                w.stop.cancel();
            }
        }
    }

    /// The tasks this run created that failed within the monitor period and were not counted yet.
    fn new_failures(&self, monitor: Duration) -> Vec<String> {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let counted = self.failures.lock().unwrap_or_else(|e| e.into_inner()).failed.clone();
        self.store.view(|v| {
            let mut out = Vec::new();
            for (id, since) in started {
                let Some(t) = v.task(&id) else { continue };
                let in_window = since.is_none_or(|s| s.elapsed() <= monitor);
                if in_window && counts_as_failure(t) && !counted.contains(&id) {
                    tracing::info!(task.id = %id, state = %t.status.state, err = %t.status.err,
                        "updated task failed");
                    out.push(id);
                }
            }
            out
        })
    }

    async fn worker(self: Arc<Self>, queue: Arc<Mutex<VecDeque<Slot>>>, w: Watch) {
        loop {
            let Some(slot) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { return };
            if let Err(e) = self.update_slot(&slot.key, w.config.order, &w.stop).await {
                tracing::warn!(slot = slot.key.slot, node.id = %slot.key.node_id, error = %e, "slot update failed");
            }
            // A slot whose new task failed may make the failure action due: decided before the next slot starts.
            self.check_failures(&w);
            if w.stop.is_cancelled() {
                return;
            }
            if !w.config.delay.is_zero() {
                tokio::select! {
                    _ = w.stop.cancelled() => return,
                    _ = tokio::time::sleep(w.config.delay) => {}
                }
            }
        }
    }

    /// The slot `key` as it is now, with the service, if the service still has this run's spec.
    fn slot_now(&self, v: &MemoryStore, key: &SlotKey) -> Option<(Service, Slot)> {
        let s = self.service(v)?;
        let slot = slot(v, &s, key)?;
        Some((s, slot))
    }

    /// Replaces one slot's task: creates (or takes over) a clean task, shuts the old ones down before it starts
    /// (stop-first) or once it runs (start-first), and returns once the new task reached RUNNING or ended.
    async fn update_slot(&self, key: &SlotKey, order: UpdateOrder, stop: &CancellationToken) -> Result<(), StoreError> {
        let Some((service, slot)) = self.store.view(|v| self.slot_now(v, key)) else { return Ok(()) };
        if slot.live.is_empty() {
            // Nothing runs here: the orchestrator fills the slot, with the new spec.
            return Ok(());
        }
        let existing = self.store.view(|v| {
            let clean = |t: &&Task| !is_task_dirty(v, &service, t);
            let running = slot.live.iter().rev().filter(clean).find(|t| t.desired_state == TaskState::Running);
            running.or_else(|| slot.live.iter().rev().find(clean)).cloned()
        });
        // A replacement waiting at READY for old tasks to stop was made stop-first (by a run the order changed
        // under, or by a previous leader): it is finished that way.
        let waiting =
            existing.as_ref().is_some_and(|t| t.desired_state < TaskState::Running) && !slot.stopping.is_empty();
        let stop_first = order == UpdateOrder::StopFirst || waiting;
        let new_id = match existing {
            Some(t) => t.id,
            None => {
                let node = if key.slot == 0 { key.node_id.as_str() } else { "" };
                let desired = if stop_first { TaskState::Ready } else { TaskState::Running };
                let task = new_task(&service, key.slot, node, desired);
                let id = task.id.clone();
                let old: Vec<String> = slot.live.iter().map(|t| t.id.clone()).collect();
                let created = self
                    .store
                    .update_retrying(5, |tx| {
                        if self.service(tx.view()).is_none() {
                            return Ok(false);
                        }
                        tx.create(task.clone());
                        if stop_first {
                            shut_down(tx, &old);
                        }
                        Ok(true)
                    })
                    .await?;
                if !created {
                    return Ok(());
                }
                tracing::info!(task.id = %id, slot = key.slot, node.id = %key.node_id, replaces = ?old,
                    "replacement created");
                id
            }
        };
        self.started.lock().unwrap_or_else(|e| e.into_inner()).entry(new_id.clone()).or_insert(None);
        let others = |slot: &Slot| -> Vec<String> {
            slot.live.iter().filter(|t| t.id != new_id).map(|t| t.id.clone()).collect()
        };
        if stop_first {
            // Old tasks shut down (again, when taking over a slot), then the new one starts once they stopped.
            let old = others(&slot);
            if !old.is_empty() {
                self.store
                    .update_retrying(5, |tx| {
                        shut_down(tx, &old);
                        Ok(())
                    })
                    .await?;
            }
            let waited = self
                .wait(stop, |v| match self.slot_now(v, key) {
                    Some((_, now)) => now.stopping.is_empty().then_some(()),
                    None => Some(()),
                })
                .await;
            if waited.is_none() {
                return Ok(());
            }
            // Only here: under start-first a clean task waiting at READY is a restart supervisor's delayed
            // replacement, which it starts itself.
            self.store
                .update_retrying(5, |tx| {
                    if let Some(t) = tx.view().task(&new_id) {
                        if t.desired_state < TaskState::Running {
                            let mut t = t.clone();
                            t.desired_state = TaskState::Running;
                            tx.update(t);
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        let Some(state) = self
            .wait(stop, |v| match v.task(&new_id) {
                None => Some(TaskState::Remove),
                Some(t) if t.status.state >= TaskState::Running || t.desired_state > TaskState::Running => {
                    Some(t.status.state)
                }
                Some(_) => None,
            })
            .await
        else {
            return Ok(());
        };
        if state == TaskState::Running {
            self.started.lock().unwrap_or_else(|e| e.into_inner()).insert(new_id.clone(), Some(Instant::now()));
            if !stop_first {
                let old = self.store.view(|v| self.slot_now(v, key).map(|(_, s)| others(&s)).unwrap_or_default());
                if !old.is_empty() {
                    self.store
                        .update_retrying(5, |tx| {
                            shut_down(tx, &old);
                            Ok(())
                        })
                        .await?;
                }
            }
        }
        tracing::info!(task.id = %new_id, slot = key.slot, node.id = %key.node_id, state = %state, "slot updated");
        Ok(())
    }

    /// Waits until `check` finds what it looks for in the store, or `stop` (then `None`).
    async fn wait<T>(&self, stop: &CancellationToken, mut check: impl FnMut(&MemoryStore) -> Option<T>) -> Option<T> {
        let mut events = self.store.watch();
        loop {
            if let Some(v) = self.store.view(&mut check) {
                return Some(v);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = events.recv() => if let Err(RecvError::Closed) = r { return None },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Sets the tasks `ids` that are still live to desired SHUTDOWN.
fn shut_down(tx: &mut crate::manager::store::WriteTx, ids: &[String]) {
    for id in ids {
        if let Some(t) = tx.view().task(id).filter(|t| is_live(t)) {
            let mut t = t.clone();
            t.desired_state = TaskState::Shutdown;
            tx.update(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Object;
    use crate::testing::{node, service, until_view};
    use std::collections::BTreeSet;

    fn running(s: &Service, id: &str, slot: u64, node_id: &str) -> Task {
        let mut t = new_task(s, slot, node_id, TaskState::Running);
        t.id = id.into();
        t.node_id = node_id.into();
        t.status.state = TaskState::Running;
        t
    }

    fn view(objs: Vec<Object>) -> MemoryStore {
        MemoryStore::from_objects(objs)
    }

    #[test]
    fn dirty_means_a_different_task_spec_not_a_different_version() {
        let old = service("s", "web", 2);
        let a = running(&old, "a", 1, "n1");
        let b = running(&old, "b", 2, "n1");
        let mut scaled = old.clone();
        scaled.spec.mode = ServiceMode::Replicated { replicas: 5 };
        scaled.spec.update_config.parallelism = 3;
        scaled.spec_version = 2;
        let v = view(vec![scaled.clone().into(), node("n1", "h1").into(), a.clone().into(), b.clone().into()]);
        assert!(dirty_slots(&v, &scaled).is_empty(), "replicas and update settings redeploy nothing");
        assert!(!needs_update(&v, &scaled));

        let mut forced = scaled.clone();
        forced.spec.task_template.force_update += 1;
        let dirty = dirty_slots(&v, &forced);
        assert_eq!(dirty.iter().map(|s| s.key.slot).collect::<Vec<_>>(), vec![1, 2], "a force bump redeploys all");
        assert!(needs_update(&v, &forced));

        let mut image = scaled.clone();
        image.spec.task_template.container.image = "docker.io/library/nginx:latest".into();
        assert_eq!(dirty_slots(&v, &image).len(), 2);
    }

    #[test]
    fn placement_alone_leaves_tasks_whose_node_still_fits() {
        let old = service("s", "web", 1);
        let t = running(&old, "a", 1, "n1");
        let mut n1 = node("n1", "h1");
        n1.spec.annotations.labels.insert("zone".into(), "east".into());
        let mut s = old.clone();
        s.spec.task_template.placement.constraints = vec!["node.labels.zone==east".parse().unwrap()];
        s.spec_version += 1;
        let v = view(vec![s.clone().into(), n1.into(), t.clone().into()]);
        assert!(!is_task_dirty(&v, &s, &t));
        s.spec.task_template.placement.constraints = vec!["node.labels.zone==west".parse().unwrap()];
        s.spec_version += 1;
        assert!(is_task_dirty(&v, &s, &t));
    }

    #[test]
    fn half_done_slots_are_dirty_until_finished() {
        let old = service("s", "web", 3);
        let mut new = old.clone();
        new.spec.task_template.container.image = "docker.io/library/nginx:latest".into();
        new.spec_version = 2;
        // Slot 1: start-first, the new task is up beside the old one.
        let o1 = running(&old, "o1", 1, "n1");
        let n1 = running(&new, "n1t", 1, "n1");
        // Slot 2: stop-first, the old task is stopping and the new one waits at READY.
        let mut o2 = running(&old, "o2", 2, "n1");
        o2.desired_state = TaskState::Shutdown;
        let mut n2 = new_task(&new, 2, "", TaskState::Ready);
        n2.id = "n2t".into();
        // Slot 3: done.
        let mut o3 = running(&old, "o3", 3, "n1");
        o3.desired_state = TaskState::Shutdown;
        o3.status.state = TaskState::Shutdown;
        let n3 = running(&new, "n3t", 3, "n1");
        let v = view(vec![
            new.clone().into(),
            node("n1", "h1").into(),
            o1.into(),
            n1.into(),
            o2.into(),
            n2.into(),
            o3.into(),
            n3.into(),
        ]);
        let dirty = dirty_slots(&v, &new);
        assert_eq!(dirty.iter().map(|s| s.key.slot).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(dirty[1].stopping, vec!["o2".to_string()]);
        assert!(needs_update(&v, &new));
        let key = SlotKey { slot: 2, node_id: String::new() };
        let one = slot(&v, &new, &key).unwrap();
        assert_eq!((one.live.len(), one.stopping.len()), (1, 1));
        assert!(slot(&v, &new, &SlotKey { slot: 9, node_id: String::new() }).is_none());
        // Only the stop-first slot left: still work (the replacement waits for its old task to stop).
        let v2 = view(vec![
            new.clone().into(),
            node("n1", "h1").into(),
            v.task("o2").unwrap().clone().into(),
            v.task("n2t").unwrap().clone().into(),
        ]);
        assert!(needs_update(&v2, &new));
    }

    #[test]
    fn global_slots_are_nodes() {
        let mut old = service("s", "agent", 0);
        old.spec.mode = ServiceMode::Global;
        let mut new = old.clone();
        new.spec.task_template.container.env = vec!["A=1".into()];
        new.spec_version += 1;
        let v = view(vec![
            new.clone().into(),
            node("n1", "h1").into(),
            node("n2", "h2").into(),
            running(&old, "a", 0, "n1").into(),
            running(&new, "b", 0, "n2").into(),
        ]);
        let dirty = dirty_slots(&v, &new);
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].key, SlotKey { slot: 0, node_id: "n1".into() });
    }

    #[test]
    fn parallelism_and_failure_ratio() {
        assert_eq!(workers(0, 7), 7, "0 means all at once");
        assert_eq!(workers(2, 10), 2);
        assert_eq!(workers(5, 3), 3);
        assert!(failure_action_due(1, 10, 0.0), "any failure exceeds a ratio of 0");
        assert!(!failure_action_due(1, 10, 0.1), "1 in 10 is not more than 0.1");
        assert!(failure_action_due(2, 10, 0.1));
        assert!(!failure_action_due(10, 10, 1.0));
    }

    #[test]
    fn what_counts_as_a_failure() {
        let s = service("s", "web", 1);
        let mut t = running(&s, "a", 1, "n1");
        assert!(!counts_as_failure(&t));
        for state in [TaskState::Failed, TaskState::Rejected, TaskState::Complete, TaskState::Shutdown] {
            t.status.state = state;
            assert!(counts_as_failure(&t), "{state} while meant to run");
        }
        t.desired_state = TaskState::Shutdown;
        t.status.state = TaskState::Shutdown;
        assert!(!counts_as_failure(&t), "asked to stop");
    }

    #[test]
    fn failure_actions_and_completion() {
        let mut s = service("s", "web", 1);
        let prev = s.spec.clone();
        s.previous_spec = Some(prev.clone());
        s.spec.task_template.container.image = "docker.io/library/nginx:latest".into();
        s.spec_version = 2;
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: Timestamp::now(),
            completed_at: None,
            message: MSG_IN_PROGRESS.into(),
        });

        let paused = after_failure(&s, "t1").unwrap();
        let st = paused.update_status.as_ref().unwrap();
        assert_eq!(st.state, UpdateState::Paused);
        assert_eq!(st.message, "update paused due to failure or early termination of task t1");
        assert_eq!(paused.spec, s.spec);

        s.spec.update_config.failure_action = FailureAction::Continue;
        assert!(after_failure(&s, "t1").is_none());

        s.spec.update_config.failure_action = FailureAction::Rollback;
        let rolled = after_failure(&s, "t1").unwrap();
        let st = rolled.update_status.as_ref().unwrap();
        assert_eq!(st.state, UpdateState::RollbackStarted);
        assert_eq!(st.message, "update rolled back due to failure or early termination of task t1");
        assert_eq!(rolled.spec, prev);
        assert_eq!(rolled.previous_spec, None);
        assert_eq!(rolled.spec_version, 3);

        // A failing rollback pauses, whatever its config says.
        let again = after_failure(&rolled, "t2").unwrap();
        assert_eq!(again.update_status.as_ref().unwrap().state, UpdateState::RollbackPaused);
        assert_eq!(
            again.update_status.as_ref().unwrap().message,
            "rollback paused due to failure or early termination of task t2"
        );

        let done = completed(&rolled);
        let st = done.update_status.as_ref().unwrap();
        assert_eq!((st.state, st.message.as_str()), (UpdateState::RollbackCompleted, "rollback completed"));
        assert!(st.completed_at.is_some());
        let done = completed(&s);
        assert_eq!(done.update_status.as_ref().unwrap().state, UpdateState::Completed);
        assert_eq!(done.update_status.as_ref().unwrap().message, "update completed");
    }

    #[test]
    fn rollback_uses_the_rollback_config_and_paused_updates_wait() {
        let mut s = service("s", "web", 1);
        s.spec.update_config.parallelism = 2;
        s.spec.rollback_config.parallelism = 7;
        assert_eq!(config_of(&s).parallelism, 2);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: Timestamp::now(),
            completed_at: None,
            message: MSG_MANUAL_ROLLBACK.into(),
        });
        assert_eq!(config_of(&s).parallelism, 7);
        let v = view(vec![s.clone().into()]);
        assert!(needs_update(&v, &s), "a rollback in progress is resumed");
        s.update_status.as_mut().unwrap().state = UpdateState::RollbackPaused;
        assert!(!needs_update(&v, &s));
    }

    async fn set_state(store: &Store, id: &str, state: TaskState) {
        crate::testing::change_task(store, id, |t| t.status.state = state).await;
    }

    #[tokio::test]
    async fn a_new_leader_finishes_a_half_done_stop_first_slot_without_a_new_task() {
        let store = Store::in_memory();
        let mut old = service("s", "web", 2);
        old.spec.update_config.monitor = Duration::from_millis(50);
        let mut new = old.clone();
        new.spec.task_template.container.image = "docker.io/library/nginx:latest".into();
        new.spec_version = 2;
        new.previous_spec = Some(old.spec.clone());
        new.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at: Timestamp::now(),
            completed_at: None,
            message: MSG_IN_PROGRESS.into(),
        });
        // Slot 1 was finished; slot 2 was caught half-way: its old task asked to stop (still running), the
        // replacement prepared and waiting at READY.
        let done = running(&new, "done", 1, "n1");
        let mut stopping = running(&old, "old", 2, "n1");
        stopping.desired_state = TaskState::Shutdown;
        let mut waiting = new_task(&new, 2, "n1", TaskState::Ready);
        waiting.id = "new".into();
        waiting.status.state = TaskState::Ready;
        store
            .update(|tx| {
                tx.create(node("n1", "h1"));
                tx.create(new.clone());
                tx.create(done.clone());
                tx.create(stopping.clone());
                tx.create(waiting.clone());
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        // What a new leader starts: the restart supervisor's resume, and the updater.
        let shutdown = CancellationToken::new();
        super::super::restart::RestartSupervisor::new().resume_delayed(&store, &shutdown);
        let updater = tokio::spawn(UpdateSupervisor::new(store.clone()).run(shutdown.clone()));

        set_state(&store, "old", TaskState::Shutdown).await;
        until_view(&store, "the replacement to be started once the old task stopped", |v| {
            let t = v.task("new").unwrap();
            (t.desired_state == TaskState::Running).then_some(()).ok_or(format!("desired {}", t.desired_state))
        })
        .await;
        set_state(&store, "new", TaskState::Running).await;
        let st = until_view(&store, "the update to complete", |v| {
            let st = v.service("s").unwrap().update_status.clone().unwrap();
            (st.state == UpdateState::Completed).then_some(st.clone()).ok_or(format!("{st:?}"))
        })
        .await;
        assert_eq!(st.message, "update completed");
        let ids: BTreeSet<String> = store.view(|v| v.tasks().map(|t| t.id.clone()).collect());
        assert_eq!(ids, ["done", "new", "old"].into_iter().map(String::from).collect(), "no task made or replaced");
        assert_eq!(store.view(|v| v.task("done").unwrap().desired_state), TaskState::Running);
        shutdown.cancel();
        updater.await.unwrap();
    }
}
