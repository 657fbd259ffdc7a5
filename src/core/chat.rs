//! The chat state machine: applies committed commands deterministically. The same entries in
//! the same order give the same rooms, histories and sessions on every node. It knows nothing of
//! connections or bytes; the node turns each [`Outcome`] into frames for its own clients.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::log::{Command, Entry};
use super::{NodeId, SessionId};

/// How many recent (client_seq -> seq) pairs are remembered per client for de-duplication.
/// A client never has more messages in flight than this.
pub const DEDUP_WINDOW: usize = 256;

/// How long, in the time of the messages applied, the de-duplication record of a client with
/// no session is kept: a client that resumes within it never has a re-sent message stored
/// twice. Every replica must drop records at the same entries, so this is no setting.
pub const DEDUP_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// How often, in the same time, records past their retention are looked for.
const DEDUP_SWEEP_MS: u64 = 3600 * 1000;

/// A message as kept in a room's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Per-room sequence number.
    pub seq: u64,
    /// Author's username, shared with the author's session.
    pub author: Arc<str>,
    /// Server timestamp, ms since the Unix epoch.
    pub time_ms: u64,
    /// Text, shared with the log entry that said it.
    pub text: Arc<str>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Room {
    messages: Vec<StoredMessage>,
    members: Vec<SessionId>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    user: Arc<str>,
    client_id: u64,
    rooms: Vec<String>,
}

/// What applying one command did, for the node to report to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing visible (e.g. a no-op, or a command for a session that is gone).
    Nothing,
    /// The session is open; `replaced` is the same device's previous session, now closed.
    SessionOpened {
        /// The new session.
        session: SessionId,
        /// Closed predecessor of the same client id, and the rooms it left.
        replaced: Option<(SessionId, Vec<RoomExit>)>,
    },
    /// The session was refused because the user has too many devices.
    SessionRefused {
        /// The refused session.
        session: SessionId,
        /// Devices the user has connected.
        devices: usize,
    },
    /// The session closed and left these rooms.
    SessionClosed {
        /// The closed session.
        session: SessionId,
        /// Rooms it was in.
        exits: Vec<RoomExit>,
    },
    /// The session joined (or was already in) the room.
    Joined {
        /// The session.
        session: SessionId,
        /// The room.
        room: String,
        /// True when the user was not in the room on any device before (announce it).
        user_arrived: bool,
        /// Replay messages with seq > this one.
        replay_after: u64,
    },
    /// The session left the room.
    Left {
        /// The session.
        session: SessionId,
        /// What leaving did.
        exit: RoomExit,
    },
    /// A new message was appended to the room.
    Said {
        /// Author's session.
        session: SessionId,
        /// The room.
        room: String,
        /// The client's sequence number.
        client_seq: u64,
        /// The stored message.
        message: StoredMessage,
    },
    /// The message was a re-send of one already committed as `seq`.
    Duplicate {
        /// Author's session.
        session: SessionId,
        /// The room.
        room: String,
        /// The client's sequence number.
        client_seq: u64,
        /// Sequence number it got the first time.
        seq: u64,
    },
    /// A node restarted, or was lost for too long: the sessions it held are closed.
    NodeSessionsEnded {
        /// The node.
        node: NodeId,
        /// Rooms those sessions left.
        exits: Vec<RoomExit>,
    },
    /// The session posted to (or left) a room it is not in.
    NotInRoom {
        /// The session.
        session: SessionId,
        /// The room.
        room: String,
        /// The client's sequence number, when it was a Say.
        client_seq: Option<u64>,
    },
}

/// A session leaving a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomExit {
    /// The room.
    pub room: String,
    /// The user.
    pub user: String,
    /// True when that was the user's last device in the room (announce it).
    pub user_gone: bool,
}

/// Rooms, histories, sessions and de-duplication state. Serialized whole into snapshots; the
/// two limits are configuration, not state, and are set again after decoding.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatState {
    #[serde(skip)]
    devices_per_user: usize,
    #[serde(skip)]
    history_size: usize,
    #[serde(serialize_with = "sorted")]
    rooms: HashMap<String, Room>,
    reg: Registry,
}

