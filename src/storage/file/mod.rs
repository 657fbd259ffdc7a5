//! Durable storage in files: a write-ahead log in segment files plus snapshot files.
//!
//! Layout of the data directory:
//! - `wal/NNNNNNNNNNNNNNNNNNNN.seg`: log segments, numbered upwards (20 digits so names
//!   sort). Append-only; the record format is in `codec::disk`. Every segment starts with a
//!   HardState record and, once the log was reset to an installed snapshot, a LogReset (in
//!   the segment of the reset) or Base record (in later ones), so deleting older segments
//!   never loses the election state or where the log starts.
//! - `snapshot/SSSSSSSSSSSSSSSSSSSS.snap`: snapshots, named by the last index they cover.
//! - `*.tmp`: files being written; never read, removed on open.
//!
//! Writes are grouped: `append`, `truncate` and `save_hard_state` only encode records into a
//! buffer, and `sync` writes the buffer with one write and one fdatasync. A failed sync cuts
//! the segment back to its last durable length and keeps the buffer, so a retry writes every
//! record once. `open` scans every segment; a torn tail of the last one is cut off, other
//! damage is an error naming the file and offset (see `recovery` for the exact rules).

mod pending;
mod recovery;
mod segment;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use log::{error, warn};

use super::disk::{Disk, DiskFile, OsDisk};
use super::{assemble, Recovered, SnapshotMeta, Storage, StorageError, StoredSnapshot};
use crate::codec::disk::{encode_base, encode_hard_state, encode_log_reset, snapshot_file_header};
use crate::core::log::{Entry, HardState, LogIndex};

use pending::Pending;
use recovery::Replay;
use segment::{SegmentMeta, SEGMENT_EXT, SNAPSHOT_EXT, TMP_SUFFIX};

/// Size above which the active segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Tuning of [`FileStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// A sync starts a new segment once the active one holds at least this many bytes.
    pub segment_bytes: u64,
    /// Write the node's own snapshots (not installed ones) on a background thread, so a large
    /// one does not stall the event loop for its write and fsync; compaction waits for it.
    pub background_snapshots: bool,
}

impl Default for FileOptions {
    fn default() -> FileOptions {
        FileOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            background_snapshots: false,
        }
    }
}

/// A failure to inject into the next sync (tests only: the rollback paths are otherwise
/// reachable only with a full or failing disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Fault {
    /// Write half the bytes, then fail as a full disk does.
    HalfWrite,
    /// Write everything, then fail the fdatasync with an I/O error.
    FailSync,
    /// Fail creating a new segment file.
    FailCreate,
}

/// The write-ahead log and snapshots of one node, in its data directory on disk `D`.
///
/// Generic over the disk rather than holding a `Box<dyn Disk>`: the daemon's storage gets
/// static calls on `std::fs::File` exactly as before, the type stays `Send` whenever the disk
/// is (the daemon runs it on its storage thread), and `FileStorage` alone still names the
/// daemon's storage on the OS disk.
#[derive(Debug)]
pub struct FileStorage<D: Disk = OsDisk> {
    disk: D,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    options: FileOptions,
    /// The durable segments, oldest first; appends go to the last one.
    segments: Vec<SegmentMeta>,
    /// The last segment, open for writing (None only when there is no segment).
    active: Option<D::File>,
    /// Records not yet durable, and the log and election state they lead to.
    pending: Pending,
    /// The snapshot the log was last reset to (including a reset not yet synced).
    base: SnapshotMeta,
    /// A snapshot replaced the log: the next sync starts a segment with a LogReset record.
    reset_pending: bool,
    /// The last segment lost its head to a torn write: the next sync starts a new one.
    roll_pending: bool,
    /// A failed sync could not cut the last segment back: bytes past its durable length may
    /// be garbage, to remove before anything else is written.
    tail_dirty: bool,
    /// The newest stored snapshot.
    snapshot: Option<SnapshotMeta>,
    /// A snapshot being written in the background, and the thread writing it.
    writing: Option<(SnapshotMeta, JoinHandle<Result<(), StorageError>>)>,
    /// The snapshot index compaction last ran for (it runs once per snapshot).
    compacted: Option<LogIndex>,
    /// What `open` found, handed out by the first `load` if nothing was written since.
    recovered: Option<Recovered>,
    /// A failure to inject into the next sync.
    fault: Option<Fault>,
}

