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
