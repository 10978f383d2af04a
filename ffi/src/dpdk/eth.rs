//! The safe DPDK layer: EAL, packet mbuf pool, mbufs, bursts and ethdev ports.

use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::os::raw::{c_char, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::sys;
use super::{Error, MacAddr, Result};

/// The calling thread's `rte_errno` (a per-lcore thread-local, read through the shim).
pub fn rte_errno() -> i32 {
    // SAFETY: the shim reads the calling thread's thread-local; no precondition.
    unsafe { sys::rapax_rte_errno() }
}

/// `rte_strerror(errno)`.
pub fn rte_strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a NUL-terminated string (static, or in a per-thread buffer
    // valid until the next call on this thread), copied at once.
    let s = unsafe { sys::rte_strerror(errno) };
    if s.is_null() {
        return format!("error {errno}");
    }
    // SAFETY: non-NULL and NUL-terminated (see above).
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn rte_error(call: &'static str, errno: i32) -> Error {
    Error::Rte {
        call,
        errno,
        message: rte_strerror(errno),
    }
}

/// A DPDK return code: 0 or more is success, a negative value is `-errno`.
fn check(call: &'static str, rc: i32) -> Result<i32> {
    if rc < 0 {
        Err(rte_error(call, -rc))
    } else {
        Ok(rc)
    }
}

static EAL_INITIALISED: AtomicBool = AtomicBool::new(false);

/// The initialised Environment Abstraction Layer; proof, for the rest of the API, that
/// `rte_eal_init` succeeded in this process.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with these arguments (without the program name, which is added).
    /// DPDK allows this once per process: a second call returns
    /// [`Error::AlreadyInitialised`], even after a failed first one.
    pub fn init(args: &[String]) -> Result<Eal> {
        if EAL_INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyInitialised);
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("rapax").expect("no NUL"));
        for arg in args {
            owned.push(
                CString::new(arg.as_str()).map_err(|_| {
                    Error::InvalidArgument(format!("EAL argument {arg:?} has a NUL"))
                })?,
            );
        }
        // rte_eal_init permutes argv and may keep pointers into the strings (it parses lazily
        // in places): give it a leaked, process-long argv. It happens once per process.
        let argv: &'static mut [*mut c_char] = Vec::leak(
            owned
                .into_iter()
                .map(CString::into_raw)
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect(),
        );
        let argc = i32::try_from(argv.len() - 1)
            .map_err(|_| Error::InvalidArgument("too many EAL arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings and a NULL terminator, all leaked
        // so they outlive the EAL; this is the only call in the process (guarded above).
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            return Err(rte_error("rte_eal_init", rte_errno()));
        }
        Ok(Eal { _private: () })
    }

    /// The calling thread's lcore id (`LCORE_ID_ANY` on threads DPDK did not create).
    pub fn lcore_id(&self) -> u32 {
        // SAFETY: reads the calling thread's per-lcore variable; the EAL is initialised.
        unsafe { sys::rte_lcore_id() }
    }

    /// The NUMA socket of the calling thread.
    pub fn socket_id(&self) -> u32 {
        // SAFETY: the EAL is initialised.
        unsafe { sys::rte_socket_id() }
    }

    /// Number of ethdev ports available.
    pub fn port_count(&self) -> u16 {
        // SAFETY: the EAL is initialised.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The port id of a device by its name (`net_ring0`, `0000:3b:00.0`).
    pub fn port_by_name(&self, name: &str) -> Result<u16> {
        let c = CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("port name {name:?} has a NUL")))?;
        let mut id = 0u16;
        // SAFETY: `c` is NUL-terminated and `id` a valid out-pointer, both outlive the call.
        let rc = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        if rc < 0 {
            return Err(Error::NoSuchPort(name.to_string()));
        }
        Ok(id)
    }

    /// Creates the virtual device `name` with driver arguments `args` after start-up
    /// (`rte_eal_hotplug_add` on the `vdev` bus): the same as `--vdev=<name>,<args>` given to
    /// [`Eal::init`], e.g. `("net_memif3", "role=server,id=0,socket=/tmp/s.sock")`. The driver is
    /// chosen by the name's prefix (`net_memif`, `net_af_packet`, `net_af_xdp`). Returns the
    /// port id of the device's ethdev port, which is named `name`.
    ///
    /// Closing a port (dropping its [`Port`]) releases its port id, and DPDK holds at most
    /// `RTE_MAX_ETHPORTS` ports at once: a process that opens and closes ports over and over
    /// makes fresh devices with this call, under fresh names. The closed device stays on the
    /// bus, unused, for the rest of the process.
    pub fn hotplug_vdev(&self, name: &str, args: &str) -> Result<u16> {
        let bus = CString::new("vdev").expect("no NUL");
        let c_name = CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("device name {name:?} has a NUL")))?;
        let c_args = CString::new(args)
            .map_err(|_| Error::InvalidArgument(format!("device arguments {args:?} have a NUL")))?;
        // SAFETY: the EAL is initialised (self exists); the three strings are NUL-terminated and
        // outlive the call, which copies them into the device's own devargs.
        let rc =
            unsafe { sys::rte_eal_hotplug_add(bus.as_ptr(), c_name.as_ptr(), c_args.as_ptr()) };
        check("rte_eal_hotplug_add", rc)?;
        self.port_by_name(name)
    }

    /// Makes two ethdev ports joined back to back by two single-producer single-consumer rings
    /// (`rte_ring_create` and `rte_eth_from_rings`): what port `a` transmits on queue 0, port `b`
    /// receives on queue 0, and the other way round. The ports are named `a` and `b` (at most 24
    /// bytes each) and have one rx and one tx queue; configure and start them with
    /// [`Port::configure`]. Each ring has one producer and one consumer, so each port must be
    /// driven by one thread at a time (as every [`Port`] is). The rings hold `ring_slots`
    /// (a power of two) mbufs and live as long as the process: DPDK has no call that
    /// destroys a ring port's rings with it.
    pub fn ring_port_pair(&self, a: &str, b: &str, ring_slots: u32) -> Result<(u16, u16)> {
        self.ring_port_pair_queues(a, b, ring_slots, 1)
    }

    /// [`Eal::ring_port_pair`] with `queues` (1..=16) rx and tx queues per port: what `a`
    /// transmits on queue k, `b` receives on queue k (a ring pair per queue).
    pub fn ring_port_pair_queues(
        &self,
        a: &str,
        b: &str,
        ring_slots: u32,
        queues: u16,
    ) -> Result<(u16, u16)> {
        if !ring_slots.is_power_of_two() || ring_slots < 2 {
            return Err(Error::InvalidArgument(format!(
                "ring of {ring_slots} slots (a power of two, at least 2)"
            )));
        }
        if !(1..=16).contains(&queues) {
            return Err(Error::InvalidArgument(format!(
                "{queues} queues per ring port (1 to 16)"
            )));
        }
        for name in [a, b] {
            if name.is_empty() || name.len() > 24 {
                return Err(Error::InvalidArgument(format!(
                    "ring port name {name:?} (1 to 24 bytes)"
                )));
            }
        }
        let ring = |name: String| -> Result<NonNull<sys::rte_ring>> {
            let c = CString::new(name.as_str())
                .map_err(|_| Error::InvalidArgument(format!("ring name {name:?} has a NUL")))?;
            let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
            // SAFETY: the EAL is initialised (self exists); the name outlives the call, which
            // copies it; any socket is allowed (SOCKET_ID_ANY).
            let r = unsafe { sys::rte_ring_create(c.as_ptr(), ring_slots, -1, flags) };
            NonNull::new(r).ok_or_else(|| rte_error("rte_ring_create", rte_errno()))
        };
        // a -> b and b -> a, one ring each per queue; ring names are short (RTE_RING_NAMESIZE
        // is 32 with a prefix).
        let mut ab = Vec::with_capacity(usize::from(queues));
        let mut ba = Vec::with_capacity(usize::from(queues));
        for q in 0..queues {
            ab.push(ring(format!("{a}>{q}"))?.as_ptr());
            ba.push(ring(format!("{b}>{q}"))?.as_ptr());
        }
        let port = |name: &str, rx: &[*mut sys::rte_ring], tx: &[*mut sys::rte_ring]| {
            let c = CString::new(name)
                .map_err(|_| Error::InvalidArgument(format!("port name {name:?} has a NUL")))?;
            let mut rxs = rx.to_vec();
            let mut txs = tx.to_vec();
            let n = u32::from(queues);
            // SAFETY: the EAL is initialised; the name outlives the call (copied); the arrays
            // hold `queues` live rings each and are read during the call only; the rings live
            // for the rest of the process (never freed), as long as the port can use them.
            let rc = unsafe {
                sys::rte_eth_from_rings(c.as_ptr(), rxs.as_mut_ptr(), n, txs.as_mut_ptr(), n, 0)
            };
            if rc < 0 {
                return Err(rte_error("rte_eth_from_rings", rte_errno()));
            }
            u16::try_from(rc).map_err(|_| Error::InvalidArgument(format!("port id {rc}")))
        };
        let pa = port(a, &ba, &ab)?;
        let pb = port(b, &ab, &ba)?;
        Ok((pa, pb))
    }

    /// Releases the EAL's resources (`rte_eal_cleanup`). The EAL cannot be initialised again in
    /// this process.
    ///
    /// # Safety
    ///
    /// No port, pool or mbuf may be in use, and no DPDK function may be called afterwards.
    pub unsafe fn cleanup(self) -> Result<()> {
        // SAFETY: the caller guarantees nothing of DPDK is used any more.
        check("rte_eal_cleanup", unsafe { sys::rte_eal_cleanup() }).map(|_| ())
    }
}

