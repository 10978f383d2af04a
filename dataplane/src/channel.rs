//! The shared-memory channel between a node's control plane and its own data plane (DESIGN §1):
//! one mapped file (mode 0600) holding a header, a block of named counters, and two bounded
//! lock-free single-producer single-consumer rings of fixed-size 64-byte messages:
//!
//! - `commands`: control plane → data plane ([`Command`]);
//! - `events`: data plane → control plane ([`Event`]).
//!
//! Layout (all offsets from the start of the file, which is mapped page-aligned):
//!
//! ```text
//!  0      header: magic, version, owning node, entries of each ring, counter slots, file length
//!  128    counters: COUNTER_SLOTS u64 words, one per 64-byte cache line (see [`Counter`])
//!  4096   commands ring: head (own cache line), tail (own cache line), then 64-byte slots
//!  ...    events ring, page-aligned after the commands ring
//! ```
//!
//! A ring's `head` and `tail` count messages popped and pushed since creation (never wrapped;
//! the slot of index `i` is `i & (capacity - 1)`). The producer copies a message into its slot
//! with atomic word stores, then publishes it with a release store of `tail`; the consumer
//! reads `tail` with acquire, copies the slot out with atomic loads, then frees it with a
//! release store of `head`, which the producer reads with acquire before reusing the slot.
//! Every byte of the mapping is accessed atomically, so the processes never race in the
//! language's sense; a misbehaving peer can at worst hand us garbage, which
//! [`Command::decode`] / [`Event::decode`] reject.
//!
//! # One producer and one consumer per ring
//!
//! The rings are correct only with exactly one producer and one consumer each. Within a process
//! this is enforced: each endpoint ([`CommandSender`], [`CommandReceiver`], [`EventSender`],
//! [`EventReceiver`]) can be taken once per opened [`Channel`] value, and the endpoints' methods
//! take `&mut self`. Across processes it is a convention the processes must keep:
//!
//! - the **control plane** takes only the [`CommandSender`] and the [`EventReceiver`];
//! - the **data plane** takes only the [`CommandReceiver`] and the [`EventSender`].
//!
//! Counters have no such restriction: any mapping may read them without a syscall, and
//! [`Channel::add`] is an atomic read-modify-write.
//!
//! The file must not be truncated while mapped (that would fault the readers); [`Channel::create`]
//! therefore never resizes a file in place: it builds the new file beside `path` and renames it
//! over, so a process that still maps the old file keeps a consistent (if stale) view.

use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::mapped::MappedFile;

use crate::protocol::{NodeId, MAX_NODES};

/// Bytes of one ring message.
pub const MESSAGE_BYTES: usize = 64;
/// The largest ring capacity accepted (64 MiB of slots per ring).
pub const MAX_RING_ENTRIES: u64 = 1 << 20;
/// Counter slots reserved in the layout (the [`Counter`] enum uses the first few).
pub const COUNTER_SLOTS: usize = 48;

const MAGIC: u64 = 0x7261_7061_785f_6368; // "rapax_ch"
const VERSION: u64 = 1;

const HDR_MAGIC: usize = 0;
const HDR_VERSION: usize = 8;
const HDR_NODE: usize = 16;
const HDR_COMMAND_ENTRIES: usize = 24;
const HDR_EVENT_ENTRIES: usize = 32;
const HDR_COUNTER_SLOTS: usize = 40;
const HDR_FILE_LEN: usize = 48;
const HEADER_BYTES: usize = 128;

const CACHE_LINE: usize = 64;
const COUNTERS_AT: usize = HEADER_BYTES;
const COUNTER_STRIDE: usize = CACHE_LINE;
const PAGE: usize = 4096;
const COMMANDS_AT: usize = PAGE;
const _: () = assert!(COUNTERS_AT + COUNTER_SLOTS * COUNTER_STRIDE <= COMMANDS_AT);

// Within a ring: head and tail two cache lines apart (so adjacent-line prefetch does not pair
// them either), slots after.
const RING_HEAD: usize = 0;
const RING_TAIL: usize = 2 * CACHE_LINE;
const RING_SLOTS: usize = 4 * CACHE_LINE;

