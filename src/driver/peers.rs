//! The peer mesh: one TCP link to every other cluster member, carrying [`PeerFrame`]s.
//!
//! - Of every pair of nodes that list each other, the LOWER id dials the higher; the higher one
//!   accepts (on `--peer-listen`), and dials the lower one itself only as a fallback, when no
//!   link to it came up for [`FALLBACK_DIAL_AFTER`]: the lower one may not list it (it missed
//!   the configuration entry adding it) and would never dial. A dial is a non-blocking connect
//!   registered for WRITABLE; on the event `take_error()` and `peer_addr()` tell whether it
//!   completed. Failed dials and lost links are retried with exponential backoff (20 ms
//!   doubling to 1 s, jitter in [d/2, d] from a generator seeded with the node id; the
//!   fallback dial adds it to its own delay); a link that comes up resets the backoff.
//! - Handshake: each side first sends `Hello{cluster_id, node_id, epoch}`. The receiver checks
//!   the cluster id, that the id is not its own and, on a link it dialed, that it is the node
//!   it meant to reach. Only then is the link up ([`LinkEvent::Up`]). A node of the
//!   cluster that this one does not list is linked as a *guest*: never dialed, forgotten when
//!   its link drops (the core decides what a guest's frames may do). A refused or silent link
//!   is dropped with a warning naming the reason (silent: after [`HANDSHAKE_TIMEOUT`]).
//! - One link per pair: a new link to a peer that is already linked replaces the old one (the
//!   core hears of the old one's end first), unless the old one was dialed by the lower id
//!   and the new one was not: when both ends dial at once, both keep the lower id's link.
//! - A peer the core stops listing keeps its established link, as a guest; only a dial in
//!   progress to it is dropped.
//! - Links read until `WouldBlock` (with a per-turn budget, then a re-read next turn), decode
//!   with the shared codec, and queue output in an [`OutQueue`] bounded by
//!   [`MAX_PEER_OUTPUT`]; a link over the bound is dropped (the core restarts replication
//!   to that peer when it comes back).
//!
//! - The mesh never calls the node: what happens on the links (a link up or down, a frame, a
//!   join request) is queued as [`LinkEvent`]s that the driver feeds to the node in order, and
//!   the node's sends and resets come back as calls ([`Mesh::send`], [`Mesh::reset`],
//!   [`Mesh::answer_join`]).
//!
//! Tokens: a link's token is `PEER_BASE + slab key`, far above any client connection's key.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, log, warn, Level};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::conn::{InBuf, OutQueue, OutputPool};
use super::{listen, DaemonConfig, DriverError};
use crate::codec::{self, JoinReply, JoinRequest, PeerFrame, PeerHello};
use crate::core::{NodeId, Now, SharedBytes};

/// The peer listener's token.
pub(super) const PEER_LISTENER: Token = Token(usize::MAX - 4);
/// First token of peer links (a link's token is `PEER_BASE + key`).
pub(super) const PEER_BASE: usize = usize::MAX / 2;

/// First retry delay after a failed dial or a lost link (the largest is
/// `NodeConfig::dial_backoff_max`, and a connect is abandoned after `NodeConfig::dial_timeout`).
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest a new link may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A node dials a peer with a lower id (which normally dials it) once no link to it came up
/// for this long: the peer may not list it, and then only this node's dial links them.
pub const FALLBACK_DIAL_AFTER: Duration = Duration::from_secs(2);
/// Bytes queued for one peer beyond which its link is dropped.
pub const MAX_PEER_OUTPUT: usize = 256 * 1024 * 1024;
/// Inbound links still in their handshake beyond which new ones are refused.
const MAX_PENDING_INBOUND: usize = 16;
/// Read buffer of the peer links.
const PEER_SCRATCH_LEN: usize = 256 * 1024;
/// Reads of one link per turn before the others get a turn.
const PEER_READS_PER_TURN: usize = 16;
/// Pause before retrying `accept` after a resource error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Least interval between two warnings about refused inbound links (a misconfigured node
/// retries every second).
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Where a link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Our non-blocking connect is in progress.
    Connecting,
    /// Our Hello is sent (or queued); waiting for theirs.
    Handshake,
    /// Handshake done: frames go to and from this member.
    Up(NodeId),
    /// An accepted link that asked to join: it waits for the node's answer, then closes.
    Joining,
}

/// What happened on the links, for the driver to feed to the node in order (the mesh never
/// calls the node itself).
#[derive(Debug)]
pub enum LinkEvent {
    /// A link to `peer` completed its handshake.
    Up {
        /// The peer.
        peer: NodeId,
        /// Where it serves clients, as its Hello said.
        client_addr: String,
    },
    /// The link to `peer` went down.
    Down {
        /// The peer.
        peer: NodeId,
    },
    /// A frame from `peer`.
    Frame {
        /// The peer.
        peer: NodeId,
        /// The frame.
        frame: PeerFrame,
    },
    /// A new node asks to join: answer with [`Mesh::answer_join`] on `link`.
    Join {
        /// The link it asked on.
        link: usize,
        /// Its request.
        req: JoinRequest,
    },
}

