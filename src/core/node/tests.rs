use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::*;
use crate::codec::{decode, ClientFrame, Forward, Hello, Join, Leave, PeerFrame, Say, ServerFrame};
use crate::storage::{self, MemStorage, Recovered, Storage};

/// Drives one node like a shell with memory storage does (every job written at once), and
/// collects frames per conn.
struct Harness {
    node: Node,
    now: Now,
    frames: HashMap<ConnId, Vec<ServerFrame>>,
    closed: Vec<ConnId>,
    sends: Vec<(ConnId, SharedBytes)>,
    store: MemStorage,
}

impl Harness {
    fn new(cfg: NodeConfig) -> Harness {
        Harness::recover(cfg, Recovered::default())
    }

    fn recover(cfg: NodeConfig, recovered: Recovered) -> Harness {
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_700_000_000_000,
        };
        Harness {
            node: Node::new(cfg, recovered, now).expect("recovered state decodes"),
            now,
            frames: HashMap::new(),
            closed: Vec::new(),
            sends: Vec::new(),
            store: MemStorage::new(),
        }
    }

    /// A turn without persisting (what clients see before durability).
    fn drain(&mut self) {
        let ready = self.node.turn(self.now, false);
        self.collect(ready.actions);
    }

    fn collect(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { conn, bytes } => {
                    let mut rest = &bytes[..];
                    while let Some((f, used)) = decode::<ServerFrame>(rest).unwrap() {
                        self.frames.entry(conn).or_default().push(f);
                        rest = &rest[used..];
                    }
                    assert!(rest.is_empty(), "a Send carried a partial frame");
                    self.sends.push((conn, bytes));
                }
                Action::SendPeer { to, .. } | Action::ResetPeer { to, .. } => {
                    panic!("a cluster of one acted on peer {to}")
                }
                Action::Close { conn, .. } => {
                    self.closed.push(conn);
                    self.node.handle_disconnect(self.now, conn);
                }
            }
        }
    }

    /// Turns until nothing is left to persist or to close, collecting the actions.
    fn step(&mut self) {
        for _ in 0..10 {
            let ready = self.node.turn(self.now, true);
            let closes = self.closed.len();
            self.collect(ready.actions);
            let persisted = persist(&mut self.node, &mut self.store, self.now, ready.persist);
            if !persisted && self.closed.len() == closes {
                break;
            }
        }
    }

    fn frame(&mut self, conn: u64, f: ClientFrame) {
        self.node.handle_frame(self.now, ConnId(conn), f);
    }

    fn connect(&mut self, conn: u64, user: &str) {
        self.node.handle_connect(self.now, ConnId(conn));
        self.frame(
            conn,
            ClientFrame::Hello(Hello {
                user: user.into(),
                client_id: conn,
            }),
        );
    }

    fn join(&mut self, conn: u64, room: &str) {
        self.frame(
            conn,
            ClientFrame::Join(Join {
                room: room.into(),
                after_seq: None,
            }),
        );
    }

    fn say(&mut self, conn: u64, room: &str, client_seq: u64, text: &str) {
        let say = Say {
            room: room.into(),
            client_seq,
            text: text.into(),
        };
        self.frame(conn, ClientFrame::Say(say));
    }

    fn take(&mut self, conn: u64) -> Vec<ServerFrame> {
        self.frames.remove(&ConnId(conn)).unwrap_or_default()
    }

    fn errors(&mut self, conn: u64) -> Vec<u16> {
        self.take(conn)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Error(e) => Some(e.code),
                _ => None,
            })
            .collect()
    }
}

/// What a shell with memory storage does with a turn's job: write it (one sync) and report it
/// done at once. False when there was none.
fn persist(node: &mut Node, store: &mut MemStorage, now: Now, job: Option<PersistJob>) -> bool {
    let Some(job) = job else {
        return false;
    };
    storage::write(store, &job).unwrap();
    node.handle_persisted(now, job.token);
    true
}

fn texts(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn welcome_and_ack_wait_for_persistence() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.drain();
    assert!(
        h.take(1).is_empty(),
        "Welcome before the session was durable"
    );
    h.step();
    assert!(matches!(h.take(1)[..], [ServerFrame::Welcome(_)]));
    h.join(1, "general");
    h.say(1, "general", 1, "hi");
    h.drain();
    assert!(h.take(1).is_empty(), "Ack before the message was durable");
    h.step();
    let frames = h.take(1);
    assert!(matches!(frames.last(), Some(ServerFrame::Ack(a)) if a.seq == 1 && a.client_seq == 1));
}

#[test]
fn join_after_25_messages_replays_exactly_the_last_10_in_order() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.join(1, "general");
    for i in 1..=25 {
        h.say(1, "general", i, &format!("msg {i}"));
    }
    h.step();
    h.connect(2, "bob");
    h.join(2, "general");
    h.step();
    let frames = h.take(2);
    let expect: Vec<String> = (16..=25).map(|i| format!("msg {i}")).collect();
    assert_eq!(texts(&frames), expect);
    match frames.last() {
        Some(ServerFrame::Joined(j)) => {
            assert_eq!(j.last_seq, 25);
            assert_eq!(j.members, vec!["alice".to_string(), "bob".to_string()]);
        }
        other => panic!("expected Joined last, got {other:?}"),
    }
}

#[test]
fn history_size_is_configurable() {
    let cfg = NodeConfig {
        history_size: 3,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.connect(1, "alice");
    h.join(1, "r");
    for i in 1..=5 {
        h.say(1, "r", i, &i.to_string());
    }
    h.connect(2, "bob");
    h.join(2, "r");
    h.step();
    assert_eq!(texts(&h.take(2)), vec!["3", "4", "5"]);
}

#[test]
fn a_message_is_encoded_once_and_reaches_every_member_including_the_authors_other_device() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.connect(2, "alice");
    h.connect(3, "bob");
    h.connect(4, "carol");
    for c in 1..=3 {
        h.join(c, "g");
    }
    h.join(4, "other");
    h.step();
    h.sends.clear();
    h.frames.clear();
    h.say(1, "g", 1, "hello");
    h.step();
    let msg_sends: Vec<&(ConnId, SharedBytes)> =
        h.sends.iter().filter(|(_, b)| b[3] == 0x43).collect();
    let mut to: Vec<u64> = msg_sends.iter().map(|(c, _)| c.0).collect();
    to.sort();
    assert_eq!(to, vec![1, 2, 3]);
    assert!(
        msg_sends.windows(2).all(|w| Rc::ptr_eq(&w[0].1, &w[1].1)),
        "bytes were re-encoded"
    );
    assert!(h.take(4).is_empty());
    assert_eq!(texts(&h.take(2)), vec!["hello"]);
}

#[test]
fn third_device_is_refused_with_a_clear_error_and_accepted_after_one_leaves() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.connect(2, "alice");
    h.connect(3, "alice");
    h.step();
    let frames = h.take(3);
    match &frames[..] {
        [ServerFrame::Error(e)] => {
            assert_eq!(e.code, ErrorCode::DeviceLimit as u16);
            assert!(e.message.contains("2 devices"), "{}", e.message);
        }
        other => panic!("expected one DeviceLimit error, got {other:?}"),
    }
    assert_eq!(h.closed, vec![ConnId(3)]);
    h.node.handle_disconnect(h.now, ConnId(1));
    h.connect(4, "alice");
    h.step();
    assert!(matches!(h.take(4)[..], [ServerFrame::Welcome(_)]));
    assert_eq!(h.node.stats().sessions, 2);
}

