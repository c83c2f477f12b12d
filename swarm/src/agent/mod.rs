//! The agent: runs on every node, holds a session with the dispatcher, and drives the node's executor.
//!
//! ```text
//!   Agent::run ── connect (mTLS) ─▶ Session ─▶ heartbeats every period
//!                                 ─▶ Assignments stream ─▶ Worker::apply ─▶ one task runner per task
//!        status reports ◀── runners ── batched ─▶ UpdateTaskStatus
//! ```
//! A broken session is re-opened with jittered exponential backoff on the next known manager (or on the leader
//! a refusing manager named); the worker and its tasks carry on. The dispatcher's session messages keep the list
//! of managers current. A heartbeat that gets no answer within a period ends the session, so a frozen
//! manager is left long before the dispatcher would find this node down. Status reports stay pending until the
//! manager acknowledged them (it does so once they are committed) and are sent again, on the same session after
//! a failed write, or on the next session, whichever manager it is with.

pub mod exec;
mod logs;
pub mod task;
pub mod worker;

#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;

use crate::api::dispatch::*;
use crate::transport::dispatcher::dispatcher_client::DispatcherClient;
use exec::Executor;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
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
    /// Managers to connect to (`host:port`), tried in order until a session gives the current list.
    pub managers: Vec<String>,
    /// The node's mTLS; each new session dials with the certificate current then (a renewal keeps the session).
    pub tls: crate::ca::ClusterTls,
}

/// Where the agent stands, for `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    pub connected_to: Option<String>,
    pub node_id: Option<String>,
    /// The dispatcher's id for the current session (None between sessions): unchanged as long as the session is.
    pub session_id: Option<String>,
    /// The managers the agent knows (`host:port`, the leader first when a dispatcher said so): what the node
    /// persists, so a restarted agent can reach whichever manager is up.
    pub managers: Vec<String>,
}

/// First wait before reconnecting; doubled after each failed attempt up to [`BACKOFF_MAX`], reset once a
/// session is established.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The longest a heartbeat (or the assignments request) may take before the manager is taken for frozen.
const HEARTBEAT_DEADLINE_MAX: Duration = Duration::from_secs(5);

/// How long a heartbeat may take: one period, at most 5 s (SwarmKit's RPC timeout, which is one period at the
/// default). A frozen manager is then noticed within 1 to 2 periods, inside the dispatcher's grace of three;
/// half a period was too tight for a manager busy with a big change, whose every agent then reopened its
/// session (a storm of its own on top of the load).
fn heartbeat_deadline(period: Duration) -> Duration {
    period.min(HEARTBEAT_DEADLINE_MAX)
}

/// Heartbeat ticks every `period`, the first one period from now; ticks missed while a heartbeat is out are not
/// made up in a burst.
fn heartbeat_ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// The longest a session request or a status report may take: a report waits for a store commit, so it gets
/// more room than a heartbeat.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// How long status reports gather after the first of them before they are sent: the tasks of one assignment
/// message start within milliseconds of each other. Sent at a free-running tick instead, they took two calls per
/// message (430,000 calls for a million tasks on 5,000 nodes, against 220,000 messages).
const REPORT_GATHER: Duration = Duration::from_millis(50);

/// `call`'s result, or DEADLINE_EXCEEDED naming `what` once `deadline` passed: a frozen manager answers nothing,
/// and only HTTP/2 keepalive (much later) would notice otherwise.
async fn within<T>(
    deadline: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!("the manager did not answer {what} within {deadline:?}")))
    })
}

/// Exponential backoff with ±25 % jitter, so agents that lost the same manager don't all come back in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_FIRST }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The wait before the next attempt (jittered); the one after is twice as long, up to the cap.
    fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        base.mul_f64(1.0 + (rand::random::<f64>() - 0.5) * 0.5)
    }
}

/// The managers the agent knows, and which one it tries next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Managers {
    addrs: Vec<String>,
    /// Index in `addrs` of the next to try.
    cursor: usize,
    /// A leader a manager named when refusing us: tried next, whatever the order.
    redirect: Option<String>,
}

impl Managers {
    fn new(addrs: Vec<String>) -> Self {
        Managers { addrs, ..Default::default() }
    }

    /// The address to try next.
    fn pick(&mut self) -> Option<String> {
        if let Some(a) = self.redirect.take() {
            return Some(a);
        }
        if self.addrs.is_empty() {
            return None;
        }
        Some(self.addrs[self.cursor % self.addrs.len()].clone())
    }

    /// The list a dispatcher sent. An empty list (a dispatcher that knows none) keeps what we have.
    fn replace(&mut self, addrs: Vec<String>) {
        if !addrs.is_empty() && addrs != self.addrs {
            self.addrs = addrs;
            self.cursor = 0;
        }
    }

    /// The session with `addr` failed: next, the manager after it in the list (the first if it is not listed,
    /// as a join address may not be), or `leader` if the manager named one.
    fn failed(&mut self, addr: &str, leader: Option<String>) {
        self.cursor = self.addrs.iter().position(|a| a == addr).map_or(0, |i| i + 1);
        self.redirect = leader.filter(|l| l != addr);
    }
}

