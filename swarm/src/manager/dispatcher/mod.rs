//! The dispatcher: the leader's end of every agent's session (see `api::dispatch` for the exchange).
//!
//! It registers nodes when their session opens (READY), marks them DOWN after three missed heartbeat periods,
//! streams each node its assignments (the full set, then deltas from the store's watch), and batches the task
//! status updates agents report into store writes, moving states forward only.

mod assignments;
mod service;

pub use service::DispatcherService;

use crate::api::dispatch::TaskStatusUpdate;
use crate::api::{new_id, NodeDescription, NodeState, Timestamp};
use crate::manager::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Missed heartbeat periods before a node is DOWN (as SwarmKit's grace multiplier).
pub const GRACE_PERIODS: u32 = 3;
/// How long status updates are gathered into one store write.
const STATUS_BATCH: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub heartbeat_period: Duration,
    /// Manager addresses handed to agents for fail-over.
    pub managers: Vec<String>,
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) struct Session {
    pub node_id: String,
    pub last_seen: Instant,
    pub closed: CancellationToken,
}

struct Active {
    store: Store,
    status_tx: mpsc::UnboundedSender<(String, TaskStatusUpdate)>,
    stopped: CancellationToken,
}

/// The dispatcher. Cheap to clone; the gRPC service wraps one.
#[derive(Clone)]
pub struct Dispatcher {
    cfg: Arc<Mutex<DispatcherConfig>>,
    active: Arc<Mutex<Option<Active>>>,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    running: watch::Sender<bool>,
}

impl Dispatcher {
    pub fn new(cfg: DispatcherConfig) -> Self {
        Dispatcher {
            cfg: Arc::new(Mutex::new(cfg)),
            active: Arc::default(),
            sessions: Arc::default(),
            running: watch::channel(false).0,
        }
    }

    pub fn config(&self) -> DispatcherConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn store(&self) -> Result<(Store, CancellationToken), DispatcherError> {
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        a.as_ref().map(|a| (a.store.clone(), a.stopped.clone())).ok_or(DispatcherError::NotLeader)
    }

    /// A heartbeat period with ±10 % jitter, so agents don't beat in step.
    pub fn period_with_jitter(&self) -> Duration {
        let p = self.config().heartbeat_period;
        let jitter = rand::random::<f64>() * 0.2 - 0.1;
        p.mul_f64(1.0 + jitter)
    }

