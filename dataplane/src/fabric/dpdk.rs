//! The `dpdk` fabric: the frames of [`super::frame`] over DPDK ethdev ports, with the frame logic
//! of [`super::framed`] shared with `udp` (DESIGN §2). The owner's poll-mode loop is the "NIC":
//! it receives request frames, checks rights, applies them through [`NicMemory`] and answers.
//!
//! # Wire
//!
//! One frame per Ethernet frame: a 14-byte header (destination MAC, source MAC, EtherType
//! [`ETHERTYPE`] = 0x88B5, the IEEE local-experimental type) followed by the frame bytes. No VLAN
//! tag, no IP. A frame is at most [`DPDK_FRAME_BYTES`] (1500: a standard MTU, so every PMD and
//! switch passes it without jumbo configuration); larger operations are split into more pieces
//! by the frame layer. Receive takes single-segment mbufs only (a frame always fits one).
//!
//! # Addresses
//!
//! Peers are addressed by MAC: the cluster file's `node.dpdk_mac`, not the MAC the port reports
//! (ring and memif ports may report 00:00:00:00:00:00 or a random one). A received frame is
//! considered only if its EtherType is ours and its destination is this node's configured MAC
//! (or broadcast); its source MAC must be the configured MAC of the node it names as source,
//! otherwise it is dropped and counted as a stranger ([`super::framed::FrameStats`]), exactly as
//! a UDP datagram from the wrong address.
//!
//! # Ports and topology
//!
//! A node drives one or more ports ([`DpdkPortSpec`]). On a NIC (mlx5, ice, i40e, af_xdp,
//! af_packet) one port reaches every peer: give it `peer: None`. On point-to-point virtual links
//! (memif, a pair of ring ports) a node has one port per peer: give each `peer: Some(node)`, and
//! the link sends to that peer on its port and receives from all ports. Frames to a peer with no
//! port of its own go out on the first shared port.
//!
//! # Queues
//!
//! Every port is configured with the profile's `rx_queues` and `tx_queues` ([`LinkQueues`]),
//! all served by the one poll-mode thread that owns the fabric: it polls every receive queue of
//! every port in turn (a NIC's RSS, or a peer, may deliver on any of them), and sends each
//! destination's frames on one transmit queue chosen by its MAC, so the frames to one peer leave
//! in order (the frame layer's send window counts on that; reordering only costs resends).
//!
//! # Loss
//!
//! A DPDK link loses frames under overload (a full ring or descriptor queue, an exhausted
//! mempool); a transmit that the PMD does not take counts as a loss. The fabric therefore runs
//! with loss recovery ([`super::framed`], "Loss recovery") when [`DpdkConfig::retransmit`] is set,
//! and the fault hook [`DpdkConfig::fault_drop_ppm`] drops that share of frames on send.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rapax_ffi::dpdk::{Burst, Eal, MacAddr, PktMbufPool, Port, PortConfig};

use super::framed::{DatagramLink, FrameConfig, FrameFabric, LinkRecv, PeerTableError};
use super::nic::NicMemory;
use crate::protocol::NodeId;

/// The EtherType of rapax frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88B5;
/// Bytes of the Ethernet header in front of every frame.
pub const ETH_HEADER_BYTES: usize = 14;
/// Largest rapax frame in one Ethernet frame: a standard 1500-byte MTU.
pub const DPDK_FRAME_BYTES: usize = 1500;
/// Mbuf data room that holds the largest Ethernet frame plus DPDK's headroom.
pub const MBUF_DATA_ROOM_BYTES: u16 = 2048 + 128;
/// Mbufs received per burst.
const RX_BURST: usize = 32;
const BROADCAST: MacAddr = MacAddr([0xff; 6]);

/// One node's memory in the `dpdk` fabric (the owner-side NIC state; see [`NicMemory`]).
pub type DpdkMemory = NicMemory;

