//! How this manager's Raft reaches the others: `shoal.Raft` over the cluster's mTLS listener, one lazily connected
//! HTTP/2 channel per peer address. Every call is bounded by openraft's deadline; a peer that cannot be reached is
//! reported `Unreachable` (openraft backs off), one that answered with an error is a `RemoteError`.
//!
//! The [`Peers`] table remembers when each peer last answered, which is what `node ls` shows as Reachable /
//! Unreachable and what the quorum-loss error lists.

use super::wire::{RemoteFailure, SnapshotChunk};
use super::{NodeId, TypeConfig};
use crate::ca::ClusterTls;
use crate::transport::raft::raft_client::RaftClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long a peer may stay silent and still count as reachable.
pub const REACHABLE_WITHIN: Duration = Duration::from_secs(3);

/// Failures reaching a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The address does not make an endpoint.
    #[error("raft peer {addr}: {reason}")]
    Address { addr: String, reason: String },
    /// This manager has no certificate to call peers with (a test store).
    #[error("raft peer {0}: this manager has no cluster certificate")]
    NoTls(String),
    /// The call failed at the transport.
    #[error("raft peer {addr}: {status}")]
    Call { addr: String, status: tonic::Status },
    /// The call did not finish in time.
    #[error("raft peer {addr}: no answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The peer answered with an error.
    #[error("raft peer {addr}: {failure:?}")]
    Remote { addr: String, failure: RemoteFailure },
}

/// Channels to peers and when each last answered; shared by the Raft network and the manager's bookkeeping.
#[derive(Default)]
pub struct Peers {
    /// Read at each (re)connection, so a renewed certificate is used without dropping the channels.
    tls: Option<ClusterTls>,
    channels: Mutex<HashMap<String, Channel>>,
    last_ok: Mutex<HashMap<String, Instant>>,
}

impl Peers {
    pub fn new(tls: Option<ClusterTls>) -> Arc<Peers> {
        Arc::new(Peers { tls, ..Default::default() })
    }

    /// The TLS material peers are called with (None for a manager that never has peers).
    pub fn tls(&self) -> Option<ClusterTls> {
        self.tls.clone()
    }

    /// A client for the manager at `addr` (cluster address), reusing its channel.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(raft_client(ch.clone()));
        }
        let tls = self.tls.clone().ok_or_else(|| PeerError::NoTls(addr.into()))?;
        let bad = |e: tonic::transport::Error| PeerError::Address { addr: addr.into(), reason: e.to_string() };
        let endpoint = crate::ca::endpoint(addr)
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let ch = tls.channel(endpoint);
        channels.insert(addr.into(), ch.clone());
        Ok(raft_client(ch))
    }

    /// Records that `addr` answered.
    pub fn answered(&self, addr: &str) {
        self.last_ok.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.into(), Instant::now());
    }

    /// Whether `addr` answered within [`REACHABLE_WITHIN`].
    pub fn reachable(&self, addr: &str) -> bool {
        self.answered_within(addr, REACHABLE_WITHIN)
    }

    /// Whether `addr` answered within `window`.
    pub fn answered_within(&self, addr: &str, window: Duration) -> bool {
        self.last_ok.lock().unwrap_or_else(|e| e.into_inner()).get(addr).is_some_and(|t| t.elapsed() <= window)
    }

    /// Drops the channel to `addr` (a peer that was removed, or whose connection is broken for good).
    pub fn forget(&self, addr: &str) {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(addr);
    }

    /// Runs one call to `addr` under `deadline`, recording success.
    pub async fn call<T, F, Fut>(&self, addr: &str, deadline: Duration, f: F) -> Result<T, PeerError>
    where
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(addr)?;
        match tokio::time::timeout(deadline, f(client)).await {
            Err(_) => Err(PeerError::Timeout { addr: addr.into(), after: deadline }),
            Ok(Err(status)) => Err(PeerError::Call { addr: addr.into(), status }),
            Ok(Ok(r)) => {
                self.answered(addr);
                Ok(r.into_inner())
            }
        }
    }
}

/// The largest `shoal.Raft` message: openraft batches log entries, and one entry may hold a large proposal.
pub const MAX_MESSAGE: usize = 256 << 20;

fn raft_client(ch: Channel) -> RaftClient<Channel> {
    RaftClient::new(ch).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
}

/// openraft's network factory over [`Peers`].
#[derive(Clone)]
pub struct GrpcNetwork {
    peers: Arc<Peers>,
}

impl GrpcNetwork {
    pub fn new(peers: Arc<Peers>) -> Self {
        GrpcNetwork { peers }
    }
}

pub struct PeerConnection {
    target: NodeId,
    node: BasicNode,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection { target, node: node.clone(), peers: self.peers.clone() }
    }
}

impl PeerConnection {
    /// Maps a call's outcome to openraft's error model.
    fn outcome<T, E>(&self, r: Result<Result<T, E>, PeerError>) -> Result<T, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error,
    {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))),
            // Nothing came back: openraft backs off before the next attempt.
            Err(e @ (PeerError::Call { .. } | PeerError::Timeout { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r = self
            .peers
            .call(&self.node.addr, option.hard_ttl(), |mut c| async move { c.append_entries(rpc).await })
            .await;
        self.outcome(r)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let chunk = SnapshotChunk::from(rpc);
        let r = self
            .peers
            .call(&self.node.addr, option.hard_ttl(), |mut c| async move { c.install_snapshot(chunk).await })
            .await;
        self.outcome(r)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r = self.peers.call(&self.node.addr, option.hard_ttl(), |mut c| async move { c.vote(rpc).await }).await;
        self.outcome(r)
    }
}
