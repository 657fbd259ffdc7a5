use super::*;
use crate::core::{ConnId, SessionId};

fn s(n: u64) -> SessionId {
    SessionId {
        node: 1,
        incarnation: 1,
        conn: ConnId(n),
    }
}

fn open(c: &mut ChatState, n: u64, user: &str) -> Outcome {
    c.apply(&Command::OpenSession {
        session: s(n),
        user: user.into(),
        client_id: 1000 + n,
    })
}

fn join(c: &mut ChatState, n: u64, room: &str) -> Outcome {
    c.apply(&Command::Join {
        session: s(n),
        room: room.into(),
        after_seq: None,
    })
}

fn say(c: &mut ChatState, n: u64, room: &str, client_seq: u64) -> Outcome {
    let text = format!("m{client_seq}");
    c.apply(&Command::Say {
        session: s(n),
        room: room.into(),
        client_seq,
        text: text.into(),
        time_ms: 5,
    })
}

#[test]
fn third_device_is_refused_until_one_leaves() {
    let mut c = ChatState::new(2, 10);
    assert!(matches!(
        open(&mut c, 1, "al"),
        Outcome::SessionOpened { .. }
    ));
    assert!(matches!(
        open(&mut c, 2, "al"),
        Outcome::SessionOpened { .. }
    ));
    assert_eq!(
        open(&mut c, 3, "al"),
        Outcome::SessionRefused {
            session: s(3),
            devices: 2
        }
    );
    assert!(matches!(
        open(&mut c, 4, "bo"),
        Outcome::SessionOpened { .. }
    ));
    c.apply(&Command::CloseSession { session: s(1) });
    assert!(matches!(
        open(&mut c, 5, "al"),
        Outcome::SessionOpened { .. }
    ));
    assert_eq!(c.session_count(), 3);
}

#[test]
fn same_device_reconnecting_takes_over_its_slot() {
    let mut c = ChatState::new(2, 10);
    open(&mut c, 1, "al");
    open(&mut c, 2, "al");
    join(&mut c, 1, "g");
    let again = Command::OpenSession {
        session: s(9),
        user: "al".into(),
        client_id: 1001,
    };
    match c.apply(&again) {
        Outcome::SessionOpened {
            session,
            replaced: Some((old, exits)),
        } => {
            assert_eq!((session, old), (s(9), s(1)));
            // Device 2 is still there, so "al" did not leave "g" as a user... but device 2
            // never joined "g": the user is gone from the room.
            assert_eq!(
                exits,
                vec![RoomExit {
                    room: "g".into(),
                    user: "al".into(),
                    user_gone: true
                }]
            );
        }
        other => panic!("expected a replacing open, got {other:?}"),
    }
    assert_eq!(c.session_count(), 2);
}

#[test]
fn messages_get_dense_sequence_numbers_and_join_replays_the_last_n() {
    let mut c = ChatState::new(2, 10);
    open(&mut c, 1, "al");
    join(&mut c, 1, "g");
    for i in 1..=25 {
        match say(&mut c, 1, "g", i) {
            Outcome::Said { message, .. } => assert_eq!(message.seq, i),
            other => panic!("{other:?}"),
        }
    }
    open(&mut c, 2, "bo");
    let Outcome::Joined {
        replay_after,
        user_arrived,
        ..
    } = join(&mut c, 2, "g")
    else {
        panic!()
    };
    assert!(user_arrived);
    let replay: Vec<u64> = c
        .messages_after("g", replay_after)
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(replay, (16..=25).collect::<Vec<_>>());
    assert_eq!(c.last_seq("g"), 25);
    let (page, more) = c.page("g", Some(16), 5);
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(more);
    let (page, more) = c.page("g", Some(3), 5);
    assert_eq!((page.len(), more), (2, false));
}

#[test]
fn resend_of_a_committed_message_is_a_duplicate_with_its_original_seq() {
    let mut c = ChatState::new(2, 10);
    open(&mut c, 1, "al");
    join(&mut c, 1, "g");
    say(&mut c, 1, "g", 7);
    say(&mut c, 1, "g", 8);
    assert_eq!(
        say(&mut c, 1, "g", 7),
        Outcome::Duplicate {
            session: s(1),
            room: "g".into(),
            client_seq: 7,
            seq: 1
        }
    );
    assert_eq!(c.last_seq("g"), 2);
    // The de-dup memory belongs to the client id, so it survives a resumed session.
    let again = Command::OpenSession {
        session: s(2),
        user: "al".into(),
        client_id: 1001,
    };
    c.apply(&again);
    join(&mut c, 2, "g");
    assert!(matches!(
        say(&mut c, 2, "g", 8),
        Outcome::Duplicate { seq: 2, .. }
    ));
}

