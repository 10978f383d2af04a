//! The simulator's safety oracle: it watches every byte that lands in any log and knows, as
//! Paxos defines it, which value is chosen for which slot.
//!
//! A value is chosen for a slot once a majority of acceptors has accepted it at one ballot. The
//! oracle records every acceptance it sees (a valid entry appearing in a log, by a full write or
//! a ballot re-stamp); acceptance is history, so a node that later loses its memory still counted.
//!
//! The majority is of the configuration that governs the slot: the one made by the last chosen
//! configuration entry below it (the ring of the cluster file below the first). Each chosen change
//! must be the next epoch, and a majority of it must meet every majority of the one before.

use std::collections::{BTreeMap, HashMap};

use rapax_dataplane::fabric::sim::SimMemory;
use rapax_dataplane::fabric::LocalMemory;
use rapax_dataplane::protocol::layout::{Entry, EntryKind, LogGeometry, LOG_HEADER_BYTES};
use rapax_dataplane::protocol::membership::{quorums_intersect, Membership};
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
pub const SNAPSHOT_DIGEST: &str = "state digests agree at equal applied indexes";
pub const ONE_CONFIG_PER_EPOCH: &str = "one configuration per epoch, epochs one apart";
pub const CONFIGS_INTERSECT: &str = "quorums of consecutive configurations intersect";
pub const WELL_FORMED_BATCHES: &str = "every chosen batch splits into commands";

pub struct Oracle {
    geometry: LogGeometry,
    /// The configuration of epoch 0.
    initial: Membership,
    /// Chosen configuration entries: slot → the configuration it makes.
    confs: BTreeMap<Slot, Membership>,
    /// (slot, ballot) → the configuration a configuration entry there proposes.
    proposed_confs: HashMap<(Slot, Ballot), Membership>,
    /// (slot, ballot) → (value digest, acceptors bitmask).
    accepted: HashMap<(Slot, Ballot), (u64, u32)>,
    /// slot → chosen value digest.
    chosen: HashMap<Slot, u64>,
    /// Per node: the next slot it must apply.
    next_apply: Vec<Slot>,
    /// Applied index → the state digest there, from checkpoints and snapshots, and who said.
    digests: HashMap<Slot, (u64, NodeId)>,
}

impl Oracle {
    /// An oracle for `nodes` nodes (acceptors and spares), the first `ring` of them the ring
    /// of epoch 0.
    pub fn new(nodes: usize, ring: usize, geometry: LogGeometry) -> Oracle {
        let ring: Vec<NodeId> = (0..ring as NodeId).collect();
        Oracle {
            geometry,
            initial: Membership::initial(&ring),
            confs: BTreeMap::new(),
            proposed_confs: HashMap::new(),
            accepted: HashMap::new(),
            chosen: HashMap::new(),
            next_apply: vec![0; nodes],
            digests: HashMap::new(),
        }
    }

    pub fn chosen_count(&self) -> usize {
        self.chosen.len()
    }

    pub fn chosen(&self, slot: Slot) -> Option<u64> {
        self.chosen.get(&slot).copied()
    }

    /// The configuration that governs `slot`.
    pub fn governing(&self, slot: Slot) -> Membership {
        self.confs
            .range(..slot)
            .next_back()
            .map_or(self.initial, |(_, c)| *c)
    }

