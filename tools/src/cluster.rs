//! Local clusters: `rapax up`, `rapax down`, `rapax status`, and what bench and the drills
//! need to find and poke the processes of a cluster started here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rapax_dataplane::channel::{Channel, Counter};
use rapax_dataplane::daemon::{role_name, ClusterDir};
use rapax_dataplane::profile::{ClusterFile, FabricKind, Profile};
use rapax_dataplane::protocol::{Ballot, NodeId};

/// Errors of local cluster management.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Profile(#[from] rapax_dataplane::profile::ProfileError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("a cluster started here still runs in {dir} (pids {pids:?}); `rapax down --dir {dir}` first")]
    Running { dir: String, pids: Vec<i32> },
    #[error("--replicas must be 1, 3, 5 or 7, not {0}")]
    Replicas(usize),
    #[error("cannot find the {0} binary next to this one (build with `cargo build --release --bins`, or set RAPAX_BIN_DIR)")]
    Binary(String),
    #[error("profile {profile:?}: fabric {fabric} cannot run a local cluster (shm and udp can)")]
    Fabric { profile: String, fabric: String },
    #[error(
        "profile {profile:?}: this build has no {fabric} fabric ({why}); install its libraries \
         (ffi/install-deps.sh) and rebuild, or use a shm or udp profile"
    )]
    NotBuilt {
        profile: String,
        fabric: String,
        why: String,
    },
    #[error("profile {profile:?}: no address for local rdma nodes to listen on: {why}")]
    RdmaAddress { profile: String, why: String },
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("node {node}'s data plane did not start within {waited:?}")]
    NotRunning { node: NodeId, waited: Duration },
    #[error(
        "node {node} did not catch up in time (apply up to {target} and be re-synced by a leader)"
    )]
    NotCaughtUp { node: NodeId, target: u64 },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// The default cluster directory for a profile: under the profile's shm directory on `shm`,
/// under the temporary directory otherwise.
pub fn default_dir(profile: &Profile) -> PathBuf {
    match (&profile.fabric.kind, &profile.fabric.shm) {
        (FabricKind::Shm, Some(shm)) => Path::new(&shm.dir).join("cluster"),
        _ => std::env::temp_dir().join("rapax-cluster"),
    }
}

/// Where the daemons' binaries are: `RAPAX_BIN_DIR`, else beside the running executable (or
/// its parent, for test executables in `deps/`).
pub fn bin_path(name: &str) -> Result<PathBuf, ClusterError> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("RAPAX_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ClusterError::Binary(name.to_string()))
}

/// One process of a local cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub node: NodeId,
    /// `dataplane` or `control`.
    pub kind: String,
    pub pid: i32,
}

/// Whether `pid` runs and is a rapax daemon of cluster directory `dir` (so a recycled pid is
/// never signalled).
pub fn is_ours(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie (killed, not yet reaped by its parent) does not run, once all its threads have
    // gone: the main thread shows as a zombie while the others still exit, and the process's
    // files, sockets included, close only with the last of them.
    let state = u64::try_from(pid)
        .ok()
        .and_then(rapax_dataplane::fabric::shm::proc_state);
    if matches!(state, Some('Z' | 'X')) {
        return threads_exiting(pid);
    }
    if cmdline.is_empty() && state.is_some() {
        // Exiting: its memory is gone (so is its command line) but its files, sockets
        // included, are closed only after that. A restart now could not bind its ports.
        return true;
    }
    names_daemon_of(&cmdline, dir)
}

/// Whether a command line (NUL-separated) is a rapax daemon's of cluster directory `dir`.
fn names_daemon_of(cmdline: &[u8], dir: &Path) -> bool {
    daemon_dir(cmdline).is_some_and(|d| d == dir.as_os_str().as_encoded_bytes())
}

/// The cluster directory (`--dir`) of a rapax daemon's command line (NUL-separated); `None`
/// for any other command line.
fn daemon_dir(cmdline: &[u8]) -> Option<&[u8]> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let daemon = args
        .first()
        .is_some_and(|a| a.ends_with(b"rapax-dataplane") || a.ends_with(b"rapax-control"));
    if !daemon {
        return None;
    }
    args.windows(2).find(|w| w[0] == b"--dir").map(|w| w[1])
}

/// The rapax daemons running for other cluster directories than `dir`: (pid, directory). On a
/// host's shared cores they are load a benchmark would measure along with its own cluster.
pub fn daemons_elsewhere(dir: &Path) -> Vec<(i32, PathBuf)> {
    let mut found: Vec<(i32, PathBuf)> = running_daemons()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, d)| d.as_os_str() != dir.as_os_str())
        .collect();
    found.sort();
    found
}

/// The cluster directories of `daemons` (as [`running_daemons`] gives them), each once, sorted.
pub fn cluster_dirs(daemons: &[(i32, PathBuf)]) -> Vec<String> {
    let mut dirs: Vec<String> = daemons
        .iter()
        .map(|(_, d)| d.display().to_string())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Whether any rapax daemon of `dir` runs, recorded in its pids file or not (found by its
/// command line; `true` when /proc cannot be read).
fn any_daemon_of(dir: &Path) -> bool {
    running_daemons().is_none_or(|all| all.iter().any(|(_, d)| d.as_os_str() == dir.as_os_str()))
}

/// Every rapax daemon process on this host that has not exited (zombies left out), with its
/// cluster directory, found by command line; `None` when /proc cannot be read.
pub fn running_daemons() -> Option<Vec<(i32, PathBuf)>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let found = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(daemon_dir(&cmdline)?));
            let state = u64::try_from(pid)
                .ok()
                .and_then(rapax_dataplane::fabric::shm::proc_state);
            (!matches!(state, None | Some('Z' | 'X' | 'x'))).then_some((pid, dir))
        })
        .collect();
    Some(found)
}

