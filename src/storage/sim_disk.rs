//! A simulated disk for the simulator and tests: an in-memory file system that knows what is
//! durable, loses what is not at a crash, and injects the faults real disks have.
//!
//! The model (Linux semantics, as a careful storage engine has to assume them):
//! - A file has the bytes reads see (the page cache) and the bytes on the medium. Writes and
//!   cuts (`set_len`) change the first at once and are queued as changes not yet durable;
//!   `sync_data`/`sync_all` apply the queue to the medium.
//! - A directory has its entries and its durable entries. Creating, renaming or removing a
//!   file (or creating a directory) is durable only once the directory is synced: a file whose
//!   data was synced but whose directory was not may vanish at a crash.
//! - A crash loses every change not durable ([`SimDisk::crash`]), or, torn, keeps a random
//!   prefix of each file's and each directory's changes, the last kept write possibly only in
//!   part, or with the file size covering bytes that stayed zero ([`SimDisk::crash_torn`]).
//!   Open files of the crashed run stop working.
//! - A failed fsync ([`SimDisk::fail_next_sync`]) returns an I/O error; some prefix of the
//!   file's queued changes may have reached the medium, the rest is lost for good: the queue is
//!   dropped (the kernel marks the pages clean after a writeback error), and the page cache
//!   either keeps showing the written bytes or drops them, at random. So only a rewrite makes
//!   those bytes durable; a retried fsync alone does not. A failed directory fsync returns
//!   the error and leaves the directory's changes as they were (still not durable).
//! - A full disk ([`SimDisk::set_full`]) fails writes (after writing a random part), file
//!   creation and growing a file with `StorageFull`; cutting, removing and syncing still work.
//! - Power loss at a chosen point ([`SimDisk::lose_power_after`],
//!   [`SimDisk::lose_power_at_next_sync`]): every later operation fails and changes nothing,
//!   as nothing runs after the power went, until the crash that follows.
//! - Corrupt reads ([`SimDisk::set_corrupt_reads`]): a read flips one bit of what it returns,
//!   only in bytes before the start of the file's last durable write, since a damaged last
//!   record cannot be told from a torn write (recovery cuts it off as one), while damage
//!   anywhere before it must be reported as corruption.
//!
//! Deterministic: one seeded generator, no clock, no threads. The state sits behind a mutex
//! only so the handle is `Send` like every [`Disk`]; the simulator never contends for it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{Disk, DiskFile};

/// A change to a file not yet on the medium.
#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// One file (an inode: renaming keeps it).
#[derive(Clone, Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What is on the medium.
    durable: Vec<u8>,
    /// Changes not yet on the medium, oldest first.
    queued: Vec<FileOp>,
    /// Where the last write that reached the medium starts (corrupt reads stay below it).
    last_write: u64,
}

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// A change to a directory not yet on the medium.
#[derive(Clone, Debug)]
enum DirOp {
    Set(String, Entry),
    Remove(String),
    Rename { from: String, to: String },
}

#[derive(Clone, Debug, Default)]
struct Dir {
    entries: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
    queued: Vec<DirOp>,
}

/// When the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    On,
    /// After this many more changes.
    AfterOps(u64),
    /// At the next fsync (of a file or a directory), before it does anything.
    AtNextSync,
    Off,
}

/// Counters of the faults a disk injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    /// Crashes.
    pub crashes: u64,
    /// Crashes that kept part of what was not durable.
    pub torn_crashes: u64,
    /// Fsyncs that failed.
    pub failed_syncs: u64,
    /// Writes refused because the disk was full.
    pub full_writes: u64,
    /// Bits flipped in reads.
    pub flipped_reads: u64,
}

#[derive(Clone, Debug)]
struct Fs {
    rng: fastrand::Rng,
    /// Bumped at every crash: files opened before it no longer work.
    boot: u64,
    next_ino: u64,
    inodes: BTreeMap<u64, Inode>,
    /// Every directory that exists, by absolute path ("/" always does).
    dirs: BTreeMap<PathBuf, Dir>,
    power: Power,
    full: bool,
    fail_next_sync: bool,
    corrupt_reads: f64,
    /// Only files whose name ends with this are read corrupt.
    corrupt_suffix: &'static str,
    stats: SimDiskStats,
}

