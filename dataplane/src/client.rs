//! The Rust client of a rapax cluster.
//!
//! A [`Client`] has an id (random, so two runs never share one) and numbers its commands
//! 1, 2, 3, ... It sends each command to the node it believes leads; a `NotLeader` answer moves
//! it to the hinted node, a time-out to the next node in the cluster file, `Busy` makes it wait a
//! little. Every retry carries the same (client, sequence) pair, and the state machine keeps the
//! last reply per client, so a command retried across a fail-over executes once.
//!
//! Transports: on `shm` the nodes' mailboxes ([`crate::mailbox`]) in the cluster directory; on
//! `udp` client frames from one of the cluster file's client addresses.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::daemon::{load_config, ClusterDir, DaemonError};
use crate::fabric::frame::{Frame, FrameError, CLIENT_NODE, MAX_FRAME_BYTES};
use crate::mailbox::{MailboxClient, MailboxError};
use crate::profile::FabricKind;
use crate::protocol::kv::{self, KvCodecError, KvOp, KvReply};
use crate::protocol::membership::{Change, ChangeAnswer};
use crate::protocol::node::ClientError;
use crate::protocol::NodeId;

/// Why a command did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientFailure {
    /// No node answered in time: the command may or may not have taken effect.
    #[error("no answer for command {seq} within {waited:?} (it may or may not have taken effect)")]
    Timeout { seq: u64, waited: Duration },
    /// The cluster refused the command; retrying it cannot help.
    #[error("refused: {0}")]
    Refused(ClientError),
    #[error("reply does not decode: {0}")]
    BadReply(KvCodecError),
    #[error("the answer to a configuration change does not decode ({0} bytes)")]
    BadChangeAnswer(usize),
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] Box<DaemonError>),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
    #[error("no free client address: all {0} addresses of the cluster file's [[client]] tables are in use")]
    NoClientAddress(usize),
    #[error("fabric {0} has no client transport in this build")]
    Unsupported(&'static str),
}

enum Transport {
    Shm {
        dir: ClusterDir,
        boxes: Vec<Option<MailboxClient>>,
        /// How long to spin for an answer before yielding: on `shm` an answer takes about a
        /// microsecond; behind a NIC fabric (memif, rxe) it takes several scheduling hops of
        /// processes that may need the very core this client would spin on.
        spin: Duration,
    },
    Udp {
        socket: UdpSocket,
        nodes: Vec<SocketAddr>,
        /// Receives every datagram (the largest frame fits); an answer is copied out of it.
        datagram: Vec<u8>,
    },
}

/// Tunables of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// How long to wait for one node's answer before trying the next.
    pub attempt_timeout: Duration,
    /// How long to keep trying one command before giving up with [`ClientFailure::Timeout`].
    pub command_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            attempt_timeout: Duration::from_millis(10),
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// One client of one cluster.
pub struct Client {
    id: u64,
    seq: u64,
    cluster_id: u64,
    nodes: Vec<NodeId>,
    leader: usize,
    transport: Transport,
    options: ClientOptions,
    /// The command being submitted, the frame it travels in, and the last answer's frame:
    /// buffers kept from command to command, so one costs no allocation.
    command: Vec<u8>,
    frame: Vec<u8>,
    reply: Vec<u8>,
    /// Retries (time-outs, redirects, busy answers) over the client's life.
    pub retries: u64,
}

fn fresh_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    h.update(
        &NEXT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    h.digest() | 1
}