/// A pool of packet mbufs (`rte_pktmbuf_pool_create`), freed on drop. Ports and mbufs borrow it,
/// so it outlives every buffer and queue that refers to it.
#[derive(Debug)]
pub struct PktMbufPool {
    mp: NonNull<sys::rte_mempool>,
}

// SAFETY: the default mempool ops (ring_mp_mc) are multi-producer/multi-consumer, and per-lcore
// caches are per thread; the pool pointer itself is immutable.
unsafe impl Send for PktMbufPool {}
// SAFETY: as above: alloc and free are thread-safe on a ring_mp_mc pool.
unsafe impl Sync for PktMbufPool {}

impl PktMbufPool {
    /// Creates a pool of `count` mbufs with `data_room_bytes` of buffer each (including the
    /// headroom; `RTE_MBUF_DEFAULT_BUF_SIZE` holds a standard frame), a per-lcore cache of
    /// `cache_size`, on NUMA socket `socket_id` (`SOCKET_ID_ANY` = -1 for any).
    pub fn create(
        _eal: &Eal,
        name: &str,
        count: u32,
        cache_size: u32,
        data_room_bytes: u16,
        socket_id: i32,
    ) -> Result<PktMbufPool> {
        let c = CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("pool name {name:?} has a NUL")))?;
        // SAFETY: the EAL is initialised (an `&Eal` exists); `c` outlives the call, which copies
        // the name.
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(
                c.as_ptr(),
                count,
                cache_size,
                0,
                data_room_bytes,
                socket_id,
            )
        };
        let mp =
            NonNull::new(mp).ok_or_else(|| rte_error("rte_pktmbuf_pool_create", rte_errno()))?;
        Ok(PktMbufPool { mp })
    }

    /// Allocates an empty mbuf; `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf<'_>> {
        // SAFETY: the pool is live; the returned mbuf is owned by the Mbuf, freed on its drop.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.mp.as_ptr()) };
        NonNull::new(m).map(|m| Mbuf {
            m,
            _pool: PhantomData,
        })
    }

    /// Mbufs free in the pool (including per-lcore caches).
    pub fn avail_count(&self) -> u32 {
        // SAFETY: the pool is live.
        unsafe { sys::rte_mempool_avail_count(self.mp.as_ptr()) }
    }

    /// Mbufs allocated from the pool and not yet freed.
    pub fn in_use_count(&self) -> u32 {
        // SAFETY: the pool is live.
        unsafe { sys::rte_mempool_in_use_count(self.mp.as_ptr()) }
    }
}

