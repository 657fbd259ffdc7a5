//! The simulated cluster: nodes with their storage, the peer network, client connections and
//! clients, one event queue on the virtual clock, fault injection and the checks after every
//! step. Everything is iterated in a fixed order (BTreeMap, sorted ids) and every random choice
//! comes from generators seeded by the run's seed, so a seed replays exactly.

mod chaos;
mod clients;
mod clocks;
mod links;
mod liveness;
mod membership;
mod nodes;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use log::debug;

use membership::Joining;

use super::checker::Checker;
use super::client::{ClientKind, ClientParams, ClientSpec, SimClient};
use super::clock::{ms, Clock, Micros, TraceHash};
use super::faults::{CrashPoint, FaultPlan, Heal};
use super::network::Network;
use super::swarm::Swarm;
use super::{Failure, Report, SimConfig};
use crate::codec::{JoinReply, JoinRequest, PeerFrame};
use crate::core::chat::ChatState;
use crate::core::join::JoinFailure;
use crate::core::{ConnId, Node, NodeConfig, NodeId, PersistJob, Role, SharedBytes};
use crate::driver::conn::InBuf;
use crate::storage::{FileOptions, FileStorage, Recovered, SimDisk, Storage, StorageError};

/// Rooms the talkers use.
pub const ROOMS: [&str; 2] = ["lobby", "dev"];

/// The simulated cluster's id.
const CLUSTER_ID: u64 = 0x51a;

/// An input waiting for a node (queued while it is paused).
#[derive(Debug)]
enum Input {
    Peer {
        from: NodeId,
        generation: u64,
        bytes: SharedBytes,
    },
    PeerUp(NodeId),
    PeerDown(NodeId),
    /// The peer closed the connection of this generation (after its last frames arrived).
    PeerClosed(NodeId, u64),
    Accept(ConnId),
    /// Bytes the client sent are readable on the connection (a read takes some of them).
    Readable(ConnId),
    Closed(ConnId),
    /// The node's storage finished its oldest job in flight (of the node's run `restarts`).
    Persisted {
        restarts: u64,
    },
}

#[derive(Debug)]
enum Event {
    /// Something arrives at a node.
    Input { node: NodeId, input: Input },
    /// Bytes arrive at a client.
    ToClient { conn: ConnId, bytes: SharedBytes },
    /// A client sees its connection closed.
    ClientSeesClose { conn: ConnId },
    /// Try to bring a peer connection up.
    LinkUp(NodeId, NodeId),
    /// The higher id of a pair dials the lower one that does not dial it (the mesh's
    /// fallback), if the pair's connection is still at `generation`.
    FallbackDial {
        hi: NodeId,
        lo: NodeId,
        generation: u64,
    },
    /// Time for the next random fault.
    NextFault,
    /// A fault ends.
    Heal(Heal),
    /// A joining node's join client is due (its deadline).
    JoinTick(NodeId),
    /// A join request reaches a member, on the joiner's connection `conn`.
    JoinAsk {
        joiner: NodeId,
        conn: u64,
        to: NodeId,
        req: JoinRequest,
    },
    /// The answer (or the connection's failure) reaches the joining node.
    JoinAnswer {
        joiner: NodeId,
        conn: u64,
        from: NodeId,
        answer: Result<JoinReply, JoinFailure>,
    },
}

/// The node side of a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeSide {
    /// Not accepted yet.
    Pending,
    Open,
    Closed,
}

#[derive(Debug)]
struct ConnInfo {
    client: usize,
    node: NodeId,
    node_side: NodeSide,
    client_open: bool,
    /// Last delivery time each way, so frames never overtake each other.
    to_node_at: Micros,
    to_client_at: Micros,
    /// Bytes the client sent that the node has not read, and whether a read is planned.
    to_node: Vec<u8>,
    reading: bool,
    /// The node side's framing: the driver's own, fed reads of any size.
    node_in: InBuf,
}

