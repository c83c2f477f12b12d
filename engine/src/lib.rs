//! `shoald`'s library: the engine daemon's parts. `main.rs` only parses flags and runs [`daemon::run`].

pub mod config;
pub mod containerd;
pub mod daemon;
pub mod executor;
pub mod exits;
pub mod health;
pub mod host;
pub mod image;
pub mod imagefs;
pub mod jsonfile;
pub mod localapi;
pub mod logs;
pub mod network;
pub mod oom;
pub mod registry;
pub mod seccomp;
pub mod socket;
pub mod spec;
pub mod taskfiles;
pub mod taskimage;
