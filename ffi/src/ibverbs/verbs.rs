//! The safe libibverbs layer: devices, context, protection domain, memory region, completion
//! queue and the RC queue pair with its typestate.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use super::common::*;
use super::sys;
use super::{DeviceInfo, Error, Result};

/// The calling thread's errno, for calls that report failure by NULL or -1.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Turns a verbs return code (0, or an errno value; some providers return -1 and set errno) into
/// a result.
pub(crate) fn check(call: &'static str, rc: i32) -> Result<()> {
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(Error::Errno {
            call,
            errno: match last_errno() {
                0 => -rc,
                errno => errno,
            },
        }),
        errno => Err(Error::Errno { call, errno }),
    }
}

/// The device list from `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: NonNull<*mut sys::ibv_device>,
    len: usize,
}

impl DeviceList {
    /// The devices present; `None` when there are none (the library returned NULL or zero).
    fn get() -> Result<Option<DeviceList>> {
        let mut count: i32 = 0;
        // SAFETY: `count` is a valid out-pointer for the duration of the call; the returned
        // array is owned by this DeviceList and freed exactly once in its Drop.
        let list = unsafe { sys::ibv_get_device_list(&mut count) };
        let Some(list) = NonNull::new(list) else {
            // NULL means no usable device: no RDMA subsystem in the kernel (ENOSYS), no device
            // (ENODEV), or no permission to the sysfs entries. Only running out of memory is an
            // error of ours.
            return match last_errno() {
                errno @ 12 /* ENOMEM */ => Err(Error::Errno { call: "ibv_get_device_list", errno }),
                _ => Ok(None),
            };
        };
        let list = DeviceList {
            list,
            len: usize::try_from(count).unwrap_or(0),
        };
        Ok((list.len > 0).then_some(list))
    }

    fn iter(&self) -> impl Iterator<Item = NonNull<sys::ibv_device>> + '_ {
        (0..self.len).filter_map(|i| {
            // SAFETY: the array has `len` valid entries (the count ibv_get_device_list reported),
            // and it stays allocated while `self` is borrowed.
            NonNull::new(unsafe { *self.list.as_ptr().add(i) })
        })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed only here.
        unsafe { sys::ibv_free_device_list(self.list.as_ptr()) }
    }
}

/// The name of a device in a live device list.
fn device_name(device: NonNull<sys::ibv_device>) -> String {
    // SAFETY: the device belongs to a live device list; ibv_get_device_name returns a pointer to
    // the NUL-terminated name inside the device, valid as long as the list.
    let name = unsafe { sys::ibv_get_device_name(device.as_ptr()) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL and NUL-terminated (see above); copied before the list is freed.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// Lists the RDMA devices present. No device (including no RDMA support in the kernel) is an
/// empty list, not an error.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let Some(list) = DeviceList::get()? else {
        return Ok(Vec::new());
    };
    Ok(list
        .iter()
        .map(|device| DeviceInfo {
            name: device_name(device),
            // SAFETY: the device belongs to the live list.
            guid: u64::from_be(unsafe { sys::ibv_get_device_guid(device.as_ptr()) }),
        })
        .collect())
}

/// An open device context (`ibv_context`), closed when the last handle that needs it is gone.
pub(crate) struct ContextInner {
    pub(crate) ctx: NonNull<sys::ibv_context>,
    /// False for a context that librdmacm opened and owns (an `rdma_cm_id`'s `verbs`).
    owned: bool,
}

// SAFETY: libibverbs objects are thread-safe: every verb may be called from any thread, and
// the context is only closed in Drop, once no handle refers to it.
unsafe impl Send for ContextInner {}
// SAFETY: as above; the safe layer only calls thread-safe verbs through `&ContextInner`.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: the context came from ibv_open_device and every object made from it holds
            // an Arc to this inner, so none is left when it drops.
            unsafe { sys::ibv_close_device(self.ctx.as_ptr()) };
        }
    }
}

/// An open RDMA device.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("ctx", &self.inner.ctx)
            .finish()
    }
}

