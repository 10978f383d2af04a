//! Connection set-up through librdmacm: event channel, `rdma_cm_id`, address and route
//! resolution, a queue pair owned by the id, connect / listen / accept.
//!
//! The helpers block on the id's event channel for the event each step waits for and
//! acknowledge every event at once (an unacknowledged event would make `rdma_destroy_id` block).
//! They assume one step at a time per channel: an event of another kind, or for another id on a
//! shared channel, is returned as [`Error::UnexpectedEvent`].

use std::ffi::CStr;
use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use super::common::{QpCaps, RemoteAddr, SendFlags};
use super::sys;
use super::verbs::{
    check, last_errno, post_one_sided, post_recv_raw, rc_init_attr, CqInner, PdInner,
};
use super::verbs::{CompletionQueue, Context, LocalSlice, ProtectionDomain};
use super::{Error, Result};

struct ChannelInner {
    ch: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm event channels are file descriptors plus library state that is safe to use
// from any thread; the channel is destroyed only in Drop, after every id on it.
unsafe impl Send for ChannelInner {}
// SAFETY: as above.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: the channel came from rdma_create_event_channel; every id on it holds an Arc
        // to this inner and has been destroyed.
        unsafe { sys::rdma_destroy_event_channel(self.ch.as_ptr()) };
    }
}

/// An rdma_cm event channel (`rdma_create_event_channel`).
#[derive(Clone)]
pub struct EventChannel {
    inner: Arc<ChannelInner>,
}

/// The port space of an `rdma_cm_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpace {
    /// Reliable connected (RC) queue pairs.
    Tcp,
    /// Unreliable datagram queue pairs.
    Udp,
}

/// An event as librdmacm delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmEvent {
    /// `RDMA_CM_EVENT_*`.
    pub event: sys::rdma_cm_event_type,
    /// Its name (`rdma_event_str`).
    pub name: String,
    /// Its status (0, or a negative errno).
    pub status: i32,
}

