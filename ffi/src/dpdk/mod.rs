//! DPDK 22.11: EAL start-up, packet mbuf pools, ethdev ports with N rx/tx queues, burst rx/tx
//! into fixed arrays, and mbufs.
//!
//! `sys` holds the raw bindings, generated at build time, including the C wrappers of the
//! `static inline` hot path (`rte_eth_rx_burst`, `rte_eth_tx_burst`, `rte_pktmbuf_alloc`, ...)
//! and the hand-written shim for `rte_errno` and `rte_pktmbuf_mtod`.
//!
//! Life times follow DPDK's rules: the EAL is initialised once per process ([`Eal::init`]);
//! a `Port` and every `Mbuf` borrow the `PktMbufPool` their buffers come from, so the
//! pool cannot be freed while a buffer or a queue still refers to it. Nothing on the rx/tx path
//! allocates: a `Burst` is a fixed array of mbuf pointers.
//!
//! When DPDK was not found at build time (or bindgen could not run), this module is a stub:
//! [`available`] returns false and [`Eal::init`] returns [`Error::NotBuilt`].

#[cfg(rapax_dpdk)]
pub mod sys;

#[cfg(rapax_dpdk)]
mod eth;
#[cfg(rapax_dpdk)]
pub use eth::*;

#[cfg(not(rapax_dpdk))]
mod stub;
#[cfg(not(rapax_dpdk))]
pub use stub::*;

/// Whether the DPDK bindings were built (DPDK and libclang were found at build time).
pub fn available() -> bool {
    cfg!(rapax_dpdk)
}

/// Why the DPDK bindings were not built (the build script's reason), or `None` when they were.
pub fn absent_reason() -> Option<&'static str> {
    #[cfg(rapax_dpdk)]
    {
        None
    }
    #[cfg(not(rapax_dpdk))]
    {
        Some(stub::ABSENT)
    }
}

/// Errors of the DPDK layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bindings were not built; the text says why (recorded by the build script).
    #[error("DPDK bindings are not built: {0}")]
    NotBuilt(&'static str),
    /// The EAL was already initialised in this process (DPDK allows it once).
    #[error("the DPDK EAL is already initialised in this process")]
    AlreadyInitialised,
    /// A DPDK call failed; `errno` is its negative return value or `rte_errno`.
    #[error("{call} failed: {message} (errno {errno})")]
    Rte {
        /// The C function that failed.
        call: &'static str,
        /// The error number.
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// An argument DPDK would reject or misread.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No port has that device name.
    #[error("no DPDK port named {0:?}")]
    NoSuchPort(String),
    /// Not enough tailroom in the mbuf for the bytes to append.
    #[error("mbuf has {tailroom} bytes of tailroom, {wanted} wanted")]
    NoTailroom {
        /// Bytes free at the end of the buffer.
        tailroom: u16,
        /// Bytes asked for.
        wanted: usize,
    },
}

/// Result of the DPDK layer.
pub type Result<T> = std::result::Result<T, Error>;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
