//! Replication rounds: when the leader sends the entries it appended.
//!
//! Every round costs about the same whatever it carries: one Append to each follower, one
//! reply from each, and then one write to each client that gets a delivery. Under load the
//! leader therefore holds new entries that do not fill an Append until every writer active in
//! the last linger time has written again, and for at most the linger time. A closed loop of N
//! writers then settles into rounds of N messages. Like PostgreSQL's `commit_delay`, which
//! waits only while `commit_siblings` other transactions are active, nothing is held unless
//! two writers or more were active, so a lone writer's message is never delayed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::log::{Command, Log, LogIndex};
use super::SessionId;

/// The leader's replication rounds (see the module documentation).
#[derive(Debug)]
pub struct Rounds {
    linger: Duration,
    /// When the first entry of the round being gathered was appended.
    since: Option<Instant>,
    /// Entries up to this index have been looked at for their writers.
    seen: LogIndex,
    /// Writers of the round being gathered, sorted.
    writers: Vec<SessionId>,
    /// Rounds sent within the last linger time: when, and their writers.
    recent: VecDeque<(Instant, Vec<SessionId>)>,
    /// The writers of `recent`, sorted: those the round being gathered waits for.
    active: Vec<SessionId>,
}

impl Rounds {
    /// Rounds that hold entries for at most `linger` (zero: never).
    pub fn new(linger: Duration) -> Rounds {
        Rounds {
            linger,
            since: None,
            seen: 0,
            writers: Vec::new(),
            recent: VecDeque::new(),
            active: Vec::new(),
        }
    }

    /// Takes in the entries appended to the leader's `log` since the last call (its own
    /// clients' and those forwarded by followers).
    pub fn appended(&mut self, now: Instant, log: &Log) {
        let last = log.last_index();
        if self.linger.is_zero() || last <= self.seen {
            return;
        }
        self.since.get_or_insert(now);
        for e in log.after(self.seen) {
            if let Command::Say { session, .. } = e.command {
                if let Err(at) = self.writers.binary_search(&session) {
                    self.writers.insert(at, session);
                }
            }
        }
        self.seen = last;
    }

    /// True while the round's entries wait for more writers.
    pub fn holding(&self, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        now < since + self.linger
            && self.active.len() >= 2
            && !self
                .active
                .iter()
                .all(|w| self.writers.binary_search(w).is_ok())
    }

    /// When the round being gathered goes out even if writers are missing.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + self.linger)
    }

    /// Call after a flush that did not hold: the round went out.
    pub fn sent(&mut self, now: Instant) {
        if self.since.take().is_none() {
            return;
        }
        self.recent
            .push_back((now, std::mem::take(&mut self.writers)));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| *t + self.linger < now)
        {
            self.recent.pop_front();
        }
        self.active.clear();
        self.active
            .extend(self.recent.iter().flat_map(|(_, w)| w.iter().copied()));
        self.active.sort_unstable();
        self.active.dedup();
    }

    /// Forgets everything but the log position (a new leadership knows no writers yet).
    pub fn reset(&mut self, last: LogIndex) {
        *self = Rounds {
            seen: last,
            ..Rounds::new(self.linger)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConnId;

    const LINGER: Duration = Duration::from_millis(1);

    /// Appends a message by each of `writers` (connection numbers) to `log`.
    fn say(log: &mut Log, writers: &[u64]) {
        for &w in writers {
            let session = SessionId {
                node: 1,
                incarnation: 1,
                conn: ConnId(w),
            };
            log.append(
                1,
                None,
                Command::Say {
                    session,
                    room: "r".into(),
                    client_seq: log.last_index() + 1,
                    text: "t".into(),
                    time_ms: 0,
                },
            );
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_round_waits_for_every_active_writer_at_most_the_linger() {
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER));
        // The first round knows no writers: it goes at once.
        say(&mut log, &[1, 2]);
        r.appended(t0, &log);
        assert!(!r.holding(t0));
        r.sent(t0);
        // A second cohort's round: writers 1 and 2 are active, so it waits for them.
        let t1 = t0 + us(100);
        say(&mut log, &[3]);
        r.appended(t1, &log);
        assert!(r.holding(t1));
        assert_eq!(r.deadline(), Some(t1 + LINGER));
        say(&mut log, &[2, 1]);
        r.appended(t1 + us(200), &log);
        assert!(!r.holding(t1 + us(200)), "every active writer wrote again");
        r.sent(t1 + us(200));
        assert_eq!(r.deadline(), None);
        // Now 1, 2 and 3 are active: a round without 3 is held until the linger ends.
        let t2 = t1 + us(400);
        say(&mut log, &[1, 2]);
        r.appended(t2, &log);
        assert!(r.holding(t2 + LINGER - us(1)));
        assert!(!r.holding(t2 + LINGER));
        r.sent(t2 + LINGER);
        // Writer 3 wrote more than a linger ago: it is no longer waited for.
        let t3 = t2 + LINGER + us(100);
        say(&mut log, &[1, 2]);
        r.appended(t3, &log);
        assert!(!r.holding(t3));
    }

    #[test]
    fn nothing_is_held_after_a_lone_writer_or_without_a_linger() {
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER));
        say(&mut log, &[1]);
        r.appended(t0, &log);
        r.sent(t0);
        say(&mut log, &[2]);
        r.appended(t0, &log);
        assert!(!r.holding(t0), "one active writer makes nobody wait");
        let mut off = Rounds::new(Duration::ZERO);
        for _ in 0..3 {
            say(&mut log, &[1, 2, 3]);
            off.appended(t0, &log);
            assert!(!off.holding(t0));
            assert_eq!(off.deadline(), None);
            off.sent(t0);
        }
    }

    #[test]
    fn a_new_leadership_forgets_the_writers_and_what_it_has_seen() {
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER));
        say(&mut log, &[1, 2]);
        r.appended(t0, &log);
        r.sent(t0);
        say(&mut log, &[1]);
        r.appended(t0, &log);
        assert!(r.holding(t0));
        r.reset(log.last_index());
        assert!(!r.holding(t0));
        assert_eq!(r.deadline(), None);
        // Entries up to the reset do not start a round.
        r.appended(t0, &log);
        assert_eq!(r.deadline(), None);
    }
}
