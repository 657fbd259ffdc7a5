//! Membership changes: new nodes joining a running cluster (the driver's `--join`: ask a
//! member, follow its pointer to the leader, ask again when the core says the join stalled),
//! admins removing members, links that follow each node's peer set (the driver's
//! `Mesh::sync_peers`: a node dials the nodes it lists, and accepts any node of the cluster),
//! removed nodes stopping for good, and wiped nodes brought back by an admin.

use std::collections::BTreeSet;

use crate::codec::{JoinReply, JoinRequest};
use crate::core::{NodeConfig, NodeId};
use crate::sim::clock::{ms, Micros};
use crate::storage::MemStorage;

use super::{
    client_addr, node_of_client_addr, peer_addr, Event, Joining, SimNode, World, CLUSTER_ID,
    TAG_JOIN,
};

/// A joining node asks again this often while it has no answer (the driver's pause).
const JOIN_RETRY: Micros = ms(500);
/// How long a join request may wait for its answer (the driver's request timeout).
const JOIN_TIMEOUT: Micros = ms(2000);
/// Pointers to the leader followed within one attempt.
const JOIN_HOPS: u8 = 3;
/// A removal the leader accepted counts as under way for this long at most (its configuration
/// entry may be lost with the leader).
const REMOVAL_PENDING: Micros = ms(3000);