fn event_name(event: sys::rdma_cm_event_type) -> String {
    // SAFETY: rdma_event_str returns a pointer to a static NUL-terminated string for any value.
    let name = unsafe { sys::rdma_event_str(event) };
    if name.is_null() {
        return format!("event {event}");
    }
    // SAFETY: non-NULL static string (see above).
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

impl EventChannel {
    /// Opens an event channel. Fails (ENODEV, ENOENT) where the kernel has no RDMA CM.
    pub fn new() -> Result<EventChannel> {
        // SAFETY: no arguments; the returned channel is owned by the new ChannelInner.
        let ch = unsafe { sys::rdma_create_event_channel() };
        let ch = NonNull::new(ch).ok_or(Error::Errno {
            call: "rdma_create_event_channel",
            errno: last_errno(),
        })?;
        Ok(EventChannel {
            inner: Arc::new(ChannelInner { ch }),
        })
    }

    /// Creates an `rdma_cm_id` on this channel.
    pub fn create_id(&self, space: PortSpace) -> Result<CmId> {
        let ps = match space {
            PortSpace::Tcp => sys::RDMA_PS_TCP,
            PortSpace::Udp => sys::RDMA_PS_UDP,
        };
        let mut id: *mut sys::rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is live; `id` is a valid out-pointer.
        let rc =
            unsafe { sys::rdma_create_id(self.inner.ch.as_ptr(), &mut id, ptr::null_mut(), ps) };
        check("rdma_create_id", rc)?;
        let id = NonNull::new(id).ok_or(Error::Errno {
            call: "rdma_create_id",
            errno: last_errno(),
        })?;
        Ok(CmId {
            id,
            channel: self.inner.clone(),
            qp: None,
            connected: false,
        })
    }

    /// Waits for the next event; acknowledges it and returns it with the id it is for.
    fn next_event(&self) -> Result<(CmEvent, NonNull<sys::rdma_cm_id>)> {
        let mut event: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is live; `event` is a valid out-pointer.
        let rc = unsafe { sys::rdma_get_cm_event(self.inner.ch.as_ptr(), &mut event) };
        check("rdma_get_cm_event", rc)?;
        let event = NonNull::new(event).ok_or(Error::Errno {
            call: "rdma_get_cm_event",
            errno: last_errno(),
        })?;
        // SAFETY: the event is valid until acknowledged below; its fields are copied first.
        let (kind, status, id) = unsafe {
            let e = event.as_ref();
            (e.event, e.status, e.id)
        };
        // SAFETY: the event came from rdma_get_cm_event and is acknowledged exactly once.
        let rc = unsafe { sys::rdma_ack_cm_event(event.as_ptr()) };
        check("rdma_ack_cm_event", rc)?;
        let id = NonNull::new(id).ok_or(Error::InvalidArgument("rdma_cm event without an id"))?;
        Ok((
            CmEvent {
                event: kind,
                name: event_name(kind),
                status,
            },
            id,
        ))
    }

    fn expect(
        &self,
        expected: sys::rdma_cm_event_type,
        name: &'static str,
    ) -> Result<NonNull<sys::rdma_cm_id>> {
        let (event, id) = self.next_event()?;
        if event.event != expected || event.status != 0 {
            return Err(Error::UnexpectedEvent {
                expected: name,
                got: event.name,
                status: event.status,
            });
        }
        Ok(id)
    }
}

/// The queue pair an id owns, with what it needs kept alive.
struct CmQp {
    _pd: Arc<PdInner>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
}

/// An `rdma_cm_id`: one endpoint of a connection, or a listener.
pub struct CmId {
    id: NonNull<sys::rdma_cm_id>,
    channel: Arc<ChannelInner>,
    qp: Option<CmQp>,
    connected: bool,
}

// SAFETY: librdmacm ids may be used from any thread; the safe layer takes `&mut self` for every
// call that changes the id's state.
unsafe impl Send for CmId {}

impl Drop for CmId {
    fn drop(&mut self) {
        if self.connected {
            // SAFETY: the id is live and connected; disconnecting first flushes the QP.
            unsafe { sys::rdma_disconnect(self.id.as_ptr()) };
        }
        if self.qp.is_some() {
            // SAFETY: the QP was created by rdma_create_qp on this id and is destroyed once.
            unsafe { sys::rdma_destroy_qp(self.id.as_ptr()) };
        }
        // SAFETY: the id came from rdma_create_id or a connect request and is destroyed once;
        // every event for it was acknowledged when received.
        unsafe { sys::rdma_destroy_id(self.id.as_ptr()) };
    }
}

/// A socket address in the form librdmacm takes.
#[repr(C)]
union RawSockAddr {
    v4: sys::sockaddr_in,
    v6: sys::sockaddr_in6,
}

fn raw_sockaddr(addr: SocketAddr) -> RawSockAddr {
    match addr {
        SocketAddr::V4(a) => RawSockAddr {
            v4: sys::sockaddr_in {
                sin_family: sys::AF_INET as sys::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: sys::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            },
        },
        SocketAddr::V6(a) => RawSockAddr {
            v6: sys::sockaddr_in6 {
                sin6_family: sys::AF_INET6 as sys::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: sys::in6_addr {
                    __in6_u: sys::in6_addr__bindgen_ty_1 {
                        __u6_addr8: a.ip().octets(),
                    },
                },
                sin6_scope_id: a.scope_id(),
            },
        },
    }
}

/// What both sides of an rdma_cm connection negotiate.
#[derive(Debug, Clone, Copy)]
pub struct ConnParams {
    /// Outstanding RDMA READs the peer may have against us.
    pub responder_resources: u8,
    /// Outstanding RDMA READs we may have against the peer.
    pub initiator_depth: u8,
    /// Retries on time-out.
    pub retry_count: u8,
    /// Retries on RNR NAK (7 = infinite).
    pub rnr_retry_count: u8,
}

impl Default for ConnParams {
    fn default() -> Self {
        ConnParams {
            responder_resources: 1,
            initiator_depth: 1,
            retry_count: 7,
            rnr_retry_count: 7,
        }
    }
}

impl ConnParams {
    fn raw(&self) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            responder_resources: self.responder_resources,
            initiator_depth: self.initiator_depth,
            retry_count: self.retry_count,
            rnr_retry_count: self.rnr_retry_count,
            ..Default::default()
        }
    }
}

