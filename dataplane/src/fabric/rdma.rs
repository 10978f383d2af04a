//! The `rdma` fabric: RC queue pairs from rdma-core, real RDMA WRITE and READ, rights as queue-pair
//! access flags.
//!
//! ## Memory
//!
//! Each node's control block and log are page-aligned buffers of its own, registered with the
//! device:
//!
//! - the **log** twice per peer, each time in a protection domain of its own that holds only that
//!   peer's data connections: once with remote read only, once with remote write (the peer's
//!   *write region*). Whether a peer may write is decided per queue pair (below); the write
//!   region is the fence that makes taking that right away complete (see "Revocation");
//! - the **control block** once per peer, each time in a protection domain of its own that holds
//!   only that peer's control connection: the whole block with remote *read* only, and that
//!   peer's request word and ack word (8 bytes each) as two more regions with remote *write*.
//!   RDMA checks a region's bounds byte for byte, and a queue pair can use only the regions of
//!   its protection domain, so the HCA itself enforces "members may write only their own request
//!   and ack words" (a write anywhere else uses the read-only region's key and is refused with a
//!   remote access error). Nothing of the control block is in the protection domain of the data
//!   connections, so a log writer cannot touch it either.
//!
//! A node registers nothing for itself (it reads and writes its own memory directly): a post to
//! its own memory fails as unreachable.
//!
//! ## Connections
//!
//! A connection is one RC queue pair at the poster (the initiator) and one at the owner (the
//! responder), keyed by (poster, owner, lane):
//!
//! - the **control lane**, one per ordered pair of nodes: control-block reads and writes. Its
//!   responder always allows remote read and write (the regions above narrow that). It never
//!   sticks in error: after a failed operation the next control operation drains it and
//!   reconnects it.
//! - a **data lane per ballot**: log writes and reads posted under that ballot. Write
//!   permission is given to a (peer, ballot) pair the way the contract models it: the owner's
//!   responder queue pair of the granted connection has `IBV_ACCESS_REMOTE_WRITE`, every other
//!   data responder has remote read only. `grant` and `revoke` switch it with `ibv_modify_qp`
//!   (`IBV_QP_ACCESS_FLAGS`) on the RTS queue pair, and fall back to the RESET → INIT → RTR → RTS
//!   cycle of the responder when the device refuses that: RESET at once, INIT → RTR → RTS with
//!   the new rights when the poster reconnects (so both sides start from fresh PSNs). A connection whose operation failed is
//!   in error (as an RC queue pair is) until a post with `reconnect` set, which drains it, resets
//!   both queue pairs and connects them again, with the owner's current rights.
//!
//! Initiator queue pairs grant no remote rights at all (they live in the fabric's own protection
//! domain, with its staging buffer and nothing of the log or control block).
//!
//! **Revocation (contract point 3).** `revoke` (and a `grant` that replaces the holder) does two
//! things before it returns:
//!
//! 1. It switches the access flags of the revoked connection's responder to remote read only.
//!    An RC responder checks the flags for every incoming request packet, so every packet it
//!    checks from then on is refused with a NAK: the request completes at the poster with
//!    `IBV_WC_REM_INV_REQ_ERR` / `IBV_WC_REM_ACCESS_ERR` ([`FabricError::Permission`]), its
//!    queue pair goes to the error state, and everything behind it is flushed; flushed requests
//!    of a connection that failed with a permission error report [`FabricError::Permission`]
//!    too, and so does every later post on it until a reconnect.
//! 2. It deregisters the revoked writer's write region. The flags switch alone leaves a window:
//!    a packet whose flags check passed just before the switch may still be placing its data
//!    when `ibv_modify_qp` returns. rxe (kernel 6.1) has that window (its responder reads the
//!    flags per packet and the modify does not wait for it; the streaming-writer test saw such
//!    a late write in about 1 round in 300), and whether a hardware HCA can place a packet
//!    already in its pipeline after the modify completes is not documented. A responder holds
//!    a reference on the memory region a packet writes through from its key check to the end of
//!    the copy, and `ibv_dereg_mr` returns only when no such reference is left (rxe 6.1 waits
//!    for them: with the fence the streaming-writer test saw no late write in 6000 rounds; on a
//!    hardware HCA the key is invalid once the command completes, which is what deregistration
//!    means in the verbs specification, not verified on hardware here). So once `revoke`
//!    returns, no write of the revoked writer lands, whatever was in flight. A fresh write
//!    region (a new key) is registered for that writer at once, on a thread of its own (pinning
//!    a whole log is slow: it must not fall on a hand-over's path), and its next data
//!    connection gets it; the flags decide whether that one may be written. Should the device
//!    refuse the deregistration, the region is leaked (with the buffer under it), the writer's
//!    data responders go to RESET instead, and [`RdmaFabric::fence_failures`] counts it.
//!
//! A multi-packet write cut by a revoke lands at most a prefix, which the entry checksum catches
//! (contract point 5). When the device refuses the access-flags switch, the fallback takes the
//! responder to RESET; the revoked connection's requests then time out
//! ([`FabricError::Unreachable`]) instead of failing with a permission error, until the poster
//! reconnects and is refused. The fence is the same either way.
//!
//! ## Completions
//!
//! Every work request is signaled; completions are polled from the poster's one completion queue
//! and mapped: success → `Ok` (reads carry their bytes), remote access / invalid request →
//! [`FabricError::Permission`], retry exceeded, flush and everything else →
//! [`FabricError::Unreachable`] (a flush inherits the connection's first error). Writes up to
//! `inline_bytes` are posted inline; longer writes and reads go through a registered staging
//! buffer (a region registered for the one request when the staging buffer is full).
//!
//! ## Set-up
//!
//! [`RdmaCluster::open`] wires every node of a cluster in one process on one device (the contract
//! suite, benches): connections are made on first use by exchanging queue-pair numbers, PSNs and
//! GIDs in memory ([`Wiring::accept`] is the owner's half of that exchange). Between processes
//! ([`RdmaFabric::open_node`], one node per daemon) the same exchange travels through a
//! [`Handshake`]: rdma_cm on the device, the exchange in the connect request's and the accept's
//! private data ([`cm_net`], the default), or two UDP datagrams ([`net`], for a netdev rdma_cm
//! cannot route over, such as rxe on loopback). Either way the owner decides the rights of its
//! responder from its own grant state, never from the exchange.

use crate::protocol::wordhash::WordMap;
use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rapax_ffi::ibverbs::{
    self, AccessFlags, CompletionQueue, Context, Endpoint, Gid, LocalSlice, MemoryRegion,
    PathParams, ProtectionDomain, QpCaps, QueuePair, RemoteAddr, Reset, Rts, SendFlags, WcStatus,
    WorkCompletion,
};

use super::{Completion, FabricError, LocalMemory, Op, Post, Region};
use crate::profile::RdmaFabric as RdmaProfile;
use crate::protocol::layout::{cb_ack, cb_request, peer_may_write_control, LogGeometry, CB_BYTES};
use crate::protocol::{Ballot, NodeId};

#[path = "rdma_net.rs"]
pub mod net;

#[path = "rdma_cm_net.rs"]
pub mod cm_net;

/// How a daemon's fabric connects to peers in other processes.
pub enum Handshake {
    /// Two UDP datagrams on the nodes' `rdma_addr` ([`net::RdmaNet`]).
    Udp(net::RdmaNet),
    /// rdma_cm on the RDMA device, the exchange in the connect's private data
    /// ([`cm_net::CmNet`]).
    Cm(Box<cm_net::CmNet>),
}

impl Handshake {
    fn request(&mut self, key: LinkKey, initiator: &Endpoint) -> u64 {
        match self {
            Handshake::Udp(n) => n.request(key, initiator),
            Handshake::Cm(n) => n.request(key, initiator),
        }
    }

    /// Serves the endpoint: answers to our requests go to `answers`, our connections whose
    /// owner closed its end to `closed` (rdma_cm only: UDP has no connections to close).
    fn serve(
        &mut self,
        wiring: &Mutex<Wiring>,
        answers: &mut Vec<net::Answer>,
        closed: &mut Vec<LinkKey>,
    ) {
        match self {
            Handshake::Udp(n) => n.serve(wiring, answers),
            Handshake::Cm(n) => n.serve(wiring, answers, closed),
        }
    }

    fn stats(&self) -> &net::NetStats {
        match self {
            Handshake::Udp(n) => n.stats(),
            Handshake::Cm(n) => n.stats(),
        }
    }

    /// How long a poster waits for the owner's answer before its posts fail.
    fn connect_timeout(&self) -> Duration {
        match self {
            Handshake::Udp(_) => net::CONNECT_TIMEOUT,
            Handshake::Cm(_) => cm_net::CONNECT_TIMEOUT,
        }
    }
}

/// Whether the rdma-core bindings were built (without them every device open fails).
pub fn available() -> bool {
    rapax_ffi::ibverbs::available()
}

/// The IP address of the profile's GID (`fabric.rdma.gid_index` on its device and port): a
/// RoCE GID is its netdev's address (IPv4-mapped for IPv4), which is where rdma_cm reaches this
/// node. `None` when the GID is no routable address (InfiniBand, or a link-local one).
pub fn gid_ip(settings: &RdmaSettings) -> Result<Option<std::net::IpAddr>, RdmaError> {
    let ctx = Context::open(&settings.device).map_err(|e| RdmaError::NoDevice {
        device: settings.device.clone(),
        why: e.to_string(),
    })?;
    let gid = ctx
        .query_gid(settings.port, i32::from(settings.gid_index))
        .map_err(verbs("ibv_query_gid"))?;
    Ok(gid_to_ip(&gid))
}

/// The IP address a RoCE GID stands for (IPv4-mapped for IPv4), or `None` for an empty or
/// link-local GID.
pub fn gid_to_ip(gid: &Gid) -> Option<std::net::IpAddr> {
    let v6 = std::net::Ipv6Addr::from(gid.0);
    match v6.to_ipv4_mapped() {
        Some(v4) if !v4.is_unspecified() => Some(v4.into()),
        Some(_) => None,
        None if v6.is_unspecified() || v6.segments()[0] & 0xffc0 == 0xfe80 => None,
        None => Some(v6.into()),
    }
}

/// Errors setting up the rdma fabric.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    /// No usable device: rdma-core not built, no device of that name, or no RDMA in the kernel.
    #[error("no RDMA device {device:?}: {why}")]
    NoDevice { device: String, why: String },
    /// The port is not ACTIVE.
    #[error("port {port} of RDMA device {device} is not active")]
    PortDown { device: String, port: u8 },
    /// A setting the device or the fabric cannot use.
    #[error("rdma setting {field} = {value}: {why}")]
    Setting {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    /// A verbs call failed.
    #[error("rdma {what}: {source}")]
    Verbs {
        what: &'static str,
        #[source]
        source: ibverbs::Error,
    },
    /// The floor's peer did not answer in time.
    #[error("rdma write floor: no reply to round {round} within {limit:?}")]
    NoReply { round: usize, limit: Duration },
    /// A work request of the floor failed.
    #[error("rdma write floor: a write completed with {status}")]
    Failed { status: String },
    /// A connection from a node to its own memory (it reads and writes that memory directly).
    #[error("node {node} has no regions for itself: its own memory is local to it")]
    OwnMemory { node: NodeId },
    /// Memory for a region could not be allocated.
    #[error("cannot allocate {bytes} bytes of registered memory")]
    Alloc { bytes: usize },
    /// `fabric.rdma.hugepages` is set and the huge pages could not be mapped.
    #[error(
        "fabric.rdma.hugepages: cannot map {bytes} bytes of 2 MiB huge pages ({source}); \
         reserve them first (echo N > /proc/sys/vm/nr_hugepages, N at least {pages} per node \
         beside what else uses them) or set hugepages = false"
    )]
    Hugepages {
        bytes: usize,
        pages: usize,
        source: std::io::Error,
    },
}

fn verbs(what: &'static str) -> impl FnOnce(ibverbs::Error) -> RdmaError {
    move |source| RdmaError::Verbs { what, source }
}

/// What the fabric takes from the profile's `[fabric.rdma]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaSettings {
    pub device: String,
    pub port: u8,
    pub gid_index: u8,
    pub inline_bytes: u32,
    pub max_send_wr: u32,
    pub mtu_bytes: u32,
    pub ack_timeout_exponent: u8,
    pub retry_count: u8,
    /// Bytes of each node's staging buffer (writes above the inline threshold, reads).
    pub staging_bytes: usize,
    /// Logs and control blocks on 2 MiB huge pages.
    pub hugepages: bool,
}

impl RdmaSettings {
    /// The settings of a validated profile table.
    pub fn from_profile(p: &RdmaProfile) -> RdmaSettings {
        RdmaSettings {
            device: p.device.clone(),
            port: p.port,
            gid_index: u8::try_from(p.gid_index).unwrap_or(u8::MAX),
            inline_bytes: p.inline_bytes,
            max_send_wr: p.max_send_wr,
            mtu_bytes: p.mtu,
            ack_timeout_exponent: p.ack_timeout_exponent,
            retry_count: p.retry_count,
            staging_bytes: 1 << 20,
            hugepages: p.hugepages,
        }
    }
}

/// The device every node of an in-process cluster uses, with what connections need of it.
struct Device {
    ctx: Context,
    port: u8,
    path: PathParams,
    gid: Gid,
    lid: u16,
    caps: QpCaps,
    inline_bytes: u32,
}

impl Device {
    fn open(s: &RdmaSettings) -> Result<Device, RdmaError> {
        let ctx = Context::open(&s.device).map_err(|e| RdmaError::NoDevice {
            device: s.device.clone(),
            why: e.to_string(),
        })?;
        let port = ctx.query_port(s.port).map_err(verbs("ibv_query_port"))?;
        if !port.active {
            return Err(RdmaError::PortDown {
                device: s.device.clone(),
                port: s.port,
            });
        }
        let gid_index = port.ethernet.then_some(s.gid_index);
        if i32::from(s.gid_index) >= port.gid_table_len {
            return Err(RdmaError::Setting {
                field: "fabric.rdma.gid_index",
                value: s.gid_index.to_string(),
                why: "beyond the port's GID table",
            });
        }
        let gid = ctx
            .query_gid(s.port, i32::from(gid_index.unwrap_or(0)))
            .map_err(verbs("ibv_query_gid"))?;
        if port.ethernet && gid == Gid::default() {
            return Err(RdmaError::Setting {
                field: "fabric.rdma.gid_index",
                value: s.gid_index.to_string(),
                why: "that GID table entry is empty (see show_gids or ibv_devinfo -v)",
            });
        }
        let mtu = ibverbs::mtu_from_bytes(s.mtu_bytes).ok_or(RdmaError::Setting {
            field: "fabric.rdma.mtu",
            value: s.mtu_bytes.to_string(),
            why: "not a path MTU",
        })?;
        let path = PathParams {
            port: s.port,
            gid_index,
            mtu: mtu.min(port.active_mtu),
            max_rd_atomic: 1,
            min_rnr_timer: 12,
            timeout: s.ack_timeout_exponent,
            retry_cnt: s.retry_count,
            rnr_retry: 7,
        };
        let mut dev = Device {
            ctx,
            port: s.port,
            path,
            gid,
            lid: port.lid,
            caps: QpCaps {
                max_send_wr: s.max_send_wr,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: s.inline_bytes,
            },
            inline_bytes: s.inline_bytes,
        };
        dev.settle_inline()?;
        Ok(dev)
    }

    /// Lowers the inline threshold to what the device accepts (halving until a queue pair can
    /// be created with it): the profile's figure is an upper bound.
    fn settle_inline(&mut self) -> Result<(), RdmaError> {
        let pd = self.ctx.alloc_pd().map_err(verbs("ibv_alloc_pd"))?;
        let cq = self.ctx.create_cq(4).map_err(verbs("ibv_create_cq"))?;
        loop {
            match QueuePair::create_rc(&pd, &cq, &cq, self.caps) {
                Ok(_) => return Ok(()),
                Err(e) if self.caps.max_inline_data == 0 => {
                    return Err(RdmaError::Verbs {
                        what: "ibv_create_qp",
                        source: e,
                    })
                }
                Err(_) => {
                    self.caps.max_inline_data /= 2;
                    self.inline_bytes = self.caps.max_inline_data;
                }
            }
        }
    }

