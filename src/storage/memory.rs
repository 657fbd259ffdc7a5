//! In-memory storage: what a simulation keeps across a simulated crash is what was synced.

use super::{Storage, StorageError};
use crate::core::log::Entry;

/// Log storage in memory; `synced` marks how much would survive a crash.
#[derive(Debug, Default)]
pub struct MemStorage {
    entries: Vec<Entry>,
    synced: usize,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Drops everything not synced, as a power loss would.
    pub fn crash(&mut self) {
        self.entries.truncate(self.synced);
    }

    /// Number of entries appended, synced or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Storage for MemStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.synced = self.entries.len();
        Ok(())
    }

    fn load(&mut self) -> Result<Vec<Entry>, StorageError> {
        Ok(self.entries[..self.synced].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::log::Command;

    #[test]
    fn crash_keeps_only_synced_entries() {
        let e = |index| Entry {
            index,
            epoch: 1,
            command: Command::Noop,
        };
        let mut s = MemStorage::new();
        s.append(&[e(1), e(2)]).unwrap();
        s.sync().unwrap();
        s.append(&[e(3)]).unwrap();
        s.crash();
        assert_eq!(s.load().unwrap(), vec![e(1), e(2)]);
    }
}
