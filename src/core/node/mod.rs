//! `Node`: one cluster member's state machine. Clients' frames become proposals; proposals reach
//! the leader's log (directly, or forwarded by a follower); committed entries are applied to the
//! chat state on every node, and each node turns the outcomes into frames for its own clients.
//! The cluster side is split by what it holds: `cluster.rs` (peer links, heartbeats, timers,
//! each turn's flush), `election.rs` (the ring election, following, leading, stepping down),
//! `replication.rs` (appends, acknowledgements, commit, held sends), `members.rs` (membership
//! changes), `snapshot.rs`; `ready.rs` is the output contract and `timers.rs` the timer table.

mod cluster;
mod config;
mod election;
mod members;
mod ready;
mod replication;
mod snapshot;
mod timers;

pub use ready::{PersistJob, Ready, SnapshotWrite};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info};

use super::chat::{ChatState, Outcome, RoomExit, StoredMessage};
use super::log::{approx_size, Command, Entry, Epoch, HardState, Log, LogIndex, PersistMark};
use super::membership::Config;
use super::names;
use super::outbox::Outbox;
use super::progress::Progress;
use super::round::Rounds;
use super::{Action, ConnId, NodeId, Now, SessionId, SharedBytes};
use crate::codec::{self, ClientFrame, CodecError, ErrorCode, ServerFrame};
use crate::core::durable::{Recovered, StoredSnapshot};

use snapshot::{Encoding, Incoming, PendingSnapshot};
use timers::{Timer, Timers};

pub use config::{NodeConfigError, MAX_HISTORY_SIZE, MAX_TEXT_LIMIT};

/// Tunables of the core (checked by [`NodeConfig::validate`], in `config.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Every member of the cluster, this node included (just this node when empty), until the
    /// log holds a configuration.
    pub members: Vec<NodeId>,
    /// Peer addresses of members (this node's own included), for the first logged
    /// configuration and for nodes that join later.
    pub addresses: BTreeMap<NodeId, String>,
    /// The node starts as a newcomer asking to join: it is no member until the cluster adds it.
    pub joining: bool,
    /// Cluster identity checked in peer handshakes.
    pub cluster_id: u64,
    /// Messages replayed on a plain join.
    pub history_size: u32,
    /// Longest message text in bytes.
    pub max_text: u32,
    /// Devices a user may have connected at once.
    pub devices_per_user: u32,
    /// Proposals waiting for the leader (or for a leader to exist) before clients get "busy".
    pub max_pending: usize,
    /// Largest history page returned.
    pub max_page: u32,
    /// How often heartbeats (and the leader's empty appends) go to every peer.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer (or the leader) is considered dead.
    pub failure_timeout: Duration,
    /// Silence after which the leader ends a lost node's client sessions.
    pub session_timeout: Duration,
    /// Most entries in one Append.
    pub max_append_entries: usize,
    /// Rough byte bound of one Append.
    pub max_append_bytes: usize,
    /// Most entries sent to a follower and not yet acknowledged.
    pub replication_window: u64,
    /// Longest time the leader holds new entries (and a follower its proposals) for the active
    /// writers to write again, so that one round carries them all (zero: never; see
    /// `core::round`).
    pub replication_linger: Duration,
    /// The leader sends entries only once its own copy is durable, and says so in each
    /// Append, so that in a cluster of three a follower commits them as soon as it stores
    /// them, with no commit notice. Right when persisting costs nothing (memory storage);
    /// with a disk it would put the leader's sync before the followers' instead of beside.
    pub replicate_after_persist: bool,
    /// Seed of the node's random generator (election jitter).
    pub seed: u64,
    /// Take a snapshot once this many entries were applied since the last one (0: no limit).
    pub snapshot_entries: u64,
    /// Take a snapshot once entries of about this many bytes were applied since the last one
    /// (0: no limit): bounds the log to replay and hold in memory when messages are long.
    pub snapshot_bytes: u64,
    /// Either limit takes a snapshot only once the entries applied since the last one are at
    /// least that image's size: each encodes the whole state, so their cost per entry stays
    /// bounded as the history grows.
    pub snapshot_after_growth: bool,
    /// Entries kept in memory behind a snapshot, so a follower slightly behind gets entries
    /// rather than the whole snapshot.
    pub compact_keep: u64,
    /// Bytes of one snapshot chunk sent to a follower.
    pub snapshot_chunk: usize,
    /// Snapshot chunks sent ahead of the follower's acknowledgements.
    pub snapshot_window: usize,
    /// Bytes of snapshot image encoded per loop turn (about): bounds the pause of a snapshot
    /// of a long history.
    pub snapshot_step: usize,
    /// Close and redial a peer link silent for [`NodeConfig::link_silence_limit`]. Off only
    /// in the simulator, to show the stall after a silent partition it prevents.
    pub reset_silent_links: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            members: Vec::new(),
            addresses: BTreeMap::new(),
            joining: false,
            cluster_id: 0,
            history_size: 10,
            max_text: 4096,
            devices_per_user: 2,
            max_pending: 65_536,
            max_page: 200,
            heartbeat_interval: Duration::from_millis(30),
            failure_timeout: Duration::from_millis(200),
            session_timeout: Duration::from_secs(5),
            max_append_entries: 1024,
            max_append_bytes: 1 << 20,
            replication_window: 8192,
            replication_linger: Duration::from_millis(1),
            replicate_after_persist: false,
            seed: 1,
            snapshot_entries: 100_000,
            snapshot_bytes: 64 << 20,
            snapshot_after_growth: true,
            compact_keep: 10_000,
            snapshot_chunk: 256 * 1024,
            snapshot_window: 4,
            snapshot_step: 256 * 1024,
            reset_silent_links: true,
        }
    }
}

