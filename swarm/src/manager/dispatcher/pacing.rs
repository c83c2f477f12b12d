//! When a session sends its node the next assignments message: a few at once, then one per interval while changes
//! keep coming.
//!
//! A large deploy spreads every service over every node, so a node receives its tasks one by one, a few a second.
//! Sent as they come, each task cost the manager one message on the node's stream and, back, one status report of
//! its own; gathered over an interval, a message carries several tasks and so does the report. A node whose tasks
//! change now and then (a scale, an update step) is within its burst and is sent each change at once.

use std::time::Duration;
use tokio::time::Instant;

/// At most one message per interval once the burst is spent.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How many messages may go at once after a quiet spell.
pub const BURST: u32 = 8;

/// A generic cell rate algorithm: the state is one instant, the theoretical time of the next message.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    next: Instant,
}

impl Pacing {
    pub fn new(now: Instant) -> Self {
        Pacing { next: now }
    }

    /// The earliest instant the next message may go.
    pub fn ready_at(&self) -> Instant {
        let tolerance = INTERVAL * (BURST - 1);
        self.next.checked_sub(tolerance).unwrap_or(self.next)
    }

    /// Records a message sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.next = self.next.max(now) + INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_one_message_per_interval() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut p = Pacing::new(t0);
        for i in 0..BURST {
            assert!(p.ready_at() <= t0, "message {i} of the burst waits");
            p.sent(t0);
        }
        assert_eq!(p.ready_at(), t0 + INTERVAL, "the burst is spent");
        p.sent(t0 + INTERVAL);
        assert_eq!(p.ready_at(), t0 + INTERVAL * 2);
    }

    #[test]
    fn a_quiet_spell_restores_the_burst_but_not_more() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut p = Pacing::new(t0);
        for _ in 0..BURST {
            p.sent(t0);
        }
        let later = t0 + INTERVAL * 20;
        for i in 0..BURST {
            assert!(p.ready_at() <= later, "message {i} after the quiet spell waits");
            p.sent(later);
        }
        assert!(p.ready_at() > later, "a quiet spell does not save up more than the burst");
    }
}
