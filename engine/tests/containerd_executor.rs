//! The containerd side of the engine against a real containerd (a private one per test, see `common/`): real
//! tasks run through the `Executor`/`Controller` traits the agent uses.
//!
//! Needs root, containerd, runc and busybox-static; a missing piece fails the test with a message saying so
//! (nothing is skipped). Run: `cargo test -p shoal-engine --test containerd_executor`.

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{DeleteTaskRequest, KillRequest, WaitRequest};
use engine::containerd::{req, ManagedContainerd};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swarm::agent::exec::{ContainerState, Controller, ExecError, Executor};
use swarm::api::{LogDriver, Mount, MountType, Task};

#[macro_use]
mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_with_labels_logs_limits_and_survives_readoption() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("describe reports this node");
    let d = exec.describe().await.expect("describe");
    assert!(!d.hostname.is_empty());
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(d.resources.nano_cpus, cpus * 1_000_000_000);
    assert!(d.resources.memory_bytes > 64 << 20, "memory from /proc/meminfo: {}", d.resources.memory_bytes);
    assert_eq!(d.platform, swarm::api::Platform::current());
    assert_eq!(d.engine.labels.get("zone").map(String::as_str), Some("test"));
    assert!(!d.engine.engine_version.is_empty());

    step!("run a task that writes to stdout and stderr, with a memory limit and a container label");
    let mut t = task(&["sh", "-c", "echo hello; echo oops >&2; while true; do echo tick; sleep 0.1; done"]);
    t.spec_mut().resources.limits.memory_bytes = 64 << 20;
    t.spec_mut().container.labels.insert("com.example.team".into(), "blue".into());
    let (c, pid) = run(&exec, &t).await;
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Running { pid }));

    step!("the container exists in namespace shoal with the swarm labels");
    let ctr = env.container(&t.id).await.expect("container exists in namespace shoal");
    let labels = &ctr.labels;
    for (k, v) in [
        ("com.docker.swarm.task.id", t.id.clone()),
        ("com.docker.swarm.task.name", t.container_name()),
        ("com.docker.swarm.service.id", t.service_id.clone()),
        ("com.docker.swarm.service.name", t.service_annotations.name.clone()),
        ("com.docker.swarm.node.id", t.node_id.clone()),
        ("com.example.team", "blue".to_string()),
    ] {
        assert_eq!(labels.get(k), Some(&v), "label {k} on {labels:?}");
    }
    assert_eq!(ctr.snapshotter, "overlayfs");
    assert_eq!(ctr.snapshot_key, t.id);
    assert_eq!(ctr.runtime.as_ref().map(|r| r.name.as_str()), Some("io.containerd.runc.v2"));
    assert_eq!(env.task_ids().await, vec![t.id.clone()]);

    step!("the memory limit is in the spec and in the task's cgroup");
    let spec: Value = serde_json::from_slice(&ctr.spec.expect("spec").value).expect("spec json");
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(spec["linux"]["cgroupsPath"], format!("/shoal/{}", t.id));
    assert_eq!(spec["hostname"], &t.id[..12]);
    let cg = PathBuf::from(format!("/sys/fs/cgroup/memory/shoal/{}/memory.limit_in_bytes", t.id));
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let limit = std::fs::read_to_string(&cg).unwrap_or_else(|e| panic!("{}: {e}", cg.display()));
        assert_eq!(limit.trim(), (64u64 << 20).to_string(), "cgroup v1 memory limit");
    } else {
        let f = format!("/sys/fs/cgroup/shoal/{}/memory.max", t.id);
        assert_eq!(std::fs::read_to_string(&f).expect("memory.max").trim(), (64u64 << 20).to_string());
    }

    step!("both lines reach the json-file log with their stream");
    let log = env.log_path(&t.id);
    let recs = wait_for("hello and oops in the task log", Duration::from_secs(10), || async {
        let recs = log_records(&log);
        if has_record(&recs, "hello\n", "stdout") && has_record(&recs, "oops\n", "stderr") {
            Ok(recs)
        } else {
            Err(format!("{recs:?}"))
        }
    })
    .await;
    for r in &recs {
        let time = r["time"].as_str().expect("time");
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("time {time:?} is not RFC 3339: {e}"));
        assert_eq!(time.len(), "2026-01-01T00:00:00.000000000Z".len(), "nanosecond precision: {time}");
    }
    let mut rx = engine::logs::stream(vec![log.clone()], engine::logs::LogOptions { follow: false, tail: None }, None);
    let mut read = Vec::new();
    while let Some(l) = rx.recv().await {
        read.push((l.stream, l.line));
    }
    assert!(read.contains(&("stdout".into(), "hello".into())) && read.contains(&("stderr".into(), "oops".into())));

    step!("a second task that exits 3 is listed until removed");
    let t2 = task(&["sh", "-c", "exit 3"]);
    let (c2, _) = run(&exec, &t2).await;
    assert_eq!(c2.wait().await.expect("wait").exit_code, 3);
    assert_eq!(c2.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 3 }));
    let mut want = vec![t.id.clone(), t2.id.clone()];
    want.sort();
    let mut listed = exec.list_tasks().await.unwrap();
    listed.sort();
    assert_eq!(listed, want);
    c2.remove().await.expect("remove");
    c2.remove().await.expect("remove is idempotent");
    assert!(env.container(&t2.id).await.is_none(), "container gone");
    assert!(!env.task_ids().await.contains(&t2.id), "task gone");
    assert!(!env.snapshot_exists(&t2.id).await, "snapshot gone");
    assert_eq!(exec.list_tasks().await.unwrap(), vec![t.id.clone()]);
    assert_eq!(c2.inspect().await.unwrap(), None);

    step!("re-adoption: a new executor finds the task running");
    drop(c);
    drop(exec);
    let exec = env.executor();
    let c = exec.controller(&t).unwrap();
    c.prepare().await.expect("prepare on an existing container is a no-op");
    assert_eq!(c.start().await.expect("start on a running task is a no-op"), pid);
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Running { pid }));
    let waiter = {
        let c = exec.controller(&t).unwrap();
        tokio::spawn(async move { c.wait().await })
    };

    step!("containerd is SIGKILLed: the supervisor restarts it, the task and its logger keep running");
    let ticks = || log_records(&log).iter().filter(|r| r["log"] == "tick\n").count();
    let old = env.managed.as_ref().unwrap().pid().expect("containerd pid");
    let before = ticks();
    unsafe { libc::kill(old, libc::SIGKILL) };
    // The logger is the shim's child, not containerd's: it goes on writing while containerd is down or restarting.
    wait_for("the logger to keep writing after containerd was killed", Duration::from_secs(10), || async {
        let during = ticks();
        if during > before {
            Ok(())
        } else {
            Err(format!("{before} → {during} ticks"))
        }
    })
    .await;
    let new = wait_for("containerd restarted by the supervisor", Duration::from_secs(30), || async {
        match env.managed.as_ref().unwrap().pid() {
            Some(p) if p != old => Ok(p),
            other => Err(format!("pid {other:?}")),
        }
    })
    .await;
    step!("containerd pid {old} → {new}");
    wait_for("the task running again through the new containerd", Duration::from_secs(20), || async {
        match c.inspect().await {
            Ok(Some(ContainerState::Running { pid: p })) if p == pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The agent's wait must not end (and fail the task) because containerd restarted under it.
    assert!(!waiter.is_finished(), "wait ended across the containerd restart: {:?}", waiter.await);

    step!("shutdown: sh as PID 1 ignores SIGTERM, so SIGKILL after the 1s grace period");
    let mut t_short = t.clone();
    t_short.spec_mut().container.stop_grace_period = Duration::from_secs(1);
    let c = exec.controller(&t_short).unwrap();
    let t0 = Instant::now();
    c.shutdown().await.expect("shutdown");
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "shutdown took {took:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("wait returns").unwrap();
    assert_eq!(status.expect("wait").exit_code, 137, "killed by SIGKILL");
    assert_eq!(c.wait().await.expect("wait after exit").exit_code, 137, "wait on a stopped task reports its exit");
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 137 }));
    c.shutdown().await.expect("shutdown of a stopped task is a no-op");

    step!("remove leaves no container, task, snapshot or log directory");
    c.remove().await.expect("remove");
    assert!(env.container(&t.id).await.is_none());
    assert!(env.task_ids().await.is_empty(), "{:?}", env.task_ids().await);
    assert!(!env.snapshot_exists(&t.id).await);
    assert!(exec.list_tasks().await.unwrap().is_empty());
    assert!(!log.parent().unwrap().exists(), "the log directory goes with the container");
    assert_eq!(exec.waiting(), 0, "every wait that ended left the exit subscription");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_reach_their_own_waiters_from_one_event_stream() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("five tasks started at once, each exiting with its own code; one waits longer");
    let tasks: Vec<Task> = (1..=5).map(|k| task(&["sh", "-c", &format!("sleep 0.{k}; exit {k}")])).collect();
    let started = futures::future::join_all(tasks.iter().map(|t| run(&exec, t))).await;
    let long = task(&["sleep", "1000"]);
    let (long_c, _) = run(&exec, &long).await;
    let long_wait = {
        let c = exec.controller(&long).unwrap();
        tokio::spawn(async move { c.wait().await })
    };
    let codes = futures::future::join_all(started.iter().map(|(c, _)| c.wait())).await;
    let codes: Vec<i32> = codes.into_iter().map(|r| r.expect("wait").exit_code).collect();
    assert_eq!(codes, vec![1, 2, 3, 4, 5], "each task's own exit code");
    for (c, _) in &started {
        assert!(matches!(c.inspect().await.unwrap(), Some(ContainerState::Exited { .. })), "reaped");
    }
    assert!(!long_wait.is_finished(), "the other tasks' exits do not end the running task's wait");
    assert_eq!(exec.waiting(), 1, "only the running task is waited on");

    step!("a health-check-like exec exiting in the running task does not end its wait either");
    let out = std::process::Command::new("ctr")
        .arg("-a")
        .arg(env.managed.as_ref().unwrap().socket())
        .args(["-n", "shoal", "task", "exec", "--exec-id", "probe", &long.id, "sh", "-c", "true"])
        .output()
        .expect("ctr task exec");
    assert!(out.status.success(), "ctr task exec: {}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!long_wait.is_finished(), "an exec's exit is not the task's");

    step!("killed, the running task's wait reports it");
    long_c.terminate().await.expect("terminate");
    let status = tokio::time::timeout(Duration::from_secs(10), long_wait).await.expect("wait returns").unwrap();
    assert_eq!(status.expect("wait").exit_code, 137);
    assert_eq!(exec.waiting(), 0, "no wait left registered");
    for (c, _) in started {
        c.remove().await.expect("remove");
    }
    long_c.remove().await.expect("remove");
}

