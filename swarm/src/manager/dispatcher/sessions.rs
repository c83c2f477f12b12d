//! The dispatcher's table of agent sessions and its liveness rules, decided in plain code: every call takes the
//! current time, so tests drive the clock. A node is down when its session missed heartbeats for the heartbeat
//! grace, or when its session stream ended and no new session opened within the (shorter) session grace.
//!
//! The session grace is for one agent that went away (its process died, its host lost power). When most
//! sessions end together the cause is on the manager's side (it stalled past the agents' call deadlines, or
//! its own network failed): thousands of agents are then queueing to reconnect, and marking them DOWN after the
//! session grace would reschedule the whole cluster. During such a mass break, ended sessions get the heartbeat
//! grace instead, as every session has in SwarmKit.

use super::DispatcherError;
use crate::api::new_id;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Session {
    node_id: String,
    last_seen: Instant,
    /// When the agent's end of the session stream went away (process died, connection reset).
    ended: Option<Instant>,
    closed: CancellationToken,
}

/// Why a node was found down, as recorded in its status message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DownReason {
    /// Its heartbeats stopped for the heartbeat grace.
    HeartbeatFailure,
    /// Its session stream ended and it did not reconnect within the session grace.
    SessionEnded,
    /// It was up when this dispatcher started and never opened a session within the heartbeat grace.
    NeverReconnected,
}

impl DownReason {
    pub fn message(self) -> &'static str {
        match self {
            DownReason::HeartbeatFailure => "heartbeat failure",
            DownReason::SessionEnded => "node's session ended",
            DownReason::NeverReconnected => "heartbeat failure for unknown node",
        }
    }
}

/// How long a node may stay silent, or disconnected, before it is down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grace {
    pub heartbeat: Duration,
    pub session: Duration,
    /// For a node that was up when this dispatcher started (a new leader) and has not opened a session here: a
    /// live agent notices the old leader is gone within half a heartbeat period (its call deadline) and reconnects
    /// at once, so one period plus the session grace is plenty, and the dead leader's own node is replaced
    /// sooner than after three missed heartbeats.
    pub reconnect: Duration,
}

/// Ended sessions, at least, that make a mass break (when they are also most of the sessions): below this, a
/// few agents going at once is read as those agents going.
pub(crate) const MASS_BREAK_MIN: usize = 10;

/// Open sessions by session id; at most one per node.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: HashMap<String, Session>,
    /// Nodes the store had up when this dispatcher started, without a session yet, and since when: like a
    /// session never heard from, they are down after the heartbeat grace (as SwarmKit's unknown nodes).
    unknown: HashMap<String, Instant>,
    /// Nodes a liveness check is writing DOWN right now: a session opening meanwhile must write READY even if
    /// the store still shows the node READY, or the DOWN landing after it would stand.
    downing: HashSet<String>,
}

