//! The file system operations [`super::FileStorage`] is built on, behind a trait so the same
//! storage code (file format, recovery, segment rolling, snapshot files, compaction) runs on
//! the real disk in the daemon ([`OsDisk`]) and on a fault-injecting in-memory disk in the
//! simulator ([`super::SimDisk`]).
//!
//! The trait is exactly what the storage needs and no more: whole-file reads, positional
//! writes, cutting a file to a length, fsync of files and of directories, create, rename,
//! remove and listing. Errors are plain `io::Error`s; the storage adds what it was doing and on
//! which file, so the daemon's messages are the same whichever disk is below.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file system. A value is a handle: clones are the same disk, so the storage can give one
/// to its background snapshot writer thread (hence `Send + 'static`).
pub trait Disk: Clone + Debug + Send + 'static {
    /// An open file, for positional writes, cutting and fsync.
    type File: DiskFile;

    /// Creates `dir` and every missing parent (`fs::create_dir_all`).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is an existing directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The paths of the entries of `dir`, in no particular order.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens the existing file at `path` for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates the file at `path` for reading and writing, emptying it if it exists. Its entry
    /// in the directory is durable only after [`Disk::sync_dir`].
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Renames `from` to `to` (same directory), replacing `to`; durable after `sync_dir`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`; durable after `sync_dir`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creation, renaming and removal of entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of a [`Disk`].
pub trait DiskFile: Debug + Send {
    /// The whole content, from the start.
    fn read_all(&self) -> io::Result<Vec<u8>>;
    /// Writes all of `bytes` at `offset` (the file grows as needed).
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts (or extends with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the content durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the content and all metadata durable (fsync).
    fn sync_all(&self) -> io::Result<()>;
}

/// The operating system's file system (std::fs): what the daemon uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|item| item.map(|i| i.path()))
            .collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl DiskFile for File {
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let size = self.metadata().map_or(0, |m| m.len());
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut f = self;
        f.seek(SeekFrom::Start(0))?;
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}
