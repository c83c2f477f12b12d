//! Certificate renewal keeps every session up: two managers and a worker in one process with 30 s certificates
//! (the smallest `--cert-expiry`) and maintenance every 200 ms renew several times each, while the Raft leader
//! stays, the worker stays READY, and no agent session is replaced; after the first certificates have expired,
//! new connections (a follower's forwarded write over a fresh Raft channel, NodeCA calls) work with the renewed ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeState, TaskState};
use swarm::ca::NodeIdentity;
use swarm::manager::store::StoreError;
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

type Node = SwarmNode<TestExecutor>;

const CERT_EXPIRY: Duration = Duration::from_secs(30);

async fn join(dir: &Path, exec: &TestExecutor, remote: &str, token: &str) -> Node {
    let node = new_node(dir, exec);
    node.join(SwarmJoinRequest {
        remote_addr: remote.into(),
        join_token: token.into(),
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: "127.0.0.1".into(),
        availability: NodeAvailability::Active,
    })
    .await
    .unwrap_or_else(|e| panic!("joining: {e}"));
    node
}

/// The certificate saved in a node's state dir (loaded as the node would after a restart).
fn saved(dir: &Path) -> NodeIdentity {
    NodeIdentity::load(&dir.join("swarm").join("certificates")).expect("a coherent saved identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_every_session_and_the_leader() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();

    step("m0 inits with --cert-expiry 30s; m1 joins as a manager, w as a worker");
    let m0 = new_node(dirs[0].path(), &execs[0]);
    m0.init(SwarmInitRequest {
        listen_addr: "127.0.0.1:0".into(),
        cert_expiry: Some(CERT_EXPIRY),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr0 = m0.info().await.remote_managers[0].clone();
    let tokens = m0.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.clone());
    let m1 = join(dirs[1].path(), &execs[1], &addr0, &tokens.manager).await;
    let w = join(dirs[2].path(), &execs[2], &addr0, &tokens.worker).await;
    let nodes: Vec<Arc<Node>> = vec![Arc::new(m0), Arc::new(m1), Arc::new(w)];
    let names = ["m0", "m1", "w"];
    let worker_id = nodes[2].info().await.node_id;
    let store0 = nodes[0].store().unwrap();
    wait_for("the worker READY", || {
        let state = store0.view(|v| v.node(&worker_id).map(|n| n.status.state));
        (state == Some(NodeState::Ready)).then_some(()).ok_or_else(|| format!("{state:?}"))
    })
    .await;

    let first: Vec<NodeIdentity> = dirs.iter().map(|d| saved(d.path())).collect();
    let first_expiry = first.iter().map(|i| i.not_after()).max().unwrap();
    let mut sessions = Vec::new();
    for (n, name) in nodes.iter().zip(names) {
        let s = n.agent_status().await.unwrap().session_id;
        assert!(s.is_some(), "{name} has an agent session");
        sessions.push(s);
    }
    let raft0 = nodes[0].raft().await.unwrap();
    let leader = raft0.metrics().borrow().current_leader.expect("m0 leads");
    let term = raft0.metrics().borrow().current_term;

    step("maintenance every 200 ms on every node; renewals until the first certificates expired");
    let stop = CancellationToken::new();
    for n in &nodes {
        SwarmNode::spawn_maintenance(n.clone(), Duration::from_millis(200), stop.clone());
    }
    let start = Instant::now();
    let mut renewals: BTreeMap<&str, Vec<String>> = names.iter().map(|n| (*n, Vec::new())).collect();
    loop {
        for (i, name) in names.iter().enumerate() {
            let now = saved(dirs[i].path());
            let seen = renewals.get_mut(name).unwrap();
            if now.cert_pem != first[i].cert_pem && seen.last() != Some(&now.cert_pem) {
                eprintln!("{name} renewed after {:?}", start.elapsed());
                seen.push(now.cert_pem.clone());
            }
            let s = nodes[i].agent_status().await.unwrap().session_id;
            assert_eq!(s, sessions[i], "{name}'s agent session was replaced after {:?}", start.elapsed());
        }
        let m = raft0.metrics().borrow().clone();
        assert_eq!((m.current_leader, m.current_term), (Some(leader), term), "the leader changed");
        let state = store0.view(|v| v.node(&worker_id).map(|n| n.status.state));
        assert_eq!(state, Some(NodeState::Ready), "the worker left READY after {:?}", start.elapsed());

        let expired = SystemTime::now() > first_expiry + Duration::from_secs(1);
        if expired && renewals.values().all(|r| r.len() >= 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "after {:?}: renewals {:?}, first certificates expired: {expired}",
            start.elapsed(),
            renewals.iter().map(|(n, r)| (*n, r.len())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, name) in names.iter().enumerate() {
        let now = saved(dirs[i].path());
        assert!(now.not_after() > first[i].not_after(), "{name}'s saved certificate is newer");
        assert_eq!(now.node_id, first[i].node_id, "{name} keeps its node id");
        // What new connections present is what was saved (swapped in, not only written); polled, as a renewal
        // may land between the two reads.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let live = nodes[i].identity().await.unwrap();
            if live == saved(dirs[i].path()) {
                break;
            }
            assert!(Instant::now() < deadline, "{name} presents a certificate other than the one it saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    step("with every first certificate expired: a follower's write over a fresh Raft connection, tasks run");
    let raft1 = nodes[1].raft().await.unwrap();
    raft1.peers().forget(&addr0);
    let store1 = nodes[1].store().unwrap();
    let mut svc = swarm::testing::service(&swarm::api::new_id(), "after-expiry", 3);
    svc.spec.task_template.restart_policy.delay = Duration::ZERO;
    let id = svc.id.clone();
    store1.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await.expect("a write through the follower");
    wait_for("3 tasks running", || {
        let running = store0.view(|v| v.tasks_by_service(&id).filter(|t| t.status.state == TaskState::Running).count());
        (running == 3).then_some(()).ok_or_else(|| format!("{running} running"))
    })
    .await;
    let m = raft0.metrics().borrow().clone();
    assert_eq!((m.current_leader, m.current_term), (Some(leader), term), "the leader changed");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(nodes[i].agent_status().await.unwrap().session_id, sessions[i], "{name}'s session");
    }

    stop.cancel();
    for n in nodes.iter().rev() {
        n.shutdown().await;
    }
}
