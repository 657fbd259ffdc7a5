//! On-disk encoding: write-ahead log records and the framing of snapshot files.
//!
//! A WAL record is a fixed [`RECORD_HEADER_LEN`]-byte header then a bincode payload:
//!
//! | offset | size | field     | meaning                                                       |
//! |--------|------|-----------|---------------------------------------------------------------|
//! | 0      | 4    | `len`     | payload length, u32 LE                                        |
//! | 4      | 4    | `len_crc` | CRC-32 of the 4 `len` bytes: a damaged length is detected     |
//! | 8      | 4    | `crc`     | CRC-32 of every byte from `kind` to the end of the payload    |
//! | 12     | 1    | `kind`    | [`RecordKind`]                                                |
//! | 13     | 8    | `index`   | u64 LE: entry index, truncation point or snapshot index       |
//! | 21     | 8    | `epoch`   | u64 LE: entry epoch, snapshot epoch or election epoch         |
//! | 29     | len  | payload   | bincode (fixed-width little-endian integers)                  |
//!
//! The header carries an entry's index and epoch, so its payload holds only its origin and
//! command.
//!
//! A snapshot file is a [`SNAPSHOT_HEADER_LEN`]-byte header then the payload (the image):
//!
//! | offset | size | field   | meaning                                                       |
//! |--------|------|---------|---------------------------------------------------------------|
//! | 0      | 8    | `magic` | [`SNAPSHOT_MAGIC`] (`RCSNAP02`), or [`SNAPSHOT_MAGIC_V1`]      |
//! | 8      | 8    | `index` | u64 LE: last log index the snapshot covers                    |
//! | 16     | 8    | `epoch` | u64 LE: epoch of that entry                                   |
//! | 24     | 8    | `len`   | u64 LE: payload length                                        |
//! | 32     | 4    | `crc`   | CRC-32 of bytes 0..32 then the payload (`RCSNAP01`: payload)  |
//! | 36     | len  | payload | the snapshot image (`codec::snapshot`)                        |
//!
//! `RCSNAP02` checksums the header fields with the payload: in `RCSNAP01`, written by earlier
//! versions and still read, a flipped bit in the epoch went unnoticed and loaded a snapshot of
//! the wrong epoch (its index is still checked against the file name, its length against the
//! file size). Only `RCSNAP02` is written.
//!
//! Decoding never panics: every length is checked against the bytes present before slicing,
//! CRCs are checked before payloads are decoded, and bincode runs with a byte limit.

use std::fmt;
use std::ops::Range;

use super::CodecError;
use crate::core::log::{Command, Entry, Epoch, HardState, LogIndex, ProposalId};

/// Size in bytes of a WAL record header.
pub const RECORD_HEADER_LEN: usize = 29;
/// Largest payload a WAL record may declare; a larger `len` is corruption, not a torn write.
pub const MAX_RECORD_PAYLOAD: u32 = 64 * 1024 * 1024;
/// First bytes of every snapshot file written: its CRC covers the header fields and payload.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RCSNAP02";
/// First bytes of a snapshot file of earlier versions, still read: its CRC covers the payload
/// only, so damage to its epoch cannot be detected.
pub const SNAPSHOT_MAGIC_V1: [u8; 8] = *b"RCSNAP01";
/// Size in bytes of a snapshot file's header (magic, index, epoch, length, CRC).
pub const SNAPSHOT_HEADER_LEN: usize = 36;

/// Byte ranges of the record header fields.
mod field {
    use std::ops::Range;
    pub const LEN: Range<usize> = 0..4;
    pub const LEN_CRC: Range<usize> = 4..8;
    pub const CRC: Range<usize> = 8..12;
    pub const KIND: usize = 12;
    pub const INDEX: Range<usize> = 13..21;
    pub const EPOCH: Range<usize> = 21..29;
}

/// Byte ranges of the snapshot file header fields.
mod snap_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const INDEX: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..24;
    pub const LEN: Range<usize> = 24..32;
    pub const CRC: Range<usize> = 32..36;
    /// What an `RCSNAP02` CRC covers of the header (then the payload): all but the CRC.
    pub const COVERED: Range<usize> = 0..32;
}

const MAX: usize = MAX_RECORD_PAYLOAD as usize;

