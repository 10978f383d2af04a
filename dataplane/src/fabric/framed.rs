//! The frame layer shared by the `udp` and `dpdk` fabrics: one-sided operations carried as the
//! wire frames of [`super::frame`] over any datagram link.
//!
//! A [`DatagramLink`] sends one frame to a peer's link address and receives frames with the
//! address they came from; that is all a backend supplies (a UDP socket in [`super::udp`], a DPDK
//! ethdev port in [`super::dpdk`]). [`FrameFabric`] does the rest, identically for both: posting
//! and splitting operations into pieces, sequence numbers, completions, time-outs, the send
//! window, the owner-side apply through [`NicMemory`], strangers and decode counters, and (when
//! enabled) retransmission. The behaviour is documented in [`super::udp`] ("Rights",
//! "Sequencing", "Addresses", "Send window"); this module adds loss recovery.
//!
//! # Loss recovery (optional)
//!
//! With [`FrameFabric::set_retransmit`] a lost frame no longer breaks the connection:
//!
//! - **Poster.** Every request frame keeps its encoded bytes until it is answered. A piece not
//!   answered within the retransmit time-out is sent again, with the same wire id and sequence
//!   number, and re-armed; pieces are resent in the order they were first sent (go-back-N), so
//!   the owner sees them in sequence order again. The operation's own time-out still bounds the
//!   whole: when it passes the operation completes with `Unreachable` and, for a log operation,
//!   the connection breaks exactly as without retransmission.
//! - **Owner.** A log request ahead of the expected number (one before it was lost) is dropped
//!   unanswered instead of breaking the connection: the poster resends it after the lost one. A
//!   request the owner has already answered (its completion was lost, or the request was resent
//!   before the answer arrived) is answered again from a small per-source cache of recent
//!   completions, keyed by the wire id, and never applied twice. A request behind the expected
//!   number that is not in the cache any more is dropped unanswered (it can only be a stale
//!   replay: the poster gave up on it). In-order requests are applied as before, so everything
//!   that breaks a connection without loss (refusal, revoke, time-out) still does.
//!
//! Completions may then be delivered out of posting order (a write whose completion was lost
//! completes when its resend is answered, after later writes have completed); the writes
//! themselves land in posting order.
//!
//! Both ends of a cluster must agree (the profile sets it for every node). A fault hook
//! ([`FrameFabric::set_send_loss`]) drops a fraction of the frames sent, requests and
//! completions alike, from a seeded generator, for tests and drills.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime};

use super::frame::{Frame, FrameBody, CLIENT_NODE, HEADER_BYTES, MAX_FRAME_BYTES};
use super::nic::{NicMemory, OpResult};
use super::{Completion, FabricError, LocalMemory, Op, Post, Region};
use crate::protocol::node::{ClientReply, ClientRequest};
use crate::protocol::wordhash::WordMap;
use crate::protocol::{NodeId, MAX_NODES};

/// Frames taken from the link in one poll at most, so a flood cannot starve time-outs.
const RECV_BUDGET: usize = 4096;

/// Completions remembered per source for answering resent requests (a power of two). It covers
/// a full send window of single-frame operations several times over.
const ANSWERED_PER_SOURCE: usize = 512;

/// What one receive from a link gave.
#[derive(Debug)]
pub enum LinkRecv<A> {
    /// A frame of this many bytes (in the caller's buffer) from this address.
    Frame(usize, A),
    /// Something was consumed that is not a frame for this layer (an ICMP error report, a frame
    /// of another EtherType or for another MAC); the link counts it.
    Skipped,
    /// Nothing is waiting.
    Empty,
}

/// A datagram link: one frame to one peer address, frames received with their source.
pub trait DatagramLink {
    /// How a peer is addressed on this link.
    type Addr: Copy + Eq + fmt::Debug;
    /// The largest frame (of [`super::frame`], without link headers) the link carries; at most
    /// [`MAX_FRAME_BYTES`].
    fn max_frame_bytes(&self) -> usize;
    /// Sends one frame to `to`; false if the link refused it (the frame is lost).
    fn send_to(&mut self, frame: &[u8], to: Self::Addr) -> bool;
    /// Takes one received frame into `buf` (of [`MAX_FRAME_BYTES`] + 1 bytes).
    fn recv_from(&mut self, buf: &mut [u8]) -> LinkRecv<Self::Addr>;
}

