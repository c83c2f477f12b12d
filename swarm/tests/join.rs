//! `swarm join` for workers, in one process: a manager and a worker `SwarmNode` on 127.0.0.1 with their own
//! ports, state dirs and `TestExecutor`s. Stories: the worker joins with the worker token and runs half of a
//! service's tasks, restarts and keeps them, and leaves; wrong, rotated (worker and manager), foreign and
//! malformed tokens and an unreachable manager are refused with clear errors and leave nothing behind.

use std::path::Path;
use std::time::Duration;
use swarm::api::control::*;
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeRole, NodeState, ServiceSpec, TaskState};
use swarm::ca::{JoinToken, RootCa};
use swarm::manager::controlapi::{ControlApi, WORKER_NOT_A_MANAGER};
use swarm::node::{NodeError, SwarmNode};
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

/// A manager on 127.0.0.1 (a free port): (node, its cluster address).
async fn manager(dir: &Path, exec: &TestExecutor) -> (SwarmNode<TestExecutor>, String) {
    let node = new_node(dir, exec);
    node.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr = node.info().await.remote_managers[0].clone();
    (node, addr)
}

fn tokens(node: &SwarmNode<TestExecutor>) -> (String, String) {
    node.store().unwrap().view(|v| {
        let t = &v.cluster().unwrap().root_ca.join_tokens;
        (t.worker.clone(), t.manager.clone())
    })
}

fn join_req(addr: &str, token: &str) -> SwarmJoinRequest {
    SwarmJoinRequest {
        remote_addr: addr.into(),
        join_token: token.into(),
        // The worker does not listen yet, but a fixed port would still be recorded; keep it off 2377.
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: String::new(),
        availability: NodeAvailability::Active,
    }
}

