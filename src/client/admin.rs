//! Admin queries: a node's [`StatusReport`] over a plain client connection (the server answers
//! `Status` before any `Hello`), and the cluster-wide view built from several of them.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::codec::{
    self, AdminReply, AdminRequest, ClientFrame, ServerFrame, StatusReport, StatusRequest,
};
use crate::core::log::LogIndex;

/// Asks the node at `addr` for its status; everything (connect, send, answer) within `timeout`.
pub fn query_status(addr: &str, timeout: Duration) -> Result<StatusReport, String> {
    match exchange(
        addr,
        &ClientFrame::Status(StatusRequest { flags: 0 }),
        timeout,
    )? {
        ServerFrame::Status(report) => Ok(report),
        other => Err(format!(
            "unexpected answer {:?}",
            codec::FrameSet::kind(&other)
        )),
    }
}

/// Sends an admin request to the first of `servers` that answers; a node that is not the
/// leader names the leader's address, which is asked next (once).
pub fn request(
    servers: &[String],
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, String> {
    let mut errors = Vec::new();
    for addr in servers {
        match exchange(addr, &ClientFrame::Admin(req.clone()), timeout) {
            Ok(ServerFrame::AdminReply(r)) => match r.leader.clone() {
                Some(leader) if !r.ok => {
                    return match exchange(&leader, &ClientFrame::Admin(req.clone()), timeout)? {
                        ServerFrame::AdminReply(r) => Ok(r),
                        _ => Err(format!("{leader}: unexpected answer")),
                    }
                }
                _ => return Ok(r),
            },
            Ok(_) => errors.push(format!("{addr}: unexpected answer")),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// Makes the node at `addr` leave the cluster for good: asks it for its id, then has it (or
/// the leader it names) remove that id, as [`request`] with [`AdminRequest::Remove`].
pub fn leave(addr: &str, timeout: Duration) -> Result<AdminReply, String> {
    let node = query_status(addr, timeout)
        .map_err(|e| format!("{addr}: {e}"))?
        .node_id;
    request(&[addr.to_owned()], &AdminRequest::Remove { node }, timeout)
}

/// Sends one request frame before any Hello and returns the answer (Status, AdminReply; an
/// Error frame is an Err).
fn exchange(addr: &str, frame: &ClientFrame, timeout: Duration) -> Result<ServerFrame, String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .collect();
    let mut last_err = format!("no address found for {addr}");
    let mut stream = None;
    for a in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    let mut s = stream.ok_or(last_err)?;
    let _ = s.set_nodelay(true);
    let request = codec::encode(frame).map_err(|e| e.to_string())?;
    let left = |d: Instant| {
        let l = d.saturating_duration_since(Instant::now());
        (!l.is_zero()).then_some(l).ok_or("timed out".to_owned())
    };
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    s.write_all(&request).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some((frame, used)) =
            codec::decode::<ServerFrame>(&buf).map_err(|e| format!("bad answer: {e}"))?
        {
            buf.drain(..used);
            match frame {
                ServerFrame::Status(_) | ServerFrame::AdminReply(_) => return Ok(frame),
                ServerFrame::Error(e) => return Err(format!("refused: {}", e.message)),
                _ => {}
            }
        }
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed before the answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Queries every address in parallel, each within `timeout`; results in the order given.
pub fn query_all(addrs: &[String], timeout: Duration) -> Vec<Result<StatusReport, String>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|a| scope.spawn(move || query_status(a, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("query panicked".into())))
            .collect()
    })
}

/// One node in the cluster view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// The address queried.
    pub addr: String,
    /// Its report, or why there is none (the node shows as down).
    pub report: Result<StatusReport, String>,
    /// Highest commit index reported by any node minus this node's applied index.
    pub apply_lag: Option<LogIndex>,
    /// From the leader's report: leader's last index minus this node's match index (0 for the
    /// leader itself); None without a leader report or when the leader does not track it.
    pub replication_lag: Option<LogIndex>,
}

/// The report of the leader of the highest epoch among `reports`, if any claims to lead.
pub fn leader_report<'a>(
    reports: impl IntoIterator<Item = &'a StatusReport>,
) -> Option<&'a StatusReport> {
    reports
        .into_iter()
        .filter(|r| r.role == "leader")
        .max_by_key(|r| (r.epoch, r.node_id))
}

/// Builds the cluster view from the answers of [`query_all`] (same order as `addrs`).
pub fn cluster_view(addrs: &[String], results: Vec<Result<StatusReport, String>>) -> Vec<NodeView> {
    let ok: Vec<&StatusReport> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let max_commit = ok.iter().map(|r| r.commit_index).max();
    let leader = leader_report(ok.iter().copied()).cloned();
    addrs
        .iter()
        .cloned()
        .zip(results)
        .map(|(addr, report)| {
            let (apply_lag, replication_lag) = match &report {
                Ok(r) => {
                    let apply = max_commit.map(|m| m.saturating_sub(r.applied_index));
                    let repl = leader.as_ref().and_then(|l| {
                        if l.node_id == r.node_id {
                            Some(0)
                        } else {
                            l.peers
                                .iter()
                                .find(|p| p.id == r.node_id)
                                .map(|p| l.last_index.saturating_sub(p.match_index))
                        }
                    });
                    (apply, repl)
                }
                Err(_) => (None, None),
            };
            NodeView {
                addr,
                report,
                apply_lag,
                replication_lag,
            }
        })
        .collect()
}

