//! Virtual time: a fixed base `Instant` plus a virtual offset in microseconds, and the trace
//! hash that fingerprints everything a run did at which virtual instant.

use std::time::{Duration, Instant};

use crate::core::Now;

/// Virtual microseconds since the start of a run.
pub type Micros = u64;

/// Wall-clock milliseconds of virtual time zero (a fixed date, so incarnations are stable).
pub const BASE_UNIX_MS: u64 = 1_700_000_000_000;

/// The virtual clock of one run. Only differences between instants matter to the core, so the
/// base `Instant` taken at creation does not make runs differ.
#[derive(Clone, Debug)]
pub struct Clock {
    base: Instant,
    now: Micros,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock at virtual time zero.
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
            now: 0,
        }
    }

    /// Virtual microseconds since the start.
    pub fn micros(&self) -> Micros {
        self.now
    }

    /// Moves time forward to `t` (never backwards).
    pub fn advance_to(&mut self, t: Micros) {
        self.now = self.now.max(t);
    }

    /// The current time as the core sees it.
    pub fn now(&self) -> Now {
        Now {
            mono: self.base + Duration::from_micros(self.now),
            unix_ms: BASE_UNIX_MS + self.now / 1000,
        }
    }

    /// The virtual time of a core deadline, rounded up so that the deadline is due then.
    pub fn micros_of(&self, at: Instant) -> Micros {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos.div_ceil(1000)).unwrap_or(u64::MAX)
    }
}

/// Milliseconds as virtual microseconds.
pub const fn ms(n: u64) -> Micros {
    n * 1000
}

/// An order-sensitive 64-bit fingerprint (FNV-1a over 64-bit words) of what a run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceHash(u64);

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }
}

impl TraceHash {
    /// Mixes one word in.
    pub fn mix(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes a tag, a time and a byte string in (bytes by their CRC-32 and length).
    pub fn event(&mut self, tag: u64, at: Micros, bytes: &[u8]) {
        self.mix(tag);
        self.mix(at);
        self.mix(bytes.len() as u64);
        self.mix(u64::from(crc32fast::hash(bytes)));
    }

    /// The fingerprint so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_so_they_are_due() {
        let c = Clock::new();
        let at = c.now().mono + Duration::from_nanos(1500);
        assert_eq!(c.micros_of(at), 2);
        let mut c2 = c.clone();
        c2.advance_to(2);
        assert!(c2.now().mono >= at);
        c2.advance_to(1);
        assert_eq!(c2.micros(), 2, "time never goes backwards");
    }

    #[test]
    fn the_trace_hash_depends_on_order() {
        let (mut a, mut b) = (TraceHash::default(), TraceHash::default());
        a.mix(1);
        a.mix(2);
        b.mix(2);
        b.mix(1);
        assert_ne!(a, b);
    }
}