/// Where a simulated node keeps its data on its disk.
const DATA_DIR: &str = "/var/lib/ringchat";

/// The nodes' file storage: small segments so runs roll and compact them often; snapshots
/// written inline, since the simulated disk is single-threaded and deterministic.
const FILE_OPTIONS: FileOptions = FileOptions {
    segment_bytes: 4096,
    background_snapshots: false,
};

/// Opens (recovers) the file storage on `disk`.
fn open_storage(disk: &SimDisk) -> Result<FileStorage<SimDisk>, StorageError> {
    FileStorage::open_on(disk.clone(), DATA_DIR, FILE_OPTIONS)
}

/// What a restart would recover from `disk` now (read from a copy, so nothing is disturbed).
fn durable_state(disk: &SimDisk) -> Result<Recovered, StorageError> {
    open_storage(&disk.durable_copy())?.load()
}

/// The seed of the disk of a node whose configuration has `seed` (no draw from the world's
/// generator, so the disks do not shift its other choices).
fn disk_seed(seed: u64) -> u64 {
    seed.rotate_left(17) ^ 0xd15c
}

/// One simulated node: the core, its storage, and what the simulation knows of it.
struct SimNode {
    cfg: NodeConfig,
    node: Option<Node>,
    /// Its disk (outlives crashes: what it holds durably is what a restart recovers).
    disk: SimDisk,
    /// The real file storage on that disk while the node runs (None while it is down).
    storage: Option<FileStorage<SimDisk>>,
    paused: bool,
    backlog: VecDeque<Input>,
    crash_pending: Option<CrashPoint>,
    restarts: u64,
    /// Last (role, epoch, leader) reported, for the trace.
    last_view: Option<(Role, u64, Option<NodeId>)>,
    /// When its next turn is due (from its last `Ready`).
    deadline: Option<Instant>,
    /// Storage jobs handed over and not completed, oldest first, and when the disk finishes
    /// the last of them.
    in_flight: VecDeque<PersistJob>,
    disk_busy_until: Micros,
    /// After a failed write, storage takes no job before this time (as the driver waits).
    retry_at: Option<Micros>,
    /// The peers the driver links it to (the core's peer set).
    peers: BTreeSet<NodeId>,
    /// Started with `--join` (asks to be added until a committed configuration has it).
    join: Option<Joining>,
    /// Stopped for good (removed): never restarted, its id never reused.
    gone: bool,
    /// Its disk was wiped since it last ran: the admin decides how it comes back.
    wiped: bool,
}

impl SimNode {
    fn new(cfg: NodeConfig) -> SimNode {
        SimNode {
            join: cfg.joining.then(Joining::default),
            disk: SimDisk::new(disk_seed(cfg.seed)),
            cfg,
            node: None,
            storage: None,
            paused: false,
            backlog: VecDeque::new(),
            crash_pending: None,
            restarts: 0,
            last_view: None,
            deadline: None,
            in_flight: VecDeque::new(),
            disk_busy_until: 0,
            retry_at: None,
            peers: BTreeSet::new(),
            gone: false,
            wiped: false,
        }
    }
}

/// Why a talking client has not caught up with the room histories of `chat` (the leader's),
/// if it has not: no settled session, writes unacknowledged, or messages not seen.
fn talker_behind(c: &SimClient, chat: &ChatState) -> Option<String> {
    if !c.settled() {
        return Some(format!("client {} has no settled session", c.index));
    }
    if c.unacked() > 0 {
        return Some(format!("client {} has {} unacked", c.index, c.unacked()));
    }
    for room in c.rooms() {
        let seen = c.session().last_seen(room).unwrap_or(0);
        if seen != chat.last_seq(room) {
            return Some(format!(
                "client {} saw {room} up to #{seen} of #{}",
                c.index,
                chat.last_seq(room)
            ));
        }
    }
    None
}

/// The peer address of a node (what its configuration entries hold).
pub fn peer_addr(id: NodeId) -> String {
    format!("node{id}:7170")
}

