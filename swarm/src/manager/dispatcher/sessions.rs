//! The dispatcher's table of agent sessions and its heartbeat rules, decided in plain code: every call takes the
//! current time, so tests drive the clock.

use super::DispatcherError;
use crate::api::new_id;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Session {
    node_id: String,
    last_seen: Instant,
    closed: CancellationToken,
}

/// Open sessions by session id; at most one per node.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session for `node_id` at `now`, closing the node's previous one. Returns the new session's id.
    pub fn open(&mut self, node_id: &str, closed: CancellationToken, now: Instant) -> String {
        self.by_id.retain(|_, s| {
            let same = s.node_id == node_id;
            if same {
                s.closed.cancel();
            }
            !same
        });
        let id = new_id();
        self.by_id.insert(id.clone(), Session { node_id: node_id.into(), last_seen: now, closed });
        id
    }

    /// The close token of `session_id`, if it is open and belongs to `node_id`.
    pub fn check(&self, node_id: &str, session_id: &str) -> Result<CancellationToken, DispatcherError> {
        match self.by_id.get(session_id) {
            Some(s) if s.node_id == node_id && !s.closed.is_cancelled() => Ok(s.closed.clone()),
            _ => Err(DispatcherError::InvalidSession(session_id.into())),
        }
    }

    /// Records a heartbeat at `now`: the session's deadline starts again from here.
    pub fn heartbeat(&mut self, node_id: &str, session_id: &str, now: Instant) -> Result<(), DispatcherError> {
        match self.by_id.get_mut(session_id) {
            Some(s) if s.node_id == node_id && !s.closed.is_cancelled() => {
                s.last_seen = now;
                Ok(())
            }
            _ => Err(DispatcherError::InvalidSession(session_id.into())),
        }
    }

    /// Closes the sessions not heard from for longer than `grace` before `now` (and those already closed), and
    /// returns the nodes left without a session: the ones to mark DOWN.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) > grace || s.closed.is_cancelled())
            .map(|(id, _)| id.clone())
            .collect();
        let mut nodes: Vec<String> = dead
            .into_iter()
            .filter_map(|id| self.by_id.remove(&id))
            .map(|s| {
                s.closed.cancel();
                s.node_id
            })
            .collect();
        nodes.retain(|n| !self.by_id.values().any(|s| &s.node_id == n));
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Closes every session (the dispatcher stops).
    pub fn close_all(&mut self) {
        for (_, s) in self.by_id.drain() {
            s.closed.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_secs(15);

    #[test]
    fn a_heartbeat_extends_the_deadline_and_a_missed_one_expires_the_session() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let token = CancellationToken::new();
        let id = s.open("n1", token.clone(), t0);

        assert_eq!(s.expire(t0 + GRACE, GRACE), Vec::<String>::new(), "exactly at the deadline is still alive");
        s.heartbeat("n1", &id, t0 + 2 * PERIOD).unwrap();
        // Past the first deadline, but within the one the heartbeat set.
        assert_eq!(s.expire(t0 + GRACE + PERIOD, GRACE), Vec::<String>::new());
        assert!(s.check("n1", &id).is_ok());

        // No heartbeat since t0 + 2 periods: the node is down once the grace after it has passed.
        assert_eq!(s.expire(t0 + 2 * PERIOD + GRACE + Duration::from_millis(1), GRACE), vec!["n1".to_string()]);
        assert!(token.is_cancelled(), "the session's streams are told to close");
        assert!(matches!(s.check("n1", &id), Err(DispatcherError::InvalidSession(_))));
        assert!(matches!(s.heartbeat("n1", &id, t0 + 4 * PERIOD), Err(DispatcherError::InvalidSession(_))));
        assert_eq!(s.expire(t0 + 10 * PERIOD, GRACE), Vec::<String>::new(), "a node is reported down once");
    }

    #[test]
    fn a_session_answers_only_its_own_node() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let id = s.open("n1", CancellationToken::new(), t0);
        assert!(matches!(s.check("n2", &id), Err(DispatcherError::InvalidSession(_))));
        assert!(matches!(s.heartbeat("n2", &id, t0 + PERIOD), Err(DispatcherError::InvalidSession(_))));
        assert!(matches!(s.heartbeat("n1", "nosuchsession", t0 + PERIOD), Err(DispatcherError::InvalidSession(_))));
        // n2's heartbeat on n1's session did not keep n1 alive.
        assert_eq!(s.expire(t0 + PERIOD + GRACE, GRACE), vec!["n1".to_string()]);
    }

    #[test]
    fn a_new_session_replaces_the_old_one_and_keeps_the_node_up() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let old_token = CancellationToken::new();
        let old = s.open("n1", old_token.clone(), t0);
        let new = s.open("n1", CancellationToken::new(), t0 + 2 * PERIOD);
        assert!(old_token.is_cancelled());
        assert!(matches!(s.check("n1", &old), Err(DispatcherError::InvalidSession(_))));
        assert!(s.check("n1", &new).is_ok());
        // The old session's deadline has passed, the new one's has not: the node is not down.
        assert_eq!(s.expire(t0 + GRACE + PERIOD, GRACE), Vec::<String>::new());
        assert_eq!(s.expire(t0 + 2 * PERIOD + GRACE + PERIOD, GRACE), vec!["n1".to_string()]);
    }

    #[test]
    fn closing_all_ends_every_session() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let ia = s.open("n1", a.clone(), t0);
        s.open("n2", b.clone(), t0);
        s.close_all();
        assert!(a.is_cancelled() && b.is_cancelled());
        assert!(s.check("n1", &ia).is_err());
    }
}
