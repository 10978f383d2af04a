//! The `dpdk` fabric end to end in one process: the EAL once (`--no-huge`, no PCI), three nodes
//! whose links are pairs of ring-backed ethdev ports wired as a full mesh (one port per peer, as
//! with memif), the shared contract suite, revocation under concurrent writers, loss injected on
//! send with and without loss recovery, and the frame round-trip floor. Skips, saying why, when
//! the ffi was built without DPDK.
//!
//! The contract and revocation suites, and the cluster set-up, live in `dpdk_common` and run on
//! other ports too: `dpdk_memif` (net_memif pairs) and `dpdk_afpacket` (net_af_packet over veth
//! pairs on a bridge in a network namespace).

mod dpdk_common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dpdk_common::{
    check_revocation_under_concurrent_writers, cluster, mac_of, run_contract,
    run_contract_on_queues, serial, Knobs, Mesh, B, GEO,
};
use rapax_dataplane::fabric::dpdk::{
    frame_round_trip_ns, ring_pair_floor_ns, software_eal_args, DpdkLink, DpdkMemory, DpdkPortSpec,
    LinkQueues, ProcessDpdk,
};
use rapax_dataplane::fabric::{FabricError, LocalMemory, Op, Post, Region};
use rapax_dataplane::protocol::NodeId;
use rapax_ffi::dpdk::Eal;

/// The process's EAL (software ports only) and packet pool.
fn dpdk_env(test: &str) -> Option<&'static ProcessDpdk> {
    dpdk_common::dpdk_env(test, || software_eal_args("rapax-dpdk"))
}

/// Ring port pairs for every pair of `n` nodes: `ports[i]` lists node i's (port, peer).
fn mesh(eal: &Eal, n: NodeId) -> Mesh {
    mesh_queues(eal, n, 1)
}

/// As [`mesh`], each ring port with `queues` rx and tx queues (a ring pair per queue).
fn mesh_queues(eal: &Eal, n: NodeId, queues: u16) -> Mesh {
    static PAIRS: AtomicU32 = AtomicU32::new(0);
    let mut ports = vec![Vec::new(); n as usize];
    for i in 0..n {
        for j in i + 1..n {
            let k = PAIRS.fetch_add(1, Ordering::Relaxed);
            let (pi, pj) = eal
                .ring_port_pair_queues(&format!("r{k}n{i}"), &format!("r{k}n{j}"), 1024, queues)
                .expect("a ring port pair");
            ports[i as usize].push(DpdkPortSpec {
                port_id: pi,
                peer: Some(j),
                redial: false,
            });
            ports[j as usize].push(DpdkPortSpec {
                port_id: pj,
                peer: Some(i),
                redial: false,
            });
        }
    }
    ports
}

#[test]
fn the_contract_holds_on_dpdk() {
    let Some(env) = dpdk_env("the_contract_holds_on_dpdk") else {
        return;
    };
    let _turn = serial();
    run_contract(env, &mut || mesh(&env.eal, 3));
}

/// Every port with two rx and two tx queues (the profile's `rx_queues`/`tx_queues`): the link
/// polls both receive queues and sends each peer's frames on one transmit queue, chosen by the
/// peer's MAC, so some nodes receive on queue 1 only. The suite passes only if those frames are
/// received.
#[test]
fn the_contract_holds_on_dpdk_with_two_queues_per_port() {
    let Some(env) = dpdk_env("the_contract_holds_on_dpdk_with_two_queues_per_port") else {
        return;
    };
    let _turn = serial();
    run_contract_on_queues(env, 2, &mut || mesh_queues(&env.eal, 3, 2));
}

/// Revocation with two writers streaming at once (`dpdk_common`), on ring port pairs.
#[test]
fn revocation_is_complete_under_concurrent_writers() {
    let Some(env) = dpdk_env("revocation_is_complete_under_concurrent_writers") else {
        return;
    };
    let _turn = serial();
    check_revocation_under_concurrent_writers(env, &mut || mesh(&env.eal, 3));
}

/// Write `k` of the loss test: slot `k % capacity`, its bytes naming `k`.
fn numbered_write(k: u64, reconnect: bool) -> Post {
    let mut bytes = vec![0xa5u8; 64];
    bytes[..8].copy_from_slice(&(k + 1).to_le_bytes());
    Post {
        wr_id: k,
        target: 0,
        op: Op::Write {
            region: Region::Log,
            offset: GEO.slot_offset(k % GEO.capacity),
            bytes,
        },
        reconnect,
        ballot: B,
    }
}