impl Context {
    /// Opens the device with this name.
    pub fn open(name: &str) -> Result<Context> {
        let list = DeviceList::get()?.ok_or_else(|| Error::NoSuchDevice(name.to_string()))?;
        let device = list
            .iter()
            .find(|&d| device_name(d) == name)
            .ok_or_else(|| Error::NoSuchDevice(name.to_string()))?;
        // SAFETY: the device belongs to the live list; an opened context stays valid after the
        // list is freed (the documented contract of ibv_free_device_list).
        let ctx = unsafe { sys::ibv_open_device(device.as_ptr()) };
        let ctx = NonNull::new(ctx).ok_or(Error::Errno {
            call: "ibv_open_device",
            errno: last_errno(),
        })?;
        Ok(Context {
            inner: Arc::new(ContextInner { ctx, owned: true }),
        })
    }

    /// Wraps a context librdmacm opened and owns (it stays open as long as librdmacm's device
    /// list, that is while any `rdma_cm_id` on it lives).
    pub(crate) fn borrowed(ctx: NonNull<sys::ibv_context>) -> Context {
        Context {
            inner: Arc::new(ContextInner { ctx, owned: false }),
        }
    }

    /// Queries a port (numbered from 1).
    pub fn query_port(&self, port: u8) -> Result<PortInfo> {
        let mut attr = sys::ibv_port_attr::default();
        // SAFETY: the context is open; `attr` is a full ibv_port_attr the call fills (the
        // static-inline ___ibv_query_port passes its size to the provider).
        let rc = unsafe { sys::___ibv_query_port(self.inner.ctx.as_ptr(), port, &mut attr) };
        check("ibv_query_port", rc)?;
        Ok(PortInfo {
            active: attr.state == sys::IBV_PORT_ACTIVE,
            active_mtu: attr.active_mtu,
            lid: attr.lid,
            ethernet: u32::from(attr.link_layer) == sys::IBV_LINK_LAYER_ETHERNET,
            gid_table_len: attr.gid_tbl_len,
        })
    }

    /// Reads entry `index` of a port's GID table.
    pub fn query_gid(&self, port: u8, index: i32) -> Result<Gid> {
        let mut gid = sys::ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `gid` is a valid out-pointer.
        let rc = unsafe { sys::ibv_query_gid(self.inner.ctx.as_ptr(), port, index, &mut gid) };
        check("ibv_query_gid", rc)?;
        // SAFETY: every bit pattern of the union is a valid `raw` array.
        Ok(Gid(unsafe { gid.raw }))
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        // SAFETY: the context is open.
        let pd = unsafe { sys::ibv_alloc_pd(self.inner.ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or(Error::Errno {
            call: "ibv_alloc_pd",
            errno: last_errno(),
        })?;
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                pd,
                _ctx: self.inner.clone(),
            }),
        })
    }

    /// Creates a completion queue with room for at least `entries` completions.
    pub fn create_cq(&self, entries: u32) -> Result<CompletionQueue> {
        let entries =
            i32::try_from(entries).map_err(|_| Error::InvalidArgument("cq entries > i32::MAX"))?;
        // SAFETY: the context is open; no completion channel and no context pointer.
        let cq = unsafe {
            sys::ibv_create_cq(
                self.inner.ctx.as_ptr(),
                entries,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        let cq = NonNull::new(cq).ok_or(Error::Errno {
            call: "ibv_create_cq",
            errno: last_errno(),
        })?;
        Ok(CompletionQueue {
            inner: Arc::new(CqInner {
                cq,
                _ctx: self.inner.clone(),
            }),
        })
    }
}

pub(crate) struct PdInner {
    pub(crate) pd: NonNull<sys::ibv_pd>,
    _ctx: Arc<ContextInner>,
}

// SAFETY: verbs objects may be used from any thread (see ContextInner).
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: the PD came from ibv_alloc_pd; every MR and QP on it holds an Arc to this
        // inner, so none is left.
        unsafe { sys::ibv_dealloc_pd(self.pd.as_ptr()) };
    }
}

/// A protection domain.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

