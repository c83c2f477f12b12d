//! Jobs, in one process: `SwarmNode`s with `TestExecutor`s whose containers exit on their own (an `ExitScript`),
//! driven through the control API as `shoal service create --mode replicated-job|global-job` drives it. Stories:
//! a replicated job of 6 completions, at most 2 at once, runs exactly 6 tasks to completion and then nothing more;
//! a job whose tasks each fail once is retried under on-failure and still ends with exactly 6 successes; a
//! changed job spec runs the job again; a global job on 3 nodes completes once per node, and a node joining later
//! gets no task of it; a job survives a leader change (the new leader goes on from the completions in the store,
//! refilling any slot whose task was on the stopped leader's node).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use swarm::api::control::*;
use swarm::api::membership::SwarmJoinRequest;
use swarm::api::{NodeAvailability, NodeState, RestartCondition, ServiceMode, ServiceSpec, Task, TaskState};
use swarm::node::SwarmNode;
use swarm::testing::{ExitScript, TestExecutor};
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

const JOB_IMAGE: &str = "docker.io/library/job:latest";

fn job_spec(name: &str, mode: ServiceMode) -> ServiceSpec {
    let mut s = swarm::testing::service("unused", name, 0).spec;
    s.mode = mode;
    s.task_template.container.image = JOB_IMAGE.into();
    s.task_template.restart_policy.delay = Duration::ZERO;
    s
}

/// The tasks of `service_id`, from `node`'s store.
fn tasks_of(node: &SwarmNode<TestExecutor>, service_id: &str) -> Vec<Task> {
    node.store().unwrap().view(|v| v.tasks_by_service(service_id).cloned().collect())
}

/// Tasks meant to run and not ended: what a concurrency limit bounds.
fn unfinished(tasks: &[Task]) -> usize {
    tasks.iter().filter(|t| t.desired_state <= TaskState::Running && !t.status.state.is_terminal()).count()
}

fn completed(tasks: &[Task]) -> Vec<&Task> {
    tasks.iter().filter(|t| t.status.state == TaskState::Complete).collect()
}

/// A one-manager swarm whose node is ready.
async fn manager(dir: &Path, exec: &TestExecutor) -> (SwarmNode<TestExecutor>, String) {
    let (node, addr) = init(dir, exec, None).await;
    let id = node.info().await.node_id;
    wait_for("the manager's node to be ready", || node_ready(&node, &id)).await;
    (node, addr)
}

fn node_ready(mgr: &SwarmNode<TestExecutor>, node_id: &str) -> Result<(), String> {
    let state = mgr.store().ok_or("no store yet")?.view(|v| v.node(node_id).map(|n| n.status.state));
    if state == Some(NodeState::Ready) {
        Ok(())
    } else {
        Err(format!("node {node_id} is {state:?}"))
    }
}