/// Running tasks of `service_id` per node id, from the manager's store.
fn running_per_node(
    node: &SwarmNode<TestExecutor>,
    service_id: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    node.store().unwrap().view(|v| {
        for t in v.tasks_by_service(service_id) {
            if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                out.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
        }
    });
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_runs_tasks_restarts_and_leaves() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, addr) = manager(mdir.path(), &mexec).await;
    let manager_id = mgr.info().await.node_id;
    let (worker_token, _) = tokens(&mgr);

    step("the worker joins with the worker token");
    let worker = new_node(wdir.path(), &wexec);
    let worker_id = worker.join(join_req(&addr, &worker_token)).await.expect("join with the worker token");
    assert_ne!(worker_id, manager_id);
    let certs = wdir.path().join("swarm/certificates");
    let identity = swarm::ca::NodeIdentity::load(&certs).unwrap();
    assert_eq!((identity.node_id.as_str(), identity.role), (worker_id.as_str(), NodeRole::Worker));
    assert_eq!(identity.cluster_id, mgr.info().await.cluster_id);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("swarm-node.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the worker's key is private");

    wait_for("the worker's Node to be a ready worker", || {
        let n = mgr.store().unwrap().view(|v| v.node(&worker_id).cloned()).ok_or("no Node object")?;
        if n.status.state == NodeState::Ready && n.role == NodeRole::Worker && n.description.hostname == "host-w" {
            Ok(n)
        } else {
            Err(format!("role {}, status {:?}, hostname {:?}", n.role, n.status, n.description.hostname))
        }
    })
    .await;
    let info = worker.info().await;
    assert_eq!(info.local_node_state, "active");
    assert!(!info.is_manager);
    assert_eq!(info.remote_managers, vec![addr.clone()]);
    assert_eq!(info.node_id, worker_id);
    assert_eq!(info.node_addr, "127.0.0.1", "a worker advertises the address it reaches the manager from");
    assert_eq!((mgr.info().await.managers, mgr.info().await.nodes), (1, 2));

    step("the control API on the worker refuses with Docker's worker message");
    let e = worker.control_api().list_nodes(Request::new(Empty {})).await.expect_err("a worker is not a manager");
    assert_eq!(e.message(), WORKER_NOT_A_MANAGER);
    let e = worker.rotate_join_token(NodeRole::Worker).await.expect_err("a worker cannot rotate tokens");
    assert_eq!(e.to_string(), WORKER_NOT_A_MANAGER);

    step("4 replicas spread 2/2 over the manager and the worker");
    let api: ControlApi = mgr.control_api();
    let svc =
        api.create_service(Request::new(CreateServiceRequest { spec: spec("web", 4) })).await.unwrap().into_inner();
    let per_node = wait_for("2 running tasks on each node, in each node's executor", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let on = |id: &str| per_node.get(id).cloned().unwrap_or_default();
        let (m, w) = (on(&manager_id), on(&worker_id));
        if m.len() == 2 && w.len() == 2 && sorted(mexec.running()) == m && sorted(wexec.running()) == w {
            Ok(per_node)
        } else {
            Err(format!("store {per_node:?}; manager runs {:?}, worker runs {:?}", mexec.running(), wexec.running()))
        }
    })
    .await;
    let worker_tasks = per_node[&worker_id].clone();

    step("the worker restarts (daemon restart): it resumes as a worker and its tasks stay");
    worker.shutdown().await;
    drop(worker);
    let worker = new_node(wdir.path(), &wexec);
    assert!(worker.resume().await.unwrap(), "membership resumed from the state dir");
    assert!(worker.store().is_none(), "a worker runs no store");
    assert!(!wdir.path().join("swarm/raft").exists(), "a worker has no Raft log");
    wait_for("the worker's agent to reconnect", || {
        let n = mgr.store().unwrap().view(|v| v.node(&worker_id).cloned()).ok_or("no Node")?;
        if n.status.state == NodeState::Ready {
            Ok(())
        } else {
            Err(format!("{:?}", n.status))
        }
    })
    .await;
    assert!(!worker.info().await.is_manager);
    // A barrier rather than a pause: scaling up reaches the worker's agent after the complete assignment set that
    // re-adopted its tasks; had it dropped or replaced them they would be gone by the time 6 converge.
    let cur = api.get_service(Request::new(GetRequest { id_or_name: svc.id.clone() })).await.unwrap().into_inner();
    let mut s = cur.spec;
    s.mode = swarm::api::ServiceMode::Replicated { replicas: 6 };
    api.update_service(Request::new(UpdateServiceRequest {
        id: svc.id.clone(),
        version: cur.meta.version,
        spec: s,
        rollback: false,
    }))
    .await
    .unwrap();
    wait_for("6 running tasks, 3 per node, the worker's old 2 among them", || {
        let per_node = running_per_node(&mgr, &svc.id);
        let w = per_node.get(&worker_id).cloned().unwrap_or_default();
        let m = per_node.get(&manager_id).cloned().unwrap_or_default();
        let kept = worker_tasks.iter().all(|t| w.contains(t));
        if m.len() == 3 && w.len() == 3 && kept && sorted(wexec.running()) == w {
            Ok(())
        } else {
            Err(format!("store {per_node:?}; worker runs {:?}; kept {worker_tasks:?}: {kept}", wexec.running()))
        }
    })
    .await;

    step("leave on the worker: no --force needed, its state and containers are gone");
    worker.leave(false).await.expect("a worker leaves without --force");
    assert!(!wdir.path().join("swarm").exists(), "the worker's state dir is removed");
    assert!(wexec.running().is_empty(), "the worker's containers are removed: {:?}", wexec.running());
    assert_eq!(worker.info().await.local_node_state, "inactive");
    assert!(matches!(worker.leave(false).await, Err(NodeError::NotMember)));
    mgr.leave(true).await.unwrap();
}

