//! rapax control plane: the `rapax-control` process of one node.
//!
//! It reads every peer's heartbeat counter over its own endpoints (the control mesh: on `shm` a
//! read-only view of the peers' regions; on `rdma` with rdma_cm, RDMA READs on queue pairs of its
//! own, which the peers' data planes accept as read-only watch lanes; on `udp`, `dpdk` and `rdma`
//! with the UDP handshake, its own socket, which peers' data planes accept for control-block
//! reads only), keeps the pull-score election ([`election::Election`]), and
//! tells its data plane each peer's verdict over the shared-memory channel
//! ([`rapax_dataplane::channel`]). It never touches the fast path. The permission handover runs
//! in the data plane's node core on the verdicts it receives (the node's grant and candidacy
//! logic lives with the memory it guards).
//!
//! It publishes, in the channel's counters, the alive set, the scores and the time it last
//! declared the leader it followed failed (for `rapax failover`'s detection time).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rapax_dataplane::agent::{Agent, AgentRunner, IdleStrategy};
use rapax_dataplane::channel::{Channel, Command, CommandSender, Counter, EventReceiver};
use rapax_dataplane::daemon::{load_config, monotonic_ns, ClusterDir, DaemonError};
use rapax_dataplane::fabric::nic::NicMemory;
use rapax_dataplane::fabric::rdma::cm_net::CmNet;
use rapax_dataplane::fabric::rdma::{Handshake, RdmaError, RdmaFabric, RdmaSettings};
use rapax_dataplane::fabric::shm::ShmFabric;
use rapax_dataplane::fabric::udp::{UdpConfig, UdpFabric};
use rapax_dataplane::fabric::{Completion, Op, Post, Region};
use rapax_dataplane::profile::{FabricKind, Profile, RdmaConnect};
use rapax_dataplane::protocol::layout::{
    CB_AMNESIAC, CB_EPOCH, CB_FLAG_AMNESIAC, CB_FLAG_BEHIND, CB_FLAG_LEADING, CB_GRANTED_BALLOT,
    CB_HEARTBEAT, CB_PID,
};
use rapax_dataplane::protocol::membership::ring_from_word;
use rapax_dataplane::protocol::{Ballot, NodeId};

use election::{Election, ElectionAction, PeerProcess};
pub use rapax_dataplane::protocol::election;

/// Where a control plane finds its configuration.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    pub dir: PathBuf,
    pub node: NodeId,
    pub profile: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
}

/// The control plane's view of the peers' control blocks.
enum Reader {
    Shm(ShmFabric),
    Udp(Box<UdpFabric>, Box<NicMemory>),
    Rdma(Box<RdmaFabric>),
}

impl Reader {
    fn post(&mut self, post: Post) {
        match self {
            Reader::Shm(f) => f.post(post),
            Reader::Udp(f, _) => f.post(post, Instant::now()),
            Reader::Rdma(f) => f.post(post),
        }
    }

    fn poll(&mut self) -> Vec<Completion> {
        match self {
            Reader::Shm(f) => f.poll(),
            Reader::Udp(f, mem) => f.poll(mem, Instant::now()),
            Reader::Rdma(f) => f.poll(),
        }
    }
}

/// The channel to this node's data plane; re-opened when the data plane restarts (it creates a
/// fresh channel file each start).
struct Link {
    path: PathBuf,
    inode: u64,
    channel: Channel,
    commands: CommandSender,
    events: EventReceiver,
}

fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Link {
    fn open(path: &std::path::Path) -> Option<Link> {
        let inode = inode(path)?;
        let channel = Channel::open(path).ok()?;
        let commands = channel.command_sender().ok()?;
        let events = channel.event_receiver().ok()?;
        Some(Link {
            path: path.to_path_buf(),
            inode,
            channel,
            commands,
            events,
        })
    }
}

