//! rdma-core bindings against the machine's devices.
//!
//! Without an RDMA device (this kernel has none) only the device listing runs; the loopback
//! tests print why they skip. In a soft-RoCE VM (`rdma link add rxe0 type rxe netdev eth0`)
//! `cargo test -p rapax-ffi --release -- --nocapture` runs them all. Environment:
//! `RAPAX_RDMA_DEVICE` (default: the first device), `RAPAX_RDMA_GID_INDEX` (default 1, the
//! RoCE v2 IPv4 entry of rxe), `RAPAX_RDMA_CM_ADDR` (an IP address of the device's netdev, for
//! the rdma_cm test).

use rapax_ffi::ibverbs;

#[test]
fn devices_lists_without_error() {
    if !ibverbs::available() {
        // The stub must say why, not pretend there are no devices.
        let err = ibverbs::devices().unwrap_err();
        assert!(matches!(err, ibverbs::Error::NotBuilt(_)), "{err}");
        println!("skipped: rdma-core bindings not built ({err})");
        return;
    }
    let devices = ibverbs::devices()
        .expect("ibv_get_device_list without devices is an empty list, not an error");
    println!("RDMA devices: {devices:?}");
    for d in &devices {
        assert!(!d.name.is_empty());
    }
}

#[test]
fn opening_a_missing_device_is_a_typed_error() {
    match ibverbs::Context::open("rapax-no-such-device") {
        Err(ibverbs::Error::NoSuchDevice(name)) => assert_eq!(name, "rapax-no-such-device"),
        Err(ibverbs::Error::NotBuilt(why)) => {
            println!("skipped: rdma-core bindings not built ({why})")
        }
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
}

#[cfg(rapax_rdma)]
mod device {
    use rapax_ffi::ibverbs::{
        self, AccessFlags, Context, Endpoint, Gid, PathParams, QpCaps, QueuePair, SendFlags,
    };
    use rapax_ffi::ibverbs::{CompletionQueue, WcOpcode, WcStatus, WorkCompletion};
    use std::time::{Duration, Instant};

    /// The device to test on, or why the device tests skip.
    pub fn device() -> Result<String, String> {
        if !ibverbs::available() {
            return Err("rdma-core bindings not built".into());
        }
        let devices = ibverbs::devices().map_err(|e| e.to_string())?;
        if let Ok(name) = std::env::var("RAPAX_RDMA_DEVICE") {
            return Ok(name);
        }
        devices
            .first()
            .map(|d| d.name.clone())
            .ok_or_else(|| "no RDMA device (load rdma_rxe and add an rxe link to run it)".into())
    }

    pub fn gid_index() -> u8 {
        std::env::var("RAPAX_RDMA_GID_INDEX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// Polls `cq` until one completion arrives, or panics after 5 s.
    pub fn wait_one(cq: &CompletionQueue) -> WorkCompletion {
        let mut wcs = [WorkCompletion::default(); 4];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = cq.poll(&mut wcs).expect("ibv_poll_cq");
            if n > 0 {
                assert_eq!(
                    n,
                    1,
                    "one work request outstanding, got {n} completions: {:?}",
                    &wcs[..n]
                );
                return wcs[0];
            }
            assert!(Instant::now() < deadline, "no completion within 5 s");
            std::thread::yield_now();
        }
    }

    /// Page-aligned zeroed memory that outlives its registration.
    pub struct Buffer {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }

    impl Buffer {
        pub fn new(len: usize) -> Buffer {
            let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Buffer { ptr, layout }
        }
        pub fn ptr_for_test(&self) -> *mut u8 {
            self.ptr
        }
        pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
            assert!(offset + len <= self.layout.size());
            // SAFETY: in bounds; volatile, as the HCA writes this memory behind the compiler's back.
            (0..len)
                .map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(offset + i)) })
                .collect()
        }
        pub fn write(&self, offset: usize, bytes: &[u8]) {
            assert!(offset + bytes.len() <= self.layout.size());
            for (i, b) in bytes.iter().enumerate() {
                // SAFETY: in bounds; no work request on this range is outstanding.
                unsafe { std::ptr::write_volatile(self.ptr.add(offset + i), *b) };
            }
        }
    }

    impl Drop for Buffer {
        fn drop(&mut self) {
            // SAFETY: allocated in new() with this layout; the regions on it were dropped first
            // (they are declared after their buffers in the tests).
            unsafe { std::alloc::dealloc(self.ptr, self.layout) };
        }
    }

    pub struct Pair {
        pub ctx: Context,
        pub path: PathParams,
        pub gid: Gid,
        pub lid: u16,
    }

    pub fn open(name: &str) -> Pair {
        let ctx = Context::open(name).expect("ibv_open_device");
        let port = ctx.query_port(1).expect("ibv_query_port");
        println!("{name} port 1: {port:?}");
        assert!(port.active, "port 1 of {name} is not ACTIVE");
        let gid_index = port.ethernet.then(gid_index);
        let gid = ctx
            .query_gid(1, i32::from(gid_index.unwrap_or(0)))
            .expect("ibv_query_gid");
        println!("{name} GID index {gid_index:?}: {gid:?}");
        let path = PathParams {
            port: 1,
            gid_index,
            mtu: port.active_mtu.min(3),
            ..PathParams::default()
        };
        Pair {
            ctx,
            path,
            gid,
            lid: port.lid,
        }
    }

    pub fn connect(
        pair: &Pair,
        a: QueuePair<ibverbs::Reset>,
        b: QueuePair<ibverbs::Reset>,
        b_rights: AccessFlags,
    ) -> (QueuePair<ibverbs::Rts>, QueuePair<ibverbs::Rts>) {
        let ep = |qp_num, psn| Endpoint {
            qp_num,
            psn,
            lid: pair.lid,
            gid: pair.gid,
        };
        let (a_ep, b_ep) = (ep(a.qp_num(), 0x100), ep(b.qp_num(), 0x200));
        let a = a.to_init(1, AccessFlags::LOCAL_WRITE).expect("INIT a");
        let b = b.to_init(1, b_rights).expect("INIT b");
        let a = a.to_rtr(&b_ep, &pair.path).expect("RTR a");
        let b = b.to_rtr(&a_ep, &pair.path).expect("RTR b");
        let a = a.to_rts(a_ep.psn, &pair.path).expect("RTS a");
        let b = b.to_rts(b_ep.psn, &pair.path).expect("RTS b");
        (a, b)
    }

    pub fn check_success(wc: &WorkCompletion, wr_id: u64, opcode: WcOpcode) {
        assert_eq!(wc.wr_id(), wr_id);
        assert_eq!(wc.status(), WcStatus::Success, "{wc:?}");
        assert_eq!(wc.opcode(), opcode);
    }

    pub fn flags() -> SendFlags {
        SendFlags::SIGNALED
    }

    pub fn caps() -> QpCaps {
        QpCaps::default()
    }
}

