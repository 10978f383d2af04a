//! Hardware profiles and cluster files: typed TOML, validated at load.
//!
//! A [`Profile`] (`hw-profiles/*.toml`) says how one kind of host runs a node: the fabric and its
//! device, the core and idle strategy of every agent, backoff, queue and ring sizes, the pipeline
//! window and batch limits, the log geometry, and the election's period, thresholds and time-outs.
//! A [`ClusterFile`] says who is in the cluster: the nodes and their addresses, the ring of
//! acceptors in succession order, the spares, and the allowed clients.
//!
//! Both are parsed with serde (every table rejects unknown fields; the TOML error keeps its line,
//! column and field name) and then validated; a validation error names the field and its value:
//! `invalid profile field log.capacity_entries = 1000: must be a power of two`.
//! [`Profile::render`] prints the effective profile (every field, defaults filled) as TOML, as the
//! daemons do at start; [`Profile::node_config`] turns it into the protocol's [`NodeConfig`].
//! hw-profiles/README.md documents every field, its unit, its default and its limits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::election::{ElectionConfig, ElectionConfigError};
use crate::protocol::layout::{LogGeometry, ENTRY_HEADER_BYTES, LINE_BYTES};
use crate::protocol::node::{Bugs, NodeConfig};
use crate::protocol::{NodeId, MAX_NODES};

// ---- limits -------------------------------------------------------------------------------------

/// Longest duration any profile field may hold (60 s).
pub const MAX_DURATION_US: u64 = 60_000_000;
/// Longest heartbeat read period (10 s).
pub const MAX_READ_PERIOD_US: u64 = 10_000_000;
/// Highest CPU core and NUMA node index accepted (Linux's CPU_SETSIZE).
pub const MAX_CORE: usize = 1023;
/// Most entries of the log's circular array.
pub const MAX_LOG_ENTRIES: u64 = 1 << 24;
/// Largest log entry (header line plus payload).
pub const MAX_SLOT_BYTES: usize = 1 << 20;
/// Largest log region of one node (16 GiB).
pub const MAX_LOG_BYTES: u64 = 1 << 34;
/// Bytes of the batch's command count, ahead of the commands in an entry's payload.
pub const BATCH_COUNT_BYTES: usize = 4;
/// Bytes a command costs in a batch beyond its own: the batch count and its length word (an
/// upper bound for a batch of one).
pub const BATCH_COMMAND_OVERHEAD_BYTES: usize = 8;
/// Most entries of a shm channel ring.
pub const MAX_RING_ENTRIES: u64 = 1 << 20;
/// Slots the apply scan and recovery reads cover at least (see [`Profile::node_config`]).
pub const MIN_SCAN_SLOTS: u64 = 64;
/// Bytes per write when a leader streams a snapshot to a follower behind its log.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

// ---- errors -------------------------------------------------------------------------------------

fn path_prefix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML text is malformed, has an unknown field, a missing field or a value of the wrong
    /// type; the message is the toml crate's (it names the line, column and field).
    #[error("{}{source}", path_prefix(.path))]
    Parse {
        path: Option<PathBuf>,
        source: toml::de::Error,
    },
    #[error("invalid profile field {field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

/// Why a cluster file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read cluster file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{source}", path_prefix(.path))]
    Parse {
        path: Option<PathBuf>,
        source: toml::de::Error,
    },
    #[error("invalid cluster field {field} = {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
}

