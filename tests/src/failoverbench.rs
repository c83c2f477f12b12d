//! `bench failover`: failure recovery on real daemons and containers, in the multi-node harness (3 managers and 2
//! workers, each `shoald` with its own containerd in its own network namespace). It prints:
//!
//! - join time per node (`swarm join` until it returns: certificate, Raft catch-up for a manager, first session);
//! - leader SIGKILL → the first `service create` accepted by a survivor, and → every slot of a service running
//!   again (the dead leader's node's tasks included);
//! - worker SIGKILL → its tasks RUNNING elsewhere;
//! - worker SIGSTOP → its tasks RUNNING elsewhere (3 missed heartbeats of the default 5 s);
//!
//! each `rounds` times, with the settings used. Figures only; nothing is asserted beyond the cluster working.

use crate::cluster::Cluster;
use crate::wait_for;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const REPLICAS: usize = 10;

fn all_slots_running_off(c: &Cluster, asked: usize, service: &str, off: &str) -> Result<(), String> {
    let tasks = c.node(asked).tasks(service);
    let mut slots: BTreeMap<u64, usize> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.desired == "running" && t.state == "running") {
        if t.node == off {
            return Err(format!("still running on {off}"));
        }
        if let Some(s) = t.slot() {
            *slots.entry(s).or_default() += 1;
        }
    }
    (slots.len() == REPLICAS && slots.values().all(|n| *n == 1)).then_some(()).ok_or(format!("{slots:?}"))
}

/// Creates `name` with REPLICAS replicas through node `asked` and waits until they run, 2 per node (spread), so the
/// node about to fail has tasks to lose.
fn fresh_service(c: &Cluster, asked: usize, name: &str) {
    c.node(asked).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        &REPLICAS.to_string(),
        "busybox",
        "sleep",
        "100000",
    ]);
    wait_for(&format!("{name}: 2 running tasks on each node"), DEADLINE, || {
        let tasks = c.node(asked).tasks(name);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.state == "running") {
            *per.entry(t.node.clone()).or_default() += 1;
        }
        (per.len() == 5 && per.values().all(|n| *n == 2)).then_some(()).ok_or(format!("{per:?}"))
    });
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the measurements `rounds` times each.
pub fn run(rounds: usize) {
    println!("settings: raft heartbeat 100 ms, election timeout 0.4–0.7 s; dispatcher heartbeat 5 s (DOWN after 3 missed), session grace 1 s; {REPLICAS} replicas of a busybox service");
    let mut c = Cluster::start(5);
    let t = Instant::now();
    let join = c.init_swarm(1);
    println!("swarm init: {}", ms(t.elapsed()));
    for (n, manager) in [(2, true), (3, true), (4, false), (5, false)] {
        let t = Instant::now();
        if manager {
            c.join_manager(n, &join);
        } else {
            c.join_worker(n, &join);
        }
        println!("join node-{n} as a {}: {}", if manager { "manager" } else { "worker" }, ms(t.elapsed()));
    }
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3", "node-4", "node-5"], DEADLINE);
    let image = crate::test_image().to_str().expect("utf-8 path");
    for n in 1..=5 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }

    for round in 1..=rounds {
        let asked = (1..=3).find(|n| c.leader(*n).is_some()).unwrap_or(1);
        let leader = wait_for("a leader", DEADLINE, || c.leader(asked).ok_or("none".to_string()));
        let survivor = (1..=3).find(|n| *n != leader).expect("another manager");
        let web = format!("web-{round}");
        fresh_service(&c, survivor, &web);
        let killed = Instant::now();
        c.node_mut(leader).kill();
        let name = format!("after-{round}");
        let args = ["service", "create", "-d", "--name", name.as_str(), "--replicas", "0", "busybox", "true"];
        wait_for("a write accepted after the leader was killed", DEADLINE, || {
            match c.node(survivor).shoal_within(&args, Duration::from_secs(10)) {
                Some(o) if o.status.success() => Ok(()),
                Some(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
                None => Err("no answer".into()),
            }
        });
        let write = killed.elapsed();
        let dead = format!("node-{leader}");
        wait_for("every slot running off the dead leader", DEADLINE, || {
            all_slots_running_off(&c, survivor, &web, &dead)
        });
        println!(
            "round {round}: leader SIGKILL → first write accepted {}, → every slot running again (its node's tasks elsewhere) {}",
            ms(write),
            ms(killed.elapsed())
        );
        c.node_mut(leader).restart();
        c.wait_nodes_ready(survivor, &["node-1", "node-2", "node-3", "node-4", "node-5"], DEADLINE);
        c.node(survivor).ok(&["service", "rm", &web]);

        for (what, freeze) in [("SIGKILL", false), ("SIGSTOP", true)] {
            let worker = 4 + (round % 2);
            let lost = format!("node-{worker}");
            let web = format!("web-{round}-{what}");
            fresh_service(&c, survivor, &web);
            let t = Instant::now();
            if freeze {
                c.node_mut(worker).sigstop();
            } else {
                c.node_mut(worker).kill();
            }
            wait_for("the lost worker's tasks running elsewhere", DEADLINE, || {
                all_slots_running_off(&c, survivor, &web, &lost)
            });
            println!("round {round}: worker {what} → its tasks running elsewhere {}", ms(t.elapsed()));
            if freeze {
                c.node_mut(worker).sigcont();
            } else {
                c.node_mut(worker).restart();
            }
            c.wait_nodes_ready(survivor, &["node-1", "node-2", "node-3", "node-4", "node-5"], DEADLINE);
            c.node(survivor).ok(&["service", "rm", &web]);
        }
    }
}
