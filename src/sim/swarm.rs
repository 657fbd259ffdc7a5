//! Swarm testing (Groce et al., "Swarm testing", ISSTA 2012; TigerBeetle's VOPR): instead of
//! one fixed fault mix for every seed, each seed picks its own. A fixed mix spreads its draws
//! over every kind, so a run rarely sees much of any one of them; with a random subset of kinds
//! enabled, their weights and the rates and durations drawn per seed, some seeds are all
//! crashes, others all clogs and one-way cuts, dense or sparse, short or long, and behaviours
//! that need many faults of one kind close together (or the absence of another kind) get
//! reached. Everything is drawn from the seed alone (by its own generator, so the rest of the
//! run draws as it would), so a seed replays its mix exactly.

use std::fmt;

use super::clock::{ms, Micros, SkewBounds};
use super::faults::{Fault, FaultKind, FaultPlan, Scene};
use super::SimConfig;

/// The fault mix and shape of one seed's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// The enabled kinds with their weights (at least one), in [`FaultKind::ALL`] order.
    pub kinds: Vec<(FaultKind, u32)>,
    /// Gap between two faults.
    pub gap: (Micros, Micros),
    /// How long partitions, one-way partitions and clogs last.
    pub cut_for: (Micros, Micros),
    /// How long a node stays paused (and a disk fails).
    pub pause_for: (Micros, Micros),
    /// How long a crashed node stays down.
    pub down_for: (Micros, Micros),
    /// Delay before a reset link reconnects.
    pub reconnect_after: (Micros, Micros),
    /// How often the guard lets a fault take down more than a minority (1 in this many).
    pub majority_down_one_in: u8,
    /// One-way latency between nodes (min, max).
    pub latency: (Micros, Micros),
    /// One-way latency between a client and its node (min, max).
    pub client_latency: (Micros, Micros),
    /// How long the disk takes to write and sync one storage job (min, max).
    pub fsync_latency: (Micros, Micros),
    /// Talkers.
    pub talkers: usize,
    /// Probers.
    pub probers: usize,
    /// Bounds of the nodes' clock drift and wall-clock offset.
    pub skew: SkewBounds,
}

/// Salt of the swarm's generator, so that it draws apart from the run's own generator.
const SALT: u64 = 0x5a4d_5741_524d_0001;

impl Swarm {
    /// The mix of `base.seed`. `base` bounds it: no membership kind if `base.membership` is
    /// 0, no skew beyond what is possible if `base.skew` is none, talkers around
    /// `base.talkers`.
    pub fn draw(base: &SimConfig) -> Swarm {
        let mut rng = fastrand::Rng::with_seed(base.seed ^ SALT);
        let r = &mut rng;
        let mut kinds: Vec<(FaultKind, u32)> = Vec::new();
        for kind in FaultKind::ALL {
            let allowed = kind != FaultKind::Membership || base.membership > 0;
            // Each kind is on with probability 1/2 (the swarm paper's choice), weight 1..=8.
            let on = r.bool();
            let weight = r.u32(1..=8);
            if on && allowed {
                kinds.push((kind, weight));
            }
        }
        if kinds.is_empty() {
            let kind = FaultKind::ALL[r.usize(..FaultKind::ALL.len() - 1)];
            kinds.push((kind, 1));
        }
        let range = |r: &mut fastrand::Rng, lo: (Micros, Micros), extra: (Micros, Micros)| {
            let a = r.u64(lo.0..=lo.1);
            (a, a + r.u64(extra.0..=extra.1))
        };
        let gap = range(r, (ms(5), ms(150)), (ms(10), ms(500)));
        let cut_for = range(r, (ms(20), ms(300)), (ms(10), ms(2000)));
        let pause_for = range(r, (ms(10), ms(300)), (ms(10), ms(1500)));
        let down_for = range(r, (ms(10), ms(400)), (ms(10), ms(2000)));
        let reconnect_after = range(r, (ms(1), ms(20)), (ms(1), ms(150)));
        let majority_down_one_in = r.u8(5..=60);
        // Up to three times the base run's latencies, down to a sixteenth of them.
        let most = base.latency.1.max(16);
        let hi = r.u64(most / 16..=most * 3);
        let latency = (hi / r.u64(2..=16), hi);
        let most = base.client_latency.1.max(16);
        let hi = r.u64(most / 16..=most * 2);
        let client_latency = (hi / r.u64(2..=16), hi);
        // From a sixteenth of the base run's disk latency up to four times it.
        let most = base.fsync_latency.1.max(16);
        let hi = r.u64(most / 16..=most * 4);
        let fsync_latency = (hi / r.u64(2..=16), hi);
        let talkers = if base.talkers == 0 {
            0
        } else {
            r.usize(1..=base.talkers + 3)
        };
        let probers = if base.probers == 0 { 0 } else { r.usize(0..=2) };
        let max_ppm = [0, 50, 200, 1000, 10_000, 50_000][r.usize(..6)];
        let max_offset_ms = [0, 1000, 5000, 60_000][r.usize(..4)];
        let skew = if base.skew == SkewBounds::NONE {
            SkewBounds::NONE
        } else {
            SkewBounds {
                max_ppm,
                max_offset_ms,
            }
        };
        Swarm {
            kinds,
            gap,
            cut_for,
            pause_for,
            down_for,
            reconnect_after,
            majority_down_one_in,
            latency,
            client_latency,
            fsync_latency,
            talkers,
            probers,
            skew,
        }
    }

