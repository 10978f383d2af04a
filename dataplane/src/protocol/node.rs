//! The node core: permission handover, recovery, the replication fast path, apply, view change.
//!
//! One [`Node`] is everything one cluster member decides: its control plane (pull-score election,
//! granting its log to candidates, becoming a candidate) and its data plane (recovery at a new
//! ballot, Phase 2A/2B by one-sided writes, applying chosen entries). It is sans-I/O: the driver
//! calls [`Node::tick`], [`Node::on_completion`] and [`Node::on_client_request`] and carries out
//! the [`Output`]: posts on the fabric, replies to clients. The node touches its own memory only
//! through [`LocalMemory`].
//!
//! The steps, numbered as in docs/protocol.md:
//! 1. *Election.* Every node reads its peers' heartbeats ([`Election`]); the leader is the first
//!    electable (alive, not amnesiac) node in ring order.
//! 2. *Handover.* A node that should lead and does not picks a ballot above every ballot it has
//!    seen and writes it into its request word in every peer's control block. A node grants its
//!    log to the highest request above the ballot it has granted: it revokes the current holder
//!    (complete when `revoke` returns), grants the candidate, publishes the granted ballot and
//!    writes an ack into the candidate's control block.
//! 3. *Recovery.* With acks from a majority the candidate reads the log headers of the acked
//!    nodes; the non-amnesiac ones form the quorum Q (a majority, or it gives up). It aborts if any
//!    `min_ballot` is at or above its ballot, writes `min_ballot = b` on Q, reads Q's logs from the
//!    lowest `first_undecided`, adopts for every slot the entry with the highest accepted ballot
//!    (a no-op for a gap), and makes Q hold exactly that at ballot b: nothing is written where a
//!    node already has it, an 8-byte ballot re-stamp where it has the same value at an older
//!    ballot, a full entry write where it differs. When all of Q confirms, every recovered slot is
//!    chosen at b.
//! 4. *Fast path.* The leader assigns the next slot to a batch of client commands, writes the
//!    entry locally and posts one write of it to every active follower (2A). A slot is chosen once
//!    f remote writes have succeeded (2B); the commit index advances over chosen slots, travels in
//!    the next entry's hint, and is written on its own (commit record) when the leader is idle.
//! 5. *Catch-up.* A follower that was absent is re-requested; once it acks, the leader reads its
//!    log from its `first_undecided`, writes what differs (in order, a bounded step per turn) and
//!    only then makes it active, so every hint it ever reads is backed by its own log.
//! 6. *Apply.* Every node applies, in slot order, the valid entries below the highest commit it
//!    knows from its own log (its `first_undecided`, the commit record, and the hints in entries).
//! 7. *View change.* A leader or candidate that sees a higher request, or gets a permission error
//!    from any write, steps down; followers learn the leader from the ballot they granted.
//! 8. *Amnesia.* A node restarted with its memory lost grants nothing until it has read the granted
//!    ballot of a majority of non-amnesiac peers, and never grants below it (a lower ballot could
//!    count the promises it forgot); it never joins a recovery quorum until a leader has re-synced
//!    its log and cleared its amnesiac flag.

use std::collections::{BTreeMap, VecDeque};

use super::wordhash::WordMap;

use super::election::{Election, ElectionAction, ElectionConfig};
use super::layout::*;
use super::membership::{Change, Membership, ReconfigError};
use super::quorum::majority;
use super::{Ballot, NodeId, Slot, MAX_NODES};
use crate::fabric::{Completion, FabricError, LocalMemory, Op, Post, Region};

/// What a node applies committed commands to.
pub trait StateMachine {
    /// Applies one command taken from the log. Returns the client, sequence and reply bytes to
    /// answer with, or `None` when the command names no client (it was malformed).
    fn apply(&mut self, command: &[u8]) -> Option<(u64, u64, Vec<u8>)>;
    /// A digest of the whole state, equal on replicas that applied the same commands.
    fn digest(&self) -> u64;
    /// The whole state, deterministically encoded into `out` (replaced): equal states give
    /// equal bytes. Returns the state's digest ([`StateMachine::digest`]). A large state takes a
    /// while: `progress` is called every megabyte or so (the data plane's heartbeat goes on).
    fn snapshot(&self, out: &mut Vec<u8>, progress: &mut dyn FnMut()) -> u64;
    /// Replaces the state with the one a [`StateMachine::snapshot`] encoded, calling
    /// `progress` now and then. On error the state is unchanged.
    fn restore(&mut self, bytes: &[u8], progress: &mut dyn FnMut()) -> Result<(), String>;
    /// The state as it is now, to encode later on another thread (a checkpoint is taken off the
    /// data path). Cheap for a state with structural sharing; it must not wait for the encoding.
    fn freeze(&self) -> Box<dyn FrozenState>;
}

/// A restarted node's hold on candidacy ([`Node`]'s `rejoin`).
#[derive(Clone, Copy, Debug)]
struct Rejoin {
    until: u64,
    commit_at_start: [u8; COMMIT_RECORD_BYTES],
    /// Our log's first undecided slot at the restart: applying past it means a leader has
    /// written us slots decided since.
    end_at_start: Slot,
}

/// How many candidate time-outs a restarted node waits, at most, for a leader to catch it up
/// before it may stand itself.
const REJOIN_TIMEOUTS: u64 = 4;

/// A state frozen by [`StateMachine::freeze`].
pub trait FrozenState: Send {
    /// Encodes the state as [`StateMachine::snapshot`] would have when it was frozen; returns
    /// its digest. `progress` is called every megabyte or so.
    fn encode(&self, out: &mut Vec<u8>, progress: &mut dyn FnMut()) -> u64;
}

/// A checkpoint for the driver to keep where a restart that keeps memory finds it (see
/// [`Node::restore_saved`]); each replaces the one before.
pub enum Checkpoint {
    /// The state below `index`, frozen: the driver encodes it, off the data path.
    Frozen {
        index: Slot,
        state: Box<dyn FrozenState>,
        /// The configuration in force at `index`.
        membership: Membership,
    },
    /// An installed snapshot's state, already encoded and verified against `descriptor`.
    Encoded {
        descriptor: SnapshotDescriptor,
        state: Vec<u8>,
    },
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checkpoint::Frozen { index, .. } => write!(f, "Checkpoint::Frozen({index})"),
            Checkpoint::Encoded { descriptor: d, .. } => {
                write!(f, "Checkpoint::Encoded({}, {:016x})", d.index, d.digest)
            }
        }
    }
}

impl Checkpoint {
    /// The descriptor and the encoded state, encoding a frozen state now; `progress` is
    /// called every megabyte. What a restart reads ([`Node::restore_saved`]) is the encoded
    /// descriptor followed by the state.
    pub fn into_parts(self, progress: &mut dyn FnMut()) -> (SnapshotDescriptor, Vec<u8>) {
        match self {
            Checkpoint::Frozen {
                index,
                state,
                membership,
            } => {
                let mut bytes = Vec::new();
                let digest = state.encode(&mut bytes, progress);
                let d =
                    SnapshotDescriptor::new_with(index, digest, 0, membership, &bytes, progress);
                (d, bytes)
            }
            Checkpoint::Encoded { descriptor, state } => (descriptor, state),
        }
    }
}

/// Deliberate protocol bugs that prove the simulator finds them. Only settable with the
/// `inject-bugs` feature; otherwise every switch reads false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    #[cfg(feature = "inject-bugs")]
    skip_recovery_read: bool,
    #[cfg(feature = "inject-bugs")]
    no_revoke: bool,
    #[cfg(feature = "inject-bugs")]
    commit_early: bool,
    #[cfg(feature = "inject-bugs")]
    sync_ignores_held: bool,
    #[cfg(feature = "inject-bugs")]
    reconfig_no_intersection: bool,
}

/// The names [`Bugs::parse`] accepts.
pub const BUG_NAMES: &[&str] = &[
    "skip-recovery-read",
    "no-revoke",
    "commit-early",
    "sync-ignores-held",
    "reconfig-no-intersection",
];

impl Bugs {
    /// Turns on the bug named `name`; an error when unknown or when built without the feature.
    pub fn parse(name: &str) -> Result<Bugs, String> {
        if !BUG_NAMES.contains(&name) {
            return Err(format!(
                "unknown bug '{name}'; known bugs: {}",
                BUG_NAMES.join(", ")
            ));
        }
        #[cfg(feature = "inject-bugs")]
        {
            let mut b = Bugs::default();
            match name {
                "skip-recovery-read" => b.skip_recovery_read = true,
                "no-revoke" => b.no_revoke = true,
                "sync-ignores-held" => b.sync_ignores_held = true,
                "reconfig-no-intersection" => b.reconfig_no_intersection = true,
                _ => b.commit_early = true,
            }
            Ok(b)
        }
        #[cfg(not(feature = "inject-bugs"))]
        Err(format!(
            "bug '{name}' needs a build with the inject-bugs feature \
             (cargo build --release -p rapax --features inject-bugs)"
        ))
    }

    fn skip_recovery_read(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        return self.skip_recovery_read;
        #[cfg(not(feature = "inject-bugs"))]
        false
    }

    fn no_revoke(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        return self.no_revoke;
        #[cfg(not(feature = "inject-bugs"))]
        false
    }

    fn commit_early(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        return self.commit_early;
        #[cfg(not(feature = "inject-bugs"))]
        false
    }

    /// Catch-up skips the slots a follower already holds at the leader's ballot without
    /// counting them as its acceptance (a write that landed but whose completion was lost then
    /// never counts, and the slot may wait for ever).
    fn sync_ignores_held(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        return self.sync_ignores_held;
        #[cfg(not(feature = "inject-bugs"))]
        false
    }

    /// A replace changes two acceptors in one step (the spare in, the old acceptor out), so a
    /// majority of the old ring and one of the new can be disjoint.
    pub fn reconfig_no_intersection(&self) -> bool {
        #[cfg(feature = "inject-bugs")]
        return self.reconfig_no_intersection;
        #[cfg(not(feature = "inject-bugs"))]
        false
    }
}

/// The tuning of one node (from the hardware profile and the cluster file).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The acceptors in ring (succession) order at epoch 0 (the cluster file's ring); log
    /// entries change it later ([`Membership`]).
    pub ring: Vec<NodeId>,
    /// The cluster file's other nodes: spares at epoch 0. Every node of `ring` and `spares`
    /// runs, follows the leader's log and may join the ring.
    pub spares: Vec<NodeId>,
    pub geometry: LogGeometry,
    /// Most slots in flight (assigned, not yet chosen).
    pub window_slots: u64,
    /// Most commands batched into one entry.
    pub batch_max_commands: usize,
    /// Most payload bytes of one entry (at most the geometry's room).
    pub batch_max_bytes: usize,
    /// Most client commands queued at the leader before it answers Busy.
    pub client_queue_max: usize,
    pub election: ElectionConfig,
    /// Period of retries: permission requests, acks, re-sync of absent followers, probes.
    pub retry_ticks: u64,
    /// A candidate without a majority of acks after this long gives up.
    pub candidate_timeout_ticks: u64,
    /// After stepping down, a node waits this long before it may stand again.
    pub stepdown_holdoff_ticks: u64,
    /// Ring repair: a leader replaces an acceptor held dead this long with a live, active
    /// spare (0: never).
    pub replace_after_ticks: u64,
    /// Slots the apply agent scans ahead for commit hints per tick.
    pub apply_scan_slots: u64,
    /// Slots per read when recovery or catch-up reads a log.
    pub read_chunk_slots: u64,
    /// Every this many applied slots a node takes a checkpoint: it digests its state and
    /// publishes index and digest in its control block (0: never).
    pub checkpoint_every: u64,
    /// Bytes per write when a leader streams a snapshot to a follower.
    pub snapshot_chunk_bytes: usize,
    /// Peer liveness comes from outside (the control-plane process, through
    /// [`Node::on_peer_status`]) instead of this node's own heartbeat reads.
    pub external_election: bool,
    pub bugs: Bugs,
}

/// How a node (re)starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new cluster: memory zeroed, nothing granted.
    Fresh,
    /// The processes restarted and the registered memory survived.
    MemoryKept,
    /// The processes restarted and the registered memory was lost (zeroed by the fabric).
    MemoryLost,
}

/// A client's command as it reaches a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub client: u64,
    pub seq: u64,
    /// The encoded command (it carries client and seq too; the state machine decodes it).
    pub command: Vec<u8>,
}

/// Why a request was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("not the leader; try node {leader_hint:?}")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("command of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("leader busy: client queue full")]
    Busy,
    #[error("log full: no slot left before the log is reused")]
    LogFull,
    /// The request could not be taken as it is (see [`BadRequest`]); retrying it cannot help.
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
}

/// Why a request was refused at the node's door.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum BadRequest {
    #[error("the command does not decode")]
    Malformed = 1,
    #[error("unknown operation")]
    UnknownOperation = 2,
    #[error("the command's client or sequence number differs from the request's")]
    Mismatch = 3,
    #[error("sequence number 0 is reserved")]
    ZeroSequence = 4,
}

impl BadRequest {
    /// The reason from its wire code.
    pub fn from_code(code: u8) -> Option<BadRequest> {
        Some(match code {
            1 => BadRequest::Malformed,
            2 => BadRequest::UnknownOperation,
            3 => BadRequest::Mismatch,
            4 => BadRequest::ZeroSequence,
            _ => return None,
        })
    }
}

/// An answer to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub client: u64,
    pub seq: u64,
    pub result: Result<Vec<u8>, ClientError>,
}

/// Observations for the simulator's checkers and for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    Candidate {
        ballot: Ballot,
    },
    BecameLeader {
        ballot: Ballot,
        recovered_from: Slot,
        recovered_to: Slot,
    },
    SteppedDown {
        ballot: Ballot,
        reason: &'static str,
    },
    /// The leader wrote `slot` to its own log and posted it to its active followers.
    Proposed {
        slot: Slot,
    },
    /// The leader counted `slot` chosen with this value.
    Chosen {
        slot: Slot,
        ballot: Ballot,
        value_digest: u64,
    },
    /// This node applied `slot`.
    Applied {
        slot: Slot,
        value_digest: u64,
    },
    Granted {
        to: NodeId,
        ballot: Ballot,
    },
    /// The leader stopped counting `peer` (an operation on it failed); it comes back through
    /// request and catch-up.
    FollowerLost {
        peer: NodeId,
        reason: &'static str,
    },
    /// The leader caught `peer` up over [from, to) with `writes` writes and made it active.
    FollowerSynced {
        peer: NodeId,
        from: Slot,
        to: Slot,
        writes: usize,
    },
    /// A chosen batch entry at `slot` whose payload does not split into commands: applied as an
    /// empty batch (every replica does the same).
    Unappliable {
        slot: Slot,
        reason: String,
    },
    /// This node's state after applying every slot below `index` has digest `digest` (a
    /// periodic checkpoint, or the state a leader sends in a snapshot).
    Checkpoint {
        index: Slot,
        digest: u64,
    },
    /// `peer` is behind the leader's log: the leader streams it a snapshot of its state below
    /// `index`, `bytes` long.
    SnapshotSent {
        peer: NodeId,
        index: Slot,
        bytes: usize,
    },
    /// This node installed a snapshot: its state is the one after every slot below `index`.
    Restored {
        index: Slot,
        digest: u64,
    },
    /// A snapshot in this node's log did not verify or decode and was discarded.
    SnapshotRejected {
        index: Slot,
        reason: String,
    },
    /// The leader proposed a configuration change in `slot`.
    ReconfigProposed {
        slot: Slot,
        membership: Membership,
    },
    /// This node applied the change in `slot`: `membership` governs the slots after it.
    Reconfigured {
        slot: Slot,
        membership: Membership,
    },
    /// The leader's ring repair: spare `new` takes the place of `old`, dead too long.
    RingRepair {
        old: NodeId,
        new: NodeId,
    },
    /// The leader dropped the rest of a change (its epochs never come).
    ReconfigAbandoned {
        epoch: u64,
        reason: &'static str,
    },
}

/// What one call asks the driver to do.
#[derive(Debug, Default)]
pub struct Output {
    pub posts: Vec<Post>,
    pub replies: Vec<ClientReply>,
    pub notes: Vec<Note>,
    /// A checkpoint to keep where a restart that keeps memory finds it: the driver replaces
    /// its previous one.
    pub checkpoint: Option<Checkpoint>,
}

impl Output {
    pub fn clear(&mut self) {
        self.posts.clear();
        self.replies.clear();
        self.notes.clear();
        self.checkpoint = None;
    }
}

/// The role of a node, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    Candidate,
    Recovering,
    Leader,
}

// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Heartbeat {
        peer: NodeId,
        token: u64,
    },
    Request,
    Ack {
        ballot: Ballot,
    },
    RecHeader {
        ballot: Ballot,
        peer: NodeId,
    },
    RecPromise {
        ballot: Ballot,
        peer: NodeId,
    },
    RecTail {
        ballot: Ballot,
        peer: NodeId,
        from: Slot,
    },
    RecWrite {
        ballot: Ballot,
        peer: NodeId,
    },
    SyncHeader {
        ballot: Ballot,
        peer: NodeId,
    },
    SyncTail {
        ballot: Ballot,
        peer: NodeId,
        from: Slot,
    },
    SlotWrite {
        ballot: Ballot,
        peer: NodeId,
        slot: Slot,
    },
    Meta {
        ballot: Ballot,
        peer: NodeId,
    },
    /// A read of the follower's published applied index (on the control mesh).
    AppliedRead {
        ballot: Ballot,
        peer: NodeId,
    },
    /// A write of a state transfer: the amnesiac mark, a chunk or the descriptor.
    Snap {
        ballot: Ballot,
        peer: NodeId,
        /// Which transfer ([`Transfer::id`]): a late completion of an abandoned one must not
        /// count for the next.
        transfer: u64,
    },
}

impl Purpose {
    /// The ballot whose connections carry this operation (zero on the control mesh).
    fn ballot(&self) -> Ballot {
        match *self {
            Purpose::Heartbeat { .. } | Purpose::Request => Ballot::ZERO,
            Purpose::Ack { .. } | Purpose::AppliedRead { .. } => Ballot::ZERO,
            Purpose::RecHeader { ballot, .. }
            | Purpose::RecPromise { ballot, .. }
            | Purpose::RecTail { ballot, .. }
            | Purpose::RecWrite { ballot, .. }
            | Purpose::SyncHeader { ballot, .. }
            | Purpose::SyncTail { ballot, .. }
            | Purpose::SlotWrite { ballot, .. }
            | Purpose::Meta { ballot, .. }
            | Purpose::Snap { ballot, .. } => ballot,
        }
    }

