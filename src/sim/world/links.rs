//! Peer links: sending through the simulated network, connections coming up and being reset,
//! partitions.

use crate::codec::{self, PeerFrame};
use crate::core::{NodeId, SharedBytes};
use crate::driver::peers::FALLBACK_DIAL_AFTER;
use crate::sim::clock::{ms, Micros};
use crate::sim::faults::Heal;
use crate::sim::network::{Released, Sent};

use super::{Event, Input, World, TAG_LINK};

impl World {
    pub(super) fn send_peer(&mut self, from: NodeId, to: NodeId, bytes: SharedBytes) {
        if !self.filters.is_empty() {
            if let Ok(Some((frame, _))) = codec::decode::<PeerFrame>(&bytes) {
                let mut drop = false;
                for f in &mut self.filters {
                    drop |= f(from, to, &frame);
                }
                if drop {
                    self.stats.filtered += 1;
                    self.note(format!(
                        "dropped {from} -> {to}: {}",
                        format!("{frame:?}").chars().take(120).collect::<String>()
                    ));
                    return;
                }
            }
        }
        let now = self.clock.micros();
        match self.net.send(from, to, &bytes, now, &mut self.net_rng) {
            Sent::Deliver { at, generation } => {
                let input = Input::Peer {
                    from,
                    generation,
                    bytes,
                };
                self.schedule(at, Event::Input { node: to, input });
            }
            Sent::Held | Sent::Dropped => {}
        }
    }

