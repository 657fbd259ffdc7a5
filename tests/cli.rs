//! The `ringchat` binary against a real daemon: scriptable send, history, JSON, errors, and the
//! interactive mode fed through stdin.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::Daemon;

fn ringchat(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["-s", &d.addr, "--no-reconnect", "--timeout", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringchat")
}

#[test]
fn send_waits_for_the_ack_and_history_json_prints_every_field() {
    let d = Daemon::start(&[]);
    for text in ["first", "second"] {
        let out = ringchat(&d, &["ivy", "general", "--send", text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = ringchat(&d, &["jack", "general", "--history", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, (v, text)) in lines.iter().zip(["first", "second"]).enumerate() {
        assert_eq!(v["room"], "general");
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["author"], "ivy");
        assert_eq!(v["text"], text);
        assert!(v["time_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
}

#[test]
fn errors_go_to_stderr_with_a_non_zero_exit() {
    let d = Daemon::start(&[]);
    let out = ringchat(&d, &["bad name", "general", "--send", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("username"));

    let out = ringchat(&d, &["kim", "general", "--send", "   "]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_TEXT"));

    // A third device: two followers hold kim's slots. Each prints the room's history once it
    // has joined, so the probe starts only after both hold their slot.
    assert!(ringchat(&d, &["liz", "general", "--send", "seed"])
        .status
        .success());
    let mut followers = Vec::new();
    for _ in 0..2 {
        let mut f = Command::new(env!("CARGO_BIN_EXE_ringchat"))
            .args([
                "-s",
                &d.addr,
                "--no-reconnect",
                "--json",
                "kim",
                "general",
                "--follow",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = f.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("follower printed nothing");
        assert!(line.unwrap().contains("seed"));
        followers.push(f);
    }
    let out = ringchat(&d, &["kim", "general", "--send", "third"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVICE_LIMIT"));
    for mut f in followers {
        let _ = f.kill();
        let _ = f.wait();
    }

    let stopped = Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args([
            "-s",
            "127.0.0.1:1",
            "--no-reconnect",
            "--timeout",
            "2",
            "kim",
            "g",
            "--send",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(
        stopped.status.code(),
        Some(3),
        "no server must be exit code 3"
    );
}

#[test]
fn admin_leave_takes_one_address_and_the_last_member_cannot_leave() {
    let d = Daemon::start(&[]);
    let two = format!("{},{}", d.addr, d.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["-s", &two, "admin", "leave"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one server"));

    let out = ringchat(&d, &["admin", "leave"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
}

#[test]
fn interactive_mode_shows_history_sends_lines_and_runs_commands() {
    let d = Daemon::start(&[]);
    assert!(ringchat(&d, &["lee", "lobby", "--send", "before"])
        .status
        .success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["-s", &d.addr, "--no-reconnect", "mia", "lobby"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"hello from mia\n/who\n/join other\nin other\n/quit\n")
        .unwrap();
    drop(stdin);
    let out = wait_output(child, Duration::from_secs(15));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lee: before"), "history missing:\n{stdout}");
    assert!(
        stdout.contains("mia: hello from mia"),
        "own message not echoed:\n{stdout}"
    );
    assert!(
        stdout.contains("[other] mia: in other"),
        "/join did not switch rooms:\n{stdout}"
    );
    let page = ringchat(&d, &["lee", "lobby", "--history", "--json"]);
    assert!(String::from_utf8_lossy(&page.stdout).contains("hello from mia"));
}

fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!(
        "ringchat did not exit within {limit:?}: {:?}",
        child.wait_with_output().unwrap()
    );
}
