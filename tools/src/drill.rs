//! `rapax bench`, `rapax failover` and `rapax demo`: client load against a local cluster,
//! latency percentiles against the fabric floor of the same run, and fail-over drills with a
//! linearizability check of the client history.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use rapax_dataplane::client::{Client, ClientFailure, ClientOptions};
use rapax_dataplane::daemon::monotonic_ns;
use rapax_dataplane::profile::{FabricKind, Profile};
use rapax_dataplane::protocol::ballot::Ballot;
use rapax_dataplane::protocol::kv::{Command, KvOp, KvReply};
use rapax_dataplane::protocol::layout::{Batch, Entry, EntryKind};
use rapax_dataplane::protocol::NodeId;

use crate::cluster::{is_ours, signal, ClusterError, LocalCluster};
use crate::floor;
use crate::lincheck::{check_kv_history, HistoryOp};
use crate::report::{progress_bar, write_plot, BenchReport, FailoverReport, LatencyRecorder};

/// Errors of the drills.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("client: {0}")]
    Client(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("fail-over {kill} of {kills}: no new leader committed within {limit:?} after the leader (node {victim}) was {how}")]
    NoFailover {
        kill: usize,
        kills: usize,
        victim: NodeId,
        how: &'static str,
        limit: Duration,
    },
}

/// A cluster the drill started (stopped at the end) or attached to (left running).
pub struct Session {
    pub cluster: LocalCluster,
    started: bool,
}

/// Clusters this process started and has not stopped yet: stopped on SIGINT, SIGTERM or
/// SIGHUP (see [`stop_started_clusters_on_signal`]).
static STARTED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Makes an interrupted or terminated `rapax` stop the clusters it started (a benchmark ended
/// by Ctrl-C or `timeout` must not leave data planes spinning on the cores). Call first thing in
/// `main`, before any thread starts: the signals are blocked in every thread and taken by one
/// that stops the clusters, then exits with 128 + the signal's number. Daemons started later get
/// the default signal mask back (the standard library resets it in a child).
pub fn stop_started_clusters_on_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                let dirs = STARTED.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for d in dirs {
                    let n = crate::cluster::down(&d);
                    eprintln!(
                        "rapax: {sig}: stopped the {n} processes of the cluster in {}",
                        d.display()
                    );
                }
                std::process::exit(128 + sig as i32);
            }
        });
}

impl Session {
    /// Attaches to the cluster running in `dir`, or starts one there with `profile`.
    pub fn start_or_attach(
        profile: &Profile,
        replicas: usize,
        dir: &Path,
    ) -> Result<Session, DrillError> {
        if let Ok(c) = LocalCluster::open(dir) {
            if c.procs().iter().any(|p| is_ours(p.pid, dir)) {
                return Ok(Session {
                    cluster: c,
                    started: false,
                });
            }
        }
        STARTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.to_path_buf());
        let cluster = LocalCluster::up(profile, replicas, dir)?;
        Ok(Session {
            cluster,
            started: true,
        })
    }

    /// Waits for a leader and for a first command to be answered.
    pub fn ready(&self) -> Result<NodeId, DrillError> {
        let leader = self.cluster.wait_leader(Duration::from_secs(20))?;
        let mut c = client(&self.cluster.dir.dir)?;
        c.execute(KvOp::Put {
            key: b"rapax-ready".to_vec(),
            value: b"1".to_vec(),
        })
        .map_err(|e| DrillError::Client(e.to_string()))?;
        Ok(leader)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.started {
            self.cluster.down();
            STARTED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|d| d != &self.cluster.dir.dir);
        }
    }
}

fn client(dir: &Path) -> Result<Client, DrillError> {
    Client::connect(dir, ClientOptions::default()).map_err(|e| DrillError::Client(e.to_string()))
}

/// Bytes the leader writes to a follower for one command of the benchmark (a put of
/// `value_bytes` under a key of the benchmark's form, alone in its entry): the entry's header
/// line and a batch of one command.
pub fn bench_entry_bytes(value_bytes: usize) -> usize {
    let mut command = Vec::new();
    Command {
        client: u64::MAX,
        seq: u64::MAX,
        op: KvOp::Put {
            key: b"bench-0-00".to_vec(),
            value: vec![0; value_bytes],
        },
    }
    .encode(&mut command);
    let mut payload = Vec::new();
    Batch::encode([command.as_slice()], &mut payload);
    Entry {
        ballot: Ballot::ZERO,
        slot: 1,
        commit_hint: 0,
        kind: EntryKind::Batch,
        payload,
    }
    .wire_len()
}

/// The fabric floor of this run: the round trip of one write of `bytes` on the fabric.
pub fn measure_floor(profile: &Profile, samples: usize, bytes: usize) -> LatencyRecorder {
    match profile.fabric.kind {
        FabricKind::Udp => floor::udp_floor(samples, bytes).unwrap_or_default(),
        FabricKind::Dpdk => floor::dpdk_floor(samples, bytes.clamp(8, 1500)).unwrap_or_default(),
        FabricKind::Rdma => floor::rdma_floor(profile, samples, bytes).unwrap_or_default(),
        _ => floor::shm_floor_bytes(samples, None, bytes),
    }
}

/// What one load run measured.
pub struct LoadResult {
    pub e2e: LatencyRecorder,
    pub ops: u64,
    pub elapsed: Duration,
    pub failures: u64,
}

