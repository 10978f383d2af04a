//! The `udp` fabric: the wire frames of [`super::frame`] over kernel UDP sockets, the baseline
//! every other backend is measured against (DESIGN §2).
//!
//! The frame logic is [`super::framed`], shared with the `dpdk` fabric; this module is its UDP
//! link ([`UdpLink`]) and the rules it keeps. Each node owns one non-blocking [`UdpSocket`] and
//! its registered memory ([`UdpMemory`], plain
//! process memory). A one-sided operation is a request frame to the target's socket; the target's
//! data plane, when it polls, plays the NIC: it checks rights, applies the request to its memory
//! and sends back a completion frame. The poster matches completions to its outstanding work
//! requests by wire id.
//!
//! # Rights
//!
//! [`UdpMemory`] keeps exactly the rules of the `sim` fabric's memory: write permission on the log
//! is granted to a (peer, ballot) pair; control-block writes may only touch the poster's own
//! request and ack words (8 bytes); a failed log operation puts the peer's data connection in
//! error, and [`LocalMemory::revoke`] puts it in error "by revoke": later log operations on it fail
//! with [`FabricError::Unreachable`] (or [`FabricError::Permission`] after a revoke) until an
//! operation marked `reconnect` arrives (see "Sequencing" for what else breaks it). Requests are
//! applied only inside [`UdpFabric::poll`],
//! which holds the memory mutably, so no write can be half applied while the owner calls `revoke`:
//! revocation is complete when it returns (contract point 3).
//!
//! # What UDP does not give, and what this version does about it
//!
//! - **Loss.** By default there is no retransmission (loss recovery, off unless
//!   [`super::framed::FrameFabric::set_retransmit`] turns it on, is described in
//!   [`super::framed`]). A lost request or completion becomes a time-out: the operation completes with [`FabricError::Unreachable`] once `timeout` has passed
//!   since it was sent, or since its last answered piece for an operation of several frames
//!   (never before, never a hang: contract point 4), a completion arriving later is ignored, and a
//!   time-out of a log operation puts the poster's data connection to that target in error, as in
//!   the `sim`: every later log operation to it fails at once with `Unreachable` (and the other log
//!   operations outstanding to it are flushed with `Unreachable`) until one marked `reconnect`.
//!   The target learns about a lost request from the sequence numbers (below): nothing posted
//!   after it lands either.
//! - **Order, duplicates.** Datagrams may be reordered or duplicated on the way; the sequence
//!   numbers turn either into a broken connection, never into a write landing out of posting
//!   order or twice (contract point 2).
//!
//! # Sequencing
//!
//! The protocol relies on a follower's log being a prefix of what its leader posted: after any
//! failure on a data connection nothing later lands until a `reconnect`. So log-region requests
//! are numbered per (poster, target) pair, one number per frame (every piece of a split operation
//! takes its own):
//!
//! - The poster keeps, per target, the next number ([`UdpFabric`]'s `next_seq`, starting at 0 and
//!   never reused within one incarnation). A `reconnect` operation restarts the sequence: its first
//!   piece carries the `reconnect` flag and the number it carries is the new starting point (the
//!   poster simply goes on counting).
//! - The owner keeps, per source, the number it expects next ([`UdpMemory`]'s `expected_seq`,
//!   starting at 0). A `reconnect` frame clears the connection's error state (as before) and sets
//!   the expectation to its number + 1. Any other log request whose number is not the expected one
//!   (one was lost, or arrives late, or twice) is not applied: it puts the connection from its
//!   source in error, exactly like a refused write, and is answered with `Unreachable` (or
//!   `Permission` after a revoke). Every later log request from that source then fails the same
//!   way until a `reconnect`. An in-order request advances the expectation whether it succeeds or
//!   not.
//! - Control-region requests (request and ack words, heartbeat reads) travel on the control mesh:
//!   they carry number 0, are not checked and never break anything, as in the `sim`.
//!
//! Both ends fail closed across restarts: a restarted poster starts again at 0 and a restarted
//! owner expects 0, so the first log request after either restart is refused unless it is a
//! `reconnect`, and the poster reconnects after that failure as after any other. What the numbers
//! do not catch: a duplicate of a `reconnect` frame arriving late is taken as a fresh reconnect
//! (it is applied again and restarts the expectation at its own number, so the poster's next
//! request then breaks the connection); there is no per-incarnation identity to tell it apart.
//! - **Size.** One frame is at most [`MAX_FRAME_BYTES`]; a larger write or read is split into
//!   several request frames (in address order) and completes when all of them have; the first
//!   failing piece fails it. A lost piece can leave a write torn anywhere, not only as a prefix;
//!   the checksums of entries and commit records catch that (contract point 5).
//! - **Liveness of the owner.** Unlike shared or RDMA-registered memory, a node's memory is
//!   reachable only while its data plane polls: a stopped process is unreachable.
//!
//! # Addresses
//!
//! A frame is acted upon only if it decodes, is addressed to this node in this cluster
//! ([`Frame::is_addressed_to`]) and comes from the configured address of the node it names as its
//! source; everything else is dropped and counted ([`UdpStats`]). A node bound to a wildcard
//! address sends from the address the kernel picks, so configure the address peers see.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::frame::MAX_FRAME_BYTES;
use super::framed::{DatagramLink, FrameConfig, FrameFabric, FrameStats, LinkRecv, PeerTableError};
use crate::protocol::{NodeId, MAX_NODES};

#[cfg(test)]
use super::frame::{Frame, FrameBody, MAX_PAYLOAD_BYTES};
#[cfg(test)]
use super::nic::OpResult;
#[cfg(test)]
use super::{Completion, FabricError, LocalMemory, Op, Post, Region};

use super::nic::NicMemory;

/// One node's registered memory and the NIC state around it, in process memory (see
/// [`NicMemory`]: rights per (node, ballot) connection, connection errors, and the sequence
/// numbers of log operations).
pub type UdpMemory = NicMemory;