impl CmId {
    fn channel(&self) -> EventChannel {
        EventChannel {
            inner: self.channel.clone(),
        }
    }

    fn expect_for_self(&self, expected: sys::rdma_cm_event_type, name: &'static str) -> Result<()> {
        let id = self.channel().expect(expected, name)?;
        if id != self.id {
            return Err(Error::UnexpectedEvent {
                expected: name,
                got: format!("{name} for another id"),
                status: 0,
            });
        }
        Ok(())
    }

    /// Binds the id to a local address (for listening, or to choose the source device).
    pub fn bind_addr(&mut self, addr: SocketAddr) -> Result<()> {
        let mut raw = raw_sockaddr(addr);
        // SAFETY: the id is live; `raw` holds a sockaddr_in or sockaddr_in6 whose family field
        // tells librdmacm which, and it outlives the call.
        let rc =
            unsafe { sys::rdma_bind_addr(self.id.as_ptr(), (&mut raw as *mut RawSockAddr).cast()) };
        check("rdma_bind_addr", rc)
    }

    /// Resolves `dst` (and the local device to reach it from, optionally from `src`); waits up
    /// to `timeout_ms` for `RDMA_CM_EVENT_ADDR_RESOLVED`.
    pub fn resolve_addr(
        &mut self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout_ms: i32,
    ) -> Result<()> {
        let mut src_raw = src.map(raw_sockaddr);
        let mut dst_raw = raw_sockaddr(dst);
        let src_ptr = src_raw
            .as_mut()
            .map_or(ptr::null_mut(), |s| (s as *mut RawSockAddr).cast());
        // SAFETY: the id is live; the addresses are valid sockaddrs (see bind_addr) that outlive
        // the call, which copies them.
        let rc = unsafe {
            sys::rdma_resolve_addr(
                self.id.as_ptr(),
                src_ptr,
                (&mut dst_raw as *mut RawSockAddr).cast(),
                timeout_ms,
            )
        };
        check("rdma_resolve_addr", rc)?;
        self.expect_for_self(sys::RDMA_CM_EVENT_ADDR_RESOLVED, "ADDR_RESOLVED")
    }

    /// Resolves the route to the resolved address; waits for `RDMA_CM_EVENT_ROUTE_RESOLVED`.
    pub fn resolve_route(&mut self, timeout_ms: i32) -> Result<()> {
        // SAFETY: the id is live and its address resolved (librdmacm checks and fails otherwise).
        let rc = unsafe { sys::rdma_resolve_route(self.id.as_ptr(), timeout_ms) };
        check("rdma_resolve_route", rc)?;
        self.expect_for_self(sys::RDMA_CM_EVENT_ROUTE_RESOLVED, "ROUTE_RESOLVED")
    }

    /// The device context the id is bound to (after bind, address resolution or a connect
    /// request), to allocate the PD and CQs from. librdmacm owns this context: keep at least
    /// one id on the device alive for as long as the PD, CQs and regions made from it.
    pub fn context(&self) -> Option<Context> {
        // SAFETY: the id is live; `verbs` is set by librdmacm and stays valid while the id lives
        // (librdmacm keeps its device open until its last id is destroyed).
        let verbs = unsafe { self.id.as_ref().verbs };
        NonNull::new(verbs).map(Context::borrowed)
    }

    /// Creates an RC queue pair owned by the id; librdmacm moves it through INIT, RTR and RTS
    /// while connecting or accepting.
    pub fn create_qp(
        &mut self,
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
    ) -> Result<()> {
        if self.qp.is_some() {
            return Err(Error::InvalidArgument(
                "the rdma_cm_id already has a queue pair",
            ));
        }
        let mut init = rc_init_attr(send_cq, recv_cq, caps);
        // SAFETY: the id is live and bound to a device; the PD and CQs are live and kept alive
        // by the Arcs stored below for as long as the QP exists.
        let rc = unsafe { sys::rdma_create_qp(self.id.as_ptr(), pd.inner.pd.as_ptr(), &mut init) };
        check("rdma_create_qp", rc)?;
        self.qp = Some(CmQp {
            _pd: pd.inner.clone(),
            _send_cq: send_cq.inner.clone(),
            _recv_cq: recv_cq.inner.clone(),
        });
        Ok(())
    }

