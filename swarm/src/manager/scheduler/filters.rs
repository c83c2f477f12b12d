//! The scheduler's filter pipeline: each filter says whether a node can take a task, and explains a refusal in
//! the words `service ps` shows ("insufficient memory on 1 node").

use super::NodeInfo;
use crate::api::Constraint;
use crate::api::{NodeAvailability, NodeState, Task};

/// Why a node was refused, grouped so the explanation can count nodes per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    NotReady,
    NotActive,
    Constraints,
    MaxReplicas,
    Memory,
    Cpu,
}

impl Refusal {
    /// The explanation for `n` nodes refused for this reason.
    pub fn explain(self, n: usize) -> String {
        let nodes = if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
        match self {
            Refusal::NotReady => format!("{nodes} not ready"),
            Refusal::NotActive => format!("{nodes} not available for new tasks"),
            Refusal::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Refusal::MaxReplicas => format!("max replicas per node limit exceeded on {nodes}"),
            Refusal::Memory => format!("insufficient memory on {nodes}"),
            Refusal::Cpu => format!("insufficient CPU on {nodes}"),
        }
    }
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
    let want = task.spec.resources.reservations;
    if want.memory_bytes > 0 && want.memory_bytes > node.available.memory_bytes {
        return Err(Refusal::Memory);
    }
    if want.nano_cpus > 0 && want.nano_cpus > node.available.nano_cpus {
        return Err(Refusal::Cpu);
    }
    Ok(())
}
