//! Secrets and configs reach exactly the nodes that need them, in one process: real Raft, real mTLS sessions,
//! `TestExecutor`s recording what their agent handed them. A secret goes only to the node whose task mounts it,
//! is dropped there when the last such task ends, and never rests on any disk in clear; with three managers, a
//! secret created before the leader stops is still delivered by the next leader (every manager has the data key).

use std::path::Path;
use swarm::api::control::*;
use swarm::api::membership::SwarmJoinRequest;
use swarm::api::{
    Annotations, ConfigReference, ConfigSpec, Constraint, FileTarget, NodeAvailability, SecretReference, SecretSpec,
    ServiceMode, ServiceSpec, TaskState,
};
use swarm::manager::controlapi::ControlApi;
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

const PLAINTEXT: &[u8] = b"correct-horse-battery-staple-7f3a";

fn target(name: &str) -> FileTarget {
    FileTarget { name: name.into(), uid: "0".into(), gid: "0".into(), mode: 0o400 }
}

fn service_on(name: &str, hostname: &str, secret: &str, config: Option<&str>) -> ServiceSpec {
    let mut spec = swarm::testing::service("", name, 1).spec;
    spec.task_template.placement.constraints = vec![Constraint::parse(&format!("node.hostname=={hostname}")).unwrap()];
    spec.task_template.container.secrets =
        vec![SecretReference { secret_id: String::new(), secret_name: secret.into(), target: target("") }];
    if let Some(c) = config {
        spec.task_template.container.configs =
            vec![ConfigReference { config_id: String::new(), config_name: c.into(), target: target("/etc/app.conf") }];
    }
    spec
}

async fn create_secret(api: &ControlApi, name: &str, data: &[u8]) -> String {
    let spec = SecretSpec {
        annotations: Annotations { name: name.into(), labels: Default::default() },
        data: data.into(),
        templating: None,
    };
    api.create_secret(Request::new(CreateSecretRequest { spec })).await.expect("secret create").into_inner().id
}

fn running(node: &SwarmNode<TestExecutor>, service_id: &str) -> usize {
    node.store().unwrap().view(|v| {
        v.tasks_by_service(service_id)
            .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
            .count()
    })
}