impl Sessions {
    /// Opens a session for `node_id` at `now`, closing the node's previous one. Returns the new session's id.
    pub fn open(&mut self, node_id: &str, closed: CancellationToken, now: Instant) -> String {
        self.unknown.remove(node_id);
        self.by_id.retain(|_, s| {
            let same = s.node_id == node_id;
            if same {
                s.closed.cancel();
            }
            !same
        });
        let id = new_id();
        self.by_id.insert(id.clone(), Session { node_id: node_id.into(), last_seen: now, ended: None, closed });
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

    /// Expects `node_id` (up in the store when the dispatcher started) to open a session, from `now` on.
    pub fn expect(&mut self, node_id: &str, now: Instant) {
        if !self.has_node(node_id) {
            self.unknown.insert(node_id.into(), now);
        }
    }

    /// Records that the agent's end of `session_id`'s stream went away at `now`. The session stays valid for the
    /// session grace, so a quick reconnect (a new session) keeps the node READY.
    pub fn end(&mut self, node_id: &str, session_id: &str, now: Instant) {
        if let Some(s) = self.by_id.get_mut(session_id) {
            if s.node_id == node_id && s.ended.is_none() {
                s.ended = Some(now);
            }
        }
    }

    /// Closes the sessions not heard from for longer than the heartbeat grace before `now`, those whose stream
    /// ended longer than the session grace ago (and those already closed), and returns the nodes left without a
    /// session: the ones to mark DOWN, with why. During a mass break ([`Sessions::mass_break`]) an ended stream
    /// alone downs no node; its session expires by the heartbeat grace.
    pub fn expire(&mut self, now: Instant, grace: Grace) -> Vec<(String, DownReason)> {
        let since = |t: Instant| now.saturating_duration_since(t);
        let mass_break = self.mass_break();
        let dead: Vec<(String, DownReason)> = self
            .by_id
            .iter()
            .filter_map(|(id, s)| {
                let reason = match s.ended {
                    Some(t) if !mass_break && since(t) > grace.session => DownReason::SessionEnded,
                    _ if since(s.last_seen) > grace.heartbeat || s.closed.is_cancelled() => {
                        DownReason::HeartbeatFailure
                    }
                    _ => return None,
                };
                Some((id.clone(), reason))
            })
            .collect();
        let mut nodes: Vec<(String, DownReason)> = dead
            .into_iter()
            .filter_map(|(id, reason)| self.by_id.remove(&id).map(|s| (s, reason)))
            .map(|(s, reason)| {
                s.closed.cancel();
                (s.node_id, reason)
            })
            .collect();
        let silent: Vec<String> =
            self.unknown.iter().filter(|(_, t)| since(**t) > grace.reconnect).map(|(n, _)| n.clone()).collect();
        for n in silent {
            self.unknown.remove(&n);
            nodes.push((n, DownReason::NeverReconnected));
        }
        nodes.retain(|(n, _)| !self.by_id.values().any(|s| &s.node_id == n));
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes.dedup_by(|a, b| a.0 == b.0);
        nodes
    }

    /// Moves every deadline on by `stalled`, never past `now`: the manager itself did not run for that long (a
    /// stopped process, a starved runtime), so heartbeats sent meanwhile are still waiting to be read and
    /// nodes must not be found down for the manager's silence. A node that really went away during the stall is
    /// found down that much later.
    pub fn excuse(&mut self, stalled: Duration, now: Instant) {
        let later = |t: &mut Instant| *t = (*t + stalled).min(now);
        for s in self.by_id.values_mut() {
            later(&mut s.last_seen);
            if let Some(t) = s.ended.as_mut() {
                later(t);
            }
        }
        self.unknown.values_mut().for_each(later);
    }

    /// Whether most sessions (and at least [`MASS_BREAK_MIN`]) have ended without their nodes opening new ones.
    pub fn mass_break(&self) -> bool {
        let ended = self.by_id.values().filter(|s| s.ended.is_some()).count();
        ended >= MASS_BREAK_MIN && ended * 2 > self.by_id.len()
    }

    /// Closes `session_id` (its node could not be registered).
    pub fn close(&mut self, session_id: &str) {
        if let Some(s) = self.by_id.remove(session_id) {
            s.closed.cancel();
        }
    }

    /// Closes the sessions of the nodes `gone` says left the swarm (removed), and forgets them as expected
    /// nodes; returns those nodes. They are not reported down: they are no longer nodes at all.
    pub fn close_nodes(&mut self, gone: impl Fn(&str) -> bool) -> Vec<String> {
        let mut closed = Vec::new();
        self.by_id.retain(|_, s| {
            if !gone(&s.node_id) {
                return true;
            }
            s.closed.cancel();
            closed.push(s.node_id.clone());
            false
        });
        self.unknown.retain(|n, _| !gone(n));
        closed
    }

    /// Claims `node_id` for a DOWN write unless it has an open session; true when claimed.
    pub fn start_down(&mut self, node_id: &str) -> bool {
        if self.has_node(node_id) {
            return false;
        }
        self.downing.insert(node_id.into());
        true
    }

    /// The DOWN write of `node_id` finished (committed or not).
    pub fn end_down(&mut self, node_id: &str) {
        self.downing.remove(node_id);
    }

    /// Whether a DOWN write of `node_id` is under way.
    pub fn going_down(&self, node_id: &str) -> bool {
        self.downing.contains(node_id)
    }

    /// Whether `node_id` has an open session.
    pub fn has_node(&self, node_id: &str) -> bool {
        self.by_id.values().any(|s| s.node_id == node_id && !s.closed.is_cancelled())
    }

    /// Closes every session (the dispatcher stops).
    pub fn close_all(&mut self) {
        for (_, s) in self.by_id.drain() {
            s.closed.cancel();
        }
        self.unknown.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);
    const GRACE: Grace = Grace {
        heartbeat: Duration::from_secs(15),
        session: Duration::from_secs(1),
        reconnect: Duration::from_secs(6),
    };

    fn down(nodes: &[impl AsRef<str>], reason: DownReason) -> Vec<(String, DownReason)> {
        nodes.iter().map(|n| (n.as_ref().to_string(), reason)).collect()
    }

    #[test]
    fn a_heartbeat_extends_the_deadline_and_a_missed_one_expires_the_session() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let token = CancellationToken::new();
        let id = s.open("n1", token.clone(), t0);

        assert_eq!(s.expire(t0 + GRACE.heartbeat, GRACE), vec![], "exactly at the deadline is still alive");
        s.heartbeat("n1", &id, t0 + 2 * PERIOD).unwrap();
        // Past the first deadline, but within the one the heartbeat set.
        assert_eq!(s.expire(t0 + GRACE.heartbeat + PERIOD, GRACE), vec![]);
        assert!(s.check("n1", &id).is_ok());

        // No heartbeat since t0 + 2 periods: the node is down once the grace after it has passed.
        assert_eq!(
            s.expire(t0 + 2 * PERIOD + GRACE.heartbeat + Duration::from_millis(1), GRACE),
            down(&["n1"], DownReason::HeartbeatFailure)
        );
        assert!(token.is_cancelled(), "the session's streams are told to close");
        assert!(matches!(s.check("n1", &id), Err(DispatcherError::InvalidSession(_))));
        assert!(matches!(s.heartbeat("n1", &id, t0 + 4 * PERIOD), Err(DispatcherError::InvalidSession(_))));
        assert_eq!(s.expire(t0 + 10 * PERIOD, GRACE), vec![], "a node is reported down once");
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
        assert_eq!(s.expire(t0 + PERIOD + GRACE.heartbeat, GRACE), down(&["n1"], DownReason::HeartbeatFailure));
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
        assert_eq!(s.expire(t0 + GRACE.heartbeat + PERIOD, GRACE), vec![]);
        assert_eq!(
            s.expire(t0 + 2 * PERIOD + GRACE.heartbeat + PERIOD, GRACE),
            down(&["n1"], DownReason::HeartbeatFailure)
        );
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

    #[test]
    fn an_ended_stream_downs_the_node_after_the_session_grace_unless_it_reconnects() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let ia = s.open("n1", a.clone(), t0);
        let ib = s.open("n2", b.clone(), t0);
        s.end("n1", &ia, t0 + PERIOD);
        s.end("n2", &ib, t0 + PERIOD);
        // n2 reconnects within the grace: its new session replaces the ended one.
        s.open("n2", CancellationToken::new(), t0 + PERIOD + GRACE.session / 2);
        assert_eq!(s.expire(t0 + PERIOD + GRACE.session, GRACE), vec![], "exactly at the grace is still up");
        assert!(s.check("n1", &ia).is_ok(), "an ended session stays valid during the grace");
        assert_eq!(
            s.expire(t0 + PERIOD + GRACE.session + Duration::from_millis(1), GRACE),
            down(&["n1"], DownReason::SessionEnded),
            "far sooner than the heartbeat grace"
        );
        assert!(a.is_cancelled());
        // Ending someone else's session, or ending twice, changes nothing.
        let ic = s.open("n3", CancellationToken::new(), t0);
        s.end("n1", &ic, t0);
        assert_eq!(s.expire(t0 + GRACE.session * 2, GRACE), vec![]);
    }

