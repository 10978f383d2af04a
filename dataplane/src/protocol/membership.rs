//! Configurations: the ring of acceptors in succession order, with an epoch.
//!
//! Every node of the cluster file is either in the ring (an acceptor: its log counts towards
//! quorums, and it may lead, in ring order) or a spare (a learner: the leader keeps its log up to
//! date, but its copy counts for nothing). A change is a log entry ([`EntryKind::Config`]) decided
//! like a command; the new configuration governs the slots after it. A leader proposes nothing
//! past a change until the change is chosen, so every slot is decided under one configuration.
//!
//! Each step changes one acceptor (add or remove) or only the order, so any majority of one
//! configuration meets any majority of the next ([`quorums_intersect`]): a recovering leader that
//! reads a majority of the configuration it knows finds the next one's entry, reads a majority
//! of that one in turn, and so on. A replace is two steps: the spare joins at the end of the
//! ring, then the acceptor it replaces leaves.
//!
//! [`EntryKind::Config`]: crate::protocol::layout::EntryKind::Config

use thiserror::Error;

use super::quorum::majority;
use super::{NodeId, MAX_NODES};

/// Bytes of an encoded [`Membership`]: epoch, ring length, ring.
pub const MEMBERSHIP_BYTES: usize = 8 + 1 + MAX_NODES + 7;

/// One configuration: the epoch and the acceptors in ring (succession) order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Membership {
    pub epoch: u64,
    len: u8,
    ids: [NodeId; MAX_NODES],
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "epoch {} ring {:?}", self.epoch, self.ring())
    }
}

/// A change an operator (or the leader's ring repair) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A spare joins the ring, at its end.
    Add(NodeId),
    /// An acceptor leaves the ring and becomes a spare.
    Remove(NodeId),
    /// A spare takes an acceptor's place in the ring (two steps: the spare joins at the end,
    /// the acceptor leaves).
    Replace { old: NodeId, new: NodeId },
    /// The same acceptors in a new succession order.
    Reorder(Vec<NodeId>),
}

/// The operation tag of an operator's change request on the client path: `client` (u64),
/// `seq` (u64), this tag, then [`Change::encode`]. It never reaches the log as a command: the
/// leader turns it into configuration entries.
pub const ADMIN_RECONFIG: u8 = 0xc0;

impl Change {
    /// Appends the change's encoding: a kind byte, then the node ids (a reorder: the count
    /// first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Change::Add(n) => out.extend_from_slice(&[1, *n]),
            Change::Remove(n) => out.extend_from_slice(&[2, *n]),
            Change::Replace { old, new } => out.extend_from_slice(&[3, *old, *new]),
            Change::Reorder(r) => {
                out.extend_from_slice(&[4, r.len() as u8]);
                out.extend_from_slice(r);
            }
        }
    }

    /// The change in exactly `b`, or `None`.
    pub fn decode(b: &[u8]) -> Option<Change> {
        match b {
            [1, n] => Some(Change::Add(*n)),
            [2, n] => Some(Change::Remove(*n)),
            [3, old, new] => Some(Change::Replace {
                old: *old,
                new: *new,
            }),
            [4, len, rest @ ..] if rest.len() == *len as usize && rest.len() <= MAX_NODES => {
                Some(Change::Reorder(rest.to_vec()))
            }
            _ => None,
        }
    }

    /// The request bytes of this change from `client` at `seq`.
    pub fn request(&self, client: u64, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 2 + MAX_NODES);
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.push(ADMIN_RECONFIG);
        self.encode(&mut out);
        out
    }

    /// `(client, seq, change)` if `command` is a change request (`Some(None)`: it is one, but
    /// malformed); `None` if it is not one at all.
    pub fn parse_request(command: &[u8]) -> Option<(u64, u64, Option<Change>)> {
        if command.len() < 17 || command[16] != ADMIN_RECONFIG {
            return None;
        }
        let client = u64::from_le_bytes(command[..8].try_into().ok()?);
        let seq = u64::from_le_bytes(command[8..16].try_into().ok()?);
        Some((client, seq, Change::decode(&command[17..])))
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add(n) => write!(f, "add {n}"),
            Change::Remove(n) => write!(f, "remove {n}"),
            Change::Replace { old, new } => write!(f, "replace {old} with {new}"),
            Change::Reorder(r) => write!(f, "reorder {r:?}"),
        }
    }
}

