use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;
use crate::codec::disk::{decode_record, encode_record, WalRecord, RECORD_HEADER_LEN};
use crate::core::log::{Command, ProposalId};
use crate::core::{ConnId, SessionId};
use crate::storage::{Disk, MemStorage, OsDisk, SimDisk};

fn say(index: LogIndex, epoch: u64, text: &str) -> Entry {
    Entry {
        index,
        epoch,
        origin: Some(ProposalId {
            node: 1,
            incarnation: 3,
            seq: index,
        }),
        command: Command::Say {
            session: SessionId {
                node: 1,
                incarnation: 3,
                conn: ConnId(9),
            },
            room: "general".into(),
            client_seq: index,
            text: text.into(),
            time_ms: 1_700_000_000_000 + index,
        },
    }
}

fn e(index: LogIndex, epoch: u64) -> Entry {
    say(index, epoch, "a message of about forty bytes of text..")
}

fn run(from: LogIndex, to: LogIndex, epoch: u64) -> Vec<Entry> {
    (from..=to).map(|i| e(i, epoch)).collect()
}

fn hs(epoch: u64) -> HardState {
    HardState {
        epoch,
        participated: epoch,
        incarnation: 7,
        amnesiac: false,
    }
}

fn snap(index: LogIndex, epoch: u64) -> StoredSnapshot {
    StoredSnapshot {
        meta: SnapshotMeta { index, epoch },
        bytes: format!("state up to {index}").into_bytes().into(),
    }
}

const SMALL: FileOptions = FileOptions {
    segment_bytes: 1000,
    background_snapshots: false,
};

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir, FileOptions::default()).unwrap()
}

fn open_small(dir: &Path) -> FileStorage {
    FileStorage::open(dir, SMALL).unwrap()
}

fn reload(dir: &Path) -> Recovered {
    open(dir).load().unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(&OsDisk, &dir.join("wal"), SEGMENT_EXT)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(&OsDisk, &dir.join("snapshot"), SNAPSHOT_EXT)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Every record of a segment file with its offset.
fn records(path: &Path) -> Vec<(usize, WalRecord)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let (r, n) = decode_record(&bytes[off..]).unwrap();
        out.push((off, r));
        off += n;
    }
    out
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A storage holding `n` entries (one sync), and its only segment.
fn with_entries(n: u64) -> (TempDir, PathBuf) {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.save_hard_state(&hs(1)).unwrap();
    s.append(&run(1, n, 1)).unwrap();
    s.sync().unwrap();
    let segs = segment_files(d.path());
    assert_eq!(segs.len(), 1);
    let seg = segs[0].clone();
    (d, seg)
}

fn err_text(r: Result<FileStorage, StorageError>) -> String {
    match r {
        Ok(_) => panic!("open succeeded on damaged data"),
        Err(e) => {
            assert_eq!(e.source.kind(), io::ErrorKind::InvalidData, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_segment_starts_with_the_election_state_and_holds_records_in_order() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 2, 1)).unwrap();
    s.save_hard_state(&hs(1)).unwrap();
    s.sync().unwrap();
    let seg = &segment_files(d.path())[0];
    assert_eq!(
        seg.file_name().unwrap().to_str().unwrap(),
        "00000000000000000001.seg"
    );
    let recs = records(seg);
    let kinds: Vec<_> = recs.iter().map(|(_, r)| r.kind() as u8).collect();
    assert_eq!(kinds, vec![2, 1, 1, 2]);
    assert_eq!(recs[1].1, WalRecord::Entry(e(1, 1)));
    let bytes = fs::read(seg).unwrap();
    let at = recs[2].0;
    assert_eq!(bytes[at + 12], 1, "kind at offset 12");
    assert_eq!(&bytes[at + 13..at + 21], &2u64.to_le_bytes(), "index at 13");
    assert_eq!(&bytes[at + 21..at + 29], &1u64.to_le_bytes(), "epoch at 21");
    let payload = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(recs[3].0, at + RECORD_HEADER_LEN + payload);
}

#[test]
fn entries_and_election_state_survive_a_restart_and_nothing_before_sync_does() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 3, 1)).unwrap();
    s.save_hard_state(&hs(2)).unwrap();
    s.sync().unwrap();
    s.append(&run(4, 5, 2)).unwrap();
    s.save_hard_state(&hs(3)).unwrap();
    drop(s); // a crash: the last two entries and epoch 3 were never synced
    let r = reload(d.path());
    assert_eq!(r.entries, run(1, 3, 1));
    assert_eq!(r.hard_state, hs(2));
    assert_eq!(r.snapshot, None);
}

