//! The role manager (leader only): carries out `node promote` / `node demote` (`spec.desired_role`).
//!
//! - Promotion: the node's role becomes manager at once; the node notices (it polls its certificate status),
//!   renews its certificate as a manager (the CA records its raft id and address then), starts Raft and asks the
//!   leader to add it as a learner, then a voter.
//! - Demotion: the node leaves the Raft group first, and only when the managers left keep a quorum of reachable
//!   voters; then its role becomes worker, and the node renews its certificate as a worker and stops its manager.

use crate::api::{Node, NodeRole};
use crate::manager::raft::wire::RemoteFailure;
use crate::manager::raft::{leave_group, RaftHandle};
use crate::manager::store::{Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often role changes are looked for besides store events.
const PERIOD: Duration = Duration::from_secs(1);

pub struct RoleManager {
    store: Store,
    raft: RaftHandle,
}

impl RoleManager {
    pub fn new(store: Store, raft: RaftHandle) -> Self {
        RoleManager { store, raft }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        // Roles change with nodes, never with tasks.
        let mut events = self.store.watch_objects();
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = events.recv() => {}
            }
            for node in
                self.store.view(|v| v.nodes().filter(|n| n.spec.desired_role != n.role).cloned().collect::<Vec<_>>())
            {
                if let Err(e) = self.reconcile(&node).await {
                    tracing::info!(node.id = %node.id, error = %e, "role change not done yet");
                }
            }
        }
    }

    async fn reconcile(&self, node: &Node) -> Result<(), String> {
        match (node.role, node.spec.desired_role) {
            (NodeRole::Worker, NodeRole::Manager) => {
                tracing::info!(node.id = %node.id, "promoting to manager");
                let id = node.id.clone();
                self.store
                    .update_retrying(3, |tx| {
                        if let Some(mut n) =
                            tx.view().node(&id).cloned().filter(|n| n.spec.desired_role == NodeRole::Manager)
                        {
                            n.role = NodeRole::Manager;
                            tx.update(n);
                        }
                        Ok(())
                    })
                    .await
                    .map_err(|e: StoreError| e.to_string())
            }
            (NodeRole::Manager, NodeRole::Worker) => {
                let Some(ms) = &node.manager_status else {
                    // Promoted but never joined Raft: nothing to leave.
                    let id = node.id.clone();
                    return self
                        .store
                        .update_retrying(3, |tx| {
                            if let Some(mut n) = tx.view().node(&id).cloned() {
                                n.role = NodeRole::Worker;
                                tx.update(n);
                            }
                            Ok(())
                        })
                        .await
                        .map_err(|e| e.to_string());
                };
                if let Err(RemoteFailure::QuorumAtRisk { left, of }) = self.raft.quorum_without(ms.raft_id) {
                    return Err(format!("demoting it would leave {left} reachable managers out of {of}: no quorum"));
                }
                tracing::info!(node.id = %node.id, raft.id = ms.raft_id, "demoting to worker");
                leave_group(&self.raft, &self.store, &node.id, ms.raft_id, false).await.map_err(|f| format!("{f:?}"))
            }
            _ => Ok(()),
        }
    }
}
