//! Raft: every cluster write is an entry in an openraft log, applied by every manager to its store view.
//!
//! ```text
//!   Store::propose ─▶ RaftHandle::propose ─▶ openraft (leader) ─▶ RedbLogStore (log.redb, fsync)
//!                                                 │ commit
//!                                                 ▼
//!                                   RedbStateMachine (state.redb) ─▶ SharedView (memory) ─▶ watchers
//! ```
//! Snapshots are taken every `snapshot_interval` entries and the log is purged behind them, keeping
//! `log_entries_for_slow_followers` entries.

mod codec;
mod db;
mod log_store;
mod network;
mod state_machine;

pub use codec::{CodecError, FORMAT_VERSION};
pub use db::DbError;
pub use log_store::RedbLogStore;
pub use network::SingleManagerNetwork;
pub use state_machine::RedbStateMachine;

use crate::manager::store::{Proposal, ProposalResult, Proposer, Store, StoreError};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Shoal's Raft types: entries carry store proposals, responses say whether they applied.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResult,
        SnapshotData = tokio::fs::File,
);

/// Raft settings (the cluster spec's raft section plus timing).
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub snapshot_interval: u64,
    pub log_entries_for_slow_followers: u64,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        // Failover in ≤ 2 s (docs/design.md §4): heartbeats every 200 ms, elections after 0.8–1.2 s of silence.
        RaftSettings {
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            heartbeat_interval: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(800),
            election_timeout_max: Duration::from_millis(1200),
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
}

impl RaftHandle {
    /// Opens the Raft files in `dir` and starts the member. A new member must then be [`RaftHandle::initialize`]d
    /// (swarm init) or added by a leader (join).
    pub async fn start(id: NodeId, dir: &Path, settings: &RaftSettings) -> Result<(RaftHandle, Store), RaftNodeError> {
        let paths = RaftPaths::in_dir(dir);
        let log = RedbLogStore::open(&paths.log)?;
        let sm = RedbStateMachine::open(&paths.state)?;
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
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| RaftNodeError::Config(e.to_string()))?);
        let view = sm.view();
        let raft = openraft::Raft::new(id, config, SingleManagerNetwork, log.clone(), sm.clone())
            .await
            .map_err(|e| RaftNodeError::Raft(e.to_string()))?;
        let handle = RaftHandle { raft, id, log, sm };
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

    async fn write(&self, proposal: Proposal) -> Result<(), StoreError> {
        match self.raft.client_write(proposal).await {
            Ok(resp) => match resp.data.error {
                None => Ok(()),
                Some(e) => Err(StoreError::Apply(e)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(StoreError::NotLeader { leader: f.leader_node.map(|n| n.addr) })
            }
            Err(e) => Err(StoreError::Raft(e.to_string())),
        }
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

impl Proposer for RaftHandle {
    fn propose(&self, proposal: Proposal) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.write(proposal))
    }
}