/// One TCP connection to (or from) another member.
struct Link {
    stream: TcpStream,
    addr: SocketAddr,
    state: State,
    /// The member we dialed (None: the link was accepted).
    dialed: Option<NodeId>,
    input: InBuf,
    out: OutQueue,
    write_armed: bool,
    dirty: bool,
    /// The connect or the handshake must be done by then.
    deadline: Option<Instant>,
}

impl Link {
    fn describe(&self) -> String {
        match self.dialed {
            Some(id) => format!("dialed link to node {id} at {}", self.addr),
            None => format!("accepted link from {}", self.addr),
        }
    }
}

/// What this node knows about reaching one other node: a peer the core lists, or a guest.
#[derive(Debug)]
struct Slot {
    /// Where to dial it (for a guest: where its link came from, never dialed).
    addr: SocketAddr,
    /// The core lists it as a peer; false for a guest, linked only while its link lasts.
    listed: bool,
    /// Our id is lower: we dial it at once; otherwise only as a fallback.
    we_dial: bool,
    /// Key of the established link.
    up: Option<usize>,
    /// Key of our dial in progress.
    dialing: Option<usize>,
    /// Next dial no earlier than this.
    next_dial: Option<Instant>,
    backoff: Duration,
    /// Failed dials since the last link was up (quiets repeated warnings).
    failures: u32,
}

impl Slot {
    /// A peer the core lists, at `addr`: the lower id dials at once, the higher one after
    /// [`FALLBACK_DIAL_AFTER`] if no link came up by then.
    fn listed(own: NodeId, peer: NodeId, addr: SocketAddr, now: Instant) -> Slot {
        let we_dial = own < peer;
        Slot {
            addr,
            listed: true,
            we_dial,
            up: None,
            dialing: None,
            next_dial: Some(if we_dial {
                now
            } else {
                now + FALLBACK_DIAL_AFTER
            }),
            backoff: DIAL_BACKOFF_MIN,
            failures: 0,
        }
    }

    /// A node the core does not list that linked to us from `addr`.
    fn guest(own: NodeId, peer: NodeId, addr: SocketAddr, now: Instant) -> Slot {
        Slot {
            listed: false,
            next_dial: None,
            ..Slot::listed(own, peer, addr, now)
        }
    }

    /// True when a dial to it is planned or may be: listed, no link up, none in progress.
    fn wants_dial(&self) -> bool {
        self.listed && self.up.is_none() && self.dialing.is_none()
    }
}

/// The links of one node to the other members. See the module docs.
pub struct Mesh {
    id: NodeId,
    cluster_id: u64,
    /// The client address peers are told in the handshake (for redirects).
    client_addr: String,
    listener: Option<TcpListener>,
    local_addr: Option<SocketAddr>,
    registry: Registry,
    slots: BTreeMap<NodeId, Slot>,
    links: Slab<Link>,
    dirty: Vec<usize>,
    reread: Vec<usize>,
    scratch: Box<[u8]>,
    /// Memory the links' output queues share.
    output_pool: OutputPool,
    frames: Vec<PeerFrame>,
    rng: fastrand::Rng,
    accept_retry_at: Option<Instant>,
    max_output: usize,
    /// A connect not done by then is abandoned (`NodeConfig::dial_timeout`).
    dial_timeout: Duration,
    /// Largest pause between dials (`NodeConfig::dial_backoff_max`).
    backoff_max: Duration,
    /// The kernel aborts a link whose sent data stays unacknowledged this long
    /// (`TCP_USER_TIMEOUT`, `NodeConfig::link_silence_limit`).
    user_timeout: Duration,
    drops: u64,
    /// What happened since the driver last took the events.
    events: Vec<LinkEvent>,
    /// The node's epoch, told to peers in the handshake.
    epoch: u64,
    /// When a refused inbound link was last logged at warn, and refusals since.
    refusal_warned_at: Option<Instant>,
    refusals: u64,
}

/// Why a Hello is refused, if it is. Any other node of the cluster passes, listed or not (a
/// node this one does not list becomes a guest): a member that missed the configuration entry
/// adding a node must still hear from it when it leads.
pub fn check_hello(
    hello: &PeerHello,
    own_id: NodeId,
    cluster_id: u64,
    dialed: Option<NodeId>,
) -> Result<NodeId, String> {
    if hello.cluster_id != cluster_id {
        return Err(format!(
            "wrong cluster id {} (this cluster is {cluster_id})",
            hello.cluster_id
        ));
    }
    if hello.node_id == own_id {
        return Err(format!("it claims this node's own id {own_id}"));
    }
    if let Some(want) = dialed.filter(|&w| w != hello.node_id) {
        return Err(format!(
            "expected node {want} at this address, but node {} answered",
            hello.node_id
        ));
    }
    Ok(hello.node_id)
}

/// Of two links between this node (`own`) and `peer`, whether the `old` one stays and the
/// `new` one goes, given which of them this node dialed. When both ends dial at once, both
/// keep the link the lower id dialed (and the pair settles on one link). Otherwise the new link
/// wins: its dialer found no link, so the old one is dead or dying.
pub fn old_link_stays(own: NodeId, peer: NodeId, old_dialed: bool, new_dialed: bool) -> bool {
    let by_lower = |we_dialed: bool| we_dialed == (own < peer);
    by_lower(old_dialed) && !by_lower(new_dialed)
}