/// Processes whose command line names `id` (the task's shim and logger), as "pid cmdline".
fn processes_naming(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(id) {
            out.push(format!("{pid} {cmd}"));
        }
    }
    out
}

fn cgroup_dir(id: &str) -> PathBuf {
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        PathBuf::from(format!("/sys/fs/cgroup/memory/shoal/{id}"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/shoal/{id}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exited_task_is_deleted_at_once_and_a_lost_process_is_never_restarted() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a task with an anonymous volume prints a line and exits 3");
    let mut t = task(&["sh", "-c", "echo bye; echo data > /vol/f; exit 3"]);
    t.spec_mut().container.mounts.push(Mount {
        kind: MountType::Volume,
        source: String::new(),
        target: "/vol".into(),
        readonly: false,
        tmpfs_size: 0,
    });
    let (c, _) = run(&exec, &t).await;
    assert!(!processes_naming(&t.id).is_empty(), "the shim and logger run while the task does");
    assert_eq!(c.wait().await.expect("wait").exit_code, 3);

    step!("its containerd task is gone at once; shim, logger and cgroup follow");
    assert!(
        !env.task_ids().await.contains(&t.id),
        "containerd task deleted when wait returned: {:?}",
        env.task_ids().await
    );
    wait_for("the task's shim and logger to exit", Duration::from_secs(15), || async {
        let procs = processes_naming(&t.id);
        if procs.is_empty() {
            Ok(())
        } else {
            Err(format!("{procs:?}"))
        }
    })
    .await;
    assert!(!cgroup_dir(&t.id).exists(), "cgroup {} removed with the task", cgroup_dir(&t.id).display());

    step!("what ps/logs/inspect need stays: the container record, its exit code, the log");
    assert!(env.container(&t.id).await.is_some(), "container record kept until remove");
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 3 }));
    assert_eq!(c.wait().await.expect("wait after the task was deleted").exit_code, 3);
    wait_for_stdout(&env.log_path(&t.id), "bye\n", Duration::from_secs(5)).await;
    let vol = env.data_root.join("volumes").join(format!("{}-0", t.id));
    assert_eq!(std::fs::read_to_string(vol.join("_data/f")).expect("anonymous volume data"), "data\n");

    step!("start after exit does not run it again in its old container");
    let fresh = env.executor().controller(&t).unwrap();
    fresh.start().await.expect("start of an exited container is a no-op");
    assert!(!env.task_ids().await.contains(&t.id), "no new containerd task: {:?}", env.task_ids().await);
    assert_eq!(fresh.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 3 }));

    step!("remove takes the container, snapshot, log directory and anonymous volume");
    c.remove().await.expect("remove");
    assert!(env.container(&t.id).await.is_none());
    assert!(!env.snapshot_exists(&t.id).await);
    assert!(!env.log_path(&t.id).parent().unwrap().exists(), "log directory removed");
    assert!(!vol.exists(), "anonymous volume {} removed", vol.display());

    step!("host reboot: the running task's process and containerd task vanish, the container record stays");
    let t2 = task(&["sleep", "1000"]);
    let (_c2, _) = run(&exec, &t2).await;
    let mut tasks = TasksClient::new(env.ch.clone());
    let id = t2.id.clone();
    tasks
        .kill(req(KillRequest { container_id: id.clone(), exec_id: String::new(), signal: 9, all: true }))
        .await
        .expect("kill");
    tasks.wait(req(WaitRequest { container_id: id.clone(), exec_id: String::new() })).await.expect("wait");
    tasks.delete(req(DeleteTaskRequest { container_id: id.clone() })).await.expect("delete task");
    let exec = env.executor();
    let c2 = exec.controller(&t2).unwrap();
    assert_eq!(
        c2.inspect().await.unwrap(),
        Some(ContainerState::Created),
        "no process and no exit code: the agent reports the task failed (process gone)"
    );
    match c2.wait().await {
        Err(ExecError::NotFound(_)) => {}
        other => panic!("wait on a lost process: {other:?}"),
    }
    assert_eq!(
        c2.start().await.unwrap_err().to_string(),
        "task process is gone (host restarted?)",
        "a task re-adopted at STARTING is not run again in its old container either"
    );
    assert!(!env.task_ids().await.contains(&t2.id), "no new containerd task");
    c2.remove().await.expect("remove");
    assert!(env.container(&t2.id).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_options_reach_the_logger_which_rotates_the_file() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a task with --log-opt max-size=2k,max-file=3 prints 300 lines");
    let mut t = task(&["sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done"]);
    t.spec_mut().log_driver = Some(LogDriver {
        name: "json-file".into(),
        options: [("max-size".to_string(), "2k".to_string()), ("max-file".to_string(), "3".to_string())].into(),
    });
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    let log = env.log_path(&t.id);
    wait_for_stdout(&log, "line-299\n", Duration::from_secs(10)).await;

    step!("three files at most, each within max-size");
    let mut files: Vec<String> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["task.log", "task.log.1", "task.log.2"]);
    for f in &files {
        let len = std::fs::metadata(log.parent().unwrap().join(f)).unwrap().len();
        assert!(len <= 2000, "{f} is {len} bytes");
    }

    step!("--tail reads across the rotated files");
    let mut rx =
        engine::logs::stream(vec![log.clone()], engine::logs::LogOptions { follow: false, tail: Some(40) }, None);
    let mut got = Vec::new();
    while let Some(l) = rx.recv().await {
        got.push(l.line);
    }
    let want: Vec<String> = (260..300).map(|i| format!("line-{i}")).collect();
    assert_eq!(got, want);
    c.remove().await.unwrap();

    step!("a bad log option rejects the task before anything is created");
    let mut bad = task(&["true"]);
    bad.spec_mut().log_driver =
        Some(LogDriver { name: String::new(), options: [("max-file".to_string(), "0".to_string())].into() });
    let err = exec.controller(&bad).unwrap().prepare().await.unwrap_err();
    assert_eq!(err.to_string(), "invalid task spec: invalid max-file '0': expected a number of files of at least 1");
    assert!(env.container(&bad.id).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_stop_signals_and_exit_codes() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a task has its own network namespace with only loopback, and it is up");
    let t = task(&["sh", "-c", "ip -o link; ip -o addr; exit 3"]);
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 3, "exit code 3 is reported");
    let out = wait_for("ip output in the log", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        let lines: Vec<String> = recs.iter().map(|r| r["log"].as_str().unwrap_or_default().to_string()).collect();
        if lines.iter().any(|l| l.contains("inet ")) {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    let links: Vec<&String> = out.iter().filter(|l| l.contains(": <")).collect();
    let up: Vec<&&String> = links.iter().filter(|l| l.contains(",UP") || l.contains("<UP")).collect();
    assert!(links.iter().any(|l| l.contains(": lo: ") && l.contains("UP")), "lo is up: {out:?}");
    assert_eq!(up.len(), 1, "only lo is up: {out:?}");
    let inet: Vec<&String> = out.iter().filter(|l| l.contains("inet ")).collect();
    assert!(inet.iter().all(|l| l.contains("127.0.0.1")), "no address but loopback's (not the host network): {inet:?}");
    c.remove().await.unwrap();

    step!("a line longer than 16 KiB is split into records as Docker's json-file does");
    let t = task(&["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo; echo short"]);
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    let recs = wait_for("three records", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        if recs.len() >= 3 {
            Ok(recs)
        } else {
            Err(format!("{} records", recs.len()))
        }
    })
    .await;
    let logs: Vec<&str> = recs.iter().map(|r| r["log"].as_str().unwrap()).collect();
    assert_eq!(logs[0], "a".repeat(16384));
    assert_eq!(logs[1], format!("{}\n", "a".repeat(20000 - 16384)));
    assert_eq!(logs[2], "short\n");
    c.remove().await.unwrap();

    step!("a task that traps the stop signal (\"TERM\") stops with it, well before the grace period");
    let mut t = task(&["sh", "-c", "trap 'echo got term; exit 0' TERM; echo trapped; while true; do sleep 0.1; done"]);
    t.spec_mut().container.stop_signal = "TERM".into();
    t.spec_mut().container.stop_grace_period = Duration::from_secs(20);
    let (c, _) = run(&exec, &t).await;
    // PID 1 ignores a signal it has no handler for, so stop only once the trap is in place.
    wait_for_stdout(&env.log_path(&t.id), "trapped\n", Duration::from_secs(10)).await;
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "the stop signal ended it: {:?}", t0.elapsed());
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&t.id), "got term\n", Duration::from_secs(5)).await;
    c.remove().await.unwrap();

    step!("sleep as PID 1 ignores SIGTERM (\"15\"): SIGKILL after the 1s grace");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().container.stop_signal = "15".into();
    t.spec_mut().container.stop_grace_period = Duration::from_secs(1);
    let (c, _) = run(&exec, &t).await;
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1), "waited the grace period: {:?}", t0.elapsed());
    assert_eq!(c.wait().await.unwrap().exit_code, 137);
    c.remove().await.unwrap();

    step!("terminate kills at once");
    let t = task(&["sleep", "1000"]);
    let (c, _) = run(&exec, &t).await;
    let t0 = Instant::now();
    c.terminate().await.unwrap();
    assert_eq!(c.wait().await.unwrap().exit_code, 137);
    assert!(t0.elapsed() < Duration::from_secs(3));

    step!("remove_task cleans up an orphan");
    let orphan = task(&["sleep", "1000"]);
    run(&exec, &orphan).await;
    exec.remove_task(&orphan.id).await.unwrap();
    c.remove().await.unwrap();
    assert!(exec.list_tasks().await.unwrap().is_empty());
    assert!(env.task_ids().await.is_empty());
    assert!(!env.snapshot_exists(&orphan.id).await);
    exec.remove_task(&orphan.id).await.expect("remove_task is idempotent");
}

