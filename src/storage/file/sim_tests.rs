//! FileStorage on the simulated disk: power losses at every point of a write (torn or not),
//! failed fsyncs, a full disk and corrupt reads, each checked against what was written and
//! what was synced.

use std::path::Path;

use super::*;
use crate::core::log::Command;
use crate::storage::{Disk, SimDisk};

const DIR: &str = "/data/node";

/// Small segments, so a few syncs roll; snapshots written inline (no thread on a SimDisk).
const OPTIONS: FileOptions = FileOptions {
    segment_bytes: 300,
    background_snapshots: false,
};

fn e(index: LogIndex, epoch: u64) -> Entry {
    Entry {
        index,
        epoch,
        origin: None,
        command: Command::Noop,
    }
}

fn open(disk: &SimDisk) -> Result<FileStorage<SimDisk>, StorageError> {
    FileStorage::open_on(disk.clone(), DIR, OPTIONS)
}

fn hs(epoch: u64) -> HardState {
    HardState {
        epoch,
        participated: epoch,
        incarnation: 1,
        amnesiac: false,
    }
}

/// The recovered log is made of written entries, ends at or after `synced` and covers
/// every index from 1 (the snapshot, then the entries after it, consecutive).
fn check(r: &Recovered, written: &[Entry], synced: LogIndex, what: &str) {
    let covered = r.snapshot.as_ref().map_or(0, |s| s.meta.index);
    for (i, entry) in r.entries.iter().enumerate() {
        assert_eq!(
            entry.index,
            covered + 1 + i as u64,
            "{what}: not consecutive"
        );
        assert_eq!(
            Some(entry),
            written.get(entry.index as usize - 1),
            "{what}: never written"
        );
    }
    let last = r.entries.last().map_or(covered, |x| x.index);
    assert!(
        last >= synced,
        "{what}: synced entries lost ({last} < {synced})"
    );
}

#[test]
fn power_losses_at_every_point_of_a_write_keep_what_was_synced() {
    let mut torn_kept = 0;
    for seed in 0..400u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let disk = SimDisk::new(seed);
        let mut s = open(&disk).unwrap();
        let mut written = Vec::new();
        let mut synced = 0;
        let mut snapshot_at = 0;
        let rounds = rng.u64(1..12);
        let power_at = rng.u64(0..rounds);
        for round in 0..rounds {
            let from = written.len() as u64 + 1;
            let batch: Vec<Entry> = (from..from + rng.u64(1..6)).map(|i| e(i, 1)).collect();
            written.extend(batch.iter().cloned());
            if round == power_at {
                disk.lose_power_after(rng.u64(0..10));
            }
            let mut result = s.append(&batch).and_then(|_| s.save_hard_state(&hs(round)));
            if rng.u8(..4) == 0 && synced > snapshot_at {
                // A snapshot of what is synced, then compaction after the sync.
                snapshot_at = synced;
                let snap = StoredSnapshot {
                    meta: SnapshotMeta {
                        index: synced,
                        epoch: 1,
                    },
                    bytes: vec![7; 40].into(),
                };
                result = result.and_then(|_| s.save_snapshot(&snap, false));
            }
            result = result.and_then(|_| s.sync()).and_then(|_| s.compact());
            if result.is_ok() {
                synced = written.len() as u64;
            } else {
                assert!(disk.is_powered_off(), "seed {seed}: {result:?}");
                break;
            }
        }
        if rng.bool() {
            disk.crash_torn();
        } else {
            disk.crash();
        }
        let mut s = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let r = s.load().unwrap();
        check(&r, &written, synced, &format!("seed {seed}"));
        let last = r.entries.last().map_or(0, |x| x.index);
        torn_kept += usize::from(last > synced);
        // It goes on from there, and that sticks too.
        let next = e(
            last.max(r.snapshot.as_ref().map_or(0, |s| s.meta.index)) + 1,
            2,
        );
        s.append(std::slice::from_ref(&next)).unwrap();
        s.sync().unwrap();
        disk.crash();
        let again = open(&disk).unwrap().load().unwrap();
        assert_eq!(again.entries.last(), Some(&next), "seed {seed}");
    }
    assert!(
        torn_kept > 10,
        "torn writes kept unsynced records only {torn_kept} times"
    );
}