fn invalid(
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ProfileError {
    ProfileError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn cluster_invalid(
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ClusterError {
    ClusterError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A string as it would appear in TOML (quoted).
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn check_range<T>(field: &str, v: T, lo: T, hi: T) -> Result<(), ProfileError>
where
    T: PartialOrd + fmt::Display + Copy,
{
    if v < lo || v > hi {
        return Err(invalid(field, v, format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

/// Checks one set of `backoff` settings, naming its fields under `table`.
fn check_backoff(table: &str, b: &Backoff) -> Result<(), ProfileError> {
    check_range(&format!("{table}.spins"), b.spins, 0, 1 << 20)?;
    check_range(&format!("{table}.yields"), b.yields, 0, 1 << 20)?;
    check_range(&format!("{table}.min_park_us"), b.min_park_us, 1, 1_000_000)?;
    check_range(&format!("{table}.max_park_us"), b.max_park_us, 1, 1_000_000)?;
    if b.min_park_us > b.max_park_us {
        return Err(invalid(
            format!("{table}.min_park_us"),
            b.min_park_us,
            format!("must not exceed {table}.max_park_us ({})", b.max_park_us),
        ));
    }
    Ok(())
}

fn check_power_of_two(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), ProfileError> {
    if !v.is_power_of_two() {
        return Err(invalid(field, v, "must be a power of two"));
    }
    check_range(field, v, lo, hi)
}

// ---- the profile --------------------------------------------------------------------------------

/// A hardware profile: how one kind of host runs a rapax node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawProfile")]
pub struct Profile {
    /// Short name, e.g. `shm-local`.
    pub name: String,
    /// One line for operators.
    pub description: String,
    /// Whether the profile has been run on the hardware it describes. Defaults to true for the
    /// fabrics that need none (`shm`, `udp`, `sim`) and false for `rdma` and `dpdk`.
    pub verified_on_hardware: bool,
    pub fabric: Fabric,
    pub agents: Agents,
    pub backoff: Backoff,
    pub replication: Replication,
    pub log: LogSection,
    pub election: ElectionSection,
    pub rings: Rings,
}

/// The profile as written: `verified_on_hardware` and the shm/udp fabric tables may be left out
/// and are filled in by the conversion into [`Profile`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    verified_on_hardware: Option<bool>,
    fabric: Fabric,
    #[serde(default)]
    agents: Agents,
    #[serde(default)]
    backoff: Backoff,
    #[serde(default)]
    replication: Replication,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    election: ElectionSection,
    #[serde(default)]
    rings: Rings,
}

impl From<RawProfile> for Profile {
    fn from(raw: RawProfile) -> Profile {
        let mut fabric = raw.fabric;
        match fabric.kind {
            FabricKind::Shm if fabric.shm.is_none() => fabric.shm = Some(ShmFabric::default()),
            FabricKind::Udp if fabric.udp.is_none() => fabric.udp = Some(UdpFabric::default()),
            _ => {}
        }
        Profile {
            name: raw.name,
            description: raw.description,
            verified_on_hardware: raw
                .verified_on_hardware
                .unwrap_or(fabric.kind.verified_by_default()),
            fabric,
            agents: raw.agents,
            backoff: raw.backoff,
            replication: raw.replication,
            log: raw.log,
            election: raw.election,
            rings: raw.rings,
        }
    }
}

/// Which fabric backend carries the node's one-sided operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricKind {
    Shm,
    Udp,
    Rdma,
    Dpdk,
    Sim,
}

impl FabricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FabricKind::Shm => "shm",
            FabricKind::Udp => "udp",
            FabricKind::Rdma => "rdma",
            FabricKind::Dpdk => "dpdk",
            FabricKind::Sim => "sim",
        }
    }

    /// Whether a profile of this fabric counts as verified unless it says otherwise: the fabrics
    /// that need no special hardware do.
    pub fn verified_by_default(self) -> bool {
        matches!(self, FabricKind::Shm | FabricKind::Udp | FabricKind::Sim)
    }
}

impl fmt::Display for FabricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[fabric]`: the backend and its device settings. Only the table of `kind` may be present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    pub kind: FabricKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<ShmFabric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpFabric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaFabric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkFabric>,
}

/// `[fabric.shm]`: regions are files under `dir`, mapped by every node process of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShmFabric {
    /// Absolute directory of the region files (on a tmpfs).
    pub dir: String,
}

impl Default for ShmFabric {
    fn default() -> ShmFabric {
        ShmFabric {
            dir: "/dev/shm/rapax".to_string(),
        }
    }
}

/// `[fabric.udp]`: frames over kernel UDP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpFabric {
    /// Local `ip:port` to bind; port 0 takes the port of this node's `udp_addr` in the cluster
    /// file.
    pub bind: String,
    /// Most log operations in flight to one peer; later ones wait in posting order, so a
    /// catch-up of thousands of entries never overruns the peer's socket buffer.
    pub send_window_ops: usize,
    /// Requested kernel send and receive buffer of the socket, bytes (the kernel may cap it at
    /// `net.core.rmem_max` / `wmem_max`).
    pub socket_buffer_bytes: usize,
}

impl Default for UdpFabric {
    fn default() -> UdpFabric {
        UdpFabric {
            bind: "127.0.0.1:0".to_string(),
            send_window_ops: 64,
            socket_buffer_bytes: 4 << 20,
        }
    }
}

impl UdpFabric {
    /// The bind address (the profile must have been validated).
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
            .parse()
            .unwrap_or_else(|e| panic!("fabric.udp.bind {:?} unvalidated: {e}", self.bind))
    }
}

/// The path MTUs an RDMA port accepts.
pub const RDMA_MTUS: [u32; 5] = [256, 512, 1024, 2048, 4096];

/// `[fabric.rdma]`: RC queue pairs on an rdma-core device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdmaFabric {
    /// The verbs device, e.g. `mlx5_0` or `rxe0`. Required.
    pub device: String,
    /// The device's port (1-based).
    #[serde(default = "default_rdma_port")]
    pub port: u8,
    /// The GID table index (RoCE v2 needs the index of a v2 GID).
    #[serde(default)]
    pub gid_index: u32,
    /// Writes up to this size are posted inline (no DMA read of the source buffer).
    #[serde(default = "default_inline_bytes")]
    pub inline_bytes: u32,
    /// Send queue depth of each queue pair.
    #[serde(default = "default_wr")]
    pub max_send_wr: u32,
    /// Receive queue depth of each queue pair.
    #[serde(default = "default_wr")]
    pub max_recv_wr: u32,
    /// Path MTU: one of [`RDMA_MTUS`].
    #[serde(default = "default_rdma_mtu")]
    pub mtu: u32,
    /// Local ACK time-out of each queue pair, as the verbs exponent: 4.096 us x 2^n (14 is about
    /// 67 ms). A write to a dead peer fails after about `retry_count + 1` of these.
    #[serde(default = "default_ack_timeout_exponent")]
    pub ack_timeout_exponent: u8,
    /// Retransmissions on ACK time-out before a work request fails (0..=7).
    #[serde(default = "default_retry_count")]
    pub retry_count: u8,
    /// How daemons connect their queue pairs to peers' (see [`RdmaConnect`]).
    #[serde(default)]
    pub connect: RdmaConnect,
    /// How a leader's data plane posts a turn's writes (see [`RdmaPosting`]).
    #[serde(default)]
    pub posting: RdmaPosting,
    /// Back each node's log and control block with 2 MiB huge pages (`MAP_HUGETLB`): fewer
    /// translation entries for the NIC and the CPU, and registration that pins 512 x fewer
    /// pages. The host must have them reserved (`/proc/sys/vm/nr_hugepages`); a node that cannot
    /// map them fails to start with the reason.
    #[serde(default)]
    pub hugepages: bool,
}

/// How a leader's data plane posts the writes of a turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RdmaPosting {
    /// Every write of the turn, then a poll of the completions: on a NIC a post is a doorbell
    /// and the writes to all followers fly at once.
    #[default]
    Batch,
    /// One write, then the completions it brought, then the next; once a majority's writes
    /// have chosen a slot its client is answered before the other followers' writes are
    /// posted. For software RDMA (rxe, siw), where a post is a system call that runs the whole
    /// write, so posting every follower's write before polling puts all of them on the path
    /// of every command.
    Serial,
}

/// How the daemons of an rdma cluster connect their queue pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RdmaConnect {
    /// rdma_cm on the device: each node's `rdma_addr` is an IP address of its RDMA netdev, whose
    /// address and route rdma_cm resolves; the exchange rides in the connect's private data.
    #[default]
    Cm,
    /// Two UDP datagrams on `rdma_addr` through the kernel's network stack, for a netdev rdma_cm
    /// cannot route over (rxe on the loopback interface).
    Udp,
}

fn default_rdma_port() -> u8 {
    1
}
fn default_inline_bytes() -> u32 {
    64
}
fn default_wr() -> u32 {
    256
}
fn default_rdma_mtu() -> u32 {
    1024
}
fn default_ack_timeout_exponent() -> u8 {
    14
}
fn default_retry_count() -> u8 {
    // Not 7: rxe takes 7 as "retry for ever", so a dead peer's writes would never fail.
    6
}

/// `[fabric.dpdk]`: frames over a DPDK ethdev port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpdkFabric {
    /// Arguments for `rte_eal_init`, e.g. `["--vdev=net_memif0", "--no-pci"]`.
    pub eal_args: Vec<String>,
    /// The ethdev port id.
    pub port: u16,
    pub rx_queues: u16,
    pub tx_queues: u16,
    /// Mbufs in the packet pool (2^n - 1 is the most memory-efficient).
    pub mempool_mbufs: u32,
    /// Descriptors per receive and per transmit queue (the device may adjust them).
    pub ring_desc: u16,
    /// Most log operations in flight to one peer; later ones wait in posting order.
    pub send_window_ops: usize,
    /// Loss recovery: an unanswered request frame is sent again after this many microseconds;
    /// 0 turns recovery off (a lost frame then breaks the connection until a reconnect).
    pub retransmit_us: u64,
    /// Fault injection: frames in a million dropped on send (drills and tests; 0 in service).
    pub fault_drop_ppm: u32,
    /// memif topology: when set, the data plane adds one `net_memif` port per peer, its socket
    /// `<memif_dir>/<cluster id>-memif-<lower id>-<higher id>.sock` (the lower node id is the
    /// server), and `port` is not used. Unset: one port (`port`) reaches every peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memif_dir: Option<String>,
}

impl Default for DpdkFabric {
    fn default() -> DpdkFabric {
        DpdkFabric {
            eal_args: Vec::new(),
            port: 0,
            rx_queues: 1,
            tx_queues: 1,
            mempool_mbufs: 8191,
            ring_desc: 1024,
            send_window_ops: 64,
            retransmit_us: 200,
            fault_drop_ppm: 0,
            memif_dir: None,
        }
    }
}

/// What an agent does when a pass of its loop found no work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleKind {
    /// Busy-poll: lowest latency; needs a dedicated core.
    Spin,
    /// `sched_yield` between passes.
    Yield,
    /// Spin, then yield, then park with doubling sleeps (see [`Backoff`]); runs on any machine.
    #[default]
    Backoff,
}

impl IdleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleKind::Spin => "spin",
            IdleKind::Yield => "yield",
            IdleKind::Backoff => "backoff",
        }
    }
}

/// One agent's placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSpec {
    /// The core to pin the agent's thread to; absent: not pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
    pub idle: IdleKind,
    /// This agent's own `backoff` settings (only with `idle = "backoff"`); absent: the
    /// `[backoff]` table's. A timer-driven agent (the control plane's, which reads every
    /// `read_period_us`) can park early while the pollers of the same node keep yielding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffOverride>,
}

impl AgentSpec {
    /// The `backoff` settings this agent runs with: `table` (the profile's `[backoff]`) with
    /// this agent's own fields put over it.
    pub fn backoff(&self, table: &Backoff) -> Backoff {
        self.backoff.map_or(*table, |o| table.with(&o))
    }
}

/// `[agents.NAME].backoff`: the fields of [`Backoff`] an agent sets for itself; every field
/// left out is the `[backoff]` table's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spins: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yields: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_park_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_park_us: Option<u64>,
}

/// `[agents]`: every thread of a node and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Agents {
    /// The NUMA node to allocate registered memory on; absent: the kernel's choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<usize>,
    pub client_ingress: AgentSpec,
    pub leader: AgentSpec,
    pub follower_apply: AgentSpec,
    pub heartbeat: AgentSpec,
    pub election: AgentSpec,
}

impl Agents {
    /// The cores some agent is pinned to, each once.
    pub fn pinned_cores(&self) -> Vec<usize> {
        self.cores_where(|_| true)
    }

    /// The cores a spinning agent is pinned to (`idle = "spin"` with a `core`), each once: no
    /// other agent of the node runs there ([`crate::agent::reserve_cores`]).
    pub fn spin_cores(&self) -> Vec<usize> {
        self.cores_where(|a| a.idle == IdleKind::Spin)
    }

    /// The cores of the pinned agents that `which` picks, sorted, each once.
    fn cores_where(&self, which: impl Fn(&AgentSpec) -> bool) -> Vec<usize> {
        let mut cores: Vec<usize> = self
            .all()
            .iter()
            .filter(|(_, a)| which(a))
            .filter_map(|(_, a)| a.core)
            .collect();
        cores.sort_unstable();
        cores.dedup();
        cores
    }

    /// Every agent with its name, in a fixed order.
    pub fn all(&self) -> [(&'static str, &AgentSpec); 5] {
        [
            ("client_ingress", &self.client_ingress),
            ("leader", &self.leader),
            ("follower_apply", &self.follower_apply),
            ("heartbeat", &self.heartbeat),
            ("election", &self.election),
        ]
    }
}

/// `[backoff]`: the `backoff` idle strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Idle passes spent spinning before yielding.
    pub spins: u32,
    /// Idle passes spent yielding before parking.
    pub yields: u32,
    /// First park; each further idle pass doubles it up to `max_park_us`.
    pub min_park_us: u64,
    pub max_park_us: u64,
}

impl Backoff {
    /// These settings with `o`'s fields put over them.
    pub fn with(self, o: &BackoffOverride) -> Backoff {
        Backoff {
            spins: o.spins.unwrap_or(self.spins),
            yields: o.yields.unwrap_or(self.yields),
            min_park_us: o.min_park_us.unwrap_or(self.min_park_us),
            max_park_us: o.max_park_us.unwrap_or(self.max_park_us),
        }
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            spins: 100,
            yields: 10,
            min_park_us: 50,
            max_park_us: 1000,
        }
    }
}

/// `[replication]`: the leader's pipeline and batching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// Most slots in flight (assigned, not yet chosen).
    pub window_slots: u64,
    /// Most commands batched into one entry.
    pub batch_max_commands: usize,
    /// Most bytes of one entry's payload (the batch: count, then length and bytes per command).
    pub batch_max_bytes: usize,
    /// Most client commands queued at the leader before it answers Busy.
    pub client_queue_max: usize,
    /// Largest client command accepted.
    pub max_command_bytes: usize,
}

impl Default for Replication {
    fn default() -> Replication {
        Replication {
            window_slots: 64,
            batch_max_commands: 64,
            batch_max_bytes: 1024 - ENTRY_HEADER_BYTES - BATCH_COUNT_BYTES,
            client_queue_max: 1024,
            max_command_bytes: 512,
        }
    }
}

/// `[log]`: the shape of the replicated log in registered memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Entries of the circular array.
    pub capacity_entries: u64,
    /// Bytes per entry: a 64-byte header line plus the payload.
    pub slot_bytes: usize,
    /// A snapshot of the state machine is taken every this many applied entries.
    pub snapshot_every_entries: u64,
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            capacity_entries: 1 << 16,
            slot_bytes: 1024,
            snapshot_every_entries: 1 << 14,
        }
    }
}

/// `[election]`: pull-score failure detection and the handover's time-outs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectionSection {
    /// How often each peer's heartbeat counter is read.
    pub read_period_us: u64,
    /// Scores saturate here.
    pub score_cap: u32,
    /// An alive peer whose score drops to or below this is failed.
    pub fail_threshold: u32,
    /// A failed peer whose score rises to or above this is alive again.
    pub recover_threshold: u32,
    /// Period of retries: permission requests, acks, re-sync of absent followers, probes.
    pub retry_us: u64,
    /// A candidate without a majority of acks after this long gives up.
    pub candidate_timeout_us: u64,
    /// After stepping down, a node waits this long before it may stand again.
    pub stepdown_holdoff_us: u64,
    /// Ring repair: the leader replaces an acceptor its control plane has held dead this long
    /// with a live, caught-up spare (0: never; operators change the ring with `rapax
    /// reconfig`).
    pub replace_after_ms: u64,
    /// shm only: how long a peer whose data plane process runs (the host's process table says
    /// so: preempted, not dead) may leave its heartbeat unchanged before the misses count
    /// against it; a peer whose process has gone fails at the first read that finds it so
    /// (0: heartbeats alone decide).
    pub runnable_grace_us: u64,
}

impl Default for ElectionSection {
    fn default() -> ElectionSection {
        ElectionSection {
            read_period_us: 1000,
            score_cap: 8,
            fail_threshold: 2,
            recover_threshold: 6,
            retry_us: 2000,
            candidate_timeout_us: 20_000,
            stepdown_holdoff_us: 10_000,
            replace_after_ms: 0,
            runnable_grace_us: 0,
        }
    }
}

/// `[rings]`: the shm channel between a node's control plane and data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rings {
    /// Control plane → data plane commands.
    pub command_ring_entries: u64,
    /// Data plane → control plane events.
    pub event_ring_entries: u64,
}

impl Default for Rings {
    fn default() -> Rings {
        Rings {
            command_ring_entries: 256,
            event_ring_entries: 1024,
        }
    }
}

/// Converts a duration to ticks of `tick_us`, rounding up, at least 1.
fn to_ticks(us: u64, tick_us: u64) -> u64 {
    us.div_ceil(tick_us).max(1)
}

impl Profile {
    /// Reads, parses and validates the profile at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let profile: Profile = toml::from_str(&text).map_err(|source| ProfileError::Parse {
            path: Some(path.to_path_buf()),
            source,
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// Parses and validates a profile.
    pub fn from_toml_str(text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile =
            toml::from_str(text).map_err(|source| ProfileError::Parse { path: None, source })?;
        profile.validate()?;
        Ok(profile)
    }

    /// The effective profile as TOML: every field, defaults filled (absent optional fields, such
    /// as an unpinned agent's `core`, are left out). Parsing it gives back an equal profile.
    pub fn render(&self) -> String {
        toml::to_string(self).expect("a profile always serializes to TOML")
    }

    /// Checks every field and every rule between fields; the first violation is returned.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", quoted(&self.name), "must not be empty"));
        }
        self.validate_fabric()?;
        self.validate_agents()?;
        self.validate_backoff()?;
        self.validate_log()?;
        self.validate_replication()?;
        self.validate_election()?;
        let r = &self.rings;
        check_power_of_two(
            "rings.command_ring_entries",
            r.command_ring_entries,
            2,
            MAX_RING_ENTRIES,
        )?;
        check_power_of_two(
            "rings.event_ring_entries",
            r.event_ring_entries,
            2,
            MAX_RING_ENTRIES,
        )?;
        Ok(())
    }

    fn validate_fabric(&self) -> Result<(), ProfileError> {
        let f = &self.fabric;
        let kind = f.kind;
        let sections = [
            (FabricKind::Shm, f.shm.is_some()),
            (FabricKind::Udp, f.udp.is_some()),
            (FabricKind::Rdma, f.rdma.is_some()),
            (FabricKind::Dpdk, f.dpdk.is_some()),
        ];
        for (k, present) in sections {
            if present && k != kind {
                return Err(invalid(
                    format!("fabric.{k}"),
                    "present",
                    format!(
                        "only the table of the fabric in use may be present, and \
                         fabric.kind = \"{kind}\""
                    ),
                ));
            }
        }
        match kind {
            FabricKind::Shm => {
                if let Some(shm) = &f.shm {
                    if !shm.dir.starts_with('/') {
                        return Err(invalid(
                            "fabric.shm.dir",
                            quoted(&shm.dir),
                            "must be an absolute path",
                        ));
                    }
                }
            }
            FabricKind::Udp => {
                if let Some(udp) = &f.udp {
                    if udp.bind.parse::<SocketAddr>().is_err() {
                        return Err(invalid(
                            "fabric.udp.bind",
                            quoted(&udp.bind),
                            "must be a socket address ip:port (port 0: the node's udp_addr port)",
                        ));
                    }
                    check_range("fabric.udp.send_window_ops", udp.send_window_ops, 1, 4096)?;
                    check_range(
                        "fabric.udp.socket_buffer_bytes",
                        udp.socket_buffer_bytes,
                        64 << 10,
                        1 << 28,
                    )?;
                }
            }
            FabricKind::Rdma => {
                let Some(r) = &f.rdma else {
                    return Err(invalid(
                        "fabric.rdma",
                        "missing",
                        "required when fabric.kind = \"rdma\"",
                    ));
                };
                if r.device.trim().is_empty() {
                    return Err(invalid(
                        "fabric.rdma.device",
                        quoted(&r.device),
                        "must name a verbs device, e.g. \"mlx5_0\" or \"rxe0\"",
                    ));
                }
                check_range("fabric.rdma.port", r.port, 1, u8::MAX)?;
                check_range("fabric.rdma.gid_index", r.gid_index, 0, 255)?;
                check_range("fabric.rdma.inline_bytes", r.inline_bytes, 0, 1024)?;
                check_range("fabric.rdma.max_send_wr", r.max_send_wr, 1, 32768)?;
                check_range("fabric.rdma.max_recv_wr", r.max_recv_wr, 1, 32768)?;
                if !RDMA_MTUS.contains(&r.mtu) {
                    return Err(invalid(
                        "fabric.rdma.mtu",
                        r.mtu,
                        "must be one of 256, 512, 1024, 2048, 4096",
                    ));
                }
                // 0 means an infinite time-out: a dead peer would hang its writers (contract 4).
                check_range(
                    "fabric.rdma.ack_timeout_exponent",
                    r.ack_timeout_exponent,
                    1,
                    31,
                )?;
                check_range("fabric.rdma.retry_count", r.retry_count, 0, 7)?;
            }
            FabricKind::Dpdk => {
                let Some(d) = &f.dpdk else {
                    return Err(invalid(
                        "fabric.dpdk",
                        "missing",
                        "required when fabric.kind = \"dpdk\"",
                    ));
                };
                if let Some(i) = d.eal_args.iter().position(|a| a.trim().is_empty()) {
                    return Err(invalid(
                        format!("fabric.dpdk.eal_args[{i}]"),
                        quoted(&d.eal_args[i]),
                        "must not be empty",
                    ));
                }
                check_range("fabric.dpdk.rx_queues", d.rx_queues, 1, 64)?;
                check_range("fabric.dpdk.tx_queues", d.tx_queues, 1, 64)?;
                check_range("fabric.dpdk.mempool_mbufs", d.mempool_mbufs, 512, 1 << 24)?;
                check_range("fabric.dpdk.ring_desc", d.ring_desc, 64, 16384)?;
                check_range("fabric.dpdk.send_window_ops", d.send_window_ops, 1, 65536)?;
                check_range(
                    "fabric.dpdk.retransmit_us",
                    d.retransmit_us,
                    0,
                    MAX_DURATION_US,
                )?;
                check_range("fabric.dpdk.fault_drop_ppm", d.fault_drop_ppm, 0, 1_000_000)?;
                if let Some(dir) = &d.memif_dir {
                    if !dir.starts_with('/') || dir.contains(',') {
                        return Err(invalid(
                            "fabric.dpdk.memif_dir",
                            quoted(dir),
                            "must be an absolute directory without commas",
                        ));
                    }
                }
            }
            FabricKind::Sim => {}
        }
        Ok(())
    }

    fn validate_agents(&self) -> Result<(), ProfileError> {
        let a = &self.agents;
        if let Some(n) = a.numa_node {
            check_range("agents.numa_node", n, 0, MAX_CORE)?;
        }
        let mut by_core: BTreeMap<usize, &'static str> = BTreeMap::new();
        for (name, spec) in a.all() {
            if let Some(core) = spec.core {
                check_range(&format!("agents.{name}.core"), core, 0, MAX_CORE)?;
            }
            if spec.idle == IdleKind::Spin && spec.core.is_none() {
                return Err(invalid(
                    format!("agents.{name}.idle"),
                    quoted(spec.idle.as_str()),
                    format!(
                        "busy-spinning needs a dedicated core: set agents.{name}.core or use \
                         \"backoff\""
                    ),
                ));
            }
        }
        // A spinning agent must have its core to itself.
        for (name, spec) in a.all() {
            let Some(core) = spec.core else { continue };
            if let Some(&other) = by_core.get(&core) {
                let other_spec = a.all().into_iter().find(|(n, _)| *n == other).unwrap().1;
                if spec.idle == IdleKind::Spin || other_spec.idle == IdleKind::Spin {
                    return Err(invalid(
                        format!("agents.{name}.core"),
                        core,
                        format!(
                            "core {core} is also agents.{other}.core, and a spinning agent \
                             needs its core to itself"
                        ),
                    ));
                }
            } else {
                by_core.insert(core, name);
            }
        }
        Ok(())
    }

    fn validate_backoff(&self) -> Result<(), ProfileError> {
        check_backoff("backoff", &self.backoff)?;
        for (name, spec) in self.agents.all() {
            if spec.backoff.is_none() {
                continue;
            }
            let table = format!("agents.{name}.backoff");
            if spec.idle != IdleKind::Backoff {
                return Err(invalid(
                    format!("agents.{name}.idle"),
                    quoted(spec.idle.as_str()),
                    format!("must be \"backoff\" when {table} is given"),
                ));
            }
            check_backoff(&table, &spec.backoff(&self.backoff))?;
        }
        Ok(())
    }

    fn validate_log(&self) -> Result<(), ProfileError> {
        let l = &self.log;
        check_power_of_two(
            "log.capacity_entries",
            l.capacity_entries,
            2,
            MAX_LOG_ENTRIES,
        )?;
        if !l.slot_bytes.is_multiple_of(LINE_BYTES) {
            return Err(invalid(
                "log.slot_bytes",
                l.slot_bytes,
                "must be a multiple of 64 (a cache line)",
            ));
        }
        check_range(
            "log.slot_bytes",
            l.slot_bytes,
            2 * LINE_BYTES,
            MAX_SLOT_BYTES,
        )?;
        let log_bytes = l.capacity_entries as u128 * l.slot_bytes as u128;
        if log_bytes > u128::from(MAX_LOG_BYTES) {
            return Err(invalid(
                "log.capacity_entries",
                l.capacity_entries,
                format!(
                    "capacity_entries × log.slot_bytes ({}) is {log_bytes} bytes, over the \
                     limit of {MAX_LOG_BYTES}",
                    l.slot_bytes
                ),
            ));
        }
        check_range(
            "log.snapshot_every_entries",
            l.snapshot_every_entries,
            1,
            (l.capacity_entries / 4).max(1),
        )
        .map_err(|_| {
            invalid(
                "log.snapshot_every_entries",
                l.snapshot_every_entries,
                format!(
                    "must be between 1 and a quarter of log.capacity_entries ({}): a node \
                     restarted with its memory replays its log from its last checkpoint, and \
                     the log is reused half a log behind",
                    l.capacity_entries
                ),
            )
        })?;
        // The checks LogGeometry makes, so node_config cannot fail.
        LogGeometry::new(l.capacity_entries, l.slot_bytes)
            .map_err(|e| invalid("log", format!("{l:?}"), e.to_string()))?;
        Ok(())
    }

    fn validate_replication(&self) -> Result<(), ProfileError> {
        let r = &self.replication;
        let l = &self.log;
        check_range("replication.window_slots", r.window_slots, 1, 1 << 20)?;
        if r.window_slots > l.capacity_entries / 4 {
            return Err(invalid(
                "replication.window_slots",
                r.window_slots,
                format!(
                    "must be at most a quarter of log.capacity_entries ({}): the log is reused \
                     half a log behind the slowest active replica",
                    l.capacity_entries
                ),
            ));
        }
        check_range(
            "replication.batch_max_commands",
            r.batch_max_commands,
            1,
            1 << 16,
        )?;
        check_range(
            "replication.client_queue_max",
            r.client_queue_max,
            1,
            1 << 20,
        )?;
        check_range(
            "replication.max_command_bytes",
            r.max_command_bytes,
            1,
            MAX_SLOT_BYTES,
        )?;
        let room = l.slot_bytes - ENTRY_HEADER_BYTES - BATCH_COUNT_BYTES;
        if r.batch_max_bytes > room {
            return Err(invalid(
                "replication.batch_max_bytes",
                r.batch_max_bytes,
                format!(
                    "must fit in log.slot_bytes ({}) - 64 (entry header) - 4 (batch count) = \
                     {room}",
                    l.slot_bytes
                ),
            ));
        }
        if r.max_command_bytes + BATCH_COMMAND_OVERHEAD_BYTES > r.batch_max_bytes {
            return Err(invalid(
                "replication.max_command_bytes",
                r.max_command_bytes,
                format!(
                    "max_command_bytes + 8 (batch count and length words) must fit in \
                     replication.batch_max_bytes ({})",
                    r.batch_max_bytes
                ),
            ));
        }
        Ok(())
    }

    fn validate_election(&self) -> Result<(), ProfileError> {
        let e = &self.election;
        // The protocol's own rules, checked on the microsecond values.
        let cfg = ElectionConfig {
            read_period_ticks: e.read_period_us,
            score_cap: e.score_cap,
            fail_threshold: e.fail_threshold,
            recover_threshold: e.recover_threshold,
        };
        cfg.validate().map_err(|err| match err {
            ElectionConfigError::ZeroReadPeriod(v) => {
                invalid("election.read_period_us", v, "must be at least 1")
            }
            ElectionConfigError::FailNotBelowRecover {
                fail_threshold,
                recover_threshold,
            } => invalid(
                "election.fail_threshold",
                fail_threshold,
                format!("must be below election.recover_threshold ({recover_threshold})"),
            ),
            ElectionConfigError::RecoverAboveCap {
                recover_threshold,
                score_cap,
            } => invalid(
                "election.recover_threshold",
                recover_threshold,
                format!("must not exceed election.score_cap ({score_cap})"),
            ),
        })?;
        check_range(
            "election.read_period_us",
            e.read_period_us,
            1,
            MAX_READ_PERIOD_US,
        )?;
        check_range("election.score_cap", e.score_cap, 1, 1000)?;
        check_range("election.retry_us", e.retry_us, 1, MAX_DURATION_US)?;
        check_range(
            "election.candidate_timeout_us",
            e.candidate_timeout_us,
            1,
            MAX_DURATION_US,
        )?;
        if e.candidate_timeout_us < e.retry_us {
            return Err(invalid(
                "election.candidate_timeout_us",
                e.candidate_timeout_us,
                format!(
                    "must be at least election.retry_us ({}) so a candidate retries once",
                    e.retry_us
                ),
            ));
        }
        check_range(
            "election.stepdown_holdoff_us",
            e.stepdown_holdoff_us,
            0,
            MAX_DURATION_US,
        )?;
        check_range(
            "election.replace_after_ms",
            e.replace_after_ms,
            0,
            MAX_DURATION_US / 1000,
        )?;
        check_range(
            "election.runnable_grace_us",
            e.runnable_grace_us,
            0,
            MAX_DURATION_US,
        )?;
        if e.runnable_grace_us != 0 && self.fabric.kind != FabricKind::Shm {
            return Err(invalid(
                "election.runnable_grace_us",
                e.runnable_grace_us,
                format!(
                    "applies to the shm fabric only (this profile's is {}): elsewhere a peer's \
                     process is on another host; set it to 0",
                    self.fabric.kind.as_str()
                ),
            ));
        }
        if e.replace_after_ms != 0 && e.replace_after_ms * 1000 < e.candidate_timeout_us {
            return Err(invalid(
                "election.replace_after_ms",
                e.replace_after_ms,
                format!(
                    "must be 0 (never) or at least election.candidate_timeout_us ({} us): a \
                     fail-over must not look like a dead acceptor",
                    e.candidate_timeout_us
                ),
            ));
        }
        Ok(())
    }

    /// The protocol configuration of node `id` in `ring`, with durations converted to ticks of
    /// `tick_us` microseconds (rounded up, at least one tick). The apply scan and the recovery
    /// read chunk cover `max(64, 2 × window_slots)` slots, at most the log's capacity.
    ///
    /// Panics if `tick_us` is 0 or the profile is invalid (validate it at load).
    /// The log's geometry (panics if the profile was not validated).
    pub fn geometry(&self) -> LogGeometry {
        LogGeometry::new(self.log.capacity_entries, self.log.slot_bytes)
            .expect("validated log geometry")
    }

    pub fn node_config(&self, id: NodeId, ring: Vec<NodeId>, tick_us: u64) -> NodeConfig {
        assert!(tick_us > 0, "tick_us must be at least 1");
        if let Err(e) = self.validate() {
            panic!("node_config of an invalid profile: {e}");
        }
        let geometry = self.geometry();
        let r = &self.replication;
        let e = &self.election;
        let scan = (2 * r.window_slots)
            .max(MIN_SCAN_SLOTS)
            .min(self.log.capacity_entries);
        NodeConfig {
            id,
            ring,
            spares: Vec::new(),
            geometry,
            window_slots: r.window_slots,
            batch_max_commands: r.batch_max_commands,
            batch_max_bytes: r.batch_max_bytes,
            client_queue_max: r.client_queue_max,
            election: ElectionConfig {
                read_period_ticks: to_ticks(e.read_period_us, tick_us),
                score_cap: e.score_cap,
                fail_threshold: e.fail_threshold,
                recover_threshold: e.recover_threshold,
            },
            retry_ticks: to_ticks(e.retry_us, tick_us),
            candidate_timeout_ticks: to_ticks(e.candidate_timeout_us, tick_us),
            stepdown_holdoff_ticks: to_ticks(e.stepdown_holdoff_us, tick_us),
            replace_after_ticks: if e.replace_after_ms == 0 {
                0
            } else {
                to_ticks(e.replace_after_ms * 1000, tick_us)
            },
            apply_scan_slots: scan,
            read_chunk_slots: scan,
            checkpoint_every: self.log.snapshot_every_entries,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
            external_election: false,
            bugs: Bugs::default(),
        }
    }
}

