//! The `dpdk` data plane of the daemon: the data mesh over DPDK ports ([`DpdkFabric`]), the
//! control mesh's heartbeat reads over the node's UDP socket (`udp_addr`, as on `udp`: the
//! control plane is a separate process and cannot share the DPDK port), and clients through the
//! shm mailbox (a local cluster). All three act on one [`DpdkMemory`], polled in turn from the
//! data plane's agent.
//!
//! EAL arguments are the profile's `fabric.dpdk.eal_args`, then `--file-prefix=rapax-<cluster
//! id>-<node>` (node processes on one host must not share DPDK's runtime files), then, with
//! `fabric.dpdk.memif_dir`, one `net_memif` vdev per peer: socket
//! `<memif_dir>/<cluster id>-memif-<lower>-<higher>.sock` (not abstract), the lower node id the server,
//! `id=0`, the node's MAC from the cluster file. Without `memif_dir` the one port
//! `fabric.dpdk.port` reaches every peer.

use std::time::{Duration, Instant};

use super::{io_err, publish_frame_stats, ClusterDir, DaemonError, MailboxDoor, Plane, Route};
use crate::channel::Channel;
use crate::fabric::dpdk::{
    process_dpdk, DpdkConfig, DpdkFabric, DpdkMemory, DpdkPortSpec, LinkQueues,
};
use crate::fabric::udp::UdpFabric;
use crate::fabric::{Completion, Post};
use crate::mailbox::MailboxServer;
use crate::profile::{ClusterFile, Profile};
use crate::protocol::node::{BadRequest, ClientReply, ClientRequest};
use crate::protocol::NodeId;
use rapax_ffi::dpdk::MacAddr;

pub(super) struct DpdkPlane {
    fabric: DpdkFabric<'static>,
    /// Serves control-block reads of the members' control planes; posts nothing.
    control: UdpFabric,
    mem: DpdkMemory,
    door: MailboxDoor,
    discard: Vec<Completion>,
    /// When the control endpoint is polled next (a socket read is a system call: not every
    /// turn).
    next_control_poll: Instant,
}

/// Resends of a lost frame an operation outlives before it times out (loss recovery on).
const RESENDS_PER_TIMEOUT: u64 = 10;

/// How often the control endpoint (heartbeat reads, every few milliseconds) is polled.
const CONTROL_POLL_EVERY: Duration = Duration::from_micros(50);

impl Plane for DpdkPlane {
    type Mem = DpdkMemory;

    fn mem(&mut self) -> &mut DpdkMemory {
        &mut self.mem
    }

    fn post(&mut self, post: Post) {
        self.fabric.post(post, Instant::now());
    }

    fn poll(&mut self, out: &mut Vec<Completion>) {
        let now = Instant::now();
        out.extend(self.fabric.poll(&mut self.mem, now));
        if now >= self.next_control_poll {
            self.next_control_poll = now + CONTROL_POLL_EVERY;
            self.discard.clear();
            self.discard.extend(self.control.poll(&mut self.mem, now));
        }
    }

    fn ingress(&mut self, sink: &mut Vec<(Result<ClientRequest, BadRequest>, Route)>) -> usize {
        self.door.ingress(sink)
    }

    fn answer(&mut self, route: Route, reply: ClientReply) {
        self.door.answer(route, reply);
    }

    fn publish(&self, channel: &Channel) {
        publish_frame_stats(self.fabric.stats(), channel);
    }
}

fn mac_of(cluster: &ClusterFile, node: NodeId) -> Result<MacAddr, DaemonError> {
    cluster
        .node(node)
        .and_then(|n| n.dpdk_mac_bytes())
        .map(MacAddr)
        .ok_or(DaemonError::MissingAddress {
            node,
            what: "dpdk_mac",
        })
}

