//! Convergence benchmark: time from `shoal service create --replicas N` to N running containers, with real
//! containerd, for N = 10, 50, 100 — against the same N containers started straight through containerd with
//! `ctr run -d` (no orchestration) one after another and 4 at a time, measured in the same run on the same
//! containerd; with the containerd calls `shoald` made per task (see `shoal_tests::nodebench`), and then the memory
//! the node adds per container with 200 tasks running (`--memory N` for another count, `--memory 0` to skip).
//! Run: `cargo build --release --workspace --bins && target/release/bench [N...]`.
//!
//! `bench scale [--nodes N] [--services S] [--replicas R] [--timeout SECS]` runs the scale simulator instead (see
//! `shoal_tests::scale`): a real manager in this process and N simulated nodes in a child `bench scale-agents`;
//! default preset is the small one CI runs.
//!
//! `bench failover [--rounds N]` measures recovery on real daemons in the multi-node harness (see
//! `shoal_tests::failoverbench`): join time per node, leader SIGKILL → first write and → tasks back, worker SIGKILL
//! and SIGSTOP → tasks elsewhere.
//!
//! `bench raft [--writes N] [--writers N] [--failovers N]` measures three managers in this process (see
//! `shoal_tests::raftbench`): join time, write throughput and p50/p99 latency, leader failover.
//!
//! `bench update [--replicas N] [--parallelism P]` measures rolling updates (stop-first and start-first) and
//! health-driven replacement on a real daemon (see `shoal_tests::updatebench`); default 50 replicas, 10 at a time.
//!
//! `bench net [--rounds N]` measures the dataplane on 2 real daemons (see `shoal_tests::netbench`): connections/s
//! and setup through a VIP and the routing mesh against direct, DNS queries/s and p99, new task → reachable.
//!
//! `bench pull [--rounds N]` times pulling a 5-layer, 50 MiB image from a local registry, Shoal against
//! `ctr image pull` (see `shoal_tests::pullbench`); default 3 rounds.

use shoal_tests::{wait_for, Daemon};
use std::process::Command;
use std::time::{Duration, Instant};

fn ctr(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("ctr").arg("-a").arg(d.containerd_socket()).args(["-n", "shoal"]).args(args).output().expect("run ctr")
}

/// Starts `n` busybox containers with `ctr run -d`, `parallel` at a time; returns the time taken.
fn ctr_baseline(d: &Daemon, n: usize, parallel: usize) -> Duration {
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = format!("bench-ctr-{n}-{i}");
                let o = ctr(d, &["run", "-d", "docker.io/library/busybox:latest", &id, "sleep", "100000"]);
                assert!(o.status.success(), "ctr run: {}", String::from_utf8_lossy(&o.stderr));
            });
        }
    });
    let took = start.elapsed();
    for i in 0..n {
        let id = format!("bench-ctr-{n}-{i}");
        ctr(d, &["task", "kill", "-s", "SIGKILL", &id]);
        for _ in 0..50 {
            if ctr(d, &["task", "rm", &id]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ctr(d, &["container", "rm", &id]);
    }
    took
}

/// `bench scale …`: parses the flags, runs the simulator, exits non-zero on a correctness violation.
fn scale(args: &[String]) -> anyhow::Result<()> {
    let mut cfg = shoal_tests::scale::ScaleConfig::smoke(std::env::current_exe()?);
    let mut it = args.iter();
    let mut timeout = None;
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|_| anyhow::anyhow!("invalid value {value:?} for {flag}: not a number"))?;
        match flag.as_str() {
            "--nodes" if n >= 1 => cfg.nodes = n as usize,
            "--services" if n >= 1 => cfg.services = n as usize,
            "--replicas" if n >= 1 => cfg.replicas = n,
            "--timeout" if n >= 1 => timeout = Some(Duration::from_secs(n)),
            "--nodes" | "--services" | "--replicas" | "--timeout" => anyhow::bail!("{flag} must be at least 1"),
            other => anyhow::bail!("unknown flag {other:?} (expected --nodes, --services, --replicas, --timeout)"),
        }
    }
    // A phase's budget grows with the run: on two cores a million tasks take minutes to create, where the smoke
    // presets take seconds. Five minutes, or a second per thousand tasks when that is longer.
    let tasks = cfg.services as u64 * cfg.replicas;
    cfg.phase_timeout = timeout.unwrap_or_else(|| Duration::from_secs((tasks / 1000).max(300)));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(shoal_tests::scale::run(&cfg))?;
    Ok(())
}