// ---- the cluster file ---------------------------------------------------------------------------

/// A cluster: its nodes, the ring of acceptors in succession order, the spares and the clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub name: String,
    /// The acceptors, in leader-succession order (an odd number).
    pub ring: Vec<NodeId>,
    /// Nodes that can replace a failed acceptor.
    #[serde(default)]
    pub spares: Vec<NodeId>,
    /// `[[node]]` tables.
    #[serde(rename = "node", default)]
    pub nodes: Vec<ClusterNode>,
    /// `[[client]]` tables: the clients allowed to submit commands.
    #[serde(rename = "client", default)]
    pub clients: Vec<ClusterClient>,
}

/// One `[[node]]` of a cluster file; each fabric reads the address it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Below [`MAX_NODES`]; unique.
    pub id: NodeId,
    /// Host name, for operators and tools.
    pub host: String,
    /// Overrides the profile's `fabric.shm.dir` for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_dir: Option<String>,
    /// `ip:port` of the node's UDP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_addr: Option<String>,
    /// `ip:port` of the node's control-plane UDP endpoint (its heartbeat reads on `udp`); when
    /// absent, the port after `udp_addr`'s port plus 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_addr: Option<String>,
    /// `ip:port` of the node's rdma connection handshake (UDP; `fabric::rdma::net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_addr: Option<String>,
    /// MAC address of the node's DPDK port, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk_mac: Option<String>,
}

