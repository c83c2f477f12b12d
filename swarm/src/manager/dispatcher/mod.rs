//! The dispatcher: the leader's end of every agent's session (see `api::dispatch` for the exchange).
//!
//! It registers nodes when their session opens (READY), marks them DOWN after three missed heartbeat periods or
//! when their session stream broke and they did not reconnect within the session grace (1s by default; the
//! heartbeat grace while most sessions are broken at once, a manager-side failure),
//! streams each node its assignments (the full set, then deltas from the store's watch), and batches the task
//! status updates agents report into store writes, moving states forward only. A status report is answered only
//! once the write holding it committed (or failed), so the agent keeps what was not acknowledged and sends it
//! again. Session messages carry the managers' addresses (leader first), again whenever they change; a manager
//! that does not lead refuses sessions and names the leader when it knows it.

mod assignments;
mod files;
pub mod logs;
mod netstate;
mod pacing;
mod service;
mod sessions;
mod status;

pub use logs::LogBroker;
pub use service::DispatcherService;

use crate::api::dispatch::TaskStatusUpdate;
use crate::api::{NodeDescription, NodeState, Object, Timestamp};
use crate::manager::store::{MemoryStore, Store, StoreError};
use sessions::{Grace, Sessions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Missed heartbeat periods before a node is DOWN (as SwarmKit's grace multiplier).
pub const GRACE_PERIODS: u32 = 3;
/// The session grace used until the cluster's spec says otherwise.
pub const DEFAULT_SESSION_GRACE: Duration = Duration::from_secs(1);
/// The longest wait between two liveness checks, so a silent node is found down soon after its grace.
const CHECK_EVERY_MAX: Duration = Duration::from_millis(250);
/// How late a liveness check may wake before the manager is taken to have stalled (see [`Sessions::excuse`]).
const STALL_EXCUSED: Duration = Duration::from_secs(1);
/// Nodes marked DOWN in one store write.
const MAX_NODES_PER_WRITE: usize = 500;
/// How long status updates are gathered into one store write.
const STATUS_BATCH: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub heartbeat_period: Duration,
    /// Manager addresses handed to agents for fail-over when the store records none.
    pub managers: Vec<String>,
    /// The current leader's cluster address (`host:port`), None when unknown: named to agents this manager
    /// refuses because it does not lead.
    pub leader: watch::Receiver<Option<String>>,
}

/// Errors of dispatcher calls, mapped to gRPC statuses by the service.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// This manager is not the leader (or is stepping down).
    #[error("dispatcher is not running on this manager (not the leader)")]
    NotLeader,
    /// The session is unknown or expired; the agent must open a new one.
    #[error("session {0} is invalid or expired")]
    InvalidSession(String),
    /// The node is not part of this swarm.
    #[error("node {0} is not a member of this swarm")]
    UnknownNode(String),
    /// The node was removed from the swarm (`node rm`): its certificate no longer admits it.
    #[error("node {0} was removed from the swarm")]
    Removed(String),
    /// The store write holding a status report failed; the agent keeps the report and sends it again.
    #[error("writing task status: {0}")]
    StatusWrite(Arc<StoreError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One `UpdateTaskStatus` call waiting for the store write that holds its updates.
struct StatusReport {
    node_id: String,
    updates: Vec<TaskStatusUpdate>,
    written: oneshot::Sender<Result<(), DispatcherError>>,
}

/// A session that opened, waiting for the store write that records its node READY.
struct ReadyReport {
    node_id: String,
    description: NodeDescription,
    addr: String,
    written: oneshot::Sender<Result<(), DispatcherError>>,
}

/// How a node fared in a batch of READY writes.
#[derive(Clone, Copy)]
enum ReadyOutcome {
    Written,
    Removed,
    Unknown,
}

struct Active {
    store: Store,
    ready_tx: mpsc::UnboundedSender<ReadyReport>,
    /// The cluster's session grace, read when the dispatcher started.
    session_grace: Duration,
    status_tx: mpsc::UnboundedSender<StatusReport>,
    stopped: CancellationToken,
}

/// The cluster addresses of the managers recorded in `view` (nodes with a manager status), the leader first,
/// then by address, so every session message lists them in the same order.
pub fn manager_addrs(view: &MemoryStore) -> Vec<String> {
    let mut ms: Vec<(bool, &str)> = view
        .nodes()
        .filter_map(|n| n.manager_status.as_ref())
        .filter(|m| !m.addr.is_empty())
        .map(|m| (!m.leader, m.addr.as_str()))
        .collect();
    ms.sort();
    let mut out: Vec<String> = Vec::with_capacity(ms.len());
    for (_, addr) in ms {
        if !out.iter().any(|a| a == addr) {
            out.push(addr.to_string());
        }
    }
    out
}

/// The dispatcher. Cheap to clone; the gRPC service wraps one.
#[derive(Clone)]
pub struct Dispatcher {
    cfg: Arc<Mutex<DispatcherConfig>>,
    active: Arc<Mutex<Option<Active>>>,
    sessions: Arc<Mutex<Sessions>>,
    running: watch::Sender<bool>,
    /// The managers agents may fail over to, kept current from the store while the dispatcher runs; every
    /// session stream watches it.
    managers: Arc<watch::Sender<Vec<String>>>,
    /// Gathers `service logs` from the agents while this dispatcher runs.
    logs: LogBroker,
    /// The nodes' network states, kept current while this dispatcher runs.
    netstate: netstate::Hub,
}

impl Dispatcher {
    pub fn new(cfg: DispatcherConfig) -> Self {
        let logs = LogBroker::default();
        logs.set_leader(cfg.leader.clone());
        Dispatcher {
            cfg: Arc::new(Mutex::new(cfg)),
            active: Arc::default(),
            sessions: Arc::default(),
            running: watch::channel(false).0,
            managers: Arc::new(watch::channel(Vec::new()).0),
            logs,
            netstate: Default::default(),
        }
    }

    /// Uses `logs` as its log broker: the one the control API subscribes through, which outlives a manager's
    /// dispatchers.
    pub fn with_log_broker(mut self, logs: LogBroker) -> Self {
        logs.set_leader(self.config().leader);
        self.logs = logs;
        self
    }

    /// The log broker agents publish to.
    pub fn log_broker(&self) -> &LogBroker {
        &self.logs
    }

    pub fn config(&self) -> DispatcherConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The leader's address, if this manager knows it.
    pub fn leader(&self) -> Option<String> {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).leader.borrow().clone()
    }

    /// The managers agents may fail over to (those the store records, or the configured ones if it records
    /// none), as it changes.
    pub fn managers(&self) -> watch::Receiver<Vec<String>> {
        self.managers.subscribe()
    }

    /// The managers `view` records, or the configured ones if it records none.
    fn managers_in(&self, view: &MemoryStore) -> Vec<String> {
        let addrs = manager_addrs(view);
        if addrs.is_empty() {
            self.config().managers
        } else {
            addrs
        }
    }

    /// Keeps [`Dispatcher::managers`] current and closes removed nodes' sessions: both read again whenever a node
    /// or the cluster (its removed nodes) changes.
    async fn watch_nodes(&self, store: Store, stopped: CancellationToken) {
        // Subscribed before reading, so no change falls between the read and the watch.
        let mut events = store.watch_objects();
        loop {
            self.close_removed(&store);
            let addrs = store.view(|v| self.managers_in(v));
            self.managers.send_if_modified(|m| {
                let changed = *m != addrs;
                *m = addrs;
                changed
            });
            loop {
                let ev = tokio::select! {
                    _ = stopped.cancelled() => return,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(ev) if matches!(ev.object, Object::Node(_) | Object::Cluster(_)) => break,
                    Ok(_) => {}
                    // Fell behind: read again, as after a node change.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Closes the sessions of nodes that left the store or were recorded as removed (`node rm --force` on a
    /// node that is still up): a removed node's session must not outlive its removal.
    fn close_removed(&self, store: &Store) {
        let closed = store.view(|v| {
            let removed = v.cluster().map(|c| c.removed_nodes.clone()).unwrap_or_default();
            let gone = |id: &str| removed.contains(id) || v.node(id).is_none();
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).close_nodes(gone)
        });
        for node_id in closed {
            tracing::info!(node.id = %node_id, "closed the session of a removed node");
        }
    }

    pub(crate) fn store(&self) -> Result<(Store, CancellationToken), DispatcherError> {
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        a.as_ref().map(|a| (a.store.clone(), a.stopped.clone())).ok_or(DispatcherError::NotLeader)
    }

    /// What a session for `node_id` sent of its network state.
    pub(crate) fn network_state(&self, node_id: &str) -> netstate::NodeNetworkState {
        self.netstate.session(node_id)
    }

    /// A heartbeat period with ±10 % jitter, so agents don't beat in step.
    pub fn period_with_jitter(&self) -> Duration {
        let p = self.config().heartbeat_period;
        let jitter = rand::random::<f64>() * 0.2 - 0.1;
        p.mul_f64(1.0 + jitter)
    }

    /// Runs while this manager leads: serves sessions from `store` until `shutdown`.
    pub async fn run(&self, store: Store, shutdown: CancellationToken) {
        let mut session_grace = DEFAULT_SESSION_GRACE;
        if let Some(c) = store.view(|v| v.cluster().map(|c| c.spec.dispatcher.clone())) {
            self.cfg.lock().unwrap_or_else(|e| e.into_inner()).heartbeat_period = c.heartbeat_period;
            session_grace = c.session_grace;
        }
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        let stopped = shutdown.child_token();
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Active { store: store.clone(), ready_tx, session_grace, status_tx, stopped: stopped.clone() });
        // Nodes the store has up get the heartbeat grace to open a session here (a new leader, or a restarted
        // manager, never saw their sessions): those that don't are DOWN and their tasks replaced.
        let up: Vec<String> =
            store.view(|v| v.nodes().filter(|n| n.status.state != NodeState::Down).map(|n| n.id.clone()).collect());
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for id in &up {
                sessions.expect(id, now);
            }
        }
        self.managers.send_replace(store.view(|v| self.managers_in(v)));
        self.netstate.prime(&store);
        self.logs.start(store.clone());
        self.running.send_replace(true);
        tracing::info!("dispatcher started");
        tokio::join!(
            self.write_statuses(store.clone(), status_rx, stopped.clone()),
            self.write_ready(store.clone(), ready_rx, stopped.clone()),
            self.expire_sessions(store.clone(), stopped.clone()),
            self.netstate.run(store.clone(), stopped.clone()),
            self.watch_nodes(store, stopped.clone())
        );
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.logs.stop();
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).close_all();
        self.running.send_replace(false);
        tracing::info!("dispatcher stopped");
    }

    /// Opens a session for `node_id`: records its description and marks it READY.
    pub async fn open_session(
        &self,
        node_id: &str,
        description: NodeDescription,
        addr: String,
    ) -> Result<(String, CancellationToken), DispatcherError> {
        let (_, stopped) = self.store()?;
        // The session is registered before the node is written READY, so a liveness check racing with this open
        // either sees the session (and leaves the node alone) or writes DOWN before READY lands.
        let closed = stopped.child_token();
        let session_id =
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).open(node_id, closed.clone(), Instant::now());
        let (written, done) = oneshot::channel();
        let sent = {
            let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
            a.as_ref().is_some_and(|a| {
                let report = ReadyReport { node_id: node_id.into(), description, addr, written };
                a.ready_tx.send(report).is_ok()
            })
        };
        let r =
            if sent { done.await.unwrap_or(Err(DispatcherError::NotLeader)) } else { Err(DispatcherError::NotLeader) };
        if let Err(e) = r {
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).close(&session_id);
            return Err(e);
        }
        tracing::info!(node.id = %node_id, session.id = %session_id, "agent session opened");
        Ok((session_id, closed))
    }

    /// Checks that `session_id` belongs to `node_id`, returning its close token.
    pub(crate) fn check_session(&self, node_id: &str, session_id: &str) -> Result<CancellationToken, DispatcherError> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).check(node_id, session_id)
    }

    pub fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Duration, DispatcherError> {
        self.store()?;
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).heartbeat(node_id, session_id, Instant::now())?;
        Ok(self.period_with_jitter())
    }

    /// Queues `updates` for the next status write and returns once that write committed: Ok means the reports
    /// were handled (written, or ignored by the status rules), an error that the agent must send them again.
    pub async fn update_task_status(
        &self,
        node_id: &str,
        session_id: &str,
        updates: Vec<TaskStatusUpdate>,
    ) -> Result<(), DispatcherError> {
        self.check_session(node_id, session_id)?;
        let (written, done) = oneshot::channel();
        {
            let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
            let a = a.as_ref().ok_or(DispatcherError::NotLeader)?;
            a.status_tx
                .send(StatusReport { node_id: node_id.to_string(), updates, written })
                .map_err(|_| DispatcherError::NotLeader)?;
        }
        // The writer is gone (the dispatcher stopped) before it answered: nothing says the write happened.
        done.await.unwrap_or(Err(DispatcherError::NotLeader))
    }

    /// Records the nodes whose sessions opened READY, many in one store write: sessions that open together (a
    /// new leader, agents back after a stall) cost a few proposals, not one each. Answers each opener once its
    /// write committed.
    async fn write_ready(
        &self,
        store: Store,
        mut rx: mpsc::UnboundedReceiver<ReadyReport>,
        stopped: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = stopped.cancelled() => return,
                u = rx.recv() => match u { Some(u) => u, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_NODES_PER_WRITE {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let r = store
                .update_retrying(10, |tx| {
                    let removed = tx.view().cluster().map(|c| c.removed_nodes.clone()).unwrap_or_default();
                    // A node that reconnected within the batch is written once, as its last session says.
                    let last: HashMap<&str, usize> =
                        batch.iter().enumerate().map(|(i, r)| (r.node_id.as_str(), i)).collect();
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for (i, r) in batch.iter().enumerate() {
                        if removed.contains(&r.node_id) {
                            outcomes.push(ReadyOutcome::Removed);
                            continue;
                        }
                        let Some(current) = tx.view().node(&r.node_id) else {
                            outcomes.push(ReadyOutcome::Unknown);
                            continue;
                        };
                        outcomes.push(ReadyOutcome::Written);
                        if last.get(r.node_id.as_str()) != Some(&i) {
                            continue;
                        }
                        // A reconnect that changes nothing (the node stayed READY) writes nothing, unless a
                        // liveness check is writing it DOWN right now.
                        if current.status.state == NodeState::Ready
                            && current.status.message.is_empty()
                            && current.status.addr == r.addr
                            && current.description == r.description
                            && !self.sessions.lock().unwrap_or_else(|e| e.into_inner()).going_down(&r.node_id)
                        {
                            continue;
                        }
                        let mut node = current.clone();
                        node.description = r.description.clone();
                        node.status.state = NodeState::Ready;
                        node.status.message = String::new();
                        node.status.addr = r.addr.clone();
                        node.status.timestamp = Timestamp::now();
                        tx.update(node);
                    }
                    Ok(outcomes)
                })
                .await;
            match r {
                Ok(outcomes) => {
                    for (r, outcome) in batch.into_iter().zip(outcomes) {
                        let answer = match outcome {
                            ReadyOutcome::Written => Ok(()),
                            ReadyOutcome::Removed => Err(DispatcherError::Removed(r.node_id)),
                            ReadyOutcome::Unknown => Err(DispatcherError::UnknownNode(r.node_id)),
                        };
                        let _ = r.written.send(answer);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, sessions = batch.len(), "could not record nodes READY");
                    let e = Arc::new(e);
                    for r in batch {
                        let answer = match &*e {
                            StoreError::NotLeader { .. } => Err(DispatcherError::NotLeader),
                            _ => Err(DispatcherError::StatusWrite(e.clone())),
                        };
                        let _ = r.written.send(answer);
                    }
                }
            }
        }
    }

    /// Gathers status reports and writes them in batches, answering each report's caller once its batch
    /// committed or failed. Only forward moves of tasks on the reporting node are kept; a batch that loses a
    /// race is retried against the new state.
    async fn write_statuses(
        &self,
        store: Store,
        mut rx: mpsc::UnboundedReceiver<StatusReport>,
        stopped: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = stopped.cancelled() => return,
                u = rx.recv() => match u { Some(u) => u, None => return },
            };
            tokio::time::sleep(STATUS_BATCH).await;
            let mut batch = status::Batch::new();
            let mut waiting = Vec::new();
            let mut next = Some(first);
            while let Some(r) = next.take().or_else(|| rx.try_recv().ok()) {
                for u in r.updates {
                    status::gather(&mut batch, &r.node_id, u);
                }
                waiting.push(r.written);
            }
            let r = store
                .update_retrying(20, |tx| {
                    for ((node_id, task_id), reported) in &batch {
                        let Some(t) = tx.view().task(task_id) else { continue };
                        // Checked again when the entry is applied: the task may move in between.
                        if !t.takes_report(node_id, reported) {
                            if &t.node_id != node_id {
                                tracing::debug!(task.id = %task_id, node.id = %node_id,
                                    "ignoring a status report for a task not on the reporting node");
                            }
                            continue;
                        }
                        if reported.state != t.status.state {
                            tracing::info!(task.id = %t.id, node.id = %node_id, from = %t.status.state,
                                to = %reported.state, "task state changed");
                        }
                        tx.report_status(task_id, node_id, reported.clone());
                    }
                    Ok(())
                })
                .await;
            let r = r.map_err(Arc::new);
            if let Err(e) = &r {
                tracing::warn!(error = %e, reports = waiting.len(), "task status batch not written; agents will resend");
            }
            for w in waiting {
                let answer = match &r {
                    Ok(()) => Ok(()),
                    Err(e) if matches!(**e, StoreError::NotLeader { .. }) => Err(DispatcherError::NotLeader),
                    Err(e) => Err(DispatcherError::StatusWrite(e.clone())),
                };
                let _ = w.send(answer);
            }
        }
    }

    /// Records that the agent's end of a session stream went away (its process died, its connection reset).
    /// Unless the node opens a new session within the session grace, it is then marked DOWN.
    pub(crate) fn session_ended(&self, node_id: &str, session_id: &str) {
        let Ok((store, stopped)) = self.store() else { return };
        let grace = {
            let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
            a.as_ref().map_or(DEFAULT_SESSION_GRACE, |a| a.session_grace)
        };
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).end(node_id, session_id, Instant::now());
        tracing::info!(node.id = %node_id, session.id = %session_id, ?grace, "agent session stream ended");
        // Check right after the grace rather than on the next tick, so the node's tasks move as soon as allowed.
        let d = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.cancelled() => {}
                _ = tokio::time::sleep(grace + Duration::from_millis(10)) => d.check_sessions(&store, &stopped).await,
            }
        });
    }

    /// Marks nodes DOWN whose heartbeats stopped or whose session ended, and closes their sessions.
    async fn expire_sessions(&self, store: Store, stopped: CancellationToken) {
        loop {
            let every = (self.config().heartbeat_period / 4).min(CHECK_EVERY_MAX);
            let due = Instant::now() + every;
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // Woken this late, the manager did not run: the heartbeats of that time are still unread.
            let now = Instant::now();
            let stalled = now.saturating_duration_since(due);
            if stalled >= STALL_EXCUSED {
                tracing::warn!(?stalled, "the manager stalled: node deadlines move on by as much");
                self.sessions.lock().unwrap_or_else(|e| e.into_inner()).excuse(stalled, now);
            }
            self.follow_cluster_spec(&store);
            self.check_sessions(&store, &stopped).await;
        }
    }

    /// Takes up a heartbeat period or session grace changed by `swarm update`: agents get the new period in their
    /// next heartbeat answer.
    fn follow_cluster_spec(&self, store: &Store) {
        let Some(spec) = store.view(|v| v.cluster().map(|c| c.spec.dispatcher.clone())) else { return };
        let mut cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        if cfg.heartbeat_period != spec.heartbeat_period {
            tracing::info!(period = ?spec.heartbeat_period, "heartbeat period changed");
            cfg.heartbeat_period = spec.heartbeat_period;
        }
        drop(cfg);
        if let Some(a) = self.active.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            a.session_grace = spec.session_grace;
        }
    }

    /// One liveness check: expires sessions past their grace and writes their nodes DOWN. Nothing once the
    /// dispatcher is stopping: that closes every session at once, and a check caught in between found every node
    /// down and wrote it so (a manager restarted gracefully came back with its whole cluster DOWN).
    async fn check_sessions(&self, store: &Store, stopped: &CancellationToken) {
        if stopped.is_cancelled() {
            return;
        }
        let heartbeat = self.config().heartbeat_period * GRACE_PERIODS;
        let session = {
            let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
            a.as_ref().map_or(DEFAULT_SESSION_GRACE, |a| a.session_grace)
        };
        // A node a new leader has not heard from yet gets the full heartbeat grace (as SwarmKit's unknown nodes):
        // its agent is finding the new leader, with backoff, while the election settles.
        let reconnect = self.config().heartbeat_period * GRACE_PERIODS + session;
        let grace = Grace { heartbeat, session, reconnect };
        let expired = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).expire(Instant::now(), grace);
        // A stop may have closed the sessions while they were looked at (their tokens are the stop's children, so
        // it shows here once any of them shows closed).
        if stopped.is_cancelled() {
            return;
        }
        for (node_id, reason) in &expired {
            tracing::warn!(node.id = %node_id, reason = reason.message(), "node is down");
        }
        // All of them in as few writes as the proposal bound allows, not one per node: many nodes lost at
        // once (a network split, a stalled manager) must not queue a write each.
        for chunk in expired.chunks(MAX_NODES_PER_WRITE) {
            let r = store
                .update_retrying(10, |tx| {
                    for (node_id, reason) in chunk {
                        // A session opened since the expiry means the node is back: leave it READY.
                        if !self.sessions.lock().unwrap_or_else(|e| e.into_inner()).start_down(node_id) {
                            continue;
                        }
                        if let Some(n) = tx.view().node(node_id) {
                            let mut n = n.clone();
                            n.status.state = NodeState::Down;
                            n.status.message = reason.message().into();
                            n.status.timestamp = Timestamp::now();
                            tx.update(n);
                        }
                    }
                    Ok(())
                })
                .await;
            {
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                for (node_id, _) in chunk {
                    sessions.end_down(node_id);
                }
            }
            if let Err(e) = r {
                tracing::warn!(nodes = chunk.len(), error = %e, "could not mark the nodes down");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaskState, TaskStatus};
    use crate::testing::{node, task};

    /// A dispatcher serving an in-memory store holding ready nodes `n1`, `n2` and task `t1` ASSIGNED to `n1`.
    async fn running_dispatcher(heartbeat_period: Duration) -> (Dispatcher, Store, CancellationToken) {
        running_dispatcher_on(Store::in_memory(), heartbeat_period).await
    }

    /// A dispatcher as [`running_dispatcher`], on `store`.
    async fn running_dispatcher_on(store: Store, heartbeat_period: Duration) -> (Dispatcher, Store, CancellationToken) {
        store
            .update(|tx| {
                tx.create(node("n1", "host-1"));
                tx.create(node("n2", "host-2"));
                let mut t = task("t1", "s1", 1);
                t.node_id = "n1".into();
                t.status.state = TaskState::Assigned;
                tx.create(t);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let d =
            Dispatcher::new(DispatcherConfig { heartbeat_period, managers: vec![], leader: watch::channel(None).1 });
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let (d, store, shutdown) = (d.clone(), store.clone(), shutdown.clone());
            async move { d.run(store, shutdown).await }
        });
        let mut running = d.running.subscribe();
        tokio::time::timeout(Duration::from_secs(5), running.wait_for(|r| *r))
            .await
            .expect("the dispatcher to start within 5s")
            .unwrap();
        (d, store, shutdown)
    }

    fn description(hostname: &str) -> NodeDescription {
        node("x", hostname).description
    }

    #[tokio::test]
    async fn a_node_whose_heartbeats_stop_is_marked_down_while_a_beating_one_stays_ready() {
        let period = Duration::from_millis(100);
        let (d, store, shutdown) = running_dispatcher(period).await;
        let (s1, closed1) = d.open_session("n1", description("host-1"), "10.0.0.1".into()).await.unwrap();
        let (s2, _) = d.open_session("n2", description("host-2"), "10.0.0.2".into()).await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // n2 keeps beating; n1 never does after its session opened.
            d.heartbeat("n2", &s2).expect("n2's session stays valid while it beats");
            let (n1, n2) = store.view(|v| (v.node("n1").unwrap().status.clone(), v.node("n2").unwrap().status.clone()));
            if n1.state == NodeState::Down {
                assert_eq!(n1.message, "heartbeat failure");
                assert_eq!(n2.state, NodeState::Ready, "n2 kept beating: {n2:?}");
                break;
            }
            assert!(Instant::now() < deadline, "n1 not marked down 5s after its last heartbeat: {n1:?}");
            tokio::time::sleep(period / 2).await;
        }
        assert!(closed1.is_cancelled(), "n1's session streams are closed");
        assert!(matches!(d.heartbeat("n1", &s1), Err(DispatcherError::InvalidSession(_))));
        shutdown.cancel();
    }

    /// Stopping the dispatcher closes every session; a liveness check that runs then must not take that for every
    /// node going down.
    #[tokio::test]
    async fn a_stopping_dispatcher_marks_no_node_down() {
        let (d, store, shutdown) = running_dispatcher(Duration::from_secs(5)).await;
        let (_, closed1) = d.open_session("n1", description("host-1"), "10.0.0.1".into()).await.unwrap();
        d.open_session("n2", description("host-2"), "10.0.0.2".into()).await.unwrap();
        let stopped = d.active.lock().unwrap().as_ref().unwrap().stopped.clone();
        shutdown.cancel();
        assert!(closed1.is_cancelled(), "the stop closes the sessions");
        // The check a stop can catch mid-way.
        d.check_sessions(&store, &stopped).await;
        let states = store.view(|v| v.nodes().map(|n| n.status.state).collect::<Vec<_>>());
        assert_eq!(states, [NodeState::Ready, NodeState::Ready], "no node is down for the dispatcher's stop");
    }

    #[tokio::test]
    async fn a_heartbeat_period_changed_in_the_cluster_spec_reaches_the_agents() {
        let store = Store::in_memory();
        let cluster = crate::api::Cluster {
            id: "c1".into(),
            meta: Default::default(),
            spec: crate::api::ClusterSpec {
                annotations: Default::default(),
                orchestration: Default::default(),
                raft: Default::default(),
                dispatcher: crate::api::DispatcherConfig {
                    heartbeat_period: Duration::from_millis(200),
                    ..Default::default()
                },
                ca_config: Default::default(),
                encryption_config: Default::default(),
            },
            root_ca: Default::default(),
            removed_nodes: Default::default(),
            default_address_pool: Vec::new(),
            subnet_size: 0,
            unlock_key: vec![],
        };
        store.update(|tx| Ok::<_, StoreError>(tx.create(cluster))).await.unwrap();
        let (d, store, shutdown) = running_dispatcher_on(store, Duration::from_millis(200)).await;
        let (s1, _) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        store
            .update(|tx| {
                let mut c = tx.view().cluster().cloned().unwrap();
                c.spec.dispatcher.heartbeat_period = Duration::from_secs(3);
                tx.update(c);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = d.heartbeat("n1", &s1).expect("the session stays valid");
            if p >= Duration::from_millis(2500) {
                break;
            }
            assert!(Instant::now() < deadline, "still answering a period of {p:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn status_reports_land_only_from_the_tasks_node() {
        let (d, store, shutdown) = running_dispatcher(Duration::from_secs(5)).await;
        let (s1, _) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        let (s2, _) = d.open_session("n2", description("host-2"), String::new()).await.unwrap();
        let report = |state, message: &str| TaskStatusUpdate {
            task_id: "t1".into(),
            status: TaskStatus { state, message: message.into(), ..Default::default() },
        };

        // Both reports reach the same batch (one store write); t1 is not n2's to report on. Each call returns
        // once that write committed, so the store shows the result at once.
        let (r1, r2) = tokio::join!(
            d.update_task_status("n1", &s1, vec![report(TaskState::Running, "started")]),
            d.update_task_status("n2", &s2, vec![report(TaskState::Failed, "not mine")]),
        );
        r1.unwrap();
        r2.unwrap();
        let t = store.view(|v| v.task("t1").unwrap().status.clone());
        assert_eq!((t.state, t.message.as_str()), (TaskState::Running, "started"));

        // A report of an earlier state is dropped.
        d.update_task_status("n1", &s1, vec![report(TaskState::Starting, "stale")]).await.unwrap();
        let t = store.view(|v| v.task("t1").unwrap().status.clone());
        assert_eq!((t.state, t.message.as_str()), (TaskState::Running, "started"), "a task moved back");
        d.update_task_status("n1", &s1, vec![report(TaskState::Running, "still running")]).await.unwrap();
        let t = store.view(|v| v.task("t1").unwrap().status.clone());
        assert_eq!((t.state, t.message.as_str()), (TaskState::Running, "still running"));

        // A report on a session that is not the caller's is refused outright.
        let e = d.update_task_status("n2", &s1, vec![report(TaskState::Failed, "")]).await.unwrap_err();
        assert!(matches!(e, DispatcherError::InvalidSession(_)), "{e:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_status_report_whose_write_fails_is_answered_with_an_error_and_lands_when_sent_again() {
        let (store, writes) = crate::testing::flaky_store();
        let (d, store, shutdown) = running_dispatcher_on(store, Duration::from_secs(5)).await;
        let (s1, _) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        let failed = TaskStatusUpdate {
            task_id: "t1".into(),
            status: TaskStatus { state: TaskState::Failed, message: "exit 1".into(), ..Default::default() },
        };

        writes.fail_next(1);
        let e = d.update_task_status("n1", &s1, vec![failed.clone()]).await.unwrap_err();
        assert!(matches!(e, DispatcherError::StatusWrite(_)), "the failed write is reported to the caller: {e:?}");
        let t = store.view(|v| v.task("t1").unwrap().status.clone());
        assert_eq!(t.state, TaskState::Assigned, "nothing was written");

        // The agent sends the report again; it lands, and the call says so only once it has.
        d.update_task_status("n1", &s1, vec![failed]).await.expect("the resent report is written");
        let t = store.view(|v| v.task("t1").unwrap().status.clone());
        assert_eq!((t.state, t.message.as_str()), (TaskState::Failed, "exit 1"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn concurrent_status_reports_share_one_store_write() {
        let (store, writes) = crate::testing::flaky_store();
        let (d, store, shutdown) = running_dispatcher_on(store, Duration::from_secs(5)).await;
        let ids: Vec<String> = (2..=11).map(|i| format!("t{i}")).collect();
        store
            .update(|tx| {
                for id in &ids {
                    let mut t = task(id, "s1", 1);
                    t.node_id = "n1".into();
                    t.status.state = TaskState::Assigned;
                    tx.create(t);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let (s1, _) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        let before = writes.applied();
        let calls = ids.iter().map(|id| {
            let u = TaskStatusUpdate {
                task_id: id.clone(),
                status: TaskStatus { state: TaskState::Running, ..Default::default() },
            };
            d.update_task_status("n1", &s1, vec![u])
        });
        for r in futures::future::join_all(calls).await {
            r.expect("every report acknowledged");
        }
        let running =
            store.view(|v| ids.iter().filter(|id| v.task(id).unwrap().status.state == TaskState::Running).count());
        assert_eq!(running, ids.len(), "every acknowledged report is in the store");
        assert_eq!(writes.applied() - before, 1, "10 concurrent reports, one store write");
        shutdown.cancel();
    }

    #[test]
    fn managers_are_listed_leader_first_then_by_address() {
        let manager = |id: &str, addr: &str, leader: bool| {
            let mut n = node(id, id);
            n.manager_status = Some(crate::api::ManagerStatus {
                raft_id: 1,
                addr: addr.into(),
                leader,
                reachability: crate::api::Reachability::Reachable,
            });
            n
        };
        let nodes = vec![
            manager("m1", "10.0.0.3:2377", false),
            manager("m2", "10.0.0.9:2377", true),
            manager("m3", "10.0.0.1:2377", false),
            node("w1", "worker"),
        ];
        let view = MemoryStore::from_objects(nodes.into_iter().map(Object::Node));
        assert_eq!(manager_addrs(&view), ["10.0.0.9:2377", "10.0.0.1:2377", "10.0.0.3:2377"]);
    }

    #[tokio::test]
    async fn a_session_whose_stream_ended_downs_its_node_after_the_grace_unless_it_reconnects() {
        // A long heartbeat period, so only the session grace (1s default) can mark a node down here.
        let (d, store, shutdown) = running_dispatcher(Duration::from_secs(60)).await;
        let (s1, closed1) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        let (s2, _) = d.open_session("n2", description("host-2"), String::new()).await.unwrap();
        let start = Instant::now();
        d.session_ended("n1", &s1);
        d.session_ended("n2", &s2);
        // n2 reconnects at once (a reset connection, not a dead daemon).
        d.open_session("n2", description("host-2"), String::new()).await.unwrap();
        let deadline = start + Duration::from_secs(10);
        loop {
            let n1 = store.view(|v| v.node("n1").unwrap().status.clone());
            if n1.state == NodeState::Down {
                assert_eq!(n1.message, "node's session ended");
                break;
            }
            assert!(Instant::now() < deadline, "n1 not down 10s after its session ended: {n1:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("n1 down {:?} after its session ended", start.elapsed());
        assert!(start.elapsed() >= DEFAULT_SESSION_GRACE, "n1 was marked down before its grace ran out");
        assert!(closed1.is_cancelled(), "n1's session streams are closed");
        let n2 = store.view(|v| v.node("n2").unwrap().status.clone());
        assert_eq!(n2.state, NodeState::Ready, "n2 reconnected within the grace: {n2:?}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_removed_node_loses_its_session_and_cannot_open_another() {
        let (d, store, shutdown) = running_dispatcher(Duration::from_secs(60)).await;
        let cluster = crate::api::Cluster {
            id: "c1".into(),
            meta: Default::default(),
            spec: crate::api::ClusterSpec {
                annotations: Default::default(),
                orchestration: Default::default(),
                raft: Default::default(),
                dispatcher: Default::default(),
                ca_config: Default::default(),
                encryption_config: Default::default(),
            },
            root_ca: Default::default(),
            removed_nodes: Default::default(),
            default_address_pool: Vec::new(),
            subnet_size: 0,
            unlock_key: vec![],
        };
        store
            .update(|tx| {
                tx.create(cluster);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let (s1, closed1) = d.open_session("n1", description("host-1"), String::new()).await.unwrap();
        let (s2, closed2) = d.open_session("n2", description("host-2"), String::new()).await.unwrap();

        // `node rm --force`, as the control API writes it: the node deleted and its id recorded as removed.
        store
            .update(|tx| {
                let mut c = tx.view().cluster().cloned().unwrap();
                c.removed_nodes.insert("n1".into());
                tx.update(c);
                let version = tx.view().node("n1").unwrap().meta.version;
                tx.delete(crate::api::ObjectKind::Node, "n1", version);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), closed1.cancelled())
            .await
            .expect("the removed node's session closed within 5s");
        assert!(matches!(d.heartbeat("n1", &s1), Err(DispatcherError::InvalidSession(_))));
        let e = d.open_session("n1", description("host-1"), String::new()).await.unwrap_err();
        assert!(matches!(e, DispatcherError::Removed(_)), "{e:?}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);
        assert!(!d.sessions.lock().unwrap().has_node("n1"), "the refused session was kept");

        // Recorded as removed while its Node is still there (a write racing the removal): refused all the same.
        store
            .update(|tx| {
                let mut c = tx.view().cluster().cloned().unwrap();
                c.removed_nodes.insert("n2".into());
                tx.update(c);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), closed2.cancelled())
            .await
            .expect("n2's session closed within 5s of its id being recorded as removed");
        assert!(matches!(d.heartbeat("n2", &s2), Err(DispatcherError::InvalidSession(_))));
        let e = d.open_session("n2", description("host-2"), String::new()).await.unwrap_err();
        assert!(matches!(e, DispatcherError::Removed(_)), "{e:?}");
        let n2 = store.view(|v| v.node("n2").unwrap().status.state);
        assert_eq!(n2, NodeState::Ready, "a refused session writes nothing");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_session_for_a_node_not_in_the_store_is_refused_and_not_kept() {
        let (d, _store, shutdown) = running_dispatcher(Duration::from_secs(5)).await;
        let e = d.open_session("nope", description("host-x"), String::new()).await.unwrap_err();
        assert!(matches!(e, DispatcherError::UnknownNode(_)), "{e:?}");
        assert!(!d.sessions.lock().unwrap().has_node("nope"), "the refused session was kept");
        shutdown.cancel();
    }
}