/// Counters of what one node's frame layer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames sent (requests and completions), resent ones and ones dropped by the fault hook
    /// included.
    pub sent: u64,
    /// Frames received, dropped ones included.
    pub received: u64,
    /// Frames that do not decode.
    pub decode_errors: u64,
    /// Frames from an address that is not the configured address of their source node.
    pub strangers: u64,
    /// Frames of another cluster or for another node.
    pub misaddressed: u64,
    /// Completions that match no outstanding request (unknown, duplicate, late, from the wrong
    /// node or of the wrong shape) and client frames, which the data mesh does not carry.
    pub ignored: u64,
    /// Operations that completed with `Unreachable` because their time-out passed.
    pub timeouts: u64,
    /// Operations failed without waiting because their data connection broke.
    pub flushed: u64,
    /// Frames the link refused to send (the frame is lost).
    pub send_errors: u64,
    /// Log operations that waited for the send window before going out.
    pub window_waits: u64,
    /// Client requests taken from configured clients.
    pub client_requests: u64,
    /// Request frames sent again after the retransmit time-out.
    pub retransmits: u64,
    /// Resent requests answered from the cache of completions, not applied again.
    pub answered_again: u64,
    /// Log requests dropped unanswered because they arrived out of sequence (loss recovery).
    pub out_of_sequence: u64,
    /// Frames dropped on send by the fault hook.
    pub fault_drops: u64,
}

/// A peer table that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerTableError {
    #[error("node id {0} out of range (a cluster has at most {MAX_NODES} nodes)")]
    NodeOutOfRange(NodeId),
    #[error("node {0} is configured twice")]
    DuplicatePeer(NodeId),
}

/// Who a node is and whom it talks to, on a link addressed by `A`.
#[derive(Clone, Debug)]
pub struct FrameConfig<A> {
    pub me: NodeId,
    pub cluster_id: u64,
    /// The address every peer sends from and receives on.
    pub peers: Vec<(NodeId, A)>,
    /// How long an operation may stay unanswered before it completes with `Unreachable`.
    pub timeout: Duration,
    /// The control-plane endpoints of the members: they may read control blocks.
    pub control_readers: Vec<(NodeId, A)>,
    /// The addresses clients may send requests from.
    pub clients: Vec<A>,
    /// Most log operations in flight to one target.
    pub window_ops: usize,
}

/// An operation waiting for its completion frames.
#[derive(Debug)]
struct Pending {
    wr_id: u64,
    target: NodeId,
    /// On the data connection (a log operation).
    data: bool,
    /// Pieces not answered yet.
    remaining: usize,
    /// The bytes read so far, for a read.
    read: Option<Vec<u8>>,
    /// The wire ids of its pieces.
    wires: Vec<u64>,
    /// When it fails with `Unreachable`: `timeout` after it was posted, moved to `timeout`
    /// after the last piece answered while pieces remain (a large read or write times out only
    /// when its target stops answering, not because it takes many frames).
    deadline: Instant,
}

/// One request frame on the wire: a piece of an operation.
#[derive(Debug)]
struct Piece {
    op: u64,
    /// Offset of the piece within the operation.
    at: usize,
    len: usize,
    read: bool,
    /// The encoded frame, kept for resending (loss recovery only).
    frame: Option<Vec<u8>>,
}

/// Recent completions of one source's requests, by wire id: the last
/// [`ANSWERED_PER_SOURCE`], found by hash (every request frame is looked up here under loss
/// recovery).
struct Answered {
    by_wire: WordMap<u64, Completion>,
    /// Wire ids in the order they were remembered, oldest first.
    order: VecDeque<u64>,
}

impl Answered {
    fn new() -> Answered {
        Answered {
            by_wire: WordMap::default(),
            order: VecDeque::with_capacity(ANSWERED_PER_SOURCE),
        }
    }

    fn find(&self, wire: u64) -> Option<&Completion> {
        self.by_wire.get(&wire)
    }

    fn remember(&mut self, wire: u64, completion: Completion) {
        if self.order.len() == ANSWERED_PER_SOURCE {
            if let Some(old) = self.order.pop_front() {
                self.by_wire.remove(&old);
            }
        }
        if self.by_wire.insert(wire, completion).is_none() {
            self.order.push_back(wire);
        }
    }
}

/// The fault hook: drops `ppm` frames in a million on send, drawn from a seeded xorshift.
#[derive(Clone, Copy, Debug)]
struct SendLoss {
    ppm: u32,
    state: u64,
}

impl SendLoss {
    fn drop_next(&mut self) -> bool {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        (x % 1_000_000) < u64::from(self.ppm)
    }
}