/// What a WAL record does when replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A log entry (header: its index and epoch).
    Entry = 1,
    /// The election state (header: index 0, its epoch).
    HardState = 2,
    /// Drops every entry with index >= header index.
    Truncate = 3,
    /// An installed snapshot replaces the log: every earlier entry is dropped and the log
    /// continues after the snapshot (header: its index and epoch).
    LogReset = 4,
    /// Repeats the position of the last reset at the start of a later segment, so deleting
    /// the segment holding the reset does not lose it; drops nothing.
    Base = 5,
}

impl RecordKind {
    fn from_u8(k: u8) -> Option<RecordKind> {
        Some(match k {
            1 => RecordKind::Entry,
            2 => RecordKind::HardState,
            3 => RecordKind::Truncate,
            4 => RecordKind::LogReset,
            5 => RecordKind::Base,
            _ => return None,
        })
    }
}

/// A decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalRecord {
    /// A log entry.
    Entry(Entry),
    /// The election state.
    HardState(HardState),
    /// Drop entries from this index on.
    Truncate {
        /// First index dropped.
        from: LogIndex,
    },
    /// The log was replaced by the snapshot at (`index`, `epoch`).
    LogReset {
        /// Snapshot index.
        index: LogIndex,
        /// Snapshot epoch.
        epoch: Epoch,
    },
    /// The log (still) continues the snapshot at (`index`, `epoch`) a reset installed.
    Base {
        /// Snapshot index.
        index: LogIndex,
        /// Snapshot epoch.
        epoch: Epoch,
    },
}

impl WalRecord {
    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            WalRecord::Entry(_) => RecordKind::Entry,
            WalRecord::HardState(_) => RecordKind::HardState,
            WalRecord::Truncate { .. } => RecordKind::Truncate,
            WalRecord::LogReset { .. } => RecordKind::LogReset,
            WalRecord::Base { .. } => RecordKind::Base,
        }
    }
}

/// Why bytes are not a valid WAL record or snapshot file (or a value could not be encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// Fewer bytes than a record header remain.
    Short {
        /// Bytes present.
        available: usize,
    },
    /// The length field does not match its own CRC.
    BadLengthChecksum,
    /// The (checksummed) length is above [`MAX_RECORD_PAYLOAD`].
    TooLarge {
        /// Declared payload length.
        len: u32,
    },
    /// The (checksummed) length reaches past the end of the bytes present.
    PastEnd {
        /// Declared payload length.
        len: u32,
        /// Bytes present, header included.
        available: usize,
    },
    /// The record's CRC does not match its kind, index, epoch and payload.
    BadChecksum {
        /// Declared payload length (the record ends `RECORD_HEADER_LEN + len` bytes in).
        len: u32,
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes found.
        actual: u32,
    },
    /// A kind byte this build does not know.
    UnknownKind(u8),
    /// The payload does not decode as its kind's type.
    BadPayload {
        /// Record kind.
        kind: u8,
        /// Decoder message.
        reason: String,
    },
    /// A snapshot file starts with neither [`SNAPSHOT_MAGIC`] nor [`SNAPSHOT_MAGIC_V1`].
    BadMagic,
    /// A snapshot file is shorter than its header.
    SnapshotShort {
        /// Bytes present.
        available: usize,
    },
    /// A snapshot file's size does not match its declared payload length.
    SnapshotLength {
        /// Payload length in the header.
        declared: u64,
        /// Payload bytes present.
        actual: u64,
    },
    /// A snapshot file does not match its CRC (in `RCSNAP02` its header fields or payload, in
    /// `RCSNAP01` its payload).
    SnapshotChecksum {
        /// The file's format, which says what the CRC covers.
        format: SnapshotFormat,
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes found.
        actual: u32,
    },
    /// A value could not be encoded (or its payload is above the limit).
    Encode(String),
}