/// Runs `ops` puts of `value_bytes` from `clients` closed-loop clients; `at_half` runs once
/// when half the operations are done (the demo kills the leader there).
pub fn run_load(
    dir: &Path,
    clients: usize,
    ops: u64,
    value_bytes: usize,
    message: &str,
    at_half: Option<Box<dyn FnOnce() + Send>>,
) -> Result<LoadResult, DrillError> {
    let mut handles = Vec::new();
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(ops, message);
    let at_half = Arc::new(Mutex::new(at_half));
    let started = Instant::now();
    let per = ops / clients as u64;
    let extra = ops % clients as u64;
    for k in 0..clients {
        let mut c = client(dir)?;
        let n = per + u64::from((k as u64) < extra);
        let done = Arc::clone(&done);
        let bar = bar.clone();
        let at_half = Arc::clone(&at_half);
        let core = client_core(dir, k);
        handles.push(std::thread::spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
            let mut rec = LatencyRecorder::new();
            let mut failures = 0;
            let value = vec![b'v'; value_bytes];
            for i in 0..n {
                let op = KvOp::Put {
                    key: format!("bench-{k}-{}", i % 64).into_bytes(),
                    value: value.clone(),
                };
                let t = Instant::now();
                match c.execute(op) {
                    Ok(_) => rec.record_duration(t.elapsed()),
                    Err(_) => failures += 1,
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_multiple_of(256) {
                    bar.set_position(d);
                }
                if d == ops / 2 {
                    if let Some(f) = at_half.lock().expect("lock").take() {
                        f();
                    }
                }
            }
            (rec, failures)
        }));
    }
    let mut e2e = LatencyRecorder::new();
    let mut failures = 0;
    for h in handles {
        let (rec, f) = h.join().expect("client thread");
        e2e.merge(&rec);
        failures += f;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(LoadResult {
        e2e,
        ops,
        elapsed,
        failures,
    })
}

/// The core for client `k`: the cores the profile does not give the leader, in turn (`None`
/// when the profile pins no leader, or leaves no other core).
fn client_core(dir: &Path, k: usize) -> Option<usize> {
    let profile = Profile::load(rapax_dataplane::daemon::ClusterDir::new(dir).profile()).ok()?;
    let leader = profile.agents.leader.core?;
    let others: Vec<usize> = core_affinity::get_core_ids()?
        .into_iter()
        .map(|c| c.id)
        .filter(|&c| c != leader)
        .collect();
    (!others.is_empty()).then(|| others[k % others.len()])
}

/// Replication latency samples of every node since the last request, merged.
pub fn replication(cluster: &LocalCluster) -> LatencyRecorder {
    let mut r = LatencyRecorder::new();
    for &n in &cluster.cluster.ring {
        for (ns, count) in cluster.replication_samples(n) {
            r.record_ns_count(ns, count);
        }
    }
    r
}

/// Options of `rapax bench`.
pub struct BenchOptions {
    pub profile: Profile,
    pub replicas: usize,
    pub ops: u64,
    pub value_bytes: usize,
    pub clients: usize,
    pub dir: PathBuf,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    /// Also measure the leader's data-mesh round trip during the run's second half.
    pub loaded_floor: bool,
}

/// Round trips in `rapax bench`'s floor (shm, udp, rdma): half before the run, half after.
pub const FLOOR_SAMPLES: usize = 20_000;

/// Says so when daemons of other clusters run on this host: their agents share the cores
/// this run measures on (a cluster left up by `rapax up`, say), and its figures include them.
fn warn_of_other_clusters(tool: &str, dir: &Path) {
    let others = crate::cluster::daemons_elsewhere(dir);
    if others.is_empty() {
        return;
    }
    let dirs = crate::cluster::cluster_dirs(&others);
    eprintln!(
        "{tool}: warning: {} rapax daemons of other clusters are running ({}); they share the \
         cores this run measures on, so its figures include their load (`rapax down --dir DIR` \
         stops a cluster)",
        others.len(),
        dirs.join(", ")
    );
}