/// One node's end of a framed fabric over link `L`.
pub struct FrameFabric<L: DatagramLink> {
    me: NodeId,
    cluster_id: u64,
    timeout: Duration,
    link: L,
    /// Largest write or read carried by one request frame on this link.
    chunk_bytes: usize,
    peers: [Option<L::Addr>; MAX_NODES],
    control_readers: [Option<L::Addr>; MAX_NODES],
    clients: Vec<L::Addr>,
    client_requests: Vec<(ClientRequest, L::Addr)>,
    next_op: u64,
    /// Wire ids start at a random point, so a restarted node does not take an old incarnation's
    /// late completions for its own.
    next_wire: u64,
    ops: HashMap<u64, Pending>,
    pieces: HashMap<u64, Piece>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Bit `t`: our data connection to `t` is in error; log operations to `t` fail at once
    /// until one marked `reconnect`.
    broken: u32,
    /// `next_seq[t]`: the sequence number of our next log request frame to `t`.
    next_seq: [u64; MAX_NODES],
    /// Most log operations in flight to one target.
    window_ops: usize,
    /// `in_flight[t]`: log operations sent to `t` and not completed yet.
    in_flight: [usize; MAX_NODES],
    /// `waiting[t]`: log operations to `t` posted while its window was full, in posting order.
    waiting: Vec<VecDeque<Post>>,
    /// Loss recovery: the retransmit time-out, and when each unanswered piece is due again.
    retransmit: Option<Duration>,
    resend: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Loss recovery: recent completions per source.
    answered: Vec<Answered>,
    send_loss: Option<SendLoss>,
    /// Test hook: this many of the next frames are dropped as if lost on the way (counted as
    /// sent).
    #[cfg(test)]
    pub(crate) drop_sends: usize,
    ready: Vec<Completion>,
    stats: FrameStats,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

/// Builds a node-indexed table of addresses.
pub fn peer_table<A: Copy>(
    entries: &[(NodeId, A)],
    duplicates_allowed: bool,
) -> Result<[Option<A>; MAX_NODES], PeerTableError> {
    let mut table = [None; MAX_NODES];
    for &(node, addr) in entries {
        let slot = table
            .get_mut(node as usize)
            .ok_or(PeerTableError::NodeOutOfRange(node))?;
        if slot.replace(addr).is_some() && !duplicates_allowed {
            return Err(PeerTableError::DuplicatePeer(node));
        }
    }
    Ok(table)
}

impl<L: DatagramLink> FrameFabric<L> {
    /// Sets up the frame layer of `config.me` on `link`.
    pub fn with_link(link: L, config: FrameConfig<L::Addr>) -> Result<Self, PeerTableError> {
        if config.me as usize >= MAX_NODES {
            return Err(PeerTableError::NodeOutOfRange(config.me));
        }
        let peers = peer_table(&config.peers, false)?;
        let control_readers = peer_table(&config.control_readers, true)?;
        let frame_bytes = link.max_frame_bytes().min(MAX_FRAME_BYTES);
        assert!(
            frame_bytes > HEADER_BYTES,
            "a link must carry a frame header"
        );
        Ok(FrameFabric {
            me: config.me,
            cluster_id: config.cluster_id,
            timeout: config.timeout,
            link,
            chunk_bytes: frame_bytes - HEADER_BYTES,
            peers,
            control_readers,
            clients: config.clients,
            client_requests: Vec::new(),
            next_op: 0,
            next_wire: random_start(),
            ops: HashMap::new(),
            pieces: HashMap::new(),
            deadlines: BinaryHeap::new(),
            broken: 0,
            next_seq: [0; MAX_NODES],
            window_ops: config.window_ops.max(1),
            in_flight: [0; MAX_NODES],
            waiting: (0..MAX_NODES).map(|_| VecDeque::new()).collect(),
            retransmit: None,
            resend: BinaryHeap::new(),
            answered: Vec::new(),
            send_loss: None,
            #[cfg(test)]
            drop_sends: 0,
            ready: Vec::new(),
            stats: FrameStats::default(),
            rx: vec![0; MAX_FRAME_BYTES + 1],
            tx: Vec::with_capacity(MAX_FRAME_BYTES),
        })
    }

    /// Turns loss recovery on (module docs) with this retransmit time-out, or off with `None`.
    /// Every node of a cluster must use the same setting.
    pub fn set_retransmit(&mut self, after: Option<Duration>) {
        self.retransmit = after.filter(|d| !d.is_zero());
        if self.retransmit.is_some() && self.answered.is_empty() {
            self.answered = (0..MAX_NODES).map(|_| Answered::new()).collect();
        }
    }

