//! Each node's [`NetworkState`]: the networks its tasks are on (and `ingress`), every task endpoint on them
//! wherever it runs, the services reachable on them plus every service publishing an ingress port (every node
//! serves the routing mesh), and the node's own ingress address (every node's, when it runs tasks on the
//! ingress overlay).
//!
//! One [`Hub`] per running dispatcher watches the store and, on changes that touch networks (coalesced over
//! [`COALESCE`]), rebuilds one shared [`Snapshot`] indexed by network; each session cuts its node's state out of
//! it and sends it when it differs from what it sent last. A cluster without networks pays one cheap check per
//! store event and no rebuild.
//!
//! A rebuild keeps the previous snapshot's shared parts (a network's endpoints, the nodes' ingress addresses,
//! the service list) wherever they did not change, so a session tells whether its node's state changed by
//! comparing a few pointers ([`StateKey`]), not by cutting and comparing the whole state: with a thousand
//! sessions on a busy network, its thousand endpoints would otherwise be copied and compared a million times per
//! rebuild.

use crate::api::{
    NetworkAttachment, NetworkEndpoint, NetworkState, Object, PublishMode, Service, ServiceEndpoint, Task, TaskState,
};
use crate::manager::store::{Event, EventAction, MemoryStore, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How long network-touching changes are gathered into one rebuild (and so at most how often nodes are sent a
/// new state): well under a heartbeat, so a killed task stops being a backend within one.
pub const COALESCE: Duration = Duration::from_millis(50);

/// The longest a session holds back tasks on networks for the snapshot that includes them.
const WAIT_FOR_SNAPSHOT: Duration = Duration::from_secs(1);

/// Everything the nodes' states are cut from, built from one view.
#[derive(Debug, Default)]
pub struct Snapshot {
    ingress: Option<String>,
    networks: Arc<BTreeMap<String, crate::api::Network>>,
    /// Task endpoints by network, in (task id) order.
    endpoints: BTreeMap<String, Arc<Vec<NetworkEndpoint>>>,
    /// The nodes' own addresses on the ingress overlay (see [`Snapshot::peers_for`]), all and by node.
    node_endpoints: Arc<Vec<NetworkEndpoint>>,
    own_endpoints: HashMap<String, Vec<NetworkEndpoint>>,
    /// The networks each node has live tasks on.
    node_networks: HashMap<String, BTreeSet<String>>,
    /// Services, with the networks they are reachable on and whether they publish on the routing mesh.
    services: Arc<Vec<(ServiceEndpoint, BTreeSet<String>, bool)>>,
    node_attachments: HashMap<String, Vec<NetworkAttachment>>,
}

/// What one node's state is cut from: equal keys (the same shared parts of one snapshot or of snapshots that
/// kept them) mean equal states. The key holds the parts, so a freed part's address is never mistaken for a new
/// one.
#[derive(Debug, Clone)]
pub struct StateKey {
    networks: Arc<BTreeMap<String, crate::api::Network>>,
    /// The node's networks, each with its endpoints (None: no endpoint on it).
    endpoints: Vec<(String, Option<Arc<Vec<NetworkEndpoint>>>)>,
    services: Arc<Vec<(ServiceEndpoint, BTreeSet<String>, bool)>>,
    attachments: Vec<NetworkAttachment>,
    peers: Peers,
}

/// The ingress node endpoints one node gets.
#[derive(Debug, Clone, PartialEq)]
enum Peers {
    /// Every node's: the node runs tasks on the ingress overlay.
    All(Arc<Vec<NetworkEndpoint>>),
    /// Its own only.
    Own(Vec<NetworkEndpoint>),
}

impl PartialEq for StateKey {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.networks, &o.networks)
            && Arc::ptr_eq(&self.services, &o.services)
            && self.attachments == o.attachments
            && match (&self.peers, &o.peers) {
                (Peers::All(a), Peers::All(b)) => Arc::ptr_eq(a, b),
                (a, b) => a == b,
            }
            && self.endpoints.len() == o.endpoints.len()
            && self.endpoints.iter().zip(&o.endpoints).all(|((a, x), (b, y))| {
                a == b
                    && match (x, y) {
                        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                        (None, None) => true,
                        _ => false,
                    }
            })
    }
}