    fn endpoint(&self, qp_num: u32, psn: u32) -> Endpoint {
        Endpoint {
            qp_num,
            psn,
            lid: self.lid,
            gid: self.gid,
        }
    }
}

/// Page-aligned, zeroed memory for registration. Freed on drop; every region registered on it
/// holds an `Arc` to it (see [`Registered`]), so it outlives them.
struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

/// Where a [`Buffer`]'s memory comes from.
enum Backing {
    /// The heap, 4 KiB-aligned.
    Heap(Layout),
    /// An anonymous mapping of 2 MiB huge pages (`MAP_HUGETLB`), unmapped when dropped.
    Huge(#[allow(dead_code)] memmap2::MmapMut),
}

/// Huge page size the buffers use (the x86-64 and arm64 default).
const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the buffer is plain memory; every access goes through atomics or volatile copies
// (the HCA writes it concurrently), so sharing it between threads is sound.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl Buffer {
    fn new(len: usize) -> Result<Buffer, RdmaError> {
        let alloc = RdmaError::Alloc { bytes: len };
        let layout = Layout::from_size_align(len.max(8).next_multiple_of(4096), 4096)
            .map_err(|_| RdmaError::Alloc { bytes: len })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Ok(Buffer {
            ptr: NonNull::new(ptr).ok_or(alloc)?,
            len: layout.size(),
            backing: Backing::Heap(layout),
        })
    }

    /// At least `len` bytes of 2 MiB huge pages (the length rounded up to whole pages), zeroed,
    /// populated at once, so a shortage shows here and not as a fault on first touch.
    fn huge(len: usize) -> Result<Buffer, RdmaError> {
        let bytes = len.max(8).next_multiple_of(HUGE_PAGE);
        let mut map = memmap2::MmapOptions::new()
            .len(bytes)
            .huge(Some(21))
            .populate()
            .map_anon()
            .map_err(|source| RdmaError::Hugepages {
                bytes,
                pages: bytes / HUGE_PAGE,
                source,
            })?;
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or(RdmaError::Alloc { bytes })?;
        Ok(Buffer {
            ptr,
            len: bytes,
            backing: Backing::Huge(map),
        })
    }

    /// [`Buffer::huge`] when `huge`, else [`Buffer::new`].
    fn with_pages(len: usize, huge: bool) -> Result<Buffer, RdmaError> {
        if huge {
            Buffer::huge(len)
        } else {
            Buffer::new(len)
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(
            at.is_multiple_of(8) && at + 8 <= self.len(),
            "word {at} out of bounds"
        );
        // SAFETY: in bounds and 8-byte aligned (the buffer is page-aligned); the memory lives as
        // long as `self`, and is only ever accessed atomically or by the HCA.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(at).cast()) }
    }

    /// Copies bytes out with volatile loads: a peer's write may land meanwhile (the copy may be
    /// torn, which checksums catch), and the compiler must not assume the memory is unchanged.
    fn load(&self, at: usize, buf: &mut [u8]) {
        assert!(at + buf.len() <= self.len(), "load out of bounds");
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); a byte load cannot be misaligned.
            *b = unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(at + i)) };
        }
        std::sync::atomic::fence(Ordering::Acquire);
    }

    fn store(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len(), "store out of bounds");
        std::sync::atomic::fence(Ordering::Release);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: in bounds (checked above).
            unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(at + i), *b) };
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Backing::Heap(layout) = self.backing {
            // SAFETY: allocated in `new` with this layout; no region is registered on it any
            // more (each holds an Arc to it). A huge mapping unmaps itself when dropped.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// A memory region and the buffer under it: the region is deregistered (first field) before the
/// buffer can be freed.
struct Registered {
    mr: MemoryRegion,
    buf: Arc<Buffer>,
}

impl Registered {
    fn new(
        pd: &ProtectionDomain,
        buf: &Arc<Buffer>,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<Registered, RdmaError> {
        assert!(offset + len <= buf.len());
        // SAFETY: the range is inside the buffer, which this value keeps alive (the Arc) until
        // after the region is deregistered; the buffer is only accessed atomically or volatile.
        let mr = unsafe { pd.register(buf.ptr.as_ptr().add(offset), len, access) }
            .map_err(verbs("ibv_reg_mr"))?;
        Ok(Registered {
            mr,
            buf: buf.clone(),
        })
    }
}

/// Which connection between two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// The poster's data plane to the owner's control block: reads, and writes of its own
    /// request and ack words.
    Control,
    /// The poster's data plane to the owner's log, for one ballot.
    Data(Ballot),
    /// The poster's control plane to the owner's control block: heartbeat reads only (the
    /// control mesh, a process of its own).
    Watch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LinkKey {
    src: NodeId,
    dst: NodeId,
    lane: Lane,
}

/// A queue pair in the state it is in.
enum Qp {
    Reset(QueuePair<Reset>),
    Rts(QueuePair<Rts>),
}

impl Qp {
    fn into_reset(self) -> Result<QueuePair<Reset>, ibverbs::Error> {
        match self {
            Qp::Reset(q) => Ok(q),
            Qp::Rts(q) => q.reset(),
        }
    }
}

/// Brings a RESET queue pair up to RTS against `remote`.
fn bring_up(
    dev: &Device,
    qp: QueuePair<Reset>,
    access: AccessFlags,
    remote: &Endpoint,
    psn: u32,
) -> Result<QueuePair<Rts>, ibverbs::Error> {
    qp.to_init(dev.port, access)?
        .to_rtr(remote, &dev.path)?
        .to_rts(psn, &dev.path)
}

/// Where a peer's memory is, as the poster addresses it.
#[derive(Clone, Copy, Debug)]
enum Remotes {
    Control {
        read: RemoteAddr,
        request: RemoteAddr,
        ack: RemoteAddr,
    },
    /// The owner's log: reads through the region every peer may read, writes through the
    /// poster's own write region (its key stops working when the poster is revoked).
    Log { read: RemoteAddr, write: RemoteAddr },
}

/// The owner's regions of the control block for one peer, in their own protection domain.
struct ControlAccess {
    read: Registered,
    request: Registered,
    ack: Registered,
    pd: ProtectionDomain,
    /// The responder of this peer's next control or watch connection, created ahead.
    spare: SpareQp,
}

/// The owner's regions of its log for one peer's data lanes, in a protection domain of their own
/// that holds only that peer's data connections.
struct DataAccess {
    /// The whole log, remote read only.
    read: Registered,
    /// The whole log, remote write: this peer's writes go through it. Deregistered when the peer
    /// loses write permission (the fence that completes a revocation, see the module docs);
    /// its successor is registered at once on a thread of its own ([`DataAccess::register_ahead`])
    /// and handed out when one of the peer's data lanes next connects.
    write: Option<Registered>,
    /// The successor of a deregistered write region, registered off the data plane's thread:
    /// registering a whole log pins every page of it (0.44-0.64 ms for 16 MiB on rxe, far
    /// more for a NIC's gigabyte log), which would otherwise fall on the next connection of
    /// the revoked writer, a hand-over's path when it leads again.
    next: MadeAhead<Registered>,
    /// Write regions registered on a connection's path (none ready ahead).
    registered_on_connect: u64,
    pd: ProtectionDomain,
    /// The log's length (its buffer may be longer: whole huge pages).
    log_bytes: usize,
    /// The responder of this peer's next data connection, created ahead.
    spare: SpareQp,
}

/// The rights of a region peers write into (a write region, a control block's request and ack
/// words).
const WRITABLE: AccessFlags = AccessFlags(AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0);

impl DataAccess {
    /// The peer's write region: the one registered ahead if it is ready, else one registered
    /// now. A registration ahead still under way is not waited for: the registrar runs at low
    /// priority, and a data plane waiting on it could wait behind busy threads. (It drops the
    /// region it made, deregistered, when it finds nobody waiting.)
    fn write_region(&mut self, log: &Arc<Buffer>) -> Result<&Registered, RdmaError> {
        if self.write.is_none() {
            self.write = std::mem::take(&mut self.next).take();
        }
        if self.write.is_none() {
            self.registered_on_connect += 1;
            self.write = Some(Registered::new(&self.pd, log, 0, self.log_bytes, WRITABLE)?);
        }
        Ok(self.write.as_ref().expect("registered above"))
    }

    /// Hands the registration of the peer's next write region to `registrar` (a thread of its
    /// own), unless one is there or under way. Nothing reaches that region before the peer's
    /// next connection learns its key, and only a connection with write rights can use it.
    /// Without a registrar it is left to [`DataAccess::write_region`].
    fn register_ahead(&mut self, log: &Arc<Buffer>, registrar: Option<&mpsc::Sender<Ahead>>) {
        if self.write.is_some() {
            return;
        }
        let (pd, buf, len) = (self.pd.clone(), log.clone(), self.log_bytes);
        self.next.ask(registrar, |done| {
            Ahead::Register(Registration { pd, buf, len, done })
        });
    }

    /// Whether the next write region is registered ahead (taking it from the registrar if it
    /// is done).
    #[cfg(test)]
    fn ready_ahead(&mut self) -> bool {
        if self.write.is_none() {
            self.write = self.next.take();
        }
        self.write.is_some()
    }
}

/// A write region to register off the data plane's thread ([`DataAccess::register_ahead`]).
struct Registration {
    pd: ProtectionDomain,
    buf: Arc<Buffer>,
    len: usize,
    done: mpsc::Sender<Result<Registered, RdmaError>>,
}

/// A queue pair to create off the data plane's thread ([`SpareQp::refill`]).
struct QpCreation {
    pd: ProtectionDomain,
    cq: CompletionQueue,
    caps: QpCaps,
    done: mpsc::Sender<Result<QueuePair<Reset>, RdmaError>>,
}

/// The registrar's work: what a connection would otherwise wait for, done before it is asked.
enum Ahead {
    Register(Registration),
    Create(QpCreation),
}

/// One thing the registrar makes ahead for the next use: made (`ready`), being made
/// (`pending`), or neither.
struct MadeAhead<T> {
    ready: Option<T>,
    pending: Option<mpsc::Receiver<Result<T, RdmaError>>>,
}

impl<T> Default for MadeAhead<T> {
    fn default() -> Self {
        MadeAhead {
            ready: None,
            pending: None,
        }
    }
}

impl<T> MadeAhead<T> {
    /// Takes what is made, if the registrar is done with it (a failure is forgotten).
    fn take(&mut self) -> Option<T> {
        if self.ready.is_none() {
            if let Some(pending) = &self.pending {
                match pending.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => {}
                    Ok(Ok(made)) => {
                        self.pending = None;
                        self.ready = Some(made);
                    }
                    Ok(Err(_)) | Err(mpsc::TryRecvError::Disconnected) => self.pending = None,
                }
            }
        }
        self.ready.take()
    }

    /// Whether it is made (taking it from the registrar if it is done).
    #[cfg(test)]
    fn is_ready(&mut self) -> bool {
        self.ready = self.take();
        self.ready.is_some()
    }

    /// Hands `registrar` the job `job` builds around its reply channel, unless the next one is
    /// made or being made. Without a registrar nothing is made ahead.
    fn ask(
        &mut self,
        registrar: Option<&mpsc::Sender<Ahead>>,
        job: impl FnOnce(mpsc::Sender<Result<T, RdmaError>>) -> Ahead,
    ) {
        if self.ready.is_some() || self.pending.is_some() {
            return;
        }
        let Some(registrar) = registrar else {
            return;
        };
        let (done, pending) = mpsc::channel();
        if registrar.send(job(done)).is_ok() {
            self.pending = Some(pending);
        }
    }
}

/// A queue pair created ahead on the registrar's thread, in RESET, for the next connection of
/// its kind. Every connection gets a new queue pair (over rdma_cm the CM refuses a number it
/// still holds in a time-wait), and a hand-over's data connections are new connections:
/// `ibv_create_qp` is a call of milliseconds on rxe (median 3.6-4.8 ms, up to 263 ms, in
/// docs/rdma.md) and of hundreds of microseconds of firmware commands on a NIC, on the path of
/// both the new leader's post and the follower's accept.
type SpareQp = MadeAhead<QueuePair<Reset>>;

impl SpareQp {
    /// Asks `registrar` for the next spare, unless one is there or under way.
    fn refill(
        &mut self,
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        caps: QpCaps,
        registrar: Option<&mpsc::Sender<Ahead>>,
    ) {
        let (pd, cq) = (pd.clone(), cq.clone());
        self.ask(registrar, |done| {
            Ahead::Create(QpCreation { pd, cq, caps, done })
        });
    }

    /// The spare if it is ready (a creation still under way is not waited for: it becomes the
    /// next spare), else a queue pair created now, counted in `on_path`; then asks for the
    /// next spare.
    fn take_or_create(
        &mut self,
        pd: &ProtectionDomain,
        cq: &CompletionQueue,
        caps: QpCaps,
        registrar: Option<&mpsc::Sender<Ahead>>,
        on_path: &mut u64,
    ) -> Result<QueuePair<Reset>, ibverbs::Error> {
        let qp = match self.take() {
            Some(qp) => qp,
            None => {
                *on_path += 1;
                QueuePair::create_rc(pd, cq, cq, caps)?
            }
        };
        self.refill(pd, cq, caps, registrar);
        Ok(qp)
    }
}

/// Starts the thread that registers write regions and creates queue pairs ahead
/// ([`Ahead`]): it lives as long as the sender returned (`None` if no thread could be
/// started).
fn start_registrar() -> Option<mpsc::Sender<Ahead>> {
    let (jobs, queue) = mpsc::channel::<Ahead>();
    std::thread::Builder::new()
        .name("rdma-register".into())
        .spawn(move || {
            // Pinning a log's pages takes a while and nothing waits for it: never on a core a
            // leader spins on (a revocation is where a new leader starts serving), and at a
            // low priority that still gets a slice (its verbs calls take the process's
            // memory-map lock, which the data plane's take too). Asleep until a revocation or
            // a connection that took a spare queue pair hands it a job.
            let _ = crate::agent::place_locking_helper_thread();
            for job in queue {
                // A fabric gone meanwhile drops what was made for it (deregistered, destroyed).
                match job {
                    Ahead::Register(job) => {
                        let region = Registered::new(&job.pd, &job.buf, 0, job.len, WRITABLE);
                        let _ = job.done.send(region);
                    }
                    Ahead::Create(job) => {
                        let qp = QueuePair::create_rc(&job.pd, &job.cq, &job.cq, job.caps)
                            .map_err(verbs("ibv_create_qp (ahead)"));
                        let _ = job.done.send(qp);
                    }
                }
            }
        })
        .ok()?;
    Some(jobs)
}

/// The owner's half of a connection.
struct Responder {
    qp: Option<Qp>,
}

/// What every node of the cluster shares: the owners' regions and responder queue pairs, and
/// who holds write permission on each log.
struct NodeShared {
    log: Arc<Buffer>,
    data: Vec<Option<DataAccess>>,
    control: Vec<Option<ControlAccess>>,
    cq: CompletionQueue,
    holder: Option<Ballot>,
    isolated: bool,
}

/// The owner's side of connection set-up and rights, shared by the nodes of one process.
pub struct Wiring {
    dev: Arc<Device>,
    /// The owners of this process (every node in-process; only its own node in a daemon).
    nodes: Vec<Option<NodeShared>>,
    responders: HashMap<LinkKey, Responder>,
    next_psn: u32,
    /// Times the access-flags switch failed and the fallback cycle ran.
    pub fallback_cycles: u64,
    /// Times a revoked writer's write region could not be deregistered (its responders were
    /// reset instead).
    pub fence_failures: u64,
    /// Skip the access-flags switch and always take the fallback (to test it).
    force_fallback: bool,
    /// The thread that registers revoked writers' next write regions and creates the next
    /// connections' queue pairs ahead.
    registrar: Option<mpsc::Sender<Ahead>>,
    /// Responder queue pairs created on a connection's path (no spare was ready).
    pub responders_created_on_connect: u64,
}

impl Wiring {
    fn node(&self, n: NodeId) -> &NodeShared {
        self.nodes[n as usize]
            .as_ref()
            .expect("an owner of this process")
    }

    fn node_mut(&mut self, n: NodeId) -> &mut NodeShared {
        self.nodes[n as usize]
            .as_mut()
            .expect("an owner of this process")
    }

    /// Whether node `n`'s memory lives in this process.
    fn owns(&self, n: NodeId) -> bool {
        self.nodes.get(n as usize).is_some_and(Option::is_some)
    }

    fn psn(&mut self) -> u32 {
        self.next_psn = (self.next_psn + 0x1357) & 0xFF_FFFF;
        self.next_psn
    }

    /// The rights the owner's responder of `key` gives.
    fn access(&self, key: &LinkKey) -> AccessFlags {
        match key.lane {
            Lane::Control => {
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_WRITE
            }
            Lane::Watch => AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ,
            Lane::Data(ballot) => {
                let granted = self.node(key.dst).holder == Some(ballot) && ballot.node() == key.src;
                let base = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ;
                if granted {
                    base | AccessFlags::REMOTE_WRITE
                } else {
                    base
                }
            }
        }
    }

    /// The owner's half of connecting `key`: creates (or resets) its responder queue pair,
    /// connects it to `initiator` with the rights the owner gives that connection now, and
    /// answers with its endpoint and where its memory is. A responder of an isolated node stays
    /// in RESET: the initiator's requests then go unanswered and time out.
    fn accept(
        &mut self,
        key: LinkKey,
        initiator: Endpoint,
    ) -> Result<(Endpoint, Remotes), RdmaError> {
        self.accept_on(key, initiator, true)
    }

    /// [`Wiring::accept`] on a new responder queue pair, never a reset one: the RDMA CM takes a
    /// queue-pair number it saw in a connection still in its time-wait for a stale connection
    /// and refuses the new one.
    fn accept_fresh(
        &mut self,
        key: LinkKey,
        initiator: Endpoint,
    ) -> Result<(Endpoint, Remotes), RdmaError> {
        self.accept_on(key, initiator, false)
    }

    fn accept_on(
        &mut self,
        key: LinkKey,
        initiator: Endpoint,
        reuse: bool,
    ) -> Result<(Endpoint, Remotes), RdmaError> {
        if key.src == key.dst {
            // A node's own memory is local to it: it has no regions for itself.
            return Err(RdmaError::OwnMemory { node: key.src });
        }
        let remotes = match key.lane {
            Lane::Control | Lane::Watch => {
                let c = self.node(key.dst).control[key.src as usize]
                    .as_ref()
                    .expect("every peer has control access");
                Remotes::Control {
                    read: c.read.mr.remote(0).map_err(verbs("control region"))?,
                    request: c.request.mr.remote(0).map_err(verbs("control region"))?,
                    ack: c.ack.mr.remote(0).map_err(verbs("control region"))?,
                }
            }
            Lane::Data(_) => {
                let node = self.node_mut(key.dst);
                let log = node.log.clone();
                let d = node.data[key.src as usize]
                    .as_mut()
                    .expect("every peer has data access");
                Remotes::Log {
                    read: d.read.mr.remote(0).map_err(verbs("log region"))?,
                    write: d
                        .write_region(&log)?
                        .mr
                        .remote(0)
                        .map_err(verbs("log region"))?,
                }
            }
        };
        let qp = match self.responders.remove(&key).and_then(|r| r.qp) {
            Some(qp) if reuse => qp.into_reset().ok(),
            _ => None,
        };
        let qp = match qp {
            Some(qp) => qp,
            None => {
                let caps = self.dev.caps;
                let registrar = self.registrar.clone();
                let mut on_path = 0;
                let node = self.node_mut(key.dst);
                let cq = node.cq.clone();
                let (pd, spare) = match key.lane {
                    Lane::Control | Lane::Watch => {
                        let c = node.control[key.src as usize].as_mut().unwrap();
                        (&c.pd, &mut c.spare)
                    }
                    Lane::Data(_) => {
                        let d = node.data[key.src as usize].as_mut().unwrap();
                        (&d.pd, &mut d.spare)
                    }
                };
                let qp = spare
                    .take_or_create(pd, &cq, caps, registrar.as_ref(), &mut on_path)
                    .map_err(verbs("ibv_create_qp (responder)"))?;
                self.responders_created_on_connect += on_path;
                qp
            }
        };
        let psn = self.psn();
        let endpoint = self.dev.endpoint(qp.qp_num(), psn);
        let qp = if self.node(key.dst).isolated {
            Qp::Reset(qp)
        } else {
            let access = self.access(&key);
            Qp::Rts(
                bring_up(&self.dev, qp, access, &initiator, psn)
                    .map_err(verbs("responder RESET->INIT->RTR->RTS"))?,
            )
        };
        self.responders.insert(key, Responder { qp: Some(qp) });
        Ok((endpoint, remotes))
    }

    /// Sets who may write `owner`'s log and applies it to every data responder of `owner`
    /// before returning (see the module docs on why that completes a revocation).
    fn set_holder(&mut self, owner: NodeId, holder: Option<Ballot>) {
        let before = std::mem::replace(&mut self.node_mut(owner).holder, holder);
        let keys: Vec<LinkKey> = self
            .responders
            .keys()
            .filter(|k| k.dst == owner && matches!(k.lane, Lane::Data(_)))
            .copied()
            .collect();
        for key in keys {
            let access = self.access(&key);
            let r = self.responders.get_mut(&key).expect("listed above");
            let Some(Qp::Rts(qp)) = r.qp.as_mut() else {
                // A RESET responder takes its rights when it is brought up.
                continue;
            };
            if !self.force_fallback && qp.set_access_flags(access).is_ok() {
                continue;
            }
            // The fallback: RESET now, which refuses everything (a packet already checked is
            // the fence's, below); INIT →
            // RTR → RTS with the new rights happen when the poster reconnects (`accept`), with
            // both sides' PSNs fresh. Meanwhile the initiator's requests time out. A queue pair
            // that cannot even be reset is dropped (destroyed), which refuses as well; the
            // reconnect creates a new one.
            self.fallback_cycles += 1;
            let qp = r.qp.take().expect("matched above");
            r.qp = qp.into_reset().ok().map(Qp::Reset);
        }
        // The fence: the writer that lost its rights loses its write region too. A request
        // that passed its queue pair's flags check before the switch above holds a reference
        // on that region while it places its data, and deregistration waits for it.
        let Some(lost) = before.filter(|&b| holder != Some(b)) else {
            return;
        };
        let writer = lost.node();
        let Some(region) = self.node_mut(owner).data[writer as usize]
            .as_mut()
            .and_then(|d| d.write.take())
        else {
            return;
        };
        let Registered { mr, buf } = region;
        if mr.deregister().is_ok() {
            let registrar = self.registrar.clone();
            let node = self.node_mut(owner);
            let log = node.log.clone();
            if let Some(d) = node.data[writer as usize].as_mut() {
                d.register_ahead(&log, registrar.as_ref());
            }
            return;
        }
        // The device kept the region (and the buffer must outlive it: leaked with it). The
        // next best fence: every data responder of that writer to RESET, which refuses all it
        // has not yet checked; its next data connection gets a new region.
        std::mem::forget(buf);
        self.fence_failures += 1;
        self.reset_responders(|k| {
            k.dst == owner && k.src == writer && matches!(k.lane, Lane::Data(_))
        });
    }

    /// Makes `node` unreachable: every responder of it goes to RESET (and new ones stay there).
    fn isolate(&mut self, node: NodeId) {
        self.node_mut(node).isolated = true;
        self.reset_responders(|k| k.dst == node);
    }

    /// Takes the responders of the connections `which` picks to RESET (one that cannot be reset
    /// is dropped, which refuses as well): they refuse every request from then on.
    fn reset_responders(&mut self, which: impl Fn(&LinkKey) -> bool) {
        for (key, r) in self.responders.iter_mut() {
            if which(key) {
                r.qp = r.qp.take().and_then(|q| q.into_reset().ok()).map(Qp::Reset);
            }
        }
    }
}

/// The poster's half of a connection.
struct Conn {
    qp: Option<Qp>,
    remotes: Remotes,
    outstanding: u32,
    /// Set by the first failed operation: the connection is in error until reconnected.
    broken: Option<FabricError>,
}

/// Where a read lands or a long write is staged.
enum Landing {
    None,
    Staging { offset: usize, len: usize },
    Own(Registered),
}

struct Pending {
    wr_id: u64,
    key: LinkKey,
    read: bool,
    landing: Landing,
}

/// A bump allocator over one registered buffer: reset when nothing staged is outstanding.
struct Staging {
    region: Registered,
    head: usize,
    in_use: u32,
}

impl Staging {
    fn alloc(&mut self, len: usize) -> Option<usize> {
        let end = self.head.checked_add(len)?;
        if end > self.region.buf.len() {
            return None;
        }
        let at = self.head;
        self.head = end.next_multiple_of(64);
        self.in_use += 1;
        Some(at)
    }

    fn release(&mut self) {
        self.in_use -= 1;
        if self.in_use == 0 {
            self.head = 0;
        }
    }
}

/// How long a drain waits for the completions of one connection before giving up on it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// One node of an rdma cluster: its memory as [`LocalMemory`], and its one-sided operations on
/// peers ([`RdmaFabric::post`], [`RdmaFabric::poll`]).
pub struct RdmaFabric {
    me: NodeId,
    nodes: usize,
    dev: Arc<Device>,
    wiring: Arc<Mutex<Wiring>>,
    pd: ProtectionDomain,
    cq: CompletionQueue,
    /// Keyed by node ids and ballots of this cluster: a bounded map, hashed by a word hasher
    /// (its lookups are on every post's and every completion's path).
    conns: WordMap<LinkKey, Conn>,
    /// In-flight work requests, by the `wr_id` posted to the device (an index here).
    pending: Vec<Option<Pending>>,
    free: Vec<u32>,
    staging: Staging,
    completions: Vec<Completion>,
    wcs: Vec<WorkCompletion>,
    control: Arc<Buffer>,
    log: Arc<Buffer>,
    log_bytes: usize,
    /// The handshake with peers in other processes (`None`: every peer is in this process).
    net: Option<Handshake>,
    /// Connections to peers in other processes waiting for the owner's answer.
    connecting: WordMap<LinkKey, Connecting>,
    answers: Vec<net::Answer>,
    /// Our connections whose owner closed its end (rdma_cm), taken from the handshake.
    closed: Vec<LinkKey>,
    /// Connections flushed because their owner closed its end.
    closed_flushes: u64,
    next_serve: Instant,
    /// The lane control-block operations take: `Control` (a data plane), `Watch` (a watcher).
    control_lane: Lane,
    /// Initiator queue pairs created ahead, one per peer (a hand-over connects to every
    /// follower at once).
    spares: Vec<SpareQp>,
    /// The owner's registrar (none for a watcher, which owns no memory).
    registrar: Option<mpsc::Sender<Ahead>>,
    /// Initiator queue pairs created on a connection's path (no spare was ready).
    initiators_created_on_connect: u64,
}

/// How often a daemon's fabric looks at its handshake socket when it waits for no answer.
const SERVE_EVERY: Duration = Duration::from_micros(200);

/// A connection whose handshake is under way: its initiator (in RESET), the request's nonce,
/// and the posts waiting for it.
struct Connecting {
    qp: QueuePair<Reset>,
    psn: u32,
    nonce: u64,
    since: Instant,
    queued: Vec<Post>,
}

/// Most posts that wait for one connection's handshake; more fail with `Unreachable`.
const MAX_QUEUED: usize = 4096;

/// What [`RdmaFabric::counters`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdmaCounters {
    /// See [`RdmaFabric::fallback_cycles`].
    pub fallback_cycles: u64,
    /// See [`RdmaFabric::fence_failures`].
    pub fence_failures: u64,
    /// Queue pairs created on connections' paths, initiators of this node and responders of
    /// the owners of this process (see [`RdmaFabric::queue_pairs_created_on_connect`]).
    pub qps_on_path: u64,
    /// Write regions the owners of this process registered on connections' paths (none
    /// registered ahead was ready).
    pub regions_on_path: u64,
}