/// Everything a chat state holds besides its rooms. Small next to the rooms' histories, so a
/// snapshot being encoded piecewise encodes it at once (a nested struct adds no bytes to the
/// image).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    #[serde(serialize_with = "sorted")]
    sessions: HashMap<SessionId, Session>,
    #[serde(serialize_with = "sorted")]
    by_client: HashMap<u64, SessionId>,
    #[serde(serialize_with = "sorted")]
    devices: HashMap<String, Vec<SessionId>>,
    #[serde(serialize_with = "sorted")]
    recent: HashMap<u64, Recent>,
    /// Per proposing node, its run and the highest proposal number applied from it:
    /// re-forwarded copies are skipped.
    #[serde(serialize_with = "sorted")]
    applied_proposals: HashMap<NodeId, (u64, u64)>,
    /// When clients last said something, for dropping the records of clients long gone. Last
    /// in the image: an image of version 2, which lacks it, decodes with it empty.
    activity: Activity,
}

impl Registry {
    /// True when `session` is live and `user`'s.
    fn user_is(&self, session: &SessionId, user: &str) -> bool {
        self.sessions.get(session).is_some_and(|s| *s.user == *user)
    }
}

/// The clock of the de-duplication records: the time of the newest message applied, and when
/// each client last said something in that time.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Activity {
    /// Newest message time applied (ms since the Unix epoch); it never goes back, whatever the
    /// clocks of the nodes that stamped the messages.
    clock_ms: u64,
    /// Clock at the last sweep.
    swept_ms: u64,
    /// Per client id, the clock when it last said something new.
    #[serde(serialize_with = "sorted")]
    last_said: HashMap<u64, u64>,
}

/// A room as a snapshot image holds it.
#[derive(Clone, Copy, Debug)]
pub struct RoomImage<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its whole history.
    pub messages: &'a [StoredMessage],
    /// Its members, in join order.
    pub members: &'a [SessionId],
}

/// Serializes a map in key order, so every replica encodes the same state to the same bytes
/// (and a simulation replays exactly).
fn sorted<K: Ord + Serialize, V: Serialize, S: serde::Serializer>(
    map: &HashMap<K, V>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    ser.collect_map(map.iter().collect::<std::collections::BTreeMap<_, _>>())
}

/// A client's last committed (client_seq, seq) pairs, and the highest client_seq among them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Recent {
    pairs: VecDeque<(u64, u64)>,
    max_client_seq: u64,
}

impl Recent {
    /// The seq a re-sent `client_seq` got the first time, if it is remembered.
    fn find(&self, client_seq: u64) -> Option<u64> {
        // Clients number their messages in increasing order, so a new message skips the scan.
        if client_seq > self.max_client_seq {
            return None;
        }
        self.pairs
            .iter()
            .find(|(c, _)| *c == client_seq)
            .map(|&(_, seq)| seq)
    }

    fn remember(&mut self, client_seq: u64, seq: u64) {
        if self.pairs.len() == DEDUP_WINDOW {
            self.pairs.pop_front();
        }
        self.pairs.push_back((client_seq, seq));
        self.max_client_seq = self.max_client_seq.max(client_seq);
    }
}

impl ChatState {
    /// An empty state with the session limit and the join replay size.
    pub fn new(devices_per_user: usize, history_size: usize) -> ChatState {
        ChatState {
            devices_per_user,
            history_size,
            rooms: HashMap::new(),
            reg: Registry::default(),
        }
    }

    /// Sets the limits of a state decoded from a snapshot (they are not part of it).
    pub fn configure(&mut self, devices_per_user: usize, history_size: usize) {
        self.devices_per_user = devices_per_user;
        self.history_size = history_size;
    }

