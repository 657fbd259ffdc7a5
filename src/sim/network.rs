//! The simulated peer network: one TCP-like connection per pair of nodes. Frames on a
//! connection arrive in order after a latency drawn from the run's generator; a reset drops
//! everything in flight and the connection comes back only when both ends are up and no
//! partition cuts it. What one connection delivers is always a prefix of what was sent on it,
//! as with TCP: a direction that loses frames (one-way partition) is reset when it heals.
//!
//! A silent partition drops every packet between two nodes but resets nothing: the connection
//! stays up, TCP keeps what was sent and retransmits it with exponential backoff (200 ms
//! doubling, at most 120 s between tries, as Linux does), so after the heal the connection
//! moves again only at its next retransmission. New connections cannot be made meanwhile.

use std::collections::{BTreeMap, VecDeque};

use super::clock::{ms, Micros};
use crate::core::{NodeId, SharedBytes};

/// One direction of a connection.
#[derive(Debug, Default)]
struct Direction {
    /// Active one-way partitions: frames are dropped while the connection stays up.
    dropping: u32,
    /// Active clogs: frames are held, in order, until the clog clears.
    clogged: u32,
    /// Frames held by a clog.
    held: VecDeque<SharedBytes>,
    /// Delivery time of the last frame scheduled, so frames never overtake each other.
    last_at: Micros,
    /// Under a silent partition: since when its packets are lost (TCP's retransmission
    /// backoff counts from then).
    stalled_since: Option<Micros>,
}

/// Linux's smallest retransmission timeout, and the largest backoff between two tries.
const RTO_MIN: Micros = ms(200);
const RTO_MAX: Micros = ms(120_000);

/// When a connection whose packets were lost since `since` next retransmits at or after `now`.
pub fn next_retransmission(since: Micros, now: Micros) -> Micros {
    let (mut at, mut rto) = (since + RTO_MIN, RTO_MIN);
    while at < now {
        rto = (rto * 2).min(RTO_MAX);
        at += rto;
    }
    at
}

/// The connection between two nodes (stored under the smaller id first).
#[derive(Debug, Default)]
struct Link {
    connected: bool,
    /// Counts connection lifetimes; a frame of an older lifetime is never delivered.
    generation: u64,
    /// Active symmetric partitions that cut this pair.
    cut: u32,
    /// A connection closed by one end (FIN): its generation and direction, whose frames
    /// already sent still arrive.
    draining: Option<(u64, usize)>,
    /// [low -> high, high -> low].
    dirs: [Direction; 2],
}

/// What became of a frame handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Deliver at this time if the connection of this generation still exists then.
    Deliver {
        /// Delivery time.
        at: Micros,
        /// Connection generation it travels on.
        generation: u64,
    },
    /// Held by a clog.
    Held,
    /// Lost: no connection, or a one-way partition.
    Dropped,
}

/// A frame released from a clog: (from, to, delivery time, generation, bytes).
pub type Released = (NodeId, NodeId, Micros, u64, SharedBytes);

/// Every peer link of the cluster.
#[derive(Debug)]
pub struct Network {
    links: BTreeMap<(NodeId, NodeId), Link>,
    latency: (Micros, Micros),
}

fn key(a: NodeId, b: NodeId) -> ((NodeId, NodeId), usize) {
    if a < b {
        ((a, b), 0)
    } else {
        ((b, a), 1)
    }
}

impl Network {
    /// A network of `members`, every link down; `latency` is the (min, max) one-way delay.
    pub fn new(members: &[NodeId], latency: (Micros, Micros)) -> Network {
        let mut links = BTreeMap::new();
        for (i, &a) in members.iter().enumerate() {
            for &b in &members[i + 1..] {
                links.insert(key(a, b).0, Link::default());
            }
        }
        Network { links, latency }
    }

    /// A node joins the network: a link (down) to each of `others`.
    pub fn add_node(&mut self, id: NodeId, others: &[NodeId]) {
        for &o in others {
            if o != id {
                self.links.entry(key(id, o).0).or_default();
            }
        }
    }

    /// Every pair, in a fixed order.
    pub fn pairs(&self) -> Vec<(NodeId, NodeId)> {
        self.links.keys().copied().collect()
    }

    fn link(&self, a: NodeId, b: NodeId) -> Option<&Link> {
        self.links.get(&key(a, b).0)
    }

    fn link_mut(&mut self, a: NodeId, b: NodeId) -> Option<&mut Link> {
        self.links.get_mut(&key(a, b).0)
    }

