//! Pull-score leader election (Mu, 002; DESIGN.md §4 "Pull-score election").
//!
//! Every node reads each peer's heartbeat counter once per read period. A counter that changed
//! since the last successful read raises the peer's score by one (saturating at the cap); an
//! unchanged counter or a failed read lowers it by one (floored at zero). The alive flag has
//! hysteresis: an alive peer fails when its score drops to or below `fail_threshold`, a failed
//! peer recovers when its score rises to or above `recover_threshold`, and in between the flag
//! keeps its previous value. The leader is the first alive node in ring order.
//!
//! A slow read never counts against a peer: while a read is outstanding no new read of that peer
//! is posted, and the peer's score moves only when the read completes.
//!
//! Sans-I/O: the caller supplies time (abstract ticks) in [`Election::tick`], posts the emitted
//! [`ElectionAction::ReadHeartbeat`]s on its fabric, and reports each completion, success, error
//! or time-out, to [`Election::on_read`] with the action's token.

use super::{NodeId, MAX_NODES};

/// What the host's process table says of a peer's data plane whose heartbeat did not move
/// ([`Election::on_read_seen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerProcess {
    /// Not known (another host), or stopped: the unchanged counter counts against it.
    Unknown,
    /// The process runs (preempted, not dead): the unchanged counter is excused.
    Running,
    /// The process is gone: the peer fails at once.
    Gone,
}

/// The tuning of pull-score election (from the hardware profile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How often each peer's heartbeat is read.
    pub read_period_ticks: u64,
    /// Scores saturate here.
    pub score_cap: u32,
    /// An alive peer whose score drops to or below this is considered failed.
    pub fail_threshold: u32,
    /// A failed peer whose score rises to or above this is alive again.
    /// Hysteresis: `fail_threshold < recover_threshold <= score_cap`.
    pub recover_threshold: u32,
}

/// Why an [`ElectionConfig`] is invalid; each error names the offending field and value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElectionConfigError {
    #[error("read_period_ticks is {0}; it must be at least 1")]
    ZeroReadPeriod(u64),
    #[error(
        "fail_threshold is {fail_threshold}; it must be below recover_threshold \
         ({recover_threshold})"
    )]
    FailNotBelowRecover {
        fail_threshold: u32,
        recover_threshold: u32,
    },
    #[error(
        "recover_threshold is {recover_threshold}; it must not exceed score_cap ({score_cap})"
    )]
    RecoverAboveCap {
        recover_threshold: u32,
        score_cap: u32,
    },
}

impl ElectionConfig {
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        if self.read_period_ticks == 0 {
            return Err(ElectionConfigError::ZeroReadPeriod(self.read_period_ticks));
        }
        if self.fail_threshold >= self.recover_threshold {
            return Err(ElectionConfigError::FailNotBelowRecover {
                fail_threshold: self.fail_threshold,
                recover_threshold: self.recover_threshold,
            });
        }
        if self.recover_threshold > self.score_cap {
            return Err(ElectionConfigError::RecoverAboveCap {
                recover_threshold: self.recover_threshold,
                score_cap: self.score_cap,
            });
        }
        Ok(())
    }
}

/// What the election asks its driver to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElectionAction {
    /// Read `peer`'s heartbeat counter and report the result to [`Election::on_read`] with
    /// `token`.
    ReadHeartbeat { peer: NodeId, token: u64 },
}

/// What this node knows about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerState {
    score: u32,
    alive: bool,
    /// The counter of the last successful read (`None`: no successful read yet).
    last_counter: Option<u64>,
    /// The token of the read in flight, if any.
    outstanding: Option<u64>,
}

impl PeerState {
    fn fresh(cfg: &ElectionConfig) -> PeerState {
        PeerState {
            score: cfg.recover_threshold,
            alive: true,
            last_counter: None,
            outstanding: None,
        }
    }
}

/// One node's pull-score election state.
#[derive(Clone, Debug)]
pub struct Election {
    me: NodeId,
    ring: Vec<NodeId>,
    cfg: ElectionConfig,
    /// Indexed by node id; `Some` exactly for the ring members other than `me`.
    peers: [Option<PeerState>; MAX_NODES],
    /// When the next round of reads is due (`None`: at the next tick).
    next_read_at: Option<u64>,
    /// The next read token; tokens are unique for the life of this `Election`.
    next_token: u64,
}

