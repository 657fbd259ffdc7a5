//! File names, directory listings and directory fsyncs of the segment and snapshot files.

use std::io;
use std::path::{Path, PathBuf};

use log::{info, warn};

use crate::core::log::LogIndex;
use crate::storage::Disk;

/// Extension of WAL segment files.
pub(super) const SEGMENT_EXT: &str = "seg";
/// Extension of snapshot files.
pub(super) const SNAPSHOT_EXT: &str = "snap";
/// Suffix of files being written; they are never read and are removed on open.
pub(super) const TMP_SUFFIX: &str = ".tmp";
/// Digits in the number of a segment or snapshot file name (zero padded so names sort).
const DIGITS: usize = 20;

/// The file name for segment sequence number or snapshot index `number`.
pub(super) fn file_name(number: u64, ext: &str) -> String {
    format!("{number:0width$}.{ext}", width = DIGITS)
}

/// The number in a name made by [`file_name`] with extension `ext`, if it is one.
pub(super) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What is known about a durable segment, so compaction and `load` need not read it first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SegmentMeta {
    /// Sequence number (from the file name).
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Bytes of valid records: what the last successful sync (or the scan) left.
    pub len: u64,
    /// Highest entry index written to it (0 when it holds none).
    pub max_index: LogIndex,
    /// It holds a LogReset record (an installed snapshot replaced the log there).
    pub has_reset: bool,
}

/// The numbered files with extension `ext` in `dir`, ascending. Other files are left alone
/// (with a warning), temporary ones included: see [`remove_temp_files`].
pub(super) fn list<D: Disk>(disk: &D, dir: &Path, ext: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for path in disk.read_dir(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            warn!("storage: ignoring {}", path.display());
            continue;
        };
        if let Some(n) = parse_name(name, ext) {
            out.push((n, path));
        } else if !name.ends_with(TMP_SUFFIX) {
            warn!("storage: ignoring unexpected file {}", path.display());
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Deletes the `*.tmp` files of `dir`: leftovers of a write a crash interrupted, never valid.
pub(super) fn remove_temp_files<D: Disk>(disk: &D, dir: &Path) -> io::Result<()> {
    for path in disk.read_dir(dir)? {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TMP_SUFFIX))
        {
            info!("storage: removing unfinished {}", path.display());
            disk.remove_file(&path)?;
        }
    }
    Ok(())
}

/// Creates `dir` (and its missing parents) if it is missing, making each new entry durable in
/// its parent: a directory created and not synced into its parent may vanish at a power loss
/// with every file in it, however well those were synced.
pub(super) fn ensure_dir<D: Disk>(disk: &D, dir: &Path) -> io::Result<()> {
    if disk.is_dir(dir) {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return disk.create_dir_all(dir), // a root
    };
    ensure_dir(disk, parent)?;
    disk.create_dir_all(dir)?;
    disk.sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_lookalikes() {
        let n = file_name(42, SEGMENT_EXT);
        assert_eq!(n, "00000000000000000042.seg");
        assert_eq!(parse_name(&n, SEGMENT_EXT), Some(42));
        assert_eq!(parse_name(&n, SNAPSHOT_EXT), None);
        assert_eq!(parse_name("42.seg", SEGMENT_EXT), None);
        assert_eq!(parse_name("0000000000000000004x.seg", SEGMENT_EXT), None);
        assert_eq!(
            parse_name("00000000000000000042.seg.tmp", SEGMENT_EXT),
            None
        );
        let max = file_name(u64::MAX, SNAPSHOT_EXT);
        assert_eq!(parse_name(&max, SNAPSHOT_EXT), Some(u64::MAX));
        assert_eq!(parse_name("99999999999999999999.snap", SNAPSHOT_EXT), None);
    }
}
