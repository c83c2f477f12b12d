//! Drives the real `shoal` binary against an in-process fake daemon (the generated `Engine` and `Control`
//! servers on a unix socket). It checks the CLI's wiring end to end — socket, JSON codec, client and server
//! streaming, progress that terminates when stdout is not a terminal, exit codes and one-line errors — without
//! containerd. The real daemon is covered by the `tests` crate.

use engine_api::*;
use engine_api::{Engine, EngineServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use swarm::api::control::*;
use swarm::api::*;
use swarm::transport::control::control_server::{Control, ControlServer};
use tonic::{Request, Response, Status, Streaming};

/// How long a fake task takes to go from preparing to running.
const START_AFTER: Duration = Duration::from_millis(300);

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    networks: BTreeMap<String, Network>,
    tasks: Vec<(Task, Instant)>,
    next: u64,
    /// The node's spec once `node update` changed it.
    node_spec: Option<(NodeSpec, u64)>,
    /// Set by `swarm join` with the worker token: `info` then reports a worker.
    joined_as_worker: bool,
    /// What the last `SubscribeLogs` asked for.
    logs_options: Option<logs::LogsOptions>,
    /// Root CA rotations started (`swarm ca --rotate`), and how many more `GetCluster` calls see the last one
    /// in progress.
    ca_rotations: u64,
    rotation_polls_left: u32,
    /// Which version of the image `localhost:5000/private:v1` points at in the fake registry (1 until a test
    /// moves the tag): its digest is what `DistributionInspect` answers.
    private_version: u64,
}