    /// The chosen configurations, epoch 0 first.
    pub fn configurations(&self) -> Vec<Membership> {
        std::iter::once(self.initial)
            .chain(self.confs.values().copied())
            .collect()
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
            if h.kind == EntryKind::Config {
                if let Some(c) = Entry::decode(&mem.log()[off..off + g.slot_bytes])
                    .ok()
                    .and_then(|e| Membership::decode(&e.payload))
                {
                    self.proposed_confs.insert((h.slot, h.ballot), c);
                }
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
        let governing = self.governing(slot);
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
        let acceptors = u64::from(rec.1);
        if governing.is_quorum(acceptors) {
            match self.chosen.get(&slot) {
                None => {
                    self.chosen.insert(slot, digest);
                    if let Some(c) = self.proposed_confs.get(&(slot, ballot)).copied() {
                        self.config_chosen(tick, slot, c)?;
                    }
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

    /// The configuration entry in `slot` is chosen: it must be the next epoch after the one
    /// governing it, with quorums meeting that one's.
    fn config_chosen(&mut self, tick: u64, slot: Slot, c: Membership) -> Result<(), Violation> {
        let prev = self.governing(slot);
        if c.epoch != prev.epoch + 1 {
            return Err(Violation {
                tick,
                invariant: ONE_CONFIG_PER_EPOCH,
                detail: format!("slot {slot} chose {c:?} while {prev:?} governs it"),
            });
        }
        if let Some((&later, d)) = self.confs.range(slot + 1..).next() {
            return Err(Violation {
                tick,
                invariant: ONE_CONFIG_PER_EPOCH,
                detail: format!("slot {slot} chose {c:?} after slot {later} chose {d:?}"),
            });
        }
        if !quorums_intersect(&prev, &c) {
            return Err(Violation {
                tick,
                invariant: CONFIGS_INTERSECT,
                detail: format!("slot {slot}: {prev:?} -> {c:?} has disjoint majorities"),
            });
        }
        self.confs.insert(slot, c);
        Ok(())
    }

    /// `node` applied the configuration change in `slot`: it must be the chosen one.
    pub fn reconfigured(
        &self,
        tick: u64,
        node: NodeId,
        slot: Slot,
        c: Membership,
    ) -> Result<(), Violation> {
        match self.confs.get(&slot) {
            Some(d) if *d == c => Ok(()),
            other => Err(Violation {
                tick,
                invariant: ONE_CONFIG_PER_EPOCH,
                detail: format!("node {node} applied {c:?} from slot {slot}; chosen: {other:?}"),
            }),
        }
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

    /// `node`'s state after every slot below `index` has `digest`: every replica at the same
    /// applied index must have the same one.
    pub fn checkpoint(
        &mut self,
        tick: u64,
        node: NodeId,
        index: Slot,
        digest: u64,
    ) -> Result<(), Violation> {
        match self.digests.get(&index) {
            None => {
                self.digests.insert(index, (digest, node));
                Ok(())
            }
            Some(&(d, _)) if d == digest => Ok(()),
            Some(&(d, by)) => Err(Violation {
                tick,
                invariant: SNAPSHOT_DIGEST,
                detail: format!(
                    "at applied index {index}: node {by} has state {d:016x}, node {node} has \
                     {digest:016x}"
                ),
            }),
        }
    }

    /// `node` installed a snapshot of the state below `index`: it applies from `index` on, and
    /// the state it installed must be the one every replica had there.
    pub fn restored(
        &mut self,
        tick: u64,
        node: NodeId,
        index: Slot,
        digest: u64,
    ) -> Result<(), Violation> {
        self.checkpoint(tick, node, index, digest)?;
        self.next_apply[node as usize] = index;
        Ok(())
    }

    /// The restarted node resumed from its own checkpoint below `index` (its digest was checked
    /// when it was taken).
    pub fn resumed(&mut self, node: NodeId, index: Slot) {
        self.next_apply[node as usize] = index;
    }

    /// The node restarted: it applies again from slot 0.
    pub fn restarted(&mut self, node: NodeId) {
        self.next_apply[node as usize] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapax_dataplane::protocol::layout::{EntryKind, ENTRY_BALLOT};

    const GEO: LogGeometry = LogGeometry {
        capacity: 16,
        slot_bytes: 128,
    };

    fn mems(n: usize) -> Vec<SimMemory> {
        (0..n)
            .map(|i| SimMemory::new(i as NodeId, GEO.log_bytes()))
            .collect()
    }

    fn put(mem: &mut SimMemory, slot: Slot, ballot: Ballot, payload: &[u8]) {
        let mut b = Vec::new();
        Entry {
            ballot,
            slot,
            commit_hint: 0,
            kind: EntryKind::Batch,
            payload: payload.to_vec(),
        }
        .encode(&GEO, &mut b);
        mem.write_log_owner(GEO.slot_offset(slot), &b);
    }

    fn digest(payload: &[u8]) -> u64 {
        Entry {
            ballot: Ballot::new(1, 0),
            slot: 0,
            commit_hint: 0,
            kind: EntryKind::Batch,
            payload: payload.to_vec(),
        }
        .value_digest()
    }

    #[test]
    fn a_majority_at_one_ballot_chooses() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        let b = Ballot::new(1, 0);
        put(&mut m[0], 5, b, b"x");
        o.observe(1, &mut m[0]).unwrap();
        assert_eq!(o.chosen(5), None);
        put(&mut m[1], 5, b, b"x");
        o.observe(2, &mut m[1]).unwrap();
        assert_eq!(o.chosen(5), Some(digest(b"x")));
        o.leader_claim(3, 0, 5, b, digest(b"x")).unwrap();
    }

    #[test]
    fn acceptances_at_different_ballots_do_not_choose() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        put(&mut m[0], 1, Ballot::new(1, 0), b"x");
        put(&mut m[1], 1, Ballot::new(2, 1), b"x");
        o.observe(1, &mut m[0]).unwrap();
        o.observe(1, &mut m[1]).unwrap();
        assert_eq!(o.chosen(1), None);
        let v = o
            .leader_claim(2, 1, 1, Ballot::new(2, 1), digest(b"x"))
            .unwrap_err();
        assert_eq!(v.invariant, LEADER_CLAIM);
    }

    #[test]
    fn a_second_value_chosen_for_a_slot_is_caught() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        for mem in &mut m[..2] {
            put(mem, 2, Ballot::new(1, 0), b"x");
            o.observe(1, mem).unwrap();
        }
        for mem in &mut m[1..] {
            put(mem, 2, Ballot::new(2, 1), b"y");
        }
        o.observe(2, &mut m[1]).unwrap();
        let v = o.observe(2, &mut m[2]).unwrap_err();
        assert_eq!(v.invariant, AGREEMENT);
    }

    #[test]
    fn two_values_at_one_ballot_are_caught() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        put(&mut m[0], 3, Ballot::new(1, 0), b"x");
        put(&mut m[1], 3, Ballot::new(1, 0), b"y");
        o.observe(1, &mut m[0]).unwrap();
        let v = o.observe(1, &mut m[1]).unwrap_err();
        assert_eq!(v.invariant, ONE_VALUE_PER_BALLOT);
    }

    #[test]
    fn a_ballot_restamp_counts_as_acceptance() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        put(&mut m[0], 4, Ballot::new(2, 0), b"x");
        put(&mut m[1], 4, Ballot::new(1, 1), b"x");
        o.observe(1, &mut m[0]).unwrap();
        o.observe(1, &mut m[1]).unwrap();
        assert_eq!(o.chosen(4), None);
        let off = GEO.slot_offset(4) + ENTRY_BALLOT;
        m[1].write_log_owner(off, &Ballot::new(2, 0).0.to_le_bytes());
        o.observe(2, &mut m[1]).unwrap();
        assert_eq!(o.chosen(4), Some(digest(b"x")));
    }

    #[test]
    fn applying_out_of_order_or_unchosen_is_caught() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        for mem in &mut m[..2] {
            put(mem, 0, Ballot::new(1, 0), b"a");
            o.observe(1, mem).unwrap();
        }
        assert_eq!(
            o.applied(2, 2, 1, digest(b"b")).unwrap_err().invariant,
            APPLIED_PREFIX
        );
        assert_eq!(
            o.applied(2, 2, 0, digest(b"b")).unwrap_err().invariant,
            APPLIED_PREFIX
        );
        o.applied(2, 2, 0, digest(b"a")).unwrap();
        o.restarted(2);
        o.applied(3, 2, 0, digest(b"a")).unwrap();
    }

    #[test]
    fn two_writers_on_one_log_are_caught() {
        let mut m = mems(3);
        let mut o = Oracle::new(3, 3, GEO);
        m[0].grant(1, Ballot::new(1, 1));
        o.observe(1, &mut m[0]).unwrap();
        m[0].grant(2, Ballot::new(1, 2));
        assert_eq!(
            o.observe(2, &mut m[0]).unwrap_err().invariant,
            SINGLE_WRITER
        );
    }
}