/// Whether `t` is an endpoint: placed on a node and not yet ended.
fn live(t: &Task) -> bool {
    !t.node_id.is_empty() && t.status.state >= TaskState::Assigned && !t.status.state.is_terminal()
}

/// Whether `t` takes traffic: running and meant to.
fn serving(t: &Task) -> bool {
    t.status.state == TaskState::Running && t.desired_state == TaskState::Running
}

fn ip_of(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

impl Snapshot {
    /// Builds the snapshot from `view`, keeping `prev`'s shared parts that did not change.
    pub fn build_after(view: &MemoryStore, prev: &Snapshot) -> Snapshot {
        let mut s = Snapshot::build(view);
        if s.networks == prev.networks {
            s.networks = prev.networks.clone();
        }
        if s.services == prev.services {
            s.services = prev.services.clone();
        }
        if s.node_endpoints == prev.node_endpoints {
            s.node_endpoints = prev.node_endpoints.clone();
        }
        for (id, eps) in s.endpoints.iter_mut() {
            if let Some(old) = prev.endpoints.get(id).filter(|old| *old == eps) {
                *eps = old.clone();
            }
        }
        s
    }

    /// Builds the snapshot from `view`.
    pub fn build(view: &MemoryStore) -> Snapshot {
        let mut s = Snapshot {
            ingress: view.networks().find(|n| n.spec.ingress).map(|n| n.id.clone()),
            networks: Arc::new(view.networks().map(|n| (n.id.clone(), n.clone())).collect()),
            ..Default::default()
        };
        let mut endpoints: BTreeMap<String, Vec<NetworkEndpoint>> = BTreeMap::new();
        let mut services = Vec::new();
        let mut service_networks: HashMap<&str, BTreeSet<String>> = HashMap::new();
        for t in view.tasks().filter(|t| !t.networks.is_empty() && live(t)) {
            let node_addr = view.node(&t.node_id).map(|n| n.status.addr.clone()).unwrap_or_default();
            for a in t.networks.iter().filter(|a| s.networks.contains_key(&a.network_id)) {
                s.node_networks.entry(t.node_id.clone()).or_default().insert(a.network_id.clone());
                service_networks.entry(&t.service_id).or_default().insert(a.network_id.clone());
                for addr in &a.addresses {
                    endpoints.entry(a.network_id.clone()).or_default().push(NetworkEndpoint {
                        network_id: a.network_id.clone(),
                        task_id: t.id.clone(),
                        service_id: t.service_id.clone(),
                        node_id: t.node_id.clone(),
                        node_addr: node_addr.clone(),
                        ip: ip_of(addr).to_string(),
                        aliases: a.aliases.clone(),
                        serving: serving(t),
                    });
                }
            }
        }
        for s_ in view.services() {
            let Some(e) = &s_.endpoint else {
                if let Some(nets) = service_networks.get(s_.id.as_str()) {
                    services.push((service_endpoint(s_), nets.clone(), false));
                }
                continue;
            };
            let mut nets = service_networks.get(s_.id.as_str()).cloned().unwrap_or_default();
            nets.extend(e.virtual_ips.iter().map(|v| v.network_id.clone()));
            let mesh = e.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress);
            if !nets.is_empty() || mesh {
                services.push((service_endpoint(s_), nets, mesh));
            }
        }
        let mut node_endpoints = Vec::new();
        for n in view.nodes().filter(|n| !n.attachments.is_empty()) {
            s.node_attachments.insert(n.id.clone(), n.attachments.clone());
            // A node's own ingress address is an endpoint on the ingress overlay too: a task answering mesh
            // traffic another node masqueraded replies to that node's address, which must resolve over VXLAN.
            // It is no task and never a backend (empty task id, not serving).
            for a in n.attachments.iter().filter(|a| s.ingress.as_deref() == Some(a.network_id.as_str())) {
                for addr in &a.addresses {
                    let e = NetworkEndpoint {
                        network_id: a.network_id.clone(),
                        node_id: n.id.clone(),
                        node_addr: n.status.addr.clone(),
                        ip: ip_of(addr).to_string(),
                        serving: false,
                        ..Default::default()
                    };
                    s.own_endpoints.entry(n.id.clone()).or_default().push(e.clone());
                    node_endpoints.push(e);
                }
            }
        }
        s.endpoints = endpoints.into_iter().map(|(id, eps)| (id, Arc::new(eps))).collect();
        s.node_endpoints = Arc::new(node_endpoints);
        s.services = Arc::new(services);
        s
    }

    /// The ingress node endpoints `node_id` gets. Only a node running tasks on the ingress overlay answers
    /// masqueraded mesh traffic, so only it needs every node's address; any other node gets its own (its VXLAN
    /// source address is found from it). Sending every node's to every node made each state grow with the
    /// cluster and all of them together with its square: at 5,000 nodes a session's buffers held ~130 KiB.
    fn peers_for(&self, node_id: &str) -> Peers {
        let on_ingress =
            self.ingress.as_ref().is_some_and(|i| self.node_networks.get(node_id).is_some_and(|nets| nets.contains(i)));
        if on_ingress {
            Peers::All(self.node_endpoints.clone())
        } else {
            Peers::Own(self.own_endpoints.get(node_id).cloned().unwrap_or_default())
        }
    }

    /// The networks whose state `node_id` gets: those its tasks are on, and the ingress.
    fn nets_of(&self, node_id: &str) -> BTreeSet<&String> {
        let mut nets: BTreeSet<&String> = self.node_networks.get(node_id).into_iter().flatten().collect();
        nets.extend(self.ingress.as_ref());
        nets
    }

    /// What the state of `node_id` is cut from (`None` while the cluster has no network at all).
    pub fn key_for(&self, node_id: &str) -> Option<StateKey> {
        if self.networks.is_empty() {
            return None;
        }
        Some(StateKey {
            networks: self.networks.clone(),
            endpoints: self.nets_of(node_id).into_iter().map(|n| (n.clone(), self.endpoints.get(n).cloned())).collect(),
            services: self.services.clone(),
            attachments: self.node_attachments.get(node_id).cloned().unwrap_or_default(),
            peers: self.peers_for(node_id),
        })
    }

    /// The state of `node_id`: `None` while the cluster has no network at all.
    pub fn state_for(&self, node_id: &str) -> Option<NetworkState> {
        if self.networks.is_empty() {
            return None;
        }
        let nets = self.nets_of(node_id);
        let mut endpoints = Vec::new();
        for id in &nets {
            endpoints.extend(self.endpoints.get(*id).into_iter().flat_map(|e| e.iter()).cloned());
            if self.ingress.as_ref() == Some(*id) {
                match self.peers_for(node_id) {
                    Peers::All(all) => endpoints.extend(all.iter().cloned()),
                    Peers::Own(own) => endpoints.extend(own),
                }
            }
        }
        Some(NetworkState {
            networks: nets.iter().filter_map(|id| self.networks.get(*id).cloned()).collect(),
            endpoints,
            services: self
                .services
                .iter()
                .filter(|(_, on, mesh)| *mesh || on.iter().any(|n| nets.contains(n)))
                .map(|(s, _, _)| s.clone())
                .collect(),
            node_attachments: self.node_attachments.get(node_id).cloned().unwrap_or_default(),
        })
    }
}

