//! A node's registered regions in process memory, with the state a NIC keeps for them: the
//! target side shared by the backends whose memory lives in the owner's process (`sim`, `udp`).
//!
//! - Write permission on the log belongs to one (node, ballot) connection.
//! - Control-block writes from peers may only touch the poster's own request and ack words.
//! - A failed log operation puts the poster's data connection in error; `revoke` puts it in error
//!   "by revoke". Every later log operation on it fails ([`FabricError::Unreachable`], or
//!   [`FabricError::Permission`] after a revoke) until an operation marked `reconnect` arrives, as
//!   with an RC queue pair that must be reset: a follower's log stays a prefix of what its leader
//!   posted, and a write posted before a revoke never lands after a later re-grant.
//! - Log operations may carry a per-connection sequence number (a packet sequence number): one
//!   out of order (lost, late, replayed) breaks the connection the same way.
//! - A write may be in progress (landed in part): `revoke` lands its rest before it returns, the
//!   in-flight guard the contract asks for.

use super::{FabricError, LocalMemory, Op, Post, Region};
use crate::protocol::layout::{get_u64, peer_may_write_control, put_u64, CB_BYTES};
use crate::protocol::{Ballot, NodeId, MAX_NODES};

/// The result of one operation at the target: the bytes read, for a read.
pub type OpResult = Result<Option<Vec<u8>>, FabricError>;

/// One node's regions and the NIC state around them.
#[derive(Clone, Debug)]
pub struct NicMemory {
    id: NodeId,
    control: Vec<u8>,
    log: Vec<u8>,
    /// `writers[p]`: the ballot of node `p`'s connection that may write the log.
    writers: [Option<Ballot>; MAX_NODES],
    /// Bit `p`: the data connection from `p` is in error.
    data_error: u32,
    /// Bit `p`: it broke because `p` was revoked (its operations get `Permission`).
    revoked: u32,
    /// `expected_seq[p]`: the sequence number of the next log operation from `p`.
    expected_seq: [u64; MAX_NODES],
    /// Rests of writes in progress: (poster, offset, bytes).
    partial: Vec<(NodeId, usize, Vec<u8>)>,
    /// Log byte ranges written since the last [`NicMemory::take_dirty`].
    dirty: Vec<(usize, usize)>,
}

impl NicMemory {
    /// Node `id`'s memory: a zeroed control block and a zeroed log of `log_bytes`.
    pub fn new(id: NodeId, log_bytes: usize) -> NicMemory {
        assert!((id as usize) < MAX_NODES, "node id {id} out of range");
        let mut log = vec![0u8; log_bytes];
        // Fault every page in now, not on the first write of each on the fast path (a zeroed
        // allocation is untouched memory; an opaque store keeps the compiler from eliding it).
        for page in log.chunks_mut(4096) {
            page[0] = std::hint::black_box(0);
        }
        NicMemory {
            id,
            control: vec![0; CB_BYTES],
            log,
            writers: [None; MAX_NODES],
            data_error: 0,
            revoked: 0,
            expected_seq: [0; MAX_NODES],
            partial: Vec::new(),
            dirty: Vec::new(),
        }
    }

    /// The control block, for checkers and tests.
    pub fn control(&self) -> &[u8] {
        &self.control
    }

    pub fn control_mut(&mut self) -> &mut [u8] {
        &mut self.control
    }

    /// The log region, for checkers and tests.
    pub fn log(&self) -> &[u8] {
        &self.log
    }

    /// The log ranges (offset, len) written since the last call.
    pub fn take_dirty(&mut self) -> Vec<(usize, usize)> {
        std::mem::take(&mut self.dirty)
    }

    pub fn writer_count(&self) -> usize {
        self.writers.iter().flatten().count()
    }

    fn may_write(&self, peer: NodeId, ballot: Ballot) -> bool {
        self.writers.get(peer as usize).copied().flatten() == Some(ballot)
    }

    /// The target-side rights check of a write by `src` on its connection of `ballot`.
    pub fn write_allowed(
        &self,
        src: NodeId,
        ballot: Ballot,
        region: Region,
        offset: usize,
        len: usize,
    ) -> bool {
        match region {
            Region::Log => {
                self.may_write(src, ballot)
                    && offset
                        .checked_add(len)
                        .is_some_and(|end| end <= self.log.len())
            }
            Region::Control => peer_may_write_control(src, offset, len),
        }
    }

    /// Whether `src`'s data connection is in error, and the error its operations get.
    pub fn connection_error(&self, src: NodeId) -> Option<FabricError> {
        let bit = 1u32 << src;
        let error = if self.revoked & bit != 0 {
            FabricError::Permission
        } else {
            FabricError::Unreachable
        };
        (self.data_error & bit != 0).then_some(error)
    }

    /// Puts `src`'s data connection in error.
    pub fn break_connection(&mut self, src: NodeId) {
        self.data_error |= 1 << src;
    }

    /// The sequence number the next log operation from `src` must carry.
    pub fn expected_seq(&self, src: NodeId) -> u64 {
        self.expected_seq[src as usize]
    }

    /// A `reconnect` from `src` whose sequence number is `seq`: a fresh connection.
    pub fn reconnect(&mut self, src: NodeId, seq: u64) {
        self.data_error &= !(1 << src);
        self.revoked &= !(1 << src);
        self.expected_seq[src as usize] = seq.wrapping_add(1);
    }

