//! Replication rounds: when the leader sends the entries it appended, and when a follower
//! forwards its clients' writes to the leader.
//!
//! Every round costs about the same whatever it carries: one Append to each follower, one
//! reply from each, and then one write to each client that gets a delivery; on a follower, one
//! Forward to the leader, and a wake-up of the leader to read it. Under load the
//! leader therefore holds new entries that do not fill an Append until every writer active in
//! the last linger time has written again, and for at most the linger time. A closed loop of N
//! writers then settles into rounds of N messages. Like PostgreSQL's `commit_delay`, which
//! waits only while `commit_siblings` other transactions are active, nothing is held unless
//! two writers or more were active, so a lone writer's message is never delayed, and after a
//! lull of ten lingers the writers of earlier rounds are not waited for.
//!
//! A follower gathers its own clients' writes the same way and forwards each round in one
//! Forward. The leader therefore stops waiting for the writers of another node once a message
//! of that node is in its round: the rest of them are in that node's next round. Waits thus
//! overlap rather than add up. A follower's holding pays only when its writers answer the
//! deliveries of each round (a closed loop); when they write at their own pace (an open loop)
//! its rounds go at the linger with writers missing, and it would only add latency to what the
//! leader batches anyway. So a follower holds only while its rounds complete: after a round
//! that went at the linger it skips 2, 4, ... up to 256 rounds before it tries again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::log::{Command, Log, LogIndex};
use super::{NodeId, SessionId};

/// Adaptive rounds skip at most 2^MAX_MISSES rounds after rounds that went at the linger.
const MAX_MISSES: u32 = 8;

/// A round that opens this many lingers after the last one went waits for no writer of the
/// rounds before: a closed loop answers within a round trip, a few lingers at most.
const IDLE_LINGERS: u32 = 10;

/// How late after its deadline a round may go and still count as held to it: the loop's poll
/// timeout has a resolution of 1 ms.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// The leader's replication rounds, or a follower's forwarding rounds (see the module
/// documentation).
#[derive(Debug)]
pub struct Rounds {
    linger: Duration,
    /// The node these rounds are gathered on.
    local: NodeId,
    /// Whether rounds stop holding while they go at the linger (see the module documentation).
    adaptive: bool,
    /// Rounds in a row that went at the linger with writers missing (adaptive only).
    misses: u32,
    /// Rounds still to send without holding (adaptive only).
    skip: u32,
    /// When the first entry of the round being gathered was appended.
    since: Option<Instant>,
    /// Entries up to this index have been looked at for their writers.
    seen: LogIndex,
    /// Writers of the round being gathered, sorted.
    writers: Vec<SessionId>,
    /// The other nodes with a writer in the round being gathered: their part of it is in.
    reported: Vec<NodeId>,
    /// Rounds sent within the last linger time: when, and their writers.
    recent: VecDeque<(Instant, Vec<SessionId>)>,
    /// The writers of `recent`, sorted: those the round being gathered waits for.
    active: Vec<SessionId>,
    /// Whether every active writer is in the round being gathered (see [`Rounds::complete`]),
    /// kept up to date since `holding` is asked several times per loop turn.
    all_in: bool,
}

impl Rounds {
    /// Rounds of node `local` that hold entries for at most `linger` (zero: never).
    pub fn new(linger: Duration, local: NodeId) -> Rounds {
        Rounds {
            linger,
            local,
            adaptive: false,
            misses: 0,
            skip: 0,
            since: None,
            seen: 0,
            writers: Vec::new(),
            reported: Vec::new(),
            recent: VecDeque::new(),
            active: Vec::new(),
            all_in: true,
        }
    }

    /// The same rounds, but holding only while they complete (a follower's; see the module
    /// documentation).
    pub fn adaptive(self) -> Rounds {
        Rounds {
            adaptive: true,
            ..self
        }
    }

