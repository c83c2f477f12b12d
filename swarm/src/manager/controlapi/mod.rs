//! The control API (`shoal.Control`): the only way users change the cluster. It validates, then writes through
//! the store (so through Raft); reads come from the store's view.
//!
//! It is served on every node's local socket (by the engine) and, later, on the managers' cluster listener. It
//! answers only where a manager runs: the store handle it reads is published when this node becomes a manager.

pub mod endpoint;
pub mod network;
pub mod pullauth;
pub mod secrets;
pub mod validate;

use crate::api::control::*;
use crate::api::logs::{SubscribeLogsMessage, SubscribeLogsRequest};
use crate::api::{
    new_id, Cluster, Config, Network, Node, NodeRole, NodeState, ObjectKind, Secret, Service, ServiceMode, Task,
};
use crate::manager::dispatcher::logs::Selection;
use crate::manager::dispatcher::LogBroker;
use crate::manager::store::{ApplyError, MemoryStore, Store, StoreError};
use crate::transport::control::control_server::Control;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Docker's message when a swarm command reaches a node that is not a manager.
pub const NOT_A_MANAGER: &str =
    "This node is not a swarm manager. Use \"shoal swarm init\" or \"shoal swarm join\" to \
                                 connect this node to swarm and try again.";

/// Docker's message when a swarm command reaches a worker.
pub const WORKER_NOT_A_MANAGER: &str =
    "This node is not a swarm manager. Worker nodes can't be used to view or modify \
                                        cluster state. Please run this command on a manager node or promote the \
                                        current node to a manager.";

/// Docker's message when a swarm command reaches a manager that restarted locked (autolock) and was not unlocked.
pub const SWARM_LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \
                                \"shoal swarm unlock\" to unlock it.";

#[derive(Clone)]
pub struct ControlApi {
    store: watch::Receiver<Option<Store>>,
    /// Whether this node is a worker (only the refusal message depends on it).
    worker: Option<watch::Receiver<bool>>,
    /// Whether this node is a locked manager (autolock), for the refusal message.
    locked: Option<watch::Receiver<bool>>,
    /// Where `SubscribeLogs` gathers logs (the leader's dispatcher serves it).
    logs: Option<LogBroker>,
}

pub fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::Apply(ApplyError::NameConflict { .. }) | StoreError::Apply(ApplyError::Exists { .. }) => {
            Status::already_exists(e.to_string())
        }
        StoreError::Apply(ApplyError::NotFound { .. }) => Status::not_found(e.to_string()),
        StoreError::Apply(ApplyError::OutOfSequence { .. }) => Status::failed_precondition(e.to_string()),
        StoreError::NotLeader { .. } | StoreError::QuorumLost { .. } | StoreError::Raft(_) => {
            Status::unavailable(e.to_string())
        }
    }
}

/// Finds an object by exact id, exact name, or unique id prefix, as Docker does.
pub(crate) fn resolve<'a, T>(
    items: impl Iterator<Item = &'a T> + Clone,
    key: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
    what: &str,
) -> Result<&'a T, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!("{what} name or id must not be empty")));
    }
    if let Some(t) = items.clone().find(|t| id(t) == key) {
        return Ok(t);
    }
    if let Some(t) = items.clone().find(|t| name(t) == key) {
        return Ok(t);
    }
    let matches: Vec<&T> = items.filter(|t| id(t).starts_with(key)).collect();
    match matches[..] {
        [t] => Ok(t),
        [] => Err(Status::not_found(format!("{what} {key} not found"))),
        _ => Err(Status::invalid_argument(format!("{what} {key} is ambiguous ({} matches found)", matches.len()))),
    }
}

pub fn find_service<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Service, Status> {
    resolve(v.services(), key, |s| &s.id, |s| &s.spec.annotations.name, "service")
}

fn find_node<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Node, Status> {
    resolve(v.nodes(), key, |n| &n.id, |n| &n.description.hostname, "node")
}

pub fn find_network<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Network, Status> {
    resolve(v.networks(), key, |n| &n.id, |n| &n.spec.annotations.name, "network")
}

fn find_task<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Task, Status> {
    resolve(v.tasks(), key, |t| &t.id, |t| &t.id, "task")
}

/// Whether `n` is a manager and is meant to stay one.
fn stays_manager(n: &Node) -> bool {
    n.role == NodeRole::Manager && n.spec.desired_role == NodeRole::Manager
}

/// The cluster object as the API shows it: without the CA key.
pub fn redacted(c: &Cluster) -> Cluster {
    let mut c = c.clone();
    c.root_ca.ca_key_pem.clear();
    c.unlock_key.clear();
    c
}

/// Running and desired task counts of a service, as `service ls` shows them. For a job, Docker's: over its
/// current run, the tasks running and, as desired, the concurrency limit (replicated job) or the tasks not yet
/// complete (global job).
pub fn service_counts(v: &MemoryStore, s: &Service) -> (u64, u64) {
    if s.spec.mode.is_job() {
        let c = crate::manager::orchestrator::jobs::job_counts(v, s);
        return (c.running, c.desired);
    }
    // From the counts the store keeps, so `service ls` costs the services, not their tasks.
    let c = v.live_counts(&s.id);
    let desired = match s.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        _ => c.live,
    };
    (c.running, desired)
}

/// The page `page` asks for out of `items` (in id order, already after its token), and the next page's token:
/// the last id taken when more items follow, else empty.
fn one_page<'a, T>(
    mut items: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> &String,
    page: &PageRequest,
) -> (Vec<&'a T>, String) {
    if page.size == 0 {
        return (items.collect(), String::new());
    }
    let out: Vec<&T> = items.by_ref().take(page.size as usize).collect();
    let next = match (out.last(), items.next()) {
        (Some(last), Some(_)) => id(last).clone(),
        _ => String::new(),
    };
    (out, next)
}

