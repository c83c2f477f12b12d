//! The scale simulator (`bench scale`): a real manager in this process — Raft on disk, the store, orchestrators,
//! allocator, scheduler, dispatcher, the mTLS cluster listener — and N simulated nodes, each a real agent with its
//! own certificate holding a real dispatcher session over loopback, driving `TestExecutor` (an in-memory stand-in
//! for containerd: tasks go PREPARING → RUNNING at once, no containers). The simulated nodes live in a child
//! process (`bench scale-agents`, see [`AgentHost`]), so this process's peak RSS is the manager's own.
//!
//! ```text
//!   phase 1  nodes join: identities from the cluster CA, Node objects written, agents open sessions → READY
//!   phase 2  S services × R replicas created through the control API
//!            → all tasks ASSIGNED (scheduler) → delivered (in an executor) → RUNNING (reported back)
//!   phase 3  service ls / service ps latency at that size, Raft log and state size
//!   phase 4  the manager restarts and serves again with everything in place, from its log, then its snapshot
//!   phase 5  the nodes reconnect: each keeps the tasks it runs (checked again) and runs a global service's task
//! ```
//! Every figure is printed; correctness is checked (every slot runs exactly one task, no task runs on two
//! nodes, no node holds more reservations than it has) and a violation fails the run. Timings are never asserted.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::agent::{Agent, AgentConfig};
use swarm::api::control::{CreateServiceRequest, ListServicesRequest, ListTasksRequest, PageRequest};
use swarm::api::membership::SwarmInitRequest;
use swarm::api::{new_id, NodeRole, ServiceMode, TaskState};
use swarm::ca::{self, RootCa};
use swarm::manager::store::{Store, StoreError};
use swarm::node::{NodeConfig, RaftStats, SwarmNode};
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tokio_util::sync::CancellationToken;
use tonic::Request;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Nodes in all, the manager included.
    pub nodes: usize,
    pub services: usize,
    pub replicas: u64,
    /// How long any one phase may take before the run fails.
    pub phase_timeout: Duration,
    /// The `bench` binary, run as `bench scale-agents` to host the simulated nodes.
    pub agents_exe: PathBuf,
}

impl ScaleConfig {
    /// The preset CI runs: small enough for seconds, large enough that every path is taken.
    pub fn smoke(agents_exe: PathBuf) -> Self {
        ScaleConfig { nodes: 20, services: 10, replicas: 20, phase_timeout: Duration::from_secs(300), agents_exe }
    }
}