/// The digest of version `n` of `localhost:5000/private:v1`.
fn private_digest(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// The fake cluster's root CA certificate after `n` rotations.
fn fake_root(n: u64) -> String {
    format!("-----BEGIN CERTIFICATE-----\nroot{n}\n-----END CERTIFICATE-----\n")
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

fn node() -> Node {
    serde_json::from_value(serde_json::json!({
        "id": "node1aaaaaaaaaaaaaaaaaaaa", "role": "manager",
        "spec": {"name": "", "desired_role": "manager", "availability": "active"},
        "description": {"hostname": "host-a", "engine": {"engine_version": "0.1.0"}},
        "status": {"state": "ready"},
        "manager_status": {"raft_id": 1, "addr": "127.0.0.1:2377", "leader": true, "reachability": "reachable"}
    }))
    .expect("node fixture")
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:0>24}", self.next)
    }

    fn find(&self, key: &str) -> Result<Service, Status> {
        self.services
            .values()
            .find(|s| s.id == key || s.spec.annotations.name == key || s.id.starts_with(key))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("service {key} not found")))
    }

    /// A tiny orchestrator: one live task per slot 1..=replicas, made from the current spec (an update replaces
    /// them all at once, unless it is paused); slots above are shut down.
    fn reconcile(&mut self, svc: &Service) {
        let paused = svc.update_status.as_ref().is_some_and(|u| u.state == UpdateState::Paused);
        for (t, _) in self.tasks.iter_mut().filter(|(t, _)| t.service_id == svc.id) {
            if !paused && *t.spec != svc.spec.task_template {
                t.desired_state = TaskState::Shutdown;
            }
        }
        let replicas = match svc.spec.mode {
            ServiceMode::Replicated { replicas } => replicas,
            ServiceMode::ReplicatedJob { total_completions, .. } => total_completions,
            ServiceMode::Global | ServiceMode::GlobalJob => 1,
        };
        for (t, _) in self.tasks.iter_mut().filter(|(t, _)| t.service_id == svc.id) {
            if t.slot > replicas {
                t.desired_state = TaskState::Shutdown;
            }
        }
        for slot in 1..=replicas {
            let has = self
                .tasks
                .iter()
                .any(|(t, _)| t.service_id == svc.id && t.slot == slot && t.desired_state == TaskState::Running);
            if !has {
                let id = self.id("t");
                let mut t: Task = serde_json::from_value(serde_json::json!({
                    "id": id, "service_id": svc.id, "service_annotations": {"name": svc.spec.annotations.name},
                    "slot": if svc.spec.mode == ServiceMode::Global { 0 } else { slot },
                    "node_id": "node1aaaaaaaaaaaaaaaaaaaa",
                    "spec": svc.spec.task_template, "spec_version": svc.spec_version,
                    "status": {"state": "preparing"}, "desired_state": "running"
                }))
                .expect("task fixture");
                t.meta.created_at = Timestamp::now();
                t.status.timestamp = Timestamp::now();
                self.tasks.push((t, Instant::now()));
            }
        }
    }

    /// As the real control API and allocator, in short: network names become ids (unknown ones are refused) and
    /// ingress ports published without a number get the next from 30000.
    fn wire(&self, spec: &mut ServiceSpec) -> Result<Option<swarm::api::Endpoint>, Status> {
        for a in spec.task_template.networks.iter_mut() {
            let n = self
                .networks
                .values()
                .find(|n| n.id == a.target || n.spec.annotations.name == a.target)
                .ok_or_else(|| Status::not_found(format!("network {} not found", a.target)))?;
            a.target = n.id.clone();
        }
        if spec.endpoint_spec.ports.is_empty() {
            return Ok(None);
        }
        let mut next = 30000;
        let ports = spec
            .endpoint_spec
            .ports
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if p.published_port == 0 {
                    p.published_port = next;
                    next += 1;
                }
                p
            })
            .collect();
        Ok(Some(swarm::api::Endpoint { spec: spec.endpoint_spec.clone(), ports, virtual_ips: vec![] }))
    }

    /// The one node, with the spec `node update` gave it.
    fn node(&self) -> Node {
        let mut n = node();
        if let Some((spec, version)) = &self.node_spec {
            n.spec = spec.clone();
            n.meta.version = *version;
        }
        n
    }

    fn tasks_now(&self) -> Vec<Task> {
        self.tasks
            .iter()
            .map(|(t, born)| {
                let mut t = t.clone();
                if t.desired_state == TaskState::Running && born.elapsed() >= START_AFTER {
                    t.status.state = TaskState::Running;
                } else if t.desired_state == TaskState::Shutdown {
                    t.status.state = TaskState::Shutdown;
                }
                t
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Control for Fake {
    type SubscribeLogsStream = futures::stream::Iter<std::vec::IntoIter<Result<logs::SubscribeLogsMessage, Status>>>;

    /// A service's logs come from two nodes, host-a and host-b; task `taskidtaskidtaskidtaskid3` ran on host-c,
    /// which is down.
    async fn subscribe_logs(
        &self,
        req: Request<logs::SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        let r = req.into_inner();
        let mut st = self.0.lock().expect("lock");
        st.logs_options = Some(r.options.clone());
        if r.selector.starts_with("taskidtaskidtaskidtaskid3") {
            let warning = "node host-c is down: the logs of its tasks cannot be retrieved".to_string();
            let m = logs::SubscribeLogsMessage { messages: vec![], warnings: vec![warning] };
            return Ok(Response::new(futures::stream::iter(vec![Ok(m)])));
        }
        let svc =
            st.find(&r.selector).map_err(|_| Status::not_found(format!("no such task or service: {}", r.selector)))?;
        let msg = |slot: u64, host: &str, stream: logs::LogStream, line: &str| logs::LogMessage {
            time: "2024-01-02T03:04:05.000000000Z".into(),
            stream,
            context: format!("{}.{slot}.taskidtaskidtaskidtaskid{slot}@{host}", svc.spec.annotations.name),
            task_id: format!("taskidtaskidtaskidtaskid{slot}"),
            node_id: host.into(),
            line: line.into(),
        };
        let first = vec![
            msg(1, "host-a", logs::LogStream::Stdout, "hello"),
            msg(2, "host-b", logs::LogStream::Stdout, "from b"),
            msg(1, "host-a", logs::LogStream::Stderr, "oops"),
        ];
        let second = vec![msg(1, "host-a", logs::LogStream::Stdout, "bye")];
        let msgs = [first, second]
            .into_iter()
            .map(|messages| Ok(logs::SubscribeLogsMessage { messages, warnings: vec![] }))
            .collect::<Vec<_>>();
        Ok(Response::new(futures::stream::iter(msgs)))
    }

    async fn create_service(&self, req: Request<CreateServiceRequest>) -> Result<Response<Service>, Status> {
        let mut spec = req.into_inner().spec;
        // As the real control API: the server normalizes (and validates) the image reference.
        let image = &mut spec.task_template.container.image;
        *image = normalize_image_ref(image).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !swarm::manager::controlapi::validate::is_object_name(&spec.annotations.name) {
            return Err(Status::invalid_argument(format!("invalid name {:?}", spec.annotations.name)));
        }
        let mut st = self.0.lock().expect("lock");
        if st.services.values().any(|s| s.spec.annotations.name == spec.annotations.name) {
            return Err(Status::already_exists(format!("service {} already exists", spec.annotations.name)));
        }
        let endpoint = st.wire(&mut spec)?;
        let id = st.id("s");
        let svc: Service = Service {
            id: id.clone(),
            meta: Meta { version: 1, ..Default::default() },
            spec,
            previous_spec: None,
            spec_version: 1,
            update_status: None,
            endpoint,
        };
        st.services.insert(id, svc.clone());
        st.reconcile(&svc);
        Ok(Response::new(svc))
    }
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<Service>, Status> {
        self.0.lock().expect("lock").find(&req.into_inner().id_or_name).map(Response::new)
    }
    async fn update_service(&self, req: Request<UpdateServiceRequest>) -> Result<Response<Service>, Status> {
        let r = req.into_inner();
        let mut st = self.0.lock().expect("lock");
        let mut svc = st.find(&r.id)?;
        if svc.meta.version != r.version {
            return Err(Status::failed_precondition("update out of sequence"));
        }
        let status = |state: UpdateState, message: String| {
            Some(UpdateStatus { state, started_at: Timestamp::now(), completed_at: None, message })
        };
        if r.rollback {
            // As the real one: the previous spec comes back, rolled out with the rollback config.
            let previous = svc.previous_spec.take().ok_or_else(|| {
                Status::failed_precondition(format!("service {} does not have a previous spec", svc.id))
            })?;
            svc.previous_spec = Some(std::mem::replace(&mut svc.spec, previous));
            svc.spec_version += 1;
            svc.update_status = status(UpdateState::RollbackCompleted, "rollback completed".into());
        } else {
            let mut spec = r.spec;
            let image = &mut spec.task_template.container.image;
            *image = normalize_image_ref(image).map_err(|e| Status::invalid_argument(e.to_string()))?;
            svc.endpoint = st.wire(&mut spec)?;
            if spec != svc.spec {
                if spec.task_template != svc.spec.task_template {
                    // An image named "broken" stands for tasks that fail: the update pauses on the first one.
                    svc.update_status = if spec.task_template.container.image.contains("broken") {
                        let failed = st.id("t");
                        status(
                            UpdateState::Paused,
                            format!("update paused due to failure or early termination of task {failed}"),
                        )
                    } else {
                        status(UpdateState::Completed, "update completed".into())
                    };
                }
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
                svc.spec_version += 1;
            }
        }
        svc.meta.version += 1;
        st.services.insert(svc.id.clone(), svc.clone());
        st.reconcile(&svc);
        Ok(Response::new(svc))
    }
    async fn remove_service(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let mut st = self.0.lock().expect("lock");
        let svc = st.find(&req.into_inner().id_or_name)?;
        st.services.remove(&svc.id);
        st.tasks.retain(|(t, _)| t.service_id != svc.id);
        Ok(Response::new(Empty {}))
    }
    async fn list_services(
        &self,
        _req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let st = self.0.lock().expect("lock");
        let tasks = st.tasks_now();
        let services = st
            .services
            .values()
            .map(|s| {
                let live = tasks.iter().filter(|t| t.service_id == s.id && t.desired_state == TaskState::Running);
                let running = live.clone().filter(|t| t.status.state == TaskState::Running).count() as u64;
                let desired = match s.spec.mode {
                    ServiceMode::Replicated { replicas } => replicas,
                    ServiceMode::ReplicatedJob { total_completions, .. } => total_completions,
                    ServiceMode::Global | ServiceMode::GlobalJob => live.count() as u64,
                };
                ServiceWithStatus { service: s.clone(), running_tasks: running, desired_tasks: desired }
            })
            .collect();
        Ok(Response::new(ListServicesResponse { services, ..Default::default() }))
    }
    async fn get_node(&self, req: Request<GetRequest>) -> Result<Response<Node>, Status> {
        let key = req.into_inner().id_or_name;
        let n = self.0.lock().expect("lock").node();
        if n.id.starts_with(&key) || n.description.hostname == key {
            Ok(Response::new(n))
        } else {
            Err(Status::not_found(format!("node {key} not found")))
        }
    }
    async fn list_nodes(&self, _req: Request<Empty>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse { nodes: vec![self.0.lock().expect("lock").node()] }))
    }
    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Result<Response<Node>, Status> {
        let r = req.into_inner();
        let mut st = self.0.lock().expect("lock");
        let cur = st.node();
        if r.node_id != cur.id {
            return Err(Status::not_found(format!("node {} not found", r.node_id)));
        }
        if r.version != cur.meta.version {
            return Err(Status::failed_precondition("update out of sequence"));
        }
        st.node_spec = Some((r.spec, cur.meta.version + 1));
        Ok(Response::new(st.node()))
    }
    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<Empty>, Status> {
        // The only node is the manager, which must be demoted first.
        Err(Status::failed_precondition(format!(
            "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before \
             removal",
            req.into_inner().node_id
        )))
    }
    async fn get_task(&self, _req: Request<GetRequest>) -> Result<Response<Task>, Status> {
        Err(Status::unimplemented("get_task"))
    }
    async fn list_tasks(&self, req: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let r = req.into_inner();
        let tasks = self
            .0
            .lock()
            .expect("lock")
            .tasks_now()
            .into_iter()
            .filter(|t| r.service_ids.is_empty() || r.service_ids.contains(&t.service_id))
            .filter(|t| r.node_ids.is_empty() || r.node_ids.contains(&t.node_id))
            .filter(|t| r.desired_states.is_empty() || r.desired_states.contains(&t.desired_state))
            .collect();
        Ok(Response::new(ListTasksResponse { tasks, ..Default::default() }))
    }
    /// Only a root CA rotation (a bumped `force_rotate`) is kept; it stays in progress for two reads.
    async fn update_cluster(&self, req: Request<UpdateClusterRequest>) -> Result<Response<GetClusterResponse>, Status> {
        {
            let mut st = self.0.lock().unwrap();
            if req.into_inner().spec.ca_config.force_rotate != st.ca_rotations {
                st.ca_rotations += 1;
                st.rotation_polls_left = 2;
            }
        }
        self.get_cluster(Request::new(Empty {})).await
    }

    async fn create_network(&self, req: Request<CreateNetworkRequest>) -> Result<Response<Network>, Status> {
        let spec = req.into_inner().spec;
        let mut st = self.0.lock().unwrap();
        if st.networks.values().any(|n| n.spec.annotations.name == spec.annotations.name) {
            return Err(Status::already_exists(format!("network with name {} already exists", spec.annotations.name)));
        }
        let i = st.networks.len() as u32 + 1;
        let n = Network {
            id: format!("net{i:022}"),
            meta: Meta::default(),
            spec,
            vni: 4096 + i,
            subnet: format!("10.0.{i}.0/24"),
            gateway: format!("10.0.{i}.1"),
        };
        st.networks.insert(n.id.clone(), n.clone());
        Ok(Response::new(n))
    }

    async fn get_network(&self, req: Request<GetRequest>) -> Result<Response<Network>, Status> {
        let key = req.into_inner().id_or_name;
        let st = self.0.lock().unwrap();
        st.networks
            .values()
            .find(|n| n.id == key || n.spec.annotations.name == key)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("network {key} not found")))
    }

    async fn list_networks(
        &self,
        _req: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        let networks = self.0.lock().unwrap().networks.values().cloned().collect();
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn remove_network(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let n = self.get_network(req).await?.into_inner();
        self.0.lock().unwrap().networks.remove(&n.id);
        Ok(Response::new(Empty {}))
    }

    // Secrets and configs are not exercised against the mock daemon (the control API's own tests and the e2e
    // suite cover them).
    async fn create_secret(&self, _: Request<CreateSecretRequest>) -> Result<Response<swarm::api::Secret>, Status> {
        Err(Status::unimplemented("secrets"))
    }
    async fn get_secret(&self, _: Request<GetRequest>) -> Result<Response<swarm::api::Secret>, Status> {
        Err(Status::unimplemented("secrets"))
    }
    async fn list_secrets(&self, _: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        // The fake stores none: an empty list (what `stack rm` reads).
        Ok(Response::new(ListSecretsResponse::default()))
    }
    async fn update_secret(&self, _: Request<UpdateSecretRequest>) -> Result<Response<swarm::api::Secret>, Status> {
        Err(Status::unimplemented("secrets"))
    }
    async fn remove_secret(&self, _: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("secrets"))
    }
    async fn rotate_secret(&self, _: Request<RotateSecretRequest>) -> Result<Response<RotateSecretResponse>, Status> {
        Err(Status::unimplemented("secrets"))
    }
    async fn create_config(&self, _: Request<CreateConfigRequest>) -> Result<Response<swarm::api::Config>, Status> {
        Err(Status::unimplemented("configs"))
    }
    async fn get_config(&self, _: Request<GetRequest>) -> Result<Response<swarm::api::Config>, Status> {
        Err(Status::unimplemented("configs"))
    }
    async fn list_configs(&self, _: Request<ListSecretsRequest>) -> Result<Response<ListConfigsResponse>, Status> {
        Ok(Response::new(ListConfigsResponse::default()))
    }
    async fn update_config(&self, _: Request<UpdateConfigRequest>) -> Result<Response<swarm::api::Config>, Status> {
        Err(Status::unimplemented("configs"))
    }
    async fn remove_config(&self, _: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("configs"))
    }

    async fn get_cluster(&self, _req: Request<Empty>) -> Result<Response<GetClusterResponse>, Status> {
        let mut cluster: Cluster = serde_json::from_value(serde_json::json!({
            "id": "cluster1", "spec": {"name": "default"},
            "root_ca": {"ca_cert_pem": "", "ca_cert_digest": "", "join_tokens": {"worker": "SWMTKN-1-w", "manager": "SWMTKN-1-m"}}
        }))
        .expect("cluster fixture");
        let mut st = self.0.lock().unwrap();
        cluster.spec.ca_config.force_rotate = st.ca_rotations;
        cluster.root_ca.ca_cert_pem = fake_root(st.ca_rotations);
        if st.rotation_polls_left > 0 {
            st.rotation_polls_left -= 1;
            cluster.root_ca.previous_ca_cert_pem = fake_root(st.ca_rotations - 1);
            cluster.root_ca.rotation_pending.insert(node().id);
        }
        Ok(Response::new(GetClusterResponse { cluster, managers: 1, nodes: 1 }))
    }
}

type PullStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ImagePullProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Engine for Fake {
    type ImagePullStream = PullStream;
    type ImagePushStream = PullStream;

    async fn image_push(&self, req: Request<ImagePushRequest>) -> Result<Response<PullStream>, Status> {
        let r = req.into_inner();
        if r.auth.is_none() {
            return Err(Status::unauthenticated("pull access denied for localhost:5000/private"));
        }
        let p = |id: &str, status: &str| {
            Ok(ImagePullProgress { id: id.into(), status: status.into(), current: 0, total: 0 })
        };
        let lines = vec![
            p("", &format!("The push refers to repository [{}]", r.reference)),
            p("bcecfaad93c7", "Preparing"),
            p("bcecfaad93c7", "Pushed"),
            p("", "v1: digest: sha256:907b size: 406"),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(lines))))
    }

    /// `localhost:5000/private…` wants user `me` with password `pw`; anything else pulls one layer.
    async fn image_pull(&self, req: Request<ImagePullRequest>) -> Result<Response<PullStream>, Status> {
        let r = req.into_inner();
        if r.reference.starts_with("localhost:5000/private") {
            match &r.auth {
                Some(a) if a.username == "me" && a.password == "pw" => {}
                Some(_) => {
                    return Err(Status::unauthenticated(
                        "registry localhost:5000: 401 Unauthorized: incorrect username or password",
                    ))
                }
                None => return Err(Status::unauthenticated("pull access denied for localhost:5000/private")),
            }
        }
        let p = |id: &str, status: &str, current: u64, total: u64| {
            Ok(ImagePullProgress { id: id.into(), status: status.into(), current, total })
        };
        let lines = vec![
            p("", "latest: Pulling from library/busybox", 0, 0),
            p("bcecfaad93c7", "Pulling fs layer", 0, 0),
            p("bcecfaad93c7", "Downloading", 1000, 2000),
            p("bcecfaad93c7", "Download complete", 2000, 2000),
            p("bcecfaad93c7", "Extracting", 0, 0),
            p("bcecfaad93c7", "Pull complete", 0, 0),
            p("", "Digest: sha256:907b", 0, 0),
            p("", &format!("Status: Downloaded newer image for {} ({})", r.reference, r.platform), 0, 0),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(lines))))
    }

    async fn image_tag(&self, req: Request<ImageTagRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        if r.source == "busybox" {
            Ok(Response::new(Empty {}))
        } else {
            Err(Status::not_found(format!("No such image: {}", r.source)))
        }
    }

    async fn image_inspect(&self, req: Request<ImageInspectRequest>) -> Result<Response<ImageInspect>, Status> {
        let r = req.into_inner();
        if r.reference != "busybox" {
            return Err(Status::not_found(format!("No such image: {}", r.reference)));
        }
        Ok(Response::new(ImageInspect {
            id: "sha256:8dbc".into(),
            repo_tags: vec!["busybox:latest".into(), "mine:v2".into()],
            repo_digests: vec!["busybox@sha256:907b".into()],
            architecture: "amd64".into(),
            os: "linux".into(),
            size: 2129920,
            config: serde_json::json!({"Cmd": ["sh"]}),
            rootfs: RootFs { r#type: "layers".into(), layers: vec!["sha256:bcec".into()] },
            ..Default::default()
        }))
    }

    async fn distribution_inspect(
        &self,
        req: Request<DistributionInspectRequest>,
    ) -> Result<Response<DistributionInspectResponse>, Status> {
        // Only the private repository has a registry behind it (wanting `me`/`pw`); elsewhere, as a daemon that
        // cannot reach one.
        let r = req.into_inner();
        if !r.reference.starts_with("localhost:5000/private:") {
            return Err(Status::unavailable(format!("registry for {}: connection refused", r.reference)));
        }
        if !r.auth.is_some_and(|a| a.username == "me" && a.password == "pw") {
            return Err(Status::unauthenticated("pull access denied for localhost:5000/private"));
        }
        let n = self.0.lock().unwrap().private_version.max(1);
        Ok(Response::new(DistributionInspectResponse {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: private_digest(n),
            size: 300,
        }))
    }

    async fn registry_login(
        &self,
        req: Request<RegistryLoginRequest>,
    ) -> Result<Response<RegistryLoginResponse>, Status> {
        let r = req.into_inner();
        if r.auth.username == "me" && r.auth.password == "pw" {
            Ok(Response::new(RegistryLoginResponse { status: "Login Succeeded".into() }))
        } else {
            Err(Status::unauthenticated(format!(
                "registry {}: 401 Unauthorized: incorrect username or password",
                r.server
            )))
        }
    }

    async fn info(&self, _req: Request<Empty>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            swarm: SwarmInfo {
                local_node_state: "active".into(),
                node_id: node().id,
                is_manager: !self.0.lock().unwrap().joined_as_worker,
                cluster_id: "cluster1".into(),
                managers: 1,
                nodes: 1,
                ..Default::default()
            },
            engine_version: "0.1.0".into(),
            ncpu: 2,
            mem_total: 1 << 30,
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        }))
    }
    async fn version(&self, _req: Request<Empty>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            api_version: "1".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            containerd_version: "1.6".into(),
        }))
    }
    async fn swarm_init(&self, _req: Request<SwarmInitRequest>) -> Result<Response<SwarmInitResponse>, Status> {
        Ok(Response::new(SwarmInitResponse { node_id: node().id }))
    }
    async fn swarm_leave(&self, _req: Request<SwarmLeaveRequest>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
    async fn swarm_join(&self, req: Request<SwarmJoinRequest>) -> Result<Response<SwarmJoinResponse>, Status> {
        let token = req.into_inner().join_token;
        if token == "SWMTKN-1-bad" {
            return Err(Status::invalid_argument(
                "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster",
            ));
        }
        self.0.lock().unwrap().joined_as_worker = token != "SWMTKN-1-m";
        Ok(Response::new(SwarmJoinResponse { node_id: "node2".into() }))
    }
    async fn swarm_rotate_join_token(
        &self,
        _req: Request<RotateJoinTokenRequest>,
    ) -> Result<Response<RotateJoinTokenResponse>, Status> {
        Ok(Response::new(RotateJoinTokenResponse { token: "SWMTKN-1-w".into() }))
    }
    async fn swarm_unlock(&self, _req: Request<engine_api::SwarmUnlockRequest>) -> Result<Response<Empty>, Status> {
        Err(Status::failed_precondition("swarm is not locked"))
    }
    async fn swarm_unlock_key(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<engine_api::SwarmUnlockKeyResponse>, Status> {
        Ok(Response::new(engine_api::SwarmUnlockKeyResponse::default()))
    }
    async fn image_load(&self, req: Request<Streaming<ImageLoadChunk>>) -> Result<Response<ImageLoadResponse>, Status> {
        let mut stream = req.into_inner();
        let mut total = 0usize;
        let mut chunks = 0usize;
        while let Some(c) = stream.message().await? {
            total += c.data.len();
            chunks += 1;
        }
        // Reports what arrived through the reference, so the test can check the bytes all made it.
        Ok(Response::new(ImageLoadResponse {
            loaded: vec![
                "docker.io/library/busybox:latest".into(),
                format!("docker.io/library/got:{total}b-{chunks}c"),
            ],
        }))
    }
    async fn image_list(&self, _req: Request<Empty>) -> Result<Response<ImageListResponse>, Status> {
        Ok(Response::new(ImageListResponse {
            images: vec![ImageSummary {
                reference: "docker.io/library/busybox:latest".into(),
                id: format!("sha256:{}", "ab".repeat(32)),
                created: Some(humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(300)).to_string()),
                size: 4_263_900,
            }],
        }))
    }
    async fn image_remove(&self, req: Request<ImageRemoveRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        if r.reference.starts_with("busybox") {
            Ok(Response::new(Empty {}))
        } else {
            Err(Status::not_found(format!("No such image: {}", r.reference)))
        }
    }
}