impl World {
    /// Links follow the node's peer set, as the driver's mesh does (a new peer is dialed; a
    /// peer no longer listed keeps its link as a guest's, which the other end may still
    /// list); a node that learned it was removed stops for good.
    pub(super) fn follow_membership(
        &mut self,
        id: NodeId,
        peers: Option<Vec<(NodeId, String)>>,
        removed: Option<String>,
    ) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.gone {
            return;
        }
        if let Some(why) = removed {
            return self.stop_for_good(id, &why);
        }
        let Some(peers) = peers else {
            return;
        };
        // A new peer needs an address to be dialed; one already linked keeps its slot.
        let wanted: BTreeSet<NodeId> = peers
            .into_iter()
            .filter(|(p, addr)| !addr.is_empty() || n.peers.contains(p))
            .map(|(p, _)| p)
            .collect();
        let old = std::mem::replace(&mut n.peers, wanted.clone());
        if old == wanted {
            return;
        }
        self.note(format!("node {id}: peers {wanted:?}"));
        self.trace.mix(TAG_JOIN ^ u64::from(id) << 8);
        for &p in wanted.difference(&old) {
            if !self.net.connected(id, p) {
                let at = self.clock.micros() + self.rng.u64(ms(1)..=ms(20));
                self.schedule(at, Event::LinkUp(id, p));
            }
        }
    }

    /// Whether `a`'s driver links to `b`.
    pub(super) fn lists(&self, a: NodeId, b: NodeId) -> bool {
        self.nodes.get(&a).is_some_and(|n| n.peers.contains(&b))
    }

    /// The node learned it was removed: it tells its clients to go elsewhere and stops; it is
    /// never restarted.
    fn stop_for_good(&mut self, id: NodeId, why: &str) {
        let now = self.now_of(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.gone = true;
        if let Some(node) = n.node.as_mut() {
            node.begin_shutdown(now);
        }
        self.note(format!("node {id}: REMOVED, stops for good: {why}"));
        self.trace.mix(TAG_JOIN + 1);
        self.trace.mix(u64::from(id));
        self.turn(id);
        self.stats.removed_stopped += 1;
        self.retire_node(id);
    }

    /// Takes a node out for good: its connections close, its links go, it leaves the lists.
    pub(super) fn retire_node(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.gone = true;
            n.paused = false;
            n.backlog.clear();
            n.crash_pending = None;
            n.node = None;
            n.peers.clear();
        }
        self.close_node_sides(id);
        // The process exits: its sockets close after what it wrote.
        for (a, b) in self.net.pairs() {
            if a == id || b == id {
                self.close_link(id, if a == id { b } else { a });
            }
        }
        self.members.retain(|&m| m != id);
        self.refresh_targets();
    }

    /// Keeps `targets` to the nodes not gone and not retired by a committed configuration.
    pub(super) fn refresh_targets(&mut self) {
        self.targets = self
            .members
            .iter()
            .copied()
            .filter(|&m| !self.checker.is_retired(m))
            .collect();
        self.retired_seen = self.checker.retired_count();
    }

    /// After each step: a committed removal ends the pending one, and retired nodes stop
    /// being picked by clients and faults.
    pub(super) fn follow_retirements(&mut self) {
        if let Some((id, since)) = self.removing {
            let done = self.checker.is_retired(id);
            if done || self.clock.micros() >= since + REMOVAL_PENDING {
                self.removing = None;
            }
        }
        if self.checker.retired_count() != self.retired_seen {
            self.refresh_targets();
        }
    }

    /// Members of the newest committed configuration that are not gone (the flags' members
    /// until a configuration entry commits).
    pub(super) fn voters(&self) -> Vec<NodeId> {
        match self.checker.cluster() {
            Some(c) => c
                .ids()
                .into_iter()
                .filter(|id| self.nodes.get(id).is_some_and(|n| !n.gone))
                .collect(),
            None => (1..=self.cfg.nodes as NodeId).collect(),
        }
    }

    /// Nodes started to join that are no members of the newest committed configuration yet.
    pub(super) fn joining(&self) -> usize {
        let voters = self.voters();
        self.nodes
            .iter()
            .filter(|(id, n)| n.join.is_some() && !n.gone && !voters.contains(id))
            .count()
    }

    /// Whether the membership ever changed from the first members (a wiped node then needs
    /// `--join`: its `--peers` are stale).
    pub(super) fn membership_changed(&self) -> bool {
        self.checker.cluster().is_some_and(|c| {
            c.ids() != (1..=self.cfg.nodes as NodeId).collect::<Vec<_>>() || !c.retired.is_empty()
        })
    }

    /// Starts a new node with the next id that asks to join; returns its id.
    pub fn add_joining_node(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        let seed = self.rng.u64(..);
        let cfg = self.joiner_config(id, seed);
        let others: Vec<NodeId> = self.members.clone();
        self.nodes.insert(id, SimNode::new(cfg, MemStorage::new()));
        self.members.push(id);
        self.net.add_node(id, &others);
        self.refresh_targets();
        self.note(format!("node {id}: STARTS, joining"));
        self.start_node(id);
        let at = self.clock.micros() + self.rng.u64(ms(1)..=ms(50));
        self.schedule(at, Event::JoinTick(id));
        id
    }

    /// The configuration of a node started with `--join`.
    pub(super) fn joiner_config(&self, id: NodeId, seed: u64) -> NodeConfig {
        NodeConfig {
            joining: true,
            ..super::node_config(&self.cfg, id, &[], seed)
        }
    }

    /// A node (re)started: if it joins and is no member from its data, it asks anew.
    pub(super) fn joiner_started(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(j) = n.join.as_mut() else {
            return;
        };
        j.asking = None;
        let at = self.clock.micros() + self.rng.u64(ms(1)..=ms(50));
        self.schedule(at, Event::JoinTick(id));
    }

    /// A joining node's timer: it asks (again) when the driver would: when the core says its
    /// join stalled (never accepted, or accepted long ago and still no member by a committed
    /// configuration: an uncommitted entry adding it may have been dropped by the next
    /// leader, which then neither lists it nor is listed by it); not while a request waits.
    pub(super) fn join_tick(&mut self, id: NodeId) {
        let now = self.clock.micros();
        if self
            .nodes
            .get(&id)
            .is_none_or(|n| n.gone || n.join.is_none())
        {
            return;
        }
        self.schedule(now + JOIN_RETRY, Event::JoinTick(id));
        let mono = self.now_of(id).mono;
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        let Some(node) = n.node.as_ref().filter(|_| !n.paused) else {
            return; // down: it asks when it runs again
        };
        if !node.join_stalled(mono) {
            return;
        }
        let j = n.join.as_ref().expect("checked above");
        if j.asking.is_some_and(|(_, sent)| now < sent + JOIN_TIMEOUT) {
            return;
        }
        // The operator's --join names some member; any may be down or cut off.
        let candidates: Vec<NodeId> = self.voters().into_iter().filter(|&m| m != id).collect();
        if candidates.is_empty() {
            return;
        }
        let to = candidates[self.rng.usize(..candidates.len())];
        self.send_join(id, to, 0);
    }

    fn send_join(&mut self, joiner: NodeId, to: NodeId, hops: u8) {
        let now = self.clock.micros();
        let Some(j) = self.nodes.get_mut(&joiner).and_then(|n| n.join.as_mut()) else {
            return;
        };
        j.attempts += 1;
        let attempt = j.attempts;
        j.asking = Some((attempt, now));
        self.stats.join_requests += 1;
        let req = JoinRequest {
            cluster_id: CLUSTER_ID,
            node_id: joiner,
            peer_addr: peer_addr(joiner),
            client_addr: client_addr(joiner),
        };
        self.note(format!(
            "node {joiner}: asks node {to} to join (hop {hops})"
        ));
        // A fresh connection: its handshake, then the request.
        let at = now + 2 * self.rpc_latency();
        self.schedule(
            at,
            Event::JoinAsk {
                joiner,
                attempt,
                to,
                hops,
                req,
            },
        );
    }

    fn rpc_latency(&mut self) -> Micros {
        let (lo, hi) = self.cfg.latency;
        self.net_rng.u64(lo..=hi)
    }

    /// Whether a request between `a` and `b` gets through now: both ends run and no partition,
    /// one-way loss or clog lies between them.
    fn rpc_path(&self, a: NodeId, b: NodeId) -> bool {
        self.alive_and_running(a) && self.alive_and_running(b) && !self.net.faulty(a, b)
    }

    /// A join request reaches `to`: a member answers it (a crashed, paused or cut-off one
    /// does not, and the new node asks again later).
    pub(super) fn join_ask(
        &mut self,
        joiner: NodeId,
        attempt: u64,
        to: NodeId,
        hops: u8,
        req: JoinRequest,
    ) {
        if !self.rpc_path(joiner, to) {
            return;
        }
        let now = self.now_of(to);
        let Some(node) = self.nodes.get_mut(&to).and_then(|n| n.node.as_mut()) else {
            return;
        };
        let reply = node.handle_join(now.mono, req);
        self.note(format!(
            "node {to}: join request of node {joiner}: {} ({})",
            if reply.ok { "accepted" } else { "refused" },
            reply.message
        ));
        self.trace.mix(TAG_JOIN + 2);
        self.trace.mix(u64::from(joiner) << 32 | u64::from(to));
        self.trace
            .mix(u64::from(reply.ok) << 1 | u64::from(reply.retry));
        self.turn(to);
        let at = self.clock.micros() + self.rpc_latency();
        self.schedule(
            at,
            Event::JoinAnswer {
                joiner,
                attempt,
                from: to,
                hops,
                reply,
            },
        );
    }

    /// The answer reaches the new node: accepted, it links to the leader; told who leads, it
    /// asks the leader at once; refused for good, it stops (the driver exits).
    pub(super) fn join_answer(
        &mut self,
        joiner: NodeId,
        attempt: u64,
        from: NodeId,
        hops: u8,
        reply: JoinReply,
    ) {
        if !self.rpc_path(joiner, from) {
            return;
        }
        let now = self.now_of(joiner);
        let Some(n) = self.nodes.get_mut(&joiner) else {
            return;
        };
        let Some(j) = n.join.as_mut() else {
            return;
        };
        if j.asking.map(|(a, _)| a) != Some(attempt) {
            return; // an answer to an earlier run of the node, or to a request given up
        }
        j.asking = None;
        if reply.ok {
            let Some((leader, addr)) = reply.leader else {
                return; // the driver asks again
            };
            self.stats.join_accepted += 1;
            if let Some(node) = n.node.as_mut() {
                node.handle_join_accepted(now.mono, leader, addr);
            }
            self.note(format!(
                "node {joiner}: accepted by leader {leader}: {}",
                reply.message
            ));
            self.turn(joiner);
            return;
        }
        if !reply.retry {
            self.stats.join_refused += 1;
            self.note(format!(
                "node {joiner}: join refused by node {from} for good: {}; it stops",
                reply.message
            ));
            return self.retire_node(joiner);
        }
        if let Some((leader, _)) = reply.leader {
            if leader != from && hops < JOIN_HOPS {
                self.send_join(joiner, leader, hops + 1);
            }
        }
    }

    /// An admin asks a random running node to remove `victim`, and asks the leader it names
    /// once if that node does not lead. True if a leader accepted.
    pub fn request_removal(&mut self, victim: NodeId) -> bool {
        let running: Vec<NodeId> = self
            .targets
            .iter()
            .copied()
            .filter(|&m| self.alive_and_running(m))
            .collect();
        if running.is_empty() {
            self.stats.removes_refused += 1;
            return false;
        }
        let mut asked = running[self.rng.usize(..running.len())];
        let mut answer = None;
        for _ in 0..2 {
            let now = self.now_of(asked);
            let Some(node) = self.nodes.get_mut(&asked).and_then(|n| n.node.as_mut()) else {
                break;
            };
            let reply = node.request_remove(now.mono, victim);
            self.note(format!(
                "admin: node {asked} asked to remove node {victim}: {} ({})",
                if reply.ok { "accepted" } else { "refused" },
                reply.message
            ));
            self.turn(asked);
            let next = reply
                .leader
                .as_deref()
                .and_then(node_of_client_addr)
                .filter(|&l| l != asked && self.alive_and_running(l));
            answer = Some(reply.ok);
            match next {
                Some(l) if !reply.ok => asked = l,
                _ => break,
            }
        }
        self.trace.mix(TAG_JOIN + 3);
        self.trace.mix(u64::from(victim));
        if answer == Some(true) {
            self.stats.removes_accepted += 1;
            self.removing = Some((victim, self.clock.micros()));
            true
        } else {
            self.stats.removes_refused += 1;
            false
        }
    }

    /// Liveness phase: nodes retired by a committed configuration are not restarted, and
    /// those still running without having learned it are stopped by the admin.
    pub(super) fn stop_retired(&mut self) {
        let retired: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .filter(|m| self.checker.is_retired(*m))
            .collect();
        for id in retired {
            if self.nodes.get(&id).is_some_and(|n| n.node.is_some()) {
                self.stats.zombies_stopped += 1;
                self.note(format!(
                    "node {id}: removed but never learned it: the admin stops it"
                ));
            }
            self.retire_node(id);
        }
    }

    /// Whether the node joined (or rejoins) with `--join`.
    pub(super) fn is_joiner(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.join.is_some())
    }

    /// A wiped node is restarted as a new one: with its first `--peers` while the membership
    /// is what it was, else with `--join` (its `--peers` would be stale).
    pub(super) fn rejoin_after_wipe(&mut self, id: NodeId) {
        if !self.membership_changed() && !self.is_joiner(id) {
            return;
        }
        let Some(seed) = self.nodes.get(&id).map(|n| n.cfg.seed) else {
            return;
        };
        let cfg = self.joiner_config(id, seed);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.cfg = cfg;
            n.join = Some(Joining::default());
        }
    }
}