fn service_endpoint(s: &Service) -> ServiceEndpoint {
    let e = s.endpoint.as_ref();
    ServiceEndpoint {
        service_id: s.id.clone(),
        name: s.spec.annotations.name.clone(),
        mode: s.spec.endpoint_spec.mode,
        virtual_ips: e.map(|e| e.virtual_ips.clone()).unwrap_or_default(),
        ports: e.map(|e| e.ports.clone()).unwrap_or_default(),
    }
}

/// Whether a store change can change some node's network state.
pub fn touches_networks(ev: &Event) -> bool {
    match (&ev.object, &ev.old) {
        (Object::Network(_), _) => true,
        (Object::Service(s), old) => {
            let old = match old {
                Some(Object::Service(o)) => Some(o),
                _ => None,
            };
            let has = |s: &Service| s.endpoint.is_some() || !s.spec.task_template.networks.is_empty();
            (has(s) || old.is_some_and(has))
                && (ev.action != EventAction::Update
                    || old
                        .is_none_or(|o| o.endpoint != s.endpoint || o.spec.annotations.name != s.spec.annotations.name))
        }
        (Object::Task(t), old) => {
            let old = match old {
                Some(Object::Task(o)) => Some(o),
                _ => None,
            };
            fn seen(t: &Task) -> (bool, bool, &str, &[NetworkAttachment]) {
                (live(t), serving(t), &t.node_id, &t.networks)
            }
            (!t.networks.is_empty() || old.is_some_and(|o| !o.networks.is_empty()))
                && (ev.action != EventAction::Update || old.is_none_or(|o| seen(o) != seen(t)))
        }
        (Object::Node(n), old) => match old {
            Some(Object::Node(o)) if ev.action == EventAction::Update => {
                o.attachments != n.attachments || o.status.addr != n.status.addr
            }
            _ => true,
        },
        (Object::Cluster(_) | Object::Secret(_) | Object::Config(_), _) => false,
    }
}

