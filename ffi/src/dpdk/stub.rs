//! The DPDK layer when DPDK was not bound at build time: [`Eal::init`] returns
//! [`Error::NotBuilt`] with the build script's reason.

use super::{Error, Result};

/// Why the bindings are absent, as the build script recorded it.
const ABSENT: &str = env!("RAPAX_FFI_DPDK_ABSENT");

/// The initialised EAL. None can exist in this build.
#[derive(Debug)]
pub enum Eal {}

impl Eal {
    /// Initialises the EAL: always [`Error::NotBuilt`] in this build.
    pub fn init(_args: &[String]) -> Result<Eal> {
        Err(Error::NotBuilt(ABSENT))
    }
}

/// The calling thread's `rte_errno`: always 0 in this build.
pub fn rte_errno() -> i32 {
    0
}
