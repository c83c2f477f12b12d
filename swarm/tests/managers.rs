//! Several managers in one process: `SwarmNode`s on 127.0.0.1 with their own ports, state dirs and
//! `TestExecutor`s, forming one Raft group over real mTLS. Stories: managers join with the manager token and
//! become voters; a follower's writes reach the leader and read back at once; the leader stops → another is
//! elected, writes succeed, no slot runs twice, and the old leader catches up when it returns; two of three
//! managers gone → writes fail fast with the quorum-loss error while reads answer; `--force-new-cluster`;
//! promote/demote; a manager leaves only when a quorum stays. (A manager joining after 20,000 writes is in
//! `snapshot_join.rs`, a binary of its own so its load does not share a process with these.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeRole, Reachability, ServiceSpec, TaskState};
use swarm::manager::store::{Store, StoreError};
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;

mod common;
use common::*;

type Node = SwarmNode<TestExecutor>;

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, replicas).spec;
    s.task_template.restart_policy.delay = Duration::ZERO;
    s
}

/// Three managers on 127.0.0.1: m0 inits, m1 and m2 join with the manager token. The temp dirs live as long as
/// the returned guard.
async fn three_managers() -> (Vec<tempfile::TempDir>, Node, Node, Node) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let token = manager_token(&m0);
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &token).await;
    let m2 = join_manager(dirs[2].path(), &execs[2], &addr0, &token).await;
    (dirs, m0, m1, m2)
}

async fn create(store: &Store, name: &str, replicas: u64) -> Result<String, StoreError> {
    let mut svc = swarm::testing::service(&swarm::api::new_id(), name, replicas);
    svc.spec = spec(name, replicas);
    let id = svc.id.clone();
    store.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await?;
    Ok(id)
}

