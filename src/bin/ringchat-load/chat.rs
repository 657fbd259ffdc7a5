//! The `closed` and `open` scenarios: rooms of members, each member its own connection, every
//! delivery checked (loss, duplicates, order) and timed end to end.
//!
//! Message text is `"{sender} {msg_no} {send_nanos}"` padded to `--text-bytes`, where `sender`
//! is the member's global index and `send_nanos` the tool's monotonic clock. All clients live in
//! this process, so latency = receive time - send time, for every recipient.
//!
//! With `--target redis` the same scenario runs against a redis-server's PUBLISH/SUBSCRIBE, for
//! comparison: each member has a subscriber connection (`SUBSCRIBE <room>`; the subscribe
//! confirmation plays the role of Joined, together with a `PONG` on the other connection) and a
//! publisher connection (`PUBLISH <room> <text>`; the integer reply plays the role of the Ack).
//! Deliveries are the `message` pushes on subscriber connections. Redis has no room sequence
//! numbers, so the seq order check is replaced by a per-sender one: a message must not arrive
//! before the same sender's previous message.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringchat::codec::{self, ClientFrame, ErrorCode, ServerFrame};
use serde_json::{json, Value};

use crate::net::{Clock, Event, Net, Proto};
use crate::procfs::{self, CpuSample};
use crate::report::{self, round1, round3, CpuUse, Latency};
use crate::resp;
use crate::{Common, Stall, Verdict, JOIN_STALLED, JOIN_TIMED_OUT};

/// The servers as given, comma separated, for reports.
pub fn server_list(servers: &[std::net::SocketAddr]) -> String {
    servers
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What server the scenario runs against.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Target {
    /// A ringchat daemon (its wire codec; Hello, Join, Say).
    Ringchat,
    /// A redis-server, over RESP2: SUBSCRIBE on one connection, PUBLISH on another, per member.
    Redis,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ringchat => "ringchat",
            Target::Redis => "redis",
        }
    }

    /// Connections per member.
    fn conns(self) -> usize {
        match self {
            Target::Ringchat => 1,
            Target::Redis => 2,
        }
    }
}

/// What a connection is for. With ringchat a member's one connection is both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Receives deliveries (ringchat: also sends).
    Sub,
    /// Redis only: PUBLISHes.
    Pub,
}

/// How members send.
pub enum Load {
    /// Each member sends `messages`, the next only once its previous one came back.
    Closed {
        messages: u64,
        /// Stop if nothing at all is delivered for this long.
        stall: Duration,
    },
    /// A fixed aggregate rate spread round-robin over all members, by the clock.
    Open {
        rate: f64,
        duration: Duration,
        /// Longest wait for outstanding deliveries after the last send.
        drain: Duration,
    },
}

/// What the scenario runs.
pub struct ChatOpts {
    pub common: Common,
    pub target: Target,
    pub rooms: usize,
    pub members: usize,
    pub text_bytes: usize,
    pub load: Load,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not connected yet.
    Waiting,
    /// Hello and Join sent, Joined not received (redis: SUBSCRIBE and PING sent, the
    /// confirmation and PONG not both received).
    Handshake,
    Joined,
    Dead,
}

struct Member {
    room: usize,
    /// Index within its room.
    pos: usize,
    user: String,
    stage: Stage,
    joined_ever: bool,
    /// Redis: the subscribe confirmation came.
    sub_ready: bool,
    /// Redis: the publisher connection answered PING.
    pub_ready: bool,
    /// Messages sent (the next msg_no).
    sent: u64,
    /// (client_seq, send nanos) of Says not acknowledged yet, oldest first.
    unacked: VecDeque<(u64, u64)>,
    /// As a receiver: last room seq seen (ringchat only).
    last_seq: u64,
    /// As a receiver: distinct messages received.
    unique: u64,
    /// As a receiver: bit (msg_no * members per room + sender pos) set once received.
    /// Redis: a message whose same-sender predecessor's bit is unset is out of order.
    seen: Vec<u64>,
}

struct Room {
    /// The ringchat room, or the Redis channel.
    name: String,
    /// Says written to the server.
    sent: u64,
    /// Says the server refused with an Error frame.
    rejected: u64,
}

