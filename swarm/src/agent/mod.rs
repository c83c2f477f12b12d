//! The agent: runs on every node, holds a session with the dispatcher, and drives the node's executor.
//!
//! ```text
//!   Agent::run ── connect (mTLS) ─▶ Session ─▶ heartbeats every period
//!                                 ─▶ Assignments stream ─▶ Worker::apply ─▶ one task runner per task
//!        status reports ◀── runners ── batched ─▶ UpdateTaskStatus
//! ```
//! A broken session is re-opened with backoff, trying each known manager; the worker and its tasks carry on.

pub mod exec;
pub mod task;
pub mod worker;

#[cfg(test)]
mod tests;

use crate::api::dispatch::*;
use crate::transport::dispatcher::dispatcher_client::DispatcherClient;
use exec::Executor;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use worker::Worker;

/// Errors of one session attempt (the agent retries them all).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No manager address is known.
    #[error("no manager address known")]
    NoManagers,
    /// Connecting to the manager failed.
    #[error("connecting to manager {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The manager refused or broke the session.
    #[error("session: {0}")]
    Session(#[from] tonic::Status),
    /// The executor cannot describe the node.
    #[error("executor: {0}")]
    Executor(#[from] exec::ExecError),
}

#[derive(Clone)]
pub struct AgentConfig {
    /// Managers to connect to (`host:port`), tried in order.
    pub managers: Vec<String>,
    pub tls: ClientTlsConfig,
}

/// Where the agent stands, for `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    pub connected_to: Option<String>,
    pub node_id: Option<String>,
}

pub struct Agent<E: Executor> {
    cfg: AgentConfig,
    executor: Arc<E>,
    worker: Arc<Mutex<Worker<E>>>,
    reports: Mutex<mpsc::UnboundedReceiver<TaskStatusUpdate>>,
    status: watch::Sender<AgentStatus>,
}

impl<E: Executor> Agent<E> {
    pub fn new(cfg: AgentConfig, executor: Arc<E>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Agent {
            cfg,
            worker: Arc::new(Mutex::new(Worker::new(executor.clone(), tx))),
            executor,
            reports: Mutex::new(rx),
            status: watch::channel(AgentStatus::default()).0,
        }
    }

    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    /// Runs sessions until `shutdown`; the task runners stop then, leaving containers for the next start.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut pending: HashMap<String, TaskStatusUpdate> = HashMap::new();
        let mut next = 0usize;
        loop {
            if self.cfg.managers.is_empty() {
                tracing::error!("{}", AgentError::NoManagers);
                return;
            }
            let addr = self.cfg.managers[next % self.cfg.managers.len()].clone();
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.session(&addr, &mut pending, &shutdown) => r,
            };
            self.status.send_replace(AgentStatus::default());
            match r {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(manager = %addr, error = %e, "agent session ended; reconnecting");
                    next += 1;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.worker.lock().await.stop();
    }

    /// Stops every task and deletes its container (leaving the swarm).
    pub async fn remove_all(&self) {
        self.worker.lock().await.remove_all().await;
    }

    async fn connect(&self, addr: &str) -> Result<DispatcherClient<Channel>, AgentError> {
        let err = |e: tonic::transport::Error| AgentError::Connect { addr: addr.into(), reason: format!("{e:?}") };
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(err)?
            .tls_config(self.cfg.tls.clone())
            .map_err(err)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch = ep.connect().await.map_err(err)?;
        Ok(DispatcherClient::new(ch))
    }

    /// One session: register, then serve assignments, heartbeats and status reports until something breaks.
    async fn session(
        &self,
        addr: &str,
        pending: &mut HashMap<String, TaskStatusUpdate>,
        shutdown: &CancellationToken,
    ) -> Result<(), AgentError> {
        let mut client = self.connect(addr).await?;
        let description = self.executor.describe().await?;
        let mut session = client.session(SessionRequest { description }).await?.into_inner();
        let first =
            session.message().await?.ok_or_else(|| tonic::Status::unavailable("session closed before it began"))?;
        let session_id = first.session_id.clone();
        tracing::info!(manager = %addr, node.id = %first.node_id, "agent session established");
        self.status.send_replace(AgentStatus { connected_to: Some(addr.into()), node_id: Some(first.node_id.clone()) });
        let mut assignments =
            client.assignments(AssignmentsRequest { session_id: session_id.clone() }).await?.into_inner();
        let mut period = first.heartbeat_period;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut flush = tokio::time::interval(Duration::from_millis(50));
        let mut reports = self.reports.lock().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = session.message() => {
                    m?;
                    return Err(tonic::Status::unavailable("dispatcher closed the session").into());
                }
                m = assignments.message() => match m? {
                    Some(msg) => self.worker.lock().await.apply(msg).await,
                    None => return Err(tonic::Status::unavailable("assignments stream ended").into()),
                },
                _ = heartbeat.tick() => {
                    let r = client.heartbeat(HeartbeatRequest { session_id: session_id.clone() }).await?;
                    let p = r.into_inner().period;
                    if p != period && !p.is_zero() {
                        period = p;
                        heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    }
                }
                Some(u) = reports.recv() => {
                    pending.insert(u.task_id.clone(), u);
                    while let Ok(u) = reports.try_recv() {
                        pending.insert(u.task_id.clone(), u);
                    }
                }
                _ = flush.tick(), if !pending.is_empty() => {
                    let updates: Vec<TaskStatusUpdate> = pending.values().cloned().collect();
                    client.update_task_status(UpdateTaskStatusRequest { session_id: session_id.clone(), updates }).await?;
                    pending.clear();
                }
            }
        }
    }
}