impl Client {
    /// A client of the cluster whose directory is `dir` (its `profile.toml` and `cluster.toml`).
    pub fn connect(dir: &Path, options: ClientOptions) -> Result<Client, ConnectError> {
        let cdir = ClusterDir::new(dir);
        let (profile, cluster) = load_config(&cdir, None, None).map_err(Box::new)?;
        // Every node: the ring of epoch 0 first, then the spares (which may lead later).
        let nodes = cluster.succession();
        let transport = match profile.fabric.kind {
            // A local dpdk cluster takes clients through the shm mailbox too.
            FabricKind::Shm | FabricKind::Dpdk | FabricKind::Rdma => Transport::Shm {
                dir: cdir,
                boxes: nodes.iter().map(|_| None).collect(),
                spin: if profile.fabric.kind == FabricKind::Shm {
                    Duration::from_micros(5)
                } else {
                    Duration::ZERO
                },
            },
            FabricKind::Udp => {
                let addrs: Vec<SocketAddr> = cluster
                    .clients
                    .iter()
                    .filter_map(|c| c.udp_addr.as_ref()?.parse().ok())
                    .collect();
                let socket = addrs
                    .iter()
                    .find_map(|a| UdpSocket::bind(a).ok())
                    .ok_or(ConnectError::NoClientAddress(addrs.len()))?;
                let nodes = nodes
                    .iter()
                    .filter_map(|&n| cluster.node(n)?.udp_socket_addr())
                    .collect();
                Transport::Udp {
                    socket,
                    nodes,
                    datagram: vec![0; MAX_FRAME_BYTES],
                }
            }
            other => return Err(ConnectError::Unsupported(other.as_str())),
        };
        Ok(Client {
            id: fresh_id(),
            seq: 0,
            cluster_id: cluster.cluster_id(),
            nodes,
            leader: 0,
            transport,
            options,
            command: Vec::new(),
            frame: Vec::new(),
            reply: Vec::new(),
            retries: 0,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node this client will try first.
    pub fn leader_guess(&self) -> NodeId {
        self.nodes[self.leader]
    }

    /// Runs `op` to completion: its reply, or why there is none.
    pub fn execute(&mut self, op: KvOp) -> Result<KvReply, ClientFailure> {
        self.seq += 1;
        let command = kv::Command {
            client: self.id,
            seq: self.seq,
            op,
        };
        self.command.clear();
        command.encode(&mut self.command);
        let at = self.submit()?;
        KvReply::decode(&self.reply[at..]).map_err(ClientFailure::BadReply)
    }

    /// Asks the leader for a configuration change: the configurations it will propose, in
    /// order, or why it refused the change.
    pub fn reconfigure(&mut self, change: &Change) -> Result<ChangeAnswer, ClientFailure> {
        self.seq += 1;
        self.command = change.request(self.id, self.seq);
        let at = self.submit()?;
        let answer = &self.reply[at..];
        ChangeAnswer::decode(answer).ok_or(ClientFailure::BadChangeAnswer(answer.len()))
    }

    /// Sends raw command bytes under the next sequence number (for tests of the node's door:
    /// the bytes need not be a valid command).
    pub fn execute_raw(&mut self, command: Vec<u8>) -> Result<Vec<u8>, ClientFailure> {
        self.seq += 1;
        self.command = command;
        let at = self.submit()?;
        Ok(self.reply[at..].to_vec())
    }

    /// Submits `self.command` under the current sequence number until a node answers it;
    /// returns where the answer's result bytes start in `self.reply`.
    fn submit(&mut self) -> Result<usize, ClientFailure> {
        let (client, seq) = (self.id, self.seq);
        if let Err(FrameError::TooLarge { bytes, max }) = Frame::check_client_request(&self.command)
        {
            // No node could take it: say so now instead of timing out.
            return Err(ClientFailure::Refused(ClientError::TooLarge { bytes, max }));
        }
        // No clock is read while the first try is answered within its spin (the common case).
        let mut started: Option<Instant> = None;
        loop {
            if let Some(started) = started {
                if started.elapsed() > self.options.command_timeout {
                    return Err(ClientFailure::Timeout {
                        seq,
                        waited: started.elapsed(),
                    });
                }
            }
            let target = self.leader;
            let reply = self.attempt(target, client, seq);
            // The command's clock starts at its first try (read after it, so a first try
            // answered at once reads none).
            started.get_or_insert_with(Instant::now);
            match reply {
                Some(result) => match result {
                    Ok(at) => return Ok(at),
                    Err(ClientError::NotLeader { leader_hint }) => {
                        self.retries += 1;
                        self.leader = match leader_hint
                            .and_then(|h| self.nodes.iter().position(|&n| n == h))
                        {
                            Some(i) if i != target => i,
                            _ => {
                                // No hint (an election is under way): try the next node, and do
                                // not hammer the cluster.
                                std::thread::sleep(Duration::from_micros(200));
                                (target + 1) % self.nodes.len()
                            }
                        };
                    }
                    Err(ClientError::Busy) => {
                        self.retries += 1;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    Err(e) => return Err(ClientFailure::Refused(e)),
                },
                None => {
                    self.retries += 1;
                    self.leader = (target + 1) % self.nodes.len();
                }
            }
        }
    }

    /// One try at node index `i`: its answer (where its result bytes start in `self.reply`,
    /// or the error it carries), or `None` on time-out or an unreachable node.
    fn attempt(&mut self, i: usize, client: u64, seq: u64) -> Option<Result<usize, ClientError>> {
        let node = self.nodes[i];
        self.frame.clear();
        Frame::encode_client_request(
            &mut self.frame,
            CLIENT_NODE,
            node,
            self.cluster_id,
            client,
            seq,
            &self.command,
        )
        .ok()?;
        let attempt_timeout = self.options.attempt_timeout;
        match &mut self.transport {
            Transport::Shm { dir, boxes, spin } => {
                if boxes[i].is_none() {
                    boxes[i] = MailboxClient::open(&dir.mailbox(node)).ok();
                }
                let mb = boxes[i].as_mut()?;
                if mb.send(&self.frame).is_err() {
                    return None;
                }
                // Spin while an answer is due within microseconds, then yield, then sleep in
                // short steps: a client waiting out a fail-over must not starve the nodes. The
                // clock is first read after 256 empty polls.
                let mut sent: Option<Instant> = None;
                let mut polls = 0u32;
                loop {
                    if mb.try_recv(&mut self.reply) {
                        return answer(&self.reply, self.cluster_id, client, seq);
                    }
                    polls += 1;
                    if polls < 256 {
                        std::hint::spin_loop();
                        continue;
                    }
                    polls = 0;
                    let sent = *sent.get_or_insert_with(Instant::now);
                    let waited = sent.elapsed();
                    if waited > attempt_timeout || !mb.server_alive() {
                        return None;
                    }
                    if waited < *spin {
                        // Only briefly: on a shared core the nodes that must answer may need
                        // the one this client is spinning on.
                        std::hint::spin_loop();
                    } else if waited < Duration::from_micros(200) {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(20));
                    }
                }
            }
            Transport::Udp {
                socket,
                nodes,
                datagram,
            } => {
                let deadline = Instant::now() + attempt_timeout;
                socket.send_to(&self.frame, nodes[i]).ok()?;
                loop {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    socket
                        .set_read_timeout(Some(left.max(Duration::from_micros(50))))
                        .ok()?;
                    let (n, from) = match socket.recv_from(datagram) {
                        Ok(x) => x,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            return None
                        }
                        Err(_) => continue,
                    };
                    if from != nodes[i] {
                        continue;
                    }
                    if let Some(r) = answer(&datagram[..n], self.cluster_id, client, seq) {
                        self.reply.clear();
                        self.reply.extend_from_slice(&datagram[..n]);
                        return Some(r);
                    }
                }
            }
        }
    }
}

/// The answer in the reply frame `bytes` if it answers `client`'s command `seq` (a refusal of
/// an undecodable request, sent with client and sequence 0, answers it too): where its result
/// bytes start in `bytes` (they run to its end), or the error it carries. Decoded in place.
fn answer(
    bytes: &[u8],
    cluster_id: u64,
    client: u64,
    seq: u64,
) -> Option<Result<usize, ClientError>> {
    let reply = Frame::decode_client_reply(bytes).ok()?;
    if reply.cluster_id != cluster_id || reply.dst != CLIENT_NODE {
        return None;
    }
    let ours = reply.client == client && reply.seq == seq;
    let door = reply.client == 0 && reply.seq == 0 && reply.result.is_err();
    if !(ours || door) {
        return None;
    }
    Some(reply.result.map(|result| bytes.len() - result.len()))
}
