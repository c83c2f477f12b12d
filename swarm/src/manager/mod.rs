//! The manager: a Raft member that serves the control API (reads from its own store, writes through the leader)
//! and, while it leads, runs the leader-only components.
//!
//! ```text
//!   raft metrics ──▶ leader? ──yes──▶ applied every entry of earlier terms? ──▶ spawn: allocator, scheduler,
//!                       │                 replicated + global + jobs orchestrators, updater, task reaper, role manager,
//!                       │                 dispatcher, leader bookkeeping (who leads, which managers are reachable)
//!                       └──no───▶ cancel them all, wait until they stopped
//! ```
//! Components never call each other; they meet in the store. Waiting for the earlier terms' entries means a new
//! leader's orchestrators see every task its predecessor created, so none is created twice across a hand-over.
//!
//! Everything under `manager/` runs only on managers; what every node runs (the agent) lives in `crate::agent`.

pub mod allocator;
pub mod autolock;
pub mod controlapi;
pub mod datakey;
pub mod dispatcher;
pub mod ipam;
pub mod orchestrator;
pub mod raft;
pub mod rolemanager;
pub mod scheduler;
pub mod store;

use crate::api::{Node, Reachability};
use crate::manager::allocator::Allocator;
use crate::manager::dispatcher::Dispatcher;
use crate::manager::orchestrator::global::GlobalOrchestrator;
use crate::manager::orchestrator::jobs::JobsOrchestrator;
use crate::manager::orchestrator::replicated::ReplicatedOrchestrator;
use crate::manager::orchestrator::restart::RestartSupervisor;
use crate::manager::orchestrator::task_reaper::TaskReaper;
use crate::manager::orchestrator::update::UpdateSupervisor;
use crate::manager::raft::RaftHandle;
use crate::manager::scheduler::Scheduler;
use crate::manager::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Runs a long synchronous step of a leader component (a pass planned over a million tasks, a picture rebuilt
/// from every task) without holding up the runtime: on a multi-thread runtime the worker hands its other tasks
/// (heartbeats, sessions, Raft) to another thread meanwhile. With two such steps at once on a two-core machine,
/// the manager otherwise answered nothing for seconds, and nodes were found down for its own silence.
pub(crate) fn long_step<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

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
                    let term = metrics.borrow().current_term;
                    match self.raft.wait_caught_up(Duration::from_secs(10)).await {
                        Ok(()) => {
                            tracing::info!(node.id = %self.node_id, raft.term = term, "became leader");
                            let token = shutdown.child_token();
                            leading = Some((token.clone(), self.start_leading(token)));
                        }
                        // Leadership was lost meanwhile, or the term's first entry could not commit: look again.
                        Err(e) => tracing::info!(node.id = %self.node_id, error = %e, "elected, but not leading"),
                    }
                }
                (false, true) => {
                    tracing::info!(node.id = %self.node_id, "lost leadership");
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
            GlobalOrchestrator::new(s.clone(), restarts.clone())
                .run(token.clone())
                .instrument(span("global-orchestrator")),
        );
        set.spawn(JobsOrchestrator::new(s.clone(), restarts).run(token.clone()).instrument(span("jobs-orchestrator")));
        set.spawn(TaskReaper::new(s.clone()).run(token.clone()).instrument(span("task-reaper")));
        set.spawn(UpdateSupervisor::new(s.clone()).run(token.clone()).instrument(span("updater")));
        set.spawn(
            crate::manager::rolemanager::RoleManager::new(s.clone(), self.raft.clone())
                .run(token.clone())
                .instrument(span("role-manager")),
        );
        let d = self.dispatcher.clone();
        let store = s.clone();
        let t = token.clone();
        set.spawn(async move { d.run(store, t).await }.instrument(span("dispatcher")));
        let store = s.clone();
        let node_id = self.node_id.clone();
        let raft = self.raft.clone();
        set.spawn(
            async move {
                let mut tick = tokio::time::interval(BOOKKEEPING_PERIOD);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = record_managers(&store, &node_id, &raft).await {
                        tracing::debug!(error = %e, "recording manager status");
                    }
                }
            }
            .instrument(span("leader-bookkeeping")),
        );
        set
    }
}

