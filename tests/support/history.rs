//! A history checker for fault tests: writer clients (several users, spread over every node,
//! each with the whole server list and reconnect on) send continuously in a bounded loop and
//! record what they were told; then the final history is read from every node and checked
//! against what every member saw (DESIGN invariants 2 and 3):
//!
//! - no acknowledged message lost: every acked (room, client_seq -> seq) is in the final
//!   history at that seq with the right author and text;
//! - exactly once: no text appears twice in the final history, none that was never sent, and
//!   none the server refused;
//! - agreement and order: every node's final history is the same, seqs 1..=N without holes;
//!   every member received each room's messages in seq order, each once, without gaps, and
//!   seq -> (author, text) agrees with the final history; the client library dropped no
//!   duplicate and saw no gap;
//! - every writer's messages were all answered by the end.
//!
//! Election safety (at most one leader per epoch) comes from the daemons' logs, see
//! [`super::cluster::Cluster::check_election_safety`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringchat::client::{Client, ClientConfig, ClientError, Event};
use ringchat::codec::ChatMessage;

/// How the writers behave.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Number of writer clients (user `{user_prefix}{i}`), writer i starting on node i mod n.
    pub writers: usize,
    /// Prefix of the writers' usernames (distinct per workload when several run at once).
    pub user_prefix: String,
    /// Rooms every writer joins and posts to (round robin).
    pub rooms: Vec<String>,
    /// Pause between two sends of one writer.
    pub interval: Duration,
    /// Most unacknowledged messages per writer; it waits (reading) beyond it.
    pub window: usize,
    /// Client keepalive: a hung node is left after about twice this.
    pub keepalive: Duration,
    /// Run tag put in every text, so texts are unique across runs.
    pub tag: String,
}

impl WorkloadConfig {
    /// 6 writers `{tag}-w0`.., rooms `{tag}-alpha` and `{tag}-beta` (names carry the tag so
    /// that writers left over by a failed test cannot disturb another one), one send every
    /// 10 ms per writer, window 32, keepalive 300 ms.
    pub fn new(tag: &str) -> WorkloadConfig {
        WorkloadConfig {
            writers: 6,
            user_prefix: format!("{tag}-w"),
            rooms: vec![format!("{tag}-alpha"), format!("{tag}-beta")],
            interval: Duration::from_millis(10),
            window: 32,
            keepalive: Duration::from_millis(300),
            tag: tag.into(),
        }
    }
}

/// A message a writer sent.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Its client sequence number.
    pub client_seq: u64,
    /// Room.
    pub room: String,
    /// Text (unique).
    pub text: String,
    /// When the `send` call began (the frame went out at or after it).
    pub at: Instant,
}

/// An acknowledgement a writer received.
#[derive(Clone, Debug)]
pub struct Acked {
    /// Room.
    pub room: String,
    /// Client sequence number acknowledged.
    pub client_seq: u64,
    /// The room seq it got.
    pub seq: u64,
    /// When the ack was received.
    pub at: Instant,
}

/// Everything one writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Username.
    pub user: String,
    /// Messages sent, in order.
    pub sent: Vec<Sent>,
    /// Acks received, in order.
    pub acks: Vec<Acked>,
    /// Messages refused: (client_seq, code, message).
    pub refused: Vec<(u64, u16, String)>,
    /// Per room: seq of the last message before the first join (replayed history excluded).
    pub joined_at: BTreeMap<String, u64>,
    /// Per room: messages received (join replay and live), in arrival order.
    pub received: BTreeMap<String, Vec<ChatMessage>>,
    /// `session().duplicates_dropped()` at the end.
    pub duplicates_dropped: u64,
    /// `session().gaps_seen()` at the end.
    pub gaps_seen: u64,
    /// Reconnections (Reconnected events).
    pub reconnects: u32,
    /// When each reconnection completed, and to which address.
    pub reconnected_at: Vec<(Instant, String)>,
    /// Connection events (reconnect attempts and completions) with their time, for diagnosis.
    pub conn_events: Vec<(Instant, String)>,
    /// Whether the writer drained every room to the final history's last seq (false for a
    /// workload finished early with [`Workload::finish_early`]).
    pub complete: bool,
    /// Messages still unanswered at the end.
    pub unacked_at_end: usize,
    /// Client errors that ended or interrupted the run.
    pub errors: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    /// The workload was dropped unfinished (a test failed): leave without flushing.
    abort: AtomicBool,
    acks: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    /// Set by `finish`: drain each room until its last seq is seen.
    targets: Mutex<Option<BTreeMap<String, u64>>>,
    flushed: AtomicU64,
}

