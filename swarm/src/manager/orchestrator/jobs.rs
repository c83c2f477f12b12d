//! The job orchestrator: runs `replicated-job` and `global-job` services to completion, as SwarmKit's
//! `orchestrator/jobs`.
//!
//! - A replicated job runs tasks in slots 1..=`total_completions` until every slot holds a COMPLETE task, never
//!   more than `max_concurrent` (0: as many as `total_completions`, Docker's CLI default) live at once.
//! - A global job runs one task to completion on every eligible node that existed when its run started (the first
//!   tasks of the run were created); nodes joining later get none, as in SwarmKit.
//! - A task that exits 0 is done: its desired state becomes COMPLETE and it is never restarted, whatever the
//!   restart condition (SwarmKit treats `any` as `on-failure` for jobs). A task that fails goes to the restart
//!   supervisor, which replaces it in its slot (or on its node) if the restart policy allows; when the policy
//!   declines, the slot stays failed and the job does not finish.
//! - Each run is a job iteration: the service's `spec_version` when the run's tasks were made
//!   (`Task::job_iteration`). Changing the spec (including `service update --force`) starts a new run; live tasks
//!   of an earlier run are stopped.
//! - Tasks run at desired RUNNING while they are live (the agent runs what is desired RUNNING), unlike SwarmKit's
//!   desired COMPLETED; completed ones are then set to desired COMPLETE, as `service ps` shows them in Docker.

use super::restart::RestartSupervisor;
use super::{is_live, move_reason, new_task, reconcile_loop, service_task_or_node, MoveReason};
use crate::api::{Node, NodeAvailability, NodeState, Service, ServiceMode, Task, TaskState};
use crate::manager::store::{MemoryStore, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The run of `service` its new tasks belong to.
pub fn iteration(service: &Service) -> u64 {
    service.spec_version
}

/// The concurrency limit of a replicated job: `max_concurrent`, or `total_completions` when it is 0.
pub fn effective_max_concurrent(max_concurrent: u64, total_completions: u64) -> u64 {
    if max_concurrent == 0 {
        total_completions
    } else {
        max_concurrent
    }
}

/// Whether `t` records one of the current run's completions: the task reaper keeps these whatever the history
/// limit, as deleting one would make the job run that completion again.
pub fn is_completion_record(service: &Service, t: &Task) -> bool {
    service.spec.mode.is_job() && t.status.state == TaskState::Complete && t.job_iteration == Some(iteration(service))
}

/// A new task of the current run of `service`.
fn job_task(service: &Service, slot: u64, node_id: &str) -> Task {
    let mut t = new_task(service, slot, node_id, TaskState::Running);
    t.job_iteration = Some(iteration(service));
    t
}

/// Whether a live task is still running or on its way there (not ended).
fn unfinished(t: &Task) -> bool {
    is_live(t) && !t.status.state.is_terminal()
}

/// Whether a slot's (or node's) last task failed and the restart policy declined to replace it: the slot stays
/// failed, so the job cannot complete it. A last task that ended SHUTDOWN was stopped (its node drained, or it
/// moved), which frees the slot.
fn held_failed(tasks: &[&Task]) -> bool {
    match tasks.iter().max_by_key(|t| t.meta.creation_order()) {
        Some(last) => {
            last.desired_state == TaskState::Shutdown
                && last.status.state.is_terminal()
                && !matches!(last.status.state, TaskState::Shutdown | TaskState::Complete)
        }
        None => false,
    }
}

/// What reconciling one job changes (computed by a pure planner).
#[derive(Debug, Default)]
pub struct JobPlan {
    /// New tasks of the current run.
    pub create: Vec<Task>,
    /// Unfinished tasks to stop, with the desired state to give them: tasks of an earlier run, and global-job
    /// tasks on nodes that stopped being eligible.
    pub end: Vec<(Task, TaskState)>,
    /// Unfinished tasks of a replicated job that must leave their node ([`move_reason`]); `create` refills their
    /// slots elsewhere (not a restart attempt).
    pub orphaned: Vec<Task>,
}

/// Plans one job of either mode (pure).
pub fn plan_service(view: &MemoryStore, service: &Service) -> JobPlan {
    match service.spec.mode {
        ServiceMode::ReplicatedJob { .. } => plan_replicated(view, service),
        ServiceMode::GlobalJob => plan_global(view, service),
        _ => JobPlan::default(),
    }
}

/// Splits a job's tasks into the current run's (returned) and earlier runs' (unfinished ones go to `plan.end`
/// with `end_state`).
fn current_run<'a>(
    view: &'a MemoryStore,
    service: &Service,
    plan: &mut JobPlan,
    end_state: TaskState,
) -> Vec<&'a Task> {
    let run = Some(iteration(service));
    let mut current = Vec::new();
    for t in view.tasks_by_service(&service.id).filter(|t| t.desired_state != TaskState::Remove) {
        if t.job_iteration == run {
            current.push(t);
        } else if unfinished(t) {
            plan.end.push((t.clone(), end_state));
        }
    }
    current
}