    /// Runs while this manager leads: serves sessions from `store` until `shutdown`.
    pub async fn run(&self, store: Store, shutdown: CancellationToken) {
        if let Some(period) = store.view(|v| v.cluster().map(|c| c.spec.dispatcher.heartbeat_period)) {
            self.cfg.lock().unwrap_or_else(|e| e.into_inner()).heartbeat_period = period;
        }
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let stopped = shutdown.child_token();
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Active { store: store.clone(), status_tx, stopped: stopped.clone() });
        self.running.send_replace(true);
        tracing::info!("dispatcher started");
        tokio::join!(
            self.write_statuses(store.clone(), status_rx, stopped.clone()),
            self.expire_sessions(store, stopped.clone())
        );
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for (_, s) in self.sessions.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            s.closed.cancel();
        }
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
        let (store, stopped) = self.store()?;
        store
            .update(|tx| {
                let mut node =
                    tx.view().node(node_id).cloned().ok_or_else(|| DispatcherError::UnknownNode(node_id.into()))?;
                node.description = description;
                node.status.state = NodeState::Ready;
                node.status.message = String::new();
                node.status.addr = addr;
                node.status.timestamp = Timestamp::now();
                tx.update(node);
                Ok::<_, DispatcherError>(())
            })
            .await?;
        let session_id = new_id();
        let closed = stopped.child_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // One session per node: a new one replaces the old.
        sessions.retain(|_, s| {
            let same = s.node_id == node_id;
            if same {
                s.closed.cancel();
            }
            !same
        });
        sessions.insert(
            session_id.clone(),
            Session { node_id: node_id.into(), last_seen: Instant::now(), closed: closed.clone() },
        );
        tracing::info!(node.id = %node_id, session.id = %session_id, "agent session opened");
        Ok((session_id, closed))
    }

    /// Checks that `session_id` belongs to `node_id`, returning its close token.
    pub(crate) fn check_session(&self, node_id: &str, session_id: &str) -> Result<CancellationToken, DispatcherError> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(session_id) {
            Some(s) if s.node_id == node_id && !s.closed.is_cancelled() => Ok(s.closed.clone()),
            _ => Err(DispatcherError::InvalidSession(session_id.into())),
        }
    }

    pub fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Duration, DispatcherError> {
        self.store()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(session_id) {
            Some(s) if s.node_id == node_id && !s.closed.is_cancelled() => {
                s.last_seen = Instant::now();
                Ok(self.period_with_jitter())
            }
            _ => Err(DispatcherError::InvalidSession(session_id.into())),
        }
    }

    pub fn update_task_status(
        &self,
        node_id: &str,
        session_id: &str,
        updates: Vec<TaskStatusUpdate>,
    ) -> Result<(), DispatcherError> {
        self.check_session(node_id, session_id)?;
        let a = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let a = a.as_ref().ok_or(DispatcherError::NotLeader)?;
        for u in updates {
            let _ = a.status_tx.send((node_id.to_string(), u));
        }
        Ok(())
    }

    /// Gathers status updates and writes them in batches. Only forward moves of tasks on the reporting node are
    /// kept; a batch that loses a race is retried against the new state.
    async fn write_statuses(
        &self,
        store: Store,
        mut rx: mpsc::UnboundedReceiver<(String, TaskStatusUpdate)>,
        stopped: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = stopped.cancelled() => return,
                u = rx.recv() => match u { Some(u) => u, None => return },
            };
            tokio::time::sleep(STATUS_BATCH).await;
            let mut batch: HashMap<String, (String, TaskStatusUpdate)> = HashMap::new();
            batch.insert(first.1.task_id.clone(), first);
            while let Ok(u) = rx.try_recv() {
                // The latest report of a task wins within a batch (states only grow).
                batch.insert(u.1.task_id.clone(), u);
            }
            for attempt in 0..20 {
                let r = store
                    .update(|tx| {
                        for (node_id, u) in batch.values() {
                            let Some(t) = tx.view().task(&u.task_id) else { continue };
                            if &t.node_id != node_id || u.status.state < t.status.state {
                                continue;
                            }
                            if u.status == t.status {
                                continue;
                            }
                            if u.status.state != t.status.state {
                                tracing::info!(task.id = %t.id, node.id = %node_id, from = %t.status.state,
                                    to = %u.status.state, "task state changed");
                            }
                            let mut t = t.clone();
                            t.status = u.status.clone();
                            tx.update(t);
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await;
                match r {
                    Ok(()) => break,
                    Err(e) if e.is_out_of_sequence() && attempt < 19 => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping task status batch");
                        break;
                    }
                }
            }
        }
    }

    /// Marks nodes DOWN whose heartbeats stopped, and closes their sessions.
    async fn expire_sessions(&self, store: Store, stopped: CancellationToken) {
        loop {
            let period = self.config().heartbeat_period;
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = tokio::time::sleep(period / 2) => {}
            }
            let expired: Vec<String> = {
                let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                let deadline = period * GRACE_PERIODS;
                let dead: Vec<String> = sessions
                    .iter()
                    .filter(|(_, s)| s.last_seen.elapsed() > deadline || s.closed.is_cancelled())
                    .map(|(id, _)| id.clone())
                    .collect();
                dead.into_iter()
                    .filter_map(|id| sessions.remove(&id))
                    .map(|s| {
                        s.closed.cancel();
                        s.node_id
                    })
                    .collect()
            };
            for node_id in expired {
                let still_connected =
                    self.sessions.lock().unwrap_or_else(|e| e.into_inner()).values().any(|s| s.node_id == node_id);
                if still_connected {
                    continue;
                }
                tracing::warn!(node.id = %node_id, "heartbeat failure: node is down");
                let _ = store
                    .update(|tx| {
                        if let Some(n) = tx.view().node(&node_id) {
                            let mut n = n.clone();
                            n.status.state = NodeState::Down;
                            n.status.message = "heartbeat failure".into();
                            n.status.timestamp = Timestamp::now();
                            tx.update(n);
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await;
            }
        }
    }
}