/// The simulated disk (a handle: clones are the same disk). See the module docs.
#[derive(Clone, Debug)]
pub struct SimDisk {
    fs: Arc<Mutex<Fs>>,
}

/// An open file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    fs: Arc<Mutex<Fs>>,
    ino: u64,
    /// The path it was opened by (what corrupt reads go by).
    path: PathBuf,
    /// The run it was opened in.
    boot: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "no space left on device")
}

fn power_lost() -> io::Error {
    io::Error::other("the power went (simulated)")
}

/// The parent directory and the name of `path` (which must be absolute and normal).
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not an absolute, normal path", path.display()),
        )
    };
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(bad());
    }
    let parent = path.parent().ok_or_else(bad)?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    Ok((parent.to_path_buf(), name.to_owned()))
}

/// Applies `op` to `bytes`; `keep` (for a write) writes only that many of its bytes, and
/// `sized` then still extends the file to the write's end (pages that stayed zero).
fn apply(bytes: &mut Vec<u8>, last_write: &mut u64, op: &FileOp, keep: Option<usize>, sized: bool) {
    match op {
        FileOp::Write { offset, bytes: b } => {
            let at = *offset as usize;
            let n = keep.unwrap_or(b.len()).min(b.len());
            let end = if sized { at + b.len() } else { at + n };
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[at..at + n].copy_from_slice(&b[..n]);
            *last_write = *offset;
        }
        FileOp::SetLen(len) => {
            bytes.resize(*len as usize, 0);
            *last_write = (*last_write).min(*len);
        }
    }
}