/// Errors creating, opening or using a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("channel file {path}: bad magic {found:#018x} (not a rapax channel)")]
    BadMagic { path: PathBuf, found: u64 },
    #[error("channel file {path}: layout version {found}, this build reads version {expected}")]
    BadVersion {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("channel file {path}: {found} bytes, its header describes {expected} (truncated or resized?)")]
    BadSize {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("channel file {path}: bad header: {what}")]
    BadHeader { path: PathBuf, what: String },
    #[error("ring capacity {entries} is not a power of two in 1..={MAX_RING_ENTRIES}")]
    BadRingEntries { entries: u64 },
    #[error("node id {node} is out of range (at most {MAX_NODES} nodes)")]
    BadNode { node: NodeId },
    #[error("the {endpoint} endpoint of this channel was already taken")]
    EndpointTaken { endpoint: &'static str },
    #[error("{kind} message: unknown tag {tag:#04x}")]
    UnknownTag { kind: &'static str, tag: u8 },
    #[error("{kind} message: nonzero padding byte at offset {offset}")]
    NonzeroPadding { kind: &'static str, offset: usize },
}

/// A ring had no free slot; the message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("channel ring is full")]
pub struct Full;

/// The named counters of the channel, each one u64 in its own cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Counter {
    /// Incremented by the data plane as it publishes its counters (once per microsecond of its
    /// turns at most): a stuck data plane stops it.
    Heartbeat = 0,
    /// Log entries applied to the state machine.
    Applied = 1,
    /// The commit index.
    Commit = 2,
    /// The current ballot (raw).
    Ballot = 3,
    /// The node's role (encoding chosen by the writer).
    Role = 4,
    /// Client requests received.
    ClientRequests = 5,
    /// Client requests rejected.
    ClientRejected = 6,
    /// Malformed frames dropped.
    MalformedFrames = 7,
    /// Client requests refused as malformed, unknown or oversize.
    ClientBadRequests = 8,
    /// The ballot this node granted its log to (raw).
    Granted = 9,
    /// Control plane: bit i set while node i is alive by pull-score (this node included).
    AliveMask = 10,
    /// Control plane: the pull-score of node i in bits 8i..8i+8.
    Scores = 11,
    /// Incremented by the control plane's main loop.
    ControlHeartbeat = 12,
    /// Control plane: CLOCK_MONOTONIC ns when the leader it followed was last declared failed.
    LeaderLostAtNs = 13,
    /// Data plane: CLOCK_MONOTONIC ns when it last stood as a candidate.
    CandidateAtNs = 14,
    /// Data plane: CLOCK_MONOTONIC ns when it last became leader.
    LeaderAtNs = 15,
    /// Data plane: CLOCK_MONOTONIC ns of its first chosen slot as the current leader.
    FirstCommitAtNs = 16,
    /// Written by tools: a new value asks the data plane to write its latency histogram.
    StatsRequest = 17,
    /// Data plane: the last stats request it answered.
    StatsDone = 18,
    /// Control plane: peer-status commands dropped on a full ring.
    PeerStatusDropped = 19,
    /// Data plane: slots whose replication latency it measured.
    ReplicationSamples = 20,
    /// Data plane: the node it believes leads, plus one (0: unknown).
    LeaderHint = 21,
    /// Data plane (frame fabrics): frames from an address that is not their source's.
    FabricStrangers = 22,
    /// Data plane (frame fabrics): datagrams that are not a valid frame.
    FabricDecodeErrors = 23,
    /// Data plane (frame fabrics): frames of another cluster or for another node.
    FabricMisaddressed = 24,
    /// Data plane (frame fabrics): operations completed by their time-out.
    FabricTimeouts = 25,
    /// Data plane (frame fabrics): frames sent, resends included.
    FabricSent = 26,
    /// Data plane (frame fabrics): frames received, dropped ones included.
    FabricReceived = 27,
    /// Data plane (frame fabrics): frames the link refused to send (a memif port not yet
    /// connected, a full transmit queue).
    FabricSendErrors = 28,
    /// Data plane (frame fabrics, loss recovery): request frames sent again.
    FabricRetransmits = 29,
    /// Data plane (frame fabrics, loss recovery): log requests dropped out of sequence.
    FabricOutOfSequence = 30,
    /// Data plane, while leading: its view of follower i in bits 4i..4i+4 (see
    /// `daemon::follower_code`; 0 when not leading or for itself).
    Followers = 31,
    /// Written by tools: a new value asks the leader's data plane to measure the data mesh's
    /// frame round trip (`daemon::FLOOR_ROUNDS` reads of a follower's heartbeat word).
    FloorRequest = 32,
    /// Data plane: the last floor request it answered (its samples are in the floor file).
    FloorDone = 33,
    /// Data plane (shm): old writers it fenced, killed while stopped with a write in flight
    /// into its region when it revoked them.
    FabricFenced = 34,
    /// Data plane (leader): state transfers started to followers behind its log.
    SnapshotsSent = 35,
    /// Data plane: snapshots a leader streamed to it that it installed.
    SnapshotsInstalled = 36,
    /// Data plane: snapshots in its log that did not verify or decode (discarded).
    SnapshotsRejected = 37,
    /// Data plane: the applied index of its last checkpoint.
    CheckpointIndex = 38,
    /// Data plane: the state digest at that checkpoint.
    CheckpointDigest = 39,
    /// Data plane: the configuration epoch it applied (a leader: the one it proposes under).
    Epoch = 40,
    /// Data plane: that configuration's ring, node ids in 4-bit digits, first in the lowest.
    Ring = 41,
    /// Data plane: the ring's length (1..=16).
    RingLen = 42,
    /// Data plane: 1 while it has lost its memory and no leader has re-synced it (it counts
    /// in no quorum yet), else 0.
    Amnesiac = 43,
    /// rdma: grants and revocations that fell back to the RESET cycle (the device refused the
    /// access-flags switch).
    FabricRightsFallbacks = 44,
    /// rdma: revocations whose writer's region the device would not deregister (its data
    /// responders were reset instead).
    FabricFenceFailures = 45,
    /// rdma: queue pairs created on a connection's path, initiators and responders (no spare
    /// made ahead was ready).
    FabricQpsOnPath = 46,
    /// rdma: write regions registered on a connection's path (none registered ahead was
    /// ready).
    FabricRegionsOnPath = 47,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 48] = [
        Counter::Heartbeat,
        Counter::Applied,
        Counter::Commit,
        Counter::Ballot,
        Counter::Role,
        Counter::ClientRequests,
        Counter::ClientRejected,
        Counter::MalformedFrames,
        Counter::ClientBadRequests,
        Counter::Granted,
        Counter::AliveMask,
        Counter::Scores,
        Counter::ControlHeartbeat,
        Counter::LeaderLostAtNs,
        Counter::CandidateAtNs,
        Counter::LeaderAtNs,
        Counter::FirstCommitAtNs,
        Counter::StatsRequest,
        Counter::StatsDone,
        Counter::PeerStatusDropped,
        Counter::ReplicationSamples,
        Counter::LeaderHint,
        Counter::FabricStrangers,
        Counter::FabricDecodeErrors,
        Counter::FabricMisaddressed,
        Counter::FabricTimeouts,
        Counter::FabricSent,
        Counter::FabricReceived,
        Counter::FabricSendErrors,
        Counter::FabricRetransmits,
        Counter::FabricOutOfSequence,
        Counter::Followers,
        Counter::FloorRequest,
        Counter::FloorDone,
        Counter::FabricFenced,
        Counter::SnapshotsSent,
        Counter::SnapshotsInstalled,
        Counter::SnapshotsRejected,
        Counter::CheckpointIndex,
        Counter::CheckpointDigest,
        Counter::Epoch,
        Counter::Ring,
        Counter::RingLen,
        Counter::Amnesiac,
        Counter::FabricRightsFallbacks,
        Counter::FabricFenceFailures,
        Counter::FabricQpsOnPath,
        Counter::FabricRegionsOnPath,
    ];

    /// The counter's name, for tools.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Heartbeat => "heartbeat",
            Counter::Applied => "applied",
            Counter::Commit => "commit",
            Counter::Ballot => "ballot",
            Counter::Role => "role",
            Counter::ClientRequests => "client_requests",
            Counter::ClientRejected => "client_rejected",
            Counter::MalformedFrames => "malformed_frames",
            Counter::ClientBadRequests => "client_bad_requests",
            Counter::Granted => "granted",
            Counter::AliveMask => "alive_mask",
            Counter::Scores => "scores",
            Counter::ControlHeartbeat => "control_heartbeat",
            Counter::LeaderLostAtNs => "leader_lost_at_ns",
            Counter::CandidateAtNs => "candidate_at_ns",
            Counter::LeaderAtNs => "leader_at_ns",
            Counter::FirstCommitAtNs => "first_commit_at_ns",
            Counter::StatsRequest => "stats_request",
            Counter::StatsDone => "stats_done",
            Counter::PeerStatusDropped => "peer_status_dropped",
            Counter::ReplicationSamples => "replication_samples",
            Counter::LeaderHint => "leader_hint",
            Counter::FabricStrangers => "fabric_strangers",
            Counter::FabricDecodeErrors => "fabric_decode_errors",
            Counter::FabricMisaddressed => "fabric_misaddressed",
            Counter::FabricTimeouts => "fabric_timeouts",
            Counter::FabricSent => "fabric_sent",
            Counter::FabricReceived => "fabric_received",
            Counter::FabricSendErrors => "fabric_send_errors",
            Counter::FabricRetransmits => "fabric_retransmits",
            Counter::FabricOutOfSequence => "fabric_out_of_sequence",
            Counter::Followers => "followers",
            Counter::FloorRequest => "floor_request",
            Counter::FloorDone => "floor_done",
            Counter::FabricFenced => "fabric_fenced",
            Counter::SnapshotsSent => "snapshots_sent",
            Counter::SnapshotsInstalled => "snapshots_installed",
            Counter::SnapshotsRejected => "snapshots_rejected",
            Counter::CheckpointIndex => "checkpoint_index",
            Counter::CheckpointDigest => "checkpoint_digest",
            Counter::Epoch => "epoch",
            Counter::Ring => "ring",
            Counter::RingLen => "ring_len",
            Counter::Amnesiac => "amnesiac",
            Counter::FabricRightsFallbacks => "fabric_rights_fallbacks",
            Counter::FabricFenceFailures => "fabric_fence_failures",
            Counter::FabricQpsOnPath => "fabric_qps_on_path",
            Counter::FabricRegionsOnPath => "fabric_regions_on_path",
        }
    }

    fn offset(self) -> usize {
        COUNTERS_AT + self as usize * COUNTER_STRIDE
    }
}

