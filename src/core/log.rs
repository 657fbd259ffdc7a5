//! The replicated log: entries (index, epoch, command) and the node's in-memory view of them
//! with the persisted / committed / applied marks.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::membership::{Config, ConfigHistory};
use super::{NodeId, SessionId};

/// Position in the log, starting at 1 (0 means "before the first entry").
pub type LogIndex = u64;
/// Leader epoch (term); increases with every successful election.
pub type Epoch = u64;

/// One change to the chat state machine. Everything the state machine applies is a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Written by a new leader to commit entries of earlier epochs.
    Noop,
    /// A node (re)started: every session it held before is gone.
    NodeBoot {
        /// The node.
        node: NodeId,
    },
    /// The leader lost a node for longer than the session timeout: its sessions end, which
    /// frees their device slots; a node that was merely cut off closes its clients, and they
    /// resume elsewhere.
    NodeDown {
        /// The node.
        node: NodeId,
    },
    /// A client said Hello: register its session (subject to the device limit).
    OpenSession {
        /// The new session.
        session: SessionId,
        /// Username.
        user: String,
        /// The client's device id; a session with the same id is replaced (resume).
        client_id: u64,
    },
    /// A session's connection ended.
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// A session joins a room.
    Join {
        /// The session.
        session: SessionId,
        /// Room name (validated before proposing).
        room: String,
        /// Replay from after this seq instead of the last N messages.
        after_seq: Option<u64>,
    },
    /// A session leaves a room.
    Leave {
        /// The session.
        session: SessionId,
        /// Room name.
        room: String,
    },
    /// A session posts a message.
    Say {
        /// The session.
        session: SessionId,
        /// Room name.
        room: String,
        /// The client's de-duplication number.
        client_seq: u64,
        /// Message text (validated before proposing).
        text: Arc<str>,
        /// Server timestamp, from the clock of the node the client sent it to.
        time_ms: u64,
    },
    /// The cluster's configuration from this entry on (in effect once appended).
    Config(Config),
}

/// Identifies a proposal cluster-wide: the node and run that made it and its number in that
/// run. A run numbers its proposals from 1 without gaps, so applying skips any number already
/// applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProposalId {
    /// The proposing node.
    pub node: NodeId,
    /// The node's run (see `HardState::incarnation`).
    pub incarnation: u64,
    /// Its sequence number in that run.
    pub seq: u64,
}

/// A command on its way to the leader's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Identity, for de-duplication of re-forwarded proposals.
    pub id: ProposalId,
    /// The change.
    pub command: Command,
}

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Epoch of the leader that created it.
    pub epoch: Epoch,
    /// The proposal it carries (None for a leader's Noop).
    pub origin: Option<ProposalId>,
    /// The change.
    pub command: Command,
}

/// What a node must make durable: the election state and the log's new suffix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Highest epoch this node has seen.
    pub epoch: Epoch,
    /// Highest epoch whose election this node took part in (at most once per epoch).
    pub participated: Epoch,
    /// Counts the node's starts; part of every connection id so ids never repeat.
    pub incarnation: u64,
    /// The node started without its data and has not caught up since: it stays out of
    /// elections, across restarts too (its incarnation alone is no sign of having caught up).
    pub amnesiac: bool,
}

/// Marks how far a `Persist` (of the node) reached, for [`Log::persisted_through`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistMark {
    /// Last index written.
    pub index: LogIndex,
    /// Truncations seen by the log when the batch was taken.
    pub generation: u64,
}

/// The node's log: entries held in memory and how far each stage has got.
#[derive(Debug, Default)]
pub struct Log {
    entries: Vec<Entry>,
    /// Index of `entries[0]` minus one: the last index compacted away (into a snapshot).
    offset: LogIndex,
    /// Epoch of the entry at `offset` (0 when `offset` is 0).
    offset_epoch: Epoch,
    persisted: LogIndex,
    /// Last index handed to storage (at least `persisted`): writes in flight cover up to it.
    submitted: LogIndex,
    committed: LogIndex,
    applied: LogIndex,
    /// Lowest index removed since the last persist, which storage must drop too.
    truncated_from: Option<LogIndex>,
    /// Counts truncations, so a persist mark from before one is not trusted past it.
    generation: u64,
    /// The configurations the log holds.
    configs: ConfigHistory,
    /// Entries compacted away, dropped a bounded number at a time by [`Log::release`].
    compacted: Vec<Vec<Entry>>,
}

