//! Joining a running cluster (`--join`): before its event loop starts, a new node asks a
//! member to add it, follows the member's pointer to the leader, and retries while the leader
//! is busy with another change. Blocking is fine here: the node serves nothing yet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::codec::{self, FrameSet, Header, JoinReply, JoinRequest, PeerFrame, HEADER_LEN};
use crate::core::NodeId;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Why joining failed.
#[derive(Debug)]
pub struct JoinError(pub String);

/// Asks the cluster at `via` to add the node described by `req`, for at most `limit`;
/// returns the leader that accepted it and the leader's peer address.
pub fn join(
    via: SocketAddr,
    req: &JoinRequest,
    limit: Duration,
) -> Result<(NodeId, String), JoinError> {
    let started = Instant::now();
    let mut target = via.to_string();
    let mut last = String::new();
    while started.elapsed() < limit {
        match ask(&target, req) {
            Ok(reply) if reply.ok => match reply.leader {
                Some(leader) => {
                    info!(
                        "node {}: join accepted by node {} at {}: {}",
                        req.node_id, leader.0, leader.1, reply.message
                    );
                    return Ok(leader);
                }
                None => last = format!("{target} accepted without naming the leader"),
            },
            Ok(reply) => {
                if !reply.retry {
                    return Err(JoinError(format!("{target} refused: {}", reply.message)));
                }
                last = format!("{target}: {}", reply.message);
                if let Some((_, addr)) = reply.leader.filter(|(_, a)| *a != target) {
                    // Pointed elsewhere: ask there at once.
                    target = addr;
                    continue;
                }
            }
            Err(e) => {
                last = format!("{target}: {e}");
                // The leader may be gone: start again from the address we were given.
                target = via.to_string();
            }
        }
        warn!("node {}: join not done yet ({last}); retrying", req.node_id);
        sleep(RETRY_EVERY);
    }
    Err(JoinError(format!(
        "no member added this node within {limit:?}; last answer: {last}"
    )))
}

/// One request: connect, send the JoinRequest, read the JoinReply.
fn ask(addr: &str, req: &JoinRequest) -> std::io::Result<JoinReply> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| invalid(format!("bad address {addr:?}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let bytes = codec::encode(&PeerFrame::Join(req.clone())).map_err(|e| invalid(e.to_string()))?;
    s.write_all(&bytes)?;
    // The member greets every new link with its Hello first: skip to the answer.
    for _ in 0..4 {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head)?;
        let header =
            Header::parse(&head, PeerFrame::MAX_PAYLOAD).map_err(|e| invalid(e.to_string()))?;
        let mut frame = head.to_vec();
        frame.resize(HEADER_LEN + header.length as usize, 0);
        s.read_exact(&mut frame[HEADER_LEN..])?;
        match codec::decode::<PeerFrame>(&frame).map_err(|e| invalid(e.to_string()))? {
            Some((PeerFrame::JoinReply(r), _)) => return Ok(r),
            Some((PeerFrame::Hello(_), _)) => continue,
            Some((other, _)) => {
                let why = format!("expected a JoinReply, got frame kind {:#04x}", other.kind());
                return Err(invalid(why));
            }
            None => return Err(invalid("truncated JoinReply".into())),
        }
    }
    Err(invalid("no JoinReply after several frames".into()))
}
