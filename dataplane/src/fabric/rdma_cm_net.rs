//! The connection set-up between rdma nodes in different processes through rdma_cm: the same
//! exchange as the UDP handshake ([`super::RdmaNet`]), carried as the private data of an
//! rdma_cm connect request and its accept on the RDMA device itself.
//!
//! The poster connects to the owner's `rdma_addr` (an address of the RDMA netdev: rdma_cm
//! resolves it and the route on the device, so RoCE v2 and soft-RoCE work as InfiniBand does)
//! with the connection's key (poster, owner, lane, ballot), the cluster id and its initiator's
//! endpoint; the owner brings its responder up with the rights it gives that connection now and
//! accepts with its endpoint and the regions' addresses and keys. A refusal, an address without
//! a listener (a node that is down) or a time-out fails the waiting posts with `Unreachable`.
//!
//! Requests are taken only from the configured IP address of the node they name as poster, and
//! only for this node's memory; anything else is rejected and counted. Rights are never taken
//! from the exchange: the owner decides them from its own grant state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use rapax_ffi::ibverbs::{CmExchange, CmExchangeEvent, CmToken, Endpoint, Gid, RemoteAddr};

use super::net::{put_remotes, remotes_from, Answer, NetStats};
use super::{Lane, LinkKey, Remotes, Wiring};
use crate::protocol::{Ballot, NodeId, MAX_NODES};

/// How long a poster waits for the owner's accept (address and route resolution included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

const VERSION: u8 = 2;
/// version, src, dst, lane, cluster id, ballot, QP number, PSN, LID, GID.
const REQUEST_BYTES: usize = 4 + 8 + 8 + 4 + 4 + 2 + 16;
/// version, QP number, PSN, LID, GID, which remotes, three (address, key).
const ACCEPT_BYTES: usize = 1 + 4 + 4 + 2 + 16 + 1 + 3 * 12;
const _: () = assert!(REQUEST_BYTES <= CmExchange::REQUEST_DATA_MAX);
const _: () = assert!(ACCEPT_BYTES <= CmExchange::ACCEPT_DATA_MAX);

/// One node's rdma_cm endpoint: a listener on its `rdma_addr` and its own connect attempts.
pub struct CmNet {
    cm: CmExchange,
    me: NodeId,
    cluster_id: u64,
    peers: HashMap<NodeId, SocketAddr>,
    /// Our attempts and connections: their key and the nonce the fabric waits for.
    mine: HashMap<CmToken, (LinkKey, u64)>,
    /// The current attempt or connection of each of our keys.
    by_key: HashMap<LinkKey, CmToken>,
    /// Peers' connections to our memory, one per key (a newer one replaces it).
    theirs: HashMap<LinkKey, CmToken>,
    /// Answers decided at once (a connect that could not even start).
    early: Vec<Answer>,
    events: Vec<CmExchangeEvent>,
    next_nonce: u64,
    stats: NetStats,
}