/// The EAL arguments of node `me` (module docs).
pub fn eal_args(profile: &Profile, cluster: &ClusterFile, me: NodeId) -> Vec<String> {
    let d = profile.fabric.dpdk.clone().unwrap_or_default();
    let mut args = d.eal_args.clone();
    args.push(format!(
        "--file-prefix=rapax-{:x}-{me}",
        cluster.cluster_id()
    ));
    if let Some(dir) = &d.memif_dir {
        for peer in cluster.nodes.iter().map(|n| n.id).filter(|&p| p != me) {
            let (lo, hi) = (me.min(peer), me.max(peer));
            let role = if me == lo { "server" } else { "client" };
            let mac = cluster
                .node(me)
                .and_then(|n| n.dpdk_mac.clone())
                .unwrap_or_default();
            args.push(format!(
                "--vdev=net_memif{peer},role={role},id=0,socket={dir}/{:x}-memif-{lo}-{hi}.sock,\
                 socket-abstract=no,mac={mac}",
                cluster.cluster_id()
            ));
        }
    }
    args
}

/// Starts the EAL, opens the ports and the control endpoint, creates the mailbox.
pub(super) fn open(
    profile: &Profile,
    cluster: &ClusterFile,
    dir: &ClusterDir,
    me: NodeId,
    mailbox_bytes: usize,
) -> Result<DpdkPlane, DaemonError> {
    let d = profile.fabric.dpdk.clone().unwrap_or_default();
    if let Some(memif) = &d.memif_dir {
        std::fs::create_dir_all(memif).map_err(io_err(format!("create {memif}")))?;
    }
    if let Some(memif) = &d.memif_dir {
        // The sockets this node serves are made afresh by its EAL: drop an old run's.
        for peer in cluster.nodes.iter().map(|n| n.id).filter(|&p| p > me) {
            let _ = std::fs::remove_file(format!(
                "{memif}/{:x}-memif-{me}-{peer}.sock",
                cluster.cluster_id()
            ));
        }
    }
    let args = eal_args(profile, cluster, me);
    println!("rapax-dataplane: node {me} EAL {args:?}");
    let env = process_dpdk(&args, d.mempool_mbufs)?;
    // rte_eal_init pins the calling thread to its main lcore; agents choose their own cores.
    crate::agent::allow_every_core();
    let peers: Vec<(NodeId, MacAddr)> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&p| p != me)
        .map(|p| Ok((p, mac_of(cluster, p)?)))
        .collect::<Result<_, DaemonError>>()?;
    let ports = if d.memif_dir.is_some() {
        peers
            .iter()
            .map(|&(p, _)| {
                Ok(DpdkPortSpec {
                    port_id: env
                        .eal
                        .port_by_name(&format!("net_memif{p}"))
                        .map_err(crate::fabric::dpdk::DpdkError::from)?,
                    peer: Some(p),
                    // This node dials the peers below it (`eal_args`: the lower id serves).
                    redial: p < me,
                })
            })
            .collect::<Result<Vec<_>, DaemonError>>()?
    } else {
        vec![DpdkPortSpec {
            port_id: d.port,
            peer: None,
            redial: false,
        }]
    };
    // With loss recovery an operation must outlive several resends of a lost frame (go-back-N
    // resends a whole window): a catch-up of thousands of writes under loss must not fail for
    // want of one more resend and start over.
    let timeout = Duration::from_micros(
        profile
            .election
            .retry_us
            .max(RESENDS_PER_TIMEOUT * d.retransmit_us)
            .max(1000),
    );
    let config = DpdkConfig {
        me,
        cluster_id: cluster.cluster_id(),
        mac: mac_of(cluster, me)?,
        peers,
        ports,
        queues: LinkQueues {
            rx: d.rx_queues,
            tx: d.tx_queues,
            desc: d.ring_desc,
        },
        timeout,
        retransmit: (d.retransmit_us > 0).then(|| Duration::from_micros(d.retransmit_us)),
        window_ops: d.send_window_ops,
        fault_drop_ppm: d.fault_drop_ppm,
        fault_seed: cluster.cluster_id() ^ u64::from(me),
    };
    let fabric = DpdkFabric::open(&env.eal, &env.pool, config)?;
    let control = super::control_endpoint(cluster, me, timeout)?;
    let mailbox = MailboxServer::create(&dir.mailbox(me), super::MAX_SLOTS, mailbox_bytes)?;
    Ok(DpdkPlane {
        fabric,
        control,
        mem: DpdkMemory::new(me, profile.geometry().log_bytes()),
        door: MailboxDoor::new(mailbox, me, cluster.cluster_id()),
        discard: Vec::new(),
        next_control_poll: Instant::now(),
    })
}
