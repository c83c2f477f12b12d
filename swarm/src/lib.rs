//! Shoal's orchestration library: everything a swarm member runs except the container runtime.
//! See ARCHITECTURE.md at the top of the repository for the codemap.

pub mod agent;
pub mod api;
pub mod ca;
pub mod fsutil;
pub mod manager;
pub mod node;
pub mod template;
/// Object builders and the in-memory `TestExecutor`: for tests and the scale simulator only (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