#[test]
fn load_after_open_matches_a_rescan_and_sees_later_syncs() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 3, 1)).unwrap();
    s.sync().unwrap();
    let mut s = open(d.path());
    let first = s.load().unwrap();
    assert_eq!(
        s.load().unwrap(),
        first,
        "the rescan agrees with the scan of open"
    );
    s.append(&run(4, 4, 1)).unwrap();
    assert_eq!(s.load().unwrap(), first, "not synced yet");
    s.sync().unwrap();
    assert_eq!(s.load().unwrap().entries, run(1, 4, 1));
}

#[test]
fn a_torn_last_record_is_cut_off_at_every_byte_offset() {
    let n = 5;
    let (src, seg) = with_entries(n);
    let bytes = fs::read(&seg).unwrap();
    let recs = records(&seg);
    let (start, _) = recs[recs.len() - 1];
    assert_eq!(recs[recs.len() - 1].1, WalRecord::Entry(e(n, 1)));
    let name = seg.file_name().unwrap().to_owned();
    for cut in start..bytes.len() {
        let d = TempDir::new().unwrap();
        fs::create_dir_all(d.path().join("wal")).unwrap();
        let path = d.path().join("wal").join(&name);
        fs::write(&path, &bytes[..cut]).unwrap();
        let mut s = open(d.path());
        let r = s.load().unwrap();
        assert_eq!(r.entries, run(1, n - 1, 1), "cut at {cut}");
        assert_eq!(r.hard_state, hs(1));
        assert_eq!(
            len(&path),
            start as u64,
            "cut at {cut}: truncated to the good end"
        );
        let fresh = say(n, 2, "written after the restart");
        s.append(std::slice::from_ref(&fresh)).unwrap();
        s.sync().unwrap();
        let mut want = run(1, n - 1, 1);
        want.push(fresh);
        assert_eq!(reload(d.path()).entries, want, "cut at {cut}");
    }
    drop(src);
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let (d, seg) = with_entries(4);
    let good = len(&seg);
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, &bytes).unwrap();
    assert_eq!(reload(d.path()).entries, run(1, 4, 1));
    assert_eq!(len(&seg), good);
}

#[test]
fn a_record_failing_its_checksum_followed_only_by_zeros_is_a_torn_tail() {
    // A multi-page write that reached the disk in part: the file size covers pages that
    // stayed zero, in the middle of the last record and after it.
    let (d, seg) = with_entries(4);
    let recs = records(&seg);
    let (start, _) = recs[recs.len() - 1];
    let mut bytes = fs::read(&seg).unwrap();
    let end = bytes.len();
    bytes[end - 5..].fill(0);
    bytes.extend_from_slice(&[0u8; 100]);
    fs::write(&seg, &bytes).unwrap();
    assert_eq!(reload(d.path()).entries, run(1, 3, 1));
    assert_eq!(len(&seg), start as u64);
}

#[test]
fn a_write_torn_inside_the_length_of_a_record_with_zeros_after_is_a_torn_tail() {
    // A record header across a page boundary: the page with the first bytes of its length
    // reached the disk, the next one did not, and the file size covers it. Found by the
    // simulator (seed 1115 of ringchat-sim, a failed fsync then a crash).
    let (d, seg) = with_entries(4);
    let recs = records(&seg);
    let (start, _) = recs[recs.len() - 1];
    let original = fs::read(&seg).unwrap();
    for kept in 1..8 {
        let mut bytes = original.clone();
        bytes[start + kept..].fill(0);
        fs::write(&seg, &bytes).unwrap();
        assert_eq!(reload(d.path()).entries, run(1, 3, 1), "{kept} bytes kept");
        assert_eq!(len(&seg), start as u64);
    }
    // Past the length and its CRC, a damaged length is corruption.
    let mut bytes = original.clone();
    bytes[start] ^= 0x40;
    bytes[start + 12..].fill(0);
    fs::write(&seg, &bytes).unwrap();
    err_text(FileStorage::open(d.path(), FileOptions::default()));
}