#[derive(Default)]
struct Counters {
    sent: u64,
    acked: u64,
    rejected: u64,
    /// Says that could not be sent because the member's connection was gone.
    unsent: u64,
    deliveries: u64,
    unique: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Messages not from this run's members, or for another room.
    foreign: u64,
    /// Messages replayed before Joined.
    history: u64,
    errors: u64,
    conn_failures: u64,
}

struct Run {
    opts: ChatOpts,
    clock: Clock,
    net: Net,
    members: Vec<Member>,
    rooms: Vec<Room>,
    /// Most messages one member may send (the bitmaps hold `cap` bits per room member).
    cap: u64,
    events: Vec<(usize, u64, Event)>,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
    /// Open runs: how late each send was against its schedule.
    send_lag: Histogram<u64>,
    c: Counters,
    samples: Vec<String>,
    launched: usize,
    in_handshake: usize,
    joined: usize,
    /// Members joined whose connection is still up.
    live: usize,
    dead: usize,
    deadline: Instant,
    last_progress: u64,
    pad: String,
    /// Random high bits of this run's client ids (the low 32 bits are the member index): the
    /// server de-duplicates Says by (client_id, client_seq), so ids must not repeat across runs.
    client_base: u64,
}

/// Shown for at most this many errors and connection failures each.
const MAX_SAMPLES: usize = 5;

/// Runs a `closed` or `open` scenario, prints its report; returns true if it was clean.
pub fn run(opts: ChatOpts, clock: Clock) -> Result<Verdict, String> {
    let total = opts.rooms * opts.members;
    if total == 0 {
        return Err("--rooms and --members must be at least 1".into());
    }
    let cap = match opts.load {
        Load::Closed { messages, .. } => messages,
        Load::Open { rate, duration, .. } => {
            if rate.is_nan() || rate <= 0.0 || !rate.is_finite() {
                return Err("--rate must be a positive number".into());
            }
            planned_sends(rate, duration).div_ceil(total as u64)
        }
    };
    let bitmap_words = (opts.members as u64 * cap).div_ceil(64);
    if bitmap_words.saturating_mul(total as u64) > 512 * 1024 * 1024 / 8 {
        return Err(format!(
            "{total} members x {cap} messages each is too much bookkeeping (over 512 MiB); \
             use fewer members or messages"
        ));
    }
    let conns = total * opts.target.conns();
    match procfs::raise_nofile() {
        Ok((soft, _)) if (soft as usize) < conns + 16 => {
            return Err(format!(
                "{conns} connections need more file descriptors than the limit of {soft}"
            ))
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the file descriptor limit: {e}"),
    }
    let run_id = run_id();
    let rooms: Vec<Room> = (0..opts.rooms)
        .map(|r| Room {
            name: format!("load-{run_id}-r{r}"),
            sent: 0,
            rejected: 0,
        })
        .collect();
    let members = (0..total)
        .map(|i| Member {
            room: i / opts.members,
            pos: i % opts.members,
            user: format!("load-{run_id}-r{}-m{}", i / opts.members, i % opts.members),
            stage: Stage::Waiting,
            joined_ever: false,
            sub_ready: false,
            pub_ready: false,
            sent: 0,
            unacked: VecDeque::new(),
            last_seq: 0,
            unique: 0,
            seen: Vec::new(),
        })
        .collect();
    let proto = match opts.target {
        Target::Ringchat => Proto::Ringchat,
        Target::Redis => Proto::Resp,
    };
    if opts.target == Target::Redis && opts.common.servers.len() != 1 {
        return Err("--target redis takes one --server".into());
    }
    let net = Net::with_proto(opts.common.servers.clone(), clock, proto)
        .map_err(|e| format!("cannot create poll: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.common.timeout_secs);
    let mut run = Run {
        clock,
        net,
        members,
        rooms,
        cap,
        events: Vec::new(),
        latency: report::histogram(),
        ack_latency: report::histogram(),
        send_lag: report::histogram(),
        c: Counters::default(),
        samples: Vec::new(),
        launched: 0,
        in_handshake: 0,
        joined: 0,
        live: 0,
        dead: 0,
        deadline,
        last_progress: 0,
        pad: String::new(),
        client_base: fastrand::u64(..) << 32,
        opts,
    };
    run.go()
}

/// Sends in an open run of `duration` at `rate`.
fn planned_sends(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).round().max(1.0) as u64
}

/// A short tag making this run's user and room names unique on a long-lived server.
fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut n = t % 36u64.pow(6);
    let mut s = Vec::new();
    for _ in 0..6 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    String::from_utf8(s).unwrap_or_default()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Sub => "subscriber",
        Role::Pub => "publisher",
    }
}

