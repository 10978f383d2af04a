//! What lives in a node's registered memory: the control block and the log, byte for byte.
//!
//! Both regions are plain byte arrays so every fabric (shared memory, UDP frames, RDMA) moves them
//! the same way. All integers are little-endian `u64`s at 8-byte aligned offsets, so a single-word
//! write is atomic on every fabric.
//!
//! ## Control block (`CB_BYTES`)
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | heartbeat counter | owner's data plane, every loop |
//! | 8 | applied index (next slot to apply) | owner |
//! | 16 | configuration epoch | owner |
//! | 24 | granted ballot (the ballot holding write permission on the owner's log) | owner |
//! | 32 | amnesiac flag (1: restarted with memory lost, not yet re-synced) | owner |
//! | 40, 48 | last checkpoint's applied index and state digest | owner |
//! | 56 | the owner's data plane process id (shm: the readers' process-table check) | owner |
//! | 64 + 8j | permission request of node j (a ballot) | node j |
//! | 192 + 8j | permission ack for node j (the ballot the owner granted j) | node j's peers |
//!
//! ## Log (`LogGeometry::log_bytes`)
//! A 128-byte header, then `capacity` entries of `slot_bytes` each (a multiple of 64), indexed
//! circularly: slot `s` lives at index `s % capacity`.
//!
//! Header line 0: `min_ballot` (the Paxos promise, written by a recovering leader),
//! `first_undecided` (owner: every slot below it is applied here), `amnesiac` (owner sets it on a
//! memory-lost restart, the leader clears it once it has re-synced the log).
//! Header line 1: the commit record {ballot, index, checksum}, written by the leader when idle.
//!
//! Entry: line 0 = {slot, commit hint, length, kind, body ballot, checksum, ..., accepted ballot},
//! then the payload. The accepted ballot sits outside the checksum so a recovering leader can
//! re-stamp an entry that already holds the right value with one atomic 8-byte write instead of
//! rewriting it (a rewrite torn by a crash would destroy a copy of a chosen value). The checksum
//! covers every other byte of the entry, so a torn or partial write, or a read racing a write, is
//! caught.
//!
//! Writes land in address order (a torn write is a prefix of the new bytes over the old ones,
//! the assumption Mu's canary makes too). An entry is valid only if its accepted ballot is at
//! least its body ballot: a full write whose body landed but whose accepted word did not still
//! shows the older holder's (lower) accepted ballot and reads as torn; a write whose accepted word
//! landed has its whole header line, and the checksum catches a partial payload. So a tear never
//! shows an old value under a new ballot, nor a new value under an old one.

use super::membership::{Membership, MEMBERSHIP_BYTES};
use super::{Ballot, Slot, MAX_NODES};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Cache-line size; entries and header lines are aligned to it.
pub const LINE_BYTES: usize = 64;

// ---- control block ----
pub const CB_HEARTBEAT: usize = 0;
pub const CB_APPLIED: usize = 8;
pub const CB_EPOCH: usize = 16;
pub const CB_GRANTED_BALLOT: usize = 24;
/// Flags: [`CB_FLAG_AMNESIAC`], [`CB_FLAG_BEHIND`], [`CB_FLAG_LEADING`].
pub const CB_AMNESIAC: usize = 32;
/// Its log cannot be trusted (memory lost, or overwritten by a snapshot): it counts in no
/// recovery quorum and does not lead.
pub const CB_FLAG_AMNESIAC: u64 = 1;
/// Its state machine is behind what its log says is decided (restarting, or its log lapped):
/// it does not lead, but its log counts.
pub const CB_FLAG_BEHIND: u64 = 2;
/// It stands for election, recovers or leads. Nodes that take it to be the ring's first
/// electable node wait for it only while it does (or for a grace period): nodes that applied
/// different configurations may disagree on the ring's order.
pub const CB_FLAG_LEADING: u64 = 4;
/// The applied index of the node's last checkpoint, and the state digest there.
pub const CB_CHECKPOINT_INDEX: usize = 40;
pub const CB_CHECKPOINT_DIGEST: usize = 48;
/// The owner's data plane process id: on shm, a reader whose heartbeat read found the counter
/// unchanged asks the process table whether that process still runs
/// (`election.runnable_grace_us`).
pub const CB_PID: usize = 56;
pub const CB_REQUESTS: usize = 64;
pub const CB_ACKS: usize = CB_REQUESTS + 8 * MAX_NODES;
/// Size of the control block region.
pub const CB_BYTES: usize = CB_ACKS + 8 * MAX_NODES;

