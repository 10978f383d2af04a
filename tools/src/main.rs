//! `rapax`: the operator's command line.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use rapax::cluster::LocalCluster;
use rapax::drill::{BenchOptions, FailMode, FailoverOptions};
use rapax_dataplane::client::{Client, ClientOptions};
use rapax_dataplane::profile::Profile;
use rapax_dataplane::protocol::kv::{KvOp, KvReply};
use rapax_dataplane::protocol::membership::{Change, ChangeAnswer};
use rapax_dataplane::protocol::NodeId;

use rapax::sim::{run_seed, RunReport, RunSpec, Summary};
use rapax_dataplane::protocol::node::Bugs;

/// rapax: kernel-bypass state-machine replication.
///
/// Start here: `rapax demo` starts a 3-node cluster on shared memory, benchmarks it, kills the
/// leader in the middle, and prints latency percentiles and the fail-over time.
///
/// A local cluster: `rapax up --profile hw-profiles/shm-local.toml --replicas 3`, then
/// `rapax status`, `rapax kv put k v`, `rapax kv get k`, `rapax down`. Measurements: `rapax
/// bench` and `rapax failover`. The protocol itself: `rapax sim`, the deterministic simulator.
#[derive(Parser)]
#[command(name = "rapax", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on a fresh machine: a 3-node shm cluster, a short benchmark with the
    /// leader killed in the middle, the latency summary, the fail-over time and a plot.
    ///
    /// Everything it starts is stopped at the end. The plot is written to --plot.
    ///
    /// Example:
    ///   rapax demo
    #[command(verbatim_doc_comment)]
    Demo {
        /// The hardware profile.
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        /// Operations of the benchmark.
        #[arg(long, default_value_t = 20_000)]
        ops: u64,
        /// Where to write the latency plot.
        #[arg(long, default_value = "target/rapax-demo.svg")]
        plot: PathBuf,
        /// The cluster directory (default: `demo` under the profile's shm directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start a local cluster in the background: one rapax-dataplane and one rapax-control
    /// process per node, all files (regions, channels, mailboxes, logs) in --dir, mode 0600.
    ///
    /// Example:
    ///   rapax up --profile hw-profiles/shm-local.toml --replicas 3
    ///   rapax status; rapax kv put greeting hello; rapax down
    #[command(verbatim_doc_comment)]
    Up {
        /// The hardware profile (`shm` or `udp` fabric).
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        /// Acceptors: 1, 3, 5 or 7.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Spares: nodes outside the ring that follow the log as learners; the leader puts
        /// one in the place of an acceptor dead for `replace_after_ms` (profile), and
        /// `rapax reconfig` moves nodes in and out of the ring.
        #[arg(long, default_value_t = 0)]
        spares: usize,
        /// The cluster directory (default: `cluster` under the profile's shm directory, or
        /// the temporary directory for udp).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Change the ring of a running cluster: the leader decides the change in its log, one
    /// acceptor at a time (a replace is two steps), and waits for nothing else to be in flight.
    ///
    /// Refused, with the reason: an unknown node, adding a node already in the ring or not yet
    /// caught up as a learner, removing a node not in the ring or below a majority of live
    /// acceptors, a reorder that does not name every acceptor once, a change while another is
    /// in flight. On success it waits until the leader applied the last step and prints the
    /// new configuration.
    ///
    /// Examples:
    ///   rapax reconfig add 3
    ///   rapax reconfig remove 1
    ///   rapax reconfig replace 1 3        (spare 3 takes acceptor 1's place)
    ///   rapax reconfig reorder 2,0,1      (the succession order; the first live node leads)
    #[command(verbatim_doc_comment)]
    Reconfig {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// How long to wait for the change to be applied.
        #[arg(long, default_value_t = 5000)]
        wait_ms: u64,
        #[command(subcommand)]
        change: ReconfigCommand,
    },
    /// Stop exactly the processes `rapax up` started in --dir (SIGTERM, then SIGKILL), then
    /// free the nodes' regions (their logs, in shared memory); logs and counters stay.
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Each node's role, view, ballot, applied index, heartbeat and pull-scores.
    ///
    /// The counters are read from the nodes' shared-memory channels (no request to the nodes).
    /// `view` is the leader the node granted its log to; `alive (ctl)` is the set of nodes its
    /// control plane holds alive; `scores` are its pull-scores of every node in ring order.
    /// Below the table: the leader's view of each follower (active, absent, requested,
    /// syncing), client requests and refusals per node, and on frame fabrics each node's
    /// frames sent, received, refused by the link, resent, out of sequence and timed out.
    #[command(verbatim_doc_comment)]
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Key-value commands against a running cluster (they find the leader and retry).
    Kv {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        #[command(subcommand)]
        op: KvCommand,
    },
    /// Benchmark a cluster: end-to-end and leader-side replication latency percentiles, the
    /// fabric floor measured in the same run, and throughput.
    ///
    /// Starts a cluster in --dir (or attaches to the one running there), warms up, then runs
    /// --ops puts from --clients closed-loop clients. The floor on shm, udp and rdma is
    /// measured in two halves, one before the cluster starts and one after the bench has
    /// stopped it (an attached cluster keeps running), merged, each half's p50 printed: shm,
    /// a cross-core round trip of one write of the value size; udp, a UDP ping-pong over
    /// loopback; rdma, a ping-pong of RDMA WRITEs of one command's log entry, as ib_write_lat
    /// does, with the bare value's printed beside it. On dpdk the floor is the data mesh's
    /// own frame round trip after the warm-up, the leader reading a follower's heartbeat word
    /// over the same ports and agents, with the PMD's bare round trip on a ring port pair
    /// printed beside it.
    /// Percentiles come from HdrHistograms; --json writes the summary, --plot a
    /// latency-percentile plot.
    ///
    /// Example:
    ///   rapax bench --profile hw-profiles/shm-local.toml --replicas 3 --ops 100000 \
    ///       --value-bytes 64 --clients 1 --json target/bench.json --plot target/bench.svg
    #[command(verbatim_doc_comment)]
    Bench {
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 50_000)]
        ops: u64,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Also measure the fabric under the run's load: halfway through, the leader starts
        /// reading a follower's heartbeat word over the data mesh, one READ at a time, and
        /// times each round trip while the second half runs. Printed beside replication. It
        /// takes turns of the leader's from the run, so that half's end-to-end latency is a
        /// little worse. On udp and rdma (on dpdk the floor is the data mesh's already; on
        /// shm a READ is a load from mapped memory).
        #[arg(long)]
        loaded_floor: bool,
        /// The cluster directory (default: `bench` under the profile's shm directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Checks this host against a hardware profile before nodes are started on it: the cores
    /// the profile pins agents to, spinning agents without a core of their own, the
    /// clocksource, and per fabric the shm directory (tmpfs, room for every node's region),
    /// the UDP address, the RDMA device (present, port active, GID index, MTU) or DPDK
    /// (bindings, hugepages, the memif directory). Each check says PASS, WARN or FAIL and what
    /// to change; the exit status is 1 when one fails.
    ///
    /// Example:
    ///   rapax preflight --profile hw-profiles/mlx5-cx6.toml --replicas 3
    #[command(verbatim_doc_comment)]
    Preflight {
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        /// Nodes that will run on this host (a local cluster: all of them; one per host: 1).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// Fail-over drill: under steady client load, K times take the leader's data plane out
    /// (kill -9, or SIGSTOP then SIGCONT once a new leader commits), measure detection,
    /// handover and kill-to-first-commit, and bring the victim back as a follower. The client
    /// history is checked for linearizability at the end.
    ///
    /// detect: kill to the new leader's control plane declaring the old one failed;
    /// handover: from there to the new leader leading (permissions acquired, logs recovered);
    /// failover: kill to the new leader's first commit.
    ///
    /// Example:
    ///   rapax failover --profile hw-profiles/shm-local.toml --replicas 3 --kills 20
    #[command(verbatim_doc_comment)]
    Failover {
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 10)]
        kills: usize,
        #[arg(long, value_enum, default_value = "kill")]
        mode: ModeArg,
        #[arg(long, default_value_t = 2)]
        clients: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        /// The cluster directory (default: `failover` under the profile's shm directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Ring-repair drill: a cluster with spares under a bulk load of --ops puts; at 30 % of
    /// them an acceptor (not the leader) is killed with both its processes; the leader puts a
    /// spare in its place once it has been dead for the profile's election.replace_after_ms;
    /// the victim is restarted and must rejoin as a caught-up spare. Reports the time to the
    /// repair and to the rejoin, the laps of the log, resident memory after the start, after 10 % of the ops and at the end, and
    /// whether the history of a second load (from before the kill to after the rejoin, with
    /// a final read of every key) is linearizable.
    ///
    /// Example (the long run, on a 4096-entry log):
    ///   rapax repair --profile target/lanes/shm-4096.toml --replicas 3 --spares 1 --ops 1000000
    #[command(verbatim_doc_comment)]
    Repair {
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 1)]
        spares: usize,
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        /// The cluster directory (default: `repair` under the profile's shm directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// State-transfer drill: load --state-mb of KV state, kill -9 a follower's data plane, move
    /// the log more than half a lap past it (the log it would need is then being reused),
    /// restart it under client load and time its catch-up: the leader streams it a snapshot
    /// of its state over the fabric, then the log from there.
    ///
    /// The snapshot must fit half the log (`log.capacity_entries × log.slot_bytes / 2`: 128 MiB
    /// with shm-local).
    ///
    /// Example:
    ///   rapax transfer --profile hw-profiles/shm-local.toml --state-mb 100
    #[command(verbatim_doc_comment)]
    Transfer {
        #[arg(long, default_value = "hw-profiles/shm-local.toml")]
        profile: PathBuf,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        #[arg(long, default_value_t = 100)]
        state_mb: u64,
        /// The cluster directory (default: `transfer` under the profile's shm directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
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
    ///   rapax sim --seeds 2000 --replicas 3 --reconfig
    ///   rapax sim --seeds 1000 --reconfig --inject-bug reconfig-no-intersection
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
        /// (skip-recovery-read, no-revoke, commit-early, sync-ignores-held,
        /// reconfig-no-intersection). Needs a build with `--features inject-bugs`.
        #[arg(long)]
        inject_bug: Option<String>,
        /// Add one or two spares and, during the faults, ask the leader for configuration
        /// changes (a spare replacing an acceptor, add, remove, reorder). Checks, besides the
        /// rest, one configuration per epoch, that consecutive configurations' majorities meet,
        /// and that every node ends with the configuration the chosen log makes.
        #[arg(long)]
        reconfig: bool,
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

const DEFAULT_DIR: &str = "/dev/shm/rapax/cluster";

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Kill,
    Pause,
}

