//! Shared helpers for tests that run the real `ringchatd`: free ports, bounded waits, and
//! cleanup that kills only the daemon this test started, by PID.
#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Lowest port [`free_ports`] hands out.
const FIXED_PORTS_FROM: u32 = 10_000;

/// `n` distinct ports free on 127.0.0.1, below the kernel's ephemeral range: a `127.0.0.1:0`
/// bind or an outgoing connection of a test running in parallel never takes one between this
/// check and the daemon's own bind (a port picked by binding port 0 and releasing it can be).
/// Each process scans from its own starting point, so parallel test binaries seldom meet.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Linux's default range starts at 32768; a machine configured lower gets a smaller span.
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FIXED_PORTS_FROM).max(1_000);
    let start = std::process::id().wrapping_mul(7_919) % span;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIXED_PORTS_FROM + (start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("fewer than {n} free ports from {FIXED_PORTS_FROM} to {ephemeral}");
}

/// A `ringchatd` child process listening on a free 127.0.0.1 port.
pub struct Daemon {
    child: Child,
    /// The client address it listens on, e.g. "127.0.0.1:40123".
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with `--listen 127.0.0.1:0` plus `extra` flags and waits (bounded)
    /// until it reports its bound address.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_in(tempfile::tempdir().expect("tempdir"), extra, None)
    }

    /// Like [`Daemon::start`] in `dir` (its data directory is `dir/data`, kept across runs),
    /// optionally with a file size limit (RLIMIT_FSIZE, soft; the hard limit stays) in bytes.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str], max_file_size: Option<u64>) -> Daemon {
        let port_file = dir.path().join("addr");
        let _ = std::fs::remove_file(&port_file);
        let data = dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("daemon.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringchatd"));
        cmd.args(["--listen", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(limit) = max_file_size {
            use std::os::unix::process::CommandExt;
            let (_, hard) = rlimit::Resource::FSIZE.get().expect("getrlimit");
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::Resource::FSIZE.set(limit, hard));
            }
        }
        let child = cmd.spawn().expect("spawn ringchatd");
        let mut d = Daemon {
            child,
            addr: String::new(),
            dir,
        };
        d.addr = wait_for_file(&port_file, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("daemon did not start; log:\n{}", d.log()));
        d
    }

    /// Kills the daemon (SIGKILL, by PID) and hands back its directory for another run.
    pub fn kill_keep_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        drop(self);
        dir
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Sends SIGTERM to this daemon (by PID).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "kill -TERM failed"
        );
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            sleep(Duration::from_millis(10));
        }
        None
    }

    /// The temp dir holding this daemon's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for_file(path: &PathBuf, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return Some(s.to_owned());
            }
        }
        sleep(Duration::from_millis(10));
    }
    None
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 100 ms until it gives a value or `limit` passes.
pub fn eventually_ok<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(100));
    }
}

/// A client of `d` with reconnection off, so a failure shows up instead of being retried.
pub fn client(
    d: &Daemon,
    user: &str,
) -> Result<ringchat::client::Client, ringchat::client::ClientError> {
    let mut cfg = ringchat::client::ClientConfig::new(vec![d.addr.clone()], user);
    cfg.reconnect = false;
    cfg.request_timeout = Duration::from_secs(10);
    ringchat::client::Client::connect(cfg)
}

/// Collects `n` chat messages from `c` (skipping other events), bounded by `limit`.
pub fn collect_messages(
    c: &mut ringchat::client::Client,
    n: usize,
    limit: Duration,
) -> Vec<ringchat::codec::ChatMessage> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        match c.next_event(Duration::from_millis(200)) {
            Ok(Some(ringchat::client::Event::Message(m))) => out.push(m),
            Ok(_) => {}
            Err(e) => panic!("client failed while collecting messages: {e}"),
        }
    }
    out
}

/// A raw TCP connection for playing a misbehaving client.
pub fn raw(addr: &str) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads frames from a raw connection until EOF/reset or `limit`; returns them and whether the
/// server closed the connection.
pub fn read_until_closed(
    s: &mut std::net::TcpStream,
    limit: Duration,
) -> (Vec<ringchat::codec::ServerFrame>, bool) {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut closed = false;
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while let Ok(Some((f, used))) = ringchat::codec::decode::<ringchat::codec::ServerFrame>(rest) {
        frames.push(f);
        rest = &rest[used..];
    }
    (frames, closed)
}
