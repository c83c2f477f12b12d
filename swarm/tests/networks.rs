//! The manager side of the network wiring, in one process: a manager and a worker `SwarmNode` with
//! `TestExecutor`s. A service on an overlay network publishing a port runs on the manager; the worker, running
//! another service's task on the same network, is sent the first task's endpoint (address, node address,
//! serving), the service's VIPs and ports, and its own ingress address; a killed task stops being served.

use std::time::Duration;
use swarm::api::control::*;
use swarm::api::membership::SwarmJoinRequest;
use swarm::api::{
    Annotations, NetworkAttachmentConfig, NetworkSpec, NetworkState, NodeAvailability, PortConfig, ServiceSpec,
    TaskState,
};
use swarm::manager::controlapi::ControlApi;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

fn spec(name: &str, constraint: &str) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, 1).spec;
    s.task_template.restart_policy.delay = Duration::ZERO;
    s.task_template.placement.constraints = vec![constraint.parse().unwrap()];
    s.task_template.networks = vec![NetworkAttachmentConfig { target: "front".into(), aliases: vec![name.into()] }];
    s
}

fn state_of(exec: &TestExecutor) -> Result<NetworkState, String> {
    exec.network_state().ok_or_else(|| "no network state applied".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_sent_the_endpoints_vips_and_ports_of_tasks_on_other_nodes() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let mgr = new_node(mdir.path(), &mexec);
    mgr.init(swarm::api::membership::SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() })
        .await
        .unwrap();
    let addr = mgr.info().await.remote_managers[0].clone();
    let manager_id = mgr.info().await.node_id;
    let worker_token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(wdir.path(), &wexec);
    let worker_id = worker
        .join(SwarmJoinRequest {
            remote_addr: addr.clone(),
            join_token: worker_token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .unwrap();
    let api: ControlApi = mgr.control_api();

    step("every node gets its ingress address, and the worker the state holding it");
    let ingress =
        api.get_network(Request::new(GetRequest { id_or_name: "ingress".into() })).await.unwrap().into_inner();
    let s = wait_for("the worker's state with its ingress address", || {
        let s = state_of(&wexec)?;
        match s.node_attachments.first() {
            Some(a) if a.network_id == ingress.id && !a.addresses.is_empty() => Ok(s),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    assert_eq!(s.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec![ingress.id.as_str()]);

    step("web (on the manager, on front, -p 8080:80) and api (on the worker, on front)");
    let front = api
        .create_network(Request::new(CreateNetworkRequest {
            spec: NetworkSpec {
                annotations: Annotations { name: "front".into(), labels: Default::default() },
                ..Default::default()
            },
        }))
        .await
        .unwrap()
        .into_inner();
    let mut web = spec("web", "node.role==manager");
    web.endpoint_spec.ports = vec![PortConfig { target_port: 80, published_port: 8080, ..Default::default() }];
    let web = api.create_service(Request::new(CreateServiceRequest { spec: web })).await.unwrap().into_inner();
    api.create_service(Request::new(CreateServiceRequest { spec: spec("api", "node.role==worker") })).await.unwrap();

    let (web_task, state) = wait_for("the worker's state to hold web's running task on front", || {
        let s = state_of(&wexec)?;
        let ep = s
            .endpoints
            .iter()
            .find(|e| e.service_id == web.id && e.network_id == front.id && e.serving)
            .ok_or_else(|| format!("no serving endpoint of web on front: {s:?}"))?;
        Ok((ep.task_id.clone(), s))
    })
    .await;
    let (task, mgr_node, svc) = mgr.store().unwrap().view(|v| {
        (
            v.task(&web_task).cloned().unwrap(),
            v.node(&manager_id).cloned().unwrap(),
            v.service(&web.id).cloned().unwrap(),
        )
    });
    assert_eq!(task.node_id, manager_id, "web runs on the manager");
    let ep = state.endpoints.iter().find(|e| e.task_id == web_task && e.network_id == front.id).unwrap();
    let front_addr = &task.networks.iter().find(|a| a.network_id == front.id).unwrap().addresses[0];
    assert_eq!(ep.ip, front_addr.split('/').next().unwrap(), "the task's address");
    assert_eq!(ep.node_addr, mgr_node.status.addr, "the manager's data-path address");
    assert_eq!(ep.aliases, vec!["web".to_string()]);
    assert!(
        state.endpoints.iter().any(|e| e.task_id == web_task && e.network_id == ingress.id),
        "web's task is on ingress too (it publishes a port)"
    );
    let net_ids: Vec<&str> = state.networks.iter().map(|n| n.id.as_str()).collect();
    assert!(net_ids.contains(&front.id.as_str()) && net_ids.contains(&ingress.id.as_str()), "{net_ids:?}");
    let sent = state.services.iter().find(|s| s.service_id == web.id).expect("web in the worker's state");
    let endpoint = svc.endpoint.clone().expect("web has an endpoint");
    assert_eq!(sent.virtual_ips, endpoint.virtual_ips);
    assert_eq!(sent.virtual_ips.len(), 2, "a VIP on front and one on ingress");
    assert_eq!(sent.ports.iter().map(|p| p.published_port).collect::<Vec<_>>(), vec![8080]);
    assert_eq!(task.endpoint.as_ref(), Some(&endpoint));

    step("web's task is killed: the worker's state stops serving it");
    assert!(mexec.exit(&web_task, 137));
    wait_for("the killed task to be no serving endpoint on the worker", || {
        let s = state_of(&wexec)?;
        match s.endpoints.iter().find(|e| e.task_id == web_task && e.serving) {
            None => Ok(()),
            Some(e) => Err(format!("still serving: {e:?}")),
        }
    })
    .await;
    let failed = mgr.store().unwrap().view(|v| v.task(&web_task).unwrap().status.state);
    assert!(failed.is_terminal(), "the task ended: {failed:?}");
    wait_for("web's replacement to serve on the worker's state", || {
        let s = state_of(&wexec)?;
        s.endpoints
            .iter()
            .find(|e| e.service_id == web.id && e.task_id != web_task && e.serving && e.network_id == front.id)
            .map(|_| ())
            .ok_or_else(|| format!("{s:?}"))
    })
    .await;
    let replacement_state = mgr
        .store()
        .unwrap()
        .view(|v| v.tasks_by_service(&web.id).filter(|t| t.id != web_task).map(|t| t.status.state).collect::<Vec<_>>());
    assert!(replacement_state.contains(&TaskState::Running));

    step("removing web removes it from the worker's state");
    api.remove_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap();
    wait_for("web to leave the worker's state", || {
        let s = state_of(&wexec)?;
        if s.services.iter().any(|x| x.service_id == web.id)
            || s.endpoints.iter().any(|e| e.service_id == web.id && e.serving)
        {
            Err(format!("{s:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let _ = worker_id;
    worker.leave(false).await.unwrap();
    mgr.leave(true).await.unwrap();
}
