//! Helpers shared by the in-process swarm tests: story steps, waits on observable state, nodes on a temp dir.
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::node::{NodeConfig, SwarmNode};
use swarm::testing::TestExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Prints a phase of a test story.
pub fn step(s: &str) {
    eprintln!("--- {s}");
}

/// How long any one wait may take before the test fails (generous: timings are printed, never asserted).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Ok`; after [`DEADLINE`] fails naming `what` and what `check` last said was
/// still missing.
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(missing) if start.elapsed() > DEADLINE => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; still missing: {missing}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A free port on 127.0.0.1 (bound, then released), for a listener whose address must be known beforehand.
pub fn free_local_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A swarm node whose state lives under `dir`, running its tasks in `exec`.
pub fn new_node(dir: &Path, exec: &TestExecutor) -> SwarmNode<TestExecutor> {
    SwarmNode::new(NodeConfig { state_dir: dir.join("swarm"), default_advertise_ip: None }, Arc::new(exec.clone()))
}

/// Every file under `dir` that holds `needle`.
pub fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// A TCP proxy whose traffic can be frozen: bytes already read are held and connections stay open (a side that
/// closes is not told to the other) until it thaws, as with a peer whose process is stopped.
pub struct FreezableProxy {
    pub addr: String,
    frozen: watch::Sender<bool>,
}

impl FreezableProxy {
    pub async fn start(target: String) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (frozen, _) = watch::channel(false);
        let rx = frozen.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone()));
                tokio::spawn(pump(sr, cw, rx.clone()));
            }
        });
        FreezableProxy { addr, frozen }
    }

    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // A stopped process sends no FIN either: the close reaches the other side only after a thaw.
                let _ = frozen.wait_for(|f| !*f).await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A new one-manager swarm on 127.0.0.1 (a free port): (node, its cluster address).
pub async fn init(
    dir: &Path,
    exec: &TestExecutor,
    snapshot_interval: Option<u64>,
) -> (SwarmNode<TestExecutor>, String) {
    let node = new_node(dir, exec);
    node.init(swarm::api::membership::SwarmInitRequest {
        listen_addr: "127.0.0.1:0".into(),
        snapshot_interval,
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = node.info().await.remote_managers[0].clone();
    (node, addr)
}

/// The swarm's manager join token, read from a manager's store.
pub fn manager_token(node: &SwarmNode<TestExecutor>) -> String {
    node.store().unwrap().view(|v| v.cluster().unwrap().root_ca.join_tokens.manager.clone())
}

/// A node on 127.0.0.1 that joins the swarm at `remote` with `token` (a manager token makes it a manager).
pub async fn join_manager(dir: &Path, exec: &TestExecutor, remote: &str, token: &str) -> SwarmNode<TestExecutor> {
    let node = new_node(dir, exec);
    node.join(swarm::api::membership::SwarmJoinRequest {
        remote_addr: remote.into(),
        join_token: token.into(),
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: "127.0.0.1".into(),
        availability: swarm::api::NodeAvailability::Active,
    })
    .await
    .unwrap_or_else(|e| panic!("joining as a manager: {e}"));
    node
}
