//! One simulated cluster run: nodes on the `sim` fabric, clients, a fault schedule, and the checks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use rapax_dataplane::fabric::sim::{SimFabric, SimKnobs, SimStats};
use rapax_dataplane::fabric::{Completion, Op, Region};
use rapax_dataplane::protocol::election::ElectionConfig;
use rapax_dataplane::protocol::kv::{Command, KvLimits, KvOp, KvReply, KvStore};
use rapax_dataplane::protocol::layout::LogGeometry;
use rapax_dataplane::protocol::membership::{Change, Membership, ReconfigError};
use rapax_dataplane::protocol::node::{
    Bugs, ClientError, ClientReply, ClientRequest, Node, NodeConfig, Note, Output, RoleKind, Start,
};
use rapax_dataplane::protocol::quorum::faults_tolerated;
use rapax_dataplane::protocol::{Ballot, NodeId, MAX_NODES};

use super::oracle::{Oracle, Violation};
use crate::lincheck::{check_kv_history, HistoryOp, Verdict};

/// What one seed's run is asked to do.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub seed: u64,
    /// Fixed cluster size, or drawn from {3, 5, 7}.
    pub replicas: Option<usize>,
    pub ticks: u64,
    pub bugs: Bugs,
    /// Print every fault and leader change.
    pub trace: bool,
    /// Scripted faults instead of random ones.
    pub script: Option<Script>,
    /// Keep every node's notes in [`RunReport::timeline`].
    pub record: bool,
    /// Spares in the cluster, and configuration changes (replace, add, remove, reorder) asked
    /// of the leader during the faults.
    pub reconfig: bool,
    /// The leaders' ring repair (`replace_after_ticks`): `None` draws it in runs with
    /// reconfiguration (off, 150 or 300 ticks); scripted runs have it off unless set here.
    pub replace_after_ticks: Option<u64>,
}

impl RunSpec {
    /// A random-fault run of `seed`.
    pub fn seed(seed: u64) -> RunSpec {
        RunSpec {
            seed,
            replicas: None,
            ticks: 4000,
            bugs: Bugs::default(),
            trace: false,
            script: None,
            record: false,
            reconfig: false,
            replace_after_ticks: None,
        }
    }
}

/// Which node a fault hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Node(NodeId),
    /// The current leader (the leading node with the highest ballot), if any.
    Leader,
}

/// One fault, healed after `for_ticks`.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Kill the node's processes; they restart with the memory kept or lost.
    Crash {
        node: Target,
        memory_lost: bool,
        for_ticks: u64,
    },
    /// Stop the node (SIGSTOP); its memory stays reachable; it resumes where it was.
    Pause { node: Target, for_ticks: u64 },
    /// Cut the node off from every other node.
    Isolate { node: Target, for_ticks: u64 },
    /// Cut `side` off from the rest.
    Split { side: Vec<NodeId>, for_ticks: u64 },
    /// Lose this fraction of operations.
    Loss { prob: f64, for_ticks: u64 },
    /// Run the node's turns only every `every` ticks (a slow or overloaded host): its heartbeat
    /// slows, its reads and writes come late, nothing else breaks.
    Slow {
        node: Target,
        every: u64,
        for_ticks: u64,
    },
    /// Not a fault: ask the current leader for a configuration change (scripts only; the
    /// answer is kept in [`RunReport::reconfigs`]).
    Reconfigure(Change),
}

/// A scripted fault schedule for a named scenario: (tick, fault). Replaces the random faults.
pub type Script = Vec<(u64, Fault)>;

/// Something a node reported, kept when [`RunSpec::record`] is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub tick: u64,
    pub node: NodeId,
    pub note: Note,
}

/// Faults injected in one run.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub crash: u64,
    pub pause: u64,
    pub partition: u64,
    pub loss: u64,
    /// Slow nodes (not in [`FaultCounts::total`], which counts the four kinds of the summary).
    pub slow: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crash + self.pause + self.partition + self.loss
    }
}

/// A change asked of a leader: tick, the leader asked (none: there was none), the change, and
/// the configurations it will propose or why it refused.
pub type ReconfigAsked = (
    u64,
    Option<NodeId>,
    Change,
    Result<Vec<Membership>, ReconfigError>,
);

/// What one seed's run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub replicas: usize,
    pub violation: Option<Violation>,
    pub faults: FaultCounts,
    pub leader_changes: u64,
    pub leader_crashed: bool,
    pub leader_paused: bool,
    pub memory_lost_restarts: u64,
    pub ops_invoked: u64,
    pub ops_acked: u64,
    pub chosen_slots: u64,
    /// Times the log wrapped around (the highest chosen slot over the log's capacity).
    pub log_wraps: u64,
    /// Snapshots installed by followers behind the leader's log.
    pub snapshots_installed: u64,
    /// Ticks from the last heal to the next chosen slot.
    pub resume_ticks: Option<u64>,
    /// Spares in the cluster (with [`RunSpec::reconfig`]).
    pub spares: usize,
    /// Configuration changes asked of a leader, and those it refused.
    pub reconfigs_asked: u64,
    pub reconfigs_refused: u64,
    /// Configuration entries chosen.
    pub reconfigs_chosen: u64,
    /// Ring repairs the leaders started (a spare for an acceptor dead too long).
    pub ring_repairs: u64,
    /// Every change asked (tick, leader asked, change, its answer), with [`RunSpec::record`].
    pub reconfigs: Vec<ReconfigAsked>,
    /// Each node's configuration at the end (`None`: down).
    pub final_memberships: Vec<Option<Membership>>,
    /// Fabric counters: permission errors, lost operations, torn writes...
    pub fabric: SimStats,
    /// The run's window (slots in flight), drawn per seed.
    pub window_slots: u64,
    /// The most log writes one node posted to one peer in one turn: a turn's work is bounded
    /// (a follower's catch-up goes in steps of two windows).
    pub most_log_writes_per_turn: usize,
    /// Every note of every node, in order (only with [`RunSpec::record`]).
    pub timeline: Vec<Event>,
}

