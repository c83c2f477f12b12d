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
    let version = store.view(|v| v.node(&w_id).unwrap().meta.version);
    assert_eq!(version, ready_version, "the worker's node changed before the freeze");
    let frozen = Instant::now();
    proxy.freeze(true);
    // A reconnect that finds the node READY writes nothing, so the new session shows by what only a live
    // assignments stream can do: run a task of a service created after the freeze.
    let mut second: ServiceSpec = swarm::testing::service("unused", "after-freeze", 1).spec;
    second.task_template.placement.constraints = vec![Constraint::parse("node.role==worker").unwrap()];
    mgr.control_api().create_service(Request::new(CreateServiceRequest { spec: second })).await.unwrap();

    // Until the new task runs and for 4 periods after it (past the dispatcher's grace of 3), the worker's node is
    // never written DOWN: it left the frozen path before the grace ran out.
    let deadline = frozen + DEADLINE;
    let mut reopened = None;
    let mut until = None;
    loop {
        if reopened.is_none() && wexec.running().len() == 2 {
            let at = frozen.elapsed();
            eprintln!("    the worker runs a task sent on its new session {at:?} after the freeze");
            reopened = Some(at);
            until = Some(Instant::now() + period * 4);
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker ran no task sent after the freeze within {DEADLINE:?}");
        match tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
            Err(_) => {}
            Ok(Ok(ev)) => {
                if let Object::Node(n) = &ev.object {
                    assert!(
                        n.id != w_id || n.status.state == NodeState::Ready,
                        "the worker left READY after the freeze: {:?}",
                        n.status
                    );
                }
            }
            Ok(Err(RecvError::Lagged(_))) => panic!("the test fell behind the store's events"),
            Ok(Err(RecvError::Closed)) => panic!("the store closed"),
        }
    }
    let state = store.view(|v| v.node(&w_id).unwrap().status.state);
    assert_eq!(state, NodeState::Ready);
    proxy.freeze(false);
    w.shutdown().await;
    mgr.shutdown().await;
}