#[test]
fn a_damaged_record_before_the_end_is_corruption_naming_file_and_offset() {
    let (d, seg) = with_entries(5);
    let recs = records(&seg);
    let original = fs::read(&seg).unwrap();
    let (at, _) = recs[2];
    let name = seg.file_name().unwrap().to_str().unwrap().to_owned();
    // A flipped payload bit, a damaged length, and a zeroed header with data after it.
    type Damage<'a> = &'a dyn Fn(&mut Vec<u8>);
    let damages: [(usize, Damage); 3] = [
        (at + 40, &|b: &mut Vec<u8>| b[at + 40] ^= 0x10),
        (at, &|b: &mut Vec<u8>| b[at + 1] ^= 0x01),
        (at, &|b: &mut Vec<u8>| b[at..at + RECORD_HEADER_LEN].fill(0)),
    ];
    for (what, damage) in damages {
        let mut bytes = original.clone();
        damage(&mut bytes);
        fs::write(&seg, &bytes).unwrap();
        let msg = err_text(FileStorage::open(d.path(), FileOptions::default()));
        assert!(msg.contains(&name), "{msg}");
        assert!(
            msg.contains(&format!("offset {at}")),
            "damage at {what}: {msg}"
        );
        assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing cut off");
    }
}

/// Entries 1 to `n`, synced one by one into small segments; the directory and its segments.
fn entries_in_small_segments(n: LogIndex) -> (TempDir, Vec<PathBuf>) {
    let d = TempDir::new().unwrap();
    let mut s = open_small(d.path());
    for i in 1..=n {
        s.append(&[e(i, 1)]).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    let segs = segment_files(d.path());
    (d, segs)
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let (d, segs) = entries_in_small_segments(20);
    assert!(segs.len() >= 3, "{segs:?}");
    let first = &segs[0];
    let recs = records(first);
    let (at, _) = recs[recs.len() - 1];
    let original = fs::read(first).unwrap();
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();

    let mut flipped = original.clone();
    flipped[at + 50] ^= 0x80;
    fs::write(first, &flipped).unwrap();
    let msg = err_text(FileStorage::open(d.path(), SMALL));
    assert!(
        msg.contains(&name) && msg.contains(&format!("offset {at}")),
        "{msg}"
    );

    // What would be a torn tail in the last segment is corruption here.
    fs::write(first, &original[..original.len() - 3]).unwrap();
    let msg = err_text(FileStorage::open(d.path(), SMALL));
    assert!(
        msg.contains(&name) && msg.contains(&format!("offset {at}")),
        "{msg}"
    );

    fs::write(first, &original).unwrap();
    assert_eq!(reload(d.path()).entries, run(1, 20, 1));
}

#[test]
fn a_missing_middle_segment_refuses_to_open() {
    let (d, segs) = entries_in_small_segments(20);
    fs::remove_file(&segs[1]).unwrap();
    let msg = err_text(FileStorage::open(d.path(), SMALL));
    assert!(msg.contains("00000000000000000002.seg"), "{msg}");
}

#[test]
fn replay_takes_an_overlapping_entry_as_a_truncation_and_a_gap_as_corruption() {
    let write = |recs: &[WalRecord]| {
        let d = TempDir::new().unwrap();
        fs::create_dir_all(d.path().join("wal")).unwrap();
        let mut b = Vec::new();
        for r in recs {
            encode_record(r, &mut b).unwrap();
        }
        fs::write(d.path().join("wal/00000000000000000001.seg"), b).unwrap();
        d
    };
    let h = WalRecord::HardState(hs(1));
    let en = |i, ep| WalRecord::Entry(e(i, ep));
    let d = write(&[h.clone(), en(1, 1), en(2, 1), en(3, 1), en(2, 2), en(3, 2)]);
    assert_eq!(reload(d.path()).entries, vec![e(1, 1), e(2, 2), e(3, 2)]);
    let d = write(&[
        h.clone(),
        en(1, 1),
        en(2, 1),
        WalRecord::Truncate { from: 2 },
        en(2, 3),
    ]);
    assert_eq!(reload(d.path()).entries, vec![e(1, 1), e(2, 3)]);
    let d = write(&[h.clone(), en(1, 1), en(3, 1), en(4, 1)]);
    let msg = err_text(FileStorage::open(d.path(), FileOptions::default()));
    assert!(msg.contains("gap"), "{msg}");
    // The log may start anywhere (older segments compacted away).
    let d = write(&[h, en(50, 1), en(51, 1)]);
    assert_eq!(reload(d.path()).entries, vec![e(50, 1), e(51, 1)]);
}

#[test]
fn appends_that_leave_a_gap_are_refused() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 3, 1)).unwrap();
    let err = s.append(&[e(5, 1)]).unwrap_err();
    assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);
    s.sync().unwrap();
    assert_eq!(reload(d.path()).entries, run(1, 3, 1));
}

