//! A whole swarm node in one process: real Raft on disk, real mTLS dispatcher sessions, the real agent — with the
//! in-memory `TestExecutor` standing in for containerd. Stories: convergence, replacement of a dead task,
//! scaling, restart policies, a daemon restart that re-adopts tasks, and the listener's authentication.

use std::time::{Duration, Instant};
use swarm::api::control::*;
use swarm::api::membership::SwarmInitRequest;
use swarm::api::{RestartCondition, ServiceMode, ServiceSpec, Task, TaskState};
use swarm::manager::controlapi::ControlApi;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

async fn tasks(api: &ControlApi, service_id: &str) -> Vec<Task> {
    api.list_tasks(Request::new(ListTasksRequest { service_ids: vec![service_id.into()], ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .tasks
}

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, replicas).spec;
    s.task_template.restart_policy.delay = Duration::ZERO;
    s
}

/// Waits until `n` tasks are desired and running, and the executor runs exactly them.
async fn converged(api: &ControlApi, exec: &TestExecutor, service_id: &str, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ts = tasks(api, service_id).await;
        let mut running: Vec<String> = ts
            .iter()
            .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
            .map(|t| t.id.clone())
            .collect();
        running.sort();
        let live = ts.iter().filter(|t| t.desired_state <= TaskState::Running).count();
        let mine: Vec<String> = exec.running().into_iter().filter(|id| ts.iter().any(|t| &t.id == id)).collect();
        if running.len() == n && live == n && mine == running {
            return running;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting for {n} running tasks; running {running:?}, live {live}, \
                 executor {:?}",
                exec.running()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets a replicated service's replica count.
async fn scale(api: &ControlApi, service_id: &str, replicas: u64) {
    let cur = api.get_service(Request::new(GetRequest { id_or_name: service_id.into() })).await.unwrap().into_inner();
    let mut spec = cur.spec;
    spec.mode = ServiceMode::Replicated { replicas };
    api.update_service(Request::new(UpdateServiceRequest {
        id: service_id.into(),
        version: cur.meta.version,
        spec,
        rollback: false,
    }))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_converges_replaces_scales_and_readopts() {
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-a");
    let node = new_node(dir.path(), &exec);

    step("init a one-manager swarm on loopback");
    let node_id =
        node.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let api = node.control_api();
    let info = node.info().await;
    assert!(info.is_manager);
    assert_eq!((info.managers, info.nodes), (1, 1));
    wait_for("the agent's session to mark the node ready", || {
        let n = node.store().ok_or("no store yet")?.view(|v| v.node(&node_id).cloned()).ok_or("no node")?;
        if n.status.state == swarm::api::NodeState::Ready && n.description.hostname == "host-a" {
            Ok(())
        } else {
            Err(format!("{:?}", n.status))
        }
    })
    .await;

    step("create 3 replicas");
    let svc =
        api.create_service(Request::new(CreateServiceRequest { spec: spec("web", 3) })).await.unwrap().into_inner();
    let first = converged(&api, &exec, &svc.id, 3).await;
    let slots: std::collections::BTreeSet<u64> = tasks(&api, &svc.id).await.iter().map(|t| t.slot).collect();
    assert_eq!(slots, [1, 2, 3].into_iter().collect());

    step("a task's container dies: replaced in its slot, old one FAILED with the exit code");
    assert!(exec.exit(&first[0], 137));
    let after = converged(&api, &exec, &svc.id, 3).await;
    assert!(!after.contains(&first[0]));
    let old = tasks(&api, &svc.id).await.into_iter().find(|t| t.id == first[0]).unwrap();
    assert_eq!(old.status.state, TaskState::Failed);
    assert_eq!(old.status.err, "task: non-zero exit (137)");
    assert_eq!(old.desired_state, TaskState::Shutdown);

    step("scale 3 → 10 → 1");
    scale(&api, &svc.id, 10).await;
    converged(&api, &exec, &svc.id, 10).await;
    scale(&api, &svc.id, 1).await;
    let one = converged(&api, &exec, &svc.id, 1).await;
    // Scaling down removes the highest slots, history included; slot 1 keeps its history (the failed task, if it
    // was slot 1's).
    let kept = tasks(&api, &svc.id).await.into_iter().find(|t| t.id == one[0]).unwrap().slot;
    assert_eq!(kept, 1);
    let want = if old.slot == kept { 2 } else { 1 };
    wait_for("scaled-down tasks to be deleted by the reaper", || {
        let ts: Vec<(u64, TaskState)> =
            node.store().unwrap().view(|v| v.tasks_by_service(&svc.id).map(|t| (t.slot, t.desired_state)).collect());
        if ts.len() == want && ts.iter().all(|(slot, _)| *slot == kept) {
            Ok(())
        } else {
            Err(format!("{want} tasks, all in slot {kept}; the store has (slot, desired) {ts:?}"))
        }
    })
    .await;

    step("restart the node on the same state: the running task is re-adopted, not replaced");
    node.shutdown().await;
    drop(node);
    let node = new_node(dir.path(), &exec);
    assert!(node.resume().await.unwrap(), "membership resumed from the state dir");
    let api = node.control_api();
    wait_for("the control API to answer after the restart", || node.store().map(|_| ()).ok_or("no store".to_string()))
        .await;
    // A barrier rather than a pause: the new task's assignment reaches the agent after the complete set that
    // re-adopted the old one, and the orchestrator pass that creates it has reconciled every service since the
    // restart. Had either replaced or dropped the old task, it would be gone by now.
    scale(&api, &svc.id, 2).await;
    let again = converged(&api, &exec, &svc.id, 2).await;
    assert!(again.contains(&one[0]), "task {} re-adopted, not replaced: running {again:?}", one[0]);

    step("--restart-condition none: a dead task stays dead");
    let mut s = spec("once", 2);
    s.task_template.restart_policy.condition = RestartCondition::None;
    let once = api.create_service(Request::new(CreateServiceRequest { spec: s })).await.unwrap().into_inner();
    let ids = converged(&api, &exec, &once.id, 2).await;
    assert!(exec.exit(&ids[0], 1));
    // The restart supervisor shuts an ended task down and creates any replacement in the same write.
    wait_for("the dead task to be FAILED and shut down by the restart supervisor", || {
        let t = node.store().unwrap().view(|v| v.task(&ids[0]).cloned()).ok_or("the task is gone")?;
        if t.status.state == TaskState::Failed && t.desired_state == TaskState::Shutdown {
            Ok(())
        } else {
            Err(format!("state {}, desired {}", t.status.state, t.desired_state))
        }
    })
    .await;
    // A barrier: the pass that scales "web" also reconciles "once"; a replacement for the dead slot would be
    // created by then.
    scale(&api, &svc.id, 3).await;
    converged(&api, &exec, &svc.id, 3).await;
    let ts = tasks(&api, &once.id).await;
    assert_eq!(ts.len(), 2, "no replacement: {ts:?}");
    assert!(ts.iter().any(|t| t.id == ids[0] && t.status.state == TaskState::Failed));
    assert_eq!(exec.running().iter().filter(|id| ids.contains(id)).collect::<Vec<_>>(), vec![&ids[1]]);

    step("service rm: every task stops and is deleted");
    api.remove_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap();
    api.remove_service(Request::new(GetRequest { id_or_name: "once".into() })).await.unwrap();
    wait_for("every container stopped and every task deleted", || {
        let left = exec.running();
        let (services, tasks) = node.store().unwrap().view(|v| (v.services().count(), v.tasks().count()));
        if left.is_empty() && (services, tasks) == (0, 0) {
            Ok(())
        } else {
            Err(format!("running containers {left:?}, {services} services and {tasks} tasks in the store"))
        }
    })
    .await;

    step("leave: state dir gone");
    node.leave(true).await.unwrap();
    assert!(!dir.path().join("swarm/node.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_listener_authenticates_callers() {
    use swarm::api::dispatch::SessionRequest;
    use swarm::ca::{bootstrap_client_tls_config, client_tls_config, issue_identity, RootCa};
    use swarm::transport::dispatcher::dispatcher_client::DispatcherClient;
    use tonic::transport::Endpoint;

    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-a");
    let node = new_node(dir.path(), &exec);
    node.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr = node.info().await.remote_managers[0].clone();
    let identity = swarm::ca::NodeIdentity::load(&dir.path().join("swarm/certificates")).unwrap();
    let description = exec.describe_for_tests().await;

    step("a client without a certificate connects but is not authenticated");
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(bootstrap_client_tls_config(&identity.ca_cert_pem))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = DispatcherClient::new(ch)
        .session(SessionRequest { description: description.clone() })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    step("a certificate from another CA is refused at the handshake");
    let other = RootCa::generate().unwrap();
    let stranger =
        issue_identity(&other, &identity.node_id, swarm::api::NodeRole::Manager, &identity.cluster_id).unwrap();
    let mut tls = client_tls_config(&stranger).unwrap();
    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(&identity.ca_cert_pem));
    let refused =
        match Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await {
            Err(_) => true,
            Ok(ch) => {
                DispatcherClient::new(ch).session(SessionRequest { description: description.clone() }).await.is_err()
            }
        };
    assert!(refused, "a foreign certificate must not open a session");

    step("a worker certificate of this cluster for an unknown node is denied");
    let root = RootCa::from_pem(
        &identity.ca_cert_pem,
        &node.store().unwrap().view(|v| v.cluster().unwrap().root_ca.ca_key_pem.clone()),
    )
    .unwrap();
    let worker = issue_identity(&root, "nosuchnode", swarm::api::NodeRole::Worker, &identity.cluster_id).unwrap();
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client_tls_config(&worker).unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = DispatcherClient::new(ch).session(SessionRequest { description }).await.expect_err("denied");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("nosuchnode"));
    node.leave(true).await.unwrap();
}
