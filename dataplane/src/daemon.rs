//! `rapax-dataplane`: the data-plane process of one node.
//!
//! It owns the node's registered memory (through the fabric), the data mesh, the client ingress
//! and the replicated state machine, and drives the node core ([`Node`]) from one agent loop:
//! commands from the control plane (peer liveness), client requests, the node's turn (grants and
//! candidacy on its own log, the leader's fast path, apply), posts and completions, replies.
//! Peer liveness comes from the node's `rapax-control` process over the channel
//! ([`crate::channel`]); the heartbeat counter in the control block is bumped by this loop, so a
//! stuck data plane stops it.
//!
//! Files of a cluster directory ([`ClusterDir`]): `profile.toml` and `cluster.toml` (what every
//! process of the cluster runs with), and per node the region (`shm`), the channel, the mailbox
//! (`shm` client ingress), a latency-histogram file written on request, and logs.

use crate::protocol::wordhash::WordMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::agent::{Agent, AgentRunner, IdleStrategy};
use crate::channel::{
    Channel, ChannelError, Command as ChannelCommand, CommandReceiver, Counter, Event, EventSender,
};
use crate::fabric::frame::{Frame, FrameBody, CLIENT_NODE};
use crate::fabric::framed::FrameStats;
use crate::fabric::shm::{ShmError, ShmFabric};
use crate::fabric::udp::{UdpConfig, UdpError, UdpFabric, UdpMemory};
use crate::fabric::{Completion, LocalMemory, Op, Post, Region};
use crate::mailbox::{mailbox_path, MailboxError, MailboxServer, MAX_SLOTS};
use crate::profile::{ClusterError, ClusterFile, FabricKind, Profile, ProfileError};
use crate::protocol::kv::{self, KvCodecError, KvLimits, KvStore};
use crate::protocol::layout::{
    CB_FLAG_AMNESIAC, CB_FLAG_BEHIND, CB_FLAG_LEADING, CB_HEARTBEAT, CB_PID,
};
use crate::protocol::membership::{ring_word, Change, ChangeAnswer, ReconfigError};
use crate::protocol::node::{
    BadRequest, Checkpoint, ClientError, ClientReply, ClientRequest, Node, Note, Output, RoleKind,
    Start,
};
use crate::protocol::{Ballot, NodeId};

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process of the host, so a tool can
/// subtract a time stamp another process wrote.
pub fn monotonic_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The role of a node as the data plane publishes it in [`Counter::Role`].
pub fn role_code(role: RoleKind) -> u64 {
    match role {
        RoleKind::Follower => 1,
        RoleKind::Candidate => 2,
        RoleKind::Recovering => 3,
        RoleKind::Leader => 4,
    }
}

/// The 4-bit code of a leader's view of one follower in [`Counter::Followers`].
pub fn follower_code(state: &str) -> u64 {
    match state {
        "active" => 1,
        "absent" => 2,
        "requested" => 3,
        "syncing" => 4,
        "snapshot" => 5,
        _ => 0,
    }
}

/// The name of a [`follower_code`].
pub fn follower_name(code: u64) -> &'static str {
    match code {
        1 => "active",
        2 => "absent",
        3 => "requested",
        4 => "syncing",
        5 => "snapshot",
        _ => "-",
    }
}

/// The name of a [`Counter::Role`] value.
pub fn role_name(code: u64) -> &'static str {
    match code {
        1 => "follower",
        2 => "candidate",
        3 => "recovering",
        4 => "leader",
        _ => "-",
    }
}

/// The files of one cluster on this host (one directory, mode 0700, every file mode 0600).
#[derive(Clone, Debug)]
pub struct ClusterDir {
    pub dir: PathBuf,
}

impl ClusterDir {
    pub fn new(dir: impl Into<PathBuf>) -> ClusterDir {
        ClusterDir { dir: dir.into() }
    }

    pub fn profile(&self) -> PathBuf {
        self.dir.join("profile.toml")
    }

    pub fn cluster(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    pub fn channel(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node}.channel"))
    }

    pub fn mailbox(&self, node: NodeId) -> PathBuf {
        mailbox_path(&self.dir, node)
    }

    /// Written by the data plane on request ([`Counter::StatsRequest`]): its replication
    /// latency histogram since the previous request, one line `nanoseconds count` per recorded
    /// value.
    pub fn replication_histogram(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node}.replication.hgrm"))
    }

    /// The node's last checkpoint (descriptor and state), kept for a restart with memory kept.
    pub fn checkpoint(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node}.checkpoint"))
    }

    /// The data mesh's frame round trips measured by node `node` on request
    /// ([`Counter::FloorRequest`]): lines of "nanoseconds count".
    pub fn floor_histogram(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node}.floor.hgrm"))
    }

    /// Present once the node's data plane has started (a later start is a restart).
    pub fn started_marker(&self, node: NodeId) -> PathBuf {
        self.dir.join(format!("node-{node}.started"))
    }

    pub fn log(&self, node: NodeId, process: &str) -> PathBuf {
        self.dir.join(format!("node-{node}.{process}.log"))
    }

    /// The network namespace of each node started in one (`NODE NAMESPACE` lines).
    pub fn netns(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// The processes `rapax up` started: one line `node process pid` each.
    pub fn pids(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// Creates the directory (mode 0700).
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }
}