/// Clients listed in a local cluster file ([`ClusterFile::local`]).
pub const LOCAL_CLIENTS: usize = 32;

/// One `[[client]]` of a cluster file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterClient {
    pub id: u64,
    /// `ip:port` the client sends from, when it uses UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_addr: Option<String>,
}

/// Parses a MAC address written as six colon-separated pairs of hex digits.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_addr(s: &Option<String>) -> Option<SocketAddr> {
    s.as_ref().map(|a| {
        a.parse()
            .unwrap_or_else(|e| panic!("address {a:?} unvalidated: {e}"))
    })
}

impl ClusterNode {
    /// The node's UDP address (the cluster file must have been validated).
    pub fn udp_socket_addr(&self) -> Option<SocketAddr> {
        parse_addr(&self.udp_addr)
    }

    /// The node's control-plane UDP address (the cluster file must have been validated).
    pub fn control_socket_addr(&self) -> Option<SocketAddr> {
        parse_addr(&self.control_addr).or_else(|| {
            let a = self.udp_socket_addr()?;
            Some(SocketAddr::new(a.ip(), a.port().checked_add(64)?))
        })
    }

    /// The node's rdma handshake address (the cluster file must have been validated).
    pub fn rdma_socket_addr(&self) -> Option<SocketAddr> {
        parse_addr(&self.rdma_addr)
    }

    /// The node's DPDK MAC (the cluster file must have been validated).
    pub fn dpdk_mac_bytes(&self) -> Option<[u8; 6]> {
        self.dpdk_mac
            .as_ref()
            .map(|m| parse_mac(m).unwrap_or_else(|| panic!("MAC {m:?} unvalidated")))
    }
}

fn ids(list: &[NodeId]) -> String {
    format!("{list:?}")
}