/// Enough writes for a snapshot (interval 5), so the snapshot file holds what was written before too.
async fn write_until_snapshot(api: &ControlApi, manager_dir: &Path) {
    for i in 0..8 {
        create_secret(api, &format!("filler{i}"), b"x").await;
    }
    let snapshots = manager_dir.join("swarm").join("raft").join("snapshots");
    wait_for("a snapshot file", || {
        if std::fs::read_dir(&snapshots).map(|d| d.count()).unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err("no snapshot yet".into())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_node_that_uses_it_and_leaves_with_its_last_task() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, addr) = init(mdir.path(), &mexec, Some(5)).await;
    let mgr_addr = addr.clone();
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(wdir.path(), &wexec);
    worker
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

    step("a secret and a config; a service using both, placed on the worker");
    let secret_id = create_secret(&api, "db_password", PLAINTEXT).await;
    let cfg = ConfigSpec {
        annotations: Annotations { name: "app.conf".into(), labels: Default::default() },
        data: b"level=debug".to_vec(),
        templating: None,
    };
    let config_id = api.create_config(Request::new(CreateConfigRequest { spec: cfg })).await.unwrap().into_inner().id;
    let svc = api
        .create_service(Request::new(CreateServiceRequest {
            spec: service_on("web", "host-w", "db_password", Some("app.conf")),
        }))
        .await
        .unwrap()
        .into_inner();
    wait_for("the service's task runs on the worker", || {
        if running(&mgr, &svc.id) == 1 {
            Ok(())
        } else {
            Err("not running".into())
        }
    })
    .await;
    let files = wexec.task_files();
    assert_eq!(files.secrets.get(&secret_id).map(|p| p.data.as_slice()), Some(PLAINTEXT), "the worker has the secret");
    assert_eq!(files.configs.get(&config_id).map(|p| p.data.as_slice()), Some(&b"level=debug"[..]));
    assert!(mexec.task_files().secrets.is_empty(), "the manager runs no task using it and never got it");

    step("the data rests nowhere in clear: the managers' Raft log, state and snapshots, the worker's state");
    write_until_snapshot(&api, mdir.path()).await;
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(PLAINTEXT)
    };
    for dir in [mdir.path(), wdir.path()] {
        assert_eq!(files_holding(dir, PLAINTEXT), Vec::<String>::new(), "plaintext on disk");
        assert_eq!(files_holding(dir, &b64.as_bytes()[..20]), Vec::<String>::new(), "base64 plaintext on disk");
    }
    // Objects rest sealed, their names too; the Raft membership (manager addresses) is in clear, which shows the
    // grep reads the Raft files.
    assert_eq!(files_holding(mdir.path(), b"db_password"), Vec::<String>::new(), "a secret's name in clear");
    assert!(!files_holding(&mdir.path().join("swarm/raft"), mgr_addr.as_bytes()).is_empty(), "the grep reads Raft");

    step("inspect and ls hide the data; rm of a used secret names the service");
    let got = api.get_secret(Request::new(GetRequest { id_or_name: "db_password".into() })).await.unwrap().into_inner();
    assert!(got.sealed.is_empty() && got.spec.data.is_empty());
    let e = api.remove_secret(Request::new(GetRequest { id_or_name: "db_password".into() })).await.unwrap_err();
    assert_eq!(e.message(), "secret 'db_password' is in use by the following service: web");

    step("the service scales to 0: the worker drops the secret and the config");
    let cur = api.get_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap().into_inner();
    let mut spec = cur.spec.clone();
    spec.mode = ServiceMode::Replicated { replicas: 0 };
    api.update_service(Request::new(UpdateServiceRequest {
        id: cur.id,
        version: cur.meta.version,
        spec,
        rollback: false,
    }))
    .await
    .unwrap();
    wait_for("the worker holds no secret or config", || {
        let f = wexec.task_files();
        if f.secrets.is_empty() && f.configs.is_empty() {
            Ok(())
        } else {
            Err(format!("{f:?}"))
        }
    })
    .await;
    worker.shutdown().await;
    mgr.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_survives_a_leader_change() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let token = manager_token(&m0);
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &token).await;
    let m2 = join_manager(dirs[2].path(), &execs[2], &addr0, &token).await;
    for d in &dirs[1..] {
        assert!(d.path().join("swarm").join("data.key").exists(), "a joined manager keeps the data key");
    }

    step("the secret is created on the first leader, which then stops");
    let secret_id = create_secret(&m0.control_api(), "api_key", PLAINTEXT).await;
    m0.shutdown().await;

    step("the next leader delivers it to the node whose task uses it");
    let api = m1.control_api();
    let svc = loop {
        match api
            .create_service(Request::new(CreateServiceRequest { spec: service_on("app", "host-2", "api_key", None) }))
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            Err(e) => panic!("service create: {e}"),
        }
    };
    wait_for("the task runs on host-2", || if running(&m1, &svc.id) == 1 { Ok(()) } else { Err("not yet".into()) })
        .await;
    assert_eq!(execs[2].task_files().secrets.get(&secret_id).map(|p| p.data.as_slice()), Some(PLAINTEXT));
    assert!(execs[1].task_files().secrets.is_empty());
    m1.shutdown().await;
    m2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_rest_sealed_and_reach_only_the_task_s_node() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, addr) = init(mdir.path(), &mexec, Some(5)).await;
    let mgr_addr = addr.clone();
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    // The manager token's helper, with the worker token: the node joins as a worker.
    let worker = join_manager(wdir.path(), &wexec, &addr, &token).await;
    let api = mgr.control_api();

    step("a service created with credentials, placed on the worker");
    // What `--with-registry-auth` sends: the credentials in Docker's X-Registry-Auth encoding.
    let auth = {
        use base64::Engine;
        let json = format!(r#"{{"username":"u","password":"{}","serveraddress":"r:5000"}}"#, "pw-4d1c-e9a0-73bb");
        base64::engine::general_purpose::URL_SAFE.encode(json)
    };
    let mut spec = swarm::testing::service("", "web", 1).spec;
    spec.task_template.placement.constraints = vec![Constraint::parse("node.hostname==host-w").unwrap()];
    spec.task_template.container.pull_options =
        Some(swarm::api::PullOptions { registry_auth: auth.clone(), sealed: vec![] });
    let svc = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let task_id = wait_for("the service's task runs on the worker", || {
        mgr.store().unwrap().view(|v| {
            v.tasks_by_service(&svc.id)
                .find(|t| t.status.state == TaskState::Running)
                .map(|t| t.id.clone())
                .ok_or_else(|| "not running".to_string())
        })
    })
    .await;
    assert_eq!(wexec.pull_auth(&task_id).as_deref(), Some(auth.as_str()), "the worker's task has them, opened");
    assert_eq!(mexec.pull_auth(&task_id), None, "the manager runs no such task");

    step("an update without credentials keeps them; the replacement task still gets them");
    let cur = api.get_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap().into_inner();
    assert!(cur.spec.task_template.container.pull_options.is_none(), "inspect shows no credentials");
    let mut spec = cur.spec.clone();
    spec.task_template.container.env.push("V=2".into());
    let req = UpdateServiceRequest { id: cur.id.clone(), version: cur.meta.version, spec, rollback: false };
    api.update_service(Request::new(req)).await.unwrap();
    let replacement = wait_for("the updated task runs", || {
        mgr.store().unwrap().view(|v| {
            v.tasks_by_service(&svc.id)
                .find(|t| t.status.state == TaskState::Running && t.spec.container.env == ["V=2"])
                .map(|t| t.id.clone())
                .ok_or_else(|| "not yet".to_string())
        })
    })
    .await;
    assert_eq!(wexec.pull_auth(&replacement).as_deref(), Some(auth.as_str()));

    step("the credentials rest nowhere in clear: the manager's Raft log, state and snapshots");
    write_until_snapshot(&api, mdir.path()).await;
    for dir in [mdir.path(), wdir.path()] {
        assert_eq!(files_holding(dir, auth.as_bytes()), Vec::<String>::new(), "credentials on disk");
        assert_eq!(files_holding(dir, b"pw-4d1c-e9a0-73bb"), Vec::<String>::new(), "password on disk");
    }
    assert_eq!(files_holding(mdir.path(), b"V=2"), Vec::<String>::new(), "a spec's value in clear");
    assert!(!files_holding(&mdir.path().join("swarm/raft"), mgr_addr.as_bytes()).is_empty(), "the grep reads Raft");
    worker.shutdown().await;
    mgr.shutdown().await;
}
