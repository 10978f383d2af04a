//! The `sim` fabric: every node's memory in one process, simulated time, faults drawn from a seed.
//!
//! It keeps the fabric contract the way a NIC does, and lets the simulator break everything else:
//! - per-operation delays, drawn per work request, so operations to different targets reorder;
//!   operations on one connection (source, target, mesh) land in posting order;
//! - rights are checked at the target when a write lands: log writes need the poster to hold
//!   write permission; control-block writes may only touch the poster's own request and ack words;
//! - a write over a cache line may land in two halves one tick apart: a reader in between sees a
//!   torn entry (the checksum must catch it). `revoke` waits out such a write in flight, as the
//!   shared-memory guard does, so revocation is complete when it returns;
//! - operations to a crashed or partitioned node, or lost by the network, fail with
//!   [`FabricError::Unreachable`], fast or after a time-out, never hang; after a failure the data
//!   connection stays in error (everything later fails) until a `reconnect` operation;
//! - a data write may land and still fail with `Unreachable` (its completion was lost, as a
//!   time-out on a frame fabric or a lost RDMA ack looks to the poster);
//! - a crashed poster's operations in flight land whole, not at all, or torn (a prefix), and their
//!   completions are dropped; memory survives a crash or is zeroed at restart (the caller says).
//!
//! A paused node is the caller's business (it just is not stepped); its memory stays reachable,
//! as registered memory does when a process is stopped.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use rand::{Rng, RngCore};

use super::nic::NicMemory;
use super::{Completion, FabricError, Op, Post, Region};
use crate::protocol::layout::LINE_BYTES;
use crate::protocol::NodeId;

/// One node's registered memory and the NIC state around it (see [`NicMemory`]).
pub type SimMemory = NicMemory;

/// The fault and timing knobs of one run (drawn per seed by the simulator).
#[derive(Clone, Debug)]
pub struct SimKnobs {
    /// One-way delay of an operation, uniform in `1..=max_delay_ticks`.
    pub max_delay_ticks: u64,
    /// Probability that an operation is slow (an extra `1..=slow_extra_ticks`).
    pub slow_prob: f64,
    pub slow_extra_ticks: u64,
    /// Probability that a write over a cache line lands in two halves.
    pub split_prob: f64,
    /// Ticks before a lost or unanswered operation completes with an error.
    pub timeout_ticks: u64,
    /// Probability that an unreachable target fails fast rather than after the time-out.
    pub fast_fail_prob: f64,
}

impl Default for SimKnobs {
    fn default() -> SimKnobs {
        SimKnobs {
            max_delay_ticks: 3,
            slow_prob: 0.02,
            slow_extra_ticks: 20,
            split_prob: 0.1,
            timeout_ticks: 30,
            fast_fail_prob: 0.5,
        }
    }
}

type ConnKey = (NodeId, NodeId, Mesh);

#[derive(Debug)]
enum Event {
    /// Operations queued on this connection may be due.
    Wake(ConnKey),
    /// The second half of a split write lands; the connection resumes.
    LandRest { conn: ConnKey, offset: usize },
    Complete {
        src: NodeId,
        src_incarnation: u64,
        completion: Completion,
    },
}

#[derive(Debug)]
struct Queued {
    land_at: u64,
    src_incarnation: u64,
    post: Post,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Mesh {
    Control,
    Data,
}

/// One connection (queue pair): operations land in posting order.
#[derive(Debug, Default)]
struct Connection {
    last_land: u64,
    /// A split write is half landed: nothing behind it lands before its second half.
    blocked: bool,
    /// The poster crashed and its stream was cut here: nothing more of the old incarnation lands.
    cut_by_crash: bool,
    queue: std::collections::VecDeque<Queued>,
}

/// Counters of what the fabric did, for the run summary.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub posted: u64,
    pub landed_writes: u64,
    pub permission_errors: u64,
    pub unreachable: u64,
    pub lost: u64,
    /// Writes that landed but whose completion was lost (the poster sees `Unreachable`).
    pub lost_completions: u64,
    pub split_writes: u64,
    pub torn_by_crash: u64,
}

/// All nodes' memory and the network between them.
pub struct SimFabric {
    pub mems: Vec<SimMemory>,
    up: Vec<bool>,
    incarnation: Vec<u64>,
    /// `cut[a][b]`: a and b cannot reach each other.
    cut: Vec<Vec<bool>>,
    loss_prob: f64,
    knobs: SimKnobs,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    next_event: u64,
    conns: HashMap<ConnKey, Connection>,
    pub stats: SimStats,
}

