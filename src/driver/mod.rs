//! The event-loop driver: the only code in the crate that knows mio.
//!
//! One `Poll` on one thread around one [`Node`]. Connections live in a `Slab`; a connection's
//! token is its slab key, and a few reserved tokens name the listener, the signal pipe and the
//! waker (a stop request, or storage reporting writes durable). Links to the other cluster
//! members are kept by the peer mesh ([`peers`]), in the same loop, with their own token range.
//! A node started with `--join` whose join stalls asks again from the loop, on one non-blocking
//! connection with a token of its own (the join client's shell, `join.rs`).
//! The node's writes are made durable by `persister`: on a storage thread with file storage,
//! so the loop never waits for a disk. Every loop turn, in this order (the core's contract, see
//! [`crate::core`]):
//!
//! 1. poll, with the timeout the nearest deadline (the node's, peer dials and handshakes,
//!    a storage retry, shutdown, lingering closes);
//! 2. accept and read every ready socket (clients and peers) until `WouldBlock`, feeding
//!    frames to the node; start due peer dials, drop timed-out handshakes; feed the node what
//!    storage finished;
//! 3. `Node::turn`, which runs the node's due timers and returns its [`Ready`];
//! 4. hand its storage job to the persister (at most a few in flight: the node keeps the rest
//!    and hands them out as one job later, which is group commit);
//! 5. queue its actions on per-connection and per-peer output queues (the same `Rc` bytes for
//!    every recipient of a delivery) and mark closes; follow peer-set changes;
//! 6. flush each connection and peer link that got output this turn with one
//!    `write_vectored` per batch of up to 64 frames, arming WRITABLE only while a queue stays
//!    non-empty; steps 3-6 again while they gave the node more input (dropped connections,
//!    writes completed inline by memory storage).
//!
//! Reads stop at `WouldBlock`, EOF, or a short read (fewer bytes than the buffer: the receive
//! queue was emptied, and later data raises a new edge) unless the event also reported a FIN or
//! an error, in which case reading goes on to EOF / the error.
//!
//! Batching steps 5-6 per turn is what makes a delivery to many members cost one write system
//! call per member per turn rather than per message.
//!
//! Connection ids given to the core are `(generation << 32) | slab key`, so a slab key reused
//! by a later connection never aliases an earlier id; the generation counts accepts and would
//! only wrap after 2^32 of them.

pub mod config;
pub mod conn;
mod join;
pub mod peers;
mod persister;

pub use config::{ConfigError, DaemonArgs, DaemonConfig, StorageKind};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::codec::{self, ErrorCode, ErrorFrame, Redirect, ServerFrame};
use crate::core::join::JoinOutcome;
use crate::core::{Action, ConnId, Node, NodeId, Now, Ready};
use crate::storage::{FileOptions, FileStorage, Storage, StorageError, Volatile};
use conn::{InBuf, OutQueue, OutputPool};
use join::{Joiner, JOIN};
use peers::{LinkEvent, Mesh};
use persister::{Completion, Persister};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Size of the read buffer shared by all connections.
pub const SCRATCH_LEN: usize = 64 * 1024;
/// Reads of one connection per turn before others get a turn (fairness against floods).
const READS_PER_TURN: usize = 8;
/// How long a closing connection may take to flush what is queued for it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Pause before retrying `accept` after a resource error (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Bytes of unread input discarded before closing, so the close is a FIN rather than a RST
/// that could destroy the goodbye frame in flight.
const CLOSE_DRAIN: usize = 256 * 1024;
/// Least interval between two "server full" warnings.
const FULL_WARN_EVERY: Duration = Duration::from_secs(10);
/// Events handled per `poll` call.
const EVENT_CAPACITY: usize = 1024;

