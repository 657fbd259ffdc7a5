//! Client tests against scripted fake servers on 127.0.0.1 (the real daemon is exercised by the
//! integration tests).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::codec::{self, Joined, Left, Members, NoticeEvent};

struct Fake {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Fake {
    fn accept(l: &TcpListener) -> Fake {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Fake { s, buf: Vec::new() }
    }

    fn recv(&mut self) -> ClientFrame {
        loop {
            if let Some((f, n)) = codec::decode::<ClientFrame>(&self.buf).unwrap() {
                self.buf.drain(..n);
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("fake server read");
            assert!(n > 0, "client closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Next frame that is not a keepalive Ping (answered).
    fn recv_req(&mut self) -> ClientFrame {
        loop {
            match self.recv() {
                ClientFrame::Ping(p) => self.send(ServerFrame::Pong(p)),
                f => return f,
            }
        }
    }

    fn send(&mut self, f: ServerFrame) {
        self.s.write_all(&codec::encode(&f).unwrap()).unwrap();
    }

    fn hello(&mut self, client_id: Option<u64>) -> u64 {
        let ClientFrame::Hello(h) = self.recv_req() else {
            panic!("expected Hello")
        };
        if let Some(id) = client_id {
            assert_eq!(h.client_id, id, "resume must reuse the client id");
        }
        self.send(ServerFrame::Welcome(Welcome {
            node_id: 1,
            user: h.user,
            history_size: 10,
            max_text: 4096,
        }));
        h.client_id
    }
}

fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

fn msg(room: &str, seq: u64, author: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        seq,
        author: author.into(),
        time_ms: 1_700_000_000_000 + seq,
        text: text.into(),
    }
}

fn config(servers: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(servers, "alice");
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    cfg.reconnect_timeout = Duration::from_secs(5);
    cfg
}

fn joined(room: &str, last_seq: u64) -> ServerFrame {
    ServerFrame::Joined(Joined {
        room: room.into(),
        last_seq,
        members: vec!["alice".into(), "bob".into()],
    })
}

fn ack(room: &str, client_seq: u64, seq: u64) -> ServerFrame {
    ServerFrame::Ack(Ack {
        room: room.into(),
        client_seq,
        seq,
    })
}

#[test]
fn requests_answers_and_queued_events() {
    let (l, addr) = listen();
    let server = thread::spawn(move || {
        let mut f = Fake::accept(&l);
        f.hello(None);
        assert_eq!(
            f.recv_req(),
            ClientFrame::Join(Join {
                room: "lobby".into(),
                after_seq: None
            })
        );
        f.send(ServerFrame::Message(msg("lobby", 1, "bob", "first")));
        f.send(ServerFrame::Message(msg("lobby", 2, "bob", "second")));
        f.send(joined("lobby", 2));
        let ClientFrame::Say(s) = f.recv_req() else {
            panic!("expected Say")
        };
        assert_eq!((s.client_seq, s.text.as_str()), (1, "hi"));
        f.send(ServerFrame::Notice(Notice {
            room: "lobby".into(),
            user: "carol".into(),
            event: NoticeEvent::Joined,
        }));
        f.send(ServerFrame::Message(msg("lobby", 3, "alice", "hi")));
        f.send(ack("lobby", 1, 3));
        assert!(matches!(f.recv_req(), ClientFrame::Who(_)));
        f.send(ServerFrame::Members(Members {
            room: "lobby".into(),
            users: vec!["alice".into(), "bob".into(), "carol".into()],
        }));
        let ClientFrame::History(h) = f.recv_req() else {
            panic!("expected History")
        };
        assert_eq!((h.before_seq, h.limit), (Some(3), 2));
        f.send(ServerFrame::HistoryPage(HistoryPage {
            room: "lobby".into(),
            messages: vec![
                msg("lobby", 1, "bob", "first"),
                msg("lobby", 2, "bob", "second"),
            ],
            more: false,
        }));
        let ClientFrame::Ping(p) = f.recv() else {
            panic!("expected Ping")
        };
        f.send(ServerFrame::Pong(p));
        // A duplicate of 3 and a new 4; then a refused join of a bad room.
        f.send(ServerFrame::Message(msg("lobby", 3, "alice", "hi")));
        f.send(ServerFrame::Message(msg("lobby", 4, "bob", "yo")));
        assert!(matches!(f.recv_req(), ClientFrame::Join(_)));
        f.send(ServerFrame::Error(ErrorFrame {
            code: ErrorCode::InvalidRoom as u16,
            client_seq: None,
            message: "room name \"a b\" contains ' '".into(),
        }));
        assert!(matches!(f.recv_req(), ClientFrame::Leave(_)));
        f.send(ServerFrame::Left(Left {
            room: "lobby".into(),
        }));
    });
    let mut c = Client::connect(config(vec![addr])).unwrap();
    assert_eq!(c.welcome().unwrap().user, "alice");
    let j = c.join("lobby").unwrap();
    assert_eq!(j.history.len(), 2);
    assert_eq!(j.history[1].text, "second");
    assert_eq!(j.last_seq, 2);
    assert_eq!(c.session().last_seen("lobby"), Some(2));
    let a = c.say("lobby", "hi").unwrap();
    assert_eq!((a.client_seq, a.seq), (1, 3));
    assert_eq!(c.session().unacked_len(), 0);
    assert_eq!(c.who("lobby").unwrap().len(), 3);
    let page = c.history("lobby", Some(3), 2).unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(c.ping().unwrap() < Duration::from_secs(5));
    // What arrived during the calls comes out in order, without the ack `say` consumed.
    let mut events = Vec::new();
    while events.len() < 3 {
        if let Some(e) = c.next_event(Duration::from_secs(5)).unwrap() {
            events.push(e);
        }
    }
    assert!(matches!(&events[0], Event::Notice(n) if n.user == "carol"));
    assert!(matches!(&events[1], Event::Message(m) if m.seq == 3));
    assert!(
        matches!(&events[2], Event::Message(m) if m.seq == 4),
        "dup 3 dropped"
    );
    let err = c.join("a b").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRoom));
    assert!(err.to_string().starts_with("INVALID_ROOM: "), "{err}");
    assert!(matches!(c.leave("nowhere"), Err(ClientError::NotJoined(_))));
    c.leave("lobby").unwrap();
    assert!(!c.session().is_joined("lobby"));
    server.join().unwrap();
    // The fake server hung up: the client notices and starts failing over.
    let e = c.next_event(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(e, Some(Event::Reconnecting { attempt: 1, .. })),
        "{e:?}"
    );
}

#[test]
fn failover_resumes_without_loss_or_duplicates() {
    let (la, a) = listen();
    let (lb, b) = listen();
    let server_a = thread::spawn(move || {
        let mut f = Fake::accept(&la);
        let id = f.hello(None);
        assert!(matches!(f.recv_req(), ClientFrame::Join(_)));
        f.send(ServerFrame::Message(msg("lobby", 1, "bob", "before")));
        f.send(joined("lobby", 1));
        let ClientFrame::Say(s) = f.recv_req() else {
            panic!()
        };
        assert_eq!(s.client_seq, 1);
        f.send(ServerFrame::Message(msg("lobby", 2, "alice", "one")));
        f.send(ack("lobby", 1, 2));
        let ClientFrame::Say(s) = f.recv_req() else {
            panic!()
        };
        assert_eq!(s.client_seq, 2);
        // The node dies before acking "two".
        drop(f);
        drop(la);
        id
    });
    let server_b = thread::spawn(move || {
        let mut f = Fake::accept(&lb);
        let id = f.hello(None);
        assert_eq!(
            f.recv_req(),
            ClientFrame::Join(Join {
                room: "lobby".into(),
                after_seq: Some(2)
            })
        );
        let ClientFrame::Say(s) = f.recv_req() else {
            panic!()
        };
        assert_eq!((s.client_seq, s.text.as_str()), (2, "two"));
        // Replay (with a stale duplicate), Joined, then the re-sent message and its ack.
        f.send(ServerFrame::Message(msg("lobby", 2, "alice", "one")));
        f.send(ServerFrame::Message(msg("lobby", 3, "bob", "missed")));
        f.send(joined("lobby", 3));
        f.send(ServerFrame::Message(msg("lobby", 4, "alice", "two")));
        f.send(ack("lobby", 2, 4));
        // A say after the failover works on the new connection.
        let ClientFrame::Say(s) = f.recv_req() else {
            panic!()
        };
        assert_eq!(s.client_seq, 3);
        f.send(ServerFrame::Message(msg("lobby", 5, "alice", "three")));
        f.send(ack("lobby", 3, 5));
        id
    });
    let mut c = Client::connect(config(vec![a, b.clone()])).unwrap();
    let id = c.client_id();
    c.join("lobby").unwrap();
    assert_eq!(c.say("lobby", "one").unwrap().seq, 2);
    assert_eq!(c.send("lobby", "two").unwrap(), 2);
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| matches!(e, Event::Ack(a) if a.client_seq == 2))
    {
        assert!(
            Instant::now() < deadline,
            "no ack after failover: {events:?}"
        );
        if let Some(e) = c.next_event(Duration::from_millis(100)).unwrap() {
            events.push(e);
        }
    }
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![2, 3, 4], "each message exactly once, in order");
    assert!(events.contains(&Event::Reconnecting {
        addr: b.clone(),
        attempt: 1
    }));
    assert!(events.contains(&Event::Reconnected { addr: b.clone() }));
    assert_eq!(c.say("lobby", "three").unwrap().seq, 5);
    assert_eq!(c.server(), b);
    assert_eq!(server_a.join().unwrap(), id);
    assert_eq!(server_b.join().unwrap(), id);
}