/// Whether any thread of `pid` other than a zombie is still there.
fn threads_exiting(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).any(|t| {
        // A thread's id names it under /proc as a process id does.
        let state = t
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse().ok())
            .and_then(rapax_dataplane::fabric::shm::proc_state);
        !matches!(state, None | Some('Z' | 'X' | 'x'))
    })
}

/// A local cluster: its directory, configuration and processes.
pub struct LocalCluster {
    pub dir: ClusterDir,
    pub profile: Profile,
    pub cluster: ClusterFile,
    /// Each node's channel as last mapped, with the file's inode: a restarted data plane makes
    /// a new channel file, and only then is it mapped again (the drills poll counters often).
    channels: Mutex<HashMap<NodeId, (u64, Arc<Channel>)>>,
    /// The inode of each restarted data plane's predecessor's channel file: until the new
    /// process puts its own in place the file is the dead one's, and its counters (a leader,
    /// caught up, not amnesiac) must not pass for the new process's, so it reads as absent.
    retired: Mutex<HashMap<NodeId, u64>>,
}

impl LocalCluster {
    /// The cluster whose files are in `dir` (started by `up`, running or not).
    pub fn open(dir: &Path) -> Result<LocalCluster, ClusterError> {
        let cdir = ClusterDir::new(dir);
        let profile = Profile::load(cdir.profile())?;
        let text = std::fs::read_to_string(cdir.cluster()).map_err(io("cluster.toml"))?;
        let cluster = ClusterFile::from_toml_str(&text).map_err(|e| ClusterError::Io {
            what: "cluster.toml".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(LocalCluster {
            dir: cdir,
            profile,
            cluster,
            channels: Mutex::default(),
            retired: Mutex::default(),
        })
    }

    /// Starts a fresh cluster of `replicas` nodes with `profile` in `dir`: writes the profile and
    /// a local cluster file, removes what an earlier cluster left there, and starts one
    /// `rapax-dataplane` and one `rapax-control` per node in the background.
    pub fn up(
        profile: &Profile,
        replicas: usize,
        dir: &Path,
    ) -> Result<LocalCluster, ClusterError> {
        LocalCluster::up_spares(profile, replicas, 0, dir)
    }

    /// [`LocalCluster::up`] with `spares` more nodes outside the ring (learners that the
    /// leader's ring repair or `rapax reconfig` can make acceptors).
    pub fn up_spares(
        profile: &Profile,
        replicas: usize,
        spares: usize,
        dir: &Path,
    ) -> Result<LocalCluster, ClusterError> {
        if ![1, 3, 5, 7].contains(&replicas) {
            return Err(ClusterError::Replicas(replicas));
        }
        if replicas + spares > rapax_dataplane::protocol::MAX_NODES {
            return Err(ClusterError::Replicas(replicas + spares));
        }
        let base = local_port_base(dir);
        let mut cluster = ClusterFile::local(replicas + spares, base);
        let all = cluster.succession();
        cluster.ring = all[..replicas].to_vec();
        cluster.spares = all[replicas..].to_vec();
        cluster.name = format!("local-{replicas}-{base}");
        LocalCluster::up_with(profile, cluster, dir, &HashMap::new())
    }

    /// Starts a fresh cluster described by `cluster` in `dir`, each node's daemons in the
    /// network namespace `netns` names for it (`ip netns exec`), others in this one.
    pub fn up_with(
        profile: &Profile,
        mut cluster: ClusterFile,
        dir: &Path,
        netns: &HashMap<NodeId, String>,
    ) -> Result<LocalCluster, ClusterError> {
        if profile.fabric.kind == FabricKind::Dpdk {
            // Local dpdk nodes (memif) take locally administered MACs unless the file has them.
            for n in &mut cluster.nodes {
                n.dpdk_mac
                    .get_or_insert_with(|| format!("02:00:00:00:00:{:02x}", n.id + 1));
            }
        }
        if profile.fabric.kind == FabricKind::Rdma {
            if !rapax_dataplane::fabric::rdma::available() {
                return Err(ClusterError::NotBuilt {
                    profile: profile.name.clone(),
                    fabric: "rdma".into(),
                    why: "rdma-core (libibverbs, librdmacm) not found at build time".into(),
                });
            }
            let ip = local_rdma_ip(profile)?;
            // Local rdma nodes listen on ports next to their UDP ones, at the address rdma_cm
            // reaches the device by (or on loopback, for the UDP handshake).
            for n in &mut cluster.nodes {
                if n.rdma_addr.is_none() {
                    let udp = n.udp_socket_addr().expect("a local node has a udp_addr");
                    let ip = ip.unwrap_or(udp.ip());
                    n.rdma_addr = Some(std::net::SocketAddr::new(ip, udp.port() + 192).to_string());
                }
            }
        }
        if !matches!(
            profile.fabric.kind,
            FabricKind::Shm | FabricKind::Udp | FabricKind::Dpdk | FabricKind::Rdma
        ) {
            return Err(ClusterError::Fabric {
                profile: profile.name.clone(),
                fabric: profile.fabric.kind.as_str().to_string(),
            });
        }
        if profile.fabric.kind == FabricKind::Dpdk {
            if let Some(why) = rapax_dataplane::fabric::dpdk::absent_reason() {
                return Err(ClusterError::NotBuilt {
                    profile: profile.name.clone(),
                    fabric: "dpdk".into(),
                    why: why.to_string(),
                });
            }
        }
        let cdir = ClusterDir::new(dir);
        let running: Vec<i32> = read_pids(&cdir)
            .into_iter()
            .filter(|p| is_ours(p.pid, dir))
            .map(|p| p.pid)
            .collect();
        if !running.is_empty() {
            return Err(ClusterError::Running {
                dir: dir.display().to_string(),
                pids: running,
            });
        }
        cdir.create()
            .map_err(io(format!("create {}", dir.display())))?;
        clean(&cdir);
        write_private(&cdir.profile(), &profile.render())?;
        write_private(&cdir.cluster(), &cluster.render())?;
        let mut text = String::new();
        for (node, ns) in netns {
            let _ = writeln!(text, "{node} {ns}");
        }
        write_private(&cdir.netns(), &text)?;
        let lc = LocalCluster {
            dir: cdir,
            profile: profile.clone(),
            cluster,
            channels: Mutex::default(),
            retired: Mutex::default(),
        };
        // Both daemons must be there before any starts: a half-started cluster would be left
        // running by the error.
        bin_path("rapax-dataplane")?;
        bin_path("rapax-control")?;
        let mut procs = Vec::new();
        for node in lc.members() {
            for kind in ["dataplane", "control"] {
                match lc.spawn(node, kind) {
                    Ok(p) => procs.push(p),
                    Err(e) => {
                        // Stop what this call started.
                        for p in &procs {
                            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                        }
                        return Err(e);
                    }
                }
            }
        }
        lc.write_pids(&procs)?;
        Ok(lc)
    }

    /// Starts one daemon (`dataplane` or `control`) of `node`, logging to its log file.
    pub fn spawn(&self, node: NodeId, kind: &str) -> Result<Proc, ClusterError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::process::CommandExt;
        let bin = bin_path(&format!("rapax-{kind}"))?;
        let log_path = self.dir.log(node, kind);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io(format!("{}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io("log"))?;
        let mut command = match self.netns(node) {
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs the daemon: same pid.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .arg("--dir")
            .arg(&self.dir.dir)
            .arg("--node")
            .arg(node.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        let pid = child.id() as i32;
        // Reap it when it exits, so a killed daemon does not linger as a zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(Proc {
            node,
            kind: kind.to_string(),
            pid,
        })
    }

    /// Restarts `node`'s `kind` daemon and records its new pid. A restarted data plane's
    /// counters read as absent until its own channel file is in place.
    pub fn restart(&self, node: NodeId, kind: &str) -> Result<Proc, ClusterError> {
        if kind == "dataplane" {
            self.retire_channel(node);
        }
        let p = self.spawn(node, kind)?;
        let mut procs: Vec<Proc> = read_pids(&self.dir)
            .into_iter()
            .filter(|q| !(q.node == node && q.kind == kind))
            .collect();
        procs.push(p.clone());
        self.write_pids(&procs)?;
        Ok(p)
    }

    /// The network namespace `node`'s daemons run in, if not this one.
    pub fn netns(&self, node: NodeId) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.netns()).ok()?;
        text.lines().find_map(|l| {
            let (n, ns) = l.split_once(' ')?;
            (n.parse() == Ok(node)).then(|| ns.to_string())
        })
    }

    fn write_pids(&self, procs: &[Proc]) -> Result<(), ClusterError> {
        let mut text = String::new();
        for p in procs {
            let _ = writeln!(text, "{} {} {}", p.node, p.kind, p.pid);
        }
        write_private(&self.dir.pids(), &text)
    }

    /// The processes started here, as recorded.
    pub fn procs(&self) -> Vec<Proc> {
        read_pids(&self.dir)
    }

    /// The pid of `node`'s `kind` daemon.
    pub fn pid(&self, node: NodeId, kind: &str) -> Option<i32> {
        self.procs()
            .into_iter()
            .find(|p| p.node == node && p.kind == kind)
            .map(|p| p.pid)
    }

    /// The resident memory of every daemon it started, in KiB: (node, kind, RSS).
    pub fn rss_kib(&self) -> Vec<(NodeId, String, u64)> {
        self.procs()
            .into_iter()
            .filter_map(|p| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some((p.node, p.kind.clone(), kib))
            })
            .collect()
    }