impl SimFabric {
    pub fn new(nodes: usize, log_bytes: usize, knobs: SimKnobs) -> SimFabric {
        SimFabric {
            mems: (0..nodes)
                .map(|i| SimMemory::new(i as NodeId, log_bytes))
                .collect(),
            up: vec![true; nodes],
            incarnation: vec![0; nodes],
            cut: vec![vec![false; nodes]; nodes],
            loss_prob: 0.0,
            knobs,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            conns: HashMap::new(),
            stats: SimStats::default(),
        }
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.up[node as usize]
    }

    pub fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        !self.cut[a as usize][b as usize]
    }

    /// Cuts (or heals) the link between `a` and `b`.
    pub fn set_cut(&mut self, a: NodeId, b: NodeId, cut: bool) {
        self.cut[a as usize][b as usize] = cut;
        self.cut[b as usize][a as usize] = cut;
    }

    pub fn heal_all(&mut self) {
        for row in &mut self.cut {
            row.fill(false);
        }
        self.loss_prob = 0.0;
    }

    pub fn set_loss(&mut self, prob: f64) {
        self.loss_prob = prob;
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, ev);
        self.queue.push(Reverse((at, id)));
    }

    fn delay(&self, rng: &mut impl RngCore) -> u64 {
        let mut d = rng.gen_range(1..=self.knobs.max_delay_ticks);
        if rng.gen_bool(self.knobs.slow_prob) {
            d += rng.gen_range(1..=self.knobs.slow_extra_ticks);
        }
        d
    }

    /// Posts `post` from `src` at time `now`.
    pub fn post(&mut self, now: u64, src: NodeId, post: Post, rng: &mut impl RngCore) {
        assert!(self.up[src as usize], "a crashed node posts nothing");
        assert_ne!(post.target, src, "local memory is written directly");
        self.stats.posted += 1;
        let mesh = match post.op.region() {
            Region::Control => Mesh::Control,
            Region::Log => Mesh::Data,
        };
        let at = now + self.delay(rng);
        let key = (src, post.target, mesh);
        let src_incarnation = self.incarnation[src as usize];
        let conn = self.conns.entry(key).or_default();
        let at = at.max(conn.last_land);
        conn.last_land = at;
        conn.queue.push_back(Queued {
            land_at: at,
            src_incarnation,
            post,
        });
        self.schedule(at, Event::Wake(key));
    }

    /// The node crashed: it posts nothing more and its completions are dropped.
    pub fn crash(&mut self, node: NodeId) {
        self.up[node as usize] = false;
        self.incarnation[node as usize] += 1;
    }

    /// The node's processes start again; its memory survives or is zeroed.
    pub fn restart(&mut self, node: NodeId, memory_lost: bool) {
        let i = node as usize;
        self.up[i] = true;
        self.incarnation[i] += 1;
        // Its own connections start afresh; connections towards it broke with it. The NIC's
        // rights table goes with the process; the node restores what it remembers.
        for (&(a, _, _), conn) in self.conns.iter_mut() {
            if a == node {
                conn.cut_by_crash = false;
            }
        }
        for mem in &mut self.mems {
            mem.peer_restarted(node);
        }
        self.mems[i].restart(memory_lost);
    }

    /// Processes everything due at or before `now`; returns the completions to deliver
    /// (to nodes that are up, in the incarnation that posted).
    pub fn advance(&mut self, now: u64, rng: &mut impl RngCore) -> Vec<(NodeId, Completion)> {
        let mut done = Vec::new();
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > now {
                break;
            }
            self.queue.pop();
            let ev = self.events.remove(&id).expect("scheduled event");
            match ev {
                Event::Wake(key) => self.drain_connection(at, key, rng),
                Event::LandRest { conn, offset } => {
                    let (src, target, _) = conn;
                    // `revoke` may have landed it already.
                    self.mems[target as usize].finish_partial(src, offset);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.blocked = false;
                    }
                    self.drain_connection(at, conn, rng);
                }
                Event::Complete {
                    src,
                    src_incarnation,
                    completion,
                } => {
                    if self.up[src as usize] && self.incarnation[src as usize] == src_incarnation {
                        done.push((src, completion));
                    }
                }
            }
        }
        done
    }

    /// Lands, in order, the operations of one connection that are due by `now`.
    fn drain_connection(&mut self, now: u64, key: ConnKey, rng: &mut impl RngCore) {
        loop {
            let Some(conn) = self.conns.get_mut(&key) else {
                return;
            };
            if conn.blocked || conn.queue.front().is_none_or(|q| q.land_at > now) {
                return;
            }
            let q = conn.queue.pop_front().expect("front");
            self.land(now, key.0, q.src_incarnation, q.post, rng);
        }
    }

    fn complete(&mut self, at: u64, src: NodeId, inc: u64, wr_id: u64, result: CompletionResult) {
        let ev = Event::Complete {
            src,
            src_incarnation: inc,
            completion: Completion { wr_id, result },
        };
        self.schedule(at, ev);
    }

    fn land(&mut self, at: u64, src: NodeId, inc: u64, post: Post, rng: &mut impl RngCore) {
        let target = post.target;
        let t = target as usize;
        let src_alive = self.up[src as usize] && self.incarnation[src as usize] == inc;
        let mesh = match post.op.region() {
            Region::Control => Mesh::Control,
            Region::Log => Mesh::Data,
        };
        let back = at + self.delay(rng);
        let timeout = at + self.knobs.timeout_ticks;
        let fail_at = |rng: &mut dyn RngCore, k: &SimKnobs| {
            if rng.gen_bool(k.fast_fail_prob) {
                back
            } else {
                timeout
            }
        };
        // A crashed poster's operations: the stream of each connection is cut at a random
        // point; what is before it lands whole, the operation at it may land torn (a prefix),
        // nothing after it lands.
        if !src_alive {
            let key = (src, target, mesh);
            if self.conns.get(&key).is_some_and(|c| c.cut_by_crash) {
                return;
            }
            let sticky = mesh == Mesh::Data && self.mems[t].connection_error(src).is_some();
            if let Op::Write {
                region,
                offset,
                bytes,
            } = &post.op
            {
                if self.up[t] && !self.cut[src as usize][t] && !sticky {
                    let fate = rng.gen_range(0..4);
                    let allowed =
                        self.mems[t].write_allowed(src, post.ballot, *region, *offset, bytes.len());
                    if !allowed || fate == 0 {
                        self.conns.entry(key).or_default().cut_by_crash = true;
                    } else if fate == 1 && bytes.len() > 8 {
                        self.stats.torn_by_crash += 1;
                        let len = rng.gen_range(1..bytes.len());
                        self.mems[t].write(*region, *offset, &bytes[..len]);
                        self.conns.entry(key).or_default().cut_by_crash = true;
                    } else {
                        self.mems[t].write(*region, *offset, bytes);
                    }
                } else {
                    self.conns.entry(key).or_default().cut_by_crash = true;
                }
            }
            return;
        }
        if post.reconnect && mesh == Mesh::Data {
            self.mems[t].reconnect(src, 0);
        }
        let broken = match mesh {
            Mesh::Data => self.mems[t].connection_error(src),
            Mesh::Control => None,
        };
        let sticky = broken.is_some();
        let unreachable = !self.up[t] || self.cut[src as usize][t];
        let lost = !unreachable && self.loss_prob > 0.0 && rng.gen_bool(self.loss_prob);
        if broken == Some(FabricError::Permission) && !unreachable {
            // A connection broken by a revoke: the target answers with an access error.
            self.stats.permission_errors += 1;
            self.complete(back, src, inc, post.wr_id, Err(FabricError::Permission));
            return;
        }
        if sticky || unreachable || lost {
            if lost {
                self.stats.lost += 1;
            } else {
                self.stats.unreachable += 1;
            }
            if mesh == Mesh::Data {
                self.mems[t].break_connection(src);
            }
            let when = fail_at(rng, &self.knobs);
            self.complete(when, src, inc, post.wr_id, Err(FabricError::Unreachable));
            return;
        }
        match post.op {
            Op::Read { .. } => {
                let result = self.mems[t].execute(src, &post);
                self.complete(back, src, inc, post.wr_id, result);
            }
            Op::Write {
                region,
                offset,
                bytes,
            } => {
                if !self.mems[t].write_allowed(src, post.ballot, region, offset, bytes.len()) {
                    self.stats.permission_errors += 1;
                    if mesh == Mesh::Data {
                        self.mems[t].break_connection(src);
                    }
                    self.complete(back, src, inc, post.wr_id, Err(FabricError::Permission));
                    return;
                }
                self.stats.landed_writes += 1;
                if region == Region::Log
                    && bytes.len() > LINE_BYTES
                    && rng.gen_bool(self.knobs.split_prob)
                {
                    // The first half is visible now, the rest a tick later.
                    self.stats.split_writes += 1;
                    let cut = rng.gen_range(1..bytes.len());
                    self.mems[t].write(region, offset, &bytes[..cut]);
                    self.mems[t].begin_partial(src, offset + cut, bytes[cut..].to_vec());
                    let key = (src, target, mesh);
                    self.schedule(
                        at + 1,
                        Event::LandRest {
                            conn: key,
                            offset: offset + cut,
                        },
                    );
                    // Nothing behind it on this connection lands before its second half, and
                    // its completion cannot overtake it.
                    self.conns.entry(key).or_default().blocked = true;
                    self.complete(back.max(at + 1), src, inc, post.wr_id, Ok(None));
                } else if mesh == Mesh::Data
                    && self.loss_prob > 0.0
                    && rng.gen_bool(self.loss_prob / 2.0)
                {
                    // Landed, but the answer is lost: the poster times out and cannot tell
                    // it from a write that never arrived. Nothing later lands until a
                    // reconnect, as after any failure.
                    self.stats.lost_completions += 1;
                    self.mems[t].write(region, offset, &bytes);
                    self.mems[t].break_connection(src);
                    let when = fail_at(rng, &self.knobs);
                    self.complete(when, src, inc, post.wr_id, Err(FabricError::Unreachable));
                } else {
                    self.mems[t].write(region, offset, &bytes);
                    self.complete(back, src, inc, post.wr_id, Ok(None));
                }
            }
        }
    }

    /// Nodes with any operation still in flight towards them (for tests).
    pub fn in_flight_targets(&self) -> BTreeSet<NodeId> {
        self.conns
            .iter()
            .filter(|(_, c)| !c.queue.is_empty())
            .map(|(&(_, b, _), _)| b)
            .collect()
    }
}

