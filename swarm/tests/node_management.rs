//! Node management, in one process: a manager and a joined worker (`SwarmNode`s with `TestExecutor`s on
//! 127.0.0.1), driven through the control API as `shoal node update` / `node rm` drive it. Stories: a paused
//! worker keeps its tasks but takes no new ones; draining it moves all its tasks to the manager; made active again it takes new tasks; removing a label a task's
//! constraint needs moves the task (PENDING with the scheduler's reason while nothing fits); a READY worker is
//! not removed without --force, a DOWN one is, and its id is recorded as removed. A global service's task stops on
//! the drained worker and comes back when it is active again.

use std::collections::BTreeMap;
use std::time::Duration;
use swarm::api::control::*;
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{Constraint, NodeAvailability, NodeSpec, NodeState, ServiceMode, ServiceSpec, TaskState};
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

/// Running tasks (desired and observed) of `service_id` per node id, from the manager's store.
fn running_per_node(mgr: &SwarmNode<TestExecutor>, service_id: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    mgr.store().unwrap().view(|v| {
        for t in v.tasks_by_service(service_id) {
            if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                out.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
        }
    });
    out.values_mut().for_each(|ids| ids.sort());
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
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

/// `shoal service scale`.
async fn scale(api: &ControlApi, service_id: &str, replicas: u64) {
    let cur = api.get_service(Request::new(GetRequest { id_or_name: service_id.into() })).await.unwrap().into_inner();
    let mut spec = cur.spec;
    spec.mode = ServiceMode::Replicated { replicas };
    let req = UpdateServiceRequest { id: cur.id, version: cur.meta.version, spec, rollback: false };
    api.update_service(Request::new(req)).await.expect("scale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_activate_relabel_and_remove_a_worker() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let mgr = new_node(mdir.path(), &mexec);
    mgr.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr = mgr.info().await.remote_managers[0].clone();
    let manager_id = mgr.info().await.node_id;
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(wdir.path(), &wexec);
    let worker_id = worker
        .join(SwarmJoinRequest {
            remote_addr: addr,
            join_token: token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect("the worker joins");
    let api = mgr.control_api();

    step("4 replicas spread 2/2 over the manager and the worker");
    let svc =
        api.create_service(Request::new(CreateServiceRequest { spec: spec("web", 4) })).await.unwrap().into_inner();
    wait_for("2 running tasks on each node", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let on = |id: &str| per_node.get(id).cloned().unwrap_or_default();
        if on(&manager_id).len() == 2 && on(&worker_id).len() == 2 && sorted(wexec.running()) == on(&worker_id) {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; worker runs {:?}", wexec.running()))
        }
    })
    .await;

    step("pause the worker: it keeps its 2 tasks, and scaling to 6 places both new ones on the manager");
    update_node(&api, "host-w", |s| s.availability = NodeAvailability::Pause).await;
    let worker_kept = running_per_node(&mgr, &svc.id).get(&worker_id).cloned().unwrap_or_default();
    scale(&api, &svc.id, 6).await;
    wait_for("4 running on the manager, the worker's same 2 still running there", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let w = per_node.get(&worker_id).cloned().unwrap_or_default();
        let m = per_node.get(&manager_id).cloned().unwrap_or_default();
        if m.len() == 4 && w == worker_kept && sorted(wexec.running()) == w {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; worker runs {:?}; kept {worker_kept:?}", wexec.running()))
        }
    })
    .await;

    step("drain the worker: its tasks stop there and all 6 slots run on the manager");
    update_node(&api, "host-w", |s| s.availability = NodeAvailability::Drain).await;
    wait_for("6 running tasks on the manager, none meant to run on the worker, none running there", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let on_worker = mgr
            .store()
            .unwrap()
            .view(|v| v.tasks_by_node(&worker_id).filter(|t| t.desired_state <= TaskState::Running).count());
        let m = per_node.get(&manager_id).cloned().unwrap_or_default();
        if m.len() == 6 && on_worker == 0 && wexec.running().is_empty() && sorted(mexec.running()) == m {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; {on_worker} live on the worker, which runs {:?}", wexec.running()))
        }
    })
    .await;
    let slots: Vec<u64> = mgr.store().unwrap().view(|v| {
        let mut s: Vec<u64> =
            v.tasks_by_service(&svc.id).filter(|t| t.desired_state == TaskState::Running).map(|t| t.slot).collect();
        s.sort();
        s
    });
    assert_eq!(slots, vec![1, 2, 3, 4, 5, 6], "the worker's slots were refilled in place");

    step("make the worker active again: scaling to 8 places the 2 new tasks there");
    update_node(&api, &worker_id, |s| s.availability = NodeAvailability::Active).await;
    scale(&api, &svc.id, 8).await;
    wait_for("6 running on the manager and 2 on the worker", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let w = per_node.get(&worker_id).cloned().unwrap_or_default();
        let m = per_node.get(&manager_id).cloned().unwrap_or_default();
        if m.len() == 6 && w.len() == 2 && sorted(wexec.running()) == w {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; worker runs {:?}", wexec.running()))
        }
    })
    .await;

    step("a task pinned by node.labels.zone==east runs on the labelled worker");
    update_node(&api, &worker_id, |s| {
        s.annotations.labels.insert("zone".into(), "east".into());
    })
    .await;
    let mut pinned_spec = spec("pinned", 1);
    pinned_spec.task_template.placement.constraints = vec![Constraint::parse("node.labels.zone==east").unwrap()];
    let pinned =
        api.create_service(Request::new(CreateServiceRequest { spec: pinned_spec })).await.unwrap().into_inner();
    let first = wait_for("the pinned task running on the worker", || {
        let per_node = running_per_node(&mgr, &pinned.id);
        match per_node.get(&worker_id) {
            Some(ids) if ids.len() == 1 && wexec.running().contains(&ids[0]) => Ok(ids[0].clone()),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;

    step("remove the label: the task is shut down and its replacement waits, PENDING, with the reason");
    update_node(&api, &worker_id, |s| {
        s.annotations.labels.remove("zone");
    })
    .await;
    wait_for("the old task stopped and a PENDING replacement explaining why", || {
        let (old, pending) = mgr.store().unwrap().view(|v| {
            let old = v.task(&first).map(|t| (t.desired_state, t.status.state));
            let pending: Vec<String> = v
                .tasks_by_service(&pinned.id)
                .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Pending)
                .map(|t| t.status.err.clone())
                .collect();
            (old, pending)
        });
        let want = "no suitable node (scheduling constraints not satisfied on 2 nodes)";
        if old == Some((TaskState::Shutdown, TaskState::Shutdown))
            && pending == [want]
            && !wexec.running().contains(&first)
        {
            Ok(())
        } else {
            Err(format!("old task {old:?}; pending {pending:?}; worker runs {:?}", wexec.running()))
        }
    })
    .await;

    step("label the manager instead: the task runs there");
    update_node(&api, &manager_id, |s| {
        s.annotations.labels.insert("zone".into(), "east".into());
    })
    .await;
    wait_for("the pinned task running on the manager", || {
        let per_node = running_per_node(&mgr, &pinned.id);
        match per_node.get(&manager_id) {
            Some(ids) if ids.len() == 1 && ids[0] != first && per_node.len() == 1 => Ok(()),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;

    step("a global service runs one task per node; draining the worker stops its task there");
    let mut global_spec = spec("agent", 0);
    global_spec.mode = ServiceMode::Global;
    let global =
        api.create_service(Request::new(CreateServiceRequest { spec: global_spec })).await.unwrap().into_inner();
    let on_worker = wait_for("the global task running on both nodes", || {
        let per_node = running_per_node(&mgr, &global.id);
        match (per_node.get(&manager_id), per_node.get(&worker_id)) {
            (Some(m), Some(w)) if m.len() == 1 && w.len() == 1 && wexec.running().contains(&w[0]) => Ok(w[0].clone()),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;
    update_node(&api, &worker_id, |s| s.availability = NodeAvailability::Drain).await;
    wait_for("the worker's global task stopped, the manager's still running", || {
        let per_node = running_per_node(&mgr, &global.id);
        let stopped = mgr.store().unwrap().view(|v| v.task(&on_worker).map(|t| t.status.state));
        if stopped == Some(TaskState::Shutdown) && !wexec.running().contains(&on_worker) && per_node.len() == 1 {
            Ok(())
        } else {
            Err(format!("old task {stopped:?}; running {per_node:?}"))
        }
    })
    .await;

    step("active again, the worker gets a new global task");
    update_node(&api, &worker_id, |s| s.availability = NodeAvailability::Active).await;
    wait_for("a new global task running on the worker", || {
        let per_node = running_per_node(&mgr, &global.id);
        match per_node.get(&worker_id) {
            Some(w) if w.len() == 1 && w[0] != on_worker && wexec.running().contains(&w[0]) => Ok(()),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;

    step("a READY worker is not removed without --force");
    let e = api
        .remove_node(Request::new(RemoveNodeRequest { node_id: worker_id.clone(), force: false }))
        .await
        .expect_err("the worker is up");
    assert_eq!(e.message(), format!("node {worker_id} is not down and can't be removed"));

    step("the worker's daemon stops: once it is DOWN it is removed, and recorded as removed");
    worker.shutdown().await;
    drop(worker);
    wait_for("the worker DOWN", || {
        let s = mgr.store().unwrap().view(|v| v.node(&worker_id).map(|n| n.status.state));
        if s == Some(NodeState::Down) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    api.remove_node(Request::new(RemoveNodeRequest { node_id: "host-w".into(), force: false }))
        .await
        .expect("a DOWN worker is removed");
    let (gone, removed, nodes) = mgr.store().unwrap().view(|v| {
        (v.node(&worker_id).is_none(), v.cluster().unwrap().removed_nodes.contains(&worker_id), v.nodes().count())
    });
    assert!(gone && removed, "node deleted: {gone}; recorded as removed: {removed}");
    assert_eq!(nodes, 1);
    wait_for("all 8 web replicas running on the manager", || {
        let per_node = running_per_node(&mgr, &svc.id);
        match per_node.get(&manager_id) {
            Some(ids) if ids.len() == 8 && per_node.len() == 1 => Ok(()),
            _ => Err(format!("{per_node:?}")),
        }
    })
    .await;
    mgr.leave(true).await.unwrap();
}
