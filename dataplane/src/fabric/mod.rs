//! The fabric contract and its backends.
//!
//! A fabric gives a node: two registered regions of its own (control block and log); one-sided
//! `write` and `read` into a peer's region with one completion per work request; and, on the
//! owner's side, `grant` / `revoke` of write permission on its log. The contract every backend
//! keeps (the shared contract suite checks it):
//!
//! 1. A successful completion means the bytes are in the target's memory, visible to its CPU.
//! 2. Writes from one endpoint to one region land in posting order.
//! 3. Revocation is complete when `revoke` returns: no write from the revoked peer lands after
//!    that, and its later or in-flight writes complete with [`FabricError::Permission`].
//! 4. A crashed or unreachable peer yields error or time-out completions, never a hang.
//! 5. A torn write is detectable by the reader (entries and commit records carry checksums).
//!
//! The protocol cores never call a fabric: they emit [`Post`]s and take [`Completion`]s, and touch
//! their own node's memory through [`LocalMemory`].

pub mod contract;
pub mod dpdk;
pub mod frame;
pub mod framed;
pub mod nic;
pub mod rdma;
pub mod shm;
pub mod sim;
pub mod udp;

use crate::protocol::{Ballot, NodeId};

/// Free huge pages on this host (`HugePages_Free` in `/proc/meminfo`), or `None` when that cannot
/// be read: what the DPDK EAL and `fabric.rdma.hugepages` map from.
pub fn hugepages_free() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A node's registered regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// The control block: readable by members; request and ack words writable by members.
    Control,
    /// The log: readable by members; writable only by the node granted permission.
    Log,
}

/// A one-sided operation on a peer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write {
        region: Region,
        offset: usize,
        bytes: Vec<u8>,
    },
    Read {
        region: Region,
        offset: usize,
        len: usize,
    },
}

impl Op {
    pub fn region(&self) -> Region {
        match self {
            Op::Write { region, .. } | Op::Read { region, .. } => *region,
        }
    }
}

/// A work request: an operation on `target`'s memory, identified by `wr_id` in its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    pub wr_id: u64,
    pub target: NodeId,
    pub op: Op,
    /// The first operation on a freshly re-established data connection to `target`. After any
    /// failed operation the data connection is in error (as an RC queue pair is): everything
    /// posted on it fails until an operation with `reconnect` set. Control-block operations
    /// travel on the control mesh and never stick in error.
    pub reconnect: bool,
    /// The ballot whose connection carries a log operation. Write permission is granted to a
    /// (peer, ballot) pair, the way RDMA grants it to one queue pair: a leader opens fresh
    /// connections for each ballot it stands with, so a write posted under an older ballot can
    /// never land under a newer grant to the same node. `Ballot::ZERO` for control-block
    /// operations.
    pub ballot: Ballot,
}

/// Why a work request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    /// The target refused: the poster holds no write permission on that region (or range).
    #[error("permission denied by the target")]
    Permission,
    /// The target did not answer in time (crashed, partitioned, or the network lost it).
    #[error("target unreachable or timed out")]
    Unreachable,
}

/// The completion of a work request. Reads carry the bytes read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub result: Result<Option<Vec<u8>>, FabricError>,
}

/// A node's own view of its registered memory, as the fabric exposes it to the owner.
///
/// Registered memory changes under the owner (peers' one-sided writes land in it at any time),
/// so the owner never holds a reference into it: it copies bytes out (`read_control`,
/// `read_log`) and loads and stores aligned 8-byte words, which are atomic. A copy may be torn
/// by a write landing meanwhile; the checksums of entries and commit records catch that.
///
/// `write_log_as_holder` is the owner writing its own log as a proposer at `ballot`: it is subject
/// to the same permission as a remote writer (a node whose log is granted to another ballot must
/// not accept its own stale proposals). Owner metadata (`first_undecided`, the amnesiac flag, the
/// control block) is written with the unchecked methods.
pub trait LocalMemory {
    fn id(&self) -> NodeId;
    /// Copies control-block bytes from `offset` into `buf`.
    fn read_control(&self, offset: usize, buf: &mut [u8]);
    /// Loads the aligned 8-byte word of the control block at `offset`.
    fn control_word(&self, offset: usize) -> u64;
    /// Stores the aligned 8-byte word of the control block at `offset`.
    fn set_control_word(&mut self, offset: usize, value: u64);
    /// Bytes in the log region.
    fn log_len(&self) -> usize;
    /// Copies log bytes from `offset` into `buf`.
    fn read_log(&self, offset: usize, buf: &mut [u8]);
    /// Loads the aligned 8-byte word of the log at `offset`.
    fn log_word(&self, offset: usize) -> u64;
    /// Owner metadata in the log header; never a proposal.
    fn write_log_owner(&mut self, offset: usize, bytes: &[u8]);
    /// A proposal into the local log; fails with [`FabricError::Permission`] unless the owner's
    /// own connection of `ballot` holds write permission on its log.
    fn write_log_as_holder(
        &mut self,
        ballot: Ballot,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), FabricError>;
    /// Gives `peer`'s connection of `ballot` write permission on the log.
    fn grant(&mut self, peer: NodeId, ballot: Ballot);
    /// Takes write permission on the log away from `peer`; complete when it returns.
    fn revoke(&mut self, peer: NodeId);
    /// The (node, ballot) connections currently allowed to write the log.
    fn writers(&self) -> Vec<(NodeId, Ballot)>;
}