#[test]
fn truncate_then_append_replaces_the_suffix_across_restarts() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 5, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    let mut s = open(d.path());
    s.truncate(3).unwrap();
    s.append(&run(3, 4, 2)).unwrap();
    s.sync().unwrap();
    let mut want = run(1, 2, 1);
    want.extend(run(3, 4, 2));
    assert_eq!(reload(d.path()).entries, want);
    // A truncation not yet synced is lost with a crash; a synced one is not.
    let mut s = open(d.path());
    s.truncate(2).unwrap();
    drop(s);
    assert_eq!(reload(d.path()).entries, want);
}

#[test]
fn segments_roll_at_the_threshold_and_each_starts_with_the_election_state() {
    let d = TempDir::new().unwrap();
    let mut s = open_small(d.path());
    for i in 1..=30 {
        s.append(&[e(i, 1)]).unwrap();
        s.save_hard_state(&hs(i)).unwrap();
        s.sync().unwrap();
    }
    let segs = segment_files(d.path());
    assert!(segs.len() >= 5, "{segs:?}");
    for (i, seg) in segs.iter().enumerate() {
        let recs = records(seg);
        assert!(matches!(recs[0].1, WalRecord::HardState(_)), "segment {i}");
        if i + 1 < segs.len() {
            // A roll happens before a sync once the segment reached the threshold.
            assert!(len(seg) >= SMALL.segment_bytes && len(seg) < 2 * SMALL.segment_bytes);
        }
    }
    let r = FileStorage::open(d.path(), SMALL).unwrap().load().unwrap();
    assert_eq!(r.entries, run(1, 30, 1));
    assert_eq!(r.hard_state, hs(30));
}

#[test]
fn a_segment_whose_head_was_torn_off_is_not_appended_to() {
    let (d, segs) = entries_in_small_segments(12);
    let last = segs.last().unwrap();
    let n_last = records(last)
        .iter()
        .filter(|(_, r)| matches!(r, WalRecord::Entry(_)))
        .count() as u64;
    fs::write(last, &fs::read(last).unwrap()[..10]).unwrap();
    let mut s = open_small(d.path());
    let kept = 12 - n_last;
    assert_eq!(s.load().unwrap().entries, run(1, kept, 1));
    s.append(&[e(kept + 1, 2)]).unwrap();
    s.sync().unwrap();
    let now = segment_files(d.path());
    assert_eq!(now.len(), segs.len() + 1, "a new segment with a full head");
    assert_eq!(len(last), 0);
    assert!(matches!(
        records(now.last().unwrap())[0].1,
        WalRecord::HardState(_)
    ));
    let mut want = run(1, kept, 1);
    want.push(e(kept + 1, 2));
    assert_eq!(reload(d.path()).entries, want);
}

#[test]
fn a_snapshot_round_trips_and_a_damaged_one_is_an_error() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 10, 1)).unwrap();
    s.sync().unwrap();
    let sn = StoredSnapshot {
        meta: SnapshotMeta { index: 6, epoch: 1 },
        bytes: (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
    };
    s.save_snapshot(&sn, false).unwrap();
    drop(s); // durable without a sync
    let r = reload(d.path());
    assert_eq!(r.snapshot.as_ref(), Some(&sn));
    assert_eq!(r.entries, run(7, 10, 1));

    let path = &snapshot_files(d.path())[0];
    assert!(path.ends_with("snapshot/00000000000000000006.snap"));
    let mut bytes = fs::read(path).unwrap();
    bytes[5000] ^= 1;
    fs::write(path, &bytes).unwrap();
    let msg = err_text(FileStorage::open(d.path(), FileOptions::default()));
    assert!(msg.contains("00000000000000000006.snap"), "{msg}");
    bytes[5000] ^= 1;
    bytes[0] = b'X';
    fs::write(path, &bytes).unwrap();
    let msg = err_text(FileStorage::open(d.path(), FileOptions::default()));
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn temporary_files_are_removed_on_open_and_never_read() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 2, 1)).unwrap();
    s.sync().unwrap();
    drop(s);
    let junk = [
        d.path().join("snapshot/00000000000000000009.snap.tmp"),
        d.path().join("wal/00000000000000000002.seg.tmp"),
    ];
    for j in &junk {
        fs::write(j, b"half written garbage").unwrap();
    }
    let r = reload(d.path());
    assert_eq!((r.entries, r.snapshot), (run(1, 2, 1), None));
    assert!(junk.iter().all(|j| !j.exists()));
}

