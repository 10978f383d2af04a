//! `rapax preflight`: checks this host against a hardware profile before nodes are started on
//! it, and says what to change. Every check is a [`Check`] with a verdict: `FAIL` (a node would
//! not start, or would break a promise of the profile), `WARN` (it would run, slower or less
//! predictably than the profile intends) or `PASS`.
//!
//! The checks: the cores the profile pins agents to, spinning agents without a core of their
//! own, the clocksource (every clock read is a system call on some), the expedited memory
//! barrier the shm fabric's writers rely on, rapax daemons already running here (their load
//! would share the cores), and per fabric: the shm directory (tmpfs, room for
//! every node's region), the UDP bind address, the RDMA device (present, port active, GID index,
//! MTU), DPDK (bindings built, hugepages when the EAL needs them, the memif directory).

use std::path::{Path, PathBuf};

use rapax_dataplane::agent::cpulist;
use rapax_dataplane::fabric::hugepages_free;
use rapax_dataplane::profile::{FabricKind, IdleKind, Profile};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check: what was looked at, the verdict, and what was found (and what to do about it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// `Pass` when `ok`, else `otherwise`.
fn pass_if(ok: bool, otherwise: Verdict) -> Verdict {
    if ok {
        Verdict::Pass
    } else {
        otherwise
    }
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// What this host offers, read once (tests pass their own).
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// The cores this process may run on.
    pub cores: Vec<usize>,
    /// `/sys/devices/system/clocksource/clocksource0/current_clocksource`.
    pub clocksource: Option<String>,
    /// Whether the expedited global membarrier registers.
    pub membarrier: bool,
    /// The rapax daemons already running here: pid and cluster directory.
    pub daemons: Vec<(i32, PathBuf)>,
}

impl Host {
    pub fn this() -> Host {
        Host {
            cores: core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect(),
            clocksource: std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .ok()
            .map(|s| s.trim().to_string()),
            membarrier: rapax_ffi::sched::membarrier_register_global_expedited().is_ok(),
            daemons: crate::cluster::running_daemons().unwrap_or_default(),
        }
    }
}

/// Every check of `profile` for a cluster of `replicas` nodes on this host.
pub fn run(profile: &Profile, replicas: usize) -> Vec<Check> {
    let host = Host::this();
    let mut out = host_checks(profile, replicas, &host);
    out.extend(match profile.fabric.kind {
        FabricKind::Shm => shm_checks(profile, replicas),
        FabricKind::Udp => udp_checks(profile),
        FabricKind::Rdma => rdma_checks(profile, replicas),
        FabricKind::Dpdk => dpdk_checks(profile),
        FabricKind::Sim => vec![check(
            "fabric",
            Verdict::Fail,
            "the sim fabric runs inside `rapax sim` only; pick shm, udp, rdma or dpdk",
        )],
    });
    out
}

/// The checks that depend only on the host: cores, spinning agents, clocksource, membarrier.
pub fn host_checks(profile: &Profile, replicas: usize, host: &Host) -> Vec<Check> {
    let mut out = Vec::new();
    let usable = cpulist(&host.cores);
    let mut pinned = Vec::new();
    let mut missing = Vec::new();
    for (name, spec) in profile.agents.all() {
        if let Some(core) = spec.core {
            if host.cores.contains(&core) {
                pinned.push(format!("{name} on core {core}"));
            } else {
                missing.push(format!("{name} on core {core}"));
            }
        }
    }
    out.push(if !missing.is_empty() {
        check(
            "cores",
            Verdict::Fail,
            format!(
                "the profile pins {} but this host offers cores {usable}: change [agents] or run \
                 where those cores exist",
                missing.join(", ")
            ),
        )
    } else if pinned.is_empty() {
        check(
            "cores",
            Verdict::Pass,
            format!("no agent pinned; cores {usable} usable"),
        )
    } else {
        check(
            "cores",
            Verdict::Pass,
            format!("{} (cores {usable} usable)", pinned.join(", ")),
        )
    });
    // A spinning agent holds its core whole. Only the leader's fast path runs once per cluster;
    // every other agent runs on every node.
    let mut spinners = 0;
    let mut unpinned = Vec::new();
    for (name, spec) in profile.agents.all() {
        if spec.idle == IdleKind::Spin {
            spinners += if name == "leader" { 1 } else { replicas };
            if spec.core.is_none() {
                unpinned.push(name);
            }
        }
    }
    out.push(if spinners == 0 {
        check(
            "spinning agents",
            Verdict::Pass,
            "none: every agent yields or parks when idle",
        )
    } else if spinners >= host.cores.len() {
        check(
            "spinning agents",
            Verdict::Fail,
            format!(
                "{spinners} spinning agent threads for {replicas} nodes on {} cores: the other \
                 agents (heartbeats, elections) would starve and healthy leaders would be \
                 suspected; use idle = \"backoff\" where there is no core to spare",
                host.cores.len()
            ),
        )
    } else if !unpinned.is_empty() {
        check(
            "spinning agents",
            Verdict::Warn,
            format!(
                "{} spin without a core of their own: pin them (core = N) so the scheduler \
                 does not move other agents onto their cores",
                unpinned.join(", ")
            ),
        )
    } else {
        check(
            "spinning agents",
            Verdict::Pass,
            format!(
                "{spinners} spinning thread(s), pinned, {} cores",
                host.cores.len()
            ),
        )
    });
    out.push(clocksource_check(host.clocksource.as_deref()));
    out.push(running_daemons_check(&host.daemons));
    if profile.fabric.kind == FabricKind::Shm {
        out.push(if host.membarrier {
            check(
                "memory barrier",
                Verdict::Pass,
                "membarrier(2) expedited global barrier available: shm writers raise guards \
                 without a fence",
            )
        } else {
            check(
                "memory barrier",
                Verdict::Warn,
                "no expedited global membarrier (Linux < 4.16?): shm writers fence every guard, \
                 one cross-core transfer more per follower per command",
            )
        });
    }
    out
}

/// The clock every agent reads each turn: `tsc` (and a hypervisor's paravirtual clock) read in
/// user space; `hpet` and `acpi_pm` make each read a system call, tens of microseconds under
/// emulation.
pub fn clocksource_check(source: Option<&str>) -> Check {
    match source {
        Some(s @ ("tsc" | "kvm-clock" | "hyperv_clocksource_tsc_page" | "arch_sys_counter")) => {
            check(
                "clocksource",
                Verdict::Pass,
                format!("{s}: clock reads stay in user space"),
            )
        }
        Some(s) => check(
            "clocksource",
            Verdict::Warn,
            format!(
                "{s}: every clock read is a system call (the data plane reads the clock every \
                 turn); if the TSC is stable here, boot with clocksource=tsc tsc=reliable"
            ),
        ),
        None => check(
            "clocksource",
            Verdict::Warn,
            "cannot read /sys/devices/system/clocksource/clocksource0/current_clocksource",
        ),
    }
}

/// Rapax daemons already running here share the cores the new nodes will use: their load is
/// in every latency measured beside them.
pub fn running_daemons_check(daemons: &[(i32, PathBuf)]) -> Check {
    if daemons.is_empty() {
        return check(
            "running clusters",
            Verdict::Pass,
            "no rapax daemon runs on this host",
        );
    }
    let dirs = crate::cluster::cluster_dirs(daemons);
    check(
        "running clusters",
        Verdict::Warn,
        format!(
            "{} rapax daemons already run here ({}): they share these cores, and what is \
             measured beside them includes their load; `rapax down --dir DIR` stops a cluster",
            daemons.len(),
            dirs.join(", ")
        ),
    )
}

/// The nearest existing directory at or above `dir`.
fn existing_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.is_dir()).map(Path::to_path_buf)
}

