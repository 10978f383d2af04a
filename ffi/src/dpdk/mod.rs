//! DPDK: not bound yet.

/// Whether the DPDK bindings were built.
pub fn available() -> bool {
    cfg!(rapax_dpdk)
}
