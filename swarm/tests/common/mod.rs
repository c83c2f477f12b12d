//! Helpers shared by the in-process swarm tests: story steps, waits on observable state, nodes on a temp dir.
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm::node::{NodeConfig, SwarmNode};
use swarm::testing::TestExecutor;

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

/// A swarm node whose state lives under `dir`, running its tasks in `exec`.
pub fn new_node(dir: &Path, exec: &TestExecutor) -> SwarmNode<TestExecutor> {
    SwarmNode::new(NodeConfig { state_dir: dir.join("swarm"), default_advertise_ip: None }, Arc::new(exec.clone()))
}
