//! `Node`: one cluster member's state machine. Clients' frames become log commands; committed
//! commands are applied to the chat state and their outcomes become frames for local clients.
//!
//! This foundation runs a single-node cluster: the node is the leader of epoch 1 and an entry
//! commits as soon as it is persisted locally (a majority of one). Replication plugs in between
//! `propose` and `commit_to` without changing the client side.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use log::{debug, info};

use super::chat::{ChatState, Outcome, RoomExit, StoredMessage};
use super::log::{Command, Entry, Epoch, Log, LogIndex};
use super::names;
use super::{Action, ConnId, NodeId, Now, SessionId, SharedBytes};
use crate::codec::{self, ClientFrame, CodecError, ErrorCode, ServerFrame};

/// Tunables of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Messages replayed on a plain join.
    pub history_size: u32,
    /// Longest message text in bytes.
    pub max_text: u32,
    /// Devices a user may have connected at once.
    pub devices_per_user: u32,
    /// Uncommitted entries allowed before clients are told "busy".
    pub max_pending: usize,
    /// Largest history page returned.
    pub max_page: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            history_size: 10,
            max_text: 4096,
            devices_per_user: 2,
            max_pending: 65_536,
            max_page: 200,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    /// Connected; only Hello is valid.
    New,
    /// Hello proposed; further requests are proposed behind it.
    Opening,
    /// Session open.
    Open,
}

/// Counters for status views and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Client connections known to the core.
    pub connections: usize,
    /// Live sessions cluster-wide.
    pub sessions: usize,
    /// Last log index.
    pub last_index: LogIndex,
    /// Commit index.
    pub committed: LogIndex,
}

/// A cluster member's whole state.
pub struct Node {
    cfg: NodeConfig,
    epoch: Epoch,
    log: Log,
    chat: ChatState,
    conns: HashMap<ConnId, ConnState>,
    actions: VecDeque<Action>,
    shutting_down: bool,
}

