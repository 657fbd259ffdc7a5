//! Chat behaviour of one real `ringchatd` process, driven through the client library.

mod support;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use ringchat::codec::ErrorCode;
use support::{client, collect_messages, Daemon};

#[test]
fn after_25_messages_a_joiner_sees_exactly_the_last_10_in_order() {
    let d = Daemon::start(&[]);
    let mut alice = client(&d, "alice").unwrap();
    alice.join("general").unwrap();
    for i in 1..=25 {
        alice.send("general", &format!("message {i}")).unwrap();
    }
    alice.flush().unwrap();
    let mut bob = client(&d, "bob").unwrap();
    let joined = bob.join("general").unwrap();
    let got: Vec<(u64, String)> = joined
        .history
        .iter()
        .map(|m| (m.seq, m.text.clone()))
        .collect();
    let want: Vec<(u64, String)> = (16..=25).map(|i| (i, format!("message {i}"))).collect();
    assert_eq!(got, want);
    assert_eq!(joined.last_seq, 25);
    assert!(joined.history.iter().all(|m| m.author == "alice"));
    // Live traffic follows the history.
    alice.say("general", "live").unwrap();
    let live = collect_messages(&mut bob, 1, Duration::from_secs(5));
    assert_eq!((live[0].seq, live[0].text.as_str()), (26, "live"));
    // History paging reaches further back than the join replay.
    let page = bob.history("general", Some(16), 5).unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert!(page.more);
}

#[test]
fn a_third_device_is_refused_while_two_are_connected_and_accepted_after_one_leaves() {
    let d = Daemon::start(&[]);
    let first = client(&d, "carol").unwrap();
    let _second = client(&d, "carol").unwrap();
    let err = client(&d, "carol").err().expect("third device accepted");
    assert_eq!(err.code(), Some(ErrorCode::DeviceLimit), "{err}");
    assert!(
        err.to_string().contains("2 devices"),
        "unclear message: {err}"
    );
    drop(first);
    // The slot frees once the server has seen the disconnect; bounded retry.
    let mut third = None;
    assert!(support::eventually(Duration::from_secs(5), || {
        third = client(&d, "carol").ok();
        third.is_some()
    }));
    // Other users are not affected by carol's limit.
    client(&d, "dave").unwrap();
}

#[test]
fn invalid_names_are_refused_with_a_clear_error() {
    let d = Daemon::start(&[]);
    let err = client(&d, "no spaces")
        .err()
        .expect("bad username accepted");
    assert_eq!(err.code(), Some(ErrorCode::InvalidUser), "{err}");
    let mut c = client(&d, "erin").unwrap();
    let err = c.join("bad/room").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRoom), "{err}");
    // The connection survives a refused request.
    c.join("fine").unwrap();
    c.say("fine", "still here").unwrap();
}

#[test]
fn twenty_concurrent_senders_every_member_sees_the_same_order_without_gaps_or_duplicates() {
    const SENDERS: usize = 20;
    const EACH: usize = 25;
    let d = Daemon::start(&[]);
    let barrier = Arc::new(Barrier::new(SENDERS));
    let handles: Vec<_> = (0..SENDERS)
        .map(|i| {
            let addr = d.addr.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut cfg = ringchat::client::ClientConfig::new(vec![addr], format!("user{i}"));
                cfg.reconnect = false;
                let mut c = ringchat::client::Client::connect(cfg).unwrap();
                c.join("busy").unwrap();
                barrier.wait();
                for n in 0..EACH {
                    c.send("busy", &format!("{i}:{n}")).unwrap();
                }
                let seen = collect_messages(&mut c, SENDERS * EACH, Duration::from_secs(30));
                c.flush().unwrap();
                let dropped = c.session().duplicates_dropped();
                (seen, dropped)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let reference: Vec<(u64, String, String)> = results[0]
        .0
        .iter()
        .map(|m| (m.seq, m.author.clone(), m.text.clone()))
        .collect();
    assert_eq!(reference.len(), SENDERS * EACH);
    let seqs: Vec<u64> = reference.iter().map(|r| r.0).collect();
    assert_eq!(
        seqs,
        (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>(),
        "gaps or disorder"
    );
    for (i, (seen, dropped)) in results.iter().enumerate() {
        let mine: Vec<(u64, String, String)> = seen
            .iter()
            .map(|m| (m.seq, m.author.clone(), m.text.clone()))
            .collect();
        assert_eq!(&mine, &reference, "member {i} saw a different sequence");
        assert_eq!(*dropped, 0, "member {i} received duplicates");
    }
    // Each sender's own messages are in its sending order.
    for i in 0..SENDERS {
        let own: Vec<&String> = reference
            .iter()
            .filter(|r| r.1 == format!("user{i}"))
            .map(|r| &r.2)
            .collect();
        let want: Vec<String> = (0..EACH).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(own, want.iter().collect::<Vec<_>>());
    }
}

#[test]
fn the_authors_other_device_receives_the_message_and_notices_announce_presence() {
    let d = Daemon::start(&[]);
    let mut phone = client(&d, "frank").unwrap();
    let mut laptop = client(&d, "frank").unwrap();
    phone.join("g").unwrap();
    laptop.join("g").unwrap();
    let mut grace = client(&d, "grace").unwrap();
    grace.join("g").unwrap();
    let ack = phone.say("g", "from phone").unwrap();
    let m = collect_messages(&mut laptop, 1, Duration::from_secs(5));
    assert_eq!(
        (m[0].seq, m[0].author.as_str(), m[0].text.as_str()),
        (ack.seq, "frank", "from phone")
    );
    let m = collect_messages(&mut phone, 1, Duration::from_secs(5));
    assert_eq!(
        m[0].seq, ack.seq,
        "the author's own device gets its message too"
    );
    assert_eq!(
        grace.who("g").unwrap(),
        vec!["frank".to_string(), "grace".to_string()]
    );
    drop(grace);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = false;
    while !left && std::time::Instant::now() < deadline {
        if let Ok(Some(ringchat::client::Event::Notice(n))) =
            phone.next_event(Duration::from_millis(100))
        {
            left = n.user == "grace" && n.event == ringchat::codec::NoticeEvent::Left;
        }
    }
    assert!(left, "no leave notice for grace");
}
