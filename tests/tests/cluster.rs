//! Multi-process tests: real `rapax-dataplane` and `rapax-control` processes on `shm` and `udp`,
//! kill -9 of leaders and followers, SIGSTOP/SIGCONT of a leader, bad client input; client
//! histories checked for linearizability, with a final read of every key so a lost
//! acknowledged write fails the check.
//!
//! The daemons are found in `RAPAX_BIN_DIR` (`tools/check.sh` builds them with
//! `cargo build --release --bins` and sets it) or beside the test executable. Clusters run one
//! at a time: each leader takes the profile's core.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;

use rapax::cluster::{is_ours, signal, LocalCluster};
use rapax::drill::{fail_leader, FailMode, HistoryLoad};
use rapax::lincheck::{check_kv_history, HistoryOp};
use rapax::netlab::NetLab;
use rapax_dataplane::client::{Client, ClientFailure, ClientOptions};
use rapax_dataplane::daemon::{monotonic_ns, FLOOR_ROUNDS};
use rapax_dataplane::fabric::frame::{Frame, CLIENT_NODE};
use rapax_dataplane::mailbox::MailboxClient;
use rapax_dataplane::profile::{ClusterFile, Profile};
use rapax_dataplane::protocol::kv::{KvOp, KvReply};
use rapax_dataplane::protocol::node::{BadRequest, ClientError, ClientRequest};
use rapax_dataplane::protocol::NodeId;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profile(name: &str) -> Profile {
    Profile::load(repo().join("hw-profiles").join(name)).expect("profile loads")
}

/// A cluster directory for one test, removed (and its processes stopped) at the end.
struct TestCluster {
    cluster: LocalCluster,
    dir: PathBuf,
}

impl TestCluster {
    fn up(profile_name: &str, tag: &str) -> TestCluster {
        TestCluster::up_profile(&profile(profile_name), tag)
    }

    fn up_profile(p: &Profile, tag: &str) -> TestCluster {
        let dir = Path::new("/dev/shm/rapax-test").join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cluster = LocalCluster::up(p, 3, &dir).unwrap_or_else(|e| panic!("up: {e}"));
        TestCluster::from(cluster, dir)
    }

    /// Waits until every node runs and one leads.
    fn from(cluster: LocalCluster, dir: PathBuf) -> TestCluster {
        let t = TestCluster { cluster, dir };
        t.cluster
            .wait_running(Duration::from_secs(30))
            .and_then(|()| t.cluster.wait_leader(Duration::from_secs(30)))
            .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
        t
    }

