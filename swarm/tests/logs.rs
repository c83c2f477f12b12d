//! `service logs` across nodes, in one process: a manager and a worker `SwarmNode` with `TestExecutor`s fed log
//! lines. The manager's control API gathers a service's lines from both nodes: merged by time, prefixed with
//! `name.slot.task@host`, `--tail` per task, `--follow` receiving new lines from the other node, one task by id,
//! and a warning naming a node that is down while the other node's lines still come. A follower manager forwards
//! the subscription to the leader.

use std::path::Path;
use std::time::{Duration, SystemTime};
use swarm::api::control::*;
use swarm::api::logs::{LogMessage, LogStream, LogsOptions, SubscribeLogsMessage, SubscribeLogsRequest};
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::{NodeAvailability, NodeState, TaskState};
use swarm::node::SwarmNode;
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tokio_stream::StreamExt;
use tonic::Request;

mod common;
use common::*;

async fn manager(dir: &Path, exec: &TestExecutor) -> (SwarmNode<TestExecutor>, String) {
    let node = new_node(dir, exec);
    node.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.unwrap();
    let addr = node.info().await.remote_managers[0].clone();
    (node, addr)
}

/// A fixed time `secs` seconds into 2026, so lines of both nodes interleave in a known order.
fn at(secs: u64) -> SystemTime {
    humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap() + Duration::from_secs(secs)
}

type Stream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SubscribeLogsMessage, tonic::Status>> + Send>>;

async fn subscribe(node: &SwarmNode<TestExecutor>, selector: &str, options: LogsOptions) -> Stream {
    let req = SubscribeLogsRequest { selector: selector.into(), options };
    node.control_api().subscribe_logs(Request::new(req)).await.expect("subscribe").into_inner()
}

/// Everything a non-following subscription yields: (lines, warnings). Fails if it does not end within 30s.
async fn read_all(mut s: Stream) -> (Vec<LogMessage>, Vec<String>) {
    let (mut lines, mut warnings) = (Vec::new(), Vec::new());
    let all = async {
        while let Some(m) = s.next().await {
            let m = m.expect("a stream error");
            lines.extend(m.messages);
            warnings.extend(m.warnings);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all).await.expect("the logs stream to end within 30s");
    (lines, warnings)
}

/// The next line a following subscription yields, within 30s.
async fn next_line(s: &mut Stream) -> LogMessage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, s.next()).await.expect("a line within 30s");
        let m = m.expect("the stream ended").expect("a stream error");
        if let Some(l) = m.messages.into_iter().next() {
            return l;
        }
    }
}