/// Offset of node `j`'s permission-request word in a control block.
pub fn cb_request(j: u8) -> usize {
    assert!((j as usize) < MAX_NODES);
    CB_REQUESTS + 8 * j as usize
}

/// Offset of the ack word written by node `j` in a candidate's control block.
pub fn cb_ack(j: u8) -> usize {
    assert!((j as usize) < MAX_NODES);
    CB_ACKS + 8 * j as usize
}

/// Whether node `src` may write `len` bytes at `offset` of another node's control block: only
/// its own request and ack words, whole.
pub fn peer_may_write_control(src: u8, offset: usize, len: usize) -> bool {
    len == 8 && (offset == cb_request(src) || offset == cb_ack(src))
}

// ---- log header ----
pub const LOG_MIN_BALLOT: usize = 0;
pub const LOG_FIRST_UNDECIDED: usize = 8;
pub const LOG_AMNESIAC: usize = 16;
/// The node's applied index: the log it needs from a leader starts here.
pub const LOG_APPLIED: usize = 24;
/// Written by a recovering leader (never by the owner): every slot below is chosen. A node
/// whose log is far behind gets it raised before its slots are written over; the effective
/// first-undecided index is the higher of the two.
pub const LOG_DECIDED_FLOOR: usize = 32;
pub const LOG_COMMIT: usize = 64;
pub const COMMIT_RECORD_BYTES: usize = 24;
/// Where a leader installs a state-transfer snapshot: the descriptor in the header, the bytes
/// over the half of the entry array the receiver no longer needs.
pub const LOG_SNAPSHOT: usize = LOG_COMMIT + COMMIT_RECORD_BYTES;
pub const SNAPSHOT_DESCRIPTOR_BYTES: usize = 40 + MEMBERSHIP_BYTES;
pub const LOG_HEADER_BYTES: usize = 3 * LINE_BYTES;
const _: () = assert!(LOG_SNAPSHOT + SNAPSHOT_DESCRIPTOR_BYTES <= LOG_HEADER_BYTES);

// ---- entry ----
pub const ENTRY_SLOT: usize = 0;
pub const ENTRY_HINT: usize = 8;
pub const ENTRY_LEN: usize = 16;
pub const ENTRY_KIND: usize = 20;
/// The ballot the body was written at (covered by the checksum).
pub const ENTRY_BODY_BALLOT: usize = 24;
pub const ENTRY_CHECKSUM: usize = 32;
/// The accepted ballot: last word of the header line, outside the checksum, re-stampable.
pub const ENTRY_BALLOT: usize = 56;
pub const ENTRY_HEADER_BYTES: usize = LINE_BYTES;

const ENTRY_SEED: u64 = 0x7261_7061_785f_656e; // "rapax_en"
const COMMIT_SEED: u64 = 0x7261_7061_785f_636d; // "rapax_cm"
const SNAPSHOT_SEED: u64 = 0x7261_7061_785f_736e; // "rapax_sn"

pub fn get_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

pub fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

/// The shape of a log: how many entries and how big each is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogGeometry {
    /// Number of entries in the circular array.
    pub capacity: u64,
    /// Bytes per entry (header line plus payload), a multiple of 64.
    pub slot_bytes: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GeometryError {
    #[error("log capacity must be at least 2 entries, got {0}")]
    Capacity(u64),
    #[error("slot_bytes must be a multiple of 64 and at least 128, got {0}")]
    SlotBytes(usize),
}

impl LogGeometry {
    pub fn new(capacity: u64, slot_bytes: usize) -> Result<LogGeometry, GeometryError> {
        if capacity < 2 {
            return Err(GeometryError::Capacity(capacity));
        }
        if !slot_bytes.is_multiple_of(LINE_BYTES) || slot_bytes < 2 * LINE_BYTES {
            return Err(GeometryError::SlotBytes(slot_bytes));
        }
        Ok(LogGeometry {
            capacity,
            slot_bytes,
        })
    }

