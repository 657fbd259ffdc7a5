//! The cluster half of [`Node`]: peer links, heartbeats, the ring election, log replication and
//! commit, and the timers that drive them.
//!
//! Election safety (at most one leader per epoch): a node takes part in at most one token per
//! epoch (`HardState::participated`, made durable before the token moves on), and a token wins
//! only if a majority took part; two tokens of one epoch would need two disjoint majorities.
//! The winner is the participant with the most up-to-date log (last epoch, last index, id), so
//! it holds every committed entry: each committed entry sits on a majority, which meets the
//! participants, and a participant refuses replication from older epochs once it took part.
//! A leader commits only entries of its own epoch by counting (older ones commit under them).
//! A follower may too, by the same rule: an entry of the leader's epoch that it and the leader
//! hold durably, when the two are a majority of every configuration it holds (three nodes);
//! the leader's Appends say how far its own log is durable (`commit_durable_pair`).

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::{Amnesia, Campaign, Held, Node, Peer, Role, Timer};
use crate::codec::{
    self, Append, AppendReply, Candidate, Elected, ErrorCode, Forward, Heartbeat, PeerFrame,
    PeerStatus, StatusReport, Token,
};
use crate::core::election::{distance, majority, next_hop};
use crate::core::log::{Command, Epoch, LogIndex};
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

    /// Leader: appends proposals a follower forwarded for this epoch. Not those of a node
    /// this configuration retires (a removed node that has not learned it yet, linked as a
    /// guest): a session it opened now would outlive the `NodeDown` its removal proposed, and
    /// its clients resume elsewhere once it stops.
    fn handle_forward(&mut self, from: NodeId, f: Forward) {
        let retired = self.log.configs().current().retired.contains(&from);
        if self.role == Role::Leader && f.epoch == self.hard.epoch && !retired {
            for p in f.proposals {
                self.log.append(self.hard.epoch, Some(p.id), p.command);
            }
            return;
        }
        debug!(
            "node {}: dropped {} proposals forwarded by {from} for epoch {} (not its leader, or \
             {from} is removed)",
            self.cfg.id,
            f.proposals.len(),
            f.epoch
        );
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

    /// Plans an election at `at` plus this node's turn (see [`Node::election_delay`]).
    pub(super) fn election_after(&mut self, at: Instant) {
        let delay = self.election_delay();
        self.timers.set(Timer::Election, Some(at + delay));
    }

    /// The leader showed it is alive: it is lost if it stays silent for the failure timeout.
    fn heard_leader(&mut self, now: Instant) {
        self.leader_heard = now;
        let loss = now + self.cfg.failure_timeout;
        self.timers.set(Timer::LeaderLoss, Some(loss));
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
            self.actions
                .push_back(Action::ResetPeer { to: peer, reason });
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

    /// Ends the abstention of a node that started without state: once it applied what the
    /// leader had committed when it first heard from it, or once enough of the other nodes
    /// report epoch 0 that they must include one of every past election's participants (who
    /// would report a later epoch): then the whole cluster is new. Its own empty state proves
    /// nothing, since it may have been wiped.
    pub(super) fn check_amnesia(&mut self) {
        let done = match self.amnesia {
            Amnesia::No => return,
            Amnesia::CatchingUpTo(index) => self.log.applied() >= index,
            Amnesia::Unknown => {
                // Members only: new nodes joining (or guests) report epoch 0 too.
                let fresh = self
                    .peers
                    .iter()
                    .filter(|(id, p)| self.members.contains(id) && p.epoch == Some(0))
                    .count();
                let heard_newer = self.peers.values().any(|p| p.epoch.is_some_and(|e| e > 0));
                let n = self.members.len();
                self.is_member() && !heard_newer && fresh + majority(n) > n
            }
        };
        if done {
            info!(
                "node {}: may take part in elections ({:?} resolved)",
                self.cfg.id, self.amnesia
            );
            self.amnesia = Amnesia::No;
            self.hard.amnesiac = false;
            // It may have taken part in elections before it lost its state, and forgot which:
            // never again in an epoch it now knows of (a second vote there could make a second
            // majority, and a second leader, for one epoch).
            let heard = self.highest_peer_epoch();
            self.hard.participated = self.hard.participated.max(self.hard.epoch).max(heard);
            self.hard_version += 1;
        }
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            last_epoch: self.log.last_epoch(),
            last_index: self.log.last_index(),
            id: self.cfg.id,
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

    /// How long to wait before starting an election: the dead leader's ring successor goes first,
    /// the others a heartbeat later each, plus jitter, so elections rarely collide.
    pub(super) fn election_delay(&mut self) -> Duration {
        let hb = self.cfg.heartbeat_interval;
        let Some(&first) = self.members.first() else {
            return hb;
        };
        let from = self.leader.unwrap_or(first);
        // The successor has rank 0 and `from` itself (distance 0) the last rank: with no
        // leader known, `from` is a live member and must not tie with its successor.
        let n = self.members.len();
        let mut rank = ((distance(&self.members, from, self.cfg.id) + n - 1) % n) as u32;
        if self.leader.is_some() && !self.leader_confirmed {
            // The leader never showed it leads: most likely the election named a node that
            // declined (the participants were no majority of its configuration, which an
            // initiator with an older one cannot tell). In ring order the same initiator
            // would go first again, and fail the same way, for ever: draw the order instead.
            rank = self.rng.u32(0..n as u32);
        }
        hb * rank + hb.mul_f64(self.rng.f64())
    }

    fn lose_leader(&mut self, now: Instant, why: &str) {
        info!(
            "node {}: leader {:?} of epoch {} lost: {why}",
            self.cfg.id, self.leader, self.hard.epoch
        );
        let delay = self.election_delay();
        self.leader = None;
        self.outbox.resend_all();
        self.timers.set(Timer::LeaderLoss, None);
        self.timers.set(Timer::Election, Some(now + delay));
    }

    fn follow(&mut self, now: Instant, leader: NodeId) {
        if self.leader != Some(leader) {
            info!(
                "node {}: following leader {leader} in epoch {}",
                self.cfg.id, self.hard.epoch
            );
            self.outbox.resend_all();
            self.leader_confirmed = false;
        }
        self.role = Role::Follower;
        self.leader = Some(leader);
        self.election = None;
        self.progress.clear();
        self.heard_leader(now);
        self.timers
            .set(Timer::Election, Some(now + self.cfg.election_timeout()));
    }

    /// Moves to a newer epoch (durably); whoever led or campaigned before stops.
    pub(super) fn observe_epoch(&mut self, epoch: Epoch, now: Instant) {
        if epoch <= self.hard.epoch {
            return;
        }
        self.hard.epoch = epoch;
        self.hard_version += 1;
        if self.role != Role::Follower {
            info!(
                "node {}: stepping down: epoch {epoch} is newer",
                self.cfg.id
            );
            self.role = Role::Follower;
            self.progress.clear();
            self.election = None;
        }
        if self.leader.is_some() {
            self.leader = None;
            self.outbox.resend_all();
        }
        self.election_after(now + self.cfg.failure_timeout);
    }

    /// Starts a pre-election: a token that goes around the ring changing nothing, to learn
    /// whether a majority would take part. Only then does the real election raise the epoch,
    /// so a node that is cut off (or behind a one-way fault) never inflates epochs that would
    /// later depose a healthy leader.
    pub(super) fn start_election(&mut self, now: Now) {
        let t = now.mono;
        self.election_after(t + self.cfg.election_timeout());
        if self.amnesia != Amnesia::No || self.storage_error.is_some() || !self.is_member() {
            return;
        }
        let reachable = 1 + self
            .members
            .iter()
            .filter(|&&p| p != self.cfg.id && self.alive(p, t))
            .count();
        if reachable < majority(self.members.len()) {
            return;
        }
        // Above every epoch a peer reported too: a node that took part in a later election
        // (one that failed) passes tokens of earlier epochs on without taking part, and an
        // initiator that never learned of it would propose the same epoch for ever.
        let heard = self.highest_peer_epoch();
        let epoch = self.hard.epoch.max(self.hard.participated).max(heard) + 1;
        self.election = Some(Campaign { epoch, pre: true });
        debug!("node {}: pre-election for epoch {epoch}", self.cfg.id);
        self.send_token(t, epoch, true);
    }

    /// The real election, after a pre-election found a majority willing.
    fn start_real_election(&mut self, now: Instant, epoch: Epoch) {
        self.hard.epoch = epoch;
        self.hard.participated = epoch;
        self.hard_version += 1;
        self.role = Role::Candidate;
        if self.leader.take().is_some() {
            self.outbox.resend_all();
        }
        self.election = Some(Campaign { epoch, pre: false });
        self.progress.clear();
        self.election_after(now + self.cfg.election_timeout());
        info!(
            "node {}: starting an election for epoch {epoch}",
            self.cfg.id
        );
        self.send_token(now, epoch, false);
    }

    fn send_token(&mut self, now: Instant, epoch: Epoch, pre: bool) {
        self.revisited.clear();
        let token = Token {
            epoch,
            pre,
            initiator: self.cfg.id,
            best: self.candidate(),
            participants: vec![self.cfg.id],
        };
        self.pass_token(now, token);
    }

    /// Sends the token to the next live node on the ring (a real token only once our
    /// participation is durable), or completes it here when no one else is reachable.
    fn pass_token(&mut self, now: Instant, token: Token) {
        let home = token.initiator;
        let ring = self.token_ring(now, home);
        let mut next = next_hop(&ring, self.cfg.id, home, |p| self.alive(p, now));
        if next == Some(home) && home != self.cfg.id && !self.linked_to(home) {
            // The initiator is next but not linked to this node (neither lists the other: they
            // hold different configurations). Rather than lose the token, send it on past the
            // initiator: a node that already passed it sends it home (see handle_token).
            next = self.after_home(&ring, home, now).or(next);
        }
        match next {
            Some(to) => {
                self.token_passed = Some((token.epoch, home, token.pre, now));
                let bytes = encode_peer(&PeerFrame::Token(token));
                self.hold(Action::SendPeer { to, bytes });
            }
            None if token.initiator == self.cfg.id => self.finish_election(now, token),
            None => debug!(
                "node {}: token for epoch {} has nowhere to go",
                self.cfg.id, token.epoch
            ),
        }
    }

    /// True when this node passed this very token on moments ago: it comes back after a
    /// detour past its initiator. (A retry of the same election by the initiator looks the
    /// same, but comes a failure timeout later at the earliest.)
    fn passed_lately(&self, now: Instant, token: &Token) -> bool {
        self.token_passed.is_some_and(|(epoch, home, pre, at)| {
            (epoch, home, pre) == (token.epoch, token.initiator, token.pre)
                && now < at + self.cfg.failure_timeout / 2
        })
    }

    /// The first live node after `home` on `ring`, other than this one.
    fn after_home(&self, ring: &[NodeId], home: NodeId, now: Instant) -> Option<NodeId> {
        let at = ring.iter().position(|&m| m == home)?;
        (1..ring.len())
            .map(|k| ring[(at + k) % ring.len()])
            .find(|&c| c != self.cfg.id && self.alive(c, now))
    }

    fn linked_to(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected)
    }

    /// The ring a token goes round from here: the members of this node's configuration, and
    /// also this node (outside its configuration while joining or being removed, it still
    /// passes tokens on from its place), the initiator, and every live guest (a node this one
    /// does not list, most likely of a configuration this log lacks). A node that missed
    /// the entry adding a node would otherwise skip it, and the token would end at the
    /// initiator without the members this node does not know; with the initiator on every
    /// ring, each hop moves on towards it, so the walk ends there. Who gets the token changes
    /// only who takes part: the winner still leads only with a majority of its own
    /// configuration.
    fn token_ring(&self, now: Instant, initiator: NodeId) -> Vec<NodeId> {
        let guests = self
            .peers
            .iter()
            .filter(|&(&id, p)| !p.listed && self.alive(id, now))
            .map(|(&id, _)| id);
        let mut ring: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .chain([self.cfg.id, initiator])
            .chain(guests)
            .collect();
        ring.sort_unstable();
        ring.dedup();
        ring
    }

    /// The highest epoch a peer reported (0 when none did).
    fn highest_peer_epoch(&self) -> Epoch {
        self.peers
            .values()
            .filter_map(|p| p.epoch)
            .max()
            .unwrap_or(0)
    }

    /// True when this node's log may make it the winner of an election it takes part in: its
    /// configuration has it or retires it. Any node that has its state takes part, whatever
    /// its configuration (as a Raft server votes), since the others may need it: a member
    /// that lacks the entry adding it, or a removed node whose removal may not be committed.
    /// A removed node that wins leads with a majority of the others and stops once its
    /// removal commits, as a leader removing itself does. A newcomer whose log lacks the entry
    /// adding it is counted but never named: it would lead a configuration without itself.
    /// That is safe: its log is never the only one of a majority that holds a committed entry
    /// (a node whose log holds a configuration with it has it in every later one, or retired;
    /// the one exception, an entry committed by a leader whose newer configuration adds it,
    /// leaves the rest of that majority, a majority of the configuration before).
    fn may_win(&self) -> bool {
        let current = self.log.configs().current();
        current.has(self.cfg.id) || current.retired.contains(&self.cfg.id)
    }

    /// Why this node would not take part in an election for `epoch` (None: it would).
    fn decline_reason(&self, now: Instant, epoch: Epoch) -> Option<&'static str> {
        if self.storage_error.is_some() {
            return Some("its storage is failing");
        }
        if epoch <= self.hard.participated {
            return Some("it already took part in that epoch or a later one");
        }
        if self.amnesia != Amnesia::No {
            return Some("it has not caught up since it lost its state");
        }
        let has_live_leader = match self.role {
            Role::Leader => self.majority_acked(now),
            _ => self.leader.is_some() && now < self.leader_heard + self.cfg.failure_timeout,
        };
        // A node that merely lost sight of a healthy leader must not depose it.
        has_live_leader.then_some("its leader is alive")
    }

    fn handle_token(&mut self, now: Instant, from: NodeId, mut token: Token) {
        let home = token.initiator;
        if home == self.cfg.id {
            return self.finish_election(now, token);
        }
        if self.passed_lately(now, &token) {
            // Back again: it went on past an initiator that a node could not reach. Straight
            // home if linked to it (without taking part twice), else it ends here.
            if self.linked_to(home) {
                let bytes = encode_peer(&PeerFrame::Token(token));
                self.hold(Action::SendPeer { to: home, bytes });
            }
            return;
        }
        if let Some(why) = self.decline_reason(now, token.epoch) {
            // Passed on unchanged rather than dropped, so the initiator learns at once that
            // the election cannot win instead of waiting for its timeout.
            debug!(
                "node {}: not taking part in the {}election of epoch {} from {from}: {why}",
                self.cfg.id,
                if token.pre { "pre-" } else { "" },
                token.epoch
            );
            return self.pass_token(now, token);
        }
        if !token.pre {
            self.observe_epoch(token.epoch, now);
            self.hard.participated = token.epoch;
            self.hard_version += 1;
            debug!(
                "node {}: took part in the election of epoch {}",
                self.cfg.id, token.epoch
            );
        }
        token.participants.push(self.cfg.id);
        if self.may_win() {
            token.best = token.best.max(self.candidate());
        }
        self.pass_token(now, token);
    }

    fn finish_election(&mut self, now: Instant, token: Token) {
        let campaign = Campaign {
            epoch: token.epoch,
            pre: token.pre,
        };
        if self.election != Some(campaign) {
            return;
        }
        let stale = if token.pre {
            self.hard.epoch.max(self.hard.participated) >= token.epoch
        } else {
            self.hard.epoch != token.epoch || self.role != Role::Candidate
        };
        if stale {
            return;
        }
        if let Some(m) = self.skipped_member(now, &token) {
            // A node on the way did not know (or could not reach) this member: most likely a
            // stale guest whose configuration this log replaced. Without it the participants
            // may be no majority here, election after election. It comes back here after.
            debug!(
                "node {}: token of epoch {} came home without member {m}; sending it there",
                self.cfg.id, token.epoch
            );
            self.revisited.push(m);
            let bytes = encode_peer(&PeerFrame::Token(token));
            return self.hold(Action::SendPeer { to: m, bytes });
        }
        self.election = None;
        let need = majority(self.members.len());
        if token.participants.len() < need {
            info!(
                "node {}: {}election for epoch {} failed: {} of {need} needed would take part",
                self.cfg.id,
                if token.pre { "pre-" } else { "" },
                token.epoch,
                token.participants.len()
            );
            if self.role == Role::Candidate {
                self.role = Role::Follower;
            }
            self.election_after(now + self.cfg.failure_timeout);
            return;
        }
        if token.pre {
            return self.start_real_election(now, token.epoch);
        }
        let elected = Elected {
            epoch: token.epoch,
            leader: token.best.id,
            participants: token.participants,
        };
        info!(
            "node {}: epoch {} elected node {} ({:?} took part)",
            self.cfg.id, elected.epoch, elected.leader, elected.participants
        );
        let bytes = encode_peer(&PeerFrame::Elected(elected.clone()));
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for to in peers {
            self.actions.push_back(Action::SendPeer {
                to,
                bytes: bytes.clone(),
            });
        }
        self.handle_elected(now, elected);
    }

    /// A live member of this node's configuration that the token came home without, and was
    /// not sent to since (once each: one that declines passes it back).
    fn skipped_member(&self, now: Instant, token: &Token) -> Option<NodeId> {
        self.members.iter().copied().find(|&m| {
            m != self.cfg.id
                && !token.participants.contains(&m)
                && !self.revisited.contains(&m)
                && self.alive(m, now)
        })
    }

    fn handle_elected(&mut self, now: Instant, e: Elected) {
        if e.epoch < self.hard.epoch
            || (e.epoch == self.hard.epoch && self.leader == Some(e.leader))
        {
            return;
        }
        self.observe_epoch(e.epoch, now);
        if e.leader != self.cfg.id {
            return self.follow(now, e.leader);
        }
        if self.hard.participated != e.epoch {
            warn!(
                "node {}: named leader of epoch {} without taking part; ignored",
                self.cfg.id, e.epoch
            );
            return;
        }
        // The initiator counted the participants in its own configuration, which may be
        // older than ours (it missed changes): like a Raft candidate counting votes, lead
        // only with a majority of our configuration (we hold the newest log among them).
        let ours = e
            .participants
            .iter()
            .filter(|p| self.members.contains(p))
            .count();
        if ours < majority(self.members.len()) {
            info!(
                "node {}: named leader of epoch {} by {:?}, not a majority of members {:?}; \
                 declined",
                self.cfg.id, e.epoch, e.participants, self.members
            );
            return;
        }
        self.become_leader(now);
    }

    fn become_leader(&mut self, now: Instant) {
        info!(
            "node {}: leading epoch {} from log index {}",
            self.cfg.id,
            self.hard.epoch,
            self.log.last_index()
        );
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.election = None;
        self.timers.set(Timer::Election, None);
        self.timers.set(Timer::LeaderLoss, None);
        self.incoming = None;
        let last = self.log.last_index();
        self.progress = self
            .peers
            .keys()
            .map(|&p| (p, Progress::new(last, now)))
            .collect();
        self.commit_sent.clear();
        self.rounds.reset(self.log.last_index());
        self.expiring.clear();
        self.orphans_check_at = None;
        self.leader_since = now;
        // Entries of earlier epochs commit only under an entry of this one.
        self.log.append(self.hard.epoch, None, Command::Noop);
        self.log_initial_config();
        self.outbox.resend_all();
        self.timers.set(Timer::Heartbeat, Some(now));
    }

    /// True while a majority (this leader included) answered within the failure timeout.
    fn majority_acked(&self, now: Instant) -> bool {
        let acked = self
            .progress
            .iter()
            .filter(|(id, p)| {
                self.members.contains(id) && now < p.last_ack + self.step_down_after()
            })
            .count();
        acked + usize::from(self.is_member()) >= majority(self.members.len())
    }

    /// A leader steps down before a new leader can be elected elsewhere: followers wait the
    /// whole failure timeout without word from it, the leader gives up a heartbeat earlier.
    fn step_down_after(&self) -> Duration {
        self.cfg
            .failure_timeout
            .saturating_sub(self.cfg.heartbeat_interval)
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

    fn check_majority(&mut self, now: Instant) {
        if !self.majority_acked(now) {
            self.step_down(now, "a majority stopped answering");
        }
    }

    /// Stops leading (or campaigning) in the current epoch and waits for another leader.
    pub(super) fn step_down(&mut self, now: Instant, why: &str) {
        warn!(
            "node {}: stepping down from epoch {}: {why}",
            self.cfg.id, self.hard.epoch
        );
        self.role = Role::Follower;
        self.leader = None;
        self.election = None;
        self.progress.clear();
        self.outbox.resend_all();
        self.election_after(now + self.cfg.failure_timeout);
    }

    /// A frame from `from` claiming leadership of `epoch`: follow it unless the epoch is stale
    /// (returns false then).
    pub(super) fn accept_leader(&mut self, now: Instant, from: NodeId, epoch: Epoch) -> bool {
        if epoch < self.hard.epoch {
            return false;
        }
        self.observe_epoch(epoch, now);
        if self.leader != Some(from) || self.role != Role::Follower {
            self.follow(now, from);
        }
        self.leader_confirmed = true;
        self.heard_leader(now);
        self.timers
            .set(Timer::Election, Some(now + self.cfg.election_timeout()));
        true
    }

    fn handle_append(&mut self, now: Instant, from: NodeId, a: Append) {
        if !self.accept_leader(now, from, a.epoch) {
            let reply = AppendReply {
                epoch: self.hard.epoch,
                ok: false,
                index: self.log.last_index(),
            };
            return self.send_peer(from, &PeerFrame::AppendReply(reply));
        }
        if self.storage_error.is_some() && !a.entries.is_empty() {
            // Entries we cannot store would only pile up in memory: the leader probes again
            // from our last entry until storage works. (No commit either: nothing here says
            // our log matches the leader's.)
            let reply = AppendReply {
                epoch: self.hard.epoch,
                ok: false,
                index: self.log.last_index().min(a.prev_index),
            };
            return self.send_peer(from, &PeerFrame::AppendReply(reply));
        }
        // Below our snapshot everything is committed, so it matches any later leader's log.
        let covered = a.prev_index < self.log.snapshot_index();
        if !covered && self.log.epoch_at(a.prev_index) != Some(a.prev_epoch) {
            let hint = self.log.last_index().min(a.prev_index.saturating_sub(1));
            let reply = AppendReply {
                epoch: self.hard.epoch,
                ok: false,
                index: hint,
            };
            return self.send_peer(from, &PeerFrame::AppendReply(reply));
        }
        if let Err(index) = self.log.merge(&a.entries) {
            warn!(
                "node {}: leader {from} would overwrite committed entry {index}; refused",
                self.cfg.id
            );
            let reply = AppendReply {
                epoch: self.hard.epoch,
                ok: false,
                index: index.saturating_sub(1),
            };
            return self.send_peer(from, &PeerFrame::AppendReply(reply));
        }
        self.sync_members(now);
        let matched = (a.prev_index + a.entries.len() as LogIndex).max(self.log.snapshot_index());
        self.log.commit_to(a.commit.min(matched));
        if self.leader_durable.0 != a.epoch {
            self.leader_durable = (a.epoch, 0);
        }
        self.leader_durable.1 = self.leader_durable.1.max(a.durable.min(matched));
        self.apply_committed();
        // After applying: a configuration entry just applied may make the pair a majority.
        self.commit_durable_pair();
        if self.amnesia == Amnesia::Unknown {
            self.amnesia = Amnesia::CatchingUpTo(a.commit);
        }
        self.check_amnesia();
        let reply = AppendReply {
            epoch: self.hard.epoch,
            ok: true,
            index: matched,
        };
        let bytes = encode_peer(&PeerFrame::AppendReply(reply));
        self.hold_until(matched, Action::SendPeer { to: from, bytes });
    }

    /// Leader: a follower's answer of `epoch` arrived; true when it is for this leadership
    /// (its progress then counts it as alive). A newer epoch deposes this leader.
    pub(super) fn answer_from(&mut self, now: Instant, from: NodeId, epoch: Epoch) -> bool {
        if epoch > self.hard.epoch {
            self.observe_epoch(epoch, now);
            return false;
        }
        if self.role != Role::Leader || epoch < self.hard.epoch {
            return false;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return false;
        };
        pr.last_ack = now;
        true
    }

    fn handle_append_reply(&mut self, now: Instant, from: NodeId, r: AppendReply) {
        if !self.answer_from(now, from, r.epoch) {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        if r.ok {
            pr.matched(r.index);
            let durable_sent = pr.durable_sent;
            self.maybe_commit();
            self.note_pair_commit(from, r.index.min(durable_sent));
            self.maybe_promote(from);
        } else {
            pr.rejected(r.index);
        }
        self.send_append(now, from, Nudge::EntriesOnly);
    }

    /// Commits the highest index a majority stores, if it is of this leader's epoch.
    pub(super) fn maybe_commit(&mut self) {
        let mut matched: Vec<LogIndex> = self
            .progress
            .iter()
            .filter(|(id, _)| self.members.contains(id))
            .map(|(_, p)| p.match_index)
            .collect();
        if self.is_member() {
            matched.push(self.log.persisted());
        }
        if matched.len() < majority(self.members.len()) {
            return;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let n = matched[majority(self.members.len()) - 1];
        if n > self.log.committed() && self.log.epoch_at(n) == Some(self.hard.epoch) {
            self.log.commit_to(n);
            self.apply_committed();
        }
    }

    /// Follower: commits what it stores durably of its leader's epoch that the leader said
    /// it stores durably too, when the two of them are a majority of every configuration
    /// held (a cluster of three). The commit notice would only tell it so a round trip later.
    pub(super) fn commit_durable_pair(&mut self) {
        let (epoch, durable) = self.leader_durable;
        let Some(leader) = self.leader else { return };
        if self.role != Role::Follower || epoch != self.hard.epoch {
            return;
        }
        let index = durable.min(self.log.persisted());
        if index > self.log.committed()
            && self.log.epoch_at(index) == Some(epoch)
            && self.log.configs().pair_is_majority(self.cfg.id, leader)
        {
            self.log.commit_to(index);
            self.apply_committed();
        }
    }

    /// Leader: `peer` stores up to `index`, which it knows to be durable here too, so by
    /// [`Node::commit_durable_pair`] it committed what of that this leader committed: it needs
    /// no commit notice for it.
    fn note_pair_commit(&mut self, peer: NodeId, index: LogIndex) {
        let known = index.min(self.log.committed());
        let sent = self.commit_sent.get(&peer).copied().unwrap_or(0);
        // The follower checks every configuration from its applied index on: while it may not
        // have applied the newest, it may hold one where the two are no majority.
        let same_configs = self.log.configs().last_index() <= sent;
        if same_configs
            && self.log.epoch_at(known) == Some(self.hard.epoch)
            && self.log.configs().pair_is_majority(self.cfg.id, peer)
        {
            let sent = self.commit_sent.entry(peer).or_default();
            *sent = (*sent).max(known);
        }
    }

    /// Sends `peer` what it lacks: pipelined entries within the window, one probe at a time
    /// while its position is unknown, and an empty append to carry a new commit index (or as
    /// a heartbeat when `force`).
    fn send_append(&mut self, now: Instant, peer: NodeId, nudge: Nudge) {
        let force = nudge == Nudge::Heartbeat;
        if !self.peers.get(&peer).is_some_and(|p| p.connected) {
            return;
        }
        let Some(pr) = self.progress.get(&peer).cloned() else {
            return;
        };
        if pr.next_index <= self.log.snapshot_index() {
            // The entries it needs are compacted away: it gets the snapshot instead.
            return self.send_snapshot(now, peer);
        }
        let commit = self.log.committed();
        let last = self.log.last_index();
        let mut next = pr.next_index;
        let mut sent = false;
        if pr.probing {
            if pr
                .probe_sent
                .is_some_and(|t| now < t + self.cfg.heartbeat_interval)
                && !force
            {
                return;
            }
            self.send_entries(peer, next, commit, self.cfg.max_append_entries);
            if let Some(p) = self.progress.get_mut(&peer) {
                p.probe_sent = Some(now);
            }
            sent = true;
        } else {
            let linger = !force && self.rounds.holding(now);
            while next <= last && next - pr.match_index - 1 < self.cfg.replication_window {
                if linger && self.partial_batch(next) {
                    break;
                }
                next += self.send_entries(peer, next, commit, self.cfg.max_append_entries);
                sent = true;
            }
            if let Some(p) = self.progress.get_mut(&peer) {
                p.next_index = next;
            }
        }
        let commit_news = self.commit_sent.get(&peer).is_none_or(|&c| c < commit);
        // Commit news goes out even while entries are held: the writers the round waits for
        // may be waiting for the deliveries it releases.
        if !sent && (force || (nudge == Nudge::CommitNotice && commit_news)) {
            self.send_entries(peer, next, commit, 0);
            sent = true;
        }
        if sent {
            self.commit_sent.insert(peer, commit);
        }
    }

    /// True when the entries from `from` to the end of the log fit in one Append with room to
    /// spare: a follower that is further behind gets full Appends at once.
    fn partial_batch(&self, from: LogIndex) -> bool {
        let (max, max_bytes) = (self.cfg.max_append_entries, self.cfg.max_append_bytes);
        let unsent = self.log.last_index() + 1 - from;
        unsent < max as u64 && self.log.slice(from, max, max_bytes).len() as u64 == unsent
    }

    /// Sends one Append starting at `from` with up to `max` entries (0: an empty one, for a
    /// heartbeat or a commit notice); returns how many entries it carried.
    fn send_entries(&mut self, peer: NodeId, from: LogIndex, commit: LogIndex, max: usize) -> u64 {
        let prev_index = from - 1;
        let prev_epoch = self.log.epoch_at(prev_index).unwrap_or(0);
        let entries = self.log.slice(from, max, self.cfg.max_append_bytes);
        let n = entries.len() as u64;
        let last = prev_index + n;
        // After our own sync, the Append can say that all it names is durable here.
        let hold = self.cfg.replicate_after_persist;
        let durable = if hold {
            self.log.persisted().max(last)
        } else {
            self.log.persisted()
        };
        let epoch = self.hard.epoch;
        match codec::encode_append(epoch, prev_index, prev_epoch, commit, durable, entries) {
            Ok(bytes) => {
                if let Some(p) = self.progress.get_mut(&peer) {
                    p.durable_sent = p.durable_sent.max(durable);
                }
                let action = Action::SendPeer {
                    to: peer,
                    bytes: bytes.into(),
                };
                if hold {
                    // Also an empty one, so it cannot overtake the entries before it.
                    self.hold_as_leader(last, action);
                } else {
                    self.actions.push_back(action);
                }
            }
            // Batches are bounded far below the frame limit, so this is a bug: say so and
            // keep the node running; the entries go again with the next probe.
            Err(e) => log::error!(
                "node {}: cannot encode an Append for {peer}: {e}",
                self.cfg.id
            ),
        }
        n
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
        self.actions.push_back(Action::SendPeer { to, bytes });
    }

    /// Queues an action that must wait until the current election state is durable.
    fn hold(&mut self, action: Action) {
        self.hold_until(0, action);
    }

    /// Queues an action that must wait until the election state and the log up to `index`
    /// are durable.
    pub(super) fn hold_until(&mut self, index: LogIndex, action: Action) {
        self.hold_with(index, action, None);
    }

    /// [`Node::hold_until`] for what a leader sends as leader of this epoch: dropped instead
    /// if it no longer leads it by then (its storage failed, say; its Appends would make
    /// followers wait on a leader that is gone).
    fn hold_as_leader(&mut self, index: LogIndex, action: Action) {
        self.hold_with(index, action, Some(self.hard.epoch));
    }

    fn hold_with(&mut self, index: LogIndex, action: Action, leading: Option<Epoch>) {
        if self.hard_persisted >= self.hard_version && self.log.persisted() >= index {
            self.actions.push_back(action);
        } else {
            self.held.push(Held {
                hard_version: self.hard_version,
                index,
                action,
                leading,
            });
        }
    }
}

/// Why `send_append` is called, which decides whether an Append without entries goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nudge {
    /// Heartbeat (or a new link): always send, empty if need be.
    Heartbeat,
    /// End of a loop turn: an empty Append carries a commit index the peer has not seen.
    CommitNotice,
    /// After a reply: only entries; commit news waits for the end of the turn, so a burst of
    /// replies does not become a burst of notices.
    EntriesOnly,
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
