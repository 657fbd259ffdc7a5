//! The real `ringchat-load` binary against a real `ringchatd` (closed, open and idle
//! scenarios), against a server that does not speak ringchat, and against a `redis-server`
//! (`--target redis`). Every run of the tool, and every wait, is bounded; the only processes
//! killed are those started here, by PID.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{free_ports, Daemon};

/// Longest any one run of the tool may take before the test kills it and fails.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// A child process killed (by its PID) and reaped when dropped, so a failing assertion does not
/// leave it running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one run of the tool produced.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The single JSON object `--json` prints on stdout.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// For assertion messages.
    fn show(&self) -> String {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `ringchat-load ARGS`, killing it (by PID) and failing if it takes longer than `limit`.
fn run_tool(args: &[&str], limit: Duration) -> Outcome {
    let child = Command::new(env!("CARGO_BIN_EXE_ringchat-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringchat-load");
    let mut child = Reaped(child);
    // Drain both pipes in threads so a chatty run cannot block on a full pipe.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.0.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.0.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            panic!(
                "ringchat-load {args:?} still running after {limit:?}; killed. stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `ringchat-load ARGS --server SERVER [--pid PID] --timeout-secs 20 --json`.
fn run_scenario(args: &[&str], server: &str, pid: Option<u32>) -> Outcome {
    let pid = pid.map(|p| p.to_string());
    let mut all = args.to_vec();
    all.extend(["--server", server, "--timeout-secs", "20", "--json"]);
    if let Some(p) = &pid {
        all.extend(["--pid", p]);
    }
    run_tool(&all, TOOL_LIMIT)
}

/// `v[key]` as an unsigned integer, failing with the whole report otherwise.
fn uint(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

/// Asserts the delivery checks of a chat report: nothing lost, duplicated, out of order,
/// foreign, refused or failed, and the run clean and complete.
fn assert_clean_chat(v: &Value) {
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "foreign",
        "errors",
        "connection_failures",
        "rejected",
        "unsent",
        "unacked",
    ] {
        assert_eq!(uint(v, key), 0, "{key} in {v}");
    }
    assert_eq!(v["outcome"], "complete", "{v}");
    assert_eq!(v["clean"], true, "{v}");
}

/// Closed loop on ringchatd: every member gets each room message once, in order; daemon CPU shown.
#[test]
fn closed_loop_against_ringchatd_delivers_everything_once_in_order() {
    const ROOMS: u64 = 2;
    const MEMBERS: u64 = 4;
    const MESSAGES: u64 = 30;
    let d = Daemon::start(&["--storage", "memory"]);
    let out = run_scenario(
        &[
            "closed",
            "--rooms",
            &ROOMS.to_string(),
            "--members",
            &MEMBERS.to_string(),
            "--messages",
            &MESSAGES.to_string(),
        ],
        &d.addr,
        Some(d.pid()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.show());
    let v = out.json();
    assert_eq!(v["mode"], "closed", "{v}");
    assert_eq!(v["target"], "ringchat", "{v}");
    assert_eq!(uint(&v, "joined"), ROOMS * MEMBERS, "{v}");
    assert_eq!(uint(&v, "sent"), ROOMS * MEMBERS * MESSAGES, "{v}");
    assert_eq!(uint(&v, "acked"), ROOMS * MEMBERS * MESSAGES, "{v}");
    // Each of a room's members receives each of the room's MEMBERS * MESSAGES messages.
    let want = ROOMS * MEMBERS * MEMBERS * MESSAGES;
    assert_eq!(uint(&v, "expected_deliveries"), want, "{v}");
    assert_eq!(uint(&v, "deliveries"), want, "{v}");
    assert_eq!(uint(&v, "unique_deliveries"), want, "{v}");
    assert_clean_chat(&v);
    let cpu = v["daemon_cpu_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("daemon_cpu_s missing though --pid was given: {v}"));
    assert!(cpu >= 0.0, "{v}");
    assert!(
        v["daemon_cpu_us_per_delivery"].as_f64().is_some(),
        "daemon_cpu_us_per_delivery missing: {v}"
    );
    // The daemon waited in its poll for the members' messages, so it slept at least once.
    assert!(uint(&v, "daemon_poll_sleeps") > 0, "{v}");
    assert!(v["daemon_page_faults"].as_u64().is_some(), "{v}");
}

/// A short open-loop run on a real daemon sends the whole schedule and loses nothing.
#[test]
fn open_loop_against_ringchatd_sends_the_schedule_and_loses_nothing() {
    const MEMBERS: u64 = 5;
    const PLANNED: u64 = 200; // --rate 200 for --duration 1
    let d = Daemon::start(&["--storage", "memory"]);
    let out = run_scenario(
        &[
            "open",
            "--rooms",
            "1",
            "--members",
            &MEMBERS.to_string(),
            "--rate",
            "200",
            "--duration",
            "1",
            "--drain-secs",
            "5",
        ],
        &d.addr,
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.show());
    let v = out.json();
    assert_eq!(v["mode"], "open", "{v}");
    let sent = uint(&v, "sent");
    assert!(sent > 0, "{v}");
    assert_eq!(sent, PLANNED, "{v}");
    assert_eq!(uint(&v, "expected_deliveries"), MEMBERS * PLANNED, "{v}");
    assert_eq!(uint(&v, "unique_deliveries"), MEMBERS * PLANNED, "{v}");
    assert_clean_chat(&v);
}

/// Idle mode opens and joins every connection and reports a positive RSS growth per connection.
#[test]
fn idle_reports_a_positive_rss_growth_per_connection() {
    const CONNECTIONS: u64 = 200;
    let d = Daemon::start(&["--storage", "memory"]);
    let out = run_scenario(
        &[
            "idle",
            "--connections",
            &CONNECTIONS.to_string(),
            "--rooms",
            "10",
            "--hold-secs",
            "0.2",
            "--settle-secs",
            "0.3",
        ],
        &d.addr,
        Some(d.pid()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.show());
    let v = out.json();
    assert_eq!(v["mode"], "idle", "{v}");
    assert_eq!(v["outcome"], "complete", "{v}");
    assert_eq!(uint(&v, "joined"), CONNECTIONS, "{v}");
    assert_eq!(uint(&v, "still_open_after_hold"), CONNECTIONS, "{v}");
    assert_eq!(uint(&v, "failed"), 0, "{v}");
    assert_eq!(uint(&v, "errors"), 0, "{v}");
    let per = v["rss_growth_per_connection_bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("rss_growth_per_connection_bytes missing: {v}"));
    assert!(per > 0.0, "RSS growth per connection not positive: {v}");
}

/// At least a frame header's 16 bytes, not starting with the "RC" magic.
const GARBAGE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";

/// A TCP server that answers every connection with `reply`, then closes it (`close`) or keeps
/// it open (so the tool reads the bytes rather than a reset) until stopped or 30 s have passed.
struct GarbageServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl GarbageServer {
    fn start(reply: &'static [u8], close: bool) -> GarbageServer {
        // A port free_ports found can be taken by another process before we bind it: retry
        // (bounded) with another one.
        let (port, listener) = (0..5)
            .find_map(|_| {
                let port = free_ports(1)[0];
                TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|l| (port, l))
            })
            .expect("bind the garbage server on a free port (5 tries)");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut held: Vec<TcpStream> = Vec::new();
            let mut accepted = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) if accepted < 64 => {
                        accepted += 1;
                        let _ = s.write_all(reply);
                        if !close {
                            held.push(s);
                        }
                    }
                    Ok(_) => {} // Past the cap: dropped unanswered.
                    Err(_) => sleep(Duration::from_millis(5)),
                }
            }
            accepted
        });
        GarbageServer {
            addr: format!("127.0.0.1:{port}"),
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server; returns how many connections it answered.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a 2-member closed loop against `server` with a 20 s timeout and the `extra` flags;
/// returns the outcome and how long it took.
fn closed_loop_against(server: &GarbageServer, extra: &[&str]) -> (Outcome, Duration) {
    let started = Instant::now();
    let mut args = vec![
        "closed",
        "--rooms",
        "1",
        "--members",
        "2",
        "--messages",
        "5",
        "--stall-secs",
        "2",
    ];
    args.extend(extra);
    let out = run_scenario(&args, &server.addr, None);
    (out, started.elapsed())
}

/// Against a non-ringchat server, closed fails fast with status 2 (it could not run) and says
/// "undecodable".
#[test]
fn closed_loop_against_a_non_ringchat_server_fails_and_says_why() {
    let server = GarbageServer::start(GARBAGE, false);
    let (out, took) = closed_loop_against(&server, &[]);
    let answered = server.stop();
    assert_eq!(out.status.code(), Some(2), "{}", out.show());
    // The tool gives up on undecodable bytes at once, not at its 20 s timeout.
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}\n{}",
        out.show()
    );
    assert_eq!(answered, 2, "connections answered\n{}", out.show());
    assert!(
        out.stderr.contains("undecodable") || out.stdout.contains("undecodable"),
        "no reason given\n{}",
        out.show()
    );
    let v = out.json();
    assert_eq!(v["clean"], false, "{v}");
    assert_eq!(v["outcome"], "no member joined", "{v}");
    assert_eq!(uint(&v, "joined"), 0, "{v}");
    assert_eq!(uint(&v, "connection_failures"), 2, "{v}");
}

/// A server that sends the start of a frame and closes at once: the tool sees each close
/// although the bytes and the close came in one readiness event (it reads to the end then).
#[test]
fn a_close_right_after_a_partial_frame_is_seen_at_once() {
    let server = GarbageServer::start(b"RC\x01", true);
    let (out, took) = closed_loop_against(&server, &[]);
    assert_eq!(server.stop(), 2, "connections answered\n{}", out.show());
    assert_eq!(out.status.code(), Some(2), "{}", out.show());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: the closes went unseen until the timeout\n{}",
        out.show()
    );
    let v = out.json();
    assert_eq!(v["outcome"], "no member joined", "{v}");
    assert_eq!(uint(&v, "connection_failures"), 2, "{v}");
}

/// A server that accepts and never answers: joining gives up after --join-stall-secs, not at
/// the 20 s timeout.
#[test]
fn a_server_that_never_answers_is_given_up_on_after_the_join_stall_limit() {
    let server = GarbageServer::start(b"", false);
    let (out, took) = closed_loop_against(&server, &["--join-stall-secs", "1"]);
    assert_eq!(server.stop(), 2, "connections answered\n{}", out.show());
    assert_eq!(out.status.code(), Some(2), "{}", out.show());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}\n{}",
        out.show()
    );
    let v = out.json();
    assert_eq!(
        v["outcome"], "stalled while joining (no handshake finished for --join-stall-secs)",
        "{v}"
    );
    assert_eq!(uint(&v, "joined"), 0, "{v}");
}