impl Drop for PktMbufPool {
    fn drop(&mut self) {
        // SAFETY: every Mbuf and Port borrows the pool, so none is left; the pool came from
        // rte_pktmbuf_pool_create and is freed only here.
        unsafe { sys::rte_mempool_free(self.mp.as_ptr()) };
    }
}

/// One packet mbuf from a [`PktMbufPool`], freed (`rte_pktmbuf_free`) on drop.
///
/// `repr(transparent)` over a non-null pointer: an `Option<Mbuf>` has the layout of
/// `struct rte_mbuf *`, so a [`Burst`] is an array DPDK fills in place.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf<'pool> {
    m: NonNull<sys::rte_mbuf>,
    _pool: PhantomData<&'pool PktMbufPool>,
}

// SAFETY: an mbuf is owned by exactly one Mbuf; freeing it from any thread is safe on a
// ring_mp_mc pool (threads without an lcore bypass the per-lcore cache).
unsafe impl Send for Mbuf<'_> {}

impl Mbuf<'_> {
    /// Bytes of data in the first segment (`rte_pktmbuf_data_len`).
    pub fn data_len(&self) -> u16 {
        // SAFETY: the mbuf is live and owned by self.
        unsafe { self.m.as_ref().data_len }
    }

    /// Bytes of data in the whole packet (`rte_pktmbuf_pkt_len`).
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: as above.
        unsafe { self.m.as_ref().pkt_len }
    }

    /// Bytes free at the end of the last segment.
    pub fn tailroom(&self) -> u16 {
        // SAFETY: as above.
        unsafe { sys::rte_pktmbuf_tailroom(self.m.as_ptr()) }
    }

    /// The data of the first segment (`rte_pktmbuf_mtod`, `data_len` bytes).
    pub fn data(&self) -> &[u8] {
        // SAFETY: the mbuf is live and owned by self; mtod points at `data_len` initialised
        // bytes of its buffer (written by append or by the driver), borrowed with self.
        unsafe {
            std::slice::from_raw_parts(
                sys::rapax_rte_pktmbuf_mtod(self.m.as_ptr()).cast::<u8>(),
                usize::from(self.data_len()),
            )
        }
    }

    /// The data of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for data(); `&mut self` makes the borrow exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                sys::rapax_rte_pktmbuf_mtod(self.m.as_ptr()).cast::<u8>(),
                usize::from(self.data_len()),
            )
        }
    }

    /// Appends `bytes` at the end of the packet (`rte_pktmbuf_append` and a copy).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<()> {
        let tailroom = self.tailroom();
        let len = u16::try_from(bytes.len())
            .ok()
            .filter(|&l| l <= tailroom)
            .ok_or(Error::NoTailroom {
                tailroom,
                wanted: bytes.len(),
            })?;
        // SAFETY: the mbuf is live and owned by self; there is `len` bytes of tailroom (checked),
        // so append returns a pointer to `len` writable bytes, which the copy fills.
        unsafe {
            let dst = sys::rte_pktmbuf_append(self.m.as_ptr(), len);
            let dst = NonNull::new(dst).ok_or(Error::NoTailroom {
                tailroom,
                wanted: bytes.len(),
            })?;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_ptr().cast::<u8>(), bytes.len());
        }
        Ok(())
    }

    /// The raw mbuf, for the `sys` API. Ownership stays with self.
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.m.as_ptr()
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: the mbuf is owned by self (never handed to a driver while an Mbuf holds it).
        unsafe { sys::rte_pktmbuf_free(self.m.as_ptr()) };
    }
}