impl ProtectionDomain {
    /// Registers `len` bytes at `addr` with these rights.
    ///
    /// # Safety
    ///
    /// The range must be valid memory of this process that stays allocated (and is not
    /// unmapped or remapped) until the returned region is dropped. The HCA and, with remote
    /// rights, peers may write it at any time while registered: the caller must read it only
    /// through raw pointers or volatile/atomic accesses, never through a `&` reference that
    /// assumes no concurrent change.
    pub unsafe fn register(
        &self,
        addr: *mut u8,
        len: usize,
        access: AccessFlags,
    ) -> Result<MemoryRegion> {
        if len == 0 {
            return Err(Error::InvalidArgument("memory region of 0 bytes"));
        }
        let access = i32::try_from(access.0).map_err(|_| Error::InvalidArgument("access flags"))?;
        // SAFETY: the PD is live; the caller guarantees the range is valid for the region's life
        // (this function's contract).
        let mr = unsafe { sys::ibv_reg_mr(self.inner.pd.as_ptr(), addr.cast(), len, access) };
        let mr = NonNull::new(mr).ok_or(Error::Errno {
            call: "ibv_reg_mr",
            errno: last_errno(),
        })?;
        Ok(MemoryRegion {
            mr,
            addr,
            len,
            _pd: self.inner.clone(),
        })
    }
}

/// A registered memory region; deregistered on drop.
pub struct MemoryRegion {
    mr: NonNull<sys::ibv_mr>,
    addr: *mut u8,
    len: usize,
    _pd: Arc<PdInner>,
}

// SAFETY: the region is a verbs object (thread-safe) plus the address of caller-owned memory
// that the registration contract already allows to be written concurrently.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above; `&MemoryRegion` only exposes keys, the address and bounds-checked slices.
unsafe impl Sync for MemoryRegion {}

/// A range of a local memory region, the local side of a work request.
#[derive(Debug, Clone, Copy)]
pub struct LocalSlice<'mr> {
    addr: u64,
    len: u32,
    lkey: u32,
    _mr: PhantomData<&'mr MemoryRegion>,
}

impl LocalSlice<'_> {
    /// Address, length and lkey, for building a scatter/gather entry.
    pub(crate) fn parts(&self) -> (u64, u32, u32) {
        (self.addr, self.len, self.lkey)
    }
}

impl MemoryRegion {
    /// Start of the registered range.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }
    /// Length of the registered range, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: a region of 0 bytes cannot be registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is live; lkey is set by ibv_reg_mr and never changes.
        unsafe { self.mr.as_ref().lkey }
    }
    /// The remote key, for peers.
    pub fn rkey(&self) -> u32 {
        // SAFETY: as for lkey.
        unsafe { self.mr.as_ref().rkey }
    }
    /// The address peers use for byte `offset` of this region.
    pub fn remote(&self, offset: usize) -> Result<RemoteAddr> {
        self.bounds(offset, 0)?;
        Ok(RemoteAddr {
            addr: self.addr as u64 + offset as u64,
            rkey: self.rkey(),
        })
    }
    /// `len` bytes from `offset`, as the local side of a work request.
    pub fn slice(&self, offset: usize, len: usize) -> Result<LocalSlice<'_>> {
        self.bounds(offset, len)?;
        let len32 = u32::try_from(len)
            .map_err(|_| Error::InvalidArgument("work request longer than 4 GiB"))?;
        Ok(LocalSlice {
            addr: self.addr as u64 + offset as u64,
            len: len32,
            lkey: self.lkey(),
            _mr: PhantomData,
        })
    }

    fn bounds(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }
}

impl MemoryRegion {
    /// Deregisters the region now and reports whether that worked (dropping it deregisters
    /// too, but cannot report). Once this returns `Ok`, no remote access through its keys can
    /// happen any more. On an error the region is left registered, and leaked: it cannot be
    /// freed, and the caller must not free the memory under it either.
    pub fn deregister(self) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the MR came from ibv_reg_mr; `this` is never dropped, so this is the only
        // deregistration.
        let rc = unsafe { sys::ibv_dereg_mr(this.mr.as_ptr()) };
        check("ibv_dereg_mr", rc)?;
        // SAFETY: `_pd` is read out once and `this` is never used or dropped afterwards; the
        // protection domain may go once its region is gone.
        drop(unsafe { std::ptr::read(&this._pd) });
        Ok(())
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the MR came from ibv_reg_mr and is deregistered only here. Work requests
        // still in flight on it then fail with a protection error; none can touch freed memory
        // of ours, as the caller keeps the memory until this drop.
        unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

pub(crate) struct CqInner {
    pub(crate) cq: NonNull<sys::ibv_cq>,
    _ctx: Arc<ContextInner>,
}

// SAFETY: verbs objects may be used from any thread; ibv_poll_cq on one CQ from two threads is
// serialised by the provider's CQ lock.
unsafe impl Send for CqInner {}
// SAFETY: as above.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: the CQ came from ibv_create_cq; every QP using it holds an Arc to this inner.
        unsafe { sys::ibv_destroy_cq(self.cq.as_ptr()) };
    }
}