/// Why a change was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReconfigError {
    #[error(
        "this node does not lead (leader hint: {leader_hint:?}); send the change to the leader"
    )]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("a change is in flight already (to epoch {epoch}); wait for it to finish")]
    InFlight { epoch: u64 },
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
    #[error("node {0} is in the ring already")]
    AlreadyInRing(NodeId),
    #[error("node {0} is not in the ring")]
    NotInRing(NodeId),
    #[error("the ring would have {len} acceptors, at most {max} fit")]
    RingFull { len: usize, max: usize },
    #[error("removing {node} leaves {live} live acceptors of {len}, below a majority ({need})")]
    BelowMajority {
        node: NodeId,
        live: usize,
        len: usize,
        need: usize,
    },
    #[error("removing {0} would leave the ring empty")]
    Empty(NodeId),
    #[error("a reorder must name every acceptor exactly once: ring {ring:?}, given {given:?}")]
    BadOrder {
        ring: Vec<NodeId>,
        given: Vec<NodeId>,
    },
    #[error("node {0} is not caught up (not an active learner of this leader)")]
    NotCaughtUp(NodeId),
}

impl Membership {
    /// Epoch 0: the ring of the cluster file.
    pub fn initial(ring: &[NodeId]) -> Membership {
        Membership::new(0, ring)
    }

    pub fn new(epoch: u64, ring: &[NodeId]) -> Membership {
        assert!(
            !ring.is_empty() && ring.len() <= MAX_NODES,
            "a ring holds 1..={MAX_NODES} acceptors"
        );
        let mut ids = [0; MAX_NODES];
        ids[..ring.len()].copy_from_slice(ring);
        Membership {
            epoch,
            len: ring.len() as u8,
            ids,
        }
    }