/// A fixed array of up to `N` mbufs, filled by [`Port::rx_burst`] and drained by
/// [`Port::tx_burst`] in place; no allocation. Mbufs left in it are freed on drop.
pub struct Burst<'pool, const N: usize> {
    /// `slots[..len]` are `Some`, the rest `None`.
    slots: [Option<Mbuf<'pool>>; N],
    len: usize,
}

impl<const N: usize> Default for Burst<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'pool, const N: usize> Burst<'pool, N> {
    /// An empty burst.
    pub fn new() -> Self {
        const {
            assert!(
                N > 0 && N <= u16::MAX as usize,
                "a burst holds 1..=65535 mbufs"
            )
        };
        Burst {
            slots: [const { None }; N],
            len: 0,
        }
    }

    /// Mbufs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no mbuf.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it holds `N` mbufs.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Adds an mbuf at the end, or gives it back when full.
    pub fn push(&mut self, m: Mbuf<'pool>) -> std::result::Result<(), Mbuf<'pool>> {
        if self.len == N {
            return Err(m);
        }
        self.slots[self.len] = Some(m);
        self.len += 1;
        Ok(())
    }

    /// Takes the last mbuf.
    pub fn pop(&mut self) -> Option<Mbuf<'pool>> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.slots[self.len].take()
    }