/// A completion queue.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) inner: Arc<CqInner>,
}

impl WcStatus {
    pub(crate) fn from_raw(status: sys::ibv_wc_status) -> WcStatus {
        match status {
            sys::IBV_WC_SUCCESS => WcStatus::Success,
            sys::IBV_WC_LOC_LEN_ERR => WcStatus::LocLenErr,
            sys::IBV_WC_LOC_QP_OP_ERR => WcStatus::LocQpOpErr,
            sys::IBV_WC_LOC_EEC_OP_ERR => WcStatus::LocEecOpErr,
            sys::IBV_WC_LOC_PROT_ERR => WcStatus::LocProtErr,
            sys::IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlushErr,
            sys::IBV_WC_MW_BIND_ERR => WcStatus::MwBindErr,
            sys::IBV_WC_BAD_RESP_ERR => WcStatus::BadRespErr,
            sys::IBV_WC_LOC_ACCESS_ERR => WcStatus::LocAccessErr,
            sys::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemInvReqErr,
            sys::IBV_WC_REM_ACCESS_ERR => WcStatus::RemAccessErr,
            sys::IBV_WC_REM_OP_ERR => WcStatus::RemOpErr,
            sys::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExcErr,
            sys::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExcErr,
            sys::IBV_WC_LOC_RDD_VIOL_ERR => WcStatus::LocRddViolErr,
            sys::IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemInvRdReqErr,
            sys::IBV_WC_REM_ABORT_ERR => WcStatus::RemAbortErr,
            sys::IBV_WC_INV_EECN_ERR => WcStatus::InvEecnErr,
            sys::IBV_WC_INV_EEC_STATE_ERR => WcStatus::InvEecStateErr,
            sys::IBV_WC_FATAL_ERR => WcStatus::FatalErr,
            sys::IBV_WC_RESP_TIMEOUT_ERR => WcStatus::RespTimeoutErr,
            sys::IBV_WC_GENERAL_ERR => WcStatus::GeneralErr,
            other => WcStatus::Other(other),
        }
    }
}

impl WcOpcode {
    fn from_raw(opcode: sys::ibv_wc_opcode) -> WcOpcode {
        match opcode {
            sys::IBV_WC_SEND => WcOpcode::Send,
            sys::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            sys::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            sys::IBV_WC_COMP_SWAP => WcOpcode::CompSwap,
            sys::IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
            sys::IBV_WC_BIND_MW => WcOpcode::BindMw,
            sys::IBV_WC_RECV => WcOpcode::Recv,
            sys::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            other => WcOpcode::Other(other),
        }
    }
}

/// One work completion, laid out as `struct ibv_wc` so a caller's array is polled into in place.
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
pub struct WorkCompletion(sys::ibv_wc);

impl std::fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkCompletion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("vendor_err", &self.0.vendor_err)
            .finish()
    }
}

impl WorkCompletion {
    /// The caller's id of the work request.
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }
    /// The status.
    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.0.status)
    }
    /// The operation; only meaningful when the status is success.
    pub fn opcode(&self) -> WcOpcode {
        WcOpcode::from_raw(self.0.opcode)
    }
    /// Bytes transferred (receives and reads).
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }
    /// The number of the local queue pair.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }
    /// The provider's error detail.
    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }
}