/// What a node is doing in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Started an election and waits for its token to come back.
    Candidate,
    /// Orders every write of its epoch.
    Leader,
}

impl Role {
    /// Lower-case name for status views.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Hands back what a [`PersistJob`] covered once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistToken {
    log: PersistMark,
    hard_version: u64,
    /// The index of the snapshot the bundle stored, if it stored one.
    snapshot: Option<LogIndex>,
}

#[derive(Debug, PartialEq, Eq)]
enum ConnState {
    /// Connected; only Hello is valid.
    New,
    /// Hello proposed; further requests are proposed behind it.
    Opening,
    /// Session open.
    Open,
}

/// Counters for status views and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStats {
    /// Role.
    pub role: Role,
    /// Current epoch.
    pub epoch: u64,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Client connections known to the core.
    pub connections: usize,
    /// Live sessions cluster-wide.
    pub sessions: usize,
    /// Last log index.
    pub last_index: LogIndex,
    /// Commit index.
    pub committed: LogIndex,
    /// Applied index.
    pub applied: LogIndex,
    /// Own proposals not yet applied.
    pub pending: usize,
}

/// What this node knows of one peer: a node it lists (a member of a configuration its log
/// holds, a learner, a removed node it informs, the leader it joins through), or a *guest*,
/// one of the cluster it does not list, kept only while linked. A guest's frames are handled
/// like anyone's (a leader this node's log does not know yet must be followed, as in Raft),
/// but it counts in no majority and gets no token: those follow the configuration.
#[derive(Clone, Debug, Default)]
struct Peer {
    /// This node lists it (false: a guest).
    listed: bool,
    connected: bool,
    last_heard: Option<Instant>,
    load: u32,
    /// Epoch in its last heartbeat.
    epoch: Option<u64>,
    /// Whether its last heartbeat said it hears this node.
    hears_us: bool,
    /// Whether a heartbeat on this link said it hears this node and takes part in elections
    /// (it has its state, or caught up since it lost it). Until then a learner is not added.
    votes: bool,
    /// Where it serves clients, as it said in the handshake.
    client_addr: String,
    /// Where it listens for peers (from the configuration).
    peer_addr: String,
}

/// An output that may leave only once the election state (version) and the log (index) it
/// depends on are durable.
#[derive(Debug)]
struct Held {
    hard_version: u64,
    index: LogIndex,
    action: Action,
    /// Sent as leader of this epoch: dropped unless the node still leads it.
    leading: Option<Epoch>,
}

