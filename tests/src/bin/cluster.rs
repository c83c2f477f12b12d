//! Runs a multi-node test cluster by hand (see `tests/README.md`).
//!
//! `cluster up [N] [--swarm]` starts N nodes (default 3; each a `shoald` with its own containerd in its own
//! network namespace on a shared bridge), with `--swarm` makes node 1 a manager and joins the others as
//! workers, prints how to reach each node, and keeps them until Ctrl-C or SIGTERM, then removes everything. `cluster down` removes what a cluster whose process died (e.g. `kill -9`) left behind.

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use shoal_tests::{bin_dir, cluster::Cluster, netns};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |n: &str| n.parse().with_context(|| format!("node count {n:?} is not a number"));
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up"] => up(3, false),
        ["up", "--swarm"] => up(3, true),
        ["up", n] => up(count(n)?, false),
        ["up", n, "--swarm"] | ["up", "--swarm", n] => up(count(n)?, true),
        ["down"] => {
            netns::sweep_dead();
            println!("removed the namespaces, processes and temp dirs of clusters whose process is gone");
            Ok(())
        }
        _ => bail!("usage: cluster up [N] [--swarm] | cluster down"),
    }
}

fn up(n: usize, swarm: bool) -> anyhow::Result<()> {
    if !(1..=250).contains(&n) {
        bail!("node count must be 1 to 250, not {n}");
    }
    // Blocked before any thread starts (threads inherit the mask), so the signals wait for `wait` below
    // instead of killing the process before the cluster is cleaned up.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("block SIGINT and SIGTERM")?;

    let cluster = Cluster::start(n);
    if swarm {
        let join = cluster.init_swarm(1);
        for worker in 2..=n {
            cluster.join_worker(worker, &join);
        }
        let names: Vec<&str> = cluster.nodes().iter().map(|node| node.hostname.as_str()).collect();
        cluster.wait_nodes_ready(1, &names, std::time::Duration::from_secs(60));
    }
    let shoal = bin_dir().join("shoal");
    println!("cluster {}: {n} node(s) on 10.213.{}.0/24", cluster.id(), cluster.subnet());
    for node in cluster.nodes() {
        println!("\nnode {} ({}): {}  (network namespace {})", node.number, node.hostname, node.ip, node.netns());
        println!("  {} -H unix://{} info", shoal.display(), node.socket.display());
        println!("  ip netns exec {} ip addr", node.netns());
        println!("  log: {}", node.log_path().display());
    }
    println!("\nCtrl-C (or SIGTERM to pid {}) stops the daemons and removes everything.", std::process::id());

    let sig = signals.wait().context("wait for SIGINT or SIGTERM")?;
    eprintln!("{sig}: tearing down cluster {}", cluster.id());
    drop(cluster);
    Ok(())
}
