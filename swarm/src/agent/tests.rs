//! Unit tests of the agent's task runner and worker against a recording runtime double: every call is logged,
//! removals can be made to fail, and `prepare` / `list_tasks` can be held at a gate to open race windows.

use super::exec::{ContainerState, Controller, ExecError, Executor, ExitStatus};
use super::task::{run_task, PROCESS_GONE, UNHEALTHY};
use super::worker::Worker;
use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage, TaskStatusUpdate};
use crate::api::{NodeDescription, Task, TaskState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Rt {
    containers: HashMap<String, watch::Sender<ContainerState>>,
    /// Calls in order, as "call:task".
    calls: Vec<String>,
    /// How many of the next removals fail.
    remove_failures: usize,
    /// How many of the next waits fail (as when the runtime is lost), and of the next stops.
    wait_failures: usize,
    shutdown_failures: usize,
}

/// A runtime double. Gates start closed only when a test asks for it.
#[derive(Clone, Default)]
struct Recording {
    rt: Arc<Mutex<Rt>>,
    prepare_gate: Option<Arc<Semaphore>>,
    list_gate: Option<Arc<Semaphore>>,
}

impl Recording {
    fn rt(&self) -> std::sync::MutexGuard<'_, Rt> {
        self.rt.lock().unwrap()
    }
    fn calls(&self) -> Vec<String> {
        self.rt().calls.clone()
    }
    fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| c.as_str() == call).count()
    }
    fn exists(&self, id: &str) -> bool {
        self.rt().containers.contains_key(id)
    }
    fn add(&self, id: &str, state: ContainerState) {
        self.rt().containers.insert(id.into(), watch::channel(state).0);
    }
    fn log(&self, call: &str, id: &str) {
        self.rt().calls.push(format!("{call}:{id}"));
    }
}

struct Ctl {
    id: String,
    x: Recording,
}

impl Executor for Recording {
    type Controller = Ctl;
    async fn describe(&self) -> Result<NodeDescription, ExecError> {
        Ok(NodeDescription::default())
    }
    fn controller(&self, task: &Task) -> Result<Ctl, ExecError> {
        Ok(Ctl { id: task.id.clone(), x: self.clone() })
    }
    async fn list_tasks(&self) -> Result<Vec<String>, ExecError> {
        self.log("list", "");
        if let Some(g) = &self.list_gate {
            g.acquire().await.expect("gate").forget();
        }
        Ok(self.rt().containers.keys().cloned().collect())
    }
    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        self.log("remove_task", task_id);
        let mut rt = self.rt();
        if rt.remove_failures > 0 {
            rt.remove_failures -= 1;
            return Err(ExecError::Runtime("device or resource busy".into()));
        }
        rt.containers.remove(task_id);
        Ok(())
    }
}

impl Controller for Ctl {
    async fn prepare(&self) -> Result<(), ExecError> {
        self.x.log("prepare", &self.id);
        if let Some(g) = &self.x.prepare_gate {
            g.acquire().await.expect("gate").forget();
        }
        if !self.x.exists(&self.id) {
            self.x.log("create", &self.id);
            self.x.add(&self.id, ContainerState::Created);
        }
        Ok(())
    }
    async fn start(&self) -> Result<u32, ExecError> {
        self.x.log("start", &self.id);
        let rt = self.x.rt();
        let c = rt.containers.get(&self.id).ok_or_else(|| ExecError::NotFound(self.id.clone()))?;
        c.send_replace(ContainerState::Running { pid: 42 });
        Ok(42)
    }
    async fn wait(&self) -> Result<ExitStatus, ExecError> {
        let mut rx = {
            let mut rt = self.x.rt();
            if rt.wait_failures > 0 {
                rt.wait_failures -= 1;
                return Err(ExecError::Runtime("containerd unreachable".into()));
            }
            rt.containers.get(&self.id).ok_or_else(|| ExecError::NotFound(self.id.clone()))?.subscribe()
        };
        loop {
            if let ContainerState::Exited { exit_code } = *rx.borrow_and_update() {
                return Ok(ExitStatus { exit_code });
            }
            if rx.changed().await.is_err() {
                return Err(ExecError::NotFound(self.id.clone()));
            }
        }
    }
    async fn shutdown(&self) -> Result<(), ExecError> {
        self.x.log("shutdown", &self.id);
        let mut rt = self.x.rt();
        if rt.shutdown_failures > 0 {
            rt.shutdown_failures -= 1;
            return Err(ExecError::Runtime("containerd unreachable".into()));
        }
        if let Some(c) = rt.containers.get(&self.id) {
            if matches!(*c.borrow(), ContainerState::Running { .. }) {
                c.send_replace(ContainerState::Exited { exit_code: 143 });
            }
        }
        Ok(())
    }
    async fn terminate(&self) -> Result<(), ExecError> {
        self.shutdown().await
    }
    async fn remove(&self) -> Result<(), ExecError> {
        self.x.log("remove", &self.id);
        let mut rt = self.x.rt();
        if rt.remove_failures > 0 {
            rt.remove_failures -= 1;
            return Err(ExecError::Runtime("device or resource busy".into()));
        }
        rt.containers.remove(&self.id);
        Ok(())
    }
    async fn inspect(&self) -> Result<Option<ContainerState>, ExecError> {
        Ok(self.x.rt().containers.get(&self.id).map(|c| *c.borrow()))
    }
}