/// Running writers.
pub struct Workload {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<WriterReport>>,
    cfg: WorkloadConfig,
}

fn text_of(tag: &str, user: &str, client_seq: u64) -> String {
    format!("{tag}:{user}:{client_seq}")
}

impl Workload {
    /// Connects the writers (each to the full server list, rotated so writer i starts on node
    /// i mod n), joins the rooms, and starts sending. Returns once every writer is joined.
    pub fn start(servers: &[String], cfg: WorkloadConfig) -> Workload {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            acks: AtomicU64::new(0),
            last_ack: Mutex::new(None),
            targets: Mutex::new(None),
            flushed: AtomicU64::new(0),
        });
        let ready = Arc::new(std::sync::Barrier::new(cfg.writers + 1));
        let handles = (0..cfg.writers)
            .map(|i| {
                let mut list = servers.to_vec();
                list.rotate_left(i % servers.len());
                let (shared, cfg, ready) = (Arc::clone(&shared), cfg.clone(), Arc::clone(&ready));
                thread::Builder::new()
                    .name(format!("writer-{i}"))
                    .spawn(move || writer(i, list, cfg, shared, ready))
                    .expect("spawn writer")
            })
            .collect();
        ready.wait();
        Workload {
            shared,
            handles,
            cfg,
        }
    }

    /// Acks received so far by all writers.
    pub fn acks(&self) -> u64 {
        self.shared.acks.load(Ordering::SeqCst)
    }

    /// When the latest ack arrived.
    pub fn last_ack(&self) -> Option<Instant> {
        *self.shared.last_ack.lock().unwrap()
    }

    /// Waits until `n` more acks than now arrived; false after `limit`.
    pub fn wait_acks(&self, n: u64, limit: Duration) -> bool {
        let target = self.acks() + n;
        super::eventually(limit, || self.acks() >= target)
    }

    /// Stops sending; every writer then waits (bounded) for the answers to what it sent.
    /// Returns once every writer has flushed or given up.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let n = self.cfg.writers as u64;
        super::eventually(Duration::from_secs(40), || {
            self.shared.flushed.load(Ordering::SeqCst) >= n
        });
    }

    /// Stops the writers without draining: they leave once their messages are answered, and
    /// the checker does not expect them to have received the rooms up to the end.
    pub fn finish_early(self) -> Vec<WriterReport> {
        self.finish(BTreeMap::new())
    }

    /// Lets the writers drain each room up to `targets` (room -> last seq), bounded, and
    /// returns their reports. Call after [`Workload::stop`].
    pub fn finish(mut self, targets: BTreeMap<String, u64>) -> Vec<WriterReport> {
        self.shared.stop.store(true, Ordering::SeqCst);
        *self.shared.targets.lock().unwrap() = Some(targets);
        std::mem::take(&mut self.handles)
            .into_iter()
            .map(|h| h.join().expect("writer thread panicked"))
            .collect()
    }

    /// The rooms the writers use.
    pub fn rooms(&self) -> &[String] {
        &self.cfg.rooms
    }
}

impl Drop for Workload {
    /// Unfinished (the test failed): tells the writers to leave as soon as they can, without
    /// waiting for them.
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.shared.abort.store(true, Ordering::SeqCst);
            self.shared.stop.store(true, Ordering::SeqCst);
            *self.shared.targets.lock().unwrap() = Some(BTreeMap::new());
        }
    }
}