/// Why the driver could not start or keep running.
#[derive(Debug)]
pub enum DriverError {
    /// The data directory could not be created or its lock file opened.
    DataDir {
        /// The directory or lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the data directory's lock.
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the lock file says about its holder (its pid), if readable.
        holder: String,
    },
    /// The client (or peer) listen address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The `--port-file` could not be written.
    PortFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The stored log could not be loaded at startup.
    Storage(StorageError),
    /// The stored snapshot could not be decoded at startup.
    Snapshot(crate::codec::CodecError),
    /// `--join` did not get the node added.
    Join(String),
    /// An event-loop system call failed.
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::DataDir { path, source } => {
                write!(f, "cannot use data directory {}: {source}", path.display())
            }
            DriverError::Locked { path, holder } => write!(
                f,
                "data directory is in use by another ringchatd ({} is locked{}); \
                 stop it or use another --data-dir",
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                }
            ),
            DriverError::Bind { addr, source } => write!(
                f,
                "cannot listen on {addr}: {source} (is another server using this address?)"
            ),
            DriverError::PortFile { path, source } => {
                write!(f, "cannot write port file {}: {source}", path.display())
            }
            DriverError::Storage(e) => write!(f, "cannot load the log: {e}"),
            DriverError::Snapshot(e) => write!(f, "cannot read the stored snapshot: {e}"),
            DriverError::Join(why) => write!(f, "cannot join the cluster: {why}"),
            DriverError::Io { context, source } => write!(f, "{context} failed: {source}"),
        }
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DriverError::DataDir { source, .. }
            | DriverError::Bind { source, .. }
            | DriverError::PortFile { source, .. }
            | DriverError::Io { source, .. } => Some(source),
            DriverError::Storage(e) => Some(e),
            DriverError::Snapshot(e) => Some(e),
            DriverError::Locked { .. } | DriverError::Join(_) => None,
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> DriverError {
    move |source| DriverError::Io { context, source }
}

/// `--join`: the node's join client; unless the node's data says it is a member already, it
/// asks the cluster at `via` to add the node (blocking: nothing is served yet) and links it to
/// the leader that accepted it.
fn join_cluster(
    config: &DaemonConfig,
    via: SocketAddr,
    mesh: &Mesh,
    node: &mut Node,
) -> Result<Joiner, DriverError> {
    let mut joiner = Joiner::new(config, via, mesh)?;
    if node.configs().applied().has(config.id) {
        info!(
            "node {}: already a member (from its data); --join {via} ignored",
            config.id
        );
    } else {
        joiner.join_before_serving(node)?;
    }
    Ok(joiner)
}

/// Runs a daemon with `config` until SIGTERM/SIGINT, then stops gracefully. Its log and
/// snapshots are kept in files in the data directory.
pub fn run(config: DaemonConfig) -> Result<(), DriverError> {
    Driver::new(config)?.run()
}

/// Asks a running [`Driver`] to stop gracefully, from any thread (like SIGTERM).
#[derive(Clone, Debug)]
pub struct StopHandle {
    node: NodeId,
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Starts a graceful stop; returns at once.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            error!(
                "node {}: cannot wake the event loop to stop it: {e}",
                self.node
            );
        }
    }
}

/// The exclusive lock on a data directory, held while the driver lives.
#[derive(Debug)]
struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    fn acquire(dir: &Path) -> Result<DataDirLock, DriverError> {
        std::fs::create_dir_all(dir).map_err(|source| DriverError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("LOCK");
        let data_err = |source| DriverError::DataDir {
            path: path.clone(),
            source,
        };
        // Not truncated before the lock is ours: the pid in it belongs to the holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(data_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(DriverError::Locked {
                    path,
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(data_err(e)),
        }
        file.set_len(0).map_err(data_err)?;
        writeln!(file, "{}", std::process::id()).map_err(data_err)?;
        Ok(DataDirLock { _file: file })
    }
}

/// One client connection.
struct Conn {
    id: ConnId,
    stream: TcpStream,
    input: InBuf,
    out: OutQueue,
    /// WRITABLE is part of the registered interest.
    write_armed: bool,
    /// Listed in `Driver::dirty` this turn.
    dirty: bool,
    /// No more input is fed to the core (EOF, bad frame, closing).
    rx_done: bool,
    /// Closing: dropped once `out` drains, or at this instant at the latest.
    close_by: Option<Instant>,
}