struct Control {
    /// Every node in succession order: the ring of the data plane's configuration, then the
    /// others.
    ring: Vec<NodeId>,
    /// The configuration epoch `ring` follows.
    epoch: u64,
    election: Election,
    reader: Reader,
    link: Link,
    start: Instant,
    next_wr: u64,
    pending: std::collections::HashMap<u64, (NodeId, u64)>,
    actions: Vec<ElectionAction>,
    followed: Option<NodeId>,
    last_link_check: Instant,
    /// shm with `election.runnable_grace_us`: the process-table check of peers whose heartbeat
    /// did not move.
    processes: Option<ProcessTable>,
}

/// On shm every peer's data plane runs on this host, so a heartbeat that did not move can be
/// told apart: a process that runs was preempted (a 2-core host, a kernel thread), one that is
/// gone is dead. The first is excused for `grace` after its counter last moved; the second
/// fails at once. A stopped process (SIGSTOP) is not excused.
struct ProcessTable {
    grace: Duration,
    /// Per peer: the last heartbeat counter seen and when it changed.
    moved: [(u64, Instant); rapax_dataplane::protocol::MAX_NODES],
}

impl ProcessTable {
    fn new(grace: Duration) -> ProcessTable {
        ProcessTable {
            grace,
            moved: [(0, Instant::now()); rapax_dataplane::protocol::MAX_NODES],
        }
    }

    /// What to tell the election of `peer`, whose read found `heartbeat` and `pid`.
    fn judge(&mut self, peer: NodeId, heartbeat: u64, pid: u64) -> PeerProcess {
        let (last, at) = &mut self.moved[usize::from(peer)];
        if *last != heartbeat {
            *last = heartbeat;
            *at = Instant::now();
            return PeerProcess::Unknown;
        }
        if pid == 0 {
            return PeerProcess::Unknown;
        }
        match rapax_dataplane::fabric::shm::proc_stat(pid) {
            None => PeerProcess::Gone,
            Some(s) if s.exiting || s.killed || matches!(s.state, 'Z' | 'X' | 'x') => {
                PeerProcess::Gone
            }
            Some(s) if matches!(s.state, 'T' | 't') => PeerProcess::Unknown,
            Some(_) if at.elapsed() < self.grace => PeerProcess::Running,
            Some(_) => PeerProcess::Unknown,
        }
    }
}

impl Control {
    /// Follows the configuration the data plane applied: the succession order (the ring
    /// first) that names the leader this control plane watches.
    fn follow_configuration(&mut self) {
        let c = &self.link.channel;
        let epoch = c.counter(Counter::Epoch);
        let len = c.counter(Counter::RingLen);
        if epoch == self.epoch || len == 0 {
            return;
        }
        let ring = ring_from_word(c.counter(Counter::Ring), len);
        let mut order = ring.clone();
        order.extend(self.ring.iter().copied().filter(|n| !ring.contains(n)));
        if order.len() == self.ring.len() {
            self.election.set_ring(order.clone());
            self.ring = order;
            self.epoch = epoch;
        }
    }

