//! The shell of the join client ([`crate::core::join`]) for `--join`: the state machine
//! decides whom to ask, when, and when to stop; this file only moves its bytes.
//!
//! Two shells drive the one client. Before the event loop runs, the node serves nothing and
//! may block: [`Joiner::join_before_serving`] opens each connection with std sockets, their
//! timeouts set to the client's deadline, and sleeps through its backoff. Inside the loop (the
//! core says a join stalled: `Ready::rejoin`) nothing may block: the request goes out on a
//! non-blocking socket registered under [`JOIN`], its answer comes back through the same
//! frame reassembly as every link's ([`InBuf`]), and the loop's poll timeout includes the
//! client's deadline.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::conn::InBuf;
use super::peers::{Mesh, PEER_BASE};
use super::{DaemonConfig, DriverError};
use crate::codec::{FrameSet, JoinReply, JoinRequest, PeerFrame};
use crate::core::join::{
    JoinAction, JoinAttempt, JoinClient, JoinFailure, JoinOutcome, JoinPolicy,
};
use crate::core::{Node, NodeId, SharedBytes};

/// The token of the join client's connection (one at a time): just below the mesh's range
/// (which ends at the reserved tokens at the top), far above any client connection's key.
pub(super) const JOIN: Token = Token(PEER_BASE - 1);

/// Longest a new node tries to get itself added at startup before the daemon gives up.
const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// The join client of a node started with `--join`, and its connection in the event loop.
pub(super) struct Joiner {
    id: NodeId,
    client: JoinClient,
    conn: Option<JoinConn>,
}

/// The connection of the request out, in the event loop.
struct JoinConn {
    attempt: JoinAttempt,
    stream: TcpStream,
    input: InBuf,
    request: SharedBytes,
    /// Bytes of `request` written so far.
    sent: usize,
    /// The non-blocking connect completed.
    connected: bool,
}

impl Joiner {
    /// The client for `--join via`: it asks to add this node with its peer and client
    /// addresses.
    pub(super) fn new(
        config: &DaemonConfig,
        via: SocketAddr,
        mesh: &Mesh,
    ) -> Result<Joiner, DriverError> {
        let request = JoinRequest {
            cluster_id: config.cluster_id,
            node_id: config.id,
            peer_addr: mesh.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            client_addr: mesh.client_addr().to_owned(),
        };
        // Seeded by the id, as the mesh's dials: nodes joining together draw apart.
        let seed = 0x6a6f_696e ^ u64::from(config.id);
        let client = JoinClient::new(&request, via.to_string(), JoinPolicy::default(), seed)
            .map_err(|e| DriverError::Join(format!("cannot encode the join request: {e}")))?;
        Ok(Joiner {
            id: config.id,
            client,
            conn: None,
        })
    }