/// Parses `"{sender} {msg_no} {send_nanos} ..."`: three decimal fields, one space apart. Runs
/// once per delivery, so it reads the bytes once, without a UTF-8 check or splitting.
fn parse_text(text: &[u8]) -> Option<(usize, u64, u64)> {
    let mut fields = [0u64; 3];
    let mut bytes = text.iter();
    for field in &mut fields {
        let mut digits = 0;
        for &b in bytes.by_ref() {
            if b == b' ' {
                break;
            }
            if !b.is_ascii_digit() {
                return None;
            }
            *field = field.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            digits += 1;
        }
        if digits == 0 {
            return None;
        }
    }
    Some((usize::try_from(fields[0]).ok()?, fields[1], fields[2]))
}

impl Run {
    fn go(&mut self) -> Result<Verdict, String> {
        let clk = procfs::clk_tck();
        let join_start = self.clock.nanos();
        let gave_up_joining = self.join_all()?;
        let join_secs = (self.clock.nanos() - join_start) as f64 / 1e9;

        let cpu0 = CpuSample::take(&self.opts.common.pids);
        let t0 = self.clock.nanos();
        self.last_progress = t0;
        let outcome = if let Some(why) = gave_up_joining {
            why
        } else if self.joined == 0 {
            "no member joined"
        } else {
            match self.opts.load {
                Load::Closed { .. } => self.closed_loop()?,
                Load::Open { .. } => self.open_loop(t0)?,
            }
        };
        let t1 = self.clock.nanos();
        let cpu1 = CpuSample::take(&self.opts.common.pids);
        let cpu = CpuUse::between(cpu0, cpu1, clk, ("delivery", "deliveries"), self.c.unique);
        let clean = self.report(outcome, join_secs, (t1 - t0) as f64 / 1e9, &cpu);
        Ok(if self.joined == 0 {
            Verdict::NoneJoined
        } else {
            Verdict::of(clean)
        })
    }