/// `rapax bench`: the report, and the recorders for a plot.
pub fn bench(o: &BenchOptions) -> Result<BenchReport, DrillError> {
    warn_of_other_clusters("bench", &o.dir);
    let warm = (o.ops / 10).clamp(200, 20_000);
    // On rdma the floor writes what replication writes to a follower for one command (the
    // entry's header line and a batch of one put), not the bare value: the same sizes.
    let floor_bytes = match o.profile.fabric.kind {
        FabricKind::Rdma => bench_entry_bytes(o.value_bytes),
        _ => o.value_bytes.max(64),
    };
    // Half of the floor's samples now, on the cores the cluster will use before its agents
    // occupy them, half once the run is over and the cluster this bench started is stopped: a
    // machine whose speed drifts over the seconds of a run (a VM under TCG does) moves the
    // floor with the run. (A cluster already running in --dir is attached to, and both halves
    // then share the cores with it.) On dpdk this is the PMD's bare round trip, printed beside
    // the data mesh's.
    let floor_before = measure_floor(&o.profile, FLOOR_SAMPLES / 2, floor_bytes);
    let before = floor_before.summary2();
    if o.profile.fabric.kind == FabricKind::Rdma {
        let bare = measure_floor(&o.profile, 5_000, o.value_bytes.max(64)).summary2();
        eprintln!(
            "bench: rdma floor: WRITE ping-pong of {floor_bytes} B (one command's log entry); of the bare {} B value: p50 {:.2} us, p99 {:.2} us",
            o.value_bytes.max(64),
            bare.p50,
            bare.p99
        );
        // What a poster waits for when it counts a write (replication counts completions; the
        // floor's ping-pong watches the peer's memory, as ib_write_lat does).
        if let Ok(done) = floor::rdma_completion(&o.profile, 5_000, floor_bytes) {
            let d = done.summary2();
            eprintln!(
                "bench: rdma WRITE to its completion (one signaled write at a time, same device): p50 {:.2} us, p99 {:.2} us",
                d.p50, d.p99
            );
        }
    }
    let session = Session::start_or_attach(&o.profile, o.replicas, &o.dir)?;
    let leader = session.ready()?;
    eprintln!(
        "bench: {} fabric, {} replicas, leader node {leader}, {} clients, {} ops of {} B values",
        o.profile.fabric.kind.as_str(),
        session.cluster.cluster.ring.len(),
        o.clients,
        o.ops,
        o.value_bytes
    );
    run_load(&o.dir, o.clients, warm, o.value_bytes, "warm-up", None)?;
    // On dpdk the floor is the data mesh's own frame round trip, measured by the leader on the
    // ports, lcores and idle strategies replication uses; the PMD's bare round trip (two ports
    // of one thread, no scheduling in between) is printed beside it.
    let mut floor = if o.profile.fabric.kind == FabricKind::Dpdk {
        // The leader now (the first one may have given way since the cluster started).
        let leader = session.ready()?;
        let mut mesh = LatencyRecorder::new();
        for (ns, count) in session.cluster.data_mesh_floor(leader) {
            mesh.record_ns_count(ns, count);
        }
        eprintln!(
            "bench: dpdk PMD round trip without scheduling (ring port pair, one thread): p50 {:.2} us, p99 {:.2} us",
            before.p50, before.p99
        );
        if mesh.is_empty() {
            return Err(DrillError::Client(
                "the leader measured no data-mesh round trip (no active follower?)".into(),
            ));
        }
        mesh
    } else {
        floor_before
    };
    let _ = replication(&session.cluster); // reset
    let rss_before = session.cluster.rss_kib();
    let commit_before = session.cluster.counters(leader).map_or(0, |c| c.commit);
    // --loaded-floor: halfway through the run, the leader is asked for its data-mesh round
    // trip, which it measures while the second half goes on.
    // Why the fabric's loaded round trip is not measured on this fabric (`None`: it is).
    let no_loaded_floor = match o.profile.fabric.kind {
        FabricKind::Udp | FabricKind::Rdma => None,
        FabricKind::Dpdk => Some("the floor is the data mesh's round trip already"),
        _ => Some("a READ there is a load from the peer's mapped memory, no round trip"),
    };
    let asked = Arc::new(Mutex::new(None));
    let at_half: Option<Box<dyn FnOnce() + Send>> = if o.loaded_floor && no_loaded_floor.is_none() {
        let (dir, asked) = (o.dir.clone(), Arc::clone(&asked));
        Some(Box::new(move || {
            // Whichever node leads now (it may not be the one that led at the start).
            let cluster = LocalCluster::open(&dir).ok();
            *asked.lock().expect("lock") = cluster.and_then(|c| {
                let l = c.leader()?;
                Some((l, c.ask_data_mesh_floor(l)?))
            });
        }))
    } else {
        None
    };
    let load = run_load(&o.dir, o.clients, o.ops, o.value_bytes, "bench", at_half)?;
    let repl = replication(&session.cluster);
    let asked = asked.lock().expect("lock").take();
    if let Some((asked_leader, want)) = asked {
        let mut loaded = LatencyRecorder::new();
        for (ns, count) in session.cluster.data_mesh_floor_answer(asked_leader, want) {
            loaded.record_ns_count(ns, count);
        }
        if loaded.is_empty() {
            eprintln!("bench: --loaded-floor: the leader measured no data-mesh round trip (it no longer leads, or has no active follower)");
        } else {
            let (l, r) = (loaded.summary2(), repl.summary());
            eprintln!(
                "bench: the fabric under the run's load (--loaded-floor): the leader's READ round trip on the data mesh during the run's second half ({} round trips): p50 {:.2} us, p99 {:.2} us; replication p50 = {:.1} x that",
                loaded.len(),
                l.p50,
                l.p99,
                r.p50 / l.p50.max(1e-9)
            );
        }
    } else if o.loaded_floor {
        match no_loaded_floor {
            None => eprintln!(
                "bench: --loaded-floor: no node led at the run's half-way point: not measured"
            ),
            Some(why) => eprintln!(
                "bench: --loaded-floor: not measured on {}: {why}",
                o.profile.fabric.kind.as_str()
            ),
        }
    }
    // A long run wraps the log many times: the daemons' memory must not grow with it.
    let rss_after = session.cluster.rss_kib();
    let rss: Vec<String> = rss_after
        .iter()
        .map(|(n, kind, after)| {
            let before = rss_before
                .iter()
                .find(|(m, k, _)| m == n && k == kind)
                .map_or("-".to_string(), |b| format!("{:.1}", b.2 as f64 / 1024.0));
            format!("node {n} {kind} {before} -> {:.1}", *after as f64 / 1024.0)
        })
        .collect();
    eprintln!(
        "bench: resident memory (MiB) before and after the run: {}",
        rss.join(", ")
    );
    if let Some(c) = session
        .ready()
        .ok()
        .and_then(|l| session.cluster.counters(l))
    {
        let cap = o.profile.log.capacity_entries;
        eprintln!(
            "bench: the run took slots {commit_before}..{} of a {cap}-entry log ({:.1} laps)",
            c.commit,
            c.commit.saturating_sub(commit_before) as f64 / cap as f64
        );
    }
    let replicas = session.cluster.cluster.ring.len();
    if o.profile.fabric.kind != FabricKind::Dpdk {
        drop(session);
        let after = measure_floor(&o.profile, FLOOR_SAMPLES / 2, floor_bytes);
        eprintln!(
            "bench: floor before the run p50 {:.2} us, after it p50 {:.2} us (merged below)",
            before.p50,
            after.summary2().p50
        );
        floor.merge(&after);
    }
    let report = BenchReport {
        fabric: o.profile.fabric.kind.as_str().to_string(),
        replicas,
        ops: o.ops,
        value_bytes: o.value_bytes,
        clients: o.clients,
        e2e_us: load.e2e.summary(),
        replication_us: repl.summary(),
        floor_us: floor.summary2(),
        ops_per_s: load.ops as f64 / load.elapsed.as_secs_f64(),
    };
    if let Some(p) = &o.json {
        report.write_json(p).map_err(|source| DrillError::Io {
            what: p.display().to_string(),
            source,
        })?;
    }
    if let Some(p) = &o.plot {
        write_plot(
            p,
            &[
                ("end-to-end", &load.e2e),
                ("replication (leader)", &repl),
                ("fabric floor", &floor),
            ],
            &format!(
                "rapax bench: {} fabric, {} replicas, {} B, {} clients",
                report.fabric, report.replicas, o.value_bytes, o.clients
            ),
        )
        .map_err(|source| DrillError::Io {
            what: p.display().to_string(),
            source,
        })?;
    }
    if load.failures > 0 {
        eprintln!("bench: {} operations failed", load.failures);
    }
    Ok(report)
}

