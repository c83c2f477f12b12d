//! Shoal's orchestration library: everything a swarm member runs except the container runtime.
//! See ARCHITECTURE.md at the top of the repository for the codemap.

pub mod agent;
pub mod allocator;
pub mod api;
pub mod ca;
pub mod controlapi;
pub mod dispatcher;
pub mod manager;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;
pub mod testing;
pub mod transport;