    /// The mbufs held, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Mbuf<'pool>> {
        self.slots[..self.len]
            .iter()
            .map(|m| m.as_ref().expect("slots below len are full"))
    }

    /// Frees every mbuf held.
    pub fn clear(&mut self) {
        for slot in &mut self.slots[..self.len] {
            *slot = None;
        }
        self.len = 0;
    }

    fn raw_slots(&mut self) -> *mut *mut sys::rte_mbuf {
        // `Option<Mbuf>` is a nullable `*mut rte_mbuf` (see Mbuf).
        self.slots.as_mut_ptr().cast()
    }
}

/// Sizes of a port's queues.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// Receive queues.
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per receive queue (adjusted to the device's limits).
    pub rx_desc: u16,
    /// Descriptors per transmit queue (adjusted to the device's limits).
    pub tx_desc: u16,
    /// Accept frames for any destination MAC.
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            promiscuous: false,
        }
    }
}

/// A configured ethdev port whose receive queues fill mbufs from a pool it borrows. Stopped and
/// closed on drop.
///
/// Not `Sync`: one queue may not be polled from two threads at once, so the port is used from
/// one thread at a time (it may move to the polling thread).
pub struct Port<'pool> {
    id: u16,
    rx_queues: u16,
    tx_queues: u16,
    started: bool,
    /// A restart handed to the EAL's interrupt thread and not yet taken in by
    /// [`Port::settle`].
    restart: Option<Box<Restart>>,
    _pool: PhantomData<&'pool PktMbufPool>,
    _not_sync: PhantomData<*const ()>,
}

/// A stop and start of a port run by the EAL's interrupt thread
/// ([`Port::restart_on_interrupt_thread`]).
struct Restart {
    port: u16,
    /// Whether the port was started (so the alarm stops it first).
    stop: bool,
    /// [`RESTART_PENDING`] until the alarm has run, then `rte_eth_dev_start`'s return code.
    rc: AtomicI32,
}

/// [`Restart::rc`] before the alarm has run.
const RESTART_PENDING: i32 = i32::MIN;