/// Why a daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Profile(Box<ProfileError>),
    #[error(transparent)]
    Cluster(Box<ClusterError>),
    #[error("node {node} is not in cluster {cluster:?}")]
    NotAMember { node: NodeId, cluster: String },
    #[error("fabric {0} is not supported by this build (shm, udp and dpdk are)")]
    UnsupportedFabric(&'static str),
    #[error("cluster file: node {node} has no {what}")]
    MissingAddress { node: NodeId, what: &'static str },
    #[error(transparent)]
    Shm(#[from] ShmError),
    #[error(transparent)]
    Udp(#[from] UdpError),
    #[error(transparent)]
    Dpdk(#[from] crate::fabric::dpdk::DpdkError),
    #[error(transparent)]
    Rdma(#[from] crate::fabric::rdma::RdmaError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("agent: {0}")]
    Agent(#[from] crate::agent::AgentError),
}

/// Writes `bytes` to `path`, created or truncated with mode 0600 (every file of a cluster
/// directory is private to its owner).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private_parts(path, &[bytes])
}

/// [`write_private`] of `parts`, one after the other (no copy to join them first).
pub fn write_private_parts(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    for part in parts {
        f.write_all(part)?;
    }
    Ok(())
}

impl From<ProfileError> for DaemonError {
    fn from(e: ProfileError) -> DaemonError {
        DaemonError::Profile(Box::new(e))
    }
}

impl From<ClusterError> for DaemonError {
    fn from(e: ClusterError) -> DaemonError {
        DaemonError::Cluster(Box::new(e))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The command-line arguments every daemon of a node takes.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    /// The cluster directory (profile.toml, cluster.toml, regions, channels, mailboxes).
    #[arg(long)]
    pub dir: PathBuf,
    /// This node's id in the cluster file.
    #[arg(long)]
    pub node: u8,
    /// The hardware profile (default: DIR/profile.toml).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The cluster file (default: DIR/cluster.toml).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
}

/// Where a data plane finds its configuration.
#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    pub dir: PathBuf,
    pub node: NodeId,
    /// Defaults to `dir/profile.toml`.
    pub profile: Option<PathBuf>,
    /// Defaults to `dir/cluster.toml`.
    pub cluster: Option<PathBuf>,
    /// Defaults to: memory kept if this node's region exists (`shm`), memory lost on a restart
    /// of a `udp` node, fresh otherwise.
    pub start: Option<Start>,
}

/// The profile and cluster file a daemon runs with, validated against each other.
pub fn load_config(
    dir: &ClusterDir,
    profile: Option<&Path>,
    cluster: Option<&Path>,
) -> Result<(Profile, ClusterFile), DaemonError> {
    let profile = Profile::load(profile.map_or_else(|| dir.profile(), Path::to_path_buf))?;
    let cluster = ClusterFile::load(cluster.map_or_else(|| dir.cluster(), Path::to_path_buf))?;
    cluster.check_for(&profile)?;
    Ok((profile, cluster))
}

/// The node core's configuration for this daemon: time in microseconds, liveness external.
fn node_config(
    profile: &Profile,
    cluster: &ClusterFile,
    node: NodeId,
) -> Result<crate::protocol::node::NodeConfig, DaemonError> {
    if cluster.node(node).is_none() {
        return Err(DaemonError::NotAMember {
            node,
            cluster: cluster.name.clone(),
        });
    }
    let mut cfg = profile.node_config(node, cluster.ring.clone(), 1);
    cfg.spares = cluster.spares.clone();
    cfg.external_election = true;
    Ok(cfg)
}

/// The largest client frame: a request with the largest command (and room for replies, which
/// carry a value of at most that size).
pub fn client_frame_bytes(profile: &Profile) -> usize {
    crate::fabric::frame::HEADER_BYTES + 64 + profile.replication.max_command_bytes
}

/// How to answer one client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Slot(usize),
    Addr(SocketAddr),
}

/// The fabric side of a data plane: its memory, one-sided operations and client ingress.
trait Plane: Send {
    type Mem: LocalMemory;
    fn mem(&mut self) -> &mut Self::Mem;
    fn post(&mut self, post: Post);
    fn poll(&mut self, out: &mut Vec<Completion>);
    /// Client requests received, each with its route; a frame that does not decode comes as
    /// the reason to refuse it. Returns how many.
    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize;
    fn answer(&mut self, route: Route, reply: ClientReply);
    /// Whether a turn posts one write at a time, taking the completions each brings before
    /// the next (`fabric.rdma.posting = "serial"`: software RDMA, where a post runs the whole
    /// write), instead of all of them, then a poll.
    fn serial_posts(&self) -> bool {
        false
    }
    /// Whether every post's completion is ready when the post returns (shm's copies): a
    /// turn that takes a request then answers it before its upkeep.
    fn completes_in_post(&self) -> bool {
        false
    }
    /// Waits at most `d` for work (the data plane's backoff park).
    fn park(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    /// Busy-waits a little for work after an idle turn (the `spin` strategy): the agent's
    /// [`Agent::spin`].
    fn spin(&mut self) {
        std::hint::spin_loop();
    }
    /// Copies the fabric's own counters into the channel.
    fn publish(&self, _channel: &Channel) {}
}

/// Looks at the mailbox a leading shm data plane takes between idle turns (the `spin`
/// strategy's pause): about an idle turn's worth.
const SPIN_WATCH_POLLS: u32 = 16;

/// Client ingress through the node's shm mailbox (local clients on `shm` and `dpdk`): the
/// mailbox, who this node is, and the buffer replies are encoded in.
struct MailboxDoor {
    mailbox: MailboxServer,
    node: NodeId,
    cluster_id: u64,
    frame: Vec<u8>,
}

impl MailboxDoor {
    fn new(mailbox: MailboxServer, node: NodeId, cluster_id: u64) -> MailboxDoor {
        MailboxDoor {
            mailbox,
            node,
            cluster_id,
            frame: Vec::new(),
        }
    }

    /// Client requests from the mailbox, each with its slot as route.
    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize {
        let (node, cluster_id) = (self.node, self.cluster_id);
        self.mailbox.poll(|slot, bytes| {
            let request = match Frame::decode(bytes) {
                Ok(f) if f.is_addressed_to(cluster_id, node) => match f.body {
                    FrameBody::ClientRequest { .. } => {
                        f.body.into_client_request().ok_or(BadRequest::Malformed)
                    }
                    _ => Err(BadRequest::Malformed),
                },
                _ => Err(BadRequest::Malformed),
            };
            sink.push((request, Route::Slot(slot)));
        })
    }

    /// Answers a client in its mailbox slot.
    fn answer(&mut self, route: Route, reply: ClientReply) {
        let Route::Slot(slot) = route else { return };
        if let Ok(f) = Frame::client_reply_owned(self.node, CLIENT_NODE, self.cluster_id, reply) {
            self.frame.clear();
            if f.encode(&mut self.frame).is_ok() {
                self.mailbox.reply(slot, &self.frame);
            }
        }
    }
}

/// Copies a frame fabric's drop counters into the channel (`rapax status` shows them).
fn publish_frame_stats(stats: &FrameStats, channel: &Channel) {
    channel.set(Counter::FabricStrangers, stats.strangers);
    channel.set(Counter::FabricDecodeErrors, stats.decode_errors);
    channel.set(Counter::FabricMisaddressed, stats.misaddressed);
    channel.set(Counter::FabricTimeouts, stats.timeouts);
    channel.set(Counter::FabricSent, stats.sent);
    channel.set(Counter::FabricReceived, stats.received);
    channel.set(Counter::FabricSendErrors, stats.send_errors);
    channel.set(Counter::FabricRetransmits, stats.retransmits);
    channel.set(Counter::FabricOutOfSequence, stats.out_of_sequence);
}

/// The UDP endpoint where a data plane whose data mesh is not UDP (dpdk, rdma) answers the
/// members' control planes' heartbeat reads: node `me`'s `udp_addr`, serving reads only.
fn control_endpoint(
    cluster: &ClusterFile,
    me: NodeId,
    timeout: Duration,
) -> Result<UdpFabric, DaemonError> {
    let node = cluster.node(me).expect("member");
    let addr = node.udp_socket_addr().ok_or(DaemonError::MissingAddress {
        node: me,
        what: "udp_addr",
    })?;
    Ok(UdpFabric::bind(
        addr,
        UdpConfig {
            me,
            cluster_id: cluster.cluster_id(),
            peers: Vec::new(),
            timeout,
            control_readers: cluster
                .nodes
                .iter()
                .filter_map(|p| Some((p.id, p.control_socket_addr()?)))
                .collect(),
            clients: Vec::new(),
            window_ops: 1,
            socket_buffer_bytes: 0,
        },
    )?)
}

#[path = "daemon_dpdk.rs"]
mod dpdk_plane;

#[path = "daemon_rdma.rs"]
mod rdma_plane;

struct ShmPlane {
    fabric: ShmFabric,
    door: MailboxDoor,
}

impl Plane for ShmPlane {
    type Mem = ShmFabric;

    fn mem(&mut self) -> &mut ShmFabric {
        &mut self.fabric
    }

    fn post(&mut self, post: Post) {
        self.fabric.post(post);
    }

    fn poll(&mut self, out: &mut Vec<Completion>) {
        self.fabric.poll_into(out);
    }

    fn completes_in_post(&self) -> bool {
        true
    }

    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize {
        self.door.ingress(sink)
    }

    fn answer(&mut self, route: Route, reply: ClientReply) {
        self.door.answer(route, reply);
    }

    /// Watches the mailbox for a request, about as long as an idle turn takes: a request
    /// posted meanwhile starts the next turn a poll later, not after a whole turn of upkeep.
    /// (Completions need no watch: shm writes complete inside their post.)
    fn spin(&mut self) {
        for _ in 0..SPIN_WATCH_POLLS {
            if self.door.mailbox.has_new() {
                return;
            }
            std::hint::spin_loop();
        }
    }

    fn publish(&self, channel: &Channel) {
        let fenced = self.fabric.fenced_writers();
        if fenced != channel.counter(Counter::FabricFenced) {
            if let Some((peer, pid)) = self.fabric.last_fenced() {
                println!(
                    "rapax-dataplane: node {}: fenced node {peer}'s data plane (pid {pid}): it \
                     stayed stopped with a write in flight into this node's log while being \
                     revoked, and was killed ({fenced} fenced so far)",
                    self.fabric.id()
                );
            }
            channel.set(Counter::FabricFenced, fenced);
        }
    }
}

struct UdpPlane {
    fabric: UdpFabric,
    mem: UdpMemory,
}

impl Plane for UdpPlane {
    type Mem = UdpMemory;

    fn mem(&mut self) -> &mut UdpMemory {
        &mut self.mem
    }

    fn post(&mut self, post: Post) {
        self.fabric.post(post, Instant::now());
    }

    fn poll(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.fabric.poll(&mut self.mem, Instant::now()));
    }

    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize {
        let before = sink.len();
        sink.extend(
            self.fabric
                .take_client_requests()
                .map(|(r, from)| (Ok(r), Route::Addr(from))),
        );
        sink.len() - before
    }

    fn answer(&mut self, route: Route, reply: ClientReply) {
        if let Route::Addr(addr) = route {
            self.fabric.reply_client(&reply, addr);
        }
    }

    /// A parked udp data plane waits on its socket: a request, a completion or a client frame
    /// wakes it as soon as the kernel has it, as a kernel-socket server would.
    fn park(&mut self, d: Duration) {
        self.fabric.wait_readable(d, Instant::now());
    }

    fn publish(&self, channel: &Channel) {
        publish_frame_stats(self.fabric.stats(), channel);
    }
}

/// Checks a client request at the door: sequence, size, and that the command decodes as a KV
/// command of this client and sequence.
fn admit(request: &ClientRequest, max_command_bytes: usize) -> Result<(), ClientError> {
    if request.seq == 0 {
        return Err(ClientError::BadRequest(BadRequest::ZeroSequence));
    }
    if request.command.len() > max_command_bytes {
        return Err(ClientError::TooLarge {
            bytes: request.command.len(),
            max: max_command_bytes,
        });
    }
    match kv::Command::check(&request.command) {
        Ok((client, seq)) if client == request.client && seq == request.seq => Ok(()),
        Ok(_) => Err(ClientError::BadRequest(BadRequest::Mismatch)),
        Err(KvCodecError::UnknownOpTag(_)) => {
            Err(ClientError::BadRequest(BadRequest::UnknownOperation))
        }
        Err(_) => Err(ClientError::BadRequest(BadRequest::Malformed)),
    }
}

/// Most client requests remembered for routing their replies.
const MAX_ROUTES: usize = 1 << 16;

/// How long a turn keeps posting what completions bring, once it has looped eight times.
const POST_LOOP_LIMIT: Duration = Duration::from_millis(2);

/// Counts one round of a turn's post/poll loop; true once it has gone round eight times and
/// for [`POST_LOOP_LIMIT`] (the clock is read only from the eighth round on).
fn past_post_limit(rounds: &mut u32, long_since: &mut Option<Instant>) -> bool {
    *rounds += 1;
    *rounds >= 8 && long_since.get_or_insert_with(Instant::now).elapsed() >= POST_LOOP_LIMIT
}

/// The data plane's agent: one loop over the node's whole turn.
struct Dataplane<P: Plane> {
    plane: P,
    node: Node<KvStore>,
    channel: Channel,
    commands: CommandReceiver,
    events: EventSender,
    start: Instant,
    max_command_bytes: usize,
    out: Output,
    completions: Vec<Completion>,
    /// Serial posting: the turn's posts not posted yet, in order (kept across turns when a
    /// turn ends on [`POST_LOOP_LIMIT`]).
    unposted: VecDeque<Post>,
    inbox: Vec<(Result<ClientRequest, BadRequest>, Route)>,
    routes: WordMap<(u64, u64), Route>,
    /// `proposed[slot & mask] = (slot, ns)`.
    proposed: Vec<(u64, u64)>,
    replication: Histogram<u64>,
    stats_done: u64,
    stats_path: PathBuf,
    awaiting_first_commit: bool,
    /// View-change notes written to the log so far (capped at [`MAX_LOGGED_NOTES`]).
    notes_logged: u64,
    floor_path: PathBuf,
    floor_seen: u64,
    probe: Option<FloorProbe>,
    shutdown: Arc<AtomicBool>,
    /// Checkpoints go to a writer thread through one slot: a newer one replaces one not yet
    /// taken (a restart replays from the latest kept), so a writer that gets little CPU holds
    /// at most one frozen state back, not a queue of them.
    checkpoints: CheckpointSlot,
    /// (index, digest) of each checkpoint the writer kept, for the counters.
    kept: std::sync::mpsc::Receiver<(u64, u64)>,
    /// The microsecond of the turn clock the last turn ran in: the control half of the tick
    /// and `publish` run once per microsecond.
    last_us: u64,
    /// Replication samples recorded this turn, added to the channel's counter in `publish`.
    samples_unpublished: u64,
}

/// Keeps the node's checkpoints in `path`, encoding frozen states here, off the data path
/// (written to a temporary file, then renamed: a crash leaves the previous one or the new
/// one, and a torn file fails its checksum anyway). Reports each kept checkpoint's index and
/// digest back. It keeps off the cores in `avoid` (the profile's pinned cores).
fn checkpoint_writer(
    path: PathBuf,
    avoid: Vec<usize>,
) -> (CheckpointSlot, std::sync::mpsc::Receiver<(u64, u64)>) {
    let slot = CheckpointSlot::default();
    let rx = slot.clone();
    let (kept_tx, kept_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rapax-checkpoint".into())
        .spawn(move || {
            // Encoding a large state takes a while: only on CPU the agents leave idle, and
            // not on a core an agent is pinned to.
            crate::agent::avoid_cores(&avoid);
            if let Err(e) = rapax_ffi::sched::idle_priority() {
                eprintln!("rapax-dataplane: the checkpoint writer keeps normal priority: {e}");
            }
            let tmp = path.with_extension("tmp");
            while let Some(checkpoint) = rx.take() {
                let (d, state) = checkpoint.into_parts(&mut || {});
                let kept = write_private_parts(&tmp, &[&d.encode(), &state])
                    .and_then(|()| std::fs::rename(&tmp, &path));
                match kept {
                    Ok(()) => {
                        let _ = kept_tx.send((d.index, d.digest));
                    }
                    Err(e) => eprintln!(
                        "rapax-dataplane: cannot keep the checkpoint {}: {e}",
                        path.display()
                    ),
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("rapax-dataplane: no checkpoint writer: {e}");
    }
    (slot, kept_rx)
}

/// The one-checkpoint hand-off from the data plane to its writer: `put` replaces what the
/// writer has not taken yet; `take` waits for one (`None` once closed).
#[derive(Clone, Default)]
struct CheckpointSlot {
    inner: Arc<SlotInner>,
}

/// The pending checkpoint and whether the slot is closed, with the writer's wake-up.
#[derive(Default)]
struct SlotInner {
    state: std::sync::Mutex<(Option<Checkpoint>, bool)>,
    ready: std::sync::Condvar,
}

impl CheckpointSlot {
    fn put(&self, c: Checkpoint) {
        let (m, cv) = (&self.inner.state, &self.inner.ready);
        m.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(c);
        cv.notify_one();
    }

    fn take(&self) -> Option<Checkpoint> {
        let (m, cv) = (&self.inner.state, &self.inner.ready);
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = g.0.take() {
                return Some(c);
            }
            if g.1 {
                return None;
            }
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        let (m, cv) = (&self.inner.state, &self.inner.ready);
        m.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        cv.notify_all();
    }
}

impl<P: Plane> Drop for Dataplane<P> {
    fn drop(&mut self) {
        // The writer keeps what it was given last, then ends.
        self.checkpoints.close();
    }
}

/// Work-request ids of floor probes; the node's own ids count up from 0 and never reach it.
const PROBE_WR: u64 = 1 << 63;
/// Round trips one floor request measures.
pub const FLOOR_ROUNDS: u64 = 2_000;

/// A floor measurement in progress: one 8-byte read of an active follower's heartbeat word
/// at a time, over the data mesh (the same fabric, ports and agents as replication), each
/// round trip recorded; followers taken in turn.
struct FloorProbe {
    request: u64,
    /// Rounds still to measure; a failed read does not count as one.
    remaining: u64,
    /// Reads that failed; past `FLOOR_ROUNDS` the probe ends with what it has.
    failed: u64,
    turn: usize,
    outstanding: Option<Instant>,
    samples: Histogram<u64>,
}

/// Writes `h` to `path` as "value count" lines, replacing the file whole (a reader never sees
/// half of it).
fn write_histogram(h: &Histogram<u64>, path: &Path) {
    let mut text = String::new();
    for v in h.iter_recorded() {
        text.push_str(&format!(
            "{} {}\n",
            v.value_iterated_to(),
            v.count_at_value()
        ));
    }
    let tmp = path.with_extension("tmp");
    if write_private(&tmp, text.as_bytes()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// View-change notes a data plane writes to its log before it stops writing them (a cluster
/// that keeps changing views must not fill the disk).
const MAX_LOGGED_NOTES: u64 = 10_000;

/// The log line of a view-change note; `None` for the per-slot ones.
fn describe_note(note: &Note) -> Option<String> {
    Some(match note {
        Note::Candidate { ballot } => format!("candidate at {ballot}"),
        Note::BecameLeader {
            ballot,
            recovered_from,
            recovered_to,
        } => format!("leader at {ballot}, recovered slots [{recovered_from}, {recovered_to})"),
        Note::SteppedDown { ballot, reason } => format!("stepped down from {ballot}: {reason}"),
        Note::Granted { to, ballot } => format!("granted its log to node {to} at {ballot}"),
        Note::FollowerLost { peer, reason } => {
            format!("follower {peer} lost: its {reason} failed")
        }
        Note::FollowerSynced {
            peer,
            from,
            to,
            writes,
        } => format!("follower {peer} caught up over [{from}, {to}) with {writes} writes"),
        Note::SnapshotSent { peer, index, bytes } => {
            format!("streaming a snapshot below slot {index} ({bytes} bytes) to follower {peer}")
        }
        Note::Restored { index, digest } => {
            format!("installed a snapshot below slot {index} (state digest {digest:016x})")
        }
        Note::SnapshotRejected { index, reason } => {
            format!("discarded a snapshot below slot {index}: {reason}")
        }
        Note::ReconfigProposed { slot, membership } => {
            format!("proposed {membership:?} in slot {slot}")
        }
        Note::Reconfigured { slot, membership } => {
            format!("applied {membership:?} from slot {slot}")
        }
        Note::RingRepair { old, new } => {
            format!("ring repair: spare {new} replaces acceptor {old}, dead too long")
        }
        Note::ReconfigAbandoned { epoch, reason } => {
            format!("gave up the change to epoch {epoch}: {reason}")
        }
        Note::Unappliable { slot, reason } => format!(
            "applied slot {slot} as an empty batch: its chosen entry does not split into \
             commands ({reason}); its clients' retries are proposed afresh"
        ),
        Note::Proposed { .. }
        | Note::Chosen { .. }
        | Note::Applied { .. }
        | Note::Checkpoint { .. } => return None,
    })
}

impl<P: Plane> Dataplane<P> {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn turn(&mut self) -> usize {
        let now = self.now_us();
        let new_us = now != self.last_us;
        self.last_us = now;
        let mut work = 0;
        while let Some(m) = self.commands.recv() {
            work += 1;
            match m {
                Ok(ChannelCommand::PeerStatus {
                    peer,
                    alive,
                    read_ok,
                    granted,
                    amnesiac,
                    behind,
                    leading,
                    epoch,
                }) => {
                    let flags = if amnesiac { CB_FLAG_AMNESIAC } else { 0 }
                        | if behind { CB_FLAG_BEHIND } else { 0 }
                        | if leading { CB_FLAG_LEADING } else { 0 };
                    self.node.on_peer_status(
                        now,
                        peer,
                        alive,
                        read_ok.then_some((Ballot(granted), flags, epoch)),
                    )
                }
                Ok(ChannelCommand::Shutdown) => {
                    self.shutdown.store(true, Ordering::Release);
                    return work;
                }
                Ok(_) => {}
                Err(_) => self.channel.add(Counter::MalformedFrames, 1),
            }
        }
        let taken = self.plane.ingress(&mut self.inbox);
        work += taken;
        let mut inbox = std::mem::take(&mut self.inbox);
        for (request, route) in inbox.drain(..) {
            self.channel.bump(Counter::ClientRequests, 1);
            let request = match request {
                Ok(r) => r,
                Err(why) => {
                    self.channel.add(Counter::MalformedFrames, 1);
                    self.channel.add(Counter::ClientBadRequests, 1);
                    let reply = ClientReply {
                        client: 0,
                        seq: 0,
                        result: Err(ClientError::BadRequest(why)),
                    };
                    self.plane.answer(route, reply);
                    continue;
                }
            };
            if let Some((client, seq, change)) = Change::parse_request(&request.command) {
                // An operator's configuration change: answered at once, never logged as is.
                let result = match change {
                    _ if client != request.client || seq != request.seq => {
                        Err(ClientError::BadRequest(BadRequest::Mismatch))
                    }
                    None => Err(ClientError::BadRequest(BadRequest::Malformed)),
                    Some(change) => match self.node.reconfigure(&change) {
                        Ok(steps) => Ok(ChangeAnswer::Proposed(steps).encode()),
                        Err(ReconfigError::NotLeader { leader_hint }) => {
                            Err(ClientError::NotLeader { leader_hint })
                        }
                        Err(e) => Ok(ChangeAnswer::Refused(e.to_string()).encode()),
                    },
                };
                if result.is_err() {
                    self.channel.add(Counter::ClientBadRequests, 1);
                }
                let reply = ClientReply {
                    client: request.client,
                    seq: request.seq,
                    result,
                };
                self.plane.answer(route, reply);
                continue;
            }
            if let Err(e) = admit(&request, self.max_command_bytes) {
                self.channel.add(Counter::ClientBadRequests, 1);
                let reply = ClientReply {
                    client: request.client,
                    seq: request.seq,
                    result: Err(e),
                };
                self.plane.answer(route, reply);
                continue;
            }
            if self.routes.len() >= MAX_ROUTES {
                // Requests never answered (their leader stepped down mid-flight): their
                // clients have timed out and retried long ago.
                self.routes.clear();
            }
            self.routes.insert((request.client, request.seq), route);
            self.node
                .on_client_request(now, request, self.plane.mem(), &mut self.out);
        }
        self.inbox = inbox;
        // A request just taken, on a plane whose writes complete inside their posts: proposed,
        // chosen, applied and answered first; the turn's upkeep (and the control half) then
        // runs as it would have at the start of the next turn.
        if taken > 0 && self.plane.completes_in_post() {
            self.node
                .propose_queued_now(now, self.plane.mem(), &mut self.out);
            work += self.drive(now);
        }
        // The control half (grants, candidacy, the amnesia probe) acts on time-outs and on
        // words peers write into this node's memory: once per microsecond is soon enough, and
        // leaves the turns in between to the fast path.
        if new_us {
            self.node.tick_control(now, self.plane.mem(), &mut self.out);
        }
        self.node.tick_data(now, self.plane.mem(), &mut self.out);
        self.probe_tick();
        work += self.drive(now);
        let notes = std::mem::take(&mut self.out.notes);
        let mut clock = None;
        for note in &notes {
            self.note(note, &mut clock);
        }
        self.out.notes = notes;
        self.out.notes.clear();
        if let Some(c) = self.out.checkpoint.take() {
            self.checkpoints.put(c);
        }
        // Counters for tools and the control plane: once per microsecond of the turn clock is
        // as fresh as any reader needs, and leaves the turns in between to the fast path.
        if new_us {
            while let Ok((index, digest)) = self.kept.try_recv() {
                self.channel.set(Counter::CheckpointIndex, index);
                self.channel.set(Counter::CheckpointDigest, digest);
            }
            self.publish();
        }
        if self.node.has_steps_left() {
            // A follower's catch-up goes a step per turn: the next turn at once.
            work += 1;
        }
        work
    }

    /// Posts what the turn's steps produced, takes the completions (and what they post in
    /// turn), applies what they chose and answers its clients; returns the work done.
    fn drive(&mut self, now: u64) -> usize {
        let mut work = 0;
        let mut completed = false;
        let mut rounds = 0u32;
        let mut long_since: Option<Instant> = None;
        let serial = self.plane.serial_posts();
        // Serial posting: whether a completion chose a slot (its client is answered before
        // the remaining posts go out).
        let mut chose = false;
        loop {
            // Completions may propose more: stamp before every batch of posts.
            self.stamp_proposed();
            if serial {
                self.unposted.extend(self.out.posts.drain(..));
                if let Some(post) = self.unposted.pop_front() {
                    work += 1;
                    let t = Instant::now();
                    self.plane.post(post);
                    let took = t.elapsed();
                    self.plane.poll(&mut self.completions);
                    // Most of the time the write's completion is there when its post returns;
                    // at times the ACK is taken a few microseconds later. Posting the next
                    // write at once would put it, too, on the slot's path: wait for the
                    // completion, but no longer than the post took (a slow or dead follower's
                    // write is not waited for).
                    if self.completions.is_empty() && !self.unposted.is_empty() {
                        let until = Instant::now() + took;
                        while self.completions.is_empty() && Instant::now() < until {
                            self.plane.poll(&mut self.completions);
                        }
                    }
                } else {
                    self.plane.poll(&mut self.completions);
                }
            } else {
                for post in self.out.posts.drain(..) {
                    work += 1;
                    self.plane.post(post);
                }
                self.plane.poll(&mut self.completions);
            }
            if self.completions.is_empty() {
                // Serial: the next write, unless the turn has posted for too long already.
                if serial
                    && !self.unposted.is_empty()
                    && !past_post_limit(&mut rounds, &mut long_since)
                {
                    continue;
                }
                break;
            }
            completed = true;
            let from = self.out.notes.len();
            for c in self.completions.drain(..) {
                work += 1;
                if c.wr_id & PROBE_WR != 0 {
                    if let Some(p) = self.probe.as_mut() {
                        if let Some(at) = p.outstanding.take() {
                            if c.result.is_ok() {
                                let _ = p.samples.record(at.elapsed().as_nanos().max(1) as u64);
                                p.remaining -= 1;
                            } else {
                                // A read that failed (a time-out on udp) measured nothing;
                                // the round is read again.
                                p.failed += 1;
                            }
                        }
                    }
                    continue;
                }
                self.node
                    .on_completion(now, c, self.plane.mem(), &mut self.out);
            }
            chose |= self.stamp_chosen(from);
            if serial && chose {
                break;
            }
            // Completions that keep bringing posts (a follower caught up, thousands of writes)
            // end the turn after POST_LOOP_LIMIT: what they posted goes out in the next turn,
            // and the channel, the clients and the control half are not held off for the
            // whole catch-up (it held a turn for up to 0.8 s on soft-RoCE). The clock is read
            // only once a turn has looped this long.
            if past_post_limit(&mut rounds, &mut long_since) {
                break;
            }
        }
        if completed {
            // Answer what those completions chose in this turn, not the next.
            self.node.settle(now, self.plane.mem(), &mut self.out);
        }
        for reply in self.out.replies.drain(..) {
            work += 1;
            if reply.result.is_err() {
                self.channel.bump(Counter::ClientRejected, 1);
            }
            if let Some(route) = self.routes.remove(&(reply.client, reply.seq)) {
                self.plane.answer(route, reply);
            }
        }
        if serial && chose {
            // The other followers' writes of the slots just answered (and what settling
            // posted), now that their clients have their answers; their completions are taken
            // in the next turn. (A turn that ended on POST_LOOP_LIMIT keeps its unposted
            // writes for the next.)
            self.unposted.extend(self.out.posts.drain(..));
            for post in self.unposted.drain(..) {
                work += 1;
                self.plane.post(post);
            }
        }
        work
    }

    /// Starts a floor measurement when a tool asked for one, posts its next probe, and
    /// writes the samples out when it is done (at once, with none, if this node does not lead
    /// or has no active follower).
    fn probe_tick(&mut self) {
        let request = self.channel.counter(Counter::FloorRequest);
        if request != self.floor_seen {
            self.floor_seen = request;
            self.probe = Some(FloorProbe {
                request,
                remaining: FLOOR_ROUNDS,
                failed: 0,
                turn: 0,
                outstanding: None,
                samples: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .expect("histogram bounds"),
            });
        }
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        if p.outstanding.is_some() {
            return;
        }
        let mut active = [0 as NodeId; crate::protocol::MAX_NODES];
        let mut n = 0;
        self.node.for_each_follower(|peer, state| {
            if state == "active" {
                active[n] = peer;
                n += 1;
            }
        });
        if p.remaining == 0 || p.failed > FLOOR_ROUNDS || n == 0 {
            write_histogram(&p.samples, &self.floor_path);
            self.channel.set(Counter::FloorDone, p.request);
            self.probe = None;
            return;
        }
        let target = active[p.turn % n];
        p.turn += 1;
        p.outstanding = Some(Instant::now());
        self.plane.post(Post {
            wr_id: PROBE_WR | p.turn as u64,
            target,
            op: Op::Read {
                region: Region::Control,
                offset: CB_HEARTBEAT,
                len: 8,
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        });
    }

    /// Stamps the slots proposed so far in this turn before their 2A writes are posted: on
    /// fabrics whose writes complete inside the post (shm's copies, and rxe's loopback), a stamp
    /// taken after posting would leave the replication round trip out of its own latency.
    fn stamp_proposed(&mut self) {
        let mut clock = None;
        for i in 0..self.out.notes.len() {
            if let Note::Proposed { slot } = self.out.notes[i] {
                self.stamp(slot, &mut clock);
            }
        }
    }

    /// Records the replication latency of the slots the completions just taken chose (notes
    /// from index `from` on), as they are chosen: applying them and answering their clients,
    /// later in the turn, is not replication.
    /// Returns whether any slot was chosen.
    fn stamp_chosen(&mut self, from: usize) -> bool {
        let mut clock = None;
        let mut any = false;
        for i in from..self.out.notes.len() {
            if let Note::Chosen { slot, .. } = self.out.notes[i] {
                self.record_chosen(slot, &mut clock);
                any = true;
            }
        }
        any
    }

    /// Stamps `slot`'s proposal with `clock` (read now if it was not yet) unless it is
    /// stamped already.
    fn stamp(&mut self, slot: u64, clock: &mut Option<u64>) {
        let mask = self.proposed.len() as u64 - 1;
        let at = &mut self.proposed[(slot & mask) as usize];
        if at.0 != slot {
            *at = (slot, *clock.get_or_insert_with(monotonic_ns));
        }
    }

    /// Records `slot`'s replication latency, from its stamp to `clock` (read now if it was not
    /// yet), unless it has none or was recorded already.
    fn record_chosen(&mut self, slot: u64, clock: &mut Option<u64>) {
        let mask = self.proposed.len() as u64 - 1;
        let at = (slot & mask) as usize;
        let (s, t) = self.proposed[at];
        if s == slot && t != 0 {
            let end = *clock.get_or_insert_with(monotonic_ns);
            // Recorded: the slot stays, so its Proposed note, handled at the end of the turn,
            // does not stamp it again (and its Chosen note record a zero).
            self.proposed[at] = (slot, 0);
            let _ = self.replication.record(end.saturating_sub(t).max(1));
            self.samples_unpublished += 1;
        }
    }

    /// Acts on one note of this turn; `clock` is the turn's end time, read once when a note
    /// needs it (every note of the turn happened before it).
    fn note(&mut self, note: &Note, clock: &mut Option<u64>) {
        if self.notes_logged < MAX_LOGGED_NOTES {
            if let Some(line) = describe_note(note) {
                self.notes_logged += 1;
                let node = self.node.id();
                // Microseconds: a fail-over's steps are tens to hundreds of them apart.
                let us = self.start.elapsed().as_micros();
                let (ms, frac) = (us / 1000, us % 1000);
                println!("rapax-dataplane: node {node} at {ms}.{frac:03} ms: {line}");
                if self.notes_logged == MAX_LOGGED_NOTES {
                    println!("rapax-dataplane: node {node}: further view-change notes not logged");
                }
            }
        }
        match *note {
            Note::Proposed { slot } => {
                // Stamped before its writes were posted (`stamp_proposed`); one made while
                // settling, whose writes go out next turn, is stamped now.
                self.stamp(slot, clock);
            }
            Note::Chosen { slot, .. } => {
                // Recorded as the completions were taken (`stamp_chosen`), unless chosen
                // elsewhere (a one-node cluster chooses as it proposes).
                self.record_chosen(slot, clock);
                if self.awaiting_first_commit {
                    self.awaiting_first_commit = false;
                    let now = *clock.get_or_insert_with(monotonic_ns);
                    self.channel.set(Counter::FirstCommitAtNs, now);
                }
            }
            Note::Candidate { .. } => {
                self.channel.set(Counter::CandidateAtNs, monotonic_ns());
            }
            Note::BecameLeader { ballot, .. } => {
                self.channel.set(Counter::LeaderAtNs, monotonic_ns());
                self.awaiting_first_commit = true;
                let _ = self.events.send(&Event::BecameLeader { ballot: ballot.0 });
            }
            Note::SteppedDown { ballot, .. } => {
                self.awaiting_first_commit = false;
                let _ = self.events.send(&Event::SteppedDown {
                    ballot: ballot.0,
                    reason: 0,
                });
            }
            Note::SnapshotSent { .. } => self.channel.add(Counter::SnapshotsSent, 1),
            Note::Restored { .. } => self.channel.add(Counter::SnapshotsInstalled, 1),
            Note::SnapshotRejected { .. } => self.channel.add(Counter::SnapshotsRejected, 1),
            Note::Checkpoint { index, digest } => {
                self.channel.set(Counter::CheckpointIndex, index);
                self.channel.set(Counter::CheckpointDigest, digest);
            }
            Note::Applied { .. }
            | Note::ReconfigProposed { .. }
            | Note::RingRepair { .. }
            | Note::Reconfigured { .. }
            | Note::ReconfigAbandoned { .. }
            | Note::Granted { .. }
            | Note::Unappliable { .. }
            | Note::FollowerSynced { .. }
            | Note::FollowerLost { .. } => {}
        }
    }

    fn publish(&mut self) {
        let c = &self.channel;
        c.set(Counter::Applied, self.node.applied());
        c.set(Counter::Commit, self.node.commit());
        c.set(
            Counter::Ballot,
            self.node.own_ballot().unwrap_or(self.node.granted()).0,
        );
        c.set(Counter::Granted, self.node.granted().0);
        c.set(Counter::Role, role_code(self.node.role()));
        c.set(
            Counter::LeaderHint,
            self.node.leader_hint().map_or(0, |n| u64::from(n) + 1),
        );
        let mut followers = 0u64;
        self.node.for_each_follower(|p, state| {
            followers |= follower_code(state) << (4 * u64::from(p));
        });
        c.set(Counter::Followers, followers);
        let m = self.node.membership();
        c.set(Counter::Epoch, m.epoch);
        c.set(Counter::Ring, ring_word(m.ring()));
        c.set(Counter::RingLen, m.len() as u64);
        let amnesiac = self.node.is_amnesiac(self.plane.mem());
        c.set(Counter::Amnesiac, u64::from(amnesiac));
        c.bump(Counter::Heartbeat, 1);
        if self.samples_unpublished != 0 {
            c.bump(Counter::ReplicationSamples, self.samples_unpublished);
            self.samples_unpublished = 0;
        }
        self.plane.publish(c);
        let request = c.counter(Counter::StatsRequest);
        if request != self.stats_done {
            self.stats_done = request;
            write_histogram(&self.replication, &self.stats_path);
            self.replication.reset();
            c.set(Counter::StatsDone, request);
        }
    }
}

impl<P: Plane> Agent for Dataplane<P> {
    fn name(&self) -> &str {
        "dataplane"
    }

    fn do_work(&mut self) -> usize {
        if self.shutdown.load(Ordering::Relaxed) {
            return 0;
        }
        self.turn()
    }

    /// 0: the profile's `leader` placement (leading, or recovering the log to lead), 1:
    /// `follower_apply` (following, or standing: waiting for grants is no fast path).
    ///
    /// A candidate does not take the leader's core: when several stand at once they would all
    /// spin on that one core, each preempting the others for a scheduler slice, and each would
    /// see the others' heartbeats stop, suspect them and stand again, for ever.
    fn class(&self) -> usize {
        match self.node.role() {
            RoleKind::Leader | RoleKind::Recovering => 0,
            RoleKind::Candidate | RoleKind::Follower => 1,
        }
    }

    fn park(&mut self, d: Duration) {
        self.plane.park(d);
    }

    fn spin(&mut self) {
        // Only a leader's requests wait on this; a follower's spin stays one pause long.
        if self.node.role() == RoleKind::Leader {
            self.plane.spin();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Runs node `opts.node`'s data plane until the control plane sends `Shutdown` (or the process
/// is signalled). Prints the effective profile first.
pub fn run_dataplane(opts: &DataplaneOptions) -> Result<(), DaemonError> {
    crate::agent::allow_every_core();
    let dir = ClusterDir::new(&opts.dir);
    let (profile, cluster) = load_config(&dir, opts.profile.as_deref(), opts.cluster.as_deref())?;
    crate::agent::reserve_cores(&profile.agents.spin_cores());
    let me = opts.node;
    let cfg = node_config(&profile, &cluster, me)?;
    println!(
        "rapax-dataplane: node {me} of cluster {:?}, ring {:?}, effective profile:\n{}",
        cluster.name,
        cluster.ring,
        profile.render()
    );
    let geometry = profile.geometry();
    let n = cluster.node_slots();
    let marker = dir.started_marker(me);
    let restarted = marker.exists();
    let channel = Channel::create(&dir.channel(me), me, profile.rings.command_ring_entries)?;
    let max_command_bytes = profile.replication.max_command_bytes;
    let limits = KvLimits {
        max_key_bytes: KvLimits::default().max_key_bytes,
        max_value_bytes: max_command_bytes,
    };
    let spec = profile.agents.leader;
    let idle = IdleStrategy::for_agent(&spec, &profile.backoff);
    let shutdown = Arc::new(AtomicBool::new(false));
    let runner = match profile.fabric.kind {
        FabricKind::Shm => {
            let kept = restarted && ShmFabric::region_exists(&dir.dir, me, &geometry);
            let start = opts.start.unwrap_or(if kept {
                Start::MemoryKept
            } else if restarted {
                Start::MemoryLost
            } else {
                Start::Fresh
            });
            // Every region must exist before any is mapped; whichever data plane starts first
            // creates the missing ones (existing regions are kept).
            ShmFabric::create_all(&dir.dir, n, &geometry)?;
            let mut fabric = ShmFabric::open(&dir.dir, me, n, &geometry)?;
            if start == Start::MemoryLost {
                fabric.zero_own();
            }
            let mailbox =
                MailboxServer::create(&dir.mailbox(me), MAX_SLOTS, client_frame_bytes(&profile))?;
            let plane = ShmPlane {
                fabric,
                door: MailboxDoor::new(mailbox, me, cluster.cluster_id()),
            };
            println!("rapax-dataplane: node {me} starts {start:?} on shm");
            start_agent(
                plane, cfg, limits, start, channel, &dir, me, &profile, idle, &shutdown,
            )?
        }
        FabricKind::Udp => {
            let start = opts.start.unwrap_or(if restarted {
                Start::MemoryLost
            } else {
                Start::Fresh
            });
            let node = cluster.node(me).expect("member");
            let addr = node.udp_socket_addr().ok_or(DaemonError::MissingAddress {
                node: me,
                what: "udp_addr",
            })?;
            let udp = profile.fabric.udp.clone().unwrap_or_default();
            let mut bind = profile.fabric.udp.as_ref().map_or(addr, |u| u.bind_addr());
            if bind.port() == 0 {
                bind.set_port(addr.port());
            }
            let config = UdpConfig {
                me,
                cluster_id: cluster.cluster_id(),
                peers: cluster.udp_peers(me),
                timeout: Duration::from_micros(profile.election.retry_us.max(1000)),
                control_readers: cluster
                    .nodes
                    .iter()
                    .filter_map(|p| Some((p.id, p.control_socket_addr()?)))
                    .collect(),
                clients: cluster
                    .clients
                    .iter()
                    .filter_map(|c| c.udp_addr.as_ref()?.parse().ok())
                    .collect(),
                window_ops: udp.send_window_ops,
                socket_buffer_bytes: udp.socket_buffer_bytes,
            };
            let fabric = UdpFabric::bind(bind, config)?;
            let mem = UdpMemory::new(me, geometry.log_bytes());
            println!("rapax-dataplane: node {me} starts {start:?} on udp {bind}");
            start_agent(
                UdpPlane { fabric, mem },
                cfg,
                limits,
                start,
                channel,
                &dir,
                me,
                &profile,
                idle,
                &shutdown,
            )?
        }
        // Memory in the process (a DPDK "NIC", registered buffers): a restart has lost it.
        kind @ (FabricKind::Dpdk | FabricKind::Rdma) => {
            let start = opts.start.unwrap_or(if restarted {
                Start::MemoryLost
            } else {
                Start::Fresh
            });
            println!(
                "rapax-dataplane: node {me} starts {start:?} on {}",
                kind.as_str()
            );
            let bytes = client_frame_bytes(&profile);
            if kind == FabricKind::Dpdk {
                let plane = dpdk_plane::open(&profile, &cluster, &dir, me, bytes)?;
                start_agent(
                    plane, cfg, limits, start, channel, &dir, me, &profile, idle, &shutdown,
                )?
            } else {
                let plane = rdma_plane::open(&profile, &cluster, &dir, me, bytes)?;
                start_agent(
                    plane, cfg, limits, start, channel, &dir, me, &profile, idle, &shutdown,
                )?
            }
        }
        other => return Err(DaemonError::UnsupportedFabric(other.as_str())),
    };
    write_private(&marker, b"").map_err(io_err(format!("{}", marker.display())))?;
    // The agents have placed themselves (pinning checks the cores this thread may use): the
    // shutdown watch below keeps off their cores.
    crate::agent::avoid_cores(&profile.agents.pinned_cores());
    while !shutdown.load(Ordering::Acquire) && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    runner.stop()?;
    println!("rapax-dataplane: node {me} shut down");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_agent<P: Plane + 'static>(
    mut plane: P,
    cfg: crate::protocol::node::NodeConfig,
    limits: KvLimits,
    start: Start,
    channel: Channel,
    dir: &ClusterDir,
    me: NodeId,
    profile: &Profile,
    idle: IdleStrategy,
    shutdown: &Arc<AtomicBool>,
) -> Result<AgentRunner, DaemonError> {
    let window = (cfg.window_slots as usize * 2).next_power_of_two();
    let commands = channel.command_receiver()?;
    let events = channel.event_sender()?;
    let started = Instant::now();
    let mut node = Node::new(cfg, KvStore::new(limits), plane.mem(), start, 0);
    let checkpoint = dir.checkpoint(me);
    if start == Start::MemoryKept {
        // Resume the state machine from the last checkpoint; the log holds what follows.
        match std::fs::read(&checkpoint) {
            Ok(saved) => match node.restore_saved(&saved, plane.mem()) {
                Ok(index) => println!(
                    "rapax-dataplane: node {me} resumes from its checkpoint below slot {index}"
                ),
                Err(e) => println!("rapax-dataplane: node {me} ignores its checkpoint: {e}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => println!("rapax-dataplane: node {me} cannot read its checkpoint: {e}"),
        }
    } else {
        // Its memory is new: an old checkpoint would describe a state its log does not follow.
        let _ = std::fs::remove_file(&checkpoint);
    }
    let (checkpoints, kept) = checkpoint_writer(checkpoint, profile.agents.pinned_cores());
    // For the shm readers' process-table check; nothing else writes this word.
    plane
        .mem()
        .set_control_word(CB_PID, u64::from(std::process::id()));
    let agent = Dataplane {
        plane,
        node,
        commands,
        events,
        channel,
        start: started,
        max_command_bytes: profile.replication.max_command_bytes,
        out: Output::default(),
        completions: Vec::new(),
        unposted: VecDeque::new(),
        inbox: Vec::new(),
        routes: WordMap::default(),
        proposed: vec![(0, 0); window],
        replication: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
        stats_done: 0,
        stats_path: dir.replication_histogram(me),
        awaiting_first_commit: false,
        notes_logged: 0,
        floor_path: dir.floor_histogram(me),
        floor_seen: 0,
        probe: None,
        shutdown: Arc::clone(shutdown),
        checkpoints,
        kept,
        last_us: u64::MAX,
        samples_unpublished: 0,
    };
    let follower = profile.agents.follower_apply;
    Ok(AgentRunner::start_with_classes(
        Box::new(agent),
        vec![
            (idle, profile.agents.leader.core),
            (
                IdleStrategy::for_agent(&follower, &profile.backoff),
                follower.core,
            ),
        ],
    )?)
}