/// How the leader is taken out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    Kill,
    Pause,
}

/// One fail-over as measured from the counters of the new leader.
#[derive(Clone, Copy, Debug)]
pub struct FailoverSample {
    pub victim: NodeId,
    pub new_leader: NodeId,
    pub detect_ns: u64,
    pub handover_ns: u64,
    pub failover_ns: u64,
    /// Pause mode: the paused victim was fenced (killed by a revoke it held up, on shm) and
    /// came back restarted instead of resumed.
    pub fenced: bool,
}

/// Takes the current leader out (kill -9 or SIGSTOP of its data plane), waits for a new leader
/// to commit, measures, then brings the victim back (restart as a follower, or SIGCONT).
pub fn fail_leader(
    cluster: &LocalCluster,
    mode: FailMode,
    kill: usize,
    kills: usize,
) -> Result<FailoverSample, DrillError> {
    let dir = &cluster.dir.dir;
    let victim = cluster.wait_leader(Duration::from_secs(20))?;
    let pid = cluster
        .pid(victim, "dataplane")
        .ok_or(ClusterError::NoLeader(Duration::ZERO))?;
    // The checks that the pid is this cluster's data plane read /proc (a few system calls, each
    // a point where this thread can be preempted for a scheduler slice): made before the clock
    // starts, so the kill follows the clock read at once.
    if !is_ours(pid, dir) {
        return Err(ClusterError::NoLeader(Duration::ZERO).into());
    }
    let (sig, how) = match mode {
        FailMode::Kill => (Signal::SIGKILL, "killed"),
        FailMode::Pause => (Signal::SIGSTOP, "paused"),
    };
    let t0 = monotonic_ns();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    let limit = Duration::from_secs(20);
    let deadline = Instant::now() + limit;
    let mut sample = loop {
        let found = cluster.cluster.ring.iter().copied().find_map(|n| {
            if n == victim {
                return None;
            }
            let c = cluster.counters(n)?;
            (c.role == 4 && c.first_commit_at_ns > t0 && c.leader_at_ns > t0).then_some(c)
        });
        if let Some(c) = found {
            // Detection: the first survivor whose control plane declared the victim failed
            // (the new leader itself may never have followed the victim: a node earlier in the
            // ring that had not taken leadership back). None at all (every survivor learned
            // from the new view instead): detection is counted up to leading.
            let lost = cluster
                .cluster
                .ring
                .iter()
                .filter(|&&n| n != victim)
                .filter_map(|&n| cluster.counters(n))
                .map(|s| s.leader_lost_at_ns)
                .filter(|&at| at > t0 && at <= c.leader_at_ns)
                .min()
                .unwrap_or(c.leader_at_ns);
            if std::env::var_os("RAPAX_TRACE").is_some() {
                eprintln!(
                    "failover: node {} lost leader {victim} at +{} us, stood at +{} us, leads at +{} us, first commit at +{} us",
                    c.node,
                    (c.leader_lost_at_ns as i64 - t0 as i64) / 1000,
                    (c.candidate_at_ns as i64 - t0 as i64) / 1000,
                    (c.leader_at_ns as i64 - t0 as i64) / 1000,
                    (c.first_commit_at_ns as i64 - t0 as i64) / 1000,
                );
            }
            break FailoverSample {
                victim,
                new_leader: c.node,
                detect_ns: lost - t0,
                handover_ns: c.leader_at_ns.saturating_sub(lost),
                failover_ns: c.first_commit_at_ns - t0,
                fenced: false,
            };
        }
        if Instant::now() > deadline {
            return Err(DrillError::NoFailover {
                kill,
                kills,
                victim,
                how,
                limit,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    match mode {
        FailMode::Kill => {
            // Wait until it is gone, then restart it: it rejoins as a follower.
            let gone = Instant::now() + Duration::from_secs(5);
            while is_ours(pid, dir) && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(1));
            }
            cluster.restart(victim, "dataplane")?;
        }
        FailMode::Pause => {
            signal(pid, dir, Signal::SIGCONT);
        }
    }
    let mut fenced = false;
    // Let the victim rejoin: its data plane runs and a leader counts it alive. (Leadership
    // follows ring order, so a restarted victim earlier in the ring takes it back: a planned
    // view change, not measured.)
    let back = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = cluster.leader().is_some_and(|l| {
            cluster
                .counters(l)
                .is_some_and(|c| c.alive_mask & (1 << victim) != 0 && c.role == 4)
        }) && cluster
            .counters(victim)
            .is_some_and(|c| c.role == 1 || c.role == 4);
        if ok || Instant::now() > back {
            break;
        }
        // A victim paused in the middle of a write into a follower's shm log is fenced (killed)
        // by that follower's revoke: it comes back as a restarted follower.
        if mode == FailMode::Pause && !fenced && !is_ours(pid, dir) {
            fenced = true;
            cluster.restart(victim, "dataplane")?;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // A victim that lost its memory counts again only once a leader has caught it up.
    cluster.wait_caught_up(victim, Duration::from_secs(20))?;
    sample.fenced = fenced;
    Ok(sample)
}

/// A history-recording client load that runs until stopped: puts of unique values, gets and
/// compare-and-swaps on a few keys, so the checker has something to refute.
pub struct HistoryLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<HistoryOp>, u64)>>,
    pub acked: Arc<AtomicU64>,
}

impl HistoryLoad {
    pub fn start(dir: &Path, clients: usize) -> Result<HistoryLoad, DrillError> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for k in 0..clients {
            let mut c = Client::connect(
                dir,
                ClientOptions {
                    attempt_timeout: Duration::from_millis(5),
                    command_timeout: Duration::from_secs(20),
                },
            )
            .map_err(|e| DrillError::Client(e.to_string()))?;
            let stop = Arc::clone(&stop);
            let acked = Arc::clone(&acked);
            threads.push(std::thread::spawn(move || {
                let mut history = Vec::new();
                let mut failures = 0;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("h{}", i % 5).into_bytes();
                    let op = match i % 4 {
                        0 => KvOp::Get { key },
                        1 | 2 => KvOp::Put {
                            key,
                            value: format!("{k}:{i}").into_bytes(),
                        },
                        _ => KvOp::Cas {
                            key,
                            expected: Some(format!("{k}:{}", i - 1).into_bytes()),
                            new: format!("{k}:{i}").into_bytes(),
                        },
                    };
                    let invoke = monotonic_ns();
                    let result = c.execute(op.clone());
                    let response = match result {
                        Ok(r) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            Some((monotonic_ns(), r))
                        }
                        Err(ClientFailure::Timeout { .. }) => {
                            failures += 1;
                            None
                        }
                        Err(e) => {
                            failures += 1;
                            Some((monotonic_ns(), KvReply::Rejected(e.to_string())))
                        }
                    };
                    let timed_out = response.is_none();
                    history.push(HistoryOp {
                        client: c.id(),
                        op,
                        invoke,
                        response,
                    });
                    if timed_out {
                        // A client with a command of unknown outcome stops: its next command
                        // could not be ordered after it.
                        break;
                    }
                    // Steady, not flat out: the drill is about fail-over, not throughput, and
                    // the linearizability check grows with the history.
                    std::thread::sleep(Duration::from_millis(1));
                }
                (history, failures)
            }));
        }
        Ok(HistoryLoad {
            stop,
            threads,
            acked,
        })
    }

    /// Stops the clients and returns the history and how many commands failed.
    pub fn finish(self) -> (Vec<HistoryOp>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut failures = 0;
        for t in self.threads {
            let (h, f) = t.join().expect("client thread");
            all.extend(h);
            failures += f;
        }
        (all, failures)
    }
}

