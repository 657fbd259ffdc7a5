//! A small incremental RESP2 codec (the Redis protocol), enough for `--target redis`: commands
//! are encoded as arrays of bulk strings; replies and pub/sub pushes are decoded from a buffer
//! that may hold partial data.
//!
//! `decode` never panics on any input: incomplete data is `Ok(None)` (read more, call again
//! with the same bytes plus the new ones), malformed data is an `Err`. Sizes are bounded so a
//! hostile or broken peer cannot make the tool buffer without end or recurse without end.

use std::borrow::Cow;
use std::fmt;

/// Longest bulk string accepted (Redis itself caps them at 512 MiB; the tool's are tiny).
pub const MAX_BULK: usize = 64 * 1024 * 1024;
/// Most elements in one array.
pub const MAX_ARRAY: usize = 1024 * 1024;
/// Longest line (type byte to CRLF) of a simple string, error, integer or length header.
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of arrays.
pub const MAX_DEPTH: usize = 16;

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK\r\n`
    Simple(Vec<u8>),
    /// `-ERR something\r\n`
    Error(Vec<u8>),
    /// `:42\r\n`
    Integer(i64),
    /// `$3\r\nfoo\r\n`; `None` for the null bulk string `$-1\r\n`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`; `None` for the null array `*-1\r\n`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

/// A decoded value, with a cheap form for the frame that dominates a pub/sub benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A pub/sub delivery, `*3\r\n$7\r\nmessage\r\n$<n>\r\n<channel>\r\n$<m>\r\n<payload>\r\n`,
    /// borrowed from the buffer (owned only if the general decoder had to read it).
    Message {
        channel: Cow<'a, [u8]>,
        payload: Cow<'a, [u8]>,
    },
    /// Anything else.
    Other(Value),
}

/// Like `decode`, but a `message` push comes out as `Frame::Message` (other values, including
/// a `message` array of another shape, as `Frame::Other`).
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, Error> {
    const HEAD: &[u8] = b"*3\r\n$7\r\nmessage\r\n";
    if let Some(rest) = buf.strip_prefix(HEAD) {
        let mut pos = 0;
        if let Ok(Some(channel)) = bulk_ref(rest, &mut pos) {
            if let Ok(Some(payload)) = bulk_ref(rest, &mut pos) {
                let (channel, payload) = (Cow::Borrowed(channel), Cow::Borrowed(payload));
                return Ok(Some((
                    Frame::Message { channel, payload },
                    HEAD.len() + pos,
                )));
            }
        }
        // Incomplete, null or malformed: the general decoder says which.
    }
    Ok(decode(buf)?.map(|(v, n)| match v {
        Value::Array(Some(items)) => match <[Value; 3]>::try_from(items) {
            Ok([Value::Bulk(Some(kind)), Value::Bulk(Some(ch)), Value::Bulk(Some(p))])
                if kind == b"message" =>
            {
                let (channel, payload) = (Cow::Owned(ch), Cow::Owned(p));
                (Frame::Message { channel, payload }, n)
            }
            Ok(items) => (Frame::Other(Value::Array(Some(items.into()))), n),
            Err(items) => (Frame::Other(Value::Array(Some(items))), n),
        },
        v => (Frame::Other(v), n),
    }))
}

/// A non-null bulk string at `*pos`, borrowed; `Ok(None)` if incomplete or null, an error if
/// it is anything else or malformed.
fn bulk_ref<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, Error> {
    if buf.get(*pos) != Some(&b'$') {
        return err("not a bulk string");
    }
    let mut p = *pos + 1;
    let Some(l) = line(buf, &mut p)? else {
        return Ok(None);
    };
    let Some(n) = length(l, MAX_BULK, "bulk string")? else {
        return Ok(None);
    };
    let end = p + n;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return err("bulk string not followed by CRLF");
    }
    *pos = end + 2;
    Ok(Some(&buf[p..end]))
}