    /// The acceptors in succession order.
    pub fn ring(&self) -> &[NodeId] {
        &self.ids[..self.len as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, n: NodeId) -> bool {
        self.ring().contains(&n)
    }

    /// The ring as a bit set (bit `n` for node `n`).
    pub fn mask(&self) -> u64 {
        self.ring().iter().fold(0, |m, &n| m | 1 << n)
    }

    pub fn majority(&self) -> usize {
        majority(self.len())
    }

    /// Whether the nodes of `set` (a bit set) hold a majority of this ring.
    pub fn is_quorum(&self, set: u64) -> bool {
        (set & self.mask()).count_ones() as usize >= self.majority()
    }

    pub fn encode(&self) -> [u8; MEMBERSHIP_BYTES] {
        let mut b = [0u8; MEMBERSHIP_BYTES];
        b[..8].copy_from_slice(&self.epoch.to_le_bytes());
        b[8] = self.len;
        b[9..9 + MAX_NODES].copy_from_slice(&self.ids);
        b
    }

    /// The configuration in `b`; `None` unless it is a well-formed one (1..=16 distinct
    /// acceptors below 16, nothing past the ring).
    pub fn decode(b: &[u8]) -> Option<Membership> {
        if b.len() < MEMBERSHIP_BYTES {
            return None;
        }
        let epoch = u64::from_le_bytes(b[..8].try_into().ok()?);
        let len = b[8] as usize;
        if len == 0 || len > MAX_NODES {
            return None;
        }
        let ring = &b[9..9 + len];
        let mut seen = 0u64;
        for &n in ring {
            if n as usize >= MAX_NODES || seen & (1 << n) != 0 {
                return None;
            }
            seen |= 1 << n;
        }
        if b[9 + len..MEMBERSHIP_BYTES].iter().any(|&x| x != 0) {
            return None;
        }
        Some(Membership::new(epoch, ring))
    }

    /// The configurations that carry out `change`, one step each, from this one. `nodes` are
    /// the cluster file's nodes; `live` those known alive (the leader and its active
    /// followers). `one_step` is the injected bug that replaces in a single step.
    pub fn plan(
        &self,
        change: &Change,
        nodes: &[NodeId],
        live: u64,
        one_step: bool,
    ) -> Result<Vec<Membership>, ReconfigError> {
        let known = |n: NodeId| {
            if nodes.contains(&n) {
                Ok(())
            } else {
                Err(ReconfigError::UnknownNode(n))
            }
        };
        let ring = self.ring();
        let e = self.epoch;
        let removal = |node: NodeId, from: &[NodeId]| -> Result<Vec<NodeId>, ReconfigError> {
            let rest: Vec<NodeId> = from.iter().copied().filter(|&n| n != node).collect();
            if rest.is_empty() {
                return Err(ReconfigError::Empty(node));
            }
            let alive = rest.iter().filter(|&&n| live & (1 << n) != 0).count();
            if alive < majority(rest.len()) {
                return Err(ReconfigError::BelowMajority {
                    node,
                    live: alive,
                    len: rest.len(),
                    need: majority(rest.len()),
                });
            }
            Ok(rest)
        };
        // A joining node goes to the end of the succession order: a live newcomer ahead of the
        // leader would take the lead at once.
        let joined = |node: NodeId| -> Result<Vec<NodeId>, ReconfigError> {
            if ring.len() == MAX_NODES {
                return Err(ReconfigError::RingFull {
                    len: ring.len() + 1,
                    max: MAX_NODES,
                });
            }
            let mut r = ring.to_vec();
            r.push(node);
            Ok(r)
        };
        match change {
            Change::Add(n) => {
                known(*n)?;
                if self.contains(*n) {
                    return Err(ReconfigError::AlreadyInRing(*n));
                }
                Ok(vec![Membership::new(e + 1, &joined(*n)?)])
            }
            Change::Remove(n) => {
                known(*n)?;
                if !self.contains(*n) {
                    return Err(ReconfigError::NotInRing(*n));
                }
                Ok(vec![Membership::new(e + 1, &removal(*n, ring)?)])
            }
            Change::Replace { old, new } => {
                known(*old)?;
                known(*new)?;
                if !self.contains(*old) {
                    return Err(ReconfigError::NotInRing(*old));
                }
                if self.contains(*new) {
                    return Err(ReconfigError::AlreadyInRing(*new));
                }
                if one_step {
                    let r: Vec<NodeId> = ring
                        .iter()
                        .map(|&n| if n == *old { *new } else { n })
                        .collect();
                    return Ok(vec![Membership::new(e + 1, &r)]);
                }
                let grown = joined(*new)?;
                let shrunk = removal(*old, &grown)?;
                Ok(vec![
                    Membership::new(e + 1, &grown),
                    Membership::new(e + 2, &shrunk),
                ])
            }
            Change::Reorder(order) => {
                let mut a = order.clone();
                let mut b = ring.to_vec();
                a.sort_unstable();
                b.sort_unstable();
                if a != b {
                    return Err(ReconfigError::BadOrder {
                        ring: ring.to_vec(),
                        given: order.clone(),
                    });
                }
                Ok(vec![Membership::new(e + 1, order)])
            }
        }
    }
}

/// A ring as one word: node ids in 4-bit digits, the first in the lowest (the channel's
/// [`Counter::Ring`](crate::channel::Counter::Ring)).
pub fn ring_word(ring: &[NodeId]) -> u64 {
    ring.iter()
        .enumerate()
        .fold(0, |w, (i, &n)| w | u64::from(n & 0xf) << (4 * i))
}

/// The ring of `len` nodes in `word` ([`ring_word`]).
pub fn ring_from_word(word: u64, len: u64) -> Vec<NodeId> {
    (0..len.min(MAX_NODES as u64))
        .map(|i| ((word >> (4 * i)) & 0xf) as NodeId)
        .collect()
}

/// Whether every majority of `a` meets every majority of `b`.
pub fn quorums_intersect(a: &Membership, b: &Membership) -> bool {
    let (ma, mb) = (a.mask(), b.mask());
    let only_a = (ma & !mb).count_ones() as usize;
    let only_b = (mb & !ma).count_ones() as usize;
    let both = (ma & mb).count_ones() as usize;
    // Two disjoint majorities take what they can outside the common part; they exist when
    // what is left for them inside fits in it.
    a.majority().saturating_sub(only_a) + b.majority().saturating_sub(only_b) > both
}

/// A leader's answer to an operator's configuration change, as it travels back in a client
/// reply: the configurations it proposes, in order (a replace is two), or why it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeAnswer {
    Proposed(Vec<Membership>),
    Refused(String),
}