    fn client(&self) -> Client {
        Client::connect(&self.dir, ClientOptions::default()).expect("client")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.down();
        if std::thread::panicking() {
            // The daemons' logs say what the cluster did: keep them for the failure report.
            eprintln!("cluster directory kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reads every key of the load with a fresh client and adds the reads to the history.
fn final_reads(t: &TestCluster, history: &mut Vec<HistoryOp>) {
    let mut c = t.client();
    for k in 0..5 {
        let op = KvOp::Get {
            key: format!("h{k}").into_bytes(),
        };
        let invoke = monotonic_ns();
        let r = c.execute(op.clone()).expect("final read");
        history.push(HistoryOp {
            client: c.id(),
            op,
            invoke,
            response: Some((monotonic_ns(), r)),
        });
    }
}

fn assert_linearizable(history: &[HistoryOp], what: &str) {
    let acked = history.iter().filter(|h| h.response.is_some()).count();
    assert!(acked > 100, "{what}: only {acked} operations acknowledged");
    let verdict = check_kv_history(history);
    assert!(
        verdict.is_linearizable(),
        "{what}: history of {} operations is not linearizable: {verdict:?}",
        history.len()
    );
}

/// The first node of the ring that is not `leader`.
fn a_follower_of(t: &TestCluster, leader: NodeId) -> NodeId {
    *t.cluster
        .cluster
        .ring
        .iter()
        .find(|&&n| n != leader)
        .expect("a follower")
}

/// kill -9 of a follower's data plane; returns once the process is gone.
fn kill_a_followers_dataplane(t: &TestCluster) -> NodeId {
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let follower = a_follower_of(t, leader);
    let pid = t.cluster.pid(follower, "dataplane").unwrap();
    assert!(signal(pid, &t.dir, Signal::SIGKILL));
    while is_ours(pid, &t.dir) {
        std::thread::sleep(Duration::from_millis(1));
    }
    follower
}

/// Lets the load run until `n` more operations are acknowledged; the cluster's status is in
/// the message if it stops answering.
fn steady(t: &TestCluster, load: &HistoryLoad, n: u64) {
    let before = load.acked.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while load.acked.load(std::sync::atomic::Ordering::Relaxed) < before + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster stopped answering\n{}",
            t.cluster.status()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn faults(profile_name: &str, tag: &str) {
    faults_with(&profile(profile_name), tag);
}

fn faults_with(p: &Profile, tag: &str) {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up_profile(p, tag);
    let load = HistoryLoad::start(&t.dir, 2).expect("load");
    steady(&t, &load, 100);
    // kill -9 of the leader's data plane, twice; each victim is restarted.
    for k in 0..2 {
        fail_leader(&t.cluster, FailMode::Kill, k + 1, 2)
            .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
        steady(&t, &load, 100);
    }
    // kill -9 of a follower's data plane, then its restart.
    let follower = kill_a_followers_dataplane(&t);
    steady(&t, &load, 100); // a majority still commits
    t.cluster.restart(follower, "dataplane").unwrap();
    t.cluster
        .wait_caught_up(follower, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
    steady(&t, &load, 100);
    // SIGSTOP of the leader, SIGCONT once a new leader commits: the resumed old leader must
    // not corrupt anything.
    fail_leader(&t.cluster, FailMode::Pause, 1, 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
    steady(&t, &load, 200);
    let (mut history, _) = load.finish();
    final_reads(&t, &mut history);
    assert_linearizable(&history, tag);
}

#[test]
fn shm_cluster_survives_kills_and_a_paused_leader() {
    faults("shm-local.toml", "shm-faults");
}

#[test]
fn udp_cluster_survives_kills_and_a_paused_leader() {
    faults("udp-local.toml", "udp-faults");
}

/// What `rapax bench --loaded-floor` prints: asked from another thread while a client runs, the
/// leader times `FLOOR_ROUNDS` round trips over its data mesh and answers the request it was
/// given, not an earlier one.
#[test]
fn udp_leader_measures_its_data_mesh_round_trip_under_load() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up("udp-local.toml", "udp-mesh-floor");
    let (mut c, leader) = head_leads_with_a_chosen_command(&t);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut done = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                done += u64::from(mesh_put(&mut c, done).is_ok());
            }
            done
        })
    };
    let first = t
        .cluster
        .ask_data_mesh_floor(leader)
        .expect("the leader's channel");
    let second = t
        .cluster
        .ask_data_mesh_floor(leader)
        .expect("the leader's channel");
    assert_eq!(second, first + 1);
    let samples = t.cluster.data_mesh_floor_answer(leader, second);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = load.join().expect("load thread");
    assert_full_floor(&t, &samples);
    assert!(
        done > 0,
        "the client's puts went on while the leader measured"
    );
}

/// A floor probe whose read fails (a time-out) measured nothing, and the round is read
/// again: with one follower's data plane paused while the leader measures, the reads sent to
/// it time out, and the answer still holds `FLOOR_ROUNDS` round trips (the other follower's).
#[test]
fn udp_leader_rereads_floor_rounds_that_time_out() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up("udp-local.toml", "udp-floor-timeouts");
    let (_c, leader) = head_leads_with_a_chosen_command(&t);
    let follower = a_follower_of(&t, leader);
    let pid = t.cluster.pid(follower, "dataplane").unwrap();
    let timeouts = |t: &TestCluster| {
        t.cluster
            .counters(leader)
            .expect("counters")
            .fabric_timeouts
    };
    let before = timeouts(&t);
    assert!(signal(pid, &t.dir, Signal::SIGSTOP));
    let want = t
        .cluster
        .ask_data_mesh_floor(leader)
        .expect("the leader's channel");
    std::thread::sleep(Duration::from_millis(100));
    assert!(signal(pid, &t.dir, Signal::SIGCONT));
    let samples = t.cluster.data_mesh_floor_answer(leader, want);
    assert_full_floor(&t, &samples);
    assert!(
        timeouts(&t) > before,
        "no read timed out during the probe\n{}",
        t.cluster.status()
    );
}

/// A put of 64 bytes to one of eight keys.
fn mesh_put(c: &mut Client, i: u64) -> Result<KvReply, ClientFailure> {
    c.execute(KvOp::Put {
        key: format!("m{}", i % 8).into_bytes(),
        value: vec![b'v'; 64],
    })
}

/// Waits until the ring's head leads (a probe stops, with what it measured so far, when its
/// node stops leading), then has a command chosen so that the leader has an active follower to
/// read from; the client and the leader.
fn head_leads_with_a_chosen_command(t: &TestCluster) -> (Client, NodeId) {
    let mut c = t.client();
    let head = t.cluster.cluster.ring[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t.cluster.wait_leader(Duration::from_secs(10)).unwrap() != head {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            t.cluster.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    mesh_put(&mut c, 0).expect("first put");
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    (c, leader)
}

/// The floor's answer holds `FLOOR_ROUNDS` round trips, none of them of zero time.
fn assert_full_floor(t: &TestCluster, samples: &[(u64, u64)]) {
    let rounds: u64 = samples.iter().map(|&(_, n)| n).sum();
    assert_eq!(rounds, FLOOR_ROUNDS, "{}", t.cluster.status());
    assert!(samples.iter().all(|&(ns, _)| ns > 0));
}

/// Whether this build has DPDK; says the test is skipped when not.
fn dpdk_built() -> bool {
    let built = rapax_ffi::dpdk::available();
    if !built {
        println!("skipped: this build has no DPDK");
    }
    built
}

/// The dpdk data plane as separate node processes joined by net_memif: kills of leader and
/// follower, a paused leader; skipped (saying why) in a build without DPDK.
#[test]
fn dpdk_memif_cluster_survives_kills_and_a_paused_leader() {
    if !dpdk_built() {
        return;
    }
    faults("dpdk-memif.toml", "dpdk-faults");
}

/// The same with 1 % of the frames dropped on send by every node (loss recovery resends
/// them): still linearizable, nothing acknowledged lost.
#[test]
fn dpdk_memif_cluster_survives_faults_with_one_percent_frame_loss() {
    if !dpdk_built() {
        return;
    }
    let mut p = profile("dpdk-memif.toml");
    p.fabric.dpdk.as_mut().expect("dpdk section").fault_drop_ppm = 10_000;
    faults_with(&p, "dpdk-loss");
}

/// A 3-node udp cluster with each node in a network namespace of its own: the leader is cut
/// off (the majority elects another and goes on committing; the clients, in this namespace,
/// find it), then healed (the deposed leader catches up and corrupts nothing); then a follower
/// is cut off and healed. Needs root and iproute2, as CI has.
#[test]
fn udp_cluster_survives_partitions_in_network_namespaces() {
    use std::collections::HashMap;
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let lab = NetLab::create("pt", 3).unwrap_or_else(|e| panic!("network namespaces: {e}"));
    let base = 30_000 + (std::process::id() % 100) as u16 * 200;
    let mut cluster = ClusterFile::local(3, base);
    cluster.name = format!("netns-3-{base}");
    for n in &mut cluster.nodes {
        let i = n.id as usize;
        n.udp_addr = Some(format!("{}:{}", lab.node_ip(i), base + n.id as u16));
        n.control_addr = Some(format!("{}:{}", lab.node_ip(i), base + 64 + n.id as u16));
    }
    for (k, c) in cluster.clients.iter_mut().enumerate() {
        c.udp_addr = Some(format!("{}:{}", lab.host_ip(), base + 128 + k as u16));
    }
    let netns: HashMap<NodeId, String> = (0..3).map(|i| (i as NodeId, lab.namespace(i))).collect();
    let dir = Path::new("/dev/shm/rapax-test").join(format!("udp-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Bound to the wildcard address in each namespace: the kernel sends from eth0's address,
    // the one the cluster file gives.
    let mut p = profile("udp-local.toml");
    if let Some(udp) = p.fabric.udp.as_mut() {
        udp.bind = "0.0.0.0:0".into();
    }
    let started =
        LocalCluster::up_with(&p, cluster, &dir, &netns).unwrap_or_else(|e| panic!("up: {e}"));
    let t = TestCluster::from(started, dir);
    let load = HistoryLoad::start(&t.dir, 2).expect("load");
    steady(&t, &load, 100);
    for round in 0..2 {
        let leader = t
            .cluster
            .wait_leader(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
        // The leader alone on its side: the clients cannot reach it, so every acknowledgement
        // from here on comes from a leader the majority elected.
        lab.isolate(leader as usize).unwrap();
        steady(&t, &load, 200);
        let new = t
            .cluster
            .counters((leader + 1) % 3)
            .into_iter()
            .chain(t.cluster.counters((leader + 2) % 3))
            .find(|c| c.role == 4)
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: no leader on the majority side\n{}",
                    t.cluster.status()
                )
            });
        assert_ne!(new.node, leader);
        lab.heal(leader as usize).unwrap();
        steady(&t, &load, 200);
        t.cluster
            .wait_caught_up(leader, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", t.cluster.status()));
    }
    // A follower cut off and healed: the majority goes on, the follower catches up.
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let follower = (leader + 1) % 3;
    lab.isolate(follower as usize).unwrap();
    steady(&t, &load, 200);
    lab.heal(follower as usize).unwrap();
    t.cluster
        .wait_caught_up(follower, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
    steady(&t, &load, 100);
    let (mut history, _) = load.finish();
    final_reads(&t, &mut history);
    assert_linearizable(&history, "udp-netns");
    for p in t.cluster.procs() {
        assert!(is_ours(p.pid, &t.dir), "{} of node {} died", p.kind, p.node);
    }
    drop(t);
    drop(lab);
}

#[test]
fn bad_client_input_gets_clear_errors_and_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up("shm-local.toml", "shm-bad-input");
    let mut c = t.client();
    let put = |c: &mut Client, k: &str, v: &str| {
        c.execute(KvOp::Put {
            key: k.into(),
            value: v.into(),
        })
    };
    assert_eq!(put(&mut c, "kept", "1").unwrap(), KvReply::Stored);
    // Over the profile's command limit.
    let limit = t.cluster.profile.replication.max_command_bytes;
    let big = "x".repeat(limit + 1);
    match put(&mut c, "big", &big) {
        Err(ClientFailure::Refused(ClientError::TooLarge { max, .. })) => assert_eq!(max, limit),
        other => panic!("oversize command: {other:?}"),
    }
    // Over what any frame can carry: refused by the client itself (it used to time out).
    let huge = "x".repeat(rapax_dataplane::fabric::frame::MAX_FRAME_BYTES);
    match put(&mut c, "huge", &huge) {
        Err(ClientFailure::Refused(ClientError::TooLarge { bytes, max })) => {
            assert!(bytes > max, "{bytes} over {max}")
        }
        other => panic!("command over the frame size: {other:?}"),
    }
    // An unknown operation, and bytes that are no command at all.
    let mut unknown = Vec::new();
    unknown.extend_from_slice(&c.id().to_le_bytes());
    unknown.extend_from_slice(&4u64.to_le_bytes()); // the sequence number it will be sent with
    unknown.push(99);
    match c.execute_raw(unknown) {
        Err(ClientFailure::Refused(ClientError::BadRequest(BadRequest::UnknownOperation))) => {}
        other => panic!("unknown operation: {other:?}"),
    }
    match c.execute_raw(vec![1, 2, 3]) {
        Err(ClientFailure::Refused(ClientError::BadRequest(BadRequest::Malformed))) => {}
        other => panic!("malformed command: {other:?}"),
    }
    // A frame that does not decode, straight into the leader's mailbox: refused, counted.
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let before = t.cluster.counters(leader).unwrap();
    let mut mb = MailboxClient::open(&t.cluster.dir.mailbox(leader)).unwrap();
    let request = ClientRequest {
        client: 7,
        seq: 1,
        command: vec![0; 8],
    };
    let mut frame = Vec::new();
    Frame::client_request(CLIENT_NODE, leader, 1, &request)
        .unwrap()
        .encode(&mut frame)
        .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0xff; // breaks the checksum
    mb.send(&frame).unwrap();
    let mut reply = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !mb.try_recv(&mut reply) {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer to a bad frame"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let answer = Frame::decode(&reply)
        .unwrap()
        .body
        .into_client_reply()
        .unwrap();
    assert_eq!(
        answer.result,
        Err(ClientError::BadRequest(BadRequest::Malformed))
    );
    let after = t.cluster.counters(leader).unwrap();
    assert!(after.malformed_frames > before.malformed_frames);
    assert!(after.client_bad_requests > before.client_bad_requests);
    // Nothing crashed and the acknowledged write is there.
    assert_eq!(
        c.execute(KvOp::Get { key: "kept".into() }).unwrap(),
        KvReply::Value(Some(b"1".to_vec()))
    );
    for p in t.cluster.procs() {
        assert!(is_ours(p.pid, &t.dir), "{} of node {} died", p.kind, p.node);
    }
}

/// A udp node takes frames only from the configured nodes and clients: garbage, a frame that
/// names a member but comes from elsewhere, a frame of another cluster and a client frame from an
/// unlisted address are dropped and counted, nothing crashes and the acknowledged write stays.
#[test]
fn udp_drops_and_counts_strangers_and_garbage() {
    use rapax_dataplane::fabric::{Op, Post, Region};
    use rapax_dataplane::protocol::Ballot;
    use std::net::UdpSocket;
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up("udp-local.toml", "udp-strangers");
    let mut c = t.client();
    let put = KvOp::Put {
        key: "kept".into(),
        value: "1".into(),
    };
    assert_eq!(c.execute(put).unwrap(), KvReply::Stored);
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let target = t
        .cluster
        .cluster
        .node(leader)
        .unwrap()
        .udp_socket_addr()
        .unwrap();
    let before = t.cluster.counters(leader).unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let id = t.cluster.cluster.cluster_id();
    let member = (leader + 1) % 3;
    // Not a frame at all.
    stranger.send_to(b"\x00garbage", target).unwrap();
    // A well-formed log write naming a member as its source, from another address.
    let post = Post {
        wr_id: 1,
        target: leader,
        op: Op::Write {
            region: Region::Log,
            offset: 4096,
            bytes: vec![0xee; 64],
        },
        reconnect: true,
        ballot: Ballot((99 << 8) | u64::from(member)),
    };
    let mut bytes = Vec::new();
    Frame::from_post(member, id, 0, &post)
        .unwrap()
        .encode(&mut bytes)
        .unwrap();
    stranger.send_to(&bytes, target).unwrap();
    // The same frame for another cluster.
    bytes.clear();
    Frame::from_post(member, id ^ 1, 0, &post)
        .unwrap()
        .encode(&mut bytes)
        .unwrap();
    stranger.send_to(&bytes, target).unwrap();
    // A client request from an address the cluster file does not list.
    let request = ClientRequest {
        client: 7,
        seq: 1,
        command: vec![0; 8],
    };
    bytes.clear();
    Frame::client_request(CLIENT_NODE, leader, id, &request)
        .unwrap()
        .encode(&mut bytes)
        .unwrap();
    stranger.send_to(&bytes, target).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = t.cluster.counters(leader).unwrap();
        if now.fabric_strangers >= before.fabric_strangers + 2
            && now.fabric_decode_errors > before.fabric_decode_errors
            && now.fabric_misaddressed > before.fabric_misaddressed
        {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "drops not counted: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        t.cluster.status().contains("strangers"),
        "{}",
        t.cluster.status()
    );
    assert_eq!(
        after.client_requests, before.client_requests,
        "a stranger's request was taken"
    );
    assert_eq!(
        c.execute(KvOp::Get { key: "kept".into() }).unwrap(),
        KvReply::Value(Some(b"1".to_vec()))
    );
    for p in t.cluster.procs() {
        assert!(is_ours(p.pid, &t.dir), "{} of node {} died", p.kind, p.node);
    }
}

#[test]
fn cluster_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let t = TestCluster::up("shm-local.toml", "shm-modes");
    t.client()
        .execute(KvOp::Put {
            key: "a".into(),
            value: "b".into(),
        })
        .unwrap();
    let dir_mode = std::fs::metadata(&t.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&t.dir).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", e.path().display());
        files += 1;
    }
    for n in 0..3 {
        for f in ["region", "channel", "mailbox"] {
            assert!(
                t.dir.join(format!("node-{n}.{f}")).exists(),
                "node-{n}.{f} missing"
            );
        }
    }
    assert!(files >= 3 + 3 * 3, "only {files} files");
    // A `down` that cannot see the daemons (their pids file lost) stops nothing and keeps
    // the regions they run on.
    let pids = t.dir.join("pids");
    let recorded = std::fs::read(&pids).unwrap();
    std::fs::remove_file(&pids).unwrap();
    let stopped = t.cluster.down();
    let kept: Vec<bool> = (0..3)
        .map(|n| t.dir.join(format!("node-{n}.region")).exists())
        .collect();
    // Back before asserting, so that the end of the test stops the daemons either way.
    std::fs::write(&pids, recorded).unwrap();
    assert_eq!(stopped, 0);
    assert_eq!(kept, [true; 3], "regions removed under running daemons");
    // `down` frees the regions (shared memory, RAM) and keeps what is read afterwards.
    assert_eq!(
        t.cluster.down(),
        6,
        "three data planes and three control planes"
    );
    for n in 0..3 {
        assert!(
            !t.dir.join(format!("node-{n}.region")).exists(),
            "node-{n}.region outlived down"
        );
        for f in ["dataplane.log", "channel"] {
            assert!(
                t.dir.join(format!("node-{n}.{f}")).exists(),
                "node-{n}.{f} removed by down"
            );
        }
    }
}

/// A small log that the load wraps many times; a follower killed for many laps comes back
/// behind the leader's log and is caught up by a snapshot streamed over the fabric (`shm`: its
/// memory was kept, it resumes from its own checkpoint first; `udp`: its memory was lost).
fn wraps_and_rejoins_by_snapshot(profile_name: &str, tag: &str) {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut p = profile(profile_name);
    p.log.capacity_entries = 256;
    p.log.snapshot_every_entries = 32;
    p.replication.window_slots = p.replication.window_slots.min(32);
    let capacity = p.log.capacity_entries;
    let t = TestCluster::up_profile(&p, tag);
    let load = HistoryLoad::start(&t.dir, 2).expect("load");
    let applied = |n: NodeId| t.cluster.counters(n).map_or(0, |c| c.applied);
    // Several laps of the log with everyone up.
    let until = |slot: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while t
            .cluster
            .leader()
            .and_then(|l| t.cluster.counters(l))
            .map_or(0, |c| c.commit)
            < slot
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster stopped committing\n{}",
                t.cluster.status()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(4 * capacity);
    let follower = kill_a_followers_dataplane(&t);
    let left_at = applied(follower);
    // Two more laps without it: the log it would need is gone.
    let leader = t.cluster.wait_leader(Duration::from_secs(10)).unwrap();
    let now = t.cluster.counters(leader).unwrap().commit;
    until(now + 2 * capacity);
    t.cluster.restart(follower, "dataplane").unwrap();
    // Its counters are stale until the new data plane publishes (its heartbeat restarts).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t
        .cluster
        .counters(follower)
        .is_none_or(|c| c.applied <= left_at)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node {follower} did not come back\n{}",
            t.cluster.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t.cluster
        .wait_caught_up(follower, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", t.cluster.status()));
    let c = t.cluster.counters(follower).unwrap();
    assert!(
        c.snapshots_installed >= 1,
        "node {follower} (left at slot {left_at}) caught up without a snapshot\n{}",
        t.cluster.status()
    );
    assert!(c.applied > left_at + capacity, "{}", t.cluster.status());
    steady(&t, &load, 200);
    let (mut history, _) = load.finish();
    final_reads(&t, &mut history);
    assert_linearizable(&history, tag);
    // Every replica that checkpointed the same index has the same state there.
    let all: Vec<_> = t
        .cluster
        .cluster
        .ring
        .iter()
        .filter_map(|&n| t.cluster.counters(n))
        .collect();
    for a in &all {
        for b in &all {
            if a.checkpoint_index == b.checkpoint_index {
                assert_eq!(
                    a.checkpoint_digest,
                    b.checkpoint_digest,
                    "{}",
                    t.cluster.status()
                );
            }
        }
    }
}

#[test]
fn shm_cluster_wraps_its_log_and_a_returning_follower_rejoins_by_snapshot() {
    wraps_and_rejoins_by_snapshot("shm-local.toml", "wrap-shm");
}

#[test]
fn udp_cluster_wraps_its_log_and_a_returning_follower_rejoins_by_snapshot() {
    wraps_and_rejoins_by_snapshot("udp-local.toml", "wrap-udp");
}

/// Ring repair with real processes: 3 acceptors and a spare on shm; an acceptor killed under
/// load (both its processes) is replaced by the spare once dead for `replace_after_ms`, comes
/// back as a caught-up spare, and the history stays linearizable.
#[test]
fn shm_ring_repair_replaces_a_dead_acceptor_with_the_spare() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut p = profile("shm-local.toml");
    p.log.capacity_entries = 1024;
    p.log.snapshot_every_entries = 256;
    // A calmer detector: four nodes' processes share two cores here.
    p.election.read_period_us = 1000;
    let dir = Path::new("/dev/shm/rapax-test").join(format!("repair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = rapax::drill::repair(&rapax::drill::RepairOptions {
        profile: p,
        replicas: 3,
        spares: 1,
        ops: 20_000,
        value_bytes: 64,
        dir: dir.clone(),
    })
    .unwrap_or_else(|e| panic!("repair drill: {e}"));
    assert!(r.linearizable, "{r:?}");
    assert!(!r.ring_after.contains(&r.victim), "{r:?}");
    assert!(
        r.ring_after.contains(&r.spare) && !r.ring_before.contains(&r.spare),
        "{r:?}"
    );
    assert_eq!(r.ring_after.len(), r.ring_before.len(), "{r:?}");
    assert!(r.epoch_after >= 2, "a replace is two steps: {r:?}");
    assert!(r.laps > 2.0, "the run reused its log: {r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rapax reconfig` as an operator runs it, against a shm cluster with a spare: a replace is
/// proposed as two configurations and the command returns once the last is in force; a change
/// the leader refuses (a node already in the ring) fails with the leader's reason and changes
/// nothing; the cluster keeps serving across both.
#[test]
fn rapax_reconfig_replaces_an_acceptor_and_reports_a_refusal() {
    let _one = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut p = profile("shm-local.toml");
    // A calmer detector: four nodes' processes share two cores here.
    p.election.read_period_us = 1000;
    let dir = Path::new("/dev/shm/rapax-test").join(format!("reconfig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = LocalCluster::up_spares(&p, 3, 1, &dir).unwrap_or_else(|e| panic!("up: {e}"));
    let t = TestCluster::from(cluster, dir);
    let rapax = rapax::cluster::bin_path("rapax").expect("the rapax binary");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&rapax)
            .arg("reconfig")
            .arg("--dir")
            .arg(&t.dir)
            .args(["--wait-ms", "20000"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("rapax runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // The configuration is read from the leader's counters, so there must be a leader: `up`
    // returns once the processes run, before an election may have ended, and the lead can move
    // (a replace of the leader's node). Waits for a leader that has applied `min_epoch`.
    let configuration = |min_epoch: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match t.cluster.configuration() {
                Some((epoch, ring)) if epoch >= min_epoch => return (epoch, ring),
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "no leader with epoch {min_epoch} within 20 s (last: {other:?})\n{}",
                    t.cluster.status()
                ),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (epoch_before, ring_before) = configuration(0);
    assert_eq!(ring_before, vec![0, 1, 2]);
    let mut c = t.client();
    c.execute(KvOp::Put {
        key: b"k".to_vec(),
        value: b"before".to_vec(),
    })
    .expect("put before");

    let (ok, text) = run(&["add", "1"]);
    assert!(!ok, "adding an acceptor again must fail: {text}");
    assert!(
        text.contains("refused"),
        "the leader's reason is shown: {text}"
    );
    assert_eq!(
        configuration(0),
        (epoch_before, ring_before.clone()),
        "a refused change changes nothing"
    );

    let (ok, text) = run(&["replace", "1", "3"]);
    assert!(ok, "replace: {text}\n{}", t.cluster.status());
    let want_epoch = epoch_before + 2;
    assert!(
        text.contains(&format!("epoch {}", epoch_before + 1))
            && text.contains(&format!("epoch {want_epoch}")),
        "both steps are listed: {text}"
    );
    let (epoch, ring) = configuration(want_epoch);
    assert!(epoch >= want_epoch, "{text}");
    assert!(
        ring.contains(&3) && !ring.contains(&1),
        "ring {ring:?}: {text}"
    );
    assert_eq!(
        c.execute(KvOp::Get { key: b"k".to_vec() })
            .expect("get after"),
        KvReply::Value(Some(b"before".to_vec()))
    );
}
