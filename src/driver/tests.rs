//! In-process tests of the event loop over real loopback sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::*;
use crate::codec::{ClientFrame, Heartbeat, Hello, Join, PeerFrame, PeerHello, Say};

struct Running {
    addr: SocketAddr,
    /// The bound peer address, with `peer_listen` set.
    peer: Option<SocketAddr>,
    stop: StopHandle,
    thread: JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(tune: impl FnOnce(&mut DaemonConfig) + Send + 'static) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DaemonConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            port_file: Some(dir.path().join("port")),
            shutdown_timeout_ms: 2000,
            ..DaemonConfig::default()
        };
        tune(&mut cfg);
        let port_file = cfg.port_file.clone();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let driver = Driver::new(cfg).map_err(|e| e.to_string())?;
            tx.send((
                driver.local_addr(),
                driver.peer_addr(),
                driver.stop_handle(),
            ))
            .unwrap();
            driver.run().map_err(|e| e.to_string())
        });
        let (addr, peer, stop) = rx.recv().expect("driver started");
        if let Some(p) = port_file {
            let written = std::fs::read_to_string(p).unwrap();
            assert_eq!(written, format!("{addr}\n"));
        }
        Running {
            addr,
            peer,
            stop,
            thread,
            _dir: dir,
        }
    }

    fn stop(self) {
        self.stop.stop();
        self.thread.join().unwrap().unwrap();
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn send(&mut self, f: &ClientFrame) {
        self.s.write_all(&codec::encode(f).unwrap()).unwrap();
    }

    /// The next frame, or None at EOF / reset.
    fn recv(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some((f, used)) = codec::decode::<ServerFrame>(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn hello(addr: SocketAddr, user: &str, client_id: u64) -> (Client, ServerFrame) {
        let mut c = Client::connect(addr);
        c.send(&ClientFrame::Hello(Hello {
            user: user.into(),
            client_id,
        }));
        let f = c.recv().expect("an answer to Hello");
        (c, f)
    }

    fn welcomed(addr: SocketAddr, user: &str, client_id: u64) -> Client {
        let (c, f) = Client::hello(addr, user, client_id);
        assert!(matches!(f, ServerFrame::Welcome(_)), "{f:?}");
        c
    }

    fn join(&mut self, room: &str) {
        self.send(&ClientFrame::Join(Join {
            room: room.into(),
            after_seq: None,
        }));
        loop {
            match self.recv().expect("Joined") {
                ServerFrame::Joined(_) => return,
                ServerFrame::Notice(_) | ServerFrame::Message(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn error_code(f: &ServerFrame) -> Option<ErrorCode> {
    match f {
        ServerFrame::Error(e) => ErrorCode::from_u16(e.code),
        _ => None,
    }
}

#[test]
fn hello_split_across_writes_gets_welcome_and_stop_says_shutting_down() {
    let d = Running::start(|_| {});
    let mut c = Client::connect(d.addr);
    let bytes = codec::encode(&ClientFrame::Hello(Hello {
        user: "alice".into(),
        client_id: 1,
    }))
    .unwrap();
    for part in [&bytes[..3], &bytes[3..20], &bytes[20..]] {
        c.s.write_all(part).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(c.recv(), Some(ServerFrame::Welcome(w)) if w.user == "alice"));
    d.stop.stop();
    let f = c.recv().expect("a goodbye");
    assert_eq!(error_code(&f), Some(ErrorCode::ShuttingDown), "{f:?}");
    assert!(c.recv().is_none(), "closed after the goodbye");
    d.thread.join().unwrap().unwrap();
}

#[test]
fn a_bad_frame_gets_an_error_then_eof_and_others_are_unaffected() {
    let d = Running::start(|_| {});
    let mut good = Client::welcomed(d.addr, "good", 1);
    let mut bad = Client::connect(d.addr);
    bad.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let f = bad.recv().unwrap();
    assert_eq!(error_code(&f), Some(ErrorCode::MalformedFrame), "{f:?}");
    assert!(bad.recv().is_none());
    good.join("lobby");
    d.stop();
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    let d = Running::start(|_| {});
    let mut c = Client::connect(d.addr);
    c.send(&ClientFrame::Hello(Hello {
        user: "brief".into(),
        client_id: 3,
    }));
    c.s.shutdown(Shutdown::Write).unwrap();
    assert!(matches!(c.recv(), Some(ServerFrame::Welcome(_))));
    assert!(c.recv().is_none());
    d.stop();
}

#[test]
fn connections_above_the_limit_are_refused_with_server_full() {
    let d = Running::start(|c| c.max_connections = 2);
    let a = Client::welcomed(d.addr, "a", 1);
    let _b = Client::welcomed(d.addr, "b", 2);
    let mut c = Client::connect(d.addr);
    let f = c.recv().expect("an error");
    assert_eq!(error_code(&f), Some(ErrorCode::ServerFull), "{f:?}");
    assert!(c.recv().is_none());
    drop(a);
    // The freed slot is usable once the driver has seen the close.
    let mut ok = false;
    for _ in 0..50 {
        let (_c, f) = Client::hello(d.addr, "c", 3);
        if matches!(f, ServerFrame::Welcome(_)) {
            ok = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "a slot frees up when a client leaves");
    d.stop();
}

#[test]
fn every_disconnect_reaches_the_core_so_device_slots_free_up() {
    let d = Running::start(|_| {});
    for round in 0..3u64 {
        let a = Client::welcomed(d.addr, "bob", round * 10 + 1);
        let b = Client::welcomed(d.addr, "bob", round * 10 + 2);
        let (_c, f) = Client::hello(d.addr, "bob", round * 10 + 3);
        assert_eq!(error_code(&f), Some(ErrorCode::DeviceLimit), "{f:?}");
        drop((a, b));
        // Two new devices fit once the driver has reported both disconnects to the core.
        let mut freed = false;
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(10));
            let (c2, f2) = Client::hello(d.addr, "bob", round * 10 + 4);
            let (c3, f3) = Client::hello(d.addr, "bob", round * 10 + 5);
            let both =
                matches!(f2, ServerFrame::Welcome(_)) && matches!(f3, ServerFrame::Welcome(_));
            drop((c2, c3));
            if both {
                freed = true;
                break;
            }
        }
        assert!(freed, "round {round}: bob's devices were not released");
        thread::sleep(Duration::from_millis(50));
    }
    d.stop();
}

#[test]
fn a_slow_consumer_is_dropped_and_the_others_get_everything() {
    const N: u64 = 3000;
    /// Says the writer has in flight at most: it reads what it gets while it writes, as a
    /// client with flow control does, so only the slow one falls behind.
    const WINDOW: u64 = 64;
    let d = Running::start(|c| c.max_output_bytes = 1024 * 1024);
    let mut slow = Client::welcomed(d.addr, "slow", 1);
    slow.join("r");
    let mut writer = Client::welcomed(d.addr, "writer", 2);
    writer.join("r");
    let reader_sock = writer.s.try_clone().unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked_seen = acked.clone();
    let reader = thread::spawn(move || {
        let mut r = Client {
            s: reader_sock,
            buf: Vec::new(),
        };
        let (mut acks, mut msgs) = (0u64, 0u64);
        while acks < N || msgs < N {
            match r.recv().expect("the writer stays connected") {
                ServerFrame::Ack(a) => {
                    acks += 1;
                    assert_eq!(a.client_seq, acks);
                    acked_seen.store(acks, std::sync::atomic::Ordering::Release);
                }
                ServerFrame::Message(m) => {
                    msgs += 1;
                    assert_eq!(m.seq, msgs, "in order, no gaps");
                }
                ServerFrame::Notice(_) => {}
                other => panic!("writer got {other:?}"),
            }
        }
        (acks, msgs)
    });
    let text = "x".repeat(4000);
    for seq in 1..=N {
        let waiting_since = std::time::Instant::now();
        while seq > acked.load(std::sync::atomic::Ordering::Acquire) + WINDOW {
            assert!(
                waiting_since.elapsed() < Duration::from_secs(30),
                "acks stopped"
            );
            thread::sleep(Duration::from_millis(1));
        }
        writer.send(&ClientFrame::Say(Say {
            room: "r".into(),
            client_seq: seq,
            text: text.clone(),
        }));
    }
    assert_eq!(reader.join().unwrap(), (N, N));
    // The slow reader got part of the stream, then was cut off well before the end.
    let mut got = 0u64;
    let mut last = None;
    while let Some(f) = slow.recv() {
        got += 1;
        last = Some(f);
    }
    assert!(got < N, "slow consumer received everything ({got})");
    if let Some(f) = last {
        if let Some(code) = error_code(&f) {
            assert_eq!(code, ErrorCode::SlowConsumer);
        }
    }
    d.stop();
}

#[test]
fn a_locked_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..DaemonConfig::default()
    };
    let first = Driver::new(cfg.clone()).unwrap();
    let err = Driver::new(cfg.clone()).err().expect("second lock fails");
    assert!(matches!(err, DriverError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
    drop(first);
    Driver::new(cfg).expect("lock released on drop");
}

/// Plays another cluster member on a raw peer connection.
struct FakePeer {
    s: TcpStream,
    buf: Vec<u8>,
}

impl FakePeer {
    fn connect(addr: SocketAddr) -> FakePeer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        FakePeer { s, buf: Vec::new() }
    }

    fn send(&mut self, f: &PeerFrame) {
        self.s.write_all(&codec::encode(f).unwrap()).unwrap();
    }

    fn hello(&mut self, cluster_id: u64, node_id: NodeId) {
        self.send(&PeerFrame::Hello(PeerHello {
            cluster_id,
            node_id,
            epoch: 0,
            client_addr: "127.0.0.1:7070".into(),
        }));
    }

    /// The next frame, or None at EOF / reset.
    fn recv(&mut self) -> Option<PeerFrame> {
        loop {
            if let Some((f, used)) = codec::decode::<PeerFrame>(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }

    /// Reads until a Heartbeat arrives (skipping election traffic).
    fn heartbeat(&mut self) -> Heartbeat {
        loop {
            match self.recv().expect("a heartbeat, not EOF") {
                PeerFrame::Heartbeat(h) => return h,
                _ => continue,
            }
        }
    }

    /// True if the node closes this link within the read timeout.
    fn closed(&mut self) -> bool {
        loop {
            match self.recv() {
                None => return true,
                Some(_) => continue,
            }
        }
    }
}

fn peer_status(addr: SocketAddr) -> Vec<(NodeId, bool)> {
    let mut c = Client::connect(addr);
    c.send(&ClientFrame::Status(codec::StatusRequest { flags: 0 }));
    match c.recv() {
        Some(ServerFrame::Status(r)) => r.peers.iter().map(|p| (p.id, p.connected)).collect(),
        other => panic!("expected a status report, got {other:?}"),
    }
}

fn wait_peer_status(addr: SocketAddr, want: &[(NodeId, bool)]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer_status(addr) != want {
        assert!(
            Instant::now() < deadline,
            "peer status stayed {:?}",
            peer_status(addr)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn peer_handshakes_are_checked_a_guest_is_linked_and_a_new_link_replaces_the_old() {
    // Node 2 of a cluster {1, 2}: it never dials 1 (the lower id dials), it only accepts.
    let d = Running::start(|c| {
        c.id = 2;
        c.cluster_id = 5;
        c.peer_listen = Some("127.0.0.1:0".parse().unwrap());
        c.peers = [(1, "127.0.0.1:9".parse().unwrap())].into();
    });
    let peer_addr = d.peer.expect("peer listener bound");
    assert_eq!(peer_status(d.addr), vec![(1, false)]);

    let mut a = FakePeer::connect(peer_addr);
    match a.recv() {
        Some(PeerFrame::Hello(h)) => assert_eq!((h.cluster_id, h.node_id), (5, 2)),
        other => panic!("the node speaks first with Hello, got {other:?}"),
    }
    a.hello(5, 1);
    a.heartbeat();
    wait_peer_status(d.addr, &[(1, true)]);

    // A node of the cluster that node 2 does not list (it joined while node 2 was cut off)
    // is linked as a guest, for as long as its link lasts.
    let mut g = FakePeer::connect(peer_addr);
    g.hello(5, 9);
    g.heartbeat();
    wait_peer_status(d.addr, &[(1, true), (9, true)]);
    drop(g);
    wait_peer_status(d.addr, &[(1, true)]);

    // Refused: another cluster, the node's own id, a frame before Hello.
    for (cluster, id) in [(6, 1), (5, 2)] {
        let mut x = FakePeer::connect(peer_addr);
        x.hello(cluster, id);
        assert!(x.closed(), "hello {cluster}/{id} was not refused");
    }
    let mut x = FakePeer::connect(peer_addr);
    x.send(&PeerFrame::Heartbeat(Heartbeat {
        epoch: 0,
        leader: None,
        load: 0,
        hears_you: true,
    }));
    assert!(x.closed(), "a frame before Hello must drop the link");
    // Garbage costs only that connection.
    let mut x = FakePeer::connect(peer_addr);
    x.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(x.closed());
    a.heartbeat();

    // A second link from node 1 replaces the first one.
    let mut b = FakePeer::connect(peer_addr);
    b.hello(5, 1);
    b.heartbeat();
    assert!(a.closed(), "the old link is closed once replaced");
    b.heartbeat();
    wait_peer_status(d.addr, &[(1, true)]);

    drop(b);
    wait_peer_status(d.addr, &[(1, false)]);
    d.stop();
}

/// Accepts one connection on `l` within 5 s.
fn accept_within(l: &std::net::TcpListener) -> FakePeer {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return FakePeer { s, buf: Vec::new() };
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the node did not dial");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn the_lower_id_dials_and_redials_after_a_lost_or_refused_link() {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let d = Running::start(move |c| {
        c.id = 1;
        c.peer_listen = Some("127.0.0.1:0".parse().unwrap());
        c.peers = [(2, fake_addr)].into();
    });
    let mut a = accept_within(&fake);
    match a.recv() {
        Some(PeerFrame::Hello(h)) => assert_eq!((h.cluster_id, h.node_id), (1, 1)),
        other => panic!("expected Hello, got {other:?}"),
    }
    a.hello(1, 2);
    a.heartbeat();
    wait_peer_status(d.addr, &[(2, true)]);

    // Lost link: the node notices and dials again (20 ms backoff at first).
    let lost = Instant::now();
    drop(a);
    let mut b = accept_within(&fake);
    assert!(
        lost.elapsed() < Duration::from_secs(2),
        "{:?}",
        lost.elapsed()
    );
    // Whoever answers at node 2's address must be node 2.
    b.hello(1, 3);
    assert!(b.closed(), "an impostor is refused");
    let mut c = accept_within(&fake);
    c.hello(1, 2);
    c.heartbeat();
    wait_peer_status(d.addr, &[(2, true)]);
    d.stop();
}