/// The alarm callback of [`Port::restart_on_interrupt_thread`], run by the EAL's interrupt
/// thread.
unsafe extern "C" fn run_restart(arg: *mut c_void) {
    // SAFETY: `arg` is the `Restart` that the port keeps boxed until it has seen `rc` set or
    // has cancelled the alarm (which waits for a running callback), so it is alive here; the
    // port's own thread does not use the port meanwhile (it counts as stopped).
    let r = unsafe { &*(arg as *const Restart) };
    if r.stop {
        // SAFETY: the port is started (`stop`) and no other thread uses it.
        unsafe { sys::rte_eth_dev_stop(r.port) };
    }
    // SAFETY: the port is configured with its queues set up, stopped, and used by no other
    // thread.
    let rc = unsafe { sys::rte_eth_dev_start(r.port) };
    r.rc.store(rc, Ordering::Release);
}

// SAFETY: DPDK ports may be driven from any thread (EAL-created or not) as long as one queue is
// not used by two threads at once, which `!Sync` guarantees.
unsafe impl Send for Port<'_> {}

impl<'pool> Port<'pool> {
    /// Configures port `id` with `config.rx_queues` receive queues (filled from `pool`) and
    /// `config.tx_queues` transmit queues. Start it with [`Port::start`].
    pub fn configure(
        _eal: &Eal,
        id: u16,
        config: &PortConfig,
        pool: &'pool PktMbufPool,
    ) -> Result<Port<'pool>> {
        // SAFETY: the EAL is initialised; the call only checks the id.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(Error::InvalidArgument(format!("no port {id}")));
        }
        // SAFETY: rte_eth_dev_info is plain data (integers, pointers, arrays) for which all
        // zeroes is valid; the call fills it.
        let mut info: sys::rte_eth_dev_info = unsafe { std::mem::zeroed() };
        // SAFETY: valid port and out-pointer.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(id, &mut info)
        })?;
        if config.rx_queues == 0
            || config.rx_queues > info.max_rx_queues
            || config.tx_queues == 0
            || config.tx_queues > info.max_tx_queues
        {
            return Err(Error::InvalidArgument(format!(
                "port {id} takes 1..={} rx and 1..={} tx queues, asked {} and {}",
                info.max_rx_queues, info.max_tx_queues, config.rx_queues, config.tx_queues
            )));
        }
        // SAFETY: as for info: all-zero rte_eth_conf is DPDK's documented default configuration
        // (no offloads, no multi-queue mode).
        let conf: sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        // SAFETY: valid port; `conf` outlives the call, which copies it.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, &conf)
        })?;
        let (mut rx_desc, mut tx_desc) = (config.rx_desc, config.tx_desc);
        // SAFETY: valid, configured port; valid out-pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        // SOCKET_ID_ANY (-1) is passed on as DPDK's applications do, as an unsigned int.
        let socket = socket as u32;
        let port = Port {
            id,
            rx_queues: config.rx_queues,
            tx_queues: config.tx_queues,
            started: false,
            restart: None,
            _pool: PhantomData,
            _not_sync: PhantomData,
        };
        for q in 0..config.rx_queues {
            // SAFETY: valid, configured port and queue id; NULL rx_conf takes the device's
            // default; the pool outlives the port (the port borrows it for 'pool).
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(
                    id,
                    q,
                    rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.mp.as_ptr(),
                )
            };
            check("rte_eth_rx_queue_setup", rc)?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: valid, configured port and queue id; NULL tx_conf takes the default.
            let rc =
                unsafe { sys::rte_eth_tx_queue_setup(id, q, tx_desc, socket, std::ptr::null()) };
            check("rte_eth_tx_queue_setup", rc)?;
        }
        if config.promiscuous {
            // SAFETY: valid, configured port.
            check("rte_eth_promiscuous_enable", unsafe {
                sys::rte_eth_promiscuous_enable(id)
            })?;
        }
        Ok(port)
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Starts the port (`rte_eth_dev_start`).
    pub fn start(&mut self) -> Result<()> {
        // SAFETY: the port is configured with all its queues set up.
        check("rte_eth_dev_start", unsafe {
            sys::rte_eth_dev_start(self.id)
        })?;
        self.started = true;
        Ok(())
    }

    /// Stops the port (`rte_eth_dev_stop`); it may be started again.
    pub fn stop(&mut self) -> Result<()> {
        if self.started {
            // SAFETY: the port is started.
            check("rte_eth_dev_stop", unsafe {
                sys::rte_eth_dev_stop(self.id)
            })?;
            self.started = false;
        }
        Ok(())
    }

    /// Whether the port is started (by [`Port::start`], not stopped since).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Stops the port (if started) and starts it again on the EAL's interrupt thread, by an
    /// alarm (`rte_eal_alarm_set`), and returns at once. Until [`Port::settle`] takes in the
    /// outcome, the port counts as stopped and must not be polled.
    ///
    /// Drivers such as memif run their control channel on that thread; a stop from another
    /// thread while one of its callbacks runs frees the channel under it (DPDK 22.11's memif
    /// then dereferences a NULL channel and the process dies). On the interrupt thread the two
    /// cannot overlap. Does nothing if a restart is already pending.
    pub fn restart_on_interrupt_thread(&mut self) -> Result<()> {
        if self.restart.is_some() {
            return Ok(());
        }
        let restart = Box::new(Restart {
            port: self.id,
            stop: self.started,
            rc: AtomicI32::new(RESTART_PENDING),
        });
        let arg = &*restart as *const Restart as *mut c_void;
        // SAFETY: the callback matches the alarm's signature; `arg` points into the box, which
        // stays put and alive until the outcome is taken in or the alarm cancelled (Drop).
        check("rte_eal_alarm_set", unsafe {
            sys::rte_eal_alarm_set(1, Some(run_restart), arg)
        })?;
        self.started = false;
        self.restart = Some(restart);
        Ok(())
    }

    /// Takes in the outcome of a pending [`Port::restart_on_interrupt_thread`] once it has
    /// run: `None` while it is pending or if there is none, else whether the port started.
    pub fn settle(&mut self) -> Option<Result<()>> {
        let rc = self.restart.as_ref()?.rc.load(Ordering::Acquire);
        if rc == RESTART_PENDING {
            return None;
        }
        self.restart = None;
        self.started = rc >= 0;
        Some(check("rte_eth_dev_start", rc).map(drop))
    }

    /// Whether a restart on the interrupt thread is pending.
    pub fn restart_pending(&self) -> bool {
        self.restart.is_some()
    }

    /// Whether the port's link is up now (`rte_eth_link_get_nowait`): for a memif port, whether
    /// its peer is connected.
    pub fn link_up(&self) -> Result<bool> {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: `link` is a valid, writable rte_eth_link; the call only fills it in.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.id, &mut link)
        })?;
        Ok(link.link_status() != 0)
    }

    /// The port's MAC address (`rte_eth_macaddr_get`).
    pub fn mac_addr(&self) -> Result<MacAddr> {
        let mut addr = sys::rte_ether_addr::default();
        // SAFETY: valid port and out-pointer.
        check("rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(self.id, &mut addr)
        })?;
        Ok(MacAddr(addr.addr_bytes))
    }

    /// Receives up to the burst's free room from receive queue `queue` into the end of `burst`;
    /// returns how many arrived. Never blocks, never allocates.
    pub fn rx_burst<const N: usize>(&self, queue: u16, burst: &mut Burst<'pool, N>) -> usize {
        assert!(
            queue < self.rx_queues,
            "rx queue {queue} of {}",
            self.rx_queues
        );
        assert!(self.started, "rx_burst on a stopped port");
        let room = (N - burst.len) as u16;
        if room == 0 {
            return 0;
        }
        // SAFETY: the port is started and the queue set up; slots[len..] are None (null) and
        // room for `room` pointers, which the driver fills with mbufs it hands over; each
        // becomes a Some(Mbuf) owning it, with the pool's lifetime (the queue's pool).
        let n = unsafe {
            sys::rte_eth_rx_burst(self.id, queue, burst.raw_slots().add(burst.len), room)
        };
        burst.len += usize::from(n);
        usize::from(n)
    }

    /// Transmits the burst's mbufs on transmit queue `queue`; the ones sent leave the burst
    /// (the driver frees them once on the wire), the rest move to its front for a retry.
    /// Returns how many were sent.
    pub fn tx_burst<const N: usize>(&self, queue: u16, burst: &mut Burst<'pool, N>) -> usize {
        assert!(
            queue < self.tx_queues,
            "tx queue {queue} of {}",
            self.tx_queues
        );
        assert!(self.started, "tx_burst on a stopped port");
        if burst.len == 0 {
            return 0;
        }
        // SAFETY: the port is started and the queue set up; slots[..len] are valid mbufs we own.
        // The driver takes ownership of the first `sent`, so their slots are cleared below
        // without running Mbuf's drop.
        let sent = usize::from(unsafe {
            sys::rte_eth_tx_burst(self.id, queue, burst.raw_slots(), burst.len as u16)
        });
        for slot in &mut burst.slots[..sent] {
            std::mem::forget(slot.take());
        }
        burst.slots[..burst.len].rotate_left(sent);
        burst.len -= sent;
        sent
    }
}