/// Two RC queue pairs on one device connected by loopback: RDMA WRITE (plain and inline) and
/// READ land; revoking the target's rights with `set_access_flags(NONE)` makes a later write
/// fail with a remote access / invalid-request error without landing; the full
/// RESET → INIT → RTR → RTS cycle restores the rights.
#[test]
fn rc_loopback_write_read_revoke() {
    #[cfg(rapax_rdma)]
    rc_loopback();
    #[cfg(not(rapax_rdma))]
    println!("skipped rc_loopback_write_read_revoke: rdma-core bindings not built");
}

#[cfg(rapax_rdma)]
fn rc_loopback() {
    use device::*;
    use ibverbs::{AccessFlags, QueuePair, WcOpcode};

    let name = match device() {
        Ok(name) => name,
        Err(why) => {
            println!("skipped rc_loopback_write_read_revoke: {why}");
            return;
        }
    };
    let pair = open(&name);
    let pd = pair.ctx.alloc_pd().expect("ibv_alloc_pd");
    let cq_a = pair.ctx.create_cq(16).expect("ibv_create_cq");
    let cq_b = pair.ctx.create_cq(16).expect("ibv_create_cq");
    const LEN: usize = 4096;
    let src = Buffer::new(LEN);
    let dst = Buffer::new(LEN);
    let rights = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    // SAFETY: the buffers outlive the regions (declared before them) and are read volatile.
    let mr_src = unsafe { pd.register(src.ptr_for_test(), LEN, rights) }.expect("ibv_reg_mr src");
    // SAFETY: as above.
    let mr_dst = unsafe { pd.register(dst.ptr_for_test(), LEN, rights) }.expect("ibv_reg_mr dst");

    let a = QueuePair::create_rc(&pd, &cq_a, &cq_a, caps()).expect("ibv_create_qp a");
    let b = QueuePair::create_rc(&pd, &cq_b, &cq_b, caps()).expect("ibv_create_qp b");
    let (a, mut b) = connect(&pair, a, b, rights);

    // RDMA WRITE from a's source region into b's destination region.
    let pattern: Vec<u8> = (0..256u32).map(|i| (i * 7 + 3) as u8).collect();
    src.write(0, &pattern);
    a.post_write(
        1,
        mr_src.slice(0, 256).unwrap(),
        mr_dst.remote(128).unwrap(),
        flags(),
    )
    .expect("post write");
    check_success(&wait_one(&cq_a), 1, WcOpcode::RdmaWrite);
    assert_eq!(dst.read(128, 256), pattern, "the written bytes landed");

    // Inline write of a small record.
    a.post_write_inline(2, b"inline-record", mr_dst.remote(1024).unwrap(), flags())
        .expect("post inline write");
    check_success(&wait_one(&cq_a), 2, WcOpcode::RdmaWrite);
    assert_eq!(dst.read(1024, 13), b"inline-record");

    // RDMA READ back into another part of the source region.
    a.post_read(
        3,
        mr_src.slice(2048, 256).unwrap(),
        mr_dst.remote(128).unwrap(),
        flags(),
    )
    .expect("post read");
    check_success(&wait_one(&cq_a), 3, WcOpcode::RdmaRead);
    assert_eq!(src.read(2048, 256), pattern, "the read bytes arrived");

    // Revoke: no rights on b's QP; a's next write must fail and not land.
    b.set_access_flags(AccessFlags::NONE)
        .expect("ibv_modify_qp(IBV_QP_ACCESS_FLAGS)");
    src.write(0, &[0xEE; 64]);
    a.post_write(
        4,
        mr_src.slice(0, 64).unwrap(),
        mr_dst.remote(3000).unwrap(),
        flags(),
    )
    .expect("post write");
    let wc = wait_one(&cq_a);
    println!("write after revoke: {wc:?}");
    assert_eq!(wc.wr_id(), 4);
    assert!(
        wc.status().is_remote_permission_error(),
        "expected REM_ACCESS_ERR or REM_INV_REQ_ERR, got {wc:?}"
    );
    assert_eq!(
        dst.read(3000, 64),
        vec![0; 64],
        "a revoked write did not land"
    );

    // The failed write put a in the error state: cycle both through RESET → INIT → RTR → RTS,
    // b granting write again, and write once more.
    let a = a.reset().expect("RESET a");
    let b = b.reset().expect("RESET b");
    let (a, _b) = connect(&pair, a, b, rights);
    a.post_write(
        5,
        mr_src.slice(0, 64).unwrap(),
        mr_dst.remote(3000).unwrap(),
        flags(),
    )
    .expect("post write");
    check_success(&wait_one(&cq_a), 5, WcOpcode::RdmaWrite);
    assert_eq!(
        dst.read(3000, 64),
        vec![0xEE; 64],
        "writes land again after the full cycle"
    );
}