    /// The fault hook: drops `ppm` of every million frames sent (0 turns it off), drawn from a
    /// generator seeded with `seed`.
    pub fn set_send_loss(&mut self, ppm: u32, seed: u64) {
        self.send_loss = (ppm > 0).then_some(SendLoss {
            ppm: ppm.min(1_000_000),
            state: seed | 1,
        });
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn stats(&self) -> &FrameStats {
        &self.stats
    }

    /// The link under this fabric.
    pub fn link(&self) -> &L {
        &self.link
    }

    /// The largest write or read one request frame carries on this link.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Operations posted whose completion [`FrameFabric::poll`] has not returned yet.
    pub fn outstanding(&self) -> usize {
        self.ops.len() + self.ready.len() + self.waiting.iter().map(VecDeque::len).sum::<usize>()
    }

    /// How long until the earliest time-out or resend is due (`None` when none is pending), and
    /// zero when completions are ready to be taken.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadline = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let resend = self.resend.peek().map(|Reverse((t, _))| *t);
        deadline
            .into_iter()
            .chain(resend)
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn peer(&self, node: NodeId) -> Option<L::Addr> {
        self.peers.get(node as usize).copied().flatten()
    }

    /// Sends `post` to its target; its completion comes out of a later [`FrameFabric::poll`]. A
    /// post to a node that is not configured, or on a data connection in error, fails at once.
    /// A log operation beyond the target's send window waits, in posting order, until earlier
    /// ones complete.
    pub fn post(&mut self, post: Post, now: Instant) {
        if self.peer(post.target).is_none() {
            self.fail_now(post.wr_id, FabricError::Unreachable);
            return;
        }
        let target = post.target;
        let bit = 1u32 << target;
        if post.op.region() == Region::Log {
            if post.reconnect {
                self.broken &= !bit;
            } else if self.broken & bit != 0 {
                self.stats.flushed += 1;
                self.fail_now(post.wr_id, FabricError::Unreachable);
                return;
            }
            let t = target as usize;
            if !self.waiting[t].is_empty() || self.in_flight[t] >= self.window_ops {
                self.stats.window_waits += 1;
                self.waiting[t].push_back(post);
                return;
            }
        }
        self.send_post(post, now);
    }

    /// Sends the waiting log operations of every target whose window has room.
    fn send_waiting(&mut self, now: Instant) {
        for t in 0..MAX_NODES {
            while self.in_flight[t] < self.window_ops {
                let Some(post) = self.waiting[t].pop_front() else {
                    break;
                };
                self.send_post(post, now);
            }
        }
    }

    /// Puts `post` on the wire now (its target is configured and, for a log operation, its
    /// connection is not known to be broken).
    fn send_post(&mut self, post: Post, now: Instant) {
        let Some(addr) = self.peer(post.target) else {
            self.fail_now(post.wr_id, FabricError::Unreachable);
            return;
        };
        let target = post.target;
        let data = post.op.region() == Region::Log;
        let (region, offset, total, read) = match &post.op {
            Op::Write {
                region,
                offset,
                bytes,
            } => (*region, *offset, bytes.len(), false),
            Op::Read {
                region,
                offset,
                len,
            } => (*region, *offset, *len, true),
        };
        if offset.checked_add(total).is_none() {
            // Past every region: the target would refuse it.
            self.fail_now(post.wr_id, FabricError::Permission);
            return;
        }
        let chunk = self.chunk_bytes;
        let count = total.div_ceil(chunk).max(1);
        let key = self.next_op;
        self.next_op += 1;
        if data {
            self.in_flight[target as usize] += 1;
        }
        self.ops.insert(
            key,
            Pending {
                wr_id: post.wr_id,
                target,
                data,
                remaining: count,
                read: read.then(|| vec![0; total]),
                wires: Vec::with_capacity(count),
                deadline: now + self.timeout,
            },
        );
        self.deadlines.push(Reverse((now + self.timeout, key)));
        for i in 0..count {
            let at = i * chunk;
            let len = chunk.min(total - at);
            let wire = self.next_wire;
            self.next_wire = self.next_wire.wrapping_add(1);
            let op = match &post.op {
                Op::Write { bytes, .. } => Op::Write {
                    region,
                    offset: offset + at,
                    bytes: bytes[at..at + len].to_vec(),
                },
                Op::Read { .. } => Op::Read {
                    region,
                    offset: offset + at,
                    len,
                },
            };
            let piece = Post {
                wr_id: wire,
                target,
                op,
                // Only the first piece re-establishes the connection: a later piece must not
                // revive it after an earlier one was refused.
                reconnect: post.reconnect && i == 0,
                ballot: post.ballot,
            };
            // Every log frame takes the next number, a reconnecting one included (it is the new
            // starting point); control frames are unsequenced.
            let seq = if data {
                let seq = &mut self.next_seq[target as usize];
                let this = *seq;
                *seq = seq.wrapping_add(1);
                this
            } else {
                0
            };
            let frame = Frame::from_post(self.me, self.cluster_id, seq, &piece)
                .expect("a piece fits a frame");
            self.ops.get_mut(&key).expect("pending").wires.push(wire);
            let sent = self.send(&frame, addr);
            let kept = match self.retransmit {
                Some(after) if sent => {
                    self.resend.push(Reverse((now + after, wire)));
                    Some(self.tx.clone())
                }
                _ => None,
            };
            self.pieces.insert(
                wire,
                Piece {
                    op: key,
                    at,
                    len,
                    read,
                    frame: kept,
                },
            );
            if !sent {
                self.finish(key, Err(FabricError::Unreachable));
                if data {
                    self.break_connection(target);
                }
                return;
            }
        }
    }

    /// Receives and handles every pending frame (requests are applied to `mem`, which must be
    /// this node's memory), resends the unanswered pieces that are due, fails the operations
    /// whose time-out has passed by `now`, and returns the completions of this node's
    /// operations.
    pub fn poll(&mut self, mem: &mut NicMemory, now: Instant) -> Vec<Completion> {
        assert_eq!(
            mem.id(),
            self.me,
            "a fabric applies requests to its own node's memory"
        );
        let mut rx = std::mem::take(&mut self.rx);
        for _ in 0..RECV_BUDGET {
            match self.link.recv_from(&mut rx) {
                LinkRecv::Frame(n, from) => {
                    self.stats.received += 1;
                    self.handle(&rx[..n], from, mem, now);
                }
                LinkRecv::Skipped => {}
                LinkRecv::Empty => break,
            }
        }
        self.rx = rx;
        self.resend_due(now);
        self.expire(now);
        self.send_waiting(now);
        std::mem::take(&mut self.ready)
    }

    fn handle(&mut self, bytes: &[u8], from: L::Addr, mem: &mut NicMemory, now: Instant) {
        let Ok(frame) = Frame::decode(bytes) else {
            self.stats.decode_errors += 1;
            return;
        };
        if !frame.is_addressed_to(self.cluster_id, self.me) {
            self.stats.misaddressed += 1;
            return;
        }
        let src = frame.src;
        if let FrameBody::ClientRequest { .. } = frame.body {
            if !self.clients.contains(&from) {
                self.stats.strangers += 1;
                return;
            }
            self.stats.client_requests += 1;
            let request = frame.body.into_client_request().expect("a client request");
            self.client_requests.push((request, from));
            return;
        }
        if self.peer(src) != Some(from) {
            let heartbeat_read = matches!(
                frame.body,
                FrameBody::ReadRequest {
                    region: Region::Control,
                    ..
                }
            );
            if !(heartbeat_read && self.control_readers.get(src as usize) == Some(&Some(from))) {
                self.stats.strangers += 1;
                return;
            }
        }
        match frame.body {
            FrameBody::WriteRequest { seq, .. } | FrameBody::ReadRequest { seq, .. } => {
                let post = frame.into_post().expect("a request");
                let completion = if self.retransmit.is_some() {
                    match self.recover(src, seq, &post, mem) {
                        Some(c) => c,
                        None => return,
                    }
                } else {
                    Completion {
                        wr_id: post.wr_id,
                        result: mem.apply(src, seq, &post),
                    }
                };
                // Reads are bounded at decoding, so the completion fits a frame.
                match Frame::completion(self.me, src, self.cluster_id, &completion) {
                    Ok(reply) => {
                        self.send(&reply, from);
                    }
                    Err(_) => self.stats.send_errors += 1,
                }
            }
            FrameBody::Completion(c) => self.complete_piece(src, c, now),
            FrameBody::ClientRequest { .. } | FrameBody::ClientReply { .. } => {
                self.stats.ignored += 1;
            }
        }
    }

    /// The owner's side of loss recovery (module docs): the completion to send for `post` from
    /// `src`, applying it only if it is new and in sequence; `None` drops it unanswered.
    fn recover(
        &mut self,
        src: NodeId,
        seq: u64,
        post: &Post,
        mem: &mut NicMemory,
    ) -> Option<Completion> {
        let answered = &mut self.answered[src as usize];
        if let Some(done) = answered.find(post.wr_id) {
            self.stats.answered_again += 1;
            return Some(done.clone());
        }
        if post.op.region() == Region::Log && !post.reconnect {
            let expected = mem.expected_seq(src);
            if seq != expected {
                // Ahead: one before it was lost and will be resent first. Behind and not
                // remembered: a stale replay. Neither may land.
                self.stats.out_of_sequence += 1;
                return None;
            }
        }
        let completion = Completion {
            wr_id: post.wr_id,
            result: mem.apply(src, seq, post),
        };
        answered.remember(post.wr_id, completion.clone());
        Some(completion)
    }

    /// Takes the client requests received by [`FrameFabric::poll`], each with the address to
    /// answer.
    pub fn take_client_requests(&mut self) -> std::vec::Drain<'_, (ClientRequest, L::Addr)> {
        self.client_requests.drain(..)
    }

