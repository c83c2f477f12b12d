//! Certificates change under a running swarm without a dropped session: two managers and a worker in one process.
//!
//! Renewal: with 30 s certificates (the smallest `--cert-expiry`) and maintenance every 200 ms, every node renews
//! several times while the Raft leader stays, the worker stays READY, and no agent session is replaced; after the
//! first certificates have expired, new connections (a follower's forwarded write over a fresh Raft channel,
//! NodeCA calls) work with the renewed ones.
//!
//! Root CA rotation (`swarm ca --rotate`): every node moves to a certificate from the new root, the old root is
//! dropped once all have, with the same sessions and leader throughout; the new join token admits a new node and
//! the old one does not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use swarm::api::control::{Empty, UpdateClusterRequest};
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeState, TaskState};
use swarm::ca::NodeIdentity;
use swarm::manager::store::StoreError;
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tokio_util::sync::CancellationToken;
use tonic::Request;

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

/// The certificate saved in a node's state dir (loaded as the node would after a restart). A renewal replaces the
/// three files one by one, so a read in the middle sees a key and certificate that do not match: read again.
fn saved(dir: &Path) -> NodeIdentity {
    let dir = dir.join("swarm").join("certificates");
    let start = Instant::now();
    loop {
        match NodeIdentity::load(&dir) {
            Ok(id) => return id,
            Err(e) if start.elapsed() > Duration::from_secs(5) => panic!("no coherent saved identity in 5s: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
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
        let s = n.agent_status().await.and_then(|s| s.session_id);
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
            let s = nodes[i].agent_status().await.and_then(|s| s.session_id);
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
    store1
        .update(|tx| {
            tx.create(svc);
            Ok::<_, StoreError>(())
        })
        .await
        .expect("a write through the follower");
    wait_for("3 tasks running", || {
        let running = store0.view(|v| v.tasks_by_service(&id).filter(|t| t.status.state == TaskState::Running).count());
        (running == 3).then_some(()).ok_or_else(|| format!("{running} running"))
    })
    .await;
    let m = raft0.metrics().borrow().clone();
    assert_eq!((m.current_leader, m.current_term), (Some(leader), term), "the leader changed");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(nodes[i].agent_status().await.and_then(|s| s.session_id), sessions[i], "{name}'s session");
    }

    stop.cancel();
    for n in nodes.iter().rev() {
        n.shutdown().await;
    }
}

/// Each node's agent session id, in order.
async fn session_ids(nodes: &[Arc<Node>]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.agent_status().await.and_then(|s| s.session_id));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_moves_every_node_to_the_new_root_without_dropping_a_session() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..4).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();

    step("m0 inits; m1 joins as a manager, w as a worker; maintenance every 200 ms");
    let m0 = new_node(dirs[0].path(), &execs[0]);
    m0.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr0 = m0.info().await.remote_managers[0].clone();
    let old_tokens = m0.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.clone());
    let m1 = join(dirs[1].path(), &execs[1], &addr0, &old_tokens.manager).await;
    let w = join(dirs[2].path(), &execs[2], &addr0, &old_tokens.worker).await;
    let nodes: Vec<Arc<Node>> = vec![Arc::new(m0), Arc::new(m1), Arc::new(w)];
    let names = ["m0", "m1", "w"];
    let stop = CancellationToken::new();
    for n in &nodes {
        SwarmNode::spawn_maintenance(n.clone(), Duration::from_millis(200), stop.clone());
    }
    let store0 = nodes[0].store().unwrap();
    let old_root = store0.view(|v| v.cluster().unwrap().root_ca.ca_cert_pem.clone());
    let sessions = session_ids(&nodes).await;
    assert!(sessions.iter().all(|s| s.is_some()), "every agent has a session: {sessions:?}");
    let raft0 = nodes[0].raft().await.unwrap();
    let (leader, term) = {
        let m = raft0.metrics().borrow().clone();
        (m.current_leader.expect("m0 leads"), m.current_term)
    };

    step("swarm ca --rotate: UpdateCluster with force_rotate bumped");
    let api = nodes[0].control_api();
    let cluster = api.get_cluster(Request::new(Empty {})).await.unwrap().into_inner().cluster;
    let mut spec = cluster.spec.clone();
    spec.ca_config.force_rotate += 1;
    let rotated = api
        .update_cluster(Request::new(UpdateClusterRequest {
            version: cluster.meta.version,
            spec: spec.clone(),
            rotate_unlock_key: false,
        }))
        .await
        .expect("the rotation starts")
        .into_inner()
        .cluster;
    let new_root = rotated.root_ca.ca_cert_pem.clone();
    assert_ne!(new_root, old_root);
    assert_eq!(rotated.root_ca.previous_ca_cert_pem, old_root, "rotation in progress: both roots trusted");
    assert!(rotated.root_ca.ca_key_pem.is_empty(), "the control API never returns the CA key");
    let new_tokens = rotated.root_ca.join_tokens.clone();
    assert_ne!(new_tokens.worker, old_tokens.worker);
    assert_ne!(new_tokens.manager, old_tokens.manager);

    step("every node renews from the new root; the rotation ends; same sessions, same leader");
    let start = Instant::now();
    loop {
        let saved_roots: Vec<bool> = dirs[..3].iter().map(|d| saved(d.path()).ca_cert_pem == new_root).collect();
        let mut presented = Vec::new();
        for n in &nodes {
            presented.push(n.identity().await.unwrap().ca_cert_pem == new_root);
        }
        let root_ca = store0.view(|v| v.cluster().unwrap().root_ca.clone());
        assert_eq!(session_ids(&nodes).await, sessions, "an agent session was replaced after {:?}", start.elapsed());
        let m = raft0.metrics().borrow().clone();
        assert_eq!((m.current_leader, m.current_term), (Some(leader), term), "the leader changed");
        if saved_roots.iter().all(|b| *b) && presented.iter().all(|b| *b) && !root_ca.rotating() {
            eprintln!("rotation finished after {:?}", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after {:?}: saved certificates from the new root {saved_roots:?} ({names:?}), presented {presented:?}, \
             still pending {:?}",
            start.elapsed(),
            root_ca.rotation_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = api
        .update_cluster(Request::new(UpdateClusterRequest {
            version: store0.view(|v| v.cluster().unwrap().meta.version),
            spec: spec.clone(),
            rotate_unlock_key: false,
        }))
        .await;
    assert!(e.is_ok(), "an update that does not bump force_rotate is no rotation: {e:?}");
    assert_eq!(store0.view(|v| v.cluster().unwrap().root_ca.ca_cert_pem.clone()), new_root);

    step("the old worker token is refused; the new one admits a node, which gets a session");
    let stale = new_node(dirs[3].path(), &execs[3]);
    let refused = stale
        .join(SwarmJoinRequest {
            remote_addr: addr0.clone(),
            join_token: old_tokens.worker.clone(),
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: "127.0.0.1".into(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect_err("the token from before the rotation");
    eprintln!("old token: {refused}");
    drop(stale);
    let late = join(dirs[3].path(), &execs[3], &addr0, &new_tokens.worker).await;
    assert_eq!(saved(dirs[3].path()).ca_cert_pem, new_root);
    let late_id = late.info().await.node_id;
    wait_for("the new worker READY", || {
        let state = store0.view(|v| v.node(&late_id).map(|n| n.status.state));
        (state == Some(NodeState::Ready)).then_some(()).ok_or_else(|| format!("{state:?}"))
    })
    .await;
    assert_eq!(session_ids(&nodes).await, sessions, "sessions kept through the join");
    let m = raft0.metrics().borrow().clone();
    assert_eq!((m.current_leader, m.current_term), (Some(leader), term), "the leader changed");

    stop.cancel();
    late.shutdown().await;
    for n in nodes.iter().rev() {
        n.shutdown().await;
    }
}