/// Who a node is and whom it talks to.
#[derive(Clone, Debug)]
pub struct UdpConfig {
    pub me: NodeId,
    pub cluster_id: u64,
    /// The address every peer sends from and receives on.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// How long an operation may stay unanswered before it completes with
    /// [`super::FabricError::Unreachable`].
    pub timeout: Duration,
    /// The control-plane endpoints of the members: they may read control blocks (heartbeat
    /// reads), nothing else.
    pub control_readers: Vec<(NodeId, SocketAddr)>,
    /// The addresses clients may send requests from; client frames from anywhere else are
    /// strangers.
    pub clients: Vec<SocketAddr>,
    /// Most log operations in flight to one target; later ones wait in posting order (module
    /// docs, "Send window").
    pub window_ops: usize,
    /// Requested kernel send and receive buffer of the socket, bytes; 0 leaves the kernel's
    /// default.
    pub socket_buffer_bytes: usize,
}

/// Counters of what one node's fabric did (datagrams are frames).
pub type UdpStats = FrameStats;

/// Why a [`UdpFabric`] cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("udp socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("node id {0} out of range (a cluster has at most {MAX_NODES} nodes)")]
    NodeOutOfRange(NodeId),
    #[error("node {0} is configured twice")]
    DuplicatePeer(NodeId),
}

impl From<PeerTableError> for UdpError {
    fn from(e: PeerTableError) -> UdpError {
        match e {
            PeerTableError::NodeOutOfRange(n) => UdpError::NodeOutOfRange(n),
            PeerTableError::DuplicatePeer(n) => UdpError::DuplicatePeer(n),
        }
    }
}

/// A non-blocking UDP socket as a datagram link: one datagram per frame.
pub struct UdpLink {
    socket: UdpSocket,
}

impl DatagramLink for UdpLink {
    type Addr = SocketAddr;

    fn max_frame_bytes(&self) -> usize {
        MAX_FRAME_BYTES
    }

    fn send_to(&mut self, frame: &[u8], to: SocketAddr) -> bool {
        matches!(self.socket.send_to(frame, to), Ok(n) if n == frame.len())
    }

    fn recv_from(&mut self, buf: &mut [u8]) -> LinkRecv<SocketAddr> {
        match self.socket.recv_from(buf) {
            Ok((n, from)) => LinkRecv::Frame(n, from),
            Err(e) if e.kind() == ErrorKind::WouldBlock => LinkRecv::Empty,
            // An ICMP error for an earlier send, reported here: nothing to receive.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted
                        | ErrorKind::ConnectionRefused
                        | ErrorKind::ConnectionReset
                ) =>
            {
                LinkRecv::Skipped
            }
            Err(_) => LinkRecv::Empty,
        }
    }
}

/// How long [`bind_port`] retries an address in use.
pub const BIND_RETRY: Duration = Duration::from_secs(3);

/// Binds a daemon's configured port, retrying for [`BIND_RETRY`] while it is in use.
///
/// A daemon restarted right after its predecessor was killed can find the port still held: a
/// killed process closes its sockets only when its last thread has gone, after its main thread
/// already shows as exited. Another owner keeps the port past the retries and the error says
/// so.
pub fn bind_port(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let give_up = Instant::now() + BIND_RETRY;
    loop {
        match UdpSocket::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{addr} is in use (still after {BIND_RETRY:?}): {e}"),
                ));
            }
            other => return other,
        }
    }
}

/// One node's end of the `udp` fabric: the shared frame layer over a [`UdpLink`].
pub type UdpFabric = FrameFabric<UdpLink>;

impl FrameFabric<UdpLink> {
    /// Binds `addr` (see [`bind_port`]) and sets up the fabric of `config.me` on it.
    pub fn bind(addr: SocketAddr, config: UdpConfig) -> Result<UdpFabric, UdpError> {
        UdpFabric::new(bind_port(addr)?, config)
    }

    /// Sets up the fabric of `config.me` on a bound socket (made non-blocking).
    pub fn new(socket: UdpSocket, config: UdpConfig) -> Result<UdpFabric, UdpError> {
        if config.me as usize >= MAX_NODES {
            return Err(UdpError::NodeOutOfRange(config.me));
        }
        socket.set_nonblocking(true)?;
        if config.socket_buffer_bytes > 0 {
            set_buffers(&socket, config.socket_buffer_bytes);
        }
        let frame = FrameConfig {
            me: config.me,
            cluster_id: config.cluster_id,
            peers: config.peers,
            timeout: config.timeout,
            control_readers: config.control_readers,
            clients: config.clients,
            window_ops: config.window_ops,
        };
        Ok(FrameFabric::with_link(UdpLink { socket }, frame)?)
    }

    /// The address this node's socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.link().socket.local_addr()
    }

    /// Blocks until a datagram is waiting on the socket, `d` has passed, or the earliest
    /// time-out of an outstanding operation is due, whichever comes first. The backoff park of
    /// an agent that drives this fabric.
    pub fn wait_readable(&self, d: Duration, now: Instant) {
        use nix::poll::{ppoll, PollFd, PollFlags};
        use nix::sys::time::TimeSpec;
        use std::os::fd::AsFd;
        let wait = self.next_due(now).map_or(d, |due| d.min(due));
        if wait.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(self.link().socket.as_fd(), PollFlags::POLLIN)];
        // An interrupted or failed wait only ends the park early.
        let _ = ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None);
    }
}

/// Asks for `bytes` of kernel send and receive buffer: forced past `net.core.rmem_max` where
/// the process may (CAP_NET_ADMIN), else as much as the kernel allows. Best effort: a smaller
/// buffer only means a burst beyond it is lost and retried, which the send window makes rare.
fn set_buffers(socket: &UdpSocket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    }
    if setsockopt(socket, sockopt::SndBufForce, &bytes).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &bytes);
    }
}