/// Plans a replicated job (pure): fills the lowest free slots, up to the concurrency limit and the completions
/// still missing. Tasks of earlier runs are removed (SwarmKit sets them to REMOVE).
pub fn plan_replicated(view: &MemoryStore, service: &Service) -> JobPlan {
    let ServiceMode::ReplicatedJob { max_concurrent, total_completions } = service.spec.mode else {
        return JobPlan::default();
    };
    let max_concurrent = effective_max_concurrent(max_concurrent, total_completions);
    let mut plan = JobPlan::default();
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in current_run(view, service, &mut plan, TaskState::Remove) {
        slots.entry(t.slot).or_default().push(t);
    }
    let (mut active, mut complete, mut failed) = (0u64, 0u64, 0u64);
    let mut taken: BTreeSet<u64> = BTreeSet::new();
    for (slot, tasks) in &slots {
        if tasks.iter().any(|t| t.status.state == TaskState::Complete) {
            complete += 1;
            taken.insert(*slot);
            continue;
        }
        // Live tasks count as active even when they just failed: the restart supervisor replaces them in place.
        let (lost, live): (Vec<&&Task>, Vec<&&Task>) =
            tasks.iter().filter(|t| is_live(t)).partition(|t| move_reason(view, t).is_some());
        plan.orphaned.extend(lost.into_iter().map(|t| (*t).clone()));
        if !live.is_empty() {
            active += 1;
            taken.insert(*slot);
        } else if held_failed(tasks) {
            failed += 1;
            taken.insert(*slot);
        }
    }
    let missing = total_completions.saturating_sub(complete + active + failed);
    let room = max_concurrent.saturating_sub(active);
    let mut slot = 1u64;
    for _ in 0..missing.min(room) {
        while taken.contains(&slot) {
            slot += 1;
        }
        taken.insert(slot);
        plan.create.push(job_task(service, slot, ""));
    }
    plan
}

/// Whether `node` may get a new task of `service`, and whether it may keep one it runs (as global services:
/// ready or unknown and active for a new task; a paused node keeps its task, a drained one does not).
fn eligibility(service: &Service, node: &Node) -> (bool, bool) {
    let constraints_ok = service.spec.task_template.placement.constraints.iter().all(|c| c.matches(node));
    let new_ok =
        constraints_ok && node.status.state != NodeState::Down && node.spec.availability == NodeAvailability::Active;
    let keep_ok = constraints_ok && node.spec.availability != NodeAvailability::Drain;
    (new_ok, keep_ok)
}

/// Plans a global job (pure): one task per eligible node that existed when the run started, i.e. was created
/// (Raft index) before the run's first task. Tasks of earlier runs are shut down (as SwarmKit does).
pub fn plan_global(view: &MemoryStore, service: &Service) -> JobPlan {
    if service.spec.mode != ServiceMode::GlobalJob {
        return JobPlan::default();
    }
    let mut plan = JobPlan::default();
    let current = current_run(view, service, &mut plan, TaskState::Shutdown);
    // Until the run has a task, every node present counts as existing when it started.
    let started = current.iter().map(|t| t.meta.created_index).min();
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in current {
        by_node.entry(t.node_id.as_str()).or_default().push(t);
    }
    for node in view.nodes() {
        let (new_ok, keep_ok) = eligibility(service, node);
        let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
        if !keep_ok {
            plan.end.extend(tasks.iter().filter(|t| unfinished(t)).map(|t| ((*t).clone(), TaskState::Shutdown)));
            continue;
        }
        let has_one = tasks.iter().any(|t| is_live(t) || t.status.state == TaskState::Complete) || held_failed(&tasks);
        let existed = started.is_none_or(|s| node.meta.created_index < s);
        if !has_one && new_ok && existed {
            plan.create.push(job_task(service, 0, &node.id));
        }
    }
    // Tasks on nodes that left the swarm.
    for (_, tasks) in by_node {
        plan.end.extend(tasks.into_iter().filter(|t| unfinished(t)).map(|t| (t.clone(), TaskState::Shutdown)));
    }
    plan
}

