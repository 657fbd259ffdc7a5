//! Reading back what is on disk: replaying segment records, telling a torn tail (a write a
//! crash interrupted, cut off and forgotten) from corruption (refuse to start), and reading
//! snapshot files.
//!
//! Torn-tail rules, applied only to the last segment, for the first bad record at offset `o`:
//! - fewer than a header's bytes remain after `o`;
//! - its length fails its CRC and every byte after the length and its CRC (the first 8 bytes)
//!   is zero: the write stopped inside them, the file size covering bytes that stayed zero (a
//!   zeroed header can never pass: the CRC of a zero length is not zero; a whole record always
//!   has non-zero bytes after them, its CRC and kind);
//! - its length is intact but the record reaches past the end of the file;
//! - its length is intact, its CRC fails, and every byte after it is zero (which includes
//!   ending exactly at the end of the file: a write of several pages can reach the disk
//!   partly, the file size covering pages that stayed zero).
//!
//! Anything else is corruption: a bad record followed by non-zero bytes, any bad record in a
//! segment that is not the last, a length above the maximum, an unknown kind or undecodable
//! payload behind a good CRC, or an entry leaving a gap.

use std::io;
use std::path::Path;

use crate::codec::disk::{decode_record, decode_snapshot_file, DiskError, RecordKind, WalRecord};
use crate::core::log::{Entry, HardState};
use crate::storage::{Disk, SnapshotMeta, StorageError, StoredSnapshot};

use super::segment::SegmentMeta;

/// The log state replay builds up.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// The last election state found.
    pub hard_state: HardState,
    /// The snapshot the log was last reset to (default: never reset).
    pub base: SnapshotMeta,
    /// The entries, ascending and consecutive.
    pub entries: Vec<Entry>,
}

impl Replay {
    /// Applies one record. Entries must be consecutive, except that the first one may have any
    /// index (the segments before it were compacted away, or the log was reset or truncated
    /// empty) and one at or below the last entry replaces the log from there, as if a Truncate
    /// preceded it. Returns what is wrong otherwise.
    pub fn apply(&mut self, record: WalRecord) -> Result<(), String> {
        match record {
            WalRecord::HardState(hs) => self.hard_state = hs,
            WalRecord::Truncate { from } => {
                let keep = self.entries.partition_point(|e| e.index < from);
                self.entries.truncate(keep);
            }
            WalRecord::LogReset { index, epoch } => {
                self.entries.clear();
                self.base = SnapshotMeta { index, epoch };
            }
            WalRecord::Base { index, epoch } => self.base = SnapshotMeta { index, epoch },
            WalRecord::Entry(e) => {
                if e.index == 0 {
                    return Err("entry with index 0".into());
                }
                if let Some(last) = self.entries.last().map(|l| l.index) {
                    if e.index > last.saturating_add(1) {
                        return Err(format!("entry {} after entry {last} leaves a gap", e.index));
                    }
                    if e.index <= last {
                        let keep = self.entries.partition_point(|x| x.index < e.index);
                        self.entries.truncate(keep);
                    }
                }
                self.entries.push(e);
            }
        }
        Ok(())
    }
}

/// What scanning one segment found.
#[derive(Debug)]
pub(super) struct Scanned {
    /// The segment as it is after the scan (`len`: up to its last good record).
    pub meta: SegmentMeta,
    /// Where a torn tail starts and what was wrong there, if there is one.
    pub torn: Option<(u64, DiskError)>,
    /// It starts with the records every segment starts with: a HardState, then a LogReset
    /// or Base if the log had been reset before it. A segment whose head was torn off must
    /// not be appended to, since deleting older segments would lose what its head repeats.
    pub prologue_ok: bool,
}

/// An error for `op` on `path`: the data there is not what was written.
pub(super) fn corrupt(
    op: &'static str,
    path: &Path,
    offset: u64,
    what: impl std::fmt::Display,
) -> StorageError {
    StorageError::at(
        op,
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("corrupt data at offset {offset}: {what}"),
        ),
    )
}

