//! Membership changes: new nodes joining a running cluster (the driver's `--join`: the node's
//! join client, [`JoinClient`], decides whom to ask and when; the simulation carries its
//! requests and answers over the simulated network, with latency and faults, and starts it
//! when the core says the join stalled), admins removing members, links that follow each
//! node's peer set (the driver's `Mesh::sync_peers`: a node dials the nodes it lists, and
//! accepts any node of the cluster), removed nodes stopping for good, and wiped nodes brought
//! back by an admin.

use std::collections::BTreeSet;

use crate::codec::{self, JoinReply, JoinRequest, PeerFrame};
use crate::core::join::{
    JoinAction, JoinAttempt, JoinClient, JoinFailure, JoinOutcome, JoinPolicy,
};
use crate::core::{NodeConfig, NodeId};
use crate::sim::clock::{ms, Micros};

use super::{
    client_addr, node_of_client_addr, peer_addr, Event, SimNode, World, CLUSTER_ID, TAG_JOIN,
};

/// A removal the leader accepted counts as under way for this long at most (its configuration
/// entry may be lost with the leader).
const REMOVAL_PENDING: Micros = ms(3000);
/// A paused node's join client waits this long between looks at whether it runs again (its
/// timers fire only once the process runs).
const PAUSED_POLL: Micros = ms(50);

/// A node started with `--join`: the join client of its current run, if it started one.
#[derive(Debug, Default)]
pub(super) struct Joining {
    run: Option<JoinRun>,
    /// The member every run's `--join` names, if a scenario chose it (else drawn per run).
    via: Option<NodeId>,
    /// Connections opened for requests, over all runs (numbers them, so that an answer on the
    /// connection of an earlier run or of a request given up matches nothing).
    conns: u64,
}

/// The join client of one run of the node (a restarted daemon starts a new one).
#[derive(Debug)]
struct JoinRun {
    /// The node's `restarts` when it started.
    restarts: u64,
    /// The member its `--join` names.
    via: NodeId,
    client: JoinClient,
    /// The connection of the request out, and the client's name for that request.
    open: Option<(u64, JoinAttempt)>,
    /// The earliest `JoinTick` scheduled and not fired yet.
    tick_at: Option<Micros>,
}

/// The node whose peer address is `addr`.
fn node_of_peer_addr(addr: &str) -> Option<NodeId> {
    addr.strip_prefix("node")?
        .strip_suffix(":7170")?
        .parse()
        .ok()
}

