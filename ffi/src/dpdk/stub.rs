//! The DPDK layer when DPDK was not bound at build time: the same safe API as the real one, but
//! [`Eal::init`] returns [`Error::NotBuilt`] with the build script's reason, and since no
//! [`Eal`] can exist, nothing else can be constructed either (every other constructor takes an
//! `&Eal`, or an object made from one). Code that drives DPDK therefore compiles unchanged in
//! both builds and fails at run time, with the reason, in this one.

use std::convert::Infallible;
use std::marker::PhantomData;

use super::{Error, MacAddr, Result};

/// Why the bindings are absent, as the build script recorded it.
pub(crate) const ABSENT: &str = env!("RAPAX_FFI_DPDK_ABSENT");

/// The initialised EAL. None can exist in this build.
#[derive(Debug)]
pub enum Eal {}

impl Eal {
    /// Initialises the EAL: always [`Error::NotBuilt`] in this build.
    pub fn init(_args: &[String]) -> Result<Eal> {
        Err(Error::NotBuilt(ABSENT))
    }

    /// The calling thread's lcore id.
    pub fn lcore_id(&self) -> u32 {
        match *self {}
    }

    /// The NUMA socket of the calling thread.
    pub fn socket_id(&self) -> u32 {
        match *self {}
    }

    /// Number of ethdev ports available.
    pub fn port_count(&self) -> u16 {
        match *self {}
    }

    /// The port id of a device by its name.
    pub fn port_by_name(&self, _name: &str) -> Result<u16> {
        match *self {}
    }

    /// Creates a virtual device after start-up and returns its port id.
    pub fn hotplug_vdev(&self, _name: &str, _args: &str) -> Result<u16> {
        match *self {}
    }

    /// Two ethdev ports joined back to back by rings.
    pub fn ring_port_pair(&self, _a: &str, _b: &str, _ring_slots: u32) -> Result<(u16, u16)> {
        match *self {}
    }

    /// Two ethdev ports joined back to back by rings, `queues` rx and tx queues each.
    pub fn ring_port_pair_queues(
        &self,
        _a: &str,
        _b: &str,
        _ring_slots: u32,
        _queues: u16,
    ) -> Result<(u16, u16)> {
        match *self {}
    }

    /// Releases the EAL's resources.
    ///
    /// # Safety
    ///
    /// No port, pool or mbuf may be in use, and no DPDK function may be called afterwards.
    pub unsafe fn cleanup(self) -> Result<()> {
        match self {}
    }
}

/// The calling thread's `rte_errno`: always 0 in this build.
pub fn rte_errno() -> i32 {
    0
}

/// `rte_strerror(errno)`: the OS text of the error in this build.
pub fn rte_strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// A pool of packet mbufs. None can exist in this build.
#[derive(Debug)]
pub enum PktMbufPool {}

impl PktMbufPool {
    /// Creates a pool: unreachable without an [`Eal`].
    pub fn create(
        eal: &Eal,
        _name: &str,
        _count: u32,
        _cache_size: u32,
        _data_room_bytes: u16,
        _socket_id: i32,
    ) -> Result<PktMbufPool> {
        match *eal {}
    }

    /// Allocates an empty mbuf.
    pub fn alloc(&self) -> Option<Mbuf<'_>> {
        match *self {}
    }

    /// Mbufs free in the pool.
    pub fn avail_count(&self) -> u32 {
        match *self {}
    }

    /// Mbufs allocated from the pool and not yet freed.
    pub fn in_use_count(&self) -> u32 {
        match *self {}
    }
}

/// One packet mbuf. None can exist in this build.
#[derive(Debug)]
pub struct Mbuf<'pool> {
    never: Infallible,
    _pool: PhantomData<&'pool PktMbufPool>,
}

impl Mbuf<'_> {
    /// Bytes of data in the first segment.
    pub fn data_len(&self) -> u16 {
        match self.never {}
    }

    /// Bytes of data in the whole packet.
    pub fn pkt_len(&self) -> u32 {
        match self.never {}
    }

    /// Bytes free at the end of the last segment.
    pub fn tailroom(&self) -> u16 {
        match self.never {}
    }

    /// The data of the first segment.
    pub fn data(&self) -> &[u8] {
        match self.never {}
    }

    /// The data of the first segment, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        match self.never {}
    }

    /// Appends `bytes` at the end of the packet.
    pub fn extend_from_slice(&mut self, _bytes: &[u8]) -> Result<()> {
        match self.never {}
    }
}

/// A fixed array of up to `N` mbufs. Always empty in this build.
pub struct Burst<'pool, const N: usize> {
    _pool: PhantomData<&'pool PktMbufPool>,
}

impl<const N: usize> Default for Burst<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'pool, const N: usize> Burst<'pool, N> {
    /// An empty burst.
    pub fn new() -> Self {
        Burst { _pool: PhantomData }
    }

    /// Mbufs held.
    pub fn len(&self) -> usize {
        0
    }

    /// Whether it holds no mbuf.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Whether it holds `N` mbufs.
    pub fn is_full(&self) -> bool {
        false
    }

    /// Adds an mbuf at the end.
    pub fn push(&mut self, m: Mbuf<'pool>) -> std::result::Result<(), Mbuf<'pool>> {
        match m.never {}
    }

    /// Takes the last mbuf.
    pub fn pop(&mut self) -> Option<Mbuf<'pool>> {
        None
    }

    /// The mbufs held, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Mbuf<'pool>> {
        std::iter::empty()
    }

    /// Frees every mbuf held.
    pub fn clear(&mut self) {}
}

/// Sizes of a port's queues.
#[derive(Debug, Clone, Copy)]
pub struct PortConfig {
    /// Receive queues.
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per receive queue.
    pub rx_desc: u16,
    /// Descriptors per transmit queue.
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

/// A configured ethdev port. None can exist in this build.
pub struct Port<'pool> {
    never: Infallible,
    _pool: PhantomData<&'pool PktMbufPool>,
}

impl<'pool> Port<'pool> {
    /// Configures a port: unreachable without an [`Eal`].
    pub fn configure(
        eal: &Eal,
        _id: u16,
        _config: &PortConfig,
        _pool: &'pool PktMbufPool,
    ) -> Result<Port<'pool>> {
        match *eal {}
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        match self.never {}
    }

    /// Starts the port.
    pub fn start(&mut self) -> Result<()> {
        match self.never {}
    }

    /// Stops the port.
    pub fn stop(&mut self) -> Result<()> {
        match self.never {}
    }

    /// Whether the port is started.
    pub fn is_started(&self) -> bool {
        match self.never {}
    }

    /// Stops and starts the port on the EAL's interrupt thread.
    pub fn restart_on_interrupt_thread(&mut self) -> Result<()> {
        match self.never {}
    }

    /// Takes in a pending restart's outcome.
    pub fn settle(&mut self) -> Option<Result<()>> {
        match self.never {}
    }

    /// Whether a restart is pending.
    pub fn restart_pending(&self) -> bool {
        match self.never {}
    }

    /// Whether the port's link is up.
    pub fn link_up(&self) -> Result<bool> {
        match self.never {}
    }

    /// The port's MAC address.
    pub fn mac_addr(&self) -> Result<MacAddr> {
        match self.never {}
    }

    /// Receives into the end of `burst`.
    pub fn rx_burst<const N: usize>(&self, _queue: u16, _burst: &mut Burst<'pool, N>) -> usize {
        match self.never {}
    }

    /// Transmits the burst's mbufs.
    pub fn tx_burst<const N: usize>(&self, _queue: u16, _burst: &mut Burst<'pool, N>) -> usize {
        match self.never {}
    }
}