fn shm_checks(profile: &Profile, replicas: usize) -> Vec<Check> {
    let dir = PathBuf::from(
        profile
            .fabric
            .shm
            .as_ref()
            .map_or("/dev/shm/rapax", |s| s.dir.as_str()),
    );
    let Some(base) = existing_ancestor(&dir) else {
        return vec![check(
            "shm directory",
            Verdict::Fail,
            format!("{}: no part of it exists", dir.display()),
        )];
    };
    let need = replicas as u64 * rapax_dataplane::fabric::shm::region_bytes(&profile.geometry());
    let mut out = Vec::new();
    match nix::sys::statfs::statfs(&base) {
        Ok(fs) => {
            let tmpfs = fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC;
            out.push(check(
                "shm directory",
                pass_if(tmpfs, Verdict::Warn),
                if tmpfs {
                    format!("{} on tmpfs", dir.display())
                } else {
                    format!(
                        "{} is not on tmpfs: region writes may reach a disk; use a directory \
                         under /dev/shm",
                        dir.display()
                    )
                },
            ));
            let free = fs.blocks_available() * fs.block_size() as u64;
            out.push(check(
                "shm space",
                pass_if(free >= need, Verdict::Fail),
                format!(
                    "{replicas} regions of {} MiB need {} MiB, {} MiB free in {}{}",
                    (need / replicas.max(1) as u64) >> 20,
                    need >> 20,
                    free >> 20,
                    base.display(),
                    if free >= need {
                        ""
                    } else {
                        ": lower log.capacity_entries or slot_bytes, or grow the tmpfs"
                    }
                ),
            ));
        }
        Err(e) => out.push(check(
            "shm directory",
            Verdict::Fail,
            format!("statfs {}: {e}", base.display()),
        )),
    }
    out
}

