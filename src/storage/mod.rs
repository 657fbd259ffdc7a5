//! Durable storage of the log behind a trait: the driver writes through it, the core never does.
//! The in-memory implementation serves tests and the single-node demo; the file log
//! (segments, checksums, torn-tail truncation) implements the same trait.

mod memory;

pub use memory::MemStorage;

use std::fmt;

use crate::core::log::Entry;

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

/// Where a node keeps its log. `append` may buffer; only `sync` makes entries durable, and the
/// driver reports entries persisted to the core only after `sync` returned Ok.
pub trait Storage {
    /// Appends entries after the current last entry.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Makes every appended entry durable (one fsync for a whole loop turn).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Every durable entry, in order, as found when the node starts.
    fn load(&mut self) -> Result<Vec<Entry>, StorageError>;
}
