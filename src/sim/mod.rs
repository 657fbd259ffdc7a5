//! Deterministic simulation of a whole cluster in one process (DESIGN "Testing").
//!
//! Several [`crate::core::Node`]s run on a virtual clock ([`clock`]) over a fake network
//! ([`network`]: per-link latency and order, resets, symmetric and one-way partitions, clogs)
//! with the real file storage on a simulated disk ([`crate::storage::SimDisk`]: a crash keeps
//! only what was synced, or tears it; fsyncs fail; disks fill up; reads come back corrupt);
//! simulated chat clients ([`client`]) say messages and fail over like the client library.
//! One seed drives every choice; the invariants ([`checker`]) are checked after every step,
//! and a failure names the seed that replays it. A run has two phases: a safety phase with
//! random faults ([`faults`]: link resets, partitions, one-way partitions, clogs, pauses,
//! crashes at a chosen point of a loop turn (torn writes among them), failed fsyncs, full
//! disks, wiped disks, client connection resets, and membership changes: new nodes joining,
//! members removed), then a liveness phase where every fault is healed and the cluster must
//! converge (one leader, every node a member that agrees on the configuration, everything
//! committed, applied and delivered, nothing unacked) within a bound, or, in the core
//! liveness mode ([`LivenessMode::Core`]), where a random majority is healed and every other
//! node stays failed for good, and that majority must serve every client. In a swarm run
//! ([`swarm`]) the seed picks its own fault mix, rates, latencies and clients. Every node
//! reads its own clock ([`clock::NodeClock`]: drift and wall-clock offset). [`World`] also
//! serves scenario tests: the same faults, injected by hand.
//!
//! ```no_run
//! let report = ringchat::sim::run(ringchat::sim::SimConfig::new(42)).unwrap();
//! println!("{report}");
//! ```

pub mod checker;
pub mod client;
pub mod clock;
pub mod faults;
pub mod network;
pub mod swarm;
pub mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::core::NodeId;

pub use clock::{ms, Micros, NodeClock, SkewBounds};
pub use faults::FaultKind;
pub use swarm::Swarm;
pub use world::World;

/// Everything that shapes one run besides the seed's random choices.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Clients that say messages.
    pub talkers: usize,
    /// Third devices of a user that has two talkers (device-limit pressure).
    pub probers: usize,
    /// Virtual length of the safety phase (faults on).
    pub safety: Micros,
    /// Time allowed to converge once everything is healed.
    pub liveness_bound: Micros,
    /// Whether random faults are injected in the safety phase.
    pub faults: bool,
    /// One-way latency between nodes (min, max).
    pub latency: (Micros, Micros),
    /// One-way latency between a client and its node (min, max).
    pub client_latency: (Micros, Micros),
    /// Nodes' heartbeat interval.
    pub heartbeat: Duration,
    /// Nodes' failure timeout.
    pub failure_timeout: Duration,
    /// How long the simulated disk takes to write and sync one storage job (min, max).
    pub fsync_latency: (Micros, Micros),
    /// Nodes' session timeout (sessions of a node lost this long end).
    pub session_timeout: Duration,
    /// Nodes snapshot after this many applied entries (small, so runs compact and install).
    pub snapshot_entries: u64,
    /// Entries nodes keep behind a snapshot.
    pub compact_keep: u64,
    /// Bytes of one snapshot chunk (small, so a transfer takes many).
    pub snapshot_chunk: usize,
    /// Bytes of snapshot image encoded per turn (small, so an encoding takes many turns).
    pub snapshot_step: usize,
    /// Nodes' replication linger (0, 1 or 2 ms by seed, so runs hold rounds and do not).
    pub replication_linger: Duration,
    /// Whether leaders replicate only what they stored durably, letting a follower of three
    /// commit on arrival (by seed, so runs cover both ways).
    pub replicate_after_persist: bool,
    /// Whether snapshots wait for the log to grow by the last image (by seed: with it,
    /// snapshots grow rare as histories grow, so half the runs go without).
    pub snapshot_after_growth: bool,
    /// Percentage of random faults that are membership changes: a new node joins, or an
    /// admin asks to remove a member (the cluster stays within 3 to 5 members).
    pub membership: u8,
    /// Nodes close and redial peer links silent past the limit (off only to show the stall
    /// after a silent partition that the rule prevents).
    pub reset_silent_links: bool,
    /// Print the trace of the run on stderr.
    pub verbose: bool,
    /// Swarm testing: the seed picks its own fault mix, rates, latencies, clients and clock
    /// skew ([`Swarm`]) within what the fields above allow.
    pub swarm: bool,
    /// Bounds of the per-node clock drift and wall-clock offset (each node's own, drawn from
    /// the seed and its id).
    pub skew: SkewBounds,
    /// What the phase after the faults heals and requires.
    pub liveness_mode: LivenessMode,
    /// The replay flags of the configuration before the swarm shaped it (set by
    /// [`Swarm::apply`]; the mix is drawn again from them).
    pub base_flags: Option<String>,
}

