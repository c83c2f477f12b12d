//! Tests of the agent's sessions against real dispatchers served over mTLS on 127.0.0.1, with the in-memory
//! `TestExecutor`: which manager the agent goes to, what it learns from session messages, and that status
//! reports survive a failed store write. Also the pure pieces: the manager list and the backoff.

use super::*;
use crate::api::control::Empty;
use crate::api::logs::{LogsSessionRequest, PublishLogsRequest, SubscribeLogsRequest};
use crate::api::{ManagerStatus, NodeRole, Reachability, TaskState};
use crate::ca::{self, NodeIdentity, RootCa};
use crate::manager::dispatcher::{Dispatcher, DispatcherConfig, DispatcherService};
use crate::manager::store::{Store, StoreError};
use crate::testing::{node, task, TestExecutor};
use crate::transport::dispatcher::dispatcher_server::{Dispatcher as Rpc, DispatcherServer};
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The certificates of one test cluster: a manager's (served by every dispatcher) and worker `n1`'s.
struct Certs {
    manager: NodeIdentity,
    worker: NodeIdentity,
}

fn certs() -> Certs {
    let root = RootCa::generate().unwrap();
    Certs {
        manager: ca::issue_identity(&root, "m1", NodeRole::Manager, "c1").unwrap(),
        worker: ca::issue_identity(&root, "n1", NodeRole::Worker, "c1").unwrap(),
    }
}

/// One status call a manager received: when, and each task's reported state.
type Report = (Instant, Vec<(String, TaskState)>);

/// A manager's cluster listener serving a dispatcher; `leader` is what it believes the leader's address is.
struct Mgr {
    addr: String,
    /// Every status call received, in order.
    reports: Arc<std::sync::Mutex<Vec<Report>>>,
    dispatcher: Dispatcher,
    leader: watch::Sender<Option<String>>,
    /// Ends the dispatcher's `run` (this manager stops leading); the listener stays up.
    lead: Option<CancellationToken>,
    stop: CancellationToken,
}

impl Mgr {
    async fn serve(certs: &Certs) -> Mgr {
        Self::serve_with(certs, Duration::from_secs(5), Duration::ZERO).await
    }

    /// A manager whose heartbeats have `period` and are answered `heartbeat_delay` late.
    async fn serve_with(certs: &Certs, period: Duration, heartbeat_delay: Duration) -> Mgr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (leader, leader_rx) = watch::channel(None);
        let dispatcher = Dispatcher::new(DispatcherConfig {
            heartbeat_period: period,
            managers: vec![addr.clone()],
            leader: leader_rx,
        });
        let stop = CancellationToken::new();
        let reports: Arc<std::sync::Mutex<Vec<Report>>> = Default::default();
        let server = tonic::transport::Server::builder()
            .tls_config(ca::server_tls_config(&certs.manager).unwrap())
            .unwrap()
            .add_service(DispatcherServer::new(SlowHeartbeats {
                inner: DispatcherService::new(dispatcher.clone()),
                delay: heartbeat_delay,
                reports: reports.clone(),
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Mgr { addr, reports, dispatcher, leader, lead: None, stop }
    }

    /// Starts leading: the dispatcher serves sessions from `store`.
    async fn lead(&mut self, store: &Store) {
        let t = CancellationToken::new();
        let (d, s, t2) = (self.dispatcher.clone(), store.clone(), t.clone());
        tokio::spawn(async move { d.run(s, t2).await });
        self.lead = Some(t);
        until("the dispatcher to run", || self.dispatcher.store().is_ok()).await;
    }

    fn step_down(&mut self) {
        if let Some(t) = self.lead.take() {
            t.cancel();
        }
    }
}

impl Drop for Mgr {
    fn drop(&mut self) {
        self.step_down();
        self.stop.cancel();
    }
}

/// The dispatcher service, with heartbeats answered `delay` late (recorded on time): a manager busy with a big
/// change. Status calls are recorded.
struct SlowHeartbeats {
    inner: DispatcherService,
    delay: Duration,
    reports: Arc<std::sync::Mutex<Vec<Report>>>,
}

#[tonic::async_trait]
impl Rpc for SlowHeartbeats {
    type SessionStream = <DispatcherService as Rpc>::SessionStream;
    type AssignmentsStream = <DispatcherService as Rpc>::AssignmentsStream;
    type LogsStream = <DispatcherService as Rpc>::LogsStream;
    type SubscribeLogsStream = <DispatcherService as Rpc>::SubscribeLogsStream;

    async fn session(&self, r: Request<SessionRequest>) -> Result<Response<Self::SessionStream>, Status> {
        self.inner.session(r).await
    }

    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let answer = self.inner.heartbeat(r).await;
        tokio::time::sleep(self.delay).await;
        answer
    }

    async fn assignments(&self, r: Request<AssignmentsRequest>) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.inner.assignments(r).await
    }

