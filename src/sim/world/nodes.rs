//! Nodes: their inputs (queued while paused), timers, the driver turn (persist, then send),
//! crashes at a chosen point of a turn (a power loss of the node's simulated disk), restarts
//! that recover the real file storage from what the disk holds durably (a node whose disk
//! reads back corrupt is wiped and comes back as a new one), pauses and failing disks.

use crate::codec::{self, PeerFrame};
use crate::core::{Action, Node, NodeId};
use crate::sim::clock::{ms, Micros};
use crate::sim::faults::CrashPoint;
use crate::storage::{self, Storage};

use super::open_storage;

/// Jobs the simulated storage holds in flight at most (as the driver's storage thread).
const MAX_IN_FLIGHT: usize = 8;
/// Pause before storage takes writes again after a failure (as the driver's).
const STORAGE_RETRY: Micros = ms(1000);
/// One restart in this many reads its disk back corrupt (when the node may lose its data).
const CORRUPT_RESTART_ONE_IN: u8 = 12;
/// The chance that each read of a log segment or snapshot file flips a bit, in such a restart.
const CORRUPT_READ_RATE: f64 = 0.3;
/// A `MidWrite` crash strikes after at most this many changes to the disk.
const MID_WRITE_CHANGES: u64 = 12;

use super::{
    client_addr, Event, Input, NodeSide, World, TAG_LINK, TAG_PEER, TAG_TIMER, TAG_TO_NODE,
};

impl World {
    pub(super) fn start_node(&mut self, id: NodeId) {
        let now = self.now_of(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.storage.is_none() {
            match open_storage(&n.disk) {
                Ok(s) => n.storage = Some(s),
                Err(e) => return self.fail(format!("node {id}: storage open failed: {e}")),
            }
        }
        let Some(storage) = n.storage.as_mut() else {
            return;
        };
        let recovered = match storage.load() {
            Ok(r) => r,
            Err(e) => return self.fail(format!("node {id}: storage load failed: {e}")),
        };
        match Node::new(n.cfg.clone(), recovered, now) {
            Ok(node) => n.node = Some(node),
            Err(e) => return self.fail(format!("node {id}: stored snapshot unreadable: {e}")),
        }
        n.paused = false;
        n.backlog.clear();
        n.last_view = None;
        n.peers.clear();
        self.checker.node_restarted(id);
        self.turn(id);
        self.joiner_started(id);
    }

    pub(super) fn node_input(&mut self, id: NodeId, input: Input) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.node.is_none() {
            if let Input::Accept(conn) = input {
                self.close_node_side(conn); // connection refused
            }
            return;
        }
        if n.paused {
            n.backlog.push_back(input);
            return;
        }
        self.apply_input(id, input);
        self.turn(id);
    }

