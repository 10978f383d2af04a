//! The rdma-core layer when rdma-core was not bound at build time: the same safe API as a build
//! with rdma-core, so code on top of it needs no `cfg`. The entry points (`devices`,
//! `Context::open`) return [`Error::NotBuilt`] with the build script's reason, and every verbs
//! object is uninhabited: no value of it can exist, so its methods are unreachable.

use std::marker::PhantomData;

use super::common::*;
use super::{DeviceInfo, Error, Result};

/// Why the bindings are absent, as the build script recorded it.
const ABSENT: &str = env!("RAPAX_FFI_RDMA_ABSENT");

/// No value: the verbs objects of this build hold one.
#[derive(Debug, Clone, Copy)]
enum Never {}

/// Lists the RDMA devices: always [`Error::NotBuilt`] in this build.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    Err(Error::NotBuilt(ABSENT))
}

/// An open device context. None can exist in this build.
#[derive(Debug, Clone)]
pub struct Context(Never);

impl Context {
    /// Opens a device by name: always [`Error::NotBuilt`] in this build.
    pub fn open(_name: &str) -> Result<Context> {
        Err(Error::NotBuilt(ABSENT))
    }
    /// Queries a port (unreachable: no context exists in this build).
    pub fn query_port(&self, _port: u8) -> Result<PortInfo> {
        match self.0 {}
    }
    /// Reads a GID table entry (unreachable).
    pub fn query_gid(&self, _port: u8, _index: i32) -> Result<Gid> {
        match self.0 {}
    }
    /// Allocates a protection domain (unreachable).
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        match self.0 {}
    }
    /// Creates a completion queue (unreachable).
    pub fn create_cq(&self, _entries: u32) -> Result<CompletionQueue> {
        match self.0 {}
    }
}

/// A protection domain. None can exist in this build.
#[derive(Clone)]
pub struct ProtectionDomain(Never);

impl ProtectionDomain {
    /// Registers memory (unreachable).
    ///
    /// # Safety
    ///
    /// As in a build with rdma-core: the range stays valid until the region is dropped.
    pub unsafe fn register(
        &self,
        _addr: *mut u8,
        _len: usize,
        _access: AccessFlags,
    ) -> Result<MemoryRegion> {
        match self.0 {}
    }
}

/// A registered memory region. None can exist in this build.
pub struct MemoryRegion(Never);

/// A range of a local memory region. None can exist in this build.
#[derive(Debug, Clone, Copy)]
pub struct LocalSlice<'mr>(Never, PhantomData<&'mr MemoryRegion>);

impl MemoryRegion {
    /// Start of the registered range (unreachable).
    pub fn as_ptr(&self) -> *mut u8 {
        match self.0 {}
    }
    /// Length of the registered range (unreachable).
    pub fn len(&self) -> usize {
        match self.0 {}
    }
    /// Whether the region is empty (unreachable).
    pub fn is_empty(&self) -> bool {
        match self.0 {}
    }
    /// The local key (unreachable).
    pub fn lkey(&self) -> u32 {
        match self.0 {}
    }
    /// The remote key (unreachable).
    pub fn rkey(&self) -> u32 {
        match self.0 {}
    }
    /// The address peers use for byte `offset` (unreachable).
    pub fn remote(&self, _offset: usize) -> Result<RemoteAddr> {
        match self.0 {}
    }
    /// A range of the region (unreachable).
    pub fn slice(&self, _offset: usize, _len: usize) -> Result<LocalSlice<'_>> {
        match self.0 {}
    }
    /// Deregisters the region (unreachable).
    pub fn deregister(self) -> Result<()> {
        match self.0 {}
    }
}

/// A completion queue. None can exist in this build.
#[derive(Clone)]
pub struct CompletionQueue(Never);

impl CompletionQueue {
    /// Polls completions (unreachable).
    pub fn poll(&self, _out: &mut [WorkCompletion]) -> Result<usize> {
        match self.0 {}
    }
}

/// One work completion. Only the default (empty) value exists in this build.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkCompletion {
    _private: (),
}

impl WorkCompletion {
    /// The caller's id of the work request.
    pub fn wr_id(&self) -> u64 {
        0
    }
    /// The status.
    pub fn status(&self) -> WcStatus {
        WcStatus::Other(u32::MAX)
    }
    /// The operation.
    pub fn opcode(&self) -> WcOpcode {
        WcOpcode::Other(u32::MAX)
    }
    /// Bytes transferred.
    pub fn byte_len(&self) -> u32 {
        0
    }
    /// The number of the local queue pair.
    pub fn qp_num(&self) -> u32 {
        0
    }
    /// The provider's error detail.
    pub fn vendor_err(&self) -> u32 {
        0
    }
}

