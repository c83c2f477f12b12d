//! Placement preferences (`--placement-pref spread=node.labels.zone`), as Swarm's decision tree: every
//! `Spread(descriptor)` level splits the nodes by the descriptor's value (a node lacking it goes to the `""`
//! group), and each task goes down the branch holding the fewest tasks of its service among the branches with a
//! node that can still take it; inside the leaf, the node with the fewest tasks of the service, then the fewest
//! tasks. With no preferences the tree is one leaf: plain spread.
//!
//! A tree is built per group of identical pending tasks: building is linear in the nodes, each placement costs
//! the branches along one path plus a heap operation.

use super::NodeInfo;
use crate::api::{Node, PlacementPreference};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// The descriptors a spread preference may name (as constraints, plus the platform's arch).
const FIXED_DESCRIPTORS: &[&str] = &["node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch"];

/// Whether `descriptor` names a node attribute the tree can split on.
pub fn is_known_descriptor(descriptor: &str) -> bool {
    FIXED_DESCRIPTORS.iter().any(|d| d.eq_ignore_ascii_case(descriptor))
        || label(descriptor, "node.labels.").is_some()
        || label(descriptor, "engine.labels.").is_some()
}

/// The value of `descriptor` on `node`: `Some("")` when the node lacks it (its own group), `None` for a
/// descriptor the tree does not know (that level is skipped, as Swarm does).
pub fn descriptor_value(descriptor: &str, node: &Node) -> Option<String> {
    if let Some(k) = label(descriptor, "node.labels.") {
        return Some(node.spec.annotations.labels.get(k).cloned().unwrap_or_default());
    }
    if let Some(k) = label(descriptor, "engine.labels.") {
        return Some(node.description.engine.labels.get(k).cloned().unwrap_or_default());
    }
    let v = match descriptor.to_ascii_lowercase().as_str() {
        "node.id" => node.id.clone(),
        "node.hostname" => node.description.hostname.clone(),
        "node.role" => node.role.to_string(),
        "node.platform.os" => node.description.platform.os.clone(),
        "node.platform.arch" => node.description.platform.architecture.clone(),
        _ => return None,
    };
    Some(v)
}

fn label<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    (key.len() > prefix.len() && key[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &key[prefix.len()..])
}

/// A node's rank inside its leaf: fewest tasks of the service, then fewest tasks, then id (for a stable plan).
type Rank = Reverse<(u64, u64, String)>;

#[derive(Default)]
struct Branch {
    /// Tasks of the service on every node under this branch (eligible or not, as Swarm counts them).
    tasks: u64,
    /// Nodes under this branch that can still take a task of the group.
    room: usize,
    /// Sub-branches by descriptor value; empty for a leaf.
    children: BTreeMap<String, usize>,
    /// A leaf's eligible nodes.
    heap: BinaryHeap<Rank>,
}

/// The decision tree for one group of identical tasks of one service.
pub struct Tree {
    /// Branch 0 is the root.
    arena: Vec<Branch>,
    service_id: String,
}

impl Tree {
    /// Builds the tree over `nodes`; `eligible` says which nodes can take a task of the group now.
    pub fn build(
        nodes: &BTreeMap<String, NodeInfo>,
        service_id: &str,
        preferences: &[PlacementPreference],
        mut eligible: impl FnMut(&NodeInfo) -> bool,
    ) -> Tree {
        let mut arena = vec![Branch::default()];
        for info in nodes.values() {
            let here = info.tasks_of_service(service_id);
            let fits = eligible(info);
            let mut at = 0;
            arena[at].tasks += here;
            arena[at].room += usize::from(fits);
            for PlacementPreference::Spread(descriptor) in preferences {
                let Some(value) = descriptor_value(descriptor, &info.node) else { continue };
                let next = match arena[at].children.get(&value) {
                    Some(&i) => i,
                    None => {
                        arena.push(Branch::default());
                        let i = arena.len() - 1;
                        arena[at].children.insert(value, i);
                        i
                    }
                };
                at = next;
                arena[at].tasks += here;
                arena[at].room += usize::from(fits);
            }
            if fits {
                arena[at].heap.push(rank(info, service_id));
            }
        }
        Tree { arena, service_id: service_id.to_string() }
    }

    /// Whether some node can still take a task.
    pub fn has_room(&self) -> bool {
        self.arena[0].room > 0
    }

    /// Picks the node for the next task and records it there: at every level the branch with room holding the
    /// fewest tasks of the service (ties by value), then the leaf's best node. `place` records the task on the
    /// node and says whether the node can take one more of the group. `None` when no node has room.
    pub fn place(
        &mut self,
        nodes: &mut BTreeMap<String, NodeInfo>,
        place: impl FnOnce(&mut NodeInfo) -> bool,
    ) -> Option<String> {
        let path = self.descend()?;
        let leaf = *path.last()?;
        let Reverse((_, _, node_id)) = self.arena[leaf].heap.pop()?;
        let still_fits = match nodes.get_mut(&node_id) {
            Some(info) => {
                let fits = place(info);
                if fits {
                    self.arena[leaf].heap.push(rank(info, &self.service_id));
                }
                fits
            }
            None => false,
        };
        for &b in &path {
            self.arena[b].tasks += 1;
            if !still_fits {
                self.arena[b].room -= 1;
            }
        }
        Some(node_id)
    }

    /// The branches from the root to the leaf the next task goes to; `None` when no node has room.
    fn descend(&self) -> Option<Vec<usize>> {
        if !self.has_room() {
            return None;
        }
        let mut path = vec![0];
        let mut at = 0;
        while !self.arena[at].children.is_empty() {
            // Some child has room, as this branch's room is the sum of its children's.
            at = self.arena[at]
                .children
                .values()
                .copied()
                .filter(|&c| self.arena[c].room > 0)
                .min_by_key(|&c| self.arena[c].tasks)?;
            path.push(at);
        }
        Some(path)
    }
}

fn rank(info: &NodeInfo, service_id: &str) -> Rank {
    Reverse((info.tasks_of_service(service_id), info.total_tasks, info.node.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;

    #[test]
    fn descriptors_read_labels_and_node_attributes() {
        let mut n = node("n1", "host-a");
        n.spec.annotations.labels.insert("zone".into(), "a".into());
        n.description.engine.labels.insert("disk".into(), "ssd".into());
        assert_eq!(descriptor_value("node.labels.zone", &n).as_deref(), Some("a"));
        assert_eq!(descriptor_value("NODE.LABELS.zone", &n).as_deref(), Some("a"));
        assert_eq!(descriptor_value("node.labels.rack", &n).as_deref(), Some(""), "lacking it is a group too");
        assert_eq!(descriptor_value("engine.labels.disk", &n).as_deref(), Some("ssd"));
        assert_eq!(descriptor_value("node.role", &n).as_deref(), Some("manager"));
        assert_eq!(descriptor_value("node.hostname", &n).as_deref(), Some("host-a"));
        assert_eq!(descriptor_value("node.platform.os", &n).as_deref(), Some("linux"));
        assert_eq!(descriptor_value("node.colour", &n), None);
        assert!(is_known_descriptor("node.labels.zone"));
        assert!(is_known_descriptor("node.platform.arch"));
        assert!(!is_known_descriptor("node.labels."));
        assert!(!is_known_descriptor("zone"));
    }
}
