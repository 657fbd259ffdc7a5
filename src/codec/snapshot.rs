//! The state machine's snapshot encoding: what a snapshot file holds after its framing, and what
//! the leader streams to a follower that is behind the compacted log.

use serde::{Deserialize, Serialize};

use super::{put, take, CodecError};
use crate::core::chat::ChatState;
use crate::core::membership::Config;

/// Format of the snapshot image; a node refuses an image of another version.
const IMAGE_VERSION: u32 = 2;
/// Bound on what decoding a snapshot may allocate (a corrupt length cannot exhaust memory).
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
    version: u32,
    config: Config,
    chat: ChatState,
}

/// Encodes the cluster configuration and the chat state as a snapshot image.
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

/// Decodes a snapshot image (the chat state's limits are unset: see
/// [`ChatState::configure`]).
pub fn decode_snapshot(bytes: &[u8]) -> Result<(Config, ChatState), CodecError> {
    let image: Image = take::<_, MAX_IMAGE>(IMAGE_KIND, bytes)?;
    if image.version != IMAGE_VERSION {
        return Err(CodecError::BadPayload {
            kind: IMAGE_KIND,
            reason: format!(
                "snapshot image version {} (this build reads {IMAGE_VERSION})",
                image.version
            ),
        });
    }
    Ok((image.config, image.chat))
}
