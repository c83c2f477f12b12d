//! The gRPC face of the dispatcher: authenticates the caller by its mTLS certificate (any member role may call)
//! and streams sessions and assignments. A manager that does not lead answers `UNAVAILABLE` with the leader's
//! address, when it knows it, in the [`LEADER_METADATA`] entry, so the agent goes there next.

use super::assignments::AssignmentSet;
use super::files::FileSet;
use super::netstate::Networks;
use super::pacing::Pacing;
use super::{Dispatcher, DispatcherError};
use crate::api::control::Empty;
use crate::api::dispatch::*;
use crate::api::logs::{
    LogSubscription, LogsSessionRequest, PublishLogsRequest, SubscribeLogsMessage, SubscribeLogsRequest,
};
use crate::api::NodeRole;
use crate::manager::store::{NodeWatch, NodeWatchError, Store};
use crate::transport::dispatcher::dispatcher_server::Dispatcher as DispatcherRpc;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The sending end of a reply stream. Its items are boxed: tokio's channel allocates slots 32 at a time, an
/// unboxed `Result<AssignmentsMessage, Status>` takes a few hundred bytes, and an agent's three streams live as long
/// as it does, so at 5,000 nodes the empty slots alone held about 100 MiB.
struct Replies<T>(mpsc::Sender<Box<Result<T, Status>>>);

impl<T> Replies<T> {
    /// Sends one item; an error means the agent's end is gone.
    async fn send(&self, item: Result<T, Status>) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }

    /// Resolves once the agent's end is gone.
    async fn closed(&self) {
        self.0.closed().await
    }
}

/// A reply stream of at most `bound` queued items, and its sending end.
fn reply_stream<T: Send + 'static>(bound: usize) -> (Replies<T>, RpcStream<T>) {
    let (tx, rx) = mpsc::channel(bound);
    (Replies(tx), Box::pin(tokio_stream::StreamExt::map(ReceiverStream::new(rx), |item| *item)))
}

/// A node's full set of assignments and files (naming back what it `held` unchanged), the networks its state must
/// hold, and its watch from that read on.
fn full_set(
    store: &Store,
    set: &mut AssignmentSet,
    files: &mut FileSet,
    held: &HashMap<String, u64>,
) -> (AssignmentsMessage, Networks, NodeWatch) {
    let node_id = set.node_id().to_string();
    let ((msg, networks), watch) = store.view_and_watch_node(&node_id, |v| {
        let (mut msg, networks) = set.complete(v, held);
        files.fill(v, store.data_key().as_ref(), set, &mut msg);
        (msg, networks)
    });
    (msg, networks, watch)
}

/// How long store events are gathered into one incremental assignments message (at least: see [`Pacing`]).
const ASSIGNMENT_BATCH: Duration = Duration::from_millis(20);

pub struct DispatcherService {
    dispatcher: Dispatcher,
}

impl DispatcherService {
    pub fn new(dispatcher: Dispatcher) -> Self {
        DispatcherService { dispatcher }
    }

    /// `e` as a gRPC status; a refusal for not leading names the leader, if known.
    fn refuse(&self, e: DispatcherError) -> Status {
        let not_leader = matches!(e, DispatcherError::NotLeader);
        let mut status = Status::from(e);
        if not_leader {
            with_leader(&mut status, self.dispatcher.leader());
        }
        status
    }
}

/// Adds the leader's address to `status`'s metadata, if there is one and it is a valid header value.
fn with_leader(status: &mut Status, leader: Option<String>) {
    if let Some(v) = leader.and_then(|l| l.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, v);
    }
}

/// The registry credentials of the tasks `msg` sends, opened for this node (the store holds them sealed; only the
/// node running a task gets them).
fn open_pull_options(msg: &mut AssignmentsMessage, key: Option<&crate::manager::datakey::DataKey>) {
    for t in &mut msg.updated {
        crate::manager::controlapi::pullauth::open_for_node(t, key);
    }
}