    /// Applies one committed entry, unless it repeats a proposal already applied (a proposal is
    /// re-forwarded when the leader changes, so the log may hold it twice).
    pub fn apply_entry(&mut self, entry: &Entry) -> Outcome {
        if let Some(id) = entry.origin {
            // Proposals of a node's later run always follow those of its earlier runs in the
            // log, so a change of run starts a new count.
            let last = self
                .reg
                .applied_proposals
                .entry(id.node)
                .or_insert((id.incarnation, 0));
            if last.0 != id.incarnation {
                *last = (id.incarnation, 0);
            }
            if id.seq <= last.1 {
                return Outcome::Nothing;
            }
            if id.seq != last.1 + 1 {
                log::error!(
                    "proposal {id:?} applied after seq {}: a proposal was skipped",
                    last.1
                );
            }
            last.1 = id.seq;
        }
        self.apply(&entry.command)
    }

    /// Applies one committed command.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Noop | Command::Config(_) => Outcome::Nothing,
            Command::NodeBoot { node } | Command::NodeDown { node } => {
                let exits = self
                    .sessions_on(*node)
                    .into_iter()
                    .filter_map(|s| self.close(s))
                    .flatten()
                    .collect();
                Outcome::NodeSessionsEnded { node: *node, exits }
            }
            Command::OpenSession {
                session,
                user,
                client_id,
            } => self.open(*session, user, *client_id),
            Command::CloseSession { session } => match self.close(*session) {
                Some(exits) => Outcome::SessionClosed {
                    session: *session,
                    exits,
                },
                None => Outcome::Nothing,
            },
            Command::Join {
                session,
                room,
                after_seq,
            } => self.join(*session, room, *after_seq),
            Command::Leave { session, room } => match self.leave(*session, room) {
                Some(exit) => Outcome::Left {
                    session: *session,
                    exit,
                },
                None if self.reg.sessions.contains_key(session) => Outcome::NotInRoom {
                    session: *session,
                    room: room.clone(),
                    client_seq: None,
                },
                None => Outcome::Nothing,
            },
            Command::Say {
                session,
                room,
                client_seq,
                text,
                time_ms,
            } => self.say(*session, room, *client_seq, text, *time_ms),
        }
    }

    fn open(&mut self, session: SessionId, user: &str, client_id: u64) -> Outcome {
        if self.reg.sessions.contains_key(&session) {
            return Outcome::Nothing;
        }
        // The same device reconnecting takes over its own slot instead of using another.
        let replaced = match self.reg.by_client.get(&client_id).copied() {
            Some(old) if self.reg.user_is(&old, user) => {
                let exits = self.close(old).unwrap_or_default();
                Some((old, exits))
            }
            _ => None,
        };
        let devices = self.reg.devices.get(user).map_or(0, Vec::len);
        if devices >= self.devices_per_user {
            return Outcome::SessionRefused { session, devices };
        }
        self.reg.sessions.insert(
            session,
            Session {
                user: user.into(),
                client_id,
                rooms: Vec::new(),
            },
        );
        self.reg.by_client.insert(client_id, session);
        self.reg
            .devices
            .entry(user.to_owned())
            .or_default()
            .push(session);
        Outcome::SessionOpened { session, replaced }
    }

    fn close(&mut self, session: SessionId) -> Option<Vec<RoomExit>> {
        let s = self.reg.sessions.get(&session)?;
        let rooms = s.rooms.clone();
        let exits = rooms
            .iter()
            .filter_map(|r| self.leave(session, r))
            .collect();
        let s = self.reg.sessions.remove(&session)?;
        if self.reg.by_client.get(&s.client_id) == Some(&session) {
            self.reg.by_client.remove(&s.client_id);
        }
        if let Some(list) = self.reg.devices.get_mut(&*s.user) {
            list.retain(|x| *x != session);
            if list.is_empty() {
                self.reg.devices.remove(&*s.user);
            }
        }
        Some(exits)
    }

    fn join(&mut self, session: SessionId, room: &str, after_seq: Option<u64>) -> Outcome {
        let Some(s) = self.reg.sessions.get(&session) else {
            return Outcome::Nothing;
        };
        let user = s.user.clone();
        let r = self.rooms.entry(room.to_owned()).or_default();
        let last = r.messages.last().map_or(0, |m| m.seq);
        let replay_after = after_seq.unwrap_or(last.saturating_sub(self.history_size as u64));
        let user_arrived = !r.members.iter().any(|m| self.reg.user_is(m, &user));
        if !r.members.contains(&session) {
            r.members.push(session);
            if let Some(s) = self.reg.sessions.get_mut(&session) {
                s.rooms.push(room.to_owned());
            }
        }
        Outcome::Joined {
            session,
            room: room.to_owned(),
            user_arrived,
            replay_after,
        }
    }

    fn leave(&mut self, session: SessionId, room: &str) -> Option<RoomExit> {
        let s = self.reg.sessions.get_mut(&session)?;
        let pos = s.rooms.iter().position(|r| r == room)?;
        s.rooms.swap_remove(pos);
        let user = s.user.clone();
        let r = self.rooms.get_mut(room)?;
        r.members.retain(|m| *m != session);
        let user_gone = !r.members.iter().any(|m| self.reg.user_is(m, &user));
        Some(RoomExit {
            room: room.to_owned(),
            user: user.to_string(),
            user_gone,
        })
    }

    fn say(
        &mut self,
        session: SessionId,
        room: &str,
        client_seq: u64,
        text: &Arc<str>,
        time_ms: u64,
    ) -> Outcome {
        let Some(s) = self.reg.sessions.get(&session) else {
            return Outcome::Nothing;
        };
        let recent = self.reg.recent.entry(s.client_id).or_default();
        if let Some(seq) = recent.find(client_seq) {
            return Outcome::Duplicate {
                session,
                room: room.to_owned(),
                client_seq,
                seq,
            };
        }
        let Some(r) = self
            .rooms
            .get_mut(room)
            .filter(|r| r.members.contains(&session))
        else {
            return Outcome::NotInRoom {
                session,
                room: room.to_owned(),
                client_seq: Some(client_seq),
            };
        };
        let seq = r.messages.last().map_or(1, |m| m.seq + 1);
        let message = StoredMessage {
            seq,
            author: Arc::clone(&s.user),
            time_ms,
            text: Arc::clone(text),
        };
        r.messages.push(message.clone());
        recent.remember(client_seq, seq);
        let client_id = s.client_id;
        self.tick(client_id, time_ms);
        Outcome::Said {
            session,
            room: room.to_owned(),
            client_seq,
            message,
        }
    }

    /// Moves the records' clock to `time_ms` as `client_id` said something, and now and then
    /// drops the records of clients with no session that said nothing for the retention.
    fn tick(&mut self, client_id: u64, time_ms: u64) {
        let a = &mut self.reg.activity;
        a.clock_ms = a.clock_ms.max(time_ms);
        a.last_said.insert(client_id, a.clock_ms);
        if a.clock_ms < a.swept_ms.saturating_add(DEDUP_SWEEP_MS) {
            return;
        }
        let (clock, cutoff) = (a.clock_ms, a.clock_ms.saturating_sub(DEDUP_RETENTION_MS));
        a.swept_ms = clock;
        let by_client = &self.reg.by_client;
        let last_said = &mut a.last_said;
        self.reg.recent.retain(|id, _| {
            // A record of an image without times (version 2) starts its retention now.
            let last = *last_said.entry(*id).or_insert(clock);
            let keep = last >= cutoff || by_client.contains_key(id);
            if !keep {
                last_said.remove(id);
            }
            keep
        });
    }

    /// Forgets when clients last said something, as an image of version 2 does.
    #[cfg(test)]
    pub(crate) fn forget_activity(&mut self) {
        self.reg.activity = Activity::default();
    }

    /// Clients whose de-duplication records are kept.
    pub fn dedup_clients(&self) -> usize {
        self.reg.recent.len()
    }

    /// Sessions in `room`, in join order.
    pub fn members(&self, room: &str) -> &[SessionId] {
        self.rooms.get(room).map_or(&[], |r| &r.members)
    }

    /// Distinct usernames in `room`, sorted.
    pub fn member_names(&self, room: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .members(room)
            .iter()
            .filter_map(|&m| self.user_of(m).map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Messages of `room` with seq > `after`, oldest first.
    pub fn messages_after(&self, room: &str, after: u64) -> &[StoredMessage] {
        let Some(r) = self.rooms.get(room) else {
            return &[];
        };
        // Sequence numbers are dense from 1, so seq s sits at position s - 1.
        let from = (after as usize).min(r.messages.len());
        &r.messages[from..]
    }

    /// Up to `limit` messages of `room` with seq < `before` (newest if None), oldest first,
    /// and whether older ones exist.
    pub fn page(&self, room: &str, before: Option<u64>, limit: usize) -> (&[StoredMessage], bool) {
        let Some(r) = self.rooms.get(room) else {
            return (&[], false);
        };
        let end = before.map_or(r.messages.len(), |b| {
            (b.saturating_sub(1) as usize).min(r.messages.len())
        });
        let start = end.saturating_sub(limit);
        (&r.messages[start..end], start > 0)
    }

    /// The rooms in the order a snapshot image holds them (by name).
    pub fn image_rooms(&self) -> Vec<RoomImage<'_>> {
        let mut rooms: Vec<RoomImage<'_>> = self
            .rooms
            .iter()
            .map(|(name, r)| RoomImage {
                name,
                messages: &r.messages,
                members: &r.members,
            })
            .collect();
        rooms.sort_unstable_by_key(|r| r.name);
        rooms
    }

    /// What a snapshot image holds after the rooms.
    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    /// Highest seq in `room` (0 if empty or unknown).
    pub fn last_seq(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .and_then(|r| r.messages.last())
            .map_or(0, |m| m.seq)
    }

    /// The username of a live session.
    pub fn user_of(&self, session: SessionId) -> Option<&str> {
        self.reg.sessions.get(&session).map(|s| &*s.user)
    }

    /// Live sessions held by `node`, for closing them when the node is known to have lost them.
    pub fn sessions_on(&self, node: super::NodeId) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = self
            .reg
            .sessions
            .keys()
            .filter(|s| s.node == node)
            .copied()
            .collect();
        v.sort();
        v
    }

    /// The nodes holding live sessions.
    pub fn session_nodes(&self) -> BTreeSet<super::NodeId> {
        self.reg.sessions.keys().map(|s| s.node).collect()
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.reg.sessions.len()
    }

    /// Live sessions (devices) of `user`, for the session-limit invariant of the simulation.
    pub fn devices(&self, user: &str) -> usize {
        self.reg.devices.get(user).map_or(0, Vec::len)
    }

    /// Checks that a state decoded from bytes is one applying commands can have made: every
    /// session a room, a client id or a user lists is live and agrees (it is in that room, has
    /// that client id, is that user's), and each room's sequence numbers run from 1 without
    /// gaps. Says what is wrong otherwise.
    pub fn check(&self) -> Result<(), String> {
        let session = |s: &SessionId| self.reg.sessions.get(s);
        for (name, r) in &self.rooms {
            let stray = r
                .members
                .iter()
                .find(|s| session(s).is_none_or(|s| !s.rooms.contains(name)));
            if let Some(s) = stray {
                return Err(format!("room {name:?} lists a session not in it: {s:?}"));
            }
            if let Some((i, m)) = (1..).zip(&r.messages).find(|(i, m)| m.seq != *i) {
                return Err(format!(
                    "room {name:?} holds message seq {} at position {i}",
                    m.seq
                ));
            }
        }
        let stray = self
            .reg
            .by_client
            .iter()
            .find(|(id, s)| session(s).is_none_or(|s| s.client_id != **id));
        if let Some((id, s)) = stray {
            return Err(format!(
                "client id {id} maps to a session of another: {s:?}"
            ));
        }
        for (user, list) in &self.reg.devices {
            if let Some(s) = list.iter().find(|s| !self.reg.user_is(s, user)) {
                return Err(format!("user {user:?} lists a session not theirs: {s:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
