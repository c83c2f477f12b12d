//! The scheduler's filter pipeline: each filter says whether a node can take a task, and explains a refusal in
//! the words `service ps` shows ("insufficient memory on 1 node", "max replicas per node limit exceed").

use super::NodeInfo;
use crate::api::Constraint;
use crate::api::{NodeAvailability, NodeState, Task};
use std::collections::BTreeMap;

/// Why a node was refused, grouped so the explanation can count nodes per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    NotReady,
    NotActive,
    Constraints,
    MaxReplicas,
    Memory,
    Cpu,
    /// Fewer of a generic resource (`--generic-resource gpu=1`) left than the task reserves.
    Generic,
}

impl Refusal {
    /// The explanation for `n` nodes refused for this reason.
    pub fn explain(self, n: usize) -> String {
        let nodes = if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
        match self {
            Refusal::NotReady => format!("{nodes} not ready"),
            Refusal::NotActive => format!("{nodes} not available for new tasks"),
            Refusal::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            // Docker's words, count-less and all.
            Refusal::MaxReplicas => "max replicas per node limit exceed".to_string(),
            Refusal::Memory => format!("insufficient memory on {nodes}"),
            Refusal::Cpu => format!("insufficient CPU on {nodes}"),
            Refusal::Generic => format!("insufficient resources on {nodes}"),
        }
    }
}

/// The refusals of one task over every node, explained as Docker does: the reason refusing the most nodes first
/// (ties in filter order), joined by "; ".
pub fn explain(refusals: &BTreeMap<Refusal, usize>) -> String {
    let mut by_count: Vec<(Refusal, usize)> = refusals.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (*r, *n)).collect();
    // Stable: equal counts keep the filter order.
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    by_count.iter().map(|(r, n)| r.explain(*n)).collect::<Vec<_>>().join("; ")
}

/// Runs every filter in order; the first refusal wins.
pub fn check(node: &NodeInfo, task: &Task, constraints: &[Constraint]) -> Result<(), Refusal> {
    if node.node.status.state != NodeState::Ready {
        return Err(Refusal::NotReady);
    }
    if node.node.spec.availability != NodeAvailability::Active {
        return Err(Refusal::NotActive);
    }
    if !constraints.iter().all(|c| c.matches(&node.node)) {
        return Err(Refusal::Constraints);
    }
    let max = task.spec.placement.max_replicas;
    if max > 0 && node.tasks_of_service(&task.service_id) >= max {
        return Err(Refusal::MaxReplicas);
    }
    let want = &task.spec.resources;
    let r = want.reservations;
    if r.memory_bytes > 0 && r.memory_bytes > node.available.memory_bytes {
        return Err(Refusal::Memory);
    }
    if r.nano_cpus > 0 && r.nano_cpus > node.available.nano_cpus {
        return Err(Refusal::Cpu);
    }
    for (kind, &n) in &want.generic_reservations {
        let left = node.available_generic.get(kind).copied().unwrap_or(0);
        if n > 0 && i128::from(n) > i128::from(left) {
            return Err(Refusal::Generic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_put_the_most_common_reason_first() {
        let r = BTreeMap::from([(Refusal::NotReady, 1), (Refusal::Generic, 2), (Refusal::MaxReplicas, 1)]);
        assert_eq!(
            explain(&r),
            "insufficient resources on 2 nodes; 1 node not ready; max replicas per node limit exceed"
        );
        assert_eq!(
            explain(&BTreeMap::from([(Refusal::Constraints, 3)])),
            "scheduling constraints not satisfied on 3 nodes"
        );
    }
}