const _: () = assert!(Counter::ALL.len() <= COUNTER_SLOTS);

/// A message that travels in a ring slot.
pub trait Message: Sized {
    /// Encodes into one slot.
    fn encode(&self) -> [u8; MESSAGE_BYTES];
    /// Decodes one slot; never panics.
    fn decode(bytes: &[u8; MESSAGE_BYTES]) -> Result<Self, ChannelError>;
}

/// Control plane → data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Lead at `ballot`; `acked_mask` holds the nodes that granted it.
    Lead { ballot: u64, acked_mask: u32 },
    /// Stop leading at `ballot`.
    StepDown { ballot: u64 },
    /// The current view: `leader` leads at `ballot`.
    View { ballot: u64, leader: u8 },
    /// Stop the data plane.
    Shutdown,
    /// The control plane's view of `peer`: alive by pull-score or not and, when its last
    /// heartbeat read succeeded, the ballot it granted, whether it lost its memory
    /// (amnesiac), whether its state is behind its log, whether it stands or leads, and the
    /// configuration epoch it applied.
    PeerStatus {
        peer: u8,
        alive: bool,
        read_ok: bool,
        granted: u64,
        amnesiac: bool,
        behind: bool,
        leading: bool,
        epoch: u64,
    },
}

/// Data plane → control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The data plane stopped leading at `ballot`.
    SteppedDown { ballot: u64, reason: u8 },
    /// The data plane leads at `ballot`.
    BecameLeader { ballot: u64 },
    /// Everything up to `index` is applied.
    Applied { index: u64 },
}

// Message encoding: tag at byte 0, bytes 1..8 zero, fields little-endian from byte 8, every
// byte after the fields zero. Tag 0 (a zeroed slot) is never valid; commands and events use
// disjoint tags, so a message in the wrong ring is rejected.
const TAG_LEAD: u8 = 0x01;
const TAG_STEP_DOWN: u8 = 0x02;
const TAG_VIEW: u8 = 0x03;
const TAG_SHUTDOWN: u8 = 0x04;
const TAG_PEER_STATUS: u8 = 0x05;
const TAG_STEPPED_DOWN: u8 = 0x81;
const TAG_BECAME_LEADER: u8 = 0x82;
const TAG_APPLIED: u8 = 0x83;
const FIELDS_AT: usize = 8;

