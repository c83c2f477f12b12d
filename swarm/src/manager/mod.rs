//! The manager: a Raft member that, while it leads, runs the leader-only components.
//!
//! ```text
//!   raft metrics ──▶ leader? ──yes──▶ spawn: allocator, scheduler, replicated + global orchestrators,
//!                       │                    task reaper, dispatcher, leader bookkeeping
//!                       └──no───▶ cancel them all
//! ```
//! Components never call each other; they meet in the store.
//!
//! Everything under `manager/` runs only on managers; what every node runs (the agent) lives in `crate::agent`.

pub mod allocator;
pub mod controlapi;
pub mod dispatcher;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;

use crate::api::Reachability;
use crate::manager::allocator::Allocator;
use crate::manager::dispatcher::Dispatcher;
use crate::manager::orchestrator::global::GlobalOrchestrator;
use crate::manager::orchestrator::replicated::ReplicatedOrchestrator;
use crate::manager::orchestrator::restart::RestartSupervisor;
use crate::manager::orchestrator::task_reaper::TaskReaper;
use crate::manager::raft::RaftHandle;
use crate::manager::scheduler::Scheduler;
use crate::manager::store::{Store, StoreError};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub struct Manager {
    node_id: String,
    raft: RaftHandle,
    store: Store,
    dispatcher: Dispatcher,
    /// Published for the control API while this manager leads.
    control: watch::Sender<Option<Store>>,
}

impl Manager {
    pub fn new(
        node_id: String,
        raft: RaftHandle,
        store: Store,
        dispatcher: Dispatcher,
        control: watch::Sender<Option<Store>>,
    ) -> Self {
        Manager { node_id, raft, store, dispatcher, control }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut leading: Option<(CancellationToken, JoinSet<()>)> = None;
        loop {
            let is_leader = metrics.borrow().current_leader == Some(self.raft.id());
            match (is_leader, leading.is_some()) {
                (true, false) => {
                    tracing::info!(node.id = %self.node_id, raft.term = metrics.borrow().current_term, "became leader");
                    let token = shutdown.child_token();
                    leading = Some((token.clone(), self.start_leading(token)));
                    self.control.send_replace(Some(self.store.clone()));
                }
                (false, true) => {
                    tracing::info!(node.id = %self.node_id, "lost leadership");
                    self.control.send_replace(None);
                    if let Some((token, mut set)) = leading.take() {
                        token.cancel();
                        while set.join_next().await.is_some() {}
                    }
                }
                _ => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = metrics.changed() => if r.is_err() { break },
            }
        }
        self.control.send_replace(None);
        if let Some((token, mut set)) = leading.take() {
            token.cancel();
            while set.join_next().await.is_some() {}
        }
    }

    fn start_leading(&self, token: CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        let s = &self.store;
        let restarts = Arc::new(RestartSupervisor::new());
        restarts.resume_delayed(s, &token);
        let span = |name: &'static str| tracing::info_span!("component", name, node.id = %self.node_id);
        set.spawn(Allocator::new(s.clone()).run(token.clone()).instrument(span("allocator")));
        set.spawn(Scheduler::new(s.clone()).run(token.clone()).instrument(span("scheduler")));
        set.spawn(
            ReplicatedOrchestrator::new(s.clone(), restarts.clone())
                .run(token.clone())
                .instrument(span("replicated-orchestrator")),
        );
        set.spawn(
            GlobalOrchestrator::new(s.clone(), restarts).run(token.clone()).instrument(span("global-orchestrator")),
        );
        set.spawn(TaskReaper::new(s.clone()).run(token.clone()).instrument(span("task-reaper")));
        let d = self.dispatcher.clone();
        let store = s.clone();
        let t = token.clone();
        set.spawn(async move { d.run(store, t).await }.instrument(span("dispatcher")));
        let store = s.clone();
        let node_id = self.node_id.clone();
        set.spawn(async move {
            if let Err(e) = mark_leader(&store, &node_id).await {
                tracing::warn!(error = %e, "recording leadership");
            }
        });
        set
    }
}

/// Records which manager leads in the nodes' manager status (what `node ls` shows).
async fn mark_leader(store: &Store, node_id: &str) -> Result<(), StoreError> {
    store
        .update(|tx| {
            for n in tx.view().nodes() {
                if let Some(ms) = &n.manager_status {
                    let leader = n.id == node_id;
                    if ms.leader != leader || (leader && ms.reachability != Reachability::Reachable) {
                        let mut n = n.clone();
                        let ms = n.manager_status.as_mut().expect("checked above");
                        ms.leader = leader;
                        if leader {
                            ms.reachability = Reachability::Reachable;
                        }
                        tx.update(n);
                    }
                }
            }
            Ok::<_, StoreError>(())
        })
        .await
}