    pub(super) fn alive_and_running(&self, id: NodeId) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.node.is_some() && !n.paused)
    }

    /// Brings the connection between `a` and `b` up as the driver's mesh does: at once if the
    /// lower id lists the higher (it dials); if only the higher lists the lower, once the
    /// higher one's fallback dial is due ([`FALLBACK_DIAL_AFTER`] later, if the pair has not
    /// connected meanwhile); never if neither lists the other. Either end accepts any node of
    /// the cluster.
    pub(super) fn link_up(&mut self, a: NodeId, b: NodeId) {
        if !self.alive_and_running(a) || !self.alive_and_running(b) {
            return; // retried when the node restarts or resumes
        }
        let (lo, hi) = (a.min(b), a.max(b));
        if self.lists(lo, hi) {
            return self.connect(lo, hi);
        }
        if !self.lists(hi, lo) || self.net.connected(lo, hi) {
            return; // retried when the peer sets change
        }
        let Some(generation) = self.net.generation(lo, hi) else {
            return;
        };
        let (jitter_lo, jitter_hi) = self.plan.reconnect_after;
        let wait = FALLBACK_DIAL_AFTER.as_micros() as Micros + self.rng.u64(jitter_lo..=jitter_hi);
        let at = self.clock.micros() + wait;
        self.schedule(at, Event::FallbackDial { hi, lo, generation });
    }

    /// The higher id's fallback dial planned when the pair's connection was at `generation`:
    /// it connects if nothing connected (or broke) the pair since and it still lists the lower.
    pub(super) fn fallback_dial(&mut self, hi: NodeId, lo: NodeId, generation: u64) {
        if self.net.generation(lo, hi) != Some(generation) || !self.lists(hi, lo) {
            return;
        }
        if self.alive_and_running(hi) && self.alive_and_running(lo) {
            self.note(format!("node {hi}: fallback dial to node {lo}"));
            self.connect(lo, hi);
        }
    }

    fn connect(&mut self, a: NodeId, b: NodeId) {
        if !self.net.connect(a, b) {
            return;
        }
        self.trace.mix(TAG_LINK);
        self.trace.mix(u64::from(a) << 32 | u64::from(b));
        self.note(format!("link {a} <-> {b} up"));
        self.node_input(a, Input::PeerUp(b));
        self.node_input(b, Input::PeerUp(a));
    }

    /// Resets the connection between `a` and `b` (both ends are told) and, if `retry`, plans
    /// a reconnection.
    pub(super) fn reset_link(&mut self, a: NodeId, b: NodeId, retry: bool) {
        if self.net.reset(a, b) {
            self.note(format!("link {a} <-> {b} reset"));
            self.node_input(a, Input::PeerDown(b));
            self.node_input(b, Input::PeerDown(a));
        }
        if retry {
            let (lo, hi) = self.plan.reconnect_after;
            let at = self.clock.micros() + self.rng.u64(lo..=hi);
            self.schedule(at, Event::LinkUp(a, b));
        }
    }

    /// `closer` closes its connection to `other` (it no longer lists it, or it stops): what
    /// it sent still arrives, then `other` sees the close.
    pub(super) fn close_link(&mut self, closer: NodeId, other: NodeId) {
        let now = self.clock.micros();
        if let Some((generation, at)) = self.net.close(closer, other, now) {
            self.note(format!("link {closer} -> {other} closed by {closer}"));
            self.node_input(closer, Input::PeerDown(other));
            let input = Input::PeerClosed(closer, generation);
            self.schedule(at, Event::Input { node: other, input });
        }
    }

    /// Plans reconnecting every down link of `id`.
    pub(super) fn reconnect_links_of(&mut self, id: NodeId) {
        for (a, b) in self.net.pairs() {
            if (a == id || b == id) && !self.net.connected(a, b) {
                let at = self.clock.micros() + self.rng.u64(ms(1)..=ms(20));
                self.schedule(at, Event::LinkUp(a, b));
            }
        }
    }

    /// Cuts `side` from the other nodes, both ways; returns the pairs cut.
    pub fn cut(&mut self, side: &[NodeId]) -> Vec<(NodeId, NodeId)> {
        let mut pairs = Vec::new();
        for (a, b) in self.net.pairs() {
            if side.contains(&a) != side.contains(&b) {
                self.net.cut(a, b);
                self.reset_link(a, b, false);
                pairs.push((a, b));
            }
        }
        pairs
    }

    /// Cuts `side` from the other nodes silently (see [`Network::start_silent`]); returns
    /// the pairs cut.
    ///
    /// [`Network::start_silent`]: crate::sim::network::Network::start_silent
    pub fn cut_silently(&mut self, side: &[NodeId]) -> Vec<(NodeId, NodeId)> {
        let now = self.clock.micros();
        let mut pairs = Vec::new();
        for (a, b) in self.net.pairs() {
            if side.contains(&a) != side.contains(&b) {
                self.net.start_silent(a, b, now);
                pairs.push((a, b));
            }
        }
        pairs
    }

    /// Ends the silent cut of these pairs: held frames move at their connection's next
    /// retransmission; a pair whose connection a node reset meanwhile gets through at the
    /// dialer's next try, within its dial timeout plus its longest backoff.
    pub fn end_silent_cut(&mut self, pairs: Vec<(NodeId, NodeId)>) {
        let now = self.clock.micros();
        for (a, b) in pairs {
            let (released, uncut) = self.net.end_silent(a, b, now, &mut self.net_rng);
            self.deliver_released(released);
            if uncut && !self.net.connected(a, b) {
                let cycle = self.nodes.get(&a.min(b)).map_or(ms(300), |n| {
                    (n.cfg.dial_timeout() + n.cfg.dial_backoff_max()).as_micros() as Micros
                });
                let at = now + ms(1) + self.rng.u64(0..=cycle);
                self.schedule(at, Event::LinkUp(a, b));
            }
        }
    }

    /// Schedules the arrival of the frames a clog or a silent cut held back.
    pub(super) fn deliver_released(&mut self, released: Vec<Released>) {
        for (from, to, at, generation, bytes) in released {
            let input = Input::Peer {
                from,
                generation,
                bytes,
            };
            self.schedule(at, Event::Input { node: to, input });
        }
    }

    /// Ends every network fault (the liveness phases): held frames arrive, links that lost
    /// frames one way are reset.
    pub(super) fn clear_network_faults(&mut self) {
        let now = self.clock.micros();
        let (one_way, released) = self.net.clear_faults(now, &mut self.net_rng);
        self.deliver_released(released);
        for (a, b) in one_way {
            self.reset_link(a, b, false);
        }
    }

    /// Ends the cut of these pairs.
    pub fn uncut(&mut self, pairs: Vec<(NodeId, NodeId)>) {
        self.heal(Heal::Partition(pairs));
    }

    /// Starts losing frames from `from` to `to`.
    pub fn one_way(&mut self, from: NodeId, to: NodeId) {
        self.net.start_dropping(from, to);
    }

    /// Stops losing frames from `from` to `to` (the connection is reset and comes back).
    pub fn end_one_way(&mut self, from: NodeId, to: NodeId) {
        self.heal(Heal::OneWay(from, to));
    }
}
