//! An agent leaving a frozen manager path, in one process: a manager and a worker (`SwarmNode`s with
//! `TestExecutor`s on 127.0.0.1), the worker joined through a proxy. Its session tells it the manager's own
//! address; when the proxy freezes (as a SIGSTOPped manager would), the worker's heartbeat times out within about
//! one period and it opens a session on the address it learned, before the dispatcher's grace of three periods
//! would mark it down.

use std::time::{Duration, Instant};
use swarm::api::control::CreateServiceRequest;
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{Constraint, NodeAvailability, NodeState, Object, ServiceSpec};
use swarm::transport::control::control_server::Control;
use tokio::sync::broadcast::error::RecvError;
use tonic::Request;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_manager_path_freezes_moves_to_the_address_it_learned_within_about_a_heartbeat() {
    let period = Duration::from_secs(1);
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (swarm::testing::TestExecutor::new("host-m"), swarm::testing::TestExecutor::new("host-w"));
    let mgr = new_node(mdir.path(), &mexec);
    mgr.init(SwarmInitRequest {
        listen_addr: "127.0.0.1:0".into(),
        dispatcher_heartbeat: Some(period),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = mgr.info().await.remote_managers[0].clone();
    let store = mgr.store().unwrap();
    let token = store.view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());

    step("the worker joins through a proxy; its session tells it the manager's own address");
    let proxy = FreezableProxy::start(addr.clone()).await;
    let w = new_node(wdir.path(), &wexec);
    let w_id = w
        .join(SwarmJoinRequest {
            remote_addr: proxy.addr.clone(),
            join_token: token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect("the worker joins through the proxy");
    wait_for("the worker READY", || {
        store.view(|v| match v.node(&w_id) {
            Some(n) if n.status.state == NodeState::Ready => Ok(()),
            other => Err(format!("{:?}", other.map(|n| &n.status))),
        })
    })
    .await;
    // A task running on the worker shows its assignments stream is up: from here only heartbeats can notice.
    let mut spec: ServiceSpec = swarm::testing::service("unused", "web", 1).spec;
    spec.task_template.placement.constraints = vec![Constraint::parse("node.role==worker").unwrap()];
    mgr.control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap();
    wait_for("the service's task running on the worker", || {
        let running = wexec.running();
        if running.len() == 1 {
            Ok(())
        } else {
            Err(format!("the worker runs {running:?}"))
        }
    })
    .await;
    let ready_version = store.view(|v| v.node(&w_id).unwrap().meta.version);

    step("the proxy freezes: the worker's session hangs without breaking");
    let mut events = store.watch();
    // A write since the version read would be missed by the watch (none is expected).
    let mut version = store.view(|v| v.node(&w_id).unwrap().meta.version);
    assert_eq!(version, ready_version, "the worker's node changed before the freeze");
    let frozen = Instant::now();
    proxy.freeze(true);

    // The next write of the worker's node must be the READY of its new session, not DOWN.
    let deadline = frozen + DEADLINE;
    let reopened = loop {
        let ev = match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(RecvError::Lagged(_))) => panic!("the test fell behind the store's events"),
            Ok(Err(RecvError::Closed)) => panic!("the store closed"),
            Err(_) => panic!("the worker opened no new session within {DEADLINE:?} of the freeze"),
        };
        let Object::Node(n) = ev.object else { continue };
        if n.id != w_id || n.meta.version == version {
            continue;
        }
        version = n.meta.version;
        assert_ne!(n.status.state, NodeState::Down, "the worker was marked down ({})", n.status.message);
        if n.status.state == NodeState::Ready {
            break frozen.elapsed();
        }
    };
    eprintln!("    the worker opened a session on the manager's address {reopened:?} after the freeze");
    assert!(
        reopened < period * 3,
        "the worker took {reopened:?} to leave the frozen path: longer than the dispatcher's grace of 3 periods"
    );

    step("the worker stays READY on its new session for 4 periods (past the grace of 3)");
    let until = tokio::time::Instant::now() + period * 4;
    while let Ok(ev) = tokio::time::timeout_at(until, events.recv()).await {
        if let Ok(Object::Node(n)) = ev.map(|ev| ev.object) {
            assert!(
                n.id != w_id || n.status.state == NodeState::Ready,
                "the worker left READY on its new session: {:?}",
                n.status
            );
        }
    }
    proxy.freeze(false);
    w.shutdown().await;
    mgr.shutdown().await;
}
