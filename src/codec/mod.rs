//! Wire codec: a fixed 16-byte header then a bincode 2 payload. The only module that encodes.
//!
//! Decoding never panics: the header is validated (magic, version, flags, length limit) before
//! the payload is read, the CRC is checked before it is decoded, and a length prefix inside the
//! payload that claims more bytes than follow it is refused before anything is allocated for
//! it (see `bounded`); bincode's byte limit catches the rest.

mod bounded;
pub mod disk;
mod error;
mod frames;
mod header;
mod peer;
mod snapshot;

pub use error::{CodecError, ErrorCode};
pub use frames::*;
pub use header::{Header, HEADER_LEN, MAGIC, VERSION};
pub use peer::*;
pub use snapshot::{decode_snapshot, encode_snapshot, SnapshotEncoder};

use bounded::Bounded;
use serde::{Deserialize, Serialize};

/// Largest payload a server accepts from a client (and the bincode allocation limit for it).
pub const MAX_CLIENT_PAYLOAD: u32 = 64 * 1024;
/// Largest payload a client accepts from a server.
pub const MAX_SERVER_PAYLOAD: u32 = 4 * 1024 * 1024;
/// Largest payload of a node-to-node frame (an `Append` batch is kept well below it).
pub const MAX_PEER_PAYLOAD: u32 = 16 * 1024 * 1024;

/// bincode configuration of every payload: little endian, fixed-width integers, byte limit `N`.
const fn config<const N: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<N>,
> {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<N>()
}

/// A family of frames sharing one kind space (client->server, server->client).
pub trait FrameSet: Sized {
    /// Largest payload accepted when decoding this family.
    const MAX_PAYLOAD: u32;
    /// The header kind byte of this frame.
    fn kind(&self) -> u8;
    /// Appends the bincode payload to `out`.
    fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes a payload of frame kind `kind`.
    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, CodecError>;
}