/// Why bytes are not RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error(msg.into()))
}

/// Decodes one value from the front of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)` if
/// `buf` holds only part of a value, or an error if it is not RESP2.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, Error> {
    let mut pos = 0;
    Ok(value(buf, &mut pos, 0)?.map(|v| (v, pos)))
}

/// The line starting at `*pos` (after the type byte), without its CRLF; advances past the CRLF.
fn line<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, Error> {
    let start = *pos;
    let rest = buf.get(start..).unwrap_or_default();
    let limit = rest.len().min(MAX_LINE + 1);
    match rest[..limit].iter().position(|&b| b == b'\n') {
        Some(n) => {
            if n == 0 || rest[n - 1] != b'\r' {
                return err("line ends in LF without CR");
            }
            let l = &rest[..n - 1];
            if l.contains(&b'\r') {
                return err("CR inside a line");
            }
            *pos = start + n + 1;
            Ok(Some(l))
        }
        None if rest.len() > MAX_LINE => err(format!("line longer than {MAX_LINE} bytes")),
        None => {
            // A CR that is not the last byte seen must be followed by LF.
            if rest[..rest.len().saturating_sub(1)].contains(&b'\r') {
                return err("CR inside a line");
            }
            Ok(None)
        }
    }
}

/// A signed decimal integer, strictly: optional '-', then 1..=19 digits.
fn integer(l: &[u8]) -> Result<i64, Error> {
    let bad = || Error(format!("bad integer {:?}", String::from_utf8_lossy(l)));
    let (neg, digits) = match l.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, l),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let mut n: i64 = 0;
    for &d in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -n } else { n })
}

/// A length header: -1 (null) or 0..=max.
fn length(l: &[u8], max: usize, what: &str) -> Result<Option<usize>, Error> {
    match integer(l)? {
        -1 => Ok(None),
        n if n < 0 => err(format!("negative {what} length {n}")),
        n if n as u64 > max as u64 => err(format!("{what} length {n} over the limit of {max}")),
        n => Ok(Some(n as usize)),
    }
}