impl Log {
    /// An empty log.
    pub fn new() -> Log {
        Log::default()
    }

    /// A log recovered from storage: everything in it is durable.
    pub fn recovered(entries: Vec<Entry>) -> Log {
        let offset = entries.first().map_or(0, |e| e.index - 1);
        Log::after_snapshot(offset, 0, entries)
    }

    /// A log recovered from a snapshot covering up to (`index`, `epoch`) and the durable
    /// entries after it: the snapshot's entries count as committed and applied.
    pub fn after_snapshot(index: LogIndex, epoch: Epoch, entries: Vec<Entry>) -> Log {
        let last = index + entries.len() as LogIndex;
        Log {
            entries,
            offset: index,
            offset_epoch: epoch,
            persisted: last,
            submitted: last,
            committed: index,
            applied: index,
            ..Log::default()
        }
    }

    /// Starts the configuration history at `base` (from flags, or the snapshot's when
    /// `logged`) followed by the configuration entries held.
    pub fn init_configs(&mut self, base: Config, logged: bool) {
        self.configs = ConfigHistory::new(base, logged);
        for e in &self.entries {
            if let Command::Config(c) = &e.command {
                self.configs.appended(e.index, c.clone());
            }
        }
        self.configs.applied_to(self.applied);
    }

    /// The configurations the log holds.
    pub fn configs(&self) -> &ConfigHistory {
        &self.configs
    }

    /// The last index a snapshot covers (entries up to it are no longer held).
    pub fn snapshot_index(&self) -> LogIndex {
        self.offset
    }

    /// Drops the entries up to `index` (at most the applied index), which a snapshot covers.
    pub fn compact_to(&mut self, index: LogIndex) {
        let index = index.min(self.applied);
        if index <= self.offset {
            return;
        }
        let Some(epoch) = self.epoch_at(index) else {
            return;
        };
        // The entries kept move to a buffer of the same capacity; those compacted away stay
        // where they are until released. Dropping a hundred thousand of them at once stalled
        // the loop for milliseconds, and so did glibc merging all their freed blocks at the next
        // large allocation.
        let mut kept = Vec::with_capacity(self.entries.capacity());
        kept.extend(self.entries.drain((index - self.offset) as usize..));
        self.compacted
            .push(std::mem::replace(&mut self.entries, kept));
        self.offset = index;
        self.offset_epoch = epoch;
    }

    /// Drops at most `max` of the entries compacted away (call once per loop turn); returns
    /// how many remain to drop.
    pub fn release(&mut self, max: usize) -> usize {
        let mut budget = max;
        while let Some(dead) = self.compacted.last_mut() {
            let n = dead.len().min(budget);
            dead.truncate(dead.len() - n);
            budget -= n;
            if !dead.is_empty() {
                break;
            }
            self.compacted.pop();
        }
        self.compacted.iter().map(Vec::len).sum()
    }

    /// Replaces the whole log by an installed snapshot covering up to (`index`, `epoch`). It is
    /// not durable until the next persist (which stores the snapshot and resets storage).
    pub fn reset_to(&mut self, index: LogIndex, epoch: Epoch, config: Config) {
        self.configs.reset(config);
        // Released like compacted entries: a whole log dropped at once stalls the loop.
        self.compacted.push(std::mem::take(&mut self.entries));
        self.offset = index;
        self.offset_epoch = epoch;
        self.persisted = self.persisted.min(index.saturating_sub(1));
        self.submitted = self.submitted.min(self.persisted);
        self.committed = index;
        self.applied = index;
        // The snapshot replaces the stored log wholesale: no separate truncation.
        self.truncated_from = None;
        self.generation += 1;
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.offset + self.entries.len() as LogIndex
    }

