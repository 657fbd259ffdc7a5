//! Three real `ringchatd` processes on 127.0.0.1 forming a cluster over their peer links: one
//! leader is elected, a message said through one node reaches a member on another and is
//! acknowledged, every node ends with the same history, and `ringchat admin status` shows it.
//! Every wait is bounded; each test kills only the daemons it started (by PID, on drop).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use ringchat::client::admin;
use ringchat::codec::{ChatMessage, StatusReport};
use support::{client, collect_messages, eventually, free_ports, Daemon};

const CLUSTER_ID: &str = "77";

/// Starts nodes 1..=3 with `extra` flags each; returns them in id order.
fn start_cluster(extra: &[&str]) -> Vec<Daemon> {
    let ports = free_ports(3);
    (1..=3u32)
        .map(|id| {
            let peers: Vec<String> = (1..=3u32)
                .filter(|&p| p != id)
                .map(|p| format!("{p}=127.0.0.1:{}", ports[p as usize - 1]))
                .collect();
            let id_s = id.to_string();
            let listen = format!("127.0.0.1:{}", ports[id as usize - 1]);
            let peers = peers.join(",");
            let mut args = vec![
                "--id",
                &id_s,
                "--peer-listen",
                &listen,
                "--peers",
                &peers,
                "--cluster-id",
                CLUSTER_ID,
            ];
            args.extend_from_slice(extra);
            Daemon::start(&args)
        })
        .collect()
}

fn addrs(nodes: &[Daemon]) -> Vec<String> {
    nodes.iter().map(|d| d.addr.clone()).collect()
}

fn statuses(nodes: &[Daemon]) -> Vec<Result<StatusReport, String>> {
    admin::query_all(&addrs(nodes), Duration::from_secs(2))
}

