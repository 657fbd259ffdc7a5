//! The state machine's snapshot encoding: what a snapshot file holds after its framing, and what
//! the leader streams to a follower that is behind the compacted log.

use serde::{Deserialize, Serialize};

use super::{put, take, take_prefix, CodecError};
use crate::core::chat::{Activity, ChatState};
use crate::core::membership::Config;

/// Format of the snapshot image; a node reads this one and the one before, and refuses others.
const IMAGE_VERSION: u32 = 3;
/// The version before: the same image without the de-duplication records' clock at its end.
const IMAGE_VERSION_2: u32 = 2;
/// bincode's byte limit for images. Too large to bound what decoding allocates, which the
/// image's own size bounds instead: a length past its end is refused before it is allocated.
const MAX_IMAGE: usize = 1 << 36;
/// Kind reported in errors about snapshot images (not a frame kind).
const IMAGE_KIND: u8 = 0;

#[derive(Serialize)]
struct ImageRef<'a> {
    version: u32,
    config: &'a Config,
    chat: &'a ChatState,
}

#[derive(Deserialize)]
struct Image {
    /// Read first, by itself, to tell the format.
    _version: u32,
    config: Config,
    chat: ChatState,
}

/// Encodes the cluster configuration and the chat state as a snapshot image, in one go: the
/// definition of the format, which [`SnapshotEncoder`] (what nodes use) matches byte for byte.
pub fn encode_snapshot(members: &Config, chat: &ChatState) -> Result<Vec<u8>, CodecError> {
    let image = ImageRef {
        version: IMAGE_VERSION,
        config: members,
        chat,
    };
    let mut out = Vec::new();
    put::<_, MAX_IMAGE>(&image, &mut out)?;
    Ok(out)
}

/// A snapshot image encoded a step at a time, so that a long chat history does not stall the
/// event loop. Everything but the rooms' histories is encoded when it is made; the histories
/// are encoded later from the live chat state, each room up to the length it had then. Rooms
/// only grow and are never removed, so the image is byte for byte [`encode_snapshot`] of the
/// state it was made from, as long as that state is not replaced meanwhile.
#[derive(Debug)]
pub struct SnapshotEncoder {
    out: Vec<u8>,
    /// The rooms in image order, each with what follows its history in the image.
    rooms: Vec<RoomCut>,
    /// The room being encoded.
    room: usize,
    /// Its next message.
    next: usize,
}

/// A room's history as it was when the encoder was made.
#[derive(Debug)]
struct RoomCut {
    name: String,
    count: usize,
    /// The image bytes that follow the history: its members, then the next room's name and
    /// history length, or after the last room the rest of the state.
    after: Vec<u8>,
}

impl SnapshotEncoder {
    /// Captures `config` and `chat` (all but the histories, and how long each is); `size_hint`
    /// is the expected image size, so the image is not copied as it grows.
    pub fn new(
        config: &Config,
        chat: &ChatState,
        size_hint: usize,
    ) -> Result<SnapshotEncoder, CodecError> {
        let image_rooms = chat.image_rooms();
        let mut out = Vec::with_capacity(size_hint);
        // The layout of `ImageRef`: bincode writes a struct as its fields in order and a map
        // or a sequence as its length (a u64) then its items.
        put::<_, MAX_IMAGE>(&(IMAGE_VERSION, config, image_rooms.len() as u64), &mut out)?;
        let mut rooms: Vec<RoomCut> = Vec::with_capacity(image_rooms.len());
        for r in &image_rooms {
            let count = r.messages.len();
            put::<_, MAX_IMAGE>(&(r.name, count as u64), ahead(&mut out, &mut rooms))?;
            rooms.push(RoomCut {
                name: r.name.to_owned(),
                count,
                after: Vec::new(),
            });
            put::<_, MAX_IMAGE>(&r.members, ahead(&mut out, &mut rooms))?;
        }
        put::<_, MAX_IMAGE>(chat.registry(), ahead(&mut out, &mut rooms))?;
        Ok(SnapshotEncoder {
            out,
            rooms,
            room: 0,
            next: 0,
        })
    }

    /// Bytes of the image encoded so far.
    pub fn encoded_bytes(&self) -> usize {
        self.out.len()
    }

    /// Encodes about `budget` more bytes of the image (at least one message) from `chat`, the
    /// state the encoder was made from or a later one; returns the image once it is complete.
    pub fn step(&mut self, chat: &ChatState, budget: usize) -> Result<Option<Vec<u8>>, CodecError> {
        let stop = self.out.len().saturating_add(budget.max(1));
        while let Some(cut) = self.rooms.get(self.room) {
            let Some(messages) = chat.messages_after(&cut.name, 0).get(self.next..cut.count) else {
                return Err(CodecError::Encode(format!(
                    "room {:?} lost messages while its snapshot was being encoded",
                    cut.name
                )));
            };
            for m in messages {
                if self.out.len() >= stop {
                    return Ok(None);
                }
                put::<_, MAX_IMAGE>(m, &mut self.out)?;
                self.next += 1;
            }
            self.out.extend_from_slice(&cut.after);
            self.room += 1;
            self.next = 0;
        }
        if self.out.len() > MAX_IMAGE {
            return Err(CodecError::Encode(format!(
                "snapshot image of {} bytes (the limit is {MAX_IMAGE})",
                self.out.len()
            )));
        }
        Ok(Some(std::mem::take(&mut self.out)))
    }
}

/// Where the bytes captured next go: after the last room's history, or before the first one.
fn ahead<'a>(out: &'a mut Vec<u8>, rooms: &'a mut [RoomCut]) -> &'a mut Vec<u8> {
    match rooms.last_mut() {
        Some(r) => &mut r.after,
        None => out,
    }
}

/// Decodes a snapshot image (the chat state's limits are unset: see
/// [`ChatState::configure`]).
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Config, ChatState), CodecError> {
    let image: Image = match take_prefix::<u32, MAX_IMAGE>(IMAGE_KIND, bytes)? {
        IMAGE_VERSION => take::<_, MAX_IMAGE>(IMAGE_KIND, bytes)?,
        // What version 3 added is the last thing in the image: an empty one completes it.
        IMAGE_VERSION_2 => {
            let mut upgraded = Vec::with_capacity(bytes.len() + 16);
            upgraded.extend_from_slice(bytes);
            put::<_, MAX_IMAGE>(&Activity::default(), &mut upgraded)?;
            take::<_, MAX_IMAGE>(IMAGE_KIND, &upgraded)?
        }
        other => {
            return Err(CodecError::BadPayload {
                kind: IMAGE_KIND,
                reason: format!(
                    "snapshot image version {other} (this build reads {IMAGE_VERSION_2} and \
                     {IMAGE_VERSION})"
                ),
            })
        }
    };
    image.chat.check().map_err(|why| CodecError::BadPayload {
        kind: IMAGE_KIND,
        reason: format!("inconsistent snapshot image: {why}"),
    })?;
    Ok((image.config, image.chat))
}
