//! Durable storage of the log and the election state behind a trait: the driver writes through
//! it, the core never does. `MemStorage` (keeps what was synced, loses the rest on a simulated
//! crash) serves tests and the simulation; `Volatile` serves the daemon until the file log
//! lands; the file log (segments, checksums, torn-tail truncation) is to implement the same trait.

mod memory;
mod volatile;

pub use memory::MemStorage;
pub use volatile::Volatile;

use std::fmt;

use crate::core::log::{Entry, HardState, LogIndex};
use crate::core::Persist;

/// A storage failure, with what was being done.
#[derive(Debug)]
pub struct StorageError {
    /// The operation that failed, e.g. "append".
    pub op: &'static str,
    /// The underlying error.
    pub source: std::io::Error,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage {} failed: {}", self.op, self.source)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// What a node finds in its storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last durable election state.
    pub hard_state: HardState,
    /// Every durable entry, in order.
    pub entries: Vec<Entry>,
}

/// Where a node keeps its log and election state. Writes may be buffered; only `sync` makes
/// them durable, and the driver reports a [`Persist`] done only after `sync` returned Ok.
pub trait Storage {
    /// Removes every entry with index >= `from`.
    fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError>;
    /// Appends entries after the current last entry.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Replaces the stored election state.
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError>;
    /// Makes everything written so far durable (one fsync for a whole loop turn).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// What is durable, as found when the node starts.
    fn load(&mut self) -> Result<Recovered, StorageError>;
}

/// Carries out one [`Persist`] bundle: truncate, append, save the election state, one sync.
pub fn write<S: Storage + ?Sized>(storage: &mut S, p: &Persist<'_>) -> Result<(), StorageError> {
    if let Some(from) = p.truncate_from {
        storage.truncate(from)?;
    }
    if !p.entries.is_empty() {
        storage.append(p.entries)?;
    }
    if let Some(hs) = &p.hard_state {
        storage.save_hard_state(hs)?;
    }
    storage.sync()
}