/// Counts a failure: the first one (since the last success) logs at `level`, repeats at debug.
fn quieter_after_first(failures: &mut u32, level: Level) -> Level {
    *failures += 1;
    if *failures == 1 {
        level
    } else {
        Level::Debug.max(level)
    }
}

/// The client address to tell peers: a wildcard listen IP (0.0.0.0) is no address a client
/// can use, so the peer address's IP (the host's cluster-facing one) stands in for it.
fn advertised(client: SocketAddr, peer_listen: Option<SocketAddr>) -> SocketAddr {
    match peer_listen {
        Some(p) if client.ip().is_unspecified() && !p.ip().is_unspecified() => {
            SocketAddr::new(p.ip(), client.port())
        }
        _ => client,
    }
}

/// A delay in [d/2, d].
fn jittered(rng: &mut fastrand::Rng, d: Duration) -> Duration {
    d / 2 + d.mul_f64(rng.f64() / 2.0)
}

impl Mesh {
    /// Binds `--peer-listen` (if set) and plans a dial to every higher-id member; peers are
    /// told `client_addr` (the bound client address) as where this node serves clients.
    pub fn new(
        cfg: &DaemonConfig,
        registry: &Registry,
        now: Instant,
        client_addr: SocketAddr,
    ) -> Result<Mesh, DriverError> {
        let registry = registry.try_clone().map_err(|source| DriverError::Io {
            context: "cloning the poll registry",
            source,
        })?;
        let (listener, local_addr) = match cfg.peer_listen {
            Some(addr) => {
                let bind_err = |source| DriverError::Bind { addr, source };
                let mut l = listen(addr).map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                registry
                    .register(&mut l, PEER_LISTENER, Interest::READABLE)
                    .map_err(|source| DriverError::Io {
                        context: "registering the peer listener",
                        source,
                    })?;
                info!("node {}: listening for peers on {local}", cfg.id);
                (Some(l), Some(local))
            }
            None => (None, None),
        };
        let timing = cfg.node_config();
        let slots = cfg
            .peers
            .iter()
            .map(|(&peer, &addr)| (peer, Slot::listed(cfg.id, peer, addr, now)))
            .collect();
        Ok(Mesh {
            id: cfg.id,
            cluster_id: cfg.cluster_id,
            client_addr: advertised(client_addr, cfg.peer_listen).to_string(),
            listener,
            local_addr,
            registry,
            slots,
            links: Slab::new(),
            dirty: Vec::new(),
            output_pool: OutputPool::default(),
            reread: Vec::new(),
            scratch: vec![0u8; PEER_SCRATCH_LEN].into_boxed_slice(),
            frames: Vec::new(),
            rng: fastrand::Rng::with_seed(0x7269_6e67 ^ u64::from(cfg.id)),
            accept_retry_at: None,
            max_output: MAX_PEER_OUTPUT,
            dial_timeout: timing.dial_timeout(),
            backoff_max: timing.dial_backoff_max().max(DIAL_BACKOFF_MIN),
            user_timeout: timing.link_silence_limit(),
            drops: 0,
            events: Vec::new(),
            epoch: 0,
            refusal_warned_at: None,
            refusals: 0,
        })
    }

    /// The client address told to peers.
    pub fn client_addr(&self) -> &str {
        &self.client_addr
    }

