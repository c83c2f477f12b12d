//! The log broker: gathers `service logs` from the agents that hold the selected tasks.
//!
//! A subscription (from `Control.SubscribeLogs`) is pushed to each chosen agent over its `Logs` stream; the agents
//! answer with `PublishLogs` batches, closing when they sent all they had (never when following). Without
//! `follow`, each node's lines come in time order and the broker merges the nodes' lines by time ([`Merge`]),
//! holding back a node that runs ahead (bounded, by making its `PublishLogs` call wait); with `follow`, lines go
//! out as they come. A node whose agent is not connected, or goes away before it closed, is named in a warning
//! and the stream goes on with the others. It gathers on the leader only, while its dispatcher runs; a follower
//! manager forwards the subscription to the leader's `Dispatcher.SubscribeLogs` (managers only) and passes the
//! stream on.

use crate::api::logs::*;
use crate::api::new_id;
use crate::manager::controlapi::log_selection;
use crate::manager::store::Store;
use crate::transport::dispatcher::dispatcher_client::DispatcherClient;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The most lines the broker holds for one node that runs ahead of the others (non-following merge); its next
/// `PublishLogs` call waits until the merge caught up.
const MAX_QUEUED_LINES: usize = 10_000;
/// Messages buffered towards one subscriber.
const SUBSCRIBER_BUFFER: usize = 16;

/// Errors of log subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogsError {
    /// This manager's dispatcher is not running: only the leader gathers logs.
    #[error("{}", not_leader_message(.0.as_deref()))]
    NotLeader(Option<String>),
    /// The subscription ended (its subscriber left, or it completed); the agent stops publishing it.
    #[error("log subscription {0} is not active")]
    UnknownSubscription(String),
    /// A follower could not reach the leader to forward a subscription.
    #[error("cannot reach the leader ({leader}) to gather logs: {reason}")]
    Forward { leader: String, reason: String },
}

impl From<LogsError> for Status {
    fn from(e: LogsError) -> Status {
        match e {
            LogsError::NotLeader(_) | LogsError::Forward { .. } => Status::unavailable(e.to_string()),
            LogsError::UnknownSubscription(_) => Status::not_found(e.to_string()),
        }
    }
}

/// `--since` as the fixed-width RFC 3339 UTC form log lines carry, so the two compare as text.
fn normalize_since(since: &str) -> Result<String, Status> {
    let t = humantime::parse_rfc3339_weak(since)
        .map_err(|e| Status::invalid_argument(format!("invalid since time {since:?}: {e}")))?;
    Ok(humantime::format_rfc3339_nanos(t).to_string())
}

fn not_leader_message(leader: Option<&str>) -> String {
    match leader {
        Some(l) => format!(
            "logs are gathered by the swarm's leader and this manager does not lead: run the command on the leader \
             ({l})"
        ),
        None => "logs are gathered by the swarm's leader and this manager does not lead (no leader is known now)"
            .to_string(),
    }
}

/// What a subscription reads: resolved by the control API from the store.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Set when a service was named: while following, its tasks that start later are read too.
    pub service_id: Option<String>,
    /// The selected tasks and the node each is on (tasks not placed yet have no logs and are left out).
    pub tasks: Vec<(String, String)>,
}

/// Lines of several nodes merged by time. Each node's lines arrive in time order; a line goes out once every
/// node still open has a line queued (or closed), so nothing older can come later.
#[derive(Debug, Default)]
pub struct Merge {
    queues: BTreeMap<String, VecDeque<LogMessage>>,
    open: BTreeSet<String>,
}

impl Merge {
    /// Expects lines from `node` until it is closed.
    pub fn open(&mut self, node: &str) {
        self.open.insert(node.to_string());
        self.queues.entry(node.to_string()).or_default();
    }

    pub fn push(&mut self, node: &str, lines: impl IntoIterator<Item = LogMessage>) {
        self.queues.entry(node.to_string()).or_default().extend(lines);
    }

    /// `node` sent everything it has.
    pub fn close(&mut self, node: &str) {
        self.open.remove(node);
    }

    pub fn queued(&self, node: &str) -> usize {
        self.queues.get(node).map_or(0, VecDeque::len)
    }