    /// Sends `reply` to the client at `to`.
    pub fn reply_client(&mut self, reply: &ClientReply, to: L::Addr) -> bool {
        match Frame::client_reply(self.me, CLIENT_NODE, self.cluster_id, reply) {
            Ok(frame) => self.send(&frame, to),
            Err(_) => {
                self.stats.send_errors += 1;
                false
            }
        }
    }

    /// Encodes `frame` into `self.tx` and sends it to `addr`; false (and counted) if the link
    /// refused it.
    fn send(&mut self, frame: &Frame, addr: L::Addr) -> bool {
        self.tx.clear();
        if frame.encode(&mut self.tx).is_err() {
            self.stats.send_errors += 1;
            return false;
        }
        self.transmit(addr)
    }

    /// Sends the encoded frame in `self.tx` to `addr`, through the fault hooks.
    fn transmit(&mut self, addr: L::Addr) -> bool {
        #[cfg(test)]
        if self.drop_sends > 0 {
            self.drop_sends -= 1;
            self.stats.sent += 1;
            return true;
        }
        if let Some(loss) = self.send_loss.as_mut() {
            if loss.drop_next() {
                self.stats.fault_drops += 1;
                self.stats.sent += 1;
                return true;
            }
        }
        if self.link.send_to(&self.tx, addr) {
            self.stats.sent += 1;
            true
        } else {
            self.stats.send_errors += 1;
            false
        }
    }

