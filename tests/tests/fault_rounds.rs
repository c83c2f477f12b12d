//! Randomized faults on real daemons: 3 managers (nodes 1–3) and 2 workers (4, 5) run a 6-replica service while a
//! client keeps creating services through whichever manager is up, and 50 rounds of faults hit the cluster: the
//! leader's daemon SIGKILLed and restarted, a worker's daemon SIGKILLed and restarted, a manager partitioned from
//! every other node and healed, a random daemon restarted. Afterwards every write the client saw acknowledged is
//! there, and no slot of the service runs twice — counted from the containers actually running on the nodes.
//!
//! The round sequence comes from a seed printed at the start; `SHOAL_FAULT_SEED=<n>` replays one, and
//! `SHOAL_FAULT_ROUNDS=<n>` changes the number of rounds (default 50).
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test fault_rounds -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::{output_within, shoal_command, step, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const REPLICAS: usize = 6;

/// A small deterministic generator (xorshift64*): the rounds replay from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillWorker,
    PartitionManager,
    RestartAny,
}

/// The client: creates `w-<n>` services (no replicas) through the managers whose sockets are listed as up, and
/// records the names whose creation was acknowledged.
fn writer(sockets: Arc<Mutex<BTreeMap<usize, PathBuf>>>, stop: Arc<AtomicBool>) -> (BTreeSet<String>, usize) {
    let mut acked = BTreeSet::new();
    let mut attempts = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let up: Vec<PathBuf> = sockets.lock().unwrap().values().cloned().collect();
        if up.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let socket = &up[attempts % up.len()];
        // A new name per attempt: an attempt that timed out may still have been committed.
        let name = format!("w-{attempts}");
        attempts += 1;
        // No registry is reachable from the test's namespaces: skip the digest lookup, which would wait on DNS.
        let args =
            ["service", "create", "-d", "--no-resolve-image", "--name", &name, "--replicas", "0", "busybox", "true"];
        if let Some(o) = output_within(shoal_command(socket, &args), Duration::from_secs(10)) {
            if o.status.success() {
                acked.insert(name);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (acked, attempts)
}

#[test]
fn fifty_rounds_of_faults_lose_no_acknowledged_write_and_run_no_slot_twice() {
    let seed: u64 = std::env::var("SHOAL_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let rounds: usize = std::env::var("SHOAL_FAULT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    eprintln!("fault rounds: {rounds}, seed {seed} (SHOAL_FAULT_SEED={seed} replays them)");
    let mut rng = Rng(seed);

    let mut c = Cluster::start(5);
    let join = c.init_swarm(1);
    c.join_manager(2, &join);
    c.join_manager(3, &join);
    c.join_worker(4, &join);
    c.join_worker(5, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3", "node-4", "node-5"], DEADLINE);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=5 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        &REPLICAS.to_string(),
        "busybox",
        "sleep",
        "100000",
    ]);

    let sockets: Arc<Mutex<BTreeMap<usize, PathBuf>>> =
        Arc::new(Mutex::new((1..=3).map(|n| (n, c.node(n).socket.clone())).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (sockets, stop) = (sockets.clone(), stop.clone());
        std::thread::spawn(move || writer(sockets, stop))
    };

    let started = Instant::now();
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    for round in 1..=rounds {
        let fault = match rng.below(4) {
            0 => Fault::KillLeader,
            1 => Fault::KillWorker,
            2 => Fault::PartitionManager,
            _ => Fault::RestartAny,
        };
        let asked = *sockets.lock().unwrap().keys().next().unwrap_or(&1);
        let leader = c.leader(asked).unwrap_or(1);
        let pause = Duration::from_millis(300 + rng.below(1200));
        step!("round {round}/{rounds}: {fault:?} (leader node-{leader}, {pause:?})");
        match fault {
            Fault::KillLeader | Fault::RestartAny => {
                let (n, down) = match fault {
                    // Down long enough for the others to elect a new leader (0.8–1.4 s).
                    Fault::KillLeader => (leader, pause + Duration::from_millis(1500)),
                    _ => (1 + rng.below(5) as usize, pause),
                };
                sockets.lock().unwrap().remove(&n);
                c.node_mut(n).kill();
                std::thread::sleep(down);
                c.node_mut(n).restart();
                if n <= 3 {
                    sockets.lock().unwrap().insert(n, c.node(n).socket.clone());
                }
            }
            Fault::KillWorker => {
                let n = 4 + rng.below(2) as usize;
                c.node_mut(n).kill();
                std::thread::sleep(pause);
                c.node_mut(n).restart();
            }
            Fault::PartitionManager => {
                let m = 1 + rng.below(3) as usize;
                let others: Vec<usize> = (1..=5).filter(|n| *n != m).collect();
                sockets.lock().unwrap().remove(&m);
                c.partition(&[m], &others);
                std::thread::sleep(pause + Duration::from_secs(1));
                c.heal();
                sockets.lock().unwrap().insert(m, c.node(m).socket.clone());
            }
        }
        *tally
            .entry(match fault {
                Fault::KillLeader => "leader kill",
                Fault::KillWorker => "worker kill",
                Fault::PartitionManager => "partition",
                Fault::RestartAny => "daemon restart",
            })
            .or_default() += 1;
        // The next fault hits a working cluster: some manager lists a leader.
        wait_for("a leader after the round", DEADLINE, || {
            (1..=3).find_map(|n| c.leader(n)).map(|_| ()).ok_or_else(|| "no manager lists a leader".to_string())
        });
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, attempts) = client.join().expect("the client thread");
    eprintln!(
        "{rounds} rounds in {:?} ({tally:?}); the client had {} of {attempts} writes acknowledged",
        started.elapsed(),
        acked.len()
    );
    assert!(!acked.is_empty(), "some writes were acknowledged during the rounds");

    step!("afterwards: every acknowledged write is there, every slot runs exactly once");
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3", "node-4", "node-5"], DEADLINE);
    for m in 1..=3 {
        wait_for(&format!("node-{m} to list every acknowledged service"), DEADLINE, || {
            let names: BTreeSet<String> = c.node(m).service_names().into_iter().collect();
            let missing: Vec<&String> = acked.difference(&names).collect();
            missing.is_empty().then_some(()).ok_or(format!("missing {missing:?}"))
        });
    }
    wait_for("web's slots each running in exactly one container, across all nodes", DEADLINE, || {
        let tasks = c.node(1).tasks("web");
        // slot -> the running containers' tasks, as "node-N: task id (desired/state on the manager's record)".
        let mut per_slot: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for n in 1..=5 {
            for t in c.node(n).running() {
                if let Some(row) = tasks.iter().find(|row| row.id == t.id) {
                    if let Some(slot) = row.slot() {
                        per_slot
                            .entry(slot)
                            .or_default()
                            .push(format!("node-{n}: {} ({}/{} on {})", row.id, row.desired, row.state, row.node));
                    }
                }
            }
        }
        (per_slot.len() == REPLICAS && per_slot.values().all(|n| n.len() == 1))
            .then_some(())
            .ok_or(format!("running containers per slot: {per_slot:?}"))
    });
}
