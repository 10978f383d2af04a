//! `rapax`: the operator's command line.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use rapax::sim::{run_seed, RunSpec, Summary};
use rapax_dataplane::protocol::node::{Bugs, BUG_NAMES};

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
    /// crashes (memory kept or lost), pauses (leaders included), partitions and loss. Clients
    /// issue KV operations with retries. Every step checks agreement, stability, the applied
    /// prefix and single-writer logs; the end checks linearizability, durability of
    /// acknowledged writes, replica convergence and that commits resumed after the faults healed.
    ///
    /// A failing seed prints its number and the violated invariant; `--seed S` replays it exactly
    /// (add --trace to see every fault and leader change). The last line is the summary; the exit
    /// status is non-zero on any violation.
    ///
    /// Examples:
    ///   rapax sim --seeds 2000 --replicas 5
    ///   rapax sim --seed 1234 --trace
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
    },
}

fn parse_replicas(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (3 | 5 | 7)) => Ok(n),
        _ => Err(format!("replicas must be 3, 5 or 7, got '{s}'")),
    }
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
        } => {
            let bugs = match inject_bug.as_deref().map(Bugs::parse) {
                None => Bugs::default(),
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    eprintln!("rapax sim: {e} (known: {})", BUG_NAMES.join(", "));
                    return ExitCode::from(2);
                }
            };
            let range = match seed {
                Some(s) => s..s + 1,
                None => first_seed..first_seed + seeds,
            };
            let started = Instant::now();
            let mut summary = Summary::default();
            for s in range {
                let report = run_seed(RunSpec {
                    replicas,
                    ticks,
                    bugs,
                    trace,
                    ..RunSpec::seed(s)
                });
                if let Some(v) = &report.violation {
                    println!(
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
                if stop_on_violation && report.violation.is_some() {
                    break;
                }
            }
            println!(
                "sim: coverage: {} seeds with a leader crash, {} with a paused-then-resumed \
                 leader, {} memory-lost restarts, {} slots chosen, {} client ops acknowledged, \
                 commits resumed at most {} ticks after the last heal, {:.1} s",
                summary.seeds_leader_crashed,
                summary.seeds_leader_paused,
                summary.memory_lost_restarts,
                summary.chosen_slots,
                summary.ops_acked,
                summary.max_resume_ticks,
                started.elapsed().as_secs_f64()
            );
            if let Some(s) = summary.first_failing_seed {
                println!("sim: first failing seed {s}");
            }
            println!("{}", summary.line());
            if summary.violations > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