/// The counts `service ls` shows for a job, over its current run: tasks running, tasks wanted at once (Docker:
/// the concurrency limit of a replicated job; the tasks not yet complete of a global job), tasks complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCounts {
    pub running: u64,
    pub desired: u64,
    pub completed: u64,
}

/// [`JobCounts`] of a job (pure).
pub fn job_counts(view: &MemoryStore, service: &Service) -> JobCounts {
    let run = Some(iteration(service));
    let mut c = JobCounts { running: 0, desired: 0, completed: 0 };
    for t in view.tasks_by_service(&service.id).filter(|t| t.job_iteration == run) {
        match t.status.state {
            TaskState::Running => c.running += 1,
            TaskState::Complete => c.completed += 1,
            _ => {}
        }
        if service.spec.mode == ServiceMode::GlobalJob && unfinished(t) {
            c.desired += 1;
        }
    }
    if let ServiceMode::ReplicatedJob { max_concurrent, total_completions } = service.spec.mode {
        c.desired = effective_max_concurrent(max_concurrent, total_completions);
    }
    c
}

/// The job orchestrator (leader only): on every relevant change, settles the jobs' ended tasks (complete ones are
/// marked COMPLETE, failed ones go to the restart supervisor), then plans every other job; one proposal per pass.
pub struct JobsOrchestrator {
    store: Store,
    restarts: Arc<RestartSupervisor>,
}

impl JobsOrchestrator {
    pub fn new(store: Store, restarts: Arc<RestartSupervisor>) -> Self {
        JobsOrchestrator { store, restarts }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let pass = || self.pass(&shutdown);
        let retry = Duration::from_secs(5);
        reconcile_loop(
            "jobs-orchestrator",
            &self.store,
            &shutdown,
            Duration::from_millis(20),
            retry,
            service_task_or_node,
            pass,
        )
        .await
    }