impl RunReport {
    /// A report with nothing found yet.
    pub fn new(seed: u64, replicas: usize) -> RunReport {
        RunReport {
            seed,
            replicas,
            violation: None,
            faults: FaultCounts::default(),
            leader_changes: 0,
            log_wraps: 0,
            snapshots_installed: 0,
            leader_crashed: false,
            leader_paused: false,
            memory_lost_restarts: 0,
            ops_invoked: 0,
            ops_acked: 0,
            chosen_slots: 0,
            resume_ticks: None,
            spares: 0,
            reconfigs_asked: 0,
            reconfigs_refused: 0,
            reconfigs_chosen: 0,
            ring_repairs: 0,
            reconfigs: Vec::new(),
            final_memberships: Vec::new(),
            fabric: SimStats::default(),
            window_slots: 0,
            most_log_writes_per_turn: 0,
            timeline: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemoryMode {
    Kept,
    Lost,
    Mixed,
}

/// Knobs drawn per seed (swarm testing): each run explores a different corner.
#[derive(Clone, Debug)]
struct Swarm {
    /// Acceptors at epoch 0 (the ring stays at this size or one more).
    acceptors: usize,
    /// Acceptors and spares.
    total: usize,
    /// Chance per tick of asking the leader for a change (0 without reconfiguration).
    reconfig_prob: f64,
    clients: usize,
    keys: usize,
    think_max: u64,
    client_timeout: u64,
    fault_prob: f64,
    crash_on: bool,
    pause_on: bool,
    partition_on: bool,
    loss_on: bool,
    slow_on: bool,
    target_leader_prob: f64,
    memory: MemoryMode,
    fabric: SimKnobs,
}

enum Msg {
    ToNode { node: NodeId, req: ClientRequest },
    ToClient { reply: ClientReply },
}

enum Inbound {
    Completion(Completion),
    Request(ClientRequest),
}

#[derive(Debug)]
enum Heal {
    Restart { node: NodeId, memory_lost: bool },
    Resume { node: NodeId },
    Reconnect { a: NodeId, b: NodeId },
    Loss,
    Speed { node: NodeId },
}

struct Waiting {
    seq: u64,
    command: Vec<u8>,
    deadline: u64,
    hist: usize,
    /// NotLeader answers in a row: past a few, hints are ignored (they may be stale and
    /// circular) and the client tries the nodes in turn.
    redirects: u32,
}

struct Client {
    id: u64,
    seq: u64,
    target: NodeId,
    next_op_at: u64,
    waiting: Option<Waiting>,
    max_acked_seq: u64,
}

pub struct World {
    spec: RunSpec,
    swarm: Swarm,
    rng: Xoshiro256PlusPlus,
    now: u64,
    fabric: SimFabric,
    cfgs: Vec<NodeConfig>,
    nodes: Vec<Option<Node<KvStore>>>,
    /// Each node's last checkpoint, kept across restarts that keep memory.
    saved: Vec<Option<Vec<u8>>>,
    paused: Vec<bool>,
    /// A node runs its turns only on ticks that are multiples of this (1: every tick).
    slow: Vec<u64>,
    inbox: Vec<VecDeque<Inbound>>,
    msgs: BinaryHeap<Reverse<(u64, u64)>>,
    msg_store: HashMap<u64, Msg>,
    next_msg: u64,
    clients: Vec<Client>,
    history: Vec<HistoryOp>,
    oracle: Oracle,
    heals: Vec<(u64, Heal)>,
    script: Option<Script>,
    fault_end: u64,
    stop_issuing: u64,
    last_heal: u64,
    last_chosen: u64,
    liveness_bound: u64,
    report: RunReport,
    out: Output,
}

fn kv_limits() -> KvLimits {
    KvLimits::default()
}

impl World {
    pub fn new(spec: RunSpec) -> World {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
        let n = spec
            .replicas
            .unwrap_or_else(|| *[3usize, 5, 7].choose(&mut rng).unwrap());
        let memory = *[MemoryMode::Kept, MemoryMode::Lost, MemoryMode::Mixed]
            .choose(&mut rng)
            .unwrap();
        let fabric_knobs = SimKnobs {
            max_delay_ticks: rng.gen_range(1..=4),
            slow_prob: *[0.0, 0.01, 0.05].choose(&mut rng).unwrap(),
            slow_extra_ticks: rng.gen_range(5..=40),
            split_prob: *[0.0, 0.1, 0.5].choose(&mut rng).unwrap(),
            timeout_ticks: rng.gen_range(10..=40),
            fast_fail_prob: rng.gen_range(0.0..=1.0),
        };
        // Drawn only with reconfiguration, so other runs replay as they always did.
        let (spares, reconfig_prob, replace_after) = if spec.reconfig {
            (
                rng.gen_range(1..=2usize),
                rng.gen_range(0.002..=0.01),
                *[0u64, 150, 300].choose(&mut rng).unwrap(),
            )
        } else {
            (0, 0.0, 0)
        };
        let replace_after = match (spec.replace_after_ticks, &spec.script) {
            (Some(t), _) => t,
            (None, Some(_)) => 0,
            (None, None) => replace_after,
        };
        let total = n + spares;
        let swarm = Swarm {
            acceptors: n,
            total,
            reconfig_prob,
            clients: rng.gen_range(1..=6),
            keys: rng.gen_range(1..=4),
            think_max: rng.gen_range(0..=20),
            client_timeout: rng.gen_range(60..=150),
            fault_prob: rng.gen_range(0.002..=0.02),
            crash_on: rng.gen_bool(0.75),
            pause_on: rng.gen_bool(0.75),
            partition_on: rng.gen_bool(0.6),
            loss_on: rng.gen_bool(0.5),
            slow_on: rng.gen_bool(0.5),
            target_leader_prob: rng.gen_range(0.3..=0.9),
            memory,
            fabric: fabric_knobs,
        };
        let read_period = rng.gen_range(2..=8);
        let score_cap = rng.gen_range(4..=12);
        let recover = rng.gen_range(2..=score_cap);
        let fail = rng.gen_range(0..recover);
        let election = ElectionConfig {
            read_period_ticks: read_period,
            score_cap,
            fail_threshold: fail,
            recover_threshold: recover,
        };
        let window = *[1u64, 2, 4, 8, 16, 32].choose(&mut rng).unwrap();
        // A small log, so runs wrap it many times (log reuse, snapshots for the lagging); the
        // window fits a quarter of it.
        let capacity = (*[16u64, 32, 64, 128, 512].choose(&mut rng).unwrap()).max(4 * window);
        let geometry = LogGeometry::new(capacity, 256).expect("valid geometry");
        // Checkpoints at least every quarter log, so a restart that keeps memory replays its
        // log from its last one (log reuse keeps half a log behind the slowest active node).
        let checkpoint_every = (*[2u64, 4, 16, 64].choose(&mut rng).unwrap()).min(capacity / 4);
        let snapshot_chunk_bytes = rng.gen_range(64..=4096);
        let batch_cmds = *[1usize, 2, 4, 8, 16].choose(&mut rng).unwrap();
        let batch_bytes = rng.gen_range(64..=geometry.max_payload());
        let retry = rng.gen_range(10..=40);
        let ring: Vec<NodeId> = (0..n as NodeId).collect();
        let spares: Vec<NodeId> = (n as NodeId..total as NodeId).collect();
        let cfgs: Vec<NodeConfig> = (0..total)
            .map(|i| NodeConfig {
                id: i as NodeId,
                ring: ring.clone(),
                spares: spares.clone(),
                geometry,
                window_slots: window,
                batch_max_commands: batch_cmds,
                batch_max_bytes: batch_bytes,
                client_queue_max: 64,
                election: election.clone(),
                retry_ticks: retry,
                candidate_timeout_ticks: retry * 4,
                stepdown_holdoff_ticks: read_period * (u64::from(score_cap) + 2),
                replace_after_ticks: replace_after,
                apply_scan_slots: 64,
                read_chunk_slots: 64,
                checkpoint_every,
                snapshot_chunk_bytes,
                external_election: false,
                bugs: spec.bugs,
            })
            .collect();
        let mut fabric = SimFabric::new(total, geometry.log_bytes(), swarm.fabric.clone());
        let nodes = (0..total)
            .map(|i| {
                Some(Node::new(
                    cfgs[i].clone(),
                    KvStore::new(kv_limits()),
                    &mut fabric.mems[i],
                    Start::Fresh,
                    0,
                ))
            })
            .collect();
        let clients = (0..swarm.clients)
            .map(|c| Client {
                id: c as u64 + 1,
                seq: 0,
                target: rng.gen_range(0..total) as NodeId,
                next_op_at: rng.gen_range(0..50),
                waiting: None,
                max_acked_seq: 0,
            })
            .collect();
        let ticks = spec.ticks;
        let fault_end = ticks * 55 / 100;
        let stop_issuing = ticks * 85 / 100;
        // Detection, holdoff, a candidacy or two, recovery round trips and a client retry.
        let rtt = 2 * (swarm.fabric.max_delay_ticks + swarm.fabric.slow_extra_ticks);
        let liveness_bound = read_period * (u64::from(score_cap) + 2) * 3
            + retry * 12
            + rtt * 12
            + swarm.fabric.timeout_ticks * 4
            + swarm.client_timeout * 2;
        let mut report = RunReport::new(spec.seed, n);
        report.spares = spares.len();
        report.window_slots = window;
        World {
            report,
            script: spec.script.clone(),
            spec,
            rng,
            now: 0,
            fabric,
            oracle: Oracle::new(total, n, geometry),
            cfgs,
            nodes,
            saved: vec![None; total],
            paused: vec![false; total],
            slow: vec![1; total],
            inbox: (0..total).map(|_| VecDeque::new()).collect(),
            msgs: BinaryHeap::new(),
            msg_store: HashMap::new(),
            next_msg: 0,
            clients,
            history: Vec::new(),
            heals: Vec::new(),
            fault_end,
            stop_issuing,
            last_heal: 0,
            last_chosen: 0,
            liveness_bound,
            swarm,
            out: Output::default(),
        }
    }

    /// Nodes in the cluster: acceptors and spares.
    fn n(&self) -> usize {
        self.swarm.total
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.spec.trace {
            crate::say!("[seed {} t{}] {}", self.spec.seed, self.now, what);
        }
    }

    /// Runs the whole seed and returns what it found.
    pub fn run(mut self) -> RunReport {
        let result = self.run_inner();
        if let Err(v) = result {
            self.report.violation = Some(v);
        }
        self.report.chosen_slots = self.oracle.chosen_count() as u64;
        self.report.reconfigs_chosen = self.oracle.configurations().len() as u64 - 1;
        self.report.final_memberships = self
            .nodes
            .iter()
            .map(|n| n.as_ref().map(|n| n.membership()))
            .collect();
        self.report.log_wraps = self.report.chosen_slots / self.cfgs[0].geometry.capacity;
        self.report.fabric = self.fabric.stats.clone();
        self.report
    }

    fn run_inner(&mut self) -> Result<(), Violation> {
        let result = self.run_ticks();
        if self.spec.trace {
            for (i, n) in self.nodes.iter().enumerate() {
                match n {
                    None => self.trace(format_args!("node {i}: down")),
                    Some(n) => self.trace(format_args!(
                        "node {i}: {:?} at {:?}, granted {}, applied {}, commit {}, amnesiac {}{}{}",
                        n.role(),
                        n.own_ballot(),
                        n.granted(),
                        n.applied(),
                        n.commit(),
                        n.is_amnesiac(&self.fabric.mems[i]),
                        if self.paused[i] { ", paused" } else { "" },
                        if n.followers().is_empty() {
                            String::new()
                        } else {
                            format!(", followers {:?}", n.followers())
                        }
                    )),
                }
            }
        }
        result
    }

    fn run_ticks(&mut self) -> Result<(), Violation> {
        while self.now < self.spec.ticks {
            self.step()?;
            self.now += 1;
        }
        self.final_checks()
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            tick: self.now,
            invariant,
            detail,
        }
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.faults();
        // Completions due now, to their nodes (buffered while a node is paused).
        let done = self.fabric.advance(self.now, &mut self.rng);
        for i in 0..self.n() {
            self.oracle.observe(self.now, &mut self.fabric.mems[i])?;
        }
        for (node, c) in done {
            self.inbox[node as usize].push_back(Inbound::Completion(c));
        }
        // Client messages due now.
        while let Some(&Reverse((at, id))) = self.msgs.peek() {
            if at > self.now {
                break;
            }
            self.msgs.pop();
            match self.msg_store.remove(&id).expect("message") {
                Msg::ToNode { node, req } => {
                    if self.nodes[node as usize].is_some() {
                        self.inbox[node as usize].push_back(Inbound::Request(req));
                    }
                }
                Msg::ToClient { reply } => self.client_reply(reply),
            }
        }
        // Every running node: its inbox, then one turn of its agents.
        let mut order: Vec<usize> = (0..self.n()).collect();
        order.shuffle(&mut self.rng);
        for i in order {
            if self.nodes[i].is_none() || self.paused[i] || !self.now.is_multiple_of(self.slow[i]) {
                continue;
            }
            while let Some(ev) = self.inbox[i].pop_front() {
                let node = self.nodes[i].as_mut().unwrap();
                let mem = &mut self.fabric.mems[i];
                match ev {
                    Inbound::Completion(c) => node.on_completion(self.now, c, mem, &mut self.out),
                    Inbound::Request(r) => node.on_client_request(self.now, r, mem, &mut self.out),
                }
                self.drain_output(i)?;
            }
            // The control and data planes are separate processes: either may go first.
            let control_first = self.rng.gen_bool(0.5);
            for control in [control_first, !control_first] {
                let node = self.nodes[i].as_mut().unwrap();
                let mem = &mut self.fabric.mems[i];
                if control {
                    node.tick_control(self.now, mem, &mut self.out);
                } else {
                    node.tick_data(self.now, mem, &mut self.out);
                }
                self.drain_output(i)?;
            }
        }
        self.clients_tick();
        self.reconfig_tick();
        self.liveness()
    }

    /// Now and then during the faults, asks the leader for a change: a spare replacing an
    /// acceptor (a down one when there is one), a spare joining, an acceptor leaving (the ring
    /// stays at its first size or one more, so the crash budget holds), or a new order.
    fn reconfig_tick(&mut self) {
        if self.swarm.reconfig_prob == 0.0
            || self.script.is_some()
            || self.now < 100
            || self.now >= self.fault_end
            || !self.rng.gen_bool(self.swarm.reconfig_prob)
        {
            return;
        }
        let Some(leader) = self.current_leader() else {
            return;
        };
        let l = leader as usize;
        if self.paused[l] {
            return;
        }
        let node = self.nodes[l].as_ref().expect("the leader is up");
        let ring = node.membership().ring().to_vec();
        let spares: Vec<NodeId> = (0..self.n() as NodeId)
            .filter(|n| !ring.contains(n))
            .collect();
        let down: Vec<NodeId> = ring
            .iter()
            .copied()
            .filter(|&n| self.nodes[n as usize].is_none())
            .collect();
        let base = self.swarm.acceptors;
        let change = match self.rng.gen_range(0..4) {
            0 | 1 if ring.len() == base && !spares.is_empty() => {
                let new = *spares.choose(&mut self.rng).unwrap();
                let old = *down
                    .choose(&mut self.rng)
                    .unwrap_or_else(|| ring.choose(&mut self.rng).unwrap());
                Change::Replace { old, new }
            }
            2 if ring.len() == base && !spares.is_empty() => {
                Change::Add(*spares.choose(&mut self.rng).unwrap())
            }
            _ if ring.len() > base => {
                let old = *down
                    .choose(&mut self.rng)
                    .unwrap_or_else(|| ring.choose(&mut self.rng).unwrap());
                Change::Remove(old)
            }
            _ => {
                let mut order = ring.clone();
                order.shuffle(&mut self.rng);
                Change::Reorder(order)
            }
        };
        self.ask_reconfig(Some(leader), change);
    }

    /// Asks `leader` (none: there is no leader up) for `change` and keeps the answer.
    fn ask_reconfig(&mut self, leader: Option<NodeId>, change: Change) {
        self.report.reconfigs_asked += 1;
        let answer = match leader.and_then(|l| self.nodes[l as usize].as_mut()) {
            Some(node) => node.reconfigure(&change),
            None => Err(ReconfigError::NotLeader { leader_hint: None }),
        };
        match &answer {
            Ok(steps) => self.trace(format_args!("node {leader:?} takes {change}: {steps:?}")),
            Err(e) => {
                self.report.reconfigs_refused += 1;
                self.trace(format_args!("node {leader:?} refuses {change}: {e}"));
            }
        }
        if self.spec.record {
            self.report
                .reconfigs
                .push((self.now, leader, change, answer));
        }
    }

    fn drain_output(&mut self, i: usize) -> Result<(), Violation> {
        let node = i as NodeId;
        self.oracle.observe(self.now, &mut self.fabric.mems[i])?;
        let mut out = std::mem::take(&mut self.out);
        if let Some(c) = out.checkpoint.take() {
            // The daemon encodes a frozen state on its writer thread; here, at once.
            let (d, state) = c.into_parts(&mut || {});
            self.oracle.checkpoint(self.now, node, d.index, d.digest)?;
            let mut saved = d.encode().to_vec();
            saved.extend_from_slice(&state);
            self.saved[node as usize] = Some(saved);
        }
        let mut log_writes = [0usize; MAX_NODES];
        for post in out.posts.iter().cloned() {
            if matches!(
                post.op,
                Op::Write {
                    region: Region::Log,
                    ..
                }
            ) {
                if let Some(n) = log_writes.get_mut(post.target as usize) {
                    *n += 1;
                }
            }
            self.fabric.post(self.now, node, post, &mut self.rng);
        }
        let most = log_writes.iter().copied().max().unwrap_or(0);
        self.report.most_log_writes_per_turn = self.report.most_log_writes_per_turn.max(most);
        for reply in out.replies.iter().cloned() {
            let at = self.now + self.rng.gen_range(1..=3);
            self.send(at, Msg::ToClient { reply });
        }
        if std::env::var_os("RAPAX_SIM_NOTES").is_some() {
            for note in &out.notes {
                self.trace(format_args!("node {node}: {note:?}"));
            }
        }
        if self.spec.record {
            for note in &out.notes {
                self.report.timeline.push(Event {
                    tick: self.now,
                    node,
                    note: note.clone(),
                });
            }
        }
        for note in &out.notes {
            match *note {
                // Only a leader's bug writes a batch that does not split.
                Note::Unappliable { slot, ref reason } => {
                    return Err(Violation {
                        tick: self.now,
                        invariant: super::oracle::WELL_FORMED_BATCHES,
                        detail: format!("node {node} applied slot {slot} empty: {reason}"),
                    })
                }
                Note::Chosen {
                    slot,
                    ballot,
                    value_digest,
                } => {
                    self.oracle
                        .leader_claim(self.now, node, slot, ballot, value_digest)?;
                    self.last_chosen = self.now;
                }
                Note::Applied { slot, value_digest } => {
                    self.oracle.applied(self.now, node, slot, value_digest)?
                }
                Note::BecameLeader {
                    ballot,
                    recovered_from,
                    recovered_to,
                } => {
                    self.report.leader_changes += 1;
                    self.trace(format_args!(
                        "node {node} leads at {ballot}, recovered [{recovered_from}, {recovered_to})"
                    ));
                }
                Note::SteppedDown { ballot, reason } => self.trace(format_args!(
                    "node {node} steps down from {ballot}: {reason}"
                )),
                Note::Checkpoint { index, digest } => {
                    self.oracle.checkpoint(self.now, node, index, digest)?
                }
                Note::Restored { index, digest } => {
                    self.report.snapshots_installed += 1;
                    self.trace(format_args!(
                        "node {node} installs a snapshot below slot {index}"
                    ));
                    self.oracle.restored(self.now, node, index, digest)?
                }
                Note::SnapshotSent { peer, index, bytes } => self.trace(format_args!(
                    "node {node} streams a snapshot below {index} ({bytes} bytes) to {peer}"
                )),
                Note::SnapshotRejected { index, ref reason } => self.trace(format_args!(
                    "node {node} discards a snapshot below {index}: {reason}"
                )),
                Note::FollowerSynced { .. } | Note::FollowerLost { .. } | Note::Proposed { .. } => {
                }
                Note::Reconfigured { slot, membership } => {
                    self.oracle.reconfigured(self.now, node, slot, membership)?
                }
                Note::ReconfigProposed { slot, membership } => self.trace(format_args!(
                    "node {node} proposes {membership:?} in slot {slot}"
                )),
                Note::RingRepair { old, new } => {
                    self.report.ring_repairs += 1;
                    self.trace(format_args!(
                        "node {node} repairs the ring: {new} replaces {old}"
                    ))
                }
                Note::ReconfigAbandoned { epoch, reason } => self.trace(format_args!(
                    "node {node} gives up the change to epoch {epoch}: {reason}"
                )),
                Note::Candidate { ballot } => {
                    self.trace(format_args!("node {node} stands at {ballot}"))
                }
                Note::Granted { to, ballot } => self.trace(format_args!(
                    "node {node} grants its log to {to} at {ballot}"
                )),
            }
        }
        out.clear();
        self.out = out;
        Ok(())
    }

    fn send(&mut self, at: u64, msg: Msg) {
        let id = self.next_msg;
        self.next_msg += 1;
        self.msg_store.insert(id, msg);
        self.msgs.push(Reverse((at, id)));
    }

    // ---- faults -------------------------------------------------------------------------------

    /// The node the cluster follows now: the leader with the highest ballot.
    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
            .filter(|(_, n)| n.role() == RoleKind::Leader)
            .max_by_key(|(_, n)| n.own_ballot().unwrap_or(Ballot::ZERO))
            .map(|(i, _)| i as NodeId)
    }

    fn amnesiac_or_down(&self) -> usize {
        (0..self.n())
            .filter(|&i| match &self.nodes[i] {
                None => true,
                Some(n) => n.is_amnesiac(&self.fabric.mems[i]),
            })
            .count()
    }

    fn faults(&mut self) {
        // Heals due now (all of them by the end of the fault period).
        let now = self.now;
        let due: Vec<Heal> = {
            let mut due = Vec::new();
            let mut i = 0;
            while i < self.heals.len() {
                if self.heals[i].0 <= now {
                    due.push(self.heals.remove(i).1);
                } else {
                    i += 1;
                }
            }
            due
        };
        for h in due {
            self.last_heal = now;
            self.trace(format_args!("heal {h:?}"));
            match h {
                Heal::Restart { node, memory_lost } => {
                    let i = node as usize;
                    self.fabric.restart(node, memory_lost);
                    self.oracle.restarted(node);
                    self.inbox[i].clear();
                    if memory_lost {
                        self.report.memory_lost_restarts += 1;
                    }
                    let start = if memory_lost {
                        Start::MemoryLost
                    } else {
                        Start::MemoryKept
                    };
                    let mut n = Node::new(
                        self.cfgs[i].clone(),
                        KvStore::new(kv_limits()),
                        &mut self.fabric.mems[i],
                        start,
                        now,
                    );
                    // A checkpoint survives a restart that keeps memory.
                    if memory_lost {
                        self.saved[i] = None;
                    } else if let Some(saved) = &self.saved[i] {
                        let from = n
                            .restore_saved(saved, &mut self.fabric.mems[i])
                            .expect("a kept checkpoint restores");
                        self.oracle.resumed(node, from);
                    }
                    self.nodes[i] = Some(n);
                }
                Heal::Resume { node } => self.paused[node as usize] = false,
                Heal::Reconnect { a, b } => self.fabric.set_cut(a, b, false),
                Heal::Loss => self.fabric.set_loss(0.0),
                Heal::Speed { node } => self.slow[node as usize] = 1,
            }
        }
        // Scripted faults (scenario tests) replace the random ones.
        if let Some(script) = &mut self.script {
            let due: Vec<Fault> = script
                .iter()
                .filter(|(t, _)| *t == now)
                .map(|(_, f)| f.clone())
                .collect();
            script.retain(|(t, _)| *t > now);
            for f in due {
                self.inject(f);
            }
            return;
        }
        if now < 50 || now >= self.fault_end || !self.rng.gen_bool(self.swarm.fault_prob) {
            return;
        }
        let pick = |rng: &mut Xoshiro256PlusPlus, p: f64, n: usize| -> Target {
            if rng.gen_bool(p) {
                Target::Leader
            } else {
                Target::Node(rng.gen_range(0..n) as NodeId)
            }
        };
        let n = self.n();
        let p = self.swarm.target_leader_prob;
        let for_ticks = self.rng.gen_range(10..=400);
        let fault = match self.rng.gen_range(0..5) {
            0 if self.swarm.crash_on => Fault::Crash {
                node: pick(&mut self.rng, p, n),
                memory_lost: match self.swarm.memory {
                    MemoryMode::Kept => false,
                    MemoryMode::Lost => true,
                    MemoryMode::Mixed => self.rng.gen_bool(0.5),
                },
                for_ticks,
            },
            1 if self.swarm.pause_on => Fault::Pause {
                node: pick(&mut self.rng, p, n),
                for_ticks,
            },
            2 if self.swarm.partition_on => {
                if self.rng.gen_bool(0.5) {
                    Fault::Isolate {
                        node: pick(&mut self.rng, p, n),
                        for_ticks,
                    }
                } else {
                    let mut ids: Vec<NodeId> = (0..n as NodeId).collect();
                    ids.shuffle(&mut self.rng);
                    let k = self.rng.gen_range(1..n);
                    Fault::Split {
                        side: ids[..k].to_vec(),
                        for_ticks,
                    }
                }
            }
            3 if self.swarm.loss_on => Fault::Loss {
                prob: self.rng.gen_range(0.02..=0.3),
                for_ticks,
            },
            4 if self.swarm.slow_on => Fault::Slow {
                node: pick(&mut self.rng, p, n),
                every: self.rng.gen_range(2..=8),
                for_ticks,
            },
            _ => return,
        };
        self.inject(fault);
    }

    fn resolve(&self, t: &Target) -> Option<NodeId> {
        match t {
            Target::Node(n) => Some(*n),
            Target::Leader => self.current_leader(),
        }
    }

    /// Applies one fault now and schedules its heal (never after the end of the fault period,
    /// unless a script asks for it).
    fn inject(&mut self, fault: Fault) {
        let now = self.now;
        let n = self.n();
        let f = faults_tolerated(self.swarm.acceptors);
        let leader = self.current_leader();
        let heal_at = |for_ticks: u64, fault_end: u64, scripted: bool| {
            if scripted {
                now + for_ticks
            } else {
                (now + for_ticks).min(fault_end)
            }
        };
        let scripted = self.script.is_some();
        let leader_mark = |node: NodeId| {
            if Some(node) == leader {
                " (leader)"
            } else {
                ""
            }
        };
        match fault {
            Fault::Crash {
                node,
                memory_lost,
                for_ticks,
            } => {
                let Some(node) = self.resolve(&node) else {
                    return;
                };
                if self.nodes[node as usize].is_none() {
                    return;
                }
                // Memory loss makes a node forget what it accepted: keep at most f such nodes
                // (and crashed ones) at a time, or the cluster could never recover.
                let lost = memory_lost && (scripted || self.amnesiac_or_down() < f);
                self.report.faults.crash += 1;
                if Some(node) == leader {
                    self.report.leader_crashed = true;
                }
                self.trace(format_args!(
                    "crash node {node}{} (memory {})",
                    leader_mark(node),
                    if lost { "lost" } else { "kept" }
                ));
                self.fabric.crash(node);
                self.nodes[node as usize] = None;
                self.paused[node as usize] = false;
                self.inbox[node as usize].clear();
                let at = heal_at(for_ticks, self.fault_end, scripted);
                self.heals.push((
                    at,
                    Heal::Restart {
                        node,
                        memory_lost: lost,
                    },
                ));
            }
            Fault::Pause { node, for_ticks } => {
                let Some(node) = self.resolve(&node) else {
                    return;
                };
                if self.nodes[node as usize].is_none() || self.paused[node as usize] {
                    return;
                }
                self.report.faults.pause += 1;
                if Some(node) == leader {
                    self.report.leader_paused = true;
                }
                self.trace(format_args!("pause node {node}{}", leader_mark(node)));
                self.paused[node as usize] = true;
                let at = heal_at(for_ticks, self.fault_end, scripted);
                self.heals.push((at, Heal::Resume { node }));
            }
            Fault::Isolate { node, for_ticks } => {
                let Some(node) = self.resolve(&node) else {
                    return;
                };
                self.report.faults.partition += 1;
                self.trace(format_args!("isolate node {node}{}", leader_mark(node)));
                let at = heal_at(for_ticks, self.fault_end, scripted);
                for o in 0..n as NodeId {
                    if o != node {
                        self.fabric.set_cut(node, o, true);
                        self.heals.push((at, Heal::Reconnect { a: node, b: o }));
                    }
                }
            }
            Fault::Split { side, for_ticks } => {
                self.report.faults.partition += 1;
                let other: Vec<NodeId> = (0..n as NodeId).filter(|x| !side.contains(x)).collect();
                self.trace(format_args!("split {side:?} | {other:?}"));
                let at = heal_at(for_ticks, self.fault_end, scripted);
                for &a in &side {
                    for &b in &other {
                        self.fabric.set_cut(a, b, true);
                        self.heals.push((at, Heal::Reconnect { a, b }));
                    }
                }
            }
            Fault::Loss { prob, for_ticks } => {
                self.report.faults.loss += 1;
                self.trace(format_args!("loss {prob:.2}"));
                self.fabric.set_loss(prob);
                let at = heal_at(for_ticks, self.fault_end, scripted);
                self.heals.push((at, Heal::Loss));
            }
            Fault::Slow {
                node,
                every,
                for_ticks,
            } => {
                let Some(node) = self.resolve(&node) else {
                    return;
                };
                if self.slow[node as usize] != 1 {
                    return;
                }
                self.report.faults.slow += 1;
                self.trace(format_args!(
                    "slow node {node}{}: one turn in {every} ticks",
                    leader_mark(node)
                ));
                self.slow[node as usize] = every.max(1);
                let at = heal_at(for_ticks, self.fault_end, scripted);
                self.heals.push((at, Heal::Speed { node }));
            }
            Fault::Reconfigure(change) => self.ask_reconfig(leader, change),
        }
    }

    // ---- clients ------------------------------------------------------------------------------

    fn clients_tick(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            match &client.waiting {
                Some(w) if now >= w.deadline => {
                    // Time-out: the same (client, seq) to the next node.
                    let target = (client.target as usize + 1) % self.n();
                    self.clients[c].target = target as NodeId;
                    self.resend(c);
                }
                Some(_) => {}
                None if now >= client.next_op_at && now < self.stop_issuing => self.new_op(c),
                None => {}
            }
        }
    }