impl DiskError {
    /// For a record whose header is intact but whose contents are not, where it ends.
    pub fn record_end(&self) -> Option<usize> {
        match self {
            DiskError::BadChecksum { len, .. } => Some(RECORD_HEADER_LEN + *len as usize),
            _ => None,
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Short { available } => {
                write!(f, "only {available} bytes left, less than a record header")
            }
            DiskError::BadLengthChecksum => write!(f, "record length fails its checksum"),
            DiskError::TooLarge { len } => write!(
                f,
                "record length {len} is above the limit of {MAX_RECORD_PAYLOAD}"
            ),
            DiskError::PastEnd { len, available } => write!(
                f,
                "record of {} bytes reaches past the end ({available} bytes left)",
                RECORD_HEADER_LEN + *len as usize
            ),
            DiskError::BadChecksum {
                expected, actual, ..
            } => write!(
                f,
                "record checksum mismatch (header {expected:#010x}, data {actual:#010x})"
            ),
            DiskError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            DiskError::BadPayload { kind, reason } => {
                write!(f, "malformed payload for record kind {kind}: {reason}")
            }
            DiskError::BadMagic => write!(f, "bad magic (not a ringchat snapshot file)"),
            DiskError::SnapshotShort { available } => {
                write!(
                    f,
                    "snapshot file of {available} bytes is shorter than its header"
                )
            }
            DiskError::SnapshotLength { declared, actual } => write!(
                f,
                "snapshot payload is {actual} bytes, its header says {declared}"
            ),
            DiskError::SnapshotChecksum {
                format,
                expected,
                actual,
            } => write!(
                f,
                "snapshot checksum mismatch: {} damaged ({format} file: header \
                 {expected:#010x}, data {actual:#010x})",
                match format {
                    SnapshotFormat::V1 => "image",
                    SnapshotFormat::V2 => "header fields or image",
                }
            ),
            DiskError::Encode(e) => write!(f, "cannot encode record: {e}"),
        }
    }
}

impl std::error::Error for DiskError {}

fn le4(b: &[u8], r: Range<usize>) -> [u8; 4] {
    let mut out = [0u8; 4];
    if let Some(s) = b.get(r) {
        out.copy_from_slice(s);
    }
    out
}

fn le8(b: &[u8], r: Range<usize>) -> [u8; 8] {
    let mut out = [0u8; 8];
    if let Some(s) = b.get(r) {
        out.copy_from_slice(s);
    }
    out
}

/// Appends a record: header, then the payload `write` produces, then length and CRCs filled in.
/// On error nothing is left in `out`.
fn write_record(
    kind: RecordKind,
    index: u64,
    epoch: u64,
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - RECORD_HEADER_LEN;
    let len = match u32::try_from(len) {
        Ok(l) if l <= MAX_RECORD_PAYLOAD => l,
        _ => {
            out.truncate(start);
            return Err(DiskError::Encode(format!(
                "payload of {len} bytes is above the limit of {MAX_RECORD_PAYLOAD}"
            )));
        }
    };
    let rec = &mut out[start..];
    rec[field::LEN].copy_from_slice(&len.to_le_bytes());
    let len_crc = crc32fast::hash(&len.to_le_bytes());
    rec[field::LEN_CRC].copy_from_slice(&len_crc.to_le_bytes());
    rec[field::KIND] = kind as u8;
    rec[field::INDEX].copy_from_slice(&index.to_le_bytes());
    rec[field::EPOCH].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&rec[field::KIND..]);
    rec[field::CRC].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put<T: serde::Serialize>(v: &T, out: &mut Vec<u8>) -> Result<(), DiskError> {
    super::put::<T, MAX>(v, out).map_err(DiskError::from)
}

fn take<T: serde::de::DeserializeOwned>(kind: u8, payload: &[u8]) -> Result<T, DiskError> {
    super::take::<T, MAX>(kind, payload).map_err(DiskError::from)
}

impl From<CodecError> for DiskError {
    fn from(e: CodecError) -> DiskError {
        match e {
            CodecError::BadPayload { kind, reason } => DiskError::BadPayload { kind, reason },
            // Its CRC held, so it was written so: corruption, not a torn write.
            CodecError::Truncated { kind, missing } => DiskError::BadPayload {
                kind,
                reason: format!("ends {missing} bytes short of what it declares"),
            },
            other => DiskError::Encode(other.to_string()),
        }
    }
}

/// Appends an Entry record (payload: bincode of origin and command).
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<(), DiskError> {
    write_record(RecordKind::Entry, entry.index, entry.epoch, out, |out| {
        put(&(&entry.origin, &entry.command), out)
    })
}