    /// Checks the sequence number of a log operation from `src` (a `reconnect` resets it); one
    /// out of order breaks the connection.
    pub fn sequence(&mut self, src: NodeId, seq: u64, reconnect: bool) {
        if reconnect {
            self.reconnect(src, seq);
        } else if seq == self.expected_seq[src as usize] {
            self.expected_seq[src as usize] = seq.wrapping_add(1);
        } else {
            // Lost, reordered or replayed: nothing behind the gap may land.
            self.break_connection(src);
        }
    }

    /// Plays the NIC for an operation of `src` whose connection state was already checked by the
    /// caller: rights, bounds, then the read or the write. A refused log write breaks the
    /// connection.
    pub fn execute(&mut self, src: NodeId, post: &Post) -> OpResult {
        match &post.op {
            Op::Read {
                region,
                offset,
                len,
            } => {
                let buf = match region {
                    Region::Control => &self.control,
                    Region::Log => &self.log,
                };
                match offset
                    .checked_add(*len)
                    .and_then(|end| buf.get(*offset..end))
                {
                    Some(b) => Ok(Some(b.to_vec())),
                    None => Err(FabricError::Permission),
                }
            }
            Op::Write {
                region,
                offset,
                bytes,
            } => {
                if !self.write_allowed(src, post.ballot, *region, *offset, bytes.len()) {
                    if *region == Region::Log {
                        self.break_connection(src);
                    }
                    return Err(FabricError::Permission);
                }
                self.write(*region, *offset, bytes);
                Ok(None)
            }
        }
    }

    /// Plays the NIC for a sequenced operation of `src`: sequence, connection state, rights,
    /// then the operation. Control-block operations are not sequenced.
    pub fn apply(&mut self, src: NodeId, seq: u64, post: &Post) -> OpResult {
        if src as usize >= MAX_NODES {
            return Err(FabricError::Permission);
        }
        if post.op.region() == Region::Log {
            self.sequence(src, seq, post.reconnect);
            if let Some(e) = self.connection_error(src) {
                return Err(e);
            }
        }
        self.execute(src, post)
    }

    /// Writes bytes as they land (no rights check: the caller checked).
    pub fn write(&mut self, region: Region, offset: usize, bytes: &[u8]) {
        match region {
            Region::Control => self.control[offset..offset + bytes.len()].copy_from_slice(bytes),
            Region::Log => {
                self.log[offset..offset + bytes.len()].copy_from_slice(bytes);
                self.dirty.push((offset, bytes.len()));
            }
        }
    }

    /// A write of `src` that has landed only up to `offset`: its `rest` lands later, or when
    /// `src` is revoked.
    pub fn begin_partial(&mut self, src: NodeId, offset: usize, rest: Vec<u8>) {
        self.partial.push((src, offset, rest));
    }

    /// Lands the rest of `src`'s write in progress at `offset`, if it has not landed already.
    pub fn finish_partial(&mut self, src: NodeId, offset: usize) {
        if let Some(i) = self
            .partial
            .iter()
            .position(|(p, off, _)| *p == src && *off == offset)
        {
            let (_, off, bytes) = self.partial.remove(i);
            self.write(Region::Log, off, &bytes);
        }
    }

    fn flush_partial(&mut self, peer: NodeId) {
        let offsets: Vec<usize> = self
            .partial
            .iter()
            .filter(|(p, _, _)| *p == peer)
            .map(|(_, off, _)| *off)
            .collect();
        for off in offsets {
            self.finish_partial(peer, off);
        }
    }

    /// The process restarted: the NIC's rights and connections are gone; with `memory_lost`,
    /// the regions are zeroed too. Connections towards this node are broken.
    pub fn restart(&mut self, memory_lost: bool) {
        self.writers = [None; MAX_NODES];
        self.data_error = u32::MAX;
        if memory_lost {
            self.control.fill(0);
            self.log.fill(0);
            self.partial.clear();
            self.dirty.push((0, self.log.len()));
        }
    }

    /// `peer` restarted: its connections to this node are new.
    pub fn peer_restarted(&mut self, peer: NodeId) {
        self.data_error &= !(1 << peer);
        self.revoked &= !(1 << peer);
        self.expected_seq[peer as usize] = 0;
    }
}

impl LocalMemory for NicMemory {
    fn id(&self) -> NodeId {
        self.id
    }

    fn read_control(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.control[offset..offset + buf.len()]);
    }

    fn control_word(&self, offset: usize) -> u64 {
        get_u64(&self.control, offset)
    }

    fn set_control_word(&mut self, offset: usize, value: u64) {
        put_u64(&mut self.control, offset, value);
    }

    fn log_len(&self) -> usize {
        self.log.len()
    }

    fn read_log(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.log[offset..offset + buf.len()]);
    }

    fn log_word(&self, offset: usize) -> u64 {
        get_u64(&self.log, offset)
    }

    fn write_log_owner(&mut self, offset: usize, bytes: &[u8]) {
        self.write(Region::Log, offset, bytes);
    }

    fn write_log_as_holder(
        &mut self,
        ballot: Ballot,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), FabricError> {
        if !self.may_write(self.id, ballot) {
            return Err(FabricError::Permission);
        }
        self.write(Region::Log, offset, bytes);
        Ok(())
    }

    fn grant(&mut self, peer: NodeId, ballot: Ballot) {
        self.writers[peer as usize] = Some(ballot);
    }

    fn revoke(&mut self, peer: NodeId) {
        self.flush_partial(peer);
        self.writers[peer as usize] = None;
        self.data_error |= 1 << peer;
        self.revoked |= 1 << peer;
    }

    fn writers(&self) -> Vec<(NodeId, Ballot)> {
        (0..MAX_NODES as NodeId)
            .filter_map(|p| self.writers[p as usize].map(|b| (p, b)))
            .collect()
    }
}