/// The leading manager among `nodes` (by index), once exactly one leads.
async fn leader_of(nodes: &[&Node]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.raft().await.is_some_and(|r| r.is_leader()) {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

async fn wait_leader(nodes: &[&Node]) -> usize {
    let start = Instant::now();
    loop {
        if let Some(i) = leader_of(nodes).await {
            return i;
        }
        assert!(start.elapsed() < DEADLINE, "no single leader among {} managers", nodes.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Running tasks per slot of `service_id` (a slot running twice shows as a count of 2).
fn running_per_slot(store: &Store, service_id: &str) -> BTreeMap<u64, usize> {
    store.view(|v| {
        let mut slots = BTreeMap::new();
        for t in v.tasks_by_service(service_id) {
            if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
                *slots.entry(t.slot).or_insert(0) += 1;
            }
        }
        slots
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_fail_over_and_keep_every_write() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();

    step("m0 inits; m1 and m2 join with the manager token");
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let token = manager_token(&m0);
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &token).await;
    let m2 = join_manager(dirs[2].path(), &execs[2], &addr0, &token).await;
    let voters = m0.raft().await.unwrap().voters();
    assert_eq!(voters.len(), 3, "every manager is a voter: {voters:?}");
    let store0 = m0.store().unwrap();
    wait_for("three managers, one leader, all reachable, in node ls", || {
        let nodes = store0.view(|v| v.nodes().cloned().collect::<Vec<_>>());
        let ms: Vec<_> = nodes.iter().filter_map(|n| n.manager_status.clone()).collect();
        let ok = nodes.len() == 3
            && nodes.iter().all(|n| n.role == NodeRole::Manager)
            && ms.iter().filter(|m| m.leader).count() == 1
            && ms.iter().all(|m| m.reachability == Reachability::Reachable);
        ok.then_some(()).ok_or_else(|| format!("{ms:?}"))
    })
    .await;

    step("a follower takes a write: forwarded to the leader, readable on the follower at once");
    let store1 = m1.store().unwrap();
    assert!(!m1.raft().await.unwrap().is_leader());
    let web = create(&store1, "web", 6).await.unwrap();
    assert!(store1.view(|v| v.service(&web).is_some()), "the follower reads its own write");
    wait_for("6 tasks running, one per slot", || {
        let slots = running_per_slot(&store1, &web);
        (slots.len() == 6 && slots.values().all(|c| *c == 1)).then_some(()).ok_or(format!("{slots:?}"))
    })
    .await;

    step("the leader stops: another is elected and takes writes; no slot runs twice");
    let nodes = [&m0, &m1, &m2];
    let old = wait_leader(&nodes).await;
    let t0 = Instant::now();
    nodes[old].shutdown().await;
    let rest: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != old).map(|(_, n)| *n).collect();
    let survivor = rest[0].store().unwrap();
    let api = loop {
        match create(&survivor, "api", 2).await {
            Ok(id) => break id,
            Err(e) => {
                assert!(t0.elapsed() < DEADLINE, "no write accepted after the leader stopped: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("leader stopped → first write accepted after {:?}", t0.elapsed());
    let new = wait_leader(&rest).await;
    assert!(rest[new].raft().await.unwrap().is_leader());
    for (svc, n) in [(&web, 6), (&api, 2)] {
        wait_for("every slot running exactly once on the survivors", || {
            let slots = running_per_slot(&survivor, svc);
            let ok = slots.len() == n && slots.values().all(|c| *c == 1);
            ok.then_some(()).ok_or(format!("{svc}: {slots:?}"))
        })
        .await;
    }

    step("the old leader comes back and catches up");
    assert!(nodes[old].resume().await.unwrap());
    let back = nodes[old].store().unwrap();
    wait_for("the returning manager has the write made while it was away", || {
        back.view(|v| v.service(&api).is_some()).then_some(()).ok_or("service api".to_string())
    })
    .await;

    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_of_three_managers_fails_writes_fast_and_reads_still_answer() {
    let (_dirs, m0, m1, m2) = three_managers().await;
    let web = create(&m0.store().unwrap(), "web", 1).await.unwrap();

    for (name, survivor, gone) in [("the leader", &m0, [&m1, &m2]), ("a follower", &m1, [&m0, &m2])] {
        step(&format!("two managers stop; {name} survives"));
        let addr = survivor.info().await.remote_managers[0].clone();
        for g in gone {
            g.shutdown().await;
        }
        let store = survivor.store().unwrap();
        // Let the survivor notice: the error is about a write made once the others are gone.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let t = Instant::now();
        let e = create(&store, "late", 1).await.unwrap_err();
        let took = t.elapsed();
        eprintln!("write with quorum lost failed after {took:?}: {e}");
        assert!(matches!(e, StoreError::QuorumLost { .. }), "{e:?}");
        assert!(e.to_string().starts_with("no leader: quorum lost (reachable managers: "), "{e}");
        assert!(e.to_string().contains(&addr), "the survivor lists itself: {e}");
        assert!(took < Duration::from_secs(5), "the error comes quickly, not after a long timeout: {took:?}");
        assert!(store.view(|v| v.service(&web).is_some()), "reads still answer");
        for g in gone {
            assert!(g.resume().await.unwrap());
        }
        let all = [&m0, &m1, &m2];
        wait_leader(&all).await;
        let mut last = None;
        for _ in 0..100 {
            match create(&survivor.store().unwrap(), &format!("back-{}", name.replace(' ', "-")), 0).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.is_none(), "a write succeeds once the quorum is back: {last:?}");
    }
    for n in [&m0, &m1, &m2] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_a_swarm_that_lost_its_quorum() {
    let (_dirs, m0, m1, m2) = three_managers().await;
    let web = create(&m1.store().unwrap(), "web", 3).await.unwrap();
    wait_for("3 tasks running", || {
        let slots = running_per_slot(&m0.store().unwrap(), &web);
        (slots.len() == 3).then_some(()).ok_or(format!("{slots:?}"))
    })
    .await;
    let before: Vec<String> = m0.store().unwrap().view(|v| v.tasks().map(|t| t.id.clone()).collect());

    step("two of three managers stop: writes fail");
    m1.shutdown().await;
    m2.shutdown().await;
    let e = create(&m0.store().unwrap(), "late", 1).await.unwrap_err();
    assert!(matches!(e, StoreError::QuorumLost { .. }), "{e:?}");

    step("swarm init --force-new-cluster on the survivor: one manager, same services and tasks, writes work");
    m0.init(SwarmInitRequest { force_new_cluster: true, ..Default::default() }).await.unwrap();
    let raft = m0.raft().await.unwrap();
    assert_eq!(raft.voters().len(), 1);
    assert!(raft.is_leader());
    let store = m0.store().unwrap();
    assert!(store.view(|v| v.service(&web).is_some()));
    let kept = store.view(|v| before.iter().filter(|id| v.task(id).is_some()).count());
    assert_eq!(kept, before.len(), "every task is kept (those of the lost nodes are then replaced)");
    wait_for("the 3 slots running again, on the surviving node", || {
        let slots = running_per_slot(&store, &web);
        (slots.len() == 3 && slots.values().all(|c| *c == 1)).then_some(()).ok_or(format!("{slots:?}"))
    })
    .await;
    create(&store, "after", 1).await.expect("a write on the new cluster");
    let (managers, down_workers) = store.view(|v| {
        let managers = v.nodes().filter(|n| n.manager_status.is_some()).count();
        let down =
            v.nodes().filter(|n| n.role == NodeRole::Worker && n.status.state == swarm::api::NodeState::Down).count();
        (managers, down)
    });
    assert_eq!((managers, down_workers), (1, 2), "the lost managers are recorded as down workers");

    step("an old manager comes back: its Raft calls are refused; the new cluster keeps working");
    assert!(m1.resume().await.unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(m0.raft().await.unwrap().is_leader(), "the stale manager did not unseat the new leader");
    create(&store, "after-2", 0).await.expect("a write while the stale manager is up");
    assert_eq!(m0.raft().await.unwrap().voters().len(), 1);

    m1.shutdown().await;
    m0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_worker_joins_the_managers_and_a_demoted_manager_leaves_them() {
    use std::sync::Arc;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..2).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let m0 = Arc::new(m0);
    let worker_token = m0.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let w = Arc::new(new_node(dirs[1].path(), &execs[1]));
    w.join(SwarmJoinRequest {
        remote_addr: addr0.clone(),
        join_token: worker_token,
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: String::new(),
        availability: NodeAvailability::Active,
    })
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    for n in [&m0, &w] {
        SwarmNode::spawn_maintenance(n.clone(), Duration::from_millis(200), stop.clone());
    }
    let wid = w.info().await.node_id;
    let store = m0.store().unwrap();
    let set_role = |role: NodeRole| {
        let store = store.clone();
        let wid = wid.clone();
        async move {
            // Retried on a version conflict: the node's own session writes its node too (READY, its address) as
            // it restarts in its new role, and a write made meanwhile is not what this test is about.
            store
                .update_retrying(10, |tx| {
                    let mut n = tx.view().node(&wid).cloned().unwrap();
                    n.spec.desired_role = role;
                    tx.update(n);
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap()
        }
    };

    step("promote the worker: it gets a manager certificate, starts Raft and becomes a voter");
    set_role(NodeRole::Manager).await;
    let t = Instant::now();
    let raft0 = m0.raft().await.unwrap();
    wait_for("two voters", || (raft0.voters().len() == 2).then_some(()).ok_or(format!("{:?}", raft0.voters()))).await;
    eprintln!("promotion took {:?}", t.elapsed());
    assert!(w.info().await.is_manager);
    let wstore = w.store().expect("the promoted node serves the control API");
    wait_for("the promoted manager has the swarm's state", || {
        wstore
            .view(|v| v.node(&wid).map(|n| n.role))
            .filter(|r| *r == NodeRole::Manager)
            .map(|_| ())
            .ok_or("state".into())
    })
    .await;
    let svc = create(&wstore, "from-promoted", 0).await.expect("a write through the promoted manager");
    assert!(store.view(|v| v.service(&svc).is_some()));

    step("demote it: it leaves the Raft group and runs as a worker again");
    set_role(NodeRole::Worker).await;
    wait_for("one voter", || (raft0.voters().len() == 1).then_some(()).ok_or(format!("{:?}", raft0.voters()))).await;
    wait_for("the demoted node runs as a worker", || {
        let role = store.view(|v| v.node(&wid).map(|n| (n.role, n.manager_status.is_some())));
        (role == Some((NodeRole::Worker, false))).then_some(()).ok_or(format!("{role:?}"))
    })
    .await;
    let start = Instant::now();
    loop {
        let info = w.info().await;
        // During the restart the node briefly reports no membership at all.
        if info.local_node_state == "active" && !info.is_manager {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the demoted node still runs as a manager: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.raft().await.is_none());
    assert!(!dirs[1].path().join("swarm/raft").exists(), "its Raft files are gone");
    create(&store, "after-demote", 0).await.expect("the remaining manager writes alone");

    stop.cancel();
    w.shutdown().await;
    m0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_reaches_neither_raft_nor_the_control_api() {
    use swarm::transport::control::control_client::ControlClient;
    use swarm::transport::raft::raft_client::RaftClient;
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-0");
    let (m0, addr0) = init(dir.path(), &exec, None).await;
    let (cluster_id, ca_pem, ca_key) = m0.store().unwrap().view(|v| {
        let c = v.cluster().unwrap();
        (c.id.clone(), c.root_ca.ca_cert_pem.clone(), c.root_ca.ca_key_pem.clone())
    });
    let root = swarm::ca::RootCa::from_pem(&ca_pem, &ca_key).unwrap();
    let worker = swarm::ca::issue_identity(&root, "someworker", NodeRole::Worker, &cluster_id).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr0}"))
        .unwrap()
        .tls_config(swarm::ca::client_tls_config(&worker).unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let proposal = swarm::manager::store::Proposal { ops: vec![], timestamp: Default::default() };
    let e = RaftClient::new(channel.clone())
        .propose(swarm::manager::raft::wire::ProposeRequest { proposal })
        .await
        .expect_err("a worker cannot propose");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = ControlClient::new(channel)
        .list_services(swarm::api::control::ListServicesRequest::default())
        .await
        .expect_err("the control API is not on the cluster listener");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    m0.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_leaves_only_when_the_others_keep_a_quorum() {
    let (_dirs, m0, m1, m2) = three_managers().await;
    let m2_id = m2.info().await.node_id;

    step("one of three managers down: leaving another would leave 1 reachable of 2, refused without --force");
    let leader = wait_leader(&[&m0, &m1, &m2]).await;
    let (down, asker) = match leader {
        0 => (&m2, &m1),
        1 => (&m2, &m0),
        _ => (&m1, &m0),
    };
    down.shutdown().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = asker.leave(false).await.expect_err("leaving would lose the quorum");
    assert!(e.to_string().contains("Removing this node leaves 1 managers out of 2"), "{e}");
    assert!(down.resume().await.unwrap());

    step("all three up: m2 leaves without --force; it is recorded as a worker and is no longer a voter");
    // Once the leader hears from the returned manager again, m2 may go.
    let start = Instant::now();
    loop {
        match m2.leave(false).await {
            Ok(()) => break,
            Err(e) if start.elapsed() < DEADLINE => {
                eprintln!("    not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("a manager cannot leave while two stay: {e}"),
        }
    }
    let raft0 = m0.raft().await.unwrap();
    let store = m0.store().unwrap();
    wait_for("m2 recorded as a worker, two voters left", || {
        let role = store.view(|v| v.node(&m2_id).map(|n| (n.role, n.manager_status.is_some())));
        let voters = raft0.voters().len();
        (role == Some((NodeRole::Worker, false)) && voters == 2)
            .then_some(())
            .ok_or(format!("{role:?}, {voters} voters"))
    })
    .await;
    create(&store, "after-leave", 0).await.expect("the two managers left keep writing");
    m1.shutdown().await;
    m0.shutdown().await;
}