impl CompletionQueue {
    /// Polls up to `out.len()` completions into `out`; returns how many were written (0 when
    /// none is ready). Never blocks and never allocates.
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize> {
        let n = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: the CQ is live; `out` is valid for `n` ibv_wc entries (WorkCompletion is
        // repr(transparent) over ibv_wc), and the provider writes at most `n`.
        let rc = unsafe { sys::ibv_poll_cq(self.inner.cq.as_ptr(), n, out.as_mut_ptr().cast()) };
        if rc < 0 {
            return Err(Error::Errno {
                call: "ibv_poll_cq",
                errno: -rc,
            });
        }
        Ok(rc as usize)
    }
}

/// The owner of an `ibv_qp`: destroyed on drop, after which the PD and CQs it holds may go.
pub(crate) struct QpInner {
    qp: NonNull<sys::ibv_qp>,
    _pd: Arc<PdInner>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
}

// SAFETY: verbs objects may be used from any thread; posting to one QP from several threads is
// serialised by the provider's QP lock.
unsafe impl Send for QpInner {}
// SAFETY: as above.
unsafe impl Sync for QpInner {}

impl Drop for QpInner {
    fn drop(&mut self) {
        // SAFETY: the QP came from ibv_create_qp and is destroyed only here; it holds Arcs to
        // the PD and CQs, which are therefore destroyed after it.
        unsafe { sys::ibv_destroy_qp(self.qp.as_ptr()) };
    }
}

/// An RC queue pair in state `S` ([`Reset`], [`Init`], [`Rtr`], [`Rts`]). Each transition
/// consumes the queue pair; a failed transition destroys it (which also revokes every right
/// it granted).
pub struct QueuePair<S> {
    inner: QpInner,
    _state: PhantomData<S>,
}

impl<S> std::fmt::Debug for QueuePair<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &self.qp_num())
            .field("state", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S> QueuePair<S> {
    /// The queue pair number peers address.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live; qp_num is fixed at creation.
        unsafe { self.inner.qp.as_ref().qp_num }
    }

    fn modify(&self, attr: &mut sys::ibv_qp_attr, mask: u32, call: &'static str) -> Result<()> {
        // SAFETY: the QP is live and `attr` is a full ibv_qp_attr whose fields named by `mask`
        // are set.
        let rc = unsafe { sys::ibv_modify_qp(self.inner.qp.as_ptr(), attr, mask as i32) };
        check(call, rc)
    }

    fn into_state<T>(self) -> QueuePair<T> {
        QueuePair {
            inner: self.inner,
            _state: PhantomData,
        }
    }

    /// Moves the queue pair back to RESET from any state; outstanding work requests are
    /// discarded. With INIT → RTR → RTS after it this is the full revoke cycle.
    pub fn reset(self) -> Result<QueuePair<Reset>> {
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_RESET,
            ..Default::default()
        };
        self.modify(&mut attr, sys::IBV_QP_STATE, "ibv_modify_qp(RESET)")?;
        Ok(self.into_state())
    }
}

impl QueuePair<Reset> {
    /// Creates an RC queue pair on `pd`, completing sends on `send_cq` and receives on
    /// `recv_cq`. Every send is signaled only when posted with [`SendFlags::SIGNALED`].
    pub fn create_rc(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
    ) -> Result<QueuePair<Reset>> {
        let mut init = rc_init_attr(send_cq, recv_cq, caps);
        // SAFETY: the PD and CQs are live (and kept alive by the QP's Arcs); `init` is fully set.
        let qp = unsafe { sys::ibv_create_qp(pd.inner.pd.as_ptr(), &mut init) };
        let qp = NonNull::new(qp).ok_or(Error::Errno {
            call: "ibv_create_qp",
            errno: last_errno(),
        })?;
        Ok(QueuePair {
            inner: QpInner {
                qp,
                _pd: pd.inner.clone(),
                _send_cq: send_cq.inner.clone(),
                _recv_cq: recv_cq.inner.clone(),
            },
            _state: PhantomData,
        })
    }

