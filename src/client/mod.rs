//! The blocking client library used by the `ringchat` CLI, the load tool and the integration
//! tests: `std::net` only, one [`Client`] per connection, no threads of its own.
//!
//! - [`session`] holds the socket-free state (rooms and last seen seq, client sequence numbers,
//!   unacknowledged messages, de-duplication, the resume plan) and is unit-tested alone;
//! - `conn` is the transport: a `TcpStream` with `TCP_NODELAY`, deadlines on reads and writes, and
//!   a read buffer decoding [`ServerFrame`]s across partial reads;
//! - [`Client`] ties them together: request/answer calls, an event queue, keepalive pings and
//!   failover with resume (DESIGN C5).
//!
//! Every frame that arrives while a call waits for its own answer (messages, notices, acks of
//! other messages) is queued and returned by a later [`Client::next_event`], never lost.
//!
//! Failover: when the connection breaks (socket error, close, garbage, a `SHUTTING_DOWN` error, or
//! no answer to a keepalive ping), a client with `reconnect` on tries the next address of its
//! list with exponential backoff and jitter, bounded in attempts and total time. On the new
//! connection it says `Hello` with the same `client_id` (the server treats it as the same device
//! and frees the old slot), re-joins every room with `after_seq` = the last seq it saw (only
//! missed messages are replayed, and anything at or below the last seen is dropped), then re-sends
//! its unacknowledged messages with their original client sequence numbers (the server
//! de-duplicates them and acks with the original seq). A call in progress re-sends its request.

pub mod admin;
mod conn;
pub mod session;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::codec::{
    Ack, ChatMessage, ClientFrame, ErrorCode, ErrorFrame, Hello, History, HistoryPage, Join, Leave,
    Notice, Ping, Redirect, ServerFrame, Welcome, Who,
};
use conn::{Broken, Conn};
pub use session::{PendingSay, Session};

/// Most messages in flight (sent, not answered) at once: the server de-duplicates re-sends only
/// within this window, so [`Client::send`] waits for answers rather than exceed it.
pub const MAX_IN_FLIGHT: usize = crate::core::chat::DEDUP_WINDOW;