impl Node {
    /// A node that recovers from `recovered` (the durable log) and leads a cluster of one.
    pub fn new(cfg: NodeConfig, recovered: Vec<Entry>) -> Node {
        let mut chat = ChatState::new(cfg.devices_per_user as usize, cfg.history_size as usize);
        let mut log = Log::new();
        let mut epoch = 0;
        for e in recovered {
            epoch = epoch.max(e.epoch);
            chat.apply(&e.command);
            log.append(e.epoch, e.command);
        }
        let last = log.last_index();
        log.mark_persisted(last);
        log.commit_to(last);
        while log.next_to_apply().is_some() {}
        let mut node = Node {
            epoch: epoch + 1,
            cfg,
            log,
            chat,
            conns: HashMap::new(),
            actions: VecDeque::new(),
            shutting_down: false,
        };
        // Our previous incarnation's connections are gone: free their device slots first.
        for session in node.chat.sessions_on(node.cfg.id) {
            node.log
                .append(node.epoch, Command::CloseSession { session });
        }
        info!(
            "node {}: leading epoch {} from log index {last}",
            node.cfg.id, node.epoch
        );
        node
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The core's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Read access to the applied chat state.
    pub fn chat(&self) -> &ChatState {
        &self.chat
    }

    /// Counters for status views.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            connections: self.conns.len(),
            sessions: self.chat.session_count(),
            last_index: self.log.last_index(),
            committed: self.log.committed(),
        }
    }

    /// A client connection was accepted.
    pub fn handle_connect(&mut self, _now: Now, conn: ConnId) {
        self.conns.insert(conn, ConnState::New);
    }

    /// A client connection ended (closed by either side); its session closes.
    pub fn handle_disconnect(&mut self, _now: Now, conn: ConnId) {
        if let Some(state) = self.conns.remove(&conn) {
            if state != ConnState::New {
                let session = self.session(conn);
                self.propose(Command::CloseSession { session });
            }
        }
    }

    /// Bytes from a client could not be decoded: report why, then drop the connection.
    pub fn handle_bad_frame(&mut self, _now: Now, conn: ConnId, err: &CodecError) {
        self.fail(
            conn,
            err.code(),
            None,
            format!("{err}; closing the connection"),
        );
        self.close(conn, format!("bad frame: {err}"));
    }

    /// A decoded frame from a client.
    pub fn handle_frame(&mut self, now: Now, conn: ConnId, frame: ClientFrame) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if self.shutting_down {
            return;
        }
        let session = self.session(conn);
        match (state, frame) {
            (_, ClientFrame::Ping(p)) => self.send(conn, &ServerFrame::Pong(p)),
            (ConnState::New, ClientFrame::Hello(h)) => {
                if let Err(e) = names::validate_user(&h.user) {
                    self.fail(conn, ErrorCode::InvalidUser, None, e);
                    return self.close(conn, "invalid username".into());
                }
                self.conns.insert(conn, ConnState::Opening);
                self.propose(Command::OpenSession {
                    session,
                    user: h.user,
                    client_id: h.client_id,
                });
            }
            (ConnState::New, other) => {
                let msg = format!("{} before Hello; say Hello first", frame_name(&other));
                self.fail(conn, ErrorCode::ProtocolViolation, None, msg);
                self.close(conn, "request before Hello".into());
            }
            (_, ClientFrame::Hello(_)) => {
                self.fail(
                    conn,
                    ErrorCode::ProtocolViolation,
                    None,
                    "already said Hello".into(),
                );
            }
            (_, ClientFrame::Join(j)) => {
                if self.room_ok(conn, &j.room, None) {
                    self.propose(Command::Join {
                        session,
                        room: j.room,
                        after_seq: j.after_seq,
                    });
                }
            }
            (_, ClientFrame::Leave(l)) => {
                if self.room_ok(conn, &l.room, None) {
                    self.propose(Command::Leave {
                        session,
                        room: l.room,
                    });
                }
            }
            (_, ClientFrame::Say(s)) => {
                if !self.room_ok(conn, &s.room, Some(s.client_seq)) {
                    return;
                }
                if let Err(e) = names::validate_text(&s.text, self.cfg.max_text as usize) {
                    return self.fail(conn, ErrorCode::InvalidText, Some(s.client_seq), e);
                }
                if self.log.last_index() - self.log.committed() >= self.cfg.max_pending as u64 {
                    let msg = "too many writes pending; retry shortly".into();
                    return self.fail(conn, ErrorCode::Busy, Some(s.client_seq), msg);
                }
                self.propose(Command::Say {
                    session,
                    room: s.room,
                    client_seq: s.client_seq,
                    text: s.text,
                    time_ms: now.unix_ms,
                });
            }
            (_, ClientFrame::Who(w)) => {
                if self.room_ok(conn, &w.room, None) {
                    let users = self.chat.member_names(&w.room);
                    self.send(
                        conn,
                        &ServerFrame::Members(codec::Members {
                            room: w.room,
                            users,
                        }),
                    );
                }
            }
            (_, ClientFrame::History(h)) => {
                if self.room_ok(conn, &h.room, None) {
                    let limit = h.limit.min(self.cfg.max_page) as usize;
                    let (msgs, more) = self.chat.page(&h.room, h.before_seq, limit);
                    let messages = msgs.iter().map(|m| wire_message(&h.room, m)).collect();
                    let page = codec::HistoryPage {
                        room: h.room,
                        messages,
                        more,
                    };
                    self.send(conn, &ServerFrame::HistoryPage(page));
                }
            }
        }
    }

    /// Timers are due (none in a single-node cluster; heartbeats arrive with peers).
    pub fn handle_timeout(&mut self, _now: Now) {}

    /// The next instant `handle_timeout` must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Log entries the driver must append to storage (and sync) before `handle_persisted`.
    pub fn unpersisted(&self) -> &[Entry] {
        self.log.unpersisted()
    }

    /// Storage holds everything up to `index` durably: commit and apply what that allows.
    pub fn handle_persisted(&mut self, _now: Now, index: LogIndex) {
        self.log.mark_persisted(index);
        // A majority of one: what this node persisted is committed.
        self.log.commit_to(self.log.persisted());
        self.apply_committed();
    }

    /// Stop serving: tell every client to go elsewhere; the driver then flushes and closes.
    pub fn begin_shutdown(&mut self, _now: Now) {
        self.shutting_down = true;
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort();
        for conn in conns {
            let msg = "node is shutting down; reconnect to another node".into();
            self.fail(conn, ErrorCode::ShuttingDown, None, msg);
            self.close(conn, "shutdown".into());
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn session(&self, conn: ConnId) -> SessionId {
        SessionId {
            node: self.cfg.id,
            conn,
        }
    }

    fn propose(&mut self, command: Command) {
        let index = self.log.append(self.epoch, command);
        debug!("node {}: proposed entry {index}", self.cfg.id);
    }

    fn apply_committed(&mut self) {
        while let Some(entry) = self.log.next_to_apply() {
            let outcome = self.chat.apply(&entry.command);
            self.report(outcome);
        }
    }

    /// Turns an applied outcome into frames for this node's clients.
    fn report(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Nothing => {}
            Outcome::SessionOpened { session, replaced } => {
                if let Some((old, exits)) = replaced {
                    self.announce_exits(&exits);
                    if self.is_local(old) {
                        let msg = "this device reconnected elsewhere".into();
                        self.fail(old.conn, ErrorCode::ProtocolViolation, None, msg);
                        self.close(old.conn, "session resumed by another connection".into());
                    }
                }
                if self.is_local(session) {
                    self.conns.insert(session.conn, ConnState::Open);
                    let user = self.chat.user_of(session).unwrap_or_default().to_owned();
                    let welcome = codec::Welcome {
                        node_id: self.cfg.id,
                        user,
                        history_size: self.cfg.history_size,
                        max_text: self.cfg.max_text,
                    };
                    self.send(session.conn, &ServerFrame::Welcome(welcome));
                }
            }
            Outcome::SessionRefused { session, devices } => {
                if self.is_local(session) {
                    let msg = format!(
                        "this username is already connected on {devices} devices (the limit is {}); \
                         disconnect one and try again",
                        self.cfg.devices_per_user
                    );
                    self.fail(session.conn, ErrorCode::DeviceLimit, None, msg);
                    // The refused session never opened: nothing to close in the log.
                    self.conns.insert(session.conn, ConnState::New);
                    self.close(session.conn, "device limit".into());
                }
            }
            Outcome::SessionClosed { exits, .. } => self.announce_exits(&exits),
            Outcome::Joined {
                session,
                room,
                user_arrived,
                replay_after,
            } => {
                if user_arrived {
                    let user = self.chat.user_of(session).unwrap_or_default().to_owned();
                    self.notify_room(&room, Some(session), &user, codec::NoticeEvent::Joined);
                }
                if self.is_local(session) {
                    self.replay(session.conn, &room, replay_after);
                }
            }
            Outcome::Left { session, exit } => {
                if self.is_local(session) {
                    self.send(
                        session.conn,
                        &ServerFrame::Left(codec::Left {
                            room: exit.room.clone(),
                        }),
                    );
                }
                self.announce_exits(std::slice::from_ref(&exit));
            }
            Outcome::Said {
                session,
                room,
                client_seq,
                message,
            } => {
                let bytes: SharedBytes = codec::encode_message(
                    &room,
                    &message.author,
                    message.seq,
                    message.time_ms,
                    &message.text,
                )
                .into();
                // The per-recipient hot path: no connection lookup, since a member whose
                // connection just went is still in the room until its CloseSession applies, and
                // the driver ignores sends to connections it no longer has.
                for m in self.chat.members(&room) {
                    if m.node == self.cfg.id {
                        self.actions.push_back(Action::Send {
                            conn: m.conn,
                            bytes: bytes.clone(),
                        });
                    }
                }
                self.ack(session, room, client_seq, message.seq);
            }
            Outcome::Duplicate {
                session,
                room,
                client_seq,
                seq,
            } => self.ack(session, room, client_seq, seq),
            Outcome::NotInRoom {
                session,
                room,
                client_seq,
            } => {
                if self.is_local(session) {
                    let msg = format!("you are not in room {room:?}; join it first");
                    self.fail(session.conn, ErrorCode::NotInRoom, client_seq, msg);
                }
            }
        }
    }

    fn replay(&mut self, conn: ConnId, room: &str, after: u64) {
        let mut buf = Vec::new();
        for m in self.chat.messages_after(room, after) {
            let frame = ServerFrame::Message(wire_message(room, m));
            if let Err(e) = codec::encode_into(&frame, &mut buf) {
                log::error!("node {}: cannot encode history of {room}: {e}", self.cfg.id);
            }
        }
        let joined = codec::Joined {
            room: room.to_owned(),
            last_seq: self.chat.last_seq(room),
            members: self.chat.member_names(room),
        };
        if let Err(e) = codec::encode_into(&ServerFrame::Joined(joined), &mut buf) {
            log::error!("node {}: cannot encode Joined for {room}: {e}", self.cfg.id);
        }
        self.actions.push_back(Action::Send {
            conn,
            bytes: buf.into(),
        });
    }

    fn ack(&mut self, session: SessionId, room: String, client_seq: u64, seq: u64) {
        if self.is_local(session) {
            self.send(
                session.conn,
                &ServerFrame::Ack(codec::Ack {
                    room,
                    client_seq,
                    seq,
                }),
            );
        }
    }

    fn announce_exits(&mut self, exits: &[RoomExit]) {
        for exit in exits.iter().filter(|e| e.user_gone) {
            self.notify_room(&exit.room, None, &exit.user, codec::NoticeEvent::Left);
        }
    }

    /// Sends a presence notice to the room's local members except `skip`.
    fn notify_room(
        &mut self,
        room: &str,
        skip: Option<SessionId>,
        user: &str,
        event: codec::NoticeEvent,
    ) {
        let notice = codec::Notice {
            room: room.to_owned(),
            user: user.to_owned(),
            event,
        };
        let Some(bytes) = self.encode(&ServerFrame::Notice(notice)) else {
            return;
        };
        for m in self.chat.members(room) {
            if Some(*m) != skip && m.node == self.cfg.id && self.conns.contains_key(&m.conn) {
                self.actions.push_back(Action::Send {
                    conn: m.conn,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn room_ok(&mut self, conn: ConnId, room: &str, client_seq: Option<u64>) -> bool {
        match names::validate_room(room) {
            Ok(()) => true,
            Err(e) => {
                self.fail(conn, ErrorCode::InvalidRoom, client_seq, e);
                false
            }
        }
    }

    fn is_local(&self, s: SessionId) -> bool {
        s.node == self.cfg.id && self.conns.contains_key(&s.conn)
    }

    fn encode(&self, frame: &ServerFrame) -> Option<SharedBytes> {
        match codec::encode(frame) {
            Ok(b) => Some(b.into()),
            Err(e) => {
                log::error!("node {}: cannot encode {frame:?}: {e}", self.cfg.id);
                None
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: &ServerFrame) {
        if let Some(bytes) = self.encode(frame) {
            self.actions.push_back(Action::Send { conn, bytes });
        }
    }

    fn fail(&mut self, conn: ConnId, code: ErrorCode, client_seq: Option<u64>, message: String) {
        debug!(
            "node {}: conn {} error {}: {message}",
            self.cfg.id,
            conn.0,
            code.name()
        );
        let frame = codec::ErrorFrame {
            code: code as u16,
            client_seq,
            message,
        };
        self.send(conn, &ServerFrame::Error(frame));
    }

    fn close(&mut self, conn: ConnId, reason: String) {
        self.actions.push_back(Action::Close { conn, reason });
    }
}

fn wire_message(room: &str, m: &StoredMessage) -> codec::ChatMessage {
    codec::ChatMessage {
        room: room.to_owned(),
        seq: m.seq,
        author: m.author.clone(),
        time_ms: m.time_ms,
        text: m.text.clone(),
    }
}

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello(_) => "Hello",
        ClientFrame::Join(_) => "Join",
        ClientFrame::Leave(_) => "Leave",
        ClientFrame::Say(_) => "Say",
        ClientFrame::Who(_) => "Who",
        ClientFrame::History(_) => "History",
        ClientFrame::Ping(_) => "Ping",
    }
}

#[cfg(test)]
mod tests;
