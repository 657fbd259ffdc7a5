//! The cluster side of [`Node`] that is neither the election (`election.rs`) nor replication
//! (`replication.rs`): peer links and their frames, heartbeats, silent links, the timers and
//! what they trigger, each turn's flush (rounds of replication and forwarding), and status.

use std::time::Instant;

use log::{debug, info, warn};

use super::replication::Nudge;
use super::{Amnesia, Node, Peer, Role, Timer};
use crate::codec::{self, ErrorCode, Forward, Heartbeat, PeerFrame, PeerStatus, StatusReport};
use crate::core::log::Command;
use crate::core::progress::Progress;
use crate::core::{Action, ConnId, NodeId, Now};

/// Most entries compacted away that one flush drops (a turn flushes about twice): a
/// compaction's hundred thousand are freed over some 25 turns, without a pause.
const COMPACTED_DROPS_PER_FLUSH: usize = 2048;

impl Node {
    /// A peer connection is up (the driver did the handshake). A node of the cluster this one
    /// does not list becomes a guest peer while the link lasts.
    pub fn handle_peer_connected(&mut self, now: Now, peer: NodeId, client_addr: &str) {
        if peer == self.cfg.id {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        p.connected = true;
        client_addr.clone_into(&mut p.client_addr);
        // Heard from (so a link that stays silent from the start is reset too), but alive
        // only once its first heartbeat says it hears us: a peer whose frames never arrive
        // (a one-way cut) would otherwise look alive after every reset of its link, and get
        // election tokens that are lost.
        p.last_heard = Some(now.mono);
        p.hears_us = false;
        // It may have restarted without its state: it votes once a heartbeat says so.
        p.votes = false;
        if p.listed {
            info!("node {}: peer {peer} connected", self.cfg.id);
        } else {
            info!(
                "node {}: node {peer}, which this node does not list, connected as a guest",
                self.cfg.id
            );
        }
        if self.role == Role::Leader {
            // The peer may have restarted and lost what it had: learn its log afresh. A guest
            // is replicated to as well (a removed node learns it is out; a node of an entry
            // this log lacks drops it), but its acknowledgements count for nothing.
            let fresh = Progress::new(self.log.last_index(), now.mono);
            self.progress.insert(peer, fresh);
            self.commit_sent.remove(&peer);
            self.send_append(now.mono, peer, Nudge::Heartbeat);
        }
        if self.leader == Some(peer) {
            // Anything forwarded on the old link may be lost: send it all again.
            self.outbox.resend_all();
        }
        self.send_heartbeat(peer, now.mono);
    }

    /// A peer connection went down.
    pub fn handle_peer_disconnected(&mut self, now: Now, peer: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.connected {
            return;
        }
        p.connected = false;
        let guest = !p.listed;
        info!("node {}: peer {peer} disconnected", self.cfg.id);
        if let Some(pr) = self.progress.get_mut(&peer) {
            pr.reset();
        }
        if self.leader == Some(peer) && self.role != Role::Leader {
            // The quick path for a crashed leader (its sockets close at once); a hung one is
            // found by the heartbeat timeout instead.
            self.lose_leader(now.mono, "the connection to the leader closed");
        }
        if guest {
            self.peers.remove(&peer);
            self.progress.remove(&peer);
            self.commit_sent.remove(&peer);
        }
    }

    /// A frame from a connected peer.
    pub fn handle_peer_frame(&mut self, now: Now, from: NodeId, frame: PeerFrame) {
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.last_heard = Some(now.mono);
        match frame {
            PeerFrame::Hello(_) => {}
            PeerFrame::Heartbeat(h) => {
                p.load = h.load;
                p.epoch = Some(h.epoch);
                p.hears_us = h.hears_you;
                p.votes = h.hears_you;
                self.check_amnesia();
                if h.hears_you && self.role == Role::Leader {
                    self.maybe_promote(from);
                }
                if h.epoch == self.hard.epoch
                    && h.leader == Some(from)
                    && self.leader.is_none()
                    && self.role != Role::Leader
                {
                    // The announcement of this epoch's leader was lost on the way to us.
                    self.follow(now.mono, from);
                    self.leader_confirmed = true;
                } else if h.epoch == self.hard.epoch && h.leader == Some(from) {
                    // The leader is alive even while it has nothing to append (a snapshot
                    // transfer waiting on our acknowledgements).
                    self.heard_leader(now.mono);
                }
            }
            PeerFrame::Append(a) => self.handle_append(now.mono, from, a),
            PeerFrame::Snapshot(c) => self.handle_snapshot_chunk(now.mono, from, c),
            PeerFrame::Join(_) | PeerFrame::JoinReply(_) => {
                debug!(
                    "node {}: join frame from {from} on a member link ignored",
                    self.cfg.id
                );
            }
            PeerFrame::SnapshotReply(r) => self.handle_snapshot_reply(now.mono, from, r),
            PeerFrame::AppendReply(r) => self.handle_append_reply(now.mono, from, r),
            PeerFrame::Token(t) => self.handle_token(now.mono, from, t),
            PeerFrame::Elected(e) => self.handle_elected(now.mono, e),
            PeerFrame::Forward(f) => self.handle_forward(from, f),
        }
    }

    /// Runs every timer that is due. The rounds and the snapshot step are the next flush's
    /// work (every turn flushes), so their slots only wake the node.
    pub(super) fn handle_timeout(&mut self, now: Now) {
        let t = now.mono;
        let tick = self.timers.take_expired(Timer::Heartbeat, t);
        if tick {
            self.timers
                .set(Timer::Heartbeat, Some(t + self.cfg.heartbeat_interval));
            let peers: Vec<NodeId> = self.peers.keys().copied().collect();
            for p in peers {
                self.send_heartbeat(p, t);
                if self.role == Role::Leader {
                    self.send_append(t, p, Nudge::Heartbeat);
                }
            }
            self.reset_silent_links(now);
            self.check_leaderless(t);
            if self.role == Role::Leader {
                // Once per heartbeat: the lost-node check scans the sessions.
                self.check_majority(t);
                self.expire_lost_nodes(t);
                self.release_leaving(t);
            }
        }
        if self.timers.take_expired(Timer::LeaderLoss, t)
            && self.role != Role::Leader
            && self.leader.is_some()
        {
            self.lose_leader(t, "no word from the leader within the failure timeout");
        }
        if self.role != Role::Leader && self.timers.take_expired(Timer::Election, t) {
            self.start_election(now);
        }
    }

    /// Asks the shell to close and redial the links silent past the limit (see
    /// [`NodeConfig::link_silence_limit`]); they count as disconnected from now on.
    fn reset_silent_links(&mut self, now: Now) {
        if !self.cfg.reset_silent_links {
            return;
        }
        let limit = self.cfg.link_silence_limit();
        let silent: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected && p.last_heard.is_none_or(|h| now.mono >= h + limit))
            .map(|(&id, _)| id)
            .collect();
        for peer in silent {
            let reason = format!("no frame for {} ms", limit.as_millis());
            warn!(
                "node {}: link to peer {peer} silent: {reason}; closing it and dialing again",
                self.cfg.id
            );
            self.actions.push(Action::ResetPeer { to: peer, reason });
            self.handle_peer_disconnected(now, peer);
        }
    }