fn udp_checks(profile: &Profile) -> Vec<Check> {
    let bind = profile
        .fabric
        .udp
        .as_ref()
        .map(|u| u.bind_addr())
        .unwrap_or_else(|| "127.0.0.1:0".parse().expect("address"));
    let probe = std::net::SocketAddr::new(bind.ip(), 0);
    vec![match std::net::UdpSocket::bind(probe) {
        Ok(_) => check(
            "udp address",
            Verdict::Pass,
            format!("{} can be bound here", bind.ip()),
        ),
        Err(e) => check(
            "udp address",
            Verdict::Fail,
            format!("{}: {e} (not an address of this host?)", bind.ip()),
        ),
    }]
}

fn rdma_checks(profile: &Profile, replicas: usize) -> Vec<Check> {
    use rapax_ffi::ibverbs;
    let Some(r) = profile.fabric.rdma.as_ref() else {
        return vec![check(
            "rdma device",
            Verdict::Fail,
            "no [fabric.rdma] table",
        )];
    };
    if !ibverbs::available() {
        return vec![check(
            "rdma bindings",
            Verdict::Fail,
            match ibverbs::devices() {
                Err(e) => format!("{e}: install rdma-core (libibverbs-dev) and rebuild"),
                Ok(_) => "not built".to_string(),
            },
        )];
    }
    let mut out = vec![check(
        "rdma bindings",
        Verdict::Pass,
        "rdma-core bindings built",
    )];
    if r.hugepages {
        // A node's log, whole 2 MiB pages, and one page for its control block.
        let per_node = profile.geometry().log_bytes().div_ceil(2 << 20) as u64 + 1;
        let need = per_node * replicas as u64;
        let free = hugepages_free();
        out.push(check(
            "hugepages",
            pass_if(free.is_some_and(|n| n >= need), Verdict::Fail),
            match free {
                Some(n) if n >= need => {
                    format!("{n} free hugepages, {need} for {replicas} node(s) ({per_node} each)")
                }
                Some(n) => format!(
                    "fabric.rdma.hugepages needs {need} free hugepages for {replicas} node(s) \
                     ({per_node} each), {n} are free: echo {need} > /proc/sys/vm/nr_hugepages \
                     (beside what else uses them), or set hugepages = false"
                ),
                None => "cannot read HugePages_Free from /proc/meminfo".to_string(),
            },
        ));
    }
    let devices = match ibverbs::devices() {
        Ok(d) => d,
        Err(e) => {
            out.push(check("rdma device", Verdict::Fail, e.to_string()));
            return out;
        }
    };
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    if !names.contains(&r.device.as_str()) {
        out.push(check(
            "rdma device",
            Verdict::Fail,
            if names.is_empty() {
                format!(
                    "no RDMA devices on this host (the profile wants {}); for soft-RoCE: \
                     modprobe rdma_rxe; rdma link add rxe0 type rxe netdev <if>",
                    r.device
                )
            } else {
                format!("{} not found; devices here: {}", r.device, names.join(", "))
            },
        ));
        return out;
    }
    let ctx = match ibverbs::Context::open(&r.device) {
        Ok(c) => c,
        Err(e) => {
            out.push(check("rdma device", Verdict::Fail, e.to_string()));
            return out;
        }
    };
    out.push(check(
        "rdma device",
        Verdict::Pass,
        format!("{} opened", r.device),
    ));
    match ctx.query_port(r.port) {
        Ok(p) => {
            out.push(check(
                "rdma port",
                pass_if(p.active, Verdict::Fail),
                format!(
                    "port {} {}{}",
                    r.port,
                    if p.active { "active" } else { "not active" },
                    if p.ethernet {
                        " (RoCE)"
                    } else {
                        " (InfiniBand)"
                    }
                ),
            ));
            let active = ibverbs::mtu_bytes(p.active_mtu);
            out.push(check(
                "rdma mtu",
                pass_if(r.mtu <= active, Verdict::Warn),
                format!(
                    "profile mtu {} B, port's active MTU {active} B{}",
                    r.mtu,
                    if r.mtu <= active {
                        ""
                    } else {
                        ": the path MTU will be the port's"
                    }
                ),
            ));
            let gid_ok = (r.gid_index as i32) < p.gid_table_len
                && ctx
                    .query_gid(r.port, r.gid_index as i32)
                    .is_ok_and(|g| g.0 != [0; 16]);
            out.push(check(
                "rdma gid",
                pass_if(gid_ok || !p.ethernet, Verdict::Fail),
                if gid_ok {
                    format!("GID index {} is set", r.gid_index)
                } else if !p.ethernet {
                    "InfiniBand: addressed by LID".to_string()
                } else {
                    format!(
                        "GID index {} is empty or past the table ({} entries): see \
                         `show_gids` or /sys/class/infiniband/{}/ports/{}/gids",
                        r.gid_index, p.gid_table_len, r.device, r.port
                    )
                },
            ));
        }
        Err(e) => out.push(check("rdma port", Verdict::Fail, e.to_string())),
    }
    if r.connect == rapax_dataplane::profile::RdmaConnect::Cm {
        let ip = ctx
            .query_gid(r.port, r.gid_index as i32)
            .ok()
            .and_then(|g| rapax_dataplane::fabric::rdma::gid_to_ip(&g));
        out.push(match ip {
            Some(ip) if ip.is_loopback() => check(
                "rdma_cm",
                Verdict::Fail,
                format!(
                    "GID {} is {ip}, a loopback address: rdma_cm cannot route over lo; put \
                     {} on another netdev (a dummy one will do on one host) or set connect = \
                     \"udp\"",
                    r.gid_index, r.device
                ),
            ),
            Some(ip) => check(
                "rdma_cm",
                Verdict::Pass,
                format!(
                    "connections by rdma_cm; local nodes listen on {ip} (GID {})",
                    r.gid_index
                ),
            ),
            None => check(
                "rdma_cm",
                Verdict::Warn,
                format!(
                    "GID {} is no IP address: local clusters cannot place their listeners; \
                     give each node an rdma_addr on its RDMA netdev in the cluster file",
                    r.gid_index
                ),
            ),
        });
    }
    out
}

