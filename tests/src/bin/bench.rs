//! Convergence benchmark: time from `shoal service create --replicas N` to N running containers, with real
//! containerd, for N = 10, 50, 100. Prints one line per N. Run with `cargo run --release -p shoal-tests --bin bench`
//! after `cargo build --release --workspace --bins` (or use scripts/bench.sh).

use shoal_tests::{wait_for, Daemon};
use std::time::{Duration, Instant};

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10, 50, 100] } else { sizes };
    let d = Daemon::start();
    d.init_swarm();
    println!("{:>6}  {:>12}  {:>14}", "N", "to running", "per task");
    for n in sizes {
        let name = format!("bench{n}");
        let start = Instant::now();
        d.ok(&[
            "service",
            "create",
            "-d",
            "--name",
            &name,
            "--replicas",
            &n.to_string(),
            "--stop-grace-period",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ]);
        wait_for(&format!("{n} running containers"), Duration::from_secs(600), || {
            let r = d.running().len();
            if r == n {
                Ok(())
            } else {
                Err(format!("{r} running"))
            }
        });
        let took = start.elapsed();
        println!("{:>6}  {:>10.2} s  {:>11.1} ms", n, took.as_secs_f64(), took.as_secs_f64() * 1000.0 / n as f64);
        d.ok(&["service", "rm", &name]);
        wait_for("containers to be removed", Duration::from_secs(600), || {
            let c = d.ctr_containers().len();
            if c == 0 {
                Ok(())
            } else {
                Err(format!("{c} left"))
            }
        });
    }
}