fn put<T: Serialize, const N: usize>(v: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(v, out, config::<N>())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

fn take<'a, T: Deserialize<'a>, const N: usize>(
    kind: u8,
    payload: &'a [u8],
) -> Result<T, CodecError> {
    let (Bounded(v), used) = bincode::serde::borrow_decode_from_slice(payload, config::<N>())
        .map_err(|e| decode_error(kind, e))?;
    if used != payload.len() {
        return Err(CodecError::BadPayload {
            kind,
            reason: format!("{} trailing bytes", payload.len() - used),
        });
    }
    Ok(v)
}

/// Decodes the value at the start of `payload`, whatever follows it.
fn take_prefix<'a, T: Deserialize<'a>, const N: usize>(
    kind: u8,
    payload: &'a [u8],
) -> Result<T, CodecError> {
    bincode::serde::borrow_decode_from_slice(payload, config::<N>())
        .map(|(Bounded(v), _)| v)
        .map_err(|e| decode_error(kind, e))
}

fn decode_error(kind: u8, e: bincode::error::DecodeError) -> CodecError {
    match e {
        bincode::error::DecodeError::UnexpectedEnd { additional } => CodecError::Truncated {
            kind,
            missing: additional,
        },
        e => CodecError::BadPayload {
            kind,
            reason: e.to_string(),
        },
    }
}

macro_rules! frame_set {
    ($(#[$m:meta])* $name:ident, $max:expr, { $($(#[$vm:meta])* $kind:literal => $var:ident($ty:ty),)+ }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $var($ty),)+ }

        impl FrameSet for $name {
            const MAX_PAYLOAD: u32 = $max;
            fn kind(&self) -> u8 {
                match self { $($name::$var(_) => $kind,)+ }
            }
            fn encode_payload(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                match self { $($name::$var(v) => put::<_, { $max as usize }>(v, out),)+ }
            }
            fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, CodecError> {
                match kind {
                    $($kind => take::<$ty, { $max as usize }>(kind, payload).map($name::$var),)+
                    other => Err(CodecError::UnknownKind(other)),
                }
            }
        }
    };
}

frame_set!(
    /// Frames a client sends to a server.
    ClientFrame, MAX_CLIENT_PAYLOAD, {
    /// Open a session.
    0x01 => Hello(Hello),
    /// Join a room.
    0x02 => Join(Join),
    /// Leave a room.
    0x03 => Leave(Leave),
    /// Post a message.
    0x04 => Say(Say),
    /// List a room's members.
    0x05 => Who(Who),
    /// Page through history.
    0x06 => History(History),
    /// Liveness probe.
    0x07 => Ping(Ping),
    /// Admin: the node's view of the cluster.
    0x08 => Status(StatusRequest),
    /// Admin: an operation on the cluster (remove a node, take a snapshot).
    0x09 => Admin(AdminRequest),
});

frame_set!(
    /// Frames a server sends to a client.
    ServerFrame, MAX_SERVER_PAYLOAD, {
    /// Session open.
    0x41 => Welcome(Welcome),
    /// A request failed or the connection closes.
    0x42 => Error(ErrorFrame),
    /// A chat message.
    0x43 => Message(ChatMessage),
    /// A `Say` is committed.
    0x44 => Ack(Ack),
    /// A join is complete.
    0x45 => Joined(Joined),
    /// A leave is complete.
    0x46 => Left(Left),
    /// Presence change.
    0x47 => Notice(Notice),
    /// Answer to `Who`.
    0x48 => Members(Members),
    /// Answer to `History`.
    0x49 => HistoryPage(HistoryPage),
    /// Answer to `Ping`.
    0x4A => Pong(Ping),
    /// Answer to `Status`.
    0x4B => Status(StatusReport),
    /// The node is full: connect to `addr` instead (sent instead of `Welcome`, then closed).
    0x4C => Redirect(Redirect),
    /// Answer to `Admin`.
    0x4D => AdminReply(AdminReply),
});

frame_set!(
    /// Frames between cluster nodes.
    PeerFrame, MAX_PEER_PAYLOAD, {
    /// Connection handshake.
    0x81 => Hello(PeerHello),
    /// Liveness.
    0x82 => Heartbeat(Heartbeat),
    /// Log replication.
    0x83 => Append(Append),
    /// Replication answer.
    0x84 => AppendReply(AppendReply),
    /// Election token.
    0x85 => Token(Token),
    /// Election result.
    0x86 => Elected(Elected),
    /// Writes forwarded to the leader.
    0x87 => Forward(Forward),
    /// Leader -> follower: one chunk of a snapshot, for a follower behind the compacted log.
    0x88 => Snapshot(SnapshotChunk),
    /// Follower -> leader: how much of the snapshot it has received.
    0x89 => SnapshotReply(SnapshotReply),
    /// New node -> any member, first frame on its own link: please add me.
    0x8A => Join(JoinRequest),
    /// Member -> new node: the answer; the link closes after it.
    0x8B => JoinReply(JoinReply),
});

/// Appends one complete frame (header and payload) to `out`.
pub fn encode_into<F: FrameSet>(frame: &F, out: &mut Vec<u8>) -> Result<(), CodecError> {
    write_frame(frame.kind(), F::MAX_PAYLOAD, out, |out| {
        frame.encode_payload(out)
    })
}

/// Appends a header for `kind`, the payload `write` produces, then fills in length and CRC;
/// a payload over `max` is taken back out and refused.
fn write_frame(
    kind: u8,
    max: u32,
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let payload = &out[start + HEADER_LEN..];
    let length = u32::try_from(payload.len())
        .map_err(|_| CodecError::Encode("payload over 4 GiB".into()))?;
    if length > max {
        out.truncate(start);
        return Err(CodecError::TooLarge { length, max });
    }
    let header = Header {
        kind,
        flags: 0,
        length,
        crc: crc32fast::hash(payload),
    };
    let mut h = [0u8; HEADER_LEN];
    header.emit(&mut h);
    out[start..start + HEADER_LEN].copy_from_slice(&h);
    Ok(())
}

/// Encodes one complete frame into a new buffer.
pub fn encode<F: FrameSet>(frame: &F) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Decodes the first frame of `buf`: `Ok(None)` if more bytes are needed, otherwise the frame
/// and the number of bytes it used. An error means the stream is unusable (close it).
pub fn decode<F: FrameSet>(buf: &[u8]) -> Result<Option<(F, usize)>, CodecError> {
    let Some((kind, payload)) = checked_payload(buf, F::MAX_PAYLOAD)? else {
        return Ok(None);
    };
    Ok(Some((
        F::decode_payload(kind, payload)?,
        HEADER_LEN + payload.len(),
    )))
}

/// A server frame decoded by [`decode_server_ref`]: a `Message` borrows its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrameRef<'a> {
    /// A chat message, borrowed from the buffer.
    Message(ChatMessageRef<'a>),
    /// Any other frame, owned (boxed: rare, and it would make every result as big as itself).
    Other(Box<ServerFrame>),
}

/// Like `decode::<ServerFrame>`, but a `Message` is not copied out of `buf`: a client's
/// per-delivery path, with the same checks.
pub fn decode_server_ref(buf: &[u8]) -> Result<Option<(ServerFrameRef<'_>, usize)>, CodecError> {
    let Some((kind, payload)) = checked_payload(buf, ServerFrame::MAX_PAYLOAD)? else {
        return Ok(None);
    };
    let frame = if kind == MESSAGE_KIND {
        ServerFrameRef::Message(take::<_, { MAX_SERVER_PAYLOAD as usize }>(kind, payload)?)
    } else {
        ServerFrameRef::Other(Box::new(ServerFrame::decode_payload(kind, payload)?))
    };
    Ok(Some((frame, HEADER_LEN + payload.len())))
}

/// The kind and the CRC-checked payload of the first frame of `buf`; `Ok(None)` if more bytes
/// are needed.
fn checked_payload(buf: &[u8], max: u32) -> Result<Option<(u8, &[u8])>, CodecError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::parse(head, max)?;
    let end = HEADER_LEN + header.length as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    let actual = crc32fast::hash(payload);
    if actual != header.crc {
        return Err(CodecError::BadChecksum {
            expected: header.crc,
            actual,
        });
    }
    Ok(Some((header.kind, payload)))
}

/// The header kind of a `ServerFrame::Message`.
const MESSAGE_KIND: u8 = 0x43;

/// Encodes a `Message` frame from borrowed fields: the per-message hot path, byte-identical to
/// `encode(&ServerFrame::Message(..))` without building an owned `ChatMessage` first.
pub fn encode_message(room: &str, author: &str, seq: u64, time_ms: u64, text: &str) -> Vec<u8> {
    let msg = ChatMessageRef {
        room: room.as_bytes(),
        seq,
        author: author.as_bytes(),
        time_ms,
        text: text.as_bytes(),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + 48 + room.len() + author.len() + text.len());
    // Writing to a Vec cannot fail and the fields are within limits the core already checked.
    let _ = write_frame(MESSAGE_KIND, MAX_SERVER_PAYLOAD, &mut out, |out| {
        put::<_, { MAX_SERVER_PAYLOAD as usize }>(&msg, out)
    });
    out
}

/// Encodes an `Append` peer frame over borrowed entries: the leader sends the same log slice
/// to every follower without cloning it into an owned `Append` first. Byte-identical to
/// `encode(&PeerFrame::Append(..))`.
pub fn encode_append(
    epoch: u64,
    prev_index: u64,
    prev_epoch: u64,
    commit: u64,
    durable: u64,
    entries: &[crate::core::log::Entry],
) -> Result<Vec<u8>, CodecError> {
    #[derive(serde::Serialize)]
    struct AppendRef<'a> {
        epoch: u64,
        prev_index: u64,
        prev_epoch: u64,
        commit: u64,
        durable: u64,
        entries: &'a [crate::core::log::Entry],
    }
    let append = AppendRef {
        epoch,
        prev_index,
        prev_epoch,
        commit,
        durable,
        entries,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + 48 + 96 * entries.len());
    write_frame(0x83, MAX_PEER_PAYLOAD, &mut out, |out| {
        put::<_, { MAX_PEER_PAYLOAD as usize }>(&append, out)
    })?;
    Ok(out)
}

#[cfg(test)]
mod alloc_probe;
#[cfg(test)]
mod tests;