    fn turn(&mut self) -> usize {
        let now = self.start.elapsed().as_micros() as u64;
        let mut work = 0;
        self.follow_configuration();
        if self.last_link_check.elapsed() > Duration::from_millis(20) {
            self.last_link_check = Instant::now();
            if inode(&self.link.path) != Some(self.link.inode) {
                if let Some(link) = Link::open(&self.link.path) {
                    self.link = link;
                    work += 1;
                }
            }
        }
        while let Some(_event) = self.link.events.recv() {
            work += 1;
        }
        self.actions.clear();
        self.election.tick(now, &mut self.actions);
        for ElectionAction::ReadHeartbeat { peer, token } in self.actions.drain(..) {
            let wr_id = self.next_wr;
            self.next_wr += 1;
            self.pending.insert(wr_id, (peer, token));
            self.reader.post(Post {
                wr_id,
                target: peer,
                op: Op::Read {
                    region: Region::Control,
                    offset: 0,
                    len: CB_PID + 8,
                },
                reconnect: false,
                ballot: Ballot::ZERO,
            });
            work += 1;
        }
        for c in self.reader.poll() {
            work += 1;
            let Some((peer, token)) = self.pending.remove(&c.wr_id) else {
                continue;
            };
            let read = match &c.result {
                Ok(Some(b)) if b.len() >= CB_PID + 8 => {
                    let word =
                        |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
                    Some((
                        word(CB_HEARTBEAT),
                        word(CB_GRANTED_BALLOT),
                        word(CB_AMNESIAC),
                        word(CB_EPOCH),
                        word(CB_PID),
                    ))
                }
                _ => None,
            };
            let process = match (&mut self.processes, read) {
                (Some(t), Some(r)) => t.judge(peer, r.0, r.4),
                _ => PeerProcess::Unknown,
            };
            self.election
                .on_read_seen(peer, token, read.map(|r| r.0), process);
            let status = Command::PeerStatus {
                peer,
                alive: self.election.is_alive(peer),
                read_ok: read.is_some(),
                granted: read.map_or(0, |r| r.1),
                amnesiac: read.is_some_and(|r| r.2 & CB_FLAG_AMNESIAC != 0),
                behind: read.is_some_and(|r| r.2 & CB_FLAG_BEHIND != 0),
                leading: read.is_some_and(|r| r.2 & CB_FLAG_LEADING != 0),
                epoch: read.map_or(0, |r| r.3),
            };
            if self.link.commands.send(&status).is_err() {
                self.link.channel.add(Counter::PeerStatusDropped, 1);
            }
        }
        let leader = self.election.leader();
        if leader != self.followed {
            if let Some(old) = self.followed {
                if !self.election.is_alive(old) {
                    self.link
                        .channel
                        .set(Counter::LeaderLostAtNs, monotonic_ns());
                }
            }
            self.followed = leader;
        }
        let mut alive = 0u64;
        let mut scores = 0u64;
        for &p in &self.ring {
            if self.election.is_alive(p) {
                alive |= 1 << p;
            }
            scores |= u64::from(self.election.score(p).min(255) as u8) << (8 * u64::from(p));
        }
        let c = &self.link.channel;
        c.set(Counter::AliveMask, alive);
        c.set(Counter::Scores, scores);
        c.add(Counter::ControlHeartbeat, 1);
        work
    }
}

impl Agent for Control {
    fn name(&self) -> &str {
        "election"
    }

    fn do_work(&mut self) -> usize {
        self.turn()
    }
}