/// Every node of one cluster in this process, wired on one device.
pub struct RdmaCluster;

impl RdmaCluster {
    /// Opens the device, allocates and registers every node's control block and log of
    /// `geometry`, and returns the nodes' fabrics (connections are made on first use).
    pub fn open(
        settings: &RdmaSettings,
        nodes: usize,
        geometry: &LogGeometry,
    ) -> Result<Vec<RdmaFabric>, RdmaError> {
        let dev = Arc::new(Device::open(settings)?);
        let log_bytes = geometry.log_bytes();
        let mut shared = Vec::with_capacity(nodes);
        let mut mine = Vec::with_capacity(nodes);
        for me in 0..nodes as NodeId {
            let (owner, own) = alloc_owner(&dev, settings, me, nodes, log_bytes)?;
            shared.push(Some(owner));
            mine.push(own);
        }
        let wiring = Arc::new(Mutex::new(Wiring::new(&dev, shared)));
        Ok(mine
            .into_iter()
            .enumerate()
            .map(|(me, own)| RdmaFabric::assemble(me as NodeId, nodes, &dev, &wiring, own, None))
            .collect())
    }
}

/// What a node's fabric keeps of its own allocation (the owner's half goes to the wiring).
struct OwnParts {
    pd: ProtectionDomain,
    cq: CompletionQueue,
    control: Arc<Buffer>,
    log: Arc<Buffer>,
    staging: Staging,
    cq_entries: usize,
    log_bytes: usize,
}

/// Allocates and registers one node's control block, log and staging buffer on `dev`.
///
/// Every other node of `nodes` gets its regions: `me` gets none (its own memory is local to it,
/// and a region over a 16 MiB log costs its registration and the device's translation entries).
fn alloc_owner(
    dev: &Arc<Device>,
    settings: &RdmaSettings,
    me: NodeId,
    nodes: usize,
    log_bytes: usize,
) -> Result<(NodeShared, OwnParts), RdmaError> {
    // Room for every outstanding request of a node: a full send queue per peer and lane.
    let cq_entries = settings.max_send_wr.saturating_mul(4).clamp(64, 16384) as usize;
    let pd = dev.ctx.alloc_pd().map_err(verbs("ibv_alloc_pd"))?;
    let cq = dev
        .ctx
        .create_cq(cq_entries as u32)
        .map_err(verbs("ibv_create_cq"))?;
    let control = Arc::new(Buffer::with_pages(CB_BYTES, settings.hugepages)?);
    let log = Arc::new(Buffer::with_pages(log_bytes, settings.hugepages)?);
    let mut data = Vec::with_capacity(nodes);
    for peer in 0..nodes as NodeId {
        if peer == me {
            data.push(None);
            continue;
        }
        let pd = dev.ctx.alloc_pd().map_err(verbs("ibv_alloc_pd"))?;
        data.push(Some(DataAccess {
            read: Registered::new(&pd, &log, 0, log_bytes, AccessFlags::REMOTE_READ)?,
            // Registered ahead, so that a first connection (a new leader's) does not wait for it.
            write: Some(Registered::new(&pd, &log, 0, log_bytes, WRITABLE)?),
            next: MadeAhead::default(),
            registered_on_connect: 0,
            pd,
            log_bytes,
            spare: SpareQp::default(),
        }));
    }
    let mut access = Vec::with_capacity(nodes);
    for peer in 0..nodes as NodeId {
        if peer == me {
            access.push(None);
            continue;
        }
        let pd = dev.ctx.alloc_pd().map_err(verbs("ibv_alloc_pd"))?;
        access.push(Some(ControlAccess {
            read: Registered::new(&pd, &control, 0, CB_BYTES, AccessFlags::REMOTE_READ)?,
            request: Registered::new(&pd, &control, cb_request(peer), 8, WRITABLE)?,
            ack: Registered::new(&pd, &control, cb_ack(peer), 8, WRITABLE)?,
            pd,
            spare: SpareQp::default(),
        }));
    }
    let staging_buf = Arc::new(Buffer::new(settings.staging_bytes)?);
    let staging = Staging {
        region: Registered::new(
            &pd,
            &staging_buf,
            0,
            staging_buf.len(),
            AccessFlags::LOCAL_WRITE,
        )?,
        head: 0,
        in_use: 0,
    };
    let owner = NodeShared {
        log: log.clone(),
        data,
        control: access,
        cq: cq.clone(),
        holder: None,
        isolated: false,
    };
    Ok((
        owner,
        OwnParts {
            pd,
            cq,
            control,
            log,
            staging,
            cq_entries,
            log_bytes,
        },
    ))
}