impl ClusterFile {
    /// Reads, parses and validates the cluster file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterFile, ClusterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cluster: ClusterFile = toml::from_str(&text).map_err(|source| ClusterError::Parse {
            path: Some(path.to_path_buf()),
            source,
        })?;
        cluster.validate()?;
        Ok(cluster)
    }

    /// Parses and validates a cluster file.
    pub fn from_toml_str(text: &str) -> Result<ClusterFile, ClusterError> {
        let cluster: ClusterFile =
            toml::from_str(text).map_err(|source| ClusterError::Parse { path: None, source })?;
        cluster.validate()?;
        Ok(cluster)
    }

    /// The cluster as TOML; parsing it gives back an equal cluster.
    pub fn render(&self) -> String {
        toml::to_string(self).expect("a cluster file always serializes to TOML")
    }

    /// A local cluster of `n` nodes (ids `0..n`, host `localhost`, UDP addresses
    /// `127.0.0.1:base_udp_port + i`). The ring is every node when `n` is odd; when `n` is even
    /// the last node is a spare, so the ring stays odd.
    ///
    /// Panics unless `1 <= n <= MAX_NODES` and the ports fit below 65536.
    pub fn local(n: usize, base_udp_port: u16) -> ClusterFile {
        assert!(
            (1..=MAX_NODES).contains(&n),
            "a cluster has 1..={MAX_NODES} nodes, not {n}"
        );
        assert!(
            usize::from(base_udp_port) + n - 1 <= usize::from(u16::MAX),
            "UDP ports {base_udp_port}.. for {n} nodes overflow"
        );
        assert!(
            usize::from(base_udp_port) + 128 + LOCAL_CLIENTS <= usize::from(u16::MAX),
            "UDP ports {base_udp_port}.. for clients overflow"
        );
        let all: Vec<NodeId> = (0..n).map(|i| i as NodeId).collect();
        let acceptors = if n.is_multiple_of(2) { n - 1 } else { n };
        let cluster = ClusterFile {
            name: format!("local-{n}"),
            ring: all[..acceptors].to_vec(),
            spares: all[acceptors..].to_vec(),
            nodes: all
                .iter()
                .map(|&id| ClusterNode {
                    id,
                    host: "localhost".to_string(),
                    shm_dir: None,
                    udp_addr: Some(format!("127.0.0.1:{}", base_udp_port + u16::from(id))),
                    control_addr: Some(format!("127.0.0.1:{}", base_udp_port + 64 + u16::from(id))),
                    rdma_addr: None,
                    dpdk_mac: None,
                })
                .collect(),
            clients: (0..LOCAL_CLIENTS)
                .map(|k| ClusterClient {
                    id: k as u64,
                    udp_addr: Some(format!("127.0.0.1:{}", base_udp_port + 128 + k as u16)),
                })
                .collect(),
        };
        if let Err(e) = cluster.validate() {
            panic!("local cluster invalid: {e}");
        }
        cluster
    }

    /// The cluster's id on the wire: a hash of its name, so two clusters on one network (or a
    /// test cluster beside a production one) drop each other's frames.
    pub fn cluster_id(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.name.as_bytes())
    }

    /// Every node in succession order at epoch 0: the ring, then the spares.
    pub fn succession(&self) -> Vec<NodeId> {
        self.ring.iter().chain(&self.spares).copied().collect()
    }

    /// How many node ids a fabric must map: one past the highest id.
    pub fn node_slots(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| usize::from(n.id) + 1)
            .max()
            .unwrap_or(0)
    }

    /// Every other node's data-plane UDP address (the peers node `me` posts to).
    pub fn udp_peers(&self, me: NodeId) -> Vec<(NodeId, SocketAddr)> {
        self.nodes
            .iter()
            .filter(|p| p.id != me)
            .filter_map(|p| Some((p.id, p.udp_socket_addr()?)))
            .collect()
    }

    /// Every member but `me` with its `rdma_addr`, or the first member that has none.
    pub fn rdma_peers(&self, me: NodeId) -> Result<Vec<(NodeId, SocketAddr)>, NodeId> {
        self.nodes
            .iter()
            .filter(|p| p.id != me)
            .map(|p| p.rdma_socket_addr().map(|a| (p.id, a)).ok_or(p.id))
            .collect()
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Checks every field and every rule between fields; the first violation is returned.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.name.trim().is_empty() {
            return Err(cluster_invalid(
                "name",
                quoted(&self.name),
                "must not be empty",
            ));
        }
        let mut declared = BTreeSet::new();
        let mut udp_seen: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = format!("node[{i}]");
            if usize::from(n.id) >= MAX_NODES {
                return Err(cluster_invalid(
                    format!("{at}.id"),
                    n.id,
                    format!("must be below {MAX_NODES} (MAX_NODES)"),
                ));
            }
            if !declared.insert(n.id) {
                return Err(cluster_invalid(
                    format!("{at}.id"),
                    n.id,
                    "is declared by an earlier [[node]] too",
                ));
            }
            if n.host.trim().is_empty() {
                return Err(cluster_invalid(
                    format!("{at}.host"),
                    quoted(&n.host),
                    "must not be empty",
                ));
            }
            if let Some(dir) = &n.shm_dir {
                if !dir.starts_with('/') {
                    return Err(cluster_invalid(
                        format!("{at}.shm_dir"),
                        quoted(dir),
                        "must be an absolute path",
                    ));
                }
            }
            if let Some(a) = &n.udp_addr {
                let Ok(addr) = a.parse::<SocketAddr>() else {
                    return Err(cluster_invalid(
                        format!("{at}.udp_addr"),
                        quoted(a),
                        "must be a socket address ip:port",
                    ));
                };
                if addr.port() == 0 {
                    return Err(cluster_invalid(
                        format!("{at}.udp_addr"),
                        quoted(a),
                        "must name a port (not 0): peers send to it",
                    ));
                }
                if let Some(other) = udp_seen.insert(addr, n.id) {
                    return Err(cluster_invalid(
                        format!("{at}.udp_addr"),
                        quoted(a),
                        format!("is node {other}'s udp_addr too"),
                    ));
                }
            }
            if let Some(a) = &n.control_addr {
                if a.parse::<SocketAddr>().map_or(true, |a| a.port() == 0) {
                    return Err(cluster_invalid(
                        format!("{at}.control_addr"),
                        quoted(a),
                        "must be a socket address ip:port with a port (not 0)",
                    ));
                }
            }
            if let Some(a) = &n.rdma_addr {
                if a.parse::<SocketAddr>().is_err() {
                    return Err(cluster_invalid(
                        format!("{at}.rdma_addr"),
                        quoted(a),
                        "must be a socket address ip:port",
                    ));
                }
            }
            if let Some(m) = &n.dpdk_mac {
                if parse_mac(m).is_none() {
                    return Err(cluster_invalid(
                        format!("{at}.dpdk_mac"),
                        quoted(m),
                        "must be a MAC address aa:bb:cc:dd:ee:ff",
                    ));
                }
            }
        }
        if self.ring.is_empty() || self.ring.len().is_multiple_of(2) {
            return Err(cluster_invalid(
                "ring",
                ids(&self.ring),
                "must hold an odd number of acceptors (2f + 1)",
            ));
        }
        let mut in_ring = BTreeSet::new();
        for &id in &self.ring {
            if !in_ring.insert(id) {
                return Err(cluster_invalid(
                    "ring",
                    ids(&self.ring),
                    format!("node {id} appears twice"),
                ));
            }
            if !declared.contains(&id) {
                return Err(cluster_invalid(
                    "ring",
                    ids(&self.ring),
                    format!("node {id} is not declared by a [[node]]"),
                ));
            }
        }
        let mut in_spares = BTreeSet::new();
        for &id in &self.spares {
            if !in_spares.insert(id) {
                return Err(cluster_invalid(
                    "spares",
                    ids(&self.spares),
                    format!("node {id} appears twice"),
                ));
            }
            if in_ring.contains(&id) {
                return Err(cluster_invalid(
                    "spares",
                    ids(&self.spares),
                    format!("node {id} is in the ring too"),
                ));
            }
            if !declared.contains(&id) {
                return Err(cluster_invalid(
                    "spares",
                    ids(&self.spares),
                    format!("node {id} is not declared by a [[node]]"),
                ));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !in_ring.contains(&n.id) && !in_spares.contains(&n.id) {
                return Err(cluster_invalid(
                    format!("node[{i}].id"),
                    n.id,
                    "is in neither ring nor spares",
                ));
            }
        }
        let mut clients = BTreeSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if !clients.insert(c.id) {
                return Err(cluster_invalid(
                    format!("client[{i}].id"),
                    c.id,
                    "is declared by an earlier [[client]] too",
                ));
            }
            if let Some(a) = &c.udp_addr {
                if a.parse::<SocketAddr>().is_err() {
                    return Err(cluster_invalid(
                        format!("client[{i}].udp_addr"),
                        quoted(a),
                        "must be a socket address ip:port",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that every node has the address `profile`'s fabric needs (`udp_addr` for udp,
    /// `rdma_addr` for rdma, `dpdk_mac` for dpdk).
    pub fn check_for(&self, profile: &Profile) -> Result<(), ClusterError> {
        let kind = profile.fabric.kind;
        for (i, n) in self.nodes.iter().enumerate() {
            let (field, present) = match kind {
                FabricKind::Udp => ("udp_addr", n.udp_addr.is_some()),
                FabricKind::Rdma => ("rdma_addr", n.rdma_addr.is_some()),
                FabricKind::Dpdk => ("dpdk_mac", n.dpdk_mac.is_some()),
                FabricKind::Shm | FabricKind::Sim => continue,
            };
            if !present {
                return Err(cluster_invalid(
                    format!("node[{i}].{field}"),
                    "missing",
                    format!(
                        "required by profile {:?} (fabric.kind = \"{kind}\")",
                        profile.name
                    ),
                ));
            }
            // rdma and dpdk data planes answer the control planes' heartbeat reads on UDP.
            if matches!(kind, FabricKind::Rdma | FabricKind::Dpdk) && n.udp_addr.is_none() {
                return Err(cluster_invalid(
                    format!("node[{i}].udp_addr"),
                    "missing",
                    format!(
                        "required by profile {:?} (fabric.kind = \"{kind}\": the data plane \
                         answers heartbeat reads there)",
                        profile.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"t\"\n[fabric]\nkind = \"shm\"\n";

    fn base() -> Profile {
        Profile::from_toml_str(MINIMAL).expect("minimal profile is valid")
    }

    /// Asserts `p` fails validation on `field` with `value`, and that the message names both.
    #[track_caller]
    fn expect_invalid(p: &Profile, field: &str, value: &str) -> String {
        let err = p.validate().expect_err("profile should be invalid");
        let msg = err.to_string();
        match &err {
            ProfileError::Invalid {
                field: f, value: v, ..
            } => {
                assert_eq!(f, field, "wrong field in: {msg}");
                assert_eq!(v, value, "wrong value in: {msg}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(
            msg.starts_with(&format!("invalid profile field {field} = {value}: ")),
            "{msg}"
        );
        msg
    }

    #[test]
    fn minimal_profile_gets_every_default() {
        let p = base();
        assert!(p.verified_on_hardware);
        assert_eq!(p.fabric.shm, Some(ShmFabric::default()));
        assert_eq!(p.fabric.shm.as_ref().unwrap().dir, "/dev/shm/rapax");
        assert_eq!(p.agents, Agents::default());
        assert_eq!(p.log, LogSection::default());
        assert_eq!(p.election, ElectionSection::default());
        assert_eq!(p.replication, Replication::default());
        assert_eq!(p.backoff, Backoff::default());
        assert_eq!(p.rings, Rings::default());
        let udp = Profile::from_toml_str("name = \"u\"\n[fabric]\nkind = \"udp\"\n").unwrap();
        assert_eq!(
            udp.fabric.udp.as_ref().unwrap().bind_addr().to_string(),
            "127.0.0.1:0"
        );
    }

    #[test]
    fn pinned_and_spin_cores_are_the_agents_cores_each_once() {
        let mut p = base();
        assert_eq!(p.agents.pinned_cores(), Vec::<usize>::new());
        p.agents.leader.core = Some(3);
        p.agents.election.core = Some(1);
        p.agents.heartbeat.core = Some(3);
        assert_eq!(p.agents.pinned_cores(), vec![1, 3]);
        let shm = Profile::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../hw-profiles/shm-local.toml"
        ))
        .expect("shm-local");
        assert_eq!(shm.agents.pinned_cores(), vec![1]);
        assert_eq!(shm.agents.spin_cores(), vec![1]);
        // Pinned but not spinning: not reserved.
        p.agents.election.idle = IdleKind::Spin;
        assert_eq!(p.agents.spin_cores(), vec![1]);
        p.agents.leader.idle = IdleKind::Spin;
        assert_eq!(p.agents.spin_cores(), vec![1, 3]);
    }

    #[test]
    fn error_display_matches_the_documented_form() {
        let mut p = base();
        p.log.capacity_entries = 1000;
        let msg = expect_invalid(&p, "log.capacity_entries", "1000");
        assert_eq!(
            msg,
            "invalid profile field log.capacity_entries = 1000: must be a power of two"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        for (text, name) in [
            (format!("{MINIMAL}bogus = 1\n"), "bogus"),
            (format!("{MINIMAL}[log]\ncapacity = 8\n"), "capacity"),
            (format!("{MINIMAL}[agents.leader]\ncpu = 3\n"), "cpu"),
            (
                format!("{MINIMAL}[agents.election.backoff]\nparks = 3\n"),
                "parks",
            ),
            (format!("{MINIMAL}[fabric.shm]\npath = \"/x\"\n"), "path"),
            (
                format!("{MINIMAL}[election]\nread_period_ms = 1\n"),
                "read_period_ms",
            ),
            (format!("{MINIMAL}[nonsense]\n"), "nonsense"),
        ] {
            let err = Profile::from_toml_str(&text).expect_err(&text);
            assert!(matches!(err, ProfileError::Parse { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("unknown field `{name}`")), "{msg}");
            assert!(msg.contains("line"), "{msg}");
        }
    }

    #[test]
    fn bad_enum_values_and_types_are_parse_errors() {
        let err = Profile::from_toml_str("name = \"t\"\n[fabric]\nkind = \"tcp\"\n").unwrap_err();
        assert!(err.to_string().contains("tcp"), "{err}");
        let err = Profile::from_toml_str(&format!("{MINIMAL}[agents.leader]\nidle = \"sleep\"\n"))
            .unwrap_err();
        assert!(err.to_string().contains("sleep"), "{err}");
        let err =
            Profile::from_toml_str(&format!("{MINIMAL}[log]\nslot_bytes = -64\n")).unwrap_err();
        assert!(matches!(err, ProfileError::Parse { .. }), "{err}");
        let err = Profile::from_toml_str("[fabric]\nkind = \"shm\"\n").unwrap_err();
        assert!(err.to_string().contains("missing field `name`"), "{err}");
        let rdma = "name = \"t\"\n[fabric]\nkind = \"rdma\"\n[fabric.rdma]\ndevice = \"rxe0\"\n";
        let p = Profile::from_toml_str(rdma).expect("the rdma minimum parses");
        assert_eq!(
            p.fabric.rdma.unwrap().connect,
            RdmaConnect::Cm,
            "rdma_cm by default"
        );
        let p = Profile::from_toml_str(&format!("{rdma}connect = \"udp\"\n")).unwrap();
        assert_eq!(p.fabric.rdma.unwrap().connect, RdmaConnect::Udp);
        let err = Profile::from_toml_str(&format!("{rdma}connect = \"ib\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ib") && msg.contains("cm") && msg.contains("line"),
            "{msg}"
        );
        // Posting: batch (a NIC) unless the profile asks for serial (software RDMA).
        let p = Profile::from_toml_str(rdma).unwrap();
        assert_eq!(p.fabric.rdma.unwrap().posting, RdmaPosting::Batch);
        let p = Profile::from_toml_str(&format!("{rdma}posting = \"serial\"\n")).unwrap();
        assert_eq!(p.fabric.rdma.unwrap().posting, RdmaPosting::Serial);
        let err = Profile::from_toml_str(&format!("{rdma}posting = \"quorum\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("quorum") && msg.contains("serial"), "{msg}");
    }

    #[test]
    fn name_must_not_be_empty() {
        let mut p = base();
        p.name = " ".into();
        expect_invalid(&p, "name", "\" \"");
    }

    #[test]
    fn fabric_rules() {
        // A table of another fabric.
        let err = Profile::from_toml_str(&format!("{MINIMAL}[fabric.udp]\nbind = \"1.2.3.4:5\"\n"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid profile field fabric.udp = present: "),
            "{err}"
        );
        assert!(err.to_string().contains("fabric.kind = \"shm\""), "{err}");

        let mut p = base();
        p.fabric.shm = Some(ShmFabric {
            dir: "dev/shm".into(),
        });
        expect_invalid(&p, "fabric.shm.dir", "\"dev/shm\"");

        let mut p = base();
        p.fabric.kind = FabricKind::Udp;
        p.fabric.shm = None;
        p.fabric.udp = Some(UdpFabric {
            bind: "localhost".into(),
            ..UdpFabric::default()
        });
        expect_invalid(&p, "fabric.udp.bind", "\"localhost\"");
        p.fabric.udp = Some(UdpFabric {
            send_window_ops: 0,
            ..UdpFabric::default()
        });
        expect_invalid(&p, "fabric.udp.send_window_ops", "0");
        p.fabric.udp = Some(UdpFabric {
            socket_buffer_bytes: 1000,
            ..UdpFabric::default()
        });
        expect_invalid(&p, "fabric.udp.socket_buffer_bytes", "1000");

        // rdma and dpdk need their table.
        let mut p = base();
        p.fabric.shm = None;
        p.fabric.kind = FabricKind::Rdma;
        expect_invalid(&p, "fabric.rdma", "missing");
        p.fabric.kind = FabricKind::Dpdk;
        expect_invalid(&p, "fabric.dpdk", "missing");
        p.fabric.kind = FabricKind::Sim;
        p.validate().unwrap();
    }

    fn rdma() -> Profile {
        let p = Profile::from_toml_str(
            "name = \"r\"\n[fabric]\nkind = \"rdma\"\n[fabric.rdma]\ndevice = \"rxe0\"\n",
        )
        .unwrap();
        assert!(!p.verified_on_hardware, "rdma defaults to unverified");
        p
    }

    #[test]
    fn rdma_rules() {
        let err =
            Profile::from_toml_str("name = \"r\"\n[fabric]\nkind = \"rdma\"\n[fabric.rdma]\n")
                .unwrap_err();
        assert!(err.to_string().contains("missing field `device`"), "{err}");
        let ok = rdma();
        let r = ok.fabric.rdma.as_ref().unwrap();
        assert_eq!((r.port, r.mtu, r.max_send_wr), (1, 1024, 256));

        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().device = "".into();
        expect_invalid(&p, "fabric.rdma.device", "\"\"");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().port = 0;
        expect_invalid(&p, "fabric.rdma.port", "0");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().gid_index = 256;
        expect_invalid(&p, "fabric.rdma.gid_index", "256");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().inline_bytes = 1025;
        expect_invalid(&p, "fabric.rdma.inline_bytes", "1025");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().max_send_wr = 0;
        expect_invalid(&p, "fabric.rdma.max_send_wr", "0");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().max_recv_wr = 40000;
        expect_invalid(&p, "fabric.rdma.max_recv_wr", "40000");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().mtu = 1500;
        expect_invalid(&p, "fabric.rdma.mtu", "1500");
        assert_eq!((r.ack_timeout_exponent, r.retry_count), (14, 6));
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().ack_timeout_exponent = 0;
        expect_invalid(&p, "fabric.rdma.ack_timeout_exponent", "0");
        let mut p = rdma();
        p.fabric.rdma.as_mut().unwrap().retry_count = 8;
        expect_invalid(&p, "fabric.rdma.retry_count", "8");
    }

    fn dpdk() -> Profile {
        Profile::from_toml_str(
            "name = \"d\"\nverified_on_hardware = true\n[fabric]\nkind = \"dpdk\"\n\
             [fabric.dpdk]\neal_args = [\"--no-pci\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn dpdk_rules() {
        let ok = dpdk();
        assert!(
            ok.verified_on_hardware,
            "an explicit value wins over the default"
        );
        assert_eq!(ok.fabric.dpdk.as_ref().unwrap().mempool_mbufs, 8191);
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().eal_args.push(" ".into());
        expect_invalid(&p, "fabric.dpdk.eal_args[1]", "\" \"");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().rx_queues = 0;
        expect_invalid(&p, "fabric.dpdk.rx_queues", "0");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().tx_queues = 65;
        expect_invalid(&p, "fabric.dpdk.tx_queues", "65");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().mempool_mbufs = 100;
        expect_invalid(&p, "fabric.dpdk.mempool_mbufs", "100");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().ring_desc = 16;
        expect_invalid(&p, "fabric.dpdk.ring_desc", "16");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().send_window_ops = 0;
        expect_invalid(&p, "fabric.dpdk.send_window_ops", "0");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().fault_drop_ppm = 1_000_001;
        expect_invalid(&p, "fabric.dpdk.fault_drop_ppm", "1000001");
        let mut p = dpdk();
        p.fabric.dpdk.as_mut().unwrap().memif_dir = Some("run/rapax".into());
        expect_invalid(&p, "fabric.dpdk.memif_dir", "\"run/rapax\"");
        let ok = dpdk();
        assert_eq!(ok.fabric.dpdk.as_ref().unwrap().retransmit_us, 200);
    }

    #[test]
    fn agent_rules() {
        let mut p = base();
        p.agents.leader.idle = IdleKind::Spin;
        let msg = expect_invalid(&p, "agents.leader.idle", "\"spin\"");
        assert!(msg.contains("agents.leader.core"), "{msg}");

        p.agents.leader.core = Some(2);
        p.validate().unwrap();

        // Another agent on the spinning agent's core, whether it spins or not.
        p.agents.heartbeat.core = Some(2);
        let msg = expect_invalid(&p, "agents.heartbeat.core", "2");
        assert!(msg.contains("agents.leader.core"), "{msg}");
        p.agents.heartbeat.idle = IdleKind::Spin;
        expect_invalid(&p, "agents.heartbeat.core", "2");

        // Non-spinning agents may share a core.
        let mut p = base();
        p.agents.leader.core = Some(1);
        p.agents.follower_apply.core = Some(1);
        p.agents.follower_apply.idle = IdleKind::Yield;
        p.validate().unwrap();

        let mut p = base();
        p.agents.election.core = Some(MAX_CORE + 1);
        expect_invalid(&p, "agents.election.core", "1024");
        let mut p = base();
        p.agents.numa_node = Some(5000);
        expect_invalid(&p, "agents.numa_node", "5000");
    }

    #[test]
    fn backoff_rules() {
        let mut p = base();
        p.backoff.min_park_us = 500;
        p.backoff.max_park_us = 100;
        let msg = expect_invalid(&p, "backoff.min_park_us", "500");
        assert!(msg.contains("backoff.max_park_us (100)"), "{msg}");
        let mut p = base();
        p.backoff.min_park_us = 0;
        expect_invalid(&p, "backoff.min_park_us", "0");
        let mut p = base();
        p.backoff.max_park_us = 2_000_000;
        expect_invalid(&p, "backoff.max_park_us", "2000000");
        let mut p = base();
        p.backoff.spins = 2 << 20;
        expect_invalid(&p, "backoff.spins", &(2u32 << 20).to_string());
        let mut p = base();
        p.backoff.yields = 2 << 20;
        expect_invalid(&p, "backoff.yields", &(2u32 << 20).to_string());
        // An agent's own fields are checked with the table's put under them.
        let mut p = base();
        p.agents.election.backoff = Some(BackoffOverride {
            min_park_us: Some(5000),
            ..BackoffOverride::default()
        });
        let msg = expect_invalid(&p, "agents.election.backoff.min_park_us", "5000");
        assert!(
            msg.contains(&format!(
                "agents.election.backoff.max_park_us ({})",
                p.backoff.max_park_us
            )),
            "{msg}"
        );
        p.agents.election.backoff = Some(BackoffOverride {
            min_park_us: Some(5000),
            max_park_us: Some(5000),
            ..BackoffOverride::default()
        });
        p.validate().unwrap();
        assert_eq!(
            p.agents.election.backoff(&p.backoff),
            Backoff {
                min_park_us: 5000,
                max_park_us: 5000,
                ..p.backoff
            }
        );
        // ... and only with the backoff strategy, which is the only one that reads them.
        p.agents.election.idle = IdleKind::Yield;
        let msg = expect_invalid(&p, "agents.election.idle", "\"yield\"");
        assert!(msg.contains("agents.election.backoff"), "{msg}");
    }

    #[test]
    fn log_rules() {
        let mut p = base();
        p.log.capacity_entries = 1;
        expect_invalid(&p, "log.capacity_entries", "1");
        p.log.capacity_entries = 0;
        expect_invalid(&p, "log.capacity_entries", "0");
        p.log.capacity_entries = MAX_LOG_ENTRIES * 2;
        expect_invalid(
            &p,
            "log.capacity_entries",
            &(MAX_LOG_ENTRIES * 2).to_string(),
        );

        let mut p = base();
        p.log.slot_bytes = 100;
        let msg = expect_invalid(&p, "log.slot_bytes", "100");
        assert!(msg.contains("multiple of 64"), "{msg}");
        p.log.slot_bytes = 64;
        expect_invalid(&p, "log.slot_bytes", "64");
        p.log.slot_bytes = 2 * MAX_SLOT_BYTES;
        expect_invalid(&p, "log.slot_bytes", &(2 * MAX_SLOT_BYTES).to_string());

        let mut p = base();
        p.log.capacity_entries = MAX_LOG_ENTRIES;
        p.log.slot_bytes = 4096;
        let msg = expect_invalid(&p, "log.capacity_entries", &MAX_LOG_ENTRIES.to_string());
        assert!(msg.contains("log.slot_bytes (4096)"), "{msg}");

        let mut p = base();
        p.log.snapshot_every_entries = 0;
        expect_invalid(&p, "log.snapshot_every_entries", "0");
        p.log.snapshot_every_entries = p.log.capacity_entries / 4 + 1;
        let v = p.log.snapshot_every_entries.to_string();
        let msg = expect_invalid(&p, "log.snapshot_every_entries", &v);
        assert!(msg.contains("log.capacity_entries"), "{msg}");
    }

    #[test]
    fn replication_rules() {
        let mut p = base();
        p.replication.window_slots = 0;
        expect_invalid(&p, "replication.window_slots", "0");
        p.log.capacity_entries = 64;
        p.log.snapshot_every_entries = 16;
        p.replication.window_slots = 17;
        let msg = expect_invalid(&p, "replication.window_slots", "17");
        assert!(msg.contains("log.capacity_entries (64)"), "{msg}");
        p.replication.window_slots = 16;
        p.validate().unwrap();

        let mut p = base();
        p.replication.batch_max_commands = 0;
        expect_invalid(&p, "replication.batch_max_commands", "0");
        let mut p = base();
        p.replication.client_queue_max = 0;
        expect_invalid(&p, "replication.client_queue_max", "0");
        let mut p = base();
        p.replication.max_command_bytes = 0;
        expect_invalid(&p, "replication.max_command_bytes", "0");

        // batch_max_bytes must fit the slot: 1024 - 64 - 4 = 956.
        let mut p = base();
        assert_eq!(p.log.slot_bytes, 1024);
        p.replication.batch_max_bytes = 957;
        let msg = expect_invalid(&p, "replication.batch_max_bytes", "957");
        assert!(
            msg.contains("log.slot_bytes (1024)") && msg.contains("956"),
            "{msg}"
        );
        p.replication.batch_max_bytes = 956;
        p.validate().unwrap();

        // A command plus 8 bytes must fit in a batch.
        p.replication.max_command_bytes = 949;
        let msg = expect_invalid(&p, "replication.max_command_bytes", "949");
        assert!(msg.contains("replication.batch_max_bytes (956)"), "{msg}");
        p.replication.max_command_bytes = 948;
        p.validate().unwrap();
    }

    #[test]
    fn election_rules() {
        let mut p = base();
        p.election.read_period_us = 0;
        expect_invalid(&p, "election.read_period_us", "0");
        p.election.read_period_us = MAX_READ_PERIOD_US + 1;
        expect_invalid(
            &p,
            "election.read_period_us",
            &(MAX_READ_PERIOD_US + 1).to_string(),
        );

        let mut p = base();
        p.election.fail_threshold = 6;
        p.election.recover_threshold = 6;
        let msg = expect_invalid(&p, "election.fail_threshold", "6");
        assert!(msg.contains("election.recover_threshold (6)"), "{msg}");

        let mut p = base();
        p.election.recover_threshold = 9;
        let msg = expect_invalid(&p, "election.recover_threshold", "9");
        assert!(msg.contains("election.score_cap (8)"), "{msg}");

        let mut p = base();
        p.election.score_cap = 2000;
        expect_invalid(&p, "election.score_cap", "2000");

        let mut p = base();
        p.election.retry_us = 0;
        expect_invalid(&p, "election.retry_us", "0");
        let mut p = base();
        p.election.candidate_timeout_us = p.election.retry_us - 1;
        let v = p.election.candidate_timeout_us.to_string();
        let msg = expect_invalid(&p, "election.candidate_timeout_us", &v);
        assert!(msg.contains("election.retry_us"), "{msg}");
        p.election.candidate_timeout_us = MAX_DURATION_US + 1;
        expect_invalid(
            &p,
            "election.candidate_timeout_us",
            &(MAX_DURATION_US + 1).to_string(),
        );
        let mut p = base();
        p.election.stepdown_holdoff_us = MAX_DURATION_US + 1;
        expect_invalid(
            &p,
            "election.stepdown_holdoff_us",
            &(MAX_DURATION_US + 1).to_string(),
        );
    }

    #[test]
    fn ring_rules() {
        let mut p = base();
        p.rings.command_ring_entries = 100;
        expect_invalid(&p, "rings.command_ring_entries", "100");
        let mut p = base();
        p.rings.event_ring_entries = 1;
        expect_invalid(&p, "rings.event_ring_entries", "1");
        p.rings.event_ring_entries = MAX_RING_ENTRIES * 2;
        expect_invalid(
            &p,
            "rings.event_ring_entries",
            &(MAX_RING_ENTRIES * 2).to_string(),
        );
    }

    #[test]
    fn render_round_trips() {
        let mut profiles = vec![base(), rdma(), dpdk()];
        let mut p = base();
        p.name = "tuned".into();
        p.description = "pinned \"quoted\" agents".into();
        p.agents.numa_node = Some(1);
        p.agents.leader = AgentSpec {
            core: Some(2),
            idle: IdleKind::Spin,
            backoff: None,
        };
        p.agents.election.backoff = Some(BackoffOverride {
            yields: Some(3),
            max_park_us: Some(700),
            ..BackoffOverride::default()
        });
        p.agents.client_ingress.idle = IdleKind::Yield;
        p.verified_on_hardware = false;
        p.log.slot_bytes = 4096;
        p.replication.batch_max_bytes = 4000;
        p.validate().unwrap();
        profiles.push(p);
        for p in profiles {
            let text = p.render();
            let back = Profile::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, p, "{text}");
            // Defaults are written out, not left implicit.
            for key in [
                "verified_on_hardware",
                "capacity_entries",
                "snapshot_every_entries",
                "read_period_us",
                "stepdown_holdoff_us",
                "max_park_us",
                "event_ring_entries",
                "[agents.follower_apply]",
            ] {
                assert!(text.contains(key), "{key} missing from:\n{text}");
            }
        }
    }

    #[test]
    fn node_config_converts_durations_to_ticks() {
        let mut p = base();
        p.election.read_period_us = 1500;
        p.election.retry_us = 1000;
        p.election.candidate_timeout_us = 1001;
        p.election.stepdown_holdoff_us = 0;
        let c = p.node_config(1, vec![0, 1, 2], 1000);
        assert_eq!(c.id, 1);
        assert_eq!(c.ring, vec![0, 1, 2]);
        assert_eq!(c.election.read_period_ticks, 2, "rounds up");
        assert_eq!(c.retry_ticks, 1);
        assert_eq!(c.candidate_timeout_ticks, 2);
        assert_eq!(c.stepdown_holdoff_ticks, 1, "at least one tick");
        assert_eq!(c.election.score_cap, p.election.score_cap);
        assert_eq!(c.election.fail_threshold, p.election.fail_threshold);
        assert_eq!(c.election.recover_threshold, p.election.recover_threshold);
        c.election.validate().unwrap();
        assert_eq!(c.geometry.capacity, p.log.capacity_entries);
        assert_eq!(c.geometry.slot_bytes, p.log.slot_bytes);
        assert!(c.batch_max_bytes <= c.geometry.max_payload());
        assert_eq!(c.window_slots, p.replication.window_slots);
        assert_eq!(c.batch_max_commands, p.replication.batch_max_commands);
        assert_eq!(c.client_queue_max, p.replication.client_queue_max);
        assert_eq!(c.bugs, Bugs::default());
        // window 64: 2 × window = 128 slots.
        assert_eq!((c.apply_scan_slots, c.read_chunk_slots), (128, 128));

        // One-microsecond ticks keep the values; a small window still scans 64 slots.
        p.replication.window_slots = 4;
        let c = p.node_config(0, vec![0], 1);
        assert_eq!(c.election.read_period_ticks, 1500);
        assert_eq!(c.candidate_timeout_ticks, 1001);
        assert_eq!(c.apply_scan_slots, 64);

        // The scan never exceeds the log.
        p.replication.window_slots = 2;
        p.log.capacity_entries = 8;
        p.log.snapshot_every_entries = 2;
        let c = p.node_config(0, vec![0], 1);
        assert_eq!(c.read_chunk_slots, 8);
    }

    #[test]
    #[should_panic(expected = "invalid profile")]
    fn node_config_refuses_an_invalid_profile() {
        let mut p = base();
        p.log.capacity_entries = 3;
        p.node_config(0, vec![0], 10);
    }

    #[test]
    fn load_reports_the_path() {
        let missing = Path::new("/nonexistent/rapax/profile.toml");
        let err = Profile::load(missing).unwrap_err();
        assert!(matches!(err, ProfileError::Io { .. }));
        assert!(
            err.to_string().contains("/nonexistent/rapax/profile.toml"),
            "{err}"
        );

        let dir = std::env::temp_dir().join(format!("rapax-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, format!("{MINIMAL}typo = 1\n")).unwrap();
        let err = Profile::load(&file).unwrap_err();
        let msg = err.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(msg.starts_with(&file.display().to_string()), "{msg}");
        assert!(msg.contains("unknown field `typo`"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    // ---- cluster files ----

    const CLUSTER: &str = r#"
name = "lab"
ring = [2, 0, 1]
spares = [3]

[[node]]
id = 0
host = "a"
udp_addr = "10.0.0.1:7000"
rdma_addr = "10.0.0.1:7471"
dpdk_mac = "02:00:00:00:00:01"

[[node]]
id = 1
host = "b"
shm_dir = "/dev/shm/b"
udp_addr = "10.0.0.2:7000"

[[node]]
id = 2
host = "c"
udp_addr = "10.0.0.3:7000"

[[node]]
id = 3
host = "d"
udp_addr = "10.0.0.4:7000"

[[client]]
id = 42
udp_addr = "10.0.1.1:9000"
"#;

    fn cluster() -> ClusterFile {
        ClusterFile::from_toml_str(CLUSTER).expect("valid cluster")
    }

    #[track_caller]
    fn expect_cluster_invalid(c: &ClusterFile, field: &str, value: &str) -> String {
        let err = c.validate().expect_err("cluster should be invalid");
        let msg = err.to_string();
        match &err {
            ClusterError::Invalid {
                field: f, value: v, ..
            } => {
                assert_eq!(f, field, "wrong field in: {msg}");
                assert_eq!(v, value, "wrong value in: {msg}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert!(
            msg.starts_with(&format!("invalid cluster field {field} = {value}: ")),
            "{msg}"
        );
        msg
    }

    #[test]
    fn cluster_parses_and_round_trips() {
        let c = cluster();
        assert_eq!(c.ring, vec![2, 0, 1]);
        assert_eq!(c.spares, vec![3]);
        let n0 = c.node(0).unwrap();
        assert_eq!(n0.udp_socket_addr().unwrap().to_string(), "10.0.0.1:7000");
        assert_eq!(n0.rdma_socket_addr().unwrap().port(), 7471);
        assert_eq!(n0.dpdk_mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.node(1).unwrap().shm_dir.as_deref(), Some("/dev/shm/b"));
        assert_eq!(c.clients[0].id, 42);
        let back = ClusterFile::from_toml_str(&c.render()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn cluster_unknown_fields_are_rejected() {
        let text = CLUSTER.replace("host = \"a\"", "host = \"a\"\nport = 1");
        let err = ClusterFile::from_toml_str(&text).unwrap_err();
        assert!(matches!(err, ClusterError::Parse { .. }));
        assert!(err.to_string().contains("unknown field `port`"), "{err}");
        let err = ClusterFile::from_toml_str(&format!("{CLUSTER}\nleader = 0\n")).unwrap_err();
        // `leader = 0` lands in the last [[client]] table.
        assert!(err.to_string().contains("unknown field `leader`"), "{err}");
        let err = ClusterFile::from_toml_str(&CLUSTER.replace("id = 3", "id = 300")).unwrap_err();
        assert!(err.to_string().contains("300"), "{err}");
    }

    #[test]
    fn cluster_rules() {
        let mut c = cluster();
        c.name = "".into();
        expect_cluster_invalid(&c, "name", "\"\"");

        let mut c = cluster();
        c.nodes[3].id = 16;
        let msg = expect_cluster_invalid(&c, "node[3].id", "16");
        assert!(msg.contains("below 16"), "{msg}");

        let mut c = cluster();
        c.nodes[3].id = 0;
        expect_cluster_invalid(&c, "node[3].id", "0");

        let mut c = cluster();
        c.nodes[2].host = "".into();
        expect_cluster_invalid(&c, "node[2].host", "\"\"");

        let mut c = cluster();
        c.nodes[1].shm_dir = Some("shm".into());
        expect_cluster_invalid(&c, "node[1].shm_dir", "\"shm\"");

        let mut c = cluster();
        c.nodes[1].udp_addr = Some("10.0.0.2".into());
        expect_cluster_invalid(&c, "node[1].udp_addr", "\"10.0.0.2\"");
        c.nodes[1].udp_addr = Some("10.0.0.2:0".into());
        expect_cluster_invalid(&c, "node[1].udp_addr", "\"10.0.0.2:0\"");
        c.nodes[1].udp_addr = Some("10.0.0.1:7000".into());
        let msg = expect_cluster_invalid(&c, "node[1].udp_addr", "\"10.0.0.1:7000\"");
        assert!(msg.contains("node 0"), "{msg}");

        let mut c = cluster();
        c.nodes[0].rdma_addr = Some("rdma0".into());
        expect_cluster_invalid(&c, "node[0].rdma_addr", "\"rdma0\"");

        let mut c = cluster();
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "zz:00:00:00:00:01",
        ] {
            c.nodes[0].dpdk_mac = Some(bad.into());
            expect_cluster_invalid(&c, "node[0].dpdk_mac", &format!("{bad:?}"));
        }

        let mut c = cluster();
        c.ring = vec![];
        expect_cluster_invalid(&c, "ring", "[]");
        c.ring = vec![0, 1];
        c.spares = vec![2, 3];
        let msg = expect_cluster_invalid(&c, "ring", "[0, 1]");
        assert!(msg.contains("odd"), "{msg}");
        c.ring = vec![0, 1, 1];
        expect_cluster_invalid(&c, "ring", "[0, 1, 1]");
        c.ring = vec![0, 1, 7];
        let msg = expect_cluster_invalid(&c, "ring", "[0, 1, 7]");
        assert!(msg.contains("node 7"), "{msg}");

        let mut c = cluster();
        c.spares = vec![3, 0];
        let msg = expect_cluster_invalid(&c, "spares", "[3, 0]");
        assert!(msg.contains("ring"), "{msg}");
        c.spares = vec![3, 3];
        expect_cluster_invalid(&c, "spares", "[3, 3]");
        c.spares = vec![3, 9];
        expect_cluster_invalid(&c, "spares", "[3, 9]");
        c.spares = vec![];
        let msg = expect_cluster_invalid(&c, "node[3].id", "3");
        assert!(msg.contains("neither ring nor spares"), "{msg}");

        let mut c = cluster();
        c.clients.push(c.clients[0].clone());
        expect_cluster_invalid(&c, "client[1].id", "42");
        c.clients[1].id = 43;
        c.clients[1].udp_addr = Some("nowhere".into());
        expect_cluster_invalid(&c, "client[1].udp_addr", "\"nowhere\"");
    }

    #[test]
    fn local_cluster() {
        let c = ClusterFile::local(3, 7000);
        c.validate().unwrap();
        assert_eq!(c.ring, vec![0, 1, 2]);
        assert!(c.spares.is_empty());
        let addrs: Vec<String> = c
            .nodes
            .iter()
            .map(|n| n.udp_socket_addr().unwrap().to_string())
            .collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert!(c.nodes.iter().all(|n| n.host == "localhost"));
        let c = ClusterFile::local(4, 9000);
        assert_eq!((c.ring.clone(), c.spares.clone()), (vec![0, 1, 2], vec![3]));
        assert_eq!(ClusterFile::local(1, 1).ring, vec![0]);
        assert_eq!(ClusterFile::local(MAX_NODES, 1000).nodes.len(), MAX_NODES);
        assert_eq!(ClusterFile::from_toml_str(&c.render()).unwrap(), c);
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn local_cluster_port_overflow() {
        ClusterFile::local(3, u16::MAX - 1);
    }

    #[test]
    fn cluster_addresses_match_the_fabric() {
        let c = ClusterFile::local(3, 7000);
        let udp = Profile::from_toml_str("name = \"u\"\n[fabric]\nkind = \"udp\"\n").unwrap();
        c.check_for(&udp).unwrap();
        c.check_for(&base()).unwrap();
        let err = c.check_for(&rdma()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid cluster field node[0].rdma_addr = missing: "),
            "{err}"
        );
        let err = c.check_for(&dpdk()).unwrap_err();
        assert!(err.to_string().contains("node[0].dpdk_mac"), "{err}");
        // An rdma node also needs the UDP address its data plane answers heartbeat reads on.
        let mut r = c.clone();
        for n in &mut r.nodes {
            n.rdma_addr = Some("127.0.0.1:9000".into());
        }
        r.check_for(&rdma()).unwrap();
        r.nodes[1].udp_addr = None;
        let err = r.check_for(&rdma()).unwrap_err();
        assert!(err.to_string().contains("node[1].udp_addr"), "{err}");
    }
}