/// Waits up to `limit` for `f` to give a value, retrying every few milliseconds.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reader(
    profile: &Profile,
    cluster: &rapax_dataplane::profile::ClusterFile,
    dir: &ClusterDir,
    me: NodeId,
) -> Result<Reader, DaemonError> {
    let geometry = profile.geometry();
    let n = cluster.node_slots();
    match profile.fabric.kind {
        FabricKind::Shm => {
            // The peers' data planes create their regions; wait for them.
            let mut last = None;
            let got = wait_for(Duration::from_secs(30), || {
                match ShmFabric::open_observer(&dir.dir, me, n, &geometry) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        last = Some(e);
                        None
                    }
                }
            });
            match got {
                Some(f) => Ok(Reader::Shm(f)),
                None => Err(last.expect("an error").into()),
            }
        }
        // On rdma with rdma_cm the control mesh is RDMA: READs of the peers' control blocks on
        // watch lanes of this process's own queue pairs, which the owners open for reading only.
        FabricKind::Rdma
            if profile
                .fabric
                .rdma
                .as_ref()
                .is_some_and(|r| r.connect == RdmaConnect::Cm) =>
        {
            let r = profile.fabric.rdma.as_ref().expect("checked above");
            let peers = cluster
                .rdma_peers(me)
                .map_err(|node| DaemonError::MissingAddress {
                    node,
                    what: "rdma_addr",
                })?;
            let net = CmNet::connector(me, cluster.cluster_id(), &peers).map_err(|e| {
                DaemonError::Rdma(RdmaError::Verbs {
                    what: "rdma_cm event channel of the control mesh",
                    source: e,
                })
            })?;
            let fabric = RdmaFabric::open_watcher(
                &RdmaSettings::from_profile(r),
                me,
                n,
                Handshake::Cm(Box::new(net)),
            )?;
            Ok(Reader::Rdma(Box::new(fabric)))
        }
        // On dpdk (and rdma with the UDP handshake) the control mesh is UDP: the data plane
        // serves heartbeat reads on its `udp_addr` (the port belongs to the data plane's
        // process).
        FabricKind::Udp | FabricKind::Dpdk | FabricKind::Rdma => {
            let node = cluster.node(me).expect("member");
            let addr = node
                .control_socket_addr()
                .ok_or(DaemonError::MissingAddress {
                    node: me,
                    what: "control_addr",
                })?;
            let period = Duration::from_micros(profile.election.read_period_us);
            let config = UdpConfig {
                me,
                cluster_id: cluster.cluster_id(),
                peers: cluster.udp_peers(me),
                timeout: (period * 2).max(Duration::from_micros(500)),
                control_readers: Vec::new(),
                clients: Vec::new(),
                // Heartbeat reads only: one in flight per peer, on the control mesh.
                window_ops: 1,
                socket_buffer_bytes: 0,
            };
            let fabric = UdpFabric::bind(addr, config)?;
            Ok(Reader::Udp(
                Box::new(fabric),
                Box::new(NicMemory::new(me, 64)),
            ))
        }
        other => Err(DaemonError::UnsupportedFabric(other.as_str())),
    }
}

/// Runs node `opts.node`'s control plane until the process is signalled.
pub fn run_control(opts: &ControlOptions) -> Result<(), DaemonError> {
    rapax_dataplane::agent::allow_every_core();
    let dir = ClusterDir::new(&opts.dir);
    let (profile, cluster) = load_config(&dir, opts.profile.as_deref(), opts.cluster.as_deref())?;
    rapax_dataplane::agent::reserve_cores(&profile.agents.spin_cores());
    let me = opts.node;
    if cluster.node(me).is_none() {
        return Err(DaemonError::NotAMember {
            node: me,
            cluster: cluster.name.clone(),
        });
    }
    println!(
        "rapax-control: node {me} of cluster {:?}, ring {:?}, effective profile:\n{}",
        cluster.name,
        cluster.ring,
        profile.render()
    );
    let cfg = profile.node_config(me, cluster.ring.clone(), 1);
    let path = dir.channel(me);
    let link =
        wait_for(Duration::from_secs(30), || Link::open(&path)).ok_or_else(|| DaemonError::Io {
            what: format!("channel {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the data plane did not create it within 30 s",
            ),
        })?;
    let reader = reader(&profile, &cluster, &dir, me)?;
    // Every node is watched (spares too: they may join the ring), in succession order: the
    // ring, then the spares. The order follows the configuration the data plane applies.
    let order = cluster.succession();
    let election = Election::new(me, order.clone(), cfg.election.clone());
    let control = Control {
        ring: order,
        epoch: 0,
        followed: election.leader(),
        election,
        reader,
        link,
        start: Instant::now(),
        next_wr: 1,
        pending: std::collections::HashMap::new(),
        actions: Vec::new(),
        last_link_check: Instant::now(),
        processes: (profile.fabric.kind == FabricKind::Shm
            && profile.election.runnable_grace_us > 0)
            .then(|| ProcessTable::new(Duration::from_micros(profile.election.runnable_grace_us))),
    };
    let spec = profile.agents.election;
    let runner = AgentRunner::start(
        Box::new(control),
        IdleStrategy::for_agent(&spec, &profile.backoff),
        spec.core,
    )?;
    println!("rapax-control: node {me} running");
    // The agent has placed itself: the watch below keeps off the profile's pinned cores.
    rapax_dataplane::agent::avoid_cores(&profile.agents.pinned_cores());
    while !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    runner.stop()?;
    Ok(())
}
