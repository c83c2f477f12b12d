//! `bench raft`: three managers in this process (real `SwarmNode`s: Raft on disk, the mTLS listener on loopback,
//! `TestExecutor` agents), measuring what a multi-manager control plane costs and how fast it recovers:
//!
//! - join time per manager (certificate, learner catch-up, promotion to voter, first session);
//! - write throughput and latency (p50/p99) through the leader, and through a follower (forwarded);
//! - leader failover: the leader stops (its listener closes, as when its process is killed) → the first write
//!   accepted by a survivor, repeated several times.
//!
//! Figures are printed, never asserted; the settings used are printed with them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::api::membership::{SwarmInitRequest, SwarmJoinRequest};
use swarm::api::NodeAvailability;
use swarm::manager::raft::RaftSettings;
use swarm::manager::store::{Store, StoreError};
use swarm::node::{NodeConfig, SwarmNode};
use swarm::testing::TestExecutor;

type Node = SwarmNode<TestExecutor>;

/// What to run.
#[derive(Debug, Clone)]
pub struct RaftBenchConfig {
    /// Writes per throughput phase.
    pub writes: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Leader failovers to time.
    pub failovers: usize,
}

impl Default for RaftBenchConfig {
    fn default() -> Self {
        RaftBenchConfig { writes: 2_000, writers: 16, failovers: 5 }
    }
}

fn node(dir: &Path, exec: &TestExecutor) -> Node {
    SwarmNode::new(NodeConfig { state_dir: dir.join("swarm"), default_advertise_ip: None }, Arc::new(exec.clone()))
}

async fn write_one(store: &Store, i: usize) -> Result<(), StoreError> {
    let svc = swarm::testing::service(&swarm::api::new_id(), &format!("bench-{}-{i}", swarm::api::new_id()), 0);
    store.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `writes` writes by `writers` concurrent writers on `store`: (writes per second, p50 ms, p99 ms).
async fn throughput(store: &Store, writes: usize, writers: usize) -> Result<(f64, f64, f64), StoreError> {
    let start = Instant::now();
    let per = writes / writers;
    let mut handles = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                write_one(&store, w * per + i).await?;
                lat.push(t.elapsed());
            }
            Ok::<_, StoreError>(lat)
        }));
    }
    let mut all = Vec::with_capacity(writes);
    for h in handles {
        all.extend(h.await.expect("writer task")?);
    }
    let took = start.elapsed();
    all.sort();
    Ok((all.len() as f64 / took.as_secs_f64(), pct(&all, 0.5), pct(&all, 0.99)))
}

/// The manager a majority of `nodes` names as leader (a manager that just restarted may still believe in a
/// leadership that ended).
async fn leader(nodes: &[Node]) -> Option<usize> {
    let mut named: Vec<String> = Vec::new();
    let mut own: Vec<String> = Vec::new();
    for n in nodes {
        own.push(n.info().await.remote_managers.first().cloned().unwrap_or_default());
        if let Some(addr) = n.raft().await.and_then(|r| r.leader_addr()) {
            named.push(addr);
        }
    }
    let agreed = named.iter().find(|a| named.iter().filter(|b| b == a).count() * 2 > nodes.len())?;
    own.iter().position(|a| a == agreed)
}

pub async fn run(cfg: &RaftBenchConfig) -> Result<(), String> {
    let s = RaftSettings::default();
    println!(
        "raft settings: heartbeat {:?}, election timeout {:?}–{:?}, snapshot every {} entries",
        s.heartbeat_interval, s.election_timeout_min, s.election_timeout_max, s.snapshot_interval
    );
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("temp dir")).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("bench-{i}"))).collect();
    let nodes: Vec<Node> = (0..3).map(|i| node(dirs[i].path(), &execs[i])).collect();
    let e = |e: swarm::node::NodeError| e.to_string();
    nodes[0].init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), ..Default::default() }).await.map_err(e)?;
    let addr0 = nodes[0].info().await.remote_managers[0].clone();
    let token = nodes[0].store().expect("a manager").view(|v| v.cluster().unwrap().root_ca.join_tokens.manager.clone());
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let t = Instant::now();
        n.join(SwarmJoinRequest {
            remote_addr: addr0.clone(),
            join_token: token.clone(),
            listen_addr: "127.0.0.1:0".into(),
            advertise_addr: "127.0.0.1".into(),
            availability: NodeAvailability::Active,
        })
        .await
        .map_err(e)?;
        println!("join manager {i}: {:.0} ms (certificate, catch-up, voter, first session)", ms(t.elapsed()));
    }

    let lead = leader(&nodes).await.ok_or("no leader")?;
    let follower = (lead + 1) % 3;
    for (what, i) in [("leader", lead), ("follower (forwarded)", follower)] {
        let store = nodes[i].store().ok_or("no store")?;
        let (rate, p50, p99) = throughput(&store, cfg.writes, cfg.writers).await.map_err(|e| e.to_string())?;
        println!(
            "writes via the {what}: {rate:.0}/s, latency p50 {p50:.1} ms, p99 {p99:.1} ms ({} writes, {} writers, 3 managers)",
            cfg.writes, cfg.writers
        );
    }

    let mut times = Vec::new();
    for round in 0..cfg.failovers {
        let lead = loop {
            if let Some(l) = leader(&nodes).await {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let survivor = nodes[(lead + 1) % 3].store().ok_or("no store")?;
        let t = Instant::now();
        nodes[lead].shutdown().await;
        let mut i = 0;
        loop {
            i += 1;
            match write_one(&survivor, i).await {
                Ok(()) => break,
                Err(_) if t.elapsed() < Duration::from_secs(30) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(format!("no write accepted 30 s after the leader stopped: {e}")),
            }
        }
        let took = t.elapsed();
        println!("failover {}: leader stopped → first write accepted: {:.0} ms", round + 1, ms(took));
        times.push(took);
        if !nodes[lead].resume().await.map_err(e)? {
            return Err("the stopped manager did not resume".into());
        }
    }
    times.sort();
    println!(
        "failover over {} rounds: median {:.0} ms, worst {:.0} ms",
        times.len(),
        pct(&times, 0.5),
        times.last().map(|d| ms(*d)).unwrap_or(0.0)
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
