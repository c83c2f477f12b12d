//! `shoal.Raft` on a manager's cluster listener: only callers holding a manager certificate get in. It hands
//! openraft's RPCs to the local member, commits proposals forwarded by followers, and changes the membership when
//! a manager joins or leaves.

use super::wire::*;
use super::{NodeId, RaftHandle};
use crate::api::NodeRole;
use crate::manager::store::Store;
use crate::transport::raft::raft_server::Raft as RaftRpc;
use tonic::{Request, Response, Status};

pub struct RaftService {
    raft: RaftHandle,
    store: Store,
}

impl RaftService {
    pub fn new(raft: RaftHandle, store: Store) -> Self {
        RaftService { raft, store }
    }
}

/// On the leader: records manager `node_id` as a worker, then removes it from the Raft group. The node stays
/// listed (down once its session ends) until `node rm`, as Docker shows a manager that left.
pub async fn leave_group(
    raft: &RaftHandle,
    store: &Store,
    node_id: &str,
    raft_id: NodeId,
    force: bool,
) -> MembershipReply {
    if !raft.is_leader() {
        return Err(RemoteFailure::NotLeader { leader: raft.leader_addr() });
    }
    // The leader judges: it alone hears from every manager.
    if !force {
        raft.quorum_without(raft_id)?;
    }
    store
        .update_retrying(3, |tx| {
            if let Some(mut n) = tx.view().node(node_id).cloned() {
                n.manager_status = None;
                n.role = NodeRole::Worker;
                n.spec.desired_role = NodeRole::Worker;
                tx.update(n);
            }
            Ok(())
        })
        .await
        .map_err(|e| RemoteFailure::Raft(format!("recording node {node_id} as a worker: {e}")))?;
    raft.remove_voter(raft_id).await
}

impl RaftService {
    /// The caller, if it holds a manager certificate and is a manager in this swarm's store. A node removed from
    /// the managers (left, demoted, removed, or cut off by `--force-new-cluster`) keeps its certificate for a while,
    /// so the certificate alone is not enough. A manager that has no state yet (joining, before its first
    /// snapshot) cannot tell and accepts the leader that is bringing it up to date.
    fn manager<T>(&self, req: &Request<T>) -> Result<crate::ca::PeerIdentity, Status> {
        let peer = crate::ca::authenticate(req, &[NodeRole::Manager])?;
        let (known, addr) = self.store.view(|v| {
            let addr = v.node(&peer.node_id).and_then(|n| n.manager_status.as_ref()).map(|m| m.addr.clone());
            (v.cluster().is_none() || addr.is_some(), addr)
        });
        if !known {
            return Err(Status::permission_denied(format!("node {} is not a manager of this swarm", peer.node_id)));
        }
        // A call in is as good a sign of life as an answer out: a follower hears from the leader this way only.
        if let Some(addr) = addr {
            self.raft.peers().answered(&addr);
        }
        Ok(peer)
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<AppendEntriesRequest>) -> Result<Response<AppendEntriesReply>, Status> {
        self.manager(&req)?;
        Ok(Response::new(self.raft.raft.append_entries(req.into_inner()).await))
    }

    async fn vote(&self, req: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        self.manager(&req)?;
        Ok(Response::new(self.raft.raft.vote(req.into_inner()).await))
    }

    async fn install_snapshot(&self, req: Request<SnapshotChunk>) -> Result<Response<InstallSnapshotReply>, Status> {
        self.manager(&req)?;
        Ok(Response::new(self.raft.raft.install_snapshot(req.into_inner().into()).await))
    }

    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<ProposeReply>, Status> {
        self.manager(&req)?;
        Ok(Response::new(self.raft.propose_as_leader(req.into_inner().proposal).await))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<MembershipReply>, Status> {
        let peer = self.manager(&req)?;
        let r = req.into_inner();
        // A manager may only add itself, under the raft id the CA recorded for it when it joined.
        let recorded = self.raft.recorded_raft_id(&peer.node_id);
        if recorded != Some(r.raft_id) {
            return Ok(Response::new(Err(RemoteFailure::Refused(format!(
                "node {} is not a manager of this swarm with raft id {:x}",
                peer.node_id, r.raft_id
            )))));
        }
        tracing::info!(node.id = %peer.node_id, raft.id = r.raft_id, addr = %r.addr, "adding a manager");
        Ok(Response::new(self.raft.add_voter(r.raft_id, &r.addr).await))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<MembershipReply>, Status> {
        let peer = self.manager(&req)?;
        let r = req.into_inner();
        if self.raft.recorded_raft_id(&peer.node_id) != Some(r.raft_id) {
            return Ok(Response::new(Err(RemoteFailure::Refused(format!(
                "node {} may only remove itself from the managers",
                peer.node_id
            )))));
        }
        tracing::info!(node.id = %peer.node_id, raft.id = r.raft_id, "removing a manager that leaves");
        Ok(Response::new(leave_group(&self.raft, &self.store, &peer.node_id, r.raft_id, r.force).await))
    }
}