    /// RESET → INIT on `port`, granting peers `access` (remote write/read/atomic).
    pub fn to_init(self, port: u8, access: AccessFlags) -> Result<QueuePair<Init>> {
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: port,
            qp_access_flags: access.0,
            ..Default::default()
        };
        let mask = sys::IBV_QP_STATE
            | sys::IBV_QP_PKEY_INDEX
            | sys::IBV_QP_PORT
            | sys::IBV_QP_ACCESS_FLAGS;
        self.modify(&mut attr, mask, "ibv_modify_qp(INIT)")?;
        Ok(self.into_state())
    }
}

pub(crate) fn rc_init_attr(
    send_cq: &CompletionQueue,
    recv_cq: &CompletionQueue,
    caps: QpCaps,
) -> sys::ibv_qp_init_attr {
    sys::ibv_qp_init_attr {
        send_cq: send_cq.inner.cq.as_ptr(),
        recv_cq: recv_cq.inner.cq.as_ptr(),
        cap: sys::ibv_qp_cap {
            max_send_wr: caps.max_send_wr,
            max_recv_wr: caps.max_recv_wr,
            max_send_sge: caps.max_send_sge,
            max_recv_sge: caps.max_recv_sge,
            max_inline_data: caps.max_inline_data,
        },
        qp_type: sys::IBV_QPT_RC,
        sq_sig_all: 0,
        ..Default::default()
    }
}

impl QueuePair<Init> {
    /// INIT → RTR: connects to `remote` over `path`.
    pub fn to_rtr(self, remote: &Endpoint, path: &PathParams) -> Result<QueuePair<Rtr>> {
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_RTR,
            path_mtu: path.mtu,
            dest_qp_num: remote.qp_num,
            rq_psn: remote.psn,
            max_dest_rd_atomic: path.max_rd_atomic,
            min_rnr_timer: path.min_rnr_timer,
            ..Default::default()
        };
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = path.port;
        if let Some(gid_index) = path.gid_index {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid = sys::ibv_gid { raw: remote.gid.0 };
            attr.ah_attr.grh.sgid_index = gid_index;
            attr.ah_attr.grh.hop_limit = 64;
            attr.ah_attr.grh.flow_label = 0;
            attr.ah_attr.grh.traffic_class = 0;
        }
        let mask = sys::IBV_QP_STATE
            | sys::IBV_QP_AV
            | sys::IBV_QP_PATH_MTU
            | sys::IBV_QP_DEST_QPN
            | sys::IBV_QP_RQ_PSN
            | sys::IBV_QP_MAX_DEST_RD_ATOMIC
            | sys::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTR)")?;
        Ok(self.into_state())
    }
}

impl QueuePair<Rtr> {
    /// RTR → RTS, sending from packet sequence number `psn`.
    pub fn to_rts(self, psn: u32, path: &PathParams) -> Result<QueuePair<Rts>> {
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_RTS,
            sq_psn: psn,
            timeout: path.timeout,
            retry_cnt: path.retry_cnt,
            rnr_retry: path.rnr_retry,
            max_rd_atomic: path.max_rd_atomic,
            ..Default::default()
        };
        let mask = sys::IBV_QP_STATE
            | sys::IBV_QP_SQ_PSN
            | sys::IBV_QP_TIMEOUT
            | sys::IBV_QP_RETRY_CNT
            | sys::IBV_QP_RNR_RETRY
            | sys::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "ibv_modify_qp(RTS)")?;
        Ok(self.into_state())
    }
}

/// The states in which receives may be posted.
pub trait ReceiveState: sealed::Sealed {}
impl ReceiveState for Init {}
impl ReceiveState for Rtr {}
impl ReceiveState for Rts {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Init {}
    impl Sealed for super::Rtr {}
    impl Sealed for super::Rts {}
}

impl<S: ReceiveState> QueuePair<S> {
    /// Posts a receive into `local`.
    pub fn post_recv(&self, wr_id: u64, local: LocalSlice<'_>) -> Result<()> {
        post_recv_raw(self.inner.qp, wr_id, local)
    }
}

impl QueuePair<Rts> {
    /// Moves the queue pair to the error state: every outstanding work request completes with
    /// a flush error, and later posts fail. Only [`QueuePair::reset`] brings it back.
    pub fn flush(&mut self) -> Result<()> {
        let mut attr = sys::ibv_qp_attr {
            qp_state: sys::IBV_QPS_ERR,
            ..Default::default()
        };
        self.modify(&mut attr, sys::IBV_QP_STATE, "ibv_modify_qp(ERR)")
    }

