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

    /// The current time as a node with clock `c` sees it: its monotonic clock runs at its own
    /// rate, its wall clock is off by its offset (and runs at the same rate, as one oscillator
    /// drives both).
    pub fn now_on(&self, c: &NodeClock) -> Now {
        let local = c.local_nanos(self.now);
        let wall =
            i128::from(BASE_UNIX_MS) + i128::from(c.offset_ms) + i128::from(local / 1_000_000);
        Now {
            mono: self.base + Duration::from_nanos(local),
            unix_ms: u64::try_from(wall.max(0)).unwrap_or(u64::MAX),
        }
    }

    /// The earliest virtual time at which a node with clock `c` sees its deadline `at` due
    /// (its monotonic clock has reached `at`). Never the current time for a deadline the node
    /// does not see due now, so a node is woken once per deadline, never in a busy loop.
    pub fn micros_of_on(&self, c: &NodeClock, at: Instant) -> Micros {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        c.global_micros(nanos)
    }
}

/// Parts per million of clock rate a [`NodeClock`] deviates by at most (far more than a real
/// oscillator: the protocol's timers are local durations, so drift only stretches them).
pub const MAX_DRIFT_PPM: i64 = 100_000;

/// The clock characteristics of one simulated node: a rate drift of its monotonic clock and a
/// fixed offset of its wall clock. They belong to the machine, so a restart keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeClock {
    /// Rate deviation in parts per million: the node's clock advances `1 + ppm / 10^6` local
    /// seconds per virtual second.
    pub drift_ppm: i64,
    /// Offset of the node's wall clock (`unix_ms`) from virtual wall time, in milliseconds.
    pub offset_ms: i64,
}

/// Bounds of the clock skew a run gives its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewBounds {
    /// Largest rate drift, in parts per million either way.
    pub max_ppm: i64,
    /// Largest wall-clock offset, in milliseconds either way.
    pub max_offset_ms: i64,
}

impl SkewBounds {
    /// No skew: every node sees the same virtual time.
    pub const NONE: SkewBounds = SkewBounds {
        max_ppm: 0,
        max_offset_ms: 0,
    };

    /// The clock of node `id` in the run of `seed`: a pure function of both, so a node keeps
    /// its clock across restarts and a seed replays exactly, whatever else the run draws.
    pub fn clock_of(&self, seed: u64, id: u64) -> NodeClock {
        let mut h = splitmix(seed ^ 0x00c1_0c5c_e0ed_u64.wrapping_mul(id.wrapping_add(1)));
        let mut within = |max: i64| {
            h = splitmix(h);
            let max = max.clamp(0, i64::from(u32::MAX));
            let span = (2 * max + 1) as u64;
            (h % span) as i64 - max
        };
        NodeClock {
            drift_ppm: within(self.max_ppm.min(MAX_DRIFT_PPM)),
            offset_ms: within(self.max_offset_ms),
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl NodeClock {
    /// Local rate in local nanoseconds per virtual microsecond (1000 without drift).
    fn rate(&self) -> u128 {
        (1_000_000 + self.drift_ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM)) as u128
    }

    /// Local nanoseconds elapsed at virtual time `t` (rounded down; non-decreasing in `t`).
    pub fn local_nanos(&self, t: Micros) -> u64 {
        let n = u128::from(t) * self.rate() / 1000;
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The earliest virtual time at which [`NodeClock::local_nanos`] reaches `nanos`: the
    /// smallest `t` with `t * rate / 1000 >= nanos`, that is `ceil(1000 * nanos / rate)`.
    pub fn global_micros(&self, nanos: u128) -> Micros {
        let t = (nanos * 1000).div_ceil(self.rate());
        u64::try_from(t).unwrap_or(u64::MAX)
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

    /// Under drift either way and any offset, a deadline maps to the first virtual time at
    /// which the node sees it due: due then, not due a microsecond before.
    #[test]
    fn a_skewed_deadline_maps_to_when_the_node_sees_it_due() {
        let mut c = Clock::new();
        c.advance_to(123_457);
        for drift_ppm in [-MAX_DRIFT_PPM, -200, -1, 0, 1, 37, 200, MAX_DRIFT_PPM] {
            let nc = NodeClock {
                drift_ppm,
                offset_ms: -4321,
            };
            let now = c.now_on(&nc);
            for d in [1u64, 2, 999, 1000, 1001, 29_999_999, 200_000_001] {
                let at = now.mono + Duration::from_nanos(d);
                let t = c.micros_of_on(&nc, at);
                assert!(
                    t > c.micros(),
                    "drift {drift_ppm}, +{d} ns: a deadline ahead maps ahead"
                );
                let mut due = c.clone();
                due.advance_to(t);
                assert!(
                    due.now_on(&nc).mono >= at,
                    "drift {drift_ppm}, +{d} ns: not due at {t}"
                );
                let before = Clock {
                    base: c.base,
                    now: t - 1,
                };
                assert!(
                    before.now_on(&nc).mono < at,
                    "drift {drift_ppm}, +{d} ns: due already at {} (maps too late)",
                    t - 1
                );
            }
            // A deadline already due maps to no later than now.
            assert!(c.micros_of_on(&nc, now.mono) <= c.micros());
        }
    }

    #[test]
    fn drift_stretches_local_time_and_offsets_shift_the_wall_clock() {
        let mut c = Clock::new();
        c.advance_to(ms(10_000));
        let fast = NodeClock {
            drift_ppm: 1000,
            offset_ms: 2500,
        };
        let slow = NodeClock {
            drift_ppm: -1000,
            offset_ms: -2500,
        };
        let base = c.now_on(&NodeClock::default());
        assert_eq!(base.mono, c.now().mono);
        assert_eq!(base.unix_ms, c.now().unix_ms);
        assert_eq!(c.now_on(&fast).mono - base.mono, Duration::from_millis(10));
        assert_eq!(base.mono - c.now_on(&slow).mono, Duration::from_millis(10));
        assert_eq!(c.now_on(&fast).unix_ms, base.unix_ms + 2510);
        assert_eq!(c.now_on(&slow).unix_ms, base.unix_ms - 2510);
    }

    #[test]
    fn node_clocks_are_per_seed_and_node_and_within_bounds() {
        let b = SkewBounds {
            max_ppm: 200,
            max_offset_ms: 5000,
        };
        let clocks: Vec<NodeClock> = (1..=50).map(|id| b.clock_of(7, id)).collect();
        assert_eq!(
            clocks,
            (1..=50).map(|id| b.clock_of(7, id)).collect::<Vec<_>>()
        );
        assert!(clocks
            .iter()
            .all(|c| c.drift_ppm.abs() <= 200 && c.offset_ms.abs() <= 5000));
        assert!(clocks.iter().any(|c| c.drift_ppm > 0) && clocks.iter().any(|c| c.drift_ppm < 0));
        assert_ne!(b.clock_of(7, 1), b.clock_of(8, 1));
        assert_eq!(SkewBounds::NONE.clock_of(7, 1), NodeClock::default());
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
