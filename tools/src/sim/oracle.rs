//! The simulator's safety oracle: it watches every byte that lands in any log and knows, as
//! Paxos defines it, which value is chosen for which slot.
//!
//! A value is chosen for a slot once a majority of acceptors has accepted it at one ballot. The
//! oracle records every acceptance it sees (a valid entry appearing in a log, by a full write or
//! a ballot re-stamp); acceptance is history, so a node that later loses its memory still counted.

use std::collections::HashMap;

use rapax_dataplane::fabric::sim::SimMemory;
use rapax_dataplane::fabric::LocalMemory;
use rapax_dataplane::protocol::layout::{Entry, LogGeometry, LOG_HEADER_BYTES};
use rapax_dataplane::protocol::quorum::majority;
use rapax_dataplane::protocol::{Ballot, NodeId, Slot};

/// A broken invariant, with where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub tick: u64,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tick {}: {}: {}", self.tick, self.invariant, self.detail)
    }
}

pub const AGREEMENT: &str = "agreement (one value chosen per slot)";
pub const STABILITY: &str = "stability (a chosen entry never changes)";
pub const ONE_VALUE_PER_BALLOT: &str = "one value per (slot, ballot)";
pub const LEADER_CLAIM: &str = "leader counted a slot chosen that no majority accepted";
pub const APPLIED_PREFIX: &str = "applied sequence is a prefix of the chosen log";
pub const SINGLE_WRITER: &str = "at most one writer per log";

pub struct Oracle {
    geometry: LogGeometry,
    majority: usize,
    /// (slot, ballot) → (value digest, acceptors bitmask).
    accepted: HashMap<(Slot, Ballot), (u64, u32)>,
    /// slot → chosen value digest.
    chosen: HashMap<Slot, u64>,
    /// Per node: the next slot it must apply.
    next_apply: Vec<Slot>,
}

impl Oracle {
    pub fn new(nodes: usize, geometry: LogGeometry) -> Oracle {
        Oracle {
            geometry,
            majority: majority(nodes),
            accepted: HashMap::new(),
            chosen: HashMap::new(),
            next_apply: vec![0; nodes],
        }
    }

    pub fn chosen_count(&self) -> usize {
        self.chosen.len()
    }

    pub fn chosen(&self, slot: Slot) -> Option<u64> {
        self.chosen.get(&slot).copied()
    }

    /// Looks at what changed in `mem`'s log since the last call.
    pub fn observe(&mut self, tick: u64, mem: &mut SimMemory) -> Result<(), Violation> {
        let node = mem.id();
        if mem.writer_count() > 1 {
            return Err(Violation {
                tick,
                invariant: SINGLE_WRITER,
                detail: format!("log of node {node} writable by {:?}", mem.writers()),
            });
        }
        let g = self.geometry;
        let mut idx = Vec::new();
        for (off, len) in mem.take_dirty() {
            let end = off + len;
            if end <= LOG_HEADER_BYTES {
                continue;
            }
            let first = (off.max(LOG_HEADER_BYTES) - LOG_HEADER_BYTES) / g.slot_bytes;
            let last = (end - 1 - LOG_HEADER_BYTES) / g.slot_bytes;
            idx.extend(first..=last.min(g.capacity as usize - 1));
        }
        idx.sort_unstable();
        idx.dedup();
        for i in idx {
            let off = LOG_HEADER_BYTES + i * g.slot_bytes;
            let Ok(h) = Entry::check(&mem.log()[off..off + g.slot_bytes]) else {
                continue;
            };
            if h.slot % g.capacity != i as u64 {
                continue;
            }
            self.accept(tick, node, h.slot, h.ballot, h.value_digest)?;
        }
        Ok(())
    }

    fn accept(
        &mut self,
        tick: u64,
        node: NodeId,
        slot: Slot,
        ballot: Ballot,
        digest: u64,
    ) -> Result<(), Violation> {
        let rec = self.accepted.entry((slot, ballot)).or_insert((digest, 0));
        if rec.0 != digest {
            return Err(Violation {
                tick,
                invariant: ONE_VALUE_PER_BALLOT,
                detail: format!(
                    "slot {slot} ballot {ballot}: value {:016x} and {digest:016x} (node {node})",
                    rec.0
                ),
            });
        }
        rec.1 |= 1 << node;
        if rec.1.count_ones() as usize >= self.majority {
            match self.chosen.get(&slot) {
                None => {
                    self.chosen.insert(slot, digest);
                }
                Some(&d) if d != digest => {
                    return Err(Violation {
                        tick,
                        invariant: AGREEMENT,
                        detail: format!(
                            "slot {slot}: chosen {d:016x}, now {digest:016x} by a majority at \
                             ballot {ballot} (acceptors {:#b})",
                            rec.1
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A leader claims `slot` chosen with `digest`.
    pub fn leader_claim(
        &self,
        tick: u64,
        node: NodeId,
        slot: Slot,
        ballot: Ballot,
        digest: u64,
    ) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some(&d) if d == digest => Ok(()),
            Some(&d) => Err(Violation {
                tick,
                invariant: AGREEMENT,
                detail: format!(
                    "leader {node} at {ballot} counted slot {slot} chosen with {digest:016x}, \
                     but {d:016x} is chosen"
                ),
            }),
            None => Err(Violation {
                tick,
                invariant: LEADER_CLAIM,
                detail: format!(
                    "leader {node} at {ballot} counted slot {slot} chosen; acceptors so far: {:#b}",
                    self.accepted.get(&(slot, ballot)).map_or(0, |r| r.1)
                ),
            }),
        }
    }

    /// `node` applied `slot`: it must be its next slot and hold the chosen value.
    pub fn applied(
        &mut self,
        tick: u64,
        node: NodeId,
        slot: Slot,
        digest: u64,
    ) -> Result<(), Violation> {
        let expect = self.next_apply[node as usize];
        if slot != expect {
            return Err(Violation {
                tick,
                invariant: APPLIED_PREFIX,
                detail: format!("node {node} applied slot {slot}, expected slot {expect}"),
            });
        }
        match self.chosen.get(&slot) {
            Some(&d) if d == digest => {}
            other => {
                return Err(Violation {
                    tick,
                    invariant: APPLIED_PREFIX,
                    detail: format!(
                        "node {node} applied slot {slot} = {digest:016x}; chosen: {}",
                        other.map_or("nothing yet".to_string(), |d| format!("{d:016x}"))
                    ),
                })
            }
        }
        self.next_apply[node as usize] = slot + 1;
        Ok(())
    }

    /// The node restarted: it applies again from slot 0.
    pub fn restarted(&mut self, node: NodeId) {
        self.next_apply[node as usize] = 0;
    }
}