    /// Makes the links follow the node's peer set (membership changes): new peers get a slot
    /// at the address the configuration gives (dialed at once by the lower id, as a fallback
    /// by the higher), a guest the node now lists becomes a peer, and a peer it no longer
    /// lists loses its slot, or becomes a guest while its link is up (it may still list this
    /// node: a removed node that has to learn it, a leader this node's log does not know). A
    /// peer already known keeps its address: `--peers` says how this host reaches it (through
    /// a proxy or NAT, say), which the configuration cannot know.
    pub fn sync_peers(&mut self, now: Now, wanted: &[(NodeId, String)]) {
        let gone: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(id, s)| s.listed && !wanted.iter().any(|(w, _)| w == *id))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.unlist(now, id);
        }
        for (id, addr) in wanted {
            let parsed = addr.parse::<SocketAddr>();
            match (self.slots.get_mut(id), parsed) {
                (Some(slot), _) if slot.listed => {}
                (Some(slot), Ok(a)) => {
                    info!("node {}: guest {id} (peers at {a}) is now a peer", self.id);
                    let listed = Slot::listed(self.id, *id, a, now.mono);
                    slot.addr = a;
                    slot.listed = true;
                    slot.next_dial = listed.next_dial;
                }
                (None, Ok(a)) => {
                    info!("node {}: node {id} (peers at {a}) is now a peer", self.id);
                    self.slots
                        .insert(*id, Slot::listed(self.id, *id, a, now.mono));
                }
                // Without an address it cannot be dialed: a guest stays one meanwhile.
                (_, Err(_)) if addr.is_empty() => {}
                (_, Err(e)) => warn!(
                    "node {}: node {id} has an unusable peer address {addr:?}: {e}",
                    self.id
                ),
            }
        }
    }

    /// The core no longer lists `id`: a dial in progress is dropped; an established link
    /// stays, as a guest's, and goes with the slot when it drops.
    fn unlist(&mut self, now: Now, id: NodeId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.listed = false;
        slot.next_dial = None;
        let dialing = slot.dialing.take();
        let up = slot.up.is_some();
        if let Some(key) = dialing {
            self.drop_link(now, key, Level::Info, "no longer a peer");
        }
        if up {
            info!(
                "node {}: node {id} is no longer a peer; its link stays while it lasts (guest)",
                self.id
            );
        } else {
            self.slots.remove(&id);
            info!("node {}: node {id} is no longer a peer", self.id);
        }
    }

    /// The bound peer address, if listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Nodes with an established link (guests included).
    pub fn linked(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.up.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Links dropped so far (the driver settles again while this grows).
    pub fn drops(&self) -> u64 {
        self.drops
    }

    /// True when a link used its read budget and must be read again without waiting.
    pub fn has_reread(&self) -> bool {
        !self.reread.is_empty()
    }

    /// True for the tokens the mesh owns.
    pub fn owns(token: Token) -> bool {
        token == PEER_LISTENER || (PEER_BASE..PEER_LISTENER.0).contains(&token.0)
    }

    /// The nearest instant [`Mesh::on_timer`] has work: a dial, a timeout, an accept retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        let dials = self
            .slots
            .values()
            .filter(|s| s.wants_dial())
            .filter_map(|s| s.next_dial);
        let timeouts = self.links.iter().filter_map(|(_, l)| l.deadline);
        dials.chain(timeouts).chain(self.accept_retry_at).min()
    }

    /// Starts due dials, drops links whose connect or handshake timed out, retries accepts.
    pub fn on_timer(&mut self, now: Now) {
        let t = now.mono;
        let expired: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.deadline.is_some_and(|d| d <= t))
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            let what = match self.links[key].state {
                State::Connecting => "connect timed out",
                _ => "no Hello within the handshake timeout",
            };
            self.drop_link(now, key, Level::Warn, what);
        }
        if self.accept_retry_at.is_some_and(|r| r <= t) {
            self.accept_retry_at = None;
            self.accept_all(now);
        }
        let due: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.wants_dial() && s.next_dial.is_some_and(|d| d <= t))
            .map(|(&id, _)| id)
            .collect();
        for peer in due {
            self.dial(now, peer);
        }
    }

    /// An event on the peer listener or a link.
    pub fn ready(&mut self, now: Now, event: &Event) {
        let token = event.token();
        if token == PEER_LISTENER {
            return self.accept_all(now);
        }
        let key = token.0 - PEER_BASE;
        let Some(link) = self.links.get(key) else {
            return; // spurious: already gone
        };
        if link.state == State::Connecting {
            // Just connected: the peer's Hello may have come with this very edge, read anyway.
            if self.finish_connect(now, key) {
                self.read(now, key, true);
            }
            return;
        }
        if event.is_writable() && !link.out.is_empty() {
            self.flush(now, key);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(now, key, event.is_read_closed() || event.is_error());
        }
    }

    /// Reads again the links that used their budget last turn.
    pub fn reread(&mut self, now: Now) {
        for key in std::mem::take(&mut self.reread) {
            self.read(now, key, true);
        }
    }

    /// Appends to `out` what happened on the links since the last call, in order, for the
    /// node (both buffers keep their capacity: this runs every loop turn).
    pub fn take_events(&mut self, out: &mut Vec<LinkEvent>) {
        out.append(&mut self.events);
    }

    /// The node's epoch, for the Hellos of new links.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Sends the node's answer to a join request, then closes the link. Best effort on a fresh
    /// socket, as for a full server: the newcomer asks again if the answer is lost.
    pub fn answer_join(&mut self, now: Now, link: usize, reply: JoinReply) {
        let Some(l) = self.links.get(link).filter(|l| l.state == State::Joining) else {
            return;
        };
        if let Ok(bytes) = codec::encode(&PeerFrame::JoinReply(reply)) {
            let _ = (&l.stream).write(&bytes);
        }
        self.drop_link(now, link, Level::Debug, "join request answered");
    }

    /// Closes the link to `peer` (the node found it silent) and plans a dial as for any lost
    /// link.
    pub fn reset(&mut self, now: Now, peer: NodeId, why: &str) {
        if let Some(key) = self.slots.get(&peer).and_then(|s| s.up) {
            self.drop_link(now, key, Level::Warn, why);
        }
    }

    /// Queues `bytes` for `to`; dropped when there is no established link to it (the core
    /// sends again what matters once it hears the link is up).
    pub fn send(&mut self, to: NodeId, bytes: SharedBytes) {
        let Some(key) = self.slots.get(&to).and_then(|s| s.up) else {
            return;
        };
        let link = &mut self.links[key];
        link.out.push_reusing(bytes, &mut self.output_pool);
        if !link.dirty {
            link.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes what was queued this turn.
    pub fn flush_dirty(&mut self, now: Now) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            self.flush(now, key);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    fn accept_all(&mut self, now: Now) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.admit(now, stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    warn!(
                        "node {}: peer accept failed: {e}; retrying shortly",
                        self.id
                    );
                    self.accept_retry_at = Some(now.mono + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, now: Now, stream: TcpStream, addr: SocketAddr) {
        let pending = self
            .links
            .iter()
            .filter(|(_, l)| l.dialed.is_none() && l.state == State::Handshake)
            .count();
        if pending >= MAX_PENDING_INBOUND {
            warn!(
                "node {}: refused peer connection from {addr}: {pending} others are still \
                 in their handshake",
                self.id
            );
            return;
        }
        debug!("node {}: peer connection accepted from {addr}", self.id);
        self.set_user_timeout(&stream, addr);
        self.insert(now, stream, addr, None, State::Handshake);
    }

    /// Starts a non-blocking connect to `peer`.
    fn dial(&mut self, now: Now, peer: NodeId) {
        let Some(addr) = self.slots.get(&peer).map(|s| s.addr) else {
            return;
        };
        match TcpStream::connect(addr) {
            Ok(stream) => {
                debug!("node {}: dialing peer {peer} at {addr}", self.id);
                self.set_user_timeout(&stream, addr);
                let key = self.insert_connecting(now, stream, addr, peer);
                if let Some(slot) = self.slots.get_mut(&peer) {
                    slot.dialing = key;
                }
                if key.is_none() {
                    self.dial_failed(now, peer, "cannot register the socket");
                }
            }
            Err(e) => self.dial_failed(now, peer, &e.to_string()),
        }
    }

    fn insert_connecting(
        &mut self,
        now: Now,
        mut stream: TcpStream,
        addr: SocketAddr,
        peer: NodeId,
    ) -> Option<usize> {
        let entry = self.links.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .registry
            .register(&mut stream, Token(PEER_BASE + key), interest)
        {
            warn!("node {}: cannot register a peer socket: {e}", self.id);
            return None;
        }
        entry.insert(Link {
            stream,
            addr,
            state: State::Connecting,
            dialed: Some(peer),
            input: InBuf::new(),
            out: OutQueue::new(),
            write_armed: true,
            dirty: false,
            deadline: Some(now.mono + self.dial_timeout),
        });
        Some(key)
    }

    /// Makes the kernel give up on a link whose data goes unacknowledged as long as the node
    /// lets a link be silent: without it, a connection cut by a partition that drops packets
    /// waits out TCP's retransmission backoff (minutes), on either side.
    fn set_user_timeout(&self, stream: &TcpStream, addr: SocketAddr) {
        let sock = socket2::SockRef::from(stream);
        if let Err(e) = sock.set_tcp_user_timeout(Some(self.user_timeout)) {
            debug!("node {}: TCP_USER_TIMEOUT on {addr}: {e}", self.id);
        }
    }

    /// Adds a connected link, queues our Hello and flushes it.
    fn insert(
        &mut self,
        now: Now,
        mut stream: TcpStream,
        addr: SocketAddr,
        dialed: Option<NodeId>,
        state: State,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("node {}: TCP_NODELAY on peer link {addr}: {e}", self.id);
        }
        let entry = self.links.vacant_entry();
        let key = entry.key();
        if let Err(e) =
            self.registry
                .register(&mut stream, Token(PEER_BASE + key), Interest::READABLE)
        {
            warn!("node {}: cannot register a peer socket: {e}", self.id);
            return;
        }
        entry.insert(Link {
            stream,
            addr,
            state,
            dialed,
            input: InBuf::new(),
            out: OutQueue::new(),
            write_armed: false,
            dirty: false,
            deadline: Some(now.mono + HANDSHAKE_TIMEOUT),
        });
        self.queue_hello(key);
    }

    fn queue_hello(&mut self, key: usize) {
        let hello = PeerFrame::Hello(PeerHello {
            cluster_id: self.cluster_id,
            node_id: self.id,
            epoch: self.epoch,
            client_addr: self.client_addr.clone(),
        });
        match codec::encode(&hello) {
            Ok(bytes) => {
                let link = &mut self.links[key];
                link.out.push_reusing(bytes.into(), &mut self.output_pool);
                if !link.dirty {
                    link.dirty = true;
                    self.dirty.push(key);
                }
            }
            Err(e) => log::error!("node {}: cannot encode the peer Hello: {e}", self.id),
        }
    }

    /// A dialing link got an event: did the connect complete? Returns true when the link is
    /// connected (and now handshaking).
    fn finish_connect(&mut self, now: Now, key: usize) -> bool {
        let link = &mut self.links[key];
        let failed = match link.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            Ok(None) => match link.stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(why) = failed {
            self.drop_link(now, key, Level::Info, &format!("connect failed: {why}"));
            return false;
        }
        if let Err(e) = link.stream.set_nodelay(true) {
            debug!(
                "node {}: TCP_NODELAY on peer link {}: {e}",
                self.id, link.addr
            );
        }
        link.state = State::Handshake;
        link.deadline = Some(now.mono + HANDSHAKE_TIMEOUT);
        debug!("node {}: connected to {}", self.id, link.describe());
        self.queue_hello(key);
        self.flush(now, key);
        self.links.contains(key)
    }

    /// A dial that could not even start.
    fn dial_failed(&mut self, now: Now, peer: NodeId, why: &str) {
        if let Some(slot) = self.slots.get_mut(&peer) {
            let level = quieter_after_first(&mut slot.failures, Level::Info);
            log!(
                level,
                "node {}: cannot reach peer {peer} at {}: {why}; retrying with backoff",
                self.id,
                slot.addr
            );
        }
        self.schedule_dial(now.mono, peer);
    }

    /// Plans the next dial to `peer` after the current backoff (the higher id of the pair
    /// first gives the lower one [`FALLBACK_DIAL_AFTER`] to dial), and doubles the backoff.
    fn schedule_dial(&mut self, now: Instant, peer: NodeId) {
        let Some(slot) = self.slots.get_mut(&peer) else {
            return;
        };
        if !slot.wants_dial() {
            return;
        }
        let wait = if slot.we_dial {
            Duration::ZERO
        } else {
            FALLBACK_DIAL_AFTER
        };
        slot.next_dial = Some(now + wait + jittered(&mut self.rng, slot.backoff));
        slot.backoff = (slot.backoff * 2).min(self.backoff_max);
    }

    /// Reads until `WouldBlock`, EOF, an error or the budget; frames go to the node.
    /// Reads a link until `WouldBlock`, or until a short read (the receive queue was emptied
    /// and later data raises a new edge) unless `to_the_end` (the event reported a FIN or an
    /// error), as the client connections do: one system call less per batch of frames.
    fn read(&mut self, now: Now, key: usize, to_the_end: bool) {
        for _ in 0..PEER_READS_PER_TURN {
            let Some(link) = self.links.get_mut(key) else {
                return;
            };
            if link.state == State::Connecting {
                return;
            }
            match link.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return self.drop_link(now, key, Level::Info, "closed by the peer");
                }
                Ok(n) => {
                    let mut frames = std::mem::take(&mut self.frames);
                    let fed = link
                        .input
                        .feed_frames::<PeerFrame>(&self.scratch[..n], |f| frames.push(f));
                    // The frames before a bad one are good: hand them over first.
                    let alive = self.process(now, key, &mut frames);
                    frames.clear();
                    self.frames = frames;
                    if !alive {
                        return;
                    }
                    if let Err(e) = fed {
                        let why = format!("bad frame: {e}");
                        return self.drop_link(now, key, Level::Warn, &why);
                    }
                    if n < self.scratch.len() && !to_the_end {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("read failed: {e}");
                    return self.drop_link(now, key, Level::Info, &why);
                }
            }
        }
        self.reread.push(key);
    }

    /// Hands decoded frames to the node, doing the handshake first. False if the link is gone.
    fn process(&mut self, now: Now, key: usize, frames: &mut Vec<PeerFrame>) -> bool {
        for frame in frames.drain(..) {
            let Some(link) = self.links.get(key) else {
                return false;
            };
            match (link.state, frame) {
                (State::Up(peer), frame) => self.events.push(LinkEvent::Frame { peer, frame }),
                (State::Handshake, PeerFrame::Hello(hello)) => {
                    if !self.promote(now, key, &hello) {
                        return false;
                    }
                }
                // Asked to join: what else it sends is of no use.
                (State::Joining, _) => {}
                (State::Handshake, PeerFrame::Join(req)) if link.dialed.is_none() => {
                    // Nothing more is read from it: the node's answer closes it.
                    self.links[key].state = State::Joining;
                    self.events.push(LinkEvent::Join { link: key, req });
                    return true;
                }
                (_, other) => {
                    let why = format!(
                        "protocol violation: frame kind {:#04x} before Hello",
                        codec::FrameSet::kind(&other)
                    );
                    self.drop_link(now, key, Level::Warn, &why);
                    return false;
                }
            }
        }
        true
    }

    /// Checks a Hello and, if good, makes the link THE link to that node (a guest's if the
    /// core does not list it), unless a link the pair prefers is up already.
    fn promote(&mut self, now: Now, key: usize, hello: &PeerHello) -> bool {
        let link = &self.links[key];
        let peer = match check_hello(hello, self.id, self.cluster_id, link.dialed) {
            Ok(p) => p,
            Err(why) => {
                let why = format!("handshake refused: {why}");
                self.drop_link(now, key, Level::Warn, &why);
                return false;
            }
        };
        let from = link.addr;
        let slot = self
            .slots
            .entry(peer)
            .or_insert_with(|| Slot::guest(self.id, peer, from, now.mono));
        let (old, dialing) = (slot.up, slot.dialing.filter(|&d| d != key));
        if old.is_some_and(|o| self.keeps(o, key, peer)) {
            let why = "the link dialed by the lower id is up already";
            self.drop_link(now, key, Level::Debug, why);
            return false;
        }
        if let Some(old) = old {
            self.drop_link(now, old, Level::Info, "replaced by a new connection");
        }
        if let Some(d) = dialing.filter(|&d| !self.keeps(d, key, peer)) {
            self.drop_link(now, d, Level::Debug, "another link came up first");
        }
        let link = &mut self.links[key];
        link.state = State::Up(peer);
        link.deadline = None;
        let what = link.describe();
        // A guest's slot went with its old link: this one makes it anew.
        let slot = self
            .slots
            .entry(peer)
            .or_insert_with(|| Slot::guest(self.id, peer, from, now.mono));
        slot.up = Some(key);
        if slot.dialing == Some(key) {
            slot.dialing = None;
        }
        slot.next_dial = None;
        slot.backoff = DIAL_BACKOFF_MIN;
        slot.failures = 0;
        let guest = if slot.listed {
            ""
        } else {
            " as a guest: this node does not list it"
        };
        info!(
            "node {}: peer {peer} linked{guest} ({what}; its epoch {}, clients at {})",
            self.id, hello.epoch, hello.client_addr
        );
        let client_addr = hello.client_addr.clone();
        self.events.push(LinkEvent::Up { peer, client_addr });
        true
    }

    /// Of two links to `peer`, whether the established (or dialing) `old` one stays and the
    /// `new` one goes (see [`old_link_stays`]).
    fn keeps(&self, old: usize, new: usize, peer: NodeId) -> bool {
        let dialed = |key: usize| self.links.get(key).map(|l| l.dialed.is_some());
        match (dialed(old), dialed(new)) {
            (Some(old), Some(new)) => old_link_stays(self.id, peer, old, new),
            _ => false,
        }
    }

    /// How loudly to log a failed inbound link: warnings at most every
    /// [`REFUSAL_WARN_EVERY`] (a misconfigured node retries every second), the rest at debug.
    fn inbound_level(&mut self, now: Instant, level: Level) -> Level {
        if level > Level::Warn {
            return level;
        }
        self.refusals += 1;
        if self
            .refusal_warned_at
            .is_some_and(|t| now.duration_since(t) < REFUSAL_WARN_EVERY)
        {
            return Level::Debug;
        }
        if self.refusals > 1 {
            warn!(
                "node {}: {} inbound peer links refused so far (repeats are logged at debug)",
                self.id, self.refusals
            );
        }
        self.refusal_warned_at = Some(now);
        level
    }

    /// Writes what is queued; drops the link on an error or over the output bound.
    fn flush(&mut self, now: Now, key: usize) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        link.dirty = false;
        if link.state == State::Connecting {
            return; // written once connected
        }
        if let Err(e) = link.out.flush(&mut link.stream, &mut self.output_pool) {
            let why = format!("write failed: {e}");
            return self.drop_link(now, key, Level::Info, &why);
        }
        let queued = link.out.queued();
        if queued > self.max_output {
            let why = format!(
                "{queued} bytes queued for it (limit {}): the peer does not keep up",
                self.max_output
            );
            return self.drop_link(now, key, Level::Warn, &why);
        }
        let want = !link.out.is_empty();
        if want != link.write_armed {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(PEER_BASE + key);
            if let Err(e) = self.registry.reregister(&mut link.stream, token, interest) {
                let why = format!("reregister failed: {e}");
                return self.drop_link(now, key, Level::Warn, &why);
            }
            link.write_armed = want;
        }
    }

    /// The one place a link goes away: an established link's end is reported once.
    fn drop_link(&mut self, now: Now, key: usize, level: Level, why: &str) {
        let Some(mut link) = self.links.try_remove(key) else {
            return;
        };
        let _ = self.registry.deregister(&mut link.stream);
        self.drops += 1;
        let peer = match link.state {
            State::Up(id) => Some(id),
            _ => link.dialed,
        };
        let was_up = match (link.state, peer.and_then(|p| self.slots.get_mut(&p))) {
            (State::Up(_), Some(slot)) if slot.up == Some(key) => {
                slot.up = None;
                true
            }
            _ => false,
        };
        if let Some(slot) = peer.and_then(|p| self.slots.get_mut(&p)) {
            if slot.dialing == Some(key) {
                slot.dialing = None;
            }
        }
        let level = match (was_up, link.dialed.and_then(|p| self.slots.get_mut(&p))) {
            (true, _) => level,
            // A dial that did not come up: said once, then quietly retried with backoff.
            (false, Some(slot)) => quieter_after_first(&mut slot.failures, level),
            (false, None) => self.inbound_level(now.mono, level),
        };
        if was_up {
            let peer = peer.expect("an up link has a peer");
            // Link-level losses matter to operators even when the reason is mundane.
            let level = level.min(Level::Info);
            log!(
                level,
                "node {}: peer {peer} unlinked ({}): {why}",
                self.id,
                link.describe()
            );
            self.events.push(LinkEvent::Down { peer });
        } else {
            log!(
                level,
                "node {}: {} dropped: {why}",
                self.id,
                link.describe()
            );
        }
        if let Some(peer) = peer {
            self.schedule_dial(now.mono, peer);
            self.forget_guest(peer);
        }
    }

    /// A guest's slot goes once it has no link left.
    fn forget_guest(&mut self, peer: NodeId) {
        let idle_guest = self
            .slots
            .get(&peer)
            .is_some_and(|s| !s.listed && s.up.is_none() && s.dialing.is_none());
        if idle_guest {
            self.slots.remove(&peer);
            debug!("node {}: guest {peer} forgotten", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cluster_id: u64, node_id: NodeId) -> PeerHello {
        PeerHello {
            cluster_id,
            node_id,
            epoch: 3,
            client_addr: "127.0.0.1:7070".into(),
        }
    }

    #[test]
    fn hellos_are_checked() {
        assert_eq!(check_hello(&hello(7, 3), 2, 7, None), Ok(3));
        assert_eq!(check_hello(&hello(7, 3), 2, 7, Some(3)), Ok(3));
        let e = check_hello(&hello(8, 3), 2, 7, None).unwrap_err();
        assert!(e.contains("wrong cluster id 8"), "{e}");
        let e = check_hello(&hello(7, 2), 2, 7, None).unwrap_err();
        assert!(e.contains("own id"), "{e}");
        let e = check_hello(&hello(7, 1), 2, 7, Some(3)).unwrap_err();
        assert!(e.contains("expected node 3"), "{e}");
    }

    #[test]
    fn a_node_of_the_cluster_this_one_does_not_list_passes_as_a_guest() {
        // Node 9 joined while this node was cut off: its Hello passes, on an accepted link.
        assert_eq!(check_hello(&hello(7, 9), 2, 7, None), Ok(9));
        // But a dialed address must still answer with the node dialed.
        assert!(check_hello(&hello(7, 9), 2, 7, Some(3)).is_err());
    }

    #[test]
    fn when_both_ends_dial_both_keep_the_link_the_lower_id_dialed() {
        // Node 1 (lower) keeps its own dial, node 2 keeps the link it accepted.
        assert!(old_link_stays(1, 2, true, false));
        assert!(!old_link_stays(1, 2, false, true));
        assert!(old_link_stays(2, 1, false, true));
        assert!(!old_link_stays(2, 1, true, false));
        // Same kind: the newer link wins (the old one is dead or dying).
        for (own, peer) in [(1, 2), (2, 1)] {
            assert!(!old_link_stays(own, peer, true, true));
            assert!(!old_link_stays(own, peer, false, false));
        }
    }

    /// A mesh of node `id` listing `peers` (never listening).
    fn mesh(id: NodeId, peers: &[(NodeId, &str)], now: Instant) -> (Mesh, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let cfg = DaemonConfig {
            id,
            peers: peers
                .iter()
                .map(|&(p, a)| (p, a.parse().unwrap()))
                .collect(),
            ..DaemonConfig::default()
        };
        let client = "127.0.0.1:7070".parse().unwrap();
        let mesh = Mesh::new(&cfg, poll.registry(), now, client).unwrap();
        (mesh, poll)
    }

    #[test]
    fn the_higher_id_dials_a_listed_lower_one_only_after_the_fallback_delay() {
        let t = Instant::now();
        let (low, _p1) = mesh(1, &[(2, "127.0.0.1:9")], t);
        assert_eq!(low.next_deadline(), Some(t), "the lower id dials at once");
        let (mut high, _p2) = mesh(2, &[(1, "127.0.0.1:9")], t);
        assert_eq!(high.next_deadline(), Some(t + FALLBACK_DIAL_AFTER));
        let at = |d: Duration| Now {
            mono: t + d,
            unix_ms: 0,
        };
        high.on_timer(at(FALLBACK_DIAL_AFTER / 2));
        assert!(
            high.slots[&1].dialing.is_none(),
            "dialed before the fallback delay"
        );
        high.on_timer(at(FALLBACK_DIAL_AFTER));
        assert!(
            high.slots[&1].dialing.is_some() || high.slots[&1].failures > 0,
            "no fallback dial once the delay passed"
        );
    }

    #[test]
    fn a_peer_no_longer_listed_without_a_link_is_forgotten_and_a_new_one_gets_a_slot() {
        let t = Instant::now();
        let (mut m, _p) = mesh(2, &[(1, "127.0.0.1:9")], t);
        let now = Now {
            mono: t,
            unix_ms: 0,
        };
        m.sync_peers(now, &[(3, "127.0.0.1:10".into())]);
        assert!(!m.slots.contains_key(&1));
        assert!(m.slots[&3].listed && m.slots[&3].we_dial);
        assert_eq!(m.next_deadline(), Some(t));
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let mut rng = fastrand::Rng::with_seed(1);
        let d = Duration::from_millis(100);
        for _ in 0..1000 {
            let j = jittered(&mut rng, d);
            assert!(j >= d / 2 && j <= d, "{j:?}");
        }
    }

    #[test]
    fn tokens_do_not_collide_with_the_driver() {
        assert!(Mesh::owns(PEER_LISTENER));
        assert!(Mesh::owns(Token(PEER_BASE)));
        assert!(Mesh::owns(Token(PEER_BASE + 12345)));
        assert!(!Mesh::owns(Token(0)));
        assert!(!Mesh::owns(Token(1 << 20)));
        for t in [
            super::super::LISTENER,
            super::super::SIGNALS,
            super::super::WAKER,
        ] {
            assert!(!Mesh::owns(t));
        }
    }
}