/// A cluster member's whole state.
pub struct Node {
    cfg: NodeConfig,
    incarnation: u64,
    hard: HardState,
    hard_version: u64,
    /// The election state version last handed to storage, and the last known durable.
    hard_submitted: u64,
    hard_persisted: u64,
    role: Role,
    leader: Option<NodeId>,
    log: Log,
    chat: ChatState,
    outbox: Outbox,
    conns: HashMap<ConnId, ConnState>,
    /// Connections whose input ended (half-closed): they get the answers to what they asked,
    /// then close once their session's end is applied.
    ending: BTreeSet<ConnId>,
    peers: BTreeMap<NodeId, Peer>,
    progress: BTreeMap<NodeId, Progress>,
    /// When the leader was last heard from (followers).
    leader_heard: Instant,
    /// Every deadline of the node.
    timers: Timers,
    /// The leader has shown it leads (an Append, or a heartbeat naming itself), so proposals
    /// forwarded to it are not dropped as sent to a node that does not know yet it won.
    leader_confirmed: bool,
    /// The election (or pre-election) this node started and waits on.
    election: Option<Campaign>,
    /// The last token this node passed on (epoch, initiator, pre) and when, to know it when
    /// it comes back after a detour past an initiator some node could not reach.
    token_passed: Option<(u64, NodeId, bool, Instant)>,
    /// Members the token of this node's campaign was sent to when it came home without them.
    revisited: Vec<NodeId>,
    held: Vec<Held>,
    /// Highest commit index each peer knows of: sent to it, or committed by itself on the
    /// leader's word that the entries are durable here (see `leader_durable`).
    commit_sent: BTreeMap<NodeId, LogIndex>,
    /// Follower: the epoch of its leader, and up to where that leader's log is durable (by
    /// its Appends) and matches ours.
    leader_durable: (Epoch, LogIndex),
    /// Lost nodes whose sessions this leader proposed to end (not applied yet).
    expiring: BTreeSet<NodeId>,
    /// When a leader next looks for sessions held by nodes that are no peer at all (a scan of
    /// every session, so once per session timeout).
    orphans_check_at: Option<Instant>,
    /// When this node became leader.
    leader_since: Instant,
    /// Since when this node knows no leader, and whether its clients were told to go (after
    /// [`NodeConfig::leaderless_limit`]).
    leaderless_since: Option<Instant>,
    told_no_leader: bool,
    actions: Vec<Action>,
    /// An emptied actions buffer the shell gave back ([`Node::recycle`]), so a turn hands
    /// out its actions without copying them and the next fills a buffer already grown.
    spare_actions: Vec<Action>,
    rng: fastrand::Rng,
    shutting_down: bool,
    /// Started without durable state in a cluster of several: until it has caught up (or sees
    /// the whole cluster is new) its empty log must not count in an election.
    amnesia: Amnesia,
    /// The newest durable snapshot (taken here or installed), streamed to followers behind it.
    snapshot: Option<Rc<StoredSnapshot>>,
    /// A snapshot of this node's state being encoded.
    encoding: Option<Encoding>,
    /// A snapshot to store at the next persist.
    pending_snapshot: Option<PendingSnapshot>,
    /// Leader: when the entries it appends go to the followers.
    rounds: Rounds,
    /// Follower: when its own proposals go to the leader.
    forwards: Rounds,
    /// A snapshot being received from the leader.
    incoming: Option<Incoming>,
    /// An admin asked for a snapshot.
    snapshot_requested: bool,
    /// Added to the snapshot interval, in thousandths of it, different on every node, so the
    /// nodes do not all spend the turns of an encoding (and a disk write) at the same time.
    snapshot_jitter_permille: u64,
    /// Approximate bytes of the entries applied since the last snapshot.
    applied_bytes: u64,
    /// Why the last persist failed, while storage is failing: no writes are taken meanwhile.
    storage_error: Option<String>,
    /// Voting members of the configuration in effect, in ring order.
    members: Vec<NodeId>,
    /// Configuration version `members` and `peers` were derived from.
    configs_seen: u64,
    /// Counts changes of the peer set (for the shell's links), and the count last reported.
    peers_version: u64,
    peers_reported: u64,
    /// Leader: joining nodes being caught up before they vote, with their peer addresses.
    learners: BTreeMap<NodeId, String>,
    /// Leader: removed nodes still told of their removal (its index, and until when at most).
    leaving: BTreeMap<NodeId, (LogIndex, Instant)>,
    /// Joining node: the leader that accepted us, and when.
    join_leader: Option<(NodeId, String)>,
    join_accepted_at: Option<Instant>,
    /// Why this node is out of the cluster, once it is, and whether the shell was told.
    removed: Option<String>,
    removal_reported: bool,
}

/// An election this node started: its epoch, and whether it is the pre-election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Campaign {
    epoch: u64,
    pre: bool,
}

/// Whether a node that started with no durable state may take part in elections yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Amnesia {
    /// It has its state (or caught up): it may.
    No,
    /// It lost (or never had) its state and has not heard enough yet.
    Unknown,
    /// It must first apply up to this commit index, learned from a leader.
    CatchingUpTo(LogIndex),
}

