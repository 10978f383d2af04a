//! rdma-core: libibverbs (devices, protection domains, memory regions, completion queues, RC
//! queue pairs, one-sided RDMA WRITE and READ) and librdmacm (connection set-up).
//!
//! `sys` holds the raw bindings, generated at build time. The safe layer above it owns every
//! verbs object with `Drop` and keeps the objects it depends on alive through shared handles, so
//! a queue pair never outlives its protection domain, completion queues or device context.
//!
//! A queue pair's life cycle is typestate: `QueuePair<Reset>` (as created) → `Init` →
//! `Rtr` → `Rts`; only an RTS queue pair posts work requests. Revoking a peer's rights is
//! `QueuePair::set_access_flags` on the RTS queue pair (`ibv_modify_qp` with
//! `IBV_QP_ACCESS_FLAGS`), or the full `QueuePair::reset` → INIT → RTR → RTS cycle where a
//! device does not support changing the flags in RTS.
//!
//! Connection set-up goes through librdmacm (`EventChannel`, `CmId`): bind or resolve an
//! address, resolve the route, create the queue pair on the `rdma_cm_id` (librdmacm then moves it
//! to RTS while connecting), and connect, listen or accept. The same RC queue pair set-up can be
//! done by hand (`QueuePair::create_rc` and the transitions) when the endpoints are exchanged
//! out of band, as the loopback test does.
//!
//! When rdma-core was not found at build time (or bindgen could not run), this module is a stub:
//! [`available`] returns false and every entry point returns [`Error::NotBuilt`].

#[cfg(rapax_rdma)]
pub mod sys;

mod common;
pub use common::*;

#[cfg(rapax_rdma)]
mod cm;
#[cfg(rapax_rdma)]
mod verbs;
#[cfg(rapax_rdma)]
pub use cm::{
    CmEvent, CmExchange, CmExchangeEvent, CmId, CmToken, ConnParams, EventChannel, PortSpace,
};
#[cfg(rapax_rdma)]
pub use verbs::*;

#[cfg(not(rapax_rdma))]
mod stub;
#[cfg(not(rapax_rdma))]
pub use stub::*;

/// Whether the rdma-core bindings were built (rdma-core and libclang were found at build time).
pub fn available() -> bool {
    cfg!(rapax_rdma)
}

/// Errors of the rdma-core layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bindings were not built; the text says why (recorded by the build script).
    #[error("rdma-core bindings are not built: {0}")]
    NotBuilt(&'static str),
    /// A verbs or rdma_cm call failed with this errno.
    #[error("{call} failed: {} (errno {errno})", std::io::Error::from_raw_os_error(*errno))]
    Errno {
        /// The C function that failed.
        call: &'static str,
        /// The errno it reported (its return value, or `errno` where it returns NULL or -1).
        errno: i32,
    },
    /// No device of that name is present.
    #[error("no RDMA device named {0:?}")]
    NoSuchDevice(String),
    /// A local range does not fit in its memory region.
    #[error(
        "range at offset {offset} of {len} bytes does not fit in a region of {region_len} bytes"
    )]
    OutOfBounds {
        /// Offset of the range in the region, in bytes.
        offset: usize,
        /// Length of the range, in bytes.
        len: usize,
        /// Length of the region, in bytes.
        region_len: usize,
    },
    /// An argument the C API would reject or misread.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// librdmacm delivered another event than the one the operation waits for.
    #[error("rdma_cm: waited for {expected}, got {got} (status {status})")]
    UnexpectedEvent {
        /// The event the operation waits for.
        expected: &'static str,
        /// The event delivered.
        got: String,
        /// The event's status field (a negative errno on errors).
        status: i32,
    },
}

/// Result of the rdma-core layer.
pub type Result<T> = std::result::Result<T, Error>;

/// What [`devices`] reports about one RDMA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The kernel's name of the device (`mlx5_0`, `rxe0`).
    pub name: String,
    /// The node GUID, in host byte order.
    pub guid: u64,
}
