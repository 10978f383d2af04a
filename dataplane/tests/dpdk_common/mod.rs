//! What the dpdk fabric's test files share (`dpdk_fabric`, `dpdk_memif`, `dpdk_afpacket`): the
//! process's EAL, turn-taking, node MACs, building a cluster of `DpdkFabric`s on a mesh of ports
//! made by the caller (ring pairs, memif pairs, af_packet ports), waiting until every port's
//! link is up, and the two suites every lane runs: the shared contract suite and revocation
//! under concurrent writers.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rapax_dataplane::fabric::contract::{self, ContractHarness};
use rapax_dataplane::fabric::dpdk::{
    process_dpdk, DpdkConfig, DpdkFabric, DpdkLink, DpdkMemory, DpdkPortSpec, LinkQueues,
    ProcessDpdk,
};
use rapax_dataplane::fabric::framed::FrameHarness;
use rapax_dataplane::fabric::{FabricError, Op, Post, Region};
use rapax_dataplane::protocol::layout::LogGeometry;
use rapax_dataplane::protocol::{Ballot, NodeId};
use rapax_ffi::dpdk::{self, Eal, MacAddr};

pub const GEO: LogGeometry = LogGeometry {
    capacity: 64,
    slot_bytes: 256,
};
pub const CLUSTER: u64 = 0x00d9_d4c1;
pub const B: Ballot = Ballot((1 << 8) | 1);

/// How long the ports of a fresh cluster may take to bring their links up.
const LINK_UP_WAIT: Duration = Duration::from_secs(10);

/// Whether the ffi was built with DPDK; if not, says so for `test` (which then skips).
pub fn dpdk_built(test: &str) -> bool {
    if dpdk::available() {
        return true;
    }
    let err = Eal::init(&[]).unwrap_err();
    assert!(matches!(err, dpdk::Error::NotBuilt(_)), "{err}");
    println!("skipped {test}: {err}");
    false
}

/// The process's EAL and packet pool, initialised by the first test that needs them with the
/// arguments `eal_args` makes (later calls share that environment and do not call it). `None`
/// (after saying why) when the ffi was built without DPDK.
pub fn dpdk_env(
    test: &str,
    eal_args: impl FnOnce() -> Vec<String>,
) -> Option<&'static ProcessDpdk> {
    if !dpdk_built(test) {
        return None;
    }
    static ARGS: Mutex<Option<Vec<String>>> = Mutex::new(None);
    let args = ARGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(eal_args)
        .clone();
    Some(process_dpdk(&args, 16383).expect("the EAL and a pool start"))
}

/// Tests take turns: ports are created and closed on one shared EAL.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn mac_of(node: NodeId) -> MacAddr {
    MacAddr([0x02, 0, 0, 0x5a, 0, node + 1])
}

/// Numbers the meshes of vdevs a test process makes: mesh 0 is the EAL's start-up vdevs (the
/// daemon's path), every later one devices made after start-up under fresh names (closing a
/// port releases it, and a process holds at most `RTE_MAX_ETHPORTS`).
pub struct MeshNumbers {
    startup_taken: AtomicBool,
    next: AtomicU32,
}

impl MeshNumbers {
    pub const fn new() -> MeshNumbers {
        MeshNumbers {
            startup_taken: AtomicBool::new(false),
            next: AtomicU32::new(1),
        }
    }

    /// The next mesh's number: 0 the first time, then 1, 2, ...
    pub fn take(&self) -> u32 {
        if self.startup_taken.swap(true, Ordering::SeqCst) {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        }
    }
}

/// The port of vdev `name` in mesh `mesh`: one of the EAL's start-up vdevs for mesh 0, a device
/// made now from `args` for any later one.
pub fn vdev_port(env: &ProcessDpdk, mesh: u32, name: &str, args: &str) -> u16 {
    if mesh == 0 {
        env.eal.port_by_name(name)
    } else {
        env.eal.hotplug_vdev(name, args)
    }
    .unwrap_or_else(|e| panic!("port {name} ({args}): {e}"))
}

/// `mesh[i]` lists node i's ports (a port per peer, or one port shared by all peers).
pub type Mesh = Vec<Vec<DpdkPortSpec>>;

pub struct Knobs {
    /// Receive and transmit queues per port.
    pub queues: u16,
    pub timeout: Duration,
    pub retransmit: Option<Duration>,
    pub loss_ppm: u32,
}

/// One fabric and one memory per node of `mesh`, returned once every port's link is up.
pub fn cluster(
    env: &'static ProcessDpdk,
    mesh: &Mesh,
    knobs: &Knobs,
) -> (Vec<DpdkFabric<'static>>, Vec<DpdkMemory>) {
    let (eal, pool) = (&env.eal, &env.pool);
    let n = mesh.len() as NodeId;
    let mut nodes: Vec<DpdkFabric<'static>> = (0..n)
        .map(|i| {
            let config = DpdkConfig {
                me: i,
                cluster_id: CLUSTER,
                mac: mac_of(i),
                peers: (0..n).filter(|&p| p != i).map(|p| (p, mac_of(p))).collect(),
                ports: mesh[i as usize].clone(),
                queues: LinkQueues {
                    rx: knobs.queues,
                    tx: knobs.queues,
                    desc: 512,
                },
                timeout: knobs.timeout,
                retransmit: knobs.retransmit,
                window_ops: 64,
                fault_drop_ppm: knobs.loss_ppm,
                fault_seed: 0x9e37_79b9 + u64::from(i),
            };
            DpdkFabric::open(eal, pool, config).expect("open a dpdk fabric")
        })
        .collect();
    let mut mems: Vec<DpdkMemory> = (0..n)
        .map(|i| DpdkMemory::new(i, GEO.log_bytes()))
        .collect();
    wait_links_up(&mut nodes, &mut mems);
    (nodes, mems)
}