const ANSWER_PROPOSED: u8 = 0;
const ANSWER_REFUSED: u8 = 1;

impl ChangeAnswer {
    /// `[0, n, n configurations]` or `[1, reason in UTF-8]`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ChangeAnswer::Proposed(steps) => {
                let mut out = Vec::with_capacity(2 + steps.len() * MEMBERSHIP_BYTES);
                out.push(ANSWER_PROPOSED);
                out.push(u8::try_from(steps.len()).expect("a change has a step or two"));
                for m in steps {
                    out.extend_from_slice(&m.encode());
                }
                out
            }
            ChangeAnswer::Refused(why) => {
                let mut out = vec![ANSWER_REFUSED];
                out.extend_from_slice(why.as_bytes());
                out
            }
        }
    }

    /// The answer in exactly `b`, or `None` (a proposal must hold well-formed configurations).
    pub fn decode(b: &[u8]) -> Option<ChangeAnswer> {
        match b {
            [ANSWER_PROPOSED, n, rest @ ..] if rest.len() == *n as usize * MEMBERSHIP_BYTES => rest
                .chunks_exact(MEMBERSHIP_BYTES)
                .map(Membership::decode)
                .collect::<Option<Vec<_>>>()
                .map(ChangeAnswer::Proposed),
            [ANSWER_REFUSED, why @ ..] => Some(ChangeAnswer::Refused(
                String::from_utf8_lossy(why).into_owned(),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(e: u64, r: &[NodeId]) -> Membership {
        Membership::new(e, r)
    }

    #[test]
    fn encodes_and_refuses_malformed_configurations() {
        let a = m(7, &[2, 0, 1]);
        assert_eq!(Membership::decode(&a.encode()), Some(a));
        let mut b = a.encode();
        b[8] = 0;
        assert_eq!(Membership::decode(&b), None, "empty ring");
        let mut b = a.encode();
        b[10] = 2;
        assert_eq!(Membership::decode(&b), None, "duplicate id");
        let mut b = a.encode();
        b[9] = 16;
        assert_eq!(Membership::decode(&b), None, "id out of range");
        let mut b = a.encode();
        b[20] = 1;
        assert_eq!(Membership::decode(&b), None, "bytes past the ring");
        assert_eq!(Membership::decode(&b[..10]), None, "short");
    }

    #[test]
    fn one_step_changes_keep_quorums_intersecting_and_a_one_step_replace_does_not() {
        let live = 0b11111;
        let nodes = [0, 1, 2, 3, 4];
        let a = m(0, &[0, 1, 2]);
        for change in [
            Change::Add(3),
            Change::Remove(2),
            Change::Replace { old: 1, new: 3 },
            Change::Reorder(vec![2, 1, 0]),
        ] {
            let steps = a.plan(&change, &nodes, live, false).unwrap();
            let mut prev = a;
            for s in steps {
                assert_eq!(s.epoch, prev.epoch + 1);
                assert!(quorums_intersect(&prev, &s), "{change}: {prev:?} -> {s:?}");
                prev = s;
            }
        }
        let replace = Change::Replace { old: 1, new: 3 };
        let steps = a.plan(&replace, &nodes, live, false).unwrap();
        assert_eq!(steps[0].ring(), &[0, 1, 2, 3]);
        assert_eq!(steps[1].ring(), &[0, 2, 3]);
        let bad = a.plan(&replace, &nodes, live, true).unwrap();
        assert_eq!(bad.len(), 1);
        assert!(
            !quorums_intersect(&a, &bad[0]),
            "{{1, 2}} and {{0, 3}}: {bad:?}"
        );
    }

    #[test]
    fn change_requests_round_trip_and_malformed_ones_are_told_apart() {
        for c in [
            Change::Add(3),
            Change::Remove(0),
            Change::Replace { old: 1, new: 4 },
            Change::Reorder(vec![2, 0, 1]),
        ] {
            assert_eq!(
                Change::parse_request(&c.request(7, 9)),
                Some((7, 9, Some(c)))
            );
        }
        let mut bad = Change::Reorder(vec![2, 0, 1]).request(7, 9);
        bad.pop();
        assert_eq!(Change::parse_request(&bad), Some((7, 9, None)));
        assert_eq!(Change::parse_request(&[0; 16]), None, "too short to be one");
        assert_eq!(Change::parse_request(&[1; 20]), None, "another operation");
    }

    #[test]
    fn change_answers_round_trip_and_garbage_is_refused() {
        let steps = vec![m(4, &[0, 1, 2, 3]), m(5, &[0, 2, 3])];
        for a in [
            ChangeAnswer::Proposed(steps.clone()),
            ChangeAnswer::Refused("a change is in flight".into()),
        ] {
            assert_eq!(ChangeAnswer::decode(&a.encode()), Some(a));
        }
        let good = ChangeAnswer::Proposed(steps).encode();
        assert_eq!(ChangeAnswer::decode(&good[..good.len() - 1]), None, "cut");
        let mut bad = good.clone();
        bad[1] = 3;
        assert_eq!(ChangeAnswer::decode(&bad), None, "count beyond the bytes");
        let mut bad = good.clone();
        bad[2 + 8] = 0;
        assert_eq!(ChangeAnswer::decode(&bad), None, "an empty ring");
        assert_eq!(ChangeAnswer::decode(&[]), None);
        assert_eq!(ChangeAnswer::decode(&[7, 1]), None, "unknown kind");
    }

    #[test]
    fn a_ring_fits_one_word() {
        for ring in [
            vec![0],
            vec![2, 0, 1],
            (0..16).rev().collect::<Vec<NodeId>>(),
        ] {
            assert_eq!(ring_from_word(ring_word(&ring), ring.len() as u64), ring);
        }
    }

    #[test]
    fn invalid_changes_get_clear_errors() {
        let a = m(3, &[0, 1, 2]);
        let nodes = [0, 1, 2, 3];
        let all = 0b1111;
        let err = |c: Change, live: u64| a.plan(&c, &nodes, live, false).unwrap_err();
        assert_eq!(err(Change::Add(9), all), ReconfigError::UnknownNode(9));
        assert_eq!(err(Change::Add(1), all), ReconfigError::AlreadyInRing(1));
        assert_eq!(err(Change::Remove(3), all), ReconfigError::NotInRing(3));
        // 0 and 1 alive only: removing 1 leaves {0, 2} with one live acceptor.
        let e = err(Change::Remove(1), 0b0011);
        assert!(matches!(
            e,
            ReconfigError::BelowMajority {
                live: 1,
                len: 2,
                need: 2,
                ..
            }
        ));
        assert!(e.to_string().contains("below a majority"), "{e}");
        assert!(matches!(
            err(Change::Reorder(vec![0, 1]), all),
            ReconfigError::BadOrder { .. }
        ));
        assert!(matches!(
            err(Change::Reorder(vec![0, 1, 1]), all),
            ReconfigError::BadOrder { .. }
        ));
        assert_eq!(
            m(0, &[4]).plan(&Change::Remove(4), &[4], 0b10000, false),
            Err(ReconfigError::Empty(4))
        );
    }

    #[test]
    fn quorum_intersection_agrees_with_brute_force() {
        // Every pair of rings over 5 nodes with up to 4 members.
        let rings: Vec<u64> = (1u64..32).filter(|s| s.count_ones() <= 4).collect();
        let ring_of = |s: u64| -> Vec<NodeId> { (0..5).filter(|&n| s & (1 << n) != 0).collect() };
        for &x in &rings {
            for &y in &rings {
                let (a, b) = (m(0, &ring_of(x)), m(1, &ring_of(y)));
                let mut disjoint = false;
                for qa in 0u64..32 {
                    for qb in 0u64..32 {
                        if qa & !x == 0
                            && qb & !y == 0
                            && a.is_quorum(qa)
                            && b.is_quorum(qb)
                            && qa & qb == 0
                        {
                            disjoint = true;
                        }
                    }
                }
                assert_eq!(quorums_intersect(&a, &b), !disjoint, "{a:?} {b:?}");
            }
        }
    }
}