/// The client address of a node (what peers learn in the handshake).
pub fn client_addr(id: NodeId) -> String {
    format!("node{id}:7070")
}

/// The node whose client address is `addr`.
fn node_of_client_addr(addr: &str) -> Option<NodeId> {
    addr.strip_prefix("node")?
        .strip_suffix(":7070")?
        .parse()
        .ok()
}

/// A filter that drops matching peer frames (scenario tests); returns true to drop.
pub type DropFilter = Box<dyn FnMut(NodeId, NodeId, &PeerFrame) -> bool>;

/// Counters of one run.
#[derive(Debug, Default, Clone)]
pub struct WorldStats {
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Peer frames delivered.
    pub peer_frames: u64,
    /// Peer frames dropped by a scenario filter.
    pub filtered: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Join requests sent by new nodes.
    pub join_requests: u64,
    /// Join requests a leader accepted.
    pub join_accepted: u64,
    /// Join requests refused for good (the new node gives up and stops, as the driver does).
    pub join_refused: u64,
    /// Removal requests the leader accepted.
    pub removes_accepted: u64,
    /// Removal requests refused (no leader, a change under way, ...).
    pub removes_refused: u64,
    /// Removed nodes that learned it and stopped by themselves.
    pub removed_stopped: u64,
    /// Removed nodes that never learned it and were stopped when everything healed.
    pub zombies_stopped: u64,
    /// Storage jobs a crash caught in flight (handed to the disk, not reported durable).
    pub jobs_cut_by_crashes: u64,
}

/// The whole simulated system.
pub struct World {
    cfg: SimConfig,
    rng: fastrand::Rng,
    net_rng: fastrand::Rng,
    clock: Clock,
    events: BTreeMap<(Micros, u64), Event>,
    event_seq: u64,
    members: Vec<NodeId>,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    conns: BTreeMap<ConnId, ConnInfo>,
    next_conn: u64,
    clients: Vec<SimClient>,
    users: Vec<String>,
    checker: Checker,
    /// Nodes clients and faults may pick: members and nodes joining, neither removed nor
    /// retired by a committed configuration.
    targets: Vec<NodeId>,
    /// Retired ids `targets` accounts for.
    retired_seen: usize,
    /// The next node id (never reused).
    next_id: NodeId,
    /// A removal the leader accepted, not committed yet, and when it was accepted.
    removing: Option<(NodeId, Micros)>,
    trace: TraceHash,
    steps: u64,
    stats: WorldStats,
    filters: Vec<DropFilter>,
    faults_on: bool,
    plan: FaultPlan,
    violation: Option<String>,
    /// The seed's fault mix, in a swarm run.
    swarm: Option<Swarm>,
    /// The core liveness phase, once started.
    core: Option<liveness::Core>,
}

const TAG_PEER: u64 = 1;
const TAG_TO_NODE: u64 = 2;
const TAG_TO_CLIENT: u64 = 3;
const TAG_TIMER: u64 = 4;
const TAG_FAULT: u64 = 5;
const TAG_CLIENT: u64 = 6;
const TAG_LINK: u64 = 7;
const TAG_JOIN: u64 = 8;

