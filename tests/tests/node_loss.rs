//! Node loss on real daemons: a manager (node 1) and two workers (nodes 2 and 3) run a 4-replica service on the
//! workers, 2 each. A SIGKILLed worker daemon is DOWN after the session grace and its slots run on the other
//! worker; restarted, it stops the containers that were replaced. A SIGSTOPped worker is DOWN after 3 missed
//! heartbeats and likewise replaced; thawed, it stops its replaced containers. Timings are printed, and only
//! generous deadlines are asserted.
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test node_loss -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::{step, wait_for};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until node 1 shows the 4 slots of `web` running on `host` and `host`'s containerd runs exactly 4
/// containers, while node `lost` is not Ready.
fn wait_all_on(c: &Cluster, host: usize, lost: usize, since: Instant) {
    let hostname = format!("node-{host}");
    wait_for(&format!("the 4 slots of web to run on {hostname}"), DEADLINE, || {
        let tasks = c.node(1).tasks("web");
        let running: Vec<_> = tasks.iter().filter(|t| t.desired == "running" && t.state == "running").collect();
        let on_host = running.iter().filter(|t| t.node == hostname).count();
        let containers = c.node(host).running().len();
        let lost_row = c.node_rows(1).into_iter().find(|r| r.hostname == format!("node-{lost}"));
        if running.len() == 4
            && on_host == 4
            && containers == 4
            && lost_row.as_ref().is_some_and(|r| r.status == "Down")
        {
            Ok(())
        } else {
            Err(format!("tasks {tasks:?}; {containers} containers on {hostname}; node-{lost}: {lost_row:?}"))
        }
    });
    eprintln!("    node-{lost}'s tasks run on {hostname} {:?} after it was lost", since.elapsed());
}

/// Waits until node `back` is Ready again and runs no container (its replaced tasks stopped).
fn wait_back_and_stopped(c: &Cluster, back: usize, since: Instant) {
    let hostname = format!("node-{back}");
    wait_for(&format!("{hostname} Ready again with its replaced containers stopped"), DEADLINE, || {
        let row = c.node_rows(1).into_iter().find(|r| r.hostname == hostname);
        let containers = c.node(back).running();
        if row.as_ref().is_some_and(|r| r.status == "Ready") && containers.is_empty() {
            Ok(())
        } else {
            Err(format!("{row:?}; still running: {containers:?}"))
        }
    });
    eprintln!("    {hostname} back, its replaced containers stopped {:?} after it returned", since.elapsed());
}

#[test]
fn a_killed_or_frozen_worker_is_replaced_and_stops_its_replaced_containers_when_back() {
    let mut c = Cluster::start(3);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.join_worker(3, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3"], DEADLINE);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=3 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }

    step!("4 replicas on node.role==worker spread 2/2 over nodes 2 and 3");
    c.node(1).ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--constraint",
        "node.role==worker",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for("2 running tasks on each worker", DEADLINE, || {
        let tasks = c.node(1).tasks("web");
        let on = |h: &str| tasks.iter().filter(|t| t.state == "running" && t.node == h).count();
        let (n2, n3) = (c.node(2).running().len(), c.node(3).running().len());
        if on("node-2") == 2 && on("node-3") == 2 && n2 == 2 && n3 == 2 {
            Ok(())
        } else {
            Err(format!("tasks {tasks:?}; containers: node-2 {n2}, node-3 {n3}"))
        }
    });

    step!("SIGKILL node 2's daemon: its slots run on node 3 (goal: within 3s)");
    let lost = Instant::now();
    c.node_mut(2).kill();
    wait_all_on(&c, 3, 2, lost);

    step!("node 2's daemon starts again: it stops the containers that were replaced");
    let back = Instant::now();
    c.node_mut(2).restart();
    wait_back_and_stopped(&c, 2, back);

    step!("SIGSTOP node 3's daemon: after 3 missed heartbeats its slots run on node 2 (goal: within 15s + 2s)");
    let lost = Instant::now();
    c.node_mut(3).sigstop();
    wait_all_on(&c, 2, 3, lost);

    step!("SIGCONT node 3: it stops the containers that were replaced");
    let back = Instant::now();
    c.node_mut(3).sigcont();
    wait_back_and_stopped(&c, 3, back);
}