/// A correctness violation found after a run.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{phase} did not finish within {timeout:?}: {progress}")]
    Timeout { phase: &'static str, timeout: Duration, progress: String },
    #[error("slot {service}.{slot} has {running} running tasks (want exactly 1)")]
    Slot { service: String, slot: u64, running: usize },
    #[error("task {task} runs on {nodes} nodes")]
    Duplicate { task: String, nodes: usize },
    #[error("node {node} holds {reserved} bytes of memory reservations but has {capacity}")]
    Overcommitted { node: String, reserved: i64, capacity: i64 },
    #[error("{0}")]
    Setup(String),
    #[error("interrupted by {0}; the state directory was removed")]
    Interrupted(&'static str),
}

fn setup(e: impl std::fmt::Display) -> ScaleError {
    ScaleError::Setup(e.to_string())
}

/// Memory each task reserves, so that placement has something to respect.
const RESERVE: i64 = 8 << 20;

/// The peak resident memory of this process (the manager, with its own agent), from `/proc`.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What the agent host needs to run the simulated nodes: the manager to dial, the CA that issues their
/// identities (as a join would), and each node's id and hostname (the manager already holds their Node objects).
#[derive(serde::Serialize, serde::Deserialize)]
struct AgentHostSpec {
    manager: String,
    root_cert_pem: String,
    root_key_pem: String,
    cluster_id: String,
    nodes: Vec<(String, String)>,
}

/// The simulated nodes, in a child process that answers one-line queries on its stdin: `status` (tasks known,
/// sessions opened, its peak RSS in KiB) and `running` (the running task ids, one per line, then `.`).
struct AgentHost {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One `status` answer of the agent host.
#[derive(Default)]
struct HostStatus {
    known: u64,
    sessions: u64,
    peak_rss_kib: u64,
}

impl AgentHost {
    fn start(exe: &Path, spec: &AgentHostSpec) -> Result<Self, ScaleError> {
        let mut child = Command::new(exe)
            .arg("scale-agents")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| setup(format!("starting {} scale-agents: {e}", exe.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(setup("the agent host has no pipes"));
        };
        let mut host = AgentHost { child, stdin, stdout: BufReader::new(stdout) };
        let line = serde_json::to_string(spec).map_err(setup)?;
        host.send(&line)?;
        match host.line()?.as_str() {
            "ready" => Ok(host),
            other => Err(setup(format!("the agent host did not start: {other}"))),
        }
    }

    fn send(&mut self, line: &str) -> Result<(), ScaleError> {
        writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).map_err(|e| setup(format!("agent host: {e}")))
    }

    fn line(&mut self) -> Result<String, ScaleError> {
        let mut l = String::new();
        match self.stdout.read_line(&mut l) {
            Ok(0) => Err(setup("the agent host exited")),
            Ok(_) => Ok(l.trim_end().to_string()),
            Err(e) => Err(setup(format!("agent host: {e}"))),
        }
    }

    /// A query from inside the runtime: the answer comes within milliseconds, so the worker thread blocks for it.
    fn status(&mut self) -> Result<HostStatus, ScaleError> {
        tokio::task::block_in_place(|| {
            self.send("status")?;
            let l = self.line()?;
            let n: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            match n[..] {
                [known, sessions, peak_rss_kib] => Ok(HostStatus { known, sessions, peak_rss_kib }),
                _ => Err(setup(format!("agent host: unexpected status {l:?}"))),
            }
        })
    }

    fn running(&mut self) -> Result<Vec<String>, ScaleError> {
        tokio::task::block_in_place(|| {
            self.send("running")?;
            let mut ids = Vec::new();
            loop {
                let l = self.line()?;
                if l == "." {
                    return Ok(ids);
                }
                ids.push(l);
            }
        })
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bench scale-agents`: the child side of [`AgentHost`]. Reads its spec as the first line of stdin, starts one
/// agent per node, says `ready`, then answers queries until stdin closes.
pub async fn host_agents() -> Result<(), ScaleError> {
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let first = lines.next_line().await.map_err(setup)?.ok_or_else(|| setup("no spec on stdin"))?;
    let spec: AgentHostSpec = serde_json::from_str(&first).map_err(setup)?;
    let root = RootCa::from_pem(&spec.root_cert_pem, &spec.root_key_pem).map_err(setup)?;
    let sessions = Arc::new(AtomicU64::new(0));
    let shutdown = CancellationToken::new();
    let mut executors = Vec::new();
    for (id, hostname) in &spec.nodes {
        let identity = ca::issue_identity(&root, id, NodeRole::Worker, &spec.cluster_id).map_err(setup)?;
        let executor = TestExecutor::new(hostname);
        let tls = ca::ClusterTls::new(&identity).map_err(setup)?;
        let agent =
            Arc::new(Agent::new(AgentConfig { managers: vec![spec.manager.clone()], tls }, Arc::new(executor.clone())));
        count_sessions(&sessions, agent.status());
        let token = shutdown.clone();
        tokio::spawn(async move { agent.run(token).await });
        executors.push(executor);
    }
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| setup(format!("answering the simulator: {e}"));
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(io)?;
    while let Some(q) = lines.next_line().await.map_err(setup)? {
        match q.as_str() {
            "status" => {
                let known: usize = executors.iter().map(TestExecutor::known).sum();
                let hwm = (peak_rss_mib() * 1024.0) as u64;
                writeln!(out, "{known} {} {hwm}", sessions.load(Ordering::Relaxed)).map_err(io)?;
            }
            "running" => {
                for e in &executors {
                    for id in e.running() {
                        writeln!(out, "{id}").map_err(io)?;
                    }
                }
                writeln!(out, ".").map_err(io)?;
            }
            other => return Err(setup(format!("unknown query {other:?}"))),
        }
        out.flush().map_err(io)?;
    }
    shutdown.cancel();
    Ok(())
}

/// Counts every session the agent opens from now on.
fn count_sessions(counter: &Arc<AtomicU64>, mut status: tokio::sync::watch::Receiver<swarm::agent::AgentStatus>) {
    let counter = counter.clone();
    tokio::spawn(async move {
        let mut last = None;
        while status.changed().await.is_ok() {
            let id = status.borrow_and_update().session_id.clone();
            if id.is_some() && id != last {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            last = id;
        }
    });
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Polls `f` every 100 ms until it returns `Ok`, printing its progress line now and then.
async fn phase<T>(
    name: &'static str,
    timeout: Duration,
    start: Instant,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, ScaleError> {
    let mut last_print = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(progress) => {
                if start.elapsed() > timeout {
                    return Err(ScaleError::Timeout { phase: name, timeout, progress });
                }
                if last_print.elapsed() > Duration::from_secs(5) {
                    println!("  … {name}: {progress} ({:.1} s)", start.elapsed().as_secs_f64());
                    last_print = Instant::now();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the run costs beyond the work itself: sessions the agents opened, nodes the dispatcher found down,
/// store writes that committed (a Raft entry whose proposal failed its version check applies nothing).
#[derive(Default)]
struct Churn {
    sessions: AtomicU64,
    nodes_down: AtomicU64,
    writes: AtomicU64,
    /// Events the counter missed because it fell behind the store's watch.
    missed: AtomicU64,
}

impl Churn {
    /// Counts nodes going DOWN and committed writes in `store`, until it closes.
    fn follow_store(self: &Arc<Self>, store: &Store) {
        let (churn, mut events) = (self.clone(), store.watch());
        tokio::spawn(async move {
            let mut last_index = 0;
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if ev.index != last_index {
                            last_index = ev.index;
                            churn.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        if let (swarm::api::Object::Node(n), Some(swarm::api::Object::Node(old))) =
                            (&ev.object, &ev.old)
                        {
                            if n.status.state == swarm::api::NodeState::Down && old.status.state != n.status.state {
                                churn.nodes_down.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        churn.missed.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Takes the agent host's count of sessions opened.
    fn note(&self, host: &HostStatus) {
        self.sessions.store(host.sessions, Ordering::Relaxed);
    }

    /// The totals so far, for progress lines.
    fn brief(&self) -> String {
        format!(
            "sessions {}, nodes down {}, writes {}",
            self.sessions.load(Ordering::Relaxed),
            self.nodes_down.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed)
        )
    }

    /// One line: what happened since `prev`, which moves to now.
    fn print(&self, phase: &str, prev: &mut [u64; 4]) {
        let now = [&self.sessions, &self.nodes_down, &self.writes, &self.missed].map(|c| c.load(Ordering::Relaxed));
        let d: Vec<u64> = now.iter().zip(prev.iter()).map(|(a, b)| a - b).collect();
        println!(
            "churn  {phase:<16} {:>7} sessions opened, {:>5} nodes found down, {:>7} writes committed{}",
            d[0],
            d[1],
            d[2],
            if d[3] > 0 { format!(" ({} events missed)", d[3]) } else { String::new() }
        );
        *prev = now;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(23770)
}

/// Runs the simulation, printing each phase's figures; fails on a correctness violation. Interrupted (Ctrl-C,
/// SIGTERM), it stops and still removes its state directory: at a million tasks that is several GiB left in the
/// temporary directory otherwise.
pub async fn run(cfg: &ScaleConfig) -> Result<(), ScaleError> {
    let dir = tempfile::tempdir().map_err(setup)?;
    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(setup)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(setup).map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    };
    let r = tokio::select! {
        r = simulate(cfg, dir.path()) => r,
        signal = interrupted => Err(ScaleError::Interrupted(signal?)),
    };
    // Dropping the simulation above stopped the agents' process; the manager's own files go now. A failed run
    // reports its own error first.
    let path = dir.path().to_path_buf();
    let closed =
        dir.close().map_err(|e| setup(format!("could not remove the state directory {}: {e}", path.display())));
    r.and(closed)
}

async fn simulate(cfg: &ScaleConfig, dir: &std::path::Path) -> Result<(), ScaleError> {
    let total_tasks = cfg.services as u64 * cfg.replicas;
    println!(
        "scale: {} nodes, {} services × {} replicas = {} tasks",
        cfg.nodes, cfg.services, cfg.replicas, total_tasks
    );
    let state_dir = dir.join("swarm");
    let manager_exec = TestExecutor::new("sim-manager");
    let node = SwarmNode::new(
        NodeConfig { state_dir: state_dir.clone(), default_advertise_ip: None },
        Arc::new(manager_exec.clone()),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    node.init(SwarmInitRequest { listen_addr: addr.clone(), advertise_addr: addr.clone(), ..Default::default() })
        .await
        .map_err(setup)?;
    let store = node.store().ok_or_else(|| setup("the manager has no store after init"))?;

    // Phase 1: nodes join. Identities come from the cluster's CA, as a join would issue them.
    let t0 = Instant::now();
    let (root_pem, key_pem, cluster_id) = store
        .view(|v| v.cluster().map(|c| (c.root_ca.ca_cert_pem.clone(), c.root_ca.ca_key_pem.clone(), c.id.clone())))
        .ok_or_else(|| setup("no cluster object"))?;
    let mut host_spec = AgentHostSpec {
        manager: addr.clone(),
        root_cert_pem: root_pem,
        root_key_pem: key_pem,
        cluster_id,
        nodes: Vec::new(),
    };
    let mut pending_nodes = Vec::new();
    for i in 1..cfg.nodes {
        let id = new_id();
        let hostname = format!("sim-{i:05}");
        let mut n = swarm::testing::node(&id, &hostname);
        n.role = NodeRole::Worker;
        n.spec.desired_role = NodeRole::Worker;
        n.status.state = swarm::api::NodeState::Unknown;
        pending_nodes.push(n);
        host_spec.nodes.push((id, hostname));
    }
    for chunk in pending_nodes.chunks(500) {
        store
            .update(|tx| {
                for n in chunk {
                    tx.create(n.clone());
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(setup)?;
    }
    drop(pending_nodes);
    let churn = Arc::new(Churn::default());
    let mut churn_before = [0; 4];
    churn.follow_store(&store);
    let mut host = AgentHost::start(&cfg.agents_exe, &host_spec)?;
    drop(host_spec);
    let want_nodes = cfg.nodes;
    phase("nodes ready", cfg.phase_timeout, t0, || {
        churn.note(&host.status().map_err(|e| e.to_string())?);
        let ready = store.view(|v| v.nodes().filter(|n| n.status.state == swarm::api::NodeState::Ready).count());
        if ready >= want_nodes {
            Ok(())
        } else {
            Err(format!("{ready}/{want_nodes} ready; {}", churn.brief()))
        }
    })
    .await?;
    println!("phase nodes-ready      {:>9.2} s   peak RSS {:>8.1} MiB", t0.elapsed().as_secs_f64(), peak_rss_mib());
    // A node shows READY in the store a moment before its agent counts the session that write answered: counted
    // here, they are not taken for sessions opened again in the next phase.
    let counted = Instant::now() + Duration::from_secs(10);
    loop {
        let st = host.status()?;
        churn.note(&st);
        if st.sessions + 1 >= cfg.nodes as u64 || Instant::now() > counted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut raft_before = RaftStats::default();
    print_raft_delta(&node, "init + nodes", &mut raft_before).await;
    churn.print("init + nodes", &mut churn_before);

    // Phase 2: services.
    let api = node.control_api();
    let t1 = Instant::now();
    let mut last_print = Instant::now();
    for s in 0..cfg.services {
        let mut spec = swarm::testing::service("unused", &format!("svc-{s:05}"), cfg.replicas).spec;
        spec.task_template.resources.reservations.memory_bytes = RESERVE;
        api.create_service(Request::new(CreateServiceRequest { spec })).await.map_err(|e| setup(e.message()))?;
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "  … services: {}/{} created; {} ({:.1} s)",
                s + 1,
                cfg.services,
                churn.brief(),
                t1.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let created = t1.elapsed();
    println!("phase services-created {:>9.2} s", created.as_secs_f64());
    phase("tasks assigned", cfg.phase_timeout, t1, || {
        let n = count(&store, TaskState::Assigned);
        if n >= total_tasks {
            Ok(())
        } else {
            Err(format!("{n}/{total_tasks} assigned; {}", churn.brief()))
        }
    })
    .await?;
    let assigned = t1.elapsed();
    println!("phase all-assigned     {:>9.2} s   peak RSS {:>8.1} MiB", assigned.as_secs_f64(), peak_rss_mib());
    phase("tasks delivered", cfg.phase_timeout, t1, || {
        let st = host.status().map_err(|e| e.to_string())?;
        churn.note(&st);
        let n = st.known + manager_exec.known() as u64;
        if n >= total_tasks {
            Ok(())
        } else {
            Err(format!("{n}/{total_tasks} delivered; {}", churn.brief()))
        }
    })
    .await?;
    println!("phase all-delivered    {:>9.2} s", t1.elapsed().as_secs_f64());
    phase("tasks running", cfg.phase_timeout, t1, || {
        let n = count(&store, TaskState::Running);
        if n >= total_tasks {
            Ok(())
        } else {
            Err(format!("{n}/{total_tasks} reported running; {}", churn.brief()))
        }
    })
    .await?;
    let running = t1.elapsed();
    println!("phase all-running      {:>9.2} s   peak RSS {:>8.1} MiB", running.as_secs_f64(), peak_rss_mib());

    let st = host.status()?;
    churn.note(&st);
    print_raft_delta(&node, "services → run", &mut raft_before).await;
    churn.print("services → run", &mut churn_before);
    check_running(&mut host, &manager_exec, &store)?;
    println!("check  every slot runs exactly one task; no task on two nodes; no node overcommitted");

    // Phase 3: the control API at this size, and what Raft holds.
    let t = Instant::now();
    let ls = api.list_services(Request::new(ListServicesRequest::default())).await.map_err(|e| setup(e.message()))?;
    let ls_took = t.elapsed();
    let first = ls.into_inner().services.first().map(|s| s.service.id.clone()).unwrap_or_default();
    let t = Instant::now();
    api.list_tasks(Request::new(ListTasksRequest { service_ids: vec![first], ..Default::default() }))
        .await
        .map_err(|e| setup(e.message()))?;
    let ps_took = t.elapsed();
    // The whole listing in one answer is measured up to 200,000 tasks; above, it would hold gigabytes at once and
    // only the paged listing (what the CLI does) is measured.
    let whole = total_tasks <= 200_000;
    let t = Instant::now();
    let all = if whole {
        api.list_tasks(Request::new(ListTasksRequest::default()))
            .await
            .map_err(|e| setup(e.message()))?
            .into_inner()
            .tasks
            .len()
    } else {
        0
    };
    let ps_all_took = t.elapsed();
    // The same listing as the CLI fetches it: pages of 5,000, each answered on its own.
    let (t, mut pages, mut paged, mut slowest) = (Instant::now(), 0, 0, Duration::ZERO);
    let mut req = ListTasksRequest { page: PageRequest { size: 5_000, token: String::new() }, ..Default::default() };
    loop {
        let tp = Instant::now();
        let r = api.list_tasks(Request::new(req.clone())).await.map_err(|e| setup(e.message()))?.into_inner();
        slowest = slowest.max(tp.elapsed());
        pages += 1;
        paged += r.tasks.len();
        if r.next_page_token.is_empty() {
            break;
        }
        req.page.token = r.next_page_token;
    }
    let paged_took = t.elapsed();
    let want = if whole { all } else { store.view(|v| v.tasks().count()) };
    if paged != want {
        return Err(setup(format!("the paged listing returned {paged} tasks, the store holds {want}")));
    }
    let whole_took = if whole { format!("{:>8.1} ms", ms(ps_all_took)) } else { "not measured".into() };
    println!(
        "latency service ls     {:>9.1} ms   service ps (one service) {:>7.1} ms   all {paged} tasks in one answer \
         {whole_took}; in {pages} pages {:>8.1} ms (slowest page {:.1} ms)",
        ms(ls_took),
        ms(ps_took),
        ms(paged_took),
        ms(slowest)
    );
    let stats = node.raft_stats().await.unwrap_or_default();
    println!(
        "raft   log entries {}, snapshot at {:?}, raft dir {:.1} MiB",
        stats.log_entries,
        stats.snapshot_index,
        mib(dir_size(&state_dir.join("raft")))
    );
    drop((api, store));
    println!("peak RSS {:.1} MiB: the manager through the run", peak_rss_mib());

    // Phase 4: the manager restarts (its own agent and the simulated ones keep their tasks), twice: first with
    // no snapshot yet, from the whole Raft log (what a crash between snapshots costs), then from a snapshot.
    let node = restart(node, cfg, &state_dir, &manager_exec, total_tasks, "from the log (no snapshot)").await?;

    let t = Instant::now();
    node.take_snapshot(cfg.phase_timeout).await.map_err(setup)?;
    let snap_took = t.elapsed();
    let stats = node.raft_stats().await.unwrap_or_default();
    println!(
        "raft   snapshot at {:?} taken in {:.2} s: {:.1} MiB; log now {} entries, raft dir {:.1} MiB",
        stats.snapshot_index,
        snap_took.as_secs_f64(),
        mib(dir_size(&state_dir.join("raft").join("snapshots"))),
        stats.log_entries,
        mib(dir_size(&state_dir.join("raft")))
    );
    // About 15 s of CPU at a million objects: on the blocking pool, so the manager's runtime (heartbeats, sessions)
    // is not starved by the bench itself.
    let codec_store = node.store().ok_or_else(|| setup("the manager has no store after its restart"))?;
    tokio::task::spawn_blocking(move || print_codec(&codec_store)).await.map_err(|e| setup(e.to_string()))?;

    let node = restart(node, cfg, &state_dir, &manager_exec, total_tasks, "from the snapshot").await?;

    // Phase 5: the nodes reconnect and keep what they run. A global service is the barrier: its task reaches a
    // node after the full set that node was sent on reconnecting, so once it runs on every node, every node has
    // applied that set (which names back the tasks the node holds); had one dropped them, the check fails.
    let t = Instant::now();
    let api = node.control_api();
    let mut spec = swarm::testing::service("unused", "nodes-back", 0).spec;
    spec.mode = ServiceMode::Global;
    let barrier = api
        .create_service(Request::new(CreateServiceRequest { spec }))
        .await
        .map_err(|e| setup(e.message()))?
        .into_inner()
        .id;
    let store = node.store().ok_or_else(|| setup("the manager has no store after its restart"))?;
    phase("nodes back", cfg.phase_timeout, t, || {
        let n = store.view(|v| {
            v.tasks_by_service(&barrier)
                .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
                .count()
        });
        if n >= cfg.nodes {
            Ok(())
        } else {
            Err(format!("the barrier runs on {n}/{} nodes", cfg.nodes))
        }
    })
    .await?;
    let back = t.elapsed();
    check_running(&mut host, &manager_exec, &store)?;
    println!(
        "phase nodes-back       {:>9.2} s   every node reconnected, kept its tasks (about {} each) and ran a new one",
        back.as_secs_f64(),
        total_tasks / cfg.nodes as u64
    );
    drop(store);
    let st = host.status()?;
    println!(
        "peak RSS {:.1} MiB: the manager (this process, with its own agent), restarts and the nodes' reconnections \
         included; the {} simulated agents: {:.1} MiB (another process)",
        peak_rss_mib(),
        cfg.nodes - 1,
        st.peak_rss_kib as f64 / 1024.0
    );
    drop(host);
    node.shutdown().await;
    Ok(())
}

/// Stops the manager and starts it again on the same state; returns once it serves every service and task. The
/// old store goes first, so the peak is what one manager holds.
async fn restart(
    node: SwarmNode<TestExecutor>,
    cfg: &ScaleConfig,
    state_dir: &Path,
    manager_exec: &TestExecutor,
    total_tasks: u64,
    from: &str,
) -> Result<SwarmNode<TestExecutor>, ScaleError> {
    let t = Instant::now();
    node.shutdown().await;
    drop(node);
    let node = SwarmNode::new(
        NodeConfig { state_dir: state_dir.to_path_buf(), default_advertise_ip: None },
        Arc::new(manager_exec.clone()),
    );
    node.resume().await.map_err(setup)?;
    phase("manager restart", cfg.phase_timeout, t, || {
        // The store is served once the manager leads again.
        let store = node.store().ok_or_else(|| "not leading yet".to_string())?;
        let n = count(&store, TaskState::Running);
        let services = store.view(|v| v.services().count());
        if services == cfg.services && n >= total_tasks {
            Ok(())
        } else {
            Err(format!("{services} services, {n}/{total_tasks} running"))
        }
    })
    .await?;
    println!("phase manager-restart  {:>9.2} s   {from}, serving with every task in place", t.elapsed().as_secs_f64());
    Ok(node)
}

/// Tasks meant to run that reached `at_least`, from the store's indexes: a scan of every task ten times a second
/// would hold the store's lock for a good part of the run at a million tasks.
fn count(store: &Store, at_least: TaskState) -> u64 {
    store.view(|v| {
        v.task_counts().filter(|(d, o, _)| *d == TaskState::Running && *o >= at_least).map(|(_, _, n)| n).sum::<usize>()
            as u64
    })
}

/// Prints what the manager appended to its Raft log since `prev` (proposals and encoded bytes), and moves `prev`.
async fn print_raft_delta(node: &SwarmNode<TestExecutor>, phase: &str, prev: &mut RaftStats) {
    let now = node.raft_stats().await.unwrap_or_default();
    println!(
        "raft   {phase:<16} {:>7} proposals  {:>9.1} MiB written",
        now.appended_entries.saturating_sub(prev.appended_entries),
        mib(now.appended_bytes.saturating_sub(prev.appended_bytes)),
    );
    *prev = now;
}

/// The store encoded as Raft writes it (MessagePack) against JSON: sizes and times. Object by object on one
/// view, so the manager's memory is not doubled by a copy of the store.
fn print_codec(store: &Store) {
    let (objects, binary, binary_took) = store.view(|v| {
        let t = Instant::now();
        let sizes = v.objects().map(|o| swarm::manager::raft::codec::encode(&o).len());
        let (n, bytes) = sizes.fold((0usize, 0usize), |(n, b), s| (n + 1, b + s));
        (n, bytes, t.elapsed())
    });
    let (json, json_took) = store.view(|v| {
        let t = Instant::now();
        let bytes: usize = v.objects().map(|o| serde_json::to_vec(&o).map(|v| v.len()).unwrap_or(0)).sum();
        (bytes, t.elapsed())
    });
    let (decoded, round_trip) = store.view(|v| {
        let t = Instant::now();
        let decoded = v
            .objects()
            .filter(|o| {
                let bytes = swarm::manager::raft::codec::encode(o);
                swarm::manager::raft::codec::decode::<swarm::api::Object>(&bytes).is_ok()
            })
            .count();
        (decoded, t.elapsed())
    });
    println!(
        "codec  {objects} objects: MessagePack {:.1} MiB in {:.0} ms, JSON {:.1} MiB in {:.0} ms (size ratio {:.2}); \
         encode+decode {:.0} ms ({decoded} read back)",
        mib(binary as u64),
        ms(binary_took),
        mib(json as u64),
        ms(json_took),
        binary as f64 / json.max(1) as f64,
        ms(round_trip),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Every slot runs exactly one task, no task runs on two nodes, no node holds more than it has.
/// [`check`] against what every node runs now. Seconds of work at a million tasks, done beside the manager's
/// runtime rather than on one of its workers.
fn check_running(host: &mut AgentHost, manager_exec: &TestExecutor, store: &Store) -> Result<(), ScaleError> {
    tokio::task::block_in_place(|| {
        let mut running_ids = host.running()?;
        running_ids.extend(manager_exec.running());
        check(store, &running_ids)
    })
}

fn check(store: &Store, running: &[String]) -> Result<(), ScaleError> {
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for id in running {
        *runs.entry(id.as_str()).or_default() += 1;
    }
    if let Some((task, nodes)) = runs.iter().find(|(_, n)| **n > 1) {
        return Err(ScaleError::Duplicate { task: task.to_string(), nodes: *nodes });
    }
    store.view(|v| {
        for service in v.services() {
            let ServiceMode::Replicated { replicas } = service.spec.mode else { continue };
            let mut by_slot: HashMap<u64, usize> = HashMap::new();
            for t in v.tasks_by_service(&service.id) {
                if t.desired_state == TaskState::Running
                    && t.status.state == TaskState::Running
                    && runs.contains_key(t.id.as_str())
                {
                    *by_slot.entry(t.slot).or_default() += 1;
                }
            }
            for slot in 1..=replicas {
                let running = by_slot.get(&slot).copied().unwrap_or(0);
                if running != 1 {
                    return Err(ScaleError::Slot { service: service.spec.annotations.name.clone(), slot, running });
                }
            }
        }
        let live: HashSet<&str> = runs.keys().copied().collect();
        for n in v.nodes() {
            let reserved: i64 = v
                .tasks_by_node(&n.id)
                .filter(|t| live.contains(t.id.as_str()))
                .map(|t| t.spec.resources.reservations.memory_bytes)
                .sum();
            if reserved > n.description.resources.memory_bytes {
                return Err(ScaleError::Overcommitted {
                    node: n.id.clone(),
                    reserved,
                    capacity: n.description.resources.memory_bytes,
                });
            }
        }
        Ok(())
    })
}
