//! The node's timers: one slot per kind, each empty or holding its deadline; the node's next
//! wake-up is the earliest slot. Every deadline the node has lives here, so none is rebuilt
//! from scattered fields when the shell asks when to come back.

use std::time::Instant;

/// What a node may have to do at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Heartbeats to every peer (and the leader's periodic checks): always set.
    Heartbeat,
    /// Start an election (a follower or candidate with no leader, or a stalled campaign).
    Election,
    /// A follower's leader has been silent for the failure timeout.
    LeaderLoss,
    /// The leader's replication round is due to go out (`core::round`).
    Round,
    /// A follower's round of forwarded proposals is due to go out.
    Forward,
    /// The next step of the snapshot being encoded.
    SnapshotStep,
}

impl Timer {
    const COUNT: usize = 6;
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Debug, Default)]
pub(super) struct Timers([Option<Instant>; Timer::COUNT]);

impl Timers {
    /// Sets (or with `None` stops) a timer.
    pub(super) fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.0[timer as usize] = at;
    }

    /// Stops the timer and says whether it had expired by `now`.
    pub(super) fn take_expired(&mut self, timer: Timer, now: Instant) -> bool {
        let slot = &mut self.0[timer as usize];
        if slot.is_some_and(|t| t <= now) {
            *slot = None;
            return true;
        }
        false
    }

    /// The earliest deadline set.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_slot_and_expired_ones_fire_once() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::Heartbeat, at(30));
        timers.set(Timer::Election, at(10));
        timers.set(Timer::SnapshotStep, at(20));
        assert_eq!(timers.next(), at(10));
        timers.set(Timer::Election, None);
        assert_eq!(timers.next(), at(20));
        assert!(!timers.take_expired(Timer::Heartbeat, t0));
        assert!(timers.take_expired(Timer::SnapshotStep, t0 + Duration::from_millis(25)));
        assert!(!timers.take_expired(Timer::SnapshotStep, t0 + Duration::from_millis(25)));
        assert_eq!(timers.next(), at(30));
    }
}