fn task(id: &str) -> Task {
    crate::testing::task(id, "svc1", 1)
}

fn complete(tasks: Vec<Task>) -> AssignmentsMessage {
    AssignmentsMessage { kind: AssignmentsKind::Complete, updated: tasks, ..AssignmentsMessage::incremental() }
}

fn removed(id: &str) -> AssignmentsMessage {
    AssignmentsMessage { removed: vec![id.into()], ..AssignmentsMessage::incremental() }
}

fn added(t: Task) -> AssignmentsMessage {
    AssignmentsMessage { updated: vec![t], ..AssignmentsMessage::incremental() }
}

/// Polls `ok` every 10 ms until it holds, or panics after 5 s saying what was awaited and what `seen` shows.
async fn until(what: &str, mut ok: impl FnMut() -> bool, seen: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; seen: {}", seen());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first report for `task_id` in `state`, within 5 s.
async fn report_in(rx: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>, state: TaskState) -> TaskStatusUpdate {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(u) = rx.recv().await {
            seen.push(u.status.state);
            if u.status.state == state {
                return u;
            }
        }
        panic!("reports ended")
    })
    .await;
    r.unwrap_or_else(|_| panic!("no {state} report within 5s; saw {seen:?}"))
}

#[tokio::test]
async fn runner_fails_a_running_task_whose_process_is_gone_instead_of_restarting_it() {
    // As after a host reboot: the manager last heard RUNNING; the container record is there, its process is not.
    let x = Recording::default();
    x.add("t1", ContainerState::Created);
    let mut t = task("t1");
    t.status.state = TaskState::Running;
    let (tx, rx) = mpsc::unbounded_channel();
    let (_updates, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));
    let mut rx = rx;
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert_eq!(u.status.err, PROCESS_GONE);
    assert_eq!(x.count("start:t1"), 0, "not started again in its old container: {:?}", x.calls());
    cancel.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn runner_reports_an_exit_recorded_while_the_agent_was_down() {
    let x = Recording::default();
    x.add("t1", ContainerState::Exited { exit_code: 3 });
    let mut t = task("t1");
    t.status.state = TaskState::Running;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_updates, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert_eq!(u.status.err, "task: non-zero exit (3)");
    assert_eq!(u.status.container.and_then(|c| c.exit_code), Some(3));
    cancel.cancel();
}

fn running(x: &Recording, id: &str) -> bool {
    x.rt().containers.get(id).is_some_and(|c| matches!(*c.borrow(), ContainerState::Running { .. }))
}

#[tokio::test]
async fn a_task_whose_wait_fails_is_failed_and_its_process_stopped() {
    // The manager replaces a FAILED task: if its process ran on, the slot would run twice.
    let x = Recording::default();
    x.rt().wait_failures = 1;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);
    w.apply(complete(vec![task("t1")])).await;
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert!(u.status.err.contains("containerd unreachable"), "{:?}", u.status);
    until("the process stopped", || !running(&x, "t1"), || format!("{:?}", x.calls())).await;
}

