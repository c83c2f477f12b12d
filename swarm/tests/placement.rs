//! Placement in one process: a manager and joined workers (`SwarmNode`s with `TestExecutor`s on 127.0.0.1),
//! services created through the control API. Stories: `--replicas-max-per-node 1` with more replicas than nodes
//! leaves the extra task PENDING with Docker's reason, and it runs once a node joins; `--placement-pref
//! spread=node.labels.zone` splits replicas evenly between zones whatever their node counts; tasks reserving a
//! generic resource (`--generic-resource gpu=1`) fit only as many as the nodes offer (`shoald
//! --node-generic-resource gpu=N`, here an executor describing the node so), the rest PENDING with Docker's reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use swarm::agent::exec::{ExecError, Executor};
use swarm::api::control::*;
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeDescription, NodeSpec, NodeState, PlacementPreference, ServiceMode};
use swarm::api::{ServiceSpec, Task, TaskState};
use swarm::manager::controlapi::ControlApi;
use swarm::node::{NodeConfig, SwarmNode};
use swarm::testing::{TestController, TestExecutor};
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, replicas).spec;
    s.task_template.restart_policy.delay = Duration::ZERO;
    s
}

/// A [`TestExecutor`] whose node offers generic resources, as `shoald --node-generic-resource` makes a node.
#[derive(Clone)]
struct Offering {
    inner: TestExecutor,
    generic: BTreeMap<String, u64>,
}

impl Executor for Offering {
    type Controller = TestController;

    async fn describe(&self) -> Result<NodeDescription, ExecError> {
        let mut d = self.inner.describe().await?;
        d.generic_resources = self.generic.clone();
        Ok(d)
    }

    fn controller(&self, task: &Task) -> Result<TestController, ExecError> {
        self.inner.controller(task)
    }

    async fn list_tasks(&self) -> Result<Vec<String>, ExecError> {
        self.inner.list_tasks().await
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        self.inner.remove_task(task_id).await
    }
}

/// A swarm of one node per executor (the first the manager, the others workers), every node READY: the nodes
/// and their ids. The temp dirs live as long as the returned guard.
async fn swarm_of<E: Executor + Clone>(execs: &[E]) -> (Vec<SwarmNode<E>>, Vec<String>, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = execs.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let node = |i: usize| {
        let cfg = NodeConfig { state_dir: dirs[i].path().join("swarm"), default_advertise_ip: None };
        SwarmNode::new(cfg, Arc::new(execs[i].clone()))
    };
    let mgr = node(0);
    mgr.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr = mgr.info().await.remote_managers[0].clone();
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let mut nodes = vec![mgr];
    for i in 1..execs.len() {
        let worker = node(i);
        worker
            .join(SwarmJoinRequest {
                remote_addr: addr.clone(),
                join_token: token.clone(),
                listen_addr: "127.0.0.1:0".into(),
                advertise_addr: "127.0.0.1".into(),
                availability: NodeAvailability::Active,
            })
            .await
            .unwrap_or_else(|e| panic!("worker {i} joins: {e}"));
        nodes.push(worker);
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
    (nodes, ids, dirs)
}

fn test_executors(n: usize) -> Vec<TestExecutor> {
    (0..n).map(|i| TestExecutor::new(&format!("host-{i}"))).collect()
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
fn tasks_of<E: Executor>(mgr: &SwarmNode<E>, service_id: &str) -> (BTreeMap<String, usize>, Vec<String>) {
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
    let execs = test_executors(2);
    let (nodes, ids, _dirs) = swarm_of(&execs).await;
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
    let execs = test_executors(4);
    let (nodes, ids, _dirs) = swarm_of(&execs).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_resources_fit_only_as_many_tasks_as_the_nodes_offer() {
    // The manager offers 1 gpu, the worker 2.
    let execs: Vec<Offering> = [1, 2]
        .iter()
        .enumerate()
        .map(|(i, n)| Offering {
            inner: TestExecutor::new(&format!("host-{i}")),
            generic: [("gpu".to_string(), *n)].into(),
        })
        .collect();
    let (nodes, ids, _dirs) = swarm_of(&execs).await;
    let api = nodes[0].control_api();
    let offered = nodes[0].store().unwrap().view(|v| {
        ids.iter().map(|id| v.node(id).unwrap().description.generic_resources.get("gpu").copied()).collect::<Vec<_>>()
    });
    assert_eq!(offered, vec![Some(1), Some(2)], "each node's description carries what it offers");

    step("4 replicas reserving 1 gpu each: 1 on the manager, 2 on the worker, the 4th PENDING saying why");
    let mut s = spec("trainer", 4);
    s.task_template.resources.generic_reservations.insert("gpu".into(), 1);
    let svc = api.create_service(Request::new(CreateServiceRequest { spec: s })).await.unwrap().into_inner();
    let want: BTreeMap<String, usize> = [(ids[0].clone(), 1), (ids[1].clone(), 2)].into();
    wait_for("3 running as the gpus allow, 1 pending with Docker's reason", || {
        let (running, pending) = tasks_of(&nodes[0], &svc.id);
        if running == want && pending == ["no suitable node (insufficient resources on 2 nodes)"] {
            Ok(())
        } else {
            Err(format!("running {running:?}; pending {pending:?}"))
        }
    })
    .await;

    step("scaled to 3: nothing is left pending, 1 runs on the manager and 2 on the worker");
    let cur = api.get_service(Request::new(GetRequest { id_or_name: svc.id.clone() })).await.unwrap().into_inner();
    let mut spec3 = cur.spec;
    spec3.mode = ServiceMode::Replicated { replicas: 3 };
    let req = UpdateServiceRequest { id: cur.id, version: cur.meta.version, spec: spec3, rollback: false };
    api.update_service(Request::new(req)).await.expect("scale");
    wait_for("3 running, none pending", || {
        let (running, pending) = tasks_of(&nodes[0], &svc.id);
        let runtimes: Vec<usize> = execs.iter().map(|e| e.inner.running().len()).collect();
        if running == want && pending.is_empty() && runtimes == [1, 2] {
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