    /// `node`'s channel, mapped again only when its data plane has made a new one.
    fn channel(&self, node: NodeId) -> Option<Arc<Channel>> {
        let inode = self.channel_inode(node)?;
        {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            match retired.get(&node) {
                Some(&old) if old == inode => return None,
                Some(_) => {
                    retired.remove(&node);
                }
                None => {}
            }
        }
        let path = self.dir.channel(node);
        let mut cache = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((i, ch)) = cache.get(&node) {
            if *i == inode {
                return Some(Arc::clone(ch));
            }
        }
        let ch = Arc::new(Channel::open(&path).ok()?);
        cache.insert(node, (inode, Arc::clone(&ch)));
        Some(ch)
    }

    /// Makes `node`'s channel file as it is now read as absent: its data plane is being
    /// replaced, and the next file in its place is the new process's.
    fn retire_channel(&self, node: NodeId) {
        if let Some(inode) = self.channel_inode(node) {
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node, inode);
        }
    }

    /// The inode of `node`'s channel file: a restarted data plane creates a new one.
    fn channel_inode(&self, node: NodeId) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        Some(std::fs::metadata(self.dir.channel(node)).ok()?.ino())
    }

    /// Reads `node`'s channel counters (`None` if its data plane has not created the channel).
    pub fn counters(&self, node: NodeId) -> Option<NodeCounters> {
        let ch = self.channel(node)?;
        let get = |c| ch.counter(c);
        Some(NodeCounters {
            node,
            epoch: get(Counter::Epoch),
            ring: get(Counter::Ring),
            ring_len: get(Counter::RingLen),
            amnesiac: get(Counter::Amnesiac) != 0,
            role: get(Counter::Role),
            ballot: Ballot(get(Counter::Ballot)),
            granted: Ballot(get(Counter::Granted)),
            applied: get(Counter::Applied),
            commit: get(Counter::Commit),
            heartbeat: get(Counter::Heartbeat),
            alive_mask: get(Counter::AliveMask),
            scores: get(Counter::Scores),
            leader_lost_at_ns: get(Counter::LeaderLostAtNs),
            leader_at_ns: get(Counter::LeaderAtNs),
            candidate_at_ns: get(Counter::CandidateAtNs),
            first_commit_at_ns: get(Counter::FirstCommitAtNs),
            client_requests: get(Counter::ClientRequests),
            client_bad_requests: get(Counter::ClientBadRequests),
            malformed_frames: get(Counter::MalformedFrames),
            fabric_strangers: get(Counter::FabricStrangers),
            fabric_decode_errors: get(Counter::FabricDecodeErrors),
            fabric_misaddressed: get(Counter::FabricMisaddressed),
            fabric_timeouts: get(Counter::FabricTimeouts),
            fabric_sent: get(Counter::FabricSent),
            fabric_received: get(Counter::FabricReceived),
            fabric_send_errors: get(Counter::FabricSendErrors),
            fabric_retransmits: get(Counter::FabricRetransmits),
            fabric_out_of_sequence: get(Counter::FabricOutOfSequence),
            followers: get(Counter::Followers),
            client_rejected: get(Counter::ClientRejected),
            fabric_fenced: get(Counter::FabricFenced),
            fabric_rights_fallbacks: get(Counter::FabricRightsFallbacks),
            fabric_fence_failures: get(Counter::FabricFenceFailures),
            fabric_qps_on_path: get(Counter::FabricQpsOnPath),
            fabric_regions_on_path: get(Counter::FabricRegionsOnPath),
            snapshots_sent: get(Counter::SnapshotsSent),
            snapshots_installed: get(Counter::SnapshotsInstalled),
            snapshots_rejected: get(Counter::SnapshotsRejected),
            checkpoint_index: get(Counter::CheckpointIndex),
            checkpoint_digest: get(Counter::CheckpointDigest),
        })
    }

    /// The node whose data plane says it leads (and runs), if exactly one does.
    pub fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|&n| {
                self.pid(n, "dataplane")
                    .is_some_and(|p| is_ours(p, &self.dir.dir) && !is_stopped(p))
                    && self.counters(n).is_some_and(|c| c.role == 4)
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Every node of the cluster file: the ring of epoch 0, then the spares.
    pub fn members(&self) -> Vec<NodeId> {
        self.cluster.succession()
    }

    /// The configuration the leader applied (`None`: no leader): epoch and ring.
    pub fn configuration(&self) -> Option<(u64, Vec<NodeId>)> {
        let c = self.counters(self.leader()?)?;
        Some((
            c.epoch,
            rapax_dataplane::protocol::membership::ring_from_word(c.ring, c.ring_len),
        ))
    }

    /// Waits until one node leads.
    pub fn wait_leader(&self, limit: Duration) -> Result<NodeId, ClusterError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NoLeader(limit));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every node's data plane runs its loop (its heartbeat counter moves), so all
    /// of its files exist.
    pub fn wait_running(&self, limit: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + limit;
        for n in self.members() {
            while self.counters(n).is_none_or(|c| c.heartbeat == 0) {
                if Instant::now() > deadline {
                    return Err(ClusterError::NotRunning {
                        node: n,
                        waited: limit,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Waits until `node` has applied everything the leader had committed when called and no
    /// longer counts as amnesiac (a restarted node has caught up; one that lost its memory
    /// counts in quorums again: until then, losing one more node stops the cluster).
    pub fn wait_caught_up(&self, node: NodeId, limit: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + limit;
        let target = loop {
            if let Some(c) = self.leader().and_then(|l| self.counters(l)) {
                break c.commit;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NoLeader(limit));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        while self
            .counters(node)
            .is_none_or(|c| c.applied < target || c.amnesiac)
        {
            if Instant::now() > deadline {
                return Err(ClusterError::NotCaughtUp { node, target });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Asks `node`'s data plane for its replication-latency histogram since the last request
    /// and returns its samples `(nanoseconds, count)` (empty if it does not answer in 2 s).
    pub fn replication_samples(&self, node: NodeId) -> Vec<(u64, u64)> {
        let Some(want) = self.ask(node, Counter::StatsRequest) else {
            return Vec::new();
        };
        self.answered_histogram(
            node,
            (want, Counter::StatsDone),
            Duration::from_secs(2),
            &self.dir.replication_histogram(node),
        )
    }

    /// The data mesh's frame round trip as node `node` (the leader) measures it: it reads an
    /// active follower's heartbeat word `daemon::FLOOR_ROUNDS` times, one at a time, over the
    /// same fabric, ports and agents as replication. Empty if it does not lead, has no active
    /// follower, or does not answer within 60 s.
    pub fn data_mesh_floor(&self, node: NodeId) -> Vec<(u64, u64)> {
        self.ask_data_mesh_floor(node)
            .map_or_else(Vec::new, |want| self.data_mesh_floor_answer(node, want))
    }

    /// Asks `node`'s data plane for a data-mesh floor ([`LocalCluster::data_mesh_floor`])
    /// without waiting for it: the number its answer will carry, for
    /// [`LocalCluster::data_mesh_floor_answer`] (`None`: no channel).
    pub fn ask_data_mesh_floor(&self, node: NodeId) -> Option<u64> {
        self.ask(node, Counter::FloorRequest)
    }

    /// The answer to [`LocalCluster::ask_data_mesh_floor`] number `want` (as
    /// [`LocalCluster::data_mesh_floor`]).
    pub fn data_mesh_floor_answer(&self, node: NodeId, want: u64) -> Vec<(u64, u64)> {
        self.answered_histogram(
            node,
            (want, Counter::FloorDone),
            Duration::from_secs(60),
            &self.dir.floor_histogram(node),
        )
    }

    /// Bumps `request` in `node`'s channel: the number the data plane's answer will carry
    /// (`None`: no channel).
    fn ask(&self, node: NodeId, request: Counter) -> Option<u64> {
        let ch = self.channel(node)?;
        let want = ch.counter(request) + 1;
        ch.set(request, want);
        Some(want)
    }

    /// Waits (at most `patience`) for `node`'s data plane to set `done` to `want`, and reads
    /// the histogram it wrote to `file` (empty if it does not answer).
    fn answered_histogram(
        &self,
        node: NodeId,
        (want, done): (u64, Counter),
        patience: Duration,
        file: &Path,
    ) -> Vec<(u64, u64)> {
        let Some(ch) = self.channel(node) else {
            return Vec::new();
        };
        let deadline = Instant::now() + patience;
        while ch.counter(done) != want {
            if Instant::now() > deadline {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        parse_histogram(&std::fs::read_to_string(file).unwrap_or_default())
    }

    /// Stops exactly the processes started for this cluster (SIGTERM, then SIGKILL after 2 s)
    /// and frees the nodes' regions; returns how many were running.
    pub fn down(&self) -> usize {
        down(&self.dir.dir)
    }

    /// A status table, one line per node.
    pub fn status(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "cluster {:?} ({} fabric, profile {}), ring {:?} and spares {:?} at epoch 0, dir {}",
            self.cluster.name,
            self.profile.fabric.kind.as_str(),
            self.profile.name,
            self.cluster.ring,
            self.cluster.spares,
            self.dir.dir.display()
        );
        // The configuration: the latest epoch a running data plane applied.
        let latest = self
            .members()
            .into_iter()
            .filter(|&n| {
                self.pid(n, "dataplane")
                    .is_some_and(|p| is_ours(p, &self.dir.dir))
            })
            .filter_map(|n| self.counters(n))
            .filter(|c| c.ring_len > 0)
            .max_by_key(|c| (c.epoch, c.role == 4));
        if let Some(c) = latest {
            let ring = rapax_dataplane::protocol::membership::ring_from_word(c.ring, c.ring_len);
            let spares: Vec<NodeId> = self
                .members()
                .into_iter()
                .filter(|n| !ring.contains(n))
                .collect();
            let _ = writeln!(
                s,
                "configuration: epoch {}, ring {ring:?} (succession order), spares {spares:?} \
                 (as node {} applied it)",
                c.epoch, c.node
            );
        }
        let _ = writeln!(
            s,
            "{:>4}  {:<10}  {:<9}  {:>9}  {:>9}  {:>9}  {:>12}  {:<14}  {:<18}",
            "node",
            "role",
            "view",
            "ballot",
            "applied",
            "commit",
            "heartbeat",
            "alive (ctl)",
            "scores"
        );
        // One reading of every node's counters serves the whole table.
        let members = self.members();
        let all: Vec<NodeCounters> = members.iter().filter_map(|&n| self.counters(n)).collect();
        let mut live = Vec::new();
        for &n in &members {
            let running = |k| self.pid(n, k).is_some_and(|p| is_ours(p, &self.dir.dir));
            let (dp, cp) = (running("dataplane"), running("control"));
            if dp {
                live.push(n);
            }
            let Some(c) = all.iter().find(|c| c.node == n) else {
                let _ = writeln!(s, "{n:>4}  (no channel yet)");
                continue;
            };
            let role = if !dp {
                "down".to_string()
            } else if self.pid(n, "dataplane").is_some_and(is_stopped) {
                "stopped".to_string()
            } else {
                role_name(c.role).to_string()
            };
            let view = if c.granted == Ballot::ZERO {
                "-".to_string()
            } else {
                format!("leader {}", c.granted.node())
            };
            let alive: Vec<String> = members
                .iter()
                .filter(|&&p| c.alive_mask & (1 << p) != 0)
                .map(|p| p.to_string())
                .collect();
            let scores: Vec<String> = members
                .iter()
                .map(|&p| format!("{}", (c.scores >> (8 * u32::from(p))) & 0xff))
                .collect();
            let _ = writeln!(
                s,
                "{n:>4}  {role:<10}  {view:<9}  {:>9}  {:>9}  {:>9}  {:>12}  {:<14}  {:<18}",
                format!("{}", c.ballot),
                c.applied,
                c.commit,
                c.heartbeat,
                if cp {
                    format!("[{}]", alive.join(","))
                } else {
                    "control down".into()
                },
                scores.join(" ")
            );
        }
        // What the frame fabrics dropped, when they dropped anything.
        summary_line(
            &mut s,
            "dropped",
            all.iter()
                .filter(|c| {
                    c.fabric_strangers
                        + c.fabric_decode_errors
                        + c.fabric_misaddressed
                        + c.malformed_frames
                        > 0
                })
                .map(|c| {
                    format!(
                        "node {}: {} strangers, {} undecodable, {} misaddressed, {} malformed client frames, {} time-outs",
                        c.node,
                        c.fabric_strangers,
                        c.fabric_decode_errors,
                        c.fabric_misaddressed,
                        c.malformed_frames,
                        c.fabric_timeouts
                    )
                }),
        );
        // The leader's view of its followers (a dead leader's last counters say nothing), and
        // what clients got.
        for c in all.iter().filter(|c| c.role == 4 && live.contains(&c.node)) {
            let view: Vec<String> = members
                .iter()
                .filter(|&&p| p != c.node)
                .map(|&p| {
                    let code = (c.followers >> (4 * u64::from(p))) & 0xf;
                    format!("{p} {}", rapax_dataplane::daemon::follower_name(code))
                })
                .collect();
            let _ = writeln!(s, "leader {} followers: {}", c.node, view.join(", "));
        }
        summary_line(
            &mut s,
            "clients",
            all.iter().filter(|c| c.client_requests > 0).map(|c| {
                format!(
                    "node {}: {} requests, {} refused, {} bad",
                    c.node, c.client_requests, c.client_rejected, c.client_bad_requests
                )
            }),
        );
        // The data mesh's frame traffic, on the frame fabrics.
        summary_line(
            &mut s,
            "frames",
            all.iter()
                .filter(|c| c.fabric_sent + c.fabric_received + c.fabric_send_errors > 0)
                .map(|c| {
                    format!(
                        "node {}: {} sent, {} received, {} refused by the link, {} resent, {} out \
                         of sequence, {} time-outs",
                        c.node,
                        c.fabric_sent,
                        c.fabric_received,
                        c.fabric_send_errors,
                        c.fabric_retransmits,
                        c.fabric_out_of_sequence,
                        c.fabric_timeouts
                    )
                }),
        );
        // shm: stopped old leaders killed by a revoke they held up.
        summary_line(
            &mut s,
            "fenced",
            all.iter()
                .filter(|c| c.fabric_fenced > 0)
                .map(|c| format!("node {}: {} writers", c.node, c.fabric_fenced)),
        );
        // rdma: rights the device would not switch or take back the usual way.
        summary_line(
            &mut s,
            "rights",
            all.iter()
                .filter(|c| c.fabric_rights_fallbacks + c.fabric_fence_failures > 0)
                .map(|c| {
                    format!(
                        "node {}: {} switches by the RESET cycle, {} write regions not deregistered",
                        c.node, c.fabric_rights_fallbacks, c.fabric_fence_failures
                    )
                }),
        );
        // rdma: connection set-up done on a connection's path instead of ahead.
        summary_line(
            &mut s,
            "set-up on path",
            all.iter()
                .filter(|c| c.fabric_qps_on_path + c.fabric_regions_on_path > 0)
                .map(|c| {
                    format!(
                        "node {}: queue pairs created {}, write regions registered {}",
                        c.node, c.fabric_qps_on_path, c.fabric_regions_on_path
                    )
                }),
        );
        // Checkpoints (equal indexes must show equal digests) and state transfers.
        summary_line(
            &mut s,
            "checkpoints",
            all.iter().filter(|c| c.checkpoint_index > 0).map(|c| {
                format!(
                    "node {}: below {} digest {:016x}",
                    c.node, c.checkpoint_index, c.checkpoint_digest
                )
            }),
        );
        summary_line(
            &mut s,
            "snapshots",
            all.iter()
                .filter(|c| c.snapshots_sent + c.snapshots_installed + c.snapshots_rejected > 0)
                .map(|c| {
                    format!(
                        "node {}: {} sent, {} installed, {} discarded",
                        c.node, c.snapshots_sent, c.snapshots_installed, c.snapshots_rejected
                    )
                }),
        );
        s
    }
}

/// What a node's channel counters say.
#[derive(Clone, Copy, Debug)]
pub struct NodeCounters {
    pub node: NodeId,
    /// The configuration it applied: epoch, ring ([`ring_word`]) and ring length.
    ///
    /// [`ring_word`]: rapax_dataplane::protocol::membership::ring_word
    pub epoch: u64,
    pub ring: u64,
    pub ring_len: u64,
    /// Lost its memory and not yet re-synced by a leader: it counts in no quorum.
    pub amnesiac: bool,
    pub role: u64,
    pub ballot: Ballot,
    pub granted: Ballot,
    pub applied: u64,
    pub commit: u64,
    pub heartbeat: u64,
    pub alive_mask: u64,
    pub scores: u64,
    pub leader_lost_at_ns: u64,
    pub leader_at_ns: u64,
    pub candidate_at_ns: u64,
    pub first_commit_at_ns: u64,
    pub client_requests: u64,
    pub client_bad_requests: u64,
    pub malformed_frames: u64,
    /// Frame fabrics (udp): frames from an address not their source's, datagrams that are no
    /// frame, frames for another cluster or node, operations that timed out.
    pub fabric_strangers: u64,
    pub fabric_decode_errors: u64,
    pub fabric_misaddressed: u64,
    pub fabric_timeouts: u64,
    /// Frame fabrics: frames sent and received, frames the link refused, request frames resent
    /// and log requests dropped out of sequence (the last two with loss recovery).
    pub fabric_sent: u64,
    pub fabric_received: u64,
    pub fabric_send_errors: u64,
    pub fabric_retransmits: u64,
    pub fabric_out_of_sequence: u64,
    /// While leading: the view of follower i in bits 4i..4i+4 (`daemon::follower_name`).
    pub followers: u64,
    /// Client requests answered with an error (not leader, busy, bad request).
    pub client_rejected: u64,
    /// shm: old writers this node fenced (killed while stopped mid-write) when revoking them.
    pub fabric_fenced: u64,
    /// rdma: rights switches that fell back to the RESET cycle, and revocations whose write
    /// region the device would not deregister (both 0 on a device that does what verbs say).
    pub fabric_rights_fallbacks: u64,
    pub fabric_fence_failures: u64,
    /// rdma: queue pairs created and write regions registered on connections' paths, not
    /// ahead (a hand-over waits for them).
    pub fabric_qps_on_path: u64,
    pub fabric_regions_on_path: u64,
    /// State transfers: started (as leader), installed and discarded (as follower).
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    pub snapshots_rejected: u64,
    /// The applied index of the node's last checkpoint and the state digest there.
    pub checkpoint_index: u64,
    pub checkpoint_digest: u64,
}

/// Appends "`label`: item; item" to `s` when there is any item.
fn summary_line(s: &mut String, label: &str, items: impl Iterator<Item = String>) {
    let items: Vec<String> = items.collect();
    if !items.is_empty() {
        let _ = writeln!(s, "{label}: {}", items.join("; "));
    }
}

/// The "value count" lines a data plane writes for a histogram.
fn parse_histogram(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Whether `pid` is stopped (SIGSTOP).
pub fn is_stopped(pid: i32) -> bool {
    u64::try_from(pid)
        .ok()
        .and_then(rapax_dataplane::fabric::shm::proc_state)
        == Some('T')
}

fn read_pids(dir: &ClusterDir) -> Vec<Proc> {
    let text = std::fs::read_to_string(dir.pids()).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Proc {
                node: it.next()?.parse().ok()?,
                kind: it.next()?.to_string(),
                pid: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), ClusterError> {
    rapax_dataplane::daemon::write_private(path, text.as_bytes())
        .map_err(io(format!("{}", path.display())))
}

/// Removes the files an earlier cluster left in `dir` (regions, channels, mailboxes, markers,
/// histograms, logs, pids); nothing else.
fn clean(dir: &ClusterDir) {
    let Ok(entries) = std::fs::read_dir(&dir.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name.starts_with("node-") || name == "pids" || name == "netns";
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// UDP ports of a local cluster: derived from its directory, so clusters in different
/// directories do not collide.
fn local_port_base(dir: &Path) -> u16 {
    let h = xxhash_rust::xxh3::xxh3_64(dir.as_os_str().as_encoded_bytes());
    // 48 blocks of 256 from 20000: all below 32768, where Linux's ephemeral range starts
    // (`net.ipv4.ip_local_port_range`, 32768-60999 by default), so no socket bound to an
    // ephemeral port can take a node's port between a kill and its restart.
    20_000 + (h % 48) as u16 * 256
}

/// Stops the processes recorded in `dir` that are still ours and, once no daemon of `dir` is
/// left, removes the nodes' regions; returns how many were running.
pub fn down(dir: &Path) -> usize {
    let cdir = ClusterDir::new(dir);
    let procs: Vec<Proc> = read_pids(&cdir)
        .into_iter()
        .filter(|p| is_ours(p.pid, dir))
        .collect();
    for p in &procs {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && procs.iter().any(|p| is_ours(p.pid, dir)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &procs {
        if is_ours(p.pid, dir) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(cdir.pids());
    // The nodes' regions (their logs, in shared memory: RAM, hundreds of MiB a cluster) go
    // with the processes once none is left: `up` starts from empty regions anyway. Logs,
    // channels and histograms stay for `status` and for reading after the fact. A daemon of
    // this directory that the pids file does not list (it was lost) keeps them.
    let deadline = Instant::now() + Duration::from_secs(2);
    while procs.iter().any(|p| is_ours(p.pid, dir)) {
        if Instant::now() >= deadline {
            return procs.len();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if any_daemon_of(dir) {
        return procs.len();
    }
    remove_regions(&cdir);
    procs.len()
}

/// Removes the nodes' regions (`node-N.region`) from a stopped cluster's directory.
fn remove_regions(dir: &ClusterDir) {
    let Ok(entries) = std::fs::read_dir(&dir.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("node-") && name.ends_with(".region") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Sends `signal` to `pid` if it is one of ours.
pub fn signal(pid: i32, dir: &Path, signal: Signal) -> bool {
    is_ours(pid, dir) && kill(Pid::from_raw(pid), signal).is_ok()
}

/// Where local nodes of an rdma profile listen: with rdma_cm, the address of the profile's GID
/// (the RDMA netdev's); with the UDP handshake, `None` (loopback).
fn local_rdma_ip(profile: &Profile) -> Result<Option<std::net::IpAddr>, ClusterError> {
    use rapax_dataplane::fabric::rdma::{gid_ip, RdmaSettings};
    use rapax_dataplane::profile::RdmaConnect;
    let r = profile
        .fabric
        .rdma
        .as_ref()
        .expect("a validated rdma profile has [fabric.rdma]");
    if r.connect == RdmaConnect::Udp {
        return Ok(None);
    }
    let rdma = |why: String| ClusterError::RdmaAddress {
        profile: profile.name.clone(),
        why,
    };
    match gid_ip(&RdmaSettings::from_profile(r)) {
        Ok(Some(ip)) => Ok(Some(ip)),
        Ok(None) => Err(rdma(format!(
            "GID {} of {} port {} is no IP address for rdma_cm to reach (set rdma_addr in a \
             cluster file, pick the GID index of the netdev's address, or connect = \"udp\")",
            r.gid_index, r.device, r.port
        ))),
        Err(e) => Err(rdma(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another cluster's daemons are found by their command lines, and a cluster's own are
    /// not counted as another's.
    #[test]
    fn daemons_of_other_clusters_are_found() {
        use std::os::unix::process::CommandExt as _;
        let mine = std::env::temp_dir().join(format!("rapax-mine-{}", std::process::id()));
        let theirs = std::env::temp_dir().join(format!("rapax-theirs-{}", std::process::id()));
        // A stand-in whose command line reads as a control plane of `theirs`.
        let mut child = Command::new("/bin/sh")
            .arg0("/opt/rapax/bin/rapax-control")
            .args(["-c", "sleep 20", "--dir"])
            .arg(&theirs)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut seen = false;
        for _ in 0..200 {
            seen = daemons_elsewhere(&mine).contains(&(pid, theirs.clone()));
            if seen {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let own = daemons_elsewhere(&theirs).iter().any(|&(p, _)| p == pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen, "the other cluster's daemon was not found");
        assert!(!own, "a cluster's own daemon counted as another's");
        assert_eq!(
            daemon_dir(b"/usr/bin/rapax-dataplane\0--node\0\x31\0--dir\0/d\0"),
            Some(&b"/d"[..])
        );
        assert_eq!(daemon_dir(b"/bin/sleep\0--dir\0/d\0"), None);
        assert_eq!(daemon_dir(b"/usr/bin/rapax-control\0"), None);
    }

    /// A restarted data plane's counters: absent while the file is its predecessor's, the new
    /// process's once its own is in place.
    #[test]
    fn a_restarted_data_planes_counters_are_never_its_predecessors() {
        let dir = std::env::temp_dir().join(format!("rapax-retire-{}", std::process::id()));
        let cdir = ClusterDir::new(&dir);
        cdir.create().unwrap();
        let profile = Profile::load(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-profiles/shm-local.toml"),
        )
        .unwrap();
        let lc = LocalCluster {
            dir: cdir,
            profile,
            cluster: ClusterFile::local(3, 47000),
            channels: Mutex::default(),
            retired: Mutex::default(),
        };
        let old = Channel::create(&lc.dir.channel(1), 1, 256).unwrap();
        old.set(Counter::Applied, 41);
        assert_eq!(lc.counters(1).map(|c| c.applied), Some(41));
        lc.retire_channel(1);
        assert!(lc.counters(1).is_none(), "the dead process's counters");
        assert!(
            lc.counters(1).is_none(),
            "still, until a new file is in place"
        );
        let new = Channel::create(&lc.dir.channel(1), 1, 256).unwrap();
        new.set(Counter::Applied, 7);
        assert_eq!(lc.counters(1).map(|c| c.applied), Some(7));
        // Other nodes are not affected.
        Channel::create(&lc.dir.channel(2), 2, 256).unwrap();
        assert!(lc.counters(2).is_some());
        drop((old, new));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
