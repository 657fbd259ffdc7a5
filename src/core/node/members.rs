//! Membership changes on a running cluster: a new node asks to join (any member points it to
//! the leader), catches up as a non-voting learner, then the leader adds it with a
//! configuration entry; an admin removes a node the same way. One change at a time: the leader
//! starts one only once the previous configuration entry is committed.

use std::time::Instant;

use log::{info, warn};

use super::{Node, Peer, Role};
use crate::codec::{AdminReply, JoinReply, JoinRequest};
use crate::core::log::Command;
use crate::core::membership::{Config, ConfigHistory};
use crate::core::progress::Progress;
use crate::core::NodeId;

/// A removed member is still sent entries until it has learned of its removal, for this long
/// at most.
const LEAVING_GRACE_HEARTBEATS: u32 = 100;

impl Node {
    /// True when this node votes in the configuration in effect.
    pub fn is_member(&self) -> bool {
        self.log.configs().current().has(self.cfg.id)
    }

    /// The configurations its log holds: the one in effect, the one at the applied index
    /// (read-only, for status views and invariant checks).
    pub fn configs(&self) -> &ConfigHistory {
        self.log.configs()
    }

    /// Why this node stopped being part of the cluster, once it has (the driver stops it).
    pub fn removed(&self) -> Option<&str> {
        self.removed.as_deref()
    }