/// Options of `rapax failover`.
pub struct FailoverOptions {
    pub profile: Profile,
    pub replicas: usize,
    pub kills: usize,
    pub mode: FailMode,
    pub dir: PathBuf,
    pub clients: usize,
    pub json: Option<PathBuf>,
}

/// `rapax failover`.
pub fn failover(o: &FailoverOptions) -> Result<(FailoverReport, Vec<FailoverSample>), DrillError> {
    warn_of_other_clusters("failover", &o.dir);
    let session = Session::start_or_attach(&o.profile, o.replicas, &o.dir)?;
    session.ready()?;
    let load = HistoryLoad::start(&o.dir, o.clients)?;
    let bar = progress_bar(o.kills as u64, "fail-overs");
    let mut samples = Vec::new();
    let mut err = None;
    for k in 0..o.kills {
        // Steady load before each fail-over.
        let before = load.acked.load(Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(5);
        while load.acked.load(Ordering::Relaxed) < before + 200 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        match fail_leader(&session.cluster, o.mode, k + 1, o.kills) {
            Ok(s) => samples.push(s),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let fenced = samples.iter().filter(|s| s.fenced).count();
    if fenced > 0 {
        println!(
            "failover: {fenced} of {} paused leaders were fenced (killed while stopped with a \
             write in flight, by the revoke they held up) and came back restarted",
            samples.len()
        );
    }
    let (history, _failures) = load.finish();
    let verdict = check_kv_history(&history);
    if let Some(e) = err {
        return Err(e);
    }
    let mut detect = LatencyRecorder::new();
    let mut handover = LatencyRecorder::new();
    let mut total = LatencyRecorder::new();
    for s in &samples {
        detect.record_ns(s.detect_ns);
        handover.record_ns(s.handover_ns);
        total.record_ns(s.failover_ns);
    }
    let report = FailoverReport {
        fabric: o.profile.fabric.kind.as_str().to_string(),
        replicas: session.cluster.cluster.ring.len(),
        mode: match o.mode {
            FailMode::Kill => "kill".into(),
            FailMode::Pause => "pause".into(),
        },
        kills: samples.len(),
        detect_us: detect.summary3(),
        handover_us: handover.summary3(),
        failover_us: total.summary3(),
        linearizable: verdict.is_linearizable(),
    };
    if !verdict.is_linearizable() {
        eprintln!(
            "failover: history of {} operations: {verdict:?}",
            history.len()
        );
    } else {
        eprintln!(
            "failover: history of {} operations checked: linearizable",
            history.len()
        );
    }
    if let Some(p) = &o.json {
        report.write_json(p).map_err(|source| DrillError::Io {
            what: p.display().to_string(),
            source,
        })?;
    }
    Ok((report, samples))
}

/// `rapax transfer`: what it takes to catch up a follower by state transfer.
pub struct TransferOptions {
    pub profile: Profile,
    pub replicas: usize,
    /// Megabytes of state to load before the follower is taken out.
    pub state_mb: u64,
    pub dir: PathBuf,
}

/// What `rapax transfer` measured.
#[derive(Clone, Debug)]
pub struct TransferReport {
    pub follower: NodeId,
    /// Keys loaded and the bytes of KV state they make (keys, values and framing).
    pub keys: u64,
    pub state_bytes: u64,
    /// From the follower's restart to its snapshot installed, and to it caught up with the
    /// leader's commit index.
    pub installed: Duration,
    pub caught_up: Duration,
}

impl TransferReport {
    pub fn human(&self) -> String {
        let mb = self.state_bytes as f64 / 1e6;
        format!(
            "transfer: node {} caught up by snapshot: {:.1} MB of state ({} keys)\n  \
             restart to snapshot installed  {:8.1} ms  ({:.0} MB/s)\n  \
             restart to caught up           {:8.1} ms",
            self.follower,
            mb,
            self.keys,
            self.installed.as_secs_f64() * 1e3,
            mb / self.installed.as_secs_f64().max(1e-9),
            self.caught_up.as_secs_f64() * 1e3,
        )
    }
}

/// Loads `state_mb` of KV state, kills a follower's data plane, runs the log more than half a
/// lap past it (so the log it would need is being reused), restarts it and times its catch-up
/// by snapshot, streamed over the fabric while the load goes on.
pub fn transfer(o: &TransferOptions) -> Result<TransferReport, DrillError> {
    let session = Session::start_or_attach(&o.profile, o.replicas, &o.dir)?;
    session.ready()?;
    let cluster = &session.cluster;
    let mut c = client(&o.dir)?;
    // The largest value a command may carry (a put's key and framing take the rest).
    let value_bytes = o
        .profile
        .replication
        .max_command_bytes
        .saturating_sub(64)
        .max(1);
    let target = o.state_mb * 1_000_000;
    let per_key = (8 + 16 + value_bytes) as u64;
    let keys = target.div_ceil(per_key);
    let bar = progress_bar(keys, "loading state");
    let value = vec![b's'; value_bytes];
    for i in 0..keys {
        let op = KvOp::Put {
            key: format!("state-{i:010}").into_bytes(),
            value: value.clone(),
        };
        match c.execute(op) {
            Ok(KvReply::Stored) => {}
            Ok(other) => return Err(DrillError::Client(format!("loading state: {other:?}"))),
            Err(e) => return Err(DrillError::Client(format!("loading state: {e}"))),
        }
        if i % 1024 == 0 {
            bar.set_position(i);
        }
    }
    bar.finish_and_clear();
    let leader = session.ready()?;
    let follower = *cluster
        .cluster
        .ring
        .iter()
        .find(|&&n| n != leader)
        .expect("a follower");
    let pid = cluster
        .pid(follower, "dataplane")
        .ok_or_else(|| DrillError::Client(format!("no data plane of node {follower}")))?;
    signal(pid, &o.dir, Signal::SIGKILL);
    while is_ours(pid, &o.dir) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // More than half a log past it: it is behind the reusable point.
    let laps = o.profile.log.capacity_entries / 2 + 4 * o.profile.replication.window_slots;
    run_load(&o.dir, 1, laps, 64, "moving the log on", None)?;
    // Restart it under load: the transfer streams while the cluster keeps committing.
    let load = HistoryLoad::start(&o.dir, 1)?;
    let started = Instant::now();
    cluster.restart(follower, "dataplane")?;
    let deadline = started + Duration::from_secs(120);
    let installed = loop {
        if cluster
            .counters(follower)
            .is_some_and(|c| c.snapshots_installed > 0)
        {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            return Err(DrillError::Client(format!(
                "node {follower} installed no snapshot in 120 s\n{}",
                cluster.status()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    cluster.wait_caught_up(follower, deadline.saturating_duration_since(Instant::now()))?;
    let caught_up = started.elapsed();
    let _ = load.finish();
    Ok(TransferReport {
        follower,
        keys,
        state_bytes: keys * per_key,
        installed,
        caught_up,
    })
}

/// Options of `rapax repair`.
pub struct RepairOptions {
    pub profile: Profile,
    pub replicas: usize,
    pub spares: usize,
    /// Puts by the bulk client over the whole run (the acceptor dies at 30 % of them).
    pub ops: u64,
    pub value_bytes: usize,
    pub dir: PathBuf,
}

/// What `rapax repair` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RepairReport {
    pub fabric: String,
    pub replicas: usize,
    pub spares: usize,
    pub ops: u64,
    pub victim: NodeId,
    pub spare: NodeId,
    pub replace_after_ms: u64,
    /// kill -9 of the victim's processes to the leader applying the ring without it.
    pub repaired_ms: f64,
    /// Restart of the victim to it following as a caught-up spare.
    pub rejoined_ms: f64,
    pub ring_before: Vec<NodeId>,
    pub ring_after: Vec<NodeId>,
    pub epoch_after: u64,
    /// Laps of the log over the whole run.
    pub laps: f64,
    pub ops_per_s: f64,
    pub history_ops: usize,
    pub linearizable: bool,
    /// Resident memory (KiB) of every process: (node, kind, after start, after 10 % of the
    /// ops (the log and the peers' regions touched: a lap or more), at the end).
    pub rss_kib: Vec<(NodeId, String, u64, u64, u64)>,
}

/// Waits (up to `limit`) for `f` to hold, polling every few milliseconds.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<(), DrillError> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return Err(DrillError::Client(format!("{what} within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `rapax repair`: ring repair under load. A cluster with spares runs `ops` puts from a bulk
/// client; at 30 % of them an acceptor (not the leader) is killed with both its processes; the
/// leader's ring repair puts a spare in its place after `replace_after_ms`; the victim is
/// restarted and must rejoin as a caught-up spare. A history load on its own keys runs from
/// before the kill to after the rejoin and is checked for linearizability.
pub fn repair(o: &RepairOptions) -> Result<RepairReport, DrillError> {
    let after = o.profile.election.replace_after_ms;
    if after == 0 {
        return Err(DrillError::Client(
            "the profile's election.replace_after_ms is 0: ring repair is off".into(),
        ));
    }
    if o.spares == 0 {
        return Err(DrillError::Client(
            "ring repair needs --spares 1 or more".into(),
        ));
    }
    let cluster = LocalCluster::up_spares(&o.profile, o.replicas, o.spares, &o.dir)?;
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(o.dir.clone());
    let session = Session {
        cluster,
        started: true,
    };
    let c = &session.cluster;
    c.wait_running(Duration::from_secs(30))?;
    c.wait_leader(Duration::from_secs(30))?;
    let rss_start = c.rss_kib();
    // The bulk load: one closed-loop client, puts over a thousand keys.
    let done = Arc::new(AtomicU64::new(0));
    let bulk = {
        let mut client = Client::connect(&o.dir, ClientOptions::default())
            .map_err(|e| DrillError::Client(e.to_string()))?;
        let done = Arc::clone(&done);
        let (ops, bytes) = (o.ops, o.value_bytes);
        std::thread::spawn(move || -> Result<(), String> {
            let value = vec![b'v'; bytes];
            for i in 0..ops {
                let op = KvOp::Put {
                    key: format!("b{}", i % 1000).into_bytes(),
                    value: value.clone(),
                };
                client
                    .execute(op)
                    .map_err(|e| format!("bulk put {i}: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let bar = progress_bar(o.ops, "ops");
    let progress = |bar: &indicatif::ProgressBar| bar.set_position(done.load(Ordering::Relaxed));
    wait_until(Duration::from_secs(600), "10 % of the bulk load", || {
        progress(&bar);
        done.load(Ordering::Relaxed) >= o.ops / 10
    })?;
    let rss_warm = c.rss_kib();
    wait_until(Duration::from_secs(600), "30 % of the bulk load", || {
        progress(&bar);
        done.load(Ordering::Relaxed) >= o.ops * 3 / 10
    })?;
    let history = HistoryLoad::start(&o.dir, 2)?;
    std::thread::sleep(Duration::from_millis(50));
    let mut before = None;
    wait_until(Duration::from_secs(30), "a leader before the kill", || {
        before = c.leader().zip(c.configuration());
        before.is_some()
    })?;
    let (leader, (epoch_before, ring_before)) = before.expect("waited for it");
    let victim = *ring_before
        .iter()
        .find(|&&n| n != leader)
        .expect("a ring of three has a follower");
    let killed = Instant::now();
    for kind in ["dataplane", "control"] {
        if let Some(pid) = c.pid(victim, kind) {
            signal(pid, &o.dir, Signal::SIGKILL);
        }
    }
    let mut ring_after = Vec::new();
    let mut epoch_after = 0;
    wait_until(
        Duration::from_millis(after + 30_000),
        "the leader's ring repair",
        || {
            progress(&bar);
            match c.configuration() {
                Some((e, r)) if e > epoch_before && !r.contains(&victim) => {
                    ring_after = r;
                    epoch_after = e;
                    true
                }
                _ => false,
            }
        },
    )?;
    let repaired = killed.elapsed();
    let spare = *ring_after
        .iter()
        .find(|n| !ring_before.contains(n))
        .expect("a spare joined");
    // The victim comes back: memory kept (its shm region survives), state from its log.
    let restarted = Instant::now();
    c.restart(victim, "dataplane")?;
    c.restart(victim, "control")?;
    wait_until(
        Duration::from_secs(60),
        "the victim following as a spare",
        || {
            progress(&bar);
            let Some(v) = c.counters(victim) else {
                return false;
            };
            let Some(l) = c.leader().and_then(|l| c.counters(l)) else {
                return false;
            };
            let ring = rapax_dataplane::protocol::membership::ring_from_word(v.ring, v.ring_len);
            v.heartbeat > 0
                && v.epoch == l.epoch
                && !ring.contains(&victim)
                && v.applied >= l.commit
        },
    )?;
    let rejoined = restarted.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let (mut ops, _) = history.finish();
    // A final read of every history key: a lost acknowledged write fails the check.
    let mut reader = Client::connect(&o.dir, ClientOptions::default())
        .map_err(|e| DrillError::Client(e.to_string()))?;
    for k in 0..5 {
        let op = KvOp::Get {
            key: format!("h{k}").into_bytes(),
        };
        let invoke = monotonic_ns();
        let r = reader
            .execute(op.clone())
            .map_err(|e| DrillError::Client(format!("final read: {e}")))?;
        ops.push(HistoryOp {
            client: reader.id(),
            op,
            invoke,
            response: Some((monotonic_ns(), r)),
        });
    }
    let linearizable = check_kv_history(&ops).is_linearizable();
    let bulk = bulk
        .join()
        .map_err(|_| DrillError::Client("bulk client panicked".into()))?;
    bar.finish_and_clear();
    bulk.map_err(DrillError::Client)?;
    let elapsed = started.elapsed().as_secs_f64();
    let commit = c
        .leader()
        .and_then(|l| c.counters(l))
        .map_or(0, |x| x.commit);
    let rss_end = c.rss_kib();
    let rss_kib = rss_start
        .iter()
        .map(|(n, k, a)| {
            let at = |v: &[(NodeId, String, u64)]| {
                v.iter()
                    .find(|(m, j, _)| m == n && j == k)
                    .map_or(0, |x| x.2)
            };
            (*n, k.clone(), *a, at(&rss_warm), at(&rss_end))
        })
        .collect();
    Ok(RepairReport {
        fabric: o.profile.fabric.kind.as_str().to_string(),
        replicas: o.replicas,
        spares: o.spares,
        ops: o.ops,
        victim,
        spare,
        replace_after_ms: after,
        repaired_ms: repaired.as_secs_f64() * 1e3,
        rejoined_ms: rejoined.as_secs_f64() * 1e3,
        ring_before,
        ring_after,
        epoch_after,
        laps: commit as f64 / o.profile.log.capacity_entries as f64,
        ops_per_s: o.ops as f64 / elapsed,
        history_ops: ops.len(),
        linearizable,
        rss_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rdma_floor_writes_a_whole_entry_of_one_command() {
        // The header line, the batch's count and length words, the command's client and
        // sequence, its key and value: more than the value alone, and growing with it.
        let small = bench_entry_bytes(64);
        assert!(small >= 64 + 64 + 8 + 16 + 10, "{small}");
        // tools/softroce.sh runs ib_write_lat at this size beside the floor.
        assert_eq!(small, 171);
        assert_eq!(bench_entry_bytes(164), small + 100);
        // What a leader writes for such a command, decoded back from a log slot's bytes.
        let geometry = rapax_dataplane::protocol::layout::LogGeometry::new(16, 1024).unwrap();
        let mut command = Vec::new();
        Command {
            client: 7,
            seq: 9,
            op: KvOp::Put {
                key: b"bench-3-41".to_vec(),
                value: vec![b'v'; 64],
            },
        }
        .encode(&mut command);
        let mut payload = Vec::new();
        Batch::encode([command.as_slice()], &mut payload);
        let mut out = Vec::new();
        Entry {
            ballot: Ballot(5),
            slot: 3,
            commit_hint: 2,
            kind: EntryKind::Batch,
            payload,
        }
        .encode(&geometry, &mut out);
        assert_eq!(out.len(), small);
    }
}