/// Whether `name` is an executable file in a directory of PATH.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(name);
            p.is_file() && is_executable(&p)
        })
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `--target redis`: a small closed run on our own redis-server is clean (required when CI is set).
#[test]
fn closed_loop_against_redis_is_clean() {
    const MEMBERS: u64 = 3;
    const MESSAGES: u64 = 20;
    if !on_path("redis-server") {
        if std::env::var_os("CI").is_some() {
            panic!(
                "redis-server is not on PATH, and CI is set: CI must install it \
                 (.ci/run, system packages) for the --target redis test"
            );
        }
        eprintln!("SKIPPED closed_loop_against_redis_is_clean: redis-server is not on PATH");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("redis.log");
    let redis_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // A port free_ports found can be taken by another process before redis-server binds it
    // (redis-server then exits): retry (bounded) with another one.
    let (mut redis, addr) = (0..3)
        .find_map(|_| start_redis(free_ports(1)[0], &log_path))
        .unwrap_or_else(|| {
            panic!(
                "redis-server did not come up (3 tries); log:\n{}",
                redis_log()
            )
        });
    let out = run_scenario(
        &[
            "closed",
            "--target",
            "redis",
            "--rooms",
            "1",
            "--members",
            &MEMBERS.to_string(),
            "--messages",
            &MESSAGES.to_string(),
        ],
        &addr,
        Some(redis.0.id()),
    );
    // Kill redis-server (by PID) before asserting; Reaped would do it on a panic too.
    let _ = redis.0.kill();
    let _ = redis.0.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nredis log:\n{}",
        out.show(),
        redis_log()
    );
    let v = out.json();
    assert_eq!(v["target"], "redis", "{v}");
    assert_eq!(uint(&v, "sent"), MEMBERS * MESSAGES, "{v}");
    assert_eq!(uint(&v, "acked"), MEMBERS * MESSAGES, "{v}");
    assert_eq!(
        uint(&v, "unique_deliveries"),
        MEMBERS * MEMBERS * MESSAGES,
        "{v}"
    );
    assert_clean_chat(&v);
}

/// Starts `redis-server` on 127.0.0.1:`port` (no persistence, log appended to `log`, working
/// directory beside it) and waits (bounded) until it answers PING; `None` if it exited or did
/// not answer in 10 s (then it is killed by PID).
fn start_redis(port: u16, log: &Path) -> Option<(Reaped, String)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("redis log");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(log.parent().expect("log directory"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("redis log"))
        .stderr(file)
        .spawn()
        .expect("spawn redis-server");
    let mut redis = Reaped(child);
    let addr = format!("127.0.0.1:{port}");
    let mut exited = false;
    let up = support::eventually(Duration::from_secs(10), || {
        exited = !matches!(redis.0.try_wait(), Ok(None));
        exited || redis_answers_ping(&addr)
    });
    (up && !exited).then_some((redis, addr))
}

/// Whether a Redis server at `addr` answers PING with PONG within a second.
fn redis_answers_ping(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
