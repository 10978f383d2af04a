//! The plain values of the rdma-core layer (flags, addresses, endpoints, capacities, completion
//! statuses, queue-pair states): the same in a build with rdma-core and in the stub, so code on
//! top of `ibverbs` compiles without either `cfg`. The numbers are the ABI values of
//! `<infiniband/verbs.h>` (checked against the bindings in a build with rdma-core).

/// A path MTU as `enum ibv_mtu` numbers it (`IBV_MTU_256` = 1 ... `IBV_MTU_4096` = 5).
pub type Mtu = u32;

/// `IBV_MTU_1024`.
pub const MTU_1024: Mtu = 3;

/// The `enum ibv_mtu` value of a path MTU in bytes, if it is one (256, 512, 1024, 2048, 4096).
pub fn mtu_from_bytes(bytes: u32) -> Option<Mtu> {
    match bytes {
        256 => Some(1),
        512 => Some(2),
        1024 => Some(3),
        2048 => Some(4),
        4096 => Some(5),
        _ => None,
    }
}

/// The bytes of an `enum ibv_mtu` value (0 for a value that is none).
pub fn mtu_bytes(mtu: Mtu) -> u32 {
    match mtu {
        1..=5 => 128 << mtu,
        _ => 0,
    }
}

/// What `ibv_query_port` reports that the fabric needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// Whether the port is ACTIVE.
    pub active: bool,
    /// The active MTU (an `IBV_MTU_*` value) to use as the path MTU.
    pub active_mtu: Mtu,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Whether the link layer is Ethernet (RoCE), where addressing is by GID.
    pub ethernet: bool,
    /// Number of entries in the GID table.
    pub gid_table_len: i32,
}

/// A 16-byte GID (an IPv6-format address on RoCE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gid(pub [u8; 16]);
/// Access rights of a memory region or a queue pair (`IBV_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessFlags(pub u32);

impl AccessFlags {
    /// No remote access.
    pub const NONE: AccessFlags = AccessFlags(0);
    /// The HCA may write the memory locally (needed for remote write and for reads into it).
    pub const LOCAL_WRITE: AccessFlags = AccessFlags(1);
    /// Peers may RDMA WRITE into it.
    pub const REMOTE_WRITE: AccessFlags = AccessFlags(2);
    /// Peers may RDMA READ from it.
    pub const REMOTE_READ: AccessFlags = AccessFlags(4);
    /// Peers may perform atomics on it.
    pub const REMOTE_ATOMIC: AccessFlags = AccessFlags(8);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: AccessFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for AccessFlags {
    type Output = AccessFlags;
    fn bitor(self, rhs: AccessFlags) -> AccessFlags {
        AccessFlags(self.0 | rhs.0)
    }
}
/// The remote side of a one-sided work request: an address in a peer's registered region and
/// the region's rkey, as the peer advertised them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr {
    /// The virtual address in the peer's region.
    pub addr: u64,
    /// The peer region's remote key.
    pub rkey: u32,
}
/// The status of a work completion (`enum ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum WcStatus {
    Success,
    LocLenErr,
    LocQpOpErr,
    LocEecOpErr,
    LocProtErr,
    WrFlushErr,
    MwBindErr,
    BadRespErr,
    LocAccessErr,
    /// The responder rejected the request as invalid (e.g. RDMA WRITE to a QP without
    /// remote-write rights on some devices).
    RemInvReqErr,
    /// The responder denied access (rkey, bounds or QP access flags).
    RemAccessErr,
    RemOpErr,
    RetryExcErr,
    RnrRetryExcErr,
    LocRddViolErr,
    RemInvRdReqErr,
    RemAbortErr,
    InvEecnErr,
    InvEecStateErr,
    FatalErr,
    RespTimeoutErr,
    GeneralErr,
    /// A status this binding does not name.
    Other(u32),
}
/// The operation a work completion completes (`enum ibv_wc_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    CompSwap,
    FetchAdd,
    BindMw,
    Recv,
    RecvRdmaWithImm,
    /// An opcode this binding does not name.
    Other(u32),
}
/// Queue-pair state: as created, or after [`QueuePair::reset`].
#[derive(Debug)]
pub enum Reset {}
/// Queue-pair state: initialised (receives may be posted).
#[derive(Debug)]
pub enum Init {}
/// Queue-pair state: ready to receive.
#[derive(Debug)]
pub enum Rtr {}
/// Queue-pair state: ready to send; the only state that posts sends and one-sided operations.
#[derive(Debug)]
pub enum Rts {}

/// Sizes of a queue pair's work queues.
#[derive(Debug, Clone, Copy)]
pub struct QpCaps {
    /// Outstanding send work requests.
    pub max_send_wr: u32,
    /// Outstanding receive work requests.
    pub max_recv_wr: u32,
    /// Scatter/gather entries per send.
    pub max_send_sge: u32,
    /// Scatter/gather entries per receive.
    pub max_recv_sge: u32,
    /// Largest inline payload, in bytes.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 64,
            max_recv_wr: 64,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 64,
        }
    }
}

/// What one side of an RC connection tells the other (out of band, or by rdma_cm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The queue pair number.
    pub qp_num: u32,
    /// The first packet sequence number it sends with.
    pub psn: u32,
    /// Its port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Its GID (RoCE, or routed InfiniBand).
    pub gid: Gid,
}

/// The path parameters of the INIT → RTR and RTR → RTS transitions.
#[derive(Debug, Clone, Copy)]
pub struct PathParams {
    /// Local port, numbered from 1.
    pub port: u8,
    /// Local GID index to send from; `Some` makes the path global (required on RoCE).
    pub gid_index: Option<u8>,
    /// Path MTU (`IBV_MTU_*`), at most the port's active MTU.
    pub mtu: Mtu,
    /// Outstanding RDMA READ/atomic requests as responder and initiator.
    pub max_rd_atomic: u8,
    /// Minimum RNR NAK timer (encoded, 12 = 0.64 ms).
    pub min_rnr_timer: u8,
    /// Local ACK timeout (encoded: 4.096 µs × 2^timeout; 14 ≈ 67 ms).
    pub timeout: u8,
    /// Retries on time-out before the work request fails.
    pub retry_cnt: u8,
    /// Retries on RNR NAK (7 = infinite).
    pub rnr_retry: u8,
}

impl Default for PathParams {
    fn default() -> Self {
        PathParams {
            port: 1,
            gid_index: None,
            mtu: MTU_1024,
            max_rd_atomic: 1,
            min_rnr_timer: 12,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
        }
    }
}

/// Flags of a posted send, RDMA WRITE or RDMA READ (`IBV_SEND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags(pub u32);

impl SendFlags {
    /// Generate a completion for this work request.
    pub const SIGNALED: SendFlags = SendFlags(2);
    /// Copy the payload into the work request (writes and sends up to `max_inline_data`): the
    /// local buffer may be reused at once and needs no registration.
    pub const INLINE: SendFlags = SendFlags(8);
    /// Wait for earlier RDMA READs to complete before this request starts.
    pub const FENCE: SendFlags = SendFlags(1);
}

impl std::ops::BitOr for SendFlags {
    type Output = SendFlags;
    fn bitor(self, rhs: SendFlags) -> SendFlags {
        SendFlags(self.0 | rhs.0)
    }
}

impl WcStatus {
    /// Whether this is a permission failure at the responder: what a revoked writer sees.
    pub fn is_remote_permission_error(self) -> bool {
        matches!(self, WcStatus::RemAccessErr | WcStatus::RemInvReqErr)
    }
}