/// The task's stdout, once it has printed `end` as a line.
async fn stdout_until(env: &Env, t: &Task, end: &str) -> String {
    let log = env.log_path(&t.id);
    wait_for(&format!("{end:?} on stdout of {}", t.id), Duration::from_secs(20), || async {
        let recs = log_records(&log);
        let out: String =
            recs.iter().filter(|r| r["stream"] == "stdout").map(|r| r["log"].as_str().unwrap_or_default()).collect();
        if out.lines().any(|l| l == end) {
            Ok(out)
        } else {
            Err(format!("{recs:?}"))
        }
    })
    .await
}

/// The value of `Field:` in a /proc/<pid>/status dump.
fn status_field<'a>(out: &'a str, field: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} line in {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_security_defaults_and_options() {
    let env = Env::start().await;
    let exec = env.executor();
    // unshare(CLONE_NEWUSER) needs no capability, so only the seccomp filter refuses it.
    let probe = "grep -E '^(Seccomp|CapEff):' /proc/self/status; \
                 if unshare -U true; then echo unshare=ok; else echo unshare=refused; fi; echo end";

    step!("by default: the seccomp filter is on, Docker's default capabilities, unshare refused");
    let t = task(&["sh", "-c", probe]);
    let (c, _) = run(&exec, &t).await;
    let out = stdout_until(&env, &t, "end").await;
    assert_eq!(status_field(&out, "Seccomp"), "2", "seccomp in filter mode: {out}");
    assert_eq!(status_field(&out, "CapEff"), "00000000a80425fb", "Docker's default capability set: {out}");
    assert!(out.contains("unshare=refused"), "a syscall outside the allowlist fails: {out}");
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    c.remove().await.unwrap();

    step!("a non-root user has no capabilities (none ambient)");
    let mut t = task(&["sh", "-c", "grep '^CapEff:' /proc/self/status; echo end"]);
    t.spec_mut().container.user = "nobody".into();
    let (c, _) = run(&exec, &t).await;
    let out = stdout_until(&env, &t, "end").await;
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000", "{out}");
    c.remove().await.unwrap();

    step!("seccomp=unconfined: no filter, so the same unshare works");
    let mut t = task(&["sh", "-c", probe]);
    t.spec_mut().container.seccomp = swarm::api::Seccomp::Unconfined;
    let (c, _) = run(&exec, &t).await;
    let out = stdout_until(&env, &t, "end").await;
    assert_eq!(status_field(&out, "Seccomp"), "0", "no seccomp: {out}");
    assert!(out.contains("unshare=ok"), "unconfined allows unshare: {out}");
    c.remove().await.unwrap();

    step!("a custom profile in Docker's format: everything but mkdir allowed");
    let mut t = task(&[
        "sh",
        "-c",
        "grep '^Seccomp:' /proc/self/status; \
                                    if mkdir /made 2>/dev/null; then echo mkdir=ok; else echo mkdir=refused; fi; \
                                    if unshare -U true; then echo unshare=ok; else echo unshare=refused; fi; echo end",
    ]);
    t.spec_mut().container.seccomp = swarm::api::Seccomp::Custom(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#
            .into(),
    );
    let (c, _) = run(&exec, &t).await;
    let out = stdout_until(&env, &t, "end").await;
    assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
    assert!(out.contains("mkdir=refused") && out.contains("unshare=ok"), "only the profile's rule applies: {out}");
    c.remove().await.unwrap();

    step!("cap-drop, read-only rootfs, init, ulimits and a pids limit");
    let script = "grep '^CapEff:' /proc/self/status; \
                  if touch /written 2>/dev/null; then echo write=ok; else echo write=refused; fi; \
                  if touch /tmp/written 2>/dev/null; then echo tmp=ok; else echo tmp=refused; fi; \
                  echo pid1=$(tr '\\0' ' ' </proc/1/cmdline); \
                  echo nofile=$(ulimit -n):$(ulimit -Hn); echo end; exec sleep 1000";
    let mut t = task(&["sh", "-c", script]);
    let c_spec = &mut t.spec_mut().container;
    c_spec.capability_drop = vec!["ALL".into()];
    c_spec.capability_add = vec!["CAP_CHOWN".into(), "CAP_SYS_TIME".into()];
    c_spec.read_only = true;
    c_spec.init = true;
    c_spec.ulimits = vec!["nofile=1024:2048".parse().unwrap()];
    c_spec.mounts.push(Mount {
        kind: MountType::Tmpfs,
        source: String::new(),
        target: "/tmp".into(),
        readonly: false,
        tmpfs_size: 0,
    });
    t.spec_mut().resources.limits.pids = 100;
    let (c, _) = run(&exec, &t).await;
    let out = stdout_until(&env, &t, "end").await;
    // Only CHOWN (bit 0) and SYS_TIME (bit 25).
    assert_eq!(status_field(&out, "CapEff"), format!("{:016x}", 1u64 | 1 << 25));
    assert!(out.contains("write=refused"), "the rootfs is read-only: {out}");
    assert!(out.contains("tmp=ok"), "a tmpfs mount stays writable: {out}");
    assert!(out.contains("pid1=/sbin/docker-init -- sh -c "), "tini is PID 1: {out}");
    assert!(out.contains("nofile=1024:2048"), "ulimit -n and -Hn: {out}");
    let pids_max = if Path::new("/sys/fs/cgroup/pids").is_dir() {
        format!("/sys/fs/cgroup/pids/shoal/{}/pids.max", t.id)
    } else {
        format!("/sys/fs/cgroup/shoal/{}/pids.max", t.id)
    };
    let max = std::fs::read_to_string(&pids_max).unwrap_or_else(|e| panic!("{pids_max}: {e}"));
    assert_eq!(max.trim(), "100", "the pids limit is in the task's cgroup");
    c.terminate().await.unwrap();
    c.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_with_clear_errors() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a missing image");
    let mut t = task(&["true"]);
    t.spec_mut().container.image = "nosuch".into();
    let c = exec.controller(&t).unwrap();
    let e = c.prepare().await.unwrap_err();
    assert_eq!(e, ExecError::ImageNotFound("nosuch:latest".into()));
    assert_eq!(e.to_string(), "No such image: nosuch:latest");
    assert_eq!(c.inspect().await.unwrap(), None, "no container left behind");

    step!("a bind mount whose source does not exist");
    let mut t = task(&["true"]);
    t.spec_mut().container.mounts.push(Mount {
        kind: MountType::Bind,
        source: "/x/shoal/not/here".into(),
        target: "/data".into(),
        readonly: false,
        tmpfs_size: 0,
    });
    let c = exec.controller(&t).unwrap();
    let e = c.prepare().await.unwrap_err();
    assert_eq!(
        e,
        ExecError::InvalidSpec(
            "invalid mount config for type \"bind\": bind source path does not exist: /x/shoal/not/here".into()
        )
    );
    assert_eq!(c.inspect().await.unwrap(), None);
    assert!(!env.snapshot_exists(&t.id).await, "the snapshot prepared for it was removed");

    step!("an unknown user name");
    let mut t = task(&["true"]);
    t.spec_mut().container.user = "ghost".into();
    let e = exec.controller(&t).unwrap().prepare().await.unwrap_err();
    assert!(matches!(&e, ExecError::InvalidSpec(m) if m.contains("unable to find user ghost")), "{e:?}");

    step!("wait before prepare says the container does not exist");
    let t = task(&["true"]);
    let c = exec.controller(&t).unwrap();
    assert!(matches!(c.wait().await, Err(ExecError::NotFound(_))));
    c.remove().await.expect("remove of nothing is fine");

    step!("mounts work: bind (read-only), named volume, tmpfs with size, and a user from /etc/passwd");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    let mut t = task(&[
        "sh",
        "-c",
        "cat /in/in.txt; echo vol > /vol/f && echo wrote; touch /in/x 2>/dev/null || echo ro; \
         grep ' /scratch ' /proc/mounts; id -u; hostname",
    ]);
    t.spec_mut().container.user = "nobody".into();
    t.spec_mut().container.mounts = vec![
        Mount {
            kind: MountType::Bind,
            source: host.path().display().to_string(),
            target: "/in".into(),
            readonly: true,
            tmpfs_size: 0,
        },
        Mount {
            kind: MountType::Volume,
            source: "shoaltestvol".into(),
            target: "/vol".into(),
            readonly: false,
            tmpfs_size: 0,
        },
        Mount {
            kind: MountType::Tmpfs,
            source: String::new(),
            target: "/scratch".into(),
            readonly: false,
            tmpfs_size: 1 << 20,
        },
    ];
    let vol = env.data_root.join("volumes/shoaltestvol/_data");
    // nobody must be able to write the volume.
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    let lines = wait_for("the mount checks' output", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        let lines: Vec<String> =
            recs.iter().map(|r| r["log"].as_str().unwrap_or_default().trim_end().to_string()).collect();
        if lines.len() >= 6 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    assert_eq!(lines[0], "from the host");
    assert_eq!(lines[1], "wrote");
    assert_eq!(lines[2], "ro");
    assert!(lines[3].contains("tmpfs") && lines[3].contains("size=1024k"), "tmpfs with its size: {lines:?}");
    assert_eq!(lines[4], "65534", "runs as nobody");
    assert_eq!(lines[5], &t.id[..12], "hostname is the task id's first 12 characters");
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "vol\n", "the named volume is on the host");
    c.remove().await.unwrap();
}

/// A `docker save` archive of the OCI one: manifest.json + config + layer.tar.
fn docker_save_from_oci(oci: &Path, out: &Path, tag: &str) -> String {
    docker_save_edited(oci, out, tag, |_| {})
}

/// [`docker_save_from_oci`] with the image config changed by `edit`; returns the config's digest.
fn docker_save_edited(oci: &Path, out: &Path, tag: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut files = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(oci).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let json = |p: &str| -> Value { serde_json::from_slice(&files[p]).unwrap() };
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let index = json("index.json");
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let original = files[&blob(manifest["config"]["digest"].as_str().unwrap())].clone();
    let mut config: Value = serde_json::from_slice(&original).unwrap();
    edit(&mut config);
    // Unedited, the very bytes: the image keeps its id.
    let config_bytes = if config == serde_json::from_slice::<Value>(&original).unwrap() {
        original
    } else {
        serde_json::to_vec(&config).unwrap()
    };
    let config_digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config_bytes)));
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let layer_name = format!("{}/layer.tar", layer_digest.trim_start_matches("sha256:"));
    let mj = serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": [layer_name] }]);
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", mj.to_string().as_bytes());
    add(&config_name, &config_bytes);
    add(&layer_name, &files[&blob(layer_digest)]);
    b.into_inner().unwrap().flush().unwrap();
    config_digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_load_list_resolve_and_remove() {
    let env = Env::start().await;
    let images = env.images();

    step!("the OCI image is listed with its config digest as id");
    let list = images.list().await.unwrap();
    let bb = list.iter().find(|i| i.reference == IMAGE).unwrap_or_else(|| panic!("busybox in {list:?}"));
    assert!(bb.id.starts_with("sha256:") && bb.id.len() == 71, "{bb:?}");
    assert!(bb.size > 100_000, "size is the layers' size: {bb:?}");
    let r = images.resolve("busybox").await.unwrap();
    assert_eq!(r.config.cmd, vec!["sh"]);
    assert!(r.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert!(r.chain_id.starts_with("sha256:"));
    assert!(env.snapshot_exists(&r.chain_id).await, "the layer is unpacked as a committed snapshot");

    step!("loading the same archive again (through a reader) is idempotent");
    let f = std::fs::File::open(test_image()).unwrap();
    assert_eq!(images.load_reader(f).await.unwrap(), vec![IMAGE.to_string()]);
    assert_eq!(images.list().await.unwrap().len(), list.len());

    step!("a docker save archive loads too");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.tar");
    let config_digest = docker_save_from_oci(test_image(), &saved, "shoal-test/saved:v1");
    assert_eq!(images.load(&saved).await.unwrap(), vec!["docker.io/shoal-test/saved:v1".to_string()]);
    let list = images.list().await.unwrap();
    let s = list.iter().find(|i| i.reference == "docker.io/shoal-test/saved:v1").expect("saved image listed");
    assert_eq!(s.id, config_digest);
    assert_eq!(s.id, bb.id, "same config, same image id");

    step!("a task runs from the docker-save image");
    let exec = env.executor();
    let mut t = task(&["echo", "from saved"]);
    t.spec_mut().container.image = "shoal-test/saved:v1".into();
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&t.id), "from saved\n", Duration::from_secs(5)).await;
    step!("the only name of an image a container uses is kept unless forced");
    let refused = images.remove("shoal-test/saved:v1", false).await;
    assert!(
        matches!(&refused, Err(engine::image::ImageError::InUse { container, .. }) if t.id.starts_with(container.as_str())),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().to_string().contains("(must force)"));
    images.resolve("shoal-test/saved:v1").await.expect("the refused remove kept the image");
    c.remove().await.unwrap();

    step!("remove deletes the record; resolving it then fails");
    images.remove("shoal-test/saved:v1", false).await.unwrap();
    assert!(matches!(
        images.resolve("shoal-test/saved:v1").await,
        Err(engine::image::ImageError::NotFound(r)) if r == "shoal-test/saved:v1"
    ));
    assert!(matches!(images.remove("shoal-test/saved:v1", false).await, Err(engine::image::ImageError::NotFound(_))));
    images.resolve("busybox:latest").await.expect("the other name is untouched");
    // remove asked for a synchronous GC: what the remaining image needs must have survived it (gc labels).
    assert!(env.snapshot_exists(&r.chain_id).await, "the remaining image's snapshot survived GC");
    let r2 = images.resolve("busybox").await.expect("its manifest and config blobs survived GC");
    assert_eq!(r2.chain_id, r.chain_id);

    step!("removing the last name lets GC take the unpacked layer");
    images.remove("busybox", false).await.unwrap();
    wait_for("the layer snapshot collected", Duration::from_secs(10), || async {
        if env.snapshot_exists(&r.chain_id).await {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(images.list().await.unwrap().is_empty());

    step!("garbage is refused with a clear error");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tarball at all").unwrap();
    let e = images.load(&junk).await.unwrap_err().to_string();
    assert!(e.contains("invalid image archive"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_containerd_is_reused_by_a_second_start() {
    let env = Env::start().await;
    let first = env.managed.as_ref().unwrap().pid().expect("pid");
    step!("a second start on the same dirs (shoald restarted after SIGKILL) reuses containerd {first}");
    let again = ManagedContainerd::start(&env.data_root, &env.exec_root).await.unwrap();
    assert_eq!(again.pid(), Some(first));
    assert_eq!(again.socket(), env.managed.as_ref().unwrap().socket());
    drop(again); // stops supervising only
    let cfg = std::fs::read_to_string(env.data_root.join("containerd/config.toml")).unwrap();
    assert!(cfg.contains("version = 2") && cfg.contains("io.containerd.grpc.v1.cri"));
    assert!(env.data_root.join("containerd/containerd.log").exists());
    assert!(env.exec_root.join("containerd/containerd.pid").exists());
    assert_eq!(env.managed.as_ref().unwrap().pid(), Some(first), "still running");
}

/// A task's runner from the agent (`swarm::agent::task`) driving the real executor, and what it reported.
struct Runner {
    reports: tokio::sync::mpsc::UnboundedReceiver<swarm::api::dispatch::TaskStatusUpdate>,
    seen: Vec<swarm::api::TaskStatus>,
    cancel: tokio_util::sync::CancellationToken,
    _updates: tokio::sync::watch::Sender<Task>,
}

impl Runner {
    fn start(exec: &engine::executor::ContainerdExecutor, t: &Task) -> Runner {
        let (tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let (updates_tx, updates) = tokio::sync::watch::channel(t.clone());
        let cancel = tokio_util::sync::CancellationToken::new();
        let ctl = exec.controller(t).expect("controller");
        tokio::spawn(swarm::agent::task::run_task(ctl, t.clone(), updates, tx, cancel.clone()));
        Runner { reports, seen: Vec::new(), cancel, _updates: updates_tx }
    }

    /// The first report matching `ok` within `timeout`, or a panic naming what was awaited and what came.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&swarm::api::TaskStatus) -> bool,
    ) -> swarm::api::TaskStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let states: Vec<String> =
                self.seen.iter().map(|s| format!("{} {:?} {}", s.state, health(s), s.err)).collect();
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(u)) => {
                    self.seen.push(u.status.clone());
                    if ok(&u.status) {
                        return u.status;
                    }
                }
                Ok(None) => panic!("the runner ended waiting for {what}; reports: {states:?}"),
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}; reports: {states:?}"),
            }
        }
    }

    fn states(&self) -> Vec<swarm::api::TaskState> {
        self.seen.iter().map(|s| s.state).collect()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn health(s: &swarm::api::TaskStatus) -> Option<swarm::api::Health> {
    s.container.as_ref().and_then(|c| c.health)
}

fn check(test: &[&str], interval_ms: u64, retries: u64) -> swarm::api::HealthConfig {
    swarm::api::HealthConfig {
        test: test.iter().map(|s| s.to_string()).collect(),
        interval: Duration::from_millis(interval_ms),
        retries,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_inside_the_task_and_gate_running() {
    use swarm::agent::task::UNHEALTHY;
    use swarm::api::{Health, TaskState};
    let env = Env::start().await;
    let exec = env.executor();

    step!("a check that passes: STARTING (health starting), then RUNNING once healthy");
    // The file the check looks for appears after 1 s (within the start period: the failures before do not
    // count) and goes 3 s later: the check starts failing.
    let mut t = task(&["sh", "-c", "sleep 1; touch /tmp/ok; sleep 3; rm /tmp/ok; sleep 1000"]);
    let mut hc = check(&["CMD", "test", "-f", "/tmp/ok"], 300, 2);
    hc.start_period = Duration::from_secs(5);
    hc.start_interval = Duration::from_millis(200);
    t.spec_mut().container.healthcheck = Some(hc);
    let started = Instant::now();
    let mut r = Runner::start(&exec, &t);
    let s = r.until("STARTING with health starting", Duration::from_secs(30), |s| health(s).is_some()).await;
    assert_eq!((s.state, health(&s)), (TaskState::Starting, Some(Health::Starting)));
    let s = r.until("RUNNING", Duration::from_secs(30), |s| s.state == TaskState::Running).await;
    assert_eq!(health(&s), Some(Health::Healthy), "{s:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "not RUNNING before the check could pass");
    let ctr = env.container(&t.id).await.expect("container");
    let label = ctr.labels.get(engine::health::LABEL_HEALTHCHECK).expect("the effective check is on the container");
    let c = engine::health::Check::from_label(label).unwrap();
    assert_eq!(c.args, vec!["test", "-f", "/tmp/ok"]);
    assert_eq!((c.interval, c.retries, c.timeout), (Duration::from_millis(300), 2, Duration::from_secs(30)));

    step!("the check starts failing: FAILED as unhealthy after 2 failures, and the container is stopped");
    let healthy_until = Instant::now();
    let s = r.until("FAILED", Duration::from_secs(30), |s| s.state == TaskState::Failed).await;
    assert_eq!(health(&s), Some(Health::Unhealthy));
    assert_eq!(s.err, format!("{UNHEALTHY} (exit 1)"), "{s:?}");
    step!("FAILED {:?} after RUNNING (the file goes about 3 s after it appeared)", healthy_until.elapsed());
    let s = r
        .until("the exit code", Duration::from_secs(30), |s| {
            s.container.as_ref().is_some_and(|c| c.exit_code.is_some())
        })
        .await;
    assert_eq!(s.state, TaskState::Failed);
    let c = exec.controller(&t).unwrap();
    assert!(
        matches!(c.inspect().await.unwrap(), Some(ContainerState::Exited { .. })),
        "the unhealthy container stopped"
    );
    assert!(
        !std::fs::read_dir(env.log_path(&t.id).parent().unwrap())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".out")),
        "no check output files left behind"
    );
    drop(r);

    step!("a check that never passes (with output): never RUNNING, FAILED after 3 failures");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().container.healthcheck = Some(check(&["CMD-SHELL", "echo not yet; echo really >&2; exit 3"], 200, 3));
    let mut r = Runner::start(&exec, &t);
    r.until("STARTING with health", Duration::from_secs(30), |s| health(s).is_some()).await;
    let checking = Instant::now();
    let s = r.until("FAILED", Duration::from_secs(30), |s| s.state == TaskState::Failed).await;
    let took = checking.elapsed();
    assert!(took >= Duration::from_millis(600), "3 failures one interval apart: {took:?}");
    // What the unhealthy latency is made of: retries × (interval + one exec's cost).
    step!(
        "FAILED {took:?} after the checks began: {:?} per check beyond the interval",
        (took - Duration::from_millis(600)) / 3
    );
    assert!(!r.states().contains(&TaskState::Running), "never RUNNING: {:?}", r.states());
    // Both streams are kept; the shim copies them apart, so in either order.
    assert!(s.err.starts_with(&format!("{UNHEALTHY} (exit 3: ")), "{s:?}");
    assert!(s.err.contains("not yet") && s.err.contains("really"), "stdout and stderr of the check: {s:?}");
    r.until("the exit code", Duration::from_secs(30), |s| s.container.as_ref().is_some_and(|c| c.exit_code.is_some()))
        .await;
    drop(r);

    step!("a check exceeding its timeout counts as failed, and its process is killed");
    let mut t = task(&["sleep", "1000"]);
    let mut hc = check(&["CMD", "sleep", "77"], 200, 2);
    hc.timeout = Duration::from_millis(300);
    t.spec_mut().container.healthcheck = Some(hc);
    let mut r = Runner::start(&exec, &t);
    let s = r.until("FAILED", Duration::from_secs(30), |s| s.state == TaskState::Failed).await;
    assert!(!r.states().contains(&TaskState::Running), "never RUNNING: {:?}", r.states());
    assert_eq!(s.err, format!("{UNHEALTHY} (Health check exceeded timeout (300ms))"));
    wait_for("no check process left", Duration::from_secs(10), || async {
        let left = processes_naming("sleep 77");
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    drop(r);

    step!("a check's stdout and stderr are both kept, however fast the process exits");
    // Given one file for both streams, containerd's shim could close it once stdout ended and drop stderr.
    let t = task(&["sleep", "1000"]);
    let mut r = Runner::start(&exec, &t);
    r.until("RUNNING", Duration::from_secs(30), |s| s.state == TaskState::Running).await;
    let ctr = env.container(&t.id).await.expect("container");
    let spec: serde_json::Value = serde_json::from_slice(&ctr.spec.as_ref().unwrap().value).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prober = engine::health::ExecProber {
        ch: exec.channel(),
        container_id: ctr.id.clone(),
        process: spec["process"].clone(),
        dir: dir.path().to_path_buf(),
    };
    use engine::health::{Outcome, Prober};
    let args: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 4"].iter().map(|s| s.to_string()).collect();
    for i in 0..20 {
        match prober.probe(&args, Duration::from_secs(10)).await {
            Outcome::Exited { code: 4, output } if output.contains("out") && output.contains("err") => {}
            o => panic!("run {i}: {o:?}"),
        }
    }
    let big: Vec<String> =
        ["sh", "-c", "yes 0123456789 | head -c 200000; echo err >&2"].iter().map(|s| s.to_string()).collect();
    match prober.probe(&big, Duration::from_secs(10)).await {
        Outcome::Exited { code: 0, output } => assert!(output.len() <= 4096 && output.starts_with("0123456789\n")),
        o => panic!("200 kB of output, more than a pipe holds: {o:?}"),
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no FIFO left behind");
    drop(r);

    step!("a bad test rejects the task with a clear error");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().container.healthcheck = Some(check(&["CURL", "x"], 200, 2));
    let mut r = Runner::start(&exec, &t);
    let s = r.until("REJECTED", Duration::from_secs(30), |s| s.state == TaskState::Rejected).await;
    assert_eq!(s.err, "invalid task spec: health check: unknown test type \"CURL\": expected NONE, CMD or CMD-SHELL");
    assert!(env.container(&t.id).await.is_none(), "no container for a rejected task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_healthcheck_is_used_unless_the_service_disables_it() {
    use swarm::api::{Health, TaskState};
    let env = Env::start().await;
    let exec = env.executor();
    step!("load an image whose config declares a HEALTHCHECK");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("hc.tar");
    docker_save_edited(test_image(), &saved, "shoal-test/healthy:v1", |c| {
        c["config"]["Healthcheck"] = serde_json::json!({
            "Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 200_000_000u64, "Retries": 2,
            "StartPeriod": 5_000_000_000u64, "StartInterval": 200_000_000u64,
        });
    });
    let loaded = env.images().load(&saved).await.expect("load");
    assert_eq!(loaded, vec!["docker.io/shoal-test/healthy:v1".to_string()]);
    let image = env.images().resolve("shoal-test/healthy:v1").await.unwrap();
    let hc = image.config.healthcheck.expect("the image's healthcheck is read");
    assert_eq!((hc.test.len(), hc.interval, hc.retries), (2, Duration::from_millis(200), 2));

    step!("a task without --health-*: the image's check gates it, and passes once /tmp/ok exists");
    let mut t = task(&["sh", "-c", "sleep 1; touch /tmp/ok; sleep 1000"]);
    t.spec_mut().container.image = "docker.io/shoal-test/healthy:v1".into();
    let mut r = Runner::start(&exec, &t);
    let s = r.until("STARTING with health", Duration::from_secs(30), |s| health(s).is_some()).await;
    assert_eq!((s.state, health(&s)), (TaskState::Starting, Some(Health::Starting)));
    let s = r.until("RUNNING", Duration::from_secs(30), |s| s.state == TaskState::Running).await;
    assert_eq!(health(&s), Some(Health::Healthy));

    step!("re-adoption: a restarted shoald's executor checks the container the same way, without the image");
    env.images()
        .remove("shoal-test/healthy:v1", true)
        .await
        .expect("removing the image (its container keeps its layers)");
    let c = env.executor().controller(&t).unwrap();
    let mut rx = c.health().await.expect("health").expect("the check recorded on the container");
    let h = tokio::time::timeout(Duration::from_secs(30), async {
        rx.changed().await.expect("checks running");
        rx.borrow().health
    })
    .await
    .expect("a verdict within 30s");
    assert_eq!(h, Health::Healthy);
    drop(r);
    let loaded = env.images().load(&saved).await.expect("load again");
    assert_eq!(loaded.len(), 1);

    step!("the service's fields override the image's, its empty test inherits the image's command");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().container.image = "docker.io/shoal-test/healthy:v1".into();
    let mut hc = check(&[], 100, 1);
    hc.start_period = Duration::from_millis(1);
    t.spec_mut().container.healthcheck = Some(hc);
    let mut r = Runner::start(&exec, &t);
    let s = r.until("FAILED", Duration::from_secs(30), |s| s.state == TaskState::Failed).await;
    assert_eq!(health(&s), Some(Health::Unhealthy), "the image's test, failing: no /tmp/ok");
    let label = env.container(&t.id).await.unwrap().labels[engine::health::LABEL_HEALTHCHECK].clone();
    let c = engine::health::Check::from_label(&label).unwrap();
    assert_eq!(c.args, vec!["/bin/sh", "-c", "test -f /tmp/ok"]);
    assert_eq!((c.interval, c.retries, c.start_period), (Duration::from_millis(100), 1, Duration::from_millis(1)));
    assert_eq!(c.start_interval, Duration::from_millis(200), "the image's");
    drop(r);

    step!("--no-healthcheck (NONE): RUNNING at once, no health, no check on the container");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().container.image = "docker.io/shoal-test/healthy:v1".into();
    t.spec_mut().container.healthcheck = Some(check(&["NONE"], 0, 0));
    let mut r = Runner::start(&exec, &t);
    let s = r.until("RUNNING", Duration::from_secs(30), |s| s.state == TaskState::Running).await;
    assert_eq!(health(&s), None);
    assert!(!env.container(&t.id).await.unwrap().labels.contains_key(engine::health::LABEL_HEALTHCHECK));
}