/// Why the dpdk fabric cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("dpdk: {0}")]
    Dpdk(#[from] rapax_ffi::dpdk::Error),
    #[error("peer table: {0}")]
    Peers(#[from] PeerTableError),
    #[error("a dpdk fabric needs at least one port")]
    NoPort,
    #[error("node {0} has two dedicated ports")]
    TwoPortsForPeer(NodeId),
    #[error("frame round trip: {0}")]
    RoundTrip(&'static str),
    #[error("the process's DPDK environment did not start: {0}")]
    Environment(String),
}

/// One ethdev port of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpdkPortSpec {
    /// The ethdev port id.
    pub port_id: u16,
    /// The one peer reached through this port (memif, ring pairs), or `None` for a port shared
    /// by all peers (a NIC).
    pub peer: Option<NodeId>,
    /// Restart the port when its link stays down: a memif client, which dials its server only
    /// when it starts (see [`DpdkLink`]'s link watch). A memif server, a ring pair or a NIC
    /// needs no restart.
    pub redial: bool,
}

/// Who a node is, its ports and whom it talks to.
#[derive(Clone, Debug)]
pub struct DpdkConfig {
    pub me: NodeId,
    pub cluster_id: u64,
    /// This node's MAC, from the cluster file (frames are sent from it, and accepted to it).
    pub mac: MacAddr,
    /// Every peer's MAC, from the cluster file.
    pub peers: Vec<(NodeId, MacAddr)>,
    pub ports: Vec<DpdkPortSpec>,
    /// Queues of every port, and descriptors per queue.
    pub queues: LinkQueues,
    /// How long an operation may stay unanswered before it completes with `Unreachable`.
    pub timeout: Duration,
    /// Loss recovery: resend unanswered request frames after this long (`None`: off).
    pub retransmit: Option<Duration>,
    /// Most log operations in flight to one target.
    pub window_ops: usize,
    /// Fault hook: frames in a million dropped on send (0: none).
    pub fault_drop_ppm: u32,
    /// Seed of the fault hook's generator.
    pub fault_seed: u64,
}

/// Counters of the link itself (below the frame layer's [`super::framed::FrameStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DpdkLinkStats {
    /// Ethernet frames received, of any kind.
    pub rx_packets: u64,
    /// Frames of another EtherType, too short, or in several segments.
    pub foreign: u64,
    /// Frames of our EtherType for another destination MAC.
    pub not_for_me: u64,
    /// Frames not sent for want of an mbuf.
    pub no_mbuf: u64,
    /// Frames the PMD did not take (transmit queue full, or a memif peer not connected).
    pub tx_full: u64,
    /// Frames not sent because their port was stopped (being restarted by the link watch).
    pub port_stopped: u64,
    /// Restarts of a dedicated port whose link stayed down (the link watch, below).
    pub link_restarts: u64,
}

/// The queues of every port of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkQueues {
    /// Receive queues per port, all polled.
    pub rx: u16,
    /// Transmit queues per port; a destination's frames always take the same one.
    pub tx: u16,
    /// Descriptors per rx and per tx queue.
    pub desc: u16,
}

impl LinkQueues {
    /// One rx and one tx queue of `desc` descriptors.
    pub const fn single(desc: u16) -> LinkQueues {
        LinkQueues { rx: 1, tx: 1, desc }
    }
}

struct LinkPort<'pool> {
    port: Port<'pool>,
    peer: Option<NodeId>,
    redial: bool,
    /// Consecutive link checks that found the link down.
    down_checks: u32,
}

impl LinkPort<'_> {
    /// Takes in a finished restart, then whether the port is started.
    fn ready(&mut self) -> bool {
        if self.port.restart_pending() {
            let _ = self.port.settle();
        }
        self.port.is_started()
    }

    /// Started, and its link up (for memif: its peer connected).
    fn is_up(&self) -> bool {
        self.port.is_started() && self.port.link_up().unwrap_or(false)
    }
}

/// How often the link watch looks at the dedicated ports' links.
const LINK_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Idle receive polls between two looks at the clock by the link watch.
const LINK_CHECK_POLLS: u32 = 64;
/// Checks a dedicated port's link must be down in a row before the watch restarts the port.
const LINK_DOWN_CHECKS: u32 = 2;

/// How long a port that refuses to start is retried: a memif client port cannot start before
/// its server (another node's process) has created the socket.
const START_RETRY: Duration = Duration::from_secs(30);