impl Wiring {
    fn new(dev: &Arc<Device>, nodes: Vec<Option<NodeShared>>) -> Wiring {
        let nodes_owned = nodes.iter().any(Option::is_some);
        let mut w = Wiring {
            dev: dev.clone(),
            nodes,
            responders: HashMap::new(),
            next_psn: 0x10_0000,
            fallback_cycles: 0,
            fence_failures: 0,
            force_fallback: false,
            // Only an owner of memory revokes writers and accepts connections (a watcher owns
            // none).
            registrar: nodes_owned.then(start_registrar).flatten(),
            responders_created_on_connect: 0,
        };
        // Every peer's first responders, created ahead as well.
        let (caps, registrar) = (w.dev.caps, w.registrar.clone());
        for (pd, cq, spare) in w.responder_spares() {
            spare.refill(pd, cq, caps, registrar.as_ref());
        }
        w
    }

    /// Every responder spare of the owners of this process (data, then control, per peer),
    /// with the protection domain and completion queue its queue pair belongs to.
    fn responder_spares(
        &mut self,
    ) -> impl Iterator<Item = (&ProtectionDomain, &CompletionQueue, &mut SpareQp)> {
        self.nodes.iter_mut().flatten().flat_map(|node| {
            let NodeShared {
                cq, data, control, ..
            } = node;
            let cq = &*cq;
            let data = data
                .iter_mut()
                .flatten()
                .map(move |d| (&d.pd, cq, &mut d.spare));
            let control = control
                .iter_mut()
                .flatten()
                .map(move |c| (&c.pd, cq, &mut c.spare));
            data.chain(control)
        })
    }
}

impl RdmaFabric {
    fn assemble(
        me: NodeId,
        nodes: usize,
        dev: &Arc<Device>,
        wiring: &Arc<Mutex<Wiring>>,
        own: OwnParts,
        net: Option<Handshake>,
    ) -> RdmaFabric {
        let registrar = wiring
            .lock()
            .expect("no panic while wiring")
            .registrar
            .clone();
        let mut fabric = RdmaFabric {
            me,
            nodes,
            dev: dev.clone(),
            wiring: wiring.clone(),
            pd: own.pd,
            cq: own.cq,
            conns: WordMap::default(),
            pending: (0..own.cq_entries).map(|_| None).collect(),
            free: (0..own.cq_entries as u32).rev().collect(),
            staging: own.staging,
            completions: Vec::new(),
            wcs: vec![WorkCompletion::default(); 64],
            control: own.control,
            log: own.log,
            log_bytes: own.log_bytes,
            net,
            connecting: WordMap::default(),
            answers: Vec::new(),
            closed: Vec::new(),
            closed_flushes: 0,
            next_serve: Instant::now(),
            control_lane: Lane::Control,
            spares: (1..nodes.max(2)).map(|_| SpareQp::default()).collect(),
            registrar,
            initiators_created_on_connect: 0,
        };
        fabric.refill_spares();
        fabric
    }

    /// Asks the registrar for every initiator spare not there or under way.
    fn refill_spares(&mut self) {
        for spare in &mut self.spares {
            spare.refill(&self.pd, &self.cq, self.dev.caps, self.registrar.as_ref());
        }
    }

    /// A new initiator queue pair: a spare if one is ready, else one created now.
    fn new_initiator(&mut self) -> Result<QueuePair<Reset>, ibverbs::Error> {
        let qp = match self.spares.iter_mut().find_map(SpareQp::take) {
            Some(qp) => qp,
            None => {
                self.initiators_created_on_connect += 1;
                QueuePair::create_rc(&self.pd, &self.cq, &self.cq, self.dev.caps)?
            }
        };
        self.refill_spares();
        Ok(qp)
    }

    /// Queue pairs created on connections' paths, not ahead: (initiators of this node,
    /// responders of the owners of this process).
    pub fn queue_pairs_created_on_connect(&self) -> (u64, u64) {
        (
            self.initiators_created_on_connect,
            self.wiring().responders_created_on_connect,
        )
    }

    /// The counters a daemon publishes, read under one lock of the wiring (a data plane
    /// publishes every microsecond of its turn clock).
    pub fn counters(&self) -> RdmaCounters {
        let w = self.wiring();
        RdmaCounters {
            fallback_cycles: w.fallback_cycles,
            fence_failures: w.fence_failures,
            qps_on_path: self.initiators_created_on_connect + w.responders_created_on_connect,
            regions_on_path: w
                .nodes
                .iter()
                .flatten()
                .flat_map(|n| n.data.iter().flatten())
                .map(|d| d.registered_on_connect)
                .sum(),
        }
    }

    /// Node `me` of a cluster of `nodes` in this process alone (a daemon): opens the device,
    /// allocates and registers its own control block and log, and connects to its peers through
    /// `net` (rdma_cm, or the handshake over UDP) on first use.
    pub fn open_node(
        settings: &RdmaSettings,
        me: NodeId,
        nodes: usize,
        geometry: &LogGeometry,
        net: Handshake,
    ) -> Result<RdmaFabric, RdmaError> {
        let dev = Arc::new(Device::open(settings)?);
        let (owner, own) = alloc_owner(&dev, settings, me, nodes, geometry.log_bytes())?;
        let mut shared: Vec<Option<NodeShared>> = (0..nodes).map(|_| None).collect();
        shared[me as usize] = Some(owner);
        let wiring = Arc::new(Mutex::new(Wiring::new(&dev, shared)));
        Ok(RdmaFabric::assemble(
            me,
            nodes,
            &dev,
            &wiring,
            own,
            Some(net),
        ))
    }

    /// A watcher of node `me` (its control plane, a process of its own): reads the members'
    /// control blocks over `net` on lanes of its own ([`Lane::Watch`]: the owners give them
    /// remote read and nothing else), and owns no memory anyone can reach. Its log and control
    /// block exist only to satisfy [`LocalMemory`]; log operations are refused.
    pub fn open_watcher(
        settings: &RdmaSettings,
        me: NodeId,
        nodes: usize,
        net: Handshake,
    ) -> Result<RdmaFabric, RdmaError> {
        let dev = Arc::new(Device::open(settings)?);
        // No peer ever reaches a watcher's memory: no control-block regions for them.
        let (_unreachable, own) = alloc_owner(&dev, settings, me, 0, 64)?;
        let shared: Vec<Option<NodeShared>> = (0..nodes).map(|_| None).collect();
        let wiring = Arc::new(Mutex::new(Wiring::new(&dev, shared)));
        let mut f = RdmaFabric::assemble(me, nodes, &dev, &wiring, own, Some(net));
        f.control_lane = Lane::Watch;
        Ok(f)
    }

