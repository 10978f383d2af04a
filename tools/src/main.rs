//! `rapax`: the operator's command line.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use rapax::sim::{run_seed, RunReport, RunSpec, Summary};
use rapax_dataplane::protocol::node::Bugs;

/// rapax: kernel-bypass state-machine replication.
///
/// Commands so far: `sim`, the deterministic simulator that runs whole clusters in one thread
/// with faults drawn from a seed and checks the protocol's invariants at every step.
#[derive(Parser)]
#[command(name = "rapax", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulator over many seeds (or replay one).
    ///
    /// Each seed draws the cluster size (unless --replicas), the protocol knobs (pipeline window,
    /// batch limits, election thresholds and periods), the fabric's delays and a fault schedule:
    /// crashes (memory kept or lost), pauses (leaders included), partitions, loss and slow
    /// nodes. Clients issue KV operations with retries. Every step checks agreement, stability,
    /// the applied prefix and single-writer logs; the end checks linearizability, durability of
    /// acknowledged writes, replica convergence and that commits resumed after the faults healed.
    ///
    /// A failing seed prints its number and the violated invariant; `--seed S` replays it exactly
    /// (add --trace to see every fault and leader change). The last line is the summary; the exit
    /// status is non-zero on any violation.
    ///
    /// Examples:
    ///   rapax sim --seeds 2000 --replicas 5
    ///   rapax sim --seed 1234 --replicas 3 --trace
    ///   rapax sim --seeds 200 --ticks 20000            (longer runs)
    ///   rapax sim --seeds 1000 --inject-bug commit-early   (needs --features inject-bugs)
    #[command(verbatim_doc_comment)]
    Sim {
        /// How many seeds to run, starting at --first-seed.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed of the range.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// Replay exactly this seed (overrides --seeds).
        #[arg(long)]
        seed: Option<u64>,
        /// Cluster size: 3, 5 or 7 (drawn per seed when absent).
        #[arg(long, value_parser = parse_replicas)]
        replicas: Option<usize>,
        /// Simulated ticks per seed.
        #[arg(long, default_value_t = 4000)]
        ticks: u64,
        /// Turn on a deliberate protocol bug, to show the simulator finds it
        /// (skip-recovery-read, no-revoke, commit-early). Needs a build with
        /// `--features inject-bugs`.
        #[arg(long)]
        inject_bug: Option<String>,
        /// Stop at the first violation.
        #[arg(long)]
        stop_on_violation: bool,
        /// Print every fault, heal and leader change.
        #[arg(long)]
        trace: bool,
        /// Seeds run in parallel (default: the available cores). Results do not depend on it.
        #[arg(long)]
        jobs: Option<usize>,
    },
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (3 | 5 | 7)) => Ok(n),
        _ => Err(format!("replicas must be 3, 5 or 7, got '{s}'")),
    }
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the seeds of `range` on `jobs` threads and hands the reports to `each` in seed order,
/// until it returns false.
fn for_each_in_order(
    range: std::ops::Range<u64>,
    jobs: usize,
    spec: impl Fn(u64) -> RunSpec + Sync,
    mut each: impl FnMut(RunReport) -> bool,
) {
    let next = AtomicU64::new(range.start);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<RunReport>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let tx = tx.clone();
            let (next, stop, spec, end) = (&next, &stop, &spec, range.end);
            scope.spawn(move || loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                if tx.send(run_seed(spec(s))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = range.start;
        for report in rx {
            pending.insert(report.seed, report);
            while let Some(report) = pending.remove(&want) {
                want += 1;
                if !each(report) {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim {
            seeds,
            first_seed,
            seed,
            replicas,
            ticks,
            inject_bug,
            stop_on_violation,
            trace,
            jobs,
        } => {
            let bugs = match inject_bug.as_deref().map(Bugs::parse) {
                None => Bugs::default(),
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    eprintln!("rapax sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let range = match seed {
                Some(s) => s..s + 1,
                None => first_seed..first_seed + seeds,
            };
            // Traces interleave across threads: a traced run uses one.
            let jobs = if trace {
                1
            } else {
                jobs.unwrap_or_else(default_jobs)
            };
            let started = Instant::now();
            let mut summary = Summary::default();
            let spec = |s| RunSpec {
                replicas,
                ticks,
                bugs,
                trace,
                ..RunSpec::seed(s)
            };
            for_each_in_order(range, jobs, spec, |report| {
                if let Some(v) = &report.violation {
                    rapax::say!(
                        "VIOLATION seed {} ({} replicas): {v}\n  replay: rapax sim --seed {}{}{} --ticks {ticks}",
                        report.seed,
                        report.replicas,
                        report.seed,
                        replicas.map_or(String::new(), |r| format!(" --replicas {r}")),
                        inject_bug
                            .as_deref()
                            .map_or(String::new(), |b| format!(" --inject-bug {b}")),
                    );
                }
                summary.add(&report);
                !(stop_on_violation && report.violation.is_some())
            });
            rapax::say!(
                "sim: coverage: {} seeds with a leader crash, {} with a paused-then-resumed \
                 leader, {} memory-lost restarts, {} slow nodes, {} slots chosen, {} client ops \
                 acknowledged, commits resumed at most {} ticks after the last heal, {:.1} s",
                summary.seeds_leader_crashed,
                summary.seeds_leader_paused,
                summary.memory_lost_restarts,
                summary.faults.slow,
                summary.chosen_slots,
                summary.ops_acked,
                summary.max_resume_ticks,
                started.elapsed().as_secs_f64()
            );
            if let Some(s) = summary.first_failing_seed {
                rapax::say!("sim: first failing seed {s}");
            }
            rapax::say!("{}", summary.line());
            if summary.violations > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