    /// Connects (active side, after route resolution and [`CmId::create_qp`]); waits for
    /// `RDMA_CM_EVENT_ESTABLISHED`.
    pub fn connect(&mut self, params: &ConnParams) -> Result<()> {
        let mut raw = params.raw();
        // SAFETY: the id is live; `raw` outlives the call.
        let rc = unsafe { sys::rdma_connect(self.id.as_ptr(), &mut raw) };
        check("rdma_connect", rc)?;
        self.expect_for_self(sys::RDMA_CM_EVENT_ESTABLISHED, "ESTABLISHED")?;
        self.connected = true;
        Ok(())
    }

    /// Listens for connect requests (passive side, after [`CmId::bind_addr`]).
    pub fn listen(&mut self, backlog: i32) -> Result<()> {
        // SAFETY: the id is live.
        let rc = unsafe { sys::rdma_listen(self.id.as_ptr(), backlog) };
        check("rdma_listen", rc)
    }

    /// Waits for a connect request on this listener and returns the new id for it (on the same
    /// channel); create its QP, then [`CmId::accept`].
    pub fn get_request(&self) -> Result<CmId> {
        let id = self
            .channel()
            .expect(sys::RDMA_CM_EVENT_CONNECT_REQUEST, "CONNECT_REQUEST")?;
        Ok(CmId {
            id,
            channel: self.channel.clone(),
            qp: None,
            connected: false,
        })
    }

    /// Accepts the connect request this id came from; waits for `RDMA_CM_EVENT_ESTABLISHED`.
    pub fn accept(&mut self, params: &ConnParams) -> Result<()> {
        let mut raw = params.raw();
        // SAFETY: the id is live; `raw` outlives the call.
        let rc = unsafe { sys::rdma_accept(self.id.as_ptr(), &mut raw) };
        check("rdma_accept", rc)?;
        self.expect_for_self(sys::RDMA_CM_EVENT_ESTABLISHED, "ESTABLISHED")?;
        self.connected = true;
        Ok(())
    }

    fn connected_qp(&self) -> Result<NonNull<sys::ibv_qp>> {
        if self.qp.is_none() || !self.connected {
            return Err(Error::InvalidArgument(
                "the rdma_cm_id has no connected queue pair",
            ));
        }
        // SAFETY: the id is live; `qp` was set by rdma_create_qp and stays until Drop.
        let qp = unsafe { self.id.as_ref().qp };
        NonNull::new(qp).ok_or(Error::InvalidArgument("the rdma_cm_id has no queue pair"))
    }

    /// Posts an RDMA WRITE on the connected queue pair (see [`super::QueuePair::post_write`]).
    pub fn post_write(
        &self,
        wr_id: u64,
        local: LocalSlice<'_>,
        remote: RemoteAddr,
        flags: SendFlags,
    ) -> Result<()> {
        let (addr, len, lkey) = local.parts();
        post_one_sided(
            self.connected_qp()?,
            sys::IBV_WR_RDMA_WRITE,
            wr_id,
            addr,
            len,
            lkey,
            remote,
            flags,
        )
    }

    /// Posts an RDMA READ on the connected queue pair (see [`super::QueuePair::post_read`]).
    pub fn post_read(
        &self,
        wr_id: u64,
        local: LocalSlice<'_>,
        remote: RemoteAddr,
        flags: SendFlags,
    ) -> Result<()> {
        let (addr, len, lkey) = local.parts();
        post_one_sided(
            self.connected_qp()?,
            sys::IBV_WR_RDMA_READ,
            wr_id,
            addr,
            len,
            lkey,
            remote,
            flags,
        )
    }

    /// Posts a receive on the id's queue pair.
    pub fn post_recv(&self, wr_id: u64, local: LocalSlice<'_>) -> Result<()> {
        // SAFETY: the id is live; `qp` is NULL until rdma_create_qp.
        let qp = NonNull::new(unsafe { self.id.as_ref().qp })
            .ok_or(Error::InvalidArgument("the rdma_cm_id has no queue pair"))?;
        post_recv_raw(qp, wr_id, local)
    }
}