fn put_u64(m: &mut [u8; MESSAGE_BYTES], at: usize, v: u64) {
    m[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(m: &[u8; MESSAGE_BYTES], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&m[at..at + 8]);
    u64::from_le_bytes(b)
}

fn get_u32(m: &[u8; MESSAGE_BYTES], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&m[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Checks that bytes 1..8 and `fields_end..` are zero.
fn check_padding(
    kind: &'static str,
    m: &[u8; MESSAGE_BYTES],
    fields_end: usize,
) -> Result<(), ChannelError> {
    let mut pad = (1..FIELDS_AT).chain(fields_end..MESSAGE_BYTES);
    match pad.find(|&i| m[i] != 0) {
        Some(offset) => Err(ChannelError::NonzeroPadding { kind, offset }),
        None => Ok(()),
    }
}

impl Message for Command {
    fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut m = [0u8; MESSAGE_BYTES];
        match *self {
            Command::Lead { ballot, acked_mask } => {
                m[0] = TAG_LEAD;
                put_u64(&mut m, FIELDS_AT, ballot);
                m[FIELDS_AT + 8..FIELDS_AT + 12].copy_from_slice(&acked_mask.to_le_bytes());
            }
            Command::StepDown { ballot } => {
                m[0] = TAG_STEP_DOWN;
                put_u64(&mut m, FIELDS_AT, ballot);
            }
            Command::View { ballot, leader } => {
                m[0] = TAG_VIEW;
                put_u64(&mut m, FIELDS_AT, ballot);
                m[FIELDS_AT + 8] = leader;
            }
            Command::Shutdown => m[0] = TAG_SHUTDOWN,
            Command::PeerStatus {
                peer,
                alive,
                read_ok,
                granted,
                amnesiac,
                behind,
                leading,
                epoch,
            } => {
                m[0] = TAG_PEER_STATUS;
                put_u64(&mut m, FIELDS_AT, granted);
                put_u64(&mut m, FIELDS_AT + 10, epoch);
                m[FIELDS_AT + 8] = peer;
                m[FIELDS_AT + 9] = u8::from(alive)
                    | u8::from(read_ok) << 1
                    | u8::from(amnesiac) << 2
                    | u8::from(behind) << 3
                    | u8::from(leading) << 4;
            }
        }
        m
    }

    fn decode(m: &[u8; MESSAGE_BYTES]) -> Result<Command, ChannelError> {
        const KIND: &str = "command";
        let (cmd, end) = match m[0] {
            TAG_LEAD => (
                Command::Lead {
                    ballot: get_u64(m, FIELDS_AT),
                    acked_mask: get_u32(m, FIELDS_AT + 8),
                },
                FIELDS_AT + 12,
            ),
            TAG_STEP_DOWN => (
                Command::StepDown {
                    ballot: get_u64(m, FIELDS_AT),
                },
                FIELDS_AT + 8,
            ),
            TAG_VIEW => (
                Command::View {
                    ballot: get_u64(m, FIELDS_AT),
                    leader: m[FIELDS_AT + 8],
                },
                FIELDS_AT + 9,
            ),
            TAG_SHUTDOWN => (Command::Shutdown, FIELDS_AT),
            TAG_PEER_STATUS => {
                let flags = m[FIELDS_AT + 9];
                if flags & !0b1_1111 != 0 {
                    return Err(ChannelError::NonzeroPadding {
                        kind: KIND,
                        offset: FIELDS_AT + 9,
                    });
                }
                (
                    Command::PeerStatus {
                        peer: m[FIELDS_AT + 8],
                        alive: flags & 1 != 0,
                        read_ok: flags & 2 != 0,
                        granted: get_u64(m, FIELDS_AT),
                        amnesiac: flags & 4 != 0,
                        behind: flags & 8 != 0,
                        leading: flags & 16 != 0,
                        epoch: get_u64(m, FIELDS_AT + 10),
                    },
                    FIELDS_AT + 18,
                )
            }
            tag => return Err(ChannelError::UnknownTag { kind: KIND, tag }),
        };
        check_padding(KIND, m, end)?;
        Ok(cmd)
    }
}

impl Command {
    /// Encodes into one ring slot.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        Message::encode(self)
    }

    /// Decodes one ring slot: unknown tags and nonzero padding are errors.
    pub fn decode(bytes: &[u8; MESSAGE_BYTES]) -> Result<Command, ChannelError> {
        <Command as Message>::decode(bytes)
    }
}

impl Message for Event {
    fn encode(&self) -> [u8; MESSAGE_BYTES] {
        let mut m = [0u8; MESSAGE_BYTES];
        match *self {
            Event::SteppedDown { ballot, reason } => {
                m[0] = TAG_STEPPED_DOWN;
                put_u64(&mut m, FIELDS_AT, ballot);
                m[FIELDS_AT + 8] = reason;
            }
            Event::BecameLeader { ballot } => {
                m[0] = TAG_BECAME_LEADER;
                put_u64(&mut m, FIELDS_AT, ballot);
            }
            Event::Applied { index } => {
                m[0] = TAG_APPLIED;
                put_u64(&mut m, FIELDS_AT, index);
            }
        }
        m
    }

    fn decode(m: &[u8; MESSAGE_BYTES]) -> Result<Event, ChannelError> {
        const KIND: &str = "event";
        let (event, end) = match m[0] {
            TAG_STEPPED_DOWN => (
                Event::SteppedDown {
                    ballot: get_u64(m, FIELDS_AT),
                    reason: m[FIELDS_AT + 8],
                },
                FIELDS_AT + 9,
            ),
            TAG_BECAME_LEADER => (
                Event::BecameLeader {
                    ballot: get_u64(m, FIELDS_AT),
                },
                FIELDS_AT + 8,
            ),
            TAG_APPLIED => (
                Event::Applied {
                    index: get_u64(m, FIELDS_AT),
                },
                FIELDS_AT + 8,
            ),
            tag => return Err(ChannelError::UnknownTag { kind: KIND, tag }),
        };
        check_padding(KIND, m, end)?;
        Ok(event)
    }
}

impl Event {
    /// Encodes into one ring slot.
    pub fn encode(&self) -> [u8; MESSAGE_BYTES] {
        Message::encode(self)
    }

    /// Decodes one ring slot: unknown tags and nonzero padding are errors.
    pub fn decode(bytes: &[u8; MESSAGE_BYTES]) -> Result<Event, ChannelError> {
        <Event as Message>::decode(bytes)
    }
}

/// The channel file, mapped. Only ever accessed through atomics.
type Mapped = MappedFile;

fn ring_bytes(entries: u64) -> usize {
    RING_SLOTS + entries as usize * MESSAGE_BYTES
}

/// Where each part lives, for rings of the given capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    command_entries: u64,
    event_entries: u64,
}

impl Layout {
    fn commands_at(&self) -> usize {
        COMMANDS_AT
    }

    fn events_at(&self) -> usize {
        (COMMANDS_AT + ring_bytes(self.command_entries)).next_multiple_of(PAGE)
    }

    fn file_len(&self) -> u64 {
        (self.events_at() + ring_bytes(self.event_entries)).next_multiple_of(PAGE) as u64
    }
}

fn valid_entries(entries: u64) -> bool {
    entries.is_power_of_two() && entries <= MAX_RING_ENTRIES
}

/// One node's channel file, mapped. Cheap to share between threads (`&Channel` is `Sync`):
/// counters may be used from any thread; each ring endpoint is taken once.
pub struct Channel {
    path: PathBuf,
    map: Arc<Mapped>,
    layout: Layout,
    node: NodeId,
    taken: [AtomicBool; 4],
}

const COMMAND_SENDER: usize = 0;
const COMMAND_RECEIVER: usize = 1;
const EVENT_SENDER: usize = 2;
const EVENT_RECEIVER: usize = 3;
const ENDPOINT_NAMES: [&str; 4] = [
    "command sender",
    "command receiver",
    "event sender",
    "event receiver",
];