    /// Connections flushed at once because their owner closed its rdma_cm end (its process
    /// ended), instead of waiting out the transport's retries.
    pub fn closed_flushes(&self) -> u64 {
        self.closed_flushes
    }
    fn wiring(&self) -> MutexGuard<'_, Wiring> {
        self.wiring.lock().expect("no panic while wiring")
    }

    /// The inline threshold in use (the profile's, lowered to what the device accepts).
    pub fn inline_bytes(&self) -> u32 {
        self.dev.inline_bytes
    }

    /// Times a revoke or grant had to fall back to the RESET → INIT → RTR → RTS cycle.
    pub fn fallback_cycles(&self) -> u64 {
        self.wiring().fallback_cycles
    }

    /// Times a revocation could not deregister the writer's region and reset its responders
    /// instead (0 unless the device refused `ibv_dereg_mr`).
    pub fn fence_failures(&self) -> u64 {
        self.wiring().fence_failures
    }

    /// Makes every later grant and revoke in this cluster take the fallback (RESET, then
    /// INIT → RTR → RTS at the poster's reconnect) instead of the access-flags switch, as on a
    /// device that refuses `IBV_QP_ACCESS_FLAGS` in RTS.
    pub fn force_fallback(&self, on: bool) {
        self.wiring().force_fallback = on;
    }

    /// Makes `node` unreachable for everyone (its responders go to RESET).
    pub fn isolate(&self, node: NodeId) {
        self.wiring().isolate(node);
    }

    /// Work requests posted and not completed yet.
    pub fn outstanding(&self) -> usize {
        let waiting: usize = self.connecting.values().map(|c| c.queued.len()).sum();
        self.pending.len() - self.free.len() + waiting
    }

    fn finish(&mut self, wr_id: u64, result: Result<Option<Vec<u8>>, FabricError>) {
        self.completions.push(Completion { wr_id, result });
    }

    /// Creates the initiator of `key` and connects it through the owner's half.
    fn connect(&mut self, key: LinkKey) -> Result<(), RdmaError> {
        let qp = self
            .new_initiator()
            .map_err(verbs("ibv_create_qp (initiator)"))?;
        self.bring_up_initiator(key, qp)
    }

    fn bring_up_initiator(&mut self, key: LinkKey, qp: QueuePair<Reset>) -> Result<(), RdmaError> {
        let dev = self.dev.clone();
        let (remote, remotes, psn) = {
            let mut w = self.wiring();
            let psn = w.psn();
            let (remote, remotes) = w.accept(key, dev.endpoint(qp.qp_num(), psn))?;
            (remote, remotes, psn)
        };
        // The initiator gives its peer no rights: it shares the protection domain of our log.
        let qp = bring_up(&dev, qp, AccessFlags::NONE, &remote, psn)
            .map_err(verbs("initiator RESET->INIT->RTR->RTS"))?;
        self.conns.insert(
            key,
            Conn {
                qp: Some(Qp::Rts(qp)),
                remotes,
                outstanding: 0,
                broken: None,
            },
        );
        Ok(())
    }

    /// Waits for every completion of `key`'s connection (a connection in error flushes at once),
    /// then resets both queue pairs and connects them again.
    fn reconnect(&mut self, key: LinkKey) -> Result<(), RdmaError> {
        let qp = self.drain_and_reset(key)?;
        self.bring_up_initiator(key, qp)
    }

    /// Waits for every completion of `key`'s connection, removes it, and returns its initiator
    /// reset (or a new one).
    fn drain_and_reset(&mut self, key: LinkKey) -> Result<QueuePair<Reset>, RdmaError> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.conns[&key].outstanding > 0 {
            assert!(
                Instant::now() < deadline,
                "a connection in error did not flush within {DRAIN_LIMIT:?}"
            );
            self.poll_device();
        }
        let conn = self
            .conns
            .remove(&key)
            .expect("reconnect of a known connection");
        let qp = match conn.qp.map(Qp::into_reset) {
            Some(Ok(qp)) => qp,
            // Gone or not resettable: a new one.
            _ => self
                .new_initiator()
                .map_err(verbs("ibv_create_qp (initiator)"))?,
        };
        Ok(qp)
    }

    /// Starts the handshake of `key` with its owner in another process (`qp`: an initiator to
    /// reuse, reset), with `post` as the first one waiting for it.
    fn start_connect(&mut self, key: LinkKey, qp: Option<QueuePair<Reset>>, post: Post) {
        // Over rdma_cm every attempt gets a new initiator: the CM refuses a queue-pair number it
        // still holds in a time-wait as a stale connection.
        let reuse = !matches!(self.net, Some(Handshake::Cm(_)));
        let qp = match qp {
            Some(qp) if reuse => qp,
            _ => match self.new_initiator() {
                Ok(qp) => qp,
                Err(_) => return self.finish(post.wr_id, Err(FabricError::Unreachable)),
            },
        };
        let psn = self.wiring().psn();
        let endpoint = self.dev.endpoint(qp.qp_num(), psn);
        let Some(net) = self.net.as_mut() else {
            return self.finish(post.wr_id, Err(FabricError::Unreachable));
        };
        let nonce = net.request(key, &endpoint);
        self.connecting.insert(
            key,
            Connecting {
                qp,
                psn,
                nonce,
                since: Instant::now(),
                queued: vec![post],
            },
        );
    }

    /// Serves the handshake endpoint now (see [`RdmaFabric::serve_handshakes`]): for a daemon
    /// in a long burst of posts, which polls no completions meanwhile, so that peers' connection
    /// requests (a control plane's watch lane among them) are not left waiting until it ends.
    pub fn serve_connections(&mut self) {
        self.serve_connections_at(Instant::now());
    }

    fn serve_connections_at(&mut self, now: Instant) {
        if self.net.is_some() {
            self.next_serve = now + SERVE_EVERY;
            self.serve_handshakes();
        }
    }

    /// Serves the handshake endpoint: answers peers' requests for our memory, completes our
    /// connections whose answer came (their waiting posts go out), and fails those whose owner
    /// did not answer in time.
    fn serve_handshakes(&mut self) {
        let Some(net) = self.net.as_mut() else {
            return;
        };
        let mut answers = std::mem::take(&mut self.answers);
        let mut closed = std::mem::take(&mut self.closed);
        net.serve(&self.wiring, &mut answers, &mut closed);
        for key in closed.drain(..) {
            // The owner's end is gone (its process ended): fail what is in flight now, by a
            // flush, instead of after the transport's retries; posts then reconnect as after
            // any failure.
            if let Some(conn) = self.conns.get_mut(&key) {
                if conn.broken.is_none() {
                    if let Some(Qp::Rts(qp)) = conn.qp.as_mut() {
                        if qp.flush().is_ok() {
                            conn.broken = Some(FabricError::Unreachable);
                            self.closed_flushes += 1;
                        }
                    }
                }
            }
        }
        self.closed = closed;
        for a in answers.drain(..) {
            let matches = self
                .connecting
                .get(&a.key)
                .is_some_and(|c| c.nonce == a.nonce);
            if !matches {
                continue; // an answer to a request given up on
            }
            let c = self.connecting.remove(&a.key).expect("matched above");
            let up = a.result.and_then(|(remote, remotes)| {
                bring_up(&self.dev, c.qp, AccessFlags::NONE, &remote, c.psn)
                    .ok()
                    .map(|qp| (qp, remotes))
            });
            match up {
                Some((qp, remotes)) => {
                    self.conns.insert(
                        a.key,
                        Conn {
                            qp: Some(Qp::Rts(qp)),
                            remotes,
                            outstanding: 0,
                            broken: None,
                        },
                    );
                    for p in c.queued {
                        self.post(p);
                    }
                }
                None => {
                    for p in c.queued {
                        self.finish(p.wr_id, Err(FabricError::Unreachable));
                    }
                }
            }
        }
        self.answers = answers;
        if self.connecting.is_empty() {
            return;
        }
        let timeout = self
            .net
            .as_ref()
            .map_or(net::CONNECT_TIMEOUT, Handshake::connect_timeout);
        let late: Vec<LinkKey> = self
            .connecting
            .iter()
            .filter(|(_, c)| c.since.elapsed() >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            let c = self.connecting.remove(&k).expect("listed above");
            for p in c.queued {
                self.finish(p.wr_id, Err(FabricError::Unreachable));
            }
        }
    }

    /// The handshake endpoint's counters (a daemon's fabric only).
    pub fn net_stats(&self) -> Option<&net::NetStats> {
        self.net.as_ref().map(Handshake::stats)
    }

    /// Posts `post`; its completion comes from [`RdmaFabric::poll`]. Never blocks for long: a
    /// full send queue is waited out by polling completions.
    pub fn post(&mut self, post: Post) {
        if post.target as usize >= self.nodes {
            return self.finish(post.wr_id, Err(FabricError::Unreachable));
        }
        let region = post.op.region();
        if self.control_lane == Lane::Watch && region == Region::Log {
            // A watcher (a control plane) reads control blocks and nothing else.
            return self.finish(post.wr_id, Err(FabricError::Permission));
        }
        let key = LinkKey {
            src: self.me,
            dst: post.target,
            lane: match region {
                Region::Control => self.control_lane,
                Region::Log => Lane::Data(post.ballot),
            },
        };
        let size = match region {
            Region::Control => CB_BYTES,
            Region::Log => self.log_bytes,
        };
        let (offset, len) = match &post.op {
            Op::Write { offset, bytes, .. } => (*offset, bytes.len()),
            Op::Read { offset, len, .. } => (*offset, *len),
        };
        if offset.checked_add(len).is_none_or(|end| end > size) || len == 0 {
            return self.finish(post.wr_id, Err(FabricError::Permission));
        }
        if let Some(c) = self.connecting.get_mut(&key) {
            if c.queued.len() >= MAX_QUEUED {
                return self.finish(post.wr_id, Err(FabricError::Unreachable));
            }
            c.queued.push(post);
            return;
        }
        let remote = !self.wiring().owns(key.dst);
        match self.conns.get(&key).map(|c| c.broken) {
            None if remote => return self.start_connect(key, None, post),
            None => {
                if self.connect(key).is_err() {
                    return self.finish(post.wr_id, Err(FabricError::Unreachable));
                }
            }
            Some(Some(err)) => {
                // Control connections heal on their own; data connections on request.
                if !(post.reconnect || matches!(key.lane, Lane::Control | Lane::Watch)) {
                    return self.finish(post.wr_id, Err(err));
                }
                if remote {
                    return match self.drain_and_reset(key) {
                        Ok(qp) => self.start_connect(key, Some(qp), post),
                        Err(_) => self.finish(post.wr_id, Err(FabricError::Unreachable)),
                    };
                }
                if self.reconnect(key).is_err() {
                    return self.finish(post.wr_id, Err(FabricError::Unreachable));
                }
            }
            Some(None) => {}
        }
        // Room in the send queue and in the completion queue (the clock is read only when
        // there is none: a post's path on a software device is mostly the poster's CPU).
        let mut deadline = None;
        while self.conns[&key].outstanding >= self.dev.caps.max_send_wr || self.free.is_empty() {
            let now = Instant::now();
            assert!(
                now < *deadline.get_or_insert(now + DRAIN_LIMIT),
                "no completion within {DRAIN_LIMIT:?}"
            );
            self.poll_device();
        }
        let conn = &self.conns[&key];
        let remote = match (conn.remotes, &post.op) {
            (Remotes::Log { read, .. }, Op::Read { .. }) => offset_in(read, offset),
            (Remotes::Log { write, .. }, Op::Write { .. }) => offset_in(write, offset),
            (Remotes::Control { read, .. }, Op::Read { .. }) => offset_in(read, offset),
            (Remotes::Control { read, request, ack }, Op::Write { .. }) => {
                let me = self.me;
                if !peer_may_write_control(me, offset, len) {
                    // Through the read-only region: the owner's HCA refuses it.
                    offset_in(read, offset)
                } else if offset >= cb_ack(me) {
                    offset_in(ack, offset - cb_ack(me))
                } else {
                    offset_in(request, offset - cb_request(me))
                }
            }
        };
        let slot = self.free.pop().expect("room checked above");
        let flags = SendFlags::SIGNALED;
        let (landing, posted) = match &post.op {
            Op::Write { bytes, .. } if bytes.len() <= self.dev.inline_bytes as usize => {
                let qp = rts(&self.conns[&key]);
                let r = qp.post_write_inline(u64::from(slot), bytes, remote, flags);
                (Landing::None, r)
            }
            Op::Write { bytes, .. } => match self.land(bytes.len()) {
                Ok(landing) => {
                    self.landing_store(&landing, bytes);
                    let r = match self.landing_slice(&landing) {
                        Ok(local) => {
                            rts(&self.conns[&key]).post_write(u64::from(slot), local, remote, flags)
                        }
                        Err(e) => Err(e),
                    };
                    (landing, r)
                }
                Err(_) => (
                    Landing::None,
                    Err(ibverbs::Error::InvalidArgument("staging")),
                ),
            },
            Op::Read { len, .. } => match self.land(*len) {
                Ok(landing) => {
                    let r = match self.landing_slice(&landing) {
                        Ok(local) => {
                            rts(&self.conns[&key]).post_read(u64::from(slot), local, remote, flags)
                        }
                        Err(e) => Err(e),
                    };
                    (landing, r)
                }
                Err(_) => (
                    Landing::None,
                    Err(ibverbs::Error::InvalidArgument("staging")),
                ),
            },
        };
        if posted.is_err() {
            self.free.push(slot);
            self.release(landing);
            let conn = self.conns.get_mut(&key).expect("connected above");
            let err = *conn.broken.get_or_insert(FabricError::Unreachable);
            return self.finish(post.wr_id, Err(err));
        }
        self.conns
            .get_mut(&key)
            .expect("connected above")
            .outstanding += 1;
        self.pending[slot as usize] = Some(Pending {
            wr_id: post.wr_id,
            key,
            read: matches!(post.op, Op::Read { .. }),
            landing,
        });
    }

    /// A staging range of `len` bytes, or a region of its own when the staging buffer is full.
    fn land(&mut self, len: usize) -> Result<Landing, RdmaError> {
        if let Some(offset) = self.staging.alloc(len) {
            return Ok(Landing::Staging { offset, len });
        }
        let buf = Arc::new(Buffer::new(len)?);
        Ok(Landing::Own(Registered::new(
            &self.pd,
            &buf,
            0,
            len,
            AccessFlags::LOCAL_WRITE,
        )?))
    }

    fn landing_slice<'a>(&'a self, landing: &'a Landing) -> Result<LocalSlice<'a>, ibverbs::Error> {
        match landing {
            Landing::Staging { offset, len } => self.staging.region.mr.slice(*offset, *len),
            Landing::Own(r) => r.mr.slice(0, r.mr.len()),
            Landing::None => Err(ibverbs::Error::InvalidArgument("no landing")),
        }
    }

    fn landing_store(&self, landing: &Landing, bytes: &[u8]) {
        match landing {
            Landing::Staging { offset, .. } => self.staging.region.buf.store(*offset, bytes),
            Landing::Own(r) => r.buf.store(0, bytes),
            Landing::None => {}
        }
    }

    fn landing_load(&self, landing: &Landing, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        match landing {
            Landing::Staging { offset, .. } => self.staging.region.buf.load(*offset, &mut out),
            Landing::Own(r) => r.buf.load(0, &mut out),
            Landing::None => {}
        }
        out
    }

    fn release(&mut self, landing: Landing) {
        if let Landing::Staging { .. } = landing {
            self.staging.release();
        }
    }

    /// Polls the completion queue once and maps what it finds to completions.
    fn poll_device(&mut self) -> usize {
        let mut wcs = std::mem::take(&mut self.wcs);
        let n = self.cq.poll(&mut wcs).unwrap_or(0);
        for wc in &wcs[..n] {
            let slot = wc.wr_id() as usize;
            let p = self.pending[slot]
                .take()
                .expect("a completion of an outstanding request");
            self.free.push(slot as u32);
            let conn = self.conns.get_mut(&p.key).expect("its connection");
            conn.outstanding -= 1;
            let result = match wc.status() {
                WcStatus::Success => Ok(None),
                status => {
                    let err = match status {
                        s if s.is_remote_permission_error() => FabricError::Permission,
                        WcStatus::WrFlushErr => conn.broken.unwrap_or(FabricError::Unreachable),
                        _ => FabricError::Unreachable,
                    };
                    Err(*conn.broken.get_or_insert(err))
                }
            };
            let result = match result {
                Ok(_) if p.read => {
                    let len = match &p.landing {
                        Landing::Staging { len, .. } => *len,
                        Landing::Own(r) => r.mr.len(),
                        Landing::None => 0,
                    };
                    Ok(Some(self.landing_load(&p.landing, len)))
                }
                other => other,
            };
            self.release(p.landing);
            self.finish(p.wr_id, result);
        }
        self.wcs = wcs;
        n
    }

    /// The completions of everything finished so far (polls the device once).
    pub fn poll(&mut self) -> Vec<Completion> {
        let mut out = Vec::new();
        self.poll_into(&mut out);
        out
    }

    /// [`RdmaFabric::poll`] appending to `out`: no allocation once `out` and the fabric's own
    /// completion buffer have grown to a turn's worth (the data plane's loop).
    pub fn poll_into(&mut self, out: &mut Vec<Completion>) {
        // The device first: the poll that follows a post is on its command's path.
        let found = self.poll_device();
        // The handshake endpoint costs a system call per look: every `SERVE_EVERY` (peers'
        // requests wait that long at most), or at every poll while one of ours is under way.
        // A poll that found completions leaves a due look to the next poll, unless the look
        // is a whole period late (a stream of completions does not keep peers waiting).
        let now = Instant::now();
        let due = if found == 0 {
            now >= self.next_serve
        } else {
            now >= self.next_serve + SERVE_EVERY
        };
        if due || !self.connecting.is_empty() {
            self.serve_connections_at(now);
        }
        out.append(&mut self.completions);
    }
}

fn offset_in(base: RemoteAddr, offset: usize) -> RemoteAddr {
    RemoteAddr {
        addr: base.addr + offset as u64,
        rkey: base.rkey,
    }
}

fn rts(conn: &Conn) -> &QueuePair<Rts> {
    match conn.qp.as_ref() {
        Some(Qp::Rts(qp)) => qp,
        _ => unreachable!("a usable connection's initiator is in RTS"),
    }
}

impl LocalMemory for RdmaFabric {
    fn id(&self) -> NodeId {
        self.me
    }

    fn read_control(&self, offset: usize, buf: &mut [u8]) {
        self.control.load(offset, buf);
    }

    fn control_word(&self, offset: usize) -> u64 {
        self.control.word(offset).load(Ordering::Acquire)
    }

    fn set_control_word(&mut self, offset: usize, value: u64) {
        self.control.word(offset).store(value, Ordering::Release);
    }

    fn log_len(&self) -> usize {
        self.log_bytes
    }

    fn read_log(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= self.log_bytes);
        self.log.load(offset, buf);
    }

    fn log_word(&self, offset: usize) -> u64 {
        self.log.word(offset).load(Ordering::Acquire)
    }

    fn write_log_owner(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.log_bytes);
        self.log.store(offset, bytes);
    }

    fn write_log_as_holder(
        &mut self,
        ballot: Ballot,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), FabricError> {
        let holder = self.wiring().node(self.me).holder;
        if holder != Some(ballot) || ballot.node() != self.me {
            return Err(FabricError::Permission);
        }
        self.write_log_owner(offset, bytes);
        Ok(())
    }

    fn grant(&mut self, peer: NodeId, ballot: Ballot) {
        assert_eq!(ballot.node(), peer, "a ballot belongs to its node");
        let me = self.me;
        self.wiring().set_holder(me, Some(ballot));
    }

    fn revoke(&mut self, peer: NodeId) {
        let me = self.me;
        let mut w = self.wiring();
        let holder = w.node(me).holder.filter(|b| b.node() != peer);
        w.set_holder(me, holder);
    }

    fn writers(&self) -> Vec<(NodeId, Ballot)> {
        self.wiring()
            .node(self.me)
            .holder
            .map(|b| vec![(b.node(), b)])
            .unwrap_or_default()
    }
}

/// How long the floor waits for one reply.
const FLOOR_REPLY_LIMIT: Duration = Duration::from_secs(5);

/// One side of the floor's ping-pong: its queue pair, the region the peer writes into and the
/// region it writes from.
struct FloorSide {
    qp: QueuePair<Rts>,
    cq: CompletionQueue,
    inbox: Registered,
    outbox: Registered,
    peer: RemoteAddr,
    inline: bool,
    bytes: usize,
}

impl FloorSide {
    /// The word that carries the round number: the last aligned word of the message, which an
    /// RDMA WRITE of one packet places last (as ib_write_lat polls the last byte).
    fn seq_at(&self) -> usize {
        (self.bytes / 8 - 1) * 8
    }

    fn send(&self, round: u64) -> Result<(), RdmaError> {
        let at = self.seq_at();
        self.outbox.buf.word(at).store(round, Ordering::Release);
        let flags = SendFlags::SIGNALED;
        if self.inline {
            let mut msg = vec![0u8; self.bytes];
            self.outbox.buf.load(0, &mut msg);
            self.qp.post_write_inline(round, &msg, self.peer, flags)
        } else {
            let local = self
                .outbox
                .mr
                .slice(0, self.bytes)
                .map_err(verbs("floor slice"))?;
            self.qp.post_write(round, local, self.peer, flags)
        }
        .map_err(verbs("ibv_post_send (floor)"))
    }

