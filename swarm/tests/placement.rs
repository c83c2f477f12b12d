//! Placement in one process: a manager and joined workers (`SwarmNode`s with `TestExecutor`s on 127.0.0.1),
//! services created through the control API. Stories: `--replicas-max-per-node 1` with more replicas than nodes
//! leaves the extra task PENDING with Docker's reason, and it runs once a node joins; `--placement-pref
//! spread=node.labels.zone` splits replicas evenly between zones whatever their node counts.

use std::collections::BTreeMap;
use std::time::Duration;
use swarm::api::control::*;
use swarm::api::{NodeSpec, NodeState, PlacementPreference, ServiceSpec, TaskState};
use swarm::manager::controlapi::ControlApi;
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, replicas).spec;
    s.task_template.restart_policy.delay = Duration::ZERO;
    s
}

/// A swarm of a manager and `workers` workers, every node READY: the nodes (manager first), their executors
/// and their ids. The temp dirs live as long as the returned guard.
async fn swarm_of(
    workers: usize,
) -> (Vec<SwarmNode<TestExecutor>>, Vec<TestExecutor>, Vec<String>, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..=workers).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<TestExecutor> = (0..=workers).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (mgr, addr) = init(dirs[0].path(), &execs[0], None).await;
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let mut nodes = vec![mgr];
    for i in 1..=workers {
        nodes.push(join_manager(dirs[i].path(), &execs[i], &addr, &token).await);
    }
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(n.info().await.node_id);
    }
    wait_for("every node READY", || {
        let states: Vec<NodeState> = nodes[0]
            .store()
            .unwrap()
            .view(|v| ids.iter().map(|id| v.node(id).map(|n| n.status.state).unwrap_or(NodeState::Unknown)).collect());
        if states.iter().all(|s| *s == NodeState::Ready) {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;
    (nodes, execs, ids, dirs)
}

/// `shoal node update`: read the node, change its spec, write it back with the version read.
async fn update_node(api: &ControlApi, node: &str, change: impl FnOnce(&mut NodeSpec)) {
    let n = api.get_node(Request::new(GetRequest { id_or_name: node.into() })).await.unwrap().into_inner();
    let mut spec = n.spec.clone();
    change(&mut spec);
    api.update_node(Request::new(UpdateNodeRequest { node_id: n.id, version: n.meta.version, spec }))
        .await
        .expect("node update");
}

/// The service's tasks meant to run: running ones per node, and the errors of those still PENDING.
fn tasks_of(mgr: &SwarmNode<TestExecutor>, service_id: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    mgr.store().unwrap().view(|v| {
        let mut running = BTreeMap::new();
        let mut pending = Vec::new();
        for t in v.tasks_by_service(service_id).filter(|t| t.desired_state == TaskState::Running) {
            match t.status.state {
                TaskState::Running => *running.entry(t.node_id.clone()).or_default() += 1,
                TaskState::Pending => pending.push(t.status.err.clone()),
                _ => {}
            }
        }
        (running, pending)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_replicas_per_node_leaves_the_extra_task_pending_with_the_reason() {
    let (nodes, execs, ids, _dirs) = swarm_of(1).await;
    let api = nodes[0].control_api();

    step("3 replicas, at most 1 per node, on 2 nodes: 1 running on each, the third PENDING saying why");
    let mut s = spec("capped", 3);
    s.task_template.placement.max_replicas = 1;
    let svc = api.create_service(Request::new(CreateServiceRequest { spec: s })).await.unwrap().into_inner();
    wait_for("2 running (one per node) and 1 pending with Docker's reason", || {
        let (running, pending) = tasks_of(&nodes[0], &svc.id);
        let one_each = ids.iter().all(|id| running.get(id) == Some(&1));
        if one_each
            && running.len() == 2
            && pending == ["no suitable node (max replicas per node limit exceed)"]
            && execs.iter().all(|e| e.running().len() == 1)
        {
            Ok(())
        } else {
            Err(format!("running {running:?}; pending {pending:?}"))
        }
    })
    .await;

    step("a third node joins: the pending task runs there");
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-late");
    let addr = nodes[0].info().await.remote_managers[0].clone();
    let token = nodes[0].store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let late = join_manager(dir.path(), &exec, &addr, &token).await;
    let late_id = late.info().await.node_id;
    wait_for("1 running task on each of the 3 nodes, none pending", || {
        let (running, pending) = tasks_of(&nodes[0], &svc.id);
        if running.len() == 3 && running.values().all(|n| *n == 1) && pending.is_empty() && exec.running().len() == 1 {
            Ok(())
        } else {
            Err(format!("running {running:?}; pending {pending:?}; late node {late_id}"))
        }
    })
    .await;
    late.shutdown().await;
    for n in nodes.iter().rev() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_preference_splits_replicas_between_zones_not_nodes() {
    // Zone a: the manager alone; zone b: three workers. Plain spread would give zone a 1 or 2 of 6 tasks.
    let (nodes, execs, ids, _dirs) = swarm_of(3).await;
    let api = nodes[0].control_api();
    for (i, id) in ids.iter().enumerate() {
        let zone = if i == 0 { "a" } else { "b" };
        update_node(&api, id, |s| {
            s.annotations.labels.insert("zone".into(), zone.into());
        })
        .await;
    }

    step("6 replicas with --placement-pref spread=node.labels.zone: 3 in zone a, 3 in zone b (1 per node)");
    let mut s = spec("zoned", 6);
    s.task_template.placement.preferences = vec![PlacementPreference::Spread("node.labels.zone".into())];
    let svc = api.create_service(Request::new(CreateServiceRequest { spec: s })).await.unwrap().into_inner();
    wait_for("3 running on the manager and 1 on each worker", || {
        let (running, pending) = tasks_of(&nodes[0], &svc.id);
        let want: BTreeMap<String, usize> =
            ids.iter().enumerate().map(|(i, id)| (id.clone(), if i == 0 { 3 } else { 1 })).collect();
        let runtimes: Vec<usize> = execs.iter().map(|e| e.running().len()).collect();
        if running == want && pending.is_empty() && runtimes == [3, 1, 1, 1] {
            Ok(())
        } else {
            Err(format!("running {running:?}; pending {pending:?}; runtimes {runtimes:?}"))
        }
    })
    .await;
    for n in nodes.iter().rev() {
        n.shutdown().await;
    }
}
