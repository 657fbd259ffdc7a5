//! The ring election: when a node starts one, how the token travels the ring and who wins,
//! and how a node follows, leads and steps down.
//!
//! Election safety (at most one leader per epoch): a node takes part in at most one token per
//! epoch (`HardState::participated`, made durable before the token moves on), and a token wins
//! only if a majority took part; two tokens of one epoch would need two disjoint majorities.
//! The winner is the participant with the most up-to-date log (last epoch, last index, id), so
//! it holds every committed entry: each committed entry sits on a majority, which meets the
//! participants, and a participant refuses replication from older epochs once it took part.
//! The ring order itself (who gets the token next) is `core::ring`.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::cluster::encode_peer;
use super::{Amnesia, Campaign, Node, Role, Timer};
use crate::codec::{Candidate, Elected, PeerFrame, Token};
use crate::core::log::{Command, Epoch};
use crate::core::progress::Progress;
use crate::core::ring::{distance, majority, next_hop};
use crate::core::{Action, NodeId, Now};

impl Node {
    /// Plans an election at `at` plus this node's turn (see [`Node::election_delay`]).
    pub(super) fn election_after(&mut self, at: Instant) {
        let delay = self.election_delay();
        self.timers.set(Timer::Election, Some(at + delay));
    }

    /// The leader showed it is alive: it is lost if it stays silent for the failure timeout.
    pub(super) fn heard_leader(&mut self, now: Instant) {
        self.leader_heard = now;
        let loss = now + self.cfg.failure_timeout;
        self.timers.set(Timer::LeaderLoss, Some(loss));
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

    pub(super) fn candidate(&self) -> Candidate {
        Candidate {
            last_epoch: self.log.last_epoch(),
            last_index: self.log.last_index(),
            id: self.cfg.id,
        }
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

    pub(super) fn lose_leader(&mut self, now: Instant, why: &str) {
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

    pub(super) fn follow(&mut self, now: Instant, leader: NodeId) {
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

    pub(super) fn linked_to(&self, peer: NodeId) -> bool {
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

    pub(super) fn handle_token(&mut self, now: Instant, from: NodeId, mut token: Token) {
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
            self.actions.push(Action::SendPeer {
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

    pub(super) fn handle_elected(&mut self, now: Instant, e: Elected) {
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

    pub(super) fn check_majority(&mut self, now: Instant) {
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
}