fn dpdk_checks(profile: &Profile) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match rapax_ffi::dpdk::absent_reason() {
        None => check("dpdk bindings", Verdict::Pass, "DPDK bindings built"),
        Some(why) => check(
            "dpdk bindings",
            Verdict::Fail,
            format!("{why}: install libdpdk-dev and rebuild"),
        ),
    });
    let Some(d) = profile.fabric.dpdk.as_ref() else {
        return out;
    };
    if !d.eal_args.iter().any(|a| a == "--no-huge") {
        let free = hugepages_free();
        out.push(check(
            "hugepages",
            pass_if(free.unwrap_or(0) > 0, Verdict::Fail),
            match free {
                Some(n) if n > 0 => format!("{n} free hugepages"),
                Some(_) => "the EAL needs hugepages and none are free: echo 512 > \
                            /proc/sys/vm/nr_hugepages (or pass --no-huge)"
                    .to_string(),
                None => "cannot read HugePages_Free from /proc/meminfo".to_string(),
            },
        ));
    }
    if let Some(dir) = d.memif_dir.as_deref() {
        let dir = Path::new(dir);
        let base = existing_ancestor(dir);
        let writable = base.as_deref().is_some_and(|b| {
            nix::unistd::access(
                b,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok()
        });
        out.push(check(
            "memif directory",
            pass_if(writable, Verdict::Fail),
            format!(
                "{}{}",
                dir.display(),
                if writable {
                    ": can be created and written"
                } else {
                    ": cannot be created or written by this user"
                }
            ),
        ));
    }
    out
}