/// The writes that landed form a prefix `[0, landed)` of the posting order, each applied once:
/// every slot holds the last write of that prefix to it (a write applied twice, or one landing
/// behind a gap, leaves a slot that no prefix explains). Returns the prefix length.
fn landed_prefix(mem: &DpdkMemory, writes: u64) -> u64 {
    let slot_value = |s: u64| {
        let at = GEO.slot_offset(s);
        u64::from_le_bytes(mem.log()[at..at + 8].try_into().unwrap())
    };
    let explains = |prefix: u64| {
        (0..GEO.capacity).all(|s| {
            let last = (0..prefix).rev().find(|k| k % GEO.capacity == s);
            slot_value(s) == last.map_or(0, |k| k + 1)
        })
    };
    (0..=writes)
        .rev()
        .find(|&p| explains(p))
        .unwrap_or_else(|| panic!("no prefix of the posting order explains the log"))
}

fn run_lossy(env: &'static ProcessDpdk, loss_ppm: u32, retransmit: Option<Duration>) {
    const WRITES: u64 = 600;
    let knobs = Knobs {
        queues: 1,
        timeout: Duration::from_millis(800),
        retransmit,
        loss_ppm,
    };
    let (mut nodes, mut mems) = cluster(env, &mesh(&env.eal, 2), &knobs);
    mems[0].grant(1, B);
    for k in 0..WRITES {
        nodes[1].post(numbered_write(k, k == 0), Instant::now());
    }
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut results = vec![None; WRITES as usize];
    let mut seen = 0;
    while seen < WRITES {
        assert!(Instant::now() < give_up, "loss {loss_ppm} ppm: no progress");
        for (node, mem) in nodes.iter_mut().zip(mems.iter_mut()) {
            for c in node.poll(mem, Instant::now()) {
                assert!(results[c.wr_id as usize].is_none(), "completed twice");
                results[c.wr_id as usize] = Some(c.result);
                seen += 1;
            }
        }
    }
    let first_failure = results
        .iter()
        .position(|r| r.as_ref() != Some(&Ok(None)))
        .map_or(WRITES, |p| p as u64);
    let landed = landed_prefix(&mems[0], WRITES);
    let (poster, owner) = (nodes[1].stats(), nodes[0].stats());
    println!(
        "loss {loss_ppm} ppm, retransmit {retransmit:?}: {first_failure} of {WRITES} Ok before the \
         first failure, {landed} landed; poster {poster:?}; owner {owner:?}"
    );
    // The writes that landed are a prefix of the posting order (checked above, with no write
    // applied twice); every Ok write is in it, and nothing behind the gap landed: a write past
    // the prefix failed. Inside the prefix a write may have failed only because its completion
    // was lost (it landed, in order, and the poster timed out).
    for (k, r) in results.iter().enumerate() {
        let r = r.as_ref().expect("completed");
        if r.is_ok() {
            assert!(
                (k as u64) < landed,
                "write {k} completed Ok but did not land"
            );
        } else {
            assert_eq!(*r, Err(FabricError::Unreachable), "write {k}");
        }
    }
    assert!(first_failure <= landed);
    assert!(
        poster.fault_drops + owner.fault_drops > 0,
        "loss was injected"
    );
    if retransmit.is_some() {
        assert_eq!(first_failure, WRITES, "loss recovery kept the connection");
        assert!(poster.retransmits > 0);
    }
}

#[test]
fn loss_is_recovered_or_breaks_the_connection_cleanly() {
    let Some(env) = dpdk_env("loss_is_recovered_or_breaks_the_connection_cleanly") else {
        return;
    };
    let _turn = serial();
    for loss_ppm in [10_000, 100_000] {
        run_lossy(env, loss_ppm, Some(Duration::from_millis(5)));
        run_lossy(env, loss_ppm, None);
    }
}

#[test]
fn the_frame_round_trip_floor_measures_real_round_trips() {
    let Some(env) = dpdk_env("the_frame_round_trip_floor_measures_real_round_trips") else {
        return;
    };
    let (eal, pool) = (&env.eal, &env.pool);
    let _turn = serial();
    let ports = mesh(eal, 2);
    let link = |i: NodeId| {
        DpdkLink::open(
            eal,
            pool,
            mac_of(i),
            &ports[i as usize],
            &[(1 - i, mac_of(1 - i))],
            LinkQueues::single(256),
        )
        .expect("a link")
    };
    let (mut a, mut b) = (link(0), link(1));
    let rtts = frame_round_trip_ns(&mut a, &mut b, 64, 10, 500).expect("round trips");
    assert_eq!(rtts.len(), 500);
    assert!(rtts.iter().all(|&ns| ns > 0 && ns < 1_000_000_000));
    let mut sorted = rtts.clone();
    sorted.sort_unstable();
    println!(
        "dpdk ring-pair frame round trip, 64 B: p50 {} ns, max {} ns",
        sorted[250], sorted[499]
    );
    assert!(frame_round_trip_ns(&mut a, &mut b, 4, 0, 1).is_err());
    let in_use = pool.in_use_count();
    drop((a, b));
    assert!(pool.in_use_count() <= in_use, "mbufs leaked");
    // The same on fresh ports, as `rapax bench` measures it.
    let rtts = ring_pair_floor_ns(env, 256, 10, 100).expect("the ring-pair floor");
    assert_eq!(rtts.len(), 100);
}
