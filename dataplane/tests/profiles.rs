//! Every hardware profile shipped in hw-profiles/ loads, validates, renders, and drives a node.

use std::path::{Path, PathBuf};

use rapax_dataplane::fabric::sim::SimMemory;
use rapax_dataplane::profile::{ClusterFile, FabricKind, IdleKind, Profile};
use rapax_dataplane::protocol::kv::{KvLimits, KvStore};
use rapax_dataplane::protocol::node::{Node, Start};

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-profiles")
}

fn profile_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(profiles_dir())
        .expect("hw-profiles/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn the_local_profiles_are_shipped() {
    let stems: Vec<String> = profile_paths().iter().map(|p| stem(p)).collect();
    for want in [
        "shm-local",
        "udp-local",
        "dpdk-memif",
        "dpdk-afpacket-veth",
        "e810-dpdk",
        "mlx5-dpdk",
    ] {
        assert!(
            stems.iter().any(|s| s == want),
            "{want}.toml missing: {stems:?}"
        );
    }
    let shm = Profile::load(profiles_dir().join("shm-local.toml")).unwrap();
    assert_eq!(shm.fabric.kind, FabricKind::Shm);
    assert_eq!(shm.fabric.shm.as_ref().unwrap().dir, "/dev/shm/rapax");
    for name in ["dpdk-memif", "dpdk-afpacket-veth", "e810-dpdk", "mlx5-dpdk"] {
        let p = Profile::load(profiles_dir().join(format!("{name}.toml"))).unwrap();
        assert_eq!(p.fabric.kind, FabricKind::Dpdk, "{name}");
        assert!(!p.verified_on_hardware, "{name}");
        let d = p.fabric.dpdk.as_ref().unwrap();
        assert!(d.retransmit_us > 0 && d.fault_drop_ppm == 0, "{name}");
        assert_eq!(d.memif_dir.is_some(), name == "dpdk-memif", "{name}");
    }
    // The af_packet lane's profile: one af_packet port on the node's veth, one queue pair.
    let afp = Profile::load(profiles_dir().join("dpdk-afpacket-veth.toml")).unwrap();
    let d = afp.fabric.dpdk.as_ref().unwrap();
    assert!(d
        .eal_args
        .iter()
        .any(|a| a.starts_with("--vdev=net_af_packet") && a.contains("iface=")));
    assert_eq!((d.port, d.rx_queues, d.tx_queues), (0, 1, 1));
    let udp = Profile::load(profiles_dir().join("udp-local.toml")).unwrap();
    assert_eq!(udp.fabric.kind, FabricKind::Udp);
    assert_eq!(
        udp.fabric.udp.as_ref().unwrap().bind_addr(),
        "127.0.0.1:0".parse().unwrap()
    );
}

#[test]
fn every_profile_validates_renders_and_round_trips() {
    let paths = profile_paths();
    assert!(!paths.is_empty());
    for path in paths {
        let p = Profile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            p.name,
            stem(&path),
            "{}: name differs from file name",
            path.display()
        );
        assert!(
            !p.description.is_empty(),
            "{}: no description",
            path.display()
        );
        let text = p.render();
        assert!(
            text.contains(&format!("kind = \"{}\"", p.fabric.kind)),
            "{text}"
        );
        let back = Profile::from_toml_str(&text).unwrap_or_else(|e| {
            panic!("{}: rendered profile rejected: {e}\n{text}", path.display())
        });
        assert_eq!(back, p, "{}: render is lossy:\n{text}", path.display());
    }
}