impl Node {
    /// A node that recovers from `recovered` (its durable state). A cluster of one leads at once;
    /// otherwise the node follows and waits for a leader (or elects one). Fails only when the
    /// recovered snapshot does not decode.
    pub fn new(cfg: NodeConfig, recovered: Recovered, now: Now) -> Result<Node, CodecError> {
        // The configuration from flags, until the log holds one: a joining node has none.
        let mut members = cfg.members.clone();
        if !cfg.joining {
            members.push(cfg.id);
        }
        members.sort_unstable();
        members.dedup();
        let flags_config = Config::of(members.iter().map(|&m| {
            let addr = cfg.addresses.get(&m).cloned().unwrap_or_default();
            (m, addr)
        }));
        let amnesia = if recovered.hard_state.amnesiac
            || (recovered.hard_state == HardState::default()
                && recovered.entries.is_empty()
                && recovered.snapshot.is_none()
                && (members.len() > 1 || cfg.joining))
        {
            Amnesia::Unknown
        } else {
            Amnesia::No
        };
        let mut hard = recovered.hard_state;
        hard.amnesiac = amnesia != Amnesia::No;
        // Every run needs its own number, even after a wiped data dir (or with in-memory
        // storage): the wall clock in milliseconds provides it. Only distinctness matters.
        hard.incarnation = (hard.incarnation + 1).max(now.unix_ms);
        let incarnation = hard.incarnation;
        let (devices, history) = (cfg.devices_per_user as usize, cfg.history_size as usize);
        let (chat, log) = match &recovered.snapshot {
            Some(s) => {
                let (config, mut chat) = codec::decode_snapshot(&s.bytes)?;
                chat.configure(devices, history);
                let mut log = Log::after_snapshot(s.meta.index, s.meta.epoch, recovered.entries);
                log.init_configs(config, true);
                (chat, log)
            }
            None => {
                let mut log = Log::recovered(recovered.entries);
                log.init_configs(flags_config, false);
                (ChatState::new(devices, history), log)
            }
        };
        let mut outbox = Outbox::new(cfg.id, incarnation);
        // Sessions of our previous run are gone; this goes first, before any new session.
        outbox.push(Command::NodeBoot { node: cfg.id });
        let rng = fastrand::Rng::with_seed(cfg.seed ^ (u64::from(cfg.id) << 48) ^ incarnation);
        let mut node = Node {
            members: Vec::new(),
            incarnation,
            hard,
            hard_version: 1,
            hard_submitted: 0,
            hard_persisted: 0,
            role: Role::Follower,
            leader: None,
            log,
            chat,
            outbox,
            conns: HashMap::new(),
            ending: BTreeSet::new(),
            peers: BTreeMap::new(),
            progress: BTreeMap::new(),
            leader_heard: now.mono,
            timers: Timers::default(),
            leader_confirmed: false,
            election: None,
            token_passed: None,
            revisited: Vec::new(),
            held: Vec::new(),
            commit_sent: BTreeMap::new(),
            leader_durable: (0, 0),
            expiring: BTreeSet::new(),
            orphans_check_at: None,
            leader_since: now.mono,
            leaderless_since: None,
            told_no_leader: false,
            actions: Vec::new(),
            spare_actions: Vec::new(),
            rng,
            shutting_down: false,
            amnesia,
            snapshot: recovered.snapshot.map(Rc::new),
            encoding: None,
            pending_snapshot: None,
            rounds: Rounds::new(cfg.replication_linger, cfg.id),
            forwards: Rounds::new(cfg.replication_linger, cfg.id).adaptive(),
            incoming: None,
            snapshot_requested: false,
            snapshot_jitter_permille: 0,
            applied_bytes: 0,
            storage_error: None,
            configs_seen: u64::MAX,
            peers_version: 0,
            peers_reported: u64::MAX,
            learners: BTreeMap::new(),
            leaving: BTreeMap::new(),
            join_leader: None,
            join_accepted_at: None,
            removed: None,
            removal_reported: false,
            cfg,
        };
        node.snapshot_jitter_permille = node.rng.u64(0..=250);
        // A node removed earlier must not come back from its old data: a snapshot that retires
        // it stops it here (in sync_members). A configuration entry after the snapshot may not
        // be committed (the next leader may have dropped it), so it only makes the node no
        // member; the leader, which links to it as a guest, tells it once the entry commits.
        node.sync_members(now.mono);
        info!(
            "node {}: starting (incarnation {}, epoch {}, log index {}, {} members)",
            node.cfg.id,
            node.incarnation,
            node.hard.epoch,
            node.log.last_index(),
            node.members.len()
        );
        node.election_after(now.mono);
        node.timers.set(Timer::Heartbeat, Some(now.mono));
        if node.members == [node.cfg.id] {
            node.start_election(now);
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The core's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// This run's incarnation number.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.hard.epoch
    }

    /// Read access to the applied chat state.
    pub fn chat(&self) -> &ChatState {
        &self.chat
    }

    /// The log entry at `index`, if held (for invariant checks).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.get(index)
    }