#[test]
fn refusal_at_hello_is_a_server_error_with_the_message() {
    let (l, addr) = listen();
    let server = thread::spawn(move || {
        let mut f = Fake::accept(&l);
        assert!(matches!(f.recv(), ClientFrame::Hello(_)));
        f.send(ServerFrame::Error(ErrorFrame {
            code: ErrorCode::DeviceLimit as u16,
            client_seq: None,
            message: "already connected on 2 devices".into(),
        }));
    });
    let err = match Client::connect(config(vec![addr])) {
        Err(e) => e,
        Ok(_) => panic!("connect should be refused"),
    };
    assert_eq!(err.code(), Some(ErrorCode::DeviceLimit));
    assert!(err.is_refusal());
    assert_eq!(
        err.to_string(),
        "DEVICE_LIMIT: already connected on 2 devices"
    );
    server.join().unwrap();
}

#[test]
fn no_server_reachable_is_reported_with_addresses() {
    let (l, addr) = listen();
    drop(l);
    let mut cfg = config(vec![addr.clone()]);
    cfg.reconnect_attempts = 3;
    let err = match Client::connect(cfg) {
        Err(e) => e,
        Ok(_) => panic!("nothing listens"),
    };
    assert!(matches!(err, ClientError::NoServer(_)), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
}

#[test]
fn without_reconnect_a_lost_connection_is_an_error() {
    let (l, addr) = listen();
    let server = thread::spawn(move || {
        let mut f = Fake::accept(&l);
        f.hello(None);
    });
    let mut cfg = config(vec![addr]);
    cfg.reconnect = false;
    let mut c = Client::connect(cfg).unwrap();
    server.join().unwrap();
    let err = match c.next_event(Duration::from_secs(5)) {
        Err(e) => e,
        Ok(Some(e)) => panic!("unexpected event {e:?}"),
        Ok(None) => panic!("the close was not noticed"),
    };
    assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
}

#[test]
fn shutting_down_and_silent_servers_trigger_failover() {
    let (la, a) = listen();
    let (lb, b) = listen();
    let (lc, c_addr) = listen();
    let server_a = thread::spawn(move || {
        let mut f = Fake::accept(&la);
        f.hello(None);
        f.send(ServerFrame::Error(ErrorFrame {
            code: ErrorCode::ShuttingDown as u16,
            client_seq: None,
            message: "node is shutting down".into(),
        }));
        thread::sleep(Duration::from_millis(200));
    });
    let server_b = thread::spawn(move || {
        // Hung node: welcomes, then never answers (not even pings).
        let mut f = Fake::accept(&lb);
        f.hello(None);
        thread::sleep(Duration::from_millis(1500));
        drop(f);
    });
    let server_c = thread::spawn(move || {
        let mut f = Fake::accept(&lc);
        f.hello(None);
        let ClientFrame::Ping(p) = f.recv() else {
            panic!()
        };
        f.send(ServerFrame::Pong(p));
    });
    let mut cfg = config(vec![a, b.clone(), c_addr.clone()]);
    cfg.keepalive = Duration::from_millis(150);
    let mut c = Client::connect(cfg).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&Event::Reconnected {
        addr: c_addr.clone(),
    }) {
        assert!(Instant::now() < deadline, "{seen:?}");
        if let Some(e) = c.next_event(Duration::from_millis(50)).unwrap() {
            seen.push(e);
        }
    }
    assert!(seen.contains(&Event::Reconnected { addr: b }), "{seen:?}");
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Error { .. })),
        "{seen:?}"
    );
    c.ping().unwrap();
    server_a.join().unwrap();
    server_b.join().unwrap();
    server_c.join().unwrap();
}

#[test]
fn backoff_is_bounded_jittered_and_seeded() {
    let mut cfg = config(vec!["127.0.0.1:1".into()]);
    cfg.backoff_base = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_secs(2);
    cfg.client_id = 42;
    let make = |cfg: &ClientConfig| Client {
        rng: fastrand::Rng::with_seed(cfg.client_id),
        cfg: cfg.clone(),
        session: Session::new(),
        conn: None,
        current: 0,
        welcome: None,
        events: VecDeque::new(),
        recon: None,
        generation: 0,
        next_nonce: 1,
        last_rx: Instant::now(),
        ping_sent: None,
    };
    let (mut x, mut y) = (make(&cfg), make(&cfg));
    for attempt in 1..=12u32 {
        let d = x.backoff(attempt);
        assert_eq!(d, y.backoff(attempt), "same seed, same delays");
        let full = Duration::from_millis(100 * (1 << (attempt - 1).min(5))).min(cfg.backoff_max);
        assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
    }
}