impl Fs {
    fn new(seed: u64) -> Fs {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), Dir::default());
        Fs {
            rng: fastrand::Rng::with_seed(seed),
            boot: 0,
            next_ino: 1,
            inodes: BTreeMap::new(),
            dirs,
            power: Power::On,
            full: false,
            fail_next_sync: false,
            corrupt_reads: 0.0,
            corrupt_suffix: "",
            stats: SimDiskStats::default(),
        }
    }

    /// Counts a change against a pending power loss; Err if the power is (now) gone.
    fn change(&mut self) -> io::Result<()> {
        match self.power {
            Power::On | Power::AtNextSync => Ok(()),
            Power::Off | Power::AfterOps(0) => {
                self.power = Power::Off;
                Err(power_lost())
            }
            Power::AfterOps(n) => {
                self.power = Power::AfterOps(n - 1);
                Ok(())
            }
        }
    }

    /// Before an fsync: Err if the power is (now) gone.
    fn sync_starts(&mut self) -> io::Result<()> {
        if self.power == Power::AtNextSync {
            self.power = Power::Off;
        }
        self.change()
    }

    fn alive(&self) -> io::Result<()> {
        if self.power == Power::Off {
            return Err(power_lost());
        }
        Ok(())
    }

    fn lookup(&self, path: &Path) -> io::Result<Entry> {
        if path == Path::new("/") {
            return Ok(Entry::Dir);
        }
        let (parent, name) = split(path)?;
        self.dirs
            .get(&parent)
            .and_then(|d| d.entries.get(&name))
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Entry::File(ino) => Ok(ino),
            Entry::Dir => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
        }
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    /// A copy of the bytes of file `ino` (at `path`) as a read returns them (with a flipped
    /// bit, maybe).
    fn read(&mut self, ino: u64, path: &Path) -> Vec<u8> {
        let Some(inode) = self.inodes.get(&ino) else {
            return Vec::new();
        };
        let mut bytes = inode.data.clone();
        let below = (inode.last_write as usize).min(bytes.len());
        let eligible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(self.corrupt_suffix));
        if below > 0 && eligible && self.corrupt_reads > 0.0 && self.rng.f64() < self.corrupt_reads
        {
            let at = self.rng.usize(..below);
            bytes[at] ^= 1 << self.rng.u8(..8);
            self.stats.flipped_reads += 1;
        }
        bytes
    }

    /// Applies a random prefix of `queued` to `durable`, the last one maybe in part.
    fn apply_prefix(&mut self, inode: &mut Inode) {
        let ops = std::mem::take(&mut inode.queued);
        let n = self.rng.usize(..=ops.len());
        for (i, op) in ops.iter().take(n).enumerate() {
            let (keep, sized) = match op {
                FileOp::Write { bytes, .. } if i + 1 == n && self.rng.bool() => {
                    (Some(self.rng.usize(..=bytes.len())), self.rng.bool())
                }
                _ => (None, false),
            };
            apply(&mut inode.durable, &mut inode.last_write, op, keep, sized);
        }
    }

    fn sync_file(&mut self, ino: u64) -> io::Result<()> {
        self.sync_starts()?;
        let Some(mut inode) = self.inodes.remove(&ino) else {
            return Ok(()); // removed and gone: nothing to make durable
        };
        if std::mem::take(&mut self.fail_next_sync) {
            self.stats.failed_syncs += 1;
            self.apply_prefix(&mut inode);
            if self.rng.bool() {
                inode.data = inode.durable.clone(); // the page cache dropped the pages too
            }
            self.inodes.insert(ino, inode);
            return Err(io::Error::other(
                "input/output error (simulated fsync failure)",
            ));
        }
        for op in std::mem::take(&mut inode.queued) {
            apply(&mut inode.durable, &mut inode.last_write, &op, None, false);
        }
        self.inodes.insert(ino, inode);
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.sync_starts()?;
        if std::mem::take(&mut self.fail_next_sync) {
            self.stats.failed_syncs += 1;
            self.dir_mut(dir)?;
            return Err(io::Error::other(
                "input/output error (simulated fsync failure)",
            ));
        }
        let d = self.dir_mut(dir)?;
        for op in std::mem::take(&mut d.queued) {
            apply_dir(&mut d.durable, op);
        }
        Ok(())
    }

    /// Adds a new entry `name` -> `entry` to `dir` (not durable yet).
    fn link(&mut self, dir: &Path, name: String, entry: Entry) -> io::Result<()> {
        let d = self.dir_mut(dir)?;
        d.entries.insert(name.clone(), entry);
        d.queued.push(DirOp::Set(name, entry));
        Ok(())
    }

    /// What survives a crash: `torn` keeps a random prefix of what was not durable.
    fn crash(&mut self, torn: bool) {
        self.stats.crashes += 1;
        if torn {
            self.stats.torn_crashes += 1;
        }
        self.boot += 1;
        self.power = Power::On;
        // An fsync failure armed for the crashed run does not strike the next one's recovery.
        self.fail_next_sync = false;
        let mut dirs = std::mem::take(&mut self.dirs);
        for d in dirs.values_mut() {
            let ops = std::mem::take(&mut d.queued);
            let n = if torn {
                self.rng.usize(..=ops.len())
            } else {
                0
            };
            for op in ops.into_iter().take(n) {
                apply_dir(&mut d.durable, op);
            }
            d.entries = d.durable.clone();
        }
        // Only what the durable entries reach from the root is left.
        let mut kept_dirs = BTreeMap::new();
        let mut kept_inodes = BTreeMap::new();
        let mut todo = vec![PathBuf::from("/")];
        while let Some(path) = todo.pop() {
            let Some(d) = dirs.remove(&path) else {
                continue;
            };
            for (name, entry) in &d.durable {
                match *entry {
                    Entry::Dir => todo.push(path.join(name)),
                    Entry::File(ino) => {
                        if let Some(mut inode) = self.inodes.remove(&ino) {
                            if torn {
                                self.apply_prefix(&mut inode);
                            }
                            inode.queued.clear();
                            inode.data = inode.durable.clone();
                            kept_inodes.insert(ino, inode);
                        }
                    }
                }
            }
            kept_dirs.insert(path, d);
        }
        self.dirs = kept_dirs;
        self.inodes = kept_inodes;
    }
}