/// How often the leader refreshes the managers' status (leader flag, reachability).
const BOOKKEEPING_PERIOD: Duration = Duration::from_secs(1);

/// Records which manager leads and which are reachable in the nodes' manager status (what `node ls` shows).
async fn record_managers(store: &Store, node_id: &str, raft: &RaftHandle) -> Result<(), StoreError> {
    let want = |n: &Node| -> Option<(bool, Reachability)> {
        let ms = n.manager_status.as_ref()?;
        let leader = n.id == node_id;
        let reach =
            if leader || raft.is_reachable(&ms.addr) { Reachability::Reachable } else { Reachability::Unreachable };
        (ms.leader != leader || ms.reachability != reach).then_some((leader, reach))
    };
    if !store.view(|v| v.nodes().any(|n| want(n).is_some())) {
        return Ok(());
    }
    store
        .update_retrying(3, |tx| {
            let changes: Vec<Node> = tx
                .view()
                .nodes()
                .filter_map(|n| {
                    let (leader, reach) = want(n)?;
                    let mut n = n.clone();
                    let ms = n.manager_status.as_mut().expect("want checked it");
                    ms.leader = leader;
                    ms.reachability = reach;
                    Some(n)
                })
                .collect();
            for n in changes {
                tx.update(n);
            }
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskState;
    use crate::testing::{flaky_store, node, service, task};

    /// With one worker thread, a second-long step of one task leaves the other tasks running (a heartbeat
    /// timer here); on a current-thread runtime (component tests) it just runs.
    #[test]
    fn a_long_step_does_not_hold_up_the_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ticks = rt.block_on(async {
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let counter = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            tokio::task::yield_now().await;
            let during = tokio::spawn(async move {
                let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
                long_step(|| std::thread::sleep(Duration::from_secs(1)));
                ticks.load(std::sync::atomic::Ordering::Relaxed) - before
            })
            .await
            .unwrap();
            ticker.abort();
            during
        });
        assert!(ticks >= 10, "the timer ticked {ticks} times in the second the step took (none without it)");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { long_step(|| 7) }), 7);
    }

    /// A leader that lost its quorum has every write refused; stopping the manager must still stop every
    /// component, not leave one retrying forever.
    #[tokio::test]
    async fn every_component_stops_while_every_write_fails() {
        let (store, writes) = flaky_store();
        store
            .update(|tx| {
                tx.create(node("n1", "host-1"));
                tx.create(service("s1", "web", 3));
                let mut pending = task("t1", "s1", 1);
                pending.status.state = TaskState::Pending;
                tx.create(pending);
                tx.create(task("t2", "s1", 2));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        writes.fail_next(usize::MAX);
        let token = CancellationToken::new();
        let restarts = Arc::new(RestartSupervisor::new());
        let mut set = JoinSet::new();
        set.spawn(Allocator::new(store.clone()).run(token.clone()));
        set.spawn(Scheduler::new(store.clone()).run(token.clone()));
        set.spawn(ReplicatedOrchestrator::new(store.clone(), restarts.clone()).run(token.clone()));
        set.spawn(GlobalOrchestrator::new(store.clone(), restarts.clone()).run(token.clone()));
        set.spawn(JobsOrchestrator::new(store.clone(), restarts).run(token.clone()));
        set.spawn(TaskReaper::new(store.clone()).run(token.clone()));
        set.spawn(UpdateSupervisor::new(store.clone()).run(token.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(writes.failures_left() < usize::MAX, "no component tried to write");
        token.cancel();
        let all_ended =
            tokio::time::timeout(Duration::from_secs(5), async { while set.join_next().await.is_some() {} }).await;
        assert!(all_ended.is_ok(), "{} components still running 5 s after shutdown", set.len());
    }
}