fn record(report: &mut WriterReport, shared: &Shared, e: Event) {
    match e {
        Event::Message(m) => report.received.entry(m.room.clone()).or_default().push(m),
        Event::Ack(a) => {
            let at = Instant::now();
            report.acks.push(Acked {
                room: a.room,
                client_seq: a.client_seq,
                seq: a.seq,
                at,
            });
            shared.acks.fetch_add(1, Ordering::SeqCst);
            *shared.last_ack.lock().unwrap() = Some(at);
        }
        Event::Error {
            code,
            client_seq: Some(cs),
            message,
        } => report.refused.push((cs, code, message)),
        Event::Error { code, message, .. } => {
            report.errors.push(format!("error event {code}: {message}"))
        }
        Event::Reconnected { addr } => {
            report.reconnects += 1;
            report
                .conn_events
                .push((Instant::now(), format!("reconnected to {addr}")));
            report.reconnected_at.push((Instant::now(), addr));
        }
        Event::Reconnecting { addr, attempt } => report.conn_events.push((
            Instant::now(),
            format!("reconnecting: attempt {attempt} to {addr}"),
        )),
        Event::Notice(_) => {}
    }
}

fn writer(
    i: usize,
    servers: Vec<String>,
    cfg: WorkloadConfig,
    shared: Arc<Shared>,
    ready: Arc<std::sync::Barrier>,
) -> WriterReport {
    let user = format!("{}{i}", cfg.user_prefix);
    let mut report = WriterReport {
        user: user.clone(),
        ..WriterReport::default()
    };
    let mut ccfg = ClientConfig::new(servers, &user);
    ccfg.keepalive = cfg.keepalive;
    ccfg.request_timeout = Duration::from_secs(10);
    ccfg.connect_timeout = Duration::from_secs(1);
    ccfg.reconnect_attempts = 200;
    ccfg.reconnect_timeout = Duration::from_secs(30);
    ccfg.backoff_base = Duration::from_millis(20);
    ccfg.backoff_max = Duration::from_millis(300);
    let client = Client::connect(ccfg).and_then(|mut c| {
        for room in &cfg.rooms {
            let j = c.join(room)?;
            let before = j.history.first().map_or(j.last_seq, |m| m.seq - 1);
            report.joined_at.insert(room.clone(), before);
            report
                .received
                .entry(room.clone())
                .or_default()
                .extend(j.history);
        }
        Ok(c)
    });
    ready.wait();
    let mut c = match client {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(format!("connect/join: {e}"));
            shared.flushed.fetch_add(1, Ordering::SeqCst);
            return report;
        }
    };
    let result = run_writer(&mut c, &cfg, &shared, &mut report);
    if let Err(e) = result {
        report.errors.push(e.to_string());
    }
    report.duplicates_dropped = c.session().duplicates_dropped();
    report.gaps_seen = c.session().gaps_seen();
    report.unacked_at_end = c.session().unacked_len();
    report
}