/// One connection attempt or connection of a [`CmExchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CmToken(u64);

/// What a [`CmExchange`] reports from its event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmExchangeEvent {
    /// A peer asks to connect: the address it comes from and its private data. Answer with
    /// [`CmExchange::accept`] or [`CmExchange::reject`].
    Request {
        token: CmToken,
        peer: Option<std::net::IpAddr>,
        data: Vec<u8>,
    },
    /// The peer accepted our [`CmExchange::connect`]: its private data. The connection is
    /// established (the exchange sent the ready-to-use message).
    Accepted { token: CmToken, data: Vec<u8> },
    /// Our attempt failed: the address or route did not resolve, the peer rejected it (no
    /// listener there, or the application refused), or it timed out.
    Failed { token: CmToken, why: String },
    /// The peer closed a connection (its process ended, or it reconnected).
    Closed { token: CmToken },
}

/// Where an id of a [`CmExchange`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Resolving,
    Routing,
    Connecting,
    /// A peer's request waiting for accept or reject.
    Requested,
    Connected,
}

struct Slot {
    id: CmId,
    stage: Stage,
    /// What `connect` sends once the route is resolved.
    qp_num: u32,
    data: Vec<u8>,
    timeout_ms: i32,
}

/// Connection set-up through librdmacm for queue pairs the caller drives itself: one
/// non-blocking event channel, an optional listener, and the ids of every attempt and
/// connection, each named by a [`CmToken`]. The caller brings its queue pairs up from what the
/// two sides exchange as private data (at most [`CmExchange::REQUEST_DATA_MAX`] bytes with a
/// request, [`CmExchange::ACCEPT_DATA_MAX`] with an accept); rdma_cm resolves the peer's address
/// and route on the RDMA device, carries the exchange, and reports refusals and closed
/// connections. [`CmExchange::poll`] never blocks.
pub struct CmExchange {
    channel: EventChannel,
    _listener: Option<CmId>,
    slots: std::collections::HashMap<CmToken, Slot>,
    by_id: std::collections::HashMap<usize, CmToken>,
    next: u64,
}

impl CmExchange {
    /// Private data a connect request carries (rdma_cm's limit for RC over IB/RoCE).
    pub const REQUEST_DATA_MAX: usize = 56;
    /// Private data an accept carries.
    pub const ACCEPT_DATA_MAX: usize = 196;