    /// Resends the unanswered pieces whose retransmit time-out has passed, in first-sent order.
    fn resend_due(&mut self, now: Instant) {
        let Some(after) = self.retransmit else {
            return;
        };
        while let Some(&Reverse((due, wire))) = self.resend.peek() {
            if due > now {
                break;
            }
            self.resend.pop();
            let Some(piece) = self.pieces.get_mut(&wire) else {
                continue; // answered or failed meanwhile
            };
            let Some(frame) = piece.frame.take() else {
                continue;
            };
            let target = self.ops.get(&piece.op).map(|op| op.target);
            let Some(addr) = target.and_then(|t| self.peer(t)) else {
                continue;
            };
            let mut tx = std::mem::replace(&mut self.tx, frame);
            self.stats.retransmits += 1;
            // A refused resend is a loss like any other: the next round or the time-out
            // handles it.
            self.transmit(addr);
            std::mem::swap(&mut self.tx, &mut tx);
            if let Some(piece) = self.pieces.get_mut(&wire) {
                piece.frame = Some(tx);
                self.resend.push(Reverse((now + after, wire)));
            }
        }
    }

    fn complete_piece(&mut self, src: NodeId, c: Completion, now: Instant) {
        let Some((key, at, len, read)) = self
            .pieces
            .get(&c.wr_id)
            .map(|p| (p.op, p.at, p.len, p.read))
        else {
            self.stats.ignored += 1;
            return;
        };
        let op = self
            .ops
            .get_mut(&key)
            .expect("a piece belongs to a pending op");
        let answers = op.target == src
            && match &c.result {
                Ok(None) => !read,
                Ok(Some(bytes)) => read && bytes.len() == len,
                Err(_) => true,
            };
        if !answers {
            // From the wrong node, or not the shape of this piece's answer: left to time out.
            self.stats.ignored += 1;
            return;
        }
        match c.result {
            Err(e) => self.finish(key, Err(e)),
            Ok(data) => {
                if let (Some(bytes), Some(buf)) = (data, op.read.as_mut()) {
                    buf[at..at + len].copy_from_slice(&bytes);
                }
                op.remaining -= 1;
                let done = op.remaining == 0;
                if !done {
                    op.deadline = now + self.timeout;
                    self.deadlines.push(Reverse((op.deadline, key)));
                }
                self.pieces.remove(&c.wr_id);
                if done {
                    let result = Ok(self.ops.get_mut(&key).and_then(|op| op.read.take()));
                    self.finish(key, result);
                }
            }
        }
    }

    /// Completes operation `key` with `result` and forgets its pieces.
    fn finish(&mut self, key: u64, result: OpResult) {
        if let Some(op) = self.ops.remove(&key) {
            for w in &op.wires {
                self.pieces.remove(w);
            }
            if op.data {
                self.in_flight[op.target as usize] -= 1;
            }
            self.ready.push(Completion {
                wr_id: op.wr_id,
                result,
            });
        }
    }

    fn fail_now(&mut self, wr_id: u64, e: FabricError) {
        self.ready.push(Completion {
            wr_id,
            result: Err(e),
        });
    }

    /// Our data connection to `target` is in error: flush its outstanding log operations.
    fn break_connection(&mut self, target: NodeId) {
        self.broken |= 1 << target;
        let mut flushed: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.data && op.target == target)
            .map(|(&k, _)| k)
            .collect();
        flushed.sort_unstable();
        for key in flushed {
            self.stats.flushed += 1;
            self.finish(key, Err(FabricError::Unreachable));
        }
        // Posted after the ones just flushed: they fail too, in posting order.
        while let Some(post) = self.waiting[target as usize].pop_front() {
            self.stats.flushed += 1;
            self.fail_now(post.wr_id, FabricError::Unreachable);
        }
    }

    /// Fails every operation whose time-out has passed by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, key))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let Some(op) = self.ops.get(&key) else {
                continue; // completed before its deadline
            };
            if op.deadline > now {
                continue; // answered since: a later deadline is queued
            }
            let (target, data) = (op.target, op.data);
            self.stats.timeouts += 1;
            self.finish(key, Err(FabricError::Unreachable));
            if data {
                self.break_connection(target);
            }
        }
    }
}