impl From<DispatcherError> for Status {
    fn from(e: DispatcherError) -> Status {
        match e {
            DispatcherError::NotLeader => Status::unavailable(e.to_string()),
            DispatcherError::InvalidSession(_) => Status::not_found(e.to_string()),
            DispatcherError::UnknownNode(_) | DispatcherError::Removed(_) => Status::permission_denied(e.to_string()),
            DispatcherError::StatusWrite(_) => Status::unavailable(e.to_string()),
            DispatcherError::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

fn node_of<T>(req: &Request<T>) -> Result<String, Status> {
    let peer = crate::ca::peer_identity(req).map_err(|e| Status::unauthenticated(e.to_string()))?;
    crate::ca::authorize(&peer, &[NodeRole::Worker, NodeRole::Manager])?;
    Ok(peer.node_id)
}

#[tonic::async_trait]
impl DispatcherRpc for DispatcherService {
    type SessionStream = RpcStream<SessionMessage>;
    type AssignmentsStream = RpcStream<AssignmentsMessage>;
    type LogsStream = RpcStream<LogSubscription>;
    type SubscribeLogsStream = RpcStream<SubscribeLogsMessage>;

    async fn session(&self, req: Request<SessionRequest>) -> Result<Response<Self::SessionStream>, Status> {
        let node_id = node_of(&req)?;
        let addr = req.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let (session_id, closed) = self
            .dispatcher
            .open_session(&node_id, req.into_inner().description, addr)
            .await
            .map_err(|e| self.refuse(e))?;
        let dispatcher = self.dispatcher.clone();
        let mut managers = dispatcher.managers();
        let mut msg = SessionMessage {
            session_id,
            node_id,
            heartbeat_period: dispatcher.period_with_jitter(),
            managers: managers.borrow_and_update().clone(),
        };
        let (tx, stream) = reply_stream(1);
        tokio::spawn(async move {
            let (node_id, session_id) = (msg.node_id.clone(), msg.session_id.clone());
            if tx.send(Ok(msg.clone())).await.is_err() {
                dispatcher.session_ended(&node_id, &session_id);
                return;
            }
            loop {
                tokio::select! {
                    _ = closed.cancelled() => {
                        // Most often the dispatcher stopped because this manager lost the lead.
                        let mut status = Status::unavailable("session closed by the dispatcher");
                        with_leader(&mut status, dispatcher.leader());
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    // The agent's end went away: the stream is dropped when its connection resets.
                    _ = tx.closed() => {
                        dispatcher.session_ended(&node_id, &session_id);
                        return;
                    }
                    // The set of managers changed: tell the agent.
                    Ok(()) = managers.changed() => {
                        msg.managers = managers.borrow_and_update().clone();
                        if tx.send(Ok(msg.clone())).await.is_err() {
                            dispatcher.session_ended(&node_id, &session_id);
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let node_id = node_of(&req)?;
        let period = self.dispatcher.heartbeat(&node_id, &req.into_inner().session_id).map_err(|e| self.refuse(e))?;
        Ok(Response::new(HeartbeatResponse { period }))
    }

    async fn assignments(&self, req: Request<AssignmentsRequest>) -> Result<Response<Self::AssignmentsStream>, Status> {
        let node_id = node_of(&req)?;
        let req = req.into_inner();
        let closed = self.dispatcher.check_session(&node_id, &req.session_id)?;
        let (store, _) = self.dispatcher.store().map_err(|e| self.refuse(e))?;
        let mut set = AssignmentSet::new(&node_id);
        let mut net = self.dispatcher.network_state(&node_id);
        // Only this node's task events reach this stream (the store routes them), so a change costs the sessions
        // it concerns and no other.
        let mut files = FileSet::default();
        let held: HashMap<String, u64> = req.held.into_iter().map(|h| (h.id, h.digest)).collect();
        let (mut complete, networks, mut events) = full_set(&store, &mut set, &mut files, &held);
        drop(held);
        let (tx, stream) = reply_stream(16);
        tokio::spawn(async move {
            net.cover_networks(&networks).await;
            complete.network_state = net.complete();
            open_pull_options(&mut complete, store.data_key().as_ref());
            if tx.send(Ok(complete)).await.is_err() {
                return;
            }
            let mut pacing = Pacing::new(tokio::time::Instant::now());
            loop {
                let mut msg = AssignmentsMessage::incremental();
                let first = tokio::select! {
                    _ = closed.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("session closed by the dispatcher"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    ev = events.recv() => Some(ev),
                    // Only the network state changed (it may not differ for this node).
                    _ = net.changed() => None,
                };
                let mut resync = false;
                match first {
                    Some(Ok(ev)) => set.apply(&ev, &mut msg),
                    Some(Err(NodeWatchError::Behind)) => resync = true,
                    Some(Err(NodeWatchError::Closed)) => return,
                    None => {}
                }
                let deadline = (tokio::time::Instant::now() + ASSIGNMENT_BATCH).max(pacing.ready_at());
                while !resync {
                    match tokio::time::timeout_at(deadline, events.recv()).await {
                        Ok(Ok(ev)) => set.apply(&ev, &mut msg),
                        Ok(Err(NodeWatchError::Behind)) => resync = true,
                        Ok(Err(NodeWatchError::Closed)) => return,
                        Err(_) => break,
                    }
                }
                let key = store.data_key();
                let mut out = if resync {
                    // What the node holds now is not known here: the whole set goes.
                    let (m, networks, w) = full_set(&store, &mut set, &mut files, &HashMap::new());
                    events = w;
                    net.cover_networks(&networks).await;
                    m
                } else {
                    store.view(|v| files.fill(v, key.as_ref(), &set, &mut msg));
                    net.cover(&msg.updated).await;
                    msg
                };
                out.network_state =
                    if out.kind == AssignmentsKind::Complete { net.complete() } else { net.if_changed() };
                if out.kind == AssignmentsKind::Incremental
                    && out.updated.is_empty()
                    && out.removed.is_empty()
                    && out.network_state.is_none()
                    && out.files.is_empty()
                {
                    continue;
                }
                open_pull_options(&mut out, key.as_ref());
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
                pacing.sent(tokio::time::Instant::now());
            }
        });
        Ok(Response::new(stream))
    }

    async fn update_task_status(&self, req: Request<UpdateTaskStatusRequest>) -> Result<Response<Empty>, Status> {
        let node_id = node_of(&req)?;
        let r = req.into_inner();
        self.dispatcher.update_task_status(&node_id, &r.session_id, r.updates).await.map_err(|e| self.refuse(e))?;
        Ok(Response::new(Empty {}))
    }

    async fn logs(&self, req: Request<LogsSessionRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let node_id = node_of(&req)?;
        let closed = self.dispatcher.check_session(&node_id, &req.into_inner().session_id)?;
        let broker = self.dispatcher.log_broker().clone();
        let (reg, mut subs) = broker.register_agent(&node_id);
        let (tx, stream) = reply_stream(16);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("session closed by the dispatcher"))).await;
                        break;
                    }
                    _ = tx.closed() => break,
                    s = subs.recv() => match s {
                        Some(s) => if tx.send(Ok(*s)).await.is_err() { break },
                        // The broker stopped (this manager stopped leading).
                        None => break,
                    },
                }
            }
            broker.agent_gone(&node_id, reg).await;
        });
        Ok(Response::new(stream))
    }

    async fn publish_logs(&self, req: Request<PublishLogsRequest>) -> Result<Response<Empty>, Status> {
        let node_id = node_of(&req)?;
        let r = req.into_inner();
        self.dispatcher.check_session(&node_id, &r.session_id)?;
        self.dispatcher.log_broker().publish(&node_id, r).await.map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(Empty {}))
    }

    async fn subscribe_logs(
        &self,
        req: Request<SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        // Only managers forward their users' subscriptions.
        let peer = crate::ca::peer_identity(&req).map_err(|e| Status::unauthenticated(e.to_string()))?;
        crate::ca::authorize(&peer, &[NodeRole::Manager])?;
        let rx = self.dispatcher.log_broker().subscribe_here(req.into_inner()).map_err(|mut s| {
            if s.code() == tonic::Code::Unavailable {
                with_leader(&mut s, self.dispatcher.leader());
            }
            s
        })?;
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}
