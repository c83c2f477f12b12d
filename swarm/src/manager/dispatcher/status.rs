//! The rules for task status reports, decided in plain code: which report a batch keeps, and whether a report
//! changes the stored task (`Task::takes_report`, which the store checks again when it applies the report).

use crate::api::dispatch::TaskStatusUpdate;
use crate::api::TaskStatus;
use std::collections::HashMap;

/// Reports gathered for one store write, keyed by (reporting node, task). Keying by the reporter too means a
/// report from a node the task is not on can never displace the report of the node it is on.
pub(crate) type Batch = HashMap<(String, String), TaskStatus>;

/// Folds one report into `batch`: per reporter and task, the furthest state wins, the later report on a tie (so
/// a report that arrives out of order cannot undo a later one).
pub(crate) fn gather(batch: &mut Batch, node_id: &str, u: TaskStatusUpdate) {
    let key = (node_id.to_string(), u.task_id);
    match batch.get(&key) {
        Some(kept) if kept.state > u.status.state => {}
        _ => {
            batch.insert(key, u.status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Task, TaskState};
    use crate::testing::task;

    fn on(node: &str, state: TaskState) -> Task {
        let mut t = task("t1", "s1", 1);
        t.node_id = node.into();
        t.status.state = state;
        t
    }

    fn status(state: TaskState, message: &str) -> TaskStatus {
        TaskStatus { state, message: message.into(), ..Default::default() }
    }

    #[test]
    fn a_report_moves_a_task_forward_on_its_own_node() {
        let t = on("n1", TaskState::Assigned);
        assert!(t.takes_report("n1", &status(TaskState::Running, "started")));
    }

    #[test]
    fn a_report_from_another_node_is_ignored() {
        let t = on("n1", TaskState::Assigned);
        assert!(!t.takes_report("n2", &status(TaskState::Failed, "")));
        let unassigned = on("", TaskState::Pending);
        assert!(!unassigned.takes_report("n1", &status(TaskState::Running, "")));
    }

    #[test]
    fn an_earlier_state_is_ignored_and_the_same_state_may_update_details() {
        let t = on("n1", TaskState::Running);
        assert!(!t.takes_report("n1", &status(TaskState::Starting, "")));
        assert!(!t.takes_report("n1", &t.status.clone()), "no change, no write");
        assert!(t.takes_report("n1", &status(TaskState::Running, "healthy")));
    }

    #[test]
    fn a_batch_keeps_the_furthest_report_per_node_and_task() {
        let mut b = Batch::new();
        let u = |state, message: &str| TaskStatusUpdate { task_id: "t1".into(), status: status(state, message) };
        gather(&mut b, "n1", u(TaskState::Starting, "a"));
        gather(&mut b, "n1", u(TaskState::Running, "b"));
        gather(&mut b, "n1", u(TaskState::Starting, "late"));
        let n1 = ("n1".to_string(), "t1".to_string());
        assert_eq!(b[&n1], status(TaskState::Running, "b"), "an earlier state arriving late is dropped");
        gather(&mut b, "n1", u(TaskState::Running, "c"));
        // A report from another node for the same task does not displace n1's.
        gather(&mut b, "n2", u(TaskState::Failed, "stranger"));
        assert_eq!(b.len(), 2);
        assert_eq!(b[&n1], status(TaskState::Running, "c"), "on a tie, the later report");
        assert_eq!(b[&("n2".to_string(), "t1".to_string())], status(TaskState::Failed, "stranger"));
    }
}
