//! Node loss, in one process: a manager and two workers (`SwarmNode`s with `TestExecutor`s on 127.0.0.1), a
//! 4-replica service constrained to the workers spread 2/2. Stories: a worker whose daemon stops abruptly is DOWN
//! after the session grace and its slots run on the other worker; a worker that goes silent (its traffic frozen
//! by a proxy, as a SIGSTOPped daemon) is DOWN after 3 missed heartbeats and likewise replaced. When either comes
//! back, it stops the tasks that were replaced, so every slot runs exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use swarm::api::control::*;
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::Constraint;
use swarm::api::{NodeAvailability, NodeState, ServiceSpec, TaskState};
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

struct Cluster {
    mgr: SwarmNode<TestExecutor>,
    /// Worker A reaches the manager through `proxy`; worker B directly.
    a: SwarmNode<TestExecutor>,
    a_id: String,
    a_exec: TestExecutor,
    a_dir: tempfile::TempDir,
    b_id: String,
    b_exec: TestExecutor,
    proxy: FreezableProxy,
    service_id: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir, SwarmNode<TestExecutor>),
}

/// Manager + workers A and B, and a 4-replica service on `node.role==worker` running 2 tasks on each worker.
async fn cluster(heartbeat: Option<Duration>) -> Cluster {
    let (mdir, a_dir, bdir) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, a_exec, b_exec) =
        (TestExecutor::new("host-m"), TestExecutor::new("host-a"), TestExecutor::new("host-b"));
    // The manager advertises the proxy, so every agent learns only the proxy as the manager's address: frozen,
    // it leaves worker A no way to reach the manager (as if A were stopped). B keeps the direct connection it
    // joined through.
    let addr = free_local_addr();
    let proxy = FreezableProxy::start(addr.clone()).await;
    let mgr = new_node(mdir.path(), &mexec);
    mgr.init(SwarmInitRequest {
        listen_addr: addr.clone(),
        advertise_addr: proxy.addr.clone(),
        dispatcher_heartbeat: heartbeat,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let join = |remote: &str| SwarmJoinRequest {
        remote_addr: remote.into(),
        join_token: token.clone(),
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: String::new(),
        availability: NodeAvailability::Active,
    };
    let a = new_node(a_dir.path(), &a_exec);
    let a_id = a.join(join(&proxy.addr)).await.expect("worker A joins through the proxy");
    let b = new_node(bdir.path(), &b_exec);
    let b_id = b.join(join(&addr)).await.expect("worker B joins");
    wait_for("both workers READY", || {
        let states: Vec<NodeState> = mgr
            .store()
            .unwrap()
            .view(|v| [&a_id, &b_id].iter().filter_map(|id| v.node(id)).map(|n| n.status.state).collect());
        if states == [NodeState::Ready, NodeState::Ready] {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;

    let mut spec: ServiceSpec = swarm::testing::service("unused", "web", 4).spec;
    spec.task_template.restart_policy.delay = Duration::ZERO;
    spec.task_template.placement.constraints = vec![Constraint::parse("node.role==worker").unwrap()];
    let svc = mgr.control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let c = Cluster { mgr, a, a_id, a_exec, a_dir, b_id, b_exec, proxy, service_id: svc.id, _dirs: (mdir, bdir, b) };
    wait_for("2 running tasks on each worker, in each worker's executor", || {
        let per_node = c.running_per_node();
        let on = |id: &str| per_node.get(id).cloned().unwrap_or_default();
        let (a, b) = (on(&c.a_id), on(&c.b_id));
        if a.len() == 2 && b.len() == 2 && c.a_exec.running() == a && c.b_exec.running() == b {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; A runs {:?}, B runs {:?}", c.a_exec.running(), c.b_exec.running()))
        }
    })
    .await;
    c
}

impl Cluster {
    /// Tasks of the service meant to run and running, per node id, from the manager's store (ids sorted).
    fn running_per_node(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::<String, Vec<String>>::new();
        self.mgr.store().unwrap().view(|v| {
            for t in v.tasks_by_service(&self.service_id) {
                if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                    out.entry(t.node_id.clone()).or_default().push(t.id.clone());
                }
            }
        });
        out.values_mut().for_each(|ids| ids.sort());
        out
    }

    /// Slot of each task id of the service.
    fn slots(&self) -> BTreeMap<String, u64> {
        self.mgr
            .store()
            .unwrap()
            .view(|v| v.tasks_by_service(&self.service_id).map(|t| (t.id.clone(), t.slot)).collect())
    }

    fn node_status(&self, id: &str) -> swarm::api::NodeStatus {
        self.mgr.store().unwrap().view(|v| v.node(id).unwrap().status.clone())
    }

    /// Waits until A is DOWN with `message` and its slots run on B: 4 tasks running there and in B's executor,
    /// none meant to run on A. Returns A's old task ids.
    async fn wait_replaced(&self, a_tasks: &[String], message: &str, since: Instant) {
        let down = wait_for("worker A to be DOWN", || {
            let s = self.node_status(&self.a_id);
            if s.state == NodeState::Down {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        eprintln!("    worker A DOWN after {:?}: {:?}", since.elapsed(), down.message);
        assert_eq!(down.message, message);
        wait_for("A's 2 slots to run on worker B", || {
            let per_node = self.running_per_node();
            let b = per_node.get(&self.b_id).cloned().unwrap_or_default();
            let on_a = self.mgr.store().unwrap().view(|v| {
                v.tasks_by_service(&self.service_id)
                    .filter(|t| t.node_id == self.a_id && t.desired_state <= TaskState::Running)
                    .map(|t| t.id.clone())
                    .collect::<Vec<_>>()
            });
            if b.len() == 4 && self.b_exec.running() == b && on_a.is_empty() {
                Ok(())
            } else {
                Err(format!("store {per_node:?}; B runs {:?}; meant to run on A: {on_a:?}", self.b_exec.running()))
            }
        })
        .await;
        eprintln!("    A's tasks running on B {:?} after A was lost", since.elapsed());
        let slots = self.slots();
        let mut lost: Vec<u64> = a_tasks.iter().map(|t| slots[t]).collect();
        let mut refilled: Vec<u64> =
            self.running_per_node()[&self.b_id].iter().map(|t| slots[t]).filter(|s| lost.contains(s)).collect();
        lost.sort();
        refilled.sort();
        assert_eq!(refilled, lost, "the replacements took the lost tasks' slots");
    }

    /// Waits until A is READY again, runs none of its replaced tasks, and every slot 1..=4 runs exactly once.
    async fn wait_back(&self, a_tasks: &[String], since: Instant) {
        wait_for("worker A READY again, its replaced tasks stopped, each slot running once", || {
            let s = self.node_status(&self.a_id);
            let still = self.a_exec.running();
            let per_node = self.running_per_node();
            let slots = self.slots();
            let mut running_slots: Vec<u64> = per_node.values().flatten().map(|t| slots[t]).collect();
            running_slots.sort();
            // Everything any executor runs is a task the store means to run: no slot runs twice.
            let mut executors: Vec<String> = [still.clone(), self.b_exec.running()].concat();
            executors.sort();
            let mut meant: Vec<String> = per_node.values().flatten().cloned().collect();
            meant.sort();
            if s.state == NodeState::Ready
                && a_tasks.iter().all(|t| !still.contains(t))
                && running_slots == [1, 2, 3, 4]
                && executors == meant
            {
                Ok(())
            } else {
                Err(format!(
                    "A {:?}; A runs {still:?} (replaced: {a_tasks:?}); running slots {running_slots:?}; \
                     executors run {executors:?}, store means {meant:?}",
                    s.state
                ))
            }
        })
        .await;
        eprintln!("    A back and its replaced tasks stopped {:?} after it returned", since.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_daemon_stops_is_replaced_after_the_session_grace_and_stops_its_old_tasks_on_return() {
    // The default heartbeat (5s): only the session grace (1s) can find A down quickly.
    let mut c = cluster(None).await;
    let a_tasks = c.running_per_node()[&c.a_id].clone();

    step("worker A's daemon stops abruptly: its session breaks");
    let lost = Instant::now();
    c.a.shutdown().await;
    assert_eq!(c.a_exec.running(), a_tasks, "A's containers outlive its daemon");
    c.wait_replaced(&a_tasks, "node's session ended", lost).await;

    step("worker A's daemon starts again");
    let a = new_node(c.a_dir.path(), &c.a_exec);
    let back = Instant::now();
    assert!(a.resume().await.unwrap(), "A resumes its membership");
    c.a = a;
    c.wait_back(&a_tasks, back).await;
    c.a.shutdown().await;
    c.mgr.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_down_after_three_missed_heartbeats_and_stops_its_old_tasks_when_it_thaws() {
    // Short, so the story is quick; long enough that worker B, which keeps beating, is not lost on a busy machine.
    let period = Duration::from_secs(1);
    let c = cluster(Some(period)).await;
    let a_tasks = c.running_per_node()[&c.a_id].clone();

    step("worker A goes silent: its connection stays open but nothing gets through");
    let lost = Instant::now();
    c.proxy.freeze(true);
    c.wait_replaced(&a_tasks, "heartbeat failure", lost).await;
    assert_eq!(c.a_exec.running(), a_tasks, "a silent node still runs its containers");

    step("worker A thaws");
    let back = Instant::now();
    c.proxy.freeze(false);
    c.wait_back(&a_tasks, back).await;
    c.a.shutdown().await;
    c.mgr.shutdown().await;
}