#[cfg(test)]
mod tests {
    //! The shared contract suite over real sockets on 127.0.0.1, and the udp-specific points:
    //! strangers, garbage and other clusters are dropped; silence becomes a time-out, not before;
    //! large operations are split; the rights of [`UdpMemory`].
    use super::*;
    use crate::fabric::contract;
    use crate::fabric::framed::FrameHarness;
    use crate::protocol::layout::{cb_ack, cb_request, LogGeometry, CB_BYTES};
    use crate::protocol::Ballot;

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };
    const CLUSTER: u64 = 0x5eed_00c1;
    const B: Ballot = Ballot((1 << 8) | 1);

    fn local_socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
    }

    /// `n` nodes on fresh loopback ports, each knowing all the others.
    fn cluster(n: usize, log_bytes: usize, timeout: Duration) -> (Vec<UdpFabric>, Vec<UdpMemory>) {
        let sockets: Vec<UdpSocket> = (0..n).map(|_| local_socket()).collect();
        let addrs: Vec<(NodeId, SocketAddr)> = sockets
            .iter()
            .enumerate()
            .map(|(i, s)| (i as NodeId, s.local_addr().unwrap()))
            .collect();
        let fabrics = sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let config = UdpConfig {
                    me: i as NodeId,
                    cluster_id: CLUSTER,
                    peers: addrs
                        .iter()
                        .copied()
                        .filter(|(p, _)| *p != i as NodeId)
                        .collect(),
                    timeout,
                    control_readers: Vec::new(),
                    clients: Vec::new(),
                    window_ops: 64,
                    socket_buffer_bytes: 0,
                };
                UdpFabric::new(s, config).unwrap()
            })
            .collect();
        let mems = (0..n)
            .map(|i| UdpMemory::new(i as NodeId, log_bytes))
            .collect();
        (fabrics, mems)
    }

    /// Three nodes on loopback under the shared frame-fabric harness.
    fn harness(timeout: Duration) -> FrameHarness<UdpLink> {
        let (nodes, mems) = cluster(3, GEO.log_bytes(), timeout);
        FrameHarness::new(nodes, mems, GEO, timeout, Duration::from_micros(200))
    }

    #[test]
    fn the_contract_holds_on_udp() {
        contract::run_all(&mut || Box::new(harness(Duration::from_secs(1))));
    }

    /// Polls `f` until `done` holds of it (at most two seconds); returns the completions.
    fn poll_until(
        f: &mut UdpFabric,
        mem: &mut UdpMemory,
        done: impl Fn(&UdpFabric, &[Completion]) -> bool,
    ) -> Vec<Completion> {
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        loop {
            out.extend(f.poll(mem, Instant::now()));
            if done(f, &out) {
                return out;
            }
            assert!(
                Instant::now() < give_up,
                "timed out polling: {:?}",
                f.stats()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Receives one datagram on a raw socket (blocking up to two seconds) and decodes it.
    fn recv_frame(s: &UdpSocket) -> Frame {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0; 65536];
        let (n, _) = s.recv_from(&mut buf).expect("a datagram");
        Frame::decode(&buf[..n]).expect("a valid frame")
    }

    /// Nothing arrives on `s` within 100 ms.
    fn assert_silent(s: &UdpSocket) {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0; 65536];
        let r = s.recv_from(&mut buf);
        assert!(r.is_err(), "unexpected datagram: {r:?}");
    }

    fn send_frame(s: &UdpSocket, to: SocketAddr, f: &Frame) {
        s.send_to(&f.to_bytes().unwrap(), to).unwrap();
    }

    /// Node 0 as a `UdpFabric`, node 1 as a raw socket at its configured address.
    fn node_and_raw_peer(timeout: Duration) -> (UdpFabric, UdpMemory, UdpSocket, SocketAddr) {
        let raw = local_socket();
        let config = UdpConfig {
            me: 0,
            cluster_id: CLUSTER,
            peers: vec![(1, raw.local_addr().unwrap())],
            timeout,
            control_readers: Vec::new(),
            clients: Vec::new(),
            window_ops: 64,
            socket_buffer_bytes: 0,
        };
        let f = UdpFabric::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = f.local_addr().unwrap();
        (f, UdpMemory::new(0, GEO.log_bytes()), raw, addr)
    }

    fn control_write(wr_id: u64, offset: usize, value: u64) -> Post {
        Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Control,
                offset,
                bytes: value.to_le_bytes().to_vec(),
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        }
    }

    #[test]
    fn strangers_garbage_and_other_clusters_are_dropped() {
        let (mut f, mut mem, peer, addr) = node_and_raw_peer(Duration::from_secs(5));
        let stranger = local_socket();
        let request = Frame::from_post(1, CLUSTER, 0, &control_write(7, cb_request(1), 9)).unwrap();
        let snapshot = |m: &UdpMemory| (m.control().to_vec(), m.log().to_vec());
        let before = snapshot(&mem);

        // A valid frame naming node 1 as its source, from an address that is not node 1's.
        send_frame(&stranger, addr, &request);
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 1);
        assert!(done.is_empty());
        assert_eq!(f.stats().strangers, 1);
        assert_eq!(snapshot(&mem), before, "a stranger changed memory");
        assert_silent(&stranger);

        // Garbage from node 1's own address.
        peer.send_to(b"RPXF not a frame at all", addr).unwrap();
        peer.send_to(&[], addr).unwrap();
        poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 3);
        assert_eq!(f.stats().decode_errors, 2);

        // The right frame from the right address, but of another cluster, or for another node.
        let mut other_cluster = request.clone();
        other_cluster.cluster_id = CLUSTER + 1;
        send_frame(&peer, addr, &other_cluster);
        let mut other_node = request.clone();
        other_node.dst = 2;
        send_frame(&peer, addr, &other_node);
        poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 5);
        assert_eq!(f.stats().misaddressed, 2);
        assert_eq!(
            snapshot(&mem),
            before,
            "a misaddressed frame changed memory"
        );
        assert_silent(&peer);

        // The same request from node 1's address is applied and answered: the drops above were
        // not for want of a valid request.
        send_frame(&peer, addr, &request);
        poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 6);
        assert_eq!(mem.control_word(cb_request(1)), 9);
        let reply = recv_frame(&peer);
        assert_eq!((reply.src, reply.dst, reply.cluster_id), (0, 1, CLUSTER));
        assert_eq!(
            reply.body.into_completion(),
            Some(Completion {
                wr_id: 7,
                result: Ok(None)
            })
        );

        // A stranger's forged completion of an outstanding read is dropped; the real one is
        // delivered.
        f.post(
            Post {
                wr_id: 42,
                target: 1,
                op: Op::Read {
                    region: Region::Control,
                    offset: 0,
                    len: 8,
                },
                reconnect: false,
                ballot: Ballot::ZERO,
            },
            Instant::now(),
        );
        let req = recv_frame(&peer);
        let wire = req.body.wr_id().unwrap();
        let answer = |data: u8| Completion {
            wr_id: wire,
            result: Ok(Some(vec![data; 8])),
        };
        let forged = Frame::completion(1, 0, CLUSTER, &answer(0xEE)).unwrap();
        send_frame(&stranger, addr, &forged);
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 7);
        assert!(
            done.is_empty(),
            "a forged completion was delivered: {done:?}"
        );
        assert_eq!(f.stats().strangers, 2);
        // Answers of the wrong shape from the right node are ignored, not trusted.
        for wrong in [Ok(Some(vec![0x22; 7])), Ok(Some(vec![0x22; 9])), Ok(None)] {
            let c = Completion {
                wr_id: wire,
                result: wrong,
            };
            send_frame(&peer, addr, &Frame::completion(1, 0, CLUSTER, &c).unwrap());
        }
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 10);
        assert!(
            done.is_empty(),
            "a malformed completion was delivered: {done:?}"
        );
        assert_eq!(f.stats().ignored, 3);
        let real = Frame::completion(1, 0, CLUSTER, &answer(0x11)).unwrap();
        send_frame(&peer, addr, &real);
        let done = poll_until(&mut f, &mut mem, |_, d| !d.is_empty());
        assert_eq!(
            done,
            vec![Completion {
                wr_id: 42,
                result: Ok(Some(vec![0x11; 8]))
            }]
        );
        // A duplicate of it is ignored.
        send_frame(&peer, addr, &real);
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 12);
        assert!(done.is_empty());
        assert_eq!(f.stats().ignored, 4);
        assert_eq!(f.outstanding(), 0);
    }

    fn log_write(wr_id: u64, target: NodeId, reconnect: bool) -> Post {
        Post {
            wr_id,
            target,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(0),
                bytes: vec![3; 64],
            },
            reconnect,
            ballot: B,
        }
    }

    #[test]
    fn a_silent_node_times_out_after_the_time_out_not_before() {
        let timeout = Duration::from_millis(300);
        let (mut f, mut mem, peer, addr) = node_and_raw_peer(timeout);

        // On the caller's clock: nothing a tick before the deadline, Unreachable at it.
        let t0 = Instant::now();
        f.post(log_write(1, 1, false), t0);
        let req = recv_frame(&peer);
        assert!(f.poll(&mut mem, t0).is_empty());
        assert!(f
            .poll(&mut mem, t0 + timeout - Duration::from_millis(1))
            .is_empty());
        assert_eq!(f.outstanding(), 1);
        assert_eq!(
            f.poll(&mut mem, t0 + timeout),
            vec![Completion {
                wr_id: 1,
                result: Err(FabricError::Unreachable)
            }]
        );
        assert_eq!(f.stats().timeouts, 1);

        // A late completion is ignored.
        let late = Completion {
            wr_id: req.body.wr_id().unwrap(),
            result: Ok(None),
        };
        send_frame(
            &peer,
            addr,
            &Frame::completion(1, 0, CLUSTER, &late).unwrap(),
        );
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 1);
        assert!(done.is_empty(), "a late completion was delivered: {done:?}");
        assert_eq!(f.stats().ignored, 1);

        // The data connection is in error: a log operation fails at once without being sent; a
        // control operation still goes out; a reconnecting one is sent, flagged.
        let sent = f.stats().sent;
        f.post(log_write(2, 1, false), Instant::now());
        assert_eq!(
            f.poll(&mut mem, Instant::now()),
            vec![Completion {
                wr_id: 2,
                result: Err(FabricError::Unreachable)
            }]
        );
        assert_eq!(f.stats().sent, sent);
        let mut control = control_write(3, cb_ack(0), 1);
        control.target = 1;
        f.post(control, Instant::now());
        assert!(matches!(
            recv_frame(&peer).body,
            FrameBody::WriteRequest {
                region: Region::Control,
                ..
            }
        ));
        f.post(log_write(4, 1, true), Instant::now());
        assert!(matches!(
            recv_frame(&peer).body,
            FrameBody::WriteRequest {
                reconnect: true,
                region: Region::Log,
                ..
            }
        ));

        // On the real clock: a silent node's operation completes no earlier than the time-out.
        let (mut f, mut mem, _peer, _) = node_and_raw_peer(timeout);
        let start = Instant::now();
        f.post(log_write(5, 1, false), start);
        let done = poll_until(&mut f, &mut mem, |_, d| !d.is_empty());
        let waited = start.elapsed();
        assert_eq!(done[0].result, Err(FabricError::Unreachable));
        assert!(waited >= timeout, "completed after {waited:?}");
        assert!(waited < timeout + Duration::from_secs(1), "{waited:?}");
    }

    #[test]
    fn a_post_to_an_unknown_node_fails_at_once() {
        let (mut f, mut mem, peer, _) = node_and_raw_peer(Duration::from_secs(5));
        f.post(log_write(1, 5, false), Instant::now());
        f.post(log_write(2, 0, false), Instant::now());
        let mut done = f.poll(&mut mem, Instant::now());
        done.sort_by_key(|c| c.wr_id);
        assert_eq!(done.len(), 2);
        assert!(done
            .iter()
            .all(|c| c.result == Err(FabricError::Unreachable)));
        assert_eq!(f.stats().sent, 0);
        assert_silent(&peer);
    }

    #[test]
    fn large_operations_are_split_across_frames() {
        let log_bytes = 64 * 1024;
        let (mut nodes, mut mems) = cluster(2, log_bytes, Duration::from_secs(5));
        let b = Ballot::new(1, 1);
        mems[0].grant(1, b);
        let len = 3 * MAX_PAYLOAD_BYTES + 100;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let offset = 136;
        nodes[1].post(
            Post {
                wr_id: 1,
                target: 0,
                op: Op::Write {
                    region: Region::Log,
                    offset,
                    bytes: bytes.clone(),
                },
                reconnect: false,
                ballot: b,
            },
            Instant::now(),
        );
        nodes[1].post(
            Post {
                wr_id: 2,
                target: 0,
                op: Op::Read {
                    region: Region::Log,
                    offset,
                    len,
                },
                reconnect: false,
                ballot: b,
            },
            Instant::now(),
        );
        let mut done = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(2);
        while done.len() < 2 && Instant::now() < give_up {
            let (a, rest) = nodes.split_at_mut(1);
            let (m0, m1) = mems.split_at_mut(1);
            a[0].poll(&mut m0[0], Instant::now());
            done.extend(rest[0].poll(&mut m1[0], Instant::now()));
        }
        done.sort_by_key(|c| c.wr_id);
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(done[0].result, Ok(None));
        assert_eq!(&mems[0].log()[offset..offset + len], &bytes[..]);
        assert_eq!(done[1].result, Ok(Some(bytes)), "the read reassembles");
        assert_eq!(nodes[1].stats().sent, 8, "four frames each way");
        assert_eq!(nodes[0].stats().sent, 8);

        // A write past the end is refused whole.
        nodes[1].post(
            Post {
                wr_id: 3,
                target: 0,
                op: Op::Write {
                    region: Region::Log,
                    offset: log_bytes - 10,
                    bytes: vec![1; 20],
                },
                reconnect: false,
                ballot: b,
            },
            Instant::now(),
        );
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut done = Vec::new();
        while done.is_empty() && Instant::now() < give_up {
            let (a, rest) = nodes.split_at_mut(1);
            let (m0, m1) = mems.split_at_mut(1);
            a[0].poll(&mut m0[0], Instant::now());
            done.extend(rest[0].poll(&mut m1[0], Instant::now()));
        }
        assert_eq!(done[0].result, Err(FabricError::Permission));
        assert!(mems[0].log()[log_bytes - 10..].iter().all(|x| *x == 0));
    }

    #[test]
    fn a_completion_from_another_member_is_ignored() {
        let (one, two) = (local_socket(), local_socket());
        let config = UdpConfig {
            me: 0,
            cluster_id: CLUSTER,
            peers: vec![
                (1, one.local_addr().unwrap()),
                (2, two.local_addr().unwrap()),
            ],
            timeout: Duration::from_secs(5),
            control_readers: Vec::new(),
            clients: Vec::new(),
            window_ops: 64,
            socket_buffer_bytes: 0,
        };
        let mut f = UdpFabric::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = f.local_addr().unwrap();
        let mut mem = UdpMemory::new(0, GEO.log_bytes());
        f.post(log_write(9, 1, false), Instant::now());
        let wire = recv_frame(&one).body.wr_id().unwrap();
        let ok = Completion {
            wr_id: wire,
            result: Ok(None),
        };
        // Node 2, from its own address, answers node 1's request.
        send_frame(&two, addr, &Frame::completion(2, 0, CLUSTER, &ok).unwrap());
        let done = poll_until(&mut f, &mut mem, |f, _| f.stats().received >= 1);
        assert!(done.is_empty(), "{done:?}");
        assert_eq!((f.stats().ignored, f.stats().strangers), (1, 0));
        send_frame(&one, addr, &Frame::completion(1, 0, CLUSTER, &ok).unwrap());
        let done = poll_until(&mut f, &mut mem, |_, d| !d.is_empty());
        assert_eq!(
            done,
            vec![Completion {
                wr_id: 9,
                result: Ok(None)
            }]
        );
    }

    #[test]
    fn only_the_first_piece_of_a_split_write_reconnects() {
        let (mut f, _mem, peer, _) = node_and_raw_peer(Duration::from_secs(5));
        let len = 2 * MAX_PAYLOAD_BYTES + 1;
        let mut post = log_write(1, 1, true);
        post.op = Op::Write {
            region: Region::Log,
            offset: 128,
            bytes: vec![5; len],
        };
        f.post(post, Instant::now());
        let mut seen = Vec::new();
        for _ in 0..3 {
            match recv_frame(&peer).body {
                FrameBody::WriteRequest {
                    reconnect,
                    offset,
                    bytes,
                    ballot,
                    ..
                } => {
                    assert_eq!(ballot, B);
                    seen.push((reconnect, offset, bytes.len()));
                }
                other => panic!("not a write request: {other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (true, 128, MAX_PAYLOAD_BYTES),
                (false, 128 + MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES),
                (false, 128 + 2 * MAX_PAYLOAD_BYTES, 1),
            ]
        );
        assert_silent(&peer);
    }

    /// A log write of node 1 to node 0: 64 bytes of `byte` at slot `slot`.
    fn slot_write(wr_id: u64, slot: u64, byte: u8, reconnect: bool) -> Post {
        Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(slot),
                bytes: vec![byte; 64],
            },
            reconnect,
            ballot: B,
        }
    }

    fn slot(mem: &UdpMemory, slot: u64) -> &[u8] {
        let at = GEO.slot_offset(slot);
        &mem.log()[at..at + 64]
    }

    /// Sends the raw peer's request `frame` to node 0, lets node 0 poll it in and returns node
    /// 0's answer.
    fn exchange(
        f: &mut UdpFabric,
        mem: &mut UdpMemory,
        peer: &UdpSocket,
        addr: SocketAddr,
        frame: &Frame,
    ) -> OpResult {
        let want = f.stats().received + 1;
        send_frame(peer, addr, frame);
        poll_until(f, mem, |f, _| f.stats().received >= want);
        let reply = recv_frame(peer);
        let c = reply.body.into_completion().expect("a completion");
        assert_eq!(Some(c.wr_id), frame.body.wr_id());
        c.result
    }

    #[test]
    fn a_gap_in_the_log_sequence_refuses_everything_until_a_reconnect() {
        let (mut f, mut mem, peer, addr) = node_and_raw_peer(Duration::from_secs(5));
        mem.grant(1, B);
        let req = |seq, post: Post| Frame::from_post(1, CLUSTER, seq, &post).unwrap();
        let mut ask =
            |mem: &mut UdpMemory, frame: Frame| exchange(&mut f, mem, &peer, addr, &frame);
        assert_eq!(
            ask(&mut mem, req(0, slot_write(1, 0, 0x11, false))),
            Ok(None)
        );
        assert_eq!(slot(&mem, 0), &[0x11; 64]);
        // Frame 1 is lost: frame 2 is refused and does not land.
        assert_eq!(
            ask(&mut mem, req(2, slot_write(3, 2, 0x33, false))),
            Err(FabricError::Unreachable)
        );
        assert_eq!(slot(&mem, 2), &[0; 64], "a write behind a gap landed");
        // Everything later keeps failing, the lost frame arriving late and reads included.
        assert_eq!(
            ask(&mut mem, req(3, slot_write(4, 3, 0x44, false))),
            Err(FabricError::Unreachable)
        );
        assert_eq!(
            ask(&mut mem, req(1, slot_write(2, 1, 0x22, false))),
            Err(FabricError::Unreachable)
        );
        let read = |wr_id, slot| Post {
            wr_id,
            target: 0,
            op: Op::Read {
                region: Region::Log,
                offset: GEO.slot_offset(slot),
                len: 64,
            },
            reconnect: false,
            ballot: B,
        };
        assert_eq!(
            ask(&mut mem, req(4, read(5, 0))),
            Err(FabricError::Unreachable)
        );
        for s in 1..4 {
            assert_eq!(slot(&mem, s), &[0; 64], "slot {s}");
        }
        // The control mesh is unsequenced and unaffected.
        let mut control = control_write(6, cb_ack(1), 77);
        control.target = 0;
        assert_eq!(ask(&mut mem, req(0, control)), Ok(None));
        assert_eq!(mem.control_word(cb_ack(1)), 77);
        // A reconnect restarts the sequence at its own number; writes land again, in order.
        assert_eq!(
            ask(&mut mem, req(40, slot_write(7, 1, 0x55, true))),
            Ok(None)
        );
        assert_eq!(
            ask(&mut mem, req(41, slot_write(8, 2, 0x66, false))),
            Ok(None)
        );
        assert_eq!(ask(&mut mem, req(42, read(9, 2))), Ok(Some(vec![0x66; 64])));
        assert_eq!(slot(&mem, 0), &[0x11; 64]);
        assert_eq!(slot(&mem, 1), &[0x55; 64]);
        assert_eq!(slot(&mem, 2), &[0x66; 64]);
        assert_eq!(slot(&mem, 3), &[0; 64]);
        // Another source's sequence is its own: node 2 (no grant needed to read) starts at 0.
        assert_eq!(mem.apply(2, 0, &read(10, 0)), Ok(Some(vec![0x11; 64])));
        assert_eq!(mem.apply(2, 5, &read(11, 0)), Err(FabricError::Unreachable));
        assert_eq!(
            ask(&mut mem, req(43, slot_write(12, 3, 0x77, false))),
            Ok(None),
            "node 1's connection is untouched by node 2's gap"
        );
    }

    #[test]
    fn a_replayed_request_is_not_applied_twice() {
        let (mut f, mut mem, peer, addr) = node_and_raw_peer(Duration::from_secs(5));
        mem.grant(1, B);
        let req = |seq, post: Post| Frame::from_post(1, CLUSTER, seq, &post).unwrap();
        let old = req(0, slot_write(1, 0, 0x11, false));
        let new = req(1, slot_write(2, 0, 0x22, false));
        assert_eq!(exchange(&mut f, &mut mem, &peer, addr, &old), Ok(None));
        assert_eq!(exchange(&mut f, &mut mem, &peer, addr, &new), Ok(None));
        assert_eq!(slot(&mem, 0), &[0x22; 64]);
        // The older write, replayed, would roll the slot back: refused.
        assert_eq!(
            exchange(&mut f, &mut mem, &peer, addr, &old),
            Err(FabricError::Unreachable)
        );
        assert_eq!(slot(&mem, 0), &[0x22; 64], "a replayed write landed");
        // After a reconnect, a duplicate of the latest request is refused too.
        let again = req(9, slot_write(3, 1, 0x33, true));
        assert_eq!(exchange(&mut f, &mut mem, &peer, addr, &again), Ok(None));
        let next = req(10, slot_write(4, 2, 0x44, false));
        assert_eq!(exchange(&mut f, &mut mem, &peer, addr, &next), Ok(None));
        mem.write_log_owner(GEO.slot_offset(2), &[0; 64]);
        assert_eq!(
            exchange(&mut f, &mut mem, &peer, addr, &next),
            Err(FabricError::Unreachable)
        );
        assert_eq!(slot(&mem, 2), &[0; 64], "a duplicated write landed twice");
    }

    #[test]
    fn log_frames_are_numbered_per_target() {
        let (mut f, _mem, peer, _) = node_and_raw_peer(Duration::from_secs(5));
        let seq_of = |frame: Frame| match frame.body {
            FrameBody::WriteRequest {
                seq,
                reconnect,
                region,
                ..
            } => (seq, reconnect, region),
            other => panic!("not a write request: {other:?}"),
        };
        f.post(log_write(1, 1, false), Instant::now());
        assert_eq!(seq_of(recv_frame(&peer)), (0, false, Region::Log));
        // Control frames are unsequenced and take no number.
        let mut control = control_write(2, cb_ack(0), 1);
        control.target = 1;
        f.post(control, Instant::now());
        assert_eq!(seq_of(recv_frame(&peer)), (0, false, Region::Control));
        // Every piece of a split write takes its own number.
        let mut split = log_write(3, 1, false);
        split.op = Op::Write {
            region: Region::Log,
            offset: 0,
            bytes: vec![1; 2 * MAX_PAYLOAD_BYTES + 1],
        };
        f.post(split, Instant::now());
        for want in 1..4 {
            assert_eq!(seq_of(recv_frame(&peer)), (want, false, Region::Log));
        }
        // A reconnect goes on counting; its number is the target's new starting point.
        f.post(log_write(4, 1, true), Instant::now());
        assert_eq!(seq_of(recv_frame(&peer)), (4, true, Region::Log));
        f.post(log_write(5, 1, false), Instant::now());
        assert_eq!(seq_of(recv_frame(&peer)), (5, false, Region::Log));
        assert_silent(&peer);
    }

    /// Polls every node until `done` holds of the completions so far (at most three seconds).
    fn drive(
        nodes: &mut [UdpFabric],
        mems: &mut [UdpMemory],
        done: impl Fn(&[(NodeId, Completion)]) -> bool,
    ) -> Vec<(NodeId, Completion)> {
        let give_up = Instant::now() + Duration::from_secs(3);
        let mut out = Vec::new();
        while !done(&out) {
            assert!(Instant::now() < give_up, "timed out driving: {out:?}");
            for (i, (node, mem)) in nodes.iter_mut().zip(mems.iter_mut()).enumerate() {
                let completions = node.poll(mem, Instant::now());
                out.extend(completions.into_iter().map(|c| (i as NodeId, c)));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        out
    }

    fn result_of(done: &[(NodeId, Completion)], wr_id: u64) -> Option<&OpResult> {
        done.iter()
            .find(|(_, c)| c.wr_id == wr_id)
            .map(|(_, c)| &c.result)
    }

    /// Polls `node` at the fixed instant `at` until it has received `frames` frames in all
    /// (the datagrams are real; only the clock the fabric is given is fixed).
    fn poll_at(
        node: &mut UdpFabric,
        mem: &mut UdpMemory,
        at: Instant,
        frames: u64,
    ) -> Vec<Completion> {
        let give_up = Instant::now() + Duration::from_secs(3);
        let mut out = node.poll(mem, at);
        while node.stats().received < frames {
            assert!(Instant::now() < give_up, "only {:?}", node.stats());
            out.extend(node.poll(mem, at));
        }
        out
    }

    /// A read of several frames times out when its target stops answering, `timeout` after
    /// the last piece answered, not `timeout` after it was posted: a large catch-up read to a
    /// busy but live peer must not fail because it takes many frames.
    #[test]
    fn a_multi_frame_read_times_out_after_its_last_answer() {
        let timeout = Duration::from_millis(100);
        let (mut nodes, mut mems) = cluster(2, 4 * MAX_PAYLOAD_BYTES, timeout);
        let chunk = nodes[0].chunk_bytes();
        let len = 2 * chunk + 100;
        let t0 = Instant::now();
        nodes[0].post(
            Post {
                wr_id: 9,
                target: 1,
                op: Op::Read {
                    region: Region::Log,
                    offset: 0,
                    len,
                },
                reconnect: true,
                ballot: B,
            },
            t0,
        );
        assert_eq!(nodes[0].stats().sent, 3, "three request frames");
        // The owner answers all three; the first answer is lost on the way.
        let (a, b) = nodes.split_at_mut(1);
        let (ma, mb) = mems.split_at_mut(1);
        b[0].drop_sends = 1;
        assert!(poll_at(&mut b[0], &mut mb[0], t0, 3).is_empty());
        // Two answers arrive at 0.9 x timeout: progress, so the deadline moves.
        let at = t0 + timeout.mul_f64(0.9);
        assert!(poll_at(&mut a[0], &mut ma[0], at, 2).is_empty());
        // At 1.5 x timeout after posting (0.6 x after the last answer) it still waits.
        assert!(a[0].poll(&mut ma[0], t0 + timeout.mul_f64(1.5)).is_empty());
        assert_eq!(a[0].stats().timeouts, 0);
        // A timeout after the last answer it fails: the missing piece never comes.
        let done = a[0].poll(&mut ma[0], at + timeout);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].wr_id, 9);
        assert_eq!(done[0].result, Err(FabricError::Unreachable));
        assert_eq!(a[0].stats().timeouts, 1);
    }

    #[test]
    fn a_lost_datagram_stops_later_writes_until_a_reconnect() {
        let (mut nodes, mut mems) = cluster(2, GEO.log_bytes(), Duration::from_millis(300));
        mems[0].grant(1, B);
        let write = |wr_id, slot, byte, reconnect| {
            let mut p = slot_write(wr_id, slot, byte, reconnect);
            p.target = 0;
            p
        };
        // A first write lands: the path works.
        nodes[1].post(write(1, 0, 0x11, false), Instant::now());
        let done = drive(&mut nodes, &mut mems, |d| !d.is_empty());
        assert_eq!(result_of(&done, 1), Some(&Ok(None)));
        // The next request datagram is lost on the way; the write posted after it is refused by
        // the target and does not land, and so is the one after that.
        nodes[1].drop_sends = 1;
        nodes[1].post(write(2, 1, 0x22, false), Instant::now());
        nodes[1].post(write(3, 2, 0x33, false), Instant::now());
        let done = drive(&mut nodes, &mut mems, |d| result_of(d, 3).is_some());
        assert_eq!(result_of(&done, 3), Some(&Err(FabricError::Unreachable)));
        nodes[1].post(write(4, 3, 0x44, false), Instant::now());
        let done = drive(&mut nodes, &mut mems, |d| {
            result_of(d, 4).is_some() && result_of(d, 2).is_some()
        });
        assert_eq!(result_of(&done, 4), Some(&Err(FabricError::Unreachable)));
        // The lost one times out.
        assert_eq!(result_of(&done, 2), Some(&Err(FabricError::Unreachable)));
        for s in 1..4 {
            assert_eq!(
                slot(&mems[0], s),
                &[0; 64],
                "slot {s} landed behind the loss"
            );
        }
        assert_eq!(slot(&mems[0], 0), &[0x11; 64]);
        // Still in error until a reconnect (the poster knows it now, after the time-out).
        nodes[1].post(write(5, 2, 0x55, false), Instant::now());
        let done = drive(&mut nodes, &mut mems, |d| !d.is_empty());
        assert_eq!(result_of(&done, 5), Some(&Err(FabricError::Unreachable)));
        assert_eq!(slot(&mems[0], 2), &[0; 64]);
        // After a reconnect writes land again, in order.
        nodes[1].post(write(6, 1, 0x66, true), Instant::now());
        nodes[1].post(write(7, 2, 0x77, false), Instant::now());
        let done = drive(&mut nodes, &mut mems, |d| d.len() >= 2);
        assert_eq!(result_of(&done, 6), Some(&Ok(None)));
        assert_eq!(result_of(&done, 7), Some(&Ok(None)));
        assert_eq!(slot(&mems[0], 1), &[0x66; 64]);
        assert_eq!(slot(&mems[0], 2), &[0x77; 64]);
        assert_eq!(slot(&mems[0], 3), &[0; 64]);
    }

    /// A catch-up posts thousands of writes at once; the send window keeps at most
    /// `window_ops` of them on the wire, so none is dropped by a full socket buffer and all land
    /// in posting order (the last write to each slot wins).
    #[test]
    fn a_burst_far_beyond_the_window_lands_whole_and_in_order() {
        let (mut nodes, mut mems) = cluster(2, GEO.log_bytes(), Duration::from_secs(2));
        mems[0].grant(1, B);
        const BURST: u64 = 5000;
        for i in 0..BURST {
            let mut p = slot_write(i, i % GEO.capacity, (i % 251) as u8, i == 0);
            p.target = 0;
            nodes[1].post(p, Instant::now());
        }
        assert!(nodes[1].outstanding() as u64 == BURST);
        assert!(nodes[1].stats().window_waits >= BURST - 64);
        let done = drive(&mut nodes, &mut mems, |d| d.len() as u64 == BURST);
        let order: Vec<u64> = done.iter().map(|(_, c)| c.wr_id).collect();
        assert_eq!(
            order,
            (0..BURST).collect::<Vec<_>>(),
            "completions out of order"
        );
        assert!(done.iter().all(|(_, c)| c.result == Ok(None)), "{done:?}");
        for s in 0..GEO.capacity {
            let last = (BURST - 1 - s) / GEO.capacity * GEO.capacity + s;
            assert_eq!(slot(&mems[0], s), &[(last % 251) as u8; 64], "slot {s}");
        }
        assert_eq!(nodes[1].stats().timeouts, 0);
        assert_eq!(nodes[1].outstanding(), 0);
    }

    /// Operations waiting for the window fail with the connection when it breaks, in posting
    /// order, and are never sent.
    #[test]
    fn waiting_operations_fail_with_their_connection() {
        let (mut nodes, mut mems) = cluster(2, GEO.log_bytes(), Duration::from_millis(100));
        mems[0].grant(1, B);
        nodes[1].drop_sends = 64;
        for i in 0..200 {
            let mut p = slot_write(i, i % GEO.capacity, 0x5a, i == 0);
            p.target = 0;
            nodes[1].post(p, Instant::now());
        }
        let done = drive(&mut nodes, &mut mems, |d| d.len() == 200);
        assert!(done
            .iter()
            .all(|(_, c)| c.result == Err(FabricError::Unreachable)));
        assert_eq!(nodes[1].stats().sent, 64, "a waiting operation went out");
        assert!((0..GEO.capacity).all(|s| slot(&mems[0], s) == [0; 64]));
    }

    #[test]
    fn memory_rights_follow_the_sim() {
        let mut m = UdpMemory::new(0, GEO.log_bytes());
        let write = |ballot, reconnect| Post {
            wr_id: 0,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: 256,
                bytes: vec![1; 8],
            },
            reconnect,
            ballot,
        };
        let b3 = Ballot::new(3, 1);
        // No grant: refused, and the connection breaks.
        assert_eq!(
            m.apply(1, 0, &write(B, false)),
            Err(FabricError::Permission)
        );
        m.grant(1, B);
        assert_eq!(
            m.apply(1, 1, &write(B, false)),
            Err(FabricError::Unreachable)
        );
        assert_eq!(m.apply(1, 2, &write(B, true)), Ok(None));
        // Revoked: permission errors until a reconnect, even under a fresh grant (a write posted
        // before the revoke never lands after it), and a reconnect alone grants nothing.
        m.revoke(1);
        m.grant(1, B);
        assert_eq!(
            m.apply(1, 3, &write(B, false)),
            Err(FabricError::Permission)
        );
        m.grant(1, b3);
        assert_eq!(
            m.apply(1, 4, &write(b3, false)),
            Err(FabricError::Permission)
        );
        assert_eq!(m.apply(1, 5, &write(B, true)), Err(FabricError::Permission));
        assert_eq!(m.apply(1, 6, &write(b3, true)), Ok(None));
        // Other peers are untouched by node 1's connection state.
        m.grant(2, Ballot::new(3, 2));
        assert_eq!(m.apply(2, 0, &write(Ballot::new(3, 2), false)), Ok(None));
        assert_eq!(m.writers(), vec![(1, b3), (2, Ballot::new(3, 2))]);
        // The owner's own proposals need its own grant.
        assert_eq!(
            m.write_log_as_holder(B, 0, &[1; 8]),
            Err(FabricError::Permission)
        );
        // Out-of-range and overflowing ranges are refused, never a panic.
        let read = |offset, len| Post {
            wr_id: 0,
            target: 0,
            op: Op::Read {
                region: Region::Control,
                offset,
                len,
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        assert_eq!(
            m.apply(1, 0, &read(usize::MAX, 2)),
            Err(FabricError::Permission)
        );
        assert_eq!(
            m.apply(1, 0, &read(CB_BYTES, 1)),
            Err(FabricError::Permission)
        );
        let mut far = write(b3, false);
        far.op = Op::Write {
            region: Region::Log,
            offset: usize::MAX - 3,
            bytes: vec![1; 8],
        };
        assert_eq!(m.apply(1, 7, &far), Err(FabricError::Permission));
        assert_eq!(m.apply(200, 0, &read(0, 8)), Err(FabricError::Permission));
        // Control writes: own words, 8 bytes, only.
        let cw = |offset, len| Post {
            wr_id: 0,
            target: 0,
            op: Op::Write {
                region: Region::Control,
                offset,
                bytes: vec![4; len],
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        assert_eq!(m.apply(1, 0, &cw(cb_ack(1), 8)), Ok(None));
        assert_eq!(
            m.apply(1, 0, &cw(cb_ack(2), 8)),
            Err(FabricError::Permission)
        );
        assert_eq!(
            m.apply(1, 0, &cw(cb_request(1), 16)),
            Err(FabricError::Permission)
        );
        assert_eq!(m.control_word(cb_ack(1)), u64::from_le_bytes([4; 8]));
    }
}