/// Polls the idle nodes (which runs their link watch) until every port of every node has its
/// link up, then once more; panics, naming the ports still down, after [`LINK_UP_WAIT`].
///
/// The poll after the links are up matters on memif: a server port can transmit to its client
/// only into buffers the client has posted, and the client posts them on its first receive poll
/// after connecting. Without it, the answers of a node polled before its client peer would be
/// lost (and, without loss recovery, the connection broken).
pub fn wait_links_up(nodes: &mut [DpdkFabric<'static>], mems: &mut [DpdkMemory]) {
    let give_up = Instant::now() + LINK_UP_WAIT;
    loop {
        let down: Vec<(NodeId, Vec<u16>)> = nodes
            .iter()
            .map(|n| (n.me(), n.link().down_ports()))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        for (node, mem) in nodes.iter_mut().zip(mems.iter_mut()) {
            let done = node.poll(mem, Instant::now());
            assert!(done.is_empty(), "nothing was posted: {done:?}");
        }
        if down.is_empty() {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "links still down after {LINK_UP_WAIT:?} (node, port ids): {down:?}; link stats: {:?}",
            nodes
                .iter()
                .map(|n| n.link().stats().clone())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The nodes of `mesh` under the shared frame-fabric harness, `queues` rx and tx queues per port.
pub fn harness(
    env: &'static ProcessDpdk,
    mesh: &Mesh,
    queues: u16,
    retransmit: Option<Duration>,
) -> FrameHarness<DpdkLink<'static>> {
    let knobs = Knobs {
        queues,
        timeout: Duration::from_millis(500),
        retransmit,
        loss_ppm: 0,
    };
    let (nodes, mems) = cluster(env, mesh, &knobs);
    FrameHarness::new(nodes, mems, GEO, knobs.timeout, Duration::from_micros(20))
}

/// The shared contract suite on three-node meshes from `mesh` (a fresh one per check), without
/// loss recovery (the udp behaviour) and with it (the dpdk default).
pub fn run_contract(env: &'static ProcessDpdk, mesh: &mut dyn FnMut() -> Mesh) {
    run_contract_on_queues(env, 1, mesh);
}

/// [`run_contract`] with `queues` rx and tx queues on every port.
pub fn run_contract_on_queues(
    env: &'static ProcessDpdk,
    queues: u16,
    mesh: &mut dyn FnMut() -> Mesh,
) {
    contract::run_all(&mut || Box::new(harness(env, &mesh(), queues, None)));
    contract::run_all(&mut || {
        Box::new(harness(
            env,
            &mesh(),
            queues,
            Some(Duration::from_millis(20)),
        ))
    });
}

/// Point 3 with two writers streaming at once, on three-node meshes from `mesh`: node 1 holds
/// the grant and node 2 is refused; node 1 is revoked mid-stream and node 2 granted. Nothing of
/// node 1 lands after the revoke, every later write of node 2 lands, and all of node 1's
/// failures are permission errors.
pub fn check_revocation_under_concurrent_writers(
    env: &'static ProcessDpdk,
    mesh: &mut dyn FnMut() -> Mesh,
) {
    let b2 = Ballot::new(2, 2);
    for steps in [0, 1, 3, 7, 20] {
        let mut h = harness(env, &mesh(), 1, Some(Duration::from_millis(20)));
        h.memory(0).grant(1, B);
        let write = |wr_id: u64, ballot, slot: u64, fill: u8, reconnect| Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(slot),
                bytes: vec![fill; 64],
            },
            reconnect,
            ballot,
        };
        for i in 0..30u64 {
            h.post(1, write(i, B, i, 0x11, false));
            h.post(2, write(100 + i, b2, 32 + i, 0x22, i == 0));
        }
        let mut done = Vec::new();
        for _ in 0..steps {
            done.extend(h.step());
        }
        h.memory(0).revoke(1);
        let mut after_revoke = vec![0u8; GEO.log_bytes()];
        h.memory(0).read_log(0, &mut after_revoke);
        h.memory(0).grant(2, b2);
        for i in 30..32u64 {
            h.post(1, write(i, B, i, 0x11, false));
        }
        // Node 2 reconnects under its fresh grant and streams.
        for i in 0..20u64 {
            h.post(2, write(200 + i, b2, 32 + i, 0x33, i == 0));
        }
        done.extend(h.drain());
        assert_eq!(
            done.len(),
            32 + 30 + 20,
            "steps {steps}: every write completes"
        );
        let mut log = vec![0u8; GEO.log_bytes()];
        h.memory(0).read_log(0, &mut log);
        for slot in 0..32u64 {
            let at = GEO.slot_offset(slot);
            assert_eq!(
                log[at..at + 64],
                after_revoke[at..at + 64],
                "steps {steps}: node 1 landed in slot {slot} after the revoke"
            );
        }
        for (node, c) in &done {
            if *node == 1 {
                if let Err(e) = c.result {
                    assert_eq!(e, FabricError::Permission, "steps {steps}: {c:?}");
                }
                if c.wr_id >= 30 {
                    assert!(c.result.is_err(), "steps {steps}: {c:?}");
                }
            }
            if c.wr_id >= 200 {
                assert_eq!(c.result, Ok(None), "steps {steps}: node 2 after its grant");
            }
        }
        for slot in 32..52u64 {
            let at = GEO.slot_offset(slot);
            assert_eq!(log[at..at + 64], [0x33; 64], "steps {steps}: slot {slot}");
        }
    }
}
