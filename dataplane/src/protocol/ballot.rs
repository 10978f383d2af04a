//! Ballots: `(round << 8) | node_id`, so ballots of different nodes never collide.

use std::fmt;

/// A node's index in the cluster (0..[`MAX_NODES`]).
pub type NodeId = u8;

/// A log position (monotonic slot number; the log array index is `slot % capacity`).
pub type Slot = u64;

/// Upper bound on the nodes of one cluster (acceptors plus spares); sizes the control block.
pub const MAX_NODES: usize = 16;

/// A Paxos ballot, unique per node.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot(pub u64);

impl Ballot {
    /// The ballot no proposer ever uses; every real ballot is above it.
    pub const ZERO: Ballot = Ballot(0);

    /// The ballot of `node` in `round` (rounds start at 1).
    pub fn new(round: u64, node: NodeId) -> Ballot {
        assert!(round > 0, "round 0 is reserved for Ballot::ZERO");
        assert!(round < (1 << 56), "ballot round overflow");
        Ballot((round << 8) | u64::from(node))
    }

    pub fn round(self) -> u64 {
        self.0 >> 8
    }

    /// The node that owns this ballot (meaningless for [`Ballot::ZERO`]).
    pub fn node(self) -> NodeId {
        (self.0 & 0xff) as NodeId
    }

    /// The smallest ballot of `node` that is above `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        let b = Ballot::new(self.round().max(1), node);
        if b > self {
            b
        } else {
            Ballot::new(self.round() + 1, node)
        }
    }
}

impl fmt::Debug for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Ballot::ZERO {
            write!(f, "b0")
        } else {
            write!(f, "b{}.{}", self.round(), self.node())
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 5) < Ballot::new(2, 0));
        assert!(Ballot::new(2, 0) < Ballot::new(2, 1));
        assert_eq!(Ballot::new(7, 3).round(), 7);
        assert_eq!(Ballot::new(7, 3).node(), 3);
    }

    #[test]
    fn next_for_is_strictly_above() {
        for b in [
            Ballot::ZERO,
            Ballot::new(1, 0),
            Ballot::new(1, 4),
            Ballot::new(9, 2),
        ] {
            for n in 0..6u8 {
                let nb = b.next_for(n);
                assert!(nb > b, "{nb:?} > {b:?}");
                assert_eq!(nb.node(), n);
                assert!(nb.round() <= b.round() + 1);
            }
        }
    }
}
