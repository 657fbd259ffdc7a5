//! What a node keeps durably, as the core sees it: a snapshot and its position, and what the
//! node finds in its storage when it starts. Storage stores these; the core only names them.

use std::sync::Arc;

use super::log::{Entry, Epoch, HardState, LogIndex};

/// The log position a snapshot covers: every entry up to `index` (of `epoch`) is in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index the snapshot includes.
    pub index: LogIndex,
    /// Epoch of that entry.
    pub epoch: Epoch,
}

/// A snapshot as stored: its position and the encoded state machine (opaque to storage).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The encoded state (see `codec::encode_snapshot`). Shared, so the storage thread takes
    /// it without copying an image that can be tens of megabytes.
    pub bytes: Arc<Vec<u8>>,
}

/// What a node finds in its storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last durable election state.
    pub hard_state: HardState,
    /// The newest durable snapshot, if any.
    pub snapshot: Option<StoredSnapshot>,
    /// Every durable entry after the snapshot (or from index 1 without one), in order.
    pub entries: Vec<Entry>,
}