#[test]
fn invalid_input_gets_a_coded_error() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "bad name");
    h.step();
    assert_eq!(h.errors(1), vec![ErrorCode::InvalidUser as u16]);
    assert!(h.closed.contains(&ConnId(1)));

    h.node.handle_connect(h.now, ConnId(2));
    h.say(2, "g", 1, "x");
    h.step();
    assert_eq!(h.errors(2), vec![ErrorCode::ProtocolViolation as u16]);
    assert!(h.closed.contains(&ConnId(2)));

    h.connect(3, "carol");
    h.join(3, "no/slash");
    h.say(3, "elsewhere", 1, "x");
    h.frame(
        3,
        ClientFrame::Leave(Leave {
            room: "elsewhere".into(),
        }),
    );
    h.join(3, "g");
    h.say(3, "g", 2, "");
    h.say(3, "g", 3, &"x".repeat(5000));
    h.step();
    let codes = h.errors(3);
    use ErrorCode::*;
    let want = [InvalidRoom, NotInRoom, NotInRoom, InvalidText, InvalidText].map(|c| c as u16);
    // The NotInRoom comes at apply time, after the synchronous validation errors.
    let mut got = codes.clone();
    got.sort();
    let mut w = want.to_vec();
    w.sort();
    assert_eq!(got, w);
    assert!(
        !h.closed.contains(&ConnId(3)),
        "a bad request must not cost the connection"
    );
}

#[test]
fn presence_notices_go_to_the_other_members() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.join(1, "g");
    h.step();
    h.take(1);
    h.connect(2, "bob");
    h.join(2, "g");
    h.step();
    let seen = h.take(1);
    assert!(
        matches!(&seen[..], [ServerFrame::Notice(n)] if n.user == "bob" && n.event == crate::codec::NoticeEvent::Joined),
        "{seen:?}"
    );
    h.take(2);
    h.frame(2, ClientFrame::Leave(Leave { room: "g".into() }));
    h.step();
    assert!(matches!(h.take(2)[..], [ServerFrame::Left(_)]));
    assert!(
        matches!(&h.take(1)[..], [ServerFrame::Notice(n)] if n.event == crate::codec::NoticeEvent::Left)
    );
    h.join(2, "g");
    h.step();
    h.take(1);
    h.node.handle_disconnect(h.now, ConnId(2));
    h.step();
    assert!(
        matches!(&h.take(1)[..], [ServerFrame::Notice(n)] if n.user == "bob" && n.event == crate::codec::NoticeEvent::Left)
    );
}

#[test]
fn a_resent_message_is_acked_with_its_original_seq_and_delivered_once() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.join(1, "g");
    h.say(1, "g", 1, "once");
    h.say(1, "g", 1, "once");
    h.step();
    let frames = h.take(1);
    assert_eq!(texts(&frames), vec!["once"]);
    let acks: Vec<u64> = frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Ack(a) = f {
                Some(a.seq)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(acks, vec![1, 1]);
}

