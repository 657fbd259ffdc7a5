//! Simulated chat clients. A talker says Hello, joins its rooms and keeps saying messages with
//! increasing client sequence numbers (a bounded number in flight). When its connection closes,
//! its node stops answering pings, or the node says it is going away, it reconnects to another
//! node after a backoff and resumes exactly like the client library: Hello with the same
//! client id, then the plan of [`Session::resume_frames`] (re-join with `after_seq` = last seen,
//! re-send the unacknowledged messages with their original client sequence numbers), with
//! de-duplication by seq. A prober is a third device of a user that already has two: it comes
//! and goes to exercise the device limit.
//!
//! Every frame is checked as it arrives; a violation is returned as an error string.

use std::collections::{BTreeMap, VecDeque};

use super::clock::{ms, Micros};
use crate::client::Session;
use crate::codec::{ChatMessage, ClientFrame, ErrorCode, Hello, Join, Ping, ServerFrame};
use crate::core::{ConnId, NodeId};

/// What a simulated client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Joins rooms and says messages.
    Talker,
    /// Connects now and then, holds the session briefly, leaves (device-limit pressure).
    Prober,
}

/// Timing of a client, in virtual microseconds.
#[derive(Clone, Debug)]
pub struct ClientParams {
    /// Gap between two messages (drawn uniformly).
    pub say_gap: (Micros, Micros),
    /// Most messages sent and not yet answered.
    pub max_in_flight: usize,
    /// Silence after which a ping goes out; an unanswered ping after as long again ends the
    /// connection.
    pub keepalive: Micros,
    /// How long to wait for Welcome before trying another node.
    pub hello_timeout: Micros,
    /// First reconnect backoff; doubles per failed attempt up to `backoff_max`, jitter [d/2, d].
    pub backoff_base: Micros,
    /// Longest reconnect backoff.
    pub backoff_max: Micros,
    /// Messages replayed on a plain join (the nodes' `history_size`).
    pub history_size: u64,
}

impl Default for ClientParams {
    fn default() -> Self {
        ClientParams {
            say_gap: (ms(10), ms(60)),
            max_in_flight: 4,
            keepalive: ms(300),
            hello_timeout: ms(1500),
            backoff_base: ms(20),
            backoff_max: ms(400),
            history_size: 10,
        }
    }
}

/// A request of a client to the simulated network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOut {
    /// Open connection `conn` to `node`.
    Connect {
        /// Target node.
        node: NodeId,
        /// The new connection's id.
        conn: ConnId,
    },
    /// Send a frame on `conn`.
    Send {
        /// Connection.
        conn: ConnId,
        /// Frame.
        frame: ClientFrame,
    },
    /// Close `conn` from the client's side.
    Close {
        /// Connection.
        conn: ConnId,
    },
}

/// Something a client learned about the committed history, for the cross-client checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Room.
    pub room: String,
    /// Room sequence number.
    pub seq: u64,
    /// Author.
    pub author: String,
    /// Text.
    pub text: String,
    /// True for an acknowledgement of the client's own message, false for a delivery.
    pub ack: bool,
}

/// What the world hands a client for one call, and collects from it.
pub struct ClientEnv<'a> {
    /// Virtual now.
    pub now: Micros,
    /// The nodes a client may connect to (members and nodes joining, not removed ones), sorted.
    pub members: &'a [NodeId],
    /// The next connection id to hand out (world-wide).
    pub next_conn: &'a mut u64,
    /// Requests to the network.
    pub out: Vec<ClientOut>,
    /// Observations for the checker.
    pub observed: Vec<Observed>,
    /// Lines for the verbose trace.
    pub notes: Vec<String>,
}

impl ClientEnv<'_> {
    fn send(&mut self, conn: ConnId, frame: ClientFrame) {
        self.out.push(ClientOut::Send { conn, frame });
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Link {
    /// No connection; the next attempt is at `retry_at` (never, when stopped).
    Idle { retry_at: Micros },
    /// Hello sent, waiting for Welcome.
    Hello {
        conn: ConnId,
        node: NodeId,
        since: Micros,
    },
    /// Session open.
    Open {
        conn: ConnId,
        node: NodeId,
        since: Micros,
    },
}

/// A room as seen on the current connection.
#[derive(Clone, Debug)]
enum RoomView {
    /// Join sent: replayed messages arrive, then Joined.
    Joining {
        after: Option<u64>,
        replay: Vec<ChatMessage>,
    },
    /// Joined: live messages must come with exactly this seq next.
    Live { next: u64 },
}

/// Counters of one client.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages accepted (delivered to the user, de-duplicated).
    pub received: u64,
    /// Duplicates dropped by the session's de-duplication.
    pub duplicates: u64,
    /// Sessions opened (Welcome received).
    pub sessions: u64,
    /// Connections given up (closed, silent, going away) and retried.
    pub reconnects: u64,
    /// Hellos refused by the device limit.
    pub refused: u64,
    /// Sessions ended because the same device resumed on another connection first.
    pub displaced: u64,
}