    /// Every line that can go out now, oldest first (ties: by node, in arrival order).
    pub fn pop_ready(&mut self) -> Vec<LogMessage> {
        let mut out = Vec::new();
        loop {
            if self.open.iter().any(|n| self.queues.get(n).is_none_or(VecDeque::is_empty)) {
                return out;
            }
            let next = self
                .queues
                .iter()
                .filter_map(|(n, q)| q.front().map(|l| (l.time.as_str(), n)))
                .min()
                .map(|(_, n)| n.clone());
            let Some(n) = next else { return out };
            out.extend(self.queues.get_mut(&n).and_then(VecDeque::pop_front));
        }
    }

    /// Every node closed and every line went out.
    pub fn is_done(&self) -> bool {
        self.open.is_empty() && self.queues.values().all(VecDeque::is_empty)
    }
}

/// Groups `messages` into subscriber messages of at most [`MAX_LOG_BATCH_BYTES`] of lines each.
fn chunk(messages: Vec<LogMessage>) -> Vec<SubscribeLogsMessage> {
    let mut out = Vec::new();
    let mut cur = SubscribeLogsMessage::default();
    let mut bytes = 0;
    for m in messages {
        let size = m.line.len() + m.context.len() + 128;
        if bytes + size > MAX_LOG_BATCH_BYTES && !cur.messages.is_empty() {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.messages.push(m);
    }
    if !cur.messages.is_empty() {
        out.push(cur);
    }
    out
}

struct SubState {
    /// Nodes asked that have not closed yet.
    pending: BTreeSet<String>,
    /// Non-following only.
    merge: Merge,
    /// `web.1.<task id>@<hostname>` and the node of each task seen.
    contexts: HashMap<String, (String, String)>,
}

struct Sub {
    follow: bool,
    /// Every node the subscription was pushed to (told when it ends).
    nodes: BTreeSet<String>,
    /// The nodes holding selected tasks: only their loss is worth a warning.
    holding: BTreeSet<String>,
    out: mpsc::Sender<SubscribeLogsMessage>,
    state: tokio::sync::Mutex<SubState>,
    /// Woken when the merge let lines out (a held-back node may go on) or the subscription ended.
    drained: Notify,
    ended: CancellationToken,
}

#[derive(Default)]
struct State {
    /// While this manager's dispatcher runs.
    store: Option<Store>,
    /// Agents with an open `Logs` stream: (registration number, where their subscriptions go). Boxed: a channel
    /// allocates its first block of 32 slots when made, and every agent has one for as long as it lives.
    agents: HashMap<String, (u64, mpsc::UnboundedSender<Box<LogSubscription>>)>,
    next_registration: u64,
    subs: HashMap<String, Arc<Sub>>,
}

/// The broker. Cheap to clone; shared by the dispatcher (agents' side) and the control API (subscribers' side).
#[derive(Clone, Default)]
pub struct LogBroker {
    state: Arc<Mutex<State>>,
    leader: Arc<Mutex<Option<watch::Receiver<Option<String>>>>>,
    /// The manager's client TLS, with which a follower forwards subscriptions to the leader.
    forward_tls: Arc<Mutex<Option<crate::ca::ClusterTls>>>,
}

impl LogBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the leader is, for the refusal of a manager that does not lead.
    pub(crate) fn set_leader(&self, leader: watch::Receiver<Option<String>>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(leader);
    }

    fn leader_addr(&self) -> Option<String> {
        let l = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        l.as_ref().and_then(|l| l.borrow().clone())
    }

    fn not_leader(&self) -> LogsError {
        LogsError::NotLeader(self.leader_addr())
    }

    /// Lets this manager, while it does not lead, forward subscriptions to the leader with `tls`.
    pub fn set_forwarding(&self, tls: crate::ca::ClusterTls) {
        *self.forward_tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(tls);
    }

    /// `Control.SubscribeLogs`: gathered here on the leader, forwarded to the leader by a follower.
    pub async fn subscribe_request(
        &self,
        req: SubscribeLogsRequest,
    ) -> Result<mpsc::Receiver<SubscribeLogsMessage>, Status> {
        match self.subscribe_here(req.clone()) {
            Err(e) if e.code() == tonic::Code::Unavailable => {}
            other => return other,
        }
        let tls = self.forward_tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (Some(tls), Some(leader)) = (tls, self.leader_addr()) else { return Err(self.not_leader().into()) };
        self.forward(&leader, tls, req).await
    }

    /// Subscribes on this manager, which must be leading (`Dispatcher.SubscribeLogs`, a follower's forward).
    pub(crate) fn subscribe_here(
        &self,
        mut req: SubscribeLogsRequest,
    ) -> Result<mpsc::Receiver<SubscribeLogsMessage>, Status> {
        if let Some(since) = &req.options.since {
            req.options.since = Some(normalize_since(since)?);
        }
        let store = self.lock().store.clone().ok_or_else(|| self.not_leader())?;
        let selection = store.view(|v| log_selection(v, &req.selector))?;
        Ok(self.subscribe(selection, req.options)?)
    }

    /// Asks the leader at `leader` for the subscription and passes its stream on.
    async fn forward(
        &self,
        leader: &str,
        tls: crate::ca::ClusterTls,
        req: SubscribeLogsRequest,
    ) -> Result<mpsc::Receiver<SubscribeLogsMessage>, Status> {
        let err = |reason: String| LogsError::Forward { leader: leader.to_string(), reason };
        let ep = crate::ca::endpoint(leader).map_err(|e| err(e.to_string()))?.connect_timeout(Duration::from_secs(5));
        let ch = tls.connect(ep).await.map_err(|e| err(e.to_string()))?;
        tracing::debug!(leader, "forwarding a log subscription to the leader");
        // The leader's own refusal (no such service, bad since) reaches the caller as it is.
        let mut stream = DispatcherClient::new(ch).subscribe_logs(req).await?.into_inner();
        let (out, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = out.closed() => return,
                    m = stream.message() => m,
                };
                match m {
                    Ok(Some(m)) => {
                        if out.send(m).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let warning = format!("the leader's log stream broke: {}", e.message());
                        let _ = out.send(SubscribeLogsMessage { messages: vec![], warnings: vec![warning] }).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The dispatcher started: subscriptions are served from `store`.
    pub(crate) fn start(&self, store: Store) {
        self.lock().store = Some(store);
    }

    /// The dispatcher stopped: every subscription ends (its stream closes) and agents are forgotten.
    pub(crate) fn stop(&self) {
        let subs: Vec<Arc<Sub>> = {
            let mut s = self.lock();
            s.store = None;
            s.agents.clear();
            s.subs.drain().map(|(_, v)| v).collect()
        };
        for sub in subs {
            let _ = sub.out.try_send(SubscribeLogsMessage {
                messages: vec![],
                warnings: vec!["the manager gathering the logs stopped leading; logs may be incomplete".into()],
            });
            sub.ended.cancel();
            sub.drained.notify_waiters();
        }
    }

    /// An agent opened its `Logs` stream: subscriptions for `node_id` go to the receiver from now on. Returns the
    /// registration, for [`LogBroker::agent_gone`].
    pub(crate) fn register_agent(&self, node_id: &str) -> (u64, mpsc::UnboundedReceiver<Box<LogSubscription>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.lock();
        s.next_registration += 1;
        let reg = s.next_registration;
        s.agents.insert(node_id.to_string(), (reg, tx));
        (reg, rx)
    }

    /// The agent's `Logs` stream (registration `reg`) ended: subscriptions still waiting on it go on without it,
    /// with a warning.
    pub(crate) async fn agent_gone(&self, node_id: &str, reg: u64) {
        let subs: Vec<(String, Arc<Sub>)> = {
            let mut s = self.lock();
            if s.agents.get(node_id).is_some_and(|(r, _)| *r == reg) {
                s.agents.remove(node_id);
            }
            s.subs.iter().filter(|(_, sub)| sub.nodes.contains(node_id)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (id, sub) in subs {
            let mut st = sub.state.lock().await;
            if !st.pending.remove(node_id) || !sub.holding.contains(node_id) {
                st.merge.close(node_id);
                self.flush(&id, &sub, &mut st).await;
                continue;
            }
            tracing::warn!(node.id = %node_id, subscription = %id, "agent's logs stream ended before it sent all its logs");
            let warning = format!("{}: its logs stream ended before all its logs were sent", self.node_name(node_id));
            let _ = sub.out.send(SubscribeLogsMessage { messages: vec![], warnings: vec![warning] }).await;
            st.merge.close(node_id);
            self.flush(&id, &sub, &mut st).await;
        }
    }

    /// `node <hostname>` (or its id when the store does not know it).
    fn node_name(&self, node_id: &str) -> String {
        let store = self.lock().store.clone();
        let host = store.and_then(|s| s.view(|v| v.node(node_id).map(|n| n.description.hostname.clone())));
        match host {
            Some(h) if !h.is_empty() => format!("node {h}"),
            _ => format!("node {node_id}"),
        }
    }

    /// Starts gathering `selection`'s logs; the receiver yields them and ends once every node sent all (never
    /// when following: then it ends when dropped, or when this manager stops leading).
    pub fn subscribe(
        &self,
        selection: Selection,
        options: LogsOptions,
    ) -> Result<mpsc::Receiver<SubscribeLogsMessage>, LogsError> {
        let id = new_id();
        let (out, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (task, node) in &selection.tasks {
            by_node.entry(node.clone()).or_default().push(task.clone());
        }
        let holding: BTreeSet<String> = by_node.keys().cloned().collect();
        let mut s = self.lock();
        let store = s.store.clone().ok_or_else(|| self.not_leader())?;
        // Following a service, every connected agent hears of it: a task of it may start anywhere later.
        if options.follow && selection.service_id.is_some() {
            for n in s.agents.keys() {
                by_node.entry(n.clone()).or_default();
            }
        }
        let mut warnings = Vec::new();
        let mut asked = BTreeSet::new();
        let service_id = selection.service_id.clone().filter(|_| options.follow);
        for (node, task_ids) in by_node {
            let msg = Box::new(LogSubscription {
                id: id.clone(),
                task_ids,
                service_id: service_id.clone(),
                options: options.clone(),
                close: false,
            });
            match s.agents.get(&node) {
                Some((_, tx)) if tx.send(msg).is_ok() => {
                    asked.insert(node);
                }
                _ => {
                    let host = store.view(|v| v.node(&node).map(|n| n.description.hostname.clone()));
                    let name = host.filter(|h| !h.is_empty()).unwrap_or_else(|| node.clone());
                    warnings.push(format!("node {name} is down: the logs of its tasks cannot be retrieved"));
                }
            }
        }
        tracing::debug!(subscription = %id, nodes = asked.len(), follow = options.follow, "log subscription");
        if !warnings.is_empty() {
            // The channel is new and empty: this cannot be full.
            let _ = out.try_send(SubscribeLogsMessage { messages: vec![], warnings });
        }
        if asked.is_empty() && !options.follow {
            return Ok(rx);
        }
        let mut merge = Merge::default();
        for n in &asked {
            merge.open(n);
        }
        let sub = Arc::new(Sub {
            follow: options.follow,
            nodes: asked.clone(),
            holding,
            out: out.clone(),
            state: tokio::sync::Mutex::new(SubState { pending: asked, merge, contexts: HashMap::new() }),
            drained: Notify::new(),
            ended: CancellationToken::new(),
        });
        s.subs.insert(id.clone(), sub.clone());
        drop(s);
        // When the subscriber leaves, the agents stop reading.
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = out.closed() => broker.end(&id),
                _ = sub.ended.cancelled() => {}
            }
        });
        Ok(rx)
    }

    /// Ends subscription `id`: forgotten here, and its agents told to stop.
    fn end(&self, id: &str) {
        let mut s = self.lock();
        let Some(sub) = s.subs.remove(id) else { return };
        for n in &sub.nodes {
            if let Some((_, tx)) = s.agents.get(n) {
                let _ = tx.send(Box::new(LogSubscription { id: id.to_string(), close: true, ..Default::default() }));
            }
        }
        sub.ended.cancel();
        sub.drained.notify_waiters();
    }

    /// A batch of lines from `node_id`'s agent. Waits while that node is too far ahead of the others.
    pub async fn publish(&self, node_id: &str, req: PublishLogsRequest) -> Result<(), LogsError> {
        let id = req.subscription_id.clone();
        let unknown = || LogsError::UnknownSubscription(id.clone());
        let sub = self.lock().subs.get(&id).cloned().ok_or_else(unknown)?;
        let mut st = loop {
            // Registered before looking, so a drain between the look and the wait is not missed.
            let drained = sub.drained.notified();
            if sub.ended.is_cancelled() {
                return Err(unknown());
            }
            let st = sub.state.lock().await;
            if sub.follow || st.merge.queued(node_id) < MAX_QUEUED_LINES {
                break st;
            }
            drop(st);
            drained.await;
        };
        if !st.pending.contains(node_id) && !sub.follow {
            return Err(unknown());
        }
        let mut messages = Vec::with_capacity(req.lines.len());
        for l in req.lines {
            let (context, node) = self.context(&mut st.contexts, &l.task_id, node_id);
            messages.push(LogMessage {
                time: l.time,
                stream: l.stream,
                context,
                task_id: l.task_id,
                node_id: node,
                line: l.line,
            });
        }
        if let Some(e) = req.error {
            let warning = format!("{}: {e}", self.node_name(node_id));
            if sub.out.send(SubscribeLogsMessage { messages: vec![], warnings: vec![warning] }).await.is_err() {
                return Err(unknown());
            }
        }
        if sub.follow {
            for m in chunk(messages) {
                if sub.out.send(m).await.is_err() {
                    return Err(unknown());
                }
            }
            return Ok(());
        }
        st.merge.push(node_id, messages);
        if req.close {
            st.pending.remove(node_id);
            st.merge.close(node_id);
        }
        if !self.flush(&id, &sub, &mut st).await {
            return Err(unknown());
        }
        Ok(())
    }

    /// Sends what the merge lets out; ends the subscription once it is done. False if the subscriber left.
    async fn flush(&self, id: &str, sub: &Sub, st: &mut SubState) -> bool {
        let ready = st.merge.pop_ready();
        if !ready.is_empty() {
            sub.drained.notify_waiters();
        }
        for m in chunk(ready) {
            if sub.out.send(m).await.is_err() {
                return false;
            }
        }
        if !sub.follow && st.merge.is_done() {
            // Dropping the last sender ends the subscriber's stream.
            let mut s = self.lock();
            s.subs.remove(id);
            sub.ended.cancel();
        }
        true
    }

    /// The context and node of `task_id`'s lines, from the store (cached per subscription).
    fn context(&self, cache: &mut HashMap<String, (String, String)>, task_id: &str, from: &str) -> (String, String) {
        if let Some(c) = cache.get(task_id) {
            return c.clone();
        }
        let store = self.lock().store.clone();
        let found = store.and_then(|s| {
            s.view(|v| {
                let t = v.task(task_id)?;
                let host = v.node(&t.node_id).map(|n| n.description.hostname.clone()).unwrap_or_default();
                Some((format!("{}.{}@{}", t.name(), t.id, host), t.node_id.clone()))
            })
        });
        let c = found.unwrap_or_else(|| (format!("{task_id}@{from}"), from.to_string()));
        cache.insert(task_id.to_string(), c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, text: &str) -> LogMessage {
        LogMessage {
            time: format!("2026-01-01T00:00:{time}.000000000Z"),
            stream: LogStream::Stdout,
            context: String::new(),
            task_id: String::new(),
            node_id: String::new(),
            line: text.into(),
        }
    }

    fn texts(v: Vec<LogMessage>) -> Vec<String> {
        v.into_iter().map(|l| l.line).collect()
    }

    #[test]
    fn merge_waits_for_every_open_node_and_orders_by_time() {
        let mut m = Merge::default();
        m.open("a");
        m.open("b");
        m.push("a", vec![line("01", "a1"), line("04", "a4")]);
        assert!(texts(m.pop_ready()).is_empty(), "b may still send something older");
        m.push("b", vec![line("02", "b2"), line("03", "b3")]);
        assert_eq!(texts(m.pop_ready()), ["a1", "b2", "b3"], "a4 waits: b may send up to 04");
        assert_eq!(m.queued("a"), 1);
        m.close("b");
        assert_eq!(texts(m.pop_ready()), ["a4"]);
        assert!(!m.is_done(), "a is still open");
        m.close("a");
        assert!(m.is_done());
    }

    #[test]
    fn a_node_closing_without_lines_releases_the_others() {
        let mut m = Merge::default();
        m.open("a");
        m.open("b");
        m.push("a", vec![line("05", "a5")]);
        m.close("b");
        assert_eq!(texts(m.pop_ready()), ["a5"]);
    }

    #[test]
    fn big_batches_are_chunked() {
        let big = "x".repeat(MAX_LOG_LINE_BYTES);
        let lines: Vec<LogMessage> = (0..20).map(|_| line("01", &big)).collect();
        let chunks = chunk(lines);
        assert!(chunks.len() > 1, "20 × 64 KiB do not fit one message");
        for c in &chunks {
            let bytes: usize = c.messages.iter().map(|m| m.line.len()).sum();
            assert!(bytes <= MAX_LOG_BATCH_BYTES, "a message holds {bytes} bytes");
        }
        assert_eq!(chunks.iter().map(|c| c.messages.len()).sum::<usize>(), 20);
    }

    #[tokio::test]
    async fn a_node_without_an_agent_is_named_and_the_others_are_asked() {
        let broker = LogBroker::default();
        let store = Store::in_memory();
        store
            .update(|tx| {
                tx.create(crate::testing::node("n1", "host-1"));
                tx.create(crate::testing::node("n2", "host-2"));
                let mut t = crate::testing::task("t1", "s1", 1);
                t.node_id = "n1".into();
                tx.create(t);
                Ok::<_, crate::manager::store::StoreError>(())
            })
            .await
            .unwrap();
        let refused = broker.subscribe(Selection::default(), LogsOptions::default()).unwrap_err();
        assert!(matches!(refused, LogsError::NotLeader(None)), "{refused:?}");
        broker.start(store);
        let (_, mut agent) = broker.register_agent("n1");
        let selection = Selection {
            service_id: Some("s1".into()),
            tasks: vec![("t1".into(), "n1".into()), ("t2".into(), "n2".into())],
        };
        let mut rx = broker.subscribe(selection, LogsOptions::default()).unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.warnings, ["node host-2 is down: the logs of its tasks cannot be retrieved"]);
        let sub = agent.recv().await.unwrap();
        assert_eq!(sub.task_ids, ["t1"]);
        let l = TaskLogLine {
            task_id: "t1".into(),
            time: "2026-01-01T00:00:01.000000000Z".into(),
            stream: LogStream::Stderr,
            line: "hello".into(),
        };
        let req = PublishLogsRequest {
            session_id: String::new(),
            subscription_id: sub.id.clone(),
            lines: vec![l],
            close: true,
            error: None,
        };
        broker.publish("n1", req.clone()).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.messages.len(), 1);
        assert_eq!(got.messages[0].context, "svc-s1.1.t1@host-1");
        assert_eq!(got.messages[0].stream, LogStream::Stderr);
        assert!(rx.recv().await.is_none(), "the stream ends once every asked node closed");
        let e = broker.publish("n1", req).await.unwrap_err();
        assert!(matches!(e, LogsError::UnknownSubscription(_)), "{e:?}");
    }

    #[tokio::test]
    async fn an_agent_lost_mid_stream_is_named_and_the_others_lines_still_come() {
        let broker = LogBroker::default();
        let store = Store::in_memory();
        store
            .update(|tx| {
                tx.create(crate::testing::node("n1", "host-1"));
                tx.create(crate::testing::node("n2", "host-2"));
                for (t, n) in [("t1", "n1"), ("t2", "n2")] {
                    let mut t = crate::testing::task(t, "s1", 1);
                    t.node_id = n.into();
                    tx.create(t);
                }
                Ok::<_, crate::manager::store::StoreError>(())
            })
            .await
            .unwrap();
        broker.start(store);
        let (_, mut a1) = broker.register_agent("n1");
        let (reg2, mut a2) = broker.register_agent("n2");
        let selection = Selection {
            service_id: Some("s1".into()),
            tasks: vec![("t1".into(), "n1".into()), ("t2".into(), "n2".into())],
        };
        let mut rx = broker.subscribe(selection, LogsOptions::default()).unwrap();
        let sub = a1.recv().await.unwrap();
        assert_eq!(a2.recv().await.unwrap().task_ids, ["t2"]);
        let line = |t: &str| TaskLogLine {
            task_id: "t1".into(),
            time: format!("2026-01-01T00:00:0{t}.000000000Z"),
            stream: LogStream::Stdout,
            line: format!("l{t}"),
        };
        let publish = |lines, close| PublishLogsRequest {
            session_id: String::new(),
            subscription_id: sub.id.clone(),
            lines,
            close,
            error: None,
        };
        broker.publish("n1", publish(vec![line("1")], false)).await.unwrap();
        // n1's line waits: n2 may still send something older. Then n2's agent goes away.
        broker.agent_gone("n2", reg2).await;
        let m = rx.recv().await.unwrap();
        assert_eq!(m.warnings, ["node host-2: its logs stream ended before all its logs were sent"]);
        let m = rx.recv().await.unwrap();
        assert_eq!(m.messages.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["l1"]);
        broker.publish("n1", publish(vec![line("2")], true)).await.unwrap();
        let m = rx.recv().await.unwrap();
        assert_eq!(m.messages.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["l2"]);
        assert!(rx.recv().await.is_none(), "done once n1 closed");
    }
}
