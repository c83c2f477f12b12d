//! Raft: every cluster write is an entry in an openraft log, applied by every manager to its store view.
//!
//! ```text
//!   Store::propose ─▶ RaftHandle::propose ─▶ openraft (leader) ─▶ RedbLogStore (log.redb, fsync)
//!                                                 │ commit
//!                                                 ▼
//!                                   RedbStateMachine ─▶ SharedView (memory) ─▶ watchers
//! ```
//! Snapshots are taken every `snapshot_interval` entries and the log is purged behind them, keeping
//! `log_entries_for_slow_followers` entries. A restarted manager loads its snapshot and applies the log after it
//! again (`state.redb` only names the current snapshot file).

pub mod codec;
mod db;
mod log_store;
mod network;
mod service;
mod state_machine;
pub mod wire;

pub use codec::{AtRest, CodecError, FORMAT_VERSION};
pub use db::DbError;
pub use log_store::RedbLogStore;
pub use network::{GrpcNetwork, PeerError, Peers, MAX_MESSAGE as MAX_RAFT_MESSAGE};
pub use service::{leave_group, RaftService};
pub use state_machine::RedbStateMachine;

use crate::manager::store::{Proposal, ProposalResult, Proposer, Store, StoreError};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wire::RemoteFailure;

/// How long a write waits for a leader to be elected (or reachable) before it fails with the quorum-loss error.
const NO_LEADER_WAIT: Duration = Duration::from_secs(2);
/// A leader that has not heard from a majority of voters within this window has lost its quorum.
const QUORUM_WINDOW: Duration = Duration::from_millis(1500);
/// Bounds a forwarded write; a leader that vanishes meanwhile is noticed sooner, by the election that follows.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Shoal's Raft types: entries carry store proposals, responses say whether they applied.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResult,
        SnapshotData = tokio::fs::File,
);

/// How long a snapshot chunk may take, the last one including its installation on the follower.
const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Raft settings (the cluster spec's raft section plus timing).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub snapshot_interval: u64,
    pub log_entries_for_slow_followers: u64,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// This manager's client TLS towards its peers (its node certificate); None for a manager that never has peers
    /// (storage tests).
    pub peer_tls: Option<crate::ca::ClusterTls>,
    /// How log entries, stored objects and snapshot files are kept on disk (sealed with the data key, or not).
    pub at_rest: AtRest,
}

impl Default for RaftSettings {
    fn default() -> Self {
        // Failover in about 1 s (docs/design.md §4): heartbeats every 100 ms, elections after 0.4–0.7 s of
        // silence. openraft's followers refuse votes for `election_timeout_max` after the leader's last heartbeat
        // (its leader lease), so the first candidate is usually refused and a leader is elected at the second
        // try: 0.8–1.4 s after the leader went silent.
        RaftSettings {
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(700),
            peer_tls: None,
            at_rest: AtRest::default(),
        }
    }
}

/// Failures starting or running Raft.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// A Raft data file cannot be used.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The settings are not valid for openraft.
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// openraft failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// The files of a manager's Raft state under its state dir.
pub struct RaftPaths {
    pub log: PathBuf,
    pub state: PathBuf,
}

impl RaftPaths {
    pub fn in_dir(dir: &Path) -> Self {
        RaftPaths { log: dir.join("log.redb"), state: dir.join("state.redb") }
    }
}

/// A running Raft member and its store.
#[derive(Clone)]
pub struct RaftHandle {
    raft: openraft::Raft<TypeConfig>,
    id: NodeId,
    log: RedbLogStore,
    sm: RedbStateMachine,
    peers: Arc<Peers>,
    /// One membership change at a time: openraft refuses a change while another is in progress, and two
    /// managers leaving at once must both be removed, one after the other.
    membership: Arc<tokio::sync::Mutex<()>>,
}