fn apply_dir(entries: &mut BTreeMap<String, Entry>, op: DirOp) {
    match op {
        DirOp::Set(name, entry) => {
            entries.insert(name, entry);
        }
        DirOp::Remove(name) => {
            entries.remove(&name);
        }
        DirOp::Rename { from, to } => {
            if let Some(e) = entries.remove(&from) {
                entries.insert(to, e);
            }
        }
    }
}

impl SimDisk {
    /// An empty disk (only the root directory) whose faults draw from generator `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            fs: Arc::new(Mutex::new(Fs::new(seed))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Fs> {
        // Nothing panics while holding the lock; a poisoned lock still holds a whole state.
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crashes: everything not durable is lost; files opened before stop working.
    pub fn crash(&self) {
        self.lock().crash(false);
    }

    /// Crashes with torn writes: of each file's and directory's changes not durable, a random
    /// prefix survives, the last kept write maybe in part (see the module docs).
    pub fn crash_torn(&self) {
        self.lock().crash(true);
    }

    /// Makes writes, file creation and growing fail as on a full disk while `full`.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Whether writes fail as on a full disk.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// Makes the next fsync (of a file or a directory) of this run fail with an I/O error.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// The power goes after `changes` more changes (writes, cuts, syncs, creations, renames,
    /// removals): every operation after that fails and does nothing until [`SimDisk::crash`].
    pub fn lose_power_after(&self, changes: u64) {
        self.lock().power = Power::AfterOps(changes);
    }

    /// The power goes at the next fsync, before it makes anything durable.
    pub fn lose_power_at_next_sync(&self) {
        self.lock().power = Power::AtNextSync;
    }

    /// Whether the power went (operations fail until the next crash).
    pub fn is_powered_off(&self) -> bool {
        self.lock().power == Power::Off
    }

    /// Each read of a file whose name ends with `suffix` ("" for every file) flips one bit
    /// with probability `rate` (0 for none), only before the start of the file's last durable
    /// write.
    pub fn set_corrupt_reads(&self, rate: f64, suffix: &'static str) {
        let mut fs = self.lock();
        fs.corrupt_reads = rate;
        fs.corrupt_suffix = suffix;
    }

    /// A new disk holding what this one holds durably (what a crash now would leave), without
    /// faults: to look at what a restart would find without disturbing this disk.
    pub fn durable_copy(&self) -> SimDisk {
        let mut fs = self.lock().clone();
        fs.power = Power::On;
        fs.full = false;
        fs.fail_next_sync = false;
        fs.corrupt_reads = 0.0;
        fs.crash(false);
        fs.stats = SimDiskStats::default();
        SimDisk {
            fs: Arc::new(Mutex::new(fs)),
        }
    }

