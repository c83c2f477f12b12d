//! A whole swarm node in one process: real Raft on disk, real mTLS dispatcher sessions, the real agent — with the
//! in-memory `TestExecutor` standing in for containerd. Stories: convergence, replacement of a dead task,
//! scaling, restart policies, a daemon restart that re-adopts tasks, and the listener's authentication.

use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::api::control::*;
use swarm::api::membership::SwarmInitRequest;
use swarm::api::{RestartCondition, ServiceMode, ServiceSpec, Task, TaskState};
use swarm::manager::controlapi::ControlApi;
use swarm::node::{NodeConfig, SwarmNode};
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

fn step(s: &str) {
    eprintln!("--- {s}");
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > Duration::from_secs(30) => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

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
        let last = format!("running {running:?}, live {live}, executor {:?}", exec.running());
        if start.elapsed() > Duration::from_secs(30) {
            panic!("timed out waiting for {n} running tasks; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn new_node(dir: &std::path::Path, exec: &TestExecutor) -> SwarmNode<TestExecutor> {
    SwarmNode::new(NodeConfig { state_dir: dir.join("swarm"), default_advertise_ip: None }, Arc::new(exec.clone()))
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
    let scale = |n: u64| {
        let api = api.clone();
        let id = svc.id.clone();
        async move {
            let cur = api.get_service(Request::new(GetRequest { id_or_name: id.clone() })).await.unwrap().into_inner();
            let mut s = cur.spec.clone();
            s.mode = ServiceMode::Replicated { replicas: n };
            api.update_service(Request::new(UpdateServiceRequest { id, version: cur.meta.version, spec: s }))
                .await
                .unwrap();
        }
    };
    scale(10).await;
    converged(&api, &exec, &svc.id, 10).await;
    scale(1).await;
    let one = converged(&api, &exec, &svc.id, 1).await;
    wait_for("scaled-down tasks to be deleted by the reaper", || {
        let n = node
            .store()
            .unwrap()
            .view(|v| v.tasks_by_service(&svc.id).filter(|t| t.desired_state == TaskState::Remove).count());
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} tasks marked remove"))
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = converged(&api, &exec, &svc.id, 1).await;
    assert_eq!(again, one);

    step("--restart-condition none: a dead task stays dead");
    let mut s = spec("once", 2);
    s.task_template.restart_policy.condition = RestartCondition::None;
    let once = api.create_service(Request::new(CreateServiceRequest { spec: s })).await.unwrap().into_inner();
    let ids = converged(&api, &exec, &once.id, 2).await;
    exec.exit(&ids[0], 1);
    wait_for("the dead task to be FAILED", || Ok::<_, String>(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ts = tasks(&api, &once.id).await;
    assert_eq!(ts.len(), 2, "no replacement: {ts:?}");
    assert!(ts.iter().any(|t| t.id == ids[0] && t.status.state == TaskState::Failed));

    step("service rm: every task stops and is deleted");
    api.remove_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap();
    api.remove_service(Request::new(GetRequest { id_or_name: "once".into() })).await.unwrap();
    let mut left = Vec::new();
    for _ in 0..300 {
        left = exec.running();
        let n = node.store().unwrap().view(|v| v.tasks().count());
        if left.is_empty() && n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "containers left: {left:?}");

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
        .err()
        .expect("refused");
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
    let e = DispatcherClient::new(ch).session(SessionRequest { description }).await.err().expect("denied");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("nosuchnode"));
    node.leave(true).await.unwrap();
}