#[test]
fn an_installed_snapshot_replaces_the_log() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 10, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&snap(50, 3), true).unwrap();
    s.append(&run(51, 52, 3)).unwrap();
    s.save_hard_state(&hs(3)).unwrap();
    s.sync().unwrap();
    let r = reload(d.path());
    assert_eq!(r.snapshot, Some(snap(50, 3)));
    assert_eq!(r.entries, run(51, 52, 3));
    assert_eq!(r.hard_state, hs(3));
    let segs = segment_files(d.path());
    assert_eq!(segs.len(), 2, "the reset starts a segment");
    let head: Vec<_> = records(&segs[1])
        .into_iter()
        .map(|(_, r)| r)
        .take(2)
        .collect();
    assert_eq!(
        head,
        vec![
            WalRecord::HardState(hs(3)),
            WalRecord::LogReset {
                index: 50,
                epoch: 3
            }
        ]
    );
    s.compact().unwrap();
    assert_eq!(segment_files(d.path()).len(), 1);
    assert_eq!(reload(d.path()), r);
}

#[test]
fn a_crash_between_installing_a_snapshot_and_the_sync_is_finished_on_restart() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 10, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&snap(50, 3), true).unwrap();
    s.append(&run(51, 52, 3)).unwrap();
    drop(s); // crash before the sync: the snapshot is durable, the reset is not
    let mut s = open(d.path());
    let r = s.load().unwrap();
    assert_eq!(r.snapshot, Some(snap(50, 3)));
    assert!(
        r.entries.is_empty(),
        "the old log does not continue the snapshot"
    );
    // The node goes on after the snapshot; those entries must stick.
    s.append(&run(51, 51, 3)).unwrap();
    s.sync().unwrap();
    assert_eq!(reload(d.path()).entries, run(51, 51, 3));

    // When the old log holds the snapshot's entry, it continues it (nothing to finish).
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 10, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&snap(8, 1), true).unwrap();
    drop(s);
    let r = reload(d.path());
    assert_eq!(r.entries, run(9, 10, 1));
}