/// How a [`Client`] connects, waits and fails over.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server addresses (`host:port`), tried in order; failover moves to the next one.
    pub servers: Vec<String>,
    /// Username.
    pub user: String,
    /// Device id, reused on reconnect so the server resumes the same device. Random by default.
    pub client_id: u64,
    /// Limit for one TCP connect.
    pub connect_timeout: Duration,
    /// Limit for the answer to one request (Welcome, Joined, Ack, ...), while connected.
    pub request_timeout: Duration,
    /// After this long without any frame from the server a Ping is sent; without any frame
    /// within the same time after it, the connection is considered dead. Zero disables it.
    pub keepalive: Duration,
    /// Reconnect (with resume) to the next server when the connection fails.
    pub reconnect: bool,
    /// Most connection attempts in one reconnect cycle.
    pub reconnect_attempts: u32,
    /// Most time one reconnect cycle may take before giving up.
    pub reconnect_timeout: Duration,
    /// First backoff delay; doubles per attempt up to `backoff_max`, with jitter in [d/2, d].
    pub backoff_base: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// Defaults: a random client id, 3 s connect, 10 s requests, 5 s keepalive, reconnect on
    /// (20 attempts within 30 s, backoff 100 ms doubling to 2 s).
    pub fn new(servers: Vec<String>, user: impl Into<String>) -> ClientConfig {
        ClientConfig {
            servers,
            user: user.into(),
            client_id: random_client_id(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            reconnect: true,
            reconnect_attempts: 20,
            reconnect_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// A random, non-zero device id.
pub fn random_client_id() -> u64 {
    let mut rng = fastrand::Rng::new();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (rng.u64(..) ^ t.rotate_left(17) ^ u64::from(std::process::id())).max(1)
}

/// Something that happened, returned by [`Client::next_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new message in a joined room (each (room, seq) is returned once).
    Message(ChatMessage),
    /// A user came to or left a joined room.
    Notice(Notice),
    /// A message sent with [`Client::send`] is committed.
    Ack(Ack),
    /// The server refused something: a message (`client_seq` set) or another request.
    Error {
        /// Wire error code, see [`ErrorCode`] and [`code_name`].
        code: u16,
        /// The client sequence number of the refused message, if it was one.
        client_seq: Option<u64>,
        /// The server's explanation.
        message: String,
    },
    /// The connection is lost; attempt number `attempt` will go to `addr`.
    Reconnecting {
        /// Next address tried.
        addr: String,
        /// Attempt number in this reconnect cycle, from 1.
        attempt: u32,
    },
    /// The session resumed on `addr`.
    Reconnected {
        /// Address now connected.
        addr: String,
    },
}

/// The answer to [`Client::join`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedRoom {
    /// Room name.
    pub room: String,
    /// Replayed messages, oldest first: the last N of the room on a first join, only the ones
    /// not seen yet when the room was already joined.
    pub history: Vec<ChatMessage>,
    /// Usernames in the room, sorted.
    pub members: Vec<String>,
    /// The room's highest seq at the join.
    pub last_seq: u64,
}

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// A socket error talking to `addr`.
    Io {
        /// Server address.
        addr: String,
        /// The error.
        source: io::Error,
    },
    /// The server refused the request.
    Server {
        /// Wire error code, see [`ErrorCode`].
        code: u16,
        /// The server's explanation.
        message: String,
    },
    /// No answer in time; the string names what was awaited.
    Timeout(&'static str),
    /// The server sent something this client cannot understand.
    Protocol(String),
    /// The connection was lost and `reconnect` is off.
    Disconnected {
        /// Server address.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// No server could be reached (every attempt failed); the details of the last failures.
    NoServer(String),
    /// The request needs a room this client has not joined.
    NotJoined(String),
}

impl ClientError {
    /// The server's error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// True for a refusal by the server (as opposed to a connection problem or timeout; a
    /// node shutting down, cut off from its leader or dropping a slow reader counts as a
    /// connection problem).
    pub fn is_refusal(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => !matches!(
                ErrorCode::from_u16(*code),
                Some(
                    ErrorCode::ShuttingDown
                        | ErrorCode::SlowConsumer
                        | ErrorCode::StorageFailed
                        | ErrorCode::NoLeader
                )
            ),
            ClientError::NotJoined(_) => true,
            _ => false,
        }
    }

    fn server(e: ErrorFrame) -> ClientError {
        ClientError::Server {
            code: e.code,
            message: e.message,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io { addr, source } => write!(f, "connection to {addr}: {source}"),
            ClientError::Server { code, message } => write!(f, "{}: {message}", code_name(*code)),
            ClientError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Disconnected { addr, reason } => {
                write!(f, "connection to {addr} lost: {reason}")
            }
            ClientError::NoServer(details) => write!(f, "no server reachable: {details}"),
            ClientError::NotJoined(room) => write!(f, "not in room {room:?}; join it first"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The stable name of a wire error code (`DEVICE_LIMIT`), or `ERROR_<n>` for an unknown one.
pub fn code_name(code: u16) -> String {
    ErrorCode::from_u16(code).map_or_else(|| format!("ERROR_{code}"), |c| c.name().to_owned())
}

/// A frame after the session bookkeeping: an event for the user or an answer for a caller.
enum Incoming {
    Event(Event),
    Reply(ServerFrame),
}

/// What a waiting call makes of an incoming frame.
enum Step<T> {
    /// The answer: the call returns it.
    Done(T),
    /// The call fails.
    Fail(ClientError),
    /// The call used the frame and keeps waiting.
    Used,
    /// Not for this call: queue it (events) or drop it (unclaimed answers).
    Pass(Incoming),
}

/// Why one connection attempt failed.
/// How a handshake ended, when it did not fail.
enum Handshake {
    /// Connected and welcomed.
    Welcome(Conn, Welcome),
    /// The node is full and names another.
    Redirect(Redirect),
}

enum Attempt {
    /// Try another server.
    Retry(ClientError),
    /// No point trying another server (e.g. the username is invalid).
    Fatal(ClientError),
}

struct Reconnect {
    /// Number of the next attempt, from 1.
    attempt: u32,
    started: Instant,
    next_try: Instant,
    /// Index of the server that was lost; attempt n goes to (from + n) mod len.
    from: usize,
    last_error: String,
}

/// A connected chat client. Blocking; not thread-safe by itself (use one per thread).
pub struct Client {
    cfg: ClientConfig,
    session: Session,
    conn: Option<Conn>,
    current: usize,
    welcome: Option<Welcome>,
    events: VecDeque<Event>,
    rng: fastrand::Rng,
    recon: Option<Reconnect>,
    generation: u64,
    next_nonce: u64,
    last_rx: Instant,
    ping_sent: Option<Instant>,
}

impl Client {
    /// Connects to the first server of the list that welcomes the user (trying the others,
    /// with backoff when `reconnect` is on). A refusal (`DEVICE_LIMIT`, `INVALID_USER`) is
    /// returned as [`ClientError::Server`] with the server's message.
    pub fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.servers.is_empty() {
            return Err(ClientError::NoServer("no server address given".into()));
        }
        let mut c = Client {
            rng: fastrand::Rng::with_seed(cfg.client_id),
            cfg,
            session: Session::new(),
            conn: None,
            current: 0,
            welcome: None,
            events: VecDeque::new(),
            recon: None,
            generation: 0,
            next_nonce: 1,
            last_rx: Instant::now(),
            ping_sent: None,
        };
        let started = Instant::now();
        let n = c.cfg.servers.len();
        let mut errors: VecDeque<String> = VecDeque::new();
        let mut attempt: u32 = 0;
        loop {
            let idx = attempt as usize % n;
            match c.try_server(idx) {
                Ok(()) => return Ok(c),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => {
                    if errors.len() == n {
                        errors.pop_front();
                    }
                    errors.push_back(format!("{}: {e}", c.cfg.servers[idx]));
                }
            }
            attempt += 1;
            let gave_up = if c.cfg.reconnect {
                attempt >= c.cfg.reconnect_attempts.max(1)
                    || started.elapsed() >= c.cfg.reconnect_timeout
            } else {
                attempt as usize >= n
            };
            if gave_up {
                let details = Vec::from(errors).join("; ");
                return Err(ClientError::NoServer(details));
            }
            if c.cfg.reconnect {
                std::thread::sleep(c.backoff(attempt));
            }
        }
    }

    /// Joins `room` (created on first join) and returns its recent history and members. Joining
    /// a room already joined returns only the messages not seen yet.
    pub fn join(&mut self, room: &str) -> Result<JoinedRoom, ClientError> {
        let request = ClientFrame::Join(Join {
            room: room.to_owned(),
            after_seq: self.session.last_seen(room),
        });
        let mut history: BTreeMap<u64, ChatMessage> = BTreeMap::new();
        let joined = self.wait_for("Joined", Some(request), |inc| match inc {
            Incoming::Reply(ServerFrame::Message(m)) if m.room == room => {
                history.insert(m.seq, m);
                Step::Used
            }
            Incoming::Reply(ServerFrame::Joined(j)) if j.room == room => Step::Done(j),
            Incoming::Reply(ServerFrame::Error(e)) => Step::Fail(ClientError::server(e)),
            other => Step::Pass(other),
        })?;
        // Messages replayed before Joined went to `history` only when the room was new to us;
        // otherwise the session de-duplicated them into events.
        if let Some(m) = history.values().next_back() {
            self.session.joined(room, m.seq);
        }
        self.session.joined(room, joined.last_seq);
        Ok(JoinedRoom {
            room: joined.room,
            history: history.into_values().collect(),
            members: joined.members,
            last_seq: joined.last_seq,
        })
    }

    /// Leaves a joined room ([`ClientError::NotJoined`] otherwise).
    pub fn leave(&mut self, room: &str) -> Result<(), ClientError> {
        if !self.session.is_joined(room) {
            return Err(ClientError::NotJoined(room.to_owned()));
        }
        let request = ClientFrame::Leave(Leave {
            room: room.to_owned(),
        });
        self.wait_for("Left", Some(request), |inc| match inc {
            Incoming::Reply(ServerFrame::Left(l)) if l.room == room => Step::Done(()),
            Incoming::Reply(ServerFrame::Error(e)) => Step::Fail(ClientError::server(e)),
            other => Step::Pass(other),
        })?;
        self.session.left(room);
        Ok(())
    }

    /// Sends a message without waiting for its acknowledgement and returns its client sequence
    /// number; the [`Event::Ack`] (or [`Event::Error`] with this `client_seq`) comes later from
    /// [`Client::next_event`]. The message is re-sent after a reconnect until answered. Waits
    /// first if [`MAX_IN_FLIGHT`] messages are unanswered.
    pub fn send(&mut self, room: &str, text: &str) -> Result<u64, ClientError> {
        self.pump_until("acks (too many messages in flight)", |s| {
            s.unacked_len() < MAX_IN_FLIGHT
        })?;
        let pending = self.session.say(room, text);
        self.send_frames(&[pending.frame()])?;
        Ok(pending.client_seq)
    }

    /// Sends a message and waits for its acknowledgement (or the server's refusal).
    pub fn say(&mut self, room: &str, text: &str) -> Result<Ack, ClientError> {
        let cs = self.send(room, text)?;
        self.wait_for("Ack", None, |inc| match inc {
            Incoming::Event(Event::Ack(a)) if a.client_seq == cs => Step::Done(a),
            Incoming::Event(Event::Error {
                code,
                client_seq: Some(c),
                message,
            }) if c == cs => Step::Fail(ClientError::Server { code, message }),
            other => Step::Pass(other),
        })
    }

    /// Waits until every message sent is answered (acked or refused), queueing the answers as
    /// events.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.pump_until("acks of the messages sent", |s| s.unacked_len() == 0)
    }

    /// The users in `room`.
    pub fn who(&mut self, room: &str) -> Result<Vec<String>, ClientError> {
        let request = ClientFrame::Who(Who {
            room: room.to_owned(),
        });
        self.wait_for("Members", Some(request), |inc| match inc {
            Incoming::Reply(ServerFrame::Members(m)) if m.room == room => Step::Done(m.users),
            Incoming::Reply(ServerFrame::Error(e)) => Step::Fail(ClientError::server(e)),
            other => Step::Pass(other),
        })
    }

    /// Up to `limit` messages of `room` with seq < `before` (the newest when `None`), oldest
    /// first. The room need not be joined.
    pub fn history(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let request = ClientFrame::History(History {
            room: room.to_owned(),
            before_seq: before,
            limit,
        });
        self.wait_for("HistoryPage", Some(request), |inc| match inc {
            Incoming::Reply(ServerFrame::HistoryPage(p)) if p.room == room => Step::Done(p),
            Incoming::Reply(ServerFrame::Error(e)) => Step::Fail(ClientError::server(e)),
            other => Step::Pass(other),
        })
    }

    /// Round trip time of a Ping.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let nonce = self.nonce();
        let start = Instant::now();
        self.wait_for(
            "Pong",
            Some(ClientFrame::Ping(Ping { nonce })),
            |inc| match inc {
                Incoming::Reply(ServerFrame::Pong(p)) if p.nonce == nonce => {
                    Step::Done(start.elapsed())
                }
                other => Step::Pass(other),
            },
        )
    }

    /// The next event, waiting up to `timeout`: `Ok(None)` if nothing happened. Reconnects
    /// (and reports it with events) when the connection fails; an error means the session is
    /// lost (reconnect off, or every attempt failed).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(inc) = self.poll_once(deadline)? {
                self.pass(inc);
            }
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Events received and not yet returned by [`Client::next_event`].
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// The session state (rooms, last seen seqs, unacknowledged messages).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The device id sent in `Hello`.
    pub fn client_id(&self) -> u64 {
        self.cfg.client_id
    }

    /// The address of the current (or last) server.
    pub fn server(&self) -> &str {
        &self.cfg.servers[self.current]
    }

    /// The current (or last) server's `Welcome`.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// True while a connection is up (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    // ---- internals -------------------------------------------------------------------------

    fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    /// Backoff before attempt `attempt` (1-based): base * 2^(attempt-1), capped, jittered to
    /// [d/2, d] by the generator seeded from the client id.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let d = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// One connection attempt to server `idx`: connect, Hello, wait for Welcome (following one
    /// redirect from a full node), send the resume plan. On success the connection becomes
    /// current; a node redirected to joins the server list, for later failovers.
    fn try_server(&mut self, idx: usize) -> Result<(), Attempt> {
        let addr = self.cfg.servers[idx].clone();
        let (mut conn, welcome, idx) = match self.handshake(&addr)? {
            Handshake::Welcome(conn, w) => (conn, w, idx),
            Handshake::Redirect(r) => match self.handshake(&r.addr)? {
                Handshake::Welcome(conn, w) => {
                    let idx = match self.cfg.servers.iter().position(|s| *s == r.addr) {
                        Some(i) => i,
                        None => {
                            self.cfg.servers.push(r.addr.clone());
                            self.cfg.servers.len() - 1
                        }
                    };
                    (conn, w, idx)
                }
                Handshake::Redirect(again) => {
                    let why = format!(
                        "{addr} redirected to {}, which redirected to {}",
                        r.addr, again.addr
                    );
                    return Err(Attempt::Retry(ClientError::Protocol(why)));
                }
            },
        };
        let plan = self.session.resume_frames();
        if !plan.is_empty() {
            let addr = self.cfg.servers[idx].clone();
            conn.send(&plan, self.cfg.request_timeout)
                .map_err(|b| Attempt::Retry(broken_error(&addr, b)))?;
        }
        self.conn = Some(conn);
        self.current = idx;
        self.welcome = Some(welcome);
        self.generation += 1;
        self.last_rx = Instant::now();
        self.ping_sent = None;
        Ok(())
    }

    /// Connects to `addr`, says Hello and waits for Welcome (or a redirect).
    fn handshake(&mut self, addr: &str) -> Result<Handshake, Attempt> {
        let mut conn = Conn::connect(addr, self.cfg.connect_timeout).map_err(|source| {
            Attempt::Retry(ClientError::Io {
                addr: addr.to_owned(),
                source,
            })
        })?;
        let hello = ClientFrame::Hello(Hello {
            user: self.cfg.user.clone(),
            client_id: self.cfg.client_id,
        });
        conn.send(&[hello], self.cfg.request_timeout)
            .map_err(|b| Attempt::Retry(broken_error(addr, b)))?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            match conn.recv(deadline) {
                Ok(Some(ServerFrame::Welcome(w))) => return Ok(Handshake::Welcome(conn, w)),
                Ok(Some(ServerFrame::Redirect(r))) => return Ok(Handshake::Redirect(r)),
                Ok(Some(ServerFrame::Error(e))) => {
                    let retry = matches!(
                        ErrorCode::from_u16(e.code),
                        Some(
                            ErrorCode::ShuttingDown
                                | ErrorCode::ServerFull
                                | ErrorCode::Busy
                                | ErrorCode::Internal
                                | ErrorCode::SlowConsumer
                                | ErrorCode::StorageFailed
                                | ErrorCode::NoLeader
                        )
                    );
                    let err = ClientError::server(e);
                    return Err(if retry {
                        Attempt::Retry(err)
                    } else {
                        Attempt::Fatal(err)
                    });
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(Attempt::Retry(ClientError::Timeout("Welcome"))),
                Err(b) => return Err(Attempt::Retry(broken_error(addr, b))),
            }
        }
    }

    /// The connection is unusable: drop it and start a reconnect cycle (or fail).
    fn broken(&mut self, err: ClientError) -> Result<(), ClientError> {
        self.conn = None;
        if !self.cfg.reconnect {
            return Err(err);
        }
        self.start_reconnect(err.to_string());
        Ok(())
    }

    fn start_reconnect(&mut self, cause: String) {
        let now = Instant::now();
        let delay = self.backoff(1);
        let from = self.current;
        self.recon = Some(Reconnect {
            attempt: 1,
            started: now,
            next_try: now + delay,
            from,
            last_error: cause,
        });
        let addr = self.cfg.servers[(from + 1) % self.cfg.servers.len()].clone();
        self.events
            .push_back(Event::Reconnecting { addr, attempt: 1 });
    }

    /// Advances the reconnect cycle until connected (`true`) or `deadline` (`false`).
    fn reconnect_step(&mut self, deadline: Instant) -> Result<bool, ClientError> {
        if self.recon.is_none() {
            let addr = self.server().to_owned();
            if !self.cfg.reconnect {
                return Err(ClientError::Disconnected {
                    addr,
                    reason: "the connection is closed".into(),
                });
            }
            self.start_reconnect("not connected".into());
        }
        let n = self.cfg.servers.len();
        loop {
            let Some(r) = self.recon.as_ref() else {
                return Ok(true);
            };
            let now = Instant::now();
            if now < r.next_try {
                if now >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(r.next_try.min(deadline) - now);
                continue;
            }
            let idx = (r.from + r.attempt as usize) % n;
            match self.try_server(idx) {
                Ok(()) => {
                    self.recon = None;
                    let addr = self.cfg.servers[idx].clone();
                    self.events.push_back(Event::Reconnected { addr });
                    return Ok(true);
                }
                Err(Attempt::Fatal(e)) => {
                    self.recon = None;
                    return Err(e);
                }
                Err(Attempt::Retry(e)) => {
                    let delay = self.backoff(self.recon.as_ref().map_or(1, |r| r.attempt + 1));
                    let (max_attempts, max_time) =
                        (self.cfg.reconnect_attempts, self.cfg.reconnect_timeout);
                    let Some(r) = self.recon.as_mut() else {
                        return Ok(true);
                    };
                    r.attempt += 1;
                    r.last_error = format!("{}: {e}", self.cfg.servers[idx]);
                    if r.attempt > max_attempts || r.started.elapsed() >= max_time {
                        let msg = format!(
                            "gave up after {} attempts in {:.1} s; last error: {}",
                            r.attempt - 1,
                            r.started.elapsed().as_secs_f64(),
                            r.last_error
                        );
                        self.recon = None;
                        return Err(ClientError::NoServer(msg));
                    }
                    r.next_try = Instant::now() + delay;
                    let (attempt, from) = (r.attempt, r.from);
                    let addr = self.cfg.servers[(from + attempt as usize) % n].clone();
                    self.events.push_back(Event::Reconnecting { addr, attempt });
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Writes frames on the current connection. Without one (reconnecting), does nothing: the
    /// resume plan and the waiting call re-send what matters.
    fn send_frames(&mut self, frames: &[ClientFrame]) -> Result<(), ClientError> {
        let timeout = self.cfg.request_timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match conn.send(frames, timeout) {
            Ok(()) => Ok(()),
            Err(Broken::Io(e)) if e.kind() == io::ErrorKind::InvalidInput => Err(
                ClientError::Protocol(format!("cannot encode the request: {e}")),
            ),
            Err(b) => {
                let err = broken_error(conn.addr(), b);
                self.broken(err)
            }
        }
    }

    /// Reads and books at most one frame, waiting until `deadline`; `Ok(None)` when nothing
    /// for the caller arrived (deadline reached, frame absorbed, or the connection changed).
    fn poll_once(&mut self, deadline: Instant) -> Result<Option<Incoming>, ClientError> {
        if self.conn.is_none() {
            self.reconnect_step(deadline)?;
            return Ok(None);
        }
        let now = Instant::now();
        let mut wake = deadline;
        let ka = self.cfg.keepalive;
        if !ka.is_zero() {
            if let Some(sent) = self.ping_sent {
                if now >= sent + ka {
                    let addr = self.server().to_owned();
                    let reason = format!(
                        "no answer from the server for {:.1} s",
                        (now - self.last_rx).as_secs_f64()
                    );
                    self.broken(ClientError::Disconnected { addr, reason })?;
                    return Ok(None);
                }
                wake = wake.min(sent + ka);
            } else {
                let due = self.last_rx + ka;
                if now >= due {
                    let nonce = self.nonce();
                    self.ping_sent = Some(now);
                    self.send_frames(&[ClientFrame::Ping(Ping { nonce })])?;
                    return Ok(None);
                }
                wake = wake.min(due);
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        match conn.recv(wake) {
            Ok(Some(frame)) => {
                self.last_rx = Instant::now();
                self.ping_sent = None;
                self.dispatch(frame)
            }
            Ok(None) => Ok(None),
            Err(b) => {
                let err = broken_error(conn.addr(), b);
                self.broken(err)?;
                Ok(None)
            }
        }
    }

    /// Session bookkeeping of one frame.
    fn dispatch(&mut self, frame: ServerFrame) -> Result<Option<Incoming>, ClientError> {
        Ok(match frame {
            ServerFrame::Message(m) => {
                if self.session.is_joined(&m.room) {
                    self.session
                        .accept_message(&m)
                        .then_some(Incoming::Event(Event::Message(m)))
                } else {
                    // A room being joined: the waiting join takes it as history.
                    Some(Incoming::Reply(ServerFrame::Message(m)))
                }
            }
            ServerFrame::Notice(n) => Some(Incoming::Event(Event::Notice(n))),
            ServerFrame::Ack(a) => self
                .session
                .settle(a.client_seq)
                .map(|_| Incoming::Event(Event::Ack(a))),
            ServerFrame::Error(e)
                if e.code == ErrorCode::ShuttingDown as u16
                    || e.code == ErrorCode::StorageFailed as u16
                    || e.code == ErrorCode::NoLeader as u16 =>
            {
                // The node goes away, cannot store writes, or is cut off from its leader: move
                // to another one (or report it); what was not acknowledged is sent again there.
                let err = ClientError::server(e);
                self.broken(err)?;
                None
            }
            ServerFrame::Error(e) => match e.client_seq {
                Some(cs) => {
                    self.session.settle(cs);
                    Some(Incoming::Event(Event::Error {
                        code: e.code,
                        client_seq: Some(cs),
                        message: e.message,
                    }))
                }
                None => Some(Incoming::Reply(ServerFrame::Error(e))),
            },
            other => Some(Incoming::Reply(other)),
        })
    }

    /// Queues what no caller claimed: events, and errors not tied to a request.
    fn pass(&mut self, inc: Incoming) {
        match inc {
            Incoming::Event(e) => self.events.push_back(e),
            Incoming::Reply(ServerFrame::Error(e)) => self.events.push_back(Event::Error {
                code: e.code,
                client_seq: e.client_seq,
                message: e.message,
            }),
            Incoming::Reply(_) => {}
        }
    }

    /// Sends `request` (again after every reconnect) and feeds incoming frames to `f` until it
    /// decides. Times out after `request_timeout` of connected time; a reconnect restarts it.
    fn wait_for<T>(
        &mut self,
        what: &'static str,
        request: Option<ClientFrame>,
        mut f: impl FnMut(Incoming) -> Step<T>,
    ) -> Result<T, ClientError> {
        let mut generation = self.generation;
        if let Some(req) = &request {
            self.send_frames(std::slice::from_ref(req))?;
        }
        let mut deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            let step = self.wait_step(what, request.as_ref(), &mut generation, &mut deadline)?;
            if let Some(inc) = step {
                match f(inc) {
                    Step::Done(t) => return Ok(t),
                    Step::Fail(e) => return Err(e),
                    Step::Used => {}
                    Step::Pass(inc) => self.pass(inc),
                }
            }
        }
    }

    /// One wait of a request for its answer: after a reconnect (a new `generation`) the request
    /// is sent again and its deadline restarts; once the deadline passes while connected it
    /// times out; while reconnecting the reconnect cycle's own bounds apply.
    fn wait_step(
        &mut self,
        what: &'static str,
        request: Option<&ClientFrame>,
        generation: &mut u64,
        deadline: &mut Instant,
    ) -> Result<Option<Incoming>, ClientError> {
        if self.generation != *generation {
            *generation = self.generation;
            if let Some(req) = request {
                self.send_frames(std::slice::from_ref(req))?;
            }
            *deadline = Instant::now() + self.cfg.request_timeout;
        }
        let now = Instant::now();
        let until = if self.conn.is_none() {
            now + self.cfg.reconnect_timeout
        } else if now >= *deadline {
            return Err(ClientError::Timeout(what));
        } else {
            *deadline
        };
        self.poll_once(until)
    }

    /// Processes frames (queueing them) until `cond` holds on the session.
    fn pump_until(
        &mut self,
        what: &'static str,
        cond: impl Fn(&Session) -> bool,
    ) -> Result<(), ClientError> {
        let mut generation = self.generation;
        let mut deadline = Instant::now() + self.cfg.request_timeout;
        while !cond(&self.session) {
            if let Some(inc) = self.wait_step(what, None, &mut generation, &mut deadline)? {
                self.pass(inc);
            }
        }
        Ok(())
    }
}

fn broken_error(addr: &str, b: Broken) -> ClientError {
    match b {
        Broken::Io(source) => ClientError::Io {
            addr: addr.to_owned(),
            source,
        },
        Broken::Closed => ClientError::Disconnected {
            addr: addr.to_owned(),
            reason: "closed by the server".into(),
        },
        Broken::Codec(e) => ClientError::Protocol(format!("from {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests;