#[tokio::test]
async fn an_ended_task_whose_process_still_runs_is_stopped_once_the_manager_shuts_it_down() {
    let x = Recording::default();
    x.rt().wait_failures = 1;
    x.rt().shutdown_failures = 1;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);
    let t = task("t1");
    w.apply(complete(vec![t.clone()])).await;
    report_in(&mut rx, TaskState::Failed).await;
    until("the failed stop", || x.count("shutdown:t1") == 1, || format!("{:?}", x.calls())).await;
    assert!(running(&x, "t1"), "the stop failed: the process still runs");

    // The restart supervisor shuts the ended task down (its replacement runs elsewhere).
    let mut down = t;
    down.desired_state = TaskState::Shutdown;
    w.apply(added(down)).await;
    until("the process stopped", || !running(&x, "t1"), || format!("{:?}", x.calls())).await;
    assert_eq!(x.count("shutdown:t1"), 2, "{:?}", x.calls());
    assert!(x.exists("t1"), "the container stays until the task is removed");
}

/// What a test holds of a runner: its reports, the token that removes its task, and the sender of its task's
/// updates (dropping it would end the runner's wait for them).
type HeldRunner = (mpsc::UnboundedReceiver<TaskStatusUpdate>, CancellationToken, watch::Sender<Task>);

/// Runs task `t1`, recorded in `state` and desired SHUTDOWN, on `x`.
fn shut_down_from(x: &Recording, state: TaskState) -> HeldRunner {
    let mut t = task("t1");
    t.status.state = state;
    t.desired_state = TaskState::Shutdown;
    let (tx, rx) = mpsc::unbounded_channel();
    let (updates_tx, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));
    (rx, cancel, updates_tx)
}

#[tokio::test]
async fn a_readopted_task_whose_record_predates_its_start_is_stopped_before_shutdown_is_reported() {
    // The daemon died after starting the container, before its STARTING report went out; meanwhile the manager
    // moved the slot elsewhere. The record says ASSIGNED, the container runs.
    let x = Recording::default();
    x.add("t1", ContainerState::Running { pid: 42 });
    let (mut rx, cancel, _updates) = shut_down_from(&x, TaskState::Assigned);
    report_in(&mut rx, TaskState::Shutdown).await;
    assert!(!running(&x, "t1"), "SHUTDOWN reported while the process runs: {:?}", x.calls());
    cancel.cancel();
}

#[tokio::test]
async fn a_stop_that_fails_is_retried_before_shutdown_is_reported() {
    let x = Recording::default();
    x.add("t1", ContainerState::Running { pid: 42 });
    x.rt().shutdown_failures = 2;
    let (mut rx, cancel, _updates) = shut_down_from(&x, TaskState::Running);
    report_in(&mut rx, TaskState::Shutdown).await;
    assert!(!running(&x, "t1"), "{:?}", x.calls());
    assert_eq!(x.count("shutdown:t1"), 3, "two failures, then the stop: {:?}", x.calls());
    cancel.cancel();
}

#[tokio::test]
async fn a_full_set_that_names_held_tasks_keeps_them_running_and_removes_the_rest() {
    let x = Recording::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);
    w.apply(complete(vec![task("t1"), task("t2")])).await;
    report_in(&mut rx, TaskState::Running).await;
    report_in(&mut rx, TaskState::Running).await;
    let mut held = w.held();
    held.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(held.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), vec!["t1", "t2"]);
    assert_eq!(held[0].digest, task("t1").assignment_digest(), "named with what it acts on");

    // A new leader's first message: t1 kept as it is, t3 new, t2 gone from the set.
    let msg = AssignmentsMessage { kept: vec!["t1".into()], ..complete(vec![task("t3")]) };
    w.apply(msg).await;
    report_in(&mut rx, TaskState::Running).await;
    until("t2 removed", || !x.exists("t2"), || format!("{:?}", x.calls())).await;
    assert!(running(&x, "t1") && running(&x, "t3"), "{:?}", x.calls());
    assert_eq!(x.count("start:t1"), 1, "a kept task is not started again: {:?}", x.calls());
    let mut ids: Vec<String> = w.held().into_iter().map(|h| h.id).collect();
    ids.sort();
    assert_eq!(ids, vec!["t1", "t3"]);
}