impl Channel {
    /// Creates the channel file at `path` (mode 0600) for node `node`, with both rings of
    /// `ring_entries` slots (a power of two), empty rings and zeroed counters, and maps it.
    ///
    /// An existing file at `path` is replaced atomically (built beside it, then renamed over),
    /// never resized in place: a process still mapping the old file is not faulted.
    pub fn create(path: &Path, node: NodeId, ring_entries: u64) -> Result<Channel, ChannelError> {
        if !valid_entries(ring_entries) {
            return Err(ChannelError::BadRingEntries {
                entries: ring_entries,
            });
        }
        if node as usize >= MAX_NODES {
            return Err(ChannelError::BadNode { node });
        }
        let layout = Layout {
            command_entries: ring_entries,
            event_entries: ring_entries,
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ChannelError::Io { path: p, source }
        };
        let _ = std::fs::remove_file(&tmp);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?
        };
        let built = (|| {
            file.set_len(layout.file_len()).map_err(io(&tmp))?;
            let map = map(&file, &tmp)?;
            map.word(HDR_VERSION).store(VERSION, Ordering::Relaxed);
            map.word(HDR_NODE).store(u64::from(node), Ordering::Relaxed);
            map.word(HDR_COMMAND_ENTRIES)
                .store(layout.command_entries, Ordering::Relaxed);
            map.word(HDR_EVENT_ENTRIES)
                .store(layout.event_entries, Ordering::Relaxed);
            map.word(HDR_COUNTER_SLOTS)
                .store(COUNTER_SLOTS as u64, Ordering::Relaxed);
            map.word(HDR_FILE_LEN)
                .store(layout.file_len(), Ordering::Relaxed);
            map.word(HDR_MAGIC).store(MAGIC, Ordering::Release);
            std::fs::rename(&tmp, path).map_err(io(path))?;
            Ok(map)
        })();
        let map = built.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(Channel::from_parts(path, map, layout, node))
    }

    /// Opens and maps an existing channel file, checking its magic, version and size.
    pub fn open(path: &Path) -> Result<Channel, ChannelError> {
        let io = |source| ChannelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let found = file.metadata().map_err(io)?.len();
        if found < PAGE as u64 {
            return Err(ChannelError::BadSize {
                path: path.to_path_buf(),
                found,
                expected: PAGE as u64,
            });
        }
        let map = map(&file, path)?;
        let bad_header = |what: String| ChannelError::BadHeader {
            path: path.to_path_buf(),
            what,
        };
        let magic = map.word(HDR_MAGIC).load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(ChannelError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = map.word(HDR_VERSION).load(Ordering::Relaxed);
        if version != VERSION {
            return Err(ChannelError::BadVersion {
                path: path.to_path_buf(),
                found: version,
                expected: VERSION,
            });
        }
        let layout = Layout {
            command_entries: map.word(HDR_COMMAND_ENTRIES).load(Ordering::Relaxed),
            event_entries: map.word(HDR_EVENT_ENTRIES).load(Ordering::Relaxed),
        };
        for (name, entries) in [
            ("commands", layout.command_entries),
            ("events", layout.event_entries),
        ] {
            if !valid_entries(entries) {
                return Err(bad_header(format!(
                    "{name} ring capacity {entries} is not a power of two in 1..={MAX_RING_ENTRIES}"
                )));
            }
        }
        let slots = map.word(HDR_COUNTER_SLOTS).load(Ordering::Relaxed);
        if slots != COUNTER_SLOTS as u64 {
            return Err(bad_header(format!(
                "{slots} counter slots, expected {COUNTER_SLOTS}"
            )));
        }
        let node = map.word(HDR_NODE).load(Ordering::Relaxed);
        if node >= MAX_NODES as u64 {
            return Err(bad_header(format!("node id {node} out of range")));
        }
        let expected = layout.file_len();
        let recorded = map.word(HDR_FILE_LEN).load(Ordering::Relaxed);
        if found != expected || recorded != expected || map.len() as u64 != expected {
            return Err(ChannelError::BadSize {
                path: path.to_path_buf(),
                found,
                expected,
            });
        }
        Ok(Channel::from_parts(path, map, layout, node as NodeId))
    }

    fn from_parts(path: &Path, map: Mapped, layout: Layout, node: NodeId) -> Channel {
        Channel {
            path: path.to_path_buf(),
            map: Arc::new(map),
            layout,
            node,
            taken: Default::default(),
        }
    }

    /// The file this channel maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node that owns the channel.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Slots of the commands ring.
    pub fn command_entries(&self) -> u64 {
        self.layout.command_entries
    }

    /// Slots of the events ring.
    pub fn event_entries(&self) -> u64 {
        self.layout.event_entries
    }

    /// Reads a counter (an atomic load of the shared word, no syscall).
    pub fn counter(&self, c: Counter) -> u64 {
        self.map.word(c.offset()).load(Ordering::Acquire)
    }

    /// Adds `n` to a counter (wrapping), atomically.
    pub fn add(&self, c: Counter, n: u64) {
        self.map.word(c.offset()).fetch_add(n, Ordering::Release);
    }

    /// Adds `n` to a counter this process alone writes (wrapping): a load and a store. The
    /// locked read-modify-write of [`Channel::add`] would wait for every store before it, the
    /// fast path's writes into followers' logs among them, to reach the cache; readers see
    /// either value, as with [`Channel::add`].
    pub fn bump(&self, c: Counter, n: u64) {
        let word = self.map.word(c.offset());
        word.store(
            word.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Release,
        );
    }

    /// Sets a counter.
    pub fn set(&self, c: Counter, v: u64) {
        self.map.word(c.offset()).store(v, Ordering::Release);
    }

    fn take(&self, endpoint: usize) -> Result<(), ChannelError> {
        if self.taken[endpoint].swap(true, Ordering::AcqRel) {
            return Err(ChannelError::EndpointTaken {
                endpoint: ENDPOINT_NAMES[endpoint],
            });
        }
        Ok(())
    }

    fn ring(&self, at: usize, entries: u64) -> Ring {
        Ring {
            map: Arc::clone(&self.map),
            at,
            mask: entries - 1,
        }
    }

    fn commands(&self) -> Ring {
        self.ring(self.layout.commands_at(), self.layout.command_entries)
    }

    fn events(&self) -> Ring {
        self.ring(self.layout.events_at(), self.layout.event_entries)
    }

    /// The producer end of the commands ring (control plane). Once per `Channel` value.
    pub fn command_sender(&self) -> Result<CommandSender, ChannelError> {
        self.take(COMMAND_SENDER)?;
        Ok(Sender::new(self.commands()))
    }

    /// The consumer end of the commands ring (data plane). Once per `Channel` value.
    pub fn command_receiver(&self) -> Result<CommandReceiver, ChannelError> {
        self.take(COMMAND_RECEIVER)?;
        Ok(Receiver::new(self.commands()))
    }

    /// The producer end of the events ring (data plane). Once per `Channel` value.
    pub fn event_sender(&self) -> Result<EventSender, ChannelError> {
        self.take(EVENT_SENDER)?;
        Ok(Sender::new(self.events()))
    }

    /// The consumer end of the events ring (control plane). Once per `Channel` value.
    pub fn event_receiver(&self) -> Result<EventReceiver, ChannelError> {
        self.take(EVENT_RECEIVER)?;
        Ok(Receiver::new(self.events()))
    }
}