    /// Bytes of the whole log region.
    pub fn log_bytes(&self) -> usize {
        LOG_HEADER_BYTES + self.capacity as usize * self.slot_bytes
    }

    /// Largest payload one entry can hold.
    pub fn max_payload(&self) -> usize {
        self.slot_bytes - ENTRY_HEADER_BYTES
    }

    /// Byte offset of slot `s` in the log region (circular).
    pub fn slot_offset(&self, s: Slot) -> usize {
        LOG_HEADER_BYTES + (s % self.capacity) as usize * self.slot_bytes
    }
}

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A batch of client commands (see [`Batch`]).
    Batch = 1,
    /// A gap filled by a recovering leader.
    Noop = 2,
    /// A configuration change (an encoded [`Membership`]): it governs the slots after it.
    Config = 3,
}

/// A log entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ballot: Ballot,
    pub slot: Slot,
    /// Every slot below this was chosen when the entry was written.
    pub commit_hint: Slot,
    pub kind: EntryKind,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("no entry: the slot was never written")]
    Empty,
    #[error("torn entry: checksum mismatch")]
    Torn,
    #[error("bad entry: length {len} exceeds the slot's payload room {room}")]
    Length { len: usize, room: usize },
    #[error("bad entry: unknown kind {0}")]
    Kind(u8),
    #[error("short buffer: {got} bytes, the entry needs {need}")]
    Short { got: usize, need: usize },
}

fn entry_checksum(bytes: &[u8], len: usize) -> u64 {
    // Everything but the checksum itself and the accepted-ballot word.
    let a = xxh3_64_with_seed(&bytes[ENTRY_SLOT..ENTRY_CHECKSUM], ENTRY_SEED);
    let b = xxh3_64_with_seed(&bytes[ENTRY_CHECKSUM + 8..ENTRY_BALLOT], a);
    xxh3_64_with_seed(
        &bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + len],
        b ^ len as u64,
    )
}

impl Entry {
    /// Bytes this entry occupies when written (header line plus payload, not padded).
    pub fn wire_len(&self) -> usize {
        ENTRY_HEADER_BYTES + self.payload.len()
    }

    /// Encodes into `out` (cleared first). Panics if the payload does not fit `geometry`.
    pub fn encode(&self, geometry: &LogGeometry, out: &mut Vec<u8>) {
        assert!(
            self.payload.len() <= geometry.max_payload(),
            "entry payload {} over the slot room {}",
            self.payload.len(),
            geometry.max_payload()
        );
        out.clear();
        out.resize(self.wire_len(), 0);
        put_u64(out, ENTRY_BODY_BALLOT, self.ballot.0);
        put_u64(out, ENTRY_BALLOT, self.ballot.0);
        put_u64(out, ENTRY_SLOT, self.slot);
        put_u64(out, ENTRY_HINT, self.commit_hint);
        out[ENTRY_LEN..ENTRY_LEN + 4].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out[ENTRY_KIND] = self.kind as u8;
        out[ENTRY_HEADER_BYTES..].copy_from_slice(&self.payload);
        let sum = entry_checksum(out, self.payload.len());
        put_u64(out, ENTRY_CHECKSUM, sum);
    }

