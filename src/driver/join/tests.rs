//! The join client in the daemon, against a fake member on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream as StdStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::codec::{self, ClientFrame, Hello, JoinReply, PeerFrame, PeerHello, ServerFrame};
use crate::driver::peers::{Mesh, PEER_LISTENER};
use crate::driver::{DaemonConfig, Driver, StorageKind, LISTENER, SIGNALS, WAKER};

#[test]
fn the_join_token_is_nobody_elses() {
    assert!(!Mesh::owns(super::JOIN));
    for t in [LISTENER, SIGNALS, WAKER, PEER_LISTENER] {
        assert_ne!(t, super::JOIN);
    }
}

/// The next frame of family `F` from `s`, or None at EOF.
fn next_frame<F: crate::codec::FrameSet>(s: &mut StdStream, buf: &mut Vec<u8>) -> Option<F> {
    loop {
        if let Some((f, used)) = codec::decode::<F>(buf).expect("a valid frame") {
            buf.drain(..used);
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Accepts every connection on `l` and hands it over, with read timeouts set.
fn accept_all(l: TcpListener) -> mpsc::Receiver<StdStream> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if tx.send(s).is_err() {
                return;
            }
        }
    });
    rx
}

fn read_join_request(s: &mut StdStream) {
    let mut buf = Vec::new();
    match next_frame::<PeerFrame>(s, &mut buf) {
        Some(PeerFrame::Join(req)) => assert_eq!(req.node_id, 4),
        other => panic!("expected a join request, got {other:?}"),
    }
}

#[test]
fn the_loop_serves_clients_while_a_rejoin_waits_for_a_member_that_never_answers() {
    let member = TcpListener::bind("127.0.0.1:0").unwrap();
    let member_addr = member.local_addr().unwrap();
    let conns = accept_all(member);
    // The "leader" the member names: accepts connections (the kernel does) and never speaks.
    let leader = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        id: 4,
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: Some("127.0.0.1:0".parse().unwrap()),
        join: Some(member_addr),
        data_dir: dir.path().join("data"),
        storage: StorageKind::Memory,
        // Join patience is 25 failure timeouts: the rejoin comes 1 s after the acceptance.
        heartbeat_ms: 10,
        failure_timeout_ms: 40,
        replication_linger_us: 0,
        shutdown_timeout_ms: 2000,
        ..DaemonConfig::default()
    };
    cfg.validate().unwrap();
    let cluster_id = cfg.cluster_id;
    let (tx, rx) = mpsc::channel();
    let daemon = thread::spawn(move || {
        let driver = Driver::new(cfg).map_err(|e| e.to_string())?;
        tx.send((driver.local_addr(), driver.stop_handle()))
            .unwrap();
        driver.run().map_err(|e| e.to_string())
    });

    // The startup join (blocking, before the loop): greet it as a member does, then accept.
    let mut first = conns
        .recv_timeout(Duration::from_secs(10))
        .expect("a join request");
    read_join_request(&mut first);
    let hello = PeerFrame::Hello(PeerHello {
        cluster_id,
        node_id: 1,
        epoch: 1,
        client_addr: "127.0.0.1:1".into(),
    });
    let reply = PeerFrame::JoinReply(JoinReply {
        ok: true,
        retry: false,
        message: "catching up".into(),
        leader: Some((1, leader.local_addr().unwrap().to_string())),
    });
    first.write_all(&codec::encode(&hello).unwrap()).unwrap();
    first.write_all(&codec::encode(&reply).unwrap()).unwrap();
    drop(first);
    let (addr, stop) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the daemon started after its join was accepted");

    // No entry from the silent leader: the join stalls and the loop asks again; this member
    // now takes the request and never answers.
    let mut second = conns
        .recv_timeout(Duration::from_secs(10))
        .expect("a renewed join request from the loop");
    read_join_request(&mut second);
    let asked = Instant::now();

    // Meanwhile a client is served at once (a blocking join held the loop for seconds).
    let mut c = StdStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = ClientFrame::Hello(Hello {
        user: "ann".into(),
        client_id: 1,
    });
    c.write_all(&codec::encode(&hello).unwrap()).unwrap();
    let answer = next_frame::<ServerFrame>(&mut c, &mut Vec::new());
    let took = asked.elapsed();
    assert!(answer.is_some(), "no answer to Hello");
    assert!(
        took < Duration::from_millis(1000),
        "Hello answered {took:?} after the rejoin began"
    );

    // The request times out (the client closes it), and the join client asks again.
    let mut rest = Vec::new();
    assert!(second.read_to_end(&mut rest).is_ok() && rest.is_empty());
    let closed = asked.elapsed();
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}, before the request timeout"
    );
    let mut third = conns
        .recv_timeout(Duration::from_secs(5))
        .expect("another join request after the timeout");
    read_join_request(&mut third);

    stop.stop();
    daemon.join().unwrap().unwrap();
    drop(leader);
}
