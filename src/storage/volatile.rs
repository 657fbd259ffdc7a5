//! Storage for a daemon without a durable log: the core already holds the log in memory and
//! nothing outlives the process, so keeping a second copy here would only cost time.

use super::{Recovered, Storage, StorageError, StoredSnapshot};
use crate::core::log::{Entry, HardState, LogIndex};

/// Accepts every write and keeps none: a restarted node starts empty (and, in a cluster,
/// catches up from the leader as a node without state).
#[derive(Debug, Default)]
pub struct Volatile;

impl Storage for Volatile {
    fn truncate(&mut self, _from: LogIndex) -> Result<(), StorageError> {
        Ok(())
    }

    fn append(&mut self, _entries: &[Entry]) -> Result<(), StorageError> {
        Ok(())
    }

    fn save_hard_state(&mut self, _hs: &HardState) -> Result<(), StorageError> {
        Ok(())
    }

    fn save_snapshot(&mut self, _s: &StoredSnapshot, _replaces: bool) -> Result<(), StorageError> {
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn compact(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn load(&mut self) -> Result<Recovered, StorageError> {
        Ok(Recovered::default())
    }
}