fn check_ring(ring: &[NodeId]) {
    let mut seen = [false; MAX_NODES];
    for &n in ring {
        assert!(
            usize::from(n) < MAX_NODES,
            "node {n} in ring {ring:?} is not below MAX_NODES ({MAX_NODES})"
        );
        assert!(
            !seen[usize::from(n)],
            "node {n} appears twice in ring {ring:?}"
        );
        seen[usize::from(n)] = true;
    }
}

impl Election {
    /// `ring`: the node ids in ring (succession) order; `me` must be in it.
    ///
    /// Every peer starts alive with score `recover_threshold`, so a fresh cluster agrees on
    /// `ring[0]` as leader at once. Panics on an invalid config or ring (validate the profile at
    /// load with [`ElectionConfig::validate`]).
    pub fn new(me: NodeId, ring: Vec<NodeId>, cfg: ElectionConfig) -> Election {
        if let Err(e) = cfg.validate() {
            panic!("invalid election config: {e}");
        }
        check_ring(&ring);
        assert!(ring.contains(&me), "node {me} is not in its ring {ring:?}");
        let mut peers = [None; MAX_NODES];
        for &n in &ring {
            if n != me {
                peers[usize::from(n)] = Some(PeerState::fresh(&cfg));
            }
        }
        Election {
            me,
            ring,
            cfg,
            peers,
            next_read_at: None,
            next_token: 1,
        }
    }

    /// Called on every step with the current time; when a read period has elapsed, emits one
    /// heartbeat read per peer in ring order (never for `me`), but not for a peer whose previous
    /// read is still outstanding (a slow read is skipped: it never counts against the peer).
    ///
    /// The first tick reads at once. Rounds keep their cadence; a caller that ticks late gets
    /// one round, not a burst of missed ones.
    pub fn tick(&mut self, now: u64, out: &mut Vec<ElectionAction>) {
        let due = self.next_read_at.unwrap_or(now);
        if now < due {
            return;
        }
        let period = self.cfg.read_period_ticks;
        let mut next = due.saturating_add(period);
        if next <= now {
            next = now.saturating_add(period);
        }
        self.next_read_at = Some(next);

        for &peer in &self.ring {
            let Some(state) = self.peers[usize::from(peer)].as_mut() else {
                continue; // me
            };
            if state.outstanding.is_some() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            state.outstanding = Some(token);
            out.push(ElectionAction::ReadHeartbeat { peer, token });
        }
    }

    /// The completion of a heartbeat read: `Some(counter)` read successfully, `None` failed or
    /// timed out. A stale token (not the outstanding read for that peer) is ignored.
    ///
    /// A counter different from the last one seen raises the score by 1 (capped); an unchanged
    /// counter or a failed read lowers it by 1 (floored at 0). The first successful read of a
    /// peer only records its counter (there is nothing to compare it with). Then the alive flag
    /// follows the hysteresis thresholds.
    pub fn on_read(&mut self, peer: NodeId, token: u64, counter: Option<u64>) {
        self.on_read_seen(peer, token, counter, PeerProcess::Unknown);
    }

    /// [`Election::on_read`] with what the host's process table says of the peer's data plane
    /// (the caller looks only where the peer runs on this host, and only when its counter did
    /// not move): [`PeerProcess::Running`] excuses an unchanged counter (the process was
    /// preempted, not dead: the score stays), [`PeerProcess::Gone`] fails the peer at once.
    pub fn on_read_seen(
        &mut self,
        peer: NodeId,
        token: u64,
        counter: Option<u64>,
        process: PeerProcess,
    ) {
        let cfg = &self.cfg;
        let Some(state) = self
            .peers
            .get_mut(usize::from(peer))
            .and_then(Option::as_mut)
        else {
            return; // me, or not (any more) in the ring
        };
        if state.outstanding != Some(token) {
            return;
        }
        state.outstanding = None;
        match (state.last_counter, counter) {
            (_, None) => state.score = state.score.saturating_sub(1),
            (None, Some(c)) => state.last_counter = Some(c),
            (Some(last), Some(c)) if last != c => {
                state.last_counter = Some(c);
                state.score = state.score.saturating_add(1).min(cfg.score_cap);
            }
            (Some(_), Some(_)) => match process {
                PeerProcess::Running => {}
                PeerProcess::Gone => state.score = 0,
                PeerProcess::Unknown => state.score = state.score.saturating_sub(1),
            },
        }
        if state.alive && state.score <= cfg.fail_threshold {
            state.alive = false;
        } else if !state.alive && state.score >= cfg.recover_threshold {
            state.alive = true;
        }
    }

