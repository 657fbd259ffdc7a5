//! In-memory storage: what a simulated crash keeps is exactly what was synced (and the
//! snapshots stored, which like snapshot files are durable when `save_snapshot` returns).

use super::{assemble, Recovered, SnapshotMeta, Storage, StorageError, StoredSnapshot};
use crate::core::log::{Entry, HardState, LogIndex};

/// The log as written: where it starts and its entries.
#[derive(Clone, Debug, Default)]
struct Written {
    base: SnapshotMeta,
    entries: Vec<Entry>,
    hard_state: HardState,
}

/// Log storage in memory, with the synced prefix tracked separately.
#[derive(Debug, Default)]
pub struct MemStorage {
    current: Written,
    synced: Written,
    snapshot: Option<StoredSnapshot>,
    /// Lowest position in `current.entries` changed since the last sync.
    dirty_from: usize,
    /// Writes fail (as on a full disk) while set.
    failing: bool,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Drops everything not synced, as a power loss would.
    pub fn crash(&mut self) {
        self.current = self.synced.clone();
        self.dirty_from = self.current.entries.len();
    }

    /// Makes every later write fail (as on a full disk) until called with false.
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
    }

    /// True while writes fail.
    pub fn is_failing(&self) -> bool {
        self.failing
    }

    /// Number of entries held, synced or not.
    pub fn len(&self) -> usize {
        self.current.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.current.entries.is_empty()
    }

    fn check(&self, op: &'static str) -> Result<(), StorageError> {
        if self.failing {
            let e = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device");
            return Err(StorageError::new(op, e));
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError> {
        self.check("truncate")?;
        self.current.entries.retain(|e| e.index < from);
        self.dirty_from = self.dirty_from.min(self.current.entries.len());
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check("append")?;
        self.dirty_from = self.dirty_from.min(self.current.entries.len());
        self.current.entries.extend_from_slice(entries);
        Ok(())
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.check("save election state")?;
        self.current.hard_state = *hs;
        Ok(())
    }

    fn save_snapshot(
        &mut self,
        snapshot: &StoredSnapshot,
        replaces_log: bool,
    ) -> Result<(), StorageError> {
        self.check("save snapshot")?;
        self.snapshot = Some(snapshot.clone());
        if replaces_log {
            self.current.base = snapshot.meta;
            self.current.entries.clear();
            self.dirty_from = 0;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check("sync")?;
        // Only what changed since the last sync is copied, so a sync costs what the turn wrote.
        let keep = self.dirty_from.min(self.synced.entries.len());
        self.synced.entries.truncate(keep);
        self.synced
            .entries
            .extend_from_slice(&self.current.entries[keep..]);
        self.synced.base = self.current.base;
        self.synced.hard_state = self.current.hard_state;
        self.dirty_from = self.current.entries.len();
        Ok(())
    }

    fn compact(&mut self) -> Result<(), StorageError> {
        // Keep the snapshot's own entry: it shows the entries after it continue its history.
        let Some(at) = self.snapshot.as_ref().map(|s| s.meta.index) else {
            return Ok(());
        };
        for w in [&mut self.current, &mut self.synced] {
            let drop = w.entries.iter().take_while(|e| e.index < at).count();
            w.entries.drain(..drop);
        }
        self.dirty_from = self.current.entries.len();
        Ok(())
    }

    fn load(&mut self) -> Result<Recovered, StorageError> {
        let w = &self.synced;
        let r = assemble(
            w.hard_state,
            self.snapshot.clone(),
            w.base,
            w.entries.clone(),
        );
        // What is kept from here on is what was recovered: an install a crash interrupted is
        // finished now, so entries appended after the snapshot are not dropped by a later load.
        if let Some(s) = &r.snapshot {
            self.synced.base = s.meta;
            self.synced.entries = r.entries.clone();
            self.current = self.synced.clone();
            self.dirty_from = self.current.entries.len();
        }
        Ok(r)
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
    fn an_install_interrupted_by_a_crash_is_finished_by_the_next_load() {
        let mut s = MemStorage::new();
        s.append(&[e(1, 1), e(2, 1)]).unwrap();
        s.sync().unwrap();
        let snap = StoredSnapshot {
            meta: SnapshotMeta {
                index: 50,
                epoch: 3,
            },
            bytes: vec![1, 2, 3].into(),
        };
        s.save_snapshot(&snap, true).unwrap();
        s.crash();
        let r = s.load().unwrap();
        assert!(r.entries.is_empty());
        s.append(&[e(51, 3)]).unwrap();
        s.sync().unwrap();
        s.crash();
        let r = s.load().unwrap();
        assert_eq!((r.snapshot, r.entries), (Some(snap), vec![e(51, 3)]));
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
