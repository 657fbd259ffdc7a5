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
