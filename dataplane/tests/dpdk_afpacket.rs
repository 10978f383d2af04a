//! The `dpdk` fabric on `net_af_packet` ports over veth pairs, in a network namespace the test
//! creates: a Linux bridge `br0` and three veth pairs, `rpx<i>` (node i's interface, given node
//! i's MAC) and `rpx<i>b` (its end on the bridge). Frames are addressed by MAC, so the bridge
//! carries the three nodes' frames as a switch would; each node has one port that reaches every
//! peer (`peer: None`, as on a NIC), with one rx and one tx queue, at the veths' MTU of 1500.
//!
//! af_packet binds to an interface of the namespace of the process that opens it, so the test
//! runs its body in a child: the same test binary, started with `ip netns exec` in the
//! namespace and told so by the environment. The child starts the EAL with the first mesh's
//! three af_packet vdevs (`--vdev=net_af_packet...,iface=rpx<i>`); each later cluster gets fresh
//! devices on the same interfaces after start-up (`Eal::hotplug_vdev`: closing a port releases
//! it, see `dpdk_memif`). It runs the shared contract suite (with and without loss recovery) and
//! revocation under concurrent writers, as `dpdk_fabric` does on ring pairs; the parent passes
//! when the child does. The namespace, and with it every interface in it, is deleted when the
//! test ends, pass or fail (a drop guard), and a leftover of a crashed run of the same process
//! id is deleted first.
//!
//! `hw-profiles/dpdk-afpacket-veth.toml` describes the same port for a node; its comment says
//! why the lane is af_packet and not af_xdp.
//!
//! Skips, saying why, when the ffi was built without DPDK, when not root, or without `ip`
//! (iproute2; `tools/check.sh` installs it).

mod dpdk_common;

use std::process::Command;

use dpdk_common::{
    check_revocation_under_concurrent_writers, dpdk_built, mac_of, run_contract, serial, vdev_port,
    Mesh, MeshNumbers,
};
use rapax_dataplane::fabric::dpdk::{software_eal_args, DpdkPortSpec, ProcessDpdk};
use rapax_dataplane::protocol::NodeId;

const NODES: NodeId = 3;
const TEST: &str = "the_contract_holds_on_af_packet_over_veth";
/// Set in the child: the namespace it runs in.
const NETNS_ENV: &str = "RAPAX_AFPACKET_NETNS";
/// What the child prints once both suites passed (the parent checks it ran, not skipped).
const DONE: &str = "af_packet lane: the contract and revocation held";

/// Node `me`'s interface.
fn iface(me: NodeId) -> String {
    format!("rpx{me}")
}

/// The port name and device arguments of node `me`'s af_packet port in mesh `k`.
fn af_packet_vdev(k: u32, me: NodeId) -> (String, String) {
    (
        format!("net_af_packet_m{k}n{me}"),
        format!("iface={},qpairs=1", iface(me)),
    )
}

/// A fresh three-node mesh of af_packet ports, one per node: mesh 0 (the EAL's start-up vdevs)
/// the first time, then new devices made after start-up.
fn af_packet_mesh(env: &'static ProcessDpdk) -> Mesh {
    static MESHES: MeshNumbers = MeshNumbers::new();
    let k = MESHES.take();
    (0..NODES)
        .map(|me| {
            let (name, args) = af_packet_vdev(k, me);
            let port_id = vdev_port(env, k, &name, &args);
            vec![DpdkPortSpec {
                port_id,
                peer: None,
                redial: false,
            }]
        })
        .collect()
}

/// The EAL arguments of the child: software ports only, plus mesh 0's af_packet vdevs.
fn eal_args() -> Vec<String> {
    let mut args = software_eal_args("rapax-afpacket");
    for me in 0..NODES {
        let (name, devargs) = af_packet_vdev(0, me);
        args.push(format!("--vdev={name},{devargs}"));
    }
    args
}

/// Whether this process's effective user id is 0 (the second figure of `Uid:` in
/// /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs `ip args`; the error says which command failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespace with the bridge and the veth pairs; deleted (with every interface in it) on
/// drop.
struct VethLab {
    ns: String,
}

impl VethLab {
    fn create() -> Result<VethLab, String> {
        let lab = VethLab {
            ns: format!("rpxafp{}", std::process::id()),
        };
        // A leftover of a crashed run with this process id goes first.
        let _ = ip(&["netns", "del", &lab.ns]);
        ip(&["netns", "add", &lab.ns])?;
        let ns = lab.ns.as_str();
        // No IPv6 autoconfiguration chatter on the veths (the ports would skip it anyway).
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .output();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        for me in 0..NODES {
            let (a, b) = (iface(me), format!("{}b", iface(me)));
            let mac = mac_of(me).to_string();
            ip(&[
                "-n", ns, "link", "add", &a, "mtu", "1500", "address", &mac, "type", "veth",
                "peer", "name", &b,
            ])?;
            ip(&["-n", ns, "link", "set", &b, "master", "br0"])?;
            ip(&["-n", ns, "link", "set", &b, "up"])?;
            ip(&["-n", ns, "link", "set", &a, "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for VethLab {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.ns]) {
            eprintln!("cleaning up: {e}");
        }
    }
}

/// The child's body, in the namespace: both suites on af_packet meshes.
fn in_namespace(ns: &str) {
    let env = dpdk_common::dpdk_env(TEST, eal_args).expect("DPDK is built (the parent checked)");
    let _turn = serial();
    println!(
        "in namespace {ns}: {} ports at start-up",
        env.eal.port_count()
    );
    run_contract(env, &mut || af_packet_mesh(env));
    check_revocation_under_concurrent_writers(env, &mut || af_packet_mesh(env));
    println!("{DONE} on net_af_packet over veth pairs on a bridge");
}

/// The contract suite and revocation under concurrent writers on af_packet over veth: the
/// parent makes the namespace and runs this same test in it (module docs).
#[test]
fn the_contract_holds_on_af_packet_over_veth() {
    if let Some(ns) = std::env::var_os(NETNS_ENV) {
        in_namespace(&ns.to_string_lossy());
        return;
    }
    if !dpdk_built(TEST) {
        return;
    }
    if !is_root() {
        println!("skipped {TEST}: network namespaces need root");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        println!("skipped {TEST}: no `ip` (install iproute2)");
        return;
    }
    let lab = VethLab::create().unwrap_or_else(|e| panic!("the veth lab: {e}"));
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns])
        .arg(&exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, &lab.ns)
        .output()
        .expect("run the test in the namespace");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!(
        "--- in namespace {}:\n{stdout}\n--- stderr:\n{stderr}",
        lab.ns
    );
    assert!(out.status.success(), "the lane failed in the namespace");
    assert!(
        stdout.contains(DONE),
        "the lane did not run in the namespace"
    );
}
