//! The fabric contract as a test suite that runs against every backend.
//!
//! A backend provides a [`ContractHarness`]: a few nodes' memories and the network between them,
//! driven step by step. Each `check_*` function exercises one point of the contract and panics
//! with a message naming the point when the backend breaks it. A backend's tests call every
//! check ([`run_all`]); backends with extra fault knobs add their own tests on top.

use super::{Completion, FabricError, LocalMemory, Op, Post, Region};
use crate::protocol::layout::{cb_ack, cb_request, Entry, EntryKind, LogGeometry};
use crate::protocol::{Ballot, NodeId};

/// A backend under test: at least three nodes, each with a control block and a log of
/// [`ContractHarness::geometry`].
pub trait ContractHarness {
    fn geometry(&self) -> LogGeometry;
    /// Posts `post` from `src`.
    fn post(&mut self, src: NodeId, post: Post);
    /// Makes some progress (one tick, one poll); returns the completions it produced.
    fn step(&mut self) -> Vec<(NodeId, Completion)>;
    /// Runs until every posted operation has completed; returns the completions.
    fn drain(&mut self) -> Vec<(NodeId, Completion)>;
    /// The owner's view of `node`'s memory (grant and revoke go through it).
    fn memory(&mut self, node: NodeId) -> &mut dyn LocalMemory;
    /// Makes `node` unreachable (crashed or cut off) for everyone else.
    fn isolate(&mut self, node: NodeId);
}

/// Runs every check of the contract.
pub fn run_all(make: &mut dyn FnMut() -> Box<dyn ContractHarness>) {
    check_success_means_landed_in_posting_order(make().as_mut());
    check_writes_need_permission(make().as_mut());
    check_control_writes_touch_only_own_words(make().as_mut());
    for steps in [0, 1, 2, 3, 5, 8] {
        check_revocation_is_complete(make().as_mut(), steps);
    }
    check_grant_covers_only_the_granted_ballot(make().as_mut());
    check_unreachable_peers_complete_with_errors(make().as_mut());
}

const B1: Ballot = Ballot((1 << 8) | 1);
const B2: Ballot = Ballot((2 << 8) | 2);
const B3: Ballot = Ballot((3 << 8) | 1);

fn log_write(wr_id: u64, target: NodeId, ballot: Ballot, offset: usize, bytes: Vec<u8>) -> Post {
    Post {
        wr_id,
        target,
        op: Op::Write {
            region: Region::Log,
            offset,
            bytes,
        },
        reconnect: false,
        ballot,
    }
}

fn entry_bytes(g: &LogGeometry, slot: u64, fill: u8) -> Vec<u8> {
    let mut out = Vec::new();
    Entry {
        ballot: B1,
        slot,
        commit_hint: 0,
        kind: EntryKind::Batch,
        payload: vec![fill; g.max_payload().min(150)],
    }
    .encode(g, &mut out);
    out
}

/// A copy of a node's whole log.
fn log_of(m: &mut dyn LocalMemory) -> Vec<u8> {
    let mut buf = vec![0u8; m.log_len()];
    m.read_log(0, &mut buf);
    buf
}

/// The first offset where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn by_id(mut done: Vec<(NodeId, Completion)>) -> Vec<Completion> {
    done.sort_by_key(|(_, c)| c.wr_id);
    done.into_iter().map(|(_, c)| c).collect()
}

/// Points 1 and 2: a success means the bytes are in the target's memory; writes from one
/// endpoint to one region land in posting order.
pub fn check_success_means_landed_in_posting_order(h: &mut dyn ContractHarness) {
    let g = h.geometry();
    h.memory(0).grant(1, B1);
    for i in 0..50u64 {
        // All to one place: the last posted must be what stays.
        h.post(
            1,
            log_write(i, 0, B1, g.slot_offset(1), entry_bytes(&g, 1, i as u8)),
        );
    }
    for s in 2..10u64 {
        h.post(
            1,
            log_write(100 + s, 0, B1, g.slot_offset(s), entry_bytes(&g, s, 7)),
        );
    }
    let done = by_id(h.drain());
    assert_eq!(done.len(), 58, "contract 1: every write completes");
    assert!(
        done.iter().all(|c| c.result == Ok(None)),
        "contract 1: writes with permission succeed: {done:?}"
    );
    let log = log_of(h.memory(0));
    let at = |s: u64| &log[g.slot_offset(s)..g.slot_offset(s) + g.slot_bytes];
    let last = Entry::decode(at(1)).expect("contract 1: a successful write is visible");
    assert_eq!(
        last.payload[0], 49,
        "contract 2: writes land in posting order"
    );
    for s in 2..10 {
        assert_eq!(
            Entry::decode(at(s)).unwrap().slot,
            s,
            "contract 1: slot {s} landed"
        );
    }
}

/// Point 3, first half: a write without permission fails with a permission error and lands
/// nothing.
pub fn check_writes_need_permission(h: &mut dyn ContractHarness) {
    let g = h.geometry();
    let before = log_of(h.memory(0));
    h.post(
        1,
        log_write(1, 0, B1, g.slot_offset(0), entry_bytes(&g, 0, 1)),
    );
    let done = by_id(h.drain());
    assert_eq!(done[0].result, Err(FabricError::Permission), "contract 3");
    let changed = first_difference(&log_of(h.memory(0)), &before);
    assert!(
        changed.is_none(),
        "contract 3: log byte {changed:?} changed"
    );
}

