//! The connection handshake between rdma nodes in different processes (daemons).
//!
//! In one process the poster's half of a connection calls the owner's half directly
//! ([`Wiring::accept`]). Between processes the same exchange travels as two UDP datagrams on the
//! node's `rdma_addr`: the poster sends a **request** (the connection's key — poster, owner,
//! lane and ballot — and the initiator's endpoint: queue-pair number, first PSN, LID, GID), the
//! owner brings its responder up with the rights it gives that connection now and sends the
//! **answer** (its endpoint, and the addresses and keys of the regions the poster may use). The
//! poster then brings its initiator up; posts made meanwhile wait in the connection's queue.
//! Both queue pairs are RC and addressed by GID, so RoCE v2 (and soft-RoCE) works as InfiniBand
//! does.
//!
//! Requests are taken only from the configured address of the node they name as poster, and
//! only for this node's memory; anything else is dropped and counted. A request that goes
//! unanswered (the owner is down) fails the waiting posts with `Unreachable` after
//! [`CONNECT_TIMEOUT`]; the next post tries again. Rights are never taken from the handshake:
//! the owner decides them from its own grant state, exactly as in one process.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use rapax_ffi::ibverbs::{Endpoint, Gid, RemoteAddr};

use super::{Lane, LinkKey, Remotes, Wiring};
use crate::protocol::{Ballot, NodeId};

/// How long a poster waits for the owner's answer before its posts fail with `Unreachable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);

const MAGIC: u32 = 0x5248_5358; // "RHSX"
const VERSION: u8 = 2;
const KIND_REQUEST: u8 = 1;
const KIND_ANSWER: u8 = 2;
const KIND_REFUSED: u8 = 3;
const REQUEST_BYTES: usize = 68;
const ANSWER_BYTES: usize = REQUEST_BYTES + 1 + 3 * 12;

/// Counters of the handshake endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests answered (responders brought up for a peer).
    pub accepted: u64,
    /// Datagrams from an address that is not the configured one of the node they name.
    pub strangers: u64,
    /// Datagrams that are not a handshake message of this cluster for this node.
    pub malformed: u64,
    /// Requests this node could not accept (its device refused the responder).
    pub refused: u64,
}

/// The owner's answer to one of our requests.
pub(super) struct Answer {
    pub key: LinkKey,
    pub nonce: u64,
    pub result: Option<(Endpoint, Remotes)>,
}

/// One node's handshake endpoint: a UDP socket on its `rdma_addr`.
pub struct RdmaNet {
    socket: UdpSocket,
    me: NodeId,
    cluster_id: u64,
    peers: HashMap<NodeId, SocketAddr>,
    next_nonce: u64,
    buf: Vec<u8>,
    stats: NetStats,
}

