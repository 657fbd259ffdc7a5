//! Codec errors and the stable error codes carried by `Error` frames.

use std::fmt;

/// Why bytes could not be turned into a frame (or a frame into bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The first two bytes are not "RC".
    BadMagic,
    /// A protocol version this build does not speak.
    UnsupportedVersion(u8),
    /// Flag or reserved bits set (flags, reserved).
    BadFlags(u16, u16),
    /// Declared payload length above the limit; rejected before allocating.
    TooLarge {
        /// Declared length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// Payload CRC-32 mismatch.
    BadChecksum {
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes received.
        actual: u32,
    },
    /// Frame kind not defined for this direction.
    UnknownKind(u8),
    /// The payload does not decode as its kind's type.
    BadPayload {
        /// Frame kind.
        kind: u8,
        /// Decoder message.
        reason: String,
    },
    /// The payload ends inside a value it declares (cut short, or a damaged or hostile
    /// length), found before anything is allocated for the value.
    Truncated {
        /// Frame kind (0 for a snapshot image).
        kind: u8,
        /// Bytes missing for the value being read.
        missing: usize,
    },
    /// A value could not be encoded.
    Encode(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadMagic => write!(f, "bad magic (not a ringchat frame)"),
            CodecError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            CodecError::BadFlags(fl, r) => write!(f, "unknown flags {fl:#x} / reserved {r:#x} set"),
            CodecError::TooLarge { length, max } => {
                write!(
                    f,
                    "frame payload of {length} bytes exceeds the limit of {max}"
                )
            }
            CodecError::BadChecksum { expected, actual } => {
                write!(
                    f,
                    "payload checksum mismatch (header {expected:#010x}, data {actual:#010x})"
                )
            }
            CodecError::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            CodecError::BadPayload { kind, reason } => {
                write!(f, "malformed payload for frame kind {kind:#04x}: {reason}")
            }
            CodecError::Truncated { kind, missing } => write!(
                f,
                "payload for frame kind {kind:#04x} ends {missing} bytes short of what it declares"
            ),
            CodecError::Encode(e) => write!(f, "cannot encode frame: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

impl CodecError {
    /// The error code reported to the peer that sent the bad bytes.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Stable error codes of `Error` frames. Numbers never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The bytes received are not a valid frame; the connection is closed.
    MalformedFrame = 1,
    /// A frame declared a payload above the limit; the connection is closed.
    FrameTooLarge = 2,
    /// The frame's protocol version is not supported; the connection is closed.
    UnsupportedVersion = 3,
    /// A frame that is not valid in the connection's state (e.g. Say before Hello).
    ProtocolViolation = 4,
    /// The username is not valid.
    InvalidUser = 10,
    /// The room name is not valid.
    InvalidRoom = 11,
    /// The message text is empty, too long or contains control characters.
    InvalidText = 12,
    /// The user already has the maximum number of connected devices.
    DeviceLimit = 13,
    /// The request needs the session to be in the room first.
    NotInRoom = 14,
    /// The node is at its connection limit.
    ServerFull = 20,
    /// The node cannot take more pending writes right now; retry later.
    Busy = 21,
    /// The node is shutting down; reconnect to another node.
    ShuttingDown = 22,
    /// The client did not read its data fast enough and is disconnected.
    SlowConsumer = 23,
    /// The node cannot write to its disk (full, or an I/O error): it takes no writes until
    /// it recovers; reconnect to another node.
    StorageFailed = 24,
    /// The node has known no leader for longer than its bound (it is cut off from a majority
    /// of the cluster): writes there would wait indefinitely; reconnect to another node.
    NoLeader = 25,
    /// An internal error (e.g. storage failure); the request was not applied.
    Internal = 30,
}

impl ErrorCode {
    /// All codes, for documentation and tests.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::ProtocolViolation,
        ErrorCode::InvalidUser,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidText,
        ErrorCode::DeviceLimit,
        ErrorCode::NotInRoom,
        ErrorCode::ServerFull,
        ErrorCode::Busy,
        ErrorCode::ShuttingDown,
        ErrorCode::SlowConsumer,
        ErrorCode::StorageFailed,
        ErrorCode::NoLeader,
        ErrorCode::Internal,
    ];

    /// Maps a wire number back to a code (`None` for a number this build does not know).
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == n)
    }

    /// Short stable name, e.g. `DEVICE_LIMIT`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::ProtocolViolation => "PROTOCOL_VIOLATION",
            ErrorCode::InvalidUser => "INVALID_USER",
            ErrorCode::InvalidRoom => "INVALID_ROOM",
            ErrorCode::InvalidText => "INVALID_TEXT",
            ErrorCode::DeviceLimit => "DEVICE_LIMIT",
            ErrorCode::NotInRoom => "NOT_IN_ROOM",
            ErrorCode::ServerFull => "SERVER_FULL",
            ErrorCode::Busy => "BUSY",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::StorageFailed => "STORAGE_FAILED",
            ErrorCode::NoLeader => "NO_LEADER",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}