    /// Decodes the entry at the start of `bytes` (a slot's bytes, at most `slot_bytes` long).
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let header = Self::check(bytes)?;
        Ok(Entry {
            ballot: header.ballot,
            slot: header.slot,
            commit_hint: header.commit_hint,
            kind: header.kind,
            payload: bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + header.len].to_vec(),
        })
    }

    /// Validates the entry at the start of `bytes` without copying its payload.
    pub fn check(bytes: &[u8]) -> Result<EntryHeader, EntryError> {
        if bytes.len() < ENTRY_HEADER_BYTES {
            return Err(EntryError::Short {
                got: bytes.len(),
                need: ENTRY_HEADER_BYTES,
            });
        }
        let kind_byte = bytes[ENTRY_KIND];
        let len = get_u32(bytes, ENTRY_LEN) as usize;
        let sum = get_u64(bytes, ENTRY_CHECKSUM);
        if kind_byte == 0 && sum == 0 && len == 0 {
            return Err(EntryError::Empty);
        }
        let room = bytes.len() - ENTRY_HEADER_BYTES;
        if len > room {
            // A torn header can carry any length; only a valid checksum makes it an entry.
            return Err(EntryError::Length { len, room });
        }
        if entry_checksum(bytes, len) != sum {
            return Err(EntryError::Torn);
        }
        let kind = match kind_byte {
            1 => EntryKind::Batch,
            2 => EntryKind::Noop,
            3 => EntryKind::Config,
            k => return Err(EntryError::Kind(k)),
        };
        let body_ballot = get_u64(bytes, ENTRY_BODY_BALLOT);
        let ballot = get_u64(bytes, ENTRY_BALLOT);
        if ballot < body_ballot || body_ballot == 0 {
            // The body landed, its accepted-ballot word not yet: a write in progress or torn.
            return Err(EntryError::Torn);
        }
        Ok(EntryHeader {
            ballot: Ballot(ballot),
            slot: get_u64(bytes, ENTRY_SLOT),
            commit_hint: get_u64(bytes, ENTRY_HINT),
            kind,
            len,
            value_digest: xxh3_64_with_seed(
                &bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + len],
                kind_byte as u64,
            ),
        })
    }

    /// The digest of what this entry proposes (kind and payload), ignoring ballot and hint.
    pub fn value_digest(&self) -> u64 {
        xxh3_64_with_seed(&self.payload, self.kind as u64)
    }
}

/// The fixed fields of a valid entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub ballot: Ballot,
    pub slot: Slot,
    pub commit_hint: Slot,
    pub kind: EntryKind,
    pub len: usize,
    /// Digest of kind and payload: equal digests mean the same proposed value.
    pub value_digest: u64,
}

/// The leader's commit announcement: every slot below `index` is chosen, as known at `ballot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub ballot: Ballot,
    pub index: Slot,
}

impl CommitRecord {
    pub fn encode(&self) -> [u8; COMMIT_RECORD_BYTES] {
        let mut b = [0u8; COMMIT_RECORD_BYTES];
        put_u64(&mut b, 0, self.ballot.0);
        put_u64(&mut b, 8, self.index);
        let sum = xxh3_64_with_seed(&b[..16], COMMIT_SEED);
        put_u64(&mut b, 16, sum);
        b
    }

    /// `None` when never written or torn.
    pub fn decode(bytes: &[u8]) -> Option<CommitRecord> {
        if bytes.len() < COMMIT_RECORD_BYTES {
            return None;
        }
        let sum = get_u64(bytes, 16);
        if sum == 0 || xxh3_64_with_seed(&bytes[..16], COMMIT_SEED) != sum {
            return None;
        }
        Some(CommitRecord {
            ballot: Ballot(get_u64(bytes, 0)),
            index: get_u64(bytes, 8),
        })
    }
}

/// A state-transfer snapshot as installed in a receiver's log: the state after applying every
/// slot below `index`, `len` bytes laid over the entry array (as a ring of bytes) from entry
/// index `at`, with the state digest and a checksum over the descriptor and the bytes (a torn
/// or partial transfer never installs). It carries the configuration in force at `index`, which
/// the log below `index` (gone) no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    pub index: Slot,
    pub len: u64,
    pub digest: u64,
    pub at: u64,
    pub checksum: u64,
    pub membership: Membership,
}

impl SnapshotDescriptor {
    /// The descriptor of `bytes`, the state below `index` with digest `digest`, placed from
    /// entry index `at`.
    pub fn new(
        index: Slot,
        digest: u64,
        at: u64,
        membership: Membership,
        bytes: &[u8],
    ) -> SnapshotDescriptor {
        SnapshotDescriptor::new_with(index, digest, at, membership, bytes, &mut || {})
    }

    /// [`SnapshotDescriptor::new`], calling `progress` after every megabyte it checksums.
    pub fn new_with(
        index: Slot,
        digest: u64,
        at: u64,
        membership: Membership,
        bytes: &[u8],
        progress: &mut dyn FnMut(),
    ) -> SnapshotDescriptor {
        let mut d = SnapshotDescriptor {
            index,
            len: bytes.len() as u64,
            digest,
            at,
            checksum: 0,
            membership,
        };
        d.checksum = d.sum(bytes, progress);
        d
    }

