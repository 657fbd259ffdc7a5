//! Nodes: their inputs (queued while paused), timers, the driver turn (persist, then send),
//! crashes at a chosen point of a turn, restarts from storage, pauses and failing disks.

use crate::codec::{self, ClientFrame, PeerFrame};
use crate::core::{Action, Node, NodeId};
use crate::sim::clock::{ms, Micros};
use crate::sim::faults::CrashPoint;
use crate::storage::{self, Storage};

/// Jobs the simulated storage holds in flight at most (as the driver's storage thread).
const MAX_IN_FLIGHT: usize = 8;
/// How long the simulated disk takes to write and sync one job, in microseconds.
const FSYNC_LATENCY: std::ops::RangeInclusive<Micros> = 50..=600;
/// Pause before storage takes writes again after a failure (as the driver's).
const STORAGE_RETRY: Micros = ms(1000);

use super::{
    client_addr, Event, Input, NodeSide, World, TAG_LINK, TAG_PEER, TAG_TIMER, TAG_TO_NODE,
};

impl World {
    pub(super) fn start_node(&mut self, id: NodeId) {
        let now = self.now_of(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let recovered = match n.storage.load() {
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
            Input::Frame(conn, bytes) => {
                if self
                    .conns
                    .get(&conn)
                    .is_none_or(|ci| ci.node_side != NodeSide::Open)
                {
                    return;
                }
                self.trace.event(TAG_TO_NODE, t, &bytes);
                match codec::decode::<ClientFrame>(&bytes) {
                    Ok(Some((frame, _))) => node.handle_frame(now, conn, frame),
                    other => self.fail(format!("undecodable client frame: {other:?}")),
                }
            }
            Input::Closed(conn) => {
                if let Some(ci) = self.conns.get_mut(&conn) {
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
        let (Some(node), Some(job)) = (n.node.as_mut(), n.in_flight.pop_front()) else {
            return;
        };
        match storage::write(&mut n.storage, &job) {
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
    /// pending crash strikes with the jobs in flight written but not synced (`BeforeSync`), or
    /// synced but not reported (`BeforeSend`), before the turn's sends leave.
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
                let done = n.disk_busy_until.max(micros) + self.rng.u64(FSYNC_LATENCY);
                n.disk_busy_until = done;
                let input = Input::Persisted {
                    restarts: n.restarts,
                };
                self.schedule(done, Event::Input { node: id, input });
            }
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            if let Some(point) = n.crash_pending.take() {
                for job in &n.in_flight {
                    let _ = match point {
                        // Written, never synced: the crash loses it.
                        CrashPoint::BeforeSync => storage::stage(&mut n.storage, job),
                        CrashPoint::BeforeSend => storage::write(&mut n.storage, job),
                        CrashPoint::Idle => Ok(()),
                    };
                }
                return self.crash_now(id, point);
            }
            let closed = self.carry_out(id, ready.actions);
            self.follow_membership(id, ready.peers, ready.removed);
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
        if n.storage.is_failing() {
            n.storage.set_failing(false);
            if n.node.is_some() && !n.paused {
                self.turn(id);
            }
        }
    }

    /// Makes every write of the node's storage fail until [`World::disk_works`].
    pub fn fail_disk(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.storage.set_failing(true);
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
        n.storage.crash();
        n.paused = false;
        n.backlog.clear();
        n.crash_pending = None;
        n.last_view = None;
        n.deadline = None;
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
        let wiped = std::mem::take(&mut n.wiped);
        self.note(format!("node {id}: RESTART"));
        if wiped {
            self.rejoin_after_wipe(id);
        }
        self.start_node(id);
        self.reconnect_links_of(id);
    }
}
