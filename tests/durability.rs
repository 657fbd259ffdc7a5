//! One real `ringchatd` and its data directory: a restart keeps history and numbering, a
//! corrupt log stops the node with the file and offset, and a full disk (a file size limit,
//! RLIMIT_FSIZE) stops writes with a clear error until space returns, losing nothing.

mod support;

use std::time::Duration;

use ringchat::client::Client;
use ringchat::codec::{ChatMessage, ErrorCode};
use support::history::read_history;
use support::{client, eventually, Daemon};

const ROOM: &str = "durable";

/// Joins `ROOM` and says `n` numbered messages; returns their acked seqs.
fn say_n(c: &mut Client, tag: &str, n: usize) -> Vec<u64> {
    c.join(ROOM).expect("join");
    (0..n)
        .map(|i| c.say(ROOM, &format!("{tag} {i}")).expect("say").seq)
        .collect()
}

fn history(d: &Daemon) -> Vec<ChatMessage> {
    let mut c = client(d, "reader").expect("connect");
    read_history(&mut c, ROOM).expect("history")
}

#[test]
fn a_node_killed_and_restarted_keeps_its_history_and_numbering() {
    let d = Daemon::start(&[]);
    let mut c = client(&d, "alice").expect("connect");
    let seqs = say_n(&mut c, "before", 50);
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    drop(c);
    let before = history(&d);
    let d = Daemon::start_in(d.kill_keep_dir(), &[], None);
    assert_eq!(
        history(&d),
        before,
        "history changed across kill -9 and restart"
    );
    let mut c = client(&d, "alice").expect("connect");
    assert_eq!(say_n(&mut c, "after", 1), vec![51], "numbering restarted");
}

#[test]
fn a_snapshot_and_compaction_survive_a_restart() {
    let flags = ["--snapshot-entries", "40"];
    let d = Daemon::start(&flags);
    let mut c = client(&d, "alice").expect("connect");
    say_n(&mut c, "m", 150);
    drop(c);
    let before = history(&d);
    assert_eq!(before.len(), 150);
    let dir = d.kill_keep_dir();
    let snapshots = std::fs::read_dir(dir.path().join("data/snapshot"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(snapshots, 1, "one snapshot file kept after compaction");
    let d = Daemon::start_in(dir, &flags, None);
    assert_eq!(history(&d), before);
    assert!(d.log().contains("snapshot at index"), "{}", d.log());
}

#[test]
fn a_corrupt_log_stops_the_node_naming_the_file_and_offset() {
    let d = Daemon::start(&[]);
    let mut c = client(&d, "alice").expect("connect");
    say_n(&mut c, "m", 20);
    drop(c);
    let dir = d.kill_keep_dir();
    let wal = dir.path().join("data/wal");
    let seg = std::fs::read_dir(&wal)
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&seg, &bytes).expect("write segment");

    let log_path = dir.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringchatd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn");
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            status = child.try_wait().expect("wait");
            status.is_some()
        }),
        "a node with a corrupt log kept running"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let file = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&file) && log.contains("offset"),
        "the error names neither the file nor the offset:\n{log}"
    );
}

#[test]
fn a_full_disk_stops_writes_with_a_clear_error_and_they_resume_when_space_returns() {
    // Room for the first writes only: past 64 KiB the segment cannot grow.
    let d = Daemon::start_in(tempfile::tempdir().unwrap(), &[], Some(64 * 1024));
    let mut c = client(&d, "alice").expect("connect");
    c.join(ROOM).expect("join");
    let text = "x".repeat(200);
    let mut acked = Vec::new();
    let refusal = loop {
        match c.say(ROOM, &text) {
            Ok(a) => acked.push(a.seq),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "the file size limit never hit");
    };
    assert_eq!(
        refusal.code(),
        Some(ErrorCode::StorageFailed),
        "unexpected error: {refusal}"
    );
    assert!(!acked.is_empty());
    assert!(d.log().contains("storage failed"), "{}", d.log());

    // Space returns: lift the limit of the running daemon.
    let pid = d.pid() as i32;
    let (_, hard) = rlimit::Resource::FSIZE.get().expect("getrlimit");
    rlimit::prlimit(pid, rlimit::Resource::FSIZE, Some((hard, hard)), None).expect("prlimit");
    let mut resumed = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            let Ok(mut c) = client(&d, "bob") else {
                return false;
            };
            resumed = c.join(ROOM).and_then(|_| c.say(ROOM, "back")).ok();
            resumed.is_some()
        }),
        "writes did not resume once the disk had space\n{}",
        d.log()
    );
    assert!(d.log().contains("storage works again"), "{}", d.log());

    // Nothing acknowledged was lost or doubled, before or after a restart.
    let check = |h: &[ChatMessage]| {
        let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=h.len() as u64).collect::<Vec<_>>());
        for s in &acked {
            assert_eq!(h[*s as usize - 1].text, text, "acked #{s} changed");
        }
        assert_eq!(h.last().map(|m| m.text.as_str()), Some("back"));
    };
    check(&history(&d));
    let d = Daemon::start_in(d.kill_keep_dir(), &[], None);
    check(&history(&d));
}
