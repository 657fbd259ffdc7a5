//! The load tool's single-threaded mio event loop: many client connections, one `Poll`.
//!
//! Each connection has a read buffer (partial frames wait there until complete) and a write
//! queue (bytes the kernel would not take yet; write interest is armed only while it is
//! non-empty). The scenario code never sees sockets: it sends frames by connection index and
//! receives decoded frames, each stamped with the tool's monotonic clock right after the read.
//!
//! Deliveries, the frames a run receives millions of, are not decoded into owned frames: their
//! room and text are copied into one arena per poll, so the tool allocates nothing per delivery
//! and spends less of the CPU it shares with the server it measures.
//!
//! A `Net` speaks one protocol on all its connections: ringchat's wire codec, or RESP2 (Redis)
//! for `--target redis`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ringchat::codec::{self, ClientFrame, ServerFrame, ServerFrameRef};

use crate::resp;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// The protocol of every connection of a `Net`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// ringchat's binary codec.
    Ringchat,
    /// RESP2, the Redis protocol.
    Resp,
}

/// What happened on a connection.
pub enum Event {
    /// A chat message: a ringchat `Message` or a redis `message` push.
    Delivery(Delivery),
    /// Any other complete frame from a ringchat server (rare: boxed to keep events small).
    Frame(Box<ServerFrame>),
    /// Any other complete RESP2 value from a Redis server.
    Resp(resp::Value),
    /// The connection is gone (refused, reset, closed by the server, undecodable bytes).
    Closed(String),
}

/// A chat message whose room and text are in the arena of the poll that read it.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    /// The room sequence number (ringchat; redis has none).
    pub seq: Option<u64>,
    room: (usize, usize),
    text: (usize, usize),
}

impl Delivery {
    fn new(arena: &mut Vec<u8>, seq: Option<u64>, room: &[u8], text: &[u8]) -> Delivery {
        let mut put = |b: &[u8]| {
            arena.extend_from_slice(b);
            (arena.len() - b.len(), arena.len())
        };
        Delivery {
            seq,
            room: put(room),
            text: put(text),
        }
    }

    /// The room (redis: the channel), from the arena `Net::take_arena` returned.
    pub fn room<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.room.0..self.room.1]
    }

    /// The message text (redis: the payload).
    pub fn text<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.text.0..self.text.1]
    }
}

struct Conn {
    /// `None` once closed.
    stream: Option<TcpStream>,
    connected: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    writable_armed: bool,
}

/// The tool's monotonic clock: nanoseconds since the tool started.
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the tool started.
    pub fn nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the tool started.
    pub fn at(&self, nanos: u64) -> Instant {
        self.start + Duration::from_nanos(nanos)
    }
}

/// All of the tool's connections and their poll.
pub struct Net {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    /// The bytes of the last poll's deliveries.
    arena: Vec<u8>,
    clock: Clock,
    /// Connection i goes to `addrs[i % len]`.
    addrs: Vec<SocketAddr>,
    proto: Proto,
    /// Connections opened and not yet closed.
    pub open: usize,
}

impl Net {
    /// A `Net` speaking ringchat's codec.
    pub fn new(addrs: Vec<SocketAddr>, clock: Clock) -> io::Result<Net> {
        Net::with_proto(addrs, clock, Proto::Ringchat)
    }