    /// Changes the rights peers have through this queue pair, in RTS (`ibv_modify_qp` with
    /// `IBV_QP_ACCESS_FLAGS`). With [`AccessFlags::NONE`] later RDMA WRITEs and READs from the
    /// peer fail at the responder with a remote access or invalid-request error.
    pub fn set_access_flags(&mut self, access: AccessFlags) -> Result<()> {
        let mut attr = sys::ibv_qp_attr {
            qp_access_flags: access.0,
            ..Default::default()
        };
        self.modify(
            &mut attr,
            sys::IBV_QP_ACCESS_FLAGS,
            "ibv_modify_qp(ACCESS_FLAGS)",
        )
    }

    /// Posts an RDMA WRITE of `local` to `remote`. With [`SendFlags::INLINE`] the payload is
    /// copied at post time; with [`SendFlags::SIGNALED`] a completion reports the outcome.
    pub fn post_write(
        &self,
        wr_id: u64,
        local: LocalSlice<'_>,
        remote: RemoteAddr,
        flags: SendFlags,
    ) -> Result<()> {
        post_one_sided(
            self.inner.qp,
            sys::IBV_WR_RDMA_WRITE,
            wr_id,
            local.addr,
            local.len,
            local.lkey,
            remote,
            flags,
        )
    }

    /// Posts an inline RDMA WRITE of `data` (at most the queue pair's `max_inline_data`), which
    /// is copied into the work request: no registered memory is needed locally.
    pub fn post_write_inline(
        &self,
        wr_id: u64,
        data: &[u8],
        remote: RemoteAddr,
        flags: SendFlags,
    ) -> Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| Error::InvalidArgument("inline write too long"))?;
        let flags = flags | SendFlags::INLINE;
        post_one_sided(
            self.inner.qp,
            sys::IBV_WR_RDMA_WRITE,
            wr_id,
            data.as_ptr() as u64,
            len,
            0,
            remote,
            flags,
        )
    }

    /// Posts an RDMA READ of `local.len` bytes from `remote` into `local`.
    pub fn post_read(
        &self,
        wr_id: u64,
        local: LocalSlice<'_>,
        remote: RemoteAddr,
        flags: SendFlags,
    ) -> Result<()> {
        if flags.0 & SendFlags::INLINE.0 != 0 {
            return Err(Error::InvalidArgument("an RDMA READ cannot be inline"));
        }
        post_one_sided(
            self.inner.qp,
            sys::IBV_WR_RDMA_READ,
            wr_id,
            local.addr,
            local.len,
            local.lkey,
            remote,
            flags,
        )
    }
}

/// Posts one RDMA WRITE or READ with one scatter/gather entry on a live RTS queue pair.
#[allow(clippy::too_many_arguments)]
pub(crate) fn post_one_sided(
    qp: NonNull<sys::ibv_qp>,
    opcode: sys::ibv_wr_opcode,
    wr_id: u64,
    addr: u64,
    len: u32,
    lkey: u32,
    remote: RemoteAddr,
    flags: SendFlags,
) -> Result<()> {
    let mut sge = sys::ibv_sge {
        addr,
        length: len,
        lkey,
    };
    let mut wr = sys::ibv_send_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: 1,
        opcode,
        send_flags: flags.0,
        ..Default::default()
    };
    wr.wr.rdma = sys::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 {
        remote_addr: remote.addr,
        rkey: remote.rkey,
    };
    let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
    // SAFETY: the QP is live; `wr` and `sge` are valid for the call (the provider copies them,
    // and copies inline payloads, before returning). The local range is either inside a live
    // registered region (a LocalSlice borrows its MemoryRegion) or, inline, a borrowed slice
    // read during the call only.
    let rc = unsafe { sys::ibv_post_send(qp.as_ptr(), &mut wr, &mut bad) };
    check("ibv_post_send", rc)
}