/// How to make a client.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// Username.
    pub user: String,
    /// Device id.
    pub client_id: u64,
    /// Talker or prober.
    pub kind: ClientKind,
    /// Rooms to join (talkers).
    pub rooms: Vec<String>,
    /// Timing.
    pub params: ClientParams,
    /// Seed of the client's own generator.
    pub seed: u64,
    /// When it first connects.
    pub start: Micros,
    /// Node to try first, if any.
    pub prefer: Option<NodeId>,
    /// Whether a talker says messages on its own.
    pub auto_say: bool,
}

/// One simulated client.
pub struct SimClient {
    /// Index in the world's client list.
    pub index: usize,
    /// Username.
    pub user: String,
    /// Device id, the same across reconnects.
    pub client_id: u64,
    /// Talker or prober.
    pub kind: ClientKind,
    rooms: Vec<String>,
    params: ClientParams,
    rng: fastrand::Rng,
    session: Session,
    link: Link,
    views: BTreeMap<String, RoomView>,
    last_rx: Micros,
    ping_sent: Option<Micros>,
    attempt: u32,
    last_node: Option<NodeId>,
    /// The node for the first connection (scenario tests); later ones go anywhere.
    prefer: Option<NodeId>,
    hold_until: Micros,
    next_say_at: Micros,
    auto_say: bool,
    stopped: bool,
    manual: VecDeque<(String, String)>,
    /// client_seq -> (room, seq) of every acknowledged message.
    acks: BTreeMap<u64, (String, u64)>,
    /// Every (room, seq) accepted, with (author, text).
    seen: BTreeMap<(String, u64), (String, String)>,
    /// Errors received (code name and message), for scenario assertions.
    pub errors: Vec<String>,
    /// Counters.
    pub stats: ClientStats,
}

impl SimClient {
    /// A client described by `spec`; it starts connecting at `spec.start`.
    pub fn new(index: usize, spec: ClientSpec) -> SimClient {
        let kind = spec.kind;
        SimClient {
            index,
            user: spec.user,
            client_id: spec.client_id,
            kind,
            rooms: spec.rooms,
            params: spec.params,
            rng: fastrand::Rng::with_seed(spec.seed),
            session: Session::new(),
            link: Link::Idle {
                retry_at: spec.start,
            },
            views: BTreeMap::new(),
            last_rx: spec.start,
            ping_sent: None,
            attempt: 0,
            last_node: None,
            prefer: spec.prefer,
            hold_until: 0,
            next_say_at: spec.start,
            auto_say: kind == ClientKind::Talker && spec.auto_say,
            stopped: false,
            manual: VecDeque::new(),
            acks: BTreeMap::new(),
            seen: BTreeMap::new(),
            errors: Vec::new(),
            stats: ClientStats::default(),
        }
    }

    /// Make the next connection to `node`.
    pub fn prefer(&mut self, node: Option<NodeId>) {
        self.prefer = node;
    }

    /// Whether the client says messages on its own.
    pub fn set_auto_say(&mut self, on: bool) {
        self.auto_say = on;
    }

    /// Queues a message to say as soon as the session is open and its room joined.
    pub fn say(&mut self, room: &str, text: &str) {
        self.manual.push_back((room.to_owned(), text.to_owned()));
    }

    /// Liveness phase: no new messages; a prober leaves for good.
    pub fn stop(&mut self, env: &mut ClientEnv<'_>) {
        self.stopped = true;
        self.auto_say = false;
        if self.kind == ClientKind::Prober {
            if let Some(conn) = self.conn() {
                env.out.push(ClientOut::Close { conn });
            }
            self.link = Link::Idle {
                retry_at: Micros::MAX,
            };
        }
    }