    /// An exchange that takes connect requests on `listen` (an address of the RDMA netdev), or
    /// only makes them (`None`).
    pub fn new(listen: Option<SocketAddr>) -> Result<CmExchange> {
        let channel = EventChannel::new()?;
        // SAFETY: the channel is live; `fd` is its file descriptor, which stays open while the
        // channel lives; fcntl only changes its status flags.
        let rc = unsafe {
            let fd = channel.inner.ch.as_ref().fd;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        check("fcntl(rdma_cm channel, O_NONBLOCK)", rc)?;
        let listener = match listen {
            Some(addr) => {
                let mut id = channel.create_id(PortSpace::Tcp)?;
                id.bind_addr(addr)?;
                id.listen(64)?;
                Some(id)
            }
            None => None,
        };
        Ok(CmExchange {
            channel,
            _listener: listener,
            slots: std::collections::HashMap::new(),
            by_id: std::collections::HashMap::new(),
            next: 0,
        })
    }

    fn insert(&mut self, id: CmId, stage: Stage) -> CmToken {
        self.next += 1;
        let token = CmToken(self.next);
        self.by_id.insert(id.id.as_ptr() as usize, token);
        self.slots.insert(
            token,
            Slot {
                id,
                stage,
                qp_num: 0,
                data: Vec::new(),
                timeout_ms: 0,
            },
        );
        token
    }

    /// Starts connecting to `dst` for the queue pair `qp_num`, sending `data` with the request;
    /// the outcome comes from [`CmExchange::poll`] as `Accepted` or `Failed`.
    pub fn connect(
        &mut self,
        dst: SocketAddr,
        qp_num: u32,
        data: &[u8],
        timeout_ms: i32,
    ) -> Result<CmToken> {
        if data.len() > Self::REQUEST_DATA_MAX {
            return Err(Error::InvalidArgument(
                "rdma_cm request private data over 56 bytes",
            ));
        }
        let id = self.channel.create_id(PortSpace::Tcp)?;
        let mut dst_raw = raw_sockaddr(dst);
        // SAFETY: the id is live; `dst_raw` is a valid sockaddr (see bind_addr) that outlives
        // the call, which copies it.
        let rc = unsafe {
            sys::rdma_resolve_addr(
                id.id.as_ptr(),
                ptr::null_mut(),
                (&mut dst_raw as *mut RawSockAddr).cast(),
                timeout_ms,
            )
        };
        check("rdma_resolve_addr", rc)?;
        let token = self.insert(id, Stage::Resolving);
        let slot = self.slots.get_mut(&token).expect("inserted above");
        slot.qp_num = qp_num;
        slot.data = data.to_vec();
        slot.timeout_ms = timeout_ms;
        Ok(token)
    }

    /// Accepts the request `token` for the queue pair `qp_num`, answering with `data`.
    pub fn accept(&mut self, token: CmToken, qp_num: u32, data: &[u8]) -> Result<()> {
        if data.len() > Self::ACCEPT_DATA_MAX {
            return Err(Error::InvalidArgument(
                "rdma_cm accept private data over 196 bytes",
            ));
        }
        let slot = self
            .slots
            .get_mut(&token)
            .filter(|s| s.stage == Stage::Requested)
            .ok_or(Error::InvalidArgument("no such pending rdma_cm request"))?;
        let mut raw = conn_param(qp_num, data);
        // SAFETY: the id is live and came from a connect request; `raw` and the private data
        // it points to outlive the call, which copies them.
        let rc = unsafe { sys::rdma_accept(slot.id.id.as_ptr(), &mut raw) };
        check("rdma_accept", rc)?;
        slot.stage = Stage::Connected;
        slot.id.connected = true;
        Ok(())
    }

    /// Refuses the request `token` (the peer sees `Failed`).
    pub fn reject(&mut self, token: CmToken) {
        if let Some(slot) = self.slots.get(&token) {
            // SAFETY: the id is live and came from a connect request; no private data.
            unsafe { sys::rdma_reject(slot.id.id.as_ptr(), ptr::null(), 0) };
        }
        self.forget(token);
    }

    /// Ends the attempt or connection `token` (a connected peer sees `Closed`).
    pub fn close(&mut self, token: CmToken) {
        self.forget(token);
    }

    fn forget(&mut self, token: CmToken) {
        if let Some(slot) = self.slots.remove(&token) {
            self.by_id.remove(&(slot.id.id.as_ptr() as usize));
        }
    }

    /// Takes every event waiting on the channel, moves attempts along (route resolution,
    /// connect, the ready-to-use message) and appends what the caller must know to `out`.
    pub fn poll(&mut self, out: &mut Vec<CmExchangeEvent>) {
        loop {
            let mut event: *mut sys::rdma_cm_event = ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; `event` is a valid out-pointer.
            let rc = unsafe { sys::rdma_get_cm_event(self.channel.inner.ch.as_ptr(), &mut event) };
            let Some(event) = NonNull::new(event).filter(|_| rc == 0) else {
                return; // EAGAIN: nothing more now (other errors: the same, try later)
            };
            // SAFETY: the event is valid until acknowledged below; its fields, and its private
            // data (valid for `private_data_len` bytes when not NULL), are copied first.
            let (kind, status, id, listen_id, data) = unsafe {
                let e = event.as_ref();
                let conn = e.param.conn;
                let data = if conn.private_data.is_null() || conn.private_data_len == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(
                        conn.private_data.cast::<u8>(),
                        usize::from(conn.private_data_len),
                    )
                    .to_vec()
                };
                (e.event, e.status, e.id, e.listen_id, data)
            };
            // SAFETY: acknowledged exactly once; nothing of it is used afterwards.
            unsafe { sys::rdma_ack_cm_event(event.as_ptr()) };
            let Some(id) = NonNull::new(id) else {
                continue;
            };
            if kind == sys::RDMA_CM_EVENT_CONNECT_REQUEST && !listen_id.is_null() {
                let request = CmId {
                    id,
                    channel: self.channel.inner.clone(),
                    qp: None,
                    connected: false,
                };
                // SAFETY: the new id is live; rdma_get_peer_addr returns a pointer into it.
                let peer = unsafe { peer_ip(sys::rdma_get_peer_addr(id.as_ptr())) };
                let token = self.insert(request, Stage::Requested);
                out.push(CmExchangeEvent::Request { token, peer, data });
                continue;
            }
            let Some(&token) = self.by_id.get(&(id.as_ptr() as usize)) else {
                continue; // an id already closed, or the listener's own
            };
            self.advance(token, kind, status, data, out);
        }
    }