impl FileStorage {
    /// Opens (creating if needed) the storage in data directory `dir` of the OS's file
    /// system: see [`FileStorage::open_on`].
    pub fn open(dir: impl AsRef<Path>, options: FileOptions) -> Result<FileStorage, StorageError> {
        FileStorage::open_on(OsDisk, dir, options)
    }
}

impl<D: Disk> FileStorage<D> {
    /// Opens (creating if needed) the storage in data directory `dir` of `disk`: removes
    /// unfinished files, reads the newest snapshot, replays every segment and cuts off a torn
    /// tail. Corruption is an error naming the file and the offset of the bad record.
    pub fn open_on(
        disk: D,
        dir: impl AsRef<Path>,
        options: FileOptions,
    ) -> Result<FileStorage<D>, StorageError> {
        let dir = dir.as_ref();
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snapshot");
        let at = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StorageError::at("open", p, e)
        };
        segment::ensure_dir(&disk, dir).map_err(at(dir))?;
        for d in [&wal_dir, &snap_dir] {
            segment::ensure_dir(&disk, d).map_err(at(d))?;
            segment::remove_temp_files(&disk, d).map_err(at(d))?;
        }

        let snapshots = segment::list(&disk, &snap_dir, SNAPSHOT_EXT).map_err(at(&snap_dir))?;
        let snapshot = match snapshots.last() {
            Some((index, path)) => Some(recovery::read_snapshot(&disk, "open", path, *index)?),
            None => None,
        };