/// The shared snapshot, rebuilt while the dispatcher runs.
#[derive(Clone)]
pub struct Hub {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub { tx: Arc::new(watch::channel(Arc::new(Snapshot::default())).0) }
    }
}

impl Hub {
    /// Builds the snapshot from `store` at once (before sessions are served).
    pub fn prime(&self, store: &Store) {
        self.tx.send_replace(store.view(|v| Arc::new(Snapshot::build(v))));
    }

    /// Keeps the snapshot current from `store` until `stopped`.
    pub async fn run(&self, store: Store, stopped: CancellationToken) {
        let (first, mut events) = store.view_and_watch(|v| Arc::new(Snapshot::build(v)));
        self.tx.send_replace(first);
        loop {
            let mut dirty = false;
            while !dirty {
                let ev = tokio::select! {
                    _ = stopped.cancelled() => return,
                    ev = events.recv() => ev,
                };
                match ev {
                    Ok(ev) => dirty = touches_networks(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => dirty = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = tokio::time::sleep(COALESCE) => {}
            }
            // What came meanwhile is in the view read next.
            while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
            let prev = self.tx.borrow().clone();
            let snap = store.view(|v| Arc::new(Snapshot::build_after(v, &prev)));
            self.tx.send_replace(snap);
        }
    }

    /// A session's view of the snapshot for `node_id`.
    pub fn session(&self, node_id: &str) -> NodeNetworkState {
        NodeNetworkState { node_id: node_id.into(), rx: self.tx.subscribe(), sent: None, sent_key: None }
    }
}

/// SHA-256 of the state as JSON (the encoding is deterministic: its maps are ordered).
fn digest(state: &NetworkState) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(serde_json::to_vec(state).unwrap_or_default()).into()
}

/// What one session sent of its node's network state.
pub struct NodeNetworkState {
    node_id: String,
    rx: watch::Receiver<Arc<Snapshot>>,
    /// A digest of the state sent last: a node's state may name every endpoint of a busy network (and every
    /// node's ingress address), so a copy per session would grow with the square of the cluster's size.
    sent: Option<[u8; 32]>,
    /// What `sent` was cut from.
    sent_key: Option<StateKey>,
}

impl NodeNetworkState {
    /// The whole state, for a `Complete` message (`None` while no network exists).
    pub fn complete(&mut self) -> Option<NetworkState> {
        let snap = self.rx.borrow_and_update().clone();
        let state = snap.state_for(&self.node_id);
        self.sent = state.as_ref().map(digest);
        self.sent_key = snap.key_for(&self.node_id);
        state
    }

    /// The state if it differs from what was sent last, for an `Incremental` message.
    pub fn if_changed(&mut self) -> Option<NetworkState> {
        let snap = self.rx.borrow_and_update().clone();
        let key = snap.key_for(&self.node_id);
        // Cut from the same parts: the same state, known without cutting it.
        if key.is_none() || key == self.sent_key {
            return None;
        }
        self.sent_key = key;
        let state = snap.state_for(&self.node_id);
        let sent = state.as_ref().map(digest);
        if sent == self.sent {
            return None;
        }
        self.sent = sent;
        state
    }

    /// Resolves when the snapshot was rebuilt.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }

    /// Waits (a bounded time) until the snapshot has every network of `tasks`, so that tasks on networks reach
    /// the node with, or after, the state that holds their networks.
    pub async fn cover(&mut self, tasks: &[Task]) {
        let mut needed = Networks::new();
        for t in tasks {
            add_networks(&mut needed, t);
        }
        self.cover_networks(&needed).await
    }