    /// Before the loop: asks until a leader accepts the node (then tells `node`), a member
    /// refuses it for good, or [`JOIN_LIMIT`] passes. Blocks: the node serves nothing yet.
    pub(super) fn join_before_serving(&mut self, node: &mut Node) -> Result<(), DriverError> {
        self.client.start(Instant::now(), Some(JOIN_LIMIT));
        loop {
            let ready = self.client.turn(Instant::now());
            for action in ready.actions {
                // Each request is over before the next turn: nothing stays open to close.
                let JoinAction::Connect {
                    attempt,
                    addr,
                    bytes,
                } = action
                else {
                    continue;
                };
                let by = self.client.deadline().unwrap_or_else(Instant::now);
                match ask_blocking(&addr, &bytes, by) {
                    Ok(Some(reply)) => self.client.handle_reply(Instant::now(), attempt, reply),
                    // Timed out: the client's deadline says so at its next turn.
                    Ok(None) => {}
                    Err(failure) => self.client.handle_failure(Instant::now(), attempt, failure),
                }
            }
            match ready.outcome {
                Some(JoinOutcome::Accepted { leader, addr }) => {
                    node.handle_join_accepted(super::now().mono, leader, addr);
                    return Ok(());
                }
                Some(JoinOutcome::Refused(why)) | Some(JoinOutcome::GaveUp(why)) => {
                    return Err(DriverError::Join(why))
                }
                None => {}
            }
            if let Some(at) = self.client.deadline() {
                sleep(at.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// In the loop: the node's join stalled; ask again (unless a request is out already).
    pub(super) fn rejoin(&mut self, now: Instant) {
        self.client.start(now, None);
    }

    /// When the client next needs a turn.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.client.deadline()
    }

    /// The connection's socket is ready: complete the connect, write the request, read the
    /// answer; what happened goes to the client (carried out at the next [`Joiner::pump`]).
    pub(super) fn ready(&mut self, now: Instant, event: &Event, registry: &Registry) {
        let Some(c) = self.conn.as_mut() else {
            return; // spurious: the request is over
        };
        if let Err(failure) = c.progress(event) {
            return self.fail(now, failure, registry);
        }
        if !c.connected {
            return;
        }
        let mut scratch = [0u8; 4096];
        loop {
            match c.stream.read(&mut scratch) {
                Ok(0) => {
                    let failure = JoinFailure::Closed("the member closed the connection".into());
                    return self.fail(now, failure, registry);
                }
                Ok(n) => match take_reply(&mut c.input, &scratch[..n]) {
                    Ok(Some(reply)) => return self.client.handle_reply(now, c.attempt, reply),
                    Ok(None) => {}
                    Err(failure) => return self.fail(now, failure, registry),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(now, JoinFailure::Closed(e.to_string()), registry),
            }
        }
    }

    /// The client's turn: opens and closes what it asks for; returns how the join ended, if
    /// it did.
    pub(super) fn pump(&mut self, now: Instant, registry: &Registry) -> Option<JoinOutcome> {
        let ready = self.client.turn(now);
        for action in ready.actions {
            match action {
                JoinAction::Connect {
                    attempt,
                    addr,
                    bytes,
                } => self.open(now, attempt, &addr, bytes, registry),
                JoinAction::Close { attempt } => {
                    if self.conn.as_ref().is_some_and(|c| c.attempt == attempt) {
                        self.drop_conn(registry);
                    }
                }
            }
        }
        ready.outcome
    }

    fn open(
        &mut self,
        now: Instant,
        attempt: JoinAttempt,
        addr: &str,
        request: SharedBytes,
        registry: &Registry,
    ) {
        self.drop_conn(registry);
        let opened = addr
            .parse::<SocketAddr>()
            .map_err(|e| format!("bad address {addr:?}: {e}"))
            .and_then(|sock| TcpStream::connect(sock).map_err(|e| e.to_string()));
        let mut stream = match opened {
            Ok(s) => s,
            Err(why) => {
                return self
                    .client
                    .handle_failure(now, attempt, JoinFailure::Unreachable(why))
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = registry.register(&mut stream, JOIN, interest) {
            let why = format!("cannot register the socket: {e}");
            return self
                .client
                .handle_failure(now, attempt, JoinFailure::Unreachable(why));
        }
        debug!("node {}: join request {} to {addr}", self.id, attempt.0);
        self.conn = Some(JoinConn {
            attempt,
            stream,
            input: InBuf::new(),
            request,
            sent: 0,
            connected: false,
        });
    }

    fn fail(&mut self, now: Instant, failure: JoinFailure, registry: &Registry) {
        if let Some(c) = &self.conn {
            let attempt = c.attempt;
            debug!("node {}: join request {}: {failure}", self.id, attempt.0);
            self.drop_conn(registry);
            self.client.handle_failure(now, attempt, failure);
        }
    }

    fn drop_conn(&mut self, registry: &Registry) {
        if let Some(mut c) = self.conn.take() {
            if let Err(e) = registry.deregister(&mut c.stream) {
                warn!("node {}: deregistering the join connection: {e}", self.id);
            }
        }
    }
}

impl JoinConn {
    /// Completes the connect (a non-blocking connect reports its end as WRITABLE, with the
    /// error if it failed) and writes what is left of the request.
    fn progress(&mut self, event: &Event) -> Result<(), JoinFailure> {
        if !self.connected {
            if let Some(e) = self.stream.take_error().ok().flatten() {
                return Err(JoinFailure::Unreachable(e.to_string()));
            }
            match self.stream.peer_addr() {
                Ok(_) => self.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !event.is_error() => {
                    return Ok(()); // still connecting
                }
                Err(e) => return Err(JoinFailure::Unreachable(e.to_string())),
            }
            let _ = self.stream.set_nodelay(true);
        }
        while self.sent < self.request.len() {
            match self.stream.write(&self.request[self.sent..]) {
                Ok(0) => return Err(JoinFailure::Closed("write returned 0".into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(JoinFailure::Closed(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Feeds `data` read from a member; the answer once complete. The member greets every new
/// link with its peer Hello first: skipped.
fn take_reply(input: &mut InBuf, data: &[u8]) -> Result<Option<JoinReply>, JoinFailure> {
    let mut reply = None;
    let mut other = None;
    input
        .feed_frames::<PeerFrame>(data, |frame| match frame {
            PeerFrame::Hello(_) => {}
            PeerFrame::JoinReply(r) => {
                reply.get_or_insert(r);
            }
            f => {
                other.get_or_insert(f.kind());
            }
        })
        .map_err(|e| JoinFailure::Garbled(e.to_string()))?;
    match (reply, other) {
        (Some(r), _) => Ok(Some(r)),
        (None, Some(kind)) => Err(JoinFailure::Garbled(format!(
            "frame kind {kind:#04x} instead of a join answer"
        ))),
        (None, None) => Ok(None),
    }
}

/// One request with blocking std sockets, all of it done by `by`: the answer, None if `by`
/// passed first, or the failure.
fn ask_blocking(addr: &str, request: &[u8], by: Instant) -> Result<Option<JoinReply>, JoinFailure> {
    let left = || by.saturating_duration_since(Instant::now());
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| JoinFailure::Unreachable(format!("bad address {addr:?}: {e}")))?;
    if left().is_zero() {
        return Ok(None);
    }
    let mut s = match std::net::TcpStream::connect_timeout(&sock, left()) {
        Ok(s) => s,
        Err(e) if timed_out(&e) => return Ok(None),
        Err(e) => return Err(JoinFailure::Unreachable(e.to_string())),
    };
    let _ = s.set_nodelay(true);
    let io_failure = |e: io::Error| JoinFailure::Closed(e.to_string());
    // A zero timeout means none: at least a millisecond.
    let at_least_1ms = |d: Duration| d.max(Duration::from_millis(1));
    s.set_write_timeout(Some(at_least_1ms(left())))
        .map_err(io_failure)?;
    match s.write_all(request) {
        Ok(()) => {}
        Err(e) if timed_out(&e) => return Ok(None),
        Err(e) => return Err(io_failure(e)),
    }
    let mut input = InBuf::new();
    let mut scratch = [0u8; 4096];
    loop {
        let rest = left();
        if rest.is_zero() {
            return Ok(None);
        }
        s.set_read_timeout(Some(at_least_1ms(rest)))
            .map_err(io_failure)?;
        match s.read(&mut scratch) {
            Ok(0) => {
                let why = "the member closed the connection".into();
                return Err(JoinFailure::Closed(why));
            }
            Ok(n) => {
                if let Some(reply) = take_reply(&mut input, &scratch[..n])? {
                    return Ok(Some(reply));
                }
            }
            Err(e) if timed_out(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e)),
        }
    }
}

#[cfg(test)]
mod tests;