/// The leader a refusal named in its metadata.
fn leader_hint(e: &AgentError) -> Option<String> {
    let AgentError::Session(status) = e else { return None };
    let v = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    (!v.is_empty()).then(|| v.to_string())
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
        let status = AgentStatus { managers: cfg.managers.clone(), ..Default::default() };
        Agent {
            cfg,
            worker: Arc::new(Mutex::new(Worker::new(executor.clone(), tx))),
            executor,
            reports: Mutex::new(rx),
            status: watch::channel(status).0,
        }
    }

    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    /// Runs sessions until `shutdown`; the task runners stop then, leaving containers for the next start.
    /// Status reports not yet acknowledged are kept across sessions and sent again on the next one.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut pending: HashMap<String, TaskStatusUpdate> = HashMap::new();
        let mut managers = Managers::new(self.cfg.managers.clone());
        loop {
            let Some(addr) = managers.pick() else {
                tracing::error!("{}", AgentError::NoManagers);
                return;
            };
            let mut established = false;
            let r = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.session(&addr, &mut pending, &mut managers, &mut established, &shutdown) => r,
            };
            self.status.send_modify(|s| {
                s.connected_to = None;
                s.node_id = None;
                s.session_id = None;
            });
            if established {
                backoff.reset();
            }
            if let Err(e) = r {
                let leader = leader_hint(&e);
                tracing::warn!(manager = %addr, error = %e, leader = ?leader, "agent session ended; reconnecting");
                managers.failed(&addr, leader);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
        self.worker.lock().await.stop();
    }

    /// Stops every task and deletes its container (leaving the swarm).
    pub async fn remove_all(&self) {
        self.worker.lock().await.remove_all().await;
    }

    async fn connect(&self, addr: &str) -> Result<DispatcherClient<Channel>, AgentError> {
        let err = |e: tonic::transport::Error| AgentError::Connect { addr: addr.into(), reason: format!("{e:?}") };
        let ep = crate::ca::endpoint(addr)
            .map_err(err)?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch = self.cfg.tls.connect(ep).await.map_err(err)?;
        Ok(DispatcherClient::new(ch))
    }

    /// Records the managers a session message lists.
    fn learn_managers(&self, managers: &mut Managers, msg: &SessionMessage) {
        managers.replace(msg.managers.clone());
        let addrs = managers.addrs.clone();
        self.status.send_if_modified(|s| {
            let changed = s.managers != addrs;
            s.managers = addrs;
            changed
        });
    }

    /// One session: register, then serve assignments, heartbeats and status reports until something breaks.
    /// `established` is set once the dispatcher accepted the session.
    async fn session(
        &self,
        addr: &str,
        pending: &mut HashMap<String, TaskStatusUpdate>,
        managers: &mut Managers,
        established: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), AgentError> {
        let mut client = self.connect(addr).await?;
        let description = self.executor.describe().await?;
        let mut session = within(CALL_DEADLINE, "the session request", client.session(SessionRequest { description }))
            .await?
            .into_inner();
        let first = within(CALL_DEADLINE, "the session's first message", session.message())
            .await?
            .ok_or_else(|| tonic::Status::unavailable("session closed before it began"))?;
        *established = true;
        let session_id = first.session_id.clone();
        tracing::info!(manager = %addr, node.id = %first.node_id, "agent session established");
        self.learn_managers(managers, &first);
        self.status.send_modify(|s| {
            s.connected_to = Some(addr.into());
            s.node_id = Some(first.node_id.clone());
            s.session_id = Some(session_id.clone());
        });
        let mut period = first.heartbeat_period;
        // The tasks this node holds: the manager's first message names those unchanged instead of resending them.
        let held = self.worker.lock().await.held();
        let request = AssignmentsRequest { session_id: session_id.clone(), held };
        let mut assignments =
            within(heartbeat_deadline(period), "the assignments request", client.assignments(request))
                .await?
                .into_inner();
        let request = crate::api::logs::LogsSessionRequest { session_id: session_id.clone() };
        let mut log_subs =
            within(heartbeat_deadline(period), "the logs request", client.logs(request)).await?.into_inner();
        // Log readers of this session: stopped when it ends, or one by one when the dispatcher closes one.
        let readers_stop = CancellationToken::new();
        let _stop_readers = readers_stop.clone().drop_guard();
        let mut readers: HashMap<String, CancellationToken> = HashMap::new();
        let mut heartbeat = heartbeat_ticks(period);
        // A heartbeat is sent off the loop, as status reports are. The manager is taken for frozen once one went
        // unanswered for its deadline and nothing else came from the manager meanwhile: a manager busy with a big
        // change may answer late while its assignments and acknowledgements still flow, and leaving it then made
        // its agents reopen their sessions all at once, on top of the load.
        let mut beat: Option<futures::future::BoxFuture<'static, Result<Duration, tonic::Status>>> = None;
        let (mut beat_sent, mut heard) = (Instant::now(), Instant::now());
        // Reports are sent REPORT_GATHER after the first of them arrived, so the tasks of one assignment, which
        // start within milliseconds of each other, are reported in one call rather than split by a running tick.
        let mut flush_at = (!pending.is_empty()).then(Instant::now);
        let mut reports = self.reports.lock().await;
        // One status call at a time, off the loop, so heartbeats and assignments go on while it waits for the
        // manager's commit. `sent` is what it carries: acknowledged reports leave `pending` unless a newer one
        // for the same task arrived meanwhile.
        let mut in_flight: Option<futures::future::BoxFuture<'static, Result<(), tonic::Status>>> = None;
        let mut sent: Vec<TaskStatusUpdate> = Vec::new();
        let (mut retry, mut retry_at) = (Backoff::new(), Instant::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = session.message() => match m? {
                    Some(msg) => {
                        heard = Instant::now();
                        self.learn_managers(managers, &msg);
                    }
                    None => return Err(tonic::Status::unavailable("dispatcher closed the session").into()),
                },
                m = assignments.message() => match m? {
                    Some(msg) => {
                        heard = Instant::now();
                        self.worker.lock().await.apply(msg).await;
                    }
                    None => return Err(tonic::Status::unavailable("assignments stream ended").into()),
                },
                m = log_subs.message() => match m? {
                    Some(sub) => {
                        heard = Instant::now();
                        readers.retain(|_, r| !r.is_cancelled());
                        if sub.close {
                            if let Some(r) = readers.remove(&sub.id) {
                                r.cancel();
                            }
                        } else {
                            let cancel = readers_stop.child_token();
                            readers.insert(sub.id.clone(), cancel.clone());
                            let (executor, worker) = (self.executor.clone(), self.worker.clone());
                            let task = logs::serve(executor, worker, client.clone(), session_id.clone(), sub, cancel);
                            tokio::spawn(task);
                        }
                    }
                    None => return Err(tonic::Status::unavailable("log subscriptions stream ended").into()),
                },
                _ = heartbeat.tick(), if beat.is_none() => {
                    let request = HeartbeatRequest { session_id: session_id.clone() };
                    let mut client = client.clone();
                    beat = Some(Box::pin(async move { Ok(client.heartbeat(request).await?.into_inner().period) }));
                    beat_sent = Instant::now();
                }
                r = async { beat.as_mut().expect("guarded").await }, if beat.is_some() => {
                    beat = None;
                    heard = Instant::now();
                    let p = r?;
                    if p != period && !p.is_zero() {
                        period = p;
                        heartbeat = heartbeat_ticks(period);
                    }
                }
                // A manager that stopped answering (frozen, partitioned) is left after one to two periods.
                _ = tokio::time::sleep_until(beat_sent.max(heard) + heartbeat_deadline(period)), if beat.is_some() => {
                    let deadline = heartbeat_deadline(period);
                    return Err(tonic::Status::deadline_exceeded(format!(
                        "the manager did not answer a heartbeat within {deadline:?}, nor send anything meanwhile"
                    ))
                    .into());
                }
                Some(u) = reports.recv() => {
                    pending.insert(u.task_id.clone(), u);
                    while let Ok(u) = reports.try_recv() {
                        pending.insert(u.task_id.clone(), u);
                    }
                    flush_at.get_or_insert_with(|| Instant::now() + REPORT_GATHER);
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or(retry_at).max(retry_at)),
                    if flush_at.is_some() && in_flight.is_none() =>
                {
                    flush_at = None;
                    if pending.is_empty() {
                        continue;
                    }
                    sent = pending.values().cloned().collect();
                    let req = UpdateTaskStatusRequest { session_id: session_id.clone(), updates: sent.clone() };
                    let mut client = client.clone();
                    in_flight = Some(Box::pin(async move {
                        within(CALL_DEADLINE, "a status report", client.update_task_status(req)).await.map(|_| ())
                    }));
                }
                r = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    match r {
                        Ok(()) => {
                            heard = Instant::now();
                            retry.reset();
                            for u in sent.drain(..) {
                                if pending.get(&u.task_id).is_some_and(|p| p.status == u.status) {
                                    pending.remove(&u.task_id);
                                }
                            }
                        }
                        // The session is gone: a new one sends the reports.
                        Err(e) if e.code() == tonic::Code::NotFound => return Err(e.into()),
                        // Not acknowledged (the write failed, or no answer): kept in `pending` and sent again
                        // later. The session stays: a lost manager shows in heartbeats and the session stream,
                        // and reconnecting every agent over a failed write would only add writes.
                        Err(e) => {
                            let wait = retry.next_wait();
                            tracing::warn!(manager = %addr, error = %e, retry_in = ?wait, "status report not acknowledged");
                            retry_at = Instant::now() + wait;
                            flush_at.get_or_insert(retry_at);
                        }
                    }
                }
            }
        }
    }
}