#[tokio::test]
async fn a_failed_removal_is_retried_until_it_succeeds() {
    let x = Recording::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);
    w.apply(complete(vec![task("t1")])).await;
    report_in(&mut rx, TaskState::Running).await;
    x.rt().remove_failures = 2;
    w.apply(removed("t1")).await;
    until("the container removed", || !x.exists("t1"), || format!("{:?}", x.calls())).await;
    assert_eq!(x.count("remove:t1"), 3, "two failures, then success: {:?}", x.calls());
}

#[tokio::test]
async fn a_prepare_in_flight_never_leaves_a_container_after_removal() {
    let gate = Arc::new(Semaphore::new(0));
    let x = Recording { prepare_gate: Some(gate.clone()), ..Default::default() };
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);
    w.apply(complete(vec![task("t1")])).await;
    until("prepare to begin", || x.count("prepare:t1") == 1, || format!("{:?}", x.calls())).await;

    // Removed while prepare is still on its way to creating the container.
    w.apply(removed("t1")).await;
    gate.add_permits(1);
    until(
        "the container created by the late prepare removed",
        || x.count("create:t1") == 1 && !x.exists("t1"),
        || format!("{:?}", x.calls()),
    )
    .await;
    let calls = x.calls();
    let pos = |c: &str| calls.iter().position(|x| x == c);
    assert!(pos("create:t1") < pos("remove:t1"), "removal after the create it raced: {calls:?}");

    // The removed task named again (a stale set) is not run again.
    gate.add_permits(10);
    w.apply(added(task("t1"))).await;
    tokio::task::yield_now().await;
    assert_eq!(x.count("prepare:t1"), 1, "a removed task is never prepared again: {:?}", x.calls());
    assert!(!x.exists("t1"));
}

#[tokio::test]
async fn orphan_sweep_runs_off_the_session_path_and_spares_tasks_assigned_meanwhile() {
    let gate = Arc::new(Semaphore::new(0));
    let x = Recording { list_gate: Some(gate.clone()), ..Default::default() };
    x.add("orphan1", ContainerState::Running { pid: 7 });
    x.add("orphan2", ContainerState::Exited { exit_code: 0 });
    x.rt().remove_failures = 1;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Worker::new(Arc::new(x.clone()), tx);

    // The listing hangs: applying the set must not wait for it.
    tokio::time::timeout(Duration::from_secs(1), w.apply(complete(vec![task("t1")])))
        .await
        .expect("apply returned while the orphan sweep is still listing containers");
    until("the sweep to list", || x.count("list:") == 1, || format!("{:?}", x.calls())).await;
    w.apply(added(task("t2"))).await;
    report_in(&mut rx, TaskState::Running).await;
    until("t2's container", || x.exists("t2"), || format!("{:?}", x.calls())).await;

    gate.add_permits(1);
    until(
        "both orphans removed (one after a retry)",
        || !x.exists("orphan1") && !x.exists("orphan2"),
        || format!("{:?}", x.calls()),
    )
    .await;
    assert!(x.exists("t1") && x.exists("t2"), "assigned tasks keep their containers: {:?}", x.calls());
    assert!(x.calls().iter().all(|c| c != "remove_task:t1" && c != "remove_task:t2"), "{:?}", x.calls());
    w.stop();
}

/// A task whose spec has a health check, and the TestExecutor to run it on.
fn health_checked(id: &str) -> (crate::testing::TestExecutor, Task) {
    let mut t = task(id);
    t.spec_mut().container.image = "busybox:checked".into();
    t.spec_mut().container.healthcheck =
        Some(crate::api::HealthConfig { test: vec!["CMD".into(), "true".into()], ..Default::default() });
    (crate::testing::TestExecutor::new("n1"), t)
}

fn health_of(u: &TaskStatusUpdate) -> Option<crate::api::Health> {
    u.status.container.as_ref().and_then(|c| c.health)
}

