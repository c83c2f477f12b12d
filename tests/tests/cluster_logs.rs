//! `service logs` on real daemons across nodes: a manager (node 1) and a worker (node 2) run a 2-replica service,
//! one task on each; `service logs` on the manager shows both tasks' lines, each prefixed with its task and the
//! node it ran on. With the worker's daemon killed (DOWN), the manager's lines still come and the worker is named
//! on stderr, and the command fails as Docker's does with an incomplete stream.
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test cluster_logs -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::{step, wait_for};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn service_logs_on_the_manager_show_both_nodes_tasks() {
    let mut c = Cluster::start(2);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2"], DEADLINE);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=2 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }

    step!("2 replicas, one on each node, each writing a line naming its container");
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "echo line-$(hostname); sleep 100000",
    ]);
    let tasks = wait_for("one running talk task on each node", DEADLINE, || {
        let tasks = c.node(1).tasks("talk");
        let running: Vec<_> = tasks.into_iter().filter(|t| t.state == "running").collect();
        let on = |h: &str| running.iter().filter(|t| t.node == h).count();
        if running.len() == 2 && on("node-1") == 1 && on("node-2") == 1 {
            Ok(running)
        } else {
            Err(format!("{running:?}"))
        }
    });

    step!("service logs on the manager: both tasks' lines, each with its task and node");
    let want: Vec<String> = {
        let mut w: Vec<String> = tasks
            .iter()
            .map(|t| {
                let short = &t.id[..12];
                format!("{}.{short}@{}    | line-{short}", t.name, t.node)
            })
            .collect();
        w.sort();
        w
    };
    wait_for("both tasks' lines in service logs on node 1", DEADLINE, || {
        let o = c.node(1).shoal(&["service", "logs", "talk"]);
        let out = String::from_utf8_lossy(&o.stdout);
        let mut got: Vec<String> = out.lines().map(str::to_string).collect();
        got.sort();
        if o.status.success() && got == want {
            Ok(())
        } else {
            Err(format!("status {:?}; stdout:\n{out}stderr:\n{}", o.status, String::from_utf8_lossy(&o.stderr)))
        }
    });

    step!("the worker's daemon is killed: the manager's line still comes, node-2 is named");
    c.node_mut(2).kill();
    wait_for("node-2 Down", DEADLINE, || {
        let row = c.node_rows(1).into_iter().find(|r| r.hostname == "node-2");
        if row.as_ref().is_some_and(|r| r.status == "Down") {
            Ok(())
        } else {
            Err(format!("{row:?}"))
        }
    });
    let mine = want.iter().find(|l| l.contains("@node-1 ")).expect("node-1's line").clone();
    let o = c.node(1).shoal(&["service", "logs", "talk"]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(out.lines().any(|l| l == mine), "node-1's line is still shown:\n{out}");
    assert!(!out.contains("@node-2"), "nothing from the dead node:\n{out}");
    assert!(
        err.contains("error from daemon in stream: Error grabbing logs: node node-2 is down"),
        "the dead node is named:\n{err}"
    );
    assert!(!o.status.success(), "an incomplete stream fails the command");
}