/// Starts `port`, retrying for [`START_RETRY`] while it refuses.
fn start(port: &mut Port<'_>) -> Result<(), DpdkError> {
    let give_up = std::time::Instant::now() + START_RETRY;
    loop {
        match port.start() {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() >= give_up => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// DPDK ethdev ports as a datagram link: one Ethernet frame per frame, addressed by MAC.
pub struct DpdkLink<'pool> {
    pool: &'pool PktMbufPool,
    ports: Vec<LinkPort<'pool>>,
    mac: MacAddr,
    /// (peer MAC, index into `ports`) for peers with a dedicated port.
    routes: Vec<(MacAddr, usize)>,
    /// The port for every other peer.
    shared: usize,
    rx: Burst<'pool, RX_BURST>,
    /// Next mbuf of `rx` to hand out.
    rx_next: usize,
    /// Port polled next when `rx` is empty (round robin).
    rx_port: usize,
    /// Receive queue of that port polled next (round robin).
    rx_queue: u16,
    queues: LinkQueues,
    /// Idle receive polls since the link watch last looked at the clock.
    idle_polls: u32,
    /// When the link watch looks at the links next.
    next_link_check: Instant,
    stats: DpdkLinkStats,
}

impl<'pool> DpdkLink<'pool> {
    /// Configures and starts `ports` (`queues` each, receiving into `pool`). `peer_macs` maps
    /// the peers of dedicated ports to their MACs.
    pub fn open(
        eal: &Eal,
        pool: &'pool PktMbufPool,
        mac: MacAddr,
        ports: &[DpdkPortSpec],
        peer_macs: &[(NodeId, MacAddr)],
        queues: LinkQueues,
    ) -> Result<DpdkLink<'pool>, DpdkError> {
        if ports.is_empty() {
            return Err(DpdkError::NoPort);
        }
        let config = PortConfig {
            rx_queues: queues.rx,
            tx_queues: queues.tx,
            rx_desc: queues.desc,
            tx_desc: queues.desc,
            promiscuous: false,
        };
        let mut opened = Vec::with_capacity(ports.len());
        let mut routes = Vec::new();
        for (i, spec) in ports.iter().enumerate() {
            let mut port = Port::configure(eal, spec.port_id, &config, pool)?;
            start(&mut port)?;
            if let Some(peer) = spec.peer {
                if ports[..i].iter().any(|p| p.peer == Some(peer)) {
                    return Err(DpdkError::TwoPortsForPeer(peer));
                }
                if let Some(&(_, m)) = peer_macs.iter().find(|(n, _)| *n == peer) {
                    routes.push((m, i));
                }
            }
            opened.push(LinkPort {
                port,
                peer: spec.peer,
                redial: spec.redial,
                down_checks: 0,
            });
        }
        let shared = ports.iter().position(|p| p.peer.is_none()).unwrap_or(0);
        Ok(DpdkLink {
            pool,
            ports: opened,
            mac,
            routes,
            shared,
            rx: Burst::new(),
            rx_next: 0,
            rx_port: 0,
            rx_queue: 0,
            queues,
            idle_polls: 0,
            next_link_check: Instant::now() + LINK_CHECK_EVERY,
            stats: DpdkLinkStats::default(),
        })
    }

    /// This node's MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn stats(&self) -> &DpdkLinkStats {
        &self.stats
    }

    /// The peers of the dedicated ports, in port order.
    pub fn dedicated_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.ports.iter().filter_map(|p| p.peer)
    }

    /// The ports that cannot carry frames now: stopped (being restarted by the link watch), or
    /// started with their link down (a memif port whose peer is not connected, an interface
    /// without carrier). Empty once every port is up.
    pub fn down_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|p| !p.is_up())
            .map(|p| p.port.id())
            .collect()
    }

    /// The transmit queue of every frame to `to`: one per destination, so they stay in order.
    fn tx_queue_for(&self, to: MacAddr) -> u16 {
        let h =
            to.0.iter()
                .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        (h % u32::from(self.queues.tx)) as u16
    }

    fn port_for(&self, to: MacAddr) -> usize {
        self.routes
            .iter()
            .find(|(m, _)| *m == to)
            .map_or(self.shared, |&(_, i)| i)
    }

    /// The link watch, run from idle receive polls: a port to redial (a memif client) whose
    /// link has been down for [`LINK_DOWN_CHECKS`] checks [`LINK_CHECK_EVERY`] apart is
    /// stopped and started again, on the EAL's interrupt thread.
    ///
    /// A memif client connects to its server only when its port starts, and never again after a
    /// disconnect: without the watch, a server that restarts (a node killed and restarted), or
    /// that refused the client because its own port was not started yet (nodes starting
    /// together), would leave the pair cut for ever. A server port is left alone: its driver
    /// clears a gone client's state and accepts the next one by itself, and a stop in the middle
    /// of a client's handshake would only break it.
    ///
    /// The restart runs on the interrupt thread because memif's control channel runs there: a
    /// stop from this thread while a control callback ran freed the channel under it and killed
    /// the process (a restarted server, stopped by its own watch while its first client
    /// connected). See [`Port::restart_on_interrupt_thread`].
    fn watch_links(&mut self) {
        self.idle_polls += 1;
        if self.idle_polls < LINK_CHECK_POLLS {
            return;
        }
        self.idle_polls = 0;
        let now = Instant::now();
        if now < self.next_link_check {
            return;
        }
        self.next_link_check = now + LINK_CHECK_EVERY;
        for p in self.ports.iter_mut().filter(|p| p.redial) {
            p.ready();
            if p.port.restart_pending() {
                continue;
            }
            if p.is_up() {
                p.down_checks = 0;
                continue;
            }
            p.down_checks += 1;
            if p.down_checks >= LINK_DOWN_CHECKS {
                p.down_checks = 0;
                self.stats.link_restarts += 1;
                // A start that fails (a memif server not there yet) is retried at a later check;
                // the port stays stopped until then and sends nothing.
                let _ = p.port.restart_on_interrupt_thread();
            }
        }
    }

    /// Fills `rx` from the ports, starting at the next one in turn; false if nothing came.
    fn refill(&mut self) -> bool {
        self.rx.clear();
        self.rx_next = 0;
        let n = self.ports.len();
        let q = self.queues.rx;
        // Every (port, queue) once, starting after the one that delivered last.
        for k in 0..n * usize::from(q) {
            let flat = self.rx_port * usize::from(q) + usize::from(self.rx_queue) + k;
            let (i, queue) = ((flat / usize::from(q)) % n, (flat % usize::from(q)) as u16);
            if !self.ports[i].ready() {
                continue;
            }
            if self.ports[i].port.rx_burst(queue, &mut self.rx) > 0 {
                let next = flat + 1;
                self.rx_port = (next / usize::from(q)) % n;
                self.rx_queue = (next % usize::from(q)) as u16;
                self.stats.rx_packets += self.rx.len() as u64;
                return true;
            }
        }
        false
    }
}