#[test]
fn writes_beyond_the_pending_bound_are_refused_as_busy_not_dropped_silently() {
    let cfg = NodeConfig {
        max_pending: 3,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.connect(1, "alice");
    h.join(1, "g");
    h.step();
    h.take(1);
    for i in 1..=5 {
        h.say(1, "g", i, "x");
    }
    h.drain();
    let errs: Vec<Option<u64>> = h
        .take(1)
        .into_iter()
        .filter_map(|f| {
            if let ServerFrame::Error(e) = f {
                Some(e.client_seq)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(errs, vec![Some(4), Some(5)]);
}

#[test]
fn shutdown_tells_every_client_and_closes_it() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.step();
    h.node.begin_shutdown(h.now);
    h.drain();
    assert_eq!(h.errors(1), vec![ErrorCode::ShuttingDown as u16]);
    assert_eq!(h.errors(2), vec![ErrorCode::ShuttingDown as u16]);
    let mut closed = h.closed.clone();
    closed.sort();
    assert_eq!(closed, vec![ConnId(1), ConnId(2)]);
}

#[test]
fn ping_is_answered_even_before_hello() {
    let mut h = Harness::new(NodeConfig::default());
    h.node.handle_connect(h.now, ConnId(1));
    h.frame(1, ClientFrame::Ping(crate::codec::Ping { nonce: 9 }));
    h.drain();
    assert!(matches!(
        h.take(1)[..],
        [ServerFrame::Pong(crate::codec::Ping { nonce: 9 })]
    ));
}

#[test]
fn restart_from_the_durable_log_keeps_history_and_frees_old_device_slots() {
    let mut h = Harness::new(NodeConfig::default());
    h.connect(1, "alice");
    h.connect(2, "alice");
    h.join(1, "g");
    for i in 1..=3 {
        h.say(1, "g", i, &format!("m{i}"));
    }
    h.step();
    let durable = h.store.load().unwrap();
    assert_eq!(durable.entries.len() as u64, h.node.stats().committed);
    let mut h2 = Harness::recover(NodeConfig::default(), durable);
    h2.step();
    h2.connect(7, "alice");
    h2.join(7, "g");
    h2.step();
    let frames = h2.take(7);
    assert!(
        matches!(frames[0], ServerFrame::Welcome(_)),
        "old sessions still hold the slots: {frames:?}"
    );
    assert_eq!(texts(&frames), vec!["m1", "m2", "m3"]);
}

#[test]
fn a_snapshot_compacts_the_log_and_a_restart_recovers_from_it() {
    let cfg = NodeConfig {
        snapshot_entries: 10,
        compact_keep: 2,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg.clone());
    h.connect(1, "alice");
    h.join(1, "g");
    for i in 1..=30 {
        h.say(1, "g", i, &format!("m{i}"));
    }
    h.step();
    let meta = h.node.snapshot_meta().expect("a snapshot was taken");
    assert!(meta.index >= 10);
    let durable = h.store.load().unwrap();
    assert_eq!(durable.snapshot.as_ref().map(|s| s.meta), Some(meta));
    let mut h2 = Harness::recover(cfg, durable);
    h2.step();
    h2.connect(7, "bob");
    h2.join(7, "g");
    h2.step();
    let texts = texts(&h2.take(7));
    assert_eq!(texts.last().map(String::as_str), Some("m30"));
}

#[test]
fn long_messages_trigger_a_snapshot_by_size_before_the_entry_count() {
    let cfg = NodeConfig {
        snapshot_entries: 1_000,
        snapshot_bytes: 20_000,
        compact_keep: 2,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.connect(1, "alice");
    h.join(1, "g");
    h.step();
    let long = "x".repeat(4000);
    for i in 1..=4 {
        h.say(1, "g", i, &long);
    }
    h.step();
    assert_eq!(h.node.snapshot_meta(), None, "16 kB applied: not due yet");
    for i in 5..=8 {
        h.say(1, "g", i, &long);
    }
    h.step();
    let first = h
        .node
        .snapshot_meta()
        .expect("32 kB applied: a snapshot was taken");
    assert!(first.index < 20, "taken by size, not count: {first:?}");
    // The count starts again from the snapshot.
    h.say(1, "g", 9, &long);
    h.step();
    assert_eq!(h.node.snapshot_meta(), Some(first));
}

#[test]
fn snapshots_wait_until_the_log_has_grown_by_the_last_images_size() {
    let cfg = NodeConfig {
        snapshot_entries: 10,
        compact_keep: 2,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.connect(1, "alice");
    h.join(1, "g");
    let long = "x".repeat(1000);
    let mut seq = 0;
    let mut say = |h: &mut Harness, text: &str| {
        seq += 1;
        h.say(1, "g", seq, text);
        h.step();
    };
    for _ in 0..20 {
        say(&mut h, &long);
        if h.node.snapshot_meta().is_some() {
            break;
        }
    }
    let first = h
        .node
        .snapshot_meta()
        .expect("a snapshot within 20 entries");
    // Thirty entries, but fewer bytes than the first image holds: not yet.
    for _ in 0..30 {
        say(&mut h, "short");
    }
    assert_eq!(h.node.snapshot_meta(), Some(first));
    for _ in 0..8 {
        say(&mut h, &long);
    }
    let second = h.node.snapshot_meta().unwrap();
    assert!(second.index > first.index, "{second:?}");
}

/// An idle turn `d` later (due timers run in it).
fn idle_turn(h: &mut Harness, d: Duration) {
    h.now.mono += d;
    h.step();
}

#[test]
fn a_snapshot_of_a_long_history_is_encoded_over_bounded_turns_and_nothing_said_meanwhile_is_lost() {
    let cfg = NodeConfig {
        snapshot_entries: 150,
        compact_keep: 2,
        snapshot_step: 1000,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg.clone());
    h.connect(1, "alice");
    h.join(1, "g");
    for i in 1..=200 {
        h.say(1, "g", i, &format!("message {i:>40}"));
    }
    h.step();
    let job = h
        .node
        .encoding
        .as_ref()
        .expect("due: the snapshot is being encoded");
    let captured = job.meta.index;
    assert_eq!(captured, h.node.log.applied());
    let (mut turns, mut encoded) = (1, 0);
    while h.node.snapshot_meta().is_none() {
        let job = h
            .node
            .encoding
            .as_ref()
            .expect("the snapshot is being encoded");
        let now_encoded = job.encoder.encoded_bytes();
        // The budget, overshot by one message at most.
        assert!(
            now_encoded - encoded <= 1000 + 100,
            "a turn encoded too much"
        );
        encoded = now_encoded;
        let due = h.node.poll_timeout().expect("a wake-up is asked for");
        assert!(
            due <= h.now.mono + Duration::from_millis(1),
            "an idle node waits"
        );
        // Said while it is encoded, and committed: after the snapshot's index.
        h.say(1, "g", 1000 + turns, "said during the encoding");
        idle_turn(&mut h, Duration::from_millis(1));
        turns += 1;
        assert!(turns < 100, "the encoding does not end");
    }
    let meta = h.node.snapshot_meta().unwrap();
    assert_eq!(meta.index, captured);
    assert!(
        turns >= 10,
        "a 14 kB image in 1 kB steps took {turns} turns"
    );
    // Compacted behind it as before.
    assert!(h.node.log.get(captured - 2).is_none());
    assert!(h.node.log.get(captured - 1).is_some());
    let durable = h.store.load().unwrap();
    let image = durable.snapshot.as_ref().expect("the snapshot is durable");
    assert_eq!(image.meta, meta);
    let (_, chat) = crate::codec::decode_snapshot(&image.bytes).unwrap();
    assert_eq!(
        chat.last_seq("g"),
        200,
        "the image is the state at its index"
    );
    // What was said during the encoding is in the log after it, and survives a restart.
    let mut h2 = Harness::recover(cfg, durable);
    h2.step();
    h2.connect(7, "bob");
    h2.join(7, "g");
    h2.step();
    let texts = texts(&h2.take(7));
    assert_eq!(texts.len(), 10);
    assert!(texts.iter().all(|t| t == "said during the encoding"));
    assert_eq!(h2.node.chat.last_seq("g"), 200 + turns - 1);
}

#[test]
fn a_leader_ends_the_sessions_of_a_node_that_is_no_peer_any_more() {
    let cfg = NodeConfig::default();
    let timeout = cfg.session_timeout;
    let mut h = Harness::new(cfg);
    h.step();
    // A session of node 9, removed by a leader that failed before its NodeDown committed.
    let ghost = SessionId {
        node: 9,
        incarnation: 1,
        conn: ConnId(5),
    };
    h.node.propose(Command::OpenSession {
        session: ghost,
        user: "ghost".into(),
        client_id: 77,
    });
    h.step();
    assert_eq!(h.node.chat.sessions_on(9), vec![ghost]);
    h.now.mono += timeout / 2;
    h.node.handle_timeout(h.now);
    h.step();
    assert_eq!(h.node.chat.sessions_on(9), vec![ghost], "kept for a while");
    h.now.mono += timeout;
    h.node.handle_timeout(h.now);
    h.step();
    assert_eq!(h.node.chat.sessions_on(9), vec![], "ended");
    assert_eq!(h.node.chat.session_count(), 0);
}

#[test]
fn a_leader_takes_a_newcomer_as_a_learner_and_refuses_what_it_must() {
    let cfg = NodeConfig {
        cluster_id: 9,
        ..NodeConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.step();
    let req = |id, cluster_id| crate::codec::JoinRequest {
        cluster_id,
        node_id: id,
        peer_addr: format!("127.0.0.1:{}", 7170 + id),
        client_addr: String::new(),
    };
    let t = h.now.mono;
    let wrong = h.node.handle_join(t, req(2, 8));
    assert!(!wrong.ok && !wrong.retry, "{wrong:?}");
    let ok = h.node.handle_join(t, req(2, 9));
    assert!(ok.ok, "{ok:?}");
    assert!(h.node.peer_addresses().iter().any(|(id, _)| *id == 2));
    // One change at a time.
    let busy = h.node.handle_join(t, req(3, 9));
    assert!(!busy.ok && busy.retry, "{busy:?}");
    // The last member cannot go, nor can a stranger.
    assert!(!h.node.request_remove(t, 1).ok);
    assert!(!h.node.request_remove(t, 5).ok);
    assert!(h.node.is_member() && h.node.removed().is_none());
}

// ----- a node among peers: guests (nodes of the cluster it does not list) -----

/// Drives one node of a cluster like the driver does (persist, then send) and keeps the peer
/// frames it sends.
struct Member {
    node: Node,
    now: Now,
    store: MemStorage,
    sent: Vec<(NodeId, PeerFrame)>,
    /// Links the node asked to reset, and its clients' frames and closes.
    resets: Vec<NodeId>,
    to_clients: Vec<(ConnId, ServerFrame)>,
    closed: Vec<ConnId>,
}

fn config_entry(index: LogIndex, epoch: u64, ids: &[NodeId]) -> Entry {
    let members = ids.iter().map(|&i| (i, format!("127.0.0.1:{}", 7170 + i)));
    Entry {
        index,
        epoch,
        origin: None,
        command: Command::Config(Config::of(members)),
    }
}

impl Member {
    /// Node `id`, not amnesiac, whose log holds the configuration of `members` (epoch 1).
    fn new(id: NodeId, members: &[NodeId]) -> Member {
        Member::with_log(id, vec![config_entry(1, 1, members)])
    }

    /// Node `id`, not amnesiac, in epoch 1, whose log holds `entries`.
    fn with_log(id: NodeId, entries: Vec<Entry>) -> Member {
        let cfg = NodeConfig {
            id,
            ..NodeConfig::default()
        };
        let recovered = Recovered {
            hard_state: HardState {
                epoch: 1,
                participated: 1,
                ..HardState::default()
            },
            snapshot: None,
            entries,
        };
        let now = Now {
            mono: Instant::now(),
            unix_ms: 1_700_000_000_000,
        };
        let mut m = Member {
            node: Node::new(cfg, recovered, now).expect("no snapshot to decode"),
            now,
            store: MemStorage::new(),
            sent: Vec::new(),
            resets: Vec::new(),
            to_clients: Vec::new(),
            closed: Vec::new(),
        };
        m.step();
        m
    }

    /// Turns until nothing is left to persist, collecting the peer frames sent.
    fn step(&mut self) {
        for _ in 0..10 {
            let ready = self.node.turn(self.now, true);
            for a in ready.actions {
                match a {
                    Action::SendPeer { to, bytes } => {
                        if let Some((f, _)) = decode::<PeerFrame>(&bytes).unwrap() {
                            self.sent.push((to, f));
                        }
                    }
                    Action::ResetPeer { to, .. } => self.resets.push(to),
                    Action::Send { conn, bytes } => {
                        let mut rest = &bytes[..];
                        while let Some((f, used)) = decode::<ServerFrame>(rest).unwrap() {
                            self.to_clients.push((conn, f));
                            rest = &rest[used..];
                        }
                    }
                    Action::Close { conn, .. } => self.closed.push(conn),
                }
            }
            if !persist(&mut self.node, &mut self.store, self.now, ready.persist) {
                break;
            }
        }
    }

    fn connect(&mut self, peer: NodeId) {
        self.node.handle_peer_connected(self.now, peer, "");
        self.step();
    }

    fn frame(&mut self, from: NodeId, frame: PeerFrame) {
        self.node.handle_peer_frame(self.now, from, frame);
        self.step();
    }

    fn heartbeat_from(&mut self, from: NodeId, hears_you: bool) {
        let hb = crate::codec::Heartbeat {
            epoch: 1,
            leader: None,
            load: 0,
            hears_you,
        };
        self.frame(from, PeerFrame::Heartbeat(hb));
    }

    fn ack_from(&mut self, from: NodeId, index: LogIndex) {
        let reply = crate::codec::AppendReply {
            epoch: self.node.epoch(),
            ok: true,
            index,
        };
        self.frame(from, PeerFrame::AppendReply(reply));
    }

    /// Time passes; due timers run.
    fn advance(&mut self, d: Duration) {
        self.now.mono += d;
        self.step();
    }

    fn listed(&self, peer: NodeId) -> bool {
        self.node.peer_addresses().iter().any(|(id, _)| *id == peer)
    }

    fn linked(&self, peer: NodeId) -> bool {
        let status = self.node.status(self.now);
        status.peers.iter().any(|p| p.id == peer && p.connected)
    }

    /// Makes this node the leader of epoch 1, elected with `participants`.
    fn lead(&mut self, participants: Vec<NodeId>) {
        let by = participants[1];
        let elected = crate::codec::Elected {
            epoch: 1,
            leader: self.node.id(),
            participants,
        };
        self.frame(by, PeerFrame::Elected(elected));
        assert_eq!(self.node.stats().role, Role::Leader);
    }
}

#[test]
fn installing_the_leaders_snapshot_abandons_the_one_being_encoded() {
    let mut m = Member::new(1, &[1, 2, 3]);
    m.node.cfg.snapshot_step = 64;
    let session = SessionId {
        node: 2,
        incarnation: 1,
        conn: ConnId(1),
    };
    let say = |i| Command::Say {
        session,
        room: "g".into(),
        client_seq: i,
        text: format!("message {i}").into(),
        time_ms: 5,
    };
    let mut commands = vec![
        Command::OpenSession {
            session,
            user: "alice".into(),
            client_id: 1,
        },
        Command::Join {
            session,
            room: "g".into(),
            after_seq: None,
        },
    ];
    commands.extend((1..=50).map(say));
    let entries: Vec<Entry> = (2..)
        .zip(commands.iter().cloned())
        .map(|(index, command)| Entry {
            index,
            epoch: 1,
            origin: None,
            command,
        })
        .collect();
    let last = entries.len() as LogIndex + 1;
    let append = crate::codec::Append {
        epoch: 1,
        prev_index: 1,
        prev_epoch: 1,
        commit: last,
        durable: 0,
        entries,
    };
    m.frame(2, PeerFrame::Append(append));
    assert_eq!(m.node.log.applied(), last);
    m.node.request_snapshot();
    m.advance(Duration::from_millis(1));
    assert_eq!(
        m.node.encoding.as_ref().map(|j| j.meta.index),
        Some(last),
        "a snapshot of 50 messages in 64-byte steps takes many turns"
    );
    // The leader's state has a longer history of the same room: an image encoded on from
    // the installed state would look fine.
    let mut leaders = ChatState::new(2, 10);
    leaders.apply(&commands[0]);
    leaders.apply(&commands[1]);
    for i in 1..=60 {
        leaders.apply(&say(i));
    }
    let image = crate::codec::encode_snapshot(m.node.configs().applied(), &leaders).unwrap();
    let chunk = crate::codec::SnapshotChunk {
        epoch: 1,
        index: 100,
        index_epoch: 1,
        offset: 0,
        total: image.len() as u64,
        data: image,
    };
    m.frame(2, PeerFrame::Snapshot(chunk));
    assert!(m.node.encoding.is_none(), "abandoned");
    for _ in 0..100 {
        m.advance(Duration::from_millis(1));
    }
    let meta = m
        .node
        .snapshot_meta()
        .expect("the leader's snapshot is durable");
    assert_eq!((meta.index, m.node.log.applied()), (100, 100));
    assert_eq!(
        m.node.chat.last_seq("g"),
        60,
        "the leader's state, not ours"
    );
    let durable = m.store.load().unwrap();
    assert_eq!(durable.snapshot.map(|s| s.meta), Some(meta));
}

#[test]
fn a_member_that_missed_a_join_follows_the_new_node_as_its_leader_and_catches_up() {
    // Node 1 lists 1, 2, 3; node 4 joined (and leads) while node 1 was cut off.
    let mut m = Member::new(1, &[1, 2, 3]);
    m.connect(4);
    assert!(m.linked(4), "a guest is a peer while linked");
    assert!(!m.listed(4), "a guest is not dialed");
    let append = crate::codec::Append {
        epoch: 2,
        prev_index: 1,
        prev_epoch: 1,
        commit: 3,
        durable: 0,
        entries: vec![
            Entry {
                index: 2,
                epoch: 2,
                origin: None,
                command: Command::Noop,
            },
            config_entry(3, 2, &[1, 2, 3, 4]),
        ],
    };
    m.frame(4, PeerFrame::Append(append));
    let s = m.node.stats();
    assert_eq!(
        (s.leader, s.epoch, s.committed, s.applied),
        (Some(4), 2, 3, 3)
    );
    assert!(m.node.configs().applied().has(4));
    assert!(
        m.listed(4),
        "once the entry is in its log, node 4 is a peer like any other"
    );
    let acked = m
        .sent
        .iter()
        .any(|(to, f)| *to == 4 && matches!(f, PeerFrame::AppendReply(r) if r.ok && r.index == 3));
    assert!(acked, "no acknowledgement to the leader: {:?}", m.sent);
}

#[test]
fn a_guest_is_forgotten_when_its_link_drops() {
    let mut m = Member::new(1, &[1, 2, 3]);
    m.connect(9);
    assert!(m.linked(9));
    m.node.handle_peer_disconnected(m.now, 9);
    let status = m.node.status(m.now);
    assert!(status.peers.iter().all(|p| p.id != 9), "{:?}", status.peers);
    // A listed peer stays known while down.
    m.connect(2);
    m.node.handle_peer_disconnected(m.now, 2);
    assert!(m.listed(2) && !m.linked(2));
}

#[test]
fn guests_count_in_no_majority_for_commits_or_for_the_leader_staying_up() {
    let mut m = Member::new(1, &[1, 2, 3]);
    for p in [2, 3, 4, 5] {
        m.connect(p);
    }
    m.lead(vec![1, 2]);
    let last = m.node.stats().last_index;
    let replicated = m
        .sent
        .iter()
        .any(|(to, f)| *to == 4 && matches!(f, PeerFrame::Append(_)));
    assert!(
        replicated,
        "a guest is replicated to (a removed node learns it is out)"
    );
    // Two guests store everything: no majority of members 1, 2, 3 does.
    m.ack_from(4, last);
    m.ack_from(5, last);
    assert!(m.node.stats().committed < last);
    m.ack_from(2, last);
    assert_eq!(m.node.stats().committed, last);
    // Only the guests keep answering: the leader steps down all the same.
    let hb = m.node.config().heartbeat_interval;
    for _ in 0..10 {
        m.advance(hb);
        m.ack_from(4, last);
        m.ack_from(5, last);
    }
    assert_eq!(m.node.stats().role, Role::Follower);
}

#[test]
fn a_token_goes_to_a_live_guest_a_member_of_its_own_configuration_and_skips_a_non_member() {
    // Node 2 missed node 5's join: it lists 1 and 4 only, and node 4 is down. The token must
    // not skip node 5, which sits between 2 and 1 on the ring of the newer configuration.
    for (guest_is_member, to) in [(true, 5), (false, 1)] {
        let mut m = Member::new(2, &[1, 2, 4]);
        m.connect(1);
        m.connect(5);
        let hb = m.node.config().heartbeat_interval;
        let token = (0..100).find_map(|_| {
            m.heartbeat_from(1, true);
            m.heartbeat_from(5, guest_is_member);
            m.advance(hb);
            m.sent
                .iter()
                .find(|(_, f)| matches!(f, PeerFrame::Token(_)))
                .map(|(to, _)| *to)
        });
        assert_eq!(
            token,
            Some(to),
            "guest says it is a member: {guest_is_member}"
        );
    }
}

#[test]
fn a_node_that_has_not_caught_up_since_it_lost_its_state_asks_to_be_skipped_by_tokens() {
    // Heartbeats say hears_you only from a node that has its state: one that lost it takes
    // no part, and its ring may know no member at all, so tokens must go around it.
    for (id, wiped) in [(3, false), (4, true)] {
        let mut m = Member::new(id, &[1, 2, 3]);
        if wiped {
            let cfg = NodeConfig {
                id,
                members: vec![1, 2, 3],
                ..NodeConfig::default()
            };
            m.node = Node::new(cfg, Recovered::default(), m.now).unwrap();
        }
        m.connect(1);
        m.heartbeat_from(1, true);
        m.sent.clear();
        m.advance(m.node.config().heartbeat_interval);
        let hears = m.sent.iter().find_map(|(to, f)| match f {
            PeerFrame::Heartbeat(h) if *to == 1 => Some(h.hears_you),
            _ => None,
        });
        assert_eq!(hears, Some(!wiped), "node {id}");
    }
}

#[test]
fn an_election_is_for_an_epoch_above_every_one_a_peer_reported() {
    // Node 1 took part in elections up to epoch 5 that node 2 never heard of: it would pass
    // node 2's tokens for earlier epochs on without taking part, for ever.
    let mut m = Member::new(2, &[1, 2, 3]);
    m.connect(1);
    m.connect(3);
    let hb = m.node.config().heartbeat_interval;
    let epoch = (0..100).find_map(|_| {
        for (from, epoch) in [(1, 5), (3, 1)] {
            let h = crate::codec::Heartbeat {
                epoch,
                leader: None,
                load: 0,
                hears_you: true,
            };
            m.frame(from, PeerFrame::Heartbeat(h));
        }
        m.advance(hb);
        m.sent.iter().find_map(|(_, f)| match f {
            PeerFrame::Token(t) => Some(t.epoch),
            _ => None,
        })
    });
    assert_eq!(epoch, Some(6));
}

#[test]
fn a_restarted_node_whose_log_removes_it_without_a_commit_it_knows_of_does_not_stop() {
    // The next leader may have dropped that entry: the node waits, no member, to be told.
    let removal = Config::of([(1, String::new()), (2, String::new()), (3, String::new())])
        .without(1)
        .unwrap();
    let recovered = Recovered {
        hard_state: HardState {
            epoch: 1,
            participated: 1,
            ..HardState::default()
        },
        snapshot: None,
        entries: vec![
            config_entry(1, 1, &[1, 2, 3]),
            Entry {
                index: 2,
                epoch: 1,
                origin: None,
                command: Command::Config(removal),
            },
        ],
    };
    let cfg = NodeConfig {
        members: vec![2, 3],
        ..NodeConfig::default()
    };
    let h = Harness::recover(cfg, recovered);
    assert!(h.node.removed().is_none());
    assert!(!h.node.is_member());
}

fn token(
    epoch: u64,
    pre: bool,
    initiator: NodeId,
    participants: Vec<NodeId>,
) -> crate::codec::Token {
    crate::codec::Token {
        epoch,
        pre,
        initiator,
        best: crate::codec::Candidate {
            last_epoch: 0,
            last_index: 0,
            id: initiator,
        },
        participants,
    }
}

fn tokens_sent(m: &Member) -> Vec<(NodeId, crate::codec::Token)> {
    m.sent
        .iter()
        .filter_map(|(to, f)| match f {
            PeerFrame::Token(t) => Some((*to, t.clone())),
            _ => None,
        })
        .collect()
}

/// Links `m` to `peers` and lets each say it hears `m`.
fn linked_to(m: &mut Member, peers: &[NodeId]) {
    for &p in peers {
        m.connect(p);
        m.heartbeat_from(p, true);
    }
    m.sent.clear();
}

#[test]
fn a_node_whose_log_lacks_the_entry_adding_it_takes_part_but_is_never_named() {
    // Node 4's addition is committed elsewhere, but its log stops before it: the others may
    // need it to make a majority of their configuration. It would lead a configuration
    // without itself, so its log does not compete; a member's does.
    for (id, members, named) in [(4, [1, 2, 3], false), (3, [1, 2, 3], true)] {
        let mut m = Member::new(id, &members);
        linked_to(&mut m, &[1, 2]);
        m.frame(2, PeerFrame::Token(token(2, false, 1, vec![1, 2])));
        let sent = tokens_sent(&m);
        let [(to, t)] = &sent[..] else {
            panic!("node {id} sent {sent:?}");
        };
        assert_eq!((*to, &t.participants[..]), (1, &[1, 2, id][..]));
        assert_eq!(t.best.id == id, named, "node {id}: best {:?}", t.best);
    }
}

#[test]
fn a_token_goes_on_past_an_initiator_this_node_cannot_reach_and_comes_back_home() {
    // Node 4 holds {1, 2, 3, 4}; node 5, the initiator, joined in a configuration node 4
    // lacks, and the two are not linked: the token goes on to node 1, which knows it.
    let mut four = Member::new(4, &[1, 2, 3, 4]);
    linked_to(&mut four, &[1, 3]);
    four.frame(3, PeerFrame::Token(token(7, true, 5, vec![5, 1, 3])));
    let sent = tokens_sent(&four);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, 1);
    // Node 1 passed it on moments ago: now it sends it home, without taking part again.
    let mut one = Member::new(1, &[1, 2, 3, 5]);
    linked_to(&mut one, &[3, 4, 5]);
    one.frame(5, PeerFrame::Token(token(7, true, 5, vec![5])));
    assert_eq!(tokens_sent(&one)[0].0, 3);
    one.sent.clear();
    one.frame(4, PeerFrame::Token(sent[0].1.clone()));
    let back = tokens_sent(&one);
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        (back[0].0, &back[0].1.participants[..]),
        (5, &[5, 1, 3, 4][..])
    );
}

#[test]
fn a_leader_drops_what_a_node_its_configuration_retires_forwards() {
    // Node 2 was removed but has not learned it: a session it opened now would outlive the
    // NodeDown of its removal.
    let removal = Config::of([1, 2, 3].map(|i| (i, format!("127.0.0.1:{}", 7170 + i))))
        .without(2)
        .unwrap();
    let entries = vec![
        config_entry(1, 1, &[1, 2, 3]),
        Entry {
            index: 2,
            epoch: 1,
            origin: None,
            command: Command::Config(removal),
        },
    ];
    let mut m = Member::with_log(1, entries);
    m.connect(2);
    m.connect(3);
    m.lead(vec![1, 3]);
    let proposal = |node: NodeId| crate::codec::Forward {
        epoch: 1,
        proposals: vec![crate::core::log::Proposal {
            id: crate::core::log::ProposalId {
                node,
                incarnation: 1,
                seq: 1,
            },
            command: Command::NodeBoot { node },
        }],
    };
    let last = m.node.stats().last_index;
    m.frame(2, PeerFrame::Forward(proposal(2)));
    assert_eq!(m.node.stats().last_index, last);
    m.frame(3, PeerFrame::Forward(proposal(3)));
    assert_eq!(m.node.stats().last_index, last + 1);
}

#[test]
fn after_a_leader_that_never_showed_it_leads_the_election_order_is_drawn() {
    // The ring order would give the next election to the same node every time; after a
    // leader that led (it sent an Append) the successor of the lost leader still goes first.
    let mut m = Member::new(3, &[1, 2, 3, 4, 5]);
    let hb = m.node.config().heartbeat_interval;
    let mut ranks = std::collections::BTreeSet::new();
    for confirmed in [true, false] {
        for _ in 0..200 {
            m.node.leader = Some(1);
            m.node.leader_confirmed = confirmed;
            let rank = (m.node.election_delay().as_micros() / hb.as_micros()) as u32;
            if confirmed {
                assert_eq!(rank, 1, "node 3 is the second after node 1");
            } else {
                ranks.insert(rank);
            }
        }
    }
    assert_eq!(ranks.len(), 5, "{ranks:?}");
}

#[test]
fn a_leader_holds_a_round_for_its_active_writers_and_sends_it_when_they_wrote_or_at_the_linger() {
    let mut m = Member::new(1, &[1, 2, 3]);
    for p in [2, 3] {
        m.connect(p);
    }
    m.lead(vec![1, 2, 3]);
    let linger = m.node.config().replication_linger;
    assert!(!linger.is_zero(), "on by default");
    let mut seq = 0;
    // Node `from` forwards one message of each of `conns`.
    let mut forward = |m: &mut Member, from: NodeId, conns: &[u64]| {
        let proposals = conns
            .iter()
            .map(|&c| {
                seq += 1;
                crate::core::log::Proposal {
                    id: crate::core::log::ProposalId {
                        node: from,
                        incarnation: 1,
                        seq,
                    },
                    command: Command::Say {
                        session: SessionId {
                            node: from,
                            incarnation: 1,
                            conn: ConnId(c),
                        },
                        room: "g".into(),
                        client_seq: seq,
                        text: "hi".into(),
                        time_ms: 5,
                    },
                }
            })
            .collect();
        m.sent.clear();
        m.frame(
            from,
            PeerFrame::Forward(Forward {
                epoch: 1,
                proposals,
            }),
        );
    };
    // Entries carried to node 3 by what the leader sent since the last forward.
    let carried = |m: &Member| -> usize {
        m.sent
            .iter()
            .filter_map(|(to, f)| match f {
                PeerFrame::Append(a) if *to == 3 => Some(a.entries.len()),
                _ => None,
            })
            .sum()
    };
    let ack_all = |m: &mut Member| {
        let last = m.node.stats().last_index;
        m.ack_from(2, last);
        m.ack_from(3, last);
    };
    ack_all(&mut m);
    // No writer was active: the first rounds go at once.
    forward(&mut m, 2, &[1]);
    assert_eq!(carried(&m), 1);
    forward(&mut m, 3, &[2]);
    assert_eq!(carried(&m), 1);
    let round = m.node.stats().last_index;
    // Writer 1 of node 2 and writer 2 of node 3 are active: writer 1 alone is held...
    forward(&mut m, 2, &[1]);
    assert_eq!(carried(&m), 0, "{:?}", m.sent);
    assert!(m
        .node
        .poll_timeout()
        .is_some_and(|t| t <= m.now.mono + linger));
    // ...but not the commit of the round before, which node 3 hears of at once.
    m.sent.clear();
    m.ack_from(2, round);
    assert_eq!(m.node.stats().committed, round);
    let notice = m.sent.iter().any(|(to, f)| {
        matches!(f, PeerFrame::Append(a) if *to == 3 && a.entries.is_empty() && a.commit == round)
    });
    assert!(notice, "{:?}", m.sent);
    m.ack_from(3, round);
    // Writer 2 writes too: the round is complete and goes at once, both messages in it.
    forward(&mut m, 3, &[2]);
    assert_eq!(carried(&m), 2);
    ack_all(&mut m);
    // Writer 2 falls silent: writer 1's round goes when the linger ends.
    forward(&mut m, 2, &[1]);
    assert_eq!(carried(&m), 0);
    m.sent.clear();
    m.advance(linger);
    assert_eq!(carried(&m), 1, "{:?}", m.sent);
}

#[test]
fn a_follower_forwards_a_round_once_its_active_writers_wrote_or_at_the_linger_and_holds_only_while_rounds_complete(
) {
    let mut f = Member::new(2, &[1, 2, 3]);
    f.connect(1);
    f.frame(1, append_of(1, (1, 1), 1, 1, vec![]));
    let linger = f.node.config().replication_linger;
    let now = f.now;
    for c in 1..=3 {
        f.node.handle_connect(now, ConnId(c));
        let hello = Hello {
            user: format!("u{c}"),
            client_id: c,
        };
        f.node
            .handle_frame(now, ConnId(c), ClientFrame::Hello(hello));
    }
    let mut seq = 0;
    // Clients `conns` say one message each; returns the proposals of each Forward sent.
    let mut say = |f: &mut Member, conns: &[u64]| -> Vec<usize> {
        let now = f.now;
        for &c in conns {
            seq += 1;
            let say = Say {
                room: "g".into(),
                client_seq: seq,
                text: "hi".into(),
            };
            f.node.handle_frame(now, ConnId(c), ClientFrame::Say(say));
        }
        f.sent.clear();
        f.step();
        forwards(f)
    };
    fn forwards(f: &Member) -> Vec<usize> {
        f.sent
            .iter()
            .filter_map(|(to, fr)| match fr {
                PeerFrame::Forward(fw) if *to == 1 => Some(fw.proposals.len()),
                _ => None,
            })
            .collect()
    }
    // Nobody wrote yet: the sessions and the first messages go at once.
    assert_eq!(say(&mut f, &[]), vec![3]);
    assert_eq!(say(&mut f, &[1, 2]), vec![2]);
    // Writers 1 and 2 are active: what 1 and 3 say waits for 2, at most the linger.
    assert_eq!(say(&mut f, &[1]), Vec::<usize>::new());
    assert_eq!(say(&mut f, &[3]), Vec::<usize>::new());
    assert!(f
        .node
        .poll_timeout()
        .is_some_and(|t| t <= f.now.mono + linger));
    assert_eq!(
        say(&mut f, &[2]),
        vec![3],
        "one Forward for the whole round"
    );
    // Writer 3 falls silent: a round without it goes when the linger ends.
    assert_eq!(say(&mut f, &[1, 2]), Vec::<usize>::new());
    f.sent.clear();
    f.advance(linger);
    assert_eq!(forwards(&f), vec![2]);
    // Its writers do not answer each round: the next two rounds go at once, then it tries again
    // (writer 3 is no longer active by then).
    f.now.mono += linger / 2;
    assert_eq!(say(&mut f, &[1]), vec![1]);
    assert_eq!(say(&mut f, &[2]), vec![1]);
    assert_eq!(say(&mut f, &[1]), Vec::<usize>::new());
    assert_eq!(say(&mut f, &[2]), vec![2]);
    // Without a link to the leader nothing is due: no busy loop on an expired linger.
    assert_eq!(say(&mut f, &[1]), Vec::<usize>::new());
    f.node.handle_peer_disconnected(f.now, 1);
    f.advance(linger);
    assert!(f.node.poll_timeout().is_some_and(|t| t > f.now.mono));
}

// ----- commit by a follower of three on the leader's word that entries are durable -----

fn noop(index: LogIndex, epoch: u64) -> Entry {
    Entry {
        index,
        epoch,
        origin: None,
        command: Command::Noop,
    }
}

/// An Append of the leader of epoch 2.
fn append2(
    prev: (LogIndex, u64),
    commit: LogIndex,
    durable: LogIndex,
    entries: Vec<Entry>,
) -> PeerFrame {
    append_of(2, prev, commit, durable, entries)
}

/// An Append of the leader of `epoch`.
fn append_of(
    epoch: u64,
    prev: (LogIndex, u64),
    commit: LogIndex,
    durable: LogIndex,
    entries: Vec<Entry>,
) -> PeerFrame {
    PeerFrame::Append(crate::codec::Append {
        epoch,
        prev_index: prev.0,
        prev_epoch: prev.1,
        commit,
        durable,
        entries,
    })
}

#[test]
fn a_follower_of_three_commits_what_it_and_the_leader_hold_durably_without_a_commit_notice() {
    let mut f = Member::new(2, &[1, 2, 3]);
    f.connect(1);
    // Stored here, but the leader does not hold them durably yet: not committed.
    f.frame(1, append2((1, 1), 1, 1, vec![noop(2, 2), noop(3, 2)]));
    assert_eq!(f.node.stats().committed, 1);
    // The leader's word that entry 2 is durable there: the two of them are a majority.
    f.frame(1, append2((3, 2), 1, 2, vec![]));
    assert_eq!(f.node.stats().committed, 2);
    // Its word counts only for what matched: entry 4 is not covered by a durable index sent
    // with an Append that ended at 3.
    f.frame(1, append2((3, 2), 1, 9, vec![]));
    assert_eq!(f.node.stats().committed, 3);
    f.frame(1, append2((3, 2), 1, 0, vec![noop(4, 2)]));
    assert_eq!(f.node.stats().committed, 3);
    // Not before its own copy is durable.
    let now = f.now;
    f.node
        .handle_peer_frame(now, 1, append2((4, 2), 1, 5, vec![noop(5, 2)]));
    assert_eq!(f.node.stats().committed, 4, "5 is not durable here yet");
    f.step();
    assert_eq!(f.node.stats().committed, 5);
}

#[test]
fn a_follower_does_not_commit_on_the_leaders_word_beyond_three_nodes_or_before_its_epoch() {
    // Five members: the follower and the leader are no majority.
    let mut f = Member::new(2, &[1, 2, 3, 4, 5]);
    f.connect(1);
    f.frame(1, append2((1, 1), 1, 2, vec![noop(2, 2)]));
    assert_eq!(f.node.stats().committed, 1);
    // An entry of an earlier epoch commits only under one of the leader's (Raft's rule).
    let mut f = Member::with_log(2, vec![config_entry(1, 1, &[1, 2, 3]), noop(2, 1)]);
    f.connect(1);
    f.frame(1, append2((2, 1), 1, 2, vec![]));
    assert_eq!(f.node.stats().committed, 1);
    f.frame(1, append2((2, 1), 1, 3, vec![noop(3, 2)]));
    assert_eq!(f.node.stats().committed, 3);
}

#[test]
fn the_word_of_an_earlier_leader_does_not_commit_what_a_later_one_sent() {
    let mut f = Member::new(2, &[1, 2, 3]);
    f.connect(1);
    f.connect(4);
    // Node 4, no member here, leads epoch 2: its word commits nothing (no pair with it).
    let old = (2..=5).map(|i| noop(i, 2)).collect();
    f.frame(4, append_of(2, (1, 1), 1, 5, old));
    assert_eq!(f.node.stats().committed, 1);
    // Node 1 leads epoch 3 and replaces entry 4 on; it has not said entry 4 is durable.
    f.frame(1, append_of(3, (3, 2), 1, 0, vec![noop(4, 3)]));
    assert_eq!(f.node.stats().last_index, 4);
    assert_eq!(
        f.node.stats().committed,
        1,
        "epoch 2's word is not epoch 3's"
    );
    f.frame(1, append_of(3, (4, 3), 1, 4, vec![]));
    assert_eq!(f.node.stats().committed, 4);
}

#[test]
fn a_leader_that_sends_before_its_sync_claims_only_what_is_durable() {
    let mut m = Member::new(1, &[1, 2, 3]);
    assert!(
        !m.node.cfg.replicate_after_persist,
        "the disk's way by default"
    );
    for p in [2, 3] {
        m.connect(p);
    }
    m.lead(vec![1, 2, 3]);
    let last = m.node.stats().last_index;
    for p in [2, 3] {
        m.ack_from(p, last);
    }
    m.sent.clear();
    let forward = Forward {
        epoch: 1,
        proposals: vec![crate::core::log::Proposal {
            id: crate::core::log::ProposalId {
                node: 2,
                incarnation: 1,
                seq: 1,
            },
            command: Command::Noop,
        }],
    };
    m.frame(2, PeerFrame::Forward(forward));
    let durable: Vec<LogIndex> = m
        .sent
        .iter()
        .filter_map(|(_, f)| match f {
            PeerFrame::Append(a) if !a.entries.is_empty() => Some(a.durable),
            _ => None,
        })
        .collect();
    assert_eq!(
        durable,
        vec![last, last],
        "sent before the sync of {}",
        last + 1
    );
    // Once synced, each follower (a majority with this leader) hears at once that the entry
    // is durable here, without entries and before any commit: it commits on its own.
    let notices: Vec<(NodeId, LogIndex, LogIndex)> = m
        .sent
        .iter()
        .filter_map(|(to, f)| match f {
            PeerFrame::Append(a) if a.entries.is_empty() => Some((*to, a.durable, a.commit)),
            _ => None,
        })
        .collect();
    assert_eq!(notices, vec![(2, last + 1, last), (3, last + 1, last)]);
}

#[test]
fn a_leader_replicating_after_its_sync_says_so_and_spares_commit_notices_in_a_cluster_of_three() {
    for members in [vec![1, 2, 3], vec![1, 2, 3, 4, 5]] {
        let mut m = Member::new(1, &members);
        m.node.cfg.replicate_after_persist = true;
        for &p in &members[1..] {
            m.connect(p);
        }
        m.lead(members.clone());
        let last = m.node.stats().last_index;
        for &p in &members[1..] {
            m.ack_from(p, last);
        }
        m.sent.clear();
        // A forwarded proposal: its Append waits for the leader's own sync.
        let proposal = crate::core::log::Proposal {
            id: crate::core::log::ProposalId {
                node: 2,
                incarnation: 1,
                seq: 1,
            },
            command: Command::Noop,
        };
        let forward = Forward {
            epoch: 1,
            proposals: vec![proposal],
        };
        let now = m.now;
        m.node
            .handle_peer_frame(now, 2, PeerFrame::Forward(forward));
        let ready = m.node.turn(now, false);
        assert!(ready.actions.is_empty(), "nothing leaves before the sync");
        m.step();
        let index = last + 1;
        for &p in &members[1..] {
            let carried = m.sent.iter().any(|(to, f)| {
                matches!(f, PeerFrame::Append(a) if *to == p && a.durable == index && a.entries.len() == 1)
            });
            assert!(carried, "{:?}", m.sent);
        }
        // The majority stores it: who needs a commit notice?
        m.sent.clear();
        let majority = &members[1..members.len() / 2 + 1];
        for &p in majority {
            m.ack_from(p, index);
        }
        assert_eq!(m.node.stats().committed, index);
        let noticed: Vec<NodeId> = m
            .sent
            .iter()
            .filter_map(|(to, f)| match f {
                PeerFrame::Append(a) if a.entries.is_empty() && a.commit == index => Some(*to),
                _ => None,
            })
            .collect();
        if members.len() == 3 {
            // Node 2 committed on its own; node 3 may not have stored the entry yet.
            assert_eq!(noticed, vec![3]);
        } else {
            assert_eq!(noticed, members[1..].to_vec());
        }
    }
}

// ----- membership and election liveness -----

#[test]
fn a_leader_adds_a_learner_only_once_its_heartbeat_says_it_takes_part_in_elections() {
    let mut m = Member::new(1, &[1, 2, 3]);
    for p in [2, 3] {
        m.connect(p);
    }
    m.lead(vec![1, 2, 3]);
    let last = m.node.stats().last_index;
    m.ack_from(2, last);
    m.ack_from(3, last);
    let req = crate::codec::JoinRequest {
        cluster_id: m.node.cfg.cluster_id,
        node_id: 4,
        peer_addr: "127.0.0.1:7174".into(),
        client_addr: String::new(),
    };
    assert!(m.node.handle_join(m.now.mono, req).ok);
    m.connect(4);
    let added = |m: &Member| m.node.configs().current().has(4);
    let last = m.node.stats().last_index;
    m.ack_from(4, last);
    assert!(
        !added(&m),
        "caught up, but not known to take part in elections yet"
    );
    // Still catching up since it started without state: adding it now would make a majority
    // that counts on a node that cannot vote.
    m.heartbeat_from(4, false);
    assert!(!added(&m));
    m.heartbeat_from(4, true);
    assert!(added(&m));
}

#[test]
fn a_token_that_comes_home_without_a_live_member_is_sent_to_it_once() {
    let mut m = Member::new(1, &[1, 2, 3]);
    for p in [2, 3] {
        m.connect(p);
        m.heartbeat_from(p, true);
    }
    m.node.start_election(m.now);
    m.step();
    let token = m
        .sent
        .iter()
        .find_map(|(to, f)| match f {
            PeerFrame::Token(t) if *to == 2 => Some(t.clone()),
            _ => None,
        })
        .expect("the pre-election token goes to node 2");
    assert!(token.pre);
    // It comes home from a node that did not know node 3 (a stale guest, say).
    let mut home = token.clone();
    home.participants.push(2);
    let tokens_to = |m: &Member, to: NodeId| {
        m.sent
            .iter()
            .filter(|(t, f)| *t == to && matches!(f, PeerFrame::Token(_)))
            .count()
    };
    m.sent.clear();
    m.frame(2, PeerFrame::Token(home.clone()));
    assert_eq!(tokens_to(&m, 3), 1, "{:?}", m.sent);
    // Node 3 declines and sends it home: not again to node 3; the pre-election is counted
    // (2 of 3 take part) and the real election starts.
    m.sent.clear();
    m.frame(3, PeerFrame::Token(home));
    assert_eq!(tokens_to(&m, 3), 0, "{:?}", m.sent);
    let real = m
        .sent
        .iter()
        .any(|(_, f)| matches!(f, PeerFrame::Token(t) if !t.pre && t.epoch == token.epoch));
    assert!(real, "{:?}", m.sent);
}

#[test]
fn a_follower_still_gets_a_commit_notice_while_it_may_hold_an_older_configuration() {
    let all = [1, 2, 3, 4];
    let mut l = Member::new(1, &all);
    l.node.cfg.replicate_after_persist = true;
    let mut f = Member::new(2, &all);
    for p in [2, 3] {
        l.connect(p);
    }
    f.connect(1);
    l.lead(vec![1, 2, 3]);
    // Carries what the leader sent node 2 there, and node 2's answers back.
    fn route(l: &mut Member, f: &mut Member) {
        for _ in 0..5 {
            let to_f: Vec<PeerFrame> = l
                .sent
                .drain(..)
                .filter(|(to, _)| *to == 2)
                .map(|(_, fr)| fr)
                .collect();
            for fr in to_f {
                f.frame(1, fr);
            }
            let to_l: Vec<PeerFrame> = f
                .sent
                .drain(..)
                .filter(|(to, _)| *to == 1)
                .map(|(_, fr)| fr)
                .collect();
            for fr in to_l {
                l.frame(2, fr);
            }
        }
    }
    route(&mut l, &mut f);
    let last = l.node.stats().last_index;
    l.ack_from(3, last);
    route(&mut l, &mut f);
    // Removing node 4 leaves three members: the leader and node 2 are a pair of its newest
    // configuration, but node 2 also checks the four-member one it has not applied yet.
    let now = l.now.mono;
    assert!(l.node.request_remove(now, 4).ok);
    l.step();
    let change = l.node.stats().last_index;
    route(&mut l, &mut f);
    assert_eq!(l.node.stats().committed, change);
    assert_eq!(
        f.node.stats().committed,
        change,
        "node 2 must be told, not left to the next heartbeat"
    );
}

#[test]
fn a_peer_link_silent_past_the_limit_is_reset_once_and_one_that_talks_is_kept() {
    let mut m = Member::new(1, &[1, 2, 3]);
    m.connect(2);
    m.connect(3);
    let limit = m.node.cfg.link_silence_limit();
    let tick = m.node.cfg.heartbeat_interval;
    let mut waited = Duration::ZERO;
    while waited < limit + tick {
        m.heartbeat_from(2, true);
        m.advance(tick);
        waited += tick;
    }
    assert_eq!(m.resets, vec![3], "only the silent link, once");
    assert!(!m.linked(3) && m.linked(2));
    m.advance(limit);
    assert_eq!(m.resets, vec![3, 2], "node 2 went silent too");
    // A fresh link counts as heard from when it comes up.
    m.connect(3);
    m.advance(tick);
    assert!(m.linked(3));
    assert_eq!(m.resets.len(), 2);

    let mut quiet = Member::new(1, &[1, 2, 3]);
    quiet.node.cfg.reset_silent_links = false;
    quiet.connect(2);
    quiet.advance(limit * 3);
    assert!(
        quiet.resets.is_empty() && quiet.linked(2),
        "the rule can be turned off"
    );
}

#[test]
fn a_node_without_a_leader_past_the_limit_sends_its_clients_elsewhere_until_it_has_one() {
    let mut m = Member::new(1, &[1, 2, 3]);
    let hello = |m: &mut Member, conn: u64| {
        m.node.handle_connect(m.now, ConnId(conn));
        let h = Hello {
            user: format!("user{conn}"),
            client_id: conn,
        };
        m.node
            .handle_frame(m.now, ConnId(conn), ClientFrame::Hello(h));
        m.step();
    };
    let no_leader = |m: &Member, conn: u64| {
        m.to_clients.iter().any(|(c, f)| {
            *c == ConnId(conn)
                && matches!(f, ServerFrame::Error(e) if e.code == ErrorCode::NoLeader as u16)
        }) && m.closed.contains(&ConnId(conn))
    };
    hello(&mut m, 7);
    let limit = m.node.cfg.leaderless_limit();
    let tick = m.node.cfg.heartbeat_interval;
    let mut waited = Duration::ZERO;
    while waited + tick < limit {
        m.advance(tick);
        waited += tick;
    }
    assert!(m.closed.is_empty(), "within the limit the client waits");
    m.advance(tick * 2);
    assert!(no_leader(&m, 7), "told and closed: {:?}", m.to_clients);
    hello(&mut m, 8);
    assert!(no_leader(&m, 8), "a new client is sent away too");
    // Once it leads (or follows), new clients are taken again.
    m.connect(2);
    m.lead(vec![1, 2]);
    m.advance(tick);
    hello(&mut m, 9);
    assert!(!no_leader(&m, 9));
    assert!(!m.closed.contains(&ConnId(9)));
}