impl ControlApi {
    /// Answers from whatever store `store` holds (None while this node is not a manager).
    pub fn new(store: watch::Receiver<Option<Store>>) -> Self {
        ControlApi { store, worker: None, locked: None, logs: None }
    }

    /// Serves `SubscribeLogs` through `logs`.
    pub fn with_logs(mut self, logs: LogBroker) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Refuses calls on a worker with Docker's worker message rather than the non-member one.
    pub fn with_worker(mut self, worker: watch::Receiver<bool>) -> Self {
        self.worker = Some(worker);
        self
    }

    /// Refuses calls on a locked manager with Docker's message saying to unlock it.
    pub fn with_locked(mut self, locked: watch::Receiver<bool>) -> Self {
        self.locked = Some(locked);
        self
    }

    /// A control API over a fixed store (tests).
    pub fn with_store(store: Store) -> Self {
        let (_tx, rx) = watch::channel(Some(store));
        ControlApi { store: rx, worker: None, locked: None, logs: None }
    }

    fn store(&self) -> Result<Store, Status> {
        if self.locked.as_ref().is_some_and(|l| *l.borrow()) {
            return Err(Status::failed_precondition(SWARM_LOCKED));
        }
        let worker = self.worker.as_ref().is_some_and(|w| *w.borrow());
        self.store
            .borrow()
            .clone()
            .ok_or_else(|| Status::failed_precondition(if worker { WORKER_NOT_A_MANAGER } else { NOT_A_MANAGER }))
    }
}

/// The service after `service update` with `spec` (validated). Only a changed spec makes a new spec version (and
/// keeps the current one for rollback) and clears the last update's status, so the updater starts anew; the
/// same spec again resumes a paused update (Docker's way to resume one: `service update SERVICE`).
pub fn updated(cur: &Service, spec: crate::api::ServiceSpec) -> Result<Service, Status> {
    if cur.spec.annotations.name != spec.annotations.name {
        return Err(Status::invalid_argument("renaming services is not supported"));
    }
    if std::mem::discriminant(&cur.spec.mode) != std::mem::discriminant(&spec.mode) {
        return Err(Status::invalid_argument("service mode change is not allowed"));
    }
    let mut next = cur.clone();
    if spec != cur.spec {
        next.previous_spec = Some(std::mem::replace(&mut next.spec, spec));
        next.spec_version = cur.spec_version + 1;
        next.update_status = None;
    } else if next
        .update_status
        .as_ref()
        .is_some_and(|s| matches!(s.state, crate::api::UpdateState::Paused | crate::api::UpdateState::RollbackPaused))
    {
        next.update_status = None;
    }
    Ok(next)
}

/// The service after `service rollback`: the previous spec comes back (and the current one becomes the
/// previous), rolled out with the rollback config.
pub fn rolled_back(cur: &Service) -> Result<Service, Status> {
    let Some(prev) = cur.previous_spec.clone() else {
        return Err(Status::failed_precondition(format!("service {} does not have a previous spec", cur.id)));
    };
    let mut next = cur.clone();
    next.previous_spec = Some(std::mem::replace(&mut next.spec, prev));
    next.spec_version = cur.spec_version + 1;
    next.update_status = Some(crate::api::UpdateStatus {
        state: crate::api::UpdateState::RollbackStarted,
        started_at: crate::api::Timestamp::now(),
        completed_at: None,
        message: crate::manager::orchestrator::update::MSG_MANUAL_ROLLBACK.into(),
    });
    Ok(next)
}

/// What `service logs SELECTOR` reads: the service so named, or else the task.
pub(crate) fn log_selection(v: &MemoryStore, selector: &str) -> Result<Selection, Status> {
    let placed = |t: &Task| (!t.node_id.is_empty()).then(|| (t.id.clone(), t.node_id.clone()));
    if let Ok(s) = find_service(v, selector) {
        let mut tasks: Vec<&Task> = v.tasks_by_service(&s.id).collect();
        tasks.sort_by_key(|t| (t.slot, t.meta.created_index));
        return Ok(Selection { service_id: Some(s.id.clone()), tasks: tasks.into_iter().filter_map(placed).collect() });
    }
    match find_task(v, selector) {
        Ok(t) => Ok(Selection { service_id: None, tasks: placed(t).into_iter().collect() }),
        Err(e) if e.code() == tonic::Code::NotFound => {
            Err(Status::not_found(format!("no such task or service: {selector}")))
        }
        Err(e) => Err(e),
    }
}

type LogsStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SubscribeLogsMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlApi {
    type SubscribeLogsStream = LogsStream;

    async fn subscribe_logs(
        &self,
        req: Request<SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        // Only managers answer (with Docker's refusal elsewhere); the leader's broker gathers the logs, a
        // follower's forwards the call there.
        self.store()?;
        let broker = self.logs.as_ref().ok_or_else(|| Status::unimplemented("logs are not served here"))?;
        let rx = broker.subscribe_request(req.into_inner()).await?;
        let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_service(&self, req: Request<CreateServiceRequest>) -> Result<Response<Service>, Status> {
        let store = self.store()?;
        let mut spec = req.into_inner().spec;
        validate::service_spec(&mut spec).map_err(|e| Status::invalid_argument(e.0))?;
        pullauth::seal(&mut spec.task_template.container, None, store.data_key().as_ref())?;
        let service = Service {
            id: new_id(),
            meta: Default::default(),
            spec,
            previous_spec: None,
            spec_version: 1,
            update_status: None,
            endpoint: None,
        };
        let id = service.id.clone();
        store
            .update(|tx| {
                let mut service = service;
                endpoint::resolve(tx.view(), &mut service.spec, &service.id)?;
                secrets::resolve_references(tx.view(), &mut service.spec)?;
                tx.create(service);
                Ok::<_, Status>(())
            })
            .await?;
        tracing::info!(service.id = %id, "service created");
        store
            .view(|v| v.service(&id).cloned())
            .map(|s| Response::new(s.redacted()))
            .ok_or_else(|| Status::internal("service vanished"))
    }

    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<Service>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| find_service(v, &key).cloned()).map(|s| Response::new(s.redacted()))
    }

    async fn update_service(&self, req: Request<UpdateServiceRequest>) -> Result<Response<Service>, Status> {
        let store = self.store()?;
        let UpdateServiceRequest { id, version, mut spec, rollback } = req.into_inner();
        if !rollback {
            validate::service_spec(&mut spec).map_err(|e| Status::invalid_argument(e.0))?;
        }
        let key = store.data_key();
        let id = store
            .update(|tx| {
                let cur = find_service(tx.view(), &id)?;
                // Reads never return the registry credentials, so a spec sent back without them keeps the
                // current ones (as Docker: new credentials only with `--with-registry-auth`).
                let mut spec = spec;
                let current = cur.spec.task_template.container.pull_options.as_ref();
                pullauth::seal(&mut spec.task_template.container, current, key.as_ref())?;
                let mut next = if rollback {
                    rolled_back(cur)?
                } else {
                    endpoint::resolve(tx.view(), &mut spec, &cur.id)?;
                    secrets::resolve_references(tx.view(), &mut spec)?;
                    updated(cur, spec)?
                };
                next.meta.version = version;
                let id = next.id.clone();
                if next != *cur {
                    tx.update(next);
                } else if cur.meta.version != version {
                    // Nothing to write, but a stale caller is still told, as with any other update.
                    return Err(status_of(StoreError::Apply(ApplyError::OutOfSequence {
                        kind: ObjectKind::Service,
                        id: cur.id.clone(),
                    })));
                }
                Ok(id)
            })
            .await?;
        tracing::info!(service.id = %id, rollback, "service updated");
        store
            .view(|v| v.service(&id).cloned())
            .map(|s| Response::new(s.redacted()))
            .ok_or_else(|| Status::not_found("service removed"))
    }

    async fn remove_service(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let store = self.store()?;
        let key = req.into_inner().id_or_name;
        store
            .update(|tx| {
                let s = find_service(tx.view(), &key)?;
                tx.delete(ObjectKind::Service, &s.id, s.meta.version);
                Ok::<_, Status>(())
            })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_services(&self, req: Request<ListServicesRequest>) -> Result<Response<ListServicesResponse>, Status> {
        let r = req.into_inner();
        let names = r.names;
        let (services, next_page_token) = self.store()?.view(|v| {
            let matching = v.services_after(&r.page.token).filter(|s| {
                names.is_empty()
                    || names
                        .iter()
                        .any(|n| s.spec.annotations.name.starts_with(n.as_str()) || s.id.starts_with(n.as_str()))
            });
            let (page, next) = one_page(matching, |s| &s.id, &r.page);
            let services = page
                .into_iter()
                .map(|s| {
                    let (running_tasks, desired_tasks) = service_counts(v, s);
                    ServiceWithStatus { service: s.clone().redacted(), running_tasks, desired_tasks }
                })
                .collect();
            (services, next)
        });
        Ok(Response::new(ListServicesResponse { services, next_page_token }))
    }

    async fn get_node(&self, req: Request<GetRequest>) -> Result<Response<Node>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| find_node(v, &key).cloned()).map(Response::new)
    }

    async fn list_nodes(&self, _req: Request<Empty>) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.store()?.view(|v| v.nodes().cloned().collect());
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Result<Response<Node>, Status> {
        let store = self.store()?;
        let UpdateNodeRequest { node_id, version, spec } = req.into_inner();
        validate::node_spec(&spec).map_err(|e| Status::invalid_argument(e.0))?;
        let id = store
            .update(|tx| {
                let view = tx.view();
                let cur = find_node(view, &node_id)?;
                let demoted = cur.spec.desired_role == NodeRole::Manager && spec.desired_role == NodeRole::Worker;
                // Docker's guard: some other node must stay a manager. (Whether removing this member keeps the
                // Raft quorum is Raft's to refuse when it acts on the desired role.)
                if demoted && !view.nodes().any(|n| n.id != cur.id && stays_manager(n)) {
                    return Err(Status::failed_precondition("attempting to demote the last manager of the swarm"));
                }
                let mut next = cur.clone();
                next.meta.version = version;
                next.spec = spec;
                let id = next.id.clone();
                tx.update(next);
                Ok(id)
            })
            .await?;
        store.view(|v| v.node(&id).cloned()).map(Response::new).ok_or_else(|| Status::not_found("node removed"))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<Empty>, Status> {
        let store = self.store()?;
        let RemoveNodeRequest { node_id, force } = req.into_inner();
        // Retried on a fresh view when another writer (the dispatcher marking the node DOWN, a cluster setting)
        // wins a race: the caller gave no version, so there is nothing stale to report. Refusals are the inner
        // error and propose nothing.
        let id = store
            .update_retrying(5, |tx| {
                let view = tx.view();
                let node = match find_node(view, &node_id) {
                    Ok(n) => n.clone(),
                    Err(e) => return Ok(Err(e)),
                };
                if node.spec.desired_role == NodeRole::Manager || node.role == NodeRole::Manager {
                    return Ok(Err(Status::failed_precondition(format!(
                        "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to \
                         worker before removal",
                        node.id
                    ))));
                }
                if !force && node.status.state == NodeState::Ready {
                    return Ok(Err(Status::failed_precondition(format!(
                        "node {} is not down and can't be removed",
                        node.id
                    ))));
                }
                // The tombstone and the delete are one proposal: a removed node is never forgotten.
                if let Some(c) = view.cluster() {
                    let mut c = c.clone();
                    c.removed_nodes.insert(node.id.clone());
                    tx.update(c);
                }
                tx.delete(ObjectKind::Node, &node.id, node.meta.version);
                Ok(Ok(node.id))
            })
            .await??;
        tracing::info!(node.id = %id, force, "node removed");
        Ok(Response::new(Empty {}))
    }

    async fn get_task(&self, req: Request<GetRequest>) -> Result<Response<Task>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| find_task(v, &key).cloned()).map(|t| Response::new(t.redacted()))
    }

    async fn list_tasks(&self, req: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let f = req.into_inner();
        let (tasks, next_page_token) = self.store()?.view(|v| {
            let after = f.page.token.as_str();
            // Through the narrowest index the filter allows, so `service ps` costs the service, not the cluster;
            // in id order, so pages follow each other.
            let candidates: Box<dyn Iterator<Item = &Task>> = if f.service_ids.is_empty() && f.node_ids.is_empty() {
                Box::new(v.tasks_after(after))
            } else {
                let mut ts: Vec<&Task> = if !f.service_ids.is_empty() {
                    let ids: std::collections::BTreeSet<&String> = f.service_ids.iter().collect();
                    ids.into_iter().flat_map(|id| v.tasks_by_service(id)).collect()
                } else {
                    let ids: std::collections::BTreeSet<&String> = f.node_ids.iter().collect();
                    ids.into_iter().flat_map(|id| v.tasks_by_node(id)).collect()
                };
                ts.retain(|t| t.id.as_str() > after);
                ts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                Box::new(ts.into_iter())
            };
            let matching = candidates
                .filter(|t| f.service_ids.is_empty() || f.service_ids.contains(&t.service_id))
                .filter(|t| f.node_ids.is_empty() || f.node_ids.contains(&t.node_id))
                .filter(|t| f.desired_states.is_empty() || f.desired_states.contains(&t.desired_state));
            let (page, next) = one_page(matching, |t| &t.id, &f.page);
            (page.into_iter().map(|t| t.clone().redacted()).collect(), next)
        });
        Ok(Response::new(ListTasksResponse { tasks, next_page_token }))
    }

    async fn update_cluster(&self, req: Request<UpdateClusterRequest>) -> Result<Response<GetClusterResponse>, Status> {
        let store = self.store()?;
        let r = req.into_inner();
        r.spec.validate().map_err(Status::invalid_argument)?;
        if r.rotate_unlock_key && !r.spec.encryption_config.auto_lock_managers {
            return Err(Status::failed_precondition("cannot rotate because autolock is not turned on"));
        }
        let data_key = store.data_key();
        store
            .update(|tx| {
                let mut cluster = tx
                    .view()
                    .cluster()
                    .cloned()
                    .ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
                if cluster.meta.version != r.version {
                    return Err(status_of(StoreError::Apply(ApplyError::OutOfSequence {
                        kind: crate::api::ObjectKind::Cluster,
                        id: cluster.id.clone(),
                    })));
                }
                // Only the spec changes here; the CA, tokens and tombstones have their own calls, except that a
                // bumped `force_rotate` (`swarm ca --rotate`) starts a root CA rotation, as in Docker.
                if r.spec.ca_config.force_rotate != cluster.spec.ca_config.force_rotate {
                    let nodes = tx.view().nodes().map(|n| n.id.clone()).collect::<Vec<_>>();
                    crate::ca::start_rotation(&mut cluster.root_ca, nodes).map_err(|e| match e {
                        crate::ca::CaError::RotationInProgress => Status::failed_precondition(e.to_string()),
                        e => Status::internal(e.to_string()),
                    })?;
                    tracing::info!("root CA rotation started");
                }
                // Autolock: a new unlock key when it is turned on or rotated, none when it is turned off. Each
                // manager re-wraps its key files when it applies this (`manager/autolock.rs`).
                if !r.spec.encryption_config.auto_lock_managers {
                    cluster.unlock_key.clear();
                } else if cluster.unlock_key.is_empty() || r.rotate_unlock_key {
                    let key = data_key.as_ref().ok_or_else(|| Status::unavailable(secrets::NO_DATA_KEY))?;
                    cluster.unlock_key = crate::manager::autolock::new_sealed_key(key).1;
                    tracing::info!("new manager unlock key");
                }
                cluster.spec = r.spec;
                tx.update(cluster);
                Ok(())
            })
            .await?;
        self.get_cluster(Request::new(Empty {})).await
    }

    async fn create_network(&self, req: Request<CreateNetworkRequest>) -> Result<Response<Network>, Status> {
        let store = self.store()?;
        let mut spec = req.into_inner().spec;
        network::check_spec(&mut spec)?;
        // Decided on the view the write reads: a concurrent create of the same subnet or VNI fails its version
        // check instead of sharing it.
        let id = store
            .update(|tx| {
                // Before the cluster object exists (never, past init) the defaults apply.
                let pools = match tx.view().cluster() {
                    Some(c) => network::pools_of(c)?,
                    None => crate::manager::ipam::DefaultPools::default(),
                };
                let n = network::allocate(tx.view(), spec, &pools)?;
                let id = n.id.clone();
                tx.create(n);
                Ok::<_, Status>(id)
            })
            .await?;
        tracing::info!(network.id = %id, "network created");
        store.view(|v| v.network(&id).cloned()).map(Response::new).ok_or_else(|| Status::internal("network vanished"))
    }

    async fn get_network(&self, req: Request<GetRequest>) -> Result<Response<Network>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| find_network(v, &key).cloned()).map(Response::new)
    }

    async fn list_networks(&self, req: Request<ListNetworksRequest>) -> Result<Response<ListNetworksResponse>, Status> {
        let names = req.into_inner().names;
        let networks = self.store()?.view(|v| {
            v.networks()
                .filter(|n| {
                    names.is_empty()
                        || names
                            .iter()
                            .any(|k| n.spec.annotations.name.starts_with(k.as_str()) || n.id.starts_with(k.as_str()))
                })
                .cloned()
                .collect()
        });
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn remove_network(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let store = self.store()?;
        let key = req.into_inner().id_or_name;
        let id = store
            .update(|tx| {
                let n = find_network(tx.view(), &key)?;
                network::check_removable(n)?;
                endpoint::check_unused(tx.view(), n)?;
                tx.delete(ObjectKind::Network, &n.id, n.meta.version);
                Ok::<_, Status>(n.id.clone())
            })
            .await?;
        tracing::info!(network.id = %id, "network removed");
        Ok(Response::new(Empty {}))
    }

    async fn create_secret(&self, req: Request<CreateSecretRequest>) -> Result<Response<Secret>, Status> {
        let store = self.store()?;
        let spec = req.into_inner().spec;
        secrets::check_secret_spec(&spec)?;
        let key = store.data_key().ok_or_else(|| Status::unavailable(secrets::NO_DATA_KEY))?;
        let secret = secrets::sealed_secret(spec, &key, None);
        let id = secret.id.clone();
        store
            .update(|tx| {
                if let Some(s) = tx.view().secret_by_name(&secret.spec.annotations.name) {
                    return Err(Status::already_exists(format!("secret {} already exists", s.spec.annotations.name)));
                }
                tx.create(secret);
                Ok(())
            })
            .await?;
        tracing::info!(secret.id = %id, "secret created");
        self.get_secret(Request::new(GetRequest { id_or_name: id })).await
    }

    async fn get_secret(&self, req: Request<GetRequest>) -> Result<Response<Secret>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| secrets::find_secret(v, &key).map(secrets::redacted)).map(Response::new)
    }

    async fn list_secrets(&self, req: Request<ListSecretsRequest>) -> Result<Response<ListSecretsResponse>, Status> {
        let names = req.into_inner().names;
        let secrets = self.store()?.view(|v| {
            v.secrets()
                .filter(|s| {
                    names.is_empty()
                        || names
                            .iter()
                            .any(|k| s.spec.annotations.name.starts_with(k.as_str()) || s.id.starts_with(k.as_str()))
                })
                .map(secrets::redacted)
                .collect()
        });
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn update_secret(&self, req: Request<UpdateSecretRequest>) -> Result<Response<Secret>, Status> {
        let store = self.store()?;
        let UpdateSecretRequest { id, version, spec } = req.into_inner();
        let id = store
            .update(|tx| {
                let cur = secrets::find_secret(tx.view(), &id)?;
                let mut next = secrets::relabelled_secret(cur, spec)?;
                next.meta.version = version;
                let id = next.id.clone();
                tx.update(next);
                Ok::<_, Status>(id)
            })
            .await?;
        self.get_secret(Request::new(GetRequest { id_or_name: id })).await
    }

    async fn remove_secret(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let store = self.store()?;
        let key = req.into_inner().id_or_name;
        let id = store
            .update(|tx| {
                let s = secrets::find_secret(tx.view(), &key)?;
                let users = secrets::services_using_secrets(tx.view(), &[s.id.as_str()].into());
                if !users.is_empty() {
                    return Err(secrets::in_use("secret", &s.spec.annotations.name, &users));
                }
                tx.delete(ObjectKind::Secret, &s.id, s.meta.version);
                Ok::<_, Status>(s.id.clone())
            })
            .await?;
        tracing::info!(secret.id = %id, "secret removed");
        Ok(Response::new(Empty {}))
    }

    async fn rotate_secret(&self, req: Request<RotateSecretRequest>) -> Result<Response<RotateSecretResponse>, Status> {
        let store = self.store()?;
        let RotateSecretRequest { id_or_name, data } = req.into_inner();
        let key = store.data_key().ok_or_else(|| Status::unavailable(secrets::NO_DATA_KEY))?;
        let (id, services) = store
            .update(|tx| {
                let r = secrets::rotate(tx.view(), &id_or_name, data, &key)?;
                let id = r.secret.id.clone();
                let names = r.services.iter().map(|s| s.spec.annotations.name.clone()).collect::<Vec<_>>();
                tx.create(r.secret);
                for s in r.services {
                    tx.update(s);
                }
                for old in r.unused {
                    tx.delete(ObjectKind::Secret, &old.id, old.meta.version);
                }
                Ok::<_, Status>((id, names))
            })
            .await?;
        tracing::info!(secret.id = %id, services = ?services, "secret rotated");
        let secret = self.get_secret(Request::new(GetRequest { id_or_name: id })).await?.into_inner();
        Ok(Response::new(RotateSecretResponse { secret, services }))
    }

    async fn create_config(&self, req: Request<CreateConfigRequest>) -> Result<Response<Config>, Status> {
        let store = self.store()?;
        let spec = req.into_inner().spec;
        secrets::check_config_spec(&spec)?;
        let config = Config { id: new_id(), meta: Default::default(), spec };
        let id = config.id.clone();
        store
            .update(|tx| {
                if let Some(c) = tx.view().config_by_name(&config.spec.annotations.name) {
                    return Err(Status::already_exists(format!("config {} already exists", c.spec.annotations.name)));
                }
                tx.create(config);
                Ok(())
            })
            .await?;
        tracing::info!(config.id = %id, "config created");
        self.get_config(Request::new(GetRequest { id_or_name: id })).await
    }

    async fn get_config(&self, req: Request<GetRequest>) -> Result<Response<Config>, Status> {
        let key = req.into_inner().id_or_name;
        self.store()?.view(|v| secrets::find_config(v, &key).cloned()).map(Response::new)
    }

    async fn list_configs(&self, req: Request<ListSecretsRequest>) -> Result<Response<ListConfigsResponse>, Status> {
        let names = req.into_inner().names;
        let configs = self.store()?.view(|v| {
            v.configs()
                .filter(|c| {
                    names.is_empty()
                        || names
                            .iter()
                            .any(|k| c.spec.annotations.name.starts_with(k.as_str()) || c.id.starts_with(k.as_str()))
                })
                .cloned()
                .collect()
        });
        Ok(Response::new(ListConfigsResponse { configs }))
    }

    async fn update_config(&self, req: Request<UpdateConfigRequest>) -> Result<Response<Config>, Status> {
        let store = self.store()?;
        let UpdateConfigRequest { id, version, spec } = req.into_inner();
        let id = store
            .update(|tx| {
                let cur = secrets::find_config(tx.view(), &id)?;
                let mut next = secrets::relabelled_config(cur, spec)?;
                next.meta.version = version;
                let id = next.id.clone();
                tx.update(next);
                Ok::<_, Status>(id)
            })
            .await?;
        self.get_config(Request::new(GetRequest { id_or_name: id })).await
    }

    async fn remove_config(&self, req: Request<GetRequest>) -> Result<Response<Empty>, Status> {
        let store = self.store()?;
        let key = req.into_inner().id_or_name;
        let id = store
            .update(|tx| {
                let c = secrets::find_config(tx.view(), &key)?;
                let users = secrets::services_using_config(tx.view(), &c.id);
                if !users.is_empty() {
                    return Err(secrets::in_use("config", &c.spec.annotations.name, &users));
                }
                tx.delete(ObjectKind::Config, &c.id, c.meta.version);
                Ok::<_, Status>(c.id.clone())
            })
            .await?;
        tracing::info!(config.id = %id, "config removed");
        Ok(Response::new(Empty {}))
    }

    async fn get_cluster(&self, _req: Request<Empty>) -> Result<Response<GetClusterResponse>, Status> {
        self.store()?.view(|v| {
            let cluster = v.cluster().ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
            Ok(Response::new(GetClusterResponse {
                cluster: redacted(cluster),
                managers: v.nodes().filter(|n| n.manager_status.is_some()).count() as u64,
                nodes: v.nodes().count() as u64,
            }))
        })
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        status_of(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskState;
    use crate::testing::service;

    /// Listings page in id order: every task exactly once across pages, the filter applied before the page is
    /// cut, the last page without a token; `service ls` counts come from the store's counters.
    #[tokio::test]
    async fn listings_page_through_every_item_once_and_service_counts_follow_task_states() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        store
            .update(|tx| {
                for s in 0..3 {
                    tx.create(service(&format!("s{s}"), &format!("web{s}"), 4));
                }
                for i in 0..12 {
                    let mut t = crate::testing::task(&format!("t{i:02}"), &format!("s{}", i % 3), i / 3 + 1);
                    t.node_id = format!("n{}", i % 2);
                    if i % 4 == 0 {
                        t.status.state = TaskState::Running;
                    }
                    if i == 11 {
                        t.desired_state = TaskState::Shutdown;
                    }
                    tx.create(t);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        for filter in [
            ListTasksRequest::default(),
            ListTasksRequest { service_ids: vec!["s2".into(), "s0".into()], ..Default::default() },
            ListTasksRequest {
                node_ids: vec!["n1".into()],
                desired_states: vec![TaskState::Running],
                ..Default::default()
            },
        ] {
            let all = api.list_tasks(Request::new(filter.clone())).await.unwrap().into_inner();
            assert!(all.next_page_token.is_empty(), "page size 0 answers everything at once");
            let mut paged = Vec::new();
            let mut req = ListTasksRequest { page: PageRequest { size: 2, token: String::new() }, ..filter.clone() };
            for _ in 0..20 {
                let r = api.list_tasks(Request::new(req.clone())).await.unwrap().into_inner();
                assert!(r.tasks.len() <= 2);
                paged.extend(r.tasks.into_iter().map(|t| t.id));
                if r.next_page_token.is_empty() {
                    break;
                }
                req.page.token = r.next_page_token;
            }
            let mut want: Vec<String> = all.tasks.into_iter().map(|t| t.id).collect();
            want.sort();
            assert!(!want.is_empty());
            assert_eq!(paged, want, "pages of {filter:?}");
        }
        let page = |token: &str| ListServicesRequest {
            page: PageRequest { size: 2, token: token.into() },
            ..Default::default()
        };
        let first = api.list_services(Request::new(page(""))).await.unwrap().into_inner();
        assert_eq!(first.services.len(), 2);
        let second = api.list_services(Request::new(page(&first.next_page_token))).await.unwrap().into_inner();
        assert_eq!(second.services.len(), 1);
        assert!(second.next_page_token.is_empty());
        // t00, t04 and t08 run, one in each service.
        let counts: Vec<(String, u64, u64)> = first
            .services
            .iter()
            .chain(&second.services)
            .map(|s| (s.service.id.clone(), s.running_tasks, s.desired_tasks))
            .collect();
        assert_eq!(counts, vec![("s0".into(), 1, 4), ("s1".into(), 1, 4), ("s2".into(), 1, 4)]);
    }

    #[tokio::test]
    async fn bad_input_changes_nothing() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let spec = service("x", "web", 3).spec;
        api.create_service(Request::new(CreateServiceRequest { spec: spec.clone() })).await.unwrap();

        let dup = api.create_service(Request::new(CreateServiceRequest { spec: spec.clone() })).await.unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        assert!(dup.message().contains("web already exists"), "{}", dup.message());

        let mut bad = spec.clone();
        bad.annotations.name = "not.a.name".into();
        let e = api.create_service(Request::new(CreateServiceRequest { spec: bad })).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(store.view(|v| v.services().count()), 1);

        let s = api.get_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap().into_inner();
        let stale = UpdateServiceRequest {
            id: s.id.clone(),
            version: s.meta.version + 100,
            spec: s.spec.clone(),
            rollback: false,
        };
        let e = api.update_service(Request::new(stale)).await.unwrap_err();
        assert!(e.message().contains("update out of sequence"), "{}", e.message());
    }

    #[tokio::test]
    async fn registry_credentials_are_stored_but_never_returned() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let auth = |s: &str| Some(crate::api::PullOptions { registry_auth: s.into(), sealed: vec![] });
        let mut spec = service("x", "web", 1).spec;
        spec.task_template.container.pull_options = auth("c2VjcmV0");
        let created = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
        assert_eq!(created.spec.task_template.container.pull_options, None, "create's answer");
        let stored = || store.view(|v| v.service(&created.id).cloned().unwrap());
        // Kept for the agents, sealed.
        let opened = |s: &Service| {
            let p = s.spec.task_template.container.pull_options.clone().unwrap();
            assert!(p.registry_auth.is_empty(), "stored in clear");
            String::from_utf8(store.data_key().unwrap().open(&p.sealed).unwrap()).unwrap()
        };
        assert_eq!(opened(&stored()), "c2VjcmV0");
        let sealed_at_create = stored().spec.task_template.container.pull_options;

        let got = api.get_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap().into_inner();
        assert_eq!(got.spec.task_template.container.pull_options, None);
        let listed = api.list_services(Request::new(ListServicesRequest::default())).await.unwrap().into_inner();
        assert!(listed.services.iter().all(|s| s.service.spec.task_template.container.pull_options.is_none()));
        let json = serde_json::to_string(&got).unwrap();
        assert!(!json.contains("c2VjcmV0") && !json.contains("pull_options"), "{json}");

        // A spec read back (without credentials) and sent with a change keeps the stored credentials.
        let mut next = got.spec.clone();
        next.task_template.container.env.push("A=1".into());
        let req = UpdateServiceRequest { id: got.id.clone(), version: got.meta.version, spec: next, rollback: false };
        let updated = api.update_service(Request::new(req)).await.unwrap().into_inner();
        assert_eq!(updated.spec.task_template.container.pull_options, None);
        assert!(updated.previous_spec.as_ref().unwrap().task_template.container.pull_options.is_none());
        let s = stored();
        assert_eq!(s.spec.task_template.container.pull_options, sealed_at_create);
        assert_eq!(s.spec.task_template.container.env, vec!["A=1"]);

        // The same credentials sent again change nothing (no new ciphertext, so no new spec version).
        let mut next = got.spec.clone();
        next.task_template.container.env.push("A=1".into());
        next.task_template.container.pull_options = auth("c2VjcmV0");
        let req = UpdateServiceRequest { id: s.id.clone(), version: s.meta.version, spec: next, rollback: false };
        api.update_service(Request::new(req)).await.unwrap();
        assert_eq!(stored().spec_version, s.spec_version);

        // New credentials replace them.
        let mut next = got.spec.clone();
        next.task_template.container.pull_options = auth("bmV3");
        let req = UpdateServiceRequest { id: s.id.clone(), version: s.meta.version, spec: next, rollback: false };
        api.update_service(Request::new(req)).await.unwrap();
        assert_eq!(opened(&stored()), "bmV3");

        // Tasks carry them in the store (the dispatcher sends those) but not through the control API.
        let mut t = crate::testing::task("t1", &created.id, 1);
        t.spec = stored().spec.task_template.clone().into();
        store
            .update(|tx| {
                tx.create(t);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let tasks = api.list_tasks(Request::new(ListTasksRequest::default())).await.unwrap().into_inner().tasks;
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].spec.container.pull_options, None);
        let one = api.get_task(Request::new(GetRequest { id_or_name: "t1".into() })).await.unwrap().into_inner();
        assert_eq!(one.spec.container.pull_options, None);
        assert!(store.view(|v| v.task("t1").unwrap().spec.container.pull_options.is_some()));
        assert!(!format!("{:?}", stored()).contains("bmV3"), "Debug never shows the credentials");
    }

    #[tokio::test]
    async fn spec_versions_previous_spec_and_rollback() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let created = api
            .create_service(Request::new(CreateServiceRequest { spec: service("x", "web", 3).spec }))
            .await
            .unwrap()
            .into_inner();
        let get = || store.view(|v| v.service(&created.id).cloned().unwrap());
        let update = |spec, rollback| {
            let cur = get();
            api.update_service(Request::new(UpdateServiceRequest {
                id: cur.id.clone(),
                version: cur.meta.version,
                spec,
                rollback,
            }))
        };
        assert_eq!((created.spec_version, created.previous_spec.as_ref()), (1, None));

        let e = update(created.spec.clone(), true).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_eq!(e.message(), format!("service {} does not have a previous spec", created.id));
        let mut bad = created.spec.clone();
        bad.update_config.max_failure_ratio = 2.0;
        let e = update(bad, false).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::InvalidArgument, "--update-max-failure-ratio must be between 0 and 1, got 2")
        );
        assert_eq!(get(), created, "refused updates changed nothing");

        update(created.spec.clone(), false).await.unwrap();
        assert_eq!(get(), created, "the same spec again writes nothing");

        let mut scaled = created.spec.clone();
        scaled.mode = ServiceMode::Replicated { replicas: 5 };
        let s = update(scaled.clone(), false).await.unwrap().into_inner();
        assert_eq!((s.spec_version, s.previous_spec.as_ref()), (2, Some(&created.spec)));

        let mut forced = scaled.clone();
        forced.task_template.force_update += 1;
        let s = update(forced.clone(), false).await.unwrap().into_inner();
        assert_eq!((s.spec_version, s.previous_spec.as_ref()), (3, Some(&scaled)), "--force is a change");

        let s = update(forced.clone(), true).await.unwrap().into_inner();
        assert_eq!(s.spec, scaled, "back to the previous spec");
        assert_eq!(s.previous_spec.as_ref(), Some(&forced), "and the current one becomes the previous");
        assert_eq!(s.spec_version, 4);
        let st = s.update_status.unwrap();
        assert_eq!(
            (st.state, st.message.as_str()),
            (crate::api::UpdateState::RollbackStarted, "manually requested rollback")
        );

        // A paused update resumes when the same spec is sent again.
        let mut paused = get();
        paused.update_status = Some(crate::api::UpdateStatus {
            state: crate::api::UpdateState::Paused,
            started_at: crate::api::Timestamp::now(),
            completed_at: None,
            message: "update paused due to failure or early termination of task t".into(),
        });
        store
            .update(|tx| {
                tx.update(paused);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let s = update(scaled.clone(), false).await.unwrap().into_inner();
        assert_eq!((s.spec_version, s.update_status), (4, None));
    }

    /// A store with the cluster object, manager `m`, ready worker `w` and down worker `d`.
    async fn nodes_store() -> Store {
        let store = Store::in_memory();
        let cluster: Cluster = serde_json::from_value(serde_json::json!({
            "id": "c1", "spec": {"name": "default"},
            "root_ca": {"ca_cert_pem": "", "ca_cert_digest": "", "join_tokens": {"worker": "", "manager": ""}}
        }))
        .unwrap();
        let worker = |id: &str, state| {
            let mut n = crate::testing::node(id, &format!("host-{id}"));
            n.role = NodeRole::Worker;
            n.spec.desired_role = NodeRole::Worker;
            n.status.state = state;
            n
        };
        store
            .update(|tx| {
                tx.create(cluster);
                tx.create(crate::testing::node("m", "host-m"));
                tx.create(worker("w", NodeState::Ready));
                tx.create(worker("d", NodeState::Down));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        store
    }

    fn everything(store: &Store) -> Vec<crate::api::Object> {
        store.view(|v| v.objects().collect())
    }

    #[tokio::test]
    async fn bad_node_updates_change_nothing() {
        let store = nodes_store().await;
        let api = ControlApi::with_store(store.clone());
        let get = |id: &str| store.view(|v| v.node(id).cloned().unwrap());
        let update = |node_id: &str, version, spec| {
            api.update_node(Request::new(UpdateNodeRequest { node_id: node_id.into(), version, spec }))
        };
        let before = everything(&store);
        let w = get("w");

        let e = update("nope", w.meta.version, w.spec.clone()).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "node nope not found"));
        let e = update("", w.meta.version, w.spec.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // An id prefix shared by two nodes, in Docker's words.
        let e = find_node(
            &MemoryStore::from_objects(vec![
                crate::testing::node("ab1", "h1").into(),
                crate::testing::node("ab2", "h2").into(),
            ]),
            "ab",
        )
        .unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "node ab is ambiguous (2 matches found)"));
        let e = update("w", w.meta.version + 100, w.spec.clone()).await.unwrap_err();
        assert!(e.message().contains("update out of sequence"), "{}", e.message());
        let mut bad = w.spec.clone();
        bad.annotations.labels.insert(String::new(), "x".into());
        let e = update("w", w.meta.version, bad).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "invalid label: the key must not be empty"));
        let m = get("m");
        let mut demote = m.spec.clone();
        demote.desired_role = NodeRole::Worker;
        let e = update("host-m", m.meta.version, demote.clone()).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::FailedPrecondition, "attempting to demote the last manager of the swarm")
        );
        assert_eq!(everything(&store), before, "refused updates changed the store");

        // Drain and label the worker, by hostname.
        let mut spec = w.spec.clone();
        spec.availability = crate::api::NodeAvailability::Drain;
        spec.annotations.labels.insert("zone".into(), "east".into());
        let updated = update("host-w", w.meta.version, spec.clone()).await.unwrap().into_inner();
        assert_eq!(updated.spec, spec);
        assert_eq!(get("w").spec, spec);

        // Promoting w records the desired role only; m is still the last manager until w's role follows.
        let w = get("w");
        let mut promote = w.spec.clone();
        promote.desired_role = NodeRole::Manager;
        update("w", w.meta.version, promote).await.unwrap();
        assert_eq!(get("w").role, NodeRole::Worker, "the role changes when the node becomes a manager");
        let e = update("m", m.meta.version, demote.clone()).await.unwrap_err();
        assert!(e.message().contains("last manager"), "{}", e.message());
        let mut w = get("w");
        w.role = NodeRole::Manager;
        store
            .update(|tx| {
                tx.update(w);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let demoted = update("m", m.meta.version, demote).await.unwrap().into_inner();
        assert_eq!(demoted.spec.desired_role, NodeRole::Worker);
    }

    #[tokio::test]
    async fn node_removal_refuses_ready_nodes_and_managers_and_records_the_removed() {
        let store = nodes_store().await;
        let api = ControlApi::with_store(store.clone());
        let remove =
            |node_id: &str, force| api.remove_node(Request::new(RemoveNodeRequest { node_id: node_id.into(), force }));
        let before = everything(&store);
        let e = remove("nope", true).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = remove("host-w", false).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::FailedPrecondition, "node w is not down and can't be removed")
        );
        let e = remove("m", true).await.unwrap_err();
        assert_eq!(
            e.message(),
            "node m is a cluster manager and is a member of the raft cluster. It must be demoted to worker before \
             removal"
        );
        assert_eq!(everything(&store), before, "refused removals changed the store");

        remove("d", false).await.expect("a down worker is removed");
        remove("host-w", true).await.expect("--force removes a ready worker");
        let (nodes, removed) = store.view(|v| {
            (v.nodes().map(|n| n.id.clone()).collect::<Vec<_>>(), v.cluster().unwrap().removed_nodes.clone())
        });
        assert_eq!(nodes, vec!["m"]);
        assert_eq!(removed.into_iter().collect::<Vec<_>>(), vec!["d", "w"]);
        let e = remove("d", false).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "removed once");
    }
}