    /// Forget outstanding reads and restart scoring (used when a node restarts or resumes from a
    /// pause): completions of reads posted before are ignored, and a new round of reads is due at
    /// the next tick. Scores, alive flags and the last counters seen are kept.
    pub fn reset_outstanding(&mut self) {
        for state in self.peers.iter_mut().flatten() {
            state.outstanding = None;
        }
        self.next_read_at = None;
    }

    /// Replace the ring (reconfiguration); keeps the state (score, alive flag, last counter,
    /// outstanding read) of nodes that remain. New nodes start fresh, like in [`Election::new`];
    /// completions for removed nodes are ignored. `me` may be absent from the new ring (a node
    /// being removed still follows the election); it is then never leader.
    pub fn set_ring(&mut self, ring: Vec<NodeId>) {
        check_ring(&ring);
        let mut peers = [None; MAX_NODES];
        for &n in &ring {
            if n != self.me {
                let i = usize::from(n);
                peers[i] = Some(self.peers[i].unwrap_or_else(|| PeerState::fresh(&self.cfg)));
            }
        }
        self.peers = peers;
        self.ring = ring;
    }

    /// Whether `peer` is considered alive. `me` is always alive; a node outside the ring is not.
    pub fn is_alive(&self, peer: NodeId) -> bool {
        if peer == self.me {
            return true;
        }
        self.peer(peer).is_some_and(|s| s.alive)
    }

    /// `peer`'s score: `score_cap` for `me`, 0 for a node outside the ring.
    pub fn score(&self, peer: NodeId) -> u32 {
        if peer == self.me {
            return self.cfg.score_cap;
        }
        self.peer(peer).map_or(0, |s| s.score)
    }

    /// The first alive node in ring order.
    pub fn leader(&self) -> Option<NodeId> {
        self.ring.iter().copied().find(|&n| self.is_alive(n))
    }

