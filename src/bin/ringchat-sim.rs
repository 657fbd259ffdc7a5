//! ringchat-sim: runs the deterministic cluster simulation over many seeds and reports.
//!
//! `ringchat-sim --seeds 2000 --liveness 500 --start 0 --nodes 3` runs seeds 0..2000 healing
//! everything after the faults, and seeds 0..500 in the core liveness mode (a random majority
//! healed, the rest failed for good). Each seed picks its own fault mix (swarm testing;
//! `--no-swarm` for the one fixed mix). `--seed N --verbose` replays one seed with its trace on
//! stderr (set RUST_LOG=info for the core's own log); a failure prints the flags that replay
//! it. Exits 1 if any seed fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;

use ringchat::sim::{self, ms, Failure, FaultKind, LivenessMode, Report, SimConfig, SkewBounds};

#[derive(Parser, Debug)]
#[command(
    name = "ringchat-sim",
    about = "Deterministic simulation of a ringchat cluster: many seeds, invariants checked \
             after every step"
)]
struct Args {
    /// Run only this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to run healing everything after the faults.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// How many seeds (from --start) to run in the core liveness mode: a random majority
    /// healed, every other node crashed or cut off for good.
    #[arg(long, default_value_t = 0)]
    liveness: u64,
    /// Run --seed (or the --seeds) in the core liveness mode.
    #[arg(long)]
    core: bool,
    /// One fixed fault mix for every seed instead of each seed's own (swarm testing).
    #[arg(long)]
    no_swarm: bool,
    /// Every node sees the same virtual time (no per-node clock drift or offset).
    #[arg(long)]
    no_skew: bool,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Virtual milliseconds of faults per seed.
    #[arg(long, default_value_t = 2000)]
    safety_ms: u64,
    /// Largest one-way latency between nodes, in ms (the smallest is a sixteenth of it); a
    /// swarm seed draws its own, up to three times this.
    #[arg(long, default_value_t = 8)]
    latency_ms: u64,
    /// Talking clients per seed (a swarm seed draws 1 to this + 3).
    #[arg(long, default_value_t = 5)]
    talkers: usize,
    /// Percentage of random faults that are membership changes (joins, removals).
    #[arg(long, default_value_t = SimConfig::new(0).membership)]
    membership: u8,
    /// Run every seed twice and compare the trace hashes (determinism check).
    #[arg(long)]
    twice: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Print the trace of each run on stderr.
    #[arg(long)]
    verbose: bool,
}

fn config(args: &Args, seed: u64, core: bool) -> SimConfig {
    let mut cfg = SimConfig::new(seed).with_nodes(args.nodes);
    cfg.swarm = !args.no_swarm;
    if args.no_skew {
        cfg.skew = SkewBounds::NONE;
    }
    if core {
        cfg.liveness_mode = LivenessMode::Core;
    }
    cfg.safety = ms(args.safety_ms);
    cfg.talkers = args.talkers;
    cfg.membership = args.membership;
    cfg.latency = (ms(args.latency_ms) / 16, ms(args.latency_ms));
    cfg.verbose = args.verbose;
    cfg
}

fn run_one(args: &Args, seed: u64, core: bool) -> Result<Report, Failure> {
    let report = sim::run(config(args, seed, core))?;
    if args.twice {
        let again = sim::run(config(args, seed, core))?;
        if again.trace_hash != report.trace_hash {
            return Err(Failure {
                seed,
                flags: format!("{} --twice", config(args, seed, core).replay_flags()),
                nodes: args.nodes,
                at_ms: report.virtual_ms,
                step: report.steps,
                message: format!(
                    "determinism: two runs of the seed differ (trace {:016x} vs {:016x})",
                    report.trace_hash, again.trace_hash
                ),
            });
        }
    }
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    if args.nodes == 0 {
        eprintln!("ringchat-sim: --nodes must be at least 1");
        return ExitCode::from(2);
    }
    // (seed, core mode)
    let seeds: Vec<(u64, bool)> = match args.seed {
        Some(s) => vec![(s, args.core)],
        None => (args.start..args.start.saturating_add(args.seeds))
            .map(|s| (s, args.core))
            .chain((args.start..args.start.saturating_add(args.liveness)).map(|s| (s, true)))
            .collect(),
    };
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<Result<Report, Failure>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&(seed, core)) = seeds.get(i) else {
                    return;
                };
                let r = run_one(&args, seed, core);
                match &r {
                    Ok(rep) if args.seed.is_some() || args.verbose => {
                        let _ = writeln!(std::io::stdout(), "{rep}");
                    }
                    Ok(_) => {}
                    Err(f) => eprintln!("FAIL {f}"),
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failures: Vec<&Failure> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    failures.sort_by_key(|f| f.seed);
    let ok: Vec<&Report> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let sum = |f: fn(&Report) -> u64| ok.iter().map(|r| f(r)).sum::<u64>();
    let worst_liveness = ok.iter().map(|r| r.liveness_ms).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ringchat-sim: {} seeds ({} nodes) in {:.1} s: {} passed, {} failed",
        results.len(),
        args.nodes,
        started.elapsed().as_secs_f64(),
        ok.len(),
        failures.len()
    );
    let _ = writeln!(
        out,
        "  elections {}, faults {} ({} crashes), messages acked {}, delivered {}, \
         reconnects {}, device-limit refusals {}, steps {}, slowest convergence {} ms",
        sum(|r| r.elections),
        sum(|r| r.faults),
        sum(|r| r.crashes),
        sum(|r| r.acked),
        sum(|r| r.received),
        sum(|r| r.reconnects),
        sum(|r| r.refused),
        sum(|r| r.steps),
        worst_liveness
    );
    let _ = writeln!(
        out,
        "  membership: {} nodes joined, {} removed ({} removal requests refused, {} removed \
         nodes never learned it and were stopped by the admin)",
        sum(|r| r.joins),
        sum(|r| r.removals),
        sum(|r| r.removes_refused),
        sum(|r| r.zombies)
    );
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &ok {
        for (k, n) in &r.fault_kinds {
            *kinds.entry(k).or_default() += n;
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "  faults by kind: {}", kinds.join(", "));
    let _ = writeln!(out, "{}", swarm_summary(&ok));
    let _ = writeln!(out, "{}", liveness_summary(&ok));
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(out, "  failing seeds:");
    for f in &failures {
        let _ = writeln!(out, "  {f}");
    }
    ExitCode::from(1)
}

