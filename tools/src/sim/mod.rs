//! The deterministic simulator: whole clusters in one thread on the `sim` fabric, faults drawn
//! from a seed, and the invariants checked at every step.
//!
//! Each seed draws the cluster size (unless fixed), the protocol knobs (window, batch, score
//! thresholds, periods), the fabric's timing and a fault schedule (swarm testing: each run turns
//! some fault kinds on and others off), runs concurrent clients issuing KV operations with retries,
//! and checks:
//! - at every step: one value chosen per slot and never changed ([`oracle`]); one value per
//!   (slot, ballot); a leader only counts a slot chosen that a majority accepted; every replica
//!   applies a prefix of the chosen log, in order; at most one node can write any log;
//! - at the end: the client history is linearizable; every acknowledged write is in the final
//!   state; replicas at equal applied indexes have equal state; commits resumed within a bound
//!   after the last fault healed and every request was answered.
//!
//! A seed replays exactly: everything random comes from one generator seeded by it.

pub mod oracle;
pub mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use oracle::Violation;
pub use world::{Event, Fault, FaultCounts, RunReport, RunSpec, Script, Target, World};

/// Runs one seed; a panic inside the protocol is reported as a violation, not a crash.
pub fn run_seed(spec: RunSpec) -> RunReport {
    let seed = spec.seed;
    let replicas = spec.replicas;
    match catch_unwind(AssertUnwindSafe(|| World::new(spec).run())) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            RunReport {
                violation: Some(Violation {
                    tick: 0,
                    invariant: "no panic",
                    detail: msg,
                }),
                ..RunReport::new(seed, replicas.unwrap_or(0))
            }
        }
    }
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub violations: u64,
    pub faults: FaultCounts,
    pub leader_changes: u64,
    pub seeds_leader_crashed: u64,
    pub seeds_leader_paused: u64,
    pub memory_lost_restarts: u64,
    /// Log wraps (highest chosen slot over the log's capacity), summed over seeds.
    pub log_wraps: u64,
    pub snapshots_installed: u64,
    pub ops_acked: u64,
    pub chosen_slots: u64,
    /// The longest time, over all seeds, from the last heal to the next chosen slot.
    pub max_resume_ticks: u64,
    pub first_failing_seed: Option<u64>,
    pub reconfigs_asked: u64,
    pub reconfigs_refused: u64,
    pub reconfigs_chosen: u64,
    pub ring_repairs: u64,
}

impl Summary {
    pub fn add(&mut self, r: &RunReport) {
        self.seeds += 1;
        if r.violation.is_some() {
            self.violations += 1;
            self.first_failing_seed.get_or_insert(r.seed);
        }
        self.faults.crash += r.faults.crash;
        self.faults.pause += r.faults.pause;
        self.faults.partition += r.faults.partition;
        self.faults.loss += r.faults.loss;
        self.faults.slow += r.faults.slow;
        self.leader_changes += r.leader_changes;
        self.seeds_leader_crashed += u64::from(r.leader_crashed);
        self.seeds_leader_paused += u64::from(r.leader_paused);
        self.memory_lost_restarts += r.memory_lost_restarts;
        self.log_wraps += r.log_wraps;
        self.snapshots_installed += r.snapshots_installed;
        self.ops_acked += r.ops_acked;
        self.chosen_slots += r.chosen_slots;
        self.max_resume_ticks = self.max_resume_ticks.max(r.resume_ticks.unwrap_or(0));
        self.reconfigs_asked += r.reconfigs_asked;
        self.reconfigs_refused += r.reconfigs_refused;
        self.reconfigs_chosen += r.reconfigs_chosen;
        self.ring_repairs += r.ring_repairs;
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        format!(
            "sim: {} seeds, {} violations, {} faults injected (crash {}, pause {}, partition {}, \
             loss {}), leader changes {}",
            self.seeds,
            self.violations,
            self.faults.total(),
            self.faults.crash,
            self.faults.pause,
            self.faults.partition,
            self.faults.loss,
            self.leader_changes
        )
    }
}