impl World {
    /// A cluster of `cfg.nodes` fresh nodes (all links down, coming up within a few ms) and
    /// the configured clients; random faults start if `cfg.faults`.
    /// With `cfg.swarm`, the seed's mix ([`Swarm::draw`]) shapes the run: `cfg` is the base
    /// configuration it is drawn from.
    pub fn new(mut cfg: SimConfig) -> World {
        let swarm = cfg.swarm.then(|| Swarm::draw(&cfg));
        if let Some(mix) = &swarm {
            mix.apply(&mut cfg);
        }
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let net_rng = fastrand::Rng::with_seed(rng.u64(..));
        let members: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let mut nodes = BTreeMap::new();
        for &id in &members {
            let node_cfg = node_config(&cfg, id, &members, rng.u64(..));
            nodes.insert(id, SimNode::new(node_cfg));
        }
        let net = Network::new(&members, cfg.latency);
        let mut plan = FaultPlan {
            membership: cfg.membership,
            ..FaultPlan::default()
        };
        plan.sizes = (plan.sizes.0.min(cfg.nodes), plan.sizes.1.max(cfg.nodes));
        if let Some(mix) = &swarm {
            plan = mix.plan(plan);
        }
        let mut w = World {
            rng,
            net_rng,
            clock: Clock::new(),
            events: BTreeMap::new(),
            event_seq: 0,
            members,
            nodes,
            net,
            conns: BTreeMap::new(),
            next_conn: 0,
            clients: Vec::new(),
            users: Vec::new(),
            checker: Checker::new(),
            targets: Vec::new(),
            retired_seen: 0,
            next_id: cfg.nodes as NodeId + 1,
            removing: None,
            trace: TraceHash::default(),
            steps: 0,
            stats: WorldStats::default(),
            filters: Vec::new(),
            faults_on: cfg.faults,
            plan,
            violation: None,
            swarm,
            core: None,
            cfg,
        };
        w.targets = w.members.clone();
        for id in w.members.clone() {
            w.start_node(id);
        }
        for (a, b) in w.net.pairs() {
            let at = w.rng.u64(ms(1)..=ms(20));
            w.schedule(at, Event::LinkUp(a, b));
        }
        // "dave" has two talking devices, and the probers are his third.
        let talker_users = ["alice", "bob", "carol", "dave", "dave", "erin", "frank"];
        for i in 0..w.cfg.talkers {
            let user = talker_users
                .get(i)
                .map_or_else(|| format!("user{i}"), |u| u.to_string());
            let rooms: Vec<String> = match w.rng.u8(..3) {
                0 => vec![ROOMS[0].into()],
                1 => vec![ROOMS[1].into()],
                _ => ROOMS.iter().map(|r| r.to_string()).collect(),
            };
            let start = w.rng.u64(ms(0)..=ms(100));
            w.add_client_spec(&user, ClientKind::Talker, rooms, None, true, start);
        }
        for _ in 0..w.cfg.probers {
            let start = w.rng.u64(ms(50)..=ms(400));
            w.add_client_spec("dave", ClientKind::Prober, Vec::new(), None, true, start);
        }
        if w.faults_on {
            let at = w.rng.u64(ms(200)..=ms(400));
            w.schedule(at, Event::NextFault);
        }
        w
    }

    fn add_client_spec(
        &mut self,
        user: &str,
        kind: ClientKind,
        rooms: Vec<String>,
        prefer: Option<NodeId>,
        auto_say: bool,
        start: Micros,
    ) -> usize {
        let index = self.clients.len();
        let spec = ClientSpec {
            user: user.to_owned(),
            client_id: self.rng.u64(1..),
            kind,
            rooms,
            params: ClientParams {
                history_size: u64::from(NodeConfig::default().history_size),
                ..ClientParams::default()
            },
            seed: self.rng.u64(..),
            start,
            prefer,
            auto_say,
        };
        self.clients.push(SimClient::new(index, spec));
        if !self.users.iter().any(|u| u == user) {
            self.users.push(user.to_owned());
        }
        index
    }

    /// Adds a talker joining `rooms` that connects to `node` first; `auto_say` makes it say
    /// messages on its own. Returns its index.
    pub fn add_talker(
        &mut self,
        user: &str,
        rooms: &[&str],
        node: Option<NodeId>,
        auto_say: bool,
    ) -> usize {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        let now = self.clock.micros();
        self.add_client_spec(user, ClientKind::Talker, rooms, node, auto_say, now)
    }

    /// Virtual now, in microseconds.
    pub fn now(&self) -> Micros {
        self.clock.micros()
    }