/// A random 64-bit starting point for wire ids (the std hasher's per-process keys, the clock
/// and the pid).
fn random_start() -> u64 {
    let mut h = RandomState::new().build_hasher();
    if let Ok(t) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.write_u32(std::process::id());
    h.finish()
}

/// The fabric contract's harness ([`super::contract::ContractHarness`]) over frame fabrics of
/// any link: the nodes are polled in turn by the caller's thread, and an isolated node stops
/// polling, so requests to it are never answered. The udp and dpdk contract suites both run on
/// it.
pub struct FrameHarness<L: DatagramLink> {
    nodes: Vec<FrameFabric<L>>,
    mems: Vec<NicMemory>,
    isolated: Vec<bool>,
    geometry: crate::protocol::layout::LogGeometry,
    timeout: Duration,
    /// Slept after a pass in which no frame arrived and nothing completed.
    idle: Duration,
}

impl<L: DatagramLink> FrameHarness<L> {
    /// `nodes[i]` is node `i`'s fabric and `mems[i]` its memory, of `geometry`; `timeout` is
    /// the fabrics' operation time-out (a drain gives up after four of them).
    pub fn new(
        nodes: Vec<FrameFabric<L>>,
        mems: Vec<NicMemory>,
        geometry: crate::protocol::layout::LogGeometry,
        timeout: Duration,
        idle: Duration,
    ) -> FrameHarness<L> {
        assert_eq!(nodes.len(), mems.len(), "a memory per node");
        let isolated = vec![false; nodes.len()];
        FrameHarness {
            nodes,
            mems,
            isolated,
            geometry,
            timeout,
            idle,
        }
    }

    fn received(&self) -> u64 {
        self.nodes.iter().map(|n| n.stats().received).sum()
    }

    /// Operations posted by the nodes that still poll and not completed yet.
    pub fn outstanding(&self) -> usize {
        self.nodes
            .iter()
            .zip(&self.isolated)
            .filter(|(_, iso)| !**iso)
            .map(|(n, _)| n.outstanding())
            .sum()
    }
}

impl<L: DatagramLink> super::contract::ContractHarness for FrameHarness<L> {
    fn geometry(&self) -> crate::protocol::layout::LogGeometry {
        self.geometry
    }

    fn post(&mut self, src: NodeId, post: Post) {
        self.nodes[src as usize].post(post, Instant::now());
    }

    fn step(&mut self) -> Vec<(NodeId, Completion)> {
        let before = self.received();
        let mut done = Vec::new();
        for (i, (node, mem)) in self.nodes.iter_mut().zip(&mut self.mems).enumerate() {
            if !self.isolated[i] {
                let completions = node.poll(mem, Instant::now());
                done.extend(completions.into_iter().map(|c| (i as NodeId, c)));
            }
        }
        if done.is_empty() && self.received() == before {
            std::thread::sleep(self.idle);
        }
        done
    }

    fn drain(&mut self) -> Vec<(NodeId, Completion)> {
        let give_up = Instant::now() + 4 * self.timeout;
        let mut done = Vec::new();
        loop {
            done.extend(self.step());
            if self.outstanding() == 0 || Instant::now() > give_up {
                return done;
            }
        }
    }

    fn memory(&mut self, node: NodeId) -> &mut dyn LocalMemory {
        &mut self.mems[node as usize]
    }

    fn isolate(&mut self, node: NodeId) {
        self.isolated[node as usize] = true;
    }
}