type CompletionResult = Result<Option<Vec<u8>>, FabricError>;

#[cfg(test)]
mod tests {
    //! The shared contract suite on the `sim` backend, under several fault knobs, and the
    //! sim-specific points: reconnect, a crashed writer's stream, restarts.
    use super::*;
    use crate::fabric::contract::{self, ContractHarness};
    use crate::fabric::LocalMemory;
    use crate::protocol::layout::{Entry, EntryKind, LogGeometry};
    use crate::protocol::Ballot;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };

    fn fabric(knobs: SimKnobs) -> (SimFabric, Xoshiro256PlusPlus) {
        (
            SimFabric::new(3, GEO.log_bytes(), knobs),
            Xoshiro256PlusPlus::seed_from_u64(7),
        )
    }

    const B: Ballot = Ballot(0x105);

    struct SimHarness {
        f: SimFabric,
        rng: Xoshiro256PlusPlus,
        now: u64,
    }

    impl ContractHarness for SimHarness {
        fn geometry(&self) -> LogGeometry {
            GEO
        }

        fn post(&mut self, src: NodeId, post: Post) {
            self.f.post(self.now, src, post, &mut self.rng);
        }

        fn step(&mut self) -> Vec<(NodeId, Completion)> {
            let done = self.f.advance(self.now, &mut self.rng);
            self.now += 1;
            done
        }

        fn drain(&mut self) -> Vec<(NodeId, Completion)> {
            // Every operation completes within the longest delay plus the time-out.
            (0..1000).flat_map(|_| self.step()).collect()
        }

        fn memory(&mut self, node: NodeId) -> &mut dyn LocalMemory {
            &mut self.f.mems[node as usize]
        }

        fn isolate(&mut self, node: NodeId) {
            for o in 0..3 {
                if o != node {
                    self.f.set_cut(node, o, true);
                }
            }
        }
    }

    #[test]
    fn the_contract_holds_on_sim() {
        let knob_sets = [
            SimKnobs::default(),
            SimKnobs {
                split_prob: 0.5,
                slow_prob: 0.3,
                ..SimKnobs::default()
            },
            SimKnobs {
                max_delay_ticks: 10,
                fast_fail_prob: 0.0,
                ..SimKnobs::default()
            },
        ];
        for knobs in knob_sets {
            for seed in 0..20 {
                contract::run_all(&mut || {
                    Box::new(SimHarness {
                        f: SimFabric::new(3, GEO.log_bytes(), knobs.clone()),
                        rng: Xoshiro256PlusPlus::seed_from_u64(seed),
                        now: 0,
                    })
                });
            }
        }
    }

    fn write(wr_id: u64, target: NodeId, offset: usize, bytes: Vec<u8>) -> Post {
        Post {
            wr_id,
            target,
            op: Op::Write {
                region: Region::Log,
                offset,
                bytes,
            },
            reconnect: false,
            ballot: B,
        }
    }

    fn run(f: &mut SimFabric, rng: &mut Xoshiro256PlusPlus, from: u64, to: u64) -> Vec<Completion> {
        let mut all = Vec::new();
        for t in from..to {
            all.extend(f.advance(t, rng).into_iter().map(|(_, c)| c));
        }
        all
    }

    fn entry_bytes(slot: u64, fill: u8) -> Vec<u8> {
        let mut out = Vec::new();
        Entry {
            ballot: Ballot::new(1, 1),
            slot,
            commit_hint: 0,
            kind: EntryKind::Batch,
            payload: vec![fill; 150],
        }
        .encode(&GEO, &mut out);
        out
    }

    #[test]
    fn reconnect_revives_a_connection_in_error() {
        let (mut f, mut rng) = fabric(SimKnobs::default());
        f.mems[0].grant(1, B);
        f.set_cut(0, 1, true);
        f.post(0, 1, write(1, 0, 256, vec![1; 8]), &mut rng);
        run(&mut f, &mut rng, 0, 100);
        f.set_cut(0, 1, false);
        // Still in error: the connection broke.
        f.post(100, 1, write(2, 0, 256, vec![2; 8]), &mut rng);
        let mut reconnect = write(3, 0, 256, vec![3; 8]);
        reconnect.reconnect = true;
        f.post(100, 1, reconnect, &mut rng);
        let mut done = run(&mut f, &mut rng, 100, 200);
        done.sort_by_key(|c| c.wr_id);
        assert_eq!(done[0].result, Err(FabricError::Unreachable));
        assert_eq!(done[1].result, Ok(None));
        assert_eq!(&f.mems[0].log()[256..264], &[3u8; 8][..]);
    }

    #[test]
    fn a_crashed_posters_stream_lands_as_a_prefix() {
        for seed in 0..50 {
            let (mut f, _) = fabric(SimKnobs::default());
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            f.mems[0].grant(1, B);
            for i in 0..30u64 {
                let off = GEO.slot_offset(i);
                f.post(0, 1, write(i, 0, off, entry_bytes(i, 7)), &mut rng);
            }
            f.crash(1);
            let done = run(&mut f, &mut rng, 0, 200);
            assert!(done.is_empty(), "a crashed node gets no completions");
            // Valid entries form a prefix; at most one torn entry right after it.
            let valid: Vec<bool> = (0..30)
                .map(|i| {
                    let off = GEO.slot_offset(i);
                    Entry::check(&f.mems[0].log()[off..off + 256]).is_ok()
                })
                .collect();
            let k = valid.iter().take_while(|v| **v).count();
            assert!(valid[k..].iter().all(|v| !v), "seed {seed}: {valid:?}");
        }
    }

    #[test]
    fn restart_with_memory_lost_zeroes_and_drops_rights() {
        let (mut f, mut rng) = fabric(SimKnobs::default());
        f.mems[0].grant(1, B);
        f.post(0, 1, write(1, 0, 256, vec![5; 8]), &mut rng);
        run(&mut f, &mut rng, 0, 50);
        assert_eq!(&f.mems[0].log()[256..264], &[5u8; 8][..]);
        f.crash(0);
        f.restart(0, true);
        assert!(f.mems[0].log().iter().all(|b| *b == 0));
        assert!(f.mems[0].writers().is_empty());
        f.crash(0);
        f.mems[0].write_log_owner(256, &[6; 8]);
        f.restart(0, false);
        assert_eq!(&f.mems[0].log()[256..264], &[6u8; 8][..]);
    }
}