    /// Shapes `cfg` (the run's latencies, clients and clock skew) by the mix; the replay flags
    /// stay those of `cfg` as it was, from which the mix is drawn again.
    pub fn apply(&self, cfg: &mut SimConfig) {
        if cfg.base_flags.is_none() {
            cfg.base_flags = Some(cfg.replay_flags());
        }
        cfg.latency = self.latency;
        cfg.client_latency = self.client_latency;
        cfg.fsync_latency = self.fsync_latency;
        cfg.talkers = self.talkers;
        cfg.probers = self.probers;
        cfg.skew = self.skew;
    }

    /// The fault plan with the mix's rates and durations (`base` keeps the sizes).
    pub fn plan(&self, base: FaultPlan) -> FaultPlan {
        FaultPlan {
            gap: self.gap,
            cut_for: self.cut_for,
            pause_for: self.pause_for,
            down_for: self.down_for,
            reconnect_after: self.reconnect_after,
            ..base
        }
    }

    /// Whether the mix enables `kind`.
    pub fn enables(&self, kind: FaultKind) -> bool {
        self.kinds.iter().any(|&(k, _)| k == kind)
    }

    /// Names of the enabled kinds.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|&(k, _)| k.name()).collect()
    }

    /// Draws a fault of an enabled kind, by weight, with the guards of [`FaultPlan::draw`]:
    /// at most a minority is taken down at once, except 1 in `majority_down_one_in` draws;
    /// membership changes keep the cluster within `plan.sizes`.
    pub fn draw_fault(
        &self,
        plan: &FaultPlan,
        rng: &mut fastrand::Rng,
        scene: &Scene<'_>,
    ) -> Option<(Fault, Micros)> {
        let total: u32 = self.kinds.iter().map(|&(_, w)| w).sum();
        let mut roll = rng.u32(..total.max(1));
        let mut kind = self.kinds.first()?.0;
        for &(k, w) in &self.kinds {
            if roll < w {
                kind = k;
                break;
            }
            roll -= w;
        }
        let (n, down) = (scene.nodes.len(), scene.down);
        if kind == FaultKind::Membership {
            return plan.draw_membership(rng, scene);
        }
        if n == 0 || (n < 2 && kind.needs_pair()) {
            return None;
        }
        let voters = scene.members.len().max(1);
        let may_take_down =
            down.len() < (voters - 1) / 2 || rng.u8(..self.majority_down_one_in.max(1)) == 0;
        plan.fault_of(kind, rng, scene, may_take_down)
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, w)| format!("{}x{w}", k.name()))
            .collect();
        let r = |(a, b): (Micros, Micros)| format!("{}-{} ms", a / 1000, b / 1000);
        write!(
            f,
            "kinds [{}], gap {}, cuts {}, pauses {}, down {}, latency {}-{} us, fsync {}-{} us, \
             {} talkers, {} probers, drift <= {} ppm, offset <= {} ms",
            kinds.join(" "),
            r(self.gap),
            r(self.cut_for),
            r(self.pause_for),
            r(self.down_for),
            self.latency.0,
            self.latency.1,
            self.fsync_latency.0,
            self.fsync_latency.1,
            self.talkers,
            self.probers,
            self.skew.max_ppm,
            self.skew.max_offset_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_mix_every_time() {
        for seed in [0, 1, 42, u64::MAX] {
            let cfg = SimConfig::new(seed);
            assert_eq!(Swarm::draw(&cfg), Swarm::draw(&cfg));
        }
    }

    #[test]
    fn seeds_draw_different_mixes_with_at_least_one_kind() {
        let mixes: Vec<Swarm> = (0..500).map(|s| Swarm::draw(&SimConfig::new(s))).collect();
        assert!(mixes.iter().all(|m| !m.kinds.is_empty()));
        let distinct: std::collections::BTreeSet<Vec<FaultKind>> = mixes
            .iter()
            .map(|m| m.kinds.iter().map(|&(k, _)| k).collect())
            .collect();
        assert!(
            distinct.len() > 200,
            "only {} distinct kind sets",
            distinct.len()
        );
        for kind in FaultKind::ALL {
            let on = mixes.iter().filter(|m| m.enables(kind)).count();
            assert!(
                (150..=350).contains(&on),
                "{} on in {on} of 500",
                kind.name()
            );
        }
        // Rates differ too, not only the kinds.
        let gaps: std::collections::BTreeSet<_> = mixes.iter().map(|m| m.gap).collect();
        assert!(gaps.len() > 400);
        assert!(mixes.iter().any(|m| m.kinds.len() == 1));
        assert!(mixes.iter().any(|m| m.kinds.len() >= 9));
    }

    /// Enough seeds that some draw every kind off (1 in 2048 without membership), so the
    /// fallback to one kind is exercised.
    #[test]
    fn no_membership_kind_when_the_base_run_has_none() {
        for seed in 0..20_000 {
            let mut cfg = SimConfig::new(seed);
            cfg.membership = 0;
            let m = Swarm::draw(&cfg);
            assert!(!m.enables(FaultKind::Membership) && !m.kinds.is_empty());
        }
    }

    #[test]
    fn draws_only_enabled_kinds_and_keeps_a_majority_up_mostly() {
        let nodes = [1, 2, 3, 4, 5];
        for seed in 0..100 {
            let mix = Swarm::draw(&SimConfig::new(seed));
            let plan = mix.plan(FaultPlan::default());
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut drawn, mut over) = (0, 0);
            for _ in 0..300 {
                // Two of five down already: taking a third down breaks the majority.
                let scene = Scene {
                    nodes: &nodes,
                    down: &[1, 2],
                    members: &nodes,
                    joining: 0,
                    changing: false,
                    clients: 3,
                };
                let Some((fault, _)) = mix.draw_fault(&plan, &mut rng, &scene) else {
                    continue;
                };
                drawn += 1;
                let name = fault.name();
                let kind = match name {
                    "join" | "remove" => "membership",
                    n => n,
                };
                assert!(
                    mix.names().contains(&kind),
                    "seed {seed}: {name} not in {mix}"
                );
                if matches!(fault, Fault::Pause(_) | Fault::Crash(..) | Fault::Wipe(_)) {
                    over += 1;
                }
            }
            assert!(drawn > 0 || mix.kinds.iter().all(|&(k, _)| k == FaultKind::Membership));
            // 1 in 5 to 60 draws may; a third of the victims are up (two of five are down).
            assert!(
                over <= 300 / 4,
                "seed {seed}: {over} of 300 draws ({drawn} faults) took a majority down"
            );
        }
    }
}