/// rdma_cm: without a device the event channel or the resolution fails with an errno (never a
/// crash); with `RAPAX_RDMA_CM_ADDR` set, a listener and a connector on that address connect
/// queue pairs through librdmacm and an RDMA WRITE lands.
#[test]
fn rdma_cm_connect() {
    #[cfg(rapax_rdma)]
    rdma_cm();
    #[cfg(not(rapax_rdma))]
    println!("skipped rdma_cm_connect: rdma-core bindings not built");
}

#[cfg(rapax_rdma)]
fn rdma_cm() {
    use device::*;
    use ibverbs::{ConnParams, EventChannel, PortSpace, WcOpcode};

    if !ibverbs::available() {
        println!("skipped rdma_cm_connect: rdma-core bindings not built");
        return;
    }
    let Ok(addr) = std::env::var("RAPAX_RDMA_CM_ADDR") else {
        // Only the failure path can be checked: it must be a typed error with an errno.
        match EventChannel::new().and_then(|ch| {
            let mut id = ch.create_id(PortSpace::Tcp)?;
            id.resolve_addr(None, "127.0.0.1:7471".parse().unwrap(), 500)
        }) {
            Ok(()) => println!("rdma_cm resolved 127.0.0.1 (a device is bound to loopback)"),
            Err(e) => {
                println!("rdma_cm without a device: {e}");
                assert!(
                    matches!(
                        e,
                        ibverbs::Error::Errno { .. } | ibverbs::Error::UnexpectedEvent { .. }
                    ),
                    "{e:?}"
                );
            }
        }
        println!(
            "skipped the rdma_cm connection: set RAPAX_RDMA_CM_ADDR to an IP of the RDMA netdev"
        );
        return;
    };
    let ip: std::net::IpAddr = addr.parse().expect("RAPAX_RDMA_CM_ADDR is an IP address");
    let listen_at = std::net::SocketAddr::new(ip, 7471);
    const LEN: usize = 4096;
    let dst = Buffer::new(LEN);
    let src = Buffer::new(LEN);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (listening_tx, listening_rx) = std::sync::mpsc::channel::<()>();

    let dst_addr = dst.ptr_for_test() as usize;
    let server = std::thread::spawn(move || {
        let ch = EventChannel::new().expect("rdma_create_event_channel");
        let mut listener = ch.create_id(PortSpace::Tcp).expect("rdma_create_id");
        listener.bind_addr(listen_at).expect("rdma_bind_addr");
        listener.listen(1).expect("rdma_listen");
        listening_tx.send(()).unwrap();
        // A listener bound to a loopback address is on no device until a request arrives (the
        // kernel's rdma_cm binds loopback ids lazily): take the device from the request's id.
        let mut conn = listener.get_request().expect("connect request");
        let ctx = conn
            .context()
            .expect("a connect request's id is bound to the device it arrived on");
        let pd = ctx.alloc_pd().unwrap();
        let rights = ibverbs::AccessFlags::LOCAL_WRITE | ibverbs::AccessFlags::REMOTE_WRITE;
        // SAFETY: the buffer outlives the server thread (joined before it drops).
        let mr = unsafe { pd.register(dst_addr as *mut u8, LEN, rights) }.unwrap();
        // Sent before accepting: the connector reads it once its connect returns.
        ready_tx.send(mr.remote(0).unwrap()).unwrap();
        let cq = ctx.create_cq(16).unwrap();
        conn.create_qp(&pd, &cq, &cq, caps())
            .expect("rdma_create_qp (passive)");
        conn.accept(&ConnParams::default()).expect("rdma_accept");
        done_rx.recv().unwrap();
        drop(conn);
        drop(mr);
    });
    listening_rx.recv().expect("the listener is up");
    let ch = EventChannel::new().unwrap();
    let mut id = ch.create_id(PortSpace::Tcp).unwrap();
    id.resolve_addr(None, listen_at, 2000)
        .expect("rdma_resolve_addr");
    id.resolve_route(2000).expect("rdma_resolve_route");
    let ctx = id.context().unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    // SAFETY: the buffer outlives the region.
    let mr =
        unsafe { pd.register(src.ptr_for_test(), LEN, ibverbs::AccessFlags::LOCAL_WRITE) }.unwrap();
    id.create_qp(&pd, &cq, &cq, caps())
        .expect("rdma_create_qp (active)");
    id.connect(&ConnParams::default()).expect("rdma_connect");
    let remote = ready_rx.recv().unwrap();
    src.write(0, b"through rdma_cm");
    id.post_write(9, mr.slice(0, 15).unwrap(), remote, flags())
        .unwrap();
    check_success(&wait_one(&cq), 9, WcOpcode::RdmaWrite);
    assert_eq!(dst.read(0, 15), b"through rdma_cm");
    done_tx.send(()).unwrap();
    server.join().unwrap();
}