/// Appends a HardState record.
pub fn encode_hard_state(hs: &HardState, out: &mut Vec<u8>) -> Result<(), DiskError> {
    write_record(RecordKind::HardState, 0, hs.epoch, out, |out| put(hs, out))
}

/// Appends a Truncate record dropping the entries from `from` on.
pub fn encode_truncate(from: LogIndex, out: &mut Vec<u8>) -> Result<(), DiskError> {
    write_record(RecordKind::Truncate, from, 0, out, |_| Ok(()))
}

/// Appends a LogReset record: the log is replaced by the snapshot at (`index`, `epoch`).
pub fn encode_log_reset(index: LogIndex, epoch: Epoch, out: &mut Vec<u8>) -> Result<(), DiskError> {
    write_record(RecordKind::LogReset, index, epoch, out, |_| Ok(()))
}

/// Appends a Base record: the log continues the snapshot at (`index`, `epoch`) a reset installed.
pub fn encode_base(index: LogIndex, epoch: Epoch, out: &mut Vec<u8>) -> Result<(), DiskError> {
    write_record(RecordKind::Base, index, epoch, out, |_| Ok(()))
}

/// Appends any record.
pub fn encode_record(record: &WalRecord, out: &mut Vec<u8>) -> Result<(), DiskError> {
    match record {
        WalRecord::Entry(e) => encode_entry(e, out),
        WalRecord::HardState(hs) => encode_hard_state(hs, out),
        WalRecord::Truncate { from } => encode_truncate(*from, out),
        WalRecord::LogReset { index, epoch } => encode_log_reset(*index, *epoch, out),
        WalRecord::Base { index, epoch } => encode_base(*index, *epoch, out),
    }
}

/// Decodes the record at the start of `buf`, returning it and its size in bytes. The checks
/// run in the order the torn-tail rules need: header present, length CRC, length limit,
/// length within `buf`, record CRC, then kind and payload.
pub fn decode_record(buf: &[u8]) -> Result<(WalRecord, usize), DiskError> {
    let Some(head) = buf.get(..RECORD_HEADER_LEN) else {
        return Err(DiskError::Short {
            available: buf.len(),
        });
    };
    let len_bytes = le4(head, field::LEN);
    if crc32fast::hash(&len_bytes) != u32::from_le_bytes(le4(head, field::LEN_CRC)) {
        return Err(DiskError::BadLengthChecksum);
    }
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_RECORD_PAYLOAD {
        return Err(DiskError::TooLarge { len });
    }
    let end = RECORD_HEADER_LEN + len as usize;
    let Some(covered) = buf.get(field::KIND..end) else {
        return Err(DiskError::PastEnd {
            len,
            available: buf.len(),
        });
    };
    let expected = u32::from_le_bytes(le4(head, field::CRC));
    let actual = crc32fast::hash(covered);
    if actual != expected {
        return Err(DiskError::BadChecksum {
            len,
            expected,
            actual,
        });
    }
    let kind_byte = head[field::KIND];
    let index = u64::from_le_bytes(le8(head, field::INDEX));
    let epoch = u64::from_le_bytes(le8(head, field::EPOCH));
    let payload = &covered[RECORD_HEADER_LEN - field::KIND..];
    let Some(kind) = RecordKind::from_u8(kind_byte) else {
        return Err(DiskError::UnknownKind(kind_byte));
    };
    let empty = |kind: u8| {
        if payload.is_empty() {
            Ok(())
        } else {
            Err(DiskError::BadPayload {
                kind,
                reason: format!("{} unexpected payload bytes", payload.len()),
            })
        }
    };
    let record = match kind {
        RecordKind::Entry => {
            let (origin, command) = take::<(Option<ProposalId>, Command)>(kind_byte, payload)?;
            WalRecord::Entry(Entry {
                index,
                epoch,
                origin,
                command,
            })
        }
        RecordKind::HardState => WalRecord::HardState(take(kind_byte, payload)?),
        RecordKind::Truncate => {
            empty(kind_byte)?;
            WalRecord::Truncate { from: index }
        }
        RecordKind::LogReset => {
            empty(kind_byte)?;
            WalRecord::LogReset { index, epoch }
        }
        RecordKind::Base => {
            empty(kind_byte)?;
            WalRecord::Base { index, epoch }
        }
    };
    Ok((record, end))
}

