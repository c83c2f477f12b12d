//! `bench update`: rolling updates and health-driven replacement on a real daemon and real containers.
//!
//! It prints, for a service of `replicas` tasks updated `parallelism` at a time, once stop-first and once
//! start-first: the time from `service update -d` to every task running on the new spec with the update
//! completed, and the fewest containers running at any sample (every 100 ms, counted by containerd, not by the
//! manager). Then the time from a health check starting to fail (its file removed inside the container with
//! `ctr task exec`) to a replacement task RUNNING, with the check's interval and retries. Figures only.

use crate::{wait_for, Daemon, TaskRow};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(600);

fn running_on_spec(d: &Daemon, name: &str, replicas: usize) -> Result<(), String> {
    let out = d.ok(&["service", "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let state = v[0]["update_status"]["state"].as_str().unwrap_or_default().to_string();
    let tasks = d.tasks(name);
    let running = tasks.iter().filter(|t| t.desired == "running" && t.state == "running").count();
    (state == "completed" && running == replicas)
        .then_some(())
        .ok_or(format!("update {state:?}, {running} of {replicas} running"))
}

/// One rolling update; returns (time to complete, fewest containers running meanwhile).
fn rolling_update(d: &Daemon, name: &str, replicas: usize, parallelism: usize, order: &str) -> (Duration, usize) {
    let done = AtomicBool::new(false);
    let min = AtomicUsize::new(usize::MAX);
    let took = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                min.fetch_min(d.running().len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        d.ok(&[
            "service",
            "update",
            "-d",
            "--update-parallelism",
            &parallelism.to_string(),
            "--update-order",
            order,
            "--env-add",
            &format!("ORDER={order}"),
            name,
        ]);
        wait_for(&format!("{name}: update completed"), DEADLINE, || running_on_spec(d, name, replicas));
        let took = start.elapsed();
        done.store(true, Ordering::Relaxed);
        took
    });
    (took, min.load(Ordering::Relaxed))
}

/// Time from the health check's file disappearing to a replacement RUNNING.
fn unhealthy_to_replacement(d: &Daemon, interval: &str, retries: &str) -> Duration {
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "sick",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        interval,
        "--health-retries",
        retries,
        "--restart-delay",
        "0s",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "touch /tmp/ok; sleep 100000",
    ]);
    let first: TaskRow = wait_for("sick: one running task", DEADLINE, || {
        let tasks = d.tasks("sick");
        tasks.into_iter().find(|t| t.desired == "running" && t.state == "running").ok_or("none yet".to_string())
    });
    let start = Instant::now();
    let o = Command::new("ctr")
        .arg("-a")
        .arg(d.containerd_socket())
        .args(["-n", "shoal", "task", "exec", "--exec-id", "bench-rm", &first.id, "rm", "/tmp/ok"])
        .output()
        .expect("run ctr");
    assert!(o.status.success(), "ctr task exec: {}", String::from_utf8_lossy(&o.stderr));
    wait_for("sick: a replacement running", DEADLINE, || {
        let tasks = d.tasks("sick");
        tasks
            .iter()
            .find(|t| t.id != first.id && t.desired == "running" && t.state == "running")
            .map(|_| ())
            .ok_or(format!("{tasks:?}"))
    });
    start.elapsed()
}

pub fn run(replicas: usize, parallelism: usize) {
    let d = Daemon::start();
    d.init_swarm();
    let name = "rolling";
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        name,
        "--replicas",
        &replicas.to_string(),
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "100000",
    ]);
    wait_for(&format!("{replicas} running"), DEADLINE, || {
        let n = d.running().len();
        (n == replicas).then_some(()).ok_or(format!("{n} running"))
    });
    println!("rolling update of {replicas} replicas, parallelism {parallelism} (real containers):");
    for order in ["stop-first", "start-first"] {
        let (took, min) = rolling_update(&d, name, replicas, parallelism, order);
        println!(
            "  {order:<11}  {:>7.2} s total  {:>6.1} ms per task  fewest running {min} of {replicas}",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / replicas as f64
        );
    }
    d.ok(&["service", "rm", name]);
    let took = unhealthy_to_replacement(&d, "1s", "1");
    println!(
        "health check failing → replacement RUNNING: {:.2} s (interval 1s, retries 1, restart delay 0s)",
        took.as_secs_f64()
    );
}