pub(crate) fn post_recv_raw(
    qp: NonNull<sys::ibv_qp>,
    wr_id: u64,
    local: LocalSlice<'_>,
) -> Result<()> {
    let mut sge = sys::ibv_sge {
        addr: local.addr,
        length: local.len,
        lkey: local.lkey,
    };
    let mut wr = sys::ibv_recv_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list: &mut sge,
        num_sge: 1,
    };
    let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
    // SAFETY: the QP is live; `wr` and `sge` are valid for the call; the range is inside a live
    // registered region with local write (the HCA checks the lkey's rights).
    let rc = unsafe { sys::ibv_post_recv(qp.as_ptr(), &mut wr, &mut bad) };
    check("ibv_post_recv", rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_statuses_map_to_their_variants() {
        assert_eq!(WcStatus::from_raw(sys::IBV_WC_SUCCESS), WcStatus::Success);
        assert_eq!(
            WcStatus::from_raw(sys::IBV_WC_REM_ACCESS_ERR),
            WcStatus::RemAccessErr
        );
        assert_eq!(
            WcStatus::from_raw(sys::IBV_WC_REM_INV_REQ_ERR),
            WcStatus::RemInvReqErr
        );
        assert!(WcStatus::RemAccessErr.is_remote_permission_error());
        assert!(WcStatus::RemInvReqErr.is_remote_permission_error());
        assert!(!WcStatus::RetryExcErr.is_remote_permission_error());
        assert_eq!(WcStatus::from_raw(9999), WcStatus::Other(9999));
        assert_eq!(
            WcOpcode::from_raw(sys::IBV_WC_RDMA_WRITE),
            WcOpcode::RdmaWrite
        );
        assert_eq!(
            WcOpcode::from_raw(sys::IBV_WC_RDMA_READ),
            WcOpcode::RdmaRead
        );
    }

    #[test]
    fn work_completion_is_laid_out_as_ibv_wc() {
        assert_eq!(
            std::mem::size_of::<WorkCompletion>(),
            std::mem::size_of::<sys::ibv_wc>()
        );
        assert_eq!(
            std::mem::align_of::<WorkCompletion>(),
            std::mem::align_of::<sys::ibv_wc>()
        );
    }

    #[test]
    fn plain_values_are_the_abi_values() {
        assert_eq!(AccessFlags::LOCAL_WRITE.0, sys::IBV_ACCESS_LOCAL_WRITE);
        assert_eq!(AccessFlags::REMOTE_WRITE.0, sys::IBV_ACCESS_REMOTE_WRITE);
        assert_eq!(AccessFlags::REMOTE_READ.0, sys::IBV_ACCESS_REMOTE_READ);
        assert_eq!(AccessFlags::REMOTE_ATOMIC.0, sys::IBV_ACCESS_REMOTE_ATOMIC);
        assert_eq!(SendFlags::SIGNALED.0, sys::IBV_SEND_SIGNALED);
        assert_eq!(SendFlags::INLINE.0, sys::IBV_SEND_INLINE);
        assert_eq!(SendFlags::FENCE.0, sys::IBV_SEND_FENCE);
        assert_eq!(MTU_1024, sys::IBV_MTU_1024);
        assert_eq!(mtu_from_bytes(256), Some(sys::IBV_MTU_256));
        assert_eq!(mtu_from_bytes(4096), Some(sys::IBV_MTU_4096));
        assert_eq!(mtu_from_bytes(1500), None);
        assert_eq!(mtu_bytes(sys::IBV_MTU_2048), 2048);
    }

    #[test]
    fn access_flags_combine() {
        let rw = AccessFlags::REMOTE_WRITE | AccessFlags::LOCAL_WRITE;
        assert!(rw.contains(AccessFlags::REMOTE_WRITE));
        assert!(!rw.contains(AccessFlags::REMOTE_READ));
        assert_eq!(AccessFlags::NONE.0, 0);
    }

    #[test]
    fn verbs_errors_carry_the_errno() {
        let err = check("ibv_modify_qp", 22).unwrap_err();
        assert!(matches!(
            err,
            Error::Errno {
                call: "ibv_modify_qp",
                errno: 22
            }
        ));
        assert!(err.to_string().contains("errno 22"), "{err}");
        assert!(check("ibv_modify_qp", 0).is_ok());
    }
}
