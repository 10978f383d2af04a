//! The rdma-core layer when rdma-core was not bound at build time: every entry point returns
//! [`Error::NotBuilt`] with the build script's reason.

use super::{DeviceInfo, Error, Result};

/// Why the bindings are absent, as the build script recorded it.
const ABSENT: &str = env!("RAPAX_FFI_RDMA_ABSENT");

/// Lists the RDMA devices: always [`Error::NotBuilt`] in this build.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    Err(Error::NotBuilt(ABSENT))
}

/// An open device context. None can exist in this build.
#[derive(Debug)]
pub enum Context {}

impl Context {
    /// Opens a device by name: always [`Error::NotBuilt`] in this build.
    pub fn open(_name: &str) -> Result<Context> {
        Err(Error::NotBuilt(ABSENT))
    }
}