    /// Sessions for `nodes` opened at `opened`, the first `ending` of them ended at `ended`.
    fn opened_then_ended(nodes: &[String], opened: Instant, ending: usize, ended: Instant) -> Sessions {
        let mut s = Sessions::default();
        let ids: Vec<String> = nodes.iter().map(|n| s.open(n, CancellationToken::new(), opened)).collect();
        for (n, id) in nodes.iter().zip(&ids).take(ending) {
            s.end(n, id, ended);
        }
        s
    }

    #[test]
    fn when_most_sessions_end_together_they_get_the_heartbeat_grace() {
        let t0 = Instant::now();
        let nodes: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
        // A stalled manager: 15 of 20 agents gave up on it together.
        let mut s = opened_then_ended(&nodes, t0, 15, t0 + PERIOD);
        assert!(s.mass_break());
        assert_eq!(s.expire(t0 + PERIOD + GRACE.session * 3, GRACE), vec![], "no node is down after the session grace");
        // 13 of them reconnect; the 2 still missing are no longer most of the sessions, so their session grace
        // (long past) applies again.
        let back = t0 + PERIOD + GRACE.session * 4;
        for n in nodes.iter().take(13) {
            s.open(n, CancellationToken::new(), back);
        }
        assert!(!s.mass_break());
        assert_eq!(s.expire(back, GRACE), down(&["n13", "n14"], DownReason::SessionEnded));

        // Another mass break that never recovers: the heartbeat grace still downs every node in it.
        let mut s = opened_then_ended(&nodes, t0, nodes.len(), t0 + PERIOD);
        assert_eq!(s.expire(t0 + GRACE.heartbeat, GRACE), vec![]);
        assert_eq!(
            s.expire(t0 + GRACE.heartbeat + Duration::from_millis(1), GRACE),
            down(&nodes, DownReason::HeartbeatFailure)
        );
    }

