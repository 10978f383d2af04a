//! DPDK bindings end to end, without hugepages or a NIC: the EAL with `--no-huge`, one
//! net_ring vdev (whose transmit queue i feeds its own receive queue i, a loopback), a pktmbuf
//! pool, a port with two rx/tx queue pairs, and bursts of frames sent and received back byte for
//! byte.
//!
//! The EAL initialises once per process, so everything is one test in its own test binary.

use rapax_ffi::dpdk::{self, Eal};

#[cfg(rapax_dpdk)]
const FRAMES: usize = 32;

#[cfg(rapax_dpdk)]
fn frame(queue: u16, i: usize, src: dpdk::MacAddr) -> Vec<u8> {
    let mut f = Vec::with_capacity(64 + i);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental ethertype
    f.extend_from_slice(&(queue as u32).to_be_bytes());
    f.extend_from_slice(&(i as u32).to_be_bytes());
    f.extend((0..(42 + i)).map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8)));
    f
}

#[test]
fn ring_vdev_loops_frames_back() {
    if !dpdk::available() {
        let err = Eal::init(&[]).unwrap_err();
        assert!(matches!(err, dpdk::Error::NotBuilt(_)), "{err}");
        println!("skipped ring_vdev_loops_frames_back: DPDK bindings not built ({err})");
    }
    #[cfg(rapax_dpdk)]
    run();
}

#[cfg(rapax_dpdk)]
fn run() {
    use dpdk::{Burst, PktMbufPool, Port, PortConfig};

    let args: Vec<String> = [
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "--vdev=net_ring0",
        &format!("--file-prefix=rapax-ffi-test-{}", std::process::id()),
        "--log-level=lib.eal:notice",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&args).expect("rte_eal_init");
    assert!(
        matches!(Eal::init(&args), Err(dpdk::Error::AlreadyInitialised)),
        "the EAL initialises once"
    );
    assert_eq!(
        dpdk::rte_errno(),
        dpdk::rte_errno(),
        "rte_errno reads through the shim"
    );

    assert!(eal.port_count() >= 1, "the net_ring0 vdev is a port");
    let port_id = eal.port_by_name("net_ring0").expect("net_ring0 port");
    assert!(matches!(
        eal.port_by_name("net_nothing9"),
        Err(dpdk::Error::NoSuchPort(_))
    ));

    let pool = PktMbufPool::create(&eal, "rapax_test_pool", 1023, 32, 2048 + 128, -1)
        .expect("rte_pktmbuf_pool_create");
    let free_at_start = pool.avail_count();

    let config = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        rx_desc: 256,
        tx_desc: 256,
        promiscuous: false,
    };
    let mut port = Port::configure(&eal, port_id, &config, &pool).expect("configure net_ring0");
    port.start().expect("rte_eth_dev_start");
    let mac = port.mac_addr().expect("rte_eth_macaddr_get");
    println!("net_ring0 is port {port_id}, MAC {mac}");

    for queue in 0..2u16 {
        let mut tx: Burst<'_, FRAMES> = Burst::new();
        let sent_frames: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(queue, i, mac)).collect();
        for f in &sent_frames {
            let mut m = pool.alloc().expect("rte_pktmbuf_alloc");
            m.extend_from_slice(f).expect("rte_pktmbuf_append");
            assert_eq!(usize::from(m.data_len()), f.len());
            assert_eq!(m.pkt_len() as usize, f.len());
            assert_eq!(m.data(), &f[..]);
            tx.push(m).expect("room in the burst");
        }
        assert!(tx.is_full());
        let mut sent = 0;
        for _ in 0..100 {
            sent += port.tx_burst(queue, &mut tx);
            if tx.is_empty() {
                break;
            }
        }
        assert_eq!(sent, FRAMES, "queue {queue}: every frame sent");

        let mut rx: Burst<'_, FRAMES> = Burst::new();
        for _ in 0..100 {
            port.rx_burst(queue, &mut rx);
            if rx.is_full() {
                break;
            }
        }
        assert_eq!(rx.len(), FRAMES, "queue {queue}: every frame came back");
        for (got, want) in rx.iter().zip(&sent_frames) {
            assert_eq!(
                got.data(),
                &want[..],
                "queue {queue}: the bytes came back equal"
            );
        }
        let other = 1 - queue;
        let mut stray: Burst<'_, 4> = Burst::new();
        assert_eq!(
            port.rx_burst(other, &mut stray),
            0,
            "queue {other} got nothing of queue {queue}"
        );
        rx.clear();
    }

    // A full mbuf refuses more bytes with a typed error.
    let mut m = pool.alloc().unwrap();
    let room = usize::from(m.tailroom());
    assert!(matches!(
        m.extend_from_slice(&vec![0u8; room + 1]),
        Err(dpdk::Error::NoTailroom { .. })
    ));
    m.extend_from_slice(&vec![7u8; room]).unwrap();
    assert_eq!(m.tailroom(), 0);
    drop(m);

    port.stop().expect("rte_eth_dev_stop");
    drop(port);
    assert_eq!(
        pool.avail_count(),
        free_at_start,
        "every mbuf went back to the pool"
    );
    drop(pool);

    // SAFETY: no port, pool or mbuf is left, and no DPDK call follows.
    unsafe { eal.cleanup() }.expect("rte_eal_cleanup");
    // The EAL's runtime directory for this file prefix (created even with --no-shconf).
    let prefix = format!("rapax-ffi-test-{}", std::process::id());
    for base in [
        "/var/run/dpdk".to_string(),
        format!(
            "{}/dpdk",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or_default()
        ),
    ] {
        let _ = std::fs::remove_dir_all(std::path::Path::new(&base).join(&prefix));
    }
}