    /// The run's configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The nodes not stopped for good: the first ones and those started to join, in id
    /// order (removed nodes leave the list once they stop).
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// Whether the node was removed and stopped for good.
    pub fn is_gone(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.gone)
    }

    /// A live node's core.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id).and_then(|n| n.node.as_ref())
    }

    /// What the node's disk holds durably (what a restart would recover).
    pub fn durable(&mut self, id: NodeId) -> Option<Recovered> {
        self.nodes
            .get(&id)
            .and_then(|n| durable_state(&n.disk).ok())
    }

    /// The node's simulated disk (its fault counters, or to inject a fault by hand).
    pub fn disk(&self, id: NodeId) -> Option<&SimDisk> {
        self.nodes.get(&id).map(|n| &n.disk)
    }

    /// Whether the node is paused.
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused)
    }

    /// The live node that leads the highest epoch, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.node.as_ref().map(|node| (id, node.stats())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.epoch)
            .map(|(id, _)| id)
    }

    /// A client.
    pub fn client(&self, i: usize) -> &SimClient {
        &self.clients[i]
    }

    /// A client, to steer it.
    pub fn client_mut(&mut self, i: usize) -> &mut SimClient {
        &mut self.clients[i]
    }

    /// The invariant checker.
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// Counters.
    pub fn stats(&self) -> &WorldStats {
        &self.stats
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.value()
    }

    /// Drops peer frames the filter matches, until it is removed.
    pub fn add_drop_filter(&mut self, f: DropFilter) {
        self.filters.push(f);
    }

    /// Removes every drop filter.
    pub fn clear_drop_filters(&mut self) {
        self.filters.clear();
    }

    fn schedule(&mut self, at: Micros, ev: Event) {
        self.event_seq += 1;
        self.events.insert((at, self.event_seq), ev);
    }

    fn note(&self, msg: impl AsRef<str>) {
        if self.cfg.verbose {
            let t = self.clock.micros();
            eprintln!("[{:>6}.{:03} ms] {}", t / 1000, t % 1000, msg.as_ref());
        } else {
            debug!("sim: {}", msg.as_ref());
        }
    }

    fn fail(&mut self, msg: String) {
        if self.violation.is_none() {
            self.violation = Some(msg);
        }
    }

    /// The failure report for `message` at the current step.
    pub fn failure(&self, message: String) -> Failure {
        Failure {
            seed: self.cfg.seed,
            flags: self.cfg.replay_flags(),
            nodes: self.cfg.nodes,
            at_ms: self.clock.micros() / 1000,
            step: self.steps,
            message,
        }
    }

    /// Why node `id` does not follow `leader` in its epoch with everything applied and the same
    /// configuration, if it does not (None too if either is not running).
    pub(super) fn lags_behind(&self, id: NodeId, leader: NodeId) -> Option<String> {
        let lnode = self.node(leader)?;
        let (ls, config) = (lnode.stats(), lnode.configs().current());
        let node = self.node(id)?;
        let s = node.stats();
        if s.leader != Some(leader) || s.epoch != ls.epoch {
            return Some(format!(
                "node {id} follows {:?} in epoch {} (leader {leader}, epoch {})",
                s.leader, s.epoch, ls.epoch
            ));
        }
        if s.applied != ls.last_index || s.last_index != ls.last_index {
            return Some(format!(
                "node {id} applied {} of {} (log {})",
                s.applied, ls.last_index, s.last_index
            ));
        }
        if node.configs().current() != config {
            return Some(format!(
                "node {id} has configuration {:?}, leader {leader} {:?}",
                node.configs().current(),
                config
            ));
        }
        None
    }

    /// Runs one step (the earliest event, node timer or client timer, if not after `limit`),
    /// then checks the invariants. Ok(false) when nothing is due until `limit` (the clock is
    /// then at `limit`).
    pub fn step(&mut self, limit: Micros) -> Result<bool, Failure> {
        let now = self.clock.micros();
        let mut best: Option<(Micros, u8, u64)> = self
            .events
            .first_key_value()
            .map(|(&(t, s), _)| (t.max(now), 0, s));
        let mut consider = |c: (Micros, u8, u64)| {
            if best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        };
        for (&id, n) in &self.nodes {
            if n.paused {
                continue;
            }
            if let Some(t) = n.deadline.filter(|_| n.node.is_some()) {
                consider((self.deadline_micros(id, t).max(now), 1, u64::from(id)));
            }
        }
        for c in &self.clients {
            if let Some(t) = c.wake_at() {
                consider((t.max(now), 2, c.index as u64));
            }
        }
        let Some((t, kind, id)) = best else {
            self.clock.advance_to(limit);
            return Ok(false);
        };
        if t > limit {
            self.clock.advance_to(limit);
            return Ok(false);
        }
        self.clock.advance_to(t);
        self.steps += 1;
        match kind {
            0 => {
                if let Some((_, ev)) = self.events.pop_first() {
                    self.handle_event(ev);
                }
            }
            1 => {
                self.check_due(id as NodeId);
                self.node_timer(id as NodeId);
            }
            _ => self.client_tick(id as usize),
        }
        self.check()?;
        Ok(true)
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Micros) -> Result<(), Failure> {
        while self.step(until)? {}
        Ok(())
    }

    /// Runs for `d` more virtual microseconds.
    pub fn run_for(&mut self, d: Micros) -> Result<(), Failure> {
        let until = self.clock.micros() + d;
        self.run_until(until)
    }

    /// Runs until `cond` holds (true) or `d` has passed (false).
    pub fn run_until_cond(
        &mut self,
        d: Micros,
        mut cond: impl FnMut(&World) -> bool,
    ) -> Result<bool, Failure> {
        let until = self.clock.micros() + d;
        loop {
            if cond(self) {
                return Ok(true);
            }
            if !self.step(until)? {
                return Ok(cond(self));
            }
        }
    }

    fn check(&mut self) -> Result<(), Failure> {
        if let Some(v) = self.violation.take() {
            return Err(self.failure(v));
        }
        let rooms: Vec<String> = ROOMS.iter().map(|r| r.to_string()).collect();
        let devices = NodeConfig::default().devices_per_user as usize;
        for (&id, n) in &self.nodes {
            if let Some(node) = &n.node {
                if let Err(v) = self
                    .checker
                    .check_node(id, node, &self.users, &rooms, devices)
                {
                    return Err(self.failure(v));
                }
            }
        }
        self.follow_retirements();
        Ok(())
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::Input { node, input } => self.node_input(node, input),
            Event::ToClient { conn, bytes } => self.deliver_to_client(conn, bytes),
            Event::ClientSeesClose { conn } => {
                let Some(ci) = self.conns.get_mut(&conn) else {
                    return;
                };
                if !ci.client_open {
                    return;
                }
                ci.client_open = false;
                let i = ci.client;
                self.with_client(i, |c, env| c.on_closed(env, conn));
            }
            Event::LinkUp(a, b) => self.link_up(a, b),
            Event::FallbackDial { hi, lo, generation } => self.fallback_dial(hi, lo, generation),
            Event::NextFault => self.inject_fault(),
            Event::Heal(h) => self.heal(h),
            Event::JoinTick(id) => self.join_tick(id),
            Event::JoinAsk {
                joiner,
                conn,
                to,
                req,
            } => self.join_ask(joiner, conn, to, req),
            Event::JoinAnswer {
                joiner,
                conn,
                from,
                answer,
            } => self.join_answer(joiner, conn, from, answer),
        }
    }

    /// Why the system has not converged yet (None once it has): one leader every member of
    /// its configuration follows, every node that is not stopped for good a member, every
    /// member up and linked to every other, agreeing on the configuration, every log committed
    /// and applied to the end, no session left on a node that is no member, every talker
    /// resumed with nothing unacked and every message of its rooms delivered.
    pub fn not_converged(&self) -> Option<String> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                !n.paused
                    && n.node
                        .as_ref()
                        .is_some_and(|x| x.stats().role == Role::Leader)
            })
            .map(|(&id, _)| id)
            .collect();
        let [leader] = leaders[..] else {
            return Some(format!("leaders: {leaders:?}"));
        };
        let lnode = self.node(leader)?;
        let config = lnode.configs().current();
        let set = config.ids();
        for (&id, n) in &self.nodes {
            if n.gone {
                continue;
            }
            if !set.contains(&id) {
                return Some(format!(
                    "node {id} is no member of leader {leader}'s configuration {set:?} \
                     (joining: {}, retired: {})",
                    n.join.is_some(),
                    config.retired.contains(&id)
                ));
            }
            if n.node.is_none() || n.paused {
                return Some(format!("node {id} is down"));
            }
        }
        for &id in &set {
            if self.nodes.get(&id).is_none_or(|n| n.gone) {
                return Some(format!("member {id} of {set:?} stopped for good"));
            }
        }
        for (a, b) in self.net.pairs() {
            if !set.contains(&a) || !set.contains(&b) {
                continue;
            }
            if !self.net.connected(a, b) || self.net.faulty(a, b) {
                let lists = |x: NodeId, y: NodeId| {
                    if self.lists(x, y) {
                        format!("{x} lists {y}")
                    } else {
                        format!("{x} does not list {y}")
                    }
                };
                return Some(format!(
                    "link {a} <-> {b} is not up ({}, {})",
                    lists(a, b),
                    lists(b, a)
                ));
            }
        }
        let ls = lnode.stats();
        if ls.committed != ls.last_index {
            return Some(format!(
                "leader {leader} committed {} of {}",
                ls.committed, ls.last_index
            ));
        }
        for &id in &set {
            if let Some(why) = self.lags_behind(id, leader) {
                return Some(why);
            }
        }
        let chat = lnode.chat();
        for &id in self.nodes.keys() {
            let ghosts = chat.sessions_on(id).len();
            if ghosts > 0 && !set.contains(&id) {
                return Some(format!(
                    "{ghosts} sessions on node {id}, which is no member, are still open"
                ));
            }
        }
        for c in &self.clients {
            if c.kind != ClientKind::Talker {
                continue;
            }
            if let Some(why) = talker_behind(c, chat) {
                return Some(why);
            }
        }
        None
    }

    /// One line per node: role, epoch, leader, log, configuration, peers and links (for
    /// failure reports).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (&id, n) in &self.nodes {
            let state = match (&n.node, n.gone, n.paused) {
                (_, true, _) => "gone".to_owned(),
                (None, ..) => "down".to_owned(),
                (Some(node), _, paused) => {
                    let s = node.stats();
                    let c = node.configs();
                    format!(
                        "{}{} of epoch {}, leader {:?}, log {} committed {} applied {}, \
                         members {:?} (applied {:?}, retired {:?}), member {}",
                        if paused { "paused " } else { "" },
                        s.role.name(),
                        s.epoch,
                        s.leader,
                        s.last_index,
                        s.committed,
                        s.applied,
                        c.current().ids(),
                        c.applied().ids(),
                        c.current().retired,
                        node.is_member()
                    )
                }
            };
            // Guests included: links to nodes it does not list.
            let links: Vec<NodeId> = self
                .nodes
                .keys()
                .copied()
                .filter(|&p| p != id && self.net.connected(id, p))
                .collect();
            out.push_str(&format!(
                "\n    node {id}: {state}; peers {:?}, linked {links:?}",
                n.peers
            ));
        }
        out
    }

    /// Heals everything (see [`World::heal_all`]), runs until the system converges within
    /// `bound`, then runs the end-of-run checks. Returns how long convergence took.
    pub fn settle(&mut self, bound: Micros) -> Result<Micros, Failure> {
        let start = self.now();
        self.heal_all();
        if !self.run_until_cond(bound, |w| w.not_converged().is_none())? {
            let why = self.not_converged().unwrap_or_default();
            return Err(self.failure(format!(
                "liveness: not converged {} ms after healing: {why}{}",
                bound / 1000,
                self.describe()
            )));
        }
        self.final_checks()?;
        Ok(self.now() - start)
    }

    /// End-of-run checks once converged: every acknowledged message is on every running node
    /// (nodes removed for good are not running), and every node's chat state is the same
    /// (whether it applied the log or installed a snapshot).
    pub fn final_checks(&self) -> Result<(), Failure> {
        let mut first: Option<(NodeId, &Node)> = None;
        for (&id, n) in &self.nodes {
            if let Some(node) = &n.node {
                self.checker
                    .check_acked_present(id, node)
                    .map_err(|v| self.failure(v))?;
                match first {
                    None => first = Some((id, node)),
                    Some((a, na)) if na.chat() != node.chat() => {
                        return Err(self.failure(format!(
                            "replicas: node {a} and node {id} applied index {} but their chat \
                             states differ",
                            node.stats().applied
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The summary of the run so far.
    pub fn report(&self, liveness_ms: u64) -> Report {
        let acked = self.clients.iter().map(|c| c.stats.acked).sum();
        let received = self.clients.iter().map(|c| c.stats.received).sum();
        let reconnects = self.clients.iter().map(|c| c.stats.reconnects).sum();
        let refused = self.clients.iter().map(|c| c.stats.refused).sum();
        let first = self.cfg.nodes as NodeId;
        let joins = self.checker.ever_members().filter(|&id| id > first).count() as u64;
        let mut trace = self.trace;
        trace.mix(self.steps);
        trace.mix(acked);
        Report {
            seed: self.cfg.seed,
            nodes: self.cfg.nodes,
            steps: self.steps,
            virtual_ms: self.clock.micros() / 1000,
            elections: self.checker.elections() as u64,
            max_epoch: self.checker.max_epoch(),
            faults: self.stats.faults.values().sum(),
            fault_kinds: self.stats.faults.clone(),
            crashes: self.stats.crashes,
            committed: self.checker.committed_len(),
            acked,
            received,
            reconnects,
            refused,
            joins,
            removals: self.checker.retired_count() as u64,
            removes_refused: self.stats.removes_refused,
            zombies: self.stats.zombies_stopped,
            liveness_ms,
            trace_hash: trace.value(),
            swarm: self.swarm.clone(),
            liveness_mode: self.cfg.liveness_mode,
            core: self
                .core
                .as_ref()
                .map_or_else(Vec::new, |c| c.nodes.clone()),
            left_crashed: self
                .core
                .as_ref()
                .map_or_else(Vec::new, |c| c.crashed.clone()),
            left_cut_off: self
                .core
                .as_ref()
                .map_or_else(Vec::new, |c| c.cut_off.clone()),
        }
    }
}

/// A simulated node's configuration: `members` from flags (none for a joining node), the
/// simulated peer addresses of them and of the node, the run's timing and snapshot settings.
pub(super) fn node_config(
    cfg: &SimConfig,
    id: NodeId,
    members: &[NodeId],
    seed: u64,
) -> NodeConfig {
    NodeConfig {
        id,
        members: members.to_vec(),
        addresses: members
            .iter()
            .chain([&id])
            .map(|&m| (m, peer_addr(m)))
            .collect(),
        cluster_id: CLUSTER_ID,
        heartbeat_interval: cfg.heartbeat,
        failure_timeout: cfg.failure_timeout,
        session_timeout: cfg.session_timeout,
        snapshot_entries: cfg.snapshot_entries,
        compact_keep: cfg.compact_keep,
        snapshot_chunk: cfg.snapshot_chunk,
        snapshot_step: cfg.snapshot_step,
        replication_linger: cfg.replication_linger,
        replicate_after_persist: cfg.replicate_after_persist,
        snapshot_after_growth: cfg.snapshot_after_growth,
        reset_silent_links: cfg.reset_silent_links,
        seed,
        ..NodeConfig::default()
    }
}
