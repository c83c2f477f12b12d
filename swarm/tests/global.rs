//! A global service follows the nodes, in one process: a manager and a worker (`SwarmNode`s with `TestExecutor`s
//! on 127.0.0.1). Story: the service runs on the manager alone; a worker that joins gets a task; draining the
//! worker stops it there; active again, the worker gets a new one; the worker's daemon stops and, once the node is
//! DOWN, its task is shut down; the manager's task runs throughout.

use std::collections::BTreeMap;
use std::path::Path;
use swarm::api::control::*;
use swarm::api::membership::SwarmJoinRequest;
use swarm::api::{NodeAvailability, NodeSpec, NodeState, ServiceMode, TaskState};
use swarm::manager::controlapi::ControlApi;
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

/// Tasks of `service_id` desired and observed RUNNING, per node id.
fn running_per_node(mgr: &SwarmNode<TestExecutor>, service_id: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    mgr.store().unwrap().view(|v| {
        for t in v.tasks_by_service(service_id) {
            if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                out.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
        }
    });
    out
}

/// The one running task on `node_id`, when `per_node` has exactly that.
fn one_on(per_node: &BTreeMap<String, Vec<String>>, node_id: &str) -> Option<String> {
    match per_node.get(node_id).map(Vec::as_slice) {
        Some([id]) => Some(id.clone()),
        _ => None,
    }
}

fn node_state(mgr: &SwarmNode<TestExecutor>, node_id: &str) -> Option<NodeState> {
    mgr.store().unwrap().view(|v| v.node(node_id).map(|n| n.status.state))
}

async fn update_node(api: &ControlApi, node: &str, change: impl FnOnce(&mut NodeSpec)) {
    let n = api.get_node(Request::new(GetRequest { id_or_name: node.into() })).await.unwrap().into_inner();
    let mut spec = n.spec.clone();
    change(&mut spec);
    api.update_node(Request::new(UpdateNodeRequest { node_id: n.id, version: n.meta.version, spec }))
        .await
        .expect("node update");
}

async fn join_worker(
    dir: &Path,
    exec: &TestExecutor,
    mgr: &SwarmNode<TestExecutor>,
) -> (SwarmNode<TestExecutor>, String) {
    let addr = mgr.info().await.remote_managers[0].clone();
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(dir, exec);
    let id = worker
        .join(SwarmJoinRequest {
            remote_addr: addr,
            join_token: token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect("the worker joins");
    (worker, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_service_follows_a_node_join_a_drain_and_a_node_going_down() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, _) = init(mdir.path(), &mexec, None).await;
    let manager_id = mgr.info().await.node_id;
    let api = mgr.control_api();

    step("a global service runs on the manager, the only node");
    let mut spec = swarm::testing::service("unused", "agent", 0).spec;
    spec.mode = ServiceMode::Global;
    let svc = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let on_manager = wait_for("the global task running on the manager", || {
        let per_node = running_per_node(&mgr, &svc.id);
        match one_on(&per_node, &manager_id) {
            Some(id) if per_node.len() == 1 && mexec.running().contains(&id) => Ok(id),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;

    step("a worker joins: it gets a task of its own");
    let (worker, worker_id) = join_worker(wdir.path(), &wexec, &mgr).await;
    let first = wait_for("a global task running on the new worker", || {
        let per_node = running_per_node(&mgr, &svc.id);
        match one_on(&per_node, &worker_id) {
            Some(id) if wexec.running() == [id.clone()] => Ok(id),
            _ => Err(format!("{per_node:?}; worker runs {:?}", wexec.running())),
        }
    })
    .await;

    step("drain the worker: its task stops there");
    update_node(&api, &worker_id, |s| s.availability = NodeAvailability::Drain).await;
    wait_for("the worker's task shut down and stopped", || {
        let state = mgr.store().unwrap().view(|v| v.task(&first).map(|t| (t.desired_state, t.status.state)));
        if state == Some((TaskState::Shutdown, TaskState::Shutdown)) && wexec.running().is_empty() {
            Ok(())
        } else {
            Err(format!("task {state:?}; worker runs {:?}", wexec.running()))
        }
    })
    .await;

    step("active again: the worker gets a new task");
    update_node(&api, &worker_id, |s| s.availability = NodeAvailability::Active).await;
    let second = wait_for("a new global task running on the worker", || {
        let per_node = running_per_node(&mgr, &svc.id);
        match one_on(&per_node, &worker_id) {
            Some(id) if id != first && wexec.running() == [id.clone()] => Ok(id),
            _ => Err(format!("{per_node:?}; worker runs {:?}", wexec.running())),
        }
    })
    .await;

    step("the worker's daemon stops: once the node is DOWN its task is shut down");
    worker.shutdown().await;
    drop(worker);
    wait_for("the worker DOWN and its task desired SHUTDOWN", || {
        let desired = mgr.store().unwrap().view(|v| v.task(&second).map(|t| t.desired_state));
        let state = node_state(&mgr, &worker_id);
        if state == Some(NodeState::Down) && desired == Some(TaskState::Shutdown) {
            Ok(())
        } else {
            Err(format!("node {state:?}; task desired {desired:?}"))
        }
    })
    .await;
    let per_node = running_per_node(&mgr, &svc.id);
    assert_eq!(
        per_node,
        BTreeMap::from([(manager_id.clone(), vec![on_manager.clone()])]),
        "the manager's task ran throughout"
    );
    assert_eq!(mexec.running(), vec![on_manager]);
    mgr.shutdown().await;
}
