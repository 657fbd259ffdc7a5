//! The fixed 16-byte frame header, parsed and emitted by offset (smoltcp style).

use super::CodecError;

/// Size in bytes of every frame header.
pub const HEADER_LEN: usize = 16;
/// First two bytes of every frame: ASCII "RC".
pub const MAGIC: [u8; 2] = *b"RC";
/// Protocol version carried in every header.
pub const VERSION: u8 = 1;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const FLAGS: Range<usize> = 4..6;
    pub const RESERVED: Range<usize> = 6..8;
    pub const LENGTH: Range<usize> = 8..12;
    pub const CRC: Range<usize> = 12..16;
}

/// A parsed, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame kind: selects the payload type.
    pub kind: u8,
    /// Flag bits; none are defined in version 1, so they must be zero.
    pub flags: u16,
    /// Payload length in bytes (not counting the header).
    pub length: u32,
    /// CRC-32 (IEEE) of the payload bytes.
    pub crc: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `buf`, rejecting a bad magic, an unknown version,
    /// set flags and a length above `max_payload` before the payload is even looked at.
    pub fn parse(buf: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, CodecError> {
        if buf[field::MAGIC] != MAGIC {
            return Err(CodecError::BadMagic);
        }
        if buf[field::VERSION] != VERSION {
            return Err(CodecError::UnsupportedVersion(buf[field::VERSION]));
        }
        let flags = u16::from_le_bytes([buf[4], buf[5]]);
        let reserved = u16::from_le_bytes([buf[6], buf[7]]);
        if flags != 0 || reserved != 0 {
            return Err(CodecError::BadFlags(flags, reserved));
        }
        let length = u32::from_le_bytes(le4(&buf[field::LENGTH]));
        if length > max_payload {
            return Err(CodecError::TooLarge {
                length,
                max: max_payload,
            });
        }
        Ok(Header {
            kind: buf[field::KIND],
            flags,
            length,
            crc: u32::from_le_bytes(le4(&buf[field::CRC])),
        })
    }

    /// Writes this header into `out`.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION] = VERSION;
        out[field::KIND] = self.kind;
        out[field::FLAGS].copy_from_slice(&self.flags.to_le_bytes());
        out[field::RESERVED].copy_from_slice(&[0, 0]);
        out[field::LENGTH].copy_from_slice(&self.length.to_le_bytes());
        out[field::CRC].copy_from_slice(&self.crc.to_le_bytes());
    }
}

fn le4(s: &[u8]) -> [u8; 4] {
    [s[0], s[1], s[2], s[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: 7,
            flags: 0,
            length: 300,
            crc: 0xdead_beef,
        }
    }

    #[test]
    fn emit_then_parse_round_trips_with_documented_offsets() {
        let mut b = [0u8; HEADER_LEN];
        sample().emit(&mut b);
        assert_eq!(&b[0..4], &[b'R', b'C', 1, 7]);
        assert_eq!(&b[8..12], &300u32.to_le_bytes());
        assert_eq!(&b[12..16], &0xdead_beefu32.to_le_bytes());
        assert_eq!(Header::parse(&b, 1000).unwrap(), sample());
    }

    #[test]
    fn rejects_oversized_length_bad_magic_version_and_flags() {
        let mut b = [0u8; HEADER_LEN];
        sample().emit(&mut b);
        assert!(matches!(
            Header::parse(&b, 299),
            Err(CodecError::TooLarge { length: 300, .. })
        ));
        let mut m = b;
        m[0] = b'X';
        assert_eq!(Header::parse(&m, 1000), Err(CodecError::BadMagic));
        let mut v = b;
        v[2] = 9;
        assert_eq!(
            Header::parse(&v, 1000),
            Err(CodecError::UnsupportedVersion(9))
        );
        let mut f = b;
        f[4] = 1;
        assert_eq!(Header::parse(&f, 1000), Err(CodecError::BadFlags(1, 0)));
    }
}
