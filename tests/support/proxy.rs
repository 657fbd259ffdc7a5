//! A fault-injecting TCP proxy for tests: std threads and `std::net` only.
//!
//! It listens on 127.0.0.1:0 and forwards every accepted connection to a fixed target. A test
//! can `cut()` it (every proxied connection is shut down at once and new ones are closed as soon
//! as they are accepted, until `heal()`), and can `delay(ms)` the bytes in both directions (a
//! latency, not a bandwidth limit: each chunk is held until `ms` after it was read).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] proxied connections at once (more are closed on accept),
//! at most [`MAX_QUEUED_CHUNKS`] chunks queued per direction (the reader blocks beyond it, which
//! TCP turns into back-pressure), connects to the target time out, and every thread ends once
//! its sockets are shut down. Dropping the proxy stops the accept thread and closes everything.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Most proxied connections at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most chunks read but not yet written, per direction of one connection.
pub const MAX_QUEUED_CHUNKS: usize = 256;
const CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    delay_ms: AtomicU64,
    next_id: AtomicU64,
    /// Both sockets of every live proxied connection (clones used only to shut them down).
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn close_all(&self) {
        let conns: Vec<(TcpStream, TcpStream)> =
            self.conns.lock().unwrap().drain().map(|(_, v)| v).collect();
        for (a, b) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    fn forget(&self, id: u64) {
        if let Some((a, b)) = self.conns.lock().unwrap().remove(&id) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy from `addr` (127.0.0.1, a free port) to a target address.
pub struct Proxy {
    /// The address the proxy listens on, e.g. "127.0.0.1:40123".
    pub addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `target` (connections are made to it on demand, so the target need
    /// not be up yet).
    pub fn start(target: &str) -> Proxy {
        let target = target
            .to_socket_addrs()
            .expect("proxy target address")
            .next()
            .expect("proxy target resolves");
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("proxy-{addr}"))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn proxy thread");
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every proxied connection and closes new ones on accept until [`Proxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Lets new connections through again (the ones closed by `cut` stay closed).
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// True between `cut` and `heal`.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Holds every chunk `ms` milliseconds before forwarding it (0: no delay). Applies to
    /// chunks read from now on, on existing and new connections.
    pub fn delay(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Proxied connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed on accept (cut, full, or the target refused) so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the blocking accept; the loop sees `stop` and returns.
        let _ = TcpStream::connect_timeout(
            &self.addr.parse().expect("proxy addr"),
            Duration::from_secs(1),
        );
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.shared.close_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else {
            // EMFILE and the like: back off a little rather than spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let full = shared.conns.lock().unwrap().len() >= MAX_CONNECTIONS;
        if shared.cut.load(Ordering::SeqCst) || full {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        // A cut may have happened while connecting: it must not let this one through.
        if shared.cut.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            continue;
        }
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(e) = start_pumps(&shared, client, server) {
            eprintln!("proxy: cannot start a connection: {e}");
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
    }
}

fn start_pumps(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) -> io::Result<()> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut conns = shared.conns.lock().unwrap();
        conns.insert(id, (client.try_clone()?, server.try_clone()?));
        // Checked under the lock `cut` takes to drain the map: a cut either sees this entry or
        // happened before it was added and is seen here.
        if shared.cut.load(Ordering::SeqCst) {
            drop(conns);
            shared.forget(id);
            return Ok(());
        }
    }
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(MAX_QUEUED_CHUNKS);
        let s = Arc::clone(shared);
        thread::spawn(move || read_side(from, tx, s, id));
        let s = Arc::clone(shared);
        thread::spawn(move || write_side(to, rx, s, id));
    }
    Ok(())
}

/// Reads chunks and queues them with the time they are due.
fn read_side(mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>, s: Arc<Shared>, id: u64) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = Instant::now() + Duration::from_millis(s.delay_ms.load(Ordering::SeqCst));
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    // End of stream or error: the writer drains what is queued, then the connection closes.
    drop(tx);
    if s.cut.load(Ordering::SeqCst) {
        s.forget(id);
    }
}

/// Writes queued chunks when due; closes the whole connection when the queue ends or a write
/// fails.
fn write_side(mut to: TcpStream, rx: Receiver<(Instant, Vec<u8>)>, s: Arc<Shared>, id: u64) {
    while let Ok((due, chunk)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if s.cut.load(Ordering::SeqCst) || to.write_all(&chunk).is_err() {
            break;
        }
    }
    s.forget(id);
}