#[tokio::test]
async fn a_health_checked_task_is_running_only_once_healthy() {
    use crate::api::Health;
    let (x, t) = health_checked("t1");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_updates, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));

    // STARTING with the process running and health "starting": the runner now waits for a verdict.
    let u = report_in(&mut rx, TaskState::Starting).await;
    assert_eq!(health_of(&u), None, "the first STARTING is before the process runs: {u:?}");
    let u = report_in(&mut rx, TaskState::Starting).await;
    assert_eq!(health_of(&u), Some(Health::Starting), "{u:?}");
    assert_eq!(x.running(), vec!["t1".to_string()], "the process runs while the task is STARTING");
    assert!(rx.try_recv().is_err(), "nothing more before a check passed");

    assert!(x.set_health("t1", Health::Healthy));
    let u = report_in(&mut rx, TaskState::Running).await;
    assert_eq!(health_of(&u), Some(Health::Healthy));
    assert_eq!(u.status.container.as_ref().map(|c| c.pid), Some(1));

    // Unhealthy after RUNNING: FAILED, with the check's output, and the process stopped.
    assert!(x.set_health("t1", Health::Unhealthy));
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert_eq!(health_of(&u), Some(Health::Unhealthy));
    assert_eq!(u.status.err, format!("{UNHEALTHY} (exit 1: fake check failed)"));
    assert_eq!(u.status.message, "unhealthy container");
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert_eq!(u.status.container.as_ref().and_then(|c| c.exit_code), Some(143), "stopped: {u:?}");
    assert!(x.running().is_empty(), "the unhealthy task's process is stopped");
    cancel.cancel();
}

#[tokio::test]
async fn a_never_healthy_task_fails_without_ever_running_and_one_without_a_check_runs_at_once() {
    use crate::api::Health;
    let (x, t) = health_checked("t1");
    x.image_health(&t.spec.container.image, Health::Unhealthy);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_updates, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));
    let mut states = Vec::new();
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let u = rx.recv().await.expect("reports");
            states.push(u.status.state);
            if u.status.state == TaskState::Failed {
                return u;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no FAILED within 5s; saw {states:?}"));
    assert!(!states.contains(&TaskState::Running), "never RUNNING: {states:?}");
    assert!(failed.status.err.starts_with(UNHEALTHY), "{failed:?}");
    until("the process stopped", || x.running().is_empty(), || format!("{:?}", x.running())).await;
    cancel.cancel();

    // `--no-healthcheck` on the same image: no gating.
    let (_, mut t2) = health_checked("t2");
    t2.spec_mut().container.healthcheck =
        Some(crate::api::HealthConfig { test: vec!["NONE".into()], ..Default::default() });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_updates2, updates) = watch::channel(t2.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t2).unwrap(), t2, updates, tx, cancel.clone()));
    let u = report_in(&mut rx, TaskState::Running).await;
    assert_eq!(health_of(&u), None);
    cancel.cancel();
}

#[tokio::test]
async fn a_readopted_running_task_keeps_running_and_its_checks_still_fail_it() {
    use crate::api::Health;
    let (x, mut t) = health_checked("t1");
    x.controller(&t).unwrap().prepare().await.unwrap();
    x.controller(&t).unwrap().start().await.unwrap();
    t.status.state = TaskState::Running;
    t.status.container = Some(crate::api::ContainerStatus {
        container_id: "t1".into(),
        pid: 1,
        exit_code: None,
        health: Some(Health::Healthy),
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_updates, updates) = watch::channel(t.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(run_task(x.controller(&t).unwrap(), t, updates, tx, cancel.clone()));
    // The new checks start "starting": the task stays RUNNING, so nothing is reported.
    until("the checks to start again", || x.set_health("t1", Health::Starting), || "no checks".into()).await;
    assert!(rx.try_recv().is_err(), "no report while the re-adopted task is still healthy as far as known");
    assert!(x.set_health("t1", Health::Unhealthy));
    let u = report_in(&mut rx, TaskState::Failed).await;
    assert!(u.status.err.starts_with(UNHEALTHY), "{u:?}");
    cancel.cancel();
}

/// A node holds one runner per task, idle nearly all its life: its future must not carry copies of the task
/// (it was 6.7 KiB with two, 1.5 KiB without, in a debug build; two copies would still add about 1.4 KiB now
/// that a task's spec is shared).
#[tokio::test]
async fn an_idle_runner_stays_small() {
    use crate::agent::exec::Executor as _;
    let x = crate::testing::TestExecutor::new("h");
    let t = task("t1");
    let (tx, _rx) = mpsc::unbounded_channel();
    let (_u, updates) = watch::channel(t.clone());
    let f = run_task(x.controller(&t).unwrap(), t, updates, tx, CancellationToken::new());
    let size = std::mem::size_of_val(&f);
    assert!(size < 2048, "a runner's future takes {size} bytes (a task is {})", std::mem::size_of::<Task>());
}