#[derive(Subcommand)]
enum ReconfigCommand {
    /// A spare joins the ring, at its end.
    Add { node: NodeId },
    /// An acceptor leaves the ring and becomes a spare.
    Remove { node: NodeId },
    /// Spare NEW takes acceptor OLD's place in the ring.
    Replace { old: NodeId, new: NodeId },
    /// The acceptors in a new succession order, comma-separated.
    Reorder {
        #[arg(value_delimiter = ',', num_args = 1..)]
        ring: Vec<NodeId>,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    /// Store VALUE under KEY.
    Put { key: String, value: String },
    /// Read KEY.
    Get { key: String },
    /// Delete KEY.
    Del { key: String },
    /// Set KEY to NEW if its value is EXPECTED (`--absent`: if KEY does not exist).
    Cas {
        key: String,
        #[arg(required_unless_present = "absent")]
        expected: Option<String>,
        new: String,
        #[arg(long)]
        absent: bool,
    },
}

fn load_profile(path: &Path) -> Result<Profile, String> {
    Profile::load(path).map_err(|e| e.to_string())
}

fn dir_for(profile: &Profile, dir: Option<PathBuf>, what: &str) -> PathBuf {
    dir.unwrap_or_else(|| {
        rapax::cluster::default_dir(profile)
            .parent()
            .map_or_else(|| PathBuf::from(what), |p| p.join(what))
    })
}

fn fail(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("rapax {cmd}: {e}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    rapax::drill::stop_started_clusters_on_signal();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            profile,
            ops,
            plot,
            dir,
        } => match demo(&profile, ops, &plot, dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("demo", e),
        },
        Command::Reconfig {
            dir,
            wait_ms,
            change,
        } => reconfig(&dir, wait_ms, change),
        Command::Up {
            profile,
            replicas,
            spares,
            dir,
        } => {
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => return fail("up", e),
            };
            let dir = dir.unwrap_or_else(|| rapax::cluster::default_dir(&profile));
            match LocalCluster::up_spares(&profile, replicas, spares, &dir) {
                Ok(c) => match c.wait_leader(Duration::from_secs(20)) {
                    Ok(l) => {
                        rapax::say!(
                            "rapax up: {} nodes ({spares} spares) on {} in {}; node {l} leads",
                            replicas + spares,
                            profile.fabric.kind.as_str(),
                            dir.display()
                        );
                        rapax::say!("{}", c.status());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("rapax up: {e}; logs: {}/node-*.log", dir.display());
                        ExitCode::FAILURE
                    }
                },
                Err(e) => fail("up", e),
            }
        }
        Command::Down { dir } => {
            let n = rapax::cluster::down(&dir);
            rapax::say!("rapax down: stopped {n} processes in {}", dir.display());
            ExitCode::SUCCESS
        }
        Command::Status { dir } => match LocalCluster::open(&dir) {
            Ok(c) => {
                rapax::say!("{}", c.status());
                ExitCode::SUCCESS
            }
            Err(e) => fail("status", format!("no cluster in {}: {e}", dir.display())),
        },
        Command::Kv { dir, op } => kv(&dir, op),
        Command::Preflight {
            profile: path,
            replicas,
        } => {
            let profile = match load_profile(&path) {
                Ok(p) => p,
                Err(e) => return fail("preflight", e),
            };
            println!(
                "preflight: profile {} ({}), fabric {}, {replicas} node(s) on this host",
                profile.name,
                path.display(),
                profile.fabric.kind.as_str()
            );
            let checks = rapax::preflight::run(&profile, replicas.max(1));
            print!("{}", rapax::preflight::render(&checks));
            if checks
                .iter()
                .any(|c| c.verdict == rapax::preflight::Verdict::Fail)
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Bench {
            profile,
            replicas,
            ops,
            value_bytes,
            clients,
            json,
            plot,
            loaded_floor,
            dir,
        } => {
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => return fail("bench", e),
            };
            if clients == 0 || clients > 32 {
                return fail("bench", "--clients must be 1..=32");
            }
            let dir = dir_for(&profile, dir, "bench");
            let opts = BenchOptions {
                profile,
                replicas,
                ops,
                value_bytes,
                clients,
                dir,
                json,
                plot,
                loaded_floor,
            };
            match rapax::drill::bench(&opts) {
                Ok(r) => {
                    rapax::say!("{}", r.human());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("bench", e),
            }
        }
        Command::Transfer {
            profile,
            replicas,
            state_mb,
            dir,
        } => {
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => return fail("transfer", e),
            };
            let dir = dir_for(&profile, dir, "transfer");
            let opts = rapax::drill::TransferOptions {
                profile,
                replicas,
                state_mb,
                dir,
            };
            match rapax::drill::transfer(&opts) {
                Ok(r) => {
                    rapax::say!("{}", r.human());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("transfer", e),
            }
        }
        Command::Failover {
            profile,
            replicas,
            kills,
            mode,
            clients,
            json,
            dir,
        } => {
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => return fail("failover", e),
            };
            let dir = dir_for(&profile, dir, "failover");
            let opts = FailoverOptions {
                profile,
                replicas,
                kills,
                mode: match mode {
                    ModeArg::Kill => FailMode::Kill,
                    ModeArg::Pause => FailMode::Pause,
                },
                dir,
                clients,
                json,
            };
            match rapax::drill::failover(&opts) {
                Ok((r, _)) => {
                    rapax::say!("{}", r.human());
                    if r.linearizable {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail("failover", e),
            }
        }
        Command::Repair {
            profile,
            replicas,
            spares,
            ops,
            value_bytes,
            json,
            dir,
        } => {
            let profile = match load_profile(&profile) {
                Ok(p) => p,
                Err(e) => return fail("repair", e),
            };
            let dir = dir_for(&profile, dir, "repair");
            let opts = rapax::drill::RepairOptions {
                profile,
                replicas,
                spares,
                ops,
                value_bytes,
                dir,
            };
            match rapax::drill::repair(&opts) {
                Ok(r) => {
                    rapax::say!(
                        "repair: {} fabric, {} acceptors + {} spares, {} ops ({:.0} ops/s, {:.1} \
                         laps of the log)",
                        r.fabric,
                        r.replicas,
                        r.spares,
                        r.ops,
                        r.ops_per_s,
                        r.laps
                    );
                    rapax::say!(
                        "  killed acceptor {} (ring {:?}); spare {} took its place: ring {:?} at \
                         epoch {}, {:.1} ms after the kill (replace_after_ms = {})",
                        r.victim,
                        r.ring_before,
                        r.spare,
                        r.ring_after,
                        r.epoch_after,
                        r.repaired_ms,
                        r.replace_after_ms
                    );
                    rapax::say!(
                        "  node {} restarted and follows as a caught-up spare {:.1} ms later",
                        r.victim,
                        r.rejoined_ms
                    );
                    let rss: Vec<String> = r
                        .rss_kib
                        .iter()
                        .map(|(n, k, a, w, b)| {
                            let mib = |x: &u64| *x as f64 / 1024.0;
                            format!("node {n} {k} {:.1} / {:.1} / {:.1}", mib(a), mib(w), mib(b))
                        })
                        .collect();
                    rapax::say!(
                        "  resident memory (MiB, after start / after 10 % of the ops / at the \
                         end; the victim's from its restart): {}",
                        rss.join(", ")
                    );
                    rapax::say!(
                        "  history of {} operations: {}",
                        r.history_ops,
                        if r.linearizable {
                            "linearizable"
                        } else {
                            "NOT linearizable"
                        }
                    );
                    if let Some(path) = json {
                        match serde_json::to_string_pretty(&r) {
                            Ok(text) => {
                                if let Err(e) = std::fs::write(&path, text) {
                                    return fail("repair", format!("{}: {e}", path.display()));
                                }
                            }
                            Err(e) => return fail("repair", e),
                        }
                    }
                    if r.linearizable {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail("repair", e),
            }
        }
        Command::Sim {
            seeds,
            first_seed,
            seed,
            replicas,
            ticks,
            inject_bug,
            reconfig,
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
                reconfig,
                ..RunSpec::seed(s)
            };
            for_each_in_order(range, jobs, spec, |report| {
                if let Some(v) = &report.violation {
                    rapax::say!(
                        "VIOLATION seed {} ({} replicas): {v}\n  replay: rapax sim --seed {}{}{}{} --ticks {ticks}",
                        report.seed,
                        report.replicas,
                        report.seed,
                        replicas.map_or(String::new(), |r| format!(" --replicas {r}")),
                        if reconfig { " --reconfig" } else { "" },
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
                 acknowledged, {} log wraps, {} snapshots installed, commits resumed at most {} \
                 ticks after the last heal, {:.1} s",
                summary.seeds_leader_crashed,
                summary.seeds_leader_paused,
                summary.memory_lost_restarts,
                summary.faults.slow,
                summary.chosen_slots,
                summary.ops_acked,
                summary.log_wraps,
                summary.snapshots_installed,
                summary.max_resume_ticks,
                started.elapsed().as_secs_f64()
            );
            if reconfig {
                rapax::say!(
                    "sim: reconfiguration: {} changes asked, {} refused (a change in flight, not \
                     caught up, below a majority), {} ring repairs, {} configuration entries \
                     chosen",
                    summary.reconfigs_asked,
                    summary.reconfigs_refused,
                    summary.ring_repairs,
                    summary.reconfigs_chosen
                );
            }
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

fn reconfig(dir: &Path, wait_ms: u64, change: ReconfigCommand) -> ExitCode {
    let change = match change {
        ReconfigCommand::Add { node } => Change::Add(node),
        ReconfigCommand::Remove { node } => Change::Remove(node),
        ReconfigCommand::Replace { old, new } => Change::Replace { old, new },
        ReconfigCommand::Reorder { ring } => Change::Reorder(ring),
    };
    let cluster = match LocalCluster::open(dir) {
        Ok(c) => c,
        Err(e) => return fail("reconfig", format!("no cluster in {}: {e}", dir.display())),
    };
    let mut client = match Client::connect(dir, ClientOptions::default()) {
        Ok(c) => c,
        Err(e) => return fail("reconfig", format!("cluster in {}: {e}", dir.display())),
    };
    match client.reconfigure(&change) {
        Ok(ChangeAnswer::Proposed(steps)) => {
            let listed: Vec<String> = steps.iter().map(|m| format!("{m:?}")).collect();
            rapax::say!(
                "rapax reconfig: {change}: the leader proposes {}",
                listed.join(", then ")
            );
            // The leader's last step is the configuration to wait for; the epoch a node
            // showed before the request may lag the leader's.
            let Some(want) = steps.last() else {
                return fail("reconfig", format!("{change}: the leader proposed no step"));
            };
            let (target, want) = (want.epoch, want.ring().to_vec());
            let deadline = Instant::now() + Duration::from_millis(wait_ms);
            loop {
                match cluster.configuration() {
                    Some((epoch, ring)) if epoch == target && ring != want => {
                        return fail(
                            "reconfig",
                            format!(
                                "{change} was not chosen: epoch {epoch} is ring {ring:?} (the \
                                 leader changed before the change was decided); see rapax \
                                 status and try again"
                            ),
                        );
                    }
                    Some((epoch, ring)) if epoch >= target => {
                        rapax::say!("rapax reconfig: epoch {epoch}, ring {ring:?}");
                        return ExitCode::SUCCESS;
                    }
                    _ if Instant::now() > deadline => {
                        return fail(
                            "reconfig",
                            format!(
                                "the leader did not apply epoch {target} within {wait_ms} ms \
                                 (now: {:?}); see rapax status",
                                cluster.configuration()
                            ),
                        )
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        Ok(ChangeAnswer::Refused(why)) => fail("reconfig", format!("{change} refused: {why}")),
        Err(e) => fail("reconfig", format!("{change}: {e}")),
    }
}

fn kv(dir: &Path, op: KvCommand) -> ExitCode {
    let mut client = match Client::connect(dir, ClientOptions::default()) {
        Ok(c) => c,
        Err(e) => return fail("kv", format!("cluster in {}: {e}", dir.display())),
    };
    let op = match op {
        KvCommand::Put { key, value } => KvOp::Put {
            key: key.into_bytes(),
            value: value.into_bytes(),
        },
        KvCommand::Get { key } => KvOp::Get {
            key: key.into_bytes(),
        },
        KvCommand::Del { key } => KvOp::Delete {
            key: key.into_bytes(),
        },
        KvCommand::Cas {
            key,
            expected,
            new,
            absent,
        } => KvOp::Cas {
            key: key.into_bytes(),
            expected: if absent {
                None
            } else {
                expected.map(String::into_bytes)
            },
            new: new.into_bytes(),
        },
    };
    match client.execute(op) {
        Ok(KvReply::Stored) => rapax::say!("stored"),
        Ok(KvReply::Value(Some(v))) => rapax::say!("{}", String::from_utf8_lossy(&v)),
        Ok(KvReply::Value(None)) => {
            rapax::say!("(absent)");
            return ExitCode::from(3);
        }
        Ok(KvReply::Deleted(existed)) => {
            rapax::say!("{}", if existed { "deleted" } else { "(absent)" })
        }
        Ok(KvReply::Cas(true)) => rapax::say!("swapped"),
        Ok(KvReply::Cas(false)) => {
            rapax::say!("not swapped");
            return ExitCode::from(3);
        }
        Ok(KvReply::Rejected(why)) => return fail("kv", format!("rejected: {why}")),
        Err(e) => return fail("kv", e),
    }
    ExitCode::SUCCESS
}

/// `rapax demo`.
fn demo(profile: &Path, ops: u64, plot: &Path, dir: Option<PathBuf>) -> Result<(), String> {
    use rapax::drill::{fail_leader, measure_floor, replication, run_load, Session};
    use rapax::report::write_plot;
    let profile = load_profile(profile)?;
    let dir = dir_for(&profile, dir, "demo");
    rapax::say!(
        "demo: starting a 3-node cluster on the {} fabric in {}",
        profile.fabric.kind.as_str(),
        dir.display()
    );
    let floor = measure_floor(&profile, 20_000, 64);
    let session = Session::start_or_attach(&profile, 3, &dir).map_err(|e| e.to_string())?;
    let leader = session.ready().map_err(|e| e.to_string())?;
    rapax::say!("{}", session.cluster.status());
    rapax::say!("demo: node {leader} leads; warming up");
    run_load(&dir, 1, (ops / 10).max(500), 64, "warm-up", None).map_err(|e| e.to_string())?;
    let _ = replication(&session.cluster);
    let sample = std::sync::Arc::new(std::sync::Mutex::new(None));
    let kill = {
        let sample = std::sync::Arc::clone(&sample);
        let dir = dir.clone();
        Box::new(move || {
            if let Ok(c) = LocalCluster::open(&dir) {
                let r = fail_leader(&c, FailMode::Kill, 1, 1);
                *sample.lock().expect("lock") = Some(r.map_err(|e| e.to_string()));
            }
        }) as Box<dyn FnOnce() + Send>
    };
    rapax::say!("demo: {ops} puts of 64 B from one client; the leader is killed half-way");
    let load = run_load(&dir, 1, ops, 64, "demo", Some(kill)).map_err(|e| e.to_string())?;
    let repl = replication(&session.cluster);
    let e2e = load.e2e.summary();
    let r = repl.summary();
    let f = floor.summary2();
    rapax::say!(
        "demo: {} ops in {:.2} s ({:.0} ops/s), {} failed",
        load.ops,
        load.elapsed.as_secs_f64(),
        load.ops as f64 / load.elapsed.as_secs_f64(),
        load.failures
    );
    rapax::say!(
        "  end-to-end   us: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.0}  (includes the fail-over)",
        e2e.p50,
        e2e.p99,
        e2e.p999,
        e2e.max
    );
    rapax::say!(
        "  replication  us: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.0}",
        r.p50,
        r.p99,
        r.p999,
        r.max
    );
    rapax::say!(
        "  fabric floor us: p50 {:.2}  p99 {:.2}   (e2e p50 = {:.1} x floor p50)",
        f.p50,
        f.p99,
        e2e.p50 / f.p50.max(1e-9)
    );
    match sample.lock().expect("lock").take() {
        Some(Ok(s)) => rapax::say!(
            "  fail-over: node {} killed, node {} leads; detect {:.0} us, handover {:.0} us, kill to first commit {:.0} us",
            s.victim,
            s.new_leader,
            s.detect_ns as f64 / 1e3,
            s.handover_ns as f64 / 1e3,
            s.failover_ns as f64 / 1e3
        ),
        Some(Err(e)) => return Err(format!("fail-over: {e}")),
        None => rapax::say!("  fail-over: not run"),
    }
    if let Some(parent) = plot.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    write_plot(
        plot,
        &[
            ("end-to-end", &load.e2e),
            ("replication (leader)", &repl),
            ("fabric floor", &floor),
        ],
        "rapax demo: shm, 3 replicas, 64 B, 1 client, leader killed half-way",
    )
    .map_err(|e| e.to_string())?;
    rapax::say!("demo: plot written to {}", plot.display());
    drop(session);
    rapax::say!("demo: cluster stopped");
    Ok(())
}