/// A fake daemon on its own runtime thread, listening on a socket in a temp dir.
struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Fake,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("shoal.sock");
        let path = socket.clone();
        let fake = Fake::default();
        let served = fake.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).expect("bind");
                let _ = ready_tx.send(());
                let _ = tonic::transport::Server::builder()
                    .add_service(ControlServer::new(served.clone()))
                    .add_service(EngineServer::new(served))
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await;
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("fake daemon up");
        Daemon { _dir: dir, socket, fake }
    }

    /// The options of the last `SubscribeLogs` the fake answered.
    fn logs_options(&self) -> logs::LogsOptions {
        self.fake.0.lock().expect("lock").logs_options.clone().expect("a SubscribeLogs call")
    }

    fn shoal(&self, args: &[&str]) -> Output {
        shoal_at(&self.socket, args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.shoal(args);
        assert!(o.status.success(), "`shoal {}` failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command that must fail with exactly one line on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.shoal(args);
        assert!(
            !o.status.success(),
            "`shoal {}` should fail; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "one line expected, got {err:?}");
        err.trim_end().to_string()
    }
}

fn shoal_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shoal")
}

/// `shoal` with a credentials directory and stdin.
fn shoal_with(socket: &Path, config: &Path, stdin: &str, args: &[&str]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .env("SHOAL_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("shoal output")
}

#[test]
fn pull_login_and_logout_through_the_cli() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().expect("tempdir");
    let run = |stdin: &str, args: &[&str]| shoal_with(&d.socket, cfg.path(), stdin, args);
    let text =
        |o: &Output| (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());

    let o = run("", &["pull", "--platform", "linux/amd64", "busybox"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        out,
        "latest: Pulling from library/busybox\nbcecfaad93c7: Pulling fs layer\nbcecfaad93c7: Download complete\n\
         bcecfaad93c7: Pull complete\nDigest: sha256:907b\nStatus: Downloaded newer image for busybox (linux/amd64)\n",
        "no progress bars when stdout is not a terminal"
    );
    let o = run("", &["image", "pull", "-q", "busybox"]);
    assert_eq!(text(&o).0, "docker.io/library/busybox:latest\n");

    let o = run("", &["image", "pull", "localhost:5000/private:v1"]);
    assert!(!o.status.success());
    assert_eq!(text(&o).1, "Error response from daemon: pull access denied for localhost:5000/private\n");

    let o = run("wrong\n", &["login", "-u", "me", "--password-stdin", "localhost:5000"]);
    assert!(!o.status.success());
    assert_eq!(
        text(&o).1,
        "Error response from daemon: registry localhost:5000: 401 Unauthorized: incorrect username or password\n"
    );
    assert!(!cfg.path().join("config.json").exists(), "refused credentials are not stored");
    let o = run("", &["login", "-u", "me", "localhost:5000"]);
    assert_eq!(text(&o).1, "Cannot perform an interactive login from a non TTY device\n");

    let o = run("pw\n", &["login", "-u", "me", "--password-stdin", "localhost:5000"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "Login Succeeded\n");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.path().join("config.json")).expect("config.json")).unwrap();
    assert_eq!(stored["auths"]["localhost:5000"]["auth"], "bWU6cHc=", "base64 of me:pw");

    let o = run("", &["image", "pull", "localhost:5000/private:v1"]);
    assert!(o.status.success(), "the stored credentials are sent: {}", text(&o).1);
    assert!(text(&o).0.ends_with("Status: Downloaded newer image for localhost:5000/private:v1 ()\n"));

    let o = run("", &["push", "localhost:5000/private:v1"]);
    assert_eq!(
        text(&o).0,
        "The push refers to repository [localhost:5000/private:v1]\nbcecfaad93c7: Preparing\nbcecfaad93c7: Pushed\n\
         v1: digest: sha256:907b size: 406\n",
        "the stored credentials are sent with pushes too: {}",
        text(&o).1
    );
    assert!(run("", &["image", "tag", "busybox", "mine:v2"]).status.success());
    assert_eq!(
        text(&run("", &["image", "tag", "nope", "mine:v2"])).1,
        "Error response from daemon: No such image: nope\n"
    );
    let o = run("", &["image", "inspect", "busybox"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect prints JSON");
    assert_eq!(v[0]["Id"], "sha256:8dbc");
    assert_eq!(v[0]["RootFS"]["Layers"][0], "sha256:bcec");
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh");
    let o = run("", &["image", "inspect", "-f", "{{.Id}} {{index .RepoTags 1}} {{.Architecture}}", "busybox"]);
    assert_eq!(text(&o).0, "sha256:8dbc mine:v2 amd64\n");

    assert_eq!(text(&run("", &["logout", "localhost:5000"])).0, "Removing login credentials for localhost:5000\n");
    assert_eq!(text(&run("", &["logout", "localhost:5000"])).0, "Not logged in to localhost:5000\n");
    assert!(!run("", &["image", "pull", "localhost:5000/private:v1"]).status.success());
}

#[test]
fn node_commands_through_the_cli() {
    let d = Daemon::start();
    assert_eq!(d.ok(&["node", "update", "--availability", "pause", "--label-add", "zone=east", "self"]), "self\n");
    let pretty = d.ok(&["node", "inspect", "--pretty", "self"]);
    assert!(pretty.contains("Labels:\n - zone=east\n"), "{pretty}");
    assert!(pretty.contains(" Availability:         \tPause\n"), "{pretty}");
    let ls = d.ok(&["node", "ls"]);
    assert!(
        ls.lines().nth(1).is_some_and(|l| l.starts_with("node1aaaaaaaaaaaaaaaaaaaa *") && l.contains("Pause")),
        "{ls}"
    );
    assert_eq!(d.ok(&["node", "ls", "-q", "--filter", "node.label=zone=west"]), "");
    assert_eq!(d.ok(&["node", "ls", "-q", "-f", "role=manager"]), "node1aaaaaaaaaaaaaaaaaaaa\n");
    assert_eq!(d.fails(&["node", "update", "--label-rm", "nope", "host-a"]), "key nope doesn't exist in node's labels");
    assert_eq!(d.ok(&["node", "promote", "host-a"]), "Node node1aaaaaaaaaaaaaaaaaaaa is already a manager.\n");
    assert_eq!(
        d.fails(&["node", "rm", "host-a"]),
        "Error response from daemon: node host-a is a cluster manager and is a member of the raft cluster. It must \
         be demoted to worker before removal"
    );
    assert_eq!(d.fails(&["node", "ps", "nope"]), "Error response from daemon: node nope not found");

    d.ok(&["service", "create", "-d", "--name", "web", "busybox"]);
    let ps = d.ok(&["node", "ps"]);
    let lines: Vec<&str> = ps.lines().collect();
    assert!(lines[0].starts_with("ID             NAME      IMAGE            NODE      DESIRED STATE"), "{ps}");
    assert!(lines[1].contains("   web.1     busybox:latest   host-a    Running   "), "{ps}");
    assert_eq!(d.ok(&["node", "ps", "-q", "--no-trunc", "host-a"]).trim().len(), 25);
    assert_eq!(
        d.ok(&["node", "ps", "--format", "{{.Name}} {{.Node}}", "-f", "desired-state=running"]),
        "web.1 host-a\n"
    );
}

#[test]
fn services_lifecycle_through_the_cli() {
    let d = Daemon::start();

    let info = d.ok(&["info"]);
    for line in ["Swarm: active", " Is Manager: true", " Managers: 1", " Nodes: 1", "  Task History Retention Limit: 5"]
    {
        assert!(info.lines().any(|l| l == line), "info lacks {line:?}:\n{info}");
    }

    // Without -d, create follows progress and must end on its own once converged (stdout is a pipe here).
    let started = Instant::now();
    let out = d.ok(&["service", "create", "--name", "web", "--replicas", "3", "busybox", "sleep", "1d"]);
    assert!(started.elapsed() < Duration::from_secs(15), "create took {:?}", started.elapsed());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with('s') && lines[0].len() == 25, "first line is the id: {out}");
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("1/3: running   [==================================================>]"), "{out}");
    assert_eq!(lines.last().copied(), Some("verify: Service converged"), "{out}");

    let ls = d.ok(&["service", "ls"]);
    assert!(ls.starts_with("ID             NAME      MODE         REPLICAS   IMAGE            PORTS"), "{ls}");
    assert!(ls.contains("web       replicated   3/3        busybox:latest"), "{ls}");
    assert_eq!(d.ok(&["service", "ls", "-q"]).trim().len(), 12);
    // Docker's `--format json`: one object per line, with the table's columns as keys.
    let json = d.ok(&["service", "ls", "--format", "json"]);
    let id = d.ok(&["service", "ls", "-q"]).trim().to_string();
    assert_eq!(
        json,
        format!(
            "{{\"ID\":\"{id}\",\"Image\":\"busybox:latest\",\"Mode\":\"replicated\",\"Name\":\"web\",\"Ports\":\"\",\"Replicas\":\"3/3\"}}\n"
        )
    );
    assert_eq!(d.ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]), "web 3/3\n");
    assert_eq!(d.ok(&["service", "ls", "--format", "{{json .Name}}"]), "\"web\"\n");
    let table = d.ok(&["service", "ls", "--format", "table {{.Name}}\\t{{.Image}}"]);
    assert_eq!(table, "NAME      IMAGE\nweb       busybox:latest\n");
    assert_eq!(
        d.fails(&["service", "ls", "--format", "{{.Nope}}"]),
        "template: executing \"\" at <.Nope>: can't evaluate field Nope"
    );
    let bad = d.fails(&["service", "ls", "--format", "{{.Name"]);
    assert!(bad.starts_with("invalid argument \"{{.Name\" for \"--format\" flag: template parsing error"), "{bad}");

    let ps = d.ok(&["service", "ps", "web"]);
    assert!(ps.starts_with("ID "), "{ps}");
    assert!(ps.contains("web.1") && ps.contains("host-a") && ps.contains("Running         Running"), "{ps}");
    let ps_json = d.ok(&["service", "ps", "web", "--format", "json"]);
    let rows: Vec<serde_json::Value> =
        ps_json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect();
    assert_eq!(rows.len(), 3, "{ps_json}");
    let keys: Vec<&String> = rows[0].as_object().expect("object").keys().collect();
    assert_eq!(keys, ["CurrentState", "DesiredState", "Error", "ID", "Image", "Name", "Node", "Ports"], "{ps_json}");
    assert_eq!(
        (&rows[0]["Name"], &rows[0]["Node"], &rows[0]["DesiredState"]),
        (&"web.1".into(), &"host-a".into(), &"Running".into())
    );
    assert_eq!(d.ok(&["service", "ps", "web", "--format", "{{.Name}}"]), "web.1\nweb.2\nweb.3\n");

    let out = d.ok(&["service", "scale", "web=5"]);
    assert!(out.starts_with("web scaled to 5\n"), "{out}");
    assert!(out.contains("overall progress: 5 out of 5 tasks") && out.contains("verify: Service converged"), "{out}");
    let out = d.ok(&["service", "scale", "web=1", "-d"]);
    assert_eq!(out, "web scaled to 1\n");
    let ps = d.ok(&["service", "ps", "web", "-f", "desired-state=running", "-q"]);
    assert_eq!(ps.lines().count(), 1, "{ps}");

    // -q still waits for convergence, silently: only the id is printed, and the tasks run when it returns.
    let out = d.ok(&["service", "create", "-q", "--name", "hush", "--replicas", "2", "busybox"]);
    assert!(out.starts_with('s') && out.lines().count() == 1, "only the id: {out:?}");
    let hush = d.ok(&["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]);
    assert!(hush.lines().any(|l| l == "hush 2/2"), "{hush}");
    d.ok(&["service", "rm", "hush"]);

    d.ok(&["service", "create", "-d", "--name", "everywhere", "--mode", "global", "busybox"]);
    assert_eq!(
        d.fails(&["service", "scale", "everywhere=2"]),
        "everywhere: scale can only be used with replicated or replicated-job mode"
    );

    let inspect: serde_json::Value = serde_json::from_str(&d.ok(&["service", "inspect", "web"])).expect("json");
    assert_eq!(inspect[0]["spec"]["mode"]["replicated"]["replicas"], 1);
    let svc_id = inspect[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        d.ok(&["service", "inspect", "--format", "{{.ID}}", "web", "everywhere"]).lines().next(),
        Some(svc_id.as_str())
    );
    let spec: serde_json::Value =
        serde_json::from_str(&d.ok(&["service", "inspect", "web", "-f", "{{json .Spec}}"])).expect("spec json");
    assert_eq!(spec["Name"], "web");
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 1);
    assert!(d.fails(&["service", "inspect", "web", "-f", "{{.Nope}}"]).contains("can't evaluate field Nope"));
    assert!(d.fails(&["service", "inspect", "web", "--pretty", "-f", "{{.ID}}"]).contains("cannot be used with"));
    let pretty = d.ok(&["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("Service Mode:\tReplicated") && pretty.contains(" Args:\t\tsleep 1d"), "{pretty}");

    let logs = d.shoal(&["service", "logs", "web"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "web.1.taskidtaskid@host-a    | hello\nweb.2.taskidtaskid@host-b    | from b\nweb.1.taskidtaskid@host-a    | bye\n"
    );
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "web.1.taskidtaskid@host-a    | oops\n");
    let raw = d.ok(&[
        "service",
        "logs",
        "--raw",
        "-t",
        "--no-task-ids",
        "--tail",
        "5",
        "--since",
        "2024-01-02T03:00:00Z",
        "web",
    ]);
    assert_eq!(raw.lines().next(), Some("2024-01-02T03:04:05.000000000Z hello"), "{raw}");
    let sent = d.logs_options();
    assert_eq!(
        (sent.follow, sent.tail, sent.since.as_deref()),
        (false, Some(5), Some("2024-01-02T03:00:00.000000000Z")),
        "the flags reach the daemon"
    );
    assert_eq!(
        d.fails(&["service", "logs", "taskidtaskidtaskidtaskid3"]),
        "error from daemon in stream: Error grabbing logs: node host-c is down: the logs of its tasks cannot be retrieved"
    );
    assert_eq!(d.fails(&["service", "logs", "nope"]), "Error response from daemon: no such task or service: nope");
    assert!(d.fails(&["service", "logs", "--since", "soon", "web"]).contains("invalid value for \"since\": soon"));

    assert_eq!(d.ok(&["service", "rm", "web", "everywhere"]), "web\neverywhere\n");
    assert_eq!(d.fails(&["service", "rm", "web"]), "Error response from daemon: service web not found");
    assert_eq!(
        d.fails(&["service", "create", "--name", "Bad.Name", "busybox"]),
        "Error response from daemon: invalid name \"Bad.Name\""
    );
    assert_eq!(d.ok(&["service", "ls", "-q"]), "");
}

#[test]
fn service_update_and_rollback_through_the_cli() {
    let d = Daemon::start();
    d.ok(&["service", "create", "-d", "--name", "web", "--replicas", "3", "busybox", "sleep", "1d"]);
    let versions = || {
        let v: serde_json::Value = serde_json::from_str(&d.ok(&["service", "inspect", "web"])).expect("json");
        (v[0]["meta"]["version"].as_u64().expect("version"), v[0]["spec_version"].as_u64().expect("spec_version"))
    };
    let image = || d.ok(&["service", "inspect", "web", "-f", "{{.Spec.TaskTemplate.Container.Image}}"]);

    // An update follows the rollout of the new tasks to its end (stdout is a pipe: plain lines).
    let out = d.ok(&["service", "update", "--image", "busybox:1.36", "--update-parallelism", "2", "web"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "web", "{out}");
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("3/3: running   [==================================================>]"), "{out}");
    assert_eq!(lines.last().copied(), Some("verify: Service converged"), "{out}");
    assert_eq!(image(), "docker.io/library/busybox:1.36\n");
    let (version, spec_version) = versions();
    assert_eq!(spec_version, 2);
    let running = d.ok(&["service", "ps", "web", "-q", "-f", "desired-state=running"]);
    assert_eq!(running.lines().count(), 3, "{running}");
    assert_eq!(d.ok(&["service", "ps", "web", "-q"]).lines().count(), 6, "the old tasks stay as history");

    // Nothing to change: nothing is sent.
    assert_eq!(d.ok(&["service", "update", "--image", "busybox:1.36", "--replicas", "3", "web"]), "web\n");
    assert_eq!(versions(), (version, spec_version));

    // A dry run prints the diff and the tasks it would replace, and changes nothing.
    let dry = d.ok(&["service", "update", "--dry-run", "--env-add", "A=1", "--replicas", "4", "web"]);
    assert_eq!(
        dry,
        "mode.replicated.replicas: 3 → 4\ntask_template.container.env: (none) → [\"A=1\"]\n\
         3 tasks would be replaced\n1 task would be started\n"
    );
    assert_eq!(versions(), (version, spec_version));
    let dry = d.ok(&["service", "rollback", "--dry-run", "web"]);
    assert!(
        dry.contains(
            "task_template.container.image: docker.io/library/busybox:1.36 → docker.io/library/busybox:latest"
        ),
        "{dry}"
    );
    assert_eq!(versions(), (version, spec_version));

    // Bad input: one line, nothing sent.
    assert_eq!(
        d.fails(&["service", "update", "--update-order", "sideways", "web"]),
        "invalid argument \"sideways\" for \"--update-order\" flag: invalid order \"sideways\": must be stop-first or start-first"
    );
    assert_eq!(
        d.fails(&["service", "update", "--update-delay", "-1s", "web"]),
        "invalid argument \"-1s\" for \"--update-delay\" flag: duration cannot be negative"
    );
    assert_eq!(
        d.fails(&["service", "update", "--rollback", "--image", "x", "web"]),
        "other flags may not be combined with --rollback"
    );
    assert_eq!(
        d.fails(&["service", "update", "--health-cmd", "true", "--no-healthcheck", "web"]),
        "--no-healthcheck conflicts with --health-* options"
    );
    assert!(d.fails(&["service", "update", "--publish-add", "8080:80/sctp", "web"]).contains("invalid protocol"));
    assert_eq!(
        d.fails(&["service", "update", "--network-add", "backend", "web"]),
        "Error response from daemon: network backend not found"
    );
    assert_eq!(versions(), (version, spec_version));

    // `service rollback` sends rollback: the previous spec comes back; Docker's closing line.
    let out = d.ok(&["service", "rollback", "web"]);
    assert!(out.starts_with("web\n"), "{out}");
    assert!(out.contains("overall progress: rolling back update: 3 out of 3 tasks"), "{out}");
    assert!(out.ends_with("verify: Service converged\nrollback: rollback completed\n"), "{out}");
    assert_eq!(image(), "docker.io/library/busybox:latest\n");
    assert_eq!(versions().1, 3);
    let pretty = d.ok(&["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("UpdateStatus:\n State:\t\trollback_completed\n"), "{pretty}");
    assert!(pretty.contains(" Message:\trollback completed\n"), "{pretty}");
    // The update config came back with the rest of the previous spec.
    assert!(pretty.contains("UpdateConfig:\n Parallelism:\t1\n"), "{pretty}");

    // An update whose tasks fail pauses: Docker's message, a non-zero exit, and `service ls` shows it.
    let o = d.shoal(&["service", "update", "--no-resolve-image", "--image", "broken", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().next(), Some("web"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("service update paused: update paused due to failure or early termination of task t"),
        "{err}"
    );
    assert_eq!(d.ok(&["service", "ls", "--format", "{{.Replicas}}"]), "3/3 (update paused)\n");

    // --force redeploys without a change; -d returns at once.
    let before = versions();
    assert_eq!(d.ok(&["service", "update", "--force", "-d", "web"]), "web\n");
    assert_eq!(versions(), (before.0 + 1, before.1 + 1));
    assert_eq!(d.ok(&["service", "inspect", "web", "-f", "{{.Spec.TaskTemplate.ForceUpdate}}"]), "1\n");

    d.ok(&["service", "create", "-d", "--name", "fresh", "busybox"]);
    assert_eq!(
        d.fails(&["service", "rollback", "fresh"]),
        "service fresh does not have a previous specification to roll back to"
    );
}

#[test]
fn images_nodes_and_swarm() {
    let d = Daemon::start();

    // 2.5 MiB: three chunks, the last one partial.
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), vec![7u8; 5 * 512 * 1024]).expect("write");
    let out = d.ok(&["image", "load", "-i", file.path().to_str().expect("utf-8")]);
    assert_eq!(out, "Loaded image: busybox:latest\nLoaded image: got:2621440b-3c\n");
    let err = d.fails(&["image", "load", "-i", "/nonexistent/busybox.tar"]);
    assert!(err.starts_with("open /nonexistent/busybox.tar: "), "{err}");

    let ls = d.ok(&["image", "ls"]);
    assert!(ls.contains("busybox      latest    abababababab   5 minutes ago   4.26MB"), "{ls}");
    assert_eq!(d.ok(&["image", "ls", "-q"]), "abababababab\n");
    let images = d.ok(&["image", "ls", "--format", "json"]);
    let image: serde_json::Value = serde_json::from_str(images.trim_end()).unwrap_or_else(|e| panic!("{e}: {images}"));
    assert_eq!(
        (&image["Repository"], &image["Tag"], &image["ID"]),
        (&"busybox".into(), &"latest".into(), &"abababababab".into())
    );
    assert_eq!((&image["CreatedSince"], &image["Size"]), (&"5 minutes ago".into(), &"4.26MB".into()));
    assert_eq!(d.ok(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]), "busybox:latest\n");
    assert_eq!(d.ok(&["image", "rm", "busybox"]), "Untagged: busybox:latest\n");
    assert_eq!(d.fails(&["image", "rm", "nosuch"]), "Error response from daemon: No such image: nosuch");

    let nodes = d.ok(&["node", "ls"]);
    assert!(
        nodes.contains("node1aaaaaaaaaaaaaaaaaaaa *   host-a     Ready     Active         Leader           0.1.0"),
        "{nodes}"
    );
    let inspect: serde_json::Value = serde_json::from_str(&d.ok(&["node", "inspect", "self"])).expect("json");
    assert_eq!(inspect[0]["description"]["hostname"], "host-a");
    assert_eq!(
        d.ok(&["node", "ls", "--format", "json"]),
        "{\"Availability\":\"Active\",\"EngineVersion\":\"0.1.0\",\"Hostname\":\"host-a\",\"ID\":\"node1aaaaaaaaaaaaaaaaaaaa\",\"ManagerStatus\":\"Leader\",\"Self\":true,\"Status\":\"Ready\"}\n"
    );
    assert_eq!(d.ok(&["node", "inspect", "self", "--format", "{{.Description.Hostname}}"]), "host-a\n");
    assert_eq!(d.ok(&["info", "--format", "{{.Swarm.NodeID}}"]), "node1aaaaaaaaaaaaaaaaaaaa\n");

    let init = d.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1", "--task-history-limit", "3"]);
    assert!(
        init.starts_with("Swarm initialized: current node (node1aaaaaaaaaaaaaaaaaaaa) is now a manager.\n"),
        "{init}"
    );
    assert!(init.contains("shoal swarm join --token SWMTKN-1-w 127.0.0.1:2377"), "{init}");
    assert_eq!(d.ok(&["swarm", "leave", "--force"]), "Node left the swarm.\n");
    assert_eq!(
        d.ok(&["swarm", "join", "--token", "SWMTKN-1-w", "10.0.0.1:2377"]),
        "This node joined a swarm as a worker.\n"
    );
    assert_eq!(
        d.ok(&["swarm", "join", "--token", "SWMTKN-1-m", "10.0.0.1:2377"]),
        "This node joined a swarm as a manager.\n",
        "the message follows the role the token gave"
    );
    assert_eq!(
        d.fails(&["swarm", "join", "--token", "SWMTKN-1-bad", "10.0.0.1:2377"]),
        "Error response from daemon: rpc error: code = InvalidArgument desc = A valid join token is necessary to join \
         this cluster"
    );
    assert_eq!(d.ok(&["swarm", "join-token", "-q", "worker"]), "SWMTKN-1-w\n");
    let rotated = d.ok(&["swarm", "join-token", "--rotate", "worker"]);
    assert!(
        rotated.starts_with("Successfully rotated worker join token.\n\nTo add a worker to this swarm"),
        "{rotated}"
    );
    assert_eq!(d.ok(&["swarm", "join-token", "--rotate", "-q", "worker"]), "SWMTKN-1-w\n");

    let version = d.ok(&["version"]);
    assert!(version.contains("Client:") && version.contains("Server:") && version.contains("  API version:      1"));
}

#[test]
fn swarm_ca_prints_and_rotates_the_root() {
    let d = Daemon::start();
    // `swarm ca` prints the root CA; `--rotate` shows the progress once, then the new root.
    assert_eq!(d.ok(&["swarm", "ca"]), fake_root(0));
    let rotated = d.ok(&["swarm", "ca", "--rotate"]);
    assert_eq!(
        rotated,
        format!("rotation in progress: 0/1 nodes hold a certificate from the new root CA\n{}", fake_root(1))
    );
    assert_eq!(d.ok(&["swarm", "ca", "--rotate", "-q"]), fake_root(2), "-q: the new root only");
    assert_eq!(d.ok(&["swarm", "ca", "--rotate", "-d"]), "", "-d: returns at once");
    assert_eq!(d.ok(&["swarm", "ca"]), fake_root(3));
}

#[test]
fn a_missing_daemon_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("none.sock");
    let o = shoal_at(&sock, &["service", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("Cannot connect to the Shoal daemon at unix://{}. Is the shoal daemon running?\n", sock.display())
    );
}

#[test]
fn network_commands_through_the_cli() {
    let d = Daemon::start();
    let id = d.ok(&["network", "create", "-d", "overlay", "--subnet", "10.0.1.0/24", "--label", "team=web", "front"]);
    assert_eq!(id.trim().len(), 25, "create prints the full id: {id:?}");
    assert_eq!(
        d.fails(&["network", "create", "front"]),
        "Error response from daemon: network with name front already exists"
    );
    assert_eq!(
        d.ok(&["network", "ls"]),
        format!("NETWORK ID     NAME      DRIVER    SCOPE\n{}   front     overlay   swarm\n", &id[..12])
    );
    assert_eq!(d.ok(&["network", "ls", "-q"]), format!("{}\n", &id[..12]));
    assert_eq!(d.ok(&["network", "ls", "--format", "{{.Name}}/{{.Labels}}"]), "front/team=web\n");
    let inspected: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", "front"])).unwrap();
    assert_eq!(inspected[0]["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
    assert_eq!(d.ok(&["network", "inspect", "-f", "{{.Scope}}", "front"]), "swarm\n");
    assert_eq!(d.ok(&["network", "rm", "front"]), "front\n");
    assert_eq!(d.fails(&["network", "rm", "front"]), "Error response from daemon: network front not found");
    assert_eq!(d.ok(&["network", "ls", "-q"]), "");
}

#[test]
fn networks_and_published_ports_through_the_cli() {
    let d = Daemon::start();
    let front = d.ok(&["network", "create", "front"]).trim().to_string();
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--network",
        "name=front,alias=www",
        "-p",
        "8080:80",
        "--publish",
        "target=443",
        "--endpoint-mode",
        "vip",
        "-d",
        "busybox",
    ]);
    let ls = d.ok(&["service", "ls"]);
    assert!(ls.lines().next().unwrap().ends_with("PORTS"), "{ls}");
    assert!(ls.lines().nth(1).unwrap().ends_with("*:8080->80/tcp, *:30000->443/tcp"), "{ls}");
    assert_eq!(
        d.ok(&["service", "inspect", "-f", "{{json .Spec.TaskTemplate.Networks}}", "web"]),
        format!("[{{\"Aliases\":[\"www\"],\"Target\":\"{front}\"}}]\n"),
        "the network is stored by id, with its alias"
    );
    assert_eq!(d.ok(&["service", "inspect", "-f", "{{(index .Endpoint.Ports 1).PublishedPort}}", "web"]), "30000\n");
    assert_eq!(d.ok(&["service", "inspect", "-f", "{{.Spec.EndpointSpec.Mode}}", "web"]), "vip\n");

    d.ok(&[
        "service",
        "update",
        "--publish-rm",
        "443",
        "--publish-add",
        "9090:90/udp",
        "--network-rm",
        "front",
        "-d",
        "web",
    ]);
    let ls = d.ok(&["service", "ls", "--format", "{{.Ports}}"]);
    assert_eq!(ls, "*:8080->80/tcp, *:9090->90/udp\n");
    assert!(!d.ok(&["service", "inspect", "-f", "{{json .Spec.TaskTemplate}}", "web"]).contains("Networks"));
    d.ok(&["service", "update", "--network-add", "front", "--endpoint-mode", "dnsrr", "-d", "web"]);
    assert_eq!(
        d.ok(&[
            "service",
            "inspect",
            "-f",
            "{{.Spec.EndpointSpec.Mode}} {{(index .Spec.TaskTemplate.Networks 0).Target}}",
            "web"
        ]),
        format!("dnsrr {front}\n")
    );

    assert!(d.fails(&["service", "create", "-p", "8080:80/sctp", "busybox"]).contains("invalid protocol \"sctp\""));
    assert!(d.fails(&["service", "create", "--endpoint-mode", "rr", "busybox"]).contains("invalid endpoint mode"));
    assert_eq!(
        d.fails(&["service", "create", "--network", "nope", "busybox"]),
        "Error response from daemon: network nope not found"
    );
}

/// The running tasks' ids of one service, from `stack ps`.
fn stack_task_ids(d: &Daemon, stack: &str, service: &str) -> Vec<String> {
    d.ok(&["stack", "ps", stack, "--no-trunc", "--filter", "desired-state=running", "--format", "{{.ID}} {{.Name}}"])
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|n| n.starts_with(&format!("{service}."))))
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn stacks_through_the_cli() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write compose file");
        p.to_str().expect("utf-8").to_string()
    };
    write(".env", "WEB_REPLICAS=2\n");
    let base = write(
        "compose.yml",
        "x-common: &common\n  image: busybox\n  labels: [tier=app]\n\
         services:\n  web:\n    <<: *common\n    command: httpd -f -p 80\n    deploy:\n      replicas: ${WEB_REPLICAS}\n\
         \x20   networks: [front]\n    build: .\n  worker:\n    <<: *common\n    command: [sleep, \"1000\"]\n    restart: always\n\
         networks:\n  front: {}\n",
    );
    let out = d.shoal(&["stack", "deploy", "-c", &base, "app"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "Creating network app_default\nCreating network app_front\nCreating service app_web\nCreating service app_worker\n"
    );
    assert_eq!(stderr, "Ignoring unsupported options: build, restart\n\n");
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\napp       2\n");
    assert_eq!(
        d.ok(&["stack", "services", "app", "--format", "{{.Name}} {{.Mode}} {{.Image}}"]),
        "app_web replicated busybox:latest\napp_worker replicated busybox:latest\n"
    );
    let web: serde_json::Value = serde_json::from_str(&d.ok(&["service", "inspect", "app_web"])).unwrap();
    let spec = &web[0]["spec"];
    assert_eq!(spec["mode"]["replicated"]["replicas"], 2, "replicas from .env: {spec}");
    assert_eq!(spec["labels"]["com.docker.stack.namespace"], "app");
    assert_eq!(spec["task_template"]["container"]["labels"]["tier"], "app");
    assert_eq!(spec["task_template"]["container"]["args"], serde_json::json!(["httpd", "-f", "-p", "80"]));
    let front_id = d.ok(&["network", "inspect", "-f", "{{.Id}}", "app_front"]);
    assert_eq!(spec["task_template"]["networks"][0]["target"], front_id.trim(), "attached by network id");
    let net: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", "app_default"])).unwrap();
    assert_eq!(net[0]["Labels"], serde_json::json!({"com.docker.stack.namespace": "app"}));

    // The same file again changes nothing.
    std::thread::sleep(START_AFTER);
    let web_tasks = stack_task_ids(&d, "app", "app_web");
    let worker_tasks = stack_task_ids(&d, "app", "app_worker");
    assert_eq!((web_tasks.len(), worker_tasks.len()), (2, 1));
    assert_eq!(d.ok(&["stack", "deploy", "-c", &base, "app"]), "");
    // An override file changing one service updates only that one, through UpdateService.
    let over = write("override.yml", "services:\n  worker:\n    environment:\n      MODE: fast\n");
    let out = d.ok(&["stack", "deploy", "-c", &base, "-c", &over, "app"]);
    assert!(out.starts_with("Updating service app_worker (id: "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(stack_task_ids(&d, "app", "app_web"), web_tasks, "web untouched");
    assert_ne!(stack_task_ids(&d, "app", "app_worker"), worker_tasks, "worker replaced");

    // Without the worker: kept unless --prune.
    let only_web = write(
        "web-only.yml",
        "services:\n  web:\n    image: busybox\n    labels: [tier=app]\n    command: httpd -f -p 80\n\
         \x20   deploy:\n      replicas: 2\n    networks: [front]\nnetworks:\n  front: {}\n",
    );
    assert_eq!(d.ok(&["stack", "deploy", "-c", &only_web, "app"]), "");
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\napp       2\n");
    assert_eq!(d.ok(&["stack", "deploy", "--prune", "-c", &only_web, "app"]), "Removing service app_worker\n");
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\napp       1\n");

    // Bad files: one line naming the file, line and key (or variable); nothing is deployed.
    let typo = write("typo.yml", "services:\n  db:\n    image: busybox\n    deploy:\n      replicaz: 2\n");
    assert_eq!(
        d.fails(&["stack", "deploy", "-c", &typo, "other"]),
        format!("{typo}:5:7: services.db.deploy.replicaz: unknown key \"replicaz\"")
    );
    let missing = write("missing.yml", "services:\n  db:\n    image: \"busybox:${DB_TAG:?set DB_TAG}\"\n");
    assert_eq!(
        d.fails(&["stack", "deploy", "-c", &missing, "other"]),
        format!("{missing}:3:5: services.db.image: required variable DB_TAG is missing a value: set DB_TAG")
    );
    let undeclared = write("undeclared.yml", "services:\n  db:\n    image: busybox\n    networks: [nowhere]\n");
    assert!(d.fails(&["stack", "deploy", "-c", &undeclared, "other"]).contains("network \"nowhere\" is not declared"));
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\napp       1\n", "nothing of 'other' was created");

    // config: merged and interpolated, without the extension fields.
    let config = d.ok(&["stack", "config", "-c", &base, "-c", &over]);
    assert!(
        config.contains("replicas: 2") && config.contains("MODE: fast") && !config.contains("x-common"),
        "{config}"
    );

    // rm removes the stack's services and networks, nothing else.
    d.ok(&["network", "create", "keep"]);
    assert_eq!(
        d.ok(&["stack", "rm", "app"]),
        "Removing service app_web\nRemoving network app_default\nRemoving network app_front\n"
    );
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\n");
    assert_eq!(d.ok(&["network", "ls", "--format", "{{.Name}}"]), "keep\n");
    let out = d.shoal(&["stack", "rm", "app"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Nothing found in stack: app\n");
}

#[test]
fn stack_deploy_pins_images_and_sends_the_stored_credentials() {
    let d = Daemon::start();
    let cfg = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let o = shoal_with(&d.socket, cfg.path(), "", args);
        assert!(o.status.success(), "`shoal {}`: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let o = shoal_with(&d.socket, cfg.path(), "pw\n", &["login", "-u", "me", "--password-stdin", "localhost:5000"]);
    assert!(o.status.success());
    let file = cfg.path().join("compose.yml");
    std::fs::write(&file, "services:\n  app:\n    image: localhost:5000/private:v1\n").unwrap();
    let file = file.to_str().unwrap();
    let stored = || {
        let st = d.fake.0.lock().unwrap();
        st.services.values().find(|s| s.spec.annotations.name == "st_app").cloned().expect("st_app")
    };

    let (out, err) = run(&["stack", "deploy", "--with-registry-auth", "-c", file, "st"]);
    assert_eq!(out, "Creating network st_default\nCreating service st_app\n");
    assert_eq!(err, "");
    let s = stored();
    assert_eq!(s.spec.task_template.container.image, format!("localhost:5000/private:v1@{}", private_digest(1)));
    assert_eq!(s.spec.annotations.labels["com.docker.stack.image"], "localhost:5000/private:v1");
    let auth = s.spec.task_template.container.pull_options.as_ref().expect("credentials sent");
    let auth = AuthConfig::decode(&auth.registry_auth).unwrap().unwrap();
    assert_eq!((auth.username.as_str(), auth.password.as_str()), ("me", "pw"));

    // The tag has not moved: nothing to update, whatever the mode.
    for mode in ["always", "changed", "never"] {
        assert_eq!(run(&["stack", "deploy", "--resolve-image", mode, "-c", file, "st"]).0, "", "{mode}");
    }
    // It moves: only `always` (the default) follows it.
    d.fake.0.lock().unwrap().private_version = 2;
    for mode in ["changed", "never"] {
        assert_eq!(run(&["stack", "deploy", "--resolve-image", mode, "-c", file, "st"]).0, "", "{mode}");
    }
    let (out, _) = run(&["stack", "deploy", "-c", file, "st"]);
    assert_eq!(out, format!("Updating service st_app (id: {})\n", s.id));
    let s = stored();
    assert_eq!(s.spec.task_template.container.image, format!("localhost:5000/private:v1@{}", private_digest(2)));
    assert!(s.spec.task_template.container.pull_options.is_some(), "the credentials stay without the flag");
    let bad =
        shoal_with(&d.socket, cfg.path(), "", &["stack", "deploy", "--resolve-image", "sometimes", "-c", file, "st"]);
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(bad.starts_with("invalid value 'sometimes' for '--resolve-image"), "{bad}");
    assert_eq!(bad.lines().count(), 1, "{bad}");
}