/// `bench raft [--writes N] [--writers N] [--failovers N]`: three in-process managers.
fn raft(args: &[String]) -> anyhow::Result<()> {
    let mut cfg = shoal_tests::raftbench::RaftBenchConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        let n: usize =
            value.parse().map_err(|_| anyhow::anyhow!("invalid value {value:?} for {flag}: not a number"))?;
        anyhow::ensure!(n >= 1, "{flag} must be at least 1");
        match flag.as_str() {
            "--writes" => cfg.writes = n,
            "--writers" => cfg.writers = n,
            "--failovers" => cfg.failovers = n,
            other => anyhow::bail!("unknown flag {other:?} (expected --writes, --writers, --failovers)"),
        }
    }
    anyhow::ensure!(cfg.writers <= cfg.writes, "--writers must not exceed --writes");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(shoal_tests::raftbench::run(&cfg)).map_err(|e| anyhow::anyhow!(e))
}

/// The allocator `shoald` ships with (see its `main.rs`), so the simulator measures the manager as it runs there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The manager without transparent huge pages, as `shoald` runs (see its `main.rs`); the simulated nodes, a
    // child that inherits the setting, as any other process.
    let _ = nix::sys::prctl::set_thp_disable(args.first().map(String::as_str) != Some("scale-agents"));
    // Off unless asked: `RUST_LOG=warn bench scale …` shows what the in-process manager logs (nodes found down,
    // failed passes) on stderr, beside the figures on stdout.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.first().map(String::as_str) == Some("failover") {
        let rounds = match args.get(1..).unwrap_or_default() {
            [] => 3,
            [flag, n] if flag == "--rounds" => n.parse().unwrap_or_else(|_| {
                eprintln!("bench failover: invalid value {n:?} for --rounds: not a number");
                std::process::exit(2)
            }),
            other => {
                eprintln!("bench failover: unknown arguments {other:?} (expected --rounds N)");
                std::process::exit(2)
            }
        };
        shoal_tests::failoverbench::run(rounds);
        return;
    }
    if args.first().map(String::as_str) == Some("update") {
        let (mut replicas, mut parallelism) = (50usize, 10usize);
        let mut it = args[1..].iter();
        while let Some(flag) = it.next() {
            let n = it.next().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n >= 1);
            match (flag.as_str(), n) {
                ("--replicas", Some(n)) => replicas = n,
                ("--parallelism", Some(n)) => parallelism = n,
                (f @ ("--replicas" | "--parallelism"), None) => {
                    eprintln!("bench update: {f} needs a number of at least 1");
                    std::process::exit(2)
                }
                (other, _) => {
                    eprintln!("bench update: unknown flag {other:?} (expected --replicas, --parallelism)");
                    std::process::exit(2)
                }
            }
        }
        shoal_tests::updatebench::run(replicas, parallelism);
        return;
    }
    if args.first().map(String::as_str) == Some("pull") {
        let rounds = match args.get(1..).unwrap_or_default() {
            [] => 3,
            [flag, n] if flag == "--rounds" => n.parse().ok().filter(|n| *n >= 1).unwrap_or_else(|| {
                eprintln!("bench pull: invalid value {n:?} for --rounds: a number of at least 1");
                std::process::exit(2)
            }),
            other => {
                eprintln!("bench pull: unknown arguments {other:?} (expected --rounds N)");
                std::process::exit(2)
            }
        };
        shoal_tests::pullbench::run(rounds);
        return;
    }
    if args.first().map(String::as_str) == Some("net") {
        match args.get(1..).unwrap_or_default() {
            [] => shoal_tests::netbench::run(5),
            [flag, n] if flag == "--rounds" => match n.parse() {
                Ok(r) if r >= 1 => shoal_tests::netbench::run(r),
                _ => {
                    eprintln!("bench net: invalid value {n:?} for --rounds: a number of at least 1");
                    std::process::exit(2)
                }
            },
            other => {
                eprintln!("bench net: unknown arguments {other:?} (expected --rounds N)");
                std::process::exit(2)
            }
        }
        return;
    }
    if args.first().map(String::as_str) == Some("raft") {
        if let Err(e) = raft(&args[1..]) {
            eprintln!("bench raft: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("scale-agents") {
        // The simulated nodes of a `bench scale` run, in their own process (started by it, driven over stdin).
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        if let Err(e) = rt.block_on(shoal_tests::scale::host_agents()) {
            eprintln!("bench scale-agents: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("scale") {
        if let Err(e) = scale(&args[1..]) {
            eprintln!("bench scale: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut memory_tasks = 200;
    let mut sizes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), a.parse::<usize>()) {
            ("--memory", _) => memory_tasks = it.next().and_then(|v| v.parse().ok()).unwrap_or(memory_tasks),
            (_, Ok(n)) => sizes.push(n),
            _ => {}
        }
    }
    let sizes = if sizes.is_empty() { vec![10, 50, 100] } else { sizes };
    let d = Daemon::start();
    d.init_swarm();
    // First, on a fresh daemon: its growth is then what the tasks added.
    if memory_tasks > 0 {
        let before = shoal_tests::nodebench::node_memory(&d);
        let replicas = memory_tasks.to_string();
        let create = ["service", "create", "-d", "--name", "benchmem", "--replicas", &replicas];
        d.ok(&[&create[..], &["--stop-grace-period", "1s", "busybox", "sleep", "100000"]].concat());
        wait_for(&format!("{memory_tasks} running containers"), Duration::from_secs(900), || {
            let r = d.running().len();
            if r == memory_tasks {
                Ok(())
            } else {
                Err(format!("{r} running"))
            }
        });
        // Let the loggers and the daemons settle after the burst.
        std::thread::sleep(Duration::from_secs(5));
        shoal_tests::nodebench::print_memory(memory_tasks, &before, &shoal_tests::nodebench::node_memory(&d));
        d.ok(&["service", "rm", "benchmem"]);
        wait_for("containers to be removed", Duration::from_secs(600), || match d.ctr_containers().len() {
            0 => Ok(()),
            c => Err(format!("{c} left")),
        });
    }
    println!(
        "{:>5}  {:>14}  {:>12}  {:>16}  {:>8}  {:>16}  {:>8}  {:>12}",
        "N", "shoal (create)", "per task", "ctr run -d (seq)", "ratio", "ctr run -d (4x)", "ratio", "calls/task"
    );
    let mut calls = Vec::new();
    for n in sizes {
        let name = format!("bench{n}");
        let calls_before = shoal_tests::nodebench::containerd_calls(&d);
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
        let per_task =
            shoal_tests::nodebench::calls_per_task(&calls_before, &shoal_tests::nodebench::containerd_calls(&d), n);
        d.ok(&["service", "rm", &name]);
        wait_for("containers to be removed", Duration::from_secs(600), || {
            let c = d.ctr_containers().len();
            if c == 0 {
                Ok(())
            } else {
                Err(format!("{c} left"))
            }
        });
        let base = ctr_baseline(&d, n, 1);
        let base4 = ctr_baseline(&d, n, 4);
        println!(
            "{:>5}  {:>12.2} s  {:>9.1} ms  {:>14.2} s  {:>7.2}x  {:>14.2} s  {:>7.2}x  {:>12.1}",
            n,
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / n as f64,
            base.as_secs_f64(),
            took.as_secs_f64() / base.as_secs_f64(),
            base4.as_secs_f64(),
            took.as_secs_f64() / base4.as_secs_f64(),
            per_task.iter().find(|(k, _)| k == "total").map(|(_, v)| *v).unwrap_or(0.0)
        );
        calls.push((n, per_task));
    }
    for (n, per_task) in calls {
        let each: Vec<String> =
            per_task.iter().filter(|(k, _)| k != "total").map(|(k, v)| format!("{k} {v:.2}")).collect();
        println!("containerd calls per task at N={n}: {}", each.join(", "));
    }
}
