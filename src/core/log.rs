//! The replicated log: entries (index, epoch, command) and the node's in-memory view of them
//! with the persisted / committed / applied marks.

use serde::{Deserialize, Serialize};

use super::SessionId;

/// Position in the log, starting at 1 (0 means "before the first entry").
pub type LogIndex = u64;
/// Leader epoch (term); increases with every successful election.
pub type Epoch = u64;

/// One change to the chat state machine. Everything the state machine applies is a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Written by a new leader to commit entries of earlier epochs.
    Noop,
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
        text: String,
        /// Server timestamp given by the leader.
        time_ms: u64,
    },
}

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log.
    pub index: LogIndex,
    /// Epoch of the leader that created it.
    pub epoch: Epoch,
    /// The change.
    pub command: Command,
}

/// The node's log: entries still held in memory and how far each stage has got.
#[derive(Debug, Default)]
pub struct Log {
    entries: Vec<Entry>,
    /// Index of `entries[0]` minus one.
    offset: LogIndex,
    persisted: LogIndex,
    committed: LogIndex,
    applied: LogIndex,
}

impl Log {
    /// An empty log.
    pub fn new() -> Log {
        Log::default()
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.offset + self.entries.len() as LogIndex
    }

    /// Epoch of the last entry (0 when empty).
    pub fn last_epoch(&self) -> Epoch {
        self.entries.last().map_or(0, |e| e.epoch)
    }

    /// Appends a new entry at the end and returns its index.
    pub fn append(&mut self, epoch: Epoch, command: Command) -> LogIndex {
        let index = self.last_index() + 1;
        self.entries.push(Entry {
            index,
            epoch,
            command,
        });
        index
    }

    /// Entries not yet reported persisted, for the driver to write.
    pub fn unpersisted(&self) -> &[Entry] {
        let from = (self.persisted - self.offset) as usize;
        &self.entries[from.min(self.entries.len())..]
    }

    /// Records that storage holds everything up to `index` durably.
    pub fn mark_persisted(&mut self, index: LogIndex) {
        self.persisted = self.persisted.max(index.min(self.last_index()));
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
        self.entries.get((self.applied - self.offset - 1) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_advance_in_order_and_never_past_the_log() {
        let mut log = Log::new();
        assert_eq!(log.append(1, Command::Noop), 1);
        assert_eq!(log.append(1, Command::Noop), 2);
        assert_eq!(log.unpersisted().len(), 2);
        log.mark_persisted(1);
        assert_eq!(log.unpersisted()[0].index, 2);
        log.commit_to(9);
        assert_eq!(log.committed(), 2);
        assert_eq!(log.next_to_apply().map(|e| e.index), Some(1));
        assert_eq!(log.next_to_apply().map(|e| e.index), Some(2));
        assert!(log.next_to_apply().is_none());
        log.mark_persisted(0);
        assert_eq!(log.persisted(), 1);
    }
}