    /// A node that has known no leader for [`NodeConfig::leaderless_limit`] is cut off from a
    /// majority: its clients' writes would wait indefinitely, so it tells them to go to another
    /// node (and new ones, until it follows a leader again).
    fn check_leaderless(&mut self, now: Instant) {
        if self.leader.is_some() {
            self.leaderless_since = None;
            self.told_no_leader = false;
            return;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        if self.told_no_leader || now < since + self.cfg.leaderless_limit() {
            return;
        }
        self.told_no_leader = true;
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort();
        warn!(
            "node {}: no leader for {} ms; sending its {} clients to other nodes",
            self.cfg.id,
            now.duration_since(since).as_millis(),
            conns.len()
        );
        let msg = self.no_leader_message();
        for conn in conns {
            self.fail(conn, ErrorCode::NoLeader, None, msg.clone());
            self.close(conn, "no leader".into());
        }
    }

    pub(super) fn no_leader_message(&self) -> String {
        format!(
            "node {} has had no leader for over {} ms (cut off from the cluster?); \
             reconnect to another node",
            self.cfg.id,
            self.cfg.leaderless_limit().as_millis()
        )
    }

    /// The next instant [`Node::handle_timeout`] must be called.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The rounds and the snapshot encoding keep their own deadlines (they move with every
    /// flush): after one, their slots take them, for the roles that act on them.
    pub(super) fn sync_timers(&mut self) {
        let round = self.rounds.deadline().filter(|_| self.role == Role::Leader);
        let forward = self
            .forwards
            .deadline()
            .filter(|_| self.forward_to().is_some());
        let step = self.snapshot_step_due();
        self.timers.set(Timer::Round, round);
        self.timers.set(Timer::Forward, forward);
        self.timers.set(Timer::SnapshotStep, step);
    }

    /// Sends what this turn's input produced: the leader appends pending proposals and
    /// replicates; a follower forwards its proposals to the leader (both in rounds, see
    /// `core::round`). Call after the input of a loop turn and again after
    /// [`Node::handle_persisted`].
    pub(super) fn flush(&mut self, now: Now) {
        self.log.release(COMPACTED_DROPS_PER_FLUSH);
        self.maybe_snapshot();
        self.encode_snapshot_step(now.mono);
        self.sync_members(now.mono);
        match self.role {
            Role::Leader => {
                for p in self.outbox.take_unsent() {
                    self.log.append(self.hard.epoch, Some(p.id), p.command);
                }
                if self.progress.is_empty() {
                    // Alone (or left alone by a removal): no round to hold, nor a deadline.
                    self.rounds.reset(self.log.last_index());
                    return;
                }
                self.rounds.appended(now.mono, &self.log);
                let peers: Vec<NodeId> = self.progress.keys().copied().collect();
                for p in peers {
                    self.send_append(now.mono, p, Nudge::CommitNotice);
                }
                if !self.rounds.holding(now.mono) {
                    self.rounds.sent(now.mono);
                }
            }
            _ => {
                self.forwards
                    .gather(now.mono, self.outbox.fresh().map(|p| &p.command));
                let Some(leader) = self.forward_to() else {
                    return;
                };
                if self.forwards.holding(now.mono) {
                    return;
                }
                // In frames of bounded size: one frame for a long backlog could exceed the peer
                // payload limit and never get through.
                let epoch = self.hard.epoch;
                while self.outbox.has_unsent() {
                    let proposals = self.outbox.take_unsent_upto(self.cfg.max_append_bytes);
                    self.send_peer(leader, &PeerFrame::Forward(Forward { epoch, proposals }));
                }
                self.forwards.sent(now.mono);
            }
        }
    }

    /// The leader a follower would forward its unsent proposals to now, if any.
    fn forward_to(&self) -> Option<NodeId> {
        if self.role == Role::Leader {
            return None;
        }
        let leader = self.leader?;
        // Not before the leader itself has shown it leads: an Elected announcement can reach
        // us before the winner, which would drop what we forward as "not leader".
        (self.leader_confirmed
            && self.outbox.has_unsent()
            && self.peers.get(&leader).is_some_and(|p| p.connected))
        .then_some(leader)
    }

    /// This node's view of the cluster.
    pub fn status(&self, now: Now) -> StatusReport {
        let peers = self
            .peers
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                connected: p.connected,
                last_heard_ms: p
                    .last_heard
                    .map(|t| now.mono.saturating_duration_since(t).as_millis() as u64),
                match_index: self.progress.get(&id).map_or(0, |pr| pr.match_index),
            })
            .collect();
        StatusReport {
            node_id: self.cfg.id,
            role: self.role.name().into(),
            epoch: self.hard.epoch,
            leader: self.leader,
            last_index: self.log.last_index(),
            commit_index: self.log.committed(),
            applied_index: self.log.applied(),
            connections: self.conns.len() as u32,
            peers,
        }
    }

    /// A peer counts as alive while linked, heard from within the failure timeout, and (by its
    /// last heartbeat) hearing us and having its state: a token sent to a node that does not
    /// hear us is lost, and one that lost its state would only pass it on from a ring it may
    /// not know.
    pub(super) fn alive(&self, peer: NodeId, now: Instant) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.connected && p.hears_us && self.heard_recently(p, now))
    }

    fn heard_recently(&self, p: &Peer, now: Instant) -> bool {
        p.last_heard
            .is_some_and(|t| now < t + self.cfg.failure_timeout)
    }

    /// Ends the sessions of nodes silent for longer than the session timeout, and of nodes
    /// that are no peer at all any more (removed, when the leader that removed them failed
    /// before their `NodeDown` committed), so their users' device slots and presence do not
    /// stay taken by connections that no longer exist.
    fn expire_lost_nodes(&mut self, now: Instant) {
        let mut lost: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                let since = p
                    .last_heard
                    .unwrap_or(self.leader_since)
                    .max(self.leader_since);
                // Silence, not a closed link: a hung node keeps its links open.
                now >= since + self.cfg.session_timeout && !self.expiring.contains(id)
            })
            .map(|(&id, _)| id)
            .filter(|&id| !self.chat.sessions_on(id).is_empty())
            .collect();
        let due = self
            .orphans_check_at
            .unwrap_or(self.leader_since + self.cfg.session_timeout);
        if now >= due {
            self.orphans_check_at = Some(now + self.cfg.session_timeout);
            lost.extend(self.chat.session_nodes().into_iter().filter(|id| {
                *id != self.cfg.id && !self.peers.contains_key(id) && !self.expiring.contains(id)
            }));
        }
        for node in lost {
            info!(
                "node {}: node {node} lost for over {:?}: ending its sessions",
                self.cfg.id, self.cfg.session_timeout
            );
            self.expiring.insert(node);
            self.propose(Command::NodeDown { node });
        }
    }

    fn send_heartbeat(&mut self, peer: NodeId, now: Instant) {
        let Some(p) = self.peers.get(&peer).filter(|p| p.connected) else {
            return;
        };
        let hb = Heartbeat {
            epoch: self.hard.epoch,
            leader: self.leader,
            load: self.conns.len() as u32,
            // A node that takes no part in elections until it caught up (a new or wiped node)
            // may not know the ring (a wiped one knows no member at all), so a token passed
            // through it could skip the members it lacks: it asks to be skipped.
            hears_you: self.heard_recently(p, now) && self.amnesia == Amnesia::No,
        };
        self.send_peer(peer, &PeerFrame::Heartbeat(hb));
    }

    pub(super) fn send_peer(&mut self, to: NodeId, frame: &PeerFrame) {
        let bytes = encode_peer(frame);
        self.actions.push(Action::SendPeer { to, bytes });
    }
}

pub(super) fn encode_peer(frame: &PeerFrame) -> crate::core::SharedBytes {
    // Peer frames are built from our own state and bounded (Append batches by bytes), so a
    // failure here is a bug; an empty send keeps the node running and the log says why.
    match codec::encode(frame) {
        Ok(b) => b.into(),
        Err(e) => {
            log::error!("cannot encode a peer frame: {e}");
            Vec::new().into()
        }
    }
}