/// What the run does after its fault phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LivenessMode {
    /// Heal every fault; the whole cluster must converge.
    #[default]
    HealAll,
    /// As the VOPR's liveness mode: heal a random majority of the voting members (the core)
    /// and leave every other node failed for good (crashed, or cut off from the core); the
    /// core must elect a leader among itself and serve every client, which fails over to it.
    Core,
}

impl SimConfig {
    /// The standard run of `seed`: 3 nodes, 5 talkers, 1 prober, 2 s of faults.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            talkers: 5,
            probers: 1,
            safety: ms(2000),
            liveness_bound: ms(8000),
            faults: true,
            latency: (ms(1) / 2, ms(8)),
            client_latency: (ms(1) / 4, ms(3)),
            heartbeat: Duration::from_millis(30),
            failure_timeout: Duration::from_millis(200),
            fsync_latency: (50, 600),
            session_timeout: Duration::from_millis(1500),
            snapshot_entries: 64,
            compact_keep: 16,
            snapshot_chunk: 512,
            snapshot_step: 256,
            replication_linger: Duration::from_millis(seed % 3),
            replicate_after_persist: seed / 3 % 2 == 1,
            snapshot_after_growth: seed / 6 % 2 == 1,
            membership: 8,
            reset_silent_links: true,
            verbose: false,
            swarm: false,
            skew: SkewBounds {
                max_ppm: 200,
                max_offset_ms: 5000,
            },
            liveness_mode: LivenessMode::HealAll,
            base_flags: None,
        }
    }

    /// The run of `seed` as `ringchat-sim` runs it by default: a swarm seed (its own fault
    /// mix).
    pub fn swarm(seed: u64) -> SimConfig {
        SimConfig {
            swarm: true,
            ..SimConfig::new(seed)
        }
    }

    /// The same in the core liveness mode ([`LivenessMode::Core`]).
    pub fn core_liveness(mut self) -> SimConfig {
        self.liveness_mode = LivenessMode::Core;
        self
    }

    /// The `ringchat-sim` flags other than `--seed` that make this run (those it has).
    pub fn replay_flags(&self) -> String {
        if let Some(flags) = &self.base_flags {
            return flags.clone();
        }
        let d = SimConfig::new(self.seed);
        let mut flags = format!("--nodes {}", self.nodes);
        if !self.swarm {
            flags += " --no-swarm";
        }
        if self.liveness_mode == LivenessMode::Core {
            flags += " --core";
        }
        if self.skew == SkewBounds::NONE {
            flags += " --no-skew";
        }
        if self.membership != d.membership {
            flags += &format!(" --membership {}", self.membership);
        }
        if self.talkers != d.talkers {
            flags += &format!(" --talkers {}", self.talkers);
        }
        if self.safety != d.safety {
            flags += &format!(" --safety-ms {}", self.safety / 1000);
        }
        if self.latency != d.latency {
            flags += &format!(" --latency-ms {}", self.latency.1 / 1000);
        }
        flags
    }

    /// The same with `n` nodes.
    pub fn with_nodes(mut self, n: usize) -> SimConfig {
        self.nodes = n;
        self
    }
}