/// The layouts of a snapshot file this build reads (it writes only the newest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotFormat {
    /// `RCSNAP01`, written by earlier versions: the CRC covers the payload only.
    V1,
    /// `RCSNAP02`: the CRC covers the magic, index, epoch and length, then the payload.
    V2,
}

impl fmt::Display for SnapshotFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotFormat::V1 => "RCSNAP01",
            SnapshotFormat::V2 => "RCSNAP02",
        })
    }
}

/// The header fields of a snapshot file in `magic`'s format, CRC not yet filled in.
fn snapshot_header_fields(
    magic: [u8; 8],
    index: LogIndex,
    epoch: Epoch,
    payload: &[u8],
) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[snap_field::MAGIC].copy_from_slice(&magic);
    h[snap_field::INDEX].copy_from_slice(&index.to_le_bytes());
    h[snap_field::EPOCH].copy_from_slice(&epoch.to_le_bytes());
    h[snap_field::LEN].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h
}

/// The CRC of an `RCSNAP02` file: its header but the CRC, then its payload, so damage to any
/// field is detected as surely as damage to the payload.
fn snapshot_crc_v2(head: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(head.get(snap_field::COVERED).unwrap_or_default());
    crc.update(payload);
    crc.finalize()
}

/// The header of a snapshot file holding `payload` for the snapshot at (`index`, `epoch`);
/// the file is this header followed by `payload`. Always the newest format ([`SNAPSHOT_MAGIC`]).
pub fn snapshot_file_header(
    index: LogIndex,
    epoch: Epoch,
    payload: &[u8],
) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = snapshot_header_fields(SNAPSHOT_MAGIC, index, epoch, payload);
    let crc = snapshot_crc_v2(&h, payload);
    h[snap_field::CRC].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header of an `RCSNAP01` snapshot file, as earlier versions wrote it (tests only: this
/// build never writes one, but must keep reading them).
#[cfg(test)]
pub(crate) fn snapshot_file_header_v1(
    index: LogIndex,
    epoch: Epoch,
    payload: &[u8],
) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = snapshot_header_fields(SNAPSHOT_MAGIC_V1, index, epoch, payload);
    h[snap_field::CRC].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    h
}

/// A validated snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFile<'a> {
    /// The file's format (an `RCSNAP01` file's index and epoch were not checksummed).
    pub format: SnapshotFormat,
    /// Last log index the snapshot covers.
    pub index: LogIndex,
    /// Epoch of that entry.
    pub epoch: Epoch,
    /// The encoded state.
    pub payload: &'a [u8],
}