impl DatagramLink for DpdkLink<'_> {
    type Addr = MacAddr;

    fn max_frame_bytes(&self) -> usize {
        DPDK_FRAME_BYTES
    }

    fn send_to(&mut self, frame: &[u8], to: MacAddr) -> bool {
        let Some(mut m) = self.pool.alloc() else {
            self.stats.no_mbuf += 1;
            return false;
        };
        let mut header = [0u8; ETH_HEADER_BYTES];
        header[..6].copy_from_slice(&to.0);
        header[6..12].copy_from_slice(&self.mac.0);
        header[12..].copy_from_slice(&ETHERTYPE.to_be_bytes());
        if m.extend_from_slice(&header).is_err() || m.extend_from_slice(frame).is_err() {
            self.stats.no_mbuf += 1;
            return false;
        }
        let mut tx: Burst<'_, 1> = Burst::new();
        if tx.push(m).is_err() {
            return false;
        }
        let port = &self.ports[self.port_for(to)].port;
        if !port.is_started() {
            self.stats.port_stopped += 1;
            return false;
        }
        if port.tx_burst(self.tx_queue_for(to), &mut tx) == 1 {
            true
        } else {
            // Left in the burst, freed with it.
            self.stats.tx_full += 1;
            false
        }
    }

    fn recv_from(&mut self, buf: &mut [u8]) -> LinkRecv<MacAddr> {
        if self.rx_next >= self.rx.len() && !self.refill() {
            self.watch_links();
            return LinkRecv::Empty;
        }
        let m = self.rx.iter().nth(self.rx_next).expect("below len");
        self.rx_next += 1;
        let data = m.data();
        let whole = m.pkt_len() == u32::from(m.data_len());
        if !whole || data.len() < ETH_HEADER_BYTES || data[12..14] != ETHERTYPE.to_be_bytes() {
            self.stats.foreign += 1;
            return LinkRecv::Skipped;
        }
        let dst = MacAddr(data[..6].try_into().expect("6 bytes"));
        if dst != self.mac && dst != BROADCAST {
            self.stats.not_for_me += 1;
            return LinkRecv::Skipped;
        }
        let src = MacAddr(data[6..12].try_into().expect("6 bytes"));
        let body = &data[ETH_HEADER_BYTES..];
        // A frame longer than any valid one is cut to one byte too many, which fails decoding.
        let n = body.len().min(buf.len());
        buf[..n].copy_from_slice(&body[..n]);
        LinkRecv::Frame(n, src)
    }
}