/// What one successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Steps run (each followed by the invariant checks).
    pub steps: u64,
    /// Virtual time at the end.
    pub virtual_ms: u64,
    /// Epochs that had a leader.
    pub elections: u64,
    /// Highest epoch with a leader.
    pub max_epoch: u64,
    /// Faults injected.
    pub faults: u64,
    /// Faults injected, by kind.
    pub fault_kinds: BTreeMap<&'static str, u64>,
    /// Node crashes among them.
    pub crashes: u64,
    /// Highest committed log index.
    pub committed: u64,
    /// Messages acknowledged to their senders.
    pub acked: u64,
    /// Messages delivered to clients (de-duplicated).
    pub received: u64,
    /// Client reconnections.
    pub reconnects: u64,
    /// Hellos refused by the device limit.
    pub refused: u64,
    /// New nodes that became members (by a committed configuration).
    pub joins: u64,
    /// Members removed (retired by a committed configuration).
    pub removals: u64,
    /// Removal requests refused (no leader at hand, another change under way).
    pub removes_refused: u64,
    /// Removed nodes that never learned it and were stopped when everything healed.
    pub zombies: u64,
    /// Time from healing to convergence.
    pub liveness_ms: u64,
    /// The seed's fault mix (swarm runs).
    pub swarm: Option<Swarm>,
    /// How the run ended its fault phase.
    pub liveness_mode: LivenessMode,
    /// Core mode: the healed majority of the voting members.
    pub core: Vec<NodeId>,
    /// Core mode: voting members (of the core's configurations) left crashed for good.
    pub left_crashed: Vec<NodeId>,
    /// Core mode: voting members left running but cut off from the core for good.
    pub left_cut_off: Vec<NodeId>,
    /// Fingerprint of everything that happened, for determinism checks.
    pub trace_hash: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} nodes): {} steps, {} ms, {} elections (max epoch {}), {} faults \
             ({} crashes), {} joins, {} removals ({} refused), {} committed, {} acked, \
             {} delivered, {} reconnects, {} refused, converged in {} ms, trace {:016x}",
            self.seed,
            self.nodes,
            self.steps,
            self.virtual_ms,
            self.elections,
            self.max_epoch,
            self.faults,
            self.crashes,
            self.joins,
            self.removals,
            self.removes_refused,
            self.committed,
            self.acked,
            self.received,
            self.reconnects,
            self.refused,
            self.liveness_ms,
            self.trace_hash
        )?;
        if self.liveness_mode == LivenessMode::Core {
            write!(
                f,
                "; core {:?}, left crashed {:?}, left cut off {:?}",
                self.core, self.left_crashed, self.left_cut_off
            )?;
        }
        if let Some(mix) = &self.swarm {
            write!(f, "; mix: {mix}")?;
        }
        Ok(())
    }
}

/// A violated invariant (or a panic) in the run of a seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The `ringchat-sim` flags other than `--seed` that reproduce it.
    pub flags: String,
    /// Cluster size of the run.
    pub nodes: usize,
    /// Virtual time of the failing step.
    pub at_ms: u64,
    /// The failing step.
    pub step: u64,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} ({} nodes) failed at {} ms (step {}): {}\n  replay: cargo run \
             --release --bin ringchat-sim -- --seed {} {} --verbose",
            self.seed, self.nodes, self.at_ms, self.step, self.message, self.seed, self.flags
        )
    }
}

impl std::error::Error for Failure {}

/// Runs one seed: the safety phase with faults, then healing and the liveness phase, then the
/// end-of-run checks. A panic inside the core is reported as a failure of the seed.
pub fn run(cfg: SimConfig) -> Result<Report, Failure> {
    let (seed, nodes, flags) = (cfg.seed, cfg.nodes, cfg.replay_flags());
    match catch_unwind(AssertUnwindSafe(|| run_phases(cfg))) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into());
            Err(Failure {
                seed,
                flags,
                nodes,
                at_ms: 0,
                step: 0,
                message: format!("panic: {msg}"),
            })
        }
    }
}

fn run_phases(cfg: SimConfig) -> Result<Report, Failure> {
    let (safety, bound, mode) = (cfg.safety, cfg.liveness_bound, cfg.liveness_mode);
    let mut w = World::new(cfg);
    w.run_until(safety)?;
    let took = match mode {
        LivenessMode::HealAll => w.settle(bound)?,
        LivenessMode::Core => w.settle_core(bound)?,
    };
    Ok(w.report(took / 1000))
}