    /// Waits for socket events (at most `timeout`, and never past the global deadline) and
    /// handles everything they bring, including events the handling itself causes.
    fn pump(&mut self, timeout: Duration) -> Result<(), String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.net
            .poll(timeout.min(left), &mut self.events)
            .map_err(|e| format!("poll: {e}"))?;
        self.drain_events();
        Ok(())
    }

    fn drain_events(&mut self) {
        let arena = self.net.take_arena();
        while !self.events.is_empty() {
            let batch = std::mem::take(&mut self.events);
            for (idx, now, ev) in batch {
                self.handle(idx, now, ev, &arena);
            }
        }
        self.net.restore_arena(arena);
    }

    /// Connects every member (at most `--batch` handshakes at once), Hello then Join, and waits
    /// for each Joined (redis: SUBSCRIBE and PING, and waits for the confirmation and PONG).
    /// Why it gave up, if it did (the timeout, or no handshake finishing for too long).
    fn join_all(&mut self) -> Result<Option<&'static str>, String> {
        let total = self.members.len();
        let mut stall = Stall::new(self.opts.common.join_stall);
        loop {
            while self.launched < total && self.in_handshake < self.opts.common.batch {
                let i = self.launched;
                self.launched += 1;
                self.in_handshake += 1;
                self.members[i].stage = Stage::Handshake;
                match self.opts.target {
                    Target::Ringchat => {
                        let idx = self.net.connect(&mut self.events);
                        debug_assert_eq!(idx, i);
                        let hello = ClientFrame::Hello(codec::Hello {
                            user: self.members[i].user.clone(),
                            client_id: self.client_base | i as u64,
                        });
                        let join = ClientFrame::Join(codec::Join {
                            room: self.rooms[self.members[i].room].name.clone(),
                            after_seq: None,
                        });
                        self.net.send(i, &hello, &mut self.events);
                        self.net.send(i, &join, &mut self.events);
                    }
                    Target::Redis => {
                        let sub = self.net.connect(&mut self.events);
                        let publ = self.net.connect(&mut self.events);
                        debug_assert_eq!((sub, publ), (2 * i, 2 * i + 1));
                        let channel = self.rooms[self.members[i].room].name.as_bytes();
                        self.net
                            .send_command(sub, &[b"SUBSCRIBE", channel], &mut self.events);
                        self.net.send_command(publ, &[b"PING"], &mut self.events);
                    }
                }
                self.drain_events();
            }
            if self.joined + self.dead >= total {
                return Ok(None);
            }
            if Instant::now() >= self.deadline {
                return Ok(Some(JOIN_TIMED_OUT));
            }
            if stall.stalled(self.joined + self.dead) {
                return Ok(Some(JOIN_STALLED));
            }
            self.pump(Duration::from_millis(100))?;
        }
    }

    fn closed_loop(&mut self) -> Result<&'static str, String> {
        let Load::Closed { messages, stall } = self.opts.load else {
            unreachable!("closed_loop on an open run")
        };
        // Members that died while joining will never send.
        // Members that never joined will never send (those that joined and died already
        // counted their unsent messages when their connection closed).
        let never = self.members.iter().filter(|m| !m.joined_ever).count() as u64;
        self.c.unsent += never * messages;
        for i in 0..self.members.len() {
            if messages > 0 && self.members[i].stage == Stage::Joined {
                self.say(i);
            }
        }
        let target = messages * self.members.len() as u64;
        loop {
            if self.live == 0 {
                return Ok("every connection was lost");
            }
            if self.c.sent + self.c.unsent >= target && self.all_delivered() {
                return Ok("complete");
            }
            if Instant::now() >= self.deadline {
                return Ok("timed out (--timeout-secs)");
            }
            if self.clock.nanos() - self.last_progress > stall.as_nanos() as u64 {
                return Ok("stalled (nothing delivered for --stall-secs)");
            }
            self.pump(Duration::from_millis(100))?;
        }
    }

    fn open_loop(&mut self, t0: u64) -> Result<&'static str, String> {
        let Load::Open {
            rate,
            duration,
            drain,
        } = self.opts.load
        else {
            unreachable!("open_loop on a closed run")
        };
        let planned = planned_sends(rate, duration);
        let interval = 1e9 / rate;
        let at = |k: u64| t0 + (k as f64 * interval) as u64;
        let n = self.members.len() as u64;
        let mut k = 0;
        let mut drain_until = None;
        loop {
            let now = self.clock.nanos();
            // Sends that are due, by the schedule (not by replies).
            while k < planned && at(k) <= now {
                let sender = (k % n) as usize;
                if self.members[sender].stage == Stage::Joined
                    && self.members[sender].sent < self.cap
                {
                    self.send_lag.saturating_record((now - at(k)).max(1));
                    self.say(sender);
                } else {
                    self.c.unsent += 1;
                }
                k += 1;
            }
            if self.live == 0 {
                return Ok("every connection was lost");
            }
            if k >= planned {
                let until = *drain_until.get_or_insert(Instant::now() + drain);
                if self.all_delivered() {
                    return Ok("complete");
                }
                if Instant::now() >= until {
                    return Ok("drain time over with deliveries outstanding (--drain-secs)");
                }
            }
            if Instant::now() >= self.deadline {
                return Ok("timed out (--timeout-secs)");
            }
            let next = if k < planned {
                self.clock
                    .at(at(k))
                    .saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(100)
            };
            self.pump(next.min(Duration::from_millis(100)))?;
        }
    }

    /// Every live receiver has every message accepted for its room.
    fn all_delivered(&self) -> bool {
        self.members.iter().all(|m| {
            m.stage != Stage::Joined || {
                let r = &self.rooms[m.room];
                m.unique >= r.sent - r.rejected
            }
        })
    }

    /// Member `i` posts its next message, stamped with the send time (tool nanos).
    fn say(&mut self, i: usize) {
        let no = self.members[i].sent;
        let stamp = self.clock.nanos();
        let mut text = format!("{i} {no} {stamp}");
        if text.len() + 1 < self.opts.text_bytes {
            text.push(' ');
            if self.pad.len() < self.opts.text_bytes {
                self.pad = "x".repeat(self.opts.text_bytes);
            }
            let fill = self.opts.text_bytes - text.len();
            text.push_str(&self.pad[..fill]);
        }
        let room = self.members[i].room;
        let now = stamp;
        let sent = match self.opts.target {
            Target::Ringchat => {
                let frame = ClientFrame::Say(codec::Say {
                    room: self.rooms[room].name.clone(),
                    client_seq: no + 1,
                    text,
                });
                self.net.send(i, &frame, &mut self.events)
            }
            Target::Redis => self.net.send_command(
                2 * i + 1,
                &[
                    b"PUBLISH",
                    self.rooms[room].name.as_bytes(),
                    text.as_bytes(),
                ],
                &mut self.events,
            ),
        };
        if sent {
            let m = &mut self.members[i];
            m.sent += 1;
            m.unacked.push_back((no + 1, now));
            self.rooms[room].sent += 1;
            self.c.sent += 1;
            self.last_progress = now;
        } else {
            self.c.unsent += 1;
        }
    }

    /// In a closed run, member `i` sends its next message if it has one left.
    fn next_closed(&mut self, i: usize) {
        if let Load::Closed { messages, .. } = self.opts.load {
            if self.members[i].stage == Stage::Joined && self.members[i].sent < messages {
                self.say(i);
            }
        }
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < 2 * MAX_SAMPLES {
            eprintln!("{s}");
            self.samples.push(s);
        }
    }

    /// The member and role of connection `idx`.
    fn member_of(&self, idx: usize) -> (usize, Role) {
        match self.opts.target {
            Target::Ringchat => (idx, Role::Sub),
            Target::Redis => match idx % 2 {
                0 => (idx / 2, Role::Sub),
                _ => (idx / 2, Role::Pub),
            },
        }
    }

    /// Member `i` has joined its room (redis: subscribed, and its publisher is connected).
    fn on_joined(&mut self, i: usize, last_seq: u64) {
        let m = &mut self.members[i];
        m.stage = Stage::Joined;
        m.joined_ever = true;
        m.last_seq = last_seq;
        m.seen = vec![0; (self.opts.members as u64 * self.cap).div_ceil(64) as usize];
        self.joined += 1;
        self.live += 1;
        self.in_handshake -= 1;
    }

    /// Handles one event; `arena` holds the bytes of its poll's deliveries.
    fn handle(&mut self, idx: usize, now: u64, ev: Event, arena: &[u8]) {
        let (i, role) = self.member_of(idx);
        match ev {
            Event::Closed(reason) => self.on_closed(i, role, reason),
            Event::Resp(v) => self.on_resp(i, role, now, v),
            Event::Delivery(d) if role == Role::Sub => {
                let room_ok = d.room(arena) == self.rooms[self.members[i].room].name.as_bytes();
                self.on_delivery(i, now, room_ok, d.seq, d.text(arena));
            }
            Event::Delivery(d) => {
                // A pub/sub push on a redis publisher connection, which subscribed to nothing.
                let v = resp::Value::Array(Some(vec![
                    resp::Value::Bulk(Some(b"message".to_vec())),
                    resp::Value::Bulk(Some(d.room(arena).to_vec())),
                    resp::Value::Bulk(Some(d.text(arena).to_vec())),
                ]));
                self.unexpected(i, role, &v);
            }
            Event::Frame(f) => match *f {
                ServerFrame::Joined(j) => {
                    let m = &self.members[i];
                    if m.stage == Stage::Handshake && j.room == self.rooms[m.room].name {
                        self.on_joined(i, j.last_seq);
                    }
                }
                ServerFrame::Ack(a) => {
                    self.c.acked += 1;
                    let m = &mut self.members[i];
                    while let Some(&(seq, sent_at)) = m.unacked.front() {
                        if seq > a.client_seq {
                            break;
                        }
                        m.unacked.pop_front();
                        if seq == a.client_seq {
                            self.ack_latency
                                .saturating_record(now.saturating_sub(sent_at).max(1));
                        }
                    }
                }
                ServerFrame::Error(e) => self.on_error(i, e),
                _ => {} // Welcome, Notice, Pong, ...: nothing to check.
            },
        }
    }

    /// A RESP2 value on member `i`'s subscriber or publisher connection.
    fn on_resp(&mut self, i: usize, role: Role, now: u64, v: resp::Value) {
        use resp::Value;
        let handshaking = self.members[i].stage == Stage::Handshake;
        match (role, v) {
            (Role::Sub, Value::Array(Some(items))) => {
                let channel = self.rooms[self.members[i].room].name.as_bytes();
                match items.as_slice() {
                    [kind, ch, Value::Integer(_)]
                        if kind.as_bytes() == Some(b"subscribe")
                            && ch.as_bytes() == Some(channel) =>
                    {
                        if handshaking {
                            self.members[i].sub_ready = true;
                            if self.members[i].pub_ready {
                                self.on_joined(i, 0);
                            }
                        }
                    }
                    _ => self.unexpected(i, role, &Value::Array(Some(items))),
                }
            }
            (Role::Pub, Value::Simple(s)) if handshaking && s == b"PONG" => {
                self.members[i].pub_ready = true;
                if self.members[i].sub_ready {
                    self.on_joined(i, 0);
                }
            }
            (Role::Pub, Value::Integer(_)) if self.members[i].stage == Stage::Joined => {
                // The reply to the oldest PUBLISH not answered yet (replies come in order).
                self.c.acked += 1;
                if let Some((_, sent_at)) = self.members[i].unacked.pop_front() {
                    self.ack_latency
                        .saturating_record(now.saturating_sub(sent_at).max(1));
                }
            }
            (_, Value::Error(e)) => {
                self.c.errors += 1;
                let s = format!(
                    "error for {} ({}): {}",
                    self.members[i].user,
                    role_name(role),
                    String::from_utf8_lossy(&e)
                );
                self.sample(s);
                match (self.members[i].stage, role) {
                    (Stage::Handshake, _) => {
                        // SUBSCRIBE or PING refused: this member cannot take part.
                        self.close_member(i, "refused while joining");
                    }
                    (Stage::Joined, Role::Pub) => {
                        // The oldest unanswered PUBLISH was refused.
                        let m = &mut self.members[i];
                        if let Some((seq, _)) = m.unacked.pop_front() {
                            self.rooms[m.room].rejected += 1;
                            self.c.rejected += 1;
                            if seq == self.members[i].sent {
                                self.next_closed(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            (_, v) => self.unexpected(i, role, &v),
        }
    }

    /// A RESP2 value the scenario does not expect: counted as an error.
    fn unexpected(&mut self, i: usize, role: Role, v: &resp::Value) {
        self.c.errors += 1;
        let mut shown = format!("{v:?}");
        if shown.len() > 200 {
            let mut cut = 200;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
            shown.push_str("...");
        }
        let s = format!(
            "unexpected reply for {} ({}): {shown}",
            self.members[i].user,
            role_name(role)
        );
        self.sample(s);
    }

    /// Closes every connection of member `i` (each reported as a `Closed` event).
    fn close_member(&mut self, i: usize, reason: &str) {
        let n = self.opts.target.conns();
        for idx in i * n..(i + 1) * n {
            self.net.close(idx, reason.to_owned(), &mut self.events);
        }
    }

    fn on_closed(&mut self, i: usize, role: Role, reason: String) {
        let stage = self.members[i].stage;
        if stage == Stage::Dead {
            return;
        }
        if stage == Stage::Handshake {
            self.in_handshake -= 1;
        }
        if stage == Stage::Joined {
            self.live -= 1;
        }
        self.members[i].stage = Stage::Dead;
        self.dead += 1;
        self.c.conn_failures += 1;
        if let Load::Closed { messages, .. } = self.opts.load {
            if stage == Stage::Joined {
                self.c.unsent += messages - self.members[i].sent;
            }
        }
        let s = match self.opts.target {
            Target::Ringchat => format!("connection of {} lost: {reason}", self.members[i].user),
            Target::Redis => format!(
                "{} connection of {} lost: {reason}",
                role_name(role),
                self.members[i].user
            ),
        };
        self.sample(s);
        // Redis: the member's other connection goes too (its Closed event is then ignored).
        self.close_member(i, "the member's other connection was lost");
    }

    fn on_error(&mut self, i: usize, e: codec::ErrorFrame) {
        self.c.errors += 1;
        let name = ErrorCode::from_u16(e.code).map_or("UNKNOWN", |c| c.name());
        let s = format!(
            "error for {}: {name} ({}) {}{}",
            self.members[i].user,
            e.code,
            e.message,
            e.client_seq
                .map(|s| format!(" [client_seq {s}]"))
                .unwrap_or_default()
        );
        self.sample(s);
        match (self.members[i].stage, e.client_seq) {
            (Stage::Joined, Some(seq)) => {
                let m = &mut self.members[i];
                m.unacked.retain(|&(s, _)| s != seq);
                self.rooms[m.room].rejected += 1;
                self.c.rejected += 1;
                if seq == self.members[i].sent {
                    self.next_closed(i);
                }
            }
            (Stage::Handshake, _) => {
                // Hello or Join refused: this member cannot take part.
                self.close_member(i, "refused while joining");
            }
            _ => {}
        }
    }

    /// A message delivered to member `i`: `room_ok` if it is for the member's room, `seq` its
    /// room sequence number (ringchat) or `None` (redis), `text` as sent.
    fn on_delivery(&mut self, i: usize, now: u64, room_ok: bool, seq: Option<u64>, text: &[u8]) {
        if self.members[i].stage != Stage::Joined {
            self.c.history += 1;
            return;
        }
        self.c.deliveries += 1;
        let room = self.members[i].room;
        if !room_ok {
            self.c.foreign += 1;
            return;
        }
        if let Some(seq) = seq {
            let m = &mut self.members[i];
            if seq != m.last_seq + 1 {
                self.c.out_of_order += 1;
                if self.c.out_of_order <= MAX_SAMPLES as u64 {
                    eprintln!(
                        "out of order for {}: seq {} after {}",
                        m.user, seq, m.last_seq
                    );
                }
            }
            m.last_seq = seq;
        }
        let Some((sender, no, stamp)) = parse_text(text) else {
            self.c.foreign += 1;
            return;
        };
        if sender >= self.members.len() || self.members[sender].room != room || no >= self.cap {
            self.c.foreign += 1;
            return;
        }
        // Message-major, so the bits a run touches at a time are adjacent (cache-friendly).
        let members = self.opts.members as u64;
        let bit = no * members + self.members[sender].pos as u64;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        let m = &mut self.members[i];
        if m.seen[word] & mask != 0 {
            self.c.duplicated += 1;
            return;
        }
        if seq.is_none() && no > 0 {
            // No room seq (redis): the same sender's previous message must have come first.
            let prev = bit - members;
            if m.seen[(prev / 64) as usize] & (1u64 << (prev % 64)) == 0 {
                self.c.out_of_order += 1;
                if self.c.out_of_order <= MAX_SAMPLES as u64 {
                    eprintln!(
                        "out of order for {}: message {no} of member {sender} before message {}",
                        m.user,
                        no - 1
                    );
                }
            }
        }
        m.seen[word] |= mask;
        m.unique += 1;
        self.c.unique += 1;
        self.last_progress = now;
        self.latency
            .saturating_record(now.saturating_sub(stamp).max(1));
        if sender == i && no + 1 == self.members[i].sent {
            self.next_closed(i);
        }
    }

    /// Prints the report; true if the run was clean.
    fn report(&self, outcome: &str, join_secs: f64, secs: f64, cpu: &CpuUse) -> bool {
        let expected: u64 = self
            .members
            .iter()
            .filter(|m| m.joined_ever)
            .map(|m| self.rooms[m.room].sent - self.rooms[m.room].rejected)
            .sum();
        let lost: u64 = self
            .members
            .iter()
            .filter(|m| m.joined_ever)
            .map(|m| {
                let r = &self.rooms[m.room];
                (r.sent - r.rejected).saturating_sub(m.unique)
            })
            .sum();
        let unacked: u64 = self.members.iter().map(|m| m.unacked.len() as u64).sum();
        let c = &self.c;
        let clean = outcome == "complete"
            && lost == 0
            && c.duplicated == 0
            && c.out_of_order == 0
            && c.errors == 0
            && c.conn_failures == 0
            && c.foreign == 0
            && c.unsent == 0;
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let lat = Latency::of(&self.latency);
        let ack = Latency::of(&self.ack_latency);
        let o = &self.opts;
        let (mode, load_desc, load_json) = match o.load {
            Load::Closed { messages, .. } => (
                "closed",
                format!("{messages} messages per member, closed loop"),
                json!({ "messages_per_member": messages }),
            ),
            Load::Open {
                rate,
                duration,
                drain,
            } => (
                "open",
                format!(
                    "{rate} msgs/s for {} s (drain up to {} s)",
                    duration.as_secs_f64(),
                    drain.as_secs_f64()
                ),
                json!({
                    "rate": rate,
                    "duration_s": duration.as_secs_f64(),
                    "drain_s": drain.as_secs_f64(),
                    "send_lag_us": Latency::of(&self.send_lag).json(),
                }),
            ),
        };
        if o.common.json {
            let mut v = json!({
                "mode": mode,
                "target": o.target.name(),
                "server": server_list(&o.common.servers),
                "rooms": o.rooms,
                "members": o.members,
                "text_bytes": o.text_bytes,
                "load": load_json,
                "outcome": outcome,
                "clean": clean,
                "joined": self.joined,
                "join_elapsed_s": round3(join_secs),
                "sent": c.sent,
                "acked": c.acked,
                "unacked": unacked,
                "rejected": c.rejected,
                "unsent": c.unsent,
                "deliveries": c.deliveries,
                "unique_deliveries": c.unique,
                "expected_deliveries": expected,
                "elapsed_s": round3(secs),
                "sent_per_s": round1(per_s(c.sent)),
                "deliveries_per_s": round1(per_s(c.unique)),
                "latency_us": lat.json(),
                "ack_latency_us": ack.json(),
                "lost": lost,
                "duplicated": c.duplicated,
                "out_of_order": c.out_of_order,
                "foreign": c.foreign,
                "history_replayed": c.history,
                "errors": c.errors,
                "connection_failures": c.conn_failures,
                "samples": self.samples,
            });
            if let (Value::Object(m), Value::Object(cpu)) = (&mut v, cpu.json()) {
                m.extend(cpu);
            }
            println!("{v}");
        } else {
            let total = self.members.len();
            println!(
                "ringchat-load {mode} ({}): {} room(s) x {} members, {load_desc}, text {} B, server {}",
                o.target.name(),
                o.rooms,
                o.members,
                o.text_bytes,
                server_list(&o.common.servers)
            );
            println!("outcome:     {outcome}");
            println!(
                "join:        {}/{total} members joined in {join_secs:.2} s",
                self.joined
            );
            println!(
                "sent:        {} messages in {secs:.2} s = {:.0} msg/s  (acked {}, unacked {unacked}, rejected {}, unsent {})",
                c.sent,
                per_s(c.sent),
                c.acked,
                c.rejected,
                c.unsent
            );
            println!(
                "deliveries:  {} of {expected} expected = {:.0} deliveries/s  ({} received incl. duplicates)",
                c.unique,
                per_s(c.unique),
                c.deliveries
            );
            println!(
                "latency µs:  {}  (send -> delivery, every recipient)",
                lat.line()
            );
            let ack_what = match o.target {
                Target::Ringchat => "send -> Ack",
                Target::Redis => "send -> PUBLISH reply",
            };
            println!("ack µs:      {}  ({ack_what}, sender only)", ack.line());
            if let Load::Open { .. } = o.load {
                println!(
                    "send lag µs: {}  (actual send time behind the schedule)",
                    Latency::of(&self.send_lag).line()
                );
            }
            println!(
                "checks:      lost {lost}, duplicated {}, out of order {}, foreign {}, errors {}, connection failures {}",
                c.duplicated, c.out_of_order, c.foreign, c.errors, c.conn_failures
            );
            for l in cpu.lines() {
                println!("{l}");
            }
            println!("result:      {}", if clean { "CLEAN" } else { "NOT CLEAN" });
        }
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_pads() {
        assert_eq!(parse_text(b"12 7 123456789 xxxx"), Some((12, 7, 123456789)));
        assert_eq!(parse_text(b"12 7 123456789"), Some((12, 7, 123456789)));
        assert_eq!(parse_text(b"hello there"), None);
        assert_eq!(parse_text(b""), None);
        assert_eq!(parse_text(b"12 7"), None);
        assert_eq!(parse_text(b"12  7 1"), None);
        assert_eq!(parse_text(b"12 7 1x"), None);
        assert_eq!(parse_text(b"1 2 99999999999999999999"), None);
    }

    #[test]
    fn open_capacity_covers_the_schedule() {
        assert_eq!(planned_sends(500.0, Duration::from_secs(20)), 10_000);
        assert_eq!(planned_sends(0.1, Duration::from_secs(1)), 1);
    }

    #[test]
    fn run_ids_are_valid_name_parts() {
        let id = run_id();
        assert_eq!(id.len(), 6);
        let user = format!("load-{id}-r9999-m99999");
        ringchat::core::names::validate_user(&user).unwrap();
    }
}