/// One node's end of the `dpdk` fabric: the shared frame layer over a [`DpdkLink`].
pub type DpdkFabric<'pool> = FrameFabric<DpdkLink<'pool>>;

impl<'pool> FrameFabric<DpdkLink<'pool>> {
    /// Opens `config.ports` and sets up the fabric of `config.me` on them.
    pub fn open(
        eal: &Eal,
        pool: &'pool PktMbufPool,
        config: DpdkConfig,
    ) -> Result<DpdkFabric<'pool>, DpdkError> {
        let link = DpdkLink::open(
            eal,
            pool,
            config.mac,
            &config.ports,
            &config.peers,
            config.queues,
        )?;
        let mut fabric = FrameFabric::with_link(
            link,
            FrameConfig {
                me: config.me,
                cluster_id: config.cluster_id,
                peers: config.peers,
                timeout: config.timeout,
                control_readers: Vec::new(),
                clients: Vec::new(),
                window_ops: config.window_ops,
            },
        )?;
        fabric.set_retransmit(config.retransmit);
        fabric.set_send_loss(config.fault_drop_ppm, config.fault_seed);
        Ok(fabric)
    }
}

/// The DPDK floor (DESIGN §8): the round trip of one frame of `payload_bytes` between two links,
/// `a` sending to `b` (at MAC `b_mac`) and `b` echoing it back to `a` (at `a_mac`), on the
/// calling thread, `samples` times after `warmup` unrecorded rounds. Each round's frame carries
/// its number, checked on the way back. Returns the round trips in nanoseconds.
pub fn frame_round_trip_ns(
    a: &mut DpdkLink<'_>,
    b: &mut DpdkLink<'_>,
    payload_bytes: usize,
    warmup: usize,
    samples: usize,
) -> Result<Vec<u64>, DpdkError> {
    if !(8..=DPDK_FRAME_BYTES).contains(&payload_bytes) {
        return Err(DpdkError::RoundTrip("payload must be 8..=1500 bytes"));
    }
    let (a_mac, b_mac) = (a.mac(), b.mac());
    let mut frame = vec![0u8; payload_bytes];
    let mut buf = vec![0u8; DPDK_FRAME_BYTES + 1];
    let mut out = Vec::with_capacity(samples);
    for round in 0..(warmup + samples) as u64 {
        frame[..8].copy_from_slice(&round.to_le_bytes());
        let start = std::time::Instant::now();
        if !a.send_to(&frame, b_mac) {
            return Err(DpdkError::RoundTrip("ping not sent"));
        }
        let n = wait_frame(b, &mut buf, a_mac)?;
        if !b.send_to(&buf[..n], a_mac) {
            return Err(DpdkError::RoundTrip("pong not sent"));
        }
        let n = wait_frame(a, &mut buf, b_mac)?;
        let rtt = start.elapsed();
        if n != payload_bytes || buf[..8] != round.to_le_bytes() {
            return Err(DpdkError::RoundTrip("the echo is not the frame sent"));
        }
        if round as usize >= warmup {
            out.push(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(out)
}

/// Polls `link` for a frame from `from` (one second at most).
fn wait_frame(link: &mut DpdkLink<'_>, buf: &mut [u8], from: MacAddr) -> Result<usize, DpdkError> {
    let give_up = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match link.recv_from(buf) {
            LinkRecv::Frame(n, src) if src == from => return Ok(n),
            LinkRecv::Frame(..) | LinkRecv::Skipped => {}
            LinkRecv::Empty => {
                if std::time::Instant::now() > give_up {
                    return Err(DpdkError::RoundTrip("no frame within a second"));
                }
                std::hint::spin_loop();
            }
        }
    }
}

/// Whether the DPDK bindings were built (without them every constructor fails with the reason).
pub fn available() -> bool {
    rapax_ffi::dpdk::available()
}

/// Why the DPDK bindings were not built, or `None` when they were.
pub fn absent_reason() -> Option<&'static str> {
    rapax_ffi::dpdk::absent_reason()
}

/// The EAL and the packet pool of this process. DPDK initialises the EAL once per process, so
/// every user in the process (the data plane's fabric, a floor measurement, tests) shares them.
#[derive(Debug)]
pub struct ProcessDpdk {
    pub eal: Eal,
    pub pool: PktMbufPool,
}

/// Starts the process's EAL with `eal_args` and a pool of `mempool_mbufs` mbufs of
/// [`MBUF_DATA_ROOM_BYTES`], on first use; later calls return the same environment (their
/// arguments are not used). A failure is kept: the EAL cannot be initialised again.
pub fn process_dpdk(
    eal_args: &[String],
    mempool_mbufs: u32,
) -> Result<&'static ProcessDpdk, DpdkError> {
    static ENV: OnceLock<Result<ProcessDpdk, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let eal = Eal::init(eal_args).map_err(|e| e.to_string())?;
        let pool = PktMbufPool::create(
            &eal,
            "rapax_frames",
            mempool_mbufs,
            0,
            MBUF_DATA_ROOM_BYTES,
            -1,
        )
        .map_err(|e| e.to_string())?;
        Ok(ProcessDpdk { eal, pool })
    })
    .as_ref()
    .map_err(|e| DpdkError::Environment(e.clone()))
}