    /// [`Self::cover`] for networks already gathered (by [`add_networks`]).
    pub async fn cover_networks(&mut self, needed: &Networks) {
        if needed.is_empty() {
            return;
        }
        let node_id = self.node_id.clone();
        let covered = |s: &Arc<Snapshot>| {
            let nets = s.node_networks.get(&node_id);
            needed.iter().all(|n| nets.is_some_and(|ns| ns.contains(n)) || !s.networks.contains_key(n))
        };
        let _ = tokio::time::timeout(WAIT_FOR_SNAPSHOT, self.rx.wait_for(covered)).await;
    }
}

/// Network ids a node's state must hold.
pub type Networks = BTreeSet<String>;

/// Adds the networks of `t`, if it is meant to run and has not ended.
pub fn add_networks(needed: &mut Networks, t: &Task) {
    if !t.desired_state.is_terminal() && !t.status.state.is_terminal() {
        for a in &t.networks {
            if !needed.contains(&a.network_id) {
                needed.insert(a.network_id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Endpoint, Network, NetworkSpec, PortConfig, VirtualIp};
    use crate::testing::{node, service, task};

    fn net(id: &str, ingress: bool) -> Network {
        Network {
            id: id.into(),
            meta: Default::default(),
            spec: NetworkSpec { ingress, ..Default::default() },
            vni: 4096,
            subnet: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
        }
    }

    fn on(mut t: Task, node_id: &str, state: TaskState, nets: &[(&str, &str)]) -> Task {
        t.node_id = node_id.into();
        t.status.state = state;
        t.networks = nets
            .iter()
            .map(|(n, a)| NetworkAttachment { network_id: (*n).into(), addresses: vec![(*a).into()], aliases: vec![] })
            .collect();
        t
    }

    /// `front` has web's tasks on n1 (running) and n2 (failed); `back` has db's task on n3; api publishes on
    /// the mesh only.
    fn view() -> MemoryStore {
        let mut n1 = node("n1", "h1");
        n1.status.addr = "192.168.0.1".into();
        n1.attachments = vec![NetworkAttachment {
            network_id: "ing".into(),
            addresses: vec!["10.0.0.9/24".into()],
            aliases: vec![],
        }];
        let mut web = service("sw", "web", 2);
        web.endpoint = Some(Endpoint {
            virtual_ips: vec![VirtualIp { network_id: "front".into(), addr: "10.0.1.2/24".into() }],
            ..Default::default()
        });
        let mut api = service("sa", "api", 1);
        api.endpoint = Some(Endpoint {
            ports: vec![PortConfig { target_port: 80, published_port: 30000, ..Default::default() }],
            virtual_ips: vec![VirtualIp { network_id: "ing".into(), addr: "10.0.0.2/24".into() }],
            ..Default::default()
        });
        let mut db = service("sd", "db", 1);
        db.endpoint = Some(Endpoint {
            virtual_ips: vec![VirtualIp { network_id: "back".into(), addr: "10.0.2.2/24".into() }],
            ..Default::default()
        });
        MemoryStore::from_objects(vec![
            net("ing", true).into(),
            net("front", false).into(),
            net("back", false).into(),
            n1.into(),
            node("n2", "h2").into(),
            web.into(),
            api.into(),
            db.into(),
            on(task("w1", "sw", 1), "n1", TaskState::Running, &[("front", "10.0.1.3/24")]).into(),
            on(task("w2", "sw", 2), "n2", TaskState::Failed, &[("front", "10.0.1.4/24")]).into(),
            on(task("d1", "sd", 1), "n3", TaskState::Running, &[("back", "10.0.2.3/24")]).into(),
        ])
    }

    #[test]
    fn a_node_gets_its_networks_their_endpoints_and_every_mesh_service() {
        let snap = Snapshot::build(&view());
        let s = snap.state_for("n1").unwrap();
        assert_eq!(s.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec!["front", "ing"]);
        let eps: Vec<(&str, &str, &str, bool)> = s
            .endpoints
            .iter()
            .filter(|e| !e.task_id.is_empty())
            .map(|e| (e.task_id.as_str(), e.ip.as_str(), e.node_addr.as_str(), e.serving))
            .collect();
        assert_eq!(eps, vec![("w1", "10.0.1.3", "192.168.0.1", true)], "the failed task is no endpoint");
        let svcs: Vec<&str> = s.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(svcs, vec!["api", "web"], "db's network is not n1's");
        assert_eq!(s.node_attachments[0].addresses, vec!["10.0.0.9/24".to_string()]);
        let node_eps = |s: &NetworkState| -> Vec<(String, String, String, bool)> {
            s.endpoints
                .iter()
                .filter(|e| e.task_id.is_empty())
                .map(|e| (e.node_id.clone(), e.ip.clone(), e.node_addr.clone(), e.serving))
                .collect()
        };
        let n1_own = ("n1".to_string(), "10.0.0.9".to_string(), "192.168.0.1".to_string(), false);
        assert_eq!(node_eps(&s), vec![n1_own.clone()], "n1's own ingress address, for its VXLAN source");
        assert_eq!(node_eps(&snap.state_for("n2").unwrap()), vec![], "no task on the ingress: no other node's address");
        // A node running a task on the ingress answers masqueraded mesh traffic: it gets every node's address.
        let mut objs: Vec<Object> = view().objects().collect();
        objs.push(on(task("a1", "sa", 1), "n2", TaskState::Running, &[("ing", "10.0.0.5/24")]).into());
        let with_mesh_task = Snapshot::build(&MemoryStore::from_objects(objs));
        assert_eq!(node_eps(&with_mesh_task.state_for("n2").unwrap()), vec![n1_own.clone()]);
        assert_eq!(node_eps(&with_mesh_task.state_for("n1").unwrap()), vec![n1_own], "still only its own");
        assert_ne!(with_mesh_task.key_for("n2"), snap.key_for("n2"));

        // A node with no task on a network still serves the mesh.
        let s = snap.state_for("n2").unwrap();
        assert_eq!(s.networks.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec!["ing"]);
        assert_eq!(s.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["api"]);
        assert!(Snapshot::build(&MemoryStore::new()).state_for("n1").is_none(), "no network, no state");
    }

    #[test]
    fn a_rebuild_keeps_unchanged_parts_so_only_nodes_whose_state_changed_see_a_new_key() {
        let v = view();
        let first = Snapshot::build(&v);
        let same = Snapshot::build_after(&v, &first);
        assert_eq!(same.key_for("n1"), first.key_for("n1"), "nothing changed");
        assert_eq!(same.key_for("n2"), first.key_for("n2"));

        // web's task on n1 stops serving: `front` changes, `ing` does not.
        let mut objs: Vec<Object> = v.networks().cloned().map(Object::from).collect();
        objs.extend(v.nodes().cloned().map(Object::from));
        objs.extend(v.services().cloned().map(Object::from));
        for t in v.tasks() {
            let mut t = t.clone();
            if t.id == "w1" {
                t.desired_state = TaskState::Shutdown;
            }
            objs.push(t.into());
        }
        let next = Snapshot::build_after(&MemoryStore::from_objects(objs), &same);
        assert_ne!(next.key_for("n1"), same.key_for("n1"), "n1 is on front");
        assert_ne!(next.state_for("n1"), same.state_for("n1"));
        assert_eq!(next.key_for("n2"), same.key_for("n2"), "n2 only has the ingress, unchanged");
        assert_eq!(next.state_for("n2"), same.state_for("n2"));
    }

    #[test]
    fn only_changes_that_touch_networks_rebuild() {
        let v = view();
        let ev = |action, object: Object, old: Option<Object>| Event { action, object, old, index: 1 };
        let w1 = v.task("w1").unwrap().clone();
        let mut reported = w1.clone();
        reported.status.message = "still running".into();
        assert!(!touches_networks(&ev(EventAction::Update, reported.into(), Some(w1.clone().into()))));
        let mut killed = w1.clone();
        killed.status.state = TaskState::Failed;
        assert!(touches_networks(&ev(EventAction::Update, killed.into(), Some(w1.clone().into()))));
        let plain = task("p", "sx", 1);
        let mut plain2 = plain.clone();
        plain2.status.state = TaskState::Running;
        assert!(!touches_networks(&ev(EventAction::Update, plain2.into(), Some(plain.into()))), "no networks");
        let n = v.node("n2").unwrap().clone();
        let mut beat = n.clone();
        beat.status.message = "x".into();
        assert!(!touches_networks(&ev(EventAction::Update, beat.into(), Some(n.into()))));
    }
}
