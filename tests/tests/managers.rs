//! Several managers on real daemons: nodes 1–3 are managers, 4 and 5 workers, each `shoald` with its own containerd
//! in its own network namespace. One story, in steps, so the five daemons start once:
//!
//! 1. managers join by token; `node ls` shows one Leader and two Reachable; a 10-replica service spreads 2 per node;
//! 2. the leader's daemon is SIGKILLed: another manager is elected and a `service create` on a survivor succeeds;
//!    every slot runs exactly once (the dead node's tasks elsewhere); the old leader restarts and catches up;
//! 3. a follower is partitioned away: it cannot write ("no leader: quorum lost"); healed, it catches up;
//! 4. every manager restarts: the services and their tasks are intact;
//! 5. two of three managers are killed: writes fail with the quorum-loss error, reads answer; `swarm init
//!    --force-new-cluster` on the survivor keeps the services and takes writes again.
//!
//! Timings are printed, never asserted. Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test
//! managers -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::{step, wait_for};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);

/// Running tasks of `service` per slot, as node `asked` lists them.
fn running_per_slot(c: &Cluster, asked: usize, service: &str) -> BTreeMap<u64, usize> {
    let mut slots = BTreeMap::new();
    for t in c.node(asked).tasks(service) {
        if t.desired == "running" && t.state == "running" {
            if let Some(s) = t.slot() {
                *slots.entry(s).or_insert(0) += 1;
            }
        }
    }
    slots
}