    /// Takes in the entries appended to the leader's `log` since the last call (its own
    /// clients' and those forwarded by followers).
    pub fn appended(&mut self, now: Instant, log: &Log) {
        let last = log.last_index();
        if last <= self.seen {
            return;
        }
        self.gather(now, log.after(self.seen).iter().map(|e| &e.command));
        self.seen = last;
    }

    /// Takes in new commands of the round being gathered: a follower's own proposals, which it
    /// forwards in rounds as the leader replicates them.
    pub fn gather<'a>(&mut self, now: Instant, commands: impl IntoIterator<Item = &'a Command>) {
        if self.linger.is_zero() {
            return;
        }
        let mut any = false;
        for command in commands {
            any = true;
            if let Command::Say { session, .. } = command {
                if let Err(at) = self.writers.binary_search(session) {
                    self.writers.insert(at, *session);
                }
                if session.node != self.local && !self.reported.contains(&session.node) {
                    self.reported.push(session.node);
                }
            }
        }
        if any {
            if self.since.is_none() {
                self.open(now);
            }
            self.all_in = self.complete();
        }
    }

    /// A round starts gathering at `now`. After a lull of [`IDLE_LINGERS`] lingers since the
    /// last round, the writers of the rounds before it are not waited for: they are not
    /// answering deliveries.
    fn open(&mut self, now: Instant) {
        self.since = Some(now);
        let idle = self.linger.saturating_mul(IDLE_LINGERS);
        if self.recent.back().is_some_and(|(t, _)| *t + idle < now) {
            self.recent.clear();
            self.active.clear();
        }
    }

    /// True while the round's entries wait for more writers.
    pub fn holding(&self, now: Instant) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        self.skip == 0 && now < since + self.linger && self.active.len() >= 2 && !self.all_in
    }

    /// True when every active writer wrote in the round being gathered (or its node's part
    /// of the round is in).
    fn complete(&self) -> bool {
        self.active.iter().all(|w| {
            self.writers.binary_search(w).is_ok()
                || (w.node != self.local && self.reported.contains(&w.node))
        })
    }

    /// When the round being gathered goes out even if writers are missing.
    pub fn deadline(&self) -> Option<Instant> {
        self.since
            .filter(|_| self.skip == 0)
            .map(|t| t + self.linger)
    }

    /// Call after a flush that did not hold: the round went out.
    pub fn sent(&mut self, now: Instant) {
        let Some(since) = self.since.take() else {
            return;
        };
        // A round sent long after its deadline waited for something else (a leader to forward
        // to): it says nothing about the writers.
        let on_time = now <= since + self.linger + TIMER_SLACK;
        if self.adaptive {
            if self.skip > 0 {
                self.skip -= 1;
            } else if self.active.len() >= 2 && on_time {
                if self.all_in {
                    self.misses = 0;
                } else {
                    self.misses = (self.misses + 1).min(MAX_MISSES);
                    self.skip = 1 << self.misses;
                }
            }
        }
        self.reported.clear();
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
        self.all_in = self.active.is_empty();
    }

    /// Forgets everything but the log position (a new leadership knows no writers yet).
    pub fn reset(&mut self, last: LogIndex) {
        *self = Rounds {
            seen: last,
            adaptive: self.adaptive,
            ..Rounds::new(self.linger, self.local)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConnId;

    const LINGER: Duration = Duration::from_millis(1);

    /// Appends a message by each of `writers` (connection numbers on node 1) to `log`.
    fn say(log: &mut Log, writers: &[u64]) {
        say_on(log, 1, writers);
    }

    /// Appends a message by each of `writers` (connection numbers on `node`) to `log`.
    fn say_on(log: &mut Log, node: NodeId, writers: &[u64]) {
        for &w in writers {
            let session = SessionId {
                node,
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
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER, 1));
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
    fn another_nodes_writers_are_waited_for_until_its_part_of_the_round_is_in() {
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER, 1));
        say_on(&mut log, 2, &[1, 2]);
        say_on(&mut log, 3, &[1]);
        say(&mut log, &[1]);
        r.appended(t0, &log);
        r.sent(t0);
        // Node 2 forwards one of its two active writers: its part is in, node 3's is not.
        say_on(&mut log, 2, &[1]);
        say(&mut log, &[1]);
        r.appended(t0, &log);
        assert!(r.holding(t0));
        say_on(&mut log, 3, &[1]);
        r.appended(t0, &log);
        assert!(!r.holding(t0), "node 2's writer 2 is in its next round");
        r.sent(t0);
        // This node's own writers are always waited for.
        say_on(&mut log, 2, &[1]);
        say_on(&mut log, 3, &[1]);
        r.appended(t0, &log);
        assert!(r.holding(t0), "writer 1 of node 1 has not written");
        say(&mut log, &[1]);
        r.appended(t0, &log);
        assert!(!r.holding(t0));
    }

    /// Adaptive rounds in which writers 1 and 2 wrote in a round sent at `t0`, and writer 1
    /// wrote again at `at`.
    fn one_of_two_wrote_again(t0: Instant, at: Instant) -> (Log, Rounds) {
        let (mut log, mut r) = (Log::new(), Rounds::new(LINGER, 1).adaptive());
        say(&mut log, &[1, 2]);
        r.appended(t0, &log);
        r.sent(t0);
        say(&mut log, &[1]);
        r.appended(at, &log);
        (log, r)
    }

    #[test]
    fn adaptive_rounds_skip_twice_as_many_rounds_after_each_round_that_went_at_the_linger() {
        let t0 = Instant::now();
        let t1 = t0 + LINGER;
        // Writer 2 does not write again: the round goes at the linger, a miss.
        let (mut log, mut r) = one_of_two_wrote_again(t0, t0);
        assert!(r.holding(t0));
        r.sent(t1);
        assert_eq!((r.misses, r.skip), (1, 2));
        for _ in 0..2 {
            say(&mut log, &[1]);
            r.appended(t1, &log);
            assert!(!r.holding(t1), "skipped");
            assert_eq!(r.deadline(), None);
            r.sent(t1);
        }
        // Holding again, and missing again: twice as many rounds are skipped.
        say(&mut log, &[1]);
        r.appended(t1, &log);
        assert!(r.holding(t1));
        r.sent(t1 + LINGER);
        assert_eq!((r.misses, r.skip), (2, 4));
        // The leader's rounds are not adaptive.
        assert!(!Rounds::new(LINGER, 1).adaptive);
    }

    #[test]
    fn after_a_lull_no_writer_is_waited_for_and_a_late_round_is_no_miss() {
        let t0 = Instant::now();
        let t1 = t0 + LINGER * IDLE_LINGERS;
        for lull in [Duration::ZERO, us(1)] {
            let (_, r) = one_of_two_wrote_again(t0, t1 + lull);
            assert_eq!(r.holding(t1 + lull), lull.is_zero(), "after {lull:?} more");
        }
        // A round that goes long after its deadline (no leader to forward to, say) waited for
        // something else: no miss.
        let (_, mut r) = one_of_two_wrote_again(t0, t0);
        assert!(r.holding(t0));
        r.sent(t0 + LINGER + TIMER_SLACK + us(1));
        assert_eq!((r.misses, r.skip), (0, 0));
    }

    #[test]
    fn nothing_is_held_after_a_lone_writer_or_without_a_linger() {
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER, 1));
        say(&mut log, &[1]);
        r.appended(t0, &log);
        r.sent(t0);
        say(&mut log, &[2]);
        r.appended(t0, &log);
        assert!(!r.holding(t0), "one active writer makes nobody wait");
        let mut off = Rounds::new(Duration::ZERO, 1);
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
        let (t0, mut log, mut r) = (Instant::now(), Log::new(), Rounds::new(LINGER, 1));
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
