//! The `rdma` data plane of the daemon: the data mesh over RC queue pairs ([`RdmaFabric`], one
//! node per process, connections made through rdma_cm, or the UDP handshake, on the node's
//! `rdma_addr`), and clients through the shm mailbox (a local cluster).
//!
//! The control mesh: with rdma_cm the members' control planes read this node's control block
//! with RDMA READs on watch lanes of their own, which need nothing of this process but to accept
//! their connections. With the UDP handshake they read it over UDP, and this plane answers on
//! its `udp_addr` (as on `udp` and `dpdk`) from a copy of its control block taken just before
//! each poll of that endpoint, so the control plane reads what the peers' data planes read over
//! RDMA.

use std::time::{Duration, Instant};

use super::{ClusterDir, DaemonError, MailboxDoor, Plane, Route};
use crate::channel::{Channel, Counter};
use crate::fabric::nic::NicMemory;
use crate::fabric::rdma::cm_net::CmNet;
use crate::fabric::rdma::net::RdmaNet;
use crate::fabric::rdma::{Handshake, RdmaError};
use crate::fabric::rdma::{RdmaFabric, RdmaSettings};
use crate::fabric::udp::UdpFabric;
use crate::fabric::{Completion, LocalMemory, Post};
use crate::mailbox::MailboxServer;
use crate::profile::{ClusterFile, Profile, RdmaConnect, RdmaPosting};
use crate::protocol::node::{BadRequest, ClientReply, ClientRequest};
use crate::protocol::NodeId;

pub(super) struct RdmaPlane {
    fabric: RdmaFabric,
    /// Serves control-block reads of the members' control planes over UDP (with the UDP
    /// handshake only); posts nothing.
    control: Option<UdpFabric>,
    /// The control block as the control endpoint serves it (no log).
    mirror: NicMemory,
    door: MailboxDoor,
    discard: Vec<Completion>,
    next_control_poll: Instant,
    /// Posts since the clock was last looked at in `post`.
    posts_unchecked: u32,
    /// `fabric.rdma.posting = "serial"`: one post at a time (software RDMA).
    serial: bool,
}

/// How often the control endpoint (heartbeat reads, every few milliseconds) is polled. (Every
/// millisecond instead stalled the catch-up of restarted nodes on soft-RoCE; not understood.)
const CONTROL_POLL_EVERY: Duration = Duration::from_micros(50);

impl Plane for RdmaPlane {
    type Mem = RdmaFabric;

    fn mem(&mut self) -> &mut RdmaFabric {
        &mut self.fabric
    }

    /// A long burst of posts (a restarted follower caught up: a thousand writes in one turn,
    /// each a system call, tens of milliseconds under emulation) is work, not a stuck node:
    /// every 32 posts, once the control endpoint is due, the burst beats the heartbeat, answers
    /// the members' heartbeat reads (over UDP) and serves connection requests (rdma_cm: a
    /// control plane reconnecting its watch lane). Without it the other members' control
    /// planes saw a leader busy catching a node up as failed, stood, deposed it and caught the
    /// node up themselves, in turn, for twenty seconds (soft-RoCE lane; with the RDMA control
    /// mesh the reads need no CPU of ours, but a watch lane broken by an earlier restart could
    /// not come back until the burst ended, and it never did).
    fn post(&mut self, post: Post) {
        self.fabric.post(post);
        self.posts_unchecked += 1;
        if self.posts_unchecked >= 32 {
            self.posts_unchecked = 0;
            let now = Instant::now();
            if now >= self.next_control_poll {
                crate::protocol::node::beat(&mut self.fabric);
                self.serve_control(now);
                self.fabric.serve_connections();
            }
        }
    }

    fn serial_posts(&self) -> bool {
        self.serial
    }

    /// Completions first; the control endpoint when due, and, after a poll that found
    /// completions (the next step of a command's path), only once it is a whole period late.
    fn poll(&mut self, out: &mut Vec<Completion>) {
        let before = out.len();
        self.fabric.poll_into(out);
        let now = Instant::now();
        let due = if out.len() == before {
            now >= self.next_control_poll
        } else {
            now >= self.next_control_poll + CONTROL_POLL_EVERY
        };
        if due {
            self.serve_control(now);
        }
    }

    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize {
        self.door.ingress(sink)
    }