    fn sum(&self, bytes: &[u8], progress: &mut dyn FnMut()) -> u64 {
        let mut fields = [0u8; 32 + MEMBERSHIP_BYTES];
        put_u64(&mut fields, 0, self.index);
        put_u64(&mut fields, 8, self.len);
        put_u64(&mut fields, 16, self.digest);
        put_u64(&mut fields, 24, self.at);
        fields[32..].copy_from_slice(&self.membership.encode());
        let seed = xxh3_64_with_seed(&fields, SNAPSHOT_SEED);
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
        for piece in bytes.chunks(1 << 20) {
            h.update(piece);
            progress();
        }
        // Never zero: zero means "no snapshot".
        h.digest().max(1)
    }

    pub fn encode(&self) -> [u8; SNAPSHOT_DESCRIPTOR_BYTES] {
        let mut b = [0u8; SNAPSHOT_DESCRIPTOR_BYTES];
        put_u64(&mut b, 0, self.index);
        put_u64(&mut b, 8, self.len);
        put_u64(&mut b, 16, self.digest);
        put_u64(&mut b, 24, self.at);
        put_u64(&mut b, 32, self.checksum);
        b[40..].copy_from_slice(&self.membership.encode());
        b
    }

    /// The descriptor in `b`, `None` when none was written (or its configuration is not a
    /// well-formed one: the checksum then cannot match either).
    pub fn decode(b: &[u8]) -> Option<SnapshotDescriptor> {
        if b.len() < SNAPSHOT_DESCRIPTOR_BYTES || get_u64(b, 32) == 0 {
            return None;
        }
        Some(SnapshotDescriptor {
            index: get_u64(b, 0),
            len: get_u64(b, 8),
            digest: get_u64(b, 16),
            at: get_u64(b, 24),
            checksum: get_u64(b, 32),
            membership: Membership::decode(&b[40..SNAPSHOT_DESCRIPTOR_BYTES])?,
        })
    }

    /// Whether `bytes` are exactly the snapshot this describes.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        self.verifies_with(bytes, &mut || {})
    }

    /// [`SnapshotDescriptor::verifies`], calling `progress` after every megabyte.
    pub fn verifies_with(&self, bytes: &[u8], progress: &mut dyn FnMut()) -> bool {
        bytes.len() as u64 == self.len && self.sum(bytes, progress) == self.checksum
    }
}

/// Batch framing inside an entry payload: `u32 count`, then `count` × (`u32 len`, bytes).
pub struct Batch;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated at command {index}")]
    Truncated { index: usize },
    #[error("batch has {0} trailing bytes")]
    Trailing(usize),
}

impl Batch {
    /// Bytes a batch of commands with these sizes takes.
    pub fn encoded_len<'a>(cmds: impl IntoIterator<Item = &'a [u8]>) -> usize {
        4 + cmds.into_iter().map(|c| 4 + c.len()).sum::<usize>()
    }

    pub fn encode<'a>(cmds: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut n = 0u32;
        for c in cmds {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
            n += 1;
        }
        out[..4].copy_from_slice(&n.to_le_bytes());
    }

    /// Splits a batch payload into its commands.
    pub fn decode(payload: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
        Ok(Self::commands(payload)?.collect())
    }

    /// The commands of a batch payload, checked whole first (an error names the first bad
    /// command), then yielded without copying or allocating.
    pub fn commands(payload: &[u8]) -> Result<BatchCommands<'_>, BatchError> {
        if payload.len() < 4 {
            return Err(BatchError::Truncated { index: 0 });
        }
        let n = get_u32(payload, 0) as usize;
        let mut at = 4;
        for index in 0..n {
            if payload.len() < at + 4 {
                return Err(BatchError::Truncated { index });
            }
            let len = get_u32(payload, at) as usize;
            at += 4;
            if payload.len() - at < len {
                return Err(BatchError::Truncated { index });
            }
            at += len;
        }
        if at != payload.len() {
            return Err(BatchError::Trailing(payload.len() - at));
        }
        Ok(BatchCommands {
            payload,
            at: 4,
            left: n,
        })
    }
}