#[test]
fn posting_outside_a_room_is_refused_and_stores_nothing() {
    let mut c = ChatState::new(2, 10);
    open(&mut c, 1, "al");
    assert!(matches!(say(&mut c, 1, "g", 1), Outcome::NotInRoom { .. }));
    assert_eq!(c.last_seq("g"), 0);
    // A command for a session that does not exist (closed or refused) is a no-op.
    assert_eq!(say(&mut c, 42, "g", 1), Outcome::Nothing);
    assert_eq!(join(&mut c, 42, "g"), Outcome::Nothing);
}

#[test]
fn presence_is_per_user_not_per_device() {
    let mut c = ChatState::new(2, 10);
    open(&mut c, 1, "al");
    open(&mut c, 2, "al");
    assert!(matches!(
        join(&mut c, 1, "g"),
        Outcome::Joined {
            user_arrived: true,
            ..
        }
    ));
    assert!(matches!(
        join(&mut c, 2, "g"),
        Outcome::Joined {
            user_arrived: false,
            ..
        }
    ));
    assert_eq!(c.member_names("g"), vec!["al".to_string()]);
    let left = c.apply(&Command::Leave {
        session: s(1),
        room: "g".into(),
    });
    assert!(matches!(
        left,
        Outcome::Left {
            exit: RoomExit {
                user_gone: false,
                ..
            },
            ..
        }
    ));
    let closed = c.apply(&Command::CloseSession { session: s(2) });
    let Outcome::SessionClosed { exits, .. } = closed else {
        panic!()
    };
    assert_eq!(
        exits,
        vec![RoomExit {
            room: "g".into(),
            user: "al".into(),
            user_gone: true
        }]
    );
    assert!(c.member_names("g").is_empty());
}

#[test]
fn same_commands_give_the_same_state() {
    let run = || {
        let mut c = ChatState::new(2, 3);
        let mut out = Vec::new();
        for n in 1..6 {
            out.push(open(&mut c, n, &format!("u{}", n % 3)));
            out.push(join(&mut c, n, "g"));
            out.push(say(&mut c, n, "g", n));
        }
        out.push(c.apply(&Command::CloseSession { session: s(2) }));
        (out, c.member_names("g"), c.messages_after("g", 0).to_vec())
    };
    assert_eq!(run(), run());
}

#[test]
fn a_lost_nodes_sessions_end_and_free_their_device_slots() {
    let mut c = ChatState::new(2, 10);
    let on = |node, conn| SessionId {
        node,
        incarnation: 1,
        conn: ConnId(conn),
    };
    let open_on = |c: &mut ChatState, s: SessionId, id| {
        c.apply(&Command::OpenSession {
            session: s,
            user: "al".into(),
            client_id: id,
        })
    };
    open_on(&mut c, on(2, 1), 1);
    open_on(&mut c, on(2, 2), 2);
    c.apply(&Command::Join {
        session: on(2, 1),
        room: "g".into(),
        after_seq: None,
    });
    assert!(matches!(
        open_on(&mut c, on(3, 1), 3),
        Outcome::SessionRefused { .. }
    ));
    let Outcome::NodeSessionsEnded { node, exits } = c.apply(&Command::NodeDown { node: 2 }) else {
        panic!("expected the node's sessions to end")
    };
    assert_eq!(node, 2);
    assert_eq!(exits.len(), 1);
    assert!(c.sessions_on(2).is_empty());
    assert!(matches!(
        open_on(&mut c, on(3, 1), 3),
        Outcome::SessionOpened { .. }
    ));
}

fn say_at(c: &mut ChatState, n: u64, client_seq: u64, time_ms: u64) -> Outcome {
    c.apply(&Command::Say {
        session: s(n),
        room: "g".into(),
        client_seq,
        text: format!("m{client_seq}").into(),
        time_ms,
    })
}

/// Users u1..un, each with one session (1..n) in room "g".
fn room_of(n: u64) -> ChatState {
    let mut c = ChatState::new(2, 10);
    for i in 1..=n {
        open(&mut c, i, &format!("u{i}"));
        join(&mut c, i, "g");
    }
    c
}

const HOUR: u64 = 3600 * 1000;
const T0: u64 = 1_700_000_000_000;