    /// Whether the connection between `a` and `b` is up.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.link(a, b).is_some_and(|l| l.connected)
    }

    /// Whether a frame of `generation` from `from` may still be delivered to `to`.
    pub fn current(&self, from: NodeId, to: NodeId, generation: u64) -> bool {
        let d = key(from, to).1;
        self.link(from, to).is_some_and(|l| {
            (l.connected && l.generation == generation) || l.draining == Some((generation, d))
        })
    }

    /// The pair's connection generation (it changes whenever the connection comes or goes).
    pub fn generation(&self, a: NodeId, b: NodeId) -> Option<u64> {
        self.link(a, b).map(|l| l.generation)
    }

    /// Whether a partition keeps the pair from connecting.
    pub fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.link(a, b).is_some_and(|l| l.cut > 0)
    }

    /// Whether any fault is active on the pair (for the liveness phase's final state).
    pub fn faulty(&self, a: NodeId, b: NodeId) -> bool {
        self.link(a, b)
            .is_some_and(|l| l.cut > 0 || l.dirs.iter().any(|d| d.dropping > 0 || d.clogged > 0))
    }

    fn draw_latency(&self, rng: &mut fastrand::Rng) -> Micros {
        rng.u64(self.latency.0..=self.latency.1)
    }

    /// Hands a frame from `from` to `to` to the network at `now`.
    pub fn send(
        &mut self,
        from: NodeId,
        to: NodeId,
        bytes: &SharedBytes,
        now: Micros,
        rng: &mut fastrand::Rng,
    ) -> Sent {
        let latency = self.draw_latency(rng);
        let (k, d) = key(from, to);
        let Some(link) = self.links.get_mut(&k) else {
            return Sent::Dropped;
        };
        if !link.connected {
            return Sent::Dropped;
        }
        let dir = &mut link.dirs[d];
        if dir.dropping > 0 {
            return Sent::Dropped;
        }
        if dir.clogged > 0 {
            dir.held.push_back(bytes.clone());
            return Sent::Held;
        }
        let at = (now + latency).max(dir.last_at);
        dir.last_at = at;
        Sent::Deliver {
            at,
            generation: link.generation,
        }
    }

    /// Brings the connection up (a new generation). False if it was up or is cut.
    pub fn connect(&mut self, a: NodeId, b: NodeId) -> bool {
        let Some(link) = self.link_mut(a, b) else {
            return false;
        };
        if link.connected || link.cut > 0 {
            return false;
        }
        link.connected = true;
        link.generation += 1;
        true
    }

    /// `closer` closes the connection (it no longer wants it): what it sent still arrives,
    /// after which the other end sees the close; nothing more goes either way. Returns the
    /// generation after the close and when the other end sees it, or None if it was down.
    pub fn close(&mut self, closer: NodeId, other: NodeId, now: Micros) -> Option<(u64, Micros)> {
        let (k, d) = key(closer, other);
        let link = self.links.get_mut(&k)?;
        for dir in &mut link.dirs {
            dir.held.clear();
        }
        if !link.connected {
            return None;
        }
        link.draining = Some((link.generation, d));
        link.connected = false;
        link.generation += 1;
        Some((link.generation, link.dirs[d].last_at.max(now)))
    }

    /// Resets the connection: everything in flight or held is lost. True if it was up.
    pub fn reset(&mut self, a: NodeId, b: NodeId) -> bool {
        let Some(link) = self.link_mut(a, b) else {
            return false;
        };
        for d in &mut link.dirs {
            d.held.clear();
            // The next connection starts with no backoff of its own.
            d.stalled_since = None;
        }
        link.draining = None;
        if !link.connected {
            return false;
        }
        link.connected = false;
        link.generation += 1;
        true
    }

    /// A symmetric partition starts cutting the pair (the caller resets the connection).
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        if let Some(l) = self.link_mut(a, b) {
            l.cut += 1;
        }
    }

    /// A symmetric partition of the pair ends; true when nothing cuts it any more.
    pub fn uncut(&mut self, a: NodeId, b: NodeId) -> bool {
        self.link_mut(a, b).is_some_and(|l| {
            l.cut = l.cut.saturating_sub(1);
            l.cut == 0
        })
    }

    /// Frames from `from` to `to` start being dropped (the connection stays up).
    pub fn start_dropping(&mut self, from: NodeId, to: NodeId) {
        let (k, d) = key(from, to);
        if let Some(l) = self.links.get_mut(&k) {
            l.dirs[d].dropping += 1;
        }
    }

    /// One one-way partition from `from` to `to` ends.
    pub fn stop_dropping(&mut self, from: NodeId, to: NodeId) {
        let (k, d) = key(from, to);
        if let Some(l) = self.links.get_mut(&k) {
            l.dirs[d].dropping = l.dirs[d].dropping.saturating_sub(1);
        }
    }

    /// Frames from `from` to `to` start being held back.
    pub fn clog(&mut self, from: NodeId, to: NodeId) {
        let (k, d) = key(from, to);
        if let Some(l) = self.links.get_mut(&k) {
            l.dirs[d].clogged += 1;
        }
    }

    /// One clog from `from` to `to` ends; when none is left, the held frames are scheduled in
    /// order and returned with their delivery times and generation. A direction stalled by a
    /// silent partition moves again only at its next retransmission.
    pub fn unclog(
        &mut self,
        from: NodeId,
        to: NodeId,
        now: Micros,
        rng: &mut fastrand::Rng,
    ) -> Vec<(Micros, u64, SharedBytes)> {
        let (lo, hi) = self.latency;
        let (k, d) = key(from, to);
        let Some(l) = self.links.get_mut(&k) else {
            return Vec::new();
        };
        let dir = &mut l.dirs[d];
        dir.clogged = dir.clogged.saturating_sub(1);
        if dir.clogged > 0 {
            return Vec::new();
        }
        let start = match dir.stalled_since.take() {
            Some(since) => next_retransmission(since, now),
            None => now,
        };
        // Until then what is sent queues behind the held frames.
        dir.last_at = dir.last_at.max(start);
        let mut out = Vec::new();
        while let Some(bytes) = dir.held.pop_front() {
            let at = (start + rng.u64(lo..=hi)).max(dir.last_at);
            dir.last_at = at;
            out.push((at, l.generation, bytes));
        }
        out
    }

    /// A silent partition starts between `a` and `b`: no new connection, and the frames of
    /// the current one are held (both ways) from `now`.
    pub fn start_silent(&mut self, a: NodeId, b: NodeId, now: Micros) {
        if let Some(l) = self.link_mut(a, b) {
            l.cut += 1;
            let connected = l.connected;
            for d in &mut l.dirs {
                d.clogged += 1;
                if connected {
                    d.stalled_since.get_or_insert(now);
                }
            }
        }
    }

    /// One silent partition between `a` and `b` ends: the frames held are released at the
    /// connection's next retransmission. Returns them, and whether nothing cuts the pair any
    /// more.
    pub fn end_silent(
        &mut self,
        a: NodeId,
        b: NodeId,
        now: Micros,
        rng: &mut fastrand::Rng,
    ) -> (Vec<Released>, bool) {
        let mut out = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            for (at, g, bytes) in self.unclog(from, to, now, rng) {
                out.push((from, to, at, g, bytes));
            }
        }
        (out, self.uncut(a, b))
    }

    /// Clears every fault (liveness phase): returns the pairs that had a one-way partition
    /// (the caller resets them) and the frames released from clogs.
    pub fn clear_faults(
        &mut self,
        now: Micros,
        rng: &mut fastrand::Rng,
    ) -> (Vec<(NodeId, NodeId)>, Vec<Released>) {
        let mut one_way = Vec::new();
        let mut released = Vec::new();
        let pairs = self.pairs();
        for (a, b) in pairs {
            let Some(l) = self.links.get_mut(&(a, b)) else {
                continue;
            };
            l.cut = 0;
            if l.dirs.iter().any(|d| d.dropping > 0) {
                one_way.push((a, b));
            }
            let mut clogged = Vec::new();
            for (i, d) in l.dirs.iter_mut().enumerate() {
                d.dropping = 0;
                if d.clogged > 0 {
                    d.clogged = 1;
                    clogged.push(if i == 0 { (a, b) } else { (b, a) });
                }
            }
            for (from, to) in clogged {
                for (at, g, bytes) in self.unclog(from, to, now, rng) {
                    released.push((from, to, at, g, bytes));
                }
            }
        }
        (one_way, released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes() -> SharedBytes {
        vec![1u8, 2, 3].into()
    }

    #[test]
    fn frames_keep_their_order_and_die_with_their_connection() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut n = Network::new(&[1, 2, 3], (100, 5000));
        assert_eq!(n.send(1, 2, &bytes(), 0, &mut rng), Sent::Dropped);
        assert!(n.connect(1, 2));
        let mut last = 0;
        let mut generation = 0;
        for t in 0..50 {
            match n.send(1, 2, &bytes(), t, &mut rng) {
                Sent::Deliver { at, generation: g } => {
                    assert!(at >= last);
                    last = at;
                    generation = g;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(n.current(1, 2, generation));
        assert!(n.reset(2, 1));
        assert!(!n.current(1, 2, generation));
        assert!(n.connect(2, 1));
        assert!(
            !n.current(1, 2, generation),
            "a new connection is a new generation"
        );
    }

    #[test]
    fn cut_pairs_cannot_connect_and_clogs_release_in_order() {
        let mut rng = fastrand::Rng::with_seed(2);
        let mut n = Network::new(&[1, 2], (10, 10));
        n.cut(1, 2);
        assert!(!n.connect(1, 2));
        assert!(n.uncut(2, 1));
        assert!(n.connect(1, 2));
        n.clog(2, 1);
        let frames: Vec<SharedBytes> = (0..3u8).map(|i| vec![i].into()).collect();
        for f in &frames {
            assert_eq!(n.send(2, 1, f, 0, &mut rng), Sent::Held);
        }
        assert!(matches!(
            n.send(1, 2, &bytes(), 0, &mut rng),
            Sent::Deliver { .. }
        ));
        let out = n.unclog(2, 1, 100, &mut rng);
        let got: Vec<u8> = out.iter().map(|(_, _, b)| b[0]).collect();
        assert_eq!(got, vec![0, 1, 2]);
        n.start_dropping(1, 2);
        assert_eq!(n.send(1, 2, &bytes(), 0, &mut rng), Sent::Dropped);
        assert!(n.faulty(1, 2));
    }

    #[test]
    fn after_a_silent_partition_a_connection_moves_at_its_next_retransmission() {
        assert_eq!(next_retransmission(0, 0), ms(200));
        assert_eq!(next_retransmission(0, ms(250)), ms(600));
        // 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4 s: a heal at 8 s waits until 12.6 s.
        assert_eq!(next_retransmission(0, ms(8000)), ms(12_600));
        let mut rng = fastrand::Rng::with_seed(4);
        let mut n = Network::new(&[1, 2], (10, 10));
        assert!(n.connect(1, 2));
        n.start_silent(1, 2, 0);
        assert_eq!(n.send(1, 2, &bytes(), 5, &mut rng), Sent::Held);
        assert!(
            !n.connect(1, 2) && n.connected(1, 2),
            "stays up, and none new"
        );
        let (released, uncut) = n.end_silent(2, 1, ms(8000), &mut rng);
        assert!(uncut);
        assert_eq!(released.len(), 1);
        assert_eq!(
            released[0].2,
            ms(12_600) + 10,
            "held until the retransmission"
        );
        let Sent::Deliver { at, .. } = n.send(2, 1, &bytes(), ms(8000), &mut rng) else {
            panic!("not sent");
        };
        assert!(at >= ms(12_600), "the other way waits for it too");
        // A reset connection's successor owes nothing to the old one's backoff.
        n.start_silent(1, 2, ms(20_000));
        assert!(n.reset(1, 2));
        let (released, _) = n.end_silent(1, 2, ms(50_000), &mut rng);
        assert!(released.is_empty());
        assert!(n.connect(1, 2));
        let Sent::Deliver { at, .. } = n.send(1, 2, &bytes(), ms(50_000), &mut rng) else {
            panic!("not sent");
        };
        assert_eq!(at, ms(50_000) + 10);
    }

    #[test]
    fn nodes_come_and_a_closed_connection_delivers_what_was_sent() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut n = Network::new(&[1, 2], (10, 10));
        n.add_node(3, &[1, 2]);
        assert_eq!(n.pairs(), vec![(1, 2), (1, 3), (2, 3)]);
        assert!(n.connect(3, 1));
        let Sent::Deliver { generation, .. } = n.send(3, 1, &bytes(), 0, &mut rng) else {
            panic!("not sent");
        };
        let back = n.send(1, 3, &bytes(), 0, &mut rng);
        let (after, at) = n.close(3, 1, 0).expect("it was up");
        assert_eq!(at, 10, "the other end sees the close after the last frame");
        assert!(
            n.current(3, 1, generation),
            "what the closer sent still arrives"
        );
        assert!(matches!(back, Sent::Deliver { generation: g, .. } if !n.current(1, 3, g)));
        assert_eq!(n.send(3, 1, &bytes(), 0, &mut rng), Sent::Dropped);
        assert_eq!(n.generation(1, 3), Some(after));
        assert!(n.close(3, 1, 0).is_none(), "closed already");
        assert!(n.connect(1, 3));
        assert!(n.reset(1, 3));
        assert!(
            !n.current(3, 1, generation),
            "a reset loses everything in flight"
        );
    }
}