fn value(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Value>, Error> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    *pos += 1;
    let Some(l) = line(buf, pos)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some(Value::Simple(l.to_vec()))),
        b'-' => Ok(Some(Value::Error(l.to_vec()))),
        b':' => Ok(Some(Value::Integer(integer(l)?))),
        b'$' => {
            let Some(n) = length(l, MAX_BULK, "bulk string")? else {
                return Ok(Some(Value::Bulk(None)));
            };
            let start = *pos;
            let Some(end) = start.checked_add(n) else {
                return err("bulk string length overflows");
            };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return err("bulk string not followed by CRLF");
            }
            *pos = end + 2;
            Ok(Some(Value::Bulk(Some(buf[start..end].to_vec()))))
        }
        b'*' => {
            let Some(n) = length(l, MAX_ARRAY, "array")? else {
                return Ok(Some(Value::Array(None)));
            };
            if depth >= MAX_DEPTH {
                return err(format!("arrays nested deeper than {MAX_DEPTH}"));
            }
            // Each element takes at least 3 bytes: do not reserve for elements not yet here.
            let mut items = Vec::with_capacity(n.min((buf.len() - *pos) / 3 + 1));
            for _ in 0..n {
                match value(buf, pos, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(Some(items))))
        }
        other => err(format!("unknown RESP2 type byte 0x{other:02x}")),
    }
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn decodes_the_pub_sub_frames() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$6\r\nroom-0\r\n$5\r\nhello\r\n";
        let want = Value::Array(Some(vec![bulk("message"), bulk("room-0"), bulk("hello")]));
        assert_eq!(decode(msg).unwrap(), Some((want, msg.len())));
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nroom-0\r\n:1\r\n";
        let want = Value::Array(Some(vec![
            bulk("subscribe"),
            bulk("room-0"),
            Value::Integer(1),
        ]));
        assert_eq!(decode(sub).unwrap(), Some((want, sub.len())));
    }

    #[test]
    fn decodes_scalars_and_nulls() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"+PONG\r\n", Value::Simple(b"PONG".to_vec())),
            (b"-ERR no\r\n", Value::Error(b"ERR no".to_vec())),
            (b":50\r\n", Value::Integer(50)),
            (b":-7\r\n", Value::Integer(-7)),
            (b"$0\r\n\r\n", bulk("")),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"*-1\r\n", Value::Array(None)),
            (b"*0\r\n", Value::Array(Some(vec![]))),
            (b"$4\r\na\r\nb\r\n", bulk("a\r\nb")),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(bytes).unwrap(),
                Some((want, bytes.len())),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn every_prefix_is_incomplete_and_the_rest_stays() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$6\r\nroom-0\r\n$12\r\n0 1 12345 xx\r\n");
        let first = stream.len();
        stream.extend_from_slice(b":3\r\n");
        for cut in 0..first {
            assert_eq!(decode(&stream[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (_, used) = decode(&stream).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(
            decode(&stream[used..]).unwrap(),
            Some((Value::Integer(3), 4))
        );
    }

    #[test]
    fn rejects_bad_input() {
        let bad: &[&[u8]] = &[
            b"?x\r\n",
            b":12a\r\n",
            b":\r\n",
            b":-\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999\r\n",
            b"*99999999999\r\n",
            b"+ok\n",
            b"+o\rk\r\n",
            b"+o\rk",
        ];
        for b in bad {
            assert!(decode(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(decode(&deep).is_err());
        let long = vec![b'a'; MAX_LINE + 2];
        assert!(decode(&[b"+".as_slice(), &long].concat()).is_err());
    }

    #[test]
    fn never_panics_on_noise() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"*$:+-\r\n0123456789-ab";
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.bool() {
                        alphabet[rng.usize(..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            if let Ok(Some((_, used))) = decode(&bytes) {
                assert!(used <= bytes.len());
            }
            let mut prefixed = b"*3\r\n$7\r\nmessage\r\n".to_vec();
            prefixed.extend_from_slice(&bytes);
            for b in [&bytes, &prefixed] {
                if let Ok(Some((_, used))) = decode_frame(b) {
                    assert!(used <= b.len());
                }
            }
        }
    }

    #[test]
    fn message_frames_take_the_fast_path_whole_or_in_parts() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$6\r\nroom-0\r\n$5\r\nhe\r\no\r\n");
        let first = stream.len();
        stream.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$6\r\nroom-0\r\n:1\r\n");
        for cut in 0..first {
            assert_eq!(decode_frame(&stream[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (f, used) = decode_frame(&stream).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(
            f,
            Frame::Message {
                channel: Cow::Borrowed(b"room-0"),
                payload: Cow::Borrowed(b"he\r\no")
            }
        );
        let (f, used2) = decode_frame(&stream[used..]).unwrap().unwrap();
        assert_eq!(used + used2, stream.len());
        assert!(matches!(f, Frame::Other(Value::Array(Some(ref v))) if v.len() == 3));
        // A null payload is not a delivery; a bad one is an error; so is a missing channel.
        let odd = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$-1\r\n";
        assert!(matches!(
            decode_frame(odd).unwrap(),
            Some((Frame::Other(_), 29))
        ));
        assert!(decode_frame(b"*3\r\n$7\r\nmessage\r\n$1\r\ncX\r\n").is_err());
        assert!(decode_frame(b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nc\r\n")
            .unwrap()
            .is_some_and(|(f, _)| matches!(f, Frame::Other(_))));
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&[b"PUBLISH", b"room-0", b"hi"], &mut out);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nroom-0\r\n$2\r\nhi\r\n");
        assert_eq!(
            decode(&out).unwrap().unwrap().0,
            Value::Array(Some(vec![bulk("PUBLISH"), bulk("room-0"), bulk("hi")]))
        );
    }
}