/// The event loop around one node. See the module docs for the turn structure.
pub struct Driver {
    cfg: DaemonConfig,
    id: NodeId,
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    stop: StopHandle,
    conns: Slab<Conn>,
    generation: u64,
    /// Read buffer shared by every connection.
    scratch: Box<[u8]>,
    /// Memory the client connections' output queues share.
    output_pool: OutputPool,
    node: Node,
    /// Links to the other cluster members.
    mesh: Mesh,
    /// The join client (`--join`), asking again in the loop when the node's join stalls.
    joiner: Option<Joiner>,
    /// The node's storage (on a thread of its own for a disk).
    persister: Persister,
    /// When the node's next turn is due (from its last [`Ready`]).
    node_deadline: Option<Instant>,
    /// Buffers kept across turns for what storage completed and what the links reported.
    completed: Vec<Completion>,
    link_events: Vec<LinkEvent>,
    accept_retry_at: Option<Instant>,
    /// Connections with new output this turn.
    dirty: Vec<ConnId>,
    /// Connections waiting to drain before they are dropped.
    closing: Vec<ConnId>,
    /// Connections that used their read budget and may have more input pending.
    reread: Vec<ConnId>,
    shutdown_deadline: Option<Instant>,
    /// Connections dropped so far (drives the settle loop).
    drops: u64,
    /// Pre-encoded ServerFull error for connections above the limit.
    server_full: Vec<u8>,
    /// When "server full" was last logged at warn, and refusals since.
    full_warned_at: Option<Instant>,
    refused: u64,
    _lock: DataDirLock,
}

fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Now {
        mono: Instant::now(),
        unix_ms,
    }
}

fn encode_error(code: ErrorCode, message: String) -> Vec<u8> {
    let frame = ServerFrame::Error(ErrorFrame {
        code: code as u16,
        client_seq: None,
        message,
    });
    codec::encode(&frame).unwrap_or_default()
}

fn raise_fd_limit(id: NodeId, max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            debug!("node {id}: open-file limit is {limit}");
            if (limit as usize) < max_connections.saturating_add(32) {
                warn!(
                    "node {id}: open-file limit {limit} is below --max-connections \
                     {max_connections}; accepts may fail before the limit is reached"
                );
            }
        }
        Err(e) => warn!("node {id}: cannot raise the open-file limit: {e}"),
    }
}