/// An RC queue pair in state `S`. None can exist in this build.
pub struct QueuePair<S>(Never, PhantomData<S>);

impl<S> std::fmt::Debug for QueuePair<S> {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {}
    }
}

impl<S> QueuePair<S> {
    /// The queue pair number (unreachable).
    pub fn qp_num(&self) -> u32 {
        match self.0 {}
    }
    /// Moves the queue pair back to RESET (unreachable).
    pub fn reset(self) -> Result<QueuePair<Reset>> {
        match self.0 {}
    }
}

impl QueuePair<Reset> {
    /// Creates an RC queue pair (unreachable: it takes a protection domain, of which none exists).
    pub fn create_rc(
        pd: &ProtectionDomain,
        _send_cq: &CompletionQueue,
        _recv_cq: &CompletionQueue,
        _caps: QpCaps,
    ) -> Result<QueuePair<Reset>> {
        match pd.0 {}
    }
    /// RESET → INIT (unreachable).
    pub fn to_init(self, _port: u8, _access: AccessFlags) -> Result<QueuePair<Init>> {
        match self.0 {}
    }
}

impl QueuePair<Init> {
    /// INIT → RTR (unreachable).
    pub fn to_rtr(self, _remote: &Endpoint, _path: &PathParams) -> Result<QueuePair<Rtr>> {
        match self.0 {}
    }
}

impl QueuePair<Rtr> {
    /// RTR → RTS (unreachable).
    pub fn to_rts(self, _psn: u32, _path: &PathParams) -> Result<QueuePair<Rts>> {
        match self.0 {}
    }
}

impl QueuePair<Rts> {
    /// Moves the queue pair to the error state (unreachable).
    pub fn flush(&mut self) -> Result<()> {
        match self.0 {}
    }

    /// Changes the rights peers have through this queue pair (unreachable).
    pub fn set_access_flags(&mut self, _access: AccessFlags) -> Result<()> {
        match self.0 {}
    }
    /// Posts an RDMA WRITE (unreachable).
    pub fn post_write(
        &self,
        _wr_id: u64,
        _local: LocalSlice<'_>,
        _remote: RemoteAddr,
        _flags: SendFlags,
    ) -> Result<()> {
        match self.0 {}
    }
    /// Posts an inline RDMA WRITE (unreachable).
    pub fn post_write_inline(
        &self,
        _wr_id: u64,
        _data: &[u8],
        _remote: RemoteAddr,
        _flags: SendFlags,
    ) -> Result<()> {
        match self.0 {}
    }
    /// Posts an RDMA READ (unreachable).
    pub fn post_read(
        &self,
        _wr_id: u64,
        _local: LocalSlice<'_>,
        _remote: RemoteAddr,
        _flags: SendFlags,
    ) -> Result<()> {
        match self.0 {}
    }
}

/// One connection attempt or connection of a [`CmExchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CmToken(u64);

/// What a [`CmExchange`] reports (as in a build with rdma-core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmExchangeEvent {
    Request {
        token: CmToken,
        peer: Option<std::net::IpAddr>,
        data: Vec<u8>,
    },
    Accepted {
        token: CmToken,
        data: Vec<u8>,
    },
    Failed {
        token: CmToken,
        why: String,
    },
    Closed {
        token: CmToken,
    },
}

/// Connection set-up through librdmacm. None can exist in this build.
pub struct CmExchange(Never);

impl CmExchange {
    /// Private data a connect request carries.
    pub const REQUEST_DATA_MAX: usize = 56;
    /// Private data an accept carries.
    pub const ACCEPT_DATA_MAX: usize = 196;

    /// Always [`Error::NotBuilt`] in this build.
    pub fn new(_listen: Option<std::net::SocketAddr>) -> Result<CmExchange> {
        Err(Error::NotBuilt(ABSENT))
    }
    /// Unreachable.
    pub fn connect(
        &mut self,
        _dst: std::net::SocketAddr,
        _qp_num: u32,
        _data: &[u8],
        _timeout_ms: i32,
    ) -> Result<CmToken> {
        match self.0 {}
    }
    /// Unreachable.
    pub fn accept(&mut self, _token: CmToken, _qp_num: u32, _data: &[u8]) -> Result<()> {
        match self.0 {}
    }
    /// Unreachable.
    pub fn reject(&mut self, _token: CmToken) {
        match self.0 {}
    }
    /// Unreachable.
    pub fn close(&mut self, _token: CmToken) {
        match self.0 {}
    }
    /// Unreachable.
    pub fn poll(&mut self, _out: &mut Vec<CmExchangeEvent>) {
        match self.0 {}
    }
}