impl World {
    /// Links follow the node's peer set, as the driver's mesh does (a new peer is dialed; a
    /// peer no longer listed keeps its link as a guest's, which the other end may still
    /// list); a node that learned it was removed stops for good.
    pub(super) fn follow_membership(
        &mut self,
        id: NodeId,
        peers: Option<Vec<(NodeId, String)>>,
        removed: Option<String>,
        rejoin: bool,
    ) {
        if self.nodes.get(&id).is_none_or(|n| n.gone) {
            return;
        }
        if let Some(why) = removed {
            return self.stop_for_good(id, &why);
        }
        if rejoin {
            self.join_start(id);
        }
        let Some(peers) = peers else {
            return;
        };
        let Some(n) = self.nodes.get_mut(&id) else {
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

    /// Starts a new node with the next id that asks to join; returns its id. Its `--join`
    /// names a member drawn at random, which may be down or cut off.
    pub fn add_joining_node(&mut self) -> NodeId {
        self.add_node_joining_via(None)
    }

    /// [`World::add_joining_node`] with `--join` naming `via`.
    pub fn add_joining_node_through(&mut self, via: NodeId) -> NodeId {
        self.add_node_joining_via(Some(via))
    }

    fn add_node_joining_via(&mut self, via: Option<NodeId>) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        let seed = self.rng.u64(..);
        let cfg = self.joiner_config(id, seed);
        let others: Vec<NodeId> = self.members.clone();
        let mut node = SimNode::new(cfg);
        if let Some(j) = node.join.as_mut() {
            j.via = via;
        }
        self.nodes.insert(id, node);
        self.members.push(id);
        self.net.add_node(id, &others);
        self.refresh_targets();
        self.note(format!("node {id}: STARTS, joining"));
        self.start_node(id);
        id
    }

    /// The configuration of a node started with `--join`.
    pub(super) fn joiner_config(&self, id: NodeId, seed: u64) -> NodeConfig {
        NodeConfig {
            joining: true,
            ..super::node_config(&self.cfg, id, &[], seed)
        }
    }

    /// A node (re)started: a new process, whose join client starts afresh if the core says it
    /// should join (it is no member from its data).
    pub(super) fn joiner_started(&mut self, id: NodeId) {
        let mono = self.now_of(id).mono;
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        if n.join.is_some() && n.node.as_ref().is_some_and(|x| x.join_stalled(mono)) {
            self.join_start(id);
        }
    }

    /// The core says the node's join stalled (`Ready::rejoin`): its join client asks, as the
    /// driver's does; a client of an earlier run of the process is replaced, and so is one
    /// whose `--join` names a node removed for good (the operator points it elsewhere).
    fn join_start(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        let restarts = n.restarts;
        let current = n.join.as_ref().and_then(|j| j.run.as_ref());
        let fresh = current.is_none_or(|r| r.restarts != restarts || self.removed_for_good(r.via));
        if fresh && !self.new_join_client(id, restarts) {
            return;
        }
        let now = self.now_of(id).mono;
        if let Some(r) = self.join_run(id) {
            r.client.start(now, None);
        }
        self.join_pump(id);
    }

    fn removed_for_good(&self, id: NodeId) -> bool {
        self.checker.is_retired(id) || self.nodes.get(&id).is_none_or(|n| n.gone)
    }

    /// A new join client for the node's run `restarts`, asking the member the scenario chose
    /// or one drawn at random (the operator's `--join`; it may be down or cut off). False if
    /// there is none to ask.
    fn new_join_client(&mut self, id: NodeId, restarts: u64) -> bool {
        let chosen = self
            .nodes
            .get(&id)
            .and_then(|n| n.join.as_ref())
            .and_then(|j| j.via)
            .filter(|&v| !self.removed_for_good(v));
        let via = match chosen {
            Some(v) => v,
            None => {
                let candidates: Vec<NodeId> = self
                    .voters()
                    .into_iter()
                    .filter(|&m| m != id && !self.removed_for_good(m))
                    .collect();
                if candidates.is_empty() {
                    return false;
                }
                candidates[self.rng.usize(..candidates.len())]
            }
        };
        let request = JoinRequest {
            cluster_id: CLUSTER_ID,
            node_id: id,
            peer_addr: peer_addr(id),
            client_addr: client_addr(id),
        };
        let seed = self.rng.u64(..);
        let client = match JoinClient::new(&request, peer_addr(via), JoinPolicy::default(), seed) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("node {id}: cannot encode its join request: {e}"));
                return false;
            }
        };
        self.note(format!("node {id}: joins with --join node {via}"));
        let Some(j) = self.nodes.get_mut(&id).and_then(|n| n.join.as_mut()) else {
            return false;
        };
        j.run = Some(JoinRun {
            restarts,
            via,
            client,
            open: None,
            tick_at: None,
        });
        true
    }

    fn join_run(&mut self, id: NodeId) -> Option<&mut JoinRun> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.join.as_mut())
            .and_then(|j| j.run.as_mut())
    }

    /// The join client's timer.
    pub(super) fn join_tick(&mut self, id: NodeId) {
        let t = self.clock.micros();
        if let Some(r) = self.join_run(id) {
            if r.tick_at == Some(t) {
                r.tick_at = None;
            }
        }
        self.join_pump(id);
    }

    /// The join client's turn, as the driver's loop takes it: requests go out on new
    /// connections, closed ones are forgotten, the outcome is carried out, and a timer is set
    /// for its deadline. Only while the node's process runs: a crashed one has no client
    /// (its next run starts one), a paused one looks again later.
    fn join_pump(&mut self, id: NodeId) {
        let t = self.clock.micros();
        let now = self.now_of(id);
        let node_clock = self.node_clock(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let (running, paused, restarts) = (n.node.is_some() && !n.gone, n.paused, n.restarts);
        let Some(j) = n.join.as_mut() else {
            return;
        };
        let Some(r) = j.run.as_mut().filter(|r| running && r.restarts == restarts) else {
            return;
        };
        if paused {
            if r.tick_at.is_none_or(|at| at > t + PAUSED_POLL) {
                r.tick_at = Some(t + PAUSED_POLL);
                self.schedule(t + PAUSED_POLL, Event::JoinTick(id));
            }
            return;
        }
        let ready = r.client.turn(now.mono);
        let mut opened = Vec::new();
        for action in ready.actions {
            match action {
                JoinAction::Connect {
                    attempt,
                    addr,
                    bytes,
                } => {
                    j.conns += 1;
                    r.open = Some((j.conns, attempt));
                    opened.push((j.conns, addr, bytes));
                }
                JoinAction::Close { attempt } => {
                    if r.open.is_some_and(|(_, a)| a == attempt) {
                        r.open = None;
                    }
                }
            }
        }
        if let Some(at) = ready
            .deadline
            .map(|d| self.clock.micros_of_on(&node_clock, d).max(t))
        {
            if r.tick_at.is_none_or(|x| x > at) {
                r.tick_at = Some(at);
                self.schedule(at, Event::JoinTick(id));
            }
        }
        for (conn, addr, bytes) in opened {
            self.join_connect(id, conn, &addr, &bytes);
        }
        match ready.outcome {
            Some(JoinOutcome::Accepted { leader, addr }) => {
                self.stats.join_accepted += 1;
                self.note(format!("node {id}: accepted by leader {leader} at {addr}"));
                if let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.node.as_mut()) {
                    node.handle_join_accepted(now.mono, leader, addr);
                }
                self.turn(id);
            }
            Some(JoinOutcome::Refused(why)) | Some(JoinOutcome::GaveUp(why)) => {
                // The driver stops the daemon.
                self.stats.join_refused += 1;
                self.note(format!("node {id}: cannot join: {why}; it stops"));
                self.retire_node(id);
            }
            None => {}
        }
    }

    /// The join client opens a connection to `addr` and sends `bytes`: a connection to a node
    /// whose process is gone is refused (after a round trip); otherwise the request arrives
    /// after the handshake, unless a fault lies in between by then.
    fn join_connect(&mut self, joiner: NodeId, conn: u64, addr: &str, bytes: &[u8]) {
        self.stats.join_requests += 1;
        let at = self.clock.micros() + 2 * self.rpc_latency();
        let req = match codec::decode::<PeerFrame>(bytes) {
            Ok(Some((PeerFrame::Join(req), used))) if used == bytes.len() => req,
            other => {
                return self.fail(format!(
                    "node {joiner}: its join client sent something else than a join request: \
                     {other:?}"
                ))
            }
        };
        let Some(to) = node_of_peer_addr(addr) else {
            return self.fail(format!(
                "node {joiner}: join request to unknown address {addr}"
            ));
        };
        self.note(format!(
            "node {joiner}: asks node {to} to join (conn {conn})"
        ));
        if self.nodes.get(&to).is_none_or(|n| n.node.is_none()) {
            let answer = Err(JoinFailure::Unreachable("connection refused".into()));
            let ev = Event::JoinAnswer {
                joiner,
                conn,
                from: to,
                answer,
            };
            return self.schedule(at, ev);
        }
        self.schedule(
            at,
            Event::JoinAsk {
                joiner,
                conn,
                to,
                req,
            },
        );
    }

    fn rpc_latency(&mut self) -> Micros {
        let (lo, hi) = self.cfg.latency;
        self.net_rng.u64(lo..=hi)
    }

    /// A join request reaches `to`: a member answers it; one whose process died meanwhile
    /// resets the connection; a paused or cut-off one does not answer (the client's request
    /// times out).
    pub(super) fn join_ask(&mut self, joiner: NodeId, conn: u64, to: NodeId, req: JoinRequest) {
        if !self.alive_and_running(joiner) || self.net.faulty(joiner, to) {
            return;
        }
        let at = self.clock.micros() + self.rpc_latency();
        let now = self.now_of(to);
        let Some(n) = self.nodes.get_mut(&to) else {
            return;
        };
        if n.paused {
            return;
        }
        let Some(node) = n.node.as_mut() else {
            let answer = Err(JoinFailure::Closed("connection reset".into()));
            let ev = Event::JoinAnswer {
                joiner,
                conn,
                from: to,
                answer,
            };
            return self.schedule(at, ev);
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
        let ev = Event::JoinAnswer {
            joiner,
            conn,
            from: to,
            answer: Ok(reply),
        };
        self.schedule(at, ev);
    }

    /// The answer (or the connection's failure) reaches the new node, if its process still
    /// runs, nothing cut it off, and the connection is the one of the request out: its join
    /// client takes it.
    pub(super) fn join_answer(
        &mut self,
        joiner: NodeId,
        conn: u64,
        from: NodeId,
        answer: Result<JoinReply, JoinFailure>,
    ) {
        if !self.alive_and_running(joiner) || self.net.faulty(joiner, from) {
            return;
        }
        let now = self.now_of(joiner).mono;
        let Some(r) = self.join_run(joiner) else {
            return;
        };
        let Some((_, attempt)) = r.open.filter(|(c, _)| *c == conn) else {
            return;
        };
        r.open = None;
        match answer {
            Ok(reply) => r.client.handle_reply(now, attempt, reply),
            Err(failure) => r.client.handle_failure(now, attempt, failure),
        }
        self.trace.mix(TAG_JOIN + 4);
        self.trace.mix(u64::from(joiner) << 32 | conn);
        self.join_pump(joiner);
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