    /// The peers this node should be linked to, with their peer addresses ("" if unknown):
    /// members of every configuration it holds, learners it replicates to, removed nodes it
    /// still informs, and the leader it joins through (not the guests: they link to it).
    pub fn peer_addresses(&self) -> Vec<(NodeId, String)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.listed)
            .map(|(&id, p)| (id, p.peer_addr.clone()))
            .collect()
    }

    /// Bumped whenever [`Node::peer_addresses`] may have changed.
    pub fn peers_version(&self) -> u64 {
        self.peers_version
    }

    /// Re-derives members and peers after the log's configurations changed.
    pub(super) fn sync_members(&mut self, now: Instant) {
        let version = self.log.configs().version();
        if version == self.configs_seen {
            return;
        }
        self.configs_seen = version;
        let configs = self.log.configs();
        self.members = configs.current().ids();
        let mut wanted: Vec<(NodeId, String)> = Vec::new();
        for id in configs.all_members() {
            let addr = [configs.current(), configs.applied()]
                .iter()
                .find_map(|c| c.members.get(&id))
                .cloned()
                .unwrap_or_default();
            wanted.push((id, addr));
        }
        wanted.extend(self.learners.iter().map(|(&id, a)| (id, a.clone())));
        wanted.extend(self.join_leader.clone());
        for &id in self.leaving.keys() {
            wanted.push((
                id,
                self.peers
                    .get(&id)
                    .map(|p| p.peer_addr.clone())
                    .unwrap_or_default(),
            ));
        }
        wanted.retain(|(id, _)| *id != self.cfg.id);
        self.set_peers(now, wanted);
        // A snapshot installed from the leader may hold a committed configuration that
        // retires this node (it then applies no entry that would tell it).
        let applied = self.log.configs().applied();
        if applied.retired.contains(&self.cfg.id) {
            let applied = applied.clone();
            self.config_applied(&applied);
        }
    }

    /// Makes `wanted` the listed peers: new ones start unknown (progress if leading); one no
    /// longer listed stays as a guest while its link is up (it may still list this node: a
    /// removed node has to learn of its removal, and a leader this log does not know yet must
    /// be heard), and is forgotten otherwise.
    fn set_peers(&mut self, now: Instant, wanted: Vec<(NodeId, String)>) {
        let before = self.listed_peers();
        for (id, p) in self.peers.iter_mut() {
            p.listed = wanted.iter().any(|(w, _)| w == id);
        }
        self.peers.retain(|_, p| p.listed || p.connected);
        let peers = &self.peers;
        self.progress.retain(|id, _| peers.contains_key(id));
        let last = self.log.last_index();
        for (id, addr) in wanted {
            let p = self.peers.entry(id).or_insert_with(|| Peer {
                hears_us: true,
                ..Peer::default()
            });
            p.listed = true;
            if !addr.is_empty() {
                p.peer_addr = addr;
            }
            if self.role == Role::Leader {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(last, now));
            }
        }
        let after = self.listed_peers();
        if before != after {
            info!(
                "node {}: members {:?}, peers {:?}",
                self.cfg.id, self.members, after
            );
        }
        self.peers_version += 1;
    }

    fn listed_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.listed)
            .map(|(&id, _)| id)
            .collect()
    }

    /// A new node asks to join (sent to any member). The leader adds it as a learner and
    /// replicates to it; once it has caught up it becomes a member (see
    /// `Node::maybe_promote`). Other nodes point it to the leader.
    pub fn handle_join(&mut self, now: Instant, req: JoinRequest) -> JoinReply {
        let refuse = |retry: bool, message: String, leader: Option<(NodeId, String)>| JoinReply {
            ok: false,
            retry,
            message,
            leader,
        };
        if req.cluster_id != self.cfg.cluster_id {
            let why = format!(
                "cluster id {} is not this cluster's ({})",
                req.cluster_id, self.cfg.cluster_id
            );
            return refuse(false, why, None);
        }
        if self.role != Role::Leader {
            let leader = self.leader.and_then(|l| {
                let addr = self.peers.get(&l).map(|p| p.peer_addr.clone())?;
                (!addr.is_empty()).then_some((l, addr))
            });
            let why = match self.leader {
                Some(l) => format!("node {} is not the leader; node {l} is", self.cfg.id),
                None => format!("node {} knows no leader yet", self.cfg.id),
            };
            return refuse(true, why, leader);
        }
        let me = (self.cfg.id, self.own_peer_addr());
        let current = self.log.configs().current();
        if current.members.get(&req.node_id) == Some(&req.peer_addr) {
            // It is a member already (its earlier request went through): let it catch up.
            return JoinReply {
                ok: true,
                retry: false,
                message: format!("node {} is a member", req.node_id),
                leader: Some(me),
            };
        }
        if let Err(why) = current.with(req.node_id, &req.peer_addr) {
            return refuse(false, why, None);
        }
        if let Some(why) = self.change_in_progress(req.node_id) {
            return refuse(true, why, Some(me));
        }
        if self
            .learners
            .insert(req.node_id, req.peer_addr.clone())
            .is_none()
        {
            info!(
                "node {}: node {} (peers at {}) joins; catching it up before it votes",
                self.cfg.id, req.node_id, req.peer_addr
            );
            self.configs_seen = u64::MAX;
            self.sync_members(now);
        }
        JoinReply {
            ok: true,
            retry: false,
            message: format!("node {} is catching up as a learner", req.node_id),
            leader: Some(me),
        }
    }

    /// Joining node: the leader accepted us; link to it and wait for its entries.
    pub fn handle_join_accepted(&mut self, now: Instant, leader: NodeId, addr: String) {
        if self.joined() {
            return;
        }
        self.join_accepted_at = Some(now);
        info!(
            "node {}: joining through leader {leader} at {addr}",
            self.cfg.id
        );
        self.join_leader = Some((leader, addr));
        self.configs_seen = u64::MAX;
        self.sync_members(now);
    }

    /// Joining node: true when it should ask to join again: never accepted, or accepted but
    /// still no member by a committed configuration long after (the leader that accepted it
    /// may have lost its learners in a leader change, or the entry adding it may be lost).
    pub fn join_stalled(&self, now: Instant) -> bool {
        if !self.cfg.joining || self.joined() || self.removed.is_some() {
            return false;
        }
        self.join_accepted_at
            .is_none_or(|t| now >= t + self.cfg.join_patience())
    }

    /// Joining node: a committed configuration has it. Only that ends a join: an entry adding
    /// it that is merely appended here may still be discarded by the next leader, and then no
    /// member lists this node any more, so it would never hear of it if it stopped asking.
    fn joined(&self) -> bool {
        self.log.configs().applied().has(self.cfg.id)
    }

    /// Why a membership change (other than adding `joining`) cannot start now, if so.
    fn change_in_progress(&self, joining: NodeId) -> Option<String> {
        if let Some(why) = self.not_settled_as_leader() {
            return Some(why);
        }
        let last = self.log.configs().last_index();
        if last > self.log.committed() {
            return Some(format!(
                "a membership change (log index {last}) is not committed yet; retry"
            ));
        }
        self.learners
            .keys()
            .find(|&&l| l != joining)
            .map(|l| format!("node {l} is joining; one change at a time, retry"))
    }

    /// Leader: why it may not append a configuration yet: until an entry of its own epoch is
    /// committed (its Noop), a configuration entry of an earlier leader that this log lacks
    /// may still be in other logs and win a later election; a change made meanwhile from this
    /// log's configuration would be a second change at once (Raft's single-server change bug,
    /// Ongaro 2015, fixed the same way).
    fn not_settled_as_leader(&self) -> Option<String> {
        (self.log.epoch_at(self.log.committed()) != Some(self.hard.epoch)).then(|| {
            format!(
                "leader {} has not committed an entry of epoch {} yet; retry",
                self.cfg.id, self.hard.epoch
            )
        })
    }

    /// Leader: a learner that has caught up with the commit index becomes a member.
    pub(super) fn maybe_promote(&mut self, peer: NodeId) {
        let Some(addr) = self.learners.get(&peer).cloned() else {
            return;
        };
        // Within one batch of the commit index: under steady load a follower always trails
        // the leader a little, and it has everything but the last few entries.
        let slack = self.cfg.max_append_entries as u64;
        let caught_up = self
            .progress
            .get(&peer)
            .is_some_and(|p| p.match_index + slack >= self.log.committed());
        // And it takes part in elections already (a new node does once it applied what was
        // committed when it joined): a configuration whose majority counts on a node that
        // cannot vote yet could elect no one, should this leader fail with another member
        // down or wiped.
        let votes = self.peers.get(&peer).is_some_and(|p| p.votes);
        if !caught_up
            || !votes
            || self.log.configs().last_index() > self.log.committed()
            || self.not_settled_as_leader().is_some()
        {
            return;
        }
        match self.log.configs().current().with(peer, &addr) {
            Ok(config) => {
                self.learners.remove(&peer);
                let index = self.append_config(config);
                info!(
                    "node {}: node {peer} caught up; adding it as a member (index {index})",
                    self.cfg.id
                );
            }
            Err(why) => {
                warn!("node {}: not adding node {peer}: {why}", self.cfg.id);
                self.learners.remove(&peer);
            }
        }
    }

    /// Leader: appends a configuration entry (in effect at once).
    fn append_config(&mut self, config: Config) -> u64 {
        let index = self
            .log
            .append(self.hard.epoch, None, Command::Config(config));
        self.configs_seen = u64::MAX;
        index
    }

    /// Leader: the first configuration entry of a cluster formed from flags, so that nodes
    /// joining later learn the members from the log.
    pub(super) fn log_initial_config(&mut self) {
        if self.log.configs().unlogged() {
            let mut config = self.log.configs().current().clone();
            for (id, addr) in config.members.iter_mut() {
                if let Some(p) = self.peers.get(id) {
                    addr.clone_from(&p.peer_addr);
                } else if *id == self.cfg.id {
                    *addr = self.own_peer_addr();
                }
            }
            self.append_config(config);
        }
    }

    fn own_peer_addr(&self) -> String {
        self.cfg
            .addresses
            .get(&self.cfg.id)
            .cloned()
            .unwrap_or_default()
    }

    /// An admin asks to remove `node` (only the leader does it; others say who leads).
    pub fn request_remove(&mut self, now: Instant, node: NodeId) -> AdminReply {
        if self.role != Role::Leader {
            return self.not_leader_reply();
        }
        if let Some(why) = self.change_in_progress(0) {
            return AdminReply::refused(why, None);
        }
        let config = match self.log.configs().current().without(node) {
            Ok(c) => c,
            Err(why) => return AdminReply::refused(why, None),
        };
        self.learners.remove(&node);
        let index = self.append_config(config);
        // Its clients' sessions end with it (NodeDown covers only nodes still members).
        self.propose(Command::NodeDown { node });
        if node != self.cfg.id {
            let grace = now + self.cfg.heartbeat_interval * LEAVING_GRACE_HEARTBEATS;
            self.leaving.insert(node, (index, grace));
        }
        info!(
            "node {}: removing node {node} (configuration at index {index})",
            self.cfg.id
        );
        self.sync_members(now);
        AdminReply {
            ok: true,
            message: format!(
                "node {node} is removed once log index {index} commits; it then stops"
            ),
            leader: None,
        }
    }

    /// The reply of a node that is not the leader: who is, and where its clients connect.
    pub(super) fn not_leader_reply(&self) -> AdminReply {
        let addr = self
            .leader
            .and_then(|l| self.peers.get(&l))
            .map(|p| p.client_addr.clone())
            .filter(|a| !a.is_empty());
        let why = match self.leader {
            Some(l) => format!("node {} is not the leader; node {l} is", self.cfg.id),
            None => format!("node {} knows no leader yet; retry", self.cfg.id),
        };
        AdminReply::refused(why, addr)
    }

    /// Leader: stops informing removed nodes that know they are out (or after a grace), and
    /// gives up on learners silent for the session timeout (a newcomer that died must not
    /// block every later change; if it lives it asks again).
    pub(super) fn release_leaving(&mut self, now: Instant) {
        let silent: Vec<NodeId> = self
            .learners
            .keys()
            .filter(|id| {
                self.progress
                    .get(id)
                    .is_some_and(|p| now >= p.last_ack + self.cfg.session_timeout)
            })
            .copied()
            .collect();
        for id in &silent {
            warn!(
                "node {}: learner {id} silent for {:?}; its join is dropped",
                self.cfg.id, self.cfg.session_timeout
            );
            self.learners.remove(id);
        }
        if !silent.is_empty() {
            self.configs_seen = u64::MAX;
            self.sync_members(now);
        }
        let commit = self.log.committed();
        let done: Vec<NodeId> = self
            .leaving
            .iter()
            .filter(|(id, (index, grace))| {
                let informed = commit >= *index
                    && self
                        .progress
                        .get(id)
                        .is_some_and(|p| p.match_index >= *index)
                    && self.commit_sent.get(id).is_some_and(|c| *c >= *index);
                informed || now >= *grace
            })
            .map(|(&id, _)| id)
            .collect();
        if !done.is_empty() {
            for id in done {
                self.leaving.remove(&id);
            }
            self.configs_seen = u64::MAX;
            self.sync_members(now);
        }
    }

    /// A committed configuration was applied: a node it retires knows it is out.
    pub(super) fn config_applied(&mut self, config: &Config) {
        if config.retired.contains(&self.cfg.id) && self.removed.is_none() {
            let why = format!(
                "node {} was removed from the cluster (members now {:?})",
                self.cfg.id,
                config.ids()
            );
            warn!("node {}: {why}; stopping", self.cfg.id);
            self.removed = Some(why);
        }
    }
}
