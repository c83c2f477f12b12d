//! A swarm member as the engine embeds it: owns the node's swarm state dir, and runs the manager (Raft, leader
//! components, cluster listener) and the agent, or on a worker the agent alone. `swarm init`, `swarm join` and
//! `swarm leave` start and stop it; a daemon restart resumes it from the state dir.
//!
//! ```text
//!  <state dir>/node.json        who this node is (ids, role, addresses) — versioned
//!  <state dir>/certificates/    swarm-node.crt, swarm-node.key, swarm-root-ca.crt
//!  <state dir>/raft/            log.redb, state.redb, snapshots/ (managers only)
//!  <state dir>/data.key         the managers' data key (managers only)
//! ```
//!
//! With autolock, a manager's `data.key` and `swarm-node.key` are wrapped with the unlock key
//! (`manager/autolock.rs`): after a restart the node stays locked — no Raft, no agent — until `swarm unlock`.

use crate::agent::exec::Executor;
use crate::agent::{Agent, AgentConfig, AgentStatus};
use crate::api::membership::{SwarmInfo, SwarmInitRequest, SwarmJoinRequest};
use crate::api::*;
use crate::ca::{self, NodeIdentity, RootCa};
use crate::manager::autolock::{self, KeyFiles};
use crate::manager::controlapi::{ControlApi, NOT_A_MANAGER, SWARM_LOCKED, WORKER_NOT_A_MANAGER};
use crate::manager::datakey::UnlockKey;
use crate::manager::dispatcher::{Dispatcher, DispatcherConfig, DispatcherService};
use crate::manager::raft::wire::{JoinRequest, LeaveRequest, RemoteFailure};
use crate::manager::raft::{self, AtRest, RaftHandle, RaftService, RaftSettings, MAX_RAFT_MESSAGE};
use crate::manager::store::{Store, StoreError};
use crate::manager::Manager;
use crate::transport::dispatcher::dispatcher_server::DispatcherServer;
use crate::transport::node_ca::node_c_a_server::NodeCAServer;
use crate::transport::raft::raft_server::RaftServer;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The cluster port (Raft, dispatcher, CA on one mTLS listener).
pub const DEFAULT_PORT: u16 = 2377;
const NODE_FILE: &str = "node.json";
/// The managers' data key (`manager/datakey.rs`), in a manager's state dir only.
const DATA_KEY_FILE: &str = "data.key";
const NODE_FORMAT: u32 = 1;
/// How long `swarm join` waits for the new worker's first session (Docker's swarm request timeout; shorter in unit
/// tests, which wait it out).
const JOIN_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 20 });