#[test]
fn the_reset_position_survives_rolls_and_compaction_of_the_reset_segment() {
    let d = TempDir::new().unwrap();
    // Every sync rolls: the reset's segment holds nothing but its head.
    let tiny = FileOptions {
        segment_bytes: 1,
        ..FileOptions::default()
    };
    let mut s = FileStorage::open(d.path(), tiny).unwrap();
    s.append(&run(1, 5, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&snap(100, 2), true).unwrap();
    s.sync().unwrap();
    for i in 101..=104 {
        s.append(&[e(i, 2)]).unwrap();
        s.sync().unwrap();
    }
    let segs = segment_files(d.path());
    assert_eq!(segs.len(), 6);
    // Later segments repeat the base; replaying them must not drop earlier entries.
    assert_eq!(
        records(&segs[2])[1].1,
        WalRecord::Base {
            index: 100,
            epoch: 2
        }
    );
    let before = FileStorage::open(d.path(), tiny).unwrap().load().unwrap();
    assert_eq!(before.entries, run(101, 104, 2));
    s.compact().unwrap();
    // The old log and the reset's own segment (it holds no entry) are gone.
    assert_eq!(segment_files(d.path()), segs[2..].to_vec());
    let after = FileStorage::open(d.path(), tiny).unwrap().load().unwrap();
    assert_eq!(after, before);
}

#[test]
fn compaction_deletes_old_snapshots_and_covered_segments_but_load_is_unchanged() {
    let d = TempDir::new().unwrap();
    let mut s = open_small(d.path());
    for i in 1..=40 {
        s.append(&[e(i, 1)]).unwrap();
        if i % 10 == 0 {
            s.save_hard_state(&hs(i)).unwrap();
        }
        s.sync().unwrap();
    }
    s.save_snapshot(&snap(10, 1), false).unwrap();
    s.sync().unwrap();
    s.compact().unwrap();
    s.save_snapshot(&snap(30, 1), false).unwrap();
    s.sync().unwrap();
    let before_segs = segment_files(d.path());
    let before = FileStorage::open(d.path(), SMALL).unwrap().load().unwrap();
    s.compact().unwrap();
    let segs = segment_files(d.path());
    assert!(segs.len() < before_segs.len(), "segments deleted");
    assert_eq!(snapshot_files(d.path()).len(), 1);
    let first = records(&segs[0]);
    let lowest = first
        .iter()
        .find_map(|(_, r)| match r {
            WalRecord::Entry(e) => Some(e.index),
            _ => None,
        })
        .unwrap();
    assert!(lowest <= 30, "the entry at the snapshot index stays");
    assert_eq!(s.load().unwrap(), before);
    let after = FileStorage::open(d.path(), SMALL).unwrap().load().unwrap();
    assert_eq!(after, before);
    assert_eq!(after.entries, run(31, 40, 1));
    assert_eq!(after.hard_state, hs(40));
    // And the storage keeps working after compaction.
    s.append(&[e(41, 1)]).unwrap();
    s.sync().unwrap();
    assert_eq!(reload(d.path()).entries, run(31, 41, 1));
}

/// The failure paths: a failed sync leaves the durable bytes as they were and a retry of the
/// same bundle (as the driver does) writes every record once.
fn fails_then_retries(fault: Fault, options: FileOptions, roll: bool) {
    let d = TempDir::new().unwrap();
    let mut s = FileStorage::open(d.path(), options).unwrap();
    let mut before = 0;
    // Some entries; with `roll`, until the active segment is full so the next sync rolls.
    while before < 4
        || roll
            && segment_files(d.path())
                .last()
                .is_some_and(|p| len(p) < options.segment_bytes)
    {
        before += 1;
        s.append(&[e(before, 1)]).unwrap();
        s.sync().unwrap();
    }
    let segs = segment_files(d.path());
    let lens: Vec<u64> = segs.iter().map(|p| len(p)).collect();
    let bundle = run(before + 1, before + 3, 2);
    let write = |s: &mut FileStorage| {
        s.append(&bundle)?;
        s.save_hard_state(&hs(2))?;
        s.sync()
    };
    s.inject(Some(fault));
    let err = write(&mut s).unwrap_err();
    assert!(err.path.is_some(), "{err}");
    let kind = err.source.kind();
    let want = if fault == Fault::FailSync {
        io::ErrorKind::Other
    } else {
        io::ErrorKind::StorageFull
    };
    assert_eq!(kind, want, "{err}");
    assert_eq!(segment_files(d.path()), segs, "no segment added: {err}");
    let now: Vec<u64> = segs.iter().map(|p| len(p)).collect();
    assert_eq!(now, lens, "cut back to the durable length");
    let r = FileStorage::open(d.path(), options)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(r.entries, run(1, before, 1), "nothing of the failed sync");

    write(&mut s).unwrap();
    write(&mut s).unwrap(); // a duplicate bundle after success is harmless too
    let mut want = run(1, before, 1);
    want.extend(bundle.clone());
    let r = FileStorage::open(d.path(), options)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(r.entries, want);
    assert_eq!(r.hard_state, hs(2));
    let written = segment_files(d.path())
        .iter()
        .flat_map(|p| records(p))
        .filter(|(_, r)| matches!(r, WalRecord::Entry(x) if x.index > before))
        .count();
    assert_eq!(written, 3 + 3, "each entry once per successful sync");
}

#[test]
fn a_half_write_on_a_full_disk_is_cut_back_and_retried_once() {
    fails_then_retries(Fault::HalfWrite, FileOptions::default(), false);
}

#[test]
fn a_failed_fsync_is_cut_back_and_retried_once() {
    fails_then_retries(Fault::FailSync, FileOptions::default(), false);
}

#[test]
fn a_failed_roll_leaves_the_old_segments_as_they_were() {
    fails_then_retries(Fault::FailCreate, SMALL, true);
    fails_then_retries(Fault::HalfWrite, SMALL, true);
    fails_then_retries(Fault::FailSync, SMALL, true);
}

#[test]
fn a_failed_reset_sync_keeps_the_reset_for_the_retry() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    s.append(&run(1, 5, 1)).unwrap();
    s.sync().unwrap();
    s.save_snapshot(&snap(20, 2), true).unwrap();
    s.append(&run(21, 22, 2)).unwrap();
    s.inject(Some(Fault::FailCreate));
    assert!(s.sync().is_err());
    assert_eq!(segment_files(d.path()).len(), 1);
    s.sync().unwrap();
    let r = reload(d.path());
    assert_eq!((r.snapshot, r.entries), (Some(snap(20, 2)), run(21, 22, 2)));
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        n: u64,
        new_epoch: bool,
        text: usize,
    },
    Truncate {
        back: u64,
    },
    HardState(u64),
    Sync,
    FailedSync(u8),
    Snapshot {
        back: u64,
    },
    Install {
        ahead: u64,
        crash: bool,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..5, any::<bool>(), 0usize..120)
            .prop_map(|(n, new_epoch, text)| Op::Append { n, new_epoch, text }),
        2 => (1u64..6).prop_map(|back| Op::Truncate { back }),
        2 => (0u64..50).prop_map(Op::HardState),
        5 => Just(Op::Sync),
        1 => (0u8..3).prop_map(Op::FailedSync),
        1 => (0u64..6).prop_map(|back| Op::Snapshot { back }),
        1 => (0u64..4, any::<bool>()).prop_map(|(ahead, crash)| Op::Install { ahead, crash }),
        2 => Just(Op::Crash),
    ]
}

