//! The object model shared by every component: what the store holds, what the control API takes and returns,
//! what the dispatcher sends to agents. Every type here is persisted (Raft log, snapshots) or sent over the wire,
//! so each change must stay readable by older data: add fields with `#[serde(default)]`, never rename.
//!
//! ```text
//!   Cluster ── one per swarm: CA, join tokens, cluster-wide settings
//!   Node    ── one per member host: spec (role, availability, labels) + description + status
//!   Service ── desired state: spec (image, replicas/global, placement, restart policy, …)
//!   Task    ── one unit of work in a slot (replicated) or on a node (global); its status only moves forward
//!   Network ── an overlay network: spec + the subnet, gateway and VNI the allocator chose
//!   Secret  ── a named blob tasks mount as a file, sealed with the managers' data key
//!   Config  ── a named blob tasks mount as a file, in clear
//! ```

pub mod ca;
mod cluster;
mod constraint;
pub mod control;
pub mod dispatch;
pub mod logs;
pub mod membership;
mod meta;
mod network;
mod node;
mod reference;
mod secret;
mod service;
mod spec;
mod task;

pub use cluster::*;
pub use constraint::*;
pub use meta::*;
pub use network::*;
pub use node::*;
pub use reference::*;
pub use secret::*;
pub use service::*;
pub use spec::*;
pub use task::*;

use serde::{Deserialize, Serialize};

/// Any object the store holds, as it travels in Raft entries, snapshots and watch events. A task is shared
/// (`Arc`): tasks are most of the objects and most of the writes, and a watch event, a read and the store can then
/// hold one task between them instead of a copy each (the serialized form is the task's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "object", rename_all = "lowercase")]
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    Service(Service),
    Task(std::sync::Arc<Task>),
    Network(Network),
    Secret(Secret),
    Config(Config),
}

/// The kinds of object, for deletes and lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Network => "network",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        })
    }
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Cluster(_) => ObjectKind::Cluster,
            Object::Node(_) => ObjectKind::Node,
            Object::Service(_) => ObjectKind::Service,
            Object::Task(_) => ObjectKind::Task,
            Object::Network(_) => ObjectKind::Network,
            Object::Secret(_) => ObjectKind::Secret,
            Object::Config(_) => ObjectKind::Config,
        }
    }

    pub fn id(&self) -> &str {
        &self.meta_ref().0
    }

    pub fn meta(&self) -> &Meta {
        self.meta_ref().1
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Cluster(o) => &mut o.meta,
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut std::sync::Arc::make_mut(o).meta,
            Object::Network(o) => &mut o.meta,
            Object::Secret(o) => &mut o.meta,
            Object::Config(o) => &mut o.meta,
        }
    }

    fn meta_ref(&self) -> (&String, &Meta) {
        match self {
            Object::Cluster(o) => (&o.id, &o.meta),
            Object::Node(o) => (&o.id, &o.meta),
            Object::Service(o) => (&o.id, &o.meta),
            Object::Task(o) => (&o.id, &o.meta),
            Object::Network(o) => (&o.id, &o.meta),
            Object::Secret(o) => (&o.id, &o.meta),
            Object::Config(o) => (&o.id, &o.meta),
        }
    }
}

/// Generates an object id as SwarmKit does: 25 characters of base 36 from 128 random bits.
pub fn new_id() -> String {
    let n: u128 = rand::random();
    base36(n, 25)
}

/// Encodes `n` in lowercase base 36, left-padded with zeros to `width`.
pub fn base36(n: u128, width: usize) -> String {
    base36_bytes(&n.to_be_bytes(), width)
}

/// Base 36 of a big-endian unsigned number, left-padded with zeros to `width`.
pub fn base36_bytes(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut num: Vec<u8> = bytes.to_vec();
    let mut out = Vec::with_capacity(width);
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 25);
        assert!(a.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn base36_pads_and_encodes() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36, 1), "10");
    }
}