    fn answer(&mut self, route: Route, reply: ClientReply) {
        self.door.answer(route, reply);
    }

    fn publish(&self, channel: &Channel) {
        if let Some(s) = self.fabric.net_stats() {
            channel.set(Counter::FabricStrangers, s.strangers);
            channel.set(Counter::FabricDecodeErrors, s.malformed);
        }
        let c = self.fabric.counters();
        channel.set(Counter::FabricRightsFallbacks, c.fallback_cycles);
        channel.set(Counter::FabricFenceFailures, c.fence_failures);
        channel.set(Counter::FabricQpsOnPath, c.qps_on_path);
        channel.set(Counter::FabricRegionsOnPath, c.regions_on_path);
    }
}

impl RdmaPlane {
    /// Answers the heartbeat reads waiting at the control endpoint (if there is one) from a
    /// fresh copy of the control block.
    fn serve_control(&mut self, now: Instant) {
        self.next_control_poll = now + CONTROL_POLL_EVERY;
        let Some(control) = self.control.as_mut() else {
            return;
        };
        self.fabric.read_control(0, self.mirror.control_mut());
        self.discard.clear();
        self.discard.extend(control.poll(&mut self.mirror, now));
    }
}

/// Opens the device and node `me`'s memory, the handshake endpoint (and, with the UDP
/// handshake, the control endpoint), the mailbox.
pub(super) fn open(
    profile: &Profile,
    cluster: &ClusterFile,
    dir: &ClusterDir,
    me: NodeId,
    mailbox_bytes: usize,
) -> Result<RdmaPlane, DaemonError> {
    let r = profile
        .fabric
        .rdma
        .as_ref()
        .ok_or(DaemonError::UnsupportedFabric("rdma without [fabric.rdma]"))?;
    let settings = RdmaSettings::from_profile(r);
    let missing = |node| DaemonError::MissingAddress {
        node,
        what: "rdma_addr",
    };
    let peers = cluster.rdma_peers(me).map_err(missing)?;
    let at = cluster
        .node(me)
        .and_then(|x| x.rdma_socket_addr())
        .ok_or(missing(me))?;
    let net = match r.connect {
        RdmaConnect::Cm => Handshake::Cm(Box::new(
            CmNet::bind(at, me, cluster.cluster_id(), &peers).map_err(|e| {
                DaemonError::Rdma(RdmaError::Verbs {
                    what: "rdma_cm listener on rdma_addr (an address of the RDMA netdev)",
                    source: e,
                })
            })?,
        )),
        RdmaConnect::Udp => {
            Handshake::Udp(RdmaNet::bind(at, me, cluster.cluster_id(), &peers).map_err(
                super::io_err(format!("bind the rdma handshake socket {at}")),
            )?)
        }
    };
    let fabric = RdmaFabric::open_node(
        &settings,
        me,
        cluster.node_slots(),
        &profile.geometry(),
        net,
    )?;
    let control = match r.connect {
        // The control planes read over RDMA: nothing to answer here.
        RdmaConnect::Cm => None,
        RdmaConnect::Udp => {
            let period = Duration::from_micros(profile.election.read_period_us);
            Some(super::control_endpoint(
                cluster,
                me,
                (period * 2).max(Duration::from_millis(1)),
            )?)
        }
    };
    let mailbox = MailboxServer::create(&dir.mailbox(me), super::MAX_SLOTS, mailbox_bytes)?;
    Ok(RdmaPlane {
        fabric,
        control,
        mirror: NicMemory::new(me, 64),
        door: MailboxDoor::new(mailbox, me, cluster.cluster_id()),
        discard: Vec::new(),
        next_control_poll: Instant::now(),
        posts_unchecked: 0,
        serial: r.posting == RdmaPosting::Serial,
    })
}