/// Validates a whole snapshot file of either format (magic, exact length, CRC) and returns its
/// parts. The length is checked before the CRC only to name what is wrong more precisely: in
/// `RCSNAP02` the CRC covers it too.
pub fn decode_snapshot_file(buf: &[u8]) -> Result<SnapshotFile<'_>, DiskError> {
    let Some(head) = buf.get(..SNAPSHOT_HEADER_LEN) else {
        return Err(DiskError::SnapshotShort {
            available: buf.len(),
        });
    };
    let format = match le8(head, snap_field::MAGIC) {
        SNAPSHOT_MAGIC => SnapshotFormat::V2,
        SNAPSHOT_MAGIC_V1 => SnapshotFormat::V1,
        _ => return Err(DiskError::BadMagic),
    };
    let index = u64::from_le_bytes(le8(head, snap_field::INDEX));
    let epoch = u64::from_le_bytes(le8(head, snap_field::EPOCH));
    let declared = u64::from_le_bytes(le8(head, snap_field::LEN));
    let payload = &buf[SNAPSHOT_HEADER_LEN..];
    if declared != payload.len() as u64 {
        return Err(DiskError::SnapshotLength {
            declared,
            actual: payload.len() as u64,
        });
    }
    let expected = u32::from_le_bytes(le4(head, snap_field::CRC));
    let actual = match format {
        SnapshotFormat::V1 => crc32fast::hash(payload),
        SnapshotFormat::V2 => snapshot_crc_v2(head, payload),
    };
    if actual != expected {
        return Err(DiskError::SnapshotChecksum {
            format,
            expected,
            actual,
        });
    }
    Ok(SnapshotFile {
        format,
        index,
        epoch,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{NodeId, SessionId};
    use proptest::prelude::*;

    fn say(index: u64, epoch: u64, text: &str) -> Entry {
        Entry {
            index,
            epoch,
            origin: Some(ProposalId {
                node: 2 as NodeId,
                incarnation: 9,
                seq: index,
            }),
            command: Command::Say {
                session: SessionId {
                    node: 2,
                    incarnation: 9,
                    conn: crate::core::ConnId(4),
                },
                room: "general".into(),
                client_seq: 17,
                text: text.into(),
                time_ms: 1_700_000_000_000,
            },
        }
    }

    fn samples() -> Vec<WalRecord> {
        vec![
            WalRecord::HardState(HardState {
                epoch: 7,
                participated: 6,
                incarnation: 123,
                amnesiac: true,
            }),
            WalRecord::Entry(say(1, 7, "hello")),
            WalRecord::Entry(Entry {
                index: 2,
                epoch: 7,
                origin: None,
                command: Command::Noop,
            }),
            WalRecord::Truncate { from: 2 },
            WalRecord::LogReset {
                index: 100,
                epoch: 5,
            },
            WalRecord::Base {
                index: 100,
                epoch: 5,
            },
        ]
    }

    #[test]
    fn records_round_trip_back_to_back() {
        let mut buf = Vec::new();
        for r in samples() {
            encode_record(&r, &mut buf).unwrap();
        }
        let mut off = 0;
        let mut got = Vec::new();
        while off < buf.len() {
            let (r, used) = decode_record(&buf[off..]).unwrap();
            got.push(r);
            off += used;
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn record_header_fields_sit_at_the_documented_offsets() {
        let e = say(0x0102_0304_0506_0708, 0x1112_1314_1516_1718, "hi");
        let mut buf = Vec::new();
        encode_entry(&e, &mut buf).unwrap();
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        assert_eq!(len as usize, buf.len() - RECORD_HEADER_LEN);
        assert_eq!(
            u32::from_le_bytes(buf[4..8].try_into().unwrap()),
            crc32fast::hash(&buf[0..4])
        );
        assert_eq!(
            u32::from_le_bytes(buf[8..12].try_into().unwrap()),
            crc32fast::hash(&buf[12..])
        );
        assert_eq!(buf[12], 1);
        assert_eq!(&buf[13..21], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[21..29], &0x1112_1314_1516_1718u64.to_le_bytes());
        // The payload is origin then command, fixed-width little endian: Some = 1.
        assert_eq!(buf[29], 1);

        let mut t = Vec::new();
        encode_truncate(42, &mut t).unwrap();
        assert_eq!(t.len(), RECORD_HEADER_LEN);
        assert_eq!(&t[0..4], &[0, 0, 0, 0]);
        assert_eq!(t[12], RecordKind::Truncate as u8);
        assert_eq!(&t[13..21], &42u64.to_le_bytes());
    }

    #[test]
    fn damage_is_classified_for_the_torn_tail_rules() {
        let mut buf = Vec::new();
        encode_entry(&say(3, 1, "some text"), &mut buf).unwrap();
        let n = buf.len();

        assert_eq!(
            decode_record(&buf[..10]),
            Err(DiskError::Short { available: 10 })
        );
        assert!(matches!(
            decode_record(&buf[..n - 1]),
            Err(DiskError::PastEnd { .. })
        ));

        let mut len_hit = buf.clone();
        len_hit[1] ^= 0x40;
        assert_eq!(decode_record(&len_hit), Err(DiskError::BadLengthChecksum));

        let mut body_hit = buf.clone();
        body_hit[n - 3] ^= 1;
        let err = decode_record(&body_hit).unwrap_err();
        assert!(matches!(err, DiskError::BadChecksum { .. }));
        assert_eq!(err.record_end(), Some(n));

        let mut huge = buf.clone();
        let len = (MAX_RECORD_PAYLOAD + 1).to_le_bytes();
        huge[0..4].copy_from_slice(&len);
        huge[4..8].copy_from_slice(&crc32fast::hash(&len).to_le_bytes());
        assert!(matches!(
            decode_record(&huge),
            Err(DiskError::TooLarge { .. })
        ));

        // An all-zero header never passes: the CRC of a zero length is not zero.
        assert_eq!(decode_record(&[0u8; 64]), Err(DiskError::BadLengthChecksum));
    }

    #[test]
    fn unknown_kind_and_stray_payload_are_rejected_after_the_checksum() {
        let mut buf = Vec::new();
        write_record(RecordKind::Truncate, 1, 0, &mut buf, |o| {
            o.push(9);
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            decode_record(&buf),
            Err(DiskError::BadPayload { kind: 3, .. })
        ));
        let mut k = Vec::new();
        encode_truncate(1, &mut k).unwrap();
        k[12] = 77;
        let crc = crc32fast::hash(&k[12..]);
        k[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_record(&k), Err(DiskError::UnknownKind(77)));
    }

    #[test]
    fn a_hostile_string_length_in_a_record_fails_without_allocating_it() {
        // An OpenSession entry whose user name claims nearly 64 MiB: within the record limit,
        // so the byte limit lets it through, but no byte of it follows. The CRCs are valid.
        let claimed = u64::from(MAX_RECORD_PAYLOAD) - 64;
        let mut buf = Vec::new();
        write_record(RecordKind::Entry, 1, 1, &mut buf, |out| {
            out.push(0); // no origin
            out.extend_from_slice(&3u32.to_le_bytes()); // Command::OpenSession
            out.extend_from_slice(&[2, 0, 0, 0]); // session: node,
            out.extend_from_slice(&[9; 16]); // incarnation and connection
            out.extend_from_slice(&claimed.to_le_bytes());
            Ok(())
        })
        .unwrap();
        let (result, largest) =
            crate::codec::alloc_probe::largest_allocation(|| decode_record(&buf));
        assert!(matches!(result, Err(DiskError::BadPayload { kind: 1, .. })));
        assert!(largest < 1 << 16, "decoding asked for {largest} bytes");
    }

    /// A snapshot file: `header` for `payload`, then `payload`.
    fn snapshot_file(header: [u8; SNAPSHOT_HEADER_LEN], payload: &[u8]) -> Vec<u8> {
        [&header[..], payload].concat()
    }

    #[test]
    fn snapshot_file_round_trips_and_rejects_damage() {
        let payload = b"state machine bytes".to_vec();
        let file = snapshot_file(snapshot_file_header(500, 4, &payload), &payload);
        assert_eq!(&file[0..8], b"RCSNAP02");
        assert_eq!(&file[8..16], &500u64.to_le_bytes());
        assert_eq!(&file[16..24], &4u64.to_le_bytes());
        assert_eq!(&file[24..32], &(payload.len() as u64).to_le_bytes());
        let covered = [&file[0..32], &payload[..]].concat();
        assert_eq!(&file[32..36], &crc32fast::hash(&covered).to_le_bytes());
        let s = decode_snapshot_file(&file).unwrap();
        assert_eq!(
            (s.format, s.index, s.epoch, s.payload),
            (SnapshotFormat::V2, 500, 4, &payload[..])
        );

        let mut magic = file.clone();
        magic[3] = b'X';
        assert_eq!(decode_snapshot_file(&magic), Err(DiskError::BadMagic));
        let mut body = file.clone();
        *body.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode_snapshot_file(&body),
            Err(DiskError::SnapshotChecksum {
                format: SnapshotFormat::V2,
                ..
            })
        ));
        assert!(matches!(
            decode_snapshot_file(&file[..file.len() - 1]),
            Err(DiskError::SnapshotLength { .. })
        ));
        assert_eq!(
            decode_snapshot_file(b"RCS"),
            Err(DiskError::SnapshotShort { available: 3 })
        );
    }

    #[test]
    fn snapshot_file_header_matches_an_independent_encoding() {
        // Python: h = b"RCSNAP02" + struct.pack("<QQQ", 500, 4, 19);
        //         h + struct.pack("<I", zlib.crc32(h + b"state machine bytes"))
        let hex: String = snapshot_file_header(500, 4, b"state machine bytes")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5243534e41503032\
             f401000000000000\
             0400000000000000\
             1300000000000000\
             27d4e084"
        );
    }

    #[test]
    fn every_single_bit_flip_of_a_snapshot_file_is_detected() {
        // The header is the point (a flipped epoch went unnoticed in RCSNAP01); every bit of
        // the payload too, and of a file with an empty payload.
        for payload in [&b"a small image of some bytes"[..], &[]] {
            let file = snapshot_file(snapshot_file_header(77, 3, payload), payload);
            for bit in 0..file.len() * 8 {
                let mut damaged = file.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let got = decode_snapshot_file(&damaged);
                assert!(got.is_err(), "bit {bit} of {} flipped: {got:?}", file.len());
            }
        }
    }

    #[test]
    fn an_old_format_snapshot_file_is_still_read_with_its_weaker_check() {
        let payload = b"an image written by an earlier version".to_vec();
        let file = snapshot_file(snapshot_file_header_v1(500, 4, &payload), &payload);
        assert_eq!(&file[0..8], b"RCSNAP01");
        assert_eq!(&file[32..36], &crc32fast::hash(&payload).to_le_bytes());
        let s = decode_snapshot_file(&file).unwrap();
        assert_eq!(
            (s.format, s.index, s.epoch, s.payload),
            (SnapshotFormat::V1, 500, 4, &payload[..])
        );
        // Damage to its payload, length or magic is detected...
        let mut body = file.clone();
        body[40] ^= 0x10;
        let err = decode_snapshot_file(&body).unwrap_err();
        assert!(matches!(
            err,
            DiskError::SnapshotChecksum {
                format: SnapshotFormat::V1,
                ..
            }
        ));
        assert!(err.to_string().contains("RCSNAP01"), "{err}");
        let mut len = file.clone();
        len[24] ^= 1;
        assert!(matches!(
            decode_snapshot_file(&len),
            Err(DiskError::SnapshotLength { .. })
        ));
        // ...but not to its epoch: why it is no longer written.
        let mut epoch = file.clone();
        epoch[16] ^= 1;
        assert_eq!(decode_snapshot_file(&epoch).unwrap().epoch, 5);
    }

    #[test]
    fn a_new_file_relabelled_as_old_or_an_old_one_as_new_fails_its_checksum() {
        // '1' and '2' differ in two bits, so no single flip turns one magic into the other;
        // even both together leave a CRC that fits only the format it was written in.
        let payload = b"image".to_vec();
        let mut new = snapshot_file(snapshot_file_header(9, 2, &payload), &payload);
        new[7] = b'1';
        assert!(matches!(
            decode_snapshot_file(&new),
            Err(DiskError::SnapshotChecksum { .. })
        ));
        let mut old = snapshot_file(snapshot_file_header_v1(9, 2, &payload), &payload);
        old[7] = b'2';
        assert!(matches!(
            decode_snapshot_file(&old),
            Err(DiskError::SnapshotChecksum { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
            let _ = decode_snapshot_file(&bytes);
        }

        #[test]
        fn entries_round_trip(index in 1u64.., epoch in any::<u64>(), text in ".{0,80}") {
            let e = say(index, epoch, &text);
            let mut buf = Vec::new();
            encode_entry(&e, &mut buf).unwrap();
            let (r, used) = decode_record(&buf).unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(r, WalRecord::Entry(e));
        }

        #[test]
        fn snapshot_files_round_trip(
            index in any::<u64>(),
            epoch in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let file = snapshot_file(snapshot_file_header(index, epoch, &payload), &payload);
            let s = decode_snapshot_file(&file).unwrap();
            prop_assert_eq!(
                (s.format, s.index, s.epoch, s.payload),
                (SnapshotFormat::V2, index, epoch, &payload[..])
            );
        }

        #[test]
        fn flipping_any_bit_of_a_snapshot_header_is_detected(
            index in any::<u64>(),
            epoch in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            bit in 0..SNAPSHOT_HEADER_LEN * 8,
        ) {
            let mut file = snapshot_file(snapshot_file_header(index, epoch, &payload), &payload);
            file[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_snapshot_file(&file).is_err());
        }

        #[test]
        fn flipping_any_bit_of_a_record_is_detected(pos in 0usize..80, bit in 0u8..8) {
            let mut buf = Vec::new();
            encode_entry(&say(5, 2, "0123456789"), &mut buf).unwrap();
            let pos = pos % buf.len();
            buf[pos] ^= 1 << bit;
            prop_assert!(decode_record(&buf).is_err());
        }
    }
}
