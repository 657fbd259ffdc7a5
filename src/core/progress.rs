//! The leader's view of one follower's log: what is known to match, what to send next.

use std::time::Instant;

use super::log::LogIndex;

/// Replication progress of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known stored on the follower.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Probing: one Append at a time until the follower's log position is found.
    pub probing: bool,
    /// When the last probe went out (a probe is re-sent at most once per heartbeat).
    pub probe_sent: Option<Instant>,
    /// When the follower last answered this leader.
    pub last_ack: Instant,
    /// The snapshot being streamed to it, when it is behind the compacted log.
    pub snapshot: Option<SnapshotSend>,
    /// The highest `durable` index an Append to it carried: up to there (and what it stores)
    /// it may commit without being told.
    pub durable_sent: LogIndex,
}

/// How far a snapshot transfer to one follower has got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend {
    /// The snapshot's last log index (a newer snapshot restarts the transfer).
    pub index: LogIndex,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes the follower has confirmed.
    pub acked: u64,
    /// When `acked` last moved (a stalled transfer resumes from `acked`).
    pub progressed: Instant,
}

impl SnapshotSend {
    /// A transfer of the snapshot at `index` from its start.
    pub fn new(index: LogIndex, now: Instant) -> SnapshotSend {
        SnapshotSend {
            index,
            sent: 0,
            acked: 0,
            progressed: now,
        }
    }
}

impl Progress {
    /// A follower of unknown position: probe from the end of the leader's log.
    pub fn new(last_index: LogIndex, now: Instant) -> Progress {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            probing: true,
            probe_sent: None,
            last_ack: now,
            snapshot: None,
            durable_sent: 0,
        }
    }

    /// The follower stored everything up to `index`.
    pub fn matched(&mut self, index: LogIndex) {
        self.match_index = self.match_index.max(index);
        self.next_index = self.next_index.max(self.match_index + 1);
        self.probing = false;
        self.probe_sent = None;
        self.snapshot = None;
    }

    /// The follower's log did not match before `next_index`; `hint` is where the follower says to retry from (at most its last index). A hint
    /// below the match means the follower lost its log (it restarted without its state): a
    /// matched entry is never truncated otherwise.
    pub fn rejected(&mut self, hint: LogIndex) {
        self.probing = true;
        self.probe_sent = None;
        self.durable_sent = 0;
        self.match_index = self.match_index.min(hint);
        self.next_index = (self.next_index.saturating_sub(1))
            .min(hint + 1)
            .max(self.match_index + 1);
    }

    /// The connection broke: whatever was in flight is lost.
    pub fn reset(&mut self) {
        self.probing = true;
        self.probe_sent = None;
        self.durable_sent = 0;
        self.snapshot = None;
        self.next_index = self.match_index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_moves_back_but_not_below_the_match_unless_the_follower_lost_its_log() {
        let now = Instant::now();
        let mut p = Progress::new(10, now);
        assert_eq!(p.next_index, 11);
        p.rejected(4);
        assert_eq!(p.next_index, 5);
        p.matched(4);
        assert!(!p.probing);
        p.next_index = 9;
        p.rejected(6);
        assert_eq!((p.match_index, p.next_index), (4, 7));
        p.reset();
        assert_eq!((p.next_index, p.probing), (5, true));
        // The follower came back empty: everything must be sent again.
        p.rejected(0);
        assert_eq!((p.match_index, p.next_index), (0, 1));
    }
}