#[test]
fn local_profiles_run_on_two_cores() {
    for path in profile_paths()
        .into_iter()
        .filter(|p| stem(p).ends_with("-local"))
    {
        let p = Profile::load(&path).unwrap();
        for (name, agent) in p.agents.all() {
            if name == "leader" && agent.idle != IdleKind::Backoff {
                // Only the leading data plane may spin, on a core a 2-core host has.
                assert_eq!(agent.idle, IdleKind::Spin, "{}", path.display());
                assert!(
                    agent.core.is_some_and(|c| c < 2),
                    "{}: a spinning leader needs a core of its own below 2",
                    path.display()
                );
                continue;
            }
            assert_eq!(
                agent.core,
                None,
                "{}: agent {name} is pinned",
                path.display()
            );
            assert_eq!(
                agent.idle,
                IdleKind::Backoff,
                "{}: agent {name}",
                path.display()
            );
        }
        // A parked follower must bump its heartbeat faster than peers read it.
        let follower = p.agents.follower_apply.backoff(&p.backoff);
        assert!(
            follower.max_park_us < p.election.read_period_us,
            "{}: max_park_us {} >= read_period_us {}",
            path.display(),
            follower.max_park_us,
            p.election.read_period_us
        );
        assert!(p.verified_on_hardware, "{}", path.display());
    }
}

#[test]
fn every_profile_drives_a_three_node_cluster() {
    let local = ClusterFile::local(3, 17000);
    for path in profile_paths() {
        let p = Profile::load(&path).unwrap();
        let mut cluster = local.clone();
        if p.fabric.kind == FabricKind::Dpdk {
            for n in &mut cluster.nodes {
                n.dpdk_mac = Some(format!("02:00:00:00:00:{:02x}", n.id + 1));
            }
        }
        if p.fabric.kind == FabricKind::Rdma {
            for n in &mut cluster.nodes {
                n.rdma_addr = Some(format!("10.0.0.{}:7471", n.id + 1));
            }
        }
        cluster
            .check_for(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for &id in &cluster.ring {
            let cfg = p.node_config(id, cluster.ring.clone(), 10);
            assert!(cfg.election.read_period_ticks >= 1);
            // Node::new asserts the config is one the protocol accepts.
            let mut mem = SimMemory::new(id, cfg.geometry.log_bytes());
            let node = Node::new(
                cfg,
                KvStore::new(KvLimits::default()),
                &mut mem,
                Start::Fresh,
                0,
            );
            drop(node);
        }
    }
}

/// The fully qualified name of every key of a rendered profile (`log.slot_bytes`), and of every
/// table (`fabric.shm`), with an agent's name written as `<agent>` (`agents.<agent>.idle`). The
/// README documents a key as `` `log.slot_bytes` `` and a table as `` `[fabric.shm]` `` or
/// `` `agents.<agent>` ``.
fn rendered_keys(text: &str) -> Vec<String> {
    let agents = [
        "client_ingress",
        "leader",
        "follower_apply",
        "heartbeat",
        "election",
    ];
    let generic = |name: &str| {
        let mut parts: Vec<&str> = name.split('.').collect();
        if parts.len() >= 2 && parts[0] == "agents" && agents.contains(&parts[1]) {
            parts[1] = "<agent>";
        }
        parts.join(".")
    };
    let mut keys = Vec::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_end_matches(']').to_string();
            keys.push(generic(&table));
        } else if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            if table.is_empty() {
                keys.push(key.to_string());
            } else {
                keys.push(generic(&format!("{table}.{key}")));
            }
        }
    }
    keys
}

#[test]
fn the_readme_documents_every_field() {
    let readme = std::fs::read_to_string(profiles_dir().join("README.md")).unwrap();
    // Profiles that show the optional fields and the tables no shipped profile uses.
    let extra = [
        "name = \"x\"\n[fabric]\nkind = \"rdma\"\n[fabric.rdma]\ndevice = \"rxe0\"\n\
         [agents]\nnuma_node = 0\n[agents.leader]\ncore = 1\nidle = \"spin\"\n",
        "name = \"x\"\n[fabric]\nkind = \"dpdk\"\n[fabric.dpdk]\neal_args = [\"--no-pci\"]\n",
    ];
    let mut texts: Vec<String> = extra
        .iter()
        .map(|t| Profile::from_toml_str(t).unwrap().render())
        .collect();
    for path in profile_paths() {
        texts.push(Profile::load(&path).unwrap().render());
    }
    let mut checked = 0;
    for text in &texts {
        for key in rendered_keys(text) {
            assert!(
                readme.contains(&format!("`{key}`")) || readme.contains(&format!("`[{key}]`")),
                "hw-profiles/README.md does not document `{key}`"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} keys checked");
}