        let files = segment::list(&disk, &wal_dir, SEGMENT_EXT).map_err(at(&wal_dir))?;
        for w in files.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                let missing = wal_dir.join(segment::file_name(w[0].0 + 1, SEGMENT_EXT));
                let e = io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment missing between {} and {}",
                        w[0].1.display(),
                        w[1].1.display()
                    ),
                );
                return Err(StorageError::at("open", missing, e));
            }
        }
        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(files.len());
        let mut active = None;
        let mut roll_pending = false;
        for (i, (seq, path)) in files.iter().enumerate() {
            if i + 1 < files.len() {
                let bytes = disk.read(path).map_err(at(path))?;
                let s = recovery::scan_segment("open", *seq, path, &bytes, false, &mut replay)?;
                segments.push(s.meta);
                continue;
            }
            let file = disk.open(path).map_err(at(path))?;
            let bytes = file.read_all().map_err(at(path))?;
            let s = recovery::scan_segment("open", *seq, path, &bytes, true, &mut replay)?;
            if let Some((offset, why)) = &s.torn {
                warn!(
                    "storage: torn write at the end of {} (offset {offset}: {why}); \
                     cutting off {} bytes",
                    path.display(),
                    bytes.len() as u64 - offset
                );
                file.set_len(*offset)
                    .and_then(|_| file.sync_data())
                    .map_err(at(path))?;
            }
            roll_pending = !s.prologue_ok;
            segments.push(s.meta);
            active = Some(file);
        }

        let last = replay.entries.last().map(|e| e.index);
        let continues = snapshot.as_ref().is_none_or(|s| {
            let at = s.meta;
            replay.base == at || {
                let i = replay.entries.partition_point(|e| e.index < at.index);
                replay
                    .entries
                    .get(i)
                    .is_some_and(|e| e.index == at.index && e.epoch == at.epoch)
            }
        });
        let mut pending = Pending::new(replay.hard_state, last);
        let mut base = replay.base;
        let mut reset_pending = false;
        if let (false, Some(s)) = (continues, &snapshot) {
            // A crash came between storing an installed snapshot and resetting the log: the
            // log on disk is the old one, which `load` leaves out. Finish the reset at the next
            // sync so the entries the node appends after the snapshot are kept.
            warn!(
                "storage: the log does not continue snapshot {}; resetting it to the snapshot",
                s.meta.index
            );
            base = s.meta;
            pending.reset();
            reset_pending = true;
        }
        let snapshot_meta = snapshot.as_ref().map(|s| s.meta);
        let recovered = assemble(replay.hard_state, snapshot, replay.base, replay.entries);
        Ok(FileStorage {
            disk,
            wal_dir,
            snap_dir,
            options,
            segments,
            active,
            pending,
            base,
            reset_pending,
            roll_pending,
            tail_dirty: false,
            snapshot: snapshot_meta,
            writing: None,
            compacted: None,
            recovered: Some(recovered),
            fault: None,
        })
    }

    /// Waits for a snapshot written in the background; once it is durable it is the newest.
    fn finish_writing(&mut self) {
        let Some((meta, handle)) = self.writing.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(())) => self.snapshot_stored(meta),
            // The log still holds every entry it covers: nothing is lost, only not compacted.
            Ok(Err(e)) => error!("storage: {e}; the log is kept whole until the next snapshot"),
            Err(_) => error!("storage: the snapshot writer failed; the log is kept whole"),
        }
    }

    /// `meta`'s file is durable: it is the newest snapshot (newer leftovers would shadow it).
    fn snapshot_stored(&mut self, meta: SnapshotMeta) {
        if let Err(e) = self.remove_snapshots(|i| i > meta.index) {
            warn!(
                "storage: cannot remove snapshots newer than {}: {e}",
                meta.index
            );
        }
        self.snapshot = Some(meta);
    }

    /// Makes the next sync fail as `fault` says (None: no longer).
    #[cfg(test)]
    pub(crate) fn inject(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    fn snapshot_path(&self, index: LogIndex) -> PathBuf {
        self.snap_dir.join(segment::file_name(index, SNAPSHOT_EXT))
    }

    /// Writes the pending records at the end of the last segment.
    fn sync_active(&mut self) -> Result<(), StorageError> {
        let (Some(meta), Some(file)) = (self.segments.last_mut(), self.active.as_ref()) else {
            return Err(StorageError::new(
                "sync",
                io::Error::other("no active segment"),
            ));
        };
        let bytes = self.pending.bytes();
        let fault = &mut self.fault;
        let tail_dirty = self.tail_dirty;
        let result = (|| {
            if tail_dirty {
                file.set_len(meta.len)?;
            }
            write_at(file, bytes, meta.len, fault)?;
            sync_data(file, fault)
        })();
        if let Err(e) = result {
            // Cut back to what was durable so a retry rewrites the same bytes at the same
            // place; if even that fails, the next sync tries again before writing.
            if let Err(t) = file.set_len(meta.len) {
                error!(
                    "storage: cannot cut {} back to {} bytes after a failed write: {t}",
                    meta.path.display(),
                    meta.len
                );
            }
            self.tail_dirty = true;
            return Err(StorageError::at("sync", &meta.path, e));
        }
        meta.len += bytes.len() as u64;
        meta.max_index = meta.max_index.max(self.pending.max_entry_index());
        self.pending.synced();
        self.tail_dirty = false;
        Ok(())
    }

    /// Starts a new segment: its head (election state, then the reset or base when the log
    /// was reset) and the pending records, in one write.
    fn sync_new_segment(&mut self) -> Result<(), StorageError> {
        if self.tail_dirty {
            // Only the last segment may end in garbage: clean it (durably) before it stops
            // being the last.
            if let (Some(meta), Some(file)) = (self.segments.last(), self.active.as_ref()) {
                file.set_len(meta.len)
                    .and_then(|_| file.sync_data())
                    .map_err(|e| StorageError::at("sync", &meta.path, e))?;
            }
            self.tail_dirty = false;
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.wal_dir.join(segment::file_name(seq, SEGMENT_EXT));
        let mut bytes = Vec::with_capacity(128 + self.pending.bytes().len());
        let head = encode_hard_state(&self.pending.hard_state(), &mut bytes).and_then(|_| {
            let b = self.base;
            if self.reset_pending {
                encode_log_reset(b.index, b.epoch, &mut bytes)
            } else if b != SnapshotMeta::default() {
                encode_base(b.index, b.epoch, &mut bytes)
            } else {
                Ok(())
            }
        });
        head.map_err(|e| {
            StorageError::at(
                "sync",
                &path,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        bytes.extend_from_slice(self.pending.bytes());

        let fault = &mut self.fault;
        let (disk, wal_dir) = (&self.disk, &self.wal_dir);
        let result = (|| {
            if *fault == Some(Fault::FailCreate) {
                *fault = None;
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (injected)",
                ));
            }
            let file = disk.create(&path)?;
            write_at(&file, &bytes, 0, fault)?;
            sync_data(&file, fault)?;
            disk.sync_dir(wal_dir)?;
            Ok(file)
        })();
        let file = match result {
            Ok(f) => f,
            Err(e) => {
                // The old segment stays the last one; a retry creates this one afresh.
                match self.disk.remove_file(&path) {
                    Ok(()) => {
                        let _ = self.disk.sync_dir(&self.wal_dir);
                    }
                    Err(r) if r.kind() == io::ErrorKind::NotFound => {}
                    Err(r) => warn!(
                        "storage: cannot remove {} after a failed sync: {r}",
                        path.display()
                    ),
                }
                return Err(StorageError::at("sync", &path, e));
            }
        };
        self.segments.push(SegmentMeta {
            seq,
            path,
            len: bytes.len() as u64,
            max_index: self.pending.max_entry_index(),
            has_reset: self.reset_pending,
        });
        self.active = Some(file);
        self.pending.synced();
        self.reset_pending = false;
        self.roll_pending = false;
        Ok(())
    }

    /// Deletes the snapshot files `doomed` says of their index, then syncs the directory.
    fn remove_snapshots(&self, doomed: impl Fn(LogIndex) -> bool) -> io::Result<()> {
        let mut removed = false;
        for (index, path) in segment::list(&self.disk, &self.snap_dir, SNAPSHOT_EXT)? {
            if doomed(index) {
                self.disk.remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            self.disk.sync_dir(&self.snap_dir)?;
        }
        Ok(())
    }
}

/// Writes `bytes` at `offset` (or fails as an injected fault says).
fn write_at(
    file: &impl DiskFile,
    bytes: &[u8],
    offset: u64,
    fault: &mut Option<Fault>,
) -> io::Result<()> {
    if *fault == Some(Fault::HalfWrite) {
        *fault = None;
        file.write_all_at(bytes.get(..bytes.len() / 2).unwrap_or_default(), offset)?;
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no space left on device (injected)",
        ));
    }
    file.write_all_at(bytes, offset)
}

/// fdatasync (or fails as an injected fault says).
fn sync_data(file: &impl DiskFile, fault: &mut Option<Fault>) -> io::Result<()> {
    if *fault == Some(Fault::FailSync) {
        *fault = None;
        return Err(io::Error::other("input/output error (injected)"));
    }
    file.sync_data()
}

fn invalid_input(op: &'static str) -> impl FnOnce(io::Error) -> StorageError {
    move |e| StorageError::new(op, e)
}

impl<D: Disk> Storage for FileStorage<D> {
    fn truncate(&mut self, from: LogIndex) -> Result<(), StorageError> {
        self.pending
            .truncate(from)
            .map_err(invalid_input("truncate"))
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.pending
            .append(entries)
            .map_err(invalid_input("append"))
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.pending
            .save_hard_state(hs)
            .map_err(invalid_input("save election state"))
    }

    fn save_snapshot(
        &mut self,
        snapshot: &StoredSnapshot,
        replaces_log: bool,
    ) -> Result<(), StorageError> {
        self.recovered = None;
        self.finish_writing();
        let meta = snapshot.meta;
        let path = self.snapshot_path(meta.index);
        let header = snapshot_file_header(meta.index, meta.epoch, &snapshot.bytes);
        if self.options.background_snapshots && !replaces_log {
            // A handle on the same bytes: the core keeps (and streams) its snapshot meanwhile.
            let (bytes, dir) = (snapshot.bytes.clone(), self.snap_dir.clone());
            let disk = self.disk.clone();
            let handle = std::thread::Builder::new()
                .name("snapshot-writer".into())
                .spawn(move || write_snapshot_file(&disk, &dir, &path, &header, &bytes))
                .map_err(|e| StorageError::at("save snapshot", &self.snap_dir, e))?;
            self.writing = Some((meta, handle));
            return Ok(());
        }
        write_snapshot_file(&self.disk, &self.snap_dir, &path, &header, &snapshot.bytes)?;
        self.snapshot_stored(meta);
        if replaces_log {
            self.base = meta;
            self.pending.reset();
            self.reset_pending = true;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() && !self.reset_pending {
            return Ok(());
        }
        self.recovered = None;
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.options.segment_bytes);
        if self.reset_pending || self.roll_pending || full || self.active.is_none() {
            self.sync_new_segment()
        } else {
            self.sync_active()
        }
    }

    fn compact(&mut self) -> Result<(), StorageError> {
        if self.writing.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            self.finish_writing();
        }
        let Some(snap) = self.snapshot.filter(|s| self.compacted != Some(s.index)) else {
            return Ok(());
        };
        self.compacted = Some(snap.index);
        self.recovered = None;
        self.remove_snapshots(|i| i < snap.index)
            .map_err(|e| StorageError::at("compact", &self.snap_dir, e))?;
        // Only a prefix goes, so what remains replays as it did: segments before the newest
        // durable reset, and segments whose entries the snapshot all covers (strictly below
        // it: the entry at the snapshot's index shows the log continues the snapshot).
        let newest_reset = self.segments.iter().rposition(|s| s.has_reset);
        let mut doomed = 0;
        while let Some(s) = self.segments.get(doomed) {
            let before_reset = newest_reset.is_some_and(|r| doomed < r);
            if doomed + 1 >= self.segments.len() || !(before_reset || s.max_index < snap.index) {
                break;
            }
            doomed += 1;
        }
        for _ in 0..doomed {
            let path = self.segments[0].path.clone();
            self.disk
                .remove_file(&path)
                .and_then(|_| self.disk.sync_dir(&self.wal_dir))
                .map_err(|e| StorageError::at("compact", &path, e))?;
            self.segments.remove(0);
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Recovered, StorageError> {
        if let Some(r) = self.recovered.take() {
            return Ok(r);
        }
        self.finish_writing();
        let snapshot = match self.snapshot {
            Some(meta) => Some(recovery::read_snapshot(
                &self.disk,
                "load",
                &self.snapshot_path(meta.index),
                meta.index,
            )?),
            None => None,
        };
        let mut replay = Replay::default();
        for meta in &self.segments {
            let bytes = self
                .disk
                .read(&meta.path)
                .map_err(|e| StorageError::at("load", &meta.path, e))?;
            let Some(valid) = usize::try_from(meta.len).ok().and_then(|l| bytes.get(..l)) else {
                let why = format!("file ends before its {} synced bytes", meta.len);
                return Err(recovery::corrupt(
                    "load",
                    &meta.path,
                    bytes.len() as u64,
                    why,
                ));
            };
            recovery::scan_segment("load", meta.seq, &meta.path, valid, false, &mut replay)?;
        }
        Ok(assemble(
            replay.hard_state,
            snapshot,
            replay.base,
            replay.entries,
        ))
    }
}

impl<D: Disk> Drop for FileStorage<D> {
    fn drop(&mut self) {
        // A snapshot being written is finished (its file completes or its temp is left for
        // the next open to remove); only a killed process leaves it half done.
        self.finish_writing();
    }
}

/// Writes a snapshot file durably: a temporary file, fsync, rename, fsync of the directory.
fn write_snapshot_file<D: Disk>(
    disk: &D,
    dir: &Path,
    path: &Path,
    header: &[u8],
    bytes: &[u8],
) -> Result<(), StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let f = disk.create(&tmp)?;
        f.write_all_at(header, 0)?;
        f.write_all_at(bytes, header.len() as u64)?;
        f.sync_all()?;
        drop(f);
        disk.rename(&tmp, path)?;
        disk.sync_dir(dir)
    })();
    result.map_err(|e| {
        let _ = disk.remove_file(&tmp);
        StorageError::at("save snapshot", path, e)
    })
}