impl CmNet {
    /// Listens on `addr` (this node's `rdma_addr`) for the connections of `peers` (every other
    /// member, at its `rdma_addr`) to node `me`'s memory.
    pub fn bind(
        addr: SocketAddr,
        me: NodeId,
        cluster_id: u64,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<CmNet, rapax_ffi::ibverbs::Error> {
        CmNet::new(Some(addr), me, cluster_id, peers)
    }

    /// An endpoint that only connects (node `me`'s control plane: it owns no memory peers use).
    pub fn connector(
        me: NodeId,
        cluster_id: u64,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<CmNet, rapax_ffi::ibverbs::Error> {
        CmNet::new(None, me, cluster_id, peers)
    }

    fn new(
        listen: Option<SocketAddr>,
        me: NodeId,
        cluster_id: u64,
        peers: &[(NodeId, SocketAddr)],
    ) -> Result<CmNet, rapax_ffi::ibverbs::Error> {
        Ok(CmNet {
            cm: CmExchange::new(listen)?,
            me,
            cluster_id,
            peers: peers.iter().copied().collect(),
            mine: HashMap::new(),
            by_key: HashMap::new(),
            theirs: HashMap::new(),
            early: Vec::new(),
            events: Vec::new(),
            next_nonce: u64::from(std::process::id()) << 32,
            stats: NetStats::default(),
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Starts connecting `key` with the initiator's endpoint (a previous connection of the key
    /// is closed); returns the nonce its answer will carry.
    pub(super) fn request(&mut self, key: LinkKey, initiator: &Endpoint) -> u64 {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        if let Some(old) = self.by_key.remove(&key) {
            self.mine.remove(&old);
            self.cm.close(old);
        }
        let Some(&to) = self.peers.get(&key.dst) else {
            self.early.push(Answer {
                key,
                nonce,
                result: None,
            });
            return nonce;
        };
        let data = encode_request(key, self.cluster_id, initiator);
        match self.cm.connect(
            to,
            initiator.qp_num,
            &data,
            CONNECT_TIMEOUT.as_millis() as i32,
        ) {
            Ok(token) => {
                self.mine.insert(token, (key, nonce));
                self.by_key.insert(key, token);
            }
            Err(_) => self.early.push(Answer {
                key,
                nonce,
                result: None,
            }),
        }
        nonce
    }

    /// Takes every rdma_cm event waiting: accepts (or rejects) peers' requests for this node's
    /// memory through `wiring` (the owner's half), hands the outcome of our own attempts to
    /// `answers` and our connections whose owner closed its end to `closed`.
    pub(super) fn serve(
        &mut self,
        wiring: &Mutex<Wiring>,
        answers: &mut Vec<Answer>,
        closed: &mut Vec<LinkKey>,
    ) {
        answers.append(&mut self.early);
        let mut events = std::mem::take(&mut self.events);
        self.cm.poll(&mut events);
        for e in events.drain(..) {
            match e {
                CmExchangeEvent::Request { token, peer, data } => {
                    self.on_request(token, peer, &data, wiring)
                }
                CmExchangeEvent::Accepted { token, data } => {
                    let Some(&(key, nonce)) = self.mine.get(&token) else {
                        self.cm.close(token);
                        continue;
                    };
                    let result = decode_accept(&data);
                    if result.is_none() {
                        self.stats.malformed += 1;
                    }
                    answers.push(Answer { key, nonce, result });
                }
                CmExchangeEvent::Failed { token, .. } => {
                    if let Some((key, nonce, _)) = self.forget_mine(token) {
                        answers.push(Answer {
                            key,
                            nonce,
                            result: None,
                        });
                    }
                }
                CmExchangeEvent::Closed { token } => {
                    if let Some((key, _, true)) = self.forget_mine(token) {
                        closed.push(key);
                    }
                    self.theirs.retain(|_, t| *t != token);
                }
            }
        }
        self.events = events;
    }

    /// Forgets our attempt or connection `token`: its key and nonce, and whether it was still
    /// the key's current one.
    fn forget_mine(&mut self, token: CmToken) -> Option<(LinkKey, u64, bool)> {
        let (key, nonce) = self.mine.remove(&token)?;
        let current = self.by_key.get(&key) == Some(&token);
        if current {
            self.by_key.remove(&key);
        }
        Some((key, nonce, current))
    }

    fn on_request(
        &mut self,
        token: CmToken,
        peer: Option<std::net::IpAddr>,
        data: &[u8],
        wiring: &Mutex<Wiring>,
    ) {
        let Some((key, cluster_id, initiator)) = decode_request(data) else {
            self.stats.malformed += 1;
            return self.cm.reject(token);
        };
        if cluster_id != self.cluster_id || key.dst != self.me || key.src == self.me {
            self.stats.malformed += 1;
            return self.cm.reject(token);
        }
        if peer.is_none() || self.peers.get(&key.src).map(|a| a.ip()) != peer {
            self.stats.strangers += 1;
            return self.cm.reject(token);
        }
        let accepted = {
            let mut w = wiring.lock().expect("no panic while wiring");
            if w.owns(key.dst) {
                w.accept_fresh(key, initiator).ok()
            } else {
                None
            }
        };
        let Some((endpoint, remotes)) = accepted else {
            self.stats.refused += 1;
            return self.cm.reject(token);
        };
        if self
            .cm
            .accept(token, endpoint.qp_num, &encode_accept(&endpoint, &remotes))
            .is_err()
        {
            self.stats.refused += 1;
            return self.cm.close(token);
        }
        self.stats.accepted += 1;
        if let Some(old) = self.theirs.insert(key, token) {
            self.cm.close(old);
        }
    }
}

fn put_endpoint(m: &mut Vec<u8>, e: &Endpoint) {
    m.extend_from_slice(&e.qp_num.to_le_bytes());
    m.extend_from_slice(&e.psn.to_le_bytes());
    m.extend_from_slice(&e.lid.to_le_bytes());
    m.extend_from_slice(&e.gid.0);
}

fn encode_request(key: LinkKey, cluster_id: u64, e: &Endpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_BYTES);
    let (lane, ballot) = match key.lane {
        Lane::Control => (0u8, 0u64),
        Lane::Data(b) => (1, b.0),
        Lane::Watch => (2, 0),
    };
    m.extend_from_slice(&[VERSION, key.src, key.dst, lane]);
    m.extend_from_slice(&cluster_id.to_le_bytes());
    m.extend_from_slice(&ballot.to_le_bytes());
    put_endpoint(&mut m, e);
    debug_assert_eq!(m.len(), REQUEST_BYTES);
    m
}

fn encode_accept(e: &Endpoint, r: &Remotes) -> Vec<u8> {
    let mut m = Vec::with_capacity(ACCEPT_BYTES);
    m.push(VERSION);
    put_endpoint(&mut m, e);
    put_remotes(&mut m, r);
    debug_assert_eq!(m.len(), ACCEPT_BYTES);
    m
}

/// Reads fixed-size fields off the front of a byte string.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
    fn endpoint(&mut self) -> Option<Endpoint> {
        Some(Endpoint {
            qp_num: u32::from_le_bytes(self.take()?),
            psn: u32::from_le_bytes(self.take()?),
            lid: u16::from_le_bytes(self.take()?),
            gid: Gid(self.take()?),
        })
    }
    fn addr(&mut self) -> Option<RemoteAddr> {
        Some(RemoteAddr {
            addr: self.u64()?,
            rkey: u32::from_le_bytes(self.take()?),
        })
    }
}

/// `(key, cluster id, initiator)` of a connect request's private data. rdma_cm may pad private
/// data with zeros up to its own size: bytes past the request must be zero.
fn decode_request(b: &[u8]) -> Option<(LinkKey, u64, Endpoint)> {
    let mut f = Fields(b);
    let [version, src, dst, lane] = f.take::<4>()?;
    if version != VERSION || usize::from(src) >= MAX_NODES || usize::from(dst) >= MAX_NODES {
        return None;
    }
    let cluster_id = f.u64()?;
    let ballot = f.u64()?;
    let lane = match (lane, ballot) {
        (0, 0) => Lane::Control,
        (1, b) if b != 0 => Lane::Data(Ballot(b)),
        (2, 0) => Lane::Watch,
        _ => return None,
    };
    let endpoint = f.endpoint()?;
    if f.0.iter().any(|&x| x != 0) {
        return None;
    }
    Some((LinkKey { src, dst, lane }, cluster_id, endpoint))
}

/// `(responder endpoint, remotes)` of an accept's private data (zero padding allowed).
fn decode_accept(b: &[u8]) -> Option<(Endpoint, Remotes)> {
    let mut f = Fields(b);
    if f.u8()? != VERSION {
        return None;
    }
    let endpoint = f.endpoint()?;
    let which = f.u8()?;
    let addrs = [f.addr()?, f.addr()?, f.addr()?];
    if f.0.iter().any(|&x| x != 0) {
        return None;
    }
    let remotes = remotes_from(which, addrs)?;
    Some((endpoint, remotes))
}

#[cfg(test)]
mod tests {
    use super::super::net::tests::endpoint;
    use super::*;

    #[test]
    fn private_data_round_trips_and_garbage_is_refused() {
        let key = LinkKey {
            src: 1,
            dst: 2,
            lane: Lane::Data(Ballot::new(3, 1)),
        };
        let req = encode_request(key, 77, &endpoint());
        assert_eq!(decode_request(&req), Some((key, 77, endpoint())));
        // rdma_cm pads private data with zeros: still the same request.
        let mut padded = req.clone();
        padded.resize(CmExchange::REQUEST_DATA_MAX, 0);
        assert_eq!(decode_request(&padded), Some((key, 77, endpoint())));
        assert_eq!(decode_request(&req[..req.len() - 1]), None, "cut");
        let mut bad = req.clone();
        bad.push(1);
        assert_eq!(decode_request(&bad), None, "trailing bytes");
        let mut bad = req.clone();
        bad[0] = 9;
        assert_eq!(decode_request(&bad), None, "version");
        let mut bad = req.clone();
        bad[1] = 200;
        assert_eq!(decode_request(&bad), None, "node id out of range");
        let control = LinkKey {
            src: 1,
            dst: 2,
            lane: Lane::Control,
        };
        let mut bad = encode_request(control, 77, &endpoint());
        assert!(decode_request(&bad).is_some());
        bad[3] = 1; // a data lane without a ballot
        assert_eq!(decode_request(&bad), None);

        let log = super::super::net::tests::log_remotes();
        let acc = encode_accept(&endpoint(), &log);
        let (e, r) = decode_accept(&acc).expect("decodes");
        assert_eq!(e, endpoint());
        assert_eq!(format!("{r:?}"), format!("{log:?}"));
        let mut padded = acc.clone();
        padded.resize(CmExchange::ACCEPT_DATA_MAX, 0);
        assert!(decode_accept(&padded).is_some());
        assert!(decode_accept(&acc[..acc.len() - 1]).is_none());
        let mut bad = acc.clone();
        bad[27] = 5;
        assert!(decode_accept(&bad).is_none(), "unknown remotes kind");
    }
}
