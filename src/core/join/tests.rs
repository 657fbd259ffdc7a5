use std::time::{Duration, Instant};

use super::*;

const VIA: &str = "10.0.0.1:7170";

fn request() -> JoinRequest {
    JoinRequest {
        cluster_id: 7,
        node_id: 4,
        peer_addr: "10.0.0.4:7170".into(),
        client_addr: "10.0.0.4:7070".into(),
    }
}

fn client(seed: u64) -> JoinClient {
    JoinClient::new(&request(), VIA.into(), JoinPolicy::default(), seed).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The one connection a turn opens: its attempt and address (and the bytes decode to the
/// request).
fn connect_of(ready: &JoinReady) -> (JoinAttempt, String) {
    let opened: Vec<_> = ready
        .actions
        .iter()
        .filter_map(|a| match a {
            JoinAction::Connect {
                attempt,
                addr,
                bytes,
            } => Some((*attempt, addr.clone(), bytes.clone())),
            JoinAction::Close { .. } => None,
        })
        .collect();
    let [(attempt, addr, bytes)] = &opened[..] else {
        panic!("expected one Connect, got {:?}", ready.actions);
    };
    let (frame, used) = codec::decode::<PeerFrame>(bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(frame, PeerFrame::Join(request()));
    (*attempt, addr.clone())
}

fn no_connect(ready: &JoinReady) -> bool {
    !ready
        .actions
        .iter()
        .any(|a| matches!(a, JoinAction::Connect { .. }))
}

fn refused(retry: bool, leader: Option<(NodeId, &str)>) -> JoinReply {
    JoinReply {
        ok: false,
        retry,
        message: "not now".into(),
        leader: leader.map(|(id, a)| (id, a.to_owned())),
    }
}

fn accepted(leader: NodeId, addr: &str) -> JoinReply {
    JoinReply {
        ok: true,
        retry: false,
        message: "catching up".into(),
        leader: Some((leader, addr.into())),
    }
}

/// Turns at `at` and returns the pause until the next Connect (which must not come sooner),
/// and that Connect.
fn pause_until_connect(c: &mut JoinClient, at: Instant) -> (Duration, JoinAttempt, String) {
    let ready = c.turn(at);
    assert!(no_connect(&ready), "{:?}", ready.actions);
    let due = ready.deadline.expect("a retry is due");
    assert!(no_connect(&c.turn(due - Duration::from_micros(1))));
    let (attempt, addr) = connect_of(&c.turn(due));
    (due - at, attempt, addr)
}

#[test]
fn idle_until_started_and_success_hands_back_the_leader() {
    let t0 = Instant::now();
    let mut c = client(1);
    assert_eq!(c.turn(t0), JoinReady::default());
    c.start(t0, None);
    assert!(c.is_active());
    let ready = c.turn(t0);
    let (a1, addr) = connect_of(&ready);
    assert_eq!(addr, VIA);
    assert_eq!(
        ready.deadline,
        Some(t0 + JoinPolicy::default().request_timeout)
    );

    c.handle_reply(t0 + ms(3), a1, accepted(2, "10.0.0.2:7170"));
    let ready = c.turn(t0 + ms(3));
    assert_eq!(ready.actions, vec![JoinAction::Close { attempt: a1 }]);
    assert_eq!(
        ready.outcome,
        Some(JoinOutcome::Accepted {
            leader: 2,
            addr: "10.0.0.2:7170".into()
        })
    );
    assert_eq!(ready.deadline, None);
    assert!(!c.is_active());
    // Said once, and nothing more happens until the node asks again.
    assert_eq!(c.turn(t0 + ms(10_000)), JoinReady::default());
    c.start(t0 + ms(10_000), None);
    assert_eq!(connect_of(&c.turn(t0 + ms(10_000))).1, VIA);
}

#[test]
fn follows_the_leader_pointer_at_once_and_goes_back_to_the_join_address_after_a_failure() {
    let t0 = Instant::now();
    let mut c = client(2);
    c.start(t0, None);
    let (a1, _) = connect_of(&c.turn(t0));
    c.handle_reply(t0 + ms(1), a1, refused(true, Some((3, "10.0.0.3:7170"))));
    let ready = c.turn(t0 + ms(1));
    assert_eq!(ready.actions[0], JoinAction::Close { attempt: a1 });
    let (a2, addr) = connect_of(&ready);
    assert_eq!(addr, "10.0.0.3:7170");
    assert_ne!(a1, a2);

    // The leader it was pointed to is gone: back to the --join address, after a pause.
    c.handle_failure(
        t0 + ms(2),
        a2,
        JoinFailure::Unreachable("connection refused".into()),
    );
    let (pause, _, addr) = pause_until_connect(&mut c, t0 + ms(2));
    assert_eq!(addr, VIA);
    assert!(pause >= ms(100) && pause <= ms(200), "{pause:?}");
}

#[test]
fn a_request_without_answer_times_out_and_retries_with_growing_capped_backoff() {
    let policy = JoinPolicy::default();
    let t0 = Instant::now();
    let mut c = client(3);
    c.start(t0, None);
    let (mut attempt, _) = connect_of(&c.turn(t0));
    let mut at = t0;
    let mut pauses = Vec::new();
    for _ in 0..8 {
        // No answer: nothing happens before the request timeout, then it is closed.
        let by = at + policy.request_timeout;
        assert_eq!(c.turn(by - Duration::from_micros(1)).actions, vec![]);
        let ready = c.turn(by);
        assert_eq!(ready.actions, vec![JoinAction::Close { attempt }]);
        let due = ready.deadline.unwrap();
        let (next, addr) = connect_of(&c.turn(due));
        assert_eq!(addr, VIA);
        assert!(next > attempt);
        pauses.push(due - by);
        (attempt, at) = (next, due);
    }
    for (i, p) in pauses.iter().enumerate() {
        let full = (policy.backoff_min * (1 << i)).min(policy.backoff_max);
        assert!(
            *p >= full / 2 && *p <= full,
            "pause {i}: {p:?} not in [{full:?}/2, {full:?}]"
        );
    }
    assert!(pauses[3] > pauses[0], "{pauses:?}");
}

#[test]
fn a_final_refusal_stops_and_a_stale_answer_changes_nothing() {
    let t0 = Instant::now();
    let mut c = client(4);
    c.start(t0, None);
    let (a1, _) = connect_of(&c.turn(t0));
    // The first request times out; its late answer must not count for the second.
    let due = c.turn(t0 + ms(2000)).deadline.unwrap();
    let (a2, _) = connect_of(&c.turn(due));
    c.handle_reply(due, a1, accepted(2, "10.0.0.2:7170"));
    assert_eq!(c.turn(due).outcome, None);
    assert!(c.is_active());

    c.handle_reply(due + ms(1), a2, refused(false, None));
    let ready = c.turn(due + ms(1));
    assert_eq!(ready.actions, vec![JoinAction::Close { attempt: a2 }]);
    match ready.outcome {
        Some(JoinOutcome::Refused(why)) => assert!(why.contains("not now"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!c.is_active());
    assert_eq!(ready.deadline, None);
    assert_eq!(c.turn(due + ms(60_000)), JoinReady::default());
}

#[test]
fn pointers_in_a_circle_are_followed_a_few_hops_then_wait_a_backoff() {
    let (a, b) = ("10.0.0.1:7170", "10.0.0.2:7170");
    let t0 = Instant::now();
    let mut c = client(5);
    c.start(t0, None);
    let (mut attempt, _) = connect_of(&c.turn(t0));
    let max_hops = JoinPolicy::default().max_hops;
    for hop in 0..max_hops {
        // Each member says the other leads.
        let pointer = if hop % 2 == 0 { (2, b) } else { (1, a) };
        c.handle_reply(t0, attempt, refused(true, Some(pointer)));
        let (next, addr) = connect_of(&c.turn(t0));
        assert_eq!(addr, pointer.1);
        attempt = next;
    }
    c.handle_reply(t0, attempt, refused(true, Some((1, a))));
    let (pause, _, addr) = pause_until_connect(&mut c, t0);
    assert!(pause >= ms(100), "{pause:?}");
    assert_eq!(addr, a, "still where the last pointer says");
}

#[test]
fn a_busy_leader_is_asked_again_after_a_pause_not_the_join_address() {
    let leader = "10.0.0.2:7170";
    let t0 = Instant::now();
    let mut c = client(6);
    c.start(t0, None);
    let (a1, _) = connect_of(&c.turn(t0));
    c.handle_reply(t0, a1, refused(true, Some((2, leader))));
    let (a2, _) = connect_of(&c.turn(t0));
    // The leader answers with itself: another change is under way.
    c.handle_reply(t0 + ms(1), a2, refused(true, Some((2, leader))));
    let (pause, _, addr) = pause_until_connect(&mut c, t0 + ms(1));
    assert_eq!(addr, leader);
    assert!(pause >= ms(100), "{pause:?}");
    // Told no leader is known: the same member, later.
    let mut d = client(6);
    d.start(t0, None);
    let (a1, _) = connect_of(&d.turn(t0));
    d.handle_reply(t0, a1, refused(true, None));
    assert_eq!(pause_until_connect(&mut d, t0).2, VIA);
}

#[test]
fn accepted_without_a_leader_counts_as_a_failure() {
    let t0 = Instant::now();
    let mut c = client(7);
    c.start(t0, None);
    let (a1, _) = connect_of(&c.turn(t0));
    let mut reply = accepted(2, "x");
    reply.leader = None;
    c.handle_reply(t0, a1, reply);
    let (_, _, addr) = pause_until_connect(&mut c, t0);
    assert_eq!(addr, VIA);
}

#[test]
fn gives_up_at_the_limit_with_the_last_failure() {
    let t0 = Instant::now();
    let mut c = client(8);
    c.start(t0, Some(ms(3000)));
    let (a1, _) = connect_of(&c.turn(t0));
    c.handle_failure(t0, a1, JoinFailure::Closed("reset".into()));
    let mut at = t0;
    let outcome = loop {
        let ready = c.turn(at);
        if let Some(o) = ready.outcome {
            break o;
        }
        at = ready.deadline.expect("a deadline while active");
        assert!(at <= t0 + ms(3000));
    };
    assert_eq!(at, t0 + ms(3000));
    match outcome {
        JoinOutcome::GaveUp(why) => assert!(why.contains(VIA), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!c.is_active());
}

#[test]
fn the_jitter_comes_from_the_seed() {
    let pauses = |seed| {
        let t0 = Instant::now();
        let mut c = client(seed);
        c.start(t0, None);
        let mut out = Vec::new();
        let mut at = t0;
        for _ in 0..4 {
            let (attempt, _) = connect_of(&c.turn(at));
            c.handle_failure(at, attempt, JoinFailure::Unreachable("refused".into()));
            let due = c.turn(at).deadline.unwrap();
            out.push(due - at);
            at = due;
        }
        out
    };
    assert_eq!(pauses(11), pauses(11));
    assert_ne!(pauses(11), pauses(12));
}

#[test]
fn start_while_asking_keeps_the_request_out() {
    let t0 = Instant::now();
    let mut c = client(9);
    c.start(t0, None);
    let (a1, _) = connect_of(&c.turn(t0));
    c.start(t0 + ms(5), None);
    assert!(no_connect(&c.turn(t0 + ms(5))));
    c.handle_reply(t0 + ms(6), a1, accepted(1, VIA));
    assert!(c.turn(t0 + ms(6)).outcome.is_some());
}