/// How long the two ways of switching a peer's rights take on this device: `ibv_modify_qp` with
/// `IBV_QP_ACCESS_FLAGS` on an RTS queue pair (the fast revoke and grant), and the full
/// RESET → INIT → RTR → RTS cycle (the fallback). Prints percentiles; checks that the link still
/// carries a write after every switch, and that a revoked one refuses it.
#[test]
fn rights_switch_timings() {
    #[cfg(rapax_rdma)]
    rights_timings();
    #[cfg(not(rapax_rdma))]
    println!("skipped rights_switch_timings: rdma-core bindings not built");
}

#[cfg(rapax_rdma)]
fn rights_timings() {
    use device::*;
    use ibverbs::{AccessFlags, Endpoint, QueuePair, WcOpcode};
    use std::time::Instant;

    let name = match device() {
        Ok(name) => name,
        Err(why) => {
            println!("skipped rights_switch_timings: {why}");
            return;
        }
    };
    let pair = open(&name);
    let pd = pair.ctx.alloc_pd().expect("ibv_alloc_pd");
    let cq_a = pair.ctx.create_cq(16).expect("ibv_create_cq");
    let cq_b = pair.ctx.create_cq(16).expect("ibv_create_cq");
    const LEN: usize = 4096;
    let src = Buffer::new(LEN);
    let dst = Buffer::new(LEN);
    let rights = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    // SAFETY: the buffers outlive the regions (declared before them) and are read volatile.
    let mr_src = unsafe { pd.register(src.ptr_for_test(), LEN, rights) }.expect("ibv_reg_mr");
    // SAFETY: as above.
    let mr_dst = unsafe { pd.register(dst.ptr_for_test(), LEN, rights) }.expect("ibv_reg_mr");
    let a = QueuePair::create_rc(&pd, &cq_a, &cq_a, caps()).expect("ibv_create_qp a");
    let b = QueuePair::create_rc(&pd, &cq_b, &cq_b, caps()).expect("ibv_create_qp b");
    let a_ep = Endpoint {
        qp_num: a.qp_num(),
        psn: 0x100,
        lid: pair.lid,
        gid: pair.gid,
    };
    let (a, mut b) = connect(&pair, a, b, rights);
    let read_only = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ;

    fn summary(what: &str, mut ns: Vec<u64>) {
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
        println!(
            "{what}: n={} min={} ns p50={} ns p99={} ns max={} ns",
            ns.len(),
            ns[0],
            at(0.5),
            at(0.99),
            ns[ns.len() - 1]
        );
    }

    // The fast switch, both ways, on an idle link.
    let (mut revoke_ns, mut grant_ns) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        b.set_access_flags(read_only)
            .expect("revoke by access flags");
        revoke_ns.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        b.set_access_flags(rights).expect("grant by access flags");
        grant_ns.push(t.elapsed().as_nanos() as u64);
    }
    summary("ibv_modify_qp(ACCESS_FLAGS) revoke (RTS)", revoke_ns);
    summary("ibv_modify_qp(ACCESS_FLAGS) grant (RTS)", grant_ns);
    src.write(0, &[0x5A; 64]);
    a.post_write(
        1,
        mr_src.slice(0, 64).unwrap(),
        mr_dst.remote(0).unwrap(),
        flags(),
    )
    .expect("post write");
    check_success(&wait_one(&cq_a), 1, WcOpcode::RdmaWrite);
    assert_eq!(dst.read(0, 64), vec![0x5A; 64], "granted again: lands");

    // The full cycle of b alone. a has sent one write (one packet), so b expects PSN 0x101 next.
    let mut cycle_ns = Vec::new();
    let mut b = Some(b);
    for _ in 0..50 {
        let qp = b.take().unwrap();
        let t = Instant::now();
        let qp = qp.reset().expect("RESET");
        let qp = qp.to_init(1, rights).expect("INIT");
        let qp = qp
            .to_rtr(
                &Endpoint {
                    psn: a_ep.psn + 1,
                    ..a_ep
                },
                &pair.path,
            )
            .expect("RTR");
        let qp = qp.to_rts(0x200, &pair.path).expect("RTS");
        cycle_ns.push(t.elapsed().as_nanos() as u64);
        b = Some(qp);
    }
    summary("RESET->INIT->RTR->RTS cycle", cycle_ns);
    src.write(64, &[0xA5; 64]);
    a.post_write(
        2,
        mr_src.slice(64, 64).unwrap(),
        mr_dst.remote(64).unwrap(),
        flags(),
    )
    .expect("post write");
    check_success(&wait_one(&cq_a), 2, WcOpcode::RdmaWrite);
    assert_eq!(dst.read(64, 64), vec![0xA5; 64], "after the cycles: lands");

    // And a revoke by flags refuses the next write, which lands nothing.
    let mut b = b.unwrap();
    b.set_access_flags(read_only).expect("revoke");
    src.write(128, &[0xC3; 64]);
    a.post_write(
        3,
        mr_src.slice(128, 64).unwrap(),
        mr_dst.remote(128).unwrap(),
        flags(),
    )
    .expect("post write");
    let wc = wait_one(&cq_a);
    assert!(wc.status().is_remote_permission_error(), "{wc:?}");
    assert_eq!(dst.read(128, 64), vec![0; 64], "revoked: nothing landed");
}