/// The node's view in the model: the snapshot and the entries after it.
#[derive(Default)]
struct View {
    snap: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    epoch: u64,
}

impl View {
    fn next(&self) -> LogIndex {
        match (self.entries.last(), self.snap) {
            (Some(e), _) => e.index + 1,
            (None, Some(s)) => s.index + 1,
            (None, None) => 1,
        }
    }

    fn from(r: &Recovered, epoch: u64) -> View {
        View {
            snap: r.snapshot.as_ref().map(|s| s.meta),
            entries: r.entries.clone(),
            epoch,
        }
    }
}

/// Where the model check runs: a disk, its data directory, and what a crash does to it.
struct Machine<D: Disk> {
    disk: D,
    dir: PathBuf,
    /// Takes the disk through a crash (the process dies; for a simulated disk the power goes).
    crash: fn(&D),
}

const MODEL_OPTIONS: FileOptions = FileOptions {
    segment_bytes: 400,
    background_snapshots: true,
};

/// Restarts both stores after a crash, checks they recover the same, and returns the view.
fn restart<D: Disk>(
    m: &Machine<D>,
    file: &mut FileStorage<D>,
    mem: &mut MemStorage,
    epoch: u64,
) -> View {
    mem.crash();
    // The model stores snapshots durably at once: crash after a background write is done.
    file.finish_writing();
    (m.crash)(&m.disk);
    *file = FileStorage::open_on(m.disk.clone(), &m.dir, MODEL_OPTIONS).unwrap();
    let rf = file.load().unwrap();
    let rm = mem.load().unwrap();
    assert_eq!(rf, rm, "after a restart");
    if let (Some(s), true) = (&rm.snapshot, rm.entries.is_empty()) {
        // FileStorage finishes an interrupted install (the log not continuing the snapshot)
        // by itself; the model is told to, so entries after the snapshot stick in both.
        mem.save_snapshot(s, true).unwrap();
        mem.sync().unwrap();
    }
    View::from(&rf, epoch)
}

