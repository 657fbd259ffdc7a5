//! In-memory storage: what a simulated crash keeps is exactly what was synced.

use super::{Recovered, Storage, StorageError};
use crate::core::log::{Entry, HardState, LogIndex};

/// Log storage in memory, with the synced prefix tracked separately.
#[derive(Debug, Default)]
pub struct MemStorage {
    entries: Vec<Entry>,
    hard_state: HardState,
    synced: Recovered,
    /// Lowest position in `entries` changed since the last sync.
    dirty_from: usize,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Drops everything not synced, as a power loss would.
    pub fn crash(&mut self) {
        self.entries = self.synced.entries.clone();
        self.hard_state = self.synced.hard_state;
        self.dirty_from = self.entries.len();
    }

    /// Number of entries written, synced or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry was written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Storage for MemStorage {
    fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError> {
        self.entries.retain(|e| e.index < from);
        self.dirty_from = self.dirty_from.min(self.entries.len());
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.dirty_from = self.dirty_from.min(self.entries.len());
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.hard_state = *hs;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        // Only what changed since the last sync is copied, so a sync costs what the turn wrote.
        let keep = self.dirty_from.min(self.synced.entries.len());
        self.synced.entries.truncate(keep);
        self.synced.entries.extend_from_slice(&self.entries[keep..]);
        self.synced.hard_state = self.hard_state;
        self.dirty_from = self.entries.len();
        Ok(())
    }

    fn load(&mut self) -> Result<Recovered, StorageError> {
        Ok(self.synced.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::log::Command;

    fn e(index: LogIndex, epoch: u64) -> Entry {
        Entry {
            index,
            epoch,
            origin: None,
            command: Command::Noop,
        }
    }

    #[test]
    fn crash_keeps_only_synced_entries_and_state() {
        let mut s = MemStorage::new();
        s.append(&[e(1, 1), e(2, 1)]).unwrap();
        s.save_hard_state(&HardState {
            epoch: 1,
            participated: 1,
            incarnation: 1,
            amnesiac: false,
        })
        .unwrap();
        s.sync().unwrap();
        s.append(&[e(3, 1)]).unwrap();
        s.save_hard_state(&HardState {
            epoch: 2,
            participated: 2,
            incarnation: 1,
            amnesiac: false,
        })
        .unwrap();
        s.crash();
        let r = s.load().unwrap();
        assert_eq!(r.entries, vec![e(1, 1), e(2, 1)]);
        assert_eq!(r.hard_state.epoch, 1);
    }

    #[test]
    fn truncate_then_append_replaces_the_suffix_once_synced() {
        let mut s = MemStorage::new();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        s.sync().unwrap();
        s.truncate(2).unwrap();
        s.append(&[e(2, 2)]).unwrap();
        s.sync().unwrap();
        assert_eq!(s.load().unwrap().entries, vec![e(1, 1), e(2, 2)]);
    }
}