    fn new_op(&mut self, c: usize) {
        let key = format!("k{}", self.rng.gen_range(0..self.swarm.keys)).into_bytes();
        let client = &mut self.clients[c];
        client.seq += 1;
        let value = format!("{}.{}", client.id, client.seq).into_bytes();
        let op = match self.rng.gen_range(0..100) {
            0..=34 => KvOp::Put { key, value },
            35..=64 => KvOp::Get { key },
            65..=79 => KvOp::Delete { key },
            _ => {
                let expected = match self.rng.gen_range(0..3) {
                    0 => None,
                    _ => {
                        // Some value that was written to some key: CAS hits often enough.
                        let writes: Vec<&HistoryOp> = self
                            .history
                            .iter()
                            .rev()
                            .take(8)
                            .filter(|h| matches!(h.op, KvOp::Put { .. } | KvOp::Cas { .. }))
                            .collect();
                        writes.choose(&mut self.rng).and_then(|h| match &h.op {
                            KvOp::Put { value, .. } => Some(value.clone()),
                            KvOp::Cas { new, .. } => Some(new.clone()),
                            _ => None,
                        })
                    }
                };
                KvOp::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        let client = &mut self.clients[c];
        let cmd = Command {
            client: client.id,
            seq: client.seq,
            op: op.clone(),
        };
        let mut command = Vec::new();
        cmd.encode(&mut command);
        self.history.push(HistoryOp {
            client: client.id,
            op,
            invoke: self.now,
            response: None,
        });
        self.report.ops_invoked += 1;
        client.waiting = Some(Waiting {
            seq: client.seq,
            command,
            deadline: 0,
            hist: self.history.len() - 1,
            redirects: 0,
        });
        self.resend(c);
    }

    fn resend(&mut self, c: usize) {
        let now = self.now;
        let delay = self.rng.gen_range(1..=3);
        let timeout = self.swarm.client_timeout;
        let client = &mut self.clients[c];
        let w = client.waiting.as_mut().expect("waiting");
        w.deadline = now + timeout;
        let req = ClientRequest {
            client: client.id,
            seq: w.seq,
            command: w.command.clone(),
        };
        let node = client.target;
        self.send(now + delay, Msg::ToNode { node, req });
    }

    fn client_reply(&mut self, reply: ClientReply) {
        let Some(c) = self.clients.iter().position(|c| c.id == reply.client) else {
            return;
        };
        let now = self.now;
        let client = &mut self.clients[c];
        let Some(w) = &client.waiting else { return };
        if w.seq != reply.seq {
            return; // an answer to an earlier attempt
        }
        match reply.result {
            Ok(bytes) => {
                let kv = KvReply::decode(&bytes).expect("replies decode");
                let hist = w.hist;
                self.history[hist].response = Some((now, kv));
                client.max_acked_seq = reply.seq;
                client.waiting = None;
                client.next_op_at = now + self.rng.gen_range(0..=self.swarm.think_max);
                self.report.ops_acked += 1;
            }
            Err(ClientError::NotLeader { leader_hint }) => {
                let w = client.waiting.as_mut().expect("waiting");
                w.redirects += 1;
                client.target = match leader_hint {
                    Some(h) if h != client.target && w.redirects <= 2 => h,
                    _ => ((client.target as usize + 1) % self.swarm.total) as NodeId,
                };
                if w.redirects > 2 + self.swarm.total as u32 {
                    w.redirects = 0;
                }
                self.resend(c);
            }
            Err(ClientError::Busy | ClientError::LogFull) => {
                if let Some(w) = &mut client.waiting {
                    w.deadline = now + self.rng.gen_range(5..=20);
                }
            }
            Err(e @ (ClientError::TooLarge { .. } | ClientError::BadRequest(_))) => {
                panic!("simulated clients send small, well-formed commands: {e}")
            }
        }
    }

    // ---- liveness and final checks --------------------------------------------------------------

    fn liveness(&mut self) -> Result<(), Violation> {
        if !self.heals.is_empty() || self.now < self.fault_end {
            return Ok(());
        }
        let since = self.last_heal.max(self.fault_end);
        if self.last_chosen >= since && self.report.resume_ticks.is_none() {
            self.report.resume_ticks = Some(self.last_chosen - since);
        }
        let busy = self.clients.iter().any(|c| c.waiting.is_some());
        if busy && self.last_chosen < since && self.now > since + self.liveness_bound {
            return Err(self.violation(
                "liveness (commits resume after the last fault heals)",
                format!(
                    "no slot chosen in the {} ticks since the last heal at tick {since}",
                    self.liveness_bound
                ),
            ));
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), Violation> {
        // Every client got its last answer.
        if let Some(c) = self.clients.iter().find(|c| c.waiting.is_some()) {
            return Err(self.violation(
                "liveness (every request is answered once faults heal)",
                format!(
                    "client {} still waits for seq {} at the end",
                    c.id,
                    c.waiting.as_ref().unwrap().seq
                ),
            ));
        }
        // Linearizability of the whole client history.
        match check_kv_history(&self.history) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { key, explanation } => {
                return Err(self.violation(
                    "linearizability",
                    format!("key {}: {explanation}", String::from_utf8_lossy(&key)),
                ))
            }
            Verdict::Unknown { key } => {
                return Err(self.violation(
                    "linearizability",
                    format!(
                        "checker gave up on key {} (history too large)",
                        String::from_utf8_lossy(&key)
                    ),
                ))
            }
        }
        // Every acknowledged write is in the final state: the most advanced replica's
        // de-duplication table has every client's last acknowledged sequence.
        let best = (0..self.n())
            .filter_map(|i| self.nodes[i].as_ref())
            .max_by_key(|n| n.applied())
            .expect("some node is up at the end");
        for c in &self.clients {
            let last = best.state_machine().last_reply(c.id).map_or(0, |(s, _)| s);
            if last < c.max_acked_seq {
                return Err(self.violation(
                    "durability (every acknowledged write is in the final state)",
                    format!(
                        "client {} was acknowledged seq {} but the state has seq {last}",
                        c.id, c.max_acked_seq
                    ),
                ));
            }
        }
        // Once quiet, every node has re-joined (no amnesiac left) and applied everything.
        let top = (0..self.n())
            .filter_map(|i| self.nodes[i].as_ref().map(|n| n.applied()))
            .max()
            .unwrap_or(0);
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            if node.is_amnesiac(&self.fabric.mems[i]) || node.applied() < top {
                return Err(self.violation(
                    "convergence (every node catches up once faults heal)",
                    format!(
                        "node {i} applied {} of {top} slots{}",
                        node.applied(),
                        if node.is_amnesiac(&self.fabric.mems[i]) {
                            ", still amnesiac"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        // Replicas at the same applied index have the same state, and the configuration the
        // chosen log makes there.
        let mut by_index: HashMap<u64, (usize, u64)> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let expect = self.oracle.governing(node.applied());
            if node.membership() != expect {
                return Err(self.violation(
                    super::oracle::ONE_CONFIG_PER_EPOCH,
                    format!(
                        "node {i} applied {} slots and has {:?}; the chosen log makes {expect:?}",
                        node.applied(),
                        node.membership()
                    ),
                ));
            }
            let d = node.state_machine().digest();
            match by_index.get(&node.applied()) {
                Some(&(j, dj)) if dj != d => {
                    return Err(self.violation(
                        "replica states agree at equal applied indexes",
                        format!(
                            "nodes {j} and {i} applied {} slots but differ",
                            node.applied()
                        ),
                    ))
                }
                _ => {
                    by_index.insert(node.applied(), (i, d));
                }
            }
        }
        Ok(())
    }
}