fn run_writer(
    c: &mut Client,
    cfg: &WorkloadConfig,
    shared: &Shared,
    report: &mut WriterReport,
) -> Result<(), ClientError> {
    // Sending phase.
    let mut next_send = Instant::now();
    let mut n: usize = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_send && c.session().unacked_len() < cfg.window {
            let room = &cfg.rooms[n % cfg.rooms.len()];
            n += 1;
            let cs = c.session().next_client_seq();
            let text = text_of(&cfg.tag, &report.user, cs);
            let at = Instant::now();
            let got = c.send(room, &text)?;
            assert_eq!(got, cs, "client sequence numbers are not consecutive");
            report.sent.push(Sent {
                client_seq: cs,
                room: room.clone(),
                text,
                at,
            });
            next_send = now + cfg.interval;
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        if let Some(e) = c.next_event(wait)? {
            record(report, shared, e);
        }
    }
    if shared.abort.load(Ordering::SeqCst) {
        return Ok(());
    }
    // Answers to what was sent.
    let flushed = c.flush();
    while let Some(e) = c.next_event(Duration::ZERO)? {
        record(report, shared, e);
    }
    shared.flushed.fetch_add(1, Ordering::SeqCst);
    if let Err(e) = flushed {
        report.errors.push(format!("flush: {e}"));
    }
    // Drain until the final history's last seqs are seen, bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    let targets = loop {
        if let Some(t) = shared.targets.lock().unwrap().clone() {
            break t;
        }
        if let Some(e) = c.next_event(Duration::from_millis(20))? {
            record(report, shared, e);
        }
        if Instant::now() >= deadline {
            report.errors.push("no drain targets within 120 s".into());
            return Ok(());
        }
    };
    // Only this workload's rooms (the targets may name others).
    let targets: BTreeMap<String, u64> = targets
        .into_iter()
        .filter(|(room, _)| cfg.rooms.contains(room))
        .collect();
    report.complete = !targets.is_empty();
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = targets
            .iter()
            .all(|(room, last)| c.session().last_seen(room).unwrap_or(0) >= *last);
        if done {
            break;
        }
        if Instant::now() >= drain_deadline {
            report.errors.push(format!(
                "drain: rooms not caught up within 15 s: seen {:?}, want {targets:?}",
                c.session().rooms().collect::<Vec<_>>()
            ));
            break;
        }
        if let Some(e) = c.next_event(Duration::from_millis(50))? {
            record(report, shared, e);
        }
    }
    while let Some(e) = c.next_event(Duration::ZERO)? {
        record(report, shared, e);
    }
    Ok(())
}