    /// Counters for status views.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            role: self.role,
            epoch: self.hard.epoch,
            leader: self.leader,
            connections: self.conns.len(),
            sessions: self.chat.session_count(),
            last_index: self.log.last_index(),
            committed: self.log.committed(),
            applied: self.log.applied(),
            pending: self.outbox.len(),
        }
    }

    /// A client connection was accepted.
    pub fn handle_connect(&mut self, _now: Now, conn: ConnId) {
        self.conns.insert(conn, ConnState::New);
    }

    /// A client connection ended (closed by either side); its session closes.
    pub fn handle_disconnect(&mut self, _now: Now, conn: ConnId) {
        if let Some(state) = self.conns.remove(&conn) {
            if !self.ending.remove(&conn) && state != ConnState::New {
                let session = self.session(conn);
                self.propose(Command::CloseSession { session });
            }
        }
    }

    /// A client will send nothing more (its input ended): it still gets the answers to what it
    /// asked, which may wait on the cluster and the disk; the node closes the connection once
    /// its session's end is applied (at once if it never said Hello).
    pub fn handle_input_end(&mut self, _now: Now, conn: ConnId) {
        match self.conns.get(&conn) {
            Some(ConnState::New) => self.close(conn, "closed by the client".into()),
            Some(_) if self.ending.insert(conn) => {
                let session = self.session(conn);
                self.propose(Command::CloseSession { session });
            }
            _ => {}
        }
    }

    /// Bytes from a client could not be decoded: report why, then drop the connection.
    pub fn handle_bad_frame(&mut self, _now: Now, conn: ConnId, err: &CodecError) {
        self.fail(
            conn,
            err.code(),
            None,
            format!("{err}; closing the connection"),
        );
        self.close(conn, format!("bad frame: {err}"));
    }

    /// A decoded frame from a client.
    pub fn handle_frame(&mut self, now: Now, conn: ConnId, frame: ClientFrame) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if self.shutting_down {
            return;
        }
        let session = self.session(conn);
        match (state, frame) {
            (_, ClientFrame::Ping(p)) => self.send(conn, &ServerFrame::Pong(p)),
            (_, ClientFrame::Status(_)) => {
                let report = self.status(now);
                self.send(conn, &ServerFrame::Status(report));
            }
            (_, ClientFrame::Admin(req)) => {
                let reply = match req {
                    codec::AdminRequest::Remove { node } => self.request_remove(now.mono, node),
                    codec::AdminRequest::Snapshot => {
                        self.request_snapshot();
                        codec::AdminReply {
                            ok: true,
                            message: format!(
                                "node {} takes a snapshot at log index {}",
                                self.cfg.id,
                                self.log.applied()
                            ),
                            leader: None,
                        }
                    }
                };
                self.send(conn, &ServerFrame::AdminReply(reply));
            }
            (ConnState::New, ClientFrame::Hello(h)) => {
                if let Err(e) = names::validate_user(&h.user) {
                    self.fail(conn, ErrorCode::InvalidUser, None, e);
                    return self.close(conn, "invalid username".into());
                }
                if self.busy(conn, None) {
                    return self.close(conn, "busy".into());
                }
                if self.told_no_leader {
                    self.fail(conn, ErrorCode::NoLeader, None, self.no_leader_message());
                    return self.close(conn, "no leader".into());
                }
                self.conns.insert(conn, ConnState::Opening);
                self.propose(Command::OpenSession {
                    session,
                    user: h.user,
                    client_id: h.client_id,
                });
            }
            (ConnState::New, other) => {
                let msg = format!("{} before Hello; say Hello first", frame_name(&other));
                self.fail(conn, ErrorCode::ProtocolViolation, None, msg);
                self.close(conn, "request before Hello".into());
            }
            (_, ClientFrame::Hello(_)) => {
                self.fail(
                    conn,
                    ErrorCode::ProtocolViolation,
                    None,
                    "already said Hello".into(),
                );
            }
            (_, ClientFrame::Join(j)) => {
                if self.room_ok(conn, &j.room, None) && !self.busy(conn, None) {
                    self.propose(Command::Join {
                        session,
                        room: j.room,
                        after_seq: j.after_seq,
                    });
                }
            }
            (_, ClientFrame::Leave(l)) => {
                if self.room_ok(conn, &l.room, None) && !self.busy(conn, None) {
                    self.propose(Command::Leave {
                        session,
                        room: l.room,
                    });
                }
            }
            (_, ClientFrame::Say(s)) => {
                if !self.room_ok(conn, &s.room, Some(s.client_seq)) {
                    return;
                }
                if let Err(e) = names::validate_text(&s.text, self.cfg.max_text as usize) {
                    return self.fail(conn, ErrorCode::InvalidText, Some(s.client_seq), e);
                }
                if self.busy(conn, Some(s.client_seq)) {
                    return;
                }
                self.propose(Command::Say {
                    session,
                    room: s.room,
                    client_seq: s.client_seq,
                    text: s.text.into(),
                    time_ms: now.unix_ms,
                });
            }
            (_, ClientFrame::Who(w)) => {
                if self.room_ok(conn, &w.room, None) {
                    let users = self.chat.member_names(&w.room);
                    self.send(
                        conn,
                        &ServerFrame::Members(codec::Members {
                            room: w.room,
                            users,
                        }),
                    );
                }
            }
            (_, ClientFrame::History(h)) => {
                if self.room_ok(conn, &h.room, None) {
                    let limit = h.limit.min(self.cfg.max_page) as usize;
                    let (msgs, more) = self.chat.page(&h.room, h.before_seq, limit);
                    let messages = msgs.iter().map(|m| wire_message(&h.room, m)).collect();
                    let page = codec::HistoryPage {
                        room: h.room,
                        messages,
                        more,
                    };
                    self.send(conn, &ServerFrame::HistoryPage(page));
                }
            }
        }
    }

    /// Storage made a [`PersistJob`] durable: commit what that allows, release what waited on
    /// it (the next [`Node::turn`] hands it out).
    pub fn handle_persisted(&mut self, _now: Now, token: PersistToken) {
        if let Some(why) = self.storage_error.take() {
            info!(
                "node {}: storage works again (it failed: {why}); taking writes",
                self.cfg.id
            );
        }
        self.log.persisted_through(token.log);
        self.hard_persisted = self.hard_persisted.max(token.hard_version);
        if let Some(index) = token.snapshot {
            self.snapshot_persisted(index);
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        } else {
            self.commit_durable_pair();
        }
        let (hard, index) = (self.hard_persisted, self.log.persisted());
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].hard_version <= hard && self.held[i].index <= index {
                let h = self.held.remove(i);
                let leads = |e| self.role == Role::Leader && self.hard.epoch == e;
                if h.leading.is_none_or(leads) {
                    self.actions.push(h.action);
                }
            } else {
                i += 1;
            }
        }
        self.apply_committed();
    }

    /// Storage could not make a [`PersistJob`] durable (disk full, I/O error). Nothing it
    /// covered is acknowledged; everything not reported durable is handed out again by the next
    /// turn that may persist (the shell waits a little first). Meanwhile the node takes no
    /// writes from clients and steps down if it leads (it could not store its own entries), and
    /// refuses to lead.
    pub fn handle_persist_failed(&mut self, now: Now, why: String) {
        self.log.resubmit();
        self.hard_submitted = self.hard_persisted;
        if let Some(p) = &mut self.pending_snapshot {
            p.submitted = false;
        }
        if self.storage_error.is_none() {
            error!(
                "node {}: storage failed: {why}; refusing writes until it works again",
                self.cfg.id
            );
            // Writes in flight from our clients may never be stored here: they learn it now
            // (and may re-send elsewhere; de-duplication makes that safe) rather than time out.
            let msg = format!("this node cannot store writes ({why}); use another node");
            let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
            conns.sort();
            for conn in conns {
                self.fail(conn, ErrorCode::StorageFailed, None, msg.clone());
            }
        }
        self.storage_error = Some(why);
        if self.role != Role::Follower {
            self.step_down(now.mono, "its storage is failing");
        }
    }

    /// Where to send a client this node has no room for: the live peer with the fewest client
    /// connections, if it has fewer than this node (loads travel with heartbeats).
    pub fn redirect_target(&self, now: Now) -> Option<&str> {
        self.peers
            .iter()
            .filter(|(&id, p)| {
                // Not a guest: it may be a removed node that has not learned it yet.
                p.listed && p.connected && !p.client_addr.is_empty() && self.alive(id, now.mono)
            })
            .min_by_key(|(&id, p)| (p.load, id))
            .filter(|(_, p)| (p.load as usize) < self.conns.len())
            .map(|(_, p)| p.client_addr.as_str())
    }

    /// Why storage is failing, while it is.
    pub fn storage_error(&self) -> Option<&str> {
        self.storage_error.as_deref()
    }

    /// Stop serving: tell every client to go elsewhere; the driver then flushes and closes.
    pub fn begin_shutdown(&mut self, _now: Now) {
        self.shutting_down = true;
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort();
        for conn in conns {
            let msg = "node is shutting down; reconnect to another node".into();
            self.fail(conn, ErrorCode::ShuttingDown, None, msg);
            self.close(conn, "shutdown".into());
        }
    }

    fn session(&self, conn: ConnId) -> SessionId {
        SessionId {
            node: self.cfg.id,
            incarnation: self.incarnation,
            conn,
        }
    }

    /// Refuses a write, with an error saying why, when storage is failing or too many proposals
    /// wait already (rather than dropping it silently).
    fn busy(&mut self, conn: ConnId, client_seq: Option<u64>) -> bool {
        if let Some(why) = &self.storage_error {
            let msg = format!("this node cannot store writes ({why}); use another node");
            self.fail(conn, ErrorCode::StorageFailed, client_seq, msg);
            return true;
        }
        if self.outbox.len() < self.cfg.max_pending {
            return false;
        }
        let msg = "too many writes are waiting for the cluster; retry shortly".into();
        self.fail(conn, ErrorCode::Busy, client_seq, msg);
        true
    }

    fn propose(&mut self, command: Command) {
        let id = self.outbox.push(command);
        debug!("node {}: proposed {}:{}", self.cfg.id, id.node, id.seq);
    }

    fn apply_committed(&mut self) {
        while let Some(entry) = self.log.next_to_apply() {
            if let Some(id) = entry.origin {
                self.outbox.applied(id);
            }
            self.applied_bytes += approx_size(&entry.command) as u64;
            if let Command::Config(c) = &entry.command {
                let c = c.clone();
                self.config_applied(&c);
                continue;
            }
            let outcome = self.chat.apply_entry(entry);
            self.report(outcome);
        }
    }

    /// Turns an applied outcome into frames for this node's clients.
    fn report(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Nothing => {}
            Outcome::NodeSessionsEnded { node, exits } => {
                self.expiring.remove(&node);
                self.announce_exits(&exits);
                if node == self.cfg.id {
                    self.close_orphans();
                }
            }
            Outcome::SessionOpened { session, replaced } => {
                if let Some((old, exits)) = replaced {
                    self.announce_exits(&exits);
                    if self.is_local(old) {
                        let msg = "this device reconnected elsewhere".into();
                        self.fail(old.conn, ErrorCode::ProtocolViolation, None, msg);
                        self.close(old.conn, "session resumed by another connection".into());
                    }
                }
                if self.is_local(session) {
                    self.conns.insert(session.conn, ConnState::Open);
                    let user = self.chat.user_of(session).unwrap_or_default().to_owned();
                    let welcome = codec::Welcome {
                        node_id: self.cfg.id,
                        user,
                        history_size: self.cfg.history_size,
                        max_text: self.cfg.max_text,
                    };
                    self.send(session.conn, &ServerFrame::Welcome(welcome));
                }
            }
            Outcome::SessionRefused { session, devices } => {
                if self.is_local(session) {
                    let msg = format!(
                        "this username is already connected on {devices} devices (the limit is {}); \
                         disconnect one and try again",
                        self.cfg.devices_per_user
                    );
                    self.fail(session.conn, ErrorCode::DeviceLimit, None, msg);
                    // The refused session never opened: nothing to close in the log.
                    self.conns.insert(session.conn, ConnState::New);
                    self.close(session.conn, "device limit".into());
                }
            }
            Outcome::SessionClosed { session, exits } => {
                self.announce_exits(&exits);
                if self.is_local(session) && self.ending.contains(&session.conn) {
                    self.close(session.conn, "closed by the client".into());
                }
            }
            Outcome::Joined {
                session,
                room,
                user_arrived,
                replay_after,
            } => {
                if user_arrived {
                    let user = self.chat.user_of(session).unwrap_or_default().to_owned();
                    self.notify_room(&room, Some(session), &user, codec::NoticeEvent::Joined);
                }
                if self.is_local(session) {
                    self.replay(session.conn, &room, replay_after);
                }
            }
            Outcome::Left { session, exit } => {
                if self.is_local(session) {
                    self.send(
                        session.conn,
                        &ServerFrame::Left(codec::Left {
                            room: exit.room.clone(),
                        }),
                    );
                }
                self.announce_exits(std::slice::from_ref(&exit));
            }
            Outcome::Said {
                session,
                room,
                client_seq,
                message,
            } => {
                let bytes: SharedBytes = codec::encode_message(
                    &room,
                    &message.author,
                    message.seq,
                    message.time_ms,
                    &message.text,
                )
                .into();
                // The per-recipient hot path: no connection lookup, since a member whose
                // connection just went is still in the room until its CloseSession applies, and
                // the driver ignores sends to connections it no longer has.
                for m in self.chat.members(&room) {
                    if m.node == self.cfg.id && m.incarnation == self.incarnation {
                        self.actions.push(Action::Send {
                            conn: m.conn,
                            bytes: bytes.clone(),
                        });
                    }
                }
                self.ack(session, room, client_seq, message.seq);
            }
            Outcome::Duplicate {
                session,
                room,
                client_seq,
                seq,
            } => self.ack(session, room, client_seq, seq),
            Outcome::NotInRoom {
                session,
                room,
                client_seq,
            } => {
                if self.is_local(session) {
                    let msg = format!("you are not in room {room:?}; join it first");
                    self.fail(session.conn, ErrorCode::NotInRoom, client_seq, msg);
                }
            }
        }
    }

    /// Closes local connections whose session the cluster ended (this node was cut off for
    /// longer than the session timeout); their clients resume on another node.
    fn close_orphans(&mut self) {
        let mut orphans: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(&c, st)| {
                **st == ConnState::Open && self.chat.user_of(self.session(c)).is_none()
            })
            .map(|(&c, _)| c)
            .collect();
        orphans.sort();
        for conn in orphans {
            let msg =
                "the cluster lost this node for too long and ended your session; reconnect".into();
            self.fail(conn, ErrorCode::ShuttingDown, None, msg);
            self.close(conn, "session ended by the cluster".into());
        }
    }

    fn replay(&mut self, conn: ConnId, room: &str, after: u64) {
        let mut buf = Vec::new();
        for m in self.chat.messages_after(room, after) {
            let frame = ServerFrame::Message(wire_message(room, m));
            if let Err(e) = codec::encode_into(&frame, &mut buf) {
                log::error!("node {}: cannot encode history of {room}: {e}", self.cfg.id);
            }
        }
        let joined = codec::Joined {
            room: room.to_owned(),
            last_seq: self.chat.last_seq(room),
            members: self.chat.member_names(room),
        };
        if let Err(e) = codec::encode_into(&ServerFrame::Joined(joined), &mut buf) {
            log::error!("node {}: cannot encode Joined for {room}: {e}", self.cfg.id);
        }
        self.actions.push(Action::Send {
            conn,
            bytes: buf.into(),
        });
    }

    fn ack(&mut self, session: SessionId, room: String, client_seq: u64, seq: u64) {
        if self.is_local(session) {
            self.send(
                session.conn,
                &ServerFrame::Ack(codec::Ack {
                    room,
                    client_seq,
                    seq,
                }),
            );
        }
    }

    fn announce_exits(&mut self, exits: &[RoomExit]) {
        for exit in exits.iter().filter(|e| e.user_gone) {
            self.notify_room(&exit.room, None, &exit.user, codec::NoticeEvent::Left);
        }
    }

    /// Sends a presence notice to the room's local members except `skip`.
    fn notify_room(
        &mut self,
        room: &str,
        skip: Option<SessionId>,
        user: &str,
        event: codec::NoticeEvent,
    ) {
        let notice = codec::Notice {
            room: room.to_owned(),
            user: user.to_owned(),
            event,
        };
        let Some(bytes) = self.encode(&ServerFrame::Notice(notice)) else {
            return;
        };
        for m in self.chat.members(room) {
            if Some(*m) != skip && self.is_local(*m) {
                self.actions.push(Action::Send {
                    conn: m.conn,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn room_ok(&mut self, conn: ConnId, room: &str, client_seq: Option<u64>) -> bool {
        match names::validate_room(room) {
            Ok(()) => true,
            Err(e) => {
                self.fail(conn, ErrorCode::InvalidRoom, client_seq, e);
                false
            }
        }
    }

    fn is_local(&self, s: SessionId) -> bool {
        s.node == self.cfg.id
            && s.incarnation == self.incarnation
            && self.conns.contains_key(&s.conn)
    }

    fn encode(&self, frame: &ServerFrame) -> Option<SharedBytes> {
        match codec::encode(frame) {
            Ok(b) => Some(b.into()),
            Err(e) => {
                log::error!("node {}: cannot encode {frame:?}: {e}", self.cfg.id);
                None
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: &ServerFrame) {
        if let Some(bytes) = self.encode(frame) {
            self.actions.push(Action::Send { conn, bytes });
        }
    }

    fn fail(&mut self, conn: ConnId, code: ErrorCode, client_seq: Option<u64>, message: String) {
        debug!(
            "node {}: conn {} error {}: {message}",
            self.cfg.id,
            conn.0,
            code.name()
        );
        let frame = codec::ErrorFrame {
            code: code as u16,
            client_seq,
            message,
        };
        self.send(conn, &ServerFrame::Error(frame));
    }

    fn close(&mut self, conn: ConnId, reason: String) {
        self.actions.push(Action::Close { conn, reason });
    }
}

fn wire_message(room: &str, m: &StoredMessage) -> codec::ChatMessage {
    codec::ChatMessage {
        room: room.to_owned(),
        seq: m.seq,
        author: m.author.to_string(),
        time_ms: m.time_ms,
        text: m.text.to_string(),
    }
}

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Hello(_) => "Hello",
        ClientFrame::Join(_) => "Join",
        ClientFrame::Leave(_) => "Leave",
        ClientFrame::Say(_) => "Say",
        ClientFrame::Who(_) => "Who",
        ClientFrame::History(_) => "History",
        ClientFrame::Ping(_) => "Ping",
        ClientFrame::Status(_) => "Status",
        ClientFrame::Admin(_) => "Admin",
    }
}

#[cfg(test)]
mod tests;