fn texts(lines: &[LogMessage]) -> Vec<&str> {
    lines.iter().map(|l| l.line.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_gather_both_nodes_lines() {
    let (mdir, wdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mexec, wexec) = (TestExecutor::new("host-m"), TestExecutor::new("host-w"));
    let (mgr, addr) = manager(mdir.path(), &mexec).await;
    let manager_id = mgr.info().await.node_id;
    let token = mgr.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.worker.clone());
    let worker = new_node(wdir.path(), &wexec);
    let worker_id = worker
        .join(SwarmJoinRequest {
            remote_addr: addr.clone(),
            join_token: token,
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: String::new(),
            availability: NodeAvailability::Active,
        })
        .await
        .expect("the worker joins");

    step("a 2-replica service runs one task on each node");
    let mut spec = swarm::testing::service("unused", "web", 2).spec;
    spec.task_template.restart_policy.delay = Duration::ZERO;
    let svc = mgr.control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    let (mtask, wtask) = wait_for("one running task on each node", || {
        let running = |node: &str| {
            mgr.store().unwrap().view(|v| {
                v.tasks_by_service(&svc.id)
                    .find(|t| t.node_id == node && t.status.state == TaskState::Running)
                    .map(|t| (t.id.clone(), t.slot))
            })
        };
        match (running(&manager_id), running(&worker_id)) {
            (Some(m), Some(w)) if mexec.running().contains(&m.0) && wexec.running().contains(&w.0) => Ok((m, w)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    mexec.feed_log_at(&mtask.0, at(1), LogStream::Stdout, "m1");
    wexec.feed_log_at(&wtask.0, at(2), LogStream::Stderr, "w2");
    mexec.feed_log_at(&mtask.0, at(3), LogStream::Stdout, "m3");
    wexec.feed_log_at(&wtask.0, at(4), LogStream::Stdout, "w4");

    step("service logs: both nodes' lines, by time, prefixed");
    let (lines, warnings) = read_all(subscribe(&mgr, "web", LogsOptions::default()).await).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(texts(&lines), ["m1", "w2", "m3", "w4"]);
    assert_eq!(lines[0].context, format!("web.{}.{}@host-m", mtask.1, mtask.0));
    assert_eq!(lines[1].context, format!("web.{}.{}@host-w", wtask.1, wtask.0));
    assert_eq!((lines[1].stream, lines[1].node_id.as_str()), (LogStream::Stderr, worker_id.as_str()));
    assert_eq!(lines[0].time, "2026-01-01T00:00:01.000000000Z");

    step("--tail 1: the last line of each task; --since; one task by id");
    let tail = LogsOptions { tail: Some(1), ..Default::default() };
    let (lines, _) = read_all(subscribe(&mgr, &svc.id, tail).await).await;
    assert_eq!(texts(&lines), ["m3", "w4"]);
    let since = LogsOptions { since: Some("2026-01-01T00:00:03Z".into()), ..Default::default() };
    let (lines, _) = read_all(subscribe(&mgr, "web", since).await).await;
    assert_eq!(texts(&lines), ["m3", "w4"], "--since keeps lines at or after it");
    let (lines, _) = read_all(subscribe(&mgr, &wtask.0[..12], LogsOptions::default()).await).await;
    assert_eq!(texts(&lines), ["w2", "w4"], "a task id selects that task only");
    let e = mgr
        .control_api()
        .subscribe_logs(Request::new(SubscribeLogsRequest { selector: "nope".into(), options: Default::default() }))
        .await
        .err()
        .expect("an unknown selector is refused");
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no such task or service: nope"));

    step("--follow: the existing lines, then new lines from either node as they are written");
    let follow = LogsOptions { follow: true, tail: Some(1), ..Default::default() };
    let mut s = subscribe(&mgr, "web", follow).await;
    let mut first = vec![next_line(&mut s).await.line, next_line(&mut s).await.line];
    first.sort();
    assert_eq!(first, ["m3", "w4"]);
    wexec.feed_log(&wtask.0, LogStream::Stdout, "w-new");
    let l = next_line(&mut s).await;
    assert_eq!((l.line.as_str(), l.context.ends_with("@host-w")), ("w-new", true));
    mexec.feed_log(&mtask.0, LogStream::Stdout, "m-new");
    assert_eq!(next_line(&mut s).await.line, "m-new");
    drop(s);

    step("the worker is down: its node is named in a warning, the manager's lines still come");
    worker.shutdown().await;
    wait_for("the worker DOWN", || {
        let st = mgr.store().unwrap().view(|v| v.node(&worker_id).map(|n| n.status.state));
        if st == Some(NodeState::Down) {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    let (lines, warnings) = read_all(subscribe(&mgr, "web", LogsOptions::default()).await).await;
    assert_eq!(warnings, ["node host-w is down: the logs of its tasks cannot be retrieved"]);
    let mine: Vec<&str> = lines.iter().filter(|l| l.task_id == mtask.0).map(|l| l.line.as_str()).collect();
    assert_eq!(mine, ["m1", "m3", "m-new"]);
    assert!(lines.iter().all(|l| l.node_id == manager_id), "only the manager answered: {lines:?}");
    mgr.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_manager_forwards_service_logs_to_the_leader() {
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (aexec, bexec) = (TestExecutor::new("host-a"), TestExecutor::new("host-b"));
    let (a, addr) = manager(adir.path(), &aexec).await;
    let token = a.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.manager.clone());
    let b = new_node(bdir.path(), &bexec);
    b.join(SwarmJoinRequest {
        remote_addr: addr.clone(),
        join_token: token,
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: "127.0.0.1".into(),
        availability: NodeAvailability::Active,
    })
    .await
    .expect("the second manager joins");
    assert!(a.raft().await.is_some_and(|r| r.is_leader()), "the first manager leads");
    assert!(b.raft().await.is_some_and(|r| !r.is_leader()), "the second manager follows");

    step("a 2-replica service runs one task on each manager");
    let mut spec = swarm::testing::service("unused", "api", 2).spec;
    spec.task_template.restart_policy.delay = Duration::ZERO;
    a.control_api().create_service(Request::new(CreateServiceRequest { spec })).await.unwrap();
    let (ta, tb) =
        wait_for("a running task in each executor", || match (aexec.running().pop(), bexec.running().pop()) {
            (Some(x), Some(y)) => Ok((x, y)),
            other => Err(format!("{other:?}")),
        })
        .await;
    aexec.feed_log_at(&ta, at(1), LogStream::Stdout, "from a");
    bexec.feed_log_at(&tb, at(2), LogStream::Stdout, "from b");

    step("service logs on the follower: forwarded to the leader, both nodes' lines");
    // The follower learns the leader's address from Raft; until then it refuses, naming no leader.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let stream = loop {
        let req = SubscribeLogsRequest { selector: "api".into(), options: LogsOptions::default() };
        match b.control_api().subscribe_logs(Request::new(req)).await {
            Ok(s) => break s.into_inner(),
            Err(e) if tokio::time::Instant::now() < deadline => eprintln!("not yet: {}", e.message()),
            Err(e) => panic!("the follower never forwarded the subscription: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (lines, warnings) = read_all(stream).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(texts(&lines), ["from a", "from b"]);
    assert!(lines[1].context.ends_with(&format!(".{tb}@host-b")), "{:?}", lines[1].context);
    let e = b
        .control_api()
        .subscribe_logs(Request::new(SubscribeLogsRequest { selector: "nope".into(), options: Default::default() }))
        .await
        .err()
        .expect("the leader's refusal reaches the follower's caller");
    assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no such task or service: nope"));
    b.shutdown().await;
    a.shutdown().await;
}