/// The commands of a checked batch ([`Batch::commands`]).
pub struct BatchCommands<'a> {
    payload: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Iterator for BatchCommands<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked by `Batch::commands`: every length is in bounds.
        let len = get_u32(self.payload, self.at) as usize;
        let cmd = &self.payload[self.at + 4..self.at + 4 + len];
        self.at += 4 + len;
        Some(cmd)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> LogGeometry {
        LogGeometry::new(8, 256).unwrap()
    }

    fn entry(payload: &[u8]) -> Entry {
        Entry {
            ballot: Ballot::new(3, 1),
            slot: 42,
            commit_hint: 40,
            kind: EntryKind::Batch,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn entry_round_trips() {
        let mut buf = Vec::new();
        for p in [&b""[..], b"x", &[7u8; 192][..]] {
            let e = entry(p);
            e.encode(&geo(), &mut buf);
            assert_eq!(buf.len(), 64 + p.len());
            assert_eq!(Entry::decode(&buf).unwrap(), e);
            // Decoding from the full slot (with trailing garbage) still works.
            let mut slot = vec![0xAB; 256];
            slot[..buf.len()].copy_from_slice(&buf);
            assert_eq!(Entry::decode(&slot).unwrap(), e);
        }
    }

    #[test]
    fn zeroed_slot_is_empty() {
        assert_eq!(Entry::decode(&[0u8; 256]), Err(EntryError::Empty));
        assert_eq!(
            Entry::decode(&[0u8; 10]),
            Err(EntryError::Short { got: 10, need: 64 })
        );
    }

    #[test]
    fn a_torn_write_never_mixes_old_and_new() {
        // A write that landed only as a prefix, over an older entry of a lower ballot (or over
        // zeroes), decodes as the old entry, the new entry, or not at all; never as a mix.
        let mut old_bytes = Vec::new();
        let mut new_bytes = Vec::new();
        let old = entry(&[1u8; 100]);
        let mut new = entry(&[2u8; 60]);
        new.ballot = Ballot::new(4, 2);
        new.commit_hint = 41;
        new.encode(&geo(), &mut new_bytes);
        old.encode(&geo(), &mut old_bytes);
        for base in [vec![0u8; 256], {
            let mut b = old_bytes.clone();
            b.resize(256, 0);
            b
        }] {
            for cut in 0..=new_bytes.len() {
                let mut slot = base.clone();
                slot[..cut].copy_from_slice(&new_bytes[..cut]);
                match Entry::decode(&slot) {
                    Err(_) => {}
                    Ok(e) => assert!(
                        e == new || (e == old && base[0] != 0),
                        "prefix of {cut} bytes decoded as a mix: {e:?}"
                    ),
                }
                if cut == new_bytes.len() {
                    assert_eq!(Entry::decode(&slot).unwrap(), new);
                }
            }
        }
    }

    #[test]
    fn accepted_ballot_below_body_ballot_is_torn() {
        let mut buf = Vec::new();
        entry(b"v").encode(&geo(), &mut buf);
        put_u64(&mut buf, ENTRY_BALLOT, Ballot::new(2, 9).0);
        assert_eq!(Entry::check(&buf), Err(EntryError::Torn));
    }

    #[test]
    fn any_flipped_bit_outside_ballot_is_detected() {
        let mut buf = Vec::new();
        entry(b"hello world").encode(&geo(), &mut buf);
        for byte in (ENTRY_SLOT..ENTRY_BALLOT).chain(ENTRY_HEADER_BYTES..buf.len()) {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(Entry::check(&b).is_err(), "flip at {byte}.{bit} undetected");
            }
        }
    }

    #[test]
    fn ballot_restamp_keeps_entry_valid() {
        let mut buf = Vec::new();
        entry(b"v").encode(&geo(), &mut buf);
        let digest = Entry::check(&buf).unwrap().value_digest;
        put_u64(&mut buf, ENTRY_BALLOT, Ballot::new(9, 2).0);
        let h = Entry::check(&buf).unwrap();
        assert_eq!(h.ballot, Ballot::new(9, 2));
        assert_eq!(h.value_digest, digest);
    }

    #[test]
    fn value_digest_ignores_ballot_and_hint_but_not_payload() {
        let a = entry(b"abc");
        let mut b = a.clone();
        b.ballot = Ballot::new(100, 0);
        b.commit_hint = 0;
        assert_eq!(a.value_digest(), b.value_digest());
        b.payload = b"abd".to_vec();
        assert_ne!(a.value_digest(), b.value_digest());
        let mut c = a.clone();
        c.kind = EntryKind::Noop;
        assert_ne!(a.value_digest(), c.value_digest());
    }

    #[test]
    fn oversize_length_field_is_rejected_not_panicking() {
        let mut buf = vec![0u8; 128];
        buf[ENTRY_KIND] = 1;
        buf[ENTRY_LEN..ENTRY_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Entry::check(&buf), Err(EntryError::Length { .. })));
    }

    #[test]
    fn circular_indexing_is_64_byte_aligned() {
        let g = geo();
        assert_eq!(g.slot_offset(0), LOG_HEADER_BYTES);
        assert_eq!(g.slot_offset(8), g.slot_offset(0));
        assert_eq!(g.slot_offset(9), g.slot_offset(1));
        for s in 0..100 {
            assert_eq!(g.slot_offset(s) % LINE_BYTES, 0);
            assert!(g.slot_offset(s) + g.slot_bytes <= g.log_bytes());
        }
        assert_eq!(LogGeometry::new(8, 100), Err(GeometryError::SlotBytes(100)));
        assert_eq!(LogGeometry::new(1, 128), Err(GeometryError::Capacity(1)));
    }

    #[test]
    fn commit_record_round_trips_and_detects_tears() {
        let r = CommitRecord {
            ballot: Ballot::new(2, 1),
            index: 77,
        };
        let b = r.encode();
        assert_eq!(CommitRecord::decode(&b), Some(r));
        assert_eq!(CommitRecord::decode(&[0u8; 24]), None);
        let mut torn = b;
        torn[8] ^= 1;
        assert_eq!(CommitRecord::decode(&torn), None);
    }

    #[test]
    fn batch_round_trips_and_rejects_garbage() {
        let cmds: Vec<&[u8]> = vec![b"a", b"", b"hello"];
        let mut out = Vec::new();
        Batch::encode(cmds.iter().copied(), &mut out);
        assert_eq!(out.len(), Batch::encoded_len(cmds.iter().copied()));
        assert_eq!(Batch::decode(&out).unwrap(), cmds);
        for cut in 0..out.len() {
            assert!(Batch::decode(&out[..cut]).is_err(), "prefix {cut}");
        }
        let mut extra = out.clone();
        extra.push(0);
        assert_eq!(Batch::decode(&extra), Err(BatchError::Trailing(1)));
    }

    #[test]
    fn garbage_never_panics_the_decoders() {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
        let mut valid = Vec::new();
        entry(b"payload").encode(&geo(), &mut valid);
        let mut batch = Vec::new();
        Batch::encode([&b"ab"[..], b"cde"], &mut batch);
        for i in 0..20_000 {
            let len = rng.gen_range(0..300);
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            if i % 2 == 0 && len >= valid.len() {
                // Mutations of a valid entry: a few flipped bytes anywhere.
                buf[..valid.len()].copy_from_slice(&valid);
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..len);
                    buf[at] ^= rng.gen_range(1..=255u8);
                }
            }
            let _ = Entry::decode(&buf);
            let _ = CommitRecord::decode(&buf);
            let _ = Batch::decode(&buf);
            let mut b = batch.clone();
            let at = rng.gen_range(0..b.len());
            b[at] = rng.gen();
            let _ = Batch::decode(&b);
        }
    }

    #[test]
    fn control_block_offsets_do_not_overlap() {
        const { assert!(CB_AMNESIAC + 8 <= CB_REQUESTS) };
        assert_eq!(cb_request(15) + 8, CB_ACKS);
        assert_eq!(cb_ack(15) + 8, CB_BYTES);
        const { assert!(LOG_AMNESIAC + 8 <= LOG_COMMIT) };
    }
}