/// How long a dropped port waits between its stop and its close.
const CLOSE_AFTER_STOP: std::time::Duration = std::time::Duration::from_millis(5);

impl Drop for Port<'_> {
    fn drop(&mut self) {
        if let Some(restart) = self.restart.take() {
            let arg = &*restart as *const Restart as *mut c_void;
            // SAFETY: same callback and argument as set; the cancel waits for a callback that
            // is running on the interrupt thread, so the box outlives every use of it.
            unsafe { sys::rte_eal_alarm_cancel(Some(run_restart), arg) };
            let rc = restart.rc.load(Ordering::Acquire);
            self.started = if rc == RESTART_PENDING {
                restart.stop
            } else {
                rc >= 0
            };
        }
        if self.started {
            // SAFETY: the port is started; stopping returns the queues' mbufs to the pool,
            // which is still alive (the port borrows it).
            unsafe { sys::rte_eth_dev_stop(self.id) };
            // A stop may leave work to the EAL's interrupt thread (memif unregisters its
            // control channel's callback there and frees the channel afterwards); closing
            // before that has run made it free memory the close had already released ("EAL:
            // Error: Invalid memory", and now and then a crash). Give it a moment.
            std::thread::sleep(CLOSE_AFTER_STOP);
        }
        // SAFETY: the port is stopped; closing releases its queues before the pool can go.
        unsafe { sys::rte_eth_dev_close(self.id) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_mbuf_is_an_mbuf_pointer() {
        // Burst hands its slots to rx/tx burst as `struct rte_mbuf **`.
        assert_eq!(
            std::mem::size_of::<Option<Mbuf<'_>>>(),
            std::mem::size_of::<*mut sys::rte_mbuf>()
        );
    }

    #[test]
    fn an_empty_burst_sends_and_pops_nothing() {
        let mut burst: Burst<'_, 8> = Burst::new();
        assert!(burst.is_empty() && !burst.is_full());
        assert!(burst.pop().is_none());
        assert_eq!(burst.iter().count(), 0);
    }

    #[test]
    fn errors_name_the_call_and_the_errno() {
        let err = check("rte_eth_dev_start", -22).unwrap_err();
        assert!(matches!(
            err,
            Error::Rte {
                call: "rte_eth_dev_start",
                errno: 22,
                ..
            }
        ));
        assert_eq!(check("rte_eth_dev_start", 3).unwrap(), 3);
        assert_eq!(
            MacAddr([0x02, 0, 0, 0xab, 0xcd, 0xef]).to_string(),
            "02:00:00:ab:cd:ef"
        );
    }
}