fn write_port_file(path: &Path, addr: SocketAddr) -> Result<(), DriverError> {
    let err = |source| DriverError::PortFile {
        path: path.to_owned(),
        source,
    };
    // Written aside then renamed, so a reader never sees a partial address.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{addr}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Driver {
    /// Locks the data directory, opens its storage (`--storage file`: the log, checked, with a
    /// torn tail cut; `memory`: nothing kept), binds the listener and builds the node. Nothing
    /// is served until [`Driver::run`].
    pub fn new(config: DaemonConfig) -> Result<Driver, DriverError> {
        let lock = DataDirLock::acquire(&config.data_dir)?;
        match config.storage {
            StorageKind::File => {
                let options = FileOptions {
                    background_snapshots: true,
                    ..FileOptions::default()
                };
                let storage =
                    FileStorage::open(&config.data_dir, options).map_err(DriverError::Storage)?;
                Driver::build(config, lock, storage, true)
            }
            StorageKind::Memory => Driver::build(config, lock, Volatile, false),
        }
    }

    /// Builds the node from what `storage` holds; `threaded` puts the storage on a thread of
    /// its own (a disk), else its writes run inline (they cost nothing).
    fn build<S: Storage + Send + 'static>(
        config: DaemonConfig,
        lock: DataDirLock,
        mut storage: S,
        threaded: bool,
    ) -> Result<Driver, DriverError> {
        let id = config.id;
        raise_fd_limit(id, config.max_connections);

        let recovered = storage.load().map_err(DriverError::Storage)?;
        let mut node =
            Node::new(config.node_config(), recovered, now()).map_err(DriverError::Snapshot)?;

        let poll = Poll::new().map_err(io_err("creating the poller"))?;
        let mut listener = listen(config.listen).map_err(|source| DriverError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(io_err("reading the listen address"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_err("registering the listener"))?;
        let mut signals =
            Signals::new([SIGTERM, SIGINT]).map_err(io_err("installing signal handlers"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(io_err("registering the signal pipe"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("creating the waker"))?);
        let persister = if threaded {
            Persister::threaded(id, storage, waker.clone())
                .map_err(io_err("starting the storage thread"))?
        } else {
            Persister::inline(id, Box::new(storage))
        };
        let mesh = Mesh::new(&config, poll.registry(), Instant::now(), local_addr)?;
        if !config.peers.is_empty() {
            info!(
                "node {id}: member of cluster {} with peers {:?}",
                config.cluster_id,
                config
                    .peers
                    .iter()
                    .map(|(p, a)| format!("{p}={a}"))
                    .collect::<Vec<_>>()
            );
        }

        let server_full = encode_error(
            ErrorCode::ServerFull,
            format!(
                "node {id} is at its limit of {} connections; try another node or retry later",
                config.max_connections
            ),
        );
        info!("node {id}: listening on {local_addr}");
        if let Some(path) = &config.port_file {
            write_port_file(path, local_addr)?;
        }
        let joiner = match config.join {
            Some(via) => Some(join_cluster(&config, via, &mesh, &mut node)?),
            None => None,
        };
        Ok(Driver {
            id,
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            stop: StopHandle {
                node: id,
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            conns: Slab::new(),
            generation: 0,
            scratch: vec![0u8; SCRATCH_LEN].into_boxed_slice(),
            output_pool: OutputPool::default(),
            node,
            mesh,
            joiner,
            persister,
            // The first turn is due at once: the startup join's acceptance is an input the
            // node acts on (linking to the leader) only in a turn, and nothing else may come.
            node_deadline: Some(Instant::now()),
            completed: Vec::new(),
            link_events: Vec::new(),
            accept_retry_at: None,
            dirty: Vec::new(),
            closing: Vec::new(),
            reread: Vec::new(),
            shutdown_deadline: None,
            drops: 0,
            server_full,
            full_warned_at: None,
            refused: 0,
            cfg: config,
            _lock: lock,
        })
    }

    /// The bound client address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the loop gracefully from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The node driven (for status views and tests).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The bound peer address (useful with port 0), if `--peer-listen` is set.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.mesh.local_addr()
    }

    /// Client connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Serves until a graceful stop (SIGTERM, SIGINT or [`StopHandle::stop`]) completes.
    pub fn run(mut self) -> Result<(), DriverError> {
        let mut events = Events::with_capacity(EVENT_CAPACITY);
        loop {
            // (1) Poll until the nearest deadline.
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DriverError::Io {
                    context: "polling for events",
                    source: e,
                });
            }
            let now = now();

            // (2) Accept and read everything ready.
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    SIGNALS => stop |= self.take_signals(),
                    WAKER => stop |= self.stop.flag.load(Ordering::SeqCst),
                    t if Mesh::owns(t) => self.mesh.ready(now, event),
                    JOIN => {
                        if let Some(j) = &mut self.joiner {
                            j.ready(now.mono, event, self.poll.registry());
                        }
                    }
                    Token(key) => self.ready(now, key, event),
                }
            }
            self.mesh.reread(now);
            self.mesh.on_timer(now);
            self.feed_links(now);
            self.pump_join(now);
            self.take_completions(now);
            if self.accept_retry_at.is_some_and(|t| t <= now.mono) {
                self.accept_retry_at = None;
                self.accept_all(now);
            }
            for id in std::mem::take(&mut self.reread) {
                self.read(now, id, true);
            }
            if stop {
                match self.shutdown_deadline {
                    None => self.begin_shutdown(now),
                    Some(_) => {
                        info!("node {}: second stop request: stopping at once", self.id);
                        self.shutdown_deadline = Some(now.mono);
                    }
                }
            }

            // (3)-(6) The node's turn, then storage, sends and flushes; again while that
            // gave the node more input.
            self.settle(now);

            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() {
                    info!("node {}: stopped", self.id);
                    return Ok(());
                }
                if now.mono >= deadline {
                    warn!(
                        "node {}: shutdown timeout: dropping {} connections that did not close",
                        self.id,
                        self.conns.len()
                    );
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.drop_conn(now, key, false, "shutdown timeout");
                    }
                    self.settle(now);
                    info!("node {}: stopped", self.id);
                    return Ok(());
                }
            }
        }
    }

    /// What happened on the peer links becomes the node's input, in order; join requests get
    /// the node's answer.
    fn feed_links(&mut self, now: Now) {
        // The buffer is kept across turns: every peer frame passes through it.
        let mut events = std::mem::take(&mut self.link_events);
        loop {
            self.mesh.take_events(&mut events);
            if events.is_empty() {
                self.link_events = events;
                return;
            }
            for event in events.drain(..) {
                match event {
                    LinkEvent::Up { peer, client_addr } => {
                        self.node.handle_peer_connected(now, peer, &client_addr)
                    }
                    LinkEvent::Down { peer } => self.node.handle_peer_disconnected(now, peer),
                    LinkEvent::Frame { peer, frame } => {
                        self.node.handle_peer_frame(now, peer, frame)
                    }
                    LinkEvent::Join { link, req } => {
                        let who = format!("node {} (peers at {})", req.node_id, req.peer_addr);
                        let reply = self.node.handle_join(now.mono, req);
                        info!(
                            "node {}: join request of {who}: {} ({})",
                            self.id,
                            if reply.ok { "accepted" } else { "refused" },
                            reply.message
                        );
                        self.mesh.answer_join(now, link, reply);
                    }
                }
            }
        }
    }

    /// Storage's completions become the node's input.
    fn take_completions(&mut self, now: Now) {
        let mut completed = std::mem::take(&mut self.completed);
        self.persister.completions(now.mono, &mut completed);
        for done in completed.drain(..) {
            match done {
                Completion::Persisted(token) => self.node.handle_persisted(now, token),
                Completion::Failed(why) => {
                    warn!(
                        "node {}: {why}; the last writes are not durable, retrying in {:?}",
                        self.id,
                        persister::STORAGE_RETRY
                    );
                    self.node.handle_persist_failed(now, why);
                }
            }
        }
        self.completed = completed;
    }

    /// Links follow membership changes; a node removed from the cluster stops, saying why; a
    /// joining node whose join stalled asks again (the request goes out at the next pass of
    /// the loop: the client's deadline is now).
    fn follow_membership(&mut self, now: Now, ready: &mut Ready) {
        if let Some(j) = self.joiner.as_mut().filter(|_| ready.rejoin) {
            j.rejoin(now.mono);
        }
        if let Some(wanted) = ready.peers.take() {
            self.mesh.sync_peers(now, &wanted);
        }
        if let Some(why) = ready.removed.take() {
            if self.shutdown_deadline.is_none() {
                warn!("node {}: {why}; stopping", self.id);
                self.begin_shutdown(now);
            }
        }
    }

    /// The join client's turn: its sockets opened and closed; a leader that accepted the node
    /// is handed to it, a refusal for good stops the node.
    fn pump_join(&mut self, now: Now) {
        let Some(j) = &mut self.joiner else {
            return;
        };
        match j.pump(now.mono, self.poll.registry()) {
            Some(JoinOutcome::Accepted { leader, addr }) => {
                self.node.handle_join_accepted(now.mono, leader, addr)
            }
            Some(JoinOutcome::Refused(why)) | Some(JoinOutcome::GaveUp(why))
                if self.shutdown_deadline.is_none() =>
            {
                error!("node {}: cannot join the cluster: {why}; stopping", self.id);
                self.begin_shutdown(now);
            }
            _ => {}
        }
    }

    /// The poll timeout: zero while work is pending, else until the nearest deadline.
    fn poll_timeout(&self, at: Instant) -> Option<Duration> {
        if !self.reread.is_empty() || self.mesh.has_reread() {
            return Some(Duration::ZERO);
        }
        let closes = self
            .closing
            .iter()
            .filter_map(|id| self.conn(*id).and_then(|c| c.close_by));
        [
            self.node_deadline,
            self.mesh.next_deadline(),
            self.persister.retry_at(),
            self.accept_retry_at,
            self.shutdown_deadline,
            self.joiner.as_ref().and_then(Joiner::deadline),
        ]
        .into_iter()
        .flatten()
        .chain(closes)
        .min()
        .map(|t| t.saturating_duration_since(at))
    }

    fn key_of(&self, id: ConnId) -> Option<usize> {
        let key = (id.0 & 0xFFFF_FFFF) as usize;
        match self.conns.get(key) {
            Some(c) if c.id == id => Some(key),
            _ => None,
        }
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.key_of(id).map(|k| &self.conns[k])
    }

    fn take_signals(&mut self) -> bool {
        let mut stop = false;
        for sig in self.signals.pending() {
            let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
            info!("node {}: {name} received: stopping gracefully", self.id);
            stop = true;
        }
        stop
    }

    fn begin_shutdown(&mut self, now: Now) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.accept_retry_at = None;
        info!(
            "node {}: no longer accepting; telling {} clients to reconnect elsewhere",
            self.id,
            self.conns.len()
        );
        self.shutdown_deadline =
            Some(now.mono + Duration::from_millis(self.cfg.shutdown_timeout_ms));
        self.node.begin_shutdown(now);
    }

    fn accept_all(&mut self, now: Now) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(now, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // Typically out of file descriptors: retry shortly rather than spin.
                    warn!("node {}: accept failed: {e}; retrying shortly", self.id);
                    self.accept_retry_at = Some(now.mono + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, now: Now, mut stream: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= self.cfg.max_connections {
            self.refused += 1;
            if self
                .full_warned_at
                .is_none_or(|t| now.mono.duration_since(t) >= FULL_WARN_EVERY)
            {
                warn!(
                    "node {}: at the limit of {} connections; refusing new clients \
                     ({} refused so far)",
                    self.id, self.cfg.max_connections, self.refused
                );
                self.full_warned_at = Some(now.mono);
            }
            // Best effort: a fresh socket's send buffer takes a small frame at once. Input
            // already sent is discarded so the close is a FIN, not a RST that would destroy
            // the frame before the client reads it.
            match self.node.redirect_target(now) {
                Some(addr) => {
                    debug!("node {}: redirected {peer} to {addr}: server full", self.id);
                    let frame = ServerFrame::Redirect(Redirect {
                        addr: addr.to_owned(),
                        message: format!(
                            "node {} is at its limit of {} connections; use {addr}",
                            self.id, self.cfg.max_connections
                        ),
                    });
                    if let Ok(bytes) = codec::encode(&frame) {
                        let _ = (&stream).write(&bytes);
                    }
                }
                None => {
                    debug!("node {}: refused {peer}: server full", self.id);
                    let _ = (&stream).write(&self.server_full);
                }
            }
            let _ = (&stream).read(&mut self.scratch);
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            debug!("node {}: TCP_NODELAY on {peer}: {e}", self.id);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            warn!("node {}: cannot register {peer}: {e}", self.id);
            return;
        }
        self.generation += 1;
        let id = ConnId((self.generation << 32) | key as u64);
        entry.insert(Conn {
            id,
            stream,
            input: InBuf::new(),
            out: OutQueue::new(),
            write_armed: false,
            dirty: false,
            rx_done: false,
            close_by: None,
        });
        debug!("node {}: conn {} accepted from {peer}", self.id, id.0);
        self.node.handle_connect(now, id);
    }

    /// A connection's socket is ready.
    fn ready(&mut self, now: Now, key: usize, event: &mio::event::Event) {
        let Some(c) = self.conns.get(key) else {
            return; // spurious: the connection is already gone
        };
        let id = c.id;
        if event.is_writable() && !c.out.is_empty() {
            self.flush(now, id);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            // With a FIN or an error pending, read on to EOF / the error even after a short
            // read: no further edge would announce them.
            let to_the_end = event.is_read_closed() || event.is_error();
            self.read(now, id, to_the_end);
        }
    }

    /// Reads until `WouldBlock`, EOF or the per-turn budget, feeding whole frames to the node.
    /// Unless `to_the_end`, a short read ends the loop early (see below).
    fn read(&mut self, now: Now, id: ConnId, to_the_end: bool) {
        for _ in 0..READS_PER_TURN {
            let Some(key) = self.key_of(id) else {
                return;
            };
            let c = &mut self.conns[key];
            if c.rx_done {
                return;
            }
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Half-closed: the node closes it once the answers to what it asked
                    // are out (they may wait on the cluster and the disk).
                    debug!("node {}: conn {} ended its input", self.id, id.0);
                    c.rx_done = true;
                    c.input.clear();
                    self.node.handle_input_end(now, id);
                    return;
                }
                Ok(n) => {
                    let node = &mut self.node;
                    let fed = c
                        .input
                        .feed(&self.scratch[..n], |f| node.handle_frame(now, id, f));
                    if let Err(err) = fed {
                        debug!("node {}: conn {} sent a bad frame: {err}", self.id, id.0);
                        c.rx_done = true;
                        c.input.clear();
                        node.handle_bad_frame(now, id, &err);
                        return;
                    }
                    if n < self.scratch.len() && !to_the_end {
                        // A short read emptied the socket's receive queue: the next read
                        // would be WouldBlock, and data arriving later raises a new edge
                        // (as tokio does). Saves one system call per message.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("read failed: {e}");
                    self.drop_conn(now, key, false, &why);
                    return;
                }
            }
        }
        // Budget used: more may be pending, and edge-triggered polling will not say so again.
        self.reread.push(id);
    }

    fn start_closing(&mut self, now: Now, key: usize) {
        let c = &mut self.conns[key];
        if c.close_by.is_none() {
            c.close_by = Some(now.mono + CLOSE_LINGER);
            self.closing.push(c.id);
        }
    }

    /// Steps 3-6: the node's turn and what it asks for, repeated while that gave the node
    /// more input (dropped connections, writes that storage completed inline).
    fn settle(&mut self, now: Now) {
        loop {
            let drops = self.drops + self.mesh.drops();
            let mut ready = self.node.turn(now, self.persister.can_take(now.mono));
            // Storage first: a thread starts syncing while the sends go out.
            if let Some(job) = ready.persist.take() {
                self.persister.submit(now.mono, job);
            }
            self.node_deadline = ready.deadline;
            self.mesh.set_epoch(self.node.epoch());
            let mut actions = std::mem::take(&mut ready.actions);
            self.drain_actions(now, &mut actions);
            self.node.recycle(actions);
            // `flush` never adds to `dirty`, so the list's allocation is reused.
            let mut dirty = std::mem::take(&mut self.dirty);
            for id in dirty.drain(..) {
                self.flush(now, id);
            }
            self.dirty = dirty;
            self.mesh.flush_dirty(now);
            self.reap(now);
            self.follow_membership(now, &mut ready);
            self.feed_links(now);
            let completed = self.persister.has_completions();
            self.take_completions(now);
            if !completed && self.drops + self.mesh.drops() == drops {
                return;
            }
        }
    }

    /// Step 5: the node's actions into output queues and closes.
    fn drain_actions(&mut self, now: Now, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Send { conn, bytes } => {
                    let Some(key) = self.key_of(conn) else {
                        continue; // gone already; the node learns it from handle_disconnect
                    };
                    let c = &mut self.conns[key];
                    c.out.push_reusing(bytes, &mut self.output_pool);
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(conn);
                    }
                }
                Action::SendPeer { to, bytes } => self.mesh.send(to, bytes),
                Action::ResetPeer { to, reason } => self.mesh.reset(now, to, &reason),
                Action::Close { conn, reason } => {
                    let Some(key) = self.key_of(conn) else {
                        continue;
                    };
                    debug!("node {}: closing conn {}: {reason}", self.id, conn.0);
                    let c = &mut self.conns[key];
                    c.rx_done = true;
                    c.input.clear();
                    self.start_closing(now, key);
                }
            }
        }
    }

    /// Step 6 (and WRITABLE events): write what is queued, enforce the bound, fix interest.
    fn flush(&mut self, now: Now, id: ConnId) {
        let Some(key) = self.key_of(id) else {
            return;
        };
        let c = &mut self.conns[key];
        c.dirty = false;
        if let Err(e) = c.out.flush(&mut c.stream, &mut self.output_pool) {
            let why = format!("write failed: {e}");
            return self.drop_conn(now, key, false, &why);
        }
        let queued = c.out.queued();
        if queued > self.cfg.max_output_bytes {
            warn!(
                "node {}: conn {} dropped: slow consumer: {queued} bytes queued (limit {})",
                self.id, id.0, self.cfg.max_output_bytes
            );
            if c.out.at_frame_boundary() {
                let frame = encode_error(
                    ErrorCode::SlowConsumer,
                    format!("you did not read fast enough ({queued} bytes queued); disconnected"),
                );
                let _ = (&c.stream).write(&frame);
            }
            return self.drop_conn(now, key, false, "slow consumer");
        }
        if let Err(e) = set_write_interest(self.poll.registry(), c, key) {
            let why = format!("reregister failed: {e}");
            self.drop_conn(now, key, false, &why);
        }
    }

    /// Drops closing connections that drained or ran out of time.
    fn reap(&mut self, now: Now) {
        if self.closing.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for id in std::mem::take(&mut self.closing) {
            let Some(key) = self.key_of(id) else {
                continue;
            };
            let c = &self.conns[key];
            if c.out.is_empty() {
                self.drop_conn(now, key, true, "closed");
            } else if c.close_by.is_some_and(|t| t <= now.mono) {
                let why = format!("close timed out with {} bytes unsent", c.out.queued());
                self.drop_conn(now, key, false, &why);
            } else {
                keep.push(id);
            }
        }
        // Connections dropped above may have queued more closes meanwhile.
        keep.append(&mut self.closing);
        self.closing = keep;
    }

    /// The one place a connection goes away: the node hears of it exactly once.
    fn drop_conn(&mut self, now: Now, key: usize, graceful: bool, why: &str) {
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if graceful {
            // Discard unread input so the close sends FIN, not RST.
            let mut left = CLOSE_DRAIN;
            while left > 0 {
                match c.stream.read(&mut self.scratch) {
                    Ok(0) => break,
                    Ok(n) => left = left.saturating_sub(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let id = c.id;
        debug!("node {}: conn {} dropped: {why}", self.id, id.0);
        drop(c);
        self.drops += 1;
        self.node.handle_disconnect(now, id);
    }
}

/// Accept backlog: std and mio use 128, and a reconnect storm after a failover brings more
/// clients than that at once; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener with a backlog deep enough for reconnect storms.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn set_write_interest(registry: &Registry, c: &mut Conn, key: usize) -> io::Result<()> {
    let want = !c.out.is_empty();
    if want != c.write_armed {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut c.stream, Token(key), interest)?;
        c.write_armed = want;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
