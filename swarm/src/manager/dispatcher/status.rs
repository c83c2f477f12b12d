//! The rules for task status reports, decided in plain code: which report a batch keeps, and whether a report
//! changes the stored task.

use crate::api::dispatch::TaskStatusUpdate;
use crate::api::{Task, TaskStatus};
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

/// `task` with `status` applied, if `reporter` may report it and it changes the task; `None` when the report is
/// ignored: the task is on another node, the state is earlier than the stored one (states only move forward), or
/// nothing changed.
pub(crate) fn apply_report(task: &Task, reporter: &str, status: &TaskStatus) -> Option<Task> {
    if task.node_id != reporter || status.state < task.status.state || *status == task.status {
        return None;
    }
    let mut t = task.clone();
    t.status = status.clone();
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TaskState;
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
        let got = apply_report(&t, "n1", &status(TaskState::Running, "started")).expect("applied");
        assert_eq!(got.status, status(TaskState::Running, "started"));
        assert_eq!((got.id, got.node_id, got.desired_state), (t.id, t.node_id, t.desired_state), "only the status");
    }

    #[test]
    fn a_report_from_another_node_is_ignored() {
        let t = on("n1", TaskState::Assigned);
        assert_eq!(apply_report(&t, "n2", &status(TaskState::Failed, "")), None);
        let unassigned = on("", TaskState::Pending);
        assert_eq!(apply_report(&unassigned, "n1", &status(TaskState::Running, "")), None);
    }

    #[test]
    fn an_earlier_state_is_ignored_and_the_same_state_may_update_details() {
        let t = on("n1", TaskState::Running);
        assert_eq!(apply_report(&t, "n1", &status(TaskState::Starting, "")), None);
        assert_eq!(apply_report(&t, "n1", &t.status.clone()), None, "no change, no write");
        let detail = status(TaskState::Running, "healthy");
        assert_eq!(apply_report(&t, "n1", &detail).map(|t| t.status), Some(detail));
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
