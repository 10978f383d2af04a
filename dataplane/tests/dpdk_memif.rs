//! The `dpdk` fabric on `net_memif` ports in one process (a process of its own, so an EAL of its
//! own): three nodes wired as a full mesh, one memif pair per node pair, the lower node's port
//! the server and the higher node's the client on one socket file (`id=0`, not abstract, the
//! node's MAC), as the daemon wires node processes (`daemon_dpdk::eal_args`). DPDK accepts a
//! server and a client on the same socket in one process: the client connects to the server's
//! listener through the socket file and the pair comes up as between two processes.
//!
//! The first mesh's vdevs are given to the EAL at start-up (`--vdev=...`, the daemon's path).
//! Closing a port releases it and DPDK holds at most `RTE_MAX_ETHPORTS` (32) ports, while the
//! suites open a fresh mesh of six ports per check, so every later mesh is made with the same
//! device arguments after start-up (`Eal::hotplug_vdev`), under fresh names and socket files.
//! The sockets are in a fresh directory under the system temp dir, removed when a test ends.
//! Each cluster starts once every port's link is up (memif: its peer connected), or the test
//! panics saying which ports are down.
//!
//! Runs the shared contract suite (with and without loss recovery) and revocation under
//! concurrent writers, exactly as `dpdk_fabric` does on ring pairs. Skips, saying why, when the
//! ffi was built without DPDK.

mod dpdk_common;

use std::path::PathBuf;

use dpdk_common::{
    check_revocation_under_concurrent_writers, mac_of, run_contract, serial, vdev_port, Mesh,
    MeshNumbers,
};
use rapax_dataplane::fabric::dpdk::{software_eal_args, DpdkPortSpec, ProcessDpdk};
use rapax_dataplane::protocol::NodeId;

const NODES: NodeId = 3;

/// The directory of this process's memif sockets.
fn socket_dir() -> PathBuf {
    std::env::temp_dir().join(format!("rapax-memif-{}", std::process::id()))
}

/// The port name and device arguments of node `me`'s memif port to `peer` in mesh `k`.
fn memif_vdev(k: u32, me: NodeId, peer: NodeId) -> (String, String) {
    let (lo, hi) = (me.min(peer), me.max(peer));
    let role = if me == lo { "server" } else { "client" };
    let socket = socket_dir().join(format!("m{k}-memif-{lo}-{hi}.sock"));
    (
        format!("net_memif_m{k}n{me}p{peer}"),
        format!(
            "role={role},id=0,socket={},socket-abstract=no,mac={}",
            socket.display(),
            mac_of(me)
        ),
    )
}

/// Every (node, peer, name, args) of mesh `k`, each pair's server before its client.
fn mesh_vdevs(k: u32) -> Vec<(NodeId, NodeId, String, String)> {
    let mut out = Vec::new();
    for i in 0..NODES {
        for j in i + 1..NODES {
            for (me, peer) in [(i, j), (j, i)] {
                let (name, args) = memif_vdev(k, me, peer);
                out.push((me, peer, name, args));
            }
        }
    }
    out
}

/// The EAL arguments: software ports only, plus mesh 0's memif vdevs in a fresh socket dir.
fn eal_args() -> Vec<String> {
    let dir = socket_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the memif socket dir");
    let mut args = software_eal_args("rapax-memif");
    for (_, _, name, devargs) in mesh_vdevs(0) {
        args.push(format!("--vdev={name},{devargs}"));
    }
    args
}

fn dpdk_env(test: &str) -> Option<&'static ProcessDpdk> {
    dpdk_common::dpdk_env(test, eal_args)
}

/// A fresh three-node memif mesh: mesh 0 (the EAL's start-up vdevs) the first time, then new
/// devices made after start-up.
fn memif_mesh(env: &'static ProcessDpdk) -> Mesh {
    static MESHES: MeshNumbers = MeshNumbers::new();
    let k = MESHES.take();
    if k != 0 {
        std::fs::create_dir_all(socket_dir()).expect("create the memif socket dir");
    }
    let mut mesh = vec![Vec::new(); NODES as usize];
    for (me, peer, name, args) in mesh_vdevs(k) {
        let port_id = vdev_port(env, k, &name, &args);
        mesh[me as usize].push(DpdkPortSpec {
            port_id,
            peer: Some(peer),
            redial: me > peer,
        });
    }
    mesh
}

/// Removes the socket directory when a test ends (every mesh is closed by then, and a later
/// test makes the directory again).
struct SocketDir;

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(socket_dir());
    }
}

#[test]
fn the_contract_holds_on_memif() {
    let Some(env) = dpdk_env("the_contract_holds_on_memif") else {
        return;
    };
    let _turn = serial();
    let _dir = SocketDir;
    run_contract(env, &mut || memif_mesh(env));
}

#[test]
fn revocation_is_complete_under_concurrent_writers_on_memif() {
    let Some(env) = dpdk_env("revocation_is_complete_under_concurrent_writers_on_memif") else {
        return;
    };
    let _turn = serial();
    let _dir = SocketDir;
    check_revocation_under_concurrent_writers(env, &mut || memif_mesh(env));
}