/// Every path under `dir` (empty when `dir` does not exist).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_unreachable_managers_are_refused_and_leave_nothing() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, addr) = manager(mdir.path(), &mexec).await;
    let (worker_token, manager_token) = tokens(&mgr);
    let worker = new_node(wdir.path(), &wexec);
    let nodes_before = mgr.store().unwrap().view(|v| v.nodes().count());
    let digest = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.ca_cert_digest.clone());

    // This cluster's CA digest with a secret that is not a current token.
    let wrong = JoinToken::generate(&digest);
    // A token of another cluster: another CA's digest, and the worker token's secret.
    let other = RootCa::generate().unwrap();
    let foreign = format!("{}{}", &JoinToken::generate(&other.digest())[..60], &worker_token[60..]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    step("without a client certificate: the NodeCA answers, the dispatcher refuses");
    {
        use swarm::transport::dispatcher::dispatcher_client::DispatcherClient;
        use swarm::transport::node_ca::node_c_a_client::NodeCAClient;
        let ca_pem = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.ca_cert_pem.clone());
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(swarm::ca::bootstrap_client_tls_config(&ca_pem))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let got = NodeCAClient::new(ch.clone()).get_root_ca_certificate(Empty {}).await.unwrap().into_inner();
        assert_eq!(got.certificate, ca_pem);
        let description = wexec.describe_for_tests().await;
        let e = DispatcherClient::new(ch)
            .session(swarm::api::dispatch::SessionRequest { description })
            .await
            .expect_err("no certificate, no session");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }

    step("rotate the worker token: the old one stops working");
    let rotated = mgr.rotate_join_token(NodeRole::Worker).await.unwrap();
    assert_ne!(rotated, worker_token);
    assert_eq!(tokens(&mgr), (rotated.clone(), manager_token.clone()), "only the worker token changed");
    let rotated_manager = mgr.rotate_join_token(NodeRole::Manager).await.unwrap();
    assert_ne!(rotated_manager, manager_token);

    let invalid = "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster";
    let cases: Vec<(&str, SwarmJoinRequest, String)> = vec![
        ("a wrong token", join_req(&addr, &wrong), invalid.into()),
        ("the rotated-out token", join_req(&addr, &worker_token), invalid.into()),
        (
            "another cluster's token",
            join_req(&addr, &foreign),
            format!(
                "error while validating Root CA Certificate: remote CA does not match fingerprint. Expected: {}",
                other.digest()
            ),
        ),
        ("a malformed token", join_req(&addr, "SWMTKN-1-abc"), "invalid join token: expected".into()),
        ("the rotated-out manager token", join_req(&addr, &manager_token), invalid.into()),
        ("an unreachable manager", join_req(&free, &rotated), format!("could not reach the manager at {free}")),
        (
            "an interface name as --advertise-addr",
            SwarmJoinRequest { advertise_addr: "eth0".into(), ..join_req(&addr, &rotated) },
            "invalid argument \"eth0\" for \"--advertise-addr\" flag".into(),
        ),
    ];
    for (what, req, want) in cases {
        step(what);
        let e = worker.join(req).await.expect_err(what).to_string();
        eprintln!("    refused: {e}");
        assert!(e.starts_with(&want) || e.contains(&want), "{what}: got {e:?}, want {want:?}");
        assert!(!e.contains(&worker_token[60..]) && !e.contains(&rotated[60..]), "{what}: the secret leaked: {e}");
        assert_eq!(tree(&wdir.path().join("swarm")), Vec::<String>::new(), "{what}: left files behind");
        assert_eq!(worker.info().await.local_node_state, "inactive", "{what}");
    }
    assert_eq!(mgr.store().unwrap().view(|v| v.nodes().count()), nodes_before, "no Node created for a refused join");

    step("the new token works");
    worker.join(join_req(&addr, &rotated)).await.expect("join with the rotated token");
    assert!(matches!(worker.join(join_req(&addr, &rotated)).await, Err(NodeError::AlreadyMember)));
    worker.leave(false).await.unwrap();
    mgr.leave(true).await.unwrap();
}