/// The report: one line per check, then the counts.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!(
            "  {}  {:<16} {}\n",
            c.verdict.as_str(),
            c.name,
            c.detail
        ));
    }
    let fails = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warns = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    s.push_str(&format!(
        "preflight: {fails} failed, {warns} warning{}\n",
        if warns == 1 { "" } else { "s" }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Profile {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hw-profiles")
            .join(name);
        Profile::load(&path).unwrap()
    }

    fn host(cores: &[usize]) -> Host {
        Host {
            cores: cores.to_vec(),
            clocksource: Some("tsc".into()),
            membarrier: true,
            daemons: Vec::new(),
        }
    }

    #[test]
    fn running_daemons_warn_and_name_their_clusters() {
        let p = profile("shm-local.toml");
        let (v, _) = verdict(&host_checks(&p, 3, &host(&[0, 1])), "running clusters");
        assert_eq!(v, Verdict::Pass);
        let mut h = host(&[0, 1]);
        h.daemons = vec![
            (10, PathBuf::from("/tmp/a")),
            (11, PathBuf::from("/tmp/a")),
            (12, PathBuf::from("/tmp/b")),
        ];
        let (v, detail) = verdict(&host_checks(&p, 3, &h), "running clusters");
        assert_eq!(v, Verdict::Warn);
        assert!(
            detail.starts_with("3 rapax daemons") && detail.contains("(/tmp/a, /tmp/b)"),
            "{detail}"
        );
    }

    fn verdict(checks: &[Check], name: &str) -> (Verdict, String) {
        let c = checks.iter().find(|c| c.name == name).expect(name);
        (c.verdict, c.detail.clone())
    }

    #[test]
    fn a_pinned_core_the_host_lacks_fails_and_names_it() {
        let p = profile("shm-local.toml"); // leader on core 1
        let (v, detail) = verdict(&host_checks(&p, 3, &host(&[0])), "cores");
        assert_eq!(v, Verdict::Fail);
        assert!(
            detail.contains("leader on core 1") && detail.contains("cores 0"),
            "{detail}"
        );
        let (v, _) = verdict(&host_checks(&p, 3, &host(&[0, 1])), "cores");
        assert_eq!(v, Verdict::Pass);
    }

    #[test]
    fn spinning_agents_need_spare_cores() {
        let mut p = profile("shm-local.toml");
        // The leader alone spins, pinned: fine on two cores.
        let (v, _) = verdict(&host_checks(&p, 3, &host(&[0, 1])), "spinning agents");
        assert_eq!(v, Verdict::Pass);
        // Every node's heartbeat spinning as well: 1 + 3 threads on two cores.
        p.agents.heartbeat.idle = IdleKind::Spin;
        let (v, detail) = verdict(&host_checks(&p, 3, &host(&[0, 1])), "spinning agents");
        assert_eq!(v, Verdict::Fail, "{detail}");
        // On a big host it runs, but unpinned spinners are worth a warning.
        let many: Vec<usize> = (0..16).collect();
        let (v, detail) = verdict(&host_checks(&p, 3, &host(&many)), "spinning agents");
        assert_eq!(v, Verdict::Warn);
        assert!(detail.contains("heartbeat"), "{detail}");
    }

    #[test]
    fn a_clocksource_read_by_system_call_is_a_warning() {
        assert_eq!(clocksource_check(Some("tsc")).verdict, Verdict::Pass);
        assert_eq!(clocksource_check(Some("kvm-clock")).verdict, Verdict::Pass);
        let hpet = clocksource_check(Some("hpet"));
        assert_eq!(hpet.verdict, Verdict::Warn);
        assert!(hpet.detail.contains("clocksource=tsc"), "{}", hpet.detail);
        assert_eq!(clocksource_check(None).verdict, Verdict::Warn);
    }

    #[test]
    fn shm_space_is_counted_per_node_and_missing_room_fails() {
        let mut p = profile("shm-local.toml");
        p.fabric.shm.as_mut().unwrap().dir = "/dev/shm/rapax-preflight-test".into();
        let checks = shm_checks(&p, 3);
        let (v, detail) = verdict(&checks, "shm space");
        // 3 regions of a 256 MiB log fit this host's /dev/shm.
        assert_eq!(v, Verdict::Pass, "{detail}");
        assert!(detail.starts_with("3 regions of 2"), "{detail}");
        // A million of them do not.
        let (v, detail) = verdict(&shm_checks(&p, 1_000_000), "shm space");
        assert_eq!(v, Verdict::Fail, "{detail}");
        assert!(detail.contains("lower log.capacity_entries"), "{detail}");
    }

    #[test]
    fn an_rdma_profile_on_a_host_without_its_device_fails_with_what_to_do() {
        let p = profile("soft-roce.toml");
        let checks = rdma_checks(&p, 3);
        let worst = checks.iter().map(|c| c.verdict).max().unwrap();
        let here = rapax_ffi::ibverbs::devices().unwrap_or_default();
        if here.iter().any(|d| d.name == "rxe0") {
            println!("rxe0 present: {}", render(&checks));
        } else {
            assert_eq!(worst, Verdict::Fail, "{}", render(&checks));
        }
    }

    #[test]
    fn huge_pages_are_counted_against_every_node_on_this_host() {
        let p = profile("soft-roce.toml");
        assert!(p.fabric.rdma.as_ref().unwrap().hugepages);
        let checks = rdma_checks(&p, 3);
        let Some(c) = checks.iter().find(|c| c.name == "hugepages") else {
            // Without the bindings the check list stops before it.
            assert!(!rapax_ffi::ibverbs::available());
            return;
        };
        // soft-roce.toml: a 16 MiB log (+ its header) is 9 pages, and 1 for the control block.
        assert!(
            c.detail.contains("30") && c.detail.contains("(10 each)"),
            "{}",
            c.detail
        );
        let free = hugepages_free().unwrap_or(0);
        let want = if free >= 30 {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        assert_eq!(c.verdict, want, "{} free: {}", free, c.detail);
    }

    #[test]
    fn the_report_counts_failures_and_warnings() {
        let checks = vec![
            check("a", Verdict::Pass, "ok"),
            check("b", Verdict::Warn, "hmm"),
            check("c", Verdict::Fail, "no"),
        ];
        let r = render(&checks);
        assert!(r.contains("  FAIL  c"), "{r}");
        assert!(r.ends_with("preflight: 1 failed, 1 warning\n"), "{r}");
    }
}
