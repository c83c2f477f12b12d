//! Resource limits and what the node offers the scheduler, against a real containerd (a private one per test):
//! the CPU limit as a CFS quota, the generic resources `describe` reports, and a memory hog over its limit that
//! the kernel OOM-kills, failing the task with Docker's exit 137 and `OOMKilled`.
//!
//! Needs root, containerd, runc and busybox-static; a missing piece fails the test (nothing is skipped).
//! Run: `cargo test -p shoal-engine --test limits`.

use std::path::Path;
use std::time::Duration;
use swarm::agent::exec::{ContainerState, Controller, ExecError, Executor};

#[macro_use]
mod common;
use common::*;

/// The file of a controller's setting for task `id`, on cgroup v1 or v2.
fn cgroup_file(controller: &str, v1: &str, v2: &str, id: &str) -> String {
    if Path::new(&format!("/sys/fs/cgroup/{controller}")).is_dir() {
        format!("/sys/fs/cgroup/{controller}/shoal/{id}/{v1}")
    } else {
        format!("/sys/fs/cgroup/shoal/{id}/{v2}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_is_a_cfs_quota_and_the_node_advertises_its_generic_resources() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("describe reports the generic resources the node was given");
    let d = exec.describe().await.expect("describe");
    assert_eq!(d.generic_resources, [("gpu".to_string(), 2)].into());

    step!("--limit-cpu 0.5 is a 50ms quota per 100ms period in the task's cgroup");
    let mut t = task(&["sleep", "1000"]);
    t.spec_mut().resources.limits.nano_cpus = 500_000_000;
    let (c, _) = run(&exec, &t).await;
    if Path::new("/sys/fs/cgroup/cpu").is_dir() {
        let read = |f: &str| {
            let p = format!("/sys/fs/cgroup/cpu/shoal/{}/{f}", t.id);
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().to_string()
        };
        assert_eq!((read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")), ("50000".into(), "100000".into()));
    } else {
        let p = cgroup_file("cpu", "", "cpu.max", &t.id);
        assert_eq!(std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim(), "50000 100000");
    }
    c.terminate().await.unwrap();
    c.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_over_its_limit_is_oom_killed_and_fails_saying_so() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a shell doubling a string under a 16MiB limit");
    let mut t = task(&["sh", "-c", "echo start; x=0123456789abcdef; while true; do x=$x$x; done"]);
    t.spec_mut().resources.limits.memory_bytes = 16 << 20;
    let (c, _) = run(&exec, &t).await;
    let limit = cgroup_file("memory", "memory.limit_in_bytes", "memory.max", &t.id);
    assert_eq!(std::fs::read_to_string(&limit).unwrap_or_else(|e| panic!("{limit}: {e}")).trim(), "16777216");
    // Docker's default swap allowance: as much again (v1 counts memory + swap, v2 swap alone).
    let swap = cgroup_file("memory", "memory.memsw.limit_in_bytes", "memory.swap.max", &t.id);
    if engine::spec::swap_limit_supported() {
        let want = if swap.contains("memsw") { "33554432" } else { "16777216" };
        assert_eq!(std::fs::read_to_string(&swap).unwrap_or_else(|e| panic!("{swap}: {e}")).trim(), want);
    }

    step!("wait reports the OOM kill with Docker's exit code");
    let err = tokio::time::timeout(Duration::from_secs(60), c.wait())
        .await
        .expect("the hog is killed within 60s")
        .expect_err("an OOM-killed task fails");
    let ExecError::Runtime(msg) = &err else { panic!("unexpected error kind: {err:?}") };
    assert!(msg.starts_with("task: non-zero exit (137): OOMKilled"), "{msg}");
    assert!(msg.contains("memory limit 16MiB"), "{msg}");

    step!("the container records it, so a later wait (an agent re-adopting the task) says the same");
    let ctr = env.container(&t.id).await.expect("container kept until removal");
    assert_eq!(ctr.labels.get("io.shoal.oom-killed").map(String::as_str), Some("true"));
    assert_eq!(ctr.labels.get("io.shoal.exit-code").map(String::as_str), Some("137"));
    assert_eq!(exec.controller(&t).unwrap().wait().await.unwrap_err(), err);
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 137 }));
    c.remove().await.unwrap();

    step!("a task that exits non-zero within its limit is an ordinary exit");
    let mut t = task(&["sh", "-c", "exit 3"]);
    t.spec_mut().resources.limits.memory_bytes = 16 << 20;
    let (c, _) = run(&exec, &t).await;
    let exit = tokio::time::timeout(Duration::from_secs(30), c.wait()).await.expect("exits").expect("an exit");
    assert_eq!(exit.exit_code, 3);
    let ctr = env.container(&t.id).await.expect("container");
    assert!(!ctr.labels.contains_key("io.shoal.oom-killed"), "{:?}", ctr.labels);
    c.remove().await.unwrap();
}