    /// The current connection, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Idle { .. } => None,
            Link::Hello { conn, .. } | Link::Open { conn, .. } => Some(conn),
        }
    }

    /// The node of the open session, if any.
    pub fn open_on(&self) -> Option<NodeId> {
        match self.link {
            Link::Open { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Messages sent and not yet answered.
    pub fn unacked(&self) -> usize {
        self.session.unacked_len() + self.manual.len()
    }

    /// The client-side session state.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Rooms this client joins.
    pub fn rooms(&self) -> &[String] {
        &self.rooms
    }

    /// client_seq -> (room, seq) of the acknowledged messages.
    pub fn acks(&self) -> &BTreeMap<u64, (String, u64)> {
        &self.acks
    }

    /// Every message accepted, by (room, seq).
    pub fn seen(&self) -> &BTreeMap<(String, u64), (String, String)> {
        &self.seen
    }

    /// True when the session is open and every room is joined live on this connection.
    pub fn settled(&self) -> bool {
        matches!(self.link, Link::Open { .. })
            && self
                .rooms
                .iter()
                .all(|r| matches!(self.views.get(r), Some(RoomView::Live { .. })))
    }

    fn can_say(&self) -> bool {
        self.kind == ClientKind::Talker
            && matches!(self.link, Link::Open { .. })
            && self.session.unacked_len() < self.params.max_in_flight
            && self.rooms.iter().all(|r| self.session.is_joined(r))
    }

    /// When the client next needs [`SimClient::tick`].
    pub fn wake_at(&self) -> Option<Micros> {
        match self.link {
            Link::Idle { retry_at } => (retry_at != Micros::MAX).then_some(retry_at),
            Link::Hello { since, .. } => Some(since + self.params.hello_timeout),
            Link::Open { .. } => {
                let mut t = match self.ping_sent {
                    Some(sent) => sent + self.params.keepalive,
                    None => self.last_rx + self.params.keepalive,
                };
                if self.kind == ClientKind::Prober {
                    t = t.min(self.hold_until);
                }
                if self.can_say() && (self.auto_say || !self.manual.is_empty()) {
                    t = t.min(if self.manual.is_empty() {
                        self.next_say_at
                    } else {
                        0
                    });
                }
                Some(t)
            }
        }
    }

    /// Timers: connect, give up a silent connection, ping, say.
    pub fn tick(&mut self, env: &mut ClientEnv<'_>) {
        let now = env.now;
        match self.link.clone() {
            Link::Idle { retry_at } => {
                if now >= retry_at {
                    self.connect(env);
                }
            }
            Link::Hello { since, node, .. } => {
                if now >= since + self.params.hello_timeout {
                    env.notes.push(format!(
                        "client {}: no Welcome from node {node}",
                        self.index
                    ));
                    self.give_up(env, true);
                }
            }
            Link::Open { conn, node, .. } => {
                if let Some(sent) = self.ping_sent {
                    if now >= sent + self.params.keepalive {
                        env.notes.push(format!(
                            "client {}: node {node} does not answer pings",
                            self.index
                        ));
                        return self.give_up(env, true);
                    }
                } else if now >= self.last_rx + self.params.keepalive {
                    self.ping_sent = Some(now);
                    env.send(conn, ClientFrame::Ping(Ping { nonce: now }));
                }
                if self.kind == ClientKind::Prober && now >= self.hold_until {
                    env.out.push(ClientOut::Close { conn });
                    let wait = self.rng.u64(ms(100)..=ms(600));
                    self.link = Link::Idle {
                        retry_at: now + wait,
                    };
                    self.views.clear();
                    return;
                }
                while self.can_say() {
                    if let Some((room, text)) = self.manual.pop_front() {
                        let p = self.session.say(&room, &text);
                        env.send(conn, p.frame());
                    } else if self.auto_say && now >= self.next_say_at {
                        let room = self.rooms[self.rng.usize(..self.rooms.len())].clone();
                        let text = format!(
                            "{} #{:x} says {}",
                            self.user,
                            self.client_id,
                            self.session.next_client_seq()
                        );
                        let p = self.session.say(&room, &text);
                        env.send(conn, p.frame());
                        let (lo, hi) = self.params.say_gap;
                        self.next_say_at = now + self.rng.u64(lo..=hi);
                    } else {
                        break;
                    }
                }
            }
        }
    }

    fn connect(&mut self, env: &mut ClientEnv<'_>) {
        let n = env.members.len();
        let node = match self.prefer.take() {
            Some(p) if env.members.contains(&p) => p,
            _ => {
                // Any node but the one that just failed us.
                let others: Vec<NodeId> = env
                    .members
                    .iter()
                    .copied()
                    .filter(|&m| n == 1 || Some(m) != self.last_node)
                    .collect();
                others[self.rng.usize(..others.len())]
            }
        };
        *env.next_conn += 1;
        let conn = ConnId(*env.next_conn);
        env.out.push(ClientOut::Connect { node, conn });
        env.send(
            conn,
            ClientFrame::Hello(Hello {
                user: self.user.clone(),
                client_id: self.client_id,
            }),
        );
        self.link = Link::Hello {
            conn,
            node,
            since: env.now,
        };
        self.last_node = Some(node);
        self.views.clear();
        self.last_rx = env.now;
        self.ping_sent = None;
    }

    /// Drops the connection (closing it from our side when `close`) and plans a new attempt.
    fn give_up(&mut self, env: &mut ClientEnv<'_>, close: bool) {
        if let (true, Some(conn)) = (close, self.conn()) {
            env.out.push(ClientOut::Close { conn });
        }
        self.attempt = self.attempt.saturating_add(1);
        let exp = self.attempt.saturating_sub(1).min(16);
        let d = self
            .params
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.params.backoff_max);
        let wait = d / 2 + self.rng.u64(0..=d / 2);
        let retry_at = if self.stopped && self.kind == ClientKind::Prober {
            Micros::MAX
        } else {
            env.now + wait
        };
        self.link = Link::Idle { retry_at };
        self.views.clear();
        self.stats.reconnects += 1;
    }

    /// The connection closed (seen from the client's side).
    pub fn on_closed(&mut self, env: &mut ClientEnv<'_>, conn: ConnId) {
        if self.conn() == Some(conn) {
            env.notes
                .push(format!("client {}: conn {} closed", self.index, conn.0));
            self.give_up(env, false);
        }
    }

    /// A frame from the node on `conn`.
    pub fn on_frame(
        &mut self,
        env: &mut ClientEnv<'_>,
        conn: ConnId,
        frame: ServerFrame,
    ) -> Result<(), String> {
        if self.conn() != Some(conn) {
            return Ok(()); // a connection we gave up
        }
        self.last_rx = env.now;
        self.ping_sent = None;
        let who = format!("client {} ({}, conn {})", self.index, self.user, conn.0);
        match frame {
            ServerFrame::Welcome(w) => {
                let Link::Hello { node, .. } = self.link else {
                    return Err(format!("{who}: a second Welcome"));
                };
                if w.node_id != node || w.user != self.user {
                    return Err(format!("{who}: Welcome from the wrong node or user: {w:?}"));
                }
                self.link = Link::Open {
                    conn,
                    node,
                    since: env.now,
                };
                self.attempt = 0;
                self.stats.sessions += 1;
                self.hold_until = env.now + self.rng.u64(ms(20)..=ms(300));
                env.notes
                    .push(format!("{who}: session open on node {node}"));
                // Rooms never joined get a plain join; then the library's resume plan.
                for room in &self.rooms {
                    let after = self.session.last_seen(room);
                    self.views.insert(
                        room.clone(),
                        RoomView::Joining {
                            after,
                            replay: Vec::new(),
                        },
                    );
                    if after.is_none() {
                        let join = Join {
                            room: room.clone(),
                            after_seq: None,
                        };
                        env.send(conn, ClientFrame::Join(join));
                    }
                }
                for f in self.session.resume_frames() {
                    env.send(conn, f);
                }
                self.next_say_at = self.next_say_at.max(env.now);
            }
            ServerFrame::Message(m) => self.on_message(env, &who, m)?,
            ServerFrame::Joined(j) => {
                let Some(RoomView::Joining { after, replay }) = self.views.remove(&j.room) else {
                    return Err(format!("{who}: Joined {} without a join pending", j.room));
                };
                if let Some(s) = after {
                    if j.last_seq < s {
                        return Err(format!(
                            "{who}: resumed {} after seq {s}, but the node's room ends at {}",
                            j.room, j.last_seq
                        ));
                    }
                    let got: Vec<u64> = replay.iter().map(|m| m.seq).collect();
                    let want: Vec<u64> = (s + 1..=j.last_seq).collect();
                    if got != want {
                        return Err(format!(
                            "{who}: resume of {} after {s} replayed {got:?}, expected {want:?}",
                            j.room
                        ));
                    }
                } else {
                    let first = j.last_seq.saturating_sub(self.params.history_size) + 1;
                    let got: Vec<u64> = replay.iter().map(|m| m.seq).collect();
                    let want: Vec<u64> = (first..=j.last_seq).collect();
                    if got != want {
                        return Err(format!(
                            "{who}: join of {} replayed {got:?}, expected the last {} {want:?}",
                            j.room, self.params.history_size
                        ));
                    }
                }
                let fresh = !self.session.is_joined(&j.room);
                for m in replay {
                    self.observe(env, &m);
                    if fresh {
                        self.stats.received += 1;
                    } else {
                        self.accept(&who, &m)?;
                    }
                }
                self.session.joined(&j.room, j.last_seq);
                self.views.insert(
                    j.room.clone(),
                    RoomView::Live {
                        next: j.last_seq + 1,
                    },
                );
            }
            ServerFrame::Ack(a) => {
                if let Some(p) = self.session.settle(a.client_seq) {
                    if p.room != a.room {
                        return Err(format!("{who}: ack for {} names room {}", p.room, a.room));
                    }
                    self.acks.insert(a.client_seq, (a.room.clone(), a.seq));
                    self.stats.acked += 1;
                    env.observed.push(Observed {
                        room: a.room,
                        seq: a.seq,
                        author: self.user.clone(),
                        text: p.text,
                        ack: true,
                    });
                } else {
                    match self.acks.get(&a.client_seq) {
                        Some((room, seq)) if *room == a.room && *seq == a.seq => {}
                        Some((room, seq)) => {
                            return Err(format!(
                                "{who}: client_seq {} acked as {room}#{seq}, then as {}#{}",
                                a.client_seq, a.room, a.seq
                            ))
                        }
                        None => {
                            return Err(format!(
                                "{who}: ack for client_seq {} never sent",
                                a.client_seq
                            ))
                        }
                    }
                }
            }
            ServerFrame::Error(e) => {
                let code = ErrorCode::from_u16(e.code);
                let name = code.map_or("?", |c| c.name());
                self.errors.push(format!("{name}: {}", e.message));
                match code {
                    Some(ErrorCode::DeviceLimit) if matches!(self.link, Link::Hello { .. }) => {
                        self.stats.refused += 1;
                        env.notes.push(format!("{who}: refused: {}", e.message));
                        self.give_up(env, true);
                    }
                    Some(
                        ErrorCode::ShuttingDown | ErrorCode::StorageFailed | ErrorCode::NoLeader,
                    ) => {
                        env.notes.push(format!("{who}: told to go: {}", e.message));
                        self.give_up(env, true);
                    }
                    Some(ErrorCode::ProtocolViolation)
                        if e.message.contains("reconnected elsewhere") =>
                    {
                        self.stats.displaced += 1;
                        env.notes.push(format!("{who}: displaced: {}", e.message));
                        self.give_up(env, true);
                    }
                    _ => {
                        if let Some(cs) = e.client_seq {
                            self.session.settle(cs);
                        }
                        return Err(format!("{who}: unexpected error {name}: {}", e.message));
                    }
                }
            }
            ServerFrame::Pong(_) | ServerFrame::Notice(_) | ServerFrame::Members(_) => {}
            ServerFrame::Left(l) => return Err(format!("{who}: Left {} never asked", l.room)),
            ServerFrame::HistoryPage(_) | ServerFrame::Status(_) | ServerFrame::AdminReply(_) => {}
            ServerFrame::Redirect(r) => {
                return Err(format!("{who}: redirected to {} (no node is full)", r.addr))
            }
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        env: &mut ClientEnv<'_>,
        who: &str,
        m: ChatMessage,
    ) -> Result<(), String> {
        match self.views.get_mut(&m.room) {
            None => Err(format!(
                "{who}: message {}#{} for a room not joined on this connection",
                m.room, m.seq
            )),
            Some(RoomView::Joining { replay, .. }) => {
                replay.push(m);
                Ok(())
            }
            Some(RoomView::Live { next }) => {
                if m.seq != *next {
                    return Err(format!(
                        "{who}: live message {}#{} where #{} was due (gap or duplicate)",
                        m.room, m.seq, next
                    ));
                }
                *next += 1;
                self.observe(env, &m);
                self.accept(who, &m)
            }
        }
    }

    /// The session's de-duplication; what it accepts must extend the view by exactly one.
    fn accept(&mut self, who: &str, m: &ChatMessage) -> Result<(), String> {
        let before = self.session.last_seen(&m.room).unwrap_or(0);
        if self.session.accept_message(m) {
            if m.seq != before + 1 {
                return Err(format!(
                    "{who}: accepted {}#{} after #{before}: a message was missed",
                    m.room, m.seq
                ));
            }
            self.stats.received += 1;
        } else {
            self.stats.duplicates += 1;
        }
        Ok(())
    }

    fn observe(&mut self, env: &mut ClientEnv<'_>, m: &ChatMessage) {
        self.seen
            .insert((m.room.clone(), m.seq), (m.author.clone(), m.text.clone()));
        env.observed.push(Observed {
            room: m.room.clone(),
            seq: m.seq,
            author: m.author.clone(),
            text: m.text.clone(),
            ack: false,
        });
    }
}