    /// What the operation was for, in words (for notes).
    fn name(&self) -> &'static str {
        match self {
            Purpose::Heartbeat { .. } => "heartbeat read",
            Purpose::Request => "request",
            Purpose::Ack { .. } => "ack",
            Purpose::RecHeader { .. } => "recovery header read",
            Purpose::RecPromise { .. } => "recovery promise",
            Purpose::RecTail { .. } => "recovery log read",
            Purpose::RecWrite { .. } => "recovery write",
            Purpose::SyncHeader { .. } => "catch-up header read",
            Purpose::SyncTail { .. } => "catch-up log read",
            Purpose::SlotWrite { .. } => "slot write",
            Purpose::Meta { .. } => "commit record write",
            Purpose::AppliedRead { .. } => "applied-index read",
            Purpose::Snap { .. } => "snapshot write",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct LogHeader {
    min_ballot: Ballot,
    /// Every slot below is chosen: the node's own index or a floor a leader raised.
    first_undecided: Slot,
    /// The node's own index: its log holds the chosen value of every slot from its applied
    /// index up to here.
    own_first_undecided: Slot,
    amnesiac: bool,
    applied: Slot,
}

impl LogHeader {
    /// The header of our own log.
    fn local(mem: &impl LocalMemory) -> LogHeader {
        let mut b = [0u8; LOG_HEADER_BYTES];
        mem.read_log(0, &mut b);
        LogHeader::parse(&b)
    }

    /// The header at the start of a read, if the read is long enough.
    fn read(b: &[u8]) -> Option<LogHeader> {
        (b.len() >= LOG_HEADER_BYTES).then(|| LogHeader::parse(b))
    }

    fn parse(b: &[u8]) -> LogHeader {
        LogHeader {
            min_ballot: Ballot(get_u64(b, LOG_MIN_BALLOT)),
            first_undecided: get_u64(b, LOG_FIRST_UNDECIDED).max(get_u64(b, LOG_DECIDED_FLOOR)),
            own_first_undecided: get_u64(b, LOG_FIRST_UNDECIDED),
            amnesiac: get_u64(b, LOG_AMNESIAC) != 0,
            applied: get_u64(b, LOG_APPLIED),
        }
    }
}

/// What a log holds at one slot, as far as recovery and catch-up care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    ballot: Ballot,
    value_digest: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum RecPhase {
    Headers,
    Promise,
    Tails,
    Raise,
    Rewrite,
}

#[derive(Debug)]
struct Recovery {
    ballot: Ballot,
    phase: RecPhase,
    outstanding: usize,
    headers: BTreeMap<NodeId, LogHeader>,
    quorum: Vec<NodeId>,
    lo: Slot,
    max_fuo: Slot,
    held: BTreeMap<NodeId, BTreeMap<Slot, Held>>,
    /// The adopted entry per slot: highest accepted ballot, with its bytes.
    best: BTreeMap<Slot, (Ballot, Vec<u8>)>,
    end: Slot,
    /// Quorum members whose decided floor was raised (far behind): their rewritten entries
    /// carry no commit hint, and they are caught up (by snapshot) before they count as
    /// active followers, so no hint ever leads them over the gap in their log.
    raised: Vec<NodeId>,
}

#[derive(Debug)]
enum Follower {
    /// Not written to; re-requested after `since + retry`.
    Absent {
        since: u64,
    },
    /// Our request was written; waiting for its ack.
    Requested {
        at: u64,
    },
    SyncHeader,
    SyncTail {
        fuo: Slot,
        /// Its first-undecided index (its entries stay within half a log above it).
        decided: Slot,
        amnesiac: bool,
        read_to: Slot,
        held: BTreeMap<Slot, Held>,
    },
    /// Read: being written what differs, a bounded step per leader turn, from `next` up to
    /// our next slot (which moves meanwhile); active once it has caught up.
    SyncWrite {
        next: Slot,
        from: Slot,
        amnesiac: bool,
        held: BTreeMap<Slot, Held>,
        writes: usize,
    },
    /// Receives every fast-path write.
    Active,
    /// Behind the leader's log: receiving a snapshot.
    Snapshot(Box<Transfer>),
}

/// A state transfer to one follower: stream the snapshot over the half of its entry array that
/// holds nothing it still needs, write the descriptor, wait for it to install.
#[derive(Debug)]
struct Transfer {
    /// Unique per node (the first work-request id at its start).
    id: u64,
    index: Slot,
    /// The entry-array index the snapshot starts at (see [`snapshot_offset`]).
    at: u64,
    data: Vec<u8>,
    descriptor: SnapshotDescriptor,
    stage: TransferStage,
    sent: usize,
    inflight: usize,
    since: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum TransferStage {
    Chunks,
    Install,
    Wait,
}

/// Chunk writes of a transfer in flight at once.
const TRANSFER_WINDOW: usize = 4;

#[derive(Debug)]
struct InFlight {
    value_digest: u64,
    acked_by: u32,
}

#[derive(Debug)]
struct Leader {
    ballot: Ballot,
    next_slot: Slot,
    commit: Slot,
    hint_sent: Slot,
    /// When the leader last wrote to every active follower; an idle leader re-writes its commit
    /// record each retry period, so a deposed one learns it from the permission errors.
    last_touch: u64,
    /// When the commit index, ahead of the last one announced, is announced on its own: the
    /// next proposal carries it anyway (its `commit_hint`), so under load no announcement
    /// goes out and a command costs one write per follower; an idle leader announces it after
    /// [`announce_delay`].
    announce_at: Option<u64>,
    inflight: BTreeMap<Slot, InFlight>,
    followers: BTreeMap<NodeId, Follower>,
    queue: VecDeque<ClientRequest>,
    /// The entries this leader proposed and has not applied yet, in slot order: its own log
    /// holds exactly these (no one else writes it while it leads), so apply takes them from
    /// here instead of reading and decoding the log again.
    proposed: VecDeque<(Entry, u64)>,
    /// The lowest slot its own log still holds (with every slot up to `next_slot`): catch-up
    /// from below needs a snapshot.
    log_start: Slot,
    /// The applied index each follower last published, as far as the leader read it.
    applied_of: [Slot; MAX_NODES],
    /// How many times this leader has marked each follower absent: an operation carries its
    /// target's count from when it was posted, and a failure of one posted before the last
    /// mark is stale (that loss is known, and the follower may be on its way back).
    absences: [u64; MAX_NODES],
    /// Followers with an applied-index read in flight (bit set).
    reading: u64,
    /// Since when proposals wait for a follower's apply (log reuse), if they do.
    blocked_since: Option<u64>,
    /// The configuration that governs the next slot: which acceptors' writes count.
    conf: Membership,
    /// A change proposed and not yet chosen (its slot, the configuration it makes): nothing
    /// is proposed past it until it is chosen.
    conf_slot: Option<(Slot, Membership)>,
    /// The steps of a change still to propose, in order, and since when the first waits.
    changes: VecDeque<Membership>,
    change_since: u64,
}

impl Leader {
    /// Marks `peer` absent (it is requested again after a retry period) and counts the mark.
    fn lose(&mut self, peer: NodeId, now: u64) {
        self.followers.insert(peer, Follower::Absent { since: now });
        self.absences[peer as usize] += 1;
    }
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate {
        ballot: Ballot,
        since: u64,
        last_request: u64,
    },
    Recovering(Box<Recovery>),
    Leader(Box<Leader>),
}

/// A restarted-amnesiac node learning the ballot floor before it grants anything: the granted
/// ballots its heartbeat reads returned from non-amnesiac peers.
#[derive(Debug, Default)]
struct Probe {
    answers: BTreeMap<NodeId, Ballot>,
}

/// One cluster member's protocol state.
pub struct Node<S> {
    cfg: NodeConfig,
    /// Every node of the cluster file: the ring of epoch 0 and the spares.
    nodes: Vec<NodeId>,
    /// The configuration after every slot this node applied.
    conf: Membership,
    /// Later configurations a recovery found in the logs it read: a candidate's acks must hold
    /// a majority of each of them too.
    /// (Forgotten once applied past their slots.)
    newer_confs: Vec<(Slot, Membership)>,
    sm: S,
    election: Election,
    now: u64,
    next_wr: u64,
    /// Posted operations by work-request id: what each was for, and its target's absence
    /// count when it was posted ([`Leader::absences`]).
    pending: WordMap<u64, (Purpose, u64)>,
    /// Highest ballot seen anywhere (requests, grants, promises).
    max_seen: Ballot,
    /// Ballot holding permission on our log (mirrors the control block).
    granted: Ballot,
    /// Grants nothing below this (the highest ballot a majority had granted when an amnesiac
    /// node probed; its own leader may re-take it); `None` while still probing.
    grant_floor: Option<Ballot>,
    probe: Option<Probe>,
    ack_due: Option<(NodeId, Ballot, u64)>,
    peer_amnesiac: [bool; MAX_NODES],
    /// Peers whose state is behind their log (they do not lead).
    peer_behind: [bool; MAX_NODES],
    /// Peers that stood or led at their last heartbeat read.
    peer_leading: [bool; MAX_NODES],
    /// The configuration epoch each peer published at its last heartbeat read.
    peer_epoch: [u64; MAX_NODES],
    /// Since when each peer has been held dead (for ring repair; kept across leader changes,
    /// so a new leader does not start the count again).
    dead_since: [Option<u64>; MAX_NODES],
    /// The node we take to be the ring's first electable one and since when, while it does
    /// not stand: past a grace period we stand ourselves.
    deferring: Option<(NodeId, u64)>,
    /// Restarted: we stand for nothing (and publish ourselves behind) until a leader has
    /// caught us up since the restart, or until the tick given here passes with no other live
    /// node able to lead (a cluster restarting whole needs us). A node back from a crash
    /// catches up first (seed 004: no suspicion while a replica catches up); its own log,
    /// however long, may be far behind the cluster's.
    rejoin: Option<Rejoin>,
    /// The lowest slot from which our own log holds the chosen entries up to our applied
    /// index (less what a lap of the log has since overwritten): 0 for a fresh node, the
    /// snapshot's index after one is installed, the raised floor after a recovering leader
    /// raised it, unknown (`Slot::MAX`) after memory was lost. Leading, we catch a follower up
    /// by log from here, not only from the recovered range.
    log_from: Slot,
    /// What our log said was decided when we started: `first_undecided` never drops below it,
    /// and until we have applied that far we do not lead.
    decided_floor: Slot,
    /// The decided floor a recovering leader raised in our log ([`LOG_DECIDED_FLOOR`]).
    raised_floor: Slot,
    /// Found, as a candidate, that our log is over half a log behind the others': we do not
    /// lead until we have applied this far (a leader sends us a snapshot).
    behind_until: Option<Slot>,
    /// Liveness reported by the control plane (with [`NodeConfig::external_election`]).
    peer_alive: [bool; MAX_NODES],
    hold_candidacy_until: u64,
    role: Role,
    applied: Slot,
    known_commit: Slot,
    /// Encoding buffer for outgoing entries.
    scratch: Vec<u8>,
    /// Copy-out buffer for reading our own log.
    read_buf: Vec<u8>,
}

impl<S: StateMachine> Node<S> {
    /// Starts (or restarts) a node on its memory. With [`Start::MemoryLost`] the memory must be
    /// zeroed already; the node marks itself amnesiac.
    pub fn new(
        cfg: NodeConfig,
        sm: S,
        mem: &mut impl LocalMemory,
        start: Start,
        now: u64,
    ) -> Node<S> {
        let mut nodes: Vec<NodeId> = cfg.ring.iter().chain(&cfg.spares).copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert!(
            nodes.contains(&cfg.id),
            "node {} in neither ring nor spares",
            cfg.id
        );
        assert!(nodes.len() <= MAX_NODES && nodes.iter().all(|&n| (n as usize) < MAX_NODES));
        assert!(cfg.window_slots >= 1 && cfg.batch_max_commands >= 1);
        assert!(
            cfg.window_slots <= cfg.geometry.capacity / 4,
            "the window must fit a quarter of the log (it is reused half a log behind)"
        );
        assert!(cfg.batch_max_bytes <= cfg.geometry.max_payload());
        assert_eq!(mem.id(), cfg.id);
        let election = Election::new(cfg.id, nodes.clone(), cfg.election.clone());
        let conf = Membership::initial(&cfg.ring);
        let granted = Ballot(mem.control_word(CB_GRANTED_BALLOT));
        let mut node = Node {
            nodes,
            conf,
            newer_confs: Vec::new(),
            election,
            now,
            next_wr: 1,
            pending: WordMap::default(),
            max_seen: granted,
            granted,
            grant_floor: Some(Ballot::ZERO),
            probe: None,
            ack_due: None,
            peer_amnesiac: [false; MAX_NODES],
            peer_behind: [false; MAX_NODES],
            peer_leading: [false; MAX_NODES],
            peer_epoch: [0; MAX_NODES],
            dead_since: [None; MAX_NODES],
            deferring: None,
            rejoin: None,
            log_from: 0,
            decided_floor: 0,
            raised_floor: 0,
            behind_until: None,
            peer_alive: [true; MAX_NODES],
            hold_candidacy_until: now,
            role: Role::Follower,
            applied: 0,
            known_commit: 0,
            scratch: Vec::new(),
            read_buf: Vec::new(),
            sm,
            cfg,
        };
        if start != Start::Fresh {
            let mut record = [0u8; COMMIT_RECORD_BYTES];
            mem.read_log(LOG_COMMIT, &mut record);
            node.rejoin = Some(Rejoin {
                until: now + node.cfg.candidate_timeout_ticks * REJOIN_TIMEOUTS,
                commit_at_start: record,
                end_at_start: mem.log_word(LOG_FIRST_UNDECIDED),
            });
        }
        match start {
            Start::Fresh => {}
            Start::MemoryKept => {
                // The fabric lost its rights table with the process; restore the grant the
                // control block records. The state machine restarts empty and re-applies.
                if granted != Ballot::ZERO {
                    mem.grant(granted.node(), granted);
                    // Our ack may have been lost with the old process: send it again.
                    node.ack_due = Some((granted.node(), granted, now));
                }
                let header = LogHeader::local(mem);
                // The state machine restarts empty: it replays our own log, or, when the log
                // was reused past slot 0, waits for a leader's snapshot. Either way it does not
                // lead before it has applied what the log says is decided; the log itself (an
                // acceptor's promises and accepted entries) is intact and counts.
                node.decided_floor = mem.log_word(LOG_FIRST_UNDECIDED);
                mem.write_log_owner(LOG_APPLIED, &0u64.to_le_bytes());
                mem.set_control_word(CB_APPLIED, 0);
                node.max_seen = node.max_seen.max(header.min_ballot);
                node.hold_candidacy_until = now + node.cfg.stepdown_holdoff_ticks;
                if header.amnesiac && granted == Ballot::ZERO {
                    // Still amnesiac and it had not granted anything since: its floor is
                    // unknown again, so probe again before granting.
                    node.grant_floor = None;
                    node.probe = Some(Probe::default());
                }
            }
            Start::MemoryLost => {
                node.log_from = Slot::MAX;
                mem.write_log_owner(LOG_AMNESIAC, &1u64.to_le_bytes());
                mem.set_control_word(CB_AMNESIAC, CB_FLAG_AMNESIAC);
                node.grant_floor = None;
                node.probe = Some(Probe::default());
                node.hold_candidacy_until = now + node.cfg.stepdown_holdoff_ticks;
            }
        }
        node
    }

    /// After a restart that kept memory, before the first turn: resumes the state machine from
    /// the last checkpoint this node kept ([`Output::checkpoint`]), so it replays its log from
    /// there instead of from slot 0 (which log reuse may have overwritten). Returns the index it
    /// resumes from; on error (torn, or not a checkpoint) nothing changes and the node replays
    /// from 0, or waits for a leader's snapshot.
    pub fn restore_saved(
        &mut self,
        saved: &[u8],
        mem: &mut impl LocalMemory,
    ) -> Result<Slot, String> {
        let d = SnapshotDescriptor::decode(saved).ok_or("no checkpoint descriptor")?;
        let state = &saved[SNAPSHOT_DESCRIPTOR_BYTES..];
        if !d.verifies(state) {
            return Err("checkpoint checksum mismatch".into());
        }
        if self.applied != 0 {
            return Err("the node has applied slots already".into());
        }
        self.sm.restore(state, &mut || beat(mem))?;
        if self.sm.digest() != d.digest {
            return Err("checkpoint state digest mismatch".into());
        }
        self.applied = d.index;
        self.conf = d.membership;
        self.log_from = self.log_from.max(d.index);
        self.known_commit = self.known_commit.max(d.index);
        self.publish_applied(mem);
        Ok(d.index)
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Whether work is left over for the next turn that no input will bring: a follower's
    /// catch-up between two of its steps. A driver should not park while this holds.
    pub fn has_steps_left(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l
            .followers
            .values()
            .any(|f| matches!(f, Follower::SyncWrite { .. })))
    }

    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Recovering(_) => RoleKind::Recovering,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// The ballot this node leads or stands with, if any.
    pub fn own_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Follower => None,
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Recovering(r) => Some(r.ballot),
            Role::Leader(l) => Some(l.ballot),
        }
    }

    /// The ballot this node granted its log to (the view it follows).
    pub fn granted(&self) -> Ballot {
        self.granted
    }

    /// The node clients should talk to, as far as this node knows.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(_) => Some(self.cfg.id),
            // We granted ourselves but do not lead (any more): we do not know who does.
            _ if self.granted != Ballot::ZERO && self.granted.node() != self.cfg.id => {
                Some(self.granted.node())
            }
            _ => None,
        }
    }

    /// The leader's view of each follower (empty unless leading): "active", "absent",
    /// "requested" or "syncing".
    pub fn followers(&self) -> Vec<(NodeId, &'static str)> {
        let mut v = Vec::new();
        self.for_each_follower(|p, state| v.push((p, state)));
        v
    }

    /// [`Node::followers`] without allocating, for a driver that publishes it every turn.
    pub fn for_each_follower(&self, mut f: impl FnMut(NodeId, &'static str)) {
        let Role::Leader(l) = &self.role else {
            return;
        };
        for (&p, st) in l.followers.iter() {
            let state = match st {
                Follower::Active => "active",
                Follower::Absent { .. } => "absent",
                Follower::Requested { .. } => "requested",
                Follower::SyncHeader | Follower::SyncTail { .. } | Follower::SyncWrite { .. } => {
                    "syncing"
                }
                Follower::Snapshot(_) => "snapshot",
            };
            f(p, state);
        }
    }

    pub fn applied(&self) -> Slot {
        self.applied
    }

    /// The leader's commit index (slots below are chosen), or the highest this node knows.
    pub fn commit(&self) -> Slot {
        match &self.role {
            Role::Leader(l) => l.commit,
            _ => self.known_commit,
        }
    }

    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    pub fn election(&self) -> &Election {
        &self.election
    }

    pub fn is_amnesiac(&self, mem: &impl LocalMemory) -> bool {
        mem.log_word(LOG_AMNESIAC) != 0
    }

    fn post(&mut self, out: &mut Output, target: NodeId, op: Op, purpose: Purpose) {
        self.post_with(out, target, op, purpose, false);
    }

    /// Posts the first operation of a new data connection to `target` (see [`Post::reconnect`]).
    fn post_reconnect(&mut self, out: &mut Output, target: NodeId, op: Op, purpose: Purpose) {
        self.post_with(out, target, op, purpose, true);
    }

    fn post_with(
        &mut self,
        out: &mut Output,
        target: NodeId,
        op: Op,
        purpose: Purpose,
        reconnect: bool,
    ) {
        let wr_id = self.next_wr;
        self.next_wr += 1;
        let ballot = purpose.ballot();
        let era = match &self.role {
            Role::Leader(l) => l.absences[target as usize],
            _ => 0,
        };
        self.pending.insert(wr_id, (purpose, era));
        out.posts.push(Post {
            wr_id,
            target,
            op,
            reconnect,
            ballot,
        });
    }

    /// Every other node of the cluster: acceptors and spares alike follow the leader's log.
    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.cfg.id;
        self.nodes.iter().copied().filter(move |&p| p != me)
    }

    fn n(&self) -> usize {
        self.conf.len()
    }

    /// Whether the nodes of `set` hold a majority of the configuration we applied and of every
    /// later one a recovery found.
    fn covers(&self, set: u64) -> bool {
        covered_by(&self.conf, &self.newer_confs, set)
    }

    /// The configuration after every slot applied (what this node takes the ring to be).
    pub fn membership(&self) -> Membership {
        self.conf
    }

    /// Asks the leader to change the configuration; returns the configurations it will
    /// propose, one step each. Refused (with the reason) when this node does not lead, when a
    /// change is in flight, or when the change is invalid ([`Membership::plan`]); a node joining
    /// the ring must be an active follower (caught up as a learner) already.
    pub fn reconfigure(&mut self, change: &Change) -> Result<Vec<Membership>, ReconfigError> {
        let me = self.cfg.id;
        let one_step = self.cfg.bugs.reconfig_no_intersection();
        let hint = self.leader_hint();
        let now = self.now;
        let Role::Leader(l) = &mut self.role else {
            return Err(ReconfigError::NotLeader {
                leader_hint: hint.filter(|&h| h != me),
            });
        };
        if let Some(last) = l.changes.back().or(l.conf_slot.as_ref().map(|(_, c)| c)) {
            return Err(ReconfigError::InFlight { epoch: last.epoch });
        }
        let live = active_followers(&l.followers) | 1 << me;
        let steps = l.conf.plan(change, &self.nodes, live, one_step)?;
        for step in &steps {
            for n in step.ring() {
                if live & (1 << n) == 0 && !l.conf.contains(*n) {
                    return Err(ReconfigError::NotCaughtUp(*n));
                }
            }
        }
        l.changes.extend(steps.iter().copied());
        l.change_since = now;
        Ok(steps)
    }

    // ---- driving --------------------------------------------------------------------------

    /// One turn of the node's agents at time `now`: control plane, then data plane.
    pub fn tick(&mut self, now: u64, mem: &mut impl LocalMemory, out: &mut Output) {
        self.tick_control(now, mem, out);
        self.tick_data(now, mem, out);
    }

    /// One turn of the control plane: heartbeat reads and election, the amnesia probe, granting
    /// the log to the highest request, standing as a candidate and collecting acks.
    ///
    /// The two planes are separate processes in a deployment; drivers may run their turns in any
    /// order (the simulator draws it), so a data plane may act on a stale view for a while.
    pub fn tick_control(&mut self, now: u64, mem: &mut impl LocalMemory, out: &mut Output) {
        self.now = now;
        let mut actions = Vec::new();
        if !self.cfg.external_election {
            self.election.tick(now, &mut actions);
        }
        for ElectionAction::ReadHeartbeat { peer, token } in actions {
            let op = Op::Read {
                region: Region::Control,
                offset: 0,
                len: CB_AMNESIAC + 8,
            };
            self.post(out, peer, op, Purpose::Heartbeat { peer, token });
        }
        self.probe_tick();
        self.grant_tick(mem, out);
        self.role_tick(mem, out);
    }

    /// One turn of the data plane: the heartbeat, the leader's fast path, apply.
    pub fn tick_data(&mut self, now: u64, mem: &mut impl LocalMemory, out: &mut Output) {
        self.now = now;
        // The data plane's heartbeat: a stuck data plane stops it.
        beat(mem);
        self.leader_tick(mem, out);
        self.apply(mem, out);
    }

    /// The leader's proposals of its queued client commands, alone (no upkeep, no apply): for
    /// a driver that has just queued requests and answers them before the rest of its turn.
    /// Does nothing unless this node leads.
    pub fn propose_queued_now(&mut self, now: u64, mem: &mut impl LocalMemory, out: &mut Output) {
        self.now = now;
        self.propose_queued(mem, out);
    }

    /// Applies what became chosen since the last turn (and answers its clients) without a
    /// whole turn: a driver whose completions arrive within its turn calls this after them, so
    /// a command is answered in the turn that proposed it.
    pub fn settle(&mut self, now: u64, mem: &mut impl LocalMemory, out: &mut Output) {
        self.now = now;
        self.apply(mem, out);
    }

    /// A completion of one of this node's posts.
    pub fn on_completion(
        &mut self,
        now: u64,
        c: Completion,
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        self.now = now;

        let Some((purpose, era)) = self.pending.remove(&c.wr_id) else {
            return; // a completion from before a restart, or a duplicate
        };
        match purpose {
            Purpose::Heartbeat { peer, token } => {
                let counter = match &c.result {
                    Ok(Some(b)) if b.len() >= CB_AMNESIAC + 8 => {
                        let flags = get_u64(b, CB_AMNESIAC);
                        let granted = Ballot(get_u64(b, CB_GRANTED_BALLOT));
                        let epoch = get_u64(b, CB_EPOCH);
                        self.peer_read(peer, granted, flags, epoch);
                        Some(get_u64(b, CB_HEARTBEAT))
                    }
                    _ => None,
                };
                self.election.on_read(peer, token, counter);
            }
            Purpose::Request => {}
            Purpose::Ack { ballot } => {
                if let Some((to, b, _)) = self.ack_due {
                    if b == ballot && c.result.is_ok() {
                        self.ack_due = None;
                    } else if b == ballot {
                        self.ack_due = Some((to, b, now + self.cfg.retry_ticks));
                    }
                }
            }
            Purpose::RecHeader { ballot, peer }
            | Purpose::RecPromise { ballot, peer }
            | Purpose::RecTail { ballot, peer, .. }
            | Purpose::RecWrite { ballot, peer } => {
                self.recovery_completion(purpose, ballot, peer, c.result, mem, out)
            }
            Purpose::SyncHeader { ballot, peer }
            | Purpose::SyncTail { ballot, peer, .. }
            | Purpose::SlotWrite { ballot, peer, .. }
            | Purpose::Meta { ballot, peer }
            | Purpose::AppliedRead { ballot, peer }
            | Purpose::Snap { ballot, peer, .. } => {
                self.leader_completion(purpose, era, ballot, peer, c.result, mem, out)
            }
        }
    }

    /// What a successful heartbeat read of `peer`'s control block tells: the ballot it granted
    /// (a candidate must stand above it) and whether it lost its memory.
    fn peer_read(&mut self, peer: NodeId, granted: Ballot, flags: u64, epoch: u64) {
        self.peer_epoch[peer as usize] = epoch;
        let amnesiac = flags & CB_FLAG_AMNESIAC != 0;
        self.peer_amnesiac[peer as usize] = amnesiac;
        self.peer_behind[peer as usize] = flags & CB_FLAG_BEHIND != 0;
        self.peer_leading[peer as usize] = flags & CB_FLAG_LEADING != 0;
        self.max_seen = self.max_seen.max(granted);
        if let (Some(p), false) = (&mut self.probe, amnesiac) {
            p.answers.insert(peer, granted);
        }
    }

    /// With [`NodeConfig::external_election`]: the control plane's verdict on `peer` (alive by
    /// pull-score) and, when its last heartbeat read succeeded, what that read returned: the
    /// ballot it granted and its flags word ([`CB_FLAG_AMNESIAC`], [`CB_FLAG_BEHIND`]).
    pub fn on_peer_status(
        &mut self,
        now: u64,
        peer: NodeId,
        alive: bool,
        read: Option<(Ballot, u64, u64)>,
    ) {
        self.now = now;
        if peer as usize >= MAX_NODES || peer == self.cfg.id || !self.nodes.contains(&peer) {
            return;
        }
        self.peer_alive[peer as usize] = alive;
        if let Some((granted, flags, epoch)) = read {
            self.peer_read(peer, granted, flags, epoch);
        }
    }

    /// Whether `peer` is alive: by this node's own pull-score, or as the control plane said.
    fn is_alive(&self, peer: NodeId) -> bool {
        if self.cfg.external_election {
            peer == self.cfg.id || self.peer_alive[peer as usize]
        } else {
            self.election.is_alive(peer)
        }
    }

    /// A client's command reaching this node.
    pub fn on_client_request(
        &mut self,
        now: u64,
        req: ClientRequest,
        _mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        self.now = now;
        let room = self
            .cfg
            .batch_max_bytes
            .min(self.cfg.geometry.max_payload());
        let need = Batch::encoded_len([req.command.as_slice()]);
        let leader_hint = self.leader_hint();
        let reply = |result| ClientReply {
            client: req.client,
            seq: req.seq,
            result,
        };
        if need > room {
            out.replies.push(reply(Err(ClientError::TooLarge {
                bytes: req.command.len(),
                max: room - Batch::encoded_len([&[][..]]),
            })));
            return;
        }
        match &mut self.role {
            Role::Leader(l) => {
                if l.queue.len() >= self.cfg.client_queue_max {
                    out.replies.push(reply(Err(ClientError::Busy)));
                } else {
                    l.queue.push_back(req);
                }
            }
            _ => out
                .replies
                .push(reply(Err(ClientError::NotLeader { leader_hint }))),
        }
    }

    // ---- control plane: amnesia probe, grants, candidacy ------------------------------------

    /// An amnesiac node's probe is done once a majority of non-amnesiac peers answered a
    /// heartbeat read (which returns their granted ballot): the floor is the highest of those.
    fn probe_tick(&mut self) {
        let Some(p) = &self.probe else { return };
        if p.answers.len() >= majority(self.n()) {
            let floor = p.answers.values().copied().max().unwrap_or(Ballot::ZERO);
            self.grant_floor = Some(floor);
            self.max_seen = self.max_seen.max(floor);
            self.probe = None;
        }
    }

    fn grant_tick(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        // Publish the flags: the log's amnesiac flag (set by a leader before a state transfer,
        // cleared by one once the log is re-synced) and whether our state is behind.
        self.refresh_decided(mem);
        self.rejoin_tick(mem);
        let mut flags = 0;
        if mem.log_word(LOG_AMNESIAC) != 0 {
            flags |= CB_FLAG_AMNESIAC;
        }
        if self.is_behind() {
            flags |= CB_FLAG_BEHIND;
        }
        if !matches!(self.role, Role::Follower) {
            flags |= CB_FLAG_LEADING;
        }
        let epoch = match &self.role {
            Role::Leader(l) => l.conf.epoch.max(self.conf.epoch),
            _ => self.conf.epoch,
        };
        if mem.control_word(CB_EPOCH) != epoch {
            mem.set_control_word(CB_EPOCH, epoch);
        }
        if mem.control_word(CB_AMNESIAC) != flags {
            mem.set_control_word(CB_AMNESIAC, flags);
        }
        let min_ballot = Ballot(mem.log_word(LOG_MIN_BALLOT));
        self.max_seen = self.max_seen.max(min_ballot);
        let mut best: Option<(NodeId, Ballot)> = None;
        for &p in &self.nodes {
            let r = Ballot(mem.control_word(cb_request(p)));
            if r == Ballot::ZERO || r.node() != p {
                continue;
            }
            self.max_seen = self.max_seen.max(r);
            if best.is_none_or(|(_, b)| r > b) {
                best = Some((p, r));
            }
        }
        if let (Some((p, r)), Some(floor)) = (best, self.grant_floor) {
            if r > self.granted && r >= floor {
                // Revocation first: complete when it returns, so the old holder can land nothing
                // after the new holder's first write.
                if !self.cfg.bugs.no_revoke() {
                    for (w, _) in mem.writers() {
                        mem.revoke(w);
                    }
                }
                mem.grant(p, r);
                self.granted = r;
                mem.set_control_word(CB_GRANTED_BALLOT, r.0);
                out.notes.push(Note::Granted { to: p, ballot: r });
                if self.own_ballot().is_some_and(|b| b < r) {
                    self.step_down("a higher ballot asked for permission", out);
                }
                self.ack_due = Some((p, r, self.now));
            }
        }
        if let Some((to, b, due)) = self.ack_due {
            if self.now >= due && b == self.granted {
                if to == self.cfg.id {
                    mem.set_control_word(cb_ack(to), b.0);
                    self.ack_due = None;
                } else {
                    self.ack_due = Some((to, b, u64::MAX));
                    let op = Op::Write {
                        region: Region::Control,
                        offset: cb_ack(self.cfg.id),
                        bytes: b.0.to_le_bytes().to_vec(),
                    };
                    self.post(out, to, op, Purpose::Ack { ballot: b });
                }
            } else if b != self.granted {
                self.ack_due = None;
            }
        }
    }

    /// Whether our state machine is behind what our log says is decided, or we are rejoining
    /// after a restart (we do not lead).
    fn is_behind(&self) -> bool {
        self.applied < self.decided_floor.max(self.raised_floor)
            || self.behind_until.is_some()
            || self.rejoin.is_some()
    }

    /// Ends the rejoin hold once a leader has given us slots decided since the restart (a
    /// commit record, or entries past our old log's end) and we applied all we know to be
    /// committed, or once its time is up with no other live node able to lead.
    fn rejoin_tick(&mut self, mem: &impl LocalMemory) {
        let Some(r) = &self.rejoin else { return };
        let mut record = [0u8; COMMIT_RECORD_BYTES];
        mem.read_log(LOG_COMMIT, &mut record);
        let synced = (record != r.commit_at_start
            && CommitRecord::decode(&record).is_some_and(|c| self.applied >= c.index))
            || (self.applied > r.end_at_start && self.applied >= self.known_commit);
        // Time alone ends the hold only when no live peer leads or stands (the whole cluster
        // restarting needs us); while one does, it catches us up and we wait for it.
        let me = self.cfg.id;
        let another_can_lead = self
            .nodes
            .iter()
            .any(|&p| p != me && self.peer_electable(p) && self.peer_leading[p as usize]);
        if synced || (self.now >= r.until && !another_can_lead) {
            self.rejoin = None;
        }
    }

    /// Refreshes the decided floor a recovering leader may have raised in our log (it says
    /// those slots are chosen, not that our log holds them: apply never goes by it).
    fn refresh_decided(&mut self, mem: &impl LocalMemory) {
        self.raised_floor = self.raised_floor.max(mem.log_word(LOG_DECIDED_FLOOR));
        // Below a raised floor our log may hold entries that were never chosen.
        if self.raised_floor > self.log_from && self.log_from != Slot::MAX {
            self.log_from = self.raised_floor;
        }
    }

    /// Whether a peer that could lead has applied a later configuration than ours: ours may be
    /// a ring that no longer is, so we leave leading to those who know better.
    fn conf_is_stale(&self) -> bool {
        let epoch = self.conf.epoch;
        self.peers()
            .any(|p| self.peer_epoch[p as usize] > epoch && self.peer_electable(p))
    }

    /// The first electable node in ring order: alive by pull-score, not amnesiac, and not
    /// behind (and for ourselves, not holding a configuration older than a peer's).
    fn elected(&self) -> Option<NodeId> {
        self.conf.ring().iter().copied().find(|&p| {
            if p == self.cfg.id {
                self.probe.is_none() && !self.is_behind() && !self.conf_is_stale()
            } else {
                self.peer_electable(p)
            }
        })
    }

    /// Whether peer `p` could lead: alive by pull-score, neither amnesiac nor behind.
    fn peer_electable(&self, p: NodeId) -> bool {
        self.is_alive(p) && !self.peer_amnesiac[p as usize] && !self.peer_behind[p as usize]
    }

    fn role_tick(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let me = self.cfg.id;
        self.track_deaths();
        match &mut self.role {
            Role::Follower => {
                let amnesiac = mem.log_word(LOG_AMNESIAC) != 0;
                if self.now < self.hold_candidacy_until || amnesiac || self.probe.is_some() {
                    return;
                }
                match self.elected() {
                    Some(p) if p == me => {
                        self.deferring = None;
                        self.stand(mem, out);
                    }
                    Some(p) if self.peer_leading[p as usize] => self.deferring = None,
                    Some(p) => {
                        // It should lead by our configuration and does not stand: nodes that
                        // applied different changes can each wait for another. Past a grace
                        // period, an acceptor that could lead stands itself (recovery then
                        // reads the latest configuration); past twice that, so does a spare
                        // (its configuration may be the stale one).
                        let grace =
                            self.cfg.candidate_timeout_ticks + 2 * self.cfg.stepdown_holdoff_ticks;
                        match self.deferring {
                            Some((q, since)) if q == p => {
                                let waited = if self.conf.contains(me) {
                                    grace
                                } else {
                                    2 * grace
                                };
                                if self.now >= since + waited
                                    && !self.is_behind()
                                    && !self.conf_is_stale()
                                {
                                    self.deferring = None;
                                    self.stand(mem, out);
                                }
                            }
                            _ => self.deferring = Some((p, self.now)),
                        }
                    }
                    None => self.deferring = None,
                }
            }
            Role::Candidate {
                ballot,
                since,
                last_request,
            } => {
                let (ballot, since, last_request) = (*ballot, *since, *last_request);
                let acked: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .copied()
                    .filter(|&p| mem.control_word(cb_ack(p)) == ballot.0)
                    .collect();
                let usable = acked
                    .iter()
                    .filter(|&&p| p == me || !self.peer_amnesiac[p as usize])
                    .fold(0u64, |m, &p| m | 1 << p);
                if self.covers(usable) {
                    self.start_recovery(ballot, acked, mem, out);
                } else if self.now >= since + self.cfg.candidate_timeout_ticks {
                    self.step_down("no majority of acks in time", out);
                } else if self.now >= last_request + self.cfg.retry_ticks {
                    if let Role::Candidate { last_request, .. } = &mut self.role {
                        *last_request = self.now;
                    }
                    self.send_requests(ballot, mem, out, |p| !acked.contains(&p));
                }
            }
            Role::Recovering(_) => {}
            Role::Leader(l) => {
                // A peer promised a higher ballot (a candidacy that failed, or one in progress):
                // that peer will refuse us for ever. Stand again above it; a real rival shows
                // itself through permission errors first.
                if self.max_seen > l.ballot {
                    self.step_down("a peer promised a higher ballot", out);
                    if self.elected() == Some(me) {
                        self.stand(mem, out);
                    }
                }
            }
        }
    }

    /// Becomes a candidate at a ballot above every ballot seen and asks every peer for its log.
    fn stand(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let me = self.cfg.id;
        let ballot = self.max_seen.max(self.granted).next_for(me);
        self.max_seen = ballot;
        // Our own request goes through our own grant logic like anyone's.
        mem.set_control_word(cb_request(me), ballot.0);
        self.role = Role::Candidate {
            ballot,
            since: self.now,
            last_request: self.now,
        };
        out.notes.push(Note::Candidate { ballot });
        self.send_requests(ballot, mem, out, |_| true);
    }

    fn send_requests(
        &mut self,
        ballot: Ballot,
        _mem: &mut impl LocalMemory,
        out: &mut Output,
        filter: impl Fn(NodeId) -> bool,
    ) {
        let peers: Vec<NodeId> = self.peers().filter(|&p| filter(p)).collect();
        for p in peers {
            let op = Op::Write {
                region: Region::Control,
                offset: cb_request(self.cfg.id),
                bytes: ballot.0.to_le_bytes().to_vec(),
            };
            self.post(out, p, op, Purpose::Request);
        }
    }

    fn step_down(&mut self, reason: &'static str, out: &mut Output) {
        let Some(ballot) = self.own_ballot() else {
            return;
        };
        if let Role::Leader(l) = &mut self.role {
            let hint = (self.granted > ballot).then(|| self.granted.node());
            for req in l.queue.drain(..) {
                out.replies.push(ClientReply {
                    client: req.client,
                    seq: req.seq,
                    result: Err(ClientError::NotLeader { leader_hint: hint }),
                });
            }
        }
        self.role = Role::Follower;
        self.hold_candidacy_until = self.now + self.cfg.stepdown_holdoff_ticks;
        out.notes.push(Note::SteppedDown { ballot, reason });
    }

    // ---- recovery ---------------------------------------------------------------------------

    fn start_recovery(
        &mut self,
        ballot: Ballot,
        acked: Vec<NodeId>,
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        let me = self.cfg.id;
        let mut rec = Recovery {
            ballot,
            phase: RecPhase::Headers,
            outstanding: 0,
            headers: BTreeMap::new(),
            quorum: Vec::new(),
            lo: 0,
            max_fuo: 0,
            held: BTreeMap::new(),
            best: BTreeMap::new(),
            end: 0,
            raised: Vec::new(),
        };
        rec.headers.insert(me, LogHeader::local(mem));
        let peers: Vec<NodeId> = acked.into_iter().filter(|&p| p != me).collect();
        rec.outstanding = peers.len();
        self.role = Role::Recovering(Box::new(rec));
        for p in peers {
            let op = Op::Read {
                region: Region::Log,
                offset: 0,
                len: LOG_HEADER_BYTES,
            };
            self.post_reconnect(out, p, op, Purpose::RecHeader { ballot, peer: p });
        }
        self.recovery_advance(mem, out);
    }

    fn recovery_completion(
        &mut self,
        purpose: Purpose,
        ballot: Ballot,
        peer: NodeId,
        result: Result<Option<Vec<u8>>, FabricError>,
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        let geometry = self.cfg.geometry;
        let chunk = self.cfg.read_chunk_slots;
        let Role::Recovering(rec) = &mut self.role else {
            return;
        };
        if rec.ballot != ballot {
            return;
        }
        if result == Err(FabricError::Permission) {
            self.step_down("permission error during recovery", out);
            return;
        }
        let ok = result.is_ok();
        match purpose {
            Purpose::RecHeader { .. } => {
                rec.outstanding -= 1;
                if let Some(h) = read_bytes(&result).and_then(LogHeader::read) {
                    rec.headers.insert(peer, h);
                }
            }
            Purpose::RecPromise { .. } | Purpose::RecWrite { .. } => {
                rec.outstanding -= 1;
                beat(mem);
                if !ok {
                    rec.quorum.retain(|&q| q != peer);
                }
            }
            Purpose::RecTail { from, .. } => {
                rec.outstanding -= 1;
                // A recovery may read up to half a log from each member (one far behind is in
                // the quorum), possibly all in one turn of the data plane: that is work, not a
                // stuck node.
                beat(mem);
                match result {
                    Ok(Some(bytes)) => {
                        if lapped(&bytes, from, &geometry) {
                            self.step_down("a log holds slots past the recovery window", out);
                            return;
                        }
                        let mut any = false;
                        let held = rec.held.entry(peer).or_default();
                        for (s, h, b) in entries_in(&bytes, from, &geometry) {
                            any = true;
                            held.insert(s, Held::from(&h));
                            if rec.best.get(&s).is_none_or(|(bb, _)| h.ballot > *bb) {
                                rec.best.insert(s, (h.ballot, b.to_vec()));
                            }
                        }
                        let read = (bytes.len() / geometry.slot_bytes) as u64;
                        let holds_from = rec.headers.get(&peer).map_or(0, |h| h.applied);
                        let next = next_tail_read(any, from, read, chunk, holds_from);
                        if let Some(next) = next.filter(|&n| n < rec.lo + geometry.capacity) {
                            rec.outstanding += 1;
                            let op = read_slots(&geometry, next, chunk);
                            self.post(
                                out,
                                peer,
                                op,
                                Purpose::RecTail {
                                    ballot,
                                    peer,
                                    from: next,
                                },
                            );
                        }
                    }
                    _ => rec.quorum.retain(|&q| q != peer),
                }
            }
            _ => unreachable!("not a recovery purpose"),
        }
        self.recovery_advance(mem, out);
    }

    /// Moves recovery to its next phase once the current one has no outstanding operations.
    fn recovery_advance(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let me = self.cfg.id;
        let geometry = self.cfg.geometry;
        let chunk = self.cfg.read_chunk_slots;
        let skip_read = self.cfg.bugs.skip_recovery_read();
        loop {
            let Role::Recovering(rec) = &mut self.role else {
                return;
            };
            if rec.outstanding > 0 {
                return;
            }
            let ballot = rec.ballot;
            let quorum_set = node_set(&rec.quorum);
            let covered = covered_by(&self.conf, &self.newer_confs, quorum_set);
            match rec.phase {
                RecPhase::Headers => {
                    if let Some(h) = rec.headers.values().find(|h| h.min_ballot >= ballot) {
                        self.max_seen = self.max_seen.max(h.min_ballot);
                        self.step_down("a log promised a higher ballot", out);
                        return;
                    }
                    rec.quorum = rec
                        .headers
                        .iter()
                        .filter(|(_, h)| !h.amnesiac)
                        .map(|(&p, _)| p)
                        .collect();
                    let quorum_set = node_set(&rec.quorum);
                    let covered = covered_by(&self.conf, &self.newer_confs, quorum_set);
                    if !covered || !rec.quorum.contains(&me) {
                        // Some acks came from amnesiac logs: keep standing and wait for more.
                        for (&p, h) in &rec.headers {
                            self.peer_amnesiac[p as usize] = h.amnesiac;
                        }
                        self.role = Role::Candidate {
                            ballot,
                            since: self.now,
                            last_request: self.now,
                        };
                        return;
                    }
                    // Log reuse: every slot below the furthest first-undecided index is chosen
                    // (a node applied it), and no log holds entries more than half a log above
                    // its own first-undecided index. Recovery reads from half a log below the
                    // furthest at the lowest.
                    let cap = geometry.capacity;
                    let furthest = rec
                        .quorum
                        .iter()
                        .map(|p| rec.headers[p].first_undecided)
                        .max()
                        .unwrap_or(0);
                    let lo = rec
                        .quorum
                        .iter()
                        .map(|p| rec.headers[p].first_undecided)
                        .min()
                        .unwrap_or(0)
                        .max(furthest.saturating_sub(cap / 2));
                    if self.applied < lo {
                        // Our state lacks chosen slots that no log may hold any more: stand
                        // aside (behind) for a node that can lead, and be caught up by it with
                        // a snapshot.
                        self.behind_until = Some(lo);
                        self.step_down("own state behind the others' logs by over half a log", out);
                        return;
                    }
                    rec.lo = lo;
                    rec.phase = RecPhase::Promise;
                    let quorum = rec.quorum.clone();
                    rec.outstanding = quorum.len() - 1;
                    if mem
                        .write_log_as_holder(ballot, LOG_MIN_BALLOT, &ballot.0.to_le_bytes())
                        .is_err()
                    {
                        self.step_down("lost permission on own log", out);
                        return;
                    }
                    for p in quorum.into_iter().filter(|&p| p != me) {
                        let op = Op::Write {
                            region: Region::Log,
                            offset: LOG_MIN_BALLOT,
                            bytes: ballot.0.to_le_bytes().to_vec(),
                        };
                        self.post(out, p, op, Purpose::RecPromise { ballot, peer: p });
                    }
                }
                RecPhase::Promise => {
                    if !covered {
                        self.step_down("recovery quorum lost", out);
                        return;
                    }
                    let fuos: Vec<Slot> = rec
                        .quorum
                        .iter()
                        .map(|p| rec.headers[p].first_undecided)
                        .collect();
                    rec.max_fuo = fuos.iter().copied().max().unwrap_or(0);
                    rec.phase = RecPhase::Tails;
                    if skip_read {
                        // Injected bug: adopt nothing, start after our own applied prefix.
                        rec.lo = self.applied;
                        rec.max_fuo = self.applied;
                        rec.end = self.applied;
                        rec.phase = RecPhase::Rewrite;
                        continue;
                    }
                    let lo = rec.lo;
                    // Our own log, read locally.
                    let holds_from = rec.headers.get(&me).map_or(0, |h| h.applied);
                    let local = scan_local(mem, &geometry, lo, chunk, holds_from);
                    for (s, (held, bytes)) in local {
                        rec.held.entry(me).or_default().insert(s, held);
                        if rec.best.get(&s).is_none_or(|(bb, _)| held.ballot > *bb) {
                            rec.best.insert(s, (held.ballot, bytes));
                        }
                    }
                    let peers: Vec<NodeId> =
                        rec.quorum.iter().copied().filter(|&p| p != me).collect();
                    rec.outstanding = peers.len();
                    for p in peers {
                        let op = read_slots(&geometry, lo, chunk);
                        self.post(
                            out,
                            p,
                            op,
                            Purpose::RecTail {
                                ballot,
                                peer: p,
                                from: lo,
                            },
                        );
                    }
                }
                RecPhase::Tails => {
                    if !covered {
                        self.step_down("recovery quorum lost", out);
                        return;
                    }
                    rec.end = rec
                        .best
                        .keys()
                        .next_back()
                        .map_or(rec.lo, |&s| s + 1)
                        .max(rec.max_fuo);
                    // Configurations past what we applied: the slots after each may have been
                    // decided by a majority of it, so our quorum must hold a majority of each
                    // (one step apart, each is found by a majority of the one before).
                    let applied = self.applied;
                    let found: Vec<(Slot, Membership)> = rec
                        .best
                        .range(applied..)
                        .filter_map(|(&s, (_, b))| match Entry::decode(b) {
                            Ok(e) if e.kind == EntryKind::Config => {
                                Membership::decode(&e.payload).map(|c| (s, c))
                            }
                            _ => None,
                        })
                        .filter(|(_, c)| c.epoch > self.conf.epoch)
                        .collect();
                    let missing: Vec<(Slot, Membership)> = found
                        .iter()
                        .copied()
                        .filter(|(_, c)| !c.is_quorum(quorum_set))
                        .collect();
                    if !missing.is_empty() {
                        // Stand again, asking every node, until the acks hold those majorities.
                        for c in missing {
                            if !self.newer_confs.contains(&c) {
                                self.newer_confs.push(c);
                            }
                        }
                        self.role = Role::Candidate {
                            ballot,
                            since: self.now,
                            last_request: self.now.saturating_sub(self.cfg.retry_ticks),
                        };
                        return;
                    }
                    let Role::Recovering(rec) = &mut self.role else {
                        return;
                    };
                    // Every log keeps its entries within half a log above its first-undecided
                    // index (a state transfer writes the other half). A member that would hold
                    // [lo, end) further above gets its decided floor raised first (every slot
                    // below the floor is chosen: end is at most half a log past the furthest
                    // index); it is then caught up before it counts as an active follower.
                    let floor = rec
                        .lo
                        .max(rec.end.saturating_sub(geometry.capacity / 2 + 1));
                    if self.applied < floor {
                        self.behind_until = Some(floor);
                        self.step_down(
                            "own state behind the recovered log by over half a log",
                            out,
                        );
                        return;
                    }
                    let raise: Vec<NodeId> = rec
                        .quorum
                        .iter()
                        .copied()
                        .filter(|&p| p != me && rec.headers[&p].first_undecided < floor)
                        .collect();
                    rec.outstanding = raise.len();
                    // Whose log may hold stale entries below the rewritten range (its own
                    // index below it): no hints, and caught up before it counts.
                    let lo = rec.lo;
                    rec.raised = rec
                        .quorum
                        .iter()
                        .copied()
                        .filter(|&p| p != me && rec.headers[&p].own_first_undecided < lo)
                        .collect();
                    rec.phase = RecPhase::Raise;
                    for p in raise {
                        let op = Op::Write {
                            region: Region::Log,
                            offset: LOG_DECIDED_FLOOR,
                            bytes: floor.to_le_bytes().to_vec(),
                        };
                        self.post(out, p, op, Purpose::RecPromise { ballot, peer: p });
                    }
                }
                RecPhase::Raise => {
                    if !covered {
                        self.step_down("recovery quorum lost", out);
                        return;
                    }
                    rec.phase = RecPhase::Rewrite;
                    let rec_ballot = rec.ballot;
                    let (lo, end, max_fuo) = (rec.lo, rec.end, rec.max_fuo);
                    // What every slot of [lo, end) must hold: the adopted entry, or a no-op.
                    let mut adopted: Vec<(Slot, Entry)> = Vec::new();
                    for s in lo..end {
                        if s < max_fuo && !rec.best.contains_key(&s) {
                            // Chosen (a log applied it) but in no log read: never fill it with
                            // a no-op. Log reuse keeps this from happening; refuse if it does.
                            self.step_down("a chosen slot is in none of the logs read", out);
                            return;
                        }
                        let entry = match rec.best.get(&s) {
                            Some((_, bytes)) => {
                                let mut e = Entry::decode(bytes).expect("checked when read");
                                e.ballot = rec_ballot;
                                e.commit_hint = max_fuo.min(s + 1);
                                e
                            }
                            None => Entry {
                                ballot: rec_ballot,
                                slot: s,
                                commit_hint: max_fuo.min(s + 1),
                                kind: EntryKind::Noop,
                                payload: Vec::new(),
                            },
                        };
                        adopted.push((s, entry));
                    }
                    let quorum = rec.quorum.clone();
                    let held = std::mem::take(&mut rec.held);
                    let mut writes: Vec<(NodeId, Op)> = Vec::new();
                    for &q in &quorum {
                        let empty = BTreeMap::new();
                        let hq = held.get(&q).unwrap_or(&empty);
                        for (s, e) in &adopted {
                            let op = match hq.get(s) {
                                Some(h) if h.value_digest == e.value_digest() => {
                                    if *s < max_fuo {
                                        continue; // chosen and already held
                                    }
                                    restamp_op(&geometry, *s, rec_ballot)
                                }
                                _ if rec.raised.contains(&q) => {
                                    let mut e = e.clone();
                                    e.commit_hint = 0;
                                    e.encode(&geometry, &mut self.scratch);
                                    Op::Write {
                                        region: Region::Log,
                                        offset: geometry.slot_offset(*s),
                                        bytes: self.scratch.clone(),
                                    }
                                }
                                _ => {
                                    e.encode(&geometry, &mut self.scratch);
                                    Op::Write {
                                        region: Region::Log,
                                        offset: geometry.slot_offset(*s),
                                        bytes: self.scratch.clone(),
                                    }
                                }
                            };
                            writes.push((q, op));
                        }
                    }
                    let mut remote = 0;
                    for (q, op) in writes {
                        if q == me {
                            if let Op::Write { offset, bytes, .. } = op {
                                if mem.write_log_as_holder(rec_ballot, offset, &bytes).is_err() {
                                    self.step_down("lost permission on own log", out);
                                    return;
                                }
                            }
                        } else {
                            remote += 1;
                            self.post(
                                out,
                                q,
                                op,
                                Purpose::RecWrite {
                                    ballot: rec_ballot,
                                    peer: q,
                                },
                            );
                        }
                    }
                    if let Role::Recovering(rec) = &mut self.role {
                        rec.outstanding = remote;
                    }
                }
                RecPhase::Rewrite => {
                    if !covered {
                        self.step_down("recovery quorum lost", out);
                        return;
                    }
                    let (lo, end) = (rec.lo, rec.end);
                    let quorum: Vec<NodeId> = rec
                        .quorum
                        .iter()
                        .copied()
                        .filter(|p| !rec.raised.contains(p))
                        .collect();
                    let mut applied_of = [0; MAX_NODES];
                    for (&p, h) in &rec.headers {
                        applied_of[p as usize] = h.first_undecided;
                    }
                    self.become_leader(ballot, lo, end, &quorum, applied_of, mem, out);
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn become_leader(
        &mut self,
        ballot: Ballot,
        lo: Slot,
        end: Slot,
        quorum: &[NodeId],
        applied_of: [Slot; MAX_NODES],
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        let geometry = self.cfg.geometry;
        let mut buf = Vec::new();
        // The configuration for the slots after the recovered range: the last change in it
        // (chosen now, like every recovered slot), else the one we applied.
        let mut conf = self.conf;
        for s in lo..end {
            let h = Entry::check(read_local_slot(mem, &geometry, s, &mut buf))
                .expect("recovered slot is in our own log");
            if h.kind == EntryKind::Config && s >= self.applied {
                let c = Entry::decode(read_local_slot(mem, &geometry, s, &mut buf))
                    .ok()
                    .and_then(|e| Membership::decode(&e.payload))
                    .expect("a recovered configuration decodes");
                if c.epoch > conf.epoch {
                    conf = c;
                }
            }
            out.notes.push(Note::Chosen {
                slot: s,
                ballot,
                value_digest: h.value_digest,
            });
        }
        let mut followers = BTreeMap::new();
        for p in self.peers().collect::<Vec<_>>() {
            let state = if quorum.contains(&p) {
                Follower::Active
            } else {
                Follower::Absent { since: 0 }
            };
            followers.insert(p, state);
        }
        out.notes.push(Note::BecameLeader {
            ballot,
            recovered_from: lo,
            recovered_to: end,
        });
        self.role = Role::Leader(Box::new(Leader {
            ballot,
            next_slot: end,
            commit: end,
            hint_sent: lo,
            last_touch: self.now,
            announce_at: None,
            inflight: BTreeMap::new(),
            followers,
            queue: VecDeque::new(),
            proposed: VecDeque::new(),
            // Below the recovered range our own log still holds chosen entries from
            // `log_from` on (it applied them), less what the last lap overwrote.
            log_start: lo.min(self.log_from.max(end.saturating_sub(geometry.capacity))),
            applied_of,
            absences: [0; MAX_NODES],
            reading: 0,
            blocked_since: None,
            conf,
            conf_slot: None,
            changes: VecDeque::new(),
            change_since: 0,
        }));
        self.newer_confs.clear();
        // A no-op opens the new view at once: the view's first commit does not wait for a
        // client, and followers learn the commit index from it.
        let noop = Entry {
            ballot,
            slot: end,
            commit_hint: end,
            kind: EntryKind::Noop,
            payload: Vec::new(),
        };
        if !self.propose(noop, mem, out) {
            return;
        }
        self.leader_tick(mem, out);
    }

    // ---- leader -----------------------------------------------------------------------------

    fn leader_tick(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        if !matches!(self.role, Role::Leader(_)) {
            return;
        }
        self.upkeep(mem, out);
        if let Role::Leader(l) = &self.role {
            let writing = l
                .followers
                .iter()
                .filter(|(_, st)| matches!(st, Follower::SyncWrite { .. }))
                .fold(0u64, |m, (&p, _)| m | 1 << p);
            for p in nodes_of(writing) {
                self.sync_write_step(p, mem, out);
            }
        }
        self.reuse_tick(out);
        self.repair_tick(out);
        self.change_tick(mem, out);
        self.propose_queued(mem, out);
    }

    /// The leader's upkeep of its followers: requests permission again from the absent (and
    /// from those that have not acked within a retry period), and starts catching up those
    /// that acked.
    fn upkeep(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let me = self.cfg.id;
        let now = self.now;
        let retry = self.cfg.retry_ticks;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        // Followers: re-request the absent, start catching up those that acked.
        let mut request = Vec::new();
        let mut sync = Vec::new();
        for (&p, st) in l.followers.iter_mut() {
            match st {
                Follower::Absent { since } if now >= *since + retry => {
                    *st = Follower::Requested { at: now };
                    request.push(p);
                }
                Follower::Requested { at } => {
                    if mem.control_word(cb_ack(p)) == ballot.0 {
                        *st = Follower::SyncHeader;
                        sync.push(p);
                    } else if now >= *at + retry {
                        *st = Follower::Requested { at: now };
                        request.push(p);
                    }
                }
                _ => {}
            }
        }
        for p in request {
            let op = Op::Write {
                region: Region::Control,
                offset: cb_request(me),
                bytes: ballot.0.to_le_bytes().to_vec(),
            };
            self.post(out, p, op, Purpose::Request);
        }
        for p in sync {
            let op = Op::Read {
                region: Region::Log,
                offset: 0,
                len: LOG_HEADER_BYTES,
            };
            self.post_reconnect(out, p, op, Purpose::SyncHeader { ballot, peer: p });
        }
    }

    /// Proposes the queued client commands, then announces the commit index when idle.
    fn propose_queued(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let me = self.cfg.id;
        let now = self.now;
        let retry = self.cfg.retry_ticks;
        let geometry = self.cfg.geometry;
        let Role::Leader(l) = &self.role else {
            return;
        };
        let ballot = l.ballot;
        // Propose: batches of queued commands into new slots, within the window and the
        // reusable part of the log, and never past a change not yet chosen.
        loop {
            let applied = self.applied;
            let Role::Leader(l) = &mut self.role else {
                return;
            };
            if l.queue.is_empty()
                || l.conf_slot.is_some()
                || l.next_slot >= l.commit + self.cfg.window_slots
                || l.next_slot >= reuse_floor(l, applied) + geometry.capacity / 2
            {
                break;
            }
            let mut take = 0;
            let mut bytes = 4;
            for req in l.queue.iter() {
                let add = 4 + req.command.len();
                if take == self.cfg.batch_max_commands
                    || (take > 0 && bytes + add > self.cfg.batch_max_bytes)
                {
                    break;
                }
                take += 1;
                bytes += add;
            }
            let mut payload = Vec::with_capacity(bytes);
            Batch::encode(
                l.queue.iter().take(take).map(|r| r.command.as_slice()),
                &mut payload,
            );
            l.queue.drain(..take);
            let entry = Entry {
                ballot,
                slot: l.next_slot,
                commit_hint: l.commit,
                kind: EntryKind::Batch,
                payload,
            };
            if !self.propose(entry, mem, out) {
                return;
            }
        }
        // Idle: announce the commit index on its own.
        let applied = self.applied;
        let in_ring = self.conf.contains(me);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if !in_ring && l.inflight.is_empty() && l.hint_sent >= l.commit && applied >= l.commit {
            // A change took us out of the ring (a leader need not be an acceptor, but the ring
            // leads): once everything chosen is announced, the new ring's head takes over.
            self.step_down("no longer in the ring", out);
            return;
        }
        if l.commit <= l.hint_sent {
            l.announce_at = None;
        } else if l.announce_at.is_none() {
            l.announce_at = Some(now + announce_delay(retry));
        }
        let announce = l.announce_at.is_some_and(|at| now >= at);
        if l.queue.is_empty() && (announce || now >= l.last_touch + retry) {
            l.hint_sent = l.commit;
            l.announce_at = None;
            l.last_touch = now;
            let rec = CommitRecord {
                ballot,
                index: l.commit,
            }
            .encode();
            let active = active_followers(&l.followers);
            if mem.write_log_as_holder(ballot, LOG_COMMIT, &rec).is_err() {
                self.step_down("lost permission on own log", out);
                return;
            }
            for p in nodes_of(active) {
                let op = Op::Write {
                    region: Region::Log,
                    offset: LOG_COMMIT,
                    bytes: rec.to_vec(),
                };
                self.post(out, p, op, Purpose::Meta { ballot, peer: p });
            }
        }
    }

    /// For ring repair (only when it is on): since when each node has been held dead, kept
    /// by every node so a new leader does not start the count again.
    fn track_deaths(&mut self) {
        if self.cfg.replace_after_ticks == 0 {
            return;
        }
        let me = self.cfg.id;
        for i in 0..self.nodes.len() {
            let n = self.nodes[i];
            if n == me || self.is_alive(n) {
                self.dead_since[n as usize] = None;
            } else {
                self.dead_since[n as usize].get_or_insert(self.now);
            }
        }
    }

    /// Ring repair: an acceptor held dead for `replace_after_ticks` is replaced by a live
    /// spare that is an active follower (caught up), when no other change is in flight and
    /// the change leaves a live majority.
    fn repair_tick(&mut self, out: &mut Output) {
        let after = self.cfg.replace_after_ticks;
        if after == 0 {
            return;
        }
        let me = self.cfg.id;
        let now = self.now;
        let Role::Leader(l) = &self.role else {
            return;
        };
        if l.conf_slot.is_some() || !l.changes.is_empty() {
            return;
        }
        let overdue = l.conf.ring().iter().copied().find(|&p| {
            p != me && self.dead_since[p as usize].is_some_and(|since| now >= since + after)
        });
        let Some(old) = overdue else { return };
        let spare = self.nodes.iter().copied().find(|&s| {
            !l.conf.contains(s)
                && self.is_alive(s)
                && matches!(l.followers.get(&s), Some(Follower::Active))
        });
        let Some(new) = spare else { return };
        let change = Change::Replace { old, new };
        if self.reconfigure(&change).is_ok() {
            out.notes.push(Note::RingRepair { old, new });
        }
    }

    /// The next step of a change, once nothing else is in flight: every slot proposed before
    /// it is chosen first (so each slot has one configuration), and an acceptor joins only as
    /// an active follower (caught up, its permission held). A step that cannot start within
    /// eight retry periods is dropped with the rest of its change.
    fn change_tick(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let now = self.now;
        let patience = 8 * self.cfg.retry_ticks;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(&next) = l.changes.front() else {
            return;
        };
        if l.conf_slot.is_some() || l.next_slot != l.commit {
            return;
        }
        let active = active_followers(&l.followers) | 1 << self.cfg.id;
        let joining_ready = next
            .ring()
            .iter()
            .all(|&n| l.conf.contains(n) || active & (1 << n) != 0);
        let room = l.next_slot < reuse_floor(l, self.applied) + self.cfg.geometry.capacity / 2;
        if !joining_ready || !room {
            if now >= l.change_since + patience {
                l.changes.clear();
                out.notes.push(Note::ReconfigAbandoned {
                    epoch: next.epoch,
                    reason: if joining_ready {
                        "the log had no room for it"
                    } else {
                        "a joining node is not an active follower"
                    },
                });
            }
            return;
        }
        l.changes.pop_front();
        l.change_since = now;
        let slot = l.next_slot;
        l.conf_slot = Some((slot, next));
        let entry = Entry {
            ballot: l.ballot,
            slot,
            commit_hint: l.commit,
            kind: EntryKind::Config,
            payload: next.encode().to_vec(),
        };
        out.notes.push(Note::ReconfigProposed {
            slot,
            membership: next,
        });
        self.propose(entry, mem, out);
    }

    /// Log reuse: a slot may be written over only once its node has applied it, so the leader
    /// proposes no further than half a log past the lowest applied index of itself and its
    /// active followers ([`reuse_floor`]). It reads a follower's published applied index when
    /// what it knows is a quarter log behind; a follower that holds proposals back for four
    /// retry periods is dropped from the active set (if a majority remains without it) and
    /// caught up later, by snapshot if need be: nothing stops the world for one slow node.
    fn reuse_tick(&mut self, out: &mut Output) {
        let cap = self.cfg.geometry.capacity;
        let applied = self.applied;
        let now = self.now;
        let patience = 4 * self.cfg.retry_ticks;
        let me = self.cfg.id;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let mut reads = Vec::new();
        for (&p, st) in l.followers.iter_mut() {
            let waiting = match st {
                Follower::Active => l.next_slot.saturating_sub(l.applied_of[p as usize]) >= cap / 4,
                Follower::Snapshot(t) if t.stage == TransferStage::Wait => {
                    // Installing takes time in proportion to the state: 16 retry periods,
                    // plus one per 256 KiB.
                    let allowed = patience * 4 + patience / 4 * (t.data.len() as u64 >> 18);
                    if now >= t.since + allowed {
                        // It never installed (lost, or the snapshot did not verify there).
                        out.notes.push(Note::FollowerLost {
                            peer: p,
                            reason: "snapshot not installed in time",
                        });
                        *st = Follower::Absent { since: now };
                        l.absences[p as usize] += 1;
                        continue;
                    }
                    true
                }
                _ => false,
            };
            if waiting && l.reading & (1 << p) == 0 {
                l.reading |= 1 << p;
                reads.push(p);
            }
        }
        let floor = reuse_floor(l, applied);
        let blocked = !l.queue.is_empty() && l.next_slot >= floor + cap / 2;
        if !blocked {
            l.blocked_since = None;
        } else if l.blocked_since.is_none() {
            l.blocked_since = Some(now);
        } else if l.blocked_since.is_some_and(|t| now >= t + patience) && floor < applied {
            let slow: Vec<NodeId> = l
                .followers
                .iter()
                .filter(|(&p, st)| {
                    matches!(st, Follower::Active) && l.applied_of[p as usize] == floor
                })
                .map(|(&p, _)| p)
                .collect();
            let remain = (active_followers(&l.followers) & !node_set(&slow)) | 1 << me;
            if l.conf.is_quorum(remain) {
                for p in slow {
                    out.notes.push(Note::FollowerLost {
                        peer: p,
                        reason: "applies too slowly for the log to be reused",
                    });
                    l.lose(p, now);
                }
            }
            l.blocked_since = None;
        }
        for p in reads {
            let op = Op::Read {
                region: Region::Control,
                offset: CB_APPLIED,
                len: 8,
            };
            self.post(out, p, op, Purpose::AppliedRead { ballot, peer: p });
        }
    }

    /// Phase 2A of one entry: local write, then one write per active follower.
    fn propose(&mut self, entry: Entry, mem: &mut impl LocalMemory, out: &mut Output) -> bool {
        let geometry = self.cfg.geometry;
        entry.encode(&geometry, &mut self.scratch);
        let off = geometry.slot_offset(entry.slot);
        if mem
            .write_log_as_holder(entry.ballot, off, &self.scratch)
            .is_err()
        {
            self.step_down("lost permission on own log", out);
            return false;
        }
        let Role::Leader(l) = &mut self.role else {
            return false;
        };
        let ballot = l.ballot;
        let value_digest = entry.value_digest();
        l.inflight.insert(
            entry.slot,
            InFlight {
                value_digest,
                acked_by: 0,
            },
        );
        l.next_slot = entry.slot + 1;
        l.log_start = l
            .log_start
            .max(l.next_slot.saturating_sub(geometry.capacity));
        l.hint_sent = l.hint_sent.max(entry.commit_hint);
        l.last_touch = self.now;
        out.notes.push(Note::Proposed { slot: entry.slot });
        let active = active_followers(&l.followers);
        let slot = entry.slot;
        l.proposed.push_back((entry, value_digest));
        for p in nodes_of(active) {
            let op = Op::Write {
                region: Region::Log,
                offset: off,
                bytes: self.scratch.clone(),
            };
            self.post(
                out,
                p,
                op,
                Purpose::SlotWrite {
                    ballot,
                    peer: p,
                    slot,
                },
            );
        }
        // A single-node cluster (or the commit-early bug) may choose at once.
        self.advance_commit(out);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn leader_completion(
        &mut self,
        purpose: Purpose,
        era: u64,
        ballot: Ballot,
        peer: NodeId,
        result: Result<Option<Vec<u8>>, FabricError>,
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        let geometry = self.cfg.geometry;
        let now = self.now;
        let cap = geometry.capacity;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        if let Purpose::AppliedRead { .. } = purpose {
            l.reading &= !(1 << peer);
        }
        match result {
            Err(FabricError::Permission) => {
                self.step_down("permission error: deposed", out);
                return;
            }
            Err(FabricError::Unreachable) => {
                // Posted before the follower was last marked absent: that loss is known, and
                // the follower may be on its way back (requested, read, caught up, sent a
                // snapshot) over a new connection. A late failure of the old one must not
                // drop it again.
                if era != l.absences[peer as usize] {
                    return;
                }
                // Everything posted to it after this fails too (the connection is in error);
                // it comes back through request and catch-up.
                if !matches!(l.followers.get(&peer), Some(Follower::Absent { .. })) {
                    out.notes.push(Note::FollowerLost {
                        peer,
                        reason: purpose.name(),
                    });
                }
                l.lose(peer, now);
                return;
            }
            Ok(_) => {}
        }
        match purpose {
            Purpose::SlotWrite { slot, .. } => {
                if let Some(f) = l.inflight.get_mut(&slot) {
                    f.acked_by |= 1 << peer;
                }
                self.advance_commit(out);
            }
            Purpose::Meta { .. } => {}
            Purpose::AppliedRead { .. } => {
                if let Some(b) = read_bytes(&result).filter(|b| b.len() >= 8) {
                    let a = get_u64(b, 0);
                    let known = &mut l.applied_of[peer as usize];
                    *known = (*known).max(a);
                    if let Some(Follower::Snapshot(t)) = l.followers.get(&peer) {
                        if t.stage == TransferStage::Wait && a >= t.index {
                            // Installed: catch it up from the snapshot on, from our log.
                            l.followers.insert(peer, Follower::Requested { at: now });
                        }
                    }
                }
            }
            Purpose::Snap { transfer, .. } => self.transfer_continue(peer, Some(transfer), out),
            Purpose::SyncHeader { .. } => {
                if !matches!(l.followers.get(&peer), Some(Follower::SyncHeader)) {
                    return;
                }
                let Some(h) = read_bytes(&result).and_then(LogHeader::read) else {
                    l.lose(peer, now);
                    return;
                };
                // It needs the log from where it applied (its own log may hold more, but a
                // restarted state machine replays from slot 0).
                let fuo = h.first_undecided.min(h.applied).min(l.next_slot);
                if fuo < l.log_start || fuo + cap / 2 < l.next_slot {
                    self.start_transfer(peer, h.first_undecided, mem, out);
                    return;
                }
                l.followers.insert(
                    peer,
                    Follower::SyncTail {
                        fuo,
                        decided: h.first_undecided,
                        amnesiac: h.amnesiac,
                        read_to: fuo,
                        held: BTreeMap::new(),
                    },
                );
                self.sync_continue(peer, mem, out);
            }
            Purpose::SyncTail { from, .. } => {
                let Some(Follower::SyncTail { read_to, held, .. }) = l.followers.get_mut(&peer)
                else {
                    return;
                };
                let Some(bytes) = read_bytes(&result) else {
                    l.lose(peer, now);
                    return;
                };
                for (s, h, _) in entries_in(bytes, from, &geometry) {
                    held.insert(s, Held::from(&h));
                }
                *read_to = from + (bytes.len() / geometry.slot_bytes) as u64;
                self.sync_continue(peer, mem, out);
            }
            _ => unreachable!("not a leader purpose"),
        }
    }

    /// Catch-up of one follower: read its log up to our next slot, then write what differs
    /// ([`Node::sync_write_step`]) and make it active.
    fn sync_continue(&mut self, peer: NodeId, mem: &mut impl LocalMemory, out: &mut Output) {
        let geometry = self.cfg.geometry;
        let chunk = self.cfg.read_chunk_slots;
        let window = self.cfg.window_slots;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let Some(Follower::SyncTail {
            fuo,
            decided,
            amnesiac,
            read_to,
            ..
        }) = l.followers.get(&peer)
        else {
            return;
        };
        if *read_to < l.next_slot {
            // What is missing plus a window, so the reads outrun new proposals, but never more
            // than two windows (or a read chunk) at a time: over a frame fabric a read is that
            // many frames.
            let missing = l.next_slot - *read_to;
            let op = read_slots(
                &geometry,
                *read_to,
                (missing + window).min(chunk.max(2 * window)),
            );
            let from = *read_to;
            self.post(out, peer, op, Purpose::SyncTail { ballot, peer, from });
            return;
        }
        let (fuo, amnesiac) = (*fuo, *amnesiac);
        if fuo < l.log_start || fuo + geometry.capacity / 2 < l.next_slot {
            // The log moved on past it while we read.
            let decided = *decided;
            self.start_transfer(peer, decided, mem, out);
            return;
        }
        let Some(Follower::SyncTail { held, .. }) = l.followers.remove(&peer) else {
            unreachable!("matched above");
        };
        l.followers.insert(
            peer,
            Follower::SyncWrite {
                next: fuo,
                from: fuo,
                amnesiac,
                held,
                writes: 0,
            },
        );
        // The writing starts in the next leader turn, one step per turn.
    }

    /// One step of writing a read follower what differs: at most two windows of slots, so a
    /// long catch-up does not hold up the leader's turn (and its clients) for milliseconds. The
    /// step that reaches our next slot writes the commit record and makes the follower active
    /// in the same call, so no new slot slips between. Writes go out in slot order on the
    /// follower's connection, so every commit hint it reads is backed by its own log.
    fn sync_write_step(&mut self, peer: NodeId, mem: &mut impl LocalMemory, out: &mut Output) {
        let geometry = self.cfg.geometry;
        let step = 2 * self.cfg.window_slots.max(1);
        let now = self.now;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let (next_slot, commit) = (l.next_slot, l.commit);
        let Some(Follower::SyncWrite {
            next,
            from,
            amnesiac,
            held,
            writes: written,
        }) = l.followers.get_mut(&peer)
        else {
            return;
        };
        if *next < l.log_start || *next + geometry.capacity / 2 < next_slot {
            // Our log no longer holds what it still needs (the reuse floor holds its next slot,
            // so only a log whose start moved for another reason): start over, from its header.
            out.notes.push(Note::FollowerLost {
                peer,
                reason: "fell behind the log while being caught up",
            });
            l.lose(peer, now);
            return;
        }
        let end = next_slot.min(*next + step);
        let mut writes = Vec::new();
        let mut already = Vec::new();
        let mut buf = Vec::new();
        for s in *next..end {
            let off = geometry.slot_offset(s);
            let mut e = Entry::decode(read_local_slot(mem, &geometry, s, &mut buf))
                .expect("the leader holds every slot below next_slot");
            debug_assert_eq!(e.slot, s);
            let op = match held.get(&s) {
                Some(h) if h.value_digest == e.value_digest() => {
                    if s < commit {
                        continue;
                    }
                    if h.ballot == ballot {
                        // It accepted this very entry (our write landed, its completion was
                        // lost): that counts as its 2B, or the slot could wait for ever.
                        already.push(s);
                        continue;
                    }
                    restamp_op(&geometry, s, ballot)
                }
                _ => {
                    e.ballot = ballot;
                    e.commit_hint = commit.min(s + 1);
                    e.encode(&geometry, &mut self.scratch);
                    Op::Write {
                        region: Region::Log,
                        offset: off,
                        bytes: self.scratch.clone(),
                    }
                }
            };
            writes.push((s, op));
        }
        *next = end;
        *written += writes.len();
        let done = end == next_slot;
        let (from, amnesiac, total) = (*from, *amnesiac, *written);
        if done {
            l.followers.insert(peer, Follower::Active);
            l.applied_of[peer as usize] = from;
        }
        for (slot, op) in writes {
            self.post(out, peer, op, Purpose::SlotWrite { ballot, peer, slot });
        }
        if self.cfg.bugs.sync_ignores_held() {
            already.clear();
        }
        if let Role::Leader(l) = &mut self.role {
            for s in &already {
                if let Some(f) = l.inflight.get_mut(s) {
                    f.acked_by |= 1 << peer;
                }
            }
        }
        if !already.is_empty() {
            self.advance_commit(out);
        }
        if !done {
            return;
        }
        out.notes.push(Note::FollowerSynced {
            peer,
            from,
            to: next_slot,
            writes: total,
        });
        if amnesiac {
            let op = Op::Write {
                region: Region::Log,
                offset: LOG_AMNESIAC,
                bytes: 0u64.to_le_bytes().to_vec(),
            };
            self.post(out, peer, op, Purpose::Meta { ballot, peer });
        }
        let rec = CommitRecord {
            ballot,
            index: commit,
        }
        .encode();
        let op = Op::Write {
            region: Region::Log,
            offset: LOG_COMMIT,
            bytes: rec.to_vec(),
        };
        self.post(out, peer, op, Purpose::Meta { ballot, peer });
    }

    /// State transfer to a follower behind our log: snapshot our state (below our applied
    /// index, which our log still holds the suffix from) and stream it. `decided` is its
    /// first-undecided index: its log holds entries no further than half a log above it, so the
    /// other half (from `decided + cap/2 + 2` on, circularly) holds only slots it applied; the
    /// snapshot goes there and its acceptor state stays intact.
    fn start_transfer(
        &mut self,
        peer: NodeId,
        decided: Slot,
        mem: &mut impl LocalMemory,
        out: &mut Output,
    ) {
        let geometry = self.cfg.geometry;
        let index = self.applied;
        let now = self.now;
        let id = self.next_wr;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if index < l.log_start {
            // We are still replaying our own log: our state is not yet one our log continues.
            l.lose(peer, now);
            return;
        }
        let mut data = Vec::new();
        let digest = self.sm.snapshot(&mut data, &mut || beat(mem));
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let cap = geometry.capacity;
        if data.len() > snapshot_room(&geometry) {
            out.notes.push(Note::FollowerLost {
                peer,
                reason: "its snapshot is larger than half the log it would be written over",
            });
            l.lose(peer, now);
            return;
        }
        let at = (decided + cap / 2 + 2) % cap;
        out.notes.push(Note::Checkpoint { index, digest });
        out.notes.push(Note::SnapshotSent {
            peer,
            index,
            bytes: data.len(),
        });
        let membership = self.conf;
        let descriptor =
            SnapshotDescriptor::new_with(index, digest, at, membership, &data, &mut || beat(mem));
        l.followers.insert(
            peer,
            Follower::Snapshot(Box::new(Transfer {
                id,
                index,
                at,
                data,
                descriptor,
                stage: TransferStage::Chunks,
                sent: 0,
                inflight: 0,
                since: now,
            })),
        );
        self.transfer_continue(peer, None, out);
    }

    /// The next writes of a transfer, after a completion of one of its writes (`done`: the
    /// transfer it was posted for) or to start chunks.
    fn transfer_continue(&mut self, peer: NodeId, done: Option<u64>, out: &mut Output) {
        let chunk = self.cfg.snapshot_chunk_bytes.max(1);
        let geometry = self.cfg.geometry;
        let now = self.now;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let Some(Follower::Snapshot(t)) = l.followers.get_mut(&peer) else {
            return;
        };
        if let Some(id) = done {
            if id != t.id {
                // A write of a transfer given up on (the follower went absent meanwhile, and
                // this is another transfer to it).
                return;
            }
            t.inflight -= 1;
        }
        let transfer = t.id;
        let mut posts = Vec::new();
        match t.stage {
            TransferStage::Chunks => {}
            TransferStage::Install => {
                t.stage = TransferStage::Wait;
                t.since = now;
                return;
            }
            TransferStage::Wait => return,
        }
        while t.inflight < TRANSFER_WINDOW && t.sent < t.data.len() {
            let (offset, run) = snapshot_offset(&geometry, t.at, t.sent);
            let end = (t.sent + chunk.min(run)).min(t.data.len());
            posts.push(Op::Write {
                region: Region::Log,
                offset,
                bytes: t.data[t.sent..end].to_vec(),
            });
            t.sent = end;
            t.inflight += 1;
        }
        if t.sent == t.data.len() && t.inflight == 0 {
            // Every chunk landed: the descriptor makes it installable.
            t.stage = TransferStage::Install;
            t.inflight = 1;
            posts.push(Op::Write {
                region: Region::Log,
                offset: LOG_SNAPSHOT,
                bytes: t.descriptor.encode().to_vec(),
            });
        }
        for op in posts {
            self.post(
                out,
                peer,
                op,
                Purpose::Snap {
                    ballot,
                    peer,
                    transfer,
                },
            );
        }
    }

    /// Phase 2B: counts slots chosen in order, moving the commit index over them. A slot is
    /// chosen once the leader's copy and the remote writes that succeeded hold a majority of
    /// the configuration that governs it (spares' copies count for nothing). Once a change is
    /// chosen, the next slots count by it.
    fn advance_commit(&mut self, out: &mut Output) {
        let me = self.cfg.id;
        let early = self.cfg.bugs.commit_early();
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        while let Some(entry) = l.inflight.first_entry() {
            let ring = l.conf.mask();
            let held = (entry.get().acked_by as u64 | 1 << me) & ring;
            let need = l.conf.majority() - usize::from(early);
            if (held.count_ones() as usize) < need {
                break;
            }
            let slot = *entry.key();
            let f = entry.remove();
            debug_assert_eq!(slot, l.commit);
            l.commit = slot + 1;
            out.notes.push(Note::Chosen {
                slot,
                ballot: l.ballot,
                value_digest: f.value_digest,
            });
            if let Some((s, c)) = l.conf_slot {
                if s == slot {
                    l.conf = c;
                    l.conf_slot = None;
                    l.change_since = self.now;
                }
            }
        }
    }

    // ---- apply ------------------------------------------------------------------------------

    /// Applies, in slot order, the valid entries below the highest commit this node knows.
    fn apply(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let geometry = self.cfg.geometry;
        let is_leader = matches!(self.role, Role::Leader(_));
        if !is_leader {
            self.install_snapshot(mem, out);
        }
        let mut known = self.known_commit;
        if let Role::Leader(l) = &self.role {
            // The leader's own count is ahead of anything in its log.
            known = known.max(l.commit);
        } else {
            // Our own first-undecided index (not a floor a leader raised: that says slots are
            // chosen, not that our log holds them).
            known = known.max(mem.log_word(LOG_FIRST_UNDECIDED));
            let mut record = [0u8; COMMIT_RECORD_BYTES];
            mem.read_log(LOG_COMMIT, &mut record);
            if let Some(r) = CommitRecord::decode(&record) {
                known = known.max(r.index);
            }
        }
        if is_leader && known <= self.applied {
            return;
        }
        let mut buf = std::mem::take(&mut self.read_buf);
        // Hints in the entries ahead of us (the leader knows its commit index).
        let scan = if is_leader {
            0
        } else {
            self.cfg.apply_scan_slots
        };
        for s in self.applied..self.applied + scan {
            match Entry::check(read_local_slot(mem, &geometry, s, &mut buf)) {
                Ok(h) if h.slot == s => known = known.max(h.commit_hint),
                _ => break,
            }
        }
        self.known_commit = known;
        let start = self.applied;
        while self.applied < self.known_commit {
            let s = self.applied;
            let own = match &mut self.role {
                Role::Leader(l) => {
                    while l.proposed.front().is_some_and(|(e, _)| e.slot < s) {
                        l.proposed.pop_front();
                    }
                    match l.proposed.front() {
                        Some((e, _)) if e.slot == s => l.proposed.pop_front(),
                        _ => None,
                    }
                }
                _ => None,
            };
            let (entry, value_digest) = match own {
                Some(proposed) => proposed,
                None => match Entry::decode(read_local_slot(mem, &geometry, s, &mut buf)) {
                    Ok(e) if e.slot == s => {
                        let d = e.value_digest();
                        (e, d)
                    }
                    // A write still landing (or not yet re-synced): try again next turn.
                    _ => break,
                },
            };
            if entry.kind == EntryKind::Config {
                match Membership::decode(&entry.payload) {
                    Some(c) if c.epoch > self.conf.epoch => {
                        self.conf = c;
                        out.notes.push(Note::Reconfigured {
                            slot: s,
                            membership: c,
                        });
                    }
                    _ => {}
                }
            }
            if entry.kind == EntryKind::Batch {
                // Entries are checksummed, so a batch that does not split was written so by a
                // leader (a bug, or another version): every replica reads the same bytes and
                // skips the same slot, so their states stay equal; its commands' clients time
                // out and retry, and a retry is proposed afresh.
                match Batch::commands(&entry.payload) {
                    Ok(cmds) => {
                        for cmd in cmds {
                            if let Some((client, seq, reply)) = self.sm.apply(cmd) {
                                if is_leader {
                                    out.replies.push(ClientReply {
                                        client,
                                        seq,
                                        result: Ok(reply),
                                    });
                                }
                            }
                        }
                    }
                    Err(e) => out.notes.push(Note::Unappliable {
                        slot: s,
                        reason: e.to_string(),
                    }),
                }
            }
            out.notes.push(Note::Applied {
                slot: s,
                value_digest,
            });
            self.applied += 1;
            // What a recovery found past this slot either was chosen (and is applied now) or
            // was written over.
            self.newer_confs.retain(|(at, _)| *at > s);
            let every = self.cfg.checkpoint_every;
            if every > 0 && self.applied.is_multiple_of(every) {
                mem.set_control_word(CB_CHECKPOINT_INDEX, self.applied);
                out.checkpoint = Some(Checkpoint::Frozen {
                    index: self.applied,
                    state: self.sm.freeze(),
                    membership: self.conf,
                });
            }
        }
        self.read_buf = buf;
        if self.applied != start {
            self.publish_applied(mem);
        }
    }
}

impl<S: StateMachine> Node<S> {
    /// Publishes the applied index: in the control block (the leader reads it for log reuse)
    /// and the log header (catch-up starts there), and as `first_undecided`, which never drops
    /// below what the log said at start (a restarted node replaying its log still knows that
    /// much is decided).
    fn publish_applied(&mut self, mem: &mut impl LocalMemory) {
        let applied = self.applied;
        mem.set_control_word(CB_APPLIED, applied);
        mem.write_log_owner(LOG_APPLIED, &applied.to_le_bytes());
        let fuo = applied.max(self.decided_floor);
        mem.write_log_owner(LOG_FIRST_UNDECIDED, &fuo.to_le_bytes());
        if self.behind_until.is_some_and(|b| applied >= b) {
            self.behind_until = None;
        }
    }

    /// A snapshot a leader installed in our log: verify it, restore the state machine from it
    /// and carry on applying after it. A snapshot that does not verify or decode is discarded
    /// (the leader sends another); one not ahead of what we applied is just cleared.
    fn install_snapshot(&mut self, mem: &mut impl LocalMemory, out: &mut Output) {
        let mut b = [0u8; SNAPSHOT_DESCRIPTOR_BYTES];
        mem.read_log(LOG_SNAPSHOT, &mut b);
        let Some(d) = SnapshotDescriptor::decode(&b) else {
            return;
        };
        let geometry = self.cfg.geometry;
        if d.index > self.applied {
            let mut bytes = Vec::new();
            let verdict = if d.len > snapshot_room(&geometry) as u64 || d.at >= geometry.capacity {
                Err("longer than half the log".to_string())
            } else {
                bytes.resize(d.len as usize, 0);
                let mut p = 0;
                while p < bytes.len() {
                    let (offset, run) = snapshot_offset(&geometry, d.at, p);
                    let end = (p + run.min(1 << 20)).min(bytes.len());
                    mem.read_log(offset, &mut bytes[p..end]);
                    beat(mem);
                    p = end;
                }
                if !d.verifies_with(&bytes, &mut || beat(mem)) {
                    Err("checksum mismatch".to_string())
                } else {
                    // The bytes are the leader's (checksum), and a state decodes only from its
                    // one canonical encoding, whose digest the descriptor carries.
                    self.sm.restore(&bytes, &mut || beat(mem))
                }
            };
            match verdict {
                Ok(()) => {
                    self.applied = d.index;
                    self.conf = d.membership;
                    self.newer_confs.retain(|(at, _)| *at >= d.index);
                    self.log_from = d.index;
                    self.known_commit = self.known_commit.max(d.index);
                    self.publish_applied(mem);
                    // It is also our checkpoint now: a restart replays our log from here (the
                    // log below was never ours to replay).
                    out.checkpoint = Some(Checkpoint::Encoded {
                        descriptor: d,
                        state: bytes,
                    });
                    out.notes.push(Note::Restored {
                        index: d.index,
                        digest: d.digest,
                    });
                }
                Err(reason) => out.notes.push(Note::SnapshotRejected {
                    index: d.index,
                    reason,
                }),
            }
        }
        mem.write_log_owner(LOG_SNAPSHOT, &[0u8; SNAPSHOT_DESCRIPTOR_BYTES]);
    }
}

/// The nodes of `nodes` as a bit set.
fn node_set(nodes: &[NodeId]) -> u64 {
    nodes.iter().fold(0, |m, &p| m | 1 << p)
}

/// Whether `set` holds a majority of `conf` and of every configuration in `newer`.
fn covered_by(conf: &Membership, newer: &[(Slot, Membership)], set: u64) -> bool {
    conf.is_quorum(set) && newer.iter().all(|(_, c)| c.is_quorum(set))
}

/// The lowest applied index of the leader (`applied`) and its active followers: no slot below
/// it is needed in any of their logs.
/// How long a leader holds back announcing a commit index on its own: an eighth of the retry
/// period, at least one tick. A client that sends its next command within it gets that
/// command's writes at once instead of behind an announcement (one more write per follower per
/// command; two frames each on a frame fabric), and the followers learn the commit from the
/// command's entry. The commit index is only a hint to followers (what they may apply): no
/// decision waits for it.
fn announce_delay(retry: u64) -> u64 {
    (retry / 8).max(1)
}

fn reuse_floor(l: &Leader, applied: Slot) -> Slot {
    l.followers
        .iter()
        .filter_map(|(&p, st)| match st {
            Follower::Active => Some(l.applied_of[p as usize]),
            // Being caught up: the slots it has still to be written.
            Follower::SyncWrite { next, .. } => Some(*next),
            _ => None,
        })
        .fold(applied, Slot::min)
}

/// The followers that receive every fast-path write, as a bit set of node ids.
fn active_followers(followers: &BTreeMap<NodeId, Follower>) -> u64 {
    followers
        .iter()
        .filter(|(_, s)| matches!(s, Follower::Active))
        .fold(0, |m, (&p, _)| m | 1 << p)
}

/// The node ids in bit set `set`, lowest first.
fn nodes_of(mut set: u64) -> impl Iterator<Item = NodeId> {
    std::iter::from_fn(move || {
        if set == 0 {
            return None;
        }
        let p = set.trailing_zeros() as NodeId;
        set &= set - 1;
        Some(p)
    })
}

/// Copies slot `s` of the local log into `buf` and returns it.
fn read_local_slot<'b>(
    mem: &impl LocalMemory,
    geometry: &LogGeometry,
    s: Slot,
    buf: &'b mut Vec<u8>,
) -> &'b [u8] {
    // The header line first: it says how much of the slot the entry fills (a torn or garbage
    // length is bounded by the slot; the checksum rejects it).
    let off = geometry.slot_offset(s);
    buf.resize(ENTRY_HEADER_BYTES, 0);
    mem.read_log(off, buf);
    let len =
        u32::from_le_bytes(buf[ENTRY_LEN..ENTRY_LEN + 4].try_into().expect("4 bytes")) as usize;
    let total = (ENTRY_HEADER_BYTES + len).min(geometry.slot_bytes);
    buf.resize(total, 0);
    mem.read_log(off + ENTRY_HEADER_BYTES, &mut buf[ENTRY_HEADER_BYTES..]);
    buf
}

/// The bytes a successful read returned (`None` for a failed read, or a fabric that returned
/// no data for a read: treated as a failure, never trusted).
fn read_bytes(result: &Result<Option<Vec<u8>>, FabricError>) -> Option<&[u8]> {
    match result {
        Ok(Some(b)) => Some(b.as_slice()),
        _ => None,
    }
}

/// A read of `count` slots from `from` (not past the end of the array).
fn read_slots(geometry: &LogGeometry, from: Slot, count: u64) -> Op {
    let idx = from % geometry.capacity;
    let count = count.min(geometry.capacity - idx).max(1);
    Op::Read {
        region: Region::Log,
        offset: geometry.slot_offset(from),
        len: count as usize * geometry.slot_bytes,
    }
}

/// The 8-byte write that re-stamps slot `s` with `ballot`.
fn restamp_op(geometry: &LogGeometry, s: Slot, ballot: Ballot) -> Op {
    Op::Write {
        region: Region::Log,
        offset: geometry.slot_offset(s) + ENTRY_BALLOT,
        bytes: ballot.0.to_le_bytes().to_vec(),
    }
}

/// The valid entries in `bytes`, a read of consecutive slots from `from`: (slot, header, the
/// entry's bytes). A slot holding an entry of another slot number (an older lap) is skipped.
fn entries_in<'a>(
    bytes: &'a [u8],
    from: Slot,
    geometry: &LogGeometry,
) -> impl Iterator<Item = (Slot, EntryHeader, &'a [u8])> + 'a {
    bytes
        .chunks_exact(geometry.slot_bytes)
        .enumerate()
        .filter_map(move |(i, b)| {
            let s = from + i as u64;
            match Entry::check(b) {
                Ok(h) if h.slot == s => Some((s, h, &b[..ENTRY_HEADER_BYTES + h.len])),
                _ => None,
            }
        })
}

/// The data plane's heartbeat, bumped every turn, and also while a long snapshot, restore or
/// recovery runs (and, on rdma, during a long burst of posts): that is work, not a stuck data
/// plane.
pub(crate) fn beat(mem: &mut impl LocalMemory) {
    let hb = mem.control_word(CB_HEARTBEAT).wrapping_add(1);
    mem.set_control_word(CB_HEARTBEAT, hb);
}

/// The most snapshot bytes a state transfer can carry: the part of the entry array a
/// follower's log never needs (half of it, less two slots of margin).
fn snapshot_room(geometry: &LogGeometry) -> usize {
    (geometry.capacity / 2).saturating_sub(2) as usize * geometry.slot_bytes
}

/// Where byte `p` of a snapshot starting at entry-array index `at` lives in the log (the entry
/// array as a ring of bytes), and how many bytes follow it before the array's end.
fn snapshot_offset(geometry: &LogGeometry, at: u64, p: usize) -> (usize, usize) {
    let array = geometry.capacity as usize * geometry.slot_bytes;
    let pos = (at as usize * geometry.slot_bytes + p) % array;
    (LOG_HEADER_BYTES + pos, array - pos)
}

/// Whether a read of consecutive slots from `from` holds an entry of a later lap (a slot number
/// above the one its position stands for): the log moved on past what the reader assumed.
fn lapped(bytes: &[u8], from: Slot, geometry: &LogGeometry) -> bool {
    bytes
        .chunks_exact(geometry.slot_bytes)
        .enumerate()
        .any(|(i, b)| matches!(Entry::check(b), Ok(h) if h.slot > from + i as u64))
}

impl From<&EntryHeader> for Held {
    fn from(h: &EntryHeader) -> Held {
        Held {
            ballot: h.ballot,
            value_digest: h.value_digest,
        }
    }
}

/// The valid entries of our own log from `lo` on, chunk by chunk up to the first chunk without
/// one: the same rule as the remote reads of recovery.
fn scan_local(
    mem: &mut impl LocalMemory,
    geometry: &LogGeometry,
    lo: Slot,
    chunk: u64,
    holds_from: Slot,
) -> Vec<(Slot, (Held, Vec<u8>))> {
    let mut found = Vec::new();
    let mut from = Some(lo);
    let mut bytes = Vec::new();
    while let Some(at) = from.filter(|&f| f < lo + geometry.capacity) {
        let Op::Read { offset, len, .. } = read_slots(geometry, at, chunk) else {
            unreachable!("read_slots reads")
        };
        bytes.resize(len, 0);
        mem.read_log(offset, &mut bytes);
        beat(mem);
        let before = found.len();
        for (s, h, b) in entries_in(&bytes, at, geometry) {
            found.push((s, (Held::from(&h), b.to_vec())));
        }
        let read = (len / geometry.slot_bytes) as u64;
        from = next_tail_read(found.len() > before, at, read, chunk, holds_from);
    }
    found
}

/// Where a recovery's scan of one log goes on after reading `read` slots from `from`: on,
/// after a chunk that held entries or that the end of the entry array cut short (the rest is
/// at its start); past the gap below `holds_from` (the log's applied index: a node that
/// installed a snapshot holds nothing below it, and its entries start there); otherwise the
/// log ends here.
fn next_tail_read(any: bool, from: Slot, read: u64, chunk: u64, holds_from: Slot) -> Option<Slot> {
    let next = from + read;
    if any || read < chunk {
        Some(next)
    } else if next < holds_from {
        Some(holds_from)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::sim::SimMemory;
    use crate::protocol::kv::{Command, KvLimits, KvOp, KvStore};

    fn cfg(id: NodeId, n: usize) -> NodeConfig {
        let geometry = LogGeometry::new(64, 256).unwrap();
        NodeConfig {
            id,
            ring: (0..n as NodeId).collect(),
            spares: Vec::new(),
            geometry,
            window_slots: 4,
            batch_max_commands: 4,
            batch_max_bytes: geometry.max_payload(),
            client_queue_max: 8,
            election: ElectionConfig {
                read_period_ticks: 1,
                score_cap: 4,
                fail_threshold: 1,
                recover_threshold: 3,
            },
            retry_ticks: 10,
            candidate_timeout_ticks: 40,
            stepdown_holdoff_ticks: 5,
            replace_after_ticks: 0,
            apply_scan_slots: 16,
            checkpoint_every: 0,
            snapshot_chunk_bytes: 1024,
            read_chunk_slots: 16,
            external_election: false,
            bugs: Bugs::default(),
        }
    }

    fn node(id: NodeId, n: usize, start: Start) -> (Node<KvStore>, SimMemory) {
        // A fresh SimMemory is zeroed, as the fabric leaves lost memory.
        let mut mem = SimMemory::new(id, cfg(id, n).geometry.log_bytes());
        let node = Node::new(
            cfg(id, n),
            KvStore::new(KvLimits::default()),
            &mut mem,
            start,
            0,
        );
        (node, mem)
    }

    /// Client 7's first command: put k = v.
    fn put_k_v() -> Vec<u8> {
        let mut put = Vec::new();
        Command {
            client: 7,
            seq: 1,
            op: KvOp::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        }
        .encode(&mut put);
        put
    }

    fn request(mem: &mut SimMemory, from: NodeId, ballot: Ballot) {
        mem.set_control_word(cb_request(from), ballot.0);
    }

    fn acks(out: &Output) -> Vec<(NodeId, Ballot)> {
        out.posts
            .iter()
            .filter_map(|p| match &p.op {
                Op::Write {
                    region: Region::Control,
                    offset,
                    bytes,
                } if *offset == cb_ack(1) => Some((p.target, Ballot(get_u64(bytes, 0)))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn grants_the_highest_request_revoking_the_holder_and_acks() {
        let (mut n, mut mem) = node(1, 3, Start::Fresh);
        let mut out = Output::default();
        request(&mut mem, 0, Ballot::new(1, 0));
        request(&mut mem, 2, Ballot::new(2, 2));
        n.tick_control(1, &mut mem, &mut out);
        assert_eq!(mem.writers(), vec![(2, Ballot::new(2, 2))]);
        assert_eq!(n.granted(), Ballot::new(2, 2));
        assert_eq!(mem.control_word(CB_GRANTED_BALLOT), Ballot::new(2, 2).0);
        assert_eq!(acks(&out), vec![(2, Ballot::new(2, 2))]);
        // A lower or equal request changes nothing; a higher one moves the grant.
        out.clear();
        request(&mut mem, 0, Ballot::new(2, 0));
        n.tick_control(2, &mut mem, &mut out);
        assert_eq!(mem.writers(), vec![(2, Ballot::new(2, 2))]);
        assert!(acks(&out).is_empty());
        request(&mut mem, 0, Ballot::new(3, 0));
        n.tick_control(3, &mut mem, &mut out);
        assert_eq!(mem.writers(), vec![(0, Ballot::new(3, 0))]);
        assert_eq!(acks(&out), vec![(0, Ballot::new(3, 0))]);
    }

    #[test]
    fn a_chosen_batch_that_does_not_split_is_applied_empty_and_noted() {
        let (mut n, mut mem) = node(1, 3, Start::Fresh);
        let mut out = Output::default();
        let b = Ballot::new(1, 2);
        request(&mut mem, 2, b);
        n.tick_control(1, &mut mem, &mut out);
        assert_eq!(n.granted(), b);
        let geometry = cfg(1, 3).geometry;
        let put = put_k_v();
        let mut good = Vec::new();
        Batch::encode([put.as_slice()], &mut good);
        // Slot 0 claims five commands and holds none; slot 1 is whole and says both are chosen.
        for (slot, hint, payload) in [(0, 0, vec![5, 0, 0, 0]), (1, 2, good)] {
            let mut bytes = Vec::new();
            Entry {
                ballot: b,
                slot,
                commit_hint: hint,
                kind: EntryKind::Batch,
                payload,
            }
            .encode(&geometry, &mut bytes);
            mem.write_log_owner(geometry.slot_offset(slot), &bytes);
        }
        out.clear();
        n.tick_data(2, &mut mem, &mut out);
        assert_eq!(n.applied(), 2);
        assert!(
            matches!(
                &out.notes[..],
                [
                    Note::Unappliable { slot: 0, .. },
                    Note::Applied { slot: 0, .. },
                    Note::Applied { slot: 1, .. },
                    ..
                ]
            ),
            "{:?}",
            out.notes
        );
        assert_eq!(n.state_machine().get(b"k"), Some(&b"v"[..]));
    }

    #[test]
    fn a_request_in_another_nodes_word_is_ignored() {
        let (mut n, mut mem) = node(1, 3, Start::Fresh);
        let mut out = Output::default();
        // Node 0's word holding a ballot of node 2: malformed, never granted.
        request(&mut mem, 0, Ballot::new(5, 2));
        n.tick_control(1, &mut mem, &mut out);
        assert!(mem.writers().is_empty());
        assert_eq!(n.granted(), Ballot::ZERO);
    }

    /// Node 0 of three, leading at its first ballot with both followers (the test stands in
    /// for the recovery), the view's no-op posted.
    fn leading_three() -> (Node<KvStore>, SimMemory, Output, Ballot) {
        let (mut n, mut mem) = node(0, 3, Start::Fresh);
        let mut out = Output::default();
        n.tick(1, &mut mem, &mut out);
        let b = n.own_ballot().expect("standing");
        mem.grant(0, b);
        n.become_leader(b, 0, 0, &[1, 2], [0; MAX_NODES], &mut mem, &mut out);
        assert_eq!(n.role(), RoleKind::Leader);
        (n, mem, out, b)
    }

    /// Client 7's first command, a put.
    fn put_request() -> ClientRequest {
        ClientRequest {
            client: 7,
            seq: 1,
            command: put_k_v(),
        }
    }

    #[test]
    fn proposing_now_proposes_the_queue_and_runs_no_upkeep() {
        let (mut n, mut mem, mut out, _) = leading_three();
        // Follower 1 is lost (its no-op write failed), long enough ago to be requested again.
        let to_1 = out
            .posts
            .iter()
            .find(|p| p.target == 1 && p.op.region() == Region::Log)
            .expect("the no-op's write to follower 1")
            .wr_id;
        let failed = Completion {
            wr_id: to_1,
            result: Err(FabricError::Unreachable),
        };
        n.on_completion(2, failed, &mut mem, &mut out);
        let state_of_1 = |n: &Node<KvStore>| n.followers().iter().find(|f| f.0 == 1).unwrap().1;
        assert_eq!(state_of_1(&n), "absent");
        out.clear();
        n.on_client_request(100, put_request(), &mut mem, &mut out);
        n.propose_queued_now(100, &mut mem, &mut out);
        // The command's slot went out to follower 2 ...
        let proposed: Vec<Slot> = out
            .notes
            .iter()
            .filter_map(|e| match e {
                Note::Proposed { slot } => Some(*slot),
                _ => None,
            })
            .collect();
        assert_eq!(proposed.len(), 1, "{:?}", out.notes);
        assert!(out
            .posts
            .iter()
            .any(|p| p.target == 2 && p.op.region() == Region::Log));
        // ... and nothing else: no request to the lost follower (the upkeep runs later).
        assert!(
            out.posts.iter().all(|p| p.target == 2),
            "{:?}",
            out.posts
                .iter()
                .map(|p| (p.target, p.op.region()))
                .collect::<Vec<_>>()
        );
        assert_eq!(state_of_1(&n), "absent");
        // The turn's upkeep then requests it.
        n.tick_data(100, &mut mem, &mut out);
        assert_eq!(state_of_1(&n), "requested");
        // A node that does not lead proposes nothing.
        let (mut f, mut fmem) = node(1, 3, Start::Fresh);
        let mut fout = Output::default();
        f.propose_queued_now(1, &mut fmem, &mut fout);
        assert!(fout.posts.is_empty() && fout.notes.is_empty());
    }

    #[test]
    fn a_late_failure_from_before_a_followers_loss_does_not_drop_it_again() {
        // The ring head leads with both followers; from here on only the data half ticks.
        let (mut n, mut mem, mut out, b) = leading_three();
        // A command after the view's no-op: two writes to follower 1 in flight.
        n.on_client_request(1, put_request(), &mut mem, &mut out);
        n.tick_data(1, &mut mem, &mut out);
        let to_1: Vec<u64> = out
            .posts
            .iter()
            .filter(|p| {
                p.target == 1
                    && matches!(
                        p.op,
                        Op::Write {
                            region: Region::Log,
                            ..
                        }
                    )
            })
            .map(|p| p.wr_id)
            .collect();
        assert!(
            to_1.len() >= 2,
            "writes to follower 1: {to_1:?} of {:?} {:?}",
            out.posts
                .iter()
                .map(|p| (p.target, p.wr_id, p.op.region()))
                .collect::<Vec<_>>(),
            n.followers()
        );
        let failed = |wr_id| Completion {
            wr_id,
            result: Err(FabricError::Unreachable),
        };
        let state_of_1 = |n: &Node<KvStore>| n.followers().iter().find(|f| f.0 == 1).unwrap().1;
        // The first failure loses it.
        out.clear();
        n.on_completion(2, failed(to_1[0]), &mut mem, &mut out);
        assert_eq!(state_of_1(&n), "absent");
        // A retry period later it is requested, acks, and its catch-up starts with a read.
        for t in 3..=14 {
            n.tick_data(t, &mut mem, &mut out);
        }
        assert_eq!(state_of_1(&n), "requested");
        mem.set_control_word(cb_ack(1), b.0);
        out.clear();
        n.tick_data(15, &mut mem, &mut out);
        assert_eq!(state_of_1(&n), "syncing");
        let header_read = out
            .posts
            .iter()
            .find(|p| p.target == 1 && p.reconnect)
            .expect("the catch-up's header read")
            .wr_id;
        // The old connection's other write fails late: the follower stays on its way back.
        out.clear();
        n.on_completion(16, failed(to_1[1]), &mut mem, &mut out);
        assert_eq!(state_of_1(&n), "syncing");
        assert!(
            !out.notes
                .iter()
                .any(|e| matches!(e, Note::FollowerLost { .. })),
            "{:?}",
            out.notes
        );
        // A failure of the new cycle's own read still loses it.
        n.on_completion(17, failed(header_read), &mut mem, &mut out);
        assert_eq!(state_of_1(&n), "absent");
    }

    #[test]
    fn the_ring_head_stands_and_leads_alone_only_with_a_majority() {
        let (mut n, mut mem) = node(0, 3, Start::Fresh);
        let mut out = Output::default();
        n.tick(1, &mut mem, &mut out);
        assert_eq!(n.role(), RoleKind::Candidate);
        let b = n.own_ballot().unwrap();
        // It asked both peers.
        let asked: Vec<NodeId> = out
            .posts
            .iter()
            .filter(|p| matches!(&p.op, Op::Write { offset, .. } if *offset == cb_request(0)))
            .map(|p| p.target)
            .collect();
        assert_eq!(asked, vec![1, 2]);
        // Its own ack alone is not a majority.
        for t in 2..10 {
            n.tick(t, &mut mem, &mut out);
        }
        assert_eq!(n.role(), RoleKind::Candidate);
        // A peer's ack makes a majority: recovery starts with a header read of that peer.
        mem.set_control_word(cb_ack(1), b.0);
        out.clear();
        n.tick(10, &mut mem, &mut out);
        assert_eq!(n.role(), RoleKind::Recovering);
        assert!(out
            .posts
            .iter()
            .any(|p| p.target == 1 && p.reconnect && p.ballot == b));
    }

    #[test]
    fn followers_redirect_and_everyone_refuses_oversize_commands() {
        let (mut n, mut mem) = node(1, 3, Start::Fresh);
        let mut out = Output::default();
        request(&mut mem, 2, Ballot::new(1, 2));
        n.tick_control(1, &mut mem, &mut out);
        let mut cmd = Vec::new();
        Command {
            client: 7,
            seq: 1,
            op: KvOp::Get { key: b"k".to_vec() },
        }
        .encode(&mut cmd);
        out.clear();
        n.on_client_request(
            2,
            ClientRequest {
                client: 7,
                seq: 1,
                command: cmd,
            },
            &mut mem,
            &mut out,
        );
        assert_eq!(
            out.replies[0].result,
            Err(ClientError::NotLeader {
                leader_hint: Some(2)
            })
        );
        out.clear();
        n.on_client_request(
            3,
            ClientRequest {
                client: 7,
                seq: 2,
                command: vec![0; 1000],
            },
            &mut mem,
            &mut out,
        );
        assert!(matches!(
            out.replies[0].result,
            Err(ClientError::TooLarge { bytes: 1000, .. })
        ));
    }

    fn heartbeat_answer(
        n: &mut Node<KvStore>,
        mem: &mut SimMemory,
        out: &mut Output,
        granted: Ballot,
        amnesiac: bool,
    ) {
        let posts: Vec<Post> = out.posts.drain(..).collect();
        for p in posts {
            if let Op::Read {
                region: Region::Control,
                ..
            } = p.op
            {
                let mut cb = vec![0u8; CB_AMNESIAC + 8];
                put_u64(&mut cb, CB_HEARTBEAT, 1);
                put_u64(&mut cb, CB_GRANTED_BALLOT, granted.0);
                put_u64(&mut cb, CB_AMNESIAC, u64::from(amnesiac));
                let c = Completion {
                    wr_id: p.wr_id,
                    result: Ok(Some(cb)),
                };
                n.on_completion(0, c, mem, out);
            }
        }
    }

    #[test]
    fn an_amnesiac_node_grants_nothing_below_what_a_majority_granted() {
        let (mut n, mut mem) = node(1, 3, Start::MemoryLost);
        assert!(n.is_amnesiac(&mem));
        let mut out = Output::default();
        let floor = Ballot::new(4, 0);
        // A stale, lower request arrives before the probe is done: refused.
        request(&mut mem, 2, Ballot::new(3, 2));
        n.tick_control(1, &mut mem, &mut out);
        assert!(mem.writers().is_empty());
        // Only amnesiac peers answer: still not enough.
        heartbeat_answer(&mut n, &mut mem, &mut out, floor, true);
        n.tick_control(2, &mut mem, &mut out);
        assert!(mem.writers().is_empty());
        // Both peers answer, non-amnesiac, having granted b4.0.
        heartbeat_answer(&mut n, &mut mem, &mut out, floor, false);
        n.tick_control(3, &mut mem, &mut out);
        assert!(mem.writers().is_empty(), "b3.2 is below the floor");
        request(&mut mem, 0, floor);
        n.tick_control(4, &mut mem, &mut out);
        assert_eq!(
            mem.writers(),
            vec![(0, floor)],
            "the floor's own leader may re-take it"
        );
        // It is not electable and never stands while amnesiac.
        assert_eq!(n.role(), RoleKind::Follower);
    }

    #[test]
    fn a_restart_with_memory_kept_restores_the_grant_and_re_acks() {
        let (mut n, mut mem) = node(1, 3, Start::Fresh);
        let mut out = Output::default();
        request(&mut mem, 2, Ballot::new(1, 2));
        n.tick_control(1, &mut mem, &mut out);
        drop(n);
        // The process dies; the fabric loses the rights table; the memory survives.
        for (w, _) in mem.writers() {
            mem.revoke(w);
        }
        let mut out = Output::default();
        let mut n = Node::new(
            cfg(1, 3),
            KvStore::new(KvLimits::default()),
            &mut mem,
            Start::MemoryKept,
            100,
        );
        assert_eq!(mem.writers(), vec![(2, Ballot::new(1, 2))]);
        n.tick_control(101, &mut mem, &mut out);
        assert_eq!(acks(&out), vec![(2, Ballot::new(1, 2))]);
    }
}