/// Errors of swarm membership operations. Messages are what `shoal` prints.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `swarm init` on a member.
    #[error(
        "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one."
    )]
    AlreadyMember,
    /// `swarm leave` on a node that is not a member.
    #[error("This node is not part of a swarm")]
    NotMember,
    /// `swarm leave` on a manager without `--force`.
    #[error("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.")]
    LastManager,
    /// `swarm leave` on a manager without `--force` when the managers left would have no quorum.
    #[error("You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {left} managers out of {of}. Without a Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.")]
    QuorumAtRisk { left: usize, of: usize },
    /// A manager's request to join or leave the Raft group failed.
    #[error("{0}")]
    Membership(String),
    /// A flag value is not usable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The swarm's ingress network could not be allocated.
    #[error(transparent)]
    Network(#[from] crate::manager::controlapi::network::NetworkError),
    /// The node's state dir cannot be used.
    #[error("swarm state in {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Raft(#[from] crate::manager::raft::RaftNodeError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("executor: {0}")]
    Executor(#[from] crate::agent::exec::ExecError),
    #[error("cluster listener on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// `swarm join` could not get a certificate from the manager.
    #[error(transparent)]
    Join(#[from] ca::JoinError),
    /// `swarm join` got a certificate and is a member, but the agent's first session did not come up in time; it
    /// keeps trying in the background.
    #[error("Timeout was reached before node joined. The attempt to join the swarm will continue in the background. Use the \"shoal info\" command to see the current swarm status of your node.")]
    JoinTimeout,
    /// A manager-only operation on a worker, a non-member or a locked manager; the message is Docker's for that
    /// case.
    #[error("{0}")]
    NotManager(&'static str),
    /// `swarm unlock` with a key that does not open this manager's key files; nothing changed.
    #[error("swarm could not be unlocked: invalid key provided")]
    InvalidUnlockKey,
    /// `swarm unlock` on a node that is not locked.
    #[error("swarm is not locked")]
    NotLocked,
}

/// Settings the engine hands in.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `<data root>/swarm`.
    pub state_dir: PathBuf,
    /// Used as the advertise address when none is given and the listen address is a wildcard.
    pub default_advertise_ip: Option<IpAddr>,
}

/// Who this node is, persisted in `node.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PersistedNode {
    format: u32,
    node_id: String,
    raft_id: u64,
    cluster_id: String,
    role: NodeRole,
    listen_addr: String,
    advertise_addr: String,
    /// `--snapshot-interval`, needed before the store (which also records it) can be read.
    #[serde(default = "default_snapshot_interval")]
    snapshot_interval: u64,
    /// The managers a worker's agent connects to (`ip:port`); empty on a manager, whose agent uses its own address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    managers: Vec<String>,
}

fn default_snapshot_interval() -> u64 {
    RaftConfig::default().snapshot_interval
}

/// What a manager runs besides the agent.
struct ManagerParts {
    raft: RaftHandle,
    store: Store,
}

struct Running<E: Executor> {
    me: PersistedNode,
    identity: NodeIdentity,
    /// The TLS material the listener and every client use; a renewal replaces it in place.
    tls: ca::ClusterTls,
    /// When to renew the certificate (a random point in 50–80 % of its lifetime).
    renew_at: std::time::SystemTime,
    /// None on a worker.
    manager: Option<ManagerParts>,
    agent: Arc<Agent<E>>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

pub struct SwarmNode<E: Executor> {
    cfg: NodeConfig,
    executor: Arc<E>,
    control: watch::Sender<Option<Store>>,
    /// Whether this node is a worker member, for the control API's refusal message.
    worker: watch::Sender<bool>,
    running: Mutex<Option<Running<E>>>,
    logs: crate::manager::dispatcher::LogBroker,
    /// The manager's key files and the unlock key they are wrapped with.
    keys: KeyFiles,
    /// A manager restarted with wrapped key files, waiting for `swarm unlock`: who it is.
    locked: Mutex<Option<PersistedNode>>,
    /// Whether it is locked, for the control API's refusal message.
    locked_tx: watch::Sender<bool>,
}

impl<E: Executor> SwarmNode<E> {
    pub fn new(cfg: NodeConfig, executor: Arc<E>) -> Self {
        let keys = KeyFiles::new(cfg.state_dir.join(DATA_KEY_FILE), cfg.state_dir.join("certificates"));
        SwarmNode {
            keys,
            locked: Mutex::new(None),
            locked_tx: watch::channel(false).0,
            cfg,
            executor,
            control: watch::channel(None).0,
            worker: watch::channel(false).0,
            running: Mutex::new(None),
            logs: Default::default(),
        }
    }

    /// The control API, answering while this node is a leading manager.
    pub fn control_api(&self) -> ControlApi {
        ControlApi::new(self.control.subscribe())
            .with_worker(self.worker.subscribe())
            .with_locked(self.locked_tx.subscribe())
            .with_logs(self.logs.clone())
    }

    /// The store for a manager-only operation, or Docker's refusal (worker or non-member) as [`NodeError::NotManager`].
    pub fn manager_store(&self) -> Result<Store, NodeError> {
        self.store().ok_or_else(|| self.not_manager())
    }

    /// Docker's refusal of a manager-only operation on this node, which is a worker or not a member.
    fn not_manager(&self) -> NodeError {
        if *self.locked_tx.borrow() {
            return NodeError::NotManager(SWARM_LOCKED);
        }
        NodeError::NotManager(if *self.worker.borrow() { WORKER_NOT_A_MANAGER } else { NOT_A_MANAGER })
    }

    /// The store, while this node is a leading manager.
    pub fn store(&self) -> Option<Store> {
        self.control.borrow().clone()
    }

    fn state_err(&self, reason: impl std::fmt::Display) -> NodeError {
        NodeError::State { path: self.cfg.state_dir.clone(), reason: reason.to_string() }
    }

    fn certs_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("certificates")
    }

    /// Resumes membership from the state dir, if this node was a member when the daemon stopped.
    pub async fn resume(&self) -> Result<bool, NodeError> {
        let path = self.cfg.state_dir.join(NODE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.state_err(format!("reading {}: {e}", path.display()))),
        };
        let me: PersistedNode = serde_json::from_slice(&bytes).map_err(|e| {
            self.state_err(format!(
                "{} is corrupt ({e}); remove the swarm state with `shoal swarm leave --force`",
                path.display()
            ))
        })?;
        if me.format != NODE_FORMAT {
            return Err(self.state_err(format!("{} has unsupported format {}", path.display(), me.format)));
        }
        // Workers are never locked (Docker's rule); a manager whose key files are wrapped waits for the key.
        if me.role == NodeRole::Manager && self.keys.current().is_none() && self.keys.wrapped_on_disk() {
            tracing::warn!(node.id = %me.node_id, "the swarm is locked: waiting for `swarm unlock`");
            *self.locked.lock().await = Some(me);
            self.locked_tx.send_replace(true);
            return Ok(true);
        }
        let identity = self.keys.load_identity()?;
        if me.role == NodeRole::Worker {
            self.launch_worker(me, identity).await?;
            tracing::info!("resumed swarm membership as a worker");
            return Ok(true);
        }
        self.start_manager(me, identity).await?;
        tracing::info!("resumed swarm membership");
        Ok(true)
    }

    /// How this manager keeps its Raft data at rest: sealed with its data key (which autolock wraps), or in
    /// clear on a swarm made before data keys.
    fn at_rest(&self) -> Result<AtRest, NodeError> {
        Ok(AtRest::sealed_with(self.keys.load_data_key().map_err(|e| self.state_err(e))?))
    }

    fn raft_settings(&self, snapshot_interval: u64, identity: &NodeIdentity) -> Result<RaftSettings, NodeError> {
        Ok(RaftSettings {
            snapshot_interval,
            peer_tls: Some(ca::ClusterTls::new(identity)?),
            at_rest: self.at_rest()?,
            ..RaftSettings::default()
        })
    }

    /// Starts Raft, the listener, the manager and the agent of a manager resumed from its state dir.
    async fn start_manager(&self, me: PersistedNode, identity: NodeIdentity) -> Result<(), NodeError> {
        let settings = self.raft_settings(me.snapshot_interval, &identity)?;
        let (raft, store) = RaftHandle::start(me.raft_id, &self.cfg.state_dir.join("raft"), &settings).await?;
        let listener = match bind(&me.listen_addr).await {
            Ok(l) => l,
            Err(e) => {
                raft.shutdown().await;
                return Err(e);
            }
        };
        if let Err(e) = self.launch(me, identity, raft.clone(), store, listener).await {
            raft.shutdown().await;
            return Err(e);
        }
        Ok(())
    }

    /// `swarm unlock`: opens this locked manager's key files with `key` and starts it as it was. A wrong key
    /// changes nothing.
    pub async fn unlock(&self, key: &str) -> Result<(), NodeError> {
        let mut locked = self.locked.lock().await;
        let Some(me) = locked.clone() else {
            return Err(if self.cfg.state_dir.join(NODE_FILE).exists() {
                NodeError::NotLocked
            } else {
                NodeError::NotMember
            });
        };
        let key = UnlockKey::from_text(key).map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let identity = self.keys.unlock(key).map_err(|e| match e {
            autolock::LockError::DataKey(crate::manager::datakey::DataKeyError::Locked)
            | autolock::LockError::Ca(ca::CaError::Locked) => NodeError::InvalidUnlockKey,
            e => self.state_err(e),
        })?;
        if let Err(e) = self.start_manager(me, identity).await {
            self.keys.clear();
            return Err(e);
        }
        *locked = None;
        self.locked_tx.send_replace(false);
        tracing::info!("swarm unlocked");
        Ok(())
    }

    /// `swarm unlock-key`: the swarm's current unlock key (empty without autolock); managers only.
    pub fn unlock_key(&self) -> Result<String, NodeError> {
        autolock::unlock_key_text(&self.manager_store()?).map_err(|e| self.state_err(e))
    }

    /// `swarm init`: a new one-manager swarm with this node as its leader.
    ///
    /// Every flag is checked before anything is written, and if a later step fails, what was written is removed:
    /// a failed init leaves the node able to init again.
    pub async fn init(&self, req: SwarmInitRequest) -> Result<String, NodeError> {
        if req.force_new_cluster {
            if *self.locked_tx.borrow() {
                return Err(NodeError::NotManager(SWARM_LOCKED));
            }
            return self.force_new_cluster().await;
        }
        let mut running = self.running.lock().await;
        if running.is_some() || self.cfg.state_dir.join(NODE_FILE).exists() {
            return Err(NodeError::AlreadyMember);
        }
        let spec = init_cluster_spec(&req)?;
        let pools = (req.default_addr_pool.clone(), req.default_addr_pool_mask_length.unwrap_or(0));
        crate::manager::controlapi::network::pools(&pools.0, pools.1).map_err(|e| {
            NodeError::InvalidArgument(format!("invalid --default-addr-pool or --default-addr-pool-mask-length: {e}"))
        })?;
        let listen = if req.listen_addr.is_empty() {
            format!("0.0.0.0:{DEFAULT_PORT}")
        } else {
            with_port(&req.listen_addr, DEFAULT_PORT, "--listen-addr")?
        };
        let listener = bind(&listen).await.map_err(as_flag_error)?;
        let bound =
            listener.local_addr().map_err(|e| NodeError::Listen { addr: listen.clone(), reason: e.to_string() })?;
        let advertise = self.advertise_addr(&req.advertise_addr, bound)?;

        let trace = InitTrace::start(&self.cfg.state_dir).map_err(|e| self.state_err(e))?;
        let (me, identity, raft, store) = match self.write_new_swarm(spec, pools, bound, advertise).await {
            Ok(v) => v,
            Err(e) => {
                self.keys.clear();
                trace.undo();
                return Err(e);
            }
        };
        let node_id = me.node_id.clone();
        drop(running.take());
        drop(running);
        if let Err(e) = self.launch(me, identity, raft.clone(), store, listener).await {
            raft.shutdown().await;
            self.keys.clear();
            trace.undo();
            return Err(e);
        }
        // As `docker swarm init`, return once the node is an active member (its agent's session is up).
        if let Some(mut status) = self.running.lock().await.as_ref().map(|r| r.agent.status()) {
            let _ = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.connected_to.is_some())).await;
        }
        tracing::info!(node.id = %node_id, "swarm initialized");
        Ok(node_id)
    }

    /// `swarm init --force-new-cluster`: this manager's committed state becomes a new one-manager Raft group. The
    /// old Raft files are kept aside (`raft.before-force-new-cluster-<time>`); every object is re-created in the
    /// new log, the other managers are recorded as workers that are down (their Raft calls are refused from now
    /// on: they must leave and join again), and the node starts as the leader.
    async fn force_new_cluster(&self) -> Result<String, NodeError> {
        let path = self.cfg.state_dir.join(NODE_FILE);
        let me =
            match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice::<PersistedNode>(&bytes)
                    .map_err(|e| self.state_err(format!("{} is corrupt ({e})", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NodeError::InvalidArgument(
                    "--force-new-cluster needs the state of a manager of an existing swarm; this node is not a member"
                        .into(),
                )),
                Err(e) => return Err(self.state_err(e)),
            };
        if me.role != NodeRole::Manager {
            return Err(NodeError::InvalidArgument(
                "--force-new-cluster needs the state of a manager; this node is a worker".into(),
            ));
        }
        self.shutdown().await;
        let identity = self.keys.load_identity()?;
        let raft_dir = self.cfg.state_dir.join("raft");

        // The committed state, as this manager holds it. Started without peers: it must not call the old group.
        let quiet = RaftSettings {
            snapshot_interval: me.snapshot_interval,
            at_rest: self.at_rest()?,
            ..RaftSettings::default()
        };
        let (old, store) = RaftHandle::start(me.raft_id, &raft_dir, &quiet).await?;
        let objects: Vec<crate::api::Object> = store.view(|v| v.objects().collect());
        old.shutdown().await;
        if !objects.iter().any(|o| matches!(o, crate::api::Object::Cluster(_))) {
            return Err(self.state_err("this manager's store holds no cluster; nothing to keep"));
        }
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let aside = self.cfg.state_dir.join(format!("raft.before-force-new-cluster-{stamp}"));
        std::fs::rename(&raft_dir, &aside)
            .map_err(|e| self.state_err(format!("moving {}: {e}", raft_dir.display())))?;

        let restored = async {
            let settings = self.raft_settings(me.snapshot_interval, &identity)?;
            let (raft, store) = RaftHandle::start(me.raft_id, &raft_dir, &settings).await?;
            let written = async {
                raft.initialize(&me.advertise_addr).await?;
                raft.wait_leader(Duration::from_secs(10)).await?;
                let mut objects = objects;
                for o in objects.iter_mut() {
                    if let crate::api::Object::Node(n) = o {
                        if n.id == me.node_id {
                            if let Some(ms) = n.manager_status.as_mut() {
                                ms.raft_id = me.raft_id;
                                ms.addr = me.advertise_addr.clone();
                                ms.leader = true;
                                ms.reachability = Reachability::Reachable;
                            }
                        } else if n.manager_status.is_some() {
                            n.manager_status = None;
                            n.role = NodeRole::Worker;
                            n.spec.desired_role = NodeRole::Worker;
                            n.status.state = NodeState::Down;
                        }
                    }
                }
                store
                    .update(|tx| {
                        for o in objects {
                            tx.create(o);
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await?;
                Ok::<_, NodeError>(())
            }
            .await;
            if let Err(e) = written {
                raft.shutdown().await;
                return Err(e);
            }
            Ok((raft, store))
        }
        .await;
        let (raft, store) = match restored {
            Ok(v) => v,
            Err(e) => {
                // Put the old state back: the node is as it was before the attempt.
                let _ = remove_any(&raft_dir);
                if let Err(re) = std::fs::rename(&aside, &raft_dir) {
                    tracing::error!(error = %re, "could not put the old raft state back");
                }
                return Err(e);
            }
        };
        let listener = bind(&me.listen_addr).await?;
        let node_id = me.node_id.clone();
        let me = PersistedNode { managers: Vec::new(), ..me };
        self.launch(me, identity, raft, store, listener).await?;
        tracing::warn!(node.id = %node_id, old = %aside.display(), "forced a new one-manager cluster from this manager's state");
        Ok(node_id)
    }

    /// Writes a new swarm's state: certificates, the Raft log holding the cluster and this node, and `node.json`
    /// last (its presence is what makes the node a member). On failure, Raft's files are closed again so the
    /// caller can remove them.
    async fn write_new_swarm(
        &self,
        spec: ClusterSpec,
        (default_address_pool, subnet_size): (Vec<String>, u32),
        bound: SocketAddr,
        advertise: String,
    ) -> Result<(PersistedNode, NodeIdentity, RaftHandle, Store), NodeError> {
        let node_id = new_id();
        let cluster_id = new_id();
        let raft_id: u64 = rand::random::<u64>() | 1;
        let root = RootCa::generate()?;
        let identity =
            ca::issue_identity_for(&root, &node_id, NodeRole::Manager, &cluster_id, spec.ca_config.node_cert_expiry)?;
        identity.save(&self.certs_dir())?;
        let data_key = crate::manager::datakey::DataKey::generate();
        data_key.save(&self.cfg.state_dir.join(DATA_KEY_FILE)).map_err(|e| self.state_err(e))?;
        // `--autolock`: the key files are wrapped before Raft starts; the cluster records the key.
        let mut unlock_key = Vec::new();
        if spec.encryption_config.auto_lock_managers {
            let (key, sealed) = autolock::new_sealed_key(&data_key);
            self.keys.rewrap(Some(key)).map_err(|e| self.state_err(e))?;
            unlock_key = sealed;
        }

        let settings = self.raft_settings(spec.raft.snapshot_interval, &identity)?;
        let (raft, store) = RaftHandle::start(raft_id, &self.cfg.state_dir.join("raft"), &settings).await?;
        let me = PersistedNode {
            format: NODE_FORMAT,
            node_id: node_id.clone(),
            raft_id,
            cluster_id: cluster_id.clone(),
            role: NodeRole::Manager,
            listen_addr: bound.to_string(),
            advertise_addr: advertise.clone(),
            snapshot_interval: settings.snapshot_interval,
            managers: Vec::new(),
        };
        let written = async {
            raft.initialize(&advertise).await?;
            raft.wait_leader(Duration::from_secs(10)).await?;
            let digest = root.digest();
            let cluster = Cluster {
                id: cluster_id,
                meta: Meta::default(),
                spec,
                root_ca: RootCa_api(&root, &digest),
                removed_nodes: Default::default(),
                default_address_pool,
                subnet_size,
                unlock_key,
            };
            let description = self.executor.describe().await?;
            let node = Node {
                id: node_id,
                meta: Meta::default(),
                spec: NodeSpec {
                    annotations: Annotations::default(),
                    desired_role: NodeRole::Manager,
                    availability: NodeAvailability::Active,
                },
                description,
                status: NodeStatus { state: NodeState::Unknown, addr: ip_of(&advertise), ..Default::default() },
                manager_status: Some(ManagerStatus {
                    raft_id,
                    addr: advertise.clone(),
                    leader: true,
                    reachability: Reachability::Reachable,
                }),
                role: NodeRole::Manager,
                attachments: vec![],
            };
            // The routing-mesh network is part of the swarm from its first write, so it exists exactly once
            // (a restart resumes the swarm and never runs this again).
            store
                .update(|tx| {
                    let pools = crate::manager::controlapi::network::pools_of(&cluster)?;
                    let ingress = crate::manager::controlapi::network::allocate(
                        tx.view(),
                        crate::manager::controlapi::network::ingress_spec(),
                        &pools,
                    )?;
                    tx.create(cluster);
                    tx.create(node);
                    tx.create(ingress);
                    Ok::<_, NodeError>(())
                })
                .await?;
            crate::fsutil::write_atomic(
                &self.cfg.state_dir.join(NODE_FILE),
                &serde_json::to_vec_pretty(&me).expect("plain data"),
                0o600,
            )
            .map_err(|e| self.state_err(e))
        }
        .await;
        match written {
            Ok(()) => Ok((me, identity, raft, store)),
            Err(e) => {
                raft.shutdown().await;
                Err(e)
            }
        }
    }

    fn advertise_addr(&self, given: &str, bound: SocketAddr) -> Result<String, NodeError> {
        if !given.is_empty() {
            let addr = with_port(given, bound.port(), "--advertise-addr")?;
            // Other nodes could not reach a wildcard address (Docker refuses it too).
            if addr.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
                return Err(NodeError::InvalidArgument(format!(
                    "invalid argument {given:?} for \"--advertise-addr\" flag: advertise address must be a non-zero IP \
                     address"
                )));
            }
            return Ok(addr);
        }
        if !bound.ip().is_unspecified() {
            return Ok(bound.to_string());
        }
        match self.cfg.default_advertise_ip {
            Some(ip) => Ok(SocketAddr::new(ip, bound.port()).to_string()),
            None => Err(NodeError::InvalidArgument(
                "could not choose an IP address to advertise since this system has no default route; \
                 specify one with --advertise-addr"
                    .into(),
            )),
        }
    }

    /// Starts the listener, the manager and the agent.
    async fn launch(
        &self,
        me: PersistedNode,
        identity: NodeIdentity,
        raft: RaftHandle,
        store: Store,
        listener: tokio::net::TcpListener,
    ) -> Result<(), NodeError> {
        match self.keys.load_data_key() {
            Ok(Some(key)) => store.set_data_key(key),
            // A swarm made before secrets existed: secret calls are refused on this manager until it has one.
            Ok(None) => {
                tracing::warn!(node.id = %me.node_id, "no data key in the state dir: secrets are unavailable here")
            }
            Err(e) => return Err(self.state_err(e)),
        }
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let heartbeat =
            store.view(|v| v.cluster().map(|c| c.spec.dispatcher.heartbeat_period)).unwrap_or(Duration::from_secs(5));
        // The leader's cluster address, from Raft, so a follower's dispatcher can send agents there.
        let (leader_tx, leader_rx) = watch::channel(raft.leader_addr());
        let dispatcher = Dispatcher::new(DispatcherConfig {
            heartbeat_period: heartbeat,
            managers: vec![me.advertise_addr.clone()],
            leader: leader_rx,
        })
        .with_log_broker(self.logs.clone());

        // Everything that can fail comes before anything is spawned. Raft's peers already dial with the node's
        // material: the listener and the agent share it, so a renewal reaches all of them at once.
        let tls = match raft.peers().tls() {
            Some(tls) => tls,
            None => ca::ClusterTls::new(&identity)?,
        };
        self.logs.set_forwarding(tls.clone());
        let service = DispatcherServer::new(DispatcherService::new(dispatcher.clone()));
        let token = shutdown.clone();
        let incoming = tls.incoming(listener);
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(NodeCAServer::new(ca::NodeCaService::new(self.control.subscribe())))
            .add_service(
                RaftServer::new(RaftService::new(raft.clone(), store.clone()))
                    .max_decoding_message_size(MAX_RAFT_MESSAGE)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, async move { token.cancelled().await });
        let span = tracing::info_span!("node", node.id = %me.node_id);
        tasks.spawn(
            async move {
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "cluster listener failed");
                }
            }
            .instrument(span.clone()),
        );

        let (r, token) = (raft.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut metrics = r.metrics();
            loop {
                leader_tx.send_if_modified(|l| {
                    let now = r.leader_addr();
                    (*l != now).then(|| *l = now).is_some()
                });
                tokio::select! {
                    _ = token.cancelled() => return,
                    c = metrics.changed() => if c.is_err() { return },
                }
            }
        });
        // A manager trusts the cluster's roots as soon as its store has them (a rotation starting or ending), so
        // members that renewed first are not refused by its listener.
        tasks.spawn(ca::follow_trusted_roots(tls.clone(), store.clone(), shutdown.clone()).instrument(span.clone()));
        // Autolock turned on or off, or its key rotated: this manager's key files follow.
        tasks.spawn(
            autolock::follow_unlock_key(self.keys.clone(), store.clone(), shutdown.clone()).instrument(span.clone()),
        );
        // Every manager answers the control API from now on (writes go through the leader).
        self.control.send_replace(Some(store.clone()));
        let manager = Manager::new(me.node_id.clone(), raft.clone(), store.clone(), dispatcher, self.control.clone());
        tasks.spawn(manager.run(shutdown.clone()).instrument(span.clone()));

        // Its own dispatcher first (it serves while this manager leads), then the others it knows.
        let mut managers = vec![me.advertise_addr.clone()];
        managers.extend(me.managers.iter().filter(|m| **m != me.advertise_addr).cloned());
        let agent = Arc::new(Agent::new(AgentConfig { managers, tls: tls.clone() }, self.executor.clone()));
        let a = agent.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { a.run(token).await }.instrument(tracing::info_span!("agent", node.id = %me.node_id)));

        *self.running.lock().await = Some(Running {
            me,
            renew_at: identity.renewal_deadline(),
            identity,
            tls,
            manager: Some(ManagerParts { raft, store }),
            agent,
            shutdown,
            tasks,
        });
        Ok(())
    }

    /// Starts a worker: the agent alone, with a session to the managers in `me`.
    async fn launch_worker(&self, me: PersistedNode, identity: NodeIdentity) -> Result<(), NodeError> {
        let tls = ca::ClusterTls::new(&identity)?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let agent = Arc::new(Agent::new(
            AgentConfig { managers: me.managers.clone(), tls: tls.clone() },
            self.executor.clone(),
        ));
        let a = agent.clone();
        let token = shutdown.clone();
        tasks.spawn(async move { a.run(token).await }.instrument(tracing::info_span!("agent", node.id = %me.node_id)));
        self.worker.send_replace(true);
        *self.running.lock().await = Some(Running {
            me,
            renew_at: identity.renewal_deadline(),
            identity,
            tls,
            manager: None,
            agent,
            shutdown,
            tasks,
        });
        Ok(())
    }

    /// `swarm join` as a worker: gets a certificate from the manager at `req.remote_addr` with the join token,
    /// saves it and `node.json`, and starts the agent. Nothing is written before the manager has issued the
    /// certificate, and a later failure removes what was written: a failed join leaves the node able to try again.
    pub async fn join(&self, req: SwarmJoinRequest) -> Result<String, NodeError> {
        let mut running = self.running.lock().await;
        if running.is_some() || self.cfg.state_dir.join(NODE_FILE).exists() {
            return Err(NodeError::AlreadyMember);
        }
        if req.join_token.trim().is_empty() {
            return Err(NodeError::InvalidArgument("a join token is required (--token)".into()));
        }
        ca::JoinToken::parse(&req.join_token)?;
        let remote = remote_addr(&req.remote_addr)?;
        let listen = if req.listen_addr.is_empty() {
            format!("0.0.0.0:{DEFAULT_PORT}")
        } else {
            with_port(&req.listen_addr, DEFAULT_PORT, "--listen-addr")?
        };
        // Bound before the certificate request, as a manager token makes this node a Raft member reached at its
        // advertised port (which must be the bound one when the listen port is 0). A worker does not listen and
        // drops it; it may fail for a worker, which then uses the port it was given.
        let listener = bind(&listen).await;
        let listen_sock: SocketAddr = match &listener {
            Ok(l) => l.local_addr().map_err(|e| NodeError::Listen { addr: listen.clone(), reason: e.to_string() })?,
            Err(_) => listen.parse().expect("with_port returns ip:port"),
        };
        // Without --advertise-addr, a node is known by the address it reaches the manager from, which is what
        // the manager sees (Docker leaves it to the remote side too).
        let advertise = if req.advertise_addr.is_empty() {
            source_addr_towards(&remote, listen_sock.port()).await
        } else {
            self.advertise_addr(&req.advertise_addr, listen_sock)?
        };

        let raft_id: u64 = rand::random::<u64>() | 1;
        let identity = ca::request_identity(&remote, &req.join_token, req.availability, &advertise, raft_id).await?;
        if identity.role == NodeRole::Manager {
            let me = PersistedNode {
                format: NODE_FORMAT,
                node_id: identity.node_id.clone(),
                raft_id,
                cluster_id: identity.cluster_id.clone(),
                role: NodeRole::Manager,
                listen_addr: listen_sock.to_string(),
                advertise_addr: advertise,
                snapshot_interval: default_snapshot_interval(),
                managers: vec![remote.clone()],
            };
            drop(running);
            let listener = listener.map_err(as_flag_error)?;
            return self.join_as_manager(me, identity, listener, &remote).await;
        }
        let me = PersistedNode {
            format: NODE_FORMAT,
            node_id: identity.node_id.clone(),
            raft_id: 0,
            cluster_id: identity.cluster_id.clone(),
            role: NodeRole::Worker,
            // The port it was given, or the one the OS chose for port 0: where it listens if it is promoted.
            listen_addr: listen_sock.to_string(),
            advertise_addr: advertise,
            snapshot_interval: default_snapshot_interval(),
            managers: vec![remote],
        };
        let trace = InitTrace::start(&self.cfg.state_dir).map_err(|e| self.state_err(e))?;
        let written = identity.save(&self.certs_dir()).map_err(NodeError::from).and_then(|()| {
            crate::fsutil::write_atomic(
                &self.cfg.state_dir.join(NODE_FILE),
                &serde_json::to_vec_pretty(&me).expect("plain data"),
                0o600,
            )
            .map_err(|e| self.state_err(e))
        });
        if let Err(e) = written {
            trace.undo();
            return Err(e);
        }
        let node_id = me.node_id.clone();
        drop(running.take());
        drop(running);
        if let Err(e) = self.launch_worker(me, identity).await {
            trace.undo();
            return Err(e);
        }
        // As `docker swarm join`, return once the node is an active member (its agent's session is up); if that
        // takes longer than Docker's 20 s, say so: the node is a member and the agent keeps trying.
        if let Some(mut status) = self.running.lock().await.as_ref().map(|r| r.agent.status()) {
            let up = tokio::time::timeout(JOIN_TIMEOUT, status.wait_for(|s| s.connected_to.is_some())).await;
            if !matches!(up, Ok(Ok(_))) {
                tracing::warn!(node.id = %node_id, "joined, but no session with the manager yet");
                return Err(NodeError::JoinTimeout);
            }
        }
        tracing::info!(node.id = %node_id, "joined the swarm as a worker");
        Ok(node_id)
    }

    /// The second half of `swarm join` with a manager token: with the certificate in hand, starts an empty Raft
    /// member and the cluster listener, then asks the leader to add it (as a learner, then a voter once caught
    /// up). A failure undoes everything this node wrote.
    async fn join_as_manager(
        &self,
        me: PersistedNode,
        identity: NodeIdentity,
        listener: tokio::net::TcpListener,
        remote: &str,
    ) -> Result<String, NodeError> {
        let trace = InitTrace::start(&self.cfg.state_dir).map_err(|e| self.state_err(e))?;
        let started = async {
            self.keys.save_identity(&identity)?;
            self.fetch_data_key(remote, &identity).await?;
            let settings = self.raft_settings(me.snapshot_interval, &identity)?;
            let (raft, store) = RaftHandle::start(me.raft_id, &self.cfg.state_dir.join("raft"), &settings).await?;
            if let Err(e) = crate::fsutil::write_atomic(
                &self.cfg.state_dir.join(NODE_FILE),
                &serde_json::to_vec_pretty(&me).expect("plain data"),
                0o600,
            ) {
                raft.shutdown().await;
                return Err(self.state_err(e));
            }
            Ok((raft, store))
        }
        .await;
        let (raft, store) = match started {
            Ok(v) => v,
            Err(e) => {
                trace.undo();
                return Err(e);
            }
        };
        let node_id = me.node_id.clone();
        let (raft_id, addr) = (me.raft_id, me.advertise_addr.clone());
        if let Err(e) = self.launch(me, identity, raft.clone(), store, listener).await {
            raft.shutdown().await;
            trace.undo();
            return Err(e);
        }
        if let Err(e) = ask_to_join(&raft, remote, raft_id, &addr).await {
            tracing::warn!(node.id = %node_id, error = %e, "the leader did not add this manager; undoing the join");
            self.shutdown().await;
            trace.undo();
            return Err(e);
        }
        if let Some(mut status) = self.running.lock().await.as_ref().map(|r| r.agent.status()) {
            let up = tokio::time::timeout(JOIN_TIMEOUT, status.wait_for(|s| s.connected_to.is_some())).await;
            if !matches!(up, Ok(Ok(_))) {
                tracing::warn!(node.id = %node_id, "joined, but no session with the leader yet");
                return Err(NodeError::JoinTimeout);
            }
        }
        tracing::info!(node.id = %node_id, raft.id = raft_id, "joined the swarm as a manager");
        Ok(node_id)
    }

    /// Keeps this node's certificate in line with what the managers record, and runs it in that role: renews the
    /// certificate once its renewal point (50–80 % of its lifetime) has passed or the cluster's root CA changed
    /// (a rotation), in place, without dropping a session; follows the cluster's trusted roots; and on a role
    /// change (`node promote` / `demote`) gets a certificate for the new role and restarts as a manager (joining
    /// the Raft group) or as a worker (its Raft files removed). Containers keep running across the restart. Call
    /// it every couple of seconds ([`SwarmNode::spawn_maintenance`]); returns whether the node restarted.
    pub async fn maintain(&self) -> Result<bool, NodeError> {
        let (me, identity, tls, renew_at, target, members) = {
            let running = self.running.lock().await;
            let Some(r) = running.as_ref() else { return Ok(false) };
            let target = match &r.manager {
                Some(_) => Some(r.me.advertise_addr.clone()),
                None => r.agent.status().borrow().connected_to.clone().or_else(|| r.me.managers.first().cloned()),
            };
            let members = r.manager.as_ref().map(|m| m.raft.member_addrs()).unwrap_or_default();
            (r.me.clone(), r.identity.clone(), r.tls.clone(), r.renew_at, target, members)
        };
        self.persist_learned_managers().await;
        let Some(target) = target else { return Ok(false) };
        let Ok(mut ca) = ca::member_ca_client(&target, &tls).await else { return Ok(false) };
        let Ok(status) = ca.node_certificate_status(crate::api::control::Empty {}).await else { return Ok(false) };
        let status = status.into_inner();
        // The cluster's trust bundle (two roots during a root CA rotation) for new connections either way.
        let roots = status.trusted_roots();
        if !roots.is_empty() {
            tls.set_roots(&roots)?;
        }
        let root = if status.root_ca_cert_pem.is_empty() { &identity.ca_cert_pem } else { &status.root_ca_cert_pem };
        let new_root = *root != identity.ca_cert_pem;
        if status.role == identity.role && std::time::SystemTime::now() < renew_at && !new_root {
            return Ok(false);
        }
        let raft_id = if me.raft_id != 0 { me.raft_id } else { rand::random::<u64>() | 1 };
        let csr = ca::NodeCsr::new()?;
        let req = crate::api::ca::RenewNodeCertificateRequest {
            csr: csr.csr_pem.clone(),
            raft_id,
            advertise_addr: me.advertise_addr.clone(),
        };
        let resp = ca
            .renew_node_certificate(req)
            .await
            .map_err(|s| NodeError::Membership(format!("renewing the node certificate: {}", s.message())))?
            .into_inner();
        // Issued from the root the manager named (a new one during a rotation), which came over mTLS from it.
        let renewed = NodeIdentity::from_cert(&resp.certificate, &csr.key_pem, root)?;
        tracing::info!(node.id = %me.node_id, role = %renewed.role, new_root, "renewed the node certificate");
        if renewed.role == me.role {
            self.renew_in_place(renewed, &roots).await?;
            return Ok(false);
        }
        let becomes_manager = renewed.role == NodeRole::Manager && me.role == NodeRole::Worker;
        let becomes_worker = renewed.role == NodeRole::Worker && me.role == NodeRole::Manager;
        let next = PersistedNode {
            role: renewed.role,
            raft_id: if renewed.role == NodeRole::Manager { raft_id } else { 0 },
            managers: if becomes_worker {
                members.into_iter().filter(|a| *a != me.advertise_addr).collect()
            } else if becomes_manager {
                vec![target.clone()]
            } else {
                me.managers.clone()
            },
            ..me.clone()
        };
        // The data key before anything stops: a promotion that cannot get it is tried again at the next check.
        if becomes_manager {
            self.fetch_data_key(&target, &renewed).await?;
        }
        // The certificate, then node.json: a crash in between resumes in the old role with the new certificate,
        // and the next check sees the role differ again.
        self.shutdown().await;
        // Workers are never locked: a demoted manager's key is written in clear.
        if becomes_worker {
            self.keys.clear();
        }
        self.keys.save_identity(&renewed)?;
        crate::fsutil::write_atomic(
            &self.cfg.state_dir.join(NODE_FILE),
            &serde_json::to_vec_pretty(&next).expect("plain data"),
            0o600,
        )
        .map_err(|e| self.state_err(e))?;
        if becomes_worker {
            remove_any(&self.cfg.state_dir.join("raft")).map_err(|e| self.state_err(e))?;
            remove_any(&self.cfg.state_dir.join(DATA_KEY_FILE)).map_err(|e| self.state_err(e))?;
        }

        self.resume().await?;
        if becomes_manager {
            let raft = self.raft().await.ok_or_else(|| self.state_err("the promoted node did not start Raft"))?;
            ask_to_join(&raft, &target, raft_id, &next.advertise_addr).await?;
            tracing::info!(node.id = %me.node_id, raft.id = raft_id, "promoted: joined the managers");
        } else if becomes_worker {
            tracing::info!(node.id = %me.node_id, "demoted: running as a worker");
        }
        Ok(true)
    }

    /// Asks the manager at `addr` for the managers' data key, as the manager `identity` makes this node, and
    /// keeps it in the state dir.
    async fn fetch_data_key(&self, addr: &str, identity: &NodeIdentity) -> Result<(), NodeError> {
        let tls = ca::ClusterTls::new(identity)?;
        let failed = |reason: String| NodeError::Membership(format!("getting the data key from {addr}: {reason}"));
        let mut client = ca::member_ca_client(addr, &tls).await.map_err(|e| failed(e.to_string()))?;
        let resp = client
            .get_data_key(crate::api::control::Empty {})
            .await
            .map_err(|s| failed(s.message().to_string()))?
            .into_inner();
        let key = crate::manager::datakey::DataKey::from_text(&resp.key).map_err(|e| failed(e.to_string()))?;
        self.keys.save_data_key(&key).map_err(|e| self.state_err(e))
    }

    /// A renewal in the same role: the certificate is saved and swapped in for new connections (listener, Raft
    /// peers, agent, NodeCA calls); every session and connection already up carries on.
    /// `roots` is the cluster's trust bundle (empty: keep what is trusted).
    async fn renew_in_place(&self, renewed: NodeIdentity, roots: &[String]) -> Result<(), NodeError> {
        let mut running = self.running.lock().await;
        // The node may have left or restarted as someone else meanwhile: the certificate is not theirs.
        let Some(r) = running.as_mut().filter(|r| r.identity.node_id == renewed.node_id) else { return Ok(()) };
        self.keys.save_identity(&renewed)?;
        if roots.is_empty() {
            r.tls.replace(&renewed)?;
        } else {
            r.tls.replace_with_roots(&renewed, roots)?;
        }
        r.renew_at = renewed.renewal_deadline();
        r.identity = renewed;
        Ok(())
    }

    /// Records the managers a worker's agent learned from its sessions in `node.json`, so that after a restart it
    /// reaches whichever of them is up, not only the one it joined through.
    async fn persist_learned_managers(&self) {
        let mut running = self.running.lock().await;
        let Some(r) = running.as_mut() else { return };
        if r.manager.is_some() {
            return;
        }
        let learned = r.agent.status().borrow().managers.clone();
        if learned.is_empty() || learned == r.me.managers {
            return;
        }
        let next = PersistedNode { managers: learned, ..r.me.clone() };
        let path = self.cfg.state_dir.join(NODE_FILE);
        match crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&next).expect("plain data"), 0o600) {
            Ok(()) => r.me = next,
            Err(e) => tracing::warn!(error = %e, "recording the managers this worker learned"),
        }
    }

    /// Runs [`SwarmNode::maintain`] every `every` until `shutdown`.
    pub fn spawn_maintenance(
        node: Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = node.maintain().await {
                    tracing::warn!(error = %e, "keeping the node certificate and role up to date");
                }
            }
        })
    }

    /// `swarm join-token --rotate`: gives `role`'s join token a new secret, so the old token no longer admits
    /// anyone. Returns the new token.
    pub async fn rotate_join_token(&self, role: NodeRole) -> Result<String, NodeError> {
        let token = self
            .manager_store()?
            .update(|tx| {
                let mut cluster = tx.view().cluster().cloned().ok_or(StoreError::NotLeader { leader: None })?;
                let token = ca::JoinToken::generate(&cluster.root_ca.ca_cert_digest);
                match role {
                    NodeRole::Worker => cluster.root_ca.join_tokens.worker = token.clone(),
                    NodeRole::Manager => cluster.root_ca.join_tokens.manager = token.clone(),
                }
                tx.update(cluster);
                Ok::<_, StoreError>(token)
            })
            .await?;
        tracing::info!(%role, "rotated the join token");
        Ok(token)
    }

    /// `swarm leave`: stops everything, deletes this node's containers and its swarm state.
    pub async fn leave(&self, force: bool) -> Result<(), NodeError> {
        {
            // `unlock` holds this lock while it starts the node (which takes `running`): never both here.
            let mut locked = self.locked.lock().await;
            if locked.is_some() {
                // A locked manager cannot reach the others (its keys are locked): only `--force` removes its state.
                if !force {
                    return Err(NodeError::LastManager);
                }
                *locked = None;
                self.locked_tx.send_replace(false);
                remove_any(&self.cfg.state_dir).map_err(|e| self.state_err(e))?;
                tracing::info!("left the swarm (locked)");
                return Ok(());
            }
        }
        let mut running = self.running.lock().await;
        let Some(r) = running.as_ref() else { return Err(NodeError::NotMember) };
        if let Some(m) = &r.manager {
            let voters = m.raft.voters();
            if !force && voters.len() <= 1 {
                return Err(NodeError::LastManager);
            }
            if voters.len() > 1 {
                // Bounded: without a quorum the membership change never commits, and `--force` must still leave.
                let told = tokio::time::timeout(LEAVE_GROUP_TIMEOUT, leave_group(&m.raft, &m.store, &r.me, force))
                    .await
                    .unwrap_or_else(|_| {
                        Err(NodeError::Membership(format!(
                            "leaving the managers: the change was not committed within {LEAVE_GROUP_TIMEOUT:?} (quorum \
                             lost?)"
                        )))
                    });
                match told {
                    Ok(()) => {}
                    Err(e) if force => tracing::warn!(error = %e, "leaving without telling the other managers"),
                    Err(e) => return Err(e),
                }
            }
        }
        let mut r = running.take().expect("checked above");
        r.shutdown.cancel();
        while r.tasks.join_next().await.is_some() {}
        r.agent.remove_all().await;
        if let Some(m) = r.manager.take() {
            m.raft.shutdown().await;
        }
        drop(r);
        self.keys.clear();
        self.worker.send_replace(false);
        std::fs::remove_dir_all(&self.cfg.state_dir).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(self.state_err(e))
            }
        })?;
        tracing::info!("left the swarm");
        Ok(())
    }

    /// Stops the node's components, leaving containers running for the next start to re-adopt.
    pub async fn shutdown(&self) {
        if let Some(mut r) = self.running.lock().await.take() {
            r.shutdown.cancel();
            while r.tasks.join_next().await.is_some() {}
            if let Some(m) = r.manager.take() {
                m.raft.shutdown().await;
            }
        }
    }

    /// `info`'s swarm section.
    pub async fn info(&self) -> SwarmInfo {
        let running = self.running.lock().await;
        let Some(r) = running.as_ref() else {
            drop(running);
            // Not both locks at once: `unlock` takes `running` while it holds `locked`.
            if let Some(me) = self.locked.lock().await.as_ref() {
                // As Docker: a locked manager offers no control (`Is Manager: false`) until unlocked.
                return SwarmInfo {
                    local_node_state: "locked".into(),
                    node_id: me.node_id.clone(),
                    node_addr: ip_of(&me.advertise_addr),
                    cluster_id: me.cluster_id.clone(),
                    ..Default::default()
                };
            }
            return SwarmInfo { local_node_state: "inactive".into(), ..Default::default() };
        };
        // As Docker, only a manager counts the cluster's nodes.
        let (managers, nodes) = r.manager.as_ref().map_or((0, 0), |m| {
            m.store
                .view(|v| (v.nodes().filter(|n| n.manager_status.is_some()).count() as u64, v.nodes().count() as u64))
        });
        let agent: AgentStatus = r.agent.status().borrow().clone();
        SwarmInfo {
            local_node_state: if agent.connected_to.is_some() { "active" } else { "pending" }.into(),
            node_id: r.me.node_id.clone(),
            node_addr: ip_of(&r.me.advertise_addr),
            is_manager: r.me.role == NodeRole::Manager,
            cluster_id: r.me.cluster_id.clone(),
            managers,
            nodes,
            error: String::new(),
            // A manager lists every Raft member (its own address first); a worker, the managers it knows.
            remote_managers: match &r.manager {
                Some(m) => {
                    let mut all = vec![r.me.advertise_addr.clone()];
                    all.extend(m.raft.member_addrs().into_iter().filter(|a| *a != r.me.advertise_addr));
                    all
                }
                None => {
                    let learned = agent.managers.clone();
                    if learned.is_empty() {
                        r.me.managers.clone()
                    } else {
                        learned
                    }
                }
            },
        }
    }

    /// Where the agent stands (its manager, session), None on a non-member; for diagnostics and tests.
    pub async fn agent_status(&self) -> Option<AgentStatus> {
        Some(self.running.lock().await.as_ref()?.agent.status().borrow().clone())
    }

    /// The node certificate new connections present (None on a non-member).
    pub async fn identity(&self) -> Option<NodeIdentity> {
        Some(self.running.lock().await.as_ref()?.tls.identity())
    }

    /// This manager's Raft member (None on a worker or a non-member), for diagnostics and tests.
    pub async fn raft(&self) -> Option<RaftHandle> {
        self.running.lock().await.as_ref()?.manager.as_ref().map(|m| m.raft.clone())
    }

    /// Raft figures for tests and diagnostics.
    pub async fn raft_stats(&self) -> Option<RaftStats> {
        let running = self.running.lock().await;
        running.as_ref()?.manager.as_ref().map(|m| {
            let (appended_entries, appended_bytes) = m.raft.log_written();
            RaftStats {
                log_entries: m.raft.log_len(),
                snapshot_index: m.raft.snapshot_index(),
                applied_index: m.raft.applied_index(),
                appended_entries,
                appended_bytes,
            }
        })
    }

    /// Has this manager take a Raft snapshot now and waits until it covers everything applied when asked.
    pub async fn take_snapshot(&self, timeout: Duration) -> Result<(), NodeError> {
        let raft = self.raft().await.ok_or(NodeError::NotManager(NOT_A_MANAGER))?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Just after a restart, Raft may not have reported what it applied yet (its view can be full already):
        // a snapshot asked for then would be of nothing.
        let want = loop {
            match raft.applied_index() {
                Some(i) => break Some(i),
                None if tokio::time::Instant::now() >= deadline => break None,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        raft.snapshot().await?;
        while raft.snapshot_index() < want {
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::manager::raft::RaftNodeError::Raft(format!(
                    "no snapshot at index {want:?} within {timeout:?}"
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Figures about a manager's Raft log (benchmarks print them).
#[derive(Debug, Clone, Default)]
pub struct RaftStats {
    /// Entries held in the log file now.
    pub log_entries: u64,
    /// The last index the stored snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The last index applied to the store.
    pub applied_index: Option<u64>,
    /// Entries and encoded bytes appended since the manager started.
    pub appended_entries: u64,
    pub appended_bytes: u64,
}

/// Raft settings for a manager whose node certificate is `identity` (it calls its peers with it).

/// How long `swarm leave` waits for the managers to record that this one leaves.
const LEAVE_GROUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a joining manager waits for the leader to add it (a learner first catches up with the whole log or a
/// snapshot of it).
const RAFT_JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks the manager at `remote` to add this manager to the Raft group, following it to the leader.
async fn ask_to_join(raft: &RaftHandle, remote: &str, raft_id: u64, addr: &str) -> Result<(), NodeError> {
    let mut target = remote.to_string();
    let deadline = tokio::time::Instant::now() + RAFT_JOIN_TIMEOUT;
    loop {
        let req = JoinRequest { raft_id, addr: addr.to_string() };
        let r = raft.peers().call(&target, RAFT_JOIN_TIMEOUT, |mut c| async move { c.join(req).await }).await;
        let retry = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(RemoteFailure::NotLeader { leader: Some(l) })) => {
                target = l;
                true
            }
            Ok(Err(RemoteFailure::NotLeader { leader: None })) => true,
            Ok(Err(f)) => return Err(NodeError::Membership(format!("joining the managers: {}", failure_text(&f)))),
            Err(e) => return Err(NodeError::Membership(format!("joining the managers: {e}"))),
        };
        if !retry || tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Membership("joining the managers: no leader answered".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes this manager out of the Raft group (through the leader, or itself if it leads) and records it as a
/// worker that is down, as `node ls` then shows it until `node rm`.
async fn leave_group(raft: &RaftHandle, store: &Store, me: &PersistedNode, force: bool) -> Result<(), NodeError> {
    let refused = |f: RemoteFailure| match f {
        RemoteFailure::QuorumAtRisk { left, of } => NodeError::QuorumAtRisk { left, of },
        f => NodeError::Membership(format!("leaving the managers: {}", failure_text(&f))),
    };
    if raft.is_leader() {
        return raft::leave_group(raft, store, &me.node_id, me.raft_id, force).await.map_err(refused);
    }
    let Some(leader) = raft.leader_addr() else {
        // No leader to ask: the managers left have no quorum now.
        let of = raft.voters().len().saturating_sub(1);
        return Err(if force {
            NodeError::Membership("leaving the managers: no leader".into())
        } else {
            NodeError::QuorumAtRisk { left: 0, of }
        });
    };
    let req = LeaveRequest { raft_id: me.raft_id, force };
    match raft.peers().call(&leader, RAFT_JOIN_TIMEOUT, |mut c| async move { c.leave(req).await }).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(f)) => Err(refused(f)),
        Err(e) => Err(NodeError::Membership(format!("leaving the managers: {e}"))),
    }
}

fn failure_text(f: &RemoteFailure) -> String {
    match f {
        RemoteFailure::Apply(e) => e.to_string(),
        RemoteFailure::NotLeader { leader } => StoreError::NotLeader { leader: leader.clone() }.to_string(),
        RemoteFailure::QuorumLost { reachable } => StoreError::QuorumLost { reachable: reachable.clone() }.to_string(),
        RemoteFailure::QuorumAtRisk { left, of } => NodeError::QuorumAtRisk { left: *left, of: *of }.to_string(),
        RemoteFailure::Refused(m) | RemoteFailure::Raft(m) => m.clone(),
    }
}

#[allow(non_snake_case)]
fn RootCa_api(root: &RootCa, digest: &str) -> crate::api::RootCa {
    crate::api::RootCa {
        ca_cert_pem: root.cert_pem.clone(),
        ca_key_pem: root.key_pem.clone(),
        ca_cert_digest: digest.to_string(),
        join_tokens: JoinTokens { worker: ca::JoinToken::generate(digest), manager: ca::JoinToken::generate(digest) },
        ..Default::default()
    }
}

/// The manager address `swarm join` is given: `ip`, `ip:port` or `host:port` (port 2377 when none).
fn remote_addr(addr: &str) -> Result<String, NodeError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(NodeError::InvalidArgument("a manager address is required (HOST:PORT)".into()));
    }
    if let Ok(a) = with_port(addr, DEFAULT_PORT, "remote address") {
        return Ok(a);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        None if !addr.contains(['/', ' ']) => Ok(format!("{addr}:{DEFAULT_PORT}")),
        _ => Err(NodeError::InvalidArgument(format!(
            "invalid remote address {addr:?}: expected HOST:PORT, an IP address, or an IP address and port"
        ))),
    }
}

/// The local address this host reaches `remote` from, with `port`: what a worker advertises when not told
/// (no packet is sent: connecting a UDP socket only picks the route). Empty when there is no route.
async fn source_addr_towards(remote: &str, port: u16) -> String {
    let Some(r) = tokio::net::lookup_host(remote).await.ok().and_then(|mut a| a.next()) else { return String::new() };
    let any: SocketAddr =
        if r.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let local = async {
        let s = tokio::net::UdpSocket::bind(any).await.ok()?;
        s.connect(r).await.ok()?;
        s.local_addr().ok()
    };
    local.await.map(|l| SocketAddr::new(l.ip(), port).to_string()).unwrap_or_default()
}

fn ip_of(addr: &str) -> String {
    addr.parse::<SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| addr.to_string())
}

/// `ip` → `ip:port`; `ip:port` unchanged. `flag` names the option in the error.
fn with_port(addr: &str, port: u16, flag: &str) -> Result<String, NodeError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a.to_string());
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    Err(NodeError::InvalidArgument(format!(
        "invalid argument {addr:?} for {flag:?} flag: expected an IP address, optionally with a port \
         (interface names are not supported yet)"
    )))
}

/// The cluster spec `swarm init` writes, from its flags; refuses values a cluster could not run with.
fn init_cluster_spec(req: &SwarmInitRequest) -> Result<ClusterSpec, NodeError> {
    let mut spec = ClusterSpec {
        annotations: Annotations { name: DEFAULT_CLUSTER_NAME.into(), labels: Default::default() },
        orchestration: OrchestrationConfig::default(),
        raft: RaftConfig::default(),
        dispatcher: crate::api::DispatcherConfig::default(),
        ca_config: crate::api::CaConfig::default(),
        encryption_config: crate::api::EncryptionConfig { auto_lock_managers: req.autolock },
    };
    if let Some(n) = req.task_history_limit {
        spec.orchestration.task_history_retention_limit = n;
    }
    if let Some(p) = req.dispatcher_heartbeat {
        spec.dispatcher.heartbeat_period = p;
    }
    if let Some(n) = req.snapshot_interval {
        spec.raft.snapshot_interval = n;
    }
    if let Some(e) = req.cert_expiry {
        spec.ca_config.node_cert_expiry = e;
    }
    spec.validate().map_err(NodeError::InvalidArgument)?;
    Ok(spec)
}

/// What `swarm init` may write into the state dir, and how to take it back if init fails part-way.
struct InitTrace {
    state_dir: PathBuf,
    /// Whether init created the state dir itself (then it removes the whole dir).
    created_dir: bool,
}

impl InitTrace {
    /// Called once the flags are valid, before the first write. Without `node.json` the node is not a member, so
    /// certificates or Raft files found here are the remains of an init that did not finish: they are cleared,
    /// as they would otherwise make this init fail too.
    fn start(state_dir: &std::path::Path) -> std::io::Result<Self> {
        let created_dir = !state_dir.exists();
        let trace = InitTrace { state_dir: state_dir.to_path_buf(), created_dir };
        for p in trace.paths() {
            if p.exists() {
                tracing::warn!(path = %p.display(), "removing swarm state left by an unfinished init");
                remove_any(&p)?;
            }
        }
        Ok(trace)
    }

    fn paths(&self) -> [PathBuf; 4] {
        [
            self.state_dir.join(NODE_FILE),
            self.state_dir.join("certificates"),
            self.state_dir.join("raft"),
            self.state_dir.join(DATA_KEY_FILE),
        ]
    }

    /// Removes what init wrote. Failures are logged: the caller reports the error that made init fail.
    fn undo(self) {
        let targets = if self.created_dir { vec![self.state_dir.clone()] } else { self.paths().to_vec() };
        for p in targets {
            if let Err(e) = remove_any(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove what a failed swarm init wrote");
            }
        }
    }
}

/// Removes a file or a directory tree; a missing one is not an error.
fn remove_any(p: &std::path::Path) -> std::io::Result<()> {
    let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A bind failure of the address the user gave (`--listen-addr`), reported as a bad flag value.
fn as_flag_error(e: NodeError) -> NodeError {
    match e {
        NodeError::Listen { addr, reason } => {
            NodeError::InvalidArgument(format!("--listen-addr {addr}: cannot listen there: {reason}"))
        }
        other => other,
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Listen { addr: addr.to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::exec::ExecError;
    use crate::testing::{TestController, TestExecutor};
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `TestExecutor`, but `describe` fails while `fail_describe` is set: a failure in the middle of init, after
    /// the certificates and the Raft log were written.
    #[derive(Clone)]
    struct FlakyExecutor {
        inner: TestExecutor,
        fail_describe: Arc<AtomicBool>,
    }

    impl Executor for FlakyExecutor {
        type Controller = TestController;

        async fn describe(&self) -> Result<NodeDescription, ExecError> {
            if self.fail_describe.load(Ordering::SeqCst) {
                return Err(ExecError::Runtime("runtime unreachable".into()));
            }
            self.inner.describe().await
        }

        fn controller(&self, task: &Task) -> Result<TestController, ExecError> {
            self.inner.controller(task)
        }

        async fn list_tasks(&self) -> Result<Vec<String>, ExecError> {
            self.inner.list_tasks().await
        }

        async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
            self.inner.remove_task(task_id).await
        }
    }

    /// Every path under `dir`, relative to it: what "the state dir is unchanged" compares.
    fn tree(dir: &Path) -> BTreeSet<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries {
                let p = e.unwrap().path();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
                if p.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(dir, dir, &mut out);
        out
    }

    fn loopback() -> SwarmInitRequest {
        SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn init_creates_the_ingress_network_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || NodeConfig { state_dir: dir.path().join("swarm"), default_advertise_ip: None };
        let ingress = |node: &SwarmNode<TestExecutor>| {
            node.store().unwrap().view(|v| v.networks().filter(|n| n.spec.ingress).cloned().collect::<Vec<_>>())
        };
        let node = SwarmNode::new(cfg(), Arc::new(TestExecutor::new("host-a")));
        node.init(loopback()).await.unwrap();
        let made = ingress(&node);
        assert_eq!(made.len(), 1, "one ingress network after init: {made:?}");
        let n = &made[0];
        assert_eq!(
            (n.spec.annotations.name.as_str(), n.subnet.as_str(), n.gateway.as_str(), n.vni),
            ("ingress", "10.0.0.0/24", "10.0.0.1", crate::manager::ipam::FIRST_VNI),
            "the first subnet of the default pool"
        );
        node.shutdown().await;

        // A restart resumes the same swarm: still that one ingress network.
        let node = SwarmNode::new(cfg(), Arc::new(TestExecutor::new("host-a")));
        assert!(node.resume().await.unwrap(), "the swarm resumes");
        assert_eq!(ingress(&node), made, "the restart changed the ingress networks");
        node.leave(true).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_whose_session_is_late_says_so_and_carries_on() {
        let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mgr = SwarmNode::new(
            NodeConfig { state_dir: mdir.path().join("swarm"), default_advertise_ip: None },
            Arc::new(TestExecutor::new("host-m")),
        );
        mgr.init(loopback()).await.unwrap();
        let addr = mgr.info().await.remote_managers[0].clone();
        let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
        // The worker's runtime does not answer, so its agent cannot open a session.
        let exec = FlakyExecutor { inner: TestExecutor::new("host-w"), fail_describe: Arc::new(AtomicBool::new(true)) };
        let worker = SwarmNode::new(
            NodeConfig { state_dir: wdir.path().join("swarm"), default_advertise_ip: None },
            Arc::new(exec.clone()),
        );
        let req = SwarmJoinRequest {
            remote_addr: addr,
            join_token: token,
            advertise_addr: String::new(),
            listen_addr: "127.0.0.1:0".into(),
            availability: NodeAvailability::Active,
        };
        let e = worker.join(req).await.expect_err("no session within the join timeout");
        assert!(matches!(e, NodeError::JoinTimeout), "{e:?}");
        assert!(e.to_string().starts_with("Timeout was reached before node joined."), "{e}");
        // It is a member all the same, and becomes active once its runtime answers.
        assert!(wdir.path().join("swarm").join(NODE_FILE).exists());
        assert_eq!(worker.info().await.local_node_state, "pending");
        exec.fail_describe.store(false, Ordering::SeqCst);
        let mut status = worker.running.lock().await.as_ref().unwrap().agent.status();
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.connected_to.is_some()))
            .await
            .expect("the agent's session within 30s")
            .unwrap();
        assert_eq!(worker.info().await.local_node_state, "active");
        worker.leave(false).await.unwrap();
        mgr.leave(true).await.unwrap();
    }

    #[test]
    fn remote_addresses_get_the_cluster_port() {
        assert_eq!(remote_addr("10.0.0.1").unwrap(), "10.0.0.1:2377");
        assert_eq!(remote_addr(" 10.0.0.1:4000 ").unwrap(), "10.0.0.1:4000");
        assert_eq!(remote_addr("::1").unwrap(), "[::1]:2377");
        assert_eq!(remote_addr("[::1]:4000").unwrap(), "[::1]:4000");
        assert_eq!(remote_addr("manager1").unwrap(), "manager1:2377");
        assert_eq!(remote_addr("manager1:4000").unwrap(), "manager1:4000");
        for bad in ["", "manager1:port", "manager1:70000", "http://m:1"] {
            let e = remote_addr(bad).unwrap_err();
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{bad:?}: {e:?}");
        }
    }

    #[tokio::test]
    async fn a_worker_advertises_the_address_it_reaches_the_manager_from() {
        assert_eq!(source_addr_towards("127.0.0.1:2377", 2377).await, "127.0.0.1:2377");
        assert_eq!(source_addr_towards("not an address", 2377).await, "");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_flag_is_named_and_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("swarm");
        let node = SwarmNode::new(
            NodeConfig { state_dir: state_dir.clone(), default_advertise_ip: None },
            Arc::new(TestExecutor::new("host-a")),
        );
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = taken.local_addr().unwrap().to_string();
        let cases = [
            (SwarmInitRequest { snapshot_interval: Some(0), ..loopback() }, "--snapshot-interval"),
            (SwarmInitRequest { dispatcher_heartbeat: Some(Duration::ZERO), ..loopback() }, "--dispatcher-heartbeat"),
            (SwarmInitRequest { advertise_addr: "eth0".into(), ..loopback() }, "--advertise-addr"),
            (SwarmInitRequest { advertise_addr: "0.0.0.0".into(), ..loopback() }, "--advertise-addr"),
            (SwarmInitRequest { listen_addr: "eth0".into(), ..loopback() }, "--listen-addr"),
            (SwarmInitRequest { default_addr_pool: vec!["10.0.0.0/33".into()], ..loopback() }, "--default-addr-pool"),
            (
                SwarmInitRequest { default_addr_pool_mask_length: Some(31), ..loopback() },
                "--default-addr-pool-mask-length",
            ),
            (SwarmInitRequest { listen_addr: taken.clone(), ..loopback() }, "--listen-addr"),
            // A wildcard listen address and no default route: nothing to advertise.
            (SwarmInitRequest { listen_addr: "0.0.0.0:0".into(), ..loopback() }, "--advertise-addr"),
        ];
        for (req, flag) in cases {
            let what = format!("{req:?}");
            let e = node.init(req).await.expect_err(&what);
            assert!(matches!(e, NodeError::InvalidArgument(_)), "{what}: {e:?}");
            assert!(e.to_string().contains(flag), "{what}: error {e:?} does not name {flag}");
            assert!(!state_dir.exists(), "{what}: left {:?} in the state dir", tree(&state_dir));
            assert_eq!(node.info().await.local_node_state, "inactive", "{what}");
        }

        let node_id = node.init(loopback()).await.expect("a good init after the bad ones");
        assert_eq!(node.info().await.node_id, node_id);
        assert!(state_dir.join(NODE_FILE).exists());
        node.leave(true).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_init_that_fails_after_writing_removes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("swarm");
        let exec = FlakyExecutor { inner: TestExecutor::new("host-a"), fail_describe: Arc::new(AtomicBool::new(true)) };
        let node = SwarmNode::new(
            NodeConfig { state_dir: state_dir.clone(), default_advertise_ip: None },
            Arc::new(exec.clone()),
        );

        // The state dir does not exist: the failed init removes the dir it created.
        let e = node.init(loopback()).await.expect_err("describe fails");
        assert!(matches!(e, NodeError::Executor(_)), "{e:?}");
        assert!(!state_dir.exists(), "left {:?}", tree(&state_dir));

        // The state dir exists (as the engine may create it): it is kept, and only what init wrote goes.
        std::fs::create_dir_all(&state_dir).unwrap();
        let e = node.init(loopback()).await.expect_err("describe fails");
        assert!(matches!(e, NodeError::Executor(_)), "{e:?}");
        assert_eq!(tree(&state_dir), BTreeSet::new());
        assert_eq!(node.info().await.local_node_state, "inactive");

        exec.fail_describe.store(false, Ordering::SeqCst);
        node.init(loopback()).await.expect("init once the runtime answers");
        assert!(state_dir.join(NODE_FILE).exists());
        node.leave(true).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_remains_of_an_unfinished_init_do_not_block_init() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("swarm");
        // What an init that died between starting Raft and writing node.json leaves: an initialized Raft log.
        let (raft, _) = RaftHandle::start(7, &state_dir.join("raft"), &RaftSettings::default()).await.unwrap();
        raft.initialize("127.0.0.1:1").await.unwrap();
        raft.shutdown().await;
        std::fs::create_dir_all(state_dir.join("certificates")).unwrap();

        let node = SwarmNode::new(
            NodeConfig { state_dir: state_dir.clone(), default_advertise_ip: None },
            Arc::new(TestExecutor::new("host-a")),
        );
        node.init(loopback()).await.expect("init over the remains");
        let (managers, nodes) = {
            let i = node.info().await;
            (i.managers, i.nodes)
        };
        assert_eq!((managers, nodes), (1, 1));
        node.leave(true).await.unwrap();
    }
}
