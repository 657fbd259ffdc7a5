//! Durable storage of the log, the election state and snapshots behind a trait: the driver
//! writes through it, the core never does. `FileStorage` (segment files with checksums, torn-tail
//! truncation, snapshot files) serves the daemon; `MemStorage` (keeps what was synced, loses the
//! rest on a simulated crash) serves tests and the simulation; `Volatile` keeps nothing.

mod disk;
mod file;
mod memory;
mod sim_disk;
mod volatile;

pub use disk::{Disk, DiskFile, OsDisk};
pub use file::{FileOptions, FileStorage};
pub use memory::MemStorage;
pub use sim_disk::{SimDisk, SimDiskStats, SimFile};
pub use volatile::Volatile;

use std::fmt;
use std::path::PathBuf;

pub use crate::core::durable::{Recovered, SnapshotMeta, StoredSnapshot};
use crate::core::log::{Entry, HardState, LogIndex};
use crate::core::PersistJob;

/// A storage failure, with what was being done and where.
#[derive(Debug)]
pub struct StorageError {
    /// The operation that failed, e.g. "append".
    pub op: &'static str,
    /// The file concerned, when there is one.
    pub path: Option<PathBuf>,
    /// The underlying error.
    pub source: std::io::Error,
}

impl StorageError {
    /// An error of `op` on no particular file.
    pub fn new(op: &'static str, source: std::io::Error) -> StorageError {
        StorageError {
            op,
            path: None,
            source,
        }
    }

    /// An error of `op` on the file at `path`.
    pub fn at(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> StorageError {
        StorageError {
            op,
            path: Some(path.into()),
            source,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(
                f,
                "storage {} failed on {}: {}",
                self.op,
                p.display(),
                self.source
            ),
            None => write!(f, "storage {} failed: {}", self.op, self.source),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Where a node keeps its log, election state and snapshots. Log writes may be buffered; only
/// `sync` makes them durable, and the driver reports a [`PersistJob`] done only after `sync`
/// returned Ok. A failed call leaves what was durable before it intact.
pub trait Storage {
    /// Removes every entry with index >= `from`.
    fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError>;
    /// Appends entries after the current last entry.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;
    /// Replaces the stored election state.
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError>;
    /// Stores a snapshot durably before returning (the previous one stays until `compact`).
    /// With `replaces_log` (a snapshot installed from the leader) every stored entry is
    /// dropped as well, durably at the next `sync`; entries appended afterwards follow it.
    fn save_snapshot(
        &mut self,
        snapshot: &StoredSnapshot,
        replaces_log: bool,
    ) -> Result<(), StorageError>;
    /// Makes everything written so far durable (one fsync for a whole loop turn).
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Frees what the newest durable snapshot covers: older snapshots and log entries below
    /// it. Called after every `sync`; cheap when there is nothing new to free.
    fn compact(&mut self) -> Result<(), StorageError>;
    /// What is durable, as found when the node starts.
    fn load(&mut self) -> Result<Recovered, StorageError>;
}

/// Carries out one [`PersistJob`]: its writes, one sync, then compaction (which does
/// something only once per snapshot, when that snapshot is durable).
pub fn write<S: Storage + ?Sized>(storage: &mut S, p: &PersistJob) -> Result<(), StorageError> {
    stage(storage, p)?;
    storage.sync()?;
    storage.compact()
}

/// The writes of a [`PersistJob`] without the sync: snapshot, truncate, append, election
/// state (what a crash right before the sync leaves half done).
pub fn stage<S: Storage + ?Sized>(storage: &mut S, p: &PersistJob) -> Result<(), StorageError> {
    if let Some(s) = &p.snapshot {
        storage.save_snapshot(&s.snapshot, s.replaces_log)?;
    }
    if let Some(from) = p.truncate_from {
        storage.truncate(from)?;
    }
    if !p.entries.is_empty() {
        storage.append(&p.entries)?;
    }
    if let Some(hs) = &p.hard_state {
        storage.save_hard_state(hs)?;
    }
    Ok(())
}

/// Joins a snapshot and the entries found after replaying the log into what a node recovers.
/// `base` is where the replayed entries start (the snapshot a log reset installed, or index 0).
/// Entries the snapshot covers are dropped; the rest are kept only if they continue the
/// snapshot's history (the log holds the snapshot's last entry, or was reset to it), since a
/// crash between storing an installed snapshot and resetting the log leaves the old log behind.
pub fn assemble(
    hard_state: HardState,
    snapshot: Option<StoredSnapshot>,
    base: SnapshotMeta,
    mut entries: Vec<Entry>,
) -> Recovered {
    if let Some(s) = &snapshot {
        let at = s.meta;
        let continues = base == at
            || entries
                .iter()
                .any(|e| e.index == at.index && e.epoch == at.epoch);
        if continues {
            entries.retain(|e| e.index > at.index);
        } else {
            entries.clear();
        }
    }
    Recovered {
        hard_state,
        snapshot,
        entries,
    }
}
