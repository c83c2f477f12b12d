//! Service lifecycle on real daemons and containers: rolling updates and rollback, health checks, resources, jobs
//! (one node), then placement and global services across nodes (the multi-node harness).
//!
//! Every wait polls observable state (`service ps`, `service inspect`, containerd's own task list) with a deadline
//! and says what is still missing. Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test
//! lifecycle -- --test-threads=1`.

use serde_json::Value;
use shoal_tests::cluster::Cluster;
use shoal_tests::{step, wait_for, Daemon, TaskRow};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// `service inspect NAME` as JSON (the stored object: `spec`, `spec_version`, `update_status`, …).
fn inspect(d: &Daemon, name: &str) -> Value {
    let out = d.ok(&["service", "inspect", name]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("service inspect {name}: {e}\n{out}"));
    v[0].clone()
}

fn args_of(d: &Daemon, name: &str) -> Vec<String> {
    let v = inspect(d, name);
    v["spec"]["task_template"]["container"]["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn running(tasks: &[TaskRow]) -> usize {
    tasks.iter().filter(|t| t.desired == "running" && t.state == "running").count()
}

fn wait_running(d: &Daemon, name: &str, n: usize) {
    wait_for(&format!("{name}: {n} tasks running"), T, || {
        let tasks = d.tasks(name);
        (running(&tasks) == n).then_some(()).ok_or(format!("{tasks:?}"))
    });
}

fn wait_update_state(d: &Daemon, name: &str, want: &str) {
    wait_for(&format!("{name}: update status {want}"), T, || {
        let v = inspect(d, name);
        let state = v["update_status"]["state"].as_str().unwrap_or_default();
        (state == want).then_some(()).ok_or(format!("update_status {}", v["update_status"]))
    });
}

/// Samples `f` every 100 ms on a thread while `work` runs; returns `work`'s result and the smallest and largest
/// sample.
fn sampled_while<R>(f: impl Fn() -> usize + Sync, work: impl FnOnce() -> R) -> (R, usize, usize) {
    let done = AtomicBool::new(false);
    let min = AtomicUsize::new(usize::MAX);
    let max = AtomicUsize::new(0);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let v = f();
                min.fetch_min(v, Ordering::Relaxed);
                max.fetch_max(v, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    });
    (r, min.load(Ordering::Relaxed), max.load(Ordering::Relaxed))
}

/// Containers whose process runs, as containerd lists them (not what the manager believes).
fn containers_running(d: &Daemon) -> usize {
    d.running().len()
}