    async fn update_task_status(&self, r: Request<UpdateTaskStatusRequest>) -> Result<Response<Empty>, Status> {
        let states = r.get_ref().updates.iter().map(|u| (u.task_id.clone(), u.status.state)).collect();
        self.reports.lock().unwrap().push((Instant::now(), states));
        self.inner.update_task_status(r).await
    }

    async fn logs(&self, r: Request<LogsSessionRequest>) -> Result<Response<Self::LogsStream>, Status> {
        self.inner.logs(r).await
    }

    async fn publish_logs(&self, r: Request<PublishLogsRequest>) -> Result<Response<Empty>, Status> {
        self.inner.publish_logs(r).await
    }

    async fn subscribe_logs(
        &self,
        r: Request<SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        self.inner.subscribe_logs(r).await
    }
}

/// An address nothing listens on.
async fn dead_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// A store holding worker `n1` and, for each `(addr, leader)`, a manager node at that address.
async fn store_with(store: Store, managers: &[(&str, bool)]) -> Store {
    store
        .update(|tx| {
            let mut w = node("n1", "host-1");
            w.role = NodeRole::Worker;
            tx.create(w);
            for (i, (addr, leader)) in managers.iter().enumerate() {
                let mut m = node(&format!("m{i}"), &format!("mgr-{i}"));
                m.manager_status = Some(ManagerStatus {
                    raft_id: i as u64 + 1,
                    addr: addr.to_string(),
                    leader: *leader,
                    reachability: Reachability::Reachable,
                });
                tx.create(m);
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    store
}

/// Agent `n1` trying `managers` in order; runs until the returned token is cancelled.
fn start_agent(
    certs: &Certs,
    managers: Vec<String>,
    exec: &TestExecutor,
) -> (Arc<Agent<TestExecutor>>, CancellationToken) {
    let cfg = AgentConfig { managers, tls: ca::ClusterTls::new(&certs.worker).unwrap() };
    let agent = Arc::new(Agent::new(cfg, Arc::new(exec.clone())));
    let stop = CancellationToken::new();
    let (a, s) = (agent.clone(), stop.clone());
    tokio::spawn(async move { a.run(s).await });
    (agent, stop)
}

/// Polls `ok` every 10 ms until it holds, or panics after 10 s naming what was awaited.
async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after 10s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the agent's status satisfies `ok`, failing with the last status seen.
async fn until_status(agent: &Agent<TestExecutor>, what: &str, ok: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
    let mut rx = agent.status();
    let r = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| ok(s))).await.map(|r| r.unwrap().clone());
    r.unwrap_or_else(|_| panic!("timed out after 10s waiting for {what}; agent status: {:?}", *agent.status().borrow()))
}

#[tokio::test]
async fn an_agent_whose_first_manager_is_unreachable_connects_to_the_next() {
    let certs = certs();
    let mut good = Mgr::serve(&certs).await;
    let store = store_with(Store::in_memory(), &[]).await;
    good.lead(&store).await;
    let (agent, stop) = start_agent(&certs, vec![dead_addr().await, good.addr.clone()], &TestExecutor::new("host-1"));
    until_status(&agent, "a session with the second manager", |s| s.connected_to.as_deref() == Some(&good.addr)).await;
    stop.cancel();
}

#[tokio::test]
async fn a_manager_that_does_not_lead_sends_the_agent_to_the_leader_it_names() {
    let certs = certs();
    let follower = Mgr::serve(&certs).await;
    let mut leader = Mgr::serve(&certs).await;
    let store = store_with(Store::in_memory(), &[]).await;
    leader.lead(&store).await;
    follower.leader.send_replace(Some(leader.addr.clone()));
    // The agent knows only the follower and a dead address: only the follower's refusal can lead it to the leader.
    let (agent, stop) =
        start_agent(&certs, vec![follower.addr.clone(), dead_addr().await], &TestExecutor::new("host-1"));
    until_status(&agent, "a session with the leader", |s| s.connected_to.as_deref() == Some(&leader.addr)).await;
    stop.cancel();
}

#[tokio::test]
async fn the_agent_learns_every_manager_from_its_session_and_fails_over_to_one_it_was_not_given() {
    let certs = certs();
    let mut a = Mgr::serve(&certs).await;
    let mut b = Mgr::serve(&certs).await;
    let store = store_with(Store::in_memory(), &[(&a.addr, true), (&b.addr, false)]).await;
    a.lead(&store).await;
    let (agent, stop) = start_agent(&certs, vec![a.addr.clone()], &TestExecutor::new("host-1"));
    let s = until_status(&agent, "a session with A", |s| s.connected_to.as_deref() == Some(&a.addr)).await;
    assert_eq!(s.managers, [a.addr.clone(), b.addr.clone()], "the session lists both managers, the leader first");

    // The lead moves to B: the open session says so.
    store
        .update(|tx| {
            for n in tx.view().nodes().filter(|n| n.manager_status.is_some()).cloned().collect::<Vec<_>>() {
                let mut n = n;
                let ms = n.manager_status.as_mut().unwrap();
                ms.leader = ms.addr == b.addr;
                tx.update(n);
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    until_status(&agent, "the new manager order, B first", |s| s.managers == [b.addr.clone(), a.addr.clone()]).await;

    // A stops leading and B takes over: the agent, configured with A alone, goes to B.
    a.step_down();
    b.lead(&store).await;
    until_status(&agent, "a session with B", |s| s.connected_to.as_deref() == Some(&b.addr)).await;
    stop.cancel();
}

#[tokio::test]
async fn a_failed_report_whose_store_write_failed_is_sent_again_and_lands() {
    let certs = certs();
    let mut m = Mgr::serve(&certs).await;
    let (store, writes) = crate::testing::flaky_store();
    let store = store_with(store, &[]).await;
    assign_t1(&store).await;
    m.lead(&store).await;
    let exec = TestExecutor::new("host-1");
    let (_agent, stop) = start_agent(&certs, vec![m.addr.clone()], &exec);
    let state = || store.view(|v| v.task("t1").unwrap().status.state);
    until("t1 RUNNING in the store", || state() == TaskState::Running).await;

    // The task's process dies, and the write carrying its FAILED report fails.
    writes.fail_next(1);
    assert!(exec.exit("t1", 1));
    until("the failing write to be tried", || writes.failures_left() == 0).await;
    until("t1 FAILED in the store (the report sent again)", || state() == TaskState::Failed).await;
    stop.cancel();
}

/// Reports wait `REPORT_GATHER` after the first of them arrived, so reports made together go in one call, and
/// one made alone is not sent at once by a tick that happened to come right after it.
#[tokio::test]
async fn status_reports_made_together_go_in_one_call_sent_after_the_gather_time() {
    let certs = certs();
    let mut m = Mgr::serve(&certs).await;
    let store = store_with(Store::in_memory(), &[]).await;
    assign(&store, "t1", 1).await;
    assign(&store, "t2", 2).await;
    m.lead(&store).await;
    let exec = TestExecutor::new("host-1");
    let (_agent, stop) = start_agent(&certs, vec![m.addr.clone()], &exec);
    let state = |id: &str| store.view(|v| v.task(id).unwrap().status.state);
    until("both tasks RUNNING", || state("t1") == TaskState::Running && state("t2") == TaskState::Running).await;
    let before = m.reports.lock().unwrap().len();

    let exited = Instant::now();
    assert!(exec.exit("t1", 1));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(exec.exit("t2", 1));
    until("both FAILED in the store", || state("t1") == TaskState::Failed && state("t2") == TaskState::Failed).await;
    let reports = m.reports.lock().unwrap()[before..].to_vec();
    let failed: Vec<&Report> = reports.iter().filter(|(_, r)| r.iter().any(|(_, s)| *s == TaskState::Failed)).collect();
    assert_eq!(failed.len(), 1, "both exits are reported in one call: {reports:?}");
    let mut ids: Vec<&str> = failed[0].1.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["t1", "t2"]);
    assert!(failed[0].0 >= exited + REPORT_GATHER, "sent {:?} after the first exit", failed[0].0 - exited);
    stop.cancel();
}

#[tokio::test]
async fn a_report_made_while_no_manager_leads_lands_through_the_next_leader() {
    let certs = certs();
    let mut a = Mgr::serve(&certs).await;
    let mut b = Mgr::serve(&certs).await;
    let store = store_with(Store::in_memory(), &[(&a.addr, true), (&b.addr, false)]).await;
    assign_t1(&store).await;
    a.lead(&store).await;
    let exec = TestExecutor::new("host-1");
    let (agent, stop) = start_agent(&certs, vec![a.addr.clone()], &exec);
    let state = || store.view(|v| v.task("t1").unwrap().status.state);
    until("t1 RUNNING in the store", || state() == TaskState::Running).await;

    step_down_and_wait(&mut a, &agent).await;
    assert!(exec.exit("t1", 1));
    b.lead(&store).await;
    until("t1 FAILED in the store, reported through B", || state() == TaskState::Failed).await;
    stop.cancel();
}

/// A manager that answers heartbeats late but keeps sending assignments is alive: the agent keeps its session.
/// Once it sends nothing else either, the agent leaves it as it would a frozen one.
#[tokio::test]
async fn a_late_heartbeat_ends_the_session_only_when_the_manager_sent_nothing_else_meanwhile() {
    let certs = certs();
    // A heartbeat is due within one period (0.9–1.1 s with jitter) and answered 1.5 s late; the dispatcher's own
    // grace (3 periods) still holds, since it records each heartbeat when it arrives.
    let (period, delay) = (Duration::from_secs(1), Duration::from_millis(1500));
    let mut m = Mgr::serve_with(&certs, period, delay).await;
    let store = store_with(Store::in_memory(), &[]).await;
    m.lead(&store).await;
    let (agent, stop) = start_agent(&certs, vec![m.addr.clone()], &TestExecutor::new("host-1"));
    let first = until_status(&agent, "a session", |s| s.session_id.is_some()).await.session_id;

    // Three periods' worth of late heartbeats, with a task assigned every 100 ms meanwhile.
    for i in 0..30 {
        assign(&store, &format!("busy{i}"), i + 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = agent.status().borrow().session_id.clone();
    assert_eq!(kept, first, "the agent left a manager that was sending it assignments");
    let statuses = store.view(|v| v.tasks().filter(|t| t.status.state == TaskState::Running).count());
    assert!(statuses > 0, "no report was acknowledged meanwhile");

    // Nothing but late heartbeats now: taken for frozen, the session ends.
    until_status(&agent, "the session left", |s| s.session_id != first).await;
    stop.cancel();
}

/// Assigns task `t1` to node `n1`.
async fn assign_t1(store: &Store) {
    assign(store, "t1", 1).await;
}

/// Assigns task `id` of service `s1`, in `slot`, to node `n1`.
async fn assign(store: &Store, id: &str, slot: u64) {
    store
        .update(|tx| {
            let mut t = task(id, "s1", slot);
            t.node_id = "n1".into();
            t.status.state = TaskState::Assigned;
            tx.create(t);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
}

/// Ends `m`'s lead and waits until the agent has no session.
async fn step_down_and_wait(m: &mut Mgr, agent: &Agent<TestExecutor>) {
    m.step_down();
    until_status(agent, "the agent without a session", |s| s.connected_to.is_none()).await;
}

#[test]
fn the_manager_list_goes_round_after_a_failure_and_to_a_named_leader_first() {
    let mut m = Managers::new(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
    assert_eq!(m.pick().as_deref(), Some("a:1"));
    m.failed("a:1", None);
    assert_eq!(m.pick().as_deref(), Some("b:1"));
    m.failed("b:1", Some("c:1".into()));
    assert_eq!(m.pick().as_deref(), Some("c:1"), "the named leader");
    m.failed("c:1", None);
    assert_eq!(m.pick().as_deref(), Some("a:1"), "round again");
    // A join address the list does not hold: the list from its start.
    m.failed("join:1", Some("join:1".into()));
    assert_eq!(m.pick().as_deref(), Some("a:1"), "a manager naming itself is not a redirect");
    m.replace(vec![]);
    assert_eq!(m.addrs.len(), 3, "an empty list from a dispatcher keeps the known managers");
    m.replace(vec!["d:1".into()]);
    assert_eq!(m.pick().as_deref(), Some("d:1"));
}

#[test]
fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
    let mut b = Backoff::new();
    let mut base = BACKOFF_FIRST;
    for _ in 0..10 {
        let w = b.next_wait();
        assert!(w >= base.mul_f64(0.75) && w <= base.mul_f64(1.25), "{w:?} not within 25% of {base:?}");
        base = (base * 2).min(BACKOFF_MAX);
    }
    assert_eq!(base, BACKOFF_MAX, "the cap was reached");
    // Jitter: many waits at the cap are not all the same.
    let waits: std::collections::HashSet<Duration> = (0..20).map(|_| b.next_wait()).collect();
    assert!(waits.len() > 1, "no jitter: {waits:?}");
    b.reset();
    assert!(b.next_wait() <= BACKOFF_FIRST.mul_f64(1.25));
}