#[test]
fn a_failed_fsync_is_retried_by_rewriting_and_its_data_sticks() {
    for seed in 0..100u64 {
        let disk = SimDisk::new(seed);
        let mut s = open(&disk).unwrap();
        let first: Vec<Entry> = (1..=3).map(|i| e(i, 1)).collect();
        s.append(&first).unwrap();
        s.sync().unwrap();
        let second: Vec<Entry> = (4..=6).map(|i| e(i, 1)).collect();
        s.append(&second).unwrap();
        disk.fail_next_sync();
        let err = s.sync().unwrap_err();
        assert!(err.path.is_some(), "{err}");
        if seed % 2 == 0 {
            // Crash before the retry: the failed write may be on disk in part, or whole.
            disk.crash_torn();
            let r = open(&disk).unwrap().load().unwrap();
            let all: Vec<Entry> = first.iter().chain(&second).cloned().collect();
            check(&r, &all, 3, &format!("seed {seed}"));
            continue;
        }
        // The driver hands the same bundle again; then it is durable.
        s.append(&second).unwrap();
        s.sync().unwrap();
        disk.crash();
        let r = open(&disk).unwrap().load().unwrap();
        assert_eq!(r.entries.len(), 6, "seed {seed}");
    }
}

#[test]
fn a_full_disk_fails_syncs_without_harm_and_writing_resumes_when_it_has_room() {
    for seed in 0..50u64 {
        let disk = SimDisk::new(seed);
        let mut s = open(&disk).unwrap();
        for i in 1..=20 {
            s.append(&[e(i, 1)]).unwrap();
            if i == 10 {
                disk.set_full(true);
            }
            let r = s.sync();
            assert_eq!(r.is_err(), (10..15).contains(&i), "seed {seed} entry {i}");
            if i == 14 {
                disk.set_full(false);
            }
        }
        disk.crash_torn();
        let r = open(&disk).unwrap().load().unwrap();
        assert_eq!(r.entries, (1..=20).map(|i| e(i, 1)).collect::<Vec<_>>());
    }
}

/// A log of several segments (each synced in several writes) and a snapshot.
fn a_long_log(disk: &SimDisk) -> Recovered {
    let mut s = open(disk).unwrap();
    for i in 1..=40 {
        s.append(&[e(i, 1)]).unwrap();
        s.save_hard_state(&hs(i)).unwrap();
        s.sync().unwrap();
        if i == 25 {
            let snap = StoredSnapshot {
                meta: SnapshotMeta {
                    index: 20,
                    epoch: 1,
                },
                bytes: vec![3; 100].into(),
            };
            s.save_snapshot(&snap, false).unwrap();
            s.compact().unwrap();
        }
    }
    disk.crash();
    open(disk).unwrap().load().unwrap()
}

#[test]
fn a_corrupt_read_of_the_log_is_reported_as_corruption_never_loaded() {
    let mut refused = 0;
    for seed in 0..100u64 {
        let disk = SimDisk::new(seed);
        let good = a_long_log(&disk);
        disk.set_corrupt_reads(0.5, ".seg");
        let before = disk.stats().flipped_reads;
        let opened = open(&disk);
        let flipped = disk.stats().flipped_reads > before;
        match opened {
            Err(e) => {
                assert!(flipped, "seed {seed}: refused with nothing flipped: {e}");
                assert_eq!(
                    e.source.kind(),
                    io::ErrorKind::InvalidData,
                    "seed {seed}: {e}"
                );
                assert!(e.to_string().contains("corrupt data at offset"), "{e}");
                refused += 1;
            }
            Ok(mut s) => {
                assert!(!flipped, "seed {seed}: a flipped bit went unnoticed");
                assert_eq!(s.load().unwrap(), good);
            }
        }
        // The damage was in the read, not on the disk.
        disk.set_corrupt_reads(0.0, "");
        assert_eq!(open(&disk).unwrap().load().unwrap(), good, "seed {seed}");
    }
    assert!(refused > 30, "only {refused} corrupt opens");
}

/// The snapshot file's CRC covers its payload but not its header fields: a flipped bit in
/// the epoch loads a snapshot of the wrong epoch. Kept as a failing test for the format fix.
#[test]
#[ignore = "snapshot header fields (epoch) are not covered by the snapshot CRC"]
fn a_corrupt_read_of_a_snapshot_header_is_reported() {
    for seed in 0..100u64 {
        let disk = SimDisk::new(seed);
        let good = a_long_log(&disk);
        disk.set_corrupt_reads(1.0, ".snap");
        if let Ok(mut s) = open(&disk) {
            assert_eq!(s.load().unwrap(), good, "seed {seed}: wrong data loaded");
        }
    }
}

#[test]
fn the_data_directory_is_found_again_after_a_power_loss_right_after_the_first_start() {
    let disk = SimDisk::new(1);
    let mut s = open(&disk).unwrap();
    s.append(&[e(1, 1)]).unwrap();
    s.sync().unwrap();
    disk.crash();
    assert!(disk.is_dir(Path::new(DIR)));
    assert_eq!(open(&disk).unwrap().load().unwrap().entries, vec![e(1, 1)]);
}