#[cfg(test)]
mod tests {
    //! Loss recovery over the UDP link on 127.0.0.1: lost requests and lost completions are
    //! resent and answered, a resent request that was already applied is answered from the cache
    //! and not applied again, and frames behind a gap wait instead of breaking the connection.
    use super::*;
    use crate::fabric::udp::{UdpConfig, UdpFabric, UdpMemory};
    use crate::protocol::layout::LogGeometry;
    use crate::protocol::Ballot;
    use std::net::{SocketAddr, UdpSocket};

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };
    const B: Ballot = Ballot((1 << 8) | 1);

    fn pair(retransmit: Option<Duration>) -> (Vec<UdpFabric>, Vec<UdpMemory>) {
        let sockets: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let nodes = sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let config = UdpConfig {
                    me: i as NodeId,
                    cluster_id: 7,
                    peers: vec![((1 - i) as NodeId, addrs[1 - i])],
                    timeout: Duration::from_secs(2),
                    control_readers: Vec::new(),
                    clients: Vec::new(),
                    window_ops: 16,
                    socket_buffer_bytes: 0,
                };
                let mut f = UdpFabric::new(s, config).unwrap();
                f.set_retransmit(retransmit);
                f
            })
            .collect();
        let mems = (0..2).map(|i| UdpMemory::new(i, GEO.log_bytes())).collect();
        (nodes, mems)
    }

    fn write(k: u64) -> Post {
        let mut bytes = vec![0x5a; 64];
        bytes[..8].copy_from_slice(&(k + 1).to_le_bytes());
        Post {
            wr_id: k,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(k % GEO.capacity),
                bytes,
            },
            reconnect: k == 0,
            ballot: B,
        }
    }

    fn drive(nodes: &mut [UdpFabric], mems: &mut [UdpMemory], want: usize) -> Vec<Completion> {
        let give_up = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while out.len() < want {
            assert!(Instant::now() < give_up, "stuck at {} of {want}", out.len());
            for (n, m) in nodes.iter_mut().zip(mems.iter_mut()) {
                out.extend(n.poll(m, Instant::now()));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        out
    }

    fn slot_number(mem: &UdpMemory, slot: u64) -> u64 {
        let at = GEO.slot_offset(slot);
        u64::from_le_bytes(mem.log()[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn a_lost_request_is_resent_and_later_ones_wait_for_it() {
        let (mut nodes, mut mems) = pair(Some(Duration::from_millis(10)));
        mems[0].grant(1, B);
        nodes[1].post(write(0), Instant::now());
        drive(&mut nodes, &mut mems, 1);
        // The next request is lost; the two after it arrive ahead of it and are held back.
        nodes[1].drop_sends = 1;
        for k in 1..4 {
            nodes[1].post(write(k), Instant::now());
        }
        let done = drive(&mut nodes, &mut mems, 3);
        assert!(done.iter().all(|c| c.result == Ok(None)), "{done:?}");
        let order: Vec<u64> = done.iter().map(|c| c.wr_id).collect();
        assert_eq!(order, vec![1, 2, 3]);
        for k in 0..4 {
            assert_eq!(slot_number(&mems[0], k), k + 1, "slot {k}");
        }
        assert!(nodes[1].stats().retransmits >= 3);
        assert!(nodes[0].stats().out_of_sequence >= 2);
        assert_eq!(nodes[1].stats().timeouts, 0);
    }

    #[test]
    fn a_resent_request_whose_answer_was_lost_is_not_applied_twice() {
        let (mut nodes, mut mems) = pair(Some(Duration::from_millis(10)));
        mems[0].grant(1, B);
        nodes[1].post(write(0), Instant::now());
        // The owner applies it, but its completion is lost.
        let give_up = Instant::now() + Duration::from_secs(2);
        while slot_number(&mems[0], 0) == 0 {
            assert!(Instant::now() < give_up);
            nodes[0].drop_sends = 1;
            nodes[0].poll(&mut mems[0], Instant::now());
        }
        nodes[0].drop_sends = 0;
        assert_eq!(nodes[0].stats().sent, 1, "the completion was dropped");
        // The owner's memory changes under it (a later write of the same slot, as by the owner):
        // a second apply of the resent write would undo it.
        mems[0].write_log_owner(GEO.slot_offset(0), &[0; 64]);
        let done = drive(&mut nodes, &mut mems, 1);
        assert_eq!(done[0].result, Ok(None));
        assert_eq!(
            slot_number(&mems[0], 0),
            0,
            "the resent write was applied again"
        );
        assert!(nodes[0].stats().answered_again >= 1);
        // The connection goes on in sequence.
        nodes[1].post(write(1), Instant::now());
        let done = drive(&mut nodes, &mut mems, 1);
        assert_eq!(done[0].result, Ok(None));
        assert_eq!(slot_number(&mems[0], 1), 2);
    }

    #[test]
    fn one_percent_loss_on_udp_completes_every_write_in_order() {
        let (mut nodes, mut mems) = pair(Some(Duration::from_millis(5)));
        for (i, n) in nodes.iter_mut().enumerate() {
            n.set_send_loss(10_000, 99 + i as u64);
        }
        mems[0].grant(1, B);
        const WRITES: u64 = 300;
        for k in 0..WRITES {
            nodes[1].post(write(k), Instant::now());
        }
        let done = drive(&mut nodes, &mut mems, WRITES as usize);
        assert!(done.iter().all(|c| c.result == Ok(None)));
        // Every write completes once; a completion answered from the cache after a lost one may
        // come after later writes' (the writes themselves land in order: checked below).
        let mut ids: Vec<u64> = done.iter().map(|c| c.wr_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..WRITES).collect::<Vec<_>>());
        for s in 0..GEO.capacity {
            let last = (0..WRITES).rev().find(|k| k % GEO.capacity == s).unwrap();
            assert_eq!(slot_number(&mems[0], s), last + 1, "slot {s}");
        }
        let drops = nodes[0].stats().fault_drops + nodes[1].stats().fault_drops;
        assert!(drops > 0, "loss was injected");
    }

    #[test]
    fn the_fault_hook_drops_about_its_share() {
        let mut loss = SendLoss {
            ppm: 100_000,
            state: 12345,
        };
        let dropped = (0..100_000).filter(|_| loss.drop_next()).count();
        assert!((9_000..11_000).contains(&dropped), "{dropped}");
    }
}
