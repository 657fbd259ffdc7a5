//! Log replication and commit: the leader streams entries to each follower (pipelined within
//! a window), followers append and acknowledge once durable, and what a majority holds durably
//! commits. Sends that depend on durable state are held until it is (`hold_*`).
//!
//! A leader commits only entries of its own epoch by counting (older ones commit under them).
//! A follower may too, by the same rule: an entry of the leader's epoch that it and the leader
//! hold durably, when the two are a majority of every configuration it holds (three nodes);
//! the leader's Appends say how far its own log is durable (`commit_durable_pair`).

use std::time::Instant;

use log::{debug, warn};

use super::cluster::encode_peer;
use super::{Amnesia, Held, Node, Role};
use crate::codec::{self, Append, AppendReply, Forward, PeerFrame};
use crate::core::log::{Epoch, LogIndex};
use crate::core::ring::majority;
use crate::core::{Action, NodeId};

impl Node {
    /// Leader: appends proposals a follower forwarded for this epoch. Not those of a node
    /// this configuration retires (a removed node that has not learned it yet, linked as a
    /// guest): a session it opened now would outlive the `NodeDown` its removal proposed, and
    /// its clients resume elsewhere once it stops.
    pub(super) fn handle_forward(&mut self, from: NodeId, f: Forward) {
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

    pub(super) fn handle_append(&mut self, now: Instant, from: NodeId, a: Append) {
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

    pub(super) fn handle_append_reply(&mut self, now: Instant, from: NodeId, r: AppendReply) {
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
    pub(super) fn send_append(&mut self, now: Instant, peer: NodeId, nudge: Nudge) {
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
        // With a disk, Appends leave before this leader's own sync, so they cannot say the
        // entries are durable here: once the sync is done, a follower that forms a majority
        // with this leader hears it at once and commits on its own (`commit_durable_pair`), a
        // round trip before the commit notice would reach it.
        let persisted = self.log.persisted();
        let durable_news = pr.durable_sent < persisted
            && persisted > commit
            && self.log.configs().pair_is_majority(self.cfg.id, peer);
        // Commit news goes out even while entries are held: the writers the round waits for
        // may be waiting for the deliveries it releases.
        if !sent && (force || (nudge == Nudge::CommitNotice && (commit_news || durable_news))) {
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
                    self.actions.push(action);
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

    /// Queues an action that must wait until the current election state is durable.
    pub(super) fn hold(&mut self, action: Action) {
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
            self.actions.push(action);
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
pub(super) enum Nudge {
    /// Heartbeat (or a new link): always send, empty if need be.
    Heartbeat,
    /// End of a loop turn: an empty Append carries a commit index the peer has not seen.
    CommitNotice,
    /// After a reply: only entries; commit news waits for the end of the turn, so a burst of
    /// replies does not become a burst of notices.
    EntriesOnly,
}