fn map(file: &File, path: &Path) -> Result<Mapped, ChannelError> {
    MappedFile::map(file).map_err(|source| ChannelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// One ring inside the mapping.
struct Ring {
    map: Arc<Mapped>,
    at: usize,
    mask: u64,
}

impl Ring {
    fn head(&self) -> &AtomicU64 {
        self.map.word(self.at + RING_HEAD)
    }

    fn tail(&self) -> &AtomicU64 {
        self.map.word(self.at + RING_TAIL)
    }

    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn slot(&self, index: u64) -> usize {
        self.at + RING_SLOTS + (index & self.mask) as usize * MESSAGE_BYTES
    }
}

/// The producer end of a ring. Exactly one may exist per ring across all processes.
pub struct Sender<M> {
    ring: Ring,
    /// The consumer's head as last read: slots below `cached_head + capacity` are free.
    cached_head: u64,
    _m: PhantomData<fn(M)>,
}

/// The consumer end of a ring. Exactly one may exist per ring across all processes.
pub struct Receiver<M> {
    ring: Ring,
    /// The producer's tail as last read: slots below it hold published messages.
    cached_tail: u64,
    _m: PhantomData<fn() -> M>,
}

/// Control plane → data plane, producer end.
pub type CommandSender = Sender<Command>;
/// Control plane → data plane, consumer end.
pub type CommandReceiver = Receiver<Command>;
/// Data plane → control plane, producer end.
pub type EventSender = Sender<Event>;
/// Data plane → control plane, consumer end.
pub type EventReceiver = Receiver<Event>;

impl<M: Message> Sender<M> {
    fn new(ring: Ring) -> Sender<M> {
        let cached_head = ring.head().load(Ordering::Acquire);
        Sender {
            ring,
            cached_head,
            _m: PhantomData,
        }
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    /// Copies `message` into the next slot and publishes it, or returns [`Full`].
    pub fn try_push(&mut self, message: &[u8; MESSAGE_BYTES]) -> Result<(), Full> {
        let ring = &self.ring;
        // Only this producer stores the tail.
        let tail = ring.tail().load(Ordering::Relaxed);
        if tail.wrapping_sub(self.cached_head) >= ring.capacity() {
            // Acquire: the consumer's copy out of the slot we would reuse is complete.
            self.cached_head = ring.head().load(Ordering::Acquire);
            if tail.wrapping_sub(self.cached_head) >= ring.capacity() {
                return Err(Full);
            }
        }
        ring.map.store(ring.slot(tail), message);
        // Release: the slot's contents are visible before the new tail.
        ring.tail().store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Encodes and pushes a typed message.
    pub fn send(&mut self, message: &M) -> Result<(), Full> {
        self.try_push(&message.encode())
    }
}

impl<M: Message> Receiver<M> {
    fn new(ring: Ring) -> Receiver<M> {
        let cached_tail = ring.tail().load(Ordering::Acquire);
        Receiver {
            ring,
            cached_tail,
            _m: PhantomData,
        }
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    /// Copies the oldest message out and frees its slot, or `None` if the ring is empty.
    pub fn try_pop(&mut self) -> Option<[u8; MESSAGE_BYTES]> {
        let ring = &self.ring;
        // Only this consumer stores the head.
        let head = ring.head().load(Ordering::Relaxed);
        if head == self.cached_tail {
            // Acquire: the producer's copy into every slot below the tail is visible.
            self.cached_tail = ring.tail().load(Ordering::Acquire);
            if head == self.cached_tail {
                return None;
            }
        }
        let mut message = [0u8; MESSAGE_BYTES];
        ring.map.load(ring.slot(head), &mut message);
        // Release: the copy out happens before the producer (acquiring the head) reuses the slot.
        ring.head().store(head.wrapping_add(1), Ordering::Release);
        Some(message)
    }

    /// Pops and decodes the oldest message: `None` if the ring is empty, `Some(Err(_))` if the
    /// slot held something undecodable (the slot is consumed either way).
    pub fn recv(&mut self) -> Option<Result<M, ChannelError>> {
        self.try_pop().map(|m| M::decode(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rapax-channel-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("node.channel")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn numbered(i: u64) -> [u8; MESSAGE_BYTES] {
        let mut m = [0u8; MESSAGE_BYTES];
        for (k, chunk) in m.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&(i ^ ((k as u64) << 56)).to_le_bytes());
        }
        m
    }

    /// The message number, checking that every word of the slot agrees (no torn slot).
    fn number_of(m: &[u8; MESSAGE_BYTES]) -> u64 {
        let i = get_u64(m, 0);
        assert_eq!(*m, numbered(i), "slot torn or corrupted");
        i
    }

    #[test]
    fn pops_in_fifo_order_and_is_full_at_capacity() {
        let d = TempDir::new();
        let ch = Channel::create(&d.file(), 2, 8).unwrap();
        let mut tx = ch.command_sender().unwrap();
        let mut rx = ch.command_receiver().unwrap();
        assert_eq!(rx.try_pop(), None);
        for i in 0..8 {
            tx.try_push(&numbered(i)).unwrap();
        }
        assert_eq!(tx.try_push(&numbered(8)), Err(Full));
        assert_eq!(number_of(&rx.try_pop().unwrap()), 0);
        // One slot freed: exactly one more fits.
        tx.try_push(&numbered(8)).unwrap();
        assert_eq!(tx.try_push(&numbered(9)), Err(Full));
        for i in 1..=8 {
            assert_eq!(number_of(&rx.try_pop().unwrap()), i);
        }
        assert_eq!(rx.try_pop(), None);
    }

    #[test]
    fn wraps_around_many_times() {
        let d = TempDir::new();
        let ch = Channel::create(&d.file(), 0, 4).unwrap();
        let mut tx = ch.event_sender().unwrap();
        let mut rx = ch.event_receiver().unwrap();
        let (mut sent, mut got) = (0u64, 0u64);
        for round in 0..20_000u64 {
            let burst = round % 5; // 0..=4, sometimes filling the ring exactly
            for _ in 0..burst {
                match tx.try_push(&numbered(sent)) {
                    Ok(()) => sent += 1,
                    Err(Full) => assert_eq!(sent - got, 4, "Full only when 4 are queued"),
                }
            }
            let take = (round * 7) % 4 + 1;
            for _ in 0..take {
                match rx.try_pop() {
                    Some(m) => {
                        assert_eq!(number_of(&m), got);
                        got += 1;
                    }
                    None => assert_eq!(sent, got, "empty only when nothing is queued"),
                }
            }
        }
        while let Some(m) = rx.try_pop() {
            assert_eq!(number_of(&m), got);
            got += 1;
        }
        assert_eq!(sent, got);
        assert!(
            sent > 10_000,
            "the ring wrapped many times ({sent} messages)"
        );
    }

    #[test]
    fn a_million_messages_cross_between_two_mappings_in_order() {
        const N: u64 = 1_000_000;
        let d = TempDir::new();
        let path = d.file();
        drop(Channel::create(&path, 1, 256).unwrap());
        // Set when the consumer stops (done or panicked), so a failing run cannot hang.
        let stopped = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let producer = {
            let path = path.clone();
            let stopped = Arc::clone(&stopped);
            std::thread::spawn(move || {
                let ch = Channel::open(&path).unwrap();
                let mut tx = ch.command_sender().unwrap();
                let mut i = 0;
                while i < N {
                    match tx.try_push(&numbered(i)) {
                        Ok(()) => i += 1,
                        Err(Full) if stopped.load(Ordering::SeqCst) => break,
                        Err(Full) => std::thread::yield_now(),
                    }
                }
                i
            })
        };
        let consumer = std::thread::spawn(move || {
            let _stop = SetOnDrop(stopped);
            let ch = Channel::open(&path).unwrap();
            let mut rx = ch.command_receiver().unwrap();
            let mut next = 0;
            while next < N {
                match rx.try_pop() {
                    Some(m) => {
                        assert_eq!(number_of(&m), next, "lost, duplicated or reordered");
                        next += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
            // Nothing beyond the N messages.
            assert_eq!(rx.try_pop(), None);
            next
        });
        let received = consumer.join();
        assert_eq!(producer.join().unwrap(), N, "the producer sent them all");
        assert_eq!(received.unwrap(), N);
    }

    #[test]
    fn typed_messages_cross_both_rings() {
        let d = TempDir::new();
        let control = Channel::create(&d.file(), 3, 16).unwrap();
        let data = Channel::open(&d.file()).unwrap();
        assert_eq!(data.node(), 3);
        assert_eq!(data.command_entries(), 16);
        let mut cmd_tx = control.command_sender().unwrap();
        let mut ev_rx = control.event_receiver().unwrap();
        let mut cmd_rx = data.command_receiver().unwrap();
        let mut ev_tx = data.event_sender().unwrap();
        let lead = Command::Lead {
            ballot: 42,
            acked_mask: 0b101,
        };
        cmd_tx.send(&lead).unwrap();
        cmd_tx.send(&Command::Shutdown).unwrap();
        assert_eq!(cmd_rx.recv().unwrap().unwrap(), lead);
        assert_eq!(cmd_rx.recv().unwrap().unwrap(), Command::Shutdown);
        assert!(cmd_rx.recv().is_none());
        ev_tx.send(&Event::Applied { index: 9 }).unwrap();
        assert_eq!(ev_rx.recv().unwrap().unwrap(), Event::Applied { index: 9 });
        assert!(ev_rx.recv().is_none());
        // A raw slot that is not an event is consumed and reported.
        ev_tx.try_push(&Command::Shutdown.encode()).unwrap();
        assert!(matches!(
            ev_rx.recv(),
            Some(Err(ChannelError::UnknownTag {
                tag: TAG_SHUTDOWN,
                ..
            }))
        ));
        assert!(ev_rx.recv().is_none());
    }

    fn all_commands() -> Vec<Command> {
        let mut v = vec![Command::Shutdown];
        for ballot in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            for acked_mask in [0, 1, 0xdead_beef, u32::MAX] {
                v.push(Command::Lead { ballot, acked_mask });
            }
            v.push(Command::StepDown { ballot });
            for leader in [0, 7, 255] {
                v.push(Command::View { ballot, leader });
            }
            // Every combination of the peer status flags.
            for flags in 0..32u8 {
                v.push(Command::PeerStatus {
                    peer: (flags * 3) % 7,
                    alive: flags & 1 != 0,
                    read_ok: flags & 2 != 0,
                    granted: ballot,
                    amnesiac: flags & 4 != 0,
                    behind: flags & 8 != 0,
                    leading: flags & 16 != 0,
                    epoch: u64::from(flags) << 40 | 7,
                });
            }
        }
        v
    }

    fn all_events() -> Vec<Event> {
        let mut v = Vec::new();
        for x in [0, 1, 0x0102_0304_0506_0708, u64::MAX] {
            for reason in [0, 3, 255] {
                v.push(Event::SteppedDown { ballot: x, reason });
            }
            v.push(Event::BecameLeader { ballot: x });
            v.push(Event::Applied { index: x });
        }
        v
    }

    #[test]
    fn messages_round_trip_and_are_little_endian() {
        for c in all_commands() {
            let m = c.encode();
            assert_eq!(Command::decode(&m).unwrap(), c);
            assert!(Event::decode(&m).is_err(), "{c:?} decoded as an event");
        }
        for e in all_events() {
            let m = e.encode();
            assert_eq!(Event::decode(&m).unwrap(), e);
            assert!(Command::decode(&m).is_err(), "{e:?} decoded as a command");
        }
        let m = Command::StepDown {
            ballot: 0x0102_0304_0506_0708,
        }
        .encode();
        assert_eq!(m[0], TAG_STEP_DOWN);
        assert_eq!(&m[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn unknown_tags_and_nonzero_padding_are_errors() {
        let zero = [0u8; MESSAGE_BYTES];
        assert!(matches!(
            Command::decode(&zero),
            Err(ChannelError::UnknownTag { tag: 0, .. })
        ));
        assert!(Event::decode(&zero).is_err());
        // Flipping any byte outside the fields of a valid message is an error.
        for c in all_commands() {
            let m = c.encode();
            for i in 0..MESSAGE_BYTES {
                let mut bad = m;
                bad[i] ^= 0x40;
                match Command::decode(&bad) {
                    Ok(other) => assert!(
                        i >= FIELDS_AT && other != c,
                        "{c:?}: flipping byte {i} went unnoticed"
                    ),
                    Err(ChannelError::NonzeroPadding { offset, .. }) => assert_eq!(offset, i),
                    Err(ChannelError::UnknownTag { .. }) => assert_eq!(i, 0),
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
        for e in all_events() {
            let m = e.encode();
            for i in 0..MESSAGE_BYTES {
                let mut bad = m;
                bad[i] ^= 0x40;
                if let Ok(other) = Event::decode(&bad) {
                    assert!(i >= FIELDS_AT && other != e, "{e:?}: byte {i}");
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        // splitmix64: deterministic, no dependency.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut accepted = 0;
        for round in 0..200_000 {
            let mut m = [0u8; MESSAGE_BYTES];
            for chunk in m.chunks_exact_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            if round % 2 == 0 {
                // Mostly-valid shapes: a real tag and only a few noisy bytes.
                let keep = (next() % MESSAGE_BYTES as u64) as usize;
                m[keep..].fill(0);
                m[0] = [1, 2, 3, 4, 0x81, 0x82, 0x83, 0, 0xff][(next() % 9) as usize];
            }
            if let Ok(c) = Command::decode(&m) {
                assert_eq!(c.encode(), m, "an accepted command re-encodes identically");
                accepted += 1;
            }
            if let Ok(e) = Event::decode(&m) {
                assert_eq!(e.encode(), m, "an accepted event re-encodes identically");
                accepted += 1;
            }
        }
        assert!(accepted > 0, "the generator produced some valid messages");
    }

    #[test]
    fn counters_are_shared_between_mappings() {
        let d = TempDir::new();
        let a = Channel::create(&d.file(), 0, 2).unwrap();
        let b = Channel::open(&d.file()).unwrap();
        for c in Counter::ALL {
            assert_eq!(b.counter(c), 0, "{} starts at zero", c.name());
        }
        a.add(Counter::Heartbeat, 1);
        a.add(Counter::Heartbeat, 2);
        a.set(Counter::Ballot, 0xabcd);
        b.add(Counter::MalformedFrames, 5);
        assert_eq!(b.counter(Counter::Heartbeat), 3);
        // A single writer's bump adds (wrapping) as add does.
        a.bump(Counter::ClientRequests, 2);
        a.bump(Counter::ClientRequests, 3);
        assert_eq!(b.counter(Counter::ClientRequests), 5);
        a.set(Counter::ClientRejected, u64::MAX);
        a.bump(Counter::ClientRejected, 2);
        assert_eq!(b.counter(Counter::ClientRejected), 1);
        assert_eq!(b.counter(Counter::Ballot), 0xabcd);
        assert_eq!(a.counter(Counter::MalformedFrames), 5);
        assert_eq!(a.counter(Counter::Applied), 0, "counters do not alias");
        // A fresh mapping sees them too, and counters do not overlap the rings.
        let c = Channel::open(&d.file()).unwrap();
        let mut tx = c.command_sender().unwrap();
        tx.try_push(&[0xff; MESSAGE_BYTES]).unwrap();
        assert_eq!(c.counter(Counter::Heartbeat), 3);
        assert_eq!(c.counter(Counter::MalformedFrames), 5);
        // Counter names are distinct.
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }

    #[test]
    fn the_file_is_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let d = TempDir::new();
        let _ch = Channel::create(&d.file(), 0, 8).unwrap();
        let mode = std::fs::metadata(d.file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fn write_word(path: &Path, at: u64, v: u64) {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&v.to_le_bytes(), at).unwrap();
    }

    #[test]
    fn a_bad_magic_or_version_is_refused() {
        let d = TempDir::new();
        drop(Channel::create(&d.file(), 0, 8).unwrap());
        write_word(&d.file(), HDR_VERSION as u64, 99);
        let e = Channel::open(&d.file()).err().unwrap();
        assert!(
            matches!(e, ChannelError::BadVersion { found: 99, .. }),
            "{e}"
        );
        write_word(&d.file(), HDR_MAGIC as u64, 0x1234);
        let e = Channel::open(&d.file()).err().unwrap();
        assert!(
            matches!(e, ChannelError::BadMagic { found: 0x1234, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("node.channel"),
            "the path is named: {e}"
        );
    }

    #[test]
    fn a_bad_ring_size_in_the_header_is_refused() {
        let d = TempDir::new();
        drop(Channel::create(&d.file(), 0, 8).unwrap());
        write_word(&d.file(), HDR_EVENT_ENTRIES as u64, 12);
        assert!(matches!(
            Channel::open(&d.file()),
            Err(ChannelError::BadHeader { .. })
        ));
        // A valid but different size no longer matches the file length.
        write_word(&d.file(), HDR_EVENT_ENTRIES as u64, 1024);
        assert!(matches!(
            Channel::open(&d.file()),
            Err(ChannelError::BadSize { .. })
        ));
    }

    #[test]
    fn a_truncated_or_missing_file_is_refused() {
        let d = TempDir::new();
        let len = Channel::create(&d.file(), 0, 64).unwrap().layout.file_len();
        let f = OpenOptions::new().write(true).open(d.file()).unwrap();
        f.set_len(len - PAGE as u64).unwrap();
        let e = Channel::open(&d.file()).err().unwrap();
        assert!(matches!(e, ChannelError::BadSize { .. }), "{e}");
        for short in [100, 0] {
            f.set_len(short).unwrap();
            let e = Channel::open(&d.file()).err().unwrap();
            assert!(
                matches!(e, ChannelError::BadSize { found, .. } if found == short),
                "{e}"
            );
        }
        let e = Channel::open(&d.0.join("missing")).err().unwrap();
        assert!(matches!(e, ChannelError::Io { .. }), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn create_validates_and_replaces() {
        let d = TempDir::new();
        for entries in [0, 3, 100, MAX_RING_ENTRIES * 2] {
            assert!(matches!(
                Channel::create(&d.file(), 0, entries),
                Err(ChannelError::BadRingEntries { .. })
            ));
        }
        assert!(matches!(
            Channel::create(&d.file(), MAX_NODES as NodeId, 8),
            Err(ChannelError::BadNode { .. })
        ));
        let old = Channel::create(&d.file(), 1, 8).unwrap();
        old.set(Counter::Commit, 7);
        old.command_sender()
            .unwrap()
            .send(&Command::Shutdown)
            .unwrap();
        let new = Channel::create(&d.file(), 2, 16).unwrap();
        let reopened = Channel::open(&d.file()).unwrap();
        assert_eq!(reopened.node(), 2);
        assert_eq!(reopened.event_entries(), 16);
        assert_eq!(reopened.counter(Counter::Commit), 0);
        assert!(reopened.command_receiver().unwrap().try_pop().is_none());
        // The old mapping still works on the old (unlinked) file.
        assert_eq!(old.counter(Counter::Commit), 7);
        assert_eq!(new.counter(Counter::Commit), 0);
        let leftovers: Vec<_> = std::fs::read_dir(&d.0).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn each_endpoint_is_taken_once_per_channel() {
        let d = TempDir::new();
        let ch = Channel::create(&d.file(), 0, 8).unwrap();
        let _a = ch.command_sender().unwrap();
        let _b = ch.command_receiver().unwrap();
        let _c = ch.event_sender().unwrap();
        let _d = ch.event_receiver().unwrap();
        assert!(matches!(
            ch.command_sender(),
            Err(ChannelError::EndpointTaken {
                endpoint: "command sender"
            })
        ));
        assert!(ch.command_receiver().is_err());
        assert!(ch.event_sender().is_err());
        let e = ch.event_receiver().err().unwrap();
        assert!(e.to_string().contains("event receiver"), "{e}");
        // Dropping an endpoint does not make it available again.
        drop(_a);
        assert!(ch.command_sender().is_err());
        // Another opened channel value hands out its own.
        let other = Channel::open(&d.file()).unwrap();
        assert!(other.command_sender().is_ok());
    }
}