    /// A `Net` speaking `proto` on every connection.
    pub fn with_proto(addrs: Vec<SocketAddr>, clock: Clock, proto: Proto) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            arena: Vec::new(),
            clock,
            addrs,
            proto,
            open: 0,
        })
    }

    /// The bytes of the deliveries the last `poll` returned, for `Delivery::room` and `text`;
    /// hand them back with `restore_arena` so the next poll reuses the allocation.
    pub fn take_arena(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.arena)
    }

    /// Gives back what `take_arena` returned.
    pub fn restore_arena(&mut self, arena: Vec<u8>) {
        self.arena = arena;
    }

    /// Starts a non-blocking connect; returns the connection's index. A connect that fails at
    /// once is reported as a `Closed` event by the next `poll`.
    pub fn connect(&mut self, pending: &mut Vec<(usize, u64, Event)>) -> usize {
        let idx = self.conns.len();
        let mut conn = Conn {
            stream: None,
            connected: false,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            writable_armed: true,
        };
        let addr = self.addrs[idx % self.addrs.len()];
        let result = TcpStream::connect(addr).and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match result {
            Ok(s) => {
                conn.stream = Some(s);
                self.open += 1;
            }
            Err(e) => pending.push((
                idx,
                self.clock.nanos(),
                Event::Closed(format!("connect: {e}")),
            )),
        }
        self.conns.push(conn);
        idx
    }

    /// Queues `frame` on connection `idx` and writes what the kernel takes now. Returns false if
    /// the connection is closed (the frame is dropped).
    pub fn send(
        &mut self,
        idx: usize,
        frame: &ClientFrame,
        out: &mut Vec<(usize, u64, Event)>,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(idx) else {
            return false;
        };
        if conn.stream.is_none() {
            return false;
        }
        debug_assert_eq!(self.proto, Proto::Ringchat);
        if let Err(e) = codec::encode_into(frame, &mut conn.wbuf) {
            self.close(idx, format!("cannot encode frame: {e}"), out);
            return false;
        }
        if conn.connected {
            self.flush(idx, out);
        }
        true
    }

    /// Queues the RESP2 command `args` on connection `idx` and writes what the kernel takes now.
    /// Returns false if the connection is closed (the command is dropped).
    pub fn send_command(
        &mut self,
        idx: usize,
        args: &[&[u8]],
        out: &mut Vec<(usize, u64, Event)>,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(idx) else {
            return false;
        };
        if conn.stream.is_none() {
            return false;
        }
        debug_assert_eq!(self.proto, Proto::Resp);
        resp::encode_command(args, &mut conn.wbuf);
        if conn.connected {
            self.flush(idx, out);
        }
        true
    }

    /// Closes connection `idx` (if open) and reports it as a `Closed` event with `reason`.
    pub fn close(&mut self, idx: usize, reason: String, out: &mut Vec<(usize, u64, Event)>) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if let Some(mut s) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            self.open -= 1;
            conn.rbuf = Vec::new();
            conn.wbuf = Vec::new();
            conn.wpos = 0;
            out.push((idx, self.clock.nanos(), Event::Closed(reason)));
        }
    }

    /// Closes every connection without reporting events.
    pub fn close_all(&mut self) {
        for conn in &mut self.conns {
            if let Some(mut s) = conn.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
                conn.rbuf = Vec::new();
                conn.wbuf = Vec::new();
            }
        }
        self.open = 0;
    }

    /// Waits up to `timeout` for socket readiness, then does all the I/O that is ready and
    /// appends what happened to `out`: (connection, receive time in tool nanos, event).
    pub fn poll(
        &mut self,
        timeout: Duration,
        out: &mut Vec<(usize, u64, Event)>,
    ) -> io::Result<()> {
        self.arena.clear();
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // (connection, readable, closing: read to the end, writable)
        let ready: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                let closing = e.is_read_closed() || e.is_error();
                let r = e.is_readable() || closing;
                let w = e.is_writable() || e.is_write_closed() || e.is_error();
                (e.token().0, r, closing, w)
            })
            .collect();
        for (idx, readable, closing, writable) in ready {
            if self.conns.get(idx).is_none_or(|c| c.stream.is_none()) {
                continue;
            }
            if !self.conns[idx].connected {
                match self.check_connected(idx) {
                    Ok(true) => {
                        self.conns[idx].connected = true;
                        self.flush(idx, out);
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        self.close(idx, format!("connect: {e}"), out);
                        continue;
                    }
                }
            } else if writable {
                self.flush(idx, out);
            }
            if readable {
                self.read(idx, closing, out);
            }
        }
        Ok(())
    }

    /// After a readiness event on a connecting socket: connected, still connecting, or failed.
    fn check_connected(&mut self, idx: usize) -> io::Result<bool> {
        let Some(s) = self.conns[idx].stream.as_ref() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => {
                s.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes queued bytes until done or `WouldBlock`; arms write interest only while needed.
    fn flush(&mut self, idx: usize, out: &mut Vec<(usize, u64, Event)>) {
        let conn = &mut self.conns[idx];
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        let mut failure = None;
        while conn.wpos < conn.wbuf.len() {
            match stream.write(&conn.wbuf[conn.wpos..]) {
                Ok(0) => {
                    failure = Some("write returned 0".to_owned());
                    break;
                }
                Ok(n) => conn.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        if let Some(reason) = failure {
            return self.close(idx, reason, out);
        }
        let drained = conn.wpos == conn.wbuf.len();
        if drained {
            conn.wbuf.clear();
            conn.wpos = 0;
        } else if conn.wpos > 64 * 1024 && conn.wpos * 2 > conn.wbuf.len() {
            conn.wbuf.drain(..conn.wpos);
            conn.wpos = 0;
        }
        if drained == conn.writable_armed {
            let interest = if drained {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(stream, Token(idx), interest)
            {
                return self.close(idx, format!("reregister: {e}"), out);
            }
            conn.writable_armed = !drained;
        }
    }

    /// Reads until `WouldBlock`, EOF or (unless `closing`) a short read, then decodes every
    /// complete frame; a partial frame stays buffered for the next read.
    fn read(&mut self, idx: usize, closing: bool, out: &mut Vec<(usize, u64, Event)>) {
        let mut closed = None;
        let mut now = 0;
        {
            let conn = &mut self.conns[idx];
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            loop {
                match stream.read(&mut self.scratch) {
                    Ok(0) => {
                        closed = Some("closed by the server".to_owned());
                        break;
                    }
                    Ok(n) => {
                        conn.rbuf.extend_from_slice(&self.scratch[..n]);
                        now = self.clock.nanos();
                        if n < self.scratch.len() && !closing {
                            // The socket is empty: bytes that arrive later raise a new
                            // edge-triggered event, so a read that would say WouldBlock is saved.
                            // Not when the peer has closed: no event would report that again.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        closed = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
            let mut used = 0;
            while used < conn.rbuf.len() {
                let rest = &conn.rbuf[used..];
                let arena = &mut self.arena;
                let decoded = match self.proto {
                    Proto::Ringchat => codec::decode_server_ref(rest)
                        .map(|r| {
                            r.map(|(f, n)| match f {
                                ServerFrameRef::Message(m) => {
                                    let d = Delivery::new(arena, Some(m.seq), m.room, m.text);
                                    (Event::Delivery(d), n)
                                }
                                ServerFrameRef::Other(f) => (Event::Frame(f), n),
                            })
                        })
                        .map_err(|e| e.to_string()),
                    Proto::Resp => resp::decode_frame(rest)
                        .map(|r| {
                            r.map(|(f, n)| match f {
                                resp::Frame::Message { channel, payload } => {
                                    let d = Delivery::new(arena, None, &channel, &payload);
                                    (Event::Delivery(d), n)
                                }
                                resp::Frame::Other(v) => (Event::Resp(v), n),
                            })
                        })
                        .map_err(|e| e.to_string()),
                };
                match decoded {
                    Ok(Some((event, n))) => {
                        used += n;
                        out.push((idx, now, event));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        closed = Some(format!("undecodable bytes from the server: {e}"));
                        break;
                    }
                }
            }
            conn.rbuf.drain(..used);
            if conn.rbuf.is_empty() && conn.rbuf.capacity() > READ_CHUNK {
                conn.rbuf = Vec::new();
            }
        }
        if let Some(reason) = closed {
            self.close(idx, reason, out);
        }
    }
}