    fn advance(
        &mut self,
        token: CmToken,
        kind: sys::rdma_cm_event_type,
        status: i32,
        data: Vec<u8>,
        out: &mut Vec<CmExchangeEvent>,
    ) {
        let slot = self.slots.get_mut(&token).expect("indexed by by_id");
        let id = slot.id.id.as_ptr();
        let step = match (slot.stage, kind) {
            (Stage::Resolving, sys::RDMA_CM_EVENT_ADDR_RESOLVED) => {
                slot.stage = Stage::Routing;
                // SAFETY: the id is live and its address resolved.
                check("rdma_resolve_route", unsafe {
                    sys::rdma_resolve_route(id, slot.timeout_ms)
                })
            }
            (Stage::Routing, sys::RDMA_CM_EVENT_ROUTE_RESOLVED) => {
                slot.stage = Stage::Connecting;
                let mut raw = conn_param(slot.qp_num, &slot.data);
                // SAFETY: the id is live with its route resolved; `raw` and the private data it
                // points to (in the slot) outlive the call, which copies them.
                check("rdma_connect", unsafe { sys::rdma_connect(id, &mut raw) })
            }
            (Stage::Connecting, sys::RDMA_CM_EVENT_CONNECT_RESPONSE) => {
                // SAFETY: the id is live and the peer's reply arrived: send ready-to-use.
                match check("rdma_establish", unsafe { sys::rdma_establish(id) }) {
                    Ok(()) => {
                        slot.stage = Stage::Connected;
                        slot.id.connected = true;
                        out.push(CmExchangeEvent::Accepted { token, data });
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            (Stage::Connected, sys::RDMA_CM_EVENT_ESTABLISHED) => return,
            (Stage::Connected, sys::RDMA_CM_EVENT_DISCONNECTED) => {
                slot.id.connected = false;
                self.forget(token);
                out.push(CmExchangeEvent::Closed { token });
                return;
            }
            (Stage::Connected, _) => return,
            (_, other) => Err(Error::UnexpectedEvent {
                expected: "the next step of a connect",
                got: event_name(other),
                status,
            }),
        };
        if let Err(e) = step {
            self.forget(token);
            out.push(CmExchangeEvent::Failed {
                token,
                why: e.to_string(),
            });
        }
    }
}

fn conn_param(qp_num: u32, data: &[u8]) -> sys::rdma_conn_param {
    sys::rdma_conn_param {
        private_data: data.as_ptr().cast(),
        private_data_len: u8::try_from(data.len()).expect("private data checked against its limit"),
        responder_resources: 1,
        initiator_depth: 1,
        retry_count: 7,
        rnr_retry_count: 7,
        qp_num,
        ..Default::default()
    }
}

/// The IP address in a sockaddr librdmacm filled (`None` for NULL or another family).
///
/// # Safety
///
/// `sa` is NULL or points to a sockaddr whose family field tells its real size.
unsafe fn peer_ip(sa: *const sys::sockaddr) -> Option<std::net::IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller's guarantee: the family field is readable, and the struct is as long
    // as that family's.
    unsafe {
        match u32::from((*sa).sa_family) {
            f if f == sys::AF_INET => {
                let v4 = &*sa.cast::<sys::sockaddr_in>();
                Some(std::net::IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
            }
            f if f == sys::AF_INET6 => {
                let v6 = &*sa.cast::<sys::sockaddr_in6>();
                Some(std::net::IpAddr::from(v6.sin6_addr.__in6_u.__u6_addr8))
            }
            _ => None,
        }
    }
}
