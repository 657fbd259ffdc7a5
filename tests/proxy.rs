//! Self-test of the fault-injecting proxy the cluster tests rely on: it forwards both ways,
//! `cut` closes live connections and refuses new ones until `heal`, and `delay` holds bytes.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::proxy::Proxy;

/// An echo server on 127.0.0.1:0 (one thread per connection, ends with the test process).
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Sends `msg` and reads the echo; Err if the connection is closed or fails.
fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

fn is_closed(s: &mut TcpStream) -> bool {
    let _ = s.write_all(b"x");
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn the_proxy_forwards_cuts_heals_and_delays() {
    let p = Proxy::start(&echo_server());
    let mut a = connect(&p);
    assert_eq!(round_trip(&mut a, b"hello").unwrap(), b"hello");
    assert_eq!(p.open_connections(), 1);

    p.cut();
    assert!(is_closed(&mut a), "a live connection survived the cut");
    let mut b = connect(&p);
    assert!(is_closed(&mut b), "a new connection went through while cut");
    assert!(support::eventually(Duration::from_secs(2), || p
        .open_connections()
        == 0));

    p.heal();
    let mut c = connect(&p);
    assert_eq!(round_trip(&mut c, b"again").unwrap(), b"again");

    p.delay(100);
    let t = Instant::now();
    assert_eq!(round_trip(&mut c, b"slow").unwrap(), b"slow");
    let rtt = t.elapsed();
    assert!(
        rtt >= Duration::from_millis(200),
        "delay not applied both ways: {rtt:?}"
    );
    assert!(rtt < Duration::from_secs(2), "{rtt:?}");
    p.delay(0);
    let t = Instant::now();
    assert_eq!(round_trip(&mut c, b"fast").unwrap(), b"fast");
    assert!(t.elapsed() < Duration::from_millis(100));
}