    fn wait_for(&self, round: u64) -> Result<(), RdmaError> {
        let word = self.inbox.buf.word(self.seq_at());
        let deadline = Instant::now() + FLOOR_REPLY_LIMIT;
        let mut spins = 0u32;
        while word.load(Ordering::Acquire) != round {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) && Instant::now() > deadline {
                return Err(RdmaError::NoReply {
                    round: round as usize,
                    limit: FLOOR_REPLY_LIMIT,
                });
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    /// Takes the completion of the last write (signaled, so the send queue never fills).
    fn reap(&self) -> Result<(), RdmaError> {
        let mut wc = [WorkCompletion::default(); 1];
        let deadline = Instant::now() + FLOOR_REPLY_LIMIT;
        loop {
            if self.cq.poll(&mut wc).map_err(verbs("ibv_poll_cq"))? == 1 {
                return match wc[0].status() {
                    WcStatus::Success => Ok(()),
                    status => Err(RdmaError::Failed {
                        status: format!("{status:?}"),
                    }),
                };
            }
            if Instant::now() > deadline {
                return Err(RdmaError::NoReply {
                    round: wc[0].wr_id() as usize,
                    limit: FLOOR_REPLY_LIMIT,
                });
            }
        }
    }
}

/// Two connected RC queue pairs on the profile's device, each with an inbox the other writes
/// and an outbox it writes from (the floor's two sides).
fn floor_pair(settings: &RdmaSettings, bytes: usize) -> Result<(FloorSide, FloorSide), RdmaError> {
    if bytes < 8 || !bytes.is_multiple_of(8) || bytes > 1 << 20 {
        return Err(RdmaError::Setting {
            field: "floor bytes",
            value: bytes.to_string(),
            why: "must be a multiple of 8 between 8 and 1 MiB",
        });
    }
    let dev = Device::open(settings)?;
    let pd = dev.ctx.alloc_pd().map_err(verbs("ibv_alloc_pd"))?;
    let mut sides = Vec::new();
    let mut qps = Vec::new();
    for _ in 0..2 {
        let cq = dev.ctx.create_cq(16).map_err(verbs("ibv_create_cq"))?;
        let inbox = Arc::new(Buffer::new(bytes)?);
        let outbox = Arc::new(Buffer::new(bytes)?);
        let inbox = Registered::new(&pd, &inbox, 0, bytes, WRITABLE)?;
        let outbox = Registered::new(&pd, &outbox, 0, bytes, AccessFlags::LOCAL_WRITE)?;
        let qp = QueuePair::create_rc(&pd, &cq, &cq, dev.caps).map_err(verbs("ibv_create_qp"))?;
        qps.push(qp);
        sides.push((cq, inbox, outbox));
    }
    let (qp_b, qp_a) = (qps.pop().unwrap(), qps.pop().unwrap());
    let (ep_a, ep_b) = (
        dev.endpoint(qp_a.qp_num(), 0x1000),
        dev.endpoint(qp_b.qp_num(), 0x2000),
    );
    let qp_a = bring_up(&dev, qp_a, WRITABLE, &ep_b, ep_a.psn)
        .map_err(verbs("floor RESET->INIT->RTR->RTS"))?;
    let qp_b = bring_up(&dev, qp_b, WRITABLE, &ep_a, ep_b.psn)
        .map_err(verbs("floor RESET->INIT->RTR->RTS"))?;
    let (cq_b, inbox_b, outbox_b) = sides.pop().unwrap();
    let (cq_a, inbox_a, outbox_a) = sides.pop().unwrap();
    let inline = bytes <= dev.inline_bytes as usize;
    let a = FloorSide {
        peer: inbox_b.mr.remote(0).map_err(verbs("floor region"))?,
        qp: qp_a,
        cq: cq_a,
        inbox: inbox_a,
        outbox: outbox_a,
        inline,
        bytes,
    };
    let b = FloorSide {
        peer: a.inbox.mr.remote(0).map_err(verbs("floor region"))?,
        qp: qp_b,
        cq: cq_b,
        inbox: inbox_b,
        outbox: outbox_b,
        inline,
        bytes,
    };
    Ok((a, b))
}

/// One signaled RDMA WRITE of `bytes` to its completion, `rounds` times (after 100 warm-up
/// rounds), one at a time on one queue pair: what a poster waits for when it counts a write
/// (the floor's ping-pong instead watches the peer's memory, as ib_write_lat does).
pub fn write_completion_ns(
    settings: &RdmaSettings,
    bytes: usize,
    rounds: usize,
) -> Result<Vec<u64>, RdmaError> {
    let (a, _b) = floor_pair(settings, bytes)?;
    const WARMUP: usize = 100;
    let mut ns = Vec::with_capacity(rounds);
    for round in 1..=(WARMUP + rounds) as u64 {
        let t = Instant::now();
        a.send(round)?;
        a.reap()?;
        if round as usize > WARMUP {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(ns)
}

/// The fabric's floor for `rapax bench` (DESIGN.md §8): a ping-pong of RDMA WRITEs of `bytes`
/// (at least 8, a multiple of 8) between two RC queue pairs on the profile's device, like
/// `ib_write_lat`: each side busy-polls its memory for the peer's write of round n and writes
/// round n back. Returns the nanoseconds of each of `rounds` round trips (after 100 warm-up
/// rounds), measured at the side that starts each round. Writes up to the inline threshold are
/// posted inline. The answering side runs on a thread of its own.
pub fn write_floor_ns(
    settings: &RdmaSettings,
    bytes: usize,
    rounds: usize,
) -> Result<Vec<u64>, RdmaError> {
    let (a, b) = floor_pair(settings, bytes)?;
    const WARMUP: usize = 100;
    let total = (WARMUP + rounds) as u64;
    let echo = std::thread::spawn(move || -> Result<(), RdmaError> {
        for round in 1..=total {
            b.wait_for(round)?;
            b.send(round)?;
            b.reap()?;
        }
        Ok(())
    });
    let mut ns = Vec::with_capacity(rounds);
    let mut result = Ok(());
    for round in 1..=total {
        let t = Instant::now();
        if let Err(e) = a.send(round).and_then(|()| a.wait_for(round)) {
            result = Err(e);
            break;
        }
        let elapsed = t.elapsed().as_nanos() as u64;
        if let Err(e) = a.reap() {
            result = Err(e);
            break;
        }
        if round as usize > WARMUP {
            ns.push(elapsed);
        }
    }
    let echoed = echo.join().expect("the floor's echo thread does not panic");
    result.and(echoed)?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::contract::{self, ContractHarness};
    use crate::protocol::layout::CB_HEARTBEAT;
    use crate::testing::wait_until;

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };

    /// The device to test on (`RAPAX_RDMA_DEVICE`, else the soft-RoCE lane's
    /// `RAPAX_SOFTROCE_DEVICE`, else the first device), or why the tests skip.
    fn settings() -> Result<RdmaSettings, String> {
        let devices = ibverbs::devices().map_err(|e| e.to_string())?;
        let env = |a: &str, b: &str| std::env::var(a).or_else(|_| std::env::var(b)).ok();
        let device = env("RAPAX_RDMA_DEVICE", "RAPAX_SOFTROCE_DEVICE")
            .or_else(|| devices.first().map(|d| d.name.clone()))
            .ok_or("no RDMA device (run it in the soft-RoCE VM: tools/softroce.sh)")?;
        let gid_index = env("RAPAX_RDMA_GID_INDEX", "RAPAX_SOFTROCE_GID_INDEX")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Ok(RdmaSettings {
            device,
            port: 1,
            gid_index,
            inline_bytes: 64,
            max_send_wr: 128,
            mtu_bytes: 1024,
            // About 16 ms per try, 2 retries: an unreachable peer fails in well under a second.
            ack_timeout_exponent: 12,
            retry_count: 2,
            staging_bytes: 64 << 10,
            hugepages: false,
        })
    }

    macro_rules! device_or_skip {
        ($test:literal) => {
            match settings() {
                Ok(s) => s,
                Err(why) => {
                    println!("skipped {}: {why}", $test);
                    return;
                }
            }
        };
    }

    struct RdmaHarness {
        nodes: Vec<RdmaFabric>,
    }

    impl ContractHarness for RdmaHarness {
        fn geometry(&self) -> LogGeometry {
            GEO
        }

        fn post(&mut self, src: NodeId, post: Post) {
            self.nodes[src as usize].post(post);
        }

        fn step(&mut self) -> Vec<(NodeId, Completion)> {
            let mut done = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                done.extend(n.poll().into_iter().map(|c| (i as NodeId, c)));
            }
            done
        }

        fn drain(&mut self) -> Vec<(NodeId, Completion)> {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut done = self.step();
            while self.nodes.iter().any(|n| n.outstanding() > 0) {
                assert!(
                    Instant::now() < deadline,
                    "contract 4: drain hung: outstanding per node {:?}",
                    self.nodes
                        .iter()
                        .map(|n| n.outstanding())
                        .collect::<Vec<_>>()
                );
                done.extend(self.step());
            }
            done.extend(self.step());
            done
        }

        fn memory(&mut self, node: NodeId) -> &mut dyn LocalMemory {
            &mut self.nodes[node as usize]
        }

        fn isolate(&mut self, node: NodeId) {
            self.nodes[node as usize].isolate(node);
        }
    }

    #[test]
    fn the_contract_holds_on_rdma() {
        let s = device_or_skip!("the_contract_holds_on_rdma");
        let t = Instant::now();
        let mut runs = 0;
        contract::run_all(&mut || {
            runs += 1;
            Box::new(RdmaHarness {
                nodes: RdmaCluster::open(&s, 3, &GEO).expect("an rdma cluster on the device"),
            })
        });
        println!(
            "contract suite on rdma ({}): {runs} harnesses, every check passed in {:?}",
            s.device,
            t.elapsed()
        );
    }

    /// The address rdma_cm tests listen on (`RAPAX_RDMA_CM_ADDR`, an address of the RDMA
    /// netdev; the soft-RoCE lane sets it), or why they skip.
    fn cm_ip() -> Result<std::net::IpAddr, String> {
        let v = std::env::var("RAPAX_RDMA_CM_ADDR").map_err(|_| {
            "RAPAX_RDMA_CM_ADDR is not set (rdma_cm needs an address of the RDMA netdev)"
        })?;
        v.parse()
            .map_err(|e| format!("RAPAX_RDMA_CM_ADDR {v:?}: {e}"))
    }

    /// `n` nodes opened each as a daemon opens its own (a device context and memory of its own,
    /// only its responders in its wiring), connected through rdma_cm listeners on `ip` (fresh
    /// ports on every call), with the listeners' addresses.
    fn cm_nodes(
        s: &RdmaSettings,
        ip: std::net::IpAddr,
        n: usize,
        cluster_id: u64,
    ) -> (Vec<RdmaFabric>, Vec<std::net::SocketAddr>) {
        static ROUND: AtomicU64 = AtomicU64::new(0);
        let round = ROUND.fetch_add(1, Ordering::Relaxed) % 30;
        let base = 20_000 + (u64::from(std::process::id()) % 400) * 100 + round * 3;
        let addrs: Vec<std::net::SocketAddr> = (0..n as u64)
            .map(|id| std::net::SocketAddr::new(ip, (base + id) as u16))
            .collect();
        let nodes = (0..n as NodeId)
            .map(|me| {
                let peers: Vec<(NodeId, std::net::SocketAddr)> = (0..n as NodeId)
                    .filter(|&p| p != me)
                    .map(|p| (p, addrs[p as usize]))
                    .collect();
                let net = cm_net::CmNet::bind(addrs[me as usize], me, cluster_id, &peers)
                    .expect("an rdma_cm listener on RAPAX_RDMA_CM_ADDR");
                RdmaFabric::open_node(s, me, n, &GEO, Handshake::Cm(Box::new(net)))
                    .expect("a node on the device")
            })
            .collect();
        (nodes, addrs)
    }

    /// The contract suite between nodes opened as the daemons open them and connected as the
    /// daemons connect: through rdma_cm, the exchange in the connect's private data.
    #[test]
    fn the_contract_holds_over_rdma_cm_connections() {
        let s = device_or_skip!("the_contract_holds_over_rdma_cm_connections");
        let ip = match cm_ip() {
            Ok(ip) => ip,
            Err(why) => {
                return println!("skipped the_contract_holds_over_rdma_cm_connections: {why}")
            }
        };
        let t = Instant::now();
        let mut runs = 0;
        contract::run_all(&mut || {
            runs += 1;
            Box::new(RdmaHarness {
                nodes: cm_nodes(&s, ip, 3, 77).0,
            })
        });
        // One more round by hand, to read the owner's counters afterwards: node 1 writes node
        // 0's log under a grant, node 2 reads it back.
        let (mut nodes, _) = cm_nodes(&s, ip, 3, 77);
        let ballot = Ballot::new(4, 1);
        nodes[0].grant(1, ballot);
        for (src, op) in [
            (
                1,
                Op::Write {
                    region: Region::Log,
                    offset: 64,
                    bytes: vec![7; 64],
                },
            ),
            (
                2,
                Op::Read {
                    region: Region::Log,
                    offset: 64,
                    len: 64,
                },
            ),
        ] {
            nodes[src].post(Post {
                wr_id: 1,
                target: 0,
                op,
                reconnect: false,
                ballot,
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            let done = loop {
                let mut got = Vec::new();
                for n in nodes.iter_mut() {
                    got.extend(n.poll());
                }
                if let Some(c) = got.pop() {
                    break c;
                }
                assert!(Instant::now() < deadline, "no completion over rdma_cm");
            };
            match src {
                1 => assert_eq!(done.result, Ok(None), "the granted write"),
                _ => assert_eq!(done.result, Ok(Some(vec![7; 64])), "the read of it"),
            }
        }
        let accepted = nodes[0].net_stats().expect("a daemon's fabric").accepted;
        assert!(accepted >= 2, "node 0 accepted both peers through rdma_cm");
        println!(
            "contract suite over rdma_cm ({}, {ip}): {runs} harnesses passed in {:?}; node 0 \
             then accepted {accepted} connections",
            s.device,
            t.elapsed()
        );
    }

    /// Polls every fabric until `want` of `watcher`'s completions arrived (a hang guard of 20 s).
    fn completions_of(
        watcher: &mut RdmaFabric,
        others: &mut [RdmaFabric],
        want: usize,
    ) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < want {
            assert!(Instant::now() < deadline, "no completion: {got:?}");
            for n in others.iter_mut() {
                n.poll();
            }
            got.extend(watcher.poll());
        }
        got
    }

    /// A control plane's watcher reads a member's control block over rdma_cm on a lane the
    /// owner opens for reading only: its writes there are refused by the owner's queue pair, log
    /// operations by the watcher itself; when the owner's process ends (its rdma_cm end closes),
    /// the watcher's connection is flushed at once and the next read fails as unreachable.
    #[test]
    fn a_watcher_reads_control_blocks_only_and_sees_an_owner_go() {
        const NAME: &str = "a_watcher_reads_control_blocks_only_and_sees_an_owner_go";
        let s = device_or_skip!("a_watcher_reads_control_blocks_only_and_sees_an_owner_go");
        let ip = match cm_ip() {
            Ok(ip) => ip,
            Err(why) => return println!("skipped {NAME}: {why}"),
        };
        let (mut nodes, addrs) = cm_nodes(&s, ip, 2, 77);
        nodes[0].set_control_word(CB_HEARTBEAT, 4242);
        let peers = [(0, addrs[0])];
        let net = cm_net::CmNet::connector(1, 77, &peers).expect("an rdma_cm channel");
        let mut watcher =
            RdmaFabric::open_watcher(&s, 1, 2, Handshake::Cm(Box::new(net))).expect("a watcher");
        let read = |wr_id| Post {
            wr_id,
            target: 0,
            op: Op::Read {
                region: Region::Control,
                offset: CB_HEARTBEAT,
                len: 8,
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        watcher.post(read(1));
        let c = completions_of(&mut watcher, &mut nodes, 1);
        assert_eq!(c[0].result, Ok(Some(4242u64.to_le_bytes().to_vec())));
        assert!(nodes[0].net_stats().unwrap().accepted >= 1);
        // Its own request word: writable on a data plane's control lane, not on a watch lane.
        watcher.post(Post {
            wr_id: 2,
            target: 0,
            op: Op::Write {
                region: Region::Control,
                offset: cb_request(1),
                bytes: vec![1; 8],
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        });
        watcher.post(Post {
            wr_id: 3,
            target: 0,
            op: Op::Read {
                region: Region::Log,
                offset: 0,
                len: 64,
            },
            reconnect: false,
            ballot: Ballot::new(1, 1),
        });
        let mut c = completions_of(&mut watcher, &mut nodes, 2);
        c.sort_by_key(|c| c.wr_id);
        assert_eq!(
            c[0].result,
            Err(FabricError::Permission),
            "write on a watch lane"
        );
        assert_eq!(
            c[1].result,
            Err(FabricError::Permission),
            "log read by a watcher"
        );
        assert_eq!(nodes[0].control_word(cb_request(1)), 0, "nothing landed");
        // The lane healed after the refusal: reads work again.
        watcher.post(read(4));
        let c = completions_of(&mut watcher, &mut nodes, 1);
        assert_eq!(c[0].result, Ok(Some(4242u64.to_le_bytes().to_vec())));
        // The owner goes: its rdma_cm ends close, the watcher flushes its connection.
        let gone = nodes.remove(0);
        drop(gone);
        let deadline = Instant::now() + Duration::from_secs(20);
        while watcher.closed_flushes() == 0 {
            assert!(
                Instant::now() < deadline,
                "the watcher never saw the owner go"
            );
            watcher.poll();
        }
        watcher.post(read(5));
        let c = completions_of(&mut watcher, &mut nodes, 1);
        assert_eq!(c[0].result, Err(FabricError::Unreachable));
    }

    /// Connect requests that are not a member's exchange (garbage, another cluster's) are
    /// rejected by the owner and counted, and the poster sees the refusal.
    #[test]
    fn rdma_cm_requests_that_are_no_exchange_are_rejected_and_counted() {
        const NAME: &str = "rdma_cm_requests_that_are_no_exchange_are_rejected_and_counted";
        let s = device_or_skip!("rdma_cm_requests_that_are_no_exchange_are_rejected_and_counted");
        let ip = match cm_ip() {
            Ok(ip) => ip,
            Err(why) => return println!("skipped {NAME}: {why}"),
        };
        let (mut nodes, addrs) = cm_nodes(&s, ip, 2, 77);
        let mut stranger = ibverbs::CmExchange::new(None).expect("an rdma_cm channel");
        let key = LinkKey {
            src: 1,
            dst: 0,
            lane: Lane::Control,
        };
        let endpoint = Endpoint {
            qp_num: 1,
            psn: 1,
            lid: 0,
            gid: Gid::default(),
        };
        let mut other_cluster = Vec::new();
        other_cluster.extend_from_slice(&[1, key.src, key.dst, 0]);
        other_cluster.extend_from_slice(&78u64.to_le_bytes());
        other_cluster.extend_from_slice(&0u64.to_le_bytes());
        other_cluster.extend_from_slice(&endpoint.qp_num.to_le_bytes());
        other_cluster.extend_from_slice(&endpoint.psn.to_le_bytes());
        other_cluster.extend_from_slice(&endpoint.lid.to_le_bytes());
        other_cluster.extend_from_slice(&endpoint.gid.0);
        // Distinct QP numbers: the owner's CM takes a second request with the same one from
        // the same device for a stale duplicate and refuses it itself.
        let mut tokens: Vec<_> = [vec![0xEE; 9], other_cluster]
            .iter()
            .zip(1u32..)
            .map(|(data, qp_num)| {
                stranger
                    .connect(addrs[0], qp_num, data, 2000)
                    .expect("connect starts")
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while !tokens.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the owner never answered: {events:?}"
            );
            for n in nodes.iter_mut() {
                n.poll();
            }
            stranger.poll(&mut events);
            for e in events.drain(..) {
                match e {
                    ibverbs::CmExchangeEvent::Failed { token, .. } => {
                        tokens.retain(|t| *t != token)
                    }
                    other => panic!("a stranger's request must be refused, got {other:?}"),
                }
            }
        }
        let stats = nodes[0].net_stats().expect("a daemon's fabric");
        assert_eq!((stats.malformed, stats.accepted), (2, 0), "{stats:?}");
    }

    /// The same with writes above the inline threshold (staged, DMA-read by the HCA) and an
    /// inline threshold of 0: both paths keep the contract.
    #[test]
    fn the_contract_holds_without_inline_writes() {
        let mut s = device_or_skip!("the_contract_holds_without_inline_writes");
        s.inline_bytes = 0;
        contract::run_all(&mut || {
            Box::new(RdmaHarness {
                nodes: RdmaCluster::open(&s, 3, &GEO).unwrap(),
            })
        });
    }

    /// Waits (up to 20 s) until `owner`'s next write region for `writer` is registered ahead.
    fn wait_until_registered_ahead(f: &RdmaFabric, owner: NodeId, writer: NodeId) {
        wait_until(
            "a write region registered ahead",
            Duration::from_secs(20),
            || {
                f.wiring().nodes[owner as usize].as_mut().unwrap().data[writer as usize]
                    .as_mut()
                    .unwrap()
                    .ready_ahead()
            },
        );
    }

    fn registered_on_connect(f: &RdmaFabric, owner: NodeId, writer: NodeId) -> u64 {
        f.wiring().nodes[owner as usize].as_ref().unwrap().data[writer as usize]
            .as_ref()
            .unwrap()
            .registered_on_connect
    }

    /// After a revocation the writer's next write region is registered ahead, off the owner's
    /// thread, and its next connection (a new ballot, granted) takes that one: nothing is
    /// registered on the connection's path. The old key stays dead.
    #[test]
    fn a_revoked_writers_next_region_is_registered_ahead() {
        let s = device_or_skip!("a_revoked_writers_next_region_is_registered_ahead");
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        let write = |wr_id: u64, b: Ballot, fill: u8| Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: 128,
                bytes: vec![fill; 64],
            },
            reconnect: true,
            ballot: b,
        };
        for round in 1..=3u64 {
            let b = Ballot::new(round, 1);
            nodes[0].grant(1, b);
            nodes[1].post(write(round, b, round as u8));
            let c = completions_of(&mut nodes[1], &mut [], 1);
            assert_eq!(c[0].result, Ok(None), "round {round}: the holder writes");
            let mut landed = [0u8; 64];
            nodes[0].read_log(128, &mut landed);
            assert_eq!(landed, [round as u8; 64]);
            nodes[0].revoke(1);
            nodes[1].post(write(100 + round, b, 0xee));
            let c = completions_of(&mut nodes[1], &mut [], 1);
            assert_eq!(
                c[0].result,
                Err(FabricError::Permission),
                "round {round}: revoked"
            );
            wait_until_registered_ahead(&nodes[0], 0, 1);
        }
        assert_eq!(registered_on_connect(&nodes[0], 0, 1), 0);
    }

    /// Waits until every spare queue pair of `nodes` (their initiators' and, through the
    /// shared wiring, their responders') is created.
    fn wait_until_spares_ready(nodes: &mut [RdmaFabric]) {
        wait_until("spare queue pairs created", Duration::from_secs(20), || {
            let initiators = nodes
                .iter_mut()
                .all(|n| n.spares.iter_mut().all(SpareQp::is_ready));
            let mut w = nodes[0].wiring();
            // Every spare is looked at (each look takes a finished creation in).
            let responders = w
                .responder_spares()
                .fold(true, |all, (_, _, spare)| spare.is_ready() && all);
            initiators && responders
        });
    }

    /// Connections take queue pairs created ahead, on both ends, and the spares are made
    /// again for the next ones: a new ballot's writes to two followers at once (a hand-over's
    /// data connections) and a control read create none on their path. Without the registrar
    /// every one of them is created on the path, and counted.
    #[test]
    fn connections_take_queue_pairs_created_ahead() {
        let s = device_or_skip!("connections_take_queue_pairs_created_ahead");
        let write = |wr_id: u64, target: NodeId, b: Ballot| Post {
            wr_id,
            target,
            op: Op::Write {
                region: Region::Log,
                offset: 256,
                bytes: vec![wr_id as u8; 64],
            },
            reconnect: true,
            ballot: b,
        };
        let read_control = |wr_id: u64, target: NodeId| Post {
            wr_id,
            target,
            op: Op::Read {
                region: Region::Control,
                offset: 0,
                len: 8,
            },
            reconnect: true,
            ballot: Ballot::ZERO,
        };
        let qp_num = |qp: &Option<Qp>| match qp {
            Some(Qp::Rts(qp)) => qp.qp_num(),
            _ => panic!("a connection's queue pair is not in RTS"),
        };
        let responder_spare = |w: &Wiring, owner: NodeId, data: bool| {
            let n = w.nodes[owner as usize].as_ref().unwrap();
            let spare = if data {
                &n.data[1].as_ref().unwrap().spare
            } else {
                &n.control[1].as_ref().unwrap().spare
            };
            spare.ready.as_ref().map(QueuePair::qp_num)
        };
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        // A control connection first (node 1 keeps a spare per peer: a round's two data
        // connections use them).
        wait_until_spares_ready(&mut nodes);
        let initiator = nodes[1].spares[0].ready.as_ref().map(QueuePair::qp_num);
        let control_0 = responder_spare(&nodes[0].wiring(), 0, false);
        nodes[1].post(read_control(1, 0));
        let c = completions_of(&mut nodes[1], &mut [], 1);
        assert!(c[0].result.is_ok(), "{c:?}");
        assert_eq!(nodes[1].queue_pairs_created_on_connect(), (0, 0));
        let control = LinkKey {
            src: 1,
            dst: 0,
            lane: Lane::Control,
        };
        assert_eq!(
            Some(qp_num(&nodes[1].conns.get(&control).unwrap().qp)),
            initiator
        );
        assert_eq!(
            Some(qp_num(&nodes[0].wiring().responders[&control].qp)),
            control_0
        );
        // Hand-overs to node 1: new ballots, new data connections to both followers.
        for round in 1..=3u64 {
            wait_until_spares_ready(&mut nodes);
            let initiator = nodes[1].spares[0].ready.as_ref().map(QueuePair::qp_num);
            let (to_0, to_2) = {
                let w = nodes[0].wiring();
                (responder_spare(&w, 0, true), responder_spare(&w, 2, true))
            };
            let b = Ballot::new(round, 1);
            nodes[0].grant(1, b);
            nodes[2].grant(1, b);
            nodes[1].post(write(10 * round, 0, b));
            nodes[1].post(write(10 * round + 1, 2, b));
            nodes[1].post(read_control(10 * round + 2, 0));
            let c = completions_of(&mut nodes[1], &mut [], 3);
            assert!(c.iter().all(|c| c.result.is_ok()), "round {round}: {c:?}");
            assert_eq!(
                nodes[1].queue_pairs_created_on_connect(),
                (0, 0),
                "round {round}: a queue pair was created on a connection's path"
            );
            let data = |dst: NodeId| LinkKey {
                src: 1,
                dst,
                lane: Lane::Data(b),
            };
            // The first connection takes the first spare (the second may take that spare's
            // successor, if the registrar is that quick).
            let first = qp_num(&nodes[1].conns.get(&data(0)).unwrap().qp);
            assert_eq!(Some(first), initiator, "round {round}: the first initiator");
            let w = nodes[0].wiring();
            assert_eq!(Some(qp_num(&w.responders[&data(0)].qp)), to_0);
            assert_eq!(Some(qp_num(&w.responders[&data(2)].qp)), to_2);
        }
        // The same connections with no registrar: every queue pair on the path.
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        for n in nodes.iter_mut() {
            n.registrar = None;
            n.spares.clear();
        }
        {
            let mut w = nodes[0].wiring();
            w.registrar = None;
            for (_, _, spare) in w.responder_spares() {
                *spare = SpareQp::default();
            }
        }
        let b = Ballot::new(1, 1);
        nodes[0].grant(1, b);
        nodes[2].grant(1, b);
        nodes[1].post(write(1, 0, b));
        nodes[1].post(write(2, 2, b));
        nodes[1].post(read_control(3, 0));
        let c = completions_of(&mut nodes[1], &mut [], 3);
        assert!(c.iter().all(|c| c.result.is_ok()), "{c:?}");
        assert_eq!(nodes[1].queue_pairs_created_on_connect(), (3, 3));
    }

    /// A node registers no region for itself: a post to its own memory fails as unreachable
    /// (nothing panics), while the same write to a peer lands.
    #[test]
    fn a_node_has_no_regions_for_itself() {
        let s = device_or_skip!("a_node_has_no_regions_for_itself");
        let b = Ballot::new(1, 0);
        let mut h = RdmaHarness {
            nodes: RdmaCluster::open(&s, 3, &GEO).unwrap(),
        };
        {
            let w = h.nodes[0].wiring();
            let me = w.nodes[0].as_ref().expect("node 0 is in-process");
            assert!(me.data[0].is_none() && me.control[0].is_none());
            assert!(me.data[1].is_some() && me.control[1].is_some());
        }
        h.nodes[0].grant(0, b);
        h.nodes[1].grant(0, b);
        for target in [0, 1] {
            h.post(
                0,
                Post {
                    wr_id: target as u64,
                    target,
                    op: Op::Write {
                        region: Region::Log,
                        offset: 64,
                        bytes: vec![7; 64],
                    },
                    reconnect: false,
                    ballot: b,
                },
            );
        }
        let mut done = h.drain();
        done.sort_by_key(|(_, c)| c.wr_id);
        let results: Vec<_> = done.iter().map(|(_, c)| c.result.clone()).collect();
        assert_eq!(results, vec![Err(FabricError::Unreachable), Ok(None)]);
        let mut landed = [0u8; 64];
        h.nodes[1].read_log(64, &mut landed);
        assert_eq!(landed, [7u8; 64]);
    }

    /// Revocation completeness with the writer on its own thread, streaming: after `revoke`
    /// returns not one byte of the revoked connection lands, its later writes fail with a
    /// permission error, and no write succeeds after the first refusal.
    #[test]
    fn revocation_is_complete_under_a_streaming_writer() {
        let s = device_or_skip!("revocation_is_complete_under_a_streaming_writer");
        let b = Ballot::new(1, 1);
        // More rounds for a longer hunt: RAPAX_REVOKE_ROUNDS=200.
        let rounds = std::env::var("RAPAX_REVOKE_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5u64);
        let mut late = Vec::new();
        for round in 0..rounds {
            let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
            let _node2 = nodes.pop().unwrap();
            let mut writer = nodes.pop().unwrap();
            let mut owner = nodes.pop().unwrap();
            owner.grant(1, b);
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let handle = std::thread::spawn(move || {
                let (mut ok, mut refused, mut first_refusal) = (0u64, 0u64, None);
                let mut posted = 0u64;
                let deadline = Instant::now() + Duration::from_secs(20);
                while refused < 200 {
                    assert!(Instant::now() < deadline, "the writer was never refused");
                    if writer.outstanding() < 32 {
                        let fill = (posted % 250) as u8 + 1;
                        writer.post(Post {
                            wr_id: posted,
                            target: 0,
                            op: Op::Write {
                                region: Region::Log,
                                offset: GEO.slot_offset(posted % GEO.capacity),
                                // Above the inline threshold every other write.
                                bytes: vec![fill; if posted.is_multiple_of(2) { 48 } else { 200 }],
                            },
                            reconnect: false,
                            ballot: b,
                        });
                        posted += 1;
                    }
                    for c in writer.poll() {
                        match c.result {
                            Ok(_) => {
                                assert!(
                                    first_refusal.is_none(),
                                    "write {} succeeded after write {first_refusal:?} was refused",
                                    c.wr_id
                                );
                                ok += 1;
                                if ok == 100 {
                                    started_tx.send(()).unwrap();
                                }
                            }
                            Err(e) => {
                                assert_eq!(e, FabricError::Permission, "write {}", c.wr_id);
                                first_refusal.get_or_insert(c.wr_id);
                                refused += 1;
                            }
                        }
                    }
                }
                (ok, refused)
            });
            started_rx.recv().expect("the writer got going");
            std::thread::sleep(Duration::from_micros(100 * (round % 5)));
            let t = Instant::now();
            owner.revoke(1);
            let revoke_ns = t.elapsed().as_nanos();
            let mut after = vec![0u8; owner.log_len()];
            owner.read_log(0, &mut after);
            let (ok, refused) = handle.join().unwrap();
            let mut end = vec![0u8; owner.log_len()];
            owner.read_log(0, &mut end);
            println!(
                "round {round}: {ok} writes landed, {refused} refused; revoke took {revoke_ns} ns"
            );
            if let Some(at) = contract_first_difference(&after, &end) {
                println!("round {round}: the log changed at byte {at} after revoke returned");
                late.push(round);
            }
            assert!(owner.writers().is_empty());
            assert_eq!(owner.fallback_cycles(), 0, "the access-flags switch worked");
            assert_eq!(
                owner.fence_failures(),
                0,
                "the write region was deregistered"
            );
        }
        assert!(
            late.is_empty(),
            "rounds {late:?} of {rounds}: the revoked writer changed the log after revoke returned"
        );
    }

    /// The fallback (as on a device that refuses the access-flags switch in RTS): `revoke`
    /// resets the responder, so nothing of the revoked connection lands afterwards and its
    /// writes fail (time out); a `grant` to the same node's next ballot works once the poster
    /// reconnects, which brings the responder up with the new rights.
    #[test]
    fn the_fallback_cycle_revokes_and_reconnect_restores() {
        let s = device_or_skip!("the_fallback_cycle_revokes_and_reconnect_restores");
        fallback_cycle(RdmaCluster::open(&s, 3, &GEO).unwrap());
    }

    /// The same between nodes connected through rdma_cm: every reconnect (of the revoked
    /// ballot's lane, and of the new ballot's) is a new rdma_cm connection.
    #[test]
    fn the_fallback_cycle_revokes_and_reconnect_restores_over_rdma_cm() {
        const NAME: &str = "the_fallback_cycle_revokes_and_reconnect_restores_over_rdma_cm";
        let s = device_or_skip!("the_fallback_cycle_revokes_and_reconnect_restores_over_rdma_cm");
        match cm_ip() {
            Ok(ip) => fallback_cycle(cm_nodes(&s, ip, 3, 77).0),
            Err(why) => println!("skipped {NAME}: {why}"),
        }
    }

    fn fallback_cycle(nodes: Vec<RdmaFabric>) {
        let (b1, b2) = (Ballot::new(1, 1), Ballot::new(2, 1));
        let mut h = RdmaHarness { nodes };
        let write = |wr_id: u64, ballot, reconnect| Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(wr_id % GEO.capacity),
                bytes: vec![wr_id as u8 + 1; 100],
            },
            reconnect,
            ballot,
        };
        h.memory(0).grant(1, b1);
        for i in 0..8 {
            h.post(1, write(i, b1, false));
        }
        assert!(h.drain().iter().all(|(_, c)| c.result == Ok(None)));
        h.nodes[0].force_fallback(true);
        h.memory(0).revoke(1);
        assert_eq!(
            h.nodes[0].fallback_cycles(),
            1,
            "the revoke took the fallback"
        );
        let after = log_of(&h.nodes[0]);
        for i in 8..16 {
            h.post(1, write(i, b1, i == 8));
        }
        let done = h.drain();
        assert_eq!(done.len(), 8);
        for (_, c) in &done {
            assert!(c.result.is_err(), "write {} after the revoke", c.wr_id);
        }
        assert_eq!(
            log_of(&h.nodes[0]),
            after,
            "nothing landed after the revoke"
        );
        // A grant through the fallback too: the new ballot's connection is made after it, so it
        // comes up with the right at once; the old ballot's stays refused even on reconnect.
        h.memory(0).grant(1, b2);
        h.post(1, write(16, b2, true));
        h.post(1, write(17, b1, true));
        let mut done = h.drain();
        done.sort_by_key(|(_, c)| c.wr_id);
        assert_eq!(done[0].1.result, Ok(None), "the granted ballot writes");
        assert!(done[1].1.result.is_err(), "the old ballot stays refused");
        let log = log_of(&h.nodes[0]);
        assert_eq!(log[GEO.slot_offset(16)], 17, "the granted write landed");
        assert_eq!(
            log[GEO.slot_offset(17)],
            after[GEO.slot_offset(17)],
            "the refused write did not land"
        );
        println!(
            "fallback: {} cycles; revoked writes failed with {:?}",
            h.nodes[0].fallback_cycles(),
            done[1].1.result
        );
    }

    /// Posts `post` on `n` and waits for its completion's result.
    fn complete(n: &mut RdmaFabric, post: Post) -> Result<Option<Vec<u8>>, FabricError> {
        n.post(post);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = n.poll().pop() {
                return c.result;
            }
            assert!(Instant::now() < deadline, "no completion");
        }
    }

    fn log_of(n: &RdmaFabric) -> Vec<u8> {
        let mut buf = vec![0u8; n.log_len()];
        n.read_log(0, &mut buf);
        buf
    }

    fn contract_first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
        a.iter().zip(b).position(|(x, y)| x != y)
    }

    /// The control lane: a refused control write (the HCA refuses it: only the poster's own
    /// words are in a writable region) does not leave the lane broken; reads and allowed writes
    /// go on working.
    #[test]
    fn control_writes_are_refused_by_the_hca_and_the_lane_heals() {
        let s = device_or_skip!("control_writes_are_refused_by_the_hca_and_the_lane_heals");
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        let write = |wr_id, offset, value: u64| Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Control,
                offset,
                bytes: value.to_le_bytes().to_vec(),
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        let run = |nodes: &mut Vec<RdmaFabric>, post: Post| complete(&mut nodes[2], post);
        assert_eq!(run(&mut nodes, write(1, cb_request(2), 11)), Ok(None));
        // Node 1's request word, the heartbeat word, and 16 bytes across node 2's ack word.
        assert_eq!(
            run(&mut nodes, write(2, cb_request(1), 12)),
            Err(FabricError::Permission)
        );
        assert_eq!(
            run(&mut nodes, write(3, 0, 13)),
            Err(FabricError::Permission)
        );
        assert_eq!(run(&mut nodes, write(4, cb_ack(2), 14)), Ok(None));
        let read = Post {
            wr_id: 5,
            target: 0,
            op: Op::Read {
                region: Region::Control,
                offset: 0,
                len: CB_BYTES,
            },
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        let cb = run(&mut nodes, read).unwrap().unwrap();
        let word = |at: usize| u64::from_le_bytes(cb[at..at + 8].try_into().unwrap());
        assert_eq!(word(cb_request(2)), 11);
        assert_eq!(word(cb_request(1)), 0);
        assert_eq!(word(0), 0);
        assert_eq!(word(cb_ack(2)), 14);
        assert_eq!(nodes[0].control_word(cb_ack(2)), 14);
    }

    /// Log reads of any size land whole, through the staging buffer and past it (a region of
    /// their own when it is full), whether or not the reader holds write permission.
    #[test]
    fn log_reads_need_no_write_permission() {
        let mut s = device_or_skip!("log_reads_need_no_write_permission");
        s.staging_bytes = 4096;
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        let pattern: Vec<u8> = (0..GEO.log_bytes()).map(|i| (i % 253) as u8).collect();
        nodes[0].write_log_owner(0, &pattern);
        for (wr_id, (offset, len)) in [(0, 64), (64, 4000), (0, GEO.log_bytes())]
            .into_iter()
            .enumerate()
        {
            nodes[1].post(Post {
                wr_id: wr_id as u64,
                target: 0,
                op: Op::Read {
                    region: Region::Log,
                    offset,
                    len,
                },
                reconnect: false,
                ballot: Ballot::new(3, 1),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        while done.len() < 3 {
            done.extend(nodes[1].poll());
            assert!(Instant::now() < deadline, "reads completed");
        }
        done.sort_by_key(|c| c.wr_id);
        assert_eq!(done[0].result, Ok(Some(pattern[..64].to_vec())));
        assert_eq!(done[1].result, Ok(Some(pattern[64..4064].to_vec())));
        assert_eq!(done[2].result, Ok(Some(pattern.clone())));
    }

    /// The fence behind `revoke`: the revoked writer's write region is deregistered, so its old
    /// key is refused even on a connection that has write rights again, and its next data
    /// connection gets a new key that works.
    #[test]
    fn a_revoked_writers_key_is_dead_even_where_it_may_write() {
        let s = device_or_skip!("a_revoked_writers_key_is_dead_even_where_it_may_write");
        let mut nodes = RdmaCluster::open(&s, 3, &GEO).unwrap();
        let (b1, b2) = (Ballot::new(1, 1), Ballot::new(2, 1));
        let write = |wr_id: u64, ballot, fill: u8| Post {
            wr_id,
            target: 0,
            op: Op::Write {
                region: Region::Log,
                offset: GEO.slot_offset(wr_id),
                bytes: vec![fill; 200],
            },
            reconnect: false,
            ballot,
        };
        let run = |nodes: &mut Vec<RdmaFabric>, post: Post| complete(&mut nodes[1], post);
        let write_key = |n: &RdmaFabric, ballot| {
            let key = LinkKey {
                src: 1,
                dst: 0,
                lane: Lane::Data(ballot),
            };
            match n.conns[&key].remotes {
                Remotes::Log { write, .. } => write,
                other => panic!("a data lane with {other:?}"),
            }
        };
        nodes[0].grant(1, b1);
        assert_eq!(run(&mut nodes, write(1, b1, 0x11)), Ok(None));
        let old = write_key(&nodes[1], b1);
        nodes[0].revoke(1);
        nodes[0].grant(1, b2);
        assert_eq!(run(&mut nodes, write(2, b2, 0x22)), Ok(None));
        let new = write_key(&nodes[1], b2);
        assert_ne!(old.rkey, new.rkey, "a new region for the new grant");
        // The granted connection, pointed at the revoked key: refused by the owner's HCA.
        let key = LinkKey {
            src: 1,
            dst: 0,
            lane: Lane::Data(b2),
        };
        nodes[1].conns.get_mut(&key).unwrap().remotes = Remotes::Log {
            read: old,
            write: old,
        };
        assert_eq!(
            run(&mut nodes, write(3, b2, 0x33)),
            Err(FabricError::Permission)
        );
        let log = log_of(&nodes[0]);
        let slot = |i: u64| log[GEO.slot_offset(i)];
        assert_eq!((slot(1), slot(2), slot(3)), (0x11, 0x22, 0));
    }

    #[test]
    fn gids_map_to_the_addresses_rdma_cm_reaches() {
        let mut v4 = [0u8; 16];
        v4[10..].copy_from_slice(&[0xff, 0xff, 10, 77, 0, 1]);
        assert_eq!(gid_to_ip(&Gid(v4)), Some("10.77.0.1".parse().unwrap()));
        let v6: std::net::Ipv6Addr = "fd00::7".parse().unwrap();
        assert_eq!(gid_to_ip(&Gid(v6.octets())), Some(v6.into()));
        let ll: std::net::Ipv6Addr = "fe80::3cf8:7eff:fe8b:a41f".parse().unwrap();
        assert_eq!(gid_to_ip(&Gid(ll.octets())), None, "link-local");
        assert_eq!(gid_to_ip(&Gid::default()), None, "empty");
    }

    /// The floor: 64-byte RDMA WRITE round trips (inline), printed as percentiles.
    #[test]
    fn write_floor_round_trips() {
        let s = device_or_skip!("write_floor_round_trips");
        for bytes in [64usize, 1024] {
            let mut ns = write_floor_ns(&s, bytes, 2000).expect("the floor runs");
            assert_eq!(ns.len(), 2000);
            ns.sort_unstable();
            let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
            assert!(at(0.5) > 0);
            println!(
                "rdma write floor ({}, {bytes} B, inline {}): p50 {} ns, p99 {} ns, p99.9 {} ns, \
                 max {} ns",
                s.device,
                bytes <= s.inline_bytes as usize,
                at(0.5),
                at(0.99),
                at(0.999),
                ns[ns.len() - 1]
            );
        }
    }

    /// hw-profiles/soft-roce.toml on the device it describes: it loads, its settings open a
    /// cluster (the inline threshold the device settles on is printed), the contract holds with
    /// them, and the floor runs.
    #[test]
    fn the_soft_roce_profile_runs() {
        let s = device_or_skip!("the_soft_roce_profile_runs");
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-profiles/soft-roce.toml");
        let profile = crate::profile::Profile::load(&path).expect("soft-roce.toml loads");
        let p = RdmaSettings::from_profile(profile.fabric.rdma.as_ref().unwrap());
        if p.device != s.device {
            println!(
                "skipped the_soft_roce_profile_runs: the device is {}, not {}",
                s.device, p.device
            );
            return;
        }
        let nodes = RdmaCluster::open(&p, 3, &GEO).expect("the profile's settings open a cluster");
        println!(
            "soft-roce.toml on {}: gid_index {}, mtu {}, inline in use {} of {} bytes",
            p.device,
            p.gid_index,
            p.mtu_bytes,
            nodes[0].inline_bytes(),
            p.inline_bytes
        );
        drop(nodes);
        // Its time-outs make the unreachable check slow (about 0.5 s per dead write): fine.
        contract::run_all(&mut || {
            Box::new(RdmaHarness {
                nodes: RdmaCluster::open(&p, 3, &GEO).unwrap(),
            })
        });
        let mut ns = write_floor_ns(&p, 64, 1000).expect("the floor runs");
        ns.sort_unstable();
        println!(
            "soft-roce.toml write floor, 64 B: p50 {} ns",
            ns[ns.len() / 2]
        );
        // What a hand-over costs on the profile's log: `revoke` (the flags switch and the
        // deregistration of the writer's region), then a new ballot's first write (connecting;
        // the writer's next region was registered ahead, meanwhile).
        let geo = profile.geometry();
        let mut nodes = RdmaCluster::open(&p, 3, &geo).unwrap();
        let (mut revoke_ns, mut first_ns) = (Vec::new(), Vec::new());
        for round in 1..=10u64 {
            let b = Ballot::new(round, 1);
            nodes[0].grant(1, b);
            let t = Instant::now();
            nodes[1].post(Post {
                wr_id: round,
                target: 0,
                op: Op::Write {
                    region: Region::Log,
                    offset: geo.slot_offset(round),
                    bytes: vec![round as u8; 64],
                },
                reconnect: false,
                ballot: b,
            });
            let c = completions_of(&mut nodes[1], &mut [], 1);
            first_ns.push(t.elapsed().as_nanos());
            assert_eq!(
                c[0].result,
                Ok(None),
                "round {round}: the new holder writes"
            );
            let t = Instant::now();
            nodes[0].revoke(1);
            revoke_ns.push(t.elapsed().as_nanos());
            // The writer's next region is registered off the owner's thread meanwhile: give it
            // the time a hand-over back would (milliseconds), so the first write finds it.
            wait_until_registered_ahead(&nodes[0], 0, 1);
        }
        assert_eq!(
            registered_on_connect(&nodes[0], 0, 1),
            0,
            "every new ballot's connection found its write region registered ahead"
        );
        revoke_ns.sort_unstable();
        first_ns.sort_unstable();
        println!(
            "soft-roce.toml, {} MiB log: revoke p50 {} ns (max {}); a new ballot's first write \
             p50 {} ns (max {})",
            geo.log_bytes() >> 20,
            revoke_ns[5],
            revoke_ns[9],
            first_ns[5],
            first_ns[9]
        );
    }

    /// `fabric.rdma.hugepages`: every node's log and control block on 2 MiB pages (the free
    /// count drops by exactly that much), and the contract holds on them.
    #[test]
    fn the_contract_holds_on_huge_pages() {
        let mut s = device_or_skip!("the_contract_holds_on_huge_pages");
        s.hugepages = true;
        let free = || crate::fabric::hugepages_free().unwrap_or(0) as usize;
        let need = 3 * (GEO.log_bytes().div_ceil(HUGE_PAGE) + 1);
        let before = free();
        if before < need {
            return println!(
                "skipped the_contract_holds_on_huge_pages: {before} huge pages free, {need} needed"
            );
        }
        let nodes = RdmaCluster::open(&s, 3, &GEO).expect("a cluster on huge pages");
        assert_eq!(before - free(), need, "a log and a control block a node");
        drop(nodes);
        assert_eq!(free(), before, "unmapped with the cluster");
        contract::run_all(&mut || {
            Box::new(RdmaHarness {
                nodes: RdmaCluster::open(&s, 3, &GEO).unwrap(),
            })
        });
    }

    /// Huge pages that cannot be mapped are an error that says what to do, on any host.
    #[test]
    fn huge_pages_that_cannot_be_mapped_are_a_clear_error() {
        let Err(e) = Buffer::huge(1 << 40) else {
            panic!("1 TiB of huge pages mapped");
        };
        assert!(
            matches!(e, RdmaError::Hugepages { pages: 524288, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("fabric.rdma.hugepages") && text.contains("nr_hugepages"),
            "{text}"
        );
    }

    /// How far up the device takes inline writes (the profile's figure is only an upper bound).
    #[test]
    fn inline_threshold_settles_on_what_the_device_accepts() {
        let mut s = device_or_skip!("inline_threshold_settles_on_what_the_device_accepts");
        s.inline_bytes = 1024;
        let nodes = RdmaCluster::open(&s, 2, &GEO).unwrap();
        let inline = nodes[0].inline_bytes();
        println!("{}: inline 1024 requested, {inline} in use", s.device);
        assert!(inline > 0 && inline <= 1024);
    }

    #[test]
    fn floor_sizes_are_checked() {
        let s = RdmaSettings {
            device: "rapax-no-such-device".into(),
            port: 1,
            gid_index: 0,
            inline_bytes: 64,
            max_send_wr: 16,
            mtu_bytes: 1024,
            ack_timeout_exponent: 14,
            retry_count: 7,
            staging_bytes: 4096,
            hugepages: false,
        };
        assert!(matches!(
            write_floor_ns(&s, 12, 10),
            Err(RdmaError::Setting { .. })
        ));
        // Without that device (or without rdma-core), opening fails with a typed error.
        assert!(matches!(
            RdmaCluster::open(&s, 3, &GEO),
            Err(RdmaError::NoDevice { .. })
        ));
    }
}