/// Members may write only their own request and ack words of a control block.
pub fn check_control_writes_touch_only_own_words(h: &mut dyn ContractHarness) {
    let post = |wr_id, offset| Post {
        wr_id,
        target: 0,
        op: Op::Write {
            region: Region::Control,
            offset,
            bytes: 5u64.to_le_bytes().to_vec(),
        },
        reconnect: false,
        ballot: Ballot::ZERO,
    };
    h.post(1, post(1, cb_request(1)));
    h.post(1, post(2, cb_ack(1)));
    h.post(1, post(3, cb_request(2)));
    h.post(1, post(4, 0));
    let done = by_id(h.drain());
    assert_eq!(done[0].result, Ok(None));
    assert_eq!(done[1].result, Ok(None));
    assert_eq!(
        done[2].result,
        Err(FabricError::Permission),
        "another node's word"
    );
    assert_eq!(
        done[3].result,
        Err(FabricError::Permission),
        "the owner's words"
    );
    assert_eq!(h.memory(0).control_word(cb_request(1)), 5);
    assert_eq!(h.memory(0).control_word(cb_request(2)), 0);
}

/// Point 3: revocation is complete when `revoke` returns, with a writer streaming (revoked after
/// `steps` steps, so some writes have landed, some are landing and some are queued): nothing of
/// the revoked writer lands afterwards, and its in-flight and later writes fail with
/// permission errors.
pub fn check_revocation_is_complete(h: &mut dyn ContractHarness, steps: usize) {
    let g = h.geometry();
    h.memory(0).grant(1, B1);
    for i in 0..40u64 {
        h.post(
            1,
            log_write(i, 0, B1, g.slot_offset(i), entry_bytes(&g, i, 1)),
        );
    }
    let mut done = Vec::new();
    for _ in 0..steps {
        done.extend(h.step());
    }
    h.memory(0).revoke(1);
    let after_revoke = log_of(h.memory(0));
    h.memory(0).grant(2, B2);
    for i in 40..60u64 {
        h.post(
            1,
            log_write(i, 0, B1, g.slot_offset(i), entry_bytes(&g, i, 1)),
        );
    }
    done.extend(h.drain());
    let done = by_id(done);
    assert_eq!(done.len(), 60, "contract 4: every write completes");
    let changed = first_difference(&log_of(h.memory(0)), &after_revoke);
    assert!(
        changed.is_none(),
        "contract 3: a write of the revoked holder landed after revoke returned \
         (log byte {changed:?} changed)"
    );
    for c in &done {
        if let Err(e) = c.result {
            assert_eq!(
                e,
                FabricError::Permission,
                "contract 3: revoked writes fail so"
            );
        }
    }
    assert!(done[40..].iter().all(|c| c.result.is_err()), "contract 3");
    assert_eq!(h.memory(0).writers(), vec![(2, B2)]);
}

/// Permission is granted to one (node, ballot) connection: a write a node posted under an
/// older ballot never lands under a newer grant to the same node.
pub fn check_grant_covers_only_the_granted_ballot(h: &mut dyn ContractHarness) {
    let g = h.geometry();
    h.memory(0).grant(1, B1);
    h.memory(0).revoke(1);
    h.memory(0).grant(1, B3);
    // Even on a connection re-established under the old ballot (a deposed leader catching a
    // follower up), the old ballot's write is refused.
    let mut stale = log_write(1, 0, B1, g.slot_offset(3), entry_bytes(&g, 3, 1));
    stale.reconnect = true;
    h.post(1, stale);
    let mut fresh = log_write(2, 0, B3, g.slot_offset(4), entry_bytes(&g, 4, 2));
    fresh.reconnect = true;
    h.post(1, fresh);
    let done = by_id(h.drain());
    assert_eq!(done[0].result, Err(FabricError::Permission));
    assert_eq!(done[1].result, Ok(None));
    let log = log_of(h.memory(0));
    assert!(Entry::decode(&log[g.slot_offset(3)..g.slot_offset(3) + g.slot_bytes]).is_err());
    assert!(Entry::decode(&log[g.slot_offset(4)..g.slot_offset(4) + g.slot_bytes]).is_ok());
}

/// Point 4: a crashed or unreachable peer yields error completions, never a hang.
pub fn check_unreachable_peers_complete_with_errors(h: &mut dyn ContractHarness) {
    let g = h.geometry();
    let b0 = Ballot::new(1, 0);
    h.memory(2).grant(0, b0);
    h.isolate(2);
    h.post(
        0,
        log_write(1, 2, b0, g.slot_offset(0), entry_bytes(&g, 0, 1)),
    );
    h.post(
        0,
        Post {
            wr_id: 2,
            target: 2,
            op: Op::Read {
                region: Region::Control,
                offset: 0,
                len: 8,
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        },
    );
    let done = by_id(h.drain());
    assert_eq!(done.len(), 2, "contract 4: no hang");
    assert!(
        done.iter()
            .all(|c| c.result == Err(FabricError::Unreachable)),
        "contract 4: {done:?}"
    );
}