/// A room's whole history through the client library's paging, oldest first.
pub fn read_history(c: &mut Client, room: &str) -> Result<Vec<ChatMessage>, ClientError> {
    let mut pages: Vec<Vec<ChatMessage>> = Vec::new();
    let mut before = None;
    loop {
        let page = c.history(room, before, 200)?;
        let Some(first) = page.messages.first() else {
            break;
        };
        before = Some(first.seq);
        let more = page.more;
        pages.push(page.messages);
        if !more || before == Some(1) {
            break;
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// The final history of every room read from every node: node address -> room -> messages.
pub type FinalHistories = BTreeMap<String, BTreeMap<String, Vec<ChatMessage>>>;

/// Reads every room's history from every address: one client per node (connected to that
/// node only, reconnect off, user `reader{k}`).
pub fn read_all(addrs: &[String], rooms: &[String]) -> FinalHistories {
    let mut out = FinalHistories::new();
    for (k, addr) in addrs.iter().enumerate() {
        let mut cfg = ClientConfig::new(vec![addr.clone()], format!("reader{k}"));
        cfg.reconnect = false;
        cfg.request_timeout = Duration::from_secs(10);
        let mut c = Client::connect(cfg)
            .unwrap_or_else(|e| panic!("connecting to {addr} to read the histories: {e}"));
        for room in rooms {
            let msgs = read_history(&mut c, room)
                .unwrap_or_else(|e| panic!("reading the history of {room} from {addr}: {e}"));
            out.entry(addr.clone())
                .or_default()
                .insert(room.clone(), msgs);
        }
    }
    out
}

/// The last seq of each room in `finals` (taken from the first node; they must agree).
pub fn last_seqs(finals: &FinalHistories) -> BTreeMap<String, u64> {
    finals
        .values()
        .next()
        .map(|rooms| {
            rooms
                .iter()
                .map(|(r, m)| (r.clone(), m.last().map_or(0, |m| m.seq)))
                .collect()
        })
        .unwrap_or_default()
}

/// Figures of a checked run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Messages sent by all writers.
    pub sent: usize,
    /// Acks received.
    pub acked: usize,
    /// Refusals received.
    pub refused: usize,
    /// Messages in the final histories (all rooms).
    pub committed: usize,
    /// Messages received by members (all rooms, all members).
    pub delivered: usize,
    /// Reconnections of writers.
    pub reconnects: u32,
    /// Acknowledged messages missing or wrong in the final history.
    pub lost: usize,
    /// Texts committed more than once, plus messages a member received twice.
    pub duplicates: usize,
}

/// Runs every check; returns the figures, or the list of violations (with the figures).
pub fn check(reports: &[WriterReport], finals: &FinalHistories) -> Result<Summary, String> {
    check_all(&reports.iter().collect::<Vec<_>>(), finals)
}

/// [`check`] over the reports of several workloads at once.
pub fn check_all(reports: &[&WriterReport], finals: &FinalHistories) -> Result<Summary, String> {
    let mut errs: Vec<String> = Vec::new();
    let mut sum = Summary::default();
    let mut err = |s: String| {
        if errs.len() < 50 {
            errs.push(s);
        }
    };

    // 1. Every node has the same history, seqs 1..=N.
    let mut reference: Option<(&String, &BTreeMap<String, Vec<ChatMessage>>)> = None;
    for (addr, rooms) in finals {
        for (room, msgs) in rooms {
            for (k, m) in msgs.iter().enumerate() {
                if m.seq != k as u64 + 1 {
                    err(format!(
                        "{addr}: history of {room} has seq {} at position {}",
                        m.seq,
                        k + 1
                    ));
                    break;
                }
            }
        }
        match reference {
            None => reference = Some((addr, rooms)),
            Some((raddr, rrooms)) => {
                for (room, msgs) in rooms {
                    let other = rrooms.get(room).map(Vec::as_slice).unwrap_or(&[]);
                    if strip(msgs) != strip(other) {
                        err(format!(
                            "histories of {room} differ between {raddr} ({} msgs) and {addr} ({} msgs): first difference at {:?}",
                            other.len(),
                            msgs.len(),
                            first_difference(other, msgs)
                        ));
                    }
                }
            }
        }
    }
    let Some((_, history)) = reference else {
        return Err("no final history".into());
    };
    let by_seq: BTreeMap<&str, HashMap<u64, &ChatMessage>> = history
        .iter()
        .map(|(r, msgs)| (r.as_str(), msgs.iter().map(|m| (m.seq, m)).collect()))
        .collect();
    sum.committed = history.values().map(Vec::len).sum();

    // 2. Exactly once: each text at most once in the history, and each one was sent.
    let mut sent_texts: HashMap<&str, (&str, &str)> = HashMap::new(); // text -> (user, room)
    for r in reports {
        for s in &r.sent {
            sent_texts.insert(&s.text, (&r.user, &s.room));
        }
    }
    let mut seen_texts: HashMap<&str, (&str, u64)> = HashMap::new();
    for (room, msgs) in history {
        for m in msgs {
            if let Some((r0, s0)) = seen_texts.insert(&m.text, (room, m.seq)) {
                sum.duplicates += 1;
                err(format!(
                    "text {:?} committed twice: {r0}#{s0} and {room}#{}",
                    m.text, m.seq
                ));
            }
            match sent_texts.get(m.text.as_str()) {
                Some((user, sroom)) => {
                    if *user != m.author || *sroom != room {
                        err(format!(
                            "{room}#{} {:?} by {} was sent by {user} to {sroom}",
                            m.seq, m.text, m.author
                        ));
                    }
                }
                None => err(format!(
                    "{room}#{} {:?} by {} was never sent",
                    m.seq, m.text, m.author
                )),
            }
        }
    }

    for r in reports {
        sum.sent += r.sent.len();
        sum.acked += r.acks.len();
        sum.refused += r.refused.len();
        sum.reconnects += r.reconnects;
        let texts: HashMap<u64, &Sent> = r.sent.iter().map(|s| (s.client_seq, s)).collect();
        // 3. No acknowledged message lost.
        let mut acked_once: HashMap<u64, u64> = HashMap::new();
        for a in &r.acks {
            if let Some(prev) = acked_once.insert(a.client_seq, a.seq) {
                err(format!(
                    "{}: client_seq {} acked twice (seq {prev} and {})",
                    r.user, a.client_seq, a.seq
                ));
            }
            let Some(s) = texts.get(&a.client_seq) else {
                err(format!(
                    "{}: ack of unknown client_seq {}",
                    r.user, a.client_seq
                ));
                continue;
            };
            let found = by_seq
                .get(a.room.as_str())
                .and_then(|m| m.get(&a.seq))
                .copied();
            match found {
                Some(m) if m.author == r.user && m.text == s.text && a.room == s.room => {}
                other => {
                    sum.lost += 1;
                    err(format!(
                        "LOST: {} acked {:?} as {}#{} but the history has {:?}",
                        r.user, s.text, a.room, a.seq, other
                    ));
                }
            }
        }
        // Refused messages must not be committed.
        for (cs, code, msg) in &r.refused {
            if let Some(s) = texts.get(cs) {
                if seen_texts.contains_key(s.text.as_str()) {
                    err(format!(
                        "{}: {:?} was refused ({code}: {msg}) but committed",
                        r.user, s.text
                    ));
                }
            }
        }
        if r.unacked_at_end != 0 {
            err(format!(
                "{}: {} messages never answered",
                r.user, r.unacked_at_end
            ));
        }
        if !r.errors.is_empty() {
            err(format!("{}: client errors {:?}", r.user, r.errors));
        }
        if r.duplicates_dropped != 0 || r.gaps_seen != 0 {
            err(format!(
                "{}: the client library dropped {} duplicates and saw {} gaps",
                r.user, r.duplicates_dropped, r.gaps_seen
            ));
        }
        // 4. Each member: seq order, no gaps, no duplicates, same content as the history.
        for (room, got) in &r.received {
            sum.delivered += got.len();
            let start = r.joined_at.get(room).copied().unwrap_or(0);
            let mut expect = start + 1;
            for m in got {
                if m.seq < expect {
                    sum.duplicates += 1;
                    err(format!(
                        "{} received {room}#{} again (or out of order; expected {expect})",
                        r.user, m.seq
                    ));
                    continue;
                }
                if m.seq > expect {
                    err(format!(
                        "{} missed {room}#{expect}..{} (got {} next)",
                        r.user,
                        m.seq - 1,
                        m.seq
                    ));
                }
                expect = m.seq + 1;
                match by_seq.get(room.as_str()).and_then(|h| h.get(&m.seq)) {
                    Some(h) if *h == m => {}
                    other => err(format!(
                        "{} received {room}#{} as ({}, {:?}) but the history has {:?}",
                        r.user,
                        m.seq,
                        m.author,
                        m.text,
                        other.map(|h| (&h.author, &h.text))
                    )),
                }
            }
            let last = history
                .get(room)
                .and_then(|h| h.last())
                .map_or(0, |m| m.seq);
            if r.complete && expect != last + 1 {
                err(format!(
                    "{} received {room} only up to #{} of {last}",
                    r.user,
                    expect - 1
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(sum)
    } else {
        let mut s = format!("{} violations ({sum:?}):\n", errs.len());
        for e in &errs {
            let _ = writeln!(s, "  {e}");
        }
        Err(s)
    }
}

fn strip(msgs: &[ChatMessage]) -> Vec<(u64, &str, &str, u64)> {
    msgs.iter()
        .map(|m| (m.seq, m.author.as_str(), m.text.as_str(), m.time_ms))
        .collect()
}

fn first_difference(a: &[ChatMessage], b: &[ChatMessage]) -> Option<(Option<u64>, Option<u64>)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|k| {
        let (x, y) = (a.get(k), b.get(k));
        let same = match (x, y) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        };
        (!same).then(|| (x.map(|m| m.seq), y.map(|m| m.seq)))
    })
}
