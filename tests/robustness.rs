//! Bad input costs the offender its connection, never the node and never anyone else's data
//! (DESIGN invariant 6), plus the daemon's lifecycle: connection limit and graceful stop.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use ringchat::codec::{self, ClientFrame, ErrorCode, Header, ServerFrame, HEADER_LEN};
use support::{client, collect_messages, raw, read_until_closed, Daemon};

/// Two clients chatting; returns after checking a message goes through.
fn chat_works(d: &Daemon, tag: &str) {
    let mut a = client(d, &format!("a{tag}")).unwrap();
    let mut b = client(d, &format!("b{tag}")).unwrap();
    a.join("room").unwrap();
    b.join("room").unwrap();
    let ack = a.say("room", &format!("still chatting {tag}")).unwrap();
    let got = collect_messages(&mut b, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "message lost after bad input");
    assert_eq!(got[0].seq, ack.seq);
}

fn error_codes(frames: &[ServerFrame]) -> Vec<u16> {
    frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Error(e) = f {
                Some(e.code)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn a_malformed_frame_costs_only_its_own_connection() {
    let d = Daemon::start(&[]);
    let mut bystander = client(&d, "bystander").unwrap();
    bystander.join("room").unwrap();
    let mut bad = raw(&d.addr);
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (frames, closed) = read_until_closed(&mut bad, Duration::from_secs(5));
    assert!(closed, "server kept a connection that sent garbage");
    assert_eq!(error_codes(&frames), vec![ErrorCode::MalformedFrame as u16]);
    // A valid header with a corrupted payload (bad CRC) is rejected the same way.
    let mut hello = codec::encode(&ClientFrame::Hello(codec::Hello {
        user: "x".into(),
        client_id: 1,
    }))
    .unwrap();
    *hello.last_mut().unwrap() ^= 0x55;
    let mut bad = raw(&d.addr);
    bad.write_all(&hello).unwrap();
    let (frames, closed) = read_until_closed(&mut bad, Duration::from_secs(5));
    assert!(closed);
    assert_eq!(error_codes(&frames), vec![ErrorCode::MalformedFrame as u16]);
    chat_works(&d, "1");
    assert!(
        bystander.ping().is_ok(),
        "an established client was affected"
    );
}

#[test]
fn an_oversized_length_is_refused_before_any_payload_is_read() {
    let d = Daemon::start(&[]);
    let mut bad = raw(&d.addr);
    let mut h = [0u8; HEADER_LEN];
    Header {
        kind: 0x04,
        flags: 0,
        length: 1 << 30,
        crc: 0,
    }
    .emit(&mut h);
    // Only the header is sent: the server must not wait for a gigabyte.
    bad.write_all(&h).unwrap();
    let (frames, closed) = read_until_closed(&mut bad, Duration::from_secs(5));
    assert!(closed, "server waited for an oversized payload");
    assert_eq!(error_codes(&frames), vec![ErrorCode::FrameTooLarge as u16]);
    chat_works(&d, "2");
}

#[test]
fn a_client_that_never_reads_is_dropped_and_nobody_else_is_slowed() {
    let d = Daemon::start(&["--max-output-bytes", "65536"]);
    let mut sleeper = raw(&d.addr);
    let mut hello = codec::encode(&ClientFrame::Hello(codec::Hello {
        user: "sleeper".into(),
        client_id: 7,
    }))
    .unwrap();
    codec::encode_into(
        &ClientFrame::Join(codec::Join {
            room: "flood".into(),
            after_seq: None,
        }),
        &mut hello,
    )
    .unwrap();
    sleeper.write_all(&hello).unwrap();
    // The sleeper never reads. Two readers and a writer push ~8 MB through the room.
    let mut writer = client(&d, "writer").unwrap();
    let mut reader = client(&d, "reader").unwrap();
    writer.join("flood").unwrap();
    reader.join("flood").unwrap();
    let text = "x".repeat(4000);
    const N: usize = 2000;
    let started = Instant::now();
    let mut received = Vec::with_capacity(N);
    for i in 0..N {
        writer.send("flood", &text).unwrap();
        if i % 100 == 99 {
            writer.flush().unwrap();
            received.extend(collect_messages(
                &mut reader,
                i + 1 - received.len(),
                Duration::from_secs(10),
            ));
        }
    }
    writer.flush().unwrap();
    received.extend(collect_messages(
        &mut reader,
        N - received.len(),
        Duration::from_secs(10),
    ));
    assert_eq!(received.len(), N, "the reading client lost messages");
    assert!(received.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        support::eventually(Duration::from_secs(5), || d.log().contains("slow consumer")),
        "the daemon did not log why it dropped the sleeper:\n{}",
        d.log()
    );
    // Draining the sleeper's socket ends in EOF/reset: the server closed it.
    let (_, closed) = read_until_closed(&mut sleeper, Duration::from_secs(10));
    assert!(closed, "the non-reading client was never dropped");
    chat_works(&d, "3");
}

#[test]
fn the_connection_limit_refuses_with_a_clear_error() {
    let d = Daemon::start(&["--max-connections", "2"]);
    let _a = client(&d, "one").unwrap();
    let _b = client(&d, "two").unwrap();
    let mut third = raw(&d.addr);
    let (frames, closed) = read_until_closed(&mut third, Duration::from_secs(5));
    assert!(closed);
    assert_eq!(error_codes(&frames), vec![ErrorCode::ServerFull as u16]);
    drop(_a);
    assert!(support::eventually(Duration::from_secs(5), || client(
        &d, "four"
    )
    .is_ok()));
}

#[test]
fn sigterm_stops_the_daemon_gracefully_with_exit_code_0() {
    let mut d = Daemon::start(&[]);
    let mut c = client(&d, "henry").unwrap();
    c.join("g").unwrap();
    let started = Instant::now();
    d.terminate();
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("daemon did not stop within 5 s");
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client was told why (or saw the close), and nothing is listening any more.
    let told = (0..20).any(|_| match c.next_event(Duration::from_millis(100)) {
        Ok(Some(ringchat::client::Event::Error { code, .. })) => {
            code == ErrorCode::ShuttingDown as u16
        }
        Err(_) => true,
        _ => false,
    });
    assert!(told, "client never learned of the shutdown");
    assert!(
        std::net::TcpStream::connect(&d.addr).is_err(),
        "still accepting after SIGTERM"
    );
}