    async fn pass(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let delayed = self
            .store
            .update(|tx| {
                let view = tx.view();
                let mut delayed = Vec::new();
                let mut touched = BTreeSet::new();
                for service in view.services().filter(|s| s.spec.mode.is_job()) {
                    let run = Some(iteration(service));
                    let ended: Vec<&Task> = view
                        .tasks_by_service(&service.id)
                        .filter(|t| is_live(t) && t.status.state.is_terminal())
                        .collect();
                    for t in ended {
                        touched.insert(service.id.clone());
                        if t.status.state == TaskState::Complete {
                            tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot,
                                node.id = %t.node_id, "job task complete");
                            let mut done = t.clone();
                            done.desired_state = TaskState::Complete;
                            tx.update(done);
                        } else if t.job_iteration == run {
                            delayed.extend(self.restarts.restart(tx, service, t));
                        } else {
                            // A task of an earlier run: it is not replaced.
                            let mut old = t.clone();
                            old.desired_state = TaskState::Shutdown;
                            tx.update(old);
                        }
                    }
                }
                // Services touched above are planned on the next pass, which sees the writes made here.
                for service in view.services().filter(|s| s.spec.mode.is_job() && !touched.contains(&s.id)) {
                    let plan = plan_service(view, service);
                    for t in plan.create {
                        tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot,
                            node.id = %t.node_id, job.iteration = ?t.job_iteration, "job task created");
                        tx.create(t);
                    }
                    for (mut t, state) in plan.end {
                        tracing::info!(service.id = %service.id, task.id = %t.id, node.id = %t.node_id,
                            desired = %state, "stopping job task");
                        t.desired_state = state;
                        tx.update(t);
                    }
                    for mut t in plan.orphaned {
                        let why = move_reason(view, &t).map_or("", MoveReason::message);
                        tracing::info!(service.id = %service.id, task.id = %t.id, slot = t.slot,
                            node.id = %t.node_id, reason = why, "moving the job task off its node");
                        t.desired_state = TaskState::Shutdown;
                        tx.update(t);
                    }
                }
                Ok::<_, StoreError>(delayed)
            })
            .await?;
        for (task_id, delay) in delayed {
            self.restarts.start_after(self.store.clone(), task_id, delay, shutdown.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Object;
    use crate::testing::{node, service};

    fn replicated_job(max_concurrent: u64, total_completions: u64) -> Service {
        let mut s = service("s", "job", 0);
        s.spec.mode = ServiceMode::ReplicatedJob { max_concurrent, total_completions };
        s.spec_version = 3;
        s
    }

    /// A task of `s`'s current run in `slot` on `node_id`, in `state`, created at Raft index `index`.
    fn run_task(s: &Service, id: &str, slot: u64, node_id: &str, state: TaskState, index: u64) -> Task {
        let mut t = job_task(s, slot, node_id);
        t.id = id.into();
        t.status.state = state;
        t.meta.created_index = index;
        if state == TaskState::Complete {
            t.desired_state = TaskState::Complete;
        }
        t
    }

    /// A view of `objs` and node n1, where the replicated jobs' tasks run.
    fn view_of(mut objs: Vec<Object>) -> MemoryStore {
        if !objs.iter().any(|o| matches!(o, Object::Node(n) if n.id == "n1")) {
            objs.push(node("n1", "h1").into());
        }
        MemoryStore::from_objects(objs)
    }

    fn slots(tasks: &[Task]) -> Vec<u64> {
        let mut v: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
        v.sort();
        v
    }

    #[test]
    fn a_replicated_job_starts_at_most_max_concurrent_tasks() {
        let s = replicated_job(2, 6);
        let p = plan_replicated(&view_of(vec![s.clone().into(), node("n1", "h1").into()]), &s);
        assert_eq!(slots(&p.create), vec![1, 2]);
        assert!(p.create.iter().all(|t| t.job_iteration == Some(3) && t.desired_state == TaskState::Running));
        // 0 means as many as the completions (Docker's CLI default).
        let s = replicated_job(0, 4);
        assert_eq!(slots(&plan_replicated(&view_of(vec![s.clone().into()]), &s).create), vec![1, 2, 3, 4]);
    }

    #[test]
    fn completed_slots_are_not_run_again_and_the_job_stops_at_its_total() {
        let s = replicated_job(2, 4);
        let objs = vec![
            Object::from(s.clone()),
            run_task(&s, "a", 1, "n1", TaskState::Complete, 10).into(),
            run_task(&s, "b", 2, "n1", TaskState::Running, 11).into(),
            run_task(&s, "c", 3, "n1", TaskState::Complete, 12).into(),
        ];
        let view = view_of(objs);
        let p = plan_replicated(&view, &s);
        assert_eq!(slots(&p.create), vec![4], "one running, so one more fits; slots 1 and 3 are done");

        let done: Vec<Object> = std::iter::once(Object::from(s.clone()))
            .chain((1..=4).map(|i| run_task(&s, &format!("t{i}"), i, "n1", TaskState::Complete, 10 + i).into()))
            .collect();
        let p = plan_replicated(&view_of(done), &s);
        assert!(p.create.is_empty() && p.end.is_empty() && p.orphaned.is_empty(), "{p:?}");
    }

    #[test]
    fn a_failed_task_awaiting_its_restart_still_counts_and_a_declined_restart_holds_its_slot() {
        let s = replicated_job(2, 3);
        let mut waiting = run_task(&s, "a", 1, "n1", TaskState::Failed, 10);
        waiting.desired_state = TaskState::Running; // the restart supervisor has not handled it yet
        let mut declined = run_task(&s, "b", 2, "n1", TaskState::Failed, 11);
        declined.desired_state = TaskState::Shutdown;
        let objs = vec![s.clone().into(), waiting.into(), declined.clone().into()];
        let p = plan_replicated(&view_of(objs), &s);
        assert_eq!(slots(&p.create), vec![3], "slot 1 is active, slot 2 failed for good: {p:?}");

        let mut replacement = run_task(&s, "c", 1, "n1", TaskState::Ready, 12);
        replacement.desired_state = TaskState::Ready; // waiting out its restart delay
        let objs =
            vec![s.clone().into(), replacement.into(), run_task(&s, "d", 3, "n1", TaskState::Running, 13).into()];
        let p = plan_replicated(&view_of(objs), &s);
        assert!(p.create.is_empty(), "2 of 2 concurrent: a waiting replacement counts: {p:?}");

        let s = replicated_job(3, 3);
        let p = plan_replicated(&view_of(vec![s.clone().into(), declined.into()]), &s);
        assert_eq!(slots(&p.create), vec![1, 3], "the failed slot is not run again");
    }

    #[test]
    fn a_new_run_removes_the_old_runs_unfinished_tasks_and_starts_over() {
        let mut s = replicated_job(2, 2);
        let old_done = run_task(&s, "a", 1, "n1", TaskState::Complete, 10);
        let old_running = run_task(&s, "b", 2, "n1", TaskState::Running, 11);
        s.spec_version = 4;
        let p = plan_replicated(&view_of(vec![s.clone().into(), old_done.into(), old_running.into()]), &s);
        assert_eq!(slots(&p.create), vec![1, 2]);
        assert!(p.create.iter().all(|t| t.job_iteration == Some(4)));
        let ended: Vec<(&str, TaskState)> = p.end.iter().map(|(t, st)| (t.id.as_str(), *st)).collect();
        assert_eq!(ended, vec![("b", TaskState::Remove)]);
    }

    #[test]
    fn a_replicated_job_task_on_a_drained_node_moves_to_its_slot_elsewhere() {
        let s = replicated_job(1, 2);
        let mut drained = node("n1", "h1");
        drained.spec.availability = NodeAvailability::Drain;
        let objs = vec![
            Object::from(s.clone()),
            drained.into(),
            node("n2", "h2").into(),
            run_task(&s, "a", 1, "n1", TaskState::Running, 10).into(),
        ];
        let p = plan_replicated(&view_of(objs), &s);
        assert_eq!(p.orphaned.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(slots(&p.create), vec![1]);
        assert!(p.create[0].node_id.is_empty(), "to be scheduled anywhere");
    }

    fn global_job() -> Service {
        let mut s = service("s", "gjob", 0);
        s.spec.mode = ServiceMode::GlobalJob;
        s.spec_version = 1;
        s
    }

    fn node_at(id: &str, index: u64) -> Node {
        let mut n = node(id, &format!("host-{id}"));
        n.meta.created_index = index;
        n
    }

    #[test]
    fn a_global_job_runs_once_on_each_node_present_when_it_started() {
        let s = global_job();
        let mut drained = node_at("d", 3);
        drained.spec.availability = NodeAvailability::Drain;
        let view = MemoryStore::from_objects(vec![
            s.clone().into(),
            node_at("a", 1).into(),
            node_at("b", 2).into(),
            drained.into(),
        ]);
        let p = plan_global(&view, &s);
        let mut on: Vec<&str> = p.create.iter().map(|t| t.node_id.as_str()).collect();
        on.sort();
        assert_eq!(on, vec!["a", "b"]);
        assert!(p.create.iter().all(|t| t.slot == 0 && t.job_iteration == Some(1)));

        // Node a completed, b still runs; c joined after the run started (index 30 > 20): it gets nothing.
        let view = MemoryStore::from_objects(vec![
            s.clone().into(),
            node_at("a", 1).into(),
            node_at("b", 2).into(),
            node_at("c", 30).into(),
            run_task(&s, "ta", 0, "a", TaskState::Complete, 20).into(),
            run_task(&s, "tb", 0, "b", TaskState::Running, 21).into(),
        ]);
        let p = plan_global(&view, &s);
        assert!(p.create.is_empty() && p.end.is_empty(), "{p:?}");
    }

    #[test]
    fn a_global_job_task_on_a_drained_node_is_shut_down_and_not_replaced() {
        let s = global_job();
        let mut drained = node_at("a", 1);
        drained.spec.availability = NodeAvailability::Drain;
        let view = MemoryStore::from_objects(vec![
            s.clone().into(),
            drained.into(),
            run_task(&s, "ta", 0, "a", TaskState::Running, 20).into(),
        ]);
        let p = plan_global(&view, &s);
        let ended: Vec<(&str, TaskState)> = p.end.iter().map(|(t, st)| (t.id.as_str(), *st)).collect();
        assert_eq!(ended, vec![("ta", TaskState::Shutdown)]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn counts_follow_the_current_run() {
        let mut s = replicated_job(2, 6);
        let old = run_task(&s, "old", 1, "n1", TaskState::Complete, 5);
        s.spec_version = 4;
        let view = view_of(vec![
            s.clone().into(),
            old.into(),
            run_task(&s, "a", 1, "n1", TaskState::Complete, 10).into(),
            run_task(&s, "b", 2, "n1", TaskState::Running, 11).into(),
        ]);
        assert_eq!(job_counts(&view, &s), JobCounts { running: 1, desired: 2, completed: 1 });
        assert!(is_completion_record(&s, view.task("a").unwrap()));
        assert!(!is_completion_record(&s, view.task("old").unwrap()), "an earlier run's");
    }
}