/// One JSON object describing `v` (for `ringchat admin status --json`).
pub fn view_json(v: &NodeView) -> serde_json::Value {
    match &v.report {
        Ok(r) => serde_json::json!({
            "addr": v.addr,
            "up": true,
            "id": r.node_id,
            "role": r.role,
            "epoch": r.epoch,
            "leader": r.leader,
            "last_index": r.last_index,
            "commit_index": r.commit_index,
            "applied_index": r.applied_index,
            "apply_lag": v.apply_lag,
            "replication_lag": v.replication_lag,
            "connections": r.connections,
            "peers": r.peers.iter().map(|p| serde_json::json!({
                "id": p.id,
                "connected": p.connected,
                "last_heard_ms": p.last_heard_ms,
                "match_index": p.match_index,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({
            "addr": v.addr,
            "up": false,
            "role": "down",
            "error": e,
        }),
    }
}

/// The header of [`view_line`]'s table.
pub fn view_header() -> String {
    format!(
        "{:<5} {:<22} {:<9} {:>6} {:>7} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6}",
        "NODE",
        "ADDRESS",
        "ROLE",
        "EPOCH",
        "LEADER",
        "LAST",
        "COMMIT",
        "APPLIED",
        "LAG",
        "REPL",
        "CONNS"
    )
}

/// One table line describing `v`.
pub fn view_line(v: &NodeView) -> String {
    let opt = |x: Option<u64>| x.map_or("-".to_owned(), |x| x.to_string());
    match &v.report {
        Ok(r) => format!(
            "{:<5} {:<22} {:<9} {:>6} {:>7} {:>9} {:>9} {:>9} {:>6} {:>6} {:>6}",
            r.node_id,
            v.addr,
            r.role,
            r.epoch,
            opt(r.leader.map(u64::from)),
            r.last_index,
            r.commit_index,
            r.applied_index,
            opt(v.apply_lag),
            opt(v.replication_lag),
            r.connections
        ),
        Err(e) => format!("{:<5} {:<22} {:<9} ({e})", "-", v.addr, "down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PeerStatus;

    fn report(
        id: u32,
        role: &str,
        epoch: u64,
        last: u64,
        commit: u64,
        applied: u64,
    ) -> StatusReport {
        StatusReport {
            node_id: id,
            role: role.into(),
            epoch,
            leader: Some(2),
            last_index: last,
            commit_index: commit,
            applied_index: applied,
            connections: 1,
            peers: Vec::new(),
        }
    }

    #[test]
    fn lags_come_from_the_max_commit_and_the_leaders_match_indexes() {
        let mut leader = report(2, "leader", 5, 100, 98, 97);
        leader.peers = vec![
            PeerStatus {
                id: 1,
                connected: true,
                last_heard_ms: Some(3),
                match_index: 90,
            },
            PeerStatus {
                id: 3,
                connected: false,
                last_heard_ms: None,
                match_index: 0,
            },
        ];
        let stale = report(3, "leader", 4, 50, 50, 50);
        let addrs: Vec<String> = ["a:1", "b:2", "c:3", "d:4"].map(String::from).to_vec();
        let results = vec![
            Ok(report(1, "follower", 5, 95, 90, 85)),
            Ok(leader),
            Ok(stale),
            Err("connection refused".into()),
        ];
        let v = cluster_view(&addrs, results);
        assert_eq!(v[0].apply_lag, Some(98 - 85));
        assert_eq!(v[0].replication_lag, Some(10));
        assert_eq!(v[1].apply_lag, Some(1));
        assert_eq!(v[1].replication_lag, Some(0));
        assert_eq!(
            v[2].replication_lag,
            Some(100),
            "the stale leader of epoch 4"
        );
        assert_eq!((v[3].apply_lag, v[3].replication_lag), (None, None));
        assert!(view_line(&v[3]).contains("down"));
        assert!(view_line(&v[1]).contains("leader"));
        let j = view_json(&v[0]);
        assert_eq!(j["id"], 1);
        assert_eq!(j["apply_lag"], 13);
        assert_eq!(view_json(&v[3])["up"], false);
    }

    #[test]
    fn an_unreachable_node_is_an_error_within_the_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let t = Instant::now();
        assert!(query_status(&addr, Duration::from_millis(500)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        // Accepted but never answered: a timeout.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = query_status(&addr, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