/// Waits until `service` runs `n` slots exactly once each, none on `not_on` (a hostname), as node `asked` sees it.
fn wait_slots(c: &Cluster, asked: usize, service: &str, n: usize, not_on: Option<&str>) {
    wait_for(&format!("{service}: {n} slots running once each on node {asked}'s view"), DEADLINE, || {
        let tasks = c.node(asked).tasks(service);
        let running: Vec<_> = tasks.iter().filter(|t| t.desired == "running" && t.state == "running").collect();
        let slots = running_per_slot(c, asked, service);
        let misplaced = not_on.is_some_and(|h| running.iter().any(|t| t.node == h));
        if slots.len() == n && slots.values().all(|c| *c == 1) && !misplaced {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });
}

/// Tries `service create -d --name NAME` on node `on` until it succeeds; returns how long that took.
fn create_until_accepted(c: &Cluster, on: usize, name: &str, replicas: &str) -> Duration {
    let start = Instant::now();
    let args = ["service", "create", "-d", "--name", name, "--replicas", replicas, "busybox", "sleep", "1000"];
    wait_for(&format!("node {on} to accept `service create {name}`"), DEADLINE, || {
        match c.node(on).shoal_within(&args, Duration::from_secs(10)) {
            Some(o) if o.status.success() => Ok(()),
            Some(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            None => Err("no answer within 10 s".into()),
        }
    });
    start.elapsed()
}

fn wait_leader(c: &Cluster, asked: usize, not: Option<usize>) -> usize {
    wait_for(&format!("node {asked} to list one leader"), DEADLINE, || {
        c.leader(asked).filter(|l| Some(*l) != not).ok_or_else(|| format!("{:?}", c.node_rows(asked)))
    })
}

#[test]
fn three_managers_and_two_workers_survive_leader_loss_partitions_restarts_and_quorum_loss() {
    let mut c = Cluster::start(5);
    let all = ["node-1", "node-2", "node-3", "node-4", "node-5"];

    step!("node 1 inits; nodes 2 and 3 join as managers, 4 and 5 as workers");
    let join = c.init_swarm(1);
    for (n, manager) in [(2, true), (3, true), (4, false), (5, false)] {
        let t = Instant::now();
        if manager {
            c.join_manager(n, &join);
        } else {
            c.join_worker(n, &join);
        }
        eprintln!("    node {n} joined as a {} in {:?}", if manager { "manager" } else { "worker" }, t.elapsed());
    }
    c.wait_nodes_ready(1, &all, DEADLINE);
    wait_for("one Leader and two Reachable managers", DEADLINE, || {
        let rows = c.node_rows(1);
        let status: Vec<&str> = rows.iter().map(|r| r.manager_status.as_str()).collect();
        let leaders = status.iter().filter(|s| **s == "Leader").count();
        let reachable = status.iter().filter(|s| **s == "Reachable").count();
        (leaders == 1 && reachable == 2).then_some(()).ok_or(format!("{rows:?}"))
    });
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=5 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }

    step!("a 10-replica service spreads 2 per node");
    c.node(2).ok(&["service", "create", "-d", "--name", "web", "--replicas", "10", "busybox", "sleep", "1000"]);
    wait_for("2 running tasks of web on each of the 5 nodes", DEADLINE, || {
        let tasks = c.node(1).tasks("web");
        let per: BTreeMap<String, usize> =
            tasks.iter().filter(|t| t.state == "running").fold(BTreeMap::new(), |mut m, t| {
                *m.entry(t.node.clone()).or_insert(0) += 1;
                m
            });
        (per.len() == 5 && per.values().all(|n| *n == 2)).then_some(()).ok_or(format!("{per:?}"))
    });

    step!("SIGKILL the leader's daemon: a new leader, a write accepted, every slot once, none on the dead node");
    let old = wait_leader(&c, 1, None);
    let survivor = if old == 1 { 2 } else { 1 };
    let killed = Instant::now();
    c.node_mut(old).kill();
    let took = create_until_accepted(&c, survivor, "api", "2");
    eprintln!("    leader node-{old} killed → `service create` accepted on node-{survivor} after {took:?}");
    let new = wait_leader(&c, survivor, Some(old));
    eprintln!("    node-{new} leads ({:?} after the kill)", killed.elapsed());
    let dead = format!("node-{old}");
    wait_slots(&c, survivor, "web", 10, Some(&dead));
    wait_slots(&c, survivor, "api", 2, None);
    eprintln!("    every slot running once, elsewhere than {dead}, {:?} after the kill", killed.elapsed());

    step!("the old leader restarts and catches up");
    c.node_mut(old).restart();
    wait_for(&format!("node-{old} to list service api"), DEADLINE, || {
        let names = c.node(old).service_names();
        names.iter().any(|n| n == "api").then_some(()).ok_or(format!("{names:?}"))
    });
    c.wait_nodes_ready(new, &all, DEADLINE);

    step!("partition a follower: it cannot write; healed, it catches up");
    let leader = wait_leader(&c, new, None);
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let others: Vec<usize> = (1..=5).filter(|n| *n != follower).collect();
    c.partition(&[follower], &others);
    // Let it notice the silence (an election it cannot win).
    std::thread::sleep(Duration::from_secs(2));
    let err = c.node(follower).fails(&["service", "create", "-d", "--name", "cut-off", "busybox", "sleep", "1"]);
    assert!(err.contains("no leader: quorum lost"), "a partitioned manager says why it cannot write: {err}");
    c.node(leader).ok(&["service", "create", "-d", "--name", "during", "busybox", "sleep", "1000"]);
    c.heal();
    wait_for(&format!("node-{follower} to see service during after the heal"), DEADLINE, || {
        let names = c.node(follower).service_names();
        names.iter().any(|n| n == "during").then_some(()).ok_or(format!("{names:?}"))
    });

    step!("restart every manager: the services and their tasks are intact");
    let before: Vec<String> = c.node(leader).service_names();
    for n in 1..=3 {
        c.node_mut(n).kill();
    }
    for n in 1..=3 {
        c.node_mut(n).restart();
    }
    wait_for("the managers to answer with every service", DEADLINE, || {
        let names = c.node(1).service_names();
        (names == before).then_some(()).ok_or(format!("{names:?} (want {before:?})"))
    });
    wait_leader(&c, 1, None);
    wait_slots(&c, 1, "web", 10, None);

    step!("two of three managers die: writes fail with the quorum-loss error; --force-new-cluster recovers");
    let leader = wait_leader(&c, 1, None);
    let keep = if leader == 3 { 2 } else { 3 };
    for n in (1..=3).filter(|n| *n != keep) {
        c.node_mut(n).kill();
    }
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let err = c.node(keep).fails(&["service", "create", "-d", "--name", "lost", "busybox", "sleep", "1"]);
    eprintln!("    write with quorum lost refused after {:?}: {}", t.elapsed(), err.trim());
    assert!(err.contains("no leader: quorum lost (reachable managers: "), "{err}");
    let names = c.node(keep).service_names();
    assert!(names.contains(&"web".to_string()), "reads still answer: {names:?}");
    c.node(keep).ok(&["swarm", "init", "--force-new-cluster"]);
    create_until_accepted(&c, keep, "recovered", "1");
    let names = c.node(keep).service_names();
    for s in ["web", "api", "during", "recovered"] {
        assert!(names.iter().any(|n| n == s), "{s} kept after --force-new-cluster: {names:?}");
    }
}