    pub(super) fn apply_input(&mut self, id: NodeId, input: Input) {
        let now = self.now_of(id);
        let t = self.clock.micros();
        let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.node.as_mut()) else {
            return;
        };
        match input {
            Input::Peer {
                from,
                generation,
                bytes,
            } => {
                if !self.net.current(from, id, generation) {
                    return;
                }
                match codec::decode::<PeerFrame>(&bytes) {
                    Ok(Some((frame, used))) if used == bytes.len() => {
                        self.trace.event(TAG_PEER, t, &bytes);
                        self.trace.mix(u64::from(from) << 32 | u64::from(id));
                        self.stats.peer_frames += 1;
                        node.handle_peer_frame(now, from, frame);
                    }
                    other => {
                        let what = format!("{other:?}");
                        self.fail(format!(
                            "node {from} sent node {id} an undecodable peer frame ({} bytes): {}",
                            bytes.len(),
                            what.chars().take(200).collect::<String>()
                        ));
                    }
                }
            }
            Input::PeerUp(p) => node.handle_peer_connected(now, p, &client_addr(p)),
            Input::PeerDown(p) => node.handle_peer_disconnected(now, p),
            Input::PeerClosed(p, generation) => {
                // Unless the pair connected again since.
                if self.net.generation(p, id) == Some(generation) {
                    node.handle_peer_disconnected(now, p);
                }
            }
            Input::Accept(conn) => {
                if let Some(ci) = self.conns.get_mut(&conn) {
                    if ci.node_side == NodeSide::Pending {
                        ci.node_side = NodeSide::Open;
                        node.handle_connect(now, conn);
                    }
                }
            }
            Input::Readable(conn) => {
                let Some(ci) = self.conns.get_mut(&conn) else {
                    return;
                };
                ci.reading = false;
                if ci.node_side != NodeSide::Open {
                    ci.to_node.clear();
                    return;
                }
                // A read takes what arrived, or (one time in two) only a piece of it: frames
                // cut anywhere, several in one read, several inputs in one turn.
                let n = ci.to_node.len();
                let take = if n > 1 && self.rng.bool() {
                    self.rng.usize(1..n)
                } else {
                    n
                };
                let chunk: Vec<u8> = ci.to_node.drain(..take).collect();
                self.trace.event(TAG_TO_NODE, t, &chunk);
                let fed = ci.node_in.feed(&chunk, |f| node.handle_frame(now, conn, f));
                if let Err(e) = fed {
                    return self.fail(format!("conn {}: a client sent a bad frame: {e}", conn.0));
                }
                if !ci.to_node.is_empty() {
                    ci.reading = true;
                    let at = self.clock.micros() + self.rng.u64(0..=20);
                    let input = Input::Readable(conn);
                    self.schedule(at, Event::Input { node: id, input });
                }
            }
            Input::Closed(conn) => {
                if let Some(ci) = self.conns.get_mut(&conn) {
                    // What the client sent before closing is read first, as the driver reads
                    // to the end of the stream.
                    let rest = std::mem::take(&mut ci.to_node);
                    if ci.node_side == NodeSide::Open && !rest.is_empty() {
                        self.trace.event(TAG_TO_NODE, t, &rest);
                        let fed = ci.node_in.feed(&rest, |f| node.handle_frame(now, conn, f));
                        if let Err(e) = fed {
                            let why = format!("conn {}: a client sent a bad frame: {e}", conn.0);
                            return self.fail(why);
                        }
                    }
                    if ci.node_side == NodeSide::Open {
                        ci.node_side = NodeSide::Closed;
                        node.handle_disconnect(now, conn);
                    } else if ci.node_side == NodeSide::Pending {
                        ci.node_side = NodeSide::Closed;
                    }
                }
            }
            Input::Persisted { restarts } => self.storage_done(id, restarts),
        }
    }

    /// The disk finished the node's oldest job: written and synced (or failed), then reported,
    /// as the driver's storage thread does. A failure discards the jobs queued behind it; the
    /// node hands everything not durable out again after the retry pause.
    fn storage_done(&mut self, id: NodeId, restarts: u64) {
        let now = self.now_of(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.restarts != restarts {
            return; // of a run that crashed
        }
        let (Some(node), Some(storage)) = (n.node.as_mut(), n.storage.as_mut()) else {
            return;
        };
        let Some(job) = n.in_flight.pop_front() else {
            return;
        };
        match storage::write(storage, &job) {
            Ok(()) => node.handle_persisted(now, job.token),
            Err(e) => {
                n.in_flight.clear();
                n.retry_at = Some(self.clock.micros() + STORAGE_RETRY);
                node.handle_persist_failed(now, e.to_string());
            }
        }
    }

    pub(super) fn node_timer(&mut self, id: NodeId) {
        let t = self.clock.micros();
        if self.nodes.get(&id).is_none_or(|n| n.node.is_none()) {
            return;
        }
        self.trace.mix(TAG_TIMER);
        self.trace.mix(t ^ u64::from(id));
        self.turn(id);
    }

    /// One driver turn (`Node::turn`, then what its `Ready` asks for), as the daemon's loop
    /// does it: the storage job goes to the simulated disk, which completes it after a random
    /// latency as an input of a later turn; again while closes give the node more to do. A
    /// pending crash strikes at the first turn with jobs in flight, before the turn's sends
    /// leave, the disk losing its power with those jobs written up to their first fsync
    /// (`BeforeSync`), cut after a random number of changes (`MidWrite`, a torn crash), or
    /// synced but not reported (`BeforeSend`).
    pub(super) fn turn(&mut self, id: NodeId) {
        let now = self.now_of(id);
        let micros = self.clock.micros();
        for _ in 0..32 {
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            if n.crash_pending == Some(CrashPoint::Idle) {
                n.crash_pending = None;
                return self.crash_now(id, CrashPoint::Idle);
            }
            let Some(node) = n.node.as_mut() else {
                return;
            };
            let can_take =
                n.in_flight.len() < MAX_IN_FLIGHT && n.retry_at.is_none_or(|t| micros >= t);
            let ready = node.turn(now, can_take);
            if ready.deadline.is_some_and(|d| d <= now.mono) {
                // A turn runs everything due: a deadline not in the future is a busy loop.
                return self.fail(format!(
                    "node {id}: its next deadline is not after its turn"
                ));
            }
            n.deadline = ready.deadline;
            if let Some(job) = ready.persist {
                n.retry_at = None;
                n.in_flight.push_back(job);
                let (lo, hi) = self.cfg.fsync_latency;
                let done = n.disk_busy_until.max(micros) + self.rng.u64(lo..=hi);
                n.disk_busy_until = done;
                let input = Input::Persisted {
                    restarts: n.restarts,
                };
                self.schedule(done, Event::Input { node: id, input });
            }
            let mid_write =
                self.nodes.get(&id).and_then(|n| n.crash_pending) == Some(CrashPoint::MidWrite);
            let changes = if mid_write {
                self.rng.u64(..=MID_WRITE_CHANGES)
            } else {
                0
            };
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            // A crash in the middle of a sync waits for a turn with writes in flight.
            let strikes = !n.in_flight.is_empty() || n.crash_pending == Some(CrashPoint::Idle);
            if let Some(point) = n.crash_pending.take_if(|_| strikes) {
                match point {
                    // Written, never synced: the crash loses it.
                    CrashPoint::BeforeSync => n.disk.lose_power_at_next_sync(),
                    CrashPoint::MidWrite => n.disk.lose_power_after(changes),
                    CrashPoint::BeforeSend | CrashPoint::Idle => {}
                }
                if let (Some(storage), false) = (n.storage.as_mut(), point == CrashPoint::Idle) {
                    for job in &n.in_flight {
                        if storage::write(storage, job).is_err() {
                            break; // the power went
                        }
                    }
                }
                return self.crash_now(id, point);
            }
            let closed = self.carry_out(id, ready.actions);
            self.follow_membership(id, ready.peers, ready.removed, ready.rejoin);
            if !closed {
                break;
            }
        }
        self.watch_role(id);
    }

    /// Carries out `actions` of node `id`; true if one closed a connection.
    fn carry_out(&mut self, id: NodeId, actions: Vec<Action>) -> bool {
        let mut closed = false;
        for a in actions {
            match a {
                Action::SendPeer { to, bytes } => self.send_peer(id, to, bytes),
                Action::ResetPeer { to, reason } => {
                    self.note(format!("node {id}: resets its link to node {to}: {reason}"));
                    self.reset_link(id, to, true);
                }
                Action::Send { conn, bytes } => self.send_to_client(id, conn, bytes),
                Action::Close { conn, reason } => {
                    if self.node_closes(id, conn) {
                        self.note(format!("node {id}: closed conn {}: {reason}", conn.0));
                        closed = true;
                    }
                }
            }
        }
        closed
    }

    pub(super) fn watch_role(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(node) = &n.node else {
            return;
        };
        let s = node.stats();
        let view = (s.role, s.epoch, s.leader);
        if n.last_view != Some(view) {
            n.last_view = Some(view);
            self.trace.mix(TAG_LINK ^ (u64::from(id) << 8));
            self.trace.mix(s.epoch);
            let msg = format!(
                "node {id}: {} of epoch {}, leader {:?} (log {}, committed {})",
                s.role.name(),
                s.epoch,
                s.leader,
                s.last_index,
                s.committed
            );
            self.note(msg);
        }
    }

    /// Pauses a node.
    pub fn pause(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.node.is_some() {
                n.paused = true;
            }
        }
    }

    /// Resumes a paused node: it processes what queued up for it, then runs normally.
    pub fn resume(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.paused {
            return;
        }
        n.paused = false;
        let backlog = std::mem::take(&mut n.backlog);
        self.note(format!("node {id}: resumes with {} inputs", backlog.len()));
        for input in backlog {
            self.apply_input(id, input);
        }
        self.turn(id);
        self.reconnect_links_of(id);
    }

    /// The node's storage works again: what waited is written at once.
    pub fn disk_works(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.disk.is_full() {
            n.disk.set_full(false);
            if n.node.is_some() && !n.paused {
                self.turn(id);
            }
        }
    }

    /// Makes every write of the node's storage fail until [`World::disk_works`].
    pub fn fail_disk(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.disk.set_full(true);
        }
    }

    /// Makes the next fsync of the running node's disk fail (what it was to make durable is
    /// lost). Not of a node that is down: the failure is one of a run's writes.
    pub fn fail_sync(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id).filter(|n| n.node.is_some()) {
            n.disk.fail_next_sync();
        }
    }

    /// Crashes a node at `point` of its next turn (at once for `Idle` or a paused node).
    pub fn crash(&mut self, id: NodeId, point: CrashPoint) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.node.is_none() {
            return;
        }
        if point == CrashPoint::Idle || n.paused {
            self.crash_now(id, CrashPoint::Idle);
        } else {
            n.crash_pending = Some(point);
        }
    }

    pub(super) fn crash_now(&mut self, id: NodeId, point: CrashPoint) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.node = None;
        n.storage = None;
        if point == CrashPoint::MidWrite {
            n.disk.crash_torn();
        } else {
            n.disk.crash();
        }
        n.paused = false;
        n.backlog.clear();
        n.crash_pending = None;
        n.last_view = None;
        n.deadline = None;
        self.stats.jobs_cut_by_crashes += n.in_flight.len() as u64;
        n.in_flight.clear();
        n.retry_at = None;
        n.peers.clear();
        self.stats.crashes += 1;
        self.note(format!("node {id}: CRASHED ({point:?})"));
        self.close_node_sides(id);
        for (a, b) in self.net.pairs() {
            if a == id || b == id {
                self.reset_link(a, b, false);
            }
        }
    }

    /// Restarts a crashed node from what its storage synced (not one removed: a node gone
    /// for good, or retired by a committed configuration, is never started again).
    pub fn restart(&mut self, id: NodeId) {
        let retired = self.checker.is_retired(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.node.is_some() || n.gone || retired {
            return;
        }
        n.restarts += 1;
        let mut wiped = std::mem::take(&mut n.wiped);
        self.note(format!("node {id}: RESTART"));
        if !wiped && !self.recover(id) {
            if self.violation.is_some() {
                return;
            }
            wiped = true;
        }
        if wiped {
            self.rejoin_after_wipe(id);
        }
        self.start_node(id);
        self.reconnect_links_of(id);
    }

    /// Recovers the node's storage from its disk; now and then the disk reads back corrupt
    /// (only when the node may be without its data: see [`World::may_lose_data`]). Recovery
    /// must then refuse the data, and the node cannot start: the admin wipes its disk (false).
    /// Recovery loading data from a corrupt read, or refusing data read back intact, is a
    /// failure of the run.
    fn recover(&mut self, id: NodeId) -> bool {
        let corrupt = self.rng.u8(..CORRUPT_RESTART_ONE_IN) == 0 && self.may_lose_data(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return true;
        };
        if corrupt {
            n.disk
                .set_corrupt_reads(CORRUPT_READ_RATE, storage::STORAGE_FILES);
        }
        let before = n.disk.stats().flipped_reads;
        let opened = open_storage(&n.disk);
        n.disk.set_corrupt_reads(0.0, &[]);
        let flipped = n.disk.stats().flipped_reads > before;
        match (opened, flipped) {
            (Ok(s), false) => {
                n.storage = Some(s);
                true
            }
            (Ok(_), true) => {
                self.fail(format!("node {id}: recovery loaded data read back corrupt"));
                false
            }
            (Err(e), true) if e.source.kind() == std::io::ErrorKind::InvalidData => {
                n.disk.wipe();
                *self.stats.faults.entry("corrupt-read").or_default() += 1;
                self.note(format!(
                    "node {id}: storage refused a corrupt read ({e}): the admin wipes its disk"
                ));
                false
            }
            (Err(e), _) => {
                self.fail(format!("node {id}: storage open failed: {e}"));
                false
            }
        }
    }
}