#[test]
fn updates_rollbacks_health_resources_and_jobs_on_one_node() {
    let d = Daemon::start();
    d.init_swarm();

    step!("rolling update of 10 replicas, parallelism 2, start-first: never fewer than 10 running");
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "web",
        "--replicas",
        "10",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_running(&d, "web", 10);
    let before = inspect(&d, "web")["spec_version"].as_u64().expect("spec_version");
    let (out, min, _) = sampled_while(
        || containers_running(&d),
        || {
            d.ok(&[
                "service",
                "update",
                "--update-parallelism",
                "2",
                "--update-order",
                "start-first",
                "--env-add",
                "VERSION=2",
                "web",
            ])
        },
    );
    eprintln!("    update printed:\n{out}");
    assert!(out.contains("verify: Service converged") || out.contains("converged"), "{out}");
    assert!(min >= 10, "containers running dipped to {min} during a start-first update");
    wait_update_state(&d, "web", "completed");
    let v = inspect(&d, "web");
    assert!(v["spec_version"].as_u64().unwrap() > before, "the spec version moves on a change");
    let env = &v["spec"]["task_template"]["container"]["env"];
    assert!(env.as_array().is_some_and(|e| e.iter().any(|x| x == "VERSION=2")), "{env}");
    let tasks = d.tasks("web");
    assert_eq!(running(&tasks), 10, "{tasks:?}");
    let shut = tasks.iter().filter(|t| t.desired == "shutdown").count();
    assert_eq!(shut, 10, "each slot replaced exactly once: {tasks:?}");

    step!("a replicas-only change replaces nothing; --force replaces everything");
    let replaced_in_first_8 = |d: &Daemon| {
        d.tasks("web").iter().filter(|t| t.desired == "shutdown" && t.slot().is_some_and(|s| s <= 8)).count()
    };
    d.ok(&["service", "update", "--replicas", "8", "web"]);
    wait_running(&d, "web", 8);
    assert_eq!(replaced_in_first_8(&d), 8, "scaling replaced nothing in slots 1–8");
    d.ok(&["service", "update", "--force", "--update-parallelism", "0", "web"]);
    wait_running(&d, "web", 8);
    wait_for("web: every slot replaced once more by --force", T, || {
        let n = replaced_in_first_8(&d);
        (n == 16).then_some(()).ok_or(format!("{n} replaced tasks in slots 1–8"))
    });

    step!("an update to a command that exits 1, failure action rollback: back on the old spec by itself");
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "roll",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_running(&d, "roll", 2);
    d.ok(&[
        "service",
        "update",
        "-d",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "10s",
        "--args",
        "false",
        "roll",
    ]);
    wait_update_state(&d, "roll", "rollback_completed");
    assert_eq!(args_of(&d, "roll"), ["sleep", "1000"], "the spec is the old one again");
    wait_running(&d, "roll", 2);

    step!("failure action pause: the update stops, saying why");
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "halt",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_running(&d, "halt", 2);
    let err = d.fails(&["service", "update", "--update-failure-action", "pause", "--args", "false", "halt"]);
    eprintln!("    update printed on stderr: {err}");
    wait_update_state(&d, "halt", "paused");
    let msg = inspect(&d, "halt")["update_status"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("paused"), "the pause says why: {msg}");
    let pretty = d.ok(&["service", "inspect", "--pretty", "halt"]);
    assert!(pretty.contains("paused"), "{pretty}");

    step!("service rollback goes back to the previous spec");
    d.ok(&["service", "rollback", "-d", "halt"]);
    wait_for("halt back on sleep 1000", T, || {
        let a = args_of(&d, "halt");
        (a == ["sleep", "1000"]).then_some(()).ok_or(format!("{a:?}"))
    });
    wait_running(&d, "halt", 2);

    step!("bad input: clear errors, nothing changed");
    let version = inspect(&d, "halt")["meta"]["version"].clone();
    for (args, needle) in [
        (&["service", "update", "--update-parallelism", "-1", "halt"][..], "update-parallelism"),
        (&["service", "update", "--update-delay", "-5s", "halt"][..], "update-delay"),
        (&["service", "update", "--update-order", "sideways", "halt"][..], "update-order"),
        (&["service", "update", "--update-failure-action", "explode", "halt"][..], "update-failure-action"),
        (&["service", "update", "--update-max-failure-ratio", "1.5", "halt"][..], "ratio"),
        (&["service", "update", "--no-healthcheck", "--health-cmd", "true", "halt"][..], "healthcheck"),
    ] {
        let e = d.fails(args);
        assert!(e.contains(needle), "`{}` should name {needle}: {e}", args.join(" "));
    }
    assert_eq!(inspect(&d, "halt")["meta"]["version"], version, "a refused update changes nothing");

    step!("a health check that starts failing gets the task replaced");
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "sick",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "touch /tmp/ok; sleep 6; rm /tmp/ok; sleep 1000",
    ]);
    wait_running(&d, "sick", 1);
    wait_for("sick: a task failed as unhealthy and a replacement runs", T, || {
        let tasks = d.tasks("sick");
        let unhealthy = tasks.iter().any(|t| t.state == "failed" && t.error.contains("unhealthy"));
        (unhealthy && running(&tasks) == 1).then_some(()).ok_or(format!("{tasks:?}"))
    });

    step!("a never-healthy new version does not take the old one down under start-first");
    d.ok(&[
        "service",
        "create",
        "-q",
        "--name",
        "gate",
        "--replicas",
        "2",
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_running(&d, "gate", 2);
    let old: Vec<String> = d.tasks("gate").into_iter().filter(|t| t.state == "running").map(|t| t.id).collect();
    d.ok(&[
        "service",
        "update",
        "-d",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "pause",
        "--health-cmd",
        "false",
        "--health-retries",
        "1",
        "--health-interval",
        "1s",
        "gate",
    ]);
    wait_update_state(&d, "gate", "paused");
    let tasks = d.tasks("gate");
    for id in &old {
        let t = tasks.iter().find(|t| &t.id == id).expect("old task listed");
        assert_eq!(t.state, "running", "old task {id} still runs: {tasks:?}");
    }

    step!("a memory limit kills a hog");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "hog",
        "--limit-memory",
        "16m",
        "--restart-condition",
        "none",
        "busybox",
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    wait_for("hog: failed, out of memory", T, || {
        let tasks = d.tasks("hog");
        tasks
            .iter()
            .find(|t| t.state == "failed")
            .filter(|t| t.error.to_lowercase().contains("oom") || t.error.contains("137"))
            .map(|_| ())
            .ok_or(format!("{tasks:?}"))
    });

    step!("a replicated job: 6 completions, at most 2 at once, exactly 6 successful tasks");
    let (_, _, most) = sampled_while(
        || {
            // Before the service exists `service ps` fails: that is zero running.
            let out = d.shoal(&["service", "ps", "batch", "--format", "json"]);
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().filter_map(|l| TaskRow::parse(l).ok()).filter(|t| t.state == "running").count()
        },
        || {
            d.ok(&[
                "service",
                "create",
                "-d",
                "--name",
                "batch",
                "--mode",
                "replicated-job",
                "--replicas",
                "6",
                "--max-concurrent",
                "2",
                "busybox",
                "sh",
                "-c",
                "sleep 1",
            ]);
            wait_for("batch: 6 tasks complete", T, || {
                let tasks = d.tasks("batch");
                let complete = tasks.iter().filter(|t| t.state == "complete").count();
                (complete >= 6).then_some(()).ok_or(format!("{tasks:?}"))
            });
        },
    );
    assert!(most <= 2, "{most} job tasks ran at once");
    std::thread::sleep(Duration::from_secs(2));
    let tasks = d.tasks("batch");
    assert_eq!(tasks.iter().filter(|t| t.state == "complete").count(), 6, "exactly 6: {tasks:?}");
    assert_eq!(running(&tasks), 0, "{tasks:?}");
}

#[test]
fn placement_and_global_services_across_nodes() {
    let c = Cluster::start(3);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2"], T);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=3 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    let m = c.node(1);
    m.ok(&["node", "update", "--label-add", "zone=a", "node-1"]);
    m.ok(&["node", "update", "--label-add", "zone=b", "node-2"]);

    step!("spread over two zone labels splits 6 replicas 3/3");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "zoned",
        "--replicas",
        "6",
        "--placement-pref",
        "spread=node.labels.zone",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for("zoned: 3 running on each node", T, || {
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for t in m.tasks("zoned").iter().filter(|t| t.state == "running") {
            *per.entry(t.node.clone()).or_default() += 1;
        }
        (per.get("node-1") == Some(&3) && per.get("node-2") == Some(&3)).then_some(()).ok_or(format!("{per:?}"))
    });

    step!("max-replicas-per-node 1 on 2 nodes with 3 replicas leaves 1 pending with a reason");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "sparse",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for("sparse: 2 running, 1 pending with a reason", T, || {
        let tasks = m.tasks("sparse");
        let pending: Vec<_> = tasks.iter().filter(|t| t.state == "pending").collect();
        let why = pending.first().map(|t| t.error.contains("max replicas per node")).unwrap_or(false);
        (running(&tasks) == 2 && pending.len() == 1 && why).then_some(()).ok_or(format!("{tasks:?}"))
    });

    step!("a global service follows a node joining and a drain");
    m.ok(&["service", "create", "-d", "--name", "everywhere", "--mode", "global", "busybox", "sleep", "1000"]);
    wait_running_on(&c, "everywhere", &["node-1", "node-2"]);
    c.join_worker(3, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3"], T);
    wait_running_on(&c, "everywhere", &["node-1", "node-2", "node-3"]);
    m.ok(&["node", "update", "--availability", "drain", "node-3"]);
    wait_running_on(&c, "everywhere", &["node-1", "node-2"]);
}

/// Waits until `service` runs exactly one task on each of `nodes` and none elsewhere.
fn wait_running_on(c: &Cluster, service: &str, nodes: &[&str]) {
    wait_for(&format!("{service}: one running task on each of {nodes:?}"), T, || {
        let tasks = c.node(1).tasks(service);
        let mut on: Vec<String> =
            tasks.iter().filter(|t| t.desired == "running" && t.state == "running").map(|t| t.node.clone()).collect();
        on.sort();
        (on == nodes).then_some(()).ok_or(format!("{tasks:?}"))
    });
}