#[test]
fn dedup_records_outlive_a_session_for_the_retention_then_go() {
    let mut c = room_of(3);
    assert!(matches!(say_at(&mut c, 1, 1, T0), Outcome::Said { .. }));
    say_at(&mut c, 2, 1, T0);
    // Client 1 loses its session; client 2 keeps its own but says nothing more.
    c.apply(&Command::CloseSession { session: s(1) });
    say_at(&mut c, 3, 1, T0 + 23 * HOUR);
    assert_eq!(c.dedup_clients(), 3);
    // Client 1 resumes within the retention: its re-sent message is known.
    let resume = |c: &mut ChatState, conn| {
        c.apply(&Command::OpenSession {
            session: s(conn),
            user: "u1".into(),
            client_id: 1001,
        });
        join(c, conn, "g");
    };
    resume(&mut c, 21);
    assert!(matches!(
        say_at(&mut c, 21, 1, T0 + 23 * HOUR),
        Outcome::Duplicate { seq: 1, .. }
    ));
    c.apply(&Command::CloseSession { session: s(21) });
    // A retention after its last message, client 1's record is gone; client 2, still
    // connected, keeps its own however long it is silent.
    say_at(&mut c, 3, 2, T0 + 25 * HOUR);
    assert_eq!(c.dedup_clients(), 2);
    say_at(&mut c, 3, 3, T0 + 100 * HOUR);
    assert_eq!(c.dedup_clients(), 2);
    resume(&mut c, 22);
    assert!(matches!(
        say_at(&mut c, 22, 1, T0 + 100 * HOUR),
        Outcome::Said { .. }
    ));
}

#[test]
fn the_records_clock_never_goes_back_with_a_node_whose_clock_is_behind() {
    let mut c = room_of(2);
    say_at(&mut c, 1, 1, T0);
    say_at(&mut c, 2, 1, T0 + 30 * HOUR);
    // Client 1's last message is stamped by a node whose clock is 29 hours behind: it counts
    // as said at the newest time applied, not as long gone.
    say_at(&mut c, 1, 2, T0 + HOUR);
    c.apply(&Command::CloseSession { session: s(1) });
    say_at(&mut c, 2, 2, T0 + 31 * HOUR);
    assert_eq!(c.dedup_clients(), 2);
}

#[test]
fn records_decoded_without_times_start_their_retention_at_the_first_sweep() {
    let mut c = room_of(2);
    say_at(&mut c, 1, 1, T0);
    c.apply(&Command::CloseSession { session: s(1) });
    c.forget_activity();
    // Long after client 1 spoke, but the records' times were unknown until now.
    say_at(&mut c, 2, 1, T0 + 48 * HOUR);
    assert_eq!(c.dedup_clients(), 2);
    say_at(&mut c, 2, 2, T0 + 71 * HOUR);
    assert_eq!(c.dedup_clients(), 2);
    say_at(&mut c, 2, 3, T0 + 73 * HOUR);
    assert_eq!(c.dedup_clients(), 1);
}

#[test]
fn a_state_that_commands_cannot_make_fails_the_check_and_its_image_is_refused() {
    let consistent = || {
        let mut c = ChatState::new(2, 10);
        open(&mut c, 1, "alice");
        open(&mut c, 2, "bob");
        join(&mut c, 1, "g");
        join(&mut c, 2, "g");
        say(&mut c, 1, "g", 1);
        say(&mut c, 2, "g", 1);
        c
    };
    assert_eq!(consistent().check(), Ok(()));
    fn room(c: &mut ChatState) -> &mut Room {
        c.rooms.get_mut("g").unwrap()
    }
    type Break = fn(&mut ChatState);
    let breaks: [(&str, Break); 5] = [
        ("not in it", |c| room(c).members.push(s(9))),
        ("not in it", |c| {
            c.reg.sessions.get_mut(&s(2)).unwrap().rooms.clear();
        }),
        ("seq 3 at position 2", |c| room(c).messages[1].seq = 3),
        ("another", |c| {
            c.reg.by_client.insert(1001, s(2));
        }),
        ("not theirs", |c| {
            c.reg.devices.get_mut("alice").unwrap().push(s(2));
        }),
    ];
    for (why, break_it) in breaks {
        let mut c = consistent();
        break_it(&mut c);
        let err = c.check().unwrap_err();
        assert!(err.contains(why), "{err}");
        let image = crate::codec::encode_snapshot(&Default::default(), &c).unwrap();
        let err = crate::codec::decode_snapshot(&image)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inconsistent snapshot image"), "{err}");
        // Served anyway (a state from an older build, say), it answers without panicking.
        let _ = c.member_names("g");
        for n in 1..=3 {
            let _ = join(&mut c, n, "g");
            let _ = open(&mut c, n, "alice");
            let _ = c.apply(&Command::CloseSession { session: s(n) });
        }
    }
}