fn check_against_mem_storage<D: Disk>(ops: &[Op], m: &Machine<D>) {
    let mut file = FileStorage::open_on(m.disk.clone(), &m.dir, MODEL_OPTIONS).unwrap();
    let mut mem = MemStorage::new();
    let mut view = View {
        epoch: 1,
        ..View::default()
    };
    for op in ops {
        match *op {
            Op::Append { n, new_epoch, text } => {
                if new_epoch {
                    view.epoch += 1;
                }
                let from = view.next();
                let batch: Vec<Entry> = (from..from + n)
                    .map(|i| say(i, view.epoch, &"x".repeat(text)))
                    .collect();
                file.append(&batch).unwrap();
                mem.append(&batch).unwrap();
                view.entries.extend(batch);
            }
            Op::Truncate { back } => {
                let floor = view.snap.map_or(1, |s| s.index + 1);
                let Some(from) = view.next().checked_sub(back).filter(|&f| f >= floor) else {
                    continue;
                };
                file.truncate(from).unwrap();
                mem.truncate(from).unwrap();
                view.entries.retain(|e| e.index < from);
            }
            Op::HardState(epoch) => {
                file.save_hard_state(&hs(epoch)).unwrap();
                mem.save_hard_state(&hs(epoch)).unwrap();
            }
            Op::Sync => {
                file.sync().unwrap();
                mem.sync().unwrap();
                assert_eq!(file.load().unwrap(), mem.load().unwrap(), "after a sync");
            }
            Op::FailedSync(k) => {
                let fault = [Fault::HalfWrite, Fault::FailSync, Fault::FailCreate][k as usize];
                file.inject(Some(fault));
                if file.sync().is_err() {
                    mem.set_failing(true);
                    assert!(mem.sync().is_err());
                    mem.set_failing(false);
                } else {
                    file.inject(None); // nothing to write, or no roll to fail
                    mem.sync().unwrap();
                }
            }
            Op::Snapshot { back } => {
                let Some(at) = view
                    .entries
                    .len()
                    .checked_sub(1 + back as usize)
                    .map(|i| view.entries[i].clone())
                else {
                    continue;
                };
                let s = snap(at.index, at.epoch);
                for st in [&mut file as &mut dyn Storage, &mut mem] {
                    st.save_snapshot(&s, false).unwrap();
                    st.sync().unwrap();
                    st.compact().unwrap();
                }
                view.snap = Some(s.meta);
                view.entries.retain(|e| e.index > at.index);
            }
            Op::Install { ahead, crash } => {
                view.epoch += 1;
                let s = snap(view.next() - 1 + ahead, view.epoch);
                file.save_snapshot(&s, true).unwrap();
                mem.save_snapshot(&s, true).unwrap();
                if crash {
                    view = restart(m, &mut file, &mut mem, view.epoch);
                    continue;
                }
                for st in [&mut file as &mut dyn Storage, &mut mem] {
                    st.sync().unwrap();
                    st.compact().unwrap();
                }
                view.snap = Some(s.meta);
                view.entries.clear();
            }
            Op::Crash => view = restart(m, &mut file, &mut mem, view.epoch),
        }
    }
    file.sync().unwrap();
    mem.sync().unwrap();
    restart(m, &mut file, &mut mem, view.epoch);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn behaves_like_mem_storage_through_crashes(ops in proptest::collection::vec(op(), 1..60)) {
        let d = TempDir::new().unwrap();
        // A crash of the process: the OS keeps what was written.
        let m = Machine { disk: OsDisk, dir: d.path().to_path_buf(), crash: |_| {} };
        check_against_mem_storage(&ops, &m);
    }

    #[test]
    fn behaves_like_mem_storage_through_power_losses(
        ops in proptest::collection::vec(op(), 1..60),
        seed in any::<u64>(),
    ) {
        // A crash of the machine: only what was synced, and synced into its directory, stays.
        let m = Machine { disk: SimDisk::new(seed), dir: "/data/node".into(), crash: SimDisk::crash };
        check_against_mem_storage(&ops, &m);
    }
}

/// Appends a million chat-sized entries (1000 per sync), then times a restart.
/// Run: `cargo test --release --lib -- --ignored --nocapture restart_with_a_million_entries`
#[test]
#[ignore]
fn restart_with_a_million_entries() {
    let d = TempDir::new().unwrap();
    let mut s = open(d.path());
    let text = "hello everyone, this is a chat message!!";
    let started = std::time::Instant::now();
    for b in 0..1000u64 {
        let batch: Vec<Entry> = (b * 1000 + 1..=b * 1000 + 1000)
            .map(|i| say(i, 1, text))
            .collect();
        s.append(&batch).unwrap();
        s.save_hard_state(&hs(1)).unwrap();
        s.sync().unwrap();
    }
    let wrote = started.elapsed();
    drop(s);
    let bytes: u64 = segment_files(d.path()).iter().map(|p| len(p)).sum();
    let started = std::time::Instant::now();
    let mut s = open(d.path());
    let r = s.load().unwrap();
    let took = started.elapsed();
    assert_eq!(r.entries.len(), 1_000_000);
    assert_eq!(r.entries.last().map(|e| e.index), Some(1_000_000));
    println!(
        "wrote 1M entries ({} MB, 1000 syncs) in {wrote:?}; open+load took {took:?}",
        bytes / 1_000_000
    );
}