impl RdmaNet {
    /// Binds `addr` (this node's `rdma_addr`) for the handshakes of node `me` with `peers`
    /// (every other member, at its `rdma_addr`).
    pub fn bind(
        addr: SocketAddr,
        me: NodeId,
        cluster_id: u64,
        peers: &[(NodeId, SocketAddr)],
    ) -> std::io::Result<RdmaNet> {
        let socket = crate::fabric::udp::bind_port(addr)?;
        socket.set_nonblocking(true)?;
        Ok(RdmaNet {
            socket,
            me,
            cluster_id,
            peers: peers.iter().copied().collect(),
            next_nonce: u64::from(std::process::id()) << 32,
            buf: vec![0; 512],
            stats: NetStats::default(),
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Sends the request for `key` with the initiator's endpoint; returns its nonce (the answer
    /// carries it back). A peer with no address gets nothing, and the request times out.
    pub(super) fn request(&mut self, key: LinkKey, initiator: &Endpoint) -> u64 {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let mut m = Vec::with_capacity(REQUEST_BYTES);
        header(&mut m, KIND_REQUEST, key, self.cluster_id, nonce, initiator);
        if let Some(to) = self.peers.get(&key.dst) {
            let _ = self.socket.send_to(&m, to);
        }
        nonce
    }

    /// Takes every datagram waiting: answers requests for this node's memory through
    /// `wiring` (the owner's half), and hands answers to our own requests to `answers`.
    pub(super) fn serve(&mut self, wiring: &Mutex<Wiring>, answers: &mut Vec<Answer>) {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let Some(msg) = Message::decode(&self.buf[..n]) else {
                self.stats.malformed += 1;
                continue;
            };
            if msg.cluster_id != self.cluster_id {
                self.stats.malformed += 1;
                continue;
            }
            match msg.kind {
                KIND_REQUEST => {
                    if msg.key.dst != self.me || msg.key.src == self.me {
                        self.stats.malformed += 1;
                        continue;
                    }
                    if self.peers.get(&msg.key.src) != Some(&from) {
                        self.stats.strangers += 1;
                        continue;
                    }
                    let accepted = {
                        let mut w = wiring.lock().expect("no panic while wiring");
                        if w.owns(msg.key.dst) {
                            w.accept(msg.key, msg.endpoint).ok()
                        } else {
                            None
                        }
                    };
                    let mut m = Vec::with_capacity(ANSWER_BYTES);
                    match accepted {
                        Some((endpoint, remotes)) => {
                            self.stats.accepted += 1;
                            header(
                                &mut m,
                                KIND_ANSWER,
                                msg.key,
                                self.cluster_id,
                                msg.nonce,
                                &endpoint,
                            );
                            put_remotes(&mut m, &remotes);
                        }
                        None => {
                            self.stats.refused += 1;
                            header(
                                &mut m,
                                KIND_REFUSED,
                                msg.key,
                                self.cluster_id,
                                msg.nonce,
                                &msg.endpoint,
                            );
                        }
                    }
                    let _ = self.socket.send_to(&m, from);
                }
                KIND_ANSWER | KIND_REFUSED => {
                    if msg.key.src != self.me {
                        self.stats.malformed += 1;
                        continue;
                    }
                    if self.peers.get(&msg.key.dst) != Some(&from) {
                        self.stats.strangers += 1;
                        continue;
                    }
                    let result = if msg.kind == KIND_ANSWER {
                        match msg.remotes {
                            Some(r) => Some((msg.endpoint, r)),
                            None => {
                                self.stats.malformed += 1;
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    answers.push(Answer {
                        key: msg.key,
                        nonce: msg.nonce,
                        result,
                    });
                }
                _ => self.stats.malformed += 1,
            }
        }
    }
}

fn header(m: &mut Vec<u8>, kind: u8, key: LinkKey, cluster_id: u64, nonce: u64, e: &Endpoint) {
    m.extend_from_slice(&MAGIC.to_le_bytes());
    m.push(VERSION);
    m.push(kind);
    m.push(key.src);
    m.push(key.dst);
    m.extend_from_slice(&cluster_id.to_le_bytes());
    m.extend_from_slice(&nonce.to_le_bytes());
    let (lane, ballot) = match key.lane {
        Lane::Control => (0u8, 0u64),
        Lane::Data(b) => (1, b.0),
        Lane::Watch => (2, 0),
    };
    m.push(lane);
    m.extend_from_slice(&[0; 7]);
    m.extend_from_slice(&ballot.to_le_bytes());
    m.extend_from_slice(&e.qp_num.to_le_bytes());
    m.extend_from_slice(&e.psn.to_le_bytes());
    m.extend_from_slice(&e.lid.to_le_bytes());
    m.extend_from_slice(&[0; 2]);
    m.extend_from_slice(&e.gid.0);
    debug_assert_eq!(m.len(), REQUEST_BYTES);
}

fn put_addr(m: &mut Vec<u8>, a: RemoteAddr) {
    m.extend_from_slice(&a.addr.to_le_bytes());
    m.extend_from_slice(&a.rkey.to_le_bytes());
}

/// A peer's regions as both exchanges carry them: which (0 control, 1 log), then three (address,
/// key) pairs, 37 bytes (a log: its read region, the poster's write region, zero).
pub(super) fn put_remotes(m: &mut Vec<u8>, r: &Remotes) {
    let zero = RemoteAddr { addr: 0, rkey: 0 };
    let (which, addrs) = match *r {
        Remotes::Control { read, request, ack } => (0u8, [read, request, ack]),
        Remotes::Log { read, write } => (1, [read, write, zero]),
    };
    m.push(which);
    for a in addrs {
        put_addr(m, a);
    }
}

/// The regions `put_remotes` wrote as `which` and three addresses.
pub(super) fn remotes_from(which: u8, [a, b, c]: [RemoteAddr; 3]) -> Option<Remotes> {
    match which {
        0 => Some(Remotes::Control {
            read: a,
            request: b,
            ack: c,
        }),
        1 => Some(Remotes::Log { read: a, write: b }),
        _ => None,
    }
}

/// A decoded handshake datagram.
struct Message {
    kind: u8,
    key: LinkKey,
    cluster_id: u64,
    nonce: u64,
    endpoint: Endpoint,
    /// Answers only.
    remotes: Option<Remotes>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.at..self.at + N)?;
        self.at += N;
        s.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
    fn addr(&mut self) -> Option<RemoteAddr> {
        Some(RemoteAddr {
            addr: self.u64()?,
            rkey: self.u32()?,
        })
    }
}

impl Message {
    fn decode(b: &[u8]) -> Option<Message> {
        let mut r = Reader { b, at: 0 };
        if r.u32()? != MAGIC || r.u8()? != VERSION {
            return None;
        }
        let kind = r.u8()?;
        let (src, dst) = (r.u8()?, r.u8()?);
        if usize::from(src) >= crate::protocol::MAX_NODES
            || usize::from(dst) >= crate::protocol::MAX_NODES
        {
            return None;
        }
        let cluster_id = r.u64()?;
        let nonce = r.u64()?;
        let lane = r.u8()?;
        r.take::<7>()?;
        let ballot = r.u64()?;
        let lane = match lane {
            0 => Lane::Control,
            1 if ballot != 0 => Lane::Data(Ballot(ballot)),
            2 if ballot == 0 => Lane::Watch,
            _ => return None,
        };
        let endpoint = Endpoint {
            qp_num: r.u32()?,
            psn: r.u32()?,
            lid: r.u16()?,
            gid: {
                r.take::<2>()?;
                Gid(r.take::<16>()?)
            },
        };
        let remotes = if kind == KIND_ANSWER {
            let which = r.u8()?;
            Some(remotes_from(which, [r.addr()?, r.addr()?, r.addr()?])?)
        } else {
            None
        };
        if r.at != b.len() {
            return None;
        }
        Some(Message {
            kind,
            key: LinkKey { src, dst, lane },
            cluster_id,
            nonce,
            endpoint,
            remotes,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An endpoint with every field set (the exchanges' tests share it).
    pub(in crate::fabric::rdma) fn endpoint() -> Endpoint {
        Endpoint {
            qp_num: 0x12_3456,
            psn: 0xab_cdef,
            lid: 7,
            gid: Gid([9; 16]),
        }
    }

    /// A log's regions as a test exchanges them (read key 9, write key 10).
    pub(in crate::fabric) fn log_remotes() -> Remotes {
        Remotes::Log {
            read: RemoteAddr {
                addr: 4096,
                rkey: 9,
            },
            write: RemoteAddr {
                addr: 4096,
                rkey: 10,
            },
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let key = LinkKey {
            src: 1,
            dst: 2,
            lane: Lane::Data(Ballot::new(3, 1)),
        };
        let mut m = Vec::new();
        header(&mut m, KIND_ANSWER, key, 77, 5, &endpoint());
        put_remotes(&mut m, &log_remotes());
        let d = Message::decode(&m).expect("decodes");
        assert_eq!(
            (d.kind, d.key, d.cluster_id, d.nonce),
            (KIND_ANSWER, key, 77, 5)
        );
        assert_eq!(d.endpoint, endpoint());
        assert_eq!(
            format!("{:?}", d.remotes),
            format!("{:?}", Some(log_remotes()))
        );
        // Cut, extended, wrong magic, a node id out of range, a data lane without a ballot.
        assert!(Message::decode(&m[..m.len() - 1]).is_none());
        let mut long = m.clone();
        long.push(0);
        assert!(Message::decode(&long).is_none());
        let mut bad = m.clone();
        bad[0] ^= 1;
        assert!(Message::decode(&bad).is_none());
        let mut bad = m.clone();
        bad[6] = 200;
        assert!(Message::decode(&bad).is_none());
        let mut req = Vec::new();
        header(
            &mut req,
            KIND_REQUEST,
            LinkKey {
                src: 1,
                dst: 2,
                lane: Lane::Control,
            },
            77,
            6,
            &endpoint(),
        );
        assert!(Message::decode(&req).is_some());
        req[24] = 1; // data lane, ballot 0
        assert!(Message::decode(&req).is_none());
    }
}