    /// Epoch of the last entry (that of the snapshot's last entry when none is held).
    pub fn last_epoch(&self) -> Epoch {
        self.entries.last().map_or(self.offset_epoch, |e| e.epoch)
    }

    /// Epoch of the entry at `index` (0 for index 0; the snapshot's at its index; None if not
    /// held).
    pub fn epoch_at(&self, index: LogIndex) -> Option<Epoch> {
        if index == self.offset {
            return Some(self.offset_epoch);
        }
        self.get(index).map(|e| e.epoch)
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        let i = index.checked_sub(self.offset + 1)?;
        self.entries.get(i as usize)
    }

    /// Up to `max` entries starting at `from`, staying under `max_bytes` (approximate) but
    /// always at least one when any is available and `max` > 0.
    pub fn slice(&self, from: LogIndex, max: usize, max_bytes: usize) -> &[Entry] {
        let rest = from.checked_sub(1).map_or(&[][..], |i| self.after(i));
        let mut bytes = 0;
        let mut n = 0;
        for e in rest.iter().take(max) {
            bytes += approx_size(&e.command);
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        &rest[..n]
    }

    /// Every entry held after `index` (none that a snapshot covers).
    pub fn after(&self, index: LogIndex) -> &[Entry] {
        let Some(start) = index.checked_sub(self.offset) else {
            return &[];
        };
        &self.entries[(start as usize).min(self.entries.len())..]
    }

    /// Appends a new entry at the end and returns its index.
    pub fn append(
        &mut self,
        epoch: Epoch,
        origin: Option<ProposalId>,
        command: Command,
    ) -> LogIndex {
        let index = self.last_index() + 1;
        if let Command::Config(c) = &command {
            self.configs.appended(index, c.clone());
        }
        self.entries.push(Entry {
            index,
            epoch,
            origin,
            command,
        });
        index
    }

    /// Appends entries received from the leader after `prev_index`, dropping a conflicting
    /// suffix first. Returns Err with the index if that would remove a committed entry.
    pub fn merge(&mut self, entries: &[Entry]) -> Result<(), LogIndex> {
        for e in entries {
            if e.index <= self.offset {
                // Covered by the snapshot, hence committed and identical.
                continue;
            }
            match self.get(e.index).map(|x| x.epoch) {
                Some(epoch) if epoch == e.epoch => continue,
                Some(_) => {
                    if e.index <= self.committed {
                        return Err(e.index);
                    }
                    self.truncate_from(e.index);
                    self.push(e);
                }
                None => {
                    debug_assert_eq!(e.index, self.last_index() + 1);
                    if e.index != self.last_index() + 1 {
                        return Err(e.index);
                    }
                    self.push(e);
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, e: &Entry) {
        if let Command::Config(c) = &e.command {
            self.configs.appended(e.index, c.clone());
        }
        self.entries.push(e.clone());
    }

    fn truncate_from(&mut self, index: LogIndex) {
        self.configs.truncated(index);
        let keep = (index - self.offset - 1) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
        self.submitted = self.submitted.min(index - 1);
        self.truncated_from = Some(self.truncated_from.map_or(index, |t| t.min(index)));
        self.generation += 1;
    }

    /// Where storage must cut before appending what [`Log::submit`] hands out next, if anywhere.
    pub fn truncated_from(&self) -> Option<LogIndex> {
        self.truncated_from
    }

    /// True when storage has not been handed every entry, or a truncation, yet.
    pub fn has_unsubmitted(&self) -> bool {
        self.truncated_from.is_some() || self.submitted < self.last_index()
    }

    /// Hands storage what it lacks: where to cut first, the entries after those already handed
    /// out, and the mark to give back once they are durable. Writes in flight stay in flight:
    /// the next call hands out only what came after.
    pub fn submit(&mut self) -> (Option<LogIndex>, Vec<Entry>, PersistMark) {
        let from = self.submitted.saturating_sub(self.offset) as usize;
        let entries = self.entries[from.min(self.entries.len())..].to_vec();
        self.submitted = self.last_index();
        let mark = PersistMark {
            index: self.submitted,
            generation: self.generation,
        };
        (self.truncated_from.take(), entries, mark)
    }

    /// Storage failed: whatever was handed out and not reported durable is handed out again,
    /// after a cut to the durable end (what storage holds beyond it may be half written).
    pub fn resubmit(&mut self) {
        self.submitted = self.persisted;
        let from = self.persisted + 1;
        self.truncated_from = Some(self.truncated_from.map_or(from, |t| t.min(from)));
    }

    /// Storage holds everything up to the mark durably. A mark from before a truncation is
    /// not trusted: what it covered may have been replaced since.
    pub fn persisted_through(&mut self, mark: PersistMark) {
        if mark.generation == self.generation {
            self.persisted = self.persisted.max(mark.index.min(self.submitted));
        }
    }

    /// Highest index known durable on this node.
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// Highest committed index.
    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// Highest applied index.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Advances the commit mark (never backwards, never past the log).
    pub fn commit_to(&mut self, index: LogIndex) {
        self.committed = self.committed.max(index.min(self.last_index()));
    }

    /// The next committed entry not yet applied, marking it applied.
    pub fn next_to_apply(&mut self) -> Option<&Entry> {
        if self.applied >= self.committed {
            return None;
        }
        self.applied += 1;
        self.configs.applied_to(self.applied);
        self.get(self.applied)
    }
}

/// A rough payload size, to bound the bytes of one replication message.
pub(crate) fn approx_size(c: &Command) -> usize {
    match c {
        Command::Say { room, text, .. } => 64 + room.len() + text.len(),
        Command::OpenSession { user, .. } => 64 + user.len(),
        Command::Join { room, .. } | Command::Leave { room, .. } => 64 + room.len(),
        _ => 48,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: LogIndex, epoch: Epoch) -> Entry {
        Entry {
            index,
            epoch,
            origin: None,
            command: Command::Noop,
        }
    }

    #[test]
    fn marks_advance_in_order_and_never_past_the_log() {
        let mut log = Log::new();
        assert_eq!(log.append(1, None, Command::Noop), 1);
        assert_eq!(log.append(1, None, Command::Noop), 2);
        let (_, entries, mark) = log.submit();
        assert_eq!(entries.len(), 2);
        log.persisted_through(PersistMark { index: 1, ..mark });
        assert_eq!(log.persisted(), 1);
        log.commit_to(9);
        assert_eq!(log.committed(), 2);
        assert_eq!(log.next_to_apply().map(|e| e.index), Some(1));
        assert_eq!(log.next_to_apply().map(|e| e.index), Some(2));
        assert!(log.next_to_apply().is_none());
        assert_eq!(log.persisted(), 1);
    }

    #[test]
    fn merge_truncates_a_diverging_suffix_and_storage_is_told() {
        let mut log = Log::recovered(vec![e(1, 1), e(2, 1), e(3, 1)]);
        assert_eq!(log.persisted(), 3);
        log.merge(&[e(2, 1), e(3, 2), e(4, 2)]).unwrap();
        assert_eq!(log.epoch_at(3), Some(2));
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.truncated_from(), Some(3));
        assert_eq!(log.persisted(), 2);
        let (cut, entries, mark) = log.submit();
        assert_eq!(cut, Some(3));
        assert_eq!(entries.iter().map(|e| e.index).collect::<Vec<_>>(), [3, 4]);
        assert!(!log.has_unsubmitted());
        log.persisted_through(mark);
        assert_eq!((log.persisted(), log.truncated_from()), (4, None));
    }

    #[test]
    fn writes_in_flight_are_not_handed_out_twice_unless_storage_fails() {
        let mut log = Log::recovered(vec![e(1, 1)]);
        log.append(1, None, Command::Noop);
        let (_, first, first_mark) = log.submit();
        assert_eq!(first.iter().map(|e| e.index).collect::<Vec<_>>(), [2]);
        log.append(1, None, Command::Noop);
        let (cut, second, _) = log.submit();
        assert_eq!(
            (cut, second.iter().map(|e| e.index).collect::<Vec<_>>()),
            (None, vec![3])
        );
        // The first write went through, the second failed: everything after the durable
        // end is handed out again, after a cut there.
        log.persisted_through(first_mark);
        log.resubmit();
        assert!(log.has_unsubmitted());
        let (cut, again, mark) = log.submit();
        assert_eq!(
            (cut, again.iter().map(|e| e.index).collect::<Vec<_>>()),
            (Some(3), vec![3])
        );
        log.persisted_through(mark);
        assert_eq!(log.persisted(), 3);
    }

    #[test]
    fn a_stale_persist_mark_does_not_cover_entries_replaced_after_it() {
        let mut log = Log::recovered(vec![e(1, 1)]);
        log.append(1, None, Command::Noop);
        let (_, _, stale) = log.submit();
        log.merge(&[e(2, 2)]).unwrap();
        log.persisted_through(stale);
        assert_eq!(log.persisted(), 1);
    }

    #[test]
    fn merge_refuses_to_remove_committed_entries() {
        let mut log = Log::recovered(vec![e(1, 1), e(2, 1)]);
        log.commit_to(2);
        assert_eq!(log.merge(&[e(2, 3)]), Err(2));
        assert_eq!(log.epoch_at(2), Some(1));
    }

    #[test]
    fn compaction_keeps_positions_and_the_snapshot_epoch() {
        let mut log = Log::recovered(vec![e(1, 1), e(2, 2), e(3, 2)]);
        log.commit_to(3);
        while log.next_to_apply().is_some() {}
        log.compact_to(2);
        assert_eq!((log.snapshot_index(), log.last_index()), (2, 3));
        assert_eq!((log.epoch_at(2), log.epoch_at(1)), (Some(2), None));
        assert!(log.slice(2, 10, 1 << 20).is_empty());
        assert_eq!(log.slice(3, 10, 1 << 20).len(), 1);
        // The leader re-sending entries the snapshot covers changes nothing.
        log.merge(&[e(2, 2), e(3, 2), e(4, 2)]).unwrap();
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    fn entries_compacted_away_are_dropped_a_bounded_number_at_a_time() {
        let mut log = Log::recovered((1..=10).map(|i| e(i, 1)).collect());
        log.commit_to(10);
        while log.next_to_apply().is_some() {}
        log.compact_to(4);
        log.compact_to(7);
        assert_eq!((log.snapshot_index(), log.last_index()), (7, 10));
        assert_eq!(log.slice(8, 10, 1 << 20).len(), 3);
        assert_eq!(log.release(2), 5);
        assert_eq!(log.release(2), 3, "across the two compactions");
        assert_eq!(log.release(10), 0);
        assert_eq!(log.release(10), 0);
        assert_eq!(log.slice(8, 10, 1 << 20).len(), 3);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log_and_is_durable_only_once_persisted() {
        let mut log = Log::recovered(vec![e(1, 1), e(2, 1)]);
        log.reset_to(10, 3, Config::default());
        assert_eq!(log.release(1), 1, "the old entries go a few at a time too");
        assert_eq!((log.last_index(), log.last_epoch()), (10, 3));
        assert_eq!((log.committed(), log.applied()), (10, 10));
        assert!(log.persisted() < 10);
        log.merge(&[e(11, 3)]).unwrap();
        let (_, entries, mark) = log.submit();
        assert_eq!(entries.len(), 1);
        log.persisted_through(mark);
        assert_eq!(log.persisted(), 11);
        let r = Log::after_snapshot(10, 3, vec![e(11, 3)]);
        assert_eq!(
            (r.epoch_at(10), r.applied(), r.last_index()),
            (Some(3), 10, 11)
        );
    }

    #[test]
    fn slice_respects_count_and_bytes_but_returns_at_least_one() {
        let mut log = Log::new();
        for _ in 0..10 {
            log.append(1, None, Command::Noop);
        }
        assert_eq!(log.slice(3, 4, 1 << 20).len(), 4);
        assert_eq!(log.slice(3, 100, 1).len(), 1);
        assert_eq!(log.slice(11, 5, 100).len(), 0);
        assert_eq!(log.epoch_at(0), Some(0));
        assert_eq!(log.epoch_at(11), None);
    }
}