    /// Empties the disk (a new, blank disk in the same machine; the settings stay).
    pub fn wipe(&self) {
        let mut fs = self.lock();
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), Dir::default());
        fs.dirs = dirs;
        fs.inodes.clear();
        fs.boot += 1;
        fs.power = Power::On;
    }

    /// The faults injected so far.
    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats
    }

    /// The durable bytes of the file at `path`, if it is there (tests).
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.durable_copy().read(path).ok()
    }

    /// Replaces the content of the file at `path`, durably (tests: damage a file).
    pub fn overwrite(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut fs = self.lock();
        let ino = fs.file(path)?;
        let inode = fs.inodes.entry(ino).or_default();
        inode.data = bytes.to_vec();
        inode.durable = bytes.to_vec();
        inode.queued.clear();
        Ok(())
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.alive()?;
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(p) = at {
            match fs.lookup(p) {
                Ok(Entry::Dir) => break,
                Ok(Entry::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: a file is in the way", p.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p.to_path_buf()),
                Err(e) => return Err(e),
            }
            at = p.parent();
        }
        for p in missing.into_iter().rev() {
            fs.change()?;
            let (parent, name) = split(&p)?;
            fs.link(&parent, name, Entry::Dir)?;
            fs.dirs.insert(p, Dir::default());
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        let fs = self.lock();
        fs.alive().is_ok() && matches!(fs.lookup(path), Ok(Entry::Dir))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let fs = self.lock();
        fs.alive()?;
        let d = fs.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.entries.keys().map(|n| dir.join(n)).collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut fs = self.lock();
        fs.alive()?;
        let ino = fs.file(path)?;
        Ok(fs.read(ino, path))
    }

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        let fs = self.lock();
        fs.alive()?;
        let ino = fs.file(path)?;
        Ok(SimFile {
            fs: self.fs.clone(),
            ino,
            path: path.to_path_buf(),
            boot: fs.boot,
        })
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut fs = self.lock();
        fs.alive()?;
        let (parent, name) = split(path)?;
        let ino = match fs.lookup(path) {
            Ok(Entry::File(ino)) => {
                fs.change()?;
                let inode = fs.inodes.entry(ino).or_default();
                inode.data.clear();
                inode.queued.push(FileOp::SetLen(0));
                ino
            }
            Ok(Entry::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !fs.dirs.contains_key(&parent) {
                    return Err(not_found(&parent));
                }
                if fs.full {
                    fs.stats.full_writes += 1;
                    return Err(no_space());
                }
                fs.change()?;
                let ino = fs.next_ino;
                fs.next_ino += 1;
                fs.inodes.insert(ino, Inode::default());
                fs.link(&parent, name, Entry::File(ino))?;
                ino
            }
            Err(e) => return Err(e),
        };
        Ok(SimFile {
            fs: self.fs.clone(),
            ino,
            path: path.to_path_buf(),
            boot: fs.boot,
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.alive()?;
        let (dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated disk renames only within a directory",
            ));
        }
        fs.file(from)?;
        fs.change()?;
        let d = fs.dir_mut(&dir)?;
        if let Some(e) = d.entries.remove(&from_name) {
            d.entries.insert(to_name.clone(), e);
        }
        d.queued.push(DirOp::Rename {
            from: from_name,
            to: to_name,
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.alive()?;
        let (dir, name) = split(path)?;
        fs.file(path)?;
        fs.change()?;
        let d = fs.dir_mut(&dir)?;
        d.entries.remove(&name);
        d.queued.push(DirOp::Remove(name));
        // The inode stays until a crash: its durable entry may come back with it.
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.lock();
        fs.alive()?;
        fs.sync_dir(dir)
    }
}

impl SimFile {
    /// The disk, if this file is of its current run and the power is on.
    fn fs(&self) -> io::Result<MutexGuard<'_, Fs>> {
        let fs = self.fs.lock().unwrap_or_else(|e| e.into_inner());
        fs.alive()?;
        if fs.boot != self.boot {
            return Err(io::Error::other("file of a run that crashed"));
        }
        Ok(fs)
    }
}

impl DiskFile for SimFile {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut fs = self.fs()?;
        Ok(fs.read(self.ino, &self.path))
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let mut fs = self.fs()?;
        fs.change()?;
        let mut result = Ok(());
        let mut n = bytes.len();
        if fs.full {
            // Some of it may fit, as a write on a full disk writes what it can.
            n = fs.rng.usize(..=bytes.len().saturating_sub(1));
            fs.stats.full_writes += 1;
            result = Err(no_space());
        }
        if n > 0 {
            let op = FileOp::Write {
                offset,
                bytes: bytes[..n].to_vec(),
            };
            let inode = fs.inodes.entry(self.ino).or_default();
            let mut ignored = 0;
            apply(&mut inode.data, &mut ignored, &op, None, false);
            inode.queued.push(op);
        }
        result
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut fs = self.fs()?;
        let current = fs.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64);
        if fs.full && len > current {
            fs.stats.full_writes += 1;
            return Err(no_space());
        }
        fs.change()?;
        let inode = fs.inodes.entry(self.ino).or_default();
        inode.data.resize(len as usize, 0);
        inode.queued.push(FileOp::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs()?.sync_file(self.ino)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.fs()?.sync_file(self.ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// A disk with durable directory /d.
    fn disk() -> SimDisk {
        let d = SimDisk::new(7);
        d.create_dir_all(&p("/d")).unwrap();
        d.sync_dir(&p("/")).unwrap();
        d
    }

    /// Creates /d/name holding `bytes`, data and entry durable.
    fn durable_file(d: &SimDisk, name: &str, bytes: &[u8]) -> SimFile {
        let f = d.create(&p("/d").join(name)).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(&p("/d")).unwrap();
        f
    }

    #[test]
    fn a_crash_loses_what_was_not_synced_and_keeps_what_was() {
        let d = disk();
        let f = durable_file(&d, "a", b"hello");
        f.write_all_at(b" world", 5).unwrap();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"hello world", "reads see it");
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"hello");
        assert!(
            f.write_all_at(b"x", 0).is_err(),
            "a file of the crashed run"
        );
        let f = d.open(&p("/d/a")).unwrap();
        f.write_all_at(b" again", 5).unwrap();
        f.sync_all().unwrap();
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"hello again");
        // A cut not synced is lost too.
        let f = d.open(&p("/d/a")).unwrap();
        f.set_len(2).unwrap();
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"hello again");
    }

    #[test]
    fn a_created_or_renamed_file_is_durable_only_once_its_directory_is_synced() {
        let d = disk();
        let f = d.create(&p("/d/new")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_data().unwrap();
        d.crash();
        assert_eq!(
            d.read_dir(&p("/d")).unwrap(),
            Vec::<PathBuf>::new(),
            "entry lost"
        );

        durable_file(&d, "old", b"1");
        let f = d.create(&p("/d/x.tmp")).unwrap();
        f.write_all_at(b"2", 0).unwrap();
        f.sync_all().unwrap();
        d.rename(&p("/d/x.tmp"), &p("/d/old")).unwrap();
        assert_eq!(d.read(&p("/d/old")).unwrap(), b"2");
        d.crash();
        assert_eq!(d.read(&p("/d/old")).unwrap(), b"1", "rename lost");
        assert_eq!(d.read_dir(&p("/d")).unwrap(), vec![p("/d/old")]);

        let f = d.create(&p("/d/x.tmp")).unwrap();
        f.write_all_at(b"2", 0).unwrap();
        f.sync_all().unwrap();
        d.rename(&p("/d/x.tmp"), &p("/d/old")).unwrap();
        d.sync_dir(&p("/d")).unwrap();
        d.crash();
        assert_eq!(d.read(&p("/d/old")).unwrap(), b"2", "rename durable");

        // So is a removal, and a directory made by create_dir_all.
        d.remove_file(&p("/d/old")).unwrap();
        d.create_dir_all(&p("/d/e/f")).unwrap();
        d.crash();
        assert!(d.read(&p("/d/old")).is_ok());
        assert!(!d.is_dir(&p("/d/e")));
    }

    #[test]
    fn a_failed_fsync_loses_the_unsynced_data_even_if_a_later_fsync_succeeds() {
        let mut lost = 0;
        for seed in 0..32 {
            let d = SimDisk::new(seed);
            d.create_dir_all(&p("/d")).unwrap();
            d.sync_dir(&p("/")).unwrap();
            let f = durable_file(&d, "a", b"base");
            f.write_all_at(b"-more-data", 4).unwrap();
            d.fail_next_sync();
            assert!(f.sync_data().is_err());
            // Reads see what was written or what reached the disk; a retried fsync makes
            // nothing more durable.
            let seen = d.read(&p("/d/a")).unwrap();
            assert!(seen.starts_with(b"base"), "{seen:?}");
            assert!(
                b"base-more-data".starts_with(&seen[..]) || seen[4..].contains(&0),
                "{seen:?}"
            );
            f.sync_data().unwrap();
            d.crash();
            let after = d.read(&p("/d/a")).unwrap();
            assert!(after.starts_with(b"base") && after.len() <= 14, "{after:?}");
            assert!(
                b"base-more-data".starts_with(&after[..]) || after[4..].contains(&0),
                "only a prefix (maybe with a zeroed part) reached the disk: {after:?}"
            );
            lost += usize::from(after != b"base-more-data");
            // Rewriting and syncing does make it durable.
            let f = d.open(&p("/d/a")).unwrap();
            f.set_len(4).unwrap();
            f.write_all_at(b"-more-data", 4).unwrap();
            f.sync_data().unwrap();
            d.crash();
            assert_eq!(d.read(&p("/d/a")).unwrap(), b"base-more-data");
        }
        assert!(
            lost > 8,
            "the retried fsync saved what the failed one lost: {lost}"
        );
    }

    #[test]
    fn a_full_disk_refuses_writes_until_it_has_room() {
        let d = disk();
        let f = durable_file(&d, "a", b"abc");
        d.set_full(true);
        let e = f.write_all_at(b"defgh", 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            d.create(&p("/d/b")).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        assert!(f.set_len(100).is_err());
        // A cut still works: it is how storage takes back a part written.
        f.set_len(3).unwrap();
        f.sync_data().unwrap();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"abc");
        d.set_full(false);
        f.write_all_at(b"def", 3).unwrap();
        f.sync_data().unwrap();
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"abcdef");
        assert!(d.stats().full_writes >= 3);
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_bytes() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let d = SimDisk::new(seed);
            d.create_dir_all(&p("/d")).unwrap();
            d.sync_dir(&p("/")).unwrap();
            let f = durable_file(&d, "a", b"synced|");
            f.write_all_at(b"unsynced", 7).unwrap();
            d.crash_torn();
            let got = d.read(&p("/d/a")).unwrap();
            assert!(got.starts_with(b"synced|"), "{got:?}");
            let tail = &got[7..];
            let data = tail.iter().take_while(|&&b| b != 0).count();
            assert_eq!(&tail[..data], &b"unsynced"[..data], "a prefix");
            assert!(tail[data..].iter().all(|&b| b == 0), "then zeros only");
            seen.insert(got.len());
        }
        assert!(seen.len() > 3, "torn at different places: {seen:?}");
    }

    #[test]
    fn power_loss_stops_every_change_until_the_crash() {
        let d = disk();
        let f = durable_file(&d, "a", b"1");
        d.lose_power_at_next_sync();
        f.write_all_at(b"2", 1).unwrap();
        assert!(f.sync_data().is_err());
        assert!(d.is_powered_off());
        assert!(d.create(&p("/d/b")).is_err());
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"1");
        d.lose_power_after(1);
        let f = d.open(&p("/d/a")).unwrap();
        f.write_all_at(b"2", 1).unwrap();
        assert!(f.sync_data().is_err(), "the second change");
        d.crash();
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"1");
    }

    #[test]
    fn corrupt_reads_flip_a_bit_only_before_the_last_write() {
        let d = disk();
        let f = durable_file(&d, "a", b"first write ");
        f.write_all_at(b"last write", 12).unwrap();
        f.sync_data().unwrap();
        d.set_corrupt_reads(1.0, "");
        for _ in 0..50 {
            let got = d.read(&p("/d/a")).unwrap();
            assert_eq!(&got[12..], b"last write");
            assert_ne!(&got[..12], b"first write ");
        }
        // A file of one write is never damaged.
        durable_file(&d, "b", b"one write");
        assert_eq!(d.read(&p("/d/b")).unwrap(), b"one write");
        assert_eq!(
            d.durable_bytes(&p("/d/a")).unwrap(),
            b"first write last write"
        );
    }

    #[test]
    fn the_durable_copy_is_what_a_crash_would_leave() {
        let d = disk();
        let f = durable_file(&d, "a", b"kept");
        f.write_all_at(b" lost", 4).unwrap();
        let c = d.durable_copy();
        assert_eq!(c.read(&p("/d/a")).unwrap(), b"kept");
        assert_eq!(d.read(&p("/d/a")).unwrap(), b"kept lost", "untouched");
        d.wipe();
        assert!(d.read_dir(&p("/")).unwrap().is_empty());
    }
}
