//! The agent: runs on every node, holds a session with the dispatcher, and drives the node's executor.

pub mod exec;