    pub fn ring(&self) -> &[NodeId] {
        &self.ring
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    fn peer(&self, peer: NodeId) -> Option<&PeerState> {
        self.peers.get(usize::from(peer)).and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ElectionConfig {
        ElectionConfig {
            read_period_ticks: 10,
            score_cap: 7,
            fail_threshold: 2,
            recover_threshold: 5,
        }
    }

    /// What one peer's read does in a round.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Read {
        /// Completes with a changed counter.
        Beat,
        /// Completes with the same counter as before.
        Stall,
        /// Completes with an error or time-out.
        Fail,
        /// Does not complete this round.
        Slow,
    }
    use Read::*;

    /// Drives an election round by round: tick, then complete each peer's read as told.
    struct Harness {
        e: Election,
        now: u64,
        counters: [u64; MAX_NODES],
        /// Reads posted and not yet completed, by peer.
        pending: [Option<u64>; MAX_NODES],
    }

    impl Harness {
        /// A harness whose peers have all had their baseline read (scores unchanged by it).
        fn new(me: NodeId, ring: Vec<NodeId>, cfg: ElectionConfig) -> Harness {
            let mut h = Harness {
                e: Election::new(me, ring.clone(), cfg),
                now: 0,
                counters: [100; MAX_NODES],
                pending: [None; MAX_NODES],
            };
            let all: Vec<(NodeId, Read)> = ring.iter().map(|&n| (n, Stall)).collect();
            h.round(&all);
            h
        }

        /// Tick; record the reads posted; complete the listed peers' reads (others stay
        /// pending); advance time by one period. Returns the reads posted.
        fn round(&mut self, reads: &[(NodeId, Read)]) -> Vec<ElectionAction> {
            let mut out = Vec::new();
            self.e.tick(self.now, &mut out);
            for a in &out {
                let ElectionAction::ReadHeartbeat { peer, token } = *a;
                assert!(
                    self.pending[usize::from(peer)].is_none(),
                    "double read of {peer}"
                );
                self.pending[usize::from(peer)] = Some(token);
            }
            for &(peer, read) in reads {
                self.complete(peer, read);
            }
            self.now += self.e.config().read_period_ticks;
            out
        }

        fn complete(&mut self, peer: NodeId, read: Read) {
            let i = usize::from(peer);
            let counter = match read {
                Slow => return,
                Beat => {
                    self.counters[i] += 1;
                    Some(self.counters[i])
                }
                Stall => Some(self.counters[i]),
                Fail => None,
            };
            if let Some(token) = self.pending[i].take() {
                self.e.on_read(peer, token, counter);
            }
        }

        fn state(&self, peer: NodeId) -> (u32, bool) {
            (self.e.score(peer), self.e.is_alive(peer))
        }
    }

    #[test]
    fn fresh_cluster_agrees_on_ring_head() {
        for me in [0u8, 1, 2] {
            let e = Election::new(me, vec![0, 1, 2], cfg());
            assert_eq!(e.leader(), Some(0));
            for p in [0u8, 1, 2] {
                assert!(e.is_alive(p));
            }
            assert_eq!(e.score((me + 1) % 3), cfg().recover_threshold);
        }
    }

    #[test]
    fn first_read_is_a_baseline() {
        let mut e = Election::new(0, vec![0, 1], cfg());
        let mut out = Vec::new();
        e.tick(0, &mut out);
        assert_eq!(
            out,
            vec![ElectionAction::ReadHeartbeat { peer: 1, token: 1 }]
        );
        e.on_read(1, 1, Some(42));
        assert_eq!(e.score(1), cfg().recover_threshold);
        out.clear();
        e.tick(10, &mut out);
        e.on_read(1, 2, Some(43));
        assert_eq!(e.score(1), cfg().recover_threshold + 1);
    }

    /// Golden table: one peer's (score, alive) after each read, from the initial (5, alive),
    /// with fail_threshold 2, recover_threshold 5, score_cap 7. Covers the fall through the
    /// hysteresis band, the floor, the climb back through the band, the cap, and a second fall.
    const GOLDEN_TRAJECTORY: &[(Read, u32, bool)] = &[
        (Stall, 4, true),
        (Fail, 3, true),   // in the band, still alive
        (Stall, 2, false), // at fail_threshold: dead
        (Beat, 3, false),  // back in the band: still dead
        (Beat, 4, false),
        (Fail, 3, false),
        (Stall, 2, false),
        (Fail, 1, false),
        (Stall, 0, false),
        (Fail, 0, false), // floor
        (Stall, 0, false),
        (Beat, 1, false),
        (Beat, 2, false),
        (Beat, 3, false),
        (Beat, 4, false),
        (Beat, 5, true), // at recover_threshold: alive
        (Beat, 6, true),
        (Beat, 7, true),
        (Beat, 7, true), // cap
        (Stall, 6, true),
        (Fail, 5, true),
        (Stall, 4, true),
        (Beat, 5, true),
        (Stall, 4, true),
        (Stall, 3, true), // in the band, still alive
        (Fail, 2, false),
    ];

    #[test]
    fn golden_score_trajectory() {
        let mut h = Harness::new(0, vec![0, 1], cfg());
        assert_eq!(h.state(1), (5, true));
        for (i, &(read, score, alive)) in GOLDEN_TRAJECTORY.iter().enumerate() {
            h.round(&[(1, read)]);
            assert_eq!(h.state(1), (score, alive), "step {i}: {read:?}");
        }
    }

    /// Golden table of single transitions: (score before, alive before, read) → (score after,
    /// alive after), same config.
    const GOLDEN_TRANSITIONS: &[(u32, bool, Read, u32, bool)] = &[
        // Alive: dies only at or below fail_threshold (2).
        (4, true, Stall, 3, true),
        (3, true, Stall, 2, false),
        (3, true, Fail, 2, false),
        (3, true, Beat, 4, true),
        (6, true, Fail, 5, true),
        (5, true, Fail, 4, true),
        (7, true, Beat, 7, true),
        // Dead: recovers only at or above recover_threshold (5).
        (3, false, Beat, 4, false),
        (4, false, Beat, 5, true),
        (4, false, Stall, 3, false),
        (3, false, Fail, 2, false),
        (0, false, Fail, 0, false),
        (0, false, Stall, 0, false),
        (0, false, Beat, 1, false),
        // Slow: nothing moves.
        (4, true, Slow, 4, true),
        (3, false, Slow, 3, false),
        (0, false, Slow, 0, false),
    ];

    /// Brings peer 1 to (score, alive) through real reads.
    fn reach(h: &mut Harness, score: u32, alive: bool) {
        let c = h.e.config().clone();
        if !alive {
            // Fall to the floor (dead), then climb (below recover, so still dead).
            assert!(score < c.recover_threshold);
            while h.state(1) != (0, false) {
                h.round(&[(1, Fail)]);
            }
        } else {
            assert!(score > c.fail_threshold);
            // Make sure the peer is alive first.
            while !h.e.is_alive(1) {
                h.round(&[(1, Beat)]);
            }
            while h.e.score(1) > score {
                h.round(&[(1, Stall)]);
            }
        }
        while h.e.score(1) < score {
            h.round(&[(1, Beat)]);
        }
        assert_eq!(h.state(1), (score, alive));
    }

    #[test]
    fn golden_threshold_transitions() {
        for &(s0, a0, read, s1, a1) in GOLDEN_TRANSITIONS {
            let mut h = Harness::new(0, vec![0, 1], cfg());
            reach(&mut h, s0, a0);
            h.round(&[(1, read)]);
            assert_eq!(
                h.state(1),
                (s1, a1),
                "from ({s0}, alive {a0}) after {read:?}"
            );
        }
    }

    #[test]
    fn slow_reads_never_lower_a_score() {
        let mut h = Harness::new(0, vec![0, 1, 2], cfg());
        // Peer 1's read hangs for many periods; peer 2 keeps beating.
        let posted = h.round(&[(2, Beat)]);
        assert_eq!(posted.len(), 2);
        let ElectionAction::ReadHeartbeat {
            token: slow_token, ..
        } = posted
            .iter()
            .copied()
            .find(|ElectionAction::ReadHeartbeat { peer, .. }| *peer == 1)
            .unwrap();
        for _ in 0..20 {
            let posted = h.round(&[(2, Beat)]);
            // No new read of peer 1 while its read is outstanding.
            assert_eq!(posted.len(), 1, "{posted:?}");
            assert!(matches!(
                posted[0],
                ElectionAction::ReadHeartbeat { peer: 2, .. }
            ));
        }
        assert_eq!(
            h.state(1),
            (5, true),
            "a slow read must not count against the peer"
        );
        assert_eq!(h.state(2), (7, true));

        // A stale token (an old one, or another peer's) is ignored.
        h.e.on_read(1, slow_token + 1000, None);
        h.e.on_read(1, slow_token - 1, None);
        let ElectionAction::ReadHeartbeat { token: t2, .. } = h.round(&[])[0];
        h.e.on_read(1, t2, None); // peer 2's token, reported for peer 1
        assert_eq!(h.state(1), (5, true));

        // The late completion, with a changed counter, still counts.
        h.e.on_read(1, slow_token, Some(h.counters[1] + 1));
        assert_eq!(h.state(1), (6, true));
        // Completing the same token twice does nothing.
        h.e.on_read(1, slow_token, Some(h.counters[1] + 2));
        assert_eq!(h.state(1), (6, true));
        h.pending[1] = None;
        h.counters[1] += 1;
        // And peer 1 is read again from the next round.
        let posted = h.round(&[(1, Stall), (2, Beat)]);
        assert!(posted
            .iter()
            .any(|a| matches!(a, ElectionAction::ReadHeartbeat { peer: 1, .. })));
        assert_eq!(h.state(1), (5, true));
    }

    #[test]
    fn failed_reads_lower_and_kill() {
        let mut h = Harness::new(0, vec![0, 1], cfg());
        h.round(&[(1, Fail)]);
        assert_eq!(h.state(1), (4, true));
        h.round(&[(1, Fail)]);
        h.round(&[(1, Fail)]);
        assert_eq!(h.state(1), (2, false));
    }

    #[test]
    fn leader_follows_ring_order() {
        // Ring order differs from id order: 2 leads, then 0, then 1 (me).
        let mut h = Harness::new(1, vec![2, 0, 1], cfg());
        assert_eq!(h.e.leader(), Some(2));
        // 2 dies (3 failed reads: 5 → 2), 0 keeps beating.
        for _ in 0..3 {
            h.round(&[(2, Fail), (0, Beat)]);
        }
        assert!(!h.e.is_alive(2));
        assert_eq!(h.e.leader(), Some(0));
        // 0 dies too (7 → 2): I am the only alive node.
        for _ in 0..5 {
            h.round(&[(2, Fail), (0, Stall)]);
        }
        assert!(!h.e.is_alive(0));
        assert_eq!(h.e.leader(), Some(1));
        // 2 recovers (0 → 5 takes five beats); leadership returns to it, not to 0.
        for i in 0..5 {
            assert_eq!(h.e.leader(), Some(1), "beat {i}");
            h.round(&[(2, Beat), (0, Stall)]);
        }
        assert!(h.e.is_alive(2));
        assert_eq!(h.e.leader(), Some(2));
        // Never a read of me.
        let posted = h.round(&[]);
        assert!(posted
            .iter()
            .all(|a| !matches!(a, ElectionAction::ReadHeartbeat { peer: 1, .. })));
        assert!(h.e.is_alive(1));
        assert_eq!(h.e.score(1), cfg().score_cap);
    }

    #[test]
    fn tick_cadence() {
        let mut e = Election::new(0, vec![0, 1, 2], cfg());
        let mut out = Vec::new();
        e.tick(3, &mut out);
        assert_eq!(
            out,
            vec![
                ElectionAction::ReadHeartbeat { peer: 1, token: 1 },
                ElectionAction::ReadHeartbeat { peer: 2, token: 2 },
            ]
        );
        e.on_read(1, 1, Some(1));
        e.on_read(2, 2, Some(1));
        out.clear();
        e.tick(12, &mut out);
        assert!(out.is_empty(), "period not elapsed");
        e.tick(13, &mut out);
        assert_eq!(out.len(), 2);
        e.on_read(1, 3, Some(2));
        e.on_read(2, 4, Some(2));
        // A late tick gives one round, not a burst, and the cadence restarts from it.
        out.clear();
        e.tick(100, &mut out);
        assert_eq!(out.len(), 2);
        e.on_read(1, 5, Some(3));
        e.on_read(2, 6, Some(3));
        out.clear();
        e.tick(109, &mut out);
        assert!(out.is_empty());
        e.tick(110, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn reset_outstanding_forgets_reads_and_keeps_scores() {
        let mut h = Harness::new(0, vec![0, 1, 2], cfg());
        h.round(&[(1, Stall), (2, Beat)]);
        assert_eq!(h.state(1), (4, true));
        assert_eq!(h.state(2), (6, true));
        // A round whose reads are left hanging (say this node was paused).
        let old = h.round(&[]);
        assert_eq!(old.len(), 2);
        h.e.reset_outstanding();
        // Reads are due at once, even before the period elapses, and for both peers.
        let mut out = Vec::new();
        h.e.tick(h.now - 1, &mut out);
        assert_eq!(out.len(), 2);
        // The pre-reset completions are ignored.
        for a in &old {
            let ElectionAction::ReadHeartbeat { peer, token } = *a;
            h.e.on_read(peer, token, Some(h.counters[usize::from(peer)] + 1));
        }
        assert_eq!(h.state(1), (4, true));
        assert_eq!(h.state(2), (6, true));
        // The new reads count; last counters were kept, so a changed counter raises at once.
        for a in &out {
            let ElectionAction::ReadHeartbeat { peer, token } = *a;
            h.e.on_read(peer, token, Some(h.counters[usize::from(peer)] + 1));
        }
        assert_eq!(h.state(1), (5, true));
        assert_eq!(h.state(2), (7, true));
    }

    #[test]
    fn set_ring_keeps_remaining_scores() {
        let mut h = Harness::new(0, vec![0, 1, 2], cfg());
        h.round(&[(1, Fail), (2, Slow)]);
        let t2 = h.pending[2].expect("peer 2's read is outstanding");
        assert_eq!(h.state(1), (4, true));
        // Replace 2 by 3, and put 3 first.
        h.e.set_ring(vec![3, 0, 1]);
        assert_eq!(h.e.ring(), &[3, 0, 1]);
        assert_eq!(h.state(1), (4, true), "kept");
        assert_eq!(h.state(3), (5, true), "fresh");
        assert_eq!(h.state(2), (0, false), "removed");
        assert_eq!(h.e.leader(), Some(3));
        // A completion for the removed node is ignored; it is not read any more.
        h.e.on_read(2, t2, Some(1));
        assert_eq!(h.state(2), (0, false));
        h.pending[2] = None;
        let posted = h.round(&[(1, Stall), (3, Stall)]);
        let peers: Vec<NodeId> = posted
            .iter()
            .map(|ElectionAction::ReadHeartbeat { peer, .. }| *peer)
            .collect();
        assert_eq!(peers, vec![3, 1]);
        assert_eq!(h.state(1), (3, true));
        assert_eq!(h.state(3), (5, true), "baseline read");
        // A ring without me: I follow, never lead.
        h.e.set_ring(vec![3, 1]);
        assert_eq!(h.e.leader(), Some(3));
        for _ in 0..3 {
            h.round(&[(3, Fail), (1, Fail)]);
        }
        assert_eq!(h.e.leader(), None);
    }

    #[test]
    fn a_running_process_excuses_a_stall_and_a_gone_one_fails_at_once() {
        let mut e = Election::new(0, vec![0, 1, 2], cfg());
        let mut out = Vec::new();
        let mut now = 0;
        let mut read = |e: &mut Election, peer: NodeId, counter: u64, process: PeerProcess| {
            out.clear();
            e.tick(now, &mut out);
            now += e.config().read_period_ticks;
            for a in &out {
                let ElectionAction::ReadHeartbeat { peer: p, token } = *a;
                let c = if p == peer { counter } else { 100 + now };
                let process = if p == peer {
                    process
                } else {
                    PeerProcess::Unknown
                };
                e.on_read_seen(p, token, Some(c), process);
            }
        };
        // A baseline, then many unchanged counters from a running process: still alive.
        for _ in 0..20 {
            read(&mut e, 1, 7, PeerProcess::Running);
        }
        assert!(e.is_alive(1));
        assert_eq!(e.score(1), cfg().recover_threshold);
        // The same stalls without the process table: it fails after the usual drops.
        for _ in 0..(cfg().recover_threshold - cfg().fail_threshold) {
            assert!(e.is_alive(1));
            read(&mut e, 1, 7, PeerProcess::Unknown);
        }
        assert!(!e.is_alive(1));
        // Node 2's process goes: one read fails it.
        assert!(e.is_alive(2));
        read(&mut e, 2, 5, PeerProcess::Unknown);
        read(&mut e, 2, 5, PeerProcess::Gone);
        assert!(!e.is_alive(2));
        assert_eq!(e.score(2), 0);
    }

    #[test]
    fn config_validation_names_the_field() {
        assert_eq!(cfg().validate(), Ok(()));
        let cases: [(ElectionConfig, &[&str]); 4] = [
            (
                ElectionConfig {
                    read_period_ticks: 0,
                    ..cfg()
                },
                &["read_period_ticks", "0"],
            ),
            (
                ElectionConfig {
                    fail_threshold: 5,
                    ..cfg()
                },
                &["fail_threshold", "5", "recover_threshold"],
            ),
            (
                ElectionConfig {
                    fail_threshold: 6,
                    ..cfg()
                },
                &["fail_threshold", "6"],
            ),
            (
                ElectionConfig {
                    recover_threshold: 8,
                    ..cfg()
                },
                &["recover_threshold", "8", "score_cap", "7"],
            ),
        ];
        for (c, words) in cases {
            let err = c.validate().expect_err("invalid config accepted");
            let msg = err.to_string();
            for w in words {
                assert!(msg.contains(w), "{msg:?} should mention {w:?}");
            }
        }
        // The edges of the valid range.
        let edge = ElectionConfig {
            read_period_ticks: 1,
            score_cap: 1,
            fail_threshold: 0,
            recover_threshold: 1,
        };
        assert_eq!(edge.validate(), Ok(()));
    }

    #[test]
    #[should_panic(expected = "not in its ring")]
    fn new_requires_me_in_ring() {
        Election::new(3, vec![0, 1, 2], cfg());
    }

    #[test]
    #[should_panic(expected = "appears twice")]
    fn ring_rejects_duplicates() {
        Election::new(0, vec![0, 1, 1], cfg());
    }
}