    #[test]
    fn a_few_sessions_ending_together_are_not_a_mass_break() {
        let t0 = Instant::now();
        // Fewer than MASS_BREAK_MIN, though all of the sessions: a small cluster whose workers all went.
        let nodes: Vec<String> = (0..MASS_BREAK_MIN - 1).map(|i| format!("n{i}")).collect();
        let mut s = opened_then_ended(&nodes, t0, nodes.len(), t0);
        assert!(!s.mass_break());
        assert_eq!(
            s.expire(t0 + GRACE.session + Duration::from_millis(1), GRACE),
            down(&nodes, DownReason::SessionEnded)
        );
    }

    #[test]
    fn a_node_up_before_the_dispatcher_started_is_down_unless_it_opens_a_session_within_the_grace() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.expect("n1", t0);
        s.expect("n2", t0);
        s.open("n2", CancellationToken::new(), t0 + PERIOD);
        assert_eq!(s.expire(t0 + GRACE.reconnect, GRACE), vec![], "exactly at the grace is still up");
        assert_eq!(
            s.expire(t0 + GRACE.reconnect + Duration::from_millis(1), GRACE),
            down(&["n1"], DownReason::NeverReconnected),
            "n2 opened a session in time"
        );
        assert_eq!(
            s.expire(t0 + PERIOD + GRACE.heartbeat, GRACE),
            vec![],
            "reported once; n2 is not expected any more"
        );
    }

    /// After a stall of the manager, a node gets its whole grace again from where the stall left it, not from
    /// the heartbeat it sent before the stall; a node that stays silent after that is still found down.
    #[test]
    fn a_stall_of_the_manager_is_not_counted_against_the_nodes() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        let beating = s.open("n1", CancellationToken::new(), t0);
        let silent = s.open("n2", CancellationToken::new(), t0);
        s.end("n2", &silent, t0 + PERIOD);
        s.expect("n3", t0);
        // The manager did not run from t0 + 1 period to 20 s later; its check then wakes.
        let stall = Duration::from_secs(20);
        let woke = t0 + PERIOD + stall;
        s.excuse(stall, woke);
        assert_eq!(s.expire(woke, GRACE), vec![], "nobody is down for the manager's silence");
        // The heartbeat n1 sent during the stall is read now.
        s.heartbeat("n1", &beating, woke).unwrap();
        let after = woke + GRACE.heartbeat;
        let mut down_after = s.expire(after, GRACE);
        down_after.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            down_after,
            vec![("n2".to_string(), DownReason::SessionEnded), ("n3".to_string(), DownReason::NeverReconnected)],
            "the node still silent after the stall is found down; the beating one is not"
        );
        assert!(s.check("n1", &beating).is_ok());
    }
}