/// A worker that joins `mgr`'s swarm at `addr` and is ready.
async fn join_worker(
    dir: &Path,
    exec: &TestExecutor,
    mgr: &SwarmNode<TestExecutor>,
    addr: &str,
) -> (SwarmNode<TestExecutor>, String) {
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(dir, exec);
    let id = worker
        .join(SwarmJoinRequest {
            remote_addr: addr.into(),
            join_token: token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect("the worker joins");
    wait_for("the worker to be ready", || node_ready(mgr, &id)).await;
    (worker, id)
}

/// Creates a plain replicated service and waits until its task runs: the orchestrators have made passes since.
async fn run_a_bystander(mgr: &SwarmNode<TestExecutor>, name: &str, mode: ServiceMode, tasks: usize) {
    let mut spec = swarm::testing::service("unused", name, 0).spec;
    spec.mode = mode;
    let svc = mgr.control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap();
    let id = svc.into_inner().id;
    wait_for(&format!("{tasks} running task(s) of {name}"), || {
        let running = tasks_of(mgr, &id).iter().filter(|t| t.status.state == TaskState::Running).count();
        if running == tasks {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await;
}

/// Waits until `n` tasks of the job completed, sampling throughout how many were unfinished in the store and how
/// many ran in the executor at once. Returns the most of each seen.
async fn sample_until_complete(
    mgr: &SwarmNode<TestExecutor>,
    exec: &TestExecutor,
    service_id: &str,
    n: usize,
) -> (usize, usize) {
    let start = Instant::now();
    let (mut most_unfinished, mut most_running) = (0, 0);
    loop {
        let ts = tasks_of(mgr, service_id);
        let ids: BTreeSet<&str> = ts.iter().map(|t| t.id.as_str()).collect();
        most_unfinished = most_unfinished.max(unfinished(&ts));
        most_running = most_running.max(exec.running().iter().filter(|id| ids.contains(id.as_str())).count());
        if completed(&ts).len() >= n {
            return (most_unfinished, most_running);
        }
        if start.elapsed() > DEADLINE {
            let states: Vec<(u64, TaskState, TaskState)> =
                ts.iter().map(|t| (t.slot, t.desired_state, t.status.state)).collect();
            panic!("timed out after {DEADLINE:?} waiting for {n} complete tasks; (slot, desired, state): {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_job_runs_exactly_its_completions_at_most_max_concurrent_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-a");
    exec.script(JOB_IMAGE, ExitScript { run_for: Duration::from_millis(150), failures_per_slot: 0 });
    let (mgr, _) = manager(dir.path(), &exec).await;
    let api = mgr.control_api();

    step("a replicated job: 6 completions, at most 2 at once, the default restart condition (any)");
    let spec = job_spec("batch", ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 });
    assert_eq!(spec.task_template.restart_policy.condition, RestartCondition::Any);
    let job = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let (most_unfinished, most_running) = sample_until_complete(&mgr, &exec, &job.id, 6).await;
    assert_eq!(most_unfinished, 2, "never more than 2 unfinished tasks in the store, and 2 were");
    assert_eq!(most_running, 2, "never more than 2 containers at once, and 2 were");

    step("then nothing more runs: the orchestrators pass again (a bystander service starts), the job stays done");
    run_a_bystander(&mgr, "bystander", ServiceMode::Replicated { replicas: 1 }, 1).await;
    wait_for("the job's 6 completed tasks to be marked desired COMPLETE", || {
        let ts = tasks_of(&mgr, &job.id);
        let marked = ts.iter().filter(|t| t.desired_state == TaskState::Complete).count();
        if marked == 6 {
            Ok(())
        } else {
            Err(format!("{marked} marked"))
        }
    })
    .await;
    let ts = tasks_of(&mgr, &job.id);
    assert_eq!(ts.len(), 6, "exactly 6 tasks, none restarted: {ts:?}");
    let slots: BTreeSet<u64> = ts.iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=6).collect(), "one task per slot 1..=6");
    assert!(ts.iter().all(|t| t.status.state == TaskState::Complete && t.job_iteration == Some(job.spec_version)));
    assert!(exec.running().iter().all(|id| !ts.iter().any(|t| &t.id == id)), "no job container runs");
    let listed = api.list_services(Request::new(ListServicesRequest::default())).await.unwrap().into_inner();
    let row = listed.services.iter().find(|s| s.service.id == job.id).unwrap();
    assert_eq!((row.running_tasks, row.desired_tasks), (0, 2), "service ls: 0/2 (Docker: the concurrency limit)");

    step("a changed spec (service update --force) runs the job again, as a new iteration");
    let cur = api.get_service(Request::new(GetRequest { id_or_name: job.id.clone() })).await.unwrap().into_inner();
    let mut spec = cur.spec.clone();
    spec.task_template.force_update += 1;
    let updated = api
        .update_service(Request::new(UpdateServiceRequest {
            id: job.id.clone(),
            version: cur.meta.version,
            spec,
            rollback: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec_version, cur.spec_version + 1);
    let (most_unfinished, _) = sample_until_complete(&mgr, &exec, &job.id, 12).await;
    assert!(most_unfinished <= 2, "the second run is bounded too: {most_unfinished}");
    let ts = tasks_of(&mgr, &job.id);
    let per_run: BTreeMap<Option<u64>, usize> = completed(&ts).iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t.job_iteration).or_default() += 1;
        m
    });
    assert_eq!(per_run, BTreeMap::from([(Some(cur.spec_version), 6), (Some(updated.spec_version), 6)]));
    mgr.leave(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_tasks_fail_once_is_retried_on_failure_and_ends_with_exactly_its_completions() {
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-a");
    exec.script(JOB_IMAGE, ExitScript { run_for: Duration::from_millis(100), failures_per_slot: 1 });
    let (mgr, _) = manager(dir.path(), &exec).await;
    let api = mgr.control_api();

    step("a replicated job of 6 completions, 2 at once, restart on-failure; each slot's first attempt exits 1");
    let mut spec = job_spec("flaky", ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 });
    spec.task_template.restart_policy.condition = RestartCondition::OnFailure;
    let job = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let (most_unfinished, most_running) = sample_until_complete(&mgr, &exec, &job.id, 6).await;
    assert!(
        most_unfinished <= 2 && most_running <= 2,
        "retries stay within the limit: {most_unfinished}, {most_running}"
    );

    step("then the job stays done: exactly 6 successes and one failure per slot");
    run_a_bystander(&mgr, "bystander", ServiceMode::Replicated { replicas: 1 }, 1).await;
    let ts = tasks_of(&mgr, &job.id);
    let mut per_slot: BTreeMap<u64, Vec<TaskState>> = BTreeMap::new();
    for t in &ts {
        per_slot.entry(t.slot).or_default().push(t.status.state);
    }
    per_slot.values_mut().for_each(|v| v.sort());
    let want: BTreeMap<u64, Vec<TaskState>> =
        (1..=6).map(|slot| (slot, vec![TaskState::Complete, TaskState::Failed])).collect();
    assert_eq!(per_slot, want, "each slot: its failed attempt, then its completion");
    assert!(ts
        .iter()
        .filter(|t| t.status.state == TaskState::Failed)
        .all(|t| t.desired_state == TaskState::Shutdown && t.status.err == "task: non-zero exit (1)"));
    mgr.leave(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_job_completes_once_per_node_and_skips_nodes_that_join_later() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<TestExecutor> = (0..4).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    for e in &execs {
        e.script(JOB_IMAGE, ExitScript { run_for: Duration::from_millis(100), failures_per_slot: 0 });
    }
    let (mgr, addr) = manager(dirs[0].path(), &execs[0]).await;
    let mgr_id = mgr.info().await.node_id;
    let (w1, w1_id) = join_worker(dirs[1].path(), &execs[1], &mgr, &addr).await;
    let (w2, w2_id) = join_worker(dirs[2].path(), &execs[2], &mgr, &addr).await;
    let api = mgr.control_api();

    step("a global job on 3 nodes: one task runs to completion on each");
    let job = api
        .create_service(Request::new(CreateServiceRequest { spec: job_spec("setup", ServiceMode::GlobalJob) }))
        .await
        .unwrap()
        .into_inner();
    wait_for("3 complete tasks, one per node", || {
        let ts = tasks_of(&mgr, &job.id);
        let on: BTreeSet<String> = completed(&ts).iter().map(|t| t.node_id.clone()).collect();
        if on == BTreeSet::from([mgr_id.clone(), w1_id.clone(), w2_id.clone()]) && ts.len() == 3 {
            Ok(())
        } else {
            Err(format!("{} tasks; complete on {on:?}", ts.len()))
        }
    })
    .await;
    for (e, id) in execs.iter().zip([&mgr_id, &w1_id, &w2_id]) {
        assert!(e.known() >= 1, "node {id} ran its task");
    }

    step("a node joining afterwards gets no task of the job (SwarmKit), though a global service reaches it");
    let (w3, w3_id) = join_worker(dirs[3].path(), &execs[3], &mgr, &addr).await;
    run_a_bystander(&mgr, "agent", ServiceMode::Global, 4).await;
    let ts = tasks_of(&mgr, &job.id);
    assert_eq!(ts.len(), 3, "no task for the late node {w3_id}: {ts:?}");
    assert!(ts.iter().all(|t| t.status.state == TaskState::Complete && t.desired_state == TaskState::Complete));
    let listed = api.list_services(Request::new(ListServicesRequest::default())).await.unwrap().into_inner();
    let row = listed.services.iter().find(|s| s.service.id == job.id).unwrap();
    assert_eq!((row.running_tasks, row.desired_tasks), (0, 0), "service ls: nothing left to run");

    for w in [w1, w2, w3] {
        w.shutdown().await;
    }
    mgr.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_job_goes_on_after_a_leader_change_and_ends_with_exactly_its_completions() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<TestExecutor> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    for e in &execs {
        e.script(JOB_IMAGE, ExitScript { run_for: Duration::from_millis(300), failures_per_slot: 0 });
    }
    step("three managers: m0 inits, m1 and m2 join with the manager token");
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let token = manager_token(&m0);
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &token).await;
    let m2 = join_manager(dirs[2].path(), &execs[2], &addr0, &token).await;
    let mut managers = vec![m0, m1, m2];
    let ids: Vec<String> = node_ids(&managers).await;
    for id in &ids {
        wait_for("every manager's node ready", || node_ready(&managers[0], id)).await;
    }

    step("a replicated job of 8 completions, 2 at once; once 2 are in, the leader stops");
    let spec = job_spec("batch", ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 8 });
    let job = managers[0].control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap();
    let job = job.into_inner();
    wait_for("2 completions", || {
        let n = completed(&tasks_of(&managers[0], &job.id)).len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} complete"))
        }
    })
    .await;
    let leader = leader_index(&managers).await;
    let stopped = managers.remove(leader);
    stopped.shutdown().await;
    drop(stopped);

    step("a new leader goes on: the job ends with exactly one completion in each of its 8 slots");
    let new_leader = leader_index(&managers).await;
    let mgr = &managers[new_leader];
    wait_for("8 completed slots", || {
        let ts = tasks_of(mgr, &job.id);
        let slots: BTreeSet<u64> = completed(&ts).iter().map(|t| t.slot).collect();
        if slots.len() == 8 {
            Ok(())
        } else {
            Err(format!("completed slots {slots:?}"))
        }
    })
    .await;
    let ts = tasks_of(mgr, &job.id);
    let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for t in completed(&ts) {
        *per_slot.entry(t.slot).or_default() += 1;
    }
    assert_eq!(per_slot, (1..=8).map(|slot| (slot, 1)).collect(), "exactly one completion per slot");
    assert_eq!(unfinished(&ts), 0, "nothing left to run: {ts:?}");
    for m in managers {
        m.shutdown().await;
    }
}

/// The node ids of `managers`.
async fn node_ids(managers: &[SwarmNode<TestExecutor>]) -> Vec<String> {
    let mut ids = Vec::new();
    for m in managers {
        ids.push(m.info().await.node_id);
    }
    ids
}

/// The index of the one manager that leads, if exactly one does.
async fn leader_of(managers: &[SwarmNode<TestExecutor>]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, m) in managers.iter().enumerate() {
        if m.raft().await.is_some_and(|r| r.is_leader()) {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

async fn leader_index(managers: &[SwarmNode<TestExecutor>]) -> usize {
    let start = Instant::now();
    loop {
        if let Some(i) = leader_of(managers).await {
            return i;
        }
        assert!(start.elapsed() < DEADLINE, "no single leader among {} managers", managers.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