/// How the seeds' fault mixes spread: per kind, the seeds that enabled it; the spread of the
/// number of kinds per seed, of the clients and of the clock skew.
fn swarm_summary(ok: &[&Report]) -> String {
    let mixes: Vec<&sim::Swarm> = ok.iter().filter_map(|r| r.swarm.as_ref()).collect();
    if mixes.is_empty() {
        return "  swarm: off (one fixed fault mix)".into();
    }
    let per_kind: Vec<String> = FaultKind::ALL
        .iter()
        .map(|&k| {
            let n = mixes.iter().filter(|m| m.enables(k)).count();
            format!("{} {n}", k.name())
        })
        .collect();
    let mut by_count: BTreeMap<usize, usize> = BTreeMap::new();
    for m in &mixes {
        *by_count.entry(m.kinds.len()).or_default() += 1;
    }
    let by_count: Vec<String> = by_count.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    let talkers: BTreeMap<usize, usize> = mixes.iter().fold(BTreeMap::new(), |mut a, m| {
        *a.entry(m.talkers).or_default() += 1;
        a
    });
    let talkers: Vec<String> = talkers.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    let drift: BTreeMap<i64, usize> = mixes.iter().fold(BTreeMap::new(), |mut a, m| {
        *a.entry(m.skew.max_ppm).or_default() += 1;
        a
    });
    let drift: Vec<String> = drift.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    format!(
        "  swarm: {} seeds, each its own mix; seeds with each kind enabled: {}\n  \
         kinds per seed (kinds:seeds) {}; talkers (n:seeds) {}; max clock drift (ppm:seeds) {}",
        mixes.len(),
        per_kind.join(", "),
        by_count.join(" "),
        talkers.join(" "),
        drift.join(" ")
    )
}

/// The core liveness seeds: how many, the nodes left failed, the slowest convergence.
fn liveness_summary(ok: &[&Report]) -> String {
    let core: Vec<&&Report> = ok
        .iter()
        .filter(|r| r.liveness_mode == LivenessMode::Core)
        .collect();
    if core.is_empty() {
        return "  core liveness: no seeds".into();
    }
    let crashed: usize = core.iter().map(|r| r.left_crashed.len()).sum();
    let cut: usize = core.iter().map(|r| r.left_cut_off.len()).sum();
    let mut shapes: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for r in &core {
        let failed = r.left_crashed.len() + r.left_cut_off.len();
        *shapes.entry((r.core.len(), failed)).or_default() += 1;
    }
    let shapes: Vec<String> = shapes
        .iter()
        .map(|((c, f), n)| format!("{c}+{f}:{n}"))
        .collect();
    let worst = core.iter().map(|r| r.liveness_ms).max().unwrap_or(0);
    let mean = core.iter().map(|r| r.liveness_ms).sum::<u64>() / core.len() as u64;
    format!(
        "  core liveness: {} seeds converged with a majority healed; {crashed} nodes left \
         crashed, {cut} left cut off; (core+failed:seeds) {}; convergence mean {mean} ms, \
         slowest {worst} ms",
        core.len(),
        shapes.join(" ")
    )
}
