//! Per-node clocks: each node sees virtual time through its own [`NodeClock`] (a rate drift of
//! its monotonic clock, an offset of its wall clock), drawn from the seed and its id, so a
//! restart keeps it. Its deadlines, instants of its own clock, are mapped back to virtual
//! time for the event loop.

use std::time::Instant;

use crate::core::{NodeId, Now};
use crate::sim::clock::{Micros, NodeClock};

use super::World;

impl World {
    /// The clock of node `id` (the same for every run of the node).
    pub fn node_clock(&self, id: NodeId) -> NodeClock {
        self.cfg.skew.clock_of(self.cfg.seed, u64::from(id))
    }

    /// The current time as node `id` sees it.
    pub fn now_of(&self, id: NodeId) -> Now {
        self.clock.now_on(&self.node_clock(id))
    }

    /// The earliest virtual time at which node `id` sees its deadline `at` due.
    pub(super) fn deadline_micros(&self, id: NodeId, at: Instant) -> Micros {
        self.clock.micros_of_on(&self.node_clock(id), at)
    }
}

impl World {
    /// Node `id` is woken for its deadline: on its own clock the deadline must be due, or the
    /// mapping to virtual time woke it early and the loop would spin without time passing.
    pub(super) fn check_due(&mut self, id: NodeId) {
        let Some(deadline) = self.nodes.get(&id).and_then(|n| n.deadline) else {
            return;
        };
        let local = self.now_of(id).mono;
        if local < deadline {
            let early = deadline.duration_since(local);
            self.fail(format!(
                "node {id}: woken at {} us, {early:?} before its deadline on its own clock \
                 ({:?}): deadlines must map to when the node sees them due",
                self.clock.micros(),
                self.node_clock(id)
            ));
        }
    }
}
