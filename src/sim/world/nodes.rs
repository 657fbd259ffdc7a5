//! Nodes: their inputs (queued while paused), timers, the driver turn (persist, then send),
//! crashes at a chosen point of a turn, restarts from storage, pauses and failing disks.

use crate::codec::{self, ClientFrame, PeerFrame};
use crate::core::{Action, Node, NodeId};
use crate::sim::faults::CrashPoint;
use crate::storage::{self, Storage};

use super::{
    client_addr, Input, NodeSide, SimNode, World, TAG_LINK, TAG_PEER, TAG_TIMER, TAG_TO_NODE,
};

impl World {
    pub(super) fn start_node(&mut self, id: NodeId) {
        let now = self.clock.now();
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
        n.peers_seen = u64::MAX;
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
        let now = self.clock.now();
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
        }
    }

    pub(super) fn node_timer(&mut self, id: NodeId) {
        let now = self.clock.now();
        let t = self.clock.micros();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(node) = n.node.as_mut() else {
            return;
        };
        if node.poll_timeout().is_some_and(|d| d <= now.mono) {
            node.handle_timeout(now);
        }
        if n.spin.0 == t {
            n.spin.1 += 1;
            if n.spin.1 > 64 {
                return self.fail(format!(
                    "node {id}: poll_timeout stays due at the same instant after handle_timeout \
                     (a busy loop)"
                ));
            }
        } else {
            n.spin = (t, 1);
        }
        self.trace.mix(TAG_TIMER);
        self.trace.mix(t ^ u64::from(id));
        self.turn(id);
    }

    /// One driver turn, in the driver's order: flush, carry out what may leave already (the
    /// core holds back what waits on durability), persist with one sync, flush, carry out the
    /// rest; again while closes give the node more to do. A pending crash strikes after the
    /// first sends, before the sync (or after the sync, before the rest).
    pub(super) fn turn(&mut self, id: NodeId) {
        let now = self.clock.now();
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
            node.flush(now);
            let early = drain_actions(node);
            let mut closed = self.carry_out(id, early);
            let Some(n) = self.nodes.get_mut(&id) else {
                return;
            };
            let SimNode {
                node,
                storage,
                crash_pending,
                ..
            } = n;
            let Some(node) = node.as_mut() else {
                return;
            };
            if let Some(point) = crash_pending.take() {
                if let Some(p) = node.to_persist() {
                    match point {
                        CrashPoint::BeforeSync => {
                            // Written, never synced: the crash loses it.
                            let _ = storage::stage(storage, &p);
                        }
                        CrashPoint::BeforeSend => {
                            let _ = storage::write(storage, &p);
                        }
                        CrashPoint::Idle => {}
                    }
                }
                return self.crash_now(id, point);
            }
            if let Some(p) = node.to_persist() {
                let token = p.token;
                match storage::write(storage, &p) {
                    Ok(()) => {
                        node.handle_persisted(now, token);
                        node.flush(now);
                    }
                    Err(e) => node.handle_persist_failed(now, e.to_string()),
                }
            }
            let actions = drain_actions(node);
            closed |= self.carry_out(id, actions);
            if !closed {
                break;
            }
        }
        self.watch_role(id);
        self.follow_membership(id);
    }

    /// Carries out `actions` of node `id`; true if one closed a connection.
    fn carry_out(&mut self, id: NodeId, actions: Vec<Action>) -> bool {
        let mut closed = false;
        for a in actions {
            match a {
                Action::SendPeer { to, bytes } => self.send_peer(id, to, bytes),
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

/// Everything the node has to carry out now.
fn drain_actions(node: &mut Node) -> Vec<Action> {
    let mut actions = Vec::new();
    while let Some(a) = node.poll_action() {
        actions.push(a);
    }
    actions
}