/// Bytes of a record's length and the length's CRC, at its start.
const LENGTH_FIELDS: usize = 8;

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Whether the bad record that starts `rest` (and runs to the end of the file) is a write a
/// crash interrupted, by the rules in the module comment.
pub(super) fn is_torn_tail(err: &DiskError, rest: &[u8]) -> bool {
    match err {
        DiskError::Short { .. } | DiskError::PastEnd { .. } => true,
        DiskError::BadLengthChecksum => rest.get(LENGTH_FIELDS..).is_none_or(all_zero),
        DiskError::BadChecksum { .. } => err
            .record_end()
            .and_then(|end| rest.get(end..))
            .is_some_and(all_zero),
        _ => false,
    }
}

/// Replays the records of segment `seq` (contents `bytes`, from `path`) into `replay`. With
/// `last` a torn tail is reported in [`Scanned::torn`] (the caller cuts it off); without it,
/// or for anything that is not a torn tail, the result is an error naming the file and the
/// offset of the bad record.
pub(super) fn scan_segment(
    op: &'static str,
    seq: u64,
    path: &Path,
    bytes: &[u8],
    last: bool,
    replay: &mut Replay,
) -> Result<Scanned, StorageError> {
    let base_at_start = replay.base;
    let mut kinds = [None::<RecordKind>; 2];
    let mut count = 0usize;
    let mut max_index = 0;
    let mut has_reset = false;
    let mut off = 0usize;
    let mut torn = None;
    while let Some(rest) = bytes.get(off..).filter(|r| !r.is_empty()) {
        let (record, used) = match decode_record(rest) {
            Ok(r) => r,
            Err(e) if last && is_torn_tail(&e, rest) => {
                torn = Some((off as u64, e));
                break;
            }
            Err(e) => {
                let why = if last {
                    format!("{e} (followed by data, so not a torn write)")
                } else {
                    format!("{e} (not at the end of the log, so not a torn write)")
                };
                return Err(corrupt(op, path, off as u64, why));
            }
        };
        let kind = record.kind();
        if let Some(k) = kinds.get_mut(count) {
            *k = Some(kind);
        }
        count += 1;
        match &record {
            WalRecord::Entry(e) => max_index = max_index.max(e.index),
            WalRecord::LogReset { .. } => has_reset = true,
            _ => {}
        }
        replay
            .apply(record)
            .map_err(|why| corrupt(op, path, off as u64, why))?;
        off += used;
    }
    let prologue_ok = kinds[0] == Some(RecordKind::HardState)
        && (base_at_start == SnapshotMeta::default()
            || matches!(kinds[1], Some(RecordKind::LogReset | RecordKind::Base)));
    Ok(Scanned {
        meta: SegmentMeta {
            seq,
            path: path.to_path_buf(),
            len: off as u64,
            max_index,
            has_reset,
        },
        torn,
        prologue_ok,
    })
}

/// Reads and validates the snapshot file at `path`, which its name says covers `index`.
pub(super) fn read_snapshot<D: Disk>(
    disk: &D,
    op: &'static str,
    path: &Path,
    index: u64,
) -> Result<StoredSnapshot, StorageError> {
    let mut buf = disk.read(path).map_err(|e| StorageError::at(op, path, e))?;
    let file = decode_snapshot_file(&buf).map_err(|e| corrupt(op, path, 0, e))?;
    if file.index != index {
        return Err(corrupt(
            op,
            path,
            0,
            format!(
                "snapshot of index {} in the file named for {index}",
                file.index
            ),
        ));
    }
    let meta = SnapshotMeta {
        index: file.index,
        epoch: file.epoch,
    };
    // Drop the header in place rather than copying a possibly large payload.
    buf.drain(..crate::codec::disk::SNAPSHOT_HEADER_LEN);
    Ok(StoredSnapshot {
        meta,
        bytes: buf.into(),
    })
}