impl RaftHandle {
    /// Opens the Raft files in `dir` and starts the member. A new member must then be [`RaftHandle::initialize`]d
    /// (swarm init) or added by a leader (join).
    pub async fn start(id: NodeId, dir: &Path, settings: &RaftSettings) -> Result<(RaftHandle, Store), RaftNodeError> {
        let paths = RaftPaths::in_dir(dir);
        let log = RedbLogStore::open_with(&paths.log, settings.at_rest.clone())?;
        let sm = RedbStateMachine::open_with(&paths.state, settings.at_rest.clone())?;
        Self::start_with(id, log, sm, settings).await
    }

    /// Starts the member on stores already opened (tests open them on storage that can simulate a crash).
    pub async fn start_with(
        id: NodeId,
        log: RedbLogStore,
        sm: RedbStateMachine,
        settings: &RaftSettings,
    ) -> Result<(RaftHandle, Store), RaftNodeError> {
        let config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: settings.heartbeat_interval.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_interval.max(1)),
            max_in_snapshot_log_to_keep: settings.log_entries_for_slow_followers,
            // Purge as soon as a snapshot allows it, so the log stays bounded.
            purge_batch_size: 1,
            // Snapshots travel in 1 MiB chunks, one gRPC message each.
            snapshot_max_chunk_size: 1 << 20,
            // The answer to the last chunk comes once the follower installed the whole snapshot (read, opened,
            // recorded in `state.redb`): seconds for a large store. openraft's 200 ms default made such a send
            // time out and start over, again and again, so a manager joining a big swarm never caught up.
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| RaftNodeError::Config(e.to_string()))?);
        let view = sm.view();
        let peers = Peers::new(settings.peer_tls.clone());
        let raft = openraft::Raft::new(id, config, GrpcNetwork::new(peers.clone()), log.clone(), sm.clone())
            .await
            .map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        let handle = RaftHandle { raft, id, log, sm, peers, membership: Default::default() };
        let store = Store::with_proposer(view, Arc::new(handle.clone()));
        Ok((handle, store))
    }

    /// Makes this member the first voter of a new cluster.
    pub async fn initialize(&self, addr: &str) -> Result<(), RaftNodeError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, BasicNode { addr: addr.to_string() });
        self.raft.initialize(members).await.map_err(|e| RaftNodeError::Raft(e.to_string()))
    }

    /// Whether this member has ever been part of a cluster (its log or state is not empty).
    pub async fn is_initialized(&self) -> Result<bool, RaftNodeError> {
        self.raft.is_initialized().await.map_err(|e| RaftNodeError::Raft(e.to_string()))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Commits `proposal` wherever the leader is: here, or forwarded to it. A forwarded write returns once this
    /// manager has applied it too, so a client reading here next sees its own write.
    async fn write(&self, proposal: Proposal) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + NO_LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow().current_leader;
            match leader {
                Some(l) if l == self.id => {
                    return self.propose_as_leader(proposal).await.map(|_| ()).map_err(store_error);
                }
                Some(l) => {
                    let Some(addr) = self.addr_of(l) else { return Err(StoreError::NotLeader { leader: None }) };
                    let forwarded = self.peers.call(&addr, FORWARD_TIMEOUT, |mut c| {
                        let proposal = proposal.clone();
                        async move { c.propose(wire::ProposeRequest { proposal }).await }
                    });
                    // The leader may vanish mid-call: an election here says so sooner than a timeout.
                    let changed = metrics.wait_for(|m| m.current_leader != Some(l));
                    let r = tokio::select! {
                        r = forwarded => Some(r),
                        _ = changed => None,
                    };
                    match r {
                        Some(Ok(Ok(index))) => {
                            let _ = self
                                .raft
                                .wait(Some(NO_LEADER_WAIT))
                                .applied_index_at_least(Some(index), "apply a forwarded write")
                                .await;
                            return Ok(());
                        }
                        Some(Ok(Err(RemoteFailure::NotLeader { .. }))) | None => {}
                        Some(Ok(Err(f))) => return Err(store_error(f)),
                        Some(Err(e)) => tracing::debug!(error = %e, "forwarding a write to the leader"),
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::QuorumLost { reachable: self.reachable_managers() });
            }
            // Wait for a (new) leader, or retry a failed forward shortly.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                metrics.changed(),
            )
            .await;
        }
    }

    /// Commits `proposal` on this manager if it leads and still hears from a quorum; the committed log index.
    pub async fn propose_as_leader(&self, proposal: Proposal) -> wire::ProposeReply {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(RemoteFailure::NotLeader { leader: self.leader_addr() });
        }
        if let Some(lost) = self.quorum_lost() {
            return Err(lost);
        }
        let write = self.raft.client_write(proposal);
        tokio::pin!(write);
        let mut check = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                r = &mut write => return match r {
                    Ok(resp) => match resp.data.error {
                        None => Ok(resp.log_id.index),
                        Some(e) => Err(RemoteFailure::Apply(e)),
                    },
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(RemoteFailure::NotLeader { leader: f.leader_node.map(|n| n.addr) })
                    }
                    Err(e) => Err(RemoteFailure::Raft(e.to_string())),
                },
                _ = check.tick() => if let Some(lost) = self.quorum_lost() {
                    return Err(lost);
                },
            }
        }
    }

    /// The quorum-loss failure, if this leader has not heard from a majority of voters lately.
    fn quorum_lost(&self) -> Option<RemoteFailure> {
        let voters = self.voters();
        if voters.len() <= 1 {
            return None;
        }
        let heard = self.heard_from(voters.iter(), QUORUM_WINDOW);
        (heard * 2 <= voters.len()).then(|| RemoteFailure::QuorumLost { reachable: self.reachable_managers() })
    }

    /// How many of `members` this manager heard from within `window` (itself always counts).
    fn heard_from<'a>(&self, members: impl Iterator<Item = &'a (NodeId, String)>, window: Duration) -> usize {
        members.filter(|(id, addr)| *id == self.id || self.peers.answered_within(addr, window)).count()
    }

    /// The voters of the current membership and their cluster addresses.
    pub fn voters(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        membership
            .voter_ids()
            .map(|id| (id, membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default()))
            .collect()
    }

    /// The cluster addresses of the members this manager heard from within the quorum window (itself included).
    pub fn reachable_managers(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .filter(|(id, n)| **id == self.id || self.peers.answered_within(&n.addr, QUORUM_WINDOW))
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    /// Whether the manager at `addr` answered lately (for `node ls`'s MANAGER STATUS).
    pub fn is_reachable(&self, addr: &str) -> bool {
        self.peers.reachable(addr)
    }

    /// The cluster addresses of every member (voters and learners).
    pub fn member_addrs(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().nodes().map(|(_, n)| n.addr.clone()).collect()
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// The leader's cluster address, when one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.addr_of(leader)
    }

    /// Whether this member leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Waits until this new leader has applied every entry committed before its term (openraft commits a blank
    /// entry first; its application proves the rest are applied).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<(), RaftNodeError> {
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RaftNodeError::Raft(e.to_string())),
            Err(_) => Err(RaftNodeError::Raft(format!("not caught up within {timeout:?}"))),
        }
    }

    /// The raft id the store records for manager node `node_id`.
    pub fn recorded_raft_id(&self, node_id: &str) -> Option<NodeId> {
        self.sm.view().read(|v| v.node(node_id).and_then(|n| n.manager_status.as_ref().map(|m| m.raft_id)))
    }

    /// On the leader: adds `id` as a learner, waits until it has caught up with the log, then makes it a voter.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> wire::MembershipReply {
        if !self.is_leader() {
            return Err(RemoteFailure::NotLeader { leader: self.leader_addr() });
        }
        let failed = |e: String| match self.is_leader() {
            true => RemoteFailure::Raft(e),
            false => RemoteFailure::NotLeader { leader: self.leader_addr() },
        };
        let _one_at_a_time = self.membership.lock().await;
        self.raft
            .add_learner(id, BasicNode { addr: addr.to_string() }, true)
            .await
            .map_err(|e| failed(format!("adding raft learner {id:x}: {e}")))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| failed(format!("promoting raft learner {id:x} to voter: {e}")))?;
        Ok(())
    }

    /// On the leader: removes member `id` from the group.
    pub async fn remove_voter(&self, id: NodeId) -> wire::MembershipReply {
        if !self.is_leader() {
            return Err(RemoteFailure::NotLeader { leader: self.leader_addr() });
        }
        let _one_at_a_time = self.membership.lock().await;
        if !self.is_leader() {
            return Err(RemoteFailure::NotLeader { leader: self.leader_addr() });
        }
        let voters = self.voters();
        let addr = voters.iter().find(|(v, _)| *v == id).map(|(_, a)| a.clone());
        if voters.len() > 1 && addr.is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| RemoteFailure::Raft(format!("removing raft member {id:x}: {e}")))?;
        }
        if let Some(addr) = addr {
            self.peers.forget(&addr);
        }
        Ok(())
    }

    /// On the leader: whether the voters other than `id` keep a reachable majority; if not, how many of how many
    /// would be reachable.
    pub fn quorum_without(&self, id: NodeId) -> Result<(), RemoteFailure> {
        let voters = self.voters();
        if !voters.iter().any(|(v, _)| *v == id) {
            return Ok(());
        }
        let rest: Vec<_> = voters.iter().filter(|(v, _)| *v != id).collect();
        let left = self.heard_from(rest.iter().copied(), network::REACHABLE_WITHIN);
        if rest.is_empty() || left * 2 <= rest.len() {
            return Err(RemoteFailure::QuorumAtRisk { left, of: rest.len() });
        }
        Ok(())
    }

    /// The peer table (channels and when each peer last answered).
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// Whether this member is a voter of the current membership.
    pub fn is_voter(&self) -> bool {
        self.voters().iter().any(|(id, _)| *id == self.id)
    }

    /// The Raft role this member plays now.
    pub fn server_state(&self) -> ServerState {
        self.raft.metrics().borrow().state
    }

    /// A watch of Raft metrics (leadership, term, indexes).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// Waits until this member is the leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), RaftNodeError> {
        self.raft
            .wait(Some(timeout))
            .state(openraft::ServerState::Leader, "become leader")
            .await
            .map(|_| ())
            .map_err(|e| RaftNodeError::Raft(e.to_string()))
    }

    /// Takes a snapshot now (and purges the log behind it).
    pub async fn snapshot(&self) -> Result<(), RaftNodeError> {
        self.raft.trigger().snapshot().await.map_err(|e| RaftNodeError::Raft(e.to_string()))
    }

    /// Entries and encoded bytes this manager appended to its log since it started.
    pub fn log_written(&self) -> (u64, u64) {
        self.log.written()
    }

    /// The last log index applied to the store.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|l| l.index)
    }

    /// Entries now held in the log file.
    pub fn log_len(&self) -> u64 {
        self.log.len().unwrap_or(0)
    }

    /// The last log index covered by the stored snapshot.
    pub fn snapshot_index(&self) -> Option<u64> {
        self.sm.snapshot_meta().ok().flatten().and_then(|m| m.last_log_id).map(|l| l.index)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // openraft drops its state machine worker after shutdown returns; close the files now regardless.
        self.sm.close().await;
        self.log.close().await;
    }
}

fn store_error(f: RemoteFailure) -> StoreError {
    match f {
        RemoteFailure::Apply(e) => StoreError::Apply(e),
        RemoteFailure::NotLeader { leader } => StoreError::NotLeader { leader },
        RemoteFailure::QuorumLost { reachable } => StoreError::QuorumLost { reachable },
        RemoteFailure::QuorumAtRisk { left, of } => {
            StoreError::Raft(format!("removing the manager would leave {left} reachable managers out of {of}"))
        }
        RemoteFailure::Refused(m) | RemoteFailure::Raft(m) => StoreError::Raft(m),
    }
}

impl Proposer for RaftHandle {
    fn propose(&self, proposal: Proposal) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(proposal))
    }
}