/// Waits (bounded) until every node answers, exactly one is leader, and all follow it in the
/// same epoch; returns the leader's index in `nodes`.
fn wait_for_one_leader(nodes: &[Daemon], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = statuses(nodes);
        let ok: Vec<&StatusReport> = last.iter().filter_map(|r| r.as_ref().ok()).collect();
        let leaders: Vec<&&StatusReport> = ok.iter().filter(|r| r.role == "leader").collect();
        if ok.len() == nodes.len() && leaders.len() == 1 {
            let l = leaders[0];
            if ok
                .iter()
                .all(|r| r.leader == Some(l.node_id) && r.epoch == l.epoch)
            {
                return ok.iter().position(|r| r.node_id == l.node_id).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs: Vec<String> = nodes.iter().map(|d| d.log()).collect();
    panic!(
        "no single agreed leader within {limit:?}; last statuses: {last:#?}\nlogs:\n{}",
        logs.join("\n-----\n")
    );
}

fn key(m: &ChatMessage) -> (u64, String, String, u64) {
    (m.seq, m.author.clone(), m.text.clone(), m.time_ms)
}

#[test]
fn three_daemons_elect_one_leader_replicate_and_report_status() {
    let nodes = start_cluster(&["--heartbeat-ms", "20", "--failure-timeout-ms", "300"]);
    let leader = wait_for_one_leader(&nodes, Duration::from_secs(15));
    // The node started last may join after the election; the mesh links it within its dial
    // backoff (at most 1 s).
    let fully_linked = || {
        statuses(&nodes).iter().enumerate().all(|(i, r)| {
            r.as_ref().is_ok_and(|r| {
                r.node_id == i as u32 + 1
                    && r.peers.len() == 2
                    && r.peers.iter().all(|p| p.connected)
            })
        })
    };
    assert!(
        eventually(Duration::from_secs(5), fully_linked),
        "every node is linked to both peers: {:#?}",
        statuses(&nodes)
    );

    // Say through a follower (forwarded to the leader); a member on the other follower and
    // one on the leader receive it; the sender gets the ack.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (a, c) = (followers[0], followers[1]);
    let mut carol = client(&nodes[c], "carol").expect("carol connects");
    carol.join("lobby").expect("carol joins");
    let mut lea = client(&nodes[leader], "lea").expect("lea connects");
    lea.join("lobby").expect("lea joins");
    let mut alice = client(&nodes[a], "alice").expect("alice connects");
    alice.join("lobby").expect("alice joins");
    let mut acked = Vec::new();
    for i in 0..5 {
        let ack = alice
            .say("lobby", &format!("hello {i} from node {}", a + 1))
            .expect("acked");
        acked.push(ack.seq);
    }
    let ack = lea.say("lobby", "and one from the leader").expect("acked");
    acked.push(ack.seq);
    assert_eq!(
        acked,
        (1..=6).collect::<Vec<u64>>(),
        "room seqs 1..6 in order"
    );

    let got = collect_messages(&mut carol, 6, Duration::from_secs(10));
    let texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "hello 0 from node X",
            "hello 1 from node X",
            "hello 2 from node X",
            "hello 3 from node X",
            "hello 4 from node X",
            "and one from the leader"
        ]
        .map(|t| t.replace('X', &(a + 1).to_string())),
        "carol on node {} sees every message once, in order",
        c + 1
    );
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<u64>>()
    );
    let on_leader = collect_messages(&mut lea, 6, Duration::from_secs(10));
    assert_eq!(
        on_leader.iter().map(key).collect::<Vec<_>>(),
        got.iter().map(key).collect::<Vec<_>>(),
        "the leader's member saw the same messages"
    );

    // Every node applies everything: same applied index, then the same history everywhere.
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = statuses(&nodes);
            let applied: Vec<u64> = r
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|r| r.applied_index))
                .collect();
            applied.len() == 3
                && applied.iter().all(|&x| x == applied[0])
                && r.iter()
                    .all(|r| r.as_ref().is_ok_and(|r| r.commit_index == r.applied_index))
        }),
        "nodes did not converge: {:#?}",
        statuses(&nodes)
    );
    let histories: Vec<Vec<_>> = nodes
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut reader = client(d, &format!("reader{i}")).expect("reader connects");
            let page = reader.history("lobby", None, 100).expect("history");
            page.messages.iter().map(key).collect()
        })
        .collect();
    assert_eq!(histories[0].len(), 6, "{:?}", histories[0]);
    assert_eq!(histories[0], histories[1]);
    assert_eq!(histories[0], histories[2]);
    assert_eq!(histories[0], got.iter().map(key).collect::<Vec<_>>());

    // The admin view: three nodes, one leader, everyone following it. Writes may still be
    // committing (the sessions of clients that just left), so poll until the lag is zero.
    let status = || -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_ringchat"))
            .args(["-s", &addrs(&nodes).join(","), "admin", "status", "--json"])
            .output()
            .expect("run ringchat admin status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    };
    let settled = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .all(|v| v["apply_lag"] == 0 && v["replication_lag"] == 0)
    };
    let mut lines = status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !settled(&lines) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        lines = status();
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let leader_id = leader as u64 + 1;
    assert_eq!(
        lines.iter().filter(|v| v["role"] == "leader").count(),
        1,
        "{lines:?}"
    );
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["up"], true);
        assert_eq!(v["id"], i as u64 + 1);
        assert_eq!(v["leader"], leader_id, "{v}");
        assert!(v["applied_index"].as_u64().unwrap() >= 6, "{v}");
        assert_eq!(v["apply_lag"], 0, "{v}");
        assert_eq!(v["replication_lag"], 0, "{v}");
    }

    // The text view has a header and one line per node.
    let out = Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["-s", &addrs(&nodes).join(","), "admin", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert_eq!(text.matches(" leader ").count(), 1, "{text}");
}