/// EAL arguments for a process that only needs software ports (ring pairs): no hugepages, no
/// PCI, no shared config, a file prefix of its own.
pub fn software_eal_args(prefix: &str) -> Vec<String> {
    [
        "--lcores=0@(0-1)".to_string(),
        "--no-huge".into(),
        "-m".into(),
        "512".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--no-telemetry".into(),
        format!("--file-prefix={prefix}-{}", std::process::id()),
        "--log-level=lib.eal:notice".into(),
    ]
    .into()
}

/// The DPDK floor on a fresh pair of ring ports in this process (the EAL started with `env`):
/// [`frame_round_trip_ns`] of `payload_bytes`, `samples` rounds after `warmup`. Measures DPDK's
/// own path (mbufs, PMD rx/tx, framing) without a wire; on a NIC the floor is the same call on
/// two links over the NIC's ports.
pub fn ring_pair_floor_ns(
    env: &ProcessDpdk,
    payload_bytes: usize,
    warmup: usize,
    samples: usize,
) -> Result<Vec<u64>, DpdkError> {
    static PAIRS: AtomicU32 = AtomicU32::new(0);
    let k = PAIRS.fetch_add(1, Ordering::Relaxed);
    let (pa, pb) = env
        .eal
        .ring_port_pair(&format!("floor{k}a"), &format!("floor{k}b"), 1024)?;
    let (mac_a, mac_b) = (
        MacAddr([2, 0, 0, 0xf1, 0, 1]),
        MacAddr([2, 0, 0, 0xf1, 0, 2]),
    );
    let link = |port_id, mac, peer_mac| {
        DpdkLink::open(
            &env.eal,
            &env.pool,
            mac,
            &[DpdkPortSpec {
                port_id,
                peer: Some(1),
                redial: false,
            }],
            &[(1, peer_mac)],
            LinkQueues::single(256),
        )
    };
    let mut a = link(pa, mac_a, mac_b)?;
    let mut b = link(pb, mac_b, mac_a)?;
    frame_round_trip_ns(&mut a, &mut b, payload_bytes, warmup, samples)
}
