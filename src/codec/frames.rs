//! Payload types of every frame kind. Field order here IS the wire order (docs/PROTOCOL.md).

use serde::{Deserialize, Serialize};

/// Client -> server: opens a session for `user` on the device `client_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Username, see `chat::names::validate_user`.
    pub user: String,
    /// Random id chosen once per client instance; a reconnecting client reuses it to resume.
    pub client_id: u64,
}

/// Client -> server: joins `room`, creating it on first join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// Room name.
    pub room: String,
    /// `None`: replay the last N messages. `Some(s)`: replay every message with seq > s (resume).
    pub after_seq: Option<u64>,
}

/// Client -> server: leaves `room`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// Room name.
    pub room: String,
}

/// Client -> server: posts `text` to `room`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Say {
    /// Room name; the session must have joined it.
    pub room: String,
    /// Per-client increasing number; (client_id, client_seq) de-duplicates re-sends.
    pub client_seq: u64,
    /// UTF-8 message text.
    pub text: String,
}

/// Client -> server: asks for the members of `room`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// Room name.
    pub room: String,
}

/// Client -> server: asks for a page of history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Room name.
    pub room: String,
    /// Only messages with seq < before_seq; `None` means the newest.
    pub before_seq: Option<u64>,
    /// Maximum messages returned (the server caps it).
    pub limit: u32,
}

/// Either direction: liveness probe, answered by a `Pong` with the same nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed back unchanged.
    pub nonce: u64,
}

/// Server -> client: the session is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Id of the node serving this connection.
    pub node_id: u32,
    /// The username, echoed.
    pub user: String,
    /// Messages replayed on a plain join.
    pub history_size: u32,
    /// Longest accepted message text in bytes.
    pub max_text: u32,
}

/// Server -> client: this node is at its connection limit; `addr` is a less loaded node of
/// the cluster. The connection is closed after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// Client address of the node to use instead.
    pub addr: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Server -> client: a request failed, or the connection is being closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable error code, see [`crate::codec::ErrorCode`].
    pub code: u16,
    /// The `client_seq` of the `Say` that failed, if any.
    pub client_seq: Option<u64>,
    /// Human-readable explanation.
    pub message: String,
}

/// Server -> client: one chat message of a room, live or replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Room name.
    pub room: String,
    /// Per-room sequence number, starting at 1, no gaps.
    pub seq: u64,
    /// Username of the author.
    pub author: String,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Message text.
    pub text: String,
}

/// A [`ChatMessage`] whose strings are bytes borrowed from a buffer, with the same wire
/// encoding: the server encodes a delivery from it without an owned copy, and a client decodes
/// one without allocating (see `codec::decode_server_ref`). Decoding does not check that the
/// strings are UTF-8; a client that shows them does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessageRef<'a> {
    /// Room name.
    pub room: &'a [u8],
    /// Per-room sequence number.
    pub seq: u64,
    /// Username of the author.
    pub author: &'a [u8],
    /// Server timestamp, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Message text.
    pub text: &'a [u8],
}

/// Server -> client: the `Say` with `client_seq` is committed as `seq` in `room`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Room name.
    pub room: String,
    /// The client's sequence number from the `Say`.
    pub client_seq: u64,
    /// The room sequence number the message got.
    pub seq: u64,
}

/// Server -> client: the join is complete; replayed history (seq <= last_seq) came before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// Room name.
    pub room: String,
    /// Highest sequence number in the room at the time of the join (0 for an empty room).
    pub last_seq: u64,
    /// Usernames present in the room, sorted, each once.
    pub members: Vec<String>,
}

/// Server -> client: the leave is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// Room name.
    pub room: String,
}

/// What a [`Notice`] announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeEvent {
    /// The user entered the room (its first device did).
    Joined,
    /// The user left the room (its last device did).
    Left,
}

/// Server -> client: presence change in a room the client is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Room name.
    pub room: String,
    /// The user that came or went.
    pub user: String,
    /// What happened.
    pub event: NoticeEvent,
}

/// Server -> client: answer to `Who`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Room name.
    pub room: String,
    /// Usernames present, sorted, each once.
    pub users: Vec<String>,
}

/// Server -> client: answer to `History`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Room name.
    pub room: String,
    /// The messages, in increasing seq.
    pub messages: Vec<ChatMessage>,
    /// True when older messages exist before the first one returned.
    pub more: bool,
}
