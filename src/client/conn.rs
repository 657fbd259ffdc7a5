//! One blocking TCP connection to a server: frame writes and a read buffer that decodes
//! `ServerFrame`s across partial reads, with deadlines.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::codec::{self, ClientFrame, CodecError, ServerFrame};

/// Why a connection is unusable.
#[derive(Debug)]
pub(crate) enum Broken {
    /// A socket error.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// The server sent bytes that are not a valid frame.
    Codec(CodecError),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Io(e) => write!(f, "{e}"),
            Broken::Closed => write!(f, "connection closed by the server"),
            Broken::Codec(e) => write!(f, "invalid data from the server: {e}"),
        }
    }
}

/// A connected socket and its read buffer.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: String,
    buf: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    /// Resolves `addr` and connects to the first address that answers within `timeout` each.
    pub(crate) fn connect(addr: &str, timeout: Duration) -> io::Result<Conn> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let mut last = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        );
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Conn {
                        stream,
                        addr: addr.to_owned(),
                        buf: Vec::new(),
                        pos: 0,
                        scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The address this connection was opened with.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Writes `frames` as one buffer, giving up after `timeout`.
    pub(crate) fn send(&mut self, frames: &[ClientFrame], timeout: Duration) -> Result<(), Broken> {
        let mut out = Vec::new();
        for f in frames {
            // A frame our own limits refuse is a caller bug, not a broken connection; the
            // server-side checks make it an error frame instead, so report it as InvalidInput.
            codec::encode_into(f, &mut out).map_err(|e| {
                Broken::Io(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            })?;
        }
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(Broken::Io)?;
        self.stream.write_all(&out).map_err(Broken::Io)
    }

    /// The next frame, waiting until `deadline` at most: `Ok(None)` when the deadline passed
    /// first. Frames already buffered are returned without a system call.
    pub(crate) fn recv(&mut self, deadline: Instant) -> Result<Option<ServerFrame>, Broken> {
        // A deadline already past still gets one short read, so a zero timeout polls the socket.
        let mut polled = false;
        loop {
            match codec::decode::<ServerFrame>(&self.buf[self.pos..]) {
                Ok(Some((frame, used))) => {
                    self.pos += used;
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(Broken::Codec(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                if polled {
                    return Ok(None);
                }
                polled = true;
            }
            let wait = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(Broken::Io)?;
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(Broken::Closed),
                Ok(n) => {
                    if self.pos > 0 {
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                    }
                    self.buf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Broken::Io(e)),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn decodes_frames_split_across_reads_and_batched_in_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frames = vec![
            ServerFrame::Pong(codec::Ping { nonce: 7 }),
            ServerFrame::Left(codec::Left { room: "r".into() }),
            ServerFrame::Pong(codec::Ping { nonce: 8 }),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            codec::encode_into(f, &mut bytes).unwrap();
        }
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            // First frame byte by byte, the rest in one write.
            let first = codec::encode(&ServerFrame::Pong(codec::Ping { nonce: 7 })).unwrap();
            for b in &bytes[..first.len()] {
                s.write_all(&[*b]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            s.write_all(&bytes[first.len()..]).unwrap();
        });
        let mut c = Conn::connect(&addr, Duration::from_secs(2)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        for f in &frames {
            assert_eq!(c.recv(deadline).unwrap().as_ref(), Some(f));
        }
        server.join().unwrap();
        assert!(matches!(c.recv(deadline), Err(Broken::Closed)));
    }

    #[test]
    fn garbage_breaks_the_connection_and_silence_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&[0xFF; 32]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let mut c = Conn::connect(&addr, Duration::from_secs(2)).unwrap();
        let t = Instant::now();
        assert!(matches!(
            c.recv(Instant::now() + Duration::from_millis(20)),
            Ok(None)
        ));
        assert!(t.elapsed() >= Duration::from_millis(15));
        let r = c.recv(Instant::now() + Duration::from_secs(5));
        assert!(matches!(r, Err(Broken::Codec(_))), "{r:?}");
        server.join().unwrap();
    }
}