#[test]
fn a_node_of_another_cluster_is_refused_and_a_stopped_node_shows_as_down() {
    let nodes = start_cluster(&[]);
    let leader = wait_for_one_leader(&nodes, Duration::from_secs(15));

    // A stranger claiming id 1 in cluster 999 dials node 2's peer port: node 2 refuses it
    // (and the stranger refuses node 2), the cluster is unaffected.
    let node2_peer = {
        let log = nodes[1].log();
        let line = log
            .lines()
            .find(|l| l.contains("listening for peers on"))
            .expect("node 2 logs its peer address")
            .to_owned();
        line.rsplit(' ').next().unwrap().to_owned()
    };
    let own_peer = format!("127.0.0.1:{}", free_ports(1)[0]);
    let peers = format!("2={node2_peer}");
    let stranger = Daemon::start(&[
        "--id",
        "1",
        "--cluster-id",
        "999",
        "--peer-listen",
        &own_peer,
        "--peers",
        &peers,
    ]);
    assert!(
        eventually(Duration::from_secs(10), || nodes[1]
            .log()
            .contains("wrong cluster id 999")),
        "node 2 did not refuse the stranger:\n{}",
        nodes[1].log()
    );
    assert!(
        eventually(Duration::from_secs(10), || stranger
            .log()
            .contains(&format!("wrong cluster id {CLUSTER_ID}"))),
        "the stranger did not refuse node 2:\n{}",
        stranger.log()
    );
    drop(stranger);
    assert_eq!(wait_for_one_leader(&nodes, Duration::from_secs(5)), leader);

    // A follower stopped: the admin view shows it down, the others still agree.
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut nodes = nodes;
    let mut gone = nodes.remove(follower);
    gone.terminate();
    assert!(gone.wait_exit(Duration::from_secs(10)).is_some());
    let mut all = addrs(&nodes);
    all.insert(follower, gone.addr.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_ringchat"))
        .args(["-s", &all.join(","), "admin", "status", "--json"])
        .args(["--timeout", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[follower]["up"], false, "{lines:?}");
    assert_eq!(lines[follower]["role"], "down");
    assert_eq!(lines.iter().filter(|v| v["role"] == "leader").count(), 1);
    // Two of three still form a majority: writes go on.
    let mut w = client(&nodes[0], "wren").expect("connect");
    w.join("after").expect("join");
    w.say("after", "still here")
        .expect("acked with one node down");
}

/// A node at its connection limit sends a new client to a less loaded node (loads travel
/// with heartbeats); the client library follows the redirect and works there.
#[test]
fn a_full_node_redirects_a_new_client_to_a_less_loaded_node() {
    let nodes = start_cluster(&["--max-connections", "3"]);
    wait_for_one_leader(&nodes, Duration::from_secs(10));
    // Three clients fill node 1. A status connection of the wait above may still be closing
    // and hold a slot for a moment: a filler sent elsewhere meanwhile is dropped and replaced.
    let mut fillers = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let name = format!("filler{}", fillers.len());
            let mut cfg = ringchat::client::ClientConfig::new(vec![nodes[0].addr.clone()], &name);
            cfg.reconnect = false;
            if let Ok(c) = ringchat::client::Client::connect(cfg) {
                if c.server() == nodes[0].addr {
                    fillers.push(c);
                }
            }
            fillers.len() == 3
        }),
        "node 1 did not take 3 clients\n{}",
        nodes[0].log()
    );
    // A fourth connection gets a Redirect to a peer.
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut probe = support::raw(&nodes[0].addr);
            let (frames, _) = support::read_until_closed(&mut probe, Duration::from_secs(2));
            frames.iter().any(|f| {
                matches!(f, ringchat::codec::ServerFrame::Redirect(r)
                    if r.addr == nodes[1].addr || r.addr == nodes[2].addr)
            })
        }),
        "no redirect from a full node\n{}",
        nodes[0].log()
    );
    let mut cfg = ringchat::client::ClientConfig::new(vec![nodes[0].addr.clone()], "overflow");
    cfg.reconnect = false;
    cfg.request_timeout = Duration::from_secs(10);
    let mut c = ringchat::client::Client::connect(cfg).expect("connect through the redirect");
    let served_by = c.server().to_owned();
    assert!(
        served_by == nodes[1].addr || served_by == nodes[2].addr,
        "served by {served_by}, not by a less loaded node of {:?}\n{}",
        addrs(&nodes),
        nodes[0].log()
    );
    c.join("overflow").expect("join");
    assert_eq!(c.say("overflow", "made it").expect("say").seq, 1);
    let log = nodes[0].log();
    assert!(log.contains("redirected") || log.contains("limit"), "{log}");
    drop(fillers);
}
